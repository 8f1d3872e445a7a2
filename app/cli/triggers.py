"""`agented trigger <verb>`: list, show, create, edit, delete, enable, disable.

Like `task`, these work on this machine's hub through the same functions the
API uses (TriggerIn/TriggerPatch, check_trigger, insert_trigger, update_trigger),
so a trigger the CLI saves passes the checks the API and the pages apply; given
--url or --key they send the same request to a hub's HTTP API instead.
"""

from __future__ import annotations

from typing import IO, Any

import click

from app import db
from app.api import validate
from app.cli.client import Api, api_options, q, remote
from app.cli.main import app_context, body_from, emit, refuse
from app.errors import ApiError, DomainError
from app.triggers import (
    TriggerIn,
    TriggerPatch,
    check_trigger,
    get_trigger,
    insert_trigger,
    trigger_json,
    update_trigger,
)


@click.group("trigger")
def trigger_group() -> None:
    """Triggers: list, show, create, edit, delete, enable, disable.

    On this machine's hub with no key; with --url/--key over the HTTP API.
    """


def field_options(fn):
    """The fields most triggers need as flags; any field of the API's body via --file."""
    options = [
        click.option("--file", "file", type=click.File("r"),
                     help="A JSON object of the API's fields ('-': stdin); flags override it."),
        click.option("--name"),
        click.option("--agent", help="The agent that runs its tasks."),
        click.option("--selector", multiple=True,
                     help="Or any agent with these capabilities (repeatable)."),
        click.option("--template", "prompt_template", help="The prompt template (Jinja)."),
        click.option("--template-file", type=click.File("r"),
                     help="Read the prompt template from this file ('-' for stdin)."),
        click.option("--schedule", help="Cron schedule (cron triggers), e.g. '*/5 * * * *'."),
        click.option("--timezone", help="The schedule's time zone (default UTC)."),
        click.option("--event", "events", multiple=True,
                     help="GitHub event to start on (repeatable)."),
        click.option("--repository", "repositories", multiple=True,
                     help="GitHub owner/name to start on (repeatable)."),
        click.option("--priority", type=int),
        click.option("--max-attempts", type=int),
        click.option("--timeout", "timeout_s", type=int, help="Seconds."),
        click.option("--enabled/--disabled", default=None),
    ]  # fmt: skip
    for option in reversed(options):
        fn = option(fn)
    return fn


def template_body(file: IO[str] | None, template_file, fields: dict[str, Any]) -> dict:
    """The trigger's fields from --file and the flags; --template-file read into the template."""
    if template_file is not None:
        if fields.get("prompt_template") is not None:
            raise click.UsageError("give --template or --template-file, not both")
        fields["prompt_template"] = template_file.read()
    return body_from(file, fields)


def load(slug: str, as_json: bool):
    row = db.query_one("SELECT * FROM triggers WHERE slug = ?", (slug,))
    if row is None:
        refuse(ApiError(404, f"no trigger {slug!r}"), as_json)
    return row


def shown(data: dict) -> str:
    lines = [
        f"trigger {data['slug']} ({data['kind']}, {'on' if data['enabled'] else 'off'}):"
        f" {data['name']}",
        f"  runs on:   {data['agent'] or 'any agent with ' + ', '.join(data['selector'])}",
    ]
    if data.get("webhook_url"):
        lines.append(f"  webhook:   {data['webhook_url']}")
    if data.get("schedule"):
        lines.append(f"  schedule:  {data['schedule']} ({data['timezone']})")
    for name in ("events", "actions", "repositories", "labels", "branches"):
        if data.get(name):
            lines.append(f"  {name + ':':<10} {', '.join(data[name])}")
    if data.get("last_error"):
        lines.append(f"  last error: {data['last_error']}")
    lines.append("  template:")
    lines += [f"    {line}" for line in data["prompt_template"].splitlines()]
    return "\n".join(lines)


@trigger_group.command("list")
@api_options
def trigger_list(url, key, as_json):
    """List triggers."""
    api = remote(url, key, as_json)
    if api is not None:
        found = api.call("GET", "/api/v1/triggers")["triggers"]
    else:
        with app_context():
            found = [trigger_json(r) for r in db.query_all("SELECT * FROM triggers ORDER BY slug")]
    lines = [
        f"{t['slug']:<24} {t['kind']:<8} {'on ' if t['enabled'] else 'off'} "
        f"-> {t['agent'] or t['selector']}"
        for t in found
    ]
    emit(as_json, {"triggers": found}, "\n".join(lines) or "no triggers")


@trigger_group.command("show")
@click.argument("slug")
@api_options
def trigger_show(slug, url, key, as_json):
    """Show one trigger with its template (never its secret)."""
    api = remote(url, key, as_json)
    if api is not None:
        data = api.call("GET", f"/api/v1/triggers/{q(slug)}")
    else:
        with app_context():
            data = trigger_json(load(slug, as_json))
    emit(as_json, data, shown(data))


