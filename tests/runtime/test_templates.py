"""Templates: native values, string rendering, constants, key-first lookups, the sandbox, located syntax errors."""

from __future__ import annotations

import pytest

from tests.factories import config_issues
from workflow_engine.errors import StepError
from workflow_engine.runtime.templates import Const, TemplateCompiler, header_values, truthy


@pytest.fixture
def compiler() -> TemplateCompiler:
    return TemplateCompiler()


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ input.n }}", 3),
        ("{{ input.n + 1 }}", 4),
        ("  {{ input.flag }}  ", True),
        ("{{ input.tags }}", ["a", "b"]),
        ("{{ input.price * 2 }}", 5.0),
        ("{{ input }}", {"n": 3, "flag": True, "tags": ["a", "b"], "price": 2.5}),
    ],
)
def test_single_expression_keeps_its_native_type(compiler: TemplateCompiler, source: str, expected: object) -> None:
    scope = {"input": {"n": 3, "flag": True, "tags": ["a", "b"], "price": 2.5}}
    value = compiler.compile(source).render(scope)
    assert value == expected
    assert type(value) is type(expected)


def test_text_mixing_templates_renders_a_string(compiler: TemplateCompiler) -> None:
    value = compiler.compile("order {{ input.id }} costs {{ input.total }}")
    assert value.render({"input": {"id": 7, "total": 12}}) == "order 7 costs 12"
    assert compiler.compile("{{ input.a }}{{ input.b }}").render({"input": {"a": 1, "b": 2}}) == "12"


def test_nested_values_render_item_by_item(compiler: TemplateCompiler) -> None:
    value = compiler.compile({"id": "{{ input.id }}", "fixed": "x", "list": [1, "{{ input.id * 2 }}"]})
    assert value.render({"input": {"id": 5}}) == {"id": 5, "fixed": "x", "list": [1, 10]}


def test_constants_are_not_rendered(compiler: TemplateCompiler) -> None:
    constant = {"a": 1, "b": ["x", {"c": "plain text"}]}
    value = compiler.compile(constant)
    assert isinstance(value, Const)
    assert value.render({"input": {"a": 2}}) == constant


def test_data_containing_braces_is_not_rendered_again(compiler: TemplateCompiler) -> None:
    scope = {"input": {"text": "{{ 1 + 1 }}"}}
    assert compiler.compile("{{ input.text }}").render(scope) == "{{ 1 + 1 }}"
    assert compiler.compile("say {{ input.text }}").render(scope) == "say {{ 1 + 1 }}"


def test_attribute_access_reads_the_key_before_the_dict_method(compiler: TemplateCompiler) -> None:
    scope = {"input": {"body": {"items": [1, 2, 3], "keys": "k", "get": "g"}}}
    assert compiler.compile("{{ input.body.items }}").render(scope) == [1, 2, 3]
    # Through the full sandboxed expression (not the fast lookup path) too.
    assert compiler.compile("{{ input.body.items | length }}").render(scope) == 3
    assert compiler.compile("{{ input.body.keys ~ input.body.get }}").render(scope) == "kg"
    assert compiler.compile("{{ input.body['items'][1] }}").render(scope) == 2


def test_missing_paths_render_as_none(compiler: TemplateCompiler) -> None:
    scope = {"input": {"body": {"a": 1}, "list": [1]}}
    assert compiler.compile("{{ input.body.missing }}").render(scope) is None
    assert compiler.compile("{{ input.nothing.deeper.still }}").render(scope) is None
    assert compiler.compile("{{ input.list[5] }}").render(scope) is None
    assert compiler.compile("{{ steps.never.output }}").render({**scope, "steps": {}}) is None
    assert compiler.compile("got {{ input.nothing.deeper }}").render(scope) == "got "


def test_a_missing_key_named_like_a_dict_method_is_missing_not_the_method(compiler: TemplateCompiler) -> None:
    scope = {"input": {"body": {"a": 1}, "headers": {"x-id": "7"}}}
    for name in ("items", "keys", "values", "get", "copy"):
        assert compiler.compile(f"{{{{ input.body.{name} }}}}").render(scope) is None  # fast lookup path
        assert compiler.compile(f"{{{{ input.body.{name} or 'none' }}}}").render(scope) == "none"  # full path
        assert compiler.compile(f"n={{{{ input.body.{name} }}}}").render(scope) == "n="
    assert not truthy(compiler.expression("input.body.items").render(scope))
    assert compiler.compile("{{ now }}").render({}) is None
    # Called, they are what they always were.
    assert compiler.compile("{{ input.headers.get('x-id', 'none') }}").render(scope) == "7"
    assert compiler.compile("{{ input.headers.get('nope', 'none') }}").render(scope) == "none"
    assert compiler.compile("{{ input.body.items() | list }}").render(scope) == [("a", 1)]
    assert compiler.compile("at {{ now()[:2] }}").render({}) == "at 20"


def test_a_missing_value_is_null_to_tests_comparisons_and_filters(compiler: TemplateCompiler) -> None:
    scope = {"input": {"query": {}, "body": {"x": 1}}}
    expected = {
        "input.query.n is none": True, "input.query.n == none": True, "input.query.n != none": False,
        "input.query.n.deeper is none": True, "input.query.n | int": 0, "input.query.n | float": 0.0,
        "input.query.n | int + 1": 1, "input.query.n is defined": False, "input.body.x is none": False,
        # The bracket form of a key named like a method is missing too, not the method.
        "input.body['items'] | length": 0, "input.body['items'] or []": [], "input.body['x']": 1,
        "input.query.n | default('d')": "d",
    }
    assert {e: compiler.compile(f"{{{{ {e} }}}}").render(scope) for e in expected} == expected
    assert truthy(compiler.expression("input.query.n is none").render(scope))


