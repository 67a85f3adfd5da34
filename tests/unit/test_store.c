/*
 * test_store.c — the SQLite store (daemon/store.c): migrations on a fresh
 * file, a no-op reopen, refusal of newer and foreign databases; every
 * record kind written and read back; the job lifecycle's edges; keyset
 * pagination with filters; the results a job summary carries (strategy,
 * best val IoU so far, zero-shot IoUs) and the model size progress
 * carries; read-time downsampling that keeps the first, the last and each
 * bucket's extremes; CSV with every point; drift filters that combine
 * (prefixes, layer class, indices); the heatmap;
 * rewinding for a resume; delete of one job and nothing else; and batches
 * that fail roll back whole. Each test works in its own directory under
 * /tmp, removed afterwards, and ends with PRAGMA integrity_check.
 */
#include "testutil.h"

#include <jansson.h>
#include <sqlite3.h>

#include "store.h"

/* ------------------------------------------------------------ fixture and helpers */

typedef struct {
    char dir[64];
    char path[128];
    store *s;
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    strcpy(f->dir, "/tmp/test_store.XXXXXX");
    if (!mkdtemp(f->dir)) return -1;
    snprintf(f->path, sizeof f->path, "%s/fisherd.db", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    if (f->s) {
        fisher_error err = {{0}};
        int rc = store_check(f->s, &err);
        store_close(f->s);
        if (rc) fprintf(stderr, "store_check at teardown: %s\n", err.msg);
        if (rc) return -1;
    }
    rm_tree(f->dir);
    free(f);
    return 0;
}

/* Fails the test with the store's message unless the call returns STORE_OK
 * (needs a `fisher_error err` in scope). */
#define CHECK(call)                                                                     \
    do {                                                                                \
        int rc_ = (call);                                                               \
        if (rc_ != STORE_OK) fail_msg("%s returned %d: %s", #call, rc_, err.msg);       \
    } while (0)

/* Expects the call to fail with code and a message containing words. */
#define EXPECT_FAIL(call, code, words)                                                  \
    do {                                                                                \
        err.msg[0] = '\0';                                                              \
        int rc_ = (call);                                                               \
        printf("  %-40.40s -> %d: %s\n", #call, rc_, err.msg);                          \
        assert_int_equal(rc_, (code));                                                  \
        if (!strstr(err.msg, (words))) fail_msg("message lacks '%s': %s", (words), err.msg); \
    } while (0)

static store *open_writer(fixture *f) {
    fisher_error err = {{0}};
    CHECK(store_open(f->path, 0, &f->s, &err));
    return f->s;
}

/* One integer from SQL on a connection of the test's own. */
static int64_t sql_int(const char *path, const char *sql) {
    sqlite3 *db;
    sqlite3_stmt *st;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) fail_msg("cannot open %s", path);
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        fail_msg("%s: %s", sql, sqlite3_errmsg(db));
    int64_t v = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static void sql_exec(const char *path, const char *sql) {
    sqlite3 *db;
    if (sqlite3_open(path, &db) != SQLITE_OK) fail_msg("cannot open %s", path);
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) fail_msg("%s: %s", sql, msg);
    sqlite3_close(db);
}

static void expect_integrity_ok(const char *path) {
    sqlite3 *db;
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "ok");
    sqlite3_finalize(st);
    sqlite3_close(db);
}

/* The value at a dotted path: "jobs.0.id", array positions as numbers. */
static json_t *jget(json_t *v, const char *path) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *part = strtok(buf, "."); part && v; part = strtok(NULL, "."))
        v = json_is_array(v) ? json_array_get(v, strtoul(part, NULL, 10)) : json_object_get(v, part);
    if (!v) fail_msg("no value at %s", path);
    return v;
}

static json_int_t jint(json_t *v, const char *path) {
    json_t *x = jget(v, path);
    if (!json_is_integer(x)) fail_msg("%s is not an integer", path);
    return json_integer_value(x);
}

static double jreal(json_t *v, const char *path) {
    json_t *x = jget(v, path);
    if (!json_is_number(x)) fail_msg("%s is not a number", path);
    return json_number_value(x);
}

static const char *jstr(json_t *v, const char *path) {
    json_t *x = jget(v, path);
    if (!json_is_string(x)) fail_msg("%s is not a string", path);
    return json_string_value(x);
}

static int64_t add_job(store *s, const char *name, double at) {
    fisher_error err = {{0}};
    int64_t id = 0;
    store_job_new j = {.name = name, .spec = "{\"steps\": 10}", .created_at = at};
    CHECK(store_job_insert(s, &j, &id, &err));
    return id;
}

/* n chunks "enc.<i/4>.weight.rowblock<i%4>", 10 elements each; the last
 * layer has depth 0, so depth order is not idx order. */
typedef struct {
    char key[64], tensor[64], layer[64];
} names;

static store_group *make_groups(int n, names **keep) {
    store_group *g = calloc((size_t)n, sizeof *g);
    names *nm = calloc((size_t)n, sizeof *nm);
    for (int i = 0; i < n; i++) {
        snprintf(nm[i].tensor, sizeof nm[i].tensor, "enc.%d.weight", i / 4);
        snprintf(nm[i].layer, sizeof nm[i].layer, "enc.%d", i / 4);
        snprintf(nm[i].key, sizeof nm[i].key, "enc.%d.weight.rowblock%d", i / 4, i % 4);
        g[i] = (store_group){nm[i].key, nm[i].tensor, nm[i].layer, i % 2 ? "conv" : "linear",
                             (n - 1) / 4 - i / 4, 0, (i % 4) * 8, (i % 4) * 8 + 8, 10, -1};
    }
    *keep = nm;
    return g;
}

static void write_groups(store *s, int64_t job, int n) {
    fisher_error err = {{0}};
    names *nm;
    store_group *g = make_groups(n, &nm);
    store_record r = {.kind = STORE_REC_GROUPS, .job = job, .groups = {g, (size_t)n}};
    CHECK(store_write(s, &r, 1, &err));
    free(g);
    free(nm);
}

/* The drift values the tests write: distinct per (chunk, step). */
static double js_of(int idx, int64_t step) { return idx * 1e-3 + (double)step * 1e-6 + 0.1; }
static double ema_of(int idx, int64_t step) { return sin(idx * 0.7 + (double)step * 0.013) * 0.25 + 0.3; }

/* One measurement of chunks [0, n) except those in skip (n_skip), listed
 * in descending order (the store must not care). */
static store_record drift_record(int64_t job, int64_t step, int n, const int *skip, int n_skip,
                                 int *idx, double *js, double *ema) {
    int k = 0;
    for (int i = n - 1; i >= 0; i--) {
        int skipped = 0;
        for (int j = 0; j < n_skip; j++) skipped |= skip[j] == i;
        if (skipped) continue;
        idx[k] = i, js[k] = js_of(i, step), ema[k] = ema_of(i, step);
        k++;
    }
    return (store_record){.kind = STORE_REC_DRIFT, .job = job,
                          .drift = {.step = step, .n = (size_t)k, .idx = idx, .js = js, .js_ema = ema}};
}

/* ------------------------------------------------------------ opening and migrations */

static void test_migrations_apply_on_a_fresh_file(void **state) {
    fixture *f = *state;
    store *s = open_writer(f);
    (void)s;
    assert_int_equal(store_schema_version(), 1);
    assert_int_equal(sql_int(f->path, "PRAGMA user_version"), store_schema_version());
    assert_int_equal(sql_int(f->path, "PRAGMA application_id"), 0x46495348);
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name IN "
                                      "('jobs', 'job_events', 'groups', 'drift_steps', 'drift', 'freezes', "
                                      "'metrics', 'evals', 'models')"), 9);
    sqlite3 *db;
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_finalize(st);
    sqlite3_close(db);
    expect_integrity_ok(f->path);
}

static void test_reopen_is_a_no_op(void **state) {
    fixture *f = *state;
    fisher_error err = {{0}};
    store *s = open_writer(f);
    int64_t id = add_job(s, "kept", 1.0);
    const char *schema = "SELECT sum(length(sql)) + count(*) FROM sqlite_schema";
    int64_t before = sql_int(f->path, schema);
    store_close(s);
    s = f->s = NULL;
    CHECK(store_open(f->path, 0, &f->s, &err));
    assert_int_equal(sql_int(f->path, schema), before);
    assert_int_equal(sql_int(f->path, "PRAGMA user_version"), 1);
    /* a reader beside the writer sees the job, and refuses writes */
    store *r;
    CHECK(store_open(f->path, STORE_READONLY, &r, &err));
    json_t *job;
    CHECK(store_job_get(r, id, &job, &err));
    assert_string_equal(jstr(job, "name"), "kept");
    json_decref(job);
    EXPECT_FAIL(store_job_set_status(r, id, STORE_JOB_RUNNING, NULL, 2.0, &err), STORE_INVALID, "read-only");
    store_record rec = {.kind = STORE_REC_CHECKPOINT, .job = id, .checkpoint = {1, "x"}};
    EXPECT_FAIL(store_write(r, &rec, 1, &err), STORE_INVALID, "read-only");
    store_close(r);
}

