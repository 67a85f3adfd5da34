/*
 * store.c — see store.h. The SQLite store: one connection per `store`,
 * the schema from migrations/ (0001_init.sql explains each table), and the
 * only SQL in fisherd.
 *
 * Design notes
 *   1. Statements are the fixed table sql_text[] below, prepared the first
 *      time a connection uses them (SQLITE_PREPARE_PERSISTENT) and kept
 *      until store_close. Values only ever travel as bound parameters.
 *   2. Every public function ends through tx_end/release, which resets every
 *      statement still stepping: no statement outlives a call, so none keeps
 *      a WAL snapshot (and with it the checkpointer) pinned between calls.
 *   3. Writes take the write lock up front (BEGIN IMMEDIATE): a busy wait
 *      happens at BEGIN, never halfway through a batch. Reads run inside a
 *      deferred BEGIN … COMMIT so one reply comes from one snapshot.
 *   4. Drift rows pack 32 chunks of one measurement step (see the schema):
 *      chunk idx lives in row gblock = idx / 32 at bit b = idx % 32 of mask,
 *      and its values at position popcount(mask & ((1 << b) − 1)) of the
 *      js and js_ema blobs (float64, little-endian whatever the host).
 *   5. Downsampling is read-time "extremes" bucketing (MLflow-like): the
 *      first and last point, and the smallest and largest value of each of
 *      (max_points − 2) / 2 equal-count buckets between them, in step
 *      order. Peaks and dips survive any zoom level; the CSV readers return
 *      every point.
 *   6. A writer keeps STORE_RESERVE_BYTES of disk in PATH.reserve. When the
 *      disk fills, the write that fails is a run's record; the run is then
 *      stopped, and its status must still say why — so a status change that
 *      fails with SQLITE_FULL deletes the reserve and tries once more. The
 *      reserve is made again when a job starts running (if there is room).
 */
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "migrations.h"

#define STORE_APP_ID 0x46495348        /* 'FISH', PRAGMA application_id */
#define STORE_BUSY_MS 5000
#define STORE_RESERVE_BYTES (1 << 20)  /* design note 6: a few status changes' worth of WAL */
#define DRIFT_BLOCK 32                 /* chunks per drift row: fixed by the schema */
#define PAGE_DEFAULT 50
#define PAGE_MAX 1000

/* ------------------------------------------------------------ statements */

/* A job's columns, then three of its summary's results (store.h,
 * store_job_get): the strategy and the rank count (1 for a spec from
 * before distributed jobs) from the spec, and the best val IoU so
 * far, a range scan of its val_iou points on the metrics primary key
 * (job_id, name, step). The third, zero_shot, is SQL_JOB_ZERO_SHOT's,
 * read per row: SQLite's JSON functions would print its IoUs with 15
 * digits, and they must read back exactly. */
#define JOB_COLUMNS                                                                        \
    "id, name, status, reason, base_model, wait_for_job, created_at, started_at, "         \
    "finished_at, step, steps, loss, params_total, params_live, chunks_total, chunks_live, " \
    "checkpoint_path, checkpoint_step, out_dir, json_extract(spec, '$.strategy'), "        \
    "coalesce(json_extract(spec, '$.distributed.ranks'), 1), "                              \
    "(SELECT max(value) FROM metrics WHERE job_id = jobs.id AND name = 'val_iou')"
/* column positions of JOB_COLUMNS (then spec, result in SQL_JOB_GET) */
enum {
    JC_ID, JC_NAME, JC_STATUS, JC_REASON, JC_BASE, JC_WAIT, JC_CREATED, JC_STARTED,
    JC_FINISHED, JC_STEP, JC_STEPS, JC_LOSS, JC_PTOTAL, JC_PLIVE, JC_CTOTAL, JC_CLIVE,
    JC_CKPATH, JC_CKSTEP, JC_OUTDIR, JC_STRATEGY, JC_RANKS, JC_BEST_VAL, JC_SPEC, JC_RESULT
};
#define MODEL_COLUMNS "id, name, path, config, parameters, bytes, job_id, created_at"

enum {
    SQL_BEGIN_READ, SQL_BEGIN_WRITE, SQL_COMMIT, SQL_ROLLBACK,
    SQL_WAL, SQL_FOREIGN_KEYS, SQL_SYNCHRONOUS, SQL_CACHE_SIZE, SQL_READER_CACHE_SIZE, SQL_MMAP,
    SQL_USER_VERSION, SQL_APPLICATION_ID, SQL_SCHEMA_OBJECTS, SQL_INTEGRITY, SQL_FK_CHECK,
    /* writer */
    SQL_JOB_LOOKUP, SQL_JOB_INSERT, SQL_EVENT_INSERT, SQL_JOB_SET_STATUS, SQL_JOB_SET_OUT_DIR,
    SQL_JOBS_RUNNING, SQL_JOB_DELETE,
    SQL_PROGRESS, SQL_METRIC_PUT,
    SQL_GROUPS_CLEAR, SQL_GROUP_PUT, SQL_GROUPS_JOB,
    SQL_DRIFT_PUT, SQL_DRIFT_STEP_PUT,
    SQL_FREEZE_PUT, SQL_GROUP_FREEZE, SQL_FREEZE_JOB,
    SQL_EVAL_PUT, SQL_CHECKPOINT, SQL_RESULT, SQL_MODEL_PUT,
    SQL_REWIND_DRIFT, SQL_REWIND_DRIFT_STEPS, SQL_REWIND_FREEZES, SQL_REWIND_METRICS,
    SQL_REWIND_EVALS, SQL_REWIND_GROUPS, SQL_REWIND_JOB,
    /* readers */
    SQL_JOBS_PAGE, SQL_JOBS_PAGE_STATUS, SQL_JOB_GET, SQL_JOB_EVENTS, SQL_JOB_EVALS, SQL_JOB_ZERO_SHOT,
    SQL_JOB_COUNTS,
    SQL_GROUPS_OF_JOB, SQL_GROUP_BY_KEY, SQL_GROUPS_SELECT, SQL_GROUPS_BY_DEPTH,
    SQL_GROUP_KEYS,
    SQL_DRIFT_LATEST, SQL_DRIFT_BLOCK, SQL_DRIFT_ALL, SQL_DRIFT_STEPS,
    SQL_FREEZES_OF_JOB, SQL_METRICS_ONE, SQL_METRICS_ALL,
    SQL_MODELS_PAGE, SQL_MODEL_GET,
    SQL_COUNT
};

static const char *const sql_text[SQL_COUNT] = {
    [SQL_BEGIN_READ] = "BEGIN",
    [SQL_BEGIN_WRITE] = "BEGIN IMMEDIATE",
    [SQL_COMMIT] = "COMMIT",
    [SQL_ROLLBACK] = "ROLLBACK",
    [SQL_WAL] = "PRAGMA journal_mode = WAL",
    [SQL_FOREIGN_KEYS] = "PRAGMA foreign_keys = ON",
    /* WAL + NORMAL: a commit survives a crash of fisherd, and only a power
     * loss or an OS crash can take back the latest commits — fine for
     * training telemetry, and no fsync per batch. */
    [SQL_SYNCHRONOUS] = "PRAGMA synchronous = NORMAL",
    /* 16 MB per connection: holds a 10k-point series' rows (~6 MB) and the
     * small tables; a heatmap's ~40 MB of rows streams through it, which
     * the mmap below makes cheap */
    [SQL_CACHE_SIZE] = "PRAGMA cache_size = -16384",
    [SQL_READER_CACHE_SIZE] = "PRAGMA cache_size = -2048",
    /* Reads straight from the OS's page cache instead of copying each page
     * in: on a busy 2-core machine the heatmap went from ~81 to ~66 ms and a
     * reader's first 10k-point series from 20-50 to ~15 ms (bench_store).
     * Costs address space only; pages still in the WAL are read as usual. */
    [SQL_MMAP] = "PRAGMA mmap_size = 1073741824",
    [SQL_USER_VERSION] = "PRAGMA user_version",
    [SQL_APPLICATION_ID] = "PRAGMA application_id",
    [SQL_SCHEMA_OBJECTS] = "SELECT count(*) FROM sqlite_schema",
    [SQL_INTEGRITY] = "PRAGMA integrity_check(8)",
    [SQL_FK_CHECK] = "PRAGMA foreign_key_check",

    [SQL_JOB_LOOKUP] = "SELECT chunks_total, status FROM jobs WHERE id = ?1",
    [SQL_JOB_INSERT] = "INSERT INTO jobs(name, spec, status, reason, base_model, wait_for_job, "
                       "created_at, out_dir) VALUES(?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7)",
    [SQL_EVENT_INSERT] = "INSERT INTO job_events(job_id, at, status, reason) VALUES(?1, ?2, ?3, ?4)",
    [SQL_JOB_SET_STATUS] = "UPDATE jobs SET status = ?2, reason = ?3, "
                           "started_at = coalesce(started_at, ?4), finished_at = ?5 WHERE id = ?1",
    [SQL_JOB_SET_OUT_DIR] = "UPDATE jobs SET out_dir = ?2 WHERE id = ?1",
    [SQL_JOBS_RUNNING] = "SELECT id FROM jobs WHERE status = 'running' ORDER BY id",
    [SQL_JOB_DELETE] = "DELETE FROM jobs WHERE id = ?1",

    /* ?7 NULL: the total is not known (the groups record may have set it) */
    [SQL_PROGRESS] = "UPDATE jobs SET step = ?2, steps = ?3, loss = ?4, params_live = ?5, "
                     "chunks_live = ?6, params_total = coalesce(?7, params_total) WHERE id = ?1",
    [SQL_METRIC_PUT] = "INSERT OR REPLACE INTO metrics(job_id, name, step, value) VALUES(?1, ?2, ?3, ?4)",
    [SQL_GROUPS_CLEAR] = "DELETE FROM groups WHERE job_id = ?1",
    [SQL_GROUP_PUT] = "INSERT INTO groups(job_id, idx, key, tensor, layer, layer_class, depth, axis, "
                      "start, \"end\", size, frozen_at) "
                      "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    [SQL_GROUPS_JOB] = "UPDATE jobs SET chunks_total = ?2, chunks_live = ?3, params_total = ?4, "
                       "params_live = ?5 WHERE id = ?1",
    [SQL_DRIFT_PUT] = "INSERT OR REPLACE INTO drift(job_id, gblock, step, mask, js, js_ema) "
                      "VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
    [SQL_DRIFT_STEP_PUT] = "INSERT OR REPLACE INTO drift_steps(job_id, step, n) VALUES(?1, ?2, ?3)",
    [SQL_FREEZE_PUT] = "INSERT OR REPLACE INTO freezes(job_id, step, kind, metric, mean, std, lambda, "
                       "threshold, n_frozen, chunks_live, params_live, frozen) "
                       "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    /* a chunk freezes once: a replayed decision keeps the earlier step */
    [SQL_GROUP_FREEZE] = "UPDATE groups SET frozen_at = min(coalesce(frozen_at, ?3), ?3) "
                         "WHERE job_id = ?1 AND idx = ?2",
    [SQL_FREEZE_JOB] = "UPDATE jobs SET chunks_live = ?2, params_live = ?3 WHERE id = ?1",
    [SQL_EVAL_PUT] = "INSERT OR REPLACE INTO evals(job_id, dataset, step, loss, iou, f1, accuracy, "
                     "precision, recall) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    [SQL_CHECKPOINT] = "UPDATE jobs SET checkpoint_path = ?2, checkpoint_step = ?3 WHERE id = ?1",
    [SQL_RESULT] = "UPDATE jobs SET result = ?2 WHERE id = ?1",
    [SQL_MODEL_PUT] = "INSERT INTO models(name, path, config, parameters, bytes, job_id, created_at) "
                      "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    /* Rewind to a checkpoint after S steps: the next step run is 0-based
     * step S, so rows counted in 0-based steps go from S on, rows counted
     * in steps done (metrics, evals) from S + 1 on. */
    [SQL_REWIND_DRIFT] = "DELETE FROM drift WHERE job_id = ?1 AND step >= ?2",
    [SQL_REWIND_DRIFT_STEPS] = "DELETE FROM drift_steps WHERE job_id = ?1 AND step >= ?2",
    [SQL_REWIND_FREEZES] = "DELETE FROM freezes WHERE job_id = ?1 AND step >= ?2",
    [SQL_REWIND_METRICS] = "DELETE FROM metrics WHERE job_id = ?1 AND step > ?2",
    [SQL_REWIND_EVALS] = "DELETE FROM evals WHERE job_id = ?1 AND step > ?2",
    [SQL_REWIND_GROUPS] = "UPDATE groups SET frozen_at = NULL WHERE job_id = ?1 AND frozen_at >= ?2",
    [SQL_REWIND_JOB] = "UPDATE jobs SET step = min(step, ?2), "
                       "chunks_live = (SELECT count(*) FROM groups WHERE job_id = ?1 AND frozen_at IS NULL), "
                       "params_live = (SELECT coalesce(sum(size), 0) FROM groups "
                       "               WHERE job_id = ?1 AND frozen_at IS NULL) "
                       "WHERE id = ?1",

    /* Keyset pages, newest first: ?1 = the cursor's id (exclusive), ?2 = a
     * LIKE pattern or NULL, ?3 = rows wanted, ?4 = the status. The status
     * form walks jobs_by_status(status, id) backwards. */
    [SQL_JOBS_PAGE] = "SELECT " JOB_COLUMNS " FROM jobs WHERE id < ?1 "
                      "AND (?2 IS NULL OR name LIKE ?2 ESCAPE '\\') ORDER BY id DESC LIMIT ?3",
    [SQL_JOBS_PAGE_STATUS] = "SELECT " JOB_COLUMNS " FROM jobs WHERE status = ?4 AND id < ?1 "
                             "AND (?2 IS NULL OR name LIKE ?2 ESCAPE '\\') ORDER BY id DESC LIMIT ?3",
    [SQL_JOB_GET] = "SELECT " JOB_COLUMNS ", spec, result FROM jobs WHERE id = ?1",
    [SQL_JOB_EVENTS] = "SELECT at, status, reason FROM job_events WHERE job_id = ?1 ORDER BY id",
    [SQL_JOB_EVALS] = "SELECT dataset, step, loss, iou, f1, accuracy, precision, recall FROM evals "
                      "WHERE job_id = ?1 ORDER BY step, dataset",
    /* evals gets rows only at the end (the final val and the zero-shot
     * sets, in one transaction), so "has rows" is "the final evaluation is
     * stored"; a search of its primary key (job_id, dataset, step) */
    [SQL_JOB_ZERO_SHOT] = "SELECT dataset, iou FROM evals WHERE job_id = ?1 ORDER BY dataset, step",
    [SQL_JOB_COUNTS] = "SELECT status, count(*) FROM jobs GROUP BY status",
    [SQL_GROUPS_OF_JOB] = "SELECT idx, key, tensor, layer, layer_class, depth, axis, start, \"end\", "
                          "size, frozen_at FROM groups WHERE job_id = ?1 ORDER BY idx",
    [SQL_GROUP_BY_KEY] = "SELECT idx, key, layer_class FROM groups WHERE job_id = ?1 AND key = ?2",
    /* the drift filters (prefixes, class, indices) run in C over these rows:
     * a job has hundreds to a few thousand chunks */
    [SQL_GROUPS_SELECT] = "SELECT idx, key, layer_class FROM groups WHERE job_id = ?1 ORDER BY idx",
    [SQL_GROUPS_BY_DEPTH] = "SELECT idx, key, depth, frozen_at FROM groups WHERE job_id = ?1 "
                            "ORDER BY depth, idx",
    [SQL_GROUP_KEYS] = "SELECT idx, key FROM groups WHERE job_id = ?1",
    [SQL_DRIFT_LATEST] = "SELECT step, mask, js_ema FROM drift WHERE job_id = ?1 AND gblock = ?2 "
                         "AND step <= ?3 ORDER BY step DESC",
    [SQL_DRIFT_BLOCK] = "SELECT step, mask, js, js_ema FROM drift WHERE job_id = ?1 AND gblock = ?2 "
                        "AND step BETWEEN ?3 AND ?4 ORDER BY step",
    [SQL_DRIFT_ALL] = "SELECT gblock, step, mask, js_ema FROM drift WHERE job_id = ?1 "
                      "AND step BETWEEN ?2 AND ?3 ORDER BY gblock, step",
    [SQL_DRIFT_STEPS] = "SELECT step FROM drift_steps WHERE job_id = ?1 AND step BETWEEN ?2 AND ?3 "
                        "ORDER BY step",
    [SQL_FREEZES_OF_JOB] = "SELECT step, kind, metric, mean, std, lambda, threshold, n_frozen, "
                           "chunks_live, params_live, frozen FROM freezes WHERE job_id = ?1 ORDER BY step",
    [SQL_METRICS_ONE] = "SELECT name, step, value FROM metrics WHERE job_id = ?1 AND name = ?2 "
                        "AND step BETWEEN ?3 AND ?4 ORDER BY name, step",
    [SQL_METRICS_ALL] = "SELECT name, step, value FROM metrics WHERE job_id = ?1 "
                        "AND step BETWEEN ?3 AND ?4 ORDER BY name, step",
    [SQL_MODELS_PAGE] = "SELECT " MODEL_COLUMNS " FROM models WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
    [SQL_MODEL_GET] = "SELECT " MODEL_COLUMNS " FROM models WHERE id = ?1",
};

