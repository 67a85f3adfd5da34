/*
 * layers.h — the building blocks of the SegFormer engine, each a forward /
 * backward pair of free functions in the style of llm.c:
 *
 *     layer_forward(out, cache..., inp, weights..., dims...)
 *     layer_backward(dinp, dweight..., dout, inp, cache..., weights..., live_rows, dims...)
 *
 * Outputs first, then inputs, then sizes. Backward ACCUMULATES (+=) into
 * every gradient buffer it is given, so one zero_grad clears a whole model
 * and branches that share an input simply add up. Any gradient pointer may
 * be NULL: that gradient is not computed (this is how back-propagation stops
 * below the earliest trainable layer, and how frozen tensors skip their
 * weight-gradient GEMM).
 *
 * Live rows. Freezing goes by blocks of weight rows (axis 0: output features
 * of a Linear, output channels of a Conv2d), so the weight-gradient half of
 * a backward takes `live_rows`, one byte per row of the weight (OC entries;
 * weight rows, not the R of the legend), nonzero for the rows to compute.
 * It computes those rows only — one product per run of consecutive live
 * rows — and does not touch the others: they keep what the gradient buffer
 * held (zero, after zero_grad). NULL means every row. The input gradient
 * always takes every row, and the bias gradient is computed whole (it is OC
 * sums; a frozen bias is skipped by passing NULL).
 *
 * Layout. Activations are channels-last everywhere: an image batch is
 * (B, H, W, C) and a token sequence is (B, N, C) with N = H·W — the same
 * memory, so the transformer and the convolutions hand tensors to each other
 * without transposes. Weights keep PyTorch's layouts so checkpoints load
 * unchanged: Linear (OC, IC), Conv2d (OC, C/groups, KH, KW).
 *
 * Dimension legend: B batch, N tokens, C channels, OC output channels,
 * IC input channels, R rows (= every position a weight is applied at),
 * H W input height/width, OH OW output height/width, NH heads, M keys.
 *
 * None of these functions allocate, fail or touch global state; scratch
 * memory comes from the caller, sized by the *_scratch_floats helpers. The
 * one exception is SyncBN (the *_sync BatchNorm pair): its batch statistics
 * span every rank of a data-parallel run, so it calls the caller's
 * communicator (comm.h) and fails when that does.
 */
#ifndef FISHER_LAYERS_H
#define FISHER_LAYERS_H

#include <stddef.h>
#include <stdint.h>

#include "comm.h"
#include "error.h"

/* ---- Linear: out (R, OC) = inp (R, IC) · weight (OC, IC)ᵀ + bias (OC) ---- */
void fisher_linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                           int R, int IC, int OC);
/* dinp (R, IC) += dout·weight; dweight (OC, IC) += doutᵀ·inp on the rows
 * live_rows (OC) marks (NULL: all); dbias (OC) += Σ_rows dout. */
void fisher_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                            const float *inp, const float *weight, const uint8_t *live_rows,
                            int R, int IC, int OC);
/* The same for a layer with a bias, also leaving its Fisher statistics
 * (fisher_stats_linear with has_bias) in H (IC + 1; NULL: only S) and S
 * (OC); the gradients are bit for bit fisher_linear_backward's. */
void fisher_linear_backward_stats(float *dinp, float *dweight, float *dbias, float *H, float *S,
                                  const float *dout, const float *inp, const float *weight,
                                  const uint8_t *live_rows, int R, int IC, int OC);
/* The same without bias, for a block of IC columns of a wider weight whose
 * rows are ldw floats apart (one input block of a layer that reads a
 * concatenation; live_rows (OC) are the wide weight's rows). Forward
 * overwrites out, or adds to it when accumulate. */
void fisher_linear_slice_forward(float *out, const float *inp, const float *weight, int ldw,
                                 int R, int IC, int OC, int accumulate);
void fisher_linear_slice_backward(float *dinp, float *dweight, const float *dout, const float *inp,
                                  const float *weight, const uint8_t *live_rows, int ldw, int R,
                                  int IC, int OC);

