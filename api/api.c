/*
 * api.c — see api.h. One handler per route of DESIGN.md's table; each one
 * checks its input completely before it touches anything, answers with
 * the error shape on the first problem (naming the field or parameter),
 * and reads through a pooled read-only store connection.
 */
#include "api.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dataset.h"
#include "job.h"
#include "safetensors.h"
#include "segformer.h"
#include "log.h"
#include "routes.h"
#include "synth.h"
#include "version.h"

#define JOB_SPEC_MAX_BODY (256u << 10)

typedef struct reader {
    struct reader *next;
    store *db;
} reader;

/* Requests by method, route and status, for /metrics. */
typedef struct {
    char method[8], route[48];
    int status;
    uint64_t count;
} route_stat;

#define MAX_ROUTE_STATS 128
static const double LATENCY_S[] = {0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5};
#define N_LATENCY (sizeof LATENCY_S / sizeof *LATENCY_S)

/* The events a stream can carry, as bits of subscriber.kinds; the first
 * event of a stream (the "job" or "jobs" snapshot) always comes. */
enum {
    EV_STATUS = 1u << 0, EV_PROGRESS = 1u << 1, EV_DRIFT = 1u << 2, EV_FREEZE = 1u << 3,
    EV_EVAL = 1u << 4, EV_CHECKPOINT = 1u << 5, EV_GROUPS = 1u << 6,
    EV_ALL = (1u << 7) - 1,
};
static const char *const event_names[] = {"status", "progress", "drift", "freeze", "eval", "checkpoint",
                                          "groups"};
#define N_EVENT_NAMES (sizeof event_names / sizeof *event_names)

/* One remembered answer (see "read cache" below). */
typedef struct cached {
    struct cached *next;
    int64_t job;
    char *key, *body;
    size_t len;
    const char *content_type, *download;  /* static strings / into key */
} cached;

/* How many times a job has changed since the daemon started: a key for
 * answers that are only valid until the job's next record. */
typedef struct {
    int64_t job;
    uint64_t gen;
} job_gen;

#define CACHE_ENTRIES 256
#define CACHE_BYTES (64u << 20)

typedef struct subscriber {
    struct subscriber *next;
    int64_t job;
    unsigned kinds;                 /* EV_* it wants */
    http_sse *sse;
} subscriber;

struct api {
    serve_config cfg;
    char db_path[PATH_MAX];
    sched *sched;
    volatile int refusing;          /* the daemon is stopping: writes get 503 */
    double started_at;
    pthread_mutex_t readers_lock;
    reader *idle;                   /* read-only connections not in use */
    pthread_mutex_t subs_lock;      /* held while sending, so on_close can unlink safely */
    subscriber *subs;               /* job 0: every job */
    size_t n_subs;
    pthread_mutex_t stats_lock;     /* the counters /metrics reports */
    uint64_t steps, drift_values, freezes;
    route_stat routes[MAX_ROUTE_STATS];
    size_t n_routes;
    uint64_t latency[N_LATENCY + 1]; /* requests per bucket of LATENCY_S, then the rest */
    double latency_sum;
    uint64_t requests;
    pthread_mutex_t cache_lock;     /* remembered answers and job generations (read cache) */
    cached *cache;                  /* most recently used first */
    size_t cache_n, cache_bytes;
    job_gen *gens;                  /* per job: bumped by every record and status change */
    size_t n_gens, cap_gens;
};

api *api_create(const serve_config *cfg, const char *db_path) {
    api *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    a->cfg = *cfg;
    snprintf(a->db_path, sizeof a->db_path, "%s", db_path);
    a->started_at = store_now();
    pthread_mutex_init(&a->readers_lock, NULL);
    pthread_mutex_init(&a->subs_lock, NULL);
    pthread_mutex_init(&a->stats_lock, NULL);
    pthread_mutex_init(&a->cache_lock, NULL);
    return a;
}

void api_set_sched(api *a, sched *s) { a->sched = s; }

void api_stop_accepting(api *a) { a->refusing = 1; }

void api_free(api *a) {
    if (!a) return;
    for (reader *r = a->idle, *next; r; r = next) next = r->next, store_close(r->db), free(r);
    for (subscriber *s = a->subs, *next; s; s = next) next = s->next, free(s);
    pthread_mutex_destroy(&a->readers_lock);
    pthread_mutex_destroy(&a->subs_lock);
    pthread_mutex_destroy(&a->stats_lock);
    for (cached *c = a->cache, *next; c; c = next) next = c->next, free(c->key), free(c->body), free(c);
    free(a->gens);
    pthread_mutex_destroy(&a->cache_lock);
    free(a);
}

/* ------------------------------------------------------------ helpers */

/* ------------------------------------------------------------ read cache
 *
 * A job's record, drift, heatmap and metrics change only when the job
 * writes something (every committed record and status change bumps its
 * generation), and a finished job's never again until it is deleted. So
 * answers are kept — keyed by the route, the job's generation and the
 * query as sent — and served again without touching the store: a
 * dashboard's repeated reads of a 10k-point series cost a lookup and a
 * copy instead of 10k rows and 2000 printed numbers, and a job polled
 * while it trains is read once per step, not once per poll. Bounded by
 * CACHE_ENTRIES and CACHE_BYTES, least recently used out first (stale
 * generations age out that way). */

/* The job's generation (cache_lock held); 0 for a job that never changed here. */
static uint64_t gen_of(const api *a, int64_t job) {
    for (size_t i = 0; i < a->n_gens; i++)
        if (a->gens[i].job == job) return a->gens[i].gen;
    return 0;
}

static void gen_bump(api *a, int64_t job) {
    pthread_mutex_lock(&a->cache_lock);
    size_t i = 0;
    while (i < a->n_gens && a->gens[i].job != job) i++;
    if (i == a->n_gens && a->n_gens == a->cap_gens) {
        size_t cap = a->cap_gens ? 2 * a->cap_gens : 16;
        job_gen *g = realloc(a->gens, cap * sizeof *g);
        if (g) a->gens = g, a->cap_gens = cap;
    }
    if (i == a->n_gens && a->n_gens < a->cap_gens) a->gens[a->n_gens++] = (job_gen){job, 0};
    if (i < a->n_gens) a->gens[i].gen++;
    pthread_mutex_unlock(&a->cache_lock);
}

/* Forgets job: a delete. */
static void cache_drop_job(api *a, int64_t job) {
    pthread_mutex_lock(&a->cache_lock);
    for (cached **p = &a->cache; *p;) {
        cached *c = *p;
        if (c->job != job) {
            p = &c->next;
            continue;
        }
        *p = c->next;
        a->cache_n--, a->cache_bytes -= c->len;
        free(c->key), free(c->body), free(c);
    }
    pthread_mutex_unlock(&a->cache_lock);
}

typedef struct {
    char key[1024];                 /* "" when this read is not cacheable */
} cache_slot;

/* Answers from the cache when it can (returns 1). Otherwise returns 0 and
 * leaves in slot the key to cache_put the answer under. */
static int cache_get(http_request *req, api *a, int64_t job, const char *route, cache_slot *slot) {
    slot->key[0] = 0;
    pthread_mutex_lock(&a->cache_lock);
    uint64_t gen = gen_of(a, job); /* the answer holds until the job's next record */
    pthread_mutex_unlock(&a->cache_lock);
    size_t at = (size_t)snprintf(slot->key, sizeof slot->key, "%s/%lld@%llu?", route, (long long)job,
                                 (unsigned long long)gen);
    for (size_t i = 0; i < http_query_count(req) && at < sizeof slot->key; i++) {
        const char *name, *value;
        http_query_at(req, i, &name, &value);
        at += (size_t)snprintf(slot->key + at, sizeof slot->key - at, "%s=%s&", name, value ? value : "");
    }
    if (at >= sizeof slot->key) return slot->key[0] = 0, 0; /* too long to key: not cached */
    pthread_mutex_lock(&a->cache_lock);
    cached **p = &a->cache;
    while (*p && strcmp((*p)->key, slot->key)) p = &(*p)->next;
    cached *c = *p;
    char *copy = NULL;
    size_t len = 0;
    const char *type = NULL, *download = NULL;
    if (c) {
        *p = c->next, c->next = a->cache, a->cache = c; /* most recently used first */
        if ((copy = malloc(c->len + 1))) memcpy(copy, c->body, c->len), len = c->len;
        type = c->content_type, download = c->download;
    }
    char name[96] = "";
    if (download) snprintf(name, sizeof name, "%s", download);
    pthread_mutex_unlock(&a->cache_lock);
    if (!copy) return 0;
    if (name[0]) http_set_download_name(req, name);
    http_respond_buffer(req, 200, type, copy, len);
    return 1;
}

