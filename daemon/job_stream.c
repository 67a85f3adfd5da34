/*
 * job_stream.c — see job_stream.h. Both ends of the stream a distributed
 * job's rank 0 reports on: the writer turns fisher_job_callbacks into JSON
 * lines on its stdout and listens on its stdin for the daemon's "ack" and
 * "cancel"; the reader, on the daemon's worker thread, turns the lines back
 * into the very callback calls a local run makes.
 *
 * Reals are written by jansson with 17 significant digits (json_real's
 * default precision), which strtod reads back to the same double, so a
 * value crosses the stream bit for bit (-0.0 and subnormals included). JSON
 * has no NaN or infinity: a non-finite real goes as null and comes back as
 * NAN (an infinity therefore arrives as NaN; a training run whose numbers
 * are infinite has failed anyway, and the daemon stores NaN and ∞ alike as
 * NULL). Neither end ever aborts: a broken pipe is an error code (SIGPIPE
 * is held back around every write, since the daemon does not ignore it), a
 * malformed line is -1 with its line number, and no length is trusted
 * beyond what was read.
 */
#include "job_stream.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* A groups record of mit-b2 is a few hundred KB; anything near this is
 * not a record but a stream that is not ours. */
#define MAX_LINE (64u << 20)
/* More chunks than any model has (mit-b2: a few thousand); bounds what a
 * "method" record can make the reader allocate. */
#define MAX_CHUNKS (1u << 22)

/* ------------------------------------------------------------ bytes */

/* All n bytes to fd, with SIGPIPE held back in this thread: a reader that
 * went away is EPIPE here, not the death of the process. A SIGPIPE this
 * write raised is taken off the thread's pending set before the mask is
 * restored. 0, or -1 (errno set). */