/* ---- Conv2d, channels-last, stride/padding/groups (depthwise included) ---- */
typedef struct {
    int B, H, W, C;        /* input (B, H, W, C) */
    int OC, KH, KW;        /* weight (OC, C/groups, KH, KW) */
    int stride, pad, groups;
    int OH, OW;            /* output (B, OH, OW, OC), derived */
} fisher_conv2d_dims;

/* Fills d and derives OH, OW as PyTorch does. Returns 0, or -1 when the
 * combination is impossible (C or OC not divisible by groups, empty output). */
int fisher_conv2d_dims_init(fisher_conv2d_dims *d, int B, int H, int W, int C, int OC, int KH,
                            int KW, int stride, int pad, int groups);
/* Floats of scratch the forward and backward of d need (im2col + permuted weight). */
size_t fisher_conv2d_scratch_floats(const fisher_conv2d_dims *d);

void fisher_conv2d_forward(float *out, float *scratch, const float *inp, const float *weight,
                           const float *bias, const fisher_conv2d_dims *d);
/* live_rows (OC): the output channels whose dweight rows (Cg, KH, KW) are
 * computed, NULL for all; a grouped conv's runs may cross group edges. */
void fisher_conv2d_backward(float *dinp, float *dweight, float *dbias, float *scratch,
                            const float *dout, const float *inp, const float *weight,
                            const uint8_t *live_rows, const fisher_conv2d_dims *d);
/* The same for a conv with a bias, also leaving its Fisher statistics
 * (fisher_stats_conv with has_bias) in H (C/G·KH·KW + 1; NULL: only S) and
 * S (OC); the
 * gradients are bit for bit fisher_conv2d_backward's. */
void fisher_conv2d_backward_stats(float *dinp, float *dweight, float *dbias, float *H, float *S,
                                  float *scratch, const float *dout, const float *inp,
                                  const float *weight, const uint8_t *live_rows,
                                  const fisher_conv2d_dims *d);

/* ---- LayerNorm over the last axis: (R, C) -> (R, C); caches mean, rstd (R) ---- */
void fisher_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                              const float *weight, const float *bias, int R, int C, float eps);
void fisher_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                               const float *inp, const float *weight, const float *mean,
                               const float *rstd, int R, int C);
/* The backward over R = B·N rows that also leaves the layer's Fisher
 * statistics (as fisher_stats_layernorm_shards; shards ≤ 1: the whole
 * batch) in H (2) and S (C), from the forward's row means and the pass
 * that computes the parameter gradients. The gradients are bit for bit
 * fisher_layernorm_backward's when shards ≤ 1. */
void fisher_layernorm_backward_stats(float *dinp, float *dweight, float *dbias, float *H, float *S,
                                     const float *dout, const float *inp, const float *weight,
                                     const float *mean, const float *rstd, int B, int N, int C,
                                     int shards);

/* ---- BatchNorm2d, channels-last: (R = B·H·W, C), PyTorch semantics ----
 * Training: normalise with the batch's biased variance, cache mean and rstd
 * (C), and update the running statistics with momentum and the unbiased
 * variance. Evaluation: normalise with the running statistics. */
void fisher_batchnorm_forward_train(float *out, float *mean, float *rstd, float *running_mean,
                                    float *running_var, const float *inp, const float *weight,
                                    const float *bias, int R, int C, float momentum, float eps);
void fisher_batchnorm_forward_eval(float *out, const float *inp, const float *weight,
                                   const float *bias, const float *running_mean,
                                   const float *running_var, int R, int C, float eps);
void fisher_batchnorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                               const float *inp, const float *weight, const float *mean,
                               const float *rstd, int R, int C);
/* SyncBN: the same over the GLOBAL batch of a data-parallel run, each rank
 * holding its R rows (R may differ between ranks). Forward: two passes as
 * above, each all-reducing its per-channel sums (Σx and the row count, then
 * Σ(x − mean)²), so mean, rstd and the running statistics are the global
 * batch's and identical on every rank. Backward: Σdout and Σdout·x̂ are
 * all-reduced for dinp (skipped when dinp is NULL); dweight and dbias get
 * the LOCAL sums only, because the gradient all-reduce that follows
 * (train.h) adds them up across ranks — global sums here would be counted
 * size times. comm NULL: exactly, bit for bit, the functions above. Every
 * rank must call them, with the same C. local_sums (C) not NULL: the
 * forward also leaves there Σx of this rank's own rows, taken before the
 * all-reduce (for fisher_stats_batchnorm_h). Return 0, or -1 with err when
 * the communicator fails. */
