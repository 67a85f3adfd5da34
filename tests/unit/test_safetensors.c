/*
 * test_safetensors.c — unit tests for lib/safetensors.c.
 *
 * Three kinds of test. Round trips: what the writer writes, the reader reads
 * back bit for bit, including scalars, empty tensors and metadata, and the
 * header is laid out as promised (order, contiguous offsets, 8-byte padding).
 * Conversions: hand-built F16/BF16 files with known bit patterns, plus every
 * one of the 65536 halves against an independent formula. Rejection: each
 * malformed header the reader must refuse, asserting both the failure and
 * the words a person needs in the message; then every truncation and a sweep
 * of byte flips of a valid file, which must fail cleanly or succeed, never
 * crash (run this under ASan+UBSan — the parser gets a buffer of exactly the
 * given length, so any over-read is caught).
 *
 * Files go in a mkdtemp directory under /tmp, removed by the group teardown.
 */
#include "testutil.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

static char tmpdir[64];

/* ----------------------------------------------------------------------------
 * helpers */


static int group_setup(void **state) {
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/fisher_st_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int group_teardown(void **state) {
    (void)state;
    return rm_tree(tmpdir);
}

static const char *tmp_path(char *buf, size_t cap, const char *name) {
    snprintf(buf, cap, "%s/%s", tmpdir, name);
    return buf;
}

/* A malloc'd safetensors image: u64 length of `header` (unpadded, so data
 * usually lands unaligned), the header, then dlen bytes of data. */
static unsigned char *st_image(const char *header, const void *data, size_t dlen, size_t *len) {
    size_t hlen = strlen(header);
    *len = 8 + hlen + dlen;
    unsigned char *b = malloc(*len ? *len : 1);
    assert_non_null(b);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    memcpy(b + 8, header, hlen);
    if (dlen) memcpy(b + 8 + hlen, data, dlen);
    return b;
}

/* Fails the test unless err->msg contains every word in the NULL-terminated
 * list. */
static void assert_msg_has(const fisher_error *err, const char *const *words) {
    for (; *words; words++)
        if (!strstr(err->msg, *words))
            fail_msg("message \"%s\" lacks \"%s\"", err->msg, *words);
}

/* Parses a buffer that must be refused, with a message naming the source
 * and containing each word. */
static void expect_buf_fail(const unsigned char *buf, size_t len, const char *const *words) {
    fisher_error err = {{0}};
    fisher_safetensors *st = fisher_safetensors_parse(buf, len, "bad.safetensors", &err);
    if (st) {
        fisher_safetensors_close(st);
        fail_msg("parse succeeded; expected a message with \"%s\"", words[0]);
    }
    const char *src[] = {"bad.safetensors", NULL};
    assert_msg_has(&err, src);
    assert_msg_has(&err, words);
}

static void expect_fail(const char *header, const void *data, size_t dlen,
                        const char *const *words) {
    size_t len;
    unsigned char *b = st_image(header, data, dlen, &len);
    expect_buf_fail(b, len, words);
    free(b);
}

#define EXPECT_FAIL(hdr, data, dlen, ...) \
    expect_fail(hdr, data, dlen, (const char *const[]){__VA_ARGS__, NULL})

static fisher_safetensors *parse_ok(const char *header, const void *data, size_t dlen) {
    size_t len;
    fisher_error err = {{0}};
    unsigned char *b = st_image(header, data, dlen, &len);
    fisher_safetensors *st = fisher_safetensors_parse(b, len, "good.safetensors", &err);
    free(b);
    if (!st) fail_msg("parse failed: %s", err.msg);
    return st;
}

static unsigned char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(n > 0 ? (size_t)n : 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return b;
}

static void spit(const char *path, const void *buf, size_t len) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (len) assert_int_equal(fwrite(buf, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* ----------------------------------------------------------------------------
 * a reference file used by several tests */

static const float ref_w[6] = {1.5f, -2.25f, 0.0f, 3.0e-38f, 1.0e30f, -0.0f};
static const int64_t ref_idx[4] = {0, -1, INT64_MAX, INT64_MIN};
static const float ref_scalar = 42.5f;

static int write_reference(const char *path, fisher_error *err) {
    fisher_st_tensor t[] = {
        {.name = "encoder.weight", .dtype = FISHER_DTYPE_F32, .ndim = 2, .shape = {2, 3},
         .data = ref_w},
        {.name = "step", .dtype = FISHER_DTYPE_I64, .ndim = 1, .shape = {4}, .data = ref_idx},
        {.name = "scale", .dtype = FISHER_DTYPE_F32, .ndim = 0, .data = &ref_scalar},
        {.name = "empty", .dtype = FISHER_DTYPE_F32, .ndim = 2, .shape = {0, 5}, .data = NULL},
    };
    fisher_st_meta m[] = {{"arch", "segformer-b0"}, {"num_classes", "2"}};
    return fisher_safetensors_write(path, t, 4, m, 2, err);
}

/* ----------------------------------------------------------------------------
 * round trips */

static void test_round_trip(void **state) {
    (void)state;
    char path[256];
    fisher_error err = {{0}};
    tmp_path(path, sizeof path, "ref.safetensors");
    if (write_reference(path, &err) != 0) fail_msg("write: %s", err.msg);

    fisher_safetensors *st = fisher_safetensors_open(path, &err);
    if (!st) fail_msg("open: %s", err.msg);
    assert_int_equal(fisher_safetensors_count(st), 4);
    assert_string_equal(fisher_safetensors_name(st, 0), "encoder.weight");
    assert_string_equal(fisher_safetensors_name(st, 1), "step");
    assert_string_equal(fisher_safetensors_name(st, 2), "scale");
    assert_string_equal(fisher_safetensors_name(st, 3), "empty");
    assert_null(fisher_safetensors_name(st, 4));
    assert_string_equal(fisher_safetensors_metadata(st, "arch"), "segformer-b0");
    assert_string_equal(fisher_safetensors_metadata(st, "num_classes"), "2");
    assert_null(fisher_safetensors_metadata(st, "absent"));

    fisher_dtype dt;
    int nd;
    int64_t sh[FISHER_ST_MAX_DIMS];
    assert_int_equal(fisher_safetensors_info(st, "encoder.weight", &dt, &nd, sh, &err), 0);
    assert_int_equal(dt, FISHER_DTYPE_F32);
    assert_int_equal(nd, 2);
    assert_int_equal(sh[0], 2);
    assert_int_equal(sh[1], 3);

    float w[6];
    int64_t shape23[] = {2, 3};
    assert_int_equal(fisher_safetensors_read_f32(st, "encoder.weight", w, 2, shape23, &err), 0);
    assert_memory_equal(w, ref_w, sizeof w); /* bitwise, so -0.0 survives */

    int64_t idx[4], shape4[] = {4};
    assert_int_equal(fisher_safetensors_read_i64(st, "step", idx, 1, shape4, &err), 0);
    assert_memory_equal(idx, ref_idx, sizeof idx);

    /* Scalar: ndim 0, one element. */
    float s = 0;
    assert_int_equal(fisher_safetensors_info(st, "scale", &dt, &nd, sh, &err), 0);
    assert_int_equal(nd, 0);
    assert_int_equal(fisher_safetensors_read_f32(st, "scale", &s, 0, NULL, &err), 0);
    assert_true(s == ref_scalar);

    /* Zero-size: reads nothing, and a NULL destination is fine. */
    int64_t shape05[] = {0, 5};
    assert_int_equal(fisher_safetensors_read_f32(st, "empty", NULL, 2, shape05, &err), 0);
    size_t n = 99;
    float *e = fisher_safetensors_get_f32(st, "empty", &nd, sh, &n, &err);
    assert_non_null(e);
    assert_int_equal(n, 0);
    assert_int_equal(nd, 2);
    free(e);

    /* get_f32 with every optional output NULL. */
    float *g = fisher_safetensors_get_f32(st, "encoder.weight", NULL, NULL, NULL, &err);
    assert_non_null(g);
    assert_memory_equal(g, ref_w, sizeof ref_w);
    free(g);
    g = fisher_safetensors_get_f32(st, "encoder.weight", &nd, sh, &n, &err);
    assert_non_null(g);
    assert_int_equal(n, 6);
    free(g);

    fisher_safetensors_close(st);
    unlink(path);
}

/* The header is laid out as documented: 8-byte multiple, space padding,
 * __metadata__ only when asked for, tensors in order with contiguous offsets. */
static void test_write_layout(void **state) {
    (void)state;
    char path[256];
    fisher_error err = {{0}};
    tmp_path(path, sizeof path, "layout.safetensors");
    if (write_reference(path, &err) != 0) fail_msg("write: %s", err.msg);
    size_t len;
    unsigned char *b = slurp(path, &len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | b[i];
    assert_int_equal(hlen % 8, 0);
    assert_int_equal(len, 8 + hlen + sizeof ref_w + sizeof ref_idx + sizeof ref_scalar);

    json_error_t jerr;
    json_t *h = json_loadb((const char *)b + 8, hlen, 0, &jerr);
    assert_non_null(h);
    const char *want[] = {"__metadata__", "encoder.weight", "step", "scale", "empty"};
    const json_int_t begin[] = {0, 0, 24, 56, 60}, end[] = {0, 24, 56, 60, 60};
    size_t i = 0;
    const char *key;
    json_t *v;
    json_object_foreach(h, key, v) {
        assert_true(i < 5);
        assert_string_equal(key, want[i]);
        if (i > 0) {
            json_t *off = json_object_get(v, "data_offsets");
            assert_int_equal(json_integer_value(json_array_get(off, 0)), begin[i]);
            assert_int_equal(json_integer_value(json_array_get(off, 1)), end[i]);
        }
        i++;
    }
    assert_int_equal(i, 5);
    json_decref(h);
    free(b);

    /* No metadata → no "__metadata__" key at all. */
    int64_t one = 7;
    fisher_st_tensor t = {.name = "x", .dtype = FISHER_DTYPE_I64, .ndim = 1, .shape = {1},
                          .data = &one};
    assert_int_equal(fisher_safetensors_write(path, &t, 1, NULL, 0, &err), 0);
    b = slurp(path, &len);
    for (size_t k = 0; k + 12 <= len; k++) assert_true(memcmp(b + k, "__metadata__", 12) != 0);
    free(b);
    fisher_safetensors *st = fisher_safetensors_open(path, &err);
    assert_non_null(st);
    assert_null(fisher_safetensors_metadata(st, "arch"));
    fisher_safetensors_close(st);

    /* Padding for every residue of the JSON length mod 8: names of length
     * 1..8 shift it through all of them. */
    for (int k = 1; k <= 8; k++) {
        char name[9] = "abcdefgh";
        name[k] = '\0';
        t.name = name;
        assert_int_equal(fisher_safetensors_write(path, &t, 1, NULL, 0, &err), 0);
        b = slurp(path, &len);
        hlen = 0;
        for (int i = 7; i >= 0; i--) hlen = hlen << 8 | b[i];
        assert_int_equal(hlen % 8, 0);
        assert_int_equal(len, 8 + hlen + 8);
        size_t j = 8 + hlen;
        while (b[j - 1] == ' ') j--;
        assert_int_equal(b[j - 1], '}');
        assert_memory_equal(b + 8 + hlen, &one, 8);
        free(b);
    }

    /* No tensors at all is a valid (empty) file. */
    assert_int_equal(fisher_safetensors_write(path, NULL, 0, NULL, 0, &err), 0);
    st = fisher_safetensors_open(path, &err);
    assert_non_null(st);
    assert_int_equal(fisher_safetensors_count(st), 0);
    fisher_safetensors_close(st);
    unlink(path);
}

/* Hundreds of tensors written in reverse name order, each found by name. */
static void test_many_tensors(void **state) {
    (void)state;
    enum { N = 400 };
    char path[256], names[N][16];
    fisher_st_tensor *t = calloc(N, sizeof *t);
    float *vals = malloc(N * sizeof *vals);
    assert_non_null(t);
    assert_non_null(vals);
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "layer.%03d", N - 1 - i);
        vals[i] = (float)i;
        t[i] = (fisher_st_tensor){.name = names[i], .dtype = FISHER_DTYPE_F32, .ndim = 1,
                                  .shape = {1}, .data = &vals[i]};
    }
    fisher_error err = {{0}};
    tmp_path(path, sizeof path, "many.safetensors");
    if (fisher_safetensors_write(path, t, N, NULL, 0, &err) != 0) fail_msg("%s", err.msg);
    fisher_safetensors *st = fisher_safetensors_open(path, &err);
    assert_non_null(st);
    assert_int_equal(fisher_safetensors_count(st), N);
    int64_t one[] = {1};
    for (int i = 0; i < N; i++) {
        float f = -1;
        assert_int_equal(fisher_safetensors_read_f32(st, names[i], &f, 1, one, &err), 0);
        assert_true(f == (float)i);
        assert_string_equal(fisher_safetensors_name(st, (size_t)i), names[i]);
    }
    float f;
    assert_int_equal(fisher_safetensors_read_f32(st, "layer.400", &f, 1, one, &err), -1);
    const char *w[] = {"no tensor named layer.400", "many.safetensors", NULL};
    assert_msg_has(&err, w);
    fisher_safetensors_close(st);
    unlink(path);
    free(t);
    free(vals);
}

/* ----------------------------------------------------------------------------
 * dtype conversion */

/* Known halves: zeros of both signs, normals, the subnormal extremes, the
 * largest finite, infinities and NaNs (quiet and with a payload). */
static void test_f16_known(void **state) {
    (void)state;
    static const uint16_t h[] = {0x0000, 0x8000, 0x3c00, 0xc000, 0x7bff, 0x0001, 0x03ff,
                                 0x0400, 0x8001, 0x7c00, 0xfc00, 0x7e00, 0x7c01, 0x3555};
    enum { N = sizeof h / sizeof h[0] };
    const uint32_t want[N] = {
        0x00000000, 0x80000000, f32_bits(1.0f), f32_bits(-2.0f), f32_bits(65504.0f),
        f32_bits(ldexpf(1, -24)), f32_bits(ldexpf(1023, -24)), f32_bits(ldexpf(1, -14)),
        f32_bits(-ldexpf(1, -24)), 0x7f800000, 0xff800000, 0x7fc00000, 0x7f802000,
        f32_bits(0.333251953125f),
    };
    char hdr[128];
    snprintf(hdr, sizeof hdr, "{\"h\":{\"dtype\":\"F16\",\"shape\":[%d],\"data_offsets\":[0,%d]}}",
             N, 2 * N);
    fisher_safetensors *st = parse_ok(hdr, h, sizeof h);
    float got[N];
    int64_t shape[] = {N};
    fisher_error err = {{0}};
    assert_int_equal(fisher_safetensors_read_f32(st, "h", got, 1, shape, &err), 0);
    for (int i = 0; i < N; i++)
        if (f32_bits(got[i]) != want[i])
            fail_msg("half 0x%04x -> 0x%08x, want 0x%08x", h[i], f32_bits(got[i]), want[i]);
    assert_true(signbit(got[1]) && got[1] == 0.0f);
    assert_true(isinf(got[9]) && isinf(got[10]) && isnan(got[11]) && isnan(got[12]));
    fisher_safetensors_close(st);
}

/* Every one of the 65536 halves against value = (-1)^s · m · 2^(e-25) (with
 * the implicit bit for normals), computed in double. */
static void test_f16_exhaustive(void **state) {
    (void)state;
    enum { N = 65536 };
    uint16_t *h = malloc(N * sizeof *h);
    float *got = malloc(N * sizeof *got);
    assert_non_null(h);
    assert_non_null(got);
    for (uint32_t i = 0; i < N; i++) h[i] = (uint16_t)i;
    char hdr[128];
    snprintf(hdr, sizeof hdr, "{\"h\":{\"dtype\":\"F16\",\"shape\":[256,256],"
                              "\"data_offsets\":[0,%d]}}", 2 * N);
    fisher_safetensors *st = parse_ok(hdr, h, N * sizeof *h);
    int64_t shape[] = {256, 256};
    fisher_error err = {{0}};
    assert_int_equal(fisher_safetensors_read_f32(st, "h", got, 2, shape, &err), 0);
    for (uint32_t i = 0; i < N; i++) {
        uint32_t s = i >> 15, e = (i >> 10) & 0x1f, m = i & 0x3ff;
        if (e == 0x1f) {
            uint32_t want = s << 31 | 0x7f800000u | m << 13;
            if (f32_bits(got[i]) != want)
                fail_msg("half 0x%04x -> 0x%08x, want 0x%08x", i, f32_bits(got[i]), want);
            continue;
        }
        double v = e ? ldexp(1024 + m, (int)e - 25) : ldexp(m, -24);
        float want = (float)(s ? -v : v);
        if (f32_bits(got[i]) != f32_bits(want))
            fail_msg("half 0x%04x -> %.9g, want %.9g", i, (double)got[i], (double)want);
    }
    fisher_safetensors_close(st);
    free(h);
    free(got);
}

static void test_bf16(void **state) {
    (void)state;
    static const uint16_t h[] = {0x3f80, 0xbf80, 0x8000, 0x0000, 0x7f80,
                                 0xff80, 0x7fc0, 0x0001, 0x4049, 0x7f7f};
    enum { N = sizeof h / sizeof h[0] };
    char hdr[128];
    snprintf(hdr, sizeof hdr, "{\"b\":{\"dtype\":\"BF16\",\"shape\":[%d],\"data_offsets\":[0,%d]}}",
             N, 2 * N);
    fisher_safetensors *st = parse_ok(hdr, h, sizeof h);
    float got[N];
    int64_t shape[] = {N};
    fisher_error err = {{0}};
    assert_int_equal(fisher_safetensors_read_f32(st, "b", got, 1, shape, &err), 0);
    for (int i = 0; i < N; i++) assert_int_equal(f32_bits(got[i]), (uint32_t)h[i] << 16);
    assert_true(got[0] == 1.0f && got[1] == -1.0f && got[8] == 3.140625f);
    assert_true(signbit(got[2]) && isinf(got[4]) && isinf(got[5]) && isnan(got[6]));
    fisher_safetensors_close(st);
}

/* F16/BF16 written through the writer read back as floats. */
static void test_half_round_trip(void **state) {
    (void)state;
    char path[256];
    const uint16_t half[3] = {0x3c00, 0x0001, 0xfc00}, bf[2] = {0x4049, 0x8000};
    fisher_st_tensor t[] = {
        {.name = "h", .dtype = FISHER_DTYPE_F16, .ndim = 1, .shape = {3}, .data = half},
        {.name = "b", .dtype = FISHER_DTYPE_BF16, .ndim = 2, .shape = {1, 2}, .data = bf},
    };
    fisher_error err = {{0}};
    tmp_path(path, sizeof path, "half.safetensors");
    assert_int_equal(fisher_safetensors_write(path, t, 2, NULL, 0, &err), 0);
    fisher_safetensors *st = fisher_safetensors_open(path, &err);
    assert_non_null(st);
    fisher_dtype dt;
    assert_int_equal(fisher_safetensors_info(st, "b", &dt, NULL, NULL, &err), 0);
    assert_int_equal(dt, FISHER_DTYPE_BF16);
    float h[3], b[2];
    int64_t s3[] = {3}, s12[] = {1, 2};
    assert_int_equal(fisher_safetensors_read_f32(st, "h", h, 1, s3, &err), 0);
    assert_int_equal(fisher_safetensors_read_f32(st, "b", b, 2, s12, &err), 0);
    assert_true(h[0] == 1.0f && h[1] == ldexpf(1, -24) && isinf(h[2]) && h[2] < 0);
    assert_true(b[0] == 3.140625f && signbit(b[1]));
    fisher_safetensors_close(st);
    unlink(path);
}

/* Data at odd offsets in the file: the reader must copy, not cast (UBSan's
 * alignment check would catch a cast). */
static void test_unaligned(void **state) {
    (void)state;
    unsigned char data[1 + 8 + 4];
    const int64_t i = -123456789012345;
    const float f = 6.5f;
    data[0] = 0xee;
    memcpy(data + 1, &i, 8);
    memcpy(data + 9, &f, 4);
    fisher_safetensors *st = parse_ok(
        "{\"i\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[1,9]},"
        "\"f\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[9,13]}}",
        data, sizeof data);
    int64_t gi, one[] = {1};
    float gf;
    fisher_error err = {{0}};
    assert_int_equal(fisher_safetensors_read_i64(st, "i", &gi, 1, one, &err), 0);
    assert_int_equal(gi, i);
    assert_int_equal(fisher_safetensors_read_f32(st, "f", &gf, 0, NULL, &err), 0);
    assert_true(gf == f);
    fisher_safetensors_close(st);
}

/* ----------------------------------------------------------------------------
 * reads that must be refused on a valid file */

static void test_shape_mismatch(void **state) {
    (void)state;
    float w[256] = {0};
    fisher_st_tensor t = {.name = "decode_head.classifier.weight", .dtype = FISHER_DTYPE_F32,
                          .ndim = 4, .shape = {1, 256, 1, 1}, .data = w};
    char path[256];
    fisher_error err = {{0}};
    tmp_path(path, sizeof path, "head.safetensors");
    assert_int_equal(fisher_safetensors_write(path, &t, 1, NULL, 0, &err), 0);
    fisher_safetensors *st = fisher_safetensors_open(path, &err);
    assert_non_null(st);

    float dst[512];
    int64_t want[] = {2, 256, 1, 1};
    assert_int_equal(fisher_safetensors_read_f32(st, t.name, dst, 4, want, &err), -1);
    const char *w1[] = {"tensor decode_head.classifier.weight has shape [1, 256, 1, 1], "
                        "expected [2, 256, 1, 1]", "head.safetensors", NULL};
    assert_msg_has(&err, w1);

    /* Different rank, and a scalar expectation. */
    int64_t want2[] = {1, 256};
    assert_int_equal(fisher_safetensors_read_f32(st, t.name, dst, 2, want2, &err), -1);
    const char *w2[] = {"has shape [1, 256, 1, 1], expected [1, 256]", NULL};
    assert_msg_has(&err, w2);
    assert_int_equal(fisher_safetensors_read_f32(st, t.name, dst, 0, NULL, &err), -1);
    const char *w3[] = {"expected []", NULL};
    assert_msg_has(&err, w3);

    /* Wrong kind: an F32 read as I64. */
    int64_t i64[256];
    int64_t s[] = {1, 256, 1, 1};
    assert_int_equal(fisher_safetensors_read_i64(st, t.name, i64, 4, s, &err), -1);
    const char *w4[] = {"decode_head.classifier.weight", "F32", "expected I64", NULL};
    assert_msg_has(&err, w4);

    /* Missing tensor, and a NULL err must not crash. */
    assert_int_equal(fisher_safetensors_read_f32(st, "nope", dst, 4, s, &err), -1);
    const char *w5[] = {"no tensor named nope", NULL};
    assert_msg_has(&err, w5);
    assert_int_equal(fisher_safetensors_read_f32(st, "nope", dst, 4, s, NULL), -1);
    assert_int_equal(fisher_safetensors_info(st, "nope", NULL, NULL, NULL, &err), -1);
    assert_null(fisher_safetensors_get_f32(st, "nope", NULL, NULL, NULL, NULL));
    fisher_safetensors_close(st);
    unlink(path);
}

static void test_i64_as_float(void **state) {
    (void)state;
    int64_t v = 3;
    fisher_safetensors *st =
        parse_ok("{\"n\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,8]}}", &v, 8);
    float f;
    fisher_error err = {{0}};
    assert_int_equal(fisher_safetensors_read_f32(st, "n", &f, 0, NULL, &err), -1);
    const char *w[] = {"tensor n is I64", "float", NULL};
    assert_msg_has(&err, w);
    assert_null(fisher_safetensors_get_f32(st, "n", NULL, NULL, NULL, &err));
    assert_msg_has(&err, w);
    fisher_safetensors_close(st);
}

/* F64 (golden distances checked to 1e-9) round-trips bit for bit and is
 * never silently narrowed to float. */
static void test_f64(void **state) {
    (void)state;
    double v[3] = {0.1, -1e-300, 1.0 / 3.0}, got[3] = {0};
    fisher_st_tensor t = {.name = "d", .dtype = FISHER_DTYPE_F64, .ndim = 1, .shape = {3}, .data = v};
    char path[512];
    fisher_error err = {{0}};
    assert_int_equal(fisher_safetensors_write(tmp_path(path, sizeof path, "f64.safetensors"), &t, 1,
                                              NULL, 0, &err), 0);
    fisher_safetensors *st = fisher_safetensors_open(path, &err);
    assert_non_null(st);
    int64_t shape[1] = {3};
    assert_int_equal(fisher_safetensors_read_f64(st, "d", got, 1, shape, &err), 0);
    assert_memory_equal(got, v, sizeof v);
    float f[3];
    assert_int_equal(fisher_safetensors_read_f32(st, "d", f, 1, shape, &err), -1);
    int64_t i[3];
    assert_int_equal(fisher_safetensors_read_i64(st, "d", i, 1, shape, &err), -1);
    const char *w[] = {"tensor d is F64", "expected I64", NULL};
    assert_msg_has(&err, w);
    fisher_safetensors_close(st);
}

/* ----------------------------------------------------------------------------
 * malformed files */

static void test_bad_framing(void **state) {
    (void)state;
    /* Shorter than the length prefix, including empty. */
    unsigned char z[8] = {0};
    const char *w0[] = {"0 bytes", "too short", NULL};
    expect_buf_fail(z, 0, w0);
    const char *w7[] = {"7 bytes", "too short", NULL};
    expect_buf_fail(z, 7, w7);

    /* Header length past the end: both numbers in the message. */
    unsigned char b[18] = {0};
    b[0] = 0xe8, b[1] = 0x03; /* 1000 */
    const char *w1[] = {"header length 1000", "10 bytes", NULL};
    expect_buf_fail(b, sizeof b, w1);
    memset(b, 0xff, 8); /* 2^64 - 1: must not wrap */
    const char *w2[] = {"18446744073709551615", NULL};
    expect_buf_fail(b, sizeof b, w2);

    /* Header length one past the end, by the smallest margin: "{}" is valid
     * JSON but the prefix claims 3 bytes. */
    unsigned char c[10] = {3, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
    const char *wc[] = {"header length 3", "exceeds the 2 bytes", NULL};
    expect_buf_fail(c, sizeof c, wc);

    /* Zero-length header: not JSON. */
    const char *w3[] = {"not valid JSON", NULL};
    expect_buf_fail(z, 8, w3);
}

static void test_bad_json(void **state) {
    (void)state;
    EXPECT_FAIL("{\"a\": ", NULL, 0, "not valid JSON", "line 1", "column");
    EXPECT_FAIL("{} trailing", NULL, 0, "not valid JSON");
    EXPECT_FAIL("{\"a\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,0]}}",
                NULL, 0, "not valid JSON", "too big");
    EXPECT_FAIL("{\"a\":{}, \"a\":{}}", NULL, 0, "not valid JSON", "duplicate");
    EXPECT_FAIL("[1, 2]", NULL, 0, "header is not a JSON object");
    EXPECT_FAIL("\"str\"", NULL, 0, "not valid JSON"); /* jansson refuses bare scalars */
    /* NUL inside the header buffer. */
    unsigned char b[8 + 4] = {4, 0, 0, 0, 0, 0, 0, 0, '{', 0, '}', ' '};
    const char *w[] = {"not valid JSON", NULL};
    expect_buf_fail(b, sizeof b, w);
}

static void test_bad_entry(void **state) {
    (void)state;
    EXPECT_FAIL("{\"w\": 5}", NULL, 0, "tensor w", "not a JSON object");
    EXPECT_FAIL("{\"w\": [1]}", NULL, 0, "tensor w", "not a JSON object");
    /* dtype */
    EXPECT_FAIL("{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", "abcd", 4, "tensor w",
                "missing \"dtype\"");
    EXPECT_FAIL("{\"w\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", "abcd", 4,
                "tensor w", "dtype", "not a string");
    EXPECT_FAIL("{\"w\":{\"dtype\":\"I16\",\"shape\":[1],\"data_offsets\":[0,2]}}", "ab", 2,
                "tensor w", "unsupported dtype", "I16");
    EXPECT_FAIL("{\"w\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[0,4]}}", "abcd", 4,
                "tensor w", "unsupported dtype", "I32");
    EXPECT_FAIL("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", "a", 1,
                "tensor w", "unsupported dtype", "U8");
    EXPECT_FAIL("{\"w\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", "abcd", 4,
                "unsupported dtype", "f32");
    /* shape */
    EXPECT_FAIL("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", "abcd", 4, "tensor w",
                "missing \"shape\"");
    EXPECT_FAIL("{\"w\":{\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]}}", "abcd", 4,
                "tensor w", "shape", "not an array");
    EXPECT_FAIL("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,-1],\"data_offsets\":[0,4]}}", "abcd", 4,
                "tensor w", "shape[1]", "non-negative integer");
    EXPECT_FAIL("{\"w\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", "abcd", 4,
                "tensor w", "shape[0]", "non-negative integer");
    EXPECT_FAIL("{\"w\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", "abcd", 4,
                "tensor w", "shape[0]");
    EXPECT_FAIL("{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}",
                "abcd", 4, "tensor w", "9 dims", "maximum 8");
    /* data_offsets */
    EXPECT_FAIL("{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", "abcd", 4, "tensor w",
                "missing \"data_offsets\"");
    EXPECT_FAIL("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":4}}", "abcd", 4,
                "tensor w", "data_offsets");
    EXPECT_FAIL("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4]}}", "abcd", 4,
                "tensor w", "data_offsets", "two");
    EXPECT_FAIL("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", "abcd", 4,
                "tensor w", "data_offsets", "two");
    EXPECT_FAIL("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,\"4\"]}}", "abcd", 4,
                "tensor w", "data_offsets");
    EXPECT_FAIL("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", "abcd", 4,
                "tensor w", "data_offsets", "non-negative");
    EXPECT_FAIL("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", "abcdefgh", 8,
                "tensor w", "[8, 4]", "begin after end");
}

static void test_bad_sizes(void **state) {
    (void)state;
    static const unsigned char d[64] = {0};
    /* Byte size disagrees with the range. */
    EXPECT_FAIL("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", d, 24,
                "tensor w", "[2, 3]", "24 bytes", "span 20");
    EXPECT_FAIL("{\"w\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,0]}}", d, 0,
                "tensor w", "4 bytes", "span 0");
    EXPECT_FAIL("{\"w\":{\"dtype\":\"I64\",\"shape\":[0],\"data_offsets\":[0,8]}}", d, 8,
                "tensor w", "0 bytes", "span 8");
    /* numel * size overflows 64 bits, in the product and in the last step. */
    EXPECT_FAIL("{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],"
                "\"data_offsets\":[0,0]}}", d, 0, "tensor w", "overflow");
    EXPECT_FAIL("{\"w\":{\"dtype\":\"I64\",\"shape\":[2305843009213693952],"
                "\"data_offsets\":[0,0]}}", d, 0, "tensor w", "overflow");
    /* Range past the data section. */
    EXPECT_FAIL("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", d, 4,
                "tensor w", "past the end", "4 bytes");
    EXPECT_FAIL("{\"w\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[9223372036854775800,"
                "9223372036854775804]}}", d, 4, "tensor w", "past the end");
    EXPECT_FAIL("{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[5,5]}}", d, 4,
                "tensor w", "past the end");
    /* Overlap, both names; also when the overlapping pair is not adjacent in
     * header order. */
    EXPECT_FAIL("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", d, 12,
                "tensors a", "and b", "overlap");
    EXPECT_FAIL("{\"c\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[20,24]},"
                "\"big\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                "\"d\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[24,28]},"
                "\"inner\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[12,16]}}", d, 28,
                "big", "inner", "overlap");
    EXPECT_FAIL("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                "\"same\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}", d, 8,
                "a", "same", "overlap");

    /* What is allowed: huge dims when one is zero, a zero-size range inside
     * another tensor's bytes, gaps, and trailing bytes after the last range. */
    fisher_safetensors *st = parse_ok(
        "{\"z\":{\"dtype\":\"F32\",\"shape\":[0,9223372036854775807,9223372036854775807],"
        "\"data_offsets\":[0,0]},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
        "\"e\":{\"dtype\":\"BF16\",\"shape\":[0],\"data_offsets\":[4,4]},"
        "\"b\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[12,16]}}", d, 20);
    assert_int_equal(fisher_safetensors_count(st), 4);
    fisher_safetensors_close(st);
}

static void test_bad_metadata(void **state) {
    (void)state;
    EXPECT_FAIL("{\"__metadata__\":\"x\"}", NULL, 0, "__metadata__", "not a JSON object");
    EXPECT_FAIL("{\"__metadata__\":[]}", NULL, 0, "__metadata__", "not a JSON object");
    EXPECT_FAIL("{\"__metadata__\":{\"ok\":\"1\",\"num_classes\":2}}", NULL, 0, "__metadata__",
                "num_classes", "not a string");
    EXPECT_FAIL("{\"__metadata__\":{\"k\":null}}", NULL, 0, "__metadata__", "k");
    /* Metadata alone, in any position, is fine. */
    fisher_safetensors *st = parse_ok(
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
        "\"__metadata__\":{\"k\":\"v\"}}", "abcd", 4);
    assert_int_equal(fisher_safetensors_count(st), 1);
    assert_string_equal(fisher_safetensors_name(st, 0), "a");
    assert_string_equal(fisher_safetensors_metadata(st, "k"), "v");
    fisher_safetensors_close(st);
}

static void test_open_errors(void **state) {
    (void)state;
    char path[256];
    fisher_error err = {{0}};
    tmp_path(path, sizeof path, "does-not-exist.safetensors");
    assert_null(fisher_safetensors_open(path, &err));
    const char *w1[] = {"does-not-exist.safetensors", "cannot open", NULL};
    assert_msg_has(&err, w1);
    assert_null(fisher_safetensors_open(tmpdir, &err));
    const char *w2[] = {tmpdir, "not a regular file", NULL};
    assert_msg_has(&err, w2);
    assert_null(fisher_safetensors_open(path, NULL));

    /* A malformed file through open names the path. */
    tmp_path(path, sizeof path, "short.safetensors");
    spit(path, "abc", 3);
    assert_null(fisher_safetensors_open(path, &err));
    const char *w3[] = {"short.safetensors", "3 bytes", NULL};
    assert_msg_has(&err, w3);
    unlink(path);
}

/* Every prefix of a valid file: only the whole file opens, the rest fail with
 * a message, none crash. Through parse (exact-size heap copy, so ASan sees any
 * over-read) and through open. */
static void test_truncation(void **state) {
    (void)state;
    char path[256], cut[256];
    fisher_error err = {{0}};
    tmp_path(path, sizeof path, "trunc.safetensors");
    tmp_path(cut, sizeof cut, "cut.safetensors");
    if (write_reference(path, &err) != 0) fail_msg("write: %s", err.msg);
    size_t len;
    unsigned char *b = slurp(path, &len);
    for (size_t n = 0; n <= len; n++) {
        unsigned char *prefix = malloc(n ? n : 1);
        assert_non_null(prefix);
        memcpy(prefix, b, n);
        err.msg[0] = '\0';
        fisher_safetensors *st = fisher_safetensors_parse(prefix, n, "cut", &err);
        free(prefix);
        if (n == len) {
            if (!st) fail_msg("full file failed: %s", err.msg);
        } else {
            if (st) fail_msg("prefix of %zu/%zu bytes parsed", n, len);
            assert_true(strlen(err.msg) > 0);
        }
        fisher_safetensors_close(st);

        spit(cut, b, n);
        st = fisher_safetensors_open(cut, &err);
        assert_true((st != NULL) == (n == len));
        fisher_safetensors_close(st);
    }
    free(b);
    unlink(cut);
    unlink(path);
}

/* Flip bits in every byte of a valid file; whatever parses must also read
 * without trouble. */
static void test_byte_flips(void **state) {
    (void)state;
    char path[256];
    fisher_error err = {{0}};
    tmp_path(path, sizeof path, "flip.safetensors");
    if (write_reference(path, &err) != 0) fail_msg("write: %s", err.msg);
    size_t len;
    unsigned char *b = slurp(path, &len);
    static const unsigned char masks[] = {0x01, 0x02, 0x08, 0x20, 0x80, 0xff};
    int ok = 0, bad = 0;
    for (size_t pos = 0; pos < len; pos++) {
        for (size_t k = 0; k < sizeof masks; k++) {
            b[pos] ^= masks[k];
            fisher_safetensors *st = fisher_safetensors_parse(b, len, "flip", &err);
            b[pos] ^= masks[k];
            if (!st) {
                assert_true(strlen(err.msg) > 0);
                bad++;
                continue;
            }
            ok++;
            for (size_t i = 0; i < fisher_safetensors_count(st); i++) {
                const char *name = fisher_safetensors_name(st, i);
                fisher_dtype dt;
                int nd;
                int64_t sh[FISHER_ST_MAX_DIMS];
                assert_int_equal(fisher_safetensors_info(st, name, &dt, &nd, sh, &err), 0);
                if (dt == FISHER_DTYPE_I64) {
                    size_t n = 1;
                    for (int d = 0; d < nd; d++) n *= (size_t)sh[d];
                    int64_t *dst = malloc(n ? n * 8 : 1);
                    assert_non_null(dst);
                    assert_int_equal(fisher_safetensors_read_i64(st, name, dst, nd, sh, &err), 0);
                    free(dst);
                } else {
                    size_t n;
                    float *f = fisher_safetensors_get_f32(st, name, NULL, NULL, &n, &err);
                    assert_non_null(f);
                    free(f);
                }
            }
            fisher_safetensors_close(st);
        }
    }
    printf("  byte flips: %d parsed, %d refused\n", ok, bad);
    assert_true(ok > 0 && bad > 0);
    free(b);
    unlink(path);
}

/* ----------------------------------------------------------------------------
 * writer errors */

static int count_entries(const char *dir) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        n += strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
    closedir(d);
    return n;
}

