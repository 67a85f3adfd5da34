/*
 * http.c — the HTTP layer on libmicrohttpd (see http.h for the contract).
 *
 * Design notes
 *
 * Thread model. MHD runs an internal listener thread and one thread per
 * connection (MHD_USE_THREAD_PER_CONNECTION, with poll() so descriptors
 * above FD_SETSIZE work). The alternative, an epoll thread pool, makes
 * every connection share a few threads, so nothing may block in them: an
 * SSE stream would have to suspend its connection while idle and be
 * resumed from the publishing thread. MHD's own contract for that
 * (microhttpd.h, MHD_suspend_connection) is what rules it out: a
 * suspended connection does not time out, its client's disconnect is not
 * detected, and stopping the daemon with one suspended is an API
 * violation — so every idle stream would need a timer thread to resume it
 * for heartbeats, a departed client would only show at the next write,
 * and shutdown would have to resume everything first. With a thread per
 * connection an idle stream is simply its thread asleep in poll() on (its
 * wake-up pipe, its client socket): events arrive through the pipe, a
 * departing client shows as EOF on the socket at once, and a heartbeat is
 * the poll timeout. Handlers may block (SQLite, files) without stalling
 * anyone else. The price is a thread per connection, which the connection
 * limit bounds (64 by default; MHD refuses beyond it) and which suits a
 * daemon that a handful of people and dashboards talk to. Slow or half-open
 * clients are closed after the connection timeout; a stream's heartbeat is
 * kept under half of it so a healthy idle stream is never timed out.
 *
 * Invariants
 *  1. A request gets at most one response, chosen by http_respond_* into
 *     req->resp and queued once, when the handler (or an early check)
 *     returns. A handler failure replaces it with a 500.
 *  2. The handler sees only checked input: a target of printable ASCII,
 *     path segments and query values %-decoded, NUL-free, valid UTF-8; a
 *     body within its limit, NUL-terminated; for JSON routes the right
 *     Content-Type and a non-empty body.
 *  3. An SSE stream has two references, the MHD response's (dropped in
 *     http__sse_finished, which also calls on_close exactly once) and the
 *     request's (dropped when the request completes, after the access log
 *     has read the byte count). The stream is freed when both are gone.
 *  4. Lock order: server lock, then a stream's lock. No lock of ours is
 *     held while calling into the application (handlers, on_close, logs),
 *     so the application may call back in from wherever it likes.
 *  5. Senders never block: a stream buffers at most cfg->sse_buffer bytes;
 *     beyond that the stream is dropped (the browser's EventSource
 *     reconnects) rather than slowing the publisher or growing memory.
 *  6. A request arrives whole within the timeout, not only byte by byte.
 *     MHD's timeout is for inactivity, so a client sending its headers a
 *     byte every few seconds (slowloris) would hold a connection, and its
 *     thread, for ever. A watchdog thread shuts down the socket of every
 *     connection whose headers have not all arrived `timeout` after it
 *     began waiting for them (MHD then sees the end and closes it); a body
 *     must keep up HTTP__MIN_BODY_RATE on average past the same time. The
 *     watchdog knows a connection from MHD's start until MHD's close
 *     notice, which comes before MHD closes the descriptor, so it never
 *     shuts down a descriptor that has become something else.
 *  7. The bodies of all requests together hold at most max_body_total
 *     bytes (srv->body_bytes, under srv->lock): each route's limit bounds
 *     one upload, this bounds 64 of them at once. A body that would go
 *     past it is refused with 503 and Retry-After before it is read.
 */
#include "http.h"
#include "http_internal.h"
#include "error.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

/* A chunked upload past its limit is read and thrown away so the client
 * still gets its 413 (MHD can only answer before or after a body); beyond
 * this many times the limit the connection is simply closed instead. */
#define HTTP__DISCARD_FACTOR 16

/* A request's body must come at least this fast on average (bytes/s)
 * once the connection timeout has passed since its headers: each byte
 * within the inactivity timeout is not enough (a body trickled in). */
#define HTTP__MIN_BODY_RATE 1024.0

/* ---------------------------------------------------------------- types */

/* A connection as the watchdog sees it (invariant 6): since when it has
 * been waiting for a request's headers, 0 while a request is handled. */
typedef struct http__conn {
    int fd;
    double reading_since;
    struct http__conn *prev, *next;
} http__conn;

typedef struct {
    char *text;                 /* literal, or the parameter's name */
    int is_param;
} http__seg;

typedef struct {
    char *method;
    char *pattern;
    http__seg *segs;
    size_t n_segs;
    http_handler handler;
    unsigned flags;
    size_t max_body;
} http__route;

struct http_server {
    struct MHD_Daemon *mhd;
    http__route *routes;
    size_t n_routes;
    void *app;
    char *token;                /* NULL = no auth */
    size_t token_len;
    int auth_reads;
    char *static_root;          /* realpath of the root, NULL = none */
    size_t static_root_len;
    size_t max_body;
    size_t max_body_total;      /* invariant 7 */
    int nice;
    unsigned heartbeat_ms;
    size_t sse_buffer;
    unsigned port;
    http_access_log_fn access_log;
    http_error_log_fn error_log;
    void *log_ctx;

    pthread_mutex_t lock;       /* guards the fields below */
    http_sse *streams;          /* live streams, for http_server_stop */
    int stopping;
    http__conn *conns;          /* open connections, for the watchdog */
    double deadline_ms;         /* a request's headers must arrive within this */
    pthread_cond_t wake;        /* the watchdog sleeps on it; signalled at stop */
    pthread_t watchdog;
    int watchdog_started;
    size_t body_bytes;          /* held by requests' bodies now (invariant 7) */
};

typedef struct {
    const char *name;
    const char *value;          /* NULL when invalid */
} http__pair;

typedef struct http__header {
    char *name, *value;
    struct http__header *next;
} http__header;

struct http_request {
    http_server *srv;
    struct MHD_Connection *conn;
    const char *method;         /* MHD's copy, valid for the request */
    char *target;               /* the raw target; '?' replaced by NUL */
    const char *raw_query;      /* into target, NULL when none */
    int bad_target;             /* not printable ASCII, or not origin-form */
    char *seg_buf;              /* decoded segments, NUL-separated */
    char **segs;
    size_t n_segs;
    char *query_buf;            /* decoded names and values */
    http__pair *query;
    size_t n_query;
    const http__route *route;

    char *body;
    size_t body_len, body_cap, body_limit;
    int body_too_large;
    uint64_t body_discarded;
    double body_t0_ms;          /* when the headers were complete */
    size_t body_held;           /* counted in srv->body_bytes (invariant 7) */

    int started, queued;
    struct MHD_Response *resp;
    unsigned status;
    uint64_t resp_bytes;        /* for the access log; streams count their own */
    http_sse *sse;              /* the request's reference (invariant 3) */
    http__header *headers, **headers_tail;
    double t0_ms;
};

struct http_sse {
    pthread_mutex_t lock;
    http_server *srv;
    http_sse *prev, *next;      /* srv->streams, under srv->lock */
    int wake[2];                /* senders write a byte, the reader polls */
    int sock;                   /* the client socket, -1 once not watched */
    char *buf;                  /* queued bytes are buf[off, len) */
    size_t off, len, cap, limit;
    unsigned heartbeat_ms;
    double last_out_ms;
    int app_closed, dropped, stopping, client_gone, over;
    int linked;                 /* in srv->streams */
    int refs;
    uint64_t bytes;
    http_sse_close_fn on_close;
    void *ctx;
};

/* ------------------------------------------------------------ utilities */

static double http__now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static char *http__strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

static int http__hex(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* %-decodes src[0, n) into dst (which may be src: decoding only shrinks)
 * and NUL-terminates it. plus = 1 turns '+' into ' ' (query strings).
 * Returns the decoded length, or -1 for a bad escape, a decoded NUL, or a
 * result that is not UTF-8. */
static ssize_t http__decode(char *dst, const char *src, size_t n, int plus) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)src[i];
        if (c == '%') {
            if (i + 2 >= n) return -1;
            int h = http__hex((unsigned char)src[i + 1]), l = http__hex((unsigned char)src[i + 2]);
            if (h < 0 || l < 0) return -1;
            c = h * 16 + l;
            if (c == 0) return -1;
            i += 2;
        } else if (c == '+' && plus) {
            c = ' ';
        }
        dst[o++] = (char)c;
    }
    dst[o] = '\0';
    return fisher_utf8_valid(dst, o) ? (ssize_t)o : -1;
}

