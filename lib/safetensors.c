/*
 * safetensors.c — reading and writing the safetensors weight format.
 *
 * A file is
 *
 *     u64 N (little-endian) | N bytes of JSON header | data section
 *
 * and the header maps each tensor name to {"dtype", "shape", "data_offsets"},
 * offsets counted from the start of the data section, plus an optional
 * "__metadata__" string→string map. This is the one place in fisherd that
 * touches the format; everything else asks for a tensor by name and shape.
 *
 * Reading trusts nothing. The whole file is loaded into one buffer and the
 * header is validated in full before a handle is returned, so every later
 * accessor works on facts already checked. Design notes, as invariants that
 * hold for every fisher_safetensors handed out:
 *
 *   1. data + data_len lies inside buf; every entry's [begin, end) lies
 *      within [0, data_len].
 *   2. end - begin == numel * dtype_size(dtype), computed without overflow;
 *      so numel fits in size_t and a reader copies exactly that many bytes.
 *   3. No two non-empty ranges overlap (zero-byte ranges overlap nothing).
 *   4. Entry names are unique (the JSON parser rejects duplicate keys) and
 *      by_name is sorted by strcmp, so lookup is a binary search.
 *   5. Names and metadata strings point into `header`, which lives exactly
 *      as long as the handle.
 *
 * The data section need not be aligned (other writers do not pad the
 * header), so values are always copied out with memcpy, never read through a
 * cast pointer. The host is assumed little-endian, like the format.
 *
 * Deliberately not here: memory mapping (weights are read once into our own
 * parameter block, so mmap would only save a transient copy), dtypes fisherd
 * never uses, and lazy loading.
 */
#include "safetensors.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fileio.h"

typedef struct {
    const char *name;  /* points into the header JSON (invariant 5) */
    fisher_dtype dtype;
    int ndim;
    int64_t shape[FISHER_ST_MAX_DIMS];
    size_t numel;
    uint64_t begin, end; /* byte range within the data section */
} st_entry;

struct fisher_safetensors {
    char *what;                /* file name or caller's label, for messages */
    unsigned char *buf;        /* the whole file */
    size_t len;
    const unsigned char *data; /* start of the data section, inside buf */
    size_t data_len;
    json_t *header;            /* owns every name and metadata string */
    json_t *meta;              /* borrowed from header; NULL when absent */
    st_entry *entries;         /* header order */
    size_t n;
    st_entry **by_name;        /* sorted by name (invariant 4) */
};

/* ----------------------------------------------------------------------------
 * dtypes */

static size_t dtype_size(fisher_dtype dt) {
    switch (dt) {
    case FISHER_DTYPE_F32: return 4;
    case FISHER_DTYPE_F16: return 2;
    case FISHER_DTYPE_BF16: return 2;
    case FISHER_DTYPE_I64: return 8;
    case FISHER_DTYPE_F64: return 8;
    }
    return 0; /* not a dtype we know: callers treat 0 as "unsupported" */
}

static const char *dtype_name(fisher_dtype dt) {
    switch (dt) {
    case FISHER_DTYPE_F32: return "F32";
    case FISHER_DTYPE_F16: return "F16";
    case FISHER_DTYPE_BF16: return "BF16";
    case FISHER_DTYPE_I64: return "I64";
    case FISHER_DTYPE_F64: return "F64";
    }
    return "?";
}

/* Returns 0 and sets *dt for a supported dtype name, -1 otherwise. */
static int dtype_parse(const char *s, fisher_dtype *dt) {
    static const fisher_dtype all[] = {FISHER_DTYPE_F32, FISHER_DTYPE_F16, FISHER_DTYPE_BF16,
                                       FISHER_DTYPE_I64, FISHER_DTYPE_F64};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        if (strcmp(s, dtype_name(all[i])) == 0) {
            *dt = all[i];
            return 0;
        }
    }
    return -1;
}

/* IEEE half → float, exact for every input: a half's 11-bit significand and
 * 5-bit exponent fit in a float with room to spare, so subnormal halves
 * become normal floats and inf/NaN keep their sign and payload. */
