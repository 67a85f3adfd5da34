/*
 * dataset.c — folder and synthetic datasets, and the loader that turns one
 * into training batches. See dataset.h for the contract.
 *
 * Folder datasets. images/ and masks/ are listed (hidden files, directories
 * and other extensions are ignored), sorted by stem so the sample order is
 * the same on every filesystem, and paired by stem. Opening decodes every
 * file once: a truncated JPEG or a 16-bit mask is found at open, not an
 * hour into training. Beyond what dataset.h promises, open also refuses
 *   - an image and mask of different sizes (the mask would not line up
 *     with the picture; it is almost always a mis-pairing), and
 *   - a mask whose only values are 0 and 1 (a label-index mask: read with
 *     the "> 127" rule it would be all background, silently).
 * When count × H × W × 4 floats (image 3 + mask 1) fits cache_bytes, the
 * samples are resized at open and kept; otherwise each get() decodes again.
 * A NULL normalisation means ImageNet's. get() only reads the dataset, so
 * the loader's prefetch thread may call it while the caller asks for names.
 *
 * The loader. Batch `step` is a pure function of (seed, step):
 *     epoch = step / batches_per_epoch,  position = step % batches_per_epoch
 *     sample of slot b = order_epoch[position·B + b]
 * where order_epoch is the identity (in order) or a Fisher–Yates shuffle
 * drawn from a generator seeded by (seed, epoch). Shuffled epochs use whole
 * batches only (count / B of them; the count % B samples a permutation puts
 * last sit that epoch out); in order, the last batch wraps to the epoch's
 * first samples and the return value says how many slots are real.
 * A shard (fisher_loader_shard, one data-parallel rank's rows) builds only
 * rows [first, first + rows): every rank still draws the whole epoch's
 * permutation (count indices, cheap), so the rows are the ones the whole
 * batch has there, and row b is augmented from slot b's generator below.
 *
 * Augmentation, per sample, from a generator seeded by (seed, step, slot),
 * which always draws five numbers in the same order whatever is enabled:
 *   1. scale-crop, s uniform in [scale_min, scale_max] ⊂ [1/8, 8]: the
 *      sample (already at H × W) is zoomed by s. A window of
 *      h = round(H/s) × w = round(W/s) pixels is placed at a uniformly
 *      random whole-pixel offset — inside the sample when s ≥ 1, around it
 *      when s < 1 — and resized to H × W, bilinearly for the image and by
 *      nearest neighbour (src = ⌊dst·in/out⌋) for the mask. Where a
 *      zoomed-out window extends past the sample it is padded with 0 in the
 *      image (the dataset's mean colour, once normalised) and background in
 *      the mask, as mmsegmentation pads (it has an ignore label; we do not).
 *      Working on the model-size sample keeps cached and on-demand datasets
 *      identical; the price is that zooming in magnifies H × W pixels, not
 *      the original's finer ones. (PyTorch's 'nearest' is not centre-aligned
 *      like bilinear: shrinking by ratios other than 2 the mask can sit up
 *      to one window pixel off the image; enlarging, it cannot.)
 *   2. then a horizontal flip, then a vertical flip, each with probability
 *      1/2 when enabled, on image and mask together.
 * (scale_min = scale_max = 1, or both 0 as in a zeroed struct, is no crop.)
 *
 * Prefetch. When samples are decoded on demand (folder without cache,
 * synthetic), one background thread computes batches: the caller asks for
 * step k, waits for it (already done, when training runs step by step),
 * copies it out and posts k + 1 before returning. Only that thread builds
 * batches, so its shuffle cache and scratch need no lock; the mutex guards
 * the hand-over (state, step, result). A request for another step than the
 * one in flight waits for it to finish and posts its own: results depend
 * on the step alone, never on timing. The thread decodes with an OpenMP
 * team of one so it does not compete with training's team.
 */
#include "dataset.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "image.h"
#include "layers.h"
#include "rng.h"

fisher_normalization fisher_normalization_imagenet(void) {
    return (fisher_normalization){{0.485f, 0.456f, 0.406f}, {0.229f, 0.224f, 0.225f}};
}

/* ================================================================= Dataset */

typedef enum { DS_FOLDER, DS_SYNTHETIC } ds_kind;

typedef struct {
    char *stem;
    char *image_path; /* <dir>/images/<file> */
    char *mask_path;  /* <dir>/masks/<file> */
} ds_pair;

