"""The Tasks pages: filters, full-text search, pagination, live rows, the task page and its log."""

from __future__ import annotations

import json
import re

import pytest

from app import db, events
from app.dashboard import ansi
from app.dashboard.live import live_rows, log_stream
from app.tasks import search_words
from tests.dashboard_helpers import add_agent, add_delivery, add_task, one, post


@pytest.fixture
def viewer(client, vera, signin):
    signin(client, vera)
    return client


@pytest.fixture
def echo(app):
    add_agent(app)


def ids_on(html: str) -> list[int]:
    import re

    return [int(m) for m in re.findall(r'<tr id="task-(\d+)"', html)]


def test_it_filters_by_state_agent_and_trigger(app, viewer, echo):
    add_agent(app, "other")
    a = add_task(app, state="running")
    b = add_task(app, state="dead", agent="other")
    c = add_task(app, state="queued", trigger_slug="hello")
    assert ids_on(viewer.get("/tasks").get_data(as_text=True)) == [c, b, a]
    assert ids_on(viewer.get("/tasks?state=dead").get_data(as_text=True)) == [b]
    assert ids_on(viewer.get("/tasks?agent=other").get_data(as_text=True)) == [b]
    assert ids_on(viewer.get("/tasks?trigger=hello").get_data(as_text=True)) == [c]
    html = viewer.get("/tasks?state=succeeded").get_data(as_text=True)
    assert "No task matches these filters" in html


def test_it_searches_prompts_and_log_lines(app, viewer, echo):
    a = add_task(app, prompt="Fix the flaky parser in src/lexer.py")
    b = add_task(app, prompt="Write docs", logs=["compiling", "ERROR: frobnicator exploded"])
    add_task(app, prompt="Unrelated")
    assert ids_on(viewer.get("/tasks?q=flaky+parser").get_data(as_text=True)) == [a]
    assert ids_on(viewer.get("/tasks?q=frobnicator").get_data(as_text=True)) == [b]
    assert ids_on(viewer.get("/tasks?q=frobni").get_data(as_text=True)) == [b]  # prefix
    assert ids_on(viewer.get("/tasks?q=frobnicator&state=dead").get_data(as_text=True)) == []


@pytest.mark.parametrize("text", ['"', "AND OR NOT", "a*b(", "NEAR(x y)", "col:val", "^", "  "])
def test_it_takes_search_syntax_literally_and_never_fails(app, viewer, echo, text):
    add_task(app, prompt="NEAR the col:val end")
    assert viewer.get("/tasks", query_string={"q": text}).status_code == 200


def test_it_quotes_every_search_word():
    assert search_words('fix "the" parser') == '"fix" "the" "parser"*'
    assert search_words("!!! ...") is None


@pytest.mark.sqlite_only
def test_it_keeps_the_search_index_in_step_with_deletes(app, viewer, echo):
    task_id = add_task(app, prompt="ephemeral zebra", logs=["quagga line"])
    db.write(lambda conn: conn.execute("DELETE FROM tasks WHERE id = ?", (task_id,)),
             app.config["DATABASE"])  # fmt: skip
    conn = db.connect(app.config["DATABASE"])
    try:
        for word in ("zebra", "quagga"):
            hits = conn.execute(
                "SELECT count(*) FROM task_search WHERE task_search MATCH ?", (word,)
            ).fetchone()[0]
            assert hits == 0
        conn.execute("INSERT INTO task_search (task_search) VALUES ('integrity-check')")
    finally:
        conn.close()


def test_it_pages_with_a_cursor(app, viewer, echo):
    made = [add_task(app, prompt=f"task {i}") for i in range(60)]
    html = viewer.get("/tasks").get_data(as_text=True)
    first = ids_on(html)
    assert first == made[::-1][:50]
    assert "Show older tasks" in html
    import re

    url = re.search(r'hx-get="(/tasks/rows\?[^"]+)"', html).group(1).replace("&amp;", "&")
    rest = viewer.get(url).get_data(as_text=True)
    assert ids_on(rest) == made[::-1][50:]
    assert "Show older tasks" not in rest


