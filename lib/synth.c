/*
 * synth.c — the synthetic crack world: five visual domains of RGB images
 * with exact masks, drawn from nothing but a seed (see synth.h).
 *
 * A sample comes from one xoshiro stream seeded by a hash of (domain, seed,
 * index, H, W), in four passes:
 *   1. geometry: cracks (in `shapes`: blobs, boxes and strokes) are stamped
 *      into the mask buffer as coverage codes, combined by max so that
 *      overlapping stamps never darken twice —
 *          0          untouched
 *          1..127     soft edge just outside a crack: alpha code/127
 *          128..255   the crack itself: alpha (code − 128)/127;
 *   2. background: every pixel's colour from the domain's texture — value
 *      noise on hashed lattices, evaluated row by row with the lattice
 *      corners cached, plus per-pixel grain;
 *   3. details stamped over the background: pores, stones, ...;
 *   4. finish: each coded pixel is blended toward the crack colour by its
 *      alpha, and the mask becomes 1 iff its code was ≥ 128.
 * So the mask is exactly the crack as drawn; the soft edge that anti-aliases
 * it lies outside the mask.
 *
 * Scale. Fine features (crack widths, grain, pores, stones, grout) are in
 * pixels as stated at 128–256 px images and scale proportionally outside
 * that range (factor `ws`), never below half a pixel of radius; large
 * features (crack length, illumination) are fractions of the image.
 *
 * Determinism. Only integer hashing, + − × ÷, floorf and sqrtf (exactly
 * rounded in IEEE arithmetic) and no contracted multiply-adds; no libm
 * transcendentals, whose last bits may differ between C libraries: sines
 * and cosines come from a fixed polynomial, normal deviates from a sum of
 * uniforms. The same bytes at -O0 and -O3, from GCC and clang. No globals,
 * no allocation (the API returns nothing, so nothing may fail).
 */
#include "synth.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

#include "rng.h"

/* A fused multiply-add rounds once where a*b+c rounds twice, so contraction
 * would make the bytes depend on the compiler and -march. GCC does not
 * contract under -std=c11 (the Makefile's); clang must be told. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

#define PI_F 3.14159265f
#define TWO_PI_F 6.28318531f

static const char *const domain_names[FISHER_SYNTH_DOMAINS] = {"concrete", "asphalt", "wall",
                                                               "tiles", "shapes"};

/* NULL for a value that is not a domain. */
const char *fisher_synth_domain_name(fisher_synth_domain domain) {
    return (unsigned)domain < FISHER_SYNTH_DOMAINS ? domain_names[domain] : NULL;
}

int fisher_synth_domain_parse(const char *name, fisher_synth_domain *domain) {
    if (!name) return -1;
    for (int d = 0; d < FISHER_SYNTH_DOMAINS; d++)
        if (strcmp(name, domain_names[d]) == 0) {
            if (domain) *domain = (fisher_synth_domain)d;
            return 0;
        }
    return -1;
}

/* ---- small numerics ------------------------------------------------------ */

static float range(fisher_rng *rng, float lo, float hi) {
    return lo + (hi - lo) * fisher_rng_uniform(rng);
}

static int chance(fisher_rng *rng, float p) { return fisher_rng_uniform(rng) < p; }

/* Approximately standard normal: the sum of four 16-bit uniforms, rescaled
 * (bounded at ±3.46, which suits every use here). */
static float gauss(fisher_rng *rng) {
    uint64_t b = fisher_rng_next(rng);
    float s = (float)(b & 0xffff) + (float)((b >> 16) & 0xffff) + (float)((b >> 32) & 0xffff) +
              (float)(b >> 48);
    return (s * (1.0f / 65536.0f) - 2.0f) * 1.7320508f;
}

/* sin and cos of any angle: reduced to [−π/2, π/2], then Taylor to x^9 / x^10
 * (error < 4e-6). */
static void sincos_poly(float a, float *s, float *c) {
    a -= TWO_PI_F * floorf(a * (1.0f / TWO_PI_F) + 0.5f);
    float sign = 1.0f;
    if (a > 0.5f * PI_F)
        a = PI_F - a, sign = -1.0f;
    else if (a < -0.5f * PI_F)
        a = -PI_F - a, sign = -1.0f;
    float a2 = a * a;
    *s = a *
         (1.0f + a2 * (-1.0f / 6 + a2 * (1.0f / 120 + a2 * (-1.0f / 5040 + a2 * (1.0f / 362880)))));
    *c = sign *
         (1.0f + a2 * (-0.5f +
                       a2 * (1.0f / 24 + a2 * (-1.0f / 720 + a2 * (1.0f / 40320 - a2 / 3628800)))));
}

static float smooth(float t) { return t * t * (3.0f - 2.0f * t); }

static float clampf(float v, float lo, float hi) { return v < lo ? lo : v > hi ? hi : v; }

static uint8_t to8(float v) { return (uint8_t)(clampf(v, 0.0f, 1.0f) * 255.0f + 0.5f); }

static void put(uint8_t *px, float r, float g, float b) {
    px[0] = to8(r), px[1] = to8(g), px[2] = to8(b);
}

static uint32_t hash3(uint32_t seed, int32_t x, int32_t y) {
    uint32_t h = seed ^ ((uint32_t)x * 0x9e3779b1u) ^ ((uint32_t)y * 0x85ebca77u);
    h ^= h >> 16, h *= 0x7feb352du;
    h ^= h >> 15, h *= 0x846ca68bu;
    return h ^ (h >> 16);
}

