/*
 * cmd_predict.c — using a trained model:
 *
 *   fisherd predict --model M.safetensors --image X.png --out MASK.png
 *                   [--probs PROBS.png] [--overlay OUT.png] [--size N]
 *   fisherd eval --model M.safetensors --data DIR|synthetic:DOMAIN[:COUNT[:SEED]]
 *                [--batch N] [--size N]
 *
 * predict takes an image of any size, resizes it to the model's input size
 * (recorded with its normalisation in the weights file; --size overrides),
 * and resizes the crack probability back to the original size, so the
 * mask lines up with the picture: mask = 255 where p ≥ 0.5, probs =
 * round(255·p), overlay = the picture with cracks painted red.
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "dataset.h"
#include "image.h"
#include "job.h"
#include "layers.h"
#include "train.h"

/* The model and how to feed it; size 0 means the file did not say. */
static fisher_segformer *open_model(const char *path, long size_override, int *size,
                                    fisher_normalization *norm) {
    fisher_error err = {{0}};
    fisher_segformer *m = fisher_model_load(path, size, norm, NULL, &err);
    if (!m) {
        fprintf(stderr, "fisherd: %s\n", err.msg);
        return NULL;
    }
    if (size_override) *size = (int)size_override;
    if (*size < 32) {
        fprintf(stderr, "fisherd: %s does not record its input size; give --size\n", path);
        fisher_segformer_free(m);
        return NULL;
    }
    return m;
}

static int save_png(const char *path, int w, int h, int channels, uint8_t *pixels) {
    fisher_image img = {.width = w, .height = h, .channels = channels, .pixels = pixels};
    fisher_error err = {{0}};
    if (fisher_image_save_png(path, &img, &err)) {
        fprintf(stderr, "fisherd: %s\n", err.msg);
        return -1;
    }
    return 0;
}

int fisherd_predict(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"image", required_argument, 0, 'i'},
        {"out", required_argument, 0, 'o'},   {"probs", required_argument, 0, 'p'},
        {"overlay", required_argument, 0, 'v'}, {"size", required_argument, 0, 's'},
        {"threads", required_argument, 0, 't'}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *model_path = NULL, *image_path = NULL, *out = NULL, *probs_path = NULL, *overlay = NULL;
    long size_override = 0, threads = 2;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'm': model_path = optarg; break;
        case 'i': image_path = optarg; break;
        case 'o': out = optarg; break;
        case 'p': probs_path = optarg; break;
        case 'v': overlay = optarg; break;
        case 's': bad = cli_parse_long("--size", optarg, 32, 2048, &size_override); break;
        case 't': bad = cli_parse_long("--threads", optarg, 1, 256, &threads); break;
        case 'h':
            printf("usage: fisherd predict --model M.safetensors --image X.png --out MASK.png "
                   "[--probs PROBS.png] [--overlay OUT.png] [--size N] [--threads N]\n");
            return 0;
        default: return 2;
        }
        if (bad) return 2;
    }
    if (!model_path || !image_path || !out || optind < argc) {
        fprintf(stderr, "fisherd predict: needs --model, --image and --out (and nothing else)\n");
        return 2;
    }
    fisher_set_threads((int)threads);
    int S;
    fisher_normalization norm;
    fisher_segformer *m = open_model(model_path, size_override, &S, &norm);
    if (!m) return 1;
    fisher_error err = {{0}};
    fisher_image img = {0};
    float *input = NULL, *probs = NULL;
    uint8_t *mask = NULL, *gray = NULL, *paint = NULL;
    int rc = 1;
    if (fisher_image_load(image_path, 3, &img, &err)) {
        fprintf(stderr, "fisherd: %s\n", err.msg);
        goto out;
    }
    if (fisher_segformer_get_config(m)->num_labels != 1) {
        fprintf(stderr, "fisherd: %s has %d labels; predict writes binary masks (1 label)\n",
                model_path, fisher_segformer_get_config(m)->num_labels);
        goto out;
    }
    size_t n = (size_t)img.width * img.height;
    input = malloc((size_t)S * S * 3 * sizeof(float));
    probs = malloc(n * sizeof(float));
    mask = malloc(n), gray = malloc(n);
    if (!input || !probs || !mask || !gray || fisher_segformer_prepare(m, 1, S, S, &err)) {
        fprintf(stderr, "fisherd: %s\n", err.msg[0] ? err.msg : "out of memory");
        goto out;
    }
    if (fisher_image_to_input(input, &img, S, S, norm.mean, norm.std, &err)) {
        fprintf(stderr, "fisherd: %s\n", err.msg);
        goto out;
    }
    const float *logits = fisher_segformer_forward(m, input, 0);
    /* back to the picture's own size, as logits: resizing logits, not
     * thresholded masks, keeps thin cracks thin */
    fisher_resize_bilinear_forward(probs, logits, 1, S, S, 1, img.height, img.width);
    size_t cracks = 0;
    for (size_t i = 0; i < n; i++) {
        float p = 1.0f / (1.0f + expf(-probs[i]));
        mask[i] = p >= 0.5f ? 255 : 0;
        gray[i] = (uint8_t)lrintf(255.0f * p);
        cracks += mask[i] != 0;
    }
    if (save_png(out, img.width, img.height, 1, mask) ||
        (probs_path && save_png(probs_path, img.width, img.height, 1, gray)))
        goto out;
    if (overlay) {
        if (!(paint = malloc(n * 3))) goto out;
        for (size_t i = 0; i < n; i++)
            for (int ch = 0; ch < 3; ch++) {
                uint8_t v = img.pixels[i * 3 + ch];
                paint[i * 3 + ch] = mask[i] ? (uint8_t)(ch == 0 ? 255 : v / 3) : v;
            }
        if (save_png(overlay, img.width, img.height, 3, paint)) goto out;
    }
    printf("%s: %dx%d, crack pixels %zu (%.2f%%), model input %dx%d\n", image_path, img.width,
           img.height, cracks, 100.0 * (double)cracks / (double)n, S, S);
    rc = 0;
