/*
 * test_job_stream.c — daemon/job_stream.h over real pipes: every record
 * kind arrives in the reader's callbacks with the very bits the writer was
 * given; "ack" holds a checkpoint until the daemon's side has stored what
 * came before, "cancel" and the end of either side stop the run; lines
 * arrive in pieces of any size; junk is refused with its line number.
 */
#include "testutil.h"

#include <fcntl.h>
#include <float.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <stdatomic.h>
#include <time.h>

#include "job_stream.h"

/* ------------------------------------------------------------ helpers */

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Same bits (NaN compares by being NaN: JSON carries no payload). */
#define assert_bits(want, got)                                                                   \
    do {                                                                                         \
        double w_ = (want), g_ = (got);                                                          \
        if (isnan(w_) || isinf(w_)) {                                                            \
            if (!isnan(g_)) fail_msg("%s: want NaN (from %g), got %.17g", #got, w_, g_);          \
        } else if (memcmp(&w_, &g_, sizeof w_)) {                                                \
            fail_msg("%s: want %.17g (%a), got %.17g (%a)", #got, w_, w_, g_, g_);               \
        }                                                                                        \
    } while (0)

/* Doubles that lose bits unless printed with 17 digits and read back exactly. */
static const double tricky[] = {0.1, -0.0, 1.0 / 3.0, DBL_MAX, DBL_MIN, DBL_TRUE_MIN, 1e300,
                                0x1.0000000000001p0, -123456.789e-10, 7.0, NAN, INFINITY, -INFINITY};
#define N_TRICKY (sizeof tricky / sizeof tricky[0])

/* A stream fed from memory in pieces: 1 byte, then growing, so every
 * record is split at many places, then the fd (a socket) is closed. */
typedef struct {
    int fd;
    const char *data;
    size_t len;
    int piece_max;
} feeder;

static void *feed(void *arg) {
    feeder *f = arg;
    size_t at = 0, piece = 1;
    while (at < f->len) {
        size_t n = f->len - at < piece ? f->len - at : piece;
        ssize_t k = send(f->fd, f->data + at, n, MSG_NOSIGNAL); /* a reader that gave up: EPIPE */
        if (k <= 0) break;
        at += (size_t)k;
        piece = piece * 3 % (size_t)f->piece_max + 1;
        if (at < 4096) sleep_ms(1); /* early pieces one at a time, so reads see them apart */
    }
    close(f->fd);
    return NULL;
}

/* Reads everything from fd (until EOF) into a malloc'd string. */
static char *slurp(int fd, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *s = malloc(cap);
    for (;;) {
        if (cap - n < 4096) s = realloc(s, cap *= 2);
        ssize_t k = read(fd, s + n, cap - n - 1);
        if (k <= 0) break;
        n += (size_t)k;
    }
    s[n] = '\0';
    *len = n;
    return s;
}

/* ------------------------------------------------------------ what gets sent */

enum { N_GROUPS = 3, N_CHUNKS = 6 };
static const fisher_job_group groups[N_GROUPS] = {
    {"encoder.block.0.0.attn.q.weight.rowblock0", "segformer.encoder.block.0.0.attention.self.query.weight",
     "encoder.block.0.0.attn.q", "linear", 3, 0, 0, 8, 256, -1},
    {"decode_head.batch_norm.weight.rowblock1", "decode_head.batch_norm.weight", "decode_head.batch_norm",
     "batchnorm", 40, 0, 64, 128, (size_t)1 << 40, 7},
    {"ünïcödé \"quoted\"\tkey", "t", "l", "conv", 0, 1, -5, 2147483647, 0, INT64_MAX},
};
static const char *log_line = "fisher: 6 chunks — \"drift\" every 1 step\nsecond line\\ with a backslash";

static fisher_job_progress progress_of(void) {
    return (fisher_job_progress){12, 20, 1, 0.1f, 0x1.0000000000001p0, 1234567, (size_t)1 << 33};
}

static fisher_job_eval eval_of(int i) {
    fisher_job_eval e = {100 + i, "", tricky[i % N_TRICKY],
                         {tricky[(i + 1) % N_TRICKY], tricky[(i + 2) % N_TRICKY], tricky[(i + 3) % N_TRICKY],
                          tricky[(i + 4) % N_TRICKY], tricky[(i + 5) % N_TRICKY]}};
    snprintf(e.dataset, sizeof e.dataset, "zero-shot %d: {\"synthetic\": \"asphalt\"} ✓", i);
    return e;
}

/* Chunk c measured when c is even; js and js_ema run through tricky[]. */
static double js_of(size_t c) { return c % 2 ? NAN : tricky[c + 1]; }
static double js_ema_of(size_t c) { return tricky[(c + 5) % N_TRICKY]; }
static const int frozen_idx[] = {1, 4};

static fisher_method_report measured_report(double *js, double *js_ema) {
    for (size_t c = 0; c < N_CHUNKS; c++) js[c] = js_of(c), js_ema[c] = c % 2 ? NAN : js_ema_of(c);
    return (fisher_method_report){.measured = 1, .js = js, .js_ema = js_ema, .decided = 1,
                                  .stats = {0.1, 1.0 / 3.0, 1.0, -0.0, 4, 2}, .frozen = frozen_idx,
                                  .n_frozen = 2, .chunks_live = 4, .params_live = 123456789};
}

static fisher_job_result result_of(void) {
    fisher_job_result r = {.steps_done = 20, .cancelled = 0, .stopped_early = 1, .best_step = 15,
                           .final_val = eval_of(0), .n_zero_shot = 3, .wall_seconds = 0.1 + 0.2,
                           .parameters = 3720000, .params_trainable = 7, .params_trainable_mean = 1.0 / 7.0,
                           .step_seconds_mean = DBL_TRUE_MIN};
    snprintf(r.final_val.dataset, sizeof r.final_val.dataset, "val");
    for (int i = 0; i < 3; i++) r.zero_shot[i] = eval_of(i + 1);
    return r;
}

static void assert_eval(const fisher_job_eval *want, const fisher_job_eval *got) {
    assert_int_equal(want->step, got->step);
    assert_string_equal(want->dataset, got->dataset);
    assert_bits(want->loss, got->loss);
    assert_bits(want->metrics.accuracy, got->metrics.accuracy);
    assert_bits(want->metrics.precision, got->metrics.precision);
    assert_bits(want->metrics.recall, got->metrics.recall);
    assert_bits(want->metrics.f1, got->metrics.f1);
    assert_bits(want->metrics.iou, got->metrics.iou);
}

/* ------------------------------------------------------------ the daemon's callbacks */

typedef struct {
    int logs, groups, progress, evals, methods, begins, checkpoints;
    atomic_int begin_returned;     /* set as on_checkpoint_begin returns */
    int begin_delay_ms;
    size_t big_groups;             /* when > 0: on_groups expects this many generated groups */
} seen;

static void r_log(void *ctx, const char *line) {
    seen *s = ctx;
    assert_string_equal(line, log_line);
    s->logs++;
}

static void r_groups(void *ctx, const fisher_job_group *g, size_t n) {
    seen *s = ctx;
    s->groups++;
    if (s->big_groups) {
        assert_int_equal(n, s->big_groups);
        char key[64];
        for (size_t i = 0; i < n; i++) {
            snprintf(key, sizeof key, "encoder.layer.%zu.weight.rowblock%zu", i / 4, i % 4);
            assert_string_equal(g[i].key, key);
            assert_int_equal(g[i].size, i * 1000);
            assert_int_equal(g[i].depth, (int)i);
        }
        return;
    }
    assert_int_equal(n, N_GROUPS);
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(g[i].key, groups[i].key);
        assert_string_equal(g[i].tensor, groups[i].tensor);
        assert_string_equal(g[i].layer, groups[i].layer);
        assert_string_equal(g[i].layer_class, groups[i].layer_class);
        assert_int_equal(g[i].depth, groups[i].depth);
        assert_int_equal(g[i].axis, groups[i].axis);
        assert_int_equal(g[i].start, groups[i].start);
        assert_int_equal(g[i].end, groups[i].end);
        assert_int_equal(g[i].size, groups[i].size);
        assert_true(g[i].frozen_at == groups[i].frozen_at);
    }
}

static void r_progress(void *ctx, const fisher_job_progress *p) {
    seen *s = ctx;
    fisher_job_progress w = progress_of();
    assert_int_equal(p->step, w.step);
    assert_int_equal(p->steps, w.steps);
    assert_int_equal(p->epoch, w.epoch);
    assert_memory_equal(&p->loss, &w.loss, sizeof w.loss);
    assert_bits(w.step_seconds, p->step_seconds);
    assert_int_equal(p->params_trainable, w.params_trainable);
    assert_int_equal(p->params_total, w.params_total);
    s->progress++;
}

static void r_eval(void *ctx, const fisher_job_eval *e) {
    seen *s = ctx;
    fisher_job_eval w = eval_of(s->evals);
    assert_eval(&w, e);
    s->evals++;
}

static void r_method(void *ctx, int64_t step, const fisher_method_report *r, const fisher_chunk *chunks,
                     size_t n_chunks) {
    seen *s = ctx;
    assert_null(chunks); /* the tracking state does not cross a process */
    assert_int_equal(n_chunks, N_CHUNKS);
    if (s->methods == 0) {
        double js[N_CHUNKS], js_ema[N_CHUNKS];
        fisher_method_report w = measured_report(js, js_ema);
        assert_int_equal(step, 11);
        assert_int_equal(r->measured, 1);
        for (size_t c = 0; c < N_CHUNKS; c++) {
            assert_bits(w.js[c], r->js[c]);
            assert_bits(w.js_ema[c], r->js_ema[c]);
        }
        assert_int_equal(r->decided, 1);
        assert_int_equal(r->zero_freeze, 0);
        assert_bits(w.stats.mean, r->stats.mean);
        assert_bits(w.stats.std, r->stats.std);
        assert_bits(w.stats.lambda, r->stats.lambda);
        assert_bits(w.stats.threshold, r->stats.threshold);
        assert_int_equal(r->stats.kept, 4);
        assert_int_equal(r->stats.frozen, 2);
        assert_int_equal(r->n_frozen, 2);
        assert_int_equal(r->frozen[0], 1);
        assert_int_equal(r->frozen[1], 4);
        assert_int_equal(r->chunks_live, 4);
        assert_int_equal(r->params_live, 123456789);
    } else {
        /* not measured: every chunk's js is NaN, as the library's arrays say */
        assert_int_equal(step, 0);
        assert_int_equal(r->measured, 0);
        for (size_t c = 0; c < N_CHUNKS; c++) assert_true(isnan(r->js[c]) && isnan(r->js_ema[c]));
        assert_int_equal(r->decided, 1);
        assert_int_equal(r->zero_freeze, 1);
        assert_int_equal(r->n_frozen, 0);
        assert_int_equal(r->chunks_live, 6);
    }
    s->methods++;
}

static void r_checkpoint_begin(void *ctx, int64_t step) {
    seen *s = ctx;
    assert_int_equal(step, 10);
    s->begins++;
    sleep_ms(s->begin_delay_ms);
    atomic_store(&s->begin_returned, 1);
}

static void r_checkpoint(void *ctx, int64_t step, const char *path) {
    seen *s = ctx;
    assert_int_equal(step, 10);
    assert_string_equal(path, "/var/lib/fisherd/jobs/j_12/checkpoint.safetensors");
    s->checkpoints++;
}

static fisher_job_callbacks recorder(seen *s) {
    return (fisher_job_callbacks){.ctx = s, .on_log = r_log, .on_groups = r_groups, .on_progress = r_progress,
                                  .on_eval = r_eval, .on_method = r_method,
                                  .on_checkpoint_begin = r_checkpoint_begin, .on_checkpoint = r_checkpoint};
}

/* ------------------------------------------------------------ the worker's side */

typedef struct {
    job_stream_writer *w;
    seen *s;
    int ack_waited;        /* on_checkpoint_begin returned only after the daemon's callback did */
    int done_rc;
} worker_arg;

/* Everything a fisher run reports, in a run's order. */
static void *work(void *arg) {
    worker_arg *a = arg;
    fisher_job_callbacks cb = job_stream_writer_callbacks(a->w);
    cb.on_log(cb.ctx, log_line);
    cb.on_groups(cb.ctx, groups, N_GROUPS);
    double js[N_CHUNKS], js_ema[N_CHUNKS];
    for (size_t c = 0; c < N_CHUNKS; c++) js[c] = js_ema[c] = NAN;
    fisher_method_report zero = {.decided = 1, .zero_freeze = 1, .js = js, .js_ema = js_ema, .chunks_live = 6};
    fisher_method_report r = measured_report(js, js_ema);
    cb.on_method(cb.ctx, 11, &r, NULL, N_CHUNKS);
    for (size_t c = 0; c < N_CHUNKS; c++) js[c] = js_ema[c] = NAN;
    cb.on_method(cb.ctx, 0, &zero, NULL, N_CHUNKS);
    fisher_job_progress p = progress_of();
    cb.on_progress(cb.ctx, &p);
    for (int i = 0; i < 4; i++) {
        fisher_job_eval e = eval_of(i);
        cb.on_eval(cb.ctx, &e);
    }
    cb.on_checkpoint_begin(cb.ctx, 10);
    a->ack_waited = atomic_load(&a->s->begin_returned);
    cb.on_checkpoint(cb.ctx, 10, "/var/lib/fisherd/jobs/j_12/checkpoint.safetensors");
    fisher_job_result res = result_of();
    a->done_rc = job_stream_write_done(a->w, 0, &res, NULL);
    return NULL;
}

/* Every record kind, writer to reader over two pipes, as rank 0 and the
 * daemon would: values bit for bit, the checkpoint held until the
 * daemon's on_checkpoint_begin returned (it takes 200 ms here). */
static void test_round_trip(void **state) {
    (void)state;
    int up[2], down[2]; /* worker → daemon, daemon → worker */
    assert_int_equal(pipe(up), 0);
    assert_int_equal(pipe(down), 0);
    fisher_error err = {{0}};
    job_stream_writer *w = job_stream_writer_new(up[1], down[0], &err);
    assert_non_null(w);
    seen s = {.begin_delay_ms = 200};
    worker_arg a = {.w = w, .s = &s, .done_rc = 99};
    pthread_t th;
    pthread_create(&th, NULL, work, &a);
    fisher_job_callbacks cb = recorder(&s);
    int rc = 99;
    fisher_job_result res;
    fisher_error run_err = {{0}};
    memset(&res, 0xab, sizeof res);
    strcpy(run_err.msg, "stale");
    int got = job_stream_read(up[0], down[1], &cb, NULL, &rc, &res, &run_err, &err);
    int cancelled = *job_stream_writer_cancel(w);
    close(down[1]); /* a reader that gave up early must not leave the worker waiting for an ack */
    pthread_join(th, NULL);
    if (got != 1) fail_msg("job_stream_read: %d (%s)", got, err.msg);
    assert_int_equal(got, 1);
    assert_int_equal(rc, 0);
    assert_string_equal(run_err.msg, "");
    assert_int_equal(a.done_rc, 0);
    assert_int_equal(a.ack_waited, 1);
    assert_int_equal(s.logs, 1);
    assert_int_equal(s.groups, 1);
    assert_int_equal(s.methods, 2);
    assert_int_equal(s.progress, 1);
    assert_int_equal(s.evals, 4);
    assert_int_equal(s.begins, 1);
    assert_int_equal(s.checkpoints, 1);
    fisher_job_result want = result_of();
    assert_int_equal(res.steps_done, want.steps_done);
    assert_int_equal(res.cancelled, 0);
    assert_int_equal(res.stopped_early, 1);
    assert_int_equal(res.best_step, want.best_step);
    assert_eval(&want.final_val, &res.final_val);
    assert_int_equal(res.n_zero_shot, 3);
    for (int i = 0; i < 3; i++) assert_eval(&want.zero_shot[i], &res.zero_shot[i]);
    assert_bits(want.wall_seconds, res.wall_seconds);
    assert_int_equal(res.parameters, want.parameters);
    assert_int_equal(res.params_trainable, want.params_trainable);
    assert_bits(want.params_trainable_mean, res.params_trainable_mean);
    assert_bits(want.step_seconds_mean, res.step_seconds_mean);
    assert_int_equal(job_stream_writer_broken(w), 0);
    assert_int_equal(cancelled, 0);
    job_stream_writer_free(w);
    close(up[0]), close(up[1]), close(down[0]);
}

/* A failed run: rc -1 and its message (UTF-8, quotes, a newline) arrive;
 * a done without a result leaves the reader's result zeroed. */
static void test_done_with_error(void **state) {
    (void)state;
    int up[2], down[2];
    assert_int_equal(pipe(up), 0);
    assert_int_equal(pipe(down), 0);
    fisher_error err = {{0}}, run_err = {{0}};
    job_stream_writer *w = job_stream_writer_new(up[1], down[0], &err);
    assert_non_null(w);
    fisher_error e;
    fisher_errorf(&e, "rank 1 on vm: data.train.path \"/data/ß\": no such folder\n(see the log)");
    assert_int_equal(job_stream_write_done(w, -1, NULL, &e), 0);
    close(up[1]);
    int rc = 0;
    fisher_job_result res;
    memset(&res, 0xab, sizeof res);
    assert_int_equal(job_stream_read(up[0], down[1], NULL, NULL, &rc, &res, &run_err, &err), 1);
    assert_int_equal(rc, -1);
    assert_string_equal(run_err.msg, e.msg);
    assert_int_equal(res.steps_done, 0);
    assert_int_equal(res.n_zero_shot, 0);
    job_stream_writer_free(w);
    close(up[0]), close(down[0]), close(down[1]);
}

/* Reads what the daemon's side sent for up to ms milliseconds. */
static size_t read_for(int fd, char *buf, size_t cap, int ms) {
    size_t n = 0;
    for (int t = 0; t < ms; t += 10) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, 10) > 0) {
            ssize_t k = read(fd, buf + n, cap - 1 - n);
            if (k <= 0) break;
            n += (size_t)k;
        }
    }
    buf[n] = '\0';
    return n;
}