/* Remembers body (copied) under slot's key, if it has one. */
static void cache_put(api *a, int64_t job, const cache_slot *slot, const char *body, size_t len,
                      const char *content_type, const char *download) {
    if (!slot->key[0] || len > CACHE_BYTES / 4) return;
    cached *c = calloc(1, sizeof *c);
    size_t dl = download ? strlen(download) + 1 : 0, kl = strlen(slot->key) + 1;
    if (!c || !(c->key = malloc(kl + dl)) || !(c->body = malloc(len ? len : 1))) {
        if (c) free(c->key);
        free(c);
        return;
    }
    memcpy(c->key, slot->key, kl);
    if (download) memcpy(c->key + kl, download, dl), c->download = c->key + kl;
    memcpy(c->body, body, len);
    c->len = len, c->job = job, c->content_type = content_type;
    pthread_mutex_lock(&a->cache_lock);
    c->next = a->cache, a->cache = c;
    a->cache_n++, a->cache_bytes += len;
    while (a->cache_n > CACHE_ENTRIES || a->cache_bytes > CACHE_BYTES) { /* drop the least recently used */
        cached **p = &a->cache;
        while ((*p)->next) p = &(*p)->next;
        cached *old = *p;
        *p = NULL;
        a->cache_n--, a->cache_bytes -= old->len;
        free(old->key), free(old->body), free(old);
    }
    pthread_mutex_unlock(&a->cache_lock);
}

