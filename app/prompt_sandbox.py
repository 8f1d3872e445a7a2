"""The Jinja sandbox prompt templates run in: no value may grow past a budget.

Jinja's own sandbox stops attribute escapes but not size: `"a" * 10**8`,
`10**5000`, `"x".center(10**9)` or a doubling loop allocate whatever they ask
for in one C call, long before a time limit could stop them (issue 12). So every
operation a template can use to grow a value is checked *before* it runs
against a per-render budget of characters, and what it produced is charged to
that budget afterwards:

- operators `*`, `**`, `+`, `%` (intercepted binops) and `~` (concatenation);
- the output of macros, blocks and `{% set %}` blocks (`Environment.concat`);
- every filter (size-changing arguments checked, results charged);
- methods of built-in values: a short allow-list, the size-changing ones checked;
- anything printed or turned into text (its "weight", an estimate of the
  length of its text, is checked before `str()` runs).

The budget is per render and kept per thread (a render runs in one thread).
"""

from __future__ import annotations

import re
import string
import threading
from collections.abc import Callable
from functools import wraps
from typing import Any

from jinja2 import ChainableUndefined, StrictUndefined
from jinja2.compiler import CodeGenerator
from jinja2.filters import FILTERS
from jinja2.runtime import markup_join
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import _PassArg

# The largest integer a template may make: far beyond any count or id in an
# event, far below the 4,300 digits at which Python refuses to print one.
MAX_INT_BITS = 4096
DEFAULT_BUDGET = 16 * 256 * 1024


class PromptError(Exception):
    """The template or the rendered prompt is not acceptable; the message says why.

    `code` names the problem for the API's error body (template_syntax,
    template_timeout, template_overflow, template_output_too_large, ...).
    """

    def __init__(self, message: str, code: str = "template_error") -> None:
        super().__init__(message)
        self.code = code


class Budget:
    """Characters a render may still build; `total` is the whole allowance."""

    __slots__ = ("left", "total")

    def __init__(self, total: int) -> None:
        self.left = self.total = total


_local = threading.local()


def budget() -> Budget:
    # Outside a render (Jinja folds constant filter calls while compiling) a
    # fresh budget applies, so compiling cannot allocate without bounds either.
    return getattr(_local, "budget", None) or Budget(DEFAULT_BUDGET)


def begin(total: int) -> None:
    _local.budget = Budget(total)


def end() -> None:
    _local.budget = None


def too_big(size: int, what: str) -> PromptError:
    b = budget()
    return PromptError(
        f"{what} would build a value of {size:,} characters; a render may build "
        f"{b.total:,} characters of values in all, and {max(b.left, 0):,} are left",
        "template_overflow",
    )


def expect(size: int, what: str) -> None:
    """Refuse, before it runs, an operation whose result would be `size` characters."""
    if size > budget().left:
        raise too_big(size, what)


def spend(result: Any) -> Any:
    """Charge a new value to the budget; return it."""
    if isinstance(result, str | bytes | list | tuple):
        b = budget()
        b.left -= len(result)
        if b.left < 0:
            raise PromptError(
                f"the template built more than {b.total:,} characters of values",
                "template_overflow",
            )
    return result


def weight(value: Any, limit: int | None = None) -> int:
    """Estimate the length of `value` as text; stop counting once past `limit`."""
    limit = budget().left if limit is None else limit
    total, stack = 0, [value]
    while stack and total <= limit:
        v = stack.pop()
        if isinstance(v, str | bytes):
            total += len(v)
        elif isinstance(v, bool | float) or v is None:
            total += 5
        elif isinstance(v, int):
            total += v.bit_length() // 3 + 1
        elif isinstance(v, list | tuple):
            total += 2 + 2 * len(v)
            stack.extend(v)
        elif isinstance(v, dict):
            total += 2 + 4 * len(v)
            stack.extend(v.keys())
            stack.extend(v.values())
        elif type(v).__name__ == "Namespace":
            # A namespace prints its attributes, and may even hold itself.
            total += 16
            stack.append(dict(v._Namespace__attrs))  # noqa: SLF001
        else:
            total += 16
    return total


