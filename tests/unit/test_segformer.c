/*
 * test_segformer.c — the whole SegFormer against PyTorch.
 *
 * segformer_tiny: the `tiny` config at 64×64, batch 2, in training mode:
 * logits, loss, every parameter gradient, then three AdamW steps (lr 1e-3,
 * weight decay 0.01) on the same batch: the loss of each step, how far
 * every parameter moved (stored as an F16 delta: Adam moves a weight ~lr
 * per step, so F16 keeps ~1e-6 absolute precision) and the BatchNorm
 * buffers afterwards.
 * segformer_mitb0: a full-size `mit-b0` checkpoint written by PyTorch (F16
 * weights, gzipped to fit the fixture budget) loads by Hugging Face names
 * and gives PyTorch's eval-mode logits on a non-square image.
 *
 * Tolerances. Logits and loss: rtol 1e-4 — a forward is ~40 layers deep,
 * each adding ~1e-7 relative error, and GEMM summation order differs from
 * PyTorch's. Gradients: rtol 1e-3 per tensor with atol 1e-3 × the tensor's
 * largest |gradient| — back-propagation through LayerNorm and softmax
 * subtracts nearly equal terms, so elements near zero carry the absolute
 * error of the tensor's scale, not their own. Some gradients are exactly 0
 * in exact arithmetic — attention key biases (softmax ignores a per-row
 * shift), the decoder's per-channel biases and the last stage's LayerNorm
 * bias (BatchNorm removes per-channel constants) — and both frameworks
 * return rounding noise of ~1e-9 there; atol is floored at 1e-6 × the
 * largest gradient of the model to accept that noise and nothing larger.
 * Parameters after three steps: rtol 1e-3 of how far each weight moved,
 * plus an atol that follows from the gradient tolerance: Adam normalises
 * each update to ~lr·g/|g|, so a gradient known only to ±ε (ε the atol the
 * gradients were checked with above) can move its weight by up to
 * lr·ε/|g| per step in a direction set by rounding — a full lr for the
 * exactly-zero gradients. atol = 1e-5 + 3·lr·min(1, ε/|g|). The optimiser is
 * proven element-exact on its own (test_layers: adamw). BatchNorm's
 * running mean averages decoder features whose per-channel constants are
 * exactly those noise-driven biases, so it gets atol 1e-3 (measured here:
 * 8.3e-4; the analytic worst case, 0.58·lr·Σ|linear_fuse row|, is ~7e-3);
 * the running variance is unaffected.
 */
#include "testutil.h"

#include <unistd.h>

#include "loss.h"
#include "optim.h"
#include "segformer.h"
#include "synth.h"
#include "train.h"

static fisher_segformer *load_model(const fisher_safetensors *st) {
    fisher_error err = {{0}};
    fisher_segformer_config cfg;
    const char *json = fisher_safetensors_metadata(st, "config");
    assert_non_null(json);
    assert_int_equal(fisher_segformer_config_named(&cfg, "tiny", &err), 0);
    if (fisher_segformer_config_from_json(&cfg, json, &err)) fail_msg("config: %s", err.msg);
    fisher_segformer *m = fisher_segformer_create(&cfg, &err);
    if (!m) fail_msg("create: %s", err.msg);
    if (fisher_segformer_load(m, st, 0, &err)) fail_msg("load: %s", err.msg);
    return m;
}

static double max_abs(const float *x, size_t n) {
    double mx = 0;
    for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs(x[i]));
    return mx;
}

