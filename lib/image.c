/*
 * image.c — PNG (libpng) and JPEG (libjpeg-turbo) in memory, PNG out, and
 * the resizes that turn a picture into a model input. See image.h.
 *
 * Both decoders report failure by longjmp. Each is contained in one
 * function that owns the setjmp, and everything that must survive the jump
 * (the output buffer, the error text) lives in a context struct reached
 * through a pointer, never in a local assigned after setjmp. After a jump
 * the library objects are destroyed and the buffer freed; nothing partial
 * escapes.
 *
 * Decisions, each for a reason:
 *   - A file is whatever its first bytes say (PNG signature, JPEG SOI),
 *     whatever its name.
 *   - Every libjpeg warning is an error. libjpeg-turbo answers a truncated
 *     or corrupt stream with a warning ("Premature end of JPEG file",
 *     "Corrupt JPEG data: ...") and grey-filled rows; a training sample
 *     must be the picture or nothing.
 *   - libpng's warnings are not errors (they are about ancillary chunks:
 *     colour profiles, text), but a PNG must be complete to the IEND chunk:
 *     running out of bytes anywhere, including after the image data, is an
 *     error.
 *   - CMYK/YCCK JPEGs are refused with a message saying how to convert them:
 *     libjpeg does not turn them into RGB, and Adobe's inverted-CMYK
 *     convention makes a hand-written conversion a guess.
 *   - Colour conversions are ours, after decoding, and the same for both
 *     formats: grey → RGB replicates, RGB → grey is BT.601 rounded to
 *     nearest, (299 R + 587 G + 114 B + 500) / 1000. (libpng's own
 *     rgb_to_gray may linearise through the file's gamma.)
 */
#include "image.h"

#include <limits.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <png.h>

#include "fileio.h"
#include "layers.h"

static const char *name_of(const char *what) { return what ? what : "image"; }

/* Width and height within bounds, and h·w·c bytes addressable. */
static int check_dims(const char *what, const char *fmt, unsigned long w, unsigned long h, int c,
                      fisher_error *err) {
    if (w == 0 || h == 0)
        return fisher_errorf(err, "%s: %s with an empty image (%lux%lu)", what, fmt, w, h);
    if (w > FISHER_IMAGE_MAX_SIDE || h > FISHER_IMAGE_MAX_SIDE)
        return fisher_errorf(err, "%s: %s is %lux%lu; at most %d pixels per side are accepted",
                             what, fmt, w, h, FISHER_IMAGE_MAX_SIDE);
    if ((size_t)w > SIZE_MAX / (size_t)h / (size_t)c)
        return fisher_errorf(err, "%s: %s of %lux%lu is too large for memory", what, fmt, w, h);
    return 0;
}

/* Converts n pixels from `from` channels to `to` channels (1 or 3 each).
 * Returns a new buffer, or `src` itself when nothing changes, or NULL when
 * out of memory. */
static uint8_t *convert_channels(uint8_t *src, size_t n, int from, int to) {
    if (from == to) return src;
    uint8_t *dst = malloc(n * (size_t)to);
    if (!dst) return NULL;
    if (from == 1) {
        for (size_t i = 0; i < n; i++) dst[3 * i] = dst[3 * i + 1] = dst[3 * i + 2] = src[i];
    } else {
        for (size_t i = 0; i < n; i++) {
            unsigned r = src[3 * i], g = src[3 * i + 1], b = src[3 * i + 2];
            dst[i] = (uint8_t)((299 * r + 587 * g + 114 * b + 500) / 1000);
        }
    }
    return dst;
}

/* ---------------------------------------------------------------------- PNG */

typedef struct {
    const char *what;
    const unsigned char *data;
    size_t len, pos;
    uint8_t *pixels;       /* output; freed on failure */
    png_bytep *rows;       /* row pointers into pixels */
    char msg[256];         /* libpng's error text, or ours */
} png_ctx;

