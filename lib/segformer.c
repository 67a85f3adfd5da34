/*
 * segformer.c — SegFormer forward and backward on the layers of layers.c.
 * See segformer.h for the model and its lifecycle.
 *
 * Memory plan (llm.c style): parameters, gradients and buffers are one flat
 * array each, carved by a fisher_tensor_table. Activations for a given
 * (B, H, W) are carved out of ONE allocation by walking the model twice with
 * the same layout code — once to measure, once to hand out pointers — so the
 * forward never allocates. The forward caches exactly what the backward
 * needs (every layer input, LayerNorm/BatchNorm mean and rstd, attention
 * probabilities, pre-activation values) and nothing else.
 *
 * Backward scratch is shared: blocks are differentiated one after another,
 * so one set of block-sized gradient buffers (sized for the largest block)
 * serves them all, and the residual stream's gradient is accumulated in
 * place (x_out = x + f(x) ⇒ dx = dx_out + f'ᵀ·dx_out, and every backward
 * here accumulates).
 *
 * Dimension legend as in layers.h; per stage s: h_s × w_s tokens N_s, C_s
 * channels, M_s = reduced key/value tokens, D decoder width, L labels.
 */
#include "segformer.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layers.h"
#include "rng.h"

/* ---------------------------------------------------------------- configs */

typedef struct {
    const char *name;
    int hidden[4], depths[4], heads[4], decoder;
} named_config;

static const named_config named_configs[] = {
    {"tiny", {16, 32, 64, 128}, {1, 1, 1, 1}, {1, 1, 2, 4}, 64},
    {"mit-b0", {32, 64, 160, 256}, {2, 2, 2, 2}, {1, 2, 5, 8}, 256},
    {"mit-b1", {64, 128, 320, 512}, {2, 2, 2, 2}, {1, 2, 5, 8}, 256},
    {"mit-b2", {64, 128, 320, 512}, {3, 4, 6, 3}, {1, 2, 5, 8}, 768},
};

int fisher_segformer_config_named(fisher_segformer_config *cfg, const char *name,
                                  fisher_error *err) {
    for (size_t i = 0; i < sizeof named_configs / sizeof *named_configs; i++) {
        const named_config *n = &named_configs[i];
        if (strcmp(n->name, name) != 0) continue;
        static const int sr[4] = {8, 4, 2, 1}, patch[4] = {7, 3, 3, 3}, stride[4] = {4, 2, 2, 2};
        memset(cfg, 0, sizeof *cfg);
        cfg->num_channels = 3;
        for (int s = 0; s < FISHER_STAGES; s++) {
            cfg->hidden_sizes[s] = n->hidden[s], cfg->depths[s] = n->depths[s];
            cfg->num_heads[s] = n->heads[s], cfg->sr_ratios[s] = sr[s];
            cfg->patch_sizes[s] = patch[s], cfg->strides[s] = stride[s];
        }
        cfg->mlp_ratio = 4;
        cfg->decoder_hidden_size = n->decoder;
        cfg->num_labels = 1;
        cfg->layer_norm_eps = 1e-5f;
        cfg->batch_norm_eps = 1e-5f;
        cfg->batch_norm_momentum = 0.1f;
        return 0;
    }
    return fisher_errorf(err, "unknown model config '%s' (known: tiny, mit-b0, mit-b1, mit-b2)",
                         name);
}

int fisher_segformer_config_validate(const fisher_segformer_config *cfg, fisher_error *err) {
    if (cfg->num_channels < 1 || cfg->num_channels > 16)
        return fisher_errorf(err, "num_channels must be 1..16, got %d", cfg->num_channels);
    for (int s = 0; s < FISHER_STAGES; s++) {
        int c = cfg->hidden_sizes[s], h = cfg->num_heads[s];
        if (c < 1 || c > 4096) return fisher_errorf(err, "hidden_sizes[%d] must be 1..4096, got %d", s, c);
        if (cfg->depths[s] < 1 || cfg->depths[s] > 64)
            return fisher_errorf(err, "depths[%d] must be 1..64, got %d", s, cfg->depths[s]);
        if (h < 1 || c % h)
            return fisher_errorf(err, "num_attention_heads[%d] = %d must divide hidden_sizes[%d] = %d",
                                 s, h, s, c);
        if (cfg->sr_ratios[s] < 1 || cfg->sr_ratios[s] > 64)
            return fisher_errorf(err, "sr_ratios[%d] must be 1..64, got %d", s, cfg->sr_ratios[s]);
        if (cfg->patch_sizes[s] < 1 || cfg->patch_sizes[s] > 15 || cfg->strides[s] < 1 ||
            cfg->strides[s] > cfg->patch_sizes[s])
            return fisher_errorf(err, "stage %d: patch size %d / stride %d out of range", s,
                                 cfg->patch_sizes[s], cfg->strides[s]);
    }
    if (cfg->mlp_ratio < 1 || cfg->mlp_ratio > 16)
        return fisher_errorf(err, "mlp_ratio must be 1..16, got %d", cfg->mlp_ratio);
    if (cfg->decoder_hidden_size < 1 || cfg->decoder_hidden_size > 4096)
        return fisher_errorf(err, "decoder_hidden_size must be 1..4096, got %d", cfg->decoder_hidden_size);
    if (cfg->num_labels < 1 || cfg->num_labels > 1024)
        return fisher_errorf(err, "num_labels must be 1..1024, got %d", cfg->num_labels);
    if (!(cfg->layer_norm_eps > 0) || !(cfg->batch_norm_eps > 0) ||
        !(cfg->batch_norm_momentum >= 0 && cfg->batch_norm_momentum <= 1))
        return fisher_errorf(err, "norm eps must be > 0 and batch-norm momentum in [0, 1]");
    return 0;
}

static json_t *int_array(const int *v, int n) {
    json_t *a = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(a, json_integer(v[i]));
    return a;
}

char *fisher_segformer_config_to_json(const fisher_segformer_config *cfg) {
    int mlp[FISHER_STAGES];
    for (int s = 0; s < FISHER_STAGES; s++) mlp[s] = cfg->mlp_ratio;
    json_t *o = json_object();
    json_object_set_new(o, "model_type", json_string("segformer"));
    json_object_set_new(o, "num_channels", json_integer(cfg->num_channels));
    json_object_set_new(o, "num_encoder_blocks", json_integer(FISHER_STAGES));
    json_object_set_new(o, "hidden_sizes", int_array(cfg->hidden_sizes, FISHER_STAGES));
    json_object_set_new(o, "depths", int_array(cfg->depths, FISHER_STAGES));
    json_object_set_new(o, "num_attention_heads", int_array(cfg->num_heads, FISHER_STAGES));
    json_object_set_new(o, "sr_ratios", int_array(cfg->sr_ratios, FISHER_STAGES));
    json_object_set_new(o, "patch_sizes", int_array(cfg->patch_sizes, FISHER_STAGES));
    json_object_set_new(o, "strides", int_array(cfg->strides, FISHER_STAGES));
    json_object_set_new(o, "mlp_ratios", int_array(mlp, FISHER_STAGES));
    json_object_set_new(o, "decoder_hidden_size", json_integer(cfg->decoder_hidden_size));
    json_object_set_new(o, "num_labels", json_integer(cfg->num_labels));
    json_object_set_new(o, "layer_norm_eps", json_real(cfg->layer_norm_eps));
    json_object_set_new(o, "batch_norm_eps", json_real(cfg->batch_norm_eps));
    json_object_set_new(o, "batch_norm_momentum", json_real(cfg->batch_norm_momentum));
    char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(o);
    return s;
}

static int read_int_array(json_t *root, const char *key, int *dst, fisher_error *err) {
    json_t *a = json_object_get(root, key);
    if (!a) return 0;
    if (!json_is_array(a) || json_array_size(a) != FISHER_STAGES)
        return fisher_errorf(err, "config: %s must be an array of %d integers", key, FISHER_STAGES);
    for (int i = 0; i < FISHER_STAGES; i++) {
        json_t *v = json_array_get(a, (size_t)i);
        if (!json_is_integer(v) || json_integer_value(v) < -100000 || json_integer_value(v) > 100000)
            return fisher_errorf(err, "config: %s[%d] must be an integer", key, i);
        dst[i] = (int)json_integer_value(v);
    }
    return 0;
}

static int read_int(json_t *root, const char *key, int *dst, fisher_error *err) {
    json_t *v = json_object_get(root, key);
    if (!v) return 0;
    if (!json_is_integer(v) || json_integer_value(v) < -100000 || json_integer_value(v) > 100000)
        return fisher_errorf(err, "config: %s must be an integer", key);
    *dst = (int)json_integer_value(v);
    return 0;
}

static int read_float(json_t *root, const char *key, float *dst, fisher_error *err) {
    json_t *v = json_object_get(root, key);
    if (!v) return 0;
    if (!json_is_number(v)) return fisher_errorf(err, "config: %s must be a number", key);
    *dst = (float)json_number_value(v);
    return 0;
}

