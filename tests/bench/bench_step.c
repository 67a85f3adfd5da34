/*
 * bench_step.c — the C half of the training-step benchmark (tests/bench/step.py
 * runs it interleaved with step_torch.py, the PyTorch half, and tabulates both).
 *
 * It times the step fisherd's training loop takes (train.c: zero_grad →
 * forward → loss → backward → AdamW) on one fixed random batch, so the
 * numbers measure the engine and nothing else: no data generation, no I/O.
 * It also measures what this machine's OpenBLAS sgemm can do with the same
 * thread count, the ceiling against which the step's GFLOP/s are read.
 *
 *     bench_step --config mit-b0 --size 128 --batch 4 --threads 2 --warmup 2 --reps 5
 *
 * With --strategy fisher, chunks can be frozen before timing, two ways:
 * --frozen F freezes the fraction F of all chunks the way the method does,
 * earliest layers first (whole tensors freeze, back-propagation stops
 * early); --frozen-spread F takes the same share F of every tensor's row
 * chunks, so tensors stay partly live and only row-level skipping can pay.
 *
 * With --mpi it is one rank of a data-parallel step (issue 9), run as
 * `mpirun -np N bench_step --mpi ...` (tests/bench/dp.py): --batch is the
 * global batch, each rank steps on its B/N rows through the communicator
 * `fisherd worker` uses (daemon/mpi_comm.c), and rank 0 alone prints, adding
 * the ranks and what the last timed step all-reduced.
 *
 * Prints ONE JSON line on stdout (the driver parses it):
 *     {"impl":"c","config":"mit-b0","size":128,"batch":4,"threads":2,
 *      "step_ms":[...reps values...],"maxrss_mb":...,"sgemm_gflops":...,"sgemm_n":...}
 * Errors go to stderr with exit status 1 (2 for bad arguments).
 */
#include <cblas.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "../../daemon/cli.h"
#include "../../daemon/mpi_comm.h"
#include "../../daemon/openmp_env.h"
#include "loss.h"
#include "optim.h"
#include "rng.h"
#include "segformer.h"
#include "train.h"

/* The fixed batch: a seed for reproducibility, and a mask density like the
 * synthetic cracks' (~10 % ones), so the loss takes its ordinary path. */
#define BATCH_SEED 42
#define MASK_DENSITY 0.1f

/* sgemm peak: repeat until both this many runs and this much time have
 * passed, and keep the best run (the peak, not the average, is the ceiling). */
#define SGEMM_MIN_RUNS 5
#define SGEMM_MIN_SECONDS 0.5
/* A 1024³ product that takes less than this is too short to time well
 * against thread start-up; then 2048³ is measured instead. */
#define SGEMM_FAST_SECONDS 0.025

typedef struct {
    const char *config;
    long size, batch, threads, warmup, reps;
    const char *strategy;      /* full | fisher | decoder | norm | bitfit */
    long ema_interval;         /* fisher: steps between drift measurements */
    double frozen;             /* fisher: fraction of chunks frozen before timing, earliest layers first */
    double frozen_spread;      /* fisher: fraction of chunks frozen before timing, that share of
                                * every tensor's chunks */
    int mpi;                   /* one rank of mpirun's world, on its rows of the global batch */
} bench_args;


static void usage(FILE *out) {
    fprintf(out, "usage: bench_step --config NAME --size N --batch B --threads T --warmup W "
                 "--reps R [--strategy S] [--ema-interval N] [--frozen FRACTION | "
                 "--frozen-spread FRACTION] [--mpi]\n");
}

