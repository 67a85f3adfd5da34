/*
 * cmd_train.c — `fisherd train [SPEC.json] [--out DIR] [overrides]`: runs a
 * job in the foreground through fisher_job_run, the same entry point the
 * daemon's workers use.
 *
 * Shows a one-line progress bar on a terminal and plain lines otherwise
 * (logs, CI). Writes DIR/model.safetensors, DIR/checkpoint.safetensors and
 * DIR/summary.json (every evaluation, final and zero-shot metrics, wall
 * time). Ctrl-C (or SIGTERM) stops after the current step and still writes
 * the checkpoint; a second Ctrl-C kills.
 */
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "job.h"
#include "segformer.h"
#include "train.h"

static volatile int stop_requested;

static void on_signal(int sig) {
    (void)sig;
    static const char msg[] = "\nfisherd: stopping after this step (again to kill)\n";
    if (write(STDERR_FILENO, msg, sizeof msg - 1) < 0) { /* nothing to do about it */ }
    stop_requested = 1;
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
}

typedef struct {
    int tty;
    double started;
    size_t params_trainable;
    json_t *evals;         /* every evaluation, for summary.json */
    json_t *freezes;       /* every freeze decision */
    json_t *trainable;     /* [step, trainable parameters, live chunks] at evaluations and decisions */
    double last_val_iou;   /* -1 until the first validation */
    int bar_shown;
} display;

static void end_bar(display *d) {
    if (d->tty && d->bar_shown) fputc('\n', stdout);
    d->bar_shown = 0;
}

static void show_log(void *ctx, const char *line) {
    display *d = ctx;
    end_bar(d);
    printf("%s\n", line);
    fflush(stdout);
}

static void show_progress(void *ctx, const fisher_job_progress *p) {
    display *d = ctx;
    d->params_trainable = p->params_trainable;
    double elapsed = fisher_now_seconds() - d->started;
    double rate = elapsed > 0 ? (double)p->step / elapsed : 0;
    double eta = rate > 0 ? (double)(p->steps - p->step) / rate : 0;
    char iou[32] = "";
    if (d->last_val_iou >= 0) snprintf(iou, sizeof iou, "  val IoU %.3f", d->last_val_iou);
    if (d->tty) {
        enum { WIDTH = 24 };
        int filled = (int)(WIDTH * p->step / p->steps);
        char bar[WIDTH + 1];
        for (int i = 0; i < WIDTH; i++) bar[i] = i < filled ? '=' : (i == filled ? '>' : ' ');
        bar[WIDTH] = '\0';
        printf("\r[%s] %lld/%lld  loss %.4f%s  %.1f steps/s  ETA %d:%02d  ", bar,
               (long long)p->step, (long long)p->steps, (double)p->loss, iou, rate, (int)eta / 60,
               (int)eta % 60);
        d->bar_shown = 1;
    } else {
        int64_t every = p->steps >= 20 ? p->steps / 20 : 1;
        if (p->step == 1 || p->step % every == 0 || p->step == p->steps)
            printf("step %lld/%lld  epoch %lld  loss %.4f%s  %.1f steps/s  ETA %d:%02d\n",
                   (long long)p->step, (long long)p->steps, (long long)p->epoch + 1, (double)p->loss,
                   iou, rate, (int)eta / 60, (int)eta % 60);
    }
    fflush(stdout);
}

static json_t *metrics_json(const fisher_job_eval *e) {
    return json_pack("{s:I,s:s,s:f,s:f,s:f,s:f,s:f,s:f}", "step", (json_int_t)e->step, "dataset",
                     e->dataset, "loss", e->loss, "iou", e->metrics.iou, "f1", e->metrics.f1,
                     "accuracy", e->metrics.accuracy, "precision", e->metrics.precision, "recall",
                     e->metrics.recall);
}

static void record_method(void *ctx, int64_t step, const fisher_method_report *r,
                          const fisher_chunk *chunks, size_t n_chunks) {
    display *d = ctx;
    (void)n_chunks;
    if (!r->decided) return;
    json_t *keys = json_array();
    for (size_t i = 0; i < r->n_frozen; i++) json_array_append_new(keys, json_string(chunks[r->frozen[i]].key));
    json_t *rec = json_pack("{s:I,s:s,s:o,s:I,s:I}", "step", (json_int_t)step, "rule",
                            r->zero_freeze ? "zero_fisher" : "mean_plus_lambda_std", "frozen", keys,
                            "chunks_live", (json_int_t)r->chunks_live, "params_live",
                            (json_int_t)r->params_live);
    if (!r->zero_freeze) {
        json_object_set_new(rec, "mean", json_real(r->stats.mean));
        json_object_set_new(rec, "std", json_real(r->stats.std));
        json_object_set_new(rec, "lambda", json_real(r->stats.lambda));
        json_object_set_new(rec, "threshold", json_real(r->stats.threshold));
    }
    json_array_append_new(d->freezes, rec);
    json_array_append_new(d->trainable, json_pack("[I,I,I]", (json_int_t)step + 1,
                                                  (json_int_t)r->params_live, (json_int_t)r->chunks_live));
    d->params_trainable = r->params_live;
}

