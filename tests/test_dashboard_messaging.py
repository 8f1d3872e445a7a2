"""Dashboard pages for messaging: agents' heartbeats and mailboxes, conversations, dead letters."""

from __future__ import annotations

import re
import time

import pytest

from app import db
from app.messages.mailboxes import sweep_now
from tests.dashboard_helpers import add_agent, one, post
from tests.messaging_helpers import ack, lease, register, send


@pytest.fixture
def talk(app, alice):
    """alpha asks beta twice in one conversation; beta answers the first; both are external."""
    api = app.test_client()
    keys = {name: register(api, alice, name) for name in ("alpha", "beta", "gamma")}
    send(
        api,
        keys["alpha"],
        performative="request",
        receiver="beta",
        conversation_id="conv-1",
        reply_with="q1",
        content={"task": "sum", "args": [1, 2]},
    )
    send(
        api,
        keys["alpha"],
        performative="query-if",
        receiver="beta",
        conversation_id="conv-1",
        content={"done": True},
        ttl=10,
    )
    [first] = lease(api, keys["beta"], "beta", limit=1)
    ack(api, keys["beta"], "beta", [first["id"]])
    send(
        api,
        keys["beta"],
        performative="inform",
        receiver="alpha",
        conversation_id="conv-1",
        in_reply_to="q1",
        content={"result": 3},
    )
    send(
        api,
        keys["gamma"],
        performative="cfp",
        receiver="alpha",
        conversation_id="conv-2",
        content="who can build?",
    )
    return {"api": api, "keys": keys}


@pytest.fixture
def dead(app, alice):
    """Three message dead letters: two to beta (inform, request), one to gamma; all TTL-expired."""
    api = app.test_client()
    keys = {name: register(api, alice, name) for name in ("alpha", "beta", "gamma")}
    send(api, keys["alpha"], performative="inform", receiver="beta", content="beta-one", ttl=10)
    send(api, keys["alpha"], performative="request", receiver="beta", content="beta-two", ttl=10)
    send(api, keys["alpha"], performative="inform", receiver="gamma", content="gamma-one", ttl=10)
    sweep_now(app, time.time() + 20)
    return keys


def dead_states(app) -> dict[str, tuple[str, str]]:
    """Each message's content as (state, receiver), straight from the database."""
    conn = db.connect(app.config["DATABASE"])
    try:
        rows = conn.execute("SELECT content, state, receiver FROM messages").fetchall()
    finally:
        conn.close()
    return {r["content"].strip('"'): (r["state"], r["receiver"]) for r in rows}


# --- agents --------------------------------------------------------------------------------


def test_it_shows_each_agents_state_heartbeat_backend_and_mailbox(app, client, alice, signin):
    api = app.test_client()
    keys = {name: register(api, alice, name) for name in ("alpha", "beta")}
    add_agent(app, "local-echo")
    api.post("/api/v1/agents/beta/heartbeat", headers={"X-API-Key": keys["beta"]})
    for n in range(3):
        send(api, keys["alpha"], performative="inform", receiver="beta", content=n)
    lease(api, keys["beta"], "beta", limit=1)
    signin(client, alice)
    html = client.get("/agents").get_data(as_text=True)
    beta = row_of(html, "agent-beta")
    assert ">running<" in beta and ">external<" in beta
    assert "just now" in beta and "late" not in beta
    assert "2 queued · 1 leased" in beta
    local = row_of(html, "agent-local-echo")
    assert ">local<" in local and "shell" in local and "not needed" in local
    assert "empty" in local
    assert "Agent CLIs on this machine" in html  # the CLI health panel stays


def test_it_highlights_a_stale_heartbeat(app, client, alice, signin):
    api = app.test_client()
    register(api, alice, "late")
    register(api, alice, "silent")
    offline = app.config["AGENT_OFFLINE_S"]
    db.write(
        lambda conn: conn.execute(
            "UPDATE agents SET heartbeat_at = ? WHERE name = 'late'", (time.time() - offline / 2,)
        ),
        app.config["DATABASE"],
    )
    db.write(
        lambda conn: conn.execute(
            "UPDATE agents SET heartbeat_at = ? WHERE name = 'silent'", (time.time() - 600,)
        ),
        app.config["DATABASE"],
    )
    signin(client, alice)
    html = client.get("/agents").get_data(as_text=True)
    late = row_of(html, "agent-late")
    assert 'class="beat wait"' in late and "45 s ago" in late and ">late<" in late
    silent = row_of(html, "agent-silent")
    assert 'class="beat bad"' in silent and "10 min ago" in silent and ">stale<" in silent


