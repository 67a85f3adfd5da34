/*
 * cmd_dataset.c — looking at and exporting the synthetic crack world.
 *
 *   fisherd dataset synth --domain D --count N [--seed S] [--size N] --out DIR
 *       writes samples as a folder dataset (PNGs in DIR/images and, as
 *       0/255 masks, DIR/masks), to look at or to train on like one's own
 *   fisherd dataset preview --out GRID.png [--model M] [--count N] [--size N]
 *       one row per domain: each sample, its mask, and (with --model) the
 *       model's prediction painted red on the image
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "dataset.h"
#include "image.h"
#include "job.h"
#include "synth.h"
#include "train.h"

static int preview(int argc, char **argv);

int fisherd_dataset(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "preview") == 0) return preview(argc - 1, argv + 1);
    if (argc < 2 || strcmp(argv[1], "synth") != 0) {
        fprintf(stderr, "usage: fisherd dataset synth --domain D --count N [--seed S] [--size N] --out DIR\n"
                        "       fisherd dataset preview --out GRID.png [--model M] [--count N] [--size N] [--seed S]\n");
        return 2;
    }
    static const struct option opts[] = {
        {"domain", required_argument, 0, 'd'}, {"count", required_argument, 0, 'n'},
        {"seed", required_argument, 0, 'e'},   {"size", required_argument, 0, 's'},
        {"out", required_argument, 0, 'o'},    {0, 0, 0, 0},
    };
    const char *domain_name = NULL, *out = NULL;
    long count = 0, seed = 0, size = 256;
    int c;
    optind = 1;
    while ((c = getopt_long(argc - 1, argv + 1, "", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'd': domain_name = optarg; break;
        case 'n': bad = cli_parse_long("--count", optarg, 1, 10000000, &count); break;
        case 'e': bad = cli_parse_long("--seed", optarg, 0, 1L << 62, &seed); break;
        case 's': bad = cli_parse_long("--size", optarg, 16, 4096, &size); break;
        case 'o': out = optarg; break;
        default: return 2;
        }
        if (bad) return 2;
    }
    fisher_synth_domain domain;
    if (!domain_name || fisher_synth_domain_parse(domain_name, &domain)) {
        fprintf(stderr, "fisherd: --domain must be one of concrete, asphalt, wall, tiles, shapes\n");
        return 2;
    }
    if (!count || !out) {
        fprintf(stderr, "fisherd dataset synth: needs --count and --out\n");
        return 2;
    }
    char images_dir[4200], masks_dir[4200];
    snprintf(images_dir, sizeof images_dir, "%s/images", out);
    snprintf(masks_dir, sizeof masks_dir, "%s/masks", out);
    if (cli_make_dir(images_dir) || cli_make_dir(masks_dir)) return 1;
    size_t n = (size_t)size * (size_t)size;
    uint8_t *rgb = malloc(n * 3), *mask = malloc(n);
    if (!rgb || !mask) {
        fprintf(stderr, "fisherd: out of memory\n");
        return 1;
    }
    int rc = 0;
    fisher_error err = {{0}};
    for (long i = 0; i < count && !rc; i++) {
        fisher_synth_sample(domain, rgb, mask, (int)size, (int)size, (uint64_t)seed, (uint64_t)i);
        for (size_t p = 0; p < n; p++) mask[p] = mask[p] ? 255 : 0;
        char path[4400];
        fisher_image img = {(int)size, (int)size, 3, rgb}, m = {(int)size, (int)size, 1, mask};
        snprintf(path, sizeof path, "%s/%s-%06ld.png", images_dir, domain_name, i);
        rc = fisher_image_save_png(path, &img, &err);
        snprintf(path, sizeof path, "%s/%s-%06ld.png", masks_dir, domain_name, i);
        rc = rc || fisher_image_save_png(path, &m, &err);
    }
    free(rgb), free(mask);
    if (rc) {
        fprintf(stderr, "fisherd: %s\n", err.msg);
        return 1;
    }
    printf("wrote %ld %s samples (%ldx%ld, seed %ld) to %s\n", count, domain_name, size, size, seed, out);
    return 0;
}

/* Copies a size×size RGB tile into the grid at tile (row, col). */
static void put_tile(uint8_t *grid, int grid_w, int row, int col, int size, const uint8_t *rgb) {
    for (int y = 0; y < size; y++)
        memcpy(grid + (((size_t)row * size + y) * grid_w + (size_t)col * size) * 3,
               rgb + (size_t)y * size * 3, (size_t)size * 3);
}

