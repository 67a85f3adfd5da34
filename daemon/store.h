/*
 * store.h — fisherd's durable state in one SQLite database (DESIGN.md
 * "Storage"): jobs and their status history, each job's chunk table,
 * every drift measurement and freeze decision, metric series,
 * evaluations, and registered models. The schema lives in migrations/
 * (0001_init.sql explains every table); this module is the only code that
 * speaks SQL.
 *
 * Who calls it:
 *   - ONE writer, the daemon's libuv loop thread: it opens the database
 *     read-write (which applies migrations), inserts jobs, moves them
 *     through their lifecycle, and writes the records training workers
 *     queue up, many per transaction (store_write).
 *   - Readers, the HTTP handler threads, each with a connection of its own
 *     opened STORE_READONLY. Reads return jansson values shaped for the
 *     REST API (DESIGN.md "REST API"); every read runs in one read
 *     transaction, so it sees one consistent snapshot (WAL: readers never
 *     block the writer, nor it them).
 * A `store` is one connection: use it from one thread at a time.
 *
 * Errors. Every function that can fail returns one of the codes below and
 * leaves a message a person can act on in err->msg (err may be NULL). The
 * codes map onto HTTP statuses: STORE_NOT_FOUND 404, STORE_CONFLICT 409,
 * STORE_INVALID 400, STORE_BUSY 503, STORE_ERROR 500.
 *
 * Ids. Jobs are shown as "j_<id>" and models as "m_<id>"; the JSON this
 * module returns uses those forms, the C API plain int64 ids
 * (store_id_parse converts). Ids are never reused, even after a delete.
 *
 * Job lifecycle (DESIGN.md "Job lifecycle"); every edge is taken by
 * store_job_set_status except where named:
 *
 *              store_job_insert
 *                     |
 *                     v          new reason
 *               +-----------+ <-------------+
 *   +---------> |  queued   | --------------+
 *   |           +-----------+ ------------------------+ cancel, or
 *   |                 | start                         | cannot start
 *   |                 v                               v
 *   |           +-----------+   run ends        +-----------+
 *   |           |  running  | ----------------> | succeeded |
 *   |           +-----------+                   |  failed   |
 *   |              |     ^                      | cancelled |
 *   | waits for    |     | resume               +-----------+
 *   | a slot       v     |                            ^ (terminal:
 *   |         +-------------+   cancel, or fails      |  no edge
 *   +-------- | interrupted | ------------------------+  leaves)
 *             +-------------+
 *   running -> interrupted: the daemon stops under it (the scheduler), or
 *   died under it (store_jobs_interrupt_running at the next start).
 *
 *   queued      -> queued (new reason), running, failed, cancelled
 *   running     -> succeeded, failed, cancelled, interrupted
 *   interrupted -> running (resume), queued (waits for a slot), failed, cancelled
 *   succeeded, failed, cancelled: terminal, no edge leaves them.
 *
 * Invariants (the schema enforces 1 and 2 with CHECKs):
 *   1. finished_at is set exactly when the status is terminal.
 *   2. A running job has started_at (the first start's time; a resume
 *      keeps it).
 *   3. Every change adds one job_events row; the newest one of a job has
 *      the job's status and reason.
 *   4. Only a terminal job can be deleted; deleting removes every row of
 *      it in one transaction (models it produced stay, with job NULL).
 *   5. Nothing is sampled away at write time; downsampling happens at read
 *      time and the CSV readers return every point.
 */
#ifndef FISHERD_STORE_H
#define FISHERD_STORE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* Result codes; every non-zero one comes with err->msg. */
enum {
    STORE_OK = 0,
    STORE_ERROR = -1,     /* I/O, corruption, out of memory, a bug          (500) */
    STORE_NOT_FOUND = -2, /* no such job, model or group                    (404) */
    STORE_CONFLICT = -3,  /* the job's status forbids it                    (409) */
    STORE_INVALID = -4,   /* a bad argument or record: cursor, status name,
                           * group index, JSON text, read-only store        (400) */
    STORE_BUSY = -5,      /* the database stayed locked past busy_timeout   (503) */
};

