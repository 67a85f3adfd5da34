/*
 * make_seeds.c — writes the binary seed inputs of tests/fuzz/corpus/ (the
 * text ones, job specs and request targets, are committed as written).
 * Run by `make fuzz-seeds`; the output is committed, so the fuzzers start
 * from the same place everywhere. The seeds are small on purpose (a
 * fuzzer mutates every byte of them): valid files of each kind the
 * loaders meet, plus a near miss or two the loaders must refuse.
 *
 *   image/        PNG: grey, grey+alpha, RGB, RGBA, palette with tRNS,
 *                 1-bit grey, Adam7-interlaced, 16-bit (refused); JPEG:
 *                 grey, RGB 4:2:0 and 4:4:4, progressive, with restart
 *                 markers, CMYK (refused); a truncated PNG and JPEG.
 *   safetensors/  the smallest SegFormer fisherd can build, as it saves
 *                 models (config in the metadata); the same without its
 *                 decode head; every dtype the reader knows with shapes
 *                 scalar to 3-d and an empty tensor; an empty header.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <png.h>

#include "png_memory.h" /* tests/unit's: libpng into a memory buffer */
#include "safetensors.h"
#include "segformer.h"

static const char *out_dir;

static void put(const char *sub, const char *name, const void *buf, size_t len) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s/%s", out_dir, sub, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(buf, 1, len, f) != len || fclose(f)) {
        fprintf(stderr, "make_seeds: cannot write %s\n", path);
        exit(1);
    }
}

/* ------------------------------------------------------------------ PNG */

/* A w×h PNG of colour type `color` at `depth` bits, a diagonal gradient. */
static membuf png_make(int w, int h, int color, int depth, int interlace, int with_trns) {
    membuf m = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    png_set_write_fn(png, &m, mem_write, mem_flush);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, depth, color,
                 interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    if (color == PNG_COLOR_TYPE_PALETTE) {
        png_color pal[4] = {{0, 0, 0}, {255, 0, 0}, {0, 255, 0}, {255, 255, 255}};
        png_set_PLTE(png, info, pal, 4);
        if (with_trns) {
            png_byte alpha[1] = {0};
            png_set_tRNS(png, info, alpha, 1, NULL);
        }
    }
    png_write_info(png, info);
    int channels = color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_PALETTE ? 1
                   : color == PNG_COLOR_TYPE_GRAY_ALPHA                            ? 2
                   : color == PNG_COLOR_TYPE_RGB                                   ? 3
                                                                                   : 4;
    size_t rowbytes = ((size_t)w * (size_t)channels * (size_t)depth + 7) / 8;
    unsigned char *rows = calloc((size_t)h, rowbytes);
    png_bytep *ptrs = malloc((size_t)h * sizeof *ptrs);
    for (int y = 0; y < h; y++) {
        ptrs[y] = rows + (size_t)y * rowbytes;
        for (size_t b = 0; b < rowbytes; b++) ptrs[y][b] = (unsigned char)((b * 37 + (size_t)y * 53) & 0xff);
        if (color == PNG_COLOR_TYPE_PALETTE)
            for (size_t b = 0; b < rowbytes; b++) ptrs[y][b] &= depth == 8 ? 0x03 : 0xff;
    }
    int passes = interlace ? png_set_interlace_handling(png) : 1;
    for (int p = 0; p < passes; p++) png_write_rows(png, ptrs, (png_uint_32)h);
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    free(ptrs), free(rows);
    return m;
}

static void png_seed(const char *name, int w, int h, int color, int depth, int interlace, int trns) {
    membuf m = png_make(w, h, color, depth, interlace, trns);
    put("image", name, m.buf, m.len);
    free(m.buf);
}

/* ----------------------------------------------------------------- JPEG */

