/*
 * job.h — a fine-tuning job: its spec (JSON, ../shared/DESIGN.md "Job
 * spec"), and the one entry point that runs it. `fisherd train` and the
 * daemon's workers call exactly fisher_job_run; everything they show comes
 * through its callbacks.
 *
 * Spec v1 (every field optional; defaults in brackets):
 *   name               string ["job"]
 *   base_model         {"arch": "segformer", "config": "tiny"|"mit-b0"|...,
 *                       "num_labels": 1} random init [tiny], or
 *                      {"path": "model.safetensors"} (config from its metadata)
 *   image_size         32..2048 [128]
 *   data.train         dataset [synthetic concrete, 800 samples, seed 1]
 *   data.val           dataset [synthetic concrete, 100 samples, seed 2]
 *   data.zero_shot     [dataset, ...] evaluated once at the end [none]
 *       dataset = {"synthetic": {"domain", "count", "seed"}} or {"path": DIR}
 *   normalization      {"mean": [3], "std": [3]} [ImageNet's]
 *   augment            {"hflip": bool, "vflip": bool, "scale": [lo, hi]} [flips on, no scale]
 *   strategy           "fisher" | "full" | "decoder" | "norm" | "bitfit" ["full"]
 *   fisher             the method's knobs (FISHERADAPTUNE.md §7), strategy "fisher" only:
 *                      {"estimator": "reference"|"ema"|"empirical", "ema_interval" [1],
 *                       "freeze_interval" [300], "slice_mode": "row"|"column",
 *                       "slice_blocks" [4], "js_mode": "log"|"raw",
 *                       "metric": "total_variation"|"mean_js", "lambda" [1.0],
 *                       "fisher_ema_decay" [0.9], "js_ema_decay" [0.9], "gammas" [0.8, 0.8]}
 *   optim              {"lr", "weight_decay", "betas": [2], "eps"} [1e-4, 5e-5, (0.9, 0.999), 1e-8]
 *   loss               {"dice_weight"} [0.65]
 *   batch_size         1..1024 [4]
 *   epochs | steps     one of them [epochs 5]
 *   eval_interval      steps between validations; 0 = once per epoch [0]
 *   early_stopping     {"patience": evaluations without a better val loss; 0 = off} [0]
 *   checkpoint_interval steps between checkpoints; 0 = only at the end [0]
 *   seed               init, shuffling and augmentation [0]
 *   threads            compute threads (per rank in a distributed job) [2]
 *   distributed        {"ranks": 1..64, "hostfile": NAME} data-parallel over MPI
 *                      ranks [1, ""]; batch_size must divide by ranks; NAME is a
 *                      file in the daemon's hostfile folder ("" = this machine)
 */
#ifndef FISHER_JOB_H
#define FISHER_JOB_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

#include "comm.h"
#include "dataset.h"
#include "error.h"
#include "fisher.h"
#include "train.h"
#include "loss.h"
#include "optim.h"
#include "segformer.h"

#define FISHER_MAX_ZERO_SHOT 8
#define FISHER_MAX_RANKS 64        /* distributed.ranks at most */

typedef struct {
    int synthetic;                 /* 1: synthetic domain; 0: folder */
    fisher_synth_domain domain;
    uint64_t seed;
    size_t count;
    char path[PATH_MAX];
} fisher_data_spec;

typedef struct {
    char name[128];
    char base_config[32];          /* random init from this named config ... */
    int num_labels;
    char base_path[PATH_MAX];      /* ... unless a weights file is given */
    int image_size;
    fisher_data_spec train, val, zero_shot[FISHER_MAX_ZERO_SHOT];
    int n_zero_shot;
    fisher_normalization norm;
    fisher_augment augment;
    fisher_strategy strategy;
    fisher_method_config fisher;
    fisher_adamw_config optim;
    float dice_weight;
    int batch_size;
    int64_t epochs, steps;         /* exactly one is > 0 */
    int64_t eval_interval;
    int patience;
    int64_t checkpoint_interval;
    uint64_t seed;
    int threads;
    int ranks;                     /* distributed.ranks: data-parallel ranks, 1 = one process */
    char hostfile[64];             /* distributed.hostfile: a plain file name, or "" */
} fisher_job_spec;

