"""Dynamic components built directly (no engine): a source file, a module, its metrics and owned tasks."""

from __future__ import annotations

import os
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.factories import TaskOwner
from workflow_engine.modules.base import ModuleContext
from workflow_engine.modules.dynamic.component import DynamicComponent
from workflow_engine.modules.dynamic.config import DynamicComponentConfig
from workflow_engine.observability.metrics import Metrics

ComponentFactory = Callable[..., Awaitable[DynamicComponent]]


def write_source(path: Path, source: str) -> None:
    """Replace `path` atomically with dedented `source` (as editors and deploy tools do)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(textwrap.dedent(source), encoding="utf-8")
    os.replace(tmp, path)


def ops(metrics: Metrics, name: str, operation: str, status: str) -> float:
    """`module_operations_total{module="dynamic"}` for one component, operation and status."""
    value = metrics.registry.get_sample_value("module_operations_total", {
        "module": "dynamic", "name": name, "operation": operation, "status": status})
    return value or 0.0


def versions(metrics: Metrics, name: str) -> float:
    """`dynamic_component_versions{name}`."""
    return metrics.registry.get_sample_value("dynamic_component_versions", {"name": name}) or 0.0


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(process=False)


@pytest.fixture
async def make_component(tmp_path: Path, metrics: Metrics) -> AsyncIterator[ComponentFactory]:
    """Start a component from `source` (written to `<name>.py`) with config `fields`; stopped afterwards."""
    owner = TaskOwner()
    started: list[DynamicComponent] = []

    async def make(source: str, name: str = "comp", **fields: Any) -> DynamicComponent:
        path = tmp_path / f"{name}.py"
        write_source(path, source)
        fields.setdefault("watch", False)
        config = DynamicComponentConfig.model_validate({"source": path.name, **fields})
        ctx = ModuleContext(name, metrics, {}, owner.spawn, str(tmp_path))
        component = DynamicComponent(name, config, ctx)
        await component.start()
        started.append(component)
        return component

    yield make
    for component in started:
        await component.stop()
    await owner.close()