static void test_newer_and_foreign_databases_are_refused(void **state) {
    fixture *f = *state;
    fisher_error err = {{0}};
    store *s = open_writer(f);
    store_close(s);
    f->s = NULL;
    sql_exec(f->path, "PRAGMA user_version = 7");
    store *got = (store *)1;
    const char *words = "database schema version 7 is newer than this fisherd knows (1); "
                        "upgrade fisherd or use another --data-dir";
    EXPECT_FAIL(store_open(f->path, 0, &got, &err), STORE_ERROR, words);
    assert_null(got);
    EXPECT_FAIL(store_open(f->path, STORE_READONLY, &got, &err), STORE_ERROR, words);
    assert_int_equal(sql_int(f->path, "PRAGMA user_version"), 7); /* left as it was */

    char other[160];
    snprintf(other, sizeof other, "%s/other.db", f->dir);
    sql_exec(other, "CREATE TABLE t(x)");
    EXPECT_FAIL(store_open(other, 0, &got, &err), STORE_ERROR, "not fisherd's database");
    sql_exec(other, "PRAGMA application_id = 42");
    EXPECT_FAIL(store_open(other, 0, &got, &err), STORE_ERROR, "another application");

    snprintf(other, sizeof other, "%s/notes.txt", f->dir);
    FILE *fp = fopen(other, "w");
    fputs("these are not the pages you are looking for, not even one of them, no.\n", fp);
    fclose(fp);
    EXPECT_FAIL(store_open(other, 0, &got, &err), STORE_ERROR, "not a database");

    snprintf(other, sizeof other, "%s/missing.db", f->dir);
    EXPECT_FAIL(store_open(other, STORE_READONLY, &got, &err), STORE_ERROR, "read-only");
    assert_int_equal(access(other, F_OK), -1); /* a reader never creates */
}

/* ------------------------------------------------------------ lifecycle */

static void test_status_follows_the_lifecycle(void **state) {
    fixture *f = *state;
    fisher_error err = {{0}};
    store *s = open_writer(f);
    int64_t a = add_job(s, "a", 10.0), b = add_job(s, "b", 11.0);
    EXPECT_FAIL(store_job_set_status(s, a, STORE_JOB_SUCCEEDED, NULL, 12.0, &err), STORE_CONFLICT,
                "is queued and cannot become succeeded");
    CHECK(store_job_set_status(s, a, STORE_JOB_QUEUED, "waits for j_7", 12.0, &err));
    CHECK(store_job_set_status(s, a, STORE_JOB_RUNNING, NULL, 13.0, &err));
    CHECK(store_job_set_status(s, b, STORE_JOB_RUNNING, NULL, 13.5, &err));
    size_t n = 0;
    CHECK(store_jobs_interrupt_running(s, "fisherd stopped", 14.0, &n, &err));
    assert_int_equal(n, 2);
    CHECK(store_job_set_status(s, a, STORE_JOB_RUNNING, NULL, 15.0, &err)); /* resume */
    CHECK(store_job_set_status(s, a, STORE_JOB_SUCCEEDED, NULL, 16.0, &err));
    EXPECT_FAIL(store_job_set_status(s, a, STORE_JOB_CANCELLED, NULL, 17.0, &err), STORE_CONFLICT,
                "a finished job keeps its status");
    CHECK(store_job_set_status(s, b, STORE_JOB_CANCELLED, "by user", 17.0, &err));
    EXPECT_FAIL(store_job_set_status(s, 99, STORE_JOB_RUNNING, NULL, 17.0, &err), STORE_NOT_FOUND, "no job j_99");
    EXPECT_FAIL(store_job_set_out_dir(s, 99, "/x", &err), STORE_NOT_FOUND, "no job j_99");

    json_t *job;
    CHECK(store_job_get(s, a, &job, &err));
    assert_string_equal(jstr(job, "status"), "succeeded");
    assert_true(jreal(job, "started_at") == 13.0); /* the first start; a resume keeps it */
    assert_true(jreal(job, "finished_at") == 16.0);
    const char *want[] = {"queued", "queued", "running", "interrupted", "running", "succeeded"};
    assert_int_equal(json_array_size(jget(job, "events")), 6);
    for (int i = 0; i < 6; i++) {
        char p[32];
        snprintf(p, sizeof p, "events.%d.status", i);
        assert_string_equal(jstr(job, p), want[i]);
    }
    assert_string_equal(jstr(job, "events.1.reason"), "waits for j_7");
    assert_string_equal(jstr(job, "events.3.reason"), "fisherd stopped");
    json_decref(job);
    CHECK(store_job_get(s, b, &job, &err));
    assert_string_equal(jstr(job, "reason"), "by user");
    json_decref(job);

    json_t *counts;
    CHECK(store_job_counts(s, &counts, &err));
    assert_int_equal(jint(counts, "succeeded"), 1);
    assert_int_equal(jint(counts, "cancelled"), 1);
    assert_int_equal(jint(counts, "queued"), 0);
    assert_int_equal(json_object_size(counts), 6);
    json_decref(counts);

    int64_t id;
    store_job_new bad = {.name = "x", .spec = "{not json", .created_at = 1};
    EXPECT_FAIL(store_job_insert(s, &bad, &id, &err), STORE_INVALID, "not valid JSON");
    store_job_new waits = {.name = "x", .spec = "{}", .wait_for_job = 42, .created_at = 1};
    EXPECT_FAIL(store_job_insert(s, &waits, &id, &err), STORE_NOT_FOUND, "j_42");
    int64_t parsed;
    assert_int_equal(store_id_parse("j_12", 'j', &parsed), 0);
    assert_int_equal(parsed, 12);
    assert_int_equal(store_id_parse("m_12", 'j', &parsed), -1);
    assert_int_equal(store_id_parse("j_0", 'j', &parsed), -1);
    assert_int_equal(store_id_parse("j_12x", 'j', &parsed), -1);
    assert_int_equal(store_id_parse("j_99999999999999999999", 'j', &parsed), -1);
}

/* ------------------------------------------------------------ round trip */

