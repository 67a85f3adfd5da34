/*
 * test_dp.c — data-parallel training's library side (issue 9): N ranks on
 * shards of a global batch compute what one process computes on the whole
 * batch.
 *
 * The ranks are threads of this process talking through an in-process
 * communicator (thread_comm.h: a pthread barrier and shared pointers; rank 0 adds the
 * ranks' buffers in rank order, so every rank gets the same bits, run after
 * run — the contract of comm.h). Each rank thread sets one compute thread
 * (OpenBLAS and OpenMP): the ranks already occupy the cores, and reductions
 * whose order depends on the team size would make the one-process reference
 * differ for a reason that has nothing to do with data parallelism.
 *
 * cmocka's assertions longjmp and are not thread-safe, so rank threads only
 * record what happened; the main thread asserts after joining them.
 *
 * Tolerances (testutil.h's assert_close: |got − want| ≤ atol + rtol·|want|), and why:
 *   - SyncBN and the loss: the global sums are the same doubles added in a
 *     different order (rank 0's part, then rank 1's, instead of one run over
 *     all rows), then rounded to float once: the results differ from the
 *     one-process values by at most a few float ulps. rtol 1e-5 (≈ 80 ulps)
 *     leaves room for the float arithmetic after the sums without hiding a
 *     wrong count or a missing rank (errors of 1e-1 and up).
 *   - The first step's gradients: every GEMM sums over half the rows per
 *     rank and the ranks' partial gradients are then added in float, so
 *     they differ from the one-process gradients in the last bits:
 *     rtol 1e-3 with atol 1e-5·max|g| (measured: ~1e-5 relative). This is
 *     the check that catches a wrong normalisation (gradients averaged
 *     instead of summed, SyncBN's weight gradient counted twice), which
 *     AdamW, being invariant to the gradient's scale, would hide from the
 *     parameters.
 *   - Parameters after 20 steps: atol lr (1e-3); measured ≤ 1.3e-4. Except
 *     the tensors whose gradient is analytically ZERO because the decode
 *     head's BatchNorm removes any per-channel shift before it — the
 *     linear_c biases and the last encoder LayerNorm's bias (it only feeds
 *     linear_c.3). Their gradients are rounding noise, which AdamW turns
 *     into steps of ±lr in either run, so they may differ by up to
 *     2·lr per step; they are checked against that bound. Through them the
 *     decode BatchNorm's running mean differs too, by a shift the test
 *     predicts from the recorded biases (running_mean_shift); the rest
 *     must agree to 1e-3, like the running variance, which a shift does
 *     not touch.
 */
#include <pthread.h>

#include "testutil.h"

#include "comm.h"
#include "fisher.h"
#include "layers.h"
#include "loss.h"
#include "rng.h"
#include "segformer.h"
#include "synth.h"
#include "train.h"
#include "thread_comm.h"

static float max_abs_diff(const float *a, const float *b, size_t n) {
    float m = 0;
    for (size_t i = 0; i < n; i++) m = fmaxf(m, fabsf(a[i] - b[i]));
    return m;
}

/* ------------------------------------------------------------- (a) SyncBN */

enum { BN_C = 8, BN_R0 = 40, BN_R1 = 88, BN_R = BN_R0 + BN_R1 };

typedef struct {
    fisher_comm comm;
    const float *inp, *dout, *weight, *bias;
    int R;
    float out[BN_R * BN_C], dinp[BN_R * BN_C], mean[BN_C], rstd[BN_C];
    float rm[BN_C], rv[BN_C], dw[BN_C], db[BN_C];
    int rc;
    fisher_error err;
} bn_rank;

static void *bn_rank_main(void *arg) {
    bn_rank *a = arg;
    fisher_set_threads(1);
    for (int c = 0; c < BN_C; c++) a->rm[c] = 0.5f, a->rv[c] = 2.0f;
    a->rc = fisher_batchnorm_forward_train_sync(a->out, a->mean, a->rstd, a->rm, a->rv, a->inp, a->weight,
                                                a->bias, a->R, BN_C, 0.1f, 1e-5f, NULL, &a->comm,
                                                &a->err) ||
            fisher_batchnorm_backward_sync(a->dinp, a->dw, a->db, a->dout, a->inp, a->weight, a->mean,
                                           a->rstd, a->R, BN_C, &a->comm, &a->err);
    return NULL;
}

/* Two ranks holding 40 and 88 of 128 rows (unequal on purpose: the global
 * count travels with the sums) give the whole batch's BatchNorm: outputs,
 * batch and running statistics, input gradients; the local weight and bias
 * gradients add up to the whole batch's. */
