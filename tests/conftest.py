"""Shared fixtures: a real app over a temporary SQLite file, personas, the CLI, a live server.

Personas (raw API keys): alice is admin, bob operator, dave developer, vera viewer.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
# Variables the service reads; cleared so a developer's shell or .env cannot change a test.
ENV_PREFIXES = ("AGENTED_", "CORS_", "SECRET_KEY", "SENTRY_DSN", "GITHUB_WEBHOOK_SECRET")


def _venv_bin(name: str) -> Path:
    """Return the venv's script `name` (next to the running python, else ./.venv/bin)."""
    beside = Path(sys.executable).parent / name
    return beside if beside.exists() else ROOT / ".venv" / "bin" / name


# `AGENTED_TEST_ENGINE=postgresql` runs the suite on PostgreSQL (`just test` does,
# after SQLite): every test gets a database of its own, which the service it
# starts, in process or under gunicorn, uses instead of the SQLite file.
ENGINE = os.environ.get("AGENTED_TEST_ENGINE", "sqlite")
# The test's PostgreSQL URL, in the environment (not a global): helpers reach this
# module under two names (conftest, tests.conftest), and the prefix is not cleared.
TEST_DATABASE = "PYTEST_AGENTED_DATABASE_URL"


def test_database() -> str | None:
    return os.environ.get(TEST_DATABASE)