/* The defaults above. */
void fisher_job_spec_defaults(fisher_job_spec *spec);
/* Parses and validates a spec over the defaults. On the first problem
 * returns -1 with err->msg saying what is wrong and, when field is
 * non-NULL, the offending field's dotted path in it (e.g. "optim.lr",
 * "data.zero_shot[1].path"). Nothing is opened here: paths are checked
 * when the job runs (or by the daemon against its data roots). */
int fisher_job_spec_parse(fisher_job_spec *spec, const char *json, char *field, size_t field_len,
                          fisher_error *err);
/* The spec back as JSON, every field explicit (malloc'd). */
char *fisher_job_spec_to_json(const fisher_job_spec *spec);

typedef struct {
    int64_t step, steps;           /* step just finished (1-based), total */
    int64_t epoch;                 /* 0-based */
    float loss;
    double step_seconds;
    size_t params_trainable;       /* elements that train now */
    size_t params_total;           /* of the whole model */
} fisher_job_progress;

typedef struct {
    int64_t step;                  /* after this many steps */
    char dataset[160];             /* "val", or a zero-shot dataset's description */
    double loss;
    fisher_seg_metrics metrics;
} fisher_job_eval;

/* One parameter group (chunk, FISHERADAPTUNE.md §2) as people see it. */
typedef struct {
    const char *key;               /* "<tensor>.rowblock<i>" */
    const char *tensor;            /* the Hugging Face tensor name */
    const char *layer;             /* the module owning it */
    const char *layer_class;       /* "linear" | "conv" | "batchnorm" | "layernorm" */
    int depth;                     /* the layer's position in the forward pass, 0 = first */
    int axis, start, end;          /* the index range along axis */
    size_t size;                   /* elements */
    int64_t frozen_at;             /* the step it froze, -1 while live (a resumed run has some) */
} fisher_job_group;

typedef struct {
    void *ctx;
    void (*on_log)(void *ctx, const char *line);                 /* what a person should read */
    /* strategy "fisher": the parameter groups, once before the first step;
     * on_method's chunk indices index this array */
    void (*on_groups)(void *ctx, const fisher_job_group *groups, size_t n);
    void (*on_progress)(void *ctx, const fisher_job_progress *p);
    void (*on_eval)(void *ctx, const fisher_job_eval *e);
    void (*on_checkpoint)(void *ctx, int64_t step, const char *path);
    /* just before a checkpoint after `step` steps is written: a caller that
     * keeps the run's history elsewhere makes everything reported so far
     * durable here, so that a checkpoint never gets ahead of the history a
     * resumed run continues */
    void (*on_checkpoint_begin)(void *ctx, int64_t step);
    /* strategy "fisher": after every step that measured drift or froze
     * chunks; r's per-chunk arrays have n_chunks entries. chunks is the
     * method's tracking state, or NULL when the report crossed a process
     * boundary (a distributed job's stream carries only the report). */
    void (*on_method)(void *ctx, int64_t step, const fisher_method_report *r,
                      const fisher_chunk *chunks, size_t n_chunks);
} fisher_job_callbacks;

typedef struct {
    int64_t steps_done;
    int cancelled, stopped_early;
    int64_t best_step;                 /* step of the best val loss */
    fisher_job_eval final_val;         /* the final model on val */
    fisher_job_eval zero_shot[FISHER_MAX_ZERO_SHOT];
    int n_zero_shot;
    double wall_seconds;
    size_t parameters;
    size_t params_trainable;           /* at the end */
    double params_trainable_mean;      /* averaged over the steps */
    double step_seconds_mean;          /* a step (batch, forward, backward, update, the method's
                                          bookkeeping) averaged over the steps this run made;
                                          wall_seconds also holds loading and evaluations */
} fisher_job_result;

