"""Liveness and readiness as the engine reports them; `/readyz` and `/healthz` render this object."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workflow_engine.modules.base import ModuleState
from workflow_engine.observability.loop_monitor import LoopMonitor


@dataclass(frozen=True)
class ComponentHealth:
    """One component as readiness sees it: what it is, its lifecycle state and why it is not ready."""

    kind: str
    state: ModuleState
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The component's entry in the readiness body."""
        out: dict[str, Any] = {"kind": self.kind, "state": self.state.value}
        if self.detail is not None:
            out["detail"] = self.detail
        return out


class Health:
    """Component states and a draining flag fed by the engine; ready when all are READY and not draining.

    With no components registered the engine is ready, so the engine registers its modules (as CREATED or
    STARTING) before the management server starts answering.
    """

    def __init__(self, loop_monitor: LoopMonitor | None = None) -> None:
        self._components: dict[str, ComponentHealth] = {}
        self._draining = False
        self._loop_monitor = loop_monitor

    @property
    def draining(self) -> bool:
        """Whether the engine is shutting down and refusing new work."""
        return self._draining

    def set_component(self, name: str, kind: str, state: ModuleState, detail: str | None = None) -> None:
        """Record the current state of component `name` (a module, the store, a broker)."""
        self._components[name] = ComponentHealth(kind, state, detail)

    def remove_component(self, name: str) -> None:
        """Forget component `name` (it was removed from the configuration); unknown names are ignored."""
        self._components.pop(name, None)

    def set_draining(self, draining: bool) -> None:
        """Mark the engine as draining (not ready) or not."""
        self._draining = draining

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether the engine is ready, and the body naming every component with its state."""
        ready = not self._draining and all(c.state is ModuleState.READY for c in self._components.values())
        body: dict[str, Any] = {
            "status": "ready" if ready else "not_ready",
            "draining": self._draining,
            "components": {name: c.to_dict() for name, c in sorted(self._components.items())},
        }
        return ready, body

    def liveness(self) -> dict[str, Any]:
        """The liveness body: answering proves the event loop runs; the last lag sample says how well."""
        body: dict[str, Any] = {"status": "ok"}
        if self._loop_monitor is not None and self._loop_monitor.last_lag is not None:
            body["event_loop_lag_seconds"] = round(self._loop_monitor.last_lag, 6)
        return body
