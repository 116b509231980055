"""`${VAR}` and `${VAR:-default}` expansion in every string of the config; `$${` is a literal `${`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from workflow_engine.config.issues import Path

_REFERENCE = re.compile(r"\$\$\{|\$\{(?:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\})?")

_MALFORMED = "malformed environment reference: write ${NAME}, ${NAME:-default}, or $${ for a literal ${"

EnvProblem = tuple[Path, str]
"""A path into the data and what is wrong there."""


def expand_env(data: Any, env: Mapping[str, str]) -> tuple[Any, list[EnvProblem]]:
    """A copy of `data` with references expanded, and the problems found (unset variables, bad syntax)."""
    problems: list[EnvProblem] = []
    return _walk(data, (), env, problems), problems


def expand_string(text: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """`text` with references expanded, and one message per reference that cannot be expanded."""
    if "$" not in text:
        return text, []
    messages: list[str] = []

    def replace(match: re.Match[str]) -> str:
        whole, name, default = match.group(0), match.group(1), match.group(2)
        if whole == "$${":
            return "${"
        if name is None:
            messages.append(_MALFORMED)
            return whole
        value = env.get(name)
        # Shell semantics: `:-` also applies to a variable that is set but empty.
        if value:
            return value
        if default is not None:
            return default
        if value is not None:
            return value
        messages.append(f"environment variable '{name}' is not set and has no default")
        return whole

    return _REFERENCE.sub(replace, text), messages


def _walk(value: Any, path: Path, env: Mapping[str, str], problems: list[EnvProblem]) -> Any:
    if isinstance(value, str):
        expanded, messages = expand_string(value, env)
        problems.extend((path, message) for message in messages)
        return expanded
    if isinstance(value, dict):
        return {key: _walk(item, (*path, key), env, problems) for key, item in value.items()}
    if isinstance(value, list):
        return [_walk(item, (*path, i), env, problems) for i, item in enumerate(value)]
    return value