int fisher_segformer_config_from_json(fisher_segformer_config *cfg, const char *text,
                                      fisher_error *err) {
    json_error_t jerr;
    json_t *root = json_loads(text, 0, &jerr);
    if (!root) return fisher_errorf(err, "config is not JSON: %s (line %d)", jerr.text, jerr.line);
    int rc = -1;
    if (!json_is_object(root)) {
        fisher_errorf(err, "config must be a JSON object");
        goto out;
    }
    json_t *n = json_object_get(root, "num_encoder_blocks");
    if (n && (!json_is_integer(n) || json_integer_value(n) != FISHER_STAGES)) {
        fisher_errorf(err, "config: num_encoder_blocks must be %d", FISHER_STAGES);
        goto out;
    }
    int mlp[FISHER_STAGES] = {0};
    if (read_int(root, "num_channels", &cfg->num_channels, err) ||
        read_int_array(root, "hidden_sizes", cfg->hidden_sizes, err) ||
        read_int_array(root, "depths", cfg->depths, err) ||
        read_int_array(root, "num_attention_heads", cfg->num_heads, err) ||
        read_int_array(root, "sr_ratios", cfg->sr_ratios, err) ||
        read_int_array(root, "patch_sizes", cfg->patch_sizes, err) ||
        read_int_array(root, "strides", cfg->strides, err) ||
        read_int_array(root, "mlp_ratios", mlp, err) ||
        read_int(root, "decoder_hidden_size", &cfg->decoder_hidden_size, err) ||
        read_int(root, "num_labels", &cfg->num_labels, err) ||
        read_float(root, "layer_norm_eps", &cfg->layer_norm_eps, err) ||
        read_float(root, "batch_norm_eps", &cfg->batch_norm_eps, err) ||
        read_float(root, "batch_norm_momentum", &cfg->batch_norm_momentum, err))
        goto out;
    if (json_object_get(root, "mlp_ratios")) {
        for (int s = 1; s < FISHER_STAGES; s++)
            if (mlp[s] != mlp[0]) {
                fisher_errorf(err, "config: mlp_ratios must be equal across stages");
                goto out;
            }
        cfg->mlp_ratio = mlp[0];
    }
    rc = fisher_segformer_config_validate(cfg, err);
out:
    json_decref(root);
    return rc;
}

/* ------------------------------------------------------------- the model */

#define NONE (-1)

/* Tensor indices into the parameter table; NONE when the layer has no such tensor. */
typedef struct {
    int ln1_w, ln1_b;
    int q_w, q_b, k_w, k_b, v_w, v_b;
    int sr_w, sr_b, sr_ln_w, sr_ln_b; /* only when sr > 1 */
    int o_w, o_b;
    int ln2_w, ln2_b;
    int fc1_w, fc1_b, dw_w, dw_b, fc2_w, fc2_b;
} block_params;

typedef struct {
    int patch_w, patch_b, patch_ln_w, patch_ln_b;
    block_params *blocks;
    int ln_w, ln_b; /* the stage's closing LayerNorm */
} stage_params;

/* Activations of one block; (B, N, C) unless noted. */
typedef struct {
    float *ln1, *ln1_mean, *ln1_rstd;        /* ln1 (B,N,C), stats (B·N) */
    fisher_esa_cache esa;                    /* inside the attention sub-layer */
    float *x1;                               /* residual stream after attention */
    float *ln2, *ln2_mean, *ln2_rstd;
    float *h1, *h2, *h3;                     /* (B,N,4C): dense1, dwconv, GELU */
    float *out;                              /* residual stream after Mix-FFN */
} block_acts;

typedef struct {
    int h, w, N, M;                          /* tokens h×w = N; keys M */
    fisher_conv2d_dims patch, dw;
    fisher_esa_dims esa;
    float *patch_out;                        /* (B,h,w,C) patch conv output */
    float *x0, *x0_mean, *x0_rstd;           /* after the patch LayerNorm */
    block_acts *blocks;
    float *out, *out_mean, *out_rstd;        /* stage output after its LayerNorm */
} stage_acts;

/* Gradient scratch, shared by all blocks/stages (sized for the largest). */
typedef struct {
    float *stage_out[FISHER_STAGES];         /* d of each stage output */
    float *res;                              /* d of the residual stream */
    float *ln;
    float *hidden_a, *hidden_b;              /* (B,N,4C) twice */
    float *patch;
    float *conv;                             /* conv scratch */
    float *logits, *relu, *bn, *fuse, *z, *lc[FISHER_STAGES];
} grad_scratch;

struct fisher_segformer {
    fisher_segformer_config cfg;
    fisher_tensor_table params, buffers;
    fisher_layer *layers;
    int n_layers, cap_layers;
    int *layer_of;                           /* parameter tensor index -> its layer */
    float *stats_data;                       /* every layer's H and S */
    int collect_stats;
    int forward_h;                           /* this training forward computes layers' H */
    uint8_t *h_forward;                      /* per layer: its H came from the last forward */
    double *patch_scratch;                   /* fisher_linear_forward_patch_squares' records */
    size_t patch_scratch_len;
    uint8_t *trainable;                      /* per tensor: 0 = its gradient is never needed */
    const uint8_t **rows_of;                 /* per tensor: its live rows (layers.h), into
                                              * live_rows; NULL when every row is live */
    uint8_t *live_rows;                      /* per tensor, one byte per index of axis 0 */
    int earliest;                            /* depth of the first layer with a trainable tensor */
    float *param_data, *grad_data, *buffer_data;
    int64_t num_batches_tracked;
    stage_params stages[FISHER_STAGES];
    int lc_w[FISHER_STAGES], lc_b[FISHER_STAGES], fuse_w, bn_w, bn_b, cls_w, cls_b;
    int bn_mean, bn_var; /* buffer indices */

    /* activations for (B, H, W) */
    int B, H, W;
    float *act_memory;
    size_t act_floats;
    stage_acts acts[FISHER_STAGES];
    float *lc[FISHER_STAGES];                /* (B,N_s,D) stage projections */
    float *z, *z_up;                         /* (B,N_s,D) fused at stage resolution, (B,N_0,D) upsampled */
    float *fuse, *bn, *bn_mean_b, *bn_rstd_b, *relu, *logits, *logits_full;
    float *conv_scratch;                     /* forward conv scratch */
    float *esa_scratch;                      /* attention sub-layer scratch, forward and backward */
    grad_scratch g;
    const float *images; /* the last forward's input: stage 1's conv backward reads it */
    int last_training;

    /* data-parallel training (segformer.h) */
    fisher_comm *comm;                       /* NULL: one process */
    float *stats_pack;                       /* H and S of the layers that train, packed for
                                              * one all-reduce (as many floats as stats_data) */
    int stat_shards;                         /* norm statistics over this many shards [1] */
};

static float *P(fisher_segformer *m, int i) {
    return i == NONE ? NULL : m->param_data + m->params.tensors[i].offset;
}
/* A tensor's gradient buffer, or NULL when it does not train: the layer's
 * backward then skips its weight-gradient work (FISHERADAPTUNE.md §8). */
static float *G(fisher_segformer *m, int i) {
    return i == NONE || !m->trainable[i] ? NULL : m->grad_data + m->params.tensors[i].offset;
}
/* The rows of a weight's gradient that hold a live element, for the layer's
 * backward (layers.h, "Live rows"); NULL when every row does. */
static const uint8_t *LIVE(const fisher_segformer *m, int i) {
    return i == NONE ? NULL : m->rows_of[i];
}

/* Whether some layer before the one owning tensor w trains, so that the
 * gradient must flow on below w's layer. */
static int flows_below(const fisher_segformer *m, int w) {
    return m->earliest < m->layers[m->layer_of[w]].depth;
}

/* Whether w's layer or one before it trains: the pass must reach it. */
static int flows_below_or_at(const fisher_segformer *m, int w) {
    return m->earliest <= m->layers[m->layer_of[w]].depth;
}

/* Registers `prefix.weight` (shape) and, when bias_len > 0, `prefix.bias`. */
/* Registers layer `prefix` of class cls, with H and S of the given lengths,
 * and its tensors `prefix.weight` (shape) and, when bias_len > 0,
 * `prefix.bias`. */
static int add_wb(fisher_segformer *m, const char *prefix, fisher_layer_class cls, size_t h_len,
                  size_t s_len, int ndim, const int64_t *shape, int64_t bias_len, int *w, int *b,
                  fisher_error *err) {
    char name[FISHER_NAME_MAX];
    int bias = NONE;
    snprintf(name, sizeof name, "%s.weight", prefix);
    if ((*w = fisher_table_add(&m->params, name, ndim, shape, err)) < 0) return -1;
    if (bias_len > 0) {
        snprintf(name, sizeof name, "%s.bias", prefix);
        if ((bias = fisher_table_add(&m->params, name, 1, &bias_len, err)) < 0) return -1;
    }
    if (b) *b = bias;
    if (m->n_layers == m->cap_layers) {
        int cap = m->cap_layers ? 2 * m->cap_layers : 64;
        fisher_layer *grown = realloc(m->layers, (size_t)cap * sizeof *grown);
        if (!grown) return fisher_errorf(err, "out of memory building the model");
        m->layers = grown, m->cap_layers = cap;
    }
    fisher_layer *l = &m->layers[m->n_layers++];
    memset(l, 0, sizeof *l);
    snprintf(l->name, sizeof l->name, "%s", prefix);
    l->cls = cls, l->weight = *w, l->bias = bias, l->depth = -1;
    l->h_len = h_len, l->s_len = s_len;
    return 0;
}

static int add_linear(fisher_segformer *m, const char *prefix, int in, int out, int *w, int *b,
                      fisher_error *err) {
    int64_t shape[2] = {out, in};
    return add_wb(m, prefix, FISHER_CLASS_LINEAR, (size_t)in + 1, (size_t)out, 2, shape, out, w, b,
                  err);
}

static int add_conv(fisher_segformer *m, const char *prefix, int in, int out, int k, int groups,
                    int bias, int *w, int *b, fisher_error *err) {
    int64_t shape[4] = {out, in / groups, k, k};
    size_t K = (size_t)(in / groups) * k * k;
    return add_wb(m, prefix, FISHER_CLASS_CONV, K + (bias ? 1 : 0), (size_t)out, 4, shape,
                  bias ? out : 0, w, b, err);
}

