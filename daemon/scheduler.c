/*
 * scheduler.c — see scheduler.h.
 *
 * Threads and what they own:
 *   loop thread   the store's write connection, the FIFO of waiting jobs,
 *                 the list of running jobs (their threads are joined here)
 *   worker        one per running job: fisher_job_run and its callbacks,
 *                 which copy what they report into job_msg records and push
 *                 them (blocking when the queue's budget is spent); for a
 *                 distributed job, mpirun's pipes and job_stream_read,
 *                 which calls the same callbacks
 *   mpi stderr    one per distributed job: mpirun's stderr, and the
 *                 cancel's grace (SIGTERM, SIGKILL to its process group)
 *   any thread    sched_submit / _cancel / _delete: a command on the
 *                 command list, the doorbell, then a wait for the loop
 *
 * Design notes, as invariants:
 *   1. Only the loop thread writes the store; a command's answer is the
 *      store's own code and message.
 *   2. A job's records reach the store in the order its worker pushed them,
 *      and its completion (MSG_DONE) is the last of them: the status moves
 *      only after everything it reported before is committed.
 *   3. A running job is in `running` from its thread's creation until the
 *      loop has joined it; `n_running` counts that list.
 *   4. `cancel` is written by the loop, read by the worker between steps
 *      (fisher_job_run polls it); `stop_reason` says whether a cancel was
 *      the user's or the daemon's.
 */
#include "scheduler.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <malloc.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "fileio.h"
#include "job.h"
#include "job_stream.h"
#include "log.h"
#include "record_queue.h"
#include "safetensors.h"
#include "serve_config.h"

#define DEFAULT_QUEUE_BYTES (64u << 20)
#define DEFAULT_CHECKPOINT_INTERVAL 200

typedef struct running_job running_job;

/* What a worker reports: a store record with the storage it points into,
 * or (MSG_DONE) the end of the run. */
typedef struct {
    record_item item;                /* first: the queue links it */
    enum { MSG_RECORD, MSG_DONE, MSG_BARRIER } kind;
    running_job *job;
    store_record rec;
    void *owned;                     /* one allocation rec's pointers point into */
    /* MSG_DONE */
    int rc;
    fisher_job_result result;
    fisher_error err;
    /* MSG_BARRIER: set (under sched.lock) once what came before is committed */
    int committed;
} job_msg;

struct running_job {
    running_job *next;
    sched *s;
    int64_t id;
    uv_thread_t thread;
    volatile int cancel;
    int stopped_by_daemon;
    /* A record of the run could not be stored (disk full, I/O error): the
     * loop stops the run and fails it with this reason, and drops what it
     * reports after that, so the history kept has no hole in it. */
    char lost[512];
    int resume;                      /* continue from out_dir's checkpoint */
    fisher_job_spec spec;
    char out_dir[PATH_MAX];
    int64_t chunks_live;             /* worker thread only, from on_method */
};

typedef struct command {
    struct command *next;
    enum { CMD_SUBMIT, CMD_CANCEL, CMD_DELETE, CMD_REGISTER_MODEL } kind;
    const sched_job *job;
    const store_record *model;     /* CMD_REGISTER_MODEL */
    int64_t id;
    int rc, done;
    fisher_error err;
} command;

/* A status change the store refused (a full disk, most often): kept and
 * written again every STATUS_RETRY_MS until it goes in, so a job never
 * stays "running" in the database after it ended. */
typedef struct {
    int64_t id;
    store_job_status to;
    char *reason;
} unrecorded_status;

#define STATUS_RETRY_MS 1000

struct sched {
    uv_loop_t *loop;
    uv_async_t doorbell;
    uv_timer_t retry;                /* rewrites the statuses the store refused */
    unrecorded_status *unrecorded;   /* (loop thread) oldest first */
    size_t n_unrecorded;
    store *db;
    sched_config cfg;
    char data_dir[PATH_MAX - 256];   /* room for /jobs/j_<id>/model.safetensors */
    char mpirun[PATH_MAX];           /* distributed jobs: the launcher, */
    char hostfile_dir[PATH_MAX];     /* their hostfiles ("" = this machine only), */
    char self_exe[PATH_MAX];         /* and the fisherd each rank runs */
    record_queue *records;
    pthread_mutex_t lock;            /* commands, and `answered` */
    pthread_cond_t answered;
    command *commands;
    int64_t *waiting;                /* FIFO of queued job ids (loop thread) */
    size_t n_waiting, cap_waiting;
    running_job *running;
    int n_running;
    int stopping;
    void (*stopped)(void *ctx);
    void *stopped_ctx;
};

static void ring(void *ctx) { uv_async_send(&((sched *)ctx)->doorbell); }

/* ------------------------------------------------------------ the worker */

static job_msg *msg_new(running_job *j, store_record_kind kind, size_t owned_bytes) {
    job_msg *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    if (owned_bytes && !(m->owned = calloc(1, owned_bytes))) return free(m), NULL;
    m->kind = MSG_RECORD, m->job = j;
    m->rec.kind = kind, m->rec.job = j->id;
    m->item.bytes = sizeof *m + owned_bytes;
    return m;
}

static void msg_free(job_msg *m) {
    if (!m) return;
    free(m->owned);
    free(m);
}

/* Queues m, or drops it when the queue is closed (the daemon is stopping
 * and the loop no longer writes). */
static void push(running_job *j, job_msg *m) {
    if (!m) {
        log_msg(LOG_ERROR, j->id, "out of memory: a record of the run is lost");
        return;
    }
    if (record_queue_push(j->s->records, &m->item)) msg_free(m);
}

static void on_log(void *ctx, const char *line) {
    running_job *j = ctx;
    log_msg(LOG_INFO, j->id, "%s", line);
}

static void on_groups(void *ctx, const fisher_job_group *g, size_t n) {
    running_job *j = ctx;
    size_t text = 0;
    for (size_t i = 0; i < n; i++)
        text += strlen(g[i].key) + strlen(g[i].tensor) + strlen(g[i].layer) + strlen(g[i].layer_class) + 4;
    job_msg *m = msg_new(j, STORE_REC_GROUPS, n * sizeof(store_group) + text);
    if (m) {
        store_group *out = m->owned;
        char *at = (char *)(out + n);
#define COPY(dst, src) (dst = at, at += strlen(src) + 1, memcpy((char *)dst, src, strlen(src) + 1))
        for (size_t i = 0; i < n; i++) {
            COPY(out[i].key, g[i].key);
            COPY(out[i].tensor, g[i].tensor);
            COPY(out[i].layer, g[i].layer);
            COPY(out[i].layer_class, g[i].layer_class);
            out[i].depth = g[i].depth, out[i].axis = g[i].axis;
            out[i].start = g[i].start, out[i].end = g[i].end;
            out[i].size = (int64_t)g[i].size, out[i].frozen_at = g[i].frozen_at;
        }
#undef COPY
        m->rec.groups.groups = out, m->rec.groups.n = n;
    }
    j->chunks_live = 0;
    for (size_t i = 0; i < n; i++) j->chunks_live += g[i].frozen_at < 0;
    push(j, m);
}