typedef struct {
    int up_w, down_r;
    char heard[256];
} raw_worker;

/* A worker written by hand: asks for an ack, waits for "cancel", stays
 * 300 ms to catch a second one, then says done. */
static void *raw_work(void *arg) {
    raw_worker *r = arg;
    const char begin[] = "{\"kind\":\"checkpoint_begin\",\"step\":10}\n";
    if (write(r->up_w, begin, sizeof begin - 1) < 0) return NULL;
    size_t n = 0;
    for (int t = 0; t < 500 && !strstr(r->heard, "cancel\n"); t++) n += read_for(r->down_r, r->heard + n, sizeof r->heard - n, 10);
    n += read_for(r->down_r, r->heard + n, sizeof r->heard - n, 300);
    const char done[] = "{\"kind\":\"done\",\"rc\":0,\"error\":\"\"}\n";
    if (write(r->up_w, done, sizeof done - 1) < 0) return NULL;
    return NULL;
}

/* The daemon's side: "ack" after on_checkpoint_begin, "cancel" once when
 * its flag is set, however long the worker takes to finish. */
static void test_reader_acks_and_cancels_once(void **state) {
    (void)state;
    int up[2], down[2];
    assert_int_equal(pipe(up), 0);
    assert_int_equal(pipe(down), 0);
    raw_worker r = {.up_w = up[1], .down_r = down[0]};
    pthread_t th;
    pthread_create(&th, NULL, raw_work, &r);
    seen s = {0};
    fisher_job_callbacks cb = recorder(&s);
    volatile int cancel = 1;
    int rc = 5;
    fisher_error err = {{0}};
    assert_int_equal(job_stream_read(up[0], down[1], &cb, &cancel, &rc, NULL, NULL, &err), 1);
    pthread_join(th, NULL);
    assert_int_equal(rc, 0);
    assert_int_equal(s.begins, 1);
    /* the ack follows the record it answers; cancel may come before or after it */
    assert_true(!strcmp(r.heard, "ack\ncancel\n") || !strcmp(r.heard, "cancel\nack\n"));
    close(up[0]), close(up[1]), close(down[0]), close(down[1]);
}