static void test_every_record_kind_round_trips(void **state) {
    fixture *f = *state;
    fisher_error err = {{0}};
    store *s = open_writer(f);
    const char *spec = "{\"name\": \"rt\", \"steps\": 31, \"fisher\": {\"lambda\": 1.0}}";
    store_job_new jn = {.name = "rt", .spec = spec, .base_model = "m_3", .created_at = 100.0,
                        .out_dir = "/data/jobs/j_1"};
    int64_t job;
    CHECK(store_job_insert(s, &jn, &job, &err));
    CHECK(store_job_set_status(s, job, STORE_JOB_RUNNING, NULL, 101.0, &err));
    enum { N = 70 }; /* three drift blocks, the last one partial */
    write_groups(s, job, N);

    int idx[N];
    double js[N], ema[N];
    const int zero[] = {69}; /* frozen at step 0 (all-zero Fisher): never measured */
    for (int64_t step = 0; step <= 20; step += 10) {
        store_record r = drift_record(job, step, N, zero, 1, idx, js, ema);
        CHECK(store_write(s, &r, 1, &err));
    }
    const int frozen[] = {40, 5}, skip30[] = {40, 5, 69};
    store_record batch[8];
    int n = 0;
    batch[n++] = (store_record){.kind = STORE_REC_FREEZE, .job = job,
                                .freeze = {.step = 20, .metric = "total_variation", .mean = 0.5,
                                           .std = 0.25, .lambda = 1.0, .threshold = 0.75,
                                           .frozen = frozen, .n_frozen = 2, .chunks_live = N - 2,
                                           .params_live = 10 * (N - 2)}};
    int idx30[N];
    double js30[N], ema30[N];
    batch[n++] = drift_record(job, 30, N, skip30, 3, idx30, js30, ema30);
    batch[n++] = (store_record){.kind = STORE_REC_PROGRESS, .job = job,
                                .progress = {30, 31, 0.5, 10 * (N - 2), N - 2}};
    batch[n++] = (store_record){.kind = STORE_REC_PROGRESS, .job = job,
                                .progress = {31, 31, NAN, 10 * (N - 2), N - 2}};
    batch[n++] = (store_record){.kind = STORE_REC_EVAL, .job = job,
                                .eval = {30, "val", 0, 0.4, 0.6, 0.75, 0.97, 0.8, 0.7}};
    batch[n++] = (store_record){.kind = STORE_REC_EVAL, .job = job,
                                .eval = {31, "synthetic asphalt", 0, 0.9, 0.1, 0.2, 0.9, 0.3, 0.15}};
    batch[n++] = (store_record){.kind = STORE_REC_EVAL, .job = job,
                                .eval = {31, "val", 1, 0.35, 0.65, 0.79, 0.98, 0.81, 0.77}};
    batch[n++] = (store_record){.kind = STORE_REC_CHECKPOINT, .job = job,
                                .checkpoint = {31, "/data/jobs/j_1/checkpoint.safetensors"}};
    CHECK(store_write(s, batch, (size_t)n, &err));
    int64_t model = 0;
    store_record fin[2] = {
        {.kind = STORE_REC_RESULT, .job = job, .result = {"{\"val\": {\"iou\": 0.65}, \"wall_seconds\": 3.5}"}},
        {.kind = STORE_REC_MODEL, .job = job,
         .model = {"rt", "/data/jobs/j_1/model.safetensors", "tiny", 455841, 1823456, 102.0, &model}},
    };
    CHECK(store_write(s, fin, 2, &err));
    assert_true(model > 0);
    /* the zero-Fisher decision, written late: no statistics */
    store_record zf = {.kind = STORE_REC_FREEZE, .job = job,
                       .freeze = {.step = 0, .zero_fisher = 1, .mean = 9, .frozen = zero, .n_frozen = 1,
                                  .chunks_live = N - 3, .params_live = 10 * (N - 3)}};
    CHECK(store_write(s, &zf, 1, &err));
    CHECK(store_job_set_status(s, job, STORE_JOB_SUCCEEDED, NULL, 103.0, &err));

    /* the job */
    json_t *j;
    CHECK(store_job_get(s, job, &j, &err));
    assert_string_equal(jstr(j, "id"), "j_1");
    assert_string_equal(jstr(j, "base_model"), "m_3");
    assert_string_equal(jstr(j, "out_dir"), "/data/jobs/j_1");
    assert_true(json_is_null(jget(j, "wait_for_job")));
    assert_int_equal(jint(j, "progress.step"), 31);
    assert_int_equal(jint(j, "progress.steps"), 31);
    assert_true(json_is_null(jget(j, "progress.loss"))); /* NaN */
    assert_int_equal(jint(j, "params.total"), 10 * N);
    assert_int_equal(jint(j, "params.live"), 10 * (N - 3));
    assert_int_equal(jint(j, "chunks.total"), N);
    assert_int_equal(jint(j, "chunks.live"), N - 3);
    assert_int_equal(jint(j, "checkpoint.step"), 31);
    assert_string_equal(jstr(j, "checkpoint.path"), "/data/jobs/j_1/checkpoint.safetensors");
    json_t *want_spec = json_loads(spec, 0, NULL);
    assert_true(json_equal(jget(j, "spec"), want_spec));
    json_decref(want_spec);
    assert_true(jreal(j, "result.val.iou") == 0.65);
    assert_int_equal(json_array_size(jget(j, "evals")), 2); /* zero-shot and final, not the mid-run val */
    assert_string_equal(jstr(j, "evals.0.dataset"), "synthetic asphalt");
    assert_true(jreal(j, "evals.0.recall") == 0.15);
    assert_string_equal(jstr(j, "evals.1.dataset"), "val");
    assert_true(jreal(j, "evals.1.iou") == 0.65);
    /* the summary: no strategy in this spec; the best of val IoU 0.6 (step 30)
     * and 0.65 (final); the zero-shot set of the final evaluation */
    assert_true(json_is_null(jget(j, "strategy")));
    assert_true(jreal(j, "best_val_iou") == 0.65);
    assert_int_equal(json_array_size(jget(j, "zero_shot")), 1);
    assert_string_equal(jstr(j, "zero_shot.0.dataset"), "synthetic asphalt");
    assert_true(jreal(j, "zero_shot.0.iou") == 0.1);
    json_decref(j);

    /* the chunk table with the latest drift */
    json_t *g;
    CHECK(store_groups(s, job, &g, &err));
    assert_int_equal(json_array_size(jget(g, "groups")), N);
    assert_string_equal(jstr(g, "groups.5.key"), "enc.1.weight.rowblock1");
    assert_string_equal(jstr(g, "groups.5.layer_class"), "conv");
    assert_int_equal(jint(g, "groups.5.end"), 16);
    assert_true(json_is_false(jget(g, "groups.5.live")));
    assert_int_equal(jint(g, "groups.5.frozen_at"), 20);
    assert_int_equal(jint(g, "groups.5.js_step"), 20);
    assert_true(jreal(g, "groups.5.js_ema") == ema_of(5, 20));
    assert_true(json_is_true(jget(g, "groups.6.live")));
    assert_int_equal(jint(g, "groups.6.js_step"), 30);
    assert_true(jreal(g, "groups.6.js_ema") == ema_of(6, 30));
    assert_int_equal(jint(g, "groups.69.frozen_at"), 0);
    assert_true(json_is_null(jget(g, "groups.69.js_ema")));
    assert_true(json_is_null(jget(g, "groups.69.js_step")));
    json_decref(g);

    /* drift by key, by prefix, all */
    json_t *d;
    store_drift_query q = {.key = "enc.10.weight.rowblock0", .window = STORE_WINDOW_ALL};
    CHECK(store_drift(s, job, &q, &d, &err));
    assert_int_equal(json_array_size(jget(d, "series")), 1);
    assert_int_equal(jint(d, "series.0.idx"), 40);
    assert_int_equal(jint(d, "series.0.points"), 3); /* frozen at 20: not measured at 30 */
    for (int i = 0; i < 3; i++) {
        char p[64];
        snprintf(p, sizeof p, "series.0.step.%d", i);
        assert_int_equal(jint(d, p), 10 * i);
        snprintf(p, sizeof p, "series.0.js.%d", i);
        assert_true(jreal(d, p) == js_of(40, 10 * i));
        snprintf(p, sizeof p, "series.0.js_ema.%d", i);
        assert_true(jreal(d, p) == ema_of(40, 10 * i));
    }
    json_decref(d);
    q = (store_drift_query){.prefix = "enc.1.", .window = STORE_WINDOW_ALL};
    CHECK(store_drift(s, job, &q, &d, &err));
    assert_int_equal(json_array_size(jget(d, "series")), 4); /* not enc.10.… */
    assert_int_equal(jint(d, "series.1.points"), 3);         /* chunk 5 */
    assert_int_equal(jint(d, "series.2.points"), 4);
    json_decref(d);
    q = (store_drift_query){.window = STORE_WINDOW_ALL};
    CHECK(store_drift(s, job, &q, &d, &err));
    assert_int_equal(json_array_size(jget(d, "series")), N);
    assert_int_equal(jint(d, "series.69.points"), 0);
    assert_true(jreal(d, "series.65.js_ema.3") == ema_of(65, 30));
    json_decref(d);
    q = (store_drift_query){.key = "enc.99", .window = STORE_WINDOW_ALL};
    EXPECT_FAIL(store_drift(s, job, &q, &d, &err), STORE_NOT_FOUND, "no chunk 'enc.99'");
    assert_null(d);
    EXPECT_FAIL(store_drift(s, 77, &q, &d, &err), STORE_NOT_FOUND, "no job j_77");

    /* freezes */
    json_t *fz;
    CHECK(store_freezes(s, job, &fz, &err));
    assert_int_equal(json_array_size(jget(fz, "freezes")), 2);
    assert_string_equal(jstr(fz, "freezes.0.kind"), "zero_fisher");
    assert_true(json_is_null(jget(fz, "freezes.0.mean")));
    assert_true(json_is_null(jget(fz, "freezes.0.metric")));
    assert_string_equal(jstr(fz, "freezes.0.frozen_keys.0"), "enc.17.weight.rowblock1");
    assert_string_equal(jstr(fz, "freezes.1.kind"), "drift");
    assert_string_equal(jstr(fz, "freezes.1.metric"), "total_variation");
    assert_true(jreal(fz, "freezes.1.threshold") == 0.75);
    assert_int_equal(jint(fz, "freezes.1.n_frozen"), 2);
    assert_int_equal(jint(fz, "freezes.1.frozen.0"), 40);
    assert_string_equal(jstr(fz, "freezes.1.frozen_keys.1"), "enc.1.weight.rowblock1");
    assert_int_equal(jint(fz, "freezes.1.params_live"), 10 * (N - 2));
    json_decref(fz);

    /* metrics */
    json_t *m;
    CHECK(store_metrics(s, job, NULL, STORE_WINDOW_ALL, &m, &err));
    assert_true(jreal(m, "metrics.loss.value.0") == 0.5);
    assert_true(json_is_null(jget(m, "metrics.loss.value.1")));
    assert_int_equal(jint(m, "metrics.loss.step.1"), 31);
    assert_true(jreal(m, "metrics.params_live.value.0") == 10 * (N - 2));
    assert_int_equal(jint(m, "metrics.val_iou.points"), 2);
    assert_true(jreal(m, "metrics.val_iou.value.0") == 0.6);
    assert_true(jreal(m, "metrics.val_recall.value.1") == 0.77);
    assert_int_equal(json_object_size(jget(m, "metrics")), 8);
    json_decref(m);
    CHECK(store_metrics(s, job, "val_f1", STORE_WINDOW_ALL, &m, &err));
    assert_int_equal(json_object_size(jget(m, "metrics")), 1);
    assert_true(jreal(m, "metrics.val_f1.value.1") == 0.79);
    json_decref(m);

    /* models */
    json_t *ml;
    CHECK(store_models_list(s, NULL, 0, &ml, &err));
    assert_int_equal(json_array_size(jget(ml, "models")), 1);
    assert_string_equal(jstr(ml, "models.0.job"), "j_1");
    assert_true(json_is_null(jget(ml, "next_cursor")));
    json_decref(ml);
    CHECK(store_model_get(s, model, &ml, &err));
    assert_string_equal(jstr(ml, "id"), "m_1");
    assert_string_equal(jstr(ml, "config"), "tiny");
    assert_int_equal(jint(ml, "parameters"), 455841);
    assert_int_equal(jint(ml, "bytes"), 1823456);
    json_decref(ml);
    EXPECT_FAIL(store_model_get(s, 5, &ml, &err), STORE_NOT_FOUND, "no model m_5");
    int64_t upload;
    CHECK(store_model_register(s, "upload", "/models/x.safetensors", NULL, 0, 0, 0, 104.0, &upload, &err));
    CHECK(store_model_get(s, upload, &ml, &err));
    assert_true(json_is_null(jget(ml, "job")));
    json_decref(ml);

    /* heatmap: one column per measurement, then two */
    json_t *h;
    CHECK(store_drift_heatmap(s, job, STORE_WINDOW_ALL, &h, &err));
    assert_int_equal(jint(h, "measurements"), 4);
    assert_int_equal(json_array_size(jget(h, "step_from")), 4);
    assert_int_equal(json_array_size(jget(h, "values")), N);
    /* rows by depth: the last layer (chunks 68, 69) has depth 0 */
    assert_int_equal(jint(h, "groups.0.idx"), 68);
    assert_int_equal(jint(h, "groups.2.idx"), 64);
    assert_true(jreal(h, "values.0.2") == ema_of(68, 20));
    for (int c = 0; c < 4; c++) { /* chunk 69 was never measured */
        char p[32];
        snprintf(p, sizeof p, "values.1.%d", c);
        assert_true(json_is_null(jget(h, p)));
    }
    /* chunk 5 froze at 20: no cell after it */
    for (size_t r = 0; r < json_array_size(jget(h, "groups")); r++) {
        char p[32];
        snprintf(p, sizeof p, "groups.%zu.idx", r);
        if (jint(h, p) != 5) continue;
        snprintf(p, sizeof p, "values.%zu.2", r);
        assert_true(jreal(h, p) == ema_of(5, 20));
        snprintf(p, sizeof p, "values.%zu.3", r);
        assert_true(json_is_null(jget(h, p)));
    }
    json_decref(h);
    store_window two = {0, INT64_MAX, 2};
    CHECK(store_drift_heatmap(s, job, two, &h, &err));
    assert_int_equal(json_array_size(jget(h, "step_from")), 2);
    assert_int_equal(jint(h, "step_from.1"), 20);
    assert_int_equal(jint(h, "step_to.1"), 30);
    for (size_t r = 0; r < json_array_size(jget(h, "groups")); r++) {
        char p[64];
        snprintf(p, sizeof p, "groups.%zu.idx", r);
        int i = (int)jint(h, p);
        if (i == 69) continue;
        snprintf(p, sizeof p, "values.%zu.0", r);
        assert_true(jreal(h, p) == fmax(ema_of(i, 0), ema_of(i, 10)));
        snprintf(p, sizeof p, "values.%zu.1", r);
        double want = i == 5 || i == 40 ? ema_of(i, 20) : fmax(ema_of(i, 20), ema_of(i, 30));
        assert_true(jreal(h, p) == want);
    }
    json_decref(h);
}

