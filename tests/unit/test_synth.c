/*
 * test_synth.c — the synthetic crack world (synth.h): samples are a pure
 * function of (domain, seed, index, H, W); masks are binary and sit on what
 * the image shows; each crack domain has empty and non-empty samples and
 * crack fractions in a sensible range; and the domains really look
 * different — asphalt darker than concrete, walls tinted, tiles full of dark
 * grout that is not crack, shapes with far more foreground.
 *
 * Statistics are over fixed seeds, so every run sees the same numbers; they
 * are printed so a change in the generator's look shows up in the log.
 */
#include "testutil.h"

#include "synth.h"

#define N 64 /* samples per statistic */
#define S 128

static const fisher_synth_domain cracks[] = {FISHER_SYNTH_CONCRETE, FISHER_SYNTH_ASPHALT,
                                             FISHER_SYNTH_WALL, FISHER_SYNTH_TILES};
#define NCRACKS (int)(sizeof cracks / sizeof cracks[0])

typedef struct {
    double fg;       /* mean foreground fraction */
    double fg_max;   /* largest foreground fraction of one sample */
    int empty;       /* samples with an all-zero mask */
    double luma;     /* mean luminance, 0..1 */
    double chroma;   /* mean of max(R,G,B) − min(R,G,B), 0..1 */
    double on, off;  /* mean luminance on / off the mask (samples with a crack) */
    double interior; /* of the mask pixels, the fraction whose 4 neighbours are all mask */
    double dark_off; /* per sample with a crack: off-mask pixels darker than the
                      * median crack pixel, per crack pixel (mean over samples) */
} domain_stats;

static double luma_of(const uint8_t *px) {
    return (0.299 * px[0] + 0.587 * px[1] + 0.114 * px[2]) / 255.0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static domain_stats stats_of(fisher_synth_domain d, uint64_t seed, int H, int W) {
    size_t n = (size_t)H * W;
    uint8_t *rgb = malloc(3 * n), *m = malloc(n);
    double *crack_luma = malloc(n * sizeof *crack_luma);
    domain_stats st = {0};
    double on = 0, off = 0, interior = 0, mask_total = 0, dark_off = 0;
    size_t on_n = 0, off_n = 0;
    int with_crack = 0;
    for (int i = 0; i < N; i++) {
        fisher_synth_sample(d, rgb, m, H, W, seed, (uint64_t)i);
        size_t fg = 0, nc = 0;
        for (size_t k = 0; k < n; k++) {
            assert_true(m[k] == 0 || m[k] == 1);
            const uint8_t *px = rgb + 3 * k;
            double l = luma_of(px);
            int mx = px[0] > px[1] ? px[0] : px[1], mn = px[0] < px[1] ? px[0] : px[1];
            mx = px[2] > mx ? px[2] : mx, mn = px[2] < mn ? px[2] : mn;
            st.luma += l, st.chroma += (mx - mn) / 255.0;
            fg += m[k];
            if (m[k]) crack_luma[nc++] = l;
        }
        double frac = (double)fg / (double)n;
        st.fg += frac;
        if (frac > st.fg_max) st.fg_max = frac;
        if (!fg) {
            st.empty++;
            continue;
        }
        with_crack++;
        qsort(crack_luma, nc, sizeof *crack_luma, cmp_double);
        double median = crack_luma[nc / 2];
        size_t darker = 0;
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                size_t k = (size_t)y * W + x;
                double l = luma_of(rgb + 3 * k);
                if (!m[k]) {
                    off += l, off_n++;
                    darker += l < median;
                    continue;
                }
                on += l, on_n++, mask_total++;
                if (y > 0 && y < H - 1 && x > 0 && x < W - 1 && m[k - 1] && m[k + 1] && m[k - W] &&
                    m[k + W])
                    interior++;
            }
        dark_off += (double)darker / (double)nc;
    }
    st.fg /= N, st.luma /= (double)N * n, st.chroma /= (double)N * n;
    st.on = on_n ? on / on_n : 0, st.off = off_n ? off / off_n : 0;
    st.interior = mask_total ? interior / mask_total : 0;
    st.dark_off = with_crack ? dark_off / with_crack : 0;
    printf("  %-8s fg %.4f (max %.3f) empty %2d/%d  luma %.3f chroma %.3f  on/off %.3f/%.3f  "
           "interior %.3f  dark-off %.2f\n",
           fisher_synth_domain_name(d), st.fg, st.fg_max, st.empty, N, st.luma, st.chroma, st.on,
           st.off, st.interior, st.dark_off);
    free(rgb), free(m), free(crack_luma);
    return st;
}

