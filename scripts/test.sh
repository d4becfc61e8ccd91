#!/usr/bin/env bash
# The whole test suite, from a fresh clone on a fresh Debian machine:
#   ./scripts/test.sh
# Installs what the tests need (redis-server and rabbitmq-server from Debian's packages, a Python venv with
# celery[redis] for the interoperability tests), then runs formatting, lint and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# tests/on_rabbitmq starts its own node from Debian's rabbitmq-server (never the machine's)
command -v rabbitmq-server >/dev/null 2>&1 || need_apt+=(rabbitmq-server)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-venv)
# the TLS tests make their certificates with the openssl command line
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# The status page's test drives Debian's chromium with playwright-core (node from npm).
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
if ((${#need_apt[@]})); then
  echo "== installing ${need_apt[*]} (Debian packages)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Python Celery and RQ for the interoperability tests and kubernetes-validate for the offline
# check of deploy/k8s (a private venv, never the system's).
VENV="${BEATD_TEST_VENV:-$PWD/.venv-celery}"
if ! "$VENV/bin/python" -c 'import celery, redis, kubernetes_validate, honcho, rq; assert rq.VERSION.split(".")[0] == "3"' >/dev/null 2>&1; then
  echo "== creating $VENV with celery[redis], rq, kubernetes-validate and honcho"
  if [ ! -x "$VENV/bin/python" ] && ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    # Debian splits venv support (ensurepip) into its own package.
    rm -rf "$VENV"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check 'celery[redis]>=5.4,<6' \
    'rq>=3,<4' 'kubernetes-validate>=1.28' 'honcho>=2,<3'
fi
export BEATD_TEST_PYTHON="$VENV/bin/python"

# playwright-core for tests/integration/console.rs, into tests/browser/node_modules (not in
# git); it drives the system's chromium, it downloads no browser.
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "== installing playwright-core (npm) into tests/browser"
  npm install --prefix tests/browser --no-audit --no-fund --silent
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== no import cycles between modules"
python3 scripts/import-cycles.py
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --all-targets 2>&1 | tee target/test-output.txt
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) g += $i } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, g }' target/test-output.txt
