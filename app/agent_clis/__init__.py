"""Understand what each AI coding CLI prints in its streaming JSON mode.

One module per backend turns a decoded event into a readable step (`step`) and
into usage facts (`facts`); app/commands.py looks them up here by backend. The
shapes come from running the real CLIs (claude 2.1, codex 0.169, gemini 0.61,
opencode 1.18) against a local mock of their vendor APIs; the captured lines
live in tests/fakes/samples/ and the tests replay them. Everything here is pure
and defensive: CLIs change their formats, so a missing or odd field yields None,
never an exception.

Besides usage, `facts` reports what the assistant said, so the hub can keep the
run's final answer (UsageTracker in app/commands.py puts it together):
  "answer"      the CLI's own final answer for the run; it wins over replies
  "reply"       one whole reply; it replaces the last one
  "reply_part"  a piece of the reply being written; pieces are joined
  "reply_end"   the reply being written is over (a tool ran, the user spoke, a
                new step began): the next piece starts a new reply
"""

from __future__ import annotations

import json
from collections.abc import Callable

from app.agent_clis import claude, codex, gemini, opencode

# Bigger lines are not parsed: a JSON decode of many megabytes would stall the
# gevent loop, and no event we care about (usage, errors) is that large.
MAX_JSON_LINE = 8 * 1024 * 1024


def load(line: str | bytes) -> dict | None:
    """Decode one output line as a JSON object, or None."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    line = line.strip()
    if not line.startswith("{") or len(line) > MAX_JSON_LINE:
        return None
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


STEPS: dict[str, Callable[[dict], dict | None]] = {
    "claude": claude.step,
    "codex": codex.step,
    "gemini": gemini.step,
    "opencode": opencode.step,
}
FACTS: dict[str, Callable[[dict], dict]] = {
    "claude": claude.facts,
    "codex": codex.facts,
    "gemini": gemini.facts,
    "opencode": opencode.facts,
}