static void test_tiny_training(void **state) {
    (void)state;
    fisher_safetensors *st = fixture_open("segformer_tiny.safetensors.gz");
    fisher_segformer *m = load_model(st);
    fisher_error err = {{0}};
    int B = 2, H = 64, W = 64;
    size_t npix = (size_t)B * H * W;
    float *images = fixture_f32(st, "input", npix * 3);
    float *target = fixture_f32(st, "target", npix);
    if (fisher_segformer_prepare(m, B, H, W, &err)) fail_msg("prepare: %s", err.msg);
    printf("  activations: %.1f MiB\n", fisher_segformer_activation_bytes(m) / 1048576.0);

    const fisher_tensor_table *params = fisher_segformer_params(m);
    float *initial = malloc(params->total * sizeof(float));
    memcpy(initial, fisher_segformer_param_data(m), params->total * sizeof(float));
    float *dlogits = calloc(npix, sizeof(float));
    fisher_adamw opt;
    fisher_adamw_config ocfg = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                                .weight_decay = 0.01f};
    assert_int_equal(fisher_adamw_init(&opt, params->total, ocfg, &err), 0);

    /* per-element atol for the parameters after step 3, set from step 1's gradients */
    double *param_atol = calloc(params->total, sizeof(double));
    for (int step = 1; step <= 3; step++) {
        fisher_segformer_zero_grad(m);
        const float *logits = fisher_segformer_forward(m, images, 1);
        float loss = fisher_seg_loss(dlogits, logits, target, npix, 0.65f);
        char name[160];
        snprintf(name, sizeof name, "loss.step%d", step);
        float *want_loss = fixture_f32(st, name, 1);
        assert_close(name, &loss, want_loss, 1, 1e-4, 0);
        free(want_loss);
        if (step == 1) {
            int h4, w4;
            const float *q = fisher_segformer_logits_quarter(m, &h4, &w4);
            float *want = fixture_f32(st, "logits", (size_t)B * h4 * w4);
            assert_close("logits (1/4 resolution)", q, want, (size_t)B * h4 * w4, 1e-4, 1e-5);
            free(want);
        }
        assert_int_equal(fisher_segformer_backward(m, dlogits, NULL), 0);
        if (step == 1) {
            const float *grads = fisher_segformer_grad_data(m);
            double model_max = max_abs(grads, params->total);
            for (int i = 0; i < params->count; i++) {
                const fisher_tensor *t = &params->tensors[i];
                snprintf(name, sizeof name, "grad.%s", t->name);
                float *want = fixture_f32(st, name, t->numel);
                double eps = fmax(1e-3 * max_abs(want, t->numel), 1e-6 * model_max);
                assert_close(name, grads + t->offset, want, t->numel, 1e-3, eps);
                /* Adam's update is scale-free (m/sqrt(v) ≈ g/|g|), so a gradient
                 * known to ±ε moves its weight by up to lr·ε/|g| per step in
                 * an arbitrary direction; ε is the gradient tolerance above. */
                for (size_t e = 0; e < t->numel; e++) {
                    double g = fabs(want[e]);
                    double noise = g > eps ? eps / g : 1.0;
                    param_atol[t->offset + e] = 1e-5 + 3 * ocfg.lr * noise;
                }
                free(want);
            }
        }
        fisher_adamw_step(&opt, fisher_segformer_param_data(m), fisher_segformer_grad_data(m));
    }
    const float *p = fisher_segformer_param_data(m);
    for (int i = 0; i < params->count; i++) {
        const fisher_tensor *t = &params->tensors[i];
        char name[160];
        snprintf(name, sizeof name, "step3_delta.%s", t->name);
        float *want = fixture_f32(st, name, t->numel);
        float *moved = malloc(t->numel * sizeof(float));
        for (size_t e = 0; e < t->numel; e++) moved[e] = p[t->offset + e] - initial[t->offset + e];
        assert_close_each(name, moved, want, t->numel, 1e-3, 1e-5, param_atol + t->offset);
        free(want), free(moved);
    }
    const fisher_tensor_table *bufs = fisher_segformer_buffers(m);
    const float *b = fisher_segformer_buffer_data(m);
    for (int i = 0; i < bufs->count; i++) {
        const fisher_tensor *t = &bufs->tensors[i];
        char name[160];
        snprintf(name, sizeof name, "step3.%s", t->name);
        float *want = fixture_f32(st, name, t->numel);
        int is_mean = strstr(t->name, "running_mean") != NULL;
        assert_close(name, b + t->offset, want, t->numel, 1e-4, is_mean ? 1e-3 : 1e-5);
        free(want);
    }
    fisher_adamw_free(&opt);
    free(param_atol), free(initial);
    free(dlogits), free(images), free(target);
    fisher_segformer_free(m);
    fisher_safetensors_close(st);
}

static void test_mitb0_checkpoint(void **state) {
    (void)state;
    fisher_safetensors *st = fixture_open("segformer_mitb0.safetensors.gz");
    fisher_segformer *m = load_model(st);
    const fisher_segformer_config *cfg = fisher_segformer_get_config(m);
    assert_int_equal(cfg->hidden_sizes[2], 160);
    assert_int_equal(cfg->num_heads[3], 8);
    assert_int_equal(cfg->decoder_hidden_size, 256);
    printf("  mit-b0: %zu parameters\n", fisher_segformer_params(m)->total);
    fisher_error err = {{0}};
    int B = 1, H = 64, W = 96;
    float *images = fixture_f32(st, "input", (size_t)B * H * W * 3);
    if (fisher_segformer_prepare(m, B, H, W, &err)) fail_msg("prepare: %s", err.msg);
    fisher_segformer_forward(m, images, 0);
    int h4, w4;
    const float *logits = fisher_segformer_logits_quarter(m, &h4, &w4);
    assert_int_equal(h4, 16);
    assert_int_equal(w4, 24);
    float *want = fixture_f32(st, "logits", (size_t)B * h4 * w4);
    assert_close("mit-b0 eval logits (1/4 resolution)", logits, want, (size_t)B * h4 * w4, 1e-4, 1e-5);
    free(want), free(images);
    fisher_segformer_free(m);
    fisher_safetensors_close(st);
}

