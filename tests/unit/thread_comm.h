/*
 * thread_comm.h — an in-process communicator for the unit tests of
 * data-parallel training (issue 9): the ranks are threads of one process,
 * meeting at a pthread barrier and sharing pointers. Rank 0 adds the ranks'
 * buffers in rank order, so every rank gets the same bits, run after run —
 * the contract of comm.h that an MPI implementation must also keep.
 *
 * cmocka's assertions longjmp and are not thread-safe: rank threads only
 * record what happened; the main thread asserts after run_ranks joins them.
 */
#ifndef FISHER_THREAD_COMM_H
#define FISHER_THREAD_COMM_H

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "error.h"

#define MAX_RANKS 4

typedef struct {
    pthread_barrier_t barrier;
    int size;
    void *bufs[MAX_RANKS];
    size_t ns[MAX_RANKS];
    void *sum;
    int bad;
    int calls; /* collectives completed (rank 0 counts) */
} hub;

static inline void hub_init(hub *h, int size) {
    memset(h, 0, sizeof *h);
    h->size = size;
    pthread_barrier_init(&h->barrier, NULL, (unsigned)size);
}

static inline void hub_destroy(hub *h) { pthread_barrier_destroy(&h->barrier); }

/* Every rank posts its buffer; rank 0 sums them in rank order into a shared
 * result (or notes that the ranks disagree on n); every rank copies the
 * result; rank 0 frees it once all have. */
static inline int hub_allreduce(fisher_comm *c, void *x, size_t n, int f64, fisher_error *err) {
    hub *h = c->ctx;
    size_t elem = f64 ? sizeof(double) : sizeof(float);
    h->bufs[c->rank] = x, h->ns[c->rank] = n;
    pthread_barrier_wait(&h->barrier);
    if (c->rank == 0) {
        h->bad = 0;
        for (int r = 0; r < h->size; r++) h->bad |= h->ns[r] != n;
        if (!h->bad && !(h->sum = calloc(n ? n : 1, elem))) h->bad = 1;
        for (int r = 0; !h->bad && r < h->size; r++)
            for (size_t i = 0; i < n; i++) {
                if (f64) ((double *)h->sum)[i] += ((const double *)h->bufs[r])[i];
                else ((float *)h->sum)[i] += ((const float *)h->bufs[r])[i];
            }
        h->calls++;
    }
    pthread_barrier_wait(&h->barrier);
    int bad = h->bad;
    if (!bad) memcpy(x, h->sum, n * elem);
    pthread_barrier_wait(&h->barrier);
    if (c->rank == 0) free(h->sum), h->sum = NULL;
    if (bad) return fisher_errorf(err, "rank %d: the ranks disagree on the all-reduce's length", c->rank);
    return 0;
}

static inline int hub_f64(fisher_comm *c, double *x, size_t n, fisher_error *err) {
    return hub_allreduce(c, x, n, 1, err);
}

static inline int hub_f32(fisher_comm *c, float *x, size_t n, fisher_error *err) {
    return hub_allreduce(c, x, n, 0, err);
}

static inline fisher_comm hub_comm(hub *h, int rank) {
    return (fisher_comm){rank, h->size, hub_f64, hub_f32, h};
}

/* Runs fn(args[r]) on `size` threads, rank r's arg being args + r·arg_size. */
static inline void run_ranks(int size, void *(*fn)(void *), void *args, size_t arg_size) {
    pthread_t th[MAX_RANKS];
    for (int r = 0; r < size; r++)
        assert_int_equal(pthread_create(&th[r], NULL, fn, (char *)args + (size_t)r * arg_size), 0);
    for (int r = 0; r < size; r++) pthread_join(th[r], NULL);
}

#endif
