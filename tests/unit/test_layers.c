/*
 * test_layers.c — every layer's forward and backward against PyTorch
 * (tests/parity/fixtures/layers.safetensors, made by make_fixtures.py).
 *
 * Tolerance: rtol 1e-4 with atol 1e-5. Inputs and weights are O(1), so
 * float32 results carry ~1e-7 relative error per operation; sums of up to a
 * few hundred terms (the largest reduction here is the 7×7×3 patch conv's
 * dweight over 60 positions) stay well inside 1e-4, while any indexing or
 * formula error shows up as O(1). atol covers elements that are nearly zero
 * (cancellations), where relative error is meaningless.
 */
#include "testutil.h"

#include <omp.h>
#include <stddef.h>
#include <stdint.h>

#include "layers.h"
#include "loss.h"
#include "optim.h"
#include "rng.h"

#define RTOL 1e-4
#define ATOL 1e-5

static fisher_safetensors *fx;

static int setup(void **state) {
    (void)state;
    fx = fixture_open("layers.safetensors");
    return fx ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    fisher_safetensors_close(fx);
    return 0;
}

/* Fixture tensor "<case>.<what>", checked to hold n elements. */
static float *get(const char *cas, const char *what, size_t n) {
    char name[128];
    snprintf(name, sizeof name, "%s.%s", cas, what);
    return fixture_f32(fx, name, n);
}

static void check(const char *cas, const char *what, const float *got, size_t n) {
    char name[128];
    snprintf(name, sizeof name, "%s.%s", cas, what);
    float *want = get(cas, what, n);
    assert_close(name, got, want, n, RTOL, ATOL);
    free(want);
}

static float *zeros(size_t n) { return calloc(n ? n : 1, sizeof(float)); }

static void test_linear(void **state) {
    (void)state;
    int R = 10, IC = 12, OC = 7;
    float *inp = get("linear", "inp", (size_t)R * IC), *w = get("linear", "weight", (size_t)OC * IC);
    float *b = get("linear", "bias", OC), *dout = get("linear", "dout", (size_t)R * OC);
    float *out = zeros((size_t)R * OC), *dinp = zeros((size_t)R * IC);
    float *dw = zeros((size_t)OC * IC), *db = zeros(OC);
    fisher_linear_forward(out, inp, w, b, R, IC, OC);
    check("linear", "out", out, (size_t)R * OC);
    fisher_linear_backward(dinp, dw, db, dout, inp, w, NULL, R, IC, OC);
    check("linear", "dinp", dinp, (size_t)R * IC);
    check("linear", "dweight", dw, (size_t)OC * IC);
    check("linear", "dbias", db, OC);
    /* backward accumulates: a second call doubles every gradient */
    fisher_linear_backward(dinp, dw, db, dout, inp, w, NULL, R, IC, OC);
    float *want = get("linear", "dbias", OC);
    for (int i = 0; i < OC; i++) want[i] *= 2;
    assert_close("linear.dbias accumulated twice", db, want, OC, RTOL, ATOL);
    free(want), free(inp), free(w), free(b), free(dout), free(out), free(dinp), free(dw), free(db);
}

typedef struct {
    const char *name;
    int B, H, W, C, OC, K, stride, pad, groups, bias;
} conv_case;

static void run_conv(const conv_case *cc) {
    fisher_conv2d_dims d;
    assert_int_equal(fisher_conv2d_dims_init(&d, cc->B, cc->H, cc->W, cc->C, cc->OC, cc->K, cc->K,
                                             cc->stride, cc->pad, cc->groups), 0);
    size_t n_in = (size_t)d.B * d.H * d.W * d.C, n_out = (size_t)d.B * d.OH * d.OW * d.OC;
    size_t n_w = (size_t)d.OC * (d.C / d.groups) * d.KH * d.KW;
    float *inp = get(cc->name, "inp", n_in), *w = get(cc->name, "weight", n_w);
    float *b = cc->bias ? get(cc->name, "bias", d.OC) : NULL;
    float *dout = get(cc->name, "dout", n_out);
    float *out = zeros(n_out), *dinp = zeros(n_in), *dw = zeros(n_w), *db = zeros(d.OC);
    float *scratch = zeros(fisher_conv2d_scratch_floats(&d));
    fisher_conv2d_forward(out, scratch, inp, w, b, &d);
    check(cc->name, "out", out, n_out);
    fisher_conv2d_backward(dinp, dw, cc->bias ? db : NULL, scratch, dout, inp, w, NULL, &d);
    check(cc->name, "dinp", dinp, n_in);
    check(cc->name, "dweight", dw, n_w);
    if (cc->bias) check(cc->name, "dbias", db, d.OC);
    free(inp), free(w), free(b), free(dout), free(out), free(dinp), free(dw), free(db), free(scratch);
}

static void test_conv_patch(void **s) { (void)s; run_conv(&(conv_case){"conv_patch", 2, 19, 23, 3, 8, 7, 4, 3, 1, 1}); }
static void test_conv_s2(void **s) { (void)s; run_conv(&(conv_case){"conv_s2", 2, 9, 12, 8, 16, 3, 2, 1, 1, 1}); }
static void test_conv_grouped(void **s) { (void)s; run_conv(&(conv_case){"conv_grouped", 2, 6, 7, 8, 12, 3, 1, 1, 4, 0}); }
static void test_conv_depthwise(void **s) { (void)s; run_conv(&(conv_case){"conv_dw", 2, 7, 5, 16, 16, 3, 1, 1, 16, 1}); }
static void test_conv_sr(void **s) { (void)s; run_conv(&(conv_case){"conv_sr", 2, 8, 12, 8, 8, 4, 4, 0, 1, 1}); }
static void test_conv_1x1(void **s) { (void)s; run_conv(&(conv_case){"conv_1x1", 2, 5, 6, 24, 10, 1, 1, 0, 1, 0}); }

static void test_conv_dims_reject(void **s) {
    (void)s;
    fisher_conv2d_dims d;
    assert_int_equal(fisher_conv2d_dims_init(&d, 1, 4, 4, 6, 8, 3, 3, 1, 1, 4), -1); /* 6 % 4 */
    assert_int_equal(fisher_conv2d_dims_init(&d, 1, 2, 2, 4, 4, 7, 7, 4, 0, 1), -1); /* empty */
    assert_int_equal(fisher_conv2d_dims_init(&d, 1, 7, 7, 4, 4, 7, 7, 4, 3, 1), 0);
    assert_int_equal(d.OH, 2);
}

/* ---- Live rows (layers.h): weight gradients of some rows only ---- */

static uint64_t lcg = 2024;

/* n values uniform in [-0.5, 0.5) from one fixed stream. */
static float *randoms(size_t n) {
    float *x = malloc((n ? n : 1) * sizeof *x);
    for (size_t i = 0; i < n; i++)
        lcg = lcg * 6364136223846793005u + 1442695040888963407u,
        x[i] = (float)(lcg >> 40) / (1 << 24) - 0.5f;
    return x;
}

/* Row masks over 12 rows: runs at both edges, in the middle and across the
 * edges of 4 groups of 3 (the grouped conv); none; all. */
static const char *const row_patterns[] = {"011100111001", "100000000011", "000000000000",
                                           "111111111111"};
