/*
 * notify.c — see notify.h. A thin layer over libsystemd's sd_notify, so
 * the rest of the daemon speaks of readiness and status, not of the
 * protocol's key=value datagrams.
 */
#include "notify.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <systemd/sd-daemon.h> /* the functions' signatures */

/* libsystemd is loaded only when a service manager is listening
 * (NOTIFY_SOCKET set): linked, it and what it pulls in (libgcrypt, lz4,
 * zstd, …) were ~1 MB of every daemon's resident memory, in a terminal and
 * in tests too (serve_bench: 11.0 MB after start, 20.3 after the
 * benchmark, over its 20 MB target). Without it every call does nothing. */
static struct {
    __typeof__(sd_notify) *notify;
    __typeof__(sd_watchdog_enabled) *watchdog_enabled;
} sd;
static pthread_once_t sd_once = PTHREAD_ONCE_INIT;

static void sd_load(void) {
    if (!getenv("NOTIFY_SOCKET")) return;
    void *lib = dlopen("libsystemd.so.0", RTLD_NOW | RTLD_LOCAL);
    if (!lib) return;
    /* POSIX's way to take a function from dlsym (C has no such cast) */
    *(void **)&sd.notify = dlsym(lib, "sd_notify");
    *(void **)&sd.watchdog_enabled = dlsym(lib, "sd_watchdog_enabled");
}

/* unset_environment 0 throughout: every call reads the variables afresh,
 * and fisherd starts no child process that could inherit them by mistake
 * (its one exec, openmp_env.c's, replaces itself before any of this). */
static void send_state(const char *state) {
    pthread_once(&sd_once, sd_load);
    if (sd.notify) sd.notify(0, state);
}

static void send_statef(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void send_statef(const char *fmt, ...) {
    char state[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(state, sizeof state, fmt, ap);
    va_end(ap);
    send_state(state);
}

void notify_ready(const char *status) { send_statef("READY=1\nSTATUS=%s", status); }

void notify_stopping(const char *status) { send_statef("STOPPING=1\nSTATUS=%s", status); }

void notify_status(const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    send_statef("STATUS=%s", line);
}

uint64_t notify_watchdog_interval_ms(void) {
    pthread_once(&sd_once, sd_load);
    uint64_t usec = 0;
    if (!sd.watchdog_enabled || sd.watchdog_enabled(0, &usec) <= 0 || !usec) return 0;
    /* half the period, as sd_watchdog_enabled(3) advises: one late ping
     * under load must not cost a restart */
    uint64_t ms = usec / 2000;
    return ms ? ms : 1;
}

void notify_watchdog(void) { send_state("WATCHDOG=1"); }
