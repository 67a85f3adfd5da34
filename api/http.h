/*
 * http.h — the HTTP layer fisherd's REST API and dashboard sit on.
 *
 * A small server framework over libmicrohttpd (MHD). The REST handlers
 * (api/, ../shared/DESIGN.md "REST API") plug in as a table of routes;
 * this layer owns everything that is the same for every endpoint: the
 * listening socket, routing with named path segments, 404/405 + Allow,
 * bearer-token auth, body limits (413) and JSON content types (415),
 * query-string decoding, the JSON error shape
 *     {"error": {"code": "...", "message": "...", "field": "..." | null}},
 * Server-Sent Events fed from other threads, the static dashboard (web/)
 * and one access-log call per request. It knows nothing about jobs, the
 * store or the scheduler.
 *
 * Thread model: MHD's internal listener thread plus one thread per
 * connection (at most `max_connections`; MHD refuses the rest). A handler
 * runs on its connection's thread and may block; an SSE stream is a
 * connection thread sleeping in poll() on its wake-up pipe and its client
 * socket, so streams never hold up other requests and a client that goes
 * away is noticed at once. http.c explains why not a thread pool.
 *
 * Life of a request:
 *   parse target (400) → auth (401) → route (404 / 405) → limits (413, 415)
 *   → read body → handler → the one response it chose, or 500 → access log.
 * A handler answers by calling exactly one http_respond_* function and
 * returning 0. Returning -1 (err set) or returning without a response
 * yields a 500 in the error shape; nothing a client sends reaches a handler
 * unchecked (path and query are decoded, valid UTF-8, NUL-free; the body
 * fits its limit and is NUL-terminated).
 */
#ifndef FISHERD_HTTP_H
#define FISHERD_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "error.h"

typedef struct http_server http_server;
typedef struct http_request http_request;
typedef struct http_sse http_sse;

#define HTTP_DEFAULT_MAX_CONNECTIONS 64
#define HTTP_DEFAULT_TIMEOUT_S 30
#define HTTP_DEFAULT_MAX_BODY (1u << 20)
#define HTTP_DEFAULT_MAX_BODY_TOTAL ((size_t)1 << 30)
#define HTTP_DEFAULT_SSE_HEARTBEAT_MS 15000
#define HTTP_DEFAULT_SSE_BUFFER (256u << 10)

/* One line per finished request: method ("-" if never read), raw path
 * (still percent-encoded, printable ASCII, without the query), status sent
 * (0 when this layer sent none: MHD refused a malformed request itself, or
 * the client left first), body bytes handed to MHD (a stream's total; 0
 * for HEAD) and wall time since the request line arrived. Called on the
 * connection's thread, concurrently with other connections' calls. */
typedef void (*http_access_log_fn)(void *ctx, const char *method, const char *path, int status,
                                   uint64_t bytes, double duration_ms);
/* Server-side trouble a person should see: handler failures answered with
 * 500, MHD's own complaints. Any thread. */
typedef void (*http_error_log_fn)(void *ctx, const char *msg);

/* Zero means "the default" for every number; NULL for every optional string. */
typedef struct {
    const char *listen;         /* "127.0.0.1:8080", "0.0.0.0:80", "[::1]:0"; port 0 = any free
                                 * one (see http_server_port). NULL = "127.0.0.1:8080" */
    unsigned max_connections;   /* concurrent connections, SSE streams included [64] */
    unsigned timeout_s;         /* a connection idle this long is closed [30] */
    size_t max_body;            /* request bodies larger than this get 413 [1 MiB] */
    size_t max_body_total;      /* bytes all requests' bodies may hold at once; a body that
                                 * would go past it gets 503 + Retry-After [1 GiB] */
    const char *token;          /* bearer token; NULL or "" = no auth. Required when `listen`
                                 * is not a loopback address */
    int auth_reads;             /* 1: GETs of routes need the token too, from the header or
                                 * ?access_token= (what a browser fetches by itself cannot
                                 * send a header) (not the static
                                 * dashboard, which a browser loads before it has one) */
    const char *static_root;    /* directory served for GETs outside /api/; NULL = none */
    unsigned sse_heartbeat_ms;  /* comment line on idle streams [15000; at most timeout/2] */
    int nice;                   /* connection threads run this much nicer than the process
                                 * (0..19), so CPU-bound training keeps the cores when
                                 * requests pour in [0] */
    size_t sse_buffer;          /* bytes queued per stream before a slow client is dropped
                                 * [256 KiB] */
    http_access_log_fn access_log;  /* optional */
    http_error_log_fn error_log;    /* optional */
    void *log_ctx;
} http_config;

