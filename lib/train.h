/*
 * train.h — training and evaluation steps, and the simplest loop over them.
 *
 * fisher_trainer is one training step and the state it carries between
 * steps (the optimiser's moments, the loss gradient buffer):
 *     zero_grad → forward → loss → backward → AdamW.
 * fisher_evaluate measures a model in inference mode over a batch source.
 * fisher_train is a plain loop of trainer steps; a whole job (datasets,
 * evaluation schedule, early stopping, checkpoints) is fisher_job_run in
 * job.h, built on the same two pieces. Nothing here prints or holds global
 * state; data arrives through a batch callback.
 */
#ifndef FISHER_TRAIN_H
#define FISHER_TRAIN_H

#include <stdint.h>

#include "error.h"
#include "fisher.h"
#include "loss.h"
#include "optim.h"
#include "segformer.h"

/* Threads for everything numeric the calling thread does from now on:
 * OpenBLAS's GEMMs and the library's own OpenMP loops. */
void fisher_set_threads(int n);

/* Fills images (B, H, W, C) and masks (B, H, W, labels) for `step` and
 * returns how many of the B samples are real (B, or fewer for the last
 * batch of an evaluation pass — the rest are filler to be ignored), or -1
 * with err set (the run then fails with that message). */
typedef int (*fisher_batch_fn)(void *ctx, int64_t step, float *images, float *masks, int B, int H,
                               int W, fisher_error *err);

/* Which parameters train: the method, and the fixed recipes it is compared with. */
typedef enum {
    FISHER_STRATEGY_FULL,      /* every parameter */
    FISHER_STRATEGY_FISHER,    /* FisherAdapTune: all at first, then progressively fewer */
    FISHER_STRATEGY_DECODER,   /* only decode_head */
    FISHER_STRATEGY_NORM,      /* only LayerNorm/BatchNorm weights and biases */
    FISHER_STRATEGY_BITFIT,    /* only biases */
} fisher_strategy;

/* "full", "fisher", ...; -1 for an unknown name. */
int fisher_strategy_parse(const char *name);
const char *fisher_strategy_name(fisher_strategy s);

typedef struct {
    fisher_segformer *model;   /* not owned */
    fisher_strategy strategy;
    fisher_adamw opt;
    fisher_method *method;     /* FISHER_STRATEGY_FISHER only */
    fisher_method_report report; /* what the method decided at the last step */
    uint8_t *trainable;        /* fixed recipes: 1 per trainable element; NULL for full */
    size_t params_trainable;   /* elements that train now */
    int skip_frozen_work;      /* 1 (default): frozen rows and tensors cost no gradient
                                * work (§8, fisher_segformer_set_live); 0: the plain
                                * masked computation, for comparison (set it before
                                * the first step) */
    int model_told;            /* the model knows the live mask as it is now */
    fisher_range *ranges;      /* the runs of elements AdamW updates */
    size_t n_ranges;
    int64_t step;              /* steps taken */
    float *dlogits;            /* (B, H, W, labels) */
    size_t n_logits;
    float dice_weight;
    /* data parallel (see the top of this file); all zero/NULL for one process */
    fisher_comm *comm;         /* the caller's, not owned */
    fisher_comm counted;       /* what the model calls: forwards to comm, counts bytes */
    float *fused;              /* (FISHER_FUSED_FLOATS) gradient all-reduce buffer */
    size_t fused_floats;       /* floats per gradient all-reduce: FISHER_FUSED_FLOATS, or
                                * fewer (tests exercise the packing across buffers) */
    uint64_t grad_allreduce_calls; /* gradient all-reduces of the last step */
    uint64_t allreduce_bytes;  /* bytes all-reduced by the last step: loss, SyncBN,
                                * Fisher statistics and gradients */
    uint64_t grad_allreduce_bytes; /* of which gradients (falls as chunks freeze) */
    uint64_t allreduce_calls;  /* collectives of the last step */
} fisher_trainer;

/* Floats per gradient all-reduce: 1 Mi (4 MiB). Large enough that mit-b0's
 * 3.7 M parameters go in 4 calls rather than one per tensor (hundreds),
 * small enough to stay a bounded copy. */
#define FISHER_FUSED_FLOATS ((size_t)1 << 20)

/* Prepares m for batches of (B, H, W), the strategy's trainable set and an
 * AdamW over it. method may be NULL (defaults) and is used by
 * FISHER_STRATEGY_FISHER only. */
int fisher_trainer_init(fisher_trainer *t, fisher_segformer *m, int B, int H, int W,
                        fisher_adamw_config optim, float dice_weight, fisher_strategy strategy,
                        const fisher_method_config *method, fisher_error *err);
/* Makes t one rank of a data-parallel run over comm (see the top of this
 * file), before its first step; every rank calls it. t must not move in
 * memory from now on (the model calls back into it to count bytes); comm
 * must outlive t. Ranks must start alike — the same parameters and
 * buffers, local batch shape, strategy, optimiser settings and trainable
 * set — and this checks it with one all-reduce of a fingerprint of all
 * that (not of the method's config: pass the same one everywhere). Calls
 * that change training state (fisher_trainer_freeze, _restore) must be
 * made on every rank alike too. Returns 0, or -1 with err for an invalid
 * communicator, a failed all-reduce, or ranks that do not start alike. */
