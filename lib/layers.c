/*
 * layers.c — forward/backward pairs of the SegFormer building blocks.
 * Contracts, layouts and the dimension legend are in layers.h.
 *
 * Everything that is a matrix product goes to OpenBLAS sgemm; what remains
 * is written as plain loops over contiguous channels so the compiler can
 * vectorise them. Reductions that run over many rows (BatchNorm statistics)
 * accumulate in double: with B·H·W in the tens of thousands a float sum
 * would lose the digits the parity tests check.
 *
 * Threads. OpenBLAS parallelises the GEMMs; the rest — a third of a step —
 * is parallelised here with OpenMP over rows, with the team size the caller
 * set for its thread (omp_set_num_threads; see fisher_set_threads). Loops
 * too small to pay for waking a team run serially (PAR_MIN elements).
 * Per-row work is independent. Sums over rows (weight and bias gradients,
 * statistics) run in contiguous bands of rows, one per thread, each into
 * zeroed partials added in thread order — an OpenMP array reduction would
 * do the same but GCC leaves its loop scalar — so their rounding depends on
 * the thread count but not on timing: a run is reproducible for a given
 * count. (A few small reductions still use the OpenMP clause.)
 *
 * Statistics (FISHERADAPTUNE.md §1) ride on passes that touch the data
 * anyway where that pays: S on the bias-gradient pass, the norm layers'
 * on their backward's sums, H of the layers that read a LayerNorm, ReLU
 * or linear output on that forward ("Forwards that square their output").
 */
#include "layers.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Below this many elements of work a loop runs on the calling thread. */
#define PAR_MIN 32768

/* Doubles from one thread's partial sums to the next for partials of n
 * doubles: whole cache lines, so no two threads' partials share one. Rows
 * are added into the partials one after another, and a line the two cores
 * both wrote went back and forth between them at every row: mit-b0 128×128
 * batch 4 at 2 threads, fisher − full went 7.88 -> 6.81 ms a step (mean of
 * 6 alternating runs of 40 steps), full a little faster too. A stride of
 * whole 4 KB pages gets 512 bytes more: the next thread's partials at the
 * same page offset made its loads wait on its stores to the partials
 * (4K aliasing; BatchNorm's backward sums, C = 256 and two sums a channel:
 * 475 -> 405 µs a call at 2 threads, best of 300). */
static size_t partial_stride(size_t n) {
    size_t lines = (n + 7) & ~(size_t)7;
    return lines % 512 ? lines : lines + 64;
}

/* n doubles from a cache line's start, carved out of a plain malloc (its
 * address kept just before them): aligned_alloc's chunks, split to align,
 * left free fragments among live ones, and the job thread's arena then
 * kept up to 14 MB after a job had ended (the memory test of test_faults,
 * 2 runs in 9). */
double *fisher_scratch_alloc(size_t n) {
    char *raw = malloc(n * sizeof(double) + 64 + sizeof(void *));
    if (!raw) return NULL;
    uintptr_t at = ((uintptr_t)(raw + sizeof(void *)) + 63) & ~(uintptr_t)63;
    ((void **)at)[-1] = raw;
    return (double *)at;
}

void fisher_scratch_free(double *p) {
    if (p) free(((void **)p)[-1]);
}

/* T partials of n doubles, partial_stride(n) apart from a cache line's
 * start, zeroed: NULL without memory. Free with fisher_scratch_free. */
static double *thread_partials(int T, size_t n) {
    size_t len = (size_t)T * partial_stride(n);
    double *p = fisher_scratch_alloc(len);
    if (p) memset(p, 0, len * sizeof *p);
    return p;
}

/* Adds into acc (C) what rows [r0, r1) contribute per column. */
typedef void column_band(const void *ctx, double *restrict acc, int r0, int r1);

/* A band's column sums of squares (the H and S of linear and conv layers),
 * row after row: each row's squares go into part in float, and every
 * SQUARE_BLOCK rows part goes into the band's double sums. Squaring and
 * adding in double took two conversions and two operations per eight values
 * and bound the statistics passes on compute (4096×128 at 2 threads: 57 µs,
 * the float bias sum over the same rows 19 µs; in float blocks of 16,
 * 20 µs). A float sum of n non-negative terms is within (n − 1)·2⁻²⁴ of the
 * exact one, so a block's within 1e-6 relative, and the statistic is stored
 * in float32: measured against all-double sums, ≤ 1e-7 relative. */
#define SQUARE_BLOCK 16
typedef struct {
    double *acc; /* (C) the band's sums */
    float *part; /* (C) the current block's, zero at the start */
    int C, rows; /* rows in the current block */
} square_sums;

static inline void square_sums_flush(square_sums *s) {
    double *restrict acc = s->acc;
    float *restrict part = s->part;
#pragma omp simd
    for (int c = 0; c < s->C; c++) acc[c] += part[c], part[c] = 0.0f;
    s->rows = 0;
}

/* Adds the squares of row v (C). */
static inline void square_sums_row(square_sums *s, const float *restrict v) {
    float *restrict part = s->part;
#pragma omp simd
    for (int c = 0; c < s->C; c++) part[c] += v[c] * v[c];
    if (++s->rows == SQUARE_BLOCK) square_sums_flush(s);
}

/* Declares square_sums `name` adding into acc (C), with its block on the
 * stack (cleared only when there is an acc: bands that square optionally
 * pass NULL on the plain path). */
#define SQUARE_SUMS(name, acc, C)                                                                  \
    float name##_part[(C) > 0 ? (C) : 1];                                                          \
    if (acc) memset(name##_part, 0, sizeof name##_part);                                           \
    square_sums name = {(acc), name##_part, (C), 0}

/* Runs band over rows [0, R), acc (C) += the per-column sums: threads take
 * contiguous bands into zeroed partials, added in thread order, so a run is
 * reproducible for a given team size (and every statistic summed this way,
 * in a forward or a backward, has the same bits for the same rows). A row
 * reads row_len floats (C, or more when a row spans several pixels): the
 * work that decides whether threads pay. */
static void column_bands(column_band *band, const void *ctx, double *acc, int R, int C, size_t row_len) {
    int T = (size_t)R * row_len > PAR_MIN ? omp_get_max_threads() : 1;
    if (T > R) T = R;
    double *part = T > 1 ? thread_partials(T, (size_t)C) : NULL;
    if (!part) { /* one thread, or no memory for the partial sums */
        band(ctx, acc, 0, R);
        return;
    }
    size_t stride = partial_stride((size_t)C);
#pragma omp parallel num_threads(T)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        band(ctx, part + (size_t)t * stride, (int)((long)t * R / nt), (int)((long)(t + 1) * R / nt));
    }
    for (int t = 0; t < T; t++)
        for (int c = 0; c < C; c++) acc[c] += part[(size_t)t * stride + c];
    fisher_scratch_free(part);
}

/* Folds one band's partials (as band left them) into the caller's sums. */
typedef void partial_fold(void *ctx, const double *part);

/* Runs band over rows [0, R) in contiguous bands, one a thread, each into
 * zeroed partials of n doubles, then fold for each band in thread order:
 * reproducible for a given team size. For sums of more than one kind (a
 * band's partials may hold floats too), where column_bands adds one double
 * vector. Without memory for the partials: one band, partials on the
 * stack. A row reads row_len floats: the work that decides whether threads
 * pay. */
static void banded_partials(column_band *band, partial_fold *fold, void *ctx, int R, size_t n,
                            size_t row_len) {
    int T = (size_t)R * row_len > PAR_MIN ? omp_get_max_threads() : 1;
    if (T > R) T = R > 0 ? R : 1;
    size_t per = partial_stride(n);
    double *ws = thread_partials(T, n);
    if (!ws) T = 1;
    double one[ws ? 1 : per];
    if (!ws) memset(one, 0, sizeof one);
    double *base = ws ? ws : one;
#pragma omp parallel num_threads(T) if (T > 1)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        band(ctx, base + (size_t)t * per, (int)((long)t * R / nt), (int)((long)(t + 1) * R / nt));
    }
    for (int t = 0; t < T; t++) fold(ctx, base + (size_t)t * per);
    fisher_scratch_free(ws);
}

/* ------------------------------------------------------------------ Linear */

void fisher_linear_slice_forward(float *out, const float *inp, const float *weight, int ldw,
                                 int R, int IC, int OC, int accumulate) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, OC, IC, 1.0f, inp, IC, weight, ldw,
                accumulate ? 1.0f : 0.0f, out, OC);
}

/* Runs of live rows. A row mask (n entries, nonzero = live; NULL = all
 * live) becomes its maximal runs [lo, hi), in order; returns how many.
 * runs needs room for (n + 1) / 2 of them. */
typedef struct {
    int lo, hi;
} row_run;

static int row_runs(row_run *runs, const uint8_t *rows, int n) {
    if (!rows) {
        runs[0] = (row_run){0, n};
        return n > 0;
    }
    int k = 0;
    for (int o = 0; o < n;) {
        while (o < n && !rows[o]) o++;
        if (o == n) break;
        int lo = o;
        while (o < n && rows[o]) o++;
        runs[k++] = (row_run){lo, o};
    }
    return k;
}

void fisher_linear_slice_backward(float *dinp, float *dweight, const float *dout, const float *inp,
                                  const float *weight, const uint8_t *live_rows, int ldw, int R,
                                  int IC, int OC) {
    if (dinp)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, IC, OC, 1.0f, dout, OC, weight,
                    ldw, 1.0f, dinp, IC);
    if (!dweight) return;
    /* one product per run of live rows: dweight[lo:hi] += dout[:, lo:hi]ᵀ · inp */
    row_run runs[(OC + 1) / 2];
    int n_runs = row_runs(runs, live_rows, OC);
    for (int i = 0; i < n_runs; i++) {
        int lo = runs[i].lo, n = runs[i].hi - lo;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, IC, R, 1.0f, dout + lo, OC, inp,
                    IC, 1.0f, dweight + (size_t)lo * ldw, ldw);
    }
}

/* Every row of out (R, C) += bias (C). */
static void add_bias_rows(float *out, const float *bias, int R, int C) {
#pragma omp parallel for schedule(static) if ((size_t)R * C > PAR_MIN)
    for (int r = 0; r < R; r++) {
        float *o = out + (size_t)r * C;
        for (int c = 0; c < C; c++) o[c] += bias[c];
    }
}

void fisher_linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                           int R, int IC, int OC) {
    fisher_linear_slice_forward(out, inp, weight, IC, R, IC, OC, 0);
    if (bias) add_bias_rows(out, bias, R, OC);
}

/* One band of rows [r0, r1) of m (·, C): acc += each row, and with sq,
 * sq += its squares (square_sums; a Fisher S riding on a bias gradient). */
__attribute__((target_clones("avx512f", "avx2", "default"))) static void
bias_rows(float *restrict acc, double *restrict sq, const float *restrict m, int r0, int r1, int C) {
    SQUARE_SUMS(squares, sq, C);
    for (int r = r0; r < r1; r++) {
        const float *m_r = m + (size_t)r * C;
#pragma omp simd
        for (int c = 0; c < C; c++) acc[c] += m_r[c];
        if (sq) square_sums_row(&squares, m_r);
    }
    if (sq) square_sums_flush(&squares);
}

typedef struct {
    float *acc;
    double *sq;
    const float *m;
    int C;
} column_sums_job;

/* A band's partials: sq (C doubles), then acc (C floats). */
static void column_sums_band(const void *ctx, double *restrict p, int r0, int r1) {
    const column_sums_job *j = ctx;
    bias_rows((float *)(p + j->C), j->sq ? p : NULL, j->m, r0, r1, j->C);
}

static void column_sums_fold(void *ctx, const double *p) {
    column_sums_job *j = ctx;
    const float *a = (const float *)(p + j->C);
    for (int c = 0; c < j->C; c++) j->acc[c] += a[c];
    for (int c = 0; j->sq && c < j->C; c++) j->sq[c] += p[c];
}

/* Σ over rows of m (R, C) added into acc (C); with sq (C) not NULL, also
 * Σ m² per column added into sq, in banded_partials' bands (the bands of
 * add_columns, so sq has the bits of add_column_squares). An OpenMP array
 * reduction left this loop scalar;
 * the vector bands keep each column's sum row by row in row order, so
 * acc has its old bits too (with a zeroed acc, as every backward has). */
static void add_column_sums(float *acc, double *sq, const float *m, int R, int C) {
    column_sums_job j = {acc, sq, m, C};
    banded_partials(column_sums_band, column_sums_fold, &j, R, (size_t)C + (C + 1) / 2, (size_t)C);
}

void fisher_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                            const float *inp, const float *weight, const uint8_t *live_rows,
                            int R, int IC, int OC) {
    fisher_linear_slice_backward(dinp, dweight, dout, inp, weight, live_rows, IC, R, IC, OC);
    if (dbias) add_column_sums(dbias, NULL, dout, R, OC);
}

