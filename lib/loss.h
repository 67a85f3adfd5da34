/*
 * loss.h — the segmentation loss and metrics of FisherAdapTune's reference
 * (FISHERADAPTUNE.md §7).
 *
 * Loss = BCE-with-logits (mean over every pixel and label)
 *      + dice_weight · (1 − Dice),  Dice = 2·Σ p·t / (Σ p + Σ t + 1e-6)
 * with p = sigmoid(logit), summed over the whole batch.
 *
 * Data-parallel training (comm.h) takes the loss over the GLOBAL batch:
 * each rank sums its own pixels, one all-reduce of five doubles (Σ BCE,
 * Σ p·t, Σ p, Σ t, pixel count) makes the global sums, and every rank gets
 * the same loss and the gradient of that loss w.r.t. its own logits. The
 * gradients of the ranks then simply add up (train.h).
 *
 * Metrics threshold sigmoid(logit) ≥ 0.5, i.e. logit ≥ 0, and are computed
 * from confusion counts so they can be accumulated over any number of
 * batches before reading them out.
 */
#ifndef FISHER_LOSS_H
#define FISHER_LOSS_H

#include <stddef.h>
#include <stdint.h>

#include "comm.h"
#include "error.h"

#define FISHER_DICE_WEIGHT_DEFAULT 0.65f

/* logits and target (n); target holds 0 or 1. Returns the loss; when
 * dlogits is non-NULL it receives (overwrites) d loss / d logits. */
float fisher_seg_loss(float *dlogits, const float *logits, const float *target, size_t n,
                      float dice_weight);
/* The loss of the global batch whose local part (n) this rank holds: *loss
 * gets the global loss (the same on every rank), dlogits (when non-NULL)
 * d global loss / d local logits. comm NULL: one process, bit for bit
 * fisher_seg_loss. Every rank must call it (n may differ, even be 0).
 * Returns 0, or -1 with err when the all-reduce fails. */
int fisher_seg_loss_global(float *loss, float *dlogits, const float *logits, const float *target,
                           size_t n, float dice_weight, fisher_comm *comm, fisher_error *err);

typedef struct {
    int64_t tp, fp, fn, tn;
} fisher_confusion;

void fisher_confusion_add(fisher_confusion *c, const float *logits, const float *target, size_t n);

typedef struct {
    double accuracy, precision, recall, f1, iou;
} fisher_seg_metrics;

/* accuracy = (TP+TN)/all; precision = TP/(TP+FP); recall = TP/(TP+FN);
 * F1 = 2TP/(2TP+FP+FN); IoU = TP/(TP+FP+FN). A ratio whose denominator is
 * 0 means there was nothing to find and nothing was found: it is 1. */
fisher_seg_metrics fisher_confusion_metrics(const fisher_confusion *c);

#endif
