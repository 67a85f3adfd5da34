/*
 * routes.h — fisherd's route table, in one place. api.c builds the table it
 * serves from it, with the handlers; the HTTP fuzz target
 * (tests/fuzz/http_target.c) builds one from the methods, patterns and
 * flags alone, so what it fuzzes is always what the daemon routes.
 *
 *     X(method, pattern, handler, flags, body_limit)
 *
 * handler and body_limit are only names here: a user that does not pass
 * them on needs neither defined.
 */
#ifndef FISHERD_ROUTES_H
#define FISHERD_ROUTES_H

#define API_ROUTES(X)                                                              \
    X("GET", "/healthz", get_healthz, HTTP_ROUTE_PUBLIC, 0)                        \
    X("GET", "/metrics", get_metrics, 0, 0)                                        \
    X("GET", "/api/v1/openapi.json", get_openapi, HTTP_ROUTE_PUBLIC, 0)            \
    X("POST", "/api/v1/jobs", post_job, HTTP_ROUTE_JSON_BODY, JOB_SPEC_MAX_BODY)   \
    X("GET", "/api/v1/jobs", get_jobs, 0, 0)                                       \
    X("GET", "/api/v1/jobs/{id}", get_job, 0, 0)                                   \
    X("DELETE", "/api/v1/jobs/{id}", delete_job, 0, 0)                             \
    X("POST", "/api/v1/jobs/{id}/cancel", post_cancel, 0, 0)                       \
    X("GET", "/api/v1/jobs/{id}/groups", get_groups, 0, 0)                         \
    X("GET", "/api/v1/jobs/{id}/drift", get_drift, 0, 0)                           \
    X("GET", "/api/v1/jobs/{id}/heatmap", get_heatmap, 0, 0)                       \
    X("GET", "/api/v1/jobs/{id}/freezes", get_freezes, 0, 0)                       \
    X("GET", "/api/v1/jobs/{id}/metrics", get_metrics_series, 0, 0)                \
    X("GET", "/api/v1/jobs/{id}/events", get_events, 0, 0)                         \
    X("GET", "/api/v1/jobs/{id}/model", get_model_of_job, 0, 0)                    \
    X("GET", "/api/v1/events", get_all_events, 0, 0)                               \
    X("GET", "/api/v1/models", get_models, 0, 0)                                   \
    X("POST", "/api/v1/models", post_model, 0, MODEL_MAX_BODY)                     \
    X("GET", "/api/v1/models/{id}", get_model, 0, 0)                               \
    X("GET", "/api/v1/datasets", get_datasets, 0, 0)

#endif