int fisher_batchnorm_forward_train_sync(float *out, float *mean, float *rstd, float *running_mean,
                                        float *running_var, const float *inp, const float *weight,
                                        const float *bias, int R, int C, float momentum, float eps,
                                        double *local_sums, fisher_comm *comm, fisher_error *err);
int fisher_batchnorm_backward_sync(float *dinp, float *dweight, float *dbias, const float *dout,
                                   const float *inp, const float *weight, const float *mean,
                                   const float *rstd, int R, int C, fisher_comm *comm,
                                   fisher_error *err);
/* The same over R = B·P rows, also leaving this rank's own Fisher S
 * (fisher_stats_batchnorm's, from its local rows) in S (C); S NULL: none.
 * (Its H comes from the forward's local sums: fisher_stats_batchnorm_h.)
 * With dinp_sq (C) not NULL, Σ_rows dinp² per channel of the updated dinp
 * is added into it, with the bits of fisher_stats_linear's own squares of
 * dinp: the S of the layer whose output gradient dinp is, without reading
 * it again. The gradients are bit for bit the above's. */
int fisher_batchnorm_backward_sync_stats(float *dinp, float *dweight, float *dbias, float *S,
                                         double *dinp_sq, const float *dout, const float *inp,
                                         const float *weight, const float *mean, const float *rstd,
                                         int B, int P, int C, fisher_comm *comm, fisher_error *err);

/* ---- Elementwise ---- */
/* GELU, exact: x·Φ(x) with the erf form (PyTorch's default). */
void fisher_gelu_forward(float *out, const float *inp, size_t n);
void fisher_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n);
void fisher_relu_forward(float *out, const float *inp, size_t n);
/* Uses the forward's output: relu'(x) = out > 0. */
void fisher_relu_backward(float *dinp, const float *dout, const float *out, size_t n);
/* out (n) += inp (n): residual connections, and their backward. */
void fisher_add_inplace(float *out, const float *inp, size_t n);

/* ---- Multi-head attention core (the part between the projections) ----
 * q (B, N, C), k and v (B, M, C), NH heads of C/NH channels each, head h
 * owning channels [h·C/NH, (h+1)·C/NH). att (B, NH, N, M) caches the softmax
 * probabilities for the backward; out (B, N, C).
 *   att = softmax(q_h·k_hᵀ / sqrt(C/NH)),  out_h = att·v_h */
void fisher_attention_forward(float *out, float *att, const float *q, const float *k,
                              const float *v, int B, int N, int M, int C, int NH);
/* scratch: fisher_attention_scratch_floats(N, M) floats. */
size_t fisher_attention_scratch_floats(int N, int M);
void fisher_attention_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout,
                               const float *q, const float *k, const float *v, const float *att,
                               int B, int N, int M, int C, int NH);

/* ---- Forwards that also sum their output's column squares ----
 * The same outputs, bit for bit, as fisher_layernorm_forward,
 * fisher_relu_forward and fisher_linear_forward (with a bias) on (R, C)
 * rows; sq (C, double) += Σ_rows out², with the bits of
 * the statistics' own column squares. For the H of the layer reading the
 * output (fisher_stats_linear_h, fisher_stats_conv_h). */
void fisher_layernorm_forward_squares(float *out, float *mean, float *rstd, double *sq,
                                      const float *inp, const float *weight, const float *bias, int R,
                                      int C, float eps);
void fisher_relu_forward_squares(float *out, double *sq, const float *inp, int R, int C);
void fisher_linear_forward_squares(float *out, double *sq, const float *inp, const float *weight,
                                   const float *bias, int R, int IC, int OC);
/* fisher_linear_forward (with a bias) whose output (B·H·W, C) is the input
 * of the conv d, leaving that conv's patch squares in h (C/G·KH·KW, as
 * fisher_stats_conv sums them; fisher_stats_conv_h makes H of them). */
