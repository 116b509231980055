"""What the management-API commands share: reading an input file, printing results, failing with a message."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console


def fail(message: str) -> NoReturn:
    """Print `message` as an error and exit 1."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def read_text_or_fail(file: Path) -> str:
    """The UTF-8 text of `file`, or exit 1 naming the file and why it cannot be read."""
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        fail(f"cannot read {file}: {err}")


def print_result(data: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any]], Iterable[Any]]) -> None:
    """`data` as indented JSON, or as the lines and rich tables `render` makes of it."""
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    # Piped output is not cut to 80 columns: ids and cursors must survive `| grep` and `| awk`.
    console = Console(width=None if sys.stdout.isatty() else 200)
    for item in render(data):
        if isinstance(item, str):
            typer.echo(item)
        else:
            console.print(item)


def format_time(value: float | None) -> str:
    """A Unix time as `YYYY-MM-DD HH:MM:SS` (UTC), `-` when absent."""
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")


def format_duration(start: float | None, end: float | None) -> str:
    """`end - start` as milliseconds below a second, else seconds; `-` when either is absent."""
    if start is None or end is None:
        return "-"
    seconds = end - start
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.2f}s"