static int write_all(int fd, const char *p, size_t n) {
    sigset_t pipe_set, old;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    int rc = 0, saved = 0;
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) { /* a non-blocking fd: wait until it drains */
                struct pollfd pfd = {.fd = fd, .events = POLLOUT};
                poll(&pfd, 1, 100);
                continue;
            }
            rc = -1, saved = errno;
            break;
        }
        p += k, n -= (size_t)k;
    }
    if (rc && saved == EPIPE && !sigismember(&old, SIGPIPE)) {
        struct timespec now = {0, 0};
        while (sigtimedwait(&pipe_set, NULL, &now) < 0 && errno == EINTR) {
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = saved;
    return rc;
}

/* A growing buffer of what was read, cut into lines. */
typedef struct {
    char *buf;
    size_t len, cap;
    size_t scanned;   /* bytes before this hold no '\n' (a long line is not scanned again) */
} line_buf;

/* Reads what fd has into b. Returns bytes read, 0 at end of stream, -1
 * on error (errno), -2 when a line outgrows MAX_LINE. */
static ssize_t line_buf_fill(line_buf *b, int fd) {
    if (b->cap - b->len < 65536) {
        if (b->len > MAX_LINE) return -2;
        size_t cap = b->cap ? b->cap * 2 : 131072;
        char *p = realloc(b->buf, cap);
        if (!p) {
            errno = ENOMEM;
            return -1;
        }
        b->buf = p, b->cap = cap;
    }
    for (;;) {
        ssize_t k = read(fd, b->buf + b->len, b->cap - b->len);
        if (k < 0 && errno == EINTR) continue;
        if (k > 0) b->len += (size_t)k;
        return k;
    }
}

/* The next whole line (its '\n' replaced by '\0', its length in *n), or
 * NULL when none is complete. Lines taken are dropped by line_buf_compact. */
static char *line_buf_next(line_buf *b, size_t *start, size_t *n) {
    size_t from = b->scanned > *start ? b->scanned : *start;
    char *nl = memchr(b->buf + from, '\n', b->len - from);
    if (!nl) {
        b->scanned = b->len;
        return NULL;
    }
    char *line = b->buf + *start;
    *n = (size_t)(nl - line);
    *nl = '\0';
    *start = (size_t)(nl - b->buf) + 1;
    return line;
}

static void line_buf_compact(line_buf *b, size_t start) {
    memmove(b->buf, b->buf + start, b->len - start);
    b->len -= start;
    b->scanned = b->scanned > start ? b->scanned - start : 0;
}

/* ------------------------------------------------------------ JSON helpers */

static json_t *real(double x) {
    return isfinite(x) ? json_real(x) : json_null();
}

/* A string as JSON even when it is not UTF-8 (a path, a log line quoting
 * one): invalid bytes become '?', rather than the record being lost. */
static json_t *text(const char *s) {
    if (!s) s = "";
    json_t *j = json_string(s);
    if (j) return j;
    char *copy = strdup(s);
    if (!copy) return NULL;
    fisher_utf8_sanitize(copy);
    j = json_string(copy);
    free(copy);
    return j;
}

static json_t *eval_json(const fisher_job_eval *e) {
    return json_pack("{s:I,s:o,s:o,s:o,s:o,s:o,s:o,s:o}", "step", (json_int_t)e->step, "dataset",
                     text(e->dataset), "loss", real(e->loss), "accuracy", real(e->metrics.accuracy),
                     "precision", real(e->metrics.precision), "recall", real(e->metrics.recall), "f1",
                     real(e->metrics.f1), "iou", real(e->metrics.iou));
}

/* ------------------------------------------------------------ the writer */

struct job_stream_writer {
    int out_fd, in_fd;
    int wake[2];               /* free() wakes the listening thread through it */
    pthread_t listener;
    pthread_mutex_t write_lock; /* one record at a time on out_fd */
    pthread_mutex_t lock;      /* the fields below */
    pthread_cond_t changed;
    int64_t acks;              /* "ack" lines received and not yet consumed */
    int in_ended;              /* in_fd ended or failed: no ack will come */
    int broken;                /* a write to out_fd failed */
    volatile int cancel;
};

static void set_cancel(job_stream_writer *w) {
    __atomic_store_n(&w->cancel, 1, __ATOMIC_RELEASE);
}

/* The daemon's side of the conversation: "ack" and "cancel" lines, until
 * in_fd ends (then cancel, and release a checkpoint waiting for its ack:
 * the daemon is gone, nobody will answer) or free() rings. */
static void *listen_main(void *arg) {
    job_stream_writer *w = arg;
    line_buf b = {0};
    for (;;) {
        struct pollfd pfd[2] = {{.fd = w->in_fd, .events = POLLIN}, {.fd = w->wake[0], .events = POLLIN}};
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (pfd[1].revents) goto out; /* free(): not an end of the daemon's side */
        if (!pfd[0].revents) continue;
        ssize_t k = line_buf_fill(&b, w->in_fd);
        if (k == -2) b.len = b.scanned = 0; /* a runaway line means nothing to us: drop it */
        else if (k <= 0) break;
        size_t start = 0, n;
        char *line;
        while ((line = line_buf_next(&b, &start, &n))) {
            if (n && line[n - 1] == '\r') line[--n] = '\0';
            if (!strcmp(line, "ack")) {
                pthread_mutex_lock(&w->lock);
                w->acks++;
                pthread_cond_broadcast(&w->changed);
                pthread_mutex_unlock(&w->lock);
            } else if (!strcmp(line, "cancel")) {
                set_cancel(w);
            }
            /* anything else: a newer daemon's word this worker does not know */
        }
        line_buf_compact(&b, start);
    }
    set_cancel(w);
    pthread_mutex_lock(&w->lock);
    w->in_ended = 1;
    pthread_cond_broadcast(&w->changed);
    pthread_mutex_unlock(&w->lock);
out:
    free(b.buf);
    return NULL;
}

job_stream_writer *job_stream_writer_new(int out_fd, int in_fd, fisher_error *err) {
    job_stream_writer *w = calloc(1, sizeof *w);
    if (!w) {
        fisher_errorf(err, "out of memory starting the job stream");
        return NULL;
    }
    w->out_fd = out_fd, w->in_fd = in_fd;
    if (pipe(w->wake) != 0) {
        fisher_errorf(err, "job stream: pipe: %s", strerror(errno));
        free(w);
        return NULL;
    }
    pthread_mutex_init(&w->write_lock, NULL);
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->changed, NULL);
    int e = pthread_create(&w->listener, NULL, listen_main, w);
    if (e) {
        fisher_errorf(err, "job stream: cannot start its thread: %s", strerror(e));
        close(w->wake[0]), close(w->wake[1]);
        pthread_mutex_destroy(&w->write_lock), pthread_mutex_destroy(&w->lock);
        pthread_cond_destroy(&w->changed);
        free(w);
        return NULL;
    }
    return w;
}