static void show_eval(void *ctx, const fisher_job_eval *e) {
    display *d = ctx;
    if (strcmp(e->dataset, "val") == 0) {
        d->last_val_iou = e->metrics.iou;
        json_array_append_new(d->trainable, json_pack("[I,I,n]", (json_int_t)e->step,
                                                      (json_int_t)d->params_trainable));
    }
    json_array_append_new(d->evals, metrics_json(e));
    end_bar(d);
    printf("eval @%lld on %s: loss %.4f  IoU %.3f  F1 %.3f  accuracy %.3f\n", (long long)e->step,
           e->dataset, e->loss, e->metrics.iou, e->metrics.f1, e->metrics.accuracy);
    fflush(stdout);
}

static void usage(FILE *out) {
    fprintf(out,
            "usage: fisherd train [SPEC.json] [--out DIR] [overrides]\n"
            "\n"
            "Runs a fine-tuning job in the foreground. SPEC.json is a job spec (see\n"
            "examples/); without one, the defaults train SegFormer-tiny on synthetic\n"
            "concrete cracks. Options override the spec:\n"
            "  --out DIR          where model, checkpoint and summary go (default runs/NAME)\n"
            "  --config NAME      random init of tiny | mit-b0 | mit-b1 | mit-b2\n"
            "  --base FILE        start from these weights (safetensors)\n"
            "  --strategy S       fisher | full | decoder | norm | bitfit\n"
            "  --steps N          train for N steps\n"
            "  --epochs N         train for N epochs\n"
            "  --batch N          batch size\n"
            "  --image-size N     square input side, 32..2048\n"
            "  --lr X             AdamW learning rate\n"
            "  --seed N           init, shuffling and augmentation seed\n"
            "  --threads N        compute threads\n"
            "  --one-process      a spec with distributed.ranks N > 1: compute here, in one\n"
            "                     process, what its N ranks would (the same numbers, no MPI)\n");
}