static void png_on_error(png_structp png, png_const_charp msg) {
    png_ctx *ctx = png_get_error_ptr(png);
    snprintf(ctx->msg, sizeof ctx->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) {
    (void)png, (void)msg; /* ancillary-chunk trouble; see the top of the file */
}

static void png_read_mem(png_structp png, png_bytep out, png_size_t n) {
    png_ctx *ctx = png_get_io_ptr(png);
    if (n > ctx->len - ctx->pos) png_error(png, "file is truncated (ends before the PNG does)");
    memcpy(out, ctx->data + ctx->pos, n);
    ctx->pos += n;
}

/* Everything between setjmp and the end of decoding. Returns the native
 * channel count (1 or 3) with ctx->pixels set, or -1 with err set. */
static int png_decode(png_ctx *ctx, int *width, int *height, fisher_error *err) {
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, ctx, png_on_error, png_on_warning);
    if (!png) return fisher_errorf(err, "%s: out of memory starting the PNG decoder", ctx->what);
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        return fisher_errorf(err, "%s: out of memory starting the PNG decoder", ctx->what);
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, NULL);
        free(ctx->rows), ctx->rows = NULL;
        free(ctx->pixels), ctx->pixels = NULL;
        if (ctx->msg[0] == '\0') snprintf(ctx->msg, sizeof ctx->msg, "unknown libpng failure");
        return fisher_errorf(err, "%s: bad PNG: %s", ctx->what, ctx->msg);
    }
    png_set_read_fn(png, ctx, png_read_mem);
    png_read_info(png, info);

    png_uint_32 w, h;
    int depth, color, interlace;
    png_get_IHDR(png, info, &w, &h, &depth, &color, &interlace, NULL, NULL);
    if (depth == 16) {
        /* Not longjmp: our own messages are complete, not "bad PNG: ...". */
        png_destroy_read_struct(&png, &info, NULL);
        return fisher_errorf(err, "%s: 16-bit PNG; 8-bit expected (save it with 8 bits per sample)",
                             ctx->what);
    }
    if (check_dims(ctx->what, "PNG", w, h, 4, err)) {
        png_destroy_read_struct(&png, &info, NULL);
        return -1;
    }
    /* Deflate expands at most 1032:1, so a file too short to hold the
     * filtered rows is cut short: say so before allocating for them (a
     * 100-byte file must not cost 800 MB). */
    size_t raw = (size_t)h * (png_get_rowbytes(png, info) + 1);
    if (raw / 1032 > ctx->len) {
        png_destroy_read_struct(&png, &info, NULL);
        return fisher_errorf(err, "%s: bad PNG: file is truncated (%zu bytes cannot hold %ux%u pixels)",
                             ctx->what, ctx->len, (unsigned)w, (unsigned)h);
    }
    png_set_expand(png);      /* palette → RGB, 1/2/4-bit grey → 8, tRNS → alpha */
    png_set_strip_alpha(png); /* … and alpha (real or from tRNS) dropped */
    png_set_interlace_handling(png);
    png_read_update_info(png, info);

    int channels = png_get_channels(png, info);
    if ((channels != 1 && channels != 3) || png_get_bit_depth(png, info) != 8 ||
        png_get_rowbytes(png, info) != (size_t)w * (size_t)channels) {
        png_destroy_read_struct(&png, &info, NULL);
        return fisher_errorf(err, "%s: PNG colour type %d at %d bits did not decode to 8-bit grey or RGB",
                             ctx->what, color, depth);
    }
    size_t stride = (size_t)w * (size_t)channels;
    ctx->pixels = malloc(stride * h);
    ctx->rows = malloc(h * sizeof *ctx->rows);
    if (!ctx->pixels || !ctx->rows) {
        snprintf(ctx->msg, sizeof ctx->msg, "out of memory for %ux%u pixels", (unsigned)w, (unsigned)h);
        png_longjmp(png, 1);
    }
    for (png_uint_32 y = 0; y < h; y++) ctx->rows[y] = ctx->pixels + y * stride;
    png_read_image(png, ctx->rows);
    png_read_end(png, NULL); /* to IEND: a file cut after the pixels is still cut */
    png_destroy_read_struct(&png, &info, NULL);
    free(ctx->rows), ctx->rows = NULL;
    *width = (int)w, *height = (int)h;
    return channels;
}

/* --------------------------------------------------------------------- JPEG */

typedef struct {
    struct jpeg_error_mgr pub; /* first: libjpeg hands us this pointer */
    jmp_buf jmp;
    char msg[JMSG_LENGTH_MAX];
} jpeg_err_mgr;

