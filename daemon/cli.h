/*
 * cli.h — what the fisherd subcommands share: option parsing that says
 * exactly what is wrong, and small file helpers. Exit statuses: 0 success,
 * 1 the work failed, 2 the command line was wrong.
 */
#ifndef FISHERD_CLI_H
#define FISHERD_CLI_H

#include <stddef.h>

#include "error.h"

/* Parse a whole-string number in [lo, hi]; on failure print
 * "fisherd: OPT must be ..." to stderr and return -1. */
int cli_parse_long(const char *opt, const char *s, long lo, long hi, long *out);
int cli_parse_float(const char *opt, const char *s, double lo, double hi, float *out);

/* The whole file as a NUL-terminated string (malloc'd), or NULL with a
 * message printed. Refuses files over max_bytes. */
char *cli_read_file(const char *path, size_t max_bytes);

/* mkdir -p for one path; 0 or -1 with a message printed. */
int cli_make_dir(const char *path);

/* The same two with the reason in err instead of on stderr, for callers
 * that must say more than "fisherd:" (a worker names its rank and host). */
char *cli_read_file_err(const char *path, size_t max_bytes, fisher_error *err);
int cli_make_dir_err(const char *path, fisher_error *err);

int fisherd_serve(int argc, char **argv);
int fisherd_train(int argc, char **argv);
int fisherd_predict(int argc, char **argv);
int fisherd_eval(int argc, char **argv);
int fisherd_dataset(int argc, char **argv);
int fisherd_worker(int argc, char **argv);

#endif
