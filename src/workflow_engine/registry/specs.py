"""Spec values: one declaration per module, step and trigger type drives validation, schema, docs and wiring."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from workflow_engine.errors import WorkflowEngineError


@dataclass(frozen=True, slots=True)
class ModuleRef:
    """Field metadata: the field names a module; `kinds` are the module kinds it accepts (empty = any)."""

    kinds: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TopicRef:
    """Field metadata: the field is a topic of the broker module named by the sibling field `module_field`,
    checked against that broker type's syntax (`ModuleSpec.check_topic`); `pattern`: wildcards allowed."""

    module_field: str = "broker"
    pattern: bool = False


@dataclass(frozen=True, slots=True)
class WorkflowRef:
    """Field metadata: the field names a workflow of the same config."""


@dataclass(frozen=True, slots=True)
class NestedSteps:
    """Field metadata: the field holds a list of steps (or a mapping of names to step lists)."""


@dataclass(frozen=True)
class ModuleSpec:
    """A module type: `type` is the YAML name (`http.server`), `kind` its family (`http_server`)."""

    type: str
    kind: str
    config_model: builtins.type[BaseModel]
    factory: Callable[..., Any]
    summary: str
    # Brokers: `check_topic(topic, pattern=...)`, why a topic (a pattern when `pattern`) is not valid in this
    # broker's syntax, or None (the broker class's own check, which it also runs at start).
    check_topic: Callable[..., str | None] | None = None


@dataclass(frozen=True)
class StepSpec:
    """A step type, recognised in YAML by its `key` (usually the name; `then` for `if`).

    `shorthand` names the config field a non-mapping value fills (`call: pricing`, `log: "text"`);
    `value_field` names the field the value always fills, mapping or not (`set: {a: 1}`); `siblings` are
    extra top-level keys of the step that belong to its config (`with` for `call`, `else` for `if`).
    """

    name: str
    config_model: type[BaseModel]
    factory: Callable[..., Any]
    summary: str
    key: str = ""
    shorthand: str | None = None
    value_field: str | None = None
    siblings: tuple[str, ...] = ()

    @property
    def yaml_key(self) -> str:
        return self.key or self.name


@dataclass(frozen=True)
class TriggerSpec:
    """A trigger type (`http`, `schedule`, `event`, `manual`, ...)."""

    name: str
    config_model: type[BaseModel]
    factory: Callable[..., Any]
    summary: str
    # What a trigger of this kind takes for itself alone, from its config and workflow name: (key, field, what)
    # with `key` equal for two triggers that would collide (one route, one consumer group), `field` the config
    # field an issue points at, and `what` how the issue names it. Validation refuses a second taker.
    claims: Callable[[Any, str], list[tuple[tuple[Any, ...], str, str]]] | None = None


class RegistryError(WorkflowEngineError):
    """A type was registered twice or looked up under an unknown name."""

    code = "registry_error"


@dataclass
class Registry:
    """The set of known module, step and trigger types. Tests build their own; see `builtins.default_registry`."""

    modules: dict[str, ModuleSpec] = field(default_factory=dict)
    steps: dict[str, StepSpec] = field(default_factory=dict)
    triggers: dict[str, TriggerSpec] = field(default_factory=dict)

    def add_module(self, spec: ModuleSpec) -> None:
        _add(self.modules, spec.type, spec, "module type")

    def add_step(self, spec: StepSpec) -> None:
        _add(self.steps, spec.name, spec, "step type")

    def add_trigger(self, spec: TriggerSpec) -> None:
        _add(self.triggers, spec.name, spec, "trigger type")

    def step_keys(self) -> dict[str, StepSpec]:
        """Step specs by the YAML key that selects them."""
        return {spec.yaml_key: spec for spec in self.steps.values()}


def _add(table: dict[str, Any], name: str, spec: Any, what: str) -> None:
    if name in table:
        raise RegistryError(f"{what} '{name}' is already registered")
    table[name] = spec
