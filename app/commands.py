"""CommandBuilder: the argv, environment and output understanding for each backend.

Pure functions, no database and no Flask: the ExecutionService calls them. The
prompt always goes to the child's stdin, never onto argv (argv is visible to every
user on the machine through /proc and `ps`). Per-CLI event parsing lives in
app/agent_clis/; this module holds the argv rules, the environment filter, the usage
tracker and rate-limit recognition.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any
from zoneinfo import ZoneInfo

from app import agent_clis

BACKENDS = ("claude", "codex", "gemini", "opencode", "shell")
DEFAULT_BINARIES = {
    "claude": "claude",
    "codex": "codex",
    "gemini": "gemini",
    "opencode": "opencode",
}

# Each CLI's non-interactive mode that reads the prompt from stdin (none is given
# on argv) and prints one JSON event per line. Checked against `--help` and runs of
# claude 2.1.197, codex 0.169.0, gemini 0.61.0 and opencode 1.18.33.
STREAM_ARGS = {
    # --verbose is required: "When using --print, --output-format=stream-json requires --verbose".
    "claude": ["-p", "--output-format", "stream-json", "--verbose"],
    # Tasks may run in a fresh directory that is not a git repository; without
    # --skip-git-repo-check codex exec refuses to start there.
    "codex": ["exec", "--json", "--skip-git-repo-check"],
    # Piped stdin makes gemini headless; headless in an untrusted folder exits 55
    # unless --skip-trust. The hub chose the workspace, so it vouches for it.
    "gemini": ["--output-format", "stream-json", "--skip-trust"],
    "opencode": ["run", "--format", "json"],
}
MODEL_FLAG = {"claude": "--model", "codex": "--model", "gemini": "--model", "opencode": "--model"}

# What each CLI may do unattended. Run non-interactively, every CLI denies (or
# waits on) any tool that would ask, so an agent needs one of these to do real
# work. The hub's sandbox bounds all of them to the run's workspace, HOME and
# /tmp; "full" only lifts the CLI's own prompts and sandbox. Flags checked
# against the --help of claude 2.1.197, codex 0.171.0 (exec and exec resume),
# gemini 0.61.0 and opencode 1.18.33 (recorded in tests/fakes/help/).
PERMISSIONS = {
    "read-only": "read and search files; no edits, no shell commands",
    "workspace-write": "edit files and run shell commands in the workspace",
    "full": "every tool without asking (web fetches, MCP tools too)",
}
PERMISSION_ARGS: dict[str, dict[str, list[str]]] = {
    "claude": {
        # dontAsk denies whatever is not pre-approved; read-only tools never ask.
        "read-only": ["--permission-mode", "dontAsk"],
        "workspace-write": ["--permission-mode", "acceptEdits", "--allowedTools", "Bash"],
        "full": ["--dangerously-skip-permissions"],
    },
    "codex": {
        # `exec resume` has no --sandbox flag; the config key works for both.
        "read-only": ["-c", 'sandbox_mode="read-only"'],
        "workspace-write": ["-c", 'sandbox_mode="workspace-write"'],
        "full": ["--dangerously-bypass-approvals-and-sandbox"],
    },
    "gemini": {
        "read-only": ["--approval-mode", "plan"],
        "workspace-write": ["--approval-mode", "auto_edit", "--allowed-tools", "run_shell_command"],
        "full": ["--approval-mode", "yolo"],
    },
    "opencode": {"read-only": [], "workspace-write": [], "full": ["--auto"]},
}
# opencode takes its permission rules from the environment (merged over its config).
PERMISSION_ENV: dict[str, dict[str, dict[str, str]]] = {
    "opencode": {
        "read-only": {
            "OPENCODE_PERMISSION": '{"edit": "deny", "bash": "deny", "webfetch": "deny"}'
        },
        "workspace-write": {"OPENCODE_PERMISSION": '{"edit": "allow", "bash": "allow"}'},
    },
    # Claude refuses to skip permissions as root unless told it is sandboxed; it is.
    "claude": {"full": {"IS_SANDBOX": "1"}},
}

RESUME_FLAG = {"claude": "--resume", "gemini": "--resume", "opencode": "--session"}
# Session ids as the CLIs print them (uuids, opencode's ses_…); anything else is
# not passed on argv.
SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{7,127}")
# What each CLI prints when asked to resume a session it does not have (captured
# from the real CLIs; tests/fakes/samples/*-resume-unknown.*).
_NO_SESSION = {
    "claude": re.compile(r"No conversation found with session ID"),
    "codex": re.compile(
        r"no rollout found for (?:thread|conversation) id|No saved session found"
        r"|thread not found",
        re.IGNORECASE,
    ),  # fmt: skip
    "gemini": re.compile(
        r"Error resuming session|Invalid session identifier"
        r"|No previous sessions found"
    ),  # fmt: skip
    "opencode": re.compile(r"Session not found"),
}


def session_missing(backend: str, line: str) -> bool:
    """True when this output line says the CLI cannot resume the session it was given."""
    found = _NO_SESSION.get(backend)
    return bool(found and found.search(line[:4096]))


# Flags that would switch a CLI out of the streaming mode we parse, or make it
# wait for a terminal that is not there.
CONFLICTING_FLAGS = {
    "claude": ("--output-format", "--input-format"),
    # codex refuses most options given twice: these the hub always gives.
    "codex": ("--json", "--skip-git-repo-check"),
    "gemini": ("--output-format", "-o", "--prompt-interactive", "-i"),
    "opencode": ("--format", "--interactive", "-i"),
}

SAFE_ENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE",
            "TZ", "TMPDIR")  # fmt: skip
# No colours or cursor tricks in stored logs.
FORCED_ENV = {"TERM": "dumb", "NO_COLOR": "1"}

USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                "cost_usd")  # fmt: skip


def _str_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"{what} must be a list of strings")
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"{what} must be a list of strings, got {type(item).__name__}")
        if "\x00" in item:
            raise ValueError(f"{what} cannot contain NUL characters")
    return list(value)


def validate_agent_command(backend: str, command: list[str], flags: list[str]) -> None:
    """Raise ValueError when this backend cannot run with these settings."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    command = _str_list(command or [], "command")
    flags = _str_list(flags or [], "flags")
    if backend == "shell" and not command:
        raise ValueError('a shell agent needs a command (an argv list such as ["cat"])')
    if command and not command[0].strip():
        raise ValueError("the command's program (its first item) cannot be empty")
    for flag in flags:
        for bad in CONFLICTING_FLAGS.get(backend, ()):
            if flag == bad or flag.startswith(bad + "="):
                raise ValueError(
                    f"flag {flag!r} is the hub's to set: it runs {backend} with "
                    f"{' '.join(STREAM_ARGS[backend])} so it can follow the run"
                )
        if backend != "shell" and (flag in ("-m", "--model") or flag.startswith("--model=")):
            raise ValueError(f"flag {flag!r}: set the agent's model instead")


