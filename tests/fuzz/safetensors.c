/*
 * safetensors.c — libFuzzer target: the safetensors reader, as the daemon
 * meets it in a model upload.
 *
 * The input is the body of POST /api/v1/models. post_model (api/api.c)
 * writes it to a file and loads it as a base model with fisher_model_load
 * (lib/job.c): the file read whole, its header validated, the SegFormer
 * config taken from its metadata, and every tensor checked by name, dtype
 * and shape as it is copied into the model. This target does exactly that
 * through a temporary file of its own, and first parses the same bytes
 * from memory (fisher_safetensors_parse) and walks every accessor over
 * every tensor the header names, so the reader's whole surface is reached
 * even when the file is no model.
 *
 * Properties beyond the sanitizers': a refusal says why; a handle's
 * tensors can all be described and read back with the shape and dtype it
 * reports; the metadata lookups the daemon makes never fail on a handle.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_util.h"
#include "job.h"
#include "safetensors.h"
#include "segformer.h"

static char upload_path[4096];

static void remove_upload(void) {
    if (upload_path[0]) unlink(upload_path);
}

/* The upload as post_model leaves it on disk: one file, rewritten per input. */
static int write_upload(const uint8_t *data, size_t size) {
    if (!upload_path[0]) {
        const char *dir = getenv("TMPDIR");
        snprintf(upload_path, sizeof upload_path, "%s/fuzz-upload-XXXXXX.safetensors",
                 dir && *dir ? dir : "/tmp");
        int fd = mkstemps(upload_path, 12);
        if (fd < 0) {
            upload_path[0] = '\0';
            return -1;
        }
        close(fd);
        atexit(remove_upload);
    }
    int fd = open(upload_path, O_WRONLY | O_TRUNC);
    if (fd < 0) return -1;
    size_t done = 0;
    while (done < size) {
        ssize_t w = write(fd, data + done, size - done);
        if (w <= 0) break;
        done += (size_t)w;
    }
    close(fd);
    return done == size ? 0 : -1;
}

/* Every accessor over every tensor of a handle the reader accepted. */
static void walk(const fisher_safetensors *st, size_t size) {
    size_t n = fisher_safetensors_count(st);
    fuzz_check(fisher_safetensors_name(st, n) == NULL, "a name past the last tensor");
    for (size_t i = 0; i < n; i++) {
        const char *name = fisher_safetensors_name(st, i);
        fuzz_check(name != NULL, "tensor %zu of %zu has no name", i, n);
        fisher_dtype dt;
        int ndim;
        int64_t shape[FISHER_ST_MAX_DIMS];
        fisher_error e = {{0}};
        fuzz_check(fisher_safetensors_info(st, name, &dt, &ndim, shape, &e) == 0,
                   "tensor %s is listed but cannot be described: %s", name, e.msg);
        fuzz_check(ndim >= 0 && ndim <= FISHER_ST_MAX_DIMS, "tensor %s has %d dims", name, ndim);
        size_t numel = 1;
        for (int d = 0; d < ndim; d++) {
            fuzz_check(shape[d] >= 0, "tensor %s: negative dim", name);
            numel *= (size_t)shape[d]; /* the reader proved the byte size fits the file */
        }
        fuzz_check(numel <= size, "tensor %s: %zu elements in a %zu-byte file", name, numel, size);
        int rc;
        if (dt == FISHER_DTYPE_I64 || dt == FISHER_DTYPE_F64) {
            void *dst = malloc(numel ? numel * 8 : 1);
            if (!dst) continue;
            rc = dt == FISHER_DTYPE_I64 ? fisher_safetensors_read_i64(st, name, dst, ndim, shape, &e)
                                        : fisher_safetensors_read_f64(st, name, dst, ndim, shape, &e);
            free(dst);
            fuzz_check(rc == 0, "tensor %s cannot be read with its own shape: %s", name, e.msg);
            /* and as floats it is refused, with a reason */
            fuzz_check(fisher_safetensors_read_f32(st, name, NULL, ndim, shape, &e) != 0 && e.msg[0],
                       "tensor %s of an 8-byte dtype is read as floats", name);
            continue;
        }
        float *dst = malloc(numel ? numel * sizeof *dst : 1);
        if (!dst) continue;
        rc = fisher_safetensors_read_f32(st, name, dst, ndim, shape, &e);
        fuzz_check(rc == 0, "tensor %s cannot be read with its own shape: %s", name, e.msg);
        if (ndim > 0) { /* a wrong shape is refused before anything is copied */
            int64_t wrong[FISHER_ST_MAX_DIMS];
            memcpy(wrong, shape, sizeof wrong);
            wrong[0]++;
            fuzz_check(fisher_safetensors_read_f32(st, name, dst, ndim, wrong, &e) != 0,
                       "tensor %s is read with a shape it does not have", name);
        }
        free(dst);
        size_t got = 0;
        float *copy = fisher_safetensors_get_f32(st, name, NULL, NULL, &got, &e);
        fuzz_check(copy != NULL && got == numel, "tensor %s: get_f32 disagrees with info", name);
        free(copy);
    }
    fisher_error e = {{0}};
    fuzz_check(fisher_safetensors_info(st, "\x01 no such tensor", NULL, NULL, NULL, &e) != 0 && e.msg[0],
               "a tensor nobody wrote is found");
    (void)fisher_safetensors_metadata(st, "config");
    (void)fisher_safetensors_metadata(st, "image_size");
    (void)fisher_safetensors_metadata(st, "normalization");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fisher_error e = {{0}};
    fisher_safetensors *st = fisher_safetensors_parse(data, size, "upload", &e);
    if (st) walk(st, size);
    else fuzz_check(e.msg[0] != '\0', "a file is refused without a reason");
    fisher_safetensors_close(st);

    if (write_upload(data, size)) return 0;
    fisher_error le = {{0}};
    int image_size = -1;
    fisher_normalization norm;
    unsigned flags = 0;
    fisher_segformer *m = fisher_model_load(upload_path, &image_size, &norm, &flags, &le);
    if (m) {
        fuzz_check(st != NULL, "a model loads from a file the reader refuses");
        fisher_segformer_free(m);
    } else {
        fuzz_check(le.msg[0] != '\0', "a model upload is refused without a reason");
    }
    return 0;
}
