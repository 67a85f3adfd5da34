"""segformer_torch.py — the PyTorch reference SegFormer that fisherd is proven
against, shared by the parity fixtures (make_fixtures.py) and the training-step
benchmark (tests/bench/step_torch.py).

It is Hugging Face's SegformerForSemanticSegmentation re-written module for
module and name for name (so state_dict() keys match public checkpoints), plus
the segmentation loss of FISHERADAPTUNE.md §7 and the named configs that
lib/segformer.c knows (tiny, mit-b0, mit-b1, mit-b2). It lives here, not in
transformers, because the only Python dependencies allowed are Debian's
python3-torch and python3-numpy; and in one place, so that what the C engine
is compared with (correctness) and raced against (speed) is the same model.

Nothing here is random or touches files: initialisation and data belong to
the callers.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-5  # nn.LayerNorm's default, which every HF SegFormer LayerNorm uses
BN_EPS = 1e-5
BN_MOMENTUM = 0.1
DICE_WEIGHT = 0.65
DICE_SMOOTH = 1e-6

SEGFORMER_COMMON = dict(
    model_type="segformer",
    num_channels=3,
    num_encoder_blocks=4,
    sr_ratios=[8, 4, 2, 1],
    patch_sizes=[7, 3, 3, 3],
    strides=[4, 2, 2, 2],
    mlp_ratios=[4, 4, 4, 4],
    hidden_act="gelu",
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    classifier_dropout_prob=0.0,
    drop_path_rate=0.0,
    layer_norm_eps=LN_EPS,
    batch_norm_eps=BN_EPS,
    num_labels=1,
)
CONFIG_TINY = dict(
    SEGFORMER_COMMON,
    name="tiny",
    hidden_sizes=[16, 32, 64, 128],
    depths=[1, 1, 1, 1],
    num_attention_heads=[1, 1, 2, 4],
    decoder_hidden_size=64,
)
CONFIG_MITB0 = dict(
    SEGFORMER_COMMON,
    name="mit-b0",
    hidden_sizes=[32, 64, 160, 256],
    depths=[2, 2, 2, 2],
    num_attention_heads=[1, 2, 5, 8],
    decoder_hidden_size=256,
)

CONFIG_MITB1 = dict(
    SEGFORMER_COMMON,
    name="mit-b1",
    hidden_sizes=[64, 128, 320, 512],
    depths=[2, 2, 2, 2],
    num_attention_heads=[1, 2, 5, 8],
    decoder_hidden_size=256,
)
CONFIG_MITB2 = dict(
    SEGFORMER_COMMON,
    name="mit-b2",
    hidden_sizes=[64, 128, 320, 512],
    depths=[3, 4, 6, 3],
    num_attention_heads=[1, 2, 5, 8],
    decoder_hidden_size=768,
)
# By name, as fisherd's --config and lib/segformer.c's named_configs spell them.
CONFIGS = {c["name"]: c for c in (CONFIG_TINY, CONFIG_MITB0, CONFIG_MITB1, CONFIG_MITB2)}


# ---------------------------------------------------------------------------
# Shared maths: attention core and the segmentation loss
# ---------------------------------------------------------------------------

def attention_core(q, k, v, num_heads):
    """q (B, N, C), k and v (B, M, C) -> (B, N, C); head h owns channels
    [h*C/NH, (h+1)*C/NH). Exactly HF's transpose_for_scores / matmul / softmax."""
    B, N, C = q.shape
    d = C // num_heads

    def heads(t):  # (B, T, C) -> (B, NH, T, d)
        return t.view(t.shape[0], t.shape[1], num_heads, d).permute(0, 2, 1, 3)

    scores = torch.matmul(heads(q), heads(k).transpose(-1, -2)) / math.sqrt(d)
    probs = F.softmax(scores, dim=-1)
    context = torch.matmul(probs, heads(v))
    return context.permute(0, 2, 1, 3).contiguous().view(B, N, C)