def test_it_links_an_agents_dead_letters_from_its_mailbox(app, client, dead, vera, signin):
    signin(client, vera)
    beta = row_of(client.get("/agents").get_data(as_text=True), "agent-beta")
    assert 'href="/messages/dead?receiver=beta">2 dead</a>' in beta


def row_of(html: str, row_id: str) -> str:
    match = re.search(rf'<tr id="{row_id}">(.*?)</tr>', html, re.S)
    assert match, row_id
    return match.group(1)


# --- conversations ---------------------------------------------------------------------------


def test_it_lists_recent_conversations_with_participants_and_last_performative(
    client, talk, vera, signin
):
    signin(client, vera)
    html = client.get("/conversations").get_data(as_text=True)
    assert 'aria-current="page">Messages</a>' in html
    rows = re.findall(r'<tr>\s*<td class="subject"><a href="/conversations/([^"]+)"', html)
    assert rows == ["conv-2", "conv-1"]  # most recently active first
    conv1 = html[html.index('href="/conversations/conv-1"') :]
    assert '<span class="tag">alpha</span><span class="tag">beta</span>' in conv1
    assert '<td class="num">3' in conv1
    assert '<span class="perf">inform</span>' in conv1 and "from beta" in conv1


def test_it_lists_conversations_by_what_their_first_message_is_about(client, talk, vera, signin):
    signin(client, vera)
    html = client.get("/conversations").get_data(as_text=True)
    # The first message's "task" for conv-1, the text itself for conv-2; the id stays, small.
    assert '<a href="/conversations/conv-1">sum</a>' in html
    assert '<a href="/conversations/conv-2">who can build?</a>' in html
    assert '<span class="perf">request</span> · <code class="wrap-id" title="conv-1">' in html


def test_it_sends_messages_to_the_conversations_page(client, vera, signin):
    signin(client, vera)
    resp = client.get("/messages?agent=beta")
    assert resp.status_code == 302 and resp.headers["Location"] == "/conversations?agent=beta"


def test_it_names_task_and_message_dead_letters_apart(client, vera, signin):
    signin(client, vera)
    html = client.get("/messages/dead").get_data(as_text=True)
    assert '<a href="/dead">Dead tasks</a>' in html  # the nav
    assert ">Message dead letters" in html and ">Dead letters<" not in html
    page = client.get("/dead").get_data(as_text=True)
    assert "<h1>Dead tasks</h1>" in page and 'aria-current="page">Dead tasks</a>' in page


def test_it_links_a_reply_that_names_the_message_id_it_answers(app, client, talk, vera, signin):
    asked = send(talk["api"], talk["keys"]["gamma"], performative="query-ref", receiver="beta",
                 conversation_id="conv-3", content={"question": "status?"})  # fmt: skip
    send(talk["api"], talk["keys"]["beta"], performative="inform", receiver="gamma",
         conversation_id="conv-3", in_reply_to=asked["message_id"], content="green")  # fmt: skip
    signin(client, vera)
    html = client.get("/conversations/conv-3").get_data(as_text=True)
    question = re.search(r'<li id="(m-\d+)">', html).group(1)
    assert f'<a href="#{question}"><code>{asked["message_id"]}</code></a>' in html
    assert "not in this conversation" not in html
    # A reply to something never sent in the conversation still says so.
    send(talk["api"], talk["keys"]["beta"], performative="inform", receiver="gamma",
         conversation_id="conv-3", in_reply_to="elsewhere", content="?")  # fmt: skip
    html = client.get("/conversations/conv-3").get_data(as_text=True)
    assert '<code>elsewhere</code> <span class="muted">(not in this conversation)</span>' in html


