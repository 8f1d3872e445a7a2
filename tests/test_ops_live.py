"""The upkeep loops inside the real service: scheduled backups and the alerter."""

from __future__ import annotations

import json

import pytest

from tests.ops_helpers import Receiver
from tests.pipeline_helpers import live, wait_for


@pytest.mark.sqlite_only
def test_it_backs_up_on_schedule_and_keeps_the_newest(live_server):
    srv = live_server({"AGENTED_BACKUP_INTERVAL_S": "1", "AGENTED_BACKUP_KEEP": "2"})
    backups = srv.data_dir / "backups"

    def made() -> list:
        return sorted(backups.glob("agented-*.db")) if backups.exists() else []

    first = wait_for(lambda: made(), timeout=15)[0]
    wait_for(lambda: not first.exists(), timeout=15)  # pruned once two newer ones exist
    assert len(made()) == 2
    assert srv.request("GET", "/health/ready")[0] == 200


def test_it_alerts_from_the_background_and_posts_the_webhook(live_server):
    receiver = Receiver()
    try:
        srv = live_server(
            {
                "AGENTED_ALERT_INTERVAL_S": "1",
                "AGENTED_ALERT_WEBHOOK_URL": receiver.url,
                "AGENTED_ALERT_WEBHOOK_SECRET": "s3cret",
            }
        )
        key = srv.make_key("operator")
        status, rule = live(srv, key, "PATCH", "/api/v1/alerts/rules/disk_low", {"threshold": 1e9})
        assert status == 200, rule
        wait_for(lambda: receiver.posts, timeout=15)
        post = receiver.posts[0]
        assert post["json"]["event"] == "fired" and post["json"]["alert"]["rule"] == "disk_low"
        assert post["headers"]["X-Agented-Signature"].startswith("sha256=")
        status, _h, body = srv.request(
            "GET", "/api/v1/alerts?state=open", headers={"X-API-Key": key}
        )
        assert [a["rule"] for a in json.loads(body)["alerts"]] == ["disk_low"]
    finally:
        receiver.close()
