"""The driver of bench/run.sh: runs every measurement against one private redis-server and
writes bench/results/<stamp>.json and BENCHMARKS.md. Every wait is bounded.

Lateness is measured by `observe` (bench/tcs/src/bin/observe.rs), which blocks in BLMPOP on the
queue and stamps each batch with the time its reply arrived: the time the message is in Redis
(plus the observer's own read, a few ms for a batch of 10,000 × 900 B).
"""

import argparse
import json
import math
import os
import pickle
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timezone

import redis

import rabbit
from kit import (BEATD, BENCH, CELERY, HTTP_SINK, NOOP_WORKER, OBSERVE, ROOT, RQ, TCS, VENV_BIN,
                 Clients, Clock, free_port, log, pct, proc_stats, sleep_until, stop, tree_stats)


def lateness_stats(lat):
    lat = sorted(lat)
    if not lat:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "p50_ms": round(pct(lat, 50) * 1000, 2),
        "p99_ms": round(pct(lat, 99) * 1000, 2),
        "max_ms": round(lat[-1] * 1000, 2),
    }


class Observer:
    """observe: BLMPOP on a queue until `expected` messages, `timeout` or `idle` s quiet."""

    def __init__(self, url, queue, expected, timeout, idle=None):
        args = [OBSERVE, url, queue, str(expected), str(timeout)]
        if idle is not None:
            args.append(str(idle))
        self.p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        json.loads(self.p.stdout.readline())  # ready

    def finish(self, timeout=None):
        """Waits for the observer to stop on its own (count, its timeout, idle)."""
        out = self.p.stdout.read()  # EOF when it exits; its own timeout bounds this
        self.p.wait(timeout)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def stop(self):
        """Stops it now (closes its stdin) and returns what it saw."""
        self.p.stdin.close()
        out = self.p.stdout.read()
        self.p.wait(10)
        return [json.loads(line) for line in out.splitlines() if line.strip()]


# -------------------------------------------------------------------- clients of client_emission
#
# Each runs in its own process (fork) with its own Redis connection, speaking RESP on a raw
# socket (no client library in the timed loop). Times are wall clock: time.time() once, then
# time.perf_counter() from there, so they compare with the fire time across processes.