struct store {
    sqlite3 *db;
    int readonly;
    int full;                          /* the last error was SQLITE_FULL */
    char *path;                        /* for messages */
    char *reserve;                     /* PATH.reserve (writers; design note 6) */
    sqlite3_stmt *stmt[SQL_COUNT];     /* prepared on first use */
    int *slot;                         /* (slot_cap) chunk idx → its position in the drift
                                        * record being written; -1 between calls */
    size_t slot_cap;
};

static const char *const status_names[STORE_JOB_STATUSES] = {
    [STORE_JOB_QUEUED] = "queued",       [STORE_JOB_RUNNING] = "running",
    [STORE_JOB_SUCCEEDED] = "succeeded", [STORE_JOB_FAILED] = "failed",
    [STORE_JOB_CANCELLED] = "cancelled", [STORE_JOB_INTERRUPTED] = "interrupted",
};

#define BIT(st) (1u << (st))
/* edges[from] = the statuses a job may move to (store.h's diagram) */
static const unsigned edges[STORE_JOB_STATUSES] = {
    [STORE_JOB_QUEUED] = BIT(STORE_JOB_QUEUED) | BIT(STORE_JOB_RUNNING) | BIT(STORE_JOB_FAILED) |
                         BIT(STORE_JOB_CANCELLED),
    [STORE_JOB_RUNNING] = BIT(STORE_JOB_SUCCEEDED) | BIT(STORE_JOB_FAILED) | BIT(STORE_JOB_CANCELLED) |
                          BIT(STORE_JOB_INTERRUPTED),
    [STORE_JOB_INTERRUPTED] = BIT(STORE_JOB_RUNNING) | BIT(STORE_JOB_QUEUED) | BIT(STORE_JOB_FAILED) |
                              BIT(STORE_JOB_CANCELLED),
};

/* ------------------------------------------------------------ errors */

static int fail(fisher_error *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Formats the message into err and returns code. */
static int fail(fisher_error *err, int code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* The store code of an SQLite result code. A constraint failure is a bad
 * record or argument: the schema's CHECKs are the last line of validation. */
static int code_of(int rc) {
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED: return STORE_BUSY;
    case SQLITE_CONSTRAINT: return STORE_INVALID;
    default: return STORE_ERROR;
    }
}

static int sql_fail(store *s, fisher_error *err, int rc, const char *what) {
    int code = code_of(rc);
    if ((rc & 0xff) == SQLITE_FULL) s->full = 1;
    return fail(err, code, "%s: %s: %s%s", s->path, what, sqlite3_errmsg(s->db),
                code == STORE_BUSY ? " (another process holds the database: a second fisherd "
                                     "on this --data-dir?)"
                                   : "");
}

static int read_only(store *s, fisher_error *err) {
    return fail(err, STORE_INVALID, "%s: this connection is read-only (opened STORE_READONLY)",
                s->path);
}

/* ------------------------------------------------------------ statements and transactions */

/* The cached statement `id`, reset and ready to bind (every parameter must
 * be bound again: bindings of the previous use linger). NULL with err when
 * it does not prepare — a bug, or a schema this binary did not make. */
static sqlite3_stmt *stmt(store *s, int id, fisher_error *err) {
    sqlite3_stmt *st = s->stmt[id];
    if (st) {
        sqlite3_reset(st);
        return st;
    }
    int rc = sqlite3_prepare_v3(s->db, sql_text[id], -1, SQLITE_PREPARE_PERSISTENT, &s->stmt[id], NULL);
    if (rc != SQLITE_OK) {
        fail(err, STORE_ERROR, "%s: preparing \"%.60s…\": %s", s->path, sql_text[id], sqlite3_errmsg(s->db));
        sqlite3_finalize(s->stmt[id]);
        s->stmt[id] = NULL;
        return NULL;
    }
    return s->stmt[id];
}

/* Resets every statement still stepping (design note 2). O(SQL_COUNT). */
static void release(store *s) {
    for (int i = 0; i < SQL_COUNT; i++)
        if (s->stmt[i] && sqlite3_stmt_busy(s->stmt[i])) sqlite3_reset(s->stmt[i]);
}

/* Steps st once; STORE_OK when it ran (a row or done), else the error. */
static int step_once(store *s, sqlite3_stmt *st, const char *what, fisher_error *err) {
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW || rc == SQLITE_DONE) return STORE_OK;
    return sql_fail(s, err, rc, what);
}

/* Runs the argument-less statement `id` once. */
static int exec_id(store *s, int id, const char *what, fisher_error *err) {
    sqlite3_stmt *st = stmt(s, id, err);
    if (!st) return STORE_ERROR;
    int rc = step_once(s, st, what, err);
    sqlite3_reset(st);
    return rc;
}

enum { TX_READ, TX_WRITE };

static int tx_begin(store *s, int kind, fisher_error *err) {
    return exec_id(s, kind == TX_WRITE ? SQL_BEGIN_WRITE : SQL_BEGIN_READ,
                   kind == TX_WRITE ? "starting a write transaction" : "starting a read transaction",
                   err);
}

/* Ends the transaction tx_begin started: commits when rc is STORE_OK, else
 * rolls back. Returns rc, or the commit's error (after rolling back). */
static int tx_end(store *s, int rc, fisher_error *err) {
    release(s);
    if (rc == STORE_OK) {
        rc = exec_id(s, SQL_COMMIT, "committing", err);
        if (rc == STORE_OK) return rc;
    }
    /* SQLite has already rolled back after some errors (SQLITE_FULL, …) */
    if (!sqlite3_get_autocommit(s->db)) exec_id(s, SQL_ROLLBACK, "rolling back", NULL);
    return rc;
}

/* The single integer a PRAGMA or count query returns. */
static int query_int(store *s, int id, int64_t *v, fisher_error *err) {
    sqlite3_stmt *st = stmt(s, id, err);
    if (!st) return STORE_ERROR;
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        int code = sql_fail(s, err, rc == SQLITE_DONE ? SQLITE_ERROR : rc, "reading the database header");
        sqlite3_reset(st);
        return code;
    }
    *v = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return STORE_OK;
}

static void bind_text(sqlite3_stmt *st, int i, const char *text) {
    if (text) sqlite3_bind_text(st, i, text, -1, SQLITE_STATIC);
    else sqlite3_bind_null(st, i);
}

/* An id column: 0 (none) is NULL. */
static void bind_id(sqlite3_stmt *st, int i, int64_t id) {
    if (id > 0) sqlite3_bind_int64(st, i, id);
    else sqlite3_bind_null(st, i);
}

/* A column that may be NULL as a double: NULL is NaN (SQLite stores NaN so). */
static double col_double(sqlite3_stmt *st, int c) {
    return sqlite3_column_type(st, c) == SQLITE_NULL ? NAN : sqlite3_column_double(st, c);
}

/* ------------------------------------------------------------ blobs */

/* float64 little-endian; compilers turn these loops into one move on
 * little-endian hosts. */
static void put_f64(unsigned char *p, double v) {
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(u >> (8 * i));
}

static double get_f64(const unsigned char *p) {
    uint64_t u = 0;
    for (int i = 0; i < 8; i++) u |= (uint64_t)p[i] << (8 * i);
    double v;
    memcpy(&v, &u, sizeof v);
    return v;
}

/* Position of bit b's value in a drift row's blobs. */
static int mask_pos(uint32_t mask, int b) {
    return __builtin_popcount(mask & ((1u << b) - 1u));
}

/* ------------------------------------------------------------ JSON helpers */

/* Each returns non-zero when building failed (out of memory); callers OR
 * the results and check once. The value's reference is always consumed. */
static int jset(json_t *o, const char *k, json_t *v) {
    return !v || json_object_set_new(o, k, v) != 0;
}

static int jpush(json_t *a, json_t *v) {
    return !v || json_array_append_new(a, v) != 0;
}

/* A number, or null when it is not finite (JSON has no NaN). */
static json_t *json_num(double v) {
    return isfinite(v) ? json_real(v) : json_null();
}

static json_t *json_id(char kind, int64_t id) {
    char buf[32];
    snprintf(buf, sizeof buf, "%c_%" PRId64, kind, id);
    return json_string(buf);
}

static json_t *col_int(sqlite3_stmt *st, int c) {
    return sqlite3_column_type(st, c) == SQLITE_NULL ? json_null()
                                                       : json_integer(sqlite3_column_int64(st, c));
}

static json_t *col_real(sqlite3_stmt *st, int c) {
    return json_num(col_double(st, c));
}

/* Text as stored, with '?' for bytes that are not UTF-8: a reason cut
 * mid-character by an older fisherd, or written by another tool, must not
 * make a job (and every list holding it) unreadable. */
static json_t *col_text(sqlite3_stmt *st, int c) {
    const char *t = (const char *)sqlite3_column_text(st, c);
    if (!t) return json_null();
    json_t *j = json_string(t);
    if (j) return j;
    char *copy = strdup(t);
    if (!copy) return NULL;
    fisher_utf8_sanitize(copy);
    j = json_string(copy);
    free(copy);
    return j;
}

static json_t *col_ref(sqlite3_stmt *st, int c, char kind) {
    return sqlite3_column_type(st, c) == SQLITE_NULL ? json_null()
                                                       : json_id(kind, sqlite3_column_int64(st, c));
}

/* Stored JSON text back as a value (NULL column: null). NULL when it does
 * not parse, which the schema's CHECKs rule out. */
static json_t *col_json(sqlite3_stmt *st, int c) {
    const char *t = (const char *)sqlite3_column_text(st, c);
    return t ? json_loads(t, JSON_DECODE_ANY, NULL) : json_null();
}

/* ------------------------------------------------------------ opening */

int store_schema_version(void) {
    return fisherd_migrations_count;
}

double store_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Applies the migrations the file lacks, each in its own transaction. The
 * version is read again inside the transaction: a second process opening
 * the same file at the same moment finds the work done. */