/* A handler answers with one http_respond_* call and returns 0, or returns
 * -1 with err set for an internal failure (→ 500 carrying err->msg; a
 * response it had already chosen is discarded). `app` is the pointer given
 * to http_server_start. Runs on the connection's thread; `req` is valid
 * only until the handler returns. */
typedef int (*http_handler)(http_request *req, void *app, fisher_error *err);

enum {
    HTTP_ROUTE_JSON_BODY = 1 << 0,  /* body required, Content-Type application/json
                                     * (parameters allowed; a charset must be utf-8):
                                     * otherwise 415, or 400 when empty */
    HTTP_ROUTE_PUBLIC = 1 << 1,     /* GET/HEAD never need the token, even with auth_reads
                                     * (liveness probes); writes always do */
};

/* Routes are tried in table order and the first match wins, so list a
 * literal ("/api/v1/models/upload") before a pattern that covers it
 * ("/api/v1/models/{id}"). A pattern is "/"-separated; a segment is
 * literal or "{name}" (matching any non-empty segment, decoded). No
 * trailing slash: "/api/v1/jobs/" is not "/api/v1/jobs". A GET route also
 * answers HEAD (MHD drops the body). */
typedef struct {
    const char *method;         /* "GET", "POST", "DELETE", ... */
    const char *pattern;        /* "/api/v1/jobs/{id}/drift" */
    http_handler handler;
    unsigned flags;             /* HTTP_ROUTE_* */
    size_t max_body;            /* this route's body limit; 0 = the server's */
} http_route;

/* Starts listening and serving on MHD's threads. The route table and every
 * config string are copied; `app` is passed to handlers untouched. Returns
 * 0 and *out, or -1 with err naming the problem (bad listen address, bad
 * route pattern, missing static root, port in use, ...). */
int http_server_start(const http_config *cfg, const http_route *routes, size_t n_routes, void *app,
                      http_server **out, fisher_error *err);

/* The port actually bound (the chosen one when the config said 0). */
unsigned http_server_port(const http_server *srv);

/* Ends every SSE stream (each gets its on_close), stops accepting, waits
 * for in-flight handlers and frees the server. Handlers must not block
 * forever. Call from a thread that is not one of the server's. NULL is a
 * no-op. */
void http_server_stop(http_server *srv);

/* ---- the request (connection thread only, valid during the handler) ---- */

const char *http_method(const http_request *req);       /* "GET", "HEAD", "POST", ... */
const char *http_path(const http_request *req);         /* raw path, still %-encoded, no query */
/* A {name} of the matched pattern, decoded; NULL if the pattern has none. */
const char *http_param(const http_request *req, const char *name);
/* A request header by case-insensitive name, or NULL. */
const char *http_header(const http_request *req, const char *name);
const char *http_content_type(const http_request *req); /* the header as sent, or NULL */
/* The whole body, NUL-terminated (an extra byte past *len); "" when none. */
const char *http_body(const http_request *req, size_t *len);

typedef enum {
    HTTP_QUERY_ABSENT = 0,      /* no such parameter */
    HTTP_QUERY_OK,              /* exactly once, *value set */
    HTTP_QUERY_REPEATED,        /* more than once; *value = the first */
    HTTP_QUERY_INVALID,         /* bad %-escape, %00, or not UTF-8; *value = NULL */
} http_query_status;

/* Looks up a query parameter ("+" and %XX decoded; "a" alone means a=""). */
http_query_status http_query_get(const http_request *req, const char *name, const char **value);
/* The value when the parameter is there exactly once and valid, else NULL. */
const char *http_query(const http_request *req, const char *name);
/* Every parameter in order, for handlers that refuse unknown ones: returns
 * the count; http_query_at gives the i-th name and value (value NULL if
 * invalid). */
size_t http_query_count(const http_request *req);
void http_query_at(const http_request *req, size_t i, const char **name, const char **value);

/* An integer query parameter in [lo, hi], `dflt` when absent. Returns 0, or
 * -1 after answering 400 naming the parameter (then return 0 from the handler). */
int http_query_int(http_request *req, const char *name, long long lo, long long hi,
                   long long dflt, long long *out);

