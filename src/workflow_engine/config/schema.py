"""JSON Schema (draft 2020-12) of the whole config file, precise per module, trigger and step type."""

from __future__ import annotations

import copy
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from workflow_engine.config.models import AppDecl, ModuleDecl, StepCommon, WorkflowDecl
from workflow_engine.config.references import holds_step_mapping, nested_step_fields
from workflow_engine.registry.specs import Registry, StepSpec

DIALECT = "https://json-schema.org/draft/2020-12/schema"
_STEP_REF = {"$ref": "#/$defs/step"}
_STEP_LIST = {"type": "array", "items": _STEP_REF}

JsonSchema = dict[str, Any]


def app_json_schema(registry: Registry) -> JsonSchema:
    """The schema of a config file for `registry`'s types, for editors (yaml-language-server) and linters."""
    models = _reachable([AppDecl, StepCommon, *_spec_models(registry)])
    refs, top = models_json_schema([(m, "validation") for m in models], ref_template="#/$defs/{model}")
    defs: dict[str, JsonSchema] = top.get("$defs", {})
    names = {m: str(refs[(m, "validation")]["$ref"]).rsplit("/", 1)[-1] for m in models}
    for model in models:
        _patch_nested_steps(defs[names[model]], model)
    defs["step"] = _step_schema(registry, defs, names)
    _patch_module(defs[names[ModuleDecl]], registry, names)
    _patch_workflow(defs[names[WorkflowDecl]], registry, names)
    root = defs.pop(names[AppDecl])
    root.pop("title", None)
    # Parts are shared between definitions while building; the caller gets a tree it may change freely.
    schema = {"$schema": DIALECT, "title": "workflow-engine configuration", **root, "$defs": defs}
    return copy.deepcopy(schema)


def _spec_models(registry: Registry) -> list[type[BaseModel]]:
    specs: list[Any] = [*registry.modules.values(), *registry.triggers.values(), *registry.steps.values()]
    return [spec.config_model for spec in specs]


def _reachable(roots: list[type[BaseModel]]) -> list[type[BaseModel]]:
    """`roots` and every model their fields use, each once, so each has a known definition name."""
    seen: dict[type[BaseModel], None] = {}
    pending = list(roots)
    while pending:
        model = pending.pop(0)
        if model in seen:
            continue
        seen[model] = None
        for info in model.model_fields.values():
            pending.extend(_models_in(info.annotation))
    return list(seen)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]


def _patch_nested_steps(schema: JsonSchema, model: type[BaseModel]) -> None:
    """Nested step fields hold steps: point them at the step definition instead of plain objects."""
    for name, key in nested_step_fields(model):
        info = model.model_fields[name]
        steps: JsonSchema = _STEP_LIST
        if holds_step_mapping(info.annotation):
            steps = {"type": "object", "additionalProperties": _STEP_LIST}
        if not info.is_required() and info.default is None:
            steps = {"anyOf": [steps, {"type": "null"}]}
        old = schema["properties"][key]
        schema["properties"][key] = {**{k: old[k] for k in ("title", "description") if k in old}, **steps}


def _step_schema(
    registry: Registry, defs: dict[str, JsonSchema], names: dict[type[BaseModel], str]
) -> JsonSchema:
    common = defs[names[StepCommon]]["properties"]
    branches = [
        _step_branch(key, spec, common, defs, names[spec.config_model])
        for key, spec in sorted(registry.step_keys().items())
    ]
    description = "A step: the common fields and exactly one step kind."
    return {"type": "object", "description": description, "oneOf": branches}


def _step_branch(key: str, spec: StepSpec, common: JsonSchema, defs: JsonSchema, name: str) -> JsonSchema:
    """The steps of one kind: `key` holds the config (or its shorthand), siblings sit beside it."""
    config = defs[name]
    props: JsonSchema = config.get("properties", {})
    required: list[str] = config.get("required", [])
    siblings = {s: props[s] for s in spec.siblings if s in props}
    mapping: JsonSchema = {"$ref": f"#/$defs/{name}"}
    if siblings:
        # The siblings sit beside the kind key, so the mapping under it must not require or allow them.
        mapping = copy.deepcopy(config)
        mapping["properties"] = {k: v for k, v in props.items() if k not in siblings}
        mapping["required"] = [r for r in required if r not in siblings]
    if not [r for r in required if r not in siblings]:
        mapping = {"anyOf": [mapping, {"type": "null"}]}  # `kind:` alone means all defaults
    value: JsonSchema = mapping
    if spec.value_field is not None:
        value = props[_key(spec.config_model, spec.value_field)]
    elif spec.shorthand is not None:
        value = {"anyOf": [mapping, props[_key(spec.config_model, spec.shorthand)]]}
    return {
        "type": "object",
        "title": key,
        "description": spec.summary,
        "properties": {**common, key: value, **siblings},
        "required": [key, *(s for s in siblings if s in required)],
        "additionalProperties": False,
    }


def _key(model: type[BaseModel], name: str) -> str:
    info = model.model_fields.get(name)
    return (info.alias or name) if info is not None else name


def _patch_module(schema: JsonSchema, registry: Registry, names: dict[type[BaseModel], str]) -> None:
    """Module items: `type` is one of the registered types and selects the schema of `config`."""
    schema["properties"]["type"]["enum"] = sorted(registry.modules)
    schema["allOf"] = [
        {
            "if": {"properties": {"type": {"const": type_name}}, "required": ["type"]},
            "then": {"properties": {"config": {"$ref": f"#/$defs/{names[spec.config_model]}"}}},
        }
        for type_name, spec in sorted(registry.modules.items())
    ]


def _patch_workflow(schema: JsonSchema, registry: Registry, names: dict[type[BaseModel], str]) -> None:
    """Workflows: `trigger` has exactly one registered kind; `steps` and `on_error` hold steps."""
    props = schema["properties"]
    kinds = {
        name: {"anyOf": [{"$ref": f"#/$defs/{names[spec.config_model]}"}, {"type": "null"}]}
        for name, spec in sorted(registry.triggers.items())
    }
    trigger = {"type": "object", "properties": kinds, "additionalProperties": False,
               "minProperties": 1, "maxProperties": 1}
    props["trigger"] = {"description": props["trigger"].get("description", ""),
                        "anyOf": [trigger, {"type": "null"}]}
    props["steps"] = {"description": props["steps"].get("description", ""), **_STEP_LIST, "minItems": 1}
    props["on_error"] = {"description": props["on_error"].get("description", ""), **_STEP_LIST}