void job_stream_writer_free(job_stream_writer *w) {
    if (!w) return;
    if (write_all(w->wake[1], "x", 1)) { /* cannot happen for a pipe we hold both ends of */
    }
    pthread_join(w->listener, NULL);
    close(w->wake[0]), close(w->wake[1]);
    pthread_mutex_destroy(&w->write_lock), pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->changed);
    free(w);
}

/* Writes rec (consumed) as one line. A record that cannot be made (out of
 * memory) or written breaks the stream: the daemon would be missing part
 * of the history, and the run stops as if cancelled. */
static int emit(job_stream_writer *w, json_t *rec) {
    char *s = rec ? json_dumps(rec, JSON_COMPACT) : NULL;
    json_decref(rec);
    int rc = -1;
    if (s) {
        size_t n = strlen(s);
        s[n] = '\n'; /* json_dumps's terminator becomes the line's end: one write, one record */
        pthread_mutex_lock(&w->write_lock);
        rc = write_all(w->out_fd, s, n + 1);
        pthread_mutex_unlock(&w->write_lock);
        free(s);
    }
    if (rc) {
        pthread_mutex_lock(&w->lock);
        w->broken = 1;
        pthread_cond_broadcast(&w->changed);
        pthread_mutex_unlock(&w->lock);
        set_cancel(w);
    }
    return rc;
}

static void w_log(void *ctx, const char *line) {
    emit(ctx, json_pack("{s:s,s:o}", "kind", "log", "line", text(line)));
}

static void w_groups(void *ctx, const fisher_job_group *g, size_t n) {
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++) {
        json_t *o = json_pack("{s:o,s:o,s:o,s:o,s:i,s:i,s:i,s:i,s:I,s:I}", "key", text(g[i].key), "tensor",
                              text(g[i].tensor), "layer", text(g[i].layer), "layer_class",
                              text(g[i].layer_class), "depth", g[i].depth, "axis", g[i].axis, "start",
                              g[i].start, "end", g[i].end, "size", (json_int_t)g[i].size, "frozen_at",
                              (json_int_t)g[i].frozen_at);
        if (!o || json_array_append_new(arr, o)) {
            json_decref(arr);
            arr = NULL;
        }
    }
    emit(ctx, arr ? json_pack("{s:s,s:o}", "kind", "groups", "groups", arr) : NULL);
}

static void w_progress(void *ctx, const fisher_job_progress *p) {
    emit(ctx, json_pack("{s:s,s:I,s:I,s:I,s:o,s:o,s:I,s:I}", "kind", "progress", "step", (json_int_t)p->step,
                        "steps", (json_int_t)p->steps, "epoch", (json_int_t)p->epoch, "loss",
                        real((double)p->loss), "step_seconds", real(p->step_seconds), "params_trainable",
                        (json_int_t)p->params_trainable, "params_total", (json_int_t)p->params_total));
}

static void w_eval(void *ctx, const fisher_job_eval *e) {
    json_t *rec = eval_json(e);
    if (rec) json_object_set_new(rec, "kind", json_string("eval"));
    emit(ctx, rec);
}

static void w_checkpoint(void *ctx, int64_t step, const char *path) {
    emit(ctx, json_pack("{s:s,s:I,s:o}", "kind", "checkpoint", "step", (json_int_t)step, "path", text(path)));
}

/* The daemon answers "ack" once everything before this record is stored;
 * until then the checkpoint must not be written. */
