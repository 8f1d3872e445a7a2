"""OpenAPI 3.1 built from the registered routes and their pydantic body models."""

from __future__ import annotations

import re

from flask import Blueprint, current_app, jsonify, render_template

bp = Blueprint("openapi", __name__)
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


def _path(rule: str) -> tuple[str, list[dict]]:
    params = []
    for conv, name in re.findall(r"<(?:(\w+):)?(\w+)>", rule):
        kind = "integer" if conv == "int" else "string"
        params.append({"name": name, "in": "path", "required": True, "schema": {"type": kind}})
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule), params


def build_spec() -> dict:
    paths: dict[str, dict] = {}
    schemas: dict[str, dict] = {"Error": ERROR_SCHEMA}
    for rule in current_app.url_map.iter_rules():
        if not (rule.rule.startswith("/api/") or rule.rule.startswith("/hooks/")):
            continue
        view = current_app.view_functions[rule.endpoint]
        path, params = _path(rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            op: dict = {
                "operationId": f"{rule.endpoint}.{method.lower()}",
                "summary": (view.__doc__ or rule.endpoint).strip().splitlines()[0],
                "parameters": params,
                "responses": {
                    "default": {
                        "description": "an error",
                        "content": {"application/json": {"schema": ERROR_REF}},
                    },
                    "2XX": {"description": "success", "content": {"application/json": {}}},
                },
            }
            role = getattr(view, "required_role", None)
            if role:
                op["security"] = [{"apiKey": []}, {"bearer": []}]
                op["x-required-role"] = role
            model = getattr(view, "body_model", None)
            if model is not None:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, sub in schema.pop("$defs", {}).items():
                    schemas[name] = sub
                schemas[model.__name__] = schema
                op["requestBody"] = {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": f"#/components/schemas/{model.__name__}"}
                        }
                    },
                }
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Agented", "version": "1"},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }


@bp.get("/openapi.json")
def openapi_json():
    return jsonify(build_spec())


@bp.get("/docs")
def docs():
    return render_template("docs.html", spec=build_spec())
