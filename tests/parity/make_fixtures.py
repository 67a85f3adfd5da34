#!/usr/bin/python3
"""make_fixtures.py — PyTorch-made golden files for fisherd's parity tests.

    /usr/bin/python3 tests/parity/make_fixtures.py OUTDIR      (or: make fixtures)

Writes three safetensors files into OUTDIR (tests/parity/fixtures):

  layers.safetensors
      One case per name prefix (linear, conv_*, layernorm, batchnorm, gelu,
      relu, attention, esa, resize_*, loss, adamw): the inputs and weights a
      layer is given, its output, a random upstream gradient `dout`, and the
      gradients out.backward(dout) leaves on the input(s) and every parameter.
      The C tests run lib/layers.h on the same inputs and compare.

  segformer_tiny.safetensors.gz
      A small SegFormer (config in __metadata__["config"]) in train mode: the
      initial state_dict under Hugging Face names (weights low-entropy like
      mit-b0's below, integers in [-7, 7] times a power of two, stored F16;
      BN statistics F32, num_batches_tracked I64), one batch (`input`,
      `target`), the `logits`, the `loss` (BCE + 0.65 * soft Dice on logits
      upsampled to the input size), `grad.<name>` for every parameter, then
      three AdamW steps on that batch: `loss.step1..3`, how far each
      parameter moved as `step3_delta.<name>` (F16, see make_tiny) and the
      BatchNorm buffers after step 3 as `step3.<name>`. The C tests rebuild
      the model from the file and check forward, backward and optimiser end
      to end. __metadata__["zero_grad_params"] lists the parameters whose
      gradient is exactly zero in exact arithmetic (stored values are
      rounding noise; see zero_grad_params below).

  segformer_mitb0.safetensors.gz
      A full-size mit-b0 checkpoint as PyTorch writes it (HF names, weights
      F16, BatchNorm statistics F32, num_batches_tracked I64), with one
      non-square `input` and its eval-mode `logits`. Weights are random but
      low-entropy (integers in [-2, 2] times a power of two, exact in F16)
      so the gzipped file stays small. The C tests load it like a real
      checkpoint.

Layout rule: activations (inputs, outputs and their gradients) are stored
channels-last, the way lib/ holds them: PyTorch's (B, C, H, W) becomes
(B, H, W, C); token tensors (B, N, C) are stored as they are. Weights and
weight gradients keep PyTorch's layout: Linear (OC, IC), Conv2d
(OC, C/groups, KH, KW).

Everything is float32 on one CPU thread with fixed seeds, so rerunning the
script reproduces the files bit for bit on the same PyTorch build. Needs only
torch and numpy: the model, configs and loss are segformer_torch.py next to
this file, and the safetensors writer (and the reader used to check the
result) are the few lines below.
"""

import copy
import gzip
import io
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# The model, its configs and the loss are shared with the benchmark
# (tests/bench/step_torch.py); this script adds what only fixtures need:
# low-entropy initialisation, the safetensors writer and the test cases.
from segformer_torch import (BN_EPS, BN_MOMENTUM, CONFIG_MITB0, CONFIG_TINY, LN_EPS,
                             SegformerAttention, SegformerForSemanticSegmentation,
                             attention_core, model_loss, n_params, segmentation_loss)

ADAMW = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)


# ---------------------------------------------------------------------------
# safetensors: writer and reader
# ---------------------------------------------------------------------------

NP_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "I64": np.dtype("<i8")}


