# Agented: `just run` serves, `just test` tests. Everything installs itself.
set shell := ["bash", "-euo", "pipefail", "-c"]

default: test lint

# Create .venv and install the project when pyproject.toml changed.
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    [ -x .venv/bin/python ] || python3 -m venv .venv
    stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
    if [ ! -f "$stamp" ]; then
        .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
        rm -f .venv/.installed-*
        touch "$stamp"
    fi

# Migrate, seed, make the first admin key (printed once) and serve.
run: setup sandbox-deps
    .venv/bin/agented db migrate
    .venv/bin/python seeds.py
    .venv/bin/agented keys bootstrap
    exec .venv/bin/gunicorn -c gunicorn.conf.py

# Install bubblewrap (every run is sandboxed) when missing.
sandbox-deps:
    #!/usr/bin/env bash
    set -euo pipefail
    if ! command -v bwrap >/dev/null; then
        sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq bubblewrap >/dev/null
    fi

# Install what the tests need (bubblewrap, Debian's Chromium, PostgreSQL) when missing.
test-deps: sandbox-deps
    #!/usr/bin/env bash
    set -euo pipefail
    missing=""
    command -v chromium >/dev/null || missing="$missing chromium"
    # Debian keeps the server binaries off PATH, in /usr/lib/postgresql/<version>/bin;
    # tests/pg.py looks in both places and starts its own throwaway server.
    if ! command -v initdb >/dev/null && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
        missing="$missing postgresql"
    fi
    if [ -n "$missing" ]; then
        sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
    fi

# Run every test; "no tests ran" (pytest exit 5) is a failure.
# Run every test on SQLite, then again on PostgreSQL (a throwaway server the tests
# start; the browser tests and those about the SQLite file itself run once).
# `just test tests/test_x.py` runs just those, on both engines.
test *args: setup test-deps
    #!/usr/bin/env bash
    set -uo pipefail
    .venv/bin/pytest {{args}}
    rc=$?
    if [ "$rc" = 5 ]; then echo "no tests ran: failing"; exit 1; fi
    if [ "$rc" != 0 ]; then exit "$rc"; fi
    echo "== the same tests on PostgreSQL"
    AGENTED_TEST_ENGINE=postgresql .venv/bin/pytest -m "not sqlite_only" --ignore=tests/browser {{args}}
    rc=$?
    # None of a chosen few may concern PostgreSQL (browser ones); the whole suite must.
    if [ "$rc" = 5 ] && [ -n "{{args}}" ]; then exit 0; fi
    if [ "$rc" = 5 ]; then echo "no tests ran on PostgreSQL: failing"; exit 1; fi
    exit "$rc"

# Long reliability run: kill -9 the service 5 times under webhook load; every task must finish.
chaos rounds="5" answers="300": setup
    AGENTED_CHAOS_ROUNDS={{rounds}} AGENTED_CHAOS_ANSWERS={{answers}} .venv/bin/pytest -s tests/test_reliability.py

# Fuzz the whole API from /openapi.json with schemathesis (admin key): any 5xx fails.
fuzz examples="20": setup
    #!/usr/bin/env bash
    set -euo pipefail
    .venv/bin/pip install -q --disable-pip-version-check schemathesis
    dir=$(mktemp -d); port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    export AGENTED_DATA_DIR="$dir" AGENTED_BIND="127.0.0.1:$port" GITHUB_WEBHOOK_SECRET=fuzz \
        AGENTED_RATE_LIMIT=100000/minute AGENTED_AUTH_FAIL_LIMIT=100000/minute
    key=$(.venv/bin/agented keys create --name fuzz --role admin --json | .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["key"])')
    .venv/bin/gunicorn -c gunicorn.conf.py 2> "$dir/server.log" & pid=$!
    trap 'kill $pid; wait $pid || true; rm -rf "$dir"' EXIT
    until curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null; do sleep 0.2; done
    .venv/bin/schemathesis run "http://127.0.0.1:$port/openapi.json" -H "X-API-Key: $key" \
        --max-examples {{examples}} --checks not_a_server_error
    # A fresh key: the fuzzer may have revoked its own.
    key=$(.venv/bin/agented keys create --name fuzz-after --role admin --json | .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["key"])')
    # Hostile prompt templates (issue 12): each refused with a 422, the server still live.
    .venv/bin/python -m tests.fuzz_templates "http://127.0.0.1:$port" "$key"
    # Forged, deep, stale and replayed webhooks and a stream flood (issue 12).
    .venv/bin/python -m tests.fuzz_webhooks "http://127.0.0.1:$port" "$key" "$dir"

# Lint, format check and type check (CI runs this after the tests).
lint: setup
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    .venv/bin/mypy

fmt: setup
    .venv/bin/ruff check --fix .
    .venv/bin/ruff format .

# Install the load tools the benchmarks use (wrk, hey; redis-server for the reference) when missing.
bench-deps:
    #!/usr/bin/env bash
    set -euo pipefail
    missing=""
    for tool in wrk hey redis-server; do command -v "$tool" >/dev/null || missing="$missing $tool"; done
    # bench/ingest.py and bench/dispatch.py also measure the hub on PostgreSQL (bench/_pg.py
    # starts a throwaway server); Debian keeps its binaries in /usr/lib/postgresql/<version>/bin.
    if ! command -v initdb >/dev/null && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
        missing="$missing postgresql"
    fi
    if [ -n "$missing" ]; then
        sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
    fi

# Benchmarks: each bench/*.py prints its figures beside a reference run (bench/_*.py are helpers).
bench: setup sandbox-deps bench-deps
    #!/usr/bin/env bash
    set -euo pipefail
    for script in bench/[!_]*.py; do echo "== $script"; .venv/bin/python "$script"; done

# Profile the webhook path: py-spy --gil stacks of the worker under wrk (py-spy installs itself).
bench-profile out="/tmp/agented-webhook.folded": setup bench-deps
    .venv/bin/python bench/ingest.py --rounds 1 --profile {{out}}

# Install the systemd unit (run as root on the target machine; see README "Deploy").
deploy: setup sandbox-deps
    #!/usr/bin/env bash
    set -euo pipefail
    dir="$(pwd)"
    # The unit runs as the unprivileged system user `agented`.
    id agented >/dev/null 2>&1 || useradd --system --home-dir /var/lib/agented \
        --shell /usr/sbin/nologin agented
    sed -e "s#/opt/agented#${dir}#g" deploy/systemd/agented.service > /etc/systemd/system/agented.service
    # EnvironmentFile= overrides the unit's Environment=, so the example's
    # AGENTED_DATA_DIR=var (not writable under ProtectSystem=strict) is rewritten.
    if [ ! -f /etc/agented.env ]; then
        sed -e 's#^AGENTED_DATA_DIR=.*#AGENTED_DATA_DIR=/var/lib/agented#' .env.example \
            | install -m 0600 /dev/stdin /etc/agented.env
    fi
    systemctl daemon-reload
    systemctl enable --now agented
    systemctl --no-pager status agented
