"""Several hub instances on one PostgreSQL database (issue 17), as real gunicorn processes."""

from __future__ import annotations

import pytest

from tests.test_execution import FAST, logs, make_agent, submit, wait_state


@pytest.fixture
def pg_hub(live_server, pg_url):
    def start(**env):
        srv = live_server({**FAST, "AGENTED_DATABASE_URL": pg_url, **env})
        srv.keys["admin"] = srv.make_key("admin")
        return srv

    return start


def test_it_runs_a_task_on_postgresql(pg_hub):
    srv = pg_hub()
    make_agent(srv, "echo", ["sh", "-c", "echo hello from $AGENTED_TASK_ID"])
    task_id = submit(srv, "echo")
    assert wait_state(srv, task_id, "succeeded", "dead")["state"] == "succeeded"
    assert any("hello from" in line["text"] for line in logs(srv, task_id))