typedef struct {
    const char *what;
    struct jpeg_decompress_struct cinfo;
    jpeg_err_mgr jerr;
    uint8_t *pixels;
} jpeg_ctx;

static void jpeg_on_error(j_common_ptr cinfo) {
    jpeg_err_mgr *e = (jpeg_err_mgr *)cinfo->err;
    e->pub.format_message(cinfo, e->msg);
    longjmp(e->jmp, 1);
}

/* level −1 is a warning (corrupt or truncated data): an error here.
 * Levels ≥ 0 are trace messages: ignored. */
static void jpeg_on_message(j_common_ptr cinfo, int level) {
    if (level < 0) jpeg_on_error(cinfo);
}

static int jpeg_decode(jpeg_ctx *ctx, const unsigned char *data, size_t len, int *width,
                       int *height, fisher_error *err) {
    struct jpeg_decompress_struct *cinfo = &ctx->cinfo;
    cinfo->err = jpeg_std_error(&ctx->jerr.pub);
    ctx->jerr.pub.error_exit = jpeg_on_error;
    ctx->jerr.pub.emit_message = jpeg_on_message;
    ctx->jerr.msg[0] = '\0';
    if (setjmp(ctx->jerr.jmp)) {
        jpeg_destroy_decompress(cinfo);
        free(ctx->pixels), ctx->pixels = NULL;
        return fisher_errorf(err, "%s: bad JPEG: %s", ctx->what, ctx->jerr.msg);
    }
    jpeg_create_decompress(cinfo);
    if (len > ULONG_MAX) {
        snprintf(ctx->jerr.msg, sizeof ctx->jerr.msg, "file too large (%zu bytes)", len);
        longjmp(ctx->jerr.jmp, 1);
    }
    jpeg_mem_src(cinfo, data, (unsigned long)len);
    jpeg_read_header(cinfo, TRUE);

    switch (cinfo->jpeg_color_space) {
    case JCS_GRAYSCALE: cinfo->out_color_space = JCS_GRAYSCALE; break;
    case JCS_YCbCr:
    case JCS_RGB: cinfo->out_color_space = JCS_RGB; break;
    case JCS_CMYK:
    case JCS_YCCK:
        jpeg_destroy_decompress(cinfo);
        return fisher_errorf(err, "%s: CMYK JPEG; grey or RGB expected (convert it, e.g. "
                                  "`convert in.jpg -colorspace sRGB out.jpg`)",
                             ctx->what);
    default:
        jpeg_destroy_decompress(cinfo);
        return fisher_errorf(err, "%s: JPEG of unknown colour space with %d components; grey or "
                                  "RGB expected",
                             ctx->what, cinfo->num_components);
    }
    if (check_dims(ctx->what, "JPEG", cinfo->image_width, cinfo->image_height, 3, err)) {
        jpeg_destroy_decompress(cinfo);
        return -1;
    }
    jpeg_start_decompress(cinfo);
    int channels = cinfo->output_components;
    unsigned w = cinfo->output_width, h = cinfo->output_height;
    if (channels != 1 && channels != 3) {
        snprintf(ctx->jerr.msg, sizeof ctx->jerr.msg, "decoded to %d components, not 1 or 3", channels);
        longjmp(ctx->jerr.jmp, 1);
    }
    size_t stride = (size_t)w * (size_t)channels;
    ctx->pixels = malloc(stride * h);
    if (!ctx->pixels) {
        snprintf(ctx->jerr.msg, sizeof ctx->jerr.msg, "out of memory for %ux%u pixels", w, h);
        longjmp(ctx->jerr.jmp, 1);
    }
    while (cinfo->output_scanline < h) {
        JSAMPROW row = ctx->pixels + (size_t)cinfo->output_scanline * stride;
        if (jpeg_read_scanlines(cinfo, &row, 1) != 1) {
            /* only a suspending data source returns 0; ours never suspends */
            snprintf(ctx->jerr.msg, sizeof ctx->jerr.msg, "decoder stalled at row %u",
                     cinfo->output_scanline);
            longjmp(ctx->jerr.jmp, 1);
        }
    }
    jpeg_finish_decompress(cinfo); /* to EOI: a missing end is a warning, so an error */
    jpeg_destroy_decompress(cinfo);
    *width = (int)w, *height = (int)h;
    return channels;
}