static int migrate(store *s, fisher_error *err) {
    for (int i = 0; i < fisherd_migrations_count; i++) {
        const fisherd_migration *m = &fisherd_migrations[i];
        int64_t version = 0;
        int rc = tx_begin(s, TX_WRITE, err);
        if (rc) return rc;
        rc = query_int(s, SQL_USER_VERSION, &version, err);
        if (rc == STORE_OK && version < m->version) {
            /* a migration is several statements of SQL the binary carries:
             * sqlite3_exec runs them in order */
            char *msg = NULL;
            if (sqlite3_exec(s->db, m->sql, NULL, NULL, &msg) != SQLITE_OK) {
                rc = fail(err, STORE_ERROR, "%s: migration %s failed: %s", s->path, m->name,
                          msg ? msg : sqlite3_errmsg(s->db));
            } else if ((rc = query_int(s, SQL_USER_VERSION, &version, err)) == STORE_OK &&
                       version != m->version) {
                rc = fail(err, STORE_ERROR, "%s: migration %s leaves user_version %" PRId64
                          ", not %d (the file must end with PRAGMA user_version = %d)",
                          s->path, m->name, version, m->version, m->version);
            }
            sqlite3_free(msg);
        }
        if ((rc = tx_end(s, rc, err))) return rc;
    }
    return STORE_OK;
}

/* Whether the file is fisherd's, at a version this binary can use. */
static int check_identity(store *s, fisher_error *err) {
    int64_t app = 0, version = 0, objects = 0;
    int rc;
    if ((rc = query_int(s, SQL_APPLICATION_ID, &app, err)) ||
        (rc = query_int(s, SQL_USER_VERSION, &version, err)) ||
        (rc = query_int(s, SQL_SCHEMA_OBJECTS, &objects, err)))
        return rc;
    int known = fisherd_migrations_count;
    if (app != 0 && app != STORE_APP_ID)
        return fail(err, STORE_ERROR, "%s is a SQLite database of another application "
                    "(application_id %" PRId64 "); use another --data-dir", s->path, app);
    if (version > known)
        return fail(err, STORE_ERROR, "%s: database schema version %" PRId64 " is newer than this "
                    "fisherd knows (%d); upgrade fisherd or use another --data-dir",
                    s->path, version, known);
    if (version == 0 && objects > 0)
        return fail(err, STORE_ERROR, "%s has tables but no fisherd schema version: it is not "
                    "fisherd's database; use another --data-dir", s->path);
    if (s->readonly && version < known)
        return fail(err, STORE_ERROR, "%s: database schema version %" PRId64 " is older than this "
                    "fisherd (%d); the daemon migrates it when it starts", s->path, version, known);
    return STORE_OK;
}

/* Makes the reserve file whole (design note 6); best effort: without room
 * for it the daemon still runs, only without the reserve. */
static void reserve_make(store *s) {
    int fd = open(s->reserve, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return;
    /* glibc writes the blocks itself where the filesystem cannot allocate
     * them; on a full disk it fails, and what it got stays reserved */
    (void)posix_fallocate(fd, 0, STORE_RESERVE_BYTES);
    close(fd);
}

int store_open(const char *path, unsigned flags, store **out, fisher_error *err) {
    *out = NULL;
    int rc = STORE_ERROR;
    store *s = calloc(1, sizeof *s);
    if (!s || !(s->path = strdup(path))) {
        rc = fail(err, STORE_ERROR, "out of memory opening %s", path);
        goto err;
    }
    s->readonly = (flags & STORE_READONLY) != 0;
    if (!sqlite3_threadsafe()) { /* readers run on threads of their own */
        rc = fail(err, STORE_ERROR, "this SQLite library was built without thread support");
        goto err;
    }
    /* NOMUTEX: a store is one thread's at a time (store.h), so SQLite's
     * per-call connection mutex buys nothing */
    int oflags = (s->readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) |
                 SQLITE_OPEN_NOMUTEX;
    int src = sqlite3_open_v2(path, &s->db, oflags, NULL);
    if (src != SQLITE_OK) {
        rc = fail(err, STORE_ERROR, "cannot open the database %s%s: %s", path,
                  s->readonly ? " read-only" : "", s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(src));
        goto err;
    }
    sqlite3_busy_timeout(s->db, STORE_BUSY_MS);
    /* identity first: a file that is not ours is refused before anything
     * (WAL, migrations) changes it */
    if ((rc = check_identity(s, err))) goto err;
    if (!s->readonly) {
        sqlite3_stmt *st = stmt(s, SQL_WAL, err);
        if (!st) {
            rc = STORE_ERROR;
            goto err;
        }
        src = sqlite3_step(st);
        if (src != SQLITE_ROW) {
            rc = sql_fail(s, err, src, "switching to WAL");
            goto err;
        }
        const char *mode = (const char *)sqlite3_column_text(st, 0);
        if (!mode || strcmp(mode, "wal") != 0) {
            rc = fail(err, STORE_ERROR, "%s: cannot switch to WAL (the journal mode stays '%s'); "
                      "is the data dir on a network filesystem?", path, mode ? mode : "?");
            goto err;
        }
        sqlite3_reset(st);
        if ((rc = exec_id(s, SQL_SYNCHRONOUS, "setting synchronous", err))) goto err;
    }
    /* Readers read through the OS's page cache with a small cache of their
     * own: a mapped file counts in the daemon's RSS once per connection (a
     * 10k-point read mapped 76 MB of a 92 MB file, in every pooled
     * reader), and the API keeps finished jobs' answers anyway. */
    if ((rc = exec_id(s, SQL_FOREIGN_KEYS, "enabling foreign keys", err)) ||
        (rc = exec_id(s, s->readonly ? SQL_READER_CACHE_SIZE : SQL_CACHE_SIZE, "setting the cache size", err)) ||
        (!s->readonly && (rc = exec_id(s, SQL_MMAP, "mapping the file", err))))
        goto err;
    if (!s->readonly && (rc = migrate(s, err))) goto err;
    if (!s->readonly) {
        size_t n = strlen(path) + sizeof ".reserve";
        if (!(s->reserve = malloc(n))) {
            rc = fail(err, STORE_ERROR, "out of memory opening %s", path);
            goto err;
        }
        snprintf(s->reserve, n, "%s.reserve", path);
        reserve_make(s);
    }
    *out = s;
    return STORE_OK;
err:
    store_close(s);
    return rc;
}

void store_close(store *s) {
    if (!s) return;
    for (int i = 0; i < SQL_COUNT; i++) sqlite3_finalize(s->stmt[i]);
    sqlite3_close_v2(s->db);
    free(s->slot);
    free(s->reserve);
    free(s->path);
    free(s);
}

void store_release_memory(store *s) {
    if (s) sqlite3_db_release_memory(s->db);
}

int store_check(store *s, fisher_error *err) {
    sqlite3_stmt *st = stmt(s, SQL_INTEGRITY, err);
    if (!st) return STORE_ERROR;
    char found[400] = "";
    size_t used = 0;
    int rc, bad = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *line = (const char *)sqlite3_column_text(st, 0);
        if (line && strcmp(line, "ok") == 0) continue;
        bad = 1;
        if (used < sizeof found)
            used += (size_t)snprintf(found + used, sizeof found - used, "%s%s", used ? "; " : "",
                                     line ? line : "?");
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) return sql_fail(s, err, rc, "checking integrity");
    if (bad) return fail(err, STORE_ERROR, "%s: integrity check failed: %s", s->path, found);
    if (!(st = stmt(s, SQL_FK_CHECK, err))) return STORE_ERROR;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        rc = fail(err, STORE_ERROR, "%s: foreign key check failed: table %s row %lld refers to a "
                  "missing row of %s", s->path, (const char *)sqlite3_column_text(st, 0),
                  (long long)sqlite3_column_int64(st, 1), (const char *)sqlite3_column_text(st, 2));
        sqlite3_reset(st);
        return rc;
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? STORE_OK : sql_fail(s, err, rc, "checking foreign keys");
}

/* ------------------------------------------------------------ ids and statuses */

/* Parses a positive decimal int64 that makes up the whole of text. */
static int parse_positive(const char *text, int64_t *v) {
    if (!text || *text < '1' || *text > '9') return -1;
    errno = 0;
    char *end;
    long long x = strtoll(text, &end, 10);
    if (errno || *end) return -1;
    *v = x;
    return 0;
}

int store_id_parse(const char *text, char kind, int64_t *id) {
    if (!text || text[0] != kind || text[1] != '_') return -1;
    return parse_positive(text + 2, id);
}

const char *store_job_status_name(store_job_status st) {
    return (unsigned)st < STORE_JOB_STATUSES ? status_names[st] : NULL;
}

int store_job_status_parse(const char *name, store_job_status *st) {
    for (int i = 0; name && i < STORE_JOB_STATUSES; i++)
        if (strcmp(name, status_names[i]) == 0) {
            *st = (store_job_status)i;
            return 0;
        }
    return -1;
}

int store_job_status_terminal(store_job_status st) {
    return st == STORE_JOB_SUCCEEDED || st == STORE_JOB_FAILED || st == STORE_JOB_CANCELLED;
}

/* Pagination cursors: "k<id>", the id of the last row a page returned.
 * Opaque to clients; only its form is checked. */
static int cursor_parse(const char *cursor, int64_t *before, fisher_error *err) {
    *before = INT64_MAX;
    if (!cursor) return STORE_OK;
    if (cursor[0] != 'k' || parse_positive(cursor + 1, before))
        return fail(err, STORE_INVALID, "cursor '%.40s' is not one this server made: pass a "
                    "page's next_cursor unchanged", cursor);
    return STORE_OK;
}

static json_t *cursor_make(int64_t last_id) {
    char buf[32];
    snprintf(buf, sizeof buf, "k%" PRId64, last_id);
    return json_string(buf);
}

static int page_limit(size_t limit, size_t *out, fisher_error *err) {
    if (limit > PAGE_MAX)
        return fail(err, STORE_INVALID, "limit %zu is out of range [1, %d]", limit, PAGE_MAX);
    *out = limit ? limit : PAGE_DEFAULT;
    return STORE_OK;
}

/* ------------------------------------------------------------ writer: jobs */

/* Job id's chunk count and status (either pointer may be NULL);
 * STORE_NOT_FOUND when there is no such job. */
static int job_lookup(store *s, int64_t id, int64_t *chunks_total, store_job_status *status,
                      fisher_error *err) {
    sqlite3_stmt *st = stmt(s, SQL_JOB_LOOKUP, err);
    if (!st) return STORE_ERROR;
    sqlite3_bind_int64(st, 1, id);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        sqlite3_reset(st);
        return fail(err, STORE_NOT_FOUND, "there is no job j_%" PRId64, id);
    }
    if (rc != SQLITE_ROW) {
        rc = sql_fail(s, err, rc, "looking a job up");
        sqlite3_reset(st);
        return rc;
    }
    if (chunks_total) *chunks_total = sqlite3_column_int64(st, 0);
    if (status && store_job_status_parse((const char *)sqlite3_column_text(st, 1), status)) {
        sqlite3_reset(st);
        return fail(err, STORE_ERROR, "%s: job j_%" PRId64 " has an unknown status", s->path, id);
    }
    sqlite3_reset(st);
    return STORE_OK;
}

static int event_add(store *s, int64_t job, store_job_status status, const char *reason, double at,
                     fisher_error *err) {
    sqlite3_stmt *st = stmt(s, SQL_EVENT_INSERT, err);
    if (!st) return STORE_ERROR;
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_double(st, 2, at);
    bind_text(st, 3, status_names[status]);
    bind_text(st, 4, reason);
    return step_once(s, st, "recording a status change", err);
}

int store_job_insert(store *s, const store_job_new *job, int64_t *id, fisher_error *err) {
    if (s->readonly) return read_only(s, err);
    if (!job->name || !job->spec) return fail(err, STORE_INVALID, "a job needs a name and a spec");
    int64_t new_id = 0;
    int rc = tx_begin(s, TX_WRITE, err);
    if (rc) return rc;
    if (job->wait_for_job > 0 && (rc = job_lookup(s, job->wait_for_job, NULL, NULL, err))) {
        if (rc == STORE_NOT_FOUND)
            fail(err, rc, "job j_%" PRId64 ", whose model the job needs, does not exist", job->wait_for_job);
        goto out;
    }
    sqlite3_stmt *st = stmt(s, SQL_JOB_INSERT, err);
    if (!st) {
        rc = STORE_ERROR;
        goto out;
    }
    bind_text(st, 1, job->name);
    bind_text(st, 2, job->spec);
    bind_text(st, 3, job->reason);
    bind_text(st, 4, job->base_model);
    bind_id(st, 5, job->wait_for_job);
    sqlite3_bind_double(st, 6, job->created_at);
    bind_text(st, 7, job->out_dir);
    if ((rc = step_once(s, st, "inserting a job", err))) {
        if (rc == STORE_INVALID) fail(err, rc, "the job's spec is not valid JSON");
        goto out;
    }
    new_id = sqlite3_last_insert_rowid(s->db);
    rc = event_add(s, new_id, STORE_JOB_QUEUED, job->reason, job->created_at, err);
out:
    rc = tx_end(s, rc, err);
    if (rc == STORE_OK) *id = new_id;
    return rc;
}

/* The status change itself, inside the caller's transaction. */
static int status_change(store *s, int64_t id, store_job_status to, const char *reason, double now,
                         fisher_error *err) {
    store_job_status from = STORE_JOB_QUEUED;
    int rc = job_lookup(s, id, NULL, &from, err);
    if (rc) return rc;
    if (!(edges[from] & BIT(to)))
        return fail(err, STORE_CONFLICT, "job j_%" PRId64 " is %s and cannot become %s%s", id,
                    status_names[from], status_names[to],
                    store_job_status_terminal(from) ? " (a finished job keeps its status)" : "");
    sqlite3_stmt *st = stmt(s, SQL_JOB_SET_STATUS, err);
    if (!st) return STORE_ERROR;
    sqlite3_bind_int64(st, 1, id);
    bind_text(st, 2, status_names[to]);
    bind_text(st, 3, reason);
    if (to == STORE_JOB_RUNNING) sqlite3_bind_double(st, 4, now);
    else sqlite3_bind_null(st, 4);
    if (store_job_status_terminal(to)) sqlite3_bind_double(st, 5, now);
    else sqlite3_bind_null(st, 5);
    if ((rc = step_once(s, st, "changing a job's status", err))) return rc;
    return event_add(s, id, to, reason, now, err);
}

