/*
 * serve_config.c — see serve_config.h.
 */
#include "serve_config.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

void serve_config_defaults(serve_config *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->listen, sizeof c->listen, "127.0.0.1:8080");
    snprintf(c->data_dir, sizeof c->data_dir, "./var");
    snprintf(c->web_root, sizeof c->web_root, "./web");
    snprintf(c->mpirun, sizeof c->mpirun, "mpirun");
    c->max_jobs = 1;
    c->threads = 2;
    c->http_timeout = 30;
    c->log_level = LOG_INFO;
}

static int fail(char *msg, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *msg, size_t len, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, len, fmt, ap);
    va_end(ap);
    return -1;
}

static void usage(FILE *out) {
    fprintf(out,
            "usage: fisherd serve [options]\n"
            "\n"
            "Runs the training daemon: a REST API and the dashboard on --listen, jobs on\n"
            "worker threads, every drift measurement and freeze decision in SQLite.\n"
            "\n"
            "  --listen HOST:PORT   where to listen [127.0.0.1:8080]; beyond loopback\n"
            "                       a --token-file is required\n"
            "  --data-dir DIR       database, models and job folders [./var]\n"
            "  --max-jobs N         jobs training at once, 1..64 [1]\n"
            "  --threads N          compute threads per job, 1..256 [2]\n"
            "  --data-root DIR      dataset paths must lie under one of these (repeatable)\n"
            "  --token-file FILE    bearer token required for writes\n"
            "  --auth-reads         require the token for reads too\n"
            "  --web-root DIR       the dashboard's files [./web]\n"
            "  --log-level LEVEL    error | warn | info | debug [info]\n"
            "  --http-timeout S     close a connection idle this long, or whose request has\n"
            "                       not arrived whole by then, 1..3600 seconds [30]\n"
            "  --hostfile-dir DIR   Open MPI hostfiles distributed jobs may name; without\n"
            "                       it they run on this machine only\n"
            "  --mpirun PATH        the launcher of distributed jobs [mpirun, from PATH]\n"
            "  --config FILE        a JSON object with the same keys (listen, data_dir,\n"
            "                       max_jobs, threads, data_roots, token_file, auth_reads,\n"
            "                       web_root, log_level, http_timeout, hostfile_dir,\n"
            "                       mpirun); flags win over it\n"
            "  --help\n");
}

static int copy_str(char *dst, size_t cap, const char *src, const char *what, char *msg, size_t len) {
    if (!*src) return fail(msg, len, "%s must not be empty", what);
    if (strlen(src) >= cap) return fail(msg, len, "%s is too long (%zu characters, at most %zu)", what, strlen(src), cap - 1);
    memcpy(dst, src, strlen(src) + 1);
    return 0;
}

static int set_long(const char *what, const char *s, long lo, long hi, int *out, char *msg, size_t len) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return fail(msg, len, "%s must be a whole number in %ld..%ld, got '%s'", what, lo, hi, s);
    *out = (int)v;
    return 0;
}

static int add_data_root(serve_config *c, const char *dir, const char *what, char *msg, size_t len) {
    if (c->n_data_roots == SERVE_MAX_DATA_ROOTS)
        return fail(msg, len, "%s: at most %d data roots", what, SERVE_MAX_DATA_ROOTS);
    char resolved[PATH_MAX];
    struct stat st;
    errno = 0;
    if (!realpath(dir, resolved) || stat(resolved, &st) || !S_ISDIR(st.st_mode))
        return fail(msg, len, "%s '%s' is not a folder%s%s", what, dir, errno ? ": " : "",
                    errno ? strerror(errno) : "");
    memcpy(c->data_roots[c->n_data_roots++], resolved, strlen(resolved) + 1);
    return 0;
}

/* The hostfile folder, resolved once: a hostfile a spec names is then
 * checked against the real folder, after every symlink. */
