"""Black-box tests of the fisherd command line: what a user types, what they get.

Runs build/fisherd (FISHERD overrides the path) in temporary folders:
generate a synthetic folder dataset, train on it from a spec, predict a
mask, evaluate, and the ways each can go wrong (bad spec fields, missing
files, Ctrl-C).
"""
import json
import os
import signal
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest

FISHERD = os.path.abspath(os.environ.get("FISHERD", Path(__file__).resolve().parents[2] / "build" / "fisherd"))


def run(*args, cwd=None, timeout=300):
    return subprocess.run([FISHERD, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def read_png_grey(path):
    """Pixels of an 8-bit greyscale, non-interlaced PNG (what fisherd writes) as rows of ints."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert (depth, colour) == (8, 0), "expected 8-bit greyscale"
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw, rows, prev = zlib.decompress(idat), [], [0] * width
    for y in range(height):
        line = raw[y * (width + 1):(y + 1) * (width + 1)]
        kind, row = line[0], list(line[1:])
        for x in range(width):
            a = row[x - 1] if x else 0
            b, c = prev[x], prev[x - 1] if x else 0
            if kind == 1:
                row[x] = (row[x] + a) & 255
            elif kind == 2:
                row[x] = (row[x] + b) & 255
            elif kind == 3:
                row[x] = (row[x] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                row[x] = (row[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(row)
        prev = row
    return rows


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with a small synthetic dataset and a briefly trained model."""
    d = tmp_path_factory.mktemp("cli")
    r = run("dataset", "synth", "--domain", "concrete", "--count", 12, "--seed", 4, "--size", 48,
            "--out", d / "cracks")
    assert r.returncode == 0, r.stderr
    spec = {
        "name": "cli-test",
        "image_size": 32,
        "data": {"train": {"path": str(d / "cracks")}, "val": {"path": str(d / "cracks")},
                 "zero_shot": [{"synthetic": {"domain": "tiles", "count": 4, "seed": 1}}]},
        "optim": {"lr": 1e-3},
        "batch_size": 4,
        "steps": 12,
        "eval_interval": 6,
    }
    (d / "spec.json").write_text(json.dumps(spec))
    r = run("train", d / "spec.json", "--out", d / "run", cwd=d)
    assert r.returncode == 0, r.stderr + r.stdout
    return d


def test_dataset_synth_writes_pairs(work):
    images = sorted(p.name for p in (work / "cracks" / "images").iterdir())
    masks = sorted(p.name for p in (work / "cracks" / "masks").iterdir())
    assert images == masks and len(images) == 12
    assert (work / "cracks" / "images" / "concrete-000000.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_writes_model_checkpoint_and_summary(work):
    run_dir = work / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 12 and not summary["cancelled"]
    assert [e["step"] for e in summary["evals"] if e["dataset"] == "val"] == [6, 12]
    assert summary["final_val"]["step"] == 12
    assert 0.0 <= summary["final_val"]["iou"] <= 1.0
    assert len(summary["zero_shot"]) == 1 and "tiles" in summary["zero_shot"][0]["dataset"]
    assert summary["spec"]["image_size"] == 32
    for name in ("model.safetensors", "checkpoint.safetensors"):
        assert (run_dir / name).stat().st_size > 100_000


def test_predict_writes_mask_probs_and_overlay_at_image_size(work):
    out = work / "pred"
    out.mkdir(exist_ok=True)
    image = work / "cracks" / "images" / "concrete-000003.png"
    r = run("predict", "--model", work / "run" / "model.safetensors", "--image", image,
            "--out", out / "mask.png", "--probs", out / "probs.png", "--overlay", out / "overlay.png")
    assert r.returncode == 0, r.stderr
    assert "48x48" in r.stdout and "model input 32x32" in r.stdout
    for name in ("mask.png", "probs.png", "overlay.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert (width, height) == (48, 48)


def test_eval_prints_metrics(work):
    r = run("eval", "--model", work / "run" / "model.safetensors", "--data", work / "cracks")
    assert r.returncode == 0, r.stderr
    assert "12 pairs" in r.stdout and "IoU" in r.stdout
    r = run("eval", "--model", work / "run" / "model.safetensors", "--data", "synthetic:asphalt:8:1")
    assert r.returncode == 0, r.stderr
    assert "asphalt" in r.stdout


@pytest.mark.parametrize("spec,words", [
    ({"optim": {"lr": -1}}, "optim.lr"),
    ({"batch_size": "four"}, "batch_size: must be an integer"),
    ({"data": {"train": {"synthetic": {"domain": "gravel"}}}}, "unknown domain 'gravel'"),
    ({"epoch": 3}, "epoch: unknown field"),
])
def test_bad_spec_is_refused_with_the_field(tmp_path, spec, words):
    (tmp_path / "bad.json").write_text(json.dumps(spec))
    r = run("train", tmp_path / "bad.json", "--out", tmp_path / "out")
    assert r.returncode == 2
    assert words in r.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_missing_things_are_named(tmp_path):
    r = run("predict", "--model", tmp_path / "none.safetensors", "--image", "x.png", "--out", "y.png")
    assert r.returncode == 1 and "none.safetensors" in r.stderr
    r = run("train", "--steps", 2, "--out", tmp_path / "o")
    assert r.returncode == 0  # defaults: synthetic data, nothing to download
    (tmp_path / "empty" / "images").mkdir(parents=True)
    r = run("eval", "--model", tmp_path / "o" / "model.safetensors", "--data", tmp_path / "empty")
    assert r.returncode == 1 and "masks" in r.stderr
    r = run("frobnicate")
    assert r.returncode == 2 and "unknown command" in r.stderr


def test_ctrl_c_stops_after_the_step_and_keeps_a_checkpoint(tmp_path):
    p = subprocess.Popen([FISHERD, "train", "--steps", "100000", "--image-size", "32",
                          "--out", str(tmp_path / "run")], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until training is under way
        line = p.stdout.readline()
        if line.startswith("step "):
            break
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "stopping after this step" in err
    assert (tmp_path / "run" / "checkpoint.safetensors").exists()
    assert not (tmp_path / "run" / "model.safetensors").exists()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["cancelled"] and summary["steps"] >= 1


def test_dataset_preview_grid(work, tmp_path):
    r = run("dataset", "preview", "--out", tmp_path / "grid.png", "--count", 2, "--size", 32,
            "--model", work / "run" / "model.safetensors")
    assert r.returncode == 0, r.stderr
    data = (tmp_path / "grid.png").read_bytes()
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (2 * 3 * 32, 5 * 32)  # 2 samples × (image, mask, prediction), 5 domains


def test_predict_finds_the_cracks_it_learned(tmp_path):
    """A model fitted to four images must draw their cracks: the mask predict
    writes overlaps the true one (IoU > 0.5), at the image's own size."""
    r = run("dataset", "synth", "--domain", "concrete", "--count", 4, "--seed", 11, "--size", 64,
            "--out", tmp_path / "four")
    assert r.returncode == 0, r.stderr
    masks = [read_png_grey(p) for p in sorted((tmp_path / "four" / "masks").iterdir())]
    index = max(range(4), key=lambda i: sum(v > 127 for row in masks[i] for v in row))
    spec = {"image_size": 64, "batch_size": 4, "steps": 250, "optim": {"lr": 2e-3},
            "augment": {"hflip": False, "vflip": False},
            "data": {"train": {"path": str(tmp_path / "four")}, "val": {"path": str(tmp_path / "four")}}}
    (tmp_path / "fit.json").write_text(json.dumps(spec))
    r = run("train", tmp_path / "fit.json", "--out", tmp_path / "fit")
    assert r.returncode == 0, r.stderr
    image = tmp_path / "four" / "images" / f"concrete-{index:06d}.png"
    r = run("predict", "--model", tmp_path / "fit" / "model.safetensors", "--image", image,
            "--out", tmp_path / "pred.png")
    assert r.returncode == 0, r.stderr
    pred, truth = read_png_grey(tmp_path / "pred.png"), masks[index]
    assert set(v for row in pred for v in row) <= {0, 255}
    both = sum(p > 127 and t > 127 for pr, tr in zip(pred, truth) for p, t in zip(pr, tr))
    either = sum(p > 127 or t > 127 for pr, tr in zip(pred, truth) for p, t in zip(pr, tr))
    print(f"predicted-mask IoU {both / max(either, 1):.3f}")
    assert either and both / either > 0.5, f"IoU {both / max(either, 1):.3f}"


@pytest.mark.parametrize("strategy", ["full", "fisher", "decoder", "norm", "bitfit"])
def test_every_strategy_trains_and_reports_what_trains(tmp_path, strategy):
    spec = {"strategy": strategy, "image_size": 32, "batch_size": 2, "steps": 8, "eval_interval": 4,
            "data": {"train": {"synthetic": {"domain": "concrete", "count": 8, "seed": 1}},
                     "val": {"synthetic": {"domain": "concrete", "count": 2, "seed": 2}}}}
    if strategy == "fisher":
        spec["fisher"] = {"ema_interval": 2, "freeze_interval": 4, "lambda": 0.5}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    r = run("train", tmp_path / "spec.json", "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    assert f"strategy {strategy}" in r.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    total = summary["parameters"]
    assert summary["spec"]["strategy"] == strategy
    assert [t[0] for t in summary["trainable"] if t[2] is None] == [4, 8]  # at each evaluation
    if strategy == "full":
        assert summary["params_trainable"] == total and summary["freezes"] == []
    elif strategy == "fisher":
        decisions = [f for f in summary["freezes"] if f["rule"] == "mean_plus_lambda_std"]
        assert [f["step"] for f in decisions] == [4]          # freeze_interval 4 within 8 steps
        d = decisions[0]
        assert d["threshold"] == pytest.approx(d["mean"] + 0.5 * d["std"])
        assert d["params_live"] == summary["params_trainable"] < total
        assert len(d["frozen"]) > 0 and all(".rowblock" in k for k in d["frozen"])
        assert "froze" in r.stdout
    else:
        assert 0 < summary["params_trainable"] < total and summary["freezes"] == []
