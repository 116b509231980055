"""Turning paths and pydantic errors into located issues (`FILE:LINE:COL: PATH: MESSAGE`)."""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from workflow_engine.config.issues import Issue, Location, Path, PathPart, did_you_mean, format_path
from workflow_engine.config.yaml_loader import Positions

ToYaml = Callable[[Path], Path]
"""Maps a path inside validated data to the path of the same value in the YAML document."""

M = TypeVar("M", bound=BaseModel)


def same_path(path: Path) -> Path:
    """The identity `ToYaml`: the data was validated where it stands in the document."""
    return path


def never(path: Path) -> bool:
    """A `skip` predicate that keeps every error."""
    return False


class Locator:
    """Knows where each path of one document is."""

    def __init__(self, file: str, positions: Positions) -> None:
        self.file = file
        self.positions = positions

    def at(self, path: Path, *, key: bool = False) -> Location:
        """The position of `path` (its key when `key`), else of its nearest enclosing value."""
        if key and path in self.positions.keys:
            return Location(self.file, *self.positions.keys[path])
        for end in range(len(path), -1, -1):
            found = self.positions.values.get(path[:end])
            if found is not None:
                return Location(self.file, *found)
        return Location(self.file, 1, 1)

    def issue(self, path: Path, message: str, *, key: bool = False) -> Issue:
        """An issue at `path`."""
        return Issue(self.at(path, key=key), format_path(path), message)

    def validate(
        self,
        model: type[M],
        data: Any,
        to_yaml: ToYaml = same_path,
        skip: Callable[[Path], bool] = never,
    ) -> tuple[M | None, list[Issue]]:
        """Validate `data` as `model`; errors become issues located through `to_yaml`, unless `skip`ped."""
        try:
            return model.model_validate(data), []
        except ValidationError as err:
            return None, self.validation_issues(err, model, data, to_yaml, skip)
        except Exception as err:
            # A type's validator that raises something other than ValueError on odd input is a bug in
            # that type, but a config file must still get issues back rather than crash the validator.
            message = f"cannot validate this value ({type(err).__name__}: {err})"
            return None, [self.issue(to_yaml(()), message)]

    @staticmethod
    def valid_part(model: type[M], data: Any) -> M | None:
        """`data` (which fails `model`) without its top-level keys that fail, validated: so that checks of the
        fields that are right (references, topics) run in the same round; None when that fails too."""
        if not isinstance(data, dict):
            return None
        try:
            model.model_validate(data)
            return None
        except ValidationError as err:
            bad = {e["loc"][0] for e in err.errors() if e["loc"]}
        except Exception:  # reported by `validate`
            return None
        try:
            return model.model_validate({k: v for k, v in data.items() if k not in bad})
        except Exception:  # a required field failed, or a cross-field check: nothing to check further
            return None

    def validation_issues(
        self,
        error: ValidationError,
        model: type[BaseModel],
        data: Any,
        to_yaml: ToYaml = same_path,
        skip: Callable[[Path], bool] = never,
    ) -> list[Issue]:
        """One issue per pydantic error, each pointing at the YAML value (or key) it is about."""
        issues = []
        for detail in error.errors(include_url=False):
            path, on_key = data_path(detail, data)
            if skip(path):
                continue
            issues.append(self.issue(to_yaml(path), _message(detail, model, path), key=on_key))
        return issues


def data_path(detail: ErrorDetails, data: Any) -> tuple[Path, bool]:
    """The error's place in `data`, and whether it is about a key rather than a value.

    pydantic's `loc` mixes places in the data with union-member and validator tags (`str`,
    `function-after[...]`); only the parts that exist in the data are kept, plus the name of a missing field.
    """
    loc, kind = detail["loc"], detail["type"]
    path: list[PathPart] = []
    on_key = kind == "extra_forbidden"
    current = data
    for i, part in enumerate(loc):
        if part == "[key]":
            on_key = True
        elif _contains(current, part):
            current = current[part]
            path.append(part)
        elif kind == "missing" and i == len(loc) - 1:
            path.append(part)
    return tuple(path), on_key


def _contains(data: Any, part: PathPart) -> bool:
    if isinstance(data, dict):
        return part in data
    return isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)


def _message(detail: ErrorDetails, model: type[BaseModel], path: Path) -> str:
    if detail["type"] == "extra_forbidden" and path:
        name = str(path[-1])
        parent = model_at(model, path[:-1])
        hint = did_you_mean(name, field_keys(parent)) if parent is not None else ""
        return f"unknown field '{name}'{hint}"
    return detail["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")


def field_keys(model: type[BaseModel]) -> list[str]:
    """The keys a model accepts in YAML (aliases where set)."""
    return [info.alias or name for name, info in model.model_fields.items()]


def model_at(model: type[BaseModel], path: Sequence[PathPart]) -> type[BaseModel] | None:
    """The model class that validates the value at `path` inside `model`, if the annotations tell."""
    current: Any = model
    for part in path:
        target = _pick(current, dict if isinstance(part, str) else list)
        if isinstance(target, type) and issubclass(target, BaseModel):
            info = next((f for n, f in target.model_fields.items() if (f.alias or n) == part), None)
            if info is None:
                return None
            current = info.annotation
        elif typing.get_origin(target) in (dict, list, tuple, set, frozenset):
            current = typing.get_args(target)[-1] if typing.get_args(target) else Any
        else:
            return None
    found = _pick(current, dict)
    return found if isinstance(found, type) and issubclass(found, BaseModel) else None


def _pick(annotation: Any, container: type) -> Any:
    """From a possibly annotated or optional type, the member that can hold a `container` value."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _pick(typing.get_args(annotation)[0], container)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [_pick(arg, container) for arg in typing.get_args(annotation)]
        return next((m for m in members if _holds(m, container)), None)
    return annotation


def _holds(annotation: Any, container: type) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return container is dict
    origin = typing.get_origin(annotation)
    if container is dict:
        return origin is dict
    return origin in (list, tuple, set, frozenset)
