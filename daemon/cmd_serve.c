/*
 * cmd_serve.c — `fisherd serve`, the long-running daemon. The main thread
 * runs the libuv loop, which reads like the life of the process:
 *
 *   1. configuration (serve_config.h); the data dir; the database, opened
 *      for writing (migrations applied, a newer schema refused)
 *   2. the scheduler on the loop: jobs left running by a previous process
 *      become interrupted; waiting jobs start as slots allow
 *   3. the HTTP server (api.h) on its own threads
 *   4. uv_run until SIGINT/SIGTERM: writes refused (503), running jobs
 *      asked to stop after their current step (they checkpoint and become
 *      interrupted), then the HTTP server is stopped from a helper thread —
 *      its handlers may be waiting for the loop, so the loop must keep
 *      turning meanwhile — and the loop's handles are closed
 *   5. a second signal exits at once: the store is crash-safe, and the
 *      next start treats jobs still marked running as interrupted
 *
 * Under systemd (notify.h) the loop also reports: READY=1 once the port
 * listens, STATUS= whenever the jobs running or queued change, STOPPING=1
 * at the first signal, and WATCHDOG=1 from a timer — a wedged loop stops
 * the pings, and systemd restarts the daemon.
 */
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "api.h"
#include "cli.h"
#include "log.h"
#include "notify.h"
#include "scheduler.h"
#include "serve_config.h"
#include "store.h"
#include "version.h"

typedef struct {
    uv_loop_t loop;
    uv_timer_t trim, watchdog;
    uv_check_t status;              /* after each turn of the loop: STATUS= if it changed */
    int shown_running;
    size_t shown_waiting;
    char url[300];
    uv_signal_t sigint, sigterm;
    uv_async_t http_stopped;
    uv_thread_t closer;
    int closer_started, signals;
    sched *sched;
    api *api;
    http_server *http;
} daemon_state;

static void close_all(daemon_state *d) {
    uv_close((uv_handle_t *)&d->trim, NULL);
    uv_close((uv_handle_t *)&d->watchdog, NULL);
    uv_close((uv_handle_t *)&d->status, NULL);
    uv_close((uv_handle_t *)&d->sigint, NULL);
    uv_close((uv_handle_t *)&d->sigterm, NULL);
    uv_close((uv_handle_t *)&d->http_stopped, NULL);
    sched_close(d->sched);
}

static void on_http_stopped(uv_async_t *h) {
    daemon_state *d = h->data;
    uv_thread_join(&d->closer);
    d->closer_started = 0, d->http = NULL;
    log_msg(LOG_INFO, 0, "stopped");
    close_all(d);
}

static void stop_http(void *arg) {
    daemon_state *d = arg;
    http_server_stop(d->http);
    uv_async_send(&d->http_stopped);
}

static void on_sched_stopped(void *ctx) {
    daemon_state *d = ctx;
    if (uv_thread_create(&d->closer, stop_http, d)) {
        log_msg(LOG_ERROR, 0, "cannot stop the HTTP server cleanly; exiting");
        _exit(1);
    }
    d->closer_started = 1;
}

/* While no job trains, memory freed by request threads goes back to the
 * system every few seconds, so an idle daemon stays small whatever it
 * served (the serve benchmark left 58 MB of freed arena memory behind). */
static void on_trim(uv_timer_t *h) {
    daemon_state *d = h->data;
    if (d->sched && !sched_running(d->sched)) malloc_trim(0);
}

static void on_watchdog(uv_timer_t *h) {
    (void)h;
    notify_watchdog();
}

static void on_status_check(uv_check_t *h) {
    daemon_state *d = h->data;
    int running = sched_running(d->sched);
    size_t waiting = sched_waiting(d->sched);
    if (running == d->shown_running && waiting == d->shown_waiting) return;
    d->shown_running = running, d->shown_waiting = waiting;
    if (d->signals) notify_status("stopping: %d job(s) checkpointing", running);
    else notify_status("%d job(s) running, %zu queued; %s", running, waiting, d->url);
}

static void on_signal(uv_signal_t *h, int signum) {
    daemon_state *d = h->data;
    if (d->signals++) {
        log_msg(LOG_WARN, 0, "second %s: exiting now (running jobs resume at the next start)", strsignal(signum));
        _exit(128 + signum);
    }
    log_msg(LOG_INFO, 0, "%s: stopping — no new jobs; running jobs checkpoint and stop after their current step",
            strsignal(signum));
    d->shown_running = sched_running(d->sched);
    notify_stopping(d->shown_running ? "stopping: running jobs checkpoint" : "stopping");
    api_stop_accepting(d->api);
    sched_stop(d->sched, on_sched_stopped, d);
}

/* glibc raises its mmap threshold to the size of every large block freed
 * (up to 32 MiB) and its trim threshold to twice that. After a job's big
 * buffers have come and gone, a checkpoint's 15 MB copy of the Fisher EMAs
 * (mit-b0) is then carved from the job thread's arena and, freed, stays at
 * that arena's top, which malloc_trim returns only for the main arena: an
 * idle daemon kept 21 MB of heap instead of 7. Fixed thresholds stop the
 * drift: blocks of 8 MiB and more are always mmap'd (and unmapped when
 * freed); heaps are trimmed past 64 MiB of free top — far above what a step
 * frees, as a low trim threshold made steps 6.5 % slower (mit-b0, measured).
 * GLIBC_TUNABLES naming either knob wins. */