typedef struct store store;

/* ------------------------------------------------------------ opening */

enum {
    STORE_READONLY = 1, /* a reader: never creates, never migrates, refuses writes */
};

/* The schema version this binary knows (the number of embedded migrations). */
int store_schema_version(void);

/* Opens (the writer: creates) the database at path: WAL, foreign keys on,
 * busy_timeout 5 s, synchronous NORMAL. The writer applies the embedded
 * migrations the file lacks, each in its own transaction; a reader
 * requires the file to be exactly at this binary's version. Refuses a file
 * whose schema is newer than this binary knows, one that is not a SQLite
 * database, and one another application made. Returns STORE_OK with *out
 * set, or an error code with *out NULL. */
int store_open(const char *path, unsigned flags, store **out, fisher_error *err);
/* Finishes the cached statements and closes the connection. NULL is fine. */
void store_close(store *s);

/* Gives back the memory the connection's page cache holds (it refills on
 * demand): for an idle daemon. */
void store_release_memory(store *s);

/* PRAGMA integrity_check and foreign_key_check: STORE_OK, or STORE_ERROR
 * with the first problems in err. */
int store_check(store *s, fisher_error *err);

/* Unix time in seconds, for the `now` arguments. */
double store_now(void);

/* "j_12" with kind 'j' (or "m_3" with 'm') → 12. Returns 0, or -1 when
 * text is not that form with a positive id. */
int store_id_parse(const char *text, char kind, int64_t *id);

/* ------------------------------------------------------------ job status */

typedef enum {
    STORE_JOB_QUEUED,
    STORE_JOB_RUNNING,
    STORE_JOB_SUCCEEDED,
    STORE_JOB_FAILED,
    STORE_JOB_CANCELLED,
    STORE_JOB_INTERRUPTED,
} store_job_status;
#define STORE_JOB_STATUSES 6

/* "queued", "running", …; NULL for a value out of range. */
const char *store_job_status_name(store_job_status st);
/* Returns 0 with *st set, or -1 for an unknown name. */
int store_job_status_parse(const char *name, store_job_status *st);
/* succeeded, failed and cancelled. */
int store_job_status_terminal(store_job_status st);

/* ------------------------------------------------------------ writer */

typedef struct {
    const char *name;
    const char *spec;         /* the normalised spec, JSON text */
    const char *base_model;   /* as the user gave it; NULL: none */
    int64_t wait_for_job;     /* the job whose model it needs; 0: none */
    const char *reason;       /* why it waits; NULL: nothing to say */
    const char *out_dir;      /* NULL: set later (store_job_set_out_dir) */
    double created_at;
} store_job_new;

/* Inserts a queued job and its first job_events row. STORE_NOT_FOUND when
 * wait_for_job names no job, STORE_INVALID when spec is not JSON. */
int store_job_insert(store *s, const store_job_new *job, int64_t *id, fisher_error *err);

/* Moves job id to status `to` (the lifecycle above) with reason (NULL:
 * none), stamping started_at on the first start and finished_at on
 * reaching a terminal status with `now`. STORE_CONFLICT for an edge the
 * lifecycle lacks (e.g. cancelling a job that succeeded). */
int store_job_set_status(store *s, int64_t id, store_job_status to, const char *reason, double now,
                         fisher_error *err);

int store_job_set_out_dir(store *s, int64_t id, const char *out_dir, fisher_error *err);

/* At start-up: every job still 'running' (the daemon died under it) becomes
 * 'interrupted' with reason, in one transaction; *n (may be NULL) gets how
 * many. */
int store_jobs_interrupt_running(store *s, const char *reason, double now, size_t *n,
                                 fisher_error *err);