enum { MASK_ROWS = 12 };

static void mask_of(uint8_t *live, const char *pattern) {
    for (int o = 0; o < MASK_ROWS; o++) live[o] = pattern[o] == '1';
}

/* A weight gradient of MASK_ROWS rows, len floats each, computed with the
 * row mask live onto pre (masked) against the full one computed onto zeros
 * (full): live rows must hold pre + full, the others exactly pre, bit for
 * bit. Returns the frozen rows seen. */
static int check_live_rows(const char *name, const float *masked, const float *pre,
                           const float *full, const uint8_t *live, int len) {
    int frozen = 0;
    size_t n = (size_t)MASK_ROWS * len;
    float *want = malloc(n * sizeof *want);
    for (int o = 0; o < MASK_ROWS; o++) {
        const float *got = masked + (size_t)o * len, *p = pre + (size_t)o * len;
        for (int j = 0; j < len; j++)
            want[(size_t)o * len + j] = p[j] + (live[o] ? full[(size_t)o * len + j] : 0);
        if (live[o]) continue;
        frozen++;
        if (memcmp(got, p, (size_t)len * sizeof *got) != 0)
            fail_msg("%s: frozen row %d was written", name, o);
    }
    assert_close(name, masked, want, n, 1e-5, 1e-6);
    free(want);
    return frozen;
}

static void test_linear_live_rows(void **s) {
    (void)s;
    int R = 37, IC = 9, OC = MASK_ROWS, ldw = 3 * IC; /* a middle column block of a wider weight */
    float *inp = randoms((size_t)R * IC), *dout = randoms((size_t)R * OC);
    float *w = randoms((size_t)OC * ldw), *pre = randoms((size_t)OC * ldw);
    for (size_t k = 0; k < sizeof row_patterns / sizeof *row_patterns; k++) {
        uint8_t live[MASK_ROWS];
        mask_of(live, row_patterns[k]);
        char name[96];
        /* the plain linear: dweight and dbias, rows IC apart */
        float *dw = malloc((size_t)OC * IC * sizeof *dw), *dw_full = zeros((size_t)OC * IC);
        memcpy(dw, pre, (size_t)OC * IC * sizeof *dw);
        float *dinp = zeros((size_t)R * IC), *dinp_full = zeros((size_t)R * IC);
        float *db = zeros(OC), *db_full = zeros(OC);
        fisher_linear_backward(dinp, dw, db, dout, inp, w, live, R, IC, OC);
        fisher_linear_backward(dinp_full, dw_full, db_full, dout, inp, w, NULL, R, IC, OC);
        snprintf(name, sizeof name, "linear %s dweight", row_patterns[k]);
        check_live_rows(name, dw, pre, dw_full, live, IC);
        assert_memory_equal(dinp, dinp_full, (size_t)R * IC * sizeof *dinp);
        assert_memory_equal(db, db_full, OC * sizeof *db); /* biases are computed whole */
        /* the slice: columns [IC, 2·IC) of an (OC, 3·IC) weight */
        float *ws = malloc((size_t)OC * ldw * sizeof *ws), *ws_full = zeros((size_t)OC * ldw);
        memcpy(ws, pre, (size_t)OC * ldw * sizeof *ws);
        fisher_linear_slice_backward(NULL, ws + IC, dout, inp, w + IC, live, ldw, R, IC, OC);
        fisher_linear_slice_backward(NULL, ws_full + IC, dout, inp, w + IC, NULL, ldw, R, IC, OC);
        snprintf(name, sizeof name, "linear slice %s dweight", row_patterns[k]);
        check_live_rows(name, ws, pre, ws_full, live, ldw); /* other columns: pre + 0 */
        free(dw), free(dw_full), free(dinp), free(dinp_full), free(db), free(db_full);
        free(ws), free(ws_full);
    }
    free(inp), free(dout), free(w), free(pre);
}

static void test_conv_live_rows(void **s) {
    (void)s;
    static const conv_case cases[] = { /* OC = 12 throughout */
        {"patch 7x7 s4 p3", 2, 19, 23, 3, MASK_ROWS, 7, 4, 3, 1, 1},
        {"dense 3x3 s2 p1", 2, 9, 12, 5, MASK_ROWS, 3, 2, 1, 1, 1},
        {"grouped G=4 3x3", 2, 6, 7, 8, MASK_ROWS, 3, 1, 1, 4, 0},
        {"depthwise 3x3", 2, 7, 5, MASK_ROWS, MASK_ROWS, 3, 1, 1, MASK_ROWS, 1},
        {"threaded depthwise", 4, 32, 31, MASK_ROWS, MASK_ROWS, 3, 1, 1, MASK_ROWS, 1},
        {"pointwise 1x1", 2, 5, 6, 7, MASK_ROWS, 1, 1, 0, 1, 0},
        {"sr 4x4 s4", 2, 8, 12, 6, MASK_ROWS, 4, 4, 0, 1, 1},
    };
    int frozen_rows = 0;
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        const conv_case *cc = &cases[c];
        fisher_conv2d_dims d;
        assert_int_equal(fisher_conv2d_dims_init(&d, cc->B, cc->H, cc->W, cc->C, cc->OC, cc->K,
                                                 cc->K, cc->stride, cc->pad, cc->groups), 0);
        int len = (d.C / d.groups) * d.KH * d.KW;
        size_t n_in = (size_t)d.B * d.H * d.W * d.C, n_out = (size_t)d.B * d.OH * d.OW * d.OC;
        size_t n_w = (size_t)d.OC * len;
        float *inp = randoms(n_in), *dout = randoms(n_out), *w = randoms(n_w), *pre = randoms(n_w);
        float *scratch = zeros(fisher_conv2d_scratch_floats(&d));
        for (size_t k = 0; k < sizeof row_patterns / sizeof *row_patterns; k++) {
            uint8_t live[MASK_ROWS];
            mask_of(live, row_patterns[k]);
            float *dw = malloc(n_w * sizeof *dw), *dw_full = zeros(n_w);
            memcpy(dw, pre, n_w * sizeof *dw);
            float *dinp = zeros(n_in), *dinp_full = zeros(n_in);
            float *db = zeros(d.OC), *db_full = zeros(d.OC);
            fisher_conv2d_backward(dinp, dw, cc->bias ? db : NULL, scratch, dout, inp, w, live, &d);
            fisher_conv2d_backward(dinp_full, dw_full, cc->bias ? db_full : NULL, scratch, dout, inp,
                                   w, NULL, &d);
            char name[96];
            snprintf(name, sizeof name, "conv %s %s dweight", cc->name, row_patterns[k]);
            frozen_rows += check_live_rows(name, dw, pre, dw_full, live, len);
            assert_memory_equal(dinp, dinp_full, n_in * sizeof *dinp);
            assert_memory_equal(db, db_full, d.OC * sizeof *db);
            free(dw), free(dw_full), free(dinp), free(dinp_full), free(db), free(db_full);
        }
        free(inp), free(dout), free(w), free(pre), free(scratch);
    }
    printf("  %d frozen conv weight rows left untouched\n", frozen_rows);
}