/* The worker's side: "cancel" sets the flag; the end of the daemon's side
 * sets it too and releases a checkpoint waiting for an ack that will not
 * come; a write to a daemon that is gone is -1 and "broken", not SIGPIPE. */
static void test_writer_cancel_and_ends(void **state) {
    (void)state;
    int up[2], down[2];
    assert_int_equal(pipe(up), 0);
    assert_int_equal(pipe(down), 0);
    fisher_error err = {{0}};
    job_stream_writer *w = job_stream_writer_new(up[1], down[0], &err);
    assert_non_null(w);
    const volatile int *cancel = job_stream_writer_cancel(w);
    sleep_ms(50);
    assert_int_equal(*cancel, 0);
    assert_int_equal(write(down[1], "ca", 2), 2); /* in two pieces */
    sleep_ms(20);
    assert_int_equal(*cancel, 0);
    assert_int_equal(write(down[1], "ncel\n", 5), 5);
    for (int t = 0; t < 500 && !*cancel; t++) sleep_ms(10);
    assert_int_equal(*cancel, 1);
    job_stream_writer_free(w);
    close(down[0]), close(down[1]);

    /* the daemon goes away while a checkpoint waits for its ack */
    assert_int_equal(pipe(down), 0);
    w = job_stream_writer_new(up[1], down[0], &err);
    assert_non_null(w);
    fisher_job_callbacks cb = job_stream_writer_callbacks(w);
    close(down[1]);
    cb.on_checkpoint_begin(cb.ctx, 3); /* returns: would hang forever otherwise */
    assert_int_equal(*job_stream_writer_cancel(w), 1);
    assert_int_equal(job_stream_writer_broken(w), 0);
    job_stream_writer_free(w);
    close(down[0]);

    /* nobody reads the records any more */
    assert_int_equal(pipe(down), 0);
    close(up[0]);
    w = job_stream_writer_new(up[1], down[0], &err);
    assert_non_null(w);
    cb = job_stream_writer_callbacks(w);
    cb.on_log(cb.ctx, "into the void");
    assert_int_equal(job_stream_writer_broken(w), 1);
    assert_int_equal(*job_stream_writer_cancel(w), 1);
    assert_int_equal(job_stream_write_done(w, 0, NULL, NULL), -1);
    cb.on_checkpoint_begin(cb.ctx, 4); /* a broken stream waits for no ack */
    job_stream_writer_free(w);
    close(up[1]), close(down[0]), close(down[1]);
}

