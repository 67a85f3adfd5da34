"""Distributed jobs under `fisherd serve` (issue 9), black-box over HTTP.

A spec with "distributed": {"ranks": 2} makes the daemon run the job as
`mpirun -np 2 ... fisherd worker` (Open MPI, local, --oversubscribe) and
store what rank 0 streams back exactly as a local job's records. Here:

- a 2-rank tiny job succeeds, and its groups, drift, freezes, metrics and
  evaluations read back like those of the same spec on one process (ranks
  1, in the same daemon): the same groups, every step's loss, every drift
  measurement, the evaluations at the same steps. Its freeze decisions are
  exactly (steps and frozen groups) those of `fisherd train --one-process`
  on the same spec: one process computing what 2 ranks do, the Fisher
  statistics averaged over the batch's 2 shards as across 2 ranks (job.h).
  A ranks-1 run squares whole-batch gradients instead, a different
  statistic, so its decisions may differ near the threshold: only its
  losses are compared, within LOSS_TOL (the reduction order differing).
  AdamW eps 1e-5, as in test_mpi.py and test_job_dp.c: the free biases'
  rounding-noise gradients then move them too little to matter;
- a hostfile that is not a file in --hostfile-dir, and more than one rank
  without an mpirun, are 400s naming the field;
- what the daemon does with whatever mpirun does, through a stand-in
  mpirun (a script) that records its command line and then misbehaves on
  cue: garbage on stdout, a worker's failure line, one rank relaying
  another's failure (with or without a "done": the reason is the failing
  rank's own line), mpirun's own report of a rank killed by a signal, a
  bare non-zero exit; deaf to a cancel and
  to SIGTERM (the job is cancelled by SIGKILL to mpirun's process group
  35 s on, the daemon answering meanwhile: the one slow test here); gone
  by the time the job starts (it fails saying so);
- with the real mpirun: cancel ends every process of the job; a rank
  SIGKILLed fails the job with a reason naming the rank and the host, and
  the daemon stays healthy and runs the next job; the daemon SIGKILLed
  mid-run takes its MPI job along (no rank left writing the job's folder),
  and after a restart the job resumes from rank 0's checkpoint with no
  hole in its history and the freeze decisions of the uninterrupted run
  (after a SIGTERM stop first: the cancel down the stream, a checkpoint,
  interrupted, resumed).

Every daemon listens on 127.0.0.1 on a port picked here and is stopped by
its PID; every process the tests look for is found through /proc by its
job's --out folder.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_serve import FISHERD, Daemon, small_job

MPIRUN = shutil.which("mpirun")
needs_mpi = pytest.mark.skipif(MPIRUN is None, reason="Open MPI's mpirun is not installed (make deps)")

STEPS = 30
LOSS_TOL = 1e-3  # relative: 2 ranks sum their shards' gradients in another order than one process


def spec(ranks, **over):
    s = small_job(name=f"dist-{ranks}", steps=STEPS, threads=1, eval_interval=10, optim={"lr": 1e-4, "eps": 1e-5},
                  fisher={"ema_interval": 2, "freeze_interval": 10})
    if ranks:
        s["distributed"] = {"ranks": ranks}
    s.update(over)
    return s


def processes_of(out_dir):
    """{pid: argv} of every process whose command line has `--out out_dir` (the workers, mpirun)."""
    found = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in argv if a]
        if any(argv[i] == "--out" and argv[i + 1] == out_dir for i in range(len(argv) - 1)):
            found[int(p.name)] = argv
    return found


def rank_of(pid):
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for e in env:
        if e.startswith(b"OMPI_COMM_WORLD_RANK="):
            return int(e.split(b"=", 1)[1])
    return None


def wait_gone(out_dir, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        left = processes_of(out_dir)
        if not left:
            return
        time.sleep(0.1)
    raise AssertionError(f"processes of {out_dir} still there after {timeout} s: {left}")


def history(d, jid):
    """What a person can read back of a job: groups, freeze decisions, losses, evaluations, drift steps."""
    groups = d.get(f"/api/v1/jobs/{jid}/groups")[1]["groups"]
    freezes = [(f["step"], sorted(f["frozen_keys"])) for f in d.get(f"/api/v1/jobs/{jid}/freezes")[1]["freezes"]]
    loss = d.get(f"/api/v1/jobs/{jid}/metrics?name=loss&max_points=0")[1]["metrics"]["loss"]
    job = d.get(f"/api/v1/jobs/{jid}")[1]
    evals = sorted((e["dataset"], e["step"], e["loss"], e["iou"]) for e in job["evals"])
    return {"job": job, "groups": groups, "freezes": freezes, "loss": loss, "evals": evals}


def drift_steps(d, jid, key):
    return d.get(f"/api/v1/jobs/{jid}/drift?group={key}&max_points=0")[1]["series"][0]["step"]


def close(a, b, tol=LOSS_TOL):
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def run_one_process(tmp, s):
    """A 2-rank spec computed in one process: the freeze decisions 2 ranks must take."""
    (tmp / "spec.json").write_text(json.dumps(s))
    r = subprocess.run([FISHERD, "train", str(tmp / "spec.json"), "--one-process", "--out", str(tmp / "out")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp / "out" / "summary.json").read_text())
    freezes = [(f["step"], sorted(f["frozen"])) for f in summary["freezes"]]
    assert any(step > 0 and frozen for step, frozen in freezes), "nothing froze: the comparison would prove little"
    return {"freezes": freezes, "final_val": summary["final_val"]}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    return run_one_process(tmp_path_factory.mktemp("one"), spec(2))


# ------------------------------------------------------------ with Open MPI


@needs_mpi
def test_two_ranks_store_what_one_process_would(tmp_path, one_process):
    d = Daemon(tmp_path / "var").start()
    try:
        status, local = d.post("/api/v1/jobs", spec(1))
        assert status == 201, local
        status, job = d.post("/api/v1/jobs", spec(2))
        assert status == 201, job
        assert job["ranks"] == 2 and job["spec"]["distributed"]["ranks"] == 2
        done = d.wait(job["id"], timeout=90)
        assert done["status"] == "succeeded", (done, d.log.read_text()[-3000:])
        assert done["progress"]["step"] == STEPS and done["result"]["steps_done"] == STEPS
        assert [e["status"] for e in done["events"]] == ["queued", "running", "succeeded"]
        listed = d.get("/api/v1/jobs")[1]["jobs"]
        assert [j["ranks"] for j in listed if j["id"] == job["id"]] == [2]
        assert (Path(done["out_dir"]) / "spec.json").is_file()

        got = history(d, job["id"])
        assert d.wait(local["id"])["status"] == "succeeded"
        ref = history(d, local["id"])
        assert ref["job"]["ranks"] == 1
        # the decisions themselves, exactly: the same steps freeze the same groups
        assert got["freezes"] == one_process["freezes"]
        frozen = {k for _, f in got["freezes"] for k in f}
        assert [not g["live"] for g in got["groups"]] == [g["key"] in frozen for g in got["groups"]]
        fv = one_process["final_val"]
        assert close(got["job"]["result"]["val"]["loss"], fv["loss"]), (got["job"]["result"]["val"], fv)
        # read back like a local job's: the same groups, every step's loss,
        # every drift measurement, the evaluations at the same steps
        assert [g["key"] for g in got["groups"]] == [g["key"] for g in ref["groups"]]
        assert [g["size"] for g in got["groups"]] == [g["size"] for g in ref["groups"]]
        assert [set(f) for f in d.get(f"/api/v1/jobs/{job['id']}/freezes")[1]["freezes"]] == \
            [set(f) for f in d.get(f"/api/v1/jobs/{local['id']}/freezes")[1]["freezes"]]
        assert got["loss"]["step"] == ref["loss"]["step"] == list(range(1, STEPS + 1))
        bad = [(s, a, b) for s, a, b in zip(got["loss"]["step"], got["loss"]["value"], ref["loss"]["value"])
               if not close(a, b)]
        assert not bad, f"losses beyond {LOSS_TOL} relative: {bad[:5]}"
        # a group that lived as long in both: measured at the same steps
        key = max((a for a, b in zip(got["groups"], ref["groups"]) if a["frozen_at"] == b["frozen_at"]),
                  key=lambda g: g["frozen_at"] if g["frozen_at"] is not None else STEPS)["key"]
        steps = drift_steps(d, job["id"], key)
        assert steps == drift_steps(d, local["id"], key) and steps[:5] == [0, 2, 4, 6, 8], steps
        assert [e[:2] for e in got["evals"]] == [e[:2] for e in ref["evals"]]
        status, body, _ = d.request("GET", f"/api/v1/jobs/{job['id']}/model", raw=True)
        assert status == 200 and len(body) > 1000
    finally:
        d.stop()


def start_long_job(d):
    """A 2-rank job that will not end by itself, once it has made 3 steps:
    (its id, its out_dir, which names its processes)."""
    status, job = d.post("/api/v1/jobs", spec(2, steps=100000))
    assert status == 201, job
    return job["id"], d.wait_step(job["id"], 3, timeout=60)["out_dir"]


@needs_mpi
def test_cancel_ends_every_process_of_the_job(tmp_path):
    d = Daemon(tmp_path / "var").start()
    try:
        jid, out_dir = start_long_job(d)
        procs = processes_of(out_dir)
        assert len([p for p in procs if rank_of(p) is not None]) == 2, procs
        assert d.post(f"/api/v1/jobs/{jid}/cancel", None)[0] == 202
        done = d.wait(jid, timeout=40)
        assert done["status"] == "cancelled", done
        assert done["checkpoint"] and done["checkpoint"]["step"] >= 3  # rank 0 checkpointed as it stopped
        wait_gone(out_dir, timeout=5)
    finally:
        d.stop()


@needs_mpi
def test_a_rank_killed_fails_the_job_naming_it_and_the_daemon_carries_on(tmp_path):
    d = Daemon(tmp_path / "var").start()
    try:
        jid, out_dir = start_long_job(d)
        rank1 = [p for p in processes_of(out_dir) if rank_of(p) == 1]
        assert len(rank1) == 1
        os.kill(rank1[0], signal.SIGKILL)
        done = d.wait(jid, timeout=40)
        assert done["status"] == "failed", done
        host = socket.gethostname().split(".")[0]
        assert "rank 1" in done["reason"] and host in done["reason"], done["reason"]
        print("reason:", done["reason"])
        wait_gone(out_dir, timeout=10)
        assert d.get("/healthz")[0] == 200
        status, nxt = d.post("/api/v1/jobs", spec(2, steps=4))
        assert d.wait(nxt["id"], timeout=60)["status"] == "succeeded"
    finally:
        d.stop()


@needs_mpi
def test_daemon_stopped_then_killed_mid_run_resumes_the_job_with_no_hole(tmp_path):
    # long enough (~2 s here) that both interruptions surely land mid-run
    steps = 150
    s = spec(2, steps=steps, checkpoint_interval=5)
    uninterrupted = run_one_process(tmp_path, s)
    data = tmp_path / "var"
    d = Daemon(data).start()
    status, job = d.post("/api/v1/jobs", s)
    assert status == 201, job
    out_dir = d.wait_step(job["id"], 12, timeout=60)["out_dir"]
    assert len(processes_of(out_dir)) >= 3  # mpirun and both ranks
    # SIGTERM: the cancel goes down the stream, rank 0 checkpoints, the job is interrupted
    t0 = time.time()
    assert d.stop() == 0 and time.time() - t0 < 10
    wait_gone(out_dir, timeout=5)
    d = Daemon(data).start()
    stopped_at = d.get(f"/api/v1/jobs/{job['id']}")[1]
    assert stopped_at["checkpoint"]["step"] >= 12, stopped_at
    d.wait_step(job["id"], stopped_at["checkpoint"]["step"] + 20, timeout=60)
    # SIGKILL: mpirun dies with the daemon (PDEATHSIG), the ranks with mpirun
    d.stop(signal.SIGKILL)
    wait_gone(out_dir, timeout=5)
    d = Daemon(data).start()
    try:
        done = d.wait(job["id"], timeout=90)
        assert done["status"] == "succeeded", (done, d.log.read_text()[-3000:])
        statuses = [e["status"] for e in done["events"]]
        assert statuses == ["queued", "running", "interrupted", "queued", "running", "interrupted", "queued",
                            "running", "succeeded"], statuses
        resumed = [int(e["reason"].rsplit(" ", 1)[1]) for e in done["events"]
                   if "continues from step" in (e["reason"] or "")]
        assert len(resumed) == 2 and 0 < resumed[0] < resumed[1] < steps, done["events"]
        got = history(d, job["id"])
        assert got["loss"]["step"] == list(range(1, steps + 1))  # no hole, no step twice
        last = max(got["groups"], key=lambda g: g["frozen_at"] if g["frozen_at"] is not None else steps)
        upto = last["frozen_at"] if last["frozen_at"] is not None else steps
        assert drift_steps(d, job["id"], last["key"])[:upto // 2] == list(range(0, upto, 2))
        # resumed exactly as if never stopped: the uninterrupted run's decisions
        assert got["freezes"] == uninterrupted["freezes"]
        assert close(got["job"]["result"]["val"]["loss"], uninterrupted["final_val"]["loss"])
    finally:
        d.stop()


# ------------------------------------------------------------ refusals


def test_bad_hostfile_or_no_mpirun_is_a_400_naming_the_field(tmp_path):
    hosts = tmp_path / "hostfiles"
    hosts.mkdir()
    (hosts / "pair").write_text("localhost slots=2\n")
    (hosts / "sub").mkdir()
    (hosts / "escape").symlink_to("/etc/hostname")
    d = Daemon(tmp_path / "var", "--hostfile-dir", str(hosts), "--mpirun", str(tmp_path / "no-mpirun")).start()
    try:
        for name, says in [("missing", "no such file"), ("escape", "leads outside"), ("sub", "not a regular file"),
                           ("../pair", "plain file name")]:
            status, body = d.post("/api/v1/jobs", spec(2, distributed={"ranks": 2, "hostfile": name}))
            assert status == 400 and body["error"]["field"] == "distributed.hostfile", body
            assert says in body["error"]["message"], body
        status, body = d.post("/api/v1/jobs", spec(2))
        assert status == 400 and body["error"]["field"] == "distributed.ranks", body
        assert "mpirun" in body["error"]["message"]
        assert d.get("/api/v1/jobs")[1]["jobs"] == []  # nothing stored
    finally:
        d.stop()
    d = Daemon(tmp_path / "var2").start()  # no --hostfile-dir: this machine only
    try:
        status, body = d.post("/api/v1/jobs", spec(2, distributed={"ranks": 2, "hostfile": "pair"}))
        assert status == 400 and body["error"]["field"] == "distributed.hostfile", body
        assert "--hostfile-dir" in body["error"]["message"]
    finally:
        d.stop()


# ------------------------------------------------------------ a stand-in mpirun

FAKE_MPIRUN = """#!%s
# A stand-in for mpirun: records its command line, then does what the
# job's name asks.
import json, os, sys, time
args = sys.argv[1:]
out = args[args.index("--out") + 1]
name = json.load(open(args[args.index("--spec") + 1]))["name"]
json.dump({"argv": args, "pid": os.getpid(), "pgid": os.getpgid(0)}, open(os.path.join(out, "fake.json"), "w"))
if name == "garbage":
    print("hello, this is not a job stream", flush=True)
    time.sleep(60)
