/*
 * train.h — the training loop: the one entry point the CLI and the daemon's
 * workers both call. It owns nothing global; data comes in through a batch
 * callback, and everything it has to say goes out through a progress
 * callback. It stops early, cleanly, when *cancel becomes non-zero.
 *
 * Order of one step: zero_grad → forward → loss → backward → AdamW.
 */
#ifndef FISHER_TRAIN_H
#define FISHER_TRAIN_H

#include <stdint.h>

#include "error.h"
#include "loss.h"
#include "optim.h"
#include "segformer.h"

/* Threads for everything numeric the calling thread does from now on:
 * OpenBLAS's GEMMs (a process-wide setting of OpenBLAS) and the library's
 * own OpenMP loops (a setting of the calling thread only). */
void fisher_set_threads(int n);

typedef struct {
    int threads;               /* see fisher_set_threads; 0 keeps the current setting */
    int batch_size;
    int image_height, image_width;
    int64_t steps;
    float dice_weight;
    fisher_adamw_config optim;
} fisher_train_config;

/* Fills images (B, H, W, C) and masks (B, H, W, 1) for `step`. Returns 0,
 * or -1 with err set (the run then fails with that message). */
typedef int (*fisher_batch_fn)(void *ctx, int64_t step, float *images, float *masks, int B, int H,
                               int W, fisher_error *err);

typedef struct {
    int64_t step, steps;       /* step just finished (1-based) and the total */
    float loss;
    double seconds;            /* wall time of this step */
} fisher_progress;

typedef void (*fisher_progress_fn)(void *ctx, const fisher_progress *p);

/* Trains m for cfg->steps steps. Returns the number of steps done, or -1
 * with err set on a bad config or a failed batch. */
int64_t fisher_train(fisher_segformer *m, const fisher_train_config *cfg, fisher_batch_fn next_batch,
                     void *batch_ctx, fisher_progress_fn on_progress, void *progress_ctx,
                     const volatile int *cancel, fisher_error *err);

/* Evaluates m in inference mode (BatchNorm on running statistics) over
 * `batches` batches of (B, H, W) from next_batch and returns the metrics of
 * all their pixels together, and the mean loss. Returns 0, or -1 with err. */
int fisher_evaluate(fisher_segformer *m, int batches, int B, int H, int W, float dice_weight,
                    fisher_batch_fn next_batch, void *batch_ctx, fisher_seg_metrics *metrics,
                    double *mean_loss, fisher_error *err);

#endif
