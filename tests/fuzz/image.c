/*
 * image.c — libFuzzer target: the PNG and JPEG loaders, as the dataset
 * loader uses them.
 *
 * The input is the bytes of one file in a dataset folder. load_pair
 * (lib/dataset.c) decodes an image into RGB and a mask into grey with
 * fisher_image_decode (through fisher_image_load, which only reads the
 * file first), then resizes the image into a normalised model input and
 * the mask into a binary target. This target decodes the same bytes both
 * ways and takes each picture on to the resize, at a model size of 32
 * (the smallest image_size a job may ask for).
 *
 * A PNG is decoded as given and, when its chunk CRCs do not match, again
 * with them corrected, so mutations reach past libpng's CRC check.
 *
 * Properties beyond the sanitizers': a refusal says why and leaves the
 * image untouched; a decoded image has sides within bounds, the channels
 * asked for and the same size whichever channels were asked; the model
 * input is finite; the target is 0 or 1.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dataset.h"
#include "fuzz_util.h"
#include "image.h"

#define SIDE 32

/* PNG's CRC-32 (ISO 3309), bit by bit: slow and short, which is enough. */
static uint32_t crc32_png(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    }
    return c ^ 0xFFFFFFFFu;
}

/* Rewrites every complete chunk's CRC to match its bytes. A mutated IHDR
 * or IDAT otherwise stops at libpng's CRC check, and the decoder's own
 * checks behind it (dimensions, the truncation bound, colour types) are
 * never reached; a client can of course send correct CRCs. Returns 1 when
 * it changed anything. */
static int png_fix_crcs(uint8_t *d, size_t n) {
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (n < 8 || memcmp(d, sig, 8)) return 0;
    int changed = 0;
    for (size_t at = 8; n - at >= 12;) {
        uint32_t len = (uint32_t)d[at] << 24 | (uint32_t)d[at + 1] << 16 | (uint32_t)d[at + 2] << 8 | d[at + 3];
        if (len > n - at - 12) break;
        uint32_t crc = crc32_png(d + at + 4, 4 + (size_t)len);
        uint8_t *c = d + at + 8 + len;
        uint8_t want[4] = {(uint8_t)(crc >> 24), (uint8_t)(crc >> 16), (uint8_t)(crc >> 8), (uint8_t)crc};
        if (memcmp(c, want, 4)) memcpy(c, want, 4), changed = 1;
        at += 12 + (size_t)len;
    }
    return changed;
}

static void load_as_dataset(const uint8_t *data, size_t size) {
    static float input[SIDE * SIDE * 3], target[SIDE * SIDE];
    const fisher_normalization norm = fisher_normalization_imagenet();
    int w[2] = {0, 0}, h[2] = {0, 0}, ok[2] = {0, 0};
    for (int k = 0; k < 2; k++) {
        int channels = k ? 1 : 3; /* the image, then the mask */
        fisher_image img = {0};
        fisher_error e = {{0}};
        if (fisher_image_decode(data, size, "sample.png", channels, &img, &e)) {
            fuzz_check(e.msg[0] != '\0', "a file is refused without a reason");
            fuzz_check(img.pixels == NULL && img.width == 0, "a refused file leaves an image behind");
            continue;
        }
        ok[k] = 1, w[k] = img.width, h[k] = img.height;
        fuzz_check(img.pixels && img.channels == channels && img.width >= 1 && img.height >= 1 &&
                       img.width <= FISHER_IMAGE_MAX_SIDE && img.height <= FISHER_IMAGE_MAX_SIDE,
                   "decoded %dx%dx%d (asked for %d channels)", img.width, img.height, img.channels,
                   channels);
        if (k == 0) {
            if (fisher_image_to_input(input, &img, SIDE, SIDE, norm.mean, norm.std, &e) == 0)
                for (size_t i = 0; i < sizeof input / sizeof *input; i++)
                    fuzz_check(isfinite(input[i]), "model input %zu is %g", i, (double)input[i]);
        } else {
            fisher_mask_to_target(target, &img, SIDE, SIDE);
            for (size_t i = 0; i < sizeof target / sizeof *target; i++)
                fuzz_check(target[i] == 0.0f || target[i] == 1.0f, "target %zu is %g", i, (double)target[i]);
        }
        fisher_image_free(&img);
    }
    fuzz_check(ok[0] == ok[1], "the file decodes as %s but not as %s", ok[0] ? "RGB" : "grey",
               ok[0] ? "grey" : "RGB");
    fuzz_check(!ok[0] || (w[0] == w[1] && h[0] == h[1]), "RGB %dx%d but grey %dx%d", w[0], h[0], w[1], h[1]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    load_as_dataset(data, size);
    uint8_t *fixed = malloc(size ? size : 1);
    if (!fixed) return 0;
    memcpy(fixed, data, size);
    if (png_fix_crcs(fixed, size)) load_as_dataset(fixed, size);
    free(fixed);
    return 0;
}
