/* train.c — see train.h. */
#include "train.h"

#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <time.h>


static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void fisher_set_threads(int n) {
    if (n < 1) return;
    openblas_set_num_threads(n);
    omp_set_num_threads(n);
}

int64_t fisher_train(fisher_segformer *m, const fisher_train_config *cfg, fisher_batch_fn next_batch,
                     void *batch_ctx, fisher_progress_fn on_progress, void *progress_ctx,
                     const volatile int *cancel, fisher_error *err) {
    int B = cfg->batch_size, H = cfg->image_height, W = cfg->image_width;
    if (B < 1 || cfg->steps < 0)
        return fisher_errorf(err, "batch_size must be ≥ 1 and steps ≥ 0 (got %d, %lld)", B,
                             (long long)cfg->steps);
    if (fisher_segformer_prepare(m, B, H, W, err)) return -1;
    fisher_set_threads(cfg->threads);
    const fisher_segformer_config *mc = fisher_segformer_get_config(m);
    size_t npix = (size_t)B * H * W;
    size_t nlab = npix * (size_t)mc->num_labels;
    float *images = malloc(npix * (size_t)mc->num_channels * sizeof(float));
    float *masks = malloc(nlab * sizeof(float));
    float *dlogits = malloc(nlab * sizeof(float));
    fisher_adamw opt = {0};
    int64_t step = -1;
    if (!images || !masks || !dlogits) {
        fisher_errorf(err, "out of memory for a batch of %d at %dx%d", B, H, W);
        goto out;
    }
    if (fisher_adamw_init(&opt, fisher_segformer_params(m)->total, cfg->optim, err)) goto out;
    for (step = 0; step < cfg->steps; step++) {
        if (cancel && *cancel) break;
        double t0 = now_seconds();
        if (next_batch(batch_ctx, step, images, masks, B, H, W, err)) {
            step = -1;
            goto out;
        }
        fisher_segformer_zero_grad(m);
        const float *logits = fisher_segformer_forward(m, images, 1);
        float loss = fisher_seg_loss(dlogits, logits, masks, nlab, cfg->dice_weight);
        if (fisher_segformer_backward(m, dlogits, err)) {
            step = -1;
            goto out;
        }
        fisher_adamw_step(&opt, fisher_segformer_param_data(m), fisher_segformer_grad_data(m));
        if (on_progress) {
            fisher_progress p = {step + 1, cfg->steps, loss, now_seconds() - t0};
            on_progress(progress_ctx, &p);
        }
    }
out:
    fisher_adamw_free(&opt);
    free(images), free(masks), free(dlogits);
    return step;
}

int fisher_evaluate(fisher_segformer *m, int batches, int B, int H, int W, float dice_weight,
                    fisher_batch_fn next_batch, void *batch_ctx, fisher_seg_metrics *metrics,
                    double *mean_loss, fisher_error *err) {
    if (batches < 1) return fisher_errorf(err, "evaluation needs at least one batch");
    if (fisher_segformer_prepare(m, B, H, W, err)) return -1;
    const fisher_segformer_config *mc = fisher_segformer_get_config(m);
    size_t npix = (size_t)B * H * W, nlab = npix * (size_t)mc->num_labels;
    float *images = malloc(npix * (size_t)mc->num_channels * sizeof(float));
    float *masks = malloc(nlab * sizeof(float));
    int rc = -1;
    fisher_confusion confusion = {0};
    double loss_sum = 0;
    if (!images || !masks) {
        fisher_errorf(err, "out of memory for an evaluation batch of %d at %dx%d", B, H, W);
        goto out;
    }
    for (int i = 0; i < batches; i++) {
        if (next_batch(batch_ctx, i, images, masks, B, H, W, err)) goto out;
        const float *logits = fisher_segformer_forward(m, images, 0);
        loss_sum += fisher_seg_loss(NULL, logits, masks, nlab, dice_weight);
        fisher_confusion_add(&confusion, logits, masks, nlab);
    }
    *metrics = fisher_confusion_metrics(&confusion);
    if (mean_loss) *mean_loss = loss_sum / batches;
    rc = 0;
out:
    free(images), free(masks);
    return rc;
}
