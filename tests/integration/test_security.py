"""Security of `fisherd serve`, black-box over HTTP: who may do what, what
the daemon will read on a client's behalf, and what a client can make it
spend.

- Loopback by default; beyond loopback a bearer token for every write and,
  with --auth-reads, for every read of the API (the dashboard's own files
  stay public: they hold no data, and a browser must load them to ask for
  a token). A refusal is 401 with WWW-Authenticate: Bearer.
- Dataset folders and the dashboard's files are resolved, symlinks and all,
  and confined under their roots.
- SQL only through the store's fixed, prepared statements.
- Bodies: size limits (413 before reading), JSON nesting depth (400).
- Slow or half-open connections are closed after --http-timeout; the
  connection limit bounds the daemon's threads whatever clients do.

The HTTP layer's own tests (tests/unit/test_http.c) cover the same ground
against the bare server: constant-time token comparison, percent-encoded
traversal, per-address limits, a trickled body.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from test_serve import FISHERD, Daemon, api_routes, free_port, small_job

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token-0123456789"


def concrete(pattern):
    return pattern.replace("{id}", "j_1") if "/jobs/" in pattern else pattern.replace("{id}", "m_1")


def with_token(tmp_path, *extra):
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    return Daemon(tmp_path / "var", "--token-file", str(token), *extra, host="0.0.0.0")


def listening_addresses(port):
    """Local addresses of sockets listening on port (IPv4, from /proc/net/tcp)."""
    out = []
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        ip, p = local.split(":")
        if int(p, 16) == port and state == "0A":
            out.append(socket.inet_ntoa(bytes.fromhex(ip)[::-1]))
    return out


def test_it_listens_on_loopback_unless_told(tmp_path):
    # no --listen: 127.0.0.1:8080 (or, when that port is taken here, an error naming it)
    (tmp_path / "var").mkdir()
    log = open(tmp_path / "log", "wb")
    proc = subprocess.Popen([FISHERD, "serve", "--data-dir", str(tmp_path / "var")], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 20
        while time.time() < deadline and proc.poll() is None and "listening" not in (tmp_path / "log").read_text():
            time.sleep(0.05)
        text = (tmp_path / "log").read_text()
        assert "127.0.0.1:8080" in text, text
        if proc.poll() is None:
            assert listening_addresses(8080) == ["127.0.0.1"]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        log.close()


def test_beyond_loopback_every_write_needs_the_token(tmp_path):
    d = with_token(tmp_path).start()
    try:
        writes = [(m, concrete(p)) for m, p, _ in api_routes() if m != "GET"]
        assert len(writes) >= 4
        wrong = {
            "none": {},
            "another token of the same length": {"Authorization": "Bearer " + "x" * len(TOKEN)},
            "a prefix of it": {"Authorization": "Bearer " + TOKEN[:-1]},
            "it and more": {"Authorization": "Bearer " + TOKEN + "x"},
            "empty": {"Authorization": "Bearer "},
            "another scheme": {"Authorization": "Basic " + TOKEN},
            "no scheme": {"Authorization": TOKEN},
        }
        for method, path in writes:
            for what, headers in wrong.items():
                status, body, hdrs = d.request(method, path, small_job() if method == "POST" else None,
                                               headers=headers, raw=True)
                assert status == 401, (method, path, what, status, body)
                assert hdrs["WWW-Authenticate"].startswith("Bearer"), (method, path, what)
                assert json.loads(body)["error"]["code"] == "unauthorized"
            # a URL is no place for a write's token: reads only
            status, _, hdrs = d.request(method, path + "?access_token=" + TOKEN,
                                        small_job() if method == "POST" else None, raw=True)
            assert status == 401 and hdrs["WWW-Authenticate"].startswith("Bearer"), (method, path)
        # the scheme is case-insensitive (RFC 7235); the token is not
        status, job = d.request("POST", "/api/v1/jobs", small_job(steps=5), headers={"Authorization": "bearer " + TOKEN})
        assert status == 201, job
        status, _ = d.request("POST", "/api/v1/jobs", small_job(steps=5), headers={"Authorization": "Bearer " + TOKEN.upper()})
        assert status == 401
        # reads stay open without --auth-reads
        for method, path, _ in api_routes():
            if method == "GET" and "events" not in path:
                assert d.request("GET", concrete(path), raw=True)[0] != 401, path
    finally:
        d.stop()


def test_with_auth_reads_every_api_read_needs_the_token_but_the_dashboard_does_not(tmp_path):
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<!doctype html><title>fisherd</title>")
    d = with_token(tmp_path, "--auth-reads", "--web-root", str(web)).start()
    try:
        auth = {"Authorization": "Bearer " + TOKEN}
        status, job = d.request("POST", "/api/v1/jobs", small_job(steps=5), headers=auth)
        assert status == 201
        for method, path, flags in api_routes():
            if method != "GET":
                continue
            url = concrete(path)
            status, body, hdrs = d.request("GET", url, raw=True)
            if "HTTP_ROUTE_PUBLIC" in flags:  # liveness and the API's description
                assert status == 200, (url, status)
                continue
            assert status == 401 and hdrs["WWW-Authenticate"].startswith("Bearer"), (url, status)
            assert d.request("GET", url, headers={"Authorization": "Bearer nope"}, raw=True)[0] == 401, url
            if "events" not in url:
                assert d.request("GET", url, headers=auth, raw=True)[0] in (200, 404, 409), url
        # unknown API paths do not tell 404 from 401 without the token
        assert d.request("GET", "/api/v1/nothing-here", raw=True)[0] == 401
        assert d.request("GET", "/", raw=True)[0] == 200
        assert d.request("GET", "/index.html", raw=True)[0] == 200
    finally:
        d.stop()


# -------------------------------------------------------- paths and symlinks

def make_dataset(root, name):
    out = root / name
    r = subprocess.run([FISHERD, "dataset", "synth", "--domain", "concrete", "--count", "4", "--seed", "1",
                        "--size", "32", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


def test_dataset_paths_are_confined_under_the_data_root_symlinks_and_all(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    make_dataset(root, "good")
    make_dataset(outside, "secret")
    (root / "link-out").symlink_to(outside / "secret")               # the folder leads out
    (root / "link-in").symlink_to(root / "good")                     # a link that stays inside
    make_dataset(root, "images-out")
    shutil.rmtree(root / "images-out" / "images")
    (root / "images-out" / "images").symlink_to(outside / "secret" / "images")
    make_dataset(root, "file-out")
    victim = root / "file-out" / "images" / "concrete-000001.png"
    victim.unlink()
    victim.symlink_to(outside / "secret" / "images" / "concrete-000001.png")
    make_dataset(root, "file-in")
    f = root / "file-in" / "masks" / "concrete-000002.png"
    f.unlink()
    f.symlink_to(root / "good" / "masks" / "concrete-000002.png")
    (root / "sub").mkdir()
    refused = {
        "link-out": "not a folder under a data root",
        "images-out": "images/ leads outside the data root",
        "file-out": "images/concrete-000001.png leads outside the data root",
        "../outside/secret": "not a folder under a data root",
        "good/../../outside/secret": "not a folder under a data root",
        "sub/../../outside/secret": "not a folder under a data root",
        str(outside / "secret"): "not a folder under a data root",
        "/etc": "not a folder under a data root",
        "nowhere": "not a folder under a data root",
    }
    d = Daemon(tmp_path / "var", "--data-root", str(root)).start()
    try:
        for path, says in refused.items():
            status, body = d.post("/api/v1/jobs", small_job(steps=5, data={"train": {"path": path}, "val": {"path": "good"}}))
            assert status == 400, (path, body)
            assert body["error"]["field"] == "data.train.path" and says in body["error"]["message"], (path, body)
        assert d.get("/api/v1/jobs")[1]["jobs"] == []
        for path in ("good", "link-in", "file-in", str(root / "good")):
            status, job = d.post("/api/v1/jobs", small_job(steps=5, data={"train": {"path": path}, "val": {"path": "good"}}))
            assert status == 201, (path, job)
            assert d.wait(job["id"])["status"] == "succeeded"
        # the dataset list does not wander out either
        listed = json.dumps(d.get("/api/v1/datasets")[1])
        assert "secret" not in listed and str(outside) not in listed
    finally:
        d.stop()


def raw_get(port, target):
    """The status of GET target sent byte for byte (no client normalises it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def test_dashboard_files_are_confined_under_the_web_root_symlinks_and_all(tmp_path):
    web, outside = tmp_path / "web", tmp_path / "outside"
    (web / "js").mkdir(parents=True), outside.mkdir()
    (web / "index.html").write_text("index")
    (web / "js" / "app.js").write_text("app")
    (web / ".hidden").write_text("hidden")
    (outside / "secret.txt").write_text("SECRET")
    (web / "escape.txt").symlink_to(outside / "secret.txt")
    (web / "out").symlink_to(outside)
    (web / "app-link.js").symlink_to(web / "js" / "app.js")
    d = Daemon(tmp_path / "var", "--web-root", str(web)).start()
    try:
        for target in ["/escape.txt", "/out/secret.txt", "/../outside/secret.txt", "/js/../../outside/secret.txt",
                       "/%2e%2e/outside/secret.txt", "/js/%2e%2e/%2e%2e/outside/secret.txt", "/..%2foutside%2fsecret.txt",
                       "/.hidden", "/js/", "//etc/passwd", "/%2fetc%2fpasswd", "/js%00/app.js"]:
            status, data = raw_get(d.port, target)
            assert status in (400, 404), (target, status)
            assert b"SECRET" not in data and b"root:" not in data, target
        assert raw_get(d.port, "/app-link.js")[0] == 200  # a link that stays inside is followed
        assert raw_get(d.port, "/js/app.js")[0] == 200
    finally:
        d.stop()


# ----------------------------------------------------------------------- SQL

def test_sql_is_only_the_stores_fixed_statements():
    """Every statement is a literal of store.c's sql_text[] table, prepared
    once; the only other SQL is the migrations the binary carries. No SQL
    anywhere else, and none built with printf."""
    store = (ROOT / "daemon" / "store.c").read_text()
    assert re.findall(r"sqlite3_prepare\w*\(([^,]+), ([^,]+),", store) == [("s->db", "sql_text[id]")]
    assert re.findall(r"sqlite3_exec\(([^,]+), ([^,]+),", store) == [("s->db", "m->sql")]
    for banned in ("sqlite3_mprintf", "sqlite3_vmprintf", "sqlite3_snprintf", "sqlite3_str_"):
        assert banned not in store, banned
    for f in list((ROOT / "daemon").glob("*.c")) + list((ROOT / "api").glob("*.c")):
        if f.name != "store.c":
            assert "sqlite3_" not in f.read_text(), f"{f.name} talks to SQLite itself"


def test_values_that_look_like_sql_are_only_values(tmp_path):
    d = Daemon(tmp_path / "var").start()
    try:
        evil = "x'); DROP TABLE jobs; --"
        status, job = d.post("/api/v1/jobs", small_job(name=evil, steps=5))
        assert status == 201 and job["name"] == evil
        assert d.wait(job["id"])["status"] == "succeeded"
        for q in ["name=" + "%27%20OR%20%271%27%3D%271", "status=running%27%20OR%201%3D1--", "cursor=1%20OR%201%3D1"]:
            status, body = d.get("/api/v1/jobs?" + q)
            assert status in (200, 400), (q, body)
            if status == 200:
                assert body["jobs"] == [], (q, body)
        status, body = d.get(f"/api/v1/jobs/{job['id']}/drift?group=%27%20OR%201%3D1--")
        assert status in (200, 404) and "OR 1=1" not in json.dumps(body.get("series", [])), body
        assert [j["name"] for j in d.get("/api/v1/jobs")[1]["jobs"]] == [evil]
    finally:
        d.stop()


# ------------------------------------------------------------ bodies and JSON

def test_json_bodies_have_size_and_depth_limits(tmp_path):
    d = Daemon(tmp_path / "var").start()
    try:
        # nesting far past the parser's limit (jansson's, 2048): a 400 that says so
        deep = b"[" * 100000 + b"]" * 100000
        status, body, _ = d.request("POST", "/api/v1/jobs", deep, raw=True)
        assert status in (400, 413), body[:300]
        if status == 400:
            assert b"depth" in body, body[:300]
        for depth in (2049, 20000):
            status, body, _ = d.request("POST", "/api/v1/jobs", b'{"name":' + b"[" * depth + b"]" * depth + b"}", raw=True)
            assert status == 400 and b"maximum parsing depth" in body, (depth, body[:300])
        # nesting the parser takes, in a field: the validator names the field
        status, body = d.post("/api/v1/jobs", b'{"name":' + b"[" * 2000 + b"]" * 2000 + b"}")
        assert status == 400 and body["error"]["field"] == "name", body
        status, body = d.post("/api/v1/jobs", b'{"optim":' + b'{"x":' * 1500 + b"1" + b"}" * 1500 + b"}")
        assert status == 400 and body["error"]["field"].startswith("optim"), body
        # a spec past its limit: 413 as soon as Content-Length says so
        status, body, _ = d.request("POST", "/api/v1/jobs", b'{"name": "' + b"x" * (300 << 10) + b'"}', raw=True)
        assert status == 413, body[:300]
        assert d.get("/healthz")[0] == 200
    finally:
        d.stop()


def test_an_upload_over_its_limit_is_refused_before_it_is_read(tmp_path):
    d = Daemon(tmp_path / "var").start()
    try:
        with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
            s.sendall(b"POST /api/v1/models HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n"
                      b"Content-Length: 100000000000\r\n\r\n")
            reply = s.recv(65536)
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert b"limit" in reply
        assert not (tmp_path / "var" / "models").exists() or not list((tmp_path / "var" / "models").iterdir())
    finally:
        d.stop()


# ------------------------------------------------------ connections and threads

def threads(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def test_slow_and_half_open_clients_are_closed_after_the_timeout(tmp_path):
    d = Daemon(tmp_path / "var", "--http-timeout", "2").start()
    try:
        silent = socket.create_connection(("127.0.0.1", d.port))     # connects, sends nothing
        half = socket.create_connection(("127.0.0.1", d.port))       # half a request line
        half.sendall(b"GET /api/v1/jo")
        slow = socket.create_connection(("127.0.0.1", d.port))       # slowloris: a byte every second
        request = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Padding: " + b"a" * 40 + b"\r\n\r\n"
        t0, closed_at = time.time(), None
        for i, byte in enumerate(request):
            try:
                slow.sendall(bytes([byte]))
                slow.settimeout(1.0)
                if slow.recv(1) == b"":
                    closed_at = time.time() - t0
                    break
            except socket.timeout:
                continue
            except OSError:
                closed_at = time.time() - t0
                break
        assert closed_at is not None, "a client trickling its headers was never closed"
        assert 1.5 < closed_at < 6, closed_at
        for s in (silent, half):
            s.settimeout(5)
            assert s.recv(1) == b""  # closed by the daemon by now
        print(f"timeouts: slowloris closed after {closed_at:.1f} s with --http-timeout 2")
        assert d.get("/healthz")[0] == 200
    finally:
        d.stop()


def test_a_flood_of_connections_cannot_exhaust_threads(tmp_path):
    d = Daemon(tmp_path / "var", "--http-timeout", "3").start()
    socks = []
    try:
        base = threads(d.proc.pid)
        for _ in range(300):
            try:
                socks.append(socket.create_connection(("127.0.0.1", d.port), timeout=2))
            except OSError:
                break
        for s in socks:
            try:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")  # headers never finished
            except OSError:
                pass
        time.sleep(0.5)
        peak = threads(d.proc.pid)
        print(f"flood: {len(socks)} connections opened; daemon threads {base} -> {peak}")
        assert peak - base <= 64 + 2, (base, peak)  # one per connection, at most the limit
        for s in socks:
            s.close()
        socks = []
        deadline = time.time() + 10
        while time.time() < deadline:  # the slots come back
            try:
                if d.get("/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        assert d.get("/healthz")[0] == 200
    finally:
        for s in socks:
            s.close()
        d.stop()
