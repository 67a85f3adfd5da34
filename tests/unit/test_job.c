/*
 * test_job.c — job specs and fisher_job_run: every bad field is refused
 * with its path, a spec survives a JSON round trip, and a run writes a
 * model and a checkpoint that reload exactly, stops when cancelled (still
 * checkpointing), and stops early when validation stops improving.
 */
#include "testutil.h"

#include <sys/stat.h>
#include <unistd.h>

#include "job.h"
#include "segformer.h"

static void expect_field_error(const char *json, const char *field, const char *words) {
    fisher_job_spec s;
    fisher_job_spec_defaults(&s);
    fisher_job_spec before = s;
    fisher_error err = {{0}};
    char got[128];
    assert_int_equal(fisher_job_spec_parse(&s, json, got, sizeof got, &err), -1);
    printf("  %-60s -> %s\n", json, err.msg);
    assert_string_equal(got, field);
    assert_non_null(strstr(err.msg, words));
    assert_memory_equal(&s, &before, sizeof s); /* all or nothing */
}

static void test_spec_errors_name_the_field(void **state) {
    (void)state;
    expect_field_error("{\"optim\": {\"lr\": -1}}", "optim.lr", "must be in");
    expect_field_error("{\"optim\": {\"lr\": \"fast\"}}", "optim.lr", "number");
    expect_field_error("{\"batch_size\": 0}", "batch_size", "[1, 1024]");
    expect_field_error("{\"epochs\": 2, \"steps\": 5}", "steps", "not both");
    expect_field_error("{\"lerning_rate\": 1}", "lerning_rate", "unknown field");
    expect_field_error("{\"data\": {\"train\": {\"synthetic\": {\"domain\": \"gravel\"}}}}",
                       "data.train.synthetic.domain", "unknown domain 'gravel'");
    expect_field_error("{\"data\": {\"zero_shot\": [{\"path\": \"a\"}, {}]}}", "data.zero_shot[1]",
                       "exactly one of");
    expect_field_error("{\"base_model\": {\"config\": \"mit-b9\"}}", "base_model.config", "mit-b9");
    expect_field_error("{\"strategy\": \"lora\"}", "strategy", "unknown strategy 'lora'");
    expect_field_error("{\"fisher\": {\"lambda\": 2}}", "fisher", "only used with");
    expect_field_error("{\"strategy\": \"fisher\", \"fisher\": {\"metric\": \"kl\"}}", "fisher.metric",
                       "unknown value 'kl' (known: total_variation, mean_js)");
    expect_field_error("{\"strategy\": \"fisher\", \"fisher\": {\"ema_interval\": 0}}",
                       "fisher.ema_interval", "[1, 100000000]");
    expect_field_error("{\"strategy\": \"fisher\", \"fisher\": {\"gammas\": [0.8]}}", "fisher.gammas",
                       "array of 2");
    expect_field_error("{\"normalization\": {\"std\": [0.2, 0, 0.2]}}", "normalization.std[1]", "(0, 10]");
    /* in range as written, 0 as the float kept: refused now, not when the job starts
     * (found by tests/fuzz/job_spec.c) */
    expect_field_error("{\"optim\": {\"lr\": 1e-50}}", "optim.lr", "1e-50 becomes 0");
    expect_field_error("{\"normalization\": {\"std\": [1e-50, 1, 1]}}", "normalization.std[0]", "(0, 10]");
    expect_field_error("{\"augment\": {\"scale\": [1.5, 0.5]}}", "augment.scale", "low ≤ high");
    expect_field_error("[1, 2]", "", "JSON object");
    /* distributed (issue 9) */
    expect_field_error("{\"distributed\": 2}", "distributed", "must be an object");
    expect_field_error("{\"distributed\": {\"hosts\": 2}}", "distributed.hosts", "unknown field");
    expect_field_error("{\"distributed\": {\"ranks\": 0}}", "distributed.ranks", "[1, 64]");
    expect_field_error("{\"batch_size\": 128, \"distributed\": {\"ranks\": 65}}", "distributed.ranks", "[1, 64]");
    expect_field_error("{\"distributed\": {\"ranks\": 3}}", "distributed.ranks",
                       "batch_size 4 does not divide by 3 ranks");
    expect_field_error("{\"batch_size\": 6, \"distributed\": {\"ranks\": 4}}", "distributed.ranks",
                       "must be a multiple of ranks");
    expect_field_error("{\"distributed\": {\"hostfile\": 1}}", "distributed.hostfile", "must be a string");
    expect_field_error("{\"distributed\": {\"hostfile\": \"../etc/hosts\"}}", "distributed.hostfile",
                       "plain file name in the hostfile folder");
    expect_field_error("{\"distributed\": {\"hostfile\": \"a b\"}}", "distributed.hostfile", "got ' '");
    expect_field_error("{\"distributed\": {\"hostfile\": \"h\\u00e9\"}}", "distributed.hostfile",
                       "non-ASCII");
    expect_field_error("{\"distributed\": {\"hostfile\": \"..\"}}", "distributed.hostfile", "not '..'");
    expect_field_error("{\"distributed\": {\"hostfile\": \"."
                       "0123456789012345678901234567890123456789012345678901234567890123\"}}",
                       "distributed.hostfile", "longer than 63");
    fisher_job_spec s;
    fisher_job_spec_defaults(&s);
    fisher_error err = {{0}};
    assert_int_equal(fisher_job_spec_parse(&s, "{\"name\": \"x\",}", NULL, 0, &err), -1);
    assert_non_null(strstr(err.msg, "not valid JSON"));
    assert_int_equal(fisher_job_spec_parse(&s, "{\"seed\": 1, \"seed\": 2}", NULL, 0, &err), -1);
}