static int set_hostfile_dir(serve_config *c, const char *dir, const char *what, char *msg, size_t len) {
    char resolved[PATH_MAX];
    struct stat st;
    errno = 0;
    if (!*dir) return fail(msg, len, "%s must not be empty", what);
    if (!realpath(dir, resolved) || stat(resolved, &st) || !S_ISDIR(st.st_mode))
        return fail(msg, len, "%s '%s' is not a folder%s%s", what, dir, errno ? ": " : "",
                    errno ? strerror(errno) : "");
    memcpy(c->hostfile_dir, resolved, strlen(resolved) + 1);
    return 0;
}

int serve_find_program(const char *name, char *out, size_t len) {
    if (!*name) return -1;
    if (strchr(name, '/')) {
        if (access(name, X_OK) || strlen(name) >= len) return -1;
        struct stat st;
        if (stat(name, &st) || !S_ISREG(st.st_mode)) return -1;
        memcpy(out, name, strlen(name) + 1);
        return 0;
    }
    const char *path = getenv("PATH");
    if (!path || !*path) path = "/usr/local/bin:/usr/bin:/bin";
    for (const char *p = path;;) {
        const char *end = strchr(p, ':');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        char cand[PATH_MAX];
        /* an empty entry is the current folder, as for execvp */
        int w = n ? snprintf(cand, sizeof cand, "%.*s/%s", (int)n, p, name) : snprintf(cand, sizeof cand, "./%s", name);
        struct stat st;
        if (w > 0 && (size_t)w < sizeof cand && (size_t)w < len && !access(cand, X_OK) && !stat(cand, &st) &&
            S_ISREG(st.st_mode)) {
            memcpy(out, cand, (size_t)w + 1);
            return 0;
        }
        if (!end) return -1;
        p = end + 1;
    }
}

static int set_log_level(serve_config *c, const char *s, const char *what, char *msg, size_t len) {
    if (log_level_parse(s, &c->log_level))
        return fail(msg, len, "%s must be error, warn, info or debug, got '%s'", what, s);
    return 0;
}

/* The config file: a JSON object; unknown keys are an error, not ignored,
 * so a misspelt key cannot silently leave a default in force. */
static int load_file(serve_config *c, const char *path, char *msg, size_t len) {
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) return fail(msg, len, "config %s: line %d: %s", path, jerr.line, jerr.text);
    int rc = -1;
    if (!json_is_object(root)) {
        fail(msg, len, "config %s: must be a JSON object", path);
        goto out;
    }
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        char what[300];
        snprintf(what, sizeof what, "config %s: \"%s\"", path, key);
        int is_str = json_is_string(v);
        const char *s = is_str ? json_string_value(v) : "";
        if (!strcmp(key, "listen") || !strcmp(key, "data_dir") || !strcmp(key, "token_file") ||
            !strcmp(key, "web_root") || !strcmp(key, "log_level") || !strcmp(key, "hostfile_dir") ||
            !strcmp(key, "mpirun")) {
            if (!is_str) {
                fail(msg, len, "%s must be a string", what);
                goto out;
            }
            int bad = !strcmp(key, "listen")       ? copy_str(c->listen, sizeof c->listen, s, what, msg, len)
                      : !strcmp(key, "data_dir")   ? copy_str(c->data_dir, sizeof c->data_dir, s, what, msg, len)
                      : !strcmp(key, "token_file") ? copy_str(c->token_file, sizeof c->token_file, s, what, msg, len)
                      : !strcmp(key, "web_root")   ? copy_str(c->web_root, sizeof c->web_root, s, what, msg, len)
                      : !strcmp(key, "hostfile_dir") ? set_hostfile_dir(c, s, what, msg, len)
                      : !strcmp(key, "mpirun")     ? copy_str(c->mpirun, sizeof c->mpirun, s, what, msg, len)
                                                   : set_log_level(c, s, what, msg, len);
            if (bad) goto out;
        } else if (!strcmp(key, "max_jobs") || !strcmp(key, "threads") || !strcmp(key, "http_timeout")) {
            long lo = 1, hi = !strcmp(key, "max_jobs") ? 64 : !strcmp(key, "threads") ? 256 : 3600;
            if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
                fail(msg, len, "%s must be a whole number in %ld..%ld", what, lo, hi);
                goto out;
            }
            *(!strcmp(key, "max_jobs") ? &c->max_jobs : !strcmp(key, "threads") ? &c->threads : &c->http_timeout) =
                (int)json_integer_value(v);
        } else if (!strcmp(key, "auth_reads")) {
            if (!json_is_boolean(v)) {
                fail(msg, len, "%s must be true or false", what);
                goto out;
            }
            c->auth_reads = json_is_true(v);
        } else if (!strcmp(key, "data_roots")) {
            if (!json_is_array(v)) {
                fail(msg, len, "%s must be an array of folders", what);
                goto out;
            }
            size_t i;
            json_t *e;
            json_array_foreach(v, i, e) {
                if (!json_is_string(e)) {
                    fail(msg, len, "%s[%zu] must be a string", what, i);
                    goto out;
                }
                if (add_data_root(c, json_string_value(e), what, msg, len)) goto out;
            }
        } else {
            fail(msg, len, "config %s: unknown key \"%s\" (known: listen, data_dir, max_jobs, threads, "
                 "data_roots, token_file, auth_reads, web_root, log_level, http_timeout, hostfile_dir, mpirun)",
                 path, key);
            goto out;
        }
    }
    rc = 0;
