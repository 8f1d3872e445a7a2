"""Turn a log line with ANSI escapes into safe HTML: colours become classes, the rest goes.

The CSP forbids style attributes, so SGR colours map to `a-fg-N` / `a-bg-N`
classes that app.css defines for the 16 basic colours; 256-colour and true
colour codes fall back to no colour. Every other escape (cursor moves, OSC
titles and links) is dropped, and all text is HTML-escaped.
"""

from __future__ import annotations

import re

from markupsafe import Markup, escape

SGR = re.compile(r"\x1b\[([0-9;]*)m")
# CSI sequences other than SGR, OSC strings (ended by BEL or ST), and lone escapes.
OTHER = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def strip_escapes(text: str) -> str:
    """Remove every escape and control character."""
    return CONTROL.sub("", OTHER.sub("", SGR.sub("", text)))


def _apply(codes: list[int], state: dict) -> None:
    i = 0
    while i < len(codes):
        code = codes[i]
        if code == 0:
            state.clear()
        elif code == 1:
            state["bold"] = True
        elif code == 2:
            state["dim"] = True
        elif code == 3:
            state["italic"] = True
        elif code == 4:
            state["underline"] = True
        elif code in (22, 23, 24):
            for name in {22: ("bold", "dim"), 23: ("italic",), 24: ("underline",)}[code]:
                state.pop(name, None)
        elif 30 <= code <= 37 or 90 <= code <= 97:
            state["fg"] = code
        elif code == 39:
            state.pop("fg", None)
        elif 40 <= code <= 47 or 100 <= code <= 107:
            state["bg"] = code
        elif code == 49:
            state.pop("bg", None)
        elif code in (38, 48):
            # 38;5;n or 38;2;r;g;b: skip the arguments, keep the default colour.
            skip = 2 if i + 1 < len(codes) and codes[i + 1] == 5 else 4
            state.pop("fg" if code == 38 else "bg", None)
            i += skip
        i += 1


def _classes(state: dict) -> str:
    names = [name for name in ("bold", "dim", "italic", "underline") if state.get(name)]
    if "fg" in state:
        names.append(f"fg-{state['fg']}")
    if "bg" in state:
        names.append(f"bg-{state['bg']}")
    return " ".join(f"a-{n}" for n in names)


def to_html(text: str) -> Markup:
    """Render `text` as escaped HTML with <span class="a-..."> for SGR styles."""
    if "\x1b" not in text:
        return escape(CONTROL.sub("", text))
    out: list[str] = []
    state: dict = {}
    pos = 0
    for m in SGR.finditer(text):
        _emit(out, text[pos : m.start()], state)
        codes = [int(c) for c in m.group(1).split(";") if c.isdigit()] or [0]
        _apply(codes, state)
        pos = m.end()
    _emit(out, text[pos:], state)
    return Markup("".join(out))


def _emit(out: list[str], chunk: str, state: dict) -> None:
    chunk = CONTROL.sub("", OTHER.sub("", chunk))
    if not chunk:
        return
    classes = _classes(state)
    if classes:
        out.append(f'<span class="{classes}">{escape(chunk)}</span>')
    else:
        out.append(str(escape(chunk)))