static int add_norm(fisher_segformer *m, const char *prefix, fisher_layer_class cls, int c, int *w,
                    int *b, fisher_error *err) {
    int64_t shape[1] = {c};
    return add_wb(m, prefix, cls, 2, (size_t)c, 1, shape, c, w, b, err);
}

#define LN FISHER_CLASS_LAYERNORM

static int build_params(fisher_segformer *m, fisher_error *err) {
    const fisher_segformer_config *c = &m->cfg;
    char p[FISHER_NAME_MAX];
    for (int s = 0; s < FISHER_STAGES; s++) {
        stage_params *sp = &m->stages[s];
        int in = s ? c->hidden_sizes[s - 1] : c->num_channels, C = c->hidden_sizes[s];
        snprintf(p, sizeof p, "segformer.encoder.patch_embeddings.%d.proj", s);
        if (add_conv(m, p, in, C, c->patch_sizes[s], 1, 1, &sp->patch_w, &sp->patch_b, err)) return -1;
        snprintf(p, sizeof p, "segformer.encoder.patch_embeddings.%d.layer_norm", s);
        if (add_norm(m, p, LN, C, &sp->patch_ln_w, &sp->patch_ln_b, err)) return -1;
    }
    for (int s = 0; s < FISHER_STAGES; s++) {
        stage_params *sp = &m->stages[s];
        int C = c->hidden_sizes[s], hidden = C * c->mlp_ratio, sr = c->sr_ratios[s];
        sp->blocks = calloc((size_t)c->depths[s], sizeof *sp->blocks);
        if (!sp->blocks) return fisher_errorf(err, "out of memory building the model");
        for (int j = 0; j < c->depths[s]; j++) {
            block_params *bp = &sp->blocks[j];
            char b[96];
            snprintf(b, sizeof b, "segformer.encoder.block.%d.%d", s, j);
#define NAME(suffix) (snprintf(p, sizeof p, "%s.%s", b, suffix), p)
            if (add_norm(m, NAME("layer_norm_1"), LN, C, &bp->ln1_w, &bp->ln1_b, err) ||
                add_linear(m, NAME("attention.self.query"), C, C, &bp->q_w, &bp->q_b, err) ||
                add_linear(m, NAME("attention.self.key"), C, C, &bp->k_w, &bp->k_b, err) ||
                add_linear(m, NAME("attention.self.value"), C, C, &bp->v_w, &bp->v_b, err))
                return -1;
            bp->sr_w = bp->sr_b = bp->sr_ln_w = bp->sr_ln_b = NONE;
            if (sr > 1 &&
                (add_conv(m, NAME("attention.self.sr"), C, C, sr, 1, 1, &bp->sr_w, &bp->sr_b, err) ||
                 add_norm(m, NAME("attention.self.layer_norm"), LN, C, &bp->sr_ln_w, &bp->sr_ln_b, err)))
                return -1;
            if (add_linear(m, NAME("attention.output.dense"), C, C, &bp->o_w, &bp->o_b, err) ||
                add_norm(m, NAME("layer_norm_2"), LN, C, &bp->ln2_w, &bp->ln2_b, err) ||
                add_linear(m, NAME("mlp.dense1"), C, hidden, &bp->fc1_w, &bp->fc1_b, err) ||
                add_conv(m, NAME("mlp.dwconv.dwconv"), hidden, hidden, 3, hidden, 1, &bp->dw_w,
                         &bp->dw_b, err) ||
                add_linear(m, NAME("mlp.dense2"), hidden, C, &bp->fc2_w, &bp->fc2_b, err))
                return -1;
#undef NAME
        }
    }
    for (int s = 0; s < FISHER_STAGES; s++) {
        snprintf(p, sizeof p, "segformer.encoder.layer_norm.%d", s);
        if (add_norm(m, p, LN, c->hidden_sizes[s], &m->stages[s].ln_w, &m->stages[s].ln_b, err)) return -1;
    }
    int D = c->decoder_hidden_size;
    for (int s = 0; s < FISHER_STAGES; s++) {
        snprintf(p, sizeof p, "decode_head.linear_c.%d.proj", s);
        if (add_linear(m, p, c->hidden_sizes[s], D, &m->lc_w[s], &m->lc_b[s], err)) return -1;
    }
    if (add_conv(m, "decode_head.linear_fuse", FISHER_STAGES * D, D, 1, 1, 0, &m->fuse_w, NULL, err) ||
        add_norm(m, "decode_head.batch_norm", FISHER_CLASS_BATCHNORM, D, &m->bn_w, &m->bn_b, err) ||
        add_conv(m, "decode_head.classifier", D, c->num_labels, 1, 1, 1, &m->cls_w, &m->cls_b, err))
        return -1;
    int64_t d1[1] = {D};
    if ((m->bn_mean = fisher_table_add(&m->buffers, "decode_head.batch_norm.running_mean", 1, d1, err)) < 0 ||
        (m->bn_var = fisher_table_add(&m->buffers, "decode_head.batch_norm.running_var", 1, d1, err)) < 0)
        return -1;
    return 0;
}

/* After every tensor exists: the tensor → layer map, storage for the
 * statistics, and each layer's position in the forward pass. */
static int finish_layers(fisher_segformer *m, fisher_error *err) {
    size_t total = 0;
    for (int i = 0; i < m->n_layers; i++) total += m->layers[i].h_len + m->layers[i].s_len;
    m->layer_of = malloc((size_t)m->params.count * sizeof *m->layer_of);
    m->trainable = malloc((size_t)m->params.count);
    if (m->trainable) memset(m->trainable, 1, (size_t)m->params.count);
    m->earliest = 0;
    m->stats_data = calloc(total, sizeof(float));
    m->stats_pack = malloc((total ? total : 1) * sizeof(float));
    m->h_forward = calloc((size_t)m->n_layers + 1, 1);
    m->stat_shards = 1;
    size_t rows = 0;
    for (int i = 0; i < m->params.count; i++) rows += (size_t)m->params.tensors[i].shape[0];
    m->rows_of = calloc((size_t)m->params.count, sizeof *m->rows_of); /* all rows live */
    m->live_rows = malloc(rows);
    if (!m->layer_of || !m->stats_data || !m->stats_pack || !m->trainable || !m->rows_of ||
        !m->live_rows || !m->h_forward)
        return fisher_errorf(err, "out of memory building the model");
    float *at = m->stats_data;
    for (int i = 0; i < m->n_layers; i++) {
        fisher_layer *l = &m->layers[i];
        m->layer_of[l->weight] = i;
        if (l->bias != NONE) m->layer_of[l->bias] = i;
        l->H = at, at += l->h_len;
        l->S = at, at += l->s_len;
    }
    int depth = 0;
#define FORWARD(w) (m->layers[m->layer_of[w]].depth = depth++)
    for (int s = 0; s < FISHER_STAGES; s++) {
        const stage_params *sp = &m->stages[s];
        FORWARD(sp->patch_w), FORWARD(sp->patch_ln_w);
        for (int j = 0; j < m->cfg.depths[s]; j++) {
            const block_params *bp = &sp->blocks[j];
            FORWARD(bp->ln1_w), FORWARD(bp->q_w), FORWARD(bp->k_w), FORWARD(bp->v_w);
            if (bp->sr_w != NONE) FORWARD(bp->sr_w), FORWARD(bp->sr_ln_w);
            FORWARD(bp->o_w), FORWARD(bp->ln2_w), FORWARD(bp->fc1_w), FORWARD(bp->dw_w);
            FORWARD(bp->fc2_w);
        }
        FORWARD(sp->ln_w);
    }
    for (int s = 0; s < FISHER_STAGES; s++) FORWARD(m->lc_w[s]);
    FORWARD(m->fuse_w), FORWARD(m->bn_w), FORWARD(m->cls_w);
#undef FORWARD
    return 0;
}

fisher_segformer *fisher_segformer_create(const fisher_segformer_config *cfg, fisher_error *err) {
    if (fisher_segformer_config_validate(cfg, err)) return NULL;
    fisher_segformer *m = calloc(1, sizeof *m);
    if (!m) {
        fisher_errorf(err, "out of memory creating the model");
        return NULL;
    }
    m->cfg = *cfg;
    if (build_params(m, err) || finish_layers(m, err)) goto fail;
    m->param_data = calloc(m->params.total, sizeof(float));
    m->grad_data = calloc(m->params.total, sizeof(float));
    m->buffer_data = calloc(m->buffers.total, sizeof(float));
    if (!m->param_data || !m->grad_data || !m->buffer_data) {
        fisher_errorf(err, "out of memory allocating %zu parameters", m->params.total);
        goto fail;
    }
    fisher_segformer_init_random(m, 0);
    return m;
fail:
    fisher_segformer_free(m);
    return NULL;
}

void fisher_segformer_free(fisher_segformer *m) {
    if (!m) return;
    for (int s = 0; s < FISHER_STAGES; s++) {
        free(m->stages[s].blocks);
        free(m->acts[s].blocks);
    }
    fisher_table_free(&m->params);
    fisher_table_free(&m->buffers);
    free(m->layers);
    free(m->layer_of);
    free(m->trainable);
    free(m->rows_of);
    free(m->live_rows);
    free(m->stats_data);
    free(m->stats_pack);
    free(m->h_forward);
    fisher_scratch_free(m->patch_scratch);
    free(m->param_data);
    free(m->grad_data);
    free(m->buffer_data);
    free(m->act_memory);
    free(m);
}

