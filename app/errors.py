"""One JSON error shape for the API, HTML error pages for people."""

from __future__ import annotations

import logging
import sqlite3

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from app import db

log = logging.getLogger("agented.errors")

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """Raise to answer with the JSON error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        details: object = None,
        headers: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or CODES.get(status, "error")
        self.details = details
        self.headers = headers or {}


class DomainError(Exception):
    """A refusal from domain code, which knows nothing of HTTP: the edge maps it.

    Domain functions run inside write transactions and from the CLI and the cron
    clock too, where a status means nothing; each subclass names a kind of
    refusal, and STATUSES below turns it into a status at the HTTP edge.
    """

    def __init__(
        self,
        message: str,
        code: str | None = None,
        details: object = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = details
        self.retry_after = retry_after


class Conflict(DomainError):
    """What was asked clashes with what is stored (a taken slug, a reused key)."""


class Refused(DomainError):
    """The input is well formed but cannot be acted on (a template that cannot render)."""


class Busy(DomainError):
    """Too much work is waiting; try again after `retry_after` seconds."""


STATUSES: dict[type[DomainError], int] = {Conflict: 409, Refused: 422, Busy: 429}


def as_api_error(exc: DomainError) -> ApiError:
    """The HTTP answer for a domain refusal."""
    status = next(s for kind, s in STATUSES.items() if isinstance(exc, kind))
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    return ApiError(status, exc.message, code=exc.code, details=exc.details, headers=headers)


def error_body(code: str, message: str, details: object = None) -> dict:
    return {"error": {"code": code, "message": message, "details": details}}


def error(status: int, message: str, code: str | None = None, details: object = None) -> Response:
    resp = jsonify(error_body(code or CODES.get(status, "error"), message, details))
    resp.status_code = status
    return resp


def wants_json() -> bool:
    path = request.path
    return (
        path.startswith("/api/")
        or path.startswith("/hooks/")
        or path in ("/metrics", "/openapi.json")
        or request.accept_mimetypes.best == "application/json"
    )


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def handle_api_error(exc: ApiError) -> Response:
        log.info(
            "request rejected",
            extra={"status": exc.status, "code": exc.code, "reason": exc.message},
        )
        resp = error(exc.status, exc.message, exc.code, exc.details)
        resp.headers.update(exc.headers)
        return resp

    @app.errorhandler(DomainError)
    def handle_domain_error(exc: DomainError) -> Response:
        return handle_api_error(as_api_error(exc))

    app.register_error_handler(sqlite3.OperationalError, storage_error)
    if db.is_postgres(app.config["DATABASE"]):
        from app import pgsql  # now: gevent has patched by the time the app is made

        app.register_error_handler(pgsql.OperationalError, storage_error)

    @app.errorhandler(HTTPException)
    def handle_http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        headers = {}
        if status == 429:
            # The request limit's own wait (app/security.py); a minute for any other.
            headers["Retry-After"] = str(getattr(exc, "retry_after", None) or 60)
        if status == 405 and exc.get_response().headers.get("Allow"):
            headers["Allow"] = exc.get_response().headers["Allow"]
        if wants_json():
            resp = error(status, exc.description or CODES.get(status, "error"))
        else:
            resp = Response(
                render_template("error.html", status=status, message=exc.description),
                status=status,
            )
        resp.headers.update(headers)
        return resp

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        if wants_json():
            return error(500, "internal error; the request id is in the logs")
        return Response(
            render_template("error.html", status=500, message="Something went wrong."),
            status=500,
        )


def storage_error(exc: Exception) -> Response:
    """Answer a full or failing disk, or an unreachable PostgreSQL, with a clear 503:
    the request stored nothing."""
    api = storage_api_error(exc)
    if wants_json():
        resp = error(api.status, api.message, api.code)
    else:
        shown = api.message if api.status == 503 else "Something went wrong."
        resp = Response(render_template("error.html", status=api.status, message=shown),
                        status=api.status)  # fmt: skip
    resp.headers.update(api.headers)
    return resp


def storage_api_error(exc: Exception) -> ApiError:
    """The answer to a database error: 503 for a full or failing disk or an unreachable
    PostgreSQL (nothing was stored, retry later), 500 for any other."""
    text = str(exc)
    unreachable = not isinstance(exc, sqlite3.Error)  # psycopg's OperationalError
    if not unreachable and "full" not in text and "disk I/O" not in text:
        log.exception("unhandled database error")
        return ApiError(500, "internal error; the request id is in the logs")
    log.error("storage failure: the request was not stored", extra={"error": text})
    cause = "is unreachable" if unreachable else "cannot write (disk full or failing)"
    message = f"the database {cause}; nothing from this request was stored: retry later"
    return ApiError(503, message, code="storage_unavailable", headers={"Retry-After": "30"})
