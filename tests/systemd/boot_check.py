#!/usr/bin/python3
"""The unit under a real systemd: boots systemd 252 as PID 1 in a container
(systemd-nspawn, the host's /usr, a fresh tmpfs root, no network but
loopback) with `make install`'s tree bound in, and lets a oneshot service
inside drive fisherd.service as an operator would:

  - the unit starts (Type=notify: active once READY=1 came) as a dynamic
    user, with STATUS= showing in `systemctl show`;
  - a job trains to success and the API answers, under the whole sandbox
    (system call filter, RestrictRealtime=, MemoryDenyWriteExecute=, ...),
    with a request thread at SCHED_IDLE while an event stream is open;
  - the journal keeps fisherd's priorities (info lines at PRIORITY 6);
  - `systemd-analyze security` rates the loaded unit;
  - a wedged process (SIGSTOP) is killed by the watchdog and restarted
    (WatchdogSec= shortened to 4 s by a drop-in, to keep this short);
  - `systemctl stop` ends it cleanly (Result=success, status 0);
  - a configuration error (exit status 2) fails the unit without retries.

Run by `make systemd-check` (as root; a minute; installs systemd-container
when missing). Not part of `make test`: it needs a machine that can run a
container (a VM or bare metal, not every CI sandbox). Exit status 0 when
every check holds; the findings are printed either way.

usage: boot_check.py STAGING_DIR   (a `make install DESTDIR=` tree)
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

DRIVER = r'''
import json, os, signal, subprocess, time, urllib.request
res = {}
def sh(*a):
    r = subprocess.run(a, capture_output=True, text=True)
    return r.stdout + r.stderr
def show(*props):
    out = sh("systemctl", "show", "fisherd", *[f"-p{p}" for p in props])
    return dict(l.split("=", 1) for l in out.splitlines() if "=" in l)
base = "http://127.0.0.1:8080"
def get(p):
    with urllib.request.urlopen(base + p, timeout=30) as r:
        return r.status, r.read()
try:
    res["started"] = show("ActiveState", "SubState", "StatusText", "User", "NRestarts")
    res["healthz"] = get("/healthz")[0]
    res["dashboard"] = get("/")[0]
    spec = {"name": "in-unit", "image_size": 32, "batch_size": 2, "steps": 30, "strategy": "fisher",
            "fisher": {"ema_interval": 2, "freeze_interval": 10},
            "data": {"train": {"synthetic": {"domain": "concrete", "count": 8, "seed": 1}},
                     "val": {"synthetic": {"domain": "concrete", "count": 4, "seed": 2}}}}
    req = urllib.request.Request(base + "/api/v1/jobs", data=json.dumps(spec).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        job = json.loads(r.read())["id"]
    for _ in range(1200):
        st = json.loads(get(f"/api/v1/jobs/{job}")[1])
        if st["status"] not in ("queued", "running"):
            break
        time.sleep(0.1)
    res["job"] = st["status"]
    pid = show("MainPID")["MainPID"]
    # policy: field 41 of /proc/PID/task/TID/stat, 5 = SCHED_IDLE
    with urllib.request.urlopen(base + "/api/v1/events", timeout=30):
        res["policies"] = [open(f"/proc/{pid}/task/{t}/stat").read().rsplit(")", 1)[1].split()[38]
                           for t in os.listdir(f"/proc/{pid}/task")]
    res["comm"] = open(f"/proc/{pid}/comm").read().strip()
    pri = sh("journalctl", "-u", "fisherd", "-o", "json", "--no-pager", "SYSLOG_IDENTIFIER=fisherd")
    entries = [json.loads(l) for l in pri.splitlines() if l.startswith("{")]
    res["priorities"] = sorted({e.get("PRIORITY") for e in entries})
    res["warnings_and_errors"] = [e.get("MESSAGE") for e in entries if e.get("PRIORITY") in ("3", "4")]
    res["security"] = sh("systemd-analyze", "security", "--no-pager", "fisherd.service").strip().splitlines()[-1]
    os.kill(int(pid), signal.SIGSTOP)
    for _ in range(300):
        time.sleep(0.1)
        s = show("NRestarts", "ActiveState", "SubState", "MainPID")
        if s["NRestarts"] != "0" and s["SubState"] == "running":
            break
    res["after_wedge"] = s
    res["job_after_restart"] = json.loads(get(f"/api/v1/jobs/{job}")[1])["status"]
    sh("systemctl", "stop", "fisherd")
    res["after_stop"] = show("ActiveState", "Result", "ExecMainStatus")
    # a configuration error (exit status 2) is not retried
    os.makedirs("/run/systemd/system/fisherd.service.d", exist_ok=True)
    with open("/run/systemd/system/fisherd.service.d/bad.conf", "w") as f:
        f.write("[Service]\nExecStart=\nExecStart=/usr/local/sbin/fisherd serve --max-jobs 0\n")
    sh("systemctl", "daemon-reload")
    def restarts():  # NRestarts starts again at 0 on a manual start; the journal does not
        return sh("journalctl", "-u", "fisherd", "--no-pager", "-o", "cat").count("Scheduled restart job")
    before = restarts()
    sh("systemctl", "start", "fisherd")
    time.sleep(7)  # past RestartSec=5s
    res["bad_config"] = show("ActiveState", "Result", "ExecMainStatus")
    res["bad_config_restarted"] = restarts() != before
except Exception as e:
    res["error"] = repr(e)
res["journal"] = sh("journalctl", "-u", "fisherd", "--no-pager", "-o", "cat").splitlines()[-40:]
json.dump(res, open("/out/result.json", "w"), indent=1)
'''

UNITS = {
    "fisherd-check.target": "[Unit]\nRequires=fisherd-check.service\nAfter=fisherd-check.service\nAllowIsolate=yes\n",
    "fisherd-check.service": "[Unit]\nAfter=fisherd.service\nWants=fisherd.service\n\n[Service]\nType=oneshot\n"
                             "ExecStart=/usr/bin/python3 /out/driver.py\n"
                             "ExecStopPost=/usr/bin/systemctl --no-block poweroff\n",
    "watchdog.conf": "[Service]\nWatchdogSec=4s\n",
}


def main():
    staging = Path(sys.argv[1]).resolve()
    with tempfile.TemporaryDirectory(prefix="fisherd-boot-") as tmp:
        tmp = Path(tmp)
        os.chmod(tmp, 0o755)
        (tmp / "driver.py").write_text(DRIVER)
        for name, text in UNITS.items():
            (tmp / name).write_text(text)
        cmd = ["systemd-nspawn", "--quiet", "--keep-unit", "--register=no", "--directory=/", "--volatile=yes",
               "--private-network", "--console=pipe",
               f"--bind-ro={staging}/usr/local:/usr/local", f"--bind-ro={staging}/etc/fisherd:/etc/fisherd",
               f"--bind-ro={tmp}/fisherd-check.service:/etc/systemd/system/fisherd-check.service",
               f"--bind-ro={tmp}/fisherd-check.target:/etc/systemd/system/fisherd-check.target",
               f"--bind-ro={tmp}/watchdog.conf:/etc/systemd/system/fisherd.service.d/watchdog.conf",
               f"--bind={tmp}:/out", "--boot", "--", "--unit=fisherd-check.target"]
        boot = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if not (tmp / "result.json").exists():
            print(boot.stdout[-3000:], boot.stderr[-3000:], sep="\n")
            sys.exit("boot_check: the container wrote no result")
        res = json.loads((tmp / "result.json").read_text())
    print(json.dumps({k: v for k, v in res.items() if k != "journal"}, indent=1))
    checks = {
        "active as a dynamic user, STATUS= shown": res.get("started", {}).get("SubState") == "running"
            and res["started"].get("User") == "fisherd" and "job(s) running" in res["started"].get("StatusText", ""),
        "API and dashboard answer": res.get("healthz") == 200 and res.get("dashboard") == 200,
        "a job trains under the sandbox": res.get("job") == "succeeded",
        "a request thread runs as SCHED_IDLE": "5" in res.get("policies", []),
        "journal keeps info priority": "6" in res.get("priorities", []),
        "the watchdog restarts a wedged daemon": res.get("after_wedge", {}).get("NRestarts", "0") != "0"
            and res["after_wedge"].get("SubState") == "running" and res.get("job_after_restart") == "succeeded",
        "systemctl stop is clean": res.get("after_stop") == {"ActiveState": "inactive", "Result": "success",
                                                             "ExecMainStatus": "0"},
        "a configuration error is not retried": res.get("bad_config") == {"ActiveState": "failed",
            "Result": "exit-code", "ExecMainStatus": "2"} and res.get("bad_config_restarted") is False,
    }
    for what, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
    if not all(checks.values()):
        print("\n".join(res.get("journal", [])))
        sys.exit(1)


if __name__ == "__main__":
    main()