def test_it_links_a_reply_to_a_question_on_an_earlier_page(
    app, client, talk, vera, signin, monkeypatch
):
    from app.dashboard import messaging

    monkeypatch.setattr(messaging, "THREAD_PAGE", 1)
    signin(client, vera)
    first = client.get("/conversations/conv-1").get_data(as_text=True)
    cursor = re.search(r'\?cursor=([^"]+)">Show later messages', first).group(1)
    second = client.get(f"/conversations/conv-1?cursor={cursor}").get_data(as_text=True)
    later = client.get(
        "/conversations/conv-1?cursor="
        + re.search(r'\?cursor=([^"]+)">Show later messages', second).group(1)
    ).get_data(as_text=True)
    assert "(earlier in this conversation)" in later  # beta's answer to q1, two pages on
    assert "not in this conversation" not in later


def test_it_refreshes_the_first_page_of_conversations_when_a_message_arrives(
    client, talk, vera, signin
):
    signin(client, vera)
    html = client.get("/conversations?agent=gamma").get_data(as_text=True)
    url = re.search(r'hx-get="([^"]+)" hx-trigger="every 3s"', html).group(1)
    url = url.replace("&amp;", "&")
    assert url.startswith("/conversations?agent=gamma&v=")
    htmx = {"HX-Request": "true"}
    assert client.get(url, headers=htmx).status_code == 204
    send(talk["api"], talk["keys"]["alpha"], performative="inform", receiver="gamma",
         conversation_id="conv-9", content="new")  # fmt: skip
    resp = client.get(url, headers=htmx)
    fragment = resp.get_data(as_text=True)
    assert resp.status_code == 200 and fragment.startswith('<div id="conversations-live"')
    assert 'href="/conversations/conv-9"' in fragment and "<html" not in fragment
    # Older pages stay as they are.
    assert "hx-trigger" not in client.get("/conversations?cursor=" + cursor_after(1)).get_data(
        as_text=True
    )


def test_it_refreshes_the_conversations_when_a_dead_letter_is_replayed(
    app, client, dead, bob, signin
):
    token = signin(client, bob)
    html = client.get("/conversations").get_data(as_text=True)
    assert "dead</span>" in html
    url = re.search(r'hx-get="([^"]+)" hx-trigger', html).group(1).replace("&amp;", "&")
    htmx = {"HX-Request": "true"}
    assert client.get(url, headers=htmx).status_code == 204
    oldest = one(app, "SELECT min(id) FROM messages WHERE state = 'dead'")[0]
    assert post(client, f"/messages/dead/{oldest}/replay", token).status_code == 303
    assert client.get(url, headers=htmx).status_code == 200


def cursor_after(last_id: int) -> str:
    from app.api import encode_cursor

    return encode_cursor({"last_id": last_id + 1})


def test_it_filters_conversations_by_agent(client, talk, vera, signin):
    signin(client, vera)
    html = client.get("/conversations?agent=gamma").get_data(as_text=True)
    assert 'href="/conversations/conv-2"' in html and "conv-1" not in html
    assert "<option selected>gamma</option>" in html
    html = client.get("/conversations?agent=nobody").get_data(as_text=True)
    assert "takes part in no conversation yet" in html


def test_it_shows_a_thread_in_order_with_replies_content_and_delivery_states(
    app, client, talk, vera, signin
):
    sweep_now(app, time.time() + 20)  # past the query-if's TTL: it dies unacked
    send(
        talk["api"],
        talk["keys"]["alpha"],
        performative="cancel",
        receiver="beta",
        conversation_id="conv-1",
        content=None,
    )
    lease(talk["api"], talk["keys"]["beta"], "beta", limit=1)
    send(
        talk["api"],
        talk["keys"]["alpha"],
        performative="inform",
        receiver="beta",
        conversation_id="conv-1",
        content="later",
    )
    signin(client, vera)
    resp = client.get("/conversations/conv-1")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    order = re.findall(r'<span class="perf">([a-z-]+)</span>', html)
    assert order == ["request", "query-if", "inform", "cancel", "inform"]
    assert 'alpha <span aria-label="to">→</span> beta' in html
    # The answer links to the question it answers, and the question back to it.
    request_anchor = re.search(r'<li id="(m-\d+)">', html).group(1)
    assert f'<a href="#{request_anchor}"><code>q1</code></a>' in html
    assert 'answered by <a href="#m-' in html
    assert "&#34;task&#34;: &#34;sum&#34;" in html and "&#34;result&#34;: 3" in html
    states = re.findall(r'<span class="badge \w+">(queued|leased|acked|dead)</span>', html)
    assert states == ["acked", "dead", "queued", "leased", "queued"]
    assert "ttl expired" in html
    assert "/messages/dead/" not in html  # a viewer gets no replay button