/* Returns 0, or 2 (the exit status) after printing what was wrong. */
static int parse_args(bench_args *a, int argc, char **argv) {
    static const struct option opts[] = {
        {"config", required_argument, 0, 'c'}, {"size", required_argument, 0, 's'},
        {"batch", required_argument, 0, 'b'},  {"threads", required_argument, 0, 't'},
        {"warmup", required_argument, 0, 'w'}, {"reps", required_argument, 0, 'r'},
        {"strategy", required_argument, 0, 'S'}, {"ema-interval", required_argument, 0, 'E'},
        {"frozen", required_argument, 0, 'F'}, {"frozen-spread", required_argument, 0, 'P'},
        {"mpi", no_argument, 0, 'M'}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    *a = (bench_args){"tiny", 64, 8, 1, 2, 5, "full", 1, 0.0, 0.0, 0};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'c': a->config = optarg; break;
        case 's': bad = cli_parse_long("--size", optarg, 32, 4096, &a->size); break;
        case 'b': bad = cli_parse_long("--batch", optarg, 1, 1024, &a->batch); break;
        case 't': bad = cli_parse_long("--threads", optarg, 1, 256, &a->threads); break;
        case 'w': bad = cli_parse_long("--warmup", optarg, 0, 1000, &a->warmup); break;
        case 'r': bad = cli_parse_long("--reps", optarg, 1, 1000, &a->reps); break;
        case 'S': a->strategy = optarg; break;
        case 'E': bad = cli_parse_long("--ema-interval", optarg, 1, 1000000000, &a->ema_interval); break;
        case 'F': {
            float f;
            bad = cli_parse_float("--frozen", optarg, 0, 0.99, &f);
            a->frozen = f;
            break;
        }
        case 'P': {
            float f;
            bad = cli_parse_float("--frozen-spread", optarg, 0, 0.99, &f);
            a->frozen_spread = f;
            break;
        }
        case 'M': a->mpi = 1; break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); return 2;
        }
        if (bad) return 2;
    }
    if (optind < argc) {
        fprintf(stderr, "bench_step: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (fisher_strategy_parse(a->strategy) < 0) {
        fprintf(stderr, "bench_step: unknown --strategy '%s'\n", a->strategy);
        return 2;
    }
    if ((a->frozen > 0 || a->frozen_spread > 0) && strcmp(a->strategy, "fisher") != 0) {
        fprintf(stderr, "bench_step: --frozen and --frozen-spread need --strategy fisher\n");
        return 2;
    }
    if (a->frozen > 0 && a->frozen_spread > 0) {
        fprintf(stderr, "bench_step: --frozen and --frozen-spread are alternatives\n");
        return 2;
    }
    return 0;
}

/* Best sgemm rate (GFLOP/s) on n×n×n, C = A·B, with the BLAS threads already
 * set; 0 if out of memory. */
static double sgemm_gflops_at(int n) {
    size_t nn = (size_t)n * (size_t)n;
    float *a = malloc(nn * sizeof(float)), *b = malloc(nn * sizeof(float));
    float *c = malloc(nn * sizeof(float));
    double best = 0;
    if (a && b && c) {
        fisher_rng rng;
        fisher_rng_seed(&rng, 7);
        for (size_t i = 0; i < nn; i++)
            a[i] = fisher_rng_uniform(&rng) - 0.5f, b[i] = fisher_rng_uniform(&rng) - 0.5f;
        double flops = 2.0 * n * n * n, start = fisher_now_seconds();
        for (int run = 0; run < SGEMM_MIN_RUNS || fisher_now_seconds() - start < SGEMM_MIN_SECONDS;
             run++) {
            double t0 = fisher_now_seconds();
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f,
                        c, n);
            double gflops = flops / (fisher_now_seconds() - t0) / 1e9;
            if (gflops > best) best = gflops;
        }
    }
    free(a), free(b), free(c);
    return best;
}

/* The sgemm peak and the size it was measured at (1024, or 2048 if fast). */
static double sgemm_peak(int *n_used) {
    *n_used = 1024;
    double g = sgemm_gflops_at(1024);
    if (g > 0 && 2.0 * 1024 * 1024 * 1024 / (g * 1e9) < SGEMM_FAST_SECONDS) {
        double g2 = sgemm_gflops_at(2048);
        if (g2 > 0) *n_used = 2048, g = g2;
    }
    return g;
}

/* Peak resident memory of this process, in MB. Linux keeps ru_maxrss
 * across execve, so a child of a big parent (the driver imports torch:
 * ~230 MB) would report the parent's peak; VmHWM belongs to the process's
 * own address space, which exec replaces. ru_maxrss only if /proc is absent. */
static double peak_rss_mb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    while (f && kib < 0 && fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %ld kB", &kib) != 1) kib = -1;
    if (f) fclose(f);
    if (kib < 0) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        kib = ru.ru_maxrss; /* KiB on Linux */
    }
    return (double)kib / 1024.0;
}

/* --mpi: the ranks, and what the last timed step all-reduced (train.h). */
typedef struct {
    int ranks;
    uint64_t bytes, grad_bytes, calls;
} dp_traffic;

/* Prints the result line; ms holds reps step times; dp is NULL without
 * --mpi. Returns 0 or -1. */
