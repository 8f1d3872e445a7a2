"""API keys: an admin creates them (the key is shown once) and revokes them."""

from __future__ import annotations

import time

from flask import g, render_template, request

from app import db
from app.api import or_404
from app.auth import ROLES, allows, create_key, requires
from app.dashboard import bp
from app.dashboard.common import done, secret_page


def keys_page(form: dict | None = None, errors: dict | None = None, status: int = 200):
    # Listing keys is an admin's business (as in the API); others see their own key only.
    if allows(g.key, "admin"):
        rows = db.query_all("SELECT * FROM api_keys ORDER BY revoked_at IS NOT NULL, id DESC")
    else:
        rows = db.query_all("SELECT * FROM api_keys WHERE id = ?", (g.key["id"],))
    return render_template(
        "keys/list.html", keys=rows, roles=ROLES, form=form or {"name": "", "role": "viewer"},
        errors=errors or {},
    ), status  # fmt: skip


@bp.get("/keys")
@requires("viewer")
def keys_get():
    return keys_page()


@bp.post("/keys")
@requires("admin")
def keys_post():
    form = {"name": request.form.get("name", "").strip(), "role": request.form.get("role", "")}
    errors = {}
    if not 1 <= len(form["name"]) <= 100:
        errors["name"] = "Give the key a name of 1 to 100 characters (who or what uses it)."
    if form["role"] not in ROLES:
        errors["role"] = f"Choose one of: {', '.join(ROLES)}."
    if errors:
        return keys_page(form, errors, 422)
    key_id, raw = db.write(lambda conn: create_key(conn, form["name"], form["role"]))
    row = db.query_one("SELECT * FROM api_keys WHERE id = ?", (key_id,))
    return secret_page("keys/created.html", 201, key=row, raw=raw)


@bp.post("/keys/<int:key_id>/revoke")
@requires("admin")
def key_revoke_post(key_id: int):
    row = or_404(db.query_one("SELECT * FROM api_keys WHERE id = ?", (key_id,)), "key")
    db.write(
        lambda conn: conn.execute(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?",
            (time.time(), key_id),
        )
    )
    return done(f"Key {row['name']} ({row['prefix']}…) revoked; it stops working now.", "/keys")