/* Deletes a terminal job and every row of it, in one transaction.
 * STORE_CONFLICT while it is queued, running or interrupted (cancel it
 * first), STORE_NOT_FOUND when there is no such job. */
int store_job_delete(store *s, int64_t id, fisher_error *err);

/* One chunk of a job's chunk table (fisher_chunk plus names). */
typedef struct {
    const char *key;          /* "<tensor>.rowblock<i>", unique in the job */
    const char *tensor;       /* parameter tensor name */
    const char *layer;        /* owning layer's name */
    const char *layer_class;  /* "linear", "conv", "batchnorm", "layernorm" */
    int depth;                /* layer's position in the forward pass */
    int axis;                 /* 0: rows, 1: columns */
    int64_t start, end;       /* [start, end) along axis */
    int64_t size;             /* elements */
    int64_t frozen_at;        /* step it froze, -1 while live */
} store_group;

typedef enum {
    STORE_REC_PROGRESS,   /* jobs' progress columns and params_total + metrics "loss",
                           * "params_live" */
    STORE_REC_GROUPS,     /* the chunk table; sets chunks_/params_ total and live */
    STORE_REC_DRIFT,      /* one measurement step of the measured chunks */
    STORE_REC_FREEZE,     /* one freeze decision; sets groups.frozen_at */
    STORE_REC_EVAL,       /* "val" → metrics val_*; other datasets, and final → evals */
    STORE_REC_CHECKPOINT, /* the latest checkpoint's path and step */
    STORE_REC_RESULT,     /* the job's final result, JSON text */
    STORE_REC_MODEL,      /* registers a model (job: the producer, 0: none) */
    STORE_REC_REWIND,     /* a resume from a checkpoint: forgets what the steps
                           * after it wrote and thaws chunks frozen in them, so
                           * the replayed steps are stored once */
} store_record_kind;

/* One thing a training worker reports, as the loop queues it. Nothing is
 * copied before store_write: the pointers must stay valid for that call.
 * Writing a record at a step that is already stored replaces it (a resumed
 * job replays steps).
 *
 * Steps are counted as the library reports them (lib/job.h): drift and
 * freeze steps are 0-based training steps (on_method's step); progress,
 * eval and checkpoint steps are steps done. A rewind to a checkpoint after
 * S steps done therefore drops drift, measurement steps and freezes at
 * steps ≥ S, thaws chunks frozen at ≥ S, and drops metrics and evals at
 * steps > S; rewind step 0 clears a whole run. */
typedef struct {
    store_record_kind kind;
    int64_t job;
    union {
        struct {
            int64_t step, steps;      /* steps done (1-based), total */
            double loss;
            int64_t params_live, chunks_live;
            int64_t params_total;     /* the model's parameters; 0: not known
                                       * (jobs.params_total keeps its value) */
        } progress;
        struct {
            const store_group *groups; /* (n) group idx = position */
            size_t n;
        } groups;
        struct {
            int64_t step;
            size_t n;                 /* chunks measured */
            const int *idx;           /* (n) their idx, each once, any order */
            const double *js, *js_ema; /* (n) */
        } drift;
        struct {
            int64_t step;
            int zero_fisher;          /* the step-0 zero-Fisher freeze (no statistics) */
            const char *metric;       /* "total_variation" | "mean_js" */
            double mean, std, lambda, threshold;
            const int *frozen;        /* (n_frozen) idx of the chunks it froze */
            size_t n_frozen;
            int64_t chunks_live, params_live;  /* after it */
        } freeze;
        struct {
            int64_t step;
            const char *dataset;      /* "val" or a zero-shot set's description */
            int final;                /* the final evaluation (kept in evals too) */
            double loss, iou, f1, accuracy, precision, recall;
        } eval;
        struct {
            int64_t step;
            const char *path;
        } checkpoint;
        struct {
            const char *json;
        } result;
        struct {
            const char *name, *path, *config;
            int64_t parameters, bytes;
            double created_at;
            int64_t *id;              /* may be NULL; gets the new id, 0 if the batch fails */
        } model;
        struct {
            int64_t step;             /* steps done at the checkpoint (see above) */
        } rewind;
    };
} store_record;

