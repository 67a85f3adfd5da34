/*
 * cmd_worker.c — `fisherd worker --spec FILE --out DIR [--resume]
 * [--threads N]`: one rank of a data-parallel job, as `mpirun -np N
 * fisherd worker ...` starts it (issue 9). The daemon launches exactly
 * that for a spec with distributed.ranks > 1; a person can too.
 *
 * Every rank reads the same spec and calls fisher_job_run_rank over
 * MPI_COMM_WORLD (mpi_comm.h). Rank 0 reports: each callback becomes one
 * JSON line on its stdout, which mpirun forwards to its own stdout, and it
 * reads the daemon's "ack" and "cancel" from its stdin, which mpirun
 * forwards from its own (job_stream.h). So that nothing else can corrupt
 * that stream, fd 1 is pointed at stderr on every rank before anything
 * runs (Open MPI forwards every rank's stdout), and only the stream keeps
 * the original. With stdin at its end from the start (`< /dev/null`) rank 0
 * takes it as the daemon gone and stops after the first step: keep it open.
 *
 * Failure, on any rank: "fisherd worker: rank R on HOST: MESSAGE" on
 * stderr (the daemon finds the failing rank and host by this shape), rank
 * 0 also sends "done" with rc -1, then MPI_Abort, so the other ranks are
 * not left waiting in a collective for one that will never come.
 * Exit status: 0 success or cancelled, 1 failure, 2 bad command line.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "cli.h"
#include "job.h"
#include "job_stream.h"
#include "mpi_comm.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: mpirun -np N fisherd worker --spec FILE --out DIR [--resume] [--threads N]\n"
            "\n"
            "One rank of a data-parallel job (the daemon starts these for a spec with\n"
            "distributed.ranks > 1). N must equal the spec's distributed.ranks. Rank 0\n"
            "writes DIR/model.safetensors and checkpoint.safetensors, and reports as JSON\n"
            "lines on stdout; it answers \"ack\" and \"cancel\" lines on stdin, which\n"
            "must stay open for the run (its end means: stop and checkpoint).\n"
            "  --spec FILE     the job spec (JSON), readable on every rank's host\n"
            "  --out DIR       the output folder, the same path on every host\n"
            "  --resume        continue from DIR/checkpoint.safetensors\n"
            "  --threads N     compute threads per rank (default: the spec's)\n");
}

/* Reads and checks the spec against the world it runs in. */
static int load_spec(fisher_job_spec *spec, const char *path, const fisher_comm *comm, long threads,
                     fisher_error *err) {
    char *text = cli_read_file_err(path, 1 << 20, err);
    if (!text) return -1;
    fisher_error e = {{0}};
    char field[128] = "";
    fisher_job_spec_defaults(spec);
    int bad = fisher_job_spec_parse(spec, text, field, sizeof field, &e);
    free(text);
    if (bad) return fisher_errorf(err, "%s: %s", path, e.msg);
    if (spec->ranks != comm->size)
        return fisher_errorf(err, "%s asks for distributed.ranks = %d but runs on %d MPI rank%s: launch it as "
                             "mpirun -np %d fisherd worker ...", path, spec->ranks, comm->size,
                             comm->size == 1 ? "" : "s", spec->ranks);
    if (threads) spec->threads = (int)threads;
    return 0;
}

int fisherd_worker(int argc, char **argv) {
    static const struct option opts[] = {
        {"spec", required_argument, 0, 's'},  {"out", required_argument, 0, 'o'},
        {"resume", no_argument, 0, 'r'},      {"threads", required_argument, 0, 't'},
        {"help", no_argument, 0, 'h'},        {0, 0, 0, 0},
    };
    const char *spec_path = NULL, *out_dir = NULL;
    long threads = 0;
    int resume = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 's': spec_path = optarg; break;
        case 'o': out_dir = optarg; break;
        case 'r': resume = 1; break;
        case 't':
            if (cli_parse_long("--threads", optarg, 1, 256, &threads)) return 2;
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!spec_path || !out_dir || optind < argc) {
        if (optind < argc) fprintf(stderr, "fisherd worker: unexpected argument '%s'\n", argv[optind]);
        else fprintf(stderr, "fisherd worker: --spec and --out are required\n");
        usage(stderr);
        return 2;
    }

    /* Local ranks are mpirun's children but each in a process group of its
     * own, so a signal to mpirun's group (the daemon's cancel) does not
     * reach them: the kernel ends this rank when its launcher ends. A
     * launcher gone before the request took effect is caught by ppid. */
    pid_t launcher = getppid();
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != launcher) return 1;
    /* the daemon gone is the stream's EPIPE, not a signal */
    signal(SIGPIPE, SIG_IGN);
    /* the stream keeps stdout; everything else that would print there
     * (a library, Open MPI's help text) goes to stderr */
    int stream_fd = fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 3);
    fflush(stdout);
    if (stream_fd < 0 || dup2(STDERR_FILENO, STDOUT_FILENO) < 0) {
        fprintf(stderr, "fisherd worker: cannot set up stdout: %s\n", strerror(errno));
        return 1;
    }

    fisher_error err = {{0}};
    fisher_comm comm;
    if (mpi_comm_init(&argc, &argv, &comm, &err)) {
        fprintf(stderr, "fisherd worker: %s\n", err.msg); /* err names the rank and host already */
        return 1;
    }
    const char *host = mpi_comm_host();
    job_stream_writer *w = NULL;
    fisher_job_callbacks cb;
    static const volatile int never = 0; /* ranks > 0: rank 0's cancel reaches them through the run */
    const volatile int *cancel = &never;
    fisher_job_spec spec;
    fisher_job_result res;
    memset(&res, 0, sizeof res);
    int rc = 0;
    /* the stream first, so that even a spec that does not fit ends in "done" */
    if (comm.rank == 0 && !(w = job_stream_writer_new(stream_fd, STDIN_FILENO, &err))) rc = -1;
    if (w) cb = job_stream_writer_callbacks(w), cancel = job_stream_writer_cancel(w);
    if (!rc) rc = load_spec(&spec, spec_path, &comm, threads, &err);
    if (!rc && comm.rank == 0) rc = cli_make_dir_err(out_dir, &err);
    if (!rc) rc = fisher_job_run_rank(&spec, out_dir, resume, &comm, w ? &cb : NULL, cancel, &res, &err);
    if (rc) {
        /* a failed collective's message names the rank and host already */
        char self[sizeof err.msg];
        int n = snprintf(self, sizeof self, "rank %d on %s: ", comm.rank, host);
        const char *msg = n > 0 && !strncmp(err.msg, self, (size_t)n) ? err.msg + n : err.msg;
        fisher_error named;
        fisher_errorf(&named, "rank %d on %s: %s", comm.rank, host, msg);
        fprintf(stderr, "fisherd worker: %s\n", named.msg);
        if (w) job_stream_write_done(w, -1, NULL, &named);
        /* a rank that failed alone would leave the others in their next
         * collective for ever; the job is over for all of them */
        mpi_comm_abort(1);
    }
    if (w) {
        job_stream_write_done(w, 0, &res, NULL);
        job_stream_writer_free(w);
    }
    close(stream_fd);
    if (mpi_comm_finalize(&err)) {
        fprintf(stderr, "fisherd worker: %s\n", err.msg); /* it names the rank and host */
        return 1;
    }
    return 0;
}
