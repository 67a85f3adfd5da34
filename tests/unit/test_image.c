/*
 * test_image.c — unit tests for lib/image.c.
 *
 * Decoding: PNGs of every colour type the decoder must normalise (palette
 * with tRNS, grey + alpha, RGBA, 1-bit grey, interlaced) are written here
 * with libpng, JPEGs with libjpeg's compressor, and decoded against known
 * pixels (JPEG approximately). Rejection: 16-bit PNG, CMYK JPEG, absurd
 * sizes, garbage, every truncation of a PNG and a JPEG, and a sweep of byte
 * flips — each must fail cleanly with a message, or (flips) succeed; never
 * crash, never leak (run under ASan+UBSan: the decoders get a buffer of
 * exactly the given length). Resizes: bilinear + normalisation and nearest
 * + threshold against numbers worked out by hand in the comments.
 *
 * Files go in a mkdtemp directory under /tmp, removed by the group teardown.
 */
#include "testutil.h"
#include "png_memory.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jpeglib.h>
#include <png.h>

#include "image.h"

static char tmpdir[64];

/* ----------------------------------------------------------------------------
 * helpers */


static int count_entries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) n++;
    closedir(d);
    return n;
}

static int group_setup(void **state) {
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/fisher_img_XXXXXX");
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

typedef struct {
    int width, height, color, depth, interlace;
    const unsigned char *rows; /* packed rows as PNG stores them (16-bit big-endian) */
    const png_color *palette;
    int n_palette;
    const unsigned char *trns; /* palette alpha, or NULL */
    int n_trns;
} png_spec;

static unsigned char *make_png(const png_spec *s, size_t *len) {
    membuf m = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png))) fail_msg("test PNG writer failed");
    png_set_write_fn(png, &m, mem_write, mem_flush);
    png_set_IHDR(png, info, (png_uint_32)s->width, (png_uint_32)s->height, s->depth, s->color,
                 s->interlace, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (s->palette) png_set_PLTE(png, info, s->palette, s->n_palette);
    if (s->trns) png_set_tRNS(png, info, s->trns, s->n_trns, NULL);
    png_write_info(png, info);
    int channels = s->color == PNG_COLOR_TYPE_RGB         ? 3
                   : s->color == PNG_COLOR_TYPE_RGB_ALPHA  ? 4
                   : s->color == PNG_COLOR_TYPE_GRAY_ALPHA ? 2
                                                           : 1;
    size_t stride = ((size_t)s->width * channels * s->depth + 7) / 8;
    png_bytep *rows = malloc((size_t)s->height * sizeof *rows);
    for (int y = 0; y < s->height; y++) rows[y] = (png_bytep)(s->rows + (size_t)y * stride);
    png_write_image(png, rows);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    free(rows);
    *len = m.len;
    return m.buf;
}

/* A JPEG written by libjpeg into memory: components 1 (grey), 3 (RGB) or
 * 4 (CMYK). */
static unsigned char *make_jpeg(const unsigned char *pixels, int width, int height, int components,
                                int quality, size_t *len) {
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr jerr;
    unsigned char *out = NULL;
    unsigned long outlen = 0;
    c.err = jpeg_std_error(&jerr);
    jpeg_create_compress(&c);
    jpeg_mem_dest(&c, &out, &outlen);
    c.image_width = (JDIMENSION)width, c.image_height = (JDIMENSION)height;
    c.input_components = components;
    c.in_color_space = components == 1 ? JCS_GRAYSCALE : components == 3 ? JCS_RGB : JCS_CMYK;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, quality, TRUE);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)(pixels + (size_t)c.next_scanline * width * components);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    *len = outlen;
    return out;
}

