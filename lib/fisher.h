/*
 * fisher.h — FisherAdapTune (FISHERADAPTUNE.md): which parameter groups
 * ("chunks") of a model still learn, decided from how the distribution of
 * their diagonal Fisher information drifts.
 *
 * Per training step, after backward has collected every layer's H_new and
 * S_new (fisher_segformer_collect_stats), fisher_method_step:
 *   1. updates the estimator's H and S (reference | ema) or per-element
 *      squared gradients (empirical);
 *   2. at step 0 freezes every chunk whose Fisher is entirely zero;
 *   3. every ema_interval steps (and at step 0) measures each live chunk's
 *      drift (drift.h) against its Fisher EMA;
 *   4. every freeze_interval steps (step > 0) freezes the chunks scoring
 *      below mean + λ·std of the live chunks' scores.
 * The trainer then masks gradients so frozen elements get zero, decays live
 * elements by hand (w ← w·(1 − lr·wd)), takes an AdamW step with its own
 * decay 0, and zeroes the moments of elements as they freeze (§6).
 *
 * A chunk is a contiguous block of one tensor along axis 0 (row mode) or
 * axis 1 (column mode), keyed `<tensor>.rowblock<i>` / `.colblock<i>`.
 */
#ifndef FISHER_FISHER_H
#define FISHER_FISHER_H

#include <stddef.h>
#include <stdint.h>

#include "drift.h"
#include "error.h"
#include "safetensors.h"
#include "segformer.h"

typedef enum {
    FISHER_ESTIMATOR_REFERENCE, /* H = 0.2 + 0.8·H_new every step, no memory (default) */
    FISHER_ESTIMATOR_EMA,       /* run = run·(1 − g0) + new·g1 across steps, from ones */
    FISHER_ESTIMATOR_EMPIRICAL, /* squared per-element gradient, EMA with decay g0 */
} fisher_estimator;

typedef struct {
    fisher_estimator estimator;
    double gamma0, gamma1;         /* (0.8, 0.8) */
    int64_t ema_interval;          /* steps between drift measurements [50] */
    int64_t freeze_interval;       /* steps between freeze decisions [200] */
    int slice_columns;             /* 0: row blocks (axis 0), 1: column blocks (axis 1) */
    int slice_blocks;              /* blocks per tensor [4] */
    int metric;                    /* FISHER_METRIC_TOTAL_VARIATION or _MEAN_JS */
    double lambda;                 /* threshold = mean + λ·std [1.0] */
    fisher_drift_config drift;     /* decays 0.9 / 0.9, JS log mode */
} fisher_method_config;

fisher_method_config fisher_method_defaults(void);

typedef struct {
    char key[FISHER_NAME_MAX + 32];
    int tensor;                    /* parameter tensor index */
    int layer;                     /* index into fisher_segformer_layers */
    int axis;                      /* 0 or 1 */
    int start, end;                /* index range along axis */
    size_t size;                   /* elements */
    int live;
    int64_t frozen_at;             /* step it froze, -1 while live */
} fisher_chunk;

/* What one step decided; valid until the next step. */
typedef struct {
    int measured;                  /* drift was measured this step */
    const double *js, *js_ema;     /* per chunk (NAN for chunks not measured) */
    int decided;                   /* a freeze decision (or the step-0 zero freeze) happened */
    int zero_freeze;               /* it was the step-0 zero-Fisher freeze */
    fisher_freeze_stats stats;     /* of the interval decision */
    const int *frozen;             /* indices of the chunks frozen by it */
    size_t n_frozen;
    size_t chunks_live;
    size_t params_live;
} fisher_method_report;

typedef struct fisher_method fisher_method;

/* Cuts every parameter tensor of m into chunks. NULL with err on a bad config. */
fisher_method *fisher_method_create(fisher_segformer *m, const fisher_method_config *cfg,
                                    fisher_error *err);
void fisher_method_free(fisher_method *fm);

size_t fisher_method_chunks(const fisher_method *fm, const fisher_chunk **chunks);

/* Whether step `step` reads the layers' statistics: every step for the
 * ema and empirical estimators (they carry memory); for the reference
 * estimator, which keeps none, only at step 0 and when drift is measured —
 * on other steps the statistics would be computed and thrown away. */
int fisher_method_needs_stats(const fisher_method *fm, int64_t step);

/* Runs steps 1–4 above for training step `step` (0-based) on the statistics
 * and gradients of the backward just done. */
int fisher_method_step(fisher_method *fm, int64_t step, fisher_method_report *report,
                       fisher_error *err);

/* 1 for every live element, 0 for frozen ones, in the parameter layout. */
const uint8_t *fisher_method_live_mask(const fisher_method *fm);

/* Freezes chunk c (if live) at `step`, as a decision would. */
void fisher_method_freeze(fisher_method *fm, size_t c, int64_t step);

/* Elements of all live chunks. */
size_t fisher_method_params_live(const fisher_method *fm);

/* The Fisher of chunk c under the current estimator state, into out (size). */
void fisher_method_chunk_fisher(const fisher_method *fm, size_t c, float *out);

/* ---- checkpoints: the method's whole state, so a run resumes exactly ----
 *
 * Tensors written by fisher_method_snapshot and read back by
 * fisher_method_restore (names under "method."):
 *   method.chunks     F64 (chunks, 9): live, frozen_at, measured, js_ema,
 *                     total_variation, js_sum, js_count, last_step, last_value
 *   method.ema_F      F32 (Σ sizes of measured live chunks): their Fisher EMAs,
 *                     in chunk order
 *   method.estimator  F32: every layer's running H and S
 *   method.empirical  F32 (parameters): empirical estimator only
 * The predicted percentile brackets (drift.c) are not state: they only
 * speed up a measurement, whose result does not depend on them. */
#define FISHER_METHOD_TENSORS 4

/* Fills tensors[0..*n) (at most FISHER_METHOD_TENSORS) for a checkpoint;
 * they point into fm and into *scratch (malloc'd: free it after writing).
 * Valid until the next step. Returns 0, or -1 with err (out of memory). */
int fisher_method_snapshot(const fisher_method *fm, fisher_st_tensor *tensors, size_t *n, void **scratch,
                           fisher_error *err);
/* Restores a snapshot into a method fresh from fisher_method_create on the
 * same model and config: frozen chunks freeze again (at their step), live
 * ones get their drift state. Returns 0, or -1 with err naming what does
 * not fit (another model, another slicing). */
int fisher_method_restore(fisher_method *fm, const fisher_safetensors *st, fisher_error *err);

#endif