static void add_column_squares(double *acc, const float *m, int R, int C);

/* S's squares of dout ride on the bias gradient's pass over dout, which
 * reads it anyway, instead of a pass of their own before the GEMMs. With
 * the LayerNorm and BatchNorm statistics riding on their backwards too:
 * backward(fisher) − backward(no statistics) on mit-b0 128×128 batch 4,
 * 1 thread, CPU 6.84 -> 5.65 ms a step (medians, 3×40 paired steps). */
void fisher_linear_backward_stats(float *dinp, float *dweight, float *dbias, float *H, float *S,
                                  const float *dout, const float *inp, const float *weight,
                                  const uint8_t *live_rows, int R, int IC, int OC) {
    double h[IC], sq[OC];
    memset(h, 0, sizeof h), memset(sq, 0, sizeof sq);
    if (H) add_column_squares(h, inp, R, IC);
    fisher_linear_slice_backward(dinp, dweight, dout, inp, weight, live_rows, IC, R, IC, OC);
    if (dbias) add_column_sums(dbias, sq, dout, R, OC);
    else add_column_squares(sq, dout, R, OC);
    if (H) fisher_stats_linear_h(H, h, R, IC, 1);
    for (int o = 0; o < OC; o++) S[o] = (float)(sq[o] / R);
}

/* ------------------------------------------------------------------ Conv2d */
/*
 * Channels-last im2col. A row of the column matrix is one output position
 * (b, oh, ow); its columns are grouped by conv group, and inside a group
 * ordered (kh, kw, c) — not PyTorch's (c, kh, kw) — so that filling a row is
 * a memcpy of a contiguous channel run per kernel tap. The weight is
 * permuted into the same order once per call (it is small), so the product
 * is a plain sgemm per group:
 *
 *     out[:, g·OCg : (g+1)·OCg] = col[:, g·Kg : (g+1)·Kg] · wperm_gᵀ
 *
 * Depthwise convolutions (groups == C == OC) take a direct loop instead:
 * one-column GEMMs per channel would be all overhead.
 *
 * With live rows the weight gradient is one sgemm per (run of live output
 * channels, group it overlaps) into the matching rows of dwperm, and only
 * those rows are permuted back; im2col is skipped when no row is live.
 */

int fisher_conv2d_dims_init(fisher_conv2d_dims *d, int B, int H, int W, int C, int OC, int KH,
                            int KW, int stride, int pad, int groups) {
    if (B <= 0 || H <= 0 || W <= 0 || C <= 0 || OC <= 0 || KH <= 0 || KW <= 0 || stride <= 0 ||
        pad < 0 || groups <= 0 || C % groups || OC % groups)
        return -1;
    d->B = B, d->H = H, d->W = W, d->C = C;
    d->OC = OC, d->KH = KH, d->KW = KW;
    d->stride = stride, d->pad = pad, d->groups = groups;
    d->OH = (H + 2 * pad - KH) / stride + 1;
    d->OW = (W + 2 * pad - KW) / stride + 1;
    return (H + 2 * pad < KH || W + 2 * pad < KW) ? -1 : 0;
}

static int conv_is_depthwise(const fisher_conv2d_dims *d) {
    return d->groups == d->C && d->OC == d->C;
}

/* 1×1, stride 1, no padding, one group: the input already is the column matrix. */
static int conv_is_pointwise(const fisher_conv2d_dims *d) {
    return d->KH == 1 && d->KW == 1 && d->stride == 1 && d->pad == 0 && d->groups == 1;
}

size_t fisher_conv2d_scratch_floats(const fisher_conv2d_dims *d) {
    size_t taps = (size_t)d->KH * d->KW;
    if (conv_is_depthwise(d)) return 2 * taps * d->C; /* transposed weight + its gradient */
    size_t kg = (size_t)(d->C / d->groups) * taps;
    size_t rows = (size_t)d->B * d->OH * d->OW;
    size_t col = conv_is_pointwise(d) ? 0 : rows * (size_t)d->groups * kg;
    return 2 * (size_t)d->OC * kg + col; /* wperm, dwperm, col */
}

/* wperm (OC, KH, KW, Cg) from weight (OC, Cg, KH, KW). */
static void conv_permute_weight(float *wperm, const float *weight, const fisher_conv2d_dims *d) {
    int cg = d->C / d->groups, taps = d->KH * d->KW;
    for (int o = 0; o < d->OC; o++)
        for (int ci = 0; ci < cg; ci++)
            for (int t = 0; t < taps; t++)
                wperm[((size_t)o * taps + t) * cg + ci] = weight[((size_t)o * cg + ci) * taps + t];
}

/* weight (OC, Cg, KH, KW) += dwperm (OC, KH, KW, Cg), rows [lo, hi) only. */
static void conv_unpermute_add(float *dweight, const float *dwperm, int lo, int hi,
                               const fisher_conv2d_dims *d) {
    int cg = d->C / d->groups, taps = d->KH * d->KW;
    for (int o = lo; o < hi; o++)
        for (int ci = 0; ci < cg; ci++)
            for (int t = 0; t < taps; t++)
                dweight[((size_t)o * cg + ci) * taps + t] += dwperm[((size_t)o * taps + t) * cg + ci];
}

/* col (B·OH·OW, G·KH·KW·Cg) from inp (B, H, W, C); zero where the tap is in the padding. */
static void conv_im2col(float *col, const float *inp, const fisher_conv2d_dims *d) {
    int G = d->groups, cg = d->C / G, taps = d->KH * d->KW;
    size_t width = (size_t)G * taps * cg;
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)d->B * d->OH * d->OW * width > PAR_MIN)
    for (int b = 0; b < d->B; b++)
        for (int oh = 0; oh < d->OH; oh++)
            for (int ow = 0; ow < d->OW; ow++) {
                float *col_r = col + (((size_t)b * d->OH + oh) * d->OW + ow) * width;
                for (int ki = 0; ki < d->KH; ki++) {
                    int ih = oh * d->stride - d->pad + ki;
                    for (int kj = 0; kj < d->KW; kj++) {
                        int iw = ow * d->stride - d->pad + kj, t = ki * d->KW + kj;
                        int inside = ih >= 0 && ih < d->H && iw >= 0 && iw < d->W;
                        const float *x = inp + (((size_t)b * d->H + ih) * d->W + iw) * d->C;
                        /* runs are short (3 channels for the first patch embedding):
                         * a plain loop beats a memcpy call */
                        for (int g = 0; g < G; g++) {
                            float *dst = col_r + ((size_t)g * taps + t) * cg;
                            const float *src = x + (size_t)g * cg;
                            for (int c = 0; c < cg; c++) dst[c] = inside ? src[c] : 0.0f;
                        }
                    }
                }
            }
}

/* dinp (B, H, W, C) += the column-matrix gradient folded back onto the input. */
static void conv_col2im_add(float *dinp, const float *dcol, const fisher_conv2d_dims *d) {
    int G = d->groups, cg = d->C / G, taps = d->KH * d->KW;
    size_t width = (size_t)G * taps * cg;
    /* taps of neighbouring positions overlap, images do not: one image per thread */
#pragma omp parallel for schedule(static) if ((size_t)d->B * d->OH * d->OW * width > PAR_MIN)
    for (int b = 0; b < d->B; b++)
        for (int oh = 0; oh < d->OH; oh++)
            for (int ow = 0; ow < d->OW; ow++) {
                const float *dcol_r = dcol + (((size_t)b * d->OH + oh) * d->OW + ow) * width;
                for (int ki = 0; ki < d->KH; ki++) {
                    int ih = oh * d->stride - d->pad + ki;
                    if (ih < 0 || ih >= d->H) continue;
                    for (int kj = 0; kj < d->KW; kj++) {
                        int iw = ow * d->stride - d->pad + kj, t = ki * d->KW + kj;
                        if (iw < 0 || iw >= d->W) continue;
                        float *dx = dinp + (((size_t)b * d->H + ih) * d->W + iw) * d->C;
                        for (int g = 0; g < G; g++) {
                            const float *src = dcol_r + ((size_t)g * taps + t) * cg;
                            float *dst = dx + (size_t)g * cg;
                            for (int c = 0; c < cg; c++) dst[c] += src[c];
                        }
                    }
                }
            }
}

static void conv_depthwise_forward(float *out, float *wt, const float *inp, const float *weight,
                                   const float *bias, const fisher_conv2d_dims *d) {
    int C = d->C, taps = d->KH * d->KW;
    for (int c = 0; c < C; c++) /* wt (KH·KW, C) so the inner loop runs over channels */
        for (int t = 0; t < taps; t++) wt[(size_t)t * C + c] = weight[(size_t)c * taps + t];
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)d->B * d->OH * d->OW * C * taps > PAR_MIN)
    for (int b = 0; b < d->B; b++)
        for (int oh = 0; oh < d->OH; oh++)
            for (int ow = 0; ow < d->OW; ow++) {
                float *o = out + (((size_t)b * d->OH + oh) * d->OW + ow) * C;
                if (bias) memcpy(o, bias, (size_t)C * sizeof *o);
                else memset(o, 0, (size_t)C * sizeof *o);
                for (int ki = 0; ki < d->KH; ki++) {
                    int ih = oh * d->stride - d->pad + ki;
                    if (ih < 0 || ih >= d->H) continue;
                    for (int kj = 0; kj < d->KW; kj++) {
                        int iw = ow * d->stride - d->pad + kj;
                        if (iw < 0 || iw >= d->W) continue;
                        const float *x = inp + (((size_t)b * d->H + ih) * d->W + iw) * C;
                        const float *w_t = wt + (size_t)(ki * d->KW + kj) * C;
                        for (int c = 0; c < C; c++) o[c] += x[c] * w_t[c];
                    }
                }
            }
}

/* Depthwise backward in two passes that each parallelise without races:
 * dinp gathered per input position (the scatter of the forward, read in
 * reverse), then dweight/dbias summed over output positions. */
static void conv_depthwise_backward(float *dinp, float *dweight, float *dbias, double *sq,
                                    float *scratch, const float *dout, const float *inp,
                                    const float *weight, const uint8_t *live_rows,
                                    const fisher_conv2d_dims *d) {
    int C = d->C, taps = d->KH * d->KW, s = d->stride, p = d->pad;
    size_t work = (size_t)d->B * d->OH * d->OW * C * taps;
    float *wt = scratch, *dwt = scratch + (size_t)taps * C;
    for (int c = 0; c < C; c++)
        for (int t = 0; t < taps; t++) wt[(size_t)t * C + c] = weight[(size_t)c * taps + t];
    if (dinp) {
#pragma omp parallel for collapse(2) schedule(static) if (work > PAR_MIN)
        for (int b = 0; b < d->B; b++)
            for (int ih = 0; ih < d->H; ih++)
                for (int iw = 0; iw < d->W; iw++) {
                    float *dx = dinp + (((size_t)b * d->H + ih) * d->W + iw) * C;
                    for (int ki = 0; ki < d->KH; ki++) {
                        int oh_s = ih + p - ki; /* = oh·stride */
                        if (oh_s < 0 || oh_s % s || oh_s / s >= d->OH) continue;
                        for (int kj = 0; kj < d->KW; kj++) {
                            int ow_s = iw + p - kj;
                            if (ow_s < 0 || ow_s % s || ow_s / s >= d->OW) continue;
                            const float *g = dout + (((size_t)b * d->OH + oh_s / s) * d->OW + ow_s / s) * C;
                            const float *w_t = wt + (size_t)(ki * d->KW + kj) * C;
                            for (int c = 0; c < C; c++) dx[c] += g[c] * w_t[c];
                        }
                    }
                }
    }
    if (dbias) add_column_sums(dbias, sq, dout, d->B * d->OH * d->OW, C);
    else if (sq) add_column_squares(sq, dout, d->B * d->OH * d->OW, C);
    if (!dweight) return;
    /* a row of the weight is a channel: only the live channels' taps are summed */
    row_run runs[(C + 1) / 2];
    int n_runs = row_runs(runs, live_rows, C);
    if (!n_runs) return;
    size_t nw = (size_t)taps * C;
    memset(dwt, 0, nw * sizeof *dwt);
#pragma omp parallel for collapse(2) schedule(static) reduction(+ : dwt[:nw]) if (work > PAR_MIN)
    for (int b = 0; b < d->B; b++)
        for (int oh = 0; oh < d->OH; oh++)
            for (int ow = 0; ow < d->OW; ow++) {
                const float *g = dout + (((size_t)b * d->OH + oh) * d->OW + ow) * C;
                for (int ki = 0; ki < d->KH; ki++) {
                    int ih = oh * s - p + ki;
                    if (ih < 0 || ih >= d->H) continue;
                    for (int kj = 0; kj < d->KW; kj++) {
                        int iw = ow * s - p + kj;
                        if (iw < 0 || iw >= d->W) continue;
                        const float *x = inp + (((size_t)b * d->H + ih) * d->W + iw) * C;
                        float *dw_t = dwt + (size_t)(ki * d->KW + kj) * C;
                        for (int r = 0; r < n_runs; r++)
                            for (int c = runs[r].lo; c < runs[r].hi; c++) dw_t[c] += g[c] * x[c];
                    }
                }
            }
    for (int r = 0; r < n_runs; r++)
        for (int c = runs[r].lo; c < runs[r].hi; c++)
            for (int t = 0; t < taps; t++) dweight[(size_t)c * taps + t] += dwt[(size_t)t * C + c];
}