static void on_progress(void *ctx, const fisher_job_progress *p) {
    running_job *j = ctx;
    job_msg *m = msg_new(j, STORE_REC_PROGRESS, 0);
    if (m)
        m->rec.progress.step = p->step, m->rec.progress.steps = p->steps, m->rec.progress.loss = p->loss,
        m->rec.progress.params_live = (int64_t)p->params_trainable,
        m->rec.progress.params_total = (int64_t)p->params_total, /* every strategy's, not only "fisher"'s */
        m->rec.progress.chunks_live = j->chunks_live > 0 ? j->chunks_live : 0; /* 0: no groups (not "fisher") */
    push(j, m);
}

static void on_method(void *ctx, int64_t step, const fisher_method_report *r, const fisher_chunk *chunks,
                      size_t n_chunks) {
    (void)chunks;
    running_job *j = ctx;
    j->chunks_live = (int64_t)r->chunks_live;
    if (r->measured) {
        size_t n = 0;
        for (size_t c = 0; c < n_chunks; c++) n += !isnan(r->js[c]);
        job_msg *m = msg_new(j, STORE_REC_DRIFT, n * (sizeof(int) + 2 * sizeof(double)));
        if (m) {
            double *js = m->owned, *js_ema = js + n;
            int *idx = (int *)(js_ema + n);
            size_t k = 0;
            for (size_t c = 0; c < n_chunks; c++)
                if (!isnan(r->js[c])) idx[k] = (int)c, js[k] = r->js[c], js_ema[k] = r->js_ema[c], k++;
            m->rec.drift.step = step, m->rec.drift.n = n;
            m->rec.drift.idx = idx, m->rec.drift.js = js, m->rec.drift.js_ema = js_ema;
        }
        push(j, m);
    }
    if (r->decided) {
        job_msg *m = msg_new(j, STORE_REC_FREEZE, (r->n_frozen ? r->n_frozen : 1) * sizeof(int));
        if (m) {
            memcpy(m->owned, r->frozen, r->n_frozen * sizeof(int));
            m->rec.freeze.step = step, m->rec.freeze.zero_fisher = r->zero_freeze;
            m->rec.freeze.metric = j->spec.fisher.metric == FISHER_METRIC_MEAN_JS ? "mean_js" : "total_variation";
            m->rec.freeze.mean = r->stats.mean, m->rec.freeze.std = r->stats.std;
            m->rec.freeze.lambda = r->stats.lambda, m->rec.freeze.threshold = r->stats.threshold;
            m->rec.freeze.frozen = m->owned, m->rec.freeze.n_frozen = r->n_frozen;
            m->rec.freeze.chunks_live = (int64_t)r->chunks_live;
            m->rec.freeze.params_live = (int64_t)r->params_live;
        }
        push(j, m);
    }
}

static job_msg *eval_msg(running_job *j, const fisher_job_eval *e, int final) {
    job_msg *m = msg_new(j, STORE_REC_EVAL, strlen(e->dataset) + 1);
    if (!m) return NULL;
    memcpy(m->owned, e->dataset, strlen(e->dataset) + 1);
    m->rec.eval.step = e->step, m->rec.eval.dataset = m->owned, m->rec.eval.final = final;
    m->rec.eval.loss = e->loss, m->rec.eval.iou = e->metrics.iou, m->rec.eval.f1 = e->metrics.f1;
    m->rec.eval.accuracy = e->metrics.accuracy, m->rec.eval.precision = e->metrics.precision;
    m->rec.eval.recall = e->metrics.recall;
    return m;
}

static void on_eval(void *ctx, const fisher_job_eval *e) {
    running_job *j = ctx;
    push(j, eval_msg(j, e, 0));
}

static void on_checkpoint(void *ctx, int64_t step, const char *path) {
    running_job *j = ctx;
    job_msg *m = msg_new(j, STORE_REC_CHECKPOINT, strlen(path) + 1);
    if (m) {
        memcpy(m->owned, path, strlen(path) + 1);
        m->rec.checkpoint.step = step, m->rec.checkpoint.path = m->owned;
    }
    push(j, m);
}

/* Waits until the loop has committed everything this run reported, so
 * the checkpoint about to be written never gets ahead of the history in
 * the store: a run resumed from it (try_start_one) continues a history
 * with no hole between the two. Without a queue (the daemon is going
 * away) there is nothing to wait for. */
static void on_checkpoint_begin(void *ctx, int64_t step) {
    running_job *j = ctx;
    sched *s = j->s;
    (void)step;
    job_msg *m = calloc(1, sizeof *m);
    if (!m) return;
    m->kind = MSG_BARRIER, m->job = j;
    if (record_queue_push(s->records, &m->item)) {
        free(m);
        return;
    }
    pthread_mutex_lock(&s->lock);
    while (!m->committed) pthread_cond_wait(&s->answered, &s->lock);
    pthread_mutex_unlock(&s->lock);
    free(m);
}

/* ------------------------------------------------------------ a distributed run
 *
 * The job's thread launches `mpirun ... fisherd worker` and reads rank 0's
 * record stream through job_stream_read with the callbacks above. mpirun
 * runs in a process group of its own with PDEATHSIG, so a daemon killed
 * outright takes it along (and the ranks go with mpirun: the workers set
 * PDEATHSIG themselves) before a restarted daemon resumes the job in the
 * same folder. Its stderr is read on a thread of its own (a full pipe would
 * stall mpirun): lines go to the log at info, and the ones that say which
 * rank failed where are kept for the job's reason. */

#define MPI_CANCEL_GRACE 30.0       /* seconds a cancelled MPI job has to end by itself */
#define MPI_KILL_GRACE 5.0          /* then after SIGTERM, before SIGKILL */
#define MPI_TAIL 8192
#define MPI_RANKS_KEPT 64           /* the first failure line of ranks 0..63 (FISHER_MAX_RANKS) */

typedef struct {
    running_job *j;
    int fd;                          /* mpirun's stderr */
    pid_t pid;                       /* mpirun, leader of its process group */
    pthread_mutex_t lock;
    int stream_ended;                /* the job's thread reaps mpirun from now on: no signals here */
    double drain_until;              /* mpirun reaped: read what is left until then (0: not yet) */
    double cancel_seen;              /* when this thread saw the cancel (0: not yet) */
    int termed, killed;
    char tail[MPI_TAIL];             /* the last bytes of stderr, whole lines */
    size_t tail_len;
    char rank_reason[1024];          /* first "fisherd worker: rank R on HOST: MESSAGE" */
    char *rank_line[MPI_RANKS_KEPT]; /* each rank's first such line, "rank R on HOST: MESSAGE" */
    char signal_reason[512];         /* first "process rank R ... on node HOST exited on signal N (Name)" */
} mpi_watch;

