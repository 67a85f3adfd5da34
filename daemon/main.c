/*
 * main.c — the fisherd command line.
 *
 *   fisherd train   train a SegFormer on the built-in synthetic crack data
 *                   and print the loss as it falls (the daemon's workers run
 *                   the very same fisher_train entry point)
 *
 * `fisherd serve` (the long-running daemon with its REST API) arrives with
 * the daemon issue; until then this is the whole binary.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "openmp_env.h"
#include "segformer.h"
#include "synth.h"
#include "train.h"

#define FISHERD_VERSION "0.1.0"

static void usage(FILE *out) {
    fprintf(out,
            "usage: fisherd <command> [options]\n"
            "\n"
            "commands:\n"
            "  train      fine-tune a SegFormer on built-in synthetic crack images\n"
            "\n"
            "train options:\n"
            "  --config NAME       tiny | mit-b0 | mit-b1 | mit-b2      (default tiny)\n"
            "  --steps N           training steps                      (default 100)\n"
            "  --batch N           batch size                          (default 4)\n"
            "  --image-size N      square image side, ≥ 32             (default 64)\n"
            "  --lr X              AdamW learning rate                 (default 1e-4)\n"
            "  --weight-decay X    AdamW weight decay                  (default 5e-5)\n"
            "  --seed N            init and data seed                  (default 0)\n"
            "  --threads N         compute threads (BLAS and loops)    (default 2)\n"
            "  --out FILE          write the trained weights (safetensors)\n"
            "\n"
            "  fisherd --help | --version\n");
}

/* Parses a whole-string number in [lo, hi]; prints a precise error otherwise. */
static int parse_long(const char *opt, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "fisherd: %s must be an integer in [%ld, %ld], got '%s'\n", opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_float(const char *opt, const char *s, double lo, double hi, float *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "fisherd: %s must be a number in [%g, %g], got '%s'\n", opt, lo, hi, s);
        return -1;
    }
    *out = (float)v;
    return 0;
}

/* Whether the directory that would hold `path` exists and is writable. */
static int writable_dir_of(const char *path) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash) return access(".", W_OK) == 0;
    if (slash == dir) slash++; /* "/file" lives in "/" */
    *slash = '\0';
    return access(dir, W_OK) == 0;
}

typedef struct {
    uint64_t seed;
    int64_t samples;
} synth_data;

static int synth_batch(void *ctx, int64_t step, float *images, float *masks, int B, int H, int W,
                       fisher_error *err) {
    (void)err;
    synth_data *d = ctx;
    for (int b = 0; b < B; b++) {
        uint64_t index = (uint64_t)((step * B + b) % d->samples);
        fisher_synth_crack(images + (size_t)b * H * W * 3, masks + (size_t)b * H * W, H, W, d->seed,
                           index);
    }
    return B;
}

static void print_progress(void *ctx, const fisher_progress *p) {
    (void)ctx;
    int every = p->steps >= 20 ? (int)(p->steps / 20) : 1;
    if (p->step == 1 || p->step % every == 0 || p->step == p->steps)
        printf("step %5lld/%lld  loss %.4f  %.0f ms/step\n", (long long)p->step,
               (long long)p->steps, p->loss, 1e3 * p->seconds);
    fflush(stdout);
}