class TensorFile:
    """An ordered collection of named tensors that serialises to safetensors."""

    def __init__(self):
        self.tensors = {}  # name -> numpy array, in insertion order

    def add(self, name, tensor, dtype="F32"):
        if name in self.tensors:
            raise KeyError(f"duplicate tensor name {name}")
        if isinstance(tensor, torch.Tensor):
            tensor = tensor.detach().cpu().numpy()
        # A copy: .numpy() shares memory, and the tensor may change later
        # (optimiser steps, BatchNorm's running statistics).
        arr = np.array(tensor, dtype=NP_DTYPES[dtype], order="C", copy=True)
        if dtype == "F16" and not np.array_equal(arr.astype(np.float32), tensor):
            raise ValueError(f"{name} is not exactly representable in F16")
        self.tensors[name] = arr

    def to_bytes(self, metadata=None):
        inv = {v: k for k, v in NP_DTYPES.items()}
        header, offset = {}, 0
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        for name, arr in self.tensors.items():
            header[name] = {
                "dtype": inv[arr.dtype],
                "shape": list(arr.shape),
                "data_offsets": [offset, offset + arr.nbytes],
            }
            offset += arr.nbytes
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        return b"".join([struct.pack("<Q", len(text)), text] +
                        [arr.tobytes() for arr in self.tensors.values()])


def read_safetensors(blob):
    """Parses safetensors bytes into ({name: numpy array}, metadata)."""
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = memoryview(blob)[8 + n:]
    out = {}
    for name, h in header.items():
        begin, end = h["data_offsets"]
        out[name] = np.frombuffer(data[begin:end], NP_DTYPES[h["dtype"]]).reshape(h["shape"])
    return out, meta


def write_file(path, tf, metadata, compress=False):
    """Writes tf to path (gzip'd, reproducibly, when compress) and checks it
    reads back identically. Returns the size on disk."""
    blob = tf.to_bytes(metadata)
    if compress:
        buf = io.BytesIO()
        # mtime=0 and no file name: the same tensors give the same bytes.
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
            gz.write(blob)
        payload = buf.getvalue()
    else:
        payload = blob
    with open(path, "wb") as f:
        f.write(payload)

    with open(path, "rb") as f:
        raw = f.read()
    back, meta = read_safetensors(gzip.decompress(raw) if compress else raw)
    assert list(back) == list(tf.tensors), f"{path}: tensor names or order differ"
    for name, arr in tf.tensors.items():
        assert back[name].dtype == arr.dtype and np.array_equal(back[name], arr), name
    assert meta == {str(k): str(v) for k, v in (metadata or {}).items()}
    return len(payload)


def nhwc(t):
    """The storage layout of an activation: images (B, C, H, W) -> (B, H, W, C)."""
    return t.permute(0, 2, 3, 1) if t.dim() == 4 else t


# ---------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------

def sample(shape, std, center=0.0, int_range=None):
    """center + N(0, std²); or, with int_range R, center + scale·k with k
    uniform integers in [-R, R] and scale the power of two that brings the
    standard deviation nearest std — exact in F16 and cheap to compress."""
    if int_range is None:
        return center + std * torch.randn(shape)
    k_std = math.sqrt(int_range * (int_range + 1) / 3)  # std of uniform {-R..R}
    scale = 2.0 ** round(math.log2(std / k_std))
    return center + scale * torch.randint(-int_range, int_range + 1, shape).float()


