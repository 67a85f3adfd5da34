/*
 * safetensors.h — read and write the safetensors format, the ecosystem's
 * weight format (8-byte little-endian header length, a JSON header naming
 * every tensor's dtype, shape and [begin, end) byte range, then the data).
 *
 * Reading loads the whole file into memory once and validates the header
 * completely before anything is handed out: header length within the file,
 * header is a JSON object, every entry has a known dtype, a shape whose byte
 * size matches its range, ranges inside the data section and not overlapping.
 * Any failure is a precise message naming the file and tensor; never a crash.
 * F16 and BF16 tensors are converted to float on read.
 *
 * The optional "__metadata__" entry is a string→string map; fisherd keeps
 * the architecture config of a model there.
 */
#ifndef FISHER_SAFETENSORS_H
#define FISHER_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define FISHER_ST_MAX_DIMS 8

typedef enum {
    FISHER_DTYPE_F32,
    FISHER_DTYPE_F16,
    FISHER_DTYPE_BF16,
    FISHER_DTYPE_I64,
    FISHER_DTYPE_F64, /* golden files of quantities checked to 1e-9 */
} fisher_dtype;

/* One tensor to write. `data` holds numel elements of `dtype`, row-major. */
typedef struct {
    const char *name;
    fisher_dtype dtype;
    int ndim;
    int64_t shape[FISHER_ST_MAX_DIMS];
    const void *data;
} fisher_st_tensor;

/* One metadata pair for "__metadata__". */
typedef struct {
    const char *key;
    const char *value;
} fisher_st_meta;

/* Writes a safetensors file (tensors laid out in the given order, header
 * padded with spaces to a multiple of 8 bytes). Writes to a temporary file
 * and renames it into place, so a reader never sees half a file.
 * Returns 0, or -1 with err set. */
int fisher_safetensors_write(const char *path, const fisher_st_tensor *tensors, size_t n_tensors,
                             const fisher_st_meta *meta, size_t n_meta, fisher_error *err);

typedef struct fisher_safetensors fisher_safetensors;

/* Opens and validates a file. NULL with err set on any problem. */
fisher_safetensors *fisher_safetensors_open(const char *path, fisher_error *err);
/* Same, from a buffer (copied); `what` names the source in messages. */
fisher_safetensors *fisher_safetensors_parse(const void *buf, size_t len, const char *what,
                                             fisher_error *err);
void fisher_safetensors_close(fisher_safetensors *st);

/* Tensors in header order; i < count. */
size_t fisher_safetensors_count(const fisher_safetensors *st);
const char *fisher_safetensors_name(const fisher_safetensors *st, size_t i);

/* The metadata value for key, or NULL when absent. */
const char *fisher_safetensors_metadata(const fisher_safetensors *st, const char *key);

/* Describes a tensor. Returns 0, or -1 (err set) when no tensor has that name.
 * shape must hold FISHER_ST_MAX_DIMS entries. */
int fisher_safetensors_info(const fisher_safetensors *st, const char *name, fisher_dtype *dtype,
                            int *ndim, int64_t *shape, fisher_error *err);

/* Copies tensor `name` into dst as float (F32/F16/BF16 accepted), after
 * checking it has exactly the expected shape. Errors name the tensor and
 * both shapes. */
int fisher_safetensors_read_f32(const fisher_safetensors *st, const char *name, float *dst,
                                int ndim, const int64_t *shape, fisher_error *err);
/* Same for an F64 tensor (no conversion from other dtypes). */
int fisher_safetensors_read_f64(const fisher_safetensors *st, const char *name, double *dst,
                                int ndim, const int64_t *shape, fisher_error *err);
/* Same for an I64 tensor. */
int fisher_safetensors_read_i64(const fisher_safetensors *st, const char *name, int64_t *dst,
                                int ndim, const int64_t *shape, fisher_error *err);

/* Convenience for tests and tools: a malloc'd float copy of any float tensor,
 * its shape in ndim/shape (shape may be NULL). NULL with err set on failure. */
float *fisher_safetensors_get_f32(const fisher_safetensors *st, const char *name, int *ndim,
                                  int64_t *shape, size_t *numel, fisher_error *err);

#endif