def resp_connect(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def resp_line(s):
    """One reply that ends with its first CRLF (integer, status)."""
    buf = s.recv(256)
    while not buf.endswith(b"\r\n"):
        more = s.recv(256)
        if not more:
            raise ConnectionError("redis closed the connection")
        buf += more
    return buf


def resp_cmd(*args):
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def client_llen(port, queue, spin_from, until, target, pipe):
    """LLEN in a tight loop from `spin_from` until the length reaches `target` or `until`;
    sends back (reply time, length) at every change."""
    s = resp_connect(port)
    cmd = resp_cmd("LLEN", queue)
    clk = Clock()
    pipe.send("ready")
    sleep_until(spin_from)
    steps, last, polls, t = [], None, 0, clk.now()
    while True:
        s.sendall(cmd)
        n = int(resp_line(s)[1:-2])
        t = clk.now()
        polls += 1
        if n != last:
            steps.append((t, n))
            last = n
        if n >= target or t > until:
            break
    pipe.send({"steps": steps, "polls": polls, "from": spin_from, "to": t})


def client_brpop(port, queue, at, timeout, pipe):
    """BRPOP from `at`; sends back when the reply's first bytes arrived (None on timeout)."""
    s = resp_connect(port)
    clk = Clock()
    pipe.send("ready")
    sleep_until(at)
    sent = clk.now()
    s.sendall(resp_cmd("BRPOP", queue, timeout))
    first = s.recv(65536)
    t = clk.now()
    pipe.send({"sent": sent, "reply": None if first.startswith(b"*-1") else t})


def client_ping(port, start, end, pause, first, pipe):
    """PING from `start` to `end`, `pause` s between round trips; sends back (sent, rtt).
    `first`: at a real-time priority (SCHED_FIFO), so that a round trip is Redis's time and
    not this process waiting for a CPU behind beatd on a 2-core machine."""
    if first:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    s = resp_connect(port)
    cmd = resp_cmd("PING")
    clk = Clock()
    pipe.send("ready")
    sleep_until(start)
    rtts = []
    waited0 = run_delay_s("self")
    while True:
        t0 = clk.now()
        if t0 > end:
            break
        s.sendall(cmd)
        resp_line(s)
        rtts.append((t0, clk.now() - t0))
        if pause:
            time.sleep(pause)
    pipe.send({"rtts": rtts, "own_run_delay_s": run_delay_s("self") - waited0})


def shield_cpu(cpu, keep):
    """Moves every thread of the machine off `cpu` except `keep` (a tid), where the kernel
    allows it (per-CPU kernel threads stay); returns the old masks to restore."""
    moved = {}
    for task in os.listdir("/proc"):
        if not task.isdigit():
            continue
        try:
            tids = os.listdir(f"/proc/{task}/task")
        except OSError:
            continue
        for t in tids:
            tid = int(t)
            if tid == keep:
                continue
            try:
                old = os.sched_getaffinity(tid)
                if cpu in old and old - {cpu}:
                    os.sched_setaffinity(tid, old - {cpu})
                    moved[tid] = old
            except OSError:
                pass
    return moved


def steal_ms(cpu):
    """Time the hypervisor ran something else on this virtual CPU (`/proc/stat`'s steal, in
    ticks of 10 ms): while stolen, a process the guest sees running stands still."""
    if cpu is None:
        return None
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith(f"cpu{cpu} "):
                    return int(line.split()[8]) * 1000 // os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    return None


def run_delay_s(pid):
    """How long the process has waited, runnable, for a CPU (the kernel's schedstat): a round
    trip that is long while this grows was the machine's scheduling, not Redis's work."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


class ListWatch:
    """Stamps every job id that appears on an RQ queue list with the time it was first seen
    (LLEN polled every `period` s; the whole list read on each change, so an insert anywhere is
    seen). Nothing may pop from the list meanwhile (no worker runs)."""

    def __init__(self, port, key, period=0.005):
        self.r = redis.Redis(port=port)
        self.key = key
        self.period = period
        self.arrivals = {}
        self.n = 0
        self._stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self._stop.is_set():
            n = self.r.llen(self.key)
            if n != self.n:
                ids = self.r.lrange(self.key, 0, -1)
                now = time.time()
                for jid in ids:
                    self.arrivals.setdefault(jid.decode(), now)
                self.n = n
            time.sleep(self.period)

    def stop(self):
        self._stop.set()
        self.t.join(5)
        return self.arrivals


class Bench:
    def __init__(self, args):
        self.quick = args.quick
        self.beatd_only = args.beatd_only
        self.tmp = tempfile.mkdtemp(prefix="beatd-bench-")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.redis_p = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.tmp],
            stdout=subprocess.DEVNULL,
        )
        # `--redis-cpu`: Redis alone on one CPU and every other process of the run (beatd,
        # its peers, the clients) on the others, as a production Redis has a host of its own:
        # on a 2-core machine an unpinned Redis is preempted by the very clients measuring it.
        # The PING client then runs at a real-time priority (client_ping).
        # Redis's CPU is also shielded from the rest of the machine: every task the kernel
        # lets move (the machine's own services, its init's threads, kdamond, Redis's
        # background threads) goes to the other CPUs for the run, as `cset shield` does.
        # Traced with `perf sched_switch`, such tasks took Redis's CPU for up to 4 ms at a
        # time (and some runs' PING waits of 20-40 ms had no Redis call that long in SLOWLOG).
        self.shielded = {}
        if args.redis_cpu is not None:
            others = os.sched_getaffinity(0) - {args.redis_cpu}
            os.sched_setaffinity(self.redis_p.pid, {args.redis_cpu})
            os.sched_setaffinity(0, others)
            time.sleep(0.2)  # Redis's own threads exist by now
            self.shielded = shield_cpu(args.redis_cpu, self.redis_p.pid)
            self.shield_redis_threads()
            log("shield", f"{len(self.shielded)} tasks moved off CPU {args.redis_cpu}")
        self.redis_cpu = args.redis_cpu
        self.r = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                self.r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        self.results = {}
        self.rabbit = None  # a private RabbitMQ node, started by the first section that needs it

    def close(self):
        if self.rabbit:
            self.rabbit.stop()
        stop(self.redis_p)
        for tid, mask in self.shielded.items():
            try:
                os.sched_setaffinity(tid, mask)
            except OSError:
                pass  # gone since
        shutil.rmtree(self.tmp, ignore_errors=True)

    def env(self, **extra):
        e = dict(os.environ)
        e.update({"BENCH_REDIS_URL": self.url, "PYTHONPATH": os.path.join(BENCH, "peers"),
                  "BEATD_LOG": "info"})
        e.update({k: str(v) for k, v in extra.items()})
        return e

    def dir(self, name):
        d = os.path.join(self.tmp, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return d

    def dir_of(self, name):
        """The directory `dir(name)` made, without clearing it."""
        return os.path.join(self.tmp, name)

    # ---------------------------------------------------------------- processes

    def shield_redis_threads(self):
        """Redis's background threads (lazy free, jemalloc's purge) off its event loop's CPU,
        as on a host with more cores; those made after the pinning have only that CPU."""
        others = os.sched_getaffinity(0)
        for t in os.listdir(f"/proc/{self.redis_p.pid}/task"):
            if int(t) != self.redis_p.pid:
                try:
                    os.sched_setaffinity(int(t), others)
                except OSError:
                    pass

    def beatd(self, name, entries_toml, lock_ttl="10s", http=True, extra=()):
        if self.redis_cpu is not None:
            # Threads started since (Redis's lazily made jemalloc thread, a service's).
            self.shielded.update({t: m for t, m in shield_cpu(self.redis_cpu, self.redis_p.pid)
                                  .items() if t not in self.shielded})
            self.shield_redis_threads()
        d = self.dir(name)
        # Schedules in their own directory: beatd watches it, and its log must not be there.
        sd = os.path.join(d, "schedules")
        os.makedirs(sd)
        with open(os.path.join(sd, "bench.toml"), "w") as f:
            f.write(entries_toml)
        hp = free_port() if http else None
        args = [BEATD, "beat", "--redis-url", self.url, "--schedules", sd, "--lock-ttl", lock_ttl,
                "--http-addr", f"127.0.0.1:{hp}" if hp else "off", *extra]
        logf = open(os.path.join(d, "beatd.log"), "w")
        p = subprocess.Popen(args, cwd=d, stdout=logf, stderr=subprocess.STDOUT, env=self.env())
        p.http_port = hp
        p.started = time.time()
        return p

    def wait_ready(self, p, limit=120):
        deadline = time.time() + limit
        while time.time() < deadline and p.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{p.http_port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return time.time() - p.started
            except OSError:
                pass
            time.sleep(0.005)
        return None

    def celery_beat(self, name, redbeat=False, **env):
        d = self.dir(name)
        args = [CELERY, "-A", "benchapp", "beat", "-l", "info", "--schedule",
                os.path.join(d, "celerybeat-schedule"), "--pidfile", ""]
        if redbeat:
            args += ["-S", "redbeat.RedBeatScheduler", "--max-interval", "1"]
            env["BENCH_REDBEAT"] = "1"
        logpath = os.path.join(d, "beat.log")
        logf = open(logpath, "w")
        p = subprocess.Popen(args, cwd=d, stdout=logf, stderr=subprocess.STDOUT,
                             env=self.env(**env))
        p.logpath = logpath
        p.started = time.time()
        return p

    def wait_log(self, p, needle, limit=120):
        deadline = time.time() + limit
        while time.time() < deadline and p.poll() is None:
            with open(p.logpath) as f:
                if needle in f.read():
                    return time.time() - p.started
            time.sleep(0.01)
        return None

    # ---------------------------------------------------------------- emission

    def emission(self):
        ns = [100, 1000, 10000] if self.quick else [100, 1000, 10000, 100000]
        bound = 20 if self.quick else 60
        out = {"beatd": {}, "celery_beat": {}, "tokio_cron_scheduler": {}}
        for n in ns:
            out["beatd"][n] = self.emission_beatd(n)
            log("emission beatd", n, summary(out["beatd"][n]))
        if self.beatd_only:
            self.results["emission"] = out
            return
        for n in ns:
            out["tokio_cron_scheduler"][n] = self.emission_tcs(n)
            log("emission tcs", n, summary(out["tokio_cron_scheduler"][n]))
        for n in ns:
            out["celery_beat"][n] = self.emission_celery(n, bound)
            log("emission celery", n, summary(out["celery_beat"][n]))
        out["celery_bound_s"] = bound
        self.results["emission"] = out

    def emission_beatd(self, n):
        self.r.flushall()
        # The fire time goes in the file, so first time how long loading takes.
        d = self.dir("emit-check")
        with open(os.path.join(d, "s.toml"), "w") as f:
            f.write("".join(f'[[entry]]\nname = "e{i}"\ntask = "t"\nat = "2099-01-01T00:00:00Z"\n\n'
                            for i in range(n)))
        t0 = time.time()
        subprocess.run([BEATD, "check", d], capture_output=True, timeout=900)
        # Past the beat's stage-ahead window (5 s), as for entries planned long before: the
        # beat starts, plans, idles, then stages when the window opens.
        margin = 7 + 3 * (time.time() - t0)
        fire = math.ceil(time.time() + margin)
        at = datetime.fromtimestamp(fire, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        toml = "".join(
            f'[[entry]]\nname = "e{i}"\ntask = "bench.noop"\nat = "{at}"\n\n' for i in range(n)
        )
        obs = Observer(self.url, "celery", n, fire - time.time() + 15)
        p = self.beatd("emit", toml)
        ready = self.wait_ready(p)
        sleep_until(fire - 0.3)
        before = proc_stats(p.pid)
        msgs = obs.finish(timeout=60)
        after = proc_stats(p.pid)
        stop(p)
        return emission_result(n, fire, msgs, ready, before, after, late_start=ready is None)

    def emission_tcs(self, n):
        margin = 3 + n / 10000
        fire = math.ceil(time.time() + margin)
        p = subprocess.run([TCS, str(n), str(fire), "15"], capture_output=True, text=True,
                           timeout=margin + 60)
        o = json.loads(p.stdout)
        msgs = [{"arrival": t, "scheduled": fire} for t in o["arrivals"]]
        res = emission_result(n, fire, msgs, None, {"cpu_s": 0.0}, o["stats"])
        res["jobs_added_before_fire"] = o["added"]
        res["add_jobs_s"] = round(o["add_s"], 3)
        return res

    def emission_celery(self, n, bound):
        self.r.flushall()
        # Celery imports and builds its schedule first (seconds on a busy machine); a beat that
        # starts after the minute boundary waits for the next one.
        margin = 12 + n / 2000
        minute = math.ceil((time.time() + margin) / 60) * 60
        sleep_until(minute - margin)
        obs = Observer(self.url, "celery", n, minute - time.time() + bound)
        p = self.celery_beat("celery-emit", BENCH_SCHEDULE="emission", BENCH_N=n)
        ready = self.wait_log(p, "beat: Starting...", limit=minute - time.time())
        sleep_until(minute - 0.3)
        before = proc_stats(p.pid)
        msgs = obs.finish(timeout=bound + margin + 30)
        after = proc_stats(p.pid)
        stop(p)
        for m in msgs:
            m["scheduled"] = minute
        res = emission_result(n, minute, msgs, ready, before, after)
        res["bound_s"] = bound
        if ready is None:
            res["log_tail"] = open(p.logpath).read()[-800:]
        return res

    # ---------------------------------------------------------------- drift

    def drift(self):
        dur = 20 if self.quick else 60
        self.r.flushall()
        toml = '[[entry]]\nname = "tick"\ntask = "bench.noop"\nevery = "1s"\nqueue = "drift_beatd"\n'
        ob = Observer(self.url, "drift_beatd", 10**6, dur + 8, None)
        oc = Observer(self.url, "drift_celery", 10**6, dur + 8, None)
        pb = self.beatd("drift", toml)
        pc = self.celery_beat("celery-drift", BENCH_SCHEDULE="tick", BENCH_QUEUE="drift_celery")
        time.sleep(dur + 8.5)
        stop(pb)
        stop(pc)
        self.results["drift"] = {
            "duration_s": dur,
            "beatd": drift_stats(ob.stop(), dur),
            "celery_beat": drift_stats(oc.stop(), dur),
        }
        log("drift", self.results["drift"])

    # ---------------------------------------------------------------- failover

    def failover(self):
        out = {}
        for sig in ("KILL", "TERM"):
            out[f"beatd_{sig}"] = self.failover_beatd(sig)
            log("failover beatd", sig, out[f"beatd_{sig}"])
            out[f"redbeat_{sig}"] = self.failover_redbeat(sig)
            log("failover redbeat", sig, out[f"redbeat_{sig}"])
        self.results["failover"] = out

    def failover_beatd(self, sig):
        self.r.flushall()
        toml = ('[[entry]]\nname = "tick"\ntask = "bench.noop"\nevery = "1s"\n'
                'catch_up = "all"\ncatch_up_window = "1m"\n')
        obs = Observer(self.url, "celery", 10**6, 40)
        a = self.beatd("fo-a", toml, lock_ttl="5s")
        self.wait_ready(a)
        time.sleep(2.5)
        b = self.beatd("fo-b", toml, lock_ttl="5s")
        self.wait_ready(b)
        time.sleep(5.3)
        holder = (self.r.get("beatd:leader") or b"").decode()
        leader, standby = (a, b) if f":{a.pid}:" in holder else (b, a)
        killed_at = time.time()
        os.kill(leader.pid, getattr(signal, f"SIG{sig}"))
        time.sleep(12)
        stop(standby)
        stop(leader, wait=5)
        msgs = obs.stop()
        return failover_stats(msgs, killed_at, exact=True, ttl=5)

    def failover_redbeat(self, sig):
        self.r.flushall()
        obs = Observer(self.url, "celery", 10**6, 60)
        a = self.celery_beat("rb-a", redbeat=True, BENCH_SCHEDULE="tick")
        self.wait_log(a, "beat: Starting...")
        time.sleep(4)
        b = self.celery_beat("rb-b", redbeat=True, BENCH_SCHEDULE="tick")
        self.wait_log(b, "beat: Starting...")
        time.sleep(5.3)
        # The leader is the process that sent the last message (origin gen<pid>@host).
        last = self.r.lindex("celery", 0)
        origin = json.loads(last)["headers"]["origin"] if last else ""
        leader, standby = (a, b) if origin.startswith(f"gen{a.pid}@") else (b, a)
        killed_at = time.time()
        os.kill(leader.pid, getattr(signal, f"SIG{sig}"))
        time.sleep(20)
        stop(standby)
        stop(leader, wait=5)
        msgs = obs.stop()
        return failover_stats(msgs, killed_at, exact=False, ttl=5)

    # ---------------------------------------------------------------- worker

    def queue_noops(self, n):
        """n bench.noop messages as Celery's send_task makes them, each with its own id;
        returns the ids in the order they will be taken."""
        self.r.flushall()
        code = "import benchapp; benchapp.app.send_task('bench.noop', queue='template')"
        subprocess.run([os.path.join(VENV_BIN, "python"), "-c", code], env=self.env(),
                       check=True, timeout=60)
        tmpl = json.loads(self.r.lpop("template"))
        import uuid
        ids = []
        pipe = self.r.pipeline(transaction=False)
        for i in range(n):
            tid = str(uuid.uuid4())
            ids.append(tid)
            tmpl["headers"]["id"] = tid
            tmpl["headers"]["root_id"] = tid
            tmpl["properties"]["correlation_id"] = tid
            tmpl["properties"]["delivery_tag"] = str(uuid.uuid4())
            tmpl["properties"]["delivery_info"]["routing_key"] = "celery"
            pipe.lpush("celery", json.dumps(tmpl))
            if i % 2000 == 1999:
                pipe.execute()
        pipe.execute()
        return ids

    def results_stored(self):
        return sum(1 for _ in self.r.scan_iter(match="celery-task-meta-*", count=5000))

    def worker(self, only=None):
        n = int(os.environ.get("BENCH_WORKER_TASKS", "20000"))
        out = {"tasks": n}
        common = ["--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"]
        runs = [
            ("beatd", [NOOP_WORKER]),
            ("celery_solo", [CELERY, "-A", "benchapp", "worker", "--pool=solo"] + common),
            ("celery_prefork", [CELERY, "-A", "benchapp", "worker", "--pool=prefork"] + common),
        ]
        for name, cmd in runs:
            if only and name not in only:
                continue
            ids = self.queue_noops(n)
            tail = [f"celery-task-meta-{i}" for i in ids[-200:]]
            d = self.dir(f"worker-{name}")
            env = self.env(BEATD_REDIS_URL=self.url)
            p = subprocess.Popen(cmd, cwd=d, env=env, stdout=open(os.path.join(d, "log"), "w"),
                                 stderr=subprocess.STDOUT)
            t0 = time.time()
            first = last = None
            peak = {"VmHWM": 0.0}
            limit = 180 if name != "beatd" else 60
            while time.time() - t0 < limit and p.poll() is None:
                now = time.time()
                if first is None and self.r.llen("celery") < n:
                    first = now
                s = tree_stats(p.pid)
                if s["VmHWM"] > peak["VmHWM"]:
                    peak = s
                if self.r.llen("celery") == 0 and self.r.exists(*tail) == len(tail):
                    last = now
                    break
                time.sleep(0.005)
            stop(p, wait=30)
            done = self.results_stored()
            r = {
                "completed": done,
                "wall_s_from_start": round((last or time.time()) - t0, 3),
                "busy_s": round((last - first), 3) if last and first else None,
                "peak_rss_mb": round(peak["VmHWM"], 1),
                "processes": peak.get("procs", 1),
                "cpu_s": round(peak.get("cpu_s", 0.0), 2),
            }
            if last and first and last > first and done >= n:
                r["tasks_per_s"] = round(n / (last - first))
            out[name] = r
            log("worker", name, r)
        if out.get("beatd", {}).get("tasks_per_s") and out.get("celery_prefork", {}).get(
                "tasks_per_s"):
            out["ratio_vs_prefork"] = round(
                out["beatd"]["tasks_per_s"] / out["celery_prefork"]["tasks_per_s"], 1)
        self.results["worker"] = out

    # ---------------------------------------------------------------- client_emission

    def client_emission(self):
        """beatd only: what clients of the queue see at a fire instant of N entries, onto an
        empty queue and onto one already holding `prefill` messages."""
        ns = [1000, 10000] if self.quick else [1000, 10000, 100000]
        if os.environ.get("BENCH_CLIENT_NS"):
            ns = [int(n) for n in os.environ["BENCH_CLIENT_NS"].split(",")]
        prefill = int(os.environ.get("BENCH_PREFILL", "20000"))
        out = {"prefill": prefill, "ping_pause_ms": 0.5, "bound_s": 10, "rows": []}
        for n in ns:
            for state in ("empty", "busy"):
                row = self.client_emission_one(n, prefill if state == "busy" else 0,
                                               out["bound_s"], out["ping_pause_ms"] / 1000)
                row = {"n": n, "queue": state, **row}
                out["rows"].append(row)
                log("client_emission", {k: v for k, v in row.items() if k != "ping"})
        self.results["client_emission"] = out

    def client_emission_one(self, n, prefill, bound, ping_pause):
        q = "celery"
        self.r.flushall()
        d = self.dir("cemit-check")
        with open(os.path.join(d, "s.toml"), "w") as f:
            f.write("".join(f'[[entry]]\nname = "e{i}"\ntask = "t"\ncron = "0 0 * * * *"\n\n'
                            for i in range(n)))
        t0 = time.time()
        subprocess.run([BEATD, "check", d], capture_output=True, timeout=900)
        # Past the stage-ahead window (5 s) once the beat is up, as in `emission`.
        margin = min(15, max(8, 7 + 3 * (time.time() - t0)))
        fire = math.ceil(time.time() + margin)
        ft = datetime.fromtimestamp(fire, timezone.utc)
        cron = f"{ft.second} {ft.minute} * * * *"
        toml = "".join(f'[[entry]]\nname = "e{i}"\ntask = "bench.noop"\ncron = "{cron}"\n\n'
                       for i in range(n))
        if prefill:
            filler = "x" * 100
            pipe = self.r.pipeline(transaction=False)
            for i in range(0, prefill, 1000):
                pipe.lpush(q, *(f"prefill-{j}-{filler}" for j in range(i, min(prefill, i + 1000))))
            pipe.execute()
        p = self.beatd("cemit", toml)
        ready = self.wait_ready(p)
        cl = Clients()
        # The BRPOP client takes one message: on the empty queue the poller's "all" is N - 1.
        popped = 0 if prefill else 1
        cl.start("llen", client_llen, self.port, q, fire - 0.2, fire + bound, prefill + n - popped)
        cl.start("ping", client_ping, self.port, fire - 1.0, fire + 3.0, ping_pause,
                 self.redis_cpu is not None)
        if not prefill:
            cl.start("brpop", client_brpop, self.port, q, fire - 1.0, 5)
        # Server-side: every command that held Redis 1 ms or more (SLOWLOG), and every
        # latency event of 5 ms or more (LATENCY: also what is not a command, e.g. expiry).
        self.r.config_set("slowlog-log-slower-than", 1000)
        self.r.config_set("slowlog-max-len", 100000)
        self.r.config_set("latency-monitor-threshold", 5)
        sleep_until(fire - 1.0)
        self.r.slowlog_reset()
        self.r.execute_command("LATENCY", "RESET")
        sleep_until(fire - 0.3)
        before = proc_stats(p.pid)
        redis_waited = run_delay_s(self.redis_p.pid)
        stolen = steal_ms(self.redis_cpu)
        got = cl.collect(fire + bound + 10)
        redis_waited = run_delay_s(self.redis_p.pid) - redis_waited
        if stolen is not None:
            stolen = steal_ms(self.redis_cpu) - stolen
        after = proc_stats(p.pid)
        slow = [e for e in self.r.slowlog_get(100000) if fire - 1 <= e["start_time"] <= fire + 3]
        worst_cmd = max(slow, key=lambda e: e["duration"], default=None)
        latency = self.r.execute_command("LATENCY", "LATEST") or []
        final_len = self.r.llen(q)
        stop(p)
        self.r.flushall()
        row = {
            "fire": fire,
            "cron": cron,
            "prefill": prefill,
            "startup_s": round(ready, 3) if ready is not None else None,
            "ready_before_fire_s": round(fire - (p.started + ready), 2) if ready else None,
            "final_len": final_len,
            "expected_len": prefill + n - popped,
            "cpu_fire_s": round(after.get("cpu_s", 0.0) - before.get("cpu_s", 0.0), 2),
            "peak_rss_mb": round(after.get("VmHWM", 0.0), 1),
        }
        row.update(llen_marks(got.get("llen"), prefill, n, popped, fire))
        if not prefill:
            b = got.get("brpop") or {}
            row["brpop_first_ms"] = (round((b["reply"] - fire) * 1000, 2)
                                     if b.get("reply") else None)
        row["ping"] = ping_stats(got.get("ping"), fire)
        row["redis_cpu"] = self.redis_cpu
        row["ping_client_fifo"] = self.redis_cpu is not None
        row["redis_run_delay_ms"] = round(redis_waited * 1000, 2)
        row["redis_cpu_steal_ms"] = stolen
        row["slowlog_calls_over_1ms"] = len(slow)
        row["slowlog_max_ms"] = round(worst_cmd["duration"] / 1000, 2) if worst_cmd else 0.0
        row["slowlog_max_cmd"] = (worst_cmd["command"].split(b" ")[0].decode(errors="replace")
                                  if worst_cmd else None)
        row["latency_events"] = {(ev[0].decode() if isinstance(ev[0], bytes) else ev[0]): ev[3]
                                 for ev in latency}
        return row

    # ---------------------------------------------------------------- burst_reload

    def burst_reload(self):
        """beatd only (issue 12, points 3 and 4): a catch-up burst of N overdue fires as the
        queue's clients see it, and a reload 3 s before a fire time of N entries
        that did not change."""
        ns = [10000] if self.quick else [10000, 100000]
        out = {"burst": [], "reload": []}
        for n in ns:
            row = self.burst_one(n)
            out["burst"].append(row)
            log("burst", {k: v for k, v in row.items() if k != "ping"})
        for n in ns:
            row = self.reload_one(n)
            out["reload"].append(row)
            log("reload", {k: v for k, v in row.items() if k != "ping"})
        self.results["burst_reload"] = out

    def burst_one(self, n):
        """N entries every 10 s with catch_up = "latest": one run sends a fire time, the beat
        stops, two fire times pass, a new beat starts and owes the latest of them for every
        entry at once. Clients poll from before the second start."""
        q = "celery"
        self.r.flushall()
        toml = "".join(f'[[entry]]\nname = "e{i}"\ntask = "bench.noop"\nevery = "10s"\n'
                       f'catch_up = "latest"\n\n' for i in range(n))
        p = self.beatd("burst-1", toml)
        self.wait_ready(p)
        deadline = time.time() + 60
        while self.r.llen(q) < n and time.time() < deadline:
            time.sleep(0.05)
        first_run = self.r.llen(q)
        stop(p)
        sent_at = math.floor(time.time() / 10) * 10
        # Two fire times pass with no beat; start again 2 s past the second, far from the next.
        restart = sent_at + 22
        sleep_until(restart - 1.5)
        self.r.delete(q)
        cl = Clients()
        cl.start("llen", client_llen, self.port, q, restart - 1.0, restart + 60, n)
        cl.start("ping", client_ping, self.port, restart - 1.0, restart + 20, 0.0005,
                 self.redis_cpu is not None)
        self.r.config_set("slowlog-log-slower-than", 1000)
        self.r.config_set("slowlog-max-len", 100000)
        self.r.slowlog_reset()
        sleep_until(restart)
        redis_waited = run_delay_s(self.redis_p.pid)
        stolen = steal_ms(self.redis_cpu)
        p = self.beatd("burst-2", toml)
        t_start = p.started
        ready = self.wait_ready(p)
        got = cl.collect(restart + 70)
        redis_waited = run_delay_s(self.redis_p.pid) - redis_waited
        if stolen is not None:
            stolen = steal_ms(self.redis_cpu) - stolen
        slow = self.r.slowlog_get(100000)
        stop(p)
        row = {"n": n, "first_run_sent": first_run, "startup_s": round(ready or 0, 3),
               # How long Redis's main thread waited for its CPU in the 70 s after the start,
               # and how long the hypervisor took that CPU away.
               "redis_run_delay_ms": round(redis_waited * 1000, 2), "redis_cpu": self.redis_cpu,
               "redis_cpu_steal_ms": stolen}
        # SLOWLOG's start times have a resolution of a second: the slowest calls, in seconds
        # after the start, to find what holds Redis.
        row["slowlog_top"] = [
            {"s_after_start": e["start_time"] - math.floor(t_start),
             "ms": round(e["duration"] / 1000, 2),
             "cmd": e["command"][:80].decode(errors="replace")}
            for e in sorted(slow, key=lambda e: -e["duration"])[:5]]
        marks = llen_marks(got.get("llen"), 0, n, 0, t_start)
        row.update({"from_start_" + k: v for k, v in marks.items()})
        if marks.get("llen_first_ms") is not None and marks.get("llen_all_ms") is not None:
            row["first_to_all_ms"] = round(marks["llen_all_ms"] - marks["llen_first_ms"], 2)
            row["first_to_99_ms"] = round(marks["llen_99_ms"] - marks["llen_first_ms"], 2)
        # The stall bound over the whole second run, startup included.
        row["ping"] = ping_stats(got.get("ping"), t_start)
        self.r.flushall()
        return row

    def reload_one(self, n):
        """N entries due at one instant; 3 s before it (the parked batch is staged whole by
        then), a new file with one more entry appears and the beat gets SIGHUP. The N
        unchanged entries' parked messages must stay: clients see them at the fire time as
        without the reload. The reload is applied after the watcher's 300 ms settle and the
        parse (half a second at 10,000 entries): sent half a second before the fire, it came
        after the commit and showed nothing of the kept batch."""
        q = "celery"
        self.r.flushall()
        d = self.dir("reload-check")
        with open(os.path.join(d, "s.toml"), "w") as f:
            f.write("".join(f'[[entry]]\nname = "e{i}"\ntask = "t"\ncron = "0 0 * * * *"\n\n'
                            for i in range(n)))
        t0 = time.time()
        subprocess.run([BEATD, "check", d], capture_output=True, timeout=900)
        margin = min(15, max(8, 7 + 3 * (time.time() - t0)))
        fire = math.ceil(time.time() + margin)
        ft = datetime.fromtimestamp(fire, timezone.utc)
        cron = f"{ft.second} {ft.minute} * * * *"
        toml = "".join(f'[[entry]]\nname = "e{i}"\ntask = "bench.noop"\ncron = "{cron}"\n\n'
                       for i in range(n))
        p = self.beatd("reload", toml)
        ready = self.wait_ready(p)
        cl = Clients()
        cl.start("llen", client_llen, self.port, q, fire - 0.2, fire + 10, n)
        # The PING window covers the reload too.
        cl.start("ping", client_ping, self.port, fire - 3.5, fire + 3.0, 0.0005,
                 self.redis_cpu is not None)
        sleep_until(fire - 3.0)
        sd = os.path.join(self.dir_of("reload"), "schedules")
        with open(os.path.join(sd, "extra.toml"), "w") as f:
            f.write('[[entry]]\nname = "added"\ntask = "bench.noop"\ncron = "0 0 * * * *"\n')
        reload_at = time.time()
        p.send_signal(signal.SIGHUP)
        got = cl.collect(fire + 20)
        stop(p)
        with open(os.path.join(self.dir_of("reload"), "beatd.log")) as f:
            log_text = f.read()
        applied = next((datetime.fromisoformat(line.split()[0].replace("Z", "+00:00"))
                        .timestamp() for line in log_text.splitlines()
                        if "schedules reloaded" in line), None)
        row = {"n": n, "fire": fire, "startup_s": round(ready or 0, 3),
               "reload_before_fire_ms": round((fire - reload_at) * 1000, 1),
               "reload_applied_before_fire_ms": (round((fire - applied) * 1000, 1)
                                                 if applied else None),
               "kept_batch_logged": "reload kept the parked batch" in log_text,
               "batch_outcome": ("kept" if "reload kept the parked batch" in log_text
                                 else "committed before the reload" if "committing it first"
                                 in log_text else "rolled back and parked again"
                                 if "rolled_back=1" in log_text else "reload after the commit"),
               "final_len": self.r.llen(q)}
        row.update(llen_marks(got.get("llen"), 0, n, 0, fire))
        row["ping"] = ping_stats(got.get("ping"), fire)
        self.r.flushall()
        return row

    # ---------------------------------------------------------------- worker_kinds

    def http_sink(self):
        """The http task's endpoint: bench/tcs's http_sink, else a threaded Python server."""
        if os.path.exists(HTTP_SINK):
            p = subprocess.Popen([HTTP_SINK], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
            p.kind = "bench/tcs http_sink: Rust, tokio current-thread, keep-alive"
        else:
            code = (
                "import http.server, json, sys, threading\n"
                "class H(http.server.BaseHTTPRequestHandler):\n"
                "    protocol_version = 'HTTP/1.1'\n"
                "    def do_POST(self):\n"
                "        self.rfile.read(int(self.headers.get('Content-Length', 0)))\n"
                "        b = b'{\"ok\":true}'\n"
                "        self.send_response(200)\n"
                "        self.send_header('Content-Type', 'application/json')\n"
                "        self.send_header('Content-Length', str(len(b)))\n"
                "        self.end_headers(); self.wfile.write(b)\n"
                "    def log_message(self, *a): pass\n"
                "s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)\n"
                "print(json.dumps({'port': s.server_address[1]}), flush=True)\n"
                "threading.Thread(target=s.serve_forever, daemon=True).start()\n"
                "sys.stdin.read()\n"
                "print(json.dumps({'requests': None}), flush=True)\n")
            p = subprocess.Popen([os.path.join(VENV_BIN, "python"), "-c", code],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            p.kind = "Python ThreadingHTTPServer (bench/tcs http_sink not built)"
        p.port = json.loads(p.stdout.readline())["port"]
        return p

    def drain(self, name, cmd, n, limit, env):
        """Queues n bench.noop messages, starts `cmd`, and times it until every result is
        stored: from its start, and from its first stored result to its last."""
        ids = self.queue_noops(n)
        head = [f"celery-task-meta-{i}" for i in ids[:20]]
        tail = [f"celery-task-meta-{i}" for i in ids[-200:]]
        d = self.dir(f"kinds-{name}")
        p = subprocess.Popen(cmd, cwd=d, env=env, stdout=open(os.path.join(d, "log"), "w"),
                             stderr=subprocess.STDOUT)
        t0 = time.time()
        first = last = None
        peak = main_peak = 0.0
        procs = 1
        stats = {}
        while time.time() - t0 < limit and p.poll() is None:
            now = time.time()
            if first is None and self.r.exists(*head):
                first = now
            s = tree_stats(p.pid)
            if s["VmHWM"] > peak:
                peak, procs = s["VmHWM"], s["procs"]
            stats = proc_stats(p.pid) or stats
            main_peak = max(main_peak, stats.get("VmHWM", 0.0))
            if self.r.llen("celery") == 0 and self.r.exists(*tail) == len(tail):
                last = now
                break
            time.sleep(0.005)
        cpu = tree_stats(p.pid)["cpu_s"] + stats.get("cpu_waited_s", 0.0)
        stop(p, wait=30)
        done = self.results_stored()
        r = {
            "completed": done,
            "wall_s_from_start": round((last or time.time()) - t0, 3),
            "startup_to_first_result_s": round(first - t0, 3) if first else None,
            "busy_s": round(last - first, 3) if last and first else None,
            "peak_rss_mb": round(peak, 1),
            "peak_rss_main_mb": round(main_peak, 1),
            "processes": procs,
            "cpu_s": round(cpu, 2),
            "timed_out": last is None,
        }
        if last and done >= n:
            r["tasks_per_s_from_start"] = round(n / (last - t0))
            if first and last > first:
                r["tasks_per_s"] = round(n / (last - first))
        log("worker_kinds", name, r)
        return r

    def worker_kinds(self):
        """beatd worker's exec and http kinds, the Rust no-op, celery prefork: one Redis, one run."""
        n = int(os.environ.get("BENCH_KINDS_TASKS", "20000"))
        out = {"tasks": n}
        sink = self.http_sink()
        out["http_endpoint"] = sink.kind
        d = self.dir("kinds-config")
        configs = {
            "exec": '[worker.tasks."bench.noop"]\nkind = "exec"\ncommand = ["/bin/true"]\n',
            "http": ('[worker.tasks."bench.noop"]\nkind = "http"\n'
                     f'url = "http://127.0.0.1:{sink.port}/task"\n'),
        }
        for k, text in configs.items():
            with open(os.path.join(d, f"{k}.toml"), "w") as f:
                f.write(text)
        out["configs"] = configs
        beatd_worker = [BEATD, "worker", "--redis-url", self.url, "--queues", "celery",
                        "--http-addr", "off", "--config"]
        celery_common = ["--without-gossip", "--without-mingle", "--without-heartbeat",
                         "-l", "warning"]
        # beatd at warn, as Celery at -l warning: at info beatd logs a line per task.
        env = self.env(BEATD_REDIS_URL=self.url, BEATD_LOG="warn")
        runs = [
            ("rust_noop", [NOOP_WORKER], 60),
            ("exec", beatd_worker + [os.path.join(d, "exec.toml")], 60),
            ("http", beatd_worker + [os.path.join(d, "http.toml")], 60),
            ("celery_prefork",
             [CELERY, "-A", "benchapp", "worker", "--pool=prefork"] + celery_common, 90),
        ]
        try:
            for name, cmd, limit in runs:
                s0 = proc_stats(sink.pid)
                out[name] = self.drain(name, cmd, n, limit, env)
                if name == "http":
                    out[name]["endpoint_cpu_s"] = round(
                        proc_stats(sink.pid).get("cpu_s", 0.0) - s0.get("cpu_s", 0.0), 2)
        finally:
            sink.stdin.close()
            tail = sink.stdout.read()
            sink.wait(10)
        for line in tail.splitlines():
            if '"requests"' in line:
                out["http_endpoint_requests"] = json.loads(line)["requests"]
        pre = out.get("celery_prefork", {})
        for k in ("rust_noop", "exec", "http"):
            x = out.get(k, {})
            for rate, key in (("tasks_per_s", f"ratio_{k}_vs_prefork"),
                              ("tasks_per_s_from_start", f"ratio_{k}_vs_prefork_from_start")):
                if x.get(rate) and pre.get(rate):
                    out[key] = round(x[rate] / pre[rate], 2)
        self.results["worker_kinds"] = out

    # ---------------------------------------------------------------- rq

    def rq_cron(self, name, replica, queue):
        """`rq cron benchcron` (bench/peers/benchcron.py): benchjobs.tick every second."""
        d = self.dir(name)
        logpath = os.path.join(d, "cron.log")
        p = subprocess.Popen([RQ, "cron", "--url", self.url, "benchcron"], cwd=d,
                             stdout=open(logpath, "w"), stderr=subprocess.STDOUT,
                             env=self.env(BENCH_RQ_QUEUE=queue, BENCH_RQ_REPLICA=replica))
        p.logpath = logpath
        p.started = time.time()
        return p

    def rq(self):
        steady = 20 if self.quick else 60
        pre, post = (5, 10) if self.quick else (10, 20)
        out = {"steady_window_s": steady, "stop_s": RQ_STOP_S, "before_stop_s": pre,
               "after_stop_s": post, "lock_ttl_s": 5, "runs": {}}
        plan = [("rq_cron", "steady"), ("beatd", "steady"),
                ("rq_cron", "stop_one"), ("beatd", "stop_one"),
                ("rq_cron", "kill_one"), ("beatd", "kill_one"),
                ("rq_cron", "stop_both"), ("beatd", "stop_both"),
                ("beatd_latest", "stop_both")]
        for system, scenario in plan:
            key = f"{system}_{scenario}"
            try:
                out["runs"][key] = self.rq_run(system, scenario, steady, pre, post)
            except Exception as e:  # one failed run must not lose the others
                out["runs"][key] = {"error": repr(e)}
            log("rq", key, {k: v for k, v in out["runs"][key].items()
                            if k not in ("per_replica", "notes")})
        self.results["rq"] = out

    def rq_run(self, system, scenario, steady, pre, post):
        self.r.flushall()
        if system == "rq_cron":
            queue = "bench_rq_cron"
            a = self.rq_cron("rqc-a", "a", queue)
            b = self.rq_cron("rqc-b", "b", queue)
            wait = lambda p: self.wait_log(p, "starting...")  # noqa: E731
        else:
            queue = "bench_rq"
            catch = 'catch_up = "all"\ncatch_up_window = "1m"\n' if system == "beatd" else ""
            toml = ('[[entry]]\nname = "tick"\ntask = "benchjobs.tick"\nprotocol = "rq"\n'
                    f'queue = "{queue}"\nserializer = "json"\nevery = "1s"\n' + catch)
            a = self.beatd("rqb-a", toml, lock_ttl="5s")
            b = self.beatd("rqb-b", toml, lock_ttl="5s")
            wait = self.wait_ready
        procs = [a, b]
        watch = ListWatch(self.port, f"rq:queue:{queue}")
        res = {"system": system, "scenario": scenario, "queue": queue, "replicas": 2}
        try:
            res["ready_s"] = [round(x, 3) if x is not None else None for x in map(wait, procs)]
            time.sleep(2)
            t0 = math.ceil(time.time()) + 1
            dur = steady if scenario == "steady" else pre + RQ_STOP_S + post
            t_end = t0 + dur
            res["window_s"] = dur
            res["window_start"], res["window_end"] = t0, t_end
            stopped_at = resumed_at = None
            if scenario != "steady":
                sleep_until(t0 + pre + 0.5)  # mid-second: no fire time sits on the boundary
                first, other = a, b
                if system != "rq_cron":
                    # beatd: the leader (the lock's value names its pid).
                    holder = (self.r.get("beatd:leader") or b"").decode()
                    if f":{b.pid}:" in holder:
                        first, other = b, a
                    res["stopped_leader"] = f":{first.pid}:" in holder
                victims = [first, other] if scenario == "stop_both" else [first]
                sig = signal.SIGKILL if scenario == "kill_one" else signal.SIGSTOP
                res["stopped"] = len(victims)
                res["signal"] = "kill -9" if sig == signal.SIGKILL else "SIGSTOP 30 s, SIGCONT"
                stopped_at = time.time()
                for v in victims:
                    os.kill(v.pid, sig)
                if sig == signal.SIGSTOP:
                    sleep_until(stopped_at + RQ_STOP_S)
                    resumed_at = time.time()
                    for v in victims:
                        os.kill(v.pid, signal.SIGCONT)
            sleep_until(t_end + 3)  # late (caught-up) sends for fire times in the window
        finally:
            for p in procs:
                if p.poll() is None:
                    os.kill(p.pid, signal.SIGCONT)
            arrivals = watch.stop()
            for p in procs:
                stop(p)
            res["stopped_all_at"] = round(time.time(), 3)
        jobs, extra = self.rq_jobs(queue, arrivals, system)
        res.update(extra)
        res.update(rq_counts(jobs, system, t0, t_end, stopped_at, resumed_at))
        return res

    def rq_jobs(self, queue, arrivals, system):
        """The jobs on the queue list, each with its fire time: beatd's `beatd_scheduled_at`
        from the job's meta; rq cron's `enqueued_at`, floored to the second."""
        ids = [x.decode() for x in self.r.lrange(f"rq:queue:{queue}", 0, -1)]
        listed = set(ids)
        hashes = [k.decode() for k in self.r.scan_iter(match="rq:job:*", count=1000)
                  if self.r.type(k) == b"hash"]  # not the :dependents sets
        jobs, no_hash = [], 0
        for jid in ids:
            h = self.r.hgetall(f"rq:job:{jid}")
            if not h:
                no_hash += 1
                continue
            jobs.append(rq_job(jid, h, arrivals.get(jid), system))
        orphans = [rq_job(k[len("rq:job:"):], self.r.hgetall(k), None, system)
                   for k in hashes if k[len("rq:job:"):] not in listed]
        ttls = sorted({self.r.ttl(f"rq:job:{j['id']}") for j in orphans})
        return jobs, {
            "queue_length": len(ids),
            "job_hashes": len(hashes),
            "listed_without_hash": no_hash,
            "hashes_not_listed": len(orphans),
            "hashes_not_listed_fire_times": sorted({j["fire"] for j in orphans if j["fire"]}),
            "hashes_not_listed_ttls": ttls,  # -1: no expiry
        }

    # ---------------------------------------------------------------- RabbitMQ (bench/rabbit.py)

    def amqp_emission(self):
        self.results["amqp_emission"] = rabbit.emission(self)

    def amqp_worker(self):
        self.results["amqp_worker"] = rabbit.worker(self)

    # ---------------------------------------------------------------- footprint

    def footprint(self):
        n = 10000
        dur = 20 if self.quick else 60
        hour = (datetime.now(timezone.utc).hour + 12) % 24
        self.r.flushall()
        toml = "".join(
            f'[[entry]]\nname = "e{i}"\ntask = "bench.noop"\ncron = "0 {hour} * * *"\n\n'
            for i in range(n)
        )
        pb = self.beatd("idle", toml)
        ready_b = self.wait_ready(pb)
        pc = self.celery_beat("celery-idle", BENCH_SCHEDULE="idle", BENCH_N=n, BENCH_HOUR=hour)
        ready_c = self.wait_log(pc, "beat: Starting...")
        time.sleep(3)  # let both finish their first tick
        b0, c0 = proc_stats(pb.pid), proc_stats(pc.pid)
        time.sleep(dur)
        b1, c1 = proc_stats(pb.pid), proc_stats(pc.pid)
        stop(pb)
        stop(pc)
        self.results["footprint"] = {
            "entries": n,
            "window_s": dur,
            "beatd": idle_stats(ready_b, b0, b1),
            "celery_beat": idle_stats(ready_c, c0, c1),
            "beatd_after_fire": self.footprint_after_fire(n, dur),
        }
        log("footprint", self.results["footprint"])

    def footprint_after_fire(self, n, dur):
        """The same beat once all n entries have fired at one instant: each entry fires at a
        second 25 s after start (hourly, so not again in the window); the window starts 5 s
        after the queue holds all n messages (the settle of the batch done)."""
        self.r.flushall()
        fire = int(time.time()) + 25
        ft = datetime.fromtimestamp(fire, timezone.utc)
        cron = f"{ft.second} {ft.minute} * * * *"
        toml = "".join(
            f'[[entry]]\nname = "e{i}"\ntask = "bench.noop"\ncron = "{cron}"\n\n'
            for i in range(n)
        )
        pb = self.beatd("idle-after-fire", toml)
        ready = self.wait_ready(pb)
        deadline = fire + 60
        while time.time() < deadline and self.r.llen("celery") < n:
            time.sleep(0.05)
        sent = self.r.llen("celery")
        all_seen = round(time.time() - fire, 2) if sent >= n else None
        time.sleep(5)
        s0 = proc_stats(pb.pid)
        time.sleep(dur)
        s1 = proc_stats(pb.pid)
        stop(pb)
        out = idle_stats(ready, s0, s1)
        out.update({"sent": sent, "all_in_queue_after_s": all_seen})
        return out


