/*
 * job_stream.h — a job's callbacks carried over a pair of byte streams:
 * how rank 0 of a distributed job reports to the daemon (issue 9).
 *
 * The daemon runs a distributed job as `mpirun ... fisherd worker`; Open
 * MPI forwards rank 0's stdout to mpirun's stdout and mpirun's stdin to
 * rank 0's stdin, across machines, so the pipes the daemon holds to
 * mpirun reach rank 0 wherever it runs. Rank 0 turns every callback of
 * fisher_job_run_rank into one record on its stdout (the writer below);
 * the daemon's worker thread reads them and calls the very callbacks a
 * local job's thread would (the reader), so the store and the event
 * fan-out cannot tell the two apart.
 *
 * Wire format, worker → daemon: one JSON object per line,
 *   {"kind": "log"|"groups"|"progress"|"eval"|"method"|"checkpoint_begin"
 *            |"checkpoint"|"done", ...the callback's arguments...}
 * with every real written so that it reads back to the same bits, and
 * "done" last (rc, the result, or the error). JSON has no NaN or infinity:
 * a non-finite real is written as null and read back as NAN (so an
 * infinity arrives as NaN). A "method" record carries js and js_ema only
 * for the chunks measured that step (an index list); the reader hands
 * on_method full arrays, NaN for every other chunk. Daemon → worker: lines
 * "ack\n" (answers a checkpoint_begin once everything before it is
 * committed, so a checkpoint never gets ahead of the stored history) and
 * "cancel\n" (stop after the current step, checkpoint, report done).
 */
#ifndef FISHERD_JOB_STREAM_H
#define FISHERD_JOB_STREAM_H

#include "job.h"

/* ---- the worker's side (rank 0) */

typedef struct job_stream_writer job_stream_writer;

/* Writes records to out_fd and reads the daemon's lines from in_fd (on a
 * thread of its own). NULL with err when it cannot start. */
job_stream_writer *job_stream_writer_new(int out_fd, int in_fd, fisher_error *err);
/* Callbacks for fisher_job_run_rank that write records. on_checkpoint_begin
 * blocks until the daemon's "ack" (or until in_fd ends). */
fisher_job_callbacks job_stream_writer_callbacks(job_stream_writer *w);
/* Becomes 1 when the daemon sent "cancel", its side of in_fd closed, or a
 * write to out_fd failed (the daemon is gone: stop and checkpoint). Pass
 * it as fisher_job_run_rank's cancel. */
const volatile int *job_stream_writer_cancel(job_stream_writer *w);
/* The last record: the run's return code, its result (rc 0) or error
 * (rc -1). 0, or -1 when out_fd is broken. */
int job_stream_write_done(job_stream_writer *w, int rc, const fisher_job_result *res,
                          const fisher_error *run_err);
/* Whether a write failed (the daemon is gone). */
int job_stream_writer_broken(const job_stream_writer *w);
void job_stream_writer_free(job_stream_writer *w);

/* ---- the daemon's side */

/* Reads records from in_fd until "done" or end of stream, calling cb for
 * each exactly as fisher_job_run would (on_method gets chunks = NULL); after
 * cb->on_checkpoint_begin returns it writes "ack" to out_fd. While it
 * waits it polls *cancel (every 100 ms) and sends "cancel" once it is set.
 * Returns 1 when "done" arrived (*rc, *res and *run_err are the worker's),
 * 0 when the stream ended without it (the MPI job died: its stderr says
 * why; a cut last line counts as an end), -1 with err for a stream that is
 * not a job stream (err says which line and what is wrong) or that cannot
 * be read. Never raises SIGPIPE (a worker gone is found at the stream's
 * end). */
int job_stream_read(int in_fd, int out_fd, const fisher_job_callbacks *cb, const volatile int *cancel,
                    int *rc, fisher_job_result *res, fisher_error *run_err, fisher_error *err);

#endif
