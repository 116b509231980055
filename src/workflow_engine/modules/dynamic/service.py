"""What the management API does with dynamic components: list, show, upload, remove an upload.

The rule for uploads: a source can only be uploaded for a configured `dynamic.component` module (the config
decides which workflows may call it). PUT creates or replaces the upload; POST creates one and refuses (409) when
the component already has one; DELETE drops the upload and the configured file serves again (a component without
a `source` file is left with no code). An upload is kept in the store and wins over the file, also across
restarts, until it is deleted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from workflow_engine.errors import WorkflowEngineError
from workflow_engine.modules.base import Module
from workflow_engine.modules.dynamic.component import DynamicComponent

Json = dict[str, Any]


class ComponentService:
    """The dynamic components among `modules`, as the API sees them."""

    def __init__(self, modules: Mapping[str, Module]) -> None:
        self.modules = modules

    def list(self) -> list[Json]:
        """Every dynamic component, by name."""
        return [m.describe() for _, m in sorted(self.modules.items()) if isinstance(m, DynamicComponent)]

    def get(self, name: str) -> Json:
        """One component with the source of its active version."""
        component = self._component(name)
        current = component.current
        return {**component.describe(), "source": current.source if current is not None else None}

    async def create(self, name: str, source: str) -> Json:
        """Upload the first source of a component; 409 when one is already uploaded."""
        component = self._component(name)
        if (component.current is not None and component.current.origin == "upload") or (
                component.ctx.store is not None and await component.ctx.store.get_component(name) is not None):
            raise WorkflowEngineError(
                f"component '{name}' already has an uploaded source; PUT /api/dynamic/components/{name} replaces it",
                code="conflict", http_status=409)
        await component.upload(source)
        return component.describe()

    async def replace(self, name: str, source: str) -> Json:
        """Upload (create or replace) the source of a component."""
        component = self._component(name)
        await component.upload(source)
        return component.describe()

    async def delete(self, name: str) -> Json:
        """Drop the uploaded source; 404 when there is none."""
        component = self._component(name)
        if not await component.remove_upload():
            raise WorkflowEngineError(f"component '{name}' has no uploaded source", code="not_found",
                                      http_status=404)
        return component.describe()

    def _component(self, name: str) -> DynamicComponent:
        module = self.modules.get(name)
        if not isinstance(module, DynamicComponent):
            raise WorkflowEngineError(
                f"no dynamic component '{name}': sources can be uploaded only for a configured dynamic.component "
                "module (add one to the config first)", code="not_found", http_status=404)
        return module