def test_it_keeps_an_open_thread_current_and_says_204_while_nothing_changed(
    client, talk, vera, signin
):
    signin(client, vera)
    html = client.get("/conversations/conv-1").get_data(as_text=True)
    poll = re.search(r'hx-get="(/conversations/conv-1\?v=[^"]+)" hx-trigger="every 3s"', html)
    assert poll, "the last page of a thread polls for changes"
    url = poll.group(1).replace("&amp;", "&")
    htmx = {"HX-Request": "true"}
    assert client.get(url, headers=htmx).status_code == 204
    # A lease, an ack or a new message changes what the page shows: it gets the new thread.
    leased = [m["id"] for m in lease(talk["api"], talk["keys"]["beta"], "beta", limit=10)]
    resp = client.get(url, headers=htmx)
    assert resp.status_code == 200
    fragment = resp.get_data(as_text=True)
    assert "<html" not in fragment and fragment.startswith('<div id="thread-live"')
    newer = re.search(r'hx-get="([^"]+)"', fragment).group(1).replace("&amp;", "&")
    assert client.get(newer, headers=htmx).status_code == 204
    ack(talk["api"], talk["keys"]["beta"], "beta", leased)
    fragment = client.get(newer, headers=htmx).get_data(as_text=True)
    assert fragment.count(">acked</span>") > 1
    send(talk["api"], talk["keys"]["alpha"], performative="inform", receiver="beta",
         conversation_id="conv-1", content="fresh news")  # fmt: skip
    newer = re.search(r'hx-get="([^"]+)"', fragment).group(1).replace("&amp;", "&")
    fragment = client.get(newer, headers=htmx).get_data(as_text=True)
    assert "fresh news" in fragment


def test_it_answers_404_for_an_unknown_conversation(client, vera, signin):
    signin(client, vera)
    resp = client.get("/conversations/nope")
    assert resp.status_code == 404 and "conversation not found" in resp.get_data(as_text=True)
    # An open page whose conversation was purged is told to stop asking (htmx: 286).
    assert client.get("/conversations/nope?v=1", headers={"HX-Request": "true"}).status_code == 286
    assert client.get("/conversations/conv-1?cursor=@@").status_code == 400


@pytest.mark.parametrize(
    ("path", "hint"),
    [("/conversations", "No conversations yet"), ("/messages/dead", "No message dead letters")],
)
def test_it_tells_a_newcomer_what_to_do_on_an_empty_page(client, vera, signin, path, hint):
    signin(client, vera)
    resp = client.get(path)
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert hint in html
    assert "<script>" not in html and " style=" not in html  # CSP: nothing inline


# --- message dead letters ---------------------------------------------------------------------


def test_it_lists_message_dead_letters_with_filters_and_counts(client, dead, vera, signin):
    signin(client, vera)
    html = client.get("/messages/dead").get_data(as_text=True)
    assert re.findall(r'<tr id="dead-msg-\d+">', html).__len__() == 3
    assert "3 dead letters" in html
    assert '<svg class="chart"' in html and 'class="bar-ttl_expired"' in html
    assert 'href="/messages/dead?receiver=beta">beta</a>' in html
    assert '<meter min="0" max="3" value="2"' in html
    html = client.get("/messages/dead?receiver=beta&performative=inform").get_data(as_text=True)
    assert len(re.findall(r'<tr id="dead-msg-\d+">', html)) == 1
    assert "beta-one" in html and "beta-two" not in html and "gamma-one" not in html
    html = client.get("/messages/dead?reason=max_deliveries").get_data(as_text=True)
    assert "No dead letter matches these filters" in html
    assert client.get("/messages/dead?cursor=!!").status_code == 400


def test_it_hides_dead_letter_actions_from_a_viewer(client, dead, vera, signin):
    signin(client, vera)
    html = client.get("/messages/dead").get_data(as_text=True)
    assert "Replay" not in html and "Purge all" not in html and "Redirect all" not in html