struct fisher_dataset {
    ds_kind kind;
    int H, W;
    fisher_normalization norm;
    size_t count;
    char *describe;
    /* folder */
    ds_pair *pairs;      /* (count), sorted by stem */
    float *cache_images; /* (count, H, W, 3), or NULL: decode on demand */
    float *cache_masks;  /* (count, H, W) */
    /* synthetic */
    fisher_synth_domain domain;
    uint64_t seed;
    char name[96]; /* fisher_dataset_sample_name's answer for synthetic samples */
};

/* malloc'd "a/b" */
static char *join(const char *a, const char *b) {
    size_t na = strlen(a), nb = strlen(b);
    char *s = malloc(na + nb + 2);
    if (!s) return NULL;
    memcpy(s, a, na);
    s[na] = '/';
    memcpy(s + na + 1, b, nb + 1);
    return s;
}

static int check_size_and_norm(const char *what, int H, int W, const fisher_normalization *norm,
                               fisher_error *err) {
    if (H < 1 || W < 1 || H > FISHER_IMAGE_MAX_SIDE || W > FISHER_IMAGE_MAX_SIDE)
        return fisher_errorf(err, "%s: input size %dx%d out of range; sides 1..%d expected", what, W,
                             H, FISHER_IMAGE_MAX_SIDE);
    for (int c = 0; c < 3; c++)
        if (!isfinite(norm->mean[c]) || !isfinite(norm->std[c]) || norm->std[c] == 0.0f)
            return fisher_errorf(err, "%s: normalisation channel %d has mean %g, std %g; finite "
                                      "values and a non-zero std expected",
                                 what, c, (double)norm->mean[c], (double)norm->std[c]);
    return 0;
}

/* ------------------------------------------------------------ Folder listing */

typedef struct {
    char *stem;
    char *file;
} ds_entry;

static void free_entries(ds_entry *e, size_t n) {
    if (!e) return;
    for (size_t i = 0; i < n; i++) free(e[i].stem), free(e[i].file);
    free(e);
}

static int entry_cmp(const void *a, const void *b) {
    const ds_entry *x = a, *y = b;
    int c = strcmp(x->stem, y->stem);
    return c ? c : strcmp(x->file, y->file);
}

static int is_image_ext(const char *ext) {
    return !strcasecmp(ext, "png") || !strcasecmp(ext, "jpg") || !strcasecmp(ext, "jpeg");
}

/* Lists the regular files of <dir>/<sub> with an accepted extension, sorted
 * by stem; two files with one stem are an error. */
static int list_files(const char *dir, const char *sub, int masks, ds_entry **out, size_t *n_out,
                      fisher_error *err) {
    ds_entry *v = NULL;
    size_t n = 0, cap = 0;
    char *path = join(dir, sub), *file = NULL;
    DIR *d = NULL;
    if (!path) {
        fisher_errorf(err, "%s: out of memory", dir);
        goto fail;
    }
    d = opendir(path);
    if (!d) {
        fisher_errorf(err, "%s: cannot open: %s (a folder dataset holds images/ and masks/)", path,
                      strerror(errno));
        goto fail;
    }
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (!de) {
            if (errno) {
                fisher_errorf(err, "%s: cannot list: %s", path, strerror(errno));
                goto fail;
            }
            break;
        }
        const char *name = de->d_name, *dot = strrchr(name, '.');
        if (name[0] == '.' || !dot || dot == name) continue;
        if (masks ? strcasecmp(dot + 1, "png") != 0 : !is_image_ext(dot + 1)) continue;
        file = join(path, name);
        if (!file) {
            fisher_errorf(err, "%s: out of memory", path);
            goto fail;
        }
        struct stat sb;
        if (stat(file, &sb) != 0) {
            fisher_errorf(err, "%s: cannot stat: %s", file, strerror(errno));
            goto fail;
        }
        if (!S_ISREG(sb.st_mode)) {
            free(file), file = NULL;
            continue;
        }
        if (n == cap) {
            size_t nc = cap ? 2 * cap : 64;
            ds_entry *nv = realloc(v, nc * sizeof *nv);
            if (!nv) {
                fisher_errorf(err, "%s: out of memory", path);
                goto fail;
            }
            v = nv, cap = nc;
        }
        char *stem = malloc((size_t)(dot - name) + 1);
        if (!stem) {
            fisher_errorf(err, "%s: out of memory", path);
            goto fail;
        }
        memcpy(stem, name, (size_t)(dot - name));
        stem[dot - name] = '\0';
        v[n].stem = stem, v[n].file = file, n++;
        file = NULL;
    }
    closedir(d), d = NULL;
    if (n) qsort(v, n, sizeof *v, entry_cmp);
    for (size_t i = 1; i < n; i++)
        if (strcmp(v[i - 1].stem, v[i].stem) == 0) {
            fisher_errorf(err, "%s and %s share the stem \"%s\"; one %s per stem expected",
                          v[i - 1].file, v[i].file, v[i].stem, masks ? "mask" : "image");
            goto fail;
        }
    free(path);
    *out = v, *n_out = n;
    return 0;