int store_job_set_status(store *s, int64_t id, store_job_status to, const char *reason, double now,
                         fisher_error *err) {
    if (s->readonly) return read_only(s, err);
    if (!store_job_status_name(to)) return fail(err, STORE_INVALID, "unknown job status %d", (int)to);
    if (to == STORE_JOB_RUNNING) reserve_make(s);
    int rc;
    for (int attempt = 0;; attempt++) {
        s->full = 0;
        rc = tx_begin(s, TX_WRITE, err);
        if (!rc) rc = tx_end(s, status_change(s, id, to, reason, now, err), err);
        /* the disk is full: spend the reserve on saying so (design note 6) */
        if (!rc || !s->full || attempt || unlink(s->reserve)) return rc;
    }
}

int store_job_set_out_dir(store *s, int64_t id, const char *out_dir, fisher_error *err) {
    if (s->readonly) return read_only(s, err);
    sqlite3_stmt *st = stmt(s, SQL_JOB_SET_OUT_DIR, err);
    if (!st) return STORE_ERROR;
    sqlite3_bind_int64(st, 1, id);
    bind_text(st, 2, out_dir);
    int rc = step_once(s, st, "setting a job's output folder", err);
    if (rc == STORE_OK && sqlite3_changes(s->db) == 0)
        rc = fail(err, STORE_NOT_FOUND, "there is no job j_%" PRId64, id);
    release(s);
    return rc;
}

int store_jobs_interrupt_running(store *s, const char *reason, double now, size_t *n,
                                 fisher_error *err) {
    if (s->readonly) return read_only(s, err);
    if (n) *n = 0;
    int64_t *ids = NULL;
    size_t count = 0, cap = 0;
    int rc = tx_begin(s, TX_WRITE, err);
    if (rc) return rc;
    sqlite3_stmt *st = stmt(s, SQL_JOBS_RUNNING, err);
    if (!st) {
        rc = STORE_ERROR;
        goto out;
    }
    /* collect first: the updates below change the rows the query walks */
    int src;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        if (count == cap) {
            int64_t *grown = realloc(ids, (cap = cap ? 2 * cap : 16) * sizeof *ids);
            if (!grown) {
                rc = fail(err, STORE_ERROR, "out of memory listing running jobs");
                goto out;
            }
            ids = grown;
        }
        ids[count++] = sqlite3_column_int64(st, 0);
    }
    if (src != SQLITE_DONE) {
        rc = sql_fail(s, err, src, "listing running jobs");
        goto out;
    }
    for (size_t i = 0; i < count; i++)
        if ((rc = status_change(s, ids[i], STORE_JOB_INTERRUPTED, reason, now, err))) goto out;
    if (n) *n = count;
out:
    free(ids);
    rc = tx_end(s, rc, err);
    if (rc && n) *n = 0;
    return rc;
}

int store_job_delete(store *s, int64_t id, fisher_error *err) {
    if (s->readonly) return read_only(s, err);
    store_job_status status = STORE_JOB_QUEUED;
    int rc = tx_begin(s, TX_WRITE, err);
    if (rc) return rc;
    if ((rc = job_lookup(s, id, NULL, &status, err))) goto out;
    if (!store_job_status_terminal(status)) {
        rc = fail(err, STORE_CONFLICT, "job j_%" PRId64 " is %s: cancel it first (only a finished "
                  "job can be deleted)", id, status_names[status]);
        goto out;
    }
    /* the schema's ON DELETE CASCADE removes every row of the job, one
     * range delete per table */
    sqlite3_stmt *st = stmt(s, SQL_JOB_DELETE, err);
    if (!st) {
        rc = STORE_ERROR;
        goto out;
    }
    sqlite3_bind_int64(st, 1, id);
    rc = step_once(s, st, "deleting a job", err);
out:
    return tx_end(s, rc, err);
}

/* ------------------------------------------------------------ writer: records */

static const char *const record_names[] = {
    [STORE_REC_PROGRESS] = "progress", [STORE_REC_GROUPS] = "groups",
    [STORE_REC_DRIFT] = "drift",       [STORE_REC_FREEZE] = "freeze",
    [STORE_REC_EVAL] = "eval",         [STORE_REC_CHECKPOINT] = "checkpoint",
    [STORE_REC_RESULT] = "result",     [STORE_REC_MODEL] = "model",
    [STORE_REC_REWIND] = "rewind",
};
#define N_RECORD_KINDS (sizeof record_names / sizeof record_names[0])

static int metric_put(store *s, int64_t job, const char *name, int64_t step, double value,
                      fisher_error *err) {
    sqlite3_stmt *st = stmt(s, SQL_METRIC_PUT, err);
    if (!st) return STORE_ERROR;
    sqlite3_bind_int64(st, 1, job);
    bind_text(st, 2, name);
    sqlite3_bind_int64(st, 3, step);
    sqlite3_bind_double(st, 4, value);
    return step_once(s, st, "writing a metric point", err);
}

/* Runs the UPDATE/DELETE `id` with (?1 = job, ?2 = v). */
static int exec_job_int(store *s, int id, int64_t job, int64_t v, const char *what,
                        fisher_error *err) {
    sqlite3_stmt *st = stmt(s, id, err);
    if (!st) return STORE_ERROR;
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_int64(st, 2, v);
    return step_once(s, st, what, err);
}

/* An UPDATE of jobs row r->job that must find it. */
static int update_job(store *s, sqlite3_stmt *st, const store_record *r, const char *what,
                      fisher_error *err) {
    int rc = step_once(s, st, what, err);
    if (rc == STORE_OK && sqlite3_changes(s->db) == 0)
        rc = fail(err, STORE_NOT_FOUND, "there is no job j_%" PRId64, r->job);
    return rc;
}

static int rec_progress(store *s, const store_record *r, fisher_error *err) {
    sqlite3_stmt *st = stmt(s, SQL_PROGRESS, err);
    if (!st) return STORE_ERROR;
    sqlite3_bind_int64(st, 1, r->job);
    sqlite3_bind_int64(st, 2, r->progress.step);
    sqlite3_bind_int64(st, 3, r->progress.steps);
    sqlite3_bind_double(st, 4, r->progress.loss);
    sqlite3_bind_int64(st, 5, r->progress.params_live);
    sqlite3_bind_int64(st, 6, r->progress.chunks_live);
    if (r->progress.params_total > 0) sqlite3_bind_int64(st, 7, r->progress.params_total);
    else sqlite3_bind_null(st, 7);
    int rc = update_job(s, st, r, "writing progress", err);
    if (rc) return rc;
    if ((rc = metric_put(s, r->job, "loss", r->progress.step, r->progress.loss, err))) return rc;
    return metric_put(s, r->job, "params_live", r->progress.step, (double)r->progress.params_live, err);
}

static int rec_groups(store *s, const store_record *r, fisher_error *err) {
    const store_group *g = r->groups.groups;
    size_t n = r->groups.n;
    if (n && !g) return fail(err, STORE_INVALID, "no groups array for %zu groups", n);
    if (n > INT32_MAX) return fail(err, STORE_INVALID, "%zu groups are more than a job can have", n);
    /* written once at the start; a resumed job sends it again, whole */
    int rc = exec_job_int(s, SQL_GROUPS_CLEAR, r->job, 0, "clearing the chunk table", err);
    if (rc) return rc;
    int64_t live = 0, params_total = 0, params_live = 0;
    sqlite3_stmt *st = stmt(s, SQL_GROUP_PUT, err);
    if (!st) return STORE_ERROR;
    for (size_t i = 0; i < n; i++) {
        if (!g[i].key || !g[i].tensor || !g[i].layer || !g[i].layer_class)
            return fail(err, STORE_INVALID, "chunk %zu lacks its key, tensor, layer or layer class", i);
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, r->job);
        sqlite3_bind_int64(st, 2, (int64_t)i);
        bind_text(st, 3, g[i].key);
        bind_text(st, 4, g[i].tensor);
        bind_text(st, 5, g[i].layer);
        bind_text(st, 6, g[i].layer_class);
        sqlite3_bind_int(st, 7, g[i].depth);
        sqlite3_bind_int(st, 8, g[i].axis);
        sqlite3_bind_int64(st, 9, g[i].start);
        sqlite3_bind_int64(st, 10, g[i].end);
        sqlite3_bind_int64(st, 11, g[i].size);
        if (g[i].frozen_at >= 0) sqlite3_bind_int64(st, 12, g[i].frozen_at);
        else sqlite3_bind_null(st, 12);
        if ((rc = step_once(s, st, "writing the chunk table", err))) {
            if (rc == STORE_INVALID) /* UNIQUE(job_id, key) or a CHECK */
                fail(err, rc, "chunk %zu ('%s'): its key repeats another chunk's, or its axis "
                     "or size is invalid", i, g[i].key);
            return rc;
        }
        params_total += g[i].size;
        if (g[i].frozen_at < 0) live++, params_live += g[i].size;
    }
    if (!(st = stmt(s, SQL_GROUPS_JOB, err))) return STORE_ERROR;
    sqlite3_bind_int64(st, 1, r->job);
    sqlite3_bind_int64(st, 2, (int64_t)n);
    sqlite3_bind_int64(st, 3, live);
    sqlite3_bind_int64(st, 4, params_total);
    sqlite3_bind_int64(st, 5, params_live);
    return step_once(s, st, "writing the chunk counts", err);
}

static int slots_reserve(store *s, size_t n, fisher_error *err) {
    if (n <= s->slot_cap) return STORE_OK;
    int *grown = realloc(s->slot, n * sizeof *grown);
    if (!grown) return fail(err, STORE_ERROR, "out of memory for %zu chunks", n);
    for (size_t i = s->slot_cap; i < n; i++) grown[i] = -1;
    s->slot = grown, s->slot_cap = n;
    return STORE_OK;
}

/* Writes the rows of 32 chunks (design note 4) the record's chunks fall in,
 * with s->slot[idx] = the chunk's position in the record. */
static int drift_rows(store *s, const store_record *r, int64_t total, fisher_error *err) {
    unsigned char js[DRIFT_BLOCK * 8], ema[DRIFT_BLOCK * 8];
    sqlite3_stmt *st = stmt(s, SQL_DRIFT_PUT, err);
    if (!st) return STORE_ERROR;
    for (int64_t block = 0; block * DRIFT_BLOCK < total; block++) {
        uint32_t mask = 0;
        int k = 0;
        for (int b = 0; b < DRIFT_BLOCK && block * DRIFT_BLOCK + b < total; b++) {
            int p = s->slot[block * DRIFT_BLOCK + b];
            if (p < 0) continue;
            mask |= 1u << b;
            put_f64(js + 8 * k, r->drift.js[p]);
            put_f64(ema + 8 * k, r->drift.js_ema[p]);
            k++;
        }
        if (!mask) continue;
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, r->job);
        sqlite3_bind_int64(st, 2, block);
        sqlite3_bind_int64(st, 3, r->drift.step);
        sqlite3_bind_int64(st, 4, (int64_t)mask);
        sqlite3_bind_blob(st, 5, js, 8 * k, SQLITE_STATIC);
        sqlite3_bind_blob(st, 6, ema, 8 * k, SQLITE_STATIC);
        int rc = step_once(s, st, "writing drift", err);
        if (rc) return rc;
    }
    st = stmt(s, SQL_DRIFT_STEP_PUT, err);
    if (!st) return STORE_ERROR;
    sqlite3_bind_int64(st, 1, r->job);
    sqlite3_bind_int64(st, 2, r->drift.step);
    sqlite3_bind_int64(st, 3, (int64_t)r->drift.n);
    return step_once(s, st, "writing a measurement step", err);
}

static int rec_drift(store *s, const store_record *r, fisher_error *err) {
    int64_t total;
    size_t n = r->drift.n, i;
    int rc = job_lookup(s, r->job, &total, NULL, err);
    if (rc) return rc;
    if (n && (!r->drift.idx || !r->drift.js || !r->drift.js_ema))
        return fail(err, STORE_INVALID, "%zu chunks measured but an array is missing", n);
    if (n && total == 0)
        return fail(err, STORE_INVALID, "j_%" PRId64 " has no chunk table yet (a groups record "
                    "comes first)", r->job);
    if ((rc = slots_reserve(s, (size_t)total, err))) return rc;
    for (i = 0; i < n; i++) {
        int g = r->drift.idx[i];
        if (g < 0 || g >= total) {
            rc = fail(err, STORE_INVALID, "chunk %d is out of range: j_%" PRId64 " has %" PRId64
                      " chunks", g, r->job, total);
            break;
        }
        if (s->slot[g] >= 0) {
            rc = fail(err, STORE_INVALID, "chunk %d is measured twice at step %" PRId64, g,
                      r->drift.step);
            break;
        }
        s->slot[g] = (int)i;
    }
    if (rc == STORE_OK) rc = drift_rows(s, r, total, err);
    /* back to all -1 for the next record: only entries of this one were set */
    for (size_t j = 0; j < n && j <= i; j++) {
        int g = r->drift.idx[j];
        if (g >= 0 && g < total) s->slot[g] = -1;
    }
    return rc;
}

