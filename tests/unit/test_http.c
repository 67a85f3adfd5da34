/*
 * test_http.c — the HTTP layer (api/http.h) over real sockets.
 *
 * A server is started on 127.0.0.1, port 0, with a handful of test routes
 * and a temporary static root under /tmp, and is spoken to by the tiny
 * blocking HTTP/1.1 client below (plain sockets: no new dependency). Every
 * status the REST API relies on is provoked through the wire — routing
 * and decoding, 400/401/404/405/413/415/500 in the error shape, 201 with
 * Location, CSV and file downloads, the static dashboard and the ways out
 * of its root, Server-Sent Events fed from another thread (order,
 * heartbeat, a client leaving, a client too slow, the server stopping),
 * and requests answered while a stream stays open. Callbacks are counted
 * to prove they ran.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "http.h"
#include "testutil.h"

#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>

/* ------------------------------------------------- a tiny HTTP/1.1 client */

typedef struct {
    int status;
    char head[8192];            /* status line and headers */
    char *body;                 /* de-chunked, NUL-terminated */
    size_t len;
} tc_resp;

static int tc_connect_to(const struct sockaddr *a, socklen_t alen) {
    int fd = socket(a->sa_family, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    if (connect(fd, a, alen)) fail_msg("connect: %s", strerror(errno));
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

static int tc_connect(unsigned port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return tc_connect_to((struct sockaddr *)&a, sizeof a);
}

static void tc_send(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) return; /* the server may answer and close before reading it all */
        p += w;
        n -= (size_t)w;
    }
}

/* memmem is a GNU extension; the build is -D_DEFAULT_SOURCE. */
static const char *tc_find(const char *h, size_t n, const char *needle) {
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if (!memcmp(h + i, needle, k)) return h + i;
    return NULL;
}

/* Decodes the complete chunks of a chunked body; *done when the last one came. */
static size_t tc_dechunk(const char *in, size_t n, char *out, int *done) {
    size_t i = 0, o = 0;
    *done = 0;
    for (;;) {
        const char *crlf = tc_find(in + i, n - i, "\r\n");
        if (!crlf) break;
        size_t size = strtoul(in + i, NULL, 16);
        size_t data = (size_t)(crlf - in) + 2;
        if (size == 0) {
            *done = 1;
            break;
        }
        if (data + size + 2 > n) break;
        memcpy(out + o, in + data, size);
        o += size;
        i = data + size + 2;
    }
    out[o] = '\0';
    return o;
}

static int tc_header(const tc_resp *r, const char *name, char *out, size_t size) {
    size_t nlen = strlen(name);
    for (const char *l = strstr(r->head, "\r\n"); l; l = strstr(l + 2, "\r\n")) {
        const char *h = l + 2;
        if (!strncasecmp(h, name, nlen) && h[nlen] == ':') {
            h += nlen + 1;
            while (*h == ' ') h++;
            const char *e = strstr(h, "\r\n");
            size_t len = e ? (size_t)(e - h) : strlen(h);
            if (len >= size) len = size - 1;
            memcpy(out, h, len);
            out[len] = '\0';
            return 1;
        }
    }
    return 0;
}

/* Reads to EOF (every request says Connection: close) and parses. */
static tc_resp tc_read(int fd) {
    size_t cap = 1 << 16, n = 0;
    char *raw = malloc(cap + 1);
    for (;;) {
        if (n == cap) raw = realloc(raw, (cap *= 2) + 1);
        ssize_t r = recv(fd, raw + n, cap - n, 0);
        if (r <= 0) break;
        n += (size_t)r;
    }
    raw[n] = '\0';
    tc_resp resp = {0};
    char *sep = strstr(raw, "\r\n\r\n");
    if (!sep) fail_msg("no complete response (%zu bytes): %.200s", n, raw);
    size_t hlen = (size_t)(sep - raw) + 2;
    assert_true(hlen < sizeof resp.head);
    memcpy(resp.head, raw, hlen);
    resp.head[hlen] = '\0';
    resp.status = atoi(raw + 9);
    const char *b = sep + 4;
    size_t blen = n - (size_t)(b - raw);
    resp.body = malloc(blen + 1);
    char te[64];
    if (tc_header(&resp, "Transfer-Encoding", te, sizeof te) && !strcasecmp(te, "chunked")) {
        int done;
        resp.len = tc_dechunk(b, blen, resp.body, &done);
        assert_true(done);
    } else {
        memcpy(resp.body, b, blen);
        resp.body[blen] = '\0';
        resp.len = blen;
    }
    free(raw);
    return resp;
}

/* Sends a raw request (its text is printf-formatted) and reads the answer. */
static tc_resp tc_raw(unsigned port, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static tc_resp tc_raw(unsigned port, const char *fmt, ...) {
    char req[16384];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(req, sizeof req, fmt, ap);
    va_end(ap);
    assert_true(n > 0 && (size_t)n < sizeof req);
    int fd = tc_connect(port);
    tc_send(fd, req, (size_t)n);
    tc_resp r = tc_read(fd);
    close(fd);
    return r;
}

static tc_resp tc_get(unsigned port, const char *target) {
    return tc_raw(port, "GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", target);
}

static tc_resp tc_post(unsigned port, const char *target, const char *ctype, const char *body,
                       const char *extra) {
    char ct[128] = "";
    if (ctype) snprintf(ct, sizeof ct, "Content-Type: %s\r\n", ctype);
    return tc_raw(port,
                  "POST %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n%s%s"
                  "Content-Length: %zu\r\n\r\n%s",
                  target, ct, extra ? extra : "", strlen(body), body);
}

static void tc_free(tc_resp *r) { free(r->body); }

static json_t *tc_json(const tc_resp *r) {
    char ct[128];
    assert_true(tc_header(r, "Content-Type", ct, sizeof ct));
    assert_string_equal(ct, "application/json");
    json_error_t je;
    json_t *j = json_loadb(r->body, r->len, 0, &je);
    if (!j) fail_msg("response is not JSON (%s): %s", je.text, r->body);
    return j;
}

/* Status and {"error": {"code", "message", "field"}}; returns the message. */
static void assert_error(tc_resp *r, int status, const char *code, const char *field,
                         const char *words) {
    if (r->status != status) fail_msg("status %d, want %d: %s", r->status, status, r->body);
    json_t *j = tc_json(r);
    json_t *e = json_object_get(j, "error");
    assert_non_null(e);
    assert_int_equal(json_object_size(e), 3);
    assert_string_equal(json_string_value(json_object_get(e, "code")), code);
    const char *msg = json_string_value(json_object_get(e, "message"));
    assert_non_null(msg);
    json_t *f = json_object_get(e, "field");
    assert_non_null(f); /* present, null or a string */
    if (field) assert_string_equal(json_string_value(f), field);
    else assert_true(json_is_null(f));
    if (words && !strstr(msg, words)) fail_msg("message '%s' lacks '%s'", msg, words);
    printf("  %d %-24s %s\n", status, code, msg);
    json_decref(j);
    tc_free(r);
}

/* -------------------------------------------------------- the application */

typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    http_sse *stream;           /* the newest open stream, until its on_close */
    int opened, closed;
    int logs, last_status;
    uint64_t last_bytes;
    char last_method[16], last_path[256];
    int errors;
    char last_error[1024];
    char model_path[PATH_MAX];
} app_state;

static void app_init(app_state *a) {
    memset(a, 0, sizeof *a);
    pthread_mutex_init(&a->lock, NULL);
    pthread_cond_init(&a->cond, NULL);
}

static void app_destroy(app_state *a) {
    pthread_mutex_destroy(&a->lock);
    pthread_cond_destroy(&a->cond);
}

static void on_access(void *ctx, const char *method, const char *path, int status, uint64_t bytes,
                      double ms) {
    app_state *a = ctx;
    assert_true(ms >= 0);
    pthread_mutex_lock(&a->lock);
    a->logs++;
    a->last_status = status;
    a->last_bytes = bytes;
    snprintf(a->last_method, sizeof a->last_method, "%s", method);
    snprintf(a->last_path, sizeof a->last_path, "%s", path);
    pthread_cond_broadcast(&a->cond);
    pthread_mutex_unlock(&a->lock);
}

