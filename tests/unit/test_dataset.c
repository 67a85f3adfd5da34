/*
 * test_dataset.c — unit tests for lib/dataset.c.
 *
 * Folder datasets are built in mkdtemp trees under /tmp (removed at the end
 * of each test): each way a folder can be wrong must be refused at open
 * with a message naming the file and the problem, whether or not the
 * samples would be cached; stems pair across .jpg/.jpeg/.png; cached and
 * decode-on-demand samples are identical. Synthetic datasets are exactly
 * fisher_synth_sample normalised. Loaders: a batch is a function of (seed,
 * step) alone — the same with or without the prefetch thread, in any access
 * order; shuffled epochs see every sample once; in-order epochs end with a
 * partial batch reported as such; flips and scale-crops move image and
 * mask together.
 */
#include "testutil.h"
#include "png_memory.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jpeglib.h>
#include <png.h>

#include "dataset.h"
#include "image.h"

#define BIG_CACHE ((size_t)1 << 30)

/* ----------------------------------------------------------------------------
 * helpers */


typedef struct {
    char dir[64];
} tree;

/* A fresh dataset root; with_dirs: images/ and masks/ created too. */
static tree new_tree(int with_dirs) {
    tree t;
    snprintf(t.dir, sizeof t.dir, "/tmp/fisher_ds_XXXXXX");
    assert_non_null(mkdtemp(t.dir));
    if (with_dirs) {
        char p[128];
        snprintf(p, sizeof p, "%s/images", t.dir);
        assert_int_equal(mkdir(p, 0755), 0);
        snprintf(p, sizeof p, "%s/masks", t.dir);
        assert_int_equal(mkdir(p, 0755), 0);
    }
    return t;
}

static const char *in_tree(const tree *t, const char *rel) {
    static char p[256];
    snprintf(p, sizeof p, "%s/%s", t->dir, rel);
    return p;
}

static void spit(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

/* Deterministic pixels: a smooth pattern varied by `tag`. */
static uint8_t *pattern(int w, int h, int ch, int tag) {
    uint8_t *px = malloc((size_t)w * h * ch);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < ch; c++)
                px[((size_t)y * w + x) * ch + c] = (uint8_t)((x * 9 + y * 5 + c * 70 + tag * 37) & 0xff);
    return px;
}

static void put_png(const tree *t, const char *rel, int w, int h, int ch, int tag) {
    fisher_error err = {{0}};
    fisher_image img = {w, h, ch, pattern(w, h, ch, tag)};
    if (fisher_image_save_png(in_tree(t, rel), &img, &err)) fail_msg("%s", err.msg);
    free(img.pixels);
}

/* A binary mask, 0/255, a different blob per tag. */
static void put_mask(const tree *t, const char *rel, int w, int h, int tag) {
    fisher_error err = {{0}};
    fisher_image img = {w, h, 1, malloc((size_t)w * h)};
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            img.pixels[y * w + x] = ((x + tag) % 5 < 2 && y > tag % 3) ? 255 : 0;
    if (fisher_image_save_png(in_tree(t, rel), &img, &err)) fail_msg("%s", err.msg);
    free(img.pixels);
}

static void put_jpeg(const tree *t, const char *rel, int w, int h, int tag) {
    uint8_t *px = pattern(w, h, 3, tag);
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr jerr;
    unsigned char *out = NULL;
    unsigned long len = 0;
    c.err = jpeg_std_error(&jerr);
    jpeg_create_compress(&c);
    jpeg_mem_dest(&c, &out, &len);
    c.image_width = (JDIMENSION)w, c.image_height = (JDIMENSION)h;
    c.input_components = 3, c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 90, TRUE);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = px + (size_t)c.next_scanline * w * 3;
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    spit(in_tree(t, rel), out, len);
    free(out);
    free(px);
}

static void put_png16(const tree *t, const char *rel, int w, int h) {
    membuf m = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png))) fail_msg("test PNG writer failed");
    png_set_write_fn(png, &m, mem_write, mem_flush);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 16, PNG_COLOR_TYPE_GRAY,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    unsigned char *row = calloc((size_t)w, 2);
    for (int y = 0; y < h; y++) png_write_row(png, row);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    spit(in_tree(t, rel), m.buf, m.len);
    free(row);
    free(m.buf);
}

