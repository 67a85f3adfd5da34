/*
 * api.h — fisherd's REST API v1 (DESIGN.md "REST API"): the route table
 * and its handlers over the HTTP layer (http.h), reading the store on
 * connections of their own and changing jobs only through the scheduler.
 * Also the live event fan-out: every batch of records the scheduler
 * commits is forwarded to the SSE subscribers of its job.
 *
 * The machine-readable description is api/openapi.json, served at
 * /api/v1/openapi.json; keep the two in step.
 */
#ifndef FISHERD_API_H
#define FISHERD_API_H

#include <stdint.h>

#include "http.h"
#include "scheduler.h"
#include "serve_config.h"
#include "store.h"

typedef struct api api;

/* The API's state: the configuration (data roots, limits), the database
 * file readers open, and the scheduler (set later with api_set_sched, as
 * the scheduler's hooks need the api first). NULL when out of memory. */
api *api_create(const serve_config *cfg, const char *db_path);
void api_set_sched(api *a, sched *s);
void api_free(api *a);

/* Starts serving cfg->listen with the route table and the dashboard from
 * cfg->web_root. Returns 0 and *out, or -1 with err. */
int api_serve(api *a, http_server **out, fisher_error *err);

/* From then on writes are refused with 503 (the daemon is stopping). */
void api_stop_accepting(api *a);

/* sched_config hooks: forward committed records and status changes to the
 * job's SSE subscribers (loop thread). */
void api_on_records(void *ctx, const store_record *recs, size_t n);
void api_on_status(void *ctx, int64_t job, store_job_status status, const char *reason);

/* The OpenAPI document (generated from api/openapi.json). */
extern const char fisherd_openapi_json[];

#endif