# -------------------------------------------------------------------- analysis


def summary(r):
    return {k: r.get(k) for k in ("sent_pct", "p50_ms", "p99_ms", "max_ms", "last_ms")}


def llen_marks(got, base, n, popped, fire):
    """From the LLEN poller's (time, length) changes: when the length first exceeded `base`,
    and first reached base + 50 %, 99 % and all of n (less what BRPOP took), in ms after
    the fire time."""
    if not got or not got.get("steps"):
        return {"llen_first_ms": None, "llen_50_ms": None, "llen_99_ms": None,
                "llen_all_ms": None}
    steps = got["steps"]

    def reached(k):
        for t, length in steps:
            if length >= k:
                return round((t - fire) * 1000, 2)
        return None

    first = next((t for t, length in steps if length > base), None)
    return {
        "llen_first_ms": round((first - fire) * 1000, 2) if first is not None else None,
        "llen_50_ms": reached(base + math.ceil(0.5 * n)),
        "llen_99_ms": reached(base + math.ceil(0.99 * n)),
        "llen_all_ms": reached(base + n - popped),
        "llen_at_start": steps[0][1],
        "llen_changes": len(steps) - 1,
        "llen_polls": got["polls"],
        "llen_poll_us": round(1e6 * (got["to"] - got["from"]) / max(1, got["polls"]), 1),
    }