static float hash_unit(uint32_t seed, int32_t x, int32_t y) {
    return (float)(hash3(seed, x, y) >> 8) * (1.0f / 16777216.0f);
}

static uint64_t mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* ---- value noise --------------------------------------------------------
 * Random values on a lattice of cell_x × cell_y pixels (hashed from the
 * lattice point, so nothing is stored), smoothstep-interpolated. Evaluate a
 * row with vnoise_row(), then vnoise_at() for x left to right: the two
 * lattice columns around x are cached, so most pixels cost one lerp. */

typedef struct {
    uint32_t seed;
    float sx, sy, ox, oy; /* lattice units per pixel; lattice offset */
    int32_t iy, ix;       /* the row's lattice row; cached lattice column */
    float wy, left, right;
} vnoise;

static void vnoise_init(vnoise *n, fisher_rng *rng, float cell_x, float cell_y) {
    n->seed = (uint32_t)fisher_rng_next(rng);
    n->sx = 1.0f / (cell_x < 1.0f ? 1.0f : cell_x);
    n->sy = 1.0f / (cell_y < 1.0f ? 1.0f : cell_y);
    n->ox = range(rng, 0.0f, 64.0f), n->oy = range(rng, 0.0f, 64.0f);
    n->iy = 0, n->ix = 0, n->wy = n->left = n->right = 0.0f;
}

static void vnoise_row(vnoise *n, int y) {
    float fy = ((float)y + 0.5f) * n->sy + n->oy, fl = floorf(fy);
    n->iy = (int32_t)fl, n->wy = smooth(fy - fl);
    n->ix = INT32_MIN;
}

static float vnoise_column(const vnoise *n, int32_t ix) {
    float a = hash_unit(n->seed, ix, n->iy), b = hash_unit(n->seed, ix, n->iy + 1);
    return a + (b - a) * n->wy;
}

/* In [0, 1). */
static float vnoise_at(vnoise *n, int x) {
    float fx = ((float)x + 0.5f) * n->sx + n->ox, fl = floorf(fx);
    int32_t ix = (int32_t)fl;
    if (ix != n->ix) {
        n->left = ix == n->ix + 1 ? n->right : vnoise_column(n, ix);
        n->right = vnoise_column(n, ix + 1);
        n->ix = ix;
    }
    return n->left + (n->right - n->left) * smooth(fx - fl);
}

/* ---- the image ---------------------------------------------------------- */

typedef struct {
    int H, W;
    float S;    /* shorter side, px */
    float ws;   /* scale of fine features: 1 at 128–256 px, proportional outside */
    float diag; /* diagonal, px */
} geom;

static geom geom_of(int H, int W) {
    geom g = {H, W, (float)(H < W ? H : W), 1.0f, sqrtf((float)H * (float)H + (float)W * (float)W)};
    if (g.S < 128.0f) g.ws = g.S / 128.0f;
    if (g.S > 256.0f) g.ws = g.S / 256.0f;
    if (g.ws < 0.25f) g.ws = 0.25f;
    return g;
}

/* The pixels within ry rows and rx columns of (y, x), clipped to the image
 * (empty when i0 > i1 or j0 > j1). */
typedef struct {
    int i0, i1, j0, j1;
} box;

static box box_around(const geom *g, float y, float x, float ry, float rx) {
    box b = {(int)floorf(y - ry), (int)floorf(y + ry), (int)floorf(x - rx), (int)floorf(x + rx)};
    if (b.i0 < 0) b.i0 = 0;
    if (b.j0 < 0) b.j0 = 0;
    if (b.i1 > g->H - 1) b.i1 = g->H - 1;
    if (b.j1 > g->W - 1) b.j1 = g->W - 1;
    return b;
}

/* Per-pixel grain: three uniforms in [−0.5, 0.5) from one draw. */
static void grain3(fisher_rng *rng, float *a, float *b, float *c) {
    uint64_t r = fisher_rng_next(rng);
    *a = (float)(r & 0xffff) * (1.0f / 65536.0f) - 0.5f;
    *b = (float)((r >> 16) & 0xffff) * (1.0f / 65536.0f) - 0.5f;
    *c = (float)((r >> 32) & 0xffff) * (1.0f / 65536.0f) - 0.5f;
}

/* ---- cracks ---------------------------------------------------------------
 * A crack grows from a point in two arms, widest at the origin and tapering
 * to its tips; each arm is a walk of half-pixel steps. Its direction is a
 * heading that drifts slowly (a random walk) and sometimes kinks, plus a
 * jag: a deviation that decorrelates over a few pixels, so the crack zig-zags
 * at small scale yet keeps its course. Now and then it sheds a thinner
 * branch (depth ≤ 2). Every step stamps a disc: pixels whose centre
 * is within the radius, and the pixel under the centre line itself (so a
 * thin crack stays connected), are the crack; a ring of `halo` px around it
 * is its soft edge. */

typedef struct {
    float r_lo, r_hi;     /* radius at the widest point, px (scaled by ws) */
    float halo, edge;     /* soft-edge width (px) and alpha relative to the crack */
    float a_lo, a_hi;     /* alpha of the crack toward the crack colour */
    float len_lo, len_hi; /* length, image diagonals */
    float jag, jag_len;   /* s.d. (rad) and correlation length (px) of the zig-zag */
    float drift;          /* s.d. of the heading's random walk, rad per √px */
    float kink, kink_max; /* probability per px of a sudden turn; its largest angle */
    float branch;         /* probability per px of a branch */
    float rough;          /* relative wobble of the width */
    int taper;            /* narrow toward the tips */
    int max_cracks;
} crack_style;

