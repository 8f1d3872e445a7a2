"""Nothing accepted is lost: kill -9 the service under webhook load, restart, compare.

The short run is part of `just test`. `just chaos` sets AGENTED_CHAOS_ROUNDS to
kill and restart several times under longer load (AGENTED_CHAOS_ANSWERS per
round) and waits for every task to finish (crashed runs re-queued and run
again). Recovery of a single crashed run is tested in test_execution.py; how
long the service takes to be ready again after kill -9 is measured by
bench/ops.py.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
from urllib.parse import urlparse

from tests.ops_helpers import connect
from tests.pipeline_helpers import live, shell_agent, sign, wait_for, webhook_trigger

ROUNDS = int(os.environ.get("AGENTED_CHAOS_ROUNDS", "1"))
# A round's load: the service is killed once this many deliveries were answered 2xx
# (and the senders are still sending), however long that takes on this machine.
ANSWERS = int(os.environ.get("AGENTED_CHAOS_ANSWERS", "50"))
FAST = {
    "AGENTED_BACKOFF_BASE_S": "0.2",
    "AGENTED_BACKOFF_CAP_S": "0.5",
    "AGENTED_KILL_GRACE_S": "1",
    "AGENTED_CONCURRENCY_GLOBAL": "40",
}


class Load:
    """Threads sending signed webhooks with unique delivery ids until stopped; bounded."""

    def __init__(self, url: str, slug: str, secret: str, threads: int = 4, tag: str = "") -> None:
        self.host = urlparse(url)
        self.slug, self.secret, self.tag = slug, secret, tag
        self.answers: dict[str, tuple[int, dict] | None] = {}
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(n,)) for n in range(threads)]

    def send(self, conn: http.client.HTTPConnection, delivery: str) -> tuple[int, dict]:
        body = json.dumps({"title": delivery}).encode()
        conn.request(
            "POST",
            f"/hooks/{self.slug}",
            body,
            {
                "Content-Type": "application/json",
                "X-Delivery-Id": delivery,
                "X-Signature-256": sign(self.secret, body),
            },
        )
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")

    def run(self, n: int) -> None:
        conn = http.client.HTTPConnection(self.host.hostname, self.host.port, timeout=5)
        for i in range(100_000):
            if self.stop.is_set():
                return
            delivery = f"{self.tag}{n}-{i}"
            with self.lock:
                self.answers[delivery] = None  # sent, no answer (yet)
            try:
                answer = self.send(conn, delivery)
            except OSError:
                return  # the service died under us: this delivery has no answer
            with self.lock:
                self.answers[delivery] = answer

    def ok(self) -> int:
        with self.lock:
            return sum(1 for a in self.answers.values() if a is not None and 200 <= a[0] < 300)

    def start(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)


def tasks_by_delivery_key(data_dir) -> dict[str, list[int]]:
    conn = connect(data_dir / "agented.db")  # the PostgreSQL test database on that pass
    try:
        rows = conn.execute(
            "SELECT d.delivery_key, t.id FROM deliveries d JOIN tasks t ON t.delivery_id = d.id"
            " WHERE d.dedupe = 'new'"
        ).fetchall()
    finally:
        conn.close()
    found: dict[str, list[int]] = {}
    for key, task_id in rows:
        found.setdefault(key, []).append(task_id)
    return found


def setup_hook(srv) -> tuple[str, str]:
    key = srv.keys["admin"] = srv.make_key("admin")
    agent = shell_agent("worker", ["sh", "-c", "sleep 0.2"], concurrency=20)
    assert live(srv, key, "POST", "/api/v1/agents", agent)[0] == 201
    status, body = live(srv, key, "POST", "/api/v1/triggers", webhook_trigger("worker"))
    assert status == 201, body
    return body["slug"], body["secret"]


def test_it_loses_and_duplicates_nothing_across_kill_9(live_server):
    srv = live_server(dict(FAST))
    slug, secret = setup_hook(srv)
    answered: dict[str, dict] = {}
    unanswered: list[str] = []
    for rnd in range(ROUNDS):
        load = Load(srv.url, slug, secret, tag=f"r{rnd}-").start()
        wait_for(lambda load=load: load.ok() >= ANSWERS, timeout=120, interval=0.01)
        os.killpg(srv.proc.pid, signal.SIGKILL)  # no graceful anything
        srv.proc.wait(timeout=10)
        load.join()
        for delivery, answer in load.answers.items():
            if answer is not None and 200 <= answer[0] < 300:
                answered[delivery] = answer[1]
            elif answer is None:
                unanswered.append(delivery)
        srv = live_server({**FAST, "AGENTED_DATA_DIR": str(srv.data_dir)})

    # Every 2xx delivery has exactly the tasks it was answered with: none lost, none doubled.
    found = tasks_by_delivery_key(srv.data_dir)
    for delivery, body in answered.items():
        assert sorted(found.get(delivery, [])) == sorted(t["id"] for t in body["tasks"]), delivery
    # A sender retrying what got no answer gets exactly one task per delivery id, never two.
    retry = Load(srv.url, slug, secret)
    conn = http.client.HTTPConnection(retry.host.hostname, retry.host.port, timeout=5)
    for delivery in unanswered:
        status, _body = retry.send(conn, delivery)
        assert status in (200, 202), (delivery, status)
    found = tasks_by_delivery_key(srv.data_dir)
    assert all(len(found[d]) == 1 for d in [*answered, *unanswered])
    print(f"\nkill -9 x{ROUNDS}: {len(answered)} answered, {len(unanswered)} retried")

    if ROUNDS > 1:  # chaos: crashed runs are re-queued and every task finishes
        wait_for(lambda: unfinished(srv.data_dir) == 0, timeout=180, interval=0.5)


def unfinished(data_dir) -> int:
    conn = connect(data_dir / "agented.db")  # the PostgreSQL test database on that pass
    try:
        return conn.execute(
            "SELECT count(*) FROM tasks WHERE state NOT IN ('succeeded', 'cancelled', 'dead')"
        ).fetchone()[0]
    finally:
        conn.close()
