"""Renders BENCHMARKS.md from one results file of bench/bench.py (and, when present, the
criterion figures in bench/results/criterion.json and notes in bench/notes.md)."""

import json
import os
import sys
from datetime import datetime, timezone

BENCH = os.path.dirname(os.path.abspath(__file__))



def slow_cell(x):
    """The SLOWLOG column of a client_emission row."""
    if "slowlog_max_ms" not in x:
        return "n/a"
    if not x.get("slowlog_calls_over_1ms"):
        return "< 1 ms"
    return f"{x['slowlog_max_ms']} ms ({x['slowlog_max_cmd']}; {x['slowlog_calls_over_1ms']} ≥ 1 ms)"

def client_rows(w, ce):
    """The table of one client_emission run."""
    w("| N | queue | LLEN first | 50 % | 99 % | all | BRPOP first | max PING | "
      "max PING before fire | longest Redis call | Redis waited for a CPU | visible steps |")
    w("|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for x in ce["rows"]:
        pg = x.get("ping", {})
        q = "empty" if x["queue"] == "empty" else f"{ce['prefill']:,} queued"
        w(f"| {x['n']:,} | {q} | {f(x['llen_first_ms'], ' ms', 2)} | "
          f"{f(x['llen_50_ms'], ' ms', 2)} | {f(x['llen_99_ms'], ' ms', 2)} | "
          f"{f(x['llen_all_ms'], ' ms', 2)} | "
          f"{f(x.get('brpop_first_ms'), ' ms', 2) if x['queue'] == 'empty' else 'n/a'} | "
          f"{f(pg.get('max_ms'), ' ms', 2)} | {f(pg.get('max_before_fire_ms'), ' ms', 2)} | "
          f"{slow_cell(x)} | {f(x.get('redis_run_delay_ms'), ' ms', 1)} | "
          f"{f(x.get('llen_changes'))} |")
    w("")


def f(v, unit="", nd=1):
    if v is None:
        return "–"
    if isinstance(v, float):
        v = round(v, nd)
    return f"{v:,}{unit}" if isinstance(v, int) else f"{v}{unit}"


def iso(t):
    if t is None:
        return "–"
    return datetime.fromtimestamp(t, timezone.utc).strftime("%H:%M:%S.%f")[:-3]


def yes(ok):
    return "**met**" if ok else "**missed**"


def main():
    path = sys.argv[1]
    r = json.load(open(path))
    rel = os.path.relpath(path, os.path.dirname(BENCH))
    m, v = r["machine"], r["versions"]
    out = []
    w = out.append
    w("# Benchmarks\n")
    w(f"Produced by `{r['command']}` ({r['started']} → {r['finished']} UTC); raw figures in "
      f"[`{rel}`]({rel}). Regenerate with the same command; see the README's "
      "\"Benchmarks\" section.\n")
    for again in r.get("remeasured", []):
        w(f"Measured again later, replacing that run's figures: {', '.join(again['sections'])} "
          f"(`{again['command']}`, {again['started']} → {again['finished']} UTC, "
          f"{again.get('commit')}, load at start `{again.get('load')}`; raw figures in "
          f"`{os.path.relpath(again['file'], os.path.dirname(BENCH))}`).\n")
    w("## Machine and versions\n")
    w(f"- {m['nproc']} CPUs ({m['cpu']}), {m['memory_gb']} GB RAM, Linux {m['kernel']}")
    w(f"- load at start: `{m['load']}`")
    w(f"- load at end: `{m.get('load_end', '')}`")
    for k, val in v.items():
        w(f"- {k}: {val}")
    rabbit = " and, for the RabbitMQ sections, one private `rabbitmq-server` node" if (
        r.get("amqp_emission") or r.get("amqp_worker")) else ""
    w(f"- one private `redis-server` on a free port, no persistence{rabbit}; every process on "
      "the same machine\n")

    targets = []
    em = r.get("emission")
    if em:
        w("## Emission: N entries due at the same second\n")
        w("Lateness is the time from the scheduled fire time to the message being in Redis (seen "
          "by an observer subscribed to the queue's keyspace notifications, see below; "
          "tokio-cron-scheduler: to the job callback, in-process, 6-field cron at that second). Celery beat runs `crontab()` (every minute; it has no seconds field) and "
          f"is watched for {em['celery_bound_s']} s after the minute. CPU and peak RSS are the "
          "scheduler process's (`/proc/<pid>/stat` utime+stime, `/proc/<pid>/status` VmHWM); "
          "\"CPU at fire\" is from 0.3 s before the fire time to the end of the measurement.\n")
        w("| system | N | sent | first | last | p50 | p99 | max | CPU at fire | CPU total | "
          "peak RSS |")
        w("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        for sysname, label in (("beatd", "beatd"), ("celery_beat", "Celery beat"),
                               ("tokio_cron_scheduler", "tokio-cron-scheduler")):
            for n, x in em[sysname].items():
                w(f"| {label} | {int(n):,} | {f(x['sent_pct'], ' %', 2)} | "
                  f"{f(x['first_ms'], ' ms')} | {f(x['last_ms'], ' ms')} | "
                  f"{f(x['p50_ms'], ' ms', 2)} | {f(x['p99_ms'], ' ms', 2)} | "
                  f"{f(x['max_ms'], ' ms', 2)} | {f(x['cpu_fire_s'], ' s', 2)} | "
                  f"{f(x['cpu_total_s'], ' s', 2)} | {f(x['peak_rss_mb'], ' MB')} |")
        w("")
        b, c, t = em["beatd"], em["celery_beat"], em["tokio_cron_scheduler"]
        w("Ratios (last arrival, beatd vs peer):\n")
        for n in b:
            parts = []
            for name, peer in (("Celery beat", c), ("tokio-cron-scheduler", t)):
                p = peer.get(n)
                if p and p["last_ms"] and b[n]["last_ms"] and p["sent_pct"] >= 100:
                    parts.append(f"{name} {p['last_ms'] / max(b[n]['last_ms'], 0.01):,.0f}× later")
                elif p:
                    parts.append(f"{name} sent {p['sent_pct']} % within its bound")
            w(f"- N = {int(n):,}: " + "; ".join(parts))
        w("")
        t10 = b.get("10000")
        if t10:
            ok = t10["sent_pct"] >= 100 and t10["p99_ms"] is not None and t10["p99_ms"] < 10
            targets.append(("10,000 due at once: all sent, p99 < 10 ms",
                            f"{t10['sent_pct']} % sent, p99 {t10['p99_ms']} ms", ok))
        t100 = b.get("100000")
        if t100:
            ok = t100["sent_pct"] >= 100 and t100["last_ms"] is not None and t100["last_ms"] < 1000
            targets.append(("100,000 due at once: all sent within 1 s",
                            f"{t100['sent_pct']} % sent, last {t100['last_ms']} ms", ok))

    ce = r.get("client_emission")
    if ce:
        w("## What clients see: N entries due at the same second (beatd)\n")
        w("The emission section times the message's arrival in Redis; this one times what "
          "three separate clients of the same Redis see, in ms after the scheduled fire time (wall "
          "clock, same host; each client a process of its own with its own connection, RESP on "
          "a raw socket, `time.time()` once then `time.perf_counter()`). N entries "
          "`cron = \"<s> <m> * * * *\"` (6 fields) due at one second 8–15 s after beatd starts; "
          f"the queue `celery` either empty or pre-filled with {ce['prefill']:,} dummy messages "
          "(LPUSHed before beatd starts). **LLEN**: a client polling `LLEN celery` in a tight "
          "loop from 0.2 s before the fire time: the first reply above the pre-fill, then the "
          "first reaching pre-fill + 50 %, 99 % and all of N. **BRPOP**: a client blocked in "
          "`BRPOP celery 5` from 1 s before, on the empty queue only (on the busy one it "
          "would get a pre-filled message at once); it takes one message, so on the empty queue "
          "\"all\" is N − 1. **PING**: an unrelated client sending `PING` from 1 s before to 3 s "
          f"after the fire time, {ce['ping_pause_ms']} ms between round trips: its longest "
          "round trip (and, for comparison, the longest in the second before the fire). beatd "
          "is stopped and Redis flushed between rows.\n")
        cpu = next((x.get("redis_cpu") for x in ce["rows"] if x.get("redis_cpu") is not None),
                   None)
        if cpu is not None:
            w(f"redis-server ran alone on CPU {cpu} (`bench.py --redis-cpu {cpu}`), beatd and the "
              "clients on the other, as a production Redis has cores of its own: unpinned on "
              "this 2-core machine, the spinning LLEN client, beatd and Redis share two cores and "
              "Redis itself waits for a CPU (the \"Redis waited\" column, from its "
              "`/proc/<pid>/schedstat`, over the 3.3 s window), and the PING client waits behind "
              "beatd for a CPU, so it runs at a real-time priority (SCHED_FIFO; it sleeps "
              "0.5 ms between round trips). Every other task the kernel lets move (the "
              "machine's own services, Redis's background threads, kdamond) is moved off "
              "Redis's CPU for the run, as `cset shield` does: traced with `perf` "
              "(sched_switch), they took that CPU from Redis for up to 4 ms at a time. "
              "\"Steal\" in the raw rows is the hypervisor's time on Redis's virtual CPU "
              "(0 in every row of this run). The same measurement unpinned is the second "
              "table.\n")
        client_rows(w, ce)
        shared = r.get("client_emission_shared_cpus")
        if shared:
            w("The same measurement with Redis sharing both CPUs with beatd and the clients "
              "(no pinning), in the same session:\n")
            client_rows(w, shared)
        w("**Longest Redis call**: the longest command Redis' own `SLOWLOG` recorded from 1 s "
          "before to 3 s after the fire time (threshold 1 ms; the command's name, and how many "
          "took 1 ms or more); Redis' `LATENCY` monitor (threshold 5 ms) names anything else "
          "that held it (expiry, eviction, fork), and is listed below the table when it saw "
          "something. A PING round trip longer than the longest call was the client or the "
          "machine (2 cores shared by Redis, beatd and the three clients), not a call holding "
          "Redis.\n")
        for x in ce["rows"]:
            if x.get("latency_events"):
                w(f"- N = {x['n']:,}, {x['queue']}: LATENCY events (max ms) "
                  f"{x['latency_events']}")
        odd = [x for x in ce["rows"] if x.get("final_len") != x.get("expected_len")]
        for x in odd:
            w(f"- N = {x['n']:,}, {x['queue']}: the queue held {x.get('final_len'):,} messages "
              f"at the end, {x.get('expected_len'):,} expected.")
        if odd:
            w("")
        polls = [x.get("llen_poll_us") for x in ce["rows"] if x.get("llen_poll_us")]
        if polls:
            w(f"The LLEN poller made one round trip every {min(polls)}–{max(polls)} µs; "
              "\"visible steps\" counts the distinct lengths it saw after the first change "
              "(onto a busy queue: one step per prepared transaction of up to 5,000 messages, then at most 1,000 per script call).\n")
        rows = {(x["n"], x["queue"]): x for x in ce["rows"]}
        for n, qs in ((10000, ("empty", "busy")), (100000, ("empty",))):
            for qn in qs:
                x = rows.get((n, qn))
                if not x:
                    continue
                ok = x["llen_99_ms"] is not None and x["llen_99_ms"] <= 10
                meas = f"99 % at {x['llen_99_ms']} ms"
                if qn == "empty":
                    ok = ok and x.get("brpop_first_ms") is not None and x["brpop_first_ms"] <= 5
                    meas += f", BRPOP {x.get('brpop_first_ms')} ms"
                    label = f"clients, {n:,} into an empty queue: 99 % seen ≤ 10 ms, first BRPOP ≤ 5 ms"
                else:
                    label = f"clients, {n:,} into a busy queue: 99 % seen ≤ 10 ms"
                targets.append((label, meas, ok))
        x = rows.get((100000, "busy"))
        if x:
            targets.append((f"clients, 100,000 into a queue of {ce['prefill']:,}: all seen ≤ 500 ms",
                            f"all at {x['llen_all_ms']} ms",
                            x["llen_all_ms"] is not None and x["llen_all_ms"] <= 500))
        pings = [(x, x.get("ping", {}).get("max_ms")) for x in ce["rows"]]
        worst = max(pings, key=lambda p: p[1] if p[1] is not None else 1e9)
        ok = all(p is not None and p <= 10 for _, p in pings)
        targets.append(("clients: max PING ≤ 10 ms at every N",
                        f"worst {worst[1]} ms (N = {worst[0]['n']:,}, {worst[0]['queue']})", ok))
        slows = [(x, x.get("slowlog_max_ms")) for x in ce["rows"] if "slowlog_max_ms" in x]
        if slows:
            sw = max(slows, key=lambda p: p[1])
            targets.append(("Redis: no single call ≥ 10 ms around the fire (SLOWLOG), every N",
                            f"longest {sw[1]} ms ({sw[0].get('slowlog_max_cmd')}, "
                            f"N = {sw[0]['n']:,}, {sw[0]['queue']})",
                            all(v < 10 for _, v in slows)))

    br = r.get("burst_reload")
    if br:
        for x in br.get("burst", []):
            ping = (x.get("ping") or {}).get("max_ms")
            if x["n"] == 10000:
                f2a = x.get("first_to_all_ms")
                targets.append(("catch-up burst of 10,000 overdue fires: all seen within 50 ms "
                                "of the first", f"{f2a} ms", f2a is not None and f2a <= 50))
            targets.append((f"catch-up burst of {x['n']:,}: max PING ≤ 10 ms (20 s from the "
                            "start)", f"{ping} ms", ping is not None and ping <= 10))
        for x in br.get("reload", []):
            targets.append((f"reload 3 s before a fire time of {x['n']:,} unchanged entries: "
                            "parked batch kept, on time",
                            f"{x.get('batch_outcome')}, all seen {x.get('llen_all_ms')} ms "
                            "after the fire",
                            x.get("batch_outcome") == "kept"
                            and (x.get("llen_all_ms") or 1e9) <= 10))

    d = r.get("drift")
    if d:
        w(f"## Drift: one entry every second, {d['duration_s']} s\n")
        w("Spacing of consecutive arrivals; drift is how far the last send is from "
          "first + k × 1 s.\n")
        w("| system | sends | mean spacing | min | max | drift at end | drift per minute |")
        w("|---|--:|--:|--:|--:|--:|--:|")
        for k, label in (("beatd", "beatd `every = \"1s\"`"),
                         ("celery_beat", "Celery beat `timedelta(seconds=1)`")):
            x = d[k]
            w(f"| {label} | {x.get('sends')} | {f(x.get('spacing_mean_ms'), ' ms', 2)} | "
              f"{f(x.get('spacing_min_ms'), ' ms')} | {f(x.get('spacing_max_ms'), ' ms')} | "
              f"{f(x.get('drift_end_ms'), ' ms')} | {f(x.get('drift_per_min_ms'), ' ms')} |")
        x = d["beatd"]
        if "lateness_p50_ms" in x:
            w(f"\nbeatd's sends are {x['lateness_p50_ms']} ms (median) and at most "
              f"{x['lateness_max_ms']} ms after their scheduled instants.")
        w("")
        ok = abs(x.get("drift_end_ms", 1e9)) < 20
        targets.append(("zero drift", f"{x.get('drift_end_ms')} ms after "
                        f"{d['duration_s']} s", ok))

    fo = r.get("failover")
    if fo:
        w("## Failover: two replicas, one entry every second, the leader stopped\n")
        w("beatd: `--lock-ttl 5s`, `catch_up = \"all\"`. RedBeat: `redbeat_lock_timeout = 5`, "
          "beat `--max-interval 1` (at its defaults the lock timeout is 5 × the 300 s loop "
          "interval = 1,500 s). Gap: from the last send before the stop to the first after. "
          "beatd's duplicates and misses are exact (each message names its fire time); "
          "RedBeat's are inferred from spacing (< 0.5 s: duplicate; n s: n − 1 missed).\n")
        w("| system | stop | gap | first send after stop | latest fire (beatd) | duplicates | "
          "misses | sends |")
        w("|---|---|--:|--:|--:|--:|--:|--:|")
        for k in ("beatd_TERM", "beatd_KILL", "redbeat_TERM", "redbeat_KILL"):
            if k not in fo:
                continue
            x = fo[k]
            name, sig = k.split("_")
            sig = {"TERM": "SIGTERM", "KILL": "kill -9"}[sig]
            w(f"| {'beatd' if name == 'beatd' else 'RedBeat'} | {sig} | {f(x.get('gap_s'), ' s', 2)}"
              f" | {f(x.get('first_send_after_kill_s'), ' s', 2)} | "
              f"{f(x.get('max_lateness_s'), ' s', 2)} | {x.get('duplicates')} | "
              f"{x.get('misses')} | {x.get('sends')} |")
        w("")
        t = fo.get("beatd_TERM", {})
        # "No gap": every fire on time across the handover (within 100 ms), none repeated.
        ok = (t.get("max_lateness_s", 9) < 0.1 and t.get("duplicates") == 0
              and t.get("misses") == 0)
        targets.append(("SIGTERM failover: no gap (every fire within 100 ms), no duplicate",
                        f"gap {t.get('gap_s')} s, latest fire {t.get('max_lateness_s')} s "
                        f"late, {t.get('duplicates')} dup, {t.get('misses')} missed", ok))
        k = fo.get("beatd_KILL", {})
        ok = (k.get("first_send_after_kill_s", 99) <= k.get("ttl_s", 5) + 1
              and k.get("duplicates") == 0 and k.get("misses") == 0)
        targets.append(("kill -9 failover: within TTL + 1 s, no duplicate",
                        f"first send {k.get('first_send_after_kill_s')} s after the kill, "
                        f"{k.get('duplicates')} dup, {k.get('misses')} missed", ok))

    wk = r.get("worker")
    if wk:
        w(f"## Worker: {wk['tasks']:,} no-op tasks queued beforehand\n")
        w("Throughput counts from the first stored result to the last (results go to the "
          "Redis result backend in every case); peak RSS sums the worker's processes "
          "(a prefork pool's children included). beatd: a Rust no-op handler registered "
          "through the library (`bench/noop_worker.rs`, default options: concurrency = CPUs, "
          "prefetch × 4); Celery: `--without-gossip --without-mingle --without-heartbeat`.\n")
        w("| worker | completed | tasks/s | wall from start | peak RSS | processes |")
        w("|---|--:|--:|--:|--:|--:|")
        for k, label in (("beatd", "beatd worker"), ("celery_solo", "celery worker --pool=solo"),
                         ("celery_prefork", "celery worker --pool=prefork")):
            x = wk.get(k)
            if x:
                w(f"| {label} | {x['completed']:,} | {f(x.get('tasks_per_s'))} | "
                  f"{f(x['wall_s_from_start'], ' s', 2)} | {f(x['peak_rss_mb'], ' MB')} | "
                  f"{x['processes']} |")
        w("")
        ratio = wk.get("ratio_vs_prefork")
        if ratio:
            w(f"beatd worker / prefork: {ratio}×.\n")
            targets.append(("worker ≥ 10× celery prefork", f"{ratio}×", ratio >= 10))

    wkk = r.get("worker_kinds")
    if wkk:
        w(f"## Worker kinds: {wkk['tasks']:,} tasks queued beforehand\n")
        w("The same `bench.noop` Celery messages (made by `send_task`, one id each), the same "
          "Redis, one run. `beatd worker --queues celery --http-addr off` (the real binary, "
          "default concurrency = CPUs, logs at `warn`) with a `beatd.toml` that defines "
          "`bench.noop` as `kind = \"exec\"`, `command = [\"/bin/true\"]` (a process per task), "
          f"or as `kind = \"http\"` POSTing to a local endpoint that answers 200 with "
          f"`{{\"ok\":true}}` ({wkk.get('http_endpoint')}); the Rust no-op handler "
          "(`bench/noop_worker.rs`); "
          "`celery worker --pool=prefork` running the Python no-op task "
          "(`--without-gossip --without-mingle --without-heartbeat -l warning`). Timed until "
          "every result is in the Redis result backend: from the worker's start (startup "
          "included), and from its first stored result to its last. Peak RSS sums the worker "
          "and its children (prefork's pool; for exec, the `/bin/true` processes alive at "
          "a sample), sampled every 5 ms; CPU includes an exec worker's waited-for children. "
          "The http endpoint is not counted in either.\n")
        w("| worker | completed | tasks/s (first → last result) | tasks/s from start | "
          "startup to first result | peak RSS | peak RSS, main process | CPU |")
        w("|---|--:|--:|--:|--:|--:|--:|--:|")
        for k, label in (("rust_noop", "beatd, Rust no-op (library)"),
                         ("exec", "`beatd worker`, exec `/bin/true`"),
                         ("http", "`beatd worker`, http"),
                         ("celery_prefork", "celery worker --pool=prefork")):
            x = wkk.get(k)
            if x:
                w(f"| {label} | {x['completed']:,} | {f(x.get('tasks_per_s'))} | "
                  f"{f(x.get('tasks_per_s_from_start'))} | "
                  f"{f(x.get('startup_to_first_result_s'), ' s', 2)} | "
                  f"{f(x['peak_rss_mb'], ' MB')} | {f(x.get('peak_rss_main_mb'), ' MB')} | "
                  f"{f(x.get('cpu_s'), ' s', 2)} |")
        w("")
        if wkk.get("http", {}).get("endpoint_cpu_s") is not None:
            w(f"The http endpoint answered {f(wkk.get('http_endpoint_requests'))} requests "
              f"and used {wkk['http']['endpoint_cpu_s']} s of CPU during the http row.\n")
        for k, goal in (("exec", 2), ("http", 5)):
            ratio = wkk.get(f"ratio_{k}_vs_prefork")
            ratio0 = wkk.get(f"ratio_{k}_vs_prefork_from_start")
            if ratio is not None:
                w(f"- {k} / prefork: {ratio}× (first → last result), {ratio0}× from start")
            targets.append((f"worker, {k} task ≥ {goal}× celery prefork (first → last result)",
                            f"{ratio}× ({ratio0}× from start)" if ratio else "not measured",
                            ratio is not None and ratio >= goal))
        w("")

    fp = r.get("footprint")
    if fp:
        w(f"## Footprint: {fp['entries']:,} entries, idle, {fp['window_s']} s\n")
        w("\"Before any fire\": no entry falls due in the window (daily cron). \"After all fired\": "
          "the same number of entries all fired at one instant 25 s after start (the queue "
          "held them all after the time shown); the window starts 5 s later. Startup to ready: "
          "beatd until `/readyz` answers 200; Celery beat until its `beat: Starting...` line. "
          "RSS splits into anonymous memory (heap, stacks) and file-backed pages (the "
          "binary's and the C library's code and data mapped in; clean pages shared with the "
          "page cache), from `/proc/<pid>/status`.\n")
        w("| system | state | startup to ready | RSS | anonymous | file-backed | peak RSS | CPU in the window |")
        w("|---|---|--:|--:|--:|--:|--:|--:|")
        rows = [("beatd", "beatd", "before any fire"),
                ("beatd_after_fire", "beatd", "after all fired"),
                ("celery_beat", "Celery beat", "before any fire")]
        for k, label, state in rows:
            x = fp.get(k)
            if not x:
                continue
            if k == "beatd_after_fire" and x.get("all_in_queue_after_s") is not None:
                state += f" (all in the queue {x['all_in_queue_after_s']} s after the fire time)"
            w(f"| {label} | {state} | {f(x['startup_to_ready_s'], ' s', 3)} | {f(x['rss_mb'], ' MB')} | "
              f"{f(x.get('rss_anon_mb'), ' MB')} | {f(x.get('rss_file_mb'), ' MB')} | "
              f"{f(x['peak_rss_mb'], ' MB')} | {f(x['cpu_in_window_s'], ' s', 2)} |")
        w("")
        w("beatd's CPU in the window is its lease renewals (every TTL/3 = 3.3 s) and the "
          "leader's poll for control requests (every 250 ms); Celery beat sleeps until its "
          "next due entry (at most its 300 s max interval).\n")
        for k, state in (("beatd", "before any fire"), ("beatd_after_fire", "after all fired")):
            x = fp.get(k)
            if not x:
                continue
            targets.append((f"idle with 10,000 entries, {state}: < 15 MB RSS",
                            f"{x['rss_mb']} MB", x["rss_mb"] < 15))
            targets.append((f"idle with 10,000 entries, {state}: no CPU between fire times "
                            f"(≤ 0.02 s in {fp['window_s']} s)",
                            f"{x['cpu_in_window_s']} s", x["cpu_in_window_s"] <= 0.02))

    rq = r.get("rq")
    if rq:
        runs = rq["runs"]
        w("## RQ: two `rq cron` processes vs two beatd beats on the same schedule\n")
        w(f"One job, `benchjobs.tick`, every second onto an RQ queue; two replicas of each "
          f"scheduler against the same Redis, one system at a time; no worker, so every job "
          f"enqueued is still on `rq:queue:<name>` at the end with its `rq:job:<id>` hash. "
          f"RQ {v.get('rq', '?')}: `rq cron benchcron` twice with the same config "
          "(`cron.register(benchjobs.tick, queue_name=..., interval=1)`, bench/peers/benchcron.py; "
          "`interval` takes whole seconds, 1 is the smallest; each process also puts its "
          "replica name in the job's `meta`, as RQ records no scheduler on a job). beatd: two "
          "`beatd beat --lock-ttl 5s` with `protocol = \"rq\"`, `task = \"benchjobs.tick\"`, "
          "`serializer = \"json\"`, `every = \"1s\"`, `catch_up = \"all\"`, "
          "`catch_up_window = \"1m\"` (the last row of the second table: the default "
          "`catch_up = \"latest\"`).\n")
        w("Fire times: beatd's are exact, the `beatd_scheduled_at` (RFC 3339, ms) in each "
          "job's meta; its `every` fire times are whole seconds. `rq cron` records no fire "
          "time: an interval job runs at start and then `interval` after its previous run, so "
          "a fire time here is the UTC second of the job's `enqueued_at`, floored. A process's "
          "runs are about `interval` apart (the spacings are below the table), so it lands "
          "once in each second; jitter across a second's boundary could put two of one "
          "process's jobs in one second and none in the next (one duplicate, one miss), which "
          "the per-process counts would show. The window "
          "is whole seconds from 3–4 s after both replicas are up (their startup sends are "
          "not counted); every second in it is "
          "one intended fire time. A duplicate is a job beyond the first for a fire time; "
          "missed is a fire time with no job. Jobs sent after the window's end for a fire "
          "time inside it (catch-up) count; the last is looked for 3 s after the end.\n")
        w("| system | replicas | window | fire times | enqueued | duplicates | missed |")
        w("|---|--:|--:|--:|--:|--:|--:|")
        for k, label in (("rq_cron_steady", "`rq cron`"), ("beatd_steady", "beatd")):
            x = runs.get(k)
            if not x:
                continue
            if "error" in x:
                w(f"| {label} | 2 | – | – | – | – | run failed: `{x['error']}` |")
                continue
            w(f"| {label} | {x['replicas']} | {x['window_s']} s | {x['fire_times']} | "
              f"{x['enqueued']} | {x['duplicates']} | {x['missed']} |")
        w("")
        st = runs.get("rq_cron_steady", {})
        if st.get("per_replica"):
            w("`rq cron` per process: " + ", ".join(
                f"{r_} enqueued {p['enqueued']} (runs {p.get('spacing_min_ms')}–"
                f"{p.get('spacing_max_ms')} ms apart)" for r_, p in st["per_replica"].items())
              + ".\n")
        w(f"### One or both stopped for {rq['stop_s']} s\n")
        w(f"{rq['before_stop_s']} s into the window, one replica (beatd: the leader, named by "
          f"the lock; `rq cron`: the first started, the two do not coordinate) or both get "
          f"SIGSTOP, then SIGCONT {rq['stop_s']} s later; or the one gets kill -9 and stays "
          f"dead. The window runs {rq['after_stop_s']} s past the resume. \"While stopped\": "
          "the fire times from the stop to the resume (kill -9: to the window's end). Late: "
          "jobs in Redis more than 1 s after their fire time (beatd's catch-up; `rq cron` "
          "has no fire time to be late for). First send: from the signal to the next job "
          "seen on the queue (polled every 5 ms).\n")
        w("| system | stopped | signal | window | fire times | enqueued | duplicates | missed "
          "| missed while stopped | late > 1 s | first send after the stop |")
        w("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")
        rows = (("rq_cron_stop_one", "`rq cron`"), ("beatd_stop_one", "beatd"),
                ("rq_cron_kill_one", "`rq cron`"), ("beatd_kill_one", "beatd"),
                ("rq_cron_stop_both", "`rq cron`"), ("beatd_stop_both", "beatd"),
                ("beatd_latest_stop_both", "beatd, `catch_up = \"latest\"`"))
        for k, label in rows:
            x = runs.get(k)
            if not x:
                continue
            if "error" in x:
                w(f"| {label} | – | – | – | – | – | – | – | – | – | run failed: "
                  f"`{x['error']}` |")
                continue
            who = ("both" if x.get("stopped") == 2 else
                   ("the leader" if x.get("stopped_leader") else "one"))
            w(f"| {label} | {who} | {x.get('signal')} | {x['window_s']} s | "
              f"{x['fire_times']} | {x['enqueued']} | {x['duplicates']} | {x['missed']} | "
              f"{x.get('missed_while_stopped')} of {x.get('fire_times_while_stopped')} | "
              f"{f(x.get('late_over_1s'))} | {f(x.get('first_send_after_stop_s'), ' s', 2)} |")
        w("")
        odd = [(k, x) for k, x in runs.items() if "error" not in x and (
            x.get("hashes_not_listed") or x.get("listed_without_hash") or x.get("off_grid")
            or x.get("no_fire_time"))]
        if odd:
            w("Left in Redis after the processes stopped (every process gets SIGTERM at the "
              "end; beatd writes an RQ job's hash when it stages the fire, up to 5 s ahead, "
              "and lists its id at the fire time):\n")
        for k, x in odd:
            parts = []
            if x.get("hashes_not_listed"):
                fires = x.get("hashes_not_listed_fire_times", [])
                when = ", ".join(iso(t) for t in fires)
                stopped = x.get("stopped_all_at")
                after = sum(1 for t in fires if stopped and t > stopped)
                parts.append(f"{x['hashes_not_listed']} job hash(es) not on the queue, fire "
                             f"time {when}" + (f" ({after} after the last process stopped at "
                                               f"{iso(stopped)})" if stopped else "")
                             + f", TTL {x.get('hashes_not_listed_ttls')} (-1: none)")
            for fld, what in (("listed_without_hash", "ids on the queue without a hash"),
                              ("off_grid", "fire times off the 1 s grid"),
                              ("no_fire_time", "jobs without a fire time")):
                if x.get(fld):
                    parts.append(f"{x[fld]} {what}")
            w(f"- `{k}`: " + "; ".join(parts) + ".")
        if odd:
            w("")

    br = r.get("burst_reload")
    if br:
        w("## Catch-up bursts and reloads before a fire time (`burst_reload`, beatd only)\n")
        w("A burst: N entries every 10 s with `catch_up = \"latest\"` sent one fire time, the "
          "beat stopped for two more, and a new beat owes the latest for every entry at once. A "
          "client polling `LLEN` sees them; times from the new process's start.\n")
        w("Longest PING: an unrelated client's longest round trip in the 20 s after the start; "
          "longest call: SLOWLOG's slowest command in that time; Redis CPU wait: how long "
          "Redis's main thread waited, runnable, for its CPU over the 70 s (schedstat).\n")
        w("| N | startup | first seen | all seen | first → all | longest PING | longest call "
          "| Redis CPU wait |")
        w("|--:|--:|--:|--:|--:|--:|--:|--:|")
        for x in br.get("burst", []):
            top = (x.get("slowlog_top") or [{}])[0]
            w(f"| {x['n']:,} | {f(x.get('startup_s', 0) * 1000, ' ms')} "
              f"| {f(x.get('from_start_llen_first_ms'), ' ms')} "
              f"| {f(x.get('from_start_llen_all_ms'), ' ms')} "
              f"| {f(x.get('first_to_all_ms'), ' ms')} "
              f"| {f((x.get('ping') or {}).get('max_ms'), ' ms')} "
              f"| {f(top.get('ms'), ' ms')} "
              f"| {f(x.get('redis_run_delay_ms'), ' ms')} |")
        w("")
        w("A reload: N entries due at one instant; 3 s before it a new file with one more entry "
          "appears and the beat gets SIGHUP; the beat applies it after the watcher's 300 ms "
          "settle and the parse (\"applied\"). Times after the fire time; the PING window "
          "runs from 3.5 s before it to 3 s after.\n")
        w("| N | SIGHUP before the fire | applied before the fire | parked batch | first seen "
          "| 99 % | all | longest PING |")
        w("|--:|--:|--:|---|--:|--:|--:|--:|")
        for x in br.get("reload", []):
            w(f"| {x['n']:,} | {f(x.get('reload_before_fire_ms'), ' ms')} "
              f"| {f(x.get('reload_applied_before_fire_ms'), ' ms')} "
              f"| {x.get('batch_outcome', 'kept' if x.get('kept_batch_logged') else '?')} "
              f"| {f(x.get('llen_first_ms'), ' ms')} | {f(x.get('llen_99_ms'), ' ms')} "
              f"| {f(x.get('llen_all_ms'), ' ms')} "
              f"| {f((x.get('ping') or {}).get('max_ms'), ' ms')} |")
        w("")

    ae = r.get("amqp_emission")
    if ae:
        amqp_emission(w, ae)

    aw = r.get("amqp_worker")
    if aw:
        amqp_worker(w, aw)

    crit = os.path.join(BENCH, "results", "criterion.txt")
    if os.path.exists(crit):
        w("## Micro-benchmarks (`cargo bench`, criterion, benches/hot_paths.rs)\n")
        w("Median time per call, with criterion's confidence interval; next fire time from "
          "2026-03-29T00:30:17Z (the night of the Paris spring-forward).\n")
        w("| benchmark | time | interval |")
        w("|---|--:|---|")
        name = None
        for line in open(crit):
            t = line.strip()
            if t.startswith(("next_fire/", "encode/")):
                name = t.split()[0]
            if "time:" in t and name:
                vals = t[t.index("[") + 1:t.index("]")].split()
                lo, mid, hi = (" ".join(vals[i:i + 2]) for i in (0, 2, 4))
                w(f"| `{name}` | {mid} | {lo} – {hi} |")
                name = None
        w("")

    w("## Targets (DESIGN.md, \"Performance targets\")\n")
    w("| target | measured | |")
    w("|---|---|---|")
    for name, meas, ok in targets:
        w(f"| {name} | {meas} | {yes(ok)} |")
    w("")
    notes = os.path.join(BENCH, "notes.md")
    if os.path.exists(notes):
        w(open(notes).read().strip() + "\n")
    print("\n".join(out))


AMQP_SYSTEMS = (("beatd", "beatd"), ("celery_beat", "Celery beat"))


def amqp_runs(ae, mode):
    """(label, N, run) of one mode, beatd first; failed runs included (they carry "error")."""
    for k, label in AMQP_SYSTEMS:
        for n, modes in ae.get(k, {}).items():
            x = modes.get(mode)
            if x:
                yield label, int(n), x


def amqp_emission(w, ae):
    w("## RabbitMQ emission: N entries due at the same second\n")
    if "error" in ae:
        w(f"Not run: `{ae['error']}`.\n")
        return
    bound = ae["bound_s"]
    w(f"One private RabbitMQ node ({ae.get('rabbitmq')}, no plugins, on free ports) and the "
      "Redis above, one run. beatd: `beatd beat --broker-url amqp://… --redis-url redis://…` "
      "(lock and last runs in Redis; publisher confirms and `mandatory`), N one-shot entries "
      "(`at`) due 7 s or more after it starts. Celery beat: its default PersistentScheduler, "
      "`crontab()` (it has no seconds field), the same RabbitMQ as broker; watched for "
      f"{bound} s after the minute. Entry i sends task `bench.e<i>`, so every message names "
      "its entry: duplicates and misses are counted by task name. The queue `celery` is "
      "deleted and declared again (as Celery declares it) before each run; each (system, N) "
      "runs twice. Times in ms after the fire time (wall clock, same host).\n")
    w("**With a consumer.** A separate process (py-amqp, Celery's transport library) "
      "subscribed to `celery` before the fire time (`basic_consume`, no ack), stamping each "
      "message as py-amqp hands it over: when it has the first, 50 %, 99 % and all N. "
      "\"Recorded as sent\" is the largest `lateness_ms` of beatd's own `fire` log lines: when "
      "the beat had every confirm and had recorded the runs in Redis. beatd opens its "
      "connection to RabbitMQ at its first publish, so the first message of a first fire "
      "includes the AMQP handshake (\"connected\": beatd's `rabbitmq connected` log line).\n")
    w("| system | N | received | duplicates | missing | first | 50 % | 99 % | all | "
      "connected | recorded as sent | CPU at fire | peak RSS |")
    w("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for label, n, x in amqp_runs(ae, "consumer"):
        if "error" in x:
            w(f"| {label} | {n:,} | run failed: `{x['error']}` |||||||||")
            continue
        w(f"| {label} | {n:,} | {f(x.get('received'))} ({f(x.get('sent_pct'), ' %', 2)}) | "
          f"{f(x.get('duplicates'))} | {f(x.get('missing'))} | {f(x.get('first_ms'), ' ms')} | "
          f"{f(x.get('p50_ms'), ' ms')} | {f(x.get('p99_ms'), ' ms')} | "
          f"{f(x.get('all_ms'), ' ms')} | {f(x.get('log_connected_ms'), ' ms')} | "
          f"{f(x.get('log_recorded_ms'), ' ms')} | "
          f"{f(x.get('cpu_fire_s'), ' s', 2)} | {f(x.get('peak_rss_mb'), ' MB')} |")
    w("")
    w("**Nobody consuming.** The same, with no consumer attached: RabbitMQ's queue depth "
      "(the `message_count` of a passive `queue.declare`, polled every 1 ms from 0.2 s "
      "before the fire time) and, for beatd, `beatd_amqp_confirms_total` read from its "
      "`/metrics` (polled every 1 ms on one keep-alive connection): when each first "
      "reached 1, 50 %, 99 % and N. After the scheduler stopped, the consumer of the table "
      "above took what the queue held (task names: duplicates, misses); \"consumer drain\" is "
      "its time from the first of those messages to the last, its own ceiling on N messages "
      "already queued.\n")
    w("| system | N | in the queue | duplicates | missing | depth: first | 50 % | 99 % | all "
      "| confirmed: first | 50 % | 99 % | all | consumer drain |")
    w("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for label, n, x in amqp_runs(ae, "depth"):
        if "error" in x:
            w(f"| {label} | {n:,} | run failed: `{x['error']}` ||||||||||||")
            continue
        conf = ([f(x.get(f"confirms_{k}_ms"), " ms") for k in ("first", "p50", "p99", "all")]
                if label == "beatd" else ["n/a"] * 4)
        w(f"| {label} | {n:,} | {f(x.get('depth_at_end'))} | {f(x.get('duplicates'))} | "
          f"{f(x.get('missing'))} | {f(x.get('depth_first_ms'), ' ms')} | "
          f"{f(x.get('depth_p50_ms'), ' ms')} | {f(x.get('depth_p99_ms'), ' ms')} | "
          f"{f(x.get('depth_all_ms'), ' ms')} | " + " | ".join(conf) +
          f" | {f(x.get('consumer_drain_ms'), ' ms')} |")
    w("")
    w("Celery beat publishes without publisher confirms (kombu's default), so it has no "
      "\"confirmed\" column.\n")
    for mode in ("consumer", "depth"):
        for label, n, x in amqp_runs(ae, mode):
            if x.get("log_warnings"):
                w(f"- {label}, N = {n:,}, {mode} run: beatd logged " + "; ".join(
                    f"`{line}`" for line in x["log_warnings"]))
            if x.get("moved_to_next_minute"):
                w(f"- {label}, N = {n:,}, {mode} run: not up 2 s before its minute; measured "
                  "at the next one (`crontab()` fires every minute)")
    w("")
    b, c = ae.get("beatd", {}), ae.get("celery_beat", {})
    lines = []
    for n in b:
        x, y = b[n].get("consumer", {}), c.get(n, {}).get("consumer", {})
        if x.get("all_ms") and y.get("all_ms"):
            ratio = y["all_ms"] / max(x["all_ms"], 0.01)
            lines.append(f"- N = {int(n):,}: with Celery beat, the consumer had all {ratio:,.0f}× "
                         "later")
        elif x.get("all_ms") and y and "error" not in y:
            lines.append(f"- N = {int(n):,}: Celery beat sent {y.get('sent_pct')} % within "
                         f"its {bound} s bound")
    if lines:
        w("Ratios (the consumer's last message, beatd vs Celery beat):\n")
        w("\n".join(lines) + "\n")


def amqp_worker(w, aw):
    if "error" in aw:
        w(f"## Worker on RabbitMQ\n\nNot run: `{aw['error']}`.\n")
        return
    w(f"## Worker on RabbitMQ: {aw['tasks']:,} no-op tasks queued beforehand\n")
    w(f"The same RabbitMQ node ({aw.get('rabbitmq')}) and Redis, one run. One `bench.noop` "
      "message made by Celery's `send_task`, read back and published again N times by "
      "py-amqp with its properties and headers (a new id in `id`, `root_id` and "
      "`correlation_id`) to the default exchange with routing key `celery`, as Celery "
      "publishes; the worker starts once all N are queued. Results go to the Redis result "
      "backend in every row. beatd: the Rust no-op handler (`bench/noop_worker.rs` on the "
      "library's RabbitMQ worker, default options: concurrency = CPUs, prefetch × 4, the "
      "at-most-once claims in Redis), and `beatd worker --broker-url amqp://… "
      "--result-backend redis://… --http-addr off` with `bench.noop` as `kind = \"exec\"`, "
      "`command = [\"/bin/true\"]` (logs at `warn`); Celery: `celery worker --pool=prefork "
      "--without-gossip --without-mingle --without-heartbeat -l warning` running the Python "
      "no-op. Timed until the queue is empty (passive `queue.declare`) and every result is "
      "in Redis: from the worker's start (startup included), and from its first stored "
      "result to its last. Peak RSS sums the worker and its children, sampled every 5 ms.\n")
    w("| worker | completed | tasks/s (first → last result) | tasks/s from start | "
      "startup to first result | peak RSS | peak RSS, main process | processes | CPU |")
    w("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for k, label in (("rust_noop", "beatd, Rust no-op (library)"),
                     ("exec", "`beatd worker`, exec `/bin/true`"),
                     ("celery_prefork", "celery worker --pool=prefork")):
        x = aw.get(k)
        if not x:
            continue
        if "error" in x:
            w(f"| {label} | run failed: `{x['error']}` ||||||||")
            continue
        w(f"| {label} | {x['completed']:,} | {f(x.get('tasks_per_s'))} | "
          f"{f(x.get('tasks_per_s_from_start'))} | "
          f"{f(x.get('startup_to_first_result_s'), ' s', 2)} | "
          f"{f(x['peak_rss_mb'], ' MB')} | {f(x.get('peak_rss_main_mb'), ' MB')} | "
          f"{x.get('processes')} | {f(x.get('cpu_s'), ' s', 2)} |")
    w("")
    for k in ("rust_noop", "exec"):
        ratio, ratio0 = aw.get(f"ratio_{k}_vs_prefork"), aw.get(f"ratio_{k}_vs_prefork_from_start")
        if ratio is not None:
            w(f"- {k} / prefork: {ratio}× (first → last result), {ratio0}× from start")
    w("")


if __name__ == "__main__":
    main()