def test_it_streams_changed_rows_and_new_rows_as_html(app, echo):
    old = add_task(app, state="queued", prompt="old one")
    with app.test_request_context("/tasks/live"):
        from flask import g

        g.key = None
        stream = live_rows([], [], True, 0, app.config["DATABASE"])
        assert next(stream).startswith("retry:")
        new = add_task(app, prompt="brand new")
        events.broker.publish("task", {"id": 7, "kind": "task.queued", "subject": f"task:{new}",
                                       "data": {"task_id": new, "state": "queued"}})  # fmt: skip
        events.broker.publish("task", {"id": 8, "kind": "task.running", "subject": f"task:{old}",
                                       "data": {"task_id": old, "state": "running"}})  # fmt: skip
        first, second = next(stream), next(stream)
        stream.close()
    assert first.startswith("id: 7\nevent: task-new\n") and "brand new" in first
    assert second.startswith(f"id: 8\nevent: task-{old}\n") and f'id="task-{old}"' in second
    assert all(line.startswith(("id:", "event:", "data:")) for line in second.strip().split("\n"))


def test_it_drops_a_row_that_stops_matching_the_filters(app, echo):
    task_id = add_task(app, state="succeeded")
    with app.test_request_context("/tasks/live?state=running"):
        stream = live_rows(["state IN (?)"], ["running"], True, 0, app.config["DATABASE"])
        next(stream)
        data = {"task_id": task_id, "state": "succeeded"}
        events.broker.publish("task", {"id": 9, "kind": "task.succeeded", "data": data})
        out = next(stream)
        stream.close()
    assert f"event: task-{task_id}" in out and 'class="gone"' in out


def test_it_resumes_the_row_stream_from_last_event_id(app, viewer, echo):
    add_task(app)
    task_id = add_task(app)  # its task.queued event is the newest in the events table
    last = one(app, "SELECT max(id) FROM events")[0]
    with app.test_request_context("/tasks/live"):
        stream = live_rows([], [], True, last - 1, app.config["DATABASE"])
        next(stream)
        out = next(stream)
        stream.close()
    assert f"id: {last}\nevent: task-{task_id}" in out


def test_it_renders_the_task_page_with_log_attempts_prompt_and_payload(app, viewer, echo):
    delivery = add_delivery(app, {"issue": {"title": "Broken build"}}, trigger_slug="hello")
    task_id = add_task(
        app, state="dead", prompt="Please fix <b>it</b>", delivery_id=delivery,
        logs=["plain line", "\x1b[31mred\x1b[0m and \x1b]0;title\x07normal", "ERR boom"],
        attempts=[{"state": "failed", "exit_code": 2, "error": "exited with status 2",
                   "usage": {"input_tokens": 200, "cache_read_tokens": 1000, "output_tokens": 34,
                             "cost_usd": 0.0123},
                   "duration": 65}],
    )  # fmt: skip
    html = viewer.get(f"/tasks/{task_id}").get_data(as_text=True)
    assert "Please fix &lt;b&gt;it&lt;/b&gt;" in html
    assert '<span class="a-fg-31">red</span> and normal' in html
    assert 'class="ln s-stderr"' in html
    assert "1,200 in · 34 out" in html and "$0.0123" in html and "1 min 5 s" in html
    assert "Broken build" in html and 'title="payload.issue.title"' in html
    assert "sse-connect" not in html  # a dead task has nothing more to say


def test_it_connects_a_running_task_page_to_its_stream_after_the_last_line(app, viewer, echo):
    task_id = add_task(app, state="running", logs=["one", "two"])
    html = viewer.get(f"/tasks/{task_id}").get_data(as_text=True)
    assert f'sse-connect="/tasks/{task_id}/stream?after=2"' in html
    assert 'sse-close="end"' in html and "No output yet" not in html


