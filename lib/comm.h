/*
 * comm.h — the communicator data-parallel training runs on (issue 9).
 *
 * libfisher has no MPI in it: it has no globals and does no I/O, and a
 * transport is both. Instead the caller hands the library a fisher_comm, a
 * table of the two collectives the numerics need — an in-place sum over
 * every rank, for doubles and for floats — and the library calls them at
 * fixed points of a training step: the loss's global sums (loss.h), SyncBN's
 * batch statistics (layers.h), the averaged Fisher statistics (segformer.h)
 * and the gradient all-reduce (train.h). The daemon's `fisherd worker` will
 * implement it with MPI_Allreduce; the unit tests with threads.
 *
 * A NULL communicator everywhere means one process: exactly the behaviour
 * and the bits of a library without this header.
 *
 * Contract for an implementation:
 *   - every rank calls the same sequence of collectives with the same n
 *     (the library guarantees it for ranks that run the same model, trainer
 *     configuration and strategy on equally shaped shards);
 *   - on return x holds the sum over ranks, and the SAME BITS on every rank:
 *     the ranks' parameters, running statistics and freeze decisions stay
 *     identical only because every rank computes from identical sums (an
 *     MPI implementation gets this from a reduction whose order does not
 *     depend on the rank, e.g. a fixed algorithm, or a reduce to rank 0
 *     followed by a broadcast);
 *   - return 0, or -1 with err saying what failed (which rank, which host):
 *     the step then fails with that message. After a failure the ranks are
 *     out of step and the run must end.
 */
#ifndef FISHER_COMM_H
#define FISHER_COMM_H

#include <stddef.h>

#include "error.h"

typedef struct fisher_comm {
    int rank, size;   /* 0 ≤ rank < size */
    /* x (n) ← Σ over ranks of x (n), in place */
    int (*allreduce_sum_f64)(struct fisher_comm *c, double *x, size_t n, fisher_error *err);
    int (*allreduce_sum_f32)(struct fisher_comm *c, float *x, size_t n, fisher_error *err);
    void *ctx;        /* the implementation's own */
} fisher_comm;

/* The sums, for library code: a no-op returning 0 for a NULL comm (one
 * process), and nothing called for n == 0 (every rank agrees on n). */
int fisher_comm_sum_f64(fisher_comm *c, double *x, size_t n, fisher_error *err);
int fisher_comm_sum_f32(fisher_comm *c, float *x, size_t n, fisher_error *err);

/* Checks rank, size and the two functions: 0, or -1 with err saying which
 * is wrong. */
int fisher_comm_validate(const fisher_comm *c, fisher_error *err);

#endif