void fisher_conv2d_forward(float *out, float *scratch, const float *inp, const float *weight,
                           const float *bias, const fisher_conv2d_dims *d) {
    if (conv_is_depthwise(d)) {
        conv_depthwise_forward(out, scratch, inp, weight, bias, d);
        return;
    }
    int G = d->groups, ocg = d->OC / G, kg = (d->C / G) * d->KH * d->KW;
    int rows = d->B * d->OH * d->OW;
    float *wperm = scratch, *col = scratch + 2 * (size_t)d->OC * kg;
    conv_permute_weight(wperm, weight, d);
    const float *a = inp;
    if (!conv_is_pointwise(d)) {
        conv_im2col(col, inp, d);
        a = col;
    }
    for (int g = 0; g < G; g++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, ocg, kg, 1.0f,
                    a + (size_t)g * kg, G * kg, wperm + (size_t)g * ocg * kg, kg, 0.0f,
                    out + (size_t)g * ocg, d->OC);
    if (bias) add_bias_rows(out, bias, rows, d->OC);
}

/* fisher_conv2d_backward; with sq (OC) not NULL, Σ dout² per output
 * channel added into it on the bias gradient's pass over dout. */
static void conv2d_backward(float *dinp, float *dweight, float *dbias, double *sq, float *scratch,
                            const float *dout, const float *inp, const float *weight,
                            const uint8_t *live_rows, const fisher_conv2d_dims *d) {
    if (conv_is_depthwise(d)) {
        conv_depthwise_backward(dinp, dweight, dbias, sq, scratch, dout, inp, weight, live_rows, d);
        return;
    }
    int G = d->groups, ocg = d->OC / G, kg = (d->C / G) * d->KH * d->KW;
    int rows = d->B * d->OH * d->OW;
    float *wperm = scratch, *dwperm = scratch + (size_t)d->OC * kg;
    float *col = scratch + 2 * (size_t)d->OC * kg;
    int pointwise = conv_is_pointwise(d);
    if (dbias) add_column_sums(dbias, sq, dout, rows, d->OC);
    else if (sq) add_column_squares(sq, dout, rows, d->OC);
    row_run runs[(d->OC + 1) / 2];
    int n_runs = dweight ? row_runs(runs, live_rows, d->OC) : 0;
    if (n_runs) {
        const float *a = inp;
        if (!pointwise) {
            conv_im2col(col, inp, d);
            a = col;
        }
        /* per run of live rows, per group it overlaps: dwperm[lo:hi] of
         * rows o = g·OCg + local reads group g's columns of col */
        for (int i = 0; i < n_runs; i++)
            for (int g = runs[i].lo / ocg; g < G && g * ocg < runs[i].hi; g++) {
                int lo = runs[i].lo > g * ocg ? runs[i].lo : g * ocg;
                int hi = runs[i].hi < (g + 1) * ocg ? runs[i].hi : (g + 1) * ocg;
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, hi - lo, kg, rows, 1.0f,
                            dout + lo, d->OC, a + (size_t)g * kg, G * kg, 0.0f,
                            dwperm + (size_t)lo * kg, kg);
            }
        for (int i = 0; i < n_runs; i++)
            conv_unpermute_add(dweight, dwperm, runs[i].lo, runs[i].hi, d);
    }
    if (dinp) {
        conv_permute_weight(wperm, weight, d);
        if (pointwise) { /* dinp is the column matrix: accumulate straight into it */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, kg, d->OC, 1.0f, dout,
                        d->OC, wperm, kg, 1.0f, dinp, kg);
            return;
        }
        /* col's contents are no longer needed: it becomes dcol. */
        for (int g = 0; g < G; g++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, kg, ocg, 1.0f,
                        dout + (size_t)g * ocg, d->OC, wperm + (size_t)g * ocg * kg, kg, 0.0f,
                        col + (size_t)g * kg, G * kg);
        conv_col2im_add(dinp, col, d);
    }
}

void fisher_conv2d_backward(float *dinp, float *dweight, float *dbias, float *scratch,
                            const float *dout, const float *inp, const float *weight,
                            const uint8_t *live_rows, const fisher_conv2d_dims *d) {
    conv2d_backward(dinp, dweight, dbias, NULL, scratch, dout, inp, weight, live_rows, d);
}

static void conv_stats_h(float *H, const float *inp, const fisher_conv2d_dims *d, int has_bias);

/* S's squares of dout ride on the bias gradient's pass over dout (as
 * fisher_linear_backward_stats), instead of a pass of their own before the
 * backward: for the depthwise, patch and reduction convs of mit-b0 128×128
 * batch 4, backward(fisher) − backward(no statistics) at 1 thread went
 * 5.85 -> 4.7 ms CPU a step (medians, 2×40 paired steps). */
void fisher_conv2d_backward_stats(float *dinp, float *dweight, float *dbias, float *H, float *S,
                                  float *scratch, const float *dout, const float *inp,
                                  const float *weight, const uint8_t *live_rows,
                                  const fisher_conv2d_dims *d) {
    double sq[d->OC];
    memset(sq, 0, sizeof sq);
    if (H) conv_stats_h(H, inp, d, 1);
    conv2d_backward(dinp, dweight, dbias, sq, scratch, dout, inp, weight, live_rows, d);
    for (int o = 0; o < d->OC; o++) S[o] = (float)(sq[o] / ((double)d->B * d->OH * d->OW));
}

/* --------------------------------------------------------------- LayerNorm */

/* LN_ROWS rows at a time (k < LN_ROWS: o_k, x_k = o, x + k·C): o_k (C) =
 * normalised x_k (C) · w + b, mean[k] and rstd[k] = 1/std; with sq, sq (C)
 * += each o_k², row after row. A row's sums run over c in order, so its
 * bits do not depend on its neighbours; rows go eight at a time because
 * each sum is a chain of dependent float adds, and one short row's chain
 * (mit-b0: C = 32-256) left the core waiting. The forward and the forward
 * that also squares its output (layernorm_band) both call it, so the two
 * give the same bits. */
#define LN_ROWS 8
static inline __attribute__((always_inline)) void
layernorm_rows(float *restrict o, square_sums *sq, float *restrict mean, float *restrict rstd,
               const float *restrict x, const float *restrict w, const float *restrict b, int n, int C,
               float eps) {
    float m[LN_ROWS] = {0}, v[LN_ROWS] = {0}, s[LN_ROWS];
    for (int c = 0; c < C; c++)
        for (int k = 0; k < n; k++) m[k] += x[(size_t)k * C + c];
    for (int k = 0; k < n; k++) m[k] /= C;
    for (int c = 0; c < C; c++)
        for (int k = 0; k < n; k++) {
            float d = x[(size_t)k * C + c] - m[k];
            v[k] += d * d;
        }
    for (int k = 0; k < n; k++) {
        v[k] /= C;
        s[k] = 1.0f / sqrtf(v[k] + eps);
        mean[k] = m[k], rstd[k] = s[k];
    }
    for (int k = 0; k < n; k++) {
        const float *restrict xk = x + (size_t)k * C;
        float *restrict ok = o + (size_t)k * C;
        float mk = m[k], sk = s[k];
#pragma omp simd
        for (int c = 0; c < C; c++) ok[c] = (xk[c] - mk) * sk * w[c] + b[c];
        if (sq) square_sums_row(sq, ok);
    }
}

/* Rows [r0, r1) of a LayerNorm forward, LN_ROWS at a time (the count a
 * constant, so the sums stay in registers), the rest one by one. */
static inline __attribute__((always_inline)) void
layernorm_range(float *out, square_sums *sq, float *mean, float *rstd, const float *inp, const float *w,
                const float *b, int r0, int r1, int C, float eps) {
    int r = r0;
    for (; r + LN_ROWS <= r1; r += LN_ROWS)
        layernorm_rows(out + (size_t)r * C, sq, mean + r, rstd + r, inp + (size_t)r * C, w, b, LN_ROWS, C,
                       eps);
    for (; r < r1; r++)
        layernorm_rows(out + (size_t)r * C, sq, mean + r, rstd + r, inp + (size_t)r * C, w, b, 1, C, eps);
}

void fisher_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                              const float *weight, const float *bias, int R, int C, float eps) {
    int groups = (R + LN_ROWS - 1) / LN_ROWS;
#pragma omp parallel for schedule(static) if ((size_t)R * C > PAR_MIN)
    for (int g = 0; g < groups; g++) {
        int r0 = g * LN_ROWS, r1 = r0 + LN_ROWS < R ? r0 + LN_ROWS : R;
        layernorm_range(out, NULL, mean, rstd, inp, weight, bias, r0, r1, C, eps);
    }
}

/* acc (n) = (acc + x) in float, in shard order: the arithmetic of a
 * communicator summing ranks in rank order (see the _shards contract). */
static void add_f(float *acc, const float *x, int n) {
    for (int i = 0; i < n; i++) acc[i] += x[i];
}

/* dinp (R, C) += what the LayerNorm passes down, row by row. */
static void layernorm_backward_dinp(float *dinp, const float *dout, const float *inp,
                                    const float *weight, const float *mean, const float *rstd,
                                    int R, int C) {
#pragma omp parallel for schedule(static) if ((size_t)R * C > PAR_MIN)
    for (int r = 0; r < R; r++) {
        const float *x = inp + (size_t)r * C, *g = dout + (size_t)r * C;
        float *dx = dinp + (size_t)r * C;
        float m = mean[r], s = rstd[r];
        float sum_dn = 0.0f, sum_dn_n = 0.0f; /* Σ dnorm, Σ dnorm·norm */
        for (int c = 0; c < C; c++) {
            float dn = g[c] * weight[c];
            sum_dn += dn, sum_dn_n += dn * ((x[c] - m) * s);
        }
        sum_dn /= C, sum_dn_n /= C;
        for (int c = 0; c < C; c++) {
            float n = (x[c] - m) * s;
            dx[c] += s * (g[c] * weight[c] - sum_dn - n * sum_dn_n);
        }
    }
}

/* One band of rows [r0, r1) of the LayerNorm's parameter-gradient pass:
 * dw += dout·x̂, db += dout (db may be NULL) and cs += dout in double (cs
 * may be NULL; the statistics' S). An OpenMP array reduction kept this
 * loop scalar (GCC does not vectorise through the privatised arrays);
 * bands with restrict partials vectorise, cloned like add_rows_squares.
 * Each dw[c], db[c], cs[c] is still summed row by row in row order, so
 * the vectors change no bit. */
__attribute__((target_clones("avx512f", "avx2", "default"))) static void
layernorm_grad_rows(float *restrict dw, float *restrict db, double *restrict cs,
                    const float *restrict inp, const float *restrict dout, const float *restrict mean,
                    const float *restrict rstd, int r0, int r1, int C) {
    for (int r = r0; r < r1; r++) {
        const float *x = inp + (size_t)r * C, *g = dout + (size_t)r * C;
        float m = mean[r], s = rstd[r];
#pragma omp simd
        for (int c = 0; c < C; c++) dw[c] += g[c] * ((x[c] - m) * s);
        if (db) {
#pragma omp simd
            for (int c = 0; c < C; c++) db[c] += g[c];
        }
        if (cs) {
#pragma omp simd
            for (int c = 0; c < C; c++) cs[c] += g[c];
        }
    }
}

typedef struct {
    float *dweight, *dbias;
    double *colsum;
    const float *dout, *inp, *mean, *rstd;
    int C;
} layernorm_grads_job;

/* A band's partials: cs (C doubles), then dw and db (C floats each). */
static void layernorm_grads_band(const void *ctx, double *restrict cs, int r0, int r1) {
    const layernorm_grads_job *j = ctx;
    float *dw = (float *)(cs + j->C), *db = dw + j->C;
    layernorm_grad_rows(dw, j->dbias ? db : NULL, j->colsum ? cs : NULL, j->inp, j->dout, j->mean,
                        j->rstd, r0, r1, j->C);
}