elif name == "stubborn":
    # deaf to the cancel and to SIGTERM, and not alone in its process group
    import signal, subprocess
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen(["sleep", "600"])
    open(os.path.join(out, "child.pid"), "w").write(str(child.pid))
    time.sleep(600)
elif name.startswith("relayed"):
    # rank 0 reports rank 1's failure as the library words it; rank 1's own line says why
    relay = ("rank 0 on node7: rank 1 of 2 failed setting up (model, data or checkpoint) (its own error says "
             "why); every rank stops")
    sys.stderr.write("fisherd worker: " + relay + "\\n")
    if name == "relayed-done":
        print(json.dumps({"kind": "done", "rc": -1, "error": relay}), flush=True)
    sys.stderr.write("fisherd worker: rank 1 on node8: cannot open /data/x.png: No such file or directory\\n")
    sys.exit(1)
elif name == "worker-fails":
    sys.stderr.write("fisherd worker: rank 1 on node7: cannot read the dataset\\n")
    sys.exit(1)
elif name == "rank-killed":
    sys.stderr.write("-" * 74 + "\\nmpirun noticed that process rank 1 with PID 0 on node node9 exited on "
                     "signal 9 (Killed).\\n" + "-" * 74 + "\\n")
    sys.exit(137)
else:
    sys.stderr.write("something odd happened\\n")
    sys.exit(3)
