"""`make install`, the systemd unit and the man page, as an operator meets them.

- `make install DESTDIR=...` puts every file where the Makefile says, and
  nothing else (no node_modules, no package files); a second install keeps
  the operator's configuration; `make uninstall` takes back the rest.
- `make install PREFIX=...`: the unit and the configuration name PREFIX's
  paths, `systemd-analyze verify` passes on the installed unit (its binary
  and its man page exist), and the installed binary, started exactly as
  the unit's ExecStart= starts it -- as an unprivileged user without
  capabilities, under no_new_privs and UMask=0077, with a NOTIFY_SOCKET --
  reports READY=1, serves the dashboard and the API, trains a job (its
  request threads yield to training as SCHED_IDLE, which needs no
  privilege), and stops on SIGTERM.
- `systemd-analyze security --offline=true` rates the unit at most 2.0.
- The man page names every flag `fisherd serve --help` prints and every
  configuration key, and groff formats it without a warning.

The tests install from the build the integration run uses (the folder of
FISHERD), so nothing is rebuilt elsewhere. No systemd needs to be running:
systemd-analyze works offline, and the test plays the manager's part.
"""
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FISHERD = os.path.abspath(os.environ.get("FISHERD", REPO / "build" / "fisherd"))
BUILD = os.path.dirname(FISHERD)
UNIT = REPO / "systemd" / "fisherd.service"
MAN = REPO / "docs" / "fisherd.8"
NOBODY = 65534


def make(*args):
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    r = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), f"BUILD={BUILD}", *args],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"make {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def files_under(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file() or p.is_symlink())


def dashboard_files():
    """What of web/ a browser needs: the pages, scripts, styles and vendored uPlot."""
    web = REPO / "web"
    keep = [p for p in web.rglob("*") if p.is_file() and "node_modules" not in p.parts
            and not p.name.startswith(".") and p.name not in ("package.json", "package-lock.json", "README.md")]
    return sorted(str(p.relative_to(web)) for p in keep)


def unit_settings(path):
    """The unit's [Service] settings as name -> [values] (repeated settings accumulate)."""
    out, section = {}, None
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        k, v = line.split("=", 1)
        out.setdefault(f"{section}{k}", []).append(v)
    return out


