/*
 * log.c — see log.h.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The one process-wide setting of the daemon: written once before threads
 * start, read-only afterwards. */
static log_level threshold = LOG_INFO;
static int to_journal; /* stderr is journald's stream: prefix <priority> */

static const char *const names[] = {"error", "warn", "info", "debug"};
static const char *const priorities[] = {"<3>", "<4>", "<6>", "<7>"}; /* syslog's err, warning, info, debug */

int log_level_parse(const char *name, log_level *level) {
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, names[i])) return *level = (log_level)i, 0;
    return -1;
}

/* systemd sets JOURNAL_STREAM to the device and inode of the stream it
 * connects; stderr is the journal only while it is still that very file
 * (a redirection inherits the variable, not the stream). */
static int stderr_is_journal(void) {
    const char *js = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;
    if (!js || sscanf(js, "%llu:%llu", &dev, &ino) != 2 || fstat(STDERR_FILENO, &st)) return 0;
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void log_set_level(log_level level) {
    threshold = level;
    to_journal = stderr_is_journal();
}

int log_enabled(log_level level) { return level <= threshold; }

void log_msg(log_level level, int64_t job_id, const char *fmt, ...) {
    if (!log_enabled(level)) return;
    char line[1024];
    const char *prio = to_journal ? priorities[level] : "";
    int n = job_id ? snprintf(line, sizeof line, "%s%s j_%lld: ", prio, names[level], (long long)job_id)
                   : snprintf(line, sizeof line, "%s%s: ", prio, names[level]);
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