/* "[3,17,42]": the frozen idx as JSON text (malloc'd), or NULL. */
static char *json_int_list(const int *v, size_t n) {
    size_t cap = 3 + 12 * n, used = 0;
    char *buf = malloc(cap);
    if (!buf) return NULL;
    buf[used++] = '[';
    for (size_t i = 0; i < n; i++)
        used += (size_t)snprintf(buf + used, cap - used, "%s%d", i ? "," : "", v[i]);
    buf[used++] = ']';
    buf[used] = '\0';
    return buf;
}

static int rec_freeze(store *s, const store_record *r, fisher_error *err) {
    size_t n = r->freeze.n_frozen;
    if (n && !r->freeze.frozen) return fail(err, STORE_INVALID, "%zu chunks frozen but no list of them", n);
    int zero = r->freeze.zero_fisher != 0;
    if (!zero && !r->freeze.metric) return fail(err, STORE_INVALID, "a drift decision needs its metric");
    int rc = job_lookup(s, r->job, NULL, NULL, err);
    if (rc) return rc;
    char *frozen = json_int_list(r->freeze.frozen, n);
    if (!frozen) return fail(err, STORE_ERROR, "out of memory listing %zu frozen chunks", n);
    sqlite3_stmt *st = stmt(s, SQL_FREEZE_PUT, err);
    if (!st) {
        rc = STORE_ERROR;
        goto out;
    }
    sqlite3_bind_int64(st, 1, r->job);
    sqlite3_bind_int64(st, 2, r->freeze.step);
    bind_text(st, 3, zero ? "zero_fisher" : "drift");
    /* the zero-Fisher freeze has no scores, so no statistics */
    bind_text(st, 4, zero ? NULL : r->freeze.metric);
    sqlite3_bind_double(st, 5, zero ? NAN : r->freeze.mean);
    sqlite3_bind_double(st, 6, zero ? NAN : r->freeze.std);
    sqlite3_bind_double(st, 7, zero ? NAN : r->freeze.lambda);
    sqlite3_bind_double(st, 8, zero ? NAN : r->freeze.threshold);
    sqlite3_bind_int64(st, 9, (int64_t)n);
    sqlite3_bind_int64(st, 10, r->freeze.chunks_live);
    sqlite3_bind_int64(st, 11, r->freeze.params_live);
    bind_text(st, 12, frozen);
    if ((rc = step_once(s, st, "writing a freeze decision", err))) goto out;
    if (!(st = stmt(s, SQL_GROUP_FREEZE, err))) {
        rc = STORE_ERROR;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, r->job);
        sqlite3_bind_int64(st, 2, r->freeze.frozen[i]);
        sqlite3_bind_int64(st, 3, r->freeze.step);
        if ((rc = step_once(s, st, "marking a chunk frozen", err))) goto out;
        if (sqlite3_changes(s->db) == 0) {
            rc = fail(err, STORE_INVALID, "chunk %d is not in j_%" PRId64 "'s chunk table",
                      r->freeze.frozen[i], r->job);
            goto out;
        }
    }
    if (!(st = stmt(s, SQL_FREEZE_JOB, err))) {
        rc = STORE_ERROR;
        goto out;
    }
    sqlite3_bind_int64(st, 1, r->job);
    sqlite3_bind_int64(st, 2, r->freeze.chunks_live);
    sqlite3_bind_int64(st, 3, r->freeze.params_live);
    rc = step_once(s, st, "writing the live counts", err);
out:
    free(frozen);
    return rc;
}

static int rec_eval(store *s, const store_record *r, fisher_error *err) {
    const char *ds = r->eval.dataset;
    if (!ds || !*ds) return fail(err, STORE_INVALID, "an evaluation needs its dataset");
    int rc = job_lookup(s, r->job, NULL, NULL, err);
    if (rc) return rc;
    int is_val = strcmp(ds, "val") == 0;
    if (is_val) {
        const struct {
            const char *name;
            double v;
        } m[] = {{"val_loss", r->eval.loss},         {"val_iou", r->eval.iou},
                 {"val_f1", r->eval.f1},             {"val_accuracy", r->eval.accuracy},
                 {"val_precision", r->eval.precision}, {"val_recall", r->eval.recall}};
        for (size_t i = 0; i < sizeof m / sizeof m[0]; i++)
            if ((rc = metric_put(s, r->job, m[i].name, r->eval.step, m[i].v, err))) return rc;
    }
    if (is_val && !r->eval.final) return STORE_OK;
    sqlite3_stmt *st = stmt(s, SQL_EVAL_PUT, err);
    if (!st) return STORE_ERROR;
    sqlite3_bind_int64(st, 1, r->job);
    bind_text(st, 2, ds);
    sqlite3_bind_int64(st, 3, r->eval.step);
    sqlite3_bind_double(st, 4, r->eval.loss);
    sqlite3_bind_double(st, 5, r->eval.iou);
    sqlite3_bind_double(st, 6, r->eval.f1);
    sqlite3_bind_double(st, 7, r->eval.accuracy);
    sqlite3_bind_double(st, 8, r->eval.precision);
    sqlite3_bind_double(st, 9, r->eval.recall);
    return step_once(s, st, "writing an evaluation", err);
}

static int rec_checkpoint(store *s, const store_record *r, fisher_error *err) {
    if (!r->checkpoint.path) return fail(err, STORE_INVALID, "a checkpoint needs its path");
    sqlite3_stmt *st = stmt(s, SQL_CHECKPOINT, err);
    if (!st) return STORE_ERROR;
    sqlite3_bind_int64(st, 1, r->job);
    bind_text(st, 2, r->checkpoint.path);
    sqlite3_bind_int64(st, 3, r->checkpoint.step);
    return update_job(s, st, r, "writing the checkpoint", err);
}

static int rec_result(store *s, const store_record *r, fisher_error *err) {
    if (!r->result.json) return fail(err, STORE_INVALID, "a result needs its JSON text");
    sqlite3_stmt *st = stmt(s, SQL_RESULT, err);
    if (!st) return STORE_ERROR;
    sqlite3_bind_int64(st, 1, r->job);
    bind_text(st, 2, r->result.json);
    int rc = update_job(s, st, r, "writing the result", err);
    if (rc == STORE_INVALID) fail(err, rc, "the result is not valid JSON: %.60s", r->result.json);
    return rc;
}

static int rec_model(store *s, const store_record *r, fisher_error *err) {
    if (!r->model.name || !r->model.path) return fail(err, STORE_INVALID, "a model needs a name and a path");
    int rc;
    if (r->job > 0 && (rc = job_lookup(s, r->job, NULL, NULL, err))) return rc;
    sqlite3_stmt *st = stmt(s, SQL_MODEL_PUT, err);
    if (!st) return STORE_ERROR;
    bind_text(st, 1, r->model.name);
    bind_text(st, 2, r->model.path);
    bind_text(st, 3, r->model.config);
    sqlite3_bind_int64(st, 4, r->model.parameters);
    sqlite3_bind_int64(st, 5, r->model.bytes);
    bind_id(st, 6, r->job);
    sqlite3_bind_double(st, 7, r->model.created_at);
    if ((rc = step_once(s, st, "registering a model", err))) return rc;
    if (r->model.id) *r->model.id = sqlite3_last_insert_rowid(s->db);
    return STORE_OK;
}

static int rec_rewind(store *s, const store_record *r, fisher_error *err) {
    static const int steps[] = {SQL_REWIND_DRIFT,   SQL_REWIND_DRIFT_STEPS, SQL_REWIND_FREEZES,
                                SQL_REWIND_METRICS, SQL_REWIND_EVALS,       SQL_REWIND_GROUPS,
                                SQL_REWIND_JOB};
    int rc = job_lookup(s, r->job, NULL, NULL, err);
    for (size_t i = 0; rc == STORE_OK && i < sizeof steps / sizeof steps[0]; i++)
        rc = exec_job_int(s, steps[i], r->job, r->rewind.step, "rewinding to a checkpoint", err);
    return rc;
}


static int rec_apply(store *s, const store_record *r, fisher_error *err) {
    switch (r->kind) {
    case STORE_REC_PROGRESS: return rec_progress(s, r, err);
    case STORE_REC_GROUPS: return rec_groups(s, r, err);
    case STORE_REC_DRIFT: return rec_drift(s, r, err);
    case STORE_REC_FREEZE: return rec_freeze(s, r, err);
    case STORE_REC_EVAL: return rec_eval(s, r, err);
    case STORE_REC_CHECKPOINT: return rec_checkpoint(s, r, err);
    case STORE_REC_RESULT: return rec_result(s, r, err);
    case STORE_REC_MODEL: return rec_model(s, r, err);
    case STORE_REC_REWIND: return rec_rewind(s, r, err);
    }
    return fail(err, STORE_INVALID, "unknown record kind %d", (int)r->kind);
}

int store_write(store *s, const store_record *recs, size_t n, fisher_error *err) {
    if (s->readonly) return read_only(s, err);
    if (n == 0) return STORE_OK;
    if (!recs) return fail(err, STORE_INVALID, "store_write: %zu records but no array", n);
    int rc = tx_begin(s, TX_WRITE, err);
    if (rc) return rc;
    for (size_t i = 0; i < n; i++) {
        const store_record *r = &recs[i];
        fisher_error why = {{0}};
        if (r->job <= 0 && r->kind != STORE_REC_MODEL)
            rc = fail(&why, STORE_INVALID, "it names no job");
        else
            rc = rec_apply(s, r, &why);
        if (rc) {
            const char *kind = (unsigned)r->kind < N_RECORD_KINDS ? record_names[r->kind] : "?";
            fail(err, rc, "record %zu of %zu (%s of j_%" PRId64 "): %s; the batch was rolled back, "
                 "none of it is stored", i + 1, n, kind, r->job, why.msg);
            break;
        }
    }
    rc = tx_end(s, rc, err);
    if (rc)
        for (size_t i = 0; i < n; i++)
            if (recs[i].kind == STORE_REC_MODEL && recs[i].model.id) *recs[i].model.id = 0;
    return rc;
}

int store_model_register(store *s, const char *name, const char *path, const char *config,
                         int64_t parameters, int64_t bytes, int64_t job, double created_at,
                         int64_t *id, fisher_error *err) {
    store_record r = {.kind = STORE_REC_MODEL, .job = job};
    r.model.name = name, r.model.path = path, r.model.config = config;
    r.model.parameters = parameters, r.model.bytes = bytes;
    r.model.created_at = created_at, r.model.id = id;
    return store_write(s, &r, 1, err);
}

/* ------------------------------------------------------------ readers: jobs and models */

static int oom(fisher_error *err) {
    return fail(err, STORE_ERROR, "out of memory building the reply");
}

/* Ends a read started by tx_begin: hands res to *out on success, frees it
 * otherwise. Returns the final code. */
static int read_end(store *s, int rc, json_t *res, json_t **out, fisher_error *err) {
    rc = tx_end(s, rc, err);
    if (rc) json_decref(res);
    else *out = res;
    return rc;
}

/* A job summary from a row of JOB_COLUMNS; NULL when out of memory. */
static json_t *job_json(sqlite3_stmt *st) {
    json_t *o = json_object(), *progress = json_object(), *params = json_object(),
           *chunks = json_object(), *ckpt = json_null();
    int bad = 0;
    if (sqlite3_column_type(st, JC_CKPATH) != SQLITE_NULL) {
        ckpt = json_object();
        bad |= jset(ckpt, "path", col_text(st, JC_CKPATH));
        bad |= jset(ckpt, "step", col_int(st, JC_CKSTEP));
    }
    bad |= jset(progress, "step", col_int(st, JC_STEP));
    bad |= jset(progress, "steps", col_int(st, JC_STEPS));
    bad |= jset(progress, "loss", col_real(st, JC_LOSS));
    bad |= jset(params, "total", col_int(st, JC_PTOTAL));
    bad |= jset(params, "live", col_int(st, JC_PLIVE));
    bad |= jset(chunks, "total", col_int(st, JC_CTOTAL));
    bad |= jset(chunks, "live", col_int(st, JC_CLIVE));
    bad |= jset(o, "id", json_id('j', sqlite3_column_int64(st, JC_ID)));
    bad |= jset(o, "name", col_text(st, JC_NAME));
    bad |= jset(o, "status", col_text(st, JC_STATUS));
    bad |= jset(o, "reason", col_text(st, JC_REASON));
    bad |= jset(o, "base_model", col_text(st, JC_BASE));
    bad |= jset(o, "wait_for_job", col_ref(st, JC_WAIT, 'j'));
    bad |= jset(o, "created_at", col_real(st, JC_CREATED));
    bad |= jset(o, "started_at", col_real(st, JC_STARTED));
    bad |= jset(o, "finished_at", col_real(st, JC_FINISHED));
    bad |= jset(o, "progress", progress);
    bad |= jset(o, "params", params);
    bad |= jset(o, "chunks", chunks);
    bad |= jset(o, "checkpoint", ckpt);
    bad |= jset(o, "out_dir", col_text(st, JC_OUTDIR));
    bad |= jset(o, "strategy", col_text(st, JC_STRATEGY));
    bad |= jset(o, "ranks", col_int(st, JC_RANKS));
    bad |= jset(o, "best_val_iou", col_real(st, JC_BEST_VAL));
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* Sets o's "zero_shot": [{"dataset", "iou"}] of the final evaluation's
 * zero-shot sets, or null while it is not stored. Another statement than
 * the caller's, which may still be stepping. */
static int job_zero_shot(store *s, int64_t id, json_t *o, fisher_error *err) {
    sqlite3_stmt *st = stmt(s, SQL_JOB_ZERO_SHOT, err);
    if (!st) return STORE_ERROR;
    sqlite3_bind_int64(st, 1, id);
    json_t *list = json_array();
    int src, any = 0, bad = !list;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        any = 1;
        if (!strcmp((const char *)sqlite3_column_text(st, 0), "val")) continue;
        json_t *z = json_object();
        bad |= jset(z, "dataset", col_text(st, 0)) | jset(z, "iou", col_real(st, 1));
        bad |= jpush(list, z);
    }
    sqlite3_reset(st);
    if (src != SQLITE_DONE) {
        json_decref(list);
        return sql_fail(s, err, src, "reading zero-shot results");
    }
    if (!any) json_decref(list), list = json_null();
    return bad | jset(o, "zero_shot", list) ? oom(err) : STORE_OK;
}