/* A path too long for the field buffer is cut between characters, so it
 * and the message stay UTF-8 on their way into a JSON answer (found by
 * tests/fuzz/job_spec.c). */
static void test_spec_error_cut_between_characters(void **state) {
    (void)state;
    char json[1200] = "{\"n", field[128];
    for (int i = 0; i < 300; i++) strcat(json, "\xe2\x82\xac"); /* € is 3 bytes */
    strcat(json, "\": 1}");
    fisher_job_spec s;
    fisher_job_spec_defaults(&s);
    fisher_error err = {{0}};
    assert_int_equal(fisher_job_spec_parse(&s, json, field, sizeof field, &err), -1);
    size_t n = strlen(field);
    assert_true(n > 100 && n < sizeof field);
    assert_int_equal((n - 1) % 3, 0); /* "n" then whole euros */
    assert_memory_equal(field, json + 2, n);
    size_t m = strlen(err.msg);
    assert_true(m > 0);
    const unsigned char *u = (const unsigned char *)err.msg;
    for (size_t i = 0; i < m;) { /* every sequence complete */
        size_t k = u[i] < 0x80 ? 1 : u[i] >= 0xF0 ? 4 : u[i] >= 0xE0 ? 3 : 2;
        assert_true(i + k <= m);
        i += k;
    }
}