def test_it_streams_the_backlog_then_live_lines_then_the_end(app, echo):
    task_id = add_task(app, state="running", logs=["one", "two", "three"])
    path = app.config["DATABASE"]
    with app.test_request_context(f"/tasks/{task_id}/stream"):
        from flask import g

        g.key = None
        stream = log_stream(task_id, 1, "shell", False, path)
        assert next(stream).startswith("retry:")
        backlog = next(stream)
        assert next(stream).startswith("event: state\n")  # the header, in case it changed
        assert backlog.startswith("id: 3\nevent: log\n")
        assert "two" in backlog and "one" not in backlog
        assert "attempt-divider" not in backlog  # the page has attempt 1's start already
        line = {"id": 4, "kind": "log", "seq": 4, "attempt": 1, "stream": "stdout",
                "text": "four <script>", "ts": 1764590467.5}  # fmt: skip
        events.broker.publish(f"task:{task_id}", line)
        live = next(stream)
        assert live == (
            'id: 4\nevent: log\ndata: <div class="ln s-stdout" data-seq="4"><time class="ts"'
            ' datetime="2025-12-01T12:01:07+00:00">12:01:07</time>four &lt;script&gt;</div>\n\n'
        )
        assert line["_html"]  # rendered once, shared by every subscriber
        db.write(lambda c: c.execute("UPDATE tasks SET state = 'succeeded' WHERE id = ?",
                                     (task_id,)), path)  # fmt: skip
        events.broker.publish(f"task:{task_id}", {"id": 99, "kind": "task.succeeded",
                              "data": {"task_id": task_id, "state": "succeeded"}})  # fmt: skip
        head = next(stream)
        assert head.startswith("event: state\n") and "succeeded" in head
        assert 'hx-swap-oob="true"' in head  # the attempts table comes along
        assert next(stream) == "event: end\ndata: finished\n\n"
        with pytest.raises(StopIteration):
            next(stream)


def test_it_shows_a_cli_json_stream_as_steps_when_the_parser_knows_it(monkeypatch, app, echo):
    from app.dashboard import live
    from app.dashboard.live import line_html

    fake = lambda backend, line: {"kind": "tool_call", "text": "Read src/app.py"}  # noqa: E731
    monkeypatch.setattr(live, "parse_line", fake)
    row = {"seq": 5, "stream": "stdout", "text": json.dumps({"type": "tool_use"})}
    html = line_html("claude", row)
    assert 'class="ln step step-tool_call"' in html and "Read src/app.py" in html
    assert "tool_use" in line_html("claude", row, raw=True)
    assert "step" not in line_html("shell", row)


def test_it_renders_ansi_colours_as_classes_and_strips_the_rest():
    assert ansi.to_html("\x1b[1;32mok\x1b[0m done") == '<span class="a-bold a-fg-32">ok</span> done'
    assert ansi.to_html("\x1b[38;5;196mx\x1b[39m") == "x"
    assert ansi.to_html("a\x1b[2Kb\x1b[?25lc") == "abc"
    assert ansi.to_html("<img src=x onerror=alert(1)>") == "&lt;img src=x onerror=alert(1)&gt;"
    assert ansi.strip_escapes("\x1b[31mred\x1b[0m\x07") == "red"


def test_it_cancels_a_queued_task(app, client, dave, signin, echo):
    task_id = add_task(app)
    token = signin(client, dave)
    resp = post(client, f"/tasks/{task_id}/cancel", token)
    assert resp.status_code == 303
    page = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert "Cancel requested" in page and "cancelled" in page


def test_it_answers_htmx_actions_with_the_new_header(app, client, dave, signin, echo):
    task_id = add_task(app, state="dead")
    token = signin(client, dave)
    resp = client.post(f"/tasks/{task_id}/retry", headers={"HX-Request": "true",
                                                            "X-CSRF-Token": token})  # fmt: skip
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert "queued" in html and 'id="attempts"' in html
    again = client.post(f"/tasks/{task_id}/retry", headers={"HX-Request": "true",
                                                             "X-CSRF-Token": token})  # fmt: skip
    assert again.status_code == 409 and again.mimetype == "text/plain"


