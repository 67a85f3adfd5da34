/*
 * rng.h — the library's one source of randomness: a seeded xoshiro256**
 * generator held by the caller (no global state), so a run is reproducible
 * from its seed and two jobs never share a stream.
 */
#ifndef FISHER_RNG_H
#define FISHER_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t s[4];
} fisher_rng;

void fisher_rng_seed(fisher_rng *rng, uint64_t seed);
uint64_t fisher_rng_next(fisher_rng *rng);
/* Uniform in [0, 1) with 24 random bits (every value exactly a float). */
float fisher_rng_uniform(fisher_rng *rng);
/* Standard normal (Box–Muller, computed in double). */
float fisher_rng_normal(fisher_rng *rng);
/* Normal(0, std) redrawn until it falls in [lo, hi] (timm's trunc_normal_). */
float fisher_rng_trunc_normal(fisher_rng *rng, float std, float lo, float hi);

#endif