def test_sandbox_refuses_reaching_python_internals(compiler: TemplateCompiler) -> None:
    value = compiler.compile("{{ ().__class__.__base__.__subclasses__() }}")
    with pytest.raises(StepError) as caught:
        value.render({})
    assert caught.value.code == "template_error"
    assert "unsafe" in caught.value.message


def test_private_attributes_are_not_readable(compiler: TemplateCompiler) -> None:
    assert compiler.compile("{{ input.n.__class__ }}").render({"input": {"n": 1}}) is None


def test_sandbox_refuses_mutation_of_data_in_scope(compiler: TemplateCompiler) -> None:
    scope = {"input": {"list": [1, 2]}}
    with pytest.raises(StepError) as caught:
        compiler.compile("{{ input.list.append(1) }}").render(scope)
    assert caught.value.code == "template_error"
    with pytest.raises(StepError):
        compiler.compile("{{ input.update({'x': 1}) }}").render(scope)
    assert scope == {"input": {"list": [1, 2]}}


def test_runtime_type_errors_become_template_errors(compiler: TemplateCompiler) -> None:
    with pytest.raises(StepError) as caught:
        compiler.compile("{{ input.a + input.b }}").render({"input": {"a": 1, "b": "x"}})
    assert caught.value.code == "template_error"


def test_bare_expression_accepts_braces_or_none(compiler: TemplateCompiler) -> None:
    scope = {"input": {"n": 2}}
    assert compiler.expression("input.n > 1").render(scope) is True
    assert compiler.expression("{{ input.n > 5 }}").render(scope) is False


def test_syntax_error_is_a_config_issue_at_the_step_line() -> None:
    issues = config_issues("""
        version: 1
        name: app
        workflows:
          w:
            steps:
              - id: fine
                set: {a: 1}
              - id: broken
                set:
                  total: "{{ input.a + }}"
    """)
    assert len(issues) == 1
    assert issues[0].startswith("app.yaml:9:")
    assert "workflows.w.steps[1].set.total" in issues[0]
    assert "template syntax error" in issues[0]


def test_every_syntax_error_is_reported_at_once() -> None:
    issues = config_issues("""
        version: 1
        name: app
        workflows:
          w:
            steps:
              - id: one
                if: "input.a ==="
                set: {a: 1}
              - id: two
                log: "value {{ input. }}"
    """)
    assert [issue.split(":")[1] for issue in issues] == ["7", "10"]
    assert "steps[0].if" in issues[0]
    assert "steps[1].log.message" in issues[1]


@pytest.mark.parametrize("value", ["false", "False", " no ", "off", "0", "", "none", "null", 0, 0.0, None, [], {}])
def test_truthy_false_values(value: object) -> None:
    assert truthy(value) is False


@pytest.mark.parametrize("value", ["true", "yes", "1", "anything", 1, -1, [0], {"a": None}, True])
def test_truthy_true_values(value: object) -> None:
    assert truthy(value) is True


def test_header_values_leave_out_nulls_and_stringify_the_rest() -> None:
    assert header_values({"X-A": None, "X-B": 0, "X-C": "c", 7: True}) == {"X-B": "0", "X-C": "c", "7": "True"}


@pytest.mark.parametrize("headers", [{"X-Bad": "a\r\nInjected: yes"}, {"X-Bad": "a\nb"}, {"X-Bad": "nul\x00"},
                                     {"Bad Name": "v"}, {"X-A:": "v"}, {"": "v"}])
def test_header_values_refuse_line_breaks_control_characters_and_bad_names(headers: dict[str, str]) -> None:
    with pytest.raises(StepError) as caught:
        header_values(headers)
    assert caught.value.code == "invalid_header"
    assert caught.value.retryable is False


def test_header_values_accept_tabs_and_text_in_values() -> None:
    assert header_values({"X-A": "a\tb c; d=é"}) == {"X-A": "a\tb c; d=é"}


def test_a_value_that_is_not_json_data_becomes_data_or_a_template_error(compiler: TemplateCompiler) -> None:
    """A `range`, a filter's generator or a tuple reached the store as such and failed the execution there,
    as `store_error`, after `respond` had already answered."""
    assert compiler.compile("{{ range(3) }}").render({}) == [0, 1, 2]
    assert compiler.compile("{{ [1, 2, 2] | unique }}").render({}) == [1, 2]
    assert compiler.compile("{{ (1, 2) }}").render({}) == [1, 2]
    assert compiler.compile("{{ -(2 ** 63) }}").render({}) == -(2**63)
    with pytest.raises(StepError) as caught:
        compiler.compile("{{ 2 ** 70 }}").render({})
    assert caught.value.code == "template_error"
    assert "beyond 64 bits" in caught.value.message


def test_infinity_or_nan_is_a_template_error_not_an_internal_one(compiler: TemplateCompiler) -> None:
    for template, scope in (("{{ 'inf' | float }}", {}), ("{{ 'nan' | float }}", {}),
                            ("{{ input.x | float }}", {"input": {"x": "-inf"}}), ("{{ 1e308 * 10 }}", {})):
        with pytest.raises(StepError) as caught:
            compiler.compile(template).render(scope)
        assert caught.value.code == "template_error", template
        assert "infinity or NaN" in caught.value.message, template
    assert compiler.compile("{{ input.x | float }}").render({"input": {"x": "2.5"}}) == 2.5
    assert compiler.compile("{{ 'inf' | float }} left").render({}) == "inf left"