static void test_syncbn_two_ranks_equal_one_batch(void **state) {
    (void)state;
    fisher_set_threads(1);
    static float inp[BN_R * BN_C], dout[BN_R * BN_C];
    float w[BN_C], b[BN_C];
    fisher_rng rng;
    fisher_rng_seed(&rng, 7);
    for (int i = 0; i < BN_R * BN_C; i++) {
        inp[i] = 3.0f + 2.0f * fisher_rng_normal(&rng); /* an offset: the mean matters */
        dout[i] = fisher_rng_normal(&rng);
    }
    for (int c = 0; c < BN_C; c++) w[c] = 1.0f + 0.1f * (float)c, b[c] = 0.05f * (float)c;

    static float out[BN_R * BN_C], dinp[BN_R * BN_C];
    float mean[BN_C], rstd[BN_C], rm[BN_C], rv[BN_C], dw[BN_C] = {0}, db[BN_C] = {0};
    for (int c = 0; c < BN_C; c++) rm[c] = 0.5f, rv[c] = 2.0f;
    memset(dinp, 0, sizeof dinp);
    fisher_batchnorm_forward_train(out, mean, rstd, rm, rv, inp, w, b, BN_R, BN_C, 0.1f, 1e-5f);
    fisher_batchnorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, BN_R, BN_C);

    hub h;
    hub_init(&h, 2);
    static bn_rank ranks[2];
    memset(ranks, 0, sizeof ranks);
    for (int r = 0; r < 2; r++) {
        size_t off = r ? (size_t)BN_R0 * BN_C : 0;
        ranks[r].comm = hub_comm(&h, r);
        ranks[r].inp = inp + off, ranks[r].dout = dout + off, ranks[r].weight = w, ranks[r].bias = b;
        ranks[r].R = r ? BN_R1 : BN_R0;
    }
    run_ranks(2, bn_rank_main, ranks, sizeof ranks[0]);
    hub_destroy(&h);
    for (int r = 0; r < 2; r++) assert_int_equal(ranks[r].rc, 0);
    assert_int_equal(h.calls, 3); /* Σx, Σ(x − mean)², then Σdy and Σdy·x̂ */

    /* every rank holds the same statistics, bit for bit */
    assert_memory_equal(ranks[0].mean, ranks[1].mean, sizeof mean);
    assert_memory_equal(ranks[0].rstd, ranks[1].rstd, sizeof rstd);
    assert_memory_equal(ranks[0].rm, ranks[1].rm, sizeof rm);
    assert_memory_equal(ranks[0].rv, ranks[1].rv, sizeof rv);

    float got_out[BN_R * BN_C], got_dinp[BN_R * BN_C], got_dw[BN_C], got_db[BN_C];
    memcpy(got_out, ranks[0].out, (size_t)BN_R0 * BN_C * sizeof(float));
    memcpy(got_out + BN_R0 * BN_C, ranks[1].out, (size_t)BN_R1 * BN_C * sizeof(float));
    memcpy(got_dinp, ranks[0].dinp, (size_t)BN_R0 * BN_C * sizeof(float));
    memcpy(got_dinp + BN_R0 * BN_C, ranks[1].dinp, (size_t)BN_R1 * BN_C * sizeof(float));
    for (int c = 0; c < BN_C; c++)
        got_dw[c] = ranks[0].dw[c] + ranks[1].dw[c], got_db[c] = ranks[0].db[c] + ranks[1].db[c];
    assert_close("batch mean", ranks[0].mean, mean, BN_C, 1e-5f, 1e-6f);
    assert_close("batch rstd", ranks[0].rstd, rstd, BN_C, 1e-5f, 1e-6f);
    assert_close("running mean", ranks[0].rm, rm, BN_C, 1e-5f, 1e-6f);
    assert_close("running var (unbiased)", ranks[0].rv, rv, BN_C, 1e-5f, 1e-6f);
    assert_close("out", got_out, out, BN_R * BN_C, 1e-5f, 1e-5f);
    assert_close("dinp", got_dinp, dinp, BN_R * BN_C, 1e-5f, 1e-5f);
    /* local sums: one rank's dweight alone is NOT the batch's (counted once) */
    assert_true(max_abs_diff(ranks[1].dw, dw, BN_C) > 1e-2f);
    assert_close("dweight (rank sum)", got_dw, dw, BN_C, 1e-5f, 1e-5f);
    assert_close("dbias (rank sum)", got_db, db, BN_C, 1e-5f, 1e-5f);
}

/* --------------------------------------------------------------- (b) loss */

enum { LOSS_N = 8192 };

typedef struct {
    fisher_comm comm;
    const float *logits, *target;
    size_t n;
    float loss, dlogits[LOSS_N];
    int rc;
    fisher_error err;
} loss_rank;

static void *loss_rank_main(void *arg) {
    loss_rank *a = arg;
    a->rc = fisher_seg_loss_global(&a->loss, a->dlogits, a->logits, a->target, a->n, 0.65f, &a->comm,
                                   &a->err);
    return NULL;
}

/* Three ranks holding 3000, 5192 and 0 of 8192 pixels: each gets the whole
 * batch's loss and its own rows of the whole batch's dlogits (BCE's mean
 * over the global count, Dice over the global sums). */