static void jpeg_seed(const char *name, int w, int h, J_COLOR_SPACE in_space, int comps,
                      int progressive, int subsample, int restart, size_t cut) {
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr jerr;
    c.err = jpeg_std_error(&jerr);
    jpeg_create_compress(&c);
    unsigned char *buf = NULL;
    unsigned long len = 0;
    jpeg_mem_dest(&c, &buf, &len);
    c.image_width = (JDIMENSION)w, c.image_height = (JDIMENSION)h;
    c.input_components = comps, c.in_color_space = in_space;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 75, TRUE);
    if (comps == 3 && !subsample)
        for (int i = 0; i < 3; i++) c.comp_info[i].h_samp_factor = c.comp_info[i].v_samp_factor = 1;
    if (progressive) jpeg_simple_progression(&c);
    if (restart) c.restart_in_rows = 1;
    jpeg_start_compress(&c, TRUE);
    unsigned char *row = malloc((size_t)w * (size_t)comps);
    while (c.next_scanline < c.image_height) {
        for (int x = 0; x < w * comps; x++) row[x] = (unsigned char)((x * 29 + (int)c.next_scanline * 41) & 0xff);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    put("image", name, buf, cut && cut < len ? cut : len);
    free(row), free(buf);
}

/* ---------------------------------------------------------- safetensors */