def test_it_previews_the_count_then_replays_the_matching_dead_letters(
    app, client, dead, bob, signin
):
    token = signin(client, bob)
    html = client.get("/messages/dead?receiver=beta").get_data(as_text=True)
    assert "Replay all…" in html
    resp = post(client, "/messages/dead/preview", token, action="replay", receiver="beta")
    assert resp.status_code == 200
    assert "<strong>2</strong> dead letters will be put back" in resp.get_data(as_text=True)
    assert dead_states(app)["beta-one"] == ("dead", "beta")  # a preview changes nothing
    resp = post(
        client, "/messages/dead/bulk", token, action="replay", receiver="beta", expected="2"
    )
    assert resp.status_code == 303 and resp.headers["Location"] == "/messages/dead?receiver=beta"
    states = dead_states(app)
    assert states["beta-one"] == ("queued", "beta") and states["beta-two"] == ("queued", "beta")
    assert states["gamma-one"] == ("dead", "gamma")
    got = lease(app.test_client(), dead["beta"], "beta", limit=10)
    assert [m["content"] for m in got] == ["beta-one", "beta-two"] and got[0]["deliveries"] == 1
    assert "Sent 2 dead letters to their mailboxes again." in client.get(
        resp.headers["Location"]
    ).get_data(as_text=True)


def test_it_shows_the_new_count_when_it_changed_since_the_preview(app, client, dead, bob, signin):
    token = signin(client, bob)
    resp = post(client, "/messages/dead/bulk", token, action="purge", expected="2")
    assert resp.status_code == 409
    html = resp.get_data(as_text=True)
    assert "changed since the preview" in html and "<strong>3</strong>" in html
    assert len(dead_states(app)) == 3


def test_it_redirects_dead_letters_to_another_agent(app, client, dead, bob, signin):
    token = signin(client, bob)
    resp = post(
        client, "/messages/dead/preview", token, action="redirect", to="alpha", receiver="gamma"
    )
    assert "delivered to alpha instead" in resp.get_data(as_text=True)
    resp = post(
        client,
        "/messages/dead/bulk",
        token,
        action="redirect",
        to="alpha",
        receiver="gamma",
        expected="1",
    )
    assert resp.status_code == 303
    assert dead_states(app)["gamma-one"] == ("queued", "alpha")
    row = one(app, "SELECT original_receiver, replays FROM messages WHERE receiver = 'alpha'")
    assert tuple(row) == ("gamma", 1)


def test_it_refuses_a_redirect_without_a_known_agent(app, client, dead, bob, signin):
    token = signin(client, bob)
    resp = post(client, "/messages/dead/preview", token, action="redirect")
    assert resp.status_code == 422 and "Choose the agent" in resp.get_data(as_text=True)
    resp = post(client, "/messages/dead/bulk", token, action="redirect", to="nobody", expected="3")
    assert resp.status_code == 422 and "no agent named" in resp.get_data(as_text=True)
    assert post(client, "/messages/dead/preview", token, action="explode").status_code == 422
    assert {s for s, _r in dead_states(app).values()} == {"dead"}


def test_it_purges_the_matching_dead_letters(app, client, dead, bob, signin):
    token = signin(client, bob)
    resp = client.post(
        "/messages/dead/preview",
        data={"csrf_token": token, "action": "purge", "performative": "inform"},
        headers={"HX-Request": "true"},
    )
    html = resp.get_data(as_text=True)
    assert "<html" not in html and 'data-confirm="Delete 2 dead letters for good?"' in html
    resp = post(
        client, "/messages/dead/bulk", token, action="purge", performative="inform", expected="2"
    )
    assert resp.status_code == 303
    assert set(dead_states(app)) == {"beta-two"}


def test_it_replays_one_dead_letter_and_goes_back(app, client, dead, bob, signin):
    token = signin(client, bob)
    row_id = one(app, "SELECT id FROM messages WHERE receiver = 'gamma'")[0]
    resp = post(client, f"/messages/dead/{row_id}/replay", token, next="/conversations/x#d-1")
    assert resp.status_code == 303 and resp.headers["Location"] == "/conversations/x#d-1"
    assert dead_states(app)["gamma-one"] == ("queued", "gamma")
    resp = post(client, f"/messages/dead/{row_id}/replay", token)
    assert resp.status_code == 409 and "no longer a dead letter" in resp.get_data(as_text=True)
    assert post(client, "/messages/dead/999/replay", token).status_code == 409
    beta = one(app, "SELECT id FROM messages WHERE receiver = 'beta' ORDER BY id")[0]
    resp = post(client, f"/messages/dead/{beta}/replay", token, next="/\t/evil.example/")
    assert resp.status_code == 303 and resp.headers["Location"] == "/messages/dead"