/* Logits and gradients of one training step of a fresh `tiny` model at
 * 128×128, batch 4 — large enough that every OpenMP loop runs in parallel
 * (the parity fixtures are too small to), computed with n threads.
 * Returns a malloc'd [logits | grads]. */
static float *step_with_threads(int n, size_t *len) {
    fisher_error err = {{0}};
    fisher_segformer_config cfg;
    assert_int_equal(fisher_segformer_config_named(&cfg, "tiny", &err), 0);
    fisher_segformer *m = fisher_segformer_create(&cfg, &err);
    assert_non_null(m);
    fisher_segformer_init_random(m, 7);
    int B = 4, H = 128, W = 128;
    size_t npix = (size_t)B * H * W, np = fisher_segformer_params(m)->total;
    float *images = malloc(npix * 3 * sizeof(float)), *masks = malloc(npix * sizeof(float));
    float *dlogits = malloc(npix * sizeof(float));
    for (int b = 0; b < B; b++)
        fisher_synth_crack(images + (size_t)b * H * W * 3, masks + (size_t)b * H * W, H, W, 1, (uint64_t)b);
    assert_int_equal(fisher_segformer_prepare(m, B, H, W, &err), 0);
    fisher_set_threads(n);
    fisher_segformer_zero_grad(m);
    const float *logits = fisher_segformer_forward(m, images, 1);
    fisher_seg_loss(dlogits, logits, masks, npix, 0.65f);
    assert_int_equal(fisher_segformer_backward(m, dlogits, NULL), 0);
    float *out = malloc((npix + np) * sizeof(float));
    memcpy(out, logits, npix * sizeof(float));
    memcpy(out + npix, fisher_segformer_grad_data(m), np * sizeof(float));
    *len = npix + np;
    free(images), free(masks), free(dlogits);
    fisher_segformer_free(m);
    return out;
}

/* Threads change the order of a few sums and nothing else: 1 and 2 threads
 * agree to float rounding (a race would not), and a fixed thread count is
 * bit-for-bit reproducible. */
static void test_threads_change_rounding_only(void **state) {
    (void)state;
    size_t n1, n2, n3;
    float *one = step_with_threads(1, &n1), *two = step_with_threads(2, &n2);
    float *again = step_with_threads(2, &n3);
    assert_int_equal(n1, n2);
    size_t npix = 4 * 128 * 128, ngrad = n1 - npix; /* [logits | grads] */
    assert_close("1 vs 2 threads: logits", two, one, npix, 1e-4, 1e-6 * max_abs(one, npix));
    assert_close("1 vs 2 threads: gradients", two + npix, one + npix, ngrad, 1e-3,
                 1e-5 * max_abs(one + npix, ngrad));
    assert_memory_equal(two, again, n2 * sizeof(float));
    fisher_set_threads(2);
    free(one), free(two), free(again);
}

static fisher_segformer *new_model(const char *config, int num_labels, uint64_t seed) {
    fisher_error err = {{0}};
    fisher_segformer_config cfg;
    assert_int_equal(fisher_segformer_config_named(&cfg, config, &err), 0);
    cfg.num_labels = num_labels;
    fisher_segformer *m = fisher_segformer_create(&cfg, &err);
    if (!m) fail_msg("create: %s", err.msg);
    fisher_segformer_init_random(m, seed);
    return m;
}

static char tmpdir[64];

static const char *tmp_path(const char *name) {
    static char path[128];
    if (!tmpdir[0]) {
        strcpy(tmpdir, "/tmp/fisher_segformer_XXXXXX");
        assert_non_null(mkdtemp(tmpdir));
    }
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    return path;
}

/* Saved weights, buffers, num_batches_tracked and config come back exactly,
 * and the reloaded model computes the same logits. */