static void model_seed(const char *name, int with_head) {
    fisher_segformer_config cfg;
    fisher_error err;
    fisher_segformer_config_named(&cfg, "tiny", &err);
    for (int s = 0; s < FISHER_STAGES; s++) {
        cfg.hidden_sizes[s] = 2, cfg.depths[s] = 1, cfg.num_heads[s] = 1;
        cfg.sr_ratios[s] = s < 2 ? 2 : 1, cfg.patch_sizes[s] = 3, cfg.strides[s] = 2;
    }
    cfg.mlp_ratio = 1, cfg.decoder_hidden_size = 2;
    fisher_segformer *m = fisher_segformer_create(&cfg, &err);
    if (!m) {
        fprintf(stderr, "make_seeds: %s\n", err.msg);
        exit(1);
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/safetensors/%s", out_dir, name);
    if (fisher_segformer_save(m, path, &err)) {
        fprintf(stderr, "make_seeds: %s\n", err.msg);
        exit(1);
    }
    fisher_segformer_free(m);
    if (with_head) return;
    /* the same file without decode_head.*: what an encoder checkpoint is */
    fisher_safetensors *st = fisher_safetensors_open(path, &err);
    size_t n = fisher_safetensors_count(st), k = 0;
    fisher_st_tensor *ts = calloc(n, sizeof *ts);
    for (size_t i = 0; i < n; i++) {
        const char *tn = fisher_safetensors_name(st, i);
        if (!strncmp(tn, "decode_head.", 12)) continue;
        fisher_st_tensor *t = &ts[k++];
        t->name = tn;
        fisher_safetensors_info(st, tn, &t->dtype, &t->ndim, t->shape, &err);
        size_t numel = 1;
        for (int d = 0; d < t->ndim; d++) numel *= (size_t)t->shape[d];
        void *data = malloc(numel * 8 + 1);
        if (t->dtype == FISHER_DTYPE_I64) fisher_safetensors_read_i64(st, tn, data, t->ndim, t->shape, &err);
        else fisher_safetensors_read_f32(st, tn, data, t->ndim, t->shape, &err);
        t->data = data;
    }
    fisher_st_meta meta = {"config", fisher_safetensors_metadata(st, "config")};
    if (fisher_safetensors_write(path, ts, k, &meta, 1, &err)) {
        fprintf(stderr, "make_seeds: %s\n", err.msg);
        exit(1);
    }
    for (size_t i = 0; i < k; i++) free((void *)ts[i].data);
    free(ts);
    fisher_safetensors_close(st);
}

static void dtypes_seed(void) {
    float f32[6] = {1, -2, 0.5f, 3e-38f, 1e30f, -0.0f};
    unsigned short f16[4] = {0x3c00, 0x0001, 0x7c00, 0xfe00}, bf16[2] = {0x3f80, 0xff80};
    long long i64[2] = {42, -1};
    double f64[1] = {1e-300};
    fisher_st_tensor ts[] = {
        {"w", FISHER_DTYPE_F32, 2, {2, 3}, f32},
        {"h", FISHER_DTYPE_F16, 3, {1, 2, 2}, f16},
        {"b", FISHER_DTYPE_BF16, 1, {2}, bf16},
        {"n", FISHER_DTYPE_I64, 1, {2}, i64},
        {"scalar", FISHER_DTYPE_F64, 0, {0}, f64},
        {"empty", FISHER_DTYPE_F32, 2, {0, 4}, NULL},
    };
    fisher_st_meta meta[] = {{"format", "pt"}, {"image_size", "64"},
                             {"normalization", "{\"mean\":[0.5,0.5,0.5],\"std\":[0.25,0.25,0.25]}"}};
    char path[4096];
    fisher_error err;
    snprintf(path, sizeof path, "%s/safetensors/dtypes.safetensors", out_dir);
    if (fisher_safetensors_write(path, ts, sizeof ts / sizeof *ts, meta, 3, &err)) {
        fprintf(stderr, "make_seeds: %s\n", err.msg);
        exit(1);
    }
    static const char empty[] = "\x02\x00\x00\x00\x00\x00\x00\x00{}";
    put("safetensors", "empty_header.safetensors", empty, sizeof empty - 1);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: make_seeds CORPUS_DIR (with image/ and safetensors/ in it)\n");
        return 2;
    }
    out_dir = argv[1];
    png_seed("grey.png", 7, 5, PNG_COLOR_TYPE_GRAY, 8, 0, 0);
    png_seed("grey_alpha.png", 4, 4, PNG_COLOR_TYPE_GRAY_ALPHA, 8, 0, 0);
    png_seed("rgb.png", 6, 4, PNG_COLOR_TYPE_RGB, 8, 0, 0);
    png_seed("rgba.png", 3, 5, PNG_COLOR_TYPE_RGB_ALPHA, 8, 0, 0);
    png_seed("palette_trns.png", 5, 5, PNG_COLOR_TYPE_PALETTE, 8, 0, 1);
    png_seed("grey_1bit.png", 9, 3, PNG_COLOR_TYPE_GRAY, 1, 0, 0);
    png_seed("rgb_adam7.png", 9, 9, PNG_COLOR_TYPE_RGB, 8, 1, 0);
    png_seed("grey_16bit.png", 4, 3, PNG_COLOR_TYPE_GRAY, 16, 0, 0);
    png_seed("rgb_16bit.png", 3, 3, PNG_COLOR_TYPE_RGB, 16, 0, 0);
    membuf cut = png_make(8, 8, PNG_COLOR_TYPE_RGB, 8, 0, 0);
    put("image", "truncated.png", cut.buf, cut.len - 20);
    free(cut.buf);
    jpeg_seed("grey.jpg", 8, 8, JCS_GRAYSCALE, 1, 0, 0, 0, 0);
    jpeg_seed("rgb_420.jpg", 16, 16, JCS_RGB, 3, 0, 1, 0, 0);
    jpeg_seed("rgb_444.jpg", 9, 7, JCS_RGB, 3, 0, 0, 0, 0);
    jpeg_seed("progressive.jpg", 16, 8, JCS_RGB, 3, 1, 1, 0, 0);
    jpeg_seed("restart.jpg", 8, 24, JCS_GRAYSCALE, 1, 0, 0, 1, 0);
    jpeg_seed("cmyk.jpg", 8, 8, JCS_CMYK, 4, 0, 0, 0, 0);
    jpeg_seed("truncated.jpg", 16, 16, JCS_RGB, 3, 0, 1, 0, 300);
    model_seed("model_tiny.safetensors", 1);
    model_seed("encoder_only.safetensors", 0);
    dtypes_seed();
    return 0;
}