#define MMAP_THRESHOLD_BYTES (8 << 20)
#define TRIM_THRESHOLD_BYTES (64 << 20)
static void fix_malloc_thresholds(void) {
    const char *tunables = getenv("GLIBC_TUNABLES");
    if (tunables && (strstr(tunables, "malloc.mmap_threshold") || strstr(tunables, "malloc.trim_threshold")))
        return;
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
    mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES);
}

int fisherd_serve(int argc, char **argv) {
    serve_config cfg;
    char msg[1024];
    int rc = serve_config_parse(&cfg, argc, argv, msg, sizeof msg);
    if (rc == 1) return 0;
    if (rc) {
        fprintf(stderr, "fisherd serve: %s\n", msg);
        return 2;
    }
    log_set_level(cfg.log_level);
    /* two malloc arenas, not one per request thread: freed memory is then
     * reused across threads instead of lingering in dozens of arenas */
    mallopt(M_ARENA_MAX, 2);
    fix_malloc_thresholds();
    char db_path[PATH_MAX + 16];
    snprintf(db_path, sizeof db_path, "%s/fisherd.db", cfg.data_dir);
    if (cli_make_dir(cfg.data_dir)) return 1;
    fisher_error err = {{0}};
    store *db;
    if (store_open(db_path, 0, &db, &err)) {
        log_msg(LOG_ERROR, 0, "%s", err.msg);
        return 1;
    }
    daemon_state d = {0};
    uv_loop_init(&d.loop);
    d.api = api_create(&cfg, db_path);
    if (!d.api) {
        log_msg(LOG_ERROR, 0, "out of memory");
        store_close(db);
        return 1;
    }
    sched_config sc = {.data_dir = cfg.data_dir, .max_jobs = cfg.max_jobs, .threads = cfg.threads,
                       .mpirun = cfg.mpirun, .hostfile_dir = cfg.hostfile_dir,
                       .on_records = api_on_records, .on_status = api_on_status, .ctx = d.api};
    /* a distributed job's pipe to mpirun may close under a write ("ack",
     * "cancel"): that is the job's end, an EPIPE, not the daemon's */
    signal(SIGPIPE, SIG_IGN);
    char launcher[PATH_MAX];
    if (serve_find_program(cfg.mpirun, launcher, sizeof launcher))
        log_msg(LOG_INFO, 0, "distributed jobs unavailable: mpirun '%s' not found (install openmpi-bin, or give "
                "--mpirun PATH)", cfg.mpirun);
    else
        log_msg(LOG_INFO, 0, "distributed jobs launch with %s%s%s", launcher,
                cfg.hostfile_dir[0] ? "; hostfiles in " : " on this machine only (no --hostfile-dir)",
                cfg.hostfile_dir);
    int failed = 0;
    if (sched_start(&d.loop, db, &sc, &d.sched, &err)) {
        log_msg(LOG_ERROR, 0, "%s", err.msg);
        failed = 1;
    }
    api_set_sched(d.api, d.sched);
    if (!failed && api_serve(d.api, &d.http, &err)) {
        log_msg(LOG_ERROR, 0, "%s", err.msg);
        failed = 1;
    }
    uv_signal_init(&d.loop, &d.sigint);
    uv_signal_init(&d.loop, &d.sigterm);
    uv_async_init(&d.loop, &d.http_stopped, on_http_stopped);
    uv_timer_init(&d.loop, &d.trim);
    uv_timer_init(&d.loop, &d.watchdog);
    uv_check_init(&d.loop, &d.status);
    d.sigint.data = d.sigterm.data = d.http_stopped.data = d.trim.data = d.status.data = &d;
    if (failed) {
        /* nothing runs yet that needs stopping: close what was opened */
        if (d.sched) sched_stop(d.sched, NULL, NULL);
        http_server_stop(d.http), d.http = NULL;
        close_all(&d);
    } else {
        uv_timer_start(&d.trim, on_trim, 5000, 5000);
        uv_unref((uv_handle_t *)&d.trim); /* it alone does not keep the daemon running */
        uv_signal_start(&d.sigint, on_signal, SIGINT);
        uv_signal_start(&d.sigterm, on_signal, SIGTERM);
        snprintf(d.url, sizeof d.url, "http://%s%s%s:%u/", strchr(cfg.host, ':') ? "[" : "", cfg.host,
                 strchr(cfg.host, ':') ? "]" : "", http_server_port(d.http));
        log_msg(LOG_INFO, 0, "fisherd %s listening on %s (data in %s, %d job(s) at once, %d thread(s) each)",
                FISHERD_VERSION, d.url, cfg.data_dir, cfg.max_jobs, cfg.threads);
        uint64_t ping_ms = notify_watchdog_interval_ms();
        if (ping_ms) {
            uv_timer_start(&d.watchdog, on_watchdog, ping_ms, ping_ms);
            uv_unref((uv_handle_t *)&d.watchdog);
        }
        d.shown_running = sched_running(d.sched), d.shown_waiting = sched_waiting(d.sched);
        char status[400];
        snprintf(status, sizeof status, "%d job(s) running, %zu queued; %s", d.shown_running, d.shown_waiting, d.url);
        notify_ready(status);
        uv_check_start(&d.status, on_status_check);
        uv_unref((uv_handle_t *)&d.status);
    }
    uv_run(&d.loop, UV_RUN_DEFAULT);
    sched_free(d.sched);
    api_free(d.api);
    uv_loop_close(&d.loop);
    return failed;
}
