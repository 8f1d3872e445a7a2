"""Dashboard pages with the Flask client: sign-in, roles, CSRF, empty states, no 500s."""

from __future__ import annotations

import re

import pytest

from app import db
from tests.dashboard_helpers import add_agent, add_delivery, add_task, one, post

PAGES = ["/", "/tasks", "/triggers", "/agents", "/deliveries", "/dead", "/keys", "/health"]


@pytest.fixture
def viewer(client, vera, signin):
    signin(client, vera)
    return client


@pytest.mark.parametrize("path", PAGES[1:] + ["/triggers/new", "/tasks/1", "/deliveries/1"])
def test_it_sends_strangers_to_sign_in(client, path):
    resp = client.get(path)
    assert resp.status_code == 302
    assert resp.headers["Location"].startswith("/signin")


def test_it_sends_a_stranger_from_the_overview_to_sign_in(client):
    resp = client.get("/")
    assert resp.status_code == 302 and resp.headers["Location"] == "/signin"


@pytest.mark.parametrize("path", PAGES)
def test_it_renders_every_page_empty_with_a_next_step(viewer, path):
    resp = viewer.get(path)
    assert resp.status_code == 200, resp.data
    html = resp.get_data(as_text=True)
    assert 'aria-current="page"' in html
    assert "<script>" not in html and " style=" not in html  # CSP: nothing inline


@pytest.mark.parametrize(
    ("path", "hint"),
    [
        ("/tasks", "No tasks yet"),
        ("/triggers", "No triggers yet"),
        ("/agents", "No agents yet"),
        ("/deliveries", "No deliveries yet"),
        ("/dead", "No dead letters"),
    ],
)
def test_it_tells_a_newcomer_what_to_do_on_an_empty_list(viewer, path, hint):
    assert hint in viewer.get(path).get_data(as_text=True)


def test_it_loads_htmx_and_the_sse_extension_from_pinned_static_files(viewer, app):
    html = viewer.get("/tasks").get_data(as_text=True)
    scripts = re.findall(r'<script src="([^"]+)"', html)
    assert scripts == [
        "/static/vendor/htmx-2.0.11.min.js",
        "/static/vendor/htmx-ext-sse-2.2.4.min.js",
        "/static/app.js",
    ]
    for src in scripts:
        assert viewer.get(src).status_code == 200
    versions = viewer.get("/static/vendor/VERSIONS").get_data(as_text=True)
    assert "htmx.org      2.0.11" in versions


def test_it_puts_the_csrf_token_in_htmx_headers_on_the_body(client, dave, signin):
    token = signin(client, dave)
    html = client.get("/tasks").get_data(as_text=True)
    assert f'hx-headers=\'{{"X-CSRF-Token": "{token}"}}\'' in html


def test_it_hides_action_buttons_from_a_viewer(app, viewer):
    add_agent(app)
    task_id = add_task(app, state="running")
    dead_id = add_task(app, state="dead")
    html = viewer.get(f"/tasks/{task_id}").get_data(as_text=True)
    assert "/cancel" not in html and "/replay" not in html
    html = viewer.get("/dead").get_data(as_text=True)
    assert f"/dead/{dead_id}/retry" not in html and "Purge" not in html
    assert "New trigger" not in viewer.get("/triggers").get_data(as_text=True)
    assert "Create key" not in viewer.get("/keys").get_data(as_text=True)


@pytest.mark.parametrize(
    "path",
    ["/tasks/1/cancel", "/tasks/1/retry", "/tasks/1/replay", "/dead/1/retry", "/dead/bulk",
     "/dead/preview", "/triggers/new", "/keys", "/keys/1/revoke", "/deliveries/1/replay",
     "/agents/cli"],
)  # fmt: skip
def test_it_refuses_a_viewer_with_403_even_with_a_valid_csrf_token(app, client, vera, signin, path):
    add_agent(app)
    add_task(app, state="running")
    token = signin(client, vera)
    resp = post(client, path, token, action="retry", expected="1", name="x", role="viewer")
    assert resp.status_code == 403
    assert "needs the" in resp.get_data(as_text=True)


def test_it_refuses_a_post_without_the_csrf_token(app, client, alice, signin):
    add_agent(app)
    task_id = add_task(app, state="queued")
    signin(client, alice)
    resp = client.post(f"/tasks/{task_id}/cancel")
    assert resp.status_code == 403
    assert "CSRF" in resp.get_data(as_text=True)
    resp = client.post(f"/tasks/{task_id}/cancel", headers={"X-CSRF-Token": "wrong"})
    assert resp.status_code == 403


def test_it_answers_an_htmx_refusal_with_plain_text_for_the_toast(client, vera, signin):
    token = signin(client, vera)
    resp = client.post("/keys", headers={"HX-Request": "true", "X-CSRF-Token": token})
    assert resp.status_code == 403
    assert resp.mimetype == "text/plain"