static int print_result(const bench_args *a, const double *ms, double maxrss_mb,
                        double sgemm_gflops, int sgemm_n, size_t trainable, size_t parameters,
                        const dp_traffic *dp) {
    json_t *steps = json_array();
    for (long i = 0; i < a->reps; i++) json_array_append_new(steps, json_real(ms[i]));
    json_t *o = json_pack("{s:s, s:s, s:i, s:i, s:i, s:o, s:f, s:f, s:i, s:s, s:i, s:f, s:f, s:I, "
                          "s:I}",
                          "impl", "c", "config", a->config, "size", (int)a->size, "batch",
                          (int)a->batch, "threads", (int)a->threads, "step_ms", steps, "maxrss_mb",
                          maxrss_mb, "sgemm_gflops", sgemm_gflops, "sgemm_n", sgemm_n, "strategy",
                          a->strategy, "ema_interval", (int)a->ema_interval, "frozen", a->frozen,
                          "frozen_spread", a->frozen_spread, "params_trainable",
                          (json_int_t)trainable, "parameters", (json_int_t)parameters);
    if (o && dp)
        json_object_update_missing_new(
            o, json_pack("{s:i, s:I, s:I, s:I}", "ranks", dp->ranks, "allreduce_bytes",
                         (json_int_t)dp->bytes, "grad_allreduce_bytes", (json_int_t)dp->grad_bytes,
                         "allreduce_calls", (json_int_t)dp->calls));
    /* Six significant digits: the timer resolves microseconds at best. */
    char *line = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6))
                   : NULL;
    json_decref(o);
    if (!line) return -1;
    printf("%s\n", line);
    free(line);
    return 0;
}

int main(int argc, char **argv) {
    fisherd_tune_openmp(argv); /* wait for work the way fisherd does */
    bench_args a;
    int rc = parse_args(&a, argc, argv);
    if (rc) return rc;

    fisher_error err = {{0}};
    fisher_segformer_config cfg;
    if (fisher_segformer_config_named(&cfg, a.config, &err)) {
        fprintf(stderr, "bench_step: --config: %s\n", err.msg);
        return 2;
    }
    /* --threads is every thread the step may use: the library's own setter
     * sizes both OpenBLAS's pool (the GEMMs) and its OpenMP team (the rest),
     * exactly as a fisherd training run does. */
    fisher_set_threads((int)a.threads);

    fisher_comm comm = {0};
    if (a.mpi) {
        if (mpi_comm_init(&argc, &argv, &comm, &err)) {
            fprintf(stderr, "bench_step: %s\n", err.msg);
            return 1;
        }
        if (a.batch % comm.size) {
            fprintf(stderr, "bench_step: --batch %ld does not divide by %d ranks\n", a.batch, comm.size);
            mpi_comm_abort(2);
        }
    }
    /* B is this process's rows of the global batch: all of it without --mpi. */
    int ranks = a.mpi ? comm.size : 1, B = (int)a.batch / ranks, H = (int)a.size, W = (int)a.size;
    size_t npix = (size_t)a.batch * H * W, nlab = npix * (size_t)cfg.num_labels;
    size_t rows_from = (size_t)(a.mpi ? comm.rank : 0) * (size_t)B;
    fisher_segformer *m = NULL;
    fisher_trainer t = {0};
    float *images = malloc(npix * (size_t)cfg.num_channels * sizeof(float));
    float *masks = malloc(nlab * sizeof(float));
    double *ms = malloc((size_t)a.reps * sizeof(double));
    size_t *order = NULL;
    double *rank = NULL;
    rc = 1;
    if (!images || !masks || !ms) {
        fprintf(stderr, "bench_step: out of memory for a batch of %ld at %dx%d\n", a.batch, H, W);
        goto out;
    }
    if (!(m = fisher_segformer_create(&cfg, &err))) goto fail;
    fisher_segformer_init_random(m, 0);
    /* The step is the trainer's, the one fisherd runs: with --strategy fisher
     * that includes the Fisher statistics and, every --ema-interval steps,
     * the drift of every live chunk; decisions are kept out of the timed
     * steps (freeze interval beyond them) so the freezing is what --frozen or
     * --frozen-spread says. */
    fisher_method_config method = fisher_method_defaults();
    method.ema_interval = a.ema_interval;
    method.freeze_interval = 1000000000;
    if (fisher_trainer_init(&t, m, B, H, W, fisher_adamw_defaults(), FISHER_DICE_WEIGHT_DEFAULT,
                            (fisher_strategy)fisher_strategy_parse(a.strategy), &method, &err))
        goto fail;
    if (a.mpi && fisher_trainer_set_comm(&t, &comm, &err)) goto fail;
    if (a.frozen > 0 || a.frozen_spread > 0) {
        const fisher_chunk *chunks;
        const fisher_layer *layers;
        size_t n = fisher_method_chunks(t.method, &chunks);
        double fraction = a.frozen > 0 ? a.frozen : a.frozen_spread;
        fisher_segformer_layers(m, &layers);
        if (!(order = malloc(n * sizeof *order)) || !(rank = malloc(n * sizeof *rank))) goto out;
        /* --frozen, the way the method freezes: by forward depth, earliest
         * layers first. --frozen-spread: by a chunk's place in its tensor,
         * (i + 1/2) / blocks, so every tensor loses the same share of its
         * blocks, then by depth; i counts from a block that rotates with the
         * tensor, so the frozen blocks fall at the edges in some tensors and
         * inside in others (one or two live runs of rows). */
        for (size_t c = 0, first = 0; c < n; c++) {
            if (chunks[c].tensor != chunks[first].tensor) first = c;
            size_t blocks = 0;
            while (first + blocks < n && chunks[first + blocks].tensor == chunks[first].tensor)
                blocks++;
            size_t i = (c - first + (size_t)chunks[c].tensor) % blocks;
            rank[c] = a.frozen > 0 ? 0.0 : ((double)i + 0.5) / (double)blocks;
            order[c] = c;
        }
#define BEFORE(x, y) (rank[x] < rank[y] || (rank[x] == rank[y] && \
                      layers[chunks[x].layer].depth < layers[chunks[y].layer].depth))
        for (size_t i = 1; i < n; i++) /* insertion sort: n is a few hundred */
            for (size_t j = i; j > 0 && BEFORE(order[j], order[j - 1]); j--) {
                size_t tmp = order[j];
                order[j] = order[j - 1], order[j - 1] = tmp;
            }