static void test_save_load_roundtrip(void **state) {
    (void)state;
    fisher_error err = {{0}};
    fisher_segformer *a = new_model("tiny", 1, 3);
    int B = 2, H = 64, W = 64;
    float *images = malloc((size_t)B * H * W * 3 * sizeof(float)), mask[64 * 64];
    for (int b = 0; b < B; b++) fisher_synth_crack(images + (size_t)b * H * W * 3, mask, H, W, 5, (uint64_t)b);
    assert_int_equal(fisher_segformer_prepare(a, B, H, W, &err), 0);
    fisher_segformer_forward(a, images, 1); /* moves the BatchNorm running statistics */
    const char *path = tmp_path("roundtrip.safetensors");
    if (fisher_segformer_save(a, path, &err)) fail_msg("save: %s", err.msg);

    fisher_safetensors *st = fisher_safetensors_open(path, &err);
    if (!st) fail_msg("open: %s", err.msg);
    fisher_segformer *b = load_model(st);
    const fisher_tensor_table *pt = fisher_segformer_params(a), *bt = fisher_segformer_buffers(a);
    assert_memory_equal(fisher_segformer_param_data(a), fisher_segformer_param_data(b), pt->total * sizeof(float));
    assert_memory_equal(fisher_segformer_buffer_data(a), fisher_segformer_buffer_data(b), bt->total * sizeof(float));
    int64_t tracked = -1, scalar[1] = {0};
    assert_int_equal(fisher_safetensors_read_i64(st, "decode_head.batch_norm.num_batches_tracked", &tracked, 0, scalar, &err), 0);
    assert_int_equal(tracked, 1);
    assert_memory_equal(fisher_segformer_get_config(a), fisher_segformer_get_config(b), sizeof(fisher_segformer_config));

    assert_int_equal(fisher_segformer_prepare(b, B, H, W, &err), 0);
    size_t n = (size_t)B * H * W;
    float *la = malloc(n * sizeof(float));
    memcpy(la, fisher_segformer_forward(a, images, 0), n * sizeof(float));
    assert_memory_equal(la, fisher_segformer_forward(b, images, 0), n * sizeof(float));
    free(la), free(images);
    fisher_safetensors_close(st);
    fisher_segformer_free(a), fisher_segformer_free(b);
    unlink(path);
}