typedef struct {
    float y, x, heading, r, len, alpha;
    int depth;
} crack_arm;

/* Marks the disc of radius r around (y, x) as crack and the ring out to
 * r + halo as soft edge, fading outward (codes as in the file comment). */
static void stamp(uint8_t *cov, const geom *g, float y, float x, float r, float halo, float alpha,
                  float edge) {
    float R = halo > 0.0f ? r + halo : r;
    box b = box_around(g, y, x, R, R);
    int ci = (int)floorf(y), cj = (int)floorf(x);
    uint8_t in = (uint8_t)(128.0f + 127.0f * alpha + 0.5f);
    for (int i = b.i0; i <= b.i1; i++) {
        float dy = (float)i + 0.5f - y;
        uint8_t *row = cov + (size_t)i * g->W;
        for (int j = b.j0; j <= b.j1; j++) {
            float dx = (float)j + 0.5f - x, d2 = dx * dx + dy * dy;
            uint8_t code;
            if (d2 <= r * r || (i == ci && j == cj))
                code = in;
            else if (d2 < R * R)
                code = (uint8_t)(127.0f * edge * alpha * (1.0f - (sqrtf(d2) - r) / halo));
            else
                continue;
            if (code > row[j]) row[j] = code;
        }
    }
}

static void walk_arm(fisher_rng *rng, uint8_t *cov, const geom *g, const crack_style *st,
                     crack_arm arm, crack_arm *stack, int *sp, int cap) {
    const float h = 0.5f, rmin = 0.5f;
    int steps = (int)(arm.len / h);
    float y = arm.y, x = arm.x, heading = arm.heading, dev = 0.0f, wob = 0.0f;
    float halo = st->halo * g->ws;
    float rho = st->jag_len > h ? 1.0f - h / st->jag_len : 0.0f;
    float kick = st->jag * sqrtf(1.0f - rho * rho), drift = st->drift * sqrtf(h);
    for (int s = 0; s < steps; s++) {
        float t = (float)s / (float)steps;
        float r = st->taper ? rmin + (arm.r - rmin) * (1.0f - t * t) : arm.r;
        r *= 1.0f + st->rough * wob;
        if (r < rmin) r = rmin;
        float alpha = st->taper ? arm.alpha * (1.0f - 0.4f * t * t) : arm.alpha;
        stamp(cov, g, y, x, r, halo, alpha, st->edge);

        wob = clampf(0.96f * wob + 0.2f * gauss(rng), -1.0f, 1.0f);
        dev = rho * dev + kick * gauss(rng);
        heading += drift * gauss(rng);
        if (chance(rng, st->kink * h)) heading += range(rng, -st->kink_max, st->kink_max);
        if (arm.depth < 2 && *sp < cap && chance(rng, st->branch * h)) {
            float side = chance(rng, 0.5f) ? 1.0f : -1.0f;
            crack_arm b = {y,
                           x,
                           heading + side * range(rng, 0.35f, 1.1f),
                           arm.r * range(rng, 0.4f, 0.7f),
                           (float)(steps - s) * h * range(rng, 0.3f, 0.8f),
                           arm.alpha * 0.9f,
                           arm.depth + 1};
            if (b.r < rmin) b.r = rmin;
            stack[(*sp)++] = b;
        }
        float sn, cs;
        sincos_poly(heading + dev, &sn, &cs);
        y += sn * h, x += cs * h;
        float m = r + halo + 2.0f;
        if (y < -m || x < -m || y > (float)g->H + m || x > (float)g->W + m) break;
    }
}

/* One crack from (y, x) with its widest radius r. */
static void draw_crack(fisher_rng *rng, uint8_t *cov, const geom *g, const crack_style *st, float y,
                       float x, float r, float alpha) {
    enum { CAP = 24 };
    crack_arm stack[CAP];
    int sp = 0;
    float heading = range(rng, 0.0f, TWO_PI_F), len = g->diag * range(rng, st->len_lo, st->len_hi);
    float split = range(rng, 0.3f, 0.7f);
    stack[sp++] = (crack_arm){y, x, heading, r, len * split, alpha, 0};
    stack[sp++] = (crack_arm){y, x, heading + PI_F, r, len * (1.0f - split), alpha, 0};
    while (sp > 0) {
        crack_arm arm = stack[--sp];
        walk_arm(rng, cov, g, st, arm, stack, &sp, CAP);
    }
}

/* 1 to max_cracks cracks. */
static void draw_cracks(fisher_rng *rng, uint8_t *cov, const geom *g, const crack_style *st) {
    int n = 1;
    while (n < st->max_cracks && chance(rng, 0.35f)) n++;
    for (int c = 0; c < n; c++) {
        float y = range(rng, 0.15f, 0.85f) * (float)g->H,
              x = range(rng, 0.15f, 0.85f) * (float)g->W;
        float r = g->ws * range(rng, st->r_lo, st->r_hi);
        draw_crack(rng, cov, g, st, y, x, r < 0.5f ? 0.5f : r, range(rng, st->a_lo, st->a_hi));
    }
}

/* Pass 4: blend coded pixels toward `crack` (0..1 RGB), binarise the mask. */
static void finish(uint8_t *rgb, uint8_t *mask, const geom *g, const float crack[3]) {
    size_t n = (size_t)g->H * (size_t)g->W;
    for (size_t k = 0; k < n; k++) {
        unsigned c = mask[k];
        if (!c) continue;
        float a = c >= 128 ? (float)(c - 128) * (1.0f / 127.0f) : (float)c * (1.0f / 127.0f);
        uint8_t *px = rgb + 3 * k;
        for (int ch = 0; ch < 3; ch++) {
            float v = (float)px[ch] * (1.0f / 255.0f);
            px[ch] = to8(v + (crack[ch] - v) * a);
        }
        mask[k] = c >= 128;
    }
}