static void spit(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

/* Decodes and fails the test on error. */
static fisher_image decode_ok(const void *data, size_t len, int channels) {
    fisher_error err = {{0}};
    fisher_image img = {0};
    if (fisher_image_decode(data, len, "test", channels, &img, &err) != 0)
        fail_msg("decode failed: %s", err.msg);
    return img;
}

/* Decodes expecting failure; img must stay untouched; returns the message. */
static const char *decode_fails(const void *data, size_t len, int channels) {
    static fisher_error err;
    fisher_image img = {.width = -7, .height = -7, .channels = -7, .pixels = NULL};
    err.msg[0] = '\0';
    if (fisher_image_decode(data, len, "bad.img", channels, &img, &err) == 0)
        fail_msg("decode of %zu bytes succeeded (%dx%d)", len, img.width, img.height);
    assert_int_equal(img.width, -7);
    assert_null(img.pixels);
    assert_non_null(strstr(err.msg, "bad.img"));
    return err.msg;
}

static uint8_t bt601(int r, int g, int b) { return (uint8_t)((299 * r + 587 * g + 114 * b + 500) / 1000); }

/* ----------------------------------------------------------------------------
 * PNG round trips */

static void test_png_round_trip(void **state) {
    (void)state;
    char path[256];
    fisher_error err = {{0}};
    for (int channels = 1; channels <= 3; channels += 2) {
        int w = 13, h = 7;
        fisher_image img = {w, h, channels, malloc((size_t)w * h * channels)};
        for (int i = 0; i < w * h * channels; i++) img.pixels[i] = (uint8_t)(i * 37 + 11);
        tmp_path(path, sizeof path, channels == 1 ? "grey.png" : "rgb.png");
        assert_int_equal(fisher_image_save_png(path, &img, &err), 0);
        fisher_image back = {0};
        if (fisher_image_load(path, channels, &back, &err)) fail_msg("%s", err.msg);
        assert_int_equal(back.width, w);
        assert_int_equal(back.height, h);
        assert_int_equal(back.channels, channels);
        assert_memory_equal(back.pixels, img.pixels, (size_t)w * h * channels);
        fisher_image_free(&back);

        /* the other channel count: grey replicated, RGB to BT.601 grey */
        int other = 4 - channels;
        if (fisher_image_load(path, other, &back, &err)) fail_msg("%s", err.msg);
        assert_int_equal(back.channels, other);
        for (int p = 0; p < w * h; p++) {
            if (channels == 1) {
                for (int c = 0; c < 3; c++) assert_int_equal(back.pixels[3 * p + c], img.pixels[p]);
            } else {
                const uint8_t *q = img.pixels + 3 * p;
                assert_int_equal(back.pixels[p], bt601(q[0], q[1], q[2]));
            }
        }
        fisher_image_free(&back);
        fisher_image_free(&img);
    }
    /* renamed into place: no temporary left behind */
    assert_int_equal(count_entries(tmpdir), 2);
}

static void test_png_save_errors(void **state) {
    (void)state;
    fisher_error err = {{0}};
    uint8_t px[4] = {0};
    fisher_image img = {2, 2, 1, px};
    char path[256];
    snprintf(path, sizeof path, "%s/no/such/dir/x.png", tmpdir);
    assert_int_equal(fisher_image_save_png(path, &img, &err), -1);
    assert_non_null(strstr(err.msg, path));
    assert_non_null(strstr(err.msg, "No such file"));
    fisher_image four = {1, 1, 4, px};
    assert_int_equal(fisher_image_save_png(tmp_path(path, sizeof path, "x.png"), &four, &err), -1);
    assert_non_null(strstr(err.msg, "4-channel"));
    fisher_image empty = {0, 2, 1, px};
    assert_int_equal(fisher_image_save_png(path, &empty, &err), -1);
    assert_non_null(strstr(err.msg, "0x2"));
    assert_int_equal(access(path, F_OK), -1);
}

/* ----------------------------------------------------------------------------
 * PNG colour types */

static void test_png_palette_with_trns(void **state) {
    (void)state;
    png_color pal[3] = {{255, 0, 0}, {0, 255, 0}, {10, 20, 30}};
    unsigned char alpha[3] = {0, 128, 255}; /* tRNS: dropped with the rest of alpha */
    unsigned char idx[2 * 3] = {0, 1, 2, 2, 1, 0};
    png_spec s = {3, 2, PNG_COLOR_TYPE_PALETTE, 8, PNG_INTERLACE_NONE, idx, pal, 3, alpha, 3};
    size_t len;
    unsigned char *png = make_png(&s, &len);
    fisher_image img = decode_ok(png, len, 3);
    assert_int_equal(img.channels, 3);
    for (int p = 0; p < 6; p++) {
        const png_color *want = &pal[idx[p]];
        assert_int_equal(img.pixels[3 * p], want->red);
        assert_int_equal(img.pixels[3 * p + 1], want->green);
        assert_int_equal(img.pixels[3 * p + 2], want->blue);
    }
    fisher_image_free(&img);
    img = decode_ok(png, len, 1);
    assert_int_equal(img.pixels[0], bt601(255, 0, 0));
    assert_int_equal(img.pixels[2], bt601(10, 20, 30));
    fisher_image_free(&img);
    free(png);

    /* 2-bit palette indices, width not a multiple of 4 */
    unsigned char packed[2] = {(0 << 6) | (1 << 4) | (2 << 2) | 1, (0 << 6) | (2 << 4)}; /* 0 1 2 1 | 0 2 */
    png_spec s2 = {6, 1, PNG_COLOR_TYPE_PALETTE, 2, PNG_INTERLACE_NONE, packed, pal, 3, NULL, 0};
    png = make_png(&s2, &len);
    img = decode_ok(png, len, 3);
    int want_idx[6] = {0, 1, 2, 1, 0, 2};
    for (int p = 0; p < 6; p++) assert_int_equal(img.pixels[3 * p + 1], pal[want_idx[p]].green);
    fisher_image_free(&img);
    free(png);
}

static void test_png_grey_alpha(void **state) {
    (void)state;
    unsigned char ga[2 * 4] = {0, 255, 100, 0, 200, 128, 255, 7}; /* (grey, alpha) × 4 */
    png_spec s = {2, 2, PNG_COLOR_TYPE_GRAY_ALPHA, 8, PNG_INTERLACE_NONE, ga, NULL, 0, NULL, 0};
    size_t len;
    unsigned char *png = make_png(&s, &len);
    fisher_image img = decode_ok(png, len, 1);
    assert_int_equal(img.channels, 1);
    uint8_t want[4] = {0, 100, 200, 255};
    assert_memory_equal(img.pixels, want, 4);
    fisher_image_free(&img);
    img = decode_ok(png, len, 3);
    for (int p = 0; p < 4; p++)
        for (int c = 0; c < 3; c++) assert_int_equal(img.pixels[3 * p + c], want[p]);
    fisher_image_free(&img);
    free(png);
}

static void test_png_rgba(void **state) {
    (void)state;
    unsigned char rgba[3 * 4] = {1, 2, 3, 0, 40, 50, 60, 128, 250, 251, 252, 255};
    png_spec s = {3, 1, PNG_COLOR_TYPE_RGB_ALPHA, 8, PNG_INTERLACE_NONE, rgba, NULL, 0, NULL, 0};
    size_t len;
    unsigned char *png = make_png(&s, &len);
    fisher_image img = decode_ok(png, len, 3);
    uint8_t want[9] = {1, 2, 3, 40, 50, 60, 250, 251, 252};
    assert_int_equal(img.width, 3);
    assert_int_equal(img.height, 1);
    assert_memory_equal(img.pixels, want, 9);
    fisher_image_free(&img);
    img = decode_ok(png, len, 1);
    assert_int_equal(img.pixels[1], bt601(40, 50, 60));
    fisher_image_free(&img);
    free(png);
}

static void test_png_1bit_grey(void **state) {
    (void)state;
    /* 10 × 2, 1 bit: row 0 = 1010110011, row 1 = 0000000001 (2 bytes a row) */
    unsigned char bits[4] = {0xAC, 0xC0, 0x00, 0x40};
    png_spec s = {10, 2, PNG_COLOR_TYPE_GRAY, 1, PNG_INTERLACE_NONE, bits, NULL, 0, NULL, 0};
    size_t len;
    unsigned char *png = make_png(&s, &len);
    fisher_image img = decode_ok(png, len, 1);
    const char *want = "10101100110000000001";
    for (int p = 0; p < 20; p++) assert_int_equal(img.pixels[p], want[p] == '1' ? 255 : 0);
    fisher_image_free(&img);
    free(png);
}

static void test_png_interlaced(void **state) {
    (void)state;
    unsigned char px[9 * 11 * 3];
    for (size_t i = 0; i < sizeof px; i++) px[i] = (unsigned char)(i * 7 + 3);
    png_spec s = {9, 11, PNG_COLOR_TYPE_RGB, 8, PNG_INTERLACE_ADAM7, px, NULL, 0, NULL, 0};
    size_t len;
    unsigned char *png = make_png(&s, &len);
    fisher_image img = decode_ok(png, len, 3);
    assert_memory_equal(img.pixels, px, sizeof px);
    fisher_image_free(&img);
    free(png);
}

static void test_png_16bit_rejected(void **state) {
    (void)state;
    unsigned char px[2 * 2 * 2] = {0, 1, 255, 255, 128, 0, 7, 7};
    png_spec s = {2, 2, PNG_COLOR_TYPE_GRAY, 16, PNG_INTERLACE_NONE, px, NULL, 0, NULL, 0};
    size_t len;
    unsigned char *png = make_png(&s, &len);
    const char *msg = decode_fails(png, len, 1);
    assert_non_null(strstr(msg, "16-bit PNG; 8-bit expected"));
    free(png);
}

static void test_too_large_rejected(void **state) {
    (void)state;
    int w = FISHER_IMAGE_MAX_SIDE + 1;
    unsigned char *px = calloc((size_t)w, 3);
    png_spec s = {w, 1, PNG_COLOR_TYPE_GRAY, 8, PNG_INTERLACE_NONE, px, NULL, 0, NULL, 0};
    size_t len;
    unsigned char *png = make_png(&s, &len);
    const char *msg = decode_fails(png, len, 1);
    assert_non_null(strstr(msg, "16385x1"));
    assert_non_null(strstr(msg, "at most 16384"));
    free(png);
    unsigned char *jpg = make_jpeg(px, w, 1, 3, 90, &len);
    msg = decode_fails(jpg, len, 3);
    assert_non_null(strstr(msg, "16385x1"));
    free(jpg);

    /* a small PNG whose IHDR (CRC fixed up) claims 16000 × 16000: refused as
     * truncated before 768 MB are allocated for its rows */
    png_spec small = {4, 4, PNG_COLOR_TYPE_RGB, 8, PNG_INTERLACE_NONE, px, NULL, 0, NULL, 0};
    png = make_png(&small, &len);
    const unsigned char big[8] = {0, 0, 0x3e, 0x80, 0, 0, 0x3e, 0x80}; /* 16000, 16000 big-endian */
    memcpy(png + 16, big, 8);
    uLong crc = crc32(0, png + 12, 17); /* "IHDR" + 13 bytes of data */
    for (int i = 0; i < 4; i++) png[29 + i] = (unsigned char)(crc >> (24 - 8 * i));
    msg = decode_fails(png, len, 3);
    assert_non_null(strstr(msg, "truncated"));
    assert_non_null(strstr(msg, "16000x16000"));
    free(png);
    free(px);
}

/* ----------------------------------------------------------------------------
 * JPEG */

/* 16 × 16 in four flat 8 × 8 quadrants, so compression error stays small. */
static const uint8_t quad_rgb[4][3] = {{200, 30, 30}, {30, 200, 30}, {30, 30, 200}, {128, 128, 128}};

static void fill_quadrants(uint8_t *px) {
    for (int y = 0; y < 16; y++)
        for (int x = 0; x < 16; x++)
            memcpy(px + (y * 16 + x) * 3, quad_rgb[(y / 8) * 2 + x / 8], 3);
}

static void test_jpeg_decode(void **state) {
    (void)state;
    uint8_t px[16 * 16 * 3];
    fill_quadrants(px);
    size_t len;
    unsigned char *jpg = make_jpeg(px, 16, 16, 3, 95, &len);
    fisher_image img = decode_ok(jpg, len, 3);
    assert_int_equal(img.width, 16);
    assert_int_equal(img.height, 16);
    assert_int_equal(img.channels, 3);
    int worst = 0;
    for (int q = 0; q < 4; q++) {
        int y = (q / 2) * 8 + 4, x = (q % 2) * 8 + 4; /* quadrant centres */
        for (int c = 0; c < 3; c++) {
            int d = abs((int)img.pixels[(y * 16 + x) * 3 + c] - quad_rgb[q][c]);
            if (d > worst) worst = d;
        }
    }
    printf("  JPEG q95 RGB: worst quadrant-centre error %d\n", worst);
    assert_true(worst <= 8);
    fisher_image_free(&img);
    img = decode_ok(jpg, len, 1);
    int y = 4, x = 4;
    assert_true(abs((int)img.pixels[y * 16 + x] - bt601(200, 30, 30)) <= 8);
    fisher_image_free(&img);
    free(jpg);

    /* grey JPEG, decoded grey and replicated to RGB */
    uint8_t grey[16 * 16];
    for (int i = 0; i < 256; i++) grey[i] = (uint8_t)((i / 16 < 8) ? 40 : 220);
    jpg = make_jpeg(grey, 16, 16, 1, 95, &len);
    img = decode_ok(jpg, len, 1);
    assert_true(abs((int)img.pixels[4 * 16 + 4] - 40) <= 4);
    assert_true(abs((int)img.pixels[12 * 16 + 4] - 220) <= 4);
    fisher_image_free(&img);
    img = decode_ok(jpg, len, 3);
    for (int c = 0; c < 3; c++) assert_true(abs((int)img.pixels[(12 * 16 + 4) * 3 + c] - 220) <= 4);
    assert_int_equal(img.pixels[0], img.pixels[1]);
    fisher_image_free(&img);
    free(jpg);
}

static void test_jpeg_cmyk_rejected(void **state) {
    (void)state;
    uint8_t px[8 * 8 * 4];
    memset(px, 100, sizeof px);
    size_t len;
    unsigned char *jpg = make_jpeg(px, 8, 8, 4, 90, &len);
    const char *msg = decode_fails(jpg, len, 3);
    assert_non_null(strstr(msg, "CMYK JPEG"));
    free(jpg);
}

/* ----------------------------------------------------------------------------
 * Hostile input */

/* Every proper prefix must fail with a message (and the full file decode). */
static void check_every_truncation(const unsigned char *file, size_t len, const char *what) {
    fisher_image img = decode_ok(file, len, 3);
    fisher_image_free(&img);
    int truncated_named = 0;
    for (size_t n = 0; n < len; n++) {
        unsigned char *prefix = malloc(n ? n : 1); /* exact length: ASan sees any over-read */
        memcpy(prefix, file, n);
        const char *msg = decode_fails(prefix, n, 3);
        assert_true(strlen(msg) > 0);
        if (strstr(msg, "truncated") || strstr(msg, "Premature end")) truncated_named++;
        free(prefix);
    }
    printf("  %s: %zu truncations all rejected (%d say truncated/premature end)\n", what, len,
           truncated_named);
}

static void test_truncated_png(void **state) {
    (void)state;
    unsigned char px[24 * 20 * 3];
    for (size_t i = 0; i < sizeof px; i++) px[i] = (unsigned char)((i * 131) ^ (i >> 3));
    png_spec s = {24, 20, PNG_COLOR_TYPE_RGB, 8, PNG_INTERLACE_NONE, px, NULL, 0, NULL, 0};
    size_t len;
    unsigned char *png = make_png(&s, &len);
    check_every_truncation(png, len, "PNG");
    /* a typical cut says what is wrong */
    assert_non_null(strstr(decode_fails(png, len / 2, 3), "truncated"));

    /* also through a file */
    char path[256];
    fisher_error err = {{0}};
    fisher_image img = {0};
    tmp_path(path, sizeof path, "cut.png");
    spit(path, png, len - 5);
    assert_int_equal(fisher_image_load(path, 3, &img, &err), -1);
    assert_non_null(strstr(err.msg, path));
    assert_non_null(strstr(err.msg, "truncated"));
    unlink(path);
    free(png);
}

static void test_truncated_jpeg(void **state) {
    (void)state;
    uint8_t px[16 * 16 * 3];
    fill_quadrants(px);
    size_t len;
    unsigned char *jpg = make_jpeg(px, 16, 16, 3, 90, &len);
    check_every_truncation(jpg, len, "JPEG");
    assert_non_null(strstr(decode_fails(jpg, len - 2, 3), "Premature end"));
    free(jpg);
}

static void test_garbage(void **state) {
    (void)state;
    unsigned char junk[512];
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (unsigned char)(i * 193 + 71);
    assert_non_null(strstr(decode_fails(junk, sizeof junk, 3), "not a PNG or JPEG"));
    assert_non_null(strstr(decode_fails("GIF89a......", 12, 3), "47 49 46 38"));
    assert_non_null(strstr(decode_fails(junk, 0, 3), "empty"));
    /* a right signature followed by junk */
    memcpy(junk, "\x89PNG\r\n\x1a\n", 8);
    assert_non_null(strstr(decode_fails(junk, sizeof junk, 3), "bad PNG"));
    memcpy(junk, "\xff\xd8\xff", 3);
    assert_non_null(strstr(decode_fails(junk, sizeof junk, 3), "bad JPEG"));
    /* channel count other than 1 or 3 */
    assert_non_null(strstr(decode_fails(junk, sizeof junk, 4), "4 channels"));

    fisher_error err = {{0}};
    fisher_image img = {0};
    char path[256];
    tmp_path(path, sizeof path, "missing.png");
    assert_int_equal(fisher_image_load(path, 3, &img, &err), -1);
    assert_non_null(strstr(err.msg, path));
    assert_non_null(strstr(err.msg, "No such file"));
    assert_int_equal(fisher_image_load(tmpdir, 3, &img, &err), -1);
    assert_non_null(strstr(err.msg, "not a regular file"));
}

/* Recomputes every chunk CRC of a PNG (as far as its lengths make sense), so
 * a flipped byte reaches libpng's parser and inflater instead of stopping at
 * the CRC check. */
static void fix_png_crcs(unsigned char *b, size_t len) {
    size_t off = 8;
    while (off + 12 <= len) {
        size_t n = ((size_t)b[off] << 24) | ((size_t)b[off + 1] << 16) | ((size_t)b[off + 2] << 8) | b[off + 3];
        if (n > len - off - 12) return;
        uLong crc = crc32(0, b + off + 4, (uInt)(n + 4));
        for (int i = 0; i < 4; i++) b[off + 8 + n + i] = (unsigned char)(crc >> (24 - 8 * i));
        off += n + 12;
    }
}

/* Each byte of a small PNG and JPEG xor-ed in turn (PNG: with and without
 * fixing up the CRCs): decode succeeds or fails with a message, never
 * crashes or leaks. */
static void test_byte_flips(void **state) {
    (void)state;
    unsigned char px[12 * 10 * 3];
    for (size_t i = 0; i < sizeof px; i++) px[i] = (unsigned char)(i * 29);
    png_spec s = {12, 10, PNG_COLOR_TYPE_RGB, 8, PNG_INTERLACE_NONE, px, NULL, 0, NULL, 0};
    size_t lens[3];
    unsigned char *png = make_png(&s, &lens[0]);
    unsigned char *files[3] = {png, make_jpeg(px, 12, 10, 3, 80, &lens[1]), png};
    lens[2] = lens[0];
    const char *names[3] = {"PNG", "JPEG", "PNG, CRCs fixed"};
    for (int f = 0; f < 3; f++) {
        int ok = 0, bad = 0;
        for (size_t i = 0; i < lens[f]; i++) {
            unsigned char *b = malloc(lens[f]);
            memcpy(b, files[f], lens[f]);
            b[i] ^= (unsigned char)(0x5a + i);
            if (f == 2) fix_png_crcs(b, lens[f]);
            fisher_error err = {{0}};
            fisher_image img = {0};
            if (fisher_image_decode(b, lens[f], "flip", 3, &img, &err) == 0) {
                assert_true(img.width >= 1 && img.height >= 1 && img.channels == 3);
                fisher_image_free(&img);
                ok++;
            } else {
                assert_true(strlen(err.msg) > 0);
                bad++;
            }
            free(b);
        }
        printf("  %s byte flips: %d decoded, %d rejected\n", names[f], ok, bad);
    }
    free(png);
    free(files[1]);
}

/* ----------------------------------------------------------------------------
 * Resizes */

static void test_to_input_bilinear(void **state) {
    (void)state;
    fisher_error err = {{0}};
    /* 2 × 2 grey [[0, 255], [255, 0]] → 4 × 4. align_corners=False taps for
     * 2 → 4: src = (d + 0.5)/2 − 0.5 clamped = 0, 0.25, 0.75, 1(→ i0 = 1),
     * so the weight of the second input pixel is w = 0, .25, .75, 1, and
     * f(y, x) = (1 − w_y) w_x + w_y (1 − w_x). Normalised with mean 0.5,
     * std 0.25: 4f − 2. */
    uint8_t px[4] = {0, 255, 255, 0};
    fisher_image img = {2, 2, 1, px};
    float mean[1] = {0.5f}, std[1] = {0.25f}, out[16];
    const float want[16] = {-2, -1, 1, 2, -1, -0.5f, 0.5f, 1, 1, 0.5f, -0.5f, -1, 2, 1, -1, -2};
    assert_int_equal(fisher_image_to_input(out, &img, 4, 4, mean, std, &err), 0);
    assert_close("bilinear 2x2 -> 4x4", out, want, 16, 0, 1e-5);

    /* 4 × 4 → 2 × 2: src = (d + 0.5)·2 − 0.5 = 0.5, 2.5: each output is the
     * mean of a 2 × 2 block. Pixels 10·(4y + x): blocks (0,10,40,50) → 25,
     * (20,30,60,70) → 45, (80,90,120,130) → 105, (100,110,140,150) → 125. */
    uint8_t big[16];
    for (int i = 0; i < 16; i++) big[i] = (uint8_t)(10 * i);
    fisher_image bimg = {4, 4, 1, big};
    float m0[1] = {0}, s1[1] = {1}, small[4];
    const float want_small[4] = {25 / 255.f, 45 / 255.f, 105 / 255.f, 125 / 255.f};
    assert_int_equal(fisher_image_to_input(small, &bimg, 2, 2, m0, s1, &err), 0);
    assert_close("bilinear 4x4 -> 2x2", small, want_small, 4, 0, 1e-6);

    /* same size, RGB, ImageNet statistics: (x/255 − mean_c)/std_c per channel */
    uint8_t rgb[3] = {10, 128, 250};
    fisher_image one = {1, 1, 3, rgb};
    const float mean3[3] = {0.485f, 0.456f, 0.406f}, std3[3] = {0.229f, 0.224f, 0.225f};
    float o3[3], w3[3];
    for (int c = 0; c < 3; c++) w3[c] = (float)((rgb[c] / 255.0 - mean3[c]) / std3[c]);
    assert_int_equal(fisher_image_to_input(o3, &one, 1, 1, mean3, std3, &err), 0);
    assert_close("normalise RGB", o3, w3, 3, 1e-6, 1e-6);

    /* non-square, RGB, channels kept apart: a 1 × 2 → 1 × 4 per channel */
    uint8_t row[6] = {0, 255, 0, 255, 0, 0};
    fisher_image r = {2, 1, 3, row};
    float mean0[3] = {0, 0, 0}, std1[3] = {1, 1, 1}, o[12];
    const float want_row[12] = {0, 1, 0, .25f, .75f, 0, .75f, .25f, 0, 1, 0, 0};
    assert_int_equal(fisher_image_to_input(o, &r, 1, 4, mean0, std1, &err), 0);
    assert_close("bilinear RGB 1x2 -> 1x4", o, want_row, 12, 0, 1e-6);
}

static void test_mask_nearest(void **state) {
    (void)state;
    /* threshold: > 127 is foreground */
    uint8_t t[4] = {0, 127, 128, 255};
    fisher_image m = {4, 1, 1, t};
    float out[36];
    fisher_mask_to_target(out, &m, 1, 4);
    const float want_t[4] = {0, 0, 1, 1};
    assert_memory_equal(out, want_t, sizeof want_t);

    /* 3 × 3 → 6 × 6: src = ⌊d·3/6⌋ = ⌊d/2⌋, every pixel doubled */
    uint8_t g[9] = {255, 0, 0, 0, 255, 0, 0, 0, 200};
    fisher_image m3 = {3, 3, 1, g};
    fisher_mask_to_target(out, &m3, 6, 6);
    for (int y = 0; y < 6; y++)
        for (int x = 0; x < 6; x++)
            assert_true(out[y * 6 + x] == (g[(y / 2) * 3 + x / 2] > 127 ? 1.0f : 0.0f));

    /* 3 → 2 (width) and 3 → 1 (height): src x = ⌊d·1.5⌋ = 0, 1; src y = 0 */
    fisher_mask_to_target(out, &m3, 1, 2);
    const float want_d[2] = {1, 0};
    assert_memory_equal(out, want_d, sizeof want_d);

    /* 4 → 2 picks 0 and 2 (PyTorch's 'nearest', not a block vote) */
    uint8_t four[4] = {0, 255, 255, 0};
    fisher_image m4 = {4, 1, 1, four};
    fisher_mask_to_target(out, &m4, 1, 2);
    const float want_4[2] = {0, 1};
    assert_memory_equal(out, want_4, sizeof want_4);

    /* an RGB mask is read through its BT.601 grey: (255, 0, 0) → 76 → 0 */
    uint8_t rgbm[6] = {255, 0, 0, 255, 255, 255};
    fisher_image mr = {2, 1, 3, rgbm};
    fisher_mask_to_target(out, &mr, 1, 2);
    const float want_r[2] = {0, 1};
    assert_memory_equal(out, want_r, sizeof want_r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_png_round_trip),
        cmocka_unit_test(test_png_save_errors),
        cmocka_unit_test(test_png_palette_with_trns),
        cmocka_unit_test(test_png_grey_alpha),
        cmocka_unit_test(test_png_rgba),
        cmocka_unit_test(test_png_1bit_grey),
        cmocka_unit_test(test_png_interlaced),
        cmocka_unit_test(test_png_16bit_rejected),
        cmocka_unit_test(test_too_large_rejected),
        cmocka_unit_test(test_jpeg_decode),
        cmocka_unit_test(test_jpeg_cmyk_rejected),
        cmocka_unit_test(test_truncated_png),
        cmocka_unit_test(test_truncated_jpeg),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_byte_flips),
        cmocka_unit_test(test_to_input_bilinear),
        cmocka_unit_test(test_mask_nearest),
    };
    return cmocka_run_group_tests_name("image", tests, group_setup, group_teardown);
}
