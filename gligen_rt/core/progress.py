"""The one progress-bar style of every command (generate, export, build, bench): tqdm on stderr.

A bar shows only when stderr is a terminal (nothing is written into pipes or log files) and is
removed when it ends (``leave=False``), so the command's own output stays what remains on screen.
tqdm is a core dependency (pyproject.toml); it is imported here only, when a bar is made.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


def enabled(requested: bool = True) -> bool:
    """Whether a bar would show: requested, and stderr is a terminal."""
    return bool(requested) and sys.stderr.isatty()


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    show: bool = True,
) -> Any:
    """A tqdm bar over `iterable` (or with `total` and ``.update(n)``); silent unless :func:`enabled`.

    The returned object is always a tqdm (disabled when silent), so callers use one code path:
    iterate it, ``update(1)``, ``set_postfix_str(...)``, ``close()``.
    """
    from tqdm import tqdm

    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        leave=False,
        dynamic_ncols=True,
        disable=not enabled(show),
        file=sys.stderr,
    )