static void w_checkpoint_begin(void *ctx, int64_t step) {
    job_stream_writer *w = ctx;
    if (emit(w, json_pack("{s:s,s:I}", "kind", "checkpoint_begin", "step", (json_int_t)step))) return;
    pthread_mutex_lock(&w->lock);
    while (!w->acks && !w->in_ended && !w->broken) pthread_cond_wait(&w->changed, &w->lock);
    if (w->acks) w->acks--;
    pthread_mutex_unlock(&w->lock);
}

/* Only the chunks measured this step carry js and js_ema (idx lists
 * them): every other chunk's is NaN, which the reader puts back. */
static void w_method(void *ctx, int64_t step, const fisher_method_report *r, const fisher_chunk *chunks,
                     size_t n_chunks) {
    (void)chunks;
    json_t *idx = json_array(), *js = json_array(), *js_ema = json_array(), *frozen = json_array();
    int bad = !idx || !js || !js_ema || !frozen;
    if (r->measured && r->js && r->js_ema)
        for (size_t c = 0; !bad && c < n_chunks; c++)
            if (!isnan(r->js[c]))
                bad = json_array_append_new(idx, json_integer((json_int_t)c)) ||
                      json_array_append_new(js, real(r->js[c])) ||
                      json_array_append_new(js_ema, real(r->js_ema[c]));
    for (size_t i = 0; !bad && i < r->n_frozen; i++) bad = json_array_append_new(frozen, json_integer(r->frozen[i]));
    json_t *rec = NULL;
    if (!bad)
        rec = json_pack("{s:s,s:I,s:I,s:b,s:o,s:o,s:o,s:b,s:b,s:{s:o,s:o,s:o,s:o,s:I,s:I},s:o,s:I,s:I}", "kind",
                        "method", "step", (json_int_t)step, "n_chunks", (json_int_t)n_chunks, "measured",
                        r->measured, "idx", idx, "js", js, "js_ema", js_ema, "decided", r->decided,
                        "zero_freeze", r->zero_freeze, "stats", "mean", real(r->stats.mean), "std",
                        real(r->stats.std), "lambda", real(r->stats.lambda), "threshold",
                        real(r->stats.threshold), "kept", (json_int_t)r->stats.kept, "frozen",
                        (json_int_t)r->stats.frozen, "frozen", frozen, "chunks_live",
                        (json_int_t)r->chunks_live, "params_live", (json_int_t)r->params_live);
    else
        json_decref(idx), json_decref(js), json_decref(js_ema), json_decref(frozen);
    emit(ctx, rec);
}

fisher_job_callbacks job_stream_writer_callbacks(job_stream_writer *w) {
    return (fisher_job_callbacks){.ctx = w, .on_log = w_log, .on_groups = w_groups, .on_progress = w_progress,
                                  .on_eval = w_eval, .on_checkpoint = w_checkpoint,
                                  .on_checkpoint_begin = w_checkpoint_begin, .on_method = w_method};
}

const volatile int *job_stream_writer_cancel(job_stream_writer *w) {
    return &w->cancel;
}

int job_stream_write_done(job_stream_writer *w, int rc, const fisher_job_result *res,
                          const fisher_error *run_err) {
    json_t *rec = json_pack("{s:s,s:i,s:o}", "kind", "done", "rc", rc, "error",
                            text(run_err ? run_err->msg : ""));
    if (rec && res) {
        json_t *zs = json_array();
        for (int i = 0; zs && i < res->n_zero_shot && i < FISHER_MAX_ZERO_SHOT; i++)
            json_array_append_new(zs, eval_json(&res->zero_shot[i]));
        json_object_set_new(
            rec, "result",
            json_pack("{s:I,s:b,s:b,s:I,s:o,s:o,s:o,s:I,s:I,s:o,s:o}", "steps_done", (json_int_t)res->steps_done,
                      "cancelled", res->cancelled, "stopped_early", res->stopped_early, "best_step",
                      (json_int_t)res->best_step, "final_val", eval_json(&res->final_val), "zero_shot", zs,
                      "wall_seconds", real(res->wall_seconds), "parameters", (json_int_t)res->parameters,
                      "params_trainable", (json_int_t)res->params_trainable, "params_trainable_mean",
                      real(res->params_trainable_mean), "step_seconds_mean", real(res->step_seconds_mean)));
    }
    return emit(w, rec);
}