/* ------------------------------------------------------------ pagination */

/* Walks every page and checks ids come newest first, each once, and
 * exactly the jobs matching want[id] (want has room for every id). */
static void walk_pages(store *s, const char *status, const char *name, size_t limit, const int *want,
                       int64_t max_id) {
    fisher_error err = {{0}};
    int seen[64] = {0};
    int64_t last = INT64_MAX;
    char cursor[32] = "";
    int pages = 0;
    for (;;) {
        store_job_filter flt = {status, name, cursor[0] ? cursor : NULL, limit};
        json_t *page;
        CHECK(store_jobs_list(s, &flt, &page, &err));
        json_t *jobs = jget(page, "jobs");
        assert_true(json_array_size(jobs) <= limit);
        for (size_t i = 0; i < json_array_size(jobs); i++) {
            int64_t id;
            assert_int_equal(store_id_parse(json_string_value(json_object_get(json_array_get(jobs, i), "id")),
                                            'j', &id), 0);
            assert_true(id < last);
            last = id;
            assert_true(want[id]);
            seen[id]++;
        }
        pages++;
        json_t *next = jget(page, "next_cursor");
        if (json_is_null(next)) {
            json_decref(page);
            break;
        }
        snprintf(cursor, sizeof cursor, "%s", json_string_value(next));
        json_decref(page);
    }
    for (int64_t id = 1; id <= max_id; id++) assert_int_equal(seen[id], want[id] ? 1 : 0);
    printf("  status %-8s name %-6s limit %zu: %d pages\n", status ? status : "any", name ? name : "any",
           limit, pages);
}

static void test_pagination_walks_every_job_once(void **state) {
    fixture *f = *state;
    fisher_error err = {{0}};
    store *s = open_writer(f);
    enum { J = 23 };
    int all[64] = {0}, failed[64] = {0}, beta[64] = {0}, beta_failed[64] = {0}, none[64] = {0};
    for (int i = 1; i <= J; i++) {
        char name[32];
        snprintf(name, sizeof name, i % 2 ? "Beta_%d" : "alpha-%d", i);
        int64_t id = add_job(s, name, i);
        assert_int_equal(id, i);
        all[i] = 1;
        beta[i] = i % 2;
        if (i % 3 == 0) {
            CHECK(store_job_set_status(s, id, STORE_JOB_RUNNING, NULL, i, &err));
            CHECK(store_job_set_status(s, id, STORE_JOB_FAILED, "boom", i, &err));
            failed[i] = 1;
            beta_failed[i] = i % 2;
        }
    }
    walk_pages(s, NULL, NULL, 5, all, J);
    walk_pages(s, NULL, NULL, 23, all, J);
    walk_pages(s, NULL, NULL, 1000, all, J);
    walk_pages(s, "failed", NULL, 2, failed, J);
    /* case-insensitive, and '_' is a character, not LIKE's wildcard */
    walk_pages(s, NULL, "bETA_", 4, beta, J);
    walk_pages(s, NULL, "a_", 4, beta, J);
    walk_pages(s, "failed", "beta", 1, beta_failed, J);
    walk_pages(s, "running", NULL, 3, none, J);
    walk_pages(s, NULL, "%", 3, none, J);

    /* a job deleted behind the cursor and one added before it change nothing */
    json_t *page;
    store_job_filter flt = {.limit = 10};
    CHECK(store_jobs_list(s, &flt, &page, &err));
    char cursor[32];
    snprintf(cursor, sizeof cursor, "%s", jstr(page, "next_cursor"));
    json_decref(page);
    CHECK(store_job_delete(s, 21, &err));
    add_job(s, "late", 99);
    flt.cursor = cursor;
    CHECK(store_jobs_list(s, &flt, &page, &err));
    assert_string_equal(jstr(page, "jobs.0.id"), "j_13");
    json_decref(page);

    flt = (store_job_filter){.cursor = "zz"};
    EXPECT_FAIL(store_jobs_list(s, &flt, &page, &err), STORE_INVALID, "cursor 'zz'");
    flt = (store_job_filter){.status = "done"};
    EXPECT_FAIL(store_jobs_list(s, &flt, &page, &err), STORE_INVALID, "unknown status 'done'");
    flt = (store_job_filter){.limit = 1001};
    EXPECT_FAIL(store_jobs_list(s, &flt, &page, &err), STORE_INVALID, "limit 1001");
}