static domain_stats all[FISHER_SYNTH_DOMAINS];

static int setup(void **state) {
    (void)state;
    printf("  statistics over %d samples at %dx%d, seed 3:\n", N, S, S);
    for (int d = 0; d < FISHER_SYNTH_DOMAINS; d++)
        all[d] = stats_of((fisher_synth_domain)d, 3, S, S);
    return 0;
}

static void test_names_round_trip(void **state) {
    (void)state;
    for (int d = 0; d < FISHER_SYNTH_DOMAINS; d++) {
        const char *name = fisher_synth_domain_name((fisher_synth_domain)d);
        assert_non_null(name);
        fisher_synth_domain back = FISHER_SYNTH_DOMAINS;
        assert_int_equal(fisher_synth_domain_parse(name, &back), 0);
        assert_int_equal(back, d);
    }
    assert_string_equal(fisher_synth_domain_name(FISHER_SYNTH_CONCRETE), "concrete");
    assert_string_equal(fisher_synth_domain_name(FISHER_SYNTH_SHAPES), "shapes");
    assert_null(fisher_synth_domain_name(FISHER_SYNTH_DOMAINS));
    const char *bad[] = {"", "Concrete", "concrete ", "brick", "shape", "asphalts"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        fisher_synth_domain d = FISHER_SYNTH_WALL;
        assert_int_equal(fisher_synth_domain_parse(bad[i], &d), -1);
        assert_int_equal(d, FISHER_SYNTH_WALL); /* untouched on failure */
    }
    assert_int_equal(fisher_synth_domain_parse(NULL, NULL), -1);
}

/* Same (domain, seed, index, H, W): the same bytes, whatever came before;
 * change any one of them and the sample changes. */
static void test_deterministic(void **state) {
    (void)state;
    enum { H = 48, W = 80 };
    static uint8_t a[H * W * 3], b[H * W * 3], ma[H * W], mb[H * W];
    for (int d = 0; d < FISHER_SYNTH_DOMAINS; d++) {
        fisher_synth_sample(d, a, ma, H, W, 11, 5);
        for (int i = 0; i < 3; i++) fisher_synth_sample(d, b, mb, H, W, 11, (uint64_t)i);
        fisher_synth_sample(d, b, mb, H, W, 11, 5);
        assert_memory_equal(a, b, sizeof a);
        assert_memory_equal(ma, mb, sizeof ma);
        fisher_synth_sample(d, b, mb, H, W, 11, 6);
        assert_true(memcmp(a, b, sizeof a) != 0);
        fisher_synth_sample(d, b, mb, H, W, 12, 5);
        assert_true(memcmp(a, b, sizeof a) != 0);
        fisher_synth_sample((d + 1) % FISHER_SYNTH_DOMAINS, b, mb, H, W, 11, 5);
        assert_true(memcmp(a, b, sizeof a) != 0);
        fisher_synth_sample(d, b, mb, W, H, 11, 5); /* transposed size */
        assert_true(memcmp(a, b, sizeof a) != 0);
    }
}

/* Odd and tiny sizes work (run under ASan, this checks every write stays
 * inside the H × W buffers) and masks stay binary. */
static void test_any_size(void **state) {
    (void)state;
    const int sizes[][2] = {{1, 1},   {1, 7},   {9, 1},   {3, 200},
                            {200, 3}, {17, 33}, {64, 64}, {300, 260}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        int H = sizes[s][0], W = sizes[s][1];
        size_t n = (size_t)H * W;
        for (int d = 0; d < FISHER_SYNTH_DOMAINS; d++)
            for (uint64_t i = 0; i < 4; i++) {
                uint8_t *rgb = malloc(3 * n), *m = malloc(n);
                fisher_synth_sample(d, rgb, m, H, W, 1, i);
                for (size_t k = 0; k < n; k++) assert_true(m[k] <= 1);
                free(rgb), free(m);
            }
    }
}