static void on_error(void *ctx, const char *msg) {
    app_state *a = ctx;
    pthread_mutex_lock(&a->lock);
    a->errors++;
    snprintf(a->last_error, sizeof a->last_error, "%s", msg);
    pthread_mutex_unlock(&a->lock);
}

/* Waits until *counter >= want (under a->lock); 0 on timeout. */
static int app_wait(app_state *a, const int *counter, int want, int timeout_ms) {
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) dl.tv_sec++, dl.tv_nsec -= 1000000000L;
    pthread_mutex_lock(&a->lock);
    while (*counter < want)
        if (pthread_cond_timedwait(&a->cond, &a->lock, &dl) == ETIMEDOUT) break;
    int ok = *counter >= want;
    pthread_mutex_unlock(&a->lock);
    return ok;
}

static int h_job(http_request *req, void *app, fisher_error *err) {
    (void)app, (void)err;
    return http_respond_json(req, 200, json_pack("{s:s}", "id", http_param(req, "id")));
}

static int h_jobs_list(http_request *req, void *app, fisher_error *err) {
    (void)app, (void)err;
    long long limit;
    if (http_query_int(req, "limit", 1, 1000, 100, &limit)) return 0;
    return http_respond_json(req, 200, json_pack("{s:[], s:I}", "jobs", "limit", (json_int_t)limit));
}

static const char *query_status_name(http_query_status s) {
    static const char *names[] = {"absent", "ok", "repeated", "invalid"};
    return names[s];
}

/* Echoes the path parameter and what the query accessors say. */
static int h_drift(http_request *req, void *app, fisher_error *err) {
    (void)app, (void)err;
    json_t *out = json_pack("{s:s, s:s}", "id", http_param(req, "id"), "path", http_path(req));
    const char *names[] = {"group", "x", "bad", "plus", "empty", "missing"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const char *v;
        http_query_status st = http_query_get(req, names[i], &v);
        json_object_set_new(out, names[i],
                            json_pack("{s:s, s:s?}", "status", query_status_name(st), "value", v));
    }
    json_object_set_new(out, "n", json_integer((json_int_t)http_query_count(req)));
    json_int_t invalid = 0;
    for (size_t i = 0; i < http_query_count(req); i++) {
        const char *name, *value;
        http_query_at(req, i, &name, &value);
        assert_non_null(name);
        invalid += value == NULL;
    }
    json_object_set_new(out, "invalid", json_integer(invalid));
    assert_null(http_param(req, "nope"));
    return http_respond_json(req, 200, out);
}

static int h_create(http_request *req, void *app, fisher_error *err) {
    (void)app, (void)err;
    json_t *spec = http_body_json(req);
    if (!spec) return 0; /* 400 already chosen */
    const char *name = json_string_value(json_object_get(spec, "name"));
    if (!name) {
        json_decref(spec);
        return http_respond_error(req, 400, "invalid_field", "name", "name must be a string");
    }
    size_t len;
    const char *body = http_body(req, &len);
    assert_int_equal(body[len], '\0');
    http_add_header(req, "Location", "/api/v1/jobs/j_1");
    assert_int_equal(http_add_header(req, "X-Bad", "a\r\nInjected: 1"), -1);
    assert_int_equal(http_add_header(req, "Bad Name", "v"), -1);
    int rc = http_respond_json(req, 201, json_pack("{s:s, s:s}", "id", "j_1", "name", name));
    /* a second response is refused and its reference still taken */
    assert_int_equal(http_respond_json(req, 200, json_object()), -1);
    json_decref(spec);
    return rc;
}

static int h_delete(http_request *req, void *app, fisher_error *err) {
    (void)app, (void)err;
    return http_respond_error(req, 409, NULL, "id", "job %s is still running; cancel it first",
                              http_param(req, "id"));
}

static const char csv_text[] = "step,drift\n1,0.5\n2,0.25\n";

static int h_export(http_request *req, void *app, fisher_error *err) {
    (void)app, (void)err;
    if (http_set_download_name(req, "drift.csv")) return -1;
    assert_int_equal(http_set_download_name(req, "../x\".csv"), -1);
    return http_respond_text(req, 200, "text/csv; charset=utf-8", csv_text, sizeof csv_text - 1);
}