static unsigned char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)n);
    assert_int_equal(fread(b, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return b;
}

/* Opening must fail, cached or not, with every one of the words given. */
static void expect_open_error(const tree *t, const char *w1, const char *w2) {
    size_t caches[2] = {0, BIG_CACHE};
    for (int k = 0; k < 2; k++) {
        fisher_error err = {{0}};
        fisher_dataset *ds = fisher_dataset_open_folder(t->dir, 16, 16, NULL, caches[k], &err);
        if (ds) fail_msg("%s opened (cache %zu) though it should not", t->dir, caches[k]);
        printf("  refused: %s\n", err.msg);
        if (w1 && !strstr(err.msg, w1)) fail_msg("\"%s\" not in: %s", w1, err.msg);
        if (w2 && !strstr(err.msg, w2)) fail_msg("\"%s\" not in: %s", w2, err.msg);
    }
}

/* ----------------------------------------------------------------------------
 * Folder datasets: errors */

static void test_folder_errors(void **state) {
    (void)state;
    char want[256];

    tree t = new_tree(0); /* no images/ */
    expect_open_error(&t, "images", "No such file");
    snprintf(want, sizeof want, "%s/images", t.dir);
    assert_int_equal(mkdir(want, 0755), 0); /* no masks/ */
    expect_open_error(&t, "masks", "No such file");
    rm_tree(t.dir);

    t = new_tree(1); /* both empty */
    expect_open_error(&t, "no image/mask pairs", t.dir);
    rm_tree(t.dir);

    t = new_tree(1); /* an image without a mask */
    put_png(&t, "images/a.png", 8, 8, 3, 0);
    put_mask(&t, "masks/a.png", 8, 8, 0);
    put_jpeg(&t, "images/b.jpg", 8, 8, 1);
    snprintf(want, sizeof want, "%s/images/b.jpg has no mask", t.dir);
    expect_open_error(&t, want, "masks/b.png");
    rm_tree(t.dir);

    t = new_tree(1); /* a mask without an image */
    put_png(&t, "images/a.png", 8, 8, 3, 0);
    put_mask(&t, "masks/a.png", 8, 8, 0);
    put_mask(&t, "masks/c.png", 8, 8, 0);
    snprintf(want, sizeof want, "%s/masks/c.png has no image", t.dir);
    expect_open_error(&t, want, NULL);
    rm_tree(t.dir);

    t = new_tree(1); /* two images with one stem */
    put_jpeg(&t, "images/a.jpg", 8, 8, 0);
    put_png(&t, "images/a.png", 8, 8, 3, 0);
    put_mask(&t, "masks/a.png", 8, 8, 0);
    expect_open_error(&t, "a.jpg and ", "a.png share the stem \"a\"");
    rm_tree(t.dir);

    t = new_tree(1); /* a truncated image */
    put_png(&t, "images/a.png", 8, 8, 3, 0);
    put_mask(&t, "masks/a.png", 8, 8, 0);
    put_png(&t, "images/b.png", 30, 20, 3, 1);
    put_mask(&t, "masks/b.png", 30, 20, 1);
    size_t len;
    unsigned char *b = slurp(in_tree(&t, "images/b.png"), &len);
    spit(in_tree(&t, "images/b.png"), b, len / 2);
    free(b);
    snprintf(want, sizeof want, "%s/images/b.png", t.dir);
    expect_open_error(&t, want, "truncated");
    rm_tree(t.dir);

    t = new_tree(1); /* a truncated JPEG */
    put_jpeg(&t, "images/a.jpeg", 24, 24, 0);
    put_mask(&t, "masks/a.png", 24, 24, 0);
    b = slurp(in_tree(&t, "images/a.jpeg"), &len);
    spit(in_tree(&t, "images/a.jpeg"), b, len - 3);
    free(b);
    snprintf(want, sizeof want, "%s/images/a.jpeg", t.dir);
    expect_open_error(&t, want, "Premature end");
    rm_tree(t.dir);

    t = new_tree(1); /* a 16-bit mask */
    put_png(&t, "images/a.png", 8, 8, 3, 0);
    put_png16(&t, "masks/a.png", 8, 8);
    snprintf(want, sizeof want, "%s/masks/a.png", t.dir);
    expect_open_error(&t, want, "16-bit PNG; 8-bit expected");
    rm_tree(t.dir);

    t = new_tree(1); /* not an image at all */
    spit(in_tree(&t, "images/a.jpg"), "hello, world", 12);
    put_mask(&t, "masks/a.png", 8, 8, 0);
    snprintf(want, sizeof want, "%s/images/a.jpg", t.dir);
    expect_open_error(&t, want, "not a PNG or JPEG");
    rm_tree(t.dir);

    t = new_tree(1); /* image and mask of different sizes */
    put_png(&t, "images/a.png", 8, 8, 3, 0);
    put_mask(&t, "masks/a.png", 8, 6, 0);
    expect_open_error(&t, "is 8x8 but its mask", "8x6");
    rm_tree(t.dir);

    t = new_tree(1); /* a 0/1 label-index mask */
    put_png(&t, "images/a.png", 8, 8, 3, 0);
    fisher_image m = {8, 8, 1, calloc(64, 1)};
    m.pixels[10] = 1;
    fisher_error err = {{0}};
    assert_int_equal(fisher_image_save_png(in_tree(&t, "masks/a.png"), &m, &err), 0);
    free(m.pixels);
    snprintf(want, sizeof want, "%s/masks/a.png", t.dir);
    expect_open_error(&t, want, "only 0 and 1");
    rm_tree(t.dir);

    /* bad sizes */
    t = new_tree(1);
    assert_null(fisher_dataset_open_folder(t.dir, 0, 16, NULL, 0, &err));
    assert_non_null(strstr(err.msg, "input size 16x0"));
    rm_tree(t.dir);
}

/* ----------------------------------------------------------------------------
 * Folder datasets: pairing and caching */

/* What image i of a folder should become: decode, resize, normalise by hand. */
static void expected_sample(const char *image_path, const char *mask_path, int H, int W,
                            float *image, float *mask) {
    fisher_error err = {{0}};
    fisher_normalization n = fisher_normalization_imagenet();
    fisher_image img = {0}, msk = {0};
    if (fisher_image_load(image_path, 3, &img, &err)) fail_msg("%s", err.msg);
    if (fisher_image_load(mask_path, 1, &msk, &err)) fail_msg("%s", err.msg);
    assert_int_equal(fisher_image_to_input(image, &img, H, W, n.mean, n.std, &err), 0);
    fisher_mask_to_target(mask, &msk, H, W);
    fisher_image_free(&img);
    fisher_image_free(&msk);
}

static void test_folder_pairs_by_stem(void **state) {
    (void)state;
    tree t = new_tree(1);
    put_jpeg(&t, "images/b.jpg", 20, 14, 1);
    put_png(&t, "images/a.png", 20, 14, 3, 0);
    put_jpeg(&t, "images/c.JPEG", 20, 14, 2);
    put_png(&t, "images/d.x.png", 20, 14, 1, 3); /* grey image; stem "d.x" */
    put_mask(&t, "masks/a.png", 20, 14, 0);
    put_mask(&t, "masks/b.png", 20, 14, 1);
    put_mask(&t, "masks/c.PNG", 20, 14, 2);
    put_mask(&t, "masks/d.x.png", 20, 14, 3);
    spit(in_tree(&t, "images/notes.txt"), "not an image", 12); /* ignored */
    spit(in_tree(&t, "images/.DS_Store"), "junk", 4);          /* ignored */
    spit(in_tree(&t, "masks/.hidden.png"), "junk", 4);          /* ignored */
    assert_int_equal(mkdir(in_tree(&t, "images/sub.png"), 0755), 0); /* ignored */

    fisher_error err = {{0}};
    int H = 12, W = 16;
    fisher_dataset *ds = fisher_dataset_open_folder(t.dir, H, W, NULL, BIG_CACHE, &err);
    if (!ds) fail_msg("%s", err.msg);
    assert_int_equal(fisher_dataset_count(ds), 4);
    const char *names[4] = {"a", "b", "c", "d.x"};
    const char *files[4][2] = {{"images/a.png", "masks/a.png"},
                               {"images/b.jpg", "masks/b.png"},
                               {"images/c.JPEG", "masks/c.PNG"},
                               {"images/d.x.png", "masks/d.x.png"}};
    float *img = malloc((size_t)H * W * 3 * sizeof *img), *msk = malloc((size_t)H * W * sizeof *msk);
    float *wimg = malloc((size_t)H * W * 3 * sizeof *img), *wmsk = malloc((size_t)H * W * sizeof *msk);
    for (size_t i = 0; i < 4; i++) {
        assert_string_equal(fisher_dataset_sample_name(ds, i), names[i]);
        assert_int_equal(fisher_dataset_get(ds, i, img, msk, &err), 0);
        char ip[256], mp[256];
        snprintf(ip, sizeof ip, "%s/%s", t.dir, files[i][0]);
        snprintf(mp, sizeof mp, "%s/%s", t.dir, files[i][1]);
        expected_sample(ip, mp, H, W, wimg, wmsk);
        assert_memory_equal(img, wimg, (size_t)H * W * 3 * sizeof *img);
        assert_memory_equal(msk, wmsk, (size_t)H * W * sizeof *msk);
    }
    assert_int_equal(fisher_dataset_get(ds, 4, img, msk, &err), -1);
    assert_non_null(strstr(err.msg, "out of range"));
    const char *d = fisher_dataset_describe(ds);
    printf("  %s\n", d);
    assert_non_null(strstr(d, t.dir));
    assert_non_null(strstr(d, "4 pairs, cached"));
    assert_non_null(strstr(d, "KiB"));
    fisher_dataset_close(ds);
    free(img), free(msk), free(wimg), free(wmsk);
    rm_tree(t.dir);
}

/* A tree of n pairs, images alternately PNG and JPEG, 20 × 14. */
static tree mixed_tree(int n) {
    tree t = new_tree(1);
    for (int i = 0; i < n; i++) {
        char ip[64], mp[64];
        snprintf(ip, sizeof ip, i % 2 ? "images/s%02d.jpg" : "images/s%02d.png", i);
        snprintf(mp, sizeof mp, "masks/s%02d.png", i);
        if (i % 2)
            put_jpeg(&t, ip, 20, 14, i);
        else
            put_png(&t, ip, 20, 14, 3, i);
        put_mask(&t, mp, 20, 14, i);
    }
    return t;
}

static void test_cached_equals_uncached(void **state) {
    (void)state;
    tree t = mixed_tree(5);
    fisher_error err = {{0}};
    int H = 10, W = 13;
    size_t hw = (size_t)H * W, need = 5 * hw * 4 * sizeof(float);
    fisher_dataset *cached = fisher_dataset_open_folder(t.dir, H, W, NULL, need, &err);
    fisher_dataset *lazy = fisher_dataset_open_folder(t.dir, H, W, NULL, need - 1, &err);
    assert_non_null(cached);
    assert_non_null(lazy);
    printf("  %s\n  %s\n", fisher_dataset_describe(cached), fisher_dataset_describe(lazy));
    assert_non_null(strstr(fisher_dataset_describe(cached), "cached"));
    assert_non_null(strstr(fisher_dataset_describe(lazy), "decoded on demand"));
    float *a = malloc(hw * 4 * sizeof *a), *b = malloc(hw * 4 * sizeof *b);
    for (size_t i = 0; i < 5; i++) {
        assert_int_equal(fisher_dataset_get(cached, i, a, a + hw * 3, &err), 0);
        assert_int_equal(fisher_dataset_get(lazy, i, b, b + hw * 3, &err), 0);
        assert_memory_equal(a, b, hw * 4 * sizeof *a);
    }
    /* a file vanishing after open: the on-demand dataset names it */
    char gone[256];
    snprintf(gone, sizeof gone, "%s/images/s03.jpg", t.dir);
    assert_int_equal(unlink(gone), 0);
    assert_int_equal(fisher_dataset_get(cached, 3, a, a + hw * 3, &err), 0);
    assert_int_equal(fisher_dataset_get(lazy, 3, b, b + hw * 3, &err), -1);
    assert_non_null(strstr(err.msg, gone));
    /* … and so does a loader's batch, which its prefetch thread built */
    fisher_loader *l = fisher_loader_create(lazy, 2, 0, NULL, 0, &err);
    assert_non_null(l);
    float *imgs = malloc(2 * hw * 3 * sizeof *imgs), *msks = malloc(2 * hw * sizeof *msks);
    assert_int_equal(fisher_loader_batch(l, 0, imgs, msks, &err), 2);
    err.msg[0] = '\0';
    assert_int_equal(fisher_loader_batch(l, 1, imgs, msks, &err), -1);
    assert_non_null(strstr(err.msg, gone));
    fisher_loader_free(l);
    free(imgs), free(msks);

    fisher_dataset_close(cached);
    fisher_dataset_close(lazy);
    free(a), free(b);
    rm_tree(t.dir);
}

/* ----------------------------------------------------------------------------
 * Synthetic datasets */

static void test_synthetic_matches_generator(void **state) {
    (void)state;
    fisher_error err = {{0}};
    int H = 24, W = 20;
    size_t hw = (size_t)H * W;
    fisher_normalization n = {{0.5f, 0.4f, 0.3f}, {0.2f, 0.25f, 0.3f}};
    fisher_dataset *ds = fisher_dataset_synthetic(FISHER_SYNTH_ASPHALT, 7, 10, H, W, &n, &err);
    if (!ds) fail_msg("%s", err.msg);
    assert_int_equal(fisher_dataset_count(ds), 10);
    assert_string_equal(fisher_dataset_describe(ds), "synthetic asphalt seed 7: 10 samples");
    assert_string_equal(fisher_dataset_sample_name(ds, 3), "asphalt/7/3");
    uint8_t *rgb = malloc(hw * 3), *m8 = malloc(hw);
    float *img = malloc(hw * 3 * sizeof *img), *msk = malloc(hw * sizeof *msk);
    for (size_t i = 0; i < 10; i += 3) {
        fisher_synth_sample(FISHER_SYNTH_ASPHALT, rgb, m8, H, W, 7, i);
        assert_int_equal(fisher_dataset_get(ds, i, img, msk, &err), 0);
        for (size_t k = 0; k < hw; k++) {
            for (int c = 0; c < 3; c++) {
                float want = ((float)rgb[k * 3 + c] * (1.0f / 255.0f) - n.mean[c]) / n.std[c];
                if (img[k * 3 + c] != want) fail_msg("sample %zu pixel %zu/%d: %g != %g", i, k, c,
                                                     (double)img[k * 3 + c], (double)want);
            }
            assert_true(msk[k] == (m8[k] ? 1.0f : 0.0f));
        }
    }
    fisher_dataset_close(ds);

    /* the concrete domain with ImageNet statistics is fisher_synth_crack */
    ds = fisher_dataset_synthetic(FISHER_SYNTH_CONCRETE, 3, 5, H, W, NULL, &err);
    float *wimg = malloc(hw * 3 * sizeof *img), *wmsk = malloc(hw * sizeof *msk);
    fisher_synth_crack(wimg, wmsk, H, W, 3, 4);
    assert_int_equal(fisher_dataset_get(ds, 4, img, msk, &err), 0);
    assert_memory_equal(img, wimg, hw * 3 * sizeof *img);
    assert_memory_equal(msk, wmsk, hw * sizeof *msk);
    fisher_dataset_close(ds);

    assert_null(fisher_dataset_synthetic(FISHER_SYNTH_WALL, 1, 0, H, W, NULL, &err));
    assert_non_null(strstr(err.msg, "count is 0"));
    assert_null(fisher_dataset_synthetic(FISHER_SYNTH_DOMAINS, 1, 4, H, W, NULL, &err));
    assert_non_null(strstr(err.msg, "unknown domain"));
    free(rgb), free(m8), free(img), free(msk), free(wimg), free(wmsk);
}

/* ----------------------------------------------------------------------------
 * Loaders */

typedef struct {
    int B, H, W;
    size_t hw;
    float *images, *masks;
} batch_buf;

static batch_buf batch_new(const fisher_dataset *ds, int B, int H, int W) {
    (void)ds;
    batch_buf b = {B, H, W, (size_t)H * W, NULL, NULL};
    b.images = malloc((size_t)B * b.hw * 3 * sizeof(float));
    b.masks = malloc((size_t)B * b.hw * sizeof(float));
    return b;
}

static void batch_free(batch_buf *b) { free(b->images), free(b->masks); }

static int batch_get(fisher_loader *l, int64_t step, batch_buf *b) {
    fisher_error err = {{0}};
    int rc = fisher_loader_batch(l, step, b->images, b->masks, &err);
    if (rc < 0) fail_msg("batch %lld: %s", (long long)step, err.msg);
    return rc;
}

static int batch_equal(const batch_buf *a, const batch_buf *b) {
    return !memcmp(a->images, b->images, (size_t)a->B * a->hw * 3 * sizeof(float)) &&
           !memcmp(a->masks, b->masks, (size_t)a->B * a->hw * sizeof(float));
}

/* Every sample of ds, to tell which one sits in a batch slot. */
typedef struct {
    size_t n, hw;
    float *images;
} sample_table;

static sample_table table_of(fisher_dataset *ds, int H, int W) {
    fisher_error err = {{0}};
    sample_table t = {fisher_dataset_count(ds), (size_t)H * W, NULL};
    t.images = malloc(t.n * t.hw * 3 * sizeof(float));
    float *m = malloc(t.hw * sizeof(float));
    for (size_t i = 0; i < t.n; i++)
        assert_int_equal(fisher_dataset_get(ds, i, t.images + i * t.hw * 3, m, &err), 0);
    free(m);
    return t;
}

static int which_sample(const sample_table *t, const float *image) {
    for (size_t i = 0; i < t->n; i++)
        if (!memcmp(t->images + i * t->hw * 3, image, t->hw * 3 * sizeof(float))) return (int)i;
    return -1;
}

/* The synthetic world written to disk as PNGs (what `fisherd dataset synth`
 * does) reads back through the folder loader as exactly the same samples:
 * PNG is lossless and a same-size resize is the identity. */
static void test_synthetic_round_trips_through_a_folder(void **state) {
    (void)state;
    enum { N = 3, S = 40 };
    tree t = new_tree(1);
    fisher_error err = {{0}};
    uint8_t rgb[S * S * 3], mask[S * S];
    for (int i = 0; i < N; i++) {
        fisher_synth_sample(FISHER_SYNTH_TILES, rgb, mask, S, S, 5, (uint64_t)i);
        for (int p = 0; p < S * S; p++) mask[p] = mask[p] ? 255 : 0;
        char rel[64];
        fisher_image img = {S, S, 3, rgb}, m = {S, S, 1, mask};
        snprintf(rel, sizeof rel, "images/s%d.png", i);
        assert_int_equal(fisher_image_save_png(in_tree(&t, rel), &img, &err), 0);
        snprintf(rel, sizeof rel, "masks/s%d.png", i);
        assert_int_equal(fisher_image_save_png(in_tree(&t, rel), &m, &err), 0);
    }
    fisher_normalization norm = fisher_normalization_imagenet();
    fisher_dataset *folder = fisher_dataset_open_folder(t.dir, S, S, &norm, BIG_CACHE, &err);
    fisher_dataset *synth = fisher_dataset_synthetic(FISHER_SYNTH_TILES, 5, N, S, S, &norm, &err);
    assert_non_null(folder);
    assert_non_null(synth);
    float a_img[S * S * 3], b_img[S * S * 3], a_mask[S * S], b_mask[S * S];
    for (size_t i = 0; i < N; i++) {
        assert_int_equal(fisher_dataset_get(folder, i, a_img, a_mask, &err), 0);
        assert_int_equal(fisher_dataset_get(synth, i, b_img, b_mask, &err), 0);
        assert_memory_equal(a_img, b_img, sizeof a_img);
        assert_memory_equal(a_mask, b_mask, sizeof a_mask);
    }
    fisher_dataset_close(folder);
    fisher_dataset_close(synth);
    rm_tree(t.dir);
}

static void test_loader_determinism(void **state) {
    (void)state;
    fisher_error err = {{0}};
    int H = 16, W = 16, B = 3;
    fisher_dataset *ds = fisher_dataset_synthetic(FISHER_SYNTH_SHAPES, 5, 10, H, W, NULL, &err);
    fisher_augment aug = {1, 1, 1.0f, 1.5f};
    fisher_loader *a = fisher_loader_create(ds, B, 1, &aug, 42, &err);
    fisher_loader *b = fisher_loader_create(ds, B, 1, &aug, 42, &err);
    fisher_loader *c = fisher_loader_create(ds, B, 1, &aug, 43, &err);
    assert_non_null(a), assert_non_null(b), assert_non_null(c);
    assert_int_equal(fisher_loader_batches_per_epoch(a), 3); /* 10 / 3, whole batches */
    batch_buf ba = batch_new(ds, B, H, W), bb = batch_new(ds, B, H, W), bc = batch_new(ds, B, H, W);
    batch_buf steps[9];
    int differ = 0;
    for (int s = 0; s < 9; s++) {
        steps[s] = batch_new(ds, B, H, W);
        assert_int_equal(batch_get(a, s, &steps[s]), B);
        assert_int_equal(batch_get(b, s, &bb), B);
        assert_true(batch_equal(&steps[s], &bb));
        batch_get(c, s, &bc);
        differ += !batch_equal(&steps[s], &bc);
    }
    assert_int_equal(differ, 9); /* another seed: other order and augmentation */
    /* random access on a fresh loader: a resumed run sees the same batches */
    fisher_loader *d = fisher_loader_create(ds, B, 1, &aug, 42, &err);
    int order[6] = {7, 2, 3, 8, 0, 7};
    for (int k = 0; k < 6; k++) {
        batch_get(d, order[k], &ba);
        assert_true(batch_equal(&ba, &steps[order[k]]));
    }
    fisher_loader_free(d);
    for (int s = 0; s < 9; s++) batch_free(&steps[s]);
    fisher_loader_free(a), fisher_loader_free(b), fisher_loader_free(c);
    batch_free(&ba), batch_free(&bb), batch_free(&bc);
    fisher_dataset_close(ds);
}

static void check_epochs(size_t count, int B) {
    fisher_error err = {{0}};
    int H = 8, W = 8;
    fisher_dataset *ds = fisher_dataset_synthetic(FISHER_SYNTH_SHAPES, 9, count, H, W, NULL, &err);
    sample_table t = table_of(ds, H, W);
    fisher_loader *l = fisher_loader_create(ds, B, 1, NULL, 1, &err);
    int64_t per = fisher_loader_batches_per_epoch(l);
    assert_int_equal(per, (int64_t)(count / (size_t)B));
    batch_buf b = batch_new(ds, B, H, W);
    int first_order[64], orders_differ = 0;
    for (int e = 0; e < 3; e++) {
        int seen[64] = {0}, k = 0, order[64];
        for (int64_t s = e * per; s < (e + 1) * per; s++) {
            assert_int_equal(batch_get(l, s, &b), B);
            for (int slot = 0; slot < B; slot++) {
                int i = which_sample(&t, b.images + (size_t)slot * t.hw * 3);
                assert_true(i >= 0);
                seen[i]++;
                order[k++] = i;
            }
        }
        size_t distinct = 0;
        for (size_t i = 0; i < count; i++) {
            assert_true(seen[i] <= 1);
            distinct += (size_t)seen[i];
        }
        assert_int_equal(distinct, (size_t)per * (size_t)B);
        if (e == 0) memcpy(first_order, order, sizeof order);
        else orders_differ += memcmp(first_order, order, (size_t)k * sizeof *order) != 0;
    }
    assert_int_equal(orders_differ, 2); /* each epoch its own shuffle */
    fisher_loader_free(l);
    batch_free(&b);
    free(t.images);
    fisher_dataset_close(ds);
}

static void test_shuffled_epochs_see_each_sample_once(void **state) {
    (void)state;
    check_epochs(12, 4); /* every sample exactly once */
    check_epochs(10, 3); /* 9 of 10, none twice */
}

static void test_in_order_partial_batch(void **state) {
    (void)state;
    fisher_error err = {{0}};
    int H = 8, W = 8;
    fisher_dataset *ds = fisher_dataset_synthetic(FISHER_SYNTH_TILES, 2, 10, H, W, NULL, &err);
    sample_table t = table_of(ds, H, W);
    fisher_loader *l = fisher_loader_create(ds, 4, 0, NULL, 0, &err);
    assert_int_equal(fisher_loader_batches_per_epoch(l), 3);
    batch_buf b = batch_new(ds, 4, H, W);
    struct {
        int64_t step;
        int real;
        int samples[4];
    } want[] = {{0, 4, {0, 1, 2, 3}}, {1, 4, {4, 5, 6, 7}}, {2, 2, {8, 9, 0, 1}},
                {3, 4, {0, 1, 2, 3}}, {5, 2, {8, 9, 0, 1}}, {2, 2, {8, 9, 0, 1}}};
    for (size_t k = 0; k < sizeof want / sizeof *want; k++) {
        assert_int_equal(batch_get(l, want[k].step, &b), want[k].real);
        for (int slot = 0; slot < 4; slot++)
            assert_int_equal(which_sample(&t, b.images + (size_t)slot * t.hw * 3), want[k].samples[slot]);
    }
    fisher_loader_free(l);
    batch_free(&b);

    /* fewer samples than a batch: in order it still works, repeating */
    fisher_dataset *two = fisher_dataset_synthetic(FISHER_SYNTH_TILES, 2, 2, H, W, NULL, &err);
    l = fisher_loader_create(two, 5, 0, NULL, 0, &err);
    b = batch_new(two, 5, H, W);
    assert_int_equal(batch_get(l, 0, &b), 2);
    int rep[5] = {0, 1, 0, 1, 0};
    for (int slot = 0; slot < 5; slot++)
        assert_int_equal(which_sample(&t, b.images + (size_t)slot * t.hw * 3), rep[slot]);
    fisher_loader_free(l);
    batch_free(&b);
    fisher_dataset_close(two);
    free(t.images);
    fisher_dataset_close(ds);
}

static void test_loader_errors(void **state) {
    (void)state;
    fisher_error err = {{0}};
    fisher_dataset *ds = fisher_dataset_synthetic(FISHER_SYNTH_WALL, 2, 3, 8, 8, NULL, &err);
    assert_null(fisher_loader_create(ds, 0, 0, NULL, 0, &err));
    assert_non_null(strstr(err.msg, "batch size 0"));
    assert_null(fisher_loader_create(ds, 4, 1, NULL, 0, &err));
    assert_non_null(strstr(err.msg, "exceeds the 3 samples"));
    fisher_augment too_far = {0, 0, 0.1f, 2.0f};
    assert_null(fisher_loader_create(ds, 1, 1, &too_far, 0, &err));
    assert_non_null(strstr(err.msg, "1/8 <= scale_min"));
    fisher_augment nan = {0, 0, NAN, 2.0f};
    assert_null(fisher_loader_create(ds, 1, 1, &nan, 0, &err));
    fisher_augment inverted = {0, 0, 2.0f, 1.5f};
    assert_null(fisher_loader_create(ds, 1, 1, &inverted, 0, &err));
    assert_non_null(strstr(err.msg, "[2, 1.5]"));
    fisher_loader *l = fisher_loader_create(ds, 1, 1, NULL, 0, &err);
    float img[8 * 8 * 3], msk[8 * 8];
    assert_int_equal(fisher_loader_batch(l, -1, img, msk, &err), -1);
    assert_non_null(strstr(err.msg, "step -1"));
    fisher_loader_free(l);
    fisher_dataset_close(ds);
}

/* ----------------------------------------------------------------------------
 * Augmentation */

static void hflip(float *dst, const float *src, int H, int W, int C) {
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            memcpy(dst + ((size_t)y * W + x) * C, src + ((size_t)y * W + (W - 1 - x)) * C, C * sizeof(float));
}

static void vflip(float *dst, const float *src, int H, int W, int C) {
    for (int y = 0; y < H; y++) memcpy(dst + (size_t)y * W * C, src + (size_t)(H - 1 - y) * W * C, (size_t)W * C * sizeof(float));
}

static void test_flips_move_image_and_mask_together(void **state) {
    (void)state;
    fisher_error err = {{0}};
    int H = 12, W = 10;
    size_t hw = (size_t)H * W;
    fisher_dataset *ds = fisher_dataset_synthetic(FISHER_SYNTH_CONCRETE, 1, 4, H, W, NULL, &err);
    /* the four variants of sample 2: none, h, v, hv */
    float *vi[4], *vm[4];
    for (int k = 0; k < 4; k++) vi[k] = malloc(hw * 3 * sizeof(float)), vm[k] = malloc(hw * sizeof(float));
    assert_int_equal(fisher_dataset_get(ds, 2, vi[0], vm[0], &err), 0);
    hflip(vi[1], vi[0], H, W, 3), hflip(vm[1], vm[0], H, W, 1);
    vflip(vi[2], vi[0], H, W, 3), vflip(vm[2], vm[0], H, W, 1);
    vflip(vi[3], vi[1], H, W, 3), vflip(vm[3], vm[1], H, W, 1);
    for (int k = 1; k < 4; k++) assert_true(memcmp(vi[k], vi[0], hw * 3 * sizeof(float)) != 0);

    struct {
        int h, v;
        int allowed[4];
    } cases[] = {{1, 0, {1, 1, 0, 0}}, {0, 1, {1, 0, 1, 0}}, {1, 1, {1, 1, 1, 1}}};
    for (int c = 0; c < 3; c++) {
        fisher_augment aug = {cases[c].h, cases[c].v, 1.0f, 1.0f};
        fisher_loader *l = fisher_loader_create(ds, 4, 0, &aug, 11, &err);
        batch_buf b = batch_new(ds, 4, H, W);
        int hits[4] = {0};
        for (int64_t s = 0; s < 40; s++) {
            batch_get(l, s, &b);
            const float *img = b.images + 2 * hw * 3, *msk = b.masks + 2 * hw; /* slot 2 = sample 2 */
            int found = -1;
            for (int k = 0; k < 4 && found < 0; k++)
                if (!memcmp(img, vi[k], hw * 3 * sizeof(float))) found = k;
            assert_true(found >= 0);
            assert_true(cases[c].allowed[found]);
            assert_memory_equal(msk, vm[found], hw * sizeof(float)); /* the mask went along */
            hits[found]++;
        }
        printf("  hflip %d vflip %d: none %d, h %d, v %d, hv %d of 40\n", cases[c].h, cases[c].v,
               hits[0], hits[1], hits[2], hits[3]);
        for (int k = 0; k < 4; k++)
            if (cases[c].allowed[k]) assert_true(hits[k] > 0);
        fisher_loader_free(l);
        batch_free(&b);
    }
    for (int k = 0; k < 4; k++) free(vi[k]), free(vm[k]);
    fisher_dataset_close(ds);
}

/* A grey picture that is white exactly where its mask is foreground: after
 * a scale-crop, wherever the mask says foreground the image must not be
 * pure background, and vice versa (nearest's source pixel is always one of
 * bilinear's taps with a positive weight). */
static void test_scale_crop(void **state) {
    (void)state;
    tree t = new_tree(1);
    int S = 32;
    fisher_image img = {S, S, 1, calloc((size_t)S * S, 1)};
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++)
            if ((x - 13) * (x - 13) + (y - 18) * (y - 18) < 60 || (x > 24 && y < 9)) img.pixels[y * S + x] = 255;
    fisher_error err = {{0}};
    assert_int_equal(fisher_image_save_png(in_tree(&t, "images/disc.png"), &img, &err), 0);
    assert_int_equal(fisher_image_save_png(in_tree(&t, "masks/disc.png"), &img, &err), 0);
    free(img.pixels);
    fisher_dataset *ds = fisher_dataset_open_folder(t.dir, S, S, NULL, BIG_CACHE, &err);
    if (!ds) fail_msg("%s", err.msg);
    size_t hw = (size_t)S * S;
    batch_buf orig = batch_new(ds, 1, S, S), b = batch_new(ds, 1, S, S);
    assert_int_equal(fisher_dataset_get(ds, 0, orig.images, orig.masks, &err), 0);
    fisher_normalization n = fisher_normalization_imagenet();
    float lo[3], hi[3];
    for (int c = 0; c < 3; c++) lo[c] = -n.mean[c] / n.std[c], hi[c] = (1.0f - n.mean[c]) / n.std[c];

    /* scale 1..1 is no crop, whatever the seed */
    fisher_augment none = {0, 0, 1.0f, 1.0f};
    fisher_loader *l = fisher_loader_create(ds, 1, 0, &none, 3, &err);
    batch_get(l, 5, &b);
    assert_true(batch_equal(&b, &orig));
    fisher_loader_free(l);

    /* zoom in, zoom out (padded with 0 = the mean colour, background), both.
     * The mask-follows-image check is exact when the window is enlarged
     * (ratio < 1) or halved (ratio 2): then nearest's source is one of
     * bilinear's taps. Shrinking by other ratios, PyTorch's 'nearest'
     * (⌊dst·r⌋) and bilinear's centre-aligned taps ((dst + ½)·r − ½) can be
     * a source pixel apart, so only the value ranges are checked there. */
    const float ranges[3][2] = {{1.5f, 3.0f}, {0.5f, 0.5f}, {0.4f, 2.5f}};
    for (int r = 0; r < 3; r++) {
        int strict = r < 2;
        fisher_augment zoom = {0, 0, ranges[r][0], ranges[r][1]};
        l = fisher_loader_create(ds, 1, 0, &zoom, 3, &err);
        assert_non_null(l);
        int changed = 0;
        size_t padded = 0, fg = 0;
        for (int64_t s = 0; s < 30; s++) {
            batch_get(l, s, &b);
            changed += !batch_equal(&b, &orig);
            for (size_t k = 0; k < hw; k++) {
                float m = b.masks[k];
                assert_true(m == 0.0f || m == 1.0f);
                fg += m == 1.0f;
                const float *v = b.images + k * 3;
                if (v[0] == 0.0f && v[1] == 0.0f && v[2] == 0.0f) {
                    if (strict) assert_true(m == 0.0f);
                    padded++;
                }
                for (int c = 0; c < 3; c++) {
                    assert_true(v[c] >= lo[c] - 1e-5f && v[c] <= hi[c] + 1e-5f);
                    if (strict && m == 1.0f) assert_true(v[c] > lo[c] + 1e-4f);
                    if (strict && m == 0.0f) assert_true(v[c] < hi[c] - 1e-4f);
                }
            }
        }
        printf("  scale [%.1f, %.1f]: %d of 30 changed, %.1f%% padding, %.1f%% foreground\n",
               (double)ranges[r][0], (double)ranges[r][1], changed, 100.0 * padded / (30.0 * hw),
               100.0 * fg / (30.0 * hw));
        assert_true(changed >= 28);
        if (r == 0) assert_int_equal(padded, 0);
        if (r == 1) assert_true(padded >= 30 * hw / 2); /* a 2× window holds the sample in 1/4 */
        fisher_loader_free(l);
    }
    batch_free(&orig), batch_free(&b);
    fisher_dataset_close(ds);
    rm_tree(t.dir);
}