void fisher_linear_forward_patch_squares(float *out, double *h, double *scratch, size_t scratch_len,
                                         const float *inp, const float *weight, const float *bias,
                                         int IC, const fisher_conv2d_dims *d);
/* Doubles of scratch it uses with this many threads (less: it allocates);
 * scratch from fisher_scratch_alloc keeps each thread's records on cache
 * lines of its own. */
size_t fisher_patch_squares_scratch(const fisher_conv2d_dims *d, int threads);
/* n doubles starting on a cache line (NULL without memory); free them with
 * fisher_scratch_free (NULL is fine). */
double *fisher_scratch_alloc(size_t n);
void fisher_scratch_free(double *p);

/* ---- Fisher statistics of a layer (FISHERADAPTUNE.md §1) ----
 * Per-batch second moments of a layer's input (H) and of the loss gradient
 * w.r.t. its output (S), from what forward and backward already hold. The
 * divisors are the reference's. They OVERWRITE H and S.
 *   linear     inp (R, IC), dout (R, OC); H (IC [+1 bias]), S (OC):
 *              H[j] = Σ_r x[r,j]² / R,  S[o] = Σ_r s[r,o]² / R; S NULL: only H
 *              (a layer reading a concatenation has one S for its input blocks)
 *   conv       inp (B, H, W, C) and dout (B, OH, OW, OC) as in d; H has
 *              K = C/G·KH·KW entries in weight order (cin, kh, kw) [+1 bias]
 *              summed over every (batch, group, position) patch, divided by
 *              B·P·K with a bias and by B without; S[o] = Σ s² / (B·P);
 *              S NULL: only H (taken in the forward)
 *   batchnorm  inp, dout (B, P, C); H (2), S (C)
 *   layernorm  inp, dout (B, N, C), normalised over C; H (2), S (C) */
void fisher_stats_linear(float *H, float *S, const float *inp, const float *dout, int R, int IC,
                         int OC, int has_bias);
void fisher_stats_conv(float *H, float *S, const float *inp, const float *dout,
                       const fisher_conv2d_dims *d, int has_bias);
/* (H NULL in the two above: only S, H being known already.) H from the
 * sums of squares they divide: sq (IC) of the input's columns; h (K) of
 * the patches, as fisher_stats_conv sums them. */
void fisher_stats_linear_h(float *H, const double *sq, int R, int IC, int has_bias);
void fisher_stats_conv_h(float *H, const double *h, const fisher_conv2d_dims *d, int has_bias);
void fisher_stats_batchnorm(float *H, float *S, const float *inp, const float *dout, int B, int P,
                            int C);
/* BatchNorm's H from sums (C) = Σ over its B·P rows of the input per
 * channel: what fisher_batchnorm_forward_train_sync's local_sums hold. */
void fisher_stats_batchnorm_h(float *H, const double *sums, int B, int P, int C);
void fisher_stats_layernorm(float *H, float *S, const float *inp, const float *dout, int B, int N,
                            int C);
/* The norm layers' statistics as the mean over `shards` equal shards of the
 * batch (B % shards == 0), each computed on its B/shards samples, summed in
 * shard order in float and divided by shards. The norm statistics are not
 * means over rows (squares of sums, divided by B and B²), so N data-parallel
 * ranks averaging theirs do not compute the one-process value; one process
 * with shards = N computes exactly what they do, which is how the
 * equivalence is tested. shards ≤ 1: the functions above. */
void fisher_stats_batchnorm_shards(float *H, float *S, const float *inp, const float *dout, int B,
                                   int P, int C, int shards);
void fisher_stats_layernorm_shards(float *H, float *S, const float *inp, const float *dout, int B,
                                   int N, int C, int shards);

/* Where fisher_esa_backward leaves the statistics of its six layers; any
 * pointer may be NULL (that layer's statistics are not computed). */
typedef struct {
    float *q_H, *q_S, *k_H, *k_S, *v_H, *v_S;
    float *sr_H, *sr_S, *sr_ln_H, *sr_ln_S;
    float *o_H, *o_S;
    int shards;            /* of the LayerNorm's statistics; 0 or 1: the whole batch */
} fisher_esa_stats;

