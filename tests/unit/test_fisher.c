/*
 * test_fisher.c — FisherAdapTune on the model (fisher.h, the trainer's
 * strategies): chunking as FISHERADAPTUNE.md §2 says, and what freezing
 * means for the parameters — a frozen element never moves again, its
 * optimiser moments are zero, and the fixed recipes train exactly their
 * tensors. The method's numbers are checked against the NumPy reference in
 * test_drift.c; the layers' H and S against PyTorch hooks here.
 */
#include "testutil.h"

#include "fisher.h"
#include "loss.h"
#include "segformer.h"
#include "synth.h"
#include "train.h"

static void test_chunking(void **state) {
    (void)state;
    fisher_error err = {{0}};
    fisher_segformer *m = test_tiny_model(1);
    const fisher_tensor_table *tab = fisher_segformer_params(m);
    fisher_method_config cfg = fisher_method_defaults();
    for (int columns = 0; columns < 2; columns++) {
        cfg.slice_columns = columns;
        fisher_method *fm = fisher_method_create(m, &cfg, &err);
        assert_non_null(fm);
        const fisher_chunk *c;
        size_t n = fisher_method_chunks(fm, &c), total = 0;
        for (size_t i = 0; i < n; i++) total += c[i].size;
        assert_int_equal(total, tab->total); /* every element in exactly one chunk */
        /* the patch embedding's 16 output channels: 4 row blocks of 4 (16·3·7·7 / 4 each) */
        int found = 0;
        for (size_t i = 0; i < n; i++) {
            if (strcmp(c[i].key, "segformer.encoder.patch_embeddings.0.proj.weight.rowblock1") == 0) {
                assert_int_equal(c[i].start, 4);
                assert_int_equal(c[i].end, 8);
                assert_int_equal(c[i].size, 4 * 3 * 7 * 7);
                found = 1;
            }
            /* column mode: 3 input channels → 3 blocks (min(4, 3)); a 1-D tensor is one chunk */
            if (strcmp(c[i].key, "segformer.encoder.patch_embeddings.0.proj.weight.colblock2") == 0) {
                assert_int_equal(c[i].size, 16 * 1 * 7 * 7);
                found = 1;
            }
            if (strcmp(c[i].key, "decode_head.classifier.bias.rowblock0") == 0) {
                assert_int_equal(c[i].size, 1); /* one label: min(4, 1) = 1 block */
                found = 1;
            }
        }
        assert_true(found);
        printf("  %s mode: %zu chunks\n", columns ? "column" : "row", n);
        fisher_method_free(fm);
    }
    cfg.slice_blocks = 0;
    assert_null(fisher_method_create(m, &cfg, &err));
    assert_non_null(strstr(err.msg, "slice_blocks"));
    fisher_segformer_free(m);
}

/* Random batches of the synthetic world for B=2 at 64×64. */
static void batch(float *images, float *masks, int step) {
    for (int b = 0; b < 2; b++)
        fisher_synth_crack(images + (size_t)b * 64 * 64 * 3, masks + (size_t)b * 64 * 64, 64, 64, 3,
                           (uint64_t)(2 * step + b));
}

static void test_frozen_elements_never_move(void **state) {
    (void)state;
    fisher_error err = {{0}};
    fisher_segformer *m = test_tiny_model(1);
    fisher_method_config cfg = fisher_method_defaults();
    cfg.ema_interval = 2, cfg.freeze_interval = 4;
    fisher_adamw_config opt = fisher_adamw_defaults();
    opt.lr = 1e-3f;
    fisher_trainer t;
    assert_int_equal(fisher_trainer_init(&t, m, 2, 64, 64, opt, 0.65f, FISHER_STRATEGY_FISHER, &cfg, &err), 0);
    size_t n = fisher_segformer_params(m)->total;
    float *images = malloc(2 * 64 * 64 * 3 * sizeof(float)), *masks = malloc(2 * 64 * 64 * sizeof(float));
    float *before = malloc(n * sizeof(float)), loss;
    uint8_t *was_live = malloc(n);
    size_t frozen_seen = 0;
    for (int step = 0; step < 13; step++) {
        batch(images, masks, step);
        memcpy(before, fisher_segformer_param_data(m), n * sizeof(float));
        memcpy(was_live, fisher_method_live_mask(t.method), n);
        assert_int_equal(fisher_trainer_step(&t, images, masks, &loss, &err), 0);
        const float *p = fisher_segformer_param_data(m);
        const uint8_t *live = fisher_method_live_mask(t.method);
        size_t moved_frozen = 0, frozen = 0, moved_live = 0;
        for (size_t i = 0; i < n; i++) {
            if (!live[i]) {
                frozen++;
                moved_frozen += p[i] != before[i];
                assert_true(t.opt.m[i] == 0.0f && t.opt.v[i] == 0.0f);
            } else {
                moved_live += p[i] != before[i];
            }
            assert_true(was_live[i] || !live[i]); /* freezing is for good */
        }
        assert_int_equal(moved_frozen, 0);
        assert_int_equal(frozen, n - t.params_trainable);
        if (t.params_trainable) assert_true(moved_live > 0);
        if (step == 4 || step == 8 || step == 12) assert_true(t.report.decided);
        frozen_seen = frozen;
    }
    printf("  after 13 steps: %zu of %zu elements frozen, %zu chunks live\n", frozen_seen, n,
           t.report.chunks_live);
    assert_true(frozen_seen > 0);
    free(images), free(masks), free(before), free(was_live);
    fisher_trainer_free(&t);
    fisher_segformer_free(m);
}