def expect_text(value: Any, what: str) -> None:
    """Refuse turning `value` into text when that text would not fit the budget."""
    if not isinstance(value, str):
        size = weight(value)
        if size > budget().left:
            raise too_big(size, what)


# --- operators ----------------------------------------------------------------------


def _int_bits(n: Any) -> int:
    return n.bit_length() if isinstance(n, int) else 64


def check_binop(op: str, left: Any, right: Any) -> None:
    ints = isinstance(left, int) and isinstance(right, int)
    if op == "**" and ints and right > 0 and abs(left) > 1:
        bits = (abs(left).bit_length() - 1) * right
        if bits > MAX_INT_BITS:
            raise PromptError(
                f"{left} ** {right} is too large a number (a template's numbers stay under "
                f"{MAX_INT_BITS} bits)",
                "template_overflow",
            )
    elif op == "*" and ints:
        if _int_bits(left) + _int_bits(right) > MAX_INT_BITS:
            raise PromptError(
                f"the product would be too large a number (a template's numbers stay under "
                f"{MAX_INT_BITS} bits)",
                "template_overflow",
            )
    elif op == "*":
        seq, times = (left, right) if isinstance(right, int) else (right, left)
        if isinstance(times, int) and isinstance(seq, str | bytes | list | tuple) and times > 0:
            each = len(seq) if isinstance(seq, str | bytes) else weight(seq)
            expect(each * times, f"repeating a value {times:,} times")
    elif op == "+" and isinstance(left, str | bytes | list | tuple):
        expect(weight(left) + weight(right), "joining two values with +")
    elif op == "%" and isinstance(left, str | bytes):
        args = right if isinstance(right, tuple) else [right]
        if isinstance(right, dict):
            args = list(right.values())
        check_percent(left, args)


# %-conversions: optional (key), flags, width, precision, length modifier, type.
PERCENT = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?([a-zA-Z%])")


def check_percent(fmt: str | bytes, args: Any) -> None:
    text = fmt.decode("latin-1") if isinstance(fmt, bytes) else fmt
    fields, padding = 0, 0
    for width, precision, _kind in PERCENT.findall(text):
        if "*" in (width, precision):
            raise PromptError("'*' widths in % formats are not allowed in templates",
                              "template_forbidden")  # fmt: skip
        fields += 1
        padding += int(width or 0) + int(precision or 0)
    widest = max((weight(a) for a in args), default=0)
    expect(len(text) + padding + fields * widest, "this % format")


def check_braces(fmt: str, args: list[Any]) -> None:
    """Size check for str.format: every field may print the widest argument, padded."""
    fields, padding = 0, 0
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format raises the same error itself, without allocating
    for _literal, field, spec, _conversion in parsed:
        if field is None:
            continue
        if spec and "{" in spec:
            raise PromptError("nested {} fields in a format spec are not allowed in templates",
                              "template_forbidden")  # fmt: skip
        fields += 1
        padding += sum(int(n) for n in re.findall(r"\d+", spec or ""))
    widest = max((weight(a) for a in args), default=0)
    expect(len(fmt) + padding + fields * widest, "this format string")


# --- methods of built-in values -------------------------------------------------------

BUILTIN_VALUES = (str, bytes, int, float, list, tuple, dict, range)
# Methods whose result is at most a small multiple of their input: allowed as they are.
SAFE_METHODS = frozenset(
    """capitalize casefold count endswith find index isalnum isalpha isascii isdecimal
    isdigit isidentifier islower isnumeric isprintable isspace istitle isupper lower lstrip
    partition removeprefix removesuffix rfind rindex rpartition rsplit rstrip split splitlines
    startswith strip swapcase title upper encode decode hex striptags unescape escape
    bit_length bit_count conjugate as_integer_ratio is_integer get items keys values copy""".split()
)
# Methods whose result size an argument controls: checked before they run.
CHECKED_METHODS = frozenset(
    "center ljust rjust zfill expandtabs replace join format format_map".split()
)


