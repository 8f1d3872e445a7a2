"""Read the fields of a CLI's JSON event defensively, and build steps and usage facts.

A missing or odd field yields None or an empty value, never an exception: CLIs
change their formats between versions.
"""

from __future__ import annotations

import json
from typing import Any

SUMMARY_CHARS = 300


def short(value: Any, limit: int = SUMMARY_CHARS) -> str:
    """Collapse whitespace and cut to a one-line summary."""
    if value is None:
        return ""
    if not isinstance(value, str):
        try:
            value = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            value = str(value)
    text = " ".join(value.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def dict_of(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def str_of(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def int_of(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value == value:  # NaN is not a count
        return int(value)
    return None


def num_of(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def make_step(kind: str, text: Any, **extra: Any) -> dict:
    step = {"kind": kind, "text": short(text)}
    step.update({k: v for k, v in extra.items() if v is not None})
    return step


def tool_summary(args: Any) -> str:
    """Pick the argument a reader wants to see first (command, path, query…)."""
    args = dict_of(args)
    for key in ("command", "cmd", "file_path", "filePath", "path", "pattern", "query", "url"):
        value = args.get(key)
        if isinstance(value, list):
            value = " ".join(str(v) for v in value)
        if isinstance(value, str) and value:
            return value
    return short(args) if args else ""


def usage(
    input_tokens: Any = None,
    output_tokens: Any = None,
    cache_read: Any = None,
    cache_write: Any = None,
    cost: Any = None,
) -> dict:
    """Build one normalised usage fact (input_tokens excludes cached input)."""
    return {
        "input_tokens": int_of(input_tokens),
        "output_tokens": int_of(output_tokens),
        "cache_read_tokens": int_of(cache_read),
        "cache_write_tokens": int_of(cache_write),
        "cost_usd": num_of(cost),
    }