/* The body parsed as JSON (duplicate keys refused), a new reference; NULL
 * after answering 400 with the parser's line and column. */
json_t *http_body_json(http_request *req);

/* ---- responses: one per request; each returns 0, or -1 when a response
 * was already chosen or memory/arguments failed (the handler should then
 * return -1). Connection thread only. ---- */

/* `body` serialized compactly, "Content-Type: application/json". Takes the
 * reference, even on failure. */
int http_respond_json(http_request *req, unsigned status, json_t *body);

/* The error shape. `code` NULL = the usual one for the status ("not_found",
 * "conflict", ...); `field` NULL = null. */
int http_respond_error(http_request *req, unsigned status, const char *code, const char *field,
                       const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* `len` bytes of `text` (copied) with the given Content-Type, e.g.
 * "text/csv; charset=utf-8". */
int http_respond_text(http_request *req, unsigned status, const char *content_type,
                      const char *text, size_t len);
/* The same, taking ownership of malloc'd `buf` (freed even on failure). */
int http_respond_buffer(http_request *req, unsigned status, const char *content_type, char *buf,
                        size_t len);

/* 200 with the whole of the open regular file `fd` (ownership taken, closed
 * even on failure), streamed by MHD. `download_name` non-NULL adds
 * "Content-Disposition: attachment; filename=..." (it must be a plain file
 * name: no quotes, slashes or control characters). */
int http_respond_file(http_request *req, int fd, const char *content_type,
                      const char *download_name);

/* Adds a header to whatever response the handler chooses (before or after
 * the http_respond_* call), e.g. Location for a 201. Refuses CR/LF and
 * names that are not tokens. Not applied to the 500 that replaces a failed
 * handler's response. */
int http_add_header(http_request *req, const char *name, const char *value);

/* Sets "Content-Disposition: attachment; filename=<name>" (same rules as
 * http_respond_file's). */
int http_set_download_name(http_request *req, const char *name);

/* ---- Server-Sent Events ----
 *
 * Lifetime: http_respond_sse → any number of http_sse_send (any thread) →
 * the stream ends (http_sse_close, the client leaves, the client reads too
 * slowly and its buffer fills, or the server stops) → on_close(s, ctx),
 * exactly once, on a server thread. on_close is the stream's last word:
 * once it returns, `s` may be freed, so the application must have stopped
 * using it by then — typically on_close removes `s` from the subscriber
 * list under the same lock the senders hold while calling http_sse_send.
 * No lock of this layer is held during on_close, so it may take the
 * application's locks; senders holding those locks never wait for it. */
typedef void (*http_sse_close_fn)(http_sse *s, void *ctx);

/* Turns the response into an event stream ("Content-Type:
 * text/event-stream", "Cache-Control: no-cache"). Returns the stream, or
 * NULL (a response was already chosen, on_close is NULL, or out of memory;
 * return -1 then). If the handler later fails, on_close still comes. */
http_sse *http_respond_sse(http_request *req, http_sse_close_fn on_close, void *ctx);

/* Queues one event: "id:" (if id), "event:" (if event), then "data:" per
 * line of data (CR, LF and CRLF all end a line). Never blocks on the
 * client. Returns 0, or -1 when not queued: the stream is over, event or
 * id holds a line break, or the event would overflow the stream's buffer —
 * which ends the stream (its client is too slow; an event larger than the
 * whole buffer ends it too) and brings on_close: at once when the
 * connection is waiting for events, at the latest after the connection
 * timeout when the client's socket is full. Thread-safe; do not call once
 * on_close has returned. */
int http_sse_send(http_sse *s, const char *event, const char *data, const char *id);

/* 1 while the client can still receive, 0 once the stream is ending or
 * over. Thread-safe; same lifetime rule as http_sse_send. */
int http_sse_is_open(http_sse *s);

/* Asks for an orderly end: what is queued is still delivered, then the
 * response finishes and on_close follows. Idempotent; thread-safe; same
 * lifetime rule as http_sse_send. */
void http_sse_close(http_sse *s);

/* ---- small pieces the REST handlers share ---- */

/* Compares a secret in time that depends only on the lengths, not on where
 * the first difference is. 1 when equal. Any thread. */
int http_secure_equal(const void *a, size_t a_len, const void *b, size_t b_len);

/* The MIME type the static server sends for a file name ("app.js" →
 * "text/javascript; charset=utf-8"), "application/octet-stream" when unknown. */
const char *http_mime_type(const char *filename);

#endif