""" % sys.executable


def stand_in_mpirun(tmp_path):
    """FAKE_MPIRUN as an executable in tmp_path; its path."""
    fake = tmp_path / "mpirun"
    fake.write_text(FAKE_MPIRUN)
    fake.chmod(0o755)
    return fake


def test_whatever_mpirun_does_the_job_ends_saying_why(tmp_path):
    fake = stand_in_mpirun(tmp_path)
    hosts = tmp_path / "hostfiles"
    hosts.mkdir()
    (hosts / "pair").write_text("node7 slots=1\nnode9 slots=1\n")
    d = Daemon(tmp_path / "var", "--mpirun", str(fake), "--hostfile-dir", str(hosts), "--threads", "4").start()
    try:
        cases = [("garbage", "not a job stream"),
                 ("worker-fails", "rank 1 on node7: cannot read the dataset"),
                 ("rank-killed", "rank 1 on node9 exited on signal 9 (Killed)"),
                 ("odd", "mpirun exited with status 3: something odd happened"),
                 ("relayed", "rank 1 on node8: cannot open /data/x.png: No such file or directory"),
                 ("relayed-done", "rank 1 on node8: cannot open /data/x.png: No such file or directory")]
        jobs = {}
        for name, _ in cases:
            status, job = d.post("/api/v1/jobs", spec(2, name=name, threads=3))
            assert status == 201, job
            jobs[name] = job["id"]
        status, job = d.post("/api/v1/jobs", spec(2, name="odd", threads=3,
                                                  distributed={"ranks": 2, "hostfile": "pair"}))
        jobs["hostfile"] = job["id"]
        for name, says in cases + [("hostfile", "something odd")]:
            done = d.wait(jobs[name], timeout=30)
            assert done["status"] == "failed" and says in done["reason"], (name, done["reason"])
        assert d.get("/healthz")[0] == 200

        def launched(name):
            out = Path(d.get(f"/api/v1/jobs/{jobs[name]}")[1]["out_dir"])
            return json.loads((out / "fake.json").read_text()), out

        seen, out = launched("worker-fails")
        argv = seen["argv"]
        assert seen["pgid"] == seen["pid"]  # a process group of its own
        assert argv[argv.index("-np") + 1] == "2"
        assert ("--allow-run-as-root" in argv) == (os.geteuid() == 0)
        assert "--oversubscribe" in argv and "--hostfile" not in argv
        assert argv[argv.index("--bind-to") + 1] == "none"
        i = argv.index("worker")
        assert os.path.samefile(argv[i - 1], os.environ.get("FISHERD", argv[i - 1]))
        assert argv[argv.index("--spec") + 1] == str(out / "spec.json")
        assert argv[argv.index("--out") + 1] == str(out)
        assert "--resume" not in argv
        # this machine: the daemon's 4 threads over 2 ranks, though the spec asks for 3
        assert argv[argv.index("--threads") + 1] == "2"
        assert json.loads((out / "spec.json").read_text())["distributed"]["ranks"] == 2

        argv = launched("hostfile")[0]["argv"]
        assert argv[argv.index("--hostfile") + 1] == str((hosts / "pair").resolve())
        assert "--oversubscribe" not in argv
        assert argv[argv.index("--threads") + 1] == "3"  # each rank on its own host

        # the stand-in that streamed garbage and then slept is gone
        pid = launched("garbage")[0]["pid"]
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    finally:
        d.stop()


def test_a_cancel_the_mpi_job_ignores_ends_in_sigkill_to_its_process_group(tmp_path):
    """~35 s: the grace of a cancel (30 s), then SIGTERM, then SIGKILL 5 s later."""
    fake = stand_in_mpirun(tmp_path)
    d = Daemon(tmp_path / "var", "--mpirun", str(fake)).start()
    try:
        status, job = d.post("/api/v1/jobs", spec(2, name="stubborn"))
        out = Path(job["out_dir"] or "")
        deadline = time.time() + 10
        while not (out / "child.pid").exists() and time.time() < deadline:
            out = Path(d.get(f"/api/v1/jobs/{job['id']}")[1]["out_dir"] or "")
            time.sleep(0.1)
        pids = [json.loads((out / "fake.json").read_text())["pid"], int((out / "child.pid").read_text())]
        t0 = time.time()
        assert d.post(f"/api/v1/jobs/{job['id']}/cancel", None)[0] == 202
        time.sleep(2)
        assert d.get(f"/api/v1/jobs/{job['id']}")[1]["status"] == "running"  # still within the grace
        assert d.get("/healthz")[0] == 200
        done = d.wait(job["id"], timeout=60)
        took = time.time() - t0
        assert done["status"] == "cancelled", done
        assert 30 <= took < 50, took
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        log = d.log.read_text()
        assert "did not end within 30 s of the cancel: SIGTERM" in log and "ignored SIGTERM: SIGKILL" in log
    finally:
        d.stop()


def test_an_mpirun_gone_by_the_time_the_job_starts_fails_it_saying_so(tmp_path):
    fake = stand_in_mpirun(tmp_path)
    d = Daemon(tmp_path / "var", "--mpirun", str(fake)).start()
    try:
        status, first = d.post("/api/v1/jobs", spec(0, name="local", steps=100000))
        d.wait_step(first["id"], 1)
        status, job = d.post("/api/v1/jobs", spec(2))  # accepted: mpirun is there
        assert status == 201 and job["status"] == "queued", job
        fake.unlink()
        assert d.post(f"/api/v1/jobs/{first['id']}/cancel", None)[0] == 202
        done = d.wait(job["id"], timeout=30)
        assert done["status"] == "failed", done
        assert f"mpirun '{fake}' not found" in done["reason"] and "--mpirun" in done["reason"], done["reason"]
        assert d.get("/healthz")[0] == 200
    finally:
        d.stop()
