/*
 * synth.h — a small deterministic generator of crack-like images with exact
 * masks, so fisherd trains out of the box with no download.
 *
 * Each sample is a function of (seed, index) alone: the same pair always
 * gives the same image and mask, bit for bit, on any machine, in any order.
 * Images: a light grey, grainy surface with a soft illumination gradient;
 * cracks are dark random walks with persistent direction and a width of
 * 1–3 px; about one sample in eight has no crack. Images come out
 * channels-last (H, W, 3), normalised with ImageNet's mean and std as
 * SegFormer expects; masks (H, W) hold 0 or 1.
 *
 * This is the first domain of the synthetic crack world; more domains
 * (asphalt, wall, tiles, shapes) extend it.
 */
#ifndef FISHER_SYNTH_H
#define FISHER_SYNTH_H

#include <stdint.h>

/* Fills image (H, W, 3) and mask (H, W) with sample `index` of `seed`. */
void fisher_synth_crack(float *image, float *mask, int H, int W, uint64_t seed, uint64_t index);

#endif
