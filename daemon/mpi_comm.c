/*
 * mpi_comm.c — see mpi_comm.h. lib/comm.h's two sums over MPI_COMM_WORLD,
 * with Open MPI opened by dlopen in the worker alone.
 *
 * Why not link it: libmpi and what it pulls in (libopen-rte, libopen-pal,
 * hwloc, libevent, ...) were ~1 MB more of `fisherd serve`'s idle
 * resident memory (VmRSS after start 10.1 → 11.0-11.3 MB, medians of 5
 * starts, measured twice; the daemon's target is < 20 MB after a
 * benchmark) and a few ms more start-up, for a daemon that never calls MPI
 * itself: it runs `mpirun fisherd worker`. notify.c does the same with
 * libsystemd.
 *
 * The price of dlopen is the handles. Open MPI's MPI_COMM_WORLD, MPI_FLOAT,
 * MPI_SUM, ... are addresses of its global objects (mpi.h:
 * OMPI_PREDEFINED_GLOBAL), so they are looked up by those objects' names
 * here: this file is Open MPI's ABI (every 3.x-5.x, soname libmpi.so.40),
 * not MPI's in general — MPICH's handles are integers. libmpi is opened
 * RTLD_GLOBAL because Open MPI's own plugins (mca components, dlopen'd by
 * MPI_Init) resolve libmpi's symbols from the global scope.
 */
#include "mpi_comm.h"

#include <dlfcn.h>
#include <mpi.h> /* types and signatures only: nothing here links against libmpi */
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <unistd.h>

#define LIBMPI "libmpi.so.40"

static struct {
    __typeof__(MPI_Init_thread) *init_thread;
    __typeof__(MPI_Finalize) *finalize;
    __typeof__(MPI_Abort) *abort;
    __typeof__(MPI_Comm_rank) *comm_rank;
    __typeof__(MPI_Comm_size) *comm_size;
    __typeof__(MPI_Comm_set_errhandler) *set_errhandler;
    __typeof__(MPI_Get_processor_name) *processor_name;
    __typeof__(MPI_Error_string) *error_string;
    __typeof__(MPI_Reduce) *reduce;
    __typeof__(MPI_Bcast) *bcast;
    MPI_Comm world;
    MPI_Datatype f32, f64;
    MPI_Op sum;
    MPI_Errhandler errors_return;
    int up;            /* MPI_Init succeeded, MPI_Finalize not yet called */
    int rank;
    char host[MPI_MAX_PROCESSOR_NAME + 1];
} mpi;

const char *mpi_comm_host(void) {
    if (!mpi.host[0] && gethostname(mpi.host, sizeof mpi.host - 1) != 0) strcpy(mpi.host, "?");
    return mpi.host;
}

/* "rank R on HOST: WHAT: Open MPI's reason" */
static int mpi_fail(fisher_error *err, int code, const char *what) {
    char reason[MPI_MAX_ERROR_STRING + 1] = "";
    int len = 0;
    if (!mpi.error_string || mpi.error_string(code, reason, &len) != MPI_SUCCESS)
        snprintf(reason, sizeof reason, "MPI error %d", code);
    reason[len > 0 && len < (int)sizeof reason ? len : (int)sizeof reason - 1] = '\0';
    return fisher_errorf(err, "rank %d on %s: %s: %s", mpi.rank, mpi_comm_host(), what, reason);
}

/* Σ over ranks of x (n elements of elem bytes), in place, as a reduce to
 * rank 0 followed by a broadcast of rank 0's result. comm.h wants the
 * same bits on every rank, and MPI_Allreduce does not promise them: the
 * standard only advises it, and Open MPI's algorithms (recursive doubling,
 * ring, Rabenseifner) let each rank add the partial sums in an order of
 * its own when there are more than two ranks, which for floats is other
 * bits. A reduce computes the sum once, at the root; the broadcast copies
 * it. Two collectives instead of one cost latency, not bandwidth (each
 * moves n elements per rank, as an all-reduce's halves do). */
static int sum(fisher_comm *c, void *x, size_t n, size_t elem, MPI_Datatype type, const char *what,
               fisher_error *err) {
    (void)c;
    /* MPI counts are ints; bounding the pieces also bounds Open MPI's own
     * staging buffers */
    enum { PIECE = 1 << 24 };
    for (size_t at = 0; at < n; at += PIECE) {
        int k = (int)(n - at < PIECE ? n - at : PIECE);
        char *p = (char *)x + at * elem;
        char op[96];
        int rc = mpi.reduce(mpi.rank == 0 ? MPI_IN_PLACE : p, mpi.rank == 0 ? p : NULL, k, type, mpi.sum, 0,
                            mpi.world);
        if (rc != MPI_SUCCESS) {
            snprintf(op, sizeof op, "MPI_Reduce of %d %s", k, what);
            return mpi_fail(err, rc, op);
        }
        rc = mpi.bcast(p, k, type, 0, mpi.world);
        if (rc != MPI_SUCCESS) {
            snprintf(op, sizeof op, "MPI_Bcast of %d %s", k, what);
            return mpi_fail(err, rc, op);
        }
    }
    return 0;
}