static int h_model(http_request *req, void *app, fisher_error *err) {
    app_state *a = app;
    int fd = open(a->model_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fisher_errorf(err, "cannot open %s", a->model_path);
    return http_respond_file(req, fd, "application/octet-stream", "job_1.safetensors");
}

static int h_upload(http_request *req, void *app, fisher_error *err) {
    (void)app, (void)err;
    size_t len;
    const char *body = http_body(req, &len);
    assert_int_equal(body[len], '\0');
    return http_respond_json(req, 200, json_pack("{s:I}", "bytes", (json_int_t)len));
}

static int h_fail(http_request *req, void *app, fisher_error *err) {
    (void)app;
    /* a response chosen before failing is replaced by the 500 */
    http_respond_json(req, 200, json_object());
    return fisher_errorf(err, "store: database is locked (job %s)", "j_9");
}

static int h_nothing(http_request *req, void *app, fisher_error *err) {
    (void)req, (void)app, (void)err;
    return 0;
}

static int h_health(http_request *req, void *app, fisher_error *err) {
    (void)app, (void)err;
    return http_respond_text(req, 200, "text/plain; charset=utf-8", "ok\n", 3);
}

static void on_stream_close(http_sse *s, void *ctx) {
    app_state *a = ctx;
    pthread_mutex_lock(&a->lock);
    if (a->stream == s) a->stream = NULL;
    a->closed++;
    pthread_cond_broadcast(&a->cond);
    pthread_mutex_unlock(&a->lock);
}

static int h_events(http_request *req, void *app, fisher_error *err) {
    app_state *a = app;
    http_sse *s = http_respond_sse(req, on_stream_close, a);
    if (!s) return fisher_errorf(err, "cannot open the event stream");
    assert_null(http_respond_sse(req, on_stream_close, a)); /* one response only */
    pthread_mutex_lock(&a->lock);
    a->stream = s;
    a->opened++;
    pthread_cond_broadcast(&a->cond);
    pthread_mutex_unlock(&a->lock);
    return 0;
}

static const http_route test_routes[] = {
    {"GET", "/api/v1/jobs", h_jobs_list, 0, 0},
    {"POST", "/api/v1/jobs", h_create, HTTP_ROUTE_JSON_BODY, 0},
    {"GET", "/api/v1/jobs/{id}", h_job, 0, 0},
    {"DELETE", "/api/v1/jobs/{id}", h_delete, 0, 0},
    {"GET", "/api/v1/jobs/{id}/drift", h_drift, 0, 0},
    {"GET", "/api/v1/jobs/{id}/events", h_events, 0, 0},
    {"GET", "/api/v1/export", h_export, 0, 0},
    {"GET", "/api/v1/model", h_model, 0, 0},
    {"POST", "/api/v1/upload", h_upload, 0, 16},
    {"GET", "/api/v1/fail", h_fail, 0, 0},
    {"GET", "/api/v1/nothing", h_nothing, 0, 0},
    {"GET", "/healthz", h_health, HTTP_ROUTE_PUBLIC, 0},
};
#define N_TEST_ROUTES (sizeof test_routes / sizeof test_routes[0])

/* ---------------------------------------------------------------- fixture */

typedef struct {
    char base[64];              /* /tmp/fisherd-http-XXXXXX */
    char root[128];             /* base/web: the static root */
    app_state app;
    http_server *srv;
    unsigned port;
} fixture;

static void write_file(const char *dir, const char *name, const char *text) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static http_config test_config(fixture *fx) {
    http_config c = {0};
    c.listen = "127.0.0.1:0";
    c.static_root = fx->root;
    c.max_body = 64 << 10;
    c.timeout_s = 10;
    c.sse_heartbeat_ms = 4000; /* longer than any wait below: a quick close notice is not a beat */
    c.access_log = on_access;
    c.error_log = on_error;
    c.log_ctx = &fx->app;
    return c;
}

static int setup(void **state) {
    fixture *fx = calloc(1, sizeof *fx);
    snprintf(fx->base, sizeof fx->base, "/tmp/fisherd-http-XXXXXX");
    if (!mkdtemp(fx->base)) return -1;
    snprintf(fx->root, sizeof fx->root, "%s/web", fx->base);
    char p[512];
    mkdir(fx->root, 0755);
    snprintf(p, sizeof p, "%s/sub", fx->root);
    mkdir(p, 0755);
    write_file(fx->root, "index.html", "<!doctype html><title>fisherd</title>\n");
    write_file(fx->root, "app.js", "console.log('hi');\n");
    write_file(fx->root, "style.css", "body{}\n");
    write_file(fx->root, "data.json", "{}\n");
    write_file(fx->root, "logo.svg", "<svg/>\n");
    write_file(fx->root, "img.png", "\x89PNG\r\n");
    write_file(fx->root, "favicon.ico", "ico");
    write_file(fx->root, "font.woff2", "wOF2");
    write_file(fx->root, ".hidden", "secret");
    write_file(p, "index.html", "sub index\n");
    write_file(fx->base, "secret.txt", "outside the root\n");
    write_file(fx->base, "model.safetensors", "not really weights, but bytes all the same\n");
    snprintf(fx->app.model_path, sizeof fx->app.model_path, "%s/model.safetensors", fx->base);
    char target[512];
    snprintf(p, sizeof p, "%s/escape.txt", fx->root);
    snprintf(target, sizeof target, "%s/secret.txt", fx->base);
    if (symlink(target, p)) return -1;
    snprintf(p, sizeof p, "%s/outside", fx->root);
    if (symlink(fx->base, p)) return -1;
    snprintf(p, sizeof p, "%s/alias.js", fx->root);
    if (symlink("app.js", p)) return -1;

    char model[PATH_MAX];
    snprintf(model, sizeof model, "%s", fx->app.model_path);
    app_init(&fx->app);
    snprintf(fx->app.model_path, sizeof fx->app.model_path, "%s", model);
    http_config c = test_config(fx);
    fisher_error err = {{0}};
    if (http_server_start(&c, test_routes, N_TEST_ROUTES, &fx->app, &fx->srv, &err)) {
        fprintf(stderr, "http_server_start: %s\n", err.msg);
        return -1;
    }
    fx->port = http_server_port(fx->srv);
    printf("  serving %s on 127.0.0.1:%u\n", fx->root, fx->port);
    *state = fx;
    return 0;
}

static int teardown(void **state) {
    fixture *fx = *state;
    http_server_stop(fx->srv);
    app_destroy(&fx->app);
    rm_tree(fx->base);
    free(fx);
    return 0;
}

/* ------------------------------------------------------------------ tests */

static void test_routing_params_and_query(void **state) {
    fixture *fx = *state;
    tc_resp r = tc_get(fx->port, "/api/v1/jobs/j%2042/drift?group=enc.0%2Fw&x=1&x=2&bad=%zz"
                                 "&plus=a+b%2Bc&empty&%E2%9C%93=1&&%zz=1&x=%FF");
    assert_int_equal(r.status, 200);
    json_t *j = tc_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "id")), "j 42");
    assert_string_equal(json_string_value(json_object_get(j, "path")), "/api/v1/jobs/j%2042/drift");
    json_t *g = json_object_get(j, "group");
    assert_string_equal(json_string_value(json_object_get(g, "status")), "ok");
    assert_string_equal(json_string_value(json_object_get(g, "value")), "enc.0/w");
    g = json_object_get(j, "bad");
    assert_string_equal(json_string_value(json_object_get(g, "status")), "invalid");
    assert_string_equal(json_string_value(json_object_get(g, "status")), "invalid");
    assert_true(json_is_null(json_object_get(g, "value")));
    g = json_object_get(j, "plus");
    assert_string_equal(json_string_value(json_object_get(g, "value")), "a b+c");
    g = json_object_get(j, "empty");
    assert_string_equal(json_string_value(json_object_get(g, "status")), "ok");
    assert_string_equal(json_string_value(json_object_get(g, "value")), "");
    g = json_object_get(j, "missing");
    assert_string_equal(json_string_value(json_object_get(g, "status")), "absent");
    /* x=1, x=2, x=%FF: an invalid occurrence makes the whole parameter invalid */
    g = json_object_get(j, "x");
    assert_string_equal(json_string_value(json_object_get(g, "status")), "invalid");
    assert_int_equal(json_integer_value(json_object_get(j, "n")), 9); /* "&&" is no pair */
    assert_int_equal(json_integer_value(json_object_get(j, "invalid")), 3);
    json_decref(j);
    tc_free(&r);

    /* an encoded slash stays inside its segment */
    r = tc_get(fx->port, "/api/v1/jobs/a%2Fb/drift");
    j = tc_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "id")), "a/b");
    json_decref(j);
    tc_free(&r);

    r = tc_get(fx->port, "/api/v1/jobs/1/drift?x=1&x=2");
    j = tc_json(&r);
    g = json_object_get(j, "x");
    assert_string_equal(json_string_value(json_object_get(g, "status")), "repeated");
    assert_string_equal(json_string_value(json_object_get(g, "value")), "1");
    json_decref(j);
    tc_free(&r);

    /* first match in table order: /api/v1/jobs/{id} is not /api/v1/jobs */
    r = tc_get(fx->port, "/api/v1/jobs/77");
    j = tc_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "id")), "77");
    json_decref(j);
    tc_free(&r);

    r = tc_get(fx->port, "/api/v1/jobs?limit=12");
    j = tc_json(&r);
    assert_int_equal(json_integer_value(json_object_get(j, "limit")), 12);
    json_decref(j);
    tc_free(&r);
    r = tc_get(fx->port, "/api/v1/jobs");
    j = tc_json(&r);
    assert_int_equal(json_integer_value(json_object_get(j, "limit")), 100);
    json_decref(j);
    tc_free(&r);
    r = tc_get(fx->port, "/api/v1/jobs?limit=5000");
    assert_error(&r, 400, "invalid_query", "limit", "[1, 1000]");
    r = tc_get(fx->port, "/api/v1/jobs?limit=1&limit=2");
    assert_error(&r, 400, "invalid_query", "limit", "more than once");
    r = tc_get(fx->port, "/api/v1/jobs?limit=12abc");
    assert_error(&r, 400, "invalid_query", "limit", "12abc");
}

static void test_bad_targets_are_400(void **state) {
    fixture *fx = *state;
    tc_resp r = tc_get(fx->port, "/api/v1/jobs/%zz");
    assert_error(&r, 400, "bad_request", NULL, "percent-encoded");
    r = tc_get(fx->port, "/api/v1/jobs/a%00b");
    assert_error(&r, 400, "bad_request", NULL, "NUL");
    r = tc_get(fx->port, "/api/v1/jobs/%C0%AF"); /* overlong '/' */
    assert_error(&r, 400, "bad_request", NULL, "UTF-8");
    r = tc_get(fx->port, "/api/v1/jobs/\x01");
    assert_error(&r, 400, "bad_request", NULL, "printable ASCII");
}