/* Multiplies the soft disc of radius R around (y, x) by `factor` (RGB) at its
 * centre, fading to 1 at its rim; returns nothing, touches only rgb. */
static void shade_disc(uint8_t *rgb, const geom *g, float y, float x, float R,
                       const float factor[3]) {
    box b = box_around(g, y, x, R, R);
    float inv = 1.0f / (R * R);
    for (int i = b.i0; i <= b.i1; i++)
        for (int j = b.j0; j <= b.j1; j++) {
            float dy = (float)i + 0.5f - y, dx = (float)j + 0.5f - x, q = (dx * dx + dy * dy) * inv;
            if (q >= 1.0f) continue;
            float w = 1.0f - q * q;
            uint8_t *px = rgb + 3 * ((size_t)i * g->W + j);
            for (int ch = 0; ch < 3; ch++)
                px[ch] = to8((float)px[ch] * (1.0f / 255.0f) * (1.0f + (factor[ch] - 1.0f) * w));
        }
}

/* ---- concrete ------------------------------------------------------------ */

static const crack_style concrete_cracks = {
    .r_lo = 0.5f,
    .r_hi = 2.0f,
    .halo = 1.2f,
    .edge = 0.45f,
    .a_lo = 0.7f,
    .a_hi = 0.92f,
    .len_lo = 0.5f,
    .len_hi = 1.3f,
    .jag = 0.3f,
    .jag_len = 4.0f,
    .drift = 0.03f,
    .kink = 0.01f,
    .kink_max = 0.5f,
    .branch = 0.008f,
    .rough = 0.25f,
    .taper = 1,
    .max_cracks = 3,
};

static void render_concrete(fisher_rng *rng, uint8_t *rgb, uint8_t *mask, const geom *g,
                            int cracked) {
    if (cracked) draw_cracks(rng, mask, g, &concrete_cracks);

    float base = range(rng, 0.56f, 0.72f), warm = range(rng, -0.025f, 0.025f);
    float tint[3] = {1.0f + warm, 1.0f, 1.0f - warm};
    float gs, gc, grad = range(rng, 0.0f, 0.25f);
    sincos_poly(range(rng, 0.0f, TWO_PI_F), &gs, &gc);
    vnoise illum, blotch, mid, fine;
    vnoise_init(&illum, rng, 0.7f * g->S, 0.7f * g->S);
    vnoise_init(&blotch, rng, 0.15f * g->S, 0.15f * g->S);
    vnoise_init(&mid, rng, 5.0f * g->ws, 5.0f * g->ws);
    vnoise_init(&fine, rng, 1.6f * g->ws, 1.6f * g->ws);
    float grain = range(rng, 0.04f, 0.07f);
    for (int y = 0; y < g->H; y++) {
        vnoise_row(&illum, y), vnoise_row(&blotch, y), vnoise_row(&mid, y), vnoise_row(&fine, y);
        float v = ((float)y + 0.5f) / (float)g->H - 0.5f;
        for (int x = 0; x < g->W; x++) {
            float u = ((float)x + 0.5f) / (float)g->W - 0.5f, e0, e1, e2;
            grain3(rng, &e0, &e1, &e2);
            float light = 1.0f + grad * (u * gc + v * gs) + 0.25f * (vnoise_at(&illum, x) - 0.5f);
            float L = base + 0.10f * (vnoise_at(&blotch, x) - 0.5f) +
                      0.09f * (vnoise_at(&mid, x) - 0.5f) + 0.08f * (vnoise_at(&fine, x) - 0.5f) +
                      grain * (e0 + e1);
            L *= light;
            put(rgb + 3 * ((size_t)y * g->W + x), L * tint[0] + 0.01f * e2, L * tint[1],
                L * tint[2] - 0.01f * e2);
        }
    }
    /* pores: small dark pits */
    int pores =
        (int)((float)g->H * (float)g->W / (g->ws * g->ws * 260.0f) * range(rng, 0.3f, 1.5f));
    for (int p = 0; p < pores; p++) {
        float y = range(rng, 0.0f, (float)g->H), x = range(rng, 0.0f, (float)g->W);
        float R = g->ws * range(rng, 0.7f, 2.2f), f = range(rng, 0.45f, 0.8f);
        float fac[3] = {f, f, f};
        shade_disc(rgb, g, y, x, R < 0.7f ? 0.7f : R, fac);
    }
    float dark = range(rng, 0.1f, 0.2f);
    float crack[3] = {dark * tint[0], dark * tint[1], dark * tint[2]};
    finish(rgb, mask, g, crack);
}

/* ---- asphalt ------------------------------------------------------------- */

static const crack_style asphalt_cracks = {
    .r_lo = 1.5f,
    .r_hi = 4.0f,
    .halo = 1.5f,
    .edge = 0.35f,
    .a_lo = 0.7f,
    .a_hi = 0.85f,
    .len_lo = 0.6f,
    .len_hi = 1.4f,
    .jag = 0.35f,
    .jag_len = 6.0f,
    .drift = 0.04f,
    .kink = 0.015f,
    .kink_max = 0.6f,
    .branch = 0.006f,
    .rough = 0.45f,
    .taper = 1,
    .max_cracks = 2,
};

