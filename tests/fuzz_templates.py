"""`just fuzz` step: post hostile prompt templates to a running server; none may get a 5xx.

Usage: python -m tests.fuzz_templates http://127.0.0.1:PORT API_KEY
Each must be refused (422) in preview and at save, and /health/live must answer after each.
"""

from __future__ import annotations

import json
import secrets
import sys
import urllib.error
import urllib.request

from tests.test_templates_hostile import HOSTILE

MORE = [
    '{% set ns = namespace(s="a") %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}'
    "{% endfor %}",
    '{% set s = "a" * 200000 %}{{ [s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s] }}',
    '{{ range(100000) | map("center", 100000) | list }}',
    '{{ ("a" * 100000).replace("", "b" * 1000) }}',
    '{{ "%0999999999d" % 1 }}',
    '{{ "{:>999999999}".format(1) }}',
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    '{{ 1 + "a" }}',
    "{{ 99 ** 99 ** 9 }}",
    '{{ [1] | batch(100000000, "x") | list }}',
    '{{ ("x " * 100000) | wordwrap(1, wrapstring="y" * 100000) }}',
]


def send(base: str, key: str, method: str, path: str, body: object = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def main(base: str, key: str) -> int:
    name = f"fuzz-{secrets.token_hex(4)}"
    send(
        base, key, "POST", "/api/v1/agents", {"name": name, "backend": "shell", "command": ["cat"]}
    )
    trigger = {"name": name, "kind": "webhook", "agent": name, "prompt_template": "x"}
    status, body = send(base, key, "POST", "/api/v1/triggers", trigger)
    assert status == 201, (status, body)
    failures = 0
    for template in [t for t, _code in HOSTILE] + MORE:
        for method, path, payload in (
            ("POST", f"/api/v1/triggers/{body['slug']}/preview", {"prompt_template": template}),
            ("PATCH", f"/api/v1/triggers/{body['slug']}", {"prompt_template": template}),
        ):
            status, answer = send(base, key, method, path, payload)
            code = (answer.get("error") or {}).get("code")
            if status >= 500 or status == 200 and method == "POST":
                failures += 1
                print(f"FAIL {method} {path} {template[:60]!r}: {status} {answer}")
            else:
                print(f"ok   {status} {code or ''} {template[:60]!r}")
        live, _ = send(base, key, "GET", "/health/live")
        if live != 200:
            failures += 1
            print(f"FAIL /health/live answered {live}")
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