static void test_loss_over_ranks_equals_one_batch(void **state) {
    (void)state;
    static float logits[LOSS_N], target[LOSS_N], dlogits[LOSS_N];
    fisher_rng rng;
    fisher_rng_seed(&rng, 3);
    for (int i = 0; i < LOSS_N; i++) {
        logits[i] = 2.0f * fisher_rng_normal(&rng);
        target[i] = fisher_rng_uniform(&rng) < 0.2 ? 1.0f : 0.0f;
    }
    float want = fisher_seg_loss(dlogits, logits, target, LOSS_N, 0.65f);

    hub h;
    hub_init(&h, 3);
    static loss_rank ranks[3];
    memset(ranks, 0, sizeof ranks);
    size_t at[4] = {0, 3000, LOSS_N, LOSS_N};
    for (int r = 0; r < 3; r++) {
        ranks[r].comm = hub_comm(&h, r);
        ranks[r].logits = logits + at[r], ranks[r].target = target + at[r];
        ranks[r].n = at[r + 1] - at[r];
    }
    run_ranks(3, loss_rank_main, ranks, sizeof ranks[0]);
    hub_destroy(&h);
    for (int r = 0; r < 3; r++) {
        assert_int_equal(ranks[r].rc, 0);
        assert_memory_equal(&ranks[r].loss, &ranks[0].loss, sizeof(float));
    }
    assert_int_equal(h.calls, 1);
    assert_close("loss", &ranks[0].loss, &want, 1, 1e-6f, 0);
    /* the local loss of rank 1's pixels alone is another number: not what a rank reports */
    assert_true(fabsf(fisher_seg_loss(NULL, logits + 3000, target + 3000, LOSS_N - 3000, 0.65f) - want) > 1e-4f);
    static float got[LOSS_N];
    memcpy(got, ranks[0].dlogits, 3000 * sizeof(float));
    memcpy(got + 3000, ranks[1].dlogits, (LOSS_N - 3000) * sizeof(float));
    assert_close("dlogits", got, dlogits, LOSS_N, 1e-5f, 1e-12f);
}

/* A communicator that fails: the step fails with its message, and a bad
 * communicator is refused with a reason. */
static int failing_f64(fisher_comm *c, double *x, size_t n, fisher_error *err) {
    (void)x, (void)n;
    int *calls_left = c->ctx; /* succeed that often first (size 1: a sum is the identity) */
    if (calls_left && (*calls_left)-- > 0) return 0;
    return fisher_errorf(err, "rank %d: peer on host-b went away", c->rank);
}
static int failing_f32(fisher_comm *c, float *x, size_t n, fisher_error *err) {
    (void)x, (void)n, (void)c, (void)err;
    return -1; /* without a message: the library names the collective */
}

static void test_comm_failure_fails_the_step(void **state) {
    (void)state;
    fisher_set_threads(1);
    fisher_segformer *m = test_tiny_model(0);
    fisher_error err = {{0}};
    fisher_trainer t;
    assert_int_equal(fisher_trainer_init(&t, m, 1, 32, 32, fisher_adamw_defaults(), 0.65f,
                                         FISHER_STRATEGY_FULL, NULL, &err), 0);
    fisher_comm bad = {2, 2, failing_f64, failing_f32, NULL};
    assert_int_equal(fisher_trainer_set_comm(&t, &bad, &err), -1);
    assert_non_null(strstr(err.msg, "rank 2 of size 2"));
    fisher_comm half = {0, 1, failing_f64, NULL, NULL};
    assert_int_equal(fisher_trainer_set_comm(&t, &half, &err), -1);
    assert_non_null(strstr(err.msg, "allreduce_sum_f32"));

    fisher_comm fails = {0, 1, failing_f64, failing_f32, NULL};
    assert_int_equal(fisher_trainer_set_comm(&t, &fails, &err), -1); /* its start-alike check */
    assert_string_equal(err.msg, "rank 0: peer on host-b went away");
    int calls_left = 1;
    fails.ctx = &calls_left;
    assert_int_equal(fisher_trainer_set_comm(&t, &fails, &err), 0);
    static float images[32 * 32 * 3], masks[32 * 32];
    float loss;
    assert_int_equal(fisher_trainer_step(&t, images, masks, &loss, &err), -1);
    assert_string_equal(err.msg, "rank 0: peer on host-b went away"); /* SyncBN's first sum */
    assert_int_equal(fisher_segformer_backward(m, t.dlogits, &err), -1); /* no whole forward to differentiate */
    fisher_trainer_free(&t);
    fisher_segformer_free(m);
}

/* ------------------------------------------------- (c) 20 training steps */

/* The biases whose gradient is analytically zero in tiny (see the top of
 * this file): decode_head.linear_c.{0..3}.proj.bias (D = 64 each), then
 * segformer.encoder.layer_norm.3.bias (128). */
enum { TINY_D = 64, TINY_C3 = 128, FREE = 4 * TINY_D + TINY_C3 };

static const float *tensor_at(fisher_segformer *m, const char *name) {
    const fisher_tensor_table *tab = fisher_segformer_params(m);
    int i = fisher_table_find(tab, name);
    return i < 0 ? NULL : fisher_segformer_param_data(m) + tab->tensors[i].offset;
}

static void record_free_biases(fisher_segformer *m, float *out) {
    for (int s = 0; s < 4; s++) {
        char name[64];
        snprintf(name, sizeof name, "decode_head.linear_c.%d.proj.bias", s);
        memcpy(out + s * TINY_D, tensor_at(m, name), TINY_D * sizeof(float));
    }
    memcpy(out + 4 * TINY_D, tensor_at(m, "segformer.encoder.layer_norm.3.bias"), TINY_C3 * sizeof(float));
}

enum { STEPS = 20, GLOBAL_B = 4, IMG = 64, FREEZE_EVERY = 5 };

