"""docs/reference.md is generated from the specs; it must match the code."""

from __future__ import annotations

from pathlib import Path

from workflow_engine.registry.builtins import default_registry
from workflow_engine.registry.docs import reference_markdown

REFERENCE = Path(__file__).parents[2] / "docs" / "reference.md"


def test_reference_doc_matches_the_registry() -> None:
    expected = reference_markdown(default_registry())
    assert REFERENCE.read_text() == expected, "docs/reference.md is stale: run `make docs`"


def test_every_builtin_type_is_documented() -> None:
    registry = default_registry()
    text = REFERENCE.read_text()
    for name in [*registry.modules, *registry.triggers, *registry.steps]:
        assert f"\n{name}" in text, name
