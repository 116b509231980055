"""Config issues: each names its file, line, column and path; formatted `FILE:LINE:COL: PATH: MESSAGE`."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

PathPart = str | int
Path = tuple[PathPart, ...]


@dataclass(frozen=True, slots=True)
class Location:
    """A place in a config file (1-based line and column)."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem found in a config file."""

    location: Location
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.path or '<root>'}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        loc = self.location
        return {"file": loc.file, "line": loc.line, "col": loc.col, "path": self.path, "message": self.message}


def format_path(parts: Sequence[PathPart]) -> str:
    """`('modules', 2, 'config', 'port')` → `modules[2].config.port`."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """A ` (did you mean 'x'?)` hint for the closest candidate, or an empty string."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{matches[0]}'?)" if matches else ""