def validate_model(backend: str, model: str | None) -> None:
    """Raise ValueError for a model name the backend's CLI would not accept."""
    model = (model or "").strip()
    if backend != "opencode" or not model:
        return
    # opencode splits at the first "/": the provider, then the model, which may
    # itself hold a "/" (openrouter/anthropic/claude-sonnet-4).
    provider, _, name = model.partition("/")
    if not provider.strip() or not name.strip():
        raise ValueError(
            f"opencode model {model!r} must have the form provider/model, "
            "such as anthropic/claude-sonnet-4-5"
        )


def build_argv(agent: Mapping[str, Any], resume: str | None = None) -> list[str]:
    """Return the argv for one attempt; the prompt is written to stdin, never on argv.

    `resume` is the CLI session an earlier attempt of the task left, continued
    with each CLI's own resume.
    """
    backend = agent.get("backend")
    command = _str_list(agent.get("command") or [], "command")
    flags = _str_list(agent.get("flags") or [], "flags")
    validate_agent_command(str(backend), command, flags)
    if backend == "shell":
        return [*command, *flags]
    model = agent.get("model")
    if model is not None and not isinstance(model, str):
        raise ValueError("model must be a string")
    model = (model or "").strip()
    if "\x00" in model or model.startswith("-"):
        raise ValueError(f"model {model!r} is not a model name")
    # A command such as ["npx", "@openai/codex"] or a fake CLI script replaces the
    # default binary; everything after the program is kept in front of our args.
    backend = str(backend)
    if resume is not None and (not SESSION_ID.fullmatch(resume)):
        raise ValueError(f"session id {resume!r} is not one a CLI prints")
    argv = command or [DEFAULT_BINARIES[backend]]
    stream = STREAM_ARGS[backend]
    if backend == "codex" and resume:
        stream = ["exec", "resume", *stream[1:]]
    argv = [*argv, *stream]
    if model:
        argv += [MODEL_FLAG[backend], model]
    argv += PERMISSION_ARGS[backend].get(agent.get("permissions") or "", [])
    if resume and backend == "codex":
        # `codex exec resume [OPTIONS] <SESSION_ID> -`: the `-` reads the prompt from stdin.
        return [*argv, *flags, resume, "-"]
    if resume:
        argv += [RESUME_FLAG[backend], resume]
    return argv + flags


