"""Watching a component's source file: each save (debounced) calls back with the file's new text."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from watchfiles import Change, awatch


async def watch_source(path: Path, on_change: Callable[[], Awaitable[None]], *, debounce: float) -> None:
    """Call `on_change()` after each change of `path` (absolute) within `debounce` seconds, until cancelled.

    The directory is watched, not the file: editors and `os.replace` swap the file for a new inode, which a
    watch on the old inode would miss.
    """
    target = str(path)

    def wanted(_change: Change, changed: str) -> bool:
        return changed == target

    async for _changes in awatch(path.parent, watch_filter=wanted, debounce=max(1, int(debounce * 1000)),
                                 step=10, recursive=False):
        await on_change()
