#!/usr/bin/python3
"""fisher_reference.py — an independent NumPy/PyTorch reference of
FisherAdapTune (/work/shared/FISHERADAPTUNE.md) and the golden files that
prove lib/drift.c and the engine's Fisher statistics against it.

    /usr/bin/python3 tests/parity/fisher_reference.py OUTDIR     (make fixtures runs it)

Written from the method page, not from any C code. What it implements, by
section of the page:

  §1  FisherHooks: forward/backward hooks on segformer_torch's model that
      record the per-batch H_new (layer input) and S_new (gradient w.r.t.
      the layer output) of every Linear, Conv2d, BatchNorm2d and LayerNorm,
      with exactly the page's formulas and divisors; reference_fisher() and
      chunk_fisher() turn them into the Fisher of a chunk ("reference"
      estimator: H = 0.2 + 0.8·H_new, S = 0.2 + 0.8·S_new in float32).
  §2  chunk_ranges(): row/column blocks, floor(linspace) edges, keys.
  §3  js_distance(): the Jensen–Shannon distance, log and raw modes.
  §4  ChunkDrift: one chunk's drift state.
  §5  freeze_decide(): the freezing rule.
  §6  run_tracker(): the order of a step (step-0 zero freeze, drift update
      on ema_interval, decision on freeze_interval).

and writes three golden files into OUTDIR:

  fisher_js.safetensors.gz       JS distances of 239 (ref, cur) float32 pairs
  fisher_tracker.safetensors.gz  a 60-step trajectory of real chunk Fishers and
                                 the tracker's every output under two configs
  fisher_hooks.safetensors.gz    H_new, S_new of every tracked layer of the
                                 `tiny` fixture model for one training batch
                                 (read from segformer_tiny.safetensors.gz in
                                 OUTDIR, else in tests/parity/fixtures)

Determinism. Fixed seeds, one thread; and the logarithms are libm's
(math.log10 / math.log element by element), not np.log10 / np.log: numpy
1.24 dispatches those to AVX-512 (SVML) kernels that differ from libm in
the last bit for ~6 % of float64 inputs on a machine that has AVX-512, so
np.log10 would make the golden values depend on the CPU that wrote them, and
the C side (which calls libm's log10) could never match it bit for bit.
One ulp on a log value matters here: it moves a percentile, hence a bin edge,
hence a count. Everything else is numpy's own code: np.percentile (default
'linear'), np.linspace, np.histogram with an edges array, np.mean, np.std.

Non-finite inputs, which the page leaves open, are defined (and labelled
"non-finite" in fisher_js.safetensors.gz): in log mode a NaN means no
distance, "use the min/max" means of the finite values (so infinite values
fall outside the bins), and no finite value at all means no distance. See
tests/parity/README.md.
"""

import gzip
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import make_fixtures
from make_fixtures import ADAMW, TensorFile, crack_target, init_segformer, read_safetensors
from segformer_torch import CONFIG_TINY, SegformerForSemanticSegmentation, model_loss

# make_fixtures' writer knows F32/F16/I64; the golden distances are F64.
make_fixtures.NP_DTYPES.setdefault("F64", np.dtype("<f8"))

EPS = 1e-12        # §3: log10(|x| + 1e-12), counts + 1e-12, clip at 1e-12
BINS = 64          # §3: 64 equal-width bins
LOG_MIN_SPAN = 1e-3   # §3 log mode: high <= low -> high = low + 1e-3
RAW_MIN_SPAN = 1e-12  # §3 raw mode: high == low -> high = low + 1e-12

# How tests/unit/test_drift.c compares a distance d with the golden value:
# |Δd| <= JS_ATOL, or |Δ(d²)| <= JS_ATOL_SQUARED. The second rule is for
# distances that are rounding noise: when p and q agree to ~1e-16 (identical
# histograms of different sample sizes) the divergence d² is a cancellation
# of O(1e-12) terms that float64 resolves to ~1e-16, and sqrt turns that into
# d ~ 1e-8 — summation order alone moves it between 0 and 1.05e-8
# ("all zeros 10/7"). Over every case here, sequential, pairwise (numpy) and
# exact (fsum) summation give d² within 1.7e-15 of each other.
JS_ATOL = 1e-9
JS_ATOL_SQUARED = 1e-14


# ---------------------------------------------------------------------------
# §2 Parameter groups ("chunks")
# ---------------------------------------------------------------------------

def block_edges(axis_size, slice_blocks):
    """n = min(slice_blocks, axis_size) blocks with edges
    floor(linspace(0, axis_size, n + 1)); empty blocks dropped.
    Returns [(begin, end), ...]."""
    n = min(slice_blocks, axis_size)
    if n <= 0:
        return []
    edges = np.floor(np.linspace(0, axis_size, n + 1)).astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def chunk_ranges(name, shape, slice_mode="row", slice_blocks=4, fused_qkv=False):
    """The chunks of one trainable tensor: [(key, axis, begin, end), ...].
    Row mode cuts axis 0; column mode axis 1 (a 1-D tensor is one whole
    chunk, axis None). A fused qkv projection (fused_qkv, rows divisible by
    3) is first split into q, k, v row ranges; its keys are
    `<layer>.<q|k|v>.<kind>.block<i>` where name = `<layer>.<kind>`."""
    shape = tuple(shape)
    kind = "rowblock" if slice_mode == "row" else "colblock"
    if slice_mode == "row":
        axis = 0
    elif slice_mode == "column":
        if len(shape) < 2:
            return [(f"{name}.{kind}0", None, 0, int(np.prod(shape, dtype=np.int64)))]
        axis = 1
    else:
        raise ValueError(f"slice_mode {slice_mode!r}")
    if fused_qkv and shape[0] % 3 == 0:
        layer, param = name.rsplit(".", 1)
        third = shape[0] // 3
        out = []
        for part, base in zip("qkv", (0, third, 2 * third)):
            sub = (third,) + shape[1:]
            size = sub[axis]
            for i, (a, b) in enumerate(block_edges(size, slice_blocks)):
                off = base if axis == 0 else 0
                out.append((f"{layer}.{part}.{param}.block{i}", axis, off + a, off + b))
        return out
    return [(f"{name}.{kind}{i}", axis, a, b)
            for i, (a, b) in enumerate(block_edges(shape[axis], slice_blocks))]


# ---------------------------------------------------------------------------
# §3 Jensen–Shannon distance between Fisher distributions
# ---------------------------------------------------------------------------