int http_secure_equal(const void *a, size_t a_len, const void *b, size_t b_len) {
    const unsigned char *x = a, *y = b;
    /* Every byte of b is visited whatever a holds; only the lengths (of
     * the secret and of the guess, which the guesser knows) shape the
     * loop. volatile keeps the compiler from stopping at the first
     * difference. */
    volatile unsigned char diff = (unsigned char)(a_len != b_len);
    for (size_t i = 0; i < b_len; i++) diff |= (unsigned char)(y[i] ^ (i < a_len ? x[i] : 0));
    return diff == 0;
}

const char *http_mime_type(const char *filename) {
    static const struct {
        const char *ext, *type;
    } types[] = {
        {"html", "text/html; charset=utf-8"},
        {"css", "text/css; charset=utf-8"},
        {"js", "text/javascript; charset=utf-8"},
        {"mjs", "text/javascript; charset=utf-8"},
        {"json", "application/json"},
        {"map", "application/json"},
        {"svg", "image/svg+xml"},
        {"png", "image/png"},
        {"ico", "image/vnd.microsoft.icon"},
        {"woff2", "font/woff2"},
        {"txt", "text/plain; charset=utf-8"},
        {"csv", "text/csv; charset=utf-8"},
    };
    const char *base = strrchr(filename, '/');
    const char *dot = strrchr(base ? base : filename, '.');
    if (dot)
        for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
            if (!strcasecmp(dot + 1, types[i].ext)) return types[i].type;
    return "application/octet-stream";
}

static void http__log_error(const http_server *srv, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void http__log_error(const http_server *srv, const char *fmt, ...) {
    if (!srv->error_log) return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    srv->error_log(srv->log_ctx, msg);
}

/* ---------------------------------------------------------------- routes */

static void http__routes_free(http__route *routes, size_t n) {
    for (size_t i = 0; routes && i < n; i++) {
        for (size_t j = 0; j < routes[i].n_segs; j++) free(routes[i].segs[j].text);
        free(routes[i].segs);
        free(routes[i].method);
        free(routes[i].pattern);
    }
    free(routes);
}

/* Splits a pattern into segments; -1 with err for anything ambiguous. */
static int http__route_compile(http__route *r, const http_route *in, fisher_error *err) {
    const char *p = in->pattern;
    if (!in->method || !in->method[0] || !p || !in->handler)
        return fisher_errorf(err, "http route %s %s: method, pattern and handler are all required",
                             in->method ? in->method : "(null)", p ? p : "(null)");
    if (p[0] != '/')
        return fisher_errorf(err, "http route %s %s: the pattern must start with '/'", in->method, p);
    for (const char *m = in->method; *m; m++)
        if (*m < 'A' || *m > 'Z')
            return fisher_errorf(err, "http route %s %s: the method must be upper-case letters",
                                 in->method, p);
    if (!strcmp(in->method, "HEAD"))
        return fisher_errorf(err, "http route HEAD %s: HEAD is answered by the GET route", p);
    r->method = http__strdup(in->method);
    r->pattern = http__strdup(p);
    r->handler = in->handler;
    r->flags = in->flags;
    r->max_body = in->max_body;
    size_t n = 1;
    for (const char *c = p + 1; *c; c++) n += *c == '/';
    r->segs = calloc(n, sizeof *r->segs);
    if (!r->method || !r->pattern || !r->segs)
        return fisher_errorf(err, "http route %s %s: out of memory", in->method, p);
    const char *s = p + 1;
    for (size_t i = 0; i < n; i++) {
        const char *e = strchr(s, '/');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        int param = len >= 2 && s[0] == '{' && s[len - 1] == '}';
        const char *txt = param ? s + 1 : s;
        size_t tlen = param ? len - 2 : len;
        if (param && tlen == 0)
            return fisher_errorf(err, "http route %s %s: empty parameter name '{}'", in->method, p);
        if (memchr(txt, '{', tlen) || memchr(txt, '}', tlen) || memchr(txt, '%', tlen))
            return fisher_errorf(err,
                                 "http route %s %s: segment %zu must be a literal without "
                                 "'{', '}' or '%%', or a whole '{name}'",
                                 in->method, p, i + 1);
        if (len == 0 && (i + 1 < n || n > 1))
            return fisher_errorf(err, "http route %s %s: empty segment (no '//' or trailing '/')",
                                 in->method, p);
        r->segs[i].text = malloc(tlen + 1);
        if (!r->segs[i].text)
            return fisher_errorf(err, "http route %s %s: out of memory", in->method, p);
        memcpy(r->segs[i].text, txt, tlen);
        r->segs[i].text[tlen] = '\0';
        r->segs[i].is_param = param;
        r->n_segs = i + 1;
        for (size_t j = 0; param && j < i; j++)
            if (r->segs[j].is_param && !strcmp(r->segs[j].text, r->segs[i].text))
                return fisher_errorf(err, "http route %s %s: parameter '{%s}' appears twice",
                                     in->method, p, r->segs[i].text);
        s = e ? e + 1 : s + len;
    }
    return 0;
}

static int http__route_matches(const http__route *r, char *const *segs, size_t n) {
    if (r->n_segs != n) return 0;
    for (size_t i = 0; i < n; i++) {
        if (r->segs[i].is_param ? segs[i][0] == '\0' : strcmp(r->segs[i].text, segs[i]) != 0)
            return 0;
    }
    return 1;
}

/* The route for `method` at the request's path, or NULL; *path_known
 * says whether some route has that path (405 rather than 404). */
static const http__route *http__route_find(const http_server *srv, const http_request *req,
                                           const char *method, int *path_known) {
    *path_known = 0;
    for (size_t i = 0; i < srv->n_routes; i++) {
        const http__route *r = &srv->routes[i];
        if (!http__route_matches(r, req->segs, req->n_segs)) continue;
        *path_known = 1;
        if (!strcmp(r->method, method)) return r;
    }
    return NULL;
}

static int http__is_read(const char *method) {
    return !strcmp(method, "GET") || !strcmp(method, "HEAD");
}

/* ------------------------------------------------------ request parsing */

/* The request object, born with the target exactly as sent (http__on_uri;
 * http__probe_target). A target is printable ASCII (RFC 3986); anything
 * else is refused later, and replaced here so that logs never carry
 * control bytes. NULL when out of memory. */
static http_request *http__request_new(http_server *srv, const char *uri) {
    http_request *req = calloc(1, sizeof *req);
    if (!req) return NULL;
    req->srv = srv;
    req->t0_ms = http__now_ms();
    req->headers_tail = &req->headers;
    if (!(req->target = http__strdup(uri))) {
        free(req);
        return NULL;
    }
    for (char *c = req->target; *c; c++)
        if ((unsigned char)*c < 0x21 || (unsigned char)*c > 0x7e) *c = '?', req->bad_target = 1;
    return req;
}

/* Splits req->target into decoded path segments and query pairs.
 * Returns 0, -1 with msg set for a target a handler must not see, or -2
 * when out of memory. */
static int http__parse_target(http_request *req, char *msg, size_t msg_size) {
    if (req->bad_target || req->target[0] != '/') {
        snprintf(msg, msg_size, "the request target must be an absolute path of printable ASCII");
        return -1;
    }
    char *q = strchr(req->target, '?');
    if (q) {
        *q = '\0';
        req->raw_query = q + 1;
    }
    const char *path = req->target;
    size_t plen = strlen(path);
    req->n_segs = 1;
    for (const char *c = path + 1; *c; c++) req->n_segs += *c == '/';
    req->seg_buf = malloc(plen + 1);
    req->segs = calloc(req->n_segs, sizeof *req->segs);
    if (!req->seg_buf || !req->segs) return -2;
    const char *s = path + 1;
    char *o = req->seg_buf;
    for (size_t i = 0; i < req->n_segs; i++) {
        const char *e = strchr(s, '/');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        ssize_t d = http__decode(o, s, len, 0);
        if (d < 0) {
            snprintf(msg, msg_size,
                     "path segment %zu is not valid percent-encoded UTF-8 (or encodes NUL)", i + 1);
            return -1;
        }
        req->segs[i] = o;
        o += d + 1;
        s = e ? e + 1 : s + len;
    }
    if (!req->raw_query) return 0;

    const char *rq = req->raw_query;
    size_t qlen = strlen(rq), n = 1;
    for (const char *c = rq; *c; c++) n += *c == '&';
    req->query = calloc(n, sizeof *req->query);
    req->query_buf = malloc(qlen + n + 2);
    if (!req->query || !req->query_buf) return -2;
    o = req->query_buf;
    for (const char *p = rq; p <= rq + qlen;) {
        const char *amp = strchr(p, '&');
        const char *end = amp ? amp : rq + qlen;
        if (end > p) {
            const char *eq = memchr(p, '=', (size_t)(end - p));
            const char *nend = eq ? eq : end;
            http__pair *pr = &req->query[req->n_query++];
            ssize_t d = http__decode(o, p, (size_t)(nend - p), 1);
            int name_ok = d >= 0;
            if (!name_ok) { /* keep the raw name; the pair counts as invalid */
                memcpy(o, p, (size_t)(nend - p));
                o[nend - p] = '\0';
                d = nend - p;
            }
            pr->name = o;
            o += d + 1;
            const char *v = eq ? eq + 1 : end;
            d = http__decode(o, v, (size_t)(end - v), 1);
            pr->value = d >= 0 && name_ok ? o : NULL;
            o += (d >= 0 ? d : 0) + 1;
        }
        if (!amp) break;
        p = amp + 1;
    }
    return 0;
}

/* application/json, optionally with parameters; a charset must be utf-8. */
int http__is_json_type(const char *ct) {
    if (!ct) return 0;
    while (*ct == ' ' || *ct == '\t') ct++;
    if (strncasecmp(ct, "application/json", 16)) return 0;
    const char *p = ct + 16;
    while (*p == ' ' || *p == '\t') p++;
    if (!*p) return 1;
    if (*p != ';') return 0;
    while (*p == ';') {
        p++;
        while (*p == ' ' || *p == '\t') p++;
        const char *name = p;
        while (*p && *p != '=' && *p != ';') p++;
        size_t nlen = (size_t)(p - name);
        while (nlen && (name[nlen - 1] == ' ' || name[nlen - 1] == '\t')) nlen--;
        const char *val = "";
        size_t vlen = 0;
        if (*p == '=') {
            val = ++p;
            while (*p && *p != ';') p++;
            vlen = (size_t)(p - val);
            while (vlen && (val[vlen - 1] == ' ' || val[vlen - 1] == '\t')) vlen--;
            if (vlen >= 2 && val[0] == '"' && val[vlen - 1] == '"') val++, vlen -= 2;
        }
        if (nlen == 7 && !strncasecmp(name, "charset", 7) &&
            !(vlen == 5 && !strncasecmp(val, "utf-8", 5)))
            return 0;
    }
    return 1;
}

/* --------------------------------------------------------- the request */

const char *http_method(const http_request *req) { return req->method; }
const char *http_path(const http_request *req) { return req->target; }

const char *http_param(const http_request *req, const char *name) {
    const http__route *r = req->route;
    for (size_t i = 0; r && i < r->n_segs; i++)
        if (r->segs[i].is_param && !strcmp(r->segs[i].text, name)) return req->segs[i];
    return NULL;
}

const char *http_header(const http_request *req, const char *name) {
    return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

const char *http_content_type(const http_request *req) {
    return http_header(req, MHD_HTTP_HEADER_CONTENT_TYPE);
}

const char *http_body(const http_request *req, size_t *len) {
    if (len) *len = req->body_len;
    return req->body ? req->body : "";
}

http_query_status http_query_get(const http_request *req, const char *name, const char **value) {
    http_query_status st = HTTP_QUERY_ABSENT;
    const char *first = NULL;
    for (size_t i = 0; i < req->n_query; i++) {
        if (strcmp(req->query[i].name, name)) continue;
        if (!req->query[i].value) {
            st = HTTP_QUERY_INVALID;
            break;
        }
        if (st == HTTP_QUERY_ABSENT) first = req->query[i].value, st = HTTP_QUERY_OK;
        else st = HTTP_QUERY_REPEATED;
    }
    if (value) *value = st == HTTP_QUERY_INVALID ? NULL : first;
    return st;
}

const char *http_query(const http_request *req, const char *name) {
    const char *v;
    return http_query_get(req, name, &v) == HTTP_QUERY_OK ? v : NULL;
}

size_t http_query_count(const http_request *req) { return req->n_query; }

void http_query_at(const http_request *req, size_t i, const char **name, const char **value) {
    if (name) *name = i < req->n_query ? req->query[i].name : NULL;
    if (value) *value = i < req->n_query ? req->query[i].value : NULL;
}

int http_query_int(http_request *req, const char *name, long long lo, long long hi,
                   long long dflt, long long *out) {
    const char *v;
    switch (http_query_get(req, name, &v)) {
    case HTTP_QUERY_ABSENT: *out = dflt; return 0;
    case HTTP_QUERY_REPEATED:
        http_respond_error(req, 400, "invalid_query", name,
                           "query parameter '%s' is given more than once", name);
        return -1;
    case HTTP_QUERY_INVALID:
        http_respond_error(req, 400, "invalid_query", name,
                           "query parameter '%s' is not valid percent-encoded UTF-8", name);
        return -1;
    case HTTP_QUERY_OK: break;
    }
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    /* strtoll would skip leading blanks ("+5" decodes to " 5") */
    if (!(*v == '-' || (*v >= '0' && *v <= '9')) || *end || errno || x < lo || x > hi) {
        http_respond_error(req, 400, "invalid_query", name,
                           "query parameter '%s' must be an integer in [%lld, %lld], not '%s'", name,
                           lo, hi, v);
        return -1;
    }
    *out = x;
    return 0;
}

json_t *http_body_json(http_request *req) {
    json_error_t je;
    json_t *j = json_loadb(http_body(req, NULL), req->body_len, JSON_REJECT_DUPLICATES, &je);
    if (!j)
        http_respond_error(req, 400, "invalid_json", NULL,
                           "the request body is not valid JSON: %s (line %d, column %d)", je.text,
                           je.line, je.column);
    return j;
}

/* ------------------------------------------------------------ responses */

/* Adopts resp as the request's one response (invariant 1). */
static int http__choose(http_request *req, unsigned status, struct MHD_Response *resp,
                        uint64_t bytes) {
    if (!resp) return -1;
    if (req->resp || req->queued) {
        MHD_destroy_response(resp);
        return -1;
    }
    req->resp = resp;
    req->status = status;
    req->resp_bytes = bytes;
    return 0;
}

static int http__header_name_ok(const char *s) {
    if (!*s) return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              strchr("!#$%&'*+-.^_`|~", *s)))
            return 0;
    return 1;
}