out:
    json_decref(root);
    return rc;
}

int serve_host_is_loopback(const char *host) {
    return !strcmp(host, "localhost") || !strcmp(host, "::1") || !strncmp(host, "127.", 4);
}

/* "HOST:PORT" or "[V6]:PORT" into host and port. */
static int split_listen(serve_config *c, char *msg, size_t len) {
    const char *l = c->listen, *colon;
    size_t hl;
    if (l[0] == '[') {
        const char *close = strchr(l, ']');
        if (!close || close[1] != ':') goto bad;
        hl = (size_t)(close - l - 1), colon = close + 1;
        if (hl >= sizeof c->host) goto bad;
        memcpy(c->host, l + 1, hl);
    } else {
        colon = strrchr(l, ':');
        if (!colon || strchr(l, ':') != colon) goto bad;
        hl = (size_t)(colon - l);
        if (hl >= sizeof c->host) goto bad;
        memcpy(c->host, l, hl);
    }
    c->host[hl] = 0;
    if (!hl) goto bad;
    char what[300];
    snprintf(what, sizeof what, "the port of --listen '%s'", c->listen);
    return set_long(what, colon + 1, 0, 65535, &c->port, msg, len);
bad:
    return fail(msg, len, "--listen must be HOST:PORT or [IPV6]:PORT, got '%s'", c->listen);
}

static int load_token(serve_config *c, char *msg, size_t len) {
    char *t = cli_read_file(c->token_file, 4096);
    if (!t) return fail(msg, len, "cannot read --token-file %s", c->token_file);
    char *s = t, *e = t + strlen(t);
    while (*s && isspace((unsigned char)*s)) s++;
    while (e > s && isspace((unsigned char)e[-1])) e--;
    size_t n = (size_t)(e - s);
    int rc = 0;
    if (n < 16) rc = fail(msg, len, "--token-file %s: the token must be at least 16 characters (found %zu)", c->token_file, n);
    else if (n >= sizeof c->token) rc = fail(msg, len, "--token-file %s: the token is longer than %zu characters", c->token_file, sizeof c->token - 1);
    else memcpy(c->token, s, n), c->token[n] = 0;
    free(t);
    return rc;
}