int job_stream_writer_broken(const job_stream_writer *w) {
    job_stream_writer *m = (job_stream_writer *)w; /* the lock is not part of its value */
    pthread_mutex_lock(&m->lock);
    int b = m->broken;
    pthread_mutex_unlock(&m->lock);
    return b;
}

/* ------------------------------------------------------------ the reader */

/* Decoding one line: the line's number and a message go to err on the
 * first field that is missing or of the wrong type. */
typedef struct {
    size_t line;
    const char *kind;
    fisher_error *err;
} decoder;

static int bad(decoder *d, const char *what, const char *key) {
    return fisher_errorf(d->err, "job stream line %zu: %s%s%s%s%s", d->line, d->kind ? "\"" : "",
                         d->kind ? d->kind : "", d->kind ? "\" record: " : "", key ? key : "", what);
}

static int get_int(decoder *d, json_t *o, const char *key, int64_t lo, int64_t hi, int64_t *out) {
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v)) return bad(d, " missing or not an integer", key);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi) return bad(d, " out of range", key);
    *out = (int64_t)x;
    return 0;
}

static int get_bool(decoder *d, json_t *o, const char *key, int *out) {
    json_t *v = json_object_get(o, key);
    if (!json_is_boolean(v)) return bad(d, " missing or not a boolean", key);
    *out = json_is_true(v);
    return 0;
}

/* A real from a number, or NAN from null (how a non-finite value travels). */
static int real_of(decoder *d, json_t *v, const char *key, double *out) {
    if (json_is_null(v)) *out = NAN;
    else if (json_is_number(v)) *out = json_number_value(v);
    else return bad(d, " missing or not a number", key);
    return 0;
}

static int get_real(decoder *d, json_t *o, const char *key, double *out) {
    return real_of(d, json_object_get(o, key), key, out);
}

static int get_str(decoder *d, json_t *o, const char *key, const char **out) {
    json_t *v = json_object_get(o, key);
    if (!json_is_string(v)) return bad(d, " missing or not a string", key);
    *out = json_string_value(v);
    return 0;
}

static int get_array(decoder *d, json_t *o, const char *key, json_t **out) {
    *out = json_object_get(o, key);
    if (!json_is_array(*out)) return bad(d, " missing or not an array", key);
    return 0;
}

static int decode_eval(decoder *d, json_t *o, fisher_job_eval *e) {
    const char *ds = NULL;
    memset(e, 0, sizeof *e);
    if (get_int(d, o, "step", INT64_MIN, INT64_MAX, &e->step) || get_str(d, o, "dataset", &ds) ||
        get_real(d, o, "loss", &e->loss) || get_real(d, o, "accuracy", &e->metrics.accuracy) ||
        get_real(d, o, "precision", &e->metrics.precision) || get_real(d, o, "recall", &e->metrics.recall) ||
        get_real(d, o, "f1", &e->metrics.f1) || get_real(d, o, "iou", &e->metrics.iou))
        return -1;
    if (strlen(ds) >= sizeof e->dataset) return bad(d, " longer than an evaluation's dataset name can be", "dataset");
    memcpy(e->dataset, ds, strlen(ds) + 1);
    return 0;
}