fail:
    if (d) closedir(d);
    free(file);
    free(path);
    free_entries(v, n);
    return -1;
}

/* Pairs two stem-sorted lists; every stem must be in both. */
static int pair_files(const char *dir, ds_entry *img, size_t ni, ds_entry *msk, size_t nm,
                      ds_pair **out, size_t *n_out, fisher_error *err) {
    size_t i = 0, j = 0, n = 0;
    ds_pair *p = calloc(ni ? ni : 1, sizeof *p);
    if (!p) return fisher_errorf(err, "%s: out of memory", dir);
    while (i < ni || j < nm) {
        int c = i == ni ? 1 : j == nm ? -1 : strcmp(img[i].stem, msk[j].stem);
        if (c < 0) {
            fisher_errorf(err, "%s has no mask: expected %s/masks/%s.png", img[i].file, dir, img[i].stem);
            goto fail;
        }
        if (c > 0) {
            fisher_errorf(err, "%s has no image: expected %s/images/%s.png, .jpg or .jpeg",
                          msk[j].file, dir, msk[j].stem);
            goto fail;
        }
        /* move the strings over; the entries are freed without them */
        p[n].stem = img[i].stem, p[n].image_path = img[i].file, p[n].mask_path = msk[j].file;
        img[i].stem = img[i].file = NULL;
        msk[j].file = NULL;
        n++, i++, j++;
    }
    *out = p, *n_out = n;
    return 0;
fail:
    for (size_t k = 0; k < n; k++) free(p[k].stem), free(p[k].image_path), free(p[k].mask_path);
    free(p);
    return -1;
}

/* ------------------------------------------------------------ Folder samples */

/* Decodes pair i and checks it; when image/mask are non-NULL, writes the
 * model-size sample there. */
static int load_pair(const fisher_dataset *ds, size_t i, float *image, float *mask,
                     fisher_error *err) {
    const ds_pair *p = &ds->pairs[i];
    fisher_image img = {0}, msk = {0};
    int rc = -1;
    if (fisher_image_load(p->image_path, 3, &img, err)) goto out;
    if (fisher_image_load(p->mask_path, 1, &msk, err)) goto out;
    if (img.width != msk.width || img.height != msk.height) {
        fisher_errorf(err, "%s is %dx%d but its mask %s is %dx%d; an image and its mask must be "
                           "the same size",
                      p->image_path, img.width, img.height, p->mask_path, msk.width, msk.height);
        goto out;
    }
    uint8_t hi = 0;
    size_t npix = (size_t)msk.width * (size_t)msk.height;
    for (size_t k = 0; k < npix; k++)
        if (msk.pixels[k] > hi) hi = msk.pixels[k];
    if (hi == 1) {
        fisher_errorf(err, "%s: mask values are only 0 and 1; foreground must be > 127 (e.g. 255), "
                           "background 0",
                      p->mask_path);
        goto out;
    }
    if (image) {
        fisher_error e;
        if (fisher_image_to_input(image, &img, ds->H, ds->W, ds->norm.mean, ds->norm.std, &e)) {
            fisher_errorf(err, "%s: %s", p->image_path, e.msg);
            goto out;
        }
        fisher_mask_to_target(mask, &msk, ds->H, ds->W);
    }
    rc = 0;
out:
    fisher_image_free(&img);
    fisher_image_free(&msk);
    return rc;
}

static void free_dataset(fisher_dataset *ds) {
    if (!ds) return;
    if (ds->pairs)
        for (size_t i = 0; i < ds->count; i++)
            free(ds->pairs[i].stem), free(ds->pairs[i].image_path), free(ds->pairs[i].mask_path);
    free(ds->pairs);
    free(ds->cache_images);
    free(ds->cache_masks);
    free(ds->describe);
    free(ds);
}

