"""`fisherd serve` speaking sd_notify(3), with no systemd anywhere.

systemd hands a Type=notify service a unix datagram socket (NOTIFY_SOCKET)
and, with WatchdogSec=, the period it expects pings in (WATCHDOG_USEC) and
the PID they must come from (WATCHDOG_PID). These tests play systemd's
part: they bind the socket, start build/fisherd (FISHERD overrides the
path) on a free 127.0.0.1 port with those variables, and read what arrives
-- READY=1 once the port accepts connections, STATUS= as jobs run and
queue, WATCHDOG=1 pings from the event loop, STOPPING=1 at SIGTERM. Each
daemon is started through `sh -c 'exec ...'` so that the shell can put its
own PID, which exec keeps, into WATCHDOG_PID, as systemd does; it is
stopped by that PID.

Also here: the log's shape under journald (JOURNAL_STREAM) and --log-level.
"""
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

FISHERD = os.path.abspath(os.environ.get("FISHERD", Path(__file__).resolve().parents[2] / "build" / "fisherd"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


class NotifySocket:
    """systemd's end of the protocol: every datagram, with when it came."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages = []  # (monotonic time, {key: value})

    def read(self, timeout):
        """Waits up to timeout for one datagram; None when none came."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            return None
        fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        self.messages.append((time.monotonic(), fields))
        return fields

    def wait_for(self, pred, timeout=20, what="a message"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = self.read(max(0.01, deadline - time.monotonic()))
            if m is not None and pred(m):
                return m
        raise AssertionError(f"no {what} within {timeout} s; got {[m for _, m in self.messages]}")

    def close(self):
        self.sock.close()


def start(args, env_extra, log_path, watchdog_pid_is_self=True):
    env = dict(os.environ, **env_extra)
    env.pop("WATCHDOG_PID", None)
    pid_var = "$$" if watchdog_pid_is_self else "1"
    logf = open(log_path, "ab")
    proc = subprocess.Popen(["sh", "-c", f'WATCHDOG_PID={pid_var} exec "$0" "$@"', FISHERD, "serve", *args],
                            env=env, stdout=logf, stderr=subprocess.STDOUT)
    logf.close()
    return proc


def stop(proc, sig=signal.SIGTERM, timeout=30):
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(f"fisherd did not stop within {timeout} s")
    return proc.returncode


def post_job(port, name, steps, **over):
    spec = {"name": name, "image_size": 32, "batch_size": 2, "steps": steps, "strategy": "full",
            "data": {"train": {"synthetic": {"domain": "concrete", "count": 16, "seed": 1}},
                     "val": {"synthetic": {"domain": "concrete", "count": 4, "seed": 2}}}}
    spec.update(over)
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/jobs", data=json.dumps(spec).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 201
        return json.loads(r.read())["id"]


def test_ready_status_watchdog_and_stopping_reach_the_manager(tmp_path):
    ns = NotifySocket(tmp_path / "notify.sock")
    port = free_port()
    proc = start(["--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "var"), "--max-jobs", "1",
                  "--threads", "1"],
                 {"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": "400000"}, tmp_path / "fisherd.log")
    try:
        ready = ns.wait_for(lambda m: "READY" in m, what="READY=1")
        # the port already accepts when READY=1 is sent, so a unit ordered
        # After=fisherd.service can connect at once
        assert accepts(port)
        assert ready["READY"] == "1"
        assert ready["STATUS"] == f"0 job(s) running, 0 queued; http://127.0.0.1:{port}/", ready
        assert all("WATCHDOG" not in m for _, m in ns.messages[:-1]), "pings before READY=1"

        # two jobs, one slot: the first runs, the second queues, then both end
        first, second = post_job(port, "first", 60), post_job(port, "second", 10)
        assert (first, second) == ("j_1", "j_2")
        ns.wait_for(lambda m: m.get("STATUS", "").startswith("1 job(s) running, 1 queued"),
                    what="STATUS with one job running and one queued")
        ns.wait_for(lambda m: m.get("STATUS", "").startswith("1 job(s) running, 0 queued"),
                    timeout=120, what="STATUS with the second job running")
        ns.wait_for(lambda m: m.get("STATUS", "").startswith("0 job(s) running, 0 queued"),
                    timeout=120, what="STATUS with both jobs done")

        # pings keep coming from the loop (every 0.2 s: half of WATCHDOG_USEC)
        t0 = time.monotonic()
        for _ in range(3):
            ns.wait_for(lambda m: m == {"WATCHDOG": "1"}, timeout=10, what="WATCHDOG=1")
        assert time.monotonic() - t0 < 10

        os.kill(proc.pid, signal.SIGTERM)
        stopping = ns.wait_for(lambda m: "STOPPING" in m, what="STOPPING=1")
        assert stopping["STOPPING"] == "1" and stopping["STATUS"].startswith("stopping"), stopping
        assert proc.wait(30) == 0
    finally:
        stop(proc)
        ns.close()


def test_no_pings_when_the_watchdog_is_for_another_process(tmp_path):
    ns = NotifySocket(tmp_path / "notify.sock")
    proc = start(["--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "var")],
                 {"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": "100000"}, tmp_path / "fisherd.log",
                 watchdog_pid_is_self=False)
    try:
        ns.wait_for(lambda m: "READY" in m, what="READY=1")
        deadline = time.monotonic() + 1.0  # ten periods of 0.05 s
        while time.monotonic() < deadline:
            ns.read(deadline - time.monotonic())
        assert [m for _, m in ns.messages if "WATCHDOG" in m] == []
    finally:
        assert stop(proc) == 0
        ns.close()


def test_a_second_signal_exits_at_once_with_128_plus_its_number(tmp_path):
    ns = NotifySocket(tmp_path / "notify.sock")
    port = free_port()
    proc = start(["--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "var"), "--threads", "1"],
                 {"NOTIFY_SOCKET": ns.path}, tmp_path / "fisherd.log")
    try:
        ns.wait_for(lambda m: "READY" in m, what="READY=1")
        # mit-b0 steps (~0.15 s) and checkpoints (~45 MB) take long enough
        # that the first stop is still under way when the second signal comes
        job = post_job(port, "long", 100000, image_size=128, batch_size=4,
                       base_model={"arch": "segformer", "config": "mit-b0"})
        ns.wait_for(lambda m: m.get("STATUS", "").startswith("1 job(s) running"), what="the job running")
        os.kill(proc.pid, signal.SIGINT)
        ns.wait_for(lambda m: "STOPPING" in m, what="STOPPING=1")
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(30) == 128 + signal.SIGINT
        log = (tmp_path / "fisherd.log").read_text()
        assert "second Interrupt: exiting now" in log, log
        assert job == "j_1"
    finally:
        stop(proc)
        ns.close()


def test_log_lines_carry_a_syslog_priority_only_when_stderr_is_the_journal(tmp_path):
    def first_lines(env_extra, *args):
        log = tmp_path / f"log-{len(list(tmp_path.iterdir()))}"
        with open(log, "wb") as f:
            st = os.fstat(f.fileno())
            env = dict(os.environ)
            for k, v in env_extra.items():
                env[k] = v.format(dev=st.st_dev, ino=st.st_ino)
            proc = subprocess.Popen([FISHERD, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "var"),
                                     "--web-root", str(tmp_path / "nowhere"), *args], env=env, stdout=f, stderr=f)
        deadline = time.monotonic() + 20
        while "listening" not in log.read_text() and "warn" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        assert stop(proc) == 0
        return log.read_text().splitlines()

    plain = first_lines({})
    assert any(line.startswith("info: fisherd ") and "listening on http://127.0.0.1:" in line for line in plain), plain
    assert any(line.startswith("warn: no dashboard") for line in plain), plain

    journal = first_lines({"JOURNAL_STREAM": "{dev}:{ino}"})
    assert any(line.startswith("<6>info: fisherd ") for line in journal), journal
    assert any(line.startswith("<4>warn: no dashboard") for line in journal), journal
    assert all(line.startswith("<") for line in journal), journal

    # a variable inherited by a process whose stderr went elsewhere names another stream
    elsewhere = first_lines({"JOURNAL_STREAM": "1:1"})
    assert not any(line.startswith("<") for line in elsewhere), elsewhere

    quiet = first_lines({}, "--log-level", "warn")
    assert any(line.startswith("warn: no dashboard") for line in quiet), quiet
    assert not any(line.startswith("info") for line in quiet), quiet
