from __future__ import annotations

import textwrap
from typing import Any

import jsonschema
import pytest
import yaml

from workflow_engine.config.schema import app_json_schema
from workflow_engine.registry.specs import Registry

SAMPLE = """\
version: 1
name: shop
engine: {shutdown_grace: 5s, management: {address: "0.0.0.0:9000"}}
modules:
  - {name: web, type: http.server, config: {port: 9000}}
  - {name: bus, type: broker.memory}
  - name: db
    type: database.sqlite
    depends_on: [bus]
    config: {url: "sqlite://", events: bus}
workflows:
  create-order:
    trigger: {http: {server: web, method: POST, path: /orders}}
    timeout: 2s
    steps:
      - id: first
        log: hello
        retry: {attempts: 2, initial: 100ms}
      - log: {message: x, level: debug}
      - set: {a: 1}
      - call: db
        with: {x: 1}
      - if: "{{ true }}"
        then: [{log: a}]
        else: [{log: b}]
      - foreach:
          items: "{{ [] }}"
          steps: [{workflow: tick}]
      - switch:
          value: x
          cases: {big: [{log: big}]}
      - http: {url: /x}
    on_error:
      - log: failed
  tick:
    trigger: {schedule: {every: 1m}}
    steps: [{workflow: {name: create-order, wait: false}}]
  by-hand:
    trigger: {manual: }
    steps: [{log: manual}]
"""


@pytest.fixture
def validator(registry: Registry) -> jsonschema.Draft202012Validator:
    schema = app_json_schema(registry)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _errors(validator: jsonschema.Draft202012Validator, data: Any) -> list[str]:
    return sorted(".".join(map(str, e.absolute_path)) for e in validator.iter_errors(data))


def test_schema_is_valid_and_accepts_a_sample(validator: jsonschema.Draft202012Validator) -> None:
    assert _errors(validator, yaml.safe_load(SAMPLE)) == []


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ("modules:\n  - {name: web, type: http.server, config: {port: 0}}", "modules.0.config.port"),
        ("modules:\n  - {name: web, type: http.nope}", "modules.0.type"),
        ("workflows:\n  a: {steps: [{log: a, set: {b: 1}}]}", "workflows.a.steps.0"),
        ("workflows:\n  a: {steps: [{lgo: a}]}", "workflows.a.steps.0"),
        ("workflows:\n  a: {trigger: {manual: , schedule: {every: 1}}, steps: [{log: a}]}",
         "workflows.a.trigger"),
        ("workflows:\n  a: {steps: [{foreach: {items: x, steps: [{nope: 1}]}}]}", "workflows.a.steps.0"),
    ],
)
def test_schema_rejects_mistakes(validator: jsonschema.Draft202012Validator, change: str, where: str) -> None:
    data = yaml.safe_load("version: 1\nname: shop\n" + textwrap.dedent(change))
    assert where in _errors(validator, data)


def test_nested_step_fields_refer_to_the_step_definition(registry: Registry) -> None:
    defs = app_json_schema(registry)["$defs"]
    assert defs["ForeachConfig"]["properties"]["steps"]["items"] == {"$ref": "#/$defs/step"}
    cases = defs["SwitchConfig"]["properties"]["cases"]
    assert cases["additionalProperties"]["items"] == {"$ref": "#/$defs/step"}
    branches = {branch["title"]: branch for branch in defs["step"]["oneOf"]}
    assert set(branches) == {"call", "foreach", "http", "log", "set", "switch", "then", "workflow"}
    assert "else" in branches["then"]["properties"]