@pytest.fixture
def world_readable_tmp():
    """A temporary folder an unprivileged user can reach (pytest's own are root's, mode 0700)."""
    d = Path(tempfile.mkdtemp(prefix="fisherd-install-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_install_puts_every_file_in_place_and_keeps_the_operators_config(tmp_path):
    root = tmp_path / "root"
    make("install", f"DESTDIR={root}")
    web = [f"usr/local/share/fisherd/web/{f}" for f in dashboard_files()]
    assert "usr/local/share/fisherd/web/vendor/uPlot.esm.js" in web and "usr/local/share/fisherd/web/index.html" in web
    assert files_under(root) == sorted([
        "etc/fisherd/fisherd.json",
        "usr/local/lib/systemd/system/fisherd.service",
        "usr/local/sbin/fisherd",
        "usr/local/share/fisherd/fisherd.json",
        "usr/local/share/man/man8/fisherd.8",
        *web,
    ])
    binary = root / "usr/local/sbin/fisherd"
    assert binary.stat().st_mode & 0o777 == 0o755
    r = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and re.fullmatch(r"fisherd \d+\.\d+\.\d+\n", r.stdout), r
    assert (root / "usr/local/share/man/man8/fisherd.8").read_bytes() == MAN.read_bytes()

    # the paths the unit and the configuration name are the default PREFIX's
    unit = unit_settings(root / "usr/local/lib/systemd/system/fisherd.service")
    assert unit["[Service]ExecStart"] == ["/usr/local/sbin/fisherd serve --config /etc/fisherd/fisherd.json"]
    cfg = json.loads((root / "etc/fisherd/fisherd.json").read_text())
    assert cfg["web_root"] == "/usr/local/share/fisherd/web"
    assert cfg["data_dir"] == "/var/lib/" + unit["[Service]StateDirectory"][0]

    # an upgrade: the operator's configuration stays, the pristine example is renewed
    mine = '{"listen": "127.0.0.1:9000"}\n'
    (root / "etc/fisherd/fisherd.json").write_text(mine)
    (root / "usr/local/share/fisherd/fisherd.json").write_text("stale")
    out = make("install", f"DESTDIR={root}")
    assert "keeping" in out
    assert (root / "etc/fisherd/fisherd.json").read_text() == mine
    assert json.loads((root / "usr/local/share/fisherd/fisherd.json").read_text()) == cfg

    make("uninstall", f"DESTDIR={root}")
    assert files_under(root) == ["etc/fisherd/fisherd.json"]


def test_the_unit_verifies_and_the_installed_daemon_runs_as_the_unit_runs_it(world_readable_tmp):
    tmp = world_readable_tmp
    prefix, etc = tmp / "usr", tmp / "etc"
    make("install", f"PREFIX={prefix}", f"SYSCONFDIR={etc}")
    unit_path = prefix / "lib/systemd/system/fisherd.service"

    # verify loads the unit as systemd would: its ExecStart= binary must
    # exist and be executable, Documentation=man:fisherd(8) must open
    env = dict(os.environ, MANPATH=str(prefix / "share/man"))
    r = subprocess.run(["systemd-analyze", "verify", str(unit_path)], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r

    unit = unit_settings(unit_path)
    argv = shlex.split(unit["[Service]ExecStart"][0])
    assert argv == [str(prefix / "sbin/fisherd"), "serve", "--config", str(etc / "fisherd/fisherd.json")]
    cfg_path = Path(argv[3])
    cfg = json.loads(cfg_path.read_text())
    assert cfg["web_root"] == str(prefix / "share/fisherd/web")

    # systemd's StateDirectory=, owned by the dynamic user, mode 0700; the
    # configuration points there and at a free port instead of 8080
    state = tmp / "state"
    state.mkdir(mode=0o700)
    os.chown(state, NOBODY, NOBODY)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg.update(data_dir=str(state), listen=f"127.0.0.1:{port}")
    cfg_path.write_text(json.dumps(cfg))

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp / "notify.sock"))
    os.chmod(tmp / "notify.sock", 0o666)
    notify.settimeout(30)
    assert unit["[Service]Type"] == ["notify"] and unit["[Service]UMask"] == ["0077"]
    assert unit["[Service]DynamicUser"] == ["yes"] and unit["[Service]CapabilityBoundingSet"] == [""]
    log = tmp / "fisherd.log"
    with open(log, "wb") as logf:
        # DynamicUser=yes, CapabilityBoundingSet=, NoNewPrivileges=yes, UMask=0077
        proc = subprocess.Popen(
            ["sh", "-c", 'umask 077 && exec "$@"', "sh", "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
             "--clear-groups", "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", *argv],
            env=dict(os.environ, NOTIFY_SOCKET=str(tmp / "notify.sock")), stdout=logf, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        msg = notify.recv(4096).decode()
        assert msg.startswith("READY=1\n"), msg
        # named after its binary, not "exe" (its re-exec, openmp_env.c), in
        # ps, top and systemd's journal and cgroup listing
        assert Path(f"/proc/{proc.pid}/comm").read_text() == "fisherd\n"

        with urllib.request.urlopen(base + "/", timeout=30) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
        with urllib.request.urlopen(base + "/vendor/uPlot.esm.js", timeout=30) as r:
            assert r.status == 200
        spec = {"name": "unit", "image_size": 32, "batch_size": 2, "steps": 10, "strategy": "fisher",
                "fisher": {"ema_interval": 2, "freeze_interval": 5},
                "data": {"train": {"synthetic": {"domain": "concrete", "count": 8, "seed": 1}}}}
        job = submit(base, spec)
        deadline = time.time() + 120
        while time.time() < deadline:
            with urllib.request.urlopen(f"{base}/api/v1/jobs/{job}", timeout=30) as r:
                status = json.loads(r.read())["status"]
            if status not in ("queued", "running"):
                break
            time.sleep(0.1)
        assert status == "succeeded", log.read_text()

        # what the daemon wrote is the dynamic user's, in folders only it can
        # enter (lib/fileio.c makes files 0644 whatever the umask; the 0700
        # folders above them are what keeps them private)
        assert (state / "jobs" / job / "model.safetensors").stat().st_uid == NOBODY
        for d in (state / "jobs", state / "jobs" / job):
            assert (d.stat().st_uid, d.stat().st_mode & 0o777) == (NOBODY, 0o700), d
        st = (state / "fisherd.db").stat()
        assert (st.st_uid, st.st_mode & 0o077) == (NOBODY, 0)
        # a request's thread (this event stream's, while it is open) dropped
        # to SCHED_IDLE (policy 5, field 41 of /proc/PID/task/TID/stat) and
        # nice 15 (field 19) without any privilege
        with urllib.request.urlopen(base + "/api/v1/events", timeout=30) as stream:
            assert stream.status == 200
            stats = [(t / "stat").read_text().rsplit(")", 1)[1].split()
                     for t in Path(f"/proc/{proc.pid}/task").iterdir()]
            assert any((int(f[38]), int(f[16])) == (5, 15) for f in stats), [(f[38], f[16]) for f in stats]

        os.kill(proc.pid, signal.SIGTERM)
        while True:
            msg = notify.recv(4096).decode()
            if "STOPPING=1" in msg:
                break
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        notify.close()


def test_the_units_exposure_score_stays_at_most_2():
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
                       capture_output=True, text=True, timeout=120)
    m = re.search(r"Overall exposure level for fisherd\.service: (\d+\.\d+)", r.stdout)
    assert m, r
    assert float(m.group(1)) <= 2.0, r.stdout


def test_the_man_page_documents_every_serve_flag_and_config_key():
    r = subprocess.run([FISHERD, "serve", "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", r.stdout))
    assert {"--listen", "--config", "--log-level", "--auth-reads", "--help"} <= flags, flags
    keys = set(re.search(r"same keys \(([^)]*)\)", r.stdout, re.S).group(1).replace("\n", " ").replace(",", " ")
               .split())
    assert {"listen", "data_roots", "log_level"} <= keys, keys

    roff = MAN.read_text()
    text = roff.replace("\\-", "-")
    # each flag and key is a tagged paragraph (.TP) of its own section
    serve = text.split(".SH SERVE OPTIONS\n", 1)[1].split("\n.SH ", 1)[0]
    config = text.split(".SH CONFIGURATION FILE\n", 1)[1].split("\n.SH ", 1)[0]
    missing = [f for f in sorted(flags) if not re.search(rf"^\.TP\n\.BI? {re.escape(f)}\b", serve, re.M)]
    assert not missing, f"flags of `fisherd serve --help` not documented in docs/fisherd.8: {missing}"
    missing = [k for k in sorted(keys) if not re.search(rf'^\.TP\n\.BR "{k}"', config, re.M)]
    assert not missing, f"configuration keys not documented in docs/fisherd.8: {missing}"
    for section in ("SYNOPSIS", "SERVE OPTIONS", "CONFIGURATION FILE", "SIGNALS", "FILES", "EXIT STATUS"):
        assert f".SH {section}" in roff

    r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(MAN)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and not r.stderr, r.stderr


def start_daemon(data_dir, log):
    """build's fisherd on a free port; returns (process, base URL) once /healthz answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(log, "ab") as logf:
        proc = subprocess.Popen([FISHERD, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir),
                                 "--threads", "1"], stdout=logf, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 20
    while time.time() < deadline:
        assert proc.poll() is None, Path(log).read_text()
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=5):
                return proc, base
        except OSError:
            time.sleep(0.05)
    raise AssertionError("fisherd did not answer /healthz within 20 s")


def get_json(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def submit(base, spec):
    """POSTs a job spec; returns the new job's id."""
    req = urllib.request.Request(base + "/api/v1/jobs", data=json.dumps(spec).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["id"]


def test_a_backup_taken_while_the_daemon_trains_is_a_whole_database(tmp_path):
    """README's backup recipes -- VACUUM INTO and the online backup API --
    on a live database in WAL mode: each copy passes integrity_check and a
    daemon started on it serves what the live one did when it was taken."""
    import sqlite3
    proc, base = start_daemon(tmp_path / "live", tmp_path / "live.log")
    try:
        spec = {"name": "backed-up", "image_size": 32, "batch_size": 2, "steps": 20, "strategy": "fisher",
                "fisher": {"ema_interval": 2, "freeze_interval": 10},
                "data": {"train": {"synthetic": {"domain": "concrete", "count": 8, "seed": 1}}}}
        job = submit(base, spec)
        deadline = time.time() + 120
        while get_json(f"{base}/api/v1/jobs/{job}")["status"] in ("queued", "running"):
            assert time.time() < deadline
            time.sleep(0.1)
        freezes = get_json(f"{base}/api/v1/jobs/{job}/freezes")
        drift = get_json(f"{base}/api/v1/jobs/{job}/groups")
        # a second job writes while the copies are taken
        spec.update(name="writing", steps=100000)
        submit(base, spec)

        live = tmp_path / "live" / "fisherd.db"
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        src = sqlite3.connect(live)
        src.execute("VACUUM INTO ?", (str(tmp_path / "a" / "fisherd.db"),))
        dst = sqlite3.connect(tmp_path / "b" / "fisherd.db")
        src.backup(dst)
        dst.close()
        src.close()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(60) == 0

    for copy in ("a", "b"):
        db = sqlite3.connect(tmp_path / copy / "fisherd.db")
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        db.close()
        proc, base = start_daemon(tmp_path / copy, tmp_path / f"{copy}.log")
        try:
            assert get_json(f"{base}/api/v1/jobs/{job}")["status"] == "succeeded"
            assert get_json(f"{base}/api/v1/jobs/{job}/freezes") == freezes
            assert get_json(f"{base}/api/v1/jobs/{job}/groups") == drift
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            assert proc.wait(60) == 0