def test_it_replays_a_task_without_a_delivery_as_a_new_task(app, client, dave, signin, echo):
    task_id = add_task(app, state="succeeded", prompt="Do it again")
    token = signin(client, dave)
    resp = post(client, f"/tasks/{task_id}/replay", token)
    assert resp.status_code == 303
    new_id = int(resp.headers["Location"].rsplit("/", 1)[1])
    assert new_id != task_id
    row = one(app, "SELECT prompt, state FROM tasks WHERE id = ?", (new_id,))
    assert tuple(row) == ("Do it again", "queued")


def test_it_reads_a_real_claude_stream_line_as_a_tool_call():
    from app.dashboard.live import line_html

    call = {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "echo <hi>"}}
    text = json.dumps({"type": "assistant", "message": {"content": [call]}})
    html = line_html("claude", {"seq": 1, "stream": "stdout", "text": text})
    assert html.startswith('<div class="ln step step-tool_call"')
    assert "Bash: echo &lt;hi&gt;" in html


def test_it_ends_open_streams_soon_after_shutdown_begins(monkeypatch, app, echo):
    from app import streams
    from app.dashboard import live

    task_id = add_task(app, state="running")
    monkeypatch.setattr(streams, "POLL_S", 0.05)
    monkeypatch.setattr(streams, "HEARTBEAT_S", 0.1)  # a heartbeat every two polls
    stopping = {"now": False}
    monkeypatch.setattr(live, "stopping", lambda: stopping["now"])
    polls = []
    wait_event = streams.wait_event
    monkeypatch.setattr(streams, "wait_event", lambda *a: polls.append(1) or wait_event(*a))
    with app.test_request_context(f"/tasks/{task_id}/stream"):
        stream = log_stream(task_id, 0, "shell", False, app.config["DATABASE"])
        chunks = [next(stream), next(stream), next(stream)]  # retry, header, a heartbeat
        assert chunks[-1] == ": keepalive\n\n"
        stopping["now"] = True
        before = len(polls)
        assert before >= 2  # the count sees the stream's polls (two to the heartbeat)
        assert list(stream) == []
        assert len(polls) - before <= 1  # ends within a poll, not at the next heartbeat


def test_it_shows_a_whole_short_log_whose_numbers_jumped_after_a_crash(app, viewer, echo):
    task_id = add_task(app, state="succeeded", logs=["before the crash", "after the restart"])
    conn = db.connect(app.config["DATABASE"])
    with conn:  # recovery numbers the next attempt's lines past what was published
        conn.execute(
            "UPDATE task_logs SET seq = seq + 2500 WHERE task_id = ? AND seq = 2", (task_id,)
        )
        conn.execute("UPDATE tasks SET log_seq = 2502 WHERE id = ?", (task_id,))
    conn.close()
    html = viewer.get(f"/tasks/{task_id}").get_data(as_text=True)
    assert "before the crash" in html and "after the restart" in html
    assert "Showing the last lines only" not in html


def test_it_streams_a_whole_short_backlog_whose_numbers_jumped(app, echo):
    task_id = add_task(app, state="running", logs=["before the crash", "after the restart"])
    path = app.config["DATABASE"]
    db.write(lambda c: c.execute("UPDATE task_logs SET seq = 2502 WHERE task_id = ? AND seq = 2",
                                 (task_id,)), path)  # fmt: skip
    db.write(lambda c: c.execute("UPDATE tasks SET log_seq = 2502 WHERE id = ?", (task_id,)), path)
    with app.test_request_context(f"/tasks/{task_id}/stream"):
        from flask import g

        g.key = None
        stream = log_stream(task_id, 0, "shell", False, path)
        assert next(stream).startswith("retry:")
        backlog = next(stream)
        assert backlog.startswith("id: 2502\nevent: log\n")
        assert "before the crash" in backlog and "after the restart" in backlog


# --- starting a task ---------------------------------------------------------------