def clean_env(data_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Return os.environ without the service's settings, pointed at `data_dir`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
    # A missing file: load_dotenv() then reads nothing, whatever the checkout's .env says.
    env["AGENTED_ENV_FILE"] = str(data_dir.parent / "no-such.env")
    env["AGENTED_DATA_DIR"] = str(data_dir)
    if test_database():
        env["AGENTED_DATABASE_URL"] = test_database()
        # One worker, as on SQLite: these tests are about one instance (several are
        # tests/test_scale_out.py's, which asks for them).
        env["AGENTED_WORKERS"] = "1"
    env.update(extra or {})
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the app, in process ---------------------------------------------------------


@pytest.fixture(autouse=True)
def _engine(request: pytest.FixtureRequest) -> Iterator[None]:
    """On the PostgreSQL pass, give the test its own database (see ENGINE)."""
    if ENGINE != "postgresql":
        yield
        return
    if request.node.get_closest_marker("sqlite_only"):
        pytest.skip("reads or writes the SQLite file itself")
    os.environ[TEST_DATABASE] = request.getfixturevalue("pg_url")
    try:
        yield
    finally:
        del os.environ[TEST_DATABASE]


@pytest.fixture(autouse=True)
def _close_write_connections() -> Iterator[None]:
    # db.write keeps a connection per database file; each test makes its own file, so
    # without this a long run would hold three descriptors per test until it ends.
    yield
    from app import db

    db.close_direct()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the service's environment at a fresh data dir (and nothing else)."""
    path = tmp_path / "data"
    for name in list(os.environ):
        if name.startswith(ENV_PREFIXES):
            monkeypatch.delenv(name)
    for name, value in clean_env(path).items():
        if name.startswith("AGENTED_"):
            monkeypatch.setenv(name, value)
    return path


@pytest.fixture
def make_app(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Callable:
    """Build an app; `env` sets variables before create_app, keywords override config."""
    from app import create_app

    def make(env: dict[str, str] | None = None, **test_config):
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        return create_app(test_config or None)

    return make


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def cli_runner(data_dir: Path) -> CliRunner:
    """A click runner over the same data dir as `app` (run `cli_runner.invoke(main, [...])`)."""
    return CliRunner(env={"AGENTED_DATA_DIR": str(data_dir)})


def make_key(app, name: str, role: str) -> str:
    """Create a key through the one write path; return the raw key."""
    from app import db
    from app.auth import create_key

    _key_id, raw = db.write(lambda conn: create_key(conn, name, role), app.config["DATABASE"])
    return raw


@pytest.fixture
def alice(app) -> str:
    return make_key(app, "alice", "admin")


@pytest.fixture
def bob(app) -> str:
    return make_key(app, "bob", "operator")


@pytest.fixture
def dave(app) -> str:
    return make_key(app, "dave", "developer")


@pytest.fixture
def vera(app) -> str:
    return make_key(app, "vera", "viewer")


@pytest.fixture
def signin() -> Callable:
    """Sign `client` in with `key` through the form; return the session's CSRF token."""

    def sign_in(client, key: str) -> str:
        client.get("/signin")
        with client.session_transaction() as sess:
            token = sess["csrf"]
        resp = client.post("/signin", data={"key": key, "csrf_token": token, "next": "/"})
        assert resp.status_code == 302, resp.data
        with client.session_transaction() as sess:
            return sess["csrf"]

    return sign_in


# --- a throwaway PostgreSQL server -------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator:
    """One PostgreSQL server (tests/pg.py) for the session, started by the first test that asks.

    Its data dir and socket live in a fresh /tmp dir, removed at the end; tests get their
    own database from `pg_url`. Without the binaries this errors: run `just test-deps`.
    """
    from tests.pg import PgServer

    server = PgServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server) -> Iterator[str]:
    """Create an empty database for this test; yield its psycopg URL; drop it afterwards."""
    from tests.pg import create_database, drop_database

    # Random, not the test's id: ids are long and hold any character; names stop at 63 bytes.
    name = f"test_{uuid.uuid4().hex[:16]}"
    admin = pg_server.url("postgres")
    create_database(admin, name)
    yield pg_server.url(name)
    # FORCE: a hub process or pool the test left running still holds connections.
    drop_database(admin, name, force=True)


# --- the real service under gunicorn ------------------------------------------------


@dataclass
class LiveServer:
    """One gunicorn process serving the real app on 127.0.0.1."""

    url: str
    data_dir: Path
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen
    keys: dict[str, str] = field(default_factory=dict)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run `agented ARGS` against this server's data dir."""
        return subprocess.run(
            [str(_venv_bin("agented")), *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def make_key(self, role: str = "admin", name: str | None = None) -> str:
        """Create a key with `agented keys create --json`; return the raw key."""
        done = self.cli("keys", "create", "--name", name or role, "--role", role, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["key"]

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10,
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one request; return (status, headers, body) for any status."""
        data = None
        headers = dict(headers or {})
        if body is not None:  # bytes go as they are (a signed webhook body)
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def stop(self, timeout: float = 30) -> int:
        """Send SIGTERM and wait; return the exit code (killing it if it hangs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise AssertionError(
                    f"gunicorn did not stop within {timeout}s of SIGTERM\n{self.log_tail()}"
                ) from None
        return self.proc.returncode


def _start(tmp_path: Path, extra_env: dict[str, str], ready_timeout: float) -> LiveServer:
    n = len(list(tmp_path.glob("live-*")))
    base = tmp_path / f"live-{n}"
    base.mkdir()
    data = Path(extra_env.pop("AGENTED_DATA_DIR", base / "data"))
    log_path = base / "gunicorn.log"
    for _attempt in range(3):
        port = free_port()
        env = clean_env(data, {"AGENTED_BIND": f"127.0.0.1:{port}", **extra_env})
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [str(_venv_bin("gunicorn")), "-c", str(ROOT / "gunicorn.conf.py")],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal goes to pytest only
            )
        server = LiveServer(f"http://127.0.0.1:{port}", data, env, log_path, proc)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if server.request("GET", "/health/ready", timeout=2)[0] == 200:
                    return server
            except OSError:
                pass
            time.sleep(0.1)
        if proc.poll() is None:
            server.stop(timeout=10)
            raise AssertionError(f"gunicorn not ready within {ready_timeout}s\n{server.log_tail()}")
        # Another process may have taken the port between free_port() and bind.
        if "Address already in use" not in server.log_tail():
            break
    raise AssertionError(f"gunicorn exited with {proc.returncode}\n{server.log_tail()}")


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start the real service: `srv = live_server({"AGENTED_X": "1"})`; stopped at teardown.

    `srv.url`, `srv.data_dir`, `srv.make_key(role)`, `srv.request(...)`, `srv.stop()`
    (SIGTERM, returns the exit code) and `srv.log_tail()` for failure messages.
    """
    started: list[LiveServer] = []

    def start(env: dict[str, str] | None = None, ready_timeout: float = 30) -> LiveServer:
        server = _start(tmp_path, dict(env or {}), ready_timeout)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            try:
                server.stop(timeout=30)
            except AssertionError:
                pass  # already killed; the test itself reports what matters