/* ---- Efficient self-attention (SegFormer), the whole sub-layer ----
 * Hugging Face's SegformerAttention without its residual: queries from the
 * input tokens; keys and values from tokens spatially reduced by a strided
 * sr×sr conv and a LayerNorm (or from the input itself when sr == 1);
 * multi-head attention; the output projection.
 *   inp (B, N = H·W, C) -> out (B, N, C),  M = (H/sr)·(W/sr) key tokens. */
typedef struct {
    int B, H, W, C, NH, sr;
    int N, M;                        /* derived */
    float eps;                       /* of the reduction LayerNorm */
    fisher_conv2d_dims sr_conv;      /* derived; unused when sr == 1 */
} fisher_esa_dims;

/* Weights in PyTorch layouts: q/k/v/o (C, C) + (C); sr (C, C, sr, sr) + (C)
 * and sr_ln (C) + (C) only when sr > 1. The gradient struct has the same
 * fields; any of them may be NULL (not computed). */
typedef struct {
    float *q_w, *q_b, *k_w, *k_b, *v_w, *v_b;
    float *sr_w, *sr_b, *sr_ln_w, *sr_ln_b;
    float *o_w, *o_b;
} fisher_esa_params;

/* The live rows (C each; see the top of this file) of the weight gradients
 * of the backward: NULL fields, or a NULL struct, mean every row. */
typedef struct {
    const uint8_t *q_w, *k_w, *v_w, *sr_w, *o_w;
} fisher_esa_rows;

/* What the forward keeps for the backward. */
typedef struct {
    float *q;                                /* (B, N, C) */
    float *sr, *sr_ln, *sr_mean, *sr_rstd;   /* (B, M, C), stats (B·M); sr > 1 only */
    float *k, *v;                            /* (B, M, C) */
    float *att;                              /* (B, NH, N, M) */
    float *ctx;                              /* (B, N, C) before the output projection */
} fisher_esa_cache;

/* Returns 0, or -1 when the shapes are impossible (C % NH, H or W < sr). */
int fisher_esa_dims_init(fisher_esa_dims *d, int B, int H, int W, int C, int NH, int sr, float eps);
/* Floats of scratch forward and backward need (the same buffer serves both). */
size_t fisher_esa_scratch_floats(const fisher_esa_dims *d);

void fisher_esa_forward(float *out, const fisher_esa_cache *cache, float *scratch, const float *inp,
                        const fisher_esa_params *w, const fisher_esa_dims *d);
/* live_rows may be NULL (every row of every weight gradient). stats may be
 * NULL; otherwise each non-NULL pointer in it receives that sub-layer's
 * Fisher statistics (fisher_stats_*). */
void fisher_esa_backward(float *dinp, const fisher_esa_params *grad, float *scratch,
                         const float *dout, const float *inp, const fisher_esa_cache *cache,
                         const fisher_esa_params *w, const fisher_esa_rows *live_rows,
                         const fisher_esa_dims *d, const fisher_esa_stats *stats);

/* ---- Bilinear resize, align_corners=False (PyTorch's interpolate) ----
 * inp (B, H, W, C) -> out (B, OH, OW, C). */
void fisher_resize_bilinear_forward(float *out, const float *inp, int B, int H, int W, int C,
                                    int OH, int OW);
void fisher_resize_bilinear_backward(float *dinp, const float *dout, int B, int H, int W, int C,
                                     int OH, int OW);
/* acc (C) += Σ over every output pixel of the resized inp's squares, per
 * channel, without resizing: in double, the exact value of the forward's
 * map (float taps) that the forward rounds to float. For Fisher statistics
 * of layers that read an upsampled tensor the forward never builds. */
void fisher_resize_bilinear_squares(double *acc, const float *inp, int B, int H, int W, int C, int OH,
                                    int OW);

/* ---- Concatenate along channels: parts[i] (R, widths[i]) -> out (R, Σ widths) ---- */
void fisher_concat_forward(float *out, const float *const *parts, const int *widths, int n_parts,
                           int R);
/* dparts[i] (R, widths[i]) += its slice of dout; NULL entries are skipped. */
void fisher_concat_backward(float *const *dparts, const float *dout, const int *widths,
                            int n_parts, int R);

#endif
