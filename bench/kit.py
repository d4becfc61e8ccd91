"""Helpers shared by bench/bench.py and its RabbitMQ sections (bench/rabbit.py): where the
programs measured are, processes' figures from /proc, bounded waits, and client processes
that report through a pipe."""

import math
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
BEATD = os.environ.get("BENCH_BEATD", os.path.join(ROOT, "target", "footprint", "beatd"))
NOOP_WORKER = os.path.join(ROOT, "target", "footprint", "examples", "bench_noop_worker")
PEERS_BIN = os.environ.get("BENCH_PEERS_BIN", os.path.join(BENCH, "tcs", "target", "release"))
OBSERVE = os.path.join(PEERS_BIN, "observe")
TCS = os.path.join(PEERS_BIN, "tcs")
HTTP_SINK = os.path.join(PEERS_BIN, "http_sink")
VENV_BIN = os.path.join(BENCH, ".venv", "bin")
if not os.path.exists(os.path.join(VENV_BIN, "celery")):
    VENV_BIN = os.path.dirname(sys.executable)  # run by another checkout's bench/.venv python
CELERY = os.path.join(VENV_BIN, "celery")
RQ = os.path.join(VENV_BIN, "rq")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(*a):
    print(f"[{datetime.now(timezone.utc).strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_stats(pid):
    """Peak RSS (VmHWM), current RSS (MB) and CPU seconds (utime + stime) of one process."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                    out[k] = int(v.split()[0]) / 1024.0
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out["cpu_s"] = (int(fields[11]) + int(fields[12])) / CLK_TCK
        # CPU of children it has waited for (an exec worker's task processes).
        out["cpu_waited_s"] = (int(fields[13]) + int(fields[14])) / CLK_TCK
    except (FileNotFoundError, ProcessLookupError, IndexError):
        pass
    return out


def children(pid):
    """Direct children of every thread of `pid` (a tokio worker thread spawns exec tasks)."""
    out = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


def tree_stats(pid):
    """Sum of VmHWM and CPU over a process and its children (a prefork pool)."""
    total = {"VmHWM": 0.0, "VmRSS": 0.0, "cpu_s": 0.0, "procs": 0}
    for p in [pid] + children(pid):
        s = proc_stats(p)
        for k in ("VmHWM", "VmRSS", "cpu_s"):
            total[k] += s.get(k, 0.0)
        total["procs"] += 1
    return total


def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, math.ceil(p / 100.0 * len(sorted_vals)) - 1))
    return sorted_vals[k]


def sleep_until(t):
    d = t - time.time()
    if d > 0:
        time.sleep(d)


def stop(p, sig=signal.SIGTERM, wait=10):
    if p.poll() is None:
        try:
            p.send_signal(sig)
            p.wait(wait)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


class Clock:
    def __init__(self):
        self.wall0 = time.time()
        self.perf0 = time.perf_counter()

    def now(self):
        return self.wall0 + (time.perf_counter() - self.perf0)


class Clients:
    """Starts client processes, waits until each is connected, collects what they send."""

    def __init__(self):
        self.ctx = multiprocessing.get_context("fork")
        self.procs = {}

    def start(self, name, fn, *args):
        parent, child = self.ctx.Pipe(duplex=False)
        p = self.ctx.Process(target=fn, args=args + (child,), daemon=True)
        p.start()
        child.close()
        if not parent.poll(10) or parent.recv() != "ready":
            raise RuntimeError(f"client {name} did not start")
        self.procs[name] = (p, parent)

    def collect(self, deadline):
        out = {}
        for name, (p, pipe) in self.procs.items():
            if pipe.poll(max(0.1, deadline - time.time())):
                out[name] = pipe.recv()
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
        return out

