"""The job function of the `rq` bench section: `rq cron` (bench/peers/benchcron.py) and beatd
(`task = "benchjobs.tick"`, `protocol = "rq"`) both enqueue it. No worker runs it: the bench
only counts what was enqueued."""


def tick():
    return None