/* What a line of mpirun's stderr says about a failed rank, if anything. */
static void mpi_line(mpi_watch *w, char *line) {
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\r' || line[n - 1] == ' ')) line[--n] = 0;
    if (!n) return;
    log_msg(LOG_INFO, w->j->id, "mpi: %s", line);
    if (n + 1 > MPI_TAIL) line += n + 1 - MPI_TAIL, n = MPI_TAIL - 1;
    if (w->tail_len + n + 1 > MPI_TAIL) { /* keep whole lines: drop the oldest */
        size_t drop = w->tail_len + n + 1 - MPI_TAIL;
        char *nl = memchr(w->tail + drop, '\n', w->tail_len - drop);
        drop = nl ? (size_t)(nl - w->tail) + 1 : w->tail_len;
        memmove(w->tail, w->tail + drop, w->tail_len - drop);
        w->tail_len -= drop;
    }
    memcpy(w->tail + w->tail_len, line, n);
    w->tail_len += n;
    w->tail[w->tail_len++] = '\n';

    const char *at = strstr(line, "fisherd worker: rank ");
    if (at && !w->rank_reason[0]) {
        int rank, used = 0;
        char host[256];
        if (sscanf(at, "fisherd worker: rank %d on %255[^:]: %n", &rank, host, &used) == 2 && used) {
            snprintf(w->rank_reason, sizeof w->rank_reason, "rank %d on %s: %.400s", rank, host, at + used);
            fisher_utf8_clip(w->rank_reason); /* %.400s counts bytes, not characters */
        }
    }
    if (at) {
        int rank;
        if (sscanf(at, "fisherd worker: rank %d", &rank) == 1 && rank >= 0 && rank < MPI_RANKS_KEPT &&
            !w->rank_line[rank])
            w->rank_line[rank] = strdup(at + strlen("fisherd worker: "));
    }
    at = strstr(line, "process rank ");
    const char *node = at ? strstr(at, " on node ") : NULL, *sig = node ? strstr(node, " exited on signal ") : NULL;
    if (sig && !w->signal_reason[0]) {
        int rank;
        char host[256];
        if (sscanf(at, "process rank %d", &rank) == 1 && sscanf(node, " on node %255s", host) == 1) {
            const char *what = sig + strlen(" exited on signal ");
            int wl = (int)strlen(what);
            if (wl && what[wl - 1] == '.') wl--;
            snprintf(w->signal_reason, sizeof w->signal_reason, "rank %d on %s exited on signal %.*s", rank, host,
                     wl > 200 ? 200 : wl, what);
        }
    }
}

/* A failure one rank relays from another ("rank 0 on a: rank 1 of 2
 * failed setting up ... (its own error says why)") leads to that rank's
 * own line when stderr has it: the reason a person needs is the first
 * rank's, in its words. */
static const char *root_cause(const mpi_watch *w, const char *reason) {
    for (int hops = 0; reason && hops < 4; hops++) {
        const char *at = strstr(reason, ": rank ");
        int k, n;
        if (!at || sscanf(at, ": rank %d of %d", &k, &n) != 2 || k < 0 || k >= MPI_RANKS_KEPT || !w->rank_line[k] ||
            !strcmp(w->rank_line[k], reason))
            break;
        reason = w->rank_line[k];
    }
    return reason;
}

/* Reads mpirun's stderr until it ends, and enforces the cancel's grace:
 * an MPI job that has not ended MPI_CANCEL_GRACE after the cancel (a rank
 * stuck, a remote host gone) gets SIGTERM, then SIGKILL. */
static void *mpi_stderr_main(void *arg) {
    mpi_watch *w = arg;
    char buf[4096], line[2048];
    size_t ll = 0;
    for (;;) {
        struct pollfd pfd = {.fd = w->fd, .events = POLLIN};
        int pr = poll(&pfd, 1, 100);
        if (pr > 0) {
            ssize_t n = read(w->fd, buf, sizeof buf);
            if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
            if (n <= 0) break;
            for (ssize_t i = 0; i < n; i++) {
                if (buf[i] != '\n' && ll < sizeof line - 1) {
                    line[ll++] = buf[i];
                    continue;
                }
                line[ll] = 0, ll = 0;
                mpi_line(w, line);
                if (buf[i] != '\n') line[ll++] = buf[i]; /* an overlong line goes on as the next */
            }
        }
        double t = fisher_now_seconds();
        pthread_mutex_lock(&w->lock);
        int stop = w->drain_until > 0 && t > w->drain_until;
        if (!w->stream_ended && w->j->cancel) {
            if (!w->cancel_seen) w->cancel_seen = t;
            if (!w->termed && t - w->cancel_seen > MPI_CANCEL_GRACE) {
                log_msg(LOG_WARN, w->j->id, "the MPI job did not end within %.0f s of the cancel: SIGTERM",
                        MPI_CANCEL_GRACE);
                kill(-w->pid, SIGTERM), w->termed = 1;
            } else if (!w->killed && t - w->cancel_seen > MPI_CANCEL_GRACE + MPI_KILL_GRACE) {
                log_msg(LOG_WARN, w->j->id, "the MPI job ignored SIGTERM: SIGKILL");
                kill(-w->pid, SIGKILL), w->killed = 1;
            }
        }
        pthread_mutex_unlock(&w->lock);
        if (stop) break;
    }
    if (ll) line[ll] = 0, mpi_line(w, line);
    return NULL;
}

/* pipe2(O_CLOEXEC) needs _GNU_SOURCE, which nothing else here wants. */
static int pipe_cloexec(int fds[2]) {
    if (pipe(fds)) return -1;
    fcntl(fds[0], F_SETFD, FD_CLOEXEC), fcntl(fds[1], F_SETFD, FD_CLOEXEC);
    return 0;
}

/* Waits for mpirun; after grace seconds SIGTERM to its group, MPI_KILL_GRACE
 * later SIGKILL. Its wait status. */
static int reap_mpirun(pid_t pid, double grace) {
    double start = fisher_now_seconds();
    int termed = 0, killed = 0, status = 0;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid || (r < 0 && errno != EINTR)) return r == pid ? status : -1;
        double t = fisher_now_seconds() - start;
        if (!termed && t >= grace) kill(-pid, SIGTERM), termed = 1;
        if (!killed && t >= grace + MPI_KILL_GRACE) kill(-pid, SIGKILL), killed = 1;
        usleep(20000);
    }
}

/* Runs a job of spec.ranks > 1 under mpirun: as fisher_job_run does, the
 * return code, result and error of the run. */