fisher_dataset *fisher_dataset_open_folder(const char *dir, int H, int W,
                                           const fisher_normalization *norm, size_t cache_bytes,
                                           fisher_error *err) {
    fisher_normalization imagenet = fisher_normalization_imagenet();
    ds_entry *img = NULL, *msk = NULL;
    size_t ni = 0, nm = 0;
    fisher_dataset *ds = NULL;
    if (!dir) {
        fisher_errorf(err, "dataset: NULL folder");
        return NULL;
    }
    if (!norm) norm = &imagenet;
    if (check_size_and_norm(dir, H, W, norm, err)) return NULL;
    if (list_files(dir, "images", 0, &img, &ni, err)) goto fail;
    if (list_files(dir, "masks", 1, &msk, &nm, err)) goto fail;
    ds = calloc(1, sizeof *ds);
    if (!ds) {
        fisher_errorf(err, "%s: out of memory", dir);
        goto fail;
    }
    ds->kind = DS_FOLDER, ds->H = H, ds->W = W, ds->norm = *norm;
    if (pair_files(dir, img, ni, msk, nm, &ds->pairs, &ds->count, err)) goto fail;
    free_entries(img, ni), img = NULL, ni = 0;
    free_entries(msk, nm), msk = NULL, nm = 0;
    if (ds->count == 0) {
        fisher_errorf(err, "%s: no image/mask pairs: images/ holds no .png/.jpg/.jpeg files and "
                           "masks/ no .png files",
                      dir);
        goto fail;
    }

    /* cache when every sample at H × W fits: image (H, W, 3) + mask (H, W) floats */
    size_t per = (size_t)H * (size_t)W * 4 * sizeof(float);
    int fits = ds->count <= cache_bytes / per;
    if (fits) {
        ds->cache_images = malloc(ds->count * (size_t)H * W * 3 * sizeof(float));
        ds->cache_masks = malloc(ds->count * (size_t)H * W * sizeof(float));
        if (!ds->cache_images || !ds->cache_masks) { /* fits the budget, not the machine */
            free(ds->cache_images), ds->cache_images = NULL;
            free(ds->cache_masks), ds->cache_masks = NULL;
        }
    }
    for (size_t i = 0; i < ds->count; i++) {
        float *image = ds->cache_images ? ds->cache_images + i * (size_t)H * W * 3 : NULL;
        float *mask = ds->cache_masks ? ds->cache_masks + i * (size_t)H * W : NULL;
        if (load_pair(ds, i, image, mask, err)) goto fail;
    }

    /* "23.4 MiB", or KiB below one MiB, so small sets do not read "0.0 MiB" */
    double bytes = (double)ds->count * (double)per;
    int mib = bytes >= 1024.0 * 1024.0;
    char size[32];
    snprintf(size, sizeof size, "%.1f %s", bytes / (mib ? 1024.0 * 1024.0 : 1024.0), mib ? "MiB" : "KiB");
    const char *fmt = ds->cache_images ? "folder %s: %zu pairs, cached %s"
                                       : "folder %s: %zu pairs, decoded on demand (caching needs %s)";
    int len = snprintf(NULL, 0, fmt, dir, ds->count, size);
    ds->describe = len >= 0 ? malloc((size_t)len + 1) : NULL;
    if (!ds->describe) {
        fisher_errorf(err, "%s: out of memory", dir);
        goto fail;
    }
    snprintf(ds->describe, (size_t)len + 1, fmt, dir, ds->count, size);
    return ds;
fail:
    free_entries(img, ni);
    free_entries(msk, nm);
    free_dataset(ds);
    return NULL;
}

fisher_dataset *fisher_dataset_synthetic(fisher_synth_domain domain, uint64_t seed, size_t count,
                                         int H, int W, const fisher_normalization *norm,
                                         fisher_error *err) {
    fisher_normalization imagenet = fisher_normalization_imagenet();
    if (!norm) norm = &imagenet;
    if ((int)domain < 0 || domain >= FISHER_SYNTH_DOMAINS) {
        fisher_errorf(err, "synthetic dataset: unknown domain %d", (int)domain);
        return NULL;
    }
    const char *dname = fisher_synth_domain_name(domain);
    if (count == 0) {
        fisher_errorf(err, "synthetic %s: count is 0; at least one sample expected", dname);
        return NULL;
    }
    char what[64];
    snprintf(what, sizeof what, "synthetic %s", dname);
    if (check_size_and_norm(what, H, W, norm, err)) return NULL;
    fisher_dataset *ds = calloc(1, sizeof *ds);
    if (ds) ds->describe = malloc(128);
    if (!ds || !ds->describe) {
        free(ds);
        fisher_errorf(err, "%s: out of memory", what);
        return NULL;
    }
    ds->kind = DS_SYNTHETIC, ds->H = H, ds->W = W, ds->norm = *norm, ds->count = count;
    ds->domain = domain, ds->seed = seed;
    snprintf(ds->describe, 128, "synthetic %s seed %llu: %zu samples", dname,
             (unsigned long long)seed, count);
    return ds;
}