@trigger_group.command("create")
@click.option("--slug", help="Its address (default: from the name).")
@click.option("--kind", type=click.Choice(["webhook", "github", "cron", "manual"]))
@field_options
@api_options
def trigger_create(file, template_file, url, key, as_json, **fields):
    """Create a trigger from flags and/or a JSON file; prints a webhook secret once.

    \b
    agented trigger create --name deploy --kind webhook --agent echo \\
        --template 'Deploy {{ payload.ref }}'
    agented trigger create --file trigger.json     # any of the API's fields
    """
    body = template_body(file, template_file, fields)
    api = remote(url, key, as_json)
    if api is not None:
        data = api.call("POST", "/api/v1/triggers", body)
    else:
        with app_context():
            try:
                checked = validate(TriggerIn, body).model_dump()
                check_trigger(checked)
                slug, secret = insert_trigger(checked)
            except (ApiError, DomainError) as exc:
                refuse(exc, as_json)
            data = trigger_json(get_trigger(slug)) | ({"secret": secret} if secret else {})
    text = f"trigger {data['slug']} created"
    if data.get("secret"):
        text += f"\n  webhook URL: {data['webhook_url']}\n  secret (shown once): {data['secret']}"
    emit(as_json, data, text)


@trigger_group.command("edit")
@click.argument("slug")
@field_options
@api_options
def trigger_edit(slug, file, template_file, url, key, as_json, **fields):
    """Change a trigger's fields (those not given keep their value); slug and kind stay."""
    body = template_body(file, template_file, fields)
    if not body:
        raise click.UsageError("nothing to change: give a field (see --help) or --file")
    api = remote(url, key, as_json)
    if api is not None:
        data = api.call("PATCH", f"/api/v1/triggers/{q(slug)}", body)
    else:
        with app_context():
            data = edit_here(slug, body, as_json)
    emit(as_json, data, f"trigger {slug} saved: {', '.join(sorted(body))}")


def edit_here(slug: str, body: dict, as_json: bool) -> dict:
    row = load(slug, as_json)
    try:
        changes = validate(TriggerPatch, body).model_dump(exclude_unset=True)
        # The same refusals as PATCH /api/v1/triggers/<slug> makes before update_trigger.
        if "slug" in changes or "kind" in changes:
            raise ApiError(422, "slug and kind cannot change; create a new trigger instead")
        nulls = [k for k in ("name", "prompt_template", "timezone") if
                 k in changes and changes[k] is None]  # fmt: skip
        if nulls:
            details = [{"field": k, "message": "cannot be null"} for k in nulls]
            raise ApiError(422, "the body does not match the schema", details=details)
        check_trigger(trigger_json(row) | changes)
        update_trigger(row, changes)
    except (ApiError, DomainError) as exc:
        refuse(exc, as_json)
    return trigger_json(get_trigger(slug))


@trigger_group.command("delete")
@click.argument("slug")
@click.option("--yes", is_flag=True, help="Do not ask first.")
@api_options
def trigger_delete(slug, yes, url, key, as_json):
    """Delete a trigger; its tasks and deliveries stay."""
    if not yes:
        click.confirm(f"Delete trigger {slug}? Its webhook URL stops working", abort=True)
    api = remote(url, key, as_json)
    if api is not None:
        api.call("DELETE", f"/api/v1/triggers/{q(slug)}")
    else:
        with app_context():
            row = load(slug, as_json)
            # The one statement DELETE /api/v1/triggers/<slug> runs.
            db.write(lambda conn: conn.execute("DELETE FROM triggers WHERE id = ?", (row["id"],)))
    emit(as_json, {"slug": slug, "deleted": True}, f"trigger {slug} deleted")


@trigger_group.command("enable")
@click.argument("slug")
@api_options
def trigger_enable(slug, url, key, as_json):
    """Turn a trigger on."""
    set_enabled(slug, True, remote(url, key, as_json), as_json)


@trigger_group.command("disable")
@click.argument("slug")
@api_options
def trigger_disable(slug, url, key, as_json):
    """Turn a trigger off (its webhooks are recorded but start nothing)."""
    set_enabled(slug, False, remote(url, key, as_json), as_json)


def set_enabled(slug: str, on: bool, api: Api | None, as_json: bool) -> None:
    if api is not None:
        api.call("PATCH", f"/api/v1/triggers/{q(slug)}", {"enabled": on})
    else:
        with app_context():
            update_trigger(load(slug, as_json), {"enabled": on})  # as the API and the pages do
    emit(as_json, {"slug": slug, "enabled": on}, f"trigger {slug} {'on' if on else 'off'}")


COMMANDS = (trigger_group,)
