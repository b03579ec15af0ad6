"""Tracebacks of processor failures, as stored with the task.

The standard library's formatting checks every source file of a traceback on disk
(``linecache.checkcache``: one ``os.stat`` per file, per exception). Each call releases the
GIL, and on a busy worker getting it back means waiting behind the other threads: in a
drain where every task failed, those waits were 56% of the worker's time (py-spy) and the
worker recorded ~5,000 failures/s. This gives the same text (without the 3.11 ``^^^``
markers) from the source lines already in ``linecache``; a file not read yet is read once.
"""

from __future__ import annotations

import builtins
import linecache
import traceback
from types import TracebackType

_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"
#: Like the standard library: a line repeated more often is summarised.
_REPEATS_SHOWN = 3
#: Exception groups (Python 3.11+) print their members' tracebacks nested: left to the
#: standard library.
_GROUP: type[BaseException] | None = getattr(builtins, "BaseExceptionGroup", None)


def format_traceback(exc: BaseException) -> str:
    """``"".join(traceback.format_exception(exc))``, chained exceptions included."""
    chain: list[tuple[BaseException, str]] = []  # (exception, text that follows it)
    seen: set[int] = set()
    current: BaseException | None = exc
    link = ""
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = current.__cause__, _CAUSE
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, _CONTEXT
        else:
            current = None
    if _GROUP is not None and any(isinstance(e, _GROUP) for e, _ in chain):
        return "".join(traceback.format_exception(exc))
    parts: list[str] = []
    for e, link in reversed(chain):  # oldest first, as Python prints them
        if e.__traceback__ is not None:
            parts.append("Traceback (most recent call last):\n")
            parts.extend(_frames(e.__traceback__))
        parts.extend(traceback.format_exception_only(type(e), e))
        parts.append(link)
    return "".join(parts)


def _frames(tb: TracebackType) -> list[str]:
    out: list[str] = []
    last: tuple[str, int, str] | None = None
    repeats = 0
    for frame, lineno in traceback.walk_tb(tb):
        code = frame.f_code
        where = (code.co_filename, lineno, code.co_name)
        if where == last:
            repeats += 1
            if repeats >= _REPEATS_SHOWN:
                continue
        else:
            _summarise(out, repeats)
            last, repeats = where, 0
        text = f'  File "{code.co_filename}", line {lineno}, in {code.co_name}\n'
        line = linecache.getline(code.co_filename, lineno, frame.f_globals).strip()
        out.append(text + (f"    {line}\n" if line else ""))
    _summarise(out, repeats)
    return out


def _summarise(out: list[str], repeats: int) -> None:
    hidden = repeats - _REPEATS_SHOWN + 1
    if hidden > 0:
        out.append(f"  [Previous line repeated {hidden} more time{'s' if hidden > 1 else ''}]\n")