def permission_env(backend: str, permissions: str | None) -> dict[str, str]:
    """Environment variables that carry an agent's permissions to its CLI."""
    return dict(PERMISSION_ENV.get(backend, {}).get(permissions or "", {}))


def _env_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name or "=" in name or "\x00" in name:
        raise ValueError(f"{what} {name!r} is not a valid environment variable name")
    return name


# The hub's own settings and secrets: no allowlist passes them to a run.
HUB_ONLY = re.compile(r"AGENTED_\w*|SECRET_KEY|GITHUB_WEBHOOK_SECRET|SENTRY_DSN")
# Allowlisted variables whose values a run's log and answer never show.
CREDENTIAL_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH", re.IGNORECASE)


def check_allowlist(allow: Iterable[str]) -> None:
    """Raise ValueError for a variable an agent may not take from the hub's environment."""
    for name in allow or ():
        if HUB_ONLY.fullmatch(_env_name(name, "allowed variable")):
            raise ValueError(f"env_allow: {name} is the hub's own setting; a run never gets it")


def filtered_env(
    allow: Iterable[str], secrets: Mapping[str, str], base: Mapping[str, str]
) -> dict[str, str]:
    """Build a child environment from a safe base, the allowlist and the agent's secrets."""
    env = {name: base[name] for name in SAFE_ENV if name in base}
    env.update(FORCED_ENV)
    check_allowlist(allow)
    for name in allow or ():
        if name in base:
            env[name] = base[name]
    for name, value in (secrets or {}).items():
        if not isinstance(value, str) or "\x00" in value:
            raise ValueError(f"secret {name!r} must be a string without NUL characters")
        env[_env_name(name, "secret")] = value
    env.setdefault("PATH", os.defpath)
    return env


def parse_line(backend: str, line: str) -> dict | None:
    """Turn one output line into a readable step, or None for plain text / unknown JSON."""
    try:
        reader = agent_clis.STEPS.get(backend)
        event = agent_clis.load(line) if reader else None
        return reader(event) if reader and event is not None else None
    except Exception:  # a CLI's odd output must never break the run that printed it
        return None