const fisher_segformer_config *fisher_segformer_get_config(const fisher_segformer *m) { return &m->cfg; }
const fisher_tensor_table *fisher_segformer_params(const fisher_segformer *m) { return &m->params; }
float *fisher_segformer_param_data(fisher_segformer *m) { return m->param_data; }
float *fisher_segformer_grad_data(fisher_segformer *m) { return m->grad_data; }
const fisher_tensor_table *fisher_segformer_buffers(const fisher_segformer *m) { return &m->buffers; }
float *fisher_segformer_buffer_data(fisher_segformer *m) { return m->buffer_data; }
size_t fisher_segformer_layers(const fisher_segformer *m, const fisher_layer **layers) {
    *layers = m->layers;
    return (size_t)m->n_layers;
}

void fisher_segformer_collect_stats(fisher_segformer *m, int on) { m->collect_stats = on; }

void fisher_segformer_set_comm(fisher_segformer *m, fisher_comm *comm) { m->comm = comm; }

int fisher_segformer_set_stat_shards(fisher_segformer *m, int shards, fisher_error *err) {
    if (shards < 1) return fisher_errorf(err, "stat_shards must be ≥ 1, got %d", shards);
    m->stat_shards = shards;
    return 0;
}

void fisher_segformer_set_live(fisher_segformer *m, const uint8_t *live) {
    m->earliest = INT_MAX;
    uint8_t *rows = m->live_rows;
    for (int i = 0; i < m->params.count; i++) {
        const fisher_tensor *t = &m->params.tensors[i];
        size_t n_rows = (size_t)t->shape[0], len = t->numel / n_rows, n_live = n_rows;
        if (live) {
            n_live = 0;
            for (size_t r = 0; r < n_rows; r++) {
                const uint8_t *e = live + t->offset + r * len;
                size_t k = 0;
                while (k < len && !e[k]) k++;
                rows[r] = k < len; /* one live element makes the row live */
                n_live += rows[r];
            }
        }
        m->trainable[i] = n_live > 0;
        m->rows_of[i] = n_live > 0 && n_live < n_rows ? rows : NULL;
        rows += n_rows;
        int depth = m->layers[m->layer_of[i]].depth;
        if (m->trainable[i] && depth < m->earliest) m->earliest = depth;
    }
}

size_t fisher_segformer_activation_bytes(const fisher_segformer *m) {
    return m->act_floats * sizeof(float);
}

/* ------------------------------------------------------------ random init */

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

void fisher_segformer_init_random(fisher_segformer *m, uint64_t seed) {
    fisher_rng rng;
    fisher_rng_seed(&rng, seed);
    for (int i = 0; i < m->params.count; i++) {
        const fisher_tensor *t = &m->params.tensors[i];
        float *x = m->param_data + t->offset;
        if (t->ndim == 1) { /* biases 0; LayerNorm/BatchNorm weights 1 */
            float v = ends_with(t->name, ".weight") ? 1.0f : 0.0f;
            for (size_t e = 0; e < t->numel; e++) x[e] = v;
        } else if (t->ndim == 2) { /* Linear: trunc_normal_(std=.02), mmseg's bounds [-2, 2] */
            for (size_t e = 0; e < t->numel; e++) x[e] = fisher_rng_trunc_normal(&rng, 0.02f, -2.0f, 2.0f);
        } else { /* Conv: normal(0, sqrt(2 / fan_out)), fan_out = KH·KW·OC/groups */
            int64_t oc = t->shape[0], taps = t->shape[2] * t->shape[3];
            int64_t groups = ends_with(t->name, "dwconv.weight") ? oc : 1;
            float std = sqrtf(2.0f / (float)(taps * oc / groups));
            for (size_t e = 0; e < t->numel; e++) x[e] = std * fisher_rng_normal(&rng);
        }
    }
    float *mean = m->buffer_data + m->buffers.tensors[m->bn_mean].offset;
    float *var = m->buffer_data + m->buffers.tensors[m->bn_var].offset;
    for (int c = 0; c < m->cfg.decoder_hidden_size; c++) mean[c] = 0.0f, var[c] = 1.0f;
    m->num_batches_tracked = 0;
}

/* ------------------------------------------------------------ load / save */

static const char *const bn_tracked_name = "decode_head.batch_norm.num_batches_tracked";

static int is_head(const char *name) { return strncmp(name, "decode_head.", 12) == 0; }

static int load_table(const fisher_tensor_table *t, float *data, const fisher_safetensors *st,
                      unsigned flags, fisher_error *err) {
    for (int i = 0; i < t->count; i++) {
        const fisher_tensor *e = &t->tensors[i];
        fisher_dtype dt;
        int nd;
        int64_t shape[FISHER_ST_MAX_DIMS];
        if ((flags & FISHER_LOAD_ENCODER_ONLY) && is_head(e->name) &&
            fisher_safetensors_info(st, e->name, &dt, &nd, shape, NULL) != 0)
            continue;
        if (fisher_safetensors_read_f32(st, e->name, data + e->offset, e->ndim, e->shape, err))
            return -1;
    }
    return 0;
}

int fisher_segformer_check_file(const fisher_segformer_config *cfg, const fisher_safetensors *st,
                                unsigned flags, fisher_error *err) {
    if (fisher_segformer_config_validate(cfg, err)) return -1;
    fisher_segformer *m = calloc(1, sizeof *m); /* the tables only: no data, no layers' state */
    if (!m) return fisher_errorf(err, "out of memory checking a weights file");
    m->cfg = *cfg;
    int rc = -1;
    if (build_params(m, err)) goto out;
    size_t encoder = 0, head = 0, head_missing = 0;
    const fisher_tensor_table *tables[2] = {&m->params, &m->buffers};
    for (int w = 0; w < 2; w++)
        for (int i = 0; i < tables[w]->count; i++) {
            const fisher_tensor *e = &tables[w]->tensors[i];
            if (w == 0) *(is_head(e->name) ? &head : &encoder) += e->numel;
            fisher_dtype dt;
            int nd;
            int64_t shape[FISHER_ST_MAX_DIMS];
            if (fisher_safetensors_info(st, e->name, &dt, &nd, shape, NULL)) {
                if ((flags & FISHER_LOAD_ENCODER_ONLY) && is_head(e->name)) {
                    head_missing = 1;
                    continue;
                }
                fisher_safetensors_info(st, e->name, NULL, NULL, NULL, err); /* "no tensor named" */
                goto out;
            }
            int same = (dt == FISHER_DTYPE_F32 || dt == FISHER_DTYPE_F16 || dt == FISHER_DTYPE_BF16) &&
                       nd == e->ndim;
            for (int d = 0; same && d < nd; d++) same = shape[d] == e->shape[d];
            /* the reader words the dtype or shape problem as load would */
            if (!same && fisher_safetensors_read_f32(st, e->name, NULL, e->ndim, e->shape, err)) goto out;
        }
    if (head_missing && head > encoder) {
        fisher_errorf(err, "the file has no decode head, and the config's (%zu parameters) would "
                           "outnumber its encoder (%zu): not a SegFormer this file can start",
                      head, encoder);
        goto out;
    }
    rc = 0;
out:
    fisher_segformer_free(m);
    return rc;
}

int fisher_segformer_load(fisher_segformer *m, const fisher_safetensors *st, unsigned flags,
                          fisher_error *err) {
    if (load_table(&m->params, m->param_data, st, flags, err) ||
        load_table(&m->buffers, m->buffer_data, st, flags, err))
        return -1;
    fisher_dtype dt;
    int nd;
    int64_t shape[FISHER_ST_MAX_DIMS], tracked = 0;
    if (fisher_safetensors_info(st, bn_tracked_name, &dt, &nd, shape, NULL) == 0 &&
        fisher_safetensors_read_i64(st, bn_tracked_name, &tracked, nd, shape, err))
        return -1;
    m->num_batches_tracked = tracked;
    return 0;
}

int fisher_segformer_save_with(const fisher_segformer *m, const char *path,
                               const fisher_st_tensor *extra, size_t n_extra,
                               const fisher_st_meta *extra_meta, size_t n_extra_meta,
                               fisher_error *err) {
    size_t n = (size_t)(m->params.count + m->buffers.count + 1) + n_extra;
    fisher_st_tensor *ts = calloc(n, sizeof *ts);
    fisher_st_meta *meta = calloc(2 + n_extra_meta, sizeof *meta);
    char *config = fisher_segformer_config_to_json(&m->cfg);
    int rc = -1;
    if (!ts || !meta || !config) {
        fisher_errorf(err, "out of memory saving %s", path);
        goto out;
    }
    size_t k = 0;
    const fisher_tensor_table *tables[2] = {&m->params, &m->buffers};
    const float *datas[2] = {m->param_data, m->buffer_data};
    for (int w = 0; w < 2; w++)
        for (int i = 0; i < tables[w]->count; i++) {
            const fisher_tensor *e = &tables[w]->tensors[i];
            fisher_st_tensor *o = &ts[k++];
            o->name = e->name, o->dtype = FISHER_DTYPE_F32, o->ndim = e->ndim;
            for (int d = 0; d < e->ndim; d++) o->shape[d] = e->shape[d];
            o->data = datas[w] + e->offset;
        }
    ts[k].name = bn_tracked_name, ts[k].dtype = FISHER_DTYPE_I64, ts[k].ndim = 0;
    ts[k++].data = &m->num_batches_tracked;
    for (size_t i = 0; i < n_extra; i++) ts[k++] = extra[i];
    meta[0] = (fisher_st_meta){"config", config};
    meta[1] = (fisher_st_meta){"format", "pt"};
    for (size_t i = 0; i < n_extra_meta; i++) meta[2 + i] = extra_meta[i];
    rc = fisher_safetensors_write(path, ts, k, meta, 2 + n_extra_meta, err);
out:
    free(config), free(meta), free(ts);
    return rc;
}