void fisher_dataset_close(fisher_dataset *ds) { free_dataset(ds); }

size_t fisher_dataset_count(const fisher_dataset *ds) { return ds->count; }

const char *fisher_dataset_describe(const fisher_dataset *ds) { return ds->describe; }

const char *fisher_dataset_sample_name(const fisher_dataset *ds, size_t i) {
    if (i >= ds->count) return NULL;
    if (ds->kind == DS_FOLDER) return ds->pairs[i].stem;
    fisher_dataset *m = (fisher_dataset *)ds; /* the name buffer is scratch, not state */
    snprintf(m->name, sizeof m->name, "%s/%llu/%zu", fisher_synth_domain_name(ds->domain),
             (unsigned long long)ds->seed, i);
    return m->name;
}

/* Thread-compatible: touches nothing in ds but read-only fields, so the
 * loader's prefetch thread may call it while the caller reads names. */
int fisher_dataset_get(fisher_dataset *ds, size_t i, float *image, float *mask, fisher_error *err) {
    size_t hw = (size_t)ds->H * (size_t)ds->W;
    if (i >= ds->count)
        return fisher_errorf(err, "%s: sample %zu out of range (%zu samples)", ds->describe, i,
                             ds->count);
    if (ds->kind == DS_FOLDER) {
        if (!ds->cache_images) return load_pair(ds, i, image, mask, err);
        memcpy(image, ds->cache_images + i * hw * 3, hw * 3 * sizeof *image);
        memcpy(mask, ds->cache_masks + i * hw, hw * sizeof *mask);
        return 0;
    }
    uint8_t *rgb = malloc(hw * 4);
    if (!rgb) return fisher_errorf(err, "%s: out of memory for sample %zu", ds->describe, i);
    uint8_t *m = rgb + hw * 3;
    fisher_synth_sample(ds->domain, rgb, m, ds->H, ds->W, ds->seed, (uint64_t)i);
    for (size_t k = 0; k < hw; k++) {
        for (int c = 0; c < 3; c++)
            image[k * 3 + c] =
                ((float)rgb[k * 3 + c] * (1.0f / 255.0f) - ds->norm.mean[c]) / ds->norm.std[c];
        mask[k] = m[k] ? 1.0f : 0.0f;
    }
    free(rgb);
    return 0;
}

/* ================================================================== Loader */

/* Distinct streams of one seed. */
enum { STREAM_SHUFFLE = 1, STREAM_AUGMENT = 2 };