def ping_stats(got, fire):
    """Round trips of the unrelated PING client: the longest in its window (1 s before to 3 s
    after the fire time), when it was sent, and the longest in the second before the fire."""
    if not got or not got.get("rtts"):
        return {}
    rtts = got["rtts"]
    worst = max(rtts, key=lambda x: x[1])
    pre = [r for t, r in rtts if t < fire]
    vals = sorted(r for _, r in rtts)
    return {
        "count": len(rtts),
        "max_ms": round(worst[1] * 1000, 2),
        "max_sent_at_ms": round((worst[0] - fire) * 1000, 1),
        "p99_ms": round(pct(vals, 99) * 1000, 3),
        "p50_ms": round(pct(vals, 50) * 1000, 3),
        "max_before_fire_ms": round(max(pre) * 1000, 2) if pre else None,
        "own_run_delay_ms": round(got.get("own_run_delay_s", 0.0) * 1000, 2),
    }


def emission_result(n, fire, msgs, ready, before, after, late_start=False):
    lat = [m["arrival"] - (m["scheduled"] or fire) for m in msgs]
    arr = sorted(m["arrival"] for m in msgs)
    res = {
        "n": n,
        "sent": len(msgs),
        "sent_pct": round(100.0 * len(msgs) / n, 2),
        "first_ms": round((arr[0] - fire) * 1000, 1) if arr else None,
        "last_ms": round((arr[-1] - fire) * 1000, 1) if arr else None,
        "startup_s": round(ready, 3) if ready is not None else None,
        "cpu_total_s": round(after.get("cpu_s", 0.0), 2),
        "cpu_fire_s": round(after.get("cpu_s", 0.0) - before.get("cpu_s", 0.0), 2),
        "peak_rss_mb": round(after.get("VmHWM", 0.0), 1),
    }
    res.update(lateness_stats(lat))
    return res