static void layernorm_grads_fold(void *ctx, const double *cs) {
    layernorm_grads_job *j = ctx;
    int C = j->C;
    const float *dw = (const float *)(cs + C), *db = dw + C;
    for (int c = 0; j->dweight && c < C; c++) j->dweight[c] += dw[c];
    for (int c = 0; j->dbias && c < C; c++) j->dbias[c] += db[c];
    for (int c = 0; j->colsum && c < C; c++) j->colsum[c] += cs[c];
}

/* The LayerNorm's parameter gradients over R rows, added into dweight and
 * dbias (either may be NULL; one pass for both), and with colsum (C) not
 * NULL Σ_r dout per column written there (banded_partials). */
static void layernorm_param_grads(float *dweight, float *dbias, double *colsum, const float *dout,
                                  const float *inp, const float *mean, const float *rstd, int R,
                                  int C) {
    if (colsum) memset(colsum, 0, (size_t)C * sizeof *colsum);
    layernorm_grads_job j = {dweight, dbias, colsum, dout, inp, mean, rstd, C};
    banded_partials(layernorm_grads_band, layernorm_grads_fold, &j, R, 2 * (size_t)C, (size_t)C);
}

void fisher_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                               const float *inp, const float *weight, const float *mean,
                               const float *rstd, int R, int C) {
    if (dweight || dbias)
        layernorm_param_grads(dweight, dbias, NULL, dout, inp, mean, rstd, R, C);
    if (dinp) layernorm_backward_dinp(dinp, dout, inp, weight, mean, rstd, R, C);
}

/* LayerNorm's H and S (layers.h) over B·N rows from what its backward
 * holds: u[n] = Σ_{b,c} x / C² is Σ_b mean[b,n] / C with the forward's row
 * means, and S's column sums of dout come from the parameter-gradient
 * pass. */
static void layernorm_stats_from_sums(float *H, float *S, const float *mean, const double *colsum,
                                      int B, int N, int C) {
    double h0 = 0;
    for (int n = 0; n < N; n++) {
        double un = 0;
        for (int b = 0; b < B; b++) un += mean[(size_t)b * N + n];
        un /= C;
        h0 += un * un;
    }
    for (int c = 0; c < C; c++) S[c] = (float)(colsum[c] * colsum[c] / B);
    H[0] = (float)(h0 / ((double)B * B));
    H[1] = (float)((double)N / ((double)B * B));
}

/* The statistics from what forward and backward already hold (§1): the
 * forward's row means for H, and Σ_r dout per column for S added to the
 * parameter-gradient pass, which reads every row of dout anyway — instead
 * of a second pass over inp and dout (fisher_stats_layernorm: with the
 * BatchNorm's column sums, 2.2 ms a step of perf samples on mit-b0 128×128
 * batch 4 at 1 thread; see fisher_linear_backward_stats for the step).
 * The means are float, so H[0] differs from fisher_stats_layernorm's
 * double sums: on mit-b0 at 1 and 2 threads by ≤ 4e-6 relative where
 * H[0] > 1e-10, by more only where the token means cancel (H[0] < 1e-15,
 * float noise in the reference's float32 sums too), and never more than
 * 1e-13 of the layer's largest H (H[1] = N/B²; parity tolerance 1e-4 of
 * it, rtol 1e-3). Shards: each shard's rows in turn through the same
 * pass, so a rank's own batch and a one-process shard of it give the same
 * bits; their statistics averaged as fisher_stats_layernorm_shards does. */
void fisher_layernorm_backward_stats(float *dinp, float *dweight, float *dbias, float *H, float *S,
                                     const float *dout, const float *inp, const float *weight,
                                     const float *mean, const float *rstd, int B, int N, int C,
                                     int shards) {
    if (shards < 1) shards = 1;
    int b = B / shards, Rk = b * N;
    double colsum[C];
    float h[2], sk[C];
    for (int k = 0; k < shards; k++) {
        size_t at = (size_t)k * Rk;
        layernorm_param_grads(dweight, dbias, colsum, dout + at * C, inp + at * C, mean + at,
                              rstd + at, Rk, C);
        layernorm_stats_from_sums(k ? h : H, k ? sk : S, mean + at, colsum, b, N, C);
        if (k) add_f(H, h, 2), add_f(S, sk, C);
    }
    for (int i = 0; shards > 1 && i < 2; i++) H[i] /= (float)shards;
    for (int c = 0; shards > 1 && c < C; c++) S[c] /= (float)shards;
    if (dinp) layernorm_backward_dinp(dinp, dout, inp, weight, mean, rstd, B * N, C);
}

/* --------------------------------------------------------------- BatchNorm */

void fisher_batchnorm_forward_train(float *out, float *mean, float *rstd, float *running_mean,
                                    float *running_var, const float *inp, const float *weight,
                                    const float *bias, int R, int C, float momentum, float eps) {
    fisher_batchnorm_forward_train_sync(out, mean, rstd, running_mean, running_var, inp, weight, bias,
                                        R, C, momentum, eps, NULL, NULL, NULL); /* cannot fail alone */
}

int fisher_batchnorm_forward_train_sync(float *out, float *mean, float *rstd, float *running_mean,
                                        float *running_var, const float *inp, const float *weight,
                                        const float *bias, int R, int C, float momentum, float eps,
                                        double *local_sums, fisher_comm *comm, fisher_error *err) {
    int par = (size_t)R * C > PAR_MIN;
    double sum[C + 1], sq[C]; /* sum[C]: the rows, so the global count comes with the sums */
    for (int c = 0; c < C; c++) sum[c] = 0.0, sq[c] = 0.0;
    sum[C] = (double)R;
#pragma omp parallel for schedule(static) reduction(+ : sum[:C]) if (par)
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) sum[c] += inp[(size_t)r * C + c];
    if (local_sums) memcpy(local_sums, sum, (size_t)C * sizeof *sum);
    if (fisher_comm_sum_f64(comm, sum, (size_t)C + 1, err)) return -1;
    double rows = sum[C]; /* of the global batch */
    for (int c = 0; c < C; c++) mean[c] = (float)(sum[c] / rows);
#pragma omp parallel for schedule(static) reduction(+ : sq[:C]) if (par)
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            double x = (double)inp[(size_t)r * C + c] - mean[c];
            sq[c] += x * x;
        }
    /* the second pass around the global mean, as one process does: a
     * one-pass Σx² − n·mean² would lose digits to cancellation */
    if (fisher_comm_sum_f64(comm, sq, (size_t)C, err)) return -1;
    for (int c = 0; c < C; c++) {
        double var = sq[c] / rows;
        rstd[c] = (float)(1.0 / sqrt(var + eps));
        double unbiased = rows > 1 ? sq[c] / (rows - 1) : var;
        running_mean[c] = (1.0f - momentum) * running_mean[c] + momentum * mean[c];
        running_var[c] = (1.0f - momentum) * running_var[c] + momentum * (float)unbiased;
    }
#pragma omp parallel for schedule(static) if (par)
    for (int r = 0; r < R; r++) {
        const float *x = inp + (size_t)r * C;
        float *o = out + (size_t)r * C;
        for (int c = 0; c < C; c++) o[c] = (x[c] - mean[c]) * rstd[c] * weight[c] + bias[c];
    }
    return 0;
}

void fisher_batchnorm_forward_eval(float *out, const float *inp, const float *weight,
                                   const float *bias, const float *running_mean,
                                   const float *running_var, int R, int C, float eps) {
    float scale[C], shift[C];
    for (int c = 0; c < C; c++) {
        scale[c] = weight[c] / sqrtf(running_var[c] + eps);
        shift[c] = bias[c] - running_mean[c] * scale[c];
    }
#pragma omp parallel for schedule(static) if ((size_t)R * C > PAR_MIN)
    for (int r = 0; r < R; r++) {
        const float *x = inp + (size_t)r * C;
        float *o = out + (size_t)r * C;
        for (int c = 0; c < C; c++) o[c] = x[c] * scale[c] + shift[c];
    }
}

void fisher_batchnorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                               const float *inp, const float *weight, const float *mean,
                               const float *rstd, int R, int C) {
    fisher_batchnorm_backward_sync(dinp, dweight, dbias, dout, inp, weight, mean, rstd, R, C, NULL,
                                   NULL); /* cannot fail alone */
}

/* BatchNorm's H (layers.h) from the column sums of its input over B·P
 * rows, in double. */
void fisher_stats_batchnorm_h(float *H, const double *sums, int B, int P, int C) {
    double h0 = 0;
    for (int c = 0; c < C; c++) {
        double uc = sums[c] / ((double)P * P);
        h0 += uc * uc;
    }
    H[0] = (float)(h0 / ((double)B * B));
    H[1] = (float)((double)C / ((double)B * B));
}

/* Its S from the column sums of its output gradient. */
static void batchnorm_s_from_sums(float *S, const double *sg, int B, int C) {
    for (int c = 0; c < C; c++) S[c] = (float)(sg[c] * sg[c] / B);
}

/* One band of rows [r0, r1) of the BatchNorm backward's sums: sg += dout,
 * sgn += dout·x̂, in double. Vectorised bands instead of an OpenMP array
 * reduction, which GCC leaves scalar (see layernorm_grad_rows); each sum
 * still runs row by row in row order. */
__attribute__((target_clones("avx512f", "avx2", "default"))) static void
batchnorm_sum_rows(double *restrict sg, double *restrict sgn, const float *restrict inp,
                   const float *restrict dout, const float *restrict mean, const float *restrict rstd,
                   int r0, int r1, int C) {
    for (int r = r0; r < r1; r++) {
        const float *x = inp + (size_t)r * C, *g = dout + (size_t)r * C;
#pragma omp simd
        for (int c = 0; c < C; c++) {
            sg[c] += g[c];
            sgn[c] += (double)g[c] * ((x[c] - mean[c]) * rstd[c]);
        }
    }
}

typedef struct {
    double *sum_g, *sum_gn;
    const float *dout, *inp, *mean, *rstd;
    int C;
} batchnorm_sums_job;

/* A band's partials: sg, then sgn (C doubles each). */
static void batchnorm_sums_band(const void *ctx, double *restrict p, int r0, int r1) {
    const batchnorm_sums_job *j = ctx;
    batchnorm_sum_rows(p, p + j->C, j->inp, j->dout, j->mean, j->rstd, r0, r1, j->C);
}

static void batchnorm_sums_fold(void *ctx, const double *p) {
    batchnorm_sums_job *j = ctx;
    for (int c = 0; c < j->C; c++) j->sum_g[c] += p[c], j->sum_gn[c] += p[j->C + c];
}

/* sum_g, sum_gn (C each) = those sums over R rows (banded_partials). */
static void batchnorm_sums(double *sum_g, double *sum_gn, const float *dout, const float *inp,
                           const float *mean, const float *rstd, int R, int C) {
    for (int c = 0; c < C; c++) sum_g[c] = 0.0, sum_gn[c] = 0.0;
    batchnorm_sums_job j = {sum_g, sum_gn, dout, inp, mean, rstd, C};
    banded_partials(batchnorm_sums_band, batchnorm_sums_fold, &j, R, 2 * (size_t)C, (size_t)C);
}

typedef struct {
    float *dinp;
    const float *dout, *inp, *mean, *rstd, *k, *mg, *mgn;
    int C;
} batchnorm_dinp_job;

/* Rows [r0, r1) of BatchNorm's dinp (·, C) += k·(dout − mean(dout) −
 * norm·mean(dout·norm)); with sq, sq (C) += the updated dinp's squares (the
 * S of the layer whose output gradient dinp is, summed as its own pass
 * would: a column_band). */
__attribute__((target_clones("avx512f", "avx2", "default"))) static void
batchnorm_dinp_band(const void *ctx, double *restrict sq, int r0, int r1) {
    const batchnorm_dinp_job *j = ctx;
    int C = j->C;
    const float *restrict k = j->k, *restrict mg = j->mg, *restrict mgn = j->mgn;
    const float *restrict mean = j->mean, *restrict rstd = j->rstd;
    SQUARE_SUMS(squares, sq, C);
    for (int r = r0; r < r1; r++) {
        const float *restrict x = j->inp + (size_t)r * C, *restrict g = j->dout + (size_t)r * C;
        float *restrict dx = j->dinp + (size_t)r * C;
#pragma omp simd
        for (int c = 0; c < C; c++) {
            float n = (x[c] - mean[c]) * rstd[c];
            dx[c] += k[c] * (g[c] - mg[c] - n * mgn[c]);
        }
        if (sq) square_sums_row(&squares, dx);
    }
    if (sq) square_sums_flush(&squares);
}

int fisher_batchnorm_backward_sync(float *dinp, float *dweight, float *dbias, const float *dout,
                                   const float *inp, const float *weight, const float *mean,
                                   const float *rstd, int R, int C, fisher_comm *comm,
                                   fisher_error *err) {
    return fisher_batchnorm_backward_sync_stats(dinp, dweight, dbias, NULL, NULL, dout, inp, weight, mean,
                                                rstd, 1, R, C, comm, err);
}