def _log10(x):
    """libm's log10 element by element (see the module docstring: not np.log10)."""
    return np.fromiter(map(math.log10, x), np.float64, count=x.size)


def _ln(x):
    return np.fromiter(map(math.log, x), np.float64, count=x.size)


def histogram(x, low, high):
    """64 bins, edges np.linspace(low, high, 65); np.histogram with the edges
    array: [e_i, e_i+1) and the last bin closed, outside values dropped."""
    edges = np.linspace(low, high, BINS + 1)
    counts, _ = np.histogram(x, bins=edges)
    return counts


def _distribution(counts):
    """Steps 4-5: counts + 1e-12, normalised; clipped below at 1e-12 and
    renormalised. Sums are math.fsum (correctly rounded), so the reference
    does not depend on a summation order; see JS_ATOL_SQUARED below."""
    h = counts.astype(np.float64) + EPS
    h = h / math.fsum(h)
    h = np.clip(h, EPS, None)
    return h / math.fsum(h)


def _kl(p, m):
    return math.fsum(p * _ln(p / m))


def js_from_counts(counts_p, counts_q):
    p, q = _distribution(counts_p), _distribution(counts_q)
    m = (p + q) / 2
    return math.sqrt(max(0.0, 0.5 * _kl(p, m) + 0.5 * _kl(q, m)))


def js_range(ref, cur, mode="log"):
    """(a, b, low, high): the values histogrammed for each side and the bin
    range, or None when there is no distance. ref, cur: float32 arrays."""
    ref = np.asarray(ref, np.float32).ravel().astype(np.float64)
    cur = np.asarray(cur, np.float32).ravel().astype(np.float64)
    if ref.size == 0 or cur.size == 0:
        return None
    if mode == "log":
        a, b = _log10(np.abs(ref) + EPS), _log10(np.abs(cur) + EPS)
        both = np.concatenate([a, b])
        # Non-finite Fisher values, which the page leaves open (it zeroes NaN
        # before any distance is taken, so only an overflow to inf reaches
        # here), are defined as: a NaN means no distance; "use the min/max"
        # means of the finite values, so infinite values fall outside the
        # bins and are not counted; no finite value at all, no distance.
        finite = both[np.isfinite(both)]
        if np.isnan(both).any() or finite.size == 0:
            return None
        low, high = (float(v) for v in np.percentile(both, [1, 99]))
        if not math.isfinite(low):
            low = float(finite.min())
        if not math.isfinite(high):
            high = float(finite.max())
        if high <= low:
            high = low + LOG_MIN_SPAN
    elif mode == "raw":
        a, b = np.abs(ref), np.abs(cur)
        both = np.concatenate([a, b])
        finite = both[np.isfinite(both)]
        if finite.size == 0:
            return None
        low, high = float(finite.min()), float(finite.max())
        if high == low:
            high = low + RAW_MIN_SPAN
    else:
        raise ValueError(f"js mode {mode!r}")
    return a, b, low, high


def js_distance(ref, cur, mode="log"):
    """§3. NaN when there is no distance (an empty side; raw: no finite value)."""
    with np.errstate(invalid="ignore"):  # inf - inf inside np.percentile
        return _js_distance(ref, cur, mode)


def _js_distance(ref, cur, mode):
    r = js_range(ref, cur, mode)
    if r is None:
        return math.nan
    a, b, low, high = r
    return js_from_counts(histogram(a, low, high), histogram(b, low, high))


# ---------------------------------------------------------------------------
# §4 Tracking, §5 freezing, §6 the order within a step
# ---------------------------------------------------------------------------

class DriftConfig:
    def __init__(self, js_mode="log", metric="total_variation", fisher_ema_interval=1,
                 freeze_interval=300, js_variance_lambda=1.0, fisher_ema_decay=0.9,
                 prev_js_ema_decay=0.9):
        self.js_mode = js_mode
        self.metric = metric
        self.fisher_ema_interval = fisher_ema_interval
        self.freeze_interval = freeze_interval
        self.js_variance_lambda = js_variance_lambda
        self.fisher_ema_decay = fisher_ema_decay
        self.prev_js_ema_decay = prev_js_ema_decay

    def as_dict(self):
        return dict(self.__dict__)


class ChunkDrift:
    """§4: one live chunk's state. ema_F float32; everything else float64."""

    def __init__(self):
        self.ema_F = None
        self.js_ema = 0.0
        self.total_variation = 0.0
        self.js_sum = 0.0
        self.js_count = 0
        self.history = []  # [(step, js_ema)]

    def update(self, cur, step, cfg):
        """Measures the chunk; returns js (0 for the first measurement)."""
        cur = np.asarray(cur, np.float32)
        if self.ema_F is None:
            self.ema_F = cur.copy()
            self.js_ema = 0.0
            self.history.append((step, 0.0))
            self.total_variation = 0.0
            self.js_sum = 0.0
            self.js_count = 1
            return 0.0
        js = js_distance(self.ema_F, cur, cfg.js_mode)   # against the EMA before updating
        d = np.float32(cfg.fisher_ema_decay)              # f32(d)
        c = np.float32(1.0 - cfg.fisher_ema_decay)        # f32(1 - d), 1 - d in double
        self.ema_F = d * self.ema_F + c * cur             # every op float32
        assert self.ema_F.dtype == np.float32
        e = cfg.prev_js_ema_decay
        self.js_ema = e * self.js_ema + (1 - e) * js
        self.total_variation += abs(self.js_ema - self.history[-1][1])
        self.history.append((step, self.js_ema))
        self.js_sum += self.js_ema
        self.js_count += 1
        return js

    def score(self, metric):
        if metric == "total_variation":
            return self.total_variation
        if metric == "mean_js":
            return self.js_sum / self.js_count
        raise ValueError(f"metric {metric!r}")


def freeze_decide(scores, lam):
    """§5: keep score >= mean + lam·std (population std); if none, keep the
    first highest. Returns (keep bool array, mean, std, threshold)."""
    s = np.asarray(scores, np.float64)
    mean, std = float(np.mean(s)), float(np.std(s))
    threshold = mean + lam * std
    keep = s >= threshold
    if not keep.any():
        keep[int(np.argmax(s))] = True
    return keep, mean, std, threshold