/* Writes recs[0..n) in ONE transaction: all of them or, on the first
 * failure, none (the message names the record). STORE_NOT_FOUND for a job
 * that does not exist, STORE_INVALID for a bad record (a chunk index out
 * of the job's table or repeated, JSON that is not, a missing field). */
int store_write(store *s, const store_record *recs, size_t n, fisher_error *err);

/* store_write of one STORE_REC_MODEL record. */
int store_model_register(store *s, const char *name, const char *path, const char *config,
                         int64_t parameters, int64_t bytes, int64_t job, double created_at,
                         int64_t *id, fisher_error *err);

/* ------------------------------------------------------------ readers */

/* All readers return STORE_OK with *out a new reference, or an error code
 * with *out NULL; a job that does not exist is STORE_NOT_FOUND. Numbers
 * that are not finite (SQL NULL) come back as JSON null. */

typedef struct {
    const char *status;       /* exactly this status; NULL: any */
    const char *name;         /* name contains it (ASCII case-insensitive); NULL: any */
    const char *cursor;       /* a previous page's next_cursor; NULL: the newest */
    size_t limit;             /* 1..1000; 0: 50 */
} store_job_filter;

/* {"jobs": [job summary…], "next_cursor": "…" | null}, newest first. A
 * summary is a job without spec, result, evals and events (see
 * store_job_get; strategy, ranks, best_val_iou and zero_shot are in it). Each
 * row costs one read of the job and three lookups on primary keys
 * (its val_iou points, its evals), so a page stays fast whatever the
 * history holds. Walking the
 * cursors visits every matching job once, even while jobs are added or
 * deleted (keyset pagination on id). STORE_INVALID for an unknown status,
 * a limit out of range or a cursor this module did not make. */
int store_jobs_list(store *s, const store_job_filter *f, json_t **out, fisher_error *err);

/* {"id": "j_1", "name", "status", "reason", "base_model", "wait_for_job":
 *  "j_…" | null, "created_at", "started_at", "finished_at",
 *  "progress": {"step", "steps", "loss"}, "params": {"total", "live"},
 *  "chunks": {"total", "live"}, "checkpoint": {"path", "step"} | null,
 *  "out_dir",
 *  "strategy": the spec's strategy | null,
 *  "ranks": the spec's distributed.ranks (1: one process),
 *  "best_val_iou": the largest value of the job's val_iou series so far
 *                  (it grows while the job runs) | null before the first,
 *  "zero_shot": [{"dataset", "iou"}] of the final evaluation's zero-shot
 *               sets, by dataset name ([] when the spec has none) | null
 *               until the final evaluation is stored (never, for a job
 *               that fails or is cancelled),
 *  "spec": {…}, "result": {…} | null,
 *  "evals": [{"dataset", "step", "loss", "iou", "f1", "accuracy",
 *             "precision", "recall"}],
 *  "events": [{"at", "status", "reason"}]} */
int store_job_get(store *s, int64_t id, json_t **out, fisher_error *err);

/* {"queued": n, "running": n, …} with every status, zeros included. */
int store_job_counts(store *s, json_t **out, fisher_error *err);

/* {"job": "j_1", "groups": [{"idx", "key", "tensor", "layer", "layer_class",
 *  "depth", "axis", "start", "end", "size", "live", "frozen_at",
 *  "js_ema", "js_step"}]} in idx order; js_ema is the latest measured
 * value and js_step its step (null when never measured). */
int store_groups(store *s, int64_t job, json_t **out, fisher_error *err);

