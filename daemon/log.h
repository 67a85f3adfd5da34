/*
 * log.h — the daemon's log: one plain line per event on stderr, with a
 * level and, when there is one, the job it concerns:
 *
 *   info j_12: step 300/3000, 41 of 96 groups live
 *
 * No timestamps: under systemd the journal stamps every line, and in a
 * terminal the order is what matters. When stderr is the journal's stream
 * (JOURNAL_STREAM), each line starts with its syslog priority ("<4>warn:
 * ..."), which journald takes off and keeps, so `journalctl -p warning`
 * works. The threshold and that choice are process-wide and set once at
 * start-up (log_set_level), before any thread is created.
 */
#ifndef FISHERD_LOG_H
#define FISHERD_LOG_H

#include <stdint.h>

typedef enum { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 } log_level;

/* "error" | "warn" | "info" | "debug" → 0 and *level, or -1. */
int log_level_parse(const char *name, log_level *level);
void log_set_level(log_level level);
int log_enabled(log_level level);

/* job_id 0: not about a job. Thread-safe: one write(2) per line. */
void log_msg(log_level level, int64_t job_id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