def run_tracker(fishers, cfg):
    """§6 over a trajectory. fishers: K float32 arrays (T, n_k), the chunks'
    Fishers at every step. Returns the per-step, per-chunk record."""
    K, T = len(fishers), fishers[0].shape[0]
    rec = dict(js=np.full((T, K), np.nan), js_ema=np.full((T, K), np.nan),
               total_variation=np.full((T, K), np.nan),
               live=np.zeros((T, K), np.int64), decisions=[], decision_frozen=[],
               decision_scores=[])
    state = [ChunkDrift() for _ in range(K)]
    live = np.ones(K, bool)
    for step in range(T):
        # (Fisher statistics of this step: given.) Step 0: zero-Fisher freeze.
        if step == 0:
            for k in range(K):
                if not np.any(fishers[k][0] != 0):
                    live[k], state[k] = False, None
        if step % cfg.fisher_ema_interval == 0:
            for k in np.flatnonzero(live):
                js = state[k].update(fishers[k][step], step, cfg)
                rec["js"][step, k] = js
                rec["js_ema"][step, k] = state[k].js_ema
                rec["total_variation"][step, k] = state[k].total_variation
        if step > 0 and step % cfg.freeze_interval == 0 and live.any():
            idx = np.flatnonzero(live)
            scores = [state[k].score(cfg.metric) for k in idx]
            keep, mean, std, threshold = freeze_decide(scores, cfg.js_variance_lambda)
            frozen = np.zeros(K, np.int64)
            row_scores = np.full(K, np.nan)
            for k, kept, s in zip(idx, keep, scores):
                row_scores[k] = s
                if not kept:
                    live[k], state[k], frozen[k] = False, None, 1
            rec["decisions"].append([step, mean, std, cfg.js_variance_lambda, threshold,
                                     int(frozen.sum())])
            rec["decision_frozen"].append(frozen)
            rec["decision_scores"].append(row_scores)
        rec["live"][step] = live
    rec["final_ema_F"] = {k: state[k].ema_F for k in range(K) if live[k]}
    return rec


# ---------------------------------------------------------------------------
# §1 Fisher statistics: hooks on the PyTorch model
# ---------------------------------------------------------------------------

TRACKED = ((nn.Linear, "linear"), (nn.Conv2d, "conv"), (nn.BatchNorm2d, "batchnorm"),
           (nn.LayerNorm, "layernorm"))


def layer_class(module):
    for cls, name in TRACKED:
        if isinstance(module, cls):
            return name
    return None


def h_linear(h, bias):
    """Linear: rows = every leading dim; h̄ = [h, 1] with a bias."""
    h = h.reshape(-1, h.shape[-1])
    rows = h.shape[0]
    H = (h * h).sum(0) / rows
    if bias:
        H = torch.cat([H, H.new_tensor([rows / rows])])  # Σ 1² / rows
    return H


def s_linear(s):
    s = s.reshape(-1, s.shape[-1])
    return (s * s).sum(0) / s.shape[0]


def h_conv(h, conv):
    """Conv2d: im2col rows per (batch, group, position), columns (cin in the
    group, kh, kw) + a 1 column with a bias; all groups share one H.
    Divisor B·P·K with a bias, B without (the reference's)."""
    B, G = h.shape[0], conv.groups
    cols = F.unfold(h, conv.kernel_size, dilation=conv.dilation, padding=conv.padding,
                    stride=conv.stride)                       # (B, Cin·kh·kw, P), c-major
    P = cols.shape[2]
    K = h.shape[1] // G * conv.kernel_size[0] * conv.kernel_size[1]
    sq = (cols * cols).reshape(B, G, K, P).sum(dim=(0, 1, 3))  # (K)
    if conv.bias is None:
        return sq / B
    rows = B * G * P                                          # Σ 1² over the rows
    return torch.cat([sq, sq.new_tensor([rows])]) / (B * P * K)


def s_conv(s):
    B, P = s.shape[0], s.shape[2] * s.shape[3]
    return (s * s).sum(dim=(0, 2, 3)) / (B * P)


def h_batchnorm(h):
    B, C, P = h.shape[0], h.shape[1], h.shape[2] * h.shape[3]
    u = h.sum(dim=(0, 2, 3)) / P ** 2                         # (C)
    return torch.stack([(u * u).sum() / B ** 2, u.new_tensor(C / B ** 2)])


def s_batchnorm(s):
    return s.sum(dim=(0, 2, 3)) ** 2 / s.shape[0]


def h_layernorm(h):
    """(B, N, C): u[n] reduces over every axis but the token axis 1."""
    B, N, C = h.shape
    u = h.sum(dim=(0, 2)) / C ** 2                            # (N)
    return torch.stack([(u * u).sum() / B ** 2, u.new_tensor(N / B ** 2)])


def s_layernorm(s):
    return s.sum(dim=(0, 1)) ** 2 / s.shape[0]


class FisherHooks:
    """Records H_new and S_new (float64 sums, float32 results) of every
    tracked layer for each training batch. H comes from the forward hook's
    input; S from a tensor hook on the layer's output, which receives
    dLoss/d(output) — the full gradient even when the output is used twice.
    Call clear() before each forward."""

    def __init__(self, model):
        self.model = model
        self.layers = []        # [(name, class)] in forward order
        self.H, self.S = {}, {}
        self.handles = []
        for name, m in model.named_modules():
            cls = layer_class(m)
            if cls is not None:
                self.handles.append(m.register_forward_hook(self._forward(name, m, cls)))

    def clear(self):
        self.H, self.S = {}, {}

    def _forward(self, name, module, cls):
        def hook(mod, inputs, output):
            if not mod.training:
                return  # §1: statistics only while training
            if name in self.H:
                raise RuntimeError(f"{name} called twice in one forward")
            if name not in (n for n, _ in self.layers):
                self.layers.append((name, cls))
            h = inputs[0].detach().double()
            if cls == "linear":
                H = h_linear(h, mod.bias is not None)
            elif cls == "conv":
                H = h_conv(h, mod)
            elif cls == "batchnorm":
                H = h_batchnorm(h)
            else:
                if h.dim() != 3:
                    raise RuntimeError(f"{name}: LayerNorm input {tuple(h.shape)} is not (B, N, C)")
                H = h_layernorm(h)
            self.H[name] = H.float().numpy()

            def grad_hook(g):
                g = g.detach().double()
                S = {"linear": s_linear, "conv": s_conv, "batchnorm": s_batchnorm,
                     "layernorm": s_layernorm}[cls](g)
                self.S[name] = S.float().numpy()
            output.register_hook(grad_hook)
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def reference_fisher(H_new, S_new, gammas=(0.8, 0.8)):
    """The "reference" estimator: run = ones, run = run·(1 − g0) + new·g1,
    in float32: H = 0.2 + 0.8·H_new, S = 0.2 + 0.8·S_new, no memory."""
    g0, g1 = gammas
    def est(new):
        return (np.float32(1.0) * np.float32(1.0 - g0)
                + np.asarray(new, np.float32) * np.float32(g1)).astype(np.float32)
    return est(H_new), est(S_new)


