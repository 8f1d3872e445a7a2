"""The GitHub stand-in answers real HTTP the way GitHub's REST API does (tests/fakes)."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from typing import Any

import jwt
import pytest

from tests.fakes.github_api import GitHubStandIn, make_app_key

APP_ID = 4242
PAT = "ghp_testtoken"
SHA = "a" * 40
OTHER_SHA = "b" * 40


@dataclass
class Answer:
    status: int
    headers: Message
    json: Any


def call(
    gh: GitHubStandIn,
    method: str,
    path: str,
    token: str | None = None,
    body: Any = None,
    scheme: str = "Bearer",
    timeout: float = 5,
) -> Answer:
    headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
    if token is not None:
        headers["Authorization"] = f"{scheme} {token}"
    data = None
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    req = urllib.request.Request(gh.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Answer(resp.status, resp.headers, json.loads(resp.read() or b"null"))
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, exc.headers, json.loads(exc.read() or b"null"))


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def app_key() -> tuple[bytes, bytes]:
    return make_app_key()  # 2048-bit RSA: make it once per module


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def gh(app_key, clock):
    with GitHubStandIn(app_id=APP_ID, app_public_key=app_key[1], clock=clock) as standin:
        yield standin


def app_jwt(private: bytes, now: float, iss: Any = str(APP_ID), iat: int = -60, exp: int = 540):
    """Sign a JWT as a GitHub App does: iat a minute back, exp at most ten minutes on."""
    claims = {"iat": int(now) + iat, "exp": int(now) + exp, "iss": iss}
    # Signed as raw JWS: PyJWT's encode refuses the numeric iss GitHub accepts.
    return jwt.PyJWS().encode(json.dumps(claims).encode(), private, algorithm="RS256")


def mint(gh: GitHubStandIn, private: bytes, now: float, **body: Any) -> str:
    answer = call(gh, "POST", "/app/installations/1/access_tokens", app_jwt(private, now), body)
    assert answer.status == 201, answer.json
    return answer.json["token"]


def test_it_names_the_user_of_a_personal_token(gh):
    for scheme in ("Bearer", "token"):
        answer = call(gh, "GET", "/user", PAT, scheme=scheme)
        assert answer.status == 200
        assert answer.json == {"login": "agented-bot", "id": 1, "type": "User"}
    assert answer.headers["x-ratelimit-limit"] == "5000"
    assert answer.headers["x-ratelimit-remaining"] == "4998"
    assert answer.headers["x-ratelimit-used"] == "2"
    assert int(answer.headers["x-ratelimit-reset"]) == int(gh.clock()) + 3600
    [first, second] = gh.calls("GET", "/user")
    assert first.headers["authorization"] == f"Bearer {PAT}" and first.status == 200
    assert second.headers["authorization"] == f"token {PAT}"


def test_it_refuses_a_bad_token(gh):
    answer = call(gh, "GET", "/user", "ghp_wrong")
    assert answer.status == 401
    assert answer.json["message"] == "Bad credentials"
    answer = call(gh, "POST", "/repos/alice/agented/issues/1/comments", body={"body": "hi"})
    assert answer.status == 401
    assert answer.json["message"] == "Requires authentication"
    assert gh.comments("alice", "agented", 1) == []


def test_it_mints_an_installation_token_from_the_app_jwt_and_creates_a_check_run(gh, app_key):
    private, _ = app_key
    answer = call(gh, "GET", "/app", app_jwt(private, gh.clock()))
    assert answer.status == 200
    assert answer.json["id"] == APP_ID and answer.json["slug"] == "agented-test"

    answer = call(gh, "POST", "/app/installations/1/access_tokens", app_jwt(private, gh.clock()))
    assert answer.status == 201
    token = answer.json["token"]
    assert token.startswith("ghs_")
    expected = datetime.fromtimestamp(int(gh.clock()) + 3600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert answer.json["expires_at"] == expected
    assert answer.json["repository_selection"] == "all"
    assert answer.json["permissions"]["checks"] == "write"
    assert gh.minted[1] == 1

    run = call(
        gh,
        "POST",
        "/repos/alice/agented/check-runs",
        token,
        {"name": "agented", "head_sha": SHA, "status": "in_progress", "external_id": "task-7"},
    )
    assert run.status == 201
    assert run.json["status"] == "in_progress" and run.json["conclusion"] is None
    assert run.json["head_sha"] == SHA and run.json["external_id"] == "task-7"
    done = call(
        gh,
        "PATCH",
        f"/repos/alice/agented/check-runs/{run.json['id']}",
        token,
        {"conclusion": "success", "output": {"title": "Done", "summary": "All good"}},
    )
    assert done.status == 200
    assert done.json["status"] == "completed" and done.json["completed_at"]
    [stored] = gh.check_runs("alice", "agented")
    assert stored["conclusion"] == "success" and stored["output"]["summary"] == "All good"

    comment = call(gh, "POST", "/repos/alice/agented/issues/3/comments", token, {"body": "hi"})
    assert comment.json["user"]["login"] == "agented-test[bot]"


def test_it_refuses_jwts_outside_githubs_rules(gh, app_key):
    private, _ = app_key
    now = gh.clock()
    cases = [
        (app_jwt(private, now, iat=-700, exp=-90), "'Expiration time' claim ('exp') must be"),
        (app_jwt(private, now, iat=0, exp=660), "is too far in the future"),
        (app_jwt(private, now, iat=120, exp=500), "'Issued at' claim ('iat') must be"),
        (app_jwt(private, now, iss="999"), "A JSON web token could not be decoded"),
        (app_jwt(make_app_key()[0], now), "A JSON web token could not be decoded"),
        (PAT, "A JSON web token could not be decoded"),
    ]
    for credential, message in cases:
        answer = call(gh, "GET", "/app", credential)
        assert answer.status == 401
        assert message in answer.json["message"]
    # A minute of clock skew either way is forgiven, and iss may be a number.
    assert call(gh, "GET", "/app", app_jwt(private, now, iat=50, exp=600)).status == 200
    assert call(gh, "GET", "/app", app_jwt(private, now, iss=APP_ID)).status == 200
    assert gh.minted[1] == 0


def test_it_refuses_a_check_run_from_a_personal_token(gh):
    body = {"name": "agented", "head_sha": SHA}
    answer = call(gh, "POST", "/repos/alice/agented/check-runs", PAT, body)
    assert answer.status == 403
    assert answer.json["message"] == "You must authenticate via a GitHub App."
    assert gh.check_runs("alice", "agented") == []


def test_it_creates_and_edits_a_comment(gh):
    path = "/repos/alice/agented/issues/5/comments"
    created = call(gh, "POST", path, PAT, {"body": "Working on it"})
    assert created.status == 201
    cid = created.json["id"]
    assert created.json["user"]["login"] == "agented-bot"
    assert created.json["html_url"].endswith(f"/alice/agented/issues/5#issuecomment-{cid}")
    assert created.json["created_at"].endswith("Z")

    gh.clock.now += 30
    edited = call(gh, "PATCH", f"/repos/alice/agented/issues/comments/{cid}", PAT, {"body": "Done"})
    assert edited.status == 200
    assert edited.json["body"] == "Done"
    assert edited.json["updated_at"] > edited.json["created_at"]
    assert [c["body"] for c in call(gh, "GET", path, PAT).json] == ["Done"]
    assert [c["body"] for c in gh.comments("Alice", "Agented", 5)] == ["Done"]

    for repo, number in (("other", cid), ("agented", 999)):
        wrong = f"/repos/alice/{repo}/issues/comments/{number}"
        assert call(gh, "PATCH", wrong, PAT, {"body": "x"}).status == 404
    assert call(gh, "POST", path, PAT, {"text": "no body"}).status == 422
    assert call(gh, "POST", path, PAT, {"body": "x" * 65537}).json["message"] == "Validation Failed"


def test_it_pages_comments_with_a_link_header(gh):
    path = "/repos/alice/agented/issues/5/comments"
    for n in range(3):
        call(gh, "POST", path, PAT, {"body": f"c{n}"})
    first = call(gh, "GET", path + "?per_page=2", PAT)
    assert [c["body"] for c in first.json] == ["c0", "c1"]
    assert 'page=2>; rel="next"' in first.headers["link"]
    second = call(gh, "GET", path + "?per_page=2&page=2", PAT)
    assert [c["body"] for c in second.json] == ["c2"]
    assert 'rel="next"' not in second.headers["link"]


def test_it_answers_502_twice_then_succeeds(gh):
    gh.fail_next("POST", "/repos/*/issues/*/comments", 502, times=2)
    path = "/repos/alice/agented/issues/9/comments"
    statuses = [call(gh, "POST", path, PAT, {"body": "hello"}).status for _ in range(3)]
    assert statuses == [502, 502, 201]
    assert [c["body"] for c in gh.comments("alice", "agented", 9)] == ["hello"]
    assert [r.status for r in gh.calls("POST", path)] == [502, 502, 201]
    assert all(r.body == {"body": "hello"} for r in gh.calls("POST", path))


def test_it_says_when_a_rate_limit_resets(gh):
    reset = gh.rate_limit_next("POST", "/repos/*/statuses/*", reset_after=120)
    body = {"state": "pending", "context": "agented"}
    answer = call(gh, "POST", f"/repos/alice/agented/statuses/{SHA}", PAT, body)
    assert answer.status == 403
    assert answer.json["message"].startswith("API rate limit exceeded")
    assert answer.headers["x-ratelimit-remaining"] == "0"
    assert answer.headers["x-ratelimit-reset"] == str(reset) == str(int(gh.clock()) + 120)

    gh.fail_next("POST", "/repos/*/statuses/*", 429, headers={"retry-after": "30"})
    answer = call(gh, "POST", f"/repos/alice/agented/statuses/{SHA}", PAT, body)
    assert answer.status == 429 and answer.headers["retry-after"] == "30"
    assert gh.statuses("alice", "agented", SHA) == []

    assert call(gh, "POST", f"/repos/alice/agented/statuses/{SHA}", PAT, body).status == 201
    [status] = gh.statuses("alice", "agented", SHA)
    assert status["state"] == "pending" and status["context"] == "agented"


def test_it_runs_out_of_requests_like_github(app_key, clock):
    with GitHubStandIn(rate_limit=2, clock=clock) as gh:
        assert [call(gh, "GET", "/user", PAT).status for _ in range(3)] == [200, 200, 403]
        answer = call(gh, "GET", "/user", PAT)
        assert answer.json["message"] == "API rate limit exceeded for user ID 1."
        assert answer.headers["x-ratelimit-remaining"] == "0"
        clock.now = int(answer.headers["x-ratelimit-reset"])
        assert call(gh, "GET", "/user", PAT).status == 200


def test_it_still_makes_a_comment_whose_answer_came_too_late(gh):
    gh.delay_next("POST", "/repos/*/comments", 1.0)
    path = "/repos/alice/agented/issues/4/comments"
    with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
        call(gh, "POST", path, PAT, {"body": "late"}, timeout=0.2)
    deadline = time.monotonic() + 5
    while not gh.comments("alice", "agented", 4) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [c["body"] for c in gh.comments("alice", "agented", 4)] == ["late"]


def test_it_expires_installation_tokens(gh, app_key):
    token = mint(gh, app_key[0], gh.clock())
    path = "/repos/alice/agented/issues/1/comments"
    assert call(gh, "POST", path, token, {"body": "ok"}).status == 201
    gh.clock.now += 3600
    answer = call(gh, "POST", path, token, {"body": "too late"})
    assert answer.status == 401 and answer.json["message"] == "Bad credentials"
    assert mint(gh, app_key[0], gh.clock()) != token
    assert gh.minted[1] == 2


def test_it_limits_a_token_to_its_repositories_and_permissions(gh, app_key):
    private = app_key[0]
    token = mint(gh, private, gh.clock(), repositories=["agented"], permissions={"issues": "write"})
    comment = {"body": "hi"}
    assert call(gh, "POST", "/repos/alice/agented/issues/1/comments", token, comment).status == 201
    assert call(gh, "POST", "/repos/alice/other/issues/1/comments", token, comment).status == 404
    run = {"name": "agented", "head_sha": SHA}
    answer = call(gh, "POST", "/repos/alice/agented/check-runs", token, run)
    assert answer.status == 403
    assert answer.json["message"] == "Resource not accessible by integration"
    refused = call(
        gh,
        "POST",
        "/app/installations/1/access_tokens",
        app_jwt(private, gh.clock()),
        {"permissions": {"administration": "write"}},
    )
    assert refused.status == 422
    unknown = call(gh, "POST", "/app/installations/77/access_tokens", app_jwt(private, gh.clock()))
    assert unknown.status == 404
    assert gh.minted == {1: 1}


def test_it_gives_a_pull_requests_head(gh):
    gh.set_pr("alice", "agented", 12, OTHER_SHA, ref="fix-login")
    answer = call(gh, "GET", "/repos/alice/agented/pulls/12", PAT)
    assert answer.status == 200
    assert answer.json["head"]["sha"] == OTHER_SHA and answer.json["head"]["ref"] == "fix-login"
    assert answer.json["state"] == "open" and answer.json["number"] == 12
    assert call(gh, "GET", "/repos/alice/agented/pulls/13", PAT).status == 404


def test_it_answers_unknown_routes_with_githubs_404(gh):
    for method, path in (("GET", "/nope"), ("DELETE", "/repos/alice/agented/check-runs/1")):
        answer = call(gh, method, path, PAT)
        assert answer.status == 404
        assert answer.json["message"] == "Not Found"
        assert answer.headers["content-type"].startswith("application/json")


def test_it_refuses_check_runs_and_statuses_github_would_refuse(gh, app_key):
    token = mint(gh, app_key[0], gh.clock())
    runs = "/repos/alice/agented/check-runs"
    for body, message in (
        ({"head_sha": SHA}, '"name" wasn\'t supplied'),
        ({"name": "agented", "head_sha": "main"}, "No commit found for SHA: main"),
        ({"name": "agented", "head_sha": SHA, "status": "done"}, "'properties/status'"),
        ({"name": "agented", "head_sha": SHA, "status": "completed"}, "Validation Failed"),
    ):
        answer = call(gh, "POST", runs, token, body)
        assert answer.status == 422
        assert message in answer.json["message"]
    assert gh.check_runs("alice", "agented") == []

    statuses = f"/repos/alice/agented/statuses/{SHA}"
    assert call(gh, "POST", statuses, PAT, {"state": "done"}).status == 422
    too_long = {"state": "success", "description": "x" * 141}
    assert call(gh, "POST", statuses, PAT, too_long).status == 422
    answer = call(gh, "POST", statuses, PAT, {"state": "success", "target_url": "http://hub/t/1"})
    assert answer.status == 201
    assert answer.json["context"] == "default" and answer.json["creator"]["login"] == "agented-bot"


def test_it_stops_promptly_while_an_answer_is_held_back(clock):
    gh = GitHubStandIn(clock=clock).start()
    gh.delay_next("GET", "/user", 60)
    with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
        call(gh, "GET", "/user", PAT, timeout=0.2)
    started = time.monotonic()
    gh.stop()
    assert time.monotonic() - started < 2
