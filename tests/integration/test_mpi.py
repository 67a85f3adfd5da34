"""`mpirun -np N fisherd worker` without the daemon (issue 9): the test plays
the daemon's part of the job stream (daemon/job_stream.h) — it reads rank
0's JSON lines from mpirun's stdout and answers "ack" to every
checkpoint_begin on mpirun's stdin.

The equivalence proof: the tiny model, 20 steps, global batch 4, on 2
ranks (local, --oversubscribe; --allow-run-as-root as root) against one
process computing the same spec (`fisherd train --one-process`: the Fisher
statistics averaged over 2 shards of the batch, as across 2 ranks, job.h),
for strategy fisher with a freeze decision every 4 steps and for full.
Every freeze decision must be identical — the same chunks at the same
steps — and the weights agree within:

  - atol lr for every parameter but the free biases. The two runs differ
    only in where float sums are rounded (the gradient of 4 samples summed
    in one process, or 2 + 2 across ranks); AdamW turns that into
    differences far below one step's size (measured: ~1e-6 at lr 1e-4),
    while a rank on the wrong rows, a gradient not summed or a shard
    augmented differently moves parameters by several lr within a few
    steps.
  - 2·lr·steps for the free biases (those whose gradient is analytically 0
    in tiny: the decode head's linear_c biases in front of its BatchNorm,
    and the last encoder LayerNorm's bias): their gradient is rounding
    noise, and AdamW moves each by up to ~lr per step in either direction
    whatever the noise, independently in each run.
  - the BatchNorm's running variance rtol 1e-3; its running mean follows
    the free biases and is not compared.
The spec's lr 1e-4 and AdamW eps 1e-5 are tests/unit/test_job_dp.c's,
which measured why (the same comparison, on thread ranks).

Also: a rank killed with SIGKILL mid-run fails the whole job and mpirun's
stderr names the rank and the host; the end of mpirun (SIGKILL to its
process group, as the daemon's cancel does) takes every rank with it,
though each sits in a process group of its own (PR_SET_PDEATHSIG); a
"cancel" line stops the run after a step with a checkpoint and a "done"
that says cancelled; a spec whose distributed.ranks is not -np exits 1
with a message on stderr and in "done"; `fisherd train` refuses a spec of
2 ranks unless told --one-process. One compute thread per rank.
"""
import array
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

FISHERD = os.path.abspath(os.environ.get("FISHERD", Path(__file__).resolve().parents[2] / "build" / "fisherd"))
MPIRUN = shutil.which("mpirun")
LR, STEPS = 1e-4, 20
# Gradient analytically zero in tiny (see the top).
FREE_BIAS = re.compile(r"^decode_head\.linear_c\.\d+\.proj\.bias$|^segformer\.encoder\.layer_norm\.3\.bias$")


def spec(strategy, ranks=2, steps=STEPS, **extra):
    s = {"name": f"mpi-{strategy}", "image_size": 64, "batch_size": 4, "steps": steps, "eval_interval": 10,
         "strategy": strategy, "seed": 3, "threads": 1,
         "data": {"train": {"synthetic": {"domain": "concrete", "count": 16, "seed": 1}},
                  "val": {"synthetic": {"domain": "concrete", "count": 6, "seed": 2}}},
         "augment": {"hflip": True, "vflip": True, "scale": [0.8, 1.25]},
         "optim": {"lr": LR, "eps": 1e-5}, "distributed": {"ranks": ranks}}
    if strategy == "fisher":
        # λ 0 keeps the chunks above the mean: many decisions near the threshold
        s["fisher"] = {"ema_interval": 1, "freeze_interval": 4, "lambda": 0}
    s.update(extra)
    return s


def mpirun_cmd(np_, spec_path, out, *extra):
    cmd = [MPIRUN, "--oversubscribe", "-np", str(np_)]
    if os.geteuid() == 0:
        cmd.insert(1, "--allow-run-as-root")
    return cmd + [FISHERD, "worker", "--spec", str(spec_path), "--out", str(out), *extra]