/* The fixed recipes train exactly their tensors; everything else is bitwise unchanged. */
static void test_recipes_train_their_tensors(void **state) {
    (void)state;
    const struct {
        fisher_strategy s;
        const char *trains, *example_frozen;
    } cases[] = {
        {FISHER_STRATEGY_DECODER, "decode_head.linear_fuse.weight", "segformer.encoder.layer_norm.3.bias"},
        {FISHER_STRATEGY_BITFIT, "segformer.encoder.block.1.0.mlp.dense1.bias", "segformer.encoder.block.1.0.mlp.dense1.weight"},
        {FISHER_STRATEGY_NORM, "segformer.encoder.block.0.0.attention.self.layer_norm.weight", "decode_head.classifier.bias"},
        {FISHER_STRATEGY_NORM, "decode_head.batch_norm.bias", "decode_head.linear_c.2.proj.weight"},
    };
    float *images = malloc(2 * 64 * 64 * 3 * sizeof(float)), *masks = malloc(2 * 64 * 64 * sizeof(float));
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        fisher_error err = {{0}};
        fisher_segformer *m = test_tiny_model(1);
        const fisher_tensor_table *tab = fisher_segformer_params(m);
        fisher_adamw_config opt = fisher_adamw_defaults();
        opt.lr = 1e-3f;
        fisher_trainer t;
        assert_int_equal(fisher_trainer_init(&t, m, 2, 64, 64, opt, 0.65f, cases[k].s, NULL, &err), 0);
        float *before = malloc(tab->total * sizeof(float)), loss;
        memcpy(before, fisher_segformer_param_data(m), tab->total * sizeof(float));
        for (int step = 0; step < 2; step++) {
            batch(images, masks, step);
            assert_int_equal(fisher_trainer_step(&t, images, masks, &loss, &err), 0);
        }
        const float *p = fisher_segformer_param_data(m);
        size_t trainable = 0;
        for (int i = 0; i < tab->count; i++) {
            const fisher_tensor *e = &tab->tensors[i];
            int moved = memcmp(p + e->offset, before + e->offset, e->numel * sizeof(float)) != 0;
            int should = t.trainable[e->offset];
            if (moved != should) fail_msg("%s: %s %s", fisher_strategy_name(cases[k].s), e->name, should ? "did not move" : "moved");
            trainable += should ? e->numel : 0;
            if (strcmp(e->name, cases[k].trains) == 0) assert_true(should);
            if (strcmp(e->name, cases[k].example_frozen) == 0) assert_false(should);
        }
        assert_int_equal(trainable, t.params_trainable);
        printf("  %-8s trains %zu of %zu parameters\n", fisher_strategy_name(cases[k].s), trainable, tab->total);
        free(before);
        fisher_trainer_free(&t);
        fisher_segformer_free(m);
    }
    free(images), free(masks);
    assert_int_equal(fisher_strategy_parse("bitfit"), FISHER_STRATEGY_BITFIT);
    assert_int_equal(fisher_strategy_parse("lora"), -1);
}

static double max_abs_f(const float *x, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(x[i]));
    return m;
}

/* Parameters the loss does not depend on, so that their gradient is
 * rounding noise — which AdamW normalises into full-size steps, so their
 * values after training are noise too: a key bias adds the same logit to
 * every key of a query (softmax ignores it); a decode-head linear_c bias,
 * and the last stage's closing LayerNorm bias that only linear_c.3 reads,
 * add a per-channel constant that training-mode BatchNorm subtracts. */
