/*
 * image.h — 8-bit images in and out: PNG (libpng) and JPEG (libjpeg-turbo)
 * decoding, PNG encoding, and the resizes and normalisation that turn a
 * picture into a model input.
 *
 * Decoding never trusts the file: every failure (unreadable, truncated,
 * not a PNG/JPEG, 16-bit samples, absurd dimensions) is a message naming the
 * file and the problem, and a bad file never crashes the process (libpng's
 * and libjpeg's longjmp error paths are contained here).
 */
#ifndef FISHER_IMAGE_H
#define FISHER_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* Largest side accepted, so a hostile header cannot ask for gigabytes. */
#define FISHER_IMAGE_MAX_SIDE 16384

typedef struct {
    int width, height;
    int channels;      /* 1 (grey) or 3 (RGB) */
    uint8_t *pixels;   /* (height, width, channels), row-major, malloc'd */
} fisher_image;

/* Decodes a PNG or JPEG (recognised by its signature, not its name) into
 * `channels` 1 or 3: grey is replicated to RGB, RGB is converted to grey
 * with ITU-R BT.601 weights, alpha is dropped, palettes and 1/2/4-bit grey
 * are expanded to 8 bits; 16-bit samples are an error. `what` names the
 * source in messages. Returns 0, or -1 with err set and img untouched. */
int fisher_image_decode(const void *data, size_t len, const char *what, int channels,
                        fisher_image *img, fisher_error *err);
/* Reads and decodes a file. */
int fisher_image_load(const char *path, int channels, fisher_image *img, fisher_error *err);
/* Writes img as an 8-bit PNG (grey or RGB), via a temporary file renamed
 * into place. */
int fisher_image_save_png(const char *path, const fisher_image *img, fisher_error *err);
void fisher_image_free(fisher_image *img);

/* img resized bilinearly (align_corners=False, like the model's own
 * resize) to (H, W), as floats normalised per channel: (x/255 − mean)/std.
 * out (H, W, img->channels). Returns 0, or -1 with err set when the float
 * copy the resize works on cannot be allocated. */
int fisher_image_to_input(float *out, const fisher_image *img, int H, int W, const float *mean,
                          const float *std, fisher_error *err);
/* A mask resized by nearest neighbour to (H, W) and binarised: out (H, W)
 * is 1 where the (grey) mask is > 127, else 0. */
void fisher_mask_to_target(float *out, const fisher_image *mask, int H, int W);

#endif