/* S rides on the pass that sums dout and dout·x̂ per channel: Σ dout is
 * already there (a separate pass over inp and dout for H and S, 4 MB each on
 * mit-b0 128×128 batch 4, had cost 0.6 ms a step at 1 thread; H's Σx in this
 * pass, another 0.17 ms at 2 threads, before the forward's sums gave it).
 * Local sums, taken before any all-reduce: S is each rank's own (layers.h). */
int fisher_batchnorm_backward_sync_stats(float *dinp, float *dweight, float *dbias, float *S,
                                         double *dinp_sq, const float *dout, const float *inp,
                                         const float *weight, const float *mean, const float *rstd,
                                         int B, int P, int C, fisher_comm *comm, fisher_error *err) {
    int R = B * P, par = (size_t)R * C > PAR_MIN;
    /* Σ dout, Σ dout·norm per channel, and the rows: one buffer, one all-reduce */
    double sums[2 * C + 1], *sum_g = sums, *sum_gn = sums + C;
    sums[2 * C] = (double)R;
    batchnorm_sums(sum_g, sum_gn, dout, inp, mean, rstd, R, C);
    if (S) batchnorm_s_from_sums(S, sum_g, B, C);
    /* the local sums: the gradient all-reduce adds the ranks' up */
    for (int c = 0; c < C; c++) {
        if (dweight) dweight[c] += (float)sum_gn[c];
        if (dbias) dbias[c] += (float)sum_g[c];
    }
    if (!dinp) return 0;
    if (fisher_comm_sum_f64(comm, sums, 2 * (size_t)C + 1, err)) return -1;
    double rows = sums[2 * C];
    float k[C], mg[C], mgn[C];
    for (int c = 0; c < C; c++) {
        k[c] = weight[c] * rstd[c];
        mg[c] = (float)(sum_g[c] / rows), mgn[c] = (float)(sum_gn[c] / rows);
    }
    batchnorm_dinp_job j = {dinp, dout, inp, mean, rstd, k, mg, mgn, C};
    if (dinp_sq) {
        column_bands(batchnorm_dinp_band, &j, dinp_sq, R, C, (size_t)C);
        return 0;
    }
#pragma omp parallel if (par)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        batchnorm_dinp_band(&j, NULL, (int)((long)t * R / nt), (int)((long)(t + 1) * R / nt));
    }
    return 0;
}

/* ------------------------------------------------------------- Elementwise */

static const float inv_sqrt_2 = 0.70710678118654752f;

void fisher_gelu_forward(float *out, const float *inp, size_t n) {
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = 0.5f * inp[i] * (1.0f + erff(inp[i] * inv_sqrt_2));
}

void fisher_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n) {
    const float inv_sqrt_2pi = 0.3989422804014327f;
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float cdf = 0.5f * (1.0f + erff(x * inv_sqrt_2));
        float pdf = inv_sqrt_2pi * expf(-0.5f * x * x);
        dinp[i] += dout[i] * (cdf + x * pdf);
    }
}

void fisher_relu_forward(float *out, const float *inp, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
}

void fisher_relu_backward(float *dinp, const float *dout, const float *out, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) dinp[i] += out[i] > 0.0f ? dout[i] : 0.0f;
}

void fisher_add_inplace(float *out, const float *inp, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] += inp[i];
}

/* ------------------------------------- Forwards that square their output */
/* A layer's H is the column squares of its input, which the forward of the
 * layer before produces: summing them as each output row is written costs
 * arithmetic on values in registers, where the backward's statistics pass
 * read the whole tensor again from memory (7 GB/s: cold by then). For the
 * linear layers reading a LayerNorm (q, fc1, the decode head's lc_s), the
 * classifier reading ReLU and linear_fuse's lc_0 block, on mit-b0 128×128
 * batch 4 at 1 thread: forward+backward(fisher) − (no statistics) 5.0-5.2
 * -> 2.9-3.7 ms CPU a step (3×40 paired steps). Not GELU's output (fc2):
 * squared inside its erff loop it cost more than it saved in the backward
 * (2 ms for 0.6 ms; again +1.1 ms forward for −0.6 ms backward at 2
 * threads): segformer.c sums fc2's H in a pass of its own right after GELU,
 * while the output is still in cache. */

typedef struct {
    float *out, *mean, *rstd;
    const float *inp, *weight, *bias;
    int C;
    float eps;
} layernorm_job;

/* The bands below write each output row with the plain forward's
 * arithmetic and square it while it is in L1 (vectorised, cloned like
 * add_rows_squares; no contraction under -std=c11, so the same bits). */
__attribute__((target_clones("avx512f", "avx2", "default"))) static void
layernorm_band(const void *ctx, double *restrict sq, int r0, int r1) {
    const layernorm_job *j = ctx;
    int C = j->C;
    SQUARE_SUMS(squares, sq, C);
    layernorm_range(j->out, &squares, j->mean, j->rstd, j->inp, j->weight, j->bias, r0, r1, C, j->eps);
    square_sums_flush(&squares);
}

void fisher_layernorm_forward_squares(float *out, float *mean, float *rstd, double *sq,
                                      const float *inp, const float *weight, const float *bias, int R,
                                      int C, float eps) {
    layernorm_job j = {out, mean, rstd, inp, weight, bias, C, eps};
    column_bands(layernorm_band, &j, sq, R, C, (size_t)C);
}

typedef struct {
    float *out;
    const float *inp;
    int C;
} rows_job;

__attribute__((target_clones("avx512f", "avx2", "default"))) static void
relu_band(const void *ctx, double *restrict sq, int r0, int r1) {
    const rows_job *j = ctx;
    int C = j->C;
    SQUARE_SUMS(squares, sq, C);
    for (int r = r0; r < r1; r++) {
        const float *restrict x = j->inp + (size_t)r * C;
        float *restrict o = j->out + (size_t)r * C;
#pragma omp simd
        for (int c = 0; c < C; c++) o[c] = x[c] > 0.0f ? x[c] : 0.0f;
        square_sums_row(&squares, o);
    }
    square_sums_flush(&squares);
}

void fisher_relu_forward_squares(float *out, double *sq, const float *inp, int R, int C) {
    rows_job j = {out, inp, C};
    column_bands(relu_band, &j, sq, R, C, (size_t)C);
}

__attribute__((target_clones("avx512f", "avx2", "default"))) static void
bias_band(const void *ctx, double *restrict sq, int r0, int r1) {
    const rows_job *j = ctx; /* inp is the bias */
    int C = j->C;
    const float *restrict bias = j->inp;
    SQUARE_SUMS(squares, sq, C);
    for (int r = r0; r < r1; r++) {
        float *restrict o = j->out + (size_t)r * C;
#pragma omp simd
        for (int c = 0; c < C; c++) o[c] += bias[c];
        square_sums_row(&squares, o);
    }
    square_sums_flush(&squares);
}

void fisher_linear_forward_squares(float *out, double *sq, const float *inp, const float *weight,
                                   const float *bias, int R, int IC, int OC) {
    fisher_linear_slice_forward(out, inp, weight, IC, R, IC, OC, 0);
    rows_job j = {out, bias, OC};
    column_bands(bias_band, &j, sq, R, OC, (size_t)OC);
}

static int conv_patch_squares(double *h, const float *inp, const fisher_conv2d_dims *d);
static void conv_patch_squares_direct(double *h, const float *inp, const fisher_conv2d_dims *d);
static size_t s1_per(const fisher_conv2d_dims *d);
static int s1_applies(const fisher_conv2d_dims *d);
static inline void s1_add_edge_pixel(double *restrict rec, const float *restrict x, int iw,
                                     const fisher_conv2d_dims *d);
static void s1_assemble(double *h, double *rec, const fisher_conv2d_dims *d);
static void add_d(double *restrict acc, const double *restrict v, size_t n);

/* Rows [r0, r1) of out (·, C): the bias added, then each pixel's squares
 * into its image row's record in rec (H records of s1_per(d)). Cloned like
 * add_rows_squares: inside the parallel region below the loop had been
 * compiled for SSE2. */
__attribute__((target_clones("avx512f", "avx2", "default"))) static void
patch_record_rows(double *restrict rec, float *restrict out, const float *restrict bias, int r0, int r1,
                  const fisher_conv2d_dims *d) {
    int C = d->C, H = d->H, W = d->W;
    size_t per = s1_per(d);
    SQUARE_SUMS(squares, rec, C); /* the image row's sum: a record's first C */
    for (int r = r0; r < r1; r++) {
        float *restrict o = out + (size_t)r * C;
#pragma omp simd
        for (int c = 0; c < C; c++) o[c] += bias[c];
        double *row = rec + (size_t)(r / W % H) * per;
        if (row != squares.acc) square_sums_flush(&squares), squares.acc = row;
        square_sums_row(&squares, o);
        s1_add_edge_pixel(row, o, r % W, d);
    }
    square_sums_flush(&squares);
}

/* The linear forward feeding a conv (d: its input is this output) that
 * also leaves the conv's patch squares in h (C/G·KH·KW, as
 * fisher_stats_conv sums them): for a stride-1 conv, row records summed
 * as the bias is added (threads' records added in thread order), else the
 * conv's own pass over the output. The patch squares of mit-b0's depthwise
 * convs were a cold read of their 8 MB of input a step in the backward;
 * here, mit-b0 128×128 batch 4 at 1 thread, forward+backward(fisher) −
 * (no statistics) went 3.7-4.3 -> 2.8-3.75 ms CPU (3×40 paired steps).
 * (The same records in the backward, from the cold input, measured no
 * faster than conv_patch_squares: the read is the cost.) The
 * records live in the caller's scratch: allocated per call they were
 * fresh pages (mmap-sized) to fault in and clear every step (1.3 ms). */
size_t fisher_patch_squares_scratch(const fisher_conv2d_dims *d, int threads) {
    return (size_t)(threads > 1 ? threads : 1) * partial_stride((size_t)d->H * s1_per(d));
}

void fisher_linear_forward_patch_squares(float *out, double *h, double *scratch, size_t scratch_len,
                                         const float *inp, const float *weight, const float *bias,
                                         int IC, const fisher_conv2d_dims *d) {
    int R = d->B * d->H * d->W, C = d->C, H = d->H;
    fisher_linear_slice_forward(out, inp, weight, IC, R, IC, C, 0);
    size_t per = s1_per(d);
    int T = (size_t)R * C > PAR_MIN ? omp_get_max_threads() : 1;
    if (T > R) T = R;
    size_t need = fisher_patch_squares_scratch(d, T);
    double *rec = NULL;
    /* the records cost T·H·s1_per doubles to clear and fold whatever the
     * pixels, 2·KW − 1 per batch row of W pixels and thread: they pay on
     * wide images only (mit-b0's fc1 at 128×128 batch 4, 2 threads, best of
     * 200: they add ≤ 9 µs to the forward at 32×32 and 16×16, where the
     * conv's own pass takes 65 and 35 µs, but 26 and 45 µs at 8×8 and 4×4,
     * where it takes 22 and 11 µs) */
    int records_pay = (size_t)d->B * d->W >= 4 * (size_t)T * (2 * d->KW - 1);
    if (s1_applies(d) && records_pay)
        rec = scratch && scratch_len >= need ? scratch : fisher_scratch_alloc(need);
    if (!rec) {
        add_bias_rows(out, bias, R, C);
        if (conv_patch_squares(h, out, d)) conv_patch_squares_direct(h, out, d);
        return;
    }
    /* Each thread clears its own records and then adds a slice of every
     * later thread's into the first, each element still summed in thread
     * order (the serial add_d's bits). Done serially after the team, the
     * clear (T·H·per doubles: 320 KB a call on mit-b0 128×128 at 2
     * threads, 8 calls a step) and the fold left one core idle. mit-b0
     * 128×128 batch 4, 2 threads, forward+backward(fisher) − (no
     * statistics), median of 40 paired steps, 7 alternating rounds: lower
     * in 6, by 0.2 ms a round at the median (5.6 -> 4.7 ms over the
     * rounds' medians; busy machine, ±0.5 ms round to round). */
    size_t len = partial_stride((size_t)H * per);
#pragma omp parallel num_threads(T) if (T > 1)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        double *mine = rec + (size_t)t * len;
        memset(mine, 0, len * sizeof *mine);
        patch_record_rows(mine, out, bias, (int)((long)t * R / nt), (int)((long)(t + 1) * R / nt), d);
        if (nt > 1) {
#pragma omp barrier
            size_t i0 = len * t / nt, i1 = len * (t + 1) / nt;
            for (int u = 1; u < nt; u++) add_d(rec + i0, rec + (size_t)u * len + i0, i1 - i0);
        }
    }
    s1_assemble(h, rec, d);
    if (rec != scratch) fisher_scratch_free(rec);
}