/* fisher_stats_conv against the definition, written out as the direct loop
 * over every (batch, group, position) patch, on shapes that reach the
 * corners: odd sizes, strides past the kernel (unread rows and columns),
 * padding past the kernel (outputs that read only padding), groups, and
 * sizes large enough for the threaded path. The direct loop sums in double,
 * ours squares in float blocks (square_sums), so they agree within 1e-6. */
static void test_stats_conv_direct(void **s) {
    (void)s;
    static const conv_case cases[] = {
        {"patch 7x7 s4 p3", 2, 13, 11, 3, 5, 7, 4, 3, 1, 1},
        {"dense 3x3 s2 p1", 3, 9, 10, 6, 4, 3, 2, 1, 1, 0},
        {"dense 3x3 s1 p1", 2, 7, 9, 5, 3, 3, 1, 1, 1, 1},
        {"dense 7x7 s1 p3", 1, 6, 8, 2, 2, 7, 1, 3, 1, 0},
        {"depthwise 3x3 s1 p1", 2, 9, 7, 12, 12, 3, 1, 1, 12, 1},
        {"depthwise 3x3 s2 p1", 1, 5, 6, 33, 33, 3, 2, 1, 33, 0},
        {"grouped G=2 3x3 s2 p3", 2, 11, 8, 8, 6, 3, 2, 3, 2, 1},
        {"grouped G=3 5x5 s1 p2", 3, 6, 7, 9, 6, 5, 1, 2, 3, 0},
        {"grouped G=4 7x7 s1 p3", 1, 8, 9, 4, 4, 7, 1, 3, 4, 1},
        {"1x1", 2, 6, 5, 24, 10, 1, 1, 0, 1, 0},
        {"1x1 s2 (skipped rows)", 2, 7, 9, 4, 3, 1, 2, 0, 1, 1},
        {"1x1 s4 p1", 1, 10, 11, 3, 2, 1, 4, 1, 1, 1},
        {"1x1 p3 (padding only)", 2, 3, 4, 2, 2, 1, 1, 3, 1, 1},
        {"1x1 s4 p1 on one row", 1, 1, 5, 2, 2, 1, 4, 1, 1, 1},
        {"sr 4x4 s4", 2, 8, 12, 8, 8, 4, 4, 0, 1, 1},
        {"threaded depthwise", 4, 32, 31, 16, 16, 3, 1, 1, 16, 1},
        /* stride 1 by rows and edge columns: wider taps, no padding with
         * the edges touching, padding past the taps */
        {"G=3 5x5 s1 p2, by rows", 2, 9, 10, 6, 6, 5, 1, 2, 3, 1},
        {"depthwise 3x3 s1 p0 W=4", 2, 5, 4, 4, 4, 3, 1, 0, 4, 1},
        {"dense 3x3 s1 p2", 2, 6, 7, 3, 5, 3, 1, 2, 1, 0},
        {"threaded dense 3x3 s2", 2, 40, 37, 24, 8, 3, 2, 1, 1, 1},
        {"threaded G=2 7x7 s4 p3", 3, 45, 50, 6, 4, 7, 4, 3, 2, 0},
    };
    uint64_t rng = 12345;
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        const conv_case *cc = &cases[c];
        fisher_conv2d_dims d;
        assert_int_equal(fisher_conv2d_dims_init(&d, cc->B, cc->H, cc->W, cc->C, cc->OC, cc->K,
                                                 cc->K, cc->stride, cc->pad, cc->groups), 0);
        int G = d.groups, cg = d.C / G, K = cg * d.KH * d.KW, P = d.OH * d.OW;
        size_t n_in = (size_t)d.B * d.H * d.W * d.C, n_out = (size_t)d.B * P * d.OC;
        float *inp = malloc(n_in * sizeof *inp), *dout = malloc(n_out * sizeof *dout);
        for (size_t i = 0; i < n_in; i++) /* O(1), with a scale varying by channel */
            rng = rng * 6364136223846793005u + 1442695040888963407u,
            inp[i] = ((float)(rng >> 40) / (1 << 24) - 0.5f) * (1 + (float)(i % d.C) / d.C);
        for (size_t i = 0; i < n_out; i++)
            rng = rng * 6364136223846793005u + 1442695040888963407u,
            dout[i] = (float)(rng >> 40) / (1 << 24) - 0.5f;
        double *h = calloc(K, sizeof *h), *sq = calloc(d.OC, sizeof *sq);
        for (int b = 0; b < d.B; b++)
            for (int oh = 0; oh < d.OH; oh++)
                for (int ow = 0; ow < d.OW; ow++)
                    for (int ki = 0; ki < d.KH; ki++)
                        for (int kj = 0; kj < d.KW; kj++) {
                            int ih = oh * d.stride - d.pad + ki, iw = ow * d.stride - d.pad + kj;
                            if (ih < 0 || ih >= d.H || iw < 0 || iw >= d.W) continue;
                            const float *x = inp + (((size_t)b * d.H + ih) * d.W + iw) * d.C;
                            for (int g = 0; g < G; g++)
                                for (int ci = 0; ci < cg; ci++)
                                    h[(ci * d.KH + ki) * d.KW + kj] +=
                                        (double)x[g * cg + ci] * x[g * cg + ci];
                        }
        for (size_t r = 0; r < (size_t)d.B * P; r++)
            for (int o = 0; o < d.OC; o++) sq[o] += (double)dout[r * d.OC + o] * dout[r * d.OC + o];
        float *wantH = malloc((K + 1) * sizeof *wantH), *wantS = malloc(d.OC * sizeof *wantS);
        double div = cc->bias ? (double)d.B * P * K : d.B;
        for (int j = 0; j < K; j++) wantH[j] = (float)(h[j] / div);
        if (cc->bias) wantH[K] = (float)((double)G / K);
        for (int o = 0; o < d.OC; o++) wantS[o] = (float)(sq[o] / ((double)d.B * P));

        float *H = malloc((K + 1) * sizeof *H), *S = malloc(d.OC * sizeof *S);
        float *H2 = malloc((K + 1) * sizeof *H2), *S2 = malloc(d.OC * sizeof *S2);
        char name[96];
        snprintf(name, sizeof name, "stats_conv %s H", cc->name);
        fisher_stats_conv(H, S, inp, dout, &d, cc->bias);
        assert_close(name, H, wantH, K + cc->bias, 1e-6, 0);
        snprintf(name, sizeof name, "stats_conv %s S", cc->name);
        assert_close(name, S, wantS, d.OC, 1e-6, 0);
        /* and the same bits on a second run */
        fisher_stats_conv(H2, S2, inp, dout, &d, cc->bias);
        assert_memory_equal(H, H2, (K + cc->bias) * sizeof *H);
        assert_memory_equal(S, S2, d.OC * sizeof *S);
        free(inp), free(dout), free(h), free(sq), free(wantH), free(wantS);
        free(H), free(S), free(H2), free(S2);
    }
}

static void test_layernorm(void **s) {
    (void)s;
    int R = 14, C = 16;
    size_t n = (size_t)R * C;
    float *inp = get("layernorm", "inp", n), *w = get("layernorm", "weight", C);
    float *b = get("layernorm", "bias", C), *dout = get("layernorm", "dout", n);
    float *out = zeros(n), *mean = zeros(R), *rstd = zeros(R), *dinp = zeros(n);
    float *dw = zeros(C), *db = zeros(C);
    fisher_layernorm_forward(out, mean, rstd, inp, w, b, R, C, 1e-5f);
    check("layernorm", "out", out, n);
    fisher_layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, R, C);
    check("layernorm", "dinp", dinp, n);
    check("layernorm", "dweight", dw, C);
    check("layernorm", "dbias", db, C);
    free(inp), free(w), free(b), free(dout), free(out), free(mean), free(rstd), free(dinp), free(dw), free(db);
}