static int loss_ignores(const char *name) {
    size_t n = strlen(name);
    int bias = n > 5 && strcmp(name + n - 5, ".bias") == 0;
    return (bias && (strstr(name, ".attention.self.key.") ||
                     strncmp(name, "decode_head.linear_c.", 21) == 0)) ||
           strcmp(name, "segformer.encoder.layer_norm.3.bias") == 0;
}

/* An imposed freezing schedule that leaves most tensors PARTLY live: in
 * round k (0, 1, 2) of every tensor cut into 2 or more chunks it freezes
 *   k = 0: block 1 (an inner run: blocks 0 and 2.. stay, two live runs) in
 *          even tensors, block 0 (an edge) in odd ones;
 *   k = 1: the last block;
 *   k = 2: block 2 in every third tensor (some freeze whole, one block left
 *          in others).
 * Every kind of layer gets it: patch-embedding and spatial-reduction convs,
 * q/k/v/output projections, Mix-FFN dense and depthwise, the decode head. */
static void freeze_round(fisher_trainer *t, int k) {
    const fisher_chunk *c;
    size_t n = fisher_method_chunks(t->method, &c), *pick = malloc(n * sizeof *pick), n_pick = 0;
    for (size_t first = 0, end; first < n; first = end) {
        for (end = first; end < n && c[end].tensor == c[first].tensor; end++) {}
        size_t blocks = end - first, b = SIZE_MAX;
        int ti = c[first].tensor;
        if (blocks < 2) continue;
        if (k == 0) b = ti % 2 ? 0 : 1;
        if (k == 1) b = blocks - 1;
        if (k == 2 && ti % 3 == 0) b = 2;
        if (b < blocks) pick[n_pick++] = first + b;
    }
    fisher_error err = {{0}};
    assert_int_equal(fisher_trainer_freeze(t, pick, n_pick, &err), 0);
    free(pick);
}

/* What the skipping backward really skipped, on t's model and live mask:
 * one backward told the mask, one told nothing (every gradient). Counts add
 * up over calls. */
typedef struct {
    size_t rows_frozen;       /* weight rows without a live element, all tensors */
    size_t rows_written;      /* of them, rows the skipping backward wrote: must be 0 */
    size_t rows_full_nonzero; /* of them, rows the full backward gives a nonzero gradient */
    size_t rows_partial;      /* frozen rows of tensors that still train: the row-level skips */
    size_t tensors_partial;
    unsigned kinds;           /* bit per layer kind (skip_kinds) with a partly live tensor */
    double worst;             /* largest |skipping − full| / max |full| over a tensor's live
                               * gradients, tensors the loss depends on */
    double ignored;           /* largest |full gradient| where loss_ignores, / the largest */
} skip_count;

static const char *const skip_kinds[] = {
    "patch_embeddings", "attention.self.query", "attention.self.key", "attention.self.value",
    "attention.self.sr", "attention.output.dense", "mlp.dense1", "mlp.dwconv", "mlp.dense2",
    "decode_head.linear_c", "decode_head.linear_fuse",
};
enum { N_KINDS = sizeof skip_kinds / sizeof *skip_kinds };