def chunk_fisher(cls, kind, H, S, weight_shape, begin, end):
    """Fisher of rows [begin, end) of a layer's weight or bias (row mode),
    flattened row-major: weight (o, j) = S[o]·H[j]; bias o = S[o]·H[last];
    BatchNorm/LayerNorm weight c = S[c]·H[0], bias c = S[c]·H[1]. float32;
    NaN -> 0, absolute value."""
    S_rows = S[begin:end]
    if cls in ("batchnorm", "layernorm"):
        f = S_rows * (H[0] if kind == "weight" else H[1])
    elif kind == "bias":
        f = S_rows * H[-1]
    else:
        cols = int(np.prod(weight_shape[1:]))
        f = (S_rows[:, None] * H[None, :cols]).ravel()
    f = np.asarray(f, np.float32)
    return np.abs(np.where(np.isnan(f), np.float32(0), f)).astype(np.float32)


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------

def write(path, tf, metadata, compress=False):
    """make_fixtures' format, checked by reading back byte for byte (NaN-safe,
    unlike np.array_equal). Returns the size on disk."""
    blob = tf.to_bytes(metadata)
    payload = blob
    if compress:
        import io
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
            gz.write(blob)
        payload = buf.getvalue()
    with open(path, "wb") as f:
        f.write(payload)
    with open(path, "rb") as f:
        raw = f.read()
    back, meta = read_safetensors(gzip.decompress(raw) if compress else raw)
    assert list(back) == list(tf.tensors), path
    for name, arr in tf.tensors.items():
        assert back[name].dtype == arr.dtype and back[name].shape == arr.shape, name
        assert back[name].tobytes() == arr.tobytes(), name
    assert meta == {str(k): str(v) for k, v in metadata.items()}
    return len(payload)


def file_metadata():
    return {"source": "tests/parity/fisher_reference.py", "torch": torch.__version__,
            "numpy": np.__version__}


# ---------------------------------------------------------------------------
# File 1: fisher_js.safetensors.gz
# ---------------------------------------------------------------------------

def f32(x):
    return np.asarray(x, np.float32).ravel()