static void test_spec_round_trip(void **state) {
    (void)state;
    const char *json = "{\"name\": \"ft\", \"base_model\": {\"config\": \"mit-b0\", \"num_labels\": 2},"
                       " \"image_size\": 96, \"data\": {\"train\": {\"synthetic\": {\"domain\": \"tiles\","
                       " \"count\": 40, \"seed\": 7}}, \"zero_shot\": [{\"path\": \"/data/asphalt\"}]},"
                       " \"augment\": {\"vflip\": false, \"scale\": [0.8, 1.25]}, \"optim\": {\"lr\": 3e-4,"
                       " \"betas\": [0.8, 0.99]}, \"steps\": 77, \"early_stopping\": {\"patience\": 3},"
                       " \"seed\": 12345678901, \"strategy\": \"fisher\", \"fisher\": {\"estimator\": \"ema\","
                       " \"ema_interval\": 5, \"slice_mode\": \"column\", \"metric\": \"mean_js\","
                       " \"lambda\": 0.5, \"js_ema_decay\": 0.8, \"gammas\": [0.7, 0.9]},"
                       " \"batch_size\": 8, \"distributed\": {\"ranks\": 4, \"hostfile\": \"rack-2.hosts\"}}";
    fisher_job_spec a, b;
    fisher_job_spec_defaults(&a);
    fisher_error err = {{0}};
    if (fisher_job_spec_parse(&a, json, NULL, 0, &err)) fail_msg("%s", err.msg);
    assert_string_equal(a.base_config, "mit-b0");
    assert_int_equal(a.train.domain, FISHER_SYNTH_TILES);
    assert_int_equal(a.steps, 77);
    assert_int_equal(a.epochs, 0);
    assert_int_equal(a.seed, 12345678901ULL);
    assert_int_equal(a.strategy, FISHER_STRATEGY_FISHER);
    assert_int_equal(a.fisher.estimator, FISHER_ESTIMATOR_EMA);
    assert_int_equal(a.fisher.slice_columns, 1);
    assert_true(a.fisher.lambda == 0.5 && a.fisher.drift.js_ema_decay == 0.8 && a.fisher.gamma0 == 0.7);
    assert_int_equal(a.fisher.freeze_interval, 300); /* unset: the reference trainer's default */
    assert_int_equal(a.ranks, 4);
    assert_string_equal(a.hostfile, "rack-2.hosts");
    /* the JSON is the canonical form: writing what was read and reading it back changes nothing */
    char *text = fisher_job_spec_to_json(&a);
    fisher_job_spec_defaults(&b);
    if (fisher_job_spec_parse(&b, text, NULL, 0, &err)) fail_msg("%s in %s", err.msg, text);
    char *again = fisher_job_spec_to_json(&b);
    assert_string_equal(text, again);
    assert_true(b.fisher.lambda == 0.5 && b.fisher.gamma1 == 0.9 && b.steps == 77);
    assert_true(b.ranks == 4 && b.batch_size == 8 && !strcmp(b.hostfile, "rack-2.hosts"));
    /* and the defaults: one process on this machine */
    fisher_job_spec_defaults(&b);
    assert_int_equal(b.ranks, 1);
    assert_string_equal(b.hostfile, "");
    free(text), free(again);
}

static char out_dir[64];
static int volatile cancel_flag;

static void cancel_at_3(void *ctx, const fisher_job_progress *p) {
    (void)ctx;
    if (p->step == 3) cancel_flag = 1;
}

static fisher_job_spec small_job(void) {
    fisher_job_spec s;
    fisher_job_spec_defaults(&s);
    s.image_size = 32;
    s.batch_size = 2;
    s.train.count = 16;
    s.val.count = 4;
    s.steps = 6, s.epochs = 0;
    s.optim.lr = 1e-3f;
    return s;
}

static fisher_safetensors *open_out(const char *name) {
    char path[128];
    snprintf(path, sizeof path, "%s/%s", out_dir, name);
    fisher_error err = {{0}};
    fisher_safetensors *st = fisher_safetensors_open(path, &err);
    if (!st) fail_msg("%s", err.msg);
    return st;
}

static void test_run_writes_model_and_checkpoint(void **state) {
    (void)state;
    fisher_job_spec s = small_job();
    fisher_job_result r;
    fisher_error err = {{0}};
    if (fisher_job_run(&s, out_dir, NULL, NULL, &r, &err)) fail_msg("%s", err.msg);
    assert_int_equal(r.steps_done, 6);
    assert_false(r.cancelled);
    fisher_safetensors *model = open_out("model.safetensors"), *ckpt = open_out("checkpoint.safetensors");
    assert_string_equal(fisher_safetensors_metadata(ckpt, "step"), "6");
    assert_string_equal(fisher_safetensors_metadata(model, "image_size"), "32");
    assert_non_null(fisher_safetensors_metadata(model, "normalization"));
    /* the checkpoint's weights are the model's, bit for bit, plus the optimiser's moments */
    fisher_segformer_config cfg;
    assert_int_equal(fisher_segformer_config_named(&cfg, "tiny", &err), 0);
    fisher_segformer *a = fisher_segformer_create(&cfg, &err), *b = fisher_segformer_create(&cfg, &err);
    assert_int_equal(fisher_segformer_load(a, model, 0, &err), 0);
    assert_int_equal(fisher_segformer_load(b, ckpt, 0, &err), 0);
    const fisher_tensor_table *t = fisher_segformer_params(a);
    assert_memory_equal(fisher_segformer_param_data(a), fisher_segformer_param_data(b), t->total * sizeof(float));
    char name[FISHER_NAME_MAX + 32];
    snprintf(name, sizeof name, "optimizer.exp_avg_sq.%s", t->tensors[0].name);
    float *v = fixture_f32(ckpt, name, t->tensors[0].numel);
    double sum = 0;
    for (size_t i = 0; i < t->tensors[0].numel; i++) sum += v[i];
    assert_true(sum > 0); /* moments of a tensor that trained */
    free(v);
    fisher_safetensors_close(model), fisher_safetensors_close(ckpt);
    fisher_segformer_free(a), fisher_segformer_free(b);
}