static void test_batchnorm(void **s) {
    (void)s;
    int R = 2 * 5 * 6, C = 12;
    size_t n = (size_t)R * C;
    float *inp = get("batchnorm", "inp", n), *w = get("batchnorm", "weight", C);
    float *b = get("batchnorm", "bias", C), *dout = get("batchnorm", "dout", n);
    float *rm = get("batchnorm", "running_mean", C), *rv = get("batchnorm", "running_var", C);
    float *rm0 = get("batchnorm", "running_mean", C), *rv0 = get("batchnorm", "running_var", C);
    float *out = zeros(n), *mean = zeros(C), *rstd = zeros(C), *dinp = zeros(n);
    float *dw = zeros(C), *db = zeros(C);
    fisher_batchnorm_forward_train(out, mean, rstd, rm, rv, inp, w, b, R, C, 0.1f, 1e-5f);
    check("batchnorm", "out", out, n);
    check("batchnorm", "running_mean_after", rm, C);
    check("batchnorm", "running_var_after", rv, C);
    fisher_batchnorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, R, C);
    check("batchnorm", "dinp", dinp, n);
    check("batchnorm", "dweight", dw, C);
    check("batchnorm", "dbias", db, C);
    fisher_batchnorm_forward_eval(out, inp, w, b, rm0, rv0, R, C, 1e-5f);
    check("batchnorm", "out_eval", out, n);
    free(inp), free(w), free(b), free(dout), free(rm), free(rv), free(rm0), free(rv0);
    free(out), free(mean), free(rstd), free(dinp), free(dw), free(db);
}

/* n floats of N(mean, 1) from rng. */
static float *normals(fisher_rng *rng, size_t n, float mean) {
    float *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++) v[i] = mean + fisher_rng_normal(rng);
    return v;
}

/* The backwards that leave Fisher statistics from their own passes
 * (fisher_*_backward_stats) against the plain backward plus the separate
 * statistic: gradients bit for bit, statistics bit for bit where the sums
 * are the same sums (Linear, BatchNorm, LayerNorm's S) and to float
 * rounding where LayerNorm's H reads the forward's float means. At a size
 * that runs serially and one that splits rows over two threads. */
static void test_backward_stats_fused(void **s) {
    (void)s;
    const struct { int B, N, C; } sizes[] = {{2, 9, 12}, {4, 300, 40}};
    int threads = omp_get_max_threads();
    omp_set_num_threads(2);
    fisher_rng rng;
    fisher_rng_seed(&rng, 7);
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        int B = sizes[k].B, N = sizes[k].N, C = sizes[k].C, R = B * N, OC = C + 5;
        size_t n = (size_t)R * C;
        float *inp = normals(&rng, n, 0.3f), *dout = normals(&rng, n, 0.1f);
        float *w = normals(&rng, C, 1.0f), *b = normals(&rng, C, 0.0f);
        float *out = zeros(n), *mean = zeros(R), *rstd = zeros(R);
        float *dinp[2] = {zeros(n), zeros(n)}, *dw[2] = {zeros(C), zeros(C)}, *db[2] = {zeros(C), zeros(C)};
        float H[2][2], S[2][OC], Hl[2][C + 1];

        /* LayerNorm, the whole batch and two shards */
        fisher_layernorm_forward(out, mean, rstd, inp, w, b, R, C, 1e-5f);
        fisher_layernorm_backward(dinp[0], dw[0], db[0], dout, inp, w, mean, rstd, R, C);
        fisher_stats_layernorm(H[0], S[0], inp, dout, B, N, C);
        fisher_layernorm_backward_stats(dinp[1], dw[1], db[1], H[1], S[1], dout, inp, w, mean, rstd, B,
                                        N, C, 1);
        assert_memory_equal(dinp[0], dinp[1], n * sizeof(float));
        assert_memory_equal(dw[0], dw[1], C * sizeof(float));
        assert_memory_equal(db[0], db[1], C * sizeof(float));
        assert_memory_equal(S[0], S[1], C * sizeof(float));
        assert_close("layernorm H", H[1], H[0], 2, 1e-5, 0);
        fisher_stats_layernorm_shards(H[0], S[0], inp, dout, B, N, C, 2);
        fisher_layernorm_backward_stats(NULL, NULL, NULL, H[1], S[1], dout, inp, w, mean, rstd, B, N,
                                        C, 2);
        assert_memory_equal(S[0], S[1], C * sizeof(float));
        assert_close("layernorm H, 2 shards", H[1], H[0], 2, 1e-5, 0);

        /* BatchNorm over (B, N, C) */
        float *bmean = zeros(C), *brstd = zeros(C), *rm = zeros(C), *rv = zeros(C);
        float *bout = zeros(n), *bmean2 = zeros(C), *brstd2 = zeros(C);
        fisher_batchnorm_forward_train(out, bmean, brstd, rm, rv, inp, w, b, R, C, 0.1f, 1e-5f);
        /* H from the forward's sums: the same forward, its own Σx */
        double bsums[C];
        memset(rm, 0, C * sizeof(float)), memset(rv, 0, C * sizeof(float));
        assert_int_equal(fisher_batchnorm_forward_train_sync(bout, bmean2, brstd2, rm, rv, inp, w, b, R, C,
                                                             0.1f, 1e-5f, bsums, NULL, NULL),
                         0);
        assert_memory_equal(out, bout, n * sizeof(float));
        assert_memory_equal(bmean, bmean2, C * sizeof(float));
        fisher_stats_batchnorm_h(H[1], bsums, B, N, C);
        for (int i = 0; i < 2; i++) memset(dinp[i], 0, n * sizeof(float));
        fisher_batchnorm_backward(dinp[0], dw[0], db[0], dout, inp, w, bmean, brstd, R, C);
        fisher_stats_batchnorm(H[0], S[0], inp, dout, B, N, C);
        assert_close("batchnorm H from the forward's sums", H[1], H[0], 2, 1e-6, 0);
        double dinp_sq[C];
        memset(dinp_sq, 0, sizeof dinp_sq);
        assert_int_equal(fisher_batchnorm_backward_sync_stats(dinp[1], dw[1], db[1], S[1], dinp_sq, dout,
                                                              inp, w, bmean, brstd, B, N, C, NULL, NULL),
                         0);
        assert_memory_equal(dinp[0], dinp[1], n * sizeof(float));
        assert_memory_equal(dw[0], dw[1], C * sizeof(float));
        assert_memory_equal(db[0], db[1], C * sizeof(float));
        assert_memory_equal(S[0], S[1], C * sizeof(float));
        free(bout), free(bmean2), free(brstd2);
        /* the squares of dinp: the next layer's S as its own pass makes it */
        float S_of_dinp[C];
        for (int c = 0; c < C; c++) S_of_dinp[c] = (float)(dinp_sq[c] / R);
        fisher_stats_linear(NULL, S[0], NULL, dinp[1], R, 1, C, 0);
        assert_memory_equal(S[0], S_of_dinp, C * sizeof(float));

        /* Linear C -> OC, with and without its bias gradient */
        float *lw = normals(&rng, (size_t)OC * C, 0.0f), *ldout = normals(&rng, (size_t)R * OC, 0.0f);
        for (int with_bias = 0; with_bias < 2; with_bias++) {
            float *lgw[2] = {zeros((size_t)OC * C), zeros((size_t)OC * C)};
            float *lgb[2] = {zeros(OC), zeros(OC)};
            for (int i = 0; i < 2; i++) memset(dinp[i], 0, n * sizeof(float));
            fisher_linear_backward(dinp[0], lgw[0], with_bias ? lgb[0] : NULL, ldout, inp, lw, NULL, R,
                                   C, OC);
            fisher_stats_linear(Hl[0], S[0], inp, ldout, R, C, OC, 1);
            fisher_linear_backward_stats(dinp[1], lgw[1], with_bias ? lgb[1] : NULL, Hl[1], S[1], ldout,
                                         inp, lw, NULL, R, C, OC);
            assert_memory_equal(dinp[0], dinp[1], n * sizeof(float));
            assert_memory_equal(lgw[0], lgw[1], (size_t)OC * C * sizeof(float));
            assert_memory_equal(lgb[0], lgb[1], OC * sizeof(float));
            assert_memory_equal(Hl[0], Hl[1], sizeof Hl[0]);
            assert_memory_equal(S[0], S[1], OC * sizeof(float));
            for (int i = 0; i < 2; i++) free(lgw[i]), free(lgb[i]);
        }
        free(lw), free(ldout), free(bmean), free(brstd), free(rm), free(rv);
        free(inp), free(dout), free(w), free(b), free(out), free(mean), free(rstd);
        for (int i = 0; i < 2; i++) free(dinp[i]), free(dw[i]), free(db[i]);
    }
    omp_set_num_threads(threads);
}

