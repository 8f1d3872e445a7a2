"""One JSON error shape for the API, HTML error pages for people."""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, current_app, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

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

    @app.errorhandler(HTTPException)
    def handle_http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        headers = {}
        if status == 429:
            headers["Retry-After"] = str(_retry_after())
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


def _retry_after() -> int:
    """Seconds until the breached flask-limiter window resets; a minute for other 429s."""
    limiter = current_app.extensions.get("agented.limiter")
    breached = limiter.current_limit if limiter is not None else None
    if breached is None:  # a 429 raised by hand, not by the limiter
        return 60
    # reset_at is a whole second; never promise more than one window.
    window = breached.limit.get_expiry()
    return min(window, max(1, breached.reset_at - int(time.time())))