/* ------------------------------------------------------------------ Decode */

int fisher_image_decode(const void *data, size_t len, const char *what, int channels,
                        fisher_image *img, fisher_error *err) {
    static const unsigned char png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    static const unsigned char jpeg_sig[3] = {0xff, 0xd8, 0xff};
    const unsigned char *p = data;
    what = name_of(what);
    if (channels != 1 && channels != 3)
        return fisher_errorf(err, "%s: asked to decode into %d channels; 1 or 3 expected", what, channels);
    if (!p && len) return fisher_errorf(err, "%s: NULL data", what);
    if (len == 0) return fisher_errorf(err, "%s: empty file (0 bytes), not a PNG or JPEG", what);

    int w = 0, h = 0, native;
    uint8_t *pixels;
    if (len >= sizeof png_sig && memcmp(p, png_sig, sizeof png_sig) == 0) {
        png_ctx ctx = {.what = what, .data = p, .len = len};
        native = png_decode(&ctx, &w, &h, err);
        pixels = ctx.pixels;
    } else if (len >= sizeof jpeg_sig && memcmp(p, jpeg_sig, sizeof jpeg_sig) == 0) {
        jpeg_ctx *ctx = calloc(1, sizeof *ctx); /* libjpeg's state is large; keep it off the stack */
        if (!ctx) return fisher_errorf(err, "%s: out of memory starting the JPEG decoder", what);
        ctx->what = what;
        native = jpeg_decode(ctx, p, len, &w, &h, err);
        pixels = ctx->pixels;
        free(ctx);
    } else {
        unsigned char head[4] = {0};
        memcpy(head, p, len < 4 ? len : 4);
        return fisher_errorf(err, "%s: not a PNG or JPEG (starts with bytes %02x %02x %02x %02x)",
                             what, head[0], head[1], head[2], head[3]);
    }
    if (native < 0) return -1;

    uint8_t *out = convert_channels(pixels, (size_t)w * (size_t)h, native, channels);
    if (!out) {
        free(pixels);
        return fisher_errorf(err, "%s: out of memory converting %dx%d pixels", what, w, h);
    }
    if (out != pixels) free(pixels);
    img->width = w, img->height = h, img->channels = channels, img->pixels = out;
    return 0;
}

int fisher_image_load(const char *path, int channels, fisher_image *img, fisher_error *err) {
    size_t len;
    unsigned char *buf = fisher_file_read(path, &len, err);
    if (!buf) return -1;
    int rc = fisher_image_decode(buf, len, path, channels, img, err);
    free(buf);
    return rc;
}

void fisher_image_free(fisher_image *img) {
    if (!img) return;
    free(img->pixels);
    img->pixels = NULL;
    img->width = img->height = 0;
}

/* ------------------------------------------------------------------ Encode */

typedef struct {
    unsigned char *buf;
    size_t len, cap;
    const uint8_t *pixels;
    png_bytep *rows;
    char msg[256];
} png_out;

static void png_write_mem(png_structp png, png_bytep data, png_size_t n) {
    png_out *o = png_get_io_ptr(png);
    if (n > o->cap - o->len) {
        size_t cap = o->cap ? o->cap : 4096;
        while (n > cap - o->len) {
            if (cap > SIZE_MAX / 2) png_error(png, "encoded image too large");
            cap *= 2;
        }
        unsigned char *nb = realloc(o->buf, cap);
        if (!nb) png_error(png, "out of memory for the encoded image");
        o->buf = nb, o->cap = cap;
    }
    memcpy(o->buf + o->len, data, n);
    o->len += n;
}

static void png_flush_mem(png_structp png) { (void)png; }

static void png_out_error(png_structp png, png_const_charp msg) {
    png_out *o = png_get_error_ptr(png);
    snprintf(o->msg, sizeof o->msg, "%s", msg);
    png_longjmp(png, 1);
}