static void count_skipped_rows(skip_count *k, fisher_trainer *t, const float *images,
                               const float *masks) {
    fisher_segformer *m = t->model;
    const fisher_tensor_table *tab = fisher_segformer_params(m);
    const uint8_t *live = t->method ? fisher_method_live_mask(t->method) : t->trainable;
    float *grad[2], *dlogits = malloc(2 * 64 * 64 * sizeof(float));
    for (int way = 0; way < 2; way++) { /* 0: skipping, 1: everything */
        fisher_segformer_set_live(m, way ? NULL : live);
        fisher_segformer_zero_grad(m);
        fisher_seg_loss(dlogits, fisher_segformer_forward(m, images, 1), masks, 2 * 64 * 64, 0.65f);
        fisher_error err = {{0}};
        assert_int_equal(fisher_segformer_backward(m, dlogits, &err), 0);
        grad[way] = malloc(tab->total * sizeof(float));
        memcpy(grad[way], fisher_segformer_grad_data(m), tab->total * sizeof(float));
    }
    t->model_told = 0; /* the trainer tells the model again at its next step */
    for (int i = 0; i < tab->count; i++) {
        const fisher_tensor *e = &tab->tensors[i];
        size_t rows = (size_t)e->shape[0], len = e->numel / rows, frozen = 0;
        for (size_t r = 0; r < rows; r++) {
            size_t at = e->offset + r * len, any_live = 0, written = 0, nonzero = 0;
            for (size_t j = 0; j < len; j++) {
                any_live |= live ? live[at + j] : 1;
                written |= grad[0][at + j] != 0.0f;
                nonzero |= grad[1][at + j] != 0.0f;
            }
            if (any_live) continue;
            frozen++;
            if (e->ndim < 2) continue; /* biases and norms: skipped only whole */
            k->rows_frozen++;
            k->rows_written += written;
            k->rows_full_nonzero += nonzero;
        }
        if (frozen == rows) {
            /* a tensor frozen whole gets no gradient at all */
            for (size_t j = 0; j < e->numel; j++)
                if (grad[0][e->offset + j] != 0.0f)
                    fail_msg("%s: frozen whole, yet written", e->name);
        } else if (frozen && e->ndim >= 2) {
            k->rows_partial += frozen;
            k->tensors_partial++;
            for (int kind = 0; kind < N_KINDS; kind++)
                if (strstr(e->name, skip_kinds[kind])) k->kinds |= 1u << kind;
        }
    }
    /* where something trains, the skipping backward gives the full gradient */
    double largest = max_abs_f(grad[1], tab->total), ignored = 0;
    for (int i = 0; i < tab->count; i++) {
        const fisher_tensor *e = &tab->tensors[i];
        if (loss_ignores(e->name)) {
            ignored = fmax(ignored, max_abs_f(grad[1] + e->offset, e->numel));
            continue;
        }
        double diff = 0, scale = 0;
        for (size_t j = e->offset; j < e->offset + e->numel; j++) {
            if (live && !live[j]) continue;
            diff = fmax(diff, fabs((double)grad[0][j] - grad[1][j]));
            scale = fmax(scale, fabs(grad[1][j]));
        }
        if (scale > 0) k->worst = fmax(k->worst, diff / scale);
    }
    k->ignored = fmax(k->ignored, ignored / largest);
    free(grad[0]), free(grad[1]), free(dlogits);
}

/* §8: skipping the work of frozen parts (weight-gradient rows of frozen
 * chunks, whole tensors, back-propagation below the earliest trainable
 * layer, statistics of frozen layers) must give what the plain masked
 * computation gives. Both ways train from the same start for 9 steps:
 *   - the method deciding every 3 steps (λ = 0: about half the live chunks
 *     freeze each time), with the reference and the empirical estimator.
 *     Alone this leaves no weight partly live: under the reference
 *     estimator a weight's row chunks share S ≈ 0.2 and H, so they drift
 *     alike and freeze together (and on this short run the empirical
 *     estimator's do too);
 *   - hence an imposed schedule that does (freeze_round, before steps 0, 3
 *     and 6), alone and with decisions;
 *   - column chunks: rows stay partly live, nothing is skipped by row;
 *   - the fixed recipes.
 * Losses agree to 1e-6 at every step, parameters at the end (see there).
 * And the skipping way is shown to be taken: after every step, a backward
 * told the live mask leaves every frozen weight row untouched (zero) while
 * a full backward writes those rows — so the check fails if rows are not
 * skipped — and gives the full backward's gradients on live elements. */
