/*
 * drift.h — FisherAdapTune's measure of change (FISHERADAPTUNE.md §3–§5):
 * the Jensen–Shannon distance between two Fisher distributions, the
 * per-chunk drift tracker, and the freezing rule.
 *
 * Precision follows the reference: Fisher vectors and each chunk's Fisher
 * EMA are float32 (the EMA computed in float32 with both decay factors
 * rounded to float32 from double: f32(d)·ema + f32(1 − d)·cur); log values,
 * percentiles, histograms, distances and everything derived from them are
 * float64.
 */
#ifndef FISHER_DRIFT_H
#define FISHER_DRIFT_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

enum { FISHER_JS_LOG = 0, FISHER_JS_RAW = 1 };

/* Jensen–Shannon distance (natural log, in [0, sqrt(ln 2)]) between the
 * 64-bin histograms of ref and cur: in log mode of log10(|x| + 1e-12) over
 * the 1st–99th percentile range of both together, in raw mode of |x| over
 * [min, max]. Returns NAN when there is no distance: an empty side, no
 * finite value, or (log mode) a NaN. Infinite values fall outside the bins.
 * Public and stable: part of libfisher's ABI. */
double fisher_js_distance(const float *ref, size_t n_ref, const float *cur, size_t n_cur, int mode);

typedef struct {
    double fisher_ema_decay;  /* d: ema_F = d·ema_F + (1 − d)·cur            [0.9] */
    double js_ema_decay;      /* e: js_ema = e·js_ema + (1 − e)·js            [0.9] */
    int js_mode;              /* FISHER_JS_LOG or FISHER_JS_RAW               [log] */
} fisher_drift_config;

fisher_drift_config fisher_drift_defaults(void);

/* What one measurement prepares for the next (drift.c: "predicted
 * brackets"); private to drift.c. */
typedef struct fisher_drift_brackets fisher_drift_brackets;

/* One chunk's drift state (§4). Zero-initialise, then update; free with
 * fisher_chunk_drift_free when the chunk freezes or the run ends. */
typedef struct {
    size_t n;                 /* elements; set by the first update */
    float *ema_F;             /* (n) the chunk's Fisher EMA, float32 */
    int measured;             /* 0 until the first measurement */
    double js_ema;
    double total_variation;   /* Σ |js_ema − previous history value| */
    double js_sum;            /* Σ js_ema over measurements (first one counts 0) */
    int64_t js_count;
    int64_t last_step;        /* step of the latest history point */
    double last_value;        /* its js_ema */
    fisher_drift_brackets *next; /* NULL until a measurement leaves one; speed only */
} fisher_chunk_drift;

/* Measures the chunk at `step` with its current Fisher cur (n): the first
 * call sets ema_F = cur and records (step, 0); later calls compute
 * js = JS(ema_F, cur) against the EMA *before* updating it, then update
 * ema_F, js_ema, total_variation, js_sum, js_count and the history point.
 * *js_out (may be NULL) gets js (0 for the first call; NAN never occurs for
 * n > 0). Returns 0, or -1 with err when n changes or memory runs out. */
int fisher_chunk_drift_update(fisher_chunk_drift *d, const float *cur, size_t n, int64_t step,
                              const fisher_drift_config *cfg, double *js_out, fisher_error *err);

/* A chunk's Fisher in the form the estimators make it (FISHERADAPTUNE.md
 * §1): the outer product cur[r·cols + c] = |s[r]·h[c]|, float32, row-major.
 * A weight row block is (S rows, H); a column block (all of S, a slice of
 * H); a bias or norm chunk (S rows, the one H entry it uses). */
typedef struct {
    const float *s;
    size_t rows;
    const float *h;
    size_t cols;
    const float *h_sorted;    /* optional: |h| ascending (fisher_outer_sort), when chunks share h */
} fisher_outer;

/* |h| (n) in ascending order into out (n), as fisher_outer.h_sorted wants
 * it; tmp (n) is scratch. Cannot fail. */
void fisher_outer_sort(const float *h, size_t n, float *out, float *tmp);

/* The same measurement as fisher_chunk_drift_update with cur given as an
 * outer product, without materialising it, when the chunk is in its usual
 * state (measured before, log mode, brackets predicted and right, every
 * s and h finite): returns 0, having done exactly what the array form
 * would have. Otherwise returns 1 and changes nothing: materialise cur and
 * call fisher_chunk_drift_update. -1 with err when memory runs out. */
int fisher_chunk_drift_update_outer(fisher_chunk_drift *d, const fisher_outer *cur, int64_t step,
                                    const fisher_drift_config *cfg, double *js_out, fisher_error *err);
void fisher_chunk_drift_free(fisher_chunk_drift *d);

enum { FISHER_METRIC_TOTAL_VARIATION = 0, FISHER_METRIC_MEAN_JS = 1 };

/* The chunk's score under a metric: total_variation, or js_sum / js_count. */
double fisher_chunk_drift_score(const fisher_chunk_drift *d, int metric);

/* The statistics of one freeze decision (§5). */
typedef struct {
    double mean, std, lambda, threshold;  /* std is the population std */
    size_t kept, frozen;
} fisher_freeze_stats;

/* The freezing rule over the scores of the n live chunks: threshold =
 * mean + lambda·std; keep[i] = 1 when score ≥ threshold, else 0. If none
 * reaches it, the single highest-scoring chunk (the first among equals)
 * stays. n = 0 decides nothing. */
void fisher_freeze_decide(const double *scores, size_t n, double lambda, uint8_t *keep,
                          fisher_freeze_stats *stats);

#endif