@torch.no_grad()
def init_segformer(model, int_range=None):
    """Linear/Conv weights ~ 1/sqrt(fan_in), biases ~ 0.02, norm weights
    1 + ~0.1, norm biases ~ 0.02: far from HF's near-zero init, so every
    layer carries signal and gradients are of a healthy size."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fan_in = m.weight[0].numel()
            m.weight.copy_(sample(m.weight.shape, 1 / math.sqrt(fan_in), 0.0, int_range))
            if m.bias is not None:
                m.bias.copy_(sample(m.bias.shape, 0.02, 0.0, int_range))
        elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
            m.weight.copy_(sample(m.weight.shape, 0.1, 1.0, int_range))
            m.bias.copy_(sample(m.bias.shape, 0.02, 0.0, int_range))


def add_state_dict(tf, model, prefix="", weight_dtype="F32"):
    """Every state_dict entry: weights as weight_dtype, BN statistics F32,
    num_batches_tracked I64 (shape [])."""
    for name, t in model.state_dict().items():
        if t.dtype == torch.int64:
            dtype = "I64"
        elif name.endswith(("running_mean", "running_var")):
            dtype = "F32"
        else:
            dtype = weight_dtype
        tf.add(prefix + name, t, dtype)


def crack_target(batch, height, width, lines=3):
    """Binary masks (B, 1, H, W): a few random thick line segments and one
    blob per image, about 10-20 % ones."""
    yy, xx = torch.meshgrid(torch.arange(height, dtype=torch.float32),
                            torch.arange(width, dtype=torch.float32), indexing="ij")
    size = torch.tensor([height, width], dtype=torch.float32)
    masks = []
    for _ in range(batch):
        m = torch.zeros(height, width, dtype=torch.bool)
        for _ in range(lines):
            (y0, x0), (y1, x1) = torch.rand(2, 2) * size
            half_width = 1.0 + 1.5 * torch.rand(()).item()
            dy, dx = y1 - y0, x1 - x0
            s = (((yy - y0) * dy + (xx - x0) * dx) / (dy * dy + dx * dx + 1e-9)).clamp(0, 1)
            m |= (yy - y0 - s * dy) ** 2 + (xx - x0 - s * dx) ** 2 <= half_width ** 2
        cy, cx = torch.rand(2) * size
        radius = 3.0 + 4.0 * torch.rand(()).item()
        m |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
        masks.append(m)
    return torch.stack(masks).unsqueeze(1).float()


# ---------------------------------------------------------------------------
# File 1: layers.safetensors
# ---------------------------------------------------------------------------

def record_case(tf, prefix, fn, inputs, params=(), grad_name=lambda n: "d" + n):
    """Runs out = fn(**inputs), back-propagates a random dout of out's shape,
    and records under prefix: the inputs, the parameters, out, dout, the
    input gradients d<input> and the parameter gradients grad_name(<param>).
    params is a list of (name, Parameter); fn closes over them. Returns out."""
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in inputs.items()}
    out = fn(**leaves)
    dout = torch.randn_like(out)
    out.backward(dout)
    for n, t in leaves.items():
        tf.add(f"{prefix}.{n}", nhwc(t))
    for n, p in params:
        tf.add(f"{prefix}.{n}", p)
    tf.add(f"{prefix}.out", nhwc(out))
    tf.add(f"{prefix}.dout", nhwc(dout))
    for n, t in leaves.items():
        tf.add(f"{prefix}.d{n}", nhwc(t.grad))
    for n, p in params:
        tf.add(f"{prefix}.{grad_name(n)}", p.grad)
    return out


def record_module(tf, prefix, module, inp):
    return record_case(tf, prefix, lambda inp: module(inp), {"inp": inp},
                       list(module.named_parameters()))


def set_params(module, **values):
    with torch.no_grad():
        for name, value in values.items():
            getattr(module, name).copy_(value)


def case_linear(tf):
    torch.manual_seed(101)
    lin = nn.Linear(12, 7)
    set_params(lin, weight=torch.randn(7, 12) * 0.3, bias=torch.randn(7) * 0.1)
    record_module(tf, "linear", lin, torch.randn(2, 5, 12))


#            name           B  C   H   W  OC  k  stride pad groups bias
CONV_CASES = [("conv_patch",   2, 3, 19, 23, 8, 7, 4, 3, 1, True),
              ("conv_s2",      2, 8, 9, 12, 16, 3, 2, 1, 1, True),
              ("conv_grouped", 2, 8, 6, 7, 12, 3, 1, 1, 4, False),
              ("conv_dw",      2, 16, 7, 5, 16, 3, 1, 1, 16, True),
              ("conv_sr",      2, 8, 8, 12, 8, 4, 4, 0, 1, True),
              ("conv_1x1",     2, 24, 5, 6, 10, 1, 1, 0, 1, False)]


def case_convs(tf):
    for seed, (name, B, C, H, W, OC, k, stride, pad, groups, bias) in enumerate(CONV_CASES):
        torch.manual_seed(200 + seed)
        conv = nn.Conv2d(C, OC, k, stride=stride, padding=pad, groups=groups, bias=bias)
        fan_in = C // groups * k * k
        set_params(conv, weight=torch.randn(conv.weight.shape) / math.sqrt(fan_in))
        if bias:
            set_params(conv, bias=torch.randn(OC) * 0.1)
        record_module(tf, name, conv, torch.randn(B, C, H, W))


def case_layernorm(tf):
    torch.manual_seed(301)
    ln = nn.LayerNorm(16, eps=LN_EPS)
    set_params(ln, weight=torch.randn(16) * 0.5 + 1, bias=torch.randn(16) * 0.1)
    record_module(tf, "layernorm", ln, torch.randn(2, 7, 16) * 2 + 0.5)


def case_batchnorm(tf):
    torch.manual_seed(302)
    C = 12
    bn = nn.BatchNorm2d(C, eps=BN_EPS, momentum=BN_MOMENTUM)
    set_params(bn, weight=torch.randn(C) * 0.5 + 1, bias=torch.randn(C) * 0.1,
               running_mean=torch.randn(C) * 0.1, running_var=torch.rand(C) + 0.5)
    original = copy.deepcopy(bn)
    tf.add("batchnorm.running_mean", bn.running_mean)
    tf.add("batchnorm.running_var", bn.running_var)
    inp = torch.randn(2, C, 5, 6) * 1.5 + 0.3
    bn.train()
    record_module(tf, "batchnorm", bn, inp)
    tf.add("batchnorm.running_mean_after", bn.running_mean)
    tf.add("batchnorm.running_var_after", bn.running_var)
    with torch.no_grad():
        tf.add("batchnorm.out_eval", nhwc(original.eval()(inp)))


def case_activations(tf):
    for seed, (name, fn) in enumerate([("gelu", F.gelu), ("relu", F.relu)]):
        torch.manual_seed(400 + seed)
        # linspace(-6, 6, 150) has no point at 0 (nearest ±0.04); the noise
        # cannot move one there, so relu's kink is never sampled.
        inp = torch.linspace(-6, 6, 150).reshape(3, 50) + 1e-3 * torch.randn(3, 50)
        record_case(tf, name, lambda inp: fn(inp), {"inp": inp})


def case_attention(tf):
    torch.manual_seed(501)
    qkv = {"q": torch.randn(2, 12, 16), "k": torch.randn(2, 3, 16), "v": torch.randn(2, 3, 16)}
    record_case(tf, "attention", lambda q, k, v: attention_core(q, k, v, 2), qkv)


def case_esa(tf):
    torch.manual_seed(502)
    C, H, W = 16, 4, 6
    holder = nn.Module()  # gives the parameters their HF names, attention.self.query.weight ...
    holder.attention = SegformerAttention(C, num_attention_heads=2, sequence_reduction_ratio=2)
    with torch.no_grad():
        for name, p in holder.named_parameters():
            if ".layer_norm." in name:
                p.copy_(1 + torch.randn(p.shape) * 0.1 if name.endswith("weight")
                        else torch.randn(p.shape) * 0.1)
            else:
                p.copy_(torch.randn(p.shape) * (0.2 if name.endswith("weight") else 0.1))
    record_case(tf, "esa", lambda hidden: holder.attention(hidden, H, W),
                {"hidden": torch.randn(2, H * W, C)}, list(holder.named_parameters()),
                grad_name=lambda n: "grad." + n)


def case_resize(tf):
    cases = [("resize_up", 2, 4, (3, 5), (7, 11)),
             ("resize_down", 2, 3, (9, 10), (4, 6)),
             ("resize_same", 2, 2, (5, 6), (5, 6))]
    for seed, (name, B, C, size_in, size_out) in enumerate(cases):
        torch.manual_seed(600 + seed)
        record_case(tf, name,
                    lambda inp: F.interpolate(inp, size=size_out, mode="bilinear",
                                              align_corners=False),
                    {"inp": torch.randn(B, C, *size_in)})


def case_loss(tf):
    torch.manual_seed(701)
    logits = (torch.randn(2, 1, 9, 11) * 2).requires_grad_(True)
    target = (torch.rand(2, 1, 9, 11) < 0.3).float()
    loss = segmentation_loss(logits, target)
    loss.backward()
    tf.add("loss.logits", nhwc(logits))
    tf.add("loss.target", nhwc(target))
    tf.add("loss.value", loss.reshape(1))
    tf.add("loss.dlogits", nhwc(logits.grad))


def case_adamw(tf):
    torch.manual_seed(801)
    p = nn.Parameter(torch.randn(37))
    grads = [torch.randn(37), torch.randn(37), torch.randn(37) * 1e-3]
    opt = torch.optim.AdamW([p], **ADAMW)
    tf.add("adamw.param0", p)
    for i, g in enumerate(grads, 1):
        tf.add(f"adamw.grad{i}", g)
    for i, g in enumerate(grads, 1):
        p.grad = g.clone()
        opt.step()
        tf.add(f"adamw.param{i}", p)


def make_layers(outdir):
    tf = TensorFile()
    for case in (case_linear, case_convs, case_layernorm, case_batchnorm, case_activations,
                 case_attention, case_esa, case_resize, case_loss, case_adamw):
        case(tf)
    return write_file(os.path.join(outdir, "layers.safetensors"), tf, file_metadata())


# ---------------------------------------------------------------------------
# File 2: segformer_tiny.safetensors.gz — forward, backward, three AdamW steps
# ---------------------------------------------------------------------------

# Integers in [-7, 7] times a power of two: the model starts from F16-exact
# float32 values, so the F16 copy in the file is the model exactly.
TINY_INT_RANGE = 7


def make_tiny(outdir):
    torch.manual_seed(1001)
    model = SegformerForSemanticSegmentation(CONFIG_TINY)
    init_segformer(model, int_range=TINY_INT_RANGE)
    model.train()
    x = torch.randn(2, 3, 64, 64)
    target = crack_target(2, 64, 64)
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}

    tf = TensorFile()
    add_state_dict(tf, model, weight_dtype="F16")
    tf.add("input", nhwc(x))
    tf.add("target", nhwc(target))

    opt = torch.optim.AdamW(model.parameters(), **ADAMW)
    losses = []
    for step in range(1, 4):
        opt.zero_grad()
        logits, loss = model_loss(model, x, target)
        loss.backward()
        losses.append(loss.item())
        if step == 1:
            tf.add("logits", nhwc(logits))
            tf.add("loss", loss.reshape(1))
            for name, p in model.named_parameters():
                tf.add("grad." + name, p.grad)
            zero_grad = zero_grad_params(model)
        opt.step()
    for step, value in enumerate(losses, 1):
        tf.add(f"loss.step{step}", torch.tensor([value]))
    delta_error = add_step3(tf, model, initial)

    meta = file_metadata(CONFIG_TINY)
    meta["zero_grad_params"] = json.dumps(zero_grad)
    size = write_file(os.path.join(outdir, "segformer_tiny.safetensors.gz"), tf, meta,
                      compress=True)
    stale = os.path.join(outdir, "segformer_tiny.safetensors")  # the pre-gzip name
    if os.path.exists(stale):
        os.remove(stale)
    return size, dict(params=n_params(model), target_ones=target.mean().item(), losses=losses,
                      zero_grad=zero_grad, delta_error=delta_error)


def add_step3(tf, model, initial):
    """The state after the optimiser steps, in state_dict order: every
    parameter as `step3_delta.<name>` = now - initial (float64 difference of
    the float32 values, rounded once to F16), the BatchNorm buffers as
    `step3.<name>` (F32; num_batches_tracked I64). Three Adam steps move a
    weight by ~3·lr, where F16 resolves ~1e-6, so initial + delta is the
    parameter to well inside the C test's atol 1e-5 at a quarter of the
    size of F32 values. Returns the largest |initial + delta - now|."""
    params = dict(model.named_parameters())
    error = 0.0
    for name, t in model.state_dict().items():
        if name not in params:
            tf.add("step3." + name, t, "I64" if t.dtype == torch.int64 else "F32")
            continue
        now, before = t.double().numpy(), initial[name].double().numpy()
        delta = (now - before).astype(np.float16)  # one rounding, float64 -> F16
        tf.add("step3_delta." + name, delta, "F16")
        error = max(error, float(np.abs(before + delta.astype(np.float64) - now).max()))
    return error


def zero_grad_params(model):
    """Parameters whose gradient is zero in exact arithmetic, so what PyTorch
    stores is rounding noise (~1e-9, against ~1e-1 for the largest): the key
    biases (softmax ignores a shift shared by all keys) and everything that
    only shifts a channel of the train-mode BatchNorm's input, which
    subtracts the batch mean (decode_head.linear_c.*.proj.bias and the last
    stage's encoder layer_norm bias). AdamW turns that noise into steps of
    up to ~lr, so their step3_delta values cannot be reproduced either."""
    largest = max(p.grad.abs().max().item() for p in model.parameters())
    return [n for n, p in model.named_parameters() if p.grad.abs().max().item() < 1e-6 * largest]


# ---------------------------------------------------------------------------
# File 3: segformer_mitb0.safetensors.gz — a full-size checkpoint, eval mode
# ---------------------------------------------------------------------------

# Weights = power of two × integer in [-2, 2]. [-7, 7] gave 2.45 MB gzipped,
# [-3, 3] 1.82 MB, [-2, 2] 1.52 MB (needed to fit the 5 MB fixture budget
# next to the tiny file), and the weights are no less random for the C side.
MITB0_INT_RANGE = 2


def make_mitb0(outdir):
    torch.manual_seed(2001)
    model = SegformerForSemanticSegmentation(CONFIG_MITB0)
    init_segformer(model, int_range=MITB0_INT_RANGE)
    bn = model.decode_head.batch_norm
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features) * 0.1)
        bn.running_var.copy_(torch.rand(bn.num_features) + 0.5)
    model.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        logits = model(x)

    tf = TensorFile()
    add_state_dict(tf, model, weight_dtype="F16")
    tf.add("input", nhwc(x))
    tf.add("logits", nhwc(logits))
    size = write_file(os.path.join(outdir, "segformer_mitb0.safetensors.gz"), tf,
                      file_metadata(CONFIG_MITB0), compress=True)
    return size, dict(params=n_params(model), logits_std=logits.std().item())


# ---------------------------------------------------------------------------

def file_metadata(config=None):
    meta = {"source": "tests/parity/make_fixtures.py", "torch": torch.__version__}
    if config is not None:
        meta["config"] = json.dumps(config)
    return meta


def main(argv):
    if len(argv) != 2:
        sys.exit(f"usage: {argv[0]} OUTDIR")
    outdir = argv[1]
    os.makedirs(outdir, exist_ok=True)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)

    sizes = {"layers.safetensors": make_layers(outdir)}
    sizes["segformer_tiny.safetensors.gz"], tiny = make_tiny(outdir)
    sizes["segformer_mitb0.safetensors.gz"], mitb0 = make_mitb0(outdir)

    for name, size in sizes.items():
        print(f"{name:34s} {size / 1e6:7.3f} MB")
    print(f"{'total':34s} {sum(sizes.values()) / 1e6:7.3f} MB")
    print(f"tiny: {tiny['params']} parameters, target {100 * tiny['target_ones']:.1f}% ones, "
          f"losses {', '.join(f'{v:.6f}' for v in tiny['losses'])}")
    print(f"tiny: gradients that are rounding noise: {', '.join(tiny['zero_grad'])}")
    print(f"tiny: step3_delta F16 rounding, largest error on a parameter "
          f"{tiny['delta_error']:.2e}")
    print(f"mit-b0: {mitb0['params']} parameters, eval logits std {mitb0['logits_std']:.3f}")


if __name__ == "__main__":
    main(sys.argv)
