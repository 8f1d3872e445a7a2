"""One JSON error shape on every /api route, proved by walking the URL map.

Generic on purpose: it walks whatever routes exist, so it keeps holding as
features add routes. Path parameters are filled with 1 (int) or "x".
"""

from __future__ import annotations

import re

import pytest

from app.auth import _is_public, requires

PARAM = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")


def concrete(rule: str) -> str:
    return PARAM.sub(lambda m: "1" if m.group(1) in ("int", "float") else "x", rule)


def api_paths(app, prefixes=("/api/",)) -> dict[str, set[str]]:
    """Map each concrete /api path to the methods its rules accept."""
    paths: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(prefixes):
            methods = set(rule.methods or ()) - {"HEAD", "OPTIONS"}
            paths.setdefault(concrete(rule.rule), set()).update(methods)
    return paths


def assert_shape(resp, status: int | None = None) -> dict:
    where = f"{resp.request.method} {resp.request.path} -> {resp.status}"
    if status is not None:
        assert resp.status_code == status, where
    assert resp.mimetype == "application/json", where
    body = resp.get_json()
    assert isinstance(body, dict) and set(body) == {"error"}, where
    error = body["error"]
    assert set(error) == {"code", "message", "details"}, where
    assert isinstance(error["code"], str) and error["code"], where
    assert isinstance(error["message"], str) and error["message"], where
    return error


@pytest.fixture
def walk_app(make_app):
    # Every walked route fails auth once; keep the failed-auth limit out of the way.
    return make_app(AUTH_FAIL_LIMIT="100000/minute")


def test_it_finds_api_routes_to_walk(walk_app):
    paths = api_paths(walk_app)
    assert "/api/v1/keys" in paths and "/api/v1/health" in paths


def test_it_answers_401_with_the_shape_on_every_api_route_without_a_key(walk_app):
    client = walk_app.test_client()
    for path, methods in api_paths(walk_app).items():
        for method in sorted(methods):
            resp = client.open(path, method=method, buffered=False)
            try:
                if _is_public(path):
                    # Allowlisted (webhooks verify a signature instead): any error keeps the shape.
                    assert resp.status_code != 500, f"{method} {path}"
                    if resp.status_code >= 400:
                        assert_shape(resp)
                    continue
                error = assert_shape(resp, 401)
                assert error["code"] == "unauthorized"
            finally:
                resp.close()


def test_it_answers_405_with_the_shape_on_every_api_route(walk_app, alice):
    client = walk_app.test_client()
    for path, methods in api_paths(walk_app, ("/api/", "/hooks/")).items():
        wrong = next(
            (m for m in ("PUT", "PATCH", "DELETE", "POST", "GET") if m not in methods), None
        )
        if wrong is None:
            continue
        resp = client.open(path, method=wrong, headers={"X-API-Key": alice})
        error = assert_shape(resp, 405)
        assert error["code"] == "method_not_allowed"
        allowed = {m.strip() for m in resp.headers["Allow"].split(",")}
        assert methods <= allowed, path


def test_it_declares_a_role_on_every_api_route(walk_app):
    missing = []
    for rule in walk_app.url_map.iter_rules():
        if not rule.rule.startswith(("/api/", "/admin/")):
            continue
        view = walk_app.view_functions[rule.endpoint]
        if getattr(view, "required_role", None) is None and not _is_public(concrete(rule.rule)):
            missing.append(f"{rule.rule} ({rule.endpoint})")
    assert not missing, "API routes without @requires(role): " + ", ".join(missing)


def assert_no_500(client, paths: dict[str, set[str]], **request) -> None:
    """Call every path with each of its methods: never a 500, and errors in the one shape."""
    for path, methods in paths.items():
        for method in sorted(methods):
            # Unbuffered, so a stream route answers without being read to its end.
            resp = client.open(path, method=method, buffered=False, **request)
            try:
                # 503 is allowed (say, a webhook with no secret configured); 500 never.
                assert resp.status_code != 500, f"{method} {path} -> {resp.status}"
                if resp.status_code >= 400:
                    assert_shape(resp)
            finally:
                resp.close()


def test_it_never_answers_500_or_html_to_an_admin_on_the_api(walk_app, alice):
    assert_no_500(walk_app.test_client(), api_paths(walk_app), headers={"X-API-Key": alice})


def test_it_answers_400_to_json_nested_deeper_than_the_parser_goes(walk_app, alice):
    # Python's JSON parser recurses per level: this raises RecursionError, not ValueError.
    deep = "[" * 100_000
    client = walk_app.test_client()
    headers = {"X-API-Key": alice, "Content-Type": "application/json"}
    writes = {p: m & {"POST", "PUT", "PATCH"} for p, m in api_paths(walk_app).items()}
    assert_no_500(client, writes, data=deep, headers=headers)
    resp = client.post("/api/v1/tasks", data=deep, headers=headers)
    assert assert_shape(resp, 400)["message"] == "the body is not valid JSON"


def test_it_answers_404_with_the_shape(client, alice):
    assert_shape(client.get("/api/v1/no-such-thing"), 401)
    error = assert_shape(client.get("/api/v1/no-such-thing", headers={"X-API-Key": alice}), 404)
    assert error["code"] == "not_found"


def test_it_answers_browser_paths_with_html(client):
    resp = client.get("/no-such-page")
    assert resp.status_code == 404
    assert resp.mimetype == "text/html"
    assert "404" in resp.get_data(as_text=True)


def test_it_hides_unexpected_errors_behind_the_shape(make_app, alice):
    app = make_app()

    def explode():
        raise RuntimeError("secret internals")

    def explode_page():
        raise RuntimeError("secret internals")

    app.add_url_rule("/api/v1/test-explode", "explode", requires("viewer")(explode))
    app.add_url_rule("/test-explode", "explode_page", explode_page)
    client = app.test_client()

    resp = client.get("/api/v1/test-explode", headers={"X-API-Key": alice})
    error = assert_shape(resp, 500)
    assert error["code"] == "internal_error"
    assert "secret internals" not in resp.get_data(as_text=True)
    assert "Traceback" not in resp.get_data(as_text=True)

    page = client.get("/test-explode")
    assert page.status_code == 500 and page.mimetype == "text/html"
    assert "secret internals" not in page.get_data(as_text=True)


def test_it_keeps_the_shape_for_409_from_a_view(make_app, alice):
    from app.errors import ApiError

    app = make_app()

    def conflict():
        raise ApiError(409, "already there", details={"id": 1})

    app.add_url_rule("/api/v1/test-conflict", "conflict", requires("viewer")(conflict))
    resp = app.test_client().get("/api/v1/test-conflict", headers={"X-API-Key": alice})
    assert assert_shape(resp, 409) == {
        "code": "conflict",
        "message": "already there",
        "details": {"id": 1},
    }


def test_it_describes_the_shape_in_openapi(client):
    spec = client.get("/openapi.json").get_json()
    error = spec["components"]["schemas"]["Error"]["properties"]["error"]
    assert set(error["required"]) == {"code", "message", "details"}
