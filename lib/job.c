/*
 * job.c — running a job (job.h).
 *
 *   build model (random init or a weights file) → open datasets → for each
 *   step: batch, trainer step, progress; every eval_interval steps (or
 *   epoch): validate, early-stopping bookkeeping, optional checkpoint →
 *   at the end: checkpoint, restore the best weights when early stopping
 *   is on, final validation, model.safetensors, zero-shot evaluations.
 *
 * Contract with the callers: every failure is an error message (nothing is
 * printed here); when cancelled, the job stops between steps and still
 * writes its checkpoint, so no finished step is lost.
 */
#include "job.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "segformer.h"
#include "train.h"

/* Folder datasets are decoded once and kept in memory up to this size. */
#define DATASET_CACHE_BYTES ((size_t)2 << 30)

static void say(const fisher_job_callbacks *cb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(const fisher_job_callbacks *cb, const char *fmt, ...) {
    if (!cb || !cb->on_log) return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    cb->on_log(cb->ctx, line);
}

fisher_segformer *fisher_model_load(const char *path, int *image_size, fisher_normalization *norm,
                                    unsigned *loaded_flags, fisher_error *err) {
    fisher_safetensors *st = fisher_safetensors_open(path, err);
    if (!st) return NULL;
    fisher_segformer *m = NULL;
    fisher_segformer_config cfg;
    const char *json = fisher_safetensors_metadata(st, "config");
    if (!json) {
        fisher_errorf(err, "%s: no \"config\" in its metadata; fisherd needs the architecture "
                      "written with the weights", path);
        goto out;
    }
    if (fisher_segformer_config_named(&cfg, "tiny", err)) goto out;
    if (fisher_segformer_config_from_json(&cfg, json, err)) {
        char why[sizeof err->msg];
        snprintf(why, sizeof why, "%s", err->msg);
        fisher_errorf(err, "%s: %s", path, why);
        goto out;
    }
    int64_t shape[FISHER_ST_MAX_DIMS];
    fisher_dtype dtype;
    int ndim;
    int has_head = fisher_safetensors_info(st, "decode_head.classifier.weight", &dtype, &ndim, shape, NULL) == 0;
    unsigned flags = has_head ? 0 : FISHER_LOAD_ENCODER_ONLY;
    /* The file must fill the model before the model is built: a 16 KB
     * upload whose config asks for a billion parameters was allocating and
     * initialising gigabytes, only to find its first tensor missing
     * (tests/fuzz/safetensors.c). */
    if (fisher_segformer_check_file(&cfg, st, flags, err) || !(m = fisher_segformer_create(&cfg, err))) goto out;
    if (fisher_segformer_load(m, st, flags, err)) {
        fisher_segformer_free(m);
        m = NULL;
        goto out;
    }
    if (loaded_flags) *loaded_flags = flags;
    if (image_size) {
        const char *size = fisher_safetensors_metadata(st, "image_size");
        *image_size = size ? atoi(size) : 0;
    }
    if (norm) {
        *norm = fisher_normalization_imagenet();
        const char *text = fisher_safetensors_metadata(st, "normalization");
        json_t *o = text ? json_loads(text, 0, NULL) : NULL;
        for (int c = 0; o && c < 3; c++) {
            json_t *mv = json_array_get(json_object_get(o, "mean"), (size_t)c);
            json_t *sv = json_array_get(json_object_get(o, "std"), (size_t)c);
            if (json_is_number(mv) && json_is_number(sv) && json_number_value(sv) > 0)
                norm->mean[c] = (float)json_number_value(mv), norm->std[c] = (float)json_number_value(sv);
        }
        json_decref(o);
    }
out:
    fisher_safetensors_close(st);
    return m;
}

static fisher_segformer *build_model(const fisher_job_spec *s, const fisher_job_callbacks *cb,
                                     fisher_error *err) {
    fisher_segformer_config cfg;
    if (!s->base_path[0]) {
        if (fisher_segformer_config_named(&cfg, s->base_config, err)) return NULL;
        cfg.num_labels = s->num_labels;
        fisher_segformer *m = fisher_segformer_create(&cfg, err);
        if (m) fisher_segformer_init_random(m, s->seed);
        return m;
    }
    unsigned flags = 0;
    fisher_segformer *m = fisher_model_load(s->base_path, NULL, NULL, &flags, err);
    if (m)
        say(cb, "loaded %s%s", s->base_path,
            flags & FISHER_LOAD_ENCODER_ONLY ? " (encoder only: the decode head starts random)" : "");
    return m;
}

/* Whether every rank got through a step that can fail on one rank alone
 * (its batch, rank 0's files): one all-reduce of (failed ranks, the sum
 * of their numbers), so that all stop together rather than the healthy
 * ones waiting in the next collective for a rank that has left. Returns 0
 * when none failed; -1 otherwise — a failed rank keeps its own error, the
 * others get one naming the rank. */
static int agree_failure(fisher_comm *comm, int failed, const char *doing, fisher_error *err) {
    double x[2] = {failed ? 1.0 : 0.0, failed ? (double)comm->rank : 0.0};
    fisher_error e = {{0}};
    if (fisher_comm_sum_f64(comm, x, 2, &e)) {
        if (!failed && err) *err = e;
        return -1;
    }
    if (x[0] == 0) return 0;
    if (failed) return -1;
    if (x[0] == 1)
        return fisher_errorf(err, "rank %d of %d failed %s (its own error says why); every rank stops",
                             (int)x[1], comm->size, doing);
    return fisher_errorf(err, "%d of %d ranks failed %s (their own errors say why); every rank stops",
                         (int)x[0], comm->size, doing);
}

static fisher_dataset *open_data(const fisher_data_spec *d, const fisher_job_spec *s,
                                 fisher_error *err) {
    if (d->synthetic)
        return fisher_dataset_synthetic(d->domain, d->seed, d->count, s->image_size, s->image_size,
                                        &s->norm, err);
    return fisher_dataset_open_folder(d->path, s->image_size, s->image_size, &s->norm,
                                      DATASET_CACHE_BYTES, err);
}

static int loader_batch(void *ctx, int64_t step, float *images, float *masks, int B, int H, int W,
                        fisher_error *err) {
    (void)B, (void)H, (void)W;
    return fisher_loader_batch(ctx, step, images, masks, err);
}

/* One pass over ds, in order. With a communicator the pass is split into
 * contiguous blocks of batches, one per rank (contiguous, so the loader's
 * prefetch of the next batch is not wasted), and the sums all-reduced:
 * every rank gets the same numbers. */
static int evaluate_on(fisher_segformer *m, fisher_dataset *ds, const fisher_job_spec *s,
                       int64_t step, const char *label, const fisher_job_callbacks *cb,
                       fisher_comm *comm, fisher_job_eval *out, fisher_error *err) {
    fisher_loader *l = fisher_loader_create(ds, s->batch_size, 0, NULL, 0, err);
    fisher_eval_sums sums = {0};
    int rc = -1;
    if (l) {
        int64_t batches = fisher_loader_batches_per_epoch(l), first = 0, count = batches;
        if (comm) {
            first = batches * comm->rank / comm->size;
            count = batches * (comm->rank + 1) / comm->size - first;
        }
        if (batches < 1) fisher_errorf(err, "evaluation needs at least one batch"); /* as fisher_evaluate */
        else rc = fisher_evaluate_sums(m, first, count, s->batch_size, s->image_size, s->image_size,
                                       s->dice_weight, loader_batch, l, &sums, err);
        fisher_loader_free(l);
    }
    /* a rank that failed still takes part, so the others do not wait forever */
    if (comm && agree_failure(comm, rc != 0, "evaluating", err)) return -1;
    if (rc || fisher_eval_sums_allreduce(&sums, comm, err)) return -1;
    fisher_eval_sums_metrics(&sums, &out->metrics, &out->loss);
    out->step = step;
    snprintf(out->dataset, sizeof out->dataset, "%s", label);
    if (cb && cb->on_eval) cb->on_eval(cb->ctx, out);
    return 0;
}

static const char *layer_class_name(fisher_layer_class c) {
    static const char *const names[] = {"linear", "conv", "batchnorm", "layernorm"};
    return c >= 0 && c <= FISHER_CLASS_LAYERNORM ? names[c] : "other";
}

/* The chunk table with names, for on_groups. */
static int report_groups(const fisher_job_callbacks *cb, const fisher_trainer *t, fisher_error *err) {
    const fisher_chunk *chunks;
    const fisher_layer *layers;
    size_t n = fisher_method_chunks(t->method, &chunks);
    fisher_segformer_layers(t->model, &layers);
    const fisher_tensor_table *tab = fisher_segformer_params(t->model);
    fisher_job_group *g = calloc(n ? n : 1, sizeof *g);
    if (!g) return fisher_errorf(err, "out of memory listing %zu parameter groups", n);
    for (size_t i = 0; i < n; i++) {
        const fisher_chunk *c = &chunks[i];
        const fisher_layer *l = &layers[c->layer];
        g[i] = (fisher_job_group){c->key, tab->tensors[c->tensor].name, l->name, layer_class_name(l->cls),
                                 l->depth, c->axis, c->start, c->end, c->size, c->frozen_at};
    }
    cb->on_groups(cb->ctx, g, n);
    free(g);
    return 0;
}

/* What the loop of fisher_job_run carries from step to step besides the
 * trainer; a checkpoint keeps it so a resumed run continues the same run. */
typedef struct {
    double best_loss, trainable_sum;
    int evals_without_gain;
    int64_t last_eval, best_step;
    float *best, *best_buf;        /* the best weights and buffers (early stopping only) */
    size_t n_params, n_bufs;
} run_state;

/* The checkpoint: weights, buffers, the optimiser's moments per tensor, the
 * method's state (fisher_method_snapshot), the loop's (run_state) and the
 * step, so a run can continue exactly where it stopped (fisher_job_resume). */
static int write_checkpoint(const fisher_trainer *t, const fisher_job_spec *s, const run_state *rs,
                            int64_t step, const char *path, fisher_error *err) {
    const fisher_tensor_table *tab = fisher_segformer_params(t->model);
    size_t n = 2 * (size_t)tab->count + FISHER_METHOD_TENSORS + 2;
    fisher_st_tensor *extra = calloc(n, sizeof *extra);
    char (*names)[FISHER_NAME_MAX + 32] = calloc(n, sizeof *names);
    char *spec_json = fisher_job_spec_to_json(s);
    void *method_scratch = NULL;
    int rc = -1;
    if (!extra || !names || !spec_json) {
        fisher_errorf(err, "out of memory writing checkpoint %s", path);
        goto out;
    }
    for (int i = 0; i < tab->count; i++) {
        const fisher_tensor *e = &tab->tensors[i];
        for (int k = 0; k < 2; k++) {
            size_t j = 2 * (size_t)i + (size_t)k;
            snprintf(names[j], sizeof names[j], "optimizer.%s.%s", k ? "exp_avg_sq" : "exp_avg", e->name);
            extra[j] = (fisher_st_tensor){.name = names[j], .dtype = FISHER_DTYPE_F32, .ndim = e->ndim,
                                          .data = (k ? t->opt.v : t->opt.m) + e->offset};
            for (int d = 0; d < e->ndim; d++) extra[j].shape[d] = e->shape[d];
        }
    }
    size_t k = 2 * (size_t)tab->count;
    if (t->method) {
        size_t m;
        if (fisher_method_snapshot(t->method, extra + k, &m, &method_scratch, err)) goto out;
        k += m;
    }
    if (rs->best) {
        extra[k++] = (fisher_st_tensor){.name = "run.best_params", .dtype = FISHER_DTYPE_F32, .ndim = 1,
                                        .shape = {(int64_t)rs->n_params}, .data = rs->best};
        extra[k++] = (fisher_st_tensor){.name = "run.best_buffers", .dtype = FISHER_DTYPE_F32, .ndim = 1,
                                        .shape = {(int64_t)rs->n_bufs}, .data = rs->best_buf};
    }
    char step_s[32], opt_step_s[32], size_s[16], run_s[256];
    snprintf(step_s, sizeof step_s, "%lld", (long long)step);
    snprintf(opt_step_s, sizeof opt_step_s, "%lld", (long long)t->opt.step);
    snprintf(size_s, sizeof size_s, "%d", s->image_size);
    /* %.17g: doubles read back exactly */
    snprintf(run_s, sizeof run_s, "{\"best_loss\":%.17g,\"trainable_sum\":%.17g,\"evals_without_gain\":%d,"
             "\"last_eval\":%lld,\"best_step\":%lld}", isfinite(rs->best_loss) ? rs->best_loss : 1e308,
             rs->trainable_sum, rs->evals_without_gain, (long long)rs->last_eval, (long long)rs->best_step);
    fisher_st_meta meta[] = {{"step", step_s}, {"optimizer_step", opt_step_s}, {"image_size", size_s},
                             {"job", spec_json}, {"run", run_s}};
    rc = fisher_segformer_save_with(t->model, path, extra, k, meta, sizeof meta / sizeof *meta, err);
out:
    free(spec_json), free(names), free(extra), free(method_scratch);
    return rc;
}

/* Reads what write_checkpoint wrote back into m, t and rs; *step gets the
 * checkpoint's step. The spec must be the one that wrote it. */
static int read_checkpoint(fisher_segformer *m, fisher_trainer *t, const fisher_job_spec *s, run_state *rs,
                           const char *path, int64_t *step, fisher_error *err) {
    fisher_safetensors *st = fisher_safetensors_open(path, err);
    if (!st) return -1;
    int rc = -1;
    char *spec_json = fisher_job_spec_to_json(s), *written_json = NULL;
    const char *job = fisher_safetensors_metadata(st, "job"), *run = fisher_safetensors_metadata(st, "run");
    const char *step_s = fisher_safetensors_metadata(st, "step"), *opt_s = fisher_safetensors_metadata(st, "optimizer_step");
    if (!job || !run || !step_s || !opt_s) {
        fisher_errorf(err, "%s: not a checkpoint this version of fisherd can resume from", path);
        goto out;
    }
    /* the same run: every field but how it is executed (threads, checkpoint interval) */
    fisher_job_spec written;
    fisher_job_spec_defaults(&written);
    if (fisher_job_spec_parse(&written, job, NULL, 0, NULL) == 0) {
        written.threads = s->threads, written.checkpoint_interval = s->checkpoint_interval;
        /* nor on which machines: the hostfile. (distributed.ranks does
         * belong to the run: it sets the shards the Fisher statistics
         * average over, whether the run is distributed or not.) */
        memcpy(written.hostfile, s->hostfile, sizeof written.hostfile);
        written_json = fisher_job_spec_to_json(&written);
    }
    if (!spec_json || !written_json || strcmp(written_json, spec_json)) {
        fisher_errorf(err, "%s was written by a different job spec: resume with the spec that wrote it", path);
        goto out;
    }
    long long last_eval, best_step;
    if (sscanf(run, "{\"best_loss\":%lf,\"trainable_sum\":%lf,\"evals_without_gain\":%d,\"last_eval\":%lld,"
                    "\"best_step\":%lld}", &rs->best_loss, &rs->trainable_sum, &rs->evals_without_gain,
               &last_eval, &best_step) != 5) {
        fisher_errorf(err, "%s: its \"run\" metadata is damaged", path);
        goto out;
    }
    if (rs->best_loss >= 1e308) rs->best_loss = INFINITY;
    rs->last_eval = last_eval, rs->best_step = best_step;
    *step = strtoll(step_s, NULL, 10);
    if (fisher_segformer_load(m, st, 0, err) ||
        fisher_trainer_restore(t, st, *step, strtoll(opt_s, NULL, 10), err))
        goto out;
    if (rs->best) {
        int64_t np = (int64_t)rs->n_params, nb = (int64_t)rs->n_bufs;
        if (fisher_safetensors_read_f32(st, "run.best_params", rs->best, 1, &np, err) ||
            fisher_safetensors_read_f32(st, "run.best_buffers", rs->best_buf, 1, &nb, err))
            goto out;
    }
    rc = 0;
out:
    free(spec_json), free(written_json);
    fisher_safetensors_close(st);
    return rc;
}

/* The deliverable: weights plus what predict needs to feed it (image size
 * and normalisation) in the metadata. */
static int write_model(const fisher_segformer *m, const fisher_job_spec *s, const char *path,
                       fisher_error *err) {
    char size_s[16], norm_s[256];
    snprintf(size_s, sizeof size_s, "%d", s->image_size);
    snprintf(norm_s, sizeof norm_s, "{\"mean\":[%.9g,%.9g,%.9g],\"std\":[%.9g,%.9g,%.9g]}",
             (double)s->norm.mean[0], (double)s->norm.mean[1], (double)s->norm.mean[2],
             (double)s->norm.std[0], (double)s->norm.std[1], (double)s->norm.std[2]);
    fisher_st_meta meta[] = {{"image_size", size_s}, {"normalization", norm_s}};
    return fisher_segformer_save_with(m, path, NULL, 0, meta, 2, err);
}

/* A checkpoint after `step` steps: rank 0 writes it (telling cb before and
 * after, as a one-process run does); with a communicator the ranks then
 * agree that it was written, so a failed write stops all of them. */
static int checkpoint(const fisher_trainer *t, const fisher_job_spec *s, const run_state *rs, int64_t step,
                      const char *path, const fisher_job_callbacks *cb, fisher_comm *comm, fisher_error *err) {
    int bad = 0;
    if (!comm || comm->rank == 0) {
        if (cb && cb->on_checkpoint_begin) cb->on_checkpoint_begin(cb->ctx, step);
        bad = write_checkpoint(t, s, rs, step, path, err) != 0;
        if (!bad && cb && cb->on_checkpoint) cb->on_checkpoint(cb->ctx, step, path);
    }
    if (comm) return agree_failure(comm, bad, "writing the checkpoint", err);
    return bad ? -1 : 0;
}

static void say_decision(const fisher_job_callbacks *cb, const fisher_trainer *t, int64_t step) {
    const fisher_method_report *r = &t->report;
    size_t total = fisher_segformer_params(t->model)->total;
    if (r->zero_freeze)
        say(cb, "step %lld: froze %zu chunks with zero Fisher; %zu chunks, %zu parameters (%.1f%%) live",
            (long long)step, r->n_frozen, r->chunks_live, r->params_live,
            100.0 * (double)r->params_live / (double)total);
    else
        say(cb, "step %lld: froze %zu chunks (threshold %.4g = mean %.4g + %.2g x std %.4g); "
            "%zu chunks, %zu parameters (%.1f%%) live", (long long)step, r->n_frozen,
            r->stats.threshold, r->stats.mean, r->stats.lambda, r->stats.std, r->chunks_live,
            r->params_live, 100.0 * (double)r->params_live / (double)total);
}

/* One rank of the job (all of it when comm is NULL): see job.h. Rank 0
 * alone holds the callbacks and writes files; the others get cb NULL
 * here, so nothing below can reach the caller's callbacks on them. */
static int run_job(const fisher_job_spec *s, const char *out_dir, int resume, fisher_comm *comm,
                   const fisher_job_callbacks *cb_in, const volatile int *cancel, fisher_job_result *res,
                   fisher_error *err) {
    memset(res, 0, sizeof *res);
    double t_start = fisher_now_seconds();
    int rc = -1, B = s->batch_size, H = s->image_size, W = s->image_size;
    int rank = comm ? comm->rank : 0, ranks = comm ? comm->size : 1;
    const fisher_job_callbacks *cb = rank == 0 ? cb_in : NULL;
    int Bl = B;                      /* this rank's rows of every global batch */
    fisher_segformer *m = NULL;
    fisher_dataset *train = NULL, *val = NULL;
    fisher_loader *loader = NULL;
    fisher_trainer t = {0};
    float *images = NULL, *masks = NULL;
    run_state rs = {.best_loss = INFINITY, .last_eval = -1};
    int64_t per_epoch = 1, total = 0, eval_every = 1, step = 0;
    size_t n_params = 0, n_bufs = 0;
    int setup_failed = 1;
    char ckpt_path[PATH_MAX + 32], model_path[PATH_MAX + 32];
    snprintf(ckpt_path, sizeof ckpt_path, "%s/checkpoint.safetensors", out_dir);
    snprintf(model_path, sizeof model_path, "%s/model.safetensors", out_dir);

    /* the spec parser's checks, again for a spec built in code */
    if (s->ranks < 1 || s->ranks > FISHER_MAX_RANKS || (B > 0 && B % s->ranks)) {
        fisher_errorf(err, "distributed.ranks: %d ranks for batch_size %d; 1 to %d ranks that divide "
                      "batch_size expected", s->ranks, B, FISHER_MAX_RANKS);
        goto out;
    }
    if (comm) {
        if (fisher_comm_validate(comm, err)) goto out;
        if (comm->size != s->ranks) {
            fisher_errorf(err, "rank %d: the communicator has %d ranks, the spec's distributed.ranks is %d",
                          rank, comm->size, s->ranks);
            goto out;
        }
        Bl = B / ranks;
    }
    fisher_set_threads(s->threads);
    if (!(m = build_model(s, cb, err))) goto setup_done;
    res->parameters = fisher_segformer_params(m)->total;
    /* One process running a spec of N ranks computes what the N ranks
     * would: the norm layers' Fisher statistics are per-shard and then
     * averaged across ranks (segformer.h), so here they are averaged over
     * N shards of the batch. A job's numbers then do not depend on whether
     * it ran distributed, and either kind can resume the other's checkpoint. */
    if (!comm && s->ranks > 1 && fisher_segformer_set_stat_shards(m, s->ranks, err)) goto setup_done;
    if (!(train = open_data(&s->train, s, err)) || !(val = open_data(&s->val, s, err))) goto setup_done;
    say(cb, "train: %s", fisher_dataset_describe(train));
    say(cb, "val: %s", fisher_dataset_describe(val));
    if (!(loader = fisher_loader_create(train, B, 1, &s->augment, s->seed, err))) goto setup_done;
    /* the global batch's order and augmentation, this rank's rows only */
    if (comm && fisher_loader_shard(loader, rank * Bl, Bl, err)) goto setup_done;
    per_epoch = fisher_loader_batches_per_epoch(loader);
    if (per_epoch < 1) {
        fisher_errorf(err, "data.train has %zu samples, fewer than one batch of %d",
                      fisher_dataset_count(train), B);
        goto setup_done;
    }
    total = s->steps ? s->steps : s->epochs * per_epoch;
    eval_every = s->eval_interval ? s->eval_interval : per_epoch;
    if (fisher_trainer_init(&t, m, Bl, H, W, s->optim, s->dice_weight, s->strategy, &s->fisher, err))
        goto setup_done;
    n_params = fisher_segformer_params(m)->total, n_bufs = fisher_segformer_buffers(m)->total;
    rs.n_params = n_params, rs.n_bufs = n_bufs;
    images = malloc((size_t)Bl * H * W * 3 * sizeof(float));
    masks = malloc(t.n_logits * sizeof(float));
    if (s->patience) {
        rs.best = malloc(n_params * sizeof(float));
        rs.best_buf = malloc(n_bufs * sizeof(float));
    }
    if (!images || !masks || (s->patience && (!rs.best || !rs.best_buf))) {
        fisher_errorf(err, "out of memory for the training batch");
        goto setup_done;
    }
    if (resume) {
        if (read_checkpoint(m, &t, s, &rs, ckpt_path, &step, err)) goto setup_done;
        /* the final evaluation's numbers are not kept: evaluate again if needed */
        if (rs.last_eval == step) rs.last_eval = -1;
        res->best_step = rs.best_step;
        say(cb, "resumed from %s at step %lld", ckpt_path, (long long)step);
    }
    setup_failed = 0;
setup_done:
    /* Setting up can fail on one rank alone (a file only its host cannot
     * read): agreed on before the first collective of training, so the
     * others do not wait there for it. */
    if (comm ? agree_failure(comm, setup_failed, "setting up (model, data or checkpoint)", err) : setup_failed)
        goto out;
    /* after the restore, so that set_comm's check that the ranks start
     * alike covers what every rank read */
    if (comm && fisher_trainer_set_comm(&t, comm, err)) goto out;
    say(cb, "%s: strategy %s, %zu of %zu parameters train, %lld steps (%lld per epoch), batch %d at %dx%d",
        s->name, fisher_strategy_name(s->strategy), t.params_trainable, res->parameters,
        (long long)total, (long long)per_epoch, B, H, W);
    if (comm) say(cb, "data parallel: %d ranks of %d samples each", ranks, Bl);
    if (t.method) {
        const fisher_chunk *chunks;
        say(cb, "fisher: %zu chunks; drift every %lld steps, freeze decisions every %lld",
            fisher_method_chunks(t.method, &chunks), (long long)s->fisher.ema_interval,
            (long long)s->fisher.freeze_interval);
    }

    {
        int bad = t.method && cb && cb->on_groups && report_groups(cb, &t, err);
        if (comm ? agree_failure(comm, bad, "listing the parameter groups", err) : bad) goto out;
    }
    fisher_job_eval ev;
    double step_seconds_sum = 0;
    int64_t steps_run = 0;
    for (; step < total; step++) {
        double t0 = fisher_now_seconds();
        float loss;
        if (comm) {
            /* Every rank's cancel flag and batch, agreed on in one tiny
             * all-reduce, so that all stop after the same step. The batch
             * comes first: a rank that cannot load its shard says so here
             * instead of leaving the others waiting in the step. */
            int got = fisher_loader_batch(loader, step, images, masks, err);
            double x[3] = {cancel && *cancel ? 1.0 : 0.0, got < 0 ? 1.0 : 0.0, got < 0 ? (double)rank : 0.0};
            fisher_error e = {{0}};
            if (fisher_comm_sum_f64(comm, x, 3, &e)) {
                if (got >= 0) *err = e;
                goto out;
            }
            if (x[1] > 0) {
                if (got >= 0 && x[1] == 1)
                    fisher_errorf(err, "rank %d of %d could not load its batch of step %lld (its own error "
                                  "says why); every rank stops", (int)x[2], ranks, (long long)step + 1);
                else if (got >= 0)
                    fisher_errorf(err, "%d of %d ranks could not load their batches of step %lld (their own "
                                  "errors say why); every rank stops", (int)x[1], ranks, (long long)step + 1);
                goto out;
            }
            if (x[0] > 0) {
                res->cancelled = 1;
                break;
            }
        } else {
            if (cancel && *cancel) {
                res->cancelled = 1;
                break;
            }
            if (fisher_loader_batch(loader, step, images, masks, err) < 0) goto out;
        }
        if (fisher_trainer_step(&t, images, masks, &loss, err)) goto out;
        rs.trainable_sum += (double)t.params_trainable;
        if (t.method && cb && cb->on_method && (t.report.measured || t.report.decided)) {
            const fisher_chunk *chunks;
            size_t n_chunks = fisher_method_chunks(t.method, &chunks);
            cb->on_method(cb->ctx, step, &t.report, chunks, n_chunks);
        }
        if (t.report.decided) say_decision(cb, &t, step);
        /* the global batch's loss: the same on every rank, so all fail alike */
        if (!isfinite(loss)) {
            fisher_errorf(err, "the loss became %g at step %lld: lower optim.lr", (double)loss,
                          (long long)step + 1);
            goto out;
        }
        double step_seconds = fisher_now_seconds() - t0;
        step_seconds_sum += step_seconds, steps_run++;
        if (cb && cb->on_progress) {
            fisher_job_progress p = {step + 1, total, step / per_epoch, loss,
                                     step_seconds, t.params_trainable, res->parameters};
            cb->on_progress(cb->ctx, &p);
        }
        if ((step + 1) % eval_every == 0 || step + 1 == total) {
            if (evaluate_on(m, val, s, step + 1, "val", cb, comm, &ev, err)) goto out;
            rs.last_eval = step + 1;
            if (ev.loss < rs.best_loss) {
                rs.best_loss = ev.loss, rs.best_step = res->best_step = step + 1, rs.evals_without_gain = 0;
                if (rs.best) {
                    memcpy(rs.best, fisher_segformer_param_data(m), n_params * sizeof(float));
                    memcpy(rs.best_buf, fisher_segformer_buffer_data(m), n_bufs * sizeof(float));
                }
            } else if (s->patience && ++rs.evals_without_gain >= s->patience) {
                say(cb, "early stop after step %lld: val loss has not improved for %d evaluations "
                    "(best %.4f at step %lld)", (long long)step + 1, s->patience, rs.best_loss,
                    (long long)res->best_step);
                res->stopped_early = 1;
                step++;
                break;
            }
            /* evaluation prepared the model for its own batches: back to training's */
            if (fisher_segformer_prepare(m, Bl, H, W, err)) goto out;
        }
        if (s->checkpoint_interval && (step + 1) % s->checkpoint_interval == 0 &&
            checkpoint(&t, s, &rs, step + 1, ckpt_path, cb, comm, err))
            goto out;
    }
    res->steps_done = step;
    res->params_trainable = t.params_trainable;
    res->params_trainable_mean = step ? rs.trainable_sum / (double)step : (double)t.params_trainable;
    res->step_seconds_mean = steps_run ? step_seconds_sum / (double)steps_run : 0;
    if (checkpoint(&t, s, &rs, step, ckpt_path, cb, comm, err)) goto out;
    if (res->cancelled) {
        say(cb, "cancelled after step %lld; checkpoint %s", (long long)step, ckpt_path);
        rc = 0;
        goto out;
    }
    if (rs.best && res->best_step && res->best_step != step) {
        memcpy(fisher_segformer_param_data(m), rs.best, n_params * sizeof(float));
        memcpy(fisher_segformer_buffer_data(m), rs.best_buf, n_bufs * sizeof(float));
        say(cb, "restored the best weights (step %lld)", (long long)res->best_step);
        rs.last_eval = -1; /* the final numbers must be the restored model's */
    }
    if (rs.last_eval == step) res->final_val = ev;
    else if (evaluate_on(m, val, s, step, "val", cb, comm, &res->final_val, err)) goto out;
    {
        int bad = rank == 0 && write_model(m, s, model_path, err);
        if (comm ? agree_failure(comm, bad, "writing the model", err) : bad) goto out;
    }
    say(cb, "weights: %s", model_path);
    for (int i = 0; i < s->n_zero_shot; i++) {
        fisher_dataset *zs = open_data(&s->zero_shot[i], s, err);
        if (comm && agree_failure(comm, zs == NULL, "opening a zero-shot dataset", err)) {
            fisher_dataset_close(zs);
            goto out;
        }
        if (!zs) goto out;
        int bad = evaluate_on(m, zs, s, step, fisher_dataset_describe(zs), cb, comm, &res->zero_shot[i], err);
        fisher_dataset_close(zs);
        if (bad) goto out;
        res->n_zero_shot = i + 1;
    }
    rc = 0;
out:
    res->wall_seconds = fisher_now_seconds() - t_start;
    fisher_trainer_free(&t);
    fisher_loader_free(loader);
    fisher_dataset_close(train);
    fisher_dataset_close(val);
    fisher_segformer_free(m);
    free(images), free(masks), free(rs.best), free(rs.best_buf);
    return rc;
}

int fisher_job_run_rank(const fisher_job_spec *s, const char *out_dir, int resume, fisher_comm *comm,
                        const fisher_job_callbacks *cb, const volatile int *cancel, fisher_job_result *res,
                        fisher_error *err) {
    return run_job(s, out_dir, resume != 0, comm, cb, cancel, res, err);
}

int fisher_job_run(const fisher_job_spec *s, const char *out_dir, const fisher_job_callbacks *cb,
                   const volatile int *cancel, fisher_job_result *res, fisher_error *err) {
    return run_job(s, out_dir, 0, NULL, cb, cancel, res, err);
}

int fisher_job_resume(const fisher_job_spec *s, const char *out_dir, const fisher_job_callbacks *cb,
                      const volatile int *cancel, fisher_job_result *res, fisher_error *err) {
    return run_job(s, out_dir, 1, NULL, cb, cancel, res, err);
}
