/*
 * log.c — see log.h.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* The one process-wide setting of the daemon: written once before threads
 * start, read-only afterwards. */
static log_level threshold = LOG_INFO;

static const char *const names[] = {"error", "warn", "info", "debug"};

int log_level_parse(const char *name, log_level *level) {
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, names[i])) return *level = (log_level)i, 0;
    return -1;
}

void log_set_level(log_level level) { threshold = level; }

int log_enabled(log_level level) { return level <= threshold; }

void log_msg(log_level level, int64_t job_id, const char *fmt, ...) {
    if (!log_enabled(level)) return;
    char line[1024];
    int n = job_id ? snprintf(line, sizeof line, "%s j_%lld: ", names[level], (long long)job_id)
                   : snprintf(line, sizeof line, "%s: ", names[level]);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = strlen(line);
    line[len++] = '\n';
    /* one write, so lines from concurrent threads never interleave */
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}
