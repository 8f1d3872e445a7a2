"""Helpers every JSON route shares: body parsing, cursors, load-or-404, and the bases
of the models routes declare (Body, Query, Page, Answer, Partial)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app, request
from flask.json.provider import DefaultJSONProvider
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.errors import ApiError

M = TypeVar("M", bound=BaseModel)


class Body(BaseModel):
    """Base for request bodies: unknown fields are an error, not ignored."""

    model_config = ConfigDict(extra="forbid")


def loads(text: str | bytes) -> Any:
    """json.loads for text from outside: nesting too deep for the parser is bad JSON too.

    Python's parser recurses per level, so "[[[[…" a few thousand deep raises
    RecursionError, which is not a ValueError and would end as a 500.
    """
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


class JsonProvider(DefaultJSONProvider):
    """Flask's JSON, with request bodies parsed by `loads` (get_json then says 400)."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads(s) if not kwargs else super().loads(s, **kwargs)


def json_body() -> Any:
    """The request's JSON body, or the matching 4xx."""
    if not request.is_json:
        raise ApiError(415, "send the body as application/json")
    data = request.get_json(silent=True)
    if data is None:
        raise ApiError(400, "the body is not valid JSON")
    return data


def parse_body(model: type[M]) -> M:
    """Parse the JSON body into `model` or raise the matching 4xx."""
    return validate(model, json_body())


def validate(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = [
            {"field": ".".join(str(p) for p in err["loc"]), "message": err["msg"]}
            for err in exc.errors(include_url=False, include_input=False)
        ]
        raise ApiError(422, "the body does not match the schema", details=details) from None


def body_model(model: type[BaseModel]) -> Callable:
    """Record the request body model of a view, for /openapi.json."""

    def mark(view: Callable) -> Callable:
        view.body_model = model  # type: ignore[attr-defined]
        return view

    return mark


def ndjson_model(model: type[BaseModel]) -> Callable:
    """Record the model of each line of a view's NDJSON request body, for /openapi.json."""

    def mark(view: Callable) -> Callable:
        view.ndjson_model = model  # type: ignore[attr-defined]
        return view

    return mark


class Query(BaseModel):
    """Base for the query parameters a route reads, as /openapi.json describes them."""


class Page(Query):
    cursor: str | None = Field(None, description="next_cursor of the previous page")
    limit: int = Field(50, ge=1, le=500, description="at most this many")


def csv_field(what: str) -> Any:
    return Field(None, description=f"comma-separated {what}; any of them matches")


def query_model(model: type[BaseModel]) -> Callable:
    """Record the query parameters of a view, for /openapi.json.

    The view still reads request.args itself (arg_int and the like), so a value
    is checked in one place; tests/test_openapi.py holds the declared bounds to
    what the view refuses.
    """

    def mark(view: Callable) -> Callable:
        view.query_model = model  # type: ignore[attr-defined]
        return view

    return mark


def header_model(model: type[BaseModel]) -> Callable:
    """Record the request headers a view reads, for /openapi.json (aliases are their names)."""

    def mark(view: Callable) -> Callable:
        view.header_model = model  # type: ignore[attr-defined]
        return view

    return mark


# An Answer lists every field a route sends; a Partial one the fields clients
# rely on, with more allowed. tests/test_openapi.py checks real answers against them.


class Answer(BaseModel):
    """Base for the JSON a route answers with."""


class Partial(Answer):
    model_config = ConfigDict(extra="allow")


def answer_model(model: type[BaseModel] | None, status: int = 200) -> Callable:
    """Record what a view answers with on success, for /openapi.json (tests check answers).

    None: an empty answer, such as a 204.
    """

    def mark(view: Callable) -> Callable:
        view.answer_model = model  # type: ignore[attr-defined]
        view.answer_status = status  # type: ignore[attr-defined]
        return view

    return mark


def public_url(path: str) -> str:
    """`path` on the address clients reach the hub at (AGENTED_PUBLIC_URL, else this request's)."""
    base = current_app.config["PUBLIC_URL"] or request.host_url
    return base.rstrip("/") + path


def or_404(row: Any, what: str) -> Any:
    if row is None:
        raise ApiError(404, f"{what} not found")
    return row


def encode_cursor(values: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def decode_cursor(raw: str | None) -> dict | None:
    if not raw:
        return None
    try:
        padded = raw + "=" * (-len(raw) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded))
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the cursor is not valid") from None
    if not isinstance(values, dict):
        raise ApiError(400, "the cursor is not valid")
    return values


def arg_int(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise ApiError(400, f"{name} must be between {lo} and {hi}")
    return value


def arg_float(name: str, default: float, lo: float, hi: float) -> float:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be a number") from None
    if not lo <= value <= hi:
        raise ApiError(400, f"{name} must be between {lo:g} and {hi:g}")
    return value


def newest_first(table: str, where: list[str], params: list, default: int = 50):
    """Return one page of `table` rows, newest id first, and the next page's cursor or None."""
    from app import db

    cursor = decode_cursor(request.args.get("cursor"))
    if cursor is not None:
        if not isinstance(cursor.get("id"), int):
            raise ApiError(400, "the cursor is not valid")
        where, params = [*where, "id < ?"], [*params, cursor["id"]]
    limit = arg_int("limit", default, 1, 500)
    # `table` is always a literal from the calling module, never request input.
    sql = f"SELECT * FROM {table}" + (" WHERE " + " AND ".join(where) if where else "")
    rows = db.query_all(sql + " ORDER BY id DESC LIMIT ?", [*params, limit + 1])
    next_cursor = encode_cursor({"id": rows[limit - 1]["id"]}) if len(rows) > limit else None
    return rows[:limit], next_cursor
