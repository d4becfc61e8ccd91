"""Celery app and client driver for beatd's interoperability tests (tests/integration/interop.rs).

Used three ways, always with PYTHONPATH pointing at this directory:

  python -m celery -A pyapp worker ...   a stock Celery worker running the tasks below
  python -m celery -A pyapp beat ...     a stock Celery beat sending INTEROP_BEAT_SCHEDULE
  python pyapp.py COMMAND JSON           a client: send_task / AsyncResult, prints one JSON line
                                         (also: wait_state polling, chain, chord, revoke)

Environment:
  INTEROP_REDIS_URL      broker and result backend (a private redis-server the test started)
  INTEROP_BROKER_URL     the broker instead, when set (a private RabbitMQ vhost)
  INTEROP_BACKEND_URL    the result backend instead, when set (another database)
  INTEROP_RECORD         file the tasks append one JSON line per run to
  INTEROP_BEAT_SCHEDULE  JSON {name: {task, every, args, kwargs, queue}} for `celery beat`
  INTEROP_VISIBILITY     broker visibility_timeout in seconds (restore tests)
"""
import json
import os
import sys
import time

from celery import Celery
from celery.signals import task_postrun

URL = os.environ["INTEROP_REDIS_URL"]

app = Celery(
    "pyapp",
    broker=os.environ.get("INTEROP_BROKER_URL") or URL,
    backend=os.environ.get("INTEROP_BACKEND_URL") or URL,
)


def _beat_schedule():
    raw = os.environ.get("INTEROP_BEAT_SCHEDULE")
    if not raw:
        return {}
    out = {}
    for name, e in json.loads(raw).items():
        options = {"queue": e.get("queue", "celery")}
        if "priority" in e:
            options["priority"] = e["priority"]
        out[name] = {
            "task": e["task"],
            "schedule": float(e["every"]),
            "args": e.get("args", []),
            "kwargs": e.get("kwargs", {}),
            "options": options,
        }
    return out


app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    timezone="UTC",
    enable_utc=True,
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=True,
    beat_schedule=_beat_schedule(),
)
if os.environ.get("INTEROP_VISIBILITY"):
    app.conf.broker_transport_options = {
        "visibility_timeout": float(os.environ["INTEROP_VISIBILITY"])
    }


def _append(line):
    # One write of a short line to an O_APPEND file: lines of concurrent writers never mix.
    with open(os.environ["INTEROP_RECORD"], "a", encoding="utf-8") as f:
        f.write(line + "\n")


@app.task(name="interop.record", bind=True)
def record(self, *args, **kwargs):
    """Writes what the worker understood from the message; returns args, kwargs and entry."""
    r = self.request
    seen = {
        "who": "python",
        "id": r.id,
        "task": self.name,
        "args": list(args),
        "kwargs": kwargs,
        "beatd_entry": getattr(r, "beatd_entry", None),
        "beatd_scheduled_at": getattr(r, "beatd_scheduled_at", None),
        "beatd_epoch": getattr(r, "beatd_epoch", None),
        "celery_beat_task": getattr(r, "celery_beat_task", None),
        "team": getattr(r, "team", None),
        "expires": r.expires if r.expires is None else str(r.expires),
        "delivery_info": r.delivery_info,
        "root_id": r.root_id,
        "correlation_id": r.correlation_id,
    }
    _append(json.dumps(seen, sort_keys=True))
    return {"args": list(args), "kwargs": kwargs, "entry": seen["beatd_entry"]}


@app.task(name="interop.mark", bind=True)
def mark(self, n):
    """Notes that this worker ran task `n` (the shared-queue test)."""
    _append(json.dumps({"who": "python", "id": self.request.id, "n": n}))
    return n


@app.task(name="interop.slow", bind=True)
def slow(self, seconds, sleep_on):
    """Notes its start; sleeps when `sleep_on` names this side (restore tests)."""
    _append(json.dumps({"who": "python", "id": self.request.id, "phase": "start"}))
    if sleep_on == "python":
        time.sleep(seconds)
    return "python"


@app.task(name="interop.busy", bind=True)
def busy(self, seconds):
    """Runs `seconds` (the overlap tests): notes its start and end, in order, in the record."""
    r = self.request
    note = {"who": "python", "id": r.id, "scheduled": getattr(r, "beatd_scheduled_at", None)}
    _append(json.dumps(dict(note, phase="start", t=time.time())))
    time.sleep(seconds)
    _append(json.dumps(dict(note, phase="end", t=time.time())))
    return r.id


