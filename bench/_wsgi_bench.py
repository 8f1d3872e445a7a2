"""What bench/ingest.py and bench/dispatch.py serve: the production app plus a hello route.

`app.wsgi.application` is exactly what gunicorn serves in production (writer,
ExecutionService, upkeep loops all started the same way); the only addition is
GET /bench/hello, the reference every figure is a ratio against. It is public by
path (the guard only protects /api/* and /admin/*) and passes the same app-wide
hooks as every request: request id, JSON request log, security headers, CORS and
the rate limiter.
"""

import sys

if __name__ == "__main__":
    # `just bench` runs every bench/*.py; this one is served by gunicorn, not run.
    print("the WSGI app of bench/ingest.py and bench/dispatch.py; nothing to run on its own")
    sys.exit(0)

from app.wsgi import application  # noqa: E402


@application.get("/bench/hello")
def bench_hello():
    return "ok"