/* --------------------------------------------------------------- Attention */
/* Head h of batch b is a strided view: rows of C floats, columns
 * [h·hd, (h+1)·hd). sgemm's leading dimensions let every product read and
 * write those views in place, so heads are never split or merged in memory. */

void fisher_attention_forward(float *out, float *att, const float *q, const float *k,
                              const float *v, int B, int N, int M, int C, int NH) {
    int hd = C / NH;
    float scale = 1.0f / sqrtf((float)hd);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const float *q_bh = q + (size_t)b * N * C + h * hd;
            const float *k_bh = k + (size_t)b * M * C + h * hd;
            const float *v_bh = v + (size_t)b * M * C + h * hd;
            float *att_bh = att + ((size_t)b * NH + h) * N * M;
            float *out_bh = out + (size_t)b * N * C + h * hd;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, M, hd, scale, q_bh, C, k_bh,
                        C, 0.0f, att_bh, M);
            for (int i = 0; i < N; i++) {
                float *row = att_bh + (size_t)i * M, mx = row[0], sum = 0.0f;
                for (int j = 1; j < M; j++) mx = row[j] > mx ? row[j] : mx;
                for (int j = 0; j < M; j++) sum += (row[j] = expf(row[j] - mx));
                for (int j = 0; j < M; j++) row[j] /= sum;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, hd, M, 1.0f, att_bh, M,
                        v_bh, C, 0.0f, out_bh, C);
        }
}

size_t fisher_attention_scratch_floats(int N, int M) { return (size_t)N * M; }

void fisher_attention_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout,
                               const float *q, const float *k, const float *v, const float *att,
                               int B, int N, int M, int C, int NH) {
    int hd = C / NH;
    float scale = 1.0f / sqrtf((float)hd);
    float *dscore = scratch; /* (N, M): first d(att), then d(pre-softmax scores) */
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            size_t qo = (size_t)b * N * C + h * hd, ko = (size_t)b * M * C + h * hd;
            const float *att_bh = att + ((size_t)b * NH + h) * N * M;
            const float *dout_bh = dout + qo;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, M, hd, 1.0f, dout_bh, C,
                        v + ko, C, 0.0f, dscore, M);
            if (dv)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, M, hd, N, 1.0f, att_bh, M,
                            dout_bh, C, 1.0f, dv + ko, C);
            for (int i = 0; i < N; i++) { /* softmax backward: p·(g − Σ p·g) */
                const float *p = att_bh + (size_t)i * M;
                float *g = dscore + (size_t)i * M, dot = 0.0f;
                for (int j = 0; j < M; j++) dot += p[j] * g[j];
                for (int j = 0; j < M; j++) g[j] = p[j] * (g[j] - dot);
            }
            if (dq)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, hd, M, scale, dscore, M,
                            k + ko, C, 1.0f, dq + qo, C);
            if (dk)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, M, hd, N, scale, dscore, M,
                            q + qo, C, 1.0f, dk + ko, C);
        }
}

/* ------------------------------------------------------ Fisher statistics */
/* Sums of squares run in float blocks added in double (square_sums): within
 * 1e-6 of the exact value, which the reference's float32 sums approximate
 * too, and the parity tolerance (1e-3) covers both. */

/* acc (C) += Σ over rows [r0, r1) of m (·, C) squared, per column: the loop
 * the statistics of linear and conv layers spend their time in. Cloned for
 * AVX-512 and AVX2, dispatched at load: the same multiplies and adds in the
 * same order (no contraction under -std=c11) on wider vectors, so every
 * clone gives the same sums. Called once per thread, not per row: a
 * dispatched call per row cost more than the wider vectors saved. */
__attribute__((target_clones("avx512f", "avx2", "default"))) static void
add_rows_squares(double *restrict acc, const float *restrict m, int r0, int r1, int C) {
    SQUARE_SUMS(squares, acc, C);
    for (int r = r0; r < r1; r++) square_sums_row(&squares, m + (size_t)r * C);
    square_sums_flush(&squares);
}

/* acc (C) += Σ over rows [r0, r1) of m (·, C), per column (column_sums_d's
 * loop, cloned like add_rows_squares). */
__attribute__((target_clones("avx512f", "avx2", "default"))) static void
add_rows(double *restrict acc, const float *restrict m, int r0, int r1, int C) {
    for (int r = r0; r < r1; r++) {
        const float *m_r = m + (size_t)r * C;
#pragma omp simd
        for (int c = 0; c < C; c++) acc[c] += m_r[c];
    }
}

typedef void rows_kernel(double *restrict acc, const float *restrict m, int r0, int r1, int C);

typedef struct {
    const float *m;
    int C;
    rows_kernel *kernel;
} columns_job;

static void columns_band(const void *ctx, double *restrict acc, int r0, int r1) {
    const columns_job *j = ctx;
    j->kernel(acc, j->m, r0, r1, j->C);
}

/* acc (C) += kernel over all R rows of m (R, C), in column_bands' bands. */
static void add_columns(double *acc, const float *m, int R, int C, rows_kernel *kernel) {
    columns_job j = {m, C, kernel};
    column_bands(columns_band, &j, acc, R, C, (size_t)C);
}

/* acc (C) += Σ_rows m[r,c]² over m (R, C). */
static void add_column_squares(double *acc, const float *m, int R, int C) {
    add_columns(acc, m, R, C, add_rows_squares);
}

void fisher_stats_linear_h(float *H, const double *sq, int R, int IC, int has_bias) {
    for (int j = 0; j < IC; j++) H[j] = (float)(sq[j] / R);
    if (has_bias) H[IC] = 1.0f; /* the constant-1 column: Σ 1 / R */
}

void fisher_stats_linear(float *H, float *S, const float *inp, const float *dout, int R, int IC,
                         int OC, int has_bias) {
    double h[IC], sq[OC];
    memset(h, 0, sizeof h), memset(sq, 0, sizeof sq);
    if (H) add_column_squares(h, inp, R, IC);
    if (S) add_column_squares(sq, dout, R, OC);
    if (H) fisher_stats_linear_h(H, h, R, IC, has_bias);
    for (int o = 0; S && o < OC; o++) S[o] = (float)(sq[o] / R);
}

/* h (K) = Σ over every (batch, group, position) patch of its squares: the
 * direct loop. Only the fallback when conv_patch_squares has no memory. */
static void conv_patch_squares_direct(double *h, const float *inp, const fisher_conv2d_dims *d) {
    int G = d->groups, cg = d->C / G, K = cg * d->KH * d->KW, P = d->OH * d->OW;
    memset(h, 0, (size_t)K * sizeof *h);
#pragma omp parallel for collapse(2) schedule(static) reduction(+ : h[:K]) \
    if ((size_t)d->B * P * K * G > PAR_MIN)
    for (int b = 0; b < d->B; b++)
        for (int oh = 0; oh < d->OH; oh++)
            for (int ow = 0; ow < d->OW; ow++)
                for (int ki = 0; ki < d->KH; ki++) {
                    int ih = oh * d->stride - d->pad + ki;
                    if (ih < 0 || ih >= d->H) continue;
                    for (int kj = 0; kj < d->KW; kj++) {
                        int iw = ow * d->stride - d->pad + kj;
                        if (iw < 0 || iw >= d->W) continue;
                        const float *x = inp + (((size_t)b * d->H + ih) * d->W + iw) * d->C;
                        for (int g = 0; g < G; g++)
                            for (int ci = 0; ci < cg; ci++) {
                                double v = x[g * cg + ci];
                                h[(ci * d->KH + ki) * d->KW + kj] += v * v;
                            }
                    }
                }
}

/* a (G·cg) -> a (cg): the sum of the G groups, folded in halves so every
 * step is one contiguous, vectorisable add. */
static void fold_groups(double *a, int G, int cg) {
    while (G > 1) {
        int keep = (G + 1) / 2;
        size_t n = (size_t)(G - keep) * cg;
        const double *hi = a + (size_t)keep * cg;
#pragma omp simd
        for (size_t j = 0; j < n; j++) a[j] += hi[j];
        G = keep;
    }
}

/* acc (n) += v (n) */
static void add_d(double *restrict acc, const double *restrict v, size_t n) {
#pragma omp simd
    for (size_t j = 0; j < n; j++) acc[j] += v[j];
}

/* Stride-1 patch squares by rows. Tap (ki, kj) of a stride-1 conv reads
 * the inputs of rows [ki − pad, ki − pad + OH) × columns [kj − pad, kj −
 * pad + OW), clipped to the image. Per input row, the squares summed over
 * batch and columns (C), then per edge column apart (2e·C, e = KW − 1
 * columns at each edge, 2e ≤ W): "row records" of s1_per(d) doubles. A
 * tap's sum is its rows' records less the edge columns it does not read. */
static size_t s1_per(const fisher_conv2d_dims *d) { return (size_t)(1 + 2 * (d->KW - 1)) * d->C; }

static int s1_applies(const fisher_conv2d_dims *d) {
    return d->stride == 1 && 2 * (d->KW - 1) <= d->W;
}

/* One input pixel x (C) of row record rec, in column iw: its squares added
 * to the record's edge columns when iw is one (the row's own sum, rec's
 * first C, is the caller's: patch_record_rows sums it in float blocks). */
static inline void s1_add_edge_pixel(double *restrict rec, const float *restrict x, int iw,
                                     const fisher_conv2d_dims *d) {
    int C = d->C, W = d->W, e = d->KW - 1;
    int k = iw < e ? iw : iw >= W - e ? 2 * e - (W - iw) : -1;
    if (k < 0) return;
    double *q = rec + (size_t)(1 + k) * C;
#pragma omp simd
    for (int c = 0; c < C; c++) q[c] += (double)x[c] * x[c];
}

/* h (K) from the H row records (destroyed: summed into prefix sums). */
static void s1_assemble(double *h, double *rec, const fisher_conv2d_dims *d) {
    int H = d->H, W = d->W, C = d->C, G = d->groups, cg = C / G, e = d->KW - 1;
    int KH = d->KH, KW = d->KW, pad = d->pad;
    size_t per = s1_per(d);
    for (int ih = 1; ih < H; ih++) /* rec[ih] = Σ of rows 0..ih */
        add_d(rec + (size_t)ih * per, rec + (size_t)(ih - 1) * per, per);
    memset(h, 0, (size_t)cg * KH * KW * sizeof *h);
    double t[C];
    for (int ki = 0; ki < KH; ki++)
        for (int kj = 0; kj < KW; kj++) {
            int r0 = ki - pad > 0 ? ki - pad : 0, r1 = ki - pad + d->OH < H ? ki - pad + d->OH : H;
            int c0 = kj - pad > 0 ? kj - pad : 0, c1 = kj - pad + d->OW < W ? kj - pad + d->OW : W;
            if (r1 <= r0 || c1 <= c0) continue;
            const double *hi = rec + (size_t)(r1 - 1) * per, *lo = r0 ? rec + (size_t)(r0 - 1) * per : NULL;
            for (int k = -1; k < 2 * e; k++) { /* the rows' sums, less the edge columns skipped */
                if (k >= 0) {
                    int iw = k < e ? k : W - 2 * e + k;
                    if (iw >= c0 && iw < c1) continue;
                }
                size_t at = (size_t)(1 + k) * C;
                double sign = k < 0 ? 1.0 : -1.0;
                for (int c = 0; c < C; c++) {
                    double v = hi[at + c] - (lo ? lo[at + c] : 0.0);
                    t[c] = k < 0 ? v : t[c] + sign * v;
                }
            }
            for (int g = 0; g < G; g++) /* groups share H: (ci, kh, kw) */
                for (int ci = 0; ci < cg; ci++) h[(ci * KH + ki) * KW + kj] += t[g * cg + ci];
        }
}

/* What conv_patch_squares_direct computes, in O(B·H·W·C) instead of
 * O(B·P·K·G), which for a depthwise conv also ran every channel into the same
 * few sums one after another. An input element's square reaches h[ci, ki, kj]
 * once for every (batch, group) and every output whose tap (ki, kj) reads it,
 * so per input row: sum the squares over batch and groups per pixel, q
 * (chunk, cg); add each pixel into the kj whose column lattice holds it, crow
 * (KW, cg); add crow into the ki whose row lattice holds the row, ht (KH, KW,
 * cg). Threads take contiguous bands of rows and their ht are added in thread
 * order, so a run is reproducible for a given team size. Returns -1 without
 * memory. */
/* q (n) += Σ_b x_b², x_b = x + b·stride for b < B (n each), two images a
 * pass (half the traffic on q). Cloned like add_rows_squares. */
