"""The ExecutionService end to end: real gunicorn, real subprocesses, real SQLite."""

from __future__ import annotations

import http.client
import json
import os
import signal
import sqlite3
import sys
import time
from urllib.parse import urlparse

import pytest

from tests.pipeline_helpers import live, shell_agent, wait_for

FAST = {
    "AGENTED_BACKOFF_BASE_S": "0.2",
    "AGENTED_BACKOFF_CAP_S": "0.5",
    "AGENTED_KILL_GRACE_S": "1",
}
PY = sys.executable


@pytest.fixture
def hub(live_server):
    srv = live_server(dict(FAST))
    srv.keys["admin"] = srv.make_key("admin")
    return srv


def make_agent(srv, name, command, **extra):
    status, body = live(srv, srv.keys["admin"], "POST", "/api/v1/agents",
                        shell_agent(name, command, **extra))  # fmt: skip
    assert status == 201, body


def submit(srv, agent, prompt="", **extra):
    status, body = live(srv, srv.keys["admin"], "POST", "/api/v1/tasks",
                        {"agent": agent, "prompt": prompt, **extra})  # fmt: skip
    assert status == 202, body
    return body["id"]


def task(srv, task_id):
    return live(srv, srv.keys["admin"], "GET", f"/api/v1/tasks/{task_id}")[1]


def wait_state(srv, task_id, *states, timeout=30):
    def check():
        t = task(srv, task_id)
        return t if t["state"] in states else None

    try:
        return wait_for(check, timeout)
    except AssertionError:
        raise AssertionError(f"task {task(srv, task_id)}\n{srv.log_tail()}") from None