/* "%name%" with LIKE's wildcards in name escaped by '\' (malloc'd). */
static char *like_pattern(const char *name) {
    size_t n = strlen(name);
    char *p = malloc(2 * n + 3), *w = p;
    if (!p) return NULL;
    *w++ = '%';
    for (const char *c = name; *c; c++) {
        if (*c == '%' || *c == '_' || *c == '\\') *w++ = '\\';
        *w++ = *c;
    }
    *w++ = '%';
    *w = '\0';
    return p;
}

int store_jobs_list(store *s, const store_job_filter *f, json_t **out, fisher_error *err) {
    *out = NULL;
    store_job_filter none = {0};
    if (!f) f = &none;
    size_t limit = 0;
    int64_t before;
    store_job_status status = STORE_JOB_QUEUED;
    int rc;
    if ((rc = page_limit(f->limit, &limit, err)) || (rc = cursor_parse(f->cursor, &before, err)))
        return rc;
    if (f->status && store_job_status_parse(f->status, &status))
        return fail(err, STORE_INVALID, "unknown status '%.40s' (known: queued, running, succeeded, "
                    "failed, cancelled, interrupted)", f->status);
    char *pattern = NULL;
    if (f->name && !(pattern = like_pattern(f->name))) return oom(err);
    json_t *res = json_object(), *jobs = json_array();
    if ((rc = tx_begin(s, TX_READ, err))) {
        free(pattern);
        json_decref(res);
        json_decref(jobs);
        return rc;
    }
    sqlite3_stmt *st = stmt(s, f->status ? SQL_JOBS_PAGE_STATUS : SQL_JOBS_PAGE, err);
    if (!st) {
        rc = STORE_ERROR;
        goto out;
    }
    sqlite3_bind_int64(st, 1, before);
    bind_text(st, 2, pattern);
    sqlite3_bind_int64(st, 3, (int64_t)limit + 1); /* one more says whether a next page exists */
    if (f->status) bind_text(st, 4, status_names[status]);
    else sqlite3_bind_null(st, 4);
    size_t count = 0;
    int64_t last = 0;
    int src, more = 0, bad = !res || !jobs;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        if (count == limit) {
            more = 1;
            break;
        }
        last = sqlite3_column_int64(st, JC_ID);
        json_t *job = job_json(st);
        if (job && (rc = job_zero_shot(s, last, job, err))) {
            json_decref(job);
            goto out;
        }
        bad |= jpush(jobs, job);
        count++;
    }
    if (src != SQLITE_ROW && src != SQLITE_DONE) {
        rc = sql_fail(s, err, src, "listing jobs");
        goto out;
    }
    bad |= jset(res, "jobs", json_incref(jobs));
    bad |= jset(res, "next_cursor", more ? cursor_make(last) : json_null());
    if (bad) rc = oom(err);
out:
    free(pattern);
    json_decref(jobs);
    return read_end(s, rc, res, out, err);
}

/* Appends the job's evaluations and status events to o. */
static int job_history(store *s, int64_t id, json_t *o, fisher_error *err) {
    json_t *evals = json_array(), *events = json_array();
    int bad = jset(o, "evals", evals) | jset(o, "events", events);
    if (bad) return oom(err);
    sqlite3_stmt *st = stmt(s, SQL_JOB_EVALS, err);
    if (!st) return STORE_ERROR;
    sqlite3_bind_int64(st, 1, id);
    int src;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *e = json_object();
        static const char *const names[] = {"loss", "iou", "f1", "accuracy", "precision", "recall"};
        bad |= jset(e, "dataset", col_text(st, 0));
        bad |= jset(e, "step", col_int(st, 1));
        for (int i = 0; i < 6; i++) bad |= jset(e, names[i], col_real(st, 2 + i));
        bad |= jpush(evals, e);
    }
    if (src != SQLITE_DONE) return sql_fail(s, err, src, "reading evaluations");
    if (!(st = stmt(s, SQL_JOB_EVENTS, err))) return STORE_ERROR;
    sqlite3_bind_int64(st, 1, id);
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *e = json_object();
        bad |= jset(e, "at", col_real(st, 0));
        bad |= jset(e, "status", col_text(st, 1));
        bad |= jset(e, "reason", col_text(st, 2));
        bad |= jpush(events, e);
    }
    if (src != SQLITE_DONE) return sql_fail(s, err, src, "reading status events");
    return bad ? oom(err) : STORE_OK;
}

int store_job_get(store *s, int64_t id, json_t **out, fisher_error *err) {
    *out = NULL;
    json_t *res = NULL;
    int rc = tx_begin(s, TX_READ, err);
    if (rc) return rc;
    sqlite3_stmt *st = stmt(s, SQL_JOB_GET, err);
    if (!st) {
        rc = STORE_ERROR;
        goto out;
    }
    sqlite3_bind_int64(st, 1, id);
    int src = sqlite3_step(st);
    if (src == SQLITE_DONE) {
        rc = fail(err, STORE_NOT_FOUND, "there is no job j_%" PRId64, id);
        goto out;
    }
    if (src != SQLITE_ROW) {
        rc = sql_fail(s, err, src, "reading a job");
        goto out;
    }
    if (!(res = job_json(st))) {
        rc = oom(err);
        goto out;
    }
    json_t *spec = col_json(st, JC_SPEC), *result = col_json(st, JC_RESULT);
    if (!spec || !result) {
        json_decref(spec);
        json_decref(result);
        rc = fail(err, STORE_ERROR, "%s: the stored spec or result of j_%" PRId64 " is not JSON",
                  s->path, id);
        goto out;
    }
    if (jset(res, "spec", spec) | jset(res, "result", result)) {
        rc = oom(err);
        goto out;
    }
    if ((rc = job_zero_shot(s, id, res, err))) goto out;
    rc = job_history(s, id, res, err);
out:
    return read_end(s, rc, res, out, err);
}

int store_job_counts(store *s, json_t **out, fisher_error *err) {
    *out = NULL;
    json_t *res = json_object();
    int bad = !res;
    for (int i = 0; i < STORE_JOB_STATUSES; i++) bad |= jset(res, status_names[i], json_integer(0));
    int rc = tx_begin(s, TX_READ, err);
    if (rc) {
        json_decref(res);
        return rc;
    }
    sqlite3_stmt *st = stmt(s, SQL_JOB_COUNTS, err);
    if (!st) {
        rc = STORE_ERROR;
        goto out;
    }
    int src;
    while ((src = sqlite3_step(st)) == SQLITE_ROW)
        bad |= jset(res, (const char *)sqlite3_column_text(st, 0), col_int(st, 1));
    if (src != SQLITE_DONE) rc = sql_fail(s, err, src, "counting jobs");
    else if (bad) rc = oom(err);
out:
    return read_end(s, rc, res, out, err);
}

static json_t *model_json(sqlite3_stmt *st) {
    json_t *o = json_object();
    int bad = jset(o, "id", json_id('m', sqlite3_column_int64(st, 0)));
    bad |= jset(o, "name", col_text(st, 1));
    bad |= jset(o, "path", col_text(st, 2));
    bad |= jset(o, "config", col_text(st, 3));
    bad |= jset(o, "parameters", col_int(st, 4));
    bad |= jset(o, "bytes", col_int(st, 5));
    bad |= jset(o, "job", col_ref(st, 6, 'j'));
    bad |= jset(o, "created_at", col_real(st, 7));
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

int store_models_list(store *s, const char *cursor, size_t limit, json_t **out, fisher_error *err) {
    *out = NULL;
    int64_t before;
    int rc;
    if ((rc = page_limit(limit, &limit, err)) || (rc = cursor_parse(cursor, &before, err))) return rc;
    json_t *res = json_object(), *models = json_array();
    int bad = jset(res, "models", json_incref(models));
    if ((rc = tx_begin(s, TX_READ, err))) {
        json_decref(res);
        json_decref(models);
        return rc;
    }
    sqlite3_stmt *st = stmt(s, SQL_MODELS_PAGE, err);
    if (!st) {
        rc = STORE_ERROR;
        goto out;
    }
    sqlite3_bind_int64(st, 1, before);
    sqlite3_bind_int64(st, 2, (int64_t)limit + 1);
    size_t count = 0;
    int64_t last = 0;
    int src, more = 0;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        if (count == limit) {
            more = 1;
            break;
        }
        last = sqlite3_column_int64(st, 0);
        bad |= jpush(models, model_json(st));
        count++;
    }
    if (src != SQLITE_ROW && src != SQLITE_DONE) {
        rc = sql_fail(s, err, src, "listing models");
        goto out;
    }
    bad |= jset(res, "next_cursor", more ? cursor_make(last) : json_null());
    if (bad) rc = oom(err);
out:
    json_decref(models);
    return read_end(s, rc, res, out, err);
}

int store_model_get(store *s, int64_t id, json_t **out, fisher_error *err) {
    *out = NULL;
    json_t *res = NULL;
    int rc = tx_begin(s, TX_READ, err);
    if (rc) return rc;
    sqlite3_stmt *st = stmt(s, SQL_MODEL_GET, err);
    if (!st) {
        rc = STORE_ERROR;
        goto out;
    }
    sqlite3_bind_int64(st, 1, id);
    int src = sqlite3_step(st);
    if (src == SQLITE_DONE) rc = fail(err, STORE_NOT_FOUND, "there is no model m_%" PRId64, id);
    else if (src != SQLITE_ROW) rc = sql_fail(s, err, src, "reading a model");
    else if (!(res = model_json(st))) rc = oom(err);
out:
    return read_end(s, rc, res, out, err);
}

/* ------------------------------------------------------------ readers: chunks and freezes */

/* The latest js_ema of chunk idx at a step ≤ bound (its freeze step, or
 * any): the newest row of its block with its bit set. *step = -1 when it
 * was never measured. A frozen chunk's last measurement is at or just
 * before its freeze, so the walk is a few rows. */
static int drift_latest(store *s, int64_t job, int idx, int64_t bound, int64_t *step, double *v,
                        fisher_error *err) {
    sqlite3_stmt *st = stmt(s, SQL_DRIFT_LATEST, err);
    if (!st) return STORE_ERROR;
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_int64(st, 2, idx / DRIFT_BLOCK);
    sqlite3_bind_int64(st, 3, bound);
    int b = idx % DRIFT_BLOCK, src;
    *step = -1, *v = NAN;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        uint32_t mask = (uint32_t)sqlite3_column_int64(st, 1);
        if (!(mask >> b & 1u)) continue;
        const unsigned char *ema = sqlite3_column_blob(st, 2);
        int pos = mask_pos(mask, b);
        if ((size_t)sqlite3_column_bytes(st, 2) < 8 * (size_t)(pos + 1))
            return fail(err, STORE_ERROR, "%s: drift row (j_%" PRId64 ", block %d) is corrupt",
                        s->path, job, idx / DRIFT_BLOCK);
        *step = sqlite3_column_int64(st, 0);
        *v = get_f64(ema + 8 * pos);
        break;
    }
    sqlite3_reset(st);
    return src == SQLITE_ROW || src == SQLITE_DONE ? STORE_OK : sql_fail(s, err, src, "reading drift");
}

int store_groups(store *s, int64_t job, json_t **out, fisher_error *err) {
    *out = NULL;
    json_t *res = json_object(), *groups = json_array();
    int bad = jset(res, "job", json_id('j', job)) | jset(res, "groups", json_incref(groups));
    int rc = tx_begin(s, TX_READ, err);
    if (rc) {
        json_decref(res);
        json_decref(groups);
        return rc;
    }
    if ((rc = job_lookup(s, job, NULL, NULL, err))) goto out;
    sqlite3_stmt *st = stmt(s, SQL_GROUPS_OF_JOB, err);
    if (!st) {
        rc = STORE_ERROR;
        goto out;
    }
    sqlite3_bind_int64(st, 1, job);
    static const char *const names[] = {"idx", "key", "tensor", "layer", "layer_class", "depth",
                                        "axis", "start", "end", "size"};
    int src;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *g = json_object();
        for (int c = 0; c < 10; c++)
            bad |= jset(g, names[c], sqlite3_column_type(st, c) == SQLITE_TEXT ? col_text(st, c)
                                                                             : col_int(st, c));
        int frozen = sqlite3_column_type(st, 10) != SQLITE_NULL;
        int64_t frozen_at = frozen ? sqlite3_column_int64(st, 10) : INT64_MAX, at;
        double v;
        bad |= jset(g, "live", json_boolean(!frozen));
        bad |= jset(g, "frozen_at", col_int(st, 10));
        if ((rc = drift_latest(s, job, sqlite3_column_int(st, 0), frozen_at, &at, &v, err))) {
            json_decref(g);
            goto out;
        }
        bad |= jset(g, "js_ema", at >= 0 ? json_num(v) : json_null());
        bad |= jset(g, "js_step", at >= 0 ? json_integer(at) : json_null());
        bad |= jpush(groups, g);
    }
    if (src != SQLITE_DONE) rc = sql_fail(s, err, src, "reading the chunk table");
    else if (bad) rc = oom(err);
out:
    json_decref(groups);
    return read_end(s, rc, res, out, err);
}