def check_method(owner: Any, name: str, args: tuple, kwargs: dict) -> None:
    what = f"{type(owner).__name__}.{name}()"
    params = [*args, *kwargs.values()]
    if name in ("center", "ljust", "rjust", "zfill") and params and isinstance(params[0], int):
        expect(max(len(owner), params[0]), what)
    elif name == "expandtabs":
        tab = params[0] if params and isinstance(params[0], int) else 8
        expect(len(owner) + owner.count("\t" if isinstance(owner, str) else b"\t") * tab, what)
    elif name == "replace" and len(params) >= 2:
        check_replace(owner, params[0], params[1], params[2] if len(params) > 2 else -1, what)
    elif name == "join" and params:
        items = params[0] if isinstance(params[0], list | tuple) else []
        expect(weight(items) + len(owner) * len(items), what)


def check_replace(s: Any, old: Any, new: Any, count: Any, what: str) -> None:
    if isinstance(s, str | bytes) and isinstance(old, str | bytes) and isinstance(new, str | bytes):
        hits = s.count(old) if old else len(s) + 1  # type: ignore[arg-type]  # same kind, or raises
        if isinstance(count, int) and count >= 0:
            hits = min(hits, count)
        expect(len(s) + hits * max(0, len(new) - len(old)), what)


# --- filters ------------------------------------------------------------------------


def _center(value, width=80, *_a, **_k):
    expect(max(weight(value), width if isinstance(width, int) else 0), "center")


def _indent(s, width=4, *_a, **_k):
    text = s if isinstance(s, str) else ""
    pad = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    expect(weight(s) + (text.count("\n") + 1) * pad, "indent")


def _format(value, *args, **kwargs):
    if isinstance(value, str):
        check_percent(value, list(kwargs.values()) or list(args))


def _replace(s, old="", new="", count=None, *_a, **_k):
    check_replace(str(s) if not isinstance(s, str | bytes) else s, old, new, count, "replace")


def _wordwrap(s, width=79, break_long_words=True, wrapstring=None, *_a, **_k):
    text = s if isinstance(s, str) else ""
    lines = 2 * len(text) // max(width if isinstance(width, int) else 1, 1) + text.count("\n") + 1
    expect(weight(s) + lines * len(wrapstring or "\n"), "wordwrap")


def _batch(value, linecount=1, fill_with=None, *_a, **_k):
    if fill_with is not None and isinstance(linecount, int):
        expect(linecount * (weight(fill_with) + 1), "batch")


def _slice(value, slices=1, fill_with=None, *_a, **_k):
    if isinstance(slices, int):
        expect(slices * (weight(fill_with) + 2 if fill_with is not None else 2), "slice")


def _sum(iterable=(), attribute=None, start=0, *_a, **_k):
    if not isinstance(start, int | float):
        raise PromptError("sum adds numbers only in templates", "template_forbidden")


def _tojson(value, indent=None, *_a, **_k):
    if indent is not None and not (isinstance(indent, int) and 0 <= indent <= 16):
        raise PromptError("tojson takes an indent of 0 to 16 spaces", "template_forbidden")
    expect_text(value, "tojson")


FILTER_CHECKS: dict[str, Callable[..., None]] = {
    "center": _center, "indent": _indent, "format": _format, "replace": _replace,
    "wordwrap": _wordwrap, "batch": _batch, "slice": _slice, "sum": _sum, "tojson": _tojson,
}  # fmt: skip
# Filters that turn their value into text first: the value's weight is checked.
TEXT_FILTERS = frozenset(
    """capitalize e escape fence forceescape lower pprint safe string striptags title trim truncate
    upper urlencode wordcount xmlattr""".split()
)
# Link markup with a template-chosen attribute repeated per link; no use in a prompt.
DROPPED_FILTERS = ("urlize",)


