/*
 * scheduler.h — runs jobs. The libuv loop thread owns scheduling and the
 * store's one write connection; each running job trains on a thread of its
 * own (not libuv's threadpool, which file I/O shares) through the library's
 * fisher_job_run, and everything it reports travels back through a bounded
 * record queue (record_queue.h) rung by a uv_async doorbell. The loop
 * writes each batch of records in one transaction, then hands the same
 * batch to the event fan-out (SSE).
 *
 * Other threads (HTTP handlers) change jobs only through sched_submit,
 * sched_cancel and sched_delete: each is carried to the loop thread as a
 * command and waits for its answer, so the store keeps exactly one writer.
 *
 * A distributed job's thread runs no training itself: it launches
 * `mpirun -np N ... fisherd worker` in a process group of its own and
 * turns rank 0's record stream (job_stream.h) into the very callbacks a
 * local run calls, so the store cannot tell the two apart; cancel, stop
 * and resume take the same paths (the stream carries the cancel).
 *
 * Lifecycle edges taken here (store.h draws the whole diagram):
 *   queued -> running        a slot is free and the job can start
 *   queued -> queued         it waits for another job's model (reason says)
 *   queued -> failed         the job it waits for failed, or it cannot start
 *   running -> succeeded | failed | cancelled   the run ends
 *   running -> interrupted   the daemon stops (sched_stop) under it, or
 *                            died (sched_start finds it still running)
 *   interrupted -> queued    it continues from its last checkpoint (a stop
 *      -> running            writes one; a job checkpoints every 200 steps
 *                            unless its spec says otherwise) exactly as if
 *                            never stopped, its records after that step
 *                            rewound; without a checkpoint, from step 0
 */
#ifndef FISHERD_SCHEDULER_H
#define FISHERD_SCHEDULER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "error.h"
#include "store.h"

typedef struct sched sched;

typedef struct {
    const char *data_dir;        /* jobs write under <data_dir>/jobs/j_<id>/ */
    int max_jobs;                /* jobs training at once */
    int threads;                 /* compute threads per job (caps the spec's) */
    size_t queue_bytes;          /* the record queue's budget; 0: 64 MiB */
    /* Distributed jobs (spec distributed.ranks > 1) run as `mpirun ...
     * fisherd worker` rather than on a thread's own computation: the
     * launcher (a path, or a name found in PATH; NULL: "mpirun") and the
     * folder their hostfiles are in (NULL or "": this machine only). */
    const char *mpirun;
    const char *hostfile_dir;
    /* After every batch of records is committed: the batch, on the loop
     * thread (the SSE fan-out). Optional. */
    void (*on_records)(void *ctx, const store_record *recs, size_t n);
    /* After a job's status changed: on the loop thread. Optional. */
    void (*on_status)(void *ctx, int64_t job, store_job_status status, const char *reason);
    void *ctx;
} sched_config;

/* Takes over `db` (the write connection; closed by sched_free), marks jobs
 * the last daemon left running as interrupted, queues every queued and
 * interrupted job oldest first, and starts what it can on `loop`. Returns
 * 0, or -1 with err. */
int sched_start(uv_loop_t *loop, store *db, const sched_config *cfg, sched **out, fisher_error *err);

/* A job to insert: the original spec's base model text (for the record),
 * the normalised spec, and the job whose model it waits for (0: none). */
typedef struct {
    const char *name;
    const char *spec_json;
    const char *base_model;
    int64_t wait_for_job;
} sched_job;

/* From any thread but the loop's: queue a job (→ its id), cancel a queued
 * or running one, delete a finished one. Each waits for the loop to do it
 * and returns a STORE_* code with err (STORE_BUSY, "the daemon is
 * stopping", once sched_stop ran). */
int sched_submit(sched *s, const sched_job *job, int64_t *id, fisher_error *err);
int sched_cancel(sched *s, int64_t id, fisher_error *err);
int sched_delete(sched *s, int64_t id, fisher_error *err);
/* Registers weights already validated and in place at path (an upload). */
int sched_register_model(sched *s, const char *name, const char *path, const char *config,
                         int64_t parameters, int64_t bytes, int64_t *id, fisher_error *err);

/* On the loop thread: refuse new work, ask every running job to stop after
 * its current step (it checkpoints and becomes interrupted), then call
 * done(ctx) on the loop thread once the last one has. */
void sched_stop(sched *s, void (*done)(void *ctx), void *ctx);

/* How many jobs run now, how many wait to (queued, on the loop thread),
 * and bytes waiting in the record queue (/metrics). */
int sched_running(sched *s);
size_t sched_waiting(sched *s);
size_t sched_queued_bytes(sched *s);

/* After sched_stop's done: closes the loop handles; call uv_run once more
 * to let them close, then sched_free. */
void sched_close(sched *s);
void sched_free(sched *s);

#endif
