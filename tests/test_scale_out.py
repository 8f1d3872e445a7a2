"""Several hub instances on one PostgreSQL database (issue 17), as real gunicorn processes.

Each instance has its own data dir (workspaces, agent homes), as on its own
machine; they share the database and the SECRET_KEY.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from urllib.parse import urlparse

import pytest

from tests.pipeline_helpers import live, sign, wait_for, webhook_trigger
from tests.test_execution import FAST, make_agent, read_sse, submit, task, wait_state
from tests.test_messages_live import PATIENCE_S, call, register

# Two workers each: every worker is an instance of its own, as in production.
SHARED = {**FAST, "SECRET_KEY": "s" * 48, "AGENTED_LEASE_S": "6", "AGENTED_WORKERS": "2"}


@pytest.fixture
def instances(live_server, pg_url):
    """Start instances on one database: `a = instances()`, `b = instances(AGENTED_ROLE="web")`."""
    started = []

    def start(**env):
        srv = live_server({**SHARED, "AGENTED_DATABASE_URL": pg_url, **env})
        # API keys live in the database: the first instance's key works on all.
        srv.keys["admin"] = started[0].keys["admin"] if started else srv.make_key("admin")
        started.append(srv)
        return srv

    return start


def both(fn, *args_per_call):
    """Call fn(*args) for each args at the same moment (threads); return the results."""
    results: list = [None] * len(args_per_call)
    gate = threading.Barrier(len(args_per_call))

    def call(i, args):
        gate.wait()
        results[i] = fn(*args)

    threads = [threading.Thread(target=call, args=(i, a)) for i, a in enumerate(args_per_call)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def sql(url: str, statement: str, params: tuple = ()) -> list:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def test_it_runs_each_task_once_across_two_instances(instances):
    a = instances()
    b = instances()
    make_agent(a, "work", ["sh", "-c", "sleep 0.2; echo done $AGENTED_TASK_ID"], concurrency=20)
    ids = both(
        lambda srv: [submit(srv, "work") for _ in range(15)], (a,), (b,)
    )  # 30 tasks, half to each
    finished = [
        wait_state(a, task_id, "succeeded", "dead", timeout=90) for task_id in ids[0] + ids[1]
    ]
    assert {t["state"] for t in finished} == {"succeeded"}
    assert all(len(t["attempt_list"]) == 1 for t in finished)  # each ran once
    ran_on = {t["attempt_list"][0]["instance"] for t in finished}
    assert len(ran_on) >= 2  # both took work (each runs a worker per core, each one an instance)


def test_it_makes_one_task_for_one_idempotency_key_sent_to_both(instances, pg_url):
    a = instances()
    b = instances()
    make_agent(a, "echo", ["cat"])
    body = {"agent": "echo", "prompt": "once"}

    def send(srv):
        return live(
            srv, srv.keys["admin"], "POST", "/api/v1/tasks", body, {"Idempotency-Key": "k-1"}
        )

    answers = both(send, (a,), (b,))
    assert sorted(status for status, _ in answers) in ([200, 202], [202, 202])
    assert len({answer["id"] for _, answer in answers}) == 1
    assert sql(pg_url, "SELECT count(*) FROM tasks")[0][0] == 1


def test_it_makes_one_task_for_one_delivery_sent_to_both(instances, pg_url):
    a = instances()
    b = instances()
    make_agent(a, "echo", ["cat"])
    status, hook = live(a, a.keys["admin"], "POST", "/api/v1/triggers", webhook_trigger("echo"))
    assert status == 201, hook
    raw = json.dumps({"title": "bug"}).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Signature-256": sign(hook["secret"], raw),
        "X-Delivery-Id": "d-42",
    }
    answers = both(
        lambda srv: srv.request("POST", f"/hooks/{hook['slug']}", raw, headers), (a,), (b,)
    )
    assert sorted(answer[0] for answer in answers) == [200, 202], answers
    assert sql(pg_url, "SELECT count(*) FROM tasks")[0][0] == 1


def test_it_streams_on_one_instance_a_run_on_the_other(instances):
    web = instances(AGENTED_ROLE="web")  # runs nothing: the worker below runs the task
    worker = instances(AGENTED_ROLE="worker")
    script = "for i in $(seq 1 40); do echo line $i; sleep 0.05; done"
    make_agent(web, "talk", ["sh", "-c", script])
    task_id = submit(web, "talk")
    wait_state(web, task_id, "running")
    events = read_sse(web, f"/api/v1/tasks/{task_id}/stream")
    lines = [data["text"] for event, _, data in events if event == "log"]
    assert [line for line in lines if line.startswith("line ")] == [
        f"line {i}" for i in range(1, 41)
    ]
    done = task(web, task_id)
    assert done["state"] == "succeeded"
    assert done["attempt_list"][0]["instance"] != web_instance(web)
    # Resuming after a Last-Event-ID on the other instance sends the rest, once.
    cut = next(
        ident for event, ident, data in events if event == "log" and data["text"] == "line 30"
    )
    rest = read_sse(worker, f"/api/v1/tasks/{task_id}/stream", {"Last-Event-ID": str(cut)})
    assert [d["text"] for e, _, d in rest if e == "log"] == [f"line {i}" for i in range(31, 41)]


def web_instance(srv) -> str:
    found = live(srv, srv.keys["admin"], "GET", "/api/v1/instances")[1]["instances"]
    return next(i["id"] for i in found if i["this"])


def test_it_finishes_every_task_when_an_instance_is_killed(instances):
    a = instances()
    b = instances()
    make_agent(a, "work", ["sh", "-c", "sleep 1; echo done"], concurrency=20)
    ids = [submit(srv, "work", max_attempts=3) for srv in (a, b) * 10]
    wait_for(lambda: any(t["state"] == "running" for t in map(lambda i: task(b, i), ids)))
    os.killpg(a.proc.pid, signal.SIGKILL)  # the instance and its runs die at once
    a.proc.wait(timeout=10)
    killed_at = time.monotonic()
    finished = [wait_state(b, task_id, "succeeded", "dead", timeout=120) for task_id in ids]
    assert {t["state"] for t in finished} == {"succeeded"}
    crashed = [t for t in finished if t["attempt_list"][0]["state"] == "crashed"]
    # Recovered within the lease (6 s here) and its heartbeat, not at some later sweep.
    assert time.monotonic() - killed_at < 60
    assert all(len(t["attempt_list"]) == 2 for t in crashed)


def test_it_fires_a_cron_slot_once_and_hands_the_clock_over(instances, pg_url):
    a = instances()
    b = instances()
    make_agent(a, "echo", ["cat"])
    trigger = {"name": "tick", "kind": "cron", "agent": "echo", "schedule": "0 3 * * *",
               "prompt_template": "tick"}  # fmt: skip
    status, made = live(a, a.keys["admin"], "POST", "/api/v1/triggers", trigger)
    assert status == 201, made

    def due_now():
        sql(
            pg_url,
            "UPDATE triggers SET next_run_at = %s WHERE slug = %s",
            (time.time(), made["slug"]),
        )

    def fired():
        return sql(pg_url, "SELECT count(*) FROM tasks WHERE trigger_slug = %s", (made["slug"],))[
            0
        ][0]

    due_now()
    wait_for(lambda: fired() == 1)
    time.sleep(3)  # both clocks tick every second: a second fire would show by now
    assert fired() == 1
    # The leader dies; the other instance takes the clock over at its next heartbeat.
    leader = next(srv for srv in (a, b) if "now runs the once-only jobs" in srv.log_tail(400))
    other = b if leader is a else a
    os.killpg(leader.proc.pid, signal.SIGKILL)
    leader.proc.wait(timeout=10)
    due_now()
    wait_for(lambda: fired() == 2, timeout=30)
    assert "now runs the once-only jobs" in other.log_tail(400)


def test_it_counts_a_keys_rate_limit_across_instances(instances):
    limit = {"AGENTED_RATE_LIMIT": "6/minute"}
    a = instances(**limit)
    b = instances(**limit)
    key = a.keys["admin"]
    answers = [live(srv, key, "GET", "/api/v1/agents")[0] for srv in (a, b) * 4]
    # Six in the key's window, whichever instance (and worker) answered; then 429s.
    assert answers[:6] == [200] * 6 and answers[6:] == [429, 429]


def test_it_holds_a_keys_stream_cap_across_instances(instances):
    a = instances(AGENTED_STREAMS_PER_KEY="1")
    b = instances(AGENTED_STREAMS_PER_KEY="1")
    make_agent(a, "wait", ["sh", "-c", "sleep 30"])
    task_id = submit(a, "wait")
    url = urlparse(a.url)
    held = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    held.request("GET", f"/api/v1/tasks/{task_id}/stream", headers={"X-API-Key": a.keys["admin"]})
    assert held.getresponse().status == 200  # open, and kept open
    # The key's one stream is taken, whichever instance or worker is asked next.
    for srv in (b, a, b):
        status, _, _ = srv.request(
            "GET", f"/api/v1/tasks/{task_id}/stream", headers={"X-API-Key": a.keys["admin"]}
        )
        assert status == 429
    held.close()
    # Given back when it closes: another instance can open one again. The server
    # learns of the close when a heartbeat write fails (every 15 s; the first write
    # to a closed socket may still succeed), so this can take two heartbeats.
    wait_for(lambda: stream_opens(b, task_id), timeout=120, interval=1)


def stream_opens(srv, task_id: int) -> bool:
    url = urlparse(srv.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request("GET", f"/api/v1/tasks/{task_id}/stream",
                     headers={"X-API-Key": srv.keys["admin"]})  # fmt: skip
        return conn.getresponse().status == 200
    finally:
        conn.close()


def test_it_wakes_a_mailbox_poll_on_one_instance_for_a_message_sent_to_another(instances):
    a = instances(AGENTED_MAILBOX_WAIT_MAX_S="600")
    b = instances(AGENTED_MAILBOX_WAIT_MAX_S="600")
    alpha, beta = register(a, a.keys["admin"], "alpha"), register(a, a.keys["admin"], "beta")
    result: dict = {}

    def poll():  # waits far longer than the test would: only a wake-up answers in time
        result["answer"] = call(a, beta, "GET", "/api/v1/agents/beta/messages?wait=600", 700)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    wait_for(lambda: call(a, a.keys["admin"], "GET", "/api/v1/agents/beta")[1]["state"]
             == "running", PATIENCE_S)  # fmt: skip
    call(b, alpha, "POST", "/api/v1/messages", {"performative": "inform", "receiver": "beta"})
    thread.join(timeout=PATIENCE_S)
    assert not thread.is_alive(), "the message sent on the other instance did not wake the poll"
    status, body = result["answer"]
    assert status == 200 and len(body["messages"]) == 1