/* fisher_conv2d_backward_stats against fisher_conv2d_backward plus
 * fisher_stats_conv: everything bit for bit, for a depthwise, a strided
 * and a pointwise conv, at sizes that split over two threads. */
static void test_conv_backward_stats_fused(void **s) {
    (void)s;
    /* B, H, W, C, OC, K, stride, pad, groups */
    const int cases[][9] = {{4, 20, 20, 40, 40, 3, 1, 1, 40}, {4, 21, 19, 8, 16, 3, 2, 1, 1},
                            {4, 20, 20, 24, 10, 1, 1, 0, 1}};
    int threads = omp_get_max_threads();
    omp_set_num_threads(2);
    fisher_rng rng;
    fisher_rng_seed(&rng, 11);
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        const int *c = cases[k];
        fisher_conv2d_dims d;
        assert_int_equal(fisher_conv2d_dims_init(&d, c[0], c[1], c[2], c[3], c[4], c[5], c[5], c[6],
                                                 c[7], c[8]),
                         0);
        size_t n_in = (size_t)d.B * d.H * d.W * d.C, n_out = (size_t)d.B * d.OH * d.OW * d.OC;
        size_t n_w = (size_t)d.OC * (d.C / d.groups) * d.KH * d.KW, hl = n_w / d.OC + 1;
        float *inp = normals(&rng, n_in, 0.2f), *dout = normals(&rng, n_out, 0.0f);
        float *w = normals(&rng, n_w, 0.0f), *scratch = zeros(fisher_conv2d_scratch_floats(&d));
        float *dinp[2] = {zeros(n_in), zeros(n_in)}, *dw[2] = {zeros(n_w), zeros(n_w)};
        float *db[2] = {zeros(d.OC), zeros(d.OC)}, *H[2] = {zeros(hl), zeros(hl)};
        float *S[2] = {zeros(d.OC), zeros(d.OC)};
        fisher_conv2d_backward(dinp[0], dw[0], db[0], scratch, dout, inp, w, NULL, &d);
        fisher_stats_conv(H[0], S[0], inp, dout, &d, 1);
        fisher_conv2d_backward_stats(dinp[1], dw[1], db[1], H[1], S[1], scratch, dout, inp, w, NULL, &d);
        assert_memory_equal(dinp[0], dinp[1], n_in * sizeof(float));
        assert_memory_equal(dw[0], dw[1], n_w * sizeof(float));
        assert_memory_equal(db[0], db[1], d.OC * sizeof(float));
        assert_memory_equal(H[0], H[1], hl * sizeof(float));
        assert_memory_equal(S[0], S[1], d.OC * sizeof(float));
        free(inp), free(dout), free(w), free(scratch);
        for (int i = 0; i < 2; i++) free(dinp[i]), free(dw[i]), free(db[i]), free(H[i]), free(S[i]);
    }
    omp_set_num_threads(threads);
}

/* The forwards that square their output: outputs bit for bit the plain
 * forwards', and H from their squares bit for bit fisher_stats_linear's
 * from the output (the statistics' own pass), serial and on two threads. */
static void test_forward_squares(void **s) {
    (void)s;
    const int sizes[][2] = {{18, 12}, {1200, 40}}; /* R, C */
    int threads = omp_get_max_threads();
    omp_set_num_threads(2);
    fisher_rng rng;
    fisher_rng_seed(&rng, 5);
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        int R = sizes[k][0], C = sizes[k][1], IC = C / 2;
        size_t n = (size_t)R * C;
        float *inp = normals(&rng, n, 0.1f), *w = normals(&rng, (size_t)C * IC, 0.0f);
        float *b = normals(&rng, C, 0.0f), *mean = zeros(R), *rstd = zeros(R);
        float *out[2] = {zeros(n), zeros(n)}, H[2][C + 1];
        for (int kind = 0; kind < 3; kind++) {
            double sq[C];
            memset(sq, 0, sizeof sq);
            if (kind == 0) {
                fisher_layernorm_forward(out[0], mean, rstd, inp, w, b, R, C, 1e-5f);
                fisher_layernorm_forward_squares(out[1], mean, rstd, sq, inp, w, b, R, C, 1e-5f);
            } else if (kind == 1) {
                fisher_relu_forward(out[0], inp, n);
                fisher_relu_forward_squares(out[1], sq, inp, R, C);
            } else { /* a linear IC -> C reading the first IC columns of inp as its rows */
                fisher_linear_forward(out[0], inp, w, b, R, IC, C);
                fisher_linear_forward_squares(out[1], sq, inp, w, b, R, IC, C);
            }
            assert_memory_equal(out[0], out[1], n * sizeof(float));
            fisher_stats_linear(H[0], NULL, out[0], NULL, R, C, 1, 1);
            fisher_stats_linear_h(H[1], sq, R, C, 1);
            assert_memory_equal(H[0], H[1], sizeof H[0]);
        }
        free(inp), free(w), free(b), free(mean), free(rstd), free(out[0]), free(out[1]);
    }
    omp_set_num_threads(threads);
}

/* Column squares are summed in float over blocks of rows (layers.c:
 * square_sums), within 1e-6 of the exact sums. Rows where a column's
 * first value dwarfs the squares after it, by less than float resolution
 * (1e-8 next to 1): one float sum over all rows drops them all (1.2e-5 of
 * the column here), blocks drop at most a block's worth. Odd row counts,
 * serial and on two threads, H and S, with their bias column. */
