"""The Celery peer of bench/run.sh: one app whose beat schedule is chosen by environment.

BENCH_REDIS_URL   broker and result backend
BENCH_BROKER_URL  the broker instead (amqp://...: RabbitMQ; results stay in BENCH_REDIS_URL)
BENCH_SCHEDULE    emission: BENCH_N entries, crontab() (every minute)
                  named:    as emission, entry i sending task `bench.e<i>` (counted by name)
                  idle:     BENCH_N entries, crontab(minute=0, hour=BENCH_HOUR)
                  tick:     one entry, timedelta(seconds=1), to queue BENCH_QUEUE
                  none:     no entries (the worker)
BENCH_REDBEAT     "1": RedBeat with a 5 s lock timeout (run beat with --max-interval 1)
"""

import os
from datetime import timedelta

from celery import Celery
from celery.schedules import crontab

url = os.environ["BENCH_REDIS_URL"]
app = Celery("benchapp", broker=os.environ.get("BENCH_BROKER_URL", url), backend=url)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    enable_utc=True,
    timezone="UTC",
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.noop")
def noop(*args, **kwargs):
    return None


kind = os.environ.get("BENCH_SCHEDULE", "none")
n = int(os.environ.get("BENCH_N", "0"))
queue = os.environ.get("BENCH_QUEUE", "celery")
if kind == "emission":
    app.conf.beat_schedule = {
        f"e{i}": {"task": "bench.noop", "schedule": crontab(), "options": {"queue": queue}}
        for i in range(n)
    }
elif kind == "named":
    app.conf.beat_schedule = {
        f"e{i}": {"task": f"bench.e{i}", "schedule": crontab(), "options": {"queue": queue}}
        for i in range(n)
    }
elif kind == "idle":
    hour = int(os.environ["BENCH_HOUR"])
    app.conf.beat_schedule = {
        f"e{i}": {
            "task": "bench.noop",
            "schedule": crontab(minute=0, hour=hour),
            "options": {"queue": queue},
        }
        for i in range(n)
    }
elif kind == "tick":
    app.conf.beat_schedule = {
        "tick": {
            "task": "bench.noop",
            "schedule": timedelta(seconds=1),
            "options": {"queue": queue},
        }
    }

if os.environ.get("BENCH_REDBEAT") == "1":
    app.conf.update(
        redbeat_redis_url=url,
        redbeat_lock_timeout=5,
        beat_scheduler="redbeat.RedBeatScheduler",
        beat_max_loop_interval=1,
    )