typedef struct {
    fisher_comm comm;          /* rank/size; size 0: one process on the whole batch */
    fisher_strategy strategy;
    fisher_estimator estimator;
    int B, first;              /* local batch, and its first sample in the global batch */
    fisher_segformer *m;
    fisher_trainer t;
    float loss[STEPS];
    uint64_t grad_bytes[STEPS], bytes[STEPS];
    size_t live_before[STEPS]; /* elements AdamW updated at each step */
    fisher_freeze_stats stats[STEPS];
    float *grad0;              /* gradients of the first step, after the all-reduce */
    float *free_hist;          /* (STEPS, FREE) the free biases (free_shift) each forward saw */
    int decided[STEPS];
    double seconds;
    int rc;
    uint64_t grad_calls[STEPS];
    uint64_t seed;             /* of the model's random init */
    int shards;                /* one process: norm statistics over this many shards */
    fisher_error err;
} run;

/* Floats per gradient all-reduce in the rank runs: small, so that a step
 * packs the live runs across several buffers (the default 1 Mi would hold
 * all of tiny's 455 841 parameters at once). */
enum { FUSED = 65536 };

static void *run_main(void *arg) {
    run *a = arg;
    fisher_set_threads(1);
    a->m = test_tiny_model(0);
    fisher_segformer_init_random(a->m, a->seed);
    fisher_method_config mc = fisher_method_defaults();
    mc.ema_interval = 1, mc.freeze_interval = FREEZE_EVERY, mc.estimator = a->estimator;
    fisher_adamw_config oc = fisher_adamw_defaults();
    oc.lr = 1e-3f;
    size_t px = (size_t)IMG * IMG;
    float *images = malloc((size_t)a->B * px * 3 * sizeof(float));
    float *masks = malloc((size_t)a->B * px * sizeof(float));
    a->rc = -1;
    a->free_hist = malloc((size_t)STEPS * FREE * sizeof(float));
    if (!images || !masks || !a->free_hist ||
        fisher_trainer_init(&a->t, a->m, a->B, IMG, IMG, oc, 0.65f, a->strategy, &mc, &a->err))
        goto out;
    if (a->comm.size) {
        if (fisher_trainer_set_comm(&a->t, &a->comm, &a->err)) goto out;
        a->t.fused_floats = FUSED;
    } else if (fisher_segformer_set_stat_shards(a->m, a->shards, &a->err)) { /* what the ranks average */
        goto out;
    }
    double t0 = fisher_now_seconds();
    for (int s = 0; s < STEPS; s++) {
        for (int b = 0; b < a->B; b++) /* sample first + b of global batch s */
            fisher_synth_crack(images + (size_t)b * px * 3, masks + (size_t)b * px, IMG, IMG, 11,
                               (uint64_t)(s * GLOBAL_B + a->first + b));
        a->live_before[s] = a->t.params_trainable;
        record_free_biases(a->m, a->free_hist + (size_t)s * FREE);
        if (fisher_trainer_step(&a->t, images, masks, &a->loss[s], &a->err)) goto out;
        size_t total = fisher_segformer_params(a->m)->total;
        if (s == 0 && (a->grad0 = malloc(total * sizeof(float))))
            memcpy(a->grad0, fisher_segformer_grad_data(a->m), total * sizeof(float));
        a->grad_bytes[s] = a->t.grad_allreduce_bytes, a->bytes[s] = a->t.allreduce_bytes;
        a->grad_calls[s] = a->t.grad_allreduce_calls;
        a->decided[s] = a->t.report.decided && !a->t.report.zero_freeze;
        a->stats[s] = a->t.report.stats;
    }
    a->seconds = fisher_now_seconds() - t0;
    if (fisher_trainer_check_ranks(&a->t, &a->err)) goto out; /* still alike: a no-op alone */
    a->rc = 0;
out:
    free(images), free(masks);
    return NULL;
}

static void free_run(run *a) {
    free(a->grad0);
    free(a->free_hist);
    fisher_trainer_free(&a->t);
    fisher_segformer_free(a->m);
}

/* One process on the global batch, then n ranks on its equal shards. */
static void run_both(fisher_strategy strategy, fisher_estimator estimator, int n, run *one, run *ranks) {
    memset(one, 0, sizeof *one);
    one->strategy = strategy, one->estimator = estimator, one->B = GLOBAL_B, one->shards = n;
    run_main(one);
    if (one->rc) fail_msg("one process: %s", one->err.msg);
    hub h;
    hub_init(&h, n);
    memset(ranks, 0, (size_t)n * sizeof *ranks);
    for (int r = 0; r < n; r++) {
        ranks[r].comm = hub_comm(&h, r);
        ranks[r].strategy = strategy, ranks[r].estimator = estimator;
        ranks[r].B = GLOBAL_B / n, ranks[r].first = r * GLOBAL_B / n;
    }
    run_ranks(n, run_main, ranks, sizeof ranks[0]);
    hub_destroy(&h);
    for (int r = 0; r < n; r++)
        if (ranks[r].rc) fail_msg("rank %d: %s", r, ranks[r].err.msg);
    printf("  %s, %d ranks: one process %.2f s, ranks %.2f s for %d steps\n", fisher_strategy_name(strategy),
           n, one->seconds, ranks[0].seconds, STEPS);
}

static void free_runs(run *one, run *ranks, int n) {
    free_run(one);
    for (int r = 0; r < n; r++) free_run(&ranks[r]);
}