static void test_squares_within_float_rounding(void **s) {
    (void)s;
    const int rows[] = {1237, 40, 15};
    int threads = omp_get_max_threads();
    fisher_rng rng;
    fisher_rng_seed(&rng, 13);
    for (int team = 1; team <= 2; team++) {
        omp_set_num_threads(team);
        for (size_t k = 0; k < sizeof rows / sizeof *rows; k++) {
            int R = rows[k], C = 37;
            size_t n = (size_t)R * C;
            float *m = malloc(n * sizeof *m), H[C + 1], S[C], want[C + 1];
            for (size_t i = 0; i < n; i++) /* columns of both kinds: one big value, or normals */
                m[i] = (int)(i % C) < C / 2 ? (i < (size_t)C ? 1.0f : 1e-4f)
                                            : fisher_rng_normal(&rng) * (float)(1 + i % 7);
            double sq[C];
            memset(sq, 0, sizeof sq);
            for (size_t i = 0; i < n; i++) sq[i % C] += (double)m[i] * m[i];
            for (int c = 0; c < C; c++) want[c] = (float)(sq[c] / R);
            want[C] = 1.0f;
            fisher_stats_linear(H, S, m, m, R, C, C, 1);
            char name[64];
            snprintf(name, sizeof name, "H of %d rows on %d threads", R, team);
            assert_close(name, H, want, C + 1, 1e-6, 0);
            snprintf(name, sizeof name, "S of %d rows on %d threads", R, team);
            assert_close(name, S, want, C, 1e-6, 0);
            free(m);
        }
    }
    omp_set_num_threads(threads);
}

/* fisher_linear_forward_patch_squares: the output bit for bit
 * fisher_linear_forward's, and the conv's H from its squares equal (within
 * the float blocks' 1e-6) fisher_stats_conv's from that output, for stride-1
 * convs it sums by rows (serial and two threads, with and without enough
 * scratch; batch rows wide enough for the records to pay), and those it
 * leaves to the conv's own pass: narrow images and a strided conv. */
static void test_forward_patch_squares(void **s) {
    (void)s;
    /* B, H, W, C (= the linear's OC), K, stride, pad, groups */
    const int cases[][8] = {{2, 5, 20, 8, 3, 1, 1, 8},  {4, 20, 19, 40, 3, 1, 1, 40},
                            {2, 9, 20, 6, 5, 1, 2, 3},  {5, 5, 4, 4, 3, 1, 0, 4},
                            {2, 5, 6, 8, 3, 1, 1, 8},   {2, 9, 10, 6, 5, 1, 2, 3},
                            {2, 9, 8, 6, 3, 2, 1, 6}};
    int threads = omp_get_max_threads();
    omp_set_num_threads(2);
    fisher_rng rng;
    fisher_rng_seed(&rng, 9);
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        const int *c = cases[k];
        fisher_conv2d_dims d;
        assert_int_equal(fisher_conv2d_dims_init(&d, c[0], c[1], c[2], c[3], c[3], c[4], c[4], c[5],
                                                 c[6], c[7]),
                         0);
        int IC = 7, R = d.B * d.H * d.W, K = d.C / d.groups * d.KH * d.KW;
        size_t n = (size_t)R * d.C, need = fisher_patch_squares_scratch(&d, 2);
        float *inp = normals(&rng, (size_t)R * IC, 0.2f), *w = normals(&rng, (size_t)d.C * IC, 0.0f);
        float *b = normals(&rng, d.C, 0.1f), *out[2] = {zeros(n), zeros(n)}, *S = zeros(d.OC);
        float *H[2] = {zeros(K + 1), zeros(K + 1)};
        double *scratch = malloc(need * sizeof *scratch), h[K];
        fisher_linear_forward(out[0], inp, w, b, R, IC, d.C);
        fisher_stats_conv(H[0], S, out[0], out[0], &d, 1);
        for (int with_scratch = 0; with_scratch < 2; with_scratch++) {
            fisher_linear_forward_patch_squares(out[1], h, with_scratch ? scratch : NULL, need, inp, w,
                                                b, IC, &d);
            assert_memory_equal(out[0], out[1], n * sizeof(float));
            fisher_stats_conv_h(H[1], h, &d, 1);
            assert_close("patch squares H", H[1], H[0], K + 1, 1e-6, 0);
        }
        free(inp), free(w), free(b), free(out[0]), free(out[1]), free(S), free(H[0]), free(H[1]);
        free(scratch);
    }
    omp_set_num_threads(threads);
}

static void run_elementwise(const char *cas, void (*fwd)(float *, const float *, size_t), int uses_out) {
    size_t n = 150;
    float *inp = get(cas, "inp", n), *dout = get(cas, "dout", n);
    float *out = zeros(n), *dinp = zeros(n);
    fwd(out, inp, n);
    check(cas, "out", out, n);
    if (uses_out) fisher_relu_backward(dinp, dout, out, n);
    else fisher_gelu_backward(dinp, dout, inp, n);
    check(cas, "dinp", dinp, n);
    free(inp), free(dout), free(out), free(dinp);
}

static void test_gelu(void **s) { (void)s; run_elementwise("gelu", fisher_gelu_forward, 0); }
static void test_relu(void **s) { (void)s; run_elementwise("relu", fisher_relu_forward, 1); }

static void test_attention(void **s) {
    (void)s;
    int B = 2, N = 12, M = 3, C = 16, NH = 2;
    size_t nq = (size_t)B * N * C, nk = (size_t)B * M * C;
    float *q = get("attention", "q", nq), *k = get("attention", "k", nk), *v = get("attention", "v", nk);
    float *dout = get("attention", "dout", nq);
    float *out = zeros(nq), *att = zeros((size_t)B * NH * N * M);
    float *dq = zeros(nq), *dk = zeros(nk), *dv = zeros(nk);
    float *scratch = zeros(fisher_attention_scratch_floats(N, M));
    fisher_attention_forward(out, att, q, k, v, B, N, M, C, NH);
    check("attention", "out", out, nq);
    fisher_attention_backward(dq, dk, dv, scratch, dout, q, k, v, att, B, N, M, C, NH);
    check("attention", "dq", dq, nq);
    check("attention", "dk", dk, nk);
    check("attention", "dv", dv, nk);
    free(q), free(k), free(v), free(dout), free(out), free(att), free(dq), free(dk), free(dv), free(scratch);
}

/* The whole efficient self-attention sub-layer, with Hugging Face's
 * parameter names, against SegformerAttention (sr 2, 2 heads, 4×6 tokens). */