@task_postrun.connect
def _stored(sender=None, task_id=None, **_):
    # After the worker stored the result: when beatd can first see the run as finished.
    if sender is not None and sender.name == "interop.busy":
        _append(json.dumps({"who": "python", "id": task_id, "phase": "stored", "t": time.time()}))


@app.task(name="interop.add")
def add(*args):
    """Sums its arguments (chain steps: the parent's result comes first)."""
    return sum(args)


@app.task(name="interop.record_error")
def record_error(task_id):
    """An errback (link_error): notes which task failed."""
    _append(json.dumps({"who": "python", "errback_for": task_id}))
    return task_id


def _sig(step):
    return app.signature(
        step["task"], args=step.get("args", []), kwargs=step.get("kwargs", {}),
        queue=step.get("queue", "celery"),
    )


def _wait_state(spec):
    """Polls AsyncResult(id) as the tutorial's Flask view does, until state and info match."""
    res = app.AsyncResult(spec["id"])
    deadline = time.time() + spec["timeout"]
    while True:
        state, info = res.state, res.info
        if isinstance(info, Exception):
            info = {"exception": type(info).__name__, "args": [str(a) for a in info.args]}
        if state == spec["state"] and ("info" not in spec or info == spec["info"]):
            return {"state": state, "info": info}
        if time.time() > deadline:
            return {"timeout": True, "state": state, "info": info}
        time.sleep(0.02)


def _raised(exc):
    return {
        "type": type(exc).__name__,
        "module": type(exc).__module__,
        "str": str(exc),
        "args": [a if isinstance(a, (int, float, str)) else repr(a) for a in exc.args],
    }


def _send(spec):
    options = {}
    for key in ("expires", "countdown", "ignore_result", "task_id"):
        if key in spec:
            options[key] = spec[key]
    return app.send_task(
        spec["task"],
        args=spec.get("args", []),
        kwargs=spec.get("kwargs", {}),
        queue=spec.get("queue", "celery"),
        **options,
    )


def _client(cmd, spec):
    if cmd == "send":
        return {"id": _send(spec).id}
    if cmd == "call":
        # send_task, then AsyncResult(id).get(): the value, or the exception raised.
        sent_at = time.time()
        res = _send(spec)
        out = {"id": res.id, "sent_at": sent_at}
        try:
            out["value"] = res.get(timeout=spec["timeout"], propagate=True)
            # Parsed by Celery from the stored record: a datetime, or an error here.
            out["date_done"] = res.date_done.isoformat()
        except Exception as exc:  # noqa: BLE001 - the test inspects whatever was raised
            out["raised"] = {
                "type": type(exc).__name__,
                "module": type(exc).__module__,
                "str": str(exc),
                "args": [a if isinstance(a, (int, float, str)) else repr(a) for a in exc.args],
            }
            out["state"] = res.state
            out["traceback"] = res.traceback
        return out
    if cmd == "send_many":
        ids = []
        for n in range(spec["n"]):
            res = app.send_task(spec["task"], args=[n], queue=spec.get("queue", "celery"))
            ids.append(res.id)
        return {"ids": ids}
    if cmd == "wait_state":
        return _wait_state(spec)
    if cmd == "chain":
        from celery import chain

        c = chain(*[_sig(step) for step in spec["steps"]])
        if "errback" in spec:
            c = c.on_error(_sig(spec["errback"]))
        res = c.apply_async()
        ids, node = [], res
        while node is not None:
            ids.append(node.id)
            node = node.parent
        out = {"id": res.id, "ids": list(reversed(ids))}
        try:
            out["value"] = res.get(timeout=spec["timeout"], propagate=True)
        except Exception as exc:  # noqa: BLE001 - the test inspects whatever was raised
            out["raised"] = _raised(exc)
        return out
    if cmd == "chord":
        from celery import chord

        header = [_sig(step).set(task_id=step["task_id"]) for step in spec["header"]]
        res = chord(header)(_sig(spec["body"]))
        return {"id": res.id}
    if cmd == "revoke":
        replies = app.control.revoke(
            spec["id"], terminate=spec.get("terminate", False), reply=True, timeout=spec["timeout"]
        )
        return {"replies": replies}
    if cmd == "get":
        res = app.AsyncResult(spec["id"])
        return {"value": res.get(timeout=spec["timeout"]), "state": res.state}
    raise SystemExit(f"unknown command {cmd!r}")


if __name__ == "__main__":
    print(json.dumps(_client(sys.argv[1], json.loads(sys.argv[2]))), flush=True)