#undef BEFORE
        if (fisher_trainer_freeze(&t, order, (size_t)(fraction * (double)n), &err)) goto fail;
    }

    fisher_rng rng;
    fisher_rng_seed(&rng, BATCH_SEED);
    for (size_t i = 0; i < npix * (size_t)cfg.num_channels; i++)
        images[i] = fisher_rng_normal(&rng);
    for (size_t i = 0; i < nlab; i++) masks[i] = fisher_rng_uniform(&rng) < MASK_DENSITY;

    /* Warm-up steps fault in the activation pages and let OpenBLAS start its
     * threads; only the steps after them are reported. */
    for (long step = 0; step < a.warmup + a.reps; step++) {
        double t0 = fisher_now_seconds();
        float loss;
        if (fisher_trainer_step(&t, images + rows_from * H * W * (size_t)cfg.num_channels,
                                masks + rows_from * H * W * (size_t)cfg.num_labels, &loss, &err))
            goto fail;
        double dt = fisher_now_seconds() - t0;
        /* A non-finite loss means the engine is broken, and its time means nothing. */
        if (!isfinite(loss)) {
            fprintf(stderr, "bench_step: loss is %g at step %ld\n", (double)loss, step);
            goto out;
        }
        if (step >= a.warmup) ms[step - a.warmup] = 1e3 * dt;
    }

    /* The high-water mark is read before the sgemm buffers (48 MB at 2048)
     * exist, so it is the training step's memory alone. */
    double maxrss_mb = peak_rss_mb();

    size_t trainable = t.params_trainable, parameters = fisher_segformer_params(m)->total;
    dp_traffic dp = {ranks, t.allreduce_bytes, t.grad_allreduce_bytes, t.allreduce_calls};
    fisher_trainer_free(&t);
    fisher_segformer_free(m), m = NULL;
    /* the ranks share the cores: a peak measured on one of them would not be the machine's */
    int sgemm_n = 0;
    double gflops = a.mpi ? 0 : sgemm_peak(&sgemm_n);

    if (a.mpi && comm.rank != 0) {
        rc = 0;
        goto out;
    }
    if (print_result(&a, ms, maxrss_mb, gflops, sgemm_n, trainable, parameters, a.mpi ? &dp : NULL)) {
        fprintf(stderr, "bench_step: cannot format the result\n");
        goto out;
    }
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "bench_step: %s\n", err.msg);
    if (a.mpi) mpi_comm_abort(1); /* the other ranks wait in a collective */
out:
    fisher_trainer_free(&t);
    fisher_segformer_free(m);
    free(images), free(masks), free(ms), free(order), free(rank);
    if (a.mpi && mpi_comm_finalize(&err)) {
        fprintf(stderr, "bench_step: %s\n", err.msg);
        rc = 1;
    }
    return rc;
}