int fisherd_train(int argc, char **argv) {
    static const struct option opts[] = {
        {"out", required_argument, 0, 'o'},   {"config", required_argument, 0, 'c'},
        {"base", required_argument, 0, 'm'},  {"steps", required_argument, 0, 's'},
        {"epochs", required_argument, 0, 'E'}, {"batch", required_argument, 0, 'b'},
        {"image-size", required_argument, 0, 'i'}, {"lr", required_argument, 0, 'l'},
        {"seed", required_argument, 0, 'e'},  {"threads", required_argument, 0, 't'},
        {"strategy", required_argument, 0, 'S'}, {"help", no_argument, 0, 'h'},
        {"one-process", no_argument, 0, '1'}, {0, 0, 0, 0},
    };
    /* Options are collected first and applied over the spec file, so they
     * override it whatever their order on the command line. */
    const char *out_dir = NULL, *config = NULL, *base = NULL, *strategy = NULL;
    long steps = 0, epochs = 0, batch = 0, size = 0, seed = -1, threads = 0;
    float lr = 0;
    int c, one_process = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'o': out_dir = optarg; break;
        case 'c': config = optarg; break;
        case 'm': base = optarg; break;
        case 'S': strategy = optarg; break;
        case 's': bad = cli_parse_long("--steps", optarg, 1, 100000000, &steps); break;
        case 'E': bad = cli_parse_long("--epochs", optarg, 1, 100000, &epochs); break;
        case 'b': bad = cli_parse_long("--batch", optarg, 1, 1024, &batch); break;
        case 'i': bad = cli_parse_long("--image-size", optarg, 32, 2048, &size); break;
        case 'l': bad = cli_parse_float("--lr", optarg, 1e-12, 1, &lr); break;
        case 'e': bad = cli_parse_long("--seed", optarg, 0, 1L << 62, &seed); break;
        case 't': bad = cli_parse_long("--threads", optarg, 1, 256, &threads); break;
        case '1': one_process = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (bad) return 2;
    }
    if (argc - optind > 1) {
        fprintf(stderr, "fisherd train: one spec file at most, got '%s' and '%s'\n", argv[optind],
                argv[optind + 1]);
        return 2;
    }
    if (steps && epochs) {
        fprintf(stderr, "fisherd train: give --steps or --epochs, not both\n");
        return 2;
    }
    fisher_job_spec spec;
    fisher_job_spec_defaults(&spec);
    fisher_error err = {{0}};
    if (optind < argc) {
        const char *spec_path = argv[optind];
        char *text = cli_read_file(spec_path, 1 << 20);
        if (!text) return 2;
        char field[128];
        int bad = fisher_job_spec_parse(&spec, text, field, sizeof field, &err);
        free(text);
        if (bad) {
            fprintf(stderr, "fisherd: %s: %s\n", spec_path, err.msg);
            return 2;
        }
        /* A distributed spec run here by mistake would take N times as
         * long as asked for, on one machine; run on purpose (--one-process)
         * it computes what the N ranks would (job.h: the statistics are
         * averaged over N shards as across ranks) — the issue-9 proof's
         * one-process side. */
        if (spec.ranks > 1 && !one_process) {
            fprintf(stderr,
                    "fisherd train: %s asks for distributed.ranks = %d: submit it to the daemon (POST "
                    "/api/v1/jobs), or run it as `mpirun -np %d fisherd worker --spec %s --out DIR`, or pass "
                    "--one-process to compute it here in one process\n",
                    spec_path, spec.ranks, spec.ranks, spec_path);
            return 2;
        }
    }
    if (config) {
        fisher_segformer_config probe;
        if (fisher_segformer_config_named(&probe, config, &err)) {
            fprintf(stderr, "fisherd: --config: %s\n", err.msg);
            return 2;
        }
        snprintf(spec.base_config, sizeof spec.base_config, "%s", config);
        spec.base_path[0] = '\0';
    }
    if (base) snprintf(spec.base_path, sizeof spec.base_path, "%s", base);
    if (strategy) {
        int st = fisher_strategy_parse(strategy);
        if (st < 0) {
            fprintf(stderr, "fisherd: --strategy must be fisher, full, decoder, norm or bitfit\n");
            return 2;
        }
        spec.strategy = (fisher_strategy)st;
    }
    if (steps) spec.steps = steps, spec.epochs = 0;
    if (epochs) spec.epochs = epochs, spec.steps = 0;
    if (batch) spec.batch_size = (int)batch;
    if (size) spec.image_size = (int)size;
    if (lr > 0) spec.optim.lr = lr;
    if (seed >= 0) spec.seed = (uint64_t)seed;
    if (threads) spec.threads = (int)threads;

    char default_out[256];
    if (!out_dir) {
        snprintf(default_out, sizeof default_out, "runs/%s", spec.name);
        out_dir = default_out;
    }
    /* found out now, not after the training it would throw away */
    if (cli_make_dir(out_dir)) return 2;

    display d = {.tty = isatty(STDOUT_FILENO), .started = fisher_now_seconds(),
                 .evals = json_array(), .freezes = json_array(), .trainable = json_array(),
                 .last_val_iou = -1};
    fisher_job_callbacks cb = {.ctx = &d, .on_log = show_log, .on_progress = show_progress,
                               .on_eval = show_eval, .on_method = record_method};
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    fisher_job_result res;
    int failed = fisher_job_run(&spec, out_dir, &cb, &stop_requested, &res, &err);
    end_bar(&d);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    if (failed) {
        fprintf(stderr, "fisherd: %s failed: %s\n", spec.name, err.msg);
        json_decref(d.evals), json_decref(d.freezes), json_decref(d.trainable);
        return 1;
    }

    char *spec_json = fisher_job_spec_to_json(&spec);
    json_t *zero_shot = json_array();
    for (int i = 0; i < res.n_zero_shot; i++) json_array_append_new(zero_shot, metrics_json(&res.zero_shot[i]));
    json_t *summary = json_pack(
        "{s:s,s:o,s:I,s:b,s:b,s:I,s:o,s:o,s:o,s:f,s:I,s:I,s:f,s:o,s:o}", "name", spec.name, "spec",
        json_loads(spec_json, 0, NULL), "steps", (json_int_t)res.steps_done, "cancelled",
        res.cancelled, "stopped_early", res.stopped_early, "best_step", (json_int_t)res.best_step,
        "final_val", res.cancelled ? json_null() : metrics_json(&res.final_val), "zero_shot",
        zero_shot, "evals", d.evals, "wall_seconds", res.wall_seconds, "parameters",
        (json_int_t)res.parameters, "params_trainable", (json_int_t)res.params_trainable,
        "params_trainable_mean", res.params_trainable_mean, "trainable", d.trainable, "freezes",
        d.freezes);
    free(spec_json);
    char path[4200];
    snprintf(path, sizeof path, "%s/summary.json", out_dir);
    int rc = 0;
    if (!summary || json_dump_file(summary, path, JSON_INDENT(2) | JSON_REAL_PRECISION(6)) != 0) {
        fprintf(stderr, "fisherd: cannot write %s\n", path);
        rc = 1;
    }
    json_decref(summary);
    if (res.cancelled) {
        printf("stopped after %lld steps; resume from %s/checkpoint.safetensors\n",
               (long long)res.steps_done, out_dir);
        return rc ? rc : 130; /* like a shell's interrupted command */
    }
    printf("done in %.1f s: val IoU %.3f, F1 %.3f", res.wall_seconds, res.final_val.metrics.iou,
           res.final_val.metrics.f1);
    for (int i = 0; i < res.n_zero_shot; i++)
        printf("; zero-shot %s IoU %.3f", res.zero_shot[i].dataset, res.zero_shot[i].metrics.iou);
    printf("\nwrote %s/model.safetensors, %s/summary.json\n", out_dir, out_dir);
    return rc;
}
