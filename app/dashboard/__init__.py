"""The dashboard pages."""

from __future__ import annotations

from flask import Blueprint, g, redirect, render_template, url_for

bp = Blueprint("dashboard", __name__)


@bp.get("/")
def index():
    if g.get("key") is None:
        return redirect(url_for("auth.signin_get"))
    return render_template("index.html")