/* ------------------------------------------------------------ downsampling and CSV */

/* The series the downsampling tests use: noise, one spike, one dip. */
static double wave(int64_t i) {
    double v = 0.3 + 0.1 * sin((double)i * 0.37) + 0.05 * sin((double)i * 2.9);
    return i == 500 ? 0.9 : i == 777 ? 0.01 : v;
}

/* Checks a downsampled (step, y) reply against the full series y(step) of
 * n points starting at step first (steps first, first + 1, …). */
static void expect_extremes(json_t *steps, json_t *ys, int64_t first, size_t n, size_t max_points,
                            double (*y)(int64_t)) {
    size_t k = json_array_size(steps);
    assert_int_equal(json_array_size(ys), k);
    assert_true(k <= max_points);
    assert_int_equal(json_integer_value(json_array_get(steps, 0)), first);
    assert_int_equal(json_integer_value(json_array_get(steps, k - 1)), first + (int64_t)n - 1);
    for (size_t i = 0; i < k; i++) {
        int64_t st = json_integer_value(json_array_get(steps, i));
        if (i) assert_true(st > json_integer_value(json_array_get(steps, i - 1)));
        assert_true(json_real_value(json_array_get(ys, i)) == y(st));
    }
    /* each of the (max_points − 2) / 2 buckets of the inner points shows its
     * min and its max (store.h's contract) */
    size_t buckets = (max_points - 2) / 2, inner = n - 2;
    for (size_t b = 0; b < buckets; b++) {
        size_t lo = 1 + b * inner / buckets, hi = 1 + (b + 1) * inner / buckets;
        double mn = INFINITY, mx = -INFINITY;
        for (size_t i = lo; i < hi; i++) mn = fmin(mn, y(first + (int64_t)i)), mx = fmax(mx, y(first + (int64_t)i));
        int has_min = 0, has_max = 0;
        for (size_t i = 0; i < k; i++) {
            int64_t st = json_integer_value(json_array_get(steps, i));
            if (st < first + (int64_t)lo || st >= first + (int64_t)hi) continue;
            has_min |= y(st) == mn, has_max |= y(st) == mx;
        }
        assert_true(has_min && has_max);
    }
}

static void test_downsampling_keeps_first_last_and_extremes(void **state) {
    fixture *f = *state;
    fisher_error err = {{0}};
    store *s = open_writer(f);
    int64_t job = add_job(s, "ds", 1);
    write_groups(s, job, 1);
    enum { P = 1000 };
    store_record *recs = calloc(2 * P, sizeof *recs);
    int idx[1] = {0};
    static double js[P], ema[P];
    for (int i = 0; i < P; i++) {
        js[i] = -wave(i), ema[i] = wave(i);
        recs[2 * i] = (store_record){.kind = STORE_REC_DRIFT, .job = job,
                                     .drift = {i, 1, idx, &js[i], &ema[i]}};
        recs[2 * i + 1] = (store_record){.kind = STORE_REC_PROGRESS, .job = job,
                                         .progress = {i, P, wave(i), 10, 1}};
    }
    CHECK(store_write(s, recs, 2 * P, &err));
    free(recs);

    const size_t sizes[] = {2, 3, 7, 50, 101, 999};
    for (size_t t = 0; t < sizeof sizes / sizeof sizes[0]; t++) {
        json_t *d, *m;
        store_drift_query q = {.key = "enc.0.weight.rowblock0", .window = {0, INT64_MAX, sizes[t]}};
        CHECK(store_drift(s, job, &q, &d, &err));
        assert_int_equal(jint(d, "series.0.points"), P);
        expect_extremes(jget(d, "series.0.step"), jget(d, "series.0.js_ema"), 0, P, sizes[t], wave);
        if (sizes[t] >= 4) { /* the spike and the dip survive */
            int spike = 0, dip = 0;
            json_t *ys = jget(d, "series.0.js_ema");
            for (size_t i = 0; i < json_array_size(ys); i++) {
                spike |= json_real_value(json_array_get(ys, i)) == 0.9;
                dip |= json_real_value(json_array_get(ys, i)) == 0.01;
            }
            assert_true(spike && dip);
        }
        printf("  max_points %4zu: %zu points\n", sizes[t], json_array_size(jget(d, "series.0.step")));
        json_decref(d);
        CHECK(store_metrics(s, job, "loss", (store_window){0, INT64_MAX, sizes[t]}, &m, &err));
        expect_extremes(jget(m, "metrics.loss.step"), jget(m, "metrics.loss.value"), 0, P, sizes[t], wave);
        json_decref(m);
    }
    json_t *d;
    store_drift_query q = {.key = "enc.0.weight.rowblock0", .window = {100, 399, 0}};
    CHECK(store_drift(s, job, &q, &d, &err));
    assert_int_equal(jint(d, "series.0.points"), 300);
    assert_int_equal(json_array_size(jget(d, "series.0.step")), 300); /* 0: every point */
    assert_int_equal(jint(d, "series.0.step.0"), 100);
    json_decref(d);
    q.window = (store_window){100, 399, 20};
    CHECK(store_drift(s, job, &q, &d, &err));
    expect_extremes(jget(d, "series.0.step"), jget(d, "series.0.js_ema"), 100, 300, 20, wave);
    json_decref(d);
    q.window = (store_window){0, INT64_MAX, 1};
    EXPECT_FAIL(store_drift(s, job, &q, &d, &err), STORE_INVALID, "at least 2");
    q.window = (store_window){5, 4, 0};
    EXPECT_FAIL(store_drift(s, job, &q, &d, &err), STORE_INVALID, "is empty");

    /* heatmap columns: 1000 measurements into 7 equal-count buckets */
    json_t *h;
    CHECK(store_drift_heatmap(s, job, (store_window){0, INT64_MAX, 7}, &h, &err));
    assert_int_equal(json_array_size(jget(h, "values.0")), 7);
    int64_t expect_from = 0;
    for (int c = 0; c < 7; c++) {
        char p[32];
        snprintf(p, sizeof p, "step_from.%d", c);
        assert_int_equal(jint(h, p), expect_from);
        snprintf(p, sizeof p, "step_to.%d", c);
        int64_t to = jint(h, p);
        double mx = -1;
        for (int64_t i = expect_from; i <= to; i++) mx = fmax(mx, wave(i));
        snprintf(p, sizeof p, "values.0.%d", c);
        assert_true(jreal(h, p) == mx);
        expect_from = to + 1;
    }
    assert_int_equal(expect_from, P);
    json_decref(h);
}

typedef struct {
    char *buf;
    size_t len, cap;
    size_t stop_after; /* bytes after which the sink refuses (0: never) */
} sink_buf;

static int to_buf(void *ctx, const char *data, size_t len) {
    sink_buf *b = ctx;
    if (b->stop_after && b->len + len > b->stop_after) return 1;
    if (b->len + len + 1 > b->cap) b->buf = realloc(b->buf, b->cap = 2 * (b->len + len + 1));
    memcpy(b->buf + b->len, data, len);
    b->len += len;
    b->buf[b->len] = '\0';
    return 0;
}