static int decode_groups(decoder *d, json_t *o, const fisher_job_callbacks *cb) {
    json_t *arr;
    if (get_array(d, o, "groups", &arr)) return -1;
    size_t n = json_array_size(arr);
    fisher_job_group *g = calloc(n ? n : 1, sizeof *g);
    if (!g) return fisher_errorf(d->err, "job stream line %zu: out of memory for %zu groups", d->line, n);
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        json_t *e = json_array_get(arr, i);
        int64_t depth, axis, start, end, size, frozen_at;
        if (!json_is_object(e)) {
            rc = bad(d, " holds something that is not an object", "groups");
            break;
        }
        rc = get_str(d, e, "key", &g[i].key) || get_str(d, e, "tensor", &g[i].tensor) ||
             get_str(d, e, "layer", &g[i].layer) || get_str(d, e, "layer_class", &g[i].layer_class) ||
             get_int(d, e, "depth", INT32_MIN, INT32_MAX, &depth) || get_int(d, e, "axis", INT32_MIN, INT32_MAX, &axis) ||
             get_int(d, e, "start", INT32_MIN, INT32_MAX, &start) || get_int(d, e, "end", INT32_MIN, INT32_MAX, &end) ||
             get_int(d, e, "size", 0, INT64_MAX, &size) || get_int(d, e, "frozen_at", INT64_MIN, INT64_MAX, &frozen_at);
        if (rc) rc = -1;
        g[i].depth = (int)depth, g[i].axis = (int)axis, g[i].start = (int)start, g[i].end = (int)end;
        g[i].size = (size_t)size, g[i].frozen_at = frozen_at;
    }
    if (!rc && cb && cb->on_groups) cb->on_groups(cb->ctx, g, n);
    free(g);
    return rc;
}

static int decode_method(decoder *d, json_t *o, const fisher_job_callbacks *cb) {
    int64_t step, n_chunks, v;
    json_t *idx, *js, *js_ema, *frozen, *stats = json_object_get(o, "stats");
    fisher_method_report r = {0};
    if (get_int(d, o, "step", INT64_MIN, INT64_MAX, &step) ||
        get_int(d, o, "n_chunks", 0, MAX_CHUNKS, &n_chunks) || get_bool(d, o, "measured", &r.measured) ||
        get_bool(d, o, "decided", &r.decided) || get_bool(d, o, "zero_freeze", &r.zero_freeze) ||
        get_array(d, o, "idx", &idx) || get_array(d, o, "js", &js) || get_array(d, o, "js_ema", &js_ema) ||
        get_array(d, o, "frozen", &frozen))
        return -1;
    if (!json_is_object(stats)) return bad(d, " missing or not an object", "stats");
    if (get_real(d, stats, "mean", &r.stats.mean) || get_real(d, stats, "std", &r.stats.std) ||
        get_real(d, stats, "lambda", &r.stats.lambda) || get_real(d, stats, "threshold", &r.stats.threshold) ||
        get_int(d, stats, "kept", 0, INT64_MAX, &v))
        return -1;
    r.stats.kept = (size_t)v;
    if (get_int(d, stats, "frozen", 0, INT64_MAX, &v)) return -1;
    r.stats.frozen = (size_t)v;
    if (get_int(d, o, "chunks_live", 0, INT64_MAX, &v)) return -1;
    r.chunks_live = (size_t)v;
    if (get_int(d, o, "params_live", 0, INT64_MAX, &v)) return -1;
    r.params_live = (size_t)v;
    size_t m = json_array_size(idx), nf = json_array_size(frozen);
    if (json_array_size(js) != m || json_array_size(js_ema) != m)
        return bad(d, "idx, js and js_ema differ in length", NULL);
    if (nf > (size_t)n_chunks) return bad(d, " lists more chunks than there are", "frozen");
    size_t nc = (size_t)n_chunks;
    double *val = malloc((2 * nc + 1) * sizeof *val);
    int *fr = malloc((nf + 1) * sizeof *fr);
    int rc = 0;
    if (!val || !fr) {
        rc = fisher_errorf(d->err, "job stream line %zu: out of memory for %zu chunks", d->line, nc);
        goto out;
    }
    double *jv = val, *je = val + nc;
    for (size_t c = 0; c < 2 * nc; c++) val[c] = NAN;
    for (size_t k = 0; k < m && !rc; k++) {
        json_t *i = json_array_get(idx, k);
        if (!json_is_integer(i) || json_integer_value(i) < 0 || json_integer_value(i) >= n_chunks) {
            rc = bad(d, " holds something that is not a chunk index", "idx");
            break;
        }
        size_t c = (size_t)json_integer_value(i);
        if (real_of(d, json_array_get(js, k), "js", &jv[c]) || real_of(d, json_array_get(js_ema, k), "js_ema", &je[c]))
            rc = -1;
    }
    for (size_t k = 0; k < nf && !rc; k++) {
        json_t *i = json_array_get(frozen, k);
        if (!json_is_integer(i) || json_integer_value(i) < 0 || json_integer_value(i) >= n_chunks)
            rc = bad(d, " holds something that is not a chunk index", "frozen");
        else
            fr[k] = (int)json_integer_value(i);
    }
    if (!rc && cb && cb->on_method) {
        r.js = jv, r.js_ema = je, r.frozen = fr, r.n_frozen = nf;
        cb->on_method(cb->ctx, step, &r, NULL, nc);
    }
out:
    free(val), free(fr);
    return rc;
}

