/*
 * http_target.c — libFuzzer target: the request target, from the bytes
 * after the method in a request line to what a handler sees.
 *
 * The input reads like the start of a request: "METHOD /target?query",
 * then optionally a newline and a Content-Type value ("GET" when the first
 * line has no space). The target goes through http__probe_target
 * (api/http_internal.h), which runs http.c's own code: the printable-ASCII
 * check, %-decoding of path segments and query pairs, route matching
 * against fisherd's route table (api/routes.h, the one api/api.c serves),
 * and for a routed request what handlers do with it: the path parameter
 * as a job or model id (store_id_parse), every query pair,
 * http_query_int as the list routes call it, and an error response
 * quoting client text. The Content-Type value goes through the check the
 * JSON routes make.
 *
 * Properties beyond the sanitizers' (invariant 2 of http.c): whatever a
 * handler sees is valid UTF-8 (held against this file's own validator)
 * without NUL; an answer quoting client input can always be built; a
 * 400 means the raw target broke a rule, and a routed target never did.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "http_internal.h"
#include "routes.h"
#include "store.h"

static int no_handler(http_request *req, void *app, fisher_error *err) {
    (void)req, (void)app, (void)err;
    return -1;
}

/* api/api.c's table (api/routes.h), patterns, methods and flags only. */
#define ROUTE(method, pattern, handler, flags, body_limit) {method, pattern, no_handler, flags, 0},
static const http_route routes[] = {API_ROUTES(ROUTE)};
#undef ROUTE

static void check_text(const char *what, const char *s) {
    fuzz_check(fuzz_utf8_valid((const unsigned char *)s, strlen(s)), "%s '%s' is not UTF-8", what, s);
}

/* What handlers do with a routed request. */
static void handle(http_request *req, void *ctx) {
    (void)ctx;
    const char *id = http_param(req, "id");
    if (id) {
        check_text("path parameter", id);
        fuzz_check(id[0] != '\0', "an empty path parameter was routed");
        int64_t n;
        if (!store_id_parse(id, 'j', &n) || !store_id_parse(id, 'm', &n))
            fuzz_check(n > 0, "id '%s' parses to %lld", id, (long long)n);
    }
    size_t nq = http_query_count(req);
    for (size_t i = 0; i < nq; i++) {
        const char *name, *value;
        http_query_at(req, i, &name, &value);
        fuzz_check(name != NULL, "query pair %zu has no name", i);
        if (!value) continue; /* invalid: a handler asking for it hears so */
        check_text("query name", name);
        check_text("query value", value);
        const char *v;
        http_query_status st = http_query_get(req, name, &v);
        fuzz_check(st == HTTP_QUERY_OK || st == HTTP_QUERY_REPEATED || st == HTTP_QUERY_INVALID,
                   "query '%s' present but reported absent", name);
    }
    const char *past_name = "x", *past_value = "x";
    http_query_at(req, nq, &past_name, &past_value);
    fuzz_check(!past_name && !past_value, "a query pair past the last one");
    long long limit = -1;
    if (http_query_int(req, "limit", 1, 1000, 50, &limit) == 0)
        fuzz_check(limit >= 1 && limit <= 1000, "limit %lld accepted", limit);
    else /* http_query_int answered 400; the one response is taken */
        return;
    const char *cursor = http_query(req, "cursor");
    fuzz_check(http_respond_error(req, 404, NULL, "id", "no job '%s' (cursor %s)", id ? id : "",
                                  cursor ? cursor : "-") == 0,
               "an error quoting the request cannot be answered");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *in = malloc(size + 1);
    if (!in) return 0;
    memcpy(in, data, size);
    in[size] = '\0'; /* MHD hands over C strings: a NUL ends the line */
    char *ct = strchr(in, '\n');
    if (ct) *ct++ = '\0';
    const char *method = "GET", *target = in;
    char *sp = strchr(in, ' ');
    if (sp) *sp = '\0', method = in, target = sp + 1;

    int printable = 1;
    for (const char *c = target; *c; c++) printable &= *c > 0x20 && *c < 0x7f;
    fisher_error e = {{0}};
    int rc = http__probe_target(target, method, routes, sizeof routes / sizeof *routes, handle, NULL, &e);
    fuzz_check(rc != -1, "the probe failed: %s", e.msg);
    fuzz_check(rc == 0 || rc == 400 || rc == 404 || rc == 405, "status %d", rc);
    if (!printable || target[0] != '/') fuzz_check(rc == 400, "target '%s' is not refused", target);
    if (ct) (void)http__is_json_type(ct);
    free(in);
    return 0;
}
