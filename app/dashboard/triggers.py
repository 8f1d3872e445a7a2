"""Triggers: list, create and edit with field errors, preview, test events, enable, secrets."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import shlex
import time
from typing import Any

from flask import current_app, g, redirect, render_template, request, url_for

from app import crypto, db, github, prompts
from app.api import loads, validate
from app.auth import requires, same_site_path
from app.dashboard import bp, notify
from app.dashboard.common import done, field_errors, secret_page
from app.dashboard.trigger_samples import sample_for, template_reads
from app.errors import ApiError, Busy, Conflict, as_api_error
from app.matching import LIST_FIELDS, match, plan
from app.tasks import TaskIn, queue_task
from app.triggers import (
    TriggerIn,
    check_for_kind,
    check_trigger,
    get_trigger,
    insert_trigger,
    plan_from_trigger,
    rotate_secret,
    trigger_json,
    update_trigger,
    webhook_url,
)

KINDS = ("webhook", "github", "cron", "manual")
INT_FIELDS = ("priority", "max_attempts", "timeout_s", "concurrency_limit")
TEXT_FIELDS = ("name", "slug", "kind", "agent", "prompt_template", "schedule", "timezone",
               "injection_policy", "concurrency_key", "report")  # fmt: skip
# A GitHub trigger's `report` modes (app/reports.py channels), in plain words.
REPORT_MODES = {
    "auto": "a comment on the issue or pull request, and on a pull request a check run"
            " (GitHub App) or commit status (token)",
    "comment": "only a comment on the issue or pull request, edited as the task moves",
    "check": "only a check run or commit status on a pull request's head commit;"
             " nothing on issues",
    "off": "report nothing; the task's outcome stays on this hub",
}  # fmt: skip
# What the hub's GitHub connection (github.mode) means for reports.
CONNECTION = {
    None: "The hub has no GitHub connection now, so nothing is reported back whatever you choose"
          " here. Set AGENTED_GITHUB_TOKEN, or a GitHub App (AGENTED_GITHUB_APP_ID and"
          " AGENTED_GITHUB_APP_PRIVATE_KEY_FILE), and restart.",
    "token": "The hub talks to GitHub with a token (AGENTED_GITHUB_TOKEN): it posts comments and"
             " commit statuses. Check runs need a GitHub App.",
    "app": "The hub talks to GitHub as a GitHub App: it posts comments and check runs, through"
           " the App's installation named by each event.",
}  # fmt: skip


# The fields each kind of trigger uses; the form shows only these (and any stored value).
KIND_FIELDS = {
    "webhook": ("events", "match"),
    "github": ("events", "actions", "repositories", "labels", "branches", "match", "report"),
    "cron": ("schedule", "timezone"),
    "manual": (),
}
KIND_LABELS = {"webhook": "webhook (signed POST)", "github": "GitHub event",
               "cron": "schedule (cron)", "manual": "manual (Run now / API)"}  # fmt: skip


# --- samples that fit the trigger --------------------------------------------------------


def form_sample(form: dict) -> tuple[Any, str | None]:
    """sample_for the form as typed (a stored trigger's form is the trigger)."""
    lists = {f: [i.strip() for i in str(form.get(f, "")).split(",") if i.strip()]
             for f in LIST_FIELDS}  # fmt: skip
    try:
        wanted = loads(form.get("match") or "{}")
    except ValueError:
        wanted = {}
    return sample_for(form["kind"], form["prompt_template"], lists, wanted)


# --- the form ---------------------------------------------------------------------------


def blank_form(kind: str = "webhook") -> dict[str, Any]:
    return {
        "name": "", "slug": "", "kind": kind, "agent": "", "selector": "",
        "prompt_template": "Handle this event:\n{{ payload | tojson }}",
        "repositories": "", "events": "", "actions": "", "labels": "", "branches": "",
        "match": "{}", "schedule": "", "timezone": "UTC", "injection_policy": "flag",
        "priority": "0", "max_attempts": "", "timeout_s": "", "concurrency_key": "",
        "concurrency_limit": "", "enabled": True, "report": "auto",
        "notify": {"removed": (), "new": notify.blank_new()},
    }  # fmt: skip


def form_of(row) -> dict[str, Any]:
    """A stored trigger as the form's text fields."""
    data = trigger_json(row)
    form: dict[str, Any] = {
        k: "" if data.get(k) is None else str(data[k]) for k in (*TEXT_FIELDS, *INT_FIELDS)
    }
    for field in LIST_FIELDS:
        form[field] = ", ".join(data[field])
    form["match"] = json.dumps(data["match"], indent=2) if data["match"] else "{}"
    form["enabled"] = data["enabled"]
    form["notify"] = {"removed": (), "new": notify.blank_new()}
    return form


def read_form(
    fixed: dict | None = None, stored_notify: str | None = None
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """Return (the form as typed, the data for TriggerIn, field errors).

    `data["notify"]` is the whole list to store (kept entries and a new one);
    `form["notify_changed"]` says whether it differs from `stored_notify`.
    """
    f = request.form
    form: dict[str, Any] = {k: f.get(k, "").strip() for k in (*TEXT_FIELDS, *INT_FIELDS)}
    form["prompt_template"] = f.get("prompt_template", "")
    for field in LIST_FIELDS:
        form[field] = f.get(field, "")
    form["match"] = f.get("match", "").strip() or "{}"
    form["enabled"] = f.get("enabled") == "on"
    form.update(fixed or {})
    errors: dict[str, str] = {}
    data: dict[str, Any] = {
        "name": form["name"],
        "kind": form["kind"],
        "prompt_template": form["prompt_template"],
        "timezone": form["timezone"] or "UTC",
        "injection_policy": form["injection_policy"] or "flag",
        "enabled": form["enabled"],
        "report": form["report"] or "auto",
    }
    form["notify"], data["notify"], form["notify_changed"] = notify.read(stored_notify, errors)
    for name in ("slug", "agent", "schedule", "concurrency_key"):
        data[name] = form[name] or None
    for field in LIST_FIELDS:
        data[field] = [item.strip() for item in form[field].split(",") if item.strip()]
    for name in INT_FIELDS:
        if form[name]:
            try:
                data[name] = int(form[name])
            except ValueError:
                errors[name] = "Enter a whole number."
    data.setdefault("priority", 0)
    try:
        data["match"] = loads(form["match"])
        if not isinstance(data["match"], dict):
            errors["match"] = 'Enter a JSON object, e.g. {"action": "opened"}.'
    except ValueError as exc:
        errors["match"] = f"Not valid JSON: {exc}"
    return form, data, errors


# check_trigger's messages name the field they are about; route each to its input.
FIELD_HINTS = (("agent", "agent"), ("selector", "agent"), ("time zone", "timezone"),
               ("schedule", "schedule"), ("slug", "slug"))  # fmt: skip


def validate_trigger(data: dict, errors: dict[str, str]) -> dict | None:
    """Validate like the API does; fill `errors` per field and return the clean body or None.

    Every check runs whatever failed before it, so the form shows all its errors at
    once (issue 16): the model's, then the API's checks on what could be read.
    """
    body = None
    try:
        body = validate(TriggerIn, data).model_dump()
    except ApiError as exc:
        field_errors(exc, errors)
    whole = body or data
    for check in (check_trigger, lambda d: check_for_kind(d["kind"], d["prompt_template"])):
        try:
            check(whole)
        except ApiError as exc:
            for field, message in refused_field(exc).items():
                errors.setdefault(field, message)
    return None if errors else body


def refused_field(exc: ApiError) -> dict[str, str]:
    """A refusal from the API's checks, beside the field its message names."""
    field, sep, rest = exc.message.partition(": ")
    if sep and field in (*TEXT_FIELDS, *INT_FIELDS, *LIST_FIELDS, "match"):
        return {field: rest[:1].upper() + rest[1:]}
    # check_trigger's messages name the field they are about in words.
    field = next((f for word, f in FIELD_HINTS if word in exc.message), "form")
    return {field: exc.message[:1].upper() + exc.message[1:]}


def form_page(form: dict, errors: dict, trigger=None, status: int = 200, run: dict | None = None):
    agents = [r[0] for r in db.query_all("SELECT name FROM agents ORDER BY name")]
    hook_url = webhook_url(trigger["slug"]) if trigger is not None else None
    how = github.mode(current_app.config)
    typed = form["notify"]
    shown = notify.view(trigger["notify"] if trigger is not None else None, typed["removed"],
                        typed["new"])  # fmt: skip
    kind = form["kind"] if form["kind"] in KINDS else "webhook"
    # A field another kind uses shows only when it holds something (set through the API):
    # hidden, saving the form would drop it.
    used = {f for f in (*LIST_FIELDS, "schedule", "match") if form.get(f) not in ("", "{}")}
    used |= set(errors)  # a field with an error shows, whatever the kind
    payload, event = form_sample(form)
    _read, params = template_reads(form["prompt_template"])
    return render_template(
        "triggers/form.html", form=form, errors=errors, trigger=trigger, agents=agents,
        kinds=KINDS, kind_labels=KIND_LABELS, shown=set(KIND_FIELDS[kind]) | used,
        hook_url=hook_url, report_modes=REPORT_MODES, connection_mode=how,
        connection=CONNECTION[how], notify=shown,
        run=run or {"params": "".join(f"{p}=\n" for p in params),
                    "payload": json.dumps(payload, indent=2), "error": None},
        reads=params, recent=recent_deliveries(trigger), sample=json.dumps(payload, indent=2),
        sample_event=event or "", trigger_status=status_of(trigger),
    ), status  # fmt: skip


def recent_deliveries(trigger) -> list:
    if trigger is None:
        return []
    if trigger["kind"] == "github":
        return db.query_all(
            "SELECT id, event, received_at FROM deliveries WHERE source = 'github'"
            " AND signature = 'valid' ORDER BY id DESC LIMIT 20"
        )
    return db.query_all(
        "SELECT id, event, received_at FROM deliveries WHERE trigger_slug = ?"
        " AND signature = 'valid' ORDER BY id DESC LIMIT 20",
        (trigger["slug"],),
    )


def status_of(trigger) -> dict | None:
    """When it last started work, why it last could not, and (cron) when it runs next."""
    if trigger is None:
        return None
    last_task = db.query_value(
        "SELECT max(created_at) FROM tasks WHERE trigger_slug = ?", (trigger["slug"],)
    )
    return {
        "error": trigger["last_error"], "error_at": trigger["last_error_at"],
        "fired_at": trigger["last_fired_at"], "last_task_at": last_task,
        "next_run_at": trigger["next_run_at"] if trigger["kind"] == "cron" else None,
    }  # fmt: skip


# --- pages ------------------------------------------------------------------------------


@bp.get("/triggers")
@requires("viewer")
def triggers_get():
    rows = db.query_all("SELECT * FROM triggers ORDER BY slug")
    day = time.time() - 86400
    counts = {
        r["trigger_slug"]: r
        for r in db.query_all(
            "SELECT trigger_slug, count(*) AS n, sum(state = 'dead') AS dead,"
            " max(created_at) AS last FROM tasks WHERE created_at > ? AND trigger_slug IS NOT NULL"
            " GROUP BY trigger_slug",
            (day,),
        )
    }
    return render_template("triggers/list.html", triggers=rows, counts=counts)


@bp.get("/triggers/new")
@requires("operator")
def trigger_new_get():
    kind = request.args.get("kind", "webhook")
    return form_page(blank_form(kind if kind in KINDS else "webhook"), {})


@bp.post("/triggers/new")
@requires("operator")
def trigger_new_post():
    form, data, errors = read_form()
    body = validate_trigger(data, errors)
    if body is None:
        return form_page(form, errors, status=422)
    try:
        slug, secret = insert_trigger(body)
    except Conflict as exc:
        return form_page(form, {"slug": exc.message}, status=409)
    except ApiError as exc:
        return form_page(form, refused_field(exc), status=exc.status)
    if secret is None:
        return done(f"Trigger {slug} created.", url_for("dashboard.trigger_get", slug=slug))
    row = get_trigger(slug)
    return secret_page(
        "triggers/secret.html", 201, trigger=row, secret=secret, url=webhook_url(slug),
        created=True, example=hook_example(row),
    )  # fmt: skip


@bp.get("/triggers/<slug>")
@requires("viewer")
def trigger_get(slug: str):
    row = get_trigger(slug)
    return form_page(form_of(row), {}, trigger=row)


@bp.post("/triggers/<slug>")
@requires("operator")
def trigger_post(slug: str):
    row = get_trigger(slug)
    fixed = {"slug": row["slug"], "kind": row["kind"]}
    if row["kind"] != "github":
        fixed["report"] = row["report"]  # the form asks only GitHub triggers
    form, data, errors = read_form(fixed, row["notify"])
    body = validate_trigger(data, errors)
    if body is None:
        return form_page(form, errors, trigger=row, status=422)
    # Slug and kind are fixed by read_form: every other field is stored as typed,
    # and the notifications only when changed (saving them encrypts them again).
    unsaved = ("slug", "kind") if form["notify_changed"] else ("slug", "kind", "notify")
    try:
        update_trigger(row, {k: v for k, v in body.items() if k not in unsaved})
    except ApiError as exc:
        return form_page(form, refused_field(exc), trigger=row, status=exc.status)
    return done(f"Trigger {slug} saved.", url_for("dashboard.trigger_get", slug=slug))


@bp.post("/triggers/<slug>/enabled")
@requires("operator")
def trigger_enabled_post(slug: str):
    row = get_trigger(slug)
    enable = request.form.get("enabled") == "1"
    update_trigger(row, {"enabled": enable})
    word = "enabled" if enable else "disabled"
    return done(f"Trigger {slug} {word}.", same_site_path(request.form.get("next"), "/triggers"))


@bp.post("/triggers/<slug>/delete")
@requires("operator")
def trigger_delete_post(slug: str):
    row = get_trigger(slug)
    db.write(lambda conn: conn.execute("DELETE FROM triggers WHERE id = ?", (row["id"],)))
    return done(f"Trigger {slug} deleted; its tasks and deliveries stay.", "/triggers")


@bp.post("/triggers/<slug>/secret")
@requires("operator")
def trigger_secret_post(slug: str):
    row = get_trigger(slug)
    secret = rotate_secret(row)
    return secret_page(
        "triggers/secret.html", 200, trigger=row, secret=secret, url=webhook_url(slug),
        created=False, example=hook_example(row),
    )  # fmt: skip


def hook_example(row) -> dict[str, str | None]:
    """A body for the curl example that the trigger matches and its template renders."""
    payload, event = form_sample(form_of(row))
    return {"body": shlex.quote(json.dumps(payload)), "event": event}


# --- preview, test event, run now ----------------------------------------------------------


def sample_from_form() -> tuple[Any, str | None, str | None]:
    """Return (payload, event, error) from the preview form: a past delivery or the sample."""
    event = request.form.get("event", "").strip()[:100] or None
    delivery_id = request.form.get("delivery_id", "").strip()
    if delivery_id:
        if not delivery_id.isdigit():
            return None, event, "Choose a delivery from the list."
        row = db.query_one("SELECT event, body FROM deliveries WHERE id = ?", (int(delivery_id),))
        if row is None:
            return None, event, f"There is no delivery #{delivery_id}."
        try:
            return loads(row["body"] or b"{}"), row["event"], None
        except ValueError:
            return None, event, "That delivery's body is not JSON."
    try:
        payload = loads(request.form.get("payload", "").strip() or "{}")
    except ValueError as exc:
        return None, event, f"The sample payload is not valid JSON: {exc}"
    return payload, event, None


@bp.post("/triggers/new/preview")
@requires("developer")
def trigger_new_preview_post():
    """Preview a trigger not saved yet, from the form as typed."""
    return preview(None)


@bp.post("/triggers/<slug>/preview")
@requires("developer")
def trigger_preview_post(slug: str):
    return preview(get_trigger(slug))


# What a trigger not saved yet is, before the form's fields go over it.
BLANK_ROW = {"slug": "new", "name": "", "kind": "webhook", "enabled": 1, "agent": None,
             "prompt_template": "", "injection_policy": "flag", "concurrency_key": None,
             "match": "{}", "report": "auto", "priority": 0, "max_attempts": None,
             "timeout_s": None, "concurrency_limit": None,
             **{f: "[]" for f in LIST_FIELDS}}  # fmt: skip


def typed_row(stored) -> dict:
    """The trigger as the form has it now: what was typed over what is stored."""
    f = request.form
    row = dict(stored) if stored is not None else dict(BLANK_ROW)
    if stored is None and f.get("kind") in KINDS:
        row["kind"] = f["kind"]
    for name in ("prompt_template", "injection_policy", "concurrency_key"):
        if f.get(name):
            row[name] = f[name]
    for name in LIST_FIELDS:
        if name in f:
            row[name] = json.dumps([i.strip() for i in f[name].split(",") if i.strip()])
    try:
        typed = loads(f.get("match", "").strip() or "null")
        if isinstance(typed, dict):
            row["match"] = json.dumps(typed)
    except ValueError:
        pass  # the form says so when saved; the preview keeps the stored filter
    return row


def preview(stored):
    """Render the prompt as typed in the form (saved or not) against a sample or a delivery."""
    row = typed_row(stored)
    payload, event, error = sample_from_form()
    result: dict[str, Any] = {"error": error}
    if error is None:
        result["matched"], result["reason"] = match(row, event, payload)
        try:
            planned = plan(row, event, payload, {})
            result.update(prompt=planned["prompt"], flags=planned["flags"],
                          concurrency_key=planned["concurrency_key"])  # fmt: skip
        except prompts.PromptError as exc:
            # A template that cannot render is refused like the API refuses it (422).
            result.update(error=f"The template cannot render: {exc}", code=exc.code)
            return render_template("triggers/_preview.html", result=result), 422
    return render_template("triggers/_preview.html", result=result)


@bp.post("/triggers/<slug>/test")
@requires("operator")
def trigger_test_post(slug: str):
    """Sign the sample with the trigger's secret and post it to the real webhook endpoint."""
    row = get_trigger(slug)
    payload, event, error = sample_from_form()
    if error is None and row["kind"] not in ("webhook", "github"):
        error = "Only webhook and GitHub triggers receive events; use Run now instead."
    github_off = not current_app.config["GITHUB_WEBHOOK_SECRET"]
    if error is None and row["kind"] == "github" and github_off:
        error = "GITHUB_WEBHOOK_SECRET is not set, so GitHub deliveries cannot be verified."
    if error is not None:
        return render_template("triggers/_test.html", error=error), 422
    status, answer = send_test_event(row, payload, event)
    return render_template("triggers/_test.html", status=status, answer=answer, error=None)


def sign_body(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def send_test_event(row, payload: Any, event: str | None) -> tuple[int, dict]:
    """Post a signed event through the app's own webhook route, as a sender would."""
    body = json.dumps(payload).encode()
    delivery = f"dashboard-test-{secrets.token_hex(8)}"
    if row["kind"] == "github":
        path = "/api/webhooks/github/"
        secret = current_app.config["GITHUB_WEBHOOK_SECRET"]
        headers = {"X-GitHub-Event": event or "issues", "X-GitHub-Delivery": delivery,
                   "X-Hub-Signature-256": sign_body(secret, body)}  # fmt: skip
    else:
        path = f"/hooks/{row['slug']}"
        secret = crypto.decrypt(row["secret_enc"])
        headers = {"X-Delivery-Id": delivery, "X-Signature-256": sign_body(secret, body)}
        if event:
            headers["X-Event"] = event
    headers["Content-Type"] = "application/json"
    # A fresh app context: the inner request must not share (or reset) this one's `g`.
    with current_app.app_context():
        resp = current_app.test_client().post(path, data=body, headers=headers)
    return resp.status_code, resp.get_json(silent=True) or {}


@bp.post("/triggers/<slug>/run")
@requires("developer")
def trigger_run_post(slug: str):
    """Start one task from the trigger now, as `POST /api/v1/tasks {"trigger": slug}` does.

    With a payload too, when one is typed: the template sees it as `payload`.
    """
    row = get_trigger(slug)
    typed = request.form.get("params", "")
    typed_payload = request.form.get("payload", "")
    try:
        params = read_params(typed)
        payload = read_payload(typed_payload)
        body = validate(TaskIn, {"trigger": slug, "params": params})  # the API's limits
        task_id = queue_task(plan_from_trigger(slug, body.params, payload), g.key["id"])
    except (ApiError, Busy) as refusal:
        exc = as_api_error(refusal) if isinstance(refusal, Busy) else refusal
        details = exc.details if isinstance(exc.details, list) else []
        error = "; ".join([exc.message, *(d["message"] for d in details)])
        run = {"params": typed, "payload": typed_payload, "error": error}
        return form_page(form_of(row), {}, trigger=row, status=exc.status, run=run)
    return redirect(url_for("dashboard.task_get", task_id=task_id), 303)


def read_payload(text: str) -> Any:
    """The Run now payload: JSON, or None when left blank."""
    if not text.strip():
        return None
    try:
        return loads(text)
    except ValueError as exc:
        raise ApiError(422, f"the payload is not valid JSON: {exc}") from None


def read_params(text: str) -> dict[str, str]:
    """KEY=VALUE lines (blank ones skipped, spaces around both trimmed) as a run's params."""
    params = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ApiError(422, f"line {number}: write KEY=VALUE")
        params[key.strip()] = value.strip()
    return params