def drift_stats(msgs, dur):
    arr = sorted(m["arrival"] for m in msgs)
    if len(arr) < 3:
        return {"sends": len(arr)}
    # Skip the first send (catch-up or startup), then take `dur` seconds.
    arr = arr[1:]
    arr = [a for a in arr if a <= arr[0] + dur]
    sp = [b - a for a, b in zip(arr, arr[1:])]
    # Cumulative drift: how far the k-th send is from first + k seconds, as the median of the
    # last five minus that of the first five (one late send is jitter, not drift).
    d = [a - (arr[0] + k) for k, a in enumerate(arr)]
    drift = [sorted(d[-5:])[2] - sorted(d[:5])[2]]
    res = {
        "sends": len(arr),
        "spacing_mean_ms": round(1000 * sum(sp) / len(sp), 2),
        "spacing_min_ms": round(1000 * min(sp), 1),
        "spacing_max_ms": round(1000 * max(sp), 1),
        "drift_end_ms": round(1000 * drift[-1], 1),
        "drift_per_min_ms": round(1000 * drift[-1] * 60 / max(1, arr[-1] - arr[0]), 1),
    }
    sch = sorted(m["arrival"] - m["scheduled"] for m in msgs if m.get("scheduled"))
    if sch:
        res["lateness_p50_ms"] = round(1000 * pct(sch, 50), 2)
        res["lateness_max_ms"] = round(1000 * sch[-1], 2)
    return res


