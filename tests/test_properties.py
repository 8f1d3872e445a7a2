"""Property tests: backoff, trigger filters and prompt rendering hold for any input."""

from __future__ import annotations

import json
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from app import prompts
from app.executions import backoff
from app.matching import dig, match

CFG = {"BACKOFF_BASE_S": 5.0, "BACKOFF_CAP_S": 300.0, "BACKOFF_JITTER": 0.2}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(st.integers(min_value=1, max_value=60), st.integers())
def test_it_backs_off_within_the_jittered_exponential_envelope(attempt, seed):
    delay = backoff(attempt, CFG, random.Random(seed))
    nominal = min(CFG["BACKOFF_CAP_S"], CFG["BACKOFF_BASE_S"] * 2 ** (attempt - 1))
    assert nominal * 0.8 - 1e-9 <= delay <= nominal * 1.2 + 1e-9
    assert delay <= CFG["BACKOFF_CAP_S"] * 1.2 + 1e-9


def trigger_row(**filters) -> dict:
    row = {f: json.dumps(filters.get(f, [])) for f in
           ("selector", "repositories", "events", "actions", "labels", "branches")}  # fmt: skip
    row["match"] = json.dumps(filters.get("match", {}))
    row["enabled"] = 1
    return row


@given(json_values, st.one_of(st.none(), st.text(max_size=10)))
def test_it_matches_everything_without_filters_and_never_raises(payload, event):
    assert match(trigger_row(), event, payload) == (True, "matched")
    matched, reason = match(
        trigger_row(events=["issues"], labels=["bug"], branches=["main"], match={"a.b[0]": 1}),
        event,
        payload,
    )
    assert isinstance(matched, bool) and reason


@given(st.dictionaries(st.text(min_size=1, max_size=5), json_values, max_size=5), st.text())
def test_it_digs_without_raising(payload, path):
    dig(payload, path)


@given(json_values, st.sampled_from(["warn", "flag", "block"]))
@settings(max_examples=200)
def test_it_renders_any_payload_cleanly_or_refuses_it(payload, policy):
    try:
        out = prompts.render("Event: {{ payload }}", {"payload": payload}, policy)
    except prompts.PromptError as exc:
        assert policy == "block" and "injection" in str(exc)
        return
    assert not prompts.CONTROL.search(out.prompt)
    assert len(out.prompt.encode()) <= prompts.MAX_PROMPT_BYTES