/* Tensors whose gradient is analytically zero (see the top of this file). */
static int free_shift(const char *name) {
    return (strncmp(name, "decode_head.linear_c.", 21) == 0 && strstr(name, ".bias")) ||
           strcmp(name, "segformer.encoder.layer_norm.3.bias") == 0;
}

/* How much the decode BatchNorm's running mean must differ between a rank
 * and the one process because the free biases differ: they shift the
 * BatchNorm's input, channel c, by
 *     δ[c] = Σ_s Σ_j W_fuse[c, block s, j]·Δb_s[j]
 *          + Σ_j W_fuse[c, block 3, j]·Σ_k W_lc3[j,k]·Δβ[k]
 * (linear_c.s biases b_s; β the last encoder LayerNorm's bias, which feeds
 * linear_c.3 only; bilinear upsampling keeps a constant constant), and the
 * running mean averages the shifted batch means with BatchNorm's momentum:
 * Δ = Σ_t m·(1 − m)^(T−1−t)·δ_t. Uses the one process's final weights:
 * they moved by ≤ 20·lr, which changes the prediction by a few per cent. */
static void running_mean_shift(double *shift, const run *rank, const run *one) {
    fisher_segformer *m = one->m;
    const float *wf = tensor_at(m, "decode_head.linear_fuse.weight"); /* (D, 4D), deepest first */
    const float *wl = tensor_at(m, "decode_head.linear_c.3.proj.weight"); /* (D, C3) */
    double mom = fisher_segformer_get_config(m)->batch_norm_momentum;
    memset(shift, 0, TINY_D * sizeof *shift);
    for (int t = 0; t < STEPS; t++) {
        const float *br = rank->free_hist + (size_t)t * FREE, *bo = one->free_hist + (size_t)t * FREE;
        double in[4 * TINY_D]; /* the shift of the concatenation linear_fuse reads */
        for (int s = 0; s < 4; s++)
            for (int j = 0; j < TINY_D; j++) {
                double d = (double)br[s * TINY_D + j] - bo[s * TINY_D + j];
                if (s == 3) /* β through linear_c.3 */
                    for (int k = 0; k < TINY_C3; k++)
                        d += (double)wl[j * TINY_C3 + k] * ((double)br[4 * TINY_D + k] - bo[4 * TINY_D + k]);
                in[(3 - s) * TINY_D + j] = d;
            }
        double w = mom * pow(1 - mom, STEPS - 1 - t);
        for (int c = 0; c < TINY_D; c++) {
            double dc = 0;
            for (int j = 0; j < 4 * TINY_D; j++) dc += (double)wf[c * 4 * TINY_D + j] * in[j];
            shift[c] += w * dc;
        }
    }
}

/* What must hold for any strategy: all n ranks bit-identical (parameters,
 * running statistics, losses, gradients), and close to the one process. */
static void assert_equivalent(run *one, run *ranks, int n, float lr) {
    const fisher_tensor_table *tab = fisher_segformer_params(one->m);
    const fisher_tensor_table *buf = fisher_segformer_buffers(one->m);
    float *p1 = fisher_segformer_param_data(one->m);
    float *p0 = fisher_segformer_param_data(ranks[0].m);
    float *b0 = fisher_segformer_buffer_data(ranks[0].m), *b1 = fisher_segformer_buffer_data(one->m);
    assert_non_null(ranks[0].grad0), assert_non_null(one->grad0);
    for (int r = 1; r < n; r++) {
        assert_memory_equal(p0, fisher_segformer_param_data(ranks[r].m), tab->total * sizeof(float));
        assert_memory_equal(b0, fisher_segformer_buffer_data(ranks[r].m), buf->total * sizeof(float));
        assert_memory_equal(ranks[0].loss, ranks[r].loss, sizeof ranks[0].loss);
        assert_non_null(ranks[r].grad0);
        assert_memory_equal(ranks[0].grad0, ranks[r].grad0, tab->total * sizeof(float));
    }

    float gmax = 0;
    for (size_t i = 0; i < tab->total; i++) gmax = fmaxf(gmax, fabsf(one->grad0[i]));
    assert_close("gradients of step 0", ranks[0].grad0, one->grad0, tab->total, 1e-3, 1e-5 * gmax);
    assert_close("loss per step", ranks[0].loss, one->loss, STEPS, 1e-4, 0);
    float worst = 0; /* over the tensors whose gradient is not zero */
    for (int i = 0; i < tab->count; i++) {
        const fisher_tensor *e = &tab->tensors[i];
        if (free_shift(e->name)) {
            assert_close(e->name, p0 + e->offset, p1 + e->offset, e->numel, 0, 2 * lr * STEPS);
            continue;
        }
        float d = max_abs_diff(p0 + e->offset, p1 + e->offset, e->numel);
        if (d > lr) fail_msg("%s: parameters differ by %g after %d steps (> lr %g)", e->name, (double)d, STEPS, (double)lr);
        worst = fmaxf(worst, d);
    }
    printf("  every other parameter tensor: max |diff| %.2e (atol %.0e = lr)\n", (double)worst, (double)lr);
    for (int i = 0; i < buf->count; i++) {
        const fisher_tensor *e = &buf->tensors[i];
        if (strstr(e->name, "running_mean")) { /* follows the free biases: see running_mean_shift */
            double shift[TINY_D];
            float predicted[TINY_D];
            running_mean_shift(shift, &ranks[0], one);
            for (int c = 0; c < TINY_D; c++) predicted[c] = (float)(b1[e->offset + c] + shift[c]);
            printf("  running mean differs by up to %.2e; after the free biases' share, by:\n",
                   (double)max_abs_diff(b0 + e->offset, b1 + e->offset, TINY_D));
            assert_close("decode BN running_mean (shifted)", b0 + e->offset, predicted, TINY_D, 1e-3, 1e-3);
        }
        else if (strstr(e->name, "running_var"))
            assert_close(e->name, b0 + e->offset, b1 + e->offset, e->numel, 1e-3, 0);
    }
    /* and the run moved them: equal because right, not because idle */
    fisher_segformer *fresh = test_tiny_model(0);
    assert_true(max_abs_diff(p1, fisher_segformer_param_data(fresh), tab->total) > 5 * lr);
    fisher_segformer_free(fresh);
}