static void render_asphalt(fisher_rng *rng, uint8_t *rgb, uint8_t *mask, const geom *g,
                           int cracked) {
    if (cracked) draw_cracks(rng, mask, g, &asphalt_cracks);

    float base = range(rng, 0.17f, 0.28f), blue = range(rng, 0.0f, 0.03f);
    vnoise patch, mid;
    vnoise_init(&patch, rng, 0.3f * g->S, 0.3f * g->S);
    vnoise_init(&mid, rng, 4.0f * g->ws, 4.0f * g->ws);
    for (int y = 0; y < g->H; y++) {
        vnoise_row(&patch, y), vnoise_row(&mid, y);
        for (int x = 0; x < g->W; x++) {
            float e0, e1, e2;
            grain3(rng, &e0, &e1, &e2);
            float L = base * (1.0f + 0.35f * (vnoise_at(&patch, x) - 0.5f)) +
                      0.05f * (vnoise_at(&mid, x) - 0.5f) + 0.07f * e0 + 0.05f * e1;
            put(rgb + 3 * ((size_t)y * g->W + x), L, L, L * (1.0f + blue) + 0.01f * e2);
        }
    }
    /* aggregate: bright, slightly coloured stones, lit from one side */
    float ls, lc;
    sincos_poly(range(rng, 0.0f, TWO_PI_F), &ls, &lc);
    int stones =
        (int)((float)g->H * (float)g->W / (g->ws * g->ws * 16.0f) * range(rng, 0.7f, 1.3f));
    for (int k = 0; k < stones; k++) {
        float cy = range(rng, -2.0f, (float)g->H + 2.0f),
              cx = range(rng, -2.0f, (float)g->W + 2.0f);
        float a = g->ws * range(rng, 1.0f, 3.5f), b = a * range(rng, 0.5f, 1.0f);
        if (a < 0.6f) a = 0.6f;
        if (b < 0.5f) b = 0.5f;
        float os, oc;
        sincos_poly(range(rng, 0.0f, PI_F), &os, &oc);
        float v = range(rng, 0.28f, 0.66f), warm = range(rng, -0.05f, 0.06f);
        float col[3] = {v * (1.0f + warm), v, v * (1.0f - warm)};
        box bx = box_around(g, cy, cx, a, a);
        for (int i = bx.i0; i <= bx.i1; i++)
            for (int j = bx.j0; j <= bx.j1; j++) {
                float dy = (float)i + 0.5f - cy, dx = (float)j + 0.5f - cx;
                float u = (dx * oc + dy * os) / a, w = (-dx * os + dy * oc) / b, q = u * u + w * w;
                if (q >= 1.0f) continue;
                float lit = 1.0f + 0.25f * ((dx * lc + dy * ls) / a) - 0.2f * q;
                float cover = q < 0.6f ? 1.0f : (1.0f - q) * 2.5f;
                uint8_t *px = rgb + 3 * ((size_t)i * g->W + j);
                for (int ch = 0; ch < 3; ch++) {
                    float p = (float)px[ch] * (1.0f / 255.0f);
                    px[ch] = to8(p + (col[ch] * lit - p) * cover);
                }
            }
    }
    float crack[3] = {0.05f, 0.05f, 0.055f};
    finish(rgb, mask, g, crack);
}

/* ---- wall ---------------------------------------------------------------- */

static const crack_style wall_cracks = {
    .r_lo = 0.5f,
    .r_hi = 0.9f,
    .halo = 0.9f,
    .edge = 0.35f,
    .a_lo = 0.55f,
    .a_hi = 0.85f,
    .len_lo = 0.4f,
    .len_hi = 1.1f,
    .jag = 0.45f,
    .jag_len = 3.0f,
    .drift = 0.04f,
    .kink = 0.03f,
    .kink_max = 0.6f,
    .branch = 0.012f,
    .rough = 0.2f,
    .taper = 1,
    .max_cracks = 3,
};

