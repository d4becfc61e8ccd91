#!/usr/bin/env bash
# One command for every benchmark: bench/run.sh [--quick] [--only emission,drift,...]
#
# Installs the peers (a venv with celery[redis], celery-redbeat and rq under bench/.venv, the
# tokio-cron-scheduler harness, queue observer and HTTP sink under bench/tcs), builds beatd
# with the footprint profile, starts a private redis-server on a free port (never 6379) and, for
# the amqp_* sections, a private rabbitmq-server node on free ports (never 5672), runs every
# measurement with a bounded time, then writes bench/results/<stamp>.json and BENCHMARKS.md.
# BENCH_CRITERION=0 skips the micro-benchmarks (their last figures stay in the report).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v redis-server >/dev/null || { echo "redis-server not found (apt-get install redis-server)" >&2; exit 1; }
# The amqp_* sections start their own node from Debian's rabbitmq-server, as the tests do.
if ! command -v rabbitmq-server >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq rabbitmq-server >/dev/null
fi

if [ ! -x bench/.venv/bin/celery ]; then
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install --quiet 'celery[redis]' celery-redbeat 'rq>=3,<4'
fi
# RQ 3's `rq cron`, the peer of the rq section (a venv made before that section lacks it).
if [ ! -x bench/.venv/bin/rq ]; then
  bench/.venv/bin/pip install --quiet 'rq>=3,<4'
fi

cargo build --profile footprint --bin beatd --example bench_noop_worker
cargo build --release --manifest-path bench/tcs/Cargo.toml

mkdir -p bench/results
if [ "${BENCH_CRITERION:-1}" != 0 ]; then
  timeout 900 cargo bench --bench hot_paths -- --warm-up-time 1 --measurement-time 3 \
    | tee bench/results/criterion.txt
fi
results=$(timeout 3600 bench/.venv/bin/python bench/bench.py "$@")
bench/.venv/bin/python bench/report.py "$results" > BENCHMARKS.md
echo "wrote BENCHMARKS.md from $results"