def failover_stats(msgs, killed_at, exact, ttl):
    msgs.sort(key=lambda m: m["arrival"])
    arr = [m["arrival"] for m in msgs]
    after = [a for a in arr if a > killed_at]
    before = [a for a in arr if a <= killed_at]
    res = {"sends": len(arr), "ttl_s": ttl}
    if before and after:
        res["gap_s"] = round(after[0] - before[-1], 3)
        res["first_send_after_kill_s"] = round(after[0] - killed_at, 3)
    # Origins before and after: a takeover means a different sender.
    res["senders"] = len({m.get("origin") for m in msgs})
    if exact:
        sched = [round(m["scheduled"]) for m in msgs]
        seen = set()
        dups = 0
        for s in sched:
            dups += s in seen
            seen.add(s)
        lo, hi = min(sched), max(sched)
        res["duplicates"] = dups
        res["misses"] = sum(1 for s in range(lo, hi + 1) if s not in seen)
        res["max_lateness_s"] = round(max(m["arrival"] - m["scheduled"] for m in msgs), 3)
    else:
        sp = [b - a for a, b in zip(arr, arr[1:])]
        res["duplicates"] = sum(1 for s in sp if s < 0.5)
        res["misses"] = sum(max(0, round(s) - 1) for s in sp)
    return res