/* A whole stream written to a file, fed to the reader in pieces from one
 * byte up to 4 KB, with one line of a few MB (5000 groups with long
 * names, like a large model's): every callback arrives once, unchanged. */
static void test_pieces_and_long_lines(void **state) {
    (void)state;
    char path[] = "/tmp/test_job_stream_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    int down[2];
    assert_int_equal(pipe(down), 0);
    fisher_error err = {{0}};
    job_stream_writer *w = job_stream_writer_new(fd, down[0], &err);
    assert_non_null(w);
    fisher_job_callbacks cb = job_stream_writer_callbacks(w);
    enum { BIG = 5000 };
    fisher_job_group *g = calloc(BIG, sizeof *g);
    char (*keys)[64] = calloc(BIG, 64);
    static char long_name[400];
    memset(long_name, 'n', sizeof long_name - 1);
    for (size_t i = 0; i < BIG; i++) {
        snprintf(keys[i], 64, "encoder.layer.%zu.weight.rowblock%zu", i / 4, i % 4);
        g[i] = (fisher_job_group){keys[i], long_name, long_name, "linear", (int)i, 0, 0, 1, i * 1000, -1};
    }
    cb.on_log(cb.ctx, log_line);
    cb.on_groups(cb.ctx, g, BIG);
    fisher_job_progress p = progress_of();
    for (int i = 0; i < 50; i++) cb.on_progress(cb.ctx, &p);
    fisher_job_result res = result_of();
    assert_int_equal(job_stream_write_done(w, 0, &res, NULL), 0);
    job_stream_writer_free(w);
    free(g), free(keys);
    size_t len;
    lseek(fd, 0, SEEK_SET);
    char *all = slurp(fd, &len);
    close(fd);
    assert_true(len > 2000000);

    int up[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, up), 0);
    feeder f = {up[1], all, len, 4096};
    pthread_t th;
    pthread_create(&th, NULL, feed, &f);
    seen s = {.big_groups = BIG};
    fisher_job_callbacks rcb = recorder(&s);
    int rc = 1;
    int got = job_stream_read(up[0], down[1], &rcb, NULL, &rc, NULL, NULL, &err);
    shutdown(up[0], SHUT_RDWR); /* releases the feeder if the reader gave up early */
    pthread_join(th, NULL);
    if (got != 1) fail_msg("job_stream_read: %d (%s)", got, err.msg);
    assert_int_equal(rc, 0);
    assert_int_equal(s.logs, 1);
    assert_int_equal(s.groups, 1);
    assert_int_equal(s.progress, 50);
    free(all);
    close(up[0]), close(down[0]), close(down[1]);
}