int fisher_trainer_set_comm(fisher_trainer *t, fisher_comm *comm, fisher_error *err);
/* Whether every rank still holds what this one does (parameters, buffers
 * and the rest of set_comm's check), at the cost of one pass over the
 * parameters and one all-reduce of 8 doubles. Ranks stay identical only if
 * the communicator returns the same bits everywhere (comm.h); a worker can
 * call this every so often, on every rank alike, to catch one that does
 * not. Returns 0, or -1 with err on every rank when they differ. */
int fisher_trainer_check_ranks(fisher_trainer *t, fisher_error *err);
/* Releases what init allocated and detaches from the model; a second call
 * does nothing. */
void fisher_trainer_free(fisher_trainer *t);
/* One step on images (B, H, W, C) and masks; the batch's loss in *loss
 * (with a communicator: this rank's shard, and the global batch's loss).
 * In the order of FISHERADAPTUNE.md §6: forward, loss, backward, Fisher
 * statistics and the method's decisions, then AdamW on the live elements
 * only (decoupled decay included), moments of frozen elements zeroed. */
int fisher_trainer_step(fisher_trainer *t, const float *images, const float *masks, float *loss,
                        fisher_error *err);

/* Freezes the given chunks now (strategy fisher only), with everything a
 * decision does: moments zeroed, gradient work of the frozen rows (and of
 * tensors frozen whole) skipped from the next step. For imposing a freezing
 * schedule (benchmarks, tests). Returns 0, or -1 for another strategy. */
int fisher_trainer_freeze(fisher_trainer *t, const size_t *chunks, size_t n, fisher_error *err);

/* Evaluates m in inference mode (BatchNorm on running statistics) over
 * `batches` batches of (B, H, W) from next_batch: the metrics of all their
 * real pixels together, and the mean per-sample loss. Returns 0, or -1. */
int fisher_evaluate(fisher_segformer *m, int64_t batches, int B, int H, int W, float dice_weight,
                    fisher_batch_fn next_batch, void *batch_ctx, fisher_seg_metrics *metrics,
                    double *mean_loss, fisher_error *err);

/* What an evaluation adds up, before it becomes metrics: kept apart so
 * that the ranks of a data-parallel job (issue 9) can each evaluate some
 * of the batches and all-reduce these sums into the metrics of all. */
typedef struct {
    double loss_sum;           /* Σ per-sample loss */
    int64_t samples;           /* real samples */
    fisher_confusion confusion;
} fisher_eval_sums;

/* fisher_evaluate's work on batches [first, first + count) only, ADDED
 * into *sums (zero it first). count may be 0 (a rank with no batch).
 * Returns 0, or -1 with err set. */
int fisher_evaluate_sums(fisher_segformer *m, int64_t first, int64_t count, int B, int H, int W,
                         float dice_weight, fisher_batch_fn next_batch, void *batch_ctx,
                         fisher_eval_sums *sums, fisher_error *err);
/* *sums ← Σ over comm's ranks of *sums (one all-reduce of 6 doubles; the
 * counts are exact below 2^53 pixels); NULL comm: nothing. 0, or -1. */
int fisher_eval_sums_allreduce(fisher_eval_sums *sums, fisher_comm *comm, fisher_error *err);
/* The metrics and mean per-sample loss (0 without samples) of sums. */
void fisher_eval_sums_metrics(const fisher_eval_sums *sums, fisher_seg_metrics *metrics,
                              double *mean_loss);

typedef struct {
    int threads;               /* see fisher_set_threads; 0 keeps the current setting */
    int batch_size;
    int image_height, image_width;
    int64_t steps;
    float dice_weight;
    fisher_adamw_config optim;
    fisher_strategy strategy;  /* FULL when zero-initialised */
} fisher_train_config;

typedef struct {
    int64_t step, steps;       /* step just finished (1-based) and the total */
    float loss;
    double seconds;            /* wall time of this step */
} fisher_progress;

typedef void (*fisher_progress_fn)(void *ctx, const fisher_progress *p);

/* Trains m for cfg->steps steps, stopping early (cleanly, between steps)
 * when *cancel becomes non-zero. Returns the number of steps done, or -1
 * with err set on a bad config or a failed batch. */
int64_t fisher_train(fisher_segformer *m, const fisher_train_config *cfg, fisher_batch_fn next_batch,
                     void *batch_ctx, fisher_progress_fn on_progress, void *progress_ctx,
                     const volatile int *cancel, fisher_error *err);

/* Monotonic seconds, for step timings. */
double fisher_now_seconds(void);

/* Continues a trainer fresh from fisher_trainer_init (on a model whose
 * weights were loaded from the same checkpoint) where the checkpoint st
 * left off: AdamW's moments ("optimizer.exp_avg.<tensor>", "...exp_avg_sq...")
 * and step count, the method's state (fisher_method_restore), and the step.
 * Returns 0, or -1 with err naming what does not fit. */
int fisher_trainer_restore(fisher_trainer *t, const fisher_safetensors *st, int64_t step, int64_t opt_step,
                           fisher_error *err);

#endif
