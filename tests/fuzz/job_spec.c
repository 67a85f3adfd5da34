/*
 * job_spec.c — libFuzzer target: a job spec, from the bytes a client
 * POSTs to /api/v1/jobs to the spec a worker runs.
 *
 * The input is the request body. It takes the API's path (api/api.c
 * post_job): parsed as http_body_json parses it (jansson, duplicate keys
 * refused), a JSON object re-serialised compactly and handed to
 * fisher_job_spec_parse, the validator. What post_job does in between
 * needs the daemon's store and data roots (a model id becomes a path, a
 * dataset path is resolved under a root); it only rewrites strings, and is
 * left out here. The same bytes are then parsed as `fisherd train
 * spec.json` reads a file: straight into the validator.
 *
 * Beyond "no crash, no leak, no undefined behaviour" it checks what the
 * daemon relies on: a refused spec says why, in UTF-8 (the reason and the
 * field's path go into JSON answers and job records); an accepted spec's
 * normalised JSON (what the store keeps) parses again — the scheduler
 * re-parses it when the job starts, after the store's own JSON round
 * trip — and normalises to the very same text, so the job that runs is
 * the job that was accepted.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fuzz_util.h"
#include "job.h"

#define JOB_SPEC_MAX_BODY (256u << 10) /* api.c's limit for this route */

/* What the scheduler does with the stored spec (scheduler.c, start_job):
 * the store's JSON, dumped compactly, parsed over the defaults. */
static void check_normalised(const char *norm, const char *input_kind) {
    json_t *stored = json_loads(norm, 0, NULL);
    fuzz_check(stored != NULL, "%s: the normalised spec is not JSON:\n%s", input_kind, norm);
    char *text = json_dumps(stored, JSON_COMPACT);
    json_decref(stored);
    fuzz_check(text != NULL, "%s: the normalised spec does not serialise", input_kind);
    fisher_job_spec again;
    fisher_job_spec_defaults(&again);
    char field[128];
    fisher_error e = {{0}};
    int rc = fisher_job_spec_parse(&again, text, field, sizeof field, &e);
    free(text);
    fuzz_check(rc == 0, "%s: the normalised spec is refused when the job starts: %s (field %s)\n%s",
               input_kind, e.msg, field, norm);
    char *norm2 = fisher_job_spec_to_json(&again);
    fuzz_check(norm2 != NULL, "%s: the re-parsed spec does not serialise", input_kind);
    fuzz_check(strcmp(norm, norm2) == 0, "%s: the spec changes on its way to the worker:\n%s\n---\n%s",
               input_kind, norm, norm2);
    free(norm2);
}

/* from_api: text is jansson's own dump of a parsed body, so valid JSON in
 * UTF-8, and the reason and field must be UTF-8 too (a file's text may be
 * anything, and jansson quotes it as it is in its syntax errors). */
static void validate(const char *text, const char *input_kind, int from_api) {
    fisher_job_spec js;
    fisher_job_spec_defaults(&js);
    char field[128] = "x";
    fisher_error e = {{0}};
    if (fisher_job_spec_parse(&js, text, field, sizeof field, &e)) {
        fuzz_check(e.msg[0] != '\0', "%s: a spec is refused without a reason", input_kind);
        if (!from_api) return;
        fuzz_check(fuzz_utf8_valid((const unsigned char *)field, strlen(field)),
                   "%s: the offending field's name is not UTF-8: %s", input_kind, field);
        fuzz_check(fuzz_utf8_valid((const unsigned char *)e.msg, strlen(e.msg)),
                   "%s: the reason is not UTF-8: %s", input_kind, e.msg);
        return;
    }
    char *norm = fisher_job_spec_to_json(&js);
    fuzz_check(norm != NULL, "%s: an accepted spec does not serialise", input_kind);
    check_normalised(norm, input_kind);
    free(norm);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > JOB_SPEC_MAX_BODY) return 0; /* 413 before a byte is parsed */

    json_error_t je;
    json_t *body = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &je);
    if (body && json_is_object(body)) {
        char *text = json_dumps(body, JSON_COMPACT);
        fuzz_check(text != NULL, "a parsed body does not serialise");
        validate(text, "POST /api/v1/jobs", 1);
        free(text);
    }
    json_decref(body);

    char *file = malloc(size + 1); /* a file read whole, NUL-terminated */
    if (!file) return 0;
    memcpy(file, data, size);
    file[size] = '\0';
    validate(file, "fisherd train spec.json", 0);
    free(file);
    return 0;
}