def test_it_redirects_or_purges_one_dead_letter_from_its_row(app, client, dead, bob, signin):
    token = signin(client, bob)
    html = client.get("/messages/dead").get_data(as_text=True)
    gamma = one(app, "SELECT id FROM messages WHERE receiver = 'gamma'")[0]
    assert f'action="/messages/dead/{gamma}/redirect"' in html
    assert f'action="/messages/dead/{gamma}/purge"' in html
    resp = post(client, f"/messages/dead/{gamma}/redirect", token, to="beta", next="/messages/dead")
    assert resp.status_code == 303 and resp.headers["Location"] == "/messages/dead"
    assert dead_states(app)["gamma-one"] == ("queued", "beta")
    assert one(app, "SELECT original_receiver FROM messages WHERE id = ?", (gamma,))[0] == "gamma"
    beta = one(app, "SELECT id FROM messages WHERE content = '\"beta-two\"'")[0]
    assert post(client, f"/messages/dead/{beta}/redirect", token, to="nobody").status_code == 422
    assert post(client, f"/messages/dead/{beta}/redirect", token).status_code == 422
    assert post(client, f"/messages/dead/{beta}/shred", token).status_code == 404
    assert dead_states(app)["beta-two"][0] == "dead"
    assert post(client, f"/messages/dead/{beta}/purge", token).status_code == 303
    assert "beta-two" not in dead_states(app)
    # A letter that is no longer dead (redirected above) is not purged.
    assert post(client, f"/messages/dead/{gamma}/purge", token).status_code == 409
    assert dead_states(app)["gamma-one"] == ("queued", "beta")


def test_it_reports_a_full_mailbox_instead_of_replaying(make_app, client, signin):
    from tests.conftest import make_key

    app = make_app(MAILBOX_MAX=2)
    api = app.test_client()
    admin = make_key(app, "root", "admin")
    a = register(api, admin, "alpha")
    register(api, admin, "beta")
    for n in range(2):
        send(api, a, performative="inform", receiver="beta", content=n, ttl=10)
    sweep_now(app, time.time() + 20)
    send(api, a, performative="inform", receiver="beta", content="live")
    browser = app.test_client()
    token = signin(browser, admin)
    resp = post(browser, "/messages/dead/bulk", token, action="replay", expected="2")
    assert resp.status_code == 303
    html = browser.get(resp.headers["Location"]).get_data(as_text=True)
    assert "Sent 0 dead letters" in html and "has no room for 2 more messages" in html
    assert one(app, "SELECT count(*) FROM messages WHERE state = 'dead'")[0] == 2


@pytest.mark.parametrize(
    "path",
    [
        "/messages/dead/preview",
        "/messages/dead/bulk",
        "/messages/dead/1/replay",
        "/messages/dead/1/redirect",
        "/messages/dead/1/purge",
    ],
)
@pytest.mark.parametrize("persona", ["vera", "dave"])
def test_it_refuses_dead_letter_actions_below_operator_with_403(
    app, client, dead, signin, request, path, persona
):
    token = signin(client, request.getfixturevalue(persona))
    resp = post(client, path, token, action="purge", expected="3")
    assert resp.status_code == 403 and "needs the" in resp.get_data(as_text=True)
    assert len(dead_states(app)) == 3


def test_it_refuses_dead_letter_actions_without_the_csrf_token(app, client, dead, bob, signin):
    signin(client, bob)
    resp = client.post("/messages/dead/bulk", data={"action": "purge", "expected": "3"})
    assert resp.status_code == 403 and "CSRF" in resp.get_data(as_text=True)
    resp = client.post("/messages/dead/1/replay", headers={"X-CSRF-Token": "wrong"})
    assert resp.status_code == 403
    assert {s for s, _r in dead_states(app).values()} == {"dead"}


@pytest.mark.parametrize("path", ["/conversations", "/conversations/conv-1", "/messages/dead"])
def test_it_sends_strangers_to_sign_in(client, path):
    resp = client.get(path)
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/signin")