int fisher_segformer_save(const fisher_segformer *m, const char *path, fisher_error *err) {
    return fisher_segformer_save_with(m, path, NULL, 0, NULL, 0, err);
}

/* ------------------------------------------------------------ activations */
/* The layout walk: with base == NULL it only counts floats; with memory it
 * hands out consecutive slices. Both walks run the same code, so the two can
 * never disagree. */
typedef struct {
    float *base;
    size_t used;
} arena;

static float *take(arena *a, size_t n) {
    float *p = a->base ? a->base + a->used : NULL;
    a->used += n;
    return p;
}

static size_t max_z(size_t a, size_t b) { return a > b ? a : b; }

static void layout(fisher_segformer *m, arena *a) {
    const fisher_segformer_config *c = &m->cfg;
    size_t B = (size_t)m->B, D = (size_t)c->decoder_hidden_size, L = (size_t)c->num_labels;
    size_t max_conv = 0, max_esa = 0, max_nc = 0, max_nh = 0, max_patch = 0;
    for (int s = 0; s < FISHER_STAGES; s++) {
        stage_acts *sa = &m->acts[s];
        size_t C = (size_t)c->hidden_sizes[s], N = (size_t)sa->N, M = (size_t)sa->M;
        size_t Hd = C * (size_t)c->mlp_ratio, NH = (size_t)c->num_heads[s];
        sa->patch_out = take(a, B * N * C);
        sa->x0 = take(a, B * N * C);
        sa->x0_mean = take(a, B * N);
        sa->x0_rstd = take(a, B * N);
        for (int j = 0; j < c->depths[s]; j++) {
            block_acts *ba = &sa->blocks[j];
            ba->ln1 = take(a, B * N * C);
            ba->ln1_mean = take(a, B * N);
            ba->ln1_rstd = take(a, B * N);
            fisher_esa_cache *e = &ba->esa;
            e->q = take(a, B * N * C);
            if (c->sr_ratios[s] > 1) {
                e->sr = take(a, B * M * C);
                e->sr_ln = take(a, B * M * C);
                e->sr_mean = take(a, B * M);
                e->sr_rstd = take(a, B * M);
            }
            e->k = take(a, B * M * C);
            e->v = take(a, B * M * C);
            e->att = take(a, B * NH * N * M);
            e->ctx = take(a, B * N * C);
            ba->x1 = take(a, B * N * C);
            ba->ln2 = take(a, B * N * C);
            ba->ln2_mean = take(a, B * N);
            ba->ln2_rstd = take(a, B * N);
            ba->h1 = take(a, B * N * Hd);
            ba->h2 = take(a, B * N * Hd);
            ba->h3 = take(a, B * N * Hd);
            ba->out = take(a, B * N * C);
        }
        sa->out = take(a, B * N * C);
        sa->out_mean = take(a, B * N);
        sa->out_rstd = take(a, B * N);
        max_conv = max_z(max_conv, fisher_conv2d_scratch_floats(&sa->patch));
        max_conv = max_z(max_conv, fisher_conv2d_scratch_floats(&sa->dw));
        max_esa = max_z(max_esa, fisher_esa_scratch_floats(&sa->esa));
        max_nc = max_z(max_nc, B * N * C);
        max_nh = max_z(max_nh, B * N * Hd);
        max_patch = max_z(max_patch, B * N * C);
    }
    size_t N0 = (size_t)m->acts[0].N, N1 = (size_t)m->acts[1].N;
    for (int s = 0; s < FISHER_STAGES; s++) m->lc[s] = take(a, B * (size_t)m->acts[s].N * D);
    m->z = take(a, B * N1 * D);
    m->z_up = take(a, B * N0 * D);
    m->fuse = take(a, B * N0 * D);
    m->bn_mean_b = take(a, D);
    m->bn_rstd_b = take(a, D);
    m->bn = take(a, B * N0 * D);
    m->relu = take(a, B * N0 * D);
    m->logits = take(a, B * N0 * L);
    m->logits_full = take(a, B * (size_t)m->H * m->W * L);
    m->conv_scratch = take(a, max_conv);
    m->esa_scratch = take(a, max_esa);

    grad_scratch *g = &m->g;
    for (int s = 0; s < FISHER_STAGES; s++)
        g->stage_out[s] = take(a, B * (size_t)m->acts[s].N * (size_t)c->hidden_sizes[s]);
    g->res = take(a, max_nc);
    g->ln = take(a, max_nc);
    g->hidden_a = take(a, max_nh);
    g->hidden_b = take(a, max_nh);
    g->patch = take(a, max_patch);
    g->conv = take(a, max_conv);
    g->logits = take(a, B * N0 * L);
    g->relu = take(a, B * N0 * D);
    g->bn = take(a, B * N0 * D);
    g->fuse = take(a, B * N0 * D);
    g->z = take(a, B * N1 * D);
    for (int s = 0; s < FISHER_STAGES; s++) g->lc[s] = take(a, B * (size_t)m->acts[s].N * D);
}

int fisher_segformer_prepare(fisher_segformer *m, int B, int H, int W, fisher_error *err) {
    if (m->act_memory && m->B == B && m->H == H && m->W == W) return 0;
    const fisher_segformer_config *c = &m->cfg;
    if (B < 1 || H < 1 || W < 1)
        return fisher_errorf(err, "batch shape (%d, %d, %d) must be positive", B, H, W);
    int h = H, w = W, in = c->num_channels;
    stage_acts dims[FISHER_STAGES];
    memset(dims, 0, sizeof dims);
    for (int s = 0; s < FISHER_STAGES; s++) {
        stage_acts *sa = &dims[s];
        int C = c->hidden_sizes[s], k = c->patch_sizes[s], sr = c->sr_ratios[s];
        if (fisher_conv2d_dims_init(&sa->patch, B, h, w, in, C, k, k, c->strides[s], k / 2, 1))
            return fisher_errorf(err, "image %dx%d is too small for stage %d of the encoder", H, W, s + 1);
        sa->h = sa->patch.OH, sa->w = sa->patch.OW, sa->N = sa->h * sa->w;
        if (fisher_esa_dims_init(&sa->esa, B, sa->h, sa->w, C, c->num_heads[s], sr, c->layer_norm_eps))
            return fisher_errorf(err,
                                 "image %dx%d is too small: stage %d has %dx%d tokens, fewer than "
                                 "its spatial reduction %d (use at least 32x32)",
                                 H, W, s + 1, sa->h, sa->w, sr);
        sa->M = sa->esa.M;
        int hidden = C * c->mlp_ratio;
        fisher_conv2d_dims_init(&sa->dw, B, sa->h, sa->w, hidden, hidden, 3, 3, 1, 1, hidden);
        h = sa->h, w = sa->w, in = C;
    }
    free(m->act_memory);
    m->act_memory = NULL;
    for (int s = 0; s < FISHER_STAGES; s++) {
        block_acts *blocks = realloc(m->acts[s].blocks, (size_t)c->depths[s] * sizeof *blocks);
        if (!blocks) return fisher_errorf(err, "out of memory preparing activations");
        m->acts[s] = dims[s];
        m->acts[s].blocks = blocks;
        memset(blocks, 0, (size_t)c->depths[s] * sizeof *blocks);
    }
    m->B = B, m->H = H, m->W = W;
    m->last_training = 0; /* fresh activations hold no forward yet */
    arena measure = {NULL, 0};
    layout(m, &measure);
    m->act_memory = calloc(measure.used, sizeof(float));
    if (!m->act_memory) {
        m->B = 0;
        return fisher_errorf(err, "out of memory: activations for batch %d at %dx%d need %.1f MiB",
                             B, H, W, (double)measure.used * 4 / 1048576.0);
    }
    m->act_floats = measure.used;
    arena carve = {m->act_memory, 0};
    layout(m, &carve);
    return 0;
}

/* ---------------------------------------------------------------- forward */

/* The attention sub-layer's tensors of block p, through P (values) or G (gradients). */
static fisher_esa_params esa_params(fisher_segformer *m, const block_params *p,
                                    float *(*at)(fisher_segformer *, int)) {
    return (fisher_esa_params){
        .q_w = at(m, p->q_w), .q_b = at(m, p->q_b), .k_w = at(m, p->k_w), .k_b = at(m, p->k_b),
        .v_w = at(m, p->v_w), .v_b = at(m, p->v_b), .sr_w = at(m, p->sr_w), .sr_b = at(m, p->sr_b),
        .sr_ln_w = at(m, p->sr_ln_w), .sr_ln_b = at(m, p->sr_ln_b), .o_w = at(m, p->o_w),
        .o_b = at(m, p->o_b),
    };
}

static fisher_layer *stats_for(fisher_segformer *m, int weight);

/* The layer owning `weight` when this training forward computes its H, as
 * the column squares of its input summed where that input is written
 * (layers.h, forwards that square their output), else NULL. */
static fisher_layer *forward_h_for(fisher_segformer *m, int weight) {
    return m->forward_h && weight != NONE ? stats_for(m, weight) : NULL;
}

/* l (may be NULL), a linear layer with a bias reading R rows of IC columns
 * whose squares are sq: its H, marked as the forward's. */