static void test_two_ranks_train_as_one_process_full(void **state) {
    (void)state;
    static run one, ranks[2];
    run_both(FISHER_STRATEGY_FULL, FISHER_ESTIMATOR_REFERENCE, 2, &one, ranks);
    assert_equivalent(&one, ranks, 2, 1e-3f);
    size_t total = fisher_segformer_params(one.m)->total;
    for (int s = 0; s < STEPS; s++) { /* every parameter, every step; nothing without a comm */
        assert_int_equal(ranks[0].grad_bytes[s], total * sizeof(float));
        assert_int_equal(ranks[0].grad_calls[s], (total + FUSED - 1) / FUSED);
        assert_int_equal(one.bytes[s], 0);
    }
    printf("  full: %llu bytes all-reduced per step, %llu of them gradients\n",
           (unsigned long long)ranks[0].bytes[1], (unsigned long long)ranks[0].grad_bytes[1]);
    free_runs(&one, ranks, 2);
}

/* The same chunks frozen at the same steps on every rank and in the one
 * process, from decisions whose statistics are bit-identical across ranks. */
static void assert_same_decisions(run *one, run *ranks, int n_ranks) {
    const fisher_chunk *c1;
    size_t n = fisher_method_chunks(one->t.method, &c1), frozen = 0, frozen_late = 0;
    for (int r = 0; r < n_ranks; r++) {
        const fisher_chunk *cr;
        assert_int_equal(fisher_method_chunks(ranks[r].t.method, &cr), n);
        for (size_t c = 0; c < n; c++)
            if (cr[c].frozen_at != c1[c].frozen_at)
                fail_msg("chunk %s froze at step %lld on rank %d, %lld in one process", c1[c].key,
                         (long long)cr[c].frozen_at, r, (long long)c1[c].frozen_at);
    }
    for (size_t c = 0; c < n; c++) frozen += c1[c].frozen_at >= 0, frozen_late += c1[c].frozen_at > 0;
    int decisions = 0;
    for (int s = 0; s < STEPS; s++) {
        assert_int_equal(ranks[0].decided[s], one->decided[s]);
        if (!one->decided[s]) continue;
        decisions++;
        for (int r = 1; r < n_ranks; r++)
            assert_memory_equal(&ranks[0].stats[s], &ranks[r].stats[s], sizeof ranks[0].stats[s]);
        printf("  step %2d: threshold %.6f (one process %.6f), %zu chunks kept, %zu frozen\n", s,
               ranks[0].stats[s].threshold, one->stats[s].threshold, ranks[0].stats[s].kept,
               ranks[0].stats[s].frozen);
        assert_true(fabs(ranks[0].stats[s].threshold - one->stats[s].threshold) <= 1e-3 * one->stats[s].threshold);
    }
    assert_int_equal(decisions, (STEPS - 1) / FREEZE_EVERY); /* steps 5, 10, 15 */
    printf("  %zu of %zu chunks frozen, %zu by interval decisions\n", frozen, n, frozen_late);
    assert_true(frozen_late > 0);
}

static void test_two_ranks_train_as_one_process_fisher(void **state) {
    (void)state;
    static run one, ranks[2];
    run_both(FISHER_STRATEGY_FISHER, FISHER_ESTIMATOR_REFERENCE, 2, &one, ranks);
    assert_equivalent(&one, ranks, 2, 1e-3f);
    assert_same_decisions(&one, ranks, 2);

    /* all-reduce bytes: the gradients of exactly the elements AdamW updates,
     * so they fall as chunks freeze */
    for (int s = 0; s < STEPS; s++) {
        assert_int_equal(ranks[0].grad_bytes[s], ranks[0].live_before[s] * sizeof(float));
        assert_int_equal(ranks[0].grad_calls[s], (ranks[0].live_before[s] + FUSED - 1) / FUSED);
        if (s) assert_true(ranks[0].grad_bytes[s] <= ranks[0].grad_bytes[s - 1]);
        printf("%s%llu", s ? " " : "  gradient bytes per step: ", (unsigned long long)ranks[0].grad_bytes[s]);
    }
    printf("\n");
    assert_true(ranks[0].grad_bytes[FREEZE_EVERY + 1] < ranks[0].grad_bytes[FREEZE_EVERY]);
    assert_true(ranks[0].grad_bytes[STEPS - 1] < ranks[0].grad_bytes[0] / 2);
    free_runs(&one, ranks, 2);
}