class UsageTracker:
    """Feed every stdout line of an attempt; `.record()` gives the normalised usage.

    input_tokens counts prompt tokens not served from a cache (Anthropic's
    convention); cache reads and writes are separate, so their sum is the prompt.
    Totals a CLI reports at the end (claude's and gemini's result) replace the
    per-turn sums; codex and opencode report per turn/step and are summed.
    It also keeps the run's final answer (`result_text`), which the hub posts back
    where the task came from: the CLI's own answer, else its last reply, else for
    `shell` the last lines it printed.
    """

    # Enough for a readable comment, well under GitHub's 65,536-character limit.
    RESULT_CHARS = 8000
    SHELL_LINES = 40

    def __init__(
        self, backend: str, model: str | None = None, before: Mapping[str, Any] | None = None
    ) -> None:
        # A resumed codex thread reports its totals since the thread began: `before`
        # is what earlier attempts of the session recorded, taken off at the end.
        self._before = {k: v for k, v in (before or {}).items() if k in USAGE_FIELDS}
        self.backend = backend
        self._facts = agent_clis.FACTS.get(backend)
        self._model_arg = model or None
        self._model: str | None = None
        self._model_hint: str | None = None
        self._session: str | None = None
        self._turns: list[dict] = []
        self._keyed: dict[str, dict] = {}
        self._total: dict | None = None
        self._denials: list[dict] = []
        self._errors: list[str] = []
        self._answer: str | None = None
        self._reply: list[str] = []  # the last reply, in pieces
        self._reply_chars = 0
        self._reply_open = False
        self._lines: list[str] = []  # shell: the last lines printed

    def feed(self, line: str | bytes) -> None:
        if self.backend == "shell":
            self._keep_line(line)
        if self._facts is None:
            return
        try:
            event = agent_clis.load(line)
            facts = self._facts(event) if event is not None else {}
        except Exception:  # never let a parse problem fail the attempt
            return
        self._session = self._session or facts.get("session_id")
        self._model_hint = self._model_hint or facts.get("model_hint")
        self._model = facts.get("model") or self._model
        if "turn" in facts:
            self._turns.append(facts["turn"])
        if "keyed" in facts:
            key, value = facts["keyed"]
            self._keyed[str(key)] = value
        if "total" in facts:
            self._total = facts["total"]
        self._denials = facts.get("denials") or self._denials
        self._errors = facts.get("errors") or self._errors
        self._answer = facts.get("answer") or self._answer
        self._take_reply(facts)

    def _take_reply(self, facts: dict) -> None:
        """Follow the assistant's replies (see app/agent_clis/__init__.py)."""
        whole, part = facts.get("reply"), facts.get("reply_part")
        if isinstance(whole, str) and whole:
            self._reply, self._reply_chars, self._reply_open = [], 0, False
            part = whole
        elif isinstance(part, str) and part and not self._reply_open:
            self._reply, self._reply_chars, self._reply_open = [], 0, True
        if isinstance(part, str) and self._reply_chars <= self.RESULT_CHARS:
            # Past the cap more pieces change nothing kept: do not hold them.
            self._reply.append(part[: self.RESULT_CHARS + 1])
            self._reply_chars += len(self._reply[-1])
        if facts.get("reply_end"):
            self._reply_open = False

    def _keep_line(self, line: str | bytes) -> None:
        if isinstance(line, bytes):
            line = line.decode("utf-8", errors="replace")
        # A line longer than the whole cap would be cut anyway: keep no more of it.
        self._lines.append(line.rstrip("\r\n")[: self.RESULT_CHARS + 1])
        del self._lines[: -self.SHELL_LINES]

    @classmethod
    def _capped(cls, text: str | None, keep_end: bool = False) -> str | None:
        """Trim and cut to RESULT_CHARS, marked with "…" where cut; None when empty.

        A command's output says how it ended at its end (`keep_end`); an answer
        says what matters first.
        """
        text = (text or "").strip()
        if not text:
            return None
        if len(text) > cls.RESULT_CHARS and keep_end:
            text = "…" + text[-(cls.RESULT_CHARS - 1) :].lstrip()
        elif len(text) > cls.RESULT_CHARS:
            text = text[: cls.RESULT_CHARS - 1].rstrip() + "…"
        # A lone surrogate (a "\ud800" escape in the JSON) cannot be sent as UTF-8.
        return text.encode("utf-8", errors="replace").decode("utf-8")

    def record(self) -> dict:
        record: dict[str, Any] = dict.fromkeys(USAGE_FIELDS)
        if self._total is not None:
            record.update(self._total)
        else:
            parts = self._turns + list(self._keyed.values())
            for field in USAGE_FIELDS:
                values = [p[field] for p in parts if p.get(field) is not None]
                record[field] = sum(values) if values else None
        for field, earlier in self._before.items():
            if record[field] is not None and isinstance(earlier, int | float):
                record[field] = max(0, record[field] - earlier)
        if record["cost_usd"] is not None:
            record["cost_usd"] = round(record["cost_usd"], 8)
        record["model"] = self._model or self._model_hint or self._model_arg
        record["session_id"] = self._session
        if self._denials:
            record["permission_denials"] = self._denials
        if self._errors:
            record["errors"] = self._errors
        if self.backend == "shell":
            record["result_text"] = self._capped("\n".join(self._lines), keep_end=True)
        else:
            record["result_text"] = self._capped(self._answer) or self._capped("".join(self._reply))
        return record


# ---------------------------------------------------------------- rate limits

