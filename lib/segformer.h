/*
 * segformer.h — the SegFormer model (Xie et al., 2021): a Mix Transformer
 * (MiT) encoder of four stages — overlapping patch embedding, blocks of
 * efficient self-attention (keys/values spatially reduced by a strided conv)
 * and Mix-FFN (dense, depthwise 3×3 conv, GELU, dense) — and an all-MLP
 * decode head that projects every stage to one width, upsamples to 1/4
 * resolution, fuses, and classifies. Logits come out at 1/4 of the input
 * resolution and are bilinearly upsampled to full size for loss and
 * prediction.
 *
 * Tensor names are exactly those of Hugging Face's
 * SegformerForSemanticSegmentation state dict, so public checkpoints load.
 *
 * Lifecycle:
 *     m = fisher_segformer_create(&cfg, &err);      parameters + gradients
 *     fisher_segformer_init_random(m, seed)  or  fisher_segformer_load(m, st, &err)
 *     fisher_segformer_prepare(m, B, H, W, &err);    activations, once per shape
 *     loop: zero_grad, forward(training=1), loss, backward, optimiser step
 *     fisher_segformer_free(m);
 */
#ifndef FISHER_SEGFORMER_H
#define FISHER_SEGFORMER_H

#include <stddef.h>
#include <stdint.h>

#include "comm.h"
#include "error.h"
#include "safetensors.h"
#include "tensors.h"

#define FISHER_STAGES 4

typedef struct {
    int num_channels;                   /* input image channels (3) */
    int hidden_sizes[FISHER_STAGES];    /* C of each stage */
    int depths[FISHER_STAGES];          /* blocks per stage */
    int num_heads[FISHER_STAGES];
    int sr_ratios[FISHER_STAGES];       /* spatial reduction of keys/values */
    int patch_sizes[FISHER_STAGES];     /* patch-embedding kernel */
    int strides[FISHER_STAGES];         /* patch-embedding stride */
    int mlp_ratio;                      /* Mix-FFN hidden = mlp_ratio·C */
    int decoder_hidden_size;
    int num_labels;                     /* 1 = binary segmentation */
    float layer_norm_eps;               /* 1e-5, PyTorch's LayerNorm default */
    float batch_norm_eps;               /* 1e-5 */
    float batch_norm_momentum;          /* 0.1 */
} fisher_segformer_config;

/* Named configs: "tiny", "mit-b0", "mit-b1", "mit-b2". */
int fisher_segformer_config_named(fisher_segformer_config *cfg, const char *name, fisher_error *err);
/* The config as JSON with Hugging Face's config.json keys (malloc'd). */
char *fisher_segformer_config_to_json(const fisher_segformer_config *cfg);
/* Parses such JSON; missing keys keep cfg's current values. Validates. */
int fisher_segformer_config_from_json(fisher_segformer_config *cfg, const char *json,
                                      fisher_error *err);
int fisher_segformer_config_validate(const fisher_segformer_config *cfg, fisher_error *err);

typedef struct fisher_segformer fisher_segformer;

fisher_segformer *fisher_segformer_create(const fisher_segformer_config *cfg, fisher_error *err);
void fisher_segformer_free(fisher_segformer *m);

const fisher_segformer_config *fisher_segformer_get_config(const fisher_segformer *m);
/* Trainable parameters: the table and the flat arrays in its layout. */
const fisher_tensor_table *fisher_segformer_params(const fisher_segformer *m);
float *fisher_segformer_param_data(fisher_segformer *m);
float *fisher_segformer_grad_data(fisher_segformer *m);
/* Non-trainable state (BatchNorm running statistics), same conventions. */
const fisher_tensor_table *fisher_segformer_buffers(const fisher_segformer *m);
float *fisher_segformer_buffer_data(fisher_segformer *m);

/* Random init as the original SegFormer: Linear weights trunc-normal(0.02),
 * Conv weights normal(0, sqrt(2/fan_out)), fan_out = KH·KW·OC/groups,
 * biases 0, norm weights 1; running stats (0, 1). Reproducible from seed. */
void fisher_segformer_init_random(fisher_segformer *m, uint64_t seed);

/* Loads every parameter and buffer by name, checking shapes: a missing
 * tensor or a wrong shape is an error naming it. Tensors of the file that
 * the model does not have are ignored (checkpoints carry other heads, and
 * fixtures carry test data). With FISHER_LOAD_ENCODER_ONLY the decode head
 * may be absent and keeps its current (random) values: that is how an
 * ImageNet-pretrained MiT encoder starts a segmentation model. */
#define FISHER_LOAD_ENCODER_ONLY 1u
int fisher_segformer_load(fisher_segformer *m, const fisher_safetensors *st, unsigned flags,
                          fisher_error *err);
/* What fisher_segformer_load would check, done before a model of cfg
 * exists: every parameter and buffer in st, a float tensor of its shape
 * (the decode head may be absent with FISHER_LOAD_ENCODER_ONLY, but then
 * the random head it gets may not outnumber the encoder in parameters).
 * Costs the tensor table only, so a small file whose config asks for a
 * huge model is refused without the model's gigabytes being allocated.
 * Returns 0, or -1 with the message load would give (or one saying the
 * head is too large). */
int fisher_segformer_check_file(const fisher_segformer_config *cfg, const fisher_safetensors *st,
                                unsigned flags, fisher_error *err);
/* Writes parameters and buffers (num_batches_tracked as I64) with the config
 * in __metadata__["config"]. */
int fisher_segformer_save(const fisher_segformer *m, const char *path, fisher_error *err);
/* The same, plus more tensors (a checkpoint's optimiser state) and
 * metadata (image size, normalisation, training step) in the same file. */
