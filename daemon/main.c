/*
 * main.c — the fisherd command line: one binary, one subcommand per job.
 *
 *   fisherd train    run a fine-tuning job in the foreground (cmd_train.c);
 *                    the daemon's workers run the very same fisher_job_run
 *   fisherd predict  segment an image; fisherd eval: metrics on a dataset
 *                    (cmd_predict.c)
 *
 *   fisherd serve    the long-running daemon: REST API, dashboard, jobs on
 *                    worker threads, everything stored in SQLite (cmd_serve.c)
 *   fisherd worker   one rank of a distributed job, under mpirun (cmd_worker.c)
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "openmp_env.h"

#include "version.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: fisherd <command> [options]\n"
            "\n"
            "commands:\n"
            "  serve               the daemon: REST API, dashboard, jobs (fisherd serve --help)\n"
            "  train [SPEC.json]   run a fine-tuning job (fisherd train --help)\n"
            "  predict             segment one image with a trained model\n"
            "  eval                metrics of a model on a folder or synthetic dataset\n"
            "  dataset synth       write synthetic crack images as a folder dataset\n"
            "  worker              one rank of a distributed job: mpirun -np N fisherd worker ...\n"
            "\n"
            "  fisherd --help | --version\n");
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
    if (!strcmp(cmd, "serve")) return fisherd_serve(argc - 1, argv + 1);
    if (!strcmp(cmd, "train")) return fisherd_train(argc - 1, argv + 1);
    if (!strcmp(cmd, "predict")) return fisherd_predict(argc - 1, argv + 1);
    if (!strcmp(cmd, "eval")) return fisherd_eval(argc - 1, argv + 1);
    if (!strcmp(cmd, "dataset")) return fisherd_dataset(argc - 1, argv + 1);
    if (!strcmp(cmd, "worker")) return fisherd_worker(argc - 1, argv + 1);
    fprintf(stderr, "fisherd: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
