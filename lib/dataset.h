/*
 * dataset.h — where images and masks come from, and how they become
 * batches.
 *
 * A dataset is an indexed set of (image, mask) pairs already at the model's
 * input size: image (H, W, 3) normalised per channel, mask (H, W) of 0/1.
 * Two kinds:
 *   - a folder with images/ and masks/ whose files pair by stem (a.jpg ↔
 *     a.png); images PNG or JPEG, 8-bit grey/RGB/RGBA; masks PNG, > 127 is
 *     foreground. Images are resized bilinearly, masks by nearest neighbour.
 *     Every problem is an error naming the file: a missing images/ or
 *     masks/, an image without a mask or the reverse, an unreadable or
 *     truncated file, no pairs at all, a wrong bit depth.
 *   - the synthetic crack world (synth.h): a domain, a seed and a count.
 *
 * A loader turns a dataset into training batches: every epoch is a seeded
 * shuffle, and augmentation (flips, random scale-crop) is seeded by
 * (seed, step), so the batch of step k is a pure function of the seed and
 * k — a resumed run sees exactly the batches it would have seen.
 */
#ifndef FISHER_DATASET_H
#define FISHER_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "synth.h"

typedef struct {
    float mean[3], std[3];
} fisher_normalization;

/* ImageNet's: mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225) — what
 * SegFormer's pretrained encoders expect. */
fisher_normalization fisher_normalization_imagenet(void);

typedef struct fisher_dataset fisher_dataset;

/* Opens a folder dataset at H × W. All pairs are checked (listed, paired,
 * headers read) before this returns. When decoding every pair once at
 * H × W fits in cache_bytes, all are decoded now and kept in memory;
 * otherwise samples are decoded on demand. NULL with err set on any problem. */
fisher_dataset *fisher_dataset_open_folder(const char *dir, int H, int W,
                                           const fisher_normalization *norm, size_t cache_bytes,
                                           fisher_error *err);
/* `count` samples of a synthetic domain, generated on demand. */
fisher_dataset *fisher_dataset_synthetic(fisher_synth_domain domain, uint64_t seed, size_t count,
                                         int H, int W, const fisher_normalization *norm,
                                         fisher_error *err);
void fisher_dataset_close(fisher_dataset *ds);

size_t fisher_dataset_count(const fisher_dataset *ds);
/* One line for logs, e.g. "folder data/cracks: 120 pairs, cached 23.4 MiB"
 * or "synthetic asphalt seed 3: 200 samples". */
const char *fisher_dataset_describe(const fisher_dataset *ds);
/* Sample i's name: the file stem, or "<domain>/<seed>/<index>". */
const char *fisher_dataset_sample_name(const fisher_dataset *ds, size_t i);

/* Sample i into image (H, W, 3) and mask (H, W). Returns 0, or -1 with err
 * naming the file. Not for concurrent use on one dataset. */
int fisher_dataset_get(fisher_dataset *ds, size_t i, float *image, float *mask, fisher_error *err);

typedef struct {
    int hflip, vflip;              /* flip with probability 1/2 each when non-zero */
    float scale_min, scale_max;    /* random scale-crop; 1 and 1 turn it off */
} fisher_augment;

typedef struct fisher_loader fisher_loader;

/* A loader of batch_size samples per step over ds (which it does not own).
 * shuffle = 0 walks the dataset in order (evaluation); aug may be NULL. */
fisher_loader *fisher_loader_create(fisher_dataset *ds, int batch_size, int shuffle,
                                    const fisher_augment *aug, uint64_t seed, fisher_error *err);
void fisher_loader_free(fisher_loader *l);
/* Batches per epoch: ceil(count / batch_size) in order, count / batch_size
 * (whole batches only) when shuffling. */
int64_t fisher_loader_batches_per_epoch(const fisher_loader *l);
/* Makes l deliver only rows [first, first + count) of every batch (a
 * data-parallel rank's shard, issue 9): the same samples, augmented the
 * same way (augmentation is seeded by the row's place in the whole batch),
 * as those rows of the unsharded batch — and only they are decoded. Call
 * it before the first fisher_loader_batch. Returns 0, or -1 with err when
 * the rows do not lie within the batch. */
int fisher_loader_shard(fisher_loader *l, int first, int count, fisher_error *err);
/* The batch of global step `step`: images (B, H, W, 3), masks (B, H, W)
 * (B = the shard's count after fisher_loader_shard).
 * Returns how many of its B samples are real: B, except for the last batch
 * of an in-order epoch, whose remaining slots repeat the epoch's first
 * samples (evaluation counts only the real ones; for a shard, those of
 * its rows). -1 with err on failure. */
int fisher_loader_batch(fisher_loader *l, int64_t step, float *images, float *masks,
                        fisher_error *err);

#endif
