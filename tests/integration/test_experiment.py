"""The experiment of issue 8 (tests/bench/experiment.py), its smallest case end to end.

The first test starts `fisherd serve` itself (a free 127.0.0.1 port, a
temporary data dir, stopped by its PID), runs the experiment against it with
--url --smallest (one pretraining, every strategy, a lambda sweep: seconds of
training), then checks the report against the daemon: every job it lists
succeeded, every number in its tables is the API's, the hierarchy table
counts the groups /groups returns, and the figures are well-formed SVG with
one mark per group. The second runs it the way `make experiment` does — the
script starts and stops its own daemon — on folder datasets under a
--data-root instead of the synthetic domains.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FISHERD = os.path.abspath(os.environ.get("FISHERD", ROOT / "build" / "fisherd"))
SCRIPT = ROOT / "tests" / "bench" / "experiment.py"
STRATEGIES = ["fisher", "fisher-ema", "full", "decoder", "norm", "bitfit"]
SVG = "{http://www.w3.org/2000/svg}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(base, path):
    with urllib.request.urlopen(base + path, timeout=30) as r:
        return json.loads(r.read())


def run_experiment(*args, timeout=600):
    p = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"experiment.py exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return p


def table_rows(md, first_cell):
    """The cells of every markdown table row whose first cell is first_cell."""
    out = []
    for line in md.splitlines():
        if line.startswith("| ") and line.split("|")[1].strip() == first_cell:
            out.append([c.strip() for c in line.strip().strip("|").split("|")])
    return out


def test_the_smallest_case_reports_what_the_api_holds(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    logf = open(tmp_path / "fisherd.log", "wb")
    proc = subprocess.Popen([FISHERD, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "var"),
                             "--max-jobs", "2", "--threads", "1", "--log-level", "warn"],
                            stdout=logf, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 20
        while True:
            try:
                get(base, "/healthz")
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, (tmp_path / "fisherd.log").read_text()
                time.sleep(0.05)
        out, img, raw = tmp_path / "RESULTS.md", tmp_path / "img", tmp_path / "raw.json"
        run_experiment("--smallest", "--url", base, "--out", str(out), "--images", str(img), "--raw", str(raw),
                       "--poll", "0.5")
        md, data = out.read_text(), json.loads(raw.read_text())
        jobs = data["jobs"]
        # the plan: one pretraining, six strategies, the sweep's two other lambdas
        kinds = sorted((j["key"]["kind"], j["key"].get("label", "")) for j in jobs)
        assert kinds == sorted([("pretrain", "")] + [("main", s) for s in STRATEGIES] + [("sweep", "fisher")] * 2)
        assert "SMALLEST CASE" in md and "`tests/bench/experiment.py --smallest --url" in md
        assert re.search(r"\| machine \| \d+ cores, .+ \|", md) and re.search(r"\| source \| git \w+", md)

        for j in jobs:
            rec = get(base, f"/api/v1/jobs/{j['id']}")
            assert rec["status"] == "succeeded" == j["status"], rec
            assert j["id"] in md
            if j["key"]["kind"] == "pretrain":
                continue
            r = rec["result"]
            assert j["record_result"] == r
            m = j["metrics"]
            assert (m["val_iou"], m["val_f1"]) == (r["val"]["iou"], r["val"]["f1"])
            assert [z["iou"] for z in m["zero_shot"]] == [z["iou"] for z in r["zero_shot"]]
            assert len(r["zero_shot"]) == 3 and "asphalt" in r["zero_shot"][0]["dataset"]
            # the mean step the daemon now reports: part of the wall time, not all of it
            assert 0 < r["step_seconds_mean"] == m["step_seconds"]
            assert r["step_seconds_mean"] * r["steps_done"] < r["wall_seconds"]
            live = get(base, f"/api/v1/jobs/{j['id']}/metrics?name=params_live&max_points=100000")
            assert [v / r["parameters"] for v in live["metrics"]["params_live"]["value"]] == j["live"]["fraction"]
            if j["key"]["kind"] == "main":
                # one seed: the table shows the API's own numbers, rounded
                row = table_rows(md, f"`{j['key']['label']}`")[0]
                assert row[1] == "1" and row[2] == f"{r['val']['iou']:.3f}" and row[3] == f"{r['val']['f1']:.3f}"
                assert row[4:7] == [f"{z['iou']:.3f}" for z in r["zero_shot"]]
                assert row[10].startswith(f"{r['params_trainable']:,}".replace(",", " ") + " (")
            if j["spec"]["strategy"] == "fisher":
                groups = get(base, f"/api/v1/jobs/{j['id']}/groups")["groups"]
                assert [(g["depth"], g["frozen_at"]) for g in groups] == \
                       [(g["depth"], g["frozen_at"]) for g in j["groups"]]
                assert any(g["frozen_at"] is not None for g in groups), "nothing froze: the run is too short"

        # the hierarchy table accounts for every group of a fisher run, once
        fisher = next(j for j in jobs if j["key"] == {"kind": "main", "setting": "shapes", "label": "fisher",
                                                      "seed": 1})
        n_groups = len(fisher["groups"])
        rows = table_rows(md, "`fisher` (reference)")
        assert [r[1] for r in rows] == ["encoder stage 1", "encoder stage 2", "encoder stage 3", "encoder stage 4",
                                        "decode head"]
        assert sum(int(r[3]) for r in rows) == n_groups
        assert sum(int(r[4].replace(" ", "")) for r in rows) == \
               get(base, f"/api/v1/jobs/{fisher['id']}")["result"]["parameters"]
        # the sweep: every lambda at the freeze interval
        sweep = [r for lam in ("0.5", "1", "2") for r in table_rows(md, lam)]
        assert [r[1] for r in sweep] == ["10", "10", "10"] and all(r[2] == "1" for r in sweep)

        # the figures: SVG, the hierarchy with a mark per group of both fisher runs
        svgs = sorted(p.name for p in img.iterdir())
        assert svgs == ["experiment-hierarchy-shapes.svg", "experiment-live-shapes.svg", "experiment-sweep.svg"]
        for name in svgs:
            assert f"({img.name}/{name})" in md
        marks = ET.parse(img / "experiment-hierarchy-shapes.svg").getroot().findall(f"{SVG}circle")
        assert len([c for c in marks if c.find(f"{SVG}title") is not None]) == 2 * n_groups
        lines = ET.parse(img / "experiment-live-shapes.svg").getroot().findall(f"{SVG}polyline")
        assert len(lines) == len(STRATEGIES)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        logf.close()


def test_folder_datasets_on_a_daemon_the_script_starts_itself(tmp_path):
    root = tmp_path / "data"
    for name, domain, seed in [("pre", "shapes", 1), ("target/train", "concrete", 1), ("target/val", "concrete", 2),
                               ("other", "asphalt", 3)]:
        subprocess.run([FISHERD, "dataset", "synth", "--domain", domain, "--count", "8", "--seed", str(seed),
                        "--size", "64", "--out", str(root / name)], check=True, capture_output=True)
    out, raw = tmp_path / "RESULTS.md", tmp_path / "raw.json"
    p = run_experiment("--smallest", "--fisherd", FISHERD, "--data-root", str(root), "--pretrain", "pre",
                       "--target", "target", "--zero-shot", "other", "--steps", "10", "--pretrain-steps", "8",
                       "--out", str(out), "--images", str(tmp_path / "img"), "--raw", str(raw), "--poll", "0.5")
    data = json.loads(raw.read_text())
    assert all(j["status"] == "succeeded" for j in data["jobs"]) and len(data["jobs"]) == 9
    fine = [j for j in data["jobs"] if j["key"]["kind"] != "pretrain"]
    # the folders, split as given: train/ to train, val/ to validate
    assert {j["spec"]["data"]["train"]["path"] for j in fine} == {"target/train"}
    assert {j["spec"]["data"]["val"]["path"] for j in fine} == {"target/val"}
    assert {j["spec"]["data"]["zero_shot"][0]["path"] for j in fine} == {"other"}
    md = out.read_text()
    assert "folder `target` (under --data-root)" in md and "zero-shot IoU `other`" in md
    # the daemon it started is gone: its port no longer answers
    m = re.search(r"fisherd serve \(pid (\d+)\) on (http://\S+),", p.stdout)
    assert m, p.stdout
    try:
        os.kill(int(m.group(1)), 0)
        alive = Path(f"/proc/{m.group(1)}/cmdline").read_bytes().startswith(FISHERD.encode())
    except ProcessLookupError:
        alive = False
    assert not alive
