/* train.c — see train.h. */
#include "train.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double fisher_now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void fisher_set_threads(int n) {
    if (n < 1) return;
    openblas_set_num_threads(n);
    omp_set_num_threads(n);
}

static const char *const strategy_names[] = {"full", "fisher", "decoder", "norm", "bitfit"};

int fisher_strategy_parse(const char *name) {
    for (int i = 0; i < (int)(sizeof strategy_names / sizeof *strategy_names); i++)
        if (strcmp(name, strategy_names[i]) == 0) return i;
    return -1;
}

const char *fisher_strategy_name(fisher_strategy s) { return strategy_names[s]; }

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Whether tensor ti trains under a fixed recipe. */
static int recipe_trains(const fisher_segformer *m, fisher_strategy s, int ti) {
    const fisher_tensor *t = &fisher_segformer_params(m)->tensors[ti];
    if (s == FISHER_STRATEGY_DECODER) return strncmp(t->name, "decode_head.", 12) == 0;
    if (s == FISHER_STRATEGY_BITFIT) return ends_with(t->name, ".bias");
    /* norm: the affine parameters of LayerNorm and BatchNorm layers */
    const fisher_layer *layers;
    size_t n = fisher_segformer_layers(m, &layers);
    for (size_t l = 0; l < n; l++)
        if ((layers[l].weight == ti || layers[l].bias == ti) &&
            (layers[l].cls == FISHER_CLASS_LAYERNORM || layers[l].cls == FISHER_CLASS_BATCHNORM))
            return 1;
    return 0;
}

/* The elements that train: the method's live ones, the recipe's, or all (NULL). */
static const uint8_t *live_mask(const fisher_trainer *t) {
    return t->method ? fisher_method_live_mask(t->method) : t->trainable;
}

/* What AdamW updates, as runs: every element (full), the recipe's, or the
 * method's live ones. */
static void refresh_ranges(fisher_trainer *t) {
    size_t n = fisher_segformer_params(t->model)->total;
    const uint8_t *mask = live_mask(t);
    if (!mask) {
        t->ranges[0] = (fisher_range){0, n};
        t->n_ranges = 1;
    } else {
        t->n_ranges = fisher_mask_ranges(mask, n, t->ranges);
    }
}

/* Everything that follows chunks freezing (FISHERADAPTUNE.md §6, §8): their
 * moments zeroed, AdamW's runs updated, and the model to be told before the
 * next backward which rows and tensors still need gradients. */
static void after_freezing(fisher_trainer *t) {
    fisher_adamw_zero_frozen(&t->opt, fisher_method_live_mask(t->method));
    t->model_told = 0;
    refresh_ranges(t);
    t->params_trainable = fisher_method_params_live(t->method);
}

int fisher_trainer_init(fisher_trainer *t, fisher_segformer *m, int B, int H, int W,
                        fisher_adamw_config optim, float dice_weight, fisher_strategy strategy,
                        const fisher_method_config *method, fisher_error *err) {
    memset(t, 0, sizeof *t);
    if (B < 1) return fisher_errorf(err, "batch_size must be ≥ 1, got %d", B);
    if (fisher_segformer_prepare(m, B, H, W, err)) return -1;
    const fisher_tensor_table *tab = fisher_segformer_params(m);
    t->model = m;
    t->strategy = strategy;
    t->dice_weight = dice_weight;
    t->params_trainable = tab->total;
    t->skip_frozen_work = 1;
    t->n_logits = (size_t)B * H * W * (size_t)fisher_segformer_get_config(m)->num_labels;
    t->dlogits = malloc(t->n_logits * sizeof(float));
    if (!t->dlogits) return fisher_errorf(err, "out of memory for a batch of %d at %dx%d", B, H, W);
    if (fisher_adamw_init(&t->opt, tab->total, optim, err)) goto fail;
    if (!(t->ranges = malloc((tab->total / 2 + 1) * sizeof *t->ranges))) {
        fisher_errorf(err, "out of memory");
        goto fail;
    }
    if (strategy == FISHER_STRATEGY_FISHER) {
        fisher_method_config defaults = fisher_method_defaults();
        if (!(t->method = fisher_method_create(m, method ? method : &defaults, err))) goto fail;
    } else if (strategy != FISHER_STRATEGY_FULL) {
        if (!(t->trainable = calloc(tab->total, 1))) {
            fisher_errorf(err, "out of memory");
            goto fail;
        }
        t->params_trainable = 0;
        for (int i = 0; i < tab->count; i++) {
            if (!recipe_trains(m, strategy, i)) continue;
            memset(t->trainable + tab->tensors[i].offset, 1, tab->tensors[i].numel);
            t->params_trainable += tab->tensors[i].numel;
        }
    }
    refresh_ranges(t);
    return 0;
fail:
    fisher_trainer_free(t);
    return -1;
}