/* The job's chunk keys as a JSON array indexed by idx (null for a gap). */
static int group_keys(store *s, int64_t job, int64_t total, json_t **keys, fisher_error *err) {
    json_t *k = json_array();
    int bad = !k;
    for (int64_t i = 0; i < total; i++) bad |= jpush(k, json_null());
    sqlite3_stmt *st = stmt(s, SQL_GROUP_KEYS, err);
    if (!st) {
        json_decref(k);
        return STORE_ERROR;
    }
    sqlite3_bind_int64(st, 1, job);
    int src;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t idx = sqlite3_column_int64(st, 0);
        if (idx >= 0 && idx < total)
            bad |= json_array_set_new(k, (size_t)idx, col_text(st, 1)) != 0;
    }
    if (src != SQLITE_DONE || bad) {
        json_decref(k);
        return src != SQLITE_DONE ? sql_fail(s, err, src, "reading chunk keys") : oom(err);
    }
    *keys = k;
    return STORE_OK;
}

int store_freezes(store *s, int64_t job, json_t **out, fisher_error *err) {
    *out = NULL;
    json_t *res = json_object(), *list = json_array(), *keys = NULL;
    int bad = jset(res, "job", json_id('j', job)) | jset(res, "freezes", json_incref(list));
    int64_t total;
    int rc = tx_begin(s, TX_READ, err);
    if (rc) {
        json_decref(res);
        json_decref(list);
        return rc;
    }
    if ((rc = job_lookup(s, job, &total, NULL, err)) || (rc = group_keys(s, job, total, &keys, err)))
        goto out;
    sqlite3_stmt *st = stmt(s, SQL_FREEZES_OF_JOB, err);
    if (!st) {
        rc = STORE_ERROR;
        goto out;
    }
    sqlite3_bind_int64(st, 1, job);
    static const char *const names[] = {"step", "kind", "metric", "mean", "std", "lambda",
                                        "threshold", "n_frozen", "chunks_live", "params_live"};
    int src;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *d = json_object(), *frozen = col_json(st, 10), *frozen_keys = json_array();
        for (int c = 0; c < 10; c++) {
            int type = sqlite3_column_type(st, c);
            bad |= jset(d, names[c], type == SQLITE_TEXT      ? col_text(st, c)
                                     : type == SQLITE_INTEGER ? col_int(st, c)
                                                              : col_real(st, c));
        }
        size_t i;
        json_t *v;
        json_array_foreach(frozen, i, v) {
            json_int_t idx = json_integer_value(v);
            json_t *key = idx >= 0 && idx < total ? json_array_get(keys, (size_t)idx) : NULL;
            bad |= jpush(frozen_keys, key ? json_incref(key) : json_null());
        }
        bad |= jset(d, "frozen", frozen) | jset(d, "frozen_keys", frozen_keys);
        bad |= jpush(list, d);
    }
    if (src != SQLITE_DONE) rc = sql_fail(s, err, src, "reading freeze decisions");
    else if (bad) rc = oom(err);
out:
    json_decref(keys);
    json_decref(list);
    return read_end(s, rc, res, out, err);
}

/* ------------------------------------------------------------ series */

/* One series being read: a chunk's drift (x = js, y = js_ema) or a
 * metric (y = value). Downsampling looks at y. */
typedef struct {
    int idx;
    char *key;                 /* chunk key or metric name */
    size_t n, cap;
    int64_t *step;
    double *x, *y;
} series;

typedef int (*series_fn)(void *ctx, const series *g, fisher_error *err);

static int series_push(series *g, int64_t step, double x, double y, fisher_error *err) {
    if (g->n == g->cap) {
        size_t cap = g->cap ? 2 * g->cap : 256;
        int64_t *st = realloc(g->step, cap * sizeof *st);
        if (st) g->step = st;
        double *x2 = st ? realloc(g->x, cap * sizeof *x2) : NULL;
        if (x2) g->x = x2;
        double *y2 = x2 ? realloc(g->y, cap * sizeof *y2) : NULL;
        if (!y2) return fail(err, STORE_ERROR, "out of memory reading %zu points of %s", g->n, g->key);
        g->y = y2, g->cap = cap;
    }
    g->step[g->n] = step, g->x[g->n] = x, g->y[g->n] = y;
    g->n++;
    return STORE_OK;
}

/* Drops the points, keeps the key. */
static void series_clear(series *g) {
    free(g->step), free(g->x), free(g->y);
    g->step = NULL, g->x = g->y = NULL, g->n = g->cap = 0;
}

static void series_free(series *g) {
    series_clear(g);
    free(g->key);
    g->key = NULL;
}

/* Design note 5. keep (room for n) gets the ascending indices of the points
 * to show; returns how many (≤ max_points unless max_points is 0). NaN
 * counts as the largest value — a diverged loss is what a chart must show —
 * and never as the smallest. */
static size_t downsample(const double *v, size_t n, size_t max_points, size_t *keep) {
    if (max_points == 0 || n <= max_points) {
        for (size_t i = 0; i < n; i++) keep[i] = i;
        return n;
    }
    size_t k = 0, buckets = (max_points - 2) / 2, inner = n - 2;
    keep[k++] = 0;
    for (size_t b = 0; b < buckets; b++) {
        size_t lo = 1 + b * inner / buckets, hi = 1 + (b + 1) * inner / buckets;
        if (lo >= hi) continue;
        size_t mn = lo, mx = lo;
        for (size_t i = lo + 1; i < hi; i++) {
            if (v[i] < v[mn] || (isnan(v[mn]) && !isnan(v[i]))) mn = i;
            if (v[i] > v[mx] || (isnan(v[i]) && !isnan(v[mx]))) mx = i;
        }
        keep[k++] = mn < mx ? mn : mx;
        if (mn != mx) keep[k++] = mn < mx ? mx : mn;
    }
    keep[k++] = n - 1;
    return k;
}

static int window_check(const store_window *w, fisher_error *err) {
    if (w->max_points == 1)
        return fail(err, STORE_INVALID, "max_points must be 0 (every point) or at least 2 (the "
                    "first and the last)");
    if (w->from > w->to)
        return fail(err, STORE_INVALID, "the step window [%" PRId64 ", %" PRId64 "] is empty",
                    w->from, w->to);
    return STORE_OK;
}

/* Whether a chunk passes the query's prefix and class filters. */
static int drift_passes(const store_drift_query *q, const char *key, const char *layer_class) {
    if (q->layer_class && (!layer_class || strcmp(layer_class, q->layer_class) != 0)) return 0;
    if (!q->prefix && !q->n_prefixes) return 1;
    if (q->prefix && strncmp(key, q->prefix, strlen(q->prefix)) == 0) return 1;
    for (size_t i = 0; i < q->n_prefixes; i++)
        if (q->prefixes[i] && strncmp(key, q->prefixes[i], strlen(q->prefixes[i])) == 0) return 1;
    return 0;
}

/* Which chunks a drift query names, in idx order, keys copied. The
 * filters run over the job's chunk table in C: O(chunks), a few thousand
 * rows at most, against the drift rows the read then walks. */
static int drift_select(store *s, int64_t job, const store_drift_query *q, series **out, size_t *n,
                        fisher_error *err) {
    unsigned char *want = NULL; /* (total) 1: idx is in q->idx */
    int64_t total = 0;
    if (q->n_idx) {
        int rc = job_lookup(s, job, &total, NULL, err);
        if (rc) return rc;
        if (!q->idx) return fail(err, STORE_INVALID, "%zu chunk indices but no array of them", q->n_idx);
        for (size_t i = 0; i < q->n_idx; i++)
            if (q->idx[i] < 0 || q->idx[i] >= total)
                return fail(err, STORE_INVALID, "chunk index %" PRId64 " is out of range: j_%" PRId64
                            " has %" PRId64 " chunks (0 to %" PRId64 ")", q->idx[i], job, total, total - 1);
        if (!(want = calloc((size_t)total, 1))) return oom(err);
        for (size_t i = 0; i < q->n_idx; i++) want[q->idx[i]] = 1;
    }
    sqlite3_stmt *st = stmt(s, q->key ? SQL_GROUP_BY_KEY : SQL_GROUPS_SELECT, err);
    if (!st) {
        free(want);
        return STORE_ERROR;
    }
    sqlite3_bind_int64(st, 1, job);
    if (q->key) bind_text(st, 2, q->key);
    series *sel = NULL;
    size_t count = 0, cap = 0;
    int src, rc = STORE_OK, rows = 0;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        rows++;
        int idx = sqlite3_column_int(st, 0);
        const char *key = (const char *)sqlite3_column_text(st, 1);
        if (want && (idx < 0 || idx >= total || !want[idx])) continue;
        if (!drift_passes(q, key, (const char *)sqlite3_column_text(st, 2))) continue;
        if (count == cap) {
            series *grown = realloc(sel, (cap = cap ? 2 * cap : 64) * sizeof *grown);
            if (!grown) {
                rc = oom(err);
                break;
            }
            sel = grown;
        }
        sel[count] = (series){.idx = idx, .key = strdup(key)};
        if (!sel[count++].key) {
            rc = oom(err);
            break;
        }
    }
    free(want);
    if (rc == STORE_OK && src != SQLITE_DONE) rc = sql_fail(s, err, src, "selecting chunks");
    if (rc == STORE_OK && q->key && rows == 0)
        rc = fail(err, STORE_NOT_FOUND, "j_%" PRId64 " has no chunk '%.200s'", job, q->key);
    if (rc) {
        for (size_t i = 0; i < count; i++) series_free(&sel[i]);
        free(sel);
        return rc;
    }
    *out = sel, *n = count;
    return STORE_OK;
}

/* Reads the window of one block's rows into the selected chunks g[0..n)
 * of that block. */
