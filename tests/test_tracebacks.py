"""ferroq.tracebacks gives the standard library's text (less the ^^^ markers of 3.11)."""

from __future__ import annotations

import re
import sys
import traceback
from typing import Callable

import pytest

from ferroq.tracebacks import format_traceback


def _standard(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(exc))
    # Python 3.11 underlines the failing expression with lines of ^ and ~ only.
    return "".join(line for line in text.splitlines(keepends=True) if not re.fullmatch(r"\s*[\^~]+\s*", line))


def _caught(raiser: Callable[[], object]) -> BaseException:
    try:
        raiser()
    except BaseException as exc:  # noqa: BLE001 - any exception is the subject here
        return exc
    raise AssertionError("nothing was raised")


def _nested() -> None:
    def inner() -> None:
        raise ValueError("deep")

    inner()


def _caused() -> None:
    try:
        _nested()
    except ValueError as e:
        raise KeyError("outer") from e


def _during() -> None:
    empty: dict[str, int] = {}
    try:
        empty["missing"]
    except KeyError:
        raise RuntimeError("while handling")  # noqa: B904 - the implicit context is the subject


def _suppressed() -> None:
    try:
        _nested()
    except ValueError:
        raise TypeError("clean") from None


def _noted() -> None:
    e = ValueError("with a note")
    if hasattr(e, "add_note"):
        e.add_note("a note")
    raise e


def _recursive(n: int = 50) -> None:
    if n == 0:
        raise RecursionError("bottom")
    _recursive(n - 1)


@pytest.mark.parametrize(
    "raiser", [_nested, _caused, _during, _suppressed, _noted, _recursive], ids=lambda f: f.__name__
)
def test_same_text_as_the_standard_library(raiser: Callable[[], object]) -> None:
    exc = _caught(raiser)
    assert format_traceback(exc) == _standard(exc)
    assert format_traceback(exc).startswith("Traceback (most recent call last):\n")


def test_an_exception_never_raised_has_no_traceback_section() -> None:
    exc = ValueError("made, not raised")
    assert format_traceback(exc) == "ValueError: made, not raised\n" == _standard(exc)


def test_a_cycle_of_contexts_ends() -> None:
    a, b = ValueError("a"), ValueError("b")
    a.__context__, b.__context__ = b, a
    assert format_traceback(a).endswith("ValueError: a\n")


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception groups are Python 3.11+")
def test_exception_groups_are_formatted_by_the_standard_library() -> None:
    def group() -> None:
        member = _caught(_nested)
        assert isinstance(member, Exception)
        raise ExceptionGroup("many", [member])  # noqa: F821 - 3.11+ builtin

    exc = _caught(group)
    assert format_traceback(exc) == "".join(traceback.format_exception(exc))