static void render_wall(fisher_rng *rng, uint8_t *rgb, uint8_t *mask, const geom *g, int cracked) {
    if (cracked) draw_cracks(rng, mask, g, &wall_cracks);

    static const float paints[][3] = {
        {0.93f, 0.87f, 0.72f}, /* cream */
        {0.72f, 0.81f, 0.90f}, /* pale blue */
        {0.76f, 0.86f, 0.72f}, /* sage */
        {0.93f, 0.76f, 0.68f}, /* salmon */
        {0.95f, 0.91f, 0.62f}, /* lemon */
        {0.83f, 0.78f, 0.91f}, /* lavender */
        {0.90f, 0.82f, 0.80f}, /* dusty pink */
        {0.70f, 0.88f, 0.86f}, /* mint */
    };
    const float *p = paints[fisher_rng_next(rng) % (sizeof paints / sizeof paints[0])];
    float bright = range(rng, 0.78f, 1.0f), paint[3];
    for (int c = 0; c < 3; c++)
        paint[c] = clampf(p[c] * bright + range(rng, -0.04f, 0.04f), 0.0f, 1.0f);

    float gs, gc, grad = range(rng, 0.05f, 0.3f);
    sincos_poly(range(rng, 0.0f, TWO_PI_F), &gs, &gc);
    vnoise shade, peel, brush;
    vnoise_init(&shade, rng, 0.8f * g->S, 0.8f * g->S);
    vnoise_init(&peel, rng, 2.5f * g->ws, 2.5f * g->ws);
    int vertical = chance(rng, 0.5f);
    vnoise_init(&brush, rng, (vertical ? 1.5f : 24.0f) * g->ws, (vertical ? 24.0f : 1.5f) * g->ws);

    /* stains: soft irregular patches, brownish, with a darker tide line */
    enum { MAX_STAINS = 3 };
    struct stain {
        float cy, cx, a, b, os, oc, strength; /* centre, semi-axes, orientation */
        vnoise edge;
    } stain[MAX_STAINS];
    int stains = 0;
    while (stains < MAX_STAINS && chance(rng, 0.55f)) {
        struct stain *st = &stain[stains++];
        st->cy = range(rng, 0.0f, (float)g->H);
        st->cx = range(rng, 0.0f, (float)g->W);
        st->a = g->S * range(rng, 0.1f, 0.35f);
        st->b = st->a * range(rng, 0.4f, 1.0f);
        sincos_poly(range(rng, 0.0f, PI_F), &st->os, &st->oc);
        st->strength = range(rng, 0.08f, 0.25f);
        vnoise_init(&st->edge, rng, st->a * 0.35f, st->a * 0.35f);
    }
    const float stain_col[3] = {0.78f, 0.66f, 0.45f}; /* multiplies the paint */

    for (int y = 0; y < g->H; y++) {
        vnoise_row(&shade, y), vnoise_row(&peel, y), vnoise_row(&brush, y);
        for (int s = 0; s < stains; s++) vnoise_row(&stain[s].edge, y);
        float v = ((float)y + 0.5f) / (float)g->H - 0.5f;
        for (int x = 0; x < g->W; x++) {
            float u = ((float)x + 0.5f) / (float)g->W - 0.5f, e0, e1, e2;
            grain3(rng, &e0, &e1, &e2);
            float L = 1.0f + grad * (u * gc + v * gs) + 0.18f * (vnoise_at(&shade, x) - 0.5f) +
                      0.035f * (vnoise_at(&peel, x) - 0.5f) +
                      0.02f * (vnoise_at(&brush, x) - 0.5f) + 0.015f * e0;
            float col[3] = {paint[0] * L, paint[1] * L, paint[2] * L};
            for (int s = 0; s < stains; s++) {
                float dy = (float)y + 0.5f - stain[s].cy, dx = (float)x + 0.5f - stain[s].cx;
                float su = (dx * stain[s].oc + dy * stain[s].os) / stain[s].a;
                float sv = (-dx * stain[s].os + dy * stain[s].oc) / stain[s].b;
                float q = su * su + sv * sv;
                if (q > 2.5f) continue;
                float d = q + 0.9f * (vnoise_at(&stain[s].edge, x) - 0.5f) - 1.0f; /* < 0 inside */
                if (d > 0.15f) continue;
                float inside = d < -0.15f ? 1.0f : smooth((0.15f - d) / 0.3f);
                float tide = d > -0.12f && d < 0.04f ? 1.0f - fabsf(d + 0.04f) / 0.08f : 0.0f;
                float k = stain[s].strength * (inside + 0.8f * tide);
                for (int c = 0; c < 3; c++) col[c] *= 1.0f + (stain_col[c] - 1.0f) * k;
            }
            put(rgb + 3 * ((size_t)y * g->W + x), col[0] + 0.004f * e1, col[1],
                col[2] + 0.004f * e2);
        }
    }
    float dark = range(rng, 0.28f, 0.4f);
    float crack[3] = {paint[0] * dark, paint[1] * dark * 0.95f, paint[2] * dark * 0.9f};
    finish(rgb, mask, g, crack);
}

/* ---- tiles --------------------------------------------------------------- */

static const crack_style tile_cracks = {
    .r_lo = 0.5f,
    .r_hi = 1.4f,
    .halo = 1.0f,
    .edge = 0.4f,
    .a_lo = 0.75f,
    .a_hi = 0.95f,
    .len_lo = 0.35f,
    .len_hi = 1.0f,
    .jag = 0.12f,
    .jag_len = 8.0f,
    .drift = 0.01f,
    .kink = 0.02f,
    .kink_max = 0.4f,
    .branch = 0.006f,
    .rough = 0.15f,
    .taper = 1,
    .max_cracks = 2,
};