/* Responds with json (taken), remembering the text when slot says so. */
static int respond_json_cached(http_request *req, api *a, int64_t job, const cache_slot *slot, json_t *json) {
    char *text = json_dumps(json, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(json);
    if (!text) return -1;
    size_t len = strlen(text);
    char *body = realloc(text, len + 2);
    if (!body) return free(text), -1;
    body[len++] = '\n'; /* as http_respond_json writes it */
    cache_put(a, job, slot, body, len, "application/json", NULL);
    return http_respond_buffer(req, 200, "application/json", body, len);
}

/* A read-only connection from the pool (opened when none is idle). */
static store *reader_get(api *a, fisher_error *err) {
    pthread_mutex_lock(&a->readers_lock);
    reader *r = a->idle;
    if (r) a->idle = r->next;
    pthread_mutex_unlock(&a->readers_lock);
    if (r) {
        store *db = r->db;
        free(r);
        return db;
    }
    store *db;
    return store_open(a->db_path, STORE_READONLY, &db, err) ? NULL : db;
}

#define IDLE_READERS 4 /* more than this at rest are closed: each holds its own page cache */

static void reader_put(api *a, store *db) {
    reader *r = malloc(sizeof *r);
    if (!r) {
        store_close(db);
        return;
    }
    r->db = db;
    pthread_mutex_lock(&a->readers_lock);
    size_t idle = 0;
    for (reader *x = a->idle; x; x = x->next) idle++;
    int keep = idle < IDLE_READERS;
    if (keep) r->next = a->idle, a->idle = r;
    pthread_mutex_unlock(&a->readers_lock);
    if (!keep) store_close(db), free(r);
}

static unsigned status_of(int store_rc) {
    switch (store_rc) {
    case STORE_NOT_FOUND: return 404;
    case STORE_CONFLICT: return 409;
    case STORE_INVALID: return 400;
    case STORE_BUSY: return 503;
    default: return 500;
    }
}

static int respond_store_error(http_request *req, int rc, const fisher_error *err) {
    return http_respond_error(req, status_of(rc), NULL, NULL, "%s", err->msg);
}

static int listed(const char *const *list, const char *name) {
    for (const char *const *k = list; k && *k; k++)
        if (!strcmp(*k, name)) return 1;
    return 0;
}

static int is_read(const http_request *req) {
    return !strcmp(http_method(req), "GET") || !strcmp(http_method(req), "HEAD");
}

/* Refuses query parameters outside `allowed` (NULL-terminated), and a
 * second one of a name not in `repeatable` (NULL: none): a typo must not
 * silently become a default. A read also takes access_token, which http.c
 * reads as the bearer token. 0, or -1 after answering 400. */
static int only_params_of(http_request *req, const char *const *allowed, const char *const *repeatable) {
    for (size_t i = 0; i < http_query_count(req); i++) {
        const char *name, *value;
        http_query_at(req, i, &name, &value);
        int known = listed(allowed, name) || (is_read(req) && !strcmp(name, "access_token"));
        if (!known) {
            char list[256] = "";
            for (const char *const *k = allowed; *k; k++)
                snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", k == allowed ? "" : ", ", *k);
            http_respond_error(req, 400, "unknown_parameter", name, "unknown query parameter '%s' (known: %s)",
                               name, *allowed ? list : "none");
            return -1;
        }
        if (!listed(repeatable, name) && http_query_get(req, name, &value) == HTTP_QUERY_REPEATED) {
            http_respond_error(req, 400, "repeated_parameter", name, "query parameter '%s' is given more than once", name);
            return -1;
        }
        if (!value) {
            http_respond_error(req, 400, "invalid_parameter", name, "query parameter '%s' is not valid UTF-8 text", name);
            return -1;
        }
    }
    return 0;
}

static int only_params(http_request *req, const char *const *allowed) {
    return only_params_of(req, allowed, NULL);
}

/* The {id} of a job route: 0 and *id, or -1 after answering 404. */
static int job_id_param(http_request *req, int64_t *id) {
    const char *text = http_param(req, "id");
    if (text && !store_id_parse(text, 'j', id)) return 0;
    http_respond_error(req, 404, NULL, NULL, "no job '%s': job ids look like j_12", text ? text : "");
    return -1;
}

/* from/to/max_points into a window. 0, or -1 after answering 400. */
static int window_params(http_request *req, size_t dflt_points, store_window *w) {
    long long from, to, points;
    if (http_query_int(req, "from", 0, INT64_MAX, 0, &from) ||
        http_query_int(req, "to", 0, INT64_MAX, INT64_MAX, &to) ||
        http_query_int(req, "max_points", 0, 100000, (long long)dflt_points, &points))
        return -1;
    if (points == 1) {
        http_respond_error(req, 400, "invalid_parameter", "max_points",
                           "max_points must be 0 (every point) or at least 2 (the first and the last)");
        return -1;
    }
    if (from > to) {
        http_respond_error(req, 400, "invalid_parameter", "from", "from (%lld) is after to (%lld)", from, to);
        return -1;
    }
    *w = (store_window){from, to, (size_t)points};
    return 0;
}

/* "json" (default) or "csv": 0/1, or -1 after answering 400. */
static int format_param(http_request *req) {
    const char *f = http_query(req, "format");
    if (!f || !strcmp(f, "json")) return 0;
    if (!strcmp(f, "csv")) return 1;
    http_respond_error(req, 400, "invalid_parameter", "format", "format must be json or csv, got '%s'", f);
    return -1;
}

typedef struct {
    char *buf;
    size_t len, cap;
} text_buf;

static int text_sink(void *ctx, const char *data, size_t len) {
    text_buf *t = ctx;
    if (t->len + len + 1 > t->cap) {
        size_t cap = (t->cap ? t->cap : 4096);
        while (cap < t->len + len + 1) cap *= 2;
        char *b = realloc(t->buf, cap);
        if (!b) return -1;
        t->buf = b, t->cap = cap;
    }
    memcpy(t->buf + t->len, data, len);
    t->len += len;
    t->buf[t->len] = 0;
    return 0;
}

/* Job id as JSON, through a pooled reader: a STORE_* code with e. */
static int read_job_json(api *a, int64_t id, json_t **job, fisher_error *e) {
    store *db = reader_get(a, e);
    if (!db) return STORE_ERROR;
    int rc = store_job_get(db, id, job, e);
    reader_put(a, db);
    return rc;
}

/* ------------------------------------------------------------ health, metrics, openapi */

static int get_healthz(http_request *req, void *app, fisher_error *err) {
    (void)err;
    api *a = app;
    return http_respond_json(req, 200, json_pack("{s:s, s:s, s:f}", "status", a->refusing ? "stopping" : "ok",
                                                 "version", FISHERD_VERSION, "uptime_seconds",
                                                 store_now() - a->started_at));
}

static void appendf(text_buf *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void appendf(text_buf *t, const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n > 0) text_sink(t, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

static int get_metrics(http_request *req, void *app, fisher_error *err) {
    api *a = app;
    if (only_params(req, (const char *const[]){NULL})) return 0;
    store *db = reader_get(a, err);
    if (!db) return -1;
    json_t *counts;
    int rc = store_job_counts(db, &counts, err);
    reader_put(a, db);
    if (rc) return -1;
    text_buf t = {0};
    appendf(&t, "# HELP fisherd_jobs Jobs by status.\n# TYPE fisherd_jobs gauge\n");
    const char *status;
    json_t *n;
    json_object_foreach(counts, status, n)
        appendf(&t, "fisherd_jobs{status=\"%s\"} %lld\n", status, (long long)json_integer_value(n));
    json_decref(counts);
    appendf(&t, "# HELP fisherd_jobs_training Jobs training now.\n# TYPE fisherd_jobs_training gauge\n"
                "fisherd_jobs_training %d\n", a->sched ? sched_running(a->sched) : 0);
    appendf(&t, "# HELP fisherd_record_queue_bytes Records waiting for the store.\n"
                "# TYPE fisherd_record_queue_bytes gauge\nfisherd_record_queue_bytes %zu\n",
            a->sched ? sched_queued_bytes(a->sched) : 0);
    pthread_mutex_lock(&a->subs_lock);
    size_t subs = a->n_subs;
    pthread_mutex_unlock(&a->subs_lock);
    appendf(&t, "# HELP fisherd_event_streams Open event streams.\n# TYPE fisherd_event_streams gauge\n"
                "fisherd_event_streams %zu\n", subs);
    pthread_mutex_lock(&a->stats_lock);
    appendf(&t, "# HELP fisherd_training_steps_total Training steps done by every job (rate() = steps/s).\n"
                "# TYPE fisherd_training_steps_total counter\nfisherd_training_steps_total %llu\n",
            (unsigned long long)a->steps);
    appendf(&t, "# HELP fisherd_drift_values_total Drift measurements stored (one per group per measurement).\n"
                "# TYPE fisherd_drift_values_total counter\nfisherd_drift_values_total %llu\n",
            (unsigned long long)a->drift_values);
    appendf(&t, "# HELP fisherd_freeze_decisions_total Freeze decisions stored.\n"
                "# TYPE fisherd_freeze_decisions_total counter\nfisherd_freeze_decisions_total %llu\n",
            (unsigned long long)a->freezes);
    appendf(&t, "# HELP fisherd_http_requests_total HTTP requests by method, route and status.\n"
                "# TYPE fisherd_http_requests_total counter\n");
    for (size_t i = 0; i < a->n_routes; i++)
        appendf(&t, "fisherd_http_requests_total{method=\"%s\",route=\"%s\",status=\"%d\"} %llu\n",
                a->routes[i].method, a->routes[i].route, a->routes[i].status, (unsigned long long)a->routes[i].count);
    appendf(&t, "# HELP fisherd_http_request_seconds HTTP request latency.\n"
                "# TYPE fisherd_http_request_seconds histogram\n");
    uint64_t cum = 0;
    for (size_t i = 0; i < N_LATENCY; i++) {
        cum += a->latency[i];
        appendf(&t, "fisherd_http_request_seconds_bucket{le=\"%g\"} %llu\n", LATENCY_S[i], (unsigned long long)cum);
    }
    appendf(&t, "fisherd_http_request_seconds_bucket{le=\"+Inf\"} %llu\n"
                "fisherd_http_request_seconds_sum %.6f\nfisherd_http_request_seconds_count %llu\n",
            (unsigned long long)a->requests, a->latency_sum, (unsigned long long)a->requests);
    pthread_mutex_unlock(&a->stats_lock);
    if (!t.buf) return fisher_errorf(err, "out of memory");
    return http_respond_buffer(req, 200, "text/plain; version=0.0.4; charset=utf-8", t.buf, t.len);
}

static int get_openapi(http_request *req, void *app, fisher_error *err) {
    (void)app, (void)err;
    return http_respond_text(req, 200, "application/json", fisherd_openapi_json, strlen(fisherd_openapi_json));
}

/* ------------------------------------------------------------ submitting a job */

/* Whether path, symlinks resolved, is root or lies below it. */
static int under_root(const char *path, const char *root) {
    size_t rl = strlen(root);
    return !strncmp(path, root, rl) && (path[rl] == '/' || path[rl] == 0);
}

/* 1 with msg when what dataset folder `real` holds leads outside `root`:
 * its images/ or masks/, or a file in them, a symlink to elsewhere. The
 * job reads exactly these files (the library follows symlinks), so each
 * is resolved here. One realpath per file: the open at submit decodes
 * every file anyway. Dangling links are left for that open to name. */
static int escapes_root(const char *real, const char *root, const char *given, char *msg, size_t len) {
    for (int k = 0; k < 2; k++) {
        char sub[PATH_MAX + 16], file[2 * PATH_MAX], to[PATH_MAX];
        snprintf(sub, sizeof sub, "%s/%s", real, k ? "masks" : "images");
        if (!realpath(sub, to) || !under_root(to, root)) {
            snprintf(msg, len, "'%s': %s/ leads outside the data root %s", given, k ? "masks" : "images", root);
            return 1;
        }
        DIR *d = opendir(sub);
        for (struct dirent *e; d && (e = readdir(d));) {
            if (e->d_name[0] == '.') continue;
            snprintf(file, sizeof file, "%s/%s", sub, e->d_name);
            if (realpath(file, to) && !under_root(to, root)) {
                snprintf(msg, len, "'%s': %s/%s leads outside the data root %s", given, k ? "masks" : "images",
                         e->d_name, root);
                closedir(d);
                return 1;
            }
        }
        if (d) closedir(d);
    }
    return 0;
}

/* A dataset folder given in a spec, resolved under one of the data roots:
 * 0 and the real path in out, or -1 with why in msg. */
static int resolve_dataset(const api *a, const char *given, char *out, char *msg, size_t len) {
    if (!a->cfg.n_data_roots) {
        snprintf(msg, len, "folder datasets are disabled: the daemon has no --data-root (synthetic data works)");
        return -1;
    }
    for (int i = 0; i < a->cfg.n_data_roots; i++) {
        const char *root = a->cfg.data_roots[i];
        char candidate[PATH_MAX * 2], real[PATH_MAX];
        if (given[0] == '/') snprintf(candidate, sizeof candidate, "%s", given);
        else snprintf(candidate, sizeof candidate, "%s/%s", root, given);
        if (!realpath(candidate, real)) continue;
        size_t rl = strlen(root);
        /* confined: the root itself or below it, after every symlink is resolved */
        if (strncmp(real, root, rl) || (real[rl] != '/' && real[rl] != 0)) continue;
        char sub[PATH_MAX + 16];
        struct stat st;
        int ok = 1;
        for (int k = 0; k < 2 && ok; k++) {
            snprintf(sub, sizeof sub, "%s/%s", real, k ? "masks" : "images");
            ok = !stat(sub, &st) && S_ISDIR(st.st_mode);
        }
        if (!ok) {
            snprintf(msg, len, "'%s' is not a dataset: it needs images/ and masks/ folders", given);
            return -1;
        }
        if (escapes_root(real, root, given, msg, len)) return -1;
        snprintf(out, PATH_MAX, "%s", real);
        return 0;
    }
    snprintf(msg, len, "'%s' is not a folder under a data root (%s%s)", given, a->cfg.data_roots[0],
             a->cfg.n_data_roots > 1 ? ", …" : "");
    return -1;
}

/* Replaces the "path" of one dataset object by its resolved path. */
static int fix_dataset(http_request *req, const api *a, json_t *ds, const char *field) {
    json_t *p = json_is_object(ds) ? json_object_get(ds, "path") : NULL;
    if (!json_is_string(p)) return 0; /* not a folder: the spec parser checks the rest */
    char real[PATH_MAX], msg[PATH_MAX + 200], f[96];
    snprintf(f, sizeof f, "%s.path", field);
    if (resolve_dataset(a, json_string_value(p), real, msg, sizeof msg)) {
        http_respond_error(req, 400, "invalid_spec", f, "%s: %s", f, msg);
        return -1;
    }
    json_object_set_new(ds, "path", json_string(real));
    return 0;
}

/* base_model as the API takes it: a registered model "m_3", {"job": "j_2"}
 * (that job's output, waited for), or an architecture (random init).
 * Rewrites spec for the library's parser; *wait and base_text say what was
 * asked. 0, or -1 after answering. */
static int fix_base_model(http_request *req, api *a, json_t *spec, int64_t *wait, char *base_text,
                          size_t len, fisher_error *err) {
    json_t *bm = json_object_get(spec, "base_model");
    if (!bm) {
        snprintf(base_text, len, "segformer tiny (random init)");
        return 0;
    }
    if (json_is_string(bm)) {
        int64_t mid;
        if (store_id_parse(json_string_value(bm), 'm', &mid)) {
            http_respond_error(req, 400, "invalid_spec", "base_model",
                               "base_model: '%s' is not a model id (m_3), a job ({\"job\": \"j_2\"}) or an "
                               "architecture ({\"arch\": \"segformer\", \"config\": \"tiny\"})", json_string_value(bm));
            return -1;
        }
        store *db = reader_get(a, err);
        if (!db) return -2;
        json_t *model;
        fisher_error e = {{0}};
        int rc = store_model_get(db, mid, &model, &e);
        reader_put(a, db);
        if (rc == STORE_NOT_FOUND) {
            http_respond_error(req, 400, "invalid_spec", "base_model",
                               "base_model: there is no model %s (GET /api/v1/models lists them)", json_string_value(bm));
            return -1;
        }
        if (rc) return *err = e, -2;
        snprintf(base_text, len, "%s", json_string_value(bm));
        json_object_set_new(spec, "base_model", json_pack("{s:O}", "path", json_object_get(model, "path")));
        json_decref(model);
        return 0;
    }
    if (json_is_object(bm) && json_object_get(bm, "path")) {
        http_respond_error(req, 400, "invalid_spec", "base_model.path",
                           "base_model.path: server paths are not accepted; register the weights "
                           "(POST /api/v1/models) and give their id, e.g. \"m_3\"");
        return -1;
    }
    json_t *job = json_is_object(bm) ? json_object_get(bm, "job") : NULL;
    if (job) {
        int64_t jid;
        if (json_object_size(bm) != 1 || !json_is_string(job) || store_id_parse(json_string_value(job), 'j', &jid)) {
            http_respond_error(req, 400, "invalid_spec", "base_model.job",
                               "base_model.job must be a job id like \"j_2\", alone in base_model");
            return -1;
        }
        json_t *other;
        fisher_error e = {{0}};
        int rc = read_job_json(a, jid, &other, &e);
        if (rc == STORE_NOT_FOUND) {
            http_respond_error(req, 400, "invalid_spec", "base_model.job", "base_model.job: there is no job %s",
                               json_string_value(job));
            return -1;
        }
        if (rc) return *err = e, -2;
        const char *st = json_string_value(json_object_get(other, "status"));
        int bad = st && (!strcmp(st, "failed") || !strcmp(st, "cancelled"));
        json_decref(other);
        if (bad) {
            http_respond_error(req, 400, "invalid_spec", "base_model.job",
                               "base_model.job: %s %s, so it has no model to start from", json_string_value(job), st);
            return -1;
        }
        *wait = jid;
        snprintf(base_text, len, "{\"job\":\"%s\"}", json_string_value(job));
        json_object_del(spec, "base_model"); /* the weights file, found at start, brings the config */
        return 0;
    }
    char *t = json_dumps(bm, JSON_COMPACT);
    snprintf(base_text, len, "%s", t ? t : "");
    free(t);
    return 0;
}

/* Opens every folder dataset of a parsed spec as the job will, so that a
 * truncated image, a missing or mis-sized mask or a label-index mask is a
 * 400 naming the file, with nothing stored, rather than a job that fails
 * when it starts. Opening decodes every pair once (dataset.h) and keeps
 * nothing (no cache): the price is one pass over the files per submit.
 * -1 after answering 400. */
static int check_folders(http_request *req, const fisher_job_spec *js) {
    for (int i = -2; i < js->n_zero_shot; i++) {
        const fisher_data_spec *d = i == -2 ? &js->train : i == -1 ? &js->val : &js->zero_shot[i];
        if (d->synthetic || !d->path[0]) continue;
        char f[64];
        if (i < 0) snprintf(f, sizeof f, "data.%s.path", i == -2 ? "train" : "val");
        else snprintf(f, sizeof f, "data.zero_shot[%d].path", i);
        fisher_error e = {{0}};
        fisher_dataset *ds = fisher_dataset_open_folder(d->path, js->image_size, js->image_size, &js->norm, 0, &e);
        if (!ds) {
            http_respond_error(req, 400, "invalid_dataset", f, "%s: %s", f, e.msg);
            return -1;
        }
        fisher_dataset_close(ds);
    }
    return 0;
}

/* A distributed spec against what this daemon can run: the hostfile a
 * regular file in --hostfile-dir after every symlink is resolved (the
 * parser already refused names with a '/'), and an mpirun to launch the
 * ranks with. Refused at submit (400, naming the field), so the job does
 * not wait in the queue only to fail at its start. -1 after answering. */
static int check_distributed(http_request *req, const api *a, const fisher_job_spec *js) {
    if (js->hostfile[0]) {
        const char *dir = a->cfg.hostfile_dir;
        if (!dir[0])
            return http_respond_error(req, 400, "invalid_spec", "distributed.hostfile",
                                      "distributed.hostfile: this daemon has no --hostfile-dir, so its distributed "
                                      "jobs run on this machine only; leave hostfile empty (\"\")"), -1;
        char path[PATH_MAX + 80], real[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, js->hostfile);
        struct stat st;
        size_t dl = strlen(dir);
        const char *why = !realpath(path, real)                       ? "there is no such file in"
                          : strncmp(real, dir, dl) || real[dl] != '/' ? "it leads outside"
                          : stat(real, &st) || !S_ISREG(st.st_mode)   ? "it is not a regular file in"
                                                                      : NULL;
        if (why)
            return http_respond_error(req, 400, "invalid_spec", "distributed.hostfile",
                                      "distributed.hostfile: '%s': %s the hostfile folder %s", js->hostfile, why,
                                      dir), -1;
    }
    char launcher[PATH_MAX];
    if (js->ranks > 1 && serve_find_program(a->cfg.mpirun, launcher, sizeof launcher))
        return http_respond_error(req, 400, "invalid_spec", "distributed.ranks",
                                  "distributed.ranks: this daemon cannot run distributed jobs: mpirun '%s' is not "
                                  "installed (openmpi-bin; or the daemon's --mpirun); ranks 1 runs here",
                                  a->cfg.mpirun), -1;
    return 0;
}

static int post_job(http_request *req, void *app, fisher_error *err) {
    api *a = app;
    if (a->refusing) return http_respond_error(req, 503, NULL, NULL, "the daemon is stopping; submit again once it is back");
    if (only_params(req, (const char *const[]){NULL})) return 0;
    json_t *body = http_body_json(req);
    if (!body) return 0;
    int rc = 0;
    json_t *spec = NULL;
    char *text = NULL, *norm = NULL;
    if (!json_is_object(body)) {
        rc = http_respond_error(req, 400, "invalid_spec", NULL, "the body must be a JSON object: a job spec");
        goto out;
    }
    spec = json_deep_copy(body);
    int64_t wait = 0;
    char base_text[256];
    int r = fix_base_model(req, a, spec, &wait, base_text, sizeof base_text, err);
    if (r == -2) rc = -1;
    if (r) goto out;
    json_t *data = json_object_get(spec, "data");
    if (json_is_object(data)) {
        if (fix_dataset(req, a, json_object_get(data, "train"), "data.train") ||
            fix_dataset(req, a, json_object_get(data, "val"), "data.val"))
            goto out;
        json_t *zs = json_object_get(data, "zero_shot"), *d;
        size_t i;
        if (json_is_array(zs)) json_array_foreach(zs, i, d) {
                char f[64];
                snprintf(f, sizeof f, "data.zero_shot[%zu]", i);
                if (fix_dataset(req, a, d, f)) goto out;
            }
    }
    text = json_dumps(spec, JSON_COMPACT);
    fisher_job_spec js;
    fisher_job_spec_defaults(&js);
    char field[128] = "";
    fisher_error e = {{0}};
    if (!text) {
        rc = fisher_errorf(err, "out of memory");
        goto out;
    }
    if (fisher_job_spec_parse(&js, text, field, sizeof field, &e)) {
        rc = http_respond_error(req, 400, "invalid_spec", field[0] ? field : NULL, "%s", e.msg);
        goto out;
    }
    if (check_folders(req, &js) || check_distributed(req, a, &js)) goto out;
    if (!(norm = fisher_job_spec_to_json(&js))) {
        rc = fisher_errorf(err, "out of memory");
        goto out;
    }
    sched_job job = {js.name, norm, base_text, wait};
    int64_t id;
    int src = sched_submit(a->sched, &job, &id, &e);
    if (src) {
        rc = respond_store_error(req, src, &e);
        goto out;
    }
    json_t *created;
    if (read_job_json(a, id, &created, err)) {
        rc = -1;
        goto out;
    }
    char location[64];
    snprintf(location, sizeof location, "/api/v1/jobs/j_%lld", (long long)id);
    http_add_header(req, "Location", location);
    rc = http_respond_json(req, 201, created);
out:
    json_decref(body);
    json_decref(spec);
    free(text), free(norm);
    return rc;
}

/* ------------------------------------------------------------ reading jobs */

static int get_jobs(http_request *req, void *app, fisher_error *err) {
    api *a = app;
    if (only_params(req, (const char *const[]){"status", "name", "limit", "cursor", NULL})) return 0;
    long long limit;
    if (http_query_int(req, "limit", 1, 1000, 50, &limit)) return 0;
    store_job_filter f = {http_query(req, "status"), http_query(req, "name"), http_query(req, "cursor"), (size_t)limit};
    store *db = reader_get(a, err);
    if (!db) return -1;
    json_t *out;
    fisher_error e = {{0}};
    int rc = store_jobs_list(db, &f, &out, &e);
    reader_put(a, db);
    if (rc == STORE_INVALID) {
        const char *field = f.cursor && strstr(e.msg, "cursor") ? "cursor" : f.status && strstr(e.msg, "status") ? "status" : NULL;
        return http_respond_error(req, 400, "invalid_parameter", field, "%s", e.msg);
    }
    if (rc) return respond_store_error(req, rc, &e);
    return http_respond_json(req, 200, out);
}

/* The common shape of the per-job reads: id, then one store call. */
typedef int (*job_read_fn)(http_request *req, store *db, int64_t id, json_t **out, fisher_error *e);

static int job_read(http_request *req, api *a, const char *const *params, job_read_fn fn, fisher_error *err) {
    int64_t id;
    if (job_id_param(req, &id) || only_params(req, params)) return 0;
    store *db = reader_get(a, err);
    if (!db) return -1;
    json_t *out = NULL;
    fisher_error e = {{0}};
    int rc = fn(req, db, id, &out, &e);
    reader_put(a, db);
    if (rc == 1) return 0; /* fn answered itself */
    if (rc) return respond_store_error(req, rc, &e);
    return http_respond_json(req, 200, out);
}

static int get_job(http_request *req, void *app, fisher_error *err) {
    api *a = app;
    int64_t id;
    if (job_id_param(req, &id) || only_params(req, (const char *const[]){NULL})) return 0;
    cache_slot slot;
    if (cache_get(req, a, id, "job", &slot)) return 0;
    json_t *job;
    fisher_error e = {{0}};
    int rc = read_job_json(a, id, &job, &e);
    if (rc) return respond_store_error(req, rc, &e);
    (void)err;
    return respond_json_cached(req, a, id, &slot, job);
}

static int read_groups(http_request *req, store *db, int64_t id, json_t **out, fisher_error *e) {
    (void)req;
    return store_groups(db, id, out, e);
}

static int get_groups(http_request *req, void *app, fisher_error *err) {
    return job_read(req, app, (const char *const[]){NULL}, read_groups, err);
}

static int read_freezes(http_request *req, store *db, int64_t id, json_t **out, fisher_error *e) {
    (void)req;
    return store_freezes(db, id, out, e);
}

static int get_freezes(http_request *req, void *app, fisher_error *err) {
    return job_read(req, app, (const char *const[]){NULL}, read_freezes, err);
}

static int json_sink(const char *data, size_t len, void *ctx) {
    return text_sink(ctx, data, len);
}

/* The heatmap's cells are floats of a colour scale: the default 4
 * significant digits (?precision=, 1..17; 17 reads back exactly) make the
 * reply of a 716-group × 1000-column map 4.8 MB instead of 12.6 MB and
 * take it from ~195 to ~150 ms here (2 cores): jansson's number printing
 * is most of the time, the store's read ~55 ms. */
#define HEATMAP_PRECISION 4

static int get_heatmap(http_request *req, void *app, fisher_error *err) {
    api *a = app;
    int64_t id;
    if (job_id_param(req, &id) ||
        only_params(req, (const char *const[]){"from", "to", "max_points", "precision", NULL}))
        return 0;
    store_window w;
    long long precision;
    if (window_params(req, 1000, &w) ||
        http_query_int(req, "precision", 1, 17, HEATMAP_PRECISION, &precision))
        return 0;
    cache_slot slot;
    if (cache_get(req, a, id, "heatmap", &slot)) return 0;
    store *db = reader_get(a, err);
    if (!db) return -1;
    json_t *out;
    fisher_error e = {{0}};
    int rc = store_drift_heatmap(db, id, w, &out, &e);
    reader_put(a, db);
    if (rc) return respond_store_error(req, rc, &e);
    /* only the cells are reals (steps, depths and indices are integers) */
    text_buf t = {0};
    int bad = json_dump_callback(out, json_sink, &t, JSON_COMPACT | JSON_REAL_PRECISION((int)precision)) ||
              text_sink(&t, "\n", 1);
    json_decref(out);
    if (bad) {
        free(t.buf);
        return fisher_errorf(err, "out of memory writing the heatmap");
    }
    cache_put(a, id, &slot, t.buf, t.len, "application/json", NULL);
    return http_respond_buffer(req, 200, "application/json", t.buf, t.len);
}

#define MAX_PREFIXES 64
static const char *const layer_classes[] = {"linear", "conv", "batchnorm", "layernorm", NULL};

/* "1,5,9" into a malloc'd array of indices. 0; -1 after answering 400;
 * -2 when out of memory. */
static int parse_indices(http_request *req, const char *name, const char *text, int64_t **out, size_t *n) {
    size_t count = 1;
    for (const char *c = text; *c; c++) count += *c == ',';
    int64_t *v = malloc(count * sizeof *v);
    if (!v) return -2;
    size_t k = 0;
    for (const char *c = text;; c++) {
        const char *start = c;
        int64_t x = 0;
        while (*c >= '0' && *c <= '9' && x <= INT32_MAX) x = 10 * x + (*c++ - '0');
        if (c == start || x > INT32_MAX || (*c && *c != ',')) {
            const char *end = strchr(start, ',');
            http_respond_error(req, 400, "invalid_parameter", name,
                               "%s must be chunk indices separated by commas, e.g. %s=1,5,9; '%.*s' is not one",
                               name, name, (int)(end ? (size_t)(end - start) : strlen(start)), start);
            free(v);
            return -1;
        }
        v[k++] = x;
        if (!*c) break;
    }
    *out = v, *n = k;
    return 0;
}

/* drift and metrics: JSON (downsampled) or CSV (every point). Drift
 * filters combine (AND): prefix (repeatable: any of them), layer_class,
 * groups (indices); group names one chunk and stands alone. */
static int get_drift(http_request *req, void *app, fisher_error *err) {
    api *a = app;
    int64_t id;
    if (job_id_param(req, &id) ||
        only_params_of(req,
                       (const char *const[]){"group", "prefix", "layer_class", "groups", "from", "to",
                                             "max_points", "format", NULL},
                       (const char *const[]){"prefix", NULL}))
        return 0;
    store_drift_query q = {.key = http_query(req, "group"), .window = STORE_WINDOW_ALL,
                           .layer_class = http_query(req, "layer_class")};
    const char *prefixes[MAX_PREFIXES];
    for (size_t i = 0; i < http_query_count(req); i++) {
        const char *name, *value;
        http_query_at(req, i, &name, &value);
        if (strcmp(name, "prefix")) continue;
        if (q.n_prefixes == MAX_PREFIXES)
            return http_respond_error(req, 400, "invalid_parameter", "prefix",
                                      "at most %d prefix parameters in one request", MAX_PREFIXES);
        prefixes[q.n_prefixes++] = value;
    }
    q.prefixes = prefixes;
    if (q.layer_class && !listed(layer_classes, q.layer_class))
        return http_respond_error(req, 400, "invalid_parameter", "layer_class",
                                  "layer_class must be linear, conv, batchnorm or layernorm, got '%s'", q.layer_class);
    const char *groups = http_query(req, "groups");
    const char *with = q.n_prefixes ? "prefix" : q.layer_class ? "layer_class" : groups ? "groups" : NULL;
    if (q.key && with)
        return http_respond_error(req, 400, "invalid_parameter", with,
                                  "group names one chunk: give it alone, or select with prefix, layer_class "
                                  "and groups (which combine)");
    int csv = format_param(req);
    if (csv < 0 || window_params(req, 1000, &q.window)) return 0;
    int64_t *idx = NULL;
    int parsed = groups ? parse_indices(req, "groups", groups, &idx, &q.n_idx) : 0;
    if (parsed) return parsed == -2 ? fisher_errorf(err, "out of memory reading groups") : 0;
    q.idx = idx;
    cache_slot slot;
    if (cache_get(req, a, id, "drift", &slot)) return free(idx), 0;
    store *db = reader_get(a, err);
    if (!db) return free(idx), -1;
    fisher_error e = {{0}};
    int rc;
    json_t *out = NULL;
    text_buf t = {0};
    if (csv) rc = store_drift_csv(db, id, &q, text_sink, &t, &e);
    else rc = store_drift(db, id, &q, &out, &e);
    reader_put(a, db);
    free(idx);
    if (rc) {
        free(t.buf);
        if (rc == STORE_INVALID && q.n_idx && strstr(e.msg, "chunk index"))
            return http_respond_error(req, 400, "invalid_parameter", "groups", "%s", e.msg);
        return respond_store_error(req, rc, &e);
    }
    if (!csv) return respond_json_cached(req, a, id, &slot, out);
    char name[64];
    snprintf(name, sizeof name, "j_%lld-drift.csv", (long long)id);
    http_set_download_name(req, name);
    cache_put(a, id, &slot, t.buf, t.len, "text/csv; charset=utf-8", name);
    return http_respond_buffer(req, 200, "text/csv; charset=utf-8", t.buf, t.len);
}

static int get_metrics_series(http_request *req, void *app, fisher_error *err) {
    api *a = app;
    int64_t id;
    if (job_id_param(req, &id) ||
        only_params(req, (const char *const[]){"name", "from", "to", "max_points", "format", NULL}))
        return 0;
    store_window w;
    int csv = format_param(req);
    if (csv < 0 || window_params(req, 1000, &w)) return 0;
    const char *name = http_query(req, "name");
    cache_slot slot;
    if (cache_get(req, a, id, "metrics", &slot)) return 0;
    store *db = reader_get(a, err);
    if (!db) return -1;
    fisher_error e = {{0}};
    int rc;
    if (csv) {
        text_buf t = {0};
        rc = store_metrics_csv(db, id, name, w, text_sink, &t, &e);
        reader_put(a, db);
        if (rc) return free(t.buf), respond_store_error(req, rc, &e);
        char fname[64];
        snprintf(fname, sizeof fname, "j_%lld-metrics.csv", (long long)id);
        http_set_download_name(req, fname);
        cache_put(a, id, &slot, t.buf, t.len, "text/csv; charset=utf-8", fname);
        return http_respond_buffer(req, 200, "text/csv; charset=utf-8", t.buf, t.len);
    }
    json_t *out;
    rc = store_metrics(db, id, name, w, &out, &e);
    reader_put(a, db);
    if (rc) return respond_store_error(req, rc, &e);
    return respond_json_cached(req, a, id, &slot, out);
}

static int get_model_of_job(http_request *req, void *app, fisher_error *err) {
    (void)err;
    api *a = app;
    int64_t id;
    if (job_id_param(req, &id) || only_params(req, (const char *const[]){NULL})) return 0;
    json_t *job;
    fisher_error e = {{0}};
    int rc = read_job_json(a, id, &job, &e);
    if (rc) return respond_store_error(req, rc, &e);
    const char *st = json_string_value(json_object_get(job, "status"));
    const char *dir = json_string_value(json_object_get(job, "out_dir"));
    if (!st || strcmp(st, "succeeded") || !dir) {
        rc = http_respond_error(req, 409, NULL, NULL, "job j_%lld is %s: a model exists once it has succeeded",
                                (long long)id, st ? st : "unknown");
        json_decref(job);
        return rc;
    }
    char path[PATH_MAX + 32], name[64];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    json_decref(job);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return http_respond_error(req, 404, NULL, NULL, "the model of job j_%lld is gone from disk", (long long)id);
    snprintf(name, sizeof name, "j_%lld.safetensors", (long long)id);
    return http_respond_file(req, fd, "application/octet-stream", name);
}

/* ------------------------------------------------------------ changing jobs */

static int post_cancel(http_request *req, void *app, fisher_error *err) {
    (void)err;
    api *a = app;
    int64_t id;
    if (job_id_param(req, &id) || only_params(req, (const char *const[]){NULL})) return 0;
    fisher_error e = {{0}};
    int rc = sched_cancel(a->sched, id, &e);
    if (rc) return respond_store_error(req, rc, &e);
    json_t *job;
    if (read_job_json(a, id, &job, err)) return -1;
    return http_respond_json(req, 202, job);
}

static int delete_job(http_request *req, void *app, fisher_error *err) {
    (void)err;
    api *a = app;
    int64_t id;
    if (job_id_param(req, &id) || only_params(req, (const char *const[]){NULL})) return 0;
    if (a->refusing) return http_respond_error(req, 503, NULL, NULL, "the daemon is stopping");
    fisher_error e = {{0}};
    int rc = sched_delete(a->sched, id, &e);
    if (rc) return respond_store_error(req, rc, &e);
    cache_drop_job(a, id);
    return http_respond_json(req, 200, json_pack("{s:s, s:b}", "id", http_param(req, "id"), "deleted", 1));
}

/* ------------------------------------------------------------ models, datasets */

static int get_models(http_request *req, void *app, fisher_error *err) {
    api *a = app;
    if (only_params(req, (const char *const[]){"limit", "cursor", NULL})) return 0;
    long long limit;
    if (http_query_int(req, "limit", 1, 1000, 50, &limit)) return 0;
    store *db = reader_get(a, err);
    if (!db) return -1;
    json_t *out;
    fisher_error e = {{0}};
    int rc = store_models_list(db, http_query(req, "cursor"), (size_t)limit, &out, &e);
    reader_put(a, db);
    if (rc) return respond_store_error(req, rc, &e);
    return http_respond_json(req, 200, out);
}

static int get_model(http_request *req, void *app, fisher_error *err) {
    api *a = app;
    int64_t id;
    const char *text = http_param(req, "id");
    if (!text || store_id_parse(text, 'm', &id))
        return http_respond_error(req, 404, NULL, NULL, "no model '%s': model ids look like m_3", text ? text : "");
    if (only_params(req, (const char *const[]){NULL})) return 0;
    store *db = reader_get(a, err);
    if (!db) return -1;
    json_t *out;
    fisher_error e = {{0}};
    int rc = store_model_get(db, id, &out, &e);
    reader_put(a, db);
    if (rc) return respond_store_error(req, rc, &e);
    return http_respond_json(req, 200, out);
}

#define MODEL_MAX_BODY (512u << 20)

/* An upload: the body is the safetensors file itself. It is written under
 * <data-dir>/models, loaded as fisherd would load a base model (header,
 * every tensor's name, dtype and shape against the architecture in its
 * metadata), and registered only if that succeeds; otherwise removed. */
/* 1 with what and where in msg when a weight or buffer of m is NaN or
 * infinite: such a file loads, but any job started from it fails at its
 * first step with a loss that says nothing of the cause. */
static int nonfinite_weight(fisher_segformer *m, char *msg, size_t len) {
    for (int k = 0; k < 2; k++) {
        const fisher_tensor_table *t = k ? fisher_segformer_buffers(m) : fisher_segformer_params(m);
        const float *x = k ? fisher_segformer_buffer_data(m) : fisher_segformer_param_data(m);
        for (int i = 0; t && x && i < t->count; i++)
            for (size_t j = 0; j < t->tensors[i].numel; j++)
                if (!isfinite(x[t->tensors[i].offset + j])) {
                    snprintf(msg, len, "tensor %s holds %g at element %zu", t->tensors[i].name,
                             (double)x[t->tensors[i].offset + j], j);
                    return 1;
                }
    }
    return 0;
}

static int post_model(http_request *req, void *app, fisher_error *err) {
    api *a = app;
    if (a->refusing) return http_respond_error(req, 503, NULL, NULL, "the daemon is stopping");
    if (only_params(req, (const char *const[]){"name", NULL})) return 0;
    const char *ct = http_content_type(req);
    if (!ct || strncmp(ct, "application/octet-stream", 24))
        return http_respond_error(req, 415, NULL, NULL,
                                  "send the safetensors file as the body with Content-Type: application/octet-stream");
    size_t len;
    const char *body = http_body(req, &len);
    if (!len) return http_respond_error(req, 400, "invalid_model", NULL, "the body is empty: send a safetensors file");
    const char *name = http_query(req, "name");
    if (!name) name = "upload";
    if (!*name || strlen(name) > 120)
        return http_respond_error(req, 400, "invalid_parameter", "name", "name must be 1 to 120 characters");
    char dir[PATH_MAX + 16], path[PATH_MAX + 64];
    snprintf(dir, sizeof dir, "%s/models", a->cfg.data_dir);
    if (mkdir(dir, 0755) && errno != EEXIST) return fisher_errorf(err, "cannot create %s: %s", dir, strerror(errno));
    snprintf(path, sizeof path, "%s/upload-XXXXXX.safetensors", dir);
    int fd = mkstemps(path, 12);
    if (fd < 0) return fisher_errorf(err, "cannot create a file in %s: %s", dir, strerror(errno));
    size_t done = 0;
    while (done < len) {
        ssize_t w = write(fd, body + done, len - done);
        if (w <= 0) {
            close(fd), unlink(path);
            return fisher_errorf(err, "cannot write %s: %s", path, strerror(errno));
        }
        done += (size_t)w;
    }
    if (fsync(fd) || close(fd)) {
        unlink(path);
        return fisher_errorf(err, "cannot write %s", path);
    }
    fisher_error e = {{0}};
    fisher_segformer *m = fisher_model_load(path, NULL, NULL, NULL, &e);
    if (!m) {
        unlink(path);
        /* the message names the temp file; what matters is what is wrong with the upload */
        const char *why = strstr(e.msg, ".safetensors: ");
        return http_respond_error(req, 400, "invalid_model", NULL, "not a model fisherd can load: %s",
                                  why ? why + 14 : e.msg);
    }
    char bad[FISHER_NAME_MAX + 96];
    if (nonfinite_weight(m, bad, sizeof bad)) {
        fisher_segformer_free(m);
        unlink(path);
        return http_respond_error(req, 400, "invalid_model", NULL, "not a model fisherd can load: %s", bad);
    }
    int64_t params = (int64_t)fisher_segformer_params(m)->total;
    fisher_segformer_free(m);
    fisher_safetensors *st = fisher_safetensors_open(path, NULL);
    char *config = st && fisher_safetensors_metadata(st, "config") ? strdup(fisher_safetensors_metadata(st, "config")) : NULL;
    fisher_safetensors_close(st);
    int64_t id;
    int rc = sched_register_model(a->sched, name, path, config, params, (int64_t)len, &id, &e);
    free(config);
    if (rc) {
        unlink(path);
        return respond_store_error(req, rc, &e);
    }
    store *db = reader_get(a, err);
    json_t *model = NULL;
    if (!db || store_model_get(db, id, &model, err)) {
        if (db) reader_put(a, db);
        return -1;
    }
    reader_put(a, db);
    char location[64];
    snprintf(location, sizeof location, "/api/v1/models/m_%lld", (long long)id);
    http_add_header(req, "Location", location);
    return http_respond_json(req, 201, model);
}

static int is_dataset(const char *dir) {
    char sub[PATH_MAX + 16];
    struct stat st;
    for (int k = 0; k < 2; k++) {
        snprintf(sub, sizeof sub, "%s/%s", dir, k ? "masks" : "images");
        if (stat(sub, &st) || !S_ISDIR(st.st_mode)) return 0;
    }
    return 1;
}

/* Dataset folders at most `depth` levels below dir (rel: the path so far). */
static void list_datasets(json_t *out, const char *root, const char *dir, const char *rel, int depth) {
    if (is_dataset(dir)) {
        json_array_append_new(out, json_pack("{s:s, s:s}", "root", root, "path", rel[0] ? rel : "."));
        return;
    }
    if (!depth) return;
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char sub[PATH_MAX], subrel[PATH_MAX];
        snprintf(sub, sizeof sub, "%.2000s/%.1000s", dir, e->d_name);
        snprintf(subrel, sizeof subrel, "%.2000s%s%.1000s", rel, rel[0] ? "/" : "", e->d_name);
        struct stat st;
        if (!stat(sub, &st) && S_ISDIR(st.st_mode)) list_datasets(out, root, sub, subrel, depth - 1);
    }
    closedir(d);
}

static int get_datasets(http_request *req, void *app, fisher_error *err) {
    (void)err;
    api *a = app;
    if (only_params(req, (const char *const[]){NULL})) return 0;
    json_t *syn = json_array(), *folders = json_array();
    for (int i = 0; i < FISHER_SYNTH_DOMAINS; i++)
        json_array_append_new(syn, json_pack("{s:s}", "domain", fisher_synth_domain_name((fisher_synth_domain)i)));
    for (int i = 0; i < a->cfg.n_data_roots; i++)
        list_datasets(folders, a->cfg.data_roots[i], a->cfg.data_roots[i], "", 2);
    return http_respond_json(req, 200, json_pack("{s:o, s:o}", "synthetic", syn, "folders", folders));
}

/* ------------------------------------------------------------ live events */

static void unsubscribe(http_sse *sse, void *ctx) {
    api *a = ctx;
    pthread_mutex_lock(&a->subs_lock);
    for (subscriber **p = &a->subs; *p; p = &(*p)->next)
        if ((*p)->sse == sse) {
            subscriber *gone = *p;
            *p = gone->next;
            free(gone);
            a->n_subs--;
            break;
        }
    pthread_mutex_unlock(&a->subs_lock);
}

/* Turns the response into an event stream of job (0: every job) carrying
 * the events in kinds (EV_*), whose first event is `snapshot` (taken:
 * decref'd here); with close_after the stream ends after it. Subscribed
 * before the snapshot goes out, so no record can fall between the two. */
static int subscribe(http_request *req, api *a, int64_t job, unsigned kinds, const char *event,
                     json_t *snapshot, int close_after, fisher_error *err) {
    char *text = json_dumps(snapshot, JSON_COMPACT);
    json_decref(snapshot);
    subscriber *sub = calloc(1, sizeof *sub);
    http_sse *sse = text && sub ? http_respond_sse(req, unsubscribe, a) : NULL;
    if (!sse) {
        free(text), free(sub);
        return fisher_errorf(err, "cannot open the event stream: out of memory");
    }
    pthread_mutex_lock(&a->subs_lock);
    sub->job = job, sub->kinds = kinds, sub->sse = sse, sub->next = a->subs, a->subs = sub, a->n_subs++;
    http_sse_send(sse, event, text, NULL);
    if (close_after) http_sse_close(sse);
    pthread_mutex_unlock(&a->subs_lock);
    free(text);
    if (job && !close_after) {
        /* The job may have ended between the snapshot and the subscription,
         * and its last status event with it: look again, and end the stream
         * the way that event would have. */
        json_t *now = NULL;
        store_job_status st;
        if (!read_job_json(a, job, &now, NULL) &&
            !store_job_status_parse(json_string_value(json_object_get(now, "status")), &st) &&
            (store_job_status_terminal(st) || st == STORE_JOB_INTERRUPTED)) {
            json_t *ev = json_pack("{s:O, s:O, s:O}", "job", json_object_get(now, "id"), "status",
                                   json_object_get(now, "status"), "reason", json_object_get(now, "reason"));
            char *data = ev ? json_dumps(ev, JSON_COMPACT) : NULL;
            json_decref(ev);
            pthread_mutex_lock(&a->subs_lock);
            for (subscriber *s = a->subs; s; s = s->next) /* still subscribed: sse is alive */
                if (s == sub) {
                    if (data) http_sse_send(sse, "status", data, NULL);
                    http_sse_close(sse);
                    break;
                }
            pthread_mutex_unlock(&a->subs_lock);
            free(data);
        }
        json_decref(now);
    }
    return 0;
}

static int get_events(http_request *req, void *app, fisher_error *err) {
    api *a = app;
    int64_t id;
    if (job_id_param(req, &id) || only_params(req, (const char *const[]){NULL})) return 0;
    json_t *job;
    fisher_error e = {{0}};
    int rc = read_job_json(a, id, &job, &e);
    if (rc) return respond_store_error(req, rc, &e);
    json_object_del(job, "spec");
    store_job_status st;
    /* a finished job has nothing more to say: its stream ends after the snapshot */
    int terminal = !store_job_status_parse(json_string_value(json_object_get(job, "status")), &st) &&
                   store_job_status_terminal(st);
    return subscribe(req, a, id, EV_ALL, "job", job, terminal, err);
}

/* kinds=status,progress into EV_* bits (absent: every kind). 0, or -1
 * after answering 400. */
static int kinds_param(http_request *req, unsigned *kinds) {
    const char *text = http_query(req, "kinds");
    *kinds = text ? 0 : EV_ALL;
    for (const char *c = text; c;) {
        const char *end = strchr(c, ',');
        size_t len = end ? (size_t)(end - c) : strlen(c);
        unsigned bit = 0;
        for (size_t i = 0; i < N_EVENT_NAMES && !bit; i++)
            if (strlen(event_names[i]) == len && !strncmp(event_names[i], c, len)) bit = 1u << i;
        if (!bit) {
            http_respond_error(req, 400, "invalid_parameter", "kinds",
                               "kinds must be event names separated by commas (status, progress, drift, "
                               "freeze, eval, checkpoint, groups); '%.*s' is not one",
                               (int)(len < 60 ? len : 60), c);
            return -1;
        }
        *kinds |= bit;
        c = end ? end + 1 : NULL;
    }
    return 0;
}

/* Every job's events (those of ?kinds=, else all); first a "jobs" event
 * with the newest jobs as they are now, so a client that connects late
 * starts from the current state. Without drift, a stream carries a few
 * small events per training step: light enough for a jobs list. */
static int get_all_events(http_request *req, void *app, fisher_error *err) {
    api *a = app;
    unsigned kinds;
    if (only_params(req, (const char *const[]){"kinds", NULL}) || kinds_param(req, &kinds)) return 0;
    store *db = reader_get(a, err);
    if (!db) return -1;
    json_t *jobs;
    store_job_filter f = {.limit = 100};
    int rc = store_jobs_list(db, &f, &jobs, err);
    reader_put(a, db);
    if (rc) return -1;
    return subscribe(req, a, 0, kinds, "jobs", jobs, 0, err);
}

/* One record as an SSE event (name, JSON data); NULL when it has none. */
static json_t *record_event(const store_record *r, const char **name) {
    switch (r->kind) {
    case STORE_REC_PROGRESS:
        *name = "progress";
        return json_pack("{s:I, s:I, s:f, s:I, s:I, s:o}", "step", (json_int_t)r->progress.step, "steps",
                         (json_int_t)r->progress.steps, "loss", r->progress.loss, "params_live",
                         (json_int_t)r->progress.params_live, "chunks_live", (json_int_t)r->progress.chunks_live,
                         "params_total", r->progress.params_total > 0 ? json_integer(r->progress.params_total)
                                                                      : json_null());
    case STORE_REC_DRIFT: {
        *name = "drift";
        json_t *idx = json_array(), *js = json_array(), *ema = json_array();
        for (size_t i = 0; i < r->drift.n; i++) {
            json_array_append_new(idx, json_integer(r->drift.idx[i]));
            json_array_append_new(js, json_real(r->drift.js[i]));
            json_array_append_new(ema, json_real(r->drift.js_ema[i]));
        }
        return json_pack("{s:I, s:o, s:o, s:o}", "step", (json_int_t)r->drift.step, "idx", idx, "js", js,
                         "js_ema", ema);
    }
    case STORE_REC_FREEZE: {
        *name = "freeze";
        json_t *frozen = json_array();
        for (size_t i = 0; i < r->freeze.n_frozen; i++) json_array_append_new(frozen, json_integer(r->freeze.frozen[i]));
        return json_pack("{s:I, s:s, s:s, s:f, s:f, s:f, s:f, s:o, s:I, s:I}", "step", (json_int_t)r->freeze.step,
                         "kind", r->freeze.zero_fisher ? "zero_fisher" : "drift", "metric", r->freeze.metric,
                         "mean", r->freeze.mean, "std", r->freeze.std, "lambda", r->freeze.lambda, "threshold",
                         r->freeze.threshold, "frozen", frozen, "chunks_live", (json_int_t)r->freeze.chunks_live,
                         "params_live", (json_int_t)r->freeze.params_live);
    }
    case STORE_REC_EVAL:
        *name = "eval";
        return json_pack("{s:I, s:s, s:b, s:f, s:f, s:f}", "step", (json_int_t)r->eval.step, "dataset",
                         r->eval.dataset, "final", r->eval.final, "loss", r->eval.loss, "iou", r->eval.iou, "f1",
                         r->eval.f1);
    case STORE_REC_CHECKPOINT:
        *name = "checkpoint";
        return json_pack("{s:I}", "step", (json_int_t)r->checkpoint.step);
    case STORE_REC_GROUPS:
        *name = "groups";
        return json_pack("{s:I}", "n", (json_int_t)r->groups.n);
    default:
        return NULL;
    }
}

/* The EV_* bit of the event a record becomes; 0: none. */
static unsigned record_kind_bit(store_record_kind kind) {
    switch (kind) {
    case STORE_REC_PROGRESS: return EV_PROGRESS;
    case STORE_REC_DRIFT: return EV_DRIFT;
    case STORE_REC_FREEZE: return EV_FREEZE;
    case STORE_REC_EVAL: return EV_EVAL;
    case STORE_REC_CHECKPOINT: return EV_CHECKPOINT;
    case STORE_REC_GROUPS: return EV_GROUPS;
    default: return 0;
    }
}

static int wants(const subscriber *s, int64_t job, unsigned bit) {
    return (!s->job || s->job == job) && (s->kinds & bit);
}

void api_on_records(void *ctx, const store_record *recs, size_t n) {
    api *a = ctx;
    for (size_t i = 0; i < n; i++)
        if (!i || recs[i].job != recs[i - 1].job) gen_bump(a, recs[i].job);
    pthread_mutex_lock(&a->stats_lock);
    for (size_t i = 0; i < n; i++) {
        a->steps += recs[i].kind == STORE_REC_PROGRESS;
        a->drift_values += recs[i].kind == STORE_REC_DRIFT ? recs[i].drift.n : 0;
        a->freezes += recs[i].kind == STORE_REC_FREEZE;
    }
    pthread_mutex_unlock(&a->stats_lock);
    pthread_mutex_lock(&a->subs_lock);
    for (size_t i = 0; i < n && a->subs; i++) {
        /* an event nobody wants is not even built (a drift record is ~700 values) */
        unsigned bit = record_kind_bit(recs[i].kind);
        int any = 0;
        for (subscriber *s = a->subs; s && !any; s = s->next) any = wants(s, recs[i].job, bit);
        if (!any) continue;
        const char *name;
        json_t *ev = record_event(&recs[i], &name);
        char job[32];
        snprintf(job, sizeof job, "j_%lld", (long long)recs[i].job);
        if (ev) json_object_set_new(ev, "job", json_string(job));
        char *data = ev ? json_dumps(ev, JSON_COMPACT | JSON_REAL_PRECISION(10)) : NULL;
        json_decref(ev);
        if (data)
            for (subscriber *s = a->subs; s; s = s->next)
                if (wants(s, recs[i].job, bit)) http_sse_send(s->sse, name, data, NULL);
        free(data);
    }
    pthread_mutex_unlock(&a->subs_lock);
}

void api_on_status(void *ctx, int64_t job, store_job_status status, const char *reason) {
    api *a = ctx;
    gen_bump(a, job);
    char id[32];
    snprintf(id, sizeof id, "j_%lld", (long long)job);
    json_t *ev = json_pack("{s:s, s:s, s:s?}", "job", id, "status", store_job_status_name(status), "reason", reason);
    char *data = ev ? json_dumps(ev, JSON_COMPACT) : NULL;
    json_decref(ev);
    pthread_mutex_lock(&a->subs_lock);
    for (subscriber *s = a->subs; s; s = s->next)
        if (!s->job || s->job == job) {
            if (data && (s->kinds & EV_STATUS)) http_sse_send(s->sse, "status", data, NULL);
            /* a job's own stream stops when the job ends; the all-jobs stream goes on */
            if (s->job && (store_job_status_terminal(status) || status == STORE_JOB_INTERRUPTED))
                http_sse_close(s->sse);
        }
    pthread_mutex_unlock(&a->subs_lock);
    free(data);
}

/* ------------------------------------------------------------ the table */


#define ROUTE(method, pattern, handler, flags, body_limit) {method, pattern, handler, flags, body_limit},
static const http_route routes[] = {API_ROUTES(ROUTE)};
#undef ROUTE

/* The route a path belongs to, for /metrics: ids become {id}, so the
 * label set stays small whatever clients ask for; the dashboard's files
 * are one route, "static". */
static void route_of(const char *path, char *out, size_t len) {
    if (strncmp(path, "/api/", 5) && strcmp(path, "/healthz") && strcmp(path, "/metrics")) {
        snprintf(out, len, "static");
        return;
    }
    size_t o = 0;
    for (const char *p = path; *p && o + 1 < len;) {
        const char *end = strchr(p + 1, '/');
        size_t seg = end ? (size_t)(end - p) : strlen(p);
        int id = seg > 3 && (p[1] == 'j' || p[1] == 'm') && p[2] == '_';
        for (size_t i = 3; id && i < seg; i++) id = p[i] >= '0' && p[i] <= '9';
        int n = id ? snprintf(out + o, len - o, "/{id}") : snprintf(out + o, len - o, "%.*s", (int)seg, p);
        o += n > 0 ? (size_t)n : 0;
        p += seg;
    }
    out[o < len ? o : len - 1] = 0;
}

static void access_log(void *ctx, const char *method, const char *path, int status, uint64_t bytes,
                       double ms) {
    api *a = ctx;
    log_msg(status >= 500 ? LOG_WARN : LOG_DEBUG, 0, "%s %s %d %llu bytes %.1f ms", method, path, status,
            (unsigned long long)bytes, ms);
    char route[48];
    route_of(path, route, sizeof route);
    pthread_mutex_lock(&a->stats_lock);
    size_t i = 0;
    while (i < a->n_routes && (a->routes[i].status != status || strcmp(a->routes[i].route, route) ||
                               strcmp(a->routes[i].method, method)))
        i++;
    if (i == a->n_routes && i < MAX_ROUTE_STATS) {
        snprintf(a->routes[i].method, sizeof a->routes[i].method, "%s", method);
        snprintf(a->routes[i].route, sizeof a->routes[i].route, "%s", route);
        a->routes[i].status = status, a->n_routes++;
    }
    if (i < a->n_routes) a->routes[i].count++;
    size_t b = 0;
    while (b < N_LATENCY && ms / 1000 > LATENCY_S[b]) b++;
    a->latency[b]++, a->latency_sum += ms / 1000, a->requests++;
    pthread_mutex_unlock(&a->stats_lock);
}

static void error_log(void *ctx, const char *msg) {
    (void)ctx;
    log_msg(LOG_ERROR, 0, "http: %s", msg);
}

int api_serve(api *a, http_server **out, fisher_error *err) {
    struct stat st;
    const char *web = !stat(a->cfg.web_root, &st) && S_ISDIR(st.st_mode) ? a->cfg.web_root : NULL;
    if (!web) log_msg(LOG_WARN, 0, "no dashboard: --web-root %s is not a folder", a->cfg.web_root);
    /* nice 15: a request's thread weighs ~1/30 of a training thread, so
     * readers take what training leaves (make bench, serve_bench.py) */
    http_config hc = {.nice = 15, .listen = a->cfg.listen, .token = a->cfg.token[0] ? a->cfg.token : NULL,
                      .auth_reads = a->cfg.auth_reads, .static_root = web, .access_log = access_log,
                      .timeout_s = (unsigned)a->cfg.http_timeout,
                      .error_log = error_log, .log_ctx = a};
    return http_server_start(&hc, routes, sizeof routes / sizeof *routes, a, out, err);
}