static void forward_h_linear(fisher_segformer *m, fisher_layer *l, const double *sq, int R, int IC) {
    if (!l) return;
    fisher_stats_linear_h(l->H, sq, R, IC, 1);
    m->h_forward[l - m->layers] = 1;
}

/* A LayerNorm forward over R rows of C whose output is read by up to three
 * linear layers (weights r0..r2, NONE for none): with their H when they
 * need statistics. */
static void layernorm_forward_h(fisher_segformer *m, float *out, float *mean, float *rstd,
                                const float *inp, int w, int b, int R, int C, int r0, int r1, int r2) {
    float eps = m->cfg.layer_norm_eps;
    fisher_layer *l[3] = {forward_h_for(m, r0), forward_h_for(m, r1), forward_h_for(m, r2)};
    if (!l[0] && !l[1] && !l[2]) {
        fisher_layernorm_forward(out, mean, rstd, inp, P(m, w), P(m, b), R, C, eps);
        return;
    }
    double sq[C];
    memset(sq, 0, sizeof sq);
    fisher_layernorm_forward_squares(out, mean, rstd, sq, inp, P(m, w), P(m, b), R, C, eps);
    for (int i = 0; i < 3; i++) forward_h_linear(m, l[i], sq, R, C);
}

static void block_forward(fisher_segformer *m, int s, int j, const float *x) {
    const fisher_segformer_config *c = &m->cfg;
    stage_acts *sa = &m->acts[s];
    block_acts *a = &sa->blocks[j];
    const block_params *p = &m->stages[s].blocks[j];
    int B = m->B, N = sa->N, C = c->hidden_sizes[s], Hd = C * c->mlp_ratio;

    int kv_read_ln1 = c->sr_ratios[s] == 1; /* no reduction: keys and values read ln1 too */
    layernorm_forward_h(m, a->ln1, a->ln1_mean, a->ln1_rstd, x, p->ln1_w, p->ln1_b, B * N, C, p->q_w,
                        kv_read_ln1 ? p->k_w : NONE, kv_read_ln1 ? p->v_w : NONE);
    fisher_esa_params w = esa_params(m, p, P);
    fisher_esa_forward(a->x1, &a->esa, m->esa_scratch, a->ln1, &w, &sa->esa);
    /* the output projection's and the reduction conv's H while their
     * inputs are still in cache (in the backward they were cold reads) */
    fisher_layer *o = forward_h_for(m, p->o_w), *sr = p->sr_w != NONE ? forward_h_for(m, p->sr_w) : NULL;
    if (o) {
        fisher_stats_linear(o->H, NULL, a->esa.ctx, NULL, B * N, C, C, 1);
        m->h_forward[o - m->layers] = 1;
    }
    if (sr) {
        fisher_stats_conv(sr->H, NULL, a->ln1, NULL, &sa->esa.sr_conv, 1);
        m->h_forward[sr - m->layers] = 1;
    }
    fisher_add_inplace(a->x1, x, (size_t)B * N * C);

    layernorm_forward_h(m, a->ln2, a->ln2_mean, a->ln2_rstd, a->x1, p->ln2_w, p->ln2_b, B * N, C,
                        p->fc1_w, NONE, NONE);
    fisher_layer *dw = forward_h_for(m, p->dw_w);
    if (dw) { /* the depthwise conv's H as fc1 writes its input */
        double h[Hd / sa->dw.groups * sa->dw.KH * sa->dw.KW];
        size_t need = fisher_patch_squares_scratch(&sa->dw, omp_get_max_threads());
        if (need > m->patch_scratch_len) { /* grown once, kept for every step; threads'
                                            * records start on cache lines of their own */
            double *grown = fisher_scratch_alloc(need);
            if (grown) {
                fisher_scratch_free(m->patch_scratch);
                m->patch_scratch = grown, m->patch_scratch_len = need;
            }
        }
        fisher_linear_forward_patch_squares(a->h1, h, m->patch_scratch, m->patch_scratch_len, a->ln2,
                                            P(m, p->fc1_w), P(m, p->fc1_b), C, &sa->dw);
        fisher_stats_conv_h(dw->H, h, &sa->dw, 1);
        m->h_forward[dw - m->layers] = 1;
    } else {
        fisher_linear_forward(a->h1, a->ln2, P(m, p->fc1_w), P(m, p->fc1_b), B * N, C, Hd);
    }
    fisher_conv2d_forward(a->h2, m->conv_scratch, a->h1, P(m, p->dw_w), P(m, p->dw_b), &sa->dw);
    fisher_gelu_forward(a->h3, a->h2, (size_t)B * N * Hd);
    fisher_layer *fc2 = forward_h_for(m, p->fc2_w);
    if (fc2) { /* fc2's H while GELU's output is still in cache */
        fisher_stats_linear(fc2->H, NULL, a->h3, NULL, B * N, Hd, C, 1);
        m->h_forward[fc2 - m->layers] = 1;
    }
    fisher_linear_forward(a->out, a->h3, P(m, p->fc2_w), P(m, p->fc2_b), B * N, Hd, C);
    fisher_add_inplace(a->out, a->x1, (size_t)B * N * C);
}

const float *fisher_segformer_forward(fisher_segformer *m, const float *images, int training) {
    return fisher_segformer_forward_sync(m, images, training, NULL);
}

const float *fisher_segformer_forward_sync(fisher_segformer *m, const float *images, int training,
                                           fisher_error *err) {
    if (!m->act_memory) {
        fisher_errorf(err, "forward before prepare: the model has no activations yet");
        return NULL;
    }
    const fisher_segformer_config *c = &m->cfg;
    int B = m->B, D = c->decoder_hidden_size, L = c->num_labels;
    float eps = c->layer_norm_eps;
    const float *x = images;
    m->images = images;
    m->forward_h = training && m->collect_stats;
    memset(m->h_forward, 0, (size_t)m->n_layers);
    for (int s = 0; s < FISHER_STAGES; s++) {
        stage_acts *sa = &m->acts[s];
        const stage_params *sp = &m->stages[s];
        int C = c->hidden_sizes[s], N = sa->N;
        fisher_conv2d_forward(sa->patch_out, m->conv_scratch, x, P(m, sp->patch_w),
                              P(m, sp->patch_b), &sa->patch);
        fisher_layernorm_forward(sa->x0, sa->x0_mean, sa->x0_rstd, sa->patch_out,
                                 P(m, sp->patch_ln_w), P(m, sp->patch_ln_b), B * N, C, eps);
        const float *h = sa->x0;
        for (int j = 0; j < c->depths[s]; j++) {
            block_forward(m, s, j, h);
            h = sa->blocks[j].out;
        }
        layernorm_forward_h(m, sa->out, sa->out_mean, sa->out_rstd, h, sp->ln_w, sp->ln_b, B * N, C,
                            m->lc_w[s], NONE, NONE);
        x = sa->out;
    }

    /* Decode head. HF applies linear_fuse, a 1×1 conv, to the concatenation
     * [up(lc_3) | up(lc_2) | up(lc_1) | lc_0]. Both it and bilinear
     * upsampling are linear, channel by channel, so
     *     fuse = Σ_s up(lc_s)·W_sᵀ = Σ_s up(lc_s·W_sᵀ)
     * with W_s stage s's column block of linear_fuse: each stage is fused at
     * its own resolution, then upsampled and summed. Same function, a third
     * of the FLOPs, and no (B, N_0, 4D) concatenation in memory. */
    int h0 = m->acts[0].h, w0 = m->acts[0].w, N0 = m->acts[0].N, ld_fuse = FISHER_STAGES * D;
    for (int s = 0; s < FISHER_STAGES; s++) {
        stage_acts *sa = &m->acts[s];
        const float *w_s = P(m, m->fuse_w) + (size_t)(FISHER_STAGES - 1 - s) * D; /* deepest first */
        fisher_layer *fuse = s == 0 ? forward_h_for(m, m->fuse_w) : NULL;
        if (fuse) { /* linear_fuse's H of its lc_0 block (see fuse_stats) */
            double sq[D];
            memset(sq, 0, sizeof sq);
            fisher_linear_forward_squares(m->lc[0], sq, sa->out, P(m, m->lc_w[0]), P(m, m->lc_b[0]),
                                          B * N0, c->hidden_sizes[0], D);
            float *H0 = fuse->H + (size_t)(FISHER_STAGES - 1) * D;
            fisher_stats_linear_h(H0, sq, B * N0, D, 0);
            for (int k = 0; k < D; k++) H0[k] *= (float)N0;
            m->h_forward[fuse - m->layers] = 1;
        } else {
            fisher_linear_forward(m->lc[s], sa->out, P(m, m->lc_w[s]), P(m, m->lc_b[s]), B * sa->N,
                                  c->hidden_sizes[s], D);
        }
        if (s == 0) {
            fisher_linear_slice_forward(m->fuse, m->lc[0], w_s, ld_fuse, B * N0, D, D, 0);
            continue;
        }
        fisher_linear_slice_forward(m->z, m->lc[s], w_s, ld_fuse, B * sa->N, D, D, 0);
        fisher_resize_bilinear_forward(m->z_up, m->z, B, sa->h, sa->w, D, h0, w0);
        fisher_add_inplace(m->fuse, m->z_up, (size_t)B * N0 * D);
    }
    float *run_mean = m->buffer_data + m->buffers.tensors[m->bn_mean].offset;
    float *run_var = m->buffer_data + m->buffers.tensors[m->bn_var].offset;
    if (training) {
        m->last_training = 0; /* until this forward is whole */
        /* BatchNorm's H from the forward's own Σx (with shards, the
         * backward's fisher_stats_batchnorm_shards takes both) */
        fisher_layer *bn = m->stat_shards <= 1 ? forward_h_for(m, m->bn_w) : NULL;
        double bn_sums[D];
        if (fisher_batchnorm_forward_train_sync(m->bn, m->bn_mean_b, m->bn_rstd_b, run_mean, run_var,
                                                m->fuse, P(m, m->bn_w), P(m, m->bn_b), B * N0, D,
                                                c->batch_norm_momentum, c->batch_norm_eps,
                                                bn ? bn_sums : NULL, m->comm, err))
            return NULL;
        if (bn) {
            fisher_stats_batchnorm_h(bn->H, bn_sums, B, N0, D);
            m->h_forward[bn - m->layers] = 1;
        }
        m->num_batches_tracked++;
    } else {
        fisher_batchnorm_forward_eval(m->bn, m->fuse, P(m, m->bn_w), P(m, m->bn_b), run_mean,
                                      run_var, B * N0, D, c->batch_norm_eps);
    }
    fisher_layer *cls = forward_h_for(m, m->cls_w);
    if (cls) { /* the classifier, a 1×1 conv in the reference, reads relu */
        double sq[D];
        memset(sq, 0, sizeof sq);
        fisher_relu_forward_squares(m->relu, sq, m->bn, B * N0, D);
        fisher_conv2d_dims d1;
        fisher_conv2d_dims_init(&d1, B, h0, w0, D, L, 1, 1, 1, 0, 1);
        fisher_stats_conv_h(cls->H, sq, &d1, 1);
        m->h_forward[cls - m->layers] = 1;
    } else {
        fisher_relu_forward(m->relu, m->bn, (size_t)B * N0 * D);
    }
    fisher_linear_forward(m->logits, m->relu, P(m, m->cls_w), P(m, m->cls_b), B * N0, D, L);
    fisher_resize_bilinear_forward(m->logits_full, m->logits, B, h0, w0, L, m->H, m->W);
    m->last_training = training;
    return m->logits_full;
}