static uint64_t mix64(uint64_t z) { /* splitmix64's finaliser */
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void seed_stream(fisher_rng *rng, uint64_t seed, uint64_t stream, uint64_t a, uint64_t b) {
    fisher_rng_seed(rng, mix64(mix64(mix64(seed ^ mix64(stream)) ^ a) ^ b));
}

/* Uniform in [0, n), n ≥ 1, without modulo bias: rejects the 2^64 mod n
 * smallest draws. */
static uint64_t rng_below(fisher_rng *rng, uint64_t n) {
    uint64_t reject = (0 - n) % n, x;
    do x = fisher_rng_next(rng);
    while (x < reject);
    return x % n;
}

/* What builds batches; used by exactly one thread (see the top). */
typedef struct {
    size_t *perm;       /* (count) the order of perm_epoch, when shuffling */
    int64_t perm_epoch; /* -1: none yet */
    float *crop_image;  /* (crop_h, crop_w, 3) window for scale-crop, or NULL */
    float *crop_mask;   /* (crop_h, crop_w) */
} batch_maker;

typedef enum { PF_IDLE, PF_WORKING, PF_DONE } pf_state;

struct fisher_loader {
    fisher_dataset *ds;
    int B, H, W, shuffle;
    int first, rows;    /* the shard: rows [first, first + rows) of each batch (all: 0, B) */
    int hflip, vflip, crop;
    int crop_h, crop_w; /* the largest window: at scale_min */
    float scale_min, scale_max;
    uint64_t seed;
    int64_t per_epoch;
    batch_maker maker;

    /* prefetch; everything below the mutex is guarded by it */
    int prefetch;
    atomic_int quit;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pf_state state;
    int64_t pf_step;
    int pf_rc;
    fisher_error pf_err;
    float *pf_images, *pf_masks; /* (B, H, W, 3), (B, H, W) */
};

/* Scale-crop then flips, on one sample in place (see the top). */
static void augment(const fisher_loader *l, batch_maker *mk, int64_t step, int slot, float *image,
                    float *mask) {
    int H = l->H, W = l->W;
    fisher_rng rng;
    seed_stream(&rng, l->seed, STREAM_AUGMENT, (uint64_t)step, (uint64_t)slot);
    float us = fisher_rng_uniform(&rng), uy = fisher_rng_uniform(&rng);
    float ux = fisher_rng_uniform(&rng), uh = fisher_rng_uniform(&rng);
    float uv = fisher_rng_uniform(&rng);

    if (l->crop) {
        float s = l->scale_min + us * (l->scale_max - l->scale_min);
        int h = (int)lroundf((float)H / s), w = (int)lroundf((float)W / s);
        h = h < 1 ? 1 : h > l->crop_h ? l->crop_h : h;
        w = w < 1 ? 1 : w > l->crop_w ? l->crop_w : w;
        /* the window's top-left in sample coordinates: in [H − h, 0] when
         * it is larger than the sample, [0, H − h] when smaller */
        int ylo = H - h < 0 ? H - h : 0, yn = abs(H - h) + 1;
        int xlo = W - w < 0 ? W - w : 0, xn = abs(W - w) + 1;
        int y0 = ylo + (int)(uy * (float)yn), x0 = xlo + (int)(ux * (float)xn);
        if (y0 > ylo + yn - 1) y0 = ylo + yn - 1; /* u < 1, but float products round */
        if (x0 > xlo + xn - 1) x0 = xlo + xn - 1;
        if (h != H || w != W) {
            float *wi = mk->crop_image, *wm = mk->crop_mask;
            for (int y = 0; y < h; y++) {
                int sy = y0 + y;
                for (int x = 0; x < w; x++) {
                    int sx = x0 + x;
                    float *pi = wi + ((size_t)y * w + x) * 3, *pm = wm + (size_t)y * w + x;
                    if (sy < 0 || sy >= H || sx < 0 || sx >= W) {
                        pi[0] = pi[1] = pi[2] = 0.0f, *pm = 0.0f; /* padding */
                    } else {
                        memcpy(pi, image + ((size_t)sy * W + sx) * 3, 3 * sizeof *pi);
                        *pm = mask[(size_t)sy * W + sx];
                    }
                }
            }
            fisher_resize_bilinear_forward(image, wi, 1, h, w, 3, H, W);
            for (int y = 0; y < H; y++) {
                const float *row = wm + (size_t)((int64_t)y * h / H) * w;
                for (int x = 0; x < W; x++) mask[(size_t)y * W + x] = row[(int64_t)x * w / W];
            }
        }
    }
    if (l->hflip && uh < 0.5f)
        for (int y = 0; y < H; y++)
            for (int a = 0, b = W - 1; a < b; a++, b--) {
                float *pa = image + ((size_t)y * W + a) * 3, *pb = image + ((size_t)y * W + b) * 3;
                for (int c = 0; c < 3; c++) {
                    float t = pa[c];
                    pa[c] = pb[c], pb[c] = t;
                }
                float *ma = mask + (size_t)y * W + a, *mb = mask + (size_t)y * W + b, t = *ma;
                *ma = *mb, *mb = t;
            }
    if (l->vflip && uv < 0.5f)
        for (int a = 0, b = H - 1; a < b; a++, b--) {
            float *ia = image + (size_t)a * W * 3, *ib = image + (size_t)b * W * 3;
            for (size_t k = 0; k < (size_t)W * 3; k++) {
                float t = ia[k];
                ia[k] = ib[k], ib[k] = t;
            }
            float *ma = mask + (size_t)a * W, *mb = mask + (size_t)b * W;
            for (int k = 0; k < W; k++) {
                float t = ma[k];
                ma[k] = mb[k], mb[k] = t;
            }
        }
}

/* The batch of `step` (see the top). Returns the number of real samples, or
 * -1 with err set. */
static int make_batch(fisher_loader *l, batch_maker *mk, int64_t step, float *images,
                      float *masks, fisher_error *err) {
    size_t count = l->ds->count, hw = (size_t)l->H * (size_t)l->W;
    int64_t epoch = step / l->per_epoch, pos = step % l->per_epoch;
    if (l->shuffle && mk->perm_epoch != epoch) {
        fisher_rng rng;
        seed_stream(&rng, l->seed, STREAM_SHUFFLE, (uint64_t)epoch, 0);
        for (size_t i = 0; i < count; i++) mk->perm[i] = i;
        for (size_t i = count - 1; i > 0; i--) { /* Fisher–Yates */
            size_t j = (size_t)rng_below(&rng, (uint64_t)i + 1), t = mk->perm[i];
            mk->perm[i] = mk->perm[j], mk->perm[j] = t;
        }
        mk->perm_epoch = epoch;
    }
    size_t first = (size_t)pos * (size_t)l->B;
    int real = l->shuffle || count - first >= (size_t)l->B ? l->B : (int)(count - first);
    /* rows of the whole batch; slot j of the output holds row first + j */
    for (int b = l->first; b < l->first + l->rows; b++) {
        if (atomic_load(&l->quit)) return fisher_errorf(err, "loader: stopped");
        size_t k = first + (size_t)b;
        size_t i = l->shuffle ? mk->perm[k] : k % count;
        size_t j = (size_t)(b - l->first);
        float *image = images + j * hw * 3, *mask = masks + j * hw;
        if (fisher_dataset_get(l->ds, i, image, mask, err)) return -1;
        if (l->hflip || l->vflip || l->crop) augment(l, mk, step, b, image, mask);
    }
    real -= l->first;
    return real < 0 ? 0 : real > l->rows ? l->rows : real;
}

static void *prefetch_main(void *arg) {
    fisher_loader *l = arg;
    omp_set_num_threads(1); /* this thread's team only: leave the cores to training */
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (l->state != PF_WORKING && !atomic_load(&l->quit)) pthread_cond_wait(&l->cv, &l->mu);
        if (atomic_load(&l->quit)) break;
        int64_t step = l->pf_step;
        pthread_mutex_unlock(&l->mu);
        fisher_error e = {{0}};
        int rc = make_batch(l, &l->maker, step, l->pf_images, l->pf_masks, &e);
        pthread_mutex_lock(&l->mu);
        l->pf_rc = rc, l->pf_err = e, l->state = PF_DONE;
        pthread_cond_broadcast(&l->cv);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

static void free_buffers(fisher_loader *l) {
    free(l->maker.perm);
    free(l->maker.crop_image);
    free(l->maker.crop_mask);
    free(l->pf_images);
    free(l->pf_masks);
    free(l);
}

fisher_loader *fisher_loader_create(fisher_dataset *ds, int batch_size, int shuffle,
                                    const fisher_augment *aug, uint64_t seed, fisher_error *err) {
    if (!ds) {
        fisher_errorf(err, "loader: NULL dataset");
        return NULL;
    }
    if (batch_size < 1) {
        fisher_errorf(err, "loader over %s: batch size %d; at least 1 expected", ds->describe, batch_size);
        return NULL;
    }
    if (shuffle && ds->count < (size_t)batch_size) {
        fisher_errorf(err, "loader over %s: batch size %d exceeds the %zu samples; shuffled epochs "
                           "use whole batches only",
                      ds->describe, batch_size, ds->count);
        return NULL;
    }
    int crop = 0;
    if (aug && !(aug->scale_min == 0.0f && aug->scale_max == 0.0f)) {
        if (!(aug->scale_min >= 0.125f && aug->scale_min <= aug->scale_max &&
              aug->scale_max <= 8.0f)) { /* also false for NaN */
            fisher_errorf(err, "loader: scale-crop range [%g, %g]; 1/8 <= scale_min <= scale_max "
                               "<= 8 expected (1, 1 turns it off)",
                          (double)aug->scale_min, (double)aug->scale_max);
            return NULL;
        }
        crop = !(aug->scale_min == 1.0f && aug->scale_max == 1.0f);
    }
    size_t hw = (size_t)ds->H * (size_t)ds->W;
    if ((size_t)batch_size > SIZE_MAX / 4 / sizeof(float) / hw) {
        fisher_errorf(err, "loader over %s: a batch of %d is too large for memory", ds->describe,
                      batch_size);
        return NULL;
    }
    fisher_loader *l = calloc(1, sizeof *l);
    if (!l) goto oom;
    l->ds = ds, l->B = batch_size, l->first = 0, l->rows = batch_size, l->H = ds->H, l->W = ds->W, l->shuffle = shuffle != 0;
    l->hflip = aug && aug->hflip, l->vflip = aug && aug->vflip, l->crop = crop;
    l->scale_min = crop ? aug->scale_min : 1.0f, l->scale_max = crop ? aug->scale_max : 1.0f;
    l->seed = seed;
    l->per_epoch = l->shuffle ? (int64_t)(ds->count / (size_t)batch_size)
                              : (int64_t)((ds->count + (size_t)batch_size - 1) / (size_t)batch_size);
    l->maker.perm_epoch = -1;
    atomic_init(&l->quit, 0);
    if (l->shuffle && !(l->maker.perm = malloc(ds->count * sizeof *l->maker.perm))) goto oom;
    if (crop) {
        int ch = (int)lroundf((float)l->H / l->scale_min), cw = (int)lroundf((float)l->W / l->scale_min);
        l->crop_h = ch > l->H ? ch : l->H, l->crop_w = cw > l->W ? cw : l->W;
        size_t whw = (size_t)l->crop_h * (size_t)l->crop_w;
        if (!(l->maker.crop_image = malloc(whw * 3 * sizeof(float))) ||
            !(l->maker.crop_mask = malloc(whw * sizeof(float))))
            goto oom;
    }

    /* Prefetch when samples are decoded on demand. Without a thread (none
     * could be started) batches are simply built on the caller's thread. */
    if (!(ds->kind == DS_FOLDER && ds->cache_images)) {
        l->pf_images = malloc((size_t)batch_size * hw * 3 * sizeof(float));
        l->pf_masks = malloc((size_t)batch_size * hw * sizeof(float));
        if (!l->pf_images || !l->pf_masks) goto oom;
        if (pthread_mutex_init(&l->mu, NULL) == 0) {
            if (pthread_cond_init(&l->cv, NULL) == 0) {
                l->state = PF_IDLE;
                if (pthread_create(&l->thread, NULL, prefetch_main, l) == 0) {
                    l->prefetch = 1;
                } else {
                    pthread_cond_destroy(&l->cv);
                    pthread_mutex_destroy(&l->mu);
                }
            } else {
                pthread_mutex_destroy(&l->mu);
            }
        }
    }
    return l;
oom:
    fisher_errorf(err, "loader over %s: out of memory", ds->describe);
    if (l) free_buffers(l);
    return NULL;
}

void fisher_loader_free(fisher_loader *l) {
    if (!l) return;
    if (l->prefetch) {
        pthread_mutex_lock(&l->mu);
        atomic_store(&l->quit, 1); /* also stops a batch in progress between samples */
        pthread_cond_broadcast(&l->cv);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->thread, NULL);
        pthread_cond_destroy(&l->cv);
        pthread_mutex_destroy(&l->mu);
    }
    free_buffers(l);
}

int64_t fisher_loader_batches_per_epoch(const fisher_loader *l) { return l->per_epoch; }

/* Before the first batch, so the prefetch thread has not been handed a
 * step yet and reads first and rows only after the mutex hand-over. */
int fisher_loader_shard(fisher_loader *l, int first, int count, fisher_error *err) {
    if (first < 0 || count < 1 || count > l->B - first)
        return fisher_errorf(err, "loader over %s: shard of rows [%d, %d) does not lie within a batch of %d",
                             l->ds->describe, first, first + count, l->B);
    l->first = first, l->rows = count;
    return 0;
}

int fisher_loader_batch(fisher_loader *l, int64_t step, float *images, float *masks,
                        fisher_error *err) {
    if (step < 0) return fisher_errorf(err, "loader: step %lld; steps count from 0", (long long)step);
    if (!l->prefetch) return make_batch(l, &l->maker, step, images, masks, err);

    size_t n = (size_t)l->rows * (size_t)l->H * (size_t)l->W;
    pthread_mutex_lock(&l->mu);
    /* Wait for our step: the one in flight or done, else post it (after
     * whatever other step is in flight finishes: one worker, one buffer). */
    while (!(l->state == PF_DONE && l->pf_step == step)) {
        if (l->state == PF_WORKING) {
            pthread_cond_wait(&l->cv, &l->mu);
            continue;
        }
        l->pf_step = step, l->state = PF_WORKING;
        pthread_cond_broadcast(&l->cv);
    }
    int rc = l->pf_rc;
    if (rc >= 0) {
        memcpy(images, l->pf_images, n * 3 * sizeof *images);
        memcpy(masks, l->pf_masks, n * sizeof *masks);
    } else if (err) {
        *err = l->pf_err;
    }
    if (step < INT64_MAX) { /* the next step decodes while this one trains */
        l->pf_step = step + 1, l->state = PF_WORKING;
        pthread_cond_broadcast(&l->cv);
    }
    pthread_mutex_unlock(&l->mu);
    return rc;
}
