"""Field markers (`ModuleRef`, `TopicRef`, `WorkflowRef`, `NestedSteps`) and the check that references resolve."""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from workflow_engine.config.issues import Issue, Path, did_you_mean
from workflow_engine.config.locate import Locator, ToYaml
from workflow_engine.registry.specs import ModuleRef, NestedSteps, Registry, TopicRef, WorkflowRef

Marker = ModuleRef | TopicRef | WorkflowRef | NestedSteps


def annotation_markers(annotation: Any) -> list[Marker]:
    """Markers anywhere in an annotation: `Annotated[str, ModuleRef()] | None`, `list[Annotated[...]]`."""
    found: list[Marker] = []
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Annotated:
        found.extend(m for m in args[1:] if isinstance(m, Marker))
        args = args[:1]
    for arg in args:
        found.extend(annotation_markers(arg))
    return found


@functools.cache
def field_markers(model: type[BaseModel]) -> dict[str, tuple[Marker, ...]]:
    """Markers of each field of `model`, by python field name."""
    return {
        name: tuple(dict.fromkeys([
            *(m for m in info.metadata if isinstance(m, Marker)), *annotation_markers(info.annotation)
        ]))
        for name, info in model.model_fields.items()
    }


def nested_step_fields(model: type[BaseModel]) -> list[tuple[str, str]]:
    """`(field name, YAML key)` of every field of `model` that holds nested steps."""
    return [
        (name, model.model_fields[name].alias or name)
        for name, markers in field_markers(model).items()
        if any(isinstance(m, NestedSteps) for m in markers)
    ]


def holds_step_mapping(annotation: Any) -> bool:
    """Whether a nested-steps field holds a mapping of step lists (`cases`) rather than one list."""
    origin = typing.get_origin(annotation)
    if origin is dict:
        return True
    if origin in (typing.Annotated, typing.Union, types.UnionType):
        return any(holds_step_mapping(arg) for arg in typing.get_args(annotation))
    return False


@dataclass
class RefResult:
    """What checking one config found: issues, and the modules it names (name, YAML path)."""

    issues: list[Issue] = field(default_factory=list)
    modules: list[tuple[str, Path]] = field(default_factory=list)


class ReferenceChecker:
    """Checks that module and workflow references in validated configs name declared things."""

    def __init__(
        self, registry: Registry, locator: Locator, module_types: Mapping[str, str], workflows: set[str],
        module_configs: Mapping[str, Any] | None = None,
    ) -> None:
        self._registry = registry
        self._locator = locator
        self._module_types = module_types
        self._workflows = workflows
        # Raw (unvalidated) module configs by name: what topic checks may depend on (a NATS stream's subjects).
        self._module_configs = module_configs or {}

    def check(self, config: BaseModel, to_yaml: ToYaml) -> RefResult:
        """Walk `config` (nested models, lists and dicts included) and check every marked field."""
        result = RefResult()
        self._walk(config, (), to_yaml, result)
        return result

    def _walk(self, value: Any, path: Path, to_yaml: ToYaml, result: RefResult) -> None:
        if isinstance(value, BaseModel):
            markers = field_markers(type(value))
            for name, info in type(value).model_fields.items():
                if any(isinstance(m, NestedSteps) for m in markers[name]):
                    continue  # nested steps are parsed and checked as steps of their own
                sub, sub_path = getattr(value, name), (*path, info.alias or name)
                for marker in markers[name]:
                    if isinstance(marker, TopicRef):
                        self._check_topic(marker, sub, getattr(value, marker.module_field), path=sub_path,
                                          to_yaml=to_yaml, result=result)
                    else:
                        self._check(marker, sub, sub_path, to_yaml, result)
                self._walk(sub, sub_path, to_yaml, result)
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                self._walk(item, (*path, i), to_yaml, result)
        elif isinstance(value, dict):
            for key, item in value.items():
                self._walk(item, (*path, key), to_yaml, result)

    def _check(self, marker: Marker, value: Any, path: Path, to_yaml: ToYaml, result: RefResult) -> None:
        if isinstance(value, str):
            named = [(value, path)]
        elif isinstance(value, list | tuple):
            named = [(v, (*path, i)) for i, v in enumerate(value) if isinstance(v, str)]
        else:
            return
        for name, where in named:
            message = None
            if isinstance(marker, ModuleRef):
                message = self._module_problem(name, marker)
                if message is None:
                    result.modules.append((name, to_yaml(where)))
            elif isinstance(marker, WorkflowRef) and name not in self._workflows:
                message = f"unknown workflow '{name}'{did_you_mean(name, self._workflows)}"
            if message is not None:
                result.issues.append(self._locator.issue(to_yaml(where), message))

    def _check_topic(self, marker: TopicRef, topic: Any, module: Any, *, path: Path, to_yaml: ToYaml,
                     result: RefResult) -> None:
        """A literal topic in the syntax of the broker its sibling field names (templates are checked when
        they render; a module that is unknown or not a broker is reported by its own field)."""
        if not isinstance(topic, str) or "{{" in topic or not isinstance(module, str):
            return
        spec = self._registry.modules.get(self._module_types.get(module, ""))
        if spec is None or spec.check_topic is None:
            return
        problem = spec.check_topic(topic, pattern=marker.pattern, config=self._module_configs.get(module))
        if problem is not None:
            result.issues.append(self._locator.issue(to_yaml(path), f"{problem} ({spec.type} module '{module}')"))

    def _module_problem(self, name: str, marker: ModuleRef) -> str | None:
        if name not in self._module_types:
            return f"unknown module '{name}'{did_you_mean(name, self._module_types)}"
        spec = self._registry.modules.get(self._module_types[name])
        if spec is None or not marker.kinds or spec.kind in marker.kinds:
            return None  # an unknown type is reported where the module is declared
        expected = ", ".join(marker.kinds)
        return f"module '{name}' is a {spec.type} (kind {spec.kind}); expected one of: {expected}"