class Job:
    """mpirun running workers, with the daemon's side of the stream: every
    record is parsed as it arrives and every checkpoint_begin acked."""

    def __init__(self, np_, spec_path, out, on_record=None, resume=False):
        self.proc = subprocess.Popen(mpirun_cmd(np_, spec_path, out, *(["--resume"] if resume else [])),
                                     stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        self.records, self.stderr = [], b""
        self.on_record = on_record
        self._err = threading.Thread(target=self._read_stderr)
        self._err.start()
        self._out = threading.Thread(target=self._read_stdout)
        self._out.start()

    def _read_stderr(self):
        self.stderr = self.proc.stderr.read()

    def _read_stdout(self):
        for line in self.proc.stdout:
            rec = json.loads(line)  # anything but a JSON line on rank 0's stdout fails here
            self.records.append(rec)
            if self.on_record:  # first: what it sends arrives before the ack
                self.on_record(self, rec)
            if rec["kind"] == "checkpoint_begin":
                self.send("ack")  # a no-op once stdin is closed: the end releases the wait too

    def send(self, line):
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):  # ValueError: closed on purpose
            pass

    def wait(self, timeout=120):
        try:
            rc = self.proc.wait(timeout)
        finally:
            self.kill()
        self._out.join(10)
        self._err.join(10)
        try:
            self.proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        return rc

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def kinds(self, kind):
        return [r for r in self.records if r["kind"] == kind]

    def err(self):
        return self.stderr.decode(errors="replace")


def read_safetensors(path):
    """{name: array} of a safetensors file of F32 (and I64) tensors."""
    data = Path(path).read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a = array.array({"F32": "f", "I64": "q"}[t["dtype"]])
        a.frombytes(data[8 + n + t["data_offsets"][0]:8 + n + t["data_offsets"][1]])
        out[name] = a
    return out


