/* optim.c — see optim.h. Scalars (bias corrections, step size) are computed
 * in double as PyTorch computes them in Python, then applied in float. */
#include "optim.h"

#include <math.h>
#include <stdlib.h>

fisher_adamw_config fisher_adamw_defaults(void) {
    return (fisher_adamw_config){.lr = 1e-4f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                                 .weight_decay = 5e-5f};
}

int fisher_adamw_init(fisher_adamw *opt, size_t n, fisher_adamw_config cfg, fisher_error *err) {
    if (!(cfg.lr >= 0 && cfg.lr < 10)) return fisher_errorf(err, "optim.lr must be in [0, 10), got %g", cfg.lr);
    if (!(cfg.beta1 >= 0 && cfg.beta1 < 1) || !(cfg.beta2 >= 0 && cfg.beta2 < 1))
        return fisher_errorf(err, "optim.betas must be in [0, 1), got (%g, %g)", cfg.beta1, cfg.beta2);
    if (!(cfg.eps > 0 && cfg.eps < 1)) return fisher_errorf(err, "optim.eps must be in (0, 1), got %g", cfg.eps);
    if (!(cfg.weight_decay >= 0 && cfg.weight_decay < 1))
        return fisher_errorf(err, "optim.weight_decay must be in [0, 1), got %g", cfg.weight_decay);
    opt->cfg = cfg;
    opt->n = n;
    opt->step = 0;
    opt->m = calloc(n ? n : 1, sizeof(float));
    opt->v = calloc(n ? n : 1, sizeof(float));
    if (!opt->m || !opt->v) {
        fisher_adamw_free(opt);
        return fisher_errorf(err, "out of memory for optimiser moments of %zu parameters", n);
    }
    return 0;
}

void fisher_adamw_free(fisher_adamw *opt) {
    free(opt->m);
    free(opt->v);
    opt->m = opt->v = NULL;
}

void fisher_adamw_step(fisher_adamw *opt, float *params, const float *grads) {
    fisher_range all = {0, opt->n};
    fisher_adamw_step_ranges(opt, params, grads, &all, 1);
}

void fisher_adamw_step_ranges(fisher_adamw *opt, float *params, const float *grads,
                              const fisher_range *ranges, size_t n_ranges) {
    const fisher_adamw_config *c = &opt->cfg;
    opt->step++;
    double bc1 = 1.0 - pow((double)c->beta1, (double)opt->step);
    double bc2 = 1.0 - pow((double)c->beta2, (double)opt->step);
    float decay = (float)(1.0 - (double)c->lr * (double)c->weight_decay);
    float step_size = (float)((double)c->lr / bc1);
    float bc2_sqrt = (float)sqrt(bc2);
    float b1 = c->beta1, b2 = c->beta2, eps = c->eps;
    float *m = opt->m, *v = opt->v;
    for (size_t r = 0; r < n_ranges; r++) {
        size_t start = ranges[r].start, end = ranges[r].end;
#pragma omp parallel for simd schedule(static) if (end - start > 65536)
        for (size_t i = start; i < end; i++) {
            float g = grads[i];
            params[i] *= decay;
            m[i] = m[i] * b1 + g * (1.0f - b1);
            v[i] = v[i] * b2 + g * g * (1.0f - b2);
            params[i] -= step_size * m[i] / (sqrtf(v[i]) / bc2_sqrt + eps);
        }
    }
}

size_t fisher_mask_ranges(const uint8_t *mask, size_t n, fisher_range *ranges) {
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        while (i < n && !mask[i]) i++;
        if (i == n) break;
        size_t start = i;
        while (i < n && mask[i]) i++;
        ranges[k++] = (fisher_range){start, i};
    }
    return k;
}

void fisher_adamw_zero_frozen(fisher_adamw *opt, const uint8_t *mask) {
    for (size_t i = 0; i < opt->n; i++)
        if (!mask[i]) opt->m[i] = opt->v[i] = 0.0f;
}