/* Four ranks of one sample each against one process with 4 statistics
 * shards: sums over more ranks (in rank order, as the shards) and SyncBN
 * over single-sample shards. */
static void test_four_ranks_train_as_one_process_fisher(void **state) {
    (void)state;
    static run one, ranks[4];
    run_both(FISHER_STRATEGY_FISHER, FISHER_ESTIMATOR_REFERENCE, 4, &one, ranks);
    assert_equivalent(&one, ranks, 4, 1e-3f);
    assert_same_decisions(&one, ranks, 4);
    free_runs(&one, ranks, 4);
}

/* The empirical estimator squares per-element gradients: the ranks must
 * square the all-reduced (global) gradient — had they squared their own
 * partial sums, their Fisher, drift and decisions would differ — so both
 * ranks decide exactly alike and stay bit-identical.
 *
 * Unlike the Kronecker estimators, it is NOT compared with the one process
 * beyond the first gradients: several tensors have an analytically zero
 * gradient (attention key biases: softmax ignores a shift shared by all
 * keys; the biases before the decode head's BatchNorm), so their empirical
 * Fisher is rounding noise squared, and its drift decides whether such a
 * chunk clears the threshold. Measured: key.bias.rowblock0 of block 0.0
 * freezes at step 5 in one process and at step 10 on both ranks, after
 * which the live sets, thresholds and trajectories differ. */
static void test_two_ranks_decide_alike_empirical(void **state) {
    (void)state;
    static run one, ranks[2];
    run_both(FISHER_STRATEGY_FISHER, FISHER_ESTIMATOR_EMPIRICAL, 2, &one, ranks);
    size_t total = fisher_segformer_params(one.m)->total;
    assert_memory_equal(fisher_segformer_param_data(ranks[0].m), fisher_segformer_param_data(ranks[1].m),
                        total * sizeof(float));
    assert_memory_equal(ranks[0].loss, ranks[1].loss, sizeof ranks[0].loss);
    float gmax = 0;
    for (size_t i = 0; i < total; i++) gmax = fmaxf(gmax, fabsf(one.grad0[i]));
    assert_close("gradients of step 0", ranks[0].grad0, one.grad0, total, 1e-3, 1e-5 * gmax);
    const fisher_chunk *c0, *d0;
    size_t n = fisher_method_chunks(ranks[0].t.method, &c0), frozen = 0;
    assert_int_equal(fisher_method_chunks(ranks[1].t.method, &d0), n);
    for (size_t c = 0; c < n; c++) {
        assert_int_equal(c0[c].frozen_at, d0[c].frozen_at);
        frozen += c0[c].frozen_at > 0;
    }
    for (int s = 0; s < STEPS; s++) {
        assert_int_equal(ranks[0].decided[s], ranks[1].decided[s]);
        assert_memory_equal(&ranks[0].stats[s], &ranks[1].stats[s], sizeof ranks[0].stats[s]);
    }
    printf("  both ranks froze the same %zu of %zu chunks at the same steps\n", frozen, n);
    assert_true(frozen > 0);
    free_runs(&one, ranks, 2);
}

/* A communicator of one rank whose sums are the identity: the trainer,
 * model, loss and SyncBN go through every collective path (fused packing
 * included), and the run must be bit for bit the run without one. */
static int identity_f64(fisher_comm *c, double *x, size_t n, fisher_error *err) {
    (void)c, (void)x, (void)n, (void)err;
    return 0;
}
static int identity_f32(fisher_comm *c, float *x, size_t n, fisher_error *err) {
    (void)c, (void)x, (void)n, (void)err;
    return 0;
}

static void test_one_rank_comm_changes_nothing(void **state) {
    (void)state;
    static run plain, one_rank;
    memset(&plain, 0, sizeof plain), memset(&one_rank, 0, sizeof one_rank);
    plain.strategy = one_rank.strategy = FISHER_STRATEGY_FISHER;
    plain.B = one_rank.B = GLOBAL_B;
    plain.shards = 1;
    one_rank.comm = (fisher_comm){0, 1, identity_f64, identity_f32, NULL};
    run_main(&plain);
    run_main(&one_rank);
    if (plain.rc || one_rank.rc) fail_msg("%s%s", plain.err.msg, one_rank.err.msg);
    size_t total = fisher_segformer_params(plain.m)->total;
    assert_memory_equal(fisher_segformer_param_data(plain.m), fisher_segformer_param_data(one_rank.m),
                        total * sizeof(float));
    assert_memory_equal(fisher_segformer_buffer_data(plain.m), fisher_segformer_buffer_data(one_rank.m),
                        fisher_segformer_buffers(plain.m)->total * sizeof(float));
    assert_memory_equal(plain.loss, one_rank.loss, sizeof plain.loss);
    const fisher_chunk *a, *b;
    size_t n = fisher_method_chunks(plain.t.method, &a);
    assert_int_equal(fisher_method_chunks(one_rank.t.method, &b), n);
    for (size_t c = 0; c < n; c++) assert_int_equal(a[c].frozen_at, b[c].frozen_at);
    assert_true(one_rank.bytes[0] > one_rank.grad_bytes[0]); /* it did go through the collectives */
    assert_true(one_rank.grad_calls[0] > 1);
    free_run(&plain), free_run(&one_rank);
}

