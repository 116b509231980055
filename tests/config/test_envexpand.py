from __future__ import annotations

from workflow_engine.config.envexpand import expand_env, expand_string


def test_defaults_inside_longer_strings() -> None:
    text = "http://${HOST:-localhost}:${PORT:-8080}/x"
    assert expand_string(text, {"PORT": "9"}) == ("http://localhost:9/x", [])


def test_set_variable_wins_and_empty_uses_default() -> None:
    assert expand_string("${A:-d}", {"A": "v"}) == ("v", [])
    assert expand_string("${A:-d}", {"A": ""}) == ("d", [])
    assert expand_string("${A:-}", {}) == ("", [])


def test_double_dollar_is_a_literal() -> None:
    assert expand_string("$${HOME} and $$ and $x", {"HOME": "/h"}) == ("${HOME} and $$ and $x", [])


def test_unset_without_default_is_a_problem_not_an_empty_string() -> None:
    text, messages = expand_string("a-${MISSING}-b", {})
    assert text == "a-${MISSING}-b"
    assert messages == ["environment variable 'MISSING' is not set and has no default"]


def test_malformed_reference() -> None:
    _, messages = expand_string("${not valid}", {})
    assert messages[0].startswith("malformed environment reference")


def test_walks_nested_data_with_paths() -> None:
    data, problems = expand_env({"a": [{"b": "${X}"}, 1, None], "c": "${Y:-y}"}, {"X": "x"})
    assert data == {"a": [{"b": "x"}, 1, None], "c": "y"}
    assert problems == []
    _, problems = expand_env({"a": [{"b": "${Z}"}]}, {})
    assert problems == [(("a", 0, "b"), "environment variable 'Z' is not set and has no default")]