/* Steps and downsampling of a series read. */
typedef struct {
    int64_t from, to;         /* inclusive step bounds */
    size_t max_points;        /* per series: 0 = every point, else ≥ 2 */
} store_window;
#define STORE_WINDOW_ALL ((store_window){0, INT64_MAX, 0})

/* Which drift series: the chunks that pass every filter given (AND); a
 * query without filters selects every chunk. */
typedef struct {
    const char *key;              /* exactly this chunk (STORE_NOT_FOUND when the
                                   * job has none); NULL: no such filter */
    const char *prefix;           /* key starts with it; NULL: no such filter */
    store_window window;
    const char *const *prefixes;  /* (n_prefixes) more prefixes: a key passes when it
                                   * starts with prefix or any of these */
    size_t n_prefixes;
    const char *layer_class;      /* exactly this layer class; NULL: any */
    const int64_t *idx;           /* (n_idx) chunk indices, any order, repeats fine;
                                   * n_idx 0: no such filter. STORE_INVALID for
                                   * one outside [0, chunks total) */
    size_t n_idx;
} store_drift_query;

/* {"job": "j_1", "series": [{"idx", "key", "points": n in the window,
 *  "step": [...], "js": [...], "js_ema": [...]}]}, chunks in idx order.
 * With max_points, a series longer than it is cut down to ≤ max_points
 * points that always include its first and last point and, in each of
 * (max_points − 2) / 2 equal buckets between them, the points of the
 * smallest and the largest js_ema. STORE_NOT_FOUND for an unknown key. */
int store_drift(store *s, int64_t job, const store_drift_query *q, json_t **out,
                fisher_error *err);

/* Receives output in pieces; returns 0 to go on, non-zero to stop (the
 * read then fails with STORE_ERROR). */
typedef int (*store_sink)(void *ctx, const char *data, size_t len);

/* The same selection at full resolution (max_points ignored) as CSV:
 * "key,idx,step,js,js_ema" then one line per point, chunks in idx order,
 * numbers with 17 significant digits (they read back exactly). */
int store_drift_csv(store *s, int64_t job, const store_drift_query *q, store_sink sink, void *ctx,
                    fisher_error *err);

/* Every chunk × measurement steps in the window, as at most
 * window.max_points columns (0: one per step): the measurement steps are
 * cut into that many consecutive, equal-count buckets and each cell is the
 * largest js_ema of the chunk in its bucket (null: not measured, e.g.
 * frozen). Rows ordered by depth, then idx.
 * {"job", "measurements": m, "step_from": [c], "step_to": [c],
 *  "groups": [{"idx", "key", "depth", "frozen_at"}], "values": [[c]…]} */
int store_drift_heatmap(store *s, int64_t job, store_window window, json_t **out,
                        fisher_error *err);

/* {"job", "freezes": [{"step", "kind", "metric", "mean", "std", "lambda",
 *  "threshold", "n_frozen", "chunks_live", "params_live", "frozen": [idx],
 *  "frozen_keys": [key]}]} in step order. */
int store_freezes(store *s, int64_t job, json_t **out, fisher_error *err);

/* {"job", "metrics": {"loss": {"points", "step": [...], "value": [...]}, …}}:
 * the one named (NULL: every name; a name never written: no entry),
 * downsampled as store_drift (on value). */
int store_metrics(store *s, int64_t job, const char *name, store_window window, json_t **out,
                  fisher_error *err);
/* Full resolution CSV: "name,step,value". */
int store_metrics_csv(store *s, int64_t job, const char *name, store_window window,
                      store_sink sink, void *ctx, fisher_error *err);

/* {"models": [model…], "next_cursor"}, newest first; a model is
 * {"id": "m_1", "name", "path", "config", "parameters", "bytes",
 *  "job": "j_…" | null, "created_at"}. limit 0: 50. */
int store_models_list(store *s, const char *cursor, size_t limit, json_t **out, fisher_error *err);
int store_model_get(store *s, int64_t id, json_t **out, fisher_error *err);

#endif
