/*
 * notify.c — see notify.h. A thin layer over libsystemd's sd_notify, so
 * the rest of the daemon speaks of readiness and status, not of the
 * protocol's key=value datagrams.
 */
#include "notify.h"

#include <stdarg.h>
#include <stdio.h>
#include <systemd/sd-daemon.h>

/* unset_environment 0 throughout: every call reads the variables afresh,
 * and fisherd starts no child process that could inherit them by mistake
 * (its one exec, openmp_env.c's, replaces itself before any of this). */

void notify_ready(const char *status) { sd_notifyf(0, "READY=1\nSTATUS=%s", status); }

void notify_stopping(const char *status) { sd_notifyf(0, "STOPPING=1\nSTATUS=%s", status); }

void notify_status(const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    sd_notifyf(0, "STATUS=%s", line);
}

uint64_t notify_watchdog_interval_ms(void) {
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) <= 0 || !usec) return 0;
    /* half the period, as sd_watchdog_enabled(3) advises: one late ping
     * under load must not cost a restart */
    uint64_t ms = usec / 2000;
    return ms ? ms : 1;
}

void notify_watchdog(void) { sd_notify(0, "WATCHDOG=1"); }