/* Encodes img into o->buf. Returns 0, or -1 with o->msg set. */
static int png_encode(png_out *o, const fisher_image *img) {
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, o, png_out_error, png_on_warning);
    if (!png) return snprintf(o->msg, sizeof o->msg, "out of memory"), -1;
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_write_struct(&png, NULL);
        return snprintf(o->msg, sizeof o->msg, "out of memory"), -1;
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(o->rows), o->rows = NULL;
        return -1;
    }
    png_set_write_fn(png, o, png_write_mem, png_flush_mem);
    png_set_IHDR(png, info, (png_uint_32)img->width, (png_uint_32)img->height, 8,
                 img->channels == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    size_t stride = (size_t)img->width * (size_t)img->channels;
    o->rows = malloc((size_t)img->height * sizeof *o->rows);
    if (!o->rows) png_error(png, "out of memory");
    for (int y = 0; y < img->height; y++) o->rows[y] = (png_bytep)(o->pixels + (size_t)y * stride);
    png_write_info(png, info);
    png_write_image(png, o->rows);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    free(o->rows), o->rows = NULL;
    return 0;
}

int fisher_image_save_png(const char *path, const fisher_image *img, fisher_error *err) {
    if (!path) return fisher_errorf(err, "image: NULL path");
    if (!img || !img->pixels) return fisher_errorf(err, "%s: no image to write", path);
    if (img->channels != 1 && img->channels != 3)
        return fisher_errorf(err, "%s: cannot write a %d-channel image; 1 or 3 expected", path,
                             img->channels);
    if (img->width < 1 || img->height < 1 || img->width > FISHER_IMAGE_MAX_SIDE ||
        img->height > FISHER_IMAGE_MAX_SIDE)
        return fisher_errorf(err, "%s: cannot write a %dx%d image; sides 1..%d expected", path,
                             img->width, img->height, FISHER_IMAGE_MAX_SIDE);

    png_out o = {.pixels = img->pixels};
    if (png_encode(&o, img)) {
        free(o.buf);
        return fisher_errorf(err, "%s: encoding PNG failed: %s", path, o.msg);
    }

    fisher_file_piece piece = {o.buf, o.len};
    int rc = fisher_file_write_atomic(path, &piece, 1, err);
    free(o.buf);
    return rc;
}

/* ------------------------------------------------------------------ Resize */

int fisher_image_to_input(float *out, const fisher_image *img, int H, int W, const float *mean,
                          const float *std, fisher_error *err) {
    int h = img->height, w = img->width, C = img->channels;
    size_t n = (size_t)h * (size_t)w * (size_t)C;
    float *src = out;
    if (h != H || w != W) {
        src = malloc(n * sizeof *src);
        if (!src)
            return fisher_errorf(err, "out of memory resizing a %dx%d image to %dx%d", w, h, W, H);
    }
    for (size_t i = 0; i < n; i++) src[i] = (float)img->pixels[i] * (1.0f / 255.0f);
    if (src != out) {
        fisher_resize_bilinear_forward(out, src, 1, h, w, C, H, W);
        free(src);
    }
    size_t m = (size_t)H * (size_t)W;
    for (size_t i = 0; i < m; i++)
        for (int c = 0; c < C; c++) {
            float *o = out + i * (size_t)C + c;
            *o = (*o - mean[c]) / std[c];
        }
    return 0;
}

/* PyTorch's 'nearest': src = ⌊dst·in/out⌋, here in exact integer arithmetic
 * (PyTorch multiplies by a float scale, which can differ by one on rare
 * exact multiples). Always < in. */
static int nearest_source(int dst, int in, int out) {
    return (int)((int64_t)dst * in / out);
}

void fisher_mask_to_target(float *out, const fisher_image *mask, int H, int W) {
    int h = mask->height, w = mask->width, C = mask->channels;
    for (int y = 0; y < H; y++) {
        const uint8_t *row = mask->pixels + (size_t)nearest_source(y, h, H) * w * C;
        for (int x = 0; x < W; x++) {
            const uint8_t *p = row + (size_t)nearest_source(x, w, W) * C;
            unsigned v = C == 1 ? p[0] : (299u * p[0] + 587u * p[1] + 114u * p[2] + 500) / 1000;
            out[(size_t)y * W + x] = v > 127 ? 1.0f : 0.0f;
        }
    }
}