static void render_tiles(fisher_rng *rng, uint8_t *rgb, uint8_t *mask, const geom *g, int cracked) {
    if (cracked) draw_cracks(rng, mask, g, &tile_cracks);

    static const float glazes[][3] = {
        {0.92f, 0.92f, 0.90f}, /* white */
        {0.88f, 0.82f, 0.70f}, /* beige */
        {0.60f, 0.75f, 0.86f}, /* light blue */
        {0.58f, 0.74f, 0.62f}, /* green */
        {0.78f, 0.48f, 0.34f}, /* terracotta */
        {0.72f, 0.72f, 0.74f}, /* grey */
        {0.90f, 0.86f, 0.60f}, /* yellow */
    };
    enum { NGLAZE = sizeof glazes / sizeof glazes[0] };
    const float *glaze0 = glazes[fisher_rng_next(rng) % NGLAZE];
    const float *glaze1 = chance(rng, 0.25f) ? glazes[fisher_rng_next(rng) % NGLAZE] : glaze0;
    float T = g->ws * range(rng, 24.0f, 64.0f);                  /* tile pitch, px */
    float gw = g->ws * range(rng, 2.0f, 4.0f), half = 0.5f * gw; /* grout width */
    /* grout clearly darker than the tiles, as dark as a crack at its darkest */
    float luma0 = 0.3f * glaze0[0] + 0.59f * glaze0[1] + 0.11f * glaze0[2];
    float grout = luma0 * range(rng, 0.25f, 0.5f), gwarm = range(rng, -0.03f, 0.05f);
    float rs = 0.0f, rc = 1.0f;
    if (chance(rng, 0.5f)) sincos_poly(range(rng, -0.25f, 0.25f), &rs, &rc);
    int brick = chance(rng, 0.3f);
    float ox = range(rng, 0.0f, T), oy = range(rng, 0.0f, T);
    uint32_t tseed = (uint32_t)fisher_rng_next(rng);
    vnoise glint, dirt;
    vnoise_init(&glint, rng, 0.5f * g->S, 0.5f * g->S);
    vnoise_init(&dirt, rng, 3.0f * g->ws, 3.0f * g->ws);
    for (int y = 0; y < g->H; y++) {
        vnoise_row(&glint, y), vnoise_row(&dirt, y);
        for (int x = 0; x < g->W; x++) {
            float px = (float)x + 0.5f + ox, py = (float)y + 0.5f + oy, e0, e1, e2;
            grain3(rng, &e0, &e1, &e2);
            float u = px * rc + py * rs, v = -px * rs + py * rc;
            float row = floorf(v / T);
            if (brick && ((int32_t)row & 1)) u += 0.5f * T;
            float col = floorf(u / T);
            float tu = u - col * T, tv = v - row * T;
            float e = fminf(fminf(tu, T - tu), fminf(tv, T - tv)); /* px to the tile's border */
            uint32_t h = hash3(tseed, (int32_t)col, (int32_t)row);
            const float *gl = ((int32_t)col + (int32_t)row) & 1 ? glaze1 : glaze0;
            float jit = 1.0f + 0.08f * ((float)(h & 0xff) / 255.0f - 0.5f);
            float slope = 0.08f * ((float)((h >> 8) & 0xff) / 255.0f - 0.5f);
            float tile = jit * (1.0f + slope * (tu - tv) / T) +
                         0.18f * (vnoise_at(&glint, x) - 0.5f) + 0.012f * e0;
            float bevel =
                e < half + 1.5f * g->ws ? 0.85f + 0.15f * (e - half) / (1.5f * g->ws) : 1.0f;
            float G = grout * (1.0f + 0.35f * (vnoise_at(&dirt, x) - 0.5f) + 0.25f * e1);
            float w = clampf(e - half + 0.5f, 0.0f, 1.0f); /* 0 grout, 1 tile */
            float c[3];
            for (int k = 0; k < 3; k++) {
                float gk = G * (k == 0 ? 1.0f + gwarm : k == 2 ? 1.0f - gwarm : 1.0f);
                c[k] = gk + (gl[k] * tile * bevel - gk) * w;
            }
            put(rgb + 3 * ((size_t)y * g->W + x), c[0] + 0.005f * e2, c[1], c[2]);
        }
    }
    float crack[3] = {0.1f, 0.09f, 0.08f};
    finish(rgb, mask, g, crack);
}

/* ---- shapes ---------------------------------------------------------------
 * Not cracks: a textured background and, on top, 1–4 blobs or boxes and
 * 0–3 strokes in another texture; the mask is everything on top. */

typedef struct {
    int kind; /* 0 two-colour noise, 1 stripes, 2 checker, 3 flat with grain */
    float c0[3], c1[3];
    float us, uc, freq; /* stripes/checker: orientation, cycles per px */
    vnoise n;
} texture;

static void texture_init(texture *t, fisher_rng *rng, const geom *g, const float *avoid) {
    t->kind = (int)(fisher_rng_next(rng) % 4);
    for (int tries = 0;; tries++) {
        for (int c = 0; c < 3; c++) t->c0[c] = range(rng, 0.05f, 0.95f);
        if (!avoid || tries == 16) break;
        float d = 0.0f;
        for (int c = 0; c < 3; c++) d += (t->c0[c] - avoid[c]) * (t->c0[c] - avoid[c]);
        if (d > 0.16f) break;
    }
    for (int c = 0; c < 3; c++) t->c1[c] = clampf(t->c0[c] + range(rng, -0.3f, 0.3f), 0.0f, 1.0f);
    sincos_poly(range(rng, 0.0f, PI_F), &t->us, &t->uc);
    t->freq = 1.0f / (g->ws * range(rng, 5.0f, 20.0f));
    float cell = g->ws * range(rng, 3.0f, 16.0f);
    vnoise_init(&t->n, rng, cell, cell * range(rng, 0.5f, 2.0f));
}

static void texture_at(texture *t, int y, int x, float e, float out[3]) {
    float n = vnoise_at(&t->n, x), m;
    float p = ((float)x * t->uc + (float)y * t->us) * t->freq;
    switch (t->kind) {
    case 0: m = n; break;
    case 1: m = fabsf(2.0f * (p - floorf(p)) - 1.0f) * 0.8f + 0.2f * n; break;
    case 2: {
        float q = ((float)y * t->uc - (float)x * t->us) * t->freq;
        m = (((int32_t)floorf(p) + (int32_t)floorf(q)) & 1) ? 0.85f + 0.15f * n : 0.15f * n;
        break;
    }
    default: m = 0.3f * n + 2.0f * e; break;
    }
    for (int c = 0; c < 3; c++) out[c] = t->c0[c] + (t->c1[c] - t->c0[c]) * m + 0.04f * e;
}

static const crack_style strokes = {
    .r_lo = 2.0f,
    .r_hi = 6.0f,
    .halo = 0.0f,
    .a_lo = 1.0f,
    .a_hi = 1.0f,
    .len_lo = 0.3f,
    .len_hi = 0.8f,
    .drift = 0.06f,
    .taper = 0,
    .max_cracks = 1,
};