/* ----------------------------------------------------------------------------
 * Prefetch */

static void test_prefetch_matches_synchronous(void **state) {
    (void)state;
    tree t = mixed_tree(7);
    fisher_error err = {{0}};
    int H = 12, W = 16, B = 3;
    fisher_dataset *cached = fisher_dataset_open_folder(t.dir, H, W, NULL, BIG_CACHE, &err);
    fisher_dataset *lazy = fisher_dataset_open_folder(t.dir, H, W, NULL, 0, &err); /* prefetching */
    assert_non_null(cached), assert_non_null(lazy);
    fisher_augment aug = {1, 1, 1.0f, 2.0f};
    for (int shuffle = 0; shuffle <= 1; shuffle++) {
        fisher_loader *a = fisher_loader_create(cached, B, shuffle, &aug, 77, &err);
        fisher_loader *b = fisher_loader_create(lazy, B, shuffle, &aug, 77, &err);
        assert_non_null(a), assert_non_null(b);
        batch_buf ba = batch_new(cached, B, H, W), bb = batch_new(lazy, B, H, W);
        /* in order, then jumps (the prefetched step is not the one asked for) */
        int64_t steps[] = {0, 1, 2, 3, 4, 5, 6, 7, 11, 3, 4, 4, 0, 9};
        for (size_t k = 0; k < sizeof steps / sizeof *steps; k++) {
            int ra = batch_get(a, steps[k], &ba), rb = batch_get(b, steps[k], &bb);
            assert_int_equal(ra, rb);
            assert_true(batch_equal(&ba, &bb));
        }
        fisher_loader_free(a), fisher_loader_free(b);
        batch_free(&ba), batch_free(&bb);
    }
    /* a loader freed while its thread is busy, and one never asked */
    fisher_loader *l = fisher_loader_create(lazy, B, 1, &aug, 1, &err);
    batch_buf bb = batch_new(lazy, B, H, W);
    batch_get(l, 0, &bb);
    fisher_loader_free(l);
    fisher_loader_free(fisher_loader_create(lazy, B, 1, NULL, 1, &err));
    batch_free(&bb);
    fisher_dataset_close(cached);
    fisher_dataset_close(lazy);
    rm_tree(t.dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_folder_errors),
        cmocka_unit_test(test_folder_pairs_by_stem),
        cmocka_unit_test(test_cached_equals_uncached),
        cmocka_unit_test(test_synthetic_matches_generator),
        cmocka_unit_test(test_synthetic_round_trips_through_a_folder),
        cmocka_unit_test(test_loader_determinism),
        cmocka_unit_test(test_shuffled_epochs_see_each_sample_once),
        cmocka_unit_test(test_in_order_partial_batch),
        cmocka_unit_test(test_loader_errors),
        cmocka_unit_test(test_flips_move_image_and_mask_together),
        cmocka_unit_test(test_scale_crop),
        cmocka_unit_test(test_prefetch_matches_synchronous),
    };
    return cmocka_run_group_tests_name("dataset", tests, NULL, NULL);
}