static void test_write_errors(void **state) {
    (void)state;
    char dir[256], path[300];
    tmp_path(dir, sizeof dir, "werr");
    assert_int_equal(mkdir(dir, 0700), 0);
    snprintf(path, sizeof path, "%s/out.safetensors", dir);
    float v[2] = {1, 2};
    fisher_error err = {{0}};

    fisher_st_tensor dup[] = {
        {.name = "w", .dtype = FISHER_DTYPE_F32, .ndim = 1, .shape = {2}, .data = v},
        {.name = "w", .dtype = FISHER_DTYPE_F32, .ndim = 1, .shape = {2}, .data = v},
    };
    assert_int_equal(fisher_safetensors_write(path, dup, 2, NULL, 0, &err), -1);
    const char *w1[] = {"out.safetensors", "duplicate tensor name w", NULL};
    assert_msg_has(&err, w1);

    fisher_st_tensor bad = {.name = "w", .dtype = (fisher_dtype)99, .ndim = 1, .shape = {2},
                            .data = v};
    assert_int_equal(fisher_safetensors_write(path, &bad, 1, NULL, 0, &err), -1);
    const char *w2[] = {"tensor w", "unsupported dtype", NULL};
    assert_msg_has(&err, w2);

    fisher_st_tensor neg = {.name = "w", .dtype = FISHER_DTYPE_F32, .ndim = 2, .shape = {2, -1},
                            .data = v};
    assert_int_equal(fisher_safetensors_write(path, &neg, 1, NULL, 0, &err), -1);
    const char *w3[] = {"tensor w", "negative", NULL};
    assert_msg_has(&err, w3);

    fisher_st_tensor deep = {.name = "w", .dtype = FISHER_DTYPE_F32, .ndim = 9, .data = v};
    assert_int_equal(fisher_safetensors_write(path, &deep, 1, NULL, 0, &err), -1);
    const char *w4[] = {"tensor w", "ndim 9", NULL};
    assert_msg_has(&err, w4);

    fisher_st_tensor huge = {.name = "w", .dtype = FISHER_DTYPE_F32, .ndim = 2,
                             .shape = {INT64_MAX, 2}, .data = v};
    assert_int_equal(fisher_safetensors_write(path, &huge, 1, NULL, 0, &err), -1);
    const char *w5[] = {"tensor w", "2^63", NULL};
    assert_msg_has(&err, w5);

    fisher_st_tensor nodata = {.name = "w", .dtype = FISHER_DTYPE_F32, .ndim = 1, .shape = {2}};
    assert_int_equal(fisher_safetensors_write(path, &nodata, 1, NULL, 0, &err), -1);
    const char *w6[] = {"tensor w", "NULL data", NULL};
    assert_msg_has(&err, w6);

    fisher_st_tensor reserved = {.name = "__metadata__", .dtype = FISHER_DTYPE_F32, .ndim = 1,
                                 .shape = {2}, .data = v};
    assert_int_equal(fisher_safetensors_write(path, &reserved, 1, NULL, 0, &err), -1);
    const char *w7[] = {"__metadata__", "reserved", NULL};
    assert_msg_has(&err, w7);

    fisher_st_meta dm[] = {{"k", "1"}, {"k", "2"}};
    assert_int_equal(fisher_safetensors_write(path, dup, 1, dm, 2, &err), -1);
    const char *w8[] = {"duplicate metadata key k", NULL};
    assert_msg_has(&err, w8);

    fisher_st_tensor badutf = {.name = "w\xff", .dtype = FISHER_DTYPE_F32, .ndim = 1,
                               .shape = {2}, .data = v};
    assert_int_equal(fisher_safetensors_write(path, &badutf, 1, NULL, 0, &err), -1);
    const char *w9[] = {"UTF-8", NULL};
    assert_msg_has(&err, w9);

    /* Validation failures create nothing. */
    assert_int_equal(count_entries(dir), 0);

    /* rename fails (target is a directory): the temp file is removed. */
    assert_int_equal(mkdir(path, 0700), 0);
    assert_int_equal(fisher_safetensors_write(path, dup, 1, NULL, 0, &err), -1);
    const char *w10[] = {"out.safetensors", "rename", NULL};
    assert_msg_has(&err, w10);
    assert_int_equal(count_entries(dir), 1); /* just the directory itself */
    assert_int_equal(rmdir(path), 0);

    /* Parent directory missing. */
    char nodir[320];
    snprintf(nodir, sizeof nodir, "%s/missing/out.safetensors", dir);
    assert_int_equal(fisher_safetensors_write(nodir, dup, 1, NULL, 0, &err), -1);
    const char *w11[] = {"missing/out.safetensors", "cannot create", NULL};
    assert_msg_has(&err, w11);
    assert_int_equal(fisher_safetensors_write(nodir, dup, 1, NULL, 0, NULL), -1);

    /* Overwriting an existing file replaces it whole. */
    assert_int_equal(fisher_safetensors_write(path, dup, 1, NULL, 0, &err), 0);
    int64_t i = 5;
    fisher_st_tensor it = {.name = "i", .dtype = FISHER_DTYPE_I64, .ndim = 0, .data = &i};
    assert_int_equal(fisher_safetensors_write(path, &it, 1, NULL, 0, &err), 0);
    fisher_safetensors *st = fisher_safetensors_open(path, &err);
    assert_non_null(st);
    assert_int_equal(fisher_safetensors_count(st), 1);
    assert_string_equal(fisher_safetensors_name(st, 0), "i");
    fisher_safetensors_close(st);
    assert_int_equal(count_entries(dir), 1);
    unlink(path);
    rmdir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_write_layout),
        cmocka_unit_test(test_many_tensors),
        cmocka_unit_test(test_f16_known),
        cmocka_unit_test(test_f16_exhaustive),
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_half_round_trip),
        cmocka_unit_test(test_unaligned),
        cmocka_unit_test(test_shape_mismatch),
        cmocka_unit_test(test_i64_as_float),
        cmocka_unit_test(test_f64),
        cmocka_unit_test(test_bad_framing),
        cmocka_unit_test(test_bad_json),
        cmocka_unit_test(test_bad_entry),
        cmocka_unit_test(test_bad_sizes),
        cmocka_unit_test(test_bad_metadata),
        cmocka_unit_test(test_open_errors),
        cmocka_unit_test(test_truncation),
        cmocka_unit_test(test_byte_flips),
        cmocka_unit_test(test_write_errors),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
