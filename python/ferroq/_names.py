"""The module part of a default task name.

A function defined in the script that runs (``python app.py``) has ``__module__ ==
"__main__"``, and so had the task name ``__main__.resize``; ``ferroq worker app:q`` imports
the same file as ``app`` and registers ``app.resize``, so it had no processor for what the
script enqueued. A task defined in ``__main__`` is therefore named as it is when imported:
``__main__.__spec__.name`` under ``python -m pkg.app`` (``pkg.app``), else the script's file
name (``app`` for ``app.py``). A process-pool child imports the script as ``__mp_main__``:
the same rule gives it the same name.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

from .errors import InvalidArgument

_SCRIPT_MODULES = ("__main__", "__mp_main__")


def module_of(fn: Callable[..., Any]) -> str:
    """The module ``fn`` belongs to, as an import of its file would name it."""
    module = str(getattr(fn, "__module__", None))
    if module not in _SCRIPT_MODULES:
        return module
    main = sys.modules.get(module)
    spec = getattr(main, "__spec__", None)
    spec_name = getattr(spec, "name", None)
    if isinstance(spec_name, str) and spec_name not in _SCRIPT_MODULES:
        return spec_name
    path = getattr(main, "__file__", None)
    if isinstance(path, str) and Path(path).stem:
        return Path(path).stem
    qualname = getattr(fn, "__qualname__", repr(fn))
    raise InvalidArgument(
        f"task {qualname!r} is defined in __main__ without a file (python -c, or an interactive session), so it "
        f"has no name a worker could find it by: pass one, e.g. @queue.task(name={qualname!r})"
    )
