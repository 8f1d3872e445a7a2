"""Samples that fit a trigger: a payload its filters match and its template renders.

Read from the parsed template (never by running it) for the trigger page's preview,
its Run now and the webhook secret page's curl example (issue 16: the sample body did
not fit the template).
"""

from __future__ import annotations

import re
import time
from copy import deepcopy
from typing import Any

from jinja2 import TemplateSyntaxError, nodes

from app import prompts

SAMPLES: dict[str, dict[str, Any]] = {
    "webhook": {"title": "Example event", "name": "world"},
    "github": {
        "action": "opened",
        "issue": {"number": 1, "title": "Example issue", "labels": [{"name": "agent"}]},
        "repository": {"full_name": "octo/example"},
        "sender": {"login": "octocat"},
    },
}


def template_reads(template: str) -> tuple[dict, list[str]]:
    """What a template reads: a payload holding each `payload.…` path, and the params' names.

    From the parsed template, not by running it: `{% for l in payload.issue.labels %}
    {{ l.name }}` gives issue.labels[0].name.
    """
    try:
        tree = prompts.ENV.parse(template)
    except (TemplateSyntaxError, RecursionError):
        return {}, []

    def chain(node) -> tuple[str | None, list]:
        path: list = []
        while isinstance(node, nodes.Getattr | nodes.Getitem):
            if isinstance(node, nodes.Getattr):
                path.append(node.attr)
            elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str | int):
                path.append(node.arg.value)
            else:
                return None, []
            node = node.node
        return (node.name, path[::-1]) if isinstance(node, nodes.Name) else (None, [])

    loops = {}
    for loop in tree.find_all(nodes.For):
        root, path = chain(loop.iter)
        if isinstance(loop.target, nodes.Name) and root in ("payload", "params"):
            loops[loop.target.name] = (root, [*path, 0])
    payload: dict = {}
    params: list[str] = []
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        root, path = chain(node)
        if root in loops:
            root, path = loops[root][0], loops[root][1] + path
        if root == "payload" and path:
            put(payload, path, f"example {next(str(p) for p in reversed(path) if str(p))}")
        elif root == "params" and path and isinstance(path[0], str) and path[0] not in params:
            params.append(path[0])
    return payload, params


def put(target: Any, path: list, leaf: Any, force: bool = False) -> None:
    """Set `leaf` at `path` (keys and list indexes), making the dicts and lists on the way.

    A value already there stays unless `force`; a path that disagrees with what an
    earlier one made (a key into a list) is skipped.
    """
    node = target
    for i, key in enumerate(path):
        if isinstance(key, int) != isinstance(node, list):
            return
        if isinstance(node, list):
            node.extend([None] * (key + 1 - len(node)))
            present = node[key] is not None
        else:
            present = key in node
        if i == len(path) - 1:
            if force or not present:
                node[key] = leaf
            return
        if not (present and isinstance(node[key], dict | list)):
            node[key] = [] if isinstance(path[i + 1], int) else {}
        node = node[key]


def sample_for(kind: str, template: str, lists: dict[str, list[str]], wanted: Any) -> tuple:
    """A payload and an event name that the trigger's filters match and its template renders."""
    if kind == "cron":
        return {"scheduled_at": time.time()}, "schedule"
    first = {name: values[0] for name, values in lists.items() if values}
    event = first.get("events") or ("issues" if kind == "github" else None)
    payload: Any = deepcopy(SAMPLES["github"]) if kind == "github" else {}
    read, _params = template_reads(template)
    if kind == "github" and str(event).startswith("pull_request") and "issue" not in read:
        payload["pull_request"] = {"number": 1, "title": "Example pull request"}
        del payload["issue"]
    merge(payload, read)
    if "actions" in first:
        payload["action"] = first["actions"]
    if "repositories" in first:
        put(payload, ["repository", "full_name"], first["repositories"], force=True)
    if "labels" in first:
        where = "pull_request" if "pull_request" in payload else "issue"
        put(payload, [where, "labels"], [{"name": first["labels"]}], force=True)
    if "branches" in first:
        payload["ref"] = "refs/heads/" + first["branches"].replace("*", "main")
    for path, value in (wanted if isinstance(wanted, dict) else {}).items():
        steps = [int(p[1:-1]) if p.startswith("[") else p for p in STEPS.findall(path)]
        put(payload, steps, value[0] if isinstance(value, list) and value else value, True)
    if not payload and kind == "webhook":
        payload = deepcopy(SAMPLES["webhook"])
    return payload, event


STEPS = re.compile(r"[^.\[\]]+|\[\d+\]")  # as app/matching.py dig() reads a path


def merge(into: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        elif key not in into:
            into[key] = value