/* Ranks that start from different models refuse to train, all of them,
 * saying why; ranks that drift apart later are caught by check_ranks. */
static void *alike_main(void *arg) {
    run *a = arg;
    fisher_set_threads(1);
    a->m = test_tiny_model(0);
    fisher_segformer_init_random(a->m, a->seed);
    a->rc = fisher_trainer_init(&a->t, a->m, 1, 32, 32, fisher_adamw_defaults(), 0.65f,
                                FISHER_STRATEGY_FULL, NULL, &a->err) ||
            fisher_trainer_set_comm(&a->t, &a->comm, &a->err);
    if (a->rc) return NULL;
    /* alike at the start; then one parameter of rank 1 drifts by one ulp */
    if (a->comm.rank == 1) {
        float *p = fisher_segformer_param_data(a->m);
        p[12345] = nextafterf(p[12345], INFINITY);
    }
    a->rc = fisher_trainer_check_ranks(&a->t, &a->err) ? 2 : 0;
    return NULL;
}

static void test_ranks_must_start_alike(void **state) {
    (void)state;
    for (int same = 0; same < 2; same++) {
        hub h;
        hub_init(&h, 2);
        static run ranks[2];
        memset(ranks, 0, sizeof ranks);
        for (int r = 0; r < 2; r++) ranks[r].comm = hub_comm(&h, r), ranks[r].seed = same ? 4 : (uint64_t)r;
        run_ranks(2, alike_main, ranks, sizeof ranks[0]);
        hub_destroy(&h);
        for (int r = 0; r < 2; r++) {
            assert_int_equal(ranks[r].rc, same ? 2 : 1); /* started alike, then caught drifting */
            assert_non_null(strstr(ranks[r].err.msg, "at step 0: the ranks are not alike"));
            free_run(&ranks[r]);
        }
    }
}

/* Without a communicator and with one shard, the functions behave exactly
 * as before (the golden files of the other tests check that); with shards
 * the norm statistics are the mean of the shards' own. */
static void test_stat_shards_average_norm_statistics(void **state) {
    (void)state;
    enum { B = 4, N = 6, C = 5 };
    float inp[B * N * C], dout[B * N * C];
    fisher_rng rng;
    fisher_rng_seed(&rng, 5);
    for (int i = 0; i < B * N * C; i++) inp[i] = fisher_rng_normal(&rng), dout[i] = fisher_rng_normal(&rng);
    float H[2], S[C], h0[2], s0[C], h1[2], s1[C];
    fisher_stats_layernorm_shards(H, S, inp, dout, B, N, C, 2);
    fisher_stats_layernorm(h0, s0, inp, dout, B / 2, N, C);
    fisher_stats_layernorm(h1, s1, inp + B / 2 * N * C, dout + B / 2 * N * C, B / 2, N, C);
    for (int i = 0; i < 2; i++) assert_true(H[i] == (h0[i] + h1[i]) / 2.0f);
    for (int c = 0; c < C; c++) assert_true(S[c] == (s0[c] + s1[c]) / 2.0f);
    float Hw[2], Sw[C];
    fisher_stats_layernorm(Hw, Sw, inp, dout, B, N, C);
    assert_true(fabsf(Hw[0] - H[0]) > 1e-3f * H[0]); /* not the whole batch's: why shards exist */
    fisher_stats_batchnorm_shards(H, S, inp, dout, B, N, C, 1);
    fisher_stats_batchnorm(Hw, Sw, inp, dout, B, N, C);
    assert_memory_equal(H, Hw, sizeof H);
    assert_memory_equal(S, Sw, sizeof S);
    fisher_error err;
    fisher_segformer *m = test_tiny_model(0);
    assert_int_equal(fisher_segformer_set_stat_shards(m, 0, &err), -1);
    assert_int_equal(fisher_segformer_set_stat_shards(m, 3, &err), 0);
    assert_int_equal(fisher_segformer_prepare(m, 2, 32, 32, &err), 0);
    static float images[2 * 32 * 32 * 3], dl[2 * 32 * 32];
    assert_non_null(fisher_segformer_forward(m, images, 1));
    fisher_segformer_collect_stats(m, 1);
    assert_int_equal(fisher_segformer_backward(m, dl, &err), -1);
    assert_non_null(strstr(err.msg, "does not split into 3"));
    fisher_segformer_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_syncbn_two_ranks_equal_one_batch),
        cmocka_unit_test(test_loss_over_ranks_equals_one_batch),
        cmocka_unit_test(test_stat_shards_average_norm_statistics),
        cmocka_unit_test(test_comm_failure_fails_the_step),
        cmocka_unit_test(test_ranks_must_start_alike),
        cmocka_unit_test(test_one_rank_comm_changes_nothing),
        cmocka_unit_test(test_two_ranks_train_as_one_process_full),
        cmocka_unit_test(test_two_ranks_train_as_one_process_fisher),
        cmocka_unit_test(test_four_ranks_train_as_one_process_fisher),
        cmocka_unit_test(test_two_ranks_decide_alike_empirical),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
