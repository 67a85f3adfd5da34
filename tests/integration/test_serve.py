"""Black-box tests of `fisherd serve`: the REST API over HTTP, as curl sees it.

Each test starts build/fisherd serve (FISHERD overrides the path) on a free
127.0.0.1 port with a temporary data dir, talks to it with urllib, and
stops it by its PID. Jobs are tiny (SegFormer `tiny` at 32x32 on a few
synthetic images), so they finish in well under a second of training.
"""
import json
import os
import signal
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

FISHERD = os.path.abspath(os.environ.get("FISHERD", Path(__file__).resolve().parents[2] / "build" / "fisherd"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self, data_dir, *extra, host="127.0.0.1"):
        self.data_dir, self.extra, self.host = Path(data_dir), extra, host
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = self.data_dir.parent / f"fisherd-{self.port}.log"
        self.proc = None

    def start(self, untouched=False):
        """Starts fisherd and waits until it answers /healthz — or, untouched,
        until it logs that it listens, so that no request has run before the
        test's first (which threads the daemon has started can matter)."""
        self.logf = open(self.log, "ab")
        logged = self.log.stat().st_size
        self.proc = subprocess.Popen([FISHERD, "serve", "--listen", f"{self.host}:{self.port}",
                                      "--data-dir", str(self.data_dir), *self.extra],
                                     stdout=self.logf, stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"fisherd exited with {self.proc.returncode}:\n{self.log.read_text()}")
            if untouched:
                if b" listening on " in self.log.read_bytes()[logged:]:
                    return self
                time.sleep(0.05)
                continue
            try:
                if self.get("/healthz")[0] == 200:
                    return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("fisherd did not answer /healthz within 20 s")

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"fisherd did not stop within {timeout} s after {sig!r}")
        self.logf.close()
        return self.proc.returncode

    def request(self, method, path, body=None, headers=None, raw=False):
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        h = {"Content-Type": "application/json"} if data is not None else {}
        h.update(headers or {})
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                payload = r.read()
                status, hdrs = r.status, r.headers
        except urllib.error.HTTPError as e:
            payload, status, hdrs = e.read(), e.code, e.headers
        if raw:
            return status, payload, hdrs
        return status, (json.loads(payload) if payload else None)

    def get(self, path):
        return self.request("GET", path)

    def post(self, path, body):
        return self.request("POST", path, body)

    def wait_step(self, job, step, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            j = self.get(f"/api/v1/jobs/{job}")[1]
            if j["progress"]["step"] >= step:
                return j
            time.sleep(0.05)
        raise AssertionError(f"{job} did not reach step {step} in {timeout} s")

    def wait(self, job, statuses=("succeeded", "failed", "cancelled"), timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            status, j = self.get(f"/api/v1/jobs/{job}")
            assert status == 200, j
            if j["status"] in statuses:
                return j
            time.sleep(0.1)
        raise AssertionError(f"{job} still {j['status']} after {timeout} s")


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path / "var").start()
    yield d
    d.stop()


def small_job(**over):
    spec = {"name": "small", "image_size": 32, "batch_size": 2, "steps": 20, "strategy": "fisher",
            "fisher": {"ema_interval": 2, "freeze_interval": 10},
            "data": {"train": {"synthetic": {"domain": "concrete", "count": 16, "seed": 1}},
                     "val": {"synthetic": {"domain": "concrete", "count": 4, "seed": 2}}}}
    spec.update(over)
    if spec.get("strategy") != "fisher":
        spec.pop("fisher", None)
    return spec


def test_a_job_runs_and_everything_it_did_can_be_read_back(daemon):
    status, job = daemon.post("/api/v1/jobs", small_job(name="cracks-fisher"))
    assert status == 201, job
    assert job["id"].startswith("j_") and job["status"] in ("queued", "running")
    assert job["spec"]["strategy"] == "fisher" and job["spec"]["fisher"]["ema_interval"] == 2
    done = daemon.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"]["step"] == 20 and done["result"]["steps_done"] == 20
    assert [e["status"] for e in done["events"]] == ["queued", "running", "succeeded"]
    assert done["evals"] and done["evals"][0]["dataset"] == "val"

    status, groups = daemon.get(f"/api/v1/jobs/{job['id']}/groups")
    assert status == 200
    chunks = groups["groups"]
    assert len(chunks) == done["chunks"]["total"] > 100
    assert sum(g["size"] for g in chunks) == done["params"]["total"]
    assert sum(g["live"] for g in chunks) == done["chunks"]["live"]

    # every measurement is stored: steps 0, 2, …, 18 for a group that never froze
    live = next(g for g in chunks if g["live"])
    status, csv = daemon.request("GET", f"/api/v1/jobs/{job['id']}/drift?format=csv&group={live['key']}", raw=True)[:2]
    assert status == 200
    lines = csv.decode().strip().splitlines()
    assert lines[0] == "key,idx,step,js,js_ema"
    assert [int(l.split(",")[2]) for l in lines[1:]] == list(range(0, 20, 2))
    status, series = daemon.get(f"/api/v1/jobs/{job['id']}/drift?group={live['key']}&max_points=4")
    s = series["series"][0]
    assert s["points"] == 10 and len(s["step"]) <= 4 and s["step"][0] == 0 and s["step"][-1] == 18

    status, freezes = daemon.get(f"/api/v1/jobs/{job['id']}/freezes")
    decisions = freezes["freezes"]
    assert decisions and decisions[-1]["chunks_live"] == done["chunks"]["live"]
    frozen_keys = {k for d in decisions for k in d["frozen_keys"]}
    assert frozen_keys == {g["key"] for g in chunks if not g["live"]}

    status, metrics = daemon.get(f"/api/v1/jobs/{job['id']}/metrics?name=loss&max_points=0")
    assert metrics["metrics"]["loss"]["step"] == list(range(1, 21))

    status, heat = daemon.get(f"/api/v1/jobs/{job['id']}/heatmap?max_points=4")
    assert status == 200 and len(heat["groups"]) == len(chunks)
    assert all(len(row) == len(heat["step_from"]) <= 4 for row in heat["values"])

    status, body, hdrs = daemon.request("GET", f"/api/v1/jobs/{job['id']}/model", raw=True)
    assert status == 200 and hdrs["Content-Type"] == "application/octet-stream"
    header_len = struct.unpack("<Q", body[:8])[0]
    header = json.loads(body[8:8 + header_len])
    assert "decode_head.classifier.weight" in header

    status, models = daemon.get("/api/v1/models")
    assert any(m["job"] == job["id"] for m in models["models"])


@pytest.mark.parametrize("spec, field, says", [
    ({"nmae": "typo"}, "nmae", "unknown"),
    ({"batch_size": "four"}, "batch_size", ""),
    ({"batch_size": 0}, "batch_size", ""),
    ({"optim": {"lr": -1}}, "optim.lr", ""),
    ({"strategy": "lora"}, "strategy", "fisher"),
    ({"strategy": "fisher", "fisher": {"estimator": "magic"}}, "fisher.estimator", "reference"),
    ({"fisher": {"lambda": 2}}, "fisher", "only used with"),
    ({"base_model": "m_99"}, "base_model", "no model m_99"),
    ({"base_model": {"job": "j_99"}}, "base_model.job", "no job j_99"),
    ({"base_model": {"path": "/etc/passwd"}}, "base_model.path", "register"),
    ({"data": {"train": {"path": "/etc"}}}, "data.train.path", "--data-root"),
    ({"data": {"train": {"synthetic": {"domain": "mars"}}}}, "data.train.synthetic.domain", "concrete"),
    ({"data": {"val": {"path": "../../etc"}}}, "data.val.path", "--data-root"),
    ({"data": {"zero_shot": [{"synthetic": {"domain": "wall"}}, {"path": "nowhere"}]}}, "data.zero_shot[1].path", ""),
    ({"data": {"zero_shot": {"path": "x"}}}, "data.zero_shot", ""),
    ({"data": {"train": {"synthetic": {"count": 0}}}}, "data.train.synthetic.count", ""),
    ({"image_size": 16}, "image_size", ""),
    ({"image_size": 128.5}, "image_size", ""),
    ({"steps": 10, "epochs": 2}, "steps", "not both"),
    ({"steps": -5}, "steps", ""),
    ({"optim": {"betas": [0.9]}}, "optim.betas", ""),
    ({"optim": {"eps": "small"}}, "optim.eps", ""),
    ({"optim": {"momentum": 0.9}}, "optim.momentum", ""),
    ({"loss": {"dice_weight": -1}}, "loss.dice_weight", ""),
    ({"strategy": "fisher", "fisher": {"slice_mode": "diagonal"}}, "fisher.slice_mode", ""),
    ({"strategy": "fisher", "fisher": {"slice_blocks": 0}}, "fisher.slice_blocks", ""),
    ({"strategy": "fisher", "fisher": {"ema_interval": 0}}, "fisher.ema_interval", ""),
    ({"strategy": "fisher", "fisher": {"js_mode": "cosine"}}, "fisher.js_mode", ""),
    ({"strategy": "fisher", "fisher": {"metric": "max"}}, "fisher.metric", ""),
    ({"strategy": "fisher", "fisher": {"gammas": [0.8]}}, "fisher.gammas", ""),
    ({"base_model": {"arch": "resnet"}}, "base_model.arch", "segformer"),
    ({"base_model": {"config": "mit-b9"}}, "base_model.config", ""),
    ({"base_model": {"job": "j_1", "config": "tiny"}}, "base_model.job", "alone"),
    ({"base_model": 7}, "base_model", ""),
    ({"batch_size": 1e9}, "batch_size", ""),
    ({"threads": 0}, "threads", ""),
])
def test_bad_specs_get_a_400_that_names_the_field_and_nothing_is_stored(daemon, spec, field, says):
    status, body = daemon.post("/api/v1/jobs", spec)
    assert status == 400, body
    err = body["error"]
    assert err["field"] == (field or None), err
    assert says in err["message"], err
    assert daemon.get("/api/v1/jobs")[1]["jobs"] == []


def test_http_errors_have_the_right_status_and_shape(daemon):
    status, body, _ = daemon.request("POST", "/api/v1/jobs", b"{not json", raw=True)
    assert status == 400 and json.loads(body)["error"]["code"]
    status, body, _ = daemon.request("POST", "/api/v1/jobs", b"{}", headers={"Content-Type": "text/plain"}, raw=True)
    assert status == 415
    status, body, _ = daemon.request("POST", "/api/v1/jobs", b"[" + b"1," * 200000 + b"1]", raw=True)
    assert status == 413
    status, body = daemon.get("/api/v1/nothing")
    assert status == 404 and body["error"]["code"]
    status, body, hdrs = daemon.request("PUT", "/api/v1/jobs", b"{}", raw=True)
    assert status == 405 and "POST" in hdrs["Allow"]
    status, body = daemon.get("/api/v1/jobs/j_12345")
    assert status == 404 and "j_12345" in body["error"]["message"]
    status, body = daemon.get("/api/v1/jobs/banana")
    assert status == 404
    status, body = daemon.get("/api/v1/jobs?limit=0")
    assert status == 400 and body["error"]["field"] == "limit"
    status, body = daemon.get("/api/v1/jobs?colour=red")
    assert status == 400 and body["error"]["field"] == "colour"
    status, body = daemon.get("/api/v1/jobs?status=sleeping")
    assert status == 400


def test_pagination_walks_every_job_once_newest_first_with_filters(daemon):
    ids = []
    for i in range(5):
        # steps far beyond what runs: they wait queued behind the first
        status, job = daemon.post("/api/v1/jobs", small_job(name=f"page-{i}", steps=100000))
        ids.append(job["id"])
    seen, cursor = [], None
    while True:
        status, page = daemon.get("/api/v1/jobs?limit=2" + (f"&cursor={cursor}" if cursor else ""))
        assert status == 200 and len(page["jobs"]) <= 2
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ids[::-1]
    status, page = daemon.get("/api/v1/jobs?status=queued")
    assert {j["id"] for j in page["jobs"]} == set(ids[1:])
    status, page = daemon.get("/api/v1/jobs?name=PAGE-3")
    assert [j["id"] for j in page["jobs"]] == [ids[3]]
    for job in ids:
        assert daemon.post(f"/api/v1/jobs/{job}/cancel", None)[0] == 202
    for job in ids:
        assert daemon.wait(job)["status"] == "cancelled"


def test_cancel_and_delete(daemon):
    status, job = daemon.post("/api/v1/jobs", small_job(steps=100000))
    daemon.wait_step(job["id"], 3)
    status, body = daemon.request("DELETE", f"/api/v1/jobs/{job['id']}")
    assert status == 409, body  # a running job is cancelled first
    assert daemon.post(f"/api/v1/jobs/{job['id']}/cancel", None)[0] == 202
    done = daemon.wait(job["id"])
    assert done["status"] == "cancelled" and done["checkpoint"]["step"] >= 3
    assert daemon.post(f"/api/v1/jobs/{job['id']}/cancel", None)[0] == 409
    assert daemon.request("DELETE", f"/api/v1/jobs/{job['id']}")[0] == 200
    assert daemon.get(f"/api/v1/jobs/{job['id']}")[0] == 404
    assert daemon.get(f"/api/v1/jobs/{job['id']}/groups")[0] == 404


def test_a_job_waits_for_the_model_of_another(daemon):
    status, first = daemon.post("/api/v1/jobs", small_job(name="pretrain", steps=60, strategy="full"))
    status, second = daemon.post("/api/v1/jobs", small_job(name="finetune", base_model={"job": first["id"]}))
    assert status == 201, second
    assert second["wait_for_job"] == first["id"]
    done = daemon.wait(second["id"])
    assert done["status"] == "succeeded", done
    first_done = daemon.get(f"/api/v1/jobs/{first['id']}")[1]
    assert first_done["finished_at"] <= done["started_at"]
    # a job that waits for a failed one fails, saying why
    status, bad = daemon.post("/api/v1/jobs", small_job(name="doomed", steps=100000))
    status, waiter = daemon.post("/api/v1/jobs", small_job(name="waiter", base_model={"job": bad["id"]}))
    assert daemon.get(f"/api/v1/jobs/{waiter['id']}")[1]["reason"].startswith("waits for the model of")
    daemon.post(f"/api/v1/jobs/{bad['id']}/cancel", None)
    failed = daemon.wait(waiter["id"])
    assert failed["status"] == "failed" and bad["id"] in failed["reason"], failed


def restart(d):
    again = Daemon(d.data_dir)
    again.port, again.base = d.port, d.base
    return again.start()


def assert_one_continuous_history(d, job, steps):
    done = d.wait(job)
    assert done["status"] == "succeeded", done
    statuses = [e["status"] for e in done["events"]]
    assert statuses[:3] == ["queued", "running", "interrupted"] and statuses[-2:] == ["running", "succeeded"]
    # every loss point once, every drift measurement once, in order
    metrics = d.get(f"/api/v1/jobs/{job}/metrics?name=loss&max_points=0")[1]
    assert metrics["metrics"]["loss"]["step"] == list(range(1, steps + 1))
    key = next(g["key"] for g in d.get(f"/api/v1/jobs/{job}/groups")[1]["groups"] if g["live"])
    series = d.get(f"/api/v1/jobs/{job}/drift?group={key}&max_points=0")[1]["series"][0]
    assert series["step"] == list(range(0, steps, 2))
    return done


def test_sigterm_stops_within_10_s_and_the_next_start_resumes_the_job(tmp_path):
    d = Daemon(tmp_path / "var").start()
    status, job = d.post("/api/v1/jobs", small_job(steps=400))
    d.wait_step(job["id"], 5)
    t0 = time.time()
    assert d.stop(signal.SIGTERM) == 0
    assert time.time() - t0 < 10
    stopped = None
    d2 = restart(d)
    try:
        done = assert_one_continuous_history(d2, job["id"], 400)
        resumed = [e for e in done["events"] if e["status"] == "queued" and e["reason"]]
        assert resumed and resumed[-1]["reason"].startswith("continues from step ")
        stopped = int(resumed[-1]["reason"].split()[-1])
        assert 5 <= stopped < 400, stopped  # from where it stopped, not from the start
    finally:
        d2.stop()


def test_sigkill_then_restart_resumes_from_the_last_checkpoint(tmp_path):
    d = Daemon(tmp_path / "var").start()
    status, job = d.post("/api/v1/jobs", small_job(steps=400, checkpoint_interval=50))
    d.wait_step(job["id"], 120)
    d.stop(signal.SIGKILL)
    d2 = restart(d)
    try:
        done = assert_one_continuous_history(d2, job["id"], 400)
        reason = [e for e in done["events"] if e["status"] == "queued" and e["reason"]][-1]["reason"]
        assert reason in ("continues from step 100", "continues from step 150", "continues from step 200"), reason
    finally:
        d2.stop()


def test_events_stream_until_the_job_ends(daemon):
    status, job = daemon.post("/api/v1/jobs", small_job(steps=200))
    req = urllib.request.Request(daemon.base + f"/api/v1/jobs/{job['id']}/events")
    names = []
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        for raw in r:  # ends when the server closes the stream
            line = raw.decode().rstrip("\n")
            if line.startswith("event:"):
                names.append(line.split(":", 1)[1].strip())
    assert names[0] == "job"
    assert "progress" in names and "drift" in names and "freeze" in names
    assert names[-1] == "status"
    assert daemon.get(f"/api/v1/jobs/{job['id']}")[1]["status"] == "succeeded"


def test_a_client_leaving_an_event_stream_is_not_an_error(tmp_path):
    d = Daemon(tmp_path / "var").start()
    try:
        with socket.create_connection(("127.0.0.1", d.port)) as s:
            s.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: fisherd\r\n\r\n")
            assert b"text/event-stream" in s.recv(4096)
        time.sleep(0.5)  # the stream's thread sees the socket close at once; give the log a moment
        assert d.get("/healthz")[0] == 200
    finally:
        d.stop()
    errors = [line for line in d.log.read_text().splitlines() if line.startswith("error")]
    assert not errors, errors


def api_routes():
    """(method, pattern, flags) of every route, from the table api.c serves."""
    import re
    src = Path(__file__).resolve().parents[2].joinpath("api", "routes.h").read_text()
    found = re.findall(r'X\("(GET|POST|DELETE|PUT)", "([^"]+)", \w+, ([\w|]+)', src)
    assert len(found) >= 20, f"api/routes.h's table not understood: {found}"
    return found


def test_openapi_describes_every_route(daemon):
    status, doc = daemon.get("/api/v1/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    for method, path, _ in api_routes():
        assert path in doc["paths"], f"{path} missing from api/openapi.json"
        assert method.lower() in doc["paths"][path], f"{method} {path} missing from api/openapi.json"


def test_a_newer_database_is_refused(tmp_path):
    d = Daemon(tmp_path / "var").start()
    d.stop()
    import sqlite3
    con = sqlite3.connect(tmp_path / "var" / "fisherd.db")
    con.execute("PRAGMA user_version = 999")
    con.commit()
    con.close()
    r = subprocess.run([FISHERD, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "var")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "newer" in r.stderr and "999" in r.stderr


def test_listening_beyond_loopback_needs_a_token(tmp_path):
    r = subprocess.run([FISHERD, "serve", "--listen", "0.0.0.0:0", "--data-dir", str(tmp_path / "var")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "token" in r.stderr


def test_two_jobs_with_one_slot_run_in_order(daemon):
    status, a = daemon.post("/api/v1/jobs", small_job(name="first", steps=60))
    status, b = daemon.post("/api/v1/jobs", small_job(name="second", steps=20))
    assert daemon.get(f"/api/v1/jobs/{b['id']}")[1]["status"] == "queued"
    done_a, done_b = daemon.wait(a["id"]), daemon.wait(b["id"])
    assert done_a["status"] == done_b["status"] == "succeeded"
    assert done_a["finished_at"] <= done_b["started_at"]


def test_a_model_upload_is_validated_before_it_is_registered(daemon, tmp_path):
    status, job = daemon.post("/api/v1/jobs", small_job(steps=10, strategy="full"))
    daemon.wait(job["id"])
    status, weights, _ = daemon.request("GET", f"/api/v1/jobs/{job['id']}/model", raw=True)
    octet = {"Content-Type": "application/octet-stream"}
    before = daemon.get("/api/v1/models")[1]["models"]
    for bad, says in [(weights[: len(weights) // 2], "truncated"), (b"\x00" * 64, ""),
                      (weights[:8] + b"[" + weights[9:], "")]:
        status, body, _ = daemon.request("POST", "/api/v1/models?name=broken", bad, headers=octet, raw=True)
        assert status == 400, body
        assert json.loads(body)["error"]["code"] == "invalid_model"
    assert daemon.request("POST", "/api/v1/models", weights, headers={"Content-Type": "text/plain"}, raw=True)[0] == 415
    assert daemon.get("/api/v1/models")[1]["models"] == before
    assert not list((daemon.data_dir / "models").glob("*")), "a refused upload left a file behind"
    status, body, hdrs = daemon.request("POST", "/api/v1/models?name=mine", weights, headers=octet, raw=True)
    assert status == 201, body
    model = json.loads(body)
    assert hdrs["Location"] == f"/api/v1/models/{model['id']}" and model["name"] == "mine"
    assert model["bytes"] == len(weights) and model["parameters"] > 0
    status, tuned = daemon.post("/api/v1/jobs", small_job(name="from-upload", base_model=model["id"]))
    assert status == 201, tuned
    assert daemon.wait(tuned["id"])["status"] == "succeeded"


def test_the_all_jobs_stream_starts_with_the_current_state(daemon):
    status, old = daemon.post("/api/v1/jobs", small_job(steps=5, strategy="full"))
    daemon.wait(old["id"])
    submitted = []

    def until(event, data):
        if event == "jobs":  # the snapshot first: then a new job, whose events follow
            assert [j["id"] for j in data["jobs"]] == [old["id"]]
            submitted.append(daemon.post("/api/v1/jobs", small_job(steps=20))[1])
        return event == "status" and data["status"] == "succeeded"

    seen = read_events(daemon, "/api/v1/events", until)
    new = submitted[0]
    assert seen[0][0] == "jobs"
    assert {e for e, _ in seen} >= {"jobs", "status", "progress", "drift"}
    assert all(d["job"] == new["id"] for e, d in seen[1:])


def test_metrics_count_jobs_steps_and_requests(daemon):
    status, job = daemon.post("/api/v1/jobs", small_job(steps=20))
    daemon.wait(job["id"])
    daemon.get("/api/v1/jobs/j_999")
    # a request is counted when MHD reports it complete, which may come just
    # after its response reached us: look again for a moment before failing
    line = 'fisherd_http_requests_total{method="GET",route="/api/v1/jobs/{id}",status="404"} 1'
    for _ in range(50):
        status, text, hdrs = daemon.request("GET", "/metrics", raw=True)
        text = text.decode()
        if line in text:
            break
        time.sleep(0.05)
    assert status == 200 and hdrs["Content-Type"].startswith("text/plain")
    assert 'fisherd_jobs{status="succeeded"} 1' in text
    assert "fisherd_training_steps_total 20" in text
    assert line in text
    assert 'route="/api/v1/jobs",status="201"' in text
    assert "fisherd_http_request_seconds_count" in text


def test_beyond_loopback_writes_need_the_token(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token-0123456789\n")
    d = Daemon(tmp_path / "var", "--token-file", str(token), host="0.0.0.0").start()
    try:
        status, body, hdrs = d.request("POST", "/api/v1/jobs", small_job(), raw=True)
        assert status == 401 and "Bearer" in hdrs["WWW-Authenticate"]
        status, body, _ = d.request("POST", "/api/v1/jobs", small_job(), headers={"Authorization": "Bearer wrong"}, raw=True)
        assert status == 401
        status, job = d.request("POST", "/api/v1/jobs", small_job(steps=5),
                                headers={"Authorization": "Bearer s3cret-token-0123456789"})
        assert status == 201, job
        assert d.get("/api/v1/jobs")[0] == 200  # reads stay open unless --auth-reads
    finally:
        d.stop()


def read_events(d, path, until, headers=None, timeout=60):
    """(event, data) pairs of an event stream until until(event, data) is true."""
    req = urllib.request.Request(d.base + path, headers=headers or {})
    seen, event = [], None
    with urllib.request.urlopen(req, timeout=timeout) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        for raw in r:
            line = raw.decode().rstrip("\n")
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data = json.loads(line.split(":", 1)[1])
                seen.append((event, data))
                if until(event, data):
                    break
    return seen


def test_job_summaries_carry_strategy_best_val_and_zero_shot(daemon):
    zs = [{"synthetic": {"domain": "asphalt", "count": 4, "seed": 3}},
          {"synthetic": {"domain": "wall", "count": 4, "seed": 3}}]
    status, job = daemon.post("/api/v1/jobs", small_job(name="summary", strategy="full", steps=30, eval_interval=10,
                                                        data={**small_job()["data"], "zero_shot": zs}))
    assert status == 201, job
    assert job["strategy"] == "full" and job["best_val_iou"] is None and job["zero_shot"] is None
    done = daemon.wait(job["id"])
    assert done["status"] == "succeeded", done
    val = daemon.get(f"/api/v1/jobs/{job['id']}/metrics?name=val_iou&max_points=0")[1]["metrics"]["val_iou"]["value"]
    assert len(val) >= 3 and done["best_val_iou"] == max(val)
    want = sorted((z["dataset"], z["iou"]) for z in done["result"]["zero_shot"])
    assert sorted((z["dataset"], z["iou"]) for z in done["zero_shot"]) == want and len(want) == 2
    row = next(j for j in daemon.get("/api/v1/jobs")[1]["jobs"] if j["id"] == job["id"])
    for key in ("strategy", "best_val_iou", "zero_shot"):
        assert row[key] == done[key], key
    assert row["params"]["total"] == done["result"]["parameters"]


def test_every_strategy_reports_its_parameter_count_while_it_runs(daemon):
    status, job = daemon.post("/api/v1/jobs", small_job(name="decoder-live", strategy="decoder", steps=100000))
    running = daemon.wait_step(job["id"], 3)
    total, live = running["params"]["total"], running["params"]["live"]
    assert total and 0 < live < total, running["params"]  # null before: only "fisher" had it
    row = next(j for j in daemon.get("/api/v1/jobs")[1]["jobs"] if j["id"] == job["id"])
    assert row["params"]["total"] == total and row["strategy"] == "decoder"
    assert row["zero_shot"] is None  # not evaluated yet
    daemon.post(f"/api/v1/jobs/{job['id']}/cancel", None)
    assert daemon.wait(job["id"])["status"] == "cancelled"


def test_drift_filters_by_class_prefixes_and_indices(daemon):
    status, job = daemon.post("/api/v1/jobs", small_job(steps=10))
    done = daemon.wait(job["id"])
    assert done["status"] == "succeeded", done
    groups = daemon.get(f"/api/v1/jobs/{job['id']}/groups")[1]["groups"]
    base = f"/api/v1/jobs/{job['id']}/drift"

    def idx_of(query):
        status, body = daemon.get(f"{base}?{query}&max_points=2")
        assert status == 200, (query, body)
        return [s["idx"] for s in body["series"]]

    for cls in ("linear", "conv", "batchnorm", "layernorm"):
        assert idx_of(f"layer_class={cls}") == [g["idx"] for g in groups if g["layer_class"] == cls], cls
    stage = ("segformer.encoder.patch_embeddings.0.", "segformer.encoder.block.0.", "segformer.encoder.layer_norm.0.")
    want = [g["idx"] for g in groups if g["key"].startswith(stage)]
    assert want and idx_of("&".join(f"prefix={p}" for p in stage)) == want  # any of them, in one request
    assert idx_of("&".join(f"prefix={p}" for p in stage) + "&layer_class=layernorm") == \
        [g["idx"] for g in groups if g["key"].startswith(stage) and g["layer_class"] == "layernorm"]
    assert idx_of("groups=9,1,5,5") == [1, 5, 9]
    # CSV: the same selection, every point
    status, csv, _ = daemon.request("GET", f"{base}?format=csv&groups=3,4", raw=True)
    assert status == 200
    assert {int(line.split(",")[1]) for line in csv.decode().strip().splitlines()[1:]} == {3, 4}
    for query, field in [("layer_class=dense", "layer_class"), ("groups=1,,2", "groups"), ("groups=-1", "groups"),
                         ("groups=x", "groups"), ("groups=", "groups"), (f"groups={len(groups)}", "groups"),
                         ("groups=1&groups=2", "groups"), ("layer_class=conv&layer_class=linear", "layer_class"),
                         ("group=a&prefix=b", "prefix"), ("group=a&layer_class=conv", "layer_class"),
                         ("group=a&groups=1", "groups")]:
        status, body = daemon.get(f"{base}?{query}")
        assert status == 400 and body["error"]["field"] == field, (query, body)


def test_heatmap_values_come_with_the_precision_asked(daemon):
    status, job = daemon.post("/api/v1/jobs", small_job(steps=20))
    daemon.wait(job["id"])
    base = f"/api/v1/jobs/{job['id']}/heatmap?max_points=8"
    full = daemon.request("GET", base + "&precision=17", raw=True)[1]
    short = daemon.request("GET", base, raw=True)[1]
    assert daemon.request("GET", base + "&precision=4", raw=True)[1] == short  # 4 is the default
    def cells_text(body):
        return body[body.index(b'"values":'):body.index(b',"measurements"')]

    assert len(cells_text(short)) < 0.6 * len(cells_text(full)), (len(short), len(full))
    exact, rounded = json.loads(full), json.loads(short)
    assert exact["groups"] == rounded["groups"] and exact["step_from"] == rounded["step_from"]
    cells = 0
    for a, b in zip(exact["values"], rounded["values"]):
        for x, y in zip(a, b):
            assert (x is None) == (y is None)
            if x is not None:
                assert y == float(f"{x:.4g}"), (x, y)
                cells += 1
    assert cells > 100
    one = json.loads(daemon.request("GET", base + "&precision=1", raw=True)[1])
    assert all(v is None or v == float(f"{v:.1g}") for row in one["values"] for v in row)
    for bad in ("0", "18", "four"):
        status, body = daemon.get(f"{base}&precision={bad}")
        assert status == 400 and body["error"]["field"] == "precision", body


def test_the_all_jobs_stream_carries_only_the_kinds_asked(daemon):
    status, body = daemon.get("/api/v1/events?kinds=status,sparks")
    assert status == 400 and body["error"]["field"] == "kinds" and "sparks" in body["error"]["message"]
    assert daemon.get("/api/v1/events?kinds=")[0] == 400
    job = {}

    def until(event, data):
        if event == "jobs":
            job.update(daemon.post("/api/v1/jobs", small_job(steps=20))[1])
        return event == "status" and data["status"] == "succeeded"

    seen = read_events(daemon, "/api/v1/events?kinds=status,progress", until)
    assert seen[0][0] == "jobs"
    assert {e for e, _ in seen[1:]} == {"status", "progress"}  # no drift, freeze, eval …
    progress = [d for e, d in seen if e == "progress"]
    assert [d["step"] for d in progress] == list(range(1, 21))
    assert all(d["job"] == job["id"] and d["params_total"] >= d["params_live"] > 0 for d in progress)


def test_with_auth_reads_a_get_takes_the_token_as_a_header_or_access_token(tmp_path):
    token = "s3cret-token-0123456789"
    (tmp_path / "token").write_text(token + "\n")
    d = Daemon(tmp_path / "var", "--token-file", str(tmp_path / "token"), "--auth-reads").start()
    try:
        bearer = {"Authorization": f"Bearer {token}"}
        status, job = d.request("POST", "/api/v1/jobs", small_job(steps=10), headers=bearer)
        assert status == 201, job
        assert d.request("POST", f"/api/v1/jobs?access_token={token}", small_job())[0] == 401  # writes: the header only
        for path in ("/api/v1/jobs", f"/api/v1/jobs/{job['id']}", "/api/v1/models", "/metrics"):
            status, body, hdrs = d.request("GET", path, raw=True)
            assert status == 401 and "Bearer" in hdrs["WWW-Authenticate"], path
            assert d.request("GET", path, headers=bearer, raw=True)[0] == 200, path
            sep = "&" if "?" in path else "?"
            assert d.request("GET", f"{path}{sep}access_token={token}", raw=True)[0] == 200, path
            status, body = d.get(f"{path}{sep}access_token=wrong-token-0123456789")
            assert status == 401 and body["error"]["field"] == "access_token", body
        status, body = d.get(f"/api/v1/jobs?access_token={token}&access_token={token}")
        assert status == 401 and "more than once" in body["error"]["message"]
        assert d.get("/healthz")[0] == 200 and d.get("/api/v1/openapi.json")[0] == 200
        # what a browser fetches by itself: an event stream, a download
        seen = read_events(d, f"/api/v1/jobs/{job['id']}/events?access_token={token}",
                           lambda e, data: e == "status" and data["status"] == "succeeded")
        assert seen[0][0] == "job"
        status, csv, hdrs = d.request("GET", f"/api/v1/jobs/{job['id']}/drift?format=csv&access_token={token}", raw=True)
        assert status == 200 and csv.startswith(b"key,idx,step")
        assert d.request("GET", f"/api/v1/jobs/{job['id']}/model?access_token={token}", raw=True)[0] == 200
    finally:
        d.stop()
    # without --auth-reads reads need nothing, and an access_token is ignored like a header
    d = Daemon(tmp_path / "var2", "--token-file", str(tmp_path / "token")).start()
    try:
        assert d.get("/api/v1/jobs?access_token=anything")[0] == 200
        assert d.get("/api/v1/jobs")[0] == 200
    finally:
        d.stop()


def test_reads_are_remembered_until_the_job_changes(daemon):
    status, job = daemon.post("/api/v1/jobs", small_job(steps=400, fisher={"ema_interval": 2, "freeze_interval": 1000}))
    daemon.wait_step(job["id"], 50)
    key = "decode_head.classifier.weight.rowblock0"
    url = f"/api/v1/jobs/{job['id']}/drift?group={key}&max_points=0"
    early = daemon.get(url)[1]["series"][0]["points"]
    daemon.wait_step(job["id"], 150)
    later = daemon.get(url)[1]["series"][0]["points"]
    assert later > early  # each step the job writes makes its answers new
    daemon.wait(job["id"])
    first = daemon.request("GET", url, raw=True)[1]
    again = daemon.request("GET", url, raw=True)[1]
    assert first == again and json.loads(first)["series"][0]["points"] == 200
    csv = daemon.request("GET", url + "&format=csv", raw=True)
    assert csv[0] == 200 and "drift.csv" in csv[2]["Content-Disposition"]
    csv_again = daemon.request("GET", url + "&format=csv", raw=True)
    assert csv_again[1] == csv[1] and "drift.csv" in csv_again[2]["Content-Disposition"]
    assert daemon.request("DELETE", f"/api/v1/jobs/{job['id']}")[0] == 200
    assert daemon.get(url)[0] == 404  # a deleted job's remembered answers go with it
