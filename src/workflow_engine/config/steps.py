"""Step lists → `StepDef`s: the kind key, common fields, the assembled typed config, nested steps and ids."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

from pydantic import BaseModel

from workflow_engine.config.issues import Issue, Path, did_you_mean, format_path
from workflow_engine.config.locate import Locator, ToYaml, field_keys
from workflow_engine.config.models import StepCommon, StepDef
from workflow_engine.config.references import ReferenceChecker, nested_step_fields
from workflow_engine.registry.specs import Registry, StepSpec

COMMON_KEYS = frozenset(field_keys(StepCommon))


def describe_value(value: Any) -> str:
    """`a list`, `a string`, `null`... for messages about a value of the wrong shape."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    names = {str: "a string", int: "a number", float: "a number", list: "a list", dict: "a mapping"}
    return names.get(type(value), type(value).__name__)


class StepParser:
    """Parses the step lists of one workflow, collecting issues; ids are unique across the workflow."""

    def __init__(self, registry: Registry, locator: Locator, refs: ReferenceChecker) -> None:
        self.issues: list[Issue] = []
        self._keys = registry.step_keys()
        self._locator = locator
        self._refs = refs
        self._ids: dict[str, Path] = {}
        self._counters: Counter[str] = Counter()

    def parse_list(self, raw: Any, path: Path) -> tuple[StepDef, ...]:
        """The valid steps of a list; a value that is not a list was reported by its container's model."""
        if not isinstance(raw, list):
            return ()
        steps = (self._step(item, (*path, i)) for i, item in enumerate(raw))
        return tuple(step for step in steps if step is not None)

    def with_ids(self, steps: tuple[StepDef, ...]) -> tuple[StepDef, ...]:
        """`steps` and their children with `_<kind>_<n>` ids where they have none; call after parsing."""
        return tuple(self._with_id(step) for step in steps)

    def _with_id(self, step: StepDef) -> StepDef:
        step_id = step.id or self._auto_id(step.kind)
        children = {name: self.with_ids(steps) for name, steps in step.children.items()}
        return replace(step, id=step_id, children=children)

    def _auto_id(self, kind: str) -> str:
        while True:
            self._counters[kind] += 1
            candidate = f"_{kind}_{self._counters[kind]}"
            if candidate not in self._ids:
                self._ids[candidate] = ()
                return candidate

    def _issue(self, path: Path, message: str, *, key: bool = False) -> None:
        self.issues.append(self._locator.issue(path, message, key=key))

    def _step(self, item: Any, path: Path) -> StepDef | None:
        if not isinstance(item, dict):
            self._issue(path, f"a step must be a mapping with one step kind, not {describe_value(item)}")
            return None
        common = self._common(item, path)
        key = self._kind_key(item, path)
        if key is None:
            return None
        spec = self._keys[key]
        assembled = self._assemble(item, key, spec, path)
        if assembled is None:
            return None
        data, to_yaml = assembled
        nested = {key for _, key in nested_step_fields(spec.config_model)}
        # Inside nested step lists the step parser gives better messages than the field's type.
        config, issues = self._locator.validate(
            spec.config_model, data, to_yaml, skip=lambda p: len(p) > 1 and p[0] in nested
        )
        self.issues += issues
        children = self._children(spec.config_model, data, to_yaml)
        if config is None and (part := self._locator.valid_part(spec.config_model, data)) is not None:
            self.issues += self._refs.check(part, to_yaml).issues
        if config is None or common is None:
            return None
        self.issues += self._refs.check(config, to_yaml).issues
        location = self._locator.at(path)
        return StepDef(common.id or "", spec.name, config, common, children, format_path(path), location)

    def _common(self, item: dict[str, Any], path: Path) -> StepCommon | None:
        step_id = item.get("id")
        if isinstance(step_id, str):
            first = self._ids.setdefault(step_id, path)
            if first != path:
                message = f"duplicate step id '{step_id}' (first used at {format_path(first)})"
                self._issue((*path, "id"), message)
        data = {key: value for key, value in item.items() if key in COMMON_KEYS}
        common, issues = self._locator.validate(StepCommon, data, lambda p: (*path, *p))
        self.issues += issues
        return common

    def _kind_key(self, item: dict[str, Any], path: Path) -> str | None:
        """The one key that names the step's kind; every other key must be a common field or a sibling."""
        kinds = [key for key in item if key in self._keys and key not in COMMON_KEYS]
        if len(kinds) > 1:
            message = f"a step has one kind, but '{kinds[0]}' and '{kinds[1]}' are both step kinds"
            self._issue((*path, kinds[1]), message, key=True)
            return None
        siblings = self._keys[kinds[0]].siblings if kinds else ()
        allowed = COMMON_KEYS.union(self._keys, siblings)
        unknown = [key for key in item if key not in allowed]
        for key in unknown:
            if kinds:
                hint = did_you_mean(key, [*COMMON_KEYS, *siblings])
                message = f"unknown field '{key}' in a '{kinds[0]}' step{hint}"
            else:
                message = f"unknown step kind '{key}'{did_you_mean(key, self._keys)}"
            self._issue((*path, key), message, key=True)
        if not kinds and not unknown:
            self._issue(path, f"the step has no kind; expected one of: {', '.join(sorted(self._keys))}")
        return kinds[0] if kinds else None

    def _assemble(
        self, item: dict[str, Any], key: str, spec: StepSpec, path: Path
    ) -> tuple[dict[str, Any], ToYaml] | None:
        """The config dict of a step, and where each of its fields came from in the YAML."""
        value = item[key]
        origins: dict[str, Path] = {}
        filled = spec.value_field or (spec.shorthand if not isinstance(value, dict) else None)
        if filled is not None:
            filled = _data_key(spec.config_model, filled)
            data: dict[str, Any] = {filled: value}
            origins[filled] = (key,)
        elif value is None or isinstance(value, dict):
            data = dict(value or {})
        else:
            self._issue((*path, key), f"a '{key}' step takes a mapping, not {describe_value(value)}")
            return None
        for sibling in spec.siblings:
            if sibling in item:
                if sibling in data:
                    message = f"'{sibling}' is given both here and inside '{key}'"
                    self._issue((*path, sibling), message, key=True)
                data[sibling] = item[sibling]
                origins[sibling] = (sibling,)

        def to_yaml(rel: Path) -> Path:
            if rel and rel[0] in origins:
                return (*path, *origins[str(rel[0])], *rel[1:])
            return (*path, key, *rel)

        return data, to_yaml

    def _children(
        self, model: type[BaseModel], data: dict[str, Any], to_yaml: ToYaml
    ) -> dict[str, tuple[StepDef, ...]]:
        """Nested step lists by field name (`steps`), or `field.name` for a mapping of lists (`cases.big`)."""
        children: dict[str, tuple[StepDef, ...]] = {}
        for name, key in nested_step_fields(model):
            raw, where = data.get(key), to_yaml((key,))
            if isinstance(raw, list):
                children[name] = self.parse_list(raw, where)
            elif isinstance(raw, dict):
                for sub, steps in raw.items():
                    if isinstance(steps, list):
                        children[f"{name}.{sub}"] = self.parse_list(steps, (*where, sub))
                    else:
                        self._issue((*where, sub), f"expected a list of steps, not {describe_value(steps)}")
        return children


def _data_key(model: type[BaseModel], name: str) -> str:
    info = model.model_fields.get(name)
    return (info.alias or name) if info is not None else name