int serve_config_parse(serve_config *c, int argc, char **argv, char *msg, size_t len) {
    enum { O_LISTEN = 1000, O_DATA_DIR, O_MAX_JOBS, O_THREADS, O_DATA_ROOT, O_TOKEN_FILE,
           O_AUTH_READS, O_WEB_ROOT, O_LOG_LEVEL, O_CONFIG, O_HELP, O_HTTP_TIMEOUT, O_HOSTFILE_DIR, O_MPIRUN };
    static const struct option opts[] = {
        {"listen", required_argument, 0, O_LISTEN},         {"data-dir", required_argument, 0, O_DATA_DIR},
        {"max-jobs", required_argument, 0, O_MAX_JOBS},     {"threads", required_argument, 0, O_THREADS},
        {"data-root", required_argument, 0, O_DATA_ROOT},   {"token-file", required_argument, 0, O_TOKEN_FILE},
        {"auth-reads", no_argument, 0, O_AUTH_READS},       {"web-root", required_argument, 0, O_WEB_ROOT},
        {"log-level", required_argument, 0, O_LOG_LEVEL},   {"config", required_argument, 0, O_CONFIG},
        {"help", no_argument, 0, O_HELP},                   {"http-timeout", required_argument, 0, O_HTTP_TIMEOUT},
        {"hostfile-dir", required_argument, 0, O_HOSTFILE_DIR}, {"mpirun", required_argument, 0, O_MPIRUN},
        {0, 0, 0, 0}};
    serve_config_defaults(c);
    /* the config file first, whatever its position, so every flag wins over it */
    for (int pass = 0; pass < 2; pass++) {
        optind = 0, opterr = 0; /* 0: glibc re-initialises getopt for the second pass */
        int o;
        while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
            if (o == '?' || o == ':')
                return fail(msg, len, "unknown option or missing value: %s (see fisherd serve --help)",
                            argv[optind - 1]);
            if (o == O_HELP) return usage(stdout), 1;
            if ((pass == 0) != (o == O_CONFIG)) continue;
            int bad = 0;
            switch (o) {
            case O_CONFIG: bad = load_file(c, optarg, msg, len); break;
            case O_LISTEN: bad = copy_str(c->listen, sizeof c->listen, optarg, "--listen", msg, len); break;
            case O_DATA_DIR: bad = copy_str(c->data_dir, sizeof c->data_dir, optarg, "--data-dir", msg, len); break;
            case O_MAX_JOBS: bad = set_long("--max-jobs", optarg, 1, 64, &c->max_jobs, msg, len); break;
            case O_THREADS: bad = set_long("--threads", optarg, 1, 256, &c->threads, msg, len); break;
            case O_DATA_ROOT: bad = add_data_root(c, optarg, "--data-root", msg, len); break;
            case O_TOKEN_FILE: bad = copy_str(c->token_file, sizeof c->token_file, optarg, "--token-file", msg, len); break;
            case O_AUTH_READS: c->auth_reads = 1; break;
            case O_WEB_ROOT: bad = copy_str(c->web_root, sizeof c->web_root, optarg, "--web-root", msg, len); break;
            case O_LOG_LEVEL: bad = set_log_level(c, optarg, "--log-level", msg, len); break;
            case O_HTTP_TIMEOUT: bad = set_long("--http-timeout", optarg, 1, 3600, &c->http_timeout, msg, len); break;
            case O_HOSTFILE_DIR: bad = set_hostfile_dir(c, optarg, "--hostfile-dir", msg, len); break;
            case O_MPIRUN: bad = copy_str(c->mpirun, sizeof c->mpirun, optarg, "--mpirun", msg, len); break;
            }
            if (bad) return -1;
        }
        if (optind < argc) return fail(msg, len, "unexpected argument '%s' (see fisherd serve --help)", argv[optind]);
    }
    if (split_listen(c, msg, len)) return -1;
    if (c->token_file[0] && load_token(c, msg, len)) return -1;
    if (!serve_host_is_loopback(c->host) && !c->token[0])
        return fail(msg, len, "refusing to listen on %s beyond loopback without a bearer token: "
                    "give --token-file FILE (or listen on 127.0.0.1)", c->listen);
    if (c->auth_reads && !c->token[0]) return fail(msg, len, "--auth-reads needs --token-file");
    return 0;
}
