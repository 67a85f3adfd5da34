/*
 * bench_store.c — the store against DESIGN.md's storage requirements, on
 * a file database in a temporary directory:
 *
 *   write    µs per 700-value drift record (the write path must keep up with
 *            a training step every ~100 ms that measures 700 chunks), one
 *            record per transaction and ten per transaction;
 *   series   one chunk's 10 000-point drift series, < 10 ms;
 *   heatmap  700 chunks × 3000 measurements into ≤ 1000 columns, < 200 ms;
 * plus what the REST handlers do around them (the groups table, CSV, JSON
 * text, delete). Reads run on a STORE_READONLY connection, as the HTTP
 * threads do; "first" is that connection's first read (SQLite's cache cold,
 * the OS's warm), then the median of REPEAT.
 *
 * --baseline also times the layout the schema rejected (one row per
 * (chunk, step), clustered by chunk) on the same machine.
 *
 * Build and run (not part of `make test`):
 *   make build/libfisherd.a && mkdir -p build/bench && \
 *   cc -O2 -std=c11 -Wall -Wextra -Werror -D_DEFAULT_SOURCE -Ilib -Idaemon \
 *      tests/bench/bench_store.c build/libfisherd.a \
 *      $(pkg-config --libs sqlite3 jansson) -lm -o build/bench/bench_store && \
 *   build/bench/bench_store [--baseline] [--dir DIR]
 */
#include <jansson.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "store.h"

