/* synth.c — see synth.h. */
#include "synth.h"

#include <math.h>
#include <string.h>

#include "rng.h"

static const float imagenet_mean[3] = {0.485f, 0.456f, 0.406f};
static const float imagenet_std[3] = {0.229f, 0.224f, 0.225f};

/* Stamps a disc of radius r at (y, x) into the mask. */
static void stamp(float *mask, int H, int W, float y, float x, float r) {
    int y0 = (int)floorf(y - r), y1 = (int)ceilf(y + r);
    int x0 = (int)floorf(x - r), x1 = (int)ceilf(x + r);
    for (int i = y0; i <= y1; i++)
        for (int j = x0; j <= x1; j++) {
            if (i < 0 || i >= H || j < 0 || j >= W) continue;
            float dy = (float)i - y, dx = (float)j - x;
            if (dy * dy + dx * dx <= r * r) mask[(size_t)i * W + j] = 1.0f;
        }
}

void fisher_synth_crack(float *image, float *mask, int H, int W, uint64_t seed, uint64_t index) {
    fisher_rng rng;
    fisher_rng_seed(&rng, seed * 0x9e3779b97f4a7c15ULL ^ (index + 1) * 0xd1b54a32d192ed03ULL);
    memset(mask, 0, (size_t)H * W * sizeof *mask);

    int has_crack = fisher_rng_uniform(&rng) >= 0.125f;
    if (has_crack) {
        /* a walk from a random border point toward the interior */
        float y = fisher_rng_uniform(&rng) * (float)H, x = fisher_rng_uniform(&rng) * (float)W;
        float angle = fisher_rng_uniform(&rng) * 6.2831853f;
        float width = 0.5f + fisher_rng_uniform(&rng) * 1.0f; /* radius: 1–3 px wide */
        int length = (H + W) * 2;
        for (int t = 0; t < length; t++) {
            stamp(mask, H, W, y, x, width);
            angle += 0.35f * fisher_rng_normal(&rng);
            y += sinf(angle), x += cosf(angle);
            if (y < -2 || y > (float)H + 1 || x < -2 || x > (float)W + 1) break;
        }
    }

    float base = 0.55f + 0.2f * fisher_rng_uniform(&rng);
    float gy = 0.15f * (fisher_rng_uniform(&rng) - 0.5f), gx = 0.15f * (fisher_rng_uniform(&rng) - 0.5f);
    float tint[3] = {1.0f, 0.98f + 0.04f * fisher_rng_uniform(&rng), 0.95f + 0.05f * fisher_rng_uniform(&rng)};
    for (int i = 0; i < H; i++)
        for (int j = 0; j < W; j++) {
            float v = base + gy * ((float)i / (float)H - 0.5f) + gx * ((float)j / (float)W - 0.5f);
            v += 0.06f * fisher_rng_normal(&rng); /* grain */
            if (mask[(size_t)i * W + j] > 0) v *= 0.35f;
            for (int c = 0; c < 3; c++) {
                float p = fminf(fmaxf(v * tint[c], 0.0f), 1.0f);
                image[((size_t)i * W + j) * 3 + c] = (p - imagenet_mean[c]) / imagenet_std[c];
            }
        }
}