def test_it_shows_a_404_page_for_a_missing_task(viewer):
    resp = viewer.get("/tasks/999")
    assert resp.status_code == 404
    assert "task not found" in resp.get_data(as_text=True)
    assert resp.mimetype == "text/html"


def test_it_fills_the_overview(app, viewer):
    add_agent(app)
    add_task(app, state="running", prompt="Busy now")
    add_task(app, state="dead", attempts=[{"state": "failed", "exit_code": 3,
                                           "error": "exited with status 3"}])  # fmt: skip
    add_task(app, state="succeeded", attempts=[{"state": "succeeded", "exit_code": 0}])
    html = viewer.get("/").get_data(as_text=True)
    assert "Busy now" in html
    assert "exited with status 3" in html
    assert '<svg class="chart"' in html and 'class="bar-succeeded"' in html
    stats = viewer.get("/overview/stats").get_data(as_text=True)
    assert 'hx-trigger="every 10s"' in stats


def test_it_shows_open_alerts_on_the_overview(app, viewer):
    from app import db

    db.write(
        lambda conn: conn.execute(
            "INSERT INTO alerts (rule, state, severity, value, threshold, message, fired_at,"
            " last_seen_at) VALUES ('dead_letters', 'firing', 'critical', 5, 1,"
            " 'five dead letters in 15 min', 1, 1)"
        ),
        app.config["DATABASE"],
    )
    assert "five dead letters in 15 min" in viewer.get("/").get_data(as_text=True)


def test_it_lists_agents_with_concurrency_in_use(app, viewer):
    add_agent(app, "coder", capabilities=["python", "git"], concurrency=3)
    add_task(app, agent="coder", state="running")
    html = viewer.get("/agents").get_data(as_text=True)
    assert "coder" in html and ">python<" in html
    assert ">1</a> / 3" in html


def test_it_lists_deliveries_and_pages_them(app, viewer):
    for i in range(55):
        add_delivery(app, {"n": i}, trigger_slug="hello", event="push")
    html = viewer.get("/deliveries").get_data(as_text=True)
    assert html.count('href="/deliveries/') == 50
    more = re.search(r'hx-get="(/deliveries\?[^"]*cursor=[^"]+)"', html).group(1)
    rows = viewer.get(more.replace("&amp;", "&"), headers={"HX-Request": "true"})
    assert rows.get_data(as_text=True).count('href="/deliveries/') == 5
    assert "<html" not in rows.get_data(as_text=True)


def test_it_shows_the_health_page_with_checks_and_storage_for_an_admin(client, alice, signin):
    signin(client, alice)
    html = client.get("/health").get_data(as_text=True)
    postgres = db.is_postgres(client.application.config["DATABASE"])
    first_migration = "0001_schema.sql" if postgres else "0006_search.sql"
    assert "database" in html and first_migration in html
    assert "Storage" in html and "Instances" in html


def test_it_never_answers_500_on_a_bad_cursor_or_filter(viewer):
    assert viewer.get("/tasks?cursor=!!!").status_code == 400
    assert viewer.get("/tasks?since=yesterday").status_code == 400
    assert viewer.get("/deliveries?cursor=zzz").status_code == 400
    assert viewer.get("/dead?cursor=@").status_code == 400


@pytest.mark.parametrize(("path", "label"), [("/alerts", "Alerts"), ("/audit", "Audit")])
def test_it_lists_the_ops_pages_in_the_nav(viewer, path, label):
    html = viewer.get(path).get_data(as_text=True)
    assert f'<a href="{path}" aria-current="page">{label}</a>' in html
    assert html.count('aria-current="page"') == 1


def test_it_lets_other_pages_import_the_macros_without_context(app, client, bob, signin):
    from app import db

    db.write(
        lambda conn: conn.execute(
            "INSERT INTO alerts (rule, state, severity, value, threshold, message, fired_at,"
            " last_seen_at) VALUES ('dead_letters', 'firing', 'warning', 5, 1, 'x', 1, 1)"
        ),
        app.config["DATABASE"],
    )
    signin(client, bob)
    html = client.get("/alerts").get_data(as_text=True)
    assert 'name="csrf_token" value="' in html


def test_it_counts_signing_in_and_using_the_dashboard_as_using_the_key(app, client, dave, signin):
    signin(client, dave)
    assert one(app, "SELECT last_used_at FROM api_keys WHERE name = 'dave'")[0] is not None
    html = client.get("/keys").get_data(as_text=True)
    row = re.search(r"<tr>\s*<td>dave.*?</tr>", html, re.S).group(0)
    assert "just now" in row and "—" not in row
