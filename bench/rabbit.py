"""The RabbitMQ sections of bench/bench.py (issue 13): `amqp_emission` (N entries due at one
instant, beatd vs `celery beat`) and `amqp_worker` (N no-op tasks drained, beatd vs
`celery worker --pool=prefork`), on one private RabbitMQ node that this module starts on free
ports (never the machine's own 5672), plus the Redis of bench.py for beatd's lock, last runs
and the result backend.

Clients of RabbitMQ are py-amqp (Celery's own transport library, from the bench venv), each
in a process of its own with its own connection; times are wall clock (`kit.Clock`), so they
compare with the fire time across processes.
"""

import http.client
import math
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from datetime import datetime, timezone

from kit import (BEATD, CELERY, NOOP_WORKER, VENV_BIN, Clients, Clock, free_port, log,
                 proc_stats, sleep_until, stop, tree_stats)

QUEUE = "celery"
# Between two polls of a poller: a tight loop would take a whole core of the two, from the
# scheduler being measured.
POLL_PAUSE_S = 0.001

# -------------------------------------------------------------------- the node


class RabbitNode:
    """`rabbitmq-server` on free ports with its own node name, config, data and log
    directories (owned by the `rabbitmq` user, which Debian's script drops to) and no
    plugins, as src/testkit/rabbit.rs starts it for the tests. A shell guard stops the node
    when this process is gone, so an interrupted bench leaves no node behind."""

    GUARD = r'''rabbitmq-server >"$LOGDIR/server.out" 2>&1 & srv=$!
while kill -0 "$PARENT" 2>/dev/null && kill -0 "$srv" 2>/dev/null; do sleep 1; done
rabbitmqctl -n "$RABBITMQ_NODENAME" stop >/dev/null 2>&1 || kill -9 "$srv"'''

    def __init__(self):
        if not shutil.which("rabbitmq-server"):
            raise RuntimeError("rabbitmq-server not found (apt-get install rabbitmq-server)")
        # Straight under /tmp: the rabbitmq user must reach it (bench.py's own dir is 0700).
        self.dir = tempfile.mkdtemp(prefix="beatd-bench-rabbit-")
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"beatd-bench-{os.getpid()}@localhost"
        for d in ("mnesia", "log"):
            os.makedirs(os.path.join(self.dir, d))
        with open(os.path.join(self.dir, "rabbitmq.conf"), "w") as f:
            # The machine's /etc/rabbitmq/rabbitmq.conf pins 127.0.0.1:5672; this one wins.
            f.write(f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n")
        with open(os.path.join(self.dir, "enabled_plugins"), "w") as f:
            f.write("[].\n")
        subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", self.dir], check=True)
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        t0 = time.time()
        env = dict(self.env(), PARENT=str(os.getpid()), LOGDIR=os.path.join(self.dir, "log"))
        self.guard = subprocess.Popen(["sh", "-c", self.GUARD], env=env,
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.guard.poll() is not None or time.time() > deadline:
                    raise RuntimeError("rabbitmq-server did not start: " + self.log_tail())
                time.sleep(0.1)
        self.ctl("await_startup")
        self.startup_s = round(time.time() - t0, 1)
        self.version = self.ctl("version").strip()
        log("rabbitmq", self.version, "on port", self.port, f"up in {self.startup_s} s")

    def env(self):
        d = self.dir
        e = dict(os.environ)
        e.update({
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": os.path.join(d, "mnesia"),
            "RABBITMQ_LOG_BASE": os.path.join(d, "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(d, "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": os.path.join(d, "rabbitmq"),  # without .conf, as it wants
        })
        return e

    def ctl(self, *args):
        return subprocess.run(["rabbitmqctl", "-n", self.node, *args], env=self.env(),
                              capture_output=True, text=True, timeout=60, check=True).stdout

    def log_tail(self):
        try:
            with open(os.path.join(self.dir, "log", "server.out")) as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def stop(self):
        try:
            self.ctl("stop")
        except (subprocess.SubprocessError, OSError):
            pass
        stop(self.guard, wait=30)
        shutil.rmtree(self.dir, ignore_errors=True)


def node(b):
    """The bench's node, started on first use (bench.py stops it in `close`)."""
    if b.rabbit is None:
        b.rabbit = RabbitNode()
    return b.rabbit


def connect(port):
    import amqp  # py-amqp, a Celery dependency in the bench venv
    c = amqp.Connection(host=f"127.0.0.1:{port}", userid="guest", password="guest",
                        virtual_host="/", connect_timeout=10)
    c.connect()
    return c


def declare(ch, q):
    """Celery's declaration of a default queue (kombu's `Queue(q, Exchange(q), q)`): a durable
    direct exchange, a durable queue without arguments, bound by the queue's name. beatd and
    Celery declare it the same way, so nobody gets a 406 from the other's declaration."""
    ch.exchange_declare(q, "direct", durable=True, auto_delete=False)
    ch.queue_declare(q, durable=True, auto_delete=False)
    ch.queue_bind(q, q, q)


def fresh_queue(port, q=QUEUE):
    """Deletes `q` (with its messages) and declares it again, empty."""
    c = connect(port)
    ch = c.channel()
    ch.queue_delete(q)
    declare(ch, q)
    c.close()


def depth(ch, q=QUEUE):
    """Messages ready on `q` as RabbitMQ counts them (a passive declare's message_count)."""
    return ch.queue_declare(q, passive=True).message_count


# -------------------------------------------------------------------- client processes


def client_consume(port, q, until, n, grace, pipe):
    """Subscribed to `q` (basic_consume, no_ack, so RabbitMQ pushes without waiting for
    acks) until `until`, or `grace` s after the n-th message (late duplicates); sends back
    (arrival, task name) per message, stamped as py-amqp hands it over."""
    c = connect(port)
    ch = c.channel()
    clk = Clock()
    got = []
    ch.basic_consume(q, callback=lambda m: got.append((clk.now(), m.headers.get("task"))),
                     no_ack=True)
    pipe.send("ready")
    stop_at = until
    while clk.now() < stop_at:
        try:
            c.drain_events(timeout=max(0.01, min(0.2, stop_at - clk.now())))
        except (socket.timeout, TimeoutError):
            pass
        if len(got) >= n and stop_at == until:
            stop_at = min(until, clk.now() + grace)
    pipe.send({"got": got})
    c.close()


def client_depth(port, q, spin_from, until, target, pipe):
    """A passive declare of `q` every POLL_PAUSE_S from `spin_from` until the depth reaches
    `target` or `until`; sends back (reply time, depth) at every change."""
    c = connect(port)
    ch = c.channel()
    clk = Clock()
    pipe.send("ready")
    sleep_until(spin_from)
    steps, last, polls, t = [], None, 0, clk.now()
    while True:
        d = depth(ch, q)
        t = clk.now()
        polls += 1
        if d != last:
            steps.append((t, d))
            last = d
        if d >= target or t > until:
            break
        time.sleep(POLL_PAUSE_S)
    pipe.send({"steps": steps, "polls": polls, "from": spin_from, "to": t})
    c.close()


def client_confirms(http_port, spin_from, until, target, pipe):
    """`GET /metrics` of beatd on one keep-alive connection every POLL_PAUSE_S from `spin_from`
    until `beatd_amqp_confirms_total` reaches `target` or `until`; sends back (reply time,
    count) at every change."""
    h = http.client.HTTPConnection("127.0.0.1", http_port, timeout=5)
    clk = Clock()
    pipe.send("ready")
    sleep_until(spin_from)
    steps, last, polls, t = [], None, 0, clk.now()
    while True:
        h.request("GET", "/metrics")
        body = h.getresponse().read().decode()
        t = clk.now()
        polls += 1
        k = 0
        for line in body.splitlines():
            if line.startswith("beatd_amqp_confirms_total"):
                k = int(float(line.split()[-1]))
                break
        if k != last:
            steps.append((t, k))
            last = k
        if k >= target or t > until:
            break
        time.sleep(POLL_PAUSE_S)
    pipe.send({"steps": steps, "polls": polls, "from": spin_from, "to": t})
    h.close()


# -------------------------------------------------------------------- analysis


def ms(t, fire):
    return round((t - fire) * 1000, 2) if t is not None else None


def rank_marks(times, n, fire, prefix=""):
    """When the first, the ceil(50 %)-th, ceil(99 %)-th and n-th of n arrived (ms after the
    fire time); None where fewer came."""
    times = sorted(times)

    def at(k):
        return ms(times[k - 1], fire) if len(times) >= k else None

    return {f"{prefix}first_ms": at(1), f"{prefix}p50_ms": at(math.ceil(0.5 * n)),
            f"{prefix}p99_ms": at(math.ceil(0.99 * n)), f"{prefix}all_ms": at(n)}


def step_marks(got, n, fire, prefix):
    """As rank_marks, from a poller's (time, count) changes: when the count first reached
    1, 50 %, 99 % and n."""
    if not got or not got.get("steps"):
        return {f"{prefix}{k}": None for k in ("first_ms", "p50_ms", "p99_ms", "all_ms")}
    steps = got["steps"]

    def reached(k):
        return next((ms(t, fire) for t, c in steps if c >= k), None)

    return {f"{prefix}first_ms": reached(1), f"{prefix}p50_ms": reached(math.ceil(0.5 * n)),
            f"{prefix}p99_ms": reached(math.ceil(0.99 * n)), f"{prefix}all_ms": reached(n),
            f"{prefix}at_start": steps[0][1], f"{prefix}changes": len(steps) - 1,
            f"{prefix}poll_us": round(1e6 * (got["to"] - got["from"]) / max(1, got["polls"]), 1)}


def name_counts(names, n):
    """Delivered, duplicated and missing fires by task name (entry i sends `bench.e<i>`)."""
    expected = {f"bench.e{i}" for i in range(n)}
    seen = {}
    for x in names:
        seen[x] = seen.get(x, 0) + 1
    distinct = sum(1 for x in seen if x in expected)
    return {"received": len(names), "distinct": distinct,
            "sent_pct": round(100.0 * distinct / n, 2),
            "duplicates": sum(c - 1 for x, c in seen.items() if x in expected),
            "missing": n - distinct,
            "unexpected": sum(c for x, c in seen.items() if x not in expected)}


def drain_queued(port, n, limit):
    """After a depth run: the consumer of the consumer runs takes the n messages left on the
    queue. Their task names give that run's duplicates and misses; the time from its first
    message to its last is the consumer's own ceiling on those very messages, against which
    the consumer runs' times are to be read."""
    if n == 0:
        return [], None
    cl = Clients()
    cl.start("consume", client_consume, port, QUEUE, time.time() + limit, n, 0.2)
    got = cl.collect(time.time() + limit + 10).get("consume", {}).get("got", [])
    times = sorted(t for t, _ in got)
    span = round((times[-1] - times[0]) * 1000, 2) if len(times) > 1 else None
    return [x for _, x in got], span


def beatd_log_connected(path, fire):
    """When beatd's `rabbitmq connected` line was written, in ms after the fire time: the beat
    opens its link to RabbitMQ at its first publish, so a first fire pays the handshake."""
    with open(path) as f:
        for line in f:
            if "rabbitmq connected" in line:
                try:
                    t = datetime.fromisoformat(line.split()[0].replace("Z", "+00:00"))
                except ValueError:
                    return None
                return ms(t.timestamp(), fire)
    return None


def beatd_log_summary(path):
    """From beatd's log: the largest `lateness_ms` of its `fire` lines (when the beat
    recorded the fires as sent, after their confirms, by its own clock), how many fire lines,
    and its first warnings and errors."""
    worst, fires, warnings = None, 0, []
    with open(path) as f:
        for line in f:
            if " WARN " in line or " ERROR " in line:
                if len(warnings) < 5:
                    warnings.append(line.strip()[:300])
            i = line.find("lateness_ms=")
            if i < 0:
                continue
            fires += 1
            v = line[i + len("lateness_ms="):].split()[0].strip('",')
            try:
                worst = max(worst or 0, int(v))
            except ValueError:
                pass
    return {"log_recorded_ms": worst, "log_fire_lines": fires, "log_warnings": warnings}


# -------------------------------------------------------------------- amqp_emission


def emission(b):
    """N entries due at one instant: beatd (`--broker-url amqp://...`, lock and last runs in
    the bench's Redis) vs `celery beat` (PersistentScheduler, the same RabbitMQ). Two runs
    of each (system, N): `consumer` (a client subscribed before the fire time, as a worker
    would be) and `depth` (nobody consuming; RabbitMQ's queue depth polled, and for beatd its
    confirm counter)."""
    try:
        rn = node(b)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        return {"error": repr(e)}
    ns = [1000, 10000]
    bound = 20 if b.quick else 60
    out = {"rabbitmq": rn.version, "bound_s": bound, "beatd": {}, "celery_beat": {}}
    for system in ("beatd", "celery_beat"):
        for n in ns:
            out[system][n] = {}
            for mode in ("consumer", "depth"):
                try:
                    r = emission_run(b, rn, system, n, mode, bound)
                except Exception as e:  # one failed run must not lose the others
                    r = {"error": repr(e)}
                out[system][n][mode] = r
                log("amqp_emission", system, n, mode,
                    {k: v for k, v in r.items() if k.endswith("_ms") or k in (
                        "sent_pct", "duplicates", "missing", "error")})
    return out


def emission_run(b, rn, system, n, mode, bound):
    b.r.flushall()
    fresh_queue(rn.port)
    beat = system == "beatd"
    if beat:
        # The fire time goes in the file: first time how long loading takes (as `emission`).
        d = b.dir("amqp-emit-check")
        with open(os.path.join(d, "s.toml"), "w") as f:
            f.write("".join(f'[[entry]]\nname = "e{i}"\ntask = "t"\nat = "2099-01-01T00:00:00Z"'
                            "\n\n" for i in range(n)))
        t0 = time.time()
        subprocess.run([BEATD, "check", d], capture_output=True, timeout=900)
        fire = math.ceil(time.time() + 7 + 3 * (time.time() - t0))
        at = datetime.fromtimestamp(fire, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        toml = "".join(f'[[entry]]\nname = "e{i}"\ntask = "bench.e{i}"\nat = "{at}"\n\n'
                       for i in range(n))
        p = b.beatd("amqp-emit", toml, extra=["--broker-url", rn.url])
        ready = b.wait_ready(p)
        logpath = os.path.join(b.dir_of("amqp-emit"), "beatd.log")
    else:
        # crontab() fires at a minute boundary; Celery imports and builds its schedule first.
        margin = 15 + n / 1000
        fire = math.ceil((time.time() + margin) / 60) * 60
        sleep_until(fire - margin)
        p = b.celery_beat("amqp-celery-emit", BENCH_SCHEDULE="named", BENCH_N=n,
                          BENCH_BROKER_URL=rn.url)
        ready = b.wait_log(p, "beat: Starting...", limit=fire + 50 - time.time())
        # Up too late for this minute (a loaded machine): crontab() fires every minute, and
        # a beat that starts within a minute is due at its end, so measure the next one.
        late_start = ready is not None and p.started + ready > fire - 2
        if late_start:
            fire += 60
        logpath = p.logpath
    cl = Clients()
    if mode == "consumer":
        cl.start("consume", client_consume, rn.port, QUEUE, fire + bound, n, 1.0)
    else:
        cl.start("depth", client_depth, rn.port, QUEUE, fire - 0.2, fire + bound, n)
        if beat:
            cl.start("confirms", client_confirms, p.http_port, fire - 0.2, fire + bound, n)
    sleep_until(fire - 0.3)
    before = proc_stats(p.pid)
    got = cl.collect(fire + bound + 15)
    after = proc_stats(p.pid)
    stop(p)  # before counting what is left on the queue
    c = connect(rn.port)
    final_depth = depth(c.channel())
    c.close()
    res = {
        "n": n,
        "mode": mode,
        "fire": fire,
        "startup_s": round(ready, 3) if ready is not None else None,
        "ready_before_fire_s": round(fire - (p.started + ready), 2) if ready else None,
        "cpu_fire_s": round(after.get("cpu_s", 0.0) - before.get("cpu_s", 0.0), 2),
        "cpu_total_s": round(after.get("cpu_s", 0.0), 2),
        "peak_rss_mb": round(after.get("VmHWM", 0.0), 1),
        "depth_at_end": final_depth,
    }
    if not beat and late_start:
        res["moved_to_next_minute"] = True
    if mode == "consumer":
        arrivals = (got.get("consume") or {}).get("got", [])
        res.update(rank_marks([t for t, _ in arrivals], n, fire))
        res.update(name_counts([x for _, x in arrivals], n))
    else:
        res.update(step_marks(got.get("depth"), n, fire, "depth_"))
        if beat:
            res.update(step_marks(got.get("confirms"), n, fire, "confirms_"))
        names, span = drain_queued(rn.port, final_depth, 60)
        res.update(name_counts(names, n))
        res["consumer_drain_ms"] = span
    if beat:
        res.update(beatd_log_summary(logpath))
        res["log_connected_ms"] = beatd_log_connected(logpath, fire)
    if ready is None:
        with open(logpath) as f:
            res["log_tail"] = f.read()[-800:]
    return res


# -------------------------------------------------------------------- amqp_worker


def queue_noops(b, rn, n):
    """n `bench.noop` messages on RabbitMQ as Celery publishes them, each with its own id:
    one made by Celery's `send_task` (to a scratch queue, read back with basic_get), then
    published again n times by py-amqp, Celery's own transport, with the properties and
    headers it read (so with the types py-amqp writes) and a new id in `id`, `root_id` and
    `correlation_id`. Returns the ids in queue order."""
    b.r.flushall()
    fresh_queue(rn.port)
    fresh_queue(rn.port, "template")
    code = "import benchapp; benchapp.app.send_task('bench.noop', queue='template')"
    subprocess.run([os.path.join(VENV_BIN, "python"), "-c", code],
                   env=b.env(BENCH_BROKER_URL=rn.url), check=True, timeout=60)
    import amqp
    c = connect(rn.port)
    ch = c.channel()
    tmpl = ch.basic_get("template", no_ack=True)
    if tmpl is None:
        raise RuntimeError("send_task left no message on the template queue")
    props = dict(tmpl.properties)
    headers = dict(props.pop("application_headers"))
    ids = []
    for _ in range(n):
        tid = str(uuid.uuid4())
        ids.append(tid)
        headers["id"] = headers["root_id"] = tid
        msg = amqp.Message(tmpl.body, application_headers=dict(headers),
                           **dict(props, correlation_id=tid))
        # As Celery publishes (tests/fixtures/celery-amqp): the default exchange, the
        # queue's name as routing key.
        ch.basic_publish(msg, exchange="", routing_key=QUEUE)
    deadline = time.time() + 60
    while depth(ch) < n and time.time() < deadline:
        time.sleep(0.05)
    queued = depth(ch)
    c.close()
    if queued != n:
        raise RuntimeError(f"{queued} of {n} messages queued")
    return ids


def drain(b, rn, name, cmd, n, limit, env):
    """Queues n no-ops, starts `cmd`, and times it until the queue is empty and every result
    is in Redis: from its start, and from its first stored result to its last."""
    ids = queue_noops(b, rn, n)
    head = [f"celery-task-meta-{i}" for i in ids[:20]]
    tail = [f"celery-task-meta-{i}" for i in ids[-200:]]
    d = b.dir(f"amqp-worker-{name}")
    c = connect(rn.port)
    ch = c.channel()
    p = subprocess.Popen(cmd, cwd=d, env=env, stdout=open(os.path.join(d, "log"), "w"),
                         stderr=subprocess.STDOUT)
    t0 = time.time()
    first = last = None
    peak = main_peak = 0.0
    procs = 1
    stats = {}
    while time.time() - t0 < limit and p.poll() is None:
        now = time.time()
        if first is None and b.r.exists(*head):
            first = now
        s = tree_stats(p.pid)
        if s["VmHWM"] > peak:
            peak, procs = s["VmHWM"], s["procs"]
        stats = proc_stats(p.pid) or stats
        main_peak = max(main_peak, stats.get("VmHWM", 0.0))
        if b.r.exists(*tail) == len(tail) and depth(ch) == 0:
            last = now
            break
        time.sleep(0.005)
    cpu = tree_stats(p.pid)["cpu_s"] + stats.get("cpu_waited_s", 0.0)
    stop(p, wait=30)
    left = depth(ch)
    c.close()
    done = b.results_stored()
    r = {
        "completed": done,
        "left_on_queue": left,
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
    if r["timed_out"] or (first and first - t0 > 1.0):  # what it did meanwhile
        with open(os.path.join(d, "log")) as f:
            r["log_tail"] = f.read()[-800:]
    log("amqp_worker", name, {k: v for k, v in r.items() if k != "log_tail"})
    return r


def worker(b):
    """N no-ops pre-queued on RabbitMQ, drained by beatd (the Rust no-op of
    bench/noop_worker.rs; `beatd worker` with an exec `/bin/true` task) and by
    `celery worker --pool=prefork` with the Python no-op; results in the bench's Redis."""
    try:
        rn = node(b)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        return {"error": repr(e)}
    n = int(os.environ.get("BENCH_AMQP_WORKER_TASKS", "5000" if b.quick else "20000"))
    out = {"rabbitmq": rn.version, "tasks": n}
    d = b.dir("amqp-worker-config")
    exec_toml = '[worker.tasks."bench.noop"]\nkind = "exec"\ncommand = ["/bin/true"]\n'
    with open(os.path.join(d, "exec.toml"), "w") as f:
        f.write(exec_toml)
    out["exec_config"] = exec_toml
    beatd_worker = [BEATD, "worker", "--broker-url", rn.url, "--result-backend", b.url,
                    "--queues", QUEUE, "--http-addr", "off", "--config",
                    os.path.join(d, "exec.toml")]
    celery = [CELERY, "-A", "benchapp", "worker", "--pool=prefork", "--without-gossip",
              "--without-mingle", "--without-heartbeat", "-l", "warning"]
    # beatd at warn, as Celery at -l warning: at info beatd logs a line per task. No
    # BEATD_REDIS_URL: the result backend is the flag (the Rust no-op reads it from there).
    env = b.env(BEATD_BROKER_URL=rn.url, BENCH_BROKER_URL=rn.url, BEATD_LOG="warn")
    env_noop = dict(env, BEATD_REDIS_URL=b.url)
    runs = [
        ("rust_noop", [NOOP_WORKER], 90, env_noop),
        ("exec", beatd_worker, 120, env),
        ("celery_prefork", celery, 180, env),
    ]
    for name, cmd, limit, e in runs:
        try:
            out[name] = drain(b, rn, name, cmd, n, limit, e)
        except Exception as ex:  # one failed run must not lose the others
            out[name] = {"error": repr(ex)}
            log("amqp_worker", name, out[name])
    pre = out.get("celery_prefork", {})
    for k in ("rust_noop", "exec"):
        x = out.get(k, {})
        for rate, key in (("tasks_per_s", f"ratio_{k}_vs_prefork"),
                          ("tasks_per_s_from_start", f"ratio_{k}_vs_prefork_from_start")):
            if x.get(rate) and pre.get(rate):
                out[key] = round(x[rate] / pre[rate], 2)
    return out