/* Exactly one sample in each block of 8 indices has no crack; shapes are
 * never empty. */
static void test_crack_domains_have_empty_and_cracked_samples(void **state) {
    (void)state;
    for (int c = 0; c < NCRACKS; c++) assert_int_equal(all[cracks[c]].empty, N / 8);
    assert_int_equal(all[FISHER_SYNTH_SHAPES].empty, 0);
    enum { H = 32, W = 32 };
    static uint8_t rgb[H * W * 3], m[H * W];
    for (int c = 0; c < NCRACKS; c++)
        for (uint64_t block = 1000; block < 1004; block++) {
            int empty = 0;
            for (uint64_t i = 8 * block; i < 8 * block + 8; i++) {
                fisher_synth_sample(cracks[c], rgb, m, H, W, 77, i);
                size_t fg = 0;
                for (size_t k = 0; k < sizeof m; k++) fg += m[k];
                empty += fg == 0;
            }
            assert_int_equal(empty, 1);
        }
}

/* Cracks are a few per cent of the image, never most of it. */
static void test_crack_fraction(void **state) {
    (void)state;
    for (int c = 0; c < NCRACKS; c++) {
        const domain_stats *st = &all[cracks[c]];
        assert_true(st->fg > 0.005 && st->fg < 0.08);
        assert_true(st->fg_max < 0.2);
    }
    /* asphalt's cracks are wider, wall's hairline */
    assert_true(all[FISHER_SYNTH_ASPHALT].fg > all[FISHER_SYNTH_CONCRETE].fg);
    assert_true(all[FISHER_SYNTH_WALL].fg < all[FISHER_SYNTH_CONCRETE].fg);
}

/* Width, measured as how much of the mask is interior (all four neighbours
 * crack): hairlines have almost none, asphalt's wide cracks much. */
static void test_crack_widths(void **state) {
    (void)state;
    assert_true(all[FISHER_SYNTH_WALL].interior < 0.1);
    assert_true(all[FISHER_SYNTH_CONCRETE].interior > all[FISHER_SYNTH_WALL].interior);
    assert_true(all[FISHER_SYNTH_ASPHALT].interior > 0.4);
    assert_true(all[FISHER_SYNTH_ASPHALT].interior > 2 * all[FISHER_SYNTH_CONCRETE].interior);
}

/* The mask sits on what the image shows: crack pixels are darker than the
 * rest; shapes' foreground differs from the background in colour. */
static void test_mask_matches_image(void **state) {
    (void)state;
    for (int c = 0; c < NCRACKS; c++) {
        const domain_stats *st = &all[cracks[c]];
        assert_true(st->on < 0.75 * st->off);
    }
    assert_true(all[FISHER_SYNTH_CONCRETE].on < 0.5 * all[FISHER_SYNTH_CONCRETE].off);
}

/* Tiles: the grout lines are as dark as cracks but are not in the mask. In
 * concrete few pixels off the crack are as dark as it; in tiles many more. */