# Phrases the CLIs print when a rate or usage limit stops them (captured from the
# real CLIs; see tests/fakes/samples/). Kept specific: agents often work on code
# that talks about rate limits, and a false hit delays a task for hours. Spend
# caps and exhausted credits are limits too: the account waits for a person.
_HIT = re.compile(
    r"usage limit reached|you(?:'|’|\u2019)ve hit your [\w ]{0,40}?limit"
    r"|(?:you(?:'|’|\u2019)ve|you have) reached your [\w -]{0,40}?limit"
    r"|spend(?:ing)? cap reached|reached your [\w -]{0,20}?spend(?:ing)? cap"
    r"|credit balance is too low|\binsufficient_quota\b|\bout of credits\b"
    r"|\blimit reached\s*[∙·•-]\s*resets|rate_limit_error|rate_limit_exceeded"
    r"|rate limit(?:ed)? (?:reached|exceeded)|\"error\":\s*\"rate_limit\""
    r"|RESOURCE_EXHAUSTED|quota exceeded|exceeded your current quota"
    r"|exhausted your (?:[\w-]+ )?(?:quota|capacity)|resource has been exhausted"
    r"|too many requests|request rejected \(429\)|(?:status|http|code)\"?[\s:=]{0,3}429\b"
    r"|http/[\d.]+ 429\b",
    re.IGNORECASE,
)
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = (
    r"(?:\d+(?:\.\d+)?\s*(?:ms|milliseconds?|seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h"
    r"|days?|d)(?![a-z])[\s,]*(?:and\s+)?)+"
)
_RELATIVE = re.compile(
    r"(?:try again in|retry in|retry after|reset after|resets in|retrying after|wait)\s+"
    rf"({_DURATION})",
    re.IGNORECASE,
)
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]+)", re.IGNORECASE)
_EPOCH = re.compile(
    r"usage limit reached\|(\d{9,13})|\"(?:resetsAt|resets_at|reset_at)\":\s*\"?(\d{9,13})"
    r"|ratelimit-unified-reset\"?:\s*\"?(\d{9,13})",
    re.IGNORECASE,
)
_SECONDS = re.compile(r"retry[-_]after\"?[\s:=]+\"?(\d+(?:\.\d+)?)", re.IGNORECASE)
_DELAY_MS = re.compile(r"\"retry_delay_ms\":\s*(\d+)")
_MONTHS = "jan feb mar apr may jun jul aug sep oct nov dec".split()
_CLOCK = r"(\d{1,2})(?::(\d{2}))?\s*([ap]\.?m\.?)?"
_ABSOLUTE = re.compile(
    r"(?:resets|reset at|resets at|try again at)\s+(?:at\s+)?"
    r"(?:(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+(\d{1,2})(?:st|nd|rd|th)?,?"
    r"\s*(?:(\d{4}),?\s*)?(?:at\s+)?)?"
    rf"{_CLOCK}(?![\d:])(?:\s*\(([\w/+:-]+)\))?",
    re.IGNORECASE,
)
# JSON events whose text is the agent's own work (messages, tool output): a rate
# limit mentioned there is not the CLI being limited.
_CONTENT_EVENTS = {
    "assistant", "user", "message", "text", "reasoning", "tool_use", "tool_result",
    "item.started", "item.updated", "item.completed", "step_start", "step_finish", "init",
    "system", "thread.started", "turn.started", "turn.completed", "result", "stream_event",
}  # fmt: skip


def _duration(text: str) -> float:
    total = 0.0
    for number, unit in _PART.findall(text):
        unit = unit.lower()
        key = "ms" if unit.startswith("mil") or unit == "ms" else unit[0]
        if unit.startswith("mo"):  # "months" is not a unit any CLI uses for resets
            continue
        total += float(number) * _UNIT.get(key, 0)
    return total


def _zone(name: str | None) -> dt.tzinfo | None:
    if not name:
        return None
    if name.upper() in ("UTC", "GMT", "Z"):
        return dt.UTC
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError, OSError):
        return None  # an abbreviation such as "PST": fall back to local time


def _absolute(match: re.Match, now: float) -> float | None:
    month, day, year, hour, minute, ampm, zone = match.groups()
    if minute is None and ampm is None:
        return None  # a bare number ("resets 2 counters") is not a time of day
    hour, minute = int(hour), int(minute or 0)
    if ampm:
        if hour > 12:
            return None
        hour = hour % 12 + (12 if ampm.lower().startswith("p") else 0)
    if hour > 23 or minute > 59:
        return None
    tz = _zone(zone)
    current = dt.datetime.fromtimestamp(now, tz).astimezone(tz)
    try:
        if month:
            number = _MONTHS.index(month[:3].lower()) + 1
            when = current.replace(year=int(year) if year else current.year, month=number,
                                   day=int(day), hour=hour, minute=minute, second=0,
                                   microsecond=0)  # fmt: skip
            if not year and when.timestamp() < now - 86400:
                when = when.replace(year=when.year + 1)
        else:
            when = current.replace(hour=hour, minute=minute, second=0, microsecond=0)
            if when.timestamp() < now - 60:
                when += dt.timedelta(days=1)  # "resets 3am" said at 11pm means tomorrow
    except ValueError:
        return None
    return when.timestamp()