/* Feeds text to a reader at once; returns the reader's result. */
static int read_text(const char *text, seen *s, fisher_error *err) {
    int up[2], down[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, up), 0);
    assert_int_equal(pipe(down), 0);
    feeder f = {up[1], text, strlen(text), 1 << 20};
    pthread_t th;
    pthread_create(&th, NULL, feed, &f);
    fisher_job_callbacks cb = recorder(s);
    int rc = 7;
    err->msg[0] = '\0';
    int got = job_stream_read(up[0], down[1], &cb, NULL, &rc, NULL, NULL, err);
    shutdown(up[0], SHUT_RDWR);
    pthread_join(th, NULL);
    close(up[0]), close(down[0]), close(down[1]);
    return got;
}

#define LOG "{\"kind\":\"log\",\"line\":\"fisher: 6 chunks — \\\"drift\\\" every 1 step\\nsecond line\\\\ with a backslash\"}\n"

/* Lines that are not the stream's: -1, the line's number and what is wrong;
 * the records before it were delivered, the bad one was not. */
static void test_junk(void **state) {
    (void)state;
    static const struct {
        const char *text, *want;
    } cases[] = {
        {LOG "not json\n", "line 2: not JSON"},
        {LOG LOG "{\"kind\":\"progress\",\"step\":\"x\"}\n", "line 3: \"progress\" record: step missing or not an integer"},
        {"{\"kind\":\"warp\"}\n", "line 1: unknown record kind \"warp\""},
        {"[1,2]\n", "line 1: not a JSON object"},
        {"{\"line\":\"x\"}\n", "line 1: kind missing or not a string"},
        {LOG "\n", "line 2: not JSON"},
        {"{\"kind\":\"method\",\"step\":3,\"n_chunks\":2,\"measured\":true,\"decided\":false,\"zero_freeze\":false,"
         "\"idx\":[5],\"js\":[0.5],\"js_ema\":[0.5],\"frozen\":[],\"stats\":{\"mean\":0,\"std\":0,\"lambda\":1,"
         "\"threshold\":0,\"kept\":0,\"frozen\":0},\"chunks_live\":2,\"params_live\":8}\n",
         "line 1: \"method\" record: idx holds something that is not a chunk index"},
        {"{\"kind\":\"method\",\"step\":3,\"n_chunks\":99999999999,\"measured\":true,\"decided\":false,"
         "\"zero_freeze\":false,\"idx\":[],\"js\":[],\"js_ema\":[],\"frozen\":[],\"stats\":{}}\n",
         "line 1: \"method\" record: n_chunks out of range"},
        {LOG "{\"kind\":\"groups\",\"groups\":[{\"key\":\"k\",\"tensor\":\"t\",\"layer\":\"l\",\"layer_class\":\"conv\","
             "\"depth\":0,\"axis\":0,\"start\":0,\"end\":1,\"frozen_at\":-1}]}\n",
         "line 2: \"groups\" record: size missing or not an integer"},
        {"{\"kind\":\"done\",\"rc\":0,\"error\":\"\",\"result\":7}\n", "line 1: \"done\" record: result not an object"},
        {"{\"kind\":\"log\",\"line\":\"a\"} trailing\n", "line 1: not JSON"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        seen s = {0};
        fisher_error err;
        int got = read_text(cases[i].text, &s, &err);
        if (got != -1 || !strstr(err.msg, cases[i].want))
            fail_msg("case %zu: got %d \"%s\", want -1 with \"%s\"", i, got, err.msg, cases[i].want);
        assert_int_equal(s.logs, strstr(cases[i].text, LOG LOG) ? 2 : strstr(cases[i].text, LOG) ? 1 : 0);
        assert_int_equal(s.groups + s.progress + s.methods, 0);
    }
}

/* The worker died: records up to the end arrive, and the reader says the
 * stream ended without "done" (0) — also when the last line is cut. */
static void test_end_without_done(void **state) {
    (void)state;
    fisher_error err;
    seen s = {0};
    assert_int_equal(read_text(LOG LOG, &s, &err), 0);
    assert_int_equal(s.logs, 2);
    seen t = {0};
    assert_int_equal(read_text(LOG "{\"kind\":\"done\",\"rc\":0,\"err", &t, &err), 0);
    assert_int_equal(t.logs, 1);
    seen u = {0};
    assert_int_equal(read_text("", &u, &err), 0);
}

int main(void) {
    /* a protocol bug shows as a wait that never ends: fail instead (the
     * whole file takes about a second) */
    alarm(60);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_done_with_error),
        cmocka_unit_test(test_reader_acks_and_cancels_once),
        cmocka_unit_test(test_writer_cancel_and_ends),
        cmocka_unit_test(test_pieces_and_long_lines),
        cmocka_unit_test(test_junk),
        cmocka_unit_test(test_end_without_done),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