static int http__header_value_ok(const char *s) {
    for (; *s; s++)
        if (((unsigned char)*s < 0x20 && *s != '\t') || *s == 0x7f) return 0;
    return 1;
}

int http_add_header(http_request *req, const char *name, const char *value) {
    if (!name || !value || !http__header_name_ok(name) || !http__header_value_ok(value)) return -1;
    http__header *h = calloc(1, sizeof *h);
    if (!h || !(h->name = http__strdup(name)) || !(h->value = http__strdup(value))) {
        if (h) free(h->name);
        free(h);
        return -1;
    }
    *req->headers_tail = h;
    req->headers_tail = &h->next;
    return 0;
}

static void http__headers_free(http_request *req) {
    for (http__header *h = req->headers, *n; h; h = n) {
        n = h->next;
        free(h->name);
        free(h->value);
        free(h);
    }
    req->headers = NULL;
    req->headers_tail = &req->headers;
}

static int http__download_name_ok(const char *s) {
    if (!*s || strlen(s) > 200) return 0;
    for (; *s; s++)
        if (*s < 0x20 || *s > 0x7e || *s == '"' || *s == '\\' || *s == '/') return 0;
    return 1;
}

int http_set_download_name(http_request *req, const char *name) {
    if (!name || !http__download_name_ok(name)) return -1;
    char v[256];
    snprintf(v, sizeof v, "attachment; filename=\"%s\"", name);
    return http_add_header(req, MHD_HTTP_HEADER_CONTENT_DISPOSITION, v);
}

int http_respond_buffer(http_request *req, unsigned status, const char *content_type, char *buf,
                        size_t len) {
    if (req->resp || req->queued || !content_type || !http__header_value_ok(content_type)) {
        free(buf);
        return -1;
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(len, buf, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(buf);
        return -1;
    }
    if (MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type) != MHD_YES) {
        MHD_destroy_response(r);
        return -1;
    }
    return http__choose(req, status, r, len);
}