/* A checkpoint that does not fit is refused with the tensor named. */
static void test_load_errors_name_the_tensor(void **state) {
    (void)state;
    fisher_error err = {{0}};
    fisher_segformer *tiny = new_model("tiny", 1, 1), *b0 = new_model("mit-b0", 1, 1);
    const char *path = tmp_path("tiny.safetensors");
    assert_int_equal(fisher_segformer_save(tiny, path, &err), 0);
    fisher_safetensors *st = fisher_safetensors_open(path, &err);
    assert_non_null(st);
    assert_int_equal(fisher_segformer_load(b0, st, 0, &err), -1);
    printf("  mit-b0 from a tiny file: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "segformer.encoder.patch_embeddings.0.proj.weight"));
    assert_non_null(strstr(err.msg, "[16, 3, 7, 7]"));
    assert_non_null(strstr(err.msg, "[32, 3, 7, 7]"));
    fisher_safetensors_close(st);

    /* an encoder-only checkpoint (ImageNet MiT weights): refused unless asked for */
    const fisher_tensor_table *t = fisher_segformer_params(tiny);
    fisher_st_tensor enc[512];
    size_t n = 0;
    for (int i = 0; i < t->count; i++) {
        const fisher_tensor *e = &t->tensors[i];
        if (strncmp(e->name, "segformer.", 10) != 0) continue;
        enc[n] = (fisher_st_tensor){.name = e->name, .dtype = FISHER_DTYPE_F32, .ndim = e->ndim,
                                    .data = fisher_segformer_param_data(tiny) + e->offset};
        for (int d = 0; d < e->ndim; d++) enc[n].shape[d] = e->shape[d];
        n++;
    }
    const char *enc_path = tmp_path("encoder.safetensors");
    assert_int_equal(fisher_safetensors_write(enc_path, enc, n, NULL, 0, &err), 0);
    st = fisher_safetensors_open(enc_path, &err);
    fisher_segformer *fresh = new_model("tiny", 1, 2);
    assert_int_equal(fisher_segformer_load(fresh, st, 0, &err), -1);
    printf("  encoder-only file, full load: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "decode_head."));
    assert_int_equal(fisher_segformer_load(fresh, st, FISHER_LOAD_ENCODER_ONLY, &err), 0);
    int enc0 = fisher_table_find(t, "segformer.encoder.block.0.0.mlp.dense1.weight");
    assert_memory_equal(fisher_segformer_param_data(fresh) + t->tensors[enc0].offset,
                        fisher_segformer_param_data(tiny) + t->tensors[enc0].offset,
                        t->tensors[enc0].numel * sizeof(float));
    fisher_safetensors_close(st);
    fisher_segformer_free(tiny), fisher_segformer_free(b0), fisher_segformer_free(fresh);
    unlink(path), unlink(enc_path);
}

/* Several labels: logits have num_labels channels and training runs. */
static void test_num_labels(void **state) {
    (void)state;
    fisher_error err = {{0}};
    fisher_segformer *m = new_model("tiny", 3, 4);
    int cls = fisher_table_find(fisher_segformer_params(m), "decode_head.classifier.weight");
    assert_int_equal(fisher_segformer_params(m)->tensors[cls].shape[0], 3);
    int B = 1, H = 32, W = 48;
    size_t n = (size_t)B * H * W * 3;
    float *images = calloc(n, sizeof(float)), *dlogits = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) images[i] = (float)(i % 7) - 3, dlogits[i] = 1e-3f;
    assert_int_equal(fisher_segformer_prepare(m, B, H, W, &err), 0);
    int h4, w4;
    fisher_segformer_forward(m, images, 1);
    fisher_segformer_logits_quarter(m, &h4, &w4);
    assert_int_equal(h4, 8);
    assert_int_equal(w4, 12);
    fisher_segformer_zero_grad(m);
    assert_int_equal(fisher_segformer_backward(m, dlogits, NULL), 0);
    const float *g = fisher_segformer_grad_data(m) + fisher_segformer_params(m)->tensors[cls].offset;
    assert_true(g[0] != 0.0f && g[64] != 0.0f && g[128] != 0.0f); /* every label's row learns */
    free(images), free(dlogits);
    fisher_segformer_free(m);
}

static void test_bad_shapes_and_configs(void **state) {
    (void)state;
    fisher_error err = {{0}};
    fisher_segformer *m = new_model("tiny", 1, 0);
    float images[32 * 32 * 3] = {0}, dlogits[32 * 32] = {0};
    assert_null(fisher_segformer_forward(m, images, 1)); /* not prepared */
    assert_int_equal(fisher_segformer_prepare(m, 2, 16, 16, &err), -1);
    printf("  16x16: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "too small"));
    assert_int_equal(fisher_segformer_prepare(m, 1, 32, 32, &err), 0);
    assert_int_equal(fisher_segformer_backward(m, dlogits, &err), -1); /* no forward yet */
    fisher_segformer_forward(m, images, 0);
    assert_int_equal(fisher_segformer_backward(m, dlogits, &err), -1); /* eval forward */
    assert_non_null(strstr(err.msg, "training forward"));
    fisher_segformer_forward(m, images, 1);
    assert_int_equal(fisher_segformer_backward(m, dlogits, &err), 0);
    fisher_segformer_free(m);
    fisher_segformer_config cfg;
    assert_int_equal(fisher_segformer_config_named(&cfg, "mit-b7", &err), -1);
    assert_non_null(strstr(err.msg, "mit-b7"));
    assert_int_equal(fisher_segformer_config_named(&cfg, "tiny", &err), 0);
    assert_int_equal(fisher_segformer_config_from_json(&cfg, "{\"num_attention_heads\": [3, 1, 2, 4]}", &err), -1);
    printf("  heads 3 for 16 channels: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "num_attention_heads[0]"));
    assert_int_equal(fisher_segformer_config_from_json(&cfg, "{\"hidden_sizes\": [16, 32]}", &err), -1);
    assert_non_null(strstr(err.msg, "hidden_sizes"));
    assert_int_equal(fisher_segformer_config_from_json(&cfg, "not json", &err), -1);
    assert_non_null(strstr(err.msg, "not JSON"));
}

static int remove_tmpdir(void **state) {
    (void)state;
    if (tmpdir[0]) rmdir(tmpdir);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_training),
        cmocka_unit_test(test_mitb0_checkpoint),
        cmocka_unit_test(test_threads_change_rounding_only),
        cmocka_unit_test(test_save_load_roundtrip),
        cmocka_unit_test(test_load_errors_name_the_tensor),
        cmocka_unit_test(test_num_labels),
        cmocka_unit_test(test_bad_shapes_and_configs),
    };
    return cmocka_run_group_tests_name("segformer", tests, NULL, remove_tmpdir);
}