def ranks_of(mpirun_pid):
    """{rank: pid} of the workers mpirun started on this machine (its children)."""
    found = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != mpirun_pid:
                continue
            with open(f"/proc/{d}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except (OSError, ValueError, IndexError):
            continue
        if b"OMPI_COMM_WORLD_RANK" in env:
            found[int(env[b"OMPI_COMM_WORLD_RANK"])] = int(d)
    return found


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module", autouse=True)
def have_mpirun():
    assert MPIRUN, "mpirun not found: `make deps` installs openmpi-bin"


def decisions(records):
    """[(step, sorted frozen keys)] of every freeze decision in a stream."""
    keys = [g["key"] for r in records if r["kind"] == "groups" for g in r["groups"]]
    return [(r["step"], sorted(keys[i] for i in r["frozen"]))
            for r in records if r["kind"] == "method" and r["decided"]]


@pytest.mark.parametrize("strategy", ["fisher", "full"])
def test_two_ranks_compute_what_one_process_does(tmp_path, strategy):
    s = spec(strategy)
    (tmp_path / "spec.json").write_text(json.dumps(s))
    job = Job(2, tmp_path / "spec.json", tmp_path / "ranks")
    assert job.wait() == 0, job.err()
    one = subprocess.run([FISHERD, "train", tmp_path / "spec.json", "--one-process", "--out", tmp_path / "one"],
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr

    # the stream: a whole run, in order, ending in done
    kinds = [r["kind"] for r in job.records]
    assert kinds[-1] == "done" and kinds.count("done") == 1
    done = job.records[-1]
    assert done["rc"] == 0 and done["error"] == ""
    assert done["result"]["steps_done"] == STEPS and not done["result"]["cancelled"]
    assert [p["step"] for p in job.kinds("progress")] == list(range(1, STEPS + 1))
    assert kinds.index("checkpoint_begin") < kinds.index("checkpoint")
    assert any("2 ranks" in r["line"] for r in job.kinds("log"))
    summary = json.loads((tmp_path / "one" / "summary.json").read_text())

    # every freeze decision identical
    if strategy == "fisher":
        mine = decisions(job.records)
        theirs = [(f["step"], sorted(f["frozen"])) for f in summary["freezes"]]
        assert mine == theirs
        assert sum(1 for step, frozen in mine if step > 0 and frozen) >= 2, "no freezes happened"
        assert done["result"]["params_trainable"] == summary["params_trainable"]
    else:
        assert not job.kinds("method") and not summary["freezes"]

    # the weights within the tolerances argued at the top
    a = read_safetensors(tmp_path / "ranks" / "model.safetensors")
    b = read_safetensors(tmp_path / "one" / "model.safetensors")
    assert a.keys() == b.keys()
    worst, worst_in = 0.0, None
    for name in a:
        d = max((abs(x - y) for x, y in zip(a[name], b[name])), default=0.0)
        if FREE_BIAS.match(name):
            assert d <= 2 * LR * STEPS, f"{name}: {d}"
        elif name.endswith("running_var"):
            for x, y in zip(a[name], b[name]):
                assert abs(x - y) <= 1e-3 * abs(y), f"{name}: {x} vs {y}"
        elif name.endswith("num_batches_tracked"):
            assert a[name] == b[name] == array.array("q", [STEPS])
        elif name.endswith("running_mean"):
            continue
        elif d > worst:
            worst, worst_in = d, name
    print(f"{strategy}: max |2 ranks - 1 process| {worst:.2e} in {worst_in} (atol lr {LR:g})")
    assert worst <= LR, f"{worst_in} differs by {worst}"
    # and the final evaluation, the same model's, to float noise
    mine_val, theirs_val = done["result"]["final_val"], summary["final_val"]
    assert abs(mine_val["loss"] - theirs_val["loss"]) <= 1e-3 * abs(theirs_val["loss"])


def test_a_rank_killed_fails_the_job_naming_rank_and_host(tmp_path):
    (tmp_path / "spec.json").write_text(json.dumps(spec("full", steps=100000, image_size=32)))
    started = threading.Event()

    def watch(job, rec):
        if rec["kind"] == "progress" and rec["step"] >= 3:
            started.set()

    job = Job(2, tmp_path / "spec.json", tmp_path / "out", on_record=watch)
    try:
        assert started.wait(60), job.err()
        ranks = ranks_of(job.proc.pid)
        assert sorted(ranks) == [0, 1]
        os.kill(ranks[1], signal.SIGKILL)
        rc = job.wait(60)
    finally:
        job.kill()
    assert rc != 0
    err = job.err()
    m = re.search(r"process rank (\d+) with PID \d+ on node (\S+) exited on signal 9", err)
    assert m, err
    assert m.group(1) == "1"
    assert m.group(2) == socket.gethostname().split(".")[0]
    assert not job.kinds("done")  # the stream just ends: the daemon reads why from stderr
    for pid in ranks.values():
        assert not alive(pid)


def test_mpirun_killed_takes_every_rank_along(tmp_path):
    (tmp_path / "spec.json").write_text(json.dumps(spec("full", steps=100000, image_size=32)))
    started = threading.Event()
    job = Job(2, tmp_path / "spec.json", tmp_path / "out",
              on_record=lambda j, r: r["kind"] == "progress" and started.set())
    try:
        assert started.wait(60), job.err()
        ranks = ranks_of(job.proc.pid)
        assert sorted(ranks) == [0, 1]
        # each rank is in a process group of its own: the group's SIGKILL reaches mpirun only
        assert all(os.getpgid(pid) != job.proc.pid for pid in ranks.values())
        os.killpg(job.proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(alive(p) for p in ranks.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(p) for p in ranks.values()), "a rank outlived mpirun"
    finally:
        job.kill()


@pytest.mark.parametrize("how", ["cancel line", "stdin closed"])
def test_cancel_stops_with_a_checkpoint(tmp_path, how):
    """The daemon's "cancel", or its end (mpirun's stdin closed: rank 0 sees
    the end of its own), stops every rank after a step with a checkpoint."""
    (tmp_path / "spec.json").write_text(json.dumps(spec("fisher", steps=100000, image_size=32)))

    def watch(job, rec):
        if rec["kind"] == "progress" and rec["step"] == 3:
            if how == "cancel line":
                job.send("cancel")
            else:
                job.proc.stdin.close()

    job = Job(2, tmp_path / "spec.json", tmp_path / "out", on_record=watch)
    assert job.wait(60) == 0, job.err()
    done = job.records[-1]
    assert done["kind"] == "done" and done["rc"] == 0 and done["result"]["cancelled"]
    steps = done["result"]["steps_done"]
    assert 3 <= steps < 100000  # after the cancel arrived, however long it took to
    assert [r["step"] for r in job.kinds("checkpoint")] == [steps]
    assert (tmp_path / "out" / "checkpoint.safetensors").exists()


def test_resume_ends_where_the_uninterrupted_run_does(tmp_path):
    """Cancelled after step 5, then `--resume`d from rank 0's checkpoint: the
    same weights, bit for bit, and the same freeze decisions as one run.
    The cancel goes out before the ack of step 5's checkpoint, which rank 0
    waits for, so the run stops right there however fast its steps are."""
    (tmp_path / "spec.json").write_text(json.dumps(spec("fisher", steps=12, image_size=32, checkpoint_interval=5)))
    whole = Job(2, tmp_path / "spec.json", tmp_path / "whole")
    assert whole.wait() == 0, whole.err()

    def cancel_at_5(job, rec):
        if rec["kind"] == "checkpoint_begin" and rec["step"] == 5:
            job.send("cancel")

    first = Job(2, tmp_path / "spec.json", tmp_path / "parts", on_record=cancel_at_5)
    assert first.wait() == 0, first.err()
    stopped = first.records[-1]["result"]["steps_done"]
    assert first.records[-1]["result"]["cancelled"] and stopped == 5
    second = Job(2, tmp_path / "spec.json", tmp_path / "parts", resume=True)
    assert second.wait() == 0, second.err()
    assert [p["step"] for p in second.kinds("progress")] == list(range(stopped + 1, 13))
    assert second.records[-1]["result"]["steps_done"] == 12
    assert decisions(first.records + second.records) == decisions(whole.records)
    a = read_safetensors(tmp_path / "whole" / "model.safetensors")
    b = read_safetensors(tmp_path / "parts" / "model.safetensors")
    assert a == b


@pytest.mark.parametrize("np_,ranks", [(1, 2), (2, 1)])
def test_ranks_not_matching_np_exit_1_saying_so(tmp_path, np_, ranks):
    (tmp_path / "spec.json").write_text(json.dumps(spec("full", ranks=ranks)))
    job = Job(np_, tmp_path / "spec.json", tmp_path / "out")
    assert job.wait(60) == 1
    want = f"asks for distributed.ranks = {ranks} but runs on {np_} MPI rank"
    lines = [line for line in job.err().splitlines() if line.startswith("fisherd worker: rank ")]
    assert lines and all(want in line for line in lines), job.err()
    assert re.match(r"fisherd worker: rank \d+ on \S+: ", lines[0])
    done = job.kinds("done")
    if done:  # rank 0 says it too, unless MPI_Abort from another rank came first
        assert done[0]["rc"] == -1 and want in done[0]["error"]
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_worker_command_line():
    r = subprocess.run([FISHERD, "worker", "--spec", "x.json"], capture_output=True, text=True)
    assert r.returncode == 2 and "--out" in r.stderr
    r = subprocess.run([FISHERD, "worker", "--spec", "x", "--out", "y", "--threads", "0"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--threads" in r.stderr


def test_train_refuses_a_distributed_spec(tmp_path):
    (tmp_path / "spec.json").write_text(json.dumps(spec("full")))
    r = subprocess.run([FISHERD, "train", tmp_path / "spec.json", "--out", tmp_path / "out"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "distributed.ranks = 2" in r.stderr and "mpirun -np 2 fisherd worker" in r.stderr
    assert "daemon" in r.stderr and "--one-process" in r.stderr
    assert not (tmp_path / "out").exists()
