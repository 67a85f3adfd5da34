/*
 * http_internal.h — the parts of http.c that tests and fuzzers reach
 * without a socket. Not part of the API: nothing in api/ or daemon/ calls
 * these (the http__ prefix marks them, as uv__ does in libuv). They run the
 * very code a request runs, so what a fuzzer finds here is what a client
 * could provoke (tests/fuzz/http_target.c).
 */
#ifndef FISHERD_HTTP_INTERNAL_H
#define FISHERD_HTTP_INTERNAL_H

#include "http.h"

typedef void (*http__probe_fn)(http_request *req, void *ctx);

/* Runs a raw request target (as MHD hands it over, still %-encoded) for
 * `method` through what every request goes through before auth and the
 * body: the printable-ASCII check, splitting and %-decoding into path
 * segments and query pairs (NUL-free, valid UTF-8), and route matching
 * against `routes` (compiled as http_server_start compiles them). When a
 * route matches, probe (may be NULL) gets the request as its handler
 * would: http_param, http_query_get, http_query_at, http_query_int and the
 * http_respond_* functions work on it (a response is built, then freed).
 * Returns 0 when routed, else the status a client gets (400 for the
 * target, 404 no such path, 405 path known, method not), or -1 with err
 * set (out of memory, or a route table http_server_start would refuse). */
int http__probe_target(const char *target, const char *method, const http_route *routes,
                       size_t n_routes, http__probe_fn probe, void *ctx, fisher_error *err);

/* 1 when a Content-Type header value is application/json, with any
 * parameters, and a charset (if one is given) of utf-8; else 0. */
int http__is_json_type(const char *content_type);

#endif
