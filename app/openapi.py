"""OpenAPI 3.1 built from the registered routes and the models they declare, and /docs.

A view declares its request body with @body_model (the model it validates
with), its query parameters with @query_model and its answer with
@answer_model (app/api.py). Those models live in the feature modules beside
the routes that declare them, on the bases in app/api.py (Body, Query, Page,
Answer, Partial); this module only reads them off the views.
"""

from __future__ import annotations

import json
import re
from typing import Any

from flask import Blueprint, current_app, jsonify, render_template
from markupsafe import Markup, escape
from pydantic import BaseModel

bp = Blueprint("openapi", __name__)
REF = "#/components/schemas/{model}"
ERROR_REF = {"$ref": "#/components/schemas/Error"}
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {},
            },
        }
    },
}
TOKEN_PARAM = {
    "name": "token",
    "in": "query",
    "required": False,
    "schema": {"type": "string"},
    "description": "a token from POST /api/v1/stream-tokens, for EventSource (no headers)",
}


def _path(rule: str) -> tuple[str, list[dict]]:
    params = []
    for conv, name in re.findall(r"<(?:(\w+):)?(\w+)>", rule):
        kind = "integer" if conv == "int" else "string"
        params.append({"name": name, "in": "path", "required": True, "schema": {"type": kind}})
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule), params


def first_paragraph(text: str) -> str:
    """A docstring's first paragraph on one line: the rest is for whoever reads the code."""
    return " ".join(text.strip().split("\n\n")[0].split())


def _component(model: type[BaseModel], schemas: dict) -> dict:
    """Add `model` (and the models it uses) to `schemas`; return a $ref to it."""
    schema = model.model_json_schema(ref_template=REF)
    for name, sub in [*schema.pop("$defs", {}).items(), (model.__name__, schema)]:
        if "description" in sub:
            sub["description"] = first_paragraph(sub["description"])
        schemas[name] = sub
    return {"$ref": REF.format(model=model.__name__)}


def _unwrap(schema: dict) -> dict:
    """`X | None` as X: a query parameter left out is the None."""
    options = [s for s in schema.get("anyOf", []) if s.get("type") != "null"]
    if len(options) == 1:
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        return {**options[0], **rest}
    return schema


def model_params(model: type[BaseModel], where: str = "query") -> list[dict]:
    """A model's fields as parameters in the query or the headers (named by their aliases)."""
    schema = model.model_json_schema()
    params = []
    for name, prop in schema.get("properties", {}).items():
        prop = _unwrap({k: v for k, v in prop.items() if k != "title"})
        if prop.get("default", 0) is None:
            del prop["default"]
        param = {"name": name, "in": where, "required": name in schema.get("required", [])}
        if "description" in prop:
            param["description"] = prop.pop("description")
        params.append({**param, "schema": prop})
    return params


def operation(rule: Any, method: str, view: Any, schemas: dict) -> dict:
    """One operation of the spec, from what the view declares."""
    _, params = _path(rule.rule)
    query = getattr(view, "query_model", None)
    if query is not None:
        params = params + model_params(query)
    headers = getattr(view, "header_model", None)
    if headers is not None:
        params = params + model_params(headers, "header")
    if getattr(view, "accepts_token", False):
        params = [*params, TOKEN_PARAM]
    answer = getattr(view, "answer_model", None)
    status = str(getattr(view, "answer_status", 200))
    if answer is None and hasattr(view, "answer_status"):
        ok: dict = {"description": "no content"}
    elif answer is not None:
        described = {"description": first_paragraph(answer.__doc__ or "success")}
        ok = described | {"content": {"application/json": {"schema": _component(answer, schemas)}}}
    elif getattr(view, "accepts_token", False):
        status, ok = (
            "200",
            {"description": "server-sent events", "content": {"text/event-stream": {}}},
        )
    elif getattr(view, "ndjson_model", None) is not None:  # messages/stream.py
        status, ok = "200", {"description": "NDJSON, one line per input line",
                             "content": {"application/x-ndjson": {}}}  # fmt: skip
    else:
        status, ok = "2XX", {"description": "success", "content": {"application/json": {}}}
    op: dict = {
        "operationId": f"{rule.endpoint}.{method.lower()}",
        "summary": first_paragraph(view.__doc__ or rule.endpoint),
        "parameters": params,
        "responses": {
            status: ok,
            "default": {
                "description": "an error",
                "content": {"application/json": {"schema": ERROR_REF}},
            },
        },
    }
    role = getattr(view, "required_role", None)
    if role:
        op["security"] = [{"apiKey": []}, {"bearer": []}]
        op["x-required-role"] = role
    body = getattr(view, "body_model", None)
    if body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _component(body, schemas)}},
        }
    lines = getattr(view, "ndjson_model", None)
    if lines is not None:  # the model of each line
        op["requestBody"] = {
            "required": True,
            "content": {"application/x-ndjson": {"schema": _component(lines, schemas)}},
        }
    return op