RQ_STOP_S = 30


def rq_time(v):
    """RQ's timestamps (`2026-12-01T18:30:00.123456Z`) and beatd's RFC 3339 → unix s."""
    if v is None:
        return None
    v = v.decode() if isinstance(v, bytes) else v
    return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()


def rq_meta(raw):
    """A job's meta, serialized with its serializer: JSON (beatd's `serializer = "json"`) or
    pickle (rq cron's default)."""
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        try:
            return pickle.loads(raw)
        except Exception:
            return {}


def rq_job(jid, h, arrival, system):
    meta = rq_meta(h.get(b"meta"))
    enq = rq_time(h.get(b"enqueued_at"))
    if system == "rq_cron":
        fire = math.floor(enq) if enq is not None else None
    else:
        at = meta.get("beatd_scheduled_at")
        fire = rq_time(at) if at else None
        fire = round(fire, 3) if fire is not None else None
    return {"id": jid, "fire": fire, "enqueued_at": enq, "arrival": arrival,
            "replica": meta.get("replica"), "func": (h.get(b"description") or b"").decode()}


def rq_counts(jobs, system, t0, t_end, stopped_at, resumed_at):
    """Duplicates and misses per fire time in [t0, t_end): one fire time per second (rq cron's
    interval = 1, beatd's `every = "1s"`, whose fire times are whole seconds)."""
    inw = [j for j in jobs if j["fire"] is not None and t0 <= j["fire"] < t_end]
    counts = {}
    for j in inw:
        counts[j["fire"]] = counts.get(j["fire"], 0) + 1
    grid = list(range(int(t0), int(t_end)))
    missed = [s for s in grid if s not in counts]
    res = {
        "fire_times": len(grid),
        "enqueued": len(inw),
        "distinct_fire_times": len(counts),
        "off_grid": sum(1 for f in counts if f not in set(grid)),
        "duplicates": sum(c - 1 for c in counts.values() if c > 1),
        "fire_times_duplicated": sum(1 for c in counts.values() if c > 1),
        "missed": len(missed),
        "outside_window": len(jobs) - len(inw),
        "no_fire_time": sum(1 for j in jobs if j["fire"] is None),
    }
    reps = {}
    for j in inw:
        reps.setdefault(j["replica"] or "?", []).append(j)
    per = {}
    for r, js in sorted(reps.items()):
        t = sorted(x["enqueued_at"] for x in js if x["enqueued_at"] is not None)
        sp = [y - x for x, y in zip(t, t[1:])]
        per[r] = {"enqueued": len(js)}
        if sp:
            per[r]["spacing_min_ms"] = round(1000 * min(sp), 1)
            per[r]["spacing_max_ms"] = round(1000 * max(sp), 1)
    if system == "rq_cron":
        res["per_replica"] = per
    late = sorted(j["arrival"] - j["fire"] for j in inw
                  if system != "rq_cron" and j["arrival"] is not None)
    if late:
        res["lateness_p50_ms"] = round(1000 * pct(late, 50), 1)
        res["lateness_max_s"] = round(late[-1], 3)
        res["late_over_1s"] = sum(1 for x in late if x > 1.0)
    if stopped_at is not None:
        until = resumed_at if resumed_at is not None else t_end
        span = [s for s in grid if stopped_at <= s < until]
        res["stopped_at"] = round(stopped_at, 3)
        res["resumed_at"] = round(resumed_at, 3) if resumed_at else None
        res["fire_times_while_stopped"] = len(span)
        res["missed_while_stopped"] = sum(1 for s in span if s not in counts)
        res["duplicates_after_stop"] = sum(c - 1 for f, c in counts.items()
                                           if c > 1 and f >= stopped_at)
        after = sorted(j["arrival"] for j in jobs if j["arrival"] and j["arrival"] > stopped_at)
        if after:
            res["first_send_after_stop_s"] = round(after[0] - stopped_at, 3)
        if resumed_at is not None:
            back = sorted(j["arrival"] for j in jobs if j["arrival"] and j["arrival"] > resumed_at)
            res["sent_within_2s_of_resume"] = sum(1 for x in back if x - resumed_at < 2)
    return res


