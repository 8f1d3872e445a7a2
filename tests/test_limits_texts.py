"""Spend caps, exhausted credits and "reached your limit" texts; the latest reset
across a run's lines; gemini's thinking tokens; opencode's provider/model form."""

from __future__ import annotations

import json

import pytest

from app.commands import UsageTracker, later_limit, rate_limit

NOW = 1_750_000_000
LIMIT_TEXTS = [
    # claude
    "Claude AI usage limit reached|1750003600",
    "You've reached your usage limit. Upgrade your plan or wait for it to reset.",
    "You’ve reached your Opus limit",
    "Spend cap reached · raise it in the Console",
    'API Error: 400 {"type":"error","error":{"type":"invalid_request_error","message":'
    '"You have reached your specified API usage limits. You will regain access on '
    '2026-12-01 at 00:00 UTC."}}',
    'API Error: 400 {"type":"error","error":{"type":"invalid_request_error","message":'
    '"Your credit balance is too low to access the Anthropic API."}}',
    "Credit balance is too low",
    "You are out of credits.",
    # codex
    "You've hit your usage limit. Upgrade to Pro or try again later.",
    '{"type":"error","message":"stream error: insufficient_quota"}',
    "ERROR: Quota exceeded. Check your plan and billing details.",
    # gemini
    "[API Error: Quota exceeded for quota metric 'Generate Content API requests per minute']",
]


@pytest.mark.parametrize("text", LIMIT_TEXTS)
def test_it_recognises_spend_caps_credits_and_reached_limits(text):
    assert rate_limit(text, now=1000)[0] is True


@pytest.mark.parametrize(
    "text",
    [
        "def check_rate_limit(user): return user.requests > RATE_LIMIT",
        "# TODO: back off when we hit a rate limit",
        "spend_cap = settings.MONTHLY_SPEND_CAP  # the cap is configurable",
        "if account.credit_balance < 10: warn('credit balance is low')",
        "raise QuotaError('insufficient quota for the bucket')",
        "creditsOutOfSync = True  # not out of credit limits",
        "the function returns early when the limit is reached",
        # The agent's own work quoting the texts is not the CLI being stopped.
        json.dumps({"type": "assistant", "message": {"content": [{"type": "text",
                    "text": "Handle 'Credit balance is too low' and insufficient_quota"}]}}),
        json.dumps({"type": "item.completed", "item": {"type": "agent_message",
                    "text": "You've reached your usage limit is shown when out of credits"}}),
        json.dumps({"type": "message", "role": "assistant",
                    "content": "Spend cap reached: we now print this string"}),
    ],
)  # fmt: skip
def test_it_ignores_code_and_agent_text_about_limits(text):
    assert rate_limit(text, now=1000) == (False, None)


def test_it_takes_the_latest_plausible_reset_of_a_whole_output():
    text = "\n".join(
        [
            '{"type":"system","subtype":"api_retry","error":"rate_limit","retry_delay_ms":30000}',
            "Claude AI usage limit reached|1750007200",
            "Claude AI usage limit reached|1700000000",  # a misread past time
        ]
    )
    assert rate_limit(text, now=NOW) == (True, 1750007200)


def test_it_keeps_the_latest_reset_across_lines():
    lines = [
        "plain progress line",
        '{"type":"system","subtype":"api_retry","error":"rate_limit","retry_delay_ms":30000}',
        "Claude AI usage limit reached|1750007200",
        "rate limit exceeded",  # no reset on this line: the one seen stays
        '{"type":"system","subtype":"api_retry","error":"rate_limit","retry_delay_ms":5000}',
    ]
    seen: tuple[bool, float | None] = (False, None)
    for line in lines:
        seen = later_limit(seen, rate_limit(line, now=NOW))
    assert seen == (True, 1750007200)
    assert later_limit((False, None), (False, None)) == (False, None)
    assert later_limit((False, None), (True, None)) == (True, None)
    assert later_limit((True, 50.0), (False, None)) == (True, 50.0)


def _gemini_result(stats: dict) -> bytes:
    event = {"type": "result", "status": "success", "stats": stats}
    return json.dumps(event).encode()


def test_it_counts_geminis_thinking_tokens_as_output():
    tracker = UsageTracker("gemini")
    # total_tokens = input + answer + thoughts: 1000 + 40 + 160
    tracker.feed(_gemini_result({"total_tokens": 1200, "input_tokens": 1000, "output_tokens": 40,
                                 "cached": 100, "input": 900}))  # fmt: skip
    record = tracker.record()
    assert record["output_tokens"] == 200
    assert record["input_tokens"] == 900 and record["cache_read_tokens"] == 100


def test_it_takes_geminis_thoughts_field_when_it_is_given():
    tracker = UsageTracker("gemini")
    models = {"gemini-2.5-pro": {"total_tokens": 1200, "thoughts": 100},
              "gemini-2.5-flash": {"total_tokens": 50, "thoughts": 25}}  # fmt: skip
    tracker.feed(_gemini_result({"total_tokens": 1250, "input_tokens": 1000, "output_tokens": 40,
                                 "models": models}))  # fmt: skip
    assert tracker.record()["output_tokens"] == 165


def test_it_leaves_gemini_output_alone_without_thinking():
    tracker = UsageTracker("gemini")
    tracker.feed(_gemini_result({"total_tokens": 830, "input_tokens": 800, "output_tokens": 30}))
    assert tracker.record()["output_tokens"] == 30


def _save(client, key, model, name="oc"):
    body = {"name": name, "backend": "opencode", "model": model}
    return client.post("/api/v1/agents", json=body, headers={"X-API-Key": key})


@pytest.mark.parametrize(
    "model", ["claude-sonnet-4-5", "/claude-sonnet-4-5", "anthropic/", " / ", "anthropic"]
)
def test_it_refuses_an_opencode_model_without_its_provider(client, alice, model):
    resp = _save(client, alice, model)
    assert resp.status_code == 422, resp.get_json()
    assert "provider/model" in json.dumps(resp.get_json())


def test_it_saves_opencode_models_of_the_provider_model_form(client, alice):
    assert _save(client, alice, "anthropic/claude-sonnet-4-5").status_code == 201
    # opencode splits at the first "/": the model part may hold more.
    assert _save(client, alice, "openrouter/anthropic/claude-sonnet-4", "oc2").status_code == 201
    assert _save(client, alice, None, "oc3").status_code == 201  # the CLI's default model
    other = {"name": "cl", "backend": "claude", "model": "sonnet"}
    assert (
        client.post("/api/v1/agents", json=other, headers={"X-API-Key": alice}).status_code == 201
    )


def test_it_refuses_a_patch_that_breaks_the_opencode_model(client, alice):
    assert _save(client, alice, "anthropic/claude-sonnet-4-5").status_code == 201
    resp = client.patch("/api/v1/agents/oc", json={"model": "gpt-5"}, headers={"X-API-Key": alice})
    assert resp.status_code == 422