static void test_efficient_self_attention(void **s) {
    (void)s;
    fisher_esa_dims d;
    assert_int_equal(fisher_esa_dims_init(&d, 2, 4, 6, 16, 2, 2, 1e-5f), 0);
    assert_int_equal(d.M, 6);
    size_t C = 16, nc = (size_t)d.B * d.N * C, mc = (size_t)d.B * d.M * C;
    static const struct {
        const char *name;
        size_t numel;
        size_t field; /* offset into fisher_esa_params */
    } tensors[] = {
        {"attention.self.query.weight", 256, offsetof(fisher_esa_params, q_w)},
        {"attention.self.query.bias", 16, offsetof(fisher_esa_params, q_b)},
        {"attention.self.key.weight", 256, offsetof(fisher_esa_params, k_w)},
        {"attention.self.key.bias", 16, offsetof(fisher_esa_params, k_b)},
        {"attention.self.value.weight", 256, offsetof(fisher_esa_params, v_w)},
        {"attention.self.value.bias", 16, offsetof(fisher_esa_params, v_b)},
        {"attention.self.sr.weight", 1024, offsetof(fisher_esa_params, sr_w)},
        {"attention.self.sr.bias", 16, offsetof(fisher_esa_params, sr_b)},
        {"attention.self.layer_norm.weight", 16, offsetof(fisher_esa_params, sr_ln_w)},
        {"attention.self.layer_norm.bias", 16, offsetof(fisher_esa_params, sr_ln_b)},
        {"attention.output.dense.weight", 256, offsetof(fisher_esa_params, o_w)},
        {"attention.output.dense.bias", 16, offsetof(fisher_esa_params, o_b)},
    };
    enum { NT = sizeof tensors / sizeof *tensors };
    fisher_esa_params w, g;
    for (int i = 0; i < NT; i++) {
        *(float **)((char *)&w + tensors[i].field) = get("esa", tensors[i].name, tensors[i].numel);
        *(float **)((char *)&g + tensors[i].field) = zeros(tensors[i].numel);
    }
    float *hidden = get("esa", "hidden", nc), *dout = get("esa", "dout", nc);
    float *out = zeros(nc), *dhidden = zeros(nc), *scratch = zeros(fisher_esa_scratch_floats(&d));
    fisher_esa_cache cache = {
        .q = zeros(nc), .sr = zeros(mc), .sr_ln = zeros(mc), .sr_mean = zeros(mc / C),
        .sr_rstd = zeros(mc / C), .k = zeros(mc), .v = zeros(mc),
        .att = zeros((size_t)d.B * d.NH * d.N * d.M), .ctx = zeros(nc),
    };
    fisher_esa_forward(out, &cache, scratch, hidden, &w, &d);
    check("esa", "out", out, nc);
    fisher_esa_backward(dhidden, &g, scratch, dout, hidden, &cache, &w, NULL, &d, NULL);
    check("esa", "dhidden", dhidden, nc);
    for (int i = 0; i < NT; i++) {
        char what[96];
        snprintf(what, sizeof what, "grad.%s", tensors[i].name);
        check("esa", what, *(float **)((char *)&g + tensors[i].field), tensors[i].numel);
        free(*(float **)((char *)&w + tensors[i].field));
        free(*(float **)((char *)&g + tensors[i].field));
    }
    free(hidden), free(dout), free(out), free(dhidden), free(scratch);
    free(cache.q), free(cache.sr), free(cache.sr_ln), free(cache.sr_mean), free(cache.sr_rstd);
    free(cache.k), free(cache.v), free(cache.att), free(cache.ctx);
}

typedef struct {
    const char *name;
    int B, H, W, C, OH, OW;
} resize_case;

static void run_resize(const resize_case *rc) {
    size_t n_in = (size_t)rc->B * rc->H * rc->W * rc->C, n_out = (size_t)rc->B * rc->OH * rc->OW * rc->C;
    float *inp = get(rc->name, "inp", n_in), *dout = get(rc->name, "dout", n_out);
    float *out = zeros(n_out), *dinp = zeros(n_in);
    fisher_resize_bilinear_forward(out, inp, rc->B, rc->H, rc->W, rc->C, rc->OH, rc->OW);
    check(rc->name, "out", out, n_out);
    fisher_resize_bilinear_backward(dinp, dout, rc->B, rc->H, rc->W, rc->C, rc->OH, rc->OW);
    check(rc->name, "dinp", dinp, n_in);
    free(inp), free(dout), free(out), free(dinp);
}

static void test_resize_up(void **s) { (void)s; run_resize(&(resize_case){"resize_up", 2, 3, 5, 4, 7, 11}); }
static void test_resize_down(void **s) { (void)s; run_resize(&(resize_case){"resize_down", 2, 9, 10, 3, 4, 6}); }
static void test_resize_same(void **s) { (void)s; run_resize(&(resize_case){"resize_same", 2, 5, 6, 2, 5, 6}); }

/* Σ of the resized input's squares per channel, read off the small input
 * (fisher_resize_bilinear_squares), against resizing and summing: upsampling
 * by 4 and by odd factors, down, the same size, a 1×1 input. The resize
 * rounds each value to float, the Gram route does not: 1e-6 relative. */
static void test_resize_squares(void **s) {
    (void)s;
    const int cases[][6] = {{2, 4, 4, 3, 16, 16}, {1, 5, 3, 2, 20, 12}, {2, 3, 5, 4, 7, 11},
                            {2, 9, 10, 3, 4, 6}, {1, 8, 8, 5, 8, 8}, {3, 1, 1, 2, 4, 4}};
    fisher_rng rng;
    fisher_rng_seed(&rng, 12);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int B = cases[i][0], H = cases[i][1], W = cases[i][2], C = cases[i][3], OH = cases[i][4], OW = cases[i][5];
        size_t n_in = (size_t)B * H * W * C, n_out = (size_t)B * OH * OW * C;
        float *inp = malloc(n_in * sizeof *inp), *up = malloc(n_out * sizeof *up);
        for (size_t k = 0; k < n_in; k++) inp[k] = fisher_rng_normal(&rng);
        fisher_resize_bilinear_forward(up, inp, B, H, W, C, OH, OW);
        double want[8] = {0}, got[8] = {0};
        for (size_t r = 0; r < n_out / C; r++)
            for (int c = 0; c < C; c++) want[c] += (double)up[r * C + c] * up[r * C + c];
        fisher_resize_bilinear_squares(got, inp, B, H, W, C, OH, OW);
        for (int c = 0; c < C; c++)
            if (!(fabs(got[c] - want[c]) <= 1e-6 * want[c]))
                fail_msg("%dx%dx%d -> %dx%d channel %d: %.9g, resized %.9g", H, W, C, OH, OW, c, got[c], want[c]);
        free(inp), free(up);
    }
}

static void test_concat(void **s) {
    (void)s;
    /* Two rows of parts widths 2 and 3: out rows are [a0 a1 b0 b1 b2]. */
    float a[4] = {1, 2, 3, 4}, b[6] = {5, 6, 7, 8, 9, 10}, out[10];
    const float *parts[2] = {a, b};
    int widths[2] = {2, 3};
    fisher_concat_forward(out, parts, widths, 2, 2);
    float want[10] = {1, 2, 5, 6, 7, 3, 4, 8, 9, 10};
    assert_memory_equal(out, want, sizeof want);
    float da[4] = {0}, db[6] = {100, 100, 100, 100, 100, 100};
    float *dparts[2] = {da, db};
    fisher_concat_backward(dparts, want, widths, 2, 2);
    float want_da[4] = {1, 2, 3, 4}, want_db[6] = {105, 106, 107, 108, 109, 110};
    assert_memory_equal(da, want_da, sizeof da);
    assert_memory_equal(db, want_db, sizeof db);
}

