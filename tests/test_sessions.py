"""Dashboard sessions end on the server: sign-out or a revoked key kills every cookie copy."""

from __future__ import annotations

from app import db

COOKIE = "agented_session"
# One page, one dashboard stream, one API list and one API stream, all reached
# with the session cookie alone.
PAGES = ("/tasks", "/tasks/live")
API = ("/api/v1/tasks", "/api/v1/tasks/1/stream")


def saved_cookie(client) -> str:
    return client.get_cookie(COOKIE).value


def replay(client, cookie: str) -> None:
    client.set_cookie(COOKIE, cookie)


def assert_signed_out(client) -> None:
    for path in PAGES:
        resp = client.get(path, buffered=False)
        assert resp.status_code == 302, (path, resp.status_code)
        assert resp.headers["Location"].startswith("/signin")
    for path in API:
        resp = client.get(path, buffered=False)
        assert resp.status_code == 401, (path, resp.status_code)
        assert resp.get_json()["error"]["code"] == "unauthorized"


def assert_signed_in(client) -> None:
    assert client.get("/tasks").status_code == 200
    assert client.get("/api/v1/tasks").status_code == 200
    resp = client.get("/tasks/live", buffered=False)
    assert resp.status_code == 200 and resp.mimetype == "text/event-stream"
    resp.close()


def test_it_ends_the_session_on_sign_out_so_a_saved_cookie_stops_working(client, vera, signin):
    csrf = signin(client, vera)
    assert_signed_in(client)
    cookie = saved_cookie(client)
    assert client.post("/signout", data={"csrf_token": csrf}).status_code == 302
    replay(client, cookie)  # what a stolen or saved copy of the cookie would send
    assert_signed_out(client)


def test_it_ends_the_sessions_of_a_revoked_key(app, client, alice, vera, signin):
    signin(client, vera)
    cookie = saved_cookie(client)
    admin = app.test_client()
    keys = admin.get("/api/v1/keys", headers={"X-API-Key": alice}).get_json()["keys"]
    vera_id = next(k["id"] for k in keys if k["name"] == "vera")
    assert admin.delete(f"/api/v1/keys/{vera_id}", headers={"X-API-Key": alice}).status_code == 200
    replay(client, cookie)
    assert_signed_out(client)


def test_it_keeps_the_other_sessions_of_a_key_when_one_signs_out(app, vera, signin):
    laptop, phone = app.test_client(), app.test_client()
    csrf = signin(laptop, vera)
    signin(phone, vera)
    assert laptop.post("/signout", data={"csrf_token": csrf}).status_code == 302
    assert_signed_in(phone)


def test_it_refuses_a_stream_token_minted_by_a_session_after_sign_out(client, vera, signin):
    csrf = signin(client, vera)
    resp = client.post("/api/v1/stream-tokens", headers={"X-CSRF-Token": csrf})
    assert resp.status_code == 201, resp.data
    token = resp.get_json()["token"]
    stranger = client.application.test_client()  # no cookie: the token alone
    assert stranger.get(f"/api/v1/tasks/1/stream?token={token}").status_code == 404  # let in
    assert client.post("/signout", data={"csrf_token": csrf}).status_code == 302
    resp = stranger.get(f"/api/v1/tasks/1/stream?token={token}")
    assert resp.status_code == 401
    assert resp.get_json()["error"]["code"] == "unauthorized"


def test_it_keeps_no_session_id_in_the_database(app, client, vera, signin):
    signin(client, vera)
    with client.session_transaction() as sess:
        sid = sess["sid"]
    conn = db.connect(app.config["DATABASE"])
    try:
        rows = conn.execute("SELECT * FROM sessions").fetchall()
    finally:
        conn.close()
    assert len(rows) == 1
    assert sid not in [str(v) for v in rows[0]]  # only its hash: a database copy signs no one in