int http_respond_text(http_request *req, unsigned status, const char *content_type,
                      const char *text, size_t len) {
    char *copy = malloc(len ? len : 1);
    if (!copy) return -1;
    if (len) memcpy(copy, text, len);
    return http_respond_buffer(req, status, content_type, copy, len);
}

/* json_dump_callback sink: a growing malloc'd buffer. */
typedef struct {
    char *p;
    size_t len, cap;
} http__buf;

static int http__buf_put(const char *s, size_t n, void *data) {
    http__buf *b = data;
    if (b->cap - b->len < n + 1) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->len < n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return -1;
        b->p = p, b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

int http_respond_json(http_request *req, unsigned status, json_t *body) {
    http__buf b = {0};
    int bad = !body || req->resp || req->queued ||
              json_dump_callback(body, http__buf_put, &b, JSON_COMPACT | JSON_ENCODE_ANY) ||
              http__buf_put("\n", 1, &b);
    json_decref(body);
    if (bad) {
        free(b.p);
        return -1;
    }
    return http_respond_buffer(req, status, "application/json", b.p, b.len);
}

static const char *http__default_code(unsigned status) {
    switch (status) {
    case 400: return "bad_request";
    case 401: return "unauthorized";
    case 403: return "forbidden";
    case 404: return "not_found";
    case 405: return "method_not_allowed";
    case 409: return "conflict";
    case 413: return "payload_too_large";
    case 415: return "unsupported_media_type";
    case 422: return "unprocessable";
    case 429: return "too_many_requests";
    case 500: return "internal";
    case 503: return "unavailable";
    default: return status >= 500 ? "internal" : "error";
    }
}

int http_respond_error(http_request *req, unsigned status, const char *code, const char *field,
                       const char *fmt, ...) {
    char msg[1024], f[256], c[64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(c, sizeof c, "%s", code ? code : http__default_code(status));
    if (field) snprintf(f, sizeof f, "%s", field);
    fisher_utf8_sanitize(msg);
    fisher_utf8_sanitize(c);
    if (field) fisher_utf8_sanitize(f);
    json_t *j = json_pack("{s:{s:s, s:s, s:s?}}", "error", "code", c, "message", msg, "field",
                          field ? f : NULL);
    return http_respond_json(req, status, j);
}

int http_respond_file(http_request *req, int fd, const char *content_type,
                      const char *download_name) {
    struct stat st;
    if (req->resp || req->queued || !content_type || !http__header_value_ok(content_type) ||
        (download_name && !http__download_name_ok(download_name)) || fstat(fd, &st) ||
        !S_ISREG(st.st_mode)) {
        close(fd);
        return -1;
    }
    struct MHD_Response *r = MHD_create_response_from_fd64((uint64_t)st.st_size, fd);
    if (!r) {
        close(fd);
        return -1;
    }
    if (MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type) != MHD_YES ||
        (download_name && http_set_download_name(req, download_name))) {
        MHD_destroy_response(r);
        return -1;
    }
    return http__choose(req, 200, r, (uint64_t)st.st_size);
}

/* --------------------------------------------------------- static files */

/* Answers a GET outside the routes from the static root; always responds
 * (404 for anything missing, hidden, outside the root, or not a file). */
static int http__serve_static(http_request *req) {
    const http_server *srv = req->srv;
    char rel[PATH_MAX], full[PATH_MAX], real[PATH_MAX];
    size_t o = 0;
    if (!srv->static_root) goto not_found;
    for (size_t i = 0; i < req->n_segs; i++) {
        const char *s = req->segs[i];
        int last = i + 1 == req->n_segs;
        if (!s[0] && last) s = "index.html";
        /* "", ".", "..", dotfiles, and segments that decoded to a '/' */
        else if (!s[0] || s[0] == '.' || strchr(s, '/')) goto not_found;
        int w = snprintf(rel + o, sizeof rel - o, "/%s", s);
        if (w < 0 || (size_t)w >= sizeof rel - o) goto not_found;
        o += (size_t)w;
    }
    if ((size_t)snprintf(full, sizeof full, "%s%s", srv->static_root, rel) >= sizeof full)
        goto not_found;
    /* Symlinks inside the root may point anywhere inside it; realpath
     * follows them all, and the prefix check refuses what ends outside. */
    if (!realpath(full, real) || strncmp(real, srv->static_root, srv->static_root_len) ||
        real[srv->static_root_len] != '/')
        goto not_found;
    int fd = open(real, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    struct stat st;
    if (fd < 0) goto not_found;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        goto not_found; /* directories are not listed */
    }
    if (http_respond_file(req, fd, http_mime_type(real), NULL)) return -1;
    /* The dashboard changes with the daemon; revalidate rather than run stale JS. */
    return http_add_header(req, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
not_found:
    return http_respond_error(req, 404, NULL, NULL, "no such file: %s", req->target);
}

/* ---------------------------------------------------- Server-Sent Events */

static void http__sse_wake(http_sse *s) {
    char c = 1;
    /* Non-blocking: a full pipe already holds a wake-up. */
    ssize_t w = write(s->wake[1], &c, 1);
    (void)w;
}

static void http__sse_unref(http_sse *s) {
    pthread_mutex_lock(&s->lock);
    int last = --s->refs == 0;
    pthread_mutex_unlock(&s->lock);
    if (!last) return;
    close(s->wake[0]);
    close(s->wake[1]);
    free(s->buf);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* Appends n bytes (under s->lock); 0, or -1 when they do not fit. */
static int http__sse_append(http_sse *s, const char *p, size_t n) {
    if (s->len - s->off + n > s->limit) return -1;
    if (s->cap - s->len < n && s->off) { /* reuse the space already read */
        memmove(s->buf, s->buf + s->off, s->len - s->off);
        s->len -= s->off;
        s->off = 0;
    }
    if (s->cap - s->len < n) {
        size_t cap = s->cap ? s->cap : 4096;
        while (cap - s->len < n) cap *= 2;
        if (cap > s->limit) cap = s->limit;
        char *b = realloc(s->buf, cap);
        if (!b) return -1;
        s->buf = b, s->cap = cap;
    }
    memcpy(s->buf + s->len, p, n);
    s->len += n;
    return 0;
}

static int http__sse_open_locked(const http_sse *s) {
    return !(s->app_closed || s->dropped || s->stopping || s->client_gone || s->over);
}

/* MHD's content reader, on the connection's thread, which is the stream's
 * own: it may sleep here (see the design notes). */
static ssize_t http__sse_read(void *cls, uint64_t pos, char *out, size_t max) {
    http_sse *s = cls;
    ssize_t rc;
    (void)pos;
    pthread_mutex_lock(&s->lock);
    for (;;) {
        if (s->dropped || s->stopping || s->client_gone) {
            rc = MHD_CONTENT_READER_END_WITH_ERROR;
            break;
        }
        if (s->len > s->off) {
            size_t n = s->len - s->off < max ? s->len - s->off : max;
            memcpy(out, s->buf + s->off, n);
            s->off += n;
            if (s->off == s->len) s->off = s->len = 0;
            s->bytes += n;
            s->last_out_ms = http__now_ms();
            rc = (ssize_t)n;
            break;
        }
        if (s->app_closed) {
            rc = MHD_CONTENT_READER_END_OF_STREAM;
            break;
        }
        double wait = s->last_out_ms + s->heartbeat_ms - http__now_ms();
        if (wait <= 0) {
            static const char beat[] = ": keep-alive\n\n";
            if (http__sse_append(s, beat, sizeof beat - 1)) s->dropped = 1;
            continue;
        }
        struct pollfd p[2] = {{.fd = s->wake[0], .events = POLLIN},
                              {.fd = s->sock, .events = POLLIN}};
        pthread_mutex_unlock(&s->lock);
        int r = poll(p, s->sock >= 0 ? 2 : 1, (int)wait + 1);
        pthread_mutex_lock(&s->lock);
        if (r < 0 && errno != EINTR) s->client_gone = 1;
        if (r <= 0) continue;
        if (p[0].revents) {
            char drain[64];
            while (read(s->wake[0], drain, sizeof drain) > 0) {}
        }
        if (s->sock >= 0 && p[1].revents) {
            char c;
            ssize_t k = recv(s->sock, &c, 1, MSG_PEEK | MSG_DONTWAIT);
            if (k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
                s->client_gone = 1;
            else if (k > 0)
                /* The client sent something (a pipelined request?): the
                 * socket stays readable, so stop watching it; a dead peer
                 * then shows when the next heartbeat is written. */
                s->sock = -1;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

/* MHD is done with the response: the stream is over (invariant 3). */
static void http__sse_finished(void *cls) {
    http_sse *s = cls;
    http_server *srv = s->srv;
    pthread_mutex_lock(&srv->lock);
    if (s->linked) {
        if (s->prev) s->prev->next = s->next;
        else srv->streams = s->next;
        if (s->next) s->next->prev = s->prev;
        s->prev = s->next = NULL;
        s->linked = 0;
    }
    pthread_mutex_unlock(&srv->lock);
    pthread_mutex_lock(&s->lock);
    s->over = 1;
    pthread_mutex_unlock(&s->lock);
    if (s->on_close) s->on_close(s, s->ctx);
    http__sse_unref(s);
}

http_sse *http_respond_sse(http_request *req, http_sse_close_fn on_close, void *ctx) {
    http_server *srv = req->srv;
    if (req->resp || req->queued || req->sse || !on_close) return NULL;
    http_sse *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->wake[0] = s->wake[1] = -1;
    if (pthread_mutex_init(&s->lock, NULL)) {
        free(s);
        return NULL;
    }
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    s->srv = srv;
    s->sock = ci ? ci->connect_fd : -1;
    s->limit = srv->sse_buffer;
    s->heartbeat_ms = srv->heartbeat_ms;
    s->last_out_ms = http__now_ms();
    static const char hello[] = ": stream open\n\n"; /* flushes the headers at once */
    if (pipe(s->wake) || fcntl(s->wake[0], F_SETFL, O_NONBLOCK) ||
        fcntl(s->wake[1], F_SETFL, O_NONBLOCK) || fcntl(s->wake[0], F_SETFD, FD_CLOEXEC) ||
        fcntl(s->wake[1], F_SETFD, FD_CLOEXEC) || http__sse_append(s, hello, sizeof hello - 1)) {
        if (s->wake[0] >= 0) close(s->wake[0]);
        if (s->wake[1] >= 0) close(s->wake[1]);
        free(s->buf);
        pthread_mutex_destroy(&s->lock);
        free(s);
        return NULL;
    }
    /* From here MHD's free callback owns the cleanup: one reference, no
     * on_close (the caller never saw the stream) until we hand it out. */
    s->refs = 1;
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096,
                                                               http__sse_read, s,
                                                               http__sse_finished);
    if (!r) {
        http__sse_finished(s);
        return NULL;
    }
    if (MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream") != MHD_YES ||
        MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache") != MHD_YES ||
        /* nginx would otherwise hold events back in its buffer */
        MHD_add_response_header(r, "X-Accel-Buffering", "no") != MHD_YES) {
        MHD_destroy_response(r);
        return NULL;
    }
    s->on_close = on_close;
    s->ctx = ctx;
    s->refs = 2;
    pthread_mutex_lock(&srv->lock);
    s->stopping = srv->stopping;
    s->next = srv->streams;
    if (s->next) s->next->prev = s;
    srv->streams = s;
    s->linked = 1;
    pthread_mutex_unlock(&srv->lock);
    req->sse = s;
    req->resp = r;
    req->status = 200;
    return s;
}

/* Writes one event in wire format into out (NULL: only measures it). */
static size_t http__sse_format(char *out, const char *event, const char *data, const char *id) {
    size_t n = 0;
#define HTTP__PUT(p, len)                            \
    do {                                             \
        if (out) memcpy(out + n, (p), (len));        \
        n += (len);                                  \
    } while (0)
    if (id) {
        HTTP__PUT("id: ", 4);
        HTTP__PUT(id, strlen(id));
        HTTP__PUT("\n", 1);
    }
    if (event) {
        HTTP__PUT("event: ", 7);
        HTTP__PUT(event, strlen(event));
        HTTP__PUT("\n", 1);
    }
    const char *d = data ? data : "";
    for (;;) {
        size_t len = strcspn(d, "\r\n");
        HTTP__PUT("data: ", 6);
        HTTP__PUT(d, len);
        HTTP__PUT("\n", 1);
        d += len;
        if (!*d) break;
        d += d[0] == '\r' && d[1] == '\n' ? 2 : 1;
    }
    HTTP__PUT("\n", 1);
#undef HTTP__PUT
    return n;
}

int http_sse_send(http_sse *s, const char *event, const char *data, const char *id) {
    if ((event && strpbrk(event, "\r\n")) || (id && strpbrk(id, "\r\n"))) return -1;
    size_t n = http__sse_format(NULL, event, data, id);
    char small[1024], *tmp = n <= sizeof small ? small : malloc(n);
    if (!tmp) return -1;
    http__sse_format(tmp, event, data, id);
    int rc = -1;
    pthread_mutex_lock(&s->lock);
    if (http__sse_open_locked(s)) {
        rc = http__sse_append(s, tmp, n);
        if (rc) s->dropped = 1; /* too slow a client, or no memory: end it */
        http__sse_wake(s);
    }
    pthread_mutex_unlock(&s->lock);
    if (tmp != small) free(tmp);
    return rc;
}

int http_sse_is_open(http_sse *s) {
    pthread_mutex_lock(&s->lock);
    int open = http__sse_open_locked(s);
    pthread_mutex_unlock(&s->lock);
    return open;
}

void http_sse_close(http_sse *s) {
    pthread_mutex_lock(&s->lock);
    s->app_closed = 1;
    http__sse_wake(s);
    pthread_mutex_unlock(&s->lock);
}

/* ------------------------------------------------- the request's journey */

/* Queues the chosen response with the handler's extra headers. */
static enum MHD_Result http__queue(http_request *req) {
    struct MHD_Response *r = req->resp;
    req->resp = NULL;
    req->queued = 1;
    for (const http__header *h = req->headers; h; h = h->next)
        if (MHD_add_response_header(r, h->name, h->value) != MHD_YES)
            http__log_error(req->srv, "%s %s: could not add header %s", req->method, req->target,
                            h->name);
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    enum MHD_Result ok = MHD_queue_response(req->conn, req->status, r);
    MHD_destroy_response(r);
    return ok;
}

/* Answers with the error shape right away (no handler involved). */
static enum MHD_Result http__reject(http_request *req, unsigned status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static enum MHD_Result http__reject(http_request *req, unsigned status, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (http_respond_error(req, status, NULL, NULL, "%s", msg)) return MHD_NO;
    return http__queue(req);
}

/* The bearer token of the Authorization header or, for a read, of
 * ?access_token=: what a browser fetches by itself (an EventSource, a
 * download link) cannot send a header. A token in a URL can end up in
 * history and proxies' logs, so clients should use it only there; the
 * access log never shows the query. Both compared in constant time. */
static int http__authorized(const http_request *req) {
    const char *h = http_header(req, MHD_HTTP_HEADER_AUTHORIZATION), *q;
    if (h && !strncasecmp(h, "Bearer", 6) && (h[6] == ' ' || h[6] == '\t')) {
        h += 7;
        while (*h == ' ' || *h == '\t') h++;
        size_t n = strlen(h);
        while (n && (h[n - 1] == ' ' || h[n - 1] == '\t')) n--;
        if (http_secure_equal(h, n, req->srv->token, req->srv->token_len)) return 1;
    }
    return http__is_read(req->method) && http_query_get(req, "access_token", &q) == HTTP_QUERY_OK && q &&
           http_secure_equal(q, strlen(q), req->srv->token, req->srv->token_len);
}

/* "GET, HEAD, POST": the methods the routes matching this path take. */
static void http__allow(const http_request *req, char *out, size_t size) {
    const http_server *srv = req->srv;
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < srv->n_routes; i++) {
        const http__route *r = &srv->routes[i];
        if (!http__route_matches(r, req->segs, req->n_segs)) continue;
        int seen = 0;
        for (size_t j = 0; j < i && !seen; j++)
            seen = !strcmp(srv->routes[j].method, r->method) &&
                   http__route_matches(&srv->routes[j], req->segs, req->n_segs);
        if (seen) continue;
        int get = !strcmp(r->method, "GET");
        int w = snprintf(out + o, size - o, "%s%s%s", o ? ", " : "", r->method, get ? ", HEAD" : "");
        if (w < 0 || (size_t)w >= size - o) break;
        o += (size_t)w;
    }
}

/* Counts n more bytes of this request's body against max_body_total
 * (invariant 7): 0, or -1 when they would go past it. */
static int http__hold(http_request *req, size_t n) {
    http_server *srv = req->srv;
    pthread_mutex_lock(&srv->lock);
    int ok = n <= srv->max_body_total - srv->body_bytes;
    if (ok) srv->body_bytes += n, req->body_held += n;
    pthread_mutex_unlock(&srv->lock);
    return ok ? 0 : -1;
}

/* First call, headers read, body not yet: everything that can be decided
 * without the body is decided here, so a refused upload is never read. */
static enum MHD_Result http__begin(http_request *req) {
    http_server *srv = req->srv;
    char msg[256];
    int parsed = http__parse_target(req, msg, sizeof msg);
    if (parsed == -2) return MHD_NO; /* no memory for an answer either: close */
    if (parsed) return http__reject(req, 400, "%s", msg);
    int is_read = http__is_read(req->method);
    const char *want = strcmp(req->method, "HEAD") ? req->method : "GET";
    int path_known;
    const http__route *route = http__route_find(srv, req, want, &path_known);
    int under_api = !strcmp(req->segs[0], "api");
    if (srv->token) {
        int needs = !is_read || (srv->auth_reads && (path_known || under_api) &&
                                 !(route && (route->flags & HTTP_ROUTE_PUBLIC)));
        if (needs && !http__authorized(req)) {
            http_add_header(req, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"fisherd\"");
            const char *h = http_header(req, MHD_HTTP_HEADER_AUTHORIZATION), *q;
            http_query_status qs = is_read ? http_query_get(req, "access_token", &q) : HTTP_QUERY_ABSENT;
            if (qs != HTTP_QUERY_ABSENT) /* the token it gave is the one to name */
                return http_respond_error(req, 401, NULL, "access_token", "%s",
                                          qs == HTTP_QUERY_REPEATED ? "access_token is given more than once"
                                                                    : "the access_token is not the right one")
                           ? MHD_NO : http__queue(req);
            return http__reject(req, 401, "%s",
                                !h ? (is_read ? "this request needs 'Authorization: Bearer <token>' "
                                                "(or ?access_token=<token>)"
                                              : "this request needs 'Authorization: Bearer <token>'")
                                : strncasecmp(h, "Bearer ", 7)
                                    ? "the Authorization header must be 'Bearer <token>'"
                                    : "the bearer token is not the right one");
        }
    }
    if (!route) {
        if (path_known) {
            char allow[128];
            http__allow(req, allow, sizeof allow);
            http_add_header(req, MHD_HTTP_HEADER_ALLOW, allow);
            return http__reject(req, 405, "%s is not allowed here; allowed: %s", req->method, allow);
        }
        if (is_read && !under_api) {
            if (http__serve_static(req)) return MHD_NO;
            return http__queue(req);
        }
        return http__reject(req, 404, "no such endpoint: %s %s", req->method, req->target);
    }
    req->route = route;
    req->body_limit = route->max_body ? route->max_body : srv->max_body;
    const char *cl = http_header(req, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(cl, &end, 10);
        if (!errno && end != cl && !*end && n > req->body_limit)
            return http__reject(req, 413, "the request body is %llu bytes; the limit here is %zu", n,
                                req->body_limit);
        if (!errno && end != cl && !*end && n > 0) {
            if (http__hold(req, (size_t)n + 1)) {
                http_add_header(req, "Retry-After", "5");
                return http__reject(req, 503,
                                    "the daemon is receiving other uploads (%zu bytes at most at once): "
                                    "send this one again in a moment",
                                    srv->max_body_total);
            }
            req->body = malloc((size_t)n + 1);
            req->body_cap = req->body ? (size_t)n + 1 : 0;
        }
    }
    if (route->flags & HTTP_ROUTE_JSON_BODY) {
        const char *ct = http_content_type(req);
        if (ct && !http__is_json_type(ct))
            return http__reject(req, 415, "the body must be application/json (utf-8), not '%s'", ct);
    }
    return MHD_YES;
}

/* A piece of the body. Past the limit the rest is read and dropped, so the
 * client still hears 413, up to HTTP__DISCARD_FACTOR times the limit. */
static enum MHD_Result http__take_body(http_request *req, const char *data, size_t n) {
    double late = http__now_ms() - req->body_t0_ms - req->srv->deadline_ms;
    if (late > 0 && (double)(req->body_len + req->body_discarded + n) * 1e3 /
                        (late + req->srv->deadline_ms) < HTTP__MIN_BODY_RATE)
        return MHD_NO; /* trickled in (invariant 6) */
    if (req->body_too_large || n > req->body_limit - req->body_len) {
        if (!req->body_too_large) {
            req->body_too_large = 1;
            req->body_discarded = req->body_len;
            free(req->body);
            req->body = NULL;
            req->body_len = req->body_cap = 0;
        }
        req->body_discarded += n;
        return req->body_discarded / HTTP__DISCARD_FACTOR > req->body_limit ? MHD_NO : MHD_YES;
    }
    if (req->body_cap < req->body_len + n + 1) {
        size_t cap = req->body_cap ? req->body_cap * 2 : 4096;
        if (cap < req->body_len + n + 1) cap = req->body_len + n + 1;
        if (cap > req->body_limit + 1) cap = req->body_limit + 1;
        if (http__hold(req, cap - req->body_cap)) return MHD_NO; /* invariant 7 */
        char *b = realloc(req->body, cap);
        if (!b) return MHD_NO;
        req->body = b;
        req->body_cap = cap;
    }
    memcpy(req->body + req->body_len, data, n);
    req->body_len += n;
    req->body[req->body_len] = '\0';
    return MHD_YES;
}

/* Last call, body complete: the handler's turn (invariant 1). */
static enum MHD_Result http__finish(http_request *req) {
    http_server *srv = req->srv;
    const http__route *route = req->route;
    if (req->body_too_large)
        return http__reject(req, 413, "the request body is over the limit of %zu bytes here",
                            req->body_limit);
    if (route->flags & HTTP_ROUTE_JSON_BODY) {
        if (!req->body_len) return http__reject(req, 400, "this request needs a JSON body");
        if (!http__is_json_type(http_content_type(req)))
            return http__reject(req, 415,
                                "the body must be sent as 'Content-Type: application/json'");
    }
    fisher_error err = {{0}};
    int rc = route->handler(req, srv->app, &err);
    if (rc || !req->resp) {
        char msg[600];
        if (rc)
            snprintf(msg, sizeof msg, "%s",
                     err.msg[0] ? err.msg : "the handler failed without saying why");
        else
            snprintf(msg, sizeof msg, "the handler of %s %s chose no response", route->method,
                     route->pattern);
        http__log_error(srv, "%s %s: 500: %s", req->method, req->target, msg);
        if (req->resp) { /* a stream's on_close runs now */
            MHD_destroy_response(req->resp);
            req->resp = NULL;
        }
        http__headers_free(req);
        if (http_respond_error(req, 500, NULL, NULL, "%s", msg)) return MHD_NO;
    }
    return http__queue(req);
}

/* ------------------------------------------------ the watchdog (invariant 6) */

/* MHD's connection notices: a connection is watched from its start (it
 * waits for its first request's headers) until it closes. */
static void http__on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                                enum MHD_ConnectionNotificationCode code) {
    http_server *srv = cls;
    http__conn *c = *socket_context;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (!ci || !(c = calloc(1, sizeof *c))) return; /* unwatched: only MHD's timeout applies */
        c->fd = ci->connect_fd;
        c->reading_since = http__now_ms();
        pthread_mutex_lock(&srv->lock);
        c->next = srv->conns;
        if (c->next) c->next->prev = c;
        srv->conns = c;
        pthread_mutex_unlock(&srv->lock);
        *socket_context = c;
    } else if (c) {
        pthread_mutex_lock(&srv->lock);
        if (c->prev) c->prev->next = c->next;
        else srv->conns = c->next;
        if (c->next) c->next->prev = c->prev;
        pthread_mutex_unlock(&srv->lock);
        free(c);
        *socket_context = NULL;
    }
}

/* Since when conn waits for a request's headers; 0: it does not. */
static void http__reading(http_server *srv, struct MHD_Connection *conn, double since) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    http__conn *c = ci ? ci->socket_context : NULL;
    if (!c) return;
    pthread_mutex_lock(&srv->lock);
    c->reading_since = since;
    pthread_mutex_unlock(&srv->lock);
}

static void *http__watchdog(void *arg) {
    http_server *srv = arg;
    /* a quarter of the deadline between rounds, at most 250 ms: a slow
     * client is closed at most 25 % late */
    double period = srv->deadline_ms / 4 < 250 ? srv->deadline_ms / 4 : 250;
    pthread_mutex_lock(&srv->lock);
    while (!srv->stopping) {
        double now = http__now_ms();
        for (http__conn *c = srv->conns; c; c = c->next)
            if (c->reading_since > 0 && now - c->reading_since > srv->deadline_ms) {
                shutdown(c->fd, SHUT_RDWR);
                c->reading_since = 0;
            }
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        long ns = ts.tv_nsec + (long)(period * 1e6);
        ts.tv_sec += ns / 1000000000L, ts.tv_nsec = ns % 1000000000L;
        pthread_cond_timedwait(&srv->wake, &srv->lock, &ts);
    }
    pthread_mutex_unlock(&srv->lock);
    return NULL;
}

/* Lowers this connection thread's priority (Linux keeps a nice value and
 * a policy per thread): the main thread's nice plus `nice`, and
 * SCHED_IDLE, so that requests run on the CPU training leaves. With only
 * a lower nice, handlers still took 0.4-0.5 of 2 cores from a training
 * job under saturating load (step +41-49 %, make bench's
 * serve_bench.py); as SCHED_IDLE they take 0.2-0.3 (+14-16 %), and a
 * dashboard's pace costs under 3 %. Cheap enough to repeat per request;
 * failures change nothing that matters. */
#ifndef SCHED_IDLE
#define SCHED_IDLE 5 /* Linux's; <sched.h> names it only under _GNU_SOURCE */
#endif

static void http__be_nice(int nice) {
    pid_t tid = (pid_t)syscall(SYS_gettid);
    errno = 0;
    int base = getpriority(PRIO_PROCESS, (id_t)getpid()); /* the main thread's, not this one's */
    if (errno) return;
    int want = base + nice > 19 ? 19 : base + nice;
    if (getpriority(PRIO_PROCESS, (id_t)tid) != want) setpriority(PRIO_PROCESS, (id_t)tid, want);
    struct sched_param sp = {0};
    if (sched_getscheduler(0) != SCHED_IDLE) sched_setscheduler(0, SCHED_IDLE, &sp);
}

static enum MHD_Result http__on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                        const char *method, const char *version,
                                        const char *upload_data, size_t *upload_data_size,
                                        void **req_cls) {
    http_request *req = *req_cls;
    (void)cls, (void)url, (void)version;
    if (!req) return MHD_NO; /* http__on_uri ran out of memory */
    if (req->queued) {       /* answered early; MHD may still hand us the body */
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (!req->started) {
        req->started = 1;
        req->conn = conn;
        req->method = method;
        req->body_t0_ms = http__now_ms();
        http__reading(req->srv, conn, 0); /* the headers are in (invariant 6) */
        if (req->srv->nice) http__be_nice(req->srv->nice);
        return http__begin(req);
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        return http__take_body(req, upload_data, n);
    }
    return http__finish(req);
}

static void http__request_free(http_request *req) {
    if (req->resp) MHD_destroy_response(req->resp);
    if (req->sse) http__sse_unref(req->sse);
    http__headers_free(req);
    free(req->body);
    free(req->query);
    free(req->query_buf);
    free(req->segs);
    free(req->seg_buf);
    free(req->target);
    free(req);
}

/* MHD's first look at a request, with the target exactly as sent: this is
 * where the request object is born (MHD hands it back as *req_cls), and
 * where the raw target is kept, since the url MHD passes later is already
 * %-decoded — too late to tell "%2F" from "/". */
static void *http__on_uri(void *cls, const char *uri, struct MHD_Connection *conn) {
    http_request *req = http__request_new(cls, uri);
    if (req) req->conn = conn;
    return req;
}

static void http__on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                               enum MHD_RequestTerminationCode toe) {
    http_server *srv = cls;
    http_request *req = *req_cls;
    (void)toe;
    *req_cls = NULL;
    http__reading(srv, conn, http__now_ms()); /* kept alive: the next request's headers */
    if (!req) return;
    pthread_mutex_lock(&srv->lock);
    srv->body_bytes -= req->body_held;
    pthread_mutex_unlock(&srv->lock);
    uint64_t bytes = req->resp_bytes;
    if (req->sse) {
        pthread_mutex_lock(&req->sse->lock);
        bytes = req->sse->bytes;
        pthread_mutex_unlock(&req->sse->lock);
    }
    if (req->method && !strcmp(req->method, "HEAD")) bytes = 0;
    if (srv->access_log) {
        char *q = req->raw_query ? NULL : strchr(req->target, '?');
        if (q) *q = '\0'; /* never parsed: MHD refused it itself */
        srv->access_log(srv->log_ctx, req->method ? req->method : "-", req->target,
                        req->queued ? (int)req->status : 0, bytes, http__now_ms() - req->t0_ms);
    }
    http__request_free(req);
}

/* What MHD says when a content reader returns END_WITH_ERROR. Ours does
 * so only to end an event stream on purpose — its client left, the server
 * is stopping, or it fell behind and was dropped (invariant 5; the
 * browser reconnects) — so the line is no error of the daemon's. */
#define HTTP__STREAM_ENDED_BY_US "Closing connection (application error generating response)"

static void http__on_mhd_log(void *cls, const char *fmt, va_list ap) {
    const http_server *srv = cls;
    if (!srv->error_log) return;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = '\0';
    if (!strncmp(msg, HTTP__STREAM_ENDED_BY_US, sizeof HTTP__STREAM_ENDED_BY_US - 1)) return;
    char line[600];
    snprintf(line, sizeof line, "libmicrohttpd: %s", msg);
    srv->error_log(srv->log_ctx, line);
}

/* ------------------------------------------------------------ the server */

/* "HOST:PORT" with a numeric IPv4 host or a bracketed IPv6 one. */
static int http__parse_listen(const char *spec, struct sockaddr_storage *ss, socklen_t *len,
                              int *loopback, fisher_error *err) {
    char host[INET6_ADDRSTRLEN + 1];
    const char *port_s;
    size_t hlen;
    memset(ss, 0, sizeof *ss);
    if (spec[0] == '[') {
        const char *close = strchr(spec, ']');
        if (!close || close[1] != ':') goto bad;
        hlen = (size_t)(close - spec - 1);
        if (hlen >= sizeof host) goto bad;
        memcpy(host, spec + 1, hlen);
        port_s = close + 2;
    } else {
        const char *colon = strrchr(spec, ':');
        if (!colon) goto bad;
        hlen = (size_t)(colon - spec);
        if (hlen >= sizeof host || memchr(spec, ':', hlen)) goto bad;
        memcpy(host, spec, hlen);
        port_s = colon + 1;
    }
    host[hlen] = '\0';
    size_t plen = strlen(port_s);
    if (!plen || plen > 5 || strspn(port_s, "0123456789") != plen || atol(port_s) > 65535) goto bad;
    uint16_t port = (uint16_t)atol(port_s);
    if (spec[0] == '[') {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1) goto bad;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        *len = sizeof *a;
        const uint8_t *b = a->sin6_addr.s6_addr;
        *loopback = IN6_IS_ADDR_LOOPBACK(&a->sin6_addr) ||
                    (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr) && b[12] == 127);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        if (inet_pton(AF_INET, host, &a->sin_addr) != 1) goto bad;
        a->sin_family = AF_INET;
        a->sin_port = htons(port);
        *len = sizeof *a;
        *loopback = (ntohl(a->sin_addr.s_addr) >> 24) == 127;
    }
    return 0;
bad:
    return fisher_errorf(err,
                         "listen address '%s': expected HOST:PORT with a numeric IPv4 host "
                         "(127.0.0.1:8080) or a bracketed IPv6 one ([::1]:8080), port 0-65535",
                         spec);
}