__attribute__((target_clones("avx512f", "avx2", "default"))) static void
add_image_squares(double *restrict q, const float *restrict x, size_t stride, int B, size_t n) {
    float part[n]; /* the images of a block, in float (square_sums) */
    for (int b0 = 0; b0 < B; b0 += SQUARE_BLOCK) {
        int b = b0, b1 = B - b0 < SQUARE_BLOCK ? B : b0 + SQUARE_BLOCK;
        memset(part, 0, sizeof part);
        for (; b + 1 < b1; b += 2) {
            const float *restrict u = x + (size_t)b * stride, *restrict v = u + stride;
#pragma omp simd
            for (size_t j = 0; j < n; j++) part[j] += u[j] * u[j] + v[j] * v[j];
        }
        if (b < b1) {
            const float *restrict u = x + (size_t)b * stride;
#pragma omp simd
            for (size_t j = 0; j < n; j++) part[j] += u[j] * u[j];
        }
#pragma omp simd
        for (size_t j = 0; j < n; j++) q[j] += part[j];
    }
}

static int conv_patch_squares(double *h, const float *inp, const fisher_conv2d_dims *d) {
    int B = d->B, H = d->H, W = d->W, C = d->C, G = d->groups, cg = C / G;
    int KH = d->KH, KW = d->KW, s = d->stride, pad = d->pad, K = cg * KH * KW;
    /* rows and columns past the last output's last tap are never read */
    int nh = (d->OH - 1) * s - pad + KH, nw = (d->OW - 1) * s - pad + KW;
    nh = nh < H ? nh : H, nw = nw < W ? nw : W;
    memset(h, 0, (size_t)K * sizeof *h);
    if (nh <= 0 || nw <= 0) return 0; /* every tap reads padding */
    /* q holds a chunk of pixels' full channels before the group fold */
    int chunk = C < 2048 ? 2048 / C : 1;
    chunk = chunk < nw ? chunk : nw;
    size_t per = partial_stride((size_t)chunk * C + (size_t)KW * cg + (size_t)K);
    int par = (size_t)B * nh * nw * C > PAR_MIN, T = par ? omp_get_max_threads() : 1;
    double *ws = thread_partials(T, per);
    if (!ws) return -1;
    int nt = 1;
#pragma omp parallel num_threads(T) if (par)
    {
        int t = omp_get_thread_num();
#pragma omp single
        nt = omp_get_num_threads();
        double *q = ws + (size_t)t * per, *crow = q + (size_t)chunk * C;
        double *ht = crow + (size_t)KW * cg;
        memset(ht, 0, (size_t)K * sizeof *ht);
        for (int ih = t * nh / nt; ih < (t + 1) * nh / nt; ih++) {
            int r = ih + pad, hit = 0; /* tap ki reads the row for output (r − ki) / s */
            for (int ki = r % s; ki < KH && ki <= r; ki += s) hit |= (r - ki) / s < d->OH;
            if (!hit) continue; /* between lattices: stride > KH */
            memset(crow, 0, (size_t)KW * cg * sizeof *crow);
            for (int iw0 = 0; iw0 < nw; iw0 += chunk) {
                int n = nw - iw0 < chunk ? nw - iw0 : chunk;
                size_t len = (size_t)n * C;
                memset(q, 0, len * sizeof *q);
                add_image_squares(q, inp + ((size_t)ih * W + iw0) * C, (size_t)H * W * C, B, len);
                if (G > 1)
                    for (int p = 0; p < n; p++) fold_groups(q + (size_t)p * C, G, cg);
                /* tap kj reads the pixels kj − pad − iw0 + m·s of the chunk
                 * (m < OW), each added in pixel order: one strided run a
                 * tap, not a call per pixel and tap (the 7×7 stride-4 patch
                 * embedding of 4 images of 128×128×3: 55 -> 41 µs a call at
                 * 2 threads, best of 200) */
                for (int kj = 0; kj < KW; kj++) {
                    int p = kj - pad - iw0, end = p + s * d->OW;
                    if (p < 0) p += (-p + s - 1) / s * s;
                    end = end < n ? end : n;
                    double *restrict acc = crow + (size_t)kj * cg;
                    for (; p < end; p += s) {
                        const double *restrict qp = q + (size_t)p * C;
                        for (int ci = 0; ci < cg; ci++) acc[ci] += qp[ci];
                    }
                }
            }
            for (int ki = r % s; ki < KH && ki <= r; ki += s)
                if ((r - ki) / s < d->OH) add_d(ht + (size_t)ki * KW * cg, crow, (size_t)KW * cg);
        }
    }
    /* ht (KH, KW, cg) of every thread, in thread order, into h (cg, KH, KW) */
    for (int t = 0; t < nt; t++) {
        const double *ht = ws + (size_t)t * per + (size_t)chunk * C + (size_t)KW * cg;
        for (int ci = 0; ci < cg; ci++)
            for (int k = 0; k < KH * KW; k++) h[ci * KH * KW + k] += ht[(size_t)k * cg + ci];
    }
    fisher_scratch_free(ws);
    return 0;
}

/* fisher_stats_conv's H. A pointwise conv's patches are its input's rows:
 * their squares are column squares, which add_column_squares sums in
 * vectors (the classifier's 1×1 conv over (4·32·32, 256) on mit-b0 128×128,
 * H and S: 0.33 -> 0.25 ms a step at 1 thread). */
static void conv_stats_h(float *H, const float *inp, const fisher_conv2d_dims *d, int has_bias) {
    int G = d->groups, cg = d->C / G, K = cg * d->KH * d->KW, P = d->OH * d->OW;
    double h[K];
    if (conv_is_pointwise(d)) {
        memset(h, 0, sizeof h);
        add_column_squares(h, inp, d->B * P, K);
    } else if (conv_patch_squares(h, inp, d)) {
        /* every (batch, group, position) patch is a row; groups share H */
        conv_patch_squares_direct(h, inp, d);
    }
    fisher_stats_conv_h(H, h, d, has_bias);
}

void fisher_stats_conv_h(float *H, const double *h, const fisher_conv2d_dims *d, int has_bias) {
    int G = d->groups, K = d->C / G * d->KH * d->KW, P = d->OH * d->OW;
    double div = has_bias ? (double)d->B * P * K : (double)d->B;
    for (int j = 0; j < K; j++) H[j] = (float)(h[j] / div);
    if (has_bias) H[K] = (float)((double)G / K); /* Σ over B·G·P rows of 1, / (B·P·K) */
}

void fisher_stats_conv(float *H, float *S, const float *inp, const float *dout,
                       const fisher_conv2d_dims *d, int has_bias) {
    int P = d->OH * d->OW;
    double sq[d->OC];
    memset(sq, 0, sizeof sq);
    if (H) conv_stats_h(H, inp, d, has_bias);
    if (!S) return;
    add_column_squares(sq, dout, d->B * P, d->OC);
    for (int o = 0; o < d->OC; o++) S[o] = (float)(sq[o] / ((double)d->B * P));
}

/* sum (C) = Σ over rows of m (R, C). */
static void column_sums_d(double *sum, const float *m, int R, int C) {
    memset(sum, 0, (size_t)C * sizeof *sum);
    add_columns(sum, m, R, C, add_rows);
}

void fisher_stats_batchnorm(float *H, float *S, const float *inp, const float *dout, int B, int P,
                            int C) {
    double u[C], sg[C];
    column_sums_d(u, inp, B * P, C);
    column_sums_d(sg, dout, B * P, C);
    fisher_stats_batchnorm_h(H, u, B, P, C);
    batchnorm_s_from_sums(S, sg, B, C);
}

void fisher_stats_layernorm(float *H, float *S, const float *inp, const float *dout, int B, int N,
                            int C) {
    double sg[C], h0 = 0;
    column_sums_d(sg, dout, B * N, C);
    /* u[n] reduces every axis but the token axis: over batch and channels.
     * Tokens are independent, so threads take them (each u[n] summed in
     * the same order by whichever thread), and h0 adds them up in token
     * order afterwards: the same bits for any team. It was the one serial
     * loop over a whole tensor among the statistics. */
    double *u = (size_t)B * N * C > PAR_MIN ? malloc((size_t)N * sizeof *u) : NULL;
#pragma omp parallel for schedule(static) if (u)
    for (int n = 0; n < N; n++) {
        double un = 0;
        for (int b = 0; b < B; b++) {
            const float *x = inp + ((size_t)b * N + n) * C;
            for (int c = 0; c < C; c++) un += x[c];
        }
        un /= (double)C * C;
        if (u) u[n] = un;
        else h0 += un * un; /* serial: in token order already */
    }
    for (int n = 0; u && n < N; n++) h0 += u[n] * u[n];
    free(u);
    for (int c = 0; c < C; c++) S[c] = (float)(sg[c] * sg[c] / B);
    H[0] = (float)(h0 / ((double)B * B));
    H[1] = (float)((double)N / ((double)B * B));
}

/* BatchNorm's and LayerNorm's statistics have one signature: (B, P or N, C). */
typedef void norm_stats_fn(float *H, float *S, const float *inp, const float *dout, int B, int P, int C);

/* stats over `shards` equal parts of the batch, averaged part by part. */
static void norm_stats_shards(norm_stats_fn *stats, float *H, float *S, const float *inp, const float *dout,
                              int B, int P, int C, int shards) {
    if (shards <= 1) {
        stats(H, S, inp, dout, B, P, C);
        return;
    }
    int b = B / shards;
    size_t per = (size_t)b * P * C;
    float h[2], s[C];
    stats(H, S, inp, dout, b, P, C);
    for (int k = 1; k < shards; k++) {
        stats(h, s, inp + k * per, dout + k * per, b, P, C);
        add_f(H, h, 2), add_f(S, s, C);
    }
    for (int i = 0; i < 2; i++) H[i] /= (float)shards;
    for (int c = 0; c < C; c++) S[c] /= (float)shards;
}

void fisher_stats_batchnorm_shards(float *H, float *S, const float *inp, const float *dout, int B,
                                   int P, int C, int shards) {
    norm_stats_shards(fisher_stats_batchnorm, H, S, inp, dout, B, P, C, shards);
}

void fisher_stats_layernorm_shards(float *H, float *S, const float *inp, const float *dout, int B,
                                   int N, int C, int shards) {
    norm_stats_shards(fisher_stats_layernorm, H, S, inp, dout, B, N, C, shards);
}

/* ------------------------------------------------ Efficient self-attention */

int fisher_esa_dims_init(fisher_esa_dims *d, int B, int H, int W, int C, int NH, int sr, float eps) {
    if (B < 1 || H < 1 || W < 1 || C < 1 || NH < 1 || C % NH || sr < 1) return -1;
    memset(d, 0, sizeof *d);
    d->B = B, d->H = H, d->W = W, d->C = C, d->NH = NH, d->sr = sr, d->eps = eps;
    d->N = H * W;
    d->M = d->N;
    if (sr > 1) {
        if (fisher_conv2d_dims_init(&d->sr_conv, B, H, W, C, C, sr, sr, sr, 0, 1)) return -1;
        d->M = d->sr_conv.OH * d->sr_conv.OW;
    }
    return 0;
}

/* Backward scratch, in order: dq, dctx (B,N,C); dk, dv, dsr_ln, dsr (B,M,C);
 * attention scratch; conv scratch (the forward uses only the last). */
size_t fisher_esa_scratch_floats(const fisher_esa_dims *d) {
    size_t nc = (size_t)d->B * d->N * d->C, mc = (size_t)d->B * d->M * d->C;
    size_t conv = d->sr > 1 ? fisher_conv2d_scratch_floats(&d->sr_conv) : 0;
    return 2 * nc + 4 * mc + fisher_attention_scratch_floats(d->N, d->M) + conv;
}

static float *esa_conv_scratch(float *scratch, const fisher_esa_dims *d) {
    size_t nc = (size_t)d->B * d->N * d->C, mc = (size_t)d->B * d->M * d->C;
    return scratch + 2 * nc + 4 * mc + fisher_attention_scratch_floats(d->N, d->M);
}

void fisher_esa_forward(float *out, const fisher_esa_cache *cache, float *scratch, const float *inp,
                        const fisher_esa_params *w, const fisher_esa_dims *d) {
    int B = d->B, N = d->N, M = d->M, C = d->C;
    const fisher_esa_cache *a = cache;
    fisher_linear_forward(a->q, inp, w->q_w, w->q_b, B * N, C, C);
    const float *kv_src = inp;
    if (d->sr > 1) {
        fisher_conv2d_forward(a->sr, esa_conv_scratch(scratch, d), inp, w->sr_w, w->sr_b, &d->sr_conv);
        fisher_layernorm_forward(a->sr_ln, a->sr_mean, a->sr_rstd, a->sr, w->sr_ln_w, w->sr_ln_b,
                                 B * M, C, d->eps);
        kv_src = a->sr_ln;
    }
    fisher_linear_forward(a->k, kv_src, w->k_w, w->k_b, B * M, C, C);
    fisher_linear_forward(a->v, kv_src, w->v_w, w->v_b, B * M, C, C);
    fisher_attention_forward(a->ctx, a->att, a->q, a->k, a->v, B, N, M, C, d->NH);
    fisher_linear_forward(out, a->ctx, w->o_w, w->o_b, B * N, C, C);
}