static int cmd_train(int argc, char **argv) {
    const char *config = "tiny", *out = NULL;
    long steps = 100, batch = 4, size = 64, seed = 0, threads = 2;
    fisher_train_config tc = {.dice_weight = 0.65f, .optim = fisher_adamw_defaults()};
    static const struct option opts[] = {
        {"config", required_argument, 0, 'c'},   {"steps", required_argument, 0, 's'},
        {"batch", required_argument, 0, 'b'},    {"image-size", required_argument, 0, 'i'},
        {"lr", required_argument, 0, 'l'},       {"weight-decay", required_argument, 0, 'w'},
        {"seed", required_argument, 0, 'e'},     {"threads", required_argument, 0, 't'},
        {"out", required_argument, 0, 'o'},      {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'c': config = optarg; break;
        case 's': bad = parse_long("--steps", optarg, 0, 100000000, &steps); break;
        case 'b': bad = parse_long("--batch", optarg, 1, 1024, &batch); break;
        case 'i': bad = parse_long("--image-size", optarg, 32, 4096, &size); break;
        case 'l': bad = parse_float("--lr", optarg, 0, 1, &tc.optim.lr); break;
        case 'w': bad = parse_float("--weight-decay", optarg, 0, 0.999, &tc.optim.weight_decay); break;
        case 'e': bad = parse_long("--seed", optarg, 0, 1L << 62, &seed); break;
        case 't': bad = parse_long("--threads", optarg, 1, 256, &threads); break;
        case 'o': out = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (bad) return 2;
    }
    if (optind < argc) {
        fprintf(stderr, "fisherd train: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (out && !writable_dir_of(out)) {
        /* found out now, not after the training it would throw away */
        fprintf(stderr, "fisherd: --out %s: its directory does not exist or is not writable\n", out);
        return 2;
    }
    fisher_error err = {{0}};
    fisher_segformer_config cfg;
    if (fisher_segformer_config_named(&cfg, config, &err)) {
        fprintf(stderr, "fisherd: --config: %s\n", err.msg);
        return 2;
    }
    fisher_segformer *m = fisher_segformer_create(&cfg, &err);
    if (!m) {
        fprintf(stderr, "fisherd: %s\n", err.msg);
        return 1;
    }
    fisher_segformer_init_random(m, (uint64_t)seed);
    tc.threads = (int)threads, tc.batch_size = (int)batch, tc.image_height = tc.image_width = (int)size, tc.steps = steps;
    printf("fisherd %s: training SegFormer-%s (%zu parameters) on synthetic cracks, batch %ld at "
           "%ldx%ld, %ld steps, lr %g, %ld threads\n",
           FISHERD_VERSION, config, fisher_segformer_params(m)->total, batch, size, size, steps,
           (double)tc.optim.lr, threads);
    synth_data data = {(uint64_t)seed, 1000};
    /* held out: another seed of the same generator, never trained on */
    synth_data val = {(uint64_t)seed + 1, 1000};
    int rc = 0, val_batches = 8;
    fisher_seg_metrics before, after;
    double loss_before, loss_after;
    if (fisher_evaluate(m, val_batches, (int)batch, (int)size, (int)size, tc.dice_weight,
                        synth_batch, &val, &before, &loss_before, &err) ||
        fisher_train(m, &tc, synth_batch, &data, print_progress, NULL, NULL, &err) < 0 ||
        fisher_evaluate(m, val_batches, (int)batch, (int)size, (int)size, tc.dice_weight,
                        synth_batch, &val, &after, &loss_after, &err)) {
        fprintf(stderr, "fisherd: training failed: %s\n", err.msg);
        rc = 1;
    } else {
        printf("held-out synthetic images (%ld): loss %.4f -> %.4f, IoU %.3f -> %.3f, "
               "F1 %.3f -> %.3f, pixel accuracy %.3f -> %.3f\n",
               val_batches * batch, loss_before, loss_after, before.iou, after.iou, before.f1,
               after.f1, before.accuracy, after.accuracy);
    }
    if (!rc && out) {
        if (fisher_segformer_save(m, out, &err)) {
            fprintf(stderr, "fisherd: %s\n", err.msg);
            rc = 1;
        } else {
            printf("weights written to %s\n", out);
        }
    }
    fisher_segformer_free(m);
    return rc;
}

int main(int argc, char **argv) {
    fisherd_tune_openmp(argv);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "--version")) {
        printf("fisherd %s\n", FISHERD_VERSION);
        return 0;
    }
    if (!strcmp(cmd, "train")) return cmd_train(argc - 1, argv + 1);
    fprintf(stderr, "fisherd: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