def js_cases():
    """[(what, ref, cur)], float32. Deterministic."""
    rng = np.random.default_rng(4242)
    cases = []

    def add(what, ref, cur):
        cases.append((what, f32(ref), f32(cur)))

    def fisher_like(n, sigma=2.0, mu=-6.0):
        return np.exp(rng.normal(mu, sigma, n)).astype(np.float32)

    # Empty sides: no distance.
    add("empty: both sides", [], [])
    add("empty: ref", [], fisher_like(3))
    add("empty: cur", fisher_like(4), [])

    # Tiny and odd sizes, Fisher-like (log-normal) values.
    for nr, nc in [(1, 1), (1, 2), (2, 1), (2, 2), (3, 3), (1, 3), (3, 1), (2, 3), (3, 2),
                   (5, 5), (7, 3), (3, 7), (9, 11), (13, 13), (17, 4), (4, 17), (31, 33),
                   (63, 65), (64, 64), (65, 63), (99, 101), (101, 101), (127, 129), (1, 100),
                   (100, 1), (151, 149), (255, 257)]:
        for rep in range(2):
            add(f"log-normal sizes {nr}/{nc} #{rep}", fisher_like(nr), fisher_like(nc))

    # Percentile interpolation: combined n with (n−1)·q landing exactly on
    # t = 0.5 (n = 51, 151), just around it, and on order statistics (n = 101).
    for nr, nc in [(25, 26), (75, 76), (50, 51), (51, 51), (26, 26), (100, 101), (60, 41)]:
        add(f"percentile position: combined n={nr + nc}", fisher_like(nr, 3.0),
            fisher_like(nc, 3.0))
    # ... with ties so a == b at the interpolation (and t ≥ 0.5 branch).
    for n in (51, 151):
        base = np.repeat(fisher_like(5), (n + 4) // 5)[:n]
        add(f"percentile with ties: combined n={2 * n}", base, np.roll(base, 3) * 2)

    # Near-identical distributions: small drift, as between a chunk's EMA and now.
    for n, noise in [(16, 1e-3), (64, 1e-2), (64, 1e-1), (256, 1e-2), (256, 0.3), (1000, 0.05),
                     (147, 1e-6), (588, 1e-2)]:
        ref = fisher_like(n)
        cur = (ref * (1 + noise * rng.standard_normal(n))).astype(np.float32)
        add(f"drift n={n} relative noise {noise:g}", ref, cur)

    # The reference estimator's shape: S·H with S ≈ 0.2 and H = 0.2 + 0.8·H_new,
    # rows repeat the same H (many ties).
    for rows, cols in [(4, 16), (16, 9), (4, 64), (1, 64), (16, 16)]:
        Hn = (rng.chisquare(1, cols) * 10.0 ** rng.uniform(-3, 1)).astype(np.float32)
        H = np.float32(0.2) + np.float32(0.8) * Hn
        S = np.full(rows, 0.2, np.float32)
        ref = (S[:, None] * H[None, :]).ravel()
        Hn2 = (Hn * (1 + 0.1 * rng.standard_normal(cols))).astype(np.float32)
        cur = (S[:, None] * (np.float32(0.2) + np.float32(0.8) * Hn2)[None, :]).ravel()
        add(f"reference-estimator S·H {rows}x{cols}", ref, cur)

    # Constants.
    for c in (0.0, 1e-30, 1e-12, 0.2, 1.0, 3.0, 16384.0, 1e5, 1e30, 3.4e38):
        add(f"constant {c:g} both", np.full(7, c), np.full(5, c))
    for a, b in [(1.0, 2.0), (0.2, np.nextafter(np.float32(0.2), np.float32(1))),
                 (1e5, 2e5), (1e-20, 1e20), (0.0, 1e-12), (0.0, 1.0), (3.0, 3.5)]:
        add(f"constant {a:g} vs constant {b:.9g}", np.full(6, a), np.full(6, b))

    # Zeros.
    add("all zeros 10/7", np.zeros(10), np.zeros(7))
    add("all zeros 1/1", [0.0], [0.0])
    add("zeros vs log-normal", np.zeros(10), fisher_like(10))
    add("log-normal vs zeros", fisher_like(12), np.zeros(9))
    z = fisher_like(100)
    z[rng.random(100) < 0.9] = 0
    add("90% zeros vs 50% zeros", z, np.where(rng.random(100) < 0.5, 0, fisher_like(100)))
    add("negative zero vs zero", -np.zeros(5), np.zeros(5))

    # Identical arrays: distance exactly 0.
    for n in (1, 2, 10, 1000):
        x = fisher_like(n)
        add(f"identical n={n}", x, x.copy())
    x = np.repeat(fisher_like(4), 8)
    add("identical with ties n=32", x, x.copy())
    add("identical up to order n=50", (x := fisher_like(50)), x[::-1].copy())

    # Huge dynamic range and denormals.
    for n in (10, 100, 500):
        add(f"range 1e-30..1e30 n={n}", 10.0 ** rng.uniform(-30, 30, n),
            10.0 ** rng.uniform(-30, 30, n))
    add("range 1e-38..3e38 vs 1e-3..1e3", 10.0 ** rng.uniform(-38, 38.5, 200),
        10.0 ** rng.uniform(-3, 3, 150))
    den = np.array([1e-45, 3e-45, 1e-42, 1e-40, 1e-39, 1.1e-38], np.float32)
    add("denormals vs denormals", den, den[::-1] * 2)
    add("denormals vs zeros", den, np.zeros(6))
    add("denormals vs 1e-10", den, np.full(4, 1e-10))
    add("denormals mixed into log-normal", np.concatenate([den, fisher_like(30)]),
        np.concatenate([fisher_like(30), den[:3]]))
    add("smallest denormal vs zero", [1e-45], [0.0])
    add("float32 max vs 1", [3.4028235e38, 1.0], [1.0, 3.4028235e38, 3.4028235e38])

    # Negative values: abs is taken.
    x = fisher_like(40)
    add("negated copy (abs makes it identical)", x, -x)
    add("mixed signs vs positive", x * np.where(rng.random(40) < 0.5, -1, 1), fisher_like(40))
    add("all negative normal", rng.normal(-1, 0.1, 30), rng.normal(-1.2, 0.1, 30))
    add("signed normal vs signed normal", rng.standard_normal(80), 2 * rng.standard_normal(60))

    # Values exactly on bin edges.
    ints = np.arange(65, dtype=np.float32)
    add("raw edges: 0..64 (every integer is an edge)", ints, ints[::2])
    add("raw edges: 0..64 repeated vs 0 and 64", np.tile(ints, 3), [0, 64, 64, 32])
    grid = np.float32(1) + np.arange(65, dtype=np.float32) / np.float32(32)  # 1 + i/32, range 1..3
    add("raw edges: 1 + i/32 on [1, 3]", grid, grid[::3])
    add("raw edges: neighbours of edges",
        np.concatenate([[0, 64], np.nextafter(ints[1:64], np.float32(100))]),
        np.concatenate([[0, 64], np.nextafter(ints[1:64], np.float32(-100))]))
    pw = np.array([1e5, 1e6, 1e7, 1e8, 1e9], np.float32)  # log10 exactly 5..9
    # Percentiles exactly 5 and 9 (enough copies at both ends); edges 5 + i/16,
    # so 6, 7, 8 sit exactly on edges 16, 32, 48 and 9 on the closed last edge.
    add("log edges: 1e5..1e9 (6, 7, 8 on edges)", np.concatenate([np.repeat(pw[:1], 4), pw[1:4],
                                                                 np.repeat(pw[4:], 4)]),
        np.concatenate([np.repeat(pw[:1], 3), pw[1:4], pw[1:4], np.repeat(pw[4:], 3)]))
    add("log edges: with 1e4 and 1e10 outside", np.concatenate([[1e4], np.repeat(pw, 30)]),
        np.concatenate([np.repeat(pw, 20), [1e10, 1e10]]))
    add("log: zeros at the low edge", np.concatenate([np.zeros(50), np.full(50, 1e4)]),
        np.concatenate([np.zeros(20), np.full(80, 1e4)]))

    # Different lengths.
    add("lengths 10 vs 1000", fisher_like(10), fisher_like(1000))
    add("lengths 1000 vs 10", fisher_like(1000), fisher_like(10))
    add("lengths 3 vs 300", fisher_like(3), fisher_like(300, 1.0))
    add("lengths 1 vs 64", [0.01], fisher_like(64))

    # Non-finite values. Percentiles stay finite when inf/NaN are rare and
    # far from the interpolation points; then inf/NaN are simply dropped by
    # the histogram (above the last edge). Raw mode bins over finite values.
    x = fisher_like(300)
    y = fisher_like(300)
    xi = x.copy(); xi[17] = np.inf
    add("one +inf in 300 (percentiles finite)", xi, y)
    xi2 = x.copy(); xi2[5] = -np.inf
    add("one -inf in 300 (abs: +inf)", y, xi2)
    xn = y.copy(); xn[100] = np.nan
    add("non-finite: one NaN in 300 (log: percentiles NaN -> min/max NaN)", x, xn)
    add("non-finite: inf at the 99th percentile", np.concatenate([x[:20], [np.inf] * 3]),
        x[20:40])
    add("non-finite: all +inf", np.full(3, np.inf), np.full(2, np.inf))
    add("non-finite: inf vs finite", np.full(3, np.inf), [1.0, 2.0])
    add("non-finite: NaN vs NaN", [np.nan, np.nan], [np.nan])
    add("non-finite: NaN and inf", [np.nan, 1.0, np.inf], [2.0, np.inf])

    # Random mixtures to fill the table: every size class, several shapes.
    sizes = [1, 2, 3, 4, 5, 7, 8, 11, 16, 19, 32, 37, 64, 97, 128, 201]
    kinds = ["log-normal", "uniform", "exponential", "with zeros", "two modes", "integers"]
    while len(cases) < 236:
        nr, nc = (int(s) for s in rng.choice(sizes, 2))
        kind = kinds[len(cases) % len(kinds)]

        def draw(n):
            if kind == "log-normal":
                return fisher_like(n, rng.uniform(0.1, 4.0), rng.uniform(-20, 5))
            if kind == "uniform":
                return rng.uniform(0, rng.uniform(1e-6, 10), n)
            if kind == "exponential":
                return rng.exponential(rng.uniform(1e-3, 1), n)
            if kind == "with zeros":
                v = fisher_like(n)
                v[rng.random(n) < rng.uniform(0, 1)] = 0
                return v
            if kind == "two modes":
                return np.where(rng.random(n) < 0.5, fisher_like(n, 0.5, -10),
                                fisher_like(n, 0.5, -2))
            return rng.integers(0, 8, n).astype(np.float32)  # many ties
        add(f"random {kind} {nr}/{nc}", draw(nr), draw(nc))

    # A few large ones: a log-normal drift, and a real-looking sr-conv row
    # block under the reference estimator (16 rows × 1024, S = 0.2 in every
    # row but one, so rows repeat) against the same block a step later.
    big = fisher_like(4000)
    add("large 4000/4000 drift", big,
        (big * (1 + 0.05 * rng.standard_normal(4000))).astype(np.float32))
    Hn = (rng.chisquare(1, 1024) * 0.5).astype(np.float32)
    S = np.full(16, 0.2, np.float32)
    S[5] = np.float32(0.2) + np.float32(0.8) * np.float32(3e-7)
    H = np.float32(0.2) + np.float32(0.8) * Hn
    Hn2 = (Hn * (1 + 0.05 * rng.standard_normal(1024))).astype(np.float32)
    H2 = np.float32(0.2) + np.float32(0.8) * Hn2
    add("large 16384/16384 reference-estimator S·H 16x1024", (S[:, None] * H).ravel(),
        (S[:, None] * H2).ravel())
    big = fisher_like(6000, 1.5)
    big[rng.random(6000) < 0.1] = 0
    add("large 6000/2001 with zeros", big, fisher_like(2001, 2.5, -5))
    return cases


def make_js(outdir):
    tf = TensorFile()
    cases = js_cases()
    meta = file_metadata()
    dist = np.empty((len(cases), 2))
    for i, (what, ref, cur) in enumerate(cases):
        tf.add(f"js.{i}.ref", ref)
        tf.add(f"js.{i}.cur", cur)
        dist[i] = js_distance(ref, cur, "log"), js_distance(ref, cur, "raw")
        meta[f"js.{i}.what"] = what
    tf.add("js.distance", dist, "F64")
    meta["columns"] = json.dumps(["log", "raw"])
    # gzipped: half the size, mostly the large reference-estimator block,
    # whose rows repeat.
    size = write(os.path.join(outdir, "fisher_js.safetensors.gz"), tf, meta, compress=True)
    stale = os.path.join(outdir, "fisher_js.safetensors")
    if os.path.exists(stale):
        os.remove(stale)
    return size, dict(cases=len(cases), nan=int(np.isnan(dist).sum()),
                      elements=sum(r.size + c.size for _, r, c in cases))


# ---------------------------------------------------------------------------
# File 2: fisher_tracker.safetensors.gz
# ---------------------------------------------------------------------------

# (parameter, row block) in row mode with slice_blocks 4: every layer class,
# small chunks (the file stores each chunk's Fisher at all 60 steps).
TRACKED_CHUNKS = [
    ("segformer.encoder.patch_embeddings.0.proj.weight", 0),          # conv 7x7 s4 (patch)
    ("segformer.encoder.patch_embeddings.0.proj.bias", 2),
    ("segformer.encoder.patch_embeddings.0.layer_norm.weight", 0),    # layernorm
    ("segformer.encoder.block.0.0.attention.self.query.weight", 1),   # linear 16->16
    ("segformer.encoder.block.0.0.attention.self.query.bias", 3),
    ("segformer.encoder.block.0.0.attention.self.sr.bias", 0),        # conv 8x8 s8 (sr)
    ("segformer.encoder.block.1.0.attention.self.sr.bias", 1),        # conv 4x4 s4 (sr)
    ("segformer.encoder.block.0.0.mlp.dense1.weight", 3),             # linear 16->64
    ("segformer.encoder.block.0.0.mlp.dwconv.dwconv.weight", 0),      # depthwise conv
    ("segformer.encoder.block.0.0.mlp.dwconv.dwconv.bias", 2),
    ("segformer.encoder.block.3.0.attention.output.dense.bias", 0),   # linear 128->128
    ("segformer.encoder.block.3.0.layer_norm_2.weight", 1),
    ("segformer.encoder.layer_norm.3.bias", 3),
    ("decode_head.linear_c.0.proj.weight", 0),                        # linear 16->64
    ("decode_head.linear_c.2.proj.bias", 1),
    ("decode_head.batch_norm.weight", 0),                             # batchnorm
    ("decode_head.batch_norm.bias", 3),
    ("decode_head.classifier.weight", 0),                             # conv 1x1, 1 row
    ("decode_head.classifier.bias", 0),
]
SYNTHETIC_KEY = "synthetic.zero.rowblock0"
SYNTHETIC_N = 8
TRACKER_STEPS = 60
TRACKER_CONFIGS = {
    "a.": DriftConfig(js_mode="log", metric="total_variation", fisher_ema_interval=1,
                      freeze_interval=10, js_variance_lambda=1.0, fisher_ema_decay=0.9,
                      prev_js_ema_decay=0.9),
    "b.": DriftConfig(js_mode="raw", metric="mean_js", fisher_ema_interval=2,
                      freeze_interval=15, js_variance_lambda=0.5, fisher_ema_decay=0.9,
                      prev_js_ema_decay=0.8),
}


def chunk_specs(model):
    """[(key, module name, class, kind, weight shape, begin, end)]."""
    params = dict(model.named_parameters())
    specs = []
    for pname, block in TRACKED_CHUNKS:
        mname, kind = pname.rsplit(".", 1)
        cls = layer_class(model.get_submodule(mname))
        shape = tuple(params[pname].shape)
        key, axis, begin, end = chunk_ranges(pname, shape, "row", 4)[block]
        assert axis == 0 and key == f"{pname}.rowblock{block}"
        wshape = tuple(params[mname + ".weight"].shape)
        specs.append((key, mname, cls, kind, wshape, begin, end))
    return specs


def fisher_trajectory():
    """Trains `tiny` for 60 steps (AdamW lr 1e-3, batch 2 at 64x64, a fresh
    seeded batch every step, train mode) and returns (keys, [(T, n_k) float32])
    of the selected chunks' reference-estimator Fisher at every step, plus the
    synthetic chunk (all zero at step 0, positive afterwards)."""
    torch.manual_seed(3001)
    model = SegformerForSemanticSegmentation(CONFIG_TINY)
    init_segformer(model)
    model.train()
    specs = chunk_specs(model)
    hooks = FisherHooks(model)
    opt = torch.optim.AdamW(model.parameters(), **ADAMW)
    series = [[] for _ in specs]
    losses = []
    for step in range(TRACKER_STEPS):
        x = torch.randn(2, 3, 64, 64)
        target = crack_target(2, 64, 64)
        hooks.clear()
        opt.zero_grad()
        _, loss = model_loss(model, x, target)
        loss.backward()
        losses.append(loss.item())
        for k, (key, mname, cls, kind, wshape, begin, end) in enumerate(specs):
            H, S = reference_fisher(hooks.H[mname], hooks.S[mname])
            series[k].append(chunk_fisher(cls, kind, H, S, wshape, begin, end))
        opt.step()
    hooks.remove()
    fishers = [np.stack(s).astype(np.float32) for s in series]
    rng = np.random.default_rng(3002)
    synth = np.exp(rng.normal(-3, 1, (TRACKER_STEPS, SYNTHETIC_N))).astype(np.float32)
    synth[0] = 0
    keys = [s[0] for s in specs] + [SYNTHETIC_KEY]
    return keys, fishers + [synth], losses


def make_tracker(outdir):
    keys, fishers, losses = fisher_trajectory()
    tf = TensorFile()
    meta = file_metadata()
    meta["chunk_keys"] = json.dumps(keys)
    meta["steps"] = str(TRACKER_STEPS)
    for k, f in enumerate(fishers):
        tf.add(f"chunk.{k}.fisher", f)
    summary = {}
    for prefix, cfg in TRACKER_CONFIGS.items():
        rec = run_tracker(fishers, cfg)
        meta[prefix + "config"] = json.dumps(cfg.as_dict())
        for name in ("js", "js_ema", "total_variation"):
            tf.add(prefix + name, rec[name], "F64")
        tf.add(prefix + "live", rec["live"], "I64")
        D, K = len(rec["decisions"]), len(keys)
        tf.add(prefix + "decisions", np.array(rec["decisions"], np.float64).reshape(D, 6), "F64")
        tf.add(prefix + "decision_frozen",
               np.array(rec["decision_frozen"], np.int64).reshape(D, K), "I64")
        tf.add(prefix + "decision_scores",
               np.array(rec["decision_scores"], np.float64).reshape(D, K), "F64")
        for k, ema in rec["final_ema_F"].items():
            tf.add(f"{prefix}final_ema_F.{k}", ema)
        summary[prefix] = dict(
            decisions=[(int(d[0]), int(d[5])) for d in rec["decisions"]],
            live_end=[keys[k] for k in rec["final_ema_F"]],
            step0_frozen=[keys[k] for k in range(K) if not rec["live"][0, k]])
    # gzipped: 6x smaller, because under the reference estimator S is 0.2 to
    # float32 precision in most layers, so a weight chunk's rows repeat.
    size = write(os.path.join(outdir, "fisher_tracker.safetensors.gz"), tf, meta, compress=True)
    stale = os.path.join(outdir, "fisher_tracker.safetensors")
    if os.path.exists(stale):
        os.remove(stale)
    return size, dict(keys=keys, sizes=[f.shape[1] for f in fishers], summary=summary,
                      losses=(losses[0], losses[-1]))


# ---------------------------------------------------------------------------
# File 3: fisher_hooks.safetensors.gz
# ---------------------------------------------------------------------------

def load_tiny_fixture(outdir):
    """The `tiny` model with the initial weights, input and target of
    segformer_tiny.safetensors.gz (made by make_fixtures.py)."""
    path = os.path.join(outdir, "segformer_tiny.safetensors.gz")
    if not os.path.exists(path):  # e.g. a scratch OUTDIR: the committed one
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures",
                            "segformer_tiny.safetensors.gz")
    with open(path, "rb") as f:
        tensors, meta = read_safetensors(gzip.decompress(f.read()))
    config = json.loads(meta["config"])
    model = SegformerForSemanticSegmentation(config)
    state = model.state_dict()
    model.load_state_dict({name: torch.from_numpy(tensors[name].astype(
        np.int64 if t.dtype == torch.int64 else np.float32)).reshape(t.shape)
        for name, t in state.items()})
    x = torch.from_numpy(tensors["input"].astype(np.float32)).permute(0, 3, 1, 2).contiguous()
    target = torch.from_numpy(tensors["target"].astype(np.float32)).permute(0, 3, 1, 2).contiguous()
    return model, x, target, float(tensors["loss"][0])


