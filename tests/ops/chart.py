"""Render the Helm chart offline (helm-python-sdk: Helm's Go SDK in a shared library, no helm binary)."""

from __future__ import annotations

from typing import Any

import helm_python
import yaml

from tests.ops.tools import CHART


def render(values: dict[str, Any] | None = None, *, release: str = "prod",
           namespace: str = "ops") -> list[dict[str, Any]]:
    """Every object the chart renders with `values`, as parsed YAML documents."""
    with helm_python.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values=values or {}, name=release, namespace=namespace, is_install=True)
    objects: list[dict[str, Any]] = []
    for text in manifests.values():
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The objects by kind (the chart renders at most one of each)."""
    kinds: dict[str, dict[str, Any]] = {}
    for obj in objects:
        assert obj["kind"] not in kinds, f"two {obj['kind']} objects"
        kinds[obj["kind"]] = obj
    return kinds