static void test_cancel_still_checkpoints(void **state) {
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/model.safetensors", out_dir);
    unlink(path);
    fisher_job_spec s = small_job();
    fisher_job_callbacks cb = {.on_progress = cancel_at_3};
    fisher_job_result r;
    fisher_error err = {{0}};
    cancel_flag = 0;
    assert_int_equal(fisher_job_run(&s, out_dir, &cb, &cancel_flag, &r, &err), 0);
    assert_true(r.cancelled);
    assert_int_equal(r.steps_done, 3);
    fisher_safetensors *ckpt = open_out("checkpoint.safetensors");
    assert_string_equal(fisher_safetensors_metadata(ckpt, "step"), "3");
    fisher_safetensors_close(ckpt);
    assert_int_equal(access(path, F_OK), -1); /* no final model for an unfinished job */
}

typedef struct {
    int group_calls, method_calls, bad_index;
    size_t n_groups, elements;
    char first_key[160], first_tensor[160], first_class[16];
} group_log;

static void log_groups(void *ctx, const fisher_job_group *g, size_t n) {
    group_log *l = ctx;
    l->group_calls++, l->n_groups = n;
    for (size_t i = 0; i < n; i++) l->elements += g[i].size;
    snprintf(l->first_key, sizeof l->first_key, "%s", g[0].key);
    snprintf(l->first_tensor, sizeof l->first_tensor, "%s", g[0].tensor);
    snprintf(l->first_class, sizeof l->first_class, "%s", g[0].layer_class);
}

static void log_method(void *ctx, int64_t step, const fisher_method_report *r, const fisher_chunk *chunks,
                       size_t n) {
    (void)step, (void)chunks;
    group_log *l = ctx;
    l->method_calls++;
    if (n != l->n_groups) l->bad_index = 1;
    for (size_t i = 0; i < r->n_frozen; i++)
        if (r->frozen[i] < 0 || (size_t)r->frozen[i] >= l->n_groups) l->bad_index = 1;
}

/* A fisher job names its parameter groups once, before the first step, in
 * the order on_method's chunk indices refer to; together they cover every
 * parameter exactly once. */
static void test_fisher_job_reports_groups(void **state) {
    (void)state;
    fisher_job_spec s = small_job();
    s.strategy = FISHER_STRATEGY_FISHER;
    s.fisher.freeze_interval = 3;
    group_log l = {0};
    fisher_job_callbacks cb = {.ctx = &l, .on_groups = log_groups, .on_method = log_method};
    fisher_job_result r;
    fisher_error err = {{0}};
    if (fisher_job_run(&s, out_dir, &cb, NULL, &r, &err)) fail_msg("%s", err.msg);
    printf("  %zu groups, first %s (%s, %s); %d method reports\n", l.n_groups, l.first_key,
           l.first_tensor, l.first_class, l.method_calls);
    assert_int_equal(l.group_calls, 1);
    assert_int_equal(l.elements, r.parameters);
    assert_string_equal(l.first_key, "segformer.encoder.patch_embeddings.0.proj.weight.rowblock0");
    assert_string_equal(l.first_tensor, "segformer.encoder.patch_embeddings.0.proj.weight");
    assert_string_equal(l.first_class, "conv");
    assert_true(l.method_calls >= 6);
    assert_false(l.bad_index);
}

