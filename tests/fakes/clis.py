"""What each real CLI makes of its argv: the run it starts, or how it refuses.

`read(backend, argv)` returns a Call, or raises cliargs.Exit with what the real
CLI prints and its exit status (a refused flag, --version, --help, claude's
root check). Versions and messages are those of claude 2.1.197, codex-cli
0.171.0, gemini 0.61.0 and opencode 1.18.33 (help/README.md).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from cliargs import Exit, Parsed, help_text, parse_clap, parse_commander, parse_yargs

LATEST = "\0latest"  # resume the newest session (claude -c, codex --last, opencode -c)


@dataclass
class Call:
    args: Parsed
    model: str = ""
    resume: str | None = None  # the session asked for; None starts a new one
    prompt: list[str] = field(default_factory=list)  # prompt words given on argv
    new_id: str | None = None  # a new session's id chosen on argv
    fork: bool = False  # resume into a new session id
    persist: bool = True  # keep the session on disk
    notices: list[str] = field(default_factory=list)  # stderr lines these flags print
    permission_mode: str = "default"  # claude
    bash_allowed: bool = False  # claude: Bash runs without asking
    denied_tools: set[str] = field(default_factory=set)  # opencode: OPENCODE_PERMISSION


def _only(backend: str, what: str) -> Exit:
    # The fakes print one output format; anything else was never recorded.
    return Exit(f"fake-{backend}: only {what} is recorded (tests/fakes/README.md)\n", 2)


def claude(argv: list[str]) -> Call:
    a = parse_commander(help_text("claude"), argv)
    if a.has("help"):
        raise Exit("", 0, help_text("claude"))
    if a.has("version"):
        raise Exit("", 0, "2.1.197 (Claude Code)\n")
    if not a.has("print") or a.get("output-format") != "stream-json":
        raise _only("claude", "-p --output-format stream-json")
    if not a.has("verbose"):
        raise Exit("Error: When using --print, --output-format=stream-json requires --verbose\n", 1)
    mode = a.get("permission-mode") or "default"
    if a.has("dangerously-skip-permissions"):
        mode = "bypassPermissions"
    root = os.getuid() == 0 and os.environ.get("IS_SANDBOX") != "1"
    if mode == "bypassPermissions" and root and not os.environ.get("CLAUDE_CODE_BUBBLEWRAP"):
        raise Exit(
            "--dangerously-skip-permissions cannot be used with root/sudo privileges for "
            "security reasons\n",
            1,
        )
    tools = [t for v in a.all("allowed-tools") for t in re.split(r"[,\s]+", v)]
    call = Call(a, a.get("model") or "", prompt=a.positionals, new_id=a.get("session-id"))
    call.resume = a.get("resume") if a.has("resume") else LATEST if a.has("continue") else None
    call.fork, call.persist = a.has("fork-session"), not a.has("no-session-persistence")
    call.permission_mode = mode
    call.bash_allowed = mode == "bypassPermissions" or any(
        t == "Bash" or t.startswith("Bash(") for t in tools
    )
    return call


def codex(argv: list[str]) -> Call:
    if argv[:1] in (["--version"], ["-V"]):
        raise Exit("", 0, "codex-cli 0.171.0\n")
    if argv[:1] != ["exec"]:
        raise _only("codex", "`codex exec` and `codex exec resume`")
    subcommands = ("resume", "fork", "review", "help")
    a = parse_clap(help_text("codex-exec"), argv[1:], 1, subcommands)
    name = "codex-exec"
    if a.positionals[:1] == ["resume"] and a.positionals[0] in subcommands:
        name = "codex-exec-resume"
        r = parse_clap(help_text(name), a.rest, 2)
        for key, values in r.values.items():
            a.values.setdefault(key, []).extend(values)
        a.positionals = r.positionals
        resume: str | None = LATEST if a.has("last") else (a.positionals or [None])[0]
        prompt = a.positionals[1:] if resume != LATEST else a.positionals
        if resume is None:
            raise _only("codex", "`codex exec resume <SESSION_ID>` or `--last`")
    elif a.positionals[:1] and a.positionals[0] in subcommands:
        raise _only("codex", "`codex exec` and `codex exec resume`")
    else:
        resume, prompt = None, a.positionals
    if a.has("help"):
        raise Exit("", 0, help_text(name))
    if a.has("version"):
        raise Exit("", 0, "codex-cli-exec 0.171.0\n")
    if not a.has("json"):
        raise _only("codex", "--json output")
    call = Call(a, a.get("model") or "", resume, [p for p in prompt if p != "-"])
    call.persist = not a.has("ephemeral")
    if resume is None and not prompt:
        call.notices.append("Reading prompt from stdin...")
    return call


def gemini(argv: list[str]) -> Call:
    # -w, -r and --delete-session may come bare; gemini's other string options
    # need their value ("Not enough arguments following: model").
    a = parse_yargs(help_text("gemini"), argv, {"worktree", "resume", "delete-session"}, "message")
    if a.has("help"):
        raise Exit("", 0, help_text("gemini"))
    if a.has("version"):
        raise Exit("", 0, "0.61.0\n")
    if a.get("output-format") != "stream-json":
        raise _only("gemini", "--output-format stream-json")
    call = Call(a, a.get("model") or "", prompt=a.positionals, new_id=a.get("session-id"))
    if a.has("resume"):
        call.resume = a.get("resume") or "latest"
    if a.has("allowed-tools"):
        call.notices.append(
            "Warning: --allowed-tools cli argument and tools.allowed in settings.json are "
            "deprecated and will be removed in 1.0: Migrate to Policy Engine: "
            "https://geminicli.com/docs/core/policy-engine/"
        )
    if a.get("approval-mode") == "yolo" or a.get("yolo") == "true":
        call.notices += ["YOLO mode is enabled. All tool calls will be automatically approved."] * 2
    return call


def opencode(argv: list[str]) -> Call:
    if argv[:1] in (["--version"], ["-v"]):
        raise Exit("", 0, "1.18.33\n")
    if argv[:1] != ["run"]:
        raise _only("opencode", "`opencode run`")
    a = parse_yargs(help_text("opencode-run"), argv[1:], None, "help")
    if a.has("help"):
        raise Exit(help_text("opencode-run"), 0)
    if a.has("version"):
        raise Exit("", 0, "1.18.33\n")
    if a.get("format") != "json":
        raise _only("opencode", "--format json")
    call = Call(a, a.get("model") or "", prompt=a.positionals)
    call.resume = a.get("session") or (LATEST if a.has("continue") else None)
    call.fork = a.has("fork")
    try:  # opencode ignores a value that is not JSON
        rules = json.loads(os.environ.get("OPENCODE_PERMISSION") or "{}")
    except ValueError:
        rules = {}
    if rules == "deny":
        rules = {"edit": "deny", "bash": "deny", "webfetch": "deny"}
    if isinstance(rules, dict):
        call.denied_tools = {tool for tool, rule in rules.items() if rule == "deny"}
    return call


READ = {"claude": claude, "codex": codex, "gemini": gemini, "opencode": opencode}


def read(backend: str, argv: list[str]) -> Call:
    return READ[backend](argv)