static int run_distributed(running_job *j, const fisher_job_callbacks *cb, fisher_job_result *result,
                           fisher_error *err) {
    sched *s = j->s;
    memset(result, 0, sizeof *result);
    char mpirun[PATH_MAX];
    if (serve_find_program(s->mpirun, mpirun, sizeof mpirun))
        return fisher_errorf(err, "cannot launch its %d ranks: mpirun '%s' not found (install openmpi-bin, or "
                             "give the daemon --mpirun PATH)", j->spec.ranks, s->mpirun);
    if (!s->self_exe[0]) return fisher_errorf(err, "cannot launch its ranks: the daemon's own executable is unknown");
    char hostfile[PATH_MAX + 80] = "";
    if (j->spec.hostfile[0]) {
        if (!s->hostfile_dir[0])
            return fisher_errorf(err, "cannot launch: it names hostfile '%s' but the daemon has no --hostfile-dir",
                                 j->spec.hostfile);
        snprintf(hostfile, sizeof hostfile, "%s/%s", s->hostfile_dir, j->spec.hostfile);
    }
    /* this machine: the job's thread budget spread over its ranks; other
     * machines: each rank has its own (the spec's, capped by --threads) */
    int threads = j->spec.threads;
    if (!hostfile[0]) {
        int per = s->cfg.threads / j->spec.ranks;
        if (per < threads) threads = per;
    }
    if (threads < 1) threads = 1;

    /* absolute: ranks on other hosts start in a folder of their own choosing */
    char out_dir[PATH_MAX], spec_path[PATH_MAX + 16];
    if (!realpath(j->out_dir, out_dir)) return fisher_errorf(err, "cannot resolve %s: %s", j->out_dir, strerror(errno));
    snprintf(spec_path, sizeof spec_path, "%s/spec.json", out_dir);
    char *spec_text = fisher_job_spec_to_json(&j->spec);
    if (!spec_text) return fisher_errorf(err, "out of memory writing its spec");
    /* through a temporary and a rename: a worker never reads half a spec */
    fisher_file_piece spec_piece = {spec_text, strlen(spec_text)};
    int wrc = fisher_file_write_atomic(spec_path, &spec_piece, 1, err);
    free(spec_text);
    if (wrc) return -1;

    char np[16], nthreads[16];
    snprintf(np, sizeof np, "%d", j->spec.ranks);
    snprintf(nthreads, sizeof nthreads, "%d", threads);
    const char *argv[32];
    int argc = 0;
    argv[argc++] = mpirun;
    if (geteuid() == 0) argv[argc++] = "--allow-run-as-root";
    argv[argc++] = "-np", argv[argc++] = np;
    if (hostfile[0]) argv[argc++] = "--hostfile", argv[argc++] = hostfile;
    else argv[argc++] = "--oversubscribe"; /* more ranks than cores is fine for a test, if slow */
    argv[argc++] = "--bind-to", argv[argc++] = "none"; /* the ranks' OpenMP threads choose their cores */
    argv[argc++] = s->self_exe, argv[argc++] = "worker";
    argv[argc++] = "--spec", argv[argc++] = spec_path;
    argv[argc++] = "--out", argv[argc++] = out_dir;
    if (j->resume) argv[argc++] = "--resume";
    argv[argc++] = "--threads", argv[argc++] = nthreads;
    argv[argc] = NULL;
    char cmdline[PATH_MAX * 4] = "";
    for (int i = 0; i < argc; i++) {
        size_t l = strlen(cmdline);
        snprintf(cmdline + l, sizeof cmdline - l, "%s%s", i ? " " : "", argv[i]);
    }
    log_msg(LOG_INFO, j->id, "launching: %s", cmdline);

    /* close-on-exec: another job's mpirun must not hold these open */
    int in[2] = {-1, -1}, out[2] = {-1, -1}, errp[2] = {-1, -1};
    if (pipe_cloexec(in) || pipe_cloexec(out) || pipe_cloexec(errp)) {
        fisher_errorf(err, "cannot make pipes for mpirun: %s", strerror(errno));
        for (int i = 0; i < 2; i++) {
            if (in[i] >= 0) close(in[i]);
            if (out[i] >= 0) close(out[i]);
            if (errp[i] >= 0) close(errp[i]);
        }
        return -1;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        /* the child of a threaded process: async-signal-safe calls only */
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127); /* the daemon died already */
        dup2(in[0], 0), dup2(out[1], 1), dup2(errp[1], 2);
#ifdef SYS_close_range
        if (syscall(SYS_close_range, 3, ~0u, 0))
#endif
            for (int fd = 3; fd < 4096; fd++) close(fd);
        signal(SIGPIPE, SIG_DFL); /* the daemon ignores it; exec would keep that */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execv(mpirun, (char *const *)argv);
        static const char msg[] = "fisherd: cannot execute mpirun\n";
        ssize_t ignored = write(2, msg, sizeof msg - 1);
        (void)ignored;
        _exit(127);
    }
    int fork_errno = errno;
    close(in[0]), close(out[1]), close(errp[1]);
    if (pid < 0) {
        close(in[1]), close(out[0]), close(errp[0]);
        return fisher_errorf(err, "cannot start mpirun: %s", strerror(fork_errno));
    }
    setpgid(pid, pid); /* also here: whichever runs first, the group exists before any signal */

    mpi_watch *w = calloc(1, sizeof *w);
    pthread_t reader;
    int have_reader = 0;
    if (w) {
        w->j = j, w->fd = errp[0], w->pid = pid;
        pthread_mutex_init(&w->lock, NULL);
        have_reader = !pthread_create(&reader, NULL, mpi_stderr_main, w);
    }
    if (!have_reader) { /* cannot watch it: stop it rather than let stderr fill up */
        log_msg(LOG_ERROR, j->id, "cannot read mpirun's stderr; stopping it");
        kill(-pid, SIGKILL);
    }

    int wrc_rc = 0;
    fisher_error run_err = {{0}}, stream_err = {{0}};
    int got = job_stream_read(out[0], in[1], cb, &j->cancel, &wrc_rc, result, &run_err, &stream_err);
    if (w) {
        pthread_mutex_lock(&w->lock);
        w->stream_ended = 1;
        pthread_mutex_unlock(&w->lock);
    }
    /* EOF on rank 0's stdin and on mpirun's stdout: nothing more is read */
    close(in[1]), close(out[0]);
    if (got < 0) kill(-pid, SIGTERM); /* not a job stream: whatever runs there is not ours to wait for */
    int status = reap_mpirun(pid, got < 0 ? 0 : MPI_CANCEL_GRACE);
    if (have_reader) {
        pthread_mutex_lock(&w->lock);
        w->drain_until = fisher_now_seconds() + 2.0; /* ranks on other hosts may still hold stderr */
        pthread_mutex_unlock(&w->lock);
        pthread_join(reader, NULL);
    }
    close(errp[0]);

    char exit_text[64];
    if (status < 0) snprintf(exit_text, sizeof exit_text, "cannot be waited for");
    else if (WIFEXITED(status)) snprintf(exit_text, sizeof exit_text, "exited with status %d", WEXITSTATUS(status));
    else snprintf(exit_text, sizeof exit_text, "was killed by signal %d", WTERMSIG(status));
    int rc;
    if (got == 1) {
        rc = wrc_rc;
        if (rc) *err = run_err;
        if (rc && w) fisher_errorf(err, "%s", root_cause(w, run_err.msg));
        if (status) log_msg(LOG_WARN, j->id, "mpirun %s after the run reported its end", exit_text);
    } else if (got < 0) {
        rc = fisher_errorf(err, "the MPI job's output is not a job stream: %s", stream_err.msg);
    } else if (j->cancel) {
        /* cancelled and then gone without a last word (killed after the
         * grace): it stopped as asked, from its last checkpoint */
        memset(result, 0, sizeof *result);
        result->cancelled = 1;
        rc = 0;
    } else {
        const char *last = "";
        char last_line[512] = "";
        if (w && w->tail_len) {
            w->tail[w->tail_len - 1] = 0; /* the final newline */
            const char *nl = strrchr(w->tail, '\n');
            snprintf(last_line, sizeof last_line, "%.500s", nl ? nl + 1 : w->tail);
            fisher_utf8_clip(last_line);
            last = last_line;
        }
        if (w && w->signal_reason[0]) rc = fisher_errorf(err, "%s", w->signal_reason);
        else if (w && w->rank_reason[0]) rc = fisher_errorf(err, "%s", root_cause(w, w->rank_reason));
        else rc = fisher_errorf(err, "the MPI job ended without a result: mpirun %s%s%s", exit_text,
                                last[0] ? ": " : "", last);
    }
    if (w) {
        pthread_mutex_destroy(&w->lock);
        for (int r = 0; r < MPI_RANKS_KEPT; r++) free(w->rank_line[r]);
    }
    free(w);
    return rc;
}

