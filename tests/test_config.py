"""Settings: typed helpers that fail loudly, and a SECRET_KEY made once and kept."""

from __future__ import annotations

import os
import stat

import pytest

from app import config
from app.cli import main
from tests.conftest import ROOT


@pytest.mark.parametrize(
    ("name", "value", "expect"),
    [
        ("AGENTED_MAX_BODY_BYTES", "lots", "must be an integer"),
        ("AGENTED_MAX_BODY_BYTES", "10", "must be >= 1024"),
        ("AGENTED_BEHIND_TLS", "maybe", "must be a boolean"),
        ("AGENTED_BIND", "localhost", "HOST:PORT"),
        ("AGENTED_BIND", "127.0.0.1:99999", "HOST:PORT"),
        ("AGENTED_KILL_GRACE_S", "soon", "must be a number"),
        ("SECRET_KEY", "short", "at least 16"),
    ],
)
def test_it_names_the_variable_with_a_bad_value(data_dir, monkeypatch, name, value, expect):
    monkeypatch.setenv(name, value)
    with pytest.raises(config.ConfigError) as caught:
        config.load()
    assert name in str(caught.value)
    assert expect in str(caught.value)


def test_it_stops_create_app_on_a_bad_value(make_app):
    with pytest.raises(config.ConfigError, match="AGENTED_SSE_TOKEN_TTL_S"):
        make_app({"AGENTED_SSE_TOKEN_TTL_S": "forever"})


def test_it_stops_the_cli_with_a_clear_message(cli_runner):
    result = cli_runner.invoke(main, ["db", "status"], env={"AGENTED_BEHIND_TLS": "sometimes"})
    assert result.exit_code == 1
    assert "configuration: AGENTED_BEHIND_TLS must be a boolean" in result.output
    assert "Traceback" not in result.output


def test_it_uses_the_defaults_with_no_configuration(app, data_dir):
    assert app.config["BIND"] == "127.0.0.1:8080"
    assert app.config["DATA_DIR"] == data_dir.resolve()
    assert app.config["MAX_CONTENT_LENGTH"] == 1024 * 1024
    assert app.config["CORS_ALLOWED_ORIGINS"] == []
    assert app.config["SESSION_COOKIE_SECURE"] is False


def test_it_reads_the_env_file(make_app, tmp_path):
    env_file = tmp_path / "settings.env"
    env_file.write_text("AGENTED_MAX_BODY_BYTES=4096\nAGENTED_BEHIND_TLS=yes\n")
    try:
        app = make_app({"AGENTED_ENV_FILE": str(env_file)})
    finally:
        # load_dotenv writes os.environ directly; undo it so no other test sees these.
        os.environ.pop("AGENTED_MAX_BODY_BYTES", None)
        os.environ.pop("AGENTED_BEHIND_TLS", None)
    assert app.config["MAX_CONTENT_LENGTH"] == 4096
    assert app.config["SESSION_COOKIE_SECURE"] is True


def test_it_generates_the_secret_key_once_with_mode_0600(make_app, data_dir):
    first = make_app()
    path = data_dir / "secret_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first.config["SECRET_KEY"]) >= 32
    second = make_app()
    assert second.config["SECRET_KEY"] == first.config["SECRET_KEY"]
    assert path.read_text().strip() == first.config["SECRET_KEY"]


def test_it_keeps_sessions_across_restarts(make_app, alice, signin):
    first = make_app()
    client = first.test_client()
    signin(client, alice)
    cookie = client.get_cookie("agented_session")
    assert cookie is not None

    again = make_app().test_client()
    again.set_cookie("agented_session", cookie.value)
    assert again.get("/api/v1/keys").status_code == 200


def test_it_takes_secret_key_from_the_environment(make_app, data_dir):
    app = make_app({"SECRET_KEY": "s" * 40})
    assert app.config["SECRET_KEY"] == "s" * 40
    assert not (data_dir / "secret_key").exists()


def test_it_reads_env_example_as_the_defaults(make_app, data_dir):
    settings = list(config.load())
    defaults = make_app().config
    before = set(os.environ)
    try:
        app = make_app({"AGENTED_ENV_FILE": str(ROOT / ".env.example")})
    finally:
        for name in set(os.environ) - before:
            os.environ.pop(name)
    # AGENTED_DATA_DIR comes from the test; every other line of the example is a default.
    assert {k: app.config[k] for k in settings} == {k: defaults[k] for k in settings}
    assert app.config["WORKSPACES_DIR"] == data_dir.resolve() / "workspaces"