static int decode_result(decoder *d, json_t *o, fisher_job_result *res) {
    int64_t v;
    json_t *zs, *fv = json_object_get(o, "final_val");
    if (get_int(d, o, "steps_done", INT64_MIN, INT64_MAX, &res->steps_done) ||
        get_bool(d, o, "cancelled", &res->cancelled) || get_bool(d, o, "stopped_early", &res->stopped_early) ||
        get_int(d, o, "best_step", INT64_MIN, INT64_MAX, &res->best_step) ||
        get_real(d, o, "wall_seconds", &res->wall_seconds) ||
        get_real(d, o, "params_trainable_mean", &res->params_trainable_mean) ||
        get_real(d, o, "step_seconds_mean", &res->step_seconds_mean) || get_array(d, o, "zero_shot", &zs))
        return -1;
    if (get_int(d, o, "parameters", 0, INT64_MAX, &v)) return -1;
    res->parameters = (size_t)v;
    if (get_int(d, o, "params_trainable", 0, INT64_MAX, &v)) return -1;
    res->params_trainable = (size_t)v;
    if (!json_is_object(fv)) return bad(d, " missing or not an object", "result.final_val");
    if (decode_eval(d, fv, &res->final_val)) return -1;
    if (json_array_size(zs) > FISHER_MAX_ZERO_SHOT) return bad(d, " has more evaluations than a job can", "zero_shot");
    res->n_zero_shot = (int)json_array_size(zs);
    for (int i = 0; i < res->n_zero_shot; i++) {
        json_t *e = json_array_get(zs, (size_t)i);
        if (!json_is_object(e)) return bad(d, " holds something that is not an object", "zero_shot");
        if (decode_eval(d, e, &res->zero_shot[i])) return -1;
    }
    return 0;
}

/* One line: 1 for "done", 2 for "checkpoint_begin" (the caller acks), 0
 * for any other record, -1 with err. */
