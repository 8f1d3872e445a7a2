"""Results go back to GitHub: comments, check runs and statuses, against a local stand-in.

The hub runs for real (gunicorn, the outbox worker, sandboxed runs); GitHub is
tests/fakes/github_api.py on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest

from app import github
from tests.fakes.github_api import GitHubStandIn, make_app_key
from tests.pipeline_helpers import live, wait_for
from tests.test_execution import FAST, logs, release, task

SECRET = "gh-hook-secret"
TOKEN = "ghp_testtoken"
APP_ID = 4242
HEAD = "a" * 40
ANSWER = "All fixed: the parser now skips blank lines."


@pytest.fixture
def standin():
    with GitHubStandIn() as gh:
        yield gh


@pytest.fixture
def app_standin():
    private, public = make_app_key()
    granted = {"checks": "write", "issues": "write", "pull_requests": "write",
               "statuses": "write", "contents": "write", "metadata": "read"}  # fmt: skip
    with GitHubStandIn(app_id=APP_ID, app_public_key=public,
                       installation_permissions=granted) as gh:  # fmt: skip
        gh.private_pem = private
        yield gh


def start_hub(live_server, gh, tmp_path, app_mode=False, **env):
    settings = {**FAST, "GITHUB_WEBHOOK_SECRET": SECRET, "AGENTED_GITHUB_API_URL": gh.url,
                "AGENTED_PUBLIC_URL": "https://hub.example.com", **env}  # fmt: skip
    if app_mode:
        key = tmp_path / "app.pem"
        key.write_bytes(gh.private_pem)
        settings |= {"AGENTED_GITHUB_APP_ID": str(APP_ID),
                     "AGENTED_GITHUB_APP_PRIVATE_KEY_FILE": str(key)}  # fmt: skip
    else:
        settings["AGENTED_GITHUB_TOKEN"] = TOKEN
    srv = live_server(settings)
    srv.keys["admin"] = srv.make_key("admin")
    return srv


def setup(srv, command=("sh", "-c", f"echo '{ANSWER}'"), report="auto", **agent):
    body = {"name": "fixer", "backend": "shell", "command": list(command), **agent}
    assert live(srv, srv.keys["admin"], "POST", "/api/v1/agents", body)[0] == 201
    trigger = {"name": "gh", "kind": "github", "agent": "fixer", "report": report,
               "events": ["issues", "pull_request", "issue_comment"],
               "prompt_template": "Work on {{ repository }}"}  # fmt: skip
    assert live(srv, srv.keys["admin"], "POST", "/api/v1/triggers", trigger)[0] == 201


def send(srv, event, payload, delivery):
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    status, _h, raw = srv.request("POST", "/api/webhooks/github/", body, {
        "Content-Type": "application/json", "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": signature})  # fmt: skip
    assert status in (200, 202), raw
    return json.loads(raw)


def issue_event(number=7, installation=None, sender="alice"):
    payload = {"action": "opened", "issue": {"number": number, "title": "Crash"},
               "repository": {"full_name": "acme/app"}, "sender": {"login": sender}}  # fmt: skip
    if installation:
        payload["installation"] = {"id": installation}
    return payload


def pr_event(number=12, installation=None):
    pull = {"number": number, "title": "Fix", "head": {"sha": HEAD}}
    payload = {"action": "opened", "repository": {"full_name": "acme/app"},
               "sender": {"login": "alice"}, "pull_request": pull}  # fmt: skip
    if installation:
        payload["installation"] = {"id": installation}
    return payload


def reported(srv, task_id):
    """The task once every report it owes is sent (or dead)."""

    def done():
        t = task(srv, task_id)
        settled = all(r["state"] != "pending" for r in t["reports"])
        return t if t["state"] in ("succeeded", "dead") and settled and t["reports"] else None

    return wait_for(done, timeout=60)


def test_it_comments_once_and_edits_the_comment_to_the_outcome(live_server, standin, tmp_path):
    srv = start_hub(live_server, standin, tmp_path)
    # The run waits for `go` in its workspace, so the comment is seen before the outcome.
    setup(srv, command=("sh", "-c", f"while [ ! -e go ]; do sleep 0.05; done; echo '{ANSWER}'"))
    task_id = send(srv, "issues", issue_event(), "d-1")["tasks"][0]["id"]
    early = wait_for(lambda: standin.comments("acme", "app", 7))
    assert "Queued" in early[0]["body"] or "Running" in early[0]["body"]
    release(srv, task_id)

    done = reported(srv, task_id)

    assert done["state"] == "succeeded"
    comments = standin.comments("acme", "app", 7)
    assert len(comments) == 1
    body = comments[0]["body"]
    assert f"<!-- agented:task:{task_id} -->" in body
    assert "Succeeded" in body and ANSWER in body
    assert f"https://hub.example.com/tasks/{task_id}" in body
    assert standin.calls("PATCH", "/repos/acme/app/issues/comments/*")  # edited, not re-posted
    assert [r["channel"] for r in done["reports"]] == ["github_comment"]
    assert done["reports"][0]["state"] == "sent"


def test_it_puts_a_check_run_on_the_pull_requests_head_commit(live_server, app_standin, tmp_path):
    srv = start_hub(live_server, app_standin, tmp_path, app_mode=True)
    setup(srv)
    task_id = send(srv, "pull_request", pr_event(installation=1), "d-2")["tasks"][0]["id"]

    done = reported(srv, task_id)

    runs = app_standin.check_runs("acme", "app")
    assert len(runs) == 1
    assert runs[0]["head_sha"] == HEAD
    assert runs[0]["status"] == "completed" and runs[0]["conclusion"] == "success"
    assert runs[0]["external_id"] == str(task_id)
    assert len(app_standin.comments("acme", "app", 12)) == 1
    assert app_standin.minted[1] == 1  # one installation token, reused for every call
    assert {r["channel"] for r in done["reports"]} == {"github_comment", "github_check"}


def test_it_reports_a_failure_with_a_failed_check(live_server, app_standin, tmp_path):
    srv = start_hub(live_server, app_standin, tmp_path, app_mode=True)
    setup(srv, command=("sh", "-c", "echo broken >&2; exit 3"))
    send(srv, "pull_request", pr_event(installation=1), "d-3")

    runs = wait_for(lambda: [r for r in app_standin.check_runs("acme", "app")
                             if r["status"] == "completed"], timeout=60)  # fmt: skip

    assert runs[0]["conclusion"] == "failure"
    assert "Failed" in app_standin.comments("acme", "app", 12)[0]["body"]


def test_it_sends_one_comment_and_one_check_when_github_fails_twice(
    live_server, app_standin, tmp_path
):
    app_standin.fail_next("POST", "/repos/*/issues/*/comments", 502, times=2)
    app_standin.fail_next("POST", "/repos/*/check-runs", 502, times=2)
    srv = start_hub(live_server, app_standin, tmp_path, app_mode=True)
    setup(srv)
    task_id = send(srv, "pull_request", pr_event(installation=1), "d-4")["tasks"][0]["id"]

    done = reported(srv, task_id)

    assert len(app_standin.comments("acme", "app", 12)) == 1
    runs = app_standin.check_runs("acme", "app")
    assert len(runs) == 1 and runs[0]["conclusion"] == "success"
    assert all(r["state"] == "sent" for r in done["reports"])


def test_it_uses_a_commit_status_when_it_has_a_plain_token(live_server, standin, tmp_path):
    standin.set_pr("acme", "app", 12, HEAD)
    srv = start_hub(live_server, standin, tmp_path)
    setup(srv, report="check")
    send(srv, "pull_request", pr_event(), "d-5")

    statuses = wait_for(lambda: [s for s in standin.statuses("acme", "app", HEAD)
                                 if s["state"] == "success"], timeout=60)  # fmt: skip

    assert statuses[0]["context"] == "agented/gh"
    assert standin.comments("acme", "app", 12) == []  # report: check only


def test_it_gives_up_on_a_report_github_refuses_and_the_task_stands(live_server, standin, tmp_path):
    standin.fail_next("POST", "/repos/*/issues/*/comments", 404, times=50)
    srv = start_hub(live_server, standin, tmp_path)
    setup(srv)
    task_id = send(srv, "issues", issue_event(), "d-6")["tasks"][0]["id"]

    done = reported(srv, task_id)

    assert done["state"] == "succeeded"
    dead = done["reports"][0]
    assert dead["state"] == "dead" and "404" in dead["last_error"]


def test_it_never_answers_its_own_comment(live_server, standin, tmp_path):
    srv = start_hub(live_server, standin, tmp_path)
    setup(srv)
    task_id = send(srv, "issues", issue_event(), "d-7")["tasks"][0]["id"]
    reported(srv, task_id)
    own = standin.comments("acme", "app", 7)[0]
    echo = {"action": "created", "issue": {"number": 7, "title": "Crash"},
            "comment": {"id": own["id"], "body": own["body"]},
            "repository": {"full_name": "acme/app"}}  # fmt: skip

    by_marker = send(srv, "issue_comment", echo | {"sender": {"login": "someone"}}, "d-8")
    by_sender = send(
        srv,
        "issue_comment",
        echo | {"comment": {"body": "hi"}, "sender": {"login": "agented-bot"}},
        "d-9",
    )

    assert by_marker["tasks"] == [] and "own reports" in by_marker["verdicts"][0]["reason"]
    assert by_sender["tasks"] == [] and "own identity" in by_sender["verdicts"][0]["reason"]


def test_it_gives_a_run_a_repository_token_it_never_shows(live_server, app_standin, tmp_path):
    srv = start_hub(live_server, app_standin, tmp_path, app_mode=True)
    setup(srv, command=("sh", "-c", 'test -n "$GH_TOKEN" && echo "has a token: $GH_TOKEN"'),
          github_token=True)  # fmt: skip
    task_id = send(srv, "issues", issue_event(installation=1), "d-10")["tasks"][0]["id"]

    done = reported(srv, task_id)

    assert done["state"] == "succeeded"
    minted = [t for t in app_standin.issued.values() if t.repositories == ["app"]]
    assert minted, app_standin.issued  # narrowed to the task's repository
    assert "checks" not in minted[0].permissions  # it cannot turn the hub's check green
    token = minted[0].token
    lines = [line["text"] for line in logs(srv, task_id)]
    assert "has a token: [redacted]" in lines
    page = srv.request("GET", f"/tasks/{task_id}", None, {"X-API-Key": srv.keys["admin"]})[2]
    for seen in (
        json.dumps(done),
        json.dumps(lines),
        page.decode(),
        srv.log_tail(2000),
        json.dumps(app_standin.comments("acme", "app", 7)),
    ):
        assert token not in seen


def test_it_mints_installation_tokens_once_and_again_before_they_expire(app_standin):
    cfg = {"GITHUB_APP_ID": str(APP_ID), "GITHUB_APP_PRIVATE_KEY": app_standin.private_pem.decode(),
           "GITHUB_API_URL": app_standin.url, "GITHUB_TOKEN": ""}  # fmt: skip
    github.forget()
    try:
        now = time.time()
        first = github.installation_token(cfg, 1, now=now)
        assert github.installation_token(cfg, 1, now=now + 60) == first  # cached
        # Within RENEW_BEFORE_S of its expiry (an hour): a new one.
        renewed = github.installation_token(cfg, 1, now=now + 3600 - github.RENEW_BEFORE_S + 1)
        assert renewed != first
        assert app_standin.minted[1] == 2
    finally:
        github.forget()


def test_it_alerts_on_reports_given_up_and_counts_them_in_metrics(app):
    from app import db
    from app.ops import alerts, metrics

    def dead(conn):
        t = time.time()
        conn.execute(
            "INSERT INTO reports (channel, target, state, next_at, last_error, created_at,"
            " updated_at) VALUES ('slack', '{}', 'dead', ?, 'hooks.slack.com answered 404', ?, ?)",
            (t, t, t),
        )

    db.write(dead, app.config["DATABASE"])
    assert alerts.measure(app.config, time.time())["reports_dead"] == 1
    with app.app_context():
        text = metrics.render(app.config).decode()
    assert 'agented_reports{channel="slack",state="dead"} 1.0' in text


def test_it_defuses_what_an_injected_answer_could_do_in_a_comment():
    from app.reports import comment_body

    answer = "Done. cc @octocat <!-- agented:task:1 --> </details> evil"
    facts = {"task": {"state": "succeeded", "agent": "fixer", "finished_at": 2.0,
                      "attempts": 1, "max_attempts": 3, "last_error": None},
             "attempt": {"state": "succeeded"}, "usage": {"result_text": answer},
             "started_at": 1.0}  # fmt: skip
    body = comment_body({"PUBLIC_URL": "https://hub"}, 9, facts)
    assert "@octocat" not in body and "@\u200bocto" in body
    assert body.count("<!-- agented:task:") == 1  # only the hub's own marker
    assert body.count("</details>") == 1


def test_it_finds_the_comment_an_earlier_try_posted_instead_of_posting_again(standin):
    from app import reports

    cfg = {"GITHUB_TOKEN": TOKEN, "GITHUB_API_URL": standin.url, "GITHUB_APP_ID": "",
           "GITHUB_APP_PRIVATE_KEY": "", "PUBLIC_URL": "https://hub"}  # fmt: skip
    github.forget()
    # The first try's POST reached GitHub but its answer was lost.
    posted = github.call(cfg, "POST", "/repos/acme/app/issues/7/comments", None,
                         {"body": f"{reports.MARKER}5 --> queued"})  # fmt: skip
    row = {"task_id": 5, "remote_id": None, "attempts": 1, "created_at": time.time() - 5}

    remote = reports._send_comment(cfg, row, {"repo": "acme/app", "number": 7}, None)

    assert remote == str(posted["id"])
    assert len(standin.comments("acme", "app", 7)) == 1
    github.forget()