/* Why MHD could not start, as best we can tell: try the bind ourselves. */
static int http__explain_start_failure(const char *listen, const struct sockaddr_storage *ss,
                                       socklen_t len, fisher_error *err) {
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1, e = 0;
    if (fd < 0) e = errno;
    else if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
             bind(fd, (const struct sockaddr *)ss, len))
        e = errno;
    if (fd >= 0) close(fd);
    if (e) return fisher_errorf(err, "cannot listen on %s: %s", listen, strerror(e));
    return fisher_errorf(err,
                         "libmicrohttpd would not start on %s (threads or descriptors "
                         "exhausted? its own message went to the error log)",
                         listen);
}

static void http__server_free(http_server *srv) {
    http__routes_free(srv->routes, srv->n_routes);
    free(srv->token);
    free(srv->static_root);
    pthread_cond_destroy(&srv->wake);
    pthread_mutex_destroy(&srv->lock);
    free(srv);
}

int http_server_start(const http_config *cfg, const http_route *routes, size_t n_routes, void *app,
                      http_server **out, fisher_error *err) {
    http_config c = cfg ? *cfg : (http_config){0};
    const char *listen = c.listen ? c.listen : "127.0.0.1:8080";
    *out = NULL;
    http_server *srv = calloc(1, sizeof *srv);
    if (!srv) return fisher_errorf(err, "http server: out of memory");
    pthread_condattr_t ca;
    int cond_ok = !pthread_condattr_init(&ca) && !pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) &&
                  !pthread_cond_init(&srv->wake, &ca);
    if (!cond_ok || pthread_mutex_init(&srv->lock, NULL)) {
        if (cond_ok) pthread_cond_destroy(&srv->wake);
        free(srv);
        return fisher_errorf(err, "http server: cannot create a mutex");
    }
    srv->app = app;
    srv->auth_reads = c.auth_reads;
    srv->nice = c.nice < 0 ? 0 : c.nice > 19 ? 19 : c.nice;
    srv->max_body = c.max_body ? c.max_body : HTTP_DEFAULT_MAX_BODY;
    srv->max_body_total = c.max_body_total ? c.max_body_total : HTTP_DEFAULT_MAX_BODY_TOTAL;
    srv->sse_buffer = c.sse_buffer ? c.sse_buffer : HTTP_DEFAULT_SSE_BUFFER;
    srv->access_log = c.access_log;
    srv->error_log = c.error_log;
    srv->log_ctx = c.log_ctx;
    unsigned max_conn = c.max_connections ? c.max_connections : HTTP_DEFAULT_MAX_CONNECTIONS;
    unsigned timeout = c.timeout_s ? c.timeout_s : HTTP_DEFAULT_TIMEOUT_S;
    srv->deadline_ms = timeout * 1e3;
    srv->heartbeat_ms = c.sse_heartbeat_ms ? c.sse_heartbeat_ms : HTTP_DEFAULT_SSE_HEARTBEAT_MS;
    /* An idle stream must write well within the timeout or MHD closes it. */
    if (srv->heartbeat_ms > timeout * 500u) srv->heartbeat_ms = timeout * 500u;

    if (c.token && c.token[0]) {
        for (const char *t = c.token; *t; t++)
            if (*t < 0x21 || *t > 0x7e) {
                fisher_errorf(err, "http token: only printable ASCII without spaces can travel in "
                                   "an Authorization header");
                goto fail;
            }
        srv->token = http__strdup(c.token);
        srv->token_len = strlen(c.token);
        if (!srv->token) {
            fisher_errorf(err, "http server: out of memory");
            goto fail;
        }
    }
    if (c.static_root) {
        char real[PATH_MAX];
        struct stat st;
        if (!realpath(c.static_root, real) || stat(real, &st) || !S_ISDIR(st.st_mode)) {
            fisher_errorf(err, "static root '%s': %s", c.static_root,
                          errno ? strerror(errno) : "not a directory");
            goto fail;
        }
        if (!(srv->static_root = http__strdup(real))) {
            fisher_errorf(err, "http server: out of memory");
            goto fail;
        }
        srv->static_root_len = strlen(real);
        if (srv->static_root_len == 1) srv->static_root_len = 0; /* "/" + "/x" */
    }
    if (n_routes && !(srv->routes = calloc(n_routes, sizeof *srv->routes))) {
        fisher_errorf(err, "http server: out of memory");
        goto fail;
    }
    for (size_t i = 0; i < n_routes; i++) {
        srv->n_routes = i + 1;
        if (http__route_compile(&srv->routes[i], &routes[i], err)) goto fail;
    }

    struct sockaddr_storage ss;
    socklen_t ss_len = 0;
    int loopback = 0;
    if (http__parse_listen(listen, &ss, &ss_len, &loopback, err)) goto fail;
    if (!loopback && !srv->token) {
        fisher_errorf(err,
                      "listening on %s reaches beyond this machine: set a token, which writes "
                      "then require",
                      listen);
        goto fail;
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL |
                     (ss.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0) |
                     (srv->error_log ? MHD_USE_ERROR_LOG : 0);
    /* the logger first: MHD reports options it parses before it to stderr */
    srv->mhd = MHD_start_daemon(
        flags, 0, NULL, NULL, http__on_request, srv, MHD_OPTION_EXTERNAL_LOGGER, http__on_mhd_log, srv,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT, max_conn,
        MHD_OPTION_CONNECTION_TIMEOUT, timeout, MHD_OPTION_URI_LOG_CALLBACK, http__on_uri, srv,
        MHD_OPTION_NOTIFY_COMPLETED, http__on_completed, srv,
        MHD_OPTION_NOTIFY_CONNECTION, http__on_connection, srv,
        /* Beyond loopback, one host may hold at most half the connections,
         * so one misbehaving client cannot lock the others out. On
         * loopback every client (and a local reverse proxy) is 127.0.0.1:
         * a per-address limit would only be a second global one. */
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, loopback ? 0u : (max_conn + 1) / 2, MHD_OPTION_END);
    if (!srv->mhd) {
        http__explain_start_failure(listen, &ss, ss_len, err);
        goto fail;
    }
    if (pthread_create(&srv->watchdog, NULL, http__watchdog, srv)) {
        MHD_stop_daemon(srv->mhd);
        fisher_errorf(err, "http server: cannot start its watchdog thread");
        goto fail;
    }
    srv->watchdog_started = 1;
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(srv->mhd, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = di ? di->port : 0;
    *out = srv;
    return 0;
fail:
    http__server_free(srv);
    return -1;
}

unsigned http_server_port(const http_server *srv) { return srv->port; }

void http_server_stop(http_server *srv) {
    if (!srv) return;
    /* Wake every stream first: their threads sleep in poll() and MHD
     * joins connection threads before it returns. Each ends with
     * END_WITH_ERROR and gets its on_close from its own thread. */
    pthread_mutex_lock(&srv->lock);
    srv->stopping = 1;
    for (http_sse *s = srv->streams; s; s = s->next) {
        pthread_mutex_lock(&s->lock);
        s->stopping = 1;
        http__sse_wake(s);
        pthread_mutex_unlock(&s->lock);
    }
    pthread_cond_signal(&srv->wake);
    pthread_mutex_unlock(&srv->lock);
    if (srv->watchdog_started) pthread_join(srv->watchdog, NULL);
    MHD_stop_daemon(srv->mhd);
    http__server_free(srv);
}

/* ------------------------------------------------- tests and fuzzing */

int http__probe_target(const char *target, const char *method, const http_route *routes,
                       size_t n_routes, http__probe_fn probe, void *ctx, fisher_error *err) {
    http_server srv = {0}; /* routes only: nothing here listens, locks or logs */
    http_request *req = NULL;
    int rc = -1;
    if (n_routes && !(srv.routes = calloc(n_routes, sizeof *srv.routes))) {
        fisher_errorf(err, "http probe: out of memory");
        goto out;
    }
    for (size_t i = 0; i < n_routes; i++) {
        srv.n_routes = i + 1;
        if (http__route_compile(&srv.routes[i], &routes[i], err)) goto out;
    }
    if (!(req = http__request_new(&srv, target))) {
        fisher_errorf(err, "http probe: out of memory");
        goto out;
    }
    req->method = method;
    char msg[256];
    int parsed = http__parse_target(req, msg, sizeof msg);
    if (parsed == -2) {
        fisher_errorf(err, "http probe: out of memory");
        goto out;
    }
    if (parsed) {
        rc = 400;
        goto out;
    }
    int path_known;
    req->route = http__route_find(&srv, req, strcmp(method, "HEAD") ? method : "GET", &path_known);
    if (!req->route) {
        rc = path_known ? 405 : 404;
        goto out;
    }
    if (probe) probe(req, ctx);
    rc = 0;
out:
    if (req) http__request_free(req);
    http__routes_free(srv.routes, srv.n_routes);
    return rc;
}