static int sum_f64(fisher_comm *c, double *x, size_t n, fisher_error *err) {
    return sum(c, x, n, sizeof *x, mpi.f64, "doubles", err);
}

static int sum_f32(fisher_comm *c, float *x, size_t n, fisher_error *err) {
    return sum(c, x, n, sizeof *x, mpi.f32, "floats", err);
}

/* POSIX's way to take a function from dlsym (C has no such cast). */
#define LOAD(field, name)                                                                  \
    do {                                                                                   \
        *(void **)&mpi.field = dlsym(lib, name);                                           \
        if (!mpi.field) missing = name;                                                    \
    } while (0)
#define HANDLE(field, type, name)                                                          \
    do {                                                                                   \
        void *sym_ = dlsym(lib, name);                                                     \
        if (!sym_) missing = name;                                                         \
        mpi.field = (type)sym_;                                                            \
    } while (0)

int mpi_comm_init(int *argc, char ***argv, fisher_comm *comm, fisher_error *err) {
    const char *rank_env = getenv("OMPI_COMM_WORLD_RANK"); /* to name this rank before MPI can */
    mpi.rank = rank_env ? atoi(rank_env) : 0;
    void *lib = dlopen(LIBMPI, RTLD_NOW | RTLD_GLOBAL);
    if (!lib)
        return fisher_errorf(err, "rank %d on %s: cannot load Open MPI (%s): %s (Debian: apt-get install "
                             "openmpi-bin)", mpi.rank, mpi_comm_host(), LIBMPI, dlerror());
    const char *missing = NULL;
    LOAD(init_thread, "MPI_Init_thread");
    LOAD(finalize, "MPI_Finalize");
    LOAD(abort, "MPI_Abort");
    LOAD(comm_rank, "MPI_Comm_rank");
    LOAD(comm_size, "MPI_Comm_size");
    LOAD(set_errhandler, "MPI_Comm_set_errhandler");
    LOAD(processor_name, "MPI_Get_processor_name");
    LOAD(error_string, "MPI_Error_string");
    LOAD(reduce, "MPI_Reduce");
    LOAD(bcast, "MPI_Bcast");
    HANDLE(world, MPI_Comm, "ompi_mpi_comm_world");
    HANDLE(f32, MPI_Datatype, "ompi_mpi_float");
    HANDLE(f64, MPI_Datatype, "ompi_mpi_double");
    HANDLE(sum, MPI_Op, "ompi_mpi_op_sum");
    HANDLE(errors_return, MPI_Errhandler, "ompi_mpi_errors_return");
    if (missing) {
        fisher_errorf(err, "rank %d on %s: %s has no %s: not the Open MPI fisherd was built for", mpi.rank,
                      mpi_comm_host(), LIBMPI, missing);
        mpi.error_string = NULL; /* MPI is not up: nothing of it is called */
        return -1;
    }
    int provided = 0;
    int rc = mpi.init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) return mpi_fail(err, rc, "MPI_Init_thread");
    mpi.up = 1;
    /* a failed collective comes back as a code, so the run can say which
     * rank and host it failed on (the default handler kills the job with
     * Open MPI's own words only) */
    rc = mpi.set_errhandler(mpi.world, mpi.errors_return);
    int size = 0, len = 0;
    if (rc == MPI_SUCCESS) rc = mpi.comm_rank(mpi.world, &mpi.rank);
    if (rc == MPI_SUCCESS) rc = mpi.comm_size(mpi.world, &size);
    if (rc != MPI_SUCCESS) return mpi_fail(err, rc, "MPI_COMM_WORLD");
    char name[MPI_MAX_PROCESSOR_NAME + 1];
    if (mpi.processor_name(name, &len) == MPI_SUCCESS && len > 0 && len < (int)sizeof name) {
        name[len] = '\0';
        memcpy(mpi.host, name, (size_t)len + 1);
    }
    *comm = (fisher_comm){.rank = mpi.rank, .size = size, .allreduce_sum_f64 = sum_f64,
                          .allreduce_sum_f32 = sum_f32, .ctx = &mpi};
    return 0;
}

int mpi_comm_finalize(fisher_error *err) {
    if (!mpi.up) return 0;
    mpi.up = 0;
    int rc = mpi.finalize();
    return rc == MPI_SUCCESS ? 0 : mpi_fail(err, rc, "MPI_Finalize");
}

_Noreturn void mpi_comm_abort(int code) {
    if (mpi.up) mpi.abort(mpi.world, code);
    exit(code); /* MPI_Abort does not return; without MPI there is only this rank to end */
}