static void worker_main(void *arg) {
    running_job *j = arg;
    fisher_job_callbacks cb = {.ctx = j, .on_log = on_log, .on_groups = on_groups,
                               .on_progress = on_progress, .on_eval = on_eval,
                               .on_checkpoint = on_checkpoint, .on_checkpoint_begin = on_checkpoint_begin,
                               .on_method = on_method};
    job_msg *done = calloc(1, sizeof *done);
    fisher_job_result result;
    fisher_error err = {{0}};
    int rc = j->spec.ranks > 1 ? run_distributed(j, &cb, &result, &err)
             : (j->resume ? fisher_job_resume : fisher_job_run)(&j->spec, j->out_dir, &cb, &j->cancel, &result, &err);
    if (!done) { /* nothing can be told: the loop learns it from the thread's end at stop */
        log_msg(LOG_ERROR, j->id, "out of memory reporting the end of the run");
        return;
    }
    done->kind = MSG_DONE, done->job = j, done->rc = rc, done->result = result, done->err = err;
    done->item.bytes = 0; /* always accepted: an empty budget cannot hold back the last word */
    /* the queue closes only at teardown, after every worker was joined */
    if (record_queue_push(j->s->records, &done->item)) msg_free(done);
}

/* ------------------------------------------------------------ the loop side */

static int write_status(sched *s, int64_t id, store_job_status to, const char *reason, fisher_error *err) {
    if (store_job_set_status(s->db, id, to, reason, store_now(), err)) return -1;
    log_msg(LOG_INFO, id, "%s%s%s", store_job_status_name(to), reason ? ": " : "", reason ? reason : "");
    if (s->cfg.on_status) s->cfg.on_status(s->cfg.ctx, id, to, reason);
    return 0;
}

/* Writes the statuses still unrecorded, oldest first; a job's later ones
 * wait behind its earlier one, so its history keeps their order. */
static void retry_statuses(uv_timer_t *h) {
    sched *s = h->data;
    size_t kept = 0;
    for (size_t i = 0; i < s->n_unrecorded; i++) {
        unrecorded_status *u = &s->unrecorded[i];
        int blocked = 0;
        for (size_t k = 0; k < kept; k++) blocked |= s->unrecorded[k].id == u->id;
        fisher_error err = {{0}};
        if (!blocked && !write_status(s, u->id, u->to, u->reason, &err)) {
            log_msg(LOG_INFO, u->id, "status %s recorded after all", store_job_status_name(u->to));
            free(u->reason);
            continue;
        }
        s->unrecorded[kept++] = *u;
    }
    s->n_unrecorded = kept;
    if (!kept) uv_timer_stop(&s->retry);
}

static void set_status(sched *s, int64_t id, store_job_status to, const char *reason) {
    fisher_error err = {{0}};
    int queued_behind = 0;
    for (size_t i = 0; i < s->n_unrecorded; i++) queued_behind |= s->unrecorded[i].id == id;
    if (!queued_behind && !write_status(s, id, to, reason, &err)) return;
    if (!queued_behind)
        log_msg(LOG_ERROR, id, "cannot record status %s: %s; trying again every %d ms", store_job_status_name(to),
                err.msg, STATUS_RETRY_MS);
    unrecorded_status *grown = realloc(s->unrecorded, (s->n_unrecorded + 1) * sizeof *grown);
    char *copy = reason ? strdup(reason) : NULL;
    if (!grown || (reason && !copy)) { /* nothing more to be done: it stays as the store has it */
        if (grown) s->unrecorded = grown;
        free(copy);
        log_msg(LOG_ERROR, id, "out of memory keeping status %s to write later", store_job_status_name(to));
        return;
    }
    s->unrecorded = grown;
    s->unrecorded[s->n_unrecorded++] = (unrecorded_status){id, to, copy};
    if (!uv_is_active((uv_handle_t *)&s->retry)) uv_timer_start(&s->retry, retry_statuses, STATUS_RETRY_MS, STATUS_RETRY_MS);
}

static int waiting_push(sched *s, int64_t id) {
    if (s->n_waiting == s->cap_waiting) {
        size_t cap = s->cap_waiting ? 2 * s->cap_waiting : 16;
        int64_t *w = realloc(s->waiting, cap * sizeof *w);
        if (!w) return -1;
        s->waiting = w, s->cap_waiting = cap;
    }
    s->waiting[s->n_waiting++] = id;
    return 0;
}

static int waiting_remove(sched *s, int64_t id) {
    for (size_t i = 0; i < s->n_waiting; i++)
        if (s->waiting[i] == id) {
            memmove(s->waiting + i, s->waiting + i + 1, (s->n_waiting - i - 1) * sizeof *s->waiting);
            s->n_waiting--;
            return 1;
        }
    return 0;
}

/* The job's status and (optionally) its JSON; -1 when it cannot be read. */
static int job_status(sched *s, int64_t id, store_job_status *st, json_t **job_out) {
    json_t *job = NULL;
    if (store_job_get(s->db, id, &job, NULL)) return -1;
    int rc = store_job_status_parse(json_string_value(json_object_get(job, "status")), st);
    if (job_out && !rc) *job_out = job;
    else json_decref(job);
    return rc;
}

/* The step of the checkpoint in a job's folder, 0 when there is none (or
 * it cannot be read, and the run starts over). The file, not the store's
 * checkpoint record, says where a resumed run continues: a kill between
 * the file's rename and the record's commit leaves the file ahead, and
 * what the run reported up to the file's step is committed by then
 * (on_checkpoint_begin). Temporaries of checkpoints cut short by a kill
 * are removed here: nothing else would ever remove them. */
static int64_t checkpoint_step(const char *out_dir) {
    char path[PATH_MAX + 288];
    DIR *dir = opendir(out_dir);
    for (struct dirent *e; dir && (e = readdir(dir));)
        if (!strncmp(e->d_name, "checkpoint.safetensors.tmp.", 27) ||
            !strncmp(e->d_name, "model.safetensors.tmp.", 22)) {
            snprintf(path, sizeof path, "%s/%s", out_dir, e->d_name);
            unlink(path);
        }
    if (dir) closedir(dir);
    snprintf(path, sizeof path, "%s/checkpoint.safetensors", out_dir);
    if (access(path, R_OK)) return 0;
    fisher_error err = {{0}};
    fisher_safetensors *st = fisher_safetensors_open(path, &err);
    const char *step = st ? fisher_safetensors_metadata(st, "step") : NULL;
    int64_t at = step ? strtoll(step, NULL, 10) : 0;
    fisher_safetensors_close(st);
    return at > 0 ? at : 0;
}

/* Tries to start job id: 1 started, 0 keeps waiting, -1 left the queue
 * (it failed to start or the job it waits for ended badly). */