@pytest.fixture
def developer(client, dave, signin):
    client.token = signin(client, dave)
    return client


def test_it_queues_a_task_from_the_form_as_the_api_would(app, developer, echo):
    page = developer.get("/tasks/new?agent=echo").get_data(as_text=True)
    assert '<option value="echo" selected>' in page
    resp = post(developer, "/tasks/new", developer.token, agent="echo", prompt="  Say hi\n",
                priority="7", max_attempts="2", timeout_s="", concurrency_key="k1")  # fmt: skip
    assert resp.status_code == 303
    task = one(app, "SELECT * FROM tasks")
    assert resp.headers["Location"] == f"/tasks/{task['id']}"
    assert (task["state"], task["agent"], task["prompt"]) == ("queued", "echo", "  Say hi\n")
    assert (task["priority"], task["max_attempts"], task["concurrency_key"]) == (7, 2, "k1")
    assert task["timeout_s"] == app.config["TASK_TIMEOUT_S"]
    assert task["api_key_id"] is not None
    assert "New task" in developer.get("/tasks").get_data(as_text=True)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"agent": ""}, "agent"),
        ({"agent": "nobody"}, "agent"),
        ({"prompt": "   "}, "prompt"),
        ({"priority": "high"}, "priority"),
        ({"priority": "101"}, "priority"),
        ({"max_attempts": "0"}, "max_attempts"),
        ({"timeout_s": "-5"}, "timeout_s"),
        ({"concurrency_key": "k" * 201}, "concurrency_key"),
        ({"agent": "remote"}, "agent"),  # external: it reads messages, never runs tasks
    ],
)
def test_it_shows_a_bad_task_by_its_field_and_queues_nothing(app, developer, echo, change, field):
    add_agent(app, "remote", backend="external", command=[])
    form = {"agent": "echo", "prompt": "hi", "priority": "", "max_attempts": "", "timeout_s": ""}
    resp = post(developer, "/tasks/new", developer.token, **(form | change))
    assert resp.status_code == 422
    html = resp.get_data(as_text=True)
    assert f'id="{field}-error"' in html
    assert one(app, "SELECT count(*) FROM tasks")[0] == 0


def test_it_refuses_viewers_and_missing_csrf_for_new_tasks(app, client, vera, dave, signin, echo):
    token = signin(client, vera)
    assert "New task" not in client.get("/tasks").get_data(as_text=True)
    assert client.get("/tasks/new").status_code == 403
    assert post(client, "/tasks/new", token, agent="echo", prompt="x").status_code == 403
    signin(client, dave)
    assert client.post("/tasks/new", data={"agent": "echo", "prompt": "x"}).status_code == 403
    assert one(app, "SELECT count(*) FROM tasks")[0] == 0


def test_it_queues_one_task_for_a_form_sent_twice(app, developer, echo):
    page = developer.get("/tasks/new").get_data(as_text=True)
    form_id = re.search(r'name="form_id" value="([^"]+)"', page).group(1)
    form = {"agent": "echo", "prompt": "line one\r\nline two", "form_id": form_id}
    first = post(developer, "/tasks/new", developer.token, **form)
    again = post(developer, "/tasks/new", developer.token, **form)
    assert first.status_code == again.status_code == 303
    assert first.headers["Location"] == again.headers["Location"]
    assert one(app, "SELECT count(*), max(prompt) FROM tasks")[:] == (1, "line one\nline two")


def test_it_keeps_the_prompt_when_the_pending_cap_refuses_it(make_app, signin):
    from tests.conftest import make_key

    app = make_app(MAX_PENDING_TASKS=1)
    add_agent(app)
    add_task(app)
    client = app.test_client()
    token = signin(client, make_key(app, "dave", "developer"))
    resp = post(client, "/tasks/new", token, agent="echo", prompt="Keep me")
    assert resp.status_code == 429 and resp.headers["Retry-After"]
    html = resp.get_data(as_text=True)
    assert "Keep me</textarea>" in html and "tasks are waiting" in html
    assert one(app, "SELECT count(*) FROM tasks")[0] == 1