static void render_shapes(fisher_rng *rng, uint8_t *rgb, uint8_t *mask, const geom *g) {
    int blobs = 1 + (int)(fisher_rng_next(rng) % 4), nstrokes = (int)(fisher_rng_next(rng) % 4);
    for (int b = 0; b < blobs; b++) {
        float cy = range(rng, 0.0f, (float)g->H), cx = range(rng, 0.0f, (float)g->W);
        float a = g->S * range(rng, 0.08f, 0.25f), bb = a * range(rng, 0.4f, 1.0f), os, oc;
        sincos_poly(range(rng, 0.0f, PI_F), &os, &oc);
        int rect = chance(rng, 0.35f);
        float rough = rect ? 0.0f : range(rng, 0.2f, 1.0f);
        vnoise edge;
        vnoise_init(&edge, rng, a * 0.5f, a * 0.5f);
        box bx = box_around(g, cy, cx, 1.5f * a, 1.5f * a);
        for (int i = bx.i0; i <= bx.i1; i++) {
            vnoise_row(&edge, i);
            for (int j = bx.j0; j <= bx.j1; j++) {
                float dy = (float)i + 0.5f - cy, dx = (float)j + 0.5f - cx;
                float u = (dx * oc + dy * os) / a, v = (-dx * os + dy * oc) / bb;
                int in = rect ? fabsf(u) < 1.0f && fabsf(v) < 1.0f
                              : u * u + v * v + rough * (vnoise_at(&edge, j) - 0.5f) < 1.0f;
                if (in) mask[(size_t)i * g->W + j] = 255;
            }
        }
    }
    for (int s = 0; s < nstrokes; s++) {
        float y = range(rng, 0.1f, 0.9f) * (float)g->H, x = range(rng, 0.1f, 0.9f) * (float)g->W;
        draw_crack(rng, mask, g, &strokes, y, x, g->ws * range(rng, strokes.r_lo, strokes.r_hi),
                   1.0f);
    }

    texture bg, fg;
    texture_init(&bg, rng, g, NULL);
    texture_init(&fg, rng, g, bg.c0);
    for (int y = 0; y < g->H; y++) {
        vnoise_row(&bg.n, y), vnoise_row(&fg.n, y);
        for (int x = 0; x < g->W; x++) {
            size_t k = (size_t)y * g->W + x;
            float e0, e1, e2, c[3];
            grain3(rng, &e0, &e1, &e2);
            texture_at(mask[k] ? &fg : &bg, y, x, 0.5f * (e0 + e1), c);
            put(rgb + 3 * k, c[0], c[1], c[2]);
            mask[k] = mask[k] != 0;
        }
    }
}

/* ---- the API ------------------------------------------------------------- */

void fisher_synth_sample(fisher_synth_domain domain, uint8_t *rgb, uint8_t *mask, int H, int W,
                         uint64_t seed, uint64_t index) {
    if (H <= 0 || W <= 0) return;
    size_t n = (size_t)H * (size_t)W;
    memset(mask, 0, n);
    if ((unsigned)domain >= FISHER_SYNTH_DOMAINS) {
        memset(rgb, 0, 3 * n);
        return;
    }
    /* Exactly one sample in each block of 8 indices (8k … 8k+7) has no
     * crack, at a position drawn from (domain, seed, k): 12.5 % empty in any
     * dataset, not merely on average. */
    uint64_t h = mix64(mix64(0x5eed5eed00000000ULL ^ (uint64_t)domain) ^ seed);
    int cracked = index % 8 != mix64(mix64(h ^ 0x656d707479ULL) ^ (index / 8)) % 8;
    h = mix64(mix64(h ^ index) ^ ((uint64_t)(uint32_t)H << 32 | (uint32_t)W));
    fisher_rng rng;
    fisher_rng_seed(&rng, h);
    geom g = geom_of(H, W);
    switch (domain) {
    case FISHER_SYNTH_CONCRETE: render_concrete(&rng, rgb, mask, &g, cracked); break;
    case FISHER_SYNTH_ASPHALT: render_asphalt(&rng, rgb, mask, &g, cracked); break;
    case FISHER_SYNTH_WALL: render_wall(&rng, rgb, mask, &g, cracked); break;
    case FISHER_SYNTH_TILES: render_tiles(&rng, rgb, mask, &g, cracked); break;
    case FISHER_SYNTH_SHAPES: render_shapes(&rng, rgb, mask, &g); break;
    default: break;
    }
}

void fisher_synth_crack(float *image, float *mask, int H, int W, uint64_t seed, uint64_t index) {
    static const float mean[3] = {0.485f, 0.456f, 0.406f}, std[3] = {0.229f, 0.224f, 0.225f};
    if (H <= 0 || W <= 0) return;
    size_t n = (size_t)H * (size_t)W;
    /* The bytes are drawn into the last quarter of each float buffer, then
     * widened front to back in place: writing float k (bytes 4k … 4k+3)
     * never reaches a byte still to be read (byte k' > k of the tail, which
     * begins 3/4 into the buffer). No allocation, so nothing can fail where
     * failure could not be reported. */
    uint8_t *rgb8 = (uint8_t *)image + 9 * n, *mask8 = (uint8_t *)mask + 3 * n;
    fisher_synth_sample(FISHER_SYNTH_CONCRETE, rgb8, mask8, H, W, seed, index);
    for (size_t k = 0; k < 3 * n; k++) {
        int c = (int)(k % 3);
        image[k] = ((float)rgb8[k] * (1.0f / 255.0f) - mean[c]) / std[c];
    }
    for (size_t k = 0; k < n; k++) mask[k] = mask8[k] ? 1.0f : 0.0f;
}