out:
    fisher_image_free(&img);
    free(input), free(probs), free(mask), free(gray), free(paint);
    fisher_segformer_free(m);
    return rc;
}

/* "synthetic:DOMAIN[:COUNT[:SEED]]" or a folder. */
static fisher_dataset *open_eval_data(const char *what, int S, const fisher_normalization *norm) {
    fisher_error err = {{0}};
    fisher_dataset *ds;
    if (strncmp(what, "synthetic:", 10) == 0) {
        char domain[32] = "";
        unsigned long count = 100, seed = 0;
        int got = sscanf(what + 10, "%31[^:]:%lu:%lu", domain, &count, &seed);
        fisher_synth_domain d;
        if (got < 1 || fisher_synth_domain_parse(domain, &d) || count < 1) {
            fprintf(stderr, "fisherd: --data %s: expected synthetic:DOMAIN[:COUNT[:SEED]] with DOMAIN "
                            "one of concrete, asphalt, wall, tiles, shapes\n", what);
            return NULL;
        }
        ds = fisher_dataset_synthetic(d, seed, count, S, S, norm, &err);
    } else {
        ds = fisher_dataset_open_folder(what, S, S, norm, (size_t)1 << 30, &err);
    }
    if (!ds) fprintf(stderr, "fisherd: %s\n", err.msg);
    return ds;
}

static int loader_batch(void *ctx, int64_t step, float *images, float *masks, int B, int H, int W,
                        fisher_error *err) {
    (void)B, (void)H, (void)W;
    return fisher_loader_batch(ctx, step, images, masks, err);
}

int fisherd_eval(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"data", required_argument, 0, 'd'},
        {"batch", required_argument, 0, 'b'}, {"size", required_argument, 0, 's'},
        {"threads", required_argument, 0, 't'}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *model_path = NULL, *data = NULL;
    long batch = 8, size_override = 0, threads = 2;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'm': model_path = optarg; break;
        case 'd': data = optarg; break;
        case 'b': bad = cli_parse_long("--batch", optarg, 1, 1024, &batch); break;
        case 's': bad = cli_parse_long("--size", optarg, 32, 2048, &size_override); break;
        case 't': bad = cli_parse_long("--threads", optarg, 1, 256, &threads); break;
        case 'h':
            printf("usage: fisherd eval --model M.safetensors --data DIR|synthetic:DOMAIN[:COUNT[:SEED]] "
                   "[--batch N] [--size N] [--threads N]\n");
            return 0;
        default: return 2;
        }
        if (bad) return 2;
    }
    if (!model_path || !data || optind < argc) {
        fprintf(stderr, "fisherd eval: needs --model and --data (and nothing else)\n");
        return 2;
    }
    fisher_set_threads((int)threads);
    int S;
    fisher_normalization norm;
    fisher_segformer *m = open_model(model_path, size_override, &S, &norm);
    if (!m) return 1;
    fisher_dataset *ds = open_eval_data(data, S, &norm);
    fisher_loader *l = NULL;
    fisher_error err = {{0}};
    fisher_seg_metrics r;
    double loss;
    int rc = 1;
    if (!ds) goto out;
    if (!(l = fisher_loader_create(ds, (int)batch, 0, NULL, 0, &err)) ||
        fisher_evaluate(m, fisher_loader_batches_per_epoch(l), (int)batch, S, S, 0.65f, loader_batch,
                        l, &r, &loss, &err)) {
        fprintf(stderr, "fisherd: %s\n", err.msg);
        goto out;
    }
    printf("%s on %s (%dx%d): loss %.4f  IoU %.4f  F1 %.4f  precision %.4f  recall %.4f  "
           "accuracy %.4f\n", model_path, fisher_dataset_describe(ds), S, S, loss, r.iou, r.f1,
           r.precision, r.recall, r.accuracy);
    rc = 0;
out:
    fisher_loader_free(l);
    fisher_dataset_close(ds);
    fisher_segformer_free(m);
    return rc;
}