static void test_csv_has_every_point(void **state) {
    fixture *f = *state;
    fisher_error err = {{0}};
    store *s = open_writer(f);
    int64_t job = add_job(s, "csv", 1);
    enum { N = 40, STEPS = 1500 };
    names *nm;
    store_group *g = make_groups(N, &nm);
    g[3].key = "odd,\"key\""; /* quoted on the way out */
    store_record gr = {.kind = STORE_REC_GROUPS, .job = job, .groups = {g, N}};
    CHECK(store_write(s, &gr, 1, &err));
    free(g);
    free(nm);
    int idx[N];
    double js[N], ema[N];
    for (int64_t step = 0; step < STEPS; step++) {
        const int skip[] = {7};
        store_record r = drift_record(job, step, N, skip, step >= 500, idx, js, ema);
        store_record p = {.kind = STORE_REC_PROGRESS, .job = job, .progress = {step + 1, STEPS, wave(step), 1, 1}};
        store_record both[2] = {r, p};
        CHECK(store_write(s, both, 2, &err));
    }
    sink_buf b = {0};
    store_drift_query q = {.window = {0, INT64_MAX, 10}}; /* max_points is ignored */
    CHECK(store_drift_csv(s, job, &q, to_buf, &b, &err));
    char *line = strtok(b.buf, "\n");
    assert_string_equal(line, "key,idx,step,js,js_ema");
    size_t lines = 0;
    int last_idx = -1;
    int64_t last_step = -1;
    while ((line = strtok(NULL, "\n"))) {
        int i;
        long long step;
        double x, y;
        const char *rest = line;
        if (line[0] == '"') {
            assert_true(strncmp(line, "\"odd,\"\"key\"\"\",", 14) == 0);
            rest = line + 13;
        } else {
            rest = strchr(line, ',');
        }
        assert_int_equal(sscanf(rest, ",%d,%lld,%lf,%lf", &i, &step, &x, &y), 4);
        assert_true(i > last_idx || (i == last_idx && step > last_step));
        last_idx = i, last_step = step;
        assert_true(x == js_of(i, step)); /* 17 digits: exact */
        assert_true(y == ema_of(i, step));
        lines++;
    }
    assert_int_equal(lines, (size_t)N * STEPS - (STEPS - 500));
    free(b.buf);

    b = (sink_buf){0};
    CHECK(store_metrics_csv(s, job, "loss", STORE_WINDOW_ALL, to_buf, &b, &err));
    line = strtok(b.buf, "\n");
    assert_string_equal(line, "name,step,value");
    lines = 0;
    while ((line = strtok(NULL, "\n"))) {
        long long step;
        double v;
        assert_int_equal(sscanf(line, "loss,%lld,%lf", &step, &v), 2);
        assert_true(v == wave(step - 1));
        lines++;
    }
    assert_int_equal(lines, STEPS);
    free(b.buf);

    b = (sink_buf){.stop_after = 100000};
    q = (store_drift_query){.window = STORE_WINDOW_ALL};
    EXPECT_FAIL(store_drift_csv(s, job, &q, to_buf, &b, &err), STORE_ERROR, "stopped taking it");
    free(b.buf);
}

/* ------------------------------------------------------------ job summaries */

/* The list's row of job id (every job is on the first page here). */
static json_t *listed_job(store *s, int64_t id) {
    fisher_error err = {{0}};
    json_t *page;
    store_job_filter flt = {.limit = 50};
    CHECK(store_jobs_list(s, &flt, &page, &err));
    char want[32];
    snprintf(want, sizeof want, "j_%lld", (long long)id);
    json_t *job = NULL, *v;
    size_t i;
    json_array_foreach(jget(page, "jobs"), i, v)
        if (!strcmp(json_string_value(json_object_get(v, "id")), want)) job = json_incref(v);
    json_decref(page);
    if (!job) fail_msg("%s is not listed", want);
    return job;
}

static void test_job_summaries_carry_strategy_and_results(void **state) {
    fixture *f = *state;
    fisher_error err = {{0}};
    store *s = open_writer(f);
    store_job_new jn = {.name = "fisher", .spec = "{\"strategy\": \"fisher\", \"steps\": 40}", .created_at = 1};
    int64_t a, b, c;
    CHECK(store_job_insert(s, &jn, &a, &err));
    jn = (store_job_new){.name = "full", .spec = "{\"strategy\": \"full\"}", .created_at = 2};
    CHECK(store_job_insert(s, &jn, &b, &err));
    c = add_job(s, "no strategy", 3);

    json_t *j = listed_job(s, a);
    assert_string_equal(jstr(j, "strategy"), "fisher");
    assert_true(json_is_null(jget(j, "best_val_iou")));
    assert_true(json_is_null(jget(j, "zero_shot")));
    assert_true(json_is_null(jget(j, "params.total")));
    json_decref(j);

    /* progress carries the model's size for any strategy; 0 keeps it */
    store_record r[4];
    r[0] = (store_record){.kind = STORE_REC_PROGRESS, .job = b, .progress = {1, 40, 0.5, 300, 0, 1000}};
    CHECK(store_write(s, r, 1, &err));
    j = listed_job(s, b);
    assert_int_equal(jint(j, "params.total"), 1000);
    assert_int_equal(jint(j, "params.live"), 300);
    json_decref(j);
    r[0] = (store_record){.kind = STORE_REC_PROGRESS, .job = b, .progress = {2, 40, 0.5, 310, 0, 0}};
    CHECK(store_write(s, r, 1, &err));
    j = listed_job(s, b);
    assert_int_equal(jint(j, "params.total"), 1000);
    assert_int_equal(jint(j, "progress.step"), 2);
    json_decref(j);

    /* the best val IoU so far, live: validations of a running job (a NaN is no best) */
    const double ious[] = {0.5, 0.7, NAN, 0.6};
    for (int i = 0; i < 4; i++)
        r[i] = (store_record){.kind = STORE_REC_EVAL, .job = a, .eval = {10 * (i + 1), "val", 0, 0.3, ious[i], 0.5, 0.9, 0.5, 0.5}};
    CHECK(store_write(s, r, 2, &err));
    j = listed_job(s, a);
    assert_true(jreal(j, "best_val_iou") == 0.7);
    assert_true(json_is_null(jget(j, "zero_shot"))); /* not evaluated yet */
    json_decref(j);
    CHECK(store_write(s, r + 2, 2, &err));

    /* the final evaluation: val and the zero-shot sets, in one batch */
    r[0] = (store_record){.kind = STORE_REC_EVAL, .job = a, .eval = {40, "val", 1, 0.3, 0.65, 0.7, 0.9, 0.7, 0.7}};
    r[1] = (store_record){.kind = STORE_REC_EVAL, .job = a, .eval = {40, "synthetic wall", 1, 0.9, 0.2, 0.3, 0.8, 0.3, 0.3}};
    r[2] = (store_record){.kind = STORE_REC_EVAL, .job = a, .eval = {40, "synthetic asphalt", 1, 0.8, 0.3, 0.4, 0.8, 0.4, 0.4}};
    CHECK(store_write(s, r, 3, &err));
    r[0] = (store_record){.kind = STORE_REC_EVAL, .job = b, .eval = {40, "val", 1, 0.3, 0.55, 0.7, 0.9, 0.7, 0.7}};
    CHECK(store_write(s, r, 1, &err));

    j = listed_job(s, a);
    assert_true(jreal(j, "best_val_iou") == 0.7);
    assert_int_equal(json_array_size(jget(j, "zero_shot")), 2); /* by dataset name */
    assert_string_equal(jstr(j, "zero_shot.0.dataset"), "synthetic asphalt");
    assert_true(jreal(j, "zero_shot.0.iou") == 0.3);
    assert_string_equal(jstr(j, "zero_shot.1.dataset"), "synthetic wall");
    assert_true(jreal(j, "zero_shot.1.iou") == 0.2);
    assert_int_equal(json_object_size(jget(j, "zero_shot.0")), 2);
    json_t *full;
    CHECK(store_job_get(s, a, &full, &err)); /* the job's own read says the same */
    json_t *keys[] = {jget(full, "strategy"), jget(full, "best_val_iou"), jget(full, "zero_shot")};
    assert_true(json_equal(keys[0], jget(j, "strategy")));
    assert_true(json_equal(keys[1], jget(j, "best_val_iou")));
    assert_true(json_equal(keys[2], jget(j, "zero_shot")));
    json_decref(full);
    json_decref(j);

    j = listed_job(s, b); /* finished with no zero-shot sets: known, and empty */
    assert_string_equal(jstr(j, "strategy"), "full");
    assert_true(jreal(j, "best_val_iou") == 0.55);
    assert_true(json_is_array(jget(j, "zero_shot")));
    assert_int_equal(json_array_size(jget(j, "zero_shot")), 0);
    json_decref(j);

    j = listed_job(s, c);
    assert_true(json_is_null(jget(j, "strategy")));
    json_decref(j);
}

/* ------------------------------------------------------------ drift filters */

/* The idx of a drift reply's series, as "1,5,9". */
static void series_ids(json_t *d, char *out, size_t len) {
    size_t used = 0, i;
    json_t *v;
    out[0] = '\0';
    json_array_foreach(jget(d, "series"), i, v)
        used += (size_t)snprintf(out + used, len - used, "%s%lld", i ? "," : "",
                                 (long long)json_integer_value(json_object_get(v, "idx")));
}