static int try_start_one(sched *s, int64_t id) {
    json_t *job = NULL;
    store_job_status st;
    if (job_status(s, id, &st, &job)) return -1;
    int result = -1;
    char base_path[PATH_MAX] = "";
    const char *wait = json_string_value(json_object_get(job, "wait_for_job"));
    if (wait) {
        int64_t wid;
        store_job_status wst;
        if (store_id_parse(wait, 'j', &wid) || job_status(s, wid, &wst, NULL)) {
            set_status(s, id, STORE_JOB_FAILED, "the job whose model it needs is gone");
            goto out;
        }
        if (wst == STORE_JOB_FAILED || wst == STORE_JOB_CANCELLED) {
            char why[160];
            snprintf(why, sizeof why, "the job whose model it needs, %s, %s", wait, store_job_status_name(wst));
            set_status(s, id, STORE_JOB_FAILED, why);
            goto out;
        }
        if (wst != STORE_JOB_SUCCEEDED) {
            char why[160];
            snprintf(why, sizeof why, "waits for the model of %s (%s)", wait, store_job_status_name(wst));
            const char *now = json_string_value(json_object_get(job, "reason"));
            if (!now || strcmp(now, why)) set_status(s, id, STORE_JOB_QUEUED, why);
            result = 0;
            goto out;
        }
        snprintf(base_path, sizeof base_path, "%s/jobs/%s/model.safetensors", s->data_dir, wait);
    }
    running_job *j = calloc(1, sizeof *j);
    char *spec_text = json_dumps(json_object_get(job, "spec"), JSON_COMPACT);
    char field[128];
    fisher_error err = {{0}};
    if (j) fisher_job_spec_defaults(&j->spec);
    if (!j || !spec_text || fisher_job_spec_parse(&j->spec, spec_text, field, sizeof field, &err)) {
        char why[600];
        snprintf(why, sizeof why, "cannot start: %s", j && spec_text ? err.msg : "out of memory");
        set_status(s, id, STORE_JOB_FAILED, why);
        free(j), free(spec_text);
        goto out;
    }
    free(spec_text);
    if (base_path[0]) snprintf(j->spec.base_path, sizeof j->spec.base_path, "%s", base_path);
    if (j->spec.threads > s->cfg.threads) j->spec.threads = s->cfg.threads;
    /* a daemon's job checkpoints as it goes, so a crash loses at most this many steps */
    if (!j->spec.checkpoint_interval) j->spec.checkpoint_interval = DEFAULT_CHECKPOINT_INTERVAL;
    j->s = s, j->id = id, j->chunks_live = -1;
    snprintf(j->out_dir, sizeof j->out_dir, "%s/jobs/j_%lld", s->data_dir, (long long)id);
    if (cli_make_dir(j->out_dir) || store_job_set_out_dir(s->db, id, j->out_dir, &err)) {
        set_status(s, id, STORE_JOB_FAILED, "cannot create the job's folder under --data-dir");
        free(j);
        goto out;
    }
    if (st == STORE_JOB_INTERRUPTED) {
        /* it continues from its last checkpoint, or from step 0 without one;
         * what it recorded after that point goes, since the run writes those
         * steps again: the history stays one run */
        int64_t at = checkpoint_step(j->out_dir);
        j->resume = at > 0;
        store_record rewind = {.kind = STORE_REC_REWIND, .job = id, .rewind = {.step = j->resume ? at : 0}};
        if (store_write(s->db, &rewind, 1, &err))
            log_msg(LOG_WARN, id, "cannot clear its records after step %lld: %s", (long long)rewind.rewind.step,
                    err.msg);
        char why[96];
        snprintf(why, sizeof why, "continues from step %lld", (long long)rewind.rewind.step);
        set_status(s, id, STORE_JOB_QUEUED, why);
    }
    set_status(s, id, STORE_JOB_RUNNING, NULL);
    if (uv_thread_create(&j->thread, worker_main, j)) {
        set_status(s, id, STORE_JOB_FAILED, "cannot create its thread");
        free(j);
        goto out;
    }
    j->next = s->running, s->running = j, s->n_running++;
    result = 1;
out:
    json_decref(job);
    return result;
}

/* Starts waiting jobs, oldest first, while slots are free. */
static void try_start(sched *s) {
    for (size_t i = 0; i < s->n_waiting && s->n_running < s->cfg.max_jobs && !s->stopping;) {
        int64_t id = s->waiting[i];
        int r = try_start_one(s, id);
        if (r == 0) i++;
        else waiting_remove(s, id);
    }
}

/* The end of a run: its last records, its results, its model, its status. */
static void finish(sched *s, job_msg *done) {
    running_job *j = done->job;
    uv_thread_join(&j->thread);
    for (running_job **p = &s->running; *p; p = &(*p)->next)
        if (*p == j) {
            *p = j->next;
            break;
        }
    s->n_running--;
    fisher_job_result *r = &done->result;
    if (j->lost[0]) {
        set_status(s, j->id, STORE_JOB_FAILED, j->lost);
    } else if (done->rc) {
        set_status(s, j->id, STORE_JOB_FAILED, done->err.msg);
    } else if (r->cancelled) {
        set_status(s, j->id, j->stopped_by_daemon ? STORE_JOB_INTERRUPTED : STORE_JOB_CANCELLED,
                   j->stopped_by_daemon ? "the daemon stopped; it runs again at the next start" : "cancelled");
    } else {
        json_t *zs = json_array();
        for (int i = 0; i < r->n_zero_shot; i++)
            json_array_append_new(zs, json_pack("{s:s, s:f, s:f}", "dataset", r->zero_shot[i].dataset,
                                                "iou", r->zero_shot[i].metrics.iou, "f1", r->zero_shot[i].metrics.f1));
        json_t *res = json_pack("{s:I, s:b, s:I, s:{s:f, s:f, s:f}, s:o, s:f, s:I, s:I, s:f, s:f}",
                                "steps_done", (json_int_t)r->steps_done, "stopped_early", r->stopped_early,
                                "best_step", (json_int_t)r->best_step,
                                "val", "iou", r->final_val.metrics.iou, "f1", r->final_val.metrics.f1,
                                "loss", r->final_val.loss, "zero_shot", zs, "wall_seconds", r->wall_seconds,
                                "parameters", (json_int_t)r->parameters,
                                "params_trainable", (json_int_t)r->params_trainable,
                                "params_trainable_mean", r->params_trainable_mean,
                                "step_seconds_mean", r->step_seconds_mean);
        char *res_text = res ? json_dumps(res, JSON_COMPACT) : NULL;
        json_decref(res);
        char model_path[PATH_MAX + 32];
        snprintf(model_path, sizeof model_path, "%s/model.safetensors", j->out_dir);
        struct stat stt;
        int64_t bytes = stat(model_path, &stt) ? 0 : (int64_t)stt.st_size;
        job_msg *evals[1 + FISHER_MAX_ZERO_SHOT] = {0};
        store_record recs[3 + FISHER_MAX_ZERO_SHOT];
        size_t n = 0;
        recs[n++] = (store_record){.kind = STORE_REC_RESULT, .job = j->id, .result = {res_text ? res_text : "{}"}};
        evals[0] = eval_msg(j, &r->final_val, 1);
        for (int i = 0; i < r->n_zero_shot; i++) evals[1 + i] = eval_msg(j, &r->zero_shot[i], 1);
        for (int i = 0; i <= r->n_zero_shot; i++)
            if (evals[i]) recs[n++] = evals[i]->rec;
        recs[n++] = (store_record){.kind = STORE_REC_MODEL, .job = j->id,
                                   .model = {j->spec.name, model_path, j->spec.base_config,
                                             (int64_t)r->parameters, bytes, store_now(), NULL}};
        fisher_error err = {{0}};
        if (store_write(s->db, recs, n, &err)) {
            set_status(s, j->id, STORE_JOB_FAILED, err.msg);
        } else {
            if (s->cfg.on_records) s->cfg.on_records(s->cfg.ctx, recs, n);
            set_status(s, j->id, STORE_JOB_SUCCEEDED, NULL);
        }
        for (int i = 0; i <= r->n_zero_shot; i++) msg_free(evals[i]);
        free(res_text);
    }
    free(j);
    if (!s->n_running) { /* idle: give back the write cache and the run's freed buffers */
        store_release_memory(s->db);
        malloc_trim(0);
    }
}

