"""The `rq cron` config of the `rq` bench section: `rq cron benchcron` with bench/peers on
PYTHONPATH. One job, benchjobs.tick, every second (`interval` is in whole seconds; 1 is the
smallest) onto BENCH_RQ_QUEUE.

Every replica loads this same file; BENCH_RQ_REPLICA only goes into the job's meta, so the
bench can tell which process enqueued a job (RQ records no scheduler on the job)."""

import os

from rq import cron

import benchjobs

cron.register(
    benchjobs.tick,
    queue_name=os.environ.get("BENCH_RQ_QUEUE", "bench_rq_cron"),
    interval=1,
    meta={"replica": os.environ.get("BENCH_RQ_REPLICA", "")},
)
