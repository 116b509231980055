from __future__ import annotations

from workflow_engine.config.yaml_loader import load_yaml


def test_positions_of_keys_and_values() -> None:
    loaded = load_yaml("a:\n  b: [1, {c: x}]\n  d: hi\n", "f.yaml")
    assert loaded.data == {"a": {"b": [1, {"c": "x"}], "d": "hi"}}
    assert loaded.issues == []
    assert loaded.positions.values[("a", "b")] == (2, 6)
    assert loaded.positions.values[("a", "b", 1, "c")] == (2, 14)
    assert loaded.positions.keys[("a", "d")] == (3, 3)
    assert loaded.positions.values[("a", "d")] == (3, 6)


def test_syntax_error_is_located() -> None:
    loaded = load_yaml("version: 1\nname: [a, b\nmodules: []\n", "f.yaml")
    assert loaded.data is None
    assert [str(i) for i in loaded.issues] == [
        "f.yaml:3:8: <root>: YAML syntax error: did not find expected ',' or ']' (while parsing a "
        "flow sequence)"
    ]


def test_duplicate_key_reported_at_second_key() -> None:
    loaded = load_yaml("a: 1\nb:\n  c: 1\n  c: 2\n", "f.yaml")
    assert loaded.data == {"a": 1, "b": {"c": 1}}
    assert [str(i) for i in loaded.issues] == ["f.yaml:4:3: b.c: duplicate key 'c' (first defined at line 3)"]


def test_merge_keys_and_explicit_override() -> None:
    loaded = load_yaml("base: &b {x: 1, y: 2}\nthing:\n  <<: *b\n  y: 3\n", "f.yaml")
    assert loaded.data["thing"] == {"x": 1, "y": 3}
    assert loaded.issues == []
    assert loaded.positions.values[("thing", "x")] == (1, 14)
    assert loaded.positions.values[("thing", "y")] == (4, 6)


def test_keys_are_strings_and_timestamps_stay_text() -> None:
    loaded = load_yaml("200: ok\non: 2024-01-01\n", "f.yaml")
    assert loaded.data == {"200": "ok", "on": "2024-01-01"}


def test_bad_tags_and_recursive_aliases_are_issues() -> None:
    loaded = load_yaml("a: !foo 1\nb: &x [*x]\n", "f.yaml")
    assert [str(i) for i in loaded.issues] == [
        "f.yaml:1:4: a: unsupported YAML tag '!foo'",
        "f.yaml:2:4: b[0]: an alias refers to a value that contains it",
    ]


def test_alias_bomb_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    loaded = load_yaml("\n".join(lines) + "\n", "f.yaml")
    assert loaded.data is None
    assert "expands to more than" in loaded.issues[0].message


def test_empty_document() -> None:
    loaded = load_yaml("", "f.yaml")
    assert loaded.data is None
    assert loaded.issues == []