static int decode_line(decoder *d, const char *line, size_t n, const fisher_job_callbacks *cb, int *rc,
                       fisher_job_result *res, fisher_error *run_err) {
    json_error_t je;
    json_t *o = json_loadb(line, n, 0, &je);
    if (!o) return fisher_errorf(d->err, "job stream line %zu: not JSON (%s)", d->line, je.text);
    int out = 0;
    const char *kind = NULL;
    if (!json_is_object(o)) {
        out = fisher_errorf(d->err, "job stream line %zu: not a JSON object", d->line);
        goto done;
    }
    if (get_str(d, o, "kind", &kind)) {
        out = -1;
        goto done;
    }
    d->kind = kind;
    int64_t step;
    if (!strcmp(kind, "log")) {
        const char *s = NULL;
        if (get_str(d, o, "line", &s)) out = -1;
        else if (cb && cb->on_log) cb->on_log(cb->ctx, s);
    } else if (!strcmp(kind, "groups")) {
        out = decode_groups(d, o, cb);
    } else if (!strcmp(kind, "progress")) {
        fisher_job_progress p;
        int64_t pt, ptot;
        double loss;
        if (get_int(d, o, "step", INT64_MIN, INT64_MAX, &p.step) || get_int(d, o, "steps", INT64_MIN, INT64_MAX, &p.steps) ||
            get_int(d, o, "epoch", INT64_MIN, INT64_MAX, &p.epoch) || get_real(d, o, "loss", &loss) ||
            get_real(d, o, "step_seconds", &p.step_seconds) || get_int(d, o, "params_trainable", 0, INT64_MAX, &pt) ||
            get_int(d, o, "params_total", 0, INT64_MAX, &ptot)) {
            out = -1;
        } else {
            /* written from a float, so the double holds a float's value exactly */
            p.loss = (float)loss, p.params_trainable = (size_t)pt, p.params_total = (size_t)ptot;
            if (cb && cb->on_progress) cb->on_progress(cb->ctx, &p);
        }
    } else if (!strcmp(kind, "eval")) {
        fisher_job_eval e;
        if (decode_eval(d, o, &e)) out = -1;
        else if (cb && cb->on_eval) cb->on_eval(cb->ctx, &e);
    } else if (!strcmp(kind, "method")) {
        out = decode_method(d, o, cb);
    } else if (!strcmp(kind, "checkpoint_begin")) {
        if (get_int(d, o, "step", INT64_MIN, INT64_MAX, &step)) out = -1;
        else {
            if (cb && cb->on_checkpoint_begin) cb->on_checkpoint_begin(cb->ctx, step);
            out = 2;
        }
    } else if (!strcmp(kind, "checkpoint")) {
        const char *path = NULL;
        if (get_int(d, o, "step", INT64_MIN, INT64_MAX, &step) || get_str(d, o, "path", &path)) out = -1;
        else if (cb && cb->on_checkpoint) cb->on_checkpoint(cb->ctx, step, path);
    } else if (!strcmp(kind, "done")) {
        int64_t code;
        const char *msg = NULL;
        json_t *r = json_object_get(o, "result");
        fisher_job_result tmp = {0};
        if (get_int(d, o, "rc", INT32_MIN, INT32_MAX, &code) || get_str(d, o, "error", &msg)) {
            out = -1;
        } else if (r && !json_is_object(r)) {
            out = bad(d, " not an object", "result");
        } else if (r && decode_result(d, r, &tmp)) {
            out = -1;
        } else {
            if (rc) *rc = (int)code;
            if (res) *res = tmp;
            if (run_err) {
                snprintf(run_err->msg, sizeof run_err->msg, "%s", msg);
                fisher_utf8_clip(run_err->msg);
            }
            out = 1;
        }
    } else {
        d->kind = NULL;
        out = fisher_errorf(d->err, "job stream line %zu: unknown record kind \"%.40s\"", d->line, kind);
    }
done:
    json_decref(o);
    return out;
}

int job_stream_read(int in_fd, int out_fd, const fisher_job_callbacks *cb, const volatile int *cancel,
                    int *rc, fisher_job_result *res, fisher_error *run_err, fisher_error *err) {
    line_buf b = {0};
    decoder d = {.err = err};
    int cancel_sent = 0, out = 0;
    for (;;) {
        if (cancel && *cancel && !cancel_sent) {
            write_all(out_fd, "cancel\n", 7); /* a worker gone already is found at the stream's end */
            cancel_sent = 1;
        }
        struct pollfd pfd = {.fd = in_fd, .events = POLLIN};
        int p = poll(&pfd, 1, 100);
        if (p < 0 && errno != EINTR) {
            out = fisher_errorf(err, "job stream: poll: %s", strerror(errno));
            break;
        }
        if (p <= 0) continue;
        ssize_t k = line_buf_fill(&b, in_fd);
        if (k == -2) {
            out = fisher_errorf(err, "job stream line %zu: longer than %u MiB", d.line + 1, MAX_LINE >> 20);
            break;
        }
        if (k < 0) {
            out = fisher_errorf(err, "job stream: read: %s", strerror(errno));
            break;
        }
        if (k == 0) break; /* ended without "done" (a partial last line is a worker killed mid-write) */
        size_t start = 0, n;
        char *line;
        while (out == 0 && (line = line_buf_next(&b, &start, &n))) {
            d.line++, d.kind = NULL;
            int r = decode_line(&d, line, n, cb, rc, res, run_err);
            if (r == 2) write_all(out_fd, "ack\n", 4);
            else if (r) out = r;
        }
        if (out) break;
        line_buf_compact(&b, start);
    }
    free(b.buf);
    return out;
}