/* Opens a weights file fisherd wrote (or any SegFormer safetensors with
 * the architecture under "config" in its metadata). A file without a
 * decode head loads as an encoder (the head keeps a random init; *flags
 * gets FISHER_LOAD_ENCODER_ONLY). The input size and normalisation it was
 * trained with come back when the file records them (else 0 and ImageNet's).
 * Any pointer but path may be NULL. */
fisher_segformer *fisher_model_load(const char *path, int *image_size, fisher_normalization *norm,
                                    unsigned *flags, fisher_error *err);

/* Runs the job: builds the model and data, trains, evaluates every
 * eval_interval steps (and at the end), stops early on patience, writes
 * checkpoints to out_dir/checkpoint.safetensors and the final weights to
 * out_dir/model.safetensors, then evaluates zero-shot sets. When *cancel
 * becomes non-zero it stops after the current step and still writes a
 * checkpoint (result->cancelled = 1). Returns 0, or -1 with err set. */
int fisher_job_run(const fisher_job_spec *spec, const char *out_dir, const fisher_job_callbacks *cb,
                   const volatile int *cancel, fisher_job_result *result, fisher_error *err);

/* The same run continued from out_dir/checkpoint.safetensors, which a run
 * of this very spec wrote (at its checkpoint_interval, or when cancelled):
 * weights, optimiser, the method's tracking state and the loop's
 * bookkeeping are restored, and the run goes on from the checkpoint's step
 * exactly as if it had never stopped — the same batches, the same drift,
 * the same freeze decisions, the same weights. Callbacks report only the
 * steps after the checkpoint (and on_groups again). Returns as
 * fisher_job_run; a missing checkpoint, or one another spec wrote, is an
 * error saying so. */
int fisher_job_resume(const fisher_job_spec *spec, const char *out_dir, const fisher_job_callbacks *cb,
                      const volatile int *cancel, fisher_job_result *result, fisher_error *err);

/* One rank of a data-parallel run of s over comm (issue 9; comm.h). Every
 * rank calls it with the same spec and out_dir; comm->size == s->ranks. A
 * NULL comm is one process: exactly fisher_job_run (resume 0) or
 * fisher_job_resume (resume 1).
 *   - Each rank trains on its own contiguous shard of every global batch
 *     (the spec's batch_size): rank r of N gets rows [r·B/N, (r+1)·B/N),
 *     the same samples and augmentation one process uses for those rows,
 *     and decodes only those. N ranks compute what one process would with
 *     the whole batch (within float tolerance of the reduction order). One
 *     process running a spec of ranks N > 1 (comm NULL) averages the norm
 *     layers' Fisher statistics over N shards of the batch, as N ranks do,
 *     so a job's numbers do not depend on whether it ran distributed.
 *   - Evaluations are split across ranks (contiguous blocks of batches)
 *     and their sums all-reduced: every rank gets the same metrics, and
 *     early stopping decides alike.
 *   - *cancel may be set on any rank; the ranks agree on it every step (one
 *     all-reduce of 3 doubles), so all stop after the same step.
 *   - Rank 0 alone writes out_dir's checkpoint and model and calls cb;
 *     other ranks may pass NULL (and cb is never used on them). A resumed
 *     run reads out_dir's checkpoint on every rank (a path every rank can
 *     read). distributed.hostfile is not part of the run a checkpoint
 *     belongs to; distributed.ranks is.
 *   - A failure one rank can have alone (setting up: model, data,
 *     checkpoint; loading a batch; an evaluation; rank 0 writing a file)
 *     is agreed on at the next collective: every rank returns -1, the
 *     failed one with its own error, the others with one naming its rank.
 * Returns as fisher_job_run. A failed collective is an error on that rank,
 * and the ranks are then out of step: the caller must end them all (under
 * MPI, MPI_Abort rather than MPI_Finalize). */
int fisher_job_run_rank(const fisher_job_spec *spec, const char *out_dir, int resume, fisher_comm *comm,
                        const fisher_job_callbacks *cb, const volatile int *cancel,
                        fisher_job_result *result, fisher_error *err);

#endif