def _item_type(event: dict) -> Any:
    item = event.get("item")
    return item.get("type") if isinstance(item, dict) else None


def _limit_lines(text: str) -> list[str]:
    """Keep the lines that can speak for the CLI itself, not for the agent's work."""
    lines = []
    for line in text.splitlines():
        event = agent_clis.load(line) if line.lstrip().startswith("{") else None
        if event is None:
            lines.append(line)
            continue
        kind = event.get("type")
        info = event.get("rate_limit_info")
        if kind == "rate_limit_event":
            if isinstance(info, dict) and info.get("status") == "rejected":
                lines.append(line + " usage limit reached")
        elif (
            kind not in _CONTENT_EVENTS
            or (kind == "assistant" and event.get("error"))
            or (kind == "system" and event.get("subtype") == "api_retry")
            or (kind == "result" and (event.get("is_error") or event.get("status") == "error"))
            or (kind == "item.completed" and _item_type(event) == "error")
        ):
            lines.append(line)
    return lines


_CLAUDE_WINDOWS = {"five_hour": "five-hour limit", "seven_day": "weekly limit",
                   "seven_day_opus": "weekly Opus limit", "seven_day_sonnet": "weekly Sonnet limit",
                   "overage": "extra-usage limit"}  # fmt: skip
_KINDS = (
    (re.compile(r"spend(?:ing)? cap", re.I), "spend cap"),
    (re.compile(r"credit balance|out of credits|insufficient_quota", re.I), "out of credits"),
    (re.compile(r"quota|RESOURCE_EXHAUSTED|exhausted your", re.I), "quota"),
    (re.compile(r"usage limit|session limit|hit your|reached your", re.I), "usage limit"),
)


def limit_kind(line: str) -> str:
    """Name the limit a line reports, for people: "five-hour limit", "quota"…"""
    window = re.search(r'"rateLimitType":\s*"([a-z_]+)"', line)
    if window:
        return _CLAUDE_WINDOWS.get(window[1], window[1].replace("_", " ") + " limit")
    return next((kind for pattern, kind in _KINDS if pattern.search(line)), "rate limit")


def later_limit(
    seen: tuple[bool, float | None], hit: tuple[bool, float | None]
) -> tuple[bool, float | None]:
    """Merge a limit found on one more line into what a run has shown so far.

    An early api_retry ("retry in 30 s") must not hide the real reset printed
    later, so the latest reset wins; a line without one keeps the reset seen.
    """
    if not hit[0]:
        return seen
    resets = [t for t in (seen[1], hit[1]) if t is not None]
    return True, (max(resets) if resets else None)


def rate_limit(text: str, now: float | None = None) -> tuple[bool, float | None]:
    """Recognise a rate/usage-limit message in any backend's output; return (hit, reset epoch)."""
    try:
        now = time.time() if now is None else now
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        # Limit messages come at the end of a run; a bounded tail keeps this cheap.
        lines = _limit_lines(text[-1_048_576:])
        if not any(_HIT.search(line) for line in lines):
            return False, None
        # A reset may sit on its own line (a Retry-After header after the status line).
        found: list[float] = []
        for line in lines:
            for groups in _EPOCH.findall(line):
                value = float(next(g for g in groups if g))
                found.append(value / 1000 if value > 1e12 else value)
            found += [now + _duration(m) for m in _RELATIVE.findall(line)]
            found += [now + float(s) for s in _SECONDS.findall(line)]
            found += [now + int(ms) / 1000 for ms in _DELAY_MS.findall(line)]
            found += [t for m in _ABSOLUTE.finditer(line) if (t := _absolute(m, now))]
        # Past times and absurd ones are misreads; the latest plausible one is safest.
        plausible = [t for t in found if now - 60 < t < now + 40 * 86400]
        return True, (max(plausible) if plausible else None)
    except Exception:  # recognising a limit is best effort; never fail the run over it
        return False, None