def make_hooks(outdir):
    model, x, target, want_loss = load_tiny_fixture(outdir)
    model.train()
    hooks = FisherHooks(model)
    _, loss = model_loss(model, x, target)
    loss.backward()
    hooks.remove()
    assert abs(loss.item() - want_loss) <= 1e-5 * abs(want_loss), (loss.item(), want_loss)
    n_modules = sum(1 for _, m in model.named_modules() if layer_class(m))
    assert len(hooks.layers) == n_modules == len(hooks.S), (len(hooks.layers), n_modules)
    tf = TensorFile()
    for name, _ in hooks.layers:
        tf.add("H." + name, hooks.H[name])
        tf.add("S." + name, hooks.S[name])
    meta = file_metadata()
    meta["layers"] = json.dumps([list(l) for l in hooks.layers])
    meta["loss"] = repr(loss.item())
    # gzipped (1.4x) to keep tests/parity/fixtures inside its 5 MB budget.
    size = write(os.path.join(outdir, "fisher_hooks.safetensors.gz"), tf, meta, compress=True)
    stale = os.path.join(outdir, "fisher_hooks.safetensors")
    if os.path.exists(stale):
        os.remove(stale)
    return size, dict(layers=len(hooks.layers))


# ---------------------------------------------------------------------------
# Self-checks: the pieces above against the page's formulas written out
# independently (selection percentiles, floor-guess binning, loops).
# ---------------------------------------------------------------------------

