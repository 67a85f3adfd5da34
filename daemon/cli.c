/* cli.c — see cli.h. */
#include "cli.h"

#include "fileio.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int cli_parse_long(const char *opt, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "fisherd: %s must be an integer in [%ld, %ld], got '%s'\n", opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_parse_float(const char *opt, const char *s, double lo, double hi, float *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "fisherd: %s must be a number in [%g, %g], got '%s'\n", opt, lo, hi, s);
        return -1;
    }
    *out = (float)v;
    return 0;
}

char *cli_read_file_err(const char *path, size_t max_bytes, fisher_error *err) {
    size_t len;
    unsigned char *buf = fisher_file_read(path, &len, err);
    if (buf && (len > max_bytes || memchr(buf, '\0', len))) {
        fisher_errorf(err, "%s: %s", path, len > max_bytes ? "too large" : "not a text file");
        free(buf);
        return NULL;
    }
    return (char *)buf;
}

char *cli_read_file(const char *path, size_t max_bytes) {
    fisher_error err = {{0}};
    char *text = cli_read_file_err(path, max_bytes, &err);
    if (!text) fprintf(stderr, "fisherd: %s\n", err.msg);
    return text;
}

int cli_make_dir_err(const char *path, fisher_error *err) {
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s", path) >= (int)sizeof tmp)
        return fisher_errorf(err, "%.64s...: path too long", path);
    for (char *p = tmp + 1;; p++) {
        char c = *p;
        if (c != '/' && c != '\0') continue;
        *p = '\0';
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
            return fisher_errorf(err, "cannot create directory %s: %s", tmp, strerror(errno));
        *p = c;
        if (c == '\0') break;
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) return fisher_errorf(err, "%s is not a directory", path);
    return 0;
}

int cli_make_dir(const char *path) {
    fisher_error err = {{0}};
    if (!cli_make_dir_err(path, &err)) return 0;
    fprintf(stderr, "fisherd: %s\n", err.msg);
    return -1;
}