/* The records of a batch, up to (not including) a run's end, written in
 * one transaction. A failed batch is retried record by record, so one bad
 * record costs only its own run: a run that cannot record what it does
 * (the disk is full) is stopped and fails saying why, rather than
 * training on with holes in its history. */
static void write_batch(sched *s, job_msg **msgs, size_t n) {
    if (!n) return;
    store_record *recs = malloc(n * sizeof *recs);
    fisher_error err = {{0}};
    int any_lost = 0;
    for (size_t i = 0; i < n && !any_lost; i++) any_lost = msgs[i]->job->lost[0] != 0;
    if (recs && !any_lost) {
        for (size_t i = 0; i < n; i++) recs[i] = msgs[i]->rec;
        if (!store_write(s->db, recs, n, &err)) {
            if (s->cfg.on_records) s->cfg.on_records(s->cfg.ctx, recs, n);
            free(recs);
            return;
        }
        log_msg(LOG_WARN, 0, "a batch of %zu records failed (%s); writing them one by one", n, err.msg);
    }
    for (size_t i = 0; i < n; i++) {
        running_job *j = msgs[i]->job;
        if (j->lost[0]) continue; /* its run is being stopped */
        if (!store_write(s->db, &msgs[i]->rec, 1, &err)) {
            if (s->cfg.on_records) s->cfg.on_records(s->cfg.ctx, &msgs[i]->rec, 1);
            continue;
        }
        snprintf(j->lost, sizeof j->lost, "cannot record its history: %.480s", err.msg);
        fisher_utf8_clip(j->lost);
        log_msg(LOG_ERROR, j->id, "%s; stopping it", j->lost);
        j->cancel = 1;
    }
    free(recs);
}

static void drain_records(sched *s) {
    record_item *all = record_queue_take_all(s->records);
    size_t cap = 0, n = 0;
    for (record_item *it = all; it; it = it->next) cap++;
    job_msg **batch = malloc((cap ? cap : 1) * sizeof *batch);
    int any_done = 0;
    for (record_item *it = all, *next; it; it = next) {
        next = it->next;
        job_msg *m = (job_msg *)it;
        if (m->kind == MSG_RECORD && batch) {
            batch[n++] = m;
            continue;
        }
        if (m->kind == MSG_RECORD) { /* no memory for a batch: one at a time */
            write_batch(s, &m, 1);
            msg_free(m);
            continue;
        }
        if (m->kind == MSG_BARRIER) { /* the worker waits for it, and frees it */
            write_batch(s, batch, n);
            for (size_t i = 0; i < n; i++) msg_free(batch[i]);
            n = 0;
            pthread_mutex_lock(&s->lock);
            m->committed = 1;
            pthread_cond_broadcast(&s->answered);
            pthread_mutex_unlock(&s->lock);
            continue;
        }
        /* a run's end: what came before it is committed first (invariant 2) */
        write_batch(s, batch, n);
        for (size_t i = 0; i < n; i++) msg_free(batch[i]);
        n = 0;
        finish(s, m);
        msg_free(m);
        any_done = 1;
    }
    write_batch(s, batch, n);
    for (size_t i = 0; i < n; i++) msg_free(batch[i]);
    free(batch);
    if (any_done) try_start(s);
}

static void run_command(sched *s, command *c) {
    store_job_status st;
    switch (c->kind) {
    case CMD_SUBMIT: {
        char why[96] = "";
        if (c->job->wait_for_job)
            snprintf(why, sizeof why, "waits for the model of j_%lld", (long long)c->job->wait_for_job);
        store_job_new nj = {.name = c->job->name, .spec = c->job->spec_json, .base_model = c->job->base_model,
                            .wait_for_job = c->job->wait_for_job, .reason = why[0] ? why : NULL,
                            .created_at = store_now()};
        c->rc = store_job_insert(s->db, &nj, &c->id, &c->err);
        if (!c->rc && waiting_push(s, c->id)) {
            set_status(s, c->id, STORE_JOB_FAILED, "out of memory queueing it");
        } else if (!c->rc) {
            log_msg(LOG_INFO, c->id, "queued: %s", c->job->name);
            try_start(s);
        }
        break;
    }
    case CMD_CANCEL:
        if (job_status(s, c->id, &st, NULL)) {
            c->rc = STORE_NOT_FOUND;
            fisher_errorf(&c->err, "no job j_%lld", (long long)c->id);
            break;
        }
        if (store_job_status_terminal(st)) {
            c->rc = STORE_CONFLICT;
            fisher_errorf(&c->err, "job j_%lld already %s", (long long)c->id, store_job_status_name(st));
            break;
        }
        c->rc = STORE_OK;
        if (st == STORE_JOB_RUNNING) {
            for (running_job *j = s->running; j; j = j->next)
                if (j->id == c->id) j->cancel = 1; /* it becomes cancelled when it ends */
        } else {
            waiting_remove(s, c->id);
            set_status(s, c->id, STORE_JOB_CANCELLED, "cancelled before it started");
        }
        break;
    case CMD_DELETE:
        c->rc = store_job_delete(s->db, c->id, &c->err);
        if (!c->rc) log_msg(LOG_INFO, c->id, "deleted");
        break;
    case CMD_REGISTER_MODEL: {
        const store_record *m = c->model;
        c->rc = store_model_register(s->db, m->model.name, m->model.path, m->model.config, m->model.parameters,
                                     m->model.bytes, 0, m->model.created_at, &c->id, &c->err);
        if (!c->rc) log_msg(LOG_INFO, 0, "registered model m_%lld from an upload: %s", (long long)c->id, m->model.path);
        break;
    }
    }
}

static void on_doorbell(uv_async_t *h) {
    sched *s = h->data;
    drain_records(s);
    pthread_mutex_lock(&s->lock);
    command *cmds = s->commands;
    s->commands = NULL;
    pthread_mutex_unlock(&s->lock);
    /* the list was pushed newest first: run in arrival order */
    command *ordered = NULL;
    while (cmds) {
        command *next = cmds->next;
        cmds->next = ordered, ordered = cmds, cmds = next;
    }
    for (command *c = ordered, *next; c; c = next) {
        next = c->next;
        if (s->stopping && c->kind == CMD_SUBMIT) {
            c->rc = STORE_BUSY;
            fisher_errorf(&c->err, "the daemon is stopping; submit again once it is back");
        } else {
            run_command(s, c);
        }
        pthread_mutex_lock(&s->lock);
        c->done = 1;
        pthread_cond_broadcast(&s->answered);
        pthread_mutex_unlock(&s->lock);
    }
    if (s->stopping && !s->n_running && s->stopped) {
        void (*done)(void *) = s->stopped;
        s->stopped = NULL;
        done(s->stopped_ctx);
    }
}

