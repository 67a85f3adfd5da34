/*
 * synth.h — the synthetic crack world: a deterministic generator of RGB
 * crack images with exact masks, in visually distinct domains, so fisherd
 * trains, fine-tunes and tests zero-shot transfer out of the box with no
 * download.
 *
 * A sample is a pure function of (domain, seed, index, size): the same four
 * always give the same image and mask, bit for bit, on any machine, in any
 * order, on any thread.
 *
 * Domains:
 *   concrete  light grey, fine grain and pores, soft illumination gradients;
 *             thin dark cracks (1–4 px) that wander with persistent
 *             direction, taper and branch
 *   asphalt   dark, coarse bright aggregate; wider, lower-contrast cracks
 *   wall      painted plaster, smooth shading, stains; hairline cracks
 *   tiles     tiles with grout lines (straight dark lines that are NOT
 *             cracks) and cracks across tiles
 *   shapes    random textures with random blobs and strokes to segment: a
 *             generic pretraining task, not cracks
 * In every crack domain some samples have no crack at all.
 */
#ifndef FISHER_SYNTH_H
#define FISHER_SYNTH_H

#include <stdint.h>

typedef enum {
    FISHER_SYNTH_CONCRETE,
    FISHER_SYNTH_ASPHALT,
    FISHER_SYNTH_WALL,
    FISHER_SYNTH_TILES,
    FISHER_SYNTH_SHAPES,
    FISHER_SYNTH_DOMAINS /* count */
} fisher_synth_domain;

/* "concrete", "asphalt", ... */
const char *fisher_synth_domain_name(fisher_synth_domain domain);
/* Looks a domain up by name; returns 0, or -1 when there is none. */
int fisher_synth_domain_parse(const char *name, fisher_synth_domain *domain);

/* Sample `index` of (domain, seed) at H × W: rgb (H, W, 3) and mask (H, W)
 * holding 0 (background) or 1 (foreground: crack, or shape). */
void fisher_synth_sample(fisher_synth_domain domain, uint8_t *rgb, uint8_t *mask, int H, int W,
                         uint64_t seed, uint64_t index);

/* The `concrete` sample as a model input: image (H, W, 3) normalised with
 * ImageNet's mean/std, mask (H, W) as 0.0/1.0. A convenience for the
 * training loop until datasets carry their own normalisation. */
void fisher_synth_crack(float *image, float *mask, int H, int W, uint64_t seed, uint64_t index);

#endif