static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else {
        /* Subnormal: value is mant * 2^-24. Shift the leading 1 up to the
         * implicit-bit position, lowering the exponent once per shift. */
        uint32_t e = 127 - 15 + 1;
        while (!(mant & 0x400)) {
            mant <<= 1;
            e--;
        }
        bits = sign | (e << 23) | ((mant & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* bfloat16 is the upper half of a float, so widening is a shift. */
static float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Room for "[" + FISHER_ST_MAX_DIMS × (", " + 20 digits of INT64_MIN) + "]"
 * + NUL, so a shape of at most FISHER_ST_MAX_DIMS dims never truncates. */
#define SHAPE_STR_CAP (FISHER_ST_MAX_DIMS * 22 + 3)

/* Writes "[d0, d1, ...]" into out; ndim must be within 0..FISHER_ST_MAX_DIMS. */
static const char *format_shape(char out[SHAPE_STR_CAP], int ndim, const int64_t *shape) {
    size_t used = 0;
    out[used++] = '[';
    for (int i = 0; i < ndim; i++)
        used += (size_t)snprintf(out + used, SHAPE_STR_CAP - used, "%s%" PRId64, i ? ", " : "",
                                 shape[i]);
    out[used++] = ']';
    out[used] = '\0';
    return out;
}

/* ----------------------------------------------------------------------------
 * Reading: header validation */

/* A JSON value as a non-negative integer; -1 when it is anything else. */
static int json_u64(const json_t *v, uint64_t *out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0) return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static int cmp_by_name(const void *a, const void *b) {
    const st_entry *x = *(st_entry *const *)a, *y = *(st_entry *const *)b;
    return strcmp(x->name, y->name);
}

/* Sorts by begin, then end, so overlap shows up between neighbours. */
static int cmp_by_range(const void *a, const void *b) {
    const st_entry *x = *(st_entry *const *)a, *y = *(st_entry *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* Validates one header entry into *e (invariants 1 and 2). `what` and the
 * tensor name prefix every message. Returns 0 or -1 with err set. */
static int parse_entry(const char *what, const char *name, json_t *v, size_t data_len,
                       st_entry *e, fisher_error *err) {
    e->name = name;
    if (!json_is_object(v))
        return fisher_errorf(err, "%s: tensor %s: header entry is not a JSON object", what, name);

    json_t *dt = json_object_get(v, "dtype");
    if (!dt) return fisher_errorf(err, "%s: tensor %s: missing \"dtype\"", what, name);
    if (!json_is_string(dt))
        return fisher_errorf(err, "%s: tensor %s: \"dtype\" is not a string", what, name);
    if (dtype_parse(json_string_value(dt), &e->dtype) != 0)
        return fisher_errorf(err, "%s: tensor %s: unsupported dtype \"%s\" (supported: F32, F16, "
                                  "BF16, I64, F64)", what, name, json_string_value(dt));

    json_t *sh = json_object_get(v, "shape");
    if (!sh) return fisher_errorf(err, "%s: tensor %s: missing \"shape\"", what, name);
    if (!json_is_array(sh))
        return fisher_errorf(err, "%s: tensor %s: \"shape\" is not an array", what, name);
    size_t nd = json_array_size(sh);
    if (nd > FISHER_ST_MAX_DIMS)
        return fisher_errorf(err, "%s: tensor %s: shape has %zu dims, more than the maximum %d",
                             what, name, nd, FISHER_ST_MAX_DIMS);
    e->ndim = (int)nd;
    int has_zero = 0;
    for (size_t i = 0; i < nd; i++) {
        uint64_t d;
        if (json_u64(json_array_get(sh, i), &d) != 0)
            return fisher_errorf(err, "%s: tensor %s: shape[%zu] is not a non-negative integer",
                                 what, name, i);
        e->shape[i] = (int64_t)d; /* came from a json_int_t >= 0, so it fits */
        has_zero |= d == 0;
    }

    json_t *off = json_object_get(v, "data_offsets");
    if (!off) return fisher_errorf(err, "%s: tensor %s: missing \"data_offsets\"", what, name);
    if (!json_is_array(off) || json_array_size(off) != 2 ||
        json_u64(json_array_get(off, 0), &e->begin) != 0 ||
        json_u64(json_array_get(off, 1), &e->end) != 0)
        return fisher_errorf(err, "%s: tensor %s: \"data_offsets\" is not [begin, end] with two "
                                  "non-negative integers", what, name);
    if (e->begin > e->end)
        return fisher_errorf(err, "%s: tensor %s: data_offsets [%" PRIu64 ", %" PRIu64 "] have "
                                  "begin after end", what, name, e->begin, e->end);

    /* numel * size in u64 with an overflow check per factor. A zero anywhere
     * makes the product zero however large the other dims, so test that
     * first rather than report a spurious overflow. */
    char sbuf[SHAPE_STR_CAP];
    uint64_t bytes = 0;
    if (!has_zero) {
        bytes = dtype_size(e->dtype);
        for (int i = 0; i < e->ndim; i++) {
            uint64_t d = (uint64_t)e->shape[i];
            if (bytes > UINT64_MAX / d)
                return fisher_errorf(err, "%s: tensor %s: shape %s is too large (byte size "
                                          "overflows 64 bits)", what, name,
                                     format_shape(sbuf, e->ndim, e->shape));
            bytes *= d;
        }
    }
    if (bytes != e->end - e->begin)
        return fisher_errorf(err, "%s: tensor %s: shape %s of %s needs %" PRIu64 " bytes but "
                                  "data_offsets [%" PRIu64 ", %" PRIu64 "] span %" PRIu64,
                             what, name, format_shape(sbuf, e->ndim, e->shape),
                             dtype_name(e->dtype), bytes, e->begin, e->end, e->end - e->begin);
    if (e->end > data_len)
        return fisher_errorf(err, "%s: tensor %s: data_offsets [%" PRIu64 ", %" PRIu64 "] run "
                                  "past the end of the data section (%zu bytes)",
                             what, name, e->begin, e->end, data_len);
    /* end <= data_len <= SIZE_MAX, so numel fits in size_t (invariant 2). */
    e->numel = (size_t)(bytes / dtype_size(e->dtype));
    return 0;
}

static int parse_metadata(const char *what, json_t *meta, fisher_error *err) {
    if (!json_is_object(meta))
        return fisher_errorf(err, "%s: __metadata__ is not a JSON object", what);
    const char *key;
    json_t *val;
    json_object_foreach(meta, key, val) {
        if (!json_is_string(val))
            return fisher_errorf(err, "%s: __metadata__ value for key %s is not a string", what,
                                 key);
    }
    return 0;
}

/* Builds a handle around buf (taking ownership: it is freed on failure too).
 * Returns NULL with err set on any problem. */
static fisher_safetensors *parse_owned(unsigned char *buf, size_t len, const char *what,
                                       fisher_error *err) {
    st_entry **by_range = NULL;
    fisher_safetensors *st = calloc(1, sizeof *st);
    if (!st) {
        free(buf);
        fisher_errorf(err, "%s: out of memory", what);
        return NULL;
    }
    st->buf = buf;
    st->len = len;
    st->what = strdup(what);
    if (!st->what) {
        fisher_errorf(err, "%s: out of memory", what);
        goto err;
    }

    if (len < 8) {
        fisher_errorf(err, "%s: file is %zu bytes, too short for the 8-byte header length", what,
                      len);
        goto err;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | buf[i];
    if (hlen > len - 8) {
        fisher_errorf(err, "%s: header length %" PRIu64 " exceeds the %zu bytes after the length "
                           "prefix (file is %zu bytes)", what, hlen, len - 8, len);
        goto err;
    }
    st->data = buf + 8 + hlen;
    st->data_len = len - 8 - (size_t)hlen;

    /* Duplicate keys would silently shadow a tensor; reject them here. */
    json_error_t jerr;
    st->header = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!st->header) {
        fisher_errorf(err, "%s: header is not valid JSON: %s (line %d, column %d, header byte %d)", what,
                      jerr.text, jerr.line, jerr.column, jerr.position);
        goto err;
    }
    if (!json_is_object(st->header)) {
        fisher_errorf(err, "%s: header is not a JSON object", what);
        goto err;
    }

    st->meta = json_object_get(st->header, "__metadata__");
    if (st->meta && parse_metadata(what, st->meta, err) != 0) goto err;

    size_t cap = json_object_size(st->header) - (st->meta != NULL);
    st->entries = calloc(cap ? cap : 1, sizeof *st->entries);
    st->by_name = calloc(cap ? cap : 1, sizeof *st->by_name);
    by_range = calloc(cap ? cap : 1, sizeof *by_range);
    if (!st->entries || !st->by_name || !by_range) {
        fisher_errorf(err, "%s: out of memory for %zu tensors", what, cap);
        goto err;
    }
    /* jansson iterates objects in insertion order, i.e. header order. */
    const char *key;
    json_t *val;
    json_object_foreach(st->header, key, val) {
        if (strcmp(key, "__metadata__") == 0) continue;
        st_entry *e = &st->entries[st->n];
        if (parse_entry(what, key, val, st->data_len, e, err) != 0) goto err;
        st->by_name[st->n] = by_range[st->n] = e;
        st->n++;
    }

    qsort(by_range, st->n, sizeof *by_range, cmp_by_range);
    const st_entry *prev = NULL; /* the non-empty range that ends last so far */
    for (size_t i = 0; i < st->n; i++) {
        const st_entry *e = by_range[i];
        if (e->begin == e->end) continue;
        if (prev && e->begin < prev->end) {
            fisher_errorf(err, "%s: tensors %s [%" PRIu64 ", %" PRIu64 ") and %s [%" PRIu64
                               ", %" PRIu64 ") overlap", what, prev->name, prev->begin,
                          prev->end, e->name, e->begin, e->end);
            goto err;
        }
        prev = e;
    }
    qsort(st->by_name, st->n, sizeof *st->by_name, cmp_by_name);
    free(by_range);
    return st;

err:
    free(by_range);
    fisher_safetensors_close(st);
    return NULL;
}

/* ----------------------------------------------------------------------------
 * Reading: public entry points */

fisher_safetensors *fisher_safetensors_parse(const void *buf, size_t len, const char *what,
                                             fisher_error *err) {
    if (!what) what = "(buffer)";
    if (!buf && len) {
        fisher_errorf(err, "%s: NULL buffer of %zu bytes", what, len);
        return NULL;
    }
    unsigned char *copy = malloc(len ? len : 1);
    if (!copy) {
        fisher_errorf(err, "%s: out of memory for %zu bytes", what, len);
        return NULL;
    }
    if (len) memcpy(copy, buf, len);
    return parse_owned(copy, len, what, err);
}

fisher_safetensors *fisher_safetensors_open(const char *path, fisher_error *err) {
    size_t len;
    unsigned char *buf = fisher_file_read(path, &len, err);
    return buf ? parse_owned(buf, len, path, err) : NULL;
}

void fisher_safetensors_close(fisher_safetensors *st) {
    if (!st) return;
    json_decref(st->header);
    free(st->entries);
    free(st->by_name);
    free(st->buf);
    free(st->what);
    free(st);
}

size_t fisher_safetensors_count(const fisher_safetensors *st) { return st ? st->n : 0; }

const char *fisher_safetensors_name(const fisher_safetensors *st, size_t i) {
    return st && i < st->n ? st->entries[i].name : NULL;
}

const char *fisher_safetensors_metadata(const fisher_safetensors *st, const char *key) {
    if (!st || !st->meta || !key) return NULL;
    return json_string_value(json_object_get(st->meta, key)); /* NULL when absent */
}

/* The entry called name, or NULL with err set. O(log n). */
static const st_entry *find(const fisher_safetensors *st, const char *name, fisher_error *err) {
    if (!st || !name) {
        fisher_errorf(err, "safetensors: NULL %s", st ? "tensor name" : "handle");
        return NULL;
    }
    st_entry key = {.name = name};
    const st_entry *pkey = &key;
    st_entry **hit = bsearch(&pkey, st->by_name, st->n, sizeof *st->by_name, cmp_by_name);
    if (!hit) {
        fisher_errorf(err, "%s: no tensor named %s", st->what, name);
        return NULL;
    }
    return *hit;
}

int fisher_safetensors_info(const fisher_safetensors *st, const char *name, fisher_dtype *dtype,
                            int *ndim, int64_t *shape, fisher_error *err) {
    const st_entry *e = find(st, name, err);
    if (!e) return -1;
    if (dtype) *dtype = e->dtype;
    if (ndim) *ndim = e->ndim;
    if (shape) memcpy(shape, e->shape, sizeof e->shape);
    return 0;
}

/* Checks e has exactly the caller's shape. Returns 0 or -1 with err set. */
static int check_shape(const fisher_safetensors *st, const st_entry *e, int ndim,
                       const int64_t *shape, fisher_error *err) {
    char have[SHAPE_STR_CAP], want[SHAPE_STR_CAP];
    if (ndim < 0 || ndim > FISHER_ST_MAX_DIMS || (ndim > 0 && !shape))
        return fisher_errorf(err, "%s: tensor %s: invalid expected shape (ndim %d)", st->what,
                             e->name, ndim);
    int same = ndim == e->ndim;
    for (int i = 0; same && i < ndim; i++) same = shape[i] == e->shape[i];
    if (!same)
        return fisher_errorf(err, "%s: tensor %s has shape %s, expected %s", st->what, e->name,
                             format_shape(have, e->ndim, e->shape),
                             format_shape(want, ndim, shape));
    return 0;
}

/* Widens a float tensor of any supported float dtype into dst[numel]. */
static void copy_f32(const fisher_safetensors *st, const st_entry *e, float *dst) {
    const unsigned char *src = st->data + e->begin;
    if (e->dtype == FISHER_DTYPE_F32) {
        memcpy(dst, src, e->numel * sizeof *dst);
        return;
    }
    for (size_t i = 0; i < e->numel; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, sizeof h);
        dst[i] = e->dtype == FISHER_DTYPE_F16 ? f16_to_f32(h) : bf16_to_f32(h);
    }
}

static int is_float(fisher_dtype dt) {
    return dt == FISHER_DTYPE_F32 || dt == FISHER_DTYPE_F16 || dt == FISHER_DTYPE_BF16;
}

int fisher_safetensors_read_f32(const fisher_safetensors *st, const char *name, float *dst,
                                int ndim, const int64_t *shape, fisher_error *err) {
    const st_entry *e = find(st, name, err);
    if (!e) return -1;
    if (!is_float(e->dtype))
        return fisher_errorf(err, "%s: tensor %s is %s, expected a float tensor (F32, F16 or "
                                  "BF16)", st->what, name, dtype_name(e->dtype));
    if (check_shape(st, e, ndim, shape, err) != 0) return -1;
    if (!dst && e->numel)
        return fisher_errorf(err, "%s: tensor %s: NULL destination", st->what, name);
    if (e->numel) copy_f32(st, e, dst);
    return 0;
}

/* An 8-byte tensor copied as is: I64 and F64 share everything but the name. */
static int read_raw8(const fisher_safetensors *st, const char *name, fisher_dtype want, void *dst,
                     int ndim, const int64_t *shape, fisher_error *err) {
    const st_entry *e = find(st, name, err);
    if (!e) return -1;
    if (e->dtype != want)
        return fisher_errorf(err, "%s: tensor %s is %s, expected %s", st->what, name,
                             dtype_name(e->dtype), dtype_name(want));
    if (check_shape(st, e, ndim, shape, err) != 0) return -1;
    if (!dst && e->numel)
        return fisher_errorf(err, "%s: tensor %s: NULL destination", st->what, name);
    if (e->numel) memcpy(dst, st->data + e->begin, e->numel * 8);
    return 0;
}

int fisher_safetensors_read_i64(const fisher_safetensors *st, const char *name, int64_t *dst,
                                int ndim, const int64_t *shape, fisher_error *err) {
    return read_raw8(st, name, FISHER_DTYPE_I64, dst, ndim, shape, err);
}

int fisher_safetensors_read_f64(const fisher_safetensors *st, const char *name, double *dst,
                                int ndim, const int64_t *shape, fisher_error *err) {
    return read_raw8(st, name, FISHER_DTYPE_F64, dst, ndim, shape, err);
}

float *fisher_safetensors_get_f32(const fisher_safetensors *st, const char *name, int *ndim,
                                  int64_t *shape, size_t *numel, fisher_error *err) {
    const st_entry *e = find(st, name, err);
    if (!e) return NULL;
    if (!is_float(e->dtype)) {
        fisher_errorf(err, "%s: tensor %s is %s, expected a float tensor (F32, F16 or BF16)",
                      st->what, name, dtype_name(e->dtype));
        return NULL;
    }
    /* numel * 4 cannot overflow: numel * dtype_size fits in the file. For F16
     * and BF16 it is twice the on-disk size, which a 64-bit size_t holds. */
    float *out = malloc(e->numel ? e->numel * sizeof *out : 1);
    if (!out) {
        fisher_errorf(err, "%s: tensor %s: out of memory for %zu floats", st->what, name,
                      e->numel);
        return NULL;
    }
    if (e->numel) copy_f32(st, e, out);
    if (ndim) *ndim = e->ndim;
    if (shape) memcpy(shape, e->shape, sizeof e->shape);
    if (numel) *numel = e->numel;
    return out;
}

/* ----------------------------------------------------------------------------
 * Writing */

/* Builds the header JSON (tensors in order, contiguous offsets) after
 * checking every tensor; *sizes gets each tensor's byte size. Returns the
 * header or NULL with err set. */
static json_t *build_header(const char *path, const fisher_st_tensor *t, size_t n,
                            const fisher_st_meta *meta, size_t n_meta, uint64_t *sizes,
                            fisher_error *err) {
    json_t *root = json_object();
    if (!root) goto oom;
    /* "__metadata__" first, where the reference writer puts it, so a person
     * running `head -c` on the file sees the config straight away. */
    if (n_meta > 0) {
        json_t *m = json_object();
        if (!m || json_object_set_new(root, "__metadata__", m) != 0) goto oom;
        for (size_t i = 0; i < n_meta; i++) {
            if (!meta[i].key || !meta[i].value) {
                fisher_errorf(err, "%s: metadata entry %zu has a NULL key or value", path, i);
                goto err;
            }
            if (json_object_get(m, meta[i].key)) {
                fisher_errorf(err, "%s: duplicate metadata key %s", path, meta[i].key);
                goto err;
            }
            json_t *s = json_string(meta[i].value);
            if (!s) {
                fisher_errorf(err, "%s: metadata value for key %s is not valid UTF-8", path,
                              meta[i].key);
                goto err;
            }
            if (json_object_set_new(m, meta[i].key, s) != 0) {
                fisher_errorf(err, "%s: metadata key %s is not valid UTF-8", path, meta[i].key);
                goto err;
            }
        }
    }

    uint64_t offset = 0;
    for (size_t i = 0; i < n; i++) {
        const fisher_st_tensor *ti = &t[i];
        const char *name = ti->name;
        if (!name || !*name) {
            fisher_errorf(err, "%s: tensor %zu has no name", path, i);
            goto err;
        }
        if (strcmp(name, "__metadata__") == 0) {
            fisher_errorf(err, "%s: tensor name __metadata__ is reserved", path);
            goto err;
        }
        if (json_object_get(root, name)) {
            fisher_errorf(err, "%s: duplicate tensor name %s", path, name);
            goto err;
        }
        size_t esize = dtype_size(ti->dtype);
        if (!esize) {
            fisher_errorf(err, "%s: tensor %s: unsupported dtype %d", path, name, (int)ti->dtype);
            goto err;
        }
        if (ti->ndim < 0 || ti->ndim > FISHER_ST_MAX_DIMS) {
            fisher_errorf(err, "%s: tensor %s: ndim %d outside 0..%d", path, name, ti->ndim,
                          FISHER_ST_MAX_DIMS);
            goto err;
        }
        int has_zero = 0;
        for (int d = 0; d < ti->ndim; d++) {
            if (ti->shape[d] < 0) {
                fisher_errorf(err, "%s: tensor %s: shape[%d] is negative (%" PRId64 ")", path,
                              name, d, ti->shape[d]);
                goto err;
            }
            has_zero |= ti->shape[d] == 0;
        }
        /* Offsets are json_int_t (signed 64-bit) in the header, so bound the
         * byte size and the running offset by INT64_MAX, not UINT64_MAX. */
        uint64_t bytes = has_zero ? 0 : esize;
        for (int d = 0; d < ti->ndim && bytes; d++) {
            uint64_t dim = (uint64_t)ti->shape[d];
            if (bytes > (uint64_t)INT64_MAX / dim || bytes * dim > (uint64_t)INT64_MAX - offset) {
                fisher_errorf(err, "%s: tensor %s: data section would exceed 2^63 bytes", path,
                              name);
                goto err;
            }
            bytes *= dim;
        }
        if (bytes && !ti->data) {
            fisher_errorf(err, "%s: tensor %s: NULL data for %" PRIu64 " bytes", path, name,
                          bytes);
            goto err;
        }

        json_t *shape = json_array();
        for (int d = 0; shape && d < ti->ndim; d++)
            if (json_array_append_new(shape, json_integer(ti->shape[d])) != 0) {
                json_decref(shape);
                shape = NULL;
            }
        if (!shape) goto oom;
        /* "o" hands shape to the new object; jansson 2.14 frees it if the
         * pack fails, so nothing leaks on either path. */
        json_t *entry = json_pack("{s:s, s:o, s:[I, I]}", "dtype", dtype_name(ti->dtype),
                                  "shape", shape, "data_offsets", (json_int_t)offset,
                                  (json_int_t)(offset + bytes));
        if (!entry) goto oom;
        if (json_object_set_new(root, name, entry) != 0) { /* set_new frees entry on failure */
            fisher_errorf(err, "%s: tensor name %s is not valid UTF-8", path, name);
            goto err;
        }
        sizes[i] = bytes;
        offset += bytes;
    }
    return root;

oom:
    fisher_errorf(err, "%s: out of memory building the header", path);
err:
    json_decref(root);
    return NULL;
}

int fisher_safetensors_write(const char *path, const fisher_st_tensor *tensors, size_t n_tensors,
                             const fisher_st_meta *meta, size_t n_meta, fisher_error *err) {
    int rc = -1;
    char *text = NULL, *head = NULL;
    uint64_t *sizes = NULL;
    json_t *root = NULL;

    if (!path) return fisher_errorf(err, "safetensors: NULL path");
    if ((n_tensors && !tensors) || (n_meta && !meta))
        return fisher_errorf(err, "%s: NULL tensor or metadata array", path);
    sizes = calloc(n_tensors ? n_tensors : 1, sizeof *sizes);
    if (!sizes) {
        fisher_errorf(err, "%s: out of memory", path);
        goto out;
    }
    root = build_header(path, tensors, n_tensors, meta, n_meta, sizes, err);
    if (!root) goto out;
    /* jansson keeps insertion order, so tensors appear in the caller's order. */
    text = json_dumps(root, JSON_COMPACT);
    if (!text) {
        fisher_errorf(err, "%s: out of memory serialising the header", path);
        goto out;
    }

    /* Pad with spaces (JSON whitespace) so the data section starts 8-aligned
     * in the file, which lets an mmap-based reader cast F32/I64 directly. */
    size_t tlen = strlen(text), hlen = (tlen + 7) / 8 * 8;
    head = malloc(8 + hlen);
    if (!head) {
        fisher_errorf(err, "%s: out of memory", path);
        goto out;
    }
    for (int i = 0; i < 8; i++) head[i] = (char)(((uint64_t)hlen >> (8 * i)) & 0xff);
    memcpy(head + 8, text, tlen);
    memset(head + 8 + tlen, ' ', hlen - tlen);

    fisher_file_piece *pieces = calloc(n_tensors + 1, sizeof *pieces);
    if (!pieces) {
        fisher_errorf(err, "%s: out of memory", path);
        goto out;
    }
    pieces[0] = (fisher_file_piece){head, 8 + hlen};
    for (size_t i = 0; i < n_tensors; i++) pieces[i + 1] = (fisher_file_piece){tensors[i].data, (size_t)sizes[i]};
    rc = fisher_file_write_atomic(path, pieces, n_tensors + 1, err);
    free(pieces);
out:
    free(head);
    free(text);
    json_decref(root);
    free(sizes);
    return rc;
}