# --- attempts in the log, times, errors (issue 16) -----------------------------------


def add_attempt_lines(app, task_id: int, lines: list[tuple[int, int, str, str, float]]) -> None:
    """Insert (seq, attempt, stream, text, ts) log lines."""
    db.write(lambda conn: conn.executemany(
        "INSERT INTO task_logs (task_id, seq, attempt, stream, text, ts) VALUES (?, ?, ?, ?, ?, ?)",
        [(task_id, *line) for line in lines]), app.config["DATABASE"])  # fmt: skip


def test_it_opens_each_attempts_lines_with_a_divider_and_shows_each_lines_time(app, viewer, echo):
    task_id = add_task(app, state="dead", attempts=[{"state": "failed"}, {"state": "failed"}])
    t = 1764590467.0  # 12:01:07 UTC
    db.write(lambda conn: conn.execute(
        "UPDATE attempts SET started_at = ?, resumed_session = ? WHERE task_id = ? AND number = 2",
        (t, "5b1e-aa", task_id)), app.config["DATABASE"])  # fmt: skip
    add_attempt_lines(app, task_id, [(1, 1, "stdout", "first try", t - 60),
                                     (2, 2, "stdout", "second try", t + 1),
                                     (3, 2, "stdout", "still second", t + 2)])  # fmt: skip
    html = viewer.get(f"/tasks/{task_id}").get_data(as_text=True)
    dividers = re.findall(r'<div class="attempt-divider"[^>]*>(.*?)</div>', html)
    assert len(dividers) == 2 and dividers[0].startswith("Attempt 1 · started ")
    assert dividers[1] == (
        "Attempt 2 · started 12:01:07 UTC · resumed session <code>5b1e-aa</code>"
    )
    assert html.index("first try") < html.index("Attempt 2 ·") < html.index("second try")
    assert '<time class="ts" datetime="2025-12-01T12:01:08+00:00">12:01:08</time>second try' in html


def test_it_streams_a_divider_before_a_new_attempts_first_line(app, echo):
    task_id = add_task(
        app, state="running", logs=["one"], attempts=[{"state": "failed"}, {"state": "running"}]
    )
    path = app.config["DATABASE"]
    with app.test_request_context(f"/tasks/{task_id}/stream"):
        from flask import g

        g.key = None
        stream = log_stream(task_id, 1, "shell", False, path)
        assert next(stream).startswith("retry:")
        assert next(stream).startswith("event: state\n")
        line = {"id": 2, "kind": "log", "seq": 2, "attempt": 2, "stream": "stdout",
                "text": "again", "ts": 1764590467.0}  # fmt: skip
        events.broker.publish(f"task:{task_id}", line)
        frame = next(stream)
        assert frame.startswith("id: 2\nevent: log\n")
        assert 'data-attempt="2">Attempt 2 · started ' in frame
        assert frame.index("Attempt 2") < frame.index("again")
        following = dict(line, id=3, seq=3, text="more")
        events.broker.publish(f"task:{task_id}", following)
        assert "attempt-divider" not in next(stream)  # once per attempt


def test_it_says_the_error_once_with_the_failed_attempts_last_stderr_lines(app, viewer, echo):
    task_id = add_task(
        app,
        state="dead",
        attempts=[{"state": "failed", "exit_code": 3, "error": "exited with status 3"}],
    )
    db.write(lambda conn: conn.execute(
        "UPDATE tasks SET last_error = 'exited with status 3', exit_code = 3 WHERE id = ?",
        (task_id,)), app.config["DATABASE"])  # fmt: skip
    lines = [(n, 1, "stderr", f"\x1b[31mtrace {n}\x1b[0m", 0.0) for n in range(1, 13)]
    add_attempt_lines(app, task_id, [*lines, (13, 1, "stdout", "not an error", 0.0)])
    html = viewer.get(f"/tasks/{task_id}").get_data(as_text=True)
    head = html[html.index('id="task-error"') :]
    head = head[: head.index("</dd>")]
    assert "exited with status 3" in head and "(exit status 3)" not in head
    tail = re.search(r'<pre class="stderr-tail"[^>]*>(.*?)</pre>', head, re.S).group(1)
    assert tail.split("\n") == [f"trace {n}" for n in range(5, 13)]  # the last 8, plain
    assert html.count('class="stderr-tail"') == 1  # not again in the attempts table