#define CHUNKS 700
#define HEAT_STEPS 3000
#define SERIES_STEPS 10000
#define REPEAT 7

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what, const fisher_error *err) {
    fprintf(stderr, "bench_store: %s: %s\n", what, err ? err->msg : "");
    exit(1);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

/* A job with the 700-chunk table of a mid-size SegFormer. */
static int64_t make_job(store *s, const char *name) {
    fisher_error err = {{0}};
    store_job_new j = {.name = name, .spec = "{}", .created_at = 1};
    int64_t id;
    if (store_job_insert(s, &j, &id, &err)) die("insert", &err);
    static char keys[CHUNKS][128], tensors[CHUNKS][112], layers[CHUNKS][96];
    store_group g[CHUNKS];
    for (int i = 0; i < CHUNKS; i++) {
        snprintf(layers[i], sizeof layers[i], "segformer.encoder.block.%d.%d.attention.self.query",
                 i / 100 % 10, i / 4 % 25);
        snprintf(tensors[i], sizeof tensors[i], "%.96s.weight", layers[i]);
        snprintf(keys[i], sizeof keys[i], "%.112s.rowblock%d", tensors[i], i % 4);
        g[i] = (store_group){keys[i], tensors[i], layers[i], "linear", i / 4, 0, i % 4 * 64,
                             i % 4 * 64 + 64, 64 * 256, -1};
    }
    store_record r = {.kind = STORE_REC_GROUPS, .job = id, .groups = {g, CHUNKS}};
    if (store_write(s, &r, 1, &err)) die("groups", &err);
    return id;
}

/* Writes `steps` measurements of every chunk, `per_tx` records per
 * transaction; returns µs per record. */
static double write_drift(store *s, int64_t job, int steps, int per_tx, double *worst_ms) {
    fisher_error err = {{0}};
    static int idx[10][CHUNKS];
    static double js[10][CHUNKS], ema[10][CHUNKS];
    store_record recs[10];
    double t0 = now(), worst = 0;
    for (int step = 0; step < steps;) {
        int k = 0;
        for (; k < per_tx && step < steps; k++, step++) {
            for (int i = 0; i < CHUNKS; i++) {
                idx[k][i] = i;
                js[k][i] = 0.05 + 0.04 * sin(i * 0.1 + step * 0.01);
                ema[k][i] = 0.05 + 0.03 * cos(i * 0.07 + step * 0.003);
            }
            recs[k] = (store_record){.kind = STORE_REC_DRIFT, .job = job,
                                    .drift = {step, CHUNKS, idx[k], js[k], ema[k]}};
        }
        double t = now();
        if (store_write(s, recs, (size_t)k, &err)) die("drift", &err);
        if ((t = now() - t) > worst) worst = t;
    }
    *worst_ms = worst * 1e3;
    return (now() - t0) / steps * 1e6;
}

static int count_sink(void *ctx, const char *data, size_t len) {
    (void)data;
    *(size_t *)ctx += len;
    return 0;
}

typedef int (*read_fn)(store *r, int64_t job, json_t **out, size_t *bytes);

static int read_series(store *r, int64_t job, json_t **out, size_t *bytes) {
    (void)bytes;
    fisher_error err;
    store_drift_query q = {.key = "segformer.encoder.block.3.12.attention.self.query.weight.rowblock1",
                           .window = STORE_WINDOW_ALL};
    if (store_drift(r, job, &q, out, &err)) die("series", &err);
    return (int)json_integer_value(json_object_get(json_array_get(json_object_get(*out, "series"), 0), "points"));
}

static int read_series_1000(store *r, int64_t job, json_t **out, size_t *bytes) {
    (void)bytes;
    fisher_error err;
    store_drift_query q = {.key = "segformer.encoder.block.3.12.attention.self.query.weight.rowblock1",
                           .window = {0, INT64_MAX, 1000}};
    if (store_drift(r, job, &q, out, &err)) die("series", &err);
    return (int)json_array_size(json_object_get(json_array_get(json_object_get(*out, "series"), 0), "step"));
}

static int read_series_csv(store *r, int64_t job, json_t **out, size_t *bytes) {
    fisher_error err;
    *out = NULL;
    *bytes = 0;
    store_drift_query q = {.key = "segformer.encoder.block.3.12.attention.self.query.weight.rowblock1",
                           .window = STORE_WINDOW_ALL};
    if (store_drift_csv(r, job, &q, count_sink, bytes, &err)) die("csv", &err);
    return 0;
}

static int read_heatmap(store *r, int64_t job, json_t **out, size_t *bytes) {
    (void)bytes;
    fisher_error err;
    if (store_drift_heatmap(r, job, (store_window){0, INT64_MAX, 1000}, out, &err)) die("heatmap", &err);
    return (int)json_array_size(json_object_get(*out, "step_from"));
}

static int read_groups(store *r, int64_t job, json_t **out, size_t *bytes) {
    (void)bytes;
    fisher_error err;
    if (store_groups(r, job, out, &err)) die("groups", &err);
    return (int)json_array_size(json_object_get(*out, "groups"));
}

static int read_all_series(store *r, int64_t job, json_t **out, size_t *bytes) {
    (void)bytes;
    fisher_error err;
    store_drift_query q = {.window = {0, INT64_MAX, 500}};
    if (store_drift(r, job, &q, out, &err)) die("all series", &err);
    return (int)json_array_size(json_object_get(*out, "series"));
}

/* Times fn on a fresh reader: the first call, then the median of REPEAT. */
static void time_read(const char *path, const char *what, read_fn fn, int64_t job, double limit_ms) {
    fisher_error err = {{0}};
    store *r;
    if (store_open(path, STORE_READONLY, &r, &err)) die("reader", &err);
    double t[REPEAT], first = 0, dump_ms = 0;
    int got = 0;
    size_t text = 0;
    for (int i = 0; i <= REPEAT; i++) {
        json_t *out = NULL;
        size_t bytes = 0;
        double t0 = now();
        got = fn(r, job, &out, &bytes);
        double dt = (now() - t0) * 1e3;
        if (i == 0) first = dt;
        else t[i - 1] = dt;
        if (out && i == REPEAT) { /* what the handler then does with it */
            t0 = now();
            char *s = json_dumps(out, JSON_COMPACT | JSON_REAL_PRECISION(6));
            dump_ms = (now() - t0) * 1e3;
            text = strlen(s);
            free(s);
        } else if (!out) {
            text = bytes;
        }
        json_decref(out);
    }
    double med = median(t, REPEAT);
    printf("  %-44s %6d  first %7.2f ms  median %7.2f ms", what, got, first, med);
    if (dump_ms > 0) printf("  (+ json_dumps %.1f ms, %zu KB)", dump_ms, text / 1024);
    else if (text) printf("  (%zu KB)", text / 1024);
    if (limit_ms > 0) printf("  %s < %.0f ms", med < limit_ms ? "PASS" : "FAIL", limit_ms);
    printf("\n");
    store_close(r);
}

/* The rejected layout: a row per (chunk, step), clustered by chunk. */
static void baseline(const char *dir) {
    char path[600];
    snprintf(path, sizeof path, "%.500s/baseline.db", dir);
    sqlite3 *db;
    sqlite3_stmt *ins, *scan, *one;
    if (sqlite3_open(path, &db) != SQLITE_OK) die("baseline open", NULL);
    sqlite3_exec(db, "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA cache_size = -16384;"
                     "CREATE TABLE drift(job_id INTEGER, idx INTEGER, step INTEGER, js REAL, js_ema REAL,"
                     " PRIMARY KEY (job_id, idx, step)) STRICT, WITHOUT ROWID", NULL, NULL, NULL);
    sqlite3_prepare_v2(db, "INSERT INTO drift VALUES(1, ?, ?, ?, ?)", -1, &ins, NULL);
    double t0 = now(), worst = 0;
    for (int step = 0; step < HEAT_STEPS; step++) {
        double t = now();
        sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
        for (int i = 0; i < CHUNKS; i++) {
            sqlite3_reset(ins);
            sqlite3_bind_int(ins, 1, i);
            sqlite3_bind_int(ins, 2, step);
            sqlite3_bind_double(ins, 3, 0.05 + 0.04 * sin(i * 0.1 + step * 0.01));
            sqlite3_bind_double(ins, 4, 0.05 + 0.03 * cos(i * 0.07 + step * 0.003));
            if (sqlite3_step(ins) != SQLITE_DONE) die("baseline insert", NULL);
        }
        sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
        if ((t = now() - t) > worst) worst = t;
    }
    printf("  %-44s %6d  %7.0f us per record (worst %.1f ms)\n", "write, 1 record per transaction", CHUNKS,
           (now() - t0) / HEAT_STEPS * 1e6, worst * 1e3);
    sqlite3_prepare_v2(db, "SELECT idx, step, js_ema FROM drift WHERE job_id = 1 ORDER BY idx, step", -1,
                       &scan, NULL);
    sqlite3_prepare_v2(db, "SELECT step, js, js_ema FROM drift WHERE job_id = 1 AND idx = 350 ORDER BY step",
                       -1, &one, NULL);
    double t[REPEAT], u[REPEAT];
    for (int r = 0; r < REPEAT; r++) {
        double sum = 0;
        t0 = now();
        while (sqlite3_step(scan) == SQLITE_ROW) sum += sqlite3_column_double(scan, 2);
        sqlite3_reset(scan);
        t[r] = (now() - t0) * 1e3;
        t0 = now();
        while (sqlite3_step(one) == SQLITE_ROW) sum += sqlite3_column_double(one, 2);
        sqlite3_reset(one);
        u[r] = (now() - t0) * 1e3;
        if (sum < 0) printf("?");
    }
    printf("  %-44s %6d  median %7.2f ms (rows only, no JSON)\n", "scan of every (chunk, step) row",
           CHUNKS * HEAT_STEPS, median(t, REPEAT));
    printf("  %-44s %6d  median %7.2f ms (rows only, no JSON)\n", "one chunk's rows", HEAT_STEPS,
           median(u, REPEAT));
    struct stat sb;
    if (stat(path, &sb) == 0) printf("  file: %.1f MB\n", (double)sb.st_size / 1e6);
    sqlite3_finalize(ins);
    sqlite3_finalize(scan);
    sqlite3_finalize(one);
    sqlite3_close(db);
}

int main(int argc, char **argv) {
    const char *base = "/tmp";
    int with_baseline = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--baseline")) with_baseline = 1;
        else if (!strcmp(argv[i], "--dir") && i + 1 < argc) base = argv[++i];
        else {
            fprintf(stderr, "usage: bench_store [--baseline] [--dir DIR]\n");
            return 2;
        }
    }
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%.480s/bench_store.XXXXXX", base);
    if (!mkdtemp(dir)) die("mkdtemp", NULL);
    snprintf(path, sizeof path, "%s/fisherd.db", dir);
    fisher_error err = {{0}};
    store *s;
    if (store_open(path, 0, &s, &err)) die("open", &err);
    printf("bench_store: SQLite %s, %s\n", sqlite3_libversion(), path);

    printf("write (%d chunks per drift record):\n", CHUNKS);
    int64_t heat = make_job(s, "heatmap");
    double worst;
    double us1 = write_drift(s, heat, HEAT_STEPS, 1, &worst);
    printf("  %-44s %6d  %7.0f us per record (worst %.1f ms)\n", "drift, 1 record per transaction", HEAT_STEPS,
           us1, worst);
    int64_t series = make_job(s, "series");
    double us10 = write_drift(s, series, SERIES_STEPS, 10, &worst);
    printf("  %-44s %6d  %7.0f us per record (worst transaction %.1f ms)\n",
           "drift, 10 records per transaction", SERIES_STEPS, us10, worst);
    printf("  at one 700-value record per 100 ms step: %.1f%% of the loop thread\n", us1 / 1e5 * 100);

    printf("read (job %d x %d for the series, %d x %d for the heatmap):\n", CHUNKS, SERIES_STEPS, CHUNKS,
           HEAT_STEPS);
    time_read(path, "one chunk, every point (JSON)", read_series, series, 10);
    time_read(path, "one chunk, max_points 1000 (JSON)", read_series_1000, series, 10);
    time_read(path, "one chunk, every point (CSV)", read_series_csv, series, 0);
    time_read(path, "heatmap, <= 1000 columns (JSON)", read_heatmap, heat, 200);
    time_read(path, "groups with latest js_ema (JSON)", read_groups, heat, 0);
    time_read(path, "every chunk, max_points 500 (JSON)", read_all_series, heat, 0);

    struct stat sb;
    char wal[640];
    snprintf(wal, sizeof wal, "%s-wal", path);
    if (stat(path, &sb) == 0) printf("  file: %.1f MB for %d values", (double)sb.st_size / 1e6,
                                     CHUNKS * (HEAT_STEPS + SERIES_STEPS));
    if (stat(wal, &sb) == 0) printf(" (+ WAL %.1f MB)", (double)sb.st_size / 1e6);
    printf("\n");

    double t0 = now();
    if (store_job_set_status(s, heat, STORE_JOB_CANCELLED, NULL, 2, &err) || store_job_delete(s, heat, &err))
        die("delete", &err);
    printf("delete the %d x %d job: %.1f ms\n", CHUNKS, HEAT_STEPS, (now() - t0) * 1e3);
    t0 = now();
    if (store_check(s, &err)) die("check", &err);
    printf("integrity + foreign key check: %.0f ms\n", (now() - t0) * 1e3);
    store_close(s);

    if (with_baseline) {
        printf("baseline: one row per (chunk, step), clustered by chunk:\n");
        baseline(dir);
    }
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "bench_store: could not remove %s\n", dir);
    return 0;
}