static void test_skipping_frozen_work_changes_nothing(void **state) {
    (void)state;
    const struct {
        const char *name;
        fisher_strategy strategy;
        int decisions, schedule, columns;
        fisher_estimator estimator;
    } cases[] = {
#define REF FISHER_ESTIMATOR_REFERENCE
        {"fisher, decisions", FISHER_STRATEGY_FISHER, 1, 0, 0, REF},
        {"fisher empirical, decisions", FISHER_STRATEGY_FISHER, 1, 0, 0, FISHER_ESTIMATOR_EMPIRICAL},
        {"fisher, imposed row chunks", FISHER_STRATEGY_FISHER, 0, 1, 0, REF},
        {"fisher, imposed + decisions", FISHER_STRATEGY_FISHER, 1, 1, 0, REF},
        {"fisher, column chunks", FISHER_STRATEGY_FISHER, 1, 1, 1, REF},
#undef REF
        {"decoder", FISHER_STRATEGY_DECODER, 0, 0, 0, 0},
        {"norm", FISHER_STRATEGY_NORM, 0, 0, 0, 0},
        {"bitfit", FISHER_STRATEGY_BITFIT, 0, 0, 0, 0},
    };
    float *images = malloc(2 * 64 * 64 * 3 * sizeof(float)), *masks = malloc(2 * 64 * 64 * sizeof(float));
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        fisher_error err = {{0}};
        fisher_method_config cfg = fisher_method_defaults();
        cfg.ema_interval = 1, cfg.freeze_interval = cases[k].decisions ? 3 : 1000, cfg.lambda = 0.0;
        cfg.slice_columns = cases[k].columns, cfg.estimator = cases[k].estimator;
        fisher_adamw_config opt = fisher_adamw_defaults();
        opt.lr = 1e-3f;
        fisher_segformer *m[2];
        fisher_trainer t[2];
        for (int way = 0; way < 2; way++) {
            m[way] = test_tiny_model(1);
            assert_int_equal(fisher_trainer_init(&t[way], m[way], 2, 64, 64, opt, 0.65f,
                                                 cases[k].strategy, &cfg, &err), 0);
            t[way].skip_frozen_work = way;
        }
        skip_count c = {0};
        for (int step = 0; step < 9; step++) {
            batch(images, masks, step);
            float loss[2];
            for (int way = 0; way < 2; way++) {
                if (cases[k].schedule && step % 3 == 0) freeze_round(&t[way], step / 3);
                assert_int_equal(fisher_trainer_step(&t[way], images, masks, &loss[way], &err), 0);
            }
            /* per run of live rows, a GEMM may round differently from the whole one */
            assert_true(fabsf(loss[0] - loss[1]) <= 1e-6f * fabsf(loss[0]));
            /* parameters only: the extra backwards move BatchNorm's running statistics */
            count_skipped_rows(&c, &t[1], images, masks);
        }
        /* AdamW moves an element about lr a step whatever its gradient's
         * size. Rounding differs once a weight gradient is one GEMM per run
         * of live rows, so the two ways must agree to a thousandth of the
         * farthest a parameter moves in the run; the parameters the loss
         * ignores hold noise in both and are left out. */
        const fisher_tensor_table *tab = fisher_segformer_params(m[0]);
        size_t n = tab->total, n_cmp = 0;
        float *got = malloc(n * sizeof(float)), *want = malloc(n * sizeof(float));
        for (int i = 0; i < tab->count; i++) {
            const fisher_tensor *e = &tab->tensors[i];
            if (loss_ignores(e->name)) continue;
            size_t bytes = e->numel * sizeof(float);
            memcpy(got + n_cmp, fisher_segformer_param_data(m[1]) + e->offset, bytes);
            memcpy(want + n_cmp, fisher_segformer_param_data(m[0]) + e->offset, bytes);
            n_cmp += e->numel;
        }
        char name[96];
        snprintf(name, sizeof name, "%s: masked vs skipping, parameters", cases[k].name);
        assert_close(name, got, want, n_cmp, 1e-6, 1e-3 * opt.lr * 9);
        free(got), free(want);
        assert_int_equal(t[0].params_trainable, t[1].params_trainable);
        printf("  %s: %zu of %zu parameters still train; over the 9 steps %zu frozen weight rows, "
               "%zu of them in %zu partly live tensors; %zu written by the skipping backward, %zu "
               "nonzero in the full one; live gradients differ by %.1e of the tensor's largest; "
               "ignored parameters' gradients are %.1e of the largest\n",
               cases[k].name, t[1].params_trainable, n, c.rows_frozen, c.rows_partial,
               c.tensors_partial, c.rows_written, c.rows_full_nonzero, c.worst, c.ignored);
        assert_int_equal(c.rows_written, 0);
        assert_true(c.worst <= 1e-5);
        assert_true(c.ignored <= 1e-5); /* loss_ignores is right about them */
        if (c.rows_frozen) assert_true(c.rows_full_nonzero > 0); /* the check can fail */
        if (cases[k].columns) assert_int_equal(c.rows_partial, 0); /* no row is wholly frozen */
        if (cases[k].schedule && !cases[k].columns) {
            assert_int_equal(c.kinds, (1u << N_KINDS) - 1); /* every kind of layer skipped rows */
            assert_true(c.rows_full_nonzero == c.rows_frozen);
        }
        for (int way = 0; way < 2; way++) fisher_trainer_free(&t[way]), fisher_segformer_free(m[way]);
    }
    free(images), free(masks);
}

