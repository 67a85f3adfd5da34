/* loss.c — see loss.h. Sums run in double: a 256×256 batch of 4 is a
 * quarter million terms, and the parity test checks the loss to 1e-6. */
#include "loss.h"

#include <math.h>

static double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

float fisher_seg_loss(float *dlogits, const float *logits, const float *target, size_t n,
                      float dice_weight) {
    float loss;
    fisher_seg_loss_global(&loss, dlogits, logits, target, n, dice_weight, NULL, NULL);
    return loss; /* cannot fail without a communicator */
}

int fisher_seg_loss_global(float *loss, float *dlogits, const float *logits, const float *target,
                           size_t n_local, float dice_weight, fisher_comm *comm, fisher_error *err) {
    /* Σ BCE, Σ p·t, Σ p, Σ t, pixels: local, then global */
    double sums[5] = {0.0, 0.0, 0.0, 0.0, (double)n_local};
    for (size_t i = 0; i < n_local; i++) {
        double x = logits[i], t = target[i];
        /* log(1 + e^−x) computed without overflow for either sign of x */
        sums[0] += (1.0 - t) * x + (x < 0 ? -x + log1p(exp(x)) : log1p(exp(-x)));
        double p = sigmoid(x);
        sums[1] += p * t, sums[2] += p, sums[3] += t;
    }
    if (fisher_comm_sum_f64(comm, sums, 5, err)) return -1;
    double bce = sums[0], inter = sums[1], sum_p = sums[2], sum_t = sums[3], n = sums[4];
    if (n == 0) {
        *loss = 0.0f;
        return 0;
    }
    double denom = sum_p + sum_t + 1e-6;
    double dice = 2.0 * inter / denom;
    if (dlogits) {
        /* d(1 − Dice)/dp_i = −(2 t_i·denom − 2·inter) / denom² */
        for (size_t i = 0; i < n_local; i++) {
            double p = sigmoid(logits[i]), t = target[i];
            double ddice_dp = (2.0 * t * denom - 2.0 * inter) / (denom * denom);
            dlogits[i] = (float)((p - t) / n - dice_weight * ddice_dp * p * (1.0 - p));
        }
    }
    *loss = (float)(bce / n + dice_weight * (1.0 - dice));
    return 0;
}

void fisher_confusion_add(fisher_confusion *c, const float *logits, const float *target, size_t n) {
    for (size_t i = 0; i < n; i++) {
        int pred = logits[i] >= 0.0f, truth = target[i] > 0.5f;
        c->tp += pred && truth;
        c->fp += pred && !truth;
        c->fn += !pred && truth;
        c->tn += !pred && !truth;
    }
}

static double ratio(double num, double den) { return den > 0 ? num / den : 1.0; }

fisher_seg_metrics fisher_confusion_metrics(const fisher_confusion *c) {
    double tp = (double)c->tp, fp = (double)c->fp, fn = (double)c->fn, tn = (double)c->tn;
    fisher_seg_metrics m;
    m.accuracy = ratio(tp + tn, tp + tn + fp + fn);
    m.precision = ratio(tp, tp + fp);
    m.recall = ratio(tp, tp + fn);
    m.f1 = ratio(2 * tp, 2 * tp + fp + fn);
    m.iou = ratio(tp, tp + fp + fn);
    return m;
}