static void expect_selection(store *s, int64_t job, store_drift_query q, const char *want) {
    fisher_error err = {{0}};
    json_t *d;
    char got[512];
    q.window = STORE_WINDOW_ALL;
    CHECK(store_drift(s, job, &q, &d, &err));
    series_ids(d, got, sizeof got);
    json_decref(d);
    printf("  %-40s -> %s\n", want, got);
    assert_string_equal(got, want);
}

static void test_drift_filters_combine(void **state) {
    fixture *f = *state;
    fisher_error err = {{0}};
    store *s = open_writer(f);
    int64_t job = add_job(s, "filters", 1);
    enum { N = 40 }; /* "enc.<i/4>.weight.rowblock<i%4>"; odd idx conv, even linear */
    write_groups(s, job, N);
    int idx[N];
    double js[N], ema[N];
    for (int64_t step = 0; step < 2; step++) {
        store_record r = drift_record(job, step, N, NULL, 0, idx, js, ema);
        CHECK(store_write(s, &r, 1, &err));
    }
    const char *two[] = {"enc.1.", "enc.3."}, *one[] = {"enc.2."};
    expect_selection(s, job, (store_drift_query){.prefixes = two, .n_prefixes = 2}, "4,5,6,7,12,13,14,15");
    expect_selection(s, job, (store_drift_query){.prefix = "enc.1.", .prefixes = one, .n_prefixes = 1},
                     "4,5,6,7,8,9,10,11");
    expect_selection(s, job, (store_drift_query){.prefix = "enc.1"}, "4,5,6,7"); /* enc.1x does not exist */
    expect_selection(s, job, (store_drift_query){.layer_class = "conv", .prefixes = two, .n_prefixes = 2},
                     "5,7,13,15");
    expect_selection(s, job, (store_drift_query){.layer_class = "batchnorm"}, "");
    const int64_t some[] = {9, 2, 9, 30};
    expect_selection(s, job, (store_drift_query){.idx = some, .n_idx = 4}, "2,9,30");
    expect_selection(s, job, (store_drift_query){.idx = some, .n_idx = 4, .layer_class = "linear"}, "2,30");
    expect_selection(s, job, (store_drift_query){.idx = some, .n_idx = 4, .prefix = "enc.0."}, "2");
    expect_selection(s, job, (store_drift_query){.key = "enc.0.weight.rowblock1", .layer_class = "conv"}, "1");
    expect_selection(s, job, (store_drift_query){.key = "enc.0.weight.rowblock1", .layer_class = "linear"}, "");
    json_t *d;
    store_drift_query q = {.layer_class = "conv", .window = STORE_WINDOW_ALL};
    CHECK(store_drift(s, job, &q, &d, &err));
    assert_int_equal(json_array_size(jget(d, "series")), N / 2);
    assert_int_equal(jint(d, "series.0.points"), 2);
    json_decref(d);

    const int64_t out[] = {3, N}, negative[] = {-1};
    q = (store_drift_query){.idx = out, .n_idx = 2, .window = STORE_WINDOW_ALL};
    EXPECT_FAIL(store_drift(s, job, &q, &d, &err), STORE_INVALID, "chunk index 40 is out of range: j_1 has 40 chunks");
    assert_null(d);
    q.idx = negative, q.n_idx = 1;
    EXPECT_FAIL(store_drift(s, job, &q, &d, &err), STORE_INVALID, "chunk index -1 is out of range");

    /* the CSV takes the same filters */
    sink_buf b = {0};
    q = (store_drift_query){.prefixes = two, .n_prefixes = 2, .layer_class = "linear", .window = STORE_WINDOW_ALL};
    CHECK(store_drift_csv(s, job, &q, to_buf, &b, &err));
    size_t lines = 0;
    for (char *line = strtok(b.buf, "\n"); line; line = strtok(NULL, "\n")) lines++;
    assert_int_equal(lines, 1 + 4 * 2); /* header, chunks 4, 6, 12, 14 at steps 0 and 1 */
    free(b.buf);
    b = (sink_buf){0};
    q = (store_drift_query){.idx = out, .n_idx = 2, .window = STORE_WINDOW_ALL};
    EXPECT_FAIL(store_drift_csv(s, job, &q, to_buf, &b, &err), STORE_INVALID, "out of range");
    free(b.buf);
}

/* ------------------------------------------------------------ rewind */

static void test_rewind_forgets_what_a_resume_replays(void **state) {
    fixture *f = *state;
    fisher_error err = {{0}};
    store *s = open_writer(f);
    int64_t job = add_job(s, "resume", 1);
    enum { N = 4 };
    write_groups(s, job, N);
    int idx[N];
    double js[N], ema[N];
    for (int64_t step = 0; step <= 40; step += 10) {
        const int skip[] = {1};
        store_record r = drift_record(job, step, N, skip, step > 20, idx, js, ema);
        CHECK(store_write(s, &r, 1, &err));
        if (step == 20) {
            store_record fr = {.kind = STORE_REC_FREEZE, .job = job,
                               .freeze = {.step = 20, .metric = "mean_js", .frozen = skip, .n_frozen = 1,
                                          .chunks_live = 3, .params_live = 30}};
            CHECK(store_write(s, &fr, 1, &err));
        }
    }
    for (int64_t step = 1; step <= 40; step++) {
        store_record p = {.kind = STORE_REC_PROGRESS, .job = job,
                          .progress = {step, 40, 1.0 / (double)step, step > 20 ? 30 : 40, step > 20 ? 3 : 4}};
        CHECK(store_write(s, &p, 1, &err));
    }
    store_record ev = {.kind = STORE_REC_EVAL, .job = job, .eval = {40, "val", 0, 0.3, 0.5, 0.6, 0.9, 0.6, 0.6}};
    CHECK(store_write(s, &ev, 1, &err));

    store_record rw = {.kind = STORE_REC_REWIND, .job = job, .rewind = {25}};
    CHECK(store_write(s, &rw, 1, &err));
    assert_int_equal(sql_int(f->path, "SELECT max(step) FROM drift"), 20);
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM drift_steps"), 3);
    assert_int_equal(sql_int(f->path, "SELECT max(step) FROM metrics"), 25);
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM metrics WHERE name LIKE 'val_%'"), 0);
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM freezes"), 1); /* at 20 < 25 */
    assert_int_equal(sql_int(f->path, "SELECT frozen_at FROM groups WHERE idx = 1"), 20);
    assert_int_equal(sql_int(f->path, "SELECT step FROM jobs"), 25);

    rw.rewind.step = 20; /* the decision at 0-based step 20 is replayed too */
    CHECK(store_write(s, &rw, 1, &err));
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM freezes"), 0);
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM groups WHERE frozen_at IS NOT NULL"), 0);
    assert_int_equal(sql_int(f->path, "SELECT chunks_live FROM jobs"), 4);
    assert_int_equal(sql_int(f->path, "SELECT params_live FROM jobs"), 40);
    assert_int_equal(sql_int(f->path, "SELECT max(step) FROM drift"), 10);

    /* replaying a step rewrites it in place */
    store_record again = drift_record(job, 10, N, NULL, 0, idx, js, ema);
    CHECK(store_write(s, &again, 1, &err));
    CHECK(store_write(s, &again, 1, &err));
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM drift_steps"), 2);
}

/* ------------------------------------------------------------ delete */

/* Everything a job can have, so a delete has something to miss. */
static int64_t full_job(store *s, const char *name, int finish) {
    fisher_error err = {{0}};
    int64_t job = add_job(s, name, 1);
    CHECK(store_job_set_status(s, job, STORE_JOB_RUNNING, NULL, 2, &err));
    enum { N = 40 };
    write_groups(s, job, N);
    int idx[N];
    double js[N], ema[N];
    const int frozen[] = {3};
    for (int64_t step = 0; step < 50; step += 5) {
        store_record r[3];
        r[0] = drift_record(job, step, N, frozen, step > 20, idx, js, ema);
        r[1] = (store_record){.kind = STORE_REC_PROGRESS, .job = job, .progress = {step + 1, 50, 0.5, 390, 39}};
        r[2] = (store_record){.kind = STORE_REC_EVAL, .job = job, .eval = {step + 1, "val", 0, 1, 1, 1, 1, 1, 1}};
        CHECK(store_write(s, r, 3, &err));
    }
    store_record r[4] = {
        {.kind = STORE_REC_FREEZE, .job = job,
         .freeze = {.step = 20, .metric = "total_variation", .frozen = frozen, .n_frozen = 1,
                    .chunks_live = N - 1, .params_live = 390}},
        {.kind = STORE_REC_EVAL, .job = job, .eval = {50, "synthetic wall", 1, 1, 1, 1, 1, 1, 1}},
        {.kind = STORE_REC_CHECKPOINT, .job = job, .checkpoint = {50, "/c"}},
        {.kind = STORE_REC_MODEL, .job = job, .model = {name, "/m", "tiny", 1, 2, 3, NULL}},
    };
    CHECK(store_write(s, r, 4, &err));
    if (finish) CHECK(store_job_set_status(s, job, STORE_JOB_SUCCEEDED, NULL, 3, &err));
    return job;
}