/* What a run reported, step by step, to compare two runs exactly. */
typedef struct {
    double js[64][512];            /* [step][chunk] */
    int measured[64], decided[64];
    size_t live_after[64];
    int64_t cancel_at;
    volatile int cancel;
} run_log;

static void log_run_method(void *ctx, int64_t step, const fisher_method_report *r, const fisher_chunk *chunks,
                           size_t n) {
    (void)chunks;
    run_log *l = ctx;
    if (step >= 64 || n > 512) fail_msg("run too long for the log");
    l->measured[step] = r->measured, l->decided[step] = r->decided, l->live_after[step] = r->chunks_live;
    for (size_t c = 0; c < n; c++) l->js[step][c] = r->js[c];
}

static void log_run_progress(void *ctx, const fisher_job_progress *p) {
    run_log *l = ctx;
    if (p->step == l->cancel_at) l->cancel = 1;
}

static float *model_params(const char *dir, size_t *n) {
    char path[160];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    fisher_error err = {{0}};
    fisher_segformer *m = fisher_model_load(path, NULL, NULL, NULL, &err);
    if (!m) fail_msg("%s", err.msg);
    *n = fisher_segformer_params(m)->total;
    float *p = malloc(*n * sizeof *p);
    memcpy(p, fisher_segformer_param_data(m), *n * sizeof *p);
    fisher_segformer_free(m);
    return p;
}

/* A run stopped after step 5 and resumed from its checkpoint ends exactly
 * where the same run without a stop ends: every drift value of every step,
 * every freeze decision, the final weights bit for bit (with early-stopping
 * bookkeeping and best weights carried across). */
