"""Loading: syntax, the import allowlist, names, the contract; fresh namespaces; file:line:reason errors."""

from __future__ import annotations

import sys
import textwrap

import pytest

from workflow_engine.errors import ComponentLoadError, StepError
from workflow_engine.modules.dynamic.contract import CollectingLog, ComponentContext
from workflow_engine.modules.dynamic.loader import load_component
from workflow_engine.modules.dynamic.policy import ImportPolicy

POLICY = ImportPolicy()


def load(source: str, policy: ImportPolicy = POLICY, name: str = "dynamic_component.t.v1"):  # type: ignore[no-untyped-def]
    return load_component(textwrap.dedent(source), "comp.py", name, policy)


def refusal(source: str, policy: ImportPolicy = POLICY) -> ComponentLoadError:
    with pytest.raises(ComponentLoadError) as info:
        load(source, policy)
    return info.value


def test_syntax_error_names_file_line_and_reason() -> None:
    error = refusal("""
        def execute(ctx, input):
            return {"a": 1
    """)
    assert (error.file, error.line) == ("comp.py", 3)
    assert error.reason.startswith("syntax error")
    assert str(error).startswith("comp.py:3: syntax error")


def test_forbidden_import_names_the_module_and_line() -> None:
    error = refusal("""
        import json
        from subprocess import run

        def execute(ctx, input):
            return {}
    """)
    assert error.line == 3
    assert "'subprocess' is not allowed" in error.reason


def test_allowlist_is_configurable() -> None:
    source = "import sqlite3\ndef execute(ctx, input):\n    return {}\n"
    assert "'sqlite3' is not allowed" in refusal(source).reason
    assert load(source, ImportPolicy.with_extra(["sqlite3"])) is not None


def test_relative_import_is_refused() -> None:
    assert "relative imports" in refusal("from . import x\ndef execute(ctx, input):\n    return {}\n").reason


@pytest.mark.parametrize(("source", "reason"), [
    ("x = 1\n", "defines no function `execute(ctx, input)`"),
    ("execute = 3\n", "defines no function `execute(ctx, input)`"),
    ("def execute(input):\n    return {}\n", "must take two parameters"),
    ("def execute(ctx, input):\n    return {}\nsetup = 1\n", "`setup` must be a function"),
    ("def execute(ctx, input):\n    return {}\ninput_schema = 3\n", "input_schema must be a pydantic model"),
    ("def execute(ctx, input):\n    return {}\noutput_schema = {'type': 'nope'}\n", "invalid JSON Schema"),
])
def test_contract_presence_is_checked(source: str, reason: str) -> None:
    assert reason in refusal(source).reason


def test_top_level_error_is_a_load_error_at_its_line() -> None:
    error = refusal("""
        import json

        DATA = json.loads("{broken")
        def execute(ctx, input):
            return {}
    """)
    assert error.line == 4
    assert "JSONDecodeError" in error.reason


def test_each_load_is_a_fresh_namespace_outside_sys_modules() -> None:
    source = """
        CALLS = []

        def execute(ctx, input):
            CALLS.append(1)
            return {"calls": len(CALLS)}
    """
    first, second = load(source), load(source)
    assert first.namespace is not second.namespace
    assert "dynamic_component.t.v1" not in sys.modules
    first.execute(None, {})
    assert second.execute(None, {}) == {"calls": 1}


def test_input_is_a_fine_parameter_name_but_the_builtin_is_gone() -> None:
    contract = load("def execute(ctx, input):\n    return {'input': input}\n")
    assert contract.execute(None, 5) == {"input": 5}
    assert "input" not in contract.namespace.__builtins__  # type: ignore[operator]


async def test_pydantic_and_json_schemas_are_checked_on_every_call() -> None:
    contract = load("""
        from pydantic import BaseModel

        class Order(BaseModel):
            items: list[int]

        input_schema = Order
        output_schema = {"type": "object", "required": ["total"], "properties": {"total": {"type": "integer"}}}

        async def execute(ctx, input):
            ctx.log.info("pricing", n=len(input["items"]))
            if input["items"] == [0]:
                return {"total": "zero"}
            return {"total": sum(input["items"])}
    """)
    ctx = ComponentContext(CollectingLog(), "e1", 0.0)
    assert await contract.invoke(ctx, {"items": [1, "2"]}, "t") == {"total": 3}
    assert ctx.log.records == [("info", "pricing", {"n": 2})]  # type: ignore[attr-defined]
    with pytest.raises(Exception, match="input is invalid") as bad_input:
        await contract.invoke(ctx, {"items": "x"}, "t")
    assert getattr(bad_input.value, "code", None) == "validation_failed"
    with pytest.raises(Exception, match="output is invalid") as bad_output:
        await contract.invoke(ctx, {"items": [0]}, "t")
    assert getattr(bad_output.value, "code", None) == "invalid_output"


@pytest.mark.parametrize("returned", ["{'x': {1, 2}}", "{'x': b'raw'}", "{'x': 2 ** 100}", "{1: 'a'}"])
async def test_an_output_that_is_not_json_data_fails_the_call_as_invalid_output(returned: str) -> None:
    """It failed later, where the execution was stored, as a store error without a step (inline mode)."""
    contract = load(f"""
        def execute(ctx, input):
            return {returned}
    """)
    with pytest.raises(StepError, match="not JSON-serialisable") as caught:
        await contract.invoke(ComponentContext(CollectingLog(), "e1", 0.0), {}, "t")
    assert caught.value.code == "invalid_output"
