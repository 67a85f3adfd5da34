/*
 * serve_config.h — how `fisherd serve` is configured: flags, an optional
 * JSON config file with the same keys, defaults, and the checks that keep a
 * daemon from starting in a state it should not run in (listening beyond
 * loopback without a token, a data root that is not a folder).
 *
 * Precedence: defaults < config file (--config FILE) < flags.
 *
 *   flag            config key     default
 *   --listen        "listen"       127.0.0.1:8080   HOST:PORT, [V6]:PORT
 *   --data-dir      "data_dir"     ./var            SQLite database, models, job folders
 *   --max-jobs      "max_jobs"     1                jobs training at once, 1..64
 *   --threads       "threads"      2                compute threads per job, 1..256
 *   --data-root     "data_roots"   none             folders dataset paths may lie under
 *                                                   (repeatable / an array)
 *   --token-file    "token_file"   none             bearer token for writes (and reads
 *                                                   with --auth-reads)
 *   --auth-reads    "auth_reads"   false
 *   --web-root      "web_root"     ./web            the dashboard's static files
 *   --log-level     "log_level"    info             error | warn | info | debug
 *   --http-timeout  "http_timeout" 30               seconds a connection may idle, or take
 *                                                   to send a request's headers
 *   --hostfile-dir  "hostfile_dir" none             folder of Open MPI hostfiles that
 *                                                   distributed jobs may name; without it
 *                                                   they run on this machine only
 *   --mpirun        "mpirun"       mpirun           the launcher of distributed jobs (a
 *                                                   path, or a name looked up in PATH)
 */
#ifndef FISHERD_SERVE_CONFIG_H
#define FISHERD_SERVE_CONFIG_H

#include <limits.h>
#include <stddef.h>

#include "log.h"

#define SERVE_MAX_DATA_ROOTS 16

typedef struct {
    char listen[256];
    char host[256];                 /* from listen, without brackets */
    int port;
    char data_dir[PATH_MAX];
    int max_jobs;
    int threads;
    int http_timeout;               /* seconds */
    char data_roots[SERVE_MAX_DATA_ROOTS][PATH_MAX]; /* resolved (realpath) */
    int n_data_roots;
    char token_file[PATH_MAX];
    char token[256];                /* read from token_file, whitespace trimmed */
    int auth_reads;
    char web_root[PATH_MAX];
    log_level log_level;
    char hostfile_dir[PATH_MAX];    /* resolved (realpath); "" = none */
    char mpirun[PATH_MAX];
} serve_config;

void serve_config_defaults(serve_config *c);

/* Fills c from argv (argv[0] = "serve") over the config file over the
 * defaults, then checks it as a whole. Returns 0, 1 when --help was asked
 * (usage printed to stdout), or -1 with msg saying what is wrong. */
int serve_config_parse(serve_config *c, int argc, char **argv, char *msg, size_t msg_len);

/* The launcher `mpirun` names (a path with a '/', else looked up in PATH
 * as execvp would), resolved into out: 0, or -1 when there is no such
 * executable. Asked again at each use, so installing Open MPI under a
 * running daemon is enough. */
int serve_find_program(const char *name, char *out, size_t len);

/* Whether a host is a loopback address (127.0.0.0/8, ::1, localhost). */
int serve_host_is_loopback(const char *host);

#endif