static int preview(int argc, char **argv) {
    static const struct option opts[] = {
        {"out", required_argument, 0, 'o'},   {"model", required_argument, 0, 'm'},
        {"count", required_argument, 0, 'n'}, {"size", required_argument, 0, 's'},
        {"seed", required_argument, 0, 'e'},  {0, 0, 0, 0},
    };
    const char *out = NULL, *model_path = NULL;
    long count = 3, size = 128, seed = 3;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'o': out = optarg; break;
        case 'm': model_path = optarg; break;
        case 'n': bad = cli_parse_long("--count", optarg, 1, 16, &count); break;
        case 's': bad = cli_parse_long("--size", optarg, 32, 512, &size); break;
        case 'e': bad = cli_parse_long("--seed", optarg, 0, 1L << 62, &seed); break;
        default: return 2;
        }
        if (bad) return 2;
    }
    if (!out) {
        fprintf(stderr, "fisherd dataset preview: needs --out GRID.png\n");
        return 2;
    }
    fisher_error err = {{0}};
    fisher_segformer *m = NULL;
    fisher_normalization norm = fisher_normalization_imagenet();
    int model_size = 0;
    if (model_path) {
        if (!(m = fisher_model_load(model_path, &model_size, &norm, NULL, &err)) ||
            fisher_segformer_prepare(m, 1, (int)size, (int)size, &err)) {
            fprintf(stderr, "fisherd: %s\n", err.msg);
            fisher_segformer_free(m);
            return 1;
        }
        fisher_set_threads(2);
    }
    int per_sample = m ? 3 : 2, S = (int)size;
    int grid_w = S * per_sample * (int)count, grid_h = S * FISHER_SYNTH_DOMAINS;
    size_t n = (size_t)S * S;
    uint8_t *grid = calloc((size_t)grid_w * grid_h * 3, 1), *rgb = malloc(n * 3), *mask = malloc(n);
    uint8_t *tile = malloc(n * 3);
    float *input = malloc(n * 3 * sizeof(float));
    int rc = 1;
    if (!grid || !rgb || !mask || !tile || !input) {
        fprintf(stderr, "fisherd: out of memory\n");
        goto out;
    }
    for (int d = 0; d < FISHER_SYNTH_DOMAINS; d++)
        for (int i = 0; i < count; i++) {
            fisher_synth_sample((fisher_synth_domain)d, rgb, mask, S, S, (uint64_t)seed, (uint64_t)i);
            int col = i * per_sample;
            put_tile(grid, grid_w, d, col, S, rgb);
            for (size_t p = 0; p < n; p++) tile[3 * p] = tile[3 * p + 1] = tile[3 * p + 2] = mask[p] ? 255 : 0;
            put_tile(grid, grid_w, d, col + 1, S, tile);
            if (!m) continue;
            fisher_image img = {S, S, 3, rgb};
            if (fisher_image_to_input(input, &img, S, S, norm.mean, norm.std, &err)) {
                fprintf(stderr, "fisherd: %s\n", err.msg);
                goto out;
            }
            const float *logits = fisher_segformer_forward(m, input, 0);
            for (size_t p = 0; p < n; p++)
                for (int ch = 0; ch < 3; ch++)
                    tile[3 * p + ch] = logits[p] >= 0 ? (uint8_t)(ch == 0 ? 255 : rgb[3 * p + ch] / 3)
                                                      : rgb[3 * p + ch];
            put_tile(grid, grid_w, d, col + 2, S, tile);
        }
    fisher_image g = {grid_w, grid_h, 3, grid};
    if (fisher_image_save_png(out, &g, &err)) {
        fprintf(stderr, "fisherd: %s\n", err.msg);
        goto out;
    }
    printf("wrote %s: rows concrete, asphalt, wall, tiles, shapes; %ld samples each (image, mask%s)\n",
           out, count, m ? ", prediction" : "");
    rc = 0;
out:
    free(grid), free(rgb), free(mask), free(tile), free(input);
    fisher_segformer_free(m);
    return rc;
}