def _percentile_by_formula(values, q):
    s = np.sort(values)
    n = s.size
    v = (n - 1) * q
    i = math.floor(v)
    t = v - i
    a, b = s[i], s[min(i + 1, n - 1)]
    return a + (b - a) * t if t < 0.5 else b - (b - a) * (1 - t)


def _histogram_by_formula(x, low, high):
    edges = [i * ((high - low) / BINS) + low for i in range(BINS)] + [high]
    counts = np.zeros(BINS, np.int64)
    for v in x:
        if not (edges[0] <= v <= edges[BINS]):
            continue
        i = min(max(int(math.floor((v - low) * BINS / (high - low))), 0), BINS - 1)
        while i > 0 and v < edges[i]:
            i -= 1
        while i < BINS - 1 and v >= edges[i + 1]:
            i += 1
        counts[i] += 1
    return counts


def _js_by_formula(cp, cq):
    def dist(c):
        h = [float(v) + EPS for v in c]
        s = sum(h)
        h = [max(v / s, EPS) for v in h]
        s = sum(h)
        return [v / s for v in h]
    p, q = dist(cp), dist(cq)
    m = [(a + b) / 2 for a, b in zip(p, q)]
    kl = lambda x: sum(a * math.log(a / c) for a, c in zip(x, m))
    return math.sqrt(max(0.0, 0.5 * kl(p) + 0.5 * kl(q)))