/* Every layer's per-batch H and S (§1) against forward/backward hooks on the
 * PyTorch model (fisher_hooks.safetensors.gz, tests/parity/fisher_reference.py),
 * on the tiny fixture's weights and batch.
 * Tolerances: H and the Linear/Conv S are sums of squares of activations and
 * gradients already checked to 1e-4 / 1e-3 (test_segformer): rtol 1e-3, atol
 * 1e-4 of the vector's largest entry. A LayerNorm/BatchNorm S[c] is the
 * square of its bias gradient over B, so it is compared as that gradient,
 * sqrt(S·B), with test_segformer's gradient tolerance — some of those
 * gradients are exactly 0 and rounding noise in both frameworks.
 * Twice: collecting from the forward on (the H the forward takes where it
 * can), then switched on only after the forward (every H from the backward,
 * as fisher_segformer_collect_stats promises), the first run's values
 * poisoned in between. */
static void test_layer_statistics_match_hooks(void **state) {
    (void)state;
    fisher_safetensors *fx = fixture_open("segformer_tiny.safetensors.gz");
    fisher_safetensors *hooks = fixture_open("fisher_hooks.safetensors.gz");
    fisher_error err = {{0}};
    fisher_segformer_config cfg;
    assert_int_equal(fisher_segformer_config_named(&cfg, "tiny", &err), 0);
    fisher_segformer *m = fisher_segformer_create(&cfg, &err);
    if (fisher_segformer_load(m, fx, 0, &err)) fail_msg("%s", err.msg);
    int B = 2, H = 64, W = 64;
    size_t npix = (size_t)B * H * W;
    float *images = fixture_f32(fx, "input", npix * 3), *target = fixture_f32(fx, "target", npix);
    float *dlogits = malloc(npix * sizeof(float));
    assert_int_equal(fisher_segformer_prepare(m, B, H, W, &err), 0);
    const fisher_layer *layers;
    size_t n = fisher_segformer_layers(m, &layers);
    assert_int_equal(n, 61);
    for (int late = 0; late < 2; late++) {
        for (size_t i = 0; i < n; i++) {
            for (size_t k = 0; k < layers[i].h_len; k++) layers[i].H[k] = NAN;
            for (size_t k = 0; k < layers[i].s_len; k++) layers[i].S[k] = NAN;
        }
        fisher_segformer_collect_stats(m, !late);
        fisher_segformer_zero_grad(m);
        const float *logits = fisher_segformer_forward(m, images, 1);
        fisher_segformer_collect_stats(m, 1);
        fisher_seg_loss(dlogits, logits, target, npix, 0.65f);
        assert_int_equal(fisher_segformer_backward(m, dlogits, &err), 0);
        double grad_max = max_abs_f(fisher_segformer_grad_data(m), fisher_segformer_params(m)->total);

        for (size_t i = 0; i < n; i++) {
            const fisher_layer *l = &layers[i];
            char name[FISHER_NAME_MAX + 8];
            snprintf(name, sizeof name, "H.%s", l->name);
            float *h = fixture_f32(hooks, name, l->h_len);
            assert_close(name, l->H, h, l->h_len, 1e-3, 1e-4 * max_abs_f(h, l->h_len));
            snprintf(name, sizeof name, "S.%s", l->name);
            float *sv = fixture_f32(hooks, name, l->s_len);
            if (l->cls == FISHER_CLASS_LINEAR || l->cls == FISHER_CLASS_CONV) {
                assert_close(name, l->S, sv, l->s_len, 1e-3, 1e-4 * max_abs_f(sv, l->s_len));
            } else { /* as the bias gradient it squares */
                float *got = malloc(l->s_len * sizeof(float)), *want = malloc(l->s_len * sizeof(float));
                for (size_t c = 0; c < l->s_len; c++)
                    got[c] = sqrtf(l->S[c] * (float)B), want[c] = sqrtf(sv[c] * (float)B);
                assert_close(name, got, want, l->s_len, 1e-3,
                             fmax(1e-3 * max_abs_f(want, l->s_len), 1e-6 * grad_max));
                free(got), free(want);
            }
            free(h), free(sv);
        }
    }
    free(images), free(target), free(dlogits);
    fisher_segformer_free(m);
    fisher_safetensors_close(fx), fisher_safetensors_close(hooks);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chunking),
        cmocka_unit_test(test_layer_statistics_match_hooks),
        cmocka_unit_test(test_frozen_elements_never_move),
        cmocka_unit_test(test_recipes_train_their_tensors),
        cmocka_unit_test(test_skipping_frozen_work_changes_nothing),
    };
    return cmocka_run_group_tests_name("fisher", tests, NULL, NULL);
}
