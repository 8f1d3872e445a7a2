"""The overview's and the metrics' "failed, retrying": queued tasks with a failed attempt."""

from __future__ import annotations

from app.dashboard.overview import overview_data
from tests.dashboard_helpers import add_agent, add_task


def test_it_counts_queued_tasks_with_a_failed_attempt(app, client, alice):
    add_agent(app)
    add_task(app, state="queued", attempts=[{"state": "failed"}])
    add_task(app, state="queued", attempts=[{"state": "timed_out"}, {"state": "crashed"}])
    add_task(app, state="queued")  # never tried
    add_task(app, state="dead", attempts=[{"state": "failed"}])  # no retry left
    add_task(app, state="succeeded", attempts=[{"state": "failed"}, {"state": "succeeded"}])
    with app.test_request_context():
        assert overview_data()["retrying"] == 2
    metrics = client.get("/api/v1/metrics", headers={"X-API-Key": alice}).get_json()
    assert metrics["queue"]["failed_retrying"] == 2


def test_it_shows_queued_tasks_with_a_failed_attempt_on_the_overview(app, client, alice, signin):
    add_agent(app)
    add_task(app, state="queued", attempts=[{"state": "failed"}])
    signin(client, alice)
    page = client.get("/overview/stats").get_data(as_text=True)
    assert 'Failed, retrying</dt><dd><a href="/tasks?state=queued">1</a>' in page