def build_spec() -> dict:
    paths: dict[str, dict] = {}
    schemas: dict[str, dict] = {"Error": ERROR_SCHEMA}
    for rule in current_app.url_map.iter_rules():
        if not (rule.rule.startswith("/api/") or rule.rule.startswith("/hooks/")):
            continue
        view = current_app.view_functions[rule.endpoint]
        path, _ = _path(rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = operation(rule, method, view, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Agented", "version": "1"},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }


def cached() -> dict:
    """The spec and the /docs operations, built once per app: routes do not change after start.

    Building takes ~150 ms of pydantic schema work, which would hold up the event loop.
    """
    store = current_app.extensions.setdefault("agented.openapi", {})
    if "spec" not in store:
        store["spec"] = build_spec()
        store["ops"] = rendered(store["spec"])
    return store


@bp.get("/openapi.json")
def openapi_json():
    return jsonify(cached()["spec"])


# --- the /docs page ---------------------------------------------------------------------


def code_spans(text: str) -> Markup:
    """Escape `text` and show its `backticked` parts as code."""
    parts = str(escape(text)).split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick stays as it is
        parts[-2:] = [parts[-2] + "`" + parts[-1]]
    return Markup("".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts)))


def _name(ref: str) -> str:
    return ref.rsplit("/", 1)[1]


def type_of(schema: dict) -> str:
    """A short type for a field: string, array of Task, Task or null, "retry" | "cancel"."""
    if "$ref" in schema:
        return _name(schema["$ref"])
    if "anyOf" in schema or "oneOf" in schema:
        return " or ".join(type_of(s) for s in schema.get("anyOf") or schema["oneOf"])
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return " | ".join(json.dumps(v) for v in schema["enum"])
    kind = schema.get("type")
    if kind == "array" and schema.get("items"):
        return f"array of {type_of(schema['items'])}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {type_of(schema['additionalProperties'])}"
    return kind or "any"


NOTES = {
    "minimum": "≥ {}", "maximum": "≤ {}", "exclusiveMinimum": "> {}", "exclusiveMaximum": "< {}",
    "minLength": "at least {} characters", "maxLength": "at most {} characters",
    "minItems": "at least {} items", "maxItems": "at most {} items", "pattern": "matches {}",
}  # fmt: skip


def notes(schema: dict) -> str:
    """The constraints, default and description of a field, in a line."""
    schema = _unwrap(schema)
    bits = [schema["description"]] if schema.get("description") else []
    bits += [text.format(schema[key]) for key, text in NOTES.items() if key in schema]
    bits = [b.replace("at least 1 items", "at least 1 item") for b in bits]
    if "default" in schema and schema["default"] not in (None, [], {}):
        bits.append(f"default {json.dumps(schema['default'])}")
    return "; ".join(bits)


def _models_in(schema: dict) -> list[str]:
    """The component names a field's value may be (itself, its items, its options)."""
    if "$ref" in schema:
        return [_name(schema["$ref"])]
    found = []
    for sub in [schema.get("items"), schema.get("additionalProperties"), *schema.get("anyOf", [])]:
        if isinstance(sub, dict):
            found += _models_in(sub)
    return found


def fields(schema: dict, schemas: dict, depth: int = 0, seen: frozenset = frozenset()) -> list:
    """Rows for an object's fields, with the fields of the models they hold indented below."""
    rows = []
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        rows.append({"depth": depth, "name": name, "type": type_of(prop),
                     "required": name in required, "notes": code_spans(notes(prop))})  # fmt: skip
        for model in _models_in(prop):
            if model not in seen:
                rows += fields(schemas[model], schemas, depth + 1, seen | {model})
    return rows


def shapes(schema: dict, schemas: dict) -> list[dict]:
    """A body or answer as one or more shapes (a model that is one of several: each of them)."""
    if "$ref" in schema:
        name = _name(schema["$ref"])
        target = schemas[name]
        options = target.get("anyOf") or target.get("oneOf")
        if options:
            return [s for option in options for s in shapes(option, schemas)]
        return [{"name": name, "description": code_spans(target.get("description", "")),
                 "fields": fields(target, schemas, 0, frozenset({name}))}]  # fmt: skip
    return [{"name": type_of(schema), "description": "", "fields": fields(schema, schemas)}]


def _answers(responses: dict, schemas: dict) -> list[dict]:
    found = []
    for status, answer in responses.items():
        if status == "default":
            continue
        content: dict[str, dict] = answer.get("content", {})
        kind, media = next(iter(content.items()), ("", {}))
        schema = media.get("schema")
        found.append({"status": status, "description": answer["description"], "media": kind,
                      "shapes": shapes(schema, schemas) if schema else []})  # fmt: skip
    return found


def rendered(spec: dict) -> list[dict]:
    """The operations of `spec` as the /docs page shows them, every $ref resolved."""
    schemas = spec["components"]["schemas"]
    ops = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            params = [
                p | {"type": type_of(p["schema"]), "notes": code_spans(notes(p | p["schema"]))}
                for p in op["parameters"]
            ]
            content = op.get("requestBody", {}).get("content", {})
            # An NDJSON body (messages/stream.py) shows the model of one line.
            body = content.get("application/json") or content.get("application/x-ndjson") or {}
            ops.append({
                "method": method, "path": path, "summary": code_spans(op["summary"]),
                "role": op.get("x-required-role"), "params": params,
                "body": shapes(body["schema"], schemas) if body else [],
                "answers": _answers(op["responses"], schemas),
            })  # fmt: skip
    return ops


@bp.get("/docs")
def docs():
    return render_template("docs.html", ops=cached()["ops"])