def guard_filter(name: str, fn: Any) -> Any:
    skip = 1 if _PassArg.from_obj(fn) is not None else 0
    check = FILTER_CHECKS.get(name)

    @wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if name == "join":
            # Materialise the items once (a generator cannot be read twice) and size them.
            items = list(args[skip])
            sep = args[skip + 1] if len(args) > skip + 1 else kwargs.get("d", "")
            expect(weight(items) + len(str(sep)) * len(items), "join")
            args = (*args[:skip], items, *args[skip + 1 :])
        elif check is not None:
            check(*args[skip:], **kwargs)
        elif name in TEXT_FILTERS and len(args) > skip:
            expect_text(args[skip], name)
        return spend(fn(*args, **kwargs))

    return guarded


# --- the environment ---------------------------------------------------------------


class _CodeGenerator(CodeGenerator):
    def visit_Concat(self, node, frame) -> None:  # noqa: N802 (Jinja's visitor name)
        # `a ~ b` normally calls str_join directly; route it through the environment.
        self.write("environment.join_values((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class Sandbox(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment whose templates cannot grow a value past the budget."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _CodeGenerator

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        del self.globals["lipsum"]  # generates text of any size; no use in a prompt
        for name in DROPPED_FILTERS:
            del self.filters[name]
        for name, fn in FILTERS.items():
            if name in self.filters and self.filters[name] is fn:
                self.filters[name] = guard_filter(name, fn)

    def call_binop(self, context, operator, left, right):
        check_binop(operator, left, right)
        try:
            return spend(self.binop_table[operator](left, right))
        except OverflowError:
            raise PromptError(f"the result of {operator} is too large a number",
                              "template_overflow") from None  # fmt: skip

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if not super().is_safe_attribute(obj, attr, value):
            return False
        if callable(value) and isinstance(obj, BUILTIN_VALUES):
            return attr in SAFE_METHODS or attr in CHECKED_METHODS
        return True

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        # Raise at once rather than return an Undefined: a lenient Undefined (the
        # save-time check) would otherwise render an escape attempt as empty text.
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe."
        )

    def wrap_str_format(self, value: Any):
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None
        fmt, is_map = value.__self__, value.__name__ == "format_map"

        def checked(*args: Any, **kwargs: Any) -> str:
            if is_map and args and isinstance(args[0], dict):
                check_braces(fmt, list(args[0].values()))
            else:
                check_braces(fmt, [*args, *kwargs.values()])
            return wrapper(*args, **kwargs)

        return checked

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's signature)
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str | bytes) and getattr(__obj, "__name__", "") in CHECKED_METHODS:
            check_method(owner, __obj.__name__, args, kwargs)
        return spend(super().call(__context, __obj, *args, **kwargs))

    def concat(self, pieces) -> str:
        """Join a macro's, block's or {% set %} block's output, within the budget."""
        pieces = pieces if isinstance(pieces, list) else list(pieces)
        expect(sum(len(p) for p in pieces), "this block")
        return spend("".join(pieces))

    def join_values(self, values: tuple) -> str:
        """`a ~ b ~ c`, within the budget."""
        expect(sum(weight(v) for v in values), "joining values with ~")
        if any(hasattr(v, "__html__") for v in values):
            return spend(markup_join(values))
        return spend("".join(map(str, values)))


def environment(lenient: bool = False, finalize: Any = None) -> Sandbox:
    """A sandbox; `lenient` renders missing fields as empty (for checking against a sample)."""
    return Sandbox(
        undefined=ChainableUndefined if lenient else StrictUndefined,
        autoescape=False,
        finalize=finalize,
        keep_trailing_newline=True,
    )
