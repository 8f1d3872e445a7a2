"""Check a fake CLI's argv against the recorded --help of the real one (help/).

Each real CLI parses its arguments with a different library, and each refuses bad
argv in its own words: claude uses commander, codex clap, gemini and opencode
yargs. The parsers here read the options from the recorded help text and follow
each library's rules closely enough to refuse what the real CLI refuses, with the
same message and exit status (samples/refusals.json holds the real ones).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

HELP = Path(__file__).resolve().parent / "help"


def help_text(name: str) -> str:
    return (HELP / f"{name}.txt").read_text()


class Exit(Exception):
    """The real CLI stops here: it prints `stdout` and `stderr` and exits with `status`."""

    def __init__(self, stderr: str, status: int, stdout: str = "") -> None:
        super().__init__(stderr)
        self.stderr, self.status, self.stdout = stderr, status, stdout


@dataclass
class Option:
    names: list[str]  # every spelling, "-m" and "--model"
    display: str  # how the CLI names it in its errors
    takes: str = "flag"  # flag | one | optional | many
    choices: list[str] = field(default_factory=list)
    repeat: bool = True  # may be given more than once

    @property
    def key(self) -> str:
        return next((n for n in reversed(self.names) if n.startswith("--")), self.names[0])[2:]


@dataclass
class Parsed:
    """What the CLI understood: option values by long name, then the positionals."""

    values: dict[str, list[str]] = field(default_factory=dict)
    positionals: list[str] = field(default_factory=list)
    rest: list[str] = field(default_factory=list)  # argv after a subcommand

    def add(self, opt: Option, value: str = "") -> None:
        self.values.setdefault(opt.key, []).append(value)

    def has(self, name: str) -> bool:
        return name in self.values

    def get(self, name: str) -> str | None:
        return self.values[name][-1] if self.values.get(name) else None

    def all(self, name: str) -> list[str]:
        return self.values.get(name, [])


def _blocks(text: str, start: str) -> list[tuple[str, str]]:
    """(option line, its description) pairs from the section that starts at `start`."""
    lines = text.splitlines()
    body = lines[lines.index(start) + 1 :] if start in lines else lines
    blocks: list[tuple[str, str]] = []
    for line in body:
        if line and not line.startswith(" "):
            break  # the next section
        if re.match(r"^ {2,6}-", line):
            blocks.append((line.strip(), ""))
        elif blocks and line.strip():
            head, desc = blocks[-1]
            blocks[-1] = (head, f"{desc} {line.strip()}")
    return blocks


# ---------------------------------------------------------------- commander (claude)


def commander_options(text: str) -> list[Option]:
    options = []
    for line, desc in _blocks(text, "Options:"):
        flags, _, rest = line.partition("  ")
        flags = flags.strip()
        spec = re.search(r" ([<\[][^>\]]+[>\]])$", flags)
        names = re.findall(r"--?[\w-]+", flags[: spec.start()] if spec else flags)
        takes = "flag"
        if spec:
            inner = spec.group(1)
            takes = "many" if inner.endswith("...>") else "one" if inner[0] == "<" else "optional"
        found = re.search(r"\(choices: ([^)]*)\)", f"{rest} {desc}")
        choices = re.findall(r'"([^"]*)"', found.group(1).split("preset:")[0]) if found else []
        options.append(Option(names, flags, takes, choices))
    return options


def _edit_distance(a: str, b: str) -> int:
    # commander's suggestSimilar: optimal string alignment distance, capped at 3.
    if abs(len(a) - len(b)) > 3:
        return max(len(a), len(b))
    d = [[i] + [0] * len(b) for i in range(len(a) + 1)]
    d[0] = list(range(len(b) + 1))
    for j in range(1, len(b) + 1):
        for i in range(1, len(a) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def _commander_suggestion(flag: str, options: list[Option]) -> str:
    # Commander offers each option's "long" flag: the second of two long spellings
    # (`--allowedTools, --allowed-tools` suggests --allowed-tools).
    longs = [[n for n in o.names if n.startswith("--")][-1] for o in options]
    word, best, similar = flag[2:], 3, []
    for cand in dict.fromkeys(n[2:] for n in longs if n):
        if len(cand) <= 1:
            continue
        dist = _edit_distance(word, cand)
        length = max(len(word), len(cand))
        if (length - dist) / length > 0.4:
            if dist < best:
                best, similar = dist, [cand]
            elif dist == best:
                similar.append(cand)
    similar = [f"--{c}" for c in sorted(similar, key=str.lower)]
    if len(similar) > 1:
        return f"\n(Did you mean one of {', '.join(similar)}?)"
    return f"\n(Did you mean {similar[0]}?)" if similar else ""


def parse_commander(text: str, argv: list[str]) -> Parsed:
    """Parse like commander: first bad option wins, exit 1, message on stderr."""
    options = commander_options(text)
    find = {n: o for o in options for n in o.names}
    out, args, variadic = Parsed(), list(argv), None

    def take(opt: Option, value: str) -> None:
        if opt.choices and value not in opt.choices:
            raise Exit(
                f"error: option '{opt.display}' argument '{value}' is invalid. Allowed choices "
                f"are {', '.join(opt.choices)}.\n",
                1,
            )
        out.add(opt, value)

    def maybe_option(arg: str) -> bool:
        return len(arg) > 1 and arg[0] == "-"

    while args:
        arg = args.pop(0)
        if arg == "--":
            out.positionals += args
            break
        if variadic and not maybe_option(arg):
            take(variadic, arg)
            continue
        variadic = None
        opt = find.get(arg)
        if opt and opt.takes in ("one", "many"):
            if not args:
                raise Exit(f"error: option '{opt.display}' argument missing\n", 1)
            take(opt, args.pop(0))  # even "--verbose": commander takes whatever is next
            variadic = opt if opt.takes == "many" else None
            continue
        if opt and opt.takes == "optional":
            if args and not maybe_option(args[0]):
                take(opt, args.pop(0))
            else:
                out.add(opt)
            continue
        if opt:
            out.add(opt)
            continue
        if len(arg) > 2 and arg[0] == "-" and arg[1] != "-" and (opt := find.get(arg[:2])):
            if opt.takes == "flag":
                out.add(opt)
                args.insert(0, "-" + arg[2:])  # -pc is -p -c
            else:
                take(opt, arg[2:])
                variadic = opt if opt.takes == "many" else None
            continue
        if re.match(r"^--[^=]+=", arg):
            name, _, value = arg.partition("=")
            opt = find.get(name)
            if opt and opt.takes != "flag":
                take(opt, value)
                continue
        if maybe_option(arg):
            hint = _commander_suggestion(arg, options) if arg.startswith("--") else ""
            raise Exit(f"error: unknown option '{arg}'{hint}\n", 1)
        out.positionals.append(arg)
    return out


# ---------------------------------------------------------------- clap (codex)

# Options codex keeps as lists although its help does not say so (found by
# giving each option twice to codex-cli 0.171.0: the others are refused).
CLAP_REPEATABLE = {"config", "add-dir", "image"}


def clap_options(text: str) -> list[Option]:
    options = []
    for line, desc in _blocks(text, "Options:"):
        m = re.match(r"^(?:(-\w), )?(--[\w-]+)(?: (<[^>]+>)(\.\.\.)?)?$", line)
        if not m:
            continue
        short, long, value, more = m.groups()
        found = re.search(r"\[possible values: ([^\]]*)\]", desc)
        choices = found.group(1).split(", ") if found else []
        takes = "many" if more else "one" if value else "flag"
        repeat = bool(more) or "(repeatable)" in desc or long[2:] in CLAP_REPEATABLE
        display = f"{long} {value}{more or ''}" if value else long
        options.append(Option([n for n in (short, long) if n], display, takes, choices, repeat))
    return options


def _jaro(a: str, b: str) -> float:
    # strsim::jaro, which clap uses to suggest a similar argument or value.
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    window = max(max(len(a), len(b)) // 2 - 1, 0)
    a_hit, b_hit = [False] * len(a), [False] * len(b)
    matches = 0
    for i, ch in enumerate(a):
        for j in range(max(0, i - window), min(len(b), i + window + 1)):
            if not b_hit[j] and b[j] == ch:
                a_hit[i] = b_hit[j] = True
                matches += 1
                break
    if not matches:
        return 0.0
    b_matched = [ch for ch, hit in zip(b, b_hit, strict=True) if hit]
    a_matched = [ch for ch, hit in zip(a, a_hit, strict=True) if hit]
    transpositions = sum(x != y for x, y in zip(a_matched, b_matched, strict=True)) // 2
    return (matches / len(a) + matches / len(b) + (matches - transpositions) / matches) / 3


def _did_you_mean(word: str, candidates: list[str]) -> str | None:
    scored = sorted(
        ((_jaro(word, c), c) for c in candidates if _jaro(word, c) > 0.7), key=lambda s: s[0]
    )
    return scored[-1][1] if scored else None


def _clap_usage(text: str) -> str:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Usage:"))
    end = lines.index("", start)
    return "\n".join(lines[start:end])


def parse_clap(text: str, argv: list[str], npos: int, subcommands: tuple[str, ...] = ()) -> Parsed:
    """Parse like clap: stop at the first error, exit 2, message on stderr.

    Returns early with the subcommand as the only positional when one is named,
    leaving the argv after it in `Parsed.rest`.
    """
    options = clap_options(text)
    find = {n: o for o in options for n in o.names}
    usage = _clap_usage(text)
    more = "For more information, try '--help'.\n"
    out, seen = Parsed(), set()
    pending: tuple[Option, list[str]] | None = None

    def fail(message: str) -> Exit:
        return Exit(f"error: {message}\n\n{usage}\n\n{more}", 2)

    def react(opt: Option, values: list[str]) -> None:
        if opt.key in seen and not opt.repeat:
            raise fail(f"the argument '{opt.display}' cannot be used multiple times")
        for value in values:
            if opt.choices and value not in opt.choices:
                tip = _did_you_mean(value, opt.choices)
                tip = f"\n  tip: a similar value exists: '{tip}'\n" if tip else ""
                raise Exit(
                    f"error: invalid value '{value}' for '{opt.display}'\n"
                    f"  [possible values: {', '.join(opt.choices)}]\n{tip}\n{more}",
                    2,
                )
            out.add(opt, value)
        seen.add(opt.key)

    def resolve() -> None:
        # clap checks an option's value (and whether it was given before) only when
        # the next known argument comes, so an unknown one after it is reported first.
        nonlocal pending
        if pending:
            opt, values = pending
            pending = None
            if not values:
                listed = f"  [possible values: {', '.join(opt.choices)}]\n" if opt.choices else ""
                raise Exit(
                    f"error: a value is required for '{opt.display}' but none was supplied\n"
                    f"{listed}\n{more}",
                    2,
                )
            react(opt, values)

    def unknown(arg: str) -> Exit:
        similar = _did_you_mean(arg[2:], [o.key for o in options]) if arg[:2] == "--" else None
        tip = (
            f"a similar argument exists: '--{similar}'"
            if similar
            else f"to pass '{arg}' as a value, use '-- {arg}'"
        )
        return fail(f"unexpected argument '{arg}' found\n\n  tip: {tip}")

    args = list(argv)
    while args:
        arg = args.pop(0)
        flaglike = len(arg) > 1 and arg[0] == "-"
        if pending and not flaglike and (not pending[1] or pending[0].takes == "many"):
            pending[1].append(arg)
            continue
        if arg == "--":
            resolve()
            rest, args = args, []
            for value in rest:
                if len(out.positionals) >= npos:
                    raise fail(f"unexpected argument '{value}' found")
                out.positionals.append(value)
            break
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            opt = find.get("--" + name)
            if not opt:
                raise unknown("--" + name)
            resolve()
            if opt.takes == "flag":
                if eq:
                    raise fail(f"unexpected value '{value}' for '{opt.display}' found; "
                               "no more were expected")  # fmt: skip
                react(opt, [""])
            elif eq:
                react(opt, [value])
            else:
                pending = (opt, [])
            continue
        if flaglike:
            for i, ch in enumerate(arg[1:], start=1):
                opt = find.get("-" + ch)
                if not opt:
                    raise unknown("-" + ch)
                resolve()
                if opt.takes == "flag":
                    react(opt, [""])
                    continue
                value = arg[i + 1 :].removeprefix("=")
                if value:
                    react(opt, [value])
                else:
                    pending = (opt, [])
                break
            continue
        resolve()
        if not out.positionals and arg in subcommands:
            out.positionals.append(arg)
            out.rest = args
            return out
        if len(out.positionals) >= npos:
            raise fail(f"unexpected argument '{arg}' found")
        out.positionals.append(arg)
    resolve()
    return out


# ---------------------------------------------------------------- yargs (gemini, opencode)


def yargs_options(text: str) -> list[Option]:
    options = []
    for line, desc in _blocks(text, "Options:"):
        m = re.match(r"^(?:(-\w), )?(--[\w-]+)\s*(.*)$", line)
        if not m:
            continue
        short, long, rest = m.groups()
        block = f"{rest} {desc}"
        kind = re.findall(r"\[(boolean|string|array|number|count)\]", block)
        found = re.search(r"\[choices: ([^\]]*)\]", block)
        choices = re.findall(r'"([^"]*)"', found.group(1)) if found else []
        takes = {"string": "one", "number": "one", "array": "many"}.get(kind[-1] if kind else "")
        options.append(Option([n for n in (short, long) if n], long, takes or "flag", choices))
    return options


def _kebab(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "-" + m.group(1).lower(), name)


def _camel(name: str) -> str:
    return re.sub(r"-(\w)", lambda m: m.group(1).upper(), name)


def parse_yargs(text: str, argv: list[str], bare_ok: set[str] | None, errors: str) -> Parsed:
    """Parse like yargs in strict mode; exit 1 with the message and the help on stderr.

    `bare_ok`: the string options that may come without a value (None: all of
    them). `errors`: "message" prints the message then the help (gemini), "help"
    the help alone (opencode).
    """
    options = yargs_options(text)
    find = {n.lstrip("-"): o for o in options for n in o.names}
    out, unknown, problem = Parsed(), [], None

    def refuse(message: str) -> Exit:
        return Exit(f"{message}\n{text}" if errors == "message" else text, 1)

    def value_after(opt: Option, typed: str, args: list[str]) -> None:
        nonlocal problem
        if args and not args[0].startswith("-"):
            out.add(opt, args.pop(0))
            while opt.takes == "many" and args and not args[0].startswith("-"):
                out.add(opt, args.pop(0))
        elif bare_ok is None or opt.key in bare_ok:
            out.add(opt, "")
        else:
            problem = problem or f"Not enough arguments following: {typed}"

    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            out.positionals += args
            break
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            opt = find.get(name) or find.get(_kebab(name))
            negated = find.get(name[3:]) if name.startswith("no-") else None
            if not opt and negated and negated.takes == "flag":
                out.add(negated, "false")
            elif not opt:
                unknown += [name, _camel(name)]
                if not eq and args and not args[0].startswith("-"):
                    args.pop(0)  # yargs gives an unknown option the next word as its value
            elif eq:
                out.add(opt, value)
            elif opt.takes == "flag":
                out.add(opt, args.pop(0) if args and args[0] in ("true", "false") else "true")
            else:
                value_after(opt, name, args)
            continue
        if len(arg) > 1 and arg[0] == "-" and not re.match(r"^-\d", arg):
            for i, ch in enumerate(arg[1:], start=1):
                opt = find.get(ch)
                if not opt:
                    unknown.append(ch)
                elif opt.takes == "flag":
                    out.add(opt, "true")
                elif arg[i + 1 :]:
                    out.add(opt, arg[i + 1 :].removeprefix("="))
                    break
                else:
                    value_after(opt, ch, args)
            continue
        out.positionals.append(arg)
    if problem:
        raise refuse(problem)
    if unknown:
        names = list(dict.fromkeys(unknown))
        raise refuse(f"Unknown argument{'s' if len(names) > 1 else ''}: {', '.join(names)}")
    bad = [
        f"  Argument: {o.key}, Given: {json.dumps(v)}, "
        f"Choices: {', '.join(json.dumps(c) for c in o.choices)}"
        for o in options
        for v in out.all(o.key)
        if o.choices and v not in o.choices
    ]
    if bad:
        raise refuse("Invalid values:\n" + "\n".join(bad))
    return out
