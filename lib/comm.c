/* comm.c — see comm.h. The wrappers exist so that every collective the
 * library makes goes through one place that knows what NULL means and
 * names the failed collective when an implementation leaves err empty. */
#include "comm.h"

int fisher_comm_sum_f64(fisher_comm *c, double *x, size_t n, fisher_error *err) {
    if (!c || n == 0) return 0;
    if (err) err->msg[0] = '\0';
    if (c->allreduce_sum_f64(c, x, n, err) == 0) return 0;
    if (err && !err->msg[0])
        fisher_errorf(err, "rank %d of %d: all-reduce of %zu doubles failed", c->rank, c->size, n);
    return -1;
}

int fisher_comm_sum_f32(fisher_comm *c, float *x, size_t n, fisher_error *err) {
    if (!c || n == 0) return 0;
    if (err) err->msg[0] = '\0';
    if (c->allreduce_sum_f32(c, x, n, err) == 0) return 0;
    if (err && !err->msg[0])
        fisher_errorf(err, "rank %d of %d: all-reduce of %zu floats failed", c->rank, c->size, n);
    return -1;
}

int fisher_comm_validate(const fisher_comm *c, fisher_error *err) {
    if (c->size < 1 || c->rank < 0 || c->rank >= c->size)
        return fisher_errorf(err, "communicator: rank %d of size %d (need 0 ≤ rank < size, size ≥ 1)",
                             c->rank, c->size);
    if (!c->allreduce_sum_f64 || !c->allreduce_sum_f32)
        return fisher_errorf(err, "communicator: allreduce_sum_f64 and allreduce_sum_f32 must both be set");
    return 0;
}