int fisher_segformer_save_with(const fisher_segformer *m, const char *path,
                               const fisher_st_tensor *extra, size_t n_extra,
                               const fisher_st_meta *extra_meta, size_t n_extra_meta,
                               fisher_error *err);

/* Allocates activations for batches of (B, H, W); an image too small for
 * the four stages (and their spatial reduction) is an error saying so.
 * A no-op for the shape already prepared. */
int fisher_segformer_prepare(fisher_segformer *m, int B, int H, int W, fisher_error *err);

/* images (B, H, W, num_channels), channels-last, for the prepared shape.
 * Training mode uses batch statistics in BatchNorm and updates its running
 * statistics. Returns the full-resolution logits (B, H, W, num_labels),
 * valid until the next call, or NULL when prepare has not been called. */
const float *fisher_segformer_forward(fisher_segformer *m, const float *images, int training);
/* The same, with err: NULL with err set when prepare has not been called,
 * or when a training forward's SyncBN all-reduce fails (a model with a
 * communicator: fisher_segformer_set_comm). */
const float *fisher_segformer_forward_sync(fisher_segformer *m, const float *images, int training,
                                           fisher_error *err);
/* Logits at 1/4 resolution (B, H/4, W/4, num_labels) of the last forward. */
const float *fisher_segformer_logits_quarter(const fisher_segformer *m, int *h4, int *w4);

/* Clears every parameter gradient. */
void fisher_segformer_zero_grad(fisher_segformer *m);
/* Back-propagates dlogits (B, H, W, num_labels) — the gradient of the loss
 * w.r.t. the full-resolution logits of the last forward, which must have
 * been a training forward whose images are still valid — and accumulates
 * every parameter gradient. Returns 0, or -1 (err set) when there is no
 * training forward to differentiate. */
int fisher_segformer_backward(fisher_segformer *m, const float *dlogits, fisher_error *err);

/* ---- Data-parallel training (issue 9; comm.h) ----
 *
 * With a communicator, each rank's model holds its own shard of the global
 * batch and
 *   - the decode head's BatchNorm2d trains on the global batch's statistics
 *     (SyncBN, layers.h), so its running statistics are identical on every
 *     rank and its input gradient is the one-process gradient's rows;
 *   - after a backward that collected Fisher statistics, every layer that
 *     trains gets the mean over ranks of its H_new and S_new (one f32
 *     all-reduce of all of them), as the reference does in distributed
 *     training, so every rank's method sees the same numbers.
 * Gradients stay per rank (partial sums of the global loss's gradient): the
 * trainer all-reduces them (train.h). comm NULL (the default): one process.
 * comm is not owned and must outlive its use; every rank must run the same
 * sequence of training forwards and backwards. */
void fisher_segformer_set_comm(fisher_segformer *m, fisher_comm *comm);

/* The norm layers' Fisher statistics (BatchNorm2d, LayerNorm) as the mean
 * over `shards` equal shards of the batch (layers.h, _shards): what
 * `shards` data-parallel ranks average, computed by one process — the
 * reference point of the equivalence test. 1 (the default): the whole
 * batch. The batch must divide by it (checked by backward). Returns 0, or
 * -1 for shards < 1. */
int fisher_segformer_set_stat_shards(fisher_segformer *m, int shards, fisher_error *err);

/* ---- Layers and their Fisher statistics (FISHERADAPTUNE.md §1) ---- */

typedef enum {
    FISHER_CLASS_LINEAR,
    FISHER_CLASS_CONV,       /* Conv2d, grouped and depthwise included */
    FISHER_CLASS_BATCHNORM,
    FISHER_CLASS_LAYERNORM,
} fisher_layer_class;

/* One module of the Hugging Face model that owns parameters. */
typedef struct {
    char name[FISHER_NAME_MAX];   /* e.g. "segformer.encoder.block.0.0.attention.self.query" */
    fisher_layer_class cls;
    int weight, bias;             /* parameter tensor indices; bias -1 when there is none */
    int depth;                    /* position in the forward pass, 0 = first */
    size_t h_len, s_len;          /* lengths of H and S */
    float *H, *S;                 /* per-batch H_new and S_new of the last backward that
                                   * collected statistics */
} fisher_layer;

/* Every layer, in registration (state-dict) order; *layers valid for the
 * model's lifetime. */
size_t fisher_segformer_layers(const fisher_segformer *m, const fisher_layer **layers);
/* With on != 0, each backward also computes every layer's H_new and S_new
 * from the activations and output gradients it already holds. */
void fisher_segformer_collect_stats(fisher_segformer *m, int on);

/* Which parameter elements train: live[e] != 0 for element e of the
 * parameter layout (the method's live mask, a recipe's mask), NULL for all.
 * From then on the backward (FISHERADAPTUNE.md §8)
 *   - computes a weight's gradient only on its rows (axis-0 indices) that
 *     hold a live element, one GEMM per run of such rows (layers.h);
 *   - computes no gradient at all for a tensor without a live element;
 *   - collects statistics only for layers that train;
 *   - stops propagating below the earliest layer that trains.
 * Gradient entries it skips are left untouched (zero after zero_grad), so
 * only the live elements' gradients mean anything. A partly live row
 * (column chunks) is computed whole; biases and norm parameters are
 * computed whole when any of their elements is live. live is read during
 * the call only; it costs one pass over it, so call it when it changes. */
void fisher_segformer_set_live(fisher_segformer *m, const uint8_t *live);

/* Bytes of activation memory held after prepare (for reports). */
size_t fisher_segformer_activation_bytes(const fisher_segformer *m);

#endif
