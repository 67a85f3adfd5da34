-- 0001_init.sql — fisherd's first schema: jobs and everything a job
-- produces (its chunk table, every drift measurement and freeze decision,
-- metric series, evaluations), and registered models. Applied by store.c
-- inside one transaction; the last statement sets PRAGMA user_version.
--
-- Conventions
--   * Times are unix seconds as REAL; steps are training steps (0-based for
--     drift and freezes, as FISHERADAPTUNE.md counts them; 1-based "steps
--     done" for progress, as the library reports them).
--   * Every table is STRICT: a value of the wrong type is refused, not
--     coerced.
--   * SQLite stores a NaN bound as REAL as NULL, so every measured number
--     is nullable: NULL reads back as "not a number" (a diverged loss must
--     not make a whole batch fail).
--   * Every row of a job references jobs(id) ON DELETE CASCADE, so
--     `DELETE FROM jobs WHERE id = ?` removes the job's whole history in
--     the one statement (each child table's key starts with job_id, so each
--     cascade is one range delete). Models outlive the job that made them.
--   * WITHOUT ROWID where rows are small and always read by their key
--     (SQLite advises rows under ~1/20 of a page there: interior pages of
--     such a table hold whole rows).
--
-- jobs — one row per submitted job, shown as "j_<id>".
--   id is AUTOINCREMENT so an id is never reused after a delete: URLs,
--   dashboards and logs that name j_12 keep meaning one job. spec is the
--   normalised spec (every field explicit); base_model is what the user
--   gave ("m_3", {"job": "j_2"}, or an architecture). wait_for_job is the
--   job whose output model this one needs (NULL once that job is deleted;
--   base_model still says what was asked). reason says why a queued job
--   waits or why a job failed.
--   Invariants (enforced by CHECKs, and by store_job_set_status):
--     1. finished_at IS NOT NULL  <=>  status is terminal
--        (succeeded | failed | cancelled);
--     2. status = 'running'  =>  started_at IS NOT NULL;
--     3. the newest job_events row of a job has the job's status.
--   progress columns (step, steps, loss, params_*, chunks_*) hold the
--   latest report; their history is in metrics.
--
-- job_events — every status change: (job, time, status, reason), in order
--   of id.
--
-- groups — the job's chunk table (FISHERADAPTUNE.md §2), written once when
--   training starts: idx is the chunk's index in the library's table; key
--   (unique per job) is what the API shows; [start, end) along axis
--   (0 = rows, 1 = columns) of tensor; depth orders layers by their place
--   in the forward pass. frozen_at is the step it froze, NULL while live.
--
-- drift_steps — one row per measurement step of a job: which steps exist
--   (the heatmap's columns) and how many chunks were measured.
--
-- drift — every drift measurement, never sampled. The values of one
--   measurement step are stored in rows of 32 consecutive chunks:
--     gblock = idx / 32, bit b of mask set  <=>  chunk 32·gblock + b was
--     measured at step; js and js_ema are the measured chunks' values in
--     bit order, float64 little-endian, 8·popcount(mask) bytes each.
--   Why not one row per (chunk, step): a job with 700 chunks writes 700
--   values per measurement, and a row per value clustered by chunk dirties
--   700 b-tree pages per commit (~2.8 MB of WAL for 11 KB of data, 7.4 ms
--   per measurement) while a heatmap must step through 2.1 M rows (210 ms
--   before any JSON). Rows of 32 dirty ~22 pages per measurement (0.44 ms),
--   keep one chunk's series a range scan of the key (job_id, gblock, step),
--   and make the all-chunks scan 32× shorter (heatmap 41 ms with its JSON);
--   tests/bench/bench_store.c --baseline measures both.
--
-- freezes — every freeze decision (§5): kind 'zero_fisher' (step 0, chunks
--   with an all-zero Fisher; no statistics) or 'drift' (metric, mean, std,
--   lambda, threshold of the scores); n_frozen chunks frozen, chunks and
--   parameters still live after it; frozen = JSON array of their idx.
--
-- metrics — scalar series by name: "loss", "params_live" (every progress
--   report), "val_loss", "val_iou", "val_f1", "val_accuracy",
--   "val_precision", "val_recall" (every validation).
--
-- evals — evaluations kept as results rather than series: zero-shot sets
--   and the final evaluation (dataset "val" at the last step).
--
-- models — registered weights, shown as "m_<id>" (AUTOINCREMENT, as jobs);
--   job_id is the job that produced it, NULL for uploads or once that job
--   is deleted.

PRAGMA application_id = 1179210568;  -- 'FISH': marks the file as fisherd's

CREATE TABLE jobs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT NOT NULL,
    spec            TEXT NOT NULL CONSTRAINT spec_is_json CHECK (json_valid(spec)),
    status          TEXT NOT NULL CONSTRAINT status_known CHECK (status IN
                        ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted')),
    reason          TEXT,
    base_model      TEXT,
    wait_for_job    INTEGER REFERENCES jobs(id) ON DELETE SET NULL,
    created_at      REAL NOT NULL,
    started_at      REAL,
    finished_at     REAL,
    step            INTEGER NOT NULL DEFAULT 0,
    steps           INTEGER NOT NULL DEFAULT 0,
    loss            REAL,
    params_total    INTEGER,
    params_live     INTEGER,
    chunks_total    INTEGER NOT NULL DEFAULT 0,
    chunks_live     INTEGER,
    checkpoint_path TEXT,
    checkpoint_step INTEGER,
    out_dir         TEXT,
    result          TEXT CONSTRAINT result_is_json CHECK (result IS NULL OR json_valid(result)),
    CONSTRAINT finished_iff_terminal CHECK
        ((finished_at IS NOT NULL) = (status IN ('succeeded', 'failed', 'cancelled'))),
    CONSTRAINT running_has_started CHECK (status <> 'running' OR started_at IS NOT NULL)
) STRICT;
-- the status filter of the job list (walked newest first) and /metrics counts
CREATE INDEX jobs_by_status ON jobs(status, id);
-- the ON DELETE SET NULL of wait_for_job looks waiters up by it
CREATE INDEX jobs_by_wait ON jobs(wait_for_job) WHERE wait_for_job IS NOT NULL;

CREATE TABLE job_events (
    id      INTEGER PRIMARY KEY,
    job_id  INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    at      REAL NOT NULL,
    status  TEXT NOT NULL CHECK (status IN
                ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted')),
    reason  TEXT
) STRICT;
CREATE INDEX job_events_by_job ON job_events(job_id, id);

-- A rowid table: keys and tensor names make rows of ~250 bytes, too wide
-- for WITHOUT ROWID; the primary key is its own index.
CREATE TABLE groups (
    job_id      INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL CHECK (idx >= 0),
    key         TEXT NOT NULL,
    tensor      TEXT NOT NULL,
    layer       TEXT NOT NULL,
    layer_class TEXT NOT NULL,
    depth       INTEGER NOT NULL,
    axis        INTEGER NOT NULL CHECK (axis IN (0, 1)),
    start       INTEGER NOT NULL,
    "end"       INTEGER NOT NULL,
    size        INTEGER NOT NULL CHECK (size >= 0),
    frozen_at   INTEGER,
    PRIMARY KEY (job_id, idx),
    UNIQUE (job_id, key)
) STRICT;

CREATE TABLE drift_steps (
    job_id  INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    step    INTEGER NOT NULL,
    n       INTEGER NOT NULL CHECK (n >= 0),
    PRIMARY KEY (job_id, step)
) STRICT, WITHOUT ROWID;

-- Rows of up to 32 values × 2 × 8 bytes (~540 bytes): above SQLite's
-- WITHOUT ROWID guideline, but measured faster than a rowid table plus an
-- index (no second lookup per row) and 3.5× smaller than rows of 64.
CREATE TABLE drift (
    job_id  INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    gblock  INTEGER NOT NULL CHECK (gblock >= 0),
    step    INTEGER NOT NULL,
    mask    INTEGER NOT NULL CHECK (mask > 0 AND mask <= 4294967295),
    js      BLOB NOT NULL,
    js_ema  BLOB NOT NULL CHECK (length(js_ema) = length(js) AND length(js) % 8 = 0),
    PRIMARY KEY (job_id, gblock, step)
) STRICT, WITHOUT ROWID;

-- A rowid table: the frozen list makes rows up to a few KB.
CREATE TABLE freezes (
    job_id      INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    step        INTEGER NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('zero_fisher', 'drift')),
    metric      TEXT,
    mean        REAL,
    std         REAL,
    lambda      REAL,
    threshold   REAL,
    n_frozen    INTEGER NOT NULL CHECK (n_frozen >= 0),
    chunks_live INTEGER NOT NULL,
    params_live INTEGER NOT NULL,
    frozen      TEXT NOT NULL CHECK (json_valid(frozen) AND json_type(frozen) = 'array'),
    PRIMARY KEY (job_id, step)
) STRICT;

CREATE TABLE metrics (
    job_id  INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    name    TEXT NOT NULL,
    step    INTEGER NOT NULL,
    value   REAL,
    PRIMARY KEY (job_id, name, step)
) STRICT, WITHOUT ROWID;

CREATE TABLE evals (
    job_id    INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    dataset   TEXT NOT NULL,
    step      INTEGER NOT NULL,
    loss      REAL,
    iou       REAL,
    f1        REAL,
    accuracy  REAL,
    precision REAL,
    recall    REAL,
    PRIMARY KEY (job_id, dataset, step)
) STRICT, WITHOUT ROWID;

CREATE TABLE models (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL,
    path        TEXT NOT NULL,
    config      TEXT,
    parameters  INTEGER,
    bytes       INTEGER,
    job_id      INTEGER REFERENCES jobs(id) ON DELETE SET NULL,
    created_at  REAL NOT NULL
) STRICT;
CREATE INDEX models_by_job ON models(job_id) WHERE job_id IS NOT NULL;

PRAGMA user_version = 1;