def test_it_marks_a_running_attempts_duration_to_tick(app, viewer, echo):
    task_id = add_task(app, state="running", attempts=[{"state": "running"}])
    db.write(lambda conn: conn.execute("UPDATE attempts SET finished_at = NULL WHERE task_id = ?",
                                       (task_id,)), app.config["DATABASE"])  # fmt: skip
    html = viewer.get(f"/tasks/{task_id}").get_data(as_text=True)
    assert re.search(r'<span data-tick="[0-9.]+">[^<]+</span> so far', html)


def test_it_asks_before_cancelling(app, client, dave, signin, echo):
    task_id = add_task(app, state="running")
    signin(client, dave)
    html = client.get(f"/tasks/{task_id}").get_data(as_text=True)
    form = re.search(r'<form[^>]*action="/tasks/\d+/cancel"[^>]*>', html).group(0)
    assert f'data-confirm="Cancel task #{task_id}? Its running attempt is stopped."' in form


def test_it_says_a_task_from_the_new_task_form_came_from_the_dashboard(app, developer, echo):
    resp = post(developer, "/tasks/new", developer.token, agent="echo", prompt="hi")
    task_id = int(resp.headers["Location"].rsplit("/", 1)[1])
    html = developer.get(f"/tasks/{task_id}").get_data(as_text=True)
    assert "<dt>Source</dt><dd>Dashboard</dd>" in html and "Started from the dashboard" in html
    assert one(app, "SELECT origin FROM tasks WHERE id = ?", (task_id,))[0] == (
        '{"kind": "dashboard"}'
    )
    row = re.search(rf'<tr id="task-{task_id}".*?</tr>', developer.get("/tasks").get_data(
        as_text=True), re.S).group(0)  # fmt: skip
    assert '<span class="muted">dashboard</span>' in row
    replayed = post(developer, f"/tasks/{task_id}/replay", developer.token)
    copy = int(replayed.headers["Location"].rsplit("/", 1)[1])
    assert "<dd>Dashboard</dd>" in developer.get(f"/tasks/{copy}").get_data(as_text=True)
    api_task = add_task(app)  # no origin: sent through the API
    assert "<dt>Source</dt><dd>API</dd>" in developer.get(f"/tasks/{api_task}").get_data(
        as_text=True
    )


def test_it_states_the_prompt_limit_and_answers_an_oversized_form_with_the_form(app, developer):
    add_agent(app)
    page = developer.get("/tasks/new").get_data(as_text=True)
    assert 'data-max-chars="262144"' in page and "256 KiB at most" in page
    assert f'data-max-body="{app.config["MAX_CONTENT_LENGTH"]}"' in page
    big = "x" * (app.config["MAX_CONTENT_LENGTH"] + 10)
    resp = post(developer, "/tasks/new", developer.token, agent="echo", prompt=big)
    assert resp.status_code == 413
    html = resp.get_data(as_text=True)
    assert 'id="prompt-error"' in html and "1 MiB" in html and "256 KiB at most" in html
    assert "data-restore-draft" in html  # app.js puts back the copy it kept
    assert one(app, "SELECT count(*) FROM tasks")[0] == 0


def test_it_says_why_when_another_form_is_over_the_request_limit(app, developer):
    big = "x" * (app.config["MAX_CONTENT_LENGTH"] + 10)
    resp = post(developer, "/triggers/new", developer.token, name="t", prompt_template=big)
    assert resp.status_code == 413
    assert "more than the 1 MiB the hub takes in one request" in resp.get_data(as_text=True)