def selfcheck():
    assert block_edges(16, 4) == [(0, 4), (4, 8), (8, 12), (12, 16)]
    assert block_edges(10, 4) == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert block_edges(3, 4) == [(0, 1), (1, 2), (2, 3)]
    assert block_edges(1, 4) == [(0, 1)] and block_edges(0, 4) == []
    assert [c[0] for c in chunk_ranges("w", (3, 5), "column", 4)] == \
        ["w.colblock0", "w.colblock1", "w.colblock2", "w.colblock3"]
    assert chunk_ranges("b", (7,), "column", 4) == [("b.colblock0", None, 0, 7)]
    assert [c[0] for c in chunk_ranges("l.qkv.weight", (12, 4), "row", 2, fused_qkv=True)] == \
        ["l.qkv.q.weight.block0", "l.qkv.q.weight.block1", "l.qkv.k.weight.block0",
         "l.qkv.k.weight.block1", "l.qkv.v.weight.block0", "l.qkv.v.weight.block1"]
    assert chunk_ranges("l.qkv.weight", (12, 4), "row", 2, fused_qkv=True)[3][2:] == (6, 8)

    # Every JS case: numpy's percentile/histogram against the page's formulas.
    for what, ref, cur in js_cases():
        for mode in ("log", "raw"):
            with np.errstate(invalid="ignore"):
                r = js_range(ref, cur, mode)
            if r is None:
                continue
            a, b, low, high = r
            if mode == "log" and np.all(np.isfinite(np.concatenate([a, b]))):
                both = np.concatenate([a, b])
                lo, hi = _percentile_by_formula(both, 0.01), _percentile_by_formula(both, 0.99)
                hi = lo + LOG_MIN_SPAN if hi <= lo else hi
                assert (lo, hi) == (low, high), (what, lo, hi, low, high)
            if not (math.isfinite(low) and math.isfinite(high)) or high == low:
                continue  # zero-width bins: no formula to compare
            ca, cb = histogram(a, low, high), histogram(b, low, high)
            assert np.array_equal(ca, _histogram_by_formula(a, low, high)), (what, mode)
            assert np.array_equal(cb, _histogram_by_formula(b, low, high)), (what, mode)
            got, want = js_from_counts(ca, cb), _js_by_formula(ca, cb)
            assert abs(got - want) <= JS_ATOL or abs(got ** 2 - want ** 2) <= JS_ATOL_SQUARED, \
                (what, mode, got, want)

    # Hand-computed distances (tests/unit/test_drift.c checks the same).
    assert js_distance([], [1.0]) != js_distance([], [1.0])  # NaN
    assert js_distance([0.5, 0.25], [0.5, 0.25]) == 0.0
    assert abs(js_distance([1, 3], [3, 3], "raw") - math.sqrt(0.75 * math.log(4 / 3))) < 1e-10
    assert js_distance([0.0], [1e4], "log") == 0.0  # both values outside [p1, p99]
    assert abs(js_distance(np.zeros(100), np.full(100, 1e4), "log")
               - math.sqrt(math.log(2))) < 1e-10

    # Freezing rule.
    keep, mean, std, thr = freeze_decide([2, 2, 5, 5], 1.0)
    assert keep.tolist() == [False, False, True, True] and (mean, std, thr) == (3.5, 1.5, 5.0)
    assert freeze_decide([0.3, 0.7, 0.7, 0.1], 10.0)[0].tolist() == [False, True, False, False]
    assert freeze_decide([0.4], 1.0)[0].tolist() == [True]

    # §1 formulas on a small conv against an explicit loop.
    torch.manual_seed(7)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    h = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    H = h_conv(h, conv)
    pad = F.pad(h, (1, 1, 1, 1))
    B, G, K, P = 2, 2, 2 * 9, 9
    acc = torch.zeros(K + 1, dtype=torch.float64)
    for b in range(B):
        for g in range(G):
            for oy in range(3):
                for ox in range(3):
                    patch = pad[b, 2 * g:2 * g + 2, 2 * oy:2 * oy + 3, 2 * ox:2 * ox + 3]
                    patch = patch.reshape(-1)
                    acc += torch.cat([patch, torch.ones(1, dtype=torch.float64)]) ** 2
    assert torch.allclose(H, acc / (B * P * K), rtol=1e-12, atol=0)
    conv_nb = nn.Conv2d(4, 6, 1, bias=False)
    assert torch.allclose(h_conv(h, conv_nb), (h * h).sum(dim=(0, 2, 3)) / 2, rtol=1e-12)


def main(argv):
    if len(argv) != 2:
        sys.exit(f"usage: {argv[0]} OUTDIR")
    outdir = argv[1]
    os.makedirs(outdir, exist_ok=True)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    selfcheck()

    sizes = {}
    sizes["fisher_js.safetensors.gz"], js = make_js(outdir)
    sizes["fisher_tracker.safetensors.gz"], tr = make_tracker(outdir)
    sizes["fisher_hooks.safetensors.gz"], hk = make_hooks(outdir)
    for name, size in sizes.items():
        print(f"{name:34s} {size / 1e3:8.1f} kB")
    print(f"{'total':34s} {sum(sizes.values()) / 1e3:8.1f} kB")
    print(f"js: {js['cases']} pairs, {js['elements']} values, {js['nan']} NaN distances")
    print(f"tracker: {len(tr['keys'])} chunks, {sum(tr['sizes'])} values per step, "
          f"loss {tr['losses'][0]:.4f} -> {tr['losses'][1]:.4f}")
    for prefix, s in tr["summary"].items():
        print(f"tracker {prefix} step-0 frozen {s['step0_frozen']}; decisions (step, frozen) "
              f"{s['decisions']}; live at the end: {s['live_end']}")
    print(f"hooks: {hk['layers']} layers")


if __name__ == "__main__":
    main(sys.argv)
