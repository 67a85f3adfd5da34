/*
 * optim.h — AdamW with PyTorch's semantics (torch.optim.AdamW, single-tensor
 * path): decoupled weight decay w ← w·(1 − lr·wd), bias-corrected moments,
 * and the update w ← w − (lr / bc1) · m / (sqrt(v) / sqrt(bc2) + eps).
 *
 * The optimiser works on a flat parameter array; its two moment arrays use
 * the same layout, so a frozen range of parameters is a range whose moments
 * can be zeroed and skipped.
 */
#ifndef FISHER_OPTIM_H
#define FISHER_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
} fisher_adamw_config;

/* lr 1e-4, betas (0.9, 0.999), eps 1e-8, weight decay 5e-5 (FISHERADAPTUNE.md §7). */
fisher_adamw_config fisher_adamw_defaults(void);

typedef struct {
    fisher_adamw_config cfg;
    size_t n;
    float *m, *v; /* first and second moments (n) */
    int64_t step; /* steps taken */
} fisher_adamw;

/* Validates cfg and allocates zeroed moments for n parameters. */
int fisher_adamw_init(fisher_adamw *opt, size_t n, fisher_adamw_config cfg, fisher_error *err);
void fisher_adamw_free(fisher_adamw *opt);
/* A run [start, end) of parameters that train. */
typedef struct {
    size_t start, end;
} fisher_range;

/* One step over all n parameters. */
void fisher_adamw_step(fisher_adamw *opt, float *params, const float *grads);
/* One step over the parameters in the given runs; the others — frozen —
 * are not touched at all: no decay, no moments, no work. */
void fisher_adamw_step_ranges(fisher_adamw *opt, float *params, const float *grads,
                              const fisher_range *ranges, size_t n_ranges);
/* The runs of non-zero bytes of mask (n) into ranges (room for n/2 + 1);
 * returns how many. */
size_t fisher_mask_ranges(const uint8_t *mask, size_t n, fisher_range *ranges);
/* Zeroes the moments of every parameter whose mask byte is 0, so that
 * elements that freeze carry nothing over (FISHERADAPTUNE.md §6). */
void fisher_adamw_zero_frozen(fisher_adamw *opt, const uint8_t *mask);

#endif