static const char *const job_tables[] = {"job_events", "groups", "drift_steps", "drift",
                                         "freezes",    "metrics", "evals"};

static int64_t rows_of(const char *path, const char *table, int64_t job) {
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s WHERE job_id = %lld", table, (long long)job);
    return sql_int(path, sql);
}

static void test_delete_removes_the_job_and_nothing_else(void **state) {
    fixture *f = *state;
    fisher_error err = {{0}};
    store *s = open_writer(f);
    int64_t a = full_job(s, "a", 1), b = full_job(s, "b", 0);
    store_job_new waiter = {.name = "c", .spec = "{}", .base_model = "{\"job\": \"j_1\"}",
                            .wait_for_job = a, .created_at = 4};
    int64_t c;
    CHECK(store_job_insert(s, &waiter, &c, &err));
    int64_t before[7];
    for (int t = 0; t < 7; t++) {
        before[t] = rows_of(f->path, job_tables[t], b);
        assert_true(rows_of(f->path, job_tables[t], a) > 0);
        assert_true(before[t] > 0);
    }
    EXPECT_FAIL(store_job_delete(s, b, &err), STORE_CONFLICT, "is running: cancel it first");
    CHECK(store_job_delete(s, a, &err));
    for (int t = 0; t < 7; t++) {
        assert_int_equal(rows_of(f->path, job_tables[t], a), 0);
        assert_int_equal(rows_of(f->path, job_tables[t], b), before[t]);
    }
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM jobs"), 2);
    /* the model it produced stays, no longer tied to it; the waiter forgets it */
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM models WHERE job_id IS NULL"), 1);
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM models WHERE job_id = 2"), 1);
    json_t *j;
    CHECK(store_job_get(s, c, &j, &err));
    assert_true(json_is_null(jget(j, "wait_for_job")));
    assert_string_equal(jstr(j, "base_model"), "{\"job\": \"j_1\"}");
    json_decref(j);
    EXPECT_FAIL(store_job_get(s, a, &j, &err), STORE_NOT_FOUND, "no job j_1");
    EXPECT_FAIL(store_groups(s, a, &j, &err), STORE_NOT_FOUND, "no job j_1");
    EXPECT_FAIL(store_job_delete(s, a, &err), STORE_NOT_FOUND, "no job j_1");
    /* ids are never reused, not even the newest one's */
    int64_t d = add_job(s, "d", 5);
    assert_int_equal(d, 4);
    CHECK(store_job_set_status(s, d, STORE_JOB_CANCELLED, NULL, 6, &err));
    CHECK(store_job_delete(s, d, &err));
    assert_int_equal(add_job(s, "e", 7), 5);
    CHECK(store_check(s, &err));
    expect_integrity_ok(f->path);
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM pragma_foreign_key_check"), 0);
}

/* ------------------------------------------------------------ failed batches */

static int64_t count_all(const char *path) {
    return sql_int(path, "SELECT (SELECT count(*) FROM drift) + (SELECT count(*) FROM drift_steps) + "
                         "(SELECT count(*) FROM metrics) + (SELECT count(*) FROM evals) + "
                         "(SELECT count(*) FROM freezes) + (SELECT count(*) FROM models) + "
                         "(SELECT count(*) FROM groups WHERE frozen_at IS NOT NULL) + "
                         "(SELECT step + coalesce(checkpoint_step, 0) FROM jobs WHERE id = 1) + "
                         "(SELECT count(*) FROM jobs WHERE result IS NOT NULL)");
}

static void test_a_failed_batch_writes_nothing(void **state) {
    fixture *f = *state;
    fisher_error err = {{0}};
    store *s = open_writer(f);
    int64_t job = add_job(s, "batch", 1);
    enum { N = 40 };
    write_groups(s, job, N);
    int64_t before = count_all(f->path);
    assert_int_equal(before, 0);

    int idx[N], dup[3] = {1, 2, 1};
    double js[N], ema[N];
    const int frozen[] = {4};
    int64_t model = -1;
    store_record good[6] = {
        drift_record(job, 0, N, NULL, 0, idx, js, ema),
        {.kind = STORE_REC_PROGRESS, .job = job, .progress = {1, 10, 0.5, 1, 1}},
        {.kind = STORE_REC_FREEZE, .job = job, .freeze = {.step = 0, .zero_fisher = 1, .frozen = frozen, .n_frozen = 1}},
        {.kind = STORE_REC_EVAL, .job = job, .eval = {1, "zs", 0, 1, 1, 1, 1, 1, 1}},
        {.kind = STORE_REC_CHECKPOINT, .job = job, .checkpoint = {1, "/c"}},
        {.kind = STORE_REC_MODEL, .job = job, .model = {"m", "/m", NULL, 1, 1, 1, &model}},
    };
    store_record batch[7];
    memcpy(batch, good, sizeof good);

    const int out_of_range[] = {N};
    struct {
        store_record bad;
        int code;
        const char *words;
    } cases[] = {
        {{.kind = STORE_REC_DRIFT, .job = job, .drift = {5, 1, out_of_range, js, ema}}, STORE_INVALID,
         "chunk 40 is out of range"},
        {{.kind = STORE_REC_DRIFT, .job = job, .drift = {5, 3, dup, js, ema}}, STORE_INVALID, "measured twice"},
        {{.kind = STORE_REC_PROGRESS, .job = 99, .progress = {1, 1, 1, 1, 1}}, STORE_NOT_FOUND, "no job j_99"},
        {{.kind = STORE_REC_EVAL, .job = 99, .eval = {1, "val", 0, 1, 1, 1, 1, 1, 1}}, STORE_NOT_FOUND, "no job j_99"},
        {{.kind = STORE_REC_RESULT, .job = job, .result = {"{\"iou\": "}}, STORE_INVALID, "not valid JSON"},
        {{.kind = STORE_REC_FREEZE, .job = job, .freeze = {.step = 3, .metric = "mean_js", .frozen = out_of_range, .n_frozen = 1}},
         STORE_INVALID, "chunk 40 is not in j_1's chunk table"},
        {{.kind = STORE_REC_CHECKPOINT, .job = job}, STORE_INVALID, "needs its path"},
        {{.kind = STORE_REC_PROGRESS}, STORE_INVALID, "names no job"},
        {{.kind = (store_record_kind)42, .job = job}, STORE_INVALID, "unknown record kind 42"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        batch[6] = cases[i].bad;
        model = -1;
        EXPECT_FAIL(store_write(s, batch, 7, &err), cases[i].code, cases[i].words);
        assert_non_null(strstr(err.msg, "record 7 of 7"));
        assert_int_equal(count_all(f->path), 0);
        assert_int_equal(model, 0);
    }
    /* a groups record whose keys repeat fails in SQL (UNIQUE) and rolls back too */
    names *nm;
    store_group *g = make_groups(N, &nm);
    g[7].key = g[6].key;
    batch[6] = (store_record){.kind = STORE_REC_GROUPS, .job = job, .groups = {g, N}};
    EXPECT_FAIL(store_write(s, batch, 7, &err), STORE_INVALID, "repeats another chunk's");
    free(g);
    free(nm);
    assert_int_equal(count_all(f->path), 0);
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM groups"), N);

    /* the store is fine afterwards: the same good records go in */
    CHECK(store_write(s, good, 6, &err));
    assert_true(model > 0);
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM drift"), 2);
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM drift_steps"), 1);
    assert_int_equal(sql_int(f->path, "SELECT frozen_at FROM groups WHERE idx = 4"), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_migrations_apply_on_a_fresh_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_is_a_no_op, setup, teardown),
        cmocka_unit_test_setup_teardown(test_newer_and_foreign_databases_are_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_status_follows_the_lifecycle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_record_kind_round_trips, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pagination_walks_every_job_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_downsampling_keeps_first_last_and_extremes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_csv_has_every_point, setup, teardown),
        cmocka_unit_test_setup_teardown(test_job_summaries_carry_strategy_and_results, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drift_filters_combine, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rewind_forgets_what_a_resume_replays, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete_removes_the_job_and_nothing_else, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_failed_batch_writes_nothing, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