static void test_tile_grout_is_not_crack(void **state) {
    (void)state;
    assert_true(all[FISHER_SYNTH_TILES].dark_off > 0.5);
    assert_true(all[FISHER_SYNTH_TILES].dark_off > 10 * all[FISHER_SYNTH_CONCRETE].dark_off);

    /* Per image: most of the darkest tenth of the pixels is off the mask; and
     * long straight dark lines off the mask — a whole row or column (≥ 90 %
     * of it) darker than 3/4 of the image's median and not crack — show up
     * in tiles (whose grid is axis-aligned half the time) and never in
     * concrete. */
    size_t n = (size_t)S * S;
    uint8_t *rgb = malloc(3 * n), *m = malloc(n);
    double *l = malloc(n * sizeof *l), *sorted = malloc(n * sizeof *sorted);
    int cracked = 0, grout_darkest = 0, lines[2] = {0, 0};
    for (int pass = 0; pass < 2; pass++) {
        fisher_synth_domain d = pass ? FISHER_SYNTH_CONCRETE : FISHER_SYNTH_TILES;
        for (uint64_t i = 0; i < 32; i++) {
            fisher_synth_sample(d, rgb, m, S, S, 4, i);
            size_t fg = 0;
            for (size_t k = 0; k < n; k++) l[k] = luma_of(rgb + 3 * k), fg += m[k];
            memcpy(sorted, l, n * sizeof *sorted);
            qsort(sorted, n, sizeof *sorted, cmp_double);
            double dark_cut = 0.75 * sorted[n / 2];
            int line = 0;
            for (int r = 0; r < S && !line; r++) {
                int row = 0, col = 0;
                for (int c = 0; c < S; c++) {
                    size_t kr = (size_t)r * S + c, kc = (size_t)c * S + r;
                    row += !m[kr] && l[kr] < dark_cut;
                    col += !m[kc] && l[kc] < dark_cut;
                }
                line = row >= S * 9 / 10 || col >= S * 9 / 10;
            }
            lines[pass] += line;
            if (pass || !fg) continue;
            cracked++;
            double cut = sorted[n / 10];
            size_t dark = 0, dark_on = 0;
            for (size_t k = 0; k < n; k++)
                if (l[k] <= cut) dark++, dark_on += m[k];
            grout_darkest += dark_on < dark / 2;
        }
    }
    printf("  tiles: in %d of %d cracked images most of the darkest tenth is off the mask; "
           "straight dark lines off the mask in %d of 32 tile images, %d of 32 concrete\n",
           grout_darkest, cracked, lines[0], lines[1]);
    assert_true(cracked > 20);
    assert_true(grout_darkest > cracked * 3 / 4);
    assert_true(lines[0] >= 8);
    assert_int_equal(lines[1], 0);
    free(rgb), free(m), free(l), free(sorted);
}

static void test_shapes_have_more_foreground(void **state) {
    (void)state;
    const domain_stats *sh = &all[FISHER_SYNTH_SHAPES];
    assert_true(sh->fg > 0.08 && sh->fg < 0.6);
    for (int c = 0; c < NCRACKS; c++) assert_true(sh->fg > 3 * all[cracks[c]].fg);
}

/* The domains look different: asphalt dark, concrete light grey, wall
 * tinted and smooth, shapes colourful. */
static void test_domains_differ(void **state) {
    (void)state;
    const domain_stats *co = &all[FISHER_SYNTH_CONCRETE], *as = &all[FISHER_SYNTH_ASPHALT],
                       *wa = &all[FISHER_SYNTH_WALL], *sh = &all[FISHER_SYNTH_SHAPES];
    assert_true(co->luma > 0.45 && co->luma < 0.8);
    assert_true(as->luma < 0.4);
    assert_true(as->luma < co->luma - 0.2);
    assert_true(co->chroma < 0.05);
    assert_true(wa->chroma > 0.08);
    assert_true(wa->chroma > 2 * co->chroma);
    assert_true(sh->chroma > wa->chroma);
}

/* fisher_synth_crack is the concrete sample, ImageNet-normalised. */
static void test_crack_is_normalised_concrete(void **state) {
    (void)state;
    enum { H = 40, W = 56 };
    static const float mean[3] = {0.485f, 0.456f, 0.406f}, std[3] = {0.229f, 0.224f, 0.225f};
    static uint8_t rgb[H * W * 3], m[H * W];
    static float img[H * W * 3], mask[H * W];
    for (uint64_t i = 0; i < 16; i++) {
        fisher_synth_sample(FISHER_SYNTH_CONCRETE, rgb, m, H, W, 21, i);
        fisher_synth_crack(img, mask, H, W, 21, i);
        for (size_t k = 0; k < (size_t)H * W; k++) {
            assert_true(mask[k] == (float)m[k]);
            for (int c = 0; c < 3; c++)
                assert_true(img[3 * k + c] ==
                            ((float)rgb[3 * k + c] * (1.0f / 255.0f) - mean[c]) / std[c]);
        }
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_round_trip),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_any_size),
        cmocka_unit_test(test_crack_domains_have_empty_and_cracked_samples),
        cmocka_unit_test(test_crack_fraction),
        cmocka_unit_test(test_crack_widths),
        cmocka_unit_test(test_mask_matches_image),
        cmocka_unit_test(test_tile_grout_is_not_crack),
        cmocka_unit_test(test_shapes_have_more_foreground),
        cmocka_unit_test(test_domains_differ),
        cmocka_unit_test(test_crack_is_normalised_concrete),
    };
    return cmocka_run_group_tests_name("synth", tests, setup, NULL);
}