/* One of the attention's C→C linear layers, with its statistics when S is
 * not NULL (H NULL: H is known already). */
static void esa_linear_backward(float *dinp, float *dweight, float *dbias, float *H, float *S,
                                const float *dout, const float *inp, const float *weight,
                                const uint8_t *live_rows, int R, int C) {
    if (S)
        fisher_linear_backward_stats(dinp, dweight, dbias, H, S, dout, inp, weight, live_rows, R, C, C);
    else
        fisher_linear_backward(dinp, dweight, dbias, dout, inp, weight, live_rows, R, C, C);
}

void fisher_esa_backward(float *dinp, const fisher_esa_params *grad, float *scratch,
                         const float *dout, const float *inp, const fisher_esa_cache *cache,
                         const fisher_esa_params *w, const fisher_esa_rows *live_rows,
                         const fisher_esa_dims *d, const fisher_esa_stats *stats) {
    int B = d->B, N = d->N, M = d->M, C = d->C;
    size_t nc = (size_t)B * N * C, mc = (size_t)B * M * C;
    const fisher_esa_cache *a = cache;
    const fisher_esa_rows all = {0}, *lr = live_rows ? live_rows : &all;
    float *dq = scratch, *dctx = dq + nc, *dk = dctx + nc, *dv = dk + mc;
    float *dsr_ln = dv + mc, *dsr = dsr_ln + mc, *att_scratch = dsr + mc;
    memset(scratch, 0, (2 * nc + 4 * mc) * sizeof *scratch);
    const fisher_esa_stats none = {0}, *st = stats ? stats : &none;
    esa_linear_backward(dctx, grad->o_w, grad->o_b, st->o_H, st->o_S, dout, a->ctx, w->o_w, lr->o_w,
                        B * N, C);
    fisher_attention_backward(dq, dk, dv, att_scratch, dctx, a->q, a->k, a->v, a->att, B, N, M, C,
                              d->NH);
    int reduced = d->sr > 1;
    /* without reduction, keys and values read the input itself */
    float *dkv = reduced ? dsr_ln : dinp;
    const float *kv_src = reduced ? a->sr_ln : inp;
    esa_linear_backward(dkv, grad->k_w, grad->k_b, st->k_H, st->k_S, dk, kv_src, w->k_w, lr->k_w,
                        B * M, C);
    /* values read what keys read: the same H, not summed twice */
    int same_h = st->k_H && st->v_H;
    esa_linear_backward(dkv, grad->v_w, grad->v_b, same_h ? NULL : st->v_H, st->v_S, dv, kv_src,
                        w->v_w, lr->v_w, B * M, C);
    if (same_h) memcpy(st->v_H, st->k_H, ((size_t)C + 1) * sizeof *st->v_H);
    if (reduced) {
        fisher_layernorm_backward(dsr, grad->sr_ln_w, grad->sr_ln_b, dsr_ln, a->sr, w->sr_ln_w,
                                  a->sr_mean, a->sr_rstd, B * M, C);
        if (st->sr_S)
            fisher_conv2d_backward_stats(dinp, grad->sr_w, grad->sr_b, st->sr_H, st->sr_S,
                                         esa_conv_scratch(scratch, d), dsr, inp, w->sr_w, lr->sr_w,
                                         &d->sr_conv);
        else
            fisher_conv2d_backward(dinp, grad->sr_w, grad->sr_b, esa_conv_scratch(scratch, d), dsr,
                                   inp, w->sr_w, lr->sr_w, &d->sr_conv);
    }
    esa_linear_backward(dinp, grad->q_w, grad->q_b, st->q_H, st->q_S, dq, inp, w->q_w, lr->q_w,
                        B * N, C);
    if (reduced && st->sr_ln_H)
        fisher_stats_layernorm_shards(st->sr_ln_H, st->sr_ln_S, a->sr, dsr_ln, B, M, C, st->shards);
}

/* ---------------------------------------------------------- Bilinear resize */
/* PyTorch's source index for align_corners=False:
 *     src = max(0, (dst + 0.5)·in/out − 0.5),  i0 = ⌊src⌋,  i1 = min(i0 + 1, in − 1). */
typedef struct {
    int i0, i1;
    float l0, l1; /* weights of i0 and i1 */
} resize_tap;

static resize_tap resize_source(int dst, int in, int out) {
    float scale = (float)in / (float)out;
    float src = ((float)dst + 0.5f) * scale - 0.5f;
    if (src < 0.0f) src = 0.0f;
    resize_tap t;
    t.i0 = (int)src;
    t.i1 = t.i0 < in - 1 ? t.i0 + 1 : t.i0;
    t.l1 = src - (float)t.i0;
    t.l0 = 1.0f - t.l1;
    return t;
}

void fisher_resize_bilinear_forward(float *out, const float *inp, int B, int H, int W, int C,
                                    int OH, int OW) {
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)B * OH * OW * C > PAR_MIN)
    for (int b = 0; b < B; b++)
        for (int oh = 0; oh < OH; oh++) {
            resize_tap th = resize_source(oh, H, OH);
            const float *row0 = inp + ((size_t)b * H + th.i0) * W * C;
            const float *row1 = inp + ((size_t)b * H + th.i1) * W * C;
            for (int ow = 0; ow < OW; ow++) {
                resize_tap tw = resize_source(ow, W, OW);
                const float *x00 = row0 + (size_t)tw.i0 * C, *x01 = row0 + (size_t)tw.i1 * C;
                const float *x10 = row1 + (size_t)tw.i0 * C, *x11 = row1 + (size_t)tw.i1 * C;
                float *o = out + (((size_t)b * OH + oh) * OW + ow) * C;
                for (int c = 0; c < C; c++)
                    o[c] = th.l0 * (tw.l0 * x00[c] + tw.l1 * x01[c]) +
                           th.l1 * (tw.l0 * x10[c] + tw.l1 * x11[c]);
            }
        }
}

/* G = Uᵀ·U of a resize along one axis (in → out), U the (out, in) matrix of
 * its taps: tridiagonal, since an output reads two neighbouring inputs.
 * g0 (in) the diagonal, g1 (in) g1[i] = G[i, i + 1] (g1[in − 1] = 0). */
static void resize_gram(double *g0, double *g1, int in, int out) {
    memset(g0, 0, (size_t)in * sizeof *g0), memset(g1, 0, (size_t)in * sizeof *g1);
    for (int o = 0; o < out; o++) {
        resize_tap t = resize_source(o, in, out);
        if (t.i0 == t.i1) {
            g0[t.i0] += ((double)t.l0 + t.l1) * ((double)t.l0 + t.l1);
        } else {
            g0[t.i0] += (double)t.l0 * t.l0, g0[t.i1] += (double)t.l1 * t.l1;
            g1[t.i0] += (double)t.l0 * t.l1;
        }
    }
}

/* Rows [r0, r1) of the (B·H) input rows of fisher_resize_bilinear_squares,
 * into acc. A missing neighbour (an edge) reads the pixel itself with a
 * zero coefficient, so the channel loop has no branch and vectorises
 * (cloned like add_rows_squares); the same products and sums per element
 * as with the neighbour left out, in the same order. */
__attribute__((target_clones("avx512f", "avx2", "default"))) static void
resize_squares_rows(double *restrict acc, const float *restrict inp, int r0, int r1, int H, int W,
                    int C, const double *gh0, const double *gh1, const double *gw0, const double *gw1) {
    for (int ba = r0; ba < r1; ba++) {
        int a = ba % H;
        const float *row = inp + (size_t)ba * W * C;
        int has_below = a + 1 < H;
        double ch = has_below ? 2 * gh1[a] : 0, h0 = gh0[a];
        for (int w = 0; w < W; w++) {
            const float *x = row + (size_t)w * C;
            const float *left = w > 0 ? x - C : x, *right = w + 1 < W ? x + C : x;
            const float *below = has_below ? x + (size_t)W * C : x;
            double cl = w > 0 ? gw1[w - 1] : 0, cr = w + 1 < W ? gw1[w] : 0, w0 = gw0[w];
#pragma omp simd
            for (int c = 0; c < C; c++) {
                double y = w0 * x[c] + cl * left[c] + cr * right[c];
                double z = h0 * x[c] + ch * below[c];
                acc[c] += y * z;
            }
        }
    }
}

/* Σ_pixels up[·, c]² = Σ_{a,a'} Gh[a,a'] · X_aᵀ Gw X_a' per channel, X_a the
 * input's row a (W, C): with y = (Gw X_a)[w] and z = (Gh X)[a][w] (both
 * tridiagonal), Σ_a Σ_w y·z. The off-diagonal of Gh is taken on both sides
 * of the diagonal at once (z reads row a + 1 twice) — X_aᵀ Gw X_a' is
 * symmetric. O(B·H·W·C) reads of the small input instead of O(B·OH·OW·C)
 * writes and reads of the upsampled one. Threads take contiguous bands of
 * rows into zeroed partials, added in thread order. The OpenMP array
 * reduction and the branches per channel had left this loop scalar:
 * mit-b0 128×128 batch 4, 1 thread, the three decode-head calls went
 * 0.74 -> 0.29 ms a step. */
typedef struct {
    const float *inp;
    int H, W, C;
    const double *gh0, *gh1, *gw0, *gw1;
} resize_job;

static void resize_band(const void *ctx, double *restrict acc, int r0, int r1) {
    const resize_job *j = ctx;
    resize_squares_rows(acc, j->inp, r0, r1, j->H, j->W, j->C, j->gh0, j->gh1, j->gw0, j->gw1);
}

void fisher_resize_bilinear_squares(double *acc, const float *inp, int B, int H, int W, int C, int OH,
                                    int OW) {
    double gh0[H], gh1[H], gw0[W], gw1[W];
    resize_gram(gh0, gh1, H, OH);
    resize_gram(gw0, gw1, W, OW);
    resize_job j = {inp, H, W, C, gh0, gh1, gw0, gw1};
    column_bands(resize_band, &j, acc, B * H, C, (size_t)W * C); /* a row: an input image row */
}

void fisher_resize_bilinear_backward(float *dinp, const float *dout, int B, int H, int W, int C,
                                     int OH, int OW) {
    /* output pixels share input taps, images do not: one image per thread */
#pragma omp parallel for schedule(static) if ((size_t)B * OH * OW * C > PAR_MIN)
    for (int b = 0; b < B; b++)
        for (int oh = 0; oh < OH; oh++) {
            resize_tap th = resize_source(oh, H, OH);
            float *row0 = dinp + ((size_t)b * H + th.i0) * W * C;
            float *row1 = dinp + ((size_t)b * H + th.i1) * W * C;
            for (int ow = 0; ow < OW; ow++) {
                resize_tap tw = resize_source(ow, W, OW);
                float *x00 = row0 + (size_t)tw.i0 * C, *x01 = row0 + (size_t)tw.i1 * C;
                float *x10 = row1 + (size_t)tw.i0 * C, *x11 = row1 + (size_t)tw.i1 * C;
                const float *g = dout + (((size_t)b * OH + oh) * OW + ow) * C;
                float w00 = th.l0 * tw.l0, w01 = th.l0 * tw.l1;
                float w10 = th.l1 * tw.l0, w11 = th.l1 * tw.l1;
                for (int c = 0; c < C; c++) {
                    x00[c] += w00 * g[c];
                    x01[c] += w01 * g[c];
                    x10[c] += w10 * g[c];
                    x11[c] += w11 * g[c];
                }
            }
        }
}

/* ------------------------------------------------------------------ Concat */

void fisher_concat_forward(float *out, const float *const *parts, const int *widths, int n_parts,
                           int R) {
    int total = 0;
    for (int i = 0; i < n_parts; i++) total += widths[i];
    for (int r = 0; r < R; r++) {
        float *o = out + (size_t)r * total;
        for (int i = 0; i < n_parts; i++) {
            memcpy(o, parts[i] + (size_t)r * widths[i], (size_t)widths[i] * sizeof *o);
            o += widths[i];
        }
    }
}

void fisher_concat_backward(float *const *dparts, const float *dout, const int *widths,
                            int n_parts, int R) {
    int total = 0;
    for (int i = 0; i < n_parts; i++) total += widths[i];
    for (int r = 0; r < R; r++) {
        const float *g = dout + (size_t)r * total;
        for (int i = 0; i < n_parts; i++) {
            if (dparts[i]) {
                float *d = dparts[i] + (size_t)r * widths[i];
                for (int c = 0; c < widths[i]; c++) d[c] += g[c];
            }
            g += widths[i];
        }
    }
}
