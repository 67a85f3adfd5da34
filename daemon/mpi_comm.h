/*
 * mpi_comm.h — the fisher_comm (lib/comm.h) of `fisherd worker`: one rank
 * of MPI_COMM_WORLD under Open MPI (issue 9).
 *
 * Open MPI is loaded at run time, by the worker only: linked into fisherd
 * it would be resident in every `fisherd serve` too (see mpi_comm.c).
 * MPI is one per process, so so is this: mpi_comm_init once, then the
 * comm it filled until mpi_comm_finalize or mpi_comm_abort.
 */
#ifndef FISHERD_MPI_COMM_H
#define FISHERD_MPI_COMM_H

#include "comm.h"

/* Loads Open MPI, initialises it (MPI_THREAD_FUNNELED: only the calling
 * thread makes MPI calls), makes errors return instead of aborting, and
 * fills comm with this rank, the world's size and sums that leave the
 * same bits on every rank. 0, or -1 with err (Open MPI missing, MPI_Init
 * failing). */
int mpi_comm_init(int *argc, char ***argv, fisher_comm *comm, fisher_error *err);

/* This rank's host (MPI_Get_processor_name), for messages; before a
 * successful mpi_comm_init, gethostname's. */
const char *mpi_comm_host(void);

/* MPI_Finalize. 0, or -1 with err. */
int mpi_comm_finalize(fisher_error *err);

/* MPI_Abort on the world: every rank of the job ends with code. Never
 * returns (exits with code if MPI is not up). */
_Noreturn void mpi_comm_abort(int code);

#endif
