/*
 * notify.h — what `fisherd serve` tells its service manager, by the
 * sd_notify(3) protocol (libsystemd): READY=1 once the HTTP port accepts
 * connections, STATUS= lines with what the daemon is doing (jobs running
 * and queued), STOPPING=1 when a signal starts the shutdown, and WATCHDOG=1
 * pings from the event loop, so that systemd restarts a daemon whose loop
 * has wedged (WatchdogSec= in systemd/fisherd.service).
 *
 * Outside systemd (NOTIFY_SOCKET unset) every call does nothing, and
 * libsystemd is not even loaded: the same binary runs in a terminal, in
 * tests and under a unit with Type=notify. Failures to notify are not the daemon's problem:
 * they are ignored, as sd_notify's callers conventionally do.
 */
#ifndef FISHERD_NOTIFY_H
#define FISHERD_NOTIFY_H

#include <stdint.h>

/* READY=1 with a STATUS= line. */
void notify_ready(const char *status);
/* STOPPING=1 with a STATUS= line. */
void notify_stopping(const char *status);
/* STATUS=, printf-style. */
void notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The period, in milliseconds, at which to send notify_watchdog(): half
 * of WatchdogSec (WATCHDOG_USEC, for this process when WATCHDOG_PID is
 * set), at least 1; 0 when the manager wants no pings. */
uint64_t notify_watchdog_interval_ms(void);
/* WATCHDOG=1. */
void notify_watchdog(void);

#endif