static void test_404_405_and_head(void **state) {
    fixture *fx = *state;
    tc_resp r = tc_get(fx->port, "/api/v1/nope");
    assert_error(&r, 404, "not_found", NULL, "GET /api/v1/nope");
    r = tc_get(fx->port, "/api/v1/jobs/"); /* no trailing slash, and {id} is never empty */
    assert_int_equal(r.status, 404);
    tc_free(&r);

    r = tc_raw(fx->port, "PUT /api/v1/jobs HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                         "Content-Length: 0\r\n\r\n");
    char allow[128];
    assert_true(tc_header(&r, "Allow", allow, sizeof allow));
    assert_string_equal(allow, "GET, HEAD, POST");
    assert_error(&r, 405, "method_not_allowed", NULL, "GET, HEAD, POST");
    r = tc_raw(fx->port, "POST /api/v1/jobs/3 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                         "Content-Length: 0\r\n\r\n");
    assert_true(tc_header(&r, "Allow", allow, sizeof allow));
    assert_string_equal(allow, "GET, HEAD, DELETE");
    assert_error(&r, 405, "method_not_allowed", NULL, NULL);

    r = tc_raw(fx->port, "HEAD /api/v1/jobs/5 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_int_equal(r.status, 200);
    assert_int_equal(r.len, 0);
    char cl[32];
    assert_true(tc_header(&r, "Content-Length", cl, sizeof cl));
    assert_int_equal(atoi(cl), strlen("{\"id\":\"5\"}\n"));
    tc_free(&r);
}

/* Sends raw bytes and returns the status of whatever comes back (0 if the
 * server only closed), tolerating a reset. */
static int tc_blurt(unsigned port, const char *bytes, size_t n) {
    int fd = tc_connect(port);
    tc_send(fd, bytes, n);
    shutdown(fd, SHUT_WR);
    char b[256] = "";
    ssize_t k = recv(fd, b, sizeof b - 1, 0);
    close(fd);
    return k > 12 && !strncmp(b, "HTTP/1.", 7) ? atoi(b + 9) : 0;
}

static void test_malformed_requests_do_no_harm(void **state) {
    fixture *fx = *state;
    static char big[70000];
    const char *cases[] = {
        "\x00\x01\x02 garbage\r\n\r\n",
        "GET http://elsewhere/x HTTP/1.1\r\nHost: t\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n",
        "BREW /api/v1/jobs HTTP/1.1\r\nHost: t\r\n\r\n",
        "GET /api/v1/jobs/% HTTP/1.1\r\nHost: t\r\n\r\n",
        "GET /api/v1/jobs?limit=%FF%FE HTTP/1.1\r\nHost: t\r\n\r\n",
        "POST /api/v1/jobs HTTP/1.1\r\nHost: t\r\nContent-Length: -5\r\n\r\n",
        "POST /api/v1/jobs HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        "POST /api/v1/jobs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\nzz\r\n",
        "POST /api/v1/jobs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        "Content-Length: 10\r\n\r\n{\"na",  /* the client gives up mid-body */
        "GET /api/v1/jobs/1/events HTTP/1.1\r\nHost: t\r\n\r\n", /* and leaves at once */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        /* case 0 starts with a NUL byte: its length is the literal's */
        size_t n = i == 0 ? sizeof "\x00\x01\x02 garbage\r\n\r\n" - 1 : strlen(cases[i]);
        int st = tc_blurt(fx->port, cases[i], n);
        printf("  case %zu: %d\n", i, st);
        if (i == 1 || i == 2 || i == 4) assert_int_equal(st, 400);
        if (i == 3) assert_int_equal(st, 405);
        if (i == 5) assert_int_equal(st, 400); /* invalid_query from http_query_int */
    }
    /* a request line and a header far over MHD's per-connection memory */
    memset(big, 'a', sizeof big - 1);
    char *req = malloc(sizeof big + 64);
    int n = snprintf(req, sizeof big + 64, "GET /%s HTTP/1.1\r\nHost: t\r\n\r\n", big);
    printf("  long target: %d\n", tc_blurt(fx->port, req, (size_t)n));
    n = snprintf(req, sizeof big + 64, "GET / HTTP/1.1\r\nHost: t\r\nX-Big: %s\r\n\r\n", big);
    printf("  long header: %d\n", tc_blurt(fx->port, req, (size_t)n));
    free(req);
    /* still serving */
    tc_resp r = tc_get(fx->port, "/healthz");
    assert_int_equal(r.status, 200);
    tc_free(&r);
}

static void test_keep_alive(void **state) {
    fixture *fx = *state;
    /* two requests on one connection, the second pipelined behind the first */
    const char *two = "POST /api/v1/jobs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                      "Content-Length: 14\r\n\r\n{\"name\": \"ka\"}"
                      "GET /api/v1/jobs/2 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    int fd = tc_connect(fx->port);
    tc_send(fd, two, strlen(two));
    char all[8192];
    size_t n = 0;
    ssize_t k;
    while (n < sizeof all - 1 && (k = recv(fd, all + n, sizeof all - 1 - n, 0)) > 0) n += (size_t)k;
    all[n] = '\0';
    close(fd);
    const char *first = strstr(all, "HTTP/1.1 201");
    const char *second = first ? strstr(first + 1, "HTTP/1.1 200") : NULL;
    if (!first || !second) fail_msg("want 201 then 200 on one connection, got:\n%s", all);
    assert_non_null(strstr(first, "\"name\":\"ka\""));
    assert_non_null(strstr(second, "{\"id\":\"2\"}"));
}

static void test_json_body_created_and_errors(void **state) {
    fixture *fx = *state;
    tc_resp r = tc_post(fx->port, "/api/v1/jobs", "application/json; charset=UTF-8",
                        "{\"name\": \"cracks\"}", NULL);
    assert_int_equal(r.status, 201);
    char loc[128], nosniff[32];
    assert_true(tc_header(&r, "Location", loc, sizeof loc));
    assert_string_equal(loc, "/api/v1/jobs/j_1");
    assert_false(tc_header(&r, "X-Bad", loc, sizeof loc));
    assert_false(tc_header(&r, "Injected", loc, sizeof loc));
    assert_true(tc_header(&r, "X-Content-Type-Options", nosniff, sizeof nosniff));
    json_t *j = tc_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "name")), "cracks");
    json_decref(j);
    tc_free(&r);

    r = tc_post(fx->port, "/api/v1/jobs", "text/plain", "{\"name\": \"x\"}", NULL);
    assert_error(&r, 415, "unsupported_media_type", NULL, "text/plain");
    r = tc_post(fx->port, "/api/v1/jobs", "application/json; charset=latin-1", "{}", NULL);
    assert_error(&r, 415, "unsupported_media_type", NULL, NULL);
    r = tc_post(fx->port, "/api/v1/jobs", "application/jsonx", "{}", NULL);
    assert_error(&r, 415, "unsupported_media_type", NULL, NULL);
    r = tc_post(fx->port, "/api/v1/jobs", NULL, "{\"name\": \"x\"}", NULL);
    assert_error(&r, 415, "unsupported_media_type", NULL, "Content-Type: application/json");
    r = tc_post(fx->port, "/api/v1/jobs", "application/json", "", NULL);
    assert_error(&r, 400, "bad_request", NULL, "needs a JSON body");
    r = tc_post(fx->port, "/api/v1/jobs", "application/json", "{\"name\": }", NULL);
    assert_error(&r, 400, "invalid_json", NULL, "line 1");
    r = tc_post(fx->port, "/api/v1/jobs", "application/json", "{\"a\": 1, \"a\": 2}", NULL);
    assert_error(&r, 400, "invalid_json", NULL, "duplicate");
    r = tc_post(fx->port, "/api/v1/jobs", "application/json", "{\"name\": 5}", NULL);
    assert_error(&r, 400, "invalid_field", "name", "must be a string");
    r = tc_raw(fx->port, "DELETE /api/v1/jobs/j_3 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_error(&r, 409, "conflict", "id", "job j_3 is still running");
}

static void test_body_limits_413(void **state) {
    fixture *fx = *state;
    /* refused from the Content-Length alone: the body is never sent */
    tc_resp r = tc_raw(fx->port, "POST /api/v1/jobs HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                                 "Content-Type: application/json\r\nContent-Length: 2000000\r\n\r\n");
    assert_error(&r, 413, "payload_too_large", NULL, "65536");

    /* the route's own limit (16 bytes): exactly at it passes */
    r = tc_post(fx->port, "/api/v1/upload", "application/octet-stream", "0123456789abcdef", NULL);
    assert_int_equal(r.status, 200);
    json_t *j = tc_json(&r);
    assert_int_equal(json_integer_value(json_object_get(j, "bytes")), 16);
    json_decref(j);
    tc_free(&r);
    r = tc_post(fx->port, "/api/v1/upload", "application/octet-stream", "0123456789abcdefg", NULL);
    assert_error(&r, 413, "payload_too_large", NULL, "16");

    /* chunked, no Content-Length: counted while read, refused at the end */
    char chunk[64];
    memset(chunk, 'x', sizeof chunk);
    r = tc_raw(fx->port,
               "POST /api/v1/upload HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
               "Transfer-Encoding: chunked\r\n\r\n10\r\n%.16s\r\n20\r\n%.32s\r\n0\r\n\r\n",
               chunk, chunk);
    assert_error(&r, 413, "payload_too_large", NULL, "16");
}

static void test_csv_file_and_500s(void **state) {
    fixture *fx = *state;
    tc_resp r = tc_get(fx->port, "/api/v1/export");
    assert_int_equal(r.status, 200);
    char h[256];
    assert_true(tc_header(&r, "Content-Type", h, sizeof h));
    assert_string_equal(h, "text/csv; charset=utf-8");
    assert_true(tc_header(&r, "Content-Disposition", h, sizeof h));
    assert_string_equal(h, "attachment; filename=\"drift.csv\"");
    assert_string_equal(r.body, csv_text);
    tc_free(&r);

    r = tc_get(fx->port, "/api/v1/model");
    assert_int_equal(r.status, 200);
    assert_true(tc_header(&r, "Content-Type", h, sizeof h));
    assert_string_equal(h, "application/octet-stream");
    assert_true(tc_header(&r, "Content-Disposition", h, sizeof h));
    assert_string_equal(h, "attachment; filename=\"job_1.safetensors\"");
    assert_string_equal(r.body, "not really weights, but bytes all the same\n");
    tc_free(&r);

    int errors = fx->app.errors;
    r = tc_get(fx->port, "/api/v1/fail");
    assert_error(&r, 500, "internal", NULL, "database is locked (job j_9)");
    r = tc_get(fx->port, "/api/v1/nothing");
    assert_error(&r, 500, "internal", NULL, "chose no response");
    pthread_mutex_lock(&fx->app.lock);
    assert_int_equal(fx->app.errors, errors + 2);
    assert_non_null(strstr(fx->app.last_error, "GET /api/v1/nothing: 500"));
    pthread_mutex_unlock(&fx->app.lock);
}

static void expect_static(fixture *fx, const char *target, const char *type, const char *body) {
    tc_resp r = tc_get(fx->port, target);
    if (r.status != 200) fail_msg("%s: status %d: %s", target, r.status, r.body);
    char h[128];
    assert_true(tc_header(&r, "Content-Type", h, sizeof h));
    assert_string_equal(h, type);
    if (body) assert_string_equal(r.body, body);
    printf("  200 %-28s %s\n", target, h);
    tc_free(&r);
}

static void expect_404(fixture *fx, const char *target) {
    tc_resp r = tc_get(fx->port, target);
    if (r.status != 404) fail_msg("%s: status %d, want 404: %s", target, r.status, r.body);
    assert_null(strstr(r.body, "outside the root")); /* secret.txt's content */
    printf("  404 %s\n", target);
    tc_free(&r);
}

static void test_static_files(void **state) {
    fixture *fx = *state;
    expect_static(fx, "/", "text/html; charset=utf-8", "<!doctype html><title>fisherd</title>\n");
    expect_static(fx, "/index.html", "text/html; charset=utf-8", NULL);
    expect_static(fx, "/app.js", "text/javascript; charset=utf-8", "console.log('hi');\n");
    expect_static(fx, "/alias.js", "text/javascript; charset=utf-8", "console.log('hi');\n");
    expect_static(fx, "/style.css", "text/css; charset=utf-8", NULL);
    expect_static(fx, "/data.json", "application/json", NULL);
    expect_static(fx, "/logo.svg", "image/svg+xml", NULL);
    expect_static(fx, "/img.png", "image/png", NULL);
    expect_static(fx, "/favicon.ico", "image/vnd.microsoft.icon", NULL);
    expect_static(fx, "/font.woff2", "font/woff2", NULL);
    expect_static(fx, "/sub/", "text/html; charset=utf-8", "sub index\n");
    expect_static(fx, "/%61pp.js?v=3", "text/javascript; charset=utf-8", NULL);
    assert_string_equal(http_mime_type("x.tar.gz"), "application/octet-stream");
    assert_string_equal(http_mime_type("dir.js/noext"), "application/octet-stream");

    expect_404(fx, "/nope.html");
    expect_404(fx, "/sub");            /* a directory: no listing */
    expect_404(fx, "/.hidden");
    expect_404(fx, "/../secret.txt");
    expect_404(fx, "/%2e%2e/secret.txt");
    expect_404(fx, "/%2E%2E/secret.txt");
    expect_404(fx, "/sub/../../secret.txt");
    expect_404(fx, "/sub/%2e%2e/%2e%2e/secret.txt");
    expect_404(fx, "/..%2fsecret.txt");
    expect_404(fx, "/sub%2f..%2f..%2fsecret.txt");
    expect_404(fx, "/escape.txt");     /* a symlink to a file outside */
    expect_404(fx, "/outside/secret.txt"); /* a symlink to a directory outside */
    expect_404(fx, "/sub//index.html");
    expect_404(fx, "/api/index.html"); /* /api/ is never static */

    tc_resp r = tc_raw(fx->port, "POST /index.html HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                                 "Content-Length: 0\r\n\r\n");
    assert_error(&r, 404, "not_found", NULL, NULL);
}

static void test_access_log(void **state) {
    fixture *fx = *state;
    pthread_mutex_lock(&fx->app.lock);
    int logs = fx->app.logs;
    pthread_mutex_unlock(&fx->app.lock);
    tc_resp r = tc_get(fx->port, "/api/v1/export?x=1");
    tc_free(&r);
    /* MHD may close the socket a moment before it reports completion */
    assert_true(app_wait(&fx->app, &fx->app.logs, logs + 1, 2000));
    pthread_mutex_lock(&fx->app.lock);
    assert_string_equal(fx->app.last_method, "GET");
    assert_string_equal(fx->app.last_path, "/api/v1/export");
    assert_int_equal(fx->app.last_status, 200);
    assert_int_equal(fx->app.last_bytes, sizeof csv_text - 1);
    pthread_mutex_unlock(&fx->app.lock);
    r = tc_get(fx->port, "/api/v1/absent");
    tc_free(&r);
    assert_true(app_wait(&fx->app, &fx->app.logs, logs + 2, 2000));
    pthread_mutex_lock(&fx->app.lock);
    assert_int_equal(fx->app.last_status, 404);
    pthread_mutex_unlock(&fx->app.lock);
}

/* -------------------------------------------------------------- streams */

typedef struct {
    int fd;
    size_t n;
    char raw[1 << 16];
    char text[1 << 16];         /* the de-chunked body so far */
    int done;                   /* the final chunk arrived */
    int eof;
} tc_stream;

static void stream_open(tc_stream *st, unsigned port, const char *target) {
    st->fd = tc_connect(port);
    st->n = 0;
    st->done = st->eof = 0;
    st->text[0] = '\0';
    char req[512];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n",
                     target);
    tc_send(st->fd, req, (size_t)n);
}

/* Reads until the body contains needle (1), or EOF/timeout (0). */
static int stream_wait(tc_stream *st, const char *needle, int timeout_ms) {
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        const char *sep = strstr(st->raw, "\r\n\r\n");
        if (sep) {
            const char *b = sep + 4;
            tc_dechunk(b, st->n - (size_t)(b - st->raw), st->text, &st->done);
            if (strstr(st->text, needle)) return 1;
        }
        if (st->eof) return 0;
        clock_gettime(CLOCK_MONOTONIC, &t);
        int left = timeout_ms -
                   (int)((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000);
        if (left <= 0) return 0;
        struct pollfd p = {.fd = st->fd, .events = POLLIN};
        if (poll(&p, 1, left) <= 0) continue;
        ssize_t r = recv(st->fd, st->raw + st->n, sizeof st->raw - 1 - st->n, 0);
        if (r <= 0) st->eof = 1;
        else st->n += (size_t)r;
        st->raw[st->n] = '\0';
    }
}

typedef struct {
    app_state *app;
    int sent;
} sender_args;

/* Another thread publishes, as the daemon's event fan-out will. */
static void *sender_main(void *p) {
    sender_args *a = p;
    pthread_mutex_lock(&a->app->lock);
    if (a->app->stream) {
        a->sent += !http_sse_send(a->app->stream, "progress", "{\"step\": 1}", "1");
        a->sent += !http_sse_send(a->app->stream, "drift",
                                  "{\"group\": \"a\"}\n{\"group\": \"b\"}", "2");
        a->sent += !http_sse_send(a->app->stream, NULL, "last\r\nline", NULL);
    }
    pthread_mutex_unlock(&a->app->lock);
    return NULL;
}

typedef struct {
    unsigned port;
    int ok;
} getter_args;

static void *getter_main(void *p) {
    getter_args *g = p;
    for (int i = 0; i < 10; i++) {
        tc_resp r = tc_get(g->port, "/api/v1/jobs/9");
        g->ok += r.status == 200 && strstr(r.body, "\"9\"") != NULL;
        tc_free(&r);
    }
    return NULL;
}

static void test_sse_events_order_and_disconnect(void **state) {
    fixture *fx = *state;
    app_state *a = &fx->app;
    int opened = a->opened, closed = a->closed;
    static tc_stream st;
    stream_open(&st, fx->port, "/api/v1/jobs/7/events");
    assert_true(app_wait(a, &a->opened, opened + 1, 2000));
    assert_true(stream_wait(&st, ": stream open", 2000));
    tc_resp head = {0};
    memcpy(head.head, st.raw, (size_t)(strstr(st.raw, "\r\n\r\n") - st.raw) + 2);
    char h[128];
    assert_int_equal(atoi(st.raw + 9), 200);
    assert_true(tc_header(&head, "Content-Type", h, sizeof h));
    assert_string_equal(h, "text/event-stream");
    assert_true(tc_header(&head, "Cache-Control", h, sizeof h));
    assert_string_equal(h, "no-cache");

    sender_args sa = {.app = a};
    pthread_t t;
    pthread_create(&t, NULL, sender_main, &sa);
    pthread_join(t, NULL);
    assert_int_equal(sa.sent, 3);
    assert_true(stream_wait(&st, "data: line\n\n", 2000));
    const char *e1 = strstr(st.text, "id: 1\nevent: progress\ndata: {\"step\": 1}\n\n");
    const char *e2 = strstr(st.text, "id: 2\nevent: drift\ndata: {\"group\": \"a\"}\n"
                                     "data: {\"group\": \"b\"}\n\n");
    const char *e3 = strstr(st.text, "data: last\ndata: line\n\n");
    assert_non_null(e1);
    assert_non_null(e2);
    assert_non_null(e3);
    assert_true(e1 < e2 && e2 < e3);
    printf("  received in order:\n%s", st.text);

    /* the stream holds a connection thread, not the server: others are answered */
    getter_args g[4];
    pthread_t gt[4];
    for (int i = 0; i < 4; i++) {
        g[i] = (getter_args){.port = fx->port};
        pthread_create(&gt[i], NULL, getter_main, &g[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(gt[i], NULL);
        assert_int_equal(g[i].ok, 10);
    }
    pthread_mutex_lock(&a->lock);
    assert_non_null(a->stream);
    assert_true(http_sse_is_open(a->stream));
    assert_int_equal(http_sse_send(a->stream, "bad\nname", "x", NULL), -1); /* not a line */
    pthread_mutex_unlock(&a->lock);

    /* the client leaves: noticed at once, well before the 4 s heartbeat */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    close(st.fd);
    assert_true(app_wait(a, &a->closed, closed + 1, 2000));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    printf("  client disconnect noticed after %.1f ms\n", ms);
    assert_true(ms < 1500);
    pthread_mutex_lock(&a->lock);
    assert_null(a->stream); /* on_close unsubscribed it */
    pthread_mutex_unlock(&a->lock);
}

static void test_sse_close_by_application(void **state) {
    fixture *fx = *state;
    app_state *a = &fx->app;
    int opened = a->opened, closed = a->closed;
    static tc_stream st;
    stream_open(&st, fx->port, "/api/v1/jobs/8/events");
    assert_true(app_wait(a, &a->opened, opened + 1, 2000));
    pthread_mutex_lock(&a->lock);
    assert_int_equal(http_sse_send(a->stream, "status", "{\"status\": \"succeeded\"}", NULL), 0);
    http_sse_close(a->stream);
    http_sse_close(a->stream); /* idempotent */
    assert_false(http_sse_is_open(a->stream));
    assert_int_equal(http_sse_send(a->stream, "late", "x", NULL), -1);
    pthread_mutex_unlock(&a->lock);
    /* what was queued is delivered, then the chunked body ends properly */
    assert_true(stream_wait(&st, "succeeded", 2000));
    for (int i = 0; i < 50 && !st.done; i++) stream_wait(&st, "never", 40);
    assert_true(st.done);
    assert_true(app_wait(a, &a->closed, closed + 1, 2000));
    close(st.fd);
}

static void test_sse_slow_client_dropped(void **state) {
    fixture *fx = *state;
    app_state *a = &fx->app;
    int opened = a->opened, closed = a->closed;
    /* a client that never reads, with a small receive window */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)fx->port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    const char *req = "GET /api/v1/jobs/1/events HTTP/1.1\r\nHost: t\r\n\r\n";
    tc_send(fd, req, strlen(req));
    assert_true(app_wait(a, &a->opened, opened + 1, 2000));
    char data[1024];
    memset(data, 'd', sizeof data - 1);
    data[sizeof data - 1] = '\0';
    int sent = 0, refused = 0;
    pthread_mutex_lock(&a->lock);
    http_sse *s = a->stream;
    pthread_mutex_unlock(&a->lock);
    /* on_close cannot run yet: the stream is only dropped by a failing send */
    for (int i = 0; i < 200000 && !refused; i++) {
        if (http_sse_send(s, "drift", data, NULL)) refused = 1;
        else sent++;
    }
    assert_true(refused);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_true(app_wait(a, &a->closed, closed + 1, 3000));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("  a client that does not read was dropped after %d events of 1 KiB "
           "(its 256 KiB buffer, and the socket's if the stream had started); "
           "on_close %.1f ms later\n", sent,
           (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
    close(fd);
}

/* ------------------------------------------------------ servers of their own */

static int h_stream_only(http_request *req, void *app, fisher_error *err) {
    return h_events(req, app, err);
}

static double ms_since(const struct timespec *t0) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) * 1e3 + (double)(t.tv_nsec - t0->tv_nsec) / 1e6;
}

/* A 1 s timeout, 2 connections at most: heartbeats keep a stream alive past
 * the timeout, a stalled client is closed by it, a third connection is
 * refused, and stopping the server ends the streams. */
static void test_sse_heartbeat_limits_timeout_stop(void **state) {
    (void)state;
    app_state a;
    app_init(&a);
    http_route routes[] = {{"GET", "/events", h_stream_only, 0, 0}};
    http_config c = {.listen = "127.0.0.1:0", .timeout_s = 1, .max_connections = 2};
    http_server *srv;
    fisher_error err = {{0}};
    if (http_server_start(&c, routes, 1, &a, &srv, &err)) fail_msg("%s", err.msg);
    unsigned port = http_server_port(srv);
    static tc_stream st, st2;
    stream_open(&st, port, "/events");
    assert_true(app_wait(&a, &a.opened, 1, 2000));
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    /* the heartbeat (15 s by default) is brought under half the timeout */
    assert_true(stream_wait(&st, ": keep-alive\n\n", 1500));
    printf("  first heartbeat after %.0f ms\n", ms_since(&t0));

    stream_open(&st2, port, "/events");
    assert_true(app_wait(&a, &a.opened, 2, 2000));
    int third = tc_connect(port);
    const char *req = "GET /events HTTP/1.1\r\nHost: t\r\n\r\n";
    tc_send(third, req, strlen(req));
    char b[256];
    ssize_t k = recv(third, b, sizeof b, 0);
    printf("  a third connection over the limit of 2: recv %zd (%s)\n", k,
           k < 0 ? strerror(errno) : "closed");
    assert_true(k <= 0);
    close(third);

    /* 2.5 timeouts later the stream is still there */
    for (;;) {
        int got = stream_wait(&st, "never", 100);
        assert_false(got);
        assert_false(st.eof);
        if (ms_since(&t0) > 2500) break;
    }
    assert_int_equal(a.closed, 0);

    close(st2.fd); /* frees a slot, a moment after its on_close */
    assert_true(app_wait(&a, &a.closed, 1, 2000));
    double ms = 0;
    for (int tries = 0; tries < 40; tries++) {
        int stalled = tc_connect(port);
        tc_send(stalled, "GET /events HT", 14);
        clock_gettime(CLOCK_MONOTONIC, &t0);
        k = recv(stalled, b, sizeof b, 0);
        ms = ms_since(&t0);
        close(stalled);
        assert_true(k <= 0);
        if (ms > 100) break; /* accepted, then timed out (not refused at the limit) */
        usleep(50000);
    }
    printf("  a client stalled mid-request was closed after %.0f ms\n", ms);
    assert_true(ms > 500 && ms < 3000);

    /* stopping the server ends the open stream (on_close) before it returns */
    http_server_stop(srv);
    assert_int_equal(a.closed, 2);
    assert_null(a.stream);
    close(st.fd);
    app_destroy(&a);
}

static void test_bearer_auth(void **state) {
    fixture *fx = *state;
    app_state a;
    app_init(&a);
    http_config c = {.listen = "127.0.0.1:0", .token = "s3cret-token", .auth_reads = 1,
                     .static_root = fx->root};
    http_server *srv;
    fisher_error err = {{0}};
    if (http_server_start(&c, test_routes, N_TEST_ROUTES, &a, &srv, &err)) fail_msg("%s", err.msg);
    unsigned port = http_server_port(srv);
    char h[128];

    tc_resp r = tc_post(port, "/api/v1/jobs", "application/json", "{\"name\": \"a\"}", NULL);
    assert_true(tc_header(&r, "WWW-Authenticate", h, sizeof h));
    assert_true(!strncmp(h, "Bearer", 6));
    assert_error(&r, 401, "unauthorized", NULL, "Authorization: Bearer");
    r = tc_post(port, "/api/v1/jobs", "application/json", "{\"name\": \"a\"}",
                "Authorization: Bearer s3cret-tokeX\r\n");
    assert_error(&r, 401, "unauthorized", NULL, "not the right one");
    r = tc_post(port, "/api/v1/jobs", "application/json", "{\"name\": \"a\"}",
                "Authorization: Bearer s3cret\r\n"); /* a prefix */
    assert_error(&r, 401, "unauthorized", NULL, NULL);
    r = tc_post(port, "/api/v1/jobs", "application/json", "{\"name\": \"a\"}",
                "Authorization: Basic czNjcmV0LXRva2Vu\r\n");
    assert_error(&r, 401, "unauthorized", NULL, NULL);
    r = tc_post(port, "/api/v1/jobs", "application/json", "{\"name\": \"a\"}",
                "Authorization: bearer s3cret-token\r\n");
    assert_int_equal(r.status, 201);
    tc_free(&r);
    /* auth comes before routing: unknown endpoints do not reveal themselves */
    r = tc_post(port, "/api/v1/nope", "application/json", "{}", NULL);
    assert_error(&r, 401, "unauthorized", NULL, NULL);

    /* auth_reads: route GETs need it; public routes and the dashboard do not */
    r = tc_get(port, "/api/v1/jobs/1");
    assert_error(&r, 401, "unauthorized", NULL, NULL);
    r = tc_raw(port, "GET /api/v1/jobs/1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                     "Authorization: Bearer s3cret-token\r\n\r\n");
    assert_int_equal(r.status, 200);
    tc_free(&r);
    /* a read may carry it as ?access_token= (an EventSource cannot send a
     * header); a wrong one is refused; a write may not use it */
    r = tc_get(port, "/api/v1/jobs/1?access_token=s3cret-token");
    assert_int_equal(r.status, 200);
    tc_free(&r);
    r = tc_get(port, "/api/v1/jobs/1?access_token=s3cret-tokeN");
    assert_error(&r, 401, "unauthorized", "access_token", "not the right one");
    r = tc_get(port, "/api/v1/nowhere?access_token=s3cret-token");
    assert_int_equal(r.status, 404); /* authorised, so the truth: no such route */
    tc_free(&r);
    r = tc_post(port, "/api/v1/jobs?access_token=s3cret-token", "application/json", "{}", NULL);
    assert_error(&r, 401, "unauthorized", NULL, NULL);
    r = tc_get(port, "/healthz");
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "ok\n");
    tc_free(&r);
    r = tc_get(port, "/");
    assert_int_equal(r.status, 200);
    tc_free(&r);
    http_server_stop(srv);

    /* without auth_reads, reads are open and writes still are not */
    c.auth_reads = 0;
    if (http_server_start(&c, test_routes, N_TEST_ROUTES, &a, &srv, &err)) fail_msg("%s", err.msg);
    port = http_server_port(srv);
    r = tc_get(port, "/api/v1/jobs/1");
    assert_int_equal(r.status, 200);
    tc_free(&r);
    r = tc_raw(port, "DELETE /api/v1/jobs/1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_error(&r, 401, "unauthorized", NULL, NULL);
    http_server_stop(srv);
    app_destroy(&a);

    /* the comparison itself */
    assert_true(http_secure_equal("abc", 3, "abc", 3));
    assert_false(http_secure_equal("abd", 3, "abc", 3));
    assert_false(http_secure_equal("ab", 2, "abc", 3));
    assert_false(http_secure_equal("abcd", 4, "abc", 3));
    assert_false(http_secure_equal("", 0, "abc", 3));
    assert_true(http_secure_equal("", 0, "", 0));
}

static void expect_start_error(const http_config *c, const http_route *routes, size_t n,
                               const char *words) {
    http_server *srv = (http_server *)1;
    fisher_error err = {{0}};
    assert_int_equal(http_server_start(c, routes, n, NULL, &srv, &err), -1);
    assert_null(srv);
    printf("  refused: %s\n", err.msg);
    if (!strstr(err.msg, words)) fail_msg("'%s' lacks '%s'", err.msg, words);
}

static void test_start_errors(void **state) {
    fixture *fx = *state;
    http_config c = {.listen = "localhost:8080"};
    expect_start_error(&c, NULL, 0, "numeric IPv4");
    c.listen = "127.0.0.1:99999";
    expect_start_error(&c, NULL, 0, "port 0-65535");
    c.listen = "::1:80";
    expect_start_error(&c, NULL, 0, "bracketed IPv6");
    c.listen = "0.0.0.0:0";
    expect_start_error(&c, NULL, 0, "set a token");
    char in_use[64];
    snprintf(in_use, sizeof in_use, "127.0.0.1:%u", fx->port);
    c.listen = in_use;
    expect_start_error(&c, NULL, 0, "in use");
    c.listen = "127.0.0.1:0";
    c.static_root = "/nonexistent/web";
    expect_start_error(&c, NULL, 0, "/nonexistent/web");
    c.static_root = NULL;
    c.token = "has space";
    expect_start_error(&c, NULL, 0, "printable ASCII");
    c.token = NULL;
    http_route bad[] = {{"GET", "/api/{id", h_job, 0, 0}};
    expect_start_error(&c, bad, 1, "segment 2");
    http_route twice[] = {{"GET", "/a/{id}/{id}", h_job, 0, 0}};
    expect_start_error(&c, twice, 1, "appears twice");
    http_route slash[] = {{"GET", "/a/", h_job, 0, 0}};
    expect_start_error(&c, slash, 1, "trailing");
    http_route head[] = {{"HEAD", "/a", h_job, 0, 0}};
    expect_start_error(&c, head, 1, "GET route");
    http_route nohandler[] = {{"GET", "/a", NULL, 0, 0}};
    expect_start_error(&c, nohandler, 1, "handler");

    /* "/" alone is a fine pattern; 0.0.0.0 is fine with a token */
    http_route root[] = {{"GET", "/", h_health, 0, 0}};
    c.listen = "0.0.0.0:0";
    c.token = "t";
    http_server *srv;
    fisher_error err = {{0}};
    if (http_server_start(&c, root, 1, NULL, &srv, &err)) fail_msg("%s", err.msg);
    tc_resp r = tc_get(http_server_port(srv), "/");
    assert_string_equal(r.body, "ok\n");
    tc_free(&r);
    http_server_stop(srv);
    http_server_stop(NULL);
}

static void test_ipv6_loopback(void **state) {
    (void)state;
    http_route routes[] = {{"GET", "/healthz", h_health, 0, 0}};
    http_config c = {.listen = "[::1]:0"};
    http_server *srv;
    fisher_error err = {{0}};
    if (http_server_start(&c, routes, 1, NULL, &srv, &err)) {
        printf("  no IPv6 loopback here (%s): skipped\n", err.msg);
        skip();
    }
    struct sockaddr_in6 a = {.sin6_family = AF_INET6,
                             .sin6_port = htons((uint16_t)http_server_port(srv))};
    a.sin6_addr = in6addr_loopback;
    int fd = tc_connect_to((struct sockaddr *)&a, sizeof a);
    const char *req = "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    tc_send(fd, req, strlen(req));
    tc_resp r = tc_read(fd);
    close(fd);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "ok\n");
    tc_free(&r);
    http_server_stop(srv);
}

/* Answers with the nice value of the thread that runs it. */
static int h_nice(http_request *req, void *app, fisher_error *err) {
    (void)app, (void)err;
    int nice = getpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid));
    return http_respond_json(req, 200, json_pack("{s:i, s:i}", "nice", nice, "policy", sched_getscheduler(0)));
}

/* Handlers run on threads nicer than the process by the configured
 * amount and under SCHED_IDLE, so requests yield the CPU to training; the
 * process itself (and so the training threads it starts) keeps its
 * priority and policy. */
static void test_connection_threads_are_nicer(void **state) {
    (void)state;
    http_route routes[] = {{"GET", "/nice", h_nice, 0, 0}};
    http_config c = {.listen = "127.0.0.1:0", .nice = 7};
    http_server *srv;
    fisher_error err = {{0}};
    if (http_server_start(&c, routes, 1, NULL, &srv, &err)) fail_msg("%s", err.msg);
    int base = getpriority(PRIO_PROCESS, (id_t)getpid());
    for (int i = 0; i < 3; i++) { /* repeated requests do not stack it */
        int fd = tc_connect(http_server_port(srv));
        const char *req = "GET /nice HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
        tc_send(fd, req, strlen(req));
        tc_resp r = tc_read(fd);
        close(fd);
        assert_int_equal(r.status, 200);
        json_t *j = json_loads(r.body, 0, NULL);
        int want = base + 7 > 19 ? 19 : base + 7;
        assert_int_equal(json_integer_value(json_object_get(j, "nice")), want);
        assert_int_equal(json_integer_value(json_object_get(j, "policy")), 5); /* SCHED_IDLE */
        json_decref(j);
        tc_free(&r);
    }
    assert_int_equal(getpriority(PRIO_PROCESS, (id_t)getpid()), base);
    assert_int_equal(sched_getscheduler(0), SCHED_OTHER);
    http_server_stop(srv);
}

/* Sends `head` at once, then `req` one byte every `gap_ms` until the
 * server closes the connection; the milliseconds that took, or -1 if the
 * whole request went out first (the server never closed it). */
static double trickle(unsigned port, const char *head, const char *req, int gap_ms) {
    int fd = tc_connect(port);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    tc_send(fd, head, strlen(head));
    for (size_t i = 0; req[i]; i++) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        char c;
        if ((poll(&p, 1, gap_ms) > 0 && recv(fd, &c, 1, MSG_DONTWAIT) <= 0) ||
            send(fd, req + i, 1, MSG_NOSIGNAL) != 1) {
            double ms = ms_since(&t0);
            close(fd);
            return ms;
        }
    }
    close(fd);
    return -1;
}

/* Slowloris: every byte arrives within the (1 s) inactivity timeout, so
 * only a deadline on the request as a whole closes such a client — in
 * its headers, or in its body. A prompt client is served meanwhile. */
static void test_slow_requests_time_out(void **state) {
    (void)state;
    http_route routes[] = {{"GET", "/healthz", h_health, 0, 0}, {"POST", "/upload", h_upload, 0, 0}};
    http_config c = {.listen = "127.0.0.1:0", .timeout_s = 1};
    http_server *srv;
    fisher_error err = {{0}};
    if (http_server_start(&c, routes, 2, NULL, &srv, &err)) fail_msg("%s", err.msg);
    unsigned port = http_server_port(srv);
    double ms = trickle(port, "", "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n", 300);
    printf("  headers a byte every 300 ms: closed after %.0f ms\n", ms);
    assert_true(ms >= 900 && ms < 3000);
    ms = trickle(port, "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 40\r\n\r\n",
                 "0123456789012345678901234567890123456789", 300);
    printf("  a body a byte every 300 ms: closed after %.0f ms\n", ms);
    assert_true(ms >= 900 && ms < 3000);
    tc_resp r = tc_get(port, "/healthz");
    assert_int_equal(r.status, 200);
    tc_free(&r);
    http_server_stop(srv);
}

/* Beyond loopback one address holds at most half the connections: with
 * 4 in all, a third from 127.0.0.1 is refused while two are open, and
 * served once one of them has gone. */
static void test_per_address_limit_beyond_loopback(void **state) {
    (void)state;
    http_route routes[] = {{"GET", "/healthz", h_health, HTTP_ROUTE_PUBLIC, 0}};
    http_config c = {.listen = "0.0.0.0:0", .token = "a-token-of-16-chars", .timeout_s = 10, .max_connections = 4};
    http_server *srv;
    fisher_error err = {{0}};
    if (http_server_start(&c, routes, 1, NULL, &srv, &err)) fail_msg("%s", err.msg);
    unsigned port = http_server_port(srv);
    int a = tc_connect(port), b = tc_connect(port), third = tc_connect(port);
    const char *req = "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    send(third, req, strlen(req), MSG_NOSIGNAL);
    char buf[256];
    ssize_t k = recv(third, buf, sizeof buf, 0);
    printf("  a third connection from one address, over its 2: recv %zd\n", k);
    assert_true(k <= 0);
    close(third);
    close(a);
    usleep(300000); /* MHD notices the close */
    tc_resp r = tc_get(port, "/healthz");
    assert_int_equal(r.status, 200);
    tc_free(&r);
    close(b);
    http_server_stop(srv);
}

/* Bodies held at once are bounded (max_body_total): while one client is
 * sending a 3 KiB body, another's 3 KiB is refused with 503 and
 * Retry-After before a byte of it is read, and taken once the first is
 * done — so 64 clients cannot make the daemon hold 64 large uploads. */
static void test_bodies_held_at_once_are_bounded(void **state) {
    (void)state;
    http_route routes[] = {{"POST", "/upload", h_upload, 0, 0}};
    http_config c = {.listen = "127.0.0.1:0", .max_body = 4096, .max_body_total = 5000};
    http_server *srv;
    fisher_error err = {{0}};
    if (http_server_start(&c, routes, 1, NULL, &srv, &err)) fail_msg("%s", err.msg);
    unsigned port = http_server_port(srv);
    int first = tc_connect(port);
    const char *head = "POST /upload HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 3000\r\n\r\n";
    tc_send(first, head, strlen(head));
    char body[3001];
    memset(body, 'x', 3000);
    body[3000] = 0;
    tc_send(first, body, 1000); /* a third of it: the rest later */
    usleep(200000);
    tc_resp r = tc_raw(port, "POST /upload HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 3000\r\n\r\n%s", body);
    char ra[32];
    printf("  a second 3000-byte body while 3000 are held (budget 5000): %d\n", r.status);
    assert_int_equal(r.status, 503);
    assert_true(tc_header(&r, "Retry-After", ra, sizeof ra));
    tc_free(&r);
    tc_send(first, body, 2000);
    r = tc_read(first);
    close(first);
    assert_int_equal(r.status, 200);
    tc_free(&r);
    r = tc_raw(port, "POST /upload HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 3000\r\n\r\n%s", body);
    assert_int_equal(r.status, 200);
    tc_free(&r);
    http_server_stop(srv);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_connection_threads_are_nicer),
        cmocka_unit_test(test_routing_params_and_query),
        cmocka_unit_test(test_bad_targets_are_400),
        cmocka_unit_test(test_404_405_and_head),
        cmocka_unit_test(test_keep_alive),
        cmocka_unit_test(test_malformed_requests_do_no_harm),
        cmocka_unit_test(test_json_body_created_and_errors),
        cmocka_unit_test(test_body_limits_413),
        cmocka_unit_test(test_csv_file_and_500s),
        cmocka_unit_test(test_static_files),
        cmocka_unit_test(test_access_log),
        cmocka_unit_test(test_sse_events_order_and_disconnect),
        cmocka_unit_test(test_sse_close_by_application),
        cmocka_unit_test(test_sse_slow_client_dropped),
        cmocka_unit_test(test_sse_heartbeat_limits_timeout_stop),
        cmocka_unit_test(test_bearer_auth),
        cmocka_unit_test(test_start_errors),
        cmocka_unit_test(test_ipv6_loopback),
        cmocka_unit_test(test_slow_requests_time_out),
        cmocka_unit_test(test_per_address_limit_beyond_loopback),
        cmocka_unit_test(test_bodies_held_at_once_are_bounded),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