static void test_loss(void **s) {
    (void)s;
    size_t n = 2 * 9 * 11;
    float *logits = get("loss", "logits", n), *target = get("loss", "target", n);
    float *dlogits = zeros(n);
    float loss = fisher_seg_loss(dlogits, logits, target, n, FISHER_DICE_WEIGHT_DEFAULT);
    check("loss", "value", &loss, 1);
    check("loss", "dlogits", dlogits, n);
    free(logits), free(target), free(dlogits);
}

static void test_metrics(void **s) {
    (void)s;
    /* logits ≥ 0 predict crack. truth:  1 1 0 0 1 0 ; pred: 1 0 1 0 1 0 */
    float logits[6] = {2, -1, 0, -3, 0.5f, -0.1f}, target[6] = {1, 1, 0, 0, 1, 0};
    fisher_confusion c = {0};
    fisher_confusion_add(&c, logits, target, 6);
    assert_int_equal(c.tp, 2);
    assert_int_equal(c.fp, 1);
    assert_int_equal(c.fn, 1);
    assert_int_equal(c.tn, 2);
    fisher_seg_metrics m = fisher_confusion_metrics(&c);
    assert_float_equal(m.accuracy, 4.0 / 6, 1e-12);
    assert_float_equal(m.precision, 2.0 / 3, 1e-12);
    assert_float_equal(m.recall, 2.0 / 3, 1e-12);
    assert_float_equal(m.f1, 4.0 / 6, 1e-12);
    assert_float_equal(m.iou, 2.0 / 4, 1e-12);
    fisher_confusion empty = {.tn = 5};
    m = fisher_confusion_metrics(&empty);
    assert_float_equal(m.iou, 1.0, 0);
    assert_float_equal(m.f1, 1.0, 0);
}

static void test_adamw(void **s) {
    (void)s;
    size_t n = 37;
    float *p = get("adamw", "param0", n);
    fisher_adamw opt;
    fisher_error err;
    fisher_adamw_config cfg = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f};
    assert_int_equal(fisher_adamw_init(&opt, n, cfg, &err), 0);
    for (int step = 1; step <= 3; step++) {
        char what[32];
        snprintf(what, sizeof what, "grad%d", step);
        float *g = get("adamw", what, n);
        fisher_adamw_step(&opt, p, g);
        snprintf(what, sizeof what, "param%d", step);
        /* AdamW is elementwise: a few float ulps of the parameters */
        float *want = get("adamw", what, n);
        assert_close(what, p, want, n, 1e-6, 1e-7);
        free(g), free(want);
    }
    cfg.beta1 = 1.0f;
    assert_int_equal(fisher_adamw_init(&opt, n, cfg, &err), -1);
    assert_non_null(strstr(err.msg, "betas"));
    fisher_adamw_free(&opt);
    free(p);
}

/* AdamW over runs of live elements: the runs of a mask are exact, and
 * elements outside them are not touched (no decay, no moments). */
static void test_adamw_ranges(void **state) {
    (void)state;
    uint8_t mask[12] = {0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0, 1};
    fisher_range r[7];
    assert_int_equal(fisher_mask_ranges(mask, 12, r), 4);
    assert_true(r[0].start == 1 && r[0].end == 3 && r[1].start == 5 && r[1].end == 6);
    assert_true(r[2].start == 7 && r[2].end == 10 && r[3].start == 11 && r[3].end == 12);
    uint8_t none[3] = {0}, all[3] = {1, 1, 1};
    assert_int_equal(fisher_mask_ranges(none, 3, r), 0);
    assert_int_equal(fisher_mask_ranges(all, 3, r), 1);
    assert_true(r[0].start == 0 && r[0].end == 3);

    fisher_adamw a, b;
    fisher_error err;
    fisher_adamw_config cfg = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.1f};
    assert_int_equal(fisher_adamw_init(&a, 12, cfg, &err), 0);
    assert_int_equal(fisher_adamw_init(&b, 12, cfg, &err), 0);
    float pa[12], pb[12], g[12];
    for (int i = 0; i < 12; i++) pa[i] = pb[i] = 0.5f + (float)i, g[i] = (float)(i % 5) - 2.0f;
    size_t n = fisher_mask_ranges(mask, 12, r);
    for (int step = 0; step < 3; step++) {
        fisher_adamw_step_ranges(&a, pa, g, r, n);
        fisher_adamw_step(&b, pb, g);
    }
    for (int i = 0; i < 12; i++) {
        if (mask[i]) assert_true(pa[i] == pb[i]); /* a live element: exactly AdamW */
        else assert_true(pa[i] == 0.5f + (float)i && a.m[i] == 0.0f && a.v[i] == 0.0f);
    }
    fisher_adamw_free(&a), fisher_adamw_free(&b);
}

/* fisher_scratch_alloc: cache-line aligned whatever malloc returns, every
 * double writable, and fisher_scratch_free takes it back (ASan checks the
 * bounds and the free in the sanitizer build); NULL is freed as nothing. */
static void test_scratch_alloc(void **s) {
    (void)s;
    double *keep[64];
    for (size_t i = 0; i < 64; i++) {
        size_t n = 1 + i * 37;
        keep[i] = fisher_scratch_alloc(n);
        assert_non_null(keep[i]);
        assert_int_equal((uintptr_t)keep[i] % 64, 0);
        for (size_t k = 0; k < n; k++) keep[i][k] = (double)k;
        assert_true(keep[i][n - 1] == (double)(n - 1));
    }
    for (size_t i = 0; i < 64; i++) fisher_scratch_free(keep[i]);
    fisher_scratch_free(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scratch_alloc),
        cmocka_unit_test(test_linear),         cmocka_unit_test(test_conv_patch),
        cmocka_unit_test(test_conv_s2),        cmocka_unit_test(test_conv_grouped),
        cmocka_unit_test(test_conv_depthwise), cmocka_unit_test(test_conv_sr),
        cmocka_unit_test(test_conv_1x1),       cmocka_unit_test(test_conv_dims_reject),
        cmocka_unit_test(test_stats_conv_direct),
        cmocka_unit_test(test_linear_live_rows), cmocka_unit_test(test_conv_live_rows),
        cmocka_unit_test(test_layernorm),      cmocka_unit_test(test_batchnorm),
        cmocka_unit_test(test_backward_stats_fused), cmocka_unit_test(test_conv_backward_stats_fused),
        cmocka_unit_test(test_forward_squares), cmocka_unit_test(test_forward_patch_squares),
        cmocka_unit_test(test_squares_within_float_rounding),
        cmocka_unit_test(test_gelu),           cmocka_unit_test(test_relu),
        cmocka_unit_test(test_attention),      cmocka_unit_test(test_efficient_self_attention),
        cmocka_unit_test(test_resize_up),
        cmocka_unit_test(test_resize_down),    cmocka_unit_test(test_resize_same),
        cmocka_unit_test(test_resize_squares),
        cmocka_unit_test(test_concat),         cmocka_unit_test(test_loss),
        cmocka_unit_test(test_metrics),        cmocka_unit_test(test_adamw),
        cmocka_unit_test(test_adamw_ranges),
    };
    return cmocka_run_group_tests_name("layers", tests, setup, teardown);
}