/* ------------------------------------------------------------ public */

/* Every queued and interrupted job, oldest first. */
static int load_waiting(sched *s, fisher_error *err) {
    const char *statuses[] = {"queued", "interrupted"};
    for (int k = 0; k < 2; k++) {
        char cursor[64] = "";
        for (;;) {
            store_job_filter f = {.status = statuses[k], .cursor = cursor[0] ? cursor : NULL, .limit = 1000};
            json_t *page;
            int rc = store_jobs_list(s->db, &f, &page, err);
            if (rc) return rc;
            size_t i;
            json_t *job;
            json_array_foreach(json_object_get(page, "jobs"), i, job) {
                int64_t id;
                if (!store_id_parse(json_string_value(json_object_get(job, "id")), 'j', &id) && waiting_push(s, id)) {
                    json_decref(page);
                    return fisher_errorf(err, "out of memory loading the queue");
                }
            }
            const char *next = json_string_value(json_object_get(page, "next_cursor"));
            snprintf(cursor, sizeof cursor, "%s", next ? next : "");
            json_decref(page);
            if (!cursor[0]) break;
        }
    }
    /* ids grow with submission: sorting them is oldest first */
    for (size_t i = 1; i < s->n_waiting; i++)
        for (size_t k = i; k > 0 && s->waiting[k - 1] > s->waiting[k]; k--) {
            int64_t t = s->waiting[k];
            s->waiting[k] = s->waiting[k - 1], s->waiting[k - 1] = t;
        }
    return 0;
}

int sched_start(uv_loop_t *loop, store *db, const sched_config *cfg, sched **out, fisher_error *err) {
    *out = NULL;
    sched *s = calloc(1, sizeof *s);
    if (!s) return fisher_errorf(err, "out of memory starting the scheduler");
    if (strlen(cfg->data_dir) >= sizeof s->data_dir) {
        free(s);
        store_close(db);
        return fisher_errorf(err, "--data-dir is longer than %zu characters", sizeof s->data_dir - 1);
    }
    s->loop = loop, s->db = db, s->cfg = *cfg;
    if (s->cfg.max_jobs < 1) s->cfg.max_jobs = 1;
    if (s->cfg.threads < 1) s->cfg.threads = 1;
    snprintf(s->data_dir, sizeof s->data_dir, "%s", cfg->data_dir);
    snprintf(s->mpirun, sizeof s->mpirun, "%s", cfg->mpirun && cfg->mpirun[0] ? cfg->mpirun : "mpirun");
    snprintf(s->hostfile_dir, sizeof s->hostfile_dir, "%s", cfg->hostfile_dir ? cfg->hostfile_dir : "");
    /* the path, not /proc/self/exe: mpirun execs it (on other hosts too) */
    ssize_t n = readlink("/proc/self/exe", s->self_exe, sizeof s->self_exe - 1);
    s->self_exe[n > 0 ? n : 0] = 0;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->answered, NULL);
    s->records = record_queue_create(cfg->queue_bytes ? cfg->queue_bytes : DEFAULT_QUEUE_BYTES, ring, s);
    if (!s->records || uv_async_init(loop, &s->doorbell, on_doorbell)) {
        record_queue_free(s->records);
        free(s);
        store_close(db);
        return fisher_errorf(err, "cannot set up the scheduler's queue");
    }
    s->doorbell.data = s;
    uv_timer_init(loop, &s->retry);
    s->retry.data = s;
    size_t interrupted = 0;
    if (store_jobs_interrupt_running(db, "the daemon stopped while it ran", store_now(), &interrupted, err) ||
        load_waiting(s, err)) {
        *out = s; /* the caller closes and frees */
        return -1;
    }
    if (interrupted) log_msg(LOG_WARN, 0, "%zu job(s) were running when the daemon last stopped", interrupted);
    log_msg(LOG_INFO, 0, "%zu job(s) waiting", s->n_waiting);
    try_start(s);
    *out = s;
    return 0;
}

static int call(sched *s, command *c, fisher_error *err) {
    pthread_mutex_lock(&s->lock);
    c->next = s->commands, s->commands = c;
    pthread_mutex_unlock(&s->lock);
    uv_async_send(&s->doorbell);
    pthread_mutex_lock(&s->lock);
    while (!c->done) pthread_cond_wait(&s->answered, &s->lock);
    pthread_mutex_unlock(&s->lock);
    if (c->rc && err) *err = c->err;
    return c->rc;
}

int sched_submit(sched *s, const sched_job *job, int64_t *id, fisher_error *err) {
    command c = {.kind = CMD_SUBMIT, .job = job};
    int rc = call(s, &c, err);
    if (!rc) *id = c.id;
    return rc;
}

int sched_cancel(sched *s, int64_t id, fisher_error *err) {
    command c = {.kind = CMD_CANCEL, .id = id};
    return call(s, &c, err);
}

int sched_delete(sched *s, int64_t id, fisher_error *err) {
    command c = {.kind = CMD_DELETE, .id = id};
    return call(s, &c, err);
}

int sched_register_model(sched *s, const char *name, const char *path, const char *config,
                         int64_t parameters, int64_t bytes, int64_t *id, fisher_error *err) {
    store_record m = {.kind = STORE_REC_MODEL, .model = {name, path, config, parameters, bytes, store_now(), NULL}};
    command c = {.kind = CMD_REGISTER_MODEL, .model = &m};
    int rc = call(s, &c, err);
    if (!rc) *id = c.id;
    return rc;
}

void sched_stop(sched *s, void (*done)(void *ctx), void *ctx) {
    s->stopping = 1;
    s->stopped = done, s->stopped_ctx = ctx;
    for (running_job *j = s->running; j; j = j->next) j->stopped_by_daemon = 1, j->cancel = 1;
    uv_async_send(&s->doorbell); /* done() comes from the doorbell once nothing runs */
}

int sched_running(sched *s) { return s->n_running; }

size_t sched_waiting(sched *s) { return s->n_waiting; }

size_t sched_queued_bytes(sched *s) { return record_queue_bytes(s->records); }

void sched_close(sched *s) {
    if (!s) return;
    uv_close((uv_handle_t *)&s->doorbell, NULL);
    uv_close((uv_handle_t *)&s->retry, NULL);
}

void sched_free(sched *s) {
    if (!s) return;
    record_queue_close(s->records);
    for (record_item *it = record_queue_take_all(s->records), *next; it; it = next)
        next = it->next, msg_free((job_msg *)it);
    record_queue_free(s->records);
    store_close(s->db);
    pthread_cond_destroy(&s->answered);
    pthread_mutex_destroy(&s->lock);
    for (size_t i = 0; i < s->n_unrecorded; i++) free(s->unrecorded[i].reason);
    free(s->unrecorded);
    free(s->waiting);
    free(s);
}