const float *fisher_segformer_logits_quarter(const fisher_segformer *m, int *h4, int *w4) {
    if (h4) *h4 = m->acts[0].h;
    if (w4) *w4 = m->acts[0].w;
    return m->logits;
}

/* --------------------------------------------------------------- backward */

void fisher_segformer_zero_grad(fisher_segformer *m) {
    memset(m->grad_data, 0, m->params.total * sizeof(float));
}

static void zero(float *p, size_t n) { memset(p, 0, n * sizeof *p); }

/* The layer owning tensor `weight` when this backward collects statistics, else NULL. */
static fisher_layer *stats_for(fisher_segformer *m, int weight) {
    if (!m->collect_stats) return NULL;
    fisher_layer *l = &m->layers[m->layer_of[weight]];
    int trains = m->trainable[l->weight] || (l->bias != NONE && m->trainable[l->bias]);
    return trains ? l : NULL; /* a layer with no live chunk needs no statistics */
}

/* l's H where the forward did not compute it already, else NULL. */
static float *h_left(const fisher_segformer *m, const fisher_layer *l) {
    return m->h_forward[l - m->layers] ? NULL : l->H;
}

/* A linear layer's backward (weight tensor w, bias b), with its statistics
 * into l when l is not NULL (fisher_linear_backward_stats). */
static void linear_backward(fisher_segformer *m, fisher_layer *l, float *dinp, int w, int b,
                            const float *dout, const float *inp, int R, int IC, int OC) {
    if (l)
        fisher_linear_backward_stats(dinp, G(m, w), G(m, b), h_left(m, l), l->S, dout, inp, P(m, w),
                                     LIVE(m, w), R, IC, OC);
    else
        fisher_linear_backward(dinp, G(m, w), G(m, b), dout, inp, P(m, w), LIVE(m, w), R, IC, OC);
}

/* A conv's backward (weight tensor w, bias b, scratch m->g.conv), with its
 * statistics into l when l is not NULL (fisher_conv2d_backward_stats). */
static void conv_backward(fisher_segformer *m, fisher_layer *l, float *dinp, int w, int b,
                          const float *dout, const float *inp, const fisher_conv2d_dims *d) {
    if (l)
        fisher_conv2d_backward_stats(dinp, G(m, w), G(m, b), h_left(m, l), l->S, m->g.conv, dout, inp,
                                     P(m, w), LIVE(m, w), d);
    else
        fisher_conv2d_backward(dinp, G(m, w), G(m, b), m->g.conv, dout, inp, P(m, w), LIVE(m, w), d);
}

/* A LayerNorm's backward over (B, N, C), weight tensor w and bias b; with
 * its statistics into l when l is not NULL, from what forward and backward
 * hold (fisher_layernorm_backward_stats). */
static void layernorm_backward(fisher_segformer *m, fisher_layer *l, float *dinp, int w, int b,
                               const float *dout, const float *inp, const float *mean,
                               const float *rstd, int B, int N, int C) {
    if (l)
        fisher_layernorm_backward_stats(dinp, G(m, w), G(m, b), l->H, l->S, dout, inp, P(m, w), mean,
                                        rstd, B, N, C, m->stat_shards);
    else
        fisher_layernorm_backward(dinp, G(m, w), G(m, b), dout, inp, P(m, w), mean, rstd, B * N, C);
}

/* dres holds d(block output) on entry and d(block input) on return. */
static void block_backward(fisher_segformer *m, int s, int j, const float *x, float *dres) {
    const fisher_segformer_config *c = &m->cfg;
    stage_acts *sa = &m->acts[s];
    block_acts *a = &sa->blocks[j];
    const block_params *p = &m->stages[s].blocks[j];
    grad_scratch *g = &m->g;
    int B = m->B, N = sa->N, C = c->hidden_sizes[s], Hd = C * c->mlp_ratio;
    size_t nc = (size_t)B * N * C, nh = (size_t)B * N * Hd;

    /* Mix-FFN: out = x1 + dense2(gelu(dwconv(dense1(ln2(x1))))) */
    float *dh3 = g->hidden_a, *dh2 = g->hidden_b, *dh1 = g->hidden_a;
    zero(dh3, nh);
    linear_backward(m, stats_for(m, p->fc2_w), dh3, p->fc2_w, p->fc2_b, dres, a->h3, B * N, Hd, C);
    zero(dh2, nh);
    fisher_gelu_backward(dh2, dh3, a->h2, nh);
    zero(dh1, nh); /* dh3 is spent: its buffer now collects dh1 */
    conv_backward(m, stats_for(m, p->dw_w), dh1, p->dw_w, p->dw_b, dh2, a->h1, &sa->dw);
    zero(g->ln, nc);
    linear_backward(m, stats_for(m, p->fc1_w), g->ln, p->fc1_w, p->fc1_b, dh1, a->ln2, B * N, C, Hd);
    layernorm_backward(m, stats_for(m, p->ln2_w), dres, p->ln2_w, p->ln2_b, g->ln, a->x1,
                       a->ln2_mean, a->ln2_rstd, B, N, C);

    /* attention: x1 = x + esa(ln1(x)) */
    fisher_esa_params w = esa_params(m, p, P), dw = esa_params(m, p, G);
    fisher_esa_rows rows = {.q_w = LIVE(m, p->q_w), .k_w = LIVE(m, p->k_w), .v_w = LIVE(m, p->v_w),
                            .sr_w = LIVE(m, p->sr_w), .o_w = LIVE(m, p->o_w)};
    fisher_esa_stats st = {0}, *stp = NULL;
    if (m->collect_stats) {
        fisher_layer *q = stats_for(m, p->q_w), *k = stats_for(m, p->k_w), *v = stats_for(m, p->v_w);
        fisher_layer *o = stats_for(m, p->o_w);
        fisher_layer *sr = p->sr_w != NONE ? stats_for(m, p->sr_w) : NULL;
        fisher_layer *srln = p->sr_w != NONE ? stats_for(m, p->sr_ln_w) : NULL;
#define HS(l, f) st.f##_H = l ? h_left(m, l) : NULL, st.f##_S = l ? l->S : NULL
        HS(q, q), HS(k, k), HS(v, v), HS(o, o), HS(sr, sr), HS(srln, sr_ln);
#undef HS
        st.shards = m->stat_shards;
        stp = &st;
    }
    zero(g->ln, nc);
    fisher_esa_backward(g->ln, &dw, m->esa_scratch, dres, a->ln1, &a->esa, &w, &rows, &sa->esa,
                        stp);
    layernorm_backward(m, stats_for(m, p->ln1_w), dres, p->ln1_w, p->ln1_b, g->ln, x, a->ln1_mean,
                       a->ln1_rstd, B, N, C);
}

/* linear_fuse's statistics as the reference sees it: a 1×1 Conv2d without
 * bias over the concatenation [up(lc_3) | up(lc_2) | up(lc_1) | lc_0] of
 * B·N_0 rows, which the forward never builds (see there). Each column block
 * is a stage's upsampled projection; a bias-free conv divides Σ x² by B,
 * i.e. the linear statistic (÷ rows) times N_0. S from dfuse_sq (D), the
 * column squares of d(fuse) that BatchNorm's backward summed as it wrote
 * it: a separate pass re-read 4 MB from memory (mit-b0 128×128 batch 4). */