def logs(srv, task_id):
    return live(srv, srv.keys["admin"], "GET", f"/api/v1/tasks/{task_id}/logs")[1]["lines"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose; it only waits for its parent to reap it.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def test_it_runs_a_shell_agent_with_the_prompt_on_stdin(hub):
    make_agent(hub, "echo", ["cat"])
    task_id = submit(hub, "echo", "hello\nworld")
    done = wait_state(hub, task_id, "succeeded")
    assert [line["text"] for line in logs(hub, task_id)] == ["hello", "world"]
    assert done["attempts"] == 1
    attempt = done["attempt_list"][0]
    assert attempt["state"] == "succeeded" and attempt["exit_code"] == 0
    assert attempt["argv"] == ["cat"]


def test_it_keeps_the_services_secrets_out_of_the_child(hub):
    make_agent(hub, "env", ["env"], env_allow=["LANG"], secrets={"TOKEN": "t0k-5e3b9a"})
    task_id = submit(hub, "env")
    wait_state(hub, task_id, "succeeded")
    names = {line["text"].split("=", 1)[0]: line["text"] for line in logs(hub, task_id)}
    # The child has it; what it prints of it is stored redacted.
    assert names["TOKEN"] == "TOKEN=[redacted]"
    assert "AGENTED_DATA_DIR" not in names and "SECRET_KEY" not in names
    assert "t0k-5e3b9a" not in json.dumps(task(hub, task_id))  # the secret is never shown back


def read_sse(srv, path, headers=None, stop="end", limit=500):
    """Read SSE events from `path` until an event named `stop`; return [(event, id, data)]."""
    url = urlparse(srv.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.request("GET", path, headers={"X-API-Key": srv.keys["admin"], **(headers or {})})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    got, event, ident, data = [], None, None, None
    while len(got) < limit:
        line = resp.readline().decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("id: "):
            ident = int(line[4:])
        elif line.startswith("data: "):
            data = json.loads(line[6:])
        elif line == "" and data is not None:
            got.append((event, ident, data))
            if event == stop:
                break
            event, ident, data = None, None, None
    conn.close()
    return got


def test_it_streams_lines_live_and_resumes_after_last_event_id(hub):
    script = (
        "import time\nfor i in range(5):\n    print(f'line {i}', flush=True)\n    time.sleep(0.2)"
    )
    make_agent(hub, "ticker", [PY, "-c", script])
    task_id = submit(hub, "ticker")
    wait_state(hub, task_id, "running", "succeeded")
    events = read_sse(hub, f"/api/v1/tasks/{task_id}/stream")
    lines = [(i, d["text"]) for e, i, d in events if e == "log"]
    assert [text for _i, text in lines] == [f"line {i}" for i in range(5)]
    assert [i for i, _t in lines] == sorted(i for i, _t in lines)
    assert events[-1][2]["state"] == "succeeded"
    resumed = read_sse(hub, f"/api/v1/tasks/{task_id}/stream", {"Last-Event-ID": str(lines[2][0])})
    assert [d["text"] for e, _i, d in resumed if e == "log"] == ["line 3", "line 4"]


def test_it_retries_with_backoff_then_dead_letters(hub):
    make_agent(hub, "broken", ["sh", "-c", "echo trying; exit 3"])
    task_id = submit(hub, "broken", max_attempts=3)
    dead = wait_state(hub, task_id, "dead")
    assert dead["attempts"] == 3
    assert [a["exit_code"] for a in dead["attempt_list"]] == [3, 3, 3]
    assert [a["state"] for a in dead["attempt_list"]] == ["failed"] * 3
    assert dead["last_error"] == "exited with status 3"
    starts = [a["started_at"] for a in dead["attempt_list"]]
    assert starts == sorted(starts)
    assert [line["attempt"] for line in logs(hub, task_id)] == [1, 2, 3]


STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen(["sleep", "300"])
open("child.pid", "w").write(str(child.pid))
print("started", flush=True)
time.sleep(300)
"""


# Waits in its workspace until the test lets it finish (release), so a test can hold
# a run for as long as it needs instead of guessing how long a sleep will last.
GATED = """
import os, time
print("waiting for go", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
"""


def release(srv, task_id):
    """Let a GATED run finish: put `go` in its workspace."""
    path = srv.data_dir / "workspaces" / f"task-{task_id}"
    wait_for(path.is_dir)
    (path / "go").touch()


def child_pid(srv, task_id, attempt=1):
    """The host pid of the process whose sandbox pid the run wrote to child.pid."""
    path = srv.data_dir / "workspaces" / f"task-{task_id}" / "child.pid"
    inner = int(wait_for(lambda: path.exists() and path.read_text().strip()))
    return wait_for(lambda: host_pid(inner, f"AGENTED_ATTEMPT={task_id}:{attempt}"))


def host_pid(inner: int, marker: str) -> int | None:
    """Find a process by its pid inside a run's PID namespace (NSpid) and its attempt mark."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                nspid = next(line.split()[1:] for line in f if line.startswith("NSpid:"))
            with open(f"/proc/{entry}/environ", "rb") as f:
                marked = marker.encode() in f.read().split(b"\0")
        except (OSError, StopIteration):
            continue
        if marked and nspid[-1] == str(inner):
            return int(entry)
    return None


def test_it_times_out_and_kills_the_whole_process_group(hub):
    make_agent(hub, "stubborn", [PY, "-c", STUBBORN])
    task_id = submit(hub, "stubborn", timeout_s=2, max_attempts=1)
    pid = child_pid(hub, task_id)
    dead = wait_state(hub, task_id, "dead")
    assert dead["attempt_list"][0]["state"] == "timed_out"
    wait_for(lambda: not alive(pid), timeout=10)


def test_it_cancels_a_running_task_and_its_grandchildren(hub):
    make_agent(hub, "stubborn", [PY, "-c", STUBBORN])
    task_id = submit(hub, "stubborn")
    pid = child_pid(hub, task_id)
    wait_state(hub, task_id, "running")
    status, _ = live(hub, hub.keys["admin"], "POST", f"/api/v1/tasks/{task_id}/cancel")
    assert status == 202
    done = wait_state(hub, task_id, "cancelled")
    assert done["attempt_list"][0]["state"] == "cancelled"
    wait_for(lambda: not alive(pid), timeout=10)


def test_it_holds_tasks_back_beyond_an_agents_concurrency(hub):
    make_agent(hub, "single", [PY, "-c", GATED], concurrency=1)
    make_agent(hub, "other", ["true"])
    left = [submit(hub, "single") for _ in range(3)]
    while left:
        running = wait_for(lambda: [i for i in left if task(hub, i)["state"] == "running"])
        # A task for another agent, queued after these, has run: the scheduler has been
        # round since, and still the held ones wait while one runs.
        wait_state(hub, submit(hub, "other"), "succeeded")
        states = sorted(task(hub, i)["state"] for i in left)
        assert len(running) == 1 and states == ["queued"] * (len(left) - 1) + ["running"]
        release(hub, running[0])
        wait_state(hub, running[0], "succeeded")
        left.remove(running[0])


def test_it_runs_another_agents_task_behind_a_long_queue_for_a_busy_one(hub):
    # 300 queued tasks for an agent at its limit must not hide a later task for an idle one.
    make_agent(hub, "busy", [PY, "-c", "import time; time.sleep(60)"], concurrency=1)
    make_agent(hub, "idle", ["true"])
    batch = {"tasks": [{"agent": "busy", "prompt": str(n)} for n in range(300)]}
    status, body = live(hub, hub.keys["admin"], "POST", "/api/v1/tasks", batch)
    assert status == 202, body
    wait_state(hub, body["tasks"][0]["id"], "running")
    later = submit(hub, "idle")
    assert wait_state(hub, later, "succeeded", timeout=15)["state"] == "succeeded"
    assert task(hub, body["tasks"][1]["id"])["state"] == "queued"


def test_it_runs_another_keys_task_behind_a_long_queue_for_a_busy_key(live_server):
    srv = live_server({**FAST, "AGENTED_CONCURRENCY_PER_KEY": "1"})
    srv.keys["admin"] = srv.make_key("admin")
    make_agent(srv, "worker", [PY, "-c", "import time; time.sleep(60)"], concurrency=5)
    batch = {"tasks": [{"agent": "worker", "prompt": str(n), "concurrency_key": "repo#1"}
                       for n in range(300)]}  # fmt: skip
    status, body = live(srv, srv.keys["admin"], "POST", "/api/v1/tasks", batch)
    assert status == 202, body
    wait_state(srv, body["tasks"][0]["id"], "running")
    later = submit(srv, "worker", concurrency_key="repo#2")
    assert wait_state(srv, later, "running", timeout=15)["state"] == "running"
    assert task(srv, body["tasks"][1]["id"])["state"] == "queued"


def test_it_cuts_huge_output_and_survives_invalid_utf8(live_server):
    srv = live_server({**FAST, "AGENTED_MAX_LOG_BYTES": "100000"})
    srv.keys["admin"] = srv.make_key("admin")
    make_agent(srv, "chatty", [PY, "-c", "import sys\nfor i in range(100000): print('x' * 50)"])
    make_agent(
        srv, "binary", [PY, "-c", "import sys; sys.stdout.buffer.write(b'ok \\xff\\xfe end\\n')"]
    )
    big, bad = submit(srv, "chatty"), submit(srv, "binary")
    assert wait_state(srv, big, "succeeded")["attempt_list"][0]["log_bytes"] > 100000
    last = live(srv, srv.keys["admin"], "GET", f"/api/v1/tasks/{big}/logs?after=1900")[1]["lines"]
    assert "truncated" in last[-1]["text"] and last[-1]["stream"] == "system"
    wait_state(srv, bad, "succeeded")
    assert logs(srv, bad)[0]["text"] == "ok \ufffd\ufffd end"


def test_it_re_runs_an_attempt_cut_short_by_a_crash(live_server):
    srv = live_server(dict(FAST))
    srv.keys["admin"] = key = srv.make_key("admin")
    make_agent(srv, "slow", [PY, "-c", STUBBORN])
    task_id = submit(srv, "slow", timeout_s=60)
    orphan = child_pid(srv, task_id)
    wait_state(srv, task_id, "running")
    os.killpg(srv.proc.pid, signal.SIGKILL)  # the service dies, and its sandboxes with it
    srv.proc.wait(timeout=10)
    wait_for(lambda: not alive(orphan), timeout=10)  # bwrap --die-with-parent

    again = live_server({**FAST, "AGENTED_DATA_DIR": str(srv.data_dir)})
    again.keys["admin"] = key
    second = wait_state(again, task_id, "running")
    assert second["attempts"] == 2
    assert second["attempt_list"][0]["state"] == "crashed"
    live(again, key, "POST", f"/api/v1/tasks/{task_id}/cancel")
    final = wait_state(again, task_id, "cancelled")
    assert [a["state"] for a in final["attempt_list"]] == ["crashed", "cancelled"]


@pytest.mark.sqlite_only
def test_it_runs_a_schedule_missed_while_down_once(live_server):
    srv = live_server(dict(FAST))
    key = srv.make_key("admin")
    make_agent_key = {"name": "echo", "backend": "shell", "command": ["cat"]}
    assert live(srv, key, "POST", "/api/v1/agents", make_agent_key)[0] == 201
    trigger = {
        "name": "nightly",
        "kind": "cron",
        "agent": "echo",
        "schedule": "0 3 * * *",
        "timezone": "Europe/Paris",
        "prompt_template": "nightly at {{ payload.scheduled_at }}",
    }
    status, body = live(srv, key, "POST", "/api/v1/triggers", trigger)
    assert status == 201 and body["next_run_at"] > time.time()
    assert srv.stop() == 0
    with sqlite3.connect(srv.data_dir / "agented.db") as conn:
        # As if the service had been down for three days of slots.
        conn.execute("UPDATE triggers SET next_run_at = ?", (time.time() - 3 * 86400,))
    again = live_server({**FAST, "AGENTED_DATA_DIR": str(srv.data_dir)})
    tasks = wait_for(lambda: live(again, key, "GET", "/api/v1/tasks?trigger=nightly")[1]["tasks"])

    def caught_up():
        trigger = live(again, key, "GET", "/api/v1/triggers/nightly")[1]
        return trigger if trigger["next_run_at"] > time.time() else None

    # Caught up: the next slot is in the future, so no further firing can come before it.
    after = wait_for(caught_up)
    assert len(live(again, key, "GET", "/api/v1/tasks?trigger=nightly")[1]["tasks"]) == 1
    assert tasks[0]["prompt"].startswith("nightly at ")
    assert after["next_run_at"] > time.time()


def test_it_serialises_tasks_sharing_a_concurrency_key(live_server):
    srv = live_server({**FAST, "AGENTED_CONCURRENCY_PER_KEY": "1"})
    srv.keys["admin"] = srv.make_key("admin")
    make_agent(srv, "gated", [PY, "-c", GATED], concurrency=5)
    first, second = (submit(srv, "gated", concurrency_key="repo#1") for _ in range(2))
    other = submit(srv, "gated", concurrency_key="repo#2")
    # Another key's task, queued after both, runs beside the first: the key holds the second.
    wait_state(srv, other, "running")
    wait_state(srv, first, "running")
    assert task(srv, second)["state"] == "queued"
    release(srv, first)
    wait_state(srv, second, "running")  # its turn comes once the first is done
    assert task(srv, first)["state"] == "succeeded"
    for task_id in (second, other):
        release(srv, task_id)
        wait_state(srv, task_id, "succeeded")


def test_it_runs_higher_priority_first(live_server):
    srv = live_server({**FAST, "AGENTED_CONCURRENCY_GLOBAL": "1"})
    srv.keys["admin"] = srv.make_key("admin")
    make_agent(srv, "gate", [PY, "-c", GATED])
    make_agent(srv, "quick", ["true"])
    blocker = submit(srv, "gate")
    wait_state(srv, blocker, "running")
    low = submit(srv, "quick", priority=0)
    high = submit(srv, "quick", priority=10)
    release(srv, blocker)  # both wait in the queue when the one slot frees up
    first = wait_state(srv, low, "succeeded")["attempt_list"][0]["started_at"]
    second = wait_state(srv, high, "succeeded")["attempt_list"][0]["started_at"]
    assert second < first


def test_it_runs_in_its_own_clone_of_the_agents_repository(hub, tmp_path):
    import subprocess

    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "README").write_text("from the repository\n")
    subprocess.run([*git, "add", "README"], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    make_agent(hub, "reader", ["cat", "README"], workdir_policy="worktree", repository=str(repo))
    task_id = submit(hub, "reader")
    done = wait_state(hub, task_id, "succeeded")
    assert [line["text"] for line in logs(hub, task_id)] == ["from the repository"]
    workspace = done["attempt_list"][0]["workspace"]
    # Its own clone, not a worktree sharing the repository's .git (hooks, config).
    assert os.path.isdir(os.path.join(workspace, ".git"))
    listed = subprocess.run([*git, "worktree", "list"], capture_output=True, text=True).stdout
    assert workspace not in listed


def test_it_redacts_allowlisted_credentials_and_refuses_the_hubs_own(live_server):
    srv = live_server({**FAST, "DEPLOY_API_KEY": "dk-7f3a9c2e", "LANG": "C.UTF-8"})
    srv.keys["admin"] = srv.make_key("admin")
    make_agent(srv, "deploy", ["sh", "-c", "echo key=$DEPLOY_API_KEY lang=$LANG"],
               env_allow=["DEPLOY_API_KEY", "LANG"])  # fmt: skip
    task_id = submit(srv, "deploy")
    done = wait_state(srv, task_id, "succeeded")
    assert [line["text"] for line in logs(srv, task_id)] == ["key=[redacted] lang=C.UTF-8"]
    assert "dk-7f3a9c2e" not in json.dumps(done)
    body = {"name": "greedy", "backend": "shell", "command": ["env"],
            "env_allow": ["AGENTED_GITHUB_TOKEN"]}  # fmt: skip
    status, out = live(srv, srv.keys["admin"], "POST", "/api/v1/agents", body)
    assert status == 422 and "hub's own setting" in out["error"]["message"]