/* The communicator the model sees: the caller's, with every byte counted
 * into the trainer's per-step figures. */
static int counted_f64(fisher_comm *c, double *x, size_t n, fisher_error *err) {
    fisher_trainer *t = c->ctx;
    t->allreduce_bytes += n * sizeof *x, t->allreduce_calls++;
    return fisher_comm_sum_f64(t->comm, x, n, err);
}

static int counted_f32(fisher_comm *c, float *x, size_t n, fisher_error *err) {
    fisher_trainer *t = c->ctx;
    t->allreduce_bytes += n * sizeof *x, t->allreduce_calls++;
    return fisher_comm_sum_f32(t->comm, x, n, err);
}

/* FNV-1a over n bytes, continuing from h. */
static uint64_t fnv1a(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* Whether every rank holds what this one does. Each rank's 64-bit
 * fingerprint goes out as four 16-bit pieces x with their squares; the
 * ranks agree iff size·Σx² = (Σx)² for every piece (equality in
 * Cauchy–Schwarz), and the sums are exact in double (pieces < 2¹⁶, squares
 * < 2³², for any plausible number of ranks). Every rank sees the same sums,
 * so all of them fail or none. */
int fisher_trainer_check_ranks(fisher_trainer *t, fisher_error *err) {
    if (!t->comm) return 0;
    fisher_segformer *m = t->model;
    uint64_t h = 14695981039346656037ull;
    h = fnv1a(h, fisher_segformer_param_data(m), fisher_segformer_params(m)->total * sizeof(float));
    h = fnv1a(h, fisher_segformer_buffer_data(m), fisher_segformer_buffers(m)->total * sizeof(float));
    uint64_t shape[3] = {t->n_logits, (uint64_t)t->strategy, t->params_trainable};
    h = fnv1a(h, shape, sizeof shape);
    const fisher_adamw_config *o = &t->opt.cfg;
    float opt[5] = {o->lr, o->beta1, o->beta2, o->eps, o->weight_decay};
    h = fnv1a(h, opt, sizeof opt);
    double x[8];
    for (int k = 0; k < 4; k++) {
        x[k] = (double)((h >> (16 * k)) & 0xffff);
        x[4 + k] = x[k] * x[k];
    }
    if (fisher_comm_sum_f64(t->comm, x, 8, err)) return -1;
    for (int k = 0; k < 4; k++)
        if (x[4 + k] * t->comm->size != x[k] * x[k])
            return fisher_errorf(err,
                                 "rank %d of %d at step %lld: the ranks are not alike (parameters, "
                                 "BatchNorm buffers, local batch shape, strategy, optimiser settings or "
                                 "trainable set differ): at the start, load the same model and pass the "
                                 "same configuration on every rank; later, the communicator did not "
                                 "return the same sums on every rank",
                                 t->comm->rank, t->comm->size, (long long)t->step);
    return 0;
}

int fisher_trainer_set_comm(fisher_trainer *t, fisher_comm *comm, fisher_error *err) {
    if (!comm) return fisher_errorf(err, "set_comm needs a communicator");
    if (fisher_comm_validate(comm, err)) return -1;
    if (!t->fused && !(t->fused = malloc(FISHER_FUSED_FLOATS * sizeof *t->fused)))
        return fisher_errorf(err, "out of memory for the gradient all-reduce buffer");
    t->fused_floats = FISHER_FUSED_FLOATS;
    t->comm = comm;
    if (fisher_trainer_check_ranks(t, err)) {
        t->comm = NULL;
        return -1;
    }
    t->counted = (fisher_comm){comm->rank, comm->size, counted_f64, counted_f32, t};
    fisher_segformer_set_comm(t->model, &t->counted);
    return 0;
}

/* Sums the gradients of the elements AdamW updates (t->ranges) over the
 * ranks: packed run after run into the fused buffer, one all-reduce each
 * time it fills (and once for the rest), then unpacked. Elements outside
 * the runs (frozen, or not in the recipe) are neither sent nor used. */
static int allreduce_gradients(fisher_trainer *t, fisher_error *err) {
    float *g = fisher_segformer_grad_data(t->model), *buf = t->fused;
    size_t used = 0, r = 0, at = t->n_ranges ? t->ranges[0].start : 0; /* next element to pack */
    size_t ur = 0, uat = at;                                          /* next to unpack */
    size_t cap = t->fused_floats && t->fused_floats < FISHER_FUSED_FLOATS ? t->fused_floats
                                                                           : FISHER_FUSED_FLOATS;
    uint64_t before = t->allreduce_bytes;
    while (r < t->n_ranges) {
        size_t take = t->ranges[r].end - at, room = cap - used;
        if (take > room) take = room;
        memcpy(buf + used, g + at, take * sizeof *buf);
        used += take, at += take;
        if (at == t->ranges[r].end && ++r < t->n_ranges) at = t->ranges[r].start;
        if (used < cap && r < t->n_ranges) continue;
        if (fisher_comm_sum_f32(&t->counted, buf, used, err)) return -1;
        t->grad_allreduce_calls++;
        for (size_t k = 0; k < used;) { /* back into the runs it came from */
            size_t n = t->ranges[ur].end - uat;
            if (n > used - k) n = used - k;
            memcpy(g + uat, buf + k, n * sizeof *buf);
            k += n, uat += n;
            if (uat == t->ranges[ur].end && ++ur < t->n_ranges) uat = t->ranges[ur].start;
        }
        used = 0;
    }
    t->grad_allreduce_bytes = t->allreduce_bytes - before;
    return 0;
}

void fisher_trainer_free(fisher_trainer *t) {
    if (t->model) {
        fisher_segformer_collect_stats(t->model, 0);
        fisher_segformer_set_live(t->model, NULL);
        if (t->comm) fisher_segformer_set_comm(t->model, NULL);
    }
    free(t->fused);
    t->fused = NULL, t->comm = NULL;
    free(t->ranges);
    t->ranges = NULL;
    fisher_adamw_free(&t->opt);
    fisher_method_free(t->method);
    free(t->trainable);
    free(t->dlogits);
    /* freeing twice is harmless, and must not touch a model freed meanwhile */
    t->method = NULL, t->trainable = NULL, t->dlogits = NULL, t->model = NULL;
}

int fisher_trainer_step(fisher_trainer *t, const float *images, const float *masks, float *loss,
                        fisher_error *err) {
    fisher_segformer *m = t->model;
    if (!t->model_told) { /* what needs gradients; NULL (all) for the plain computation */
        fisher_segformer_set_live(m, t->skip_frozen_work ? live_mask(t) : NULL);
        t->model_told = 1;
    }
    fisher_segformer_collect_stats(m, t->method && fisher_method_needs_stats(t->method, t->step));
    fisher_segformer_zero_grad(m);
    t->allreduce_bytes = t->grad_allreduce_bytes = t->allreduce_calls = t->grad_allreduce_calls = 0;
    fisher_comm *comm = t->comm ? &t->counted : NULL;
    const float *logits = fisher_segformer_forward_sync(m, images, 1, err);
    if (!logits) return -1;
    if (fisher_seg_loss_global(loss, t->dlogits, logits, masks, t->n_logits, t->dice_weight, comm, err))
        return -1;
    if (fisher_segformer_backward(m, t->dlogits, err)) return -1;
    /* before the method: its empirical estimator squares the global gradient */
    if (comm && allreduce_gradients(t, err)) return -1;
    if (t->method) {
        if (fisher_method_step(t->method, t->step, &t->report, err)) return -1;
        if (t->report.n_frozen) after_freezing(t);
    }
    fisher_adamw_step_ranges(&t->opt, fisher_segformer_param_data(m), fisher_segformer_grad_data(m),
                             t->ranges, t->n_ranges);
    t->step++;
    return 0;
}

int fisher_trainer_freeze(fisher_trainer *t, const size_t *chunks, size_t n, fisher_error *err) {
    if (!t->method) return fisher_errorf(err, "only the fisher strategy freezes chunks");
    for (size_t i = 0; i < n; i++) fisher_method_freeze(t->method, chunks[i], t->step);
    after_freezing(t);
    return 0;
}

int fisher_evaluate_sums(fisher_segformer *m, int64_t first, int64_t count, int B, int H, int W,
                         float dice_weight, fisher_batch_fn next_batch, void *batch_ctx,
                         fisher_eval_sums *sums, fisher_error *err) {
    if (first < 0 || count < 0) return fisher_errorf(err, "evaluation of batches from %lld, %lld of them",
                                                     (long long)first, (long long)count);
    if (count == 0) return 0;
    if (fisher_segformer_prepare(m, B, H, W, err)) return -1;
    const fisher_segformer_config *mc = fisher_segformer_get_config(m);
    size_t per_sample = (size_t)H * W * (size_t)mc->num_labels;
    float *images = malloc((size_t)B * H * W * (size_t)mc->num_channels * sizeof(float));
    float *masks = malloc((size_t)B * per_sample * sizeof(float));
    int rc = -1;
    if (!images || !masks) {
        fisher_errorf(err, "out of memory for an evaluation batch of %d at %dx%d", B, H, W);
        goto out;
    }
    for (int64_t i = first; i < first + count; i++) {
        int real = next_batch(batch_ctx, i, images, masks, B, H, W, err);
        if (real < 0) goto out;
        const float *logits = fisher_segformer_forward(m, images, 0);
        /* per sample, so that a short last batch weighs what it holds */
        for (int b = 0; b < real && b < B; b++) {
            size_t at = (size_t)b * per_sample;
            sums->loss_sum += fisher_seg_loss(NULL, logits + at, masks + at, per_sample, dice_weight);
            fisher_confusion_add(&sums->confusion, logits + at, masks + at, per_sample);
            sums->samples++;
        }
    }
    rc = 0;
out:
    free(images), free(masks);
    return rc;
}

int fisher_eval_sums_allreduce(fisher_eval_sums *sums, fisher_comm *comm, fisher_error *err) {
    if (!comm) return 0;
    fisher_confusion *c = &sums->confusion;
    double x[6] = {sums->loss_sum, (double)sums->samples, (double)c->tp, (double)c->fp, (double)c->fn,
                   (double)c->tn};
    if (fisher_comm_sum_f64(comm, x, 6, err)) return -1;
    sums->loss_sum = x[0], sums->samples = (int64_t)x[1];
    c->tp = (int64_t)x[2], c->fp = (int64_t)x[3], c->fn = (int64_t)x[4], c->tn = (int64_t)x[5];
    return 0;
}

void fisher_eval_sums_metrics(const fisher_eval_sums *sums, fisher_seg_metrics *metrics,
                              double *mean_loss) {
    *metrics = fisher_confusion_metrics(&sums->confusion);
    if (mean_loss) *mean_loss = sums->samples ? sums->loss_sum / (double)sums->samples : 0.0;
}

int fisher_evaluate(fisher_segformer *m, int64_t batches, int B, int H, int W, float dice_weight,
                    fisher_batch_fn next_batch, void *batch_ctx, fisher_seg_metrics *metrics,
                    double *mean_loss, fisher_error *err) {
    if (batches < 1) return fisher_errorf(err, "evaluation needs at least one batch");
    fisher_eval_sums sums = {0};
    if (fisher_evaluate_sums(m, 0, batches, B, H, W, dice_weight, next_batch, batch_ctx, &sums, err))
        return -1;
    fisher_eval_sums_metrics(&sums, metrics, mean_loss);
    return 0;
}

int64_t fisher_train(fisher_segformer *m, const fisher_train_config *cfg, fisher_batch_fn next_batch,
                     void *batch_ctx, fisher_progress_fn on_progress, void *progress_ctx,
                     const volatile int *cancel, fisher_error *err) {
    int B = cfg->batch_size, H = cfg->image_height, W = cfg->image_width;
    if (cfg->steps < 0) return fisher_errorf(err, "steps must be ≥ 0, got %lld", (long long)cfg->steps);
    fisher_trainer t;
    if (fisher_trainer_init(&t, m, B, H, W, cfg->optim, cfg->dice_weight, cfg->strategy, NULL, err))
        return -1;
    fisher_set_threads(cfg->threads);
    const fisher_segformer_config *mc = fisher_segformer_get_config(m);
    float *images = malloc((size_t)B * H * W * (size_t)mc->num_channels * sizeof(float));
    float *masks = malloc(t.n_logits * sizeof(float));
    int64_t step = -1;
    if (!images || !masks) {
        fisher_errorf(err, "out of memory for a batch of %d at %dx%d", B, H, W);
        goto out;
    }
    for (step = 0; step < cfg->steps; step++) {
        if (cancel && *cancel) break;
        double t0 = fisher_now_seconds();
        float loss;
        if (next_batch(batch_ctx, step, images, masks, B, H, W, err) < 0 ||
            fisher_trainer_step(&t, images, masks, &loss, err)) {
            step = -1;
            goto out;
        }
        if (on_progress) {
            fisher_progress p = {step + 1, cfg->steps, loss, fisher_now_seconds() - t0};
            on_progress(progress_ctx, &p);
        }
    }
out:
    fisher_trainer_free(&t);
    free(images), free(masks);
    return step;
}

int fisher_trainer_restore(fisher_trainer *t, const fisher_safetensors *st, int64_t step, int64_t opt_step,
                           fisher_error *err) {
    const fisher_tensor_table *tab = fisher_segformer_params(t->model);
    for (int i = 0; i < tab->count; i++) {
        const fisher_tensor *e = &tab->tensors[i];
        for (int k = 0; k < 2; k++) {
            char name[FISHER_NAME_MAX + 32];
            snprintf(name, sizeof name, "optimizer.%s.%s", k ? "exp_avg_sq" : "exp_avg", e->name);
            if (fisher_safetensors_read_f32(st, name, (k ? t->opt.v : t->opt.m) + e->offset, e->ndim, e->shape, err))
                return -1;
        }
    }
    t->opt.step = opt_step;
    if (t->method) {
        if (fisher_method_restore(t->method, st, err)) return -1;
        after_freezing(t);
    }
    t->step = step;
    return 0;
}