static void fuse_stats(fisher_segformer *m, fisher_layer *l, const double *dfuse_sq) {
    int B = m->B, D = m->cfg.decoder_hidden_size;
    int h0 = m->acts[0].h, w0 = m->acts[0].w, N0 = m->acts[0].N;
    for (int o = 0; o < D; o++) l->S[o] = (float)(dfuse_sq[o] / ((double)B * N0));
    for (int s = 0; s < FISHER_STAGES; s++) {
        const stage_acts *sa = &m->acts[s];
        float *H = l->H + (size_t)(FISHER_STAGES - 1 - s) * D;
        if (s == 0) {
            float *H0 = h_left(m, l) ? H : NULL; /* NULL: the forward's (scaled already) */
            if (!H0) continue;
            fisher_stats_linear(H0, NULL, m->lc[0], NULL, B * N0, D, D, 0);
        } else { /* read off the stage's own grid, not the upsampled copy */
            double sq[D];
            memset(sq, 0, sizeof sq);
            fisher_resize_bilinear_squares(sq, m->lc[s], B, sa->h, sa->w, D, h0, w0);
            for (int j = 0; j < D; j++) H[j] = (float)(sq[j] / ((double)B * N0));
        }
        for (int j = 0; j < D; j++) H[j] *= (float)N0;
    }
}

/* Every layer that trains (and so collected statistics in this backward)
 * gets the mean over ranks of its H and S: packed, one f32 all-reduce,
 * divided by size, unpacked. The same layers on every rank, as every rank
 * holds the same live mask. Layers that do not train keep what they held,
 * which the method never reads. */
static int average_stats(fisher_segformer *m, fisher_error *err) {
    size_t n = 0;
    for (int i = 0; i < m->n_layers; i++) {
        fisher_layer *l = &m->layers[i];
        if (!stats_for(m, l->weight)) continue;
        memcpy(m->stats_pack + n, l->H, l->h_len * sizeof(float)), n += l->h_len;
        memcpy(m->stats_pack + n, l->S, l->s_len * sizeof(float)), n += l->s_len;
    }
    if (fisher_comm_sum_f32(m->comm, m->stats_pack, n, err)) return -1;
    float size = (float)m->comm->size;
    for (size_t k = 0; k < n; k++) m->stats_pack[k] /= size;
    n = 0;
    for (int i = 0; i < m->n_layers; i++) {
        fisher_layer *l = &m->layers[i];
        if (!stats_for(m, l->weight)) continue;
        memcpy(l->H, m->stats_pack + n, l->h_len * sizeof(float)), n += l->h_len;
        memcpy(l->S, m->stats_pack + n, l->s_len * sizeof(float)), n += l->s_len;
    }
    return 0;
}

static int backward_pass(fisher_segformer *m, const float *dlogits, fisher_error *err);

int fisher_segformer_backward(fisher_segformer *m, const float *dlogits, fisher_error *err) {
    if (!m->act_memory || !m->last_training)
        return fisher_errorf(err, "backward needs a training forward first (BatchNorm's batch "
                                  "statistics are what it differentiates)");
    if (m->collect_stats && m->B % m->stat_shards)
        return fisher_errorf(err, "batch of %d does not split into %d equal statistics shards",
                             m->B, m->stat_shards);
    if (backward_pass(m, dlogits, err)) return -1;
    if (m->collect_stats && m->comm) return average_stats(m, err);
    return 0;
}

static int backward_pass(fisher_segformer *m, const float *dlogits, fisher_error *err) {
    const fisher_segformer_config *c = &m->cfg;
    grad_scratch *g = &m->g;
    int B = m->B, D = c->decoder_hidden_size, L = c->num_labels;
    int h0 = m->acts[0].h, w0 = m->acts[0].w, N0 = m->acts[0].N;
    size_t nd = (size_t)B * N0 * D;
    if (m->earliest == INT_MAX) return 0; /* nothing trains */

    /* Decode head, top down. Below the earliest layer that trains nothing
     * needs a gradient: each `flows_below` check ends the pass there. */
    zero(g->logits, (size_t)B * N0 * L);
    fisher_resize_bilinear_backward(g->logits, dlogits, B, h0, w0, L, m->H, m->W);
    fisher_layer *l;
    if ((l = stats_for(m, m->cls_w))) {
        fisher_conv2d_dims d1; /* the classifier is a 1×1 Conv2d in the reference */
        fisher_conv2d_dims_init(&d1, B, h0, w0, D, L, 1, 1, 1, 0, 1);
        fisher_stats_conv(h_left(m, l), l->S, m->relu, g->logits, &d1, 1);
    }
    int flows = flows_below(m, m->cls_w);
    if (flows) zero(g->relu, nd);
    fisher_linear_backward(flows ? g->relu : NULL, G(m, m->cls_w), G(m, m->cls_b), g->logits,
                           m->relu, P(m, m->cls_w), LIVE(m, m->cls_w), B * N0, D, L);
    if (!flows) return 0;
    zero(g->bn, nd);
    fisher_relu_backward(g->bn, g->relu, m->relu, nd);
    /* one process's whole batch: S from the backward's own pass, H from
     * the forward's sums (a forward that did not take it: a pass here) */
    fisher_layer *bn = stats_for(m, m->bn_w), *bn_fused = m->stat_shards <= 1 ? bn : NULL;
    if (bn && !bn_fused)
        fisher_stats_batchnorm_shards(bn->H, bn->S, m->fuse, g->bn, B, N0, D, m->stat_shards);
    if (bn_fused && h_left(m, bn_fused))
        fisher_stats_batchnorm(bn_fused->H, bn_fused->S, m->fuse, g->bn, B, N0, D);
    flows = flows_below(m, m->bn_w);
    if (flows) zero(g->fuse, nd);
    /* linear_fuse's S: the squares of d(fuse) as BatchNorm writes it */
    fisher_layer *fuse = flows ? stats_for(m, m->fuse_w) : NULL;
    double dfuse_sq[D];
    memset(dfuse_sq, 0, sizeof dfuse_sq);
    if (fisher_batchnorm_backward_sync_stats(flows ? g->fuse : NULL, G(m, m->bn_w), G(m, m->bn_b),
                                             bn_fused ? bn_fused->S : NULL, fuse ? dfuse_sq : NULL, g->bn,
                                             m->fuse, P(m, m->bn_w), m->bn_mean_b, m->bn_rstd_b, B, N0,
                                             D, m->comm, err))
        return -1;
    if (!flows) return 0;
    /* the stage-wise fuse of the forward, in reverse: stage s's share of
     * d(fuse) is resized back to its resolution, then through W_s and lc_s */
    if (fuse) fuse_stats(m, fuse, dfuse_sq);
    float *dfuse_w = G(m, m->fuse_w);
    int to_lc = flows_below(m, m->fuse_w), to_encoder = flows_below(m, m->lc_w[0]);
    for (int s = 0; s < FISHER_STAGES; s++) {
        stage_acts *sa = &m->acts[s];
        size_t col = (size_t)(FISHER_STAGES - 1 - s) * D;
        float *dz = g->fuse;
        if (s > 0) {
            dz = g->z;
            zero(dz, (size_t)B * sa->N * D);
            fisher_resize_bilinear_backward(dz, g->fuse, B, sa->h, sa->w, D, h0, w0);
        }
        if (to_lc) zero(g->lc[s], (size_t)B * sa->N * D);
        fisher_linear_slice_backward(to_lc ? g->lc[s] : NULL, dfuse_w ? dfuse_w + col : NULL, dz,
                                     m->lc[s], P(m, m->fuse_w) + col, LIVE(m, m->fuse_w),
                                     FISHER_STAGES * D, B * sa->N, D, D);
        if (!to_lc) continue;
        if (to_encoder) zero(g->stage_out[s], (size_t)B * sa->N * c->hidden_sizes[s]);
        linear_backward(m, stats_for(m, m->lc_w[s]), to_encoder ? g->stage_out[s] : NULL,
                        m->lc_w[s], m->lc_b[s], g->lc[s], sa->out, B * sa->N, c->hidden_sizes[s], D);
    }
    if (!to_encoder) return 0;

    /* encoder, deepest stage first; a stage's input gradient lands in the
     * previous stage's output gradient (already holding the decoder's part) */
    for (int s = FISHER_STAGES - 1; s >= 0; s--) {
        stage_acts *sa = &m->acts[s];
        const stage_params *sp = &m->stages[s];
        int C = c->hidden_sizes[s], N = sa->N, depth = c->depths[s];
        size_t nc = (size_t)B * N * C;
        const float *last = sa->blocks[depth - 1].out;
        if (!flows_below_or_at(m, sp->ln_w)) return 0; /* this stage and all below are frozen */
        zero(g->res, nc);
        layernorm_backward(m, stats_for(m, sp->ln_w), g->res, sp->ln_w, sp->ln_b, g->stage_out[s],
                           last, sa->out_mean, sa->out_rstd, B, N, C);
        for (int j = depth - 1; j >= 0; j--) {
            if (!flows_below_or_at(m, sp->blocks[j].fc2_w)) return 0;
            block_backward(m, s, j, j ? sa->blocks[j - 1].out : sa->x0, g->res);
        }
        if (!flows_below_or_at(m, sp->patch_ln_w)) return 0;
        zero(g->patch, nc);
        layernorm_backward(m, stats_for(m, sp->patch_ln_w), g->patch, sp->patch_ln_w,
                           sp->patch_ln_b, g->res, sa->patch_out, sa->x0_mean, sa->x0_rstd, B, N, C);
        const float *inp = s ? m->acts[s - 1].out : m->images;
        conv_backward(m, stats_for(m, sp->patch_w),
                      s && flows_below(m, sp->patch_w) ? g->stage_out[s - 1] : NULL, sp->patch_w,
                      sp->patch_b, g->patch, inp, &sa->patch);
    }
    return 0;
}