def idle_stats(ready, s0, s1):
    return {
        "startup_to_ready_s": round(ready, 3) if ready is not None else None,
        "rss_mb": round(s1.get("VmRSS", 0.0), 1),
        # RSS = anonymous (heap, stacks, written data) + file-backed (the binary's and the C
        # library's pages mapped in; clean, shared with the page cache).
        "rss_anon_mb": round(s1.get("RssAnon", 0.0), 1),
        "rss_file_mb": round(s1.get("RssFile", 0.0), 1),
        "peak_rss_mb": round(s1.get("VmHWM", 0.0), 1),
        "cpu_in_window_s": round(s1.get("cpu_s", 0.0) - s0.get("cpu_s", 0.0), 2),
    }


# -------------------------------------------------------------------- machine, versions


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except subprocess.TimeoutExpired:
        return ""


def machine():
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "load": sh("uptime"),
    }


def versions():
    py = os.path.join(VENV_BIN, "python")
    return {
        "beatd": sh(f"{BEATD} --version") + " @ " + sh(f"git -C {ROOT} rev-parse --short HEAD"),
        "rustc": sh("rustc --version"),
        "redis": sh("redis-server --version"),
        "python": sh(f"{py} --version"),
        "celery": sh(f"{py} -c 'import celery; print(celery.__version__)'"),
        "kombu": sh(f"{py} -c 'import kombu; print(kombu.__version__)'"),
        "celery-redbeat": sh(f"{py} -m pip show celery-redbeat | sed -n 's/^Version: //p'"),
        "redis-py": sh(f"{py} -c 'import redis; print(redis.__version__)'"),
        "rq": sh(f"{py} -c 'import rq; print(rq.__version__)'"),
        "py-amqp": sh(f"{py} -c 'import amqp; print(amqp.__version__)'"),
        "rabbitmq-server": sh("dpkg-query -W -f='${Version}' rabbitmq-server"),
        "tokio-cron-scheduler": "0.15.1",
    }


ALL_SECTIONS = ("emission,client_emission,burst_reload,drift,failover,worker,worker_kinds,"
                "footprint,rq,amqp_emission,amqp_worker")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=ALL_SECTIONS)
    ap.add_argument("--out", default=None)
    ap.add_argument("--redis-cpu", type=int, default=None,
                    help="pin redis-server to this CPU and everything else to the others")
    ap.add_argument("--beatd-only", action="store_true",
                    help="emission: measure beatd only (e.g. BENCH_BEATD=<older build>)")
    args = ap.parse_args()
    b = Bench(args)
    started = datetime.now(timezone.utc)
    b.results["machine"] = machine()
    b.results["versions"] = versions()
    b.results["command"] = ("bench/run.sh" + (" --quick" if args.quick else "")
                            + (f" --only {args.only}" if args.only != ALL_SECTIONS else "")
                            + (f" --redis-cpu {args.redis_cpu}" if args.redis_cpu is not None
                               else ""))
    b.results["started"] = started.isoformat(timespec="seconds")
    try:
        for part in args.only.split(","):
            log("==", part)
            getattr(b, part)()
    finally:
        b.results["machine"]["load_end"] = sh("uptime")
        b.results["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        b.close()
    os.makedirs(os.path.join(BENCH, "results"), exist_ok=True)
    path = args.out or os.path.join(
        BENCH, "results", started.strftime("%Y%m%dT%H%M%SZ") + ("-quick" if args.quick else "")
        + ".json")
    with open(path, "w") as f:
        json.dump(b.results, f, indent=1)
    log("wrote", path)
    print(path)


if __name__ == "__main__":
    main()