static void test_resume_continues_the_same_run(void **state) {
    (void)state;
    fisher_job_spec s = small_job();
    s.strategy = FISHER_STRATEGY_FISHER;
    s.steps = 14;
    s.fisher.ema_interval = 1, s.fisher.freeze_interval = 4, s.fisher.lambda = 0.5;
    s.eval_interval = 3, s.patience = 10;
    static run_log straight, resumed;
    memset(&straight, 0, sizeof straight), memset(&resumed, 0, sizeof resumed);
    straight.cancel_at = resumed.cancel_at = -1;
    char dir_a[80], dir_b[80];
    snprintf(dir_a, sizeof dir_a, "%s/a", out_dir), snprintf(dir_b, sizeof dir_b, "%s/b", out_dir);
    mkdir(dir_a, 0755), mkdir(dir_b, 0755);
    fisher_job_result r;
    fisher_error err = {{0}};
    fisher_job_callbacks cb = {.on_method = log_run_method, .on_progress = log_run_progress};
    cb.ctx = &straight;
    if (fisher_job_run(&s, dir_a, &cb, &straight.cancel, &r, &err)) fail_msg("%s", err.msg);
    assert_int_equal(r.steps_done, 14);
    cb.ctx = &resumed;
    resumed.cancel_at = 5;
    if (fisher_job_run(&s, dir_b, &cb, &resumed.cancel, &r, &err)) fail_msg("%s", err.msg);
    assert_true(r.cancelled);
    assert_int_equal(r.steps_done, 5);
    resumed.cancel = 0, resumed.cancel_at = -1;
    if (fisher_job_resume(&s, dir_b, &cb, &resumed.cancel, &r, &err)) fail_msg("%s", err.msg);
    assert_int_equal(r.steps_done, 14);
    int decisions = 0;
    for (int step = 0; step < 14; step++) {
        assert_int_equal(resumed.measured[step], straight.measured[step]);
        assert_int_equal(resumed.decided[step], straight.decided[step]);
        assert_int_equal(resumed.live_after[step], straight.live_after[step]);
        decisions += straight.decided[step];
        for (int c = 0; c < 512; c++)
            if (memcmp(&resumed.js[step][c], &straight.js[step][c], sizeof(double)))
                fail_msg("step %d chunk %d: resumed js %.17g, straight %.17g", step, c, resumed.js[step][c],
                         straight.js[step][c]);
    }
    size_t na, nb;
    float *pa = model_params(dir_a, &na), *pb = model_params(dir_b, &nb);
    assert_int_equal(na, nb);
    assert_memory_equal(pa, pb, na * sizeof *pa);
    printf("  stopped at 5, resumed to 14: %d freeze decisions and %zu weights identical; %zu chunks live\n",
           decisions, na, straight.live_after[13]);
    assert_true(decisions >= 3);
    free(pa), free(pb);
    /* a checkpoint is only for the spec that wrote it */
    s.fisher.lambda = 0.7;
    assert_int_equal(fisher_job_resume(&s, dir_b, NULL, NULL, &r, &err), -1);
    printf("  another spec: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "different job spec"));
}

static void test_early_stopping(void **state) {
    (void)state;
    fisher_job_spec s = small_job();
    s.optim.lr = 1e-12f; /* validation barely moves: it stops improving at once */
    s.steps = 50;
    s.eval_interval = 1;
    s.patience = 2;
    fisher_job_result r;
    fisher_error err = {{0}};
    if (fisher_job_run(&s, out_dir, NULL, NULL, &r, &err)) fail_msg("%s", err.msg);
    assert_true(r.stopped_early);
    assert_true(r.steps_done < 50);
    /* it stopped exactly `patience` evaluations after the best one */
    assert_int_equal(r.steps_done - r.best_step, 2);
}

static void test_missing_folder_fails_with_path(void **state) {
    (void)state;
    fisher_job_spec s = small_job();
    s.val.synthetic = 0;
    snprintf(s.val.path, sizeof s.val.path, "/nonexistent/cracks");
    fisher_job_result r;
    fisher_error err = {{0}};
    assert_int_equal(fisher_job_run(&s, out_dir, NULL, NULL, &r, &err), -1);
    printf("  %s\n", err.msg);
    assert_non_null(strstr(err.msg, "/nonexistent/cracks"));
}

/* A 40-byte file whose config asks for billions of parameters is refused
 * for what it lacks before any of the model is allocated (it was building
 * 13 GB of model first; found with tests/fuzz/safetensors.c). */
static void test_model_load_checks_the_file_first(void **state) {
    (void)state;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/huge.safetensors", out_dir); /* the group's directory */
    float one = 1;
    fisher_st_tensor t = {"x", FISHER_DTYPE_F32, 1, {1}, &one};
    fisher_st_meta meta = {"config", "{\"hidden_sizes\": [2048, 2048, 2048, 2048], \"depths\": [16, 16, 16, 16], "
                                     "\"num_attention_heads\": [1, 1, 1, 1], \"mlp_ratios\": [4, 4, 4, 4]}"};
    fisher_error err = {{0}};
    assert_int_equal(fisher_safetensors_write(path, &t, 1, &meta, 1, &err), 0);
    assert_null(fisher_model_load(path, NULL, NULL, NULL, &err));
    printf("  %s\n", err.msg);
    assert_non_null(strstr(err.msg, "no tensor named segformer.encoder.patch_embeddings.0.proj.weight"));
    unlink(path);
}

static int setup(void **state) {
    (void)state;
    snprintf(out_dir, sizeof out_dir, "/tmp/fisher_job_XXXXXX");
    return mkdtemp(out_dir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    return rm_tree(out_dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spec_errors_name_the_field),
        cmocka_unit_test(test_spec_error_cut_between_characters),
        cmocka_unit_test(test_model_load_checks_the_file_first),
        cmocka_unit_test(test_spec_round_trip),
        cmocka_unit_test(test_run_writes_model_and_checkpoint),
        cmocka_unit_test(test_cancel_still_checkpoints),
        cmocka_unit_test(test_fisher_job_reports_groups),
        cmocka_unit_test(test_resume_continues_the_same_run), cmocka_unit_test(test_early_stopping),
        cmocka_unit_test(test_missing_folder_fails_with_path),
    };
    return cmocka_run_group_tests_name("job", tests, setup, teardown);
}