static int drift_block_read(store *s, int64_t job, int block, series *g, size_t n,
                            const store_window *w, fisher_error *err) {
    sqlite3_stmt *st = stmt(s, SQL_DRIFT_BLOCK, err);
    if (!st) return STORE_ERROR;
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_int64(st, 2, block);
    sqlite3_bind_int64(st, 3, w->from);
    sqlite3_bind_int64(st, 4, w->to);
    int src, rc = STORE_OK;
    while (rc == STORE_OK && (src = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t step = sqlite3_column_int64(st, 0);
        uint32_t mask = (uint32_t)sqlite3_column_int64(st, 1);
        const unsigned char *js = sqlite3_column_blob(st, 2);
        size_t js_len = (size_t)sqlite3_column_bytes(st, 2);
        const unsigned char *ema = sqlite3_column_blob(st, 3);
        size_t ema_len = (size_t)sqlite3_column_bytes(st, 3);
        size_t want = 8 * (size_t)__builtin_popcount(mask);
        if (js_len != want || ema_len != want) {
            rc = fail(err, STORE_ERROR, "%s: drift row (j_%" PRId64 ", block %d, step %" PRId64
                      ") is corrupt", s->path, job, block, step);
            break;
        }
        for (size_t i = 0; i < n && rc == STORE_OK; i++) {
            int b = g[i].idx % DRIFT_BLOCK;
            if (!(mask >> b & 1u)) continue;
            int pos = mask_pos(mask, b);
            rc = series_push(&g[i], step, get_f64(js + 8 * pos), get_f64(ema + 8 * pos), err);
        }
    }
    if (rc == STORE_OK && src != SQLITE_DONE) rc = sql_fail(s, err, src, "reading drift");
    sqlite3_reset(st);
    return rc;
}

/* Calls fn with each selected chunk's series (window applied, every point)
 * in idx order. Blocks are read one at a time, so memory holds at most 32
 * series. */
static int drift_each(store *s, int64_t job, const store_drift_query *q, series_fn fn, void *ctx,
                      fisher_error *err) {
    series *sel = NULL;
    size_t n = 0;
    int rc = drift_select(s, job, q, &sel, &n, err);
    for (size_t i = 0; rc == STORE_OK && i < n;) {
        int block = sel[i].idx / DRIFT_BLOCK;
        size_t j = i;
        while (j < n && sel[j].idx / DRIFT_BLOCK == block) j++;
        rc = drift_block_read(s, job, block, sel + i, j - i, &q->window, err);
        for (size_t k = i; k < j; k++) {
            if (rc == STORE_OK) rc = fn(ctx, &sel[k], err);
            series_clear(&sel[k]);
        }
        i = j;
    }
    for (size_t i = 0; i < n; i++) series_free(&sel[i]);
    free(sel);
    return rc;
}

/* Calls fn with each metric series (by name order) in the window. */
static int metrics_each(store *s, int64_t job, const char *name, const store_window *w, series_fn fn,
                        void *ctx, fisher_error *err) {
    sqlite3_stmt *st = stmt(s, name ? SQL_METRICS_ONE : SQL_METRICS_ALL, err);
    if (!st) return STORE_ERROR;
    sqlite3_bind_int64(st, 1, job);
    if (name) bind_text(st, 2, name);
    sqlite3_bind_int64(st, 3, w->from);
    sqlite3_bind_int64(st, 4, w->to);
    series cur = {0};
    int src, rc = STORE_OK;
    while (rc == STORE_OK && (src = sqlite3_step(st)) == SQLITE_ROW) {
        const char *got = (const char *)sqlite3_column_text(st, 0);
        if (!cur.key || strcmp(cur.key, got) != 0) {
            if (cur.key && (rc = fn(ctx, &cur, err))) break;
            series_free(&cur);
            if (!(cur.key = strdup(got))) {
                rc = oom(err);
                break;
            }
        }
        rc = series_push(&cur, sqlite3_column_int64(st, 1), NAN, col_double(st, 2), err);
    }
    if (rc == STORE_OK && src != SQLITE_DONE) rc = sql_fail(s, err, src, "reading metrics");
    if (rc == STORE_OK && cur.key) rc = fn(ctx, &cur, err);
    series_free(&cur);
    sqlite3_reset(st);
    return rc;
}

/* JSON form of a series: {…, "points", "step": [], <x_name>: [], <y_name>: []}. */
typedef struct {
    json_t *out;               /* array (drift) or object keyed by name (metrics) */
    size_t max_points;
    const char *x_name, *y_name; /* x_name NULL: no x column */
} series_json;

static int series_to_json(void *ctx, const series *g, fisher_error *err) {
    series_json *c = ctx;
    size_t *keep = malloc((g->n ? g->n : 1) * sizeof *keep);
    if (!keep) return oom(err);
    size_t k = downsample(g->y, g->n, c->max_points, keep);
    json_t *o = json_object(), *step = json_array(), *x = c->x_name ? json_array() : NULL,
           *y = json_array();
    int bad = 0;
    for (size_t i = 0; i < k; i++) {
        bad |= jpush(step, json_integer(g->step[keep[i]]));
        if (x) bad |= jpush(x, json_num(g->x[keep[i]]));
        bad |= jpush(y, json_num(g->y[keep[i]]));
    }
    free(keep);
    if (c->x_name) {
        bad |= jset(o, "idx", json_integer(g->idx));
        bad |= jset(o, "key", json_string(g->key));
    }
    bad |= jset(o, "points", json_integer((json_int_t)g->n));
    bad |= jset(o, "step", step);
    if (x) bad |= jset(o, c->x_name, x);
    bad |= jset(o, c->y_name, y);
    if (json_is_array(c->out)) bad |= jpush(c->out, o);
    else bad |= jset(c->out, g->key, o);
    return bad ? oom(err) : STORE_OK;
}

int store_drift(store *s, int64_t job, const store_drift_query *q, json_t **out, fisher_error *err) {
    *out = NULL;
    int rc = window_check(&q->window, err);
    if (rc) return rc;
    json_t *res = json_object(), *list = json_array();
    int bad = jset(res, "job", json_id('j', job)) | jset(res, "series", json_incref(list));
    if ((rc = tx_begin(s, TX_READ, err))) {
        json_decref(res);
        json_decref(list);
        return rc;
    }
    if (bad) rc = oom(err);
    else if ((rc = job_lookup(s, job, NULL, NULL, err)) == STORE_OK) {
        series_json c = {list, q->window.max_points, "js", "js_ema"};
        rc = drift_each(s, job, q, series_to_json, &c, err);
    }
    json_decref(list);
    return read_end(s, rc, res, out, err);
}

int store_metrics(store *s, int64_t job, const char *name, store_window window, json_t **out,
                  fisher_error *err) {
    *out = NULL;
    int rc = window_check(&window, err);
    if (rc) return rc;
    json_t *res = json_object(), *metrics = json_object();
    int bad = jset(res, "job", json_id('j', job)) | jset(res, "metrics", json_incref(metrics));
    if ((rc = tx_begin(s, TX_READ, err))) {
        json_decref(res);
        json_decref(metrics);
        return rc;
    }
    if (bad) rc = oom(err);
    else if ((rc = job_lookup(s, job, NULL, NULL, err)) == STORE_OK) {
        series_json c = {metrics, window.max_points, NULL, "value"};
        rc = metrics_each(s, job, name, &window, series_to_json, &c, err);
    }
    json_decref(metrics);
    return read_end(s, rc, res, out, err);
}

/* ------------------------------------------------------------ CSV */

typedef struct {
    store_sink sink;
    void *ctx;
    char buf[1 << 16];
    size_t len;
} csv_out;

static int csv_flush(csv_out *o, fisher_error *err) {
    if (o->len && o->sink(o->ctx, o->buf, o->len))
        return fail(err, STORE_ERROR, "the CSV's reader stopped taking it");
    o->len = 0;
    return STORE_OK;
}

static int csv_put(csv_out *o, const char *data, size_t len, fisher_error *err) {
    if (o->len + len > sizeof o->buf) {
        int rc = csv_flush(o, err);
        if (rc) return rc;
        if (len > sizeof o->buf) /* only a huge key: straight through */
            return o->sink(o->ctx, data, len) ? fail(err, STORE_ERROR, "the CSV's reader stopped taking it")
                                              : STORE_OK;
    }
    memcpy(o->buf + o->len, data, len);
    o->len += len;
    return STORE_OK;
}

/* A text field, quoted (RFC 4180) when it holds a comma, quote or newline. */
static int csv_text(csv_out *o, const char *t, fisher_error *err) {
    if (!strpbrk(t, ",\"\r\n")) return csv_put(o, t, strlen(t), err);
    int rc = csv_put(o, "\"", 1, err);
    for (const char *c = t; rc == STORE_OK && *c; c++)
        rc = *c == '"' ? csv_put(o, "\"\"", 2, err) : csv_put(o, c, 1, err);
    return rc ? rc : csv_put(o, "\"", 1, err);
}

static int drift_to_csv(void *ctx, const series *g, fisher_error *err) {
    csv_out *o = ctx;
    char line[128];
    int rc = STORE_OK;
    for (size_t i = 0; rc == STORE_OK && i < g->n; i++) {
        rc = csv_text(o, g->key, err);
        int k = snprintf(line, sizeof line, ",%d,%" PRId64 ",%.17g,%.17g\n", g->idx, g->step[i],
                         g->x[i], g->y[i]);
        if (rc == STORE_OK) rc = csv_put(o, line, (size_t)k, err);
    }
    return rc;
}

static int metric_to_csv(void *ctx, const series *g, fisher_error *err) {
    csv_out *o = ctx;
    char line[96];
    int rc = STORE_OK;
    for (size_t i = 0; rc == STORE_OK && i < g->n; i++) {
        rc = csv_text(o, g->key, err);
        int k = snprintf(line, sizeof line, ",%" PRId64 ",%.17g\n", g->step[i], g->y[i]);
        if (rc == STORE_OK) rc = csv_put(o, line, (size_t)k, err);
    }
    return rc;
}

/* The shared frame of the CSV readers: header, body in one read
 * transaction, flush. */
static int csv_read(store *s, int64_t job, const char *header, const store_window *w,
                    int (*body)(store *, int64_t, const void *, csv_out *, fisher_error *),
                    const void *arg, store_sink sink, void *ctx, fisher_error *err) {
    store_window all = *w;
    all.max_points = 0;
    int rc = window_check(&all, err);
    if (rc) return rc;
    csv_out *o = malloc(sizeof *o);
    if (!o) return oom(err);
    o->sink = sink, o->ctx = ctx, o->len = 0;
    if ((rc = tx_begin(s, TX_READ, err))) {
        free(o);
        return rc;
    }
    if ((rc = job_lookup(s, job, NULL, NULL, err)) == STORE_OK &&
        (rc = csv_put(o, header, strlen(header), err)) == STORE_OK &&
        (rc = body(s, job, arg, o, err)) == STORE_OK)
        rc = csv_flush(o, err);
    free(o);
    return tx_end(s, rc, err);
}

static int drift_csv_body(store *s, int64_t job, const void *arg, csv_out *o, fisher_error *err) {
    store_drift_query q = *(const store_drift_query *)arg;
    q.window.max_points = 0;
    return drift_each(s, job, &q, drift_to_csv, o, err);
}

int store_drift_csv(store *s, int64_t job, const store_drift_query *q, store_sink sink, void *ctx,
                    fisher_error *err) {
    return csv_read(s, job, "key,idx,step,js,js_ema\n", &q->window, drift_csv_body, q, sink, ctx, err);
}

typedef struct {
    const char *name;
    store_window window;
} metric_query;

static int metrics_csv_body(store *s, int64_t job, const void *arg, csv_out *o, fisher_error *err) {
    const metric_query *m = arg;
    return metrics_each(s, job, m->name, &m->window, metric_to_csv, o, err);
}

int store_metrics_csv(store *s, int64_t job, const char *name, store_window window,
                      store_sink sink, void *ctx, fisher_error *err) {
    metric_query m = {name, window};
    return csv_read(s, job, "name,step,value\n", &window, metrics_csv_body, &m, sink, ctx, err);
}

/* ------------------------------------------------------------ heatmap */

/* The job's measurement steps in the window (malloc'd). */
static int drift_steps(store *s, int64_t job, const store_window *w, int64_t **steps, size_t *n,
                       fisher_error *err) {
    sqlite3_stmt *st = stmt(s, SQL_DRIFT_STEPS, err);
    if (!st) return STORE_ERROR;
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_int64(st, 2, w->from);
    sqlite3_bind_int64(st, 3, w->to);
    int64_t *v = NULL;
    size_t count = 0, cap = 0;
    int src;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        if (count == cap) {
            int64_t *grown = realloc(v, (cap = cap ? 2 * cap : 1024) * sizeof *grown);
            if (!grown) {
                free(v);
                return oom(err);
            }
            v = grown;
        }
        v[count++] = sqlite3_column_int64(st, 0);
    }
    if (src != SQLITE_DONE) {
        free(v);
        return sql_fail(s, err, src, "reading measurement steps");
    }
    *steps = v, *n = count;
    return STORE_OK;
}

/* Fills grid (total × cols, NaN = none) with each chunk's largest js_ema
 * per column; column c holds the steps [first[c], first[c + 1]). One scan
 * of the job's drift rows in (block, step) order. */
static int heatmap_fill(store *s, int64_t job, const store_window *w, int64_t total,
                        const int64_t *first, size_t cols, double *grid, fisher_error *err) {
    sqlite3_stmt *st = stmt(s, SQL_DRIFT_ALL, err);
    if (!st) return STORE_ERROR;
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_int64(st, 2, w->from);
    sqlite3_bind_int64(st, 3, w->to);
    int64_t block = -1;
    size_t c = 0;
    int src;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t b = sqlite3_column_int64(st, 0), step = sqlite3_column_int64(st, 1);
        uint32_t mask = (uint32_t)sqlite3_column_int64(st, 2);
        const unsigned char *ema = sqlite3_column_blob(st, 3);
        size_t len = (size_t)sqlite3_column_bytes(st, 3);
        if (len != 8 * (size_t)__builtin_popcount(mask))
            return fail(err, STORE_ERROR, "%s: drift row (j_%" PRId64 ", block %" PRId64 ", step %"
                        PRId64 ") is corrupt", s->path, job, b, step);
        if (b != block) block = b, c = 0; /* steps ascend within a block */
        while (c + 1 < cols && first[c + 1] <= step) c++;
        for (int pos = 0; mask; mask &= mask - 1, pos++) {
            int64_t g = b * DRIFT_BLOCK + __builtin_ctz(mask);
            if (g >= total) break;
            double v = get_f64(ema + 8 * pos), *cell = &grid[(size_t)g * cols + c];
            if (isnan(*cell) || v > *cell) *cell = v;
        }
    }
    return src == SQLITE_DONE ? STORE_OK : sql_fail(s, err, src, "reading drift");
}

int store_drift_heatmap(store *s, int64_t job, store_window window, json_t **out,
                        fisher_error *err) {
    *out = NULL;
    int rc = window.from > window.to ? window_check(&window, err) : STORE_OK;
    if (rc) return rc;
    int64_t total, *steps = NULL, *first = NULL;
    size_t m = 0, cols = 0;
    double *grid = NULL;
    json_t *res = json_object(), *from = json_array(), *to = json_array(), *groups = json_array(),
           *values = json_array();
    int bad = jset(res, "job", json_id('j', job)) | jset(res, "step_from", json_incref(from)) |
              jset(res, "step_to", json_incref(to)) | jset(res, "groups", json_incref(groups)) |
              jset(res, "values", json_incref(values));
    if ((rc = tx_begin(s, TX_READ, err))) goto done;
    if (bad) {
        rc = oom(err);
        goto out;
    }
    if ((rc = job_lookup(s, job, &total, NULL, err)) || (rc = drift_steps(s, job, &window, &steps, &m, err)))
        goto out;
    /* equal-count buckets of measurement steps: column c = steps
     * [c·m/cols, (c+1)·m/cols) */
    cols = window.max_points && m > window.max_points ? window.max_points : m;
    first = malloc((cols ? cols : 1) * sizeof *first);
    size_t cells = (size_t)total * cols;
    grid = malloc((cells ? cells : 1) * sizeof *grid);
    if (!first || !grid) {
        rc = oom(err);
        goto out;
    }
    for (size_t c = 0; c < cols; c++) {
        first[c] = steps[c * m / cols];
        bad |= jpush(from, json_integer(first[c]));
        bad |= jpush(to, json_integer(steps[(c + 1) * m / cols - 1]));
    }
    for (size_t i = 0; i < cells; i++) grid[i] = NAN;
    if (cols && (rc = heatmap_fill(s, job, &window, total, first, cols, grid, err))) goto out;
    bad |= jset(res, "measurements", json_integer((json_int_t)m));
    sqlite3_stmt *st = stmt(s, SQL_GROUPS_BY_DEPTH, err);
    if (!st) {
        rc = STORE_ERROR;
        goto out;
    }
    sqlite3_bind_int64(st, 1, job);
    int src;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t idx = sqlite3_column_int64(st, 0);
        if (idx < 0 || idx >= total) continue;
        json_t *g = json_object(), *row = json_array();
        bad |= jset(g, "idx", json_integer(idx)) | jset(g, "key", col_text(st, 1)) |
               jset(g, "depth", col_int(st, 2)) | jset(g, "frozen_at", col_int(st, 3));
        bad |= jpush(groups, g);
        const double *cells = grid + (size_t)idx * cols;
        for (size_t c = 0; c < cols && !bad; c++) bad |= jpush(row, json_num(cells[c]));
        bad |= jpush(values, row);
        if (bad) break;
    }
    if (!bad && src != SQLITE_DONE) rc = sql_fail(s, err, src, "reading the chunk table");
    else if (bad) rc = oom(err);
out:
    rc = tx_end(s, rc, err);
done:
    free(steps);
    free(first);
    free(grid);
    json_decref(from);
    json_decref(to);
    json_decref(groups);
    json_decref(values);
    if (rc) json_decref(res);
    else *out = res;
    return rc;
}