def segmentation_loss(logits, target, dice_weight=DICE_WEIGHT):
    """BCE-with-logits (mean over all elements) + w * (1 - soft Dice), Dice
    summed over the whole batch (FISHERADAPTUNE.md §7)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    dice = 2 * (p * target).sum() / (p.sum() + target.sum() + DICE_SMOOTH)
    return bce + dice_weight * (1 - dice)


# ---------------------------------------------------------------------------
# SegFormer, module for module and name for name as Hugging Face's
# modeling_segformer.py (SegformerForSemanticSegmentation), so state_dict()
# keys match public checkpoints. Dropout and drop-path are left out: they
# are 0 here and own no parameters.
# ---------------------------------------------------------------------------

class SegformerOverlapPatchEmbeddings(nn.Module):
    def __init__(self, patch_size, stride, num_channels, hidden_size):
        super().__init__()
        self.proj = nn.Conv2d(num_channels, hidden_size, kernel_size=patch_size, stride=stride,
                              padding=patch_size // 2)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=LN_EPS)

    def forward(self, pixel_values):
        embeddings = self.proj(pixel_values)
        _, _, height, width = embeddings.shape
        embeddings = embeddings.flatten(2).transpose(1, 2)
        return self.layer_norm(embeddings), height, width


class SegformerEfficientSelfAttention(nn.Module):
    def __init__(self, hidden_size, num_attention_heads, sequence_reduction_ratio):
        super().__init__()
        self.num_attention_heads = num_attention_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.sr_ratio = sequence_reduction_ratio
        if sequence_reduction_ratio > 1:
            self.sr = nn.Conv2d(hidden_size, hidden_size, kernel_size=sequence_reduction_ratio,
                                stride=sequence_reduction_ratio)
            self.layer_norm = nn.LayerNorm(hidden_size, eps=LN_EPS)

    def forward(self, hidden_states, height, width):
        query = self.query(hidden_states)
        if self.sr_ratio > 1:
            batch_size, _, num_channels = hidden_states.shape
            hidden_states = hidden_states.permute(0, 2, 1).reshape(batch_size, num_channels,
                                                                   height, width)
            hidden_states = self.sr(hidden_states)
            hidden_states = hidden_states.reshape(batch_size, num_channels, -1).permute(0, 2, 1)
            hidden_states = self.layer_norm(hidden_states)
        return attention_core(query, self.key(hidden_states), self.value(hidden_states),
                              self.num_attention_heads)


class SegformerSelfOutput(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden_states):
        return self.dense(hidden_states)


class SegformerAttention(nn.Module):
    def __init__(self, hidden_size, num_attention_heads, sequence_reduction_ratio):
        super().__init__()
        self.self = SegformerEfficientSelfAttention(hidden_size, num_attention_heads,
                                                    sequence_reduction_ratio)
        self.output = SegformerSelfOutput(hidden_size)

    def forward(self, hidden_states, height, width):
        return self.output(self.self(hidden_states, height, width))


class SegformerDWConv(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, hidden_states, height, width):
        batch_size, _, num_channels = hidden_states.shape
        hidden_states = hidden_states.transpose(1, 2).view(batch_size, num_channels, height, width)
        return self.dwconv(hidden_states).flatten(2).transpose(1, 2)


class SegformerMixFFN(nn.Module):
    def __init__(self, in_features, hidden_features):
        super().__init__()
        self.dense1 = nn.Linear(in_features, hidden_features)
        self.dwconv = SegformerDWConv(hidden_features)
        self.dense2 = nn.Linear(hidden_features, in_features)

    def forward(self, hidden_states, height, width):
        hidden_states = self.dwconv(self.dense1(hidden_states), height, width)
        return self.dense2(F.gelu(hidden_states))  # exact (erf) GELU, HF's "gelu"


class SegformerLayer(nn.Module):
    def __init__(self, hidden_size, num_attention_heads, sequence_reduction_ratio, mlp_ratio):
        super().__init__()
        self.layer_norm_1 = nn.LayerNorm(hidden_size, eps=LN_EPS)
        self.attention = SegformerAttention(hidden_size, num_attention_heads,
                                            sequence_reduction_ratio)
        self.layer_norm_2 = nn.LayerNorm(hidden_size, eps=LN_EPS)
        self.mlp = SegformerMixFFN(hidden_size, int(hidden_size * mlp_ratio))

    def forward(self, hidden_states, height, width):
        # Pre-norm residual blocks: x + attention(LN1(x)), then x + mlp(LN2(x)).
        attention_output = self.attention(self.layer_norm_1(hidden_states), height, width)
        hidden_states = attention_output + hidden_states
        return self.mlp(self.layer_norm_2(hidden_states), height, width) + hidden_states


class SegformerEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        hs, n = config["hidden_sizes"], config["num_encoder_blocks"]
        self.patch_embeddings = nn.ModuleList(
            SegformerOverlapPatchEmbeddings(config["patch_sizes"][i], config["strides"][i],
                                            config["num_channels"] if i == 0 else hs[i - 1], hs[i])
            for i in range(n))
        self.block = nn.ModuleList(
            nn.ModuleList(SegformerLayer(hs[i], config["num_attention_heads"][i],
                                         config["sr_ratios"][i], config["mlp_ratios"][i])
                          for _ in range(config["depths"][i]))
            for i in range(n))
        self.layer_norm = nn.ModuleList(nn.LayerNorm(hs[i], eps=LN_EPS) for i in range(n))

    def forward(self, pixel_values):
        """Returns every stage's output as an image (B, C_i, H_i, W_i)."""
        batch_size = pixel_values.shape[0]
        hidden_states, all_hidden_states = pixel_values, []
        for embed, layers, norm in zip(self.patch_embeddings, self.block, self.layer_norm):
            hidden_states, height, width = embed(hidden_states)
            for layer in layers:
                hidden_states = layer(hidden_states, height, width)
            hidden_states = norm(hidden_states)
            hidden_states = hidden_states.reshape(batch_size, height, width, -1)
            hidden_states = hidden_states.permute(0, 3, 1, 2).contiguous()
            all_hidden_states.append(hidden_states)
        return all_hidden_states


class SegformerModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.encoder = SegformerEncoder(config)

    def forward(self, pixel_values):
        return self.encoder(pixel_values)


class SegformerMLP(nn.Module):
    def __init__(self, input_dim, decoder_hidden_size):
        super().__init__()
        self.proj = nn.Linear(input_dim, decoder_hidden_size)

    def forward(self, hidden_states):
        return self.proj(hidden_states.flatten(2).transpose(1, 2))


class SegformerDecodeHead(nn.Module):
    def __init__(self, config):
        super().__init__()
        d, n = config["decoder_hidden_size"], config["num_encoder_blocks"]
        self.linear_c = nn.ModuleList(SegformerMLP(c, d) for c in config["hidden_sizes"])
        self.linear_fuse = nn.Conv2d(d * n, d, kernel_size=1, bias=False)
        self.batch_norm = nn.BatchNorm2d(d, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.activation = nn.ReLU()
        self.classifier = nn.Conv2d(d, config["num_labels"], kernel_size=1)

    def forward(self, encoder_hidden_states):
        batch_size = encoder_hidden_states[-1].shape[0]
        size = encoder_hidden_states[0].shape[2:]
        all_hidden_states = []
        for hidden_state, mlp in zip(encoder_hidden_states, self.linear_c):
            height, width = hidden_state.shape[2], hidden_state.shape[3]
            hidden_state = mlp(hidden_state).permute(0, 2, 1).reshape(batch_size, -1, height, width)
            all_hidden_states.append(
                F.interpolate(hidden_state, size=size, mode="bilinear", align_corners=False))
        # HF concatenates the stages in reverse: stage 3's channels come first.
        hidden_states = self.linear_fuse(torch.cat(all_hidden_states[::-1], dim=1))
        hidden_states = self.activation(self.batch_norm(hidden_states))
        return self.classifier(hidden_states)


class SegformerForSemanticSegmentation(nn.Module):
    """Logits (B, num_labels, H/4, W/4)."""

    def __init__(self, config):
        super().__init__()
        self.segformer = SegformerModel(config)
        self.decode_head = SegformerDecodeHead(config)

    def forward(self, pixel_values):
        return self.decode_head(self.segformer(pixel_values))


# ---------------------------------------------------------------------------
# One training objective, as lib/ computes it
# ---------------------------------------------------------------------------

def model_loss(model, x, target):
    """Quarter-resolution logits and the loss on them upsampled (bilinear,
    align_corners=False, as lib/'s resize) to the target's full size."""
    logits = model(x)
    up = F.interpolate(logits, size=target.shape[2:], mode="bilinear", align_corners=False)
    return logits, segmentation_loss(up, target)


def n_params(model):
    return sum(p.numel() for p in model.parameters())
