"""The module contract: long-lived things started in dependency order and stopped in reverse."""

from __future__ import annotations

import enum
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from workflow_engine.errors import ModuleError
from workflow_engine.observability.metrics import Metrics

if TYPE_CHECKING:
    from workflow_engine.store.base import Store

T = TypeVar("T")


class ModuleState(enum.StrEnum):
    """Lifecycle state of a module; `/readyz` is derived from it."""

    CREATED = "created"
    STARTING = "starting"
    READY = "ready"
    RETRYING = "retrying"
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Module:
    """Base class of modules. `start` raises `ModuleNotReadyError` (or any error) to be retried with backoff."""

    kind: str = "module"

    def __init__(self, name: str, ctx: ModuleContext) -> None:
        self.name = name
        self.ctx = ctx
        # Set by the engine's supervisor: how a started module reports a state change (a lost connection).
        self.state_listener: Callable[[ModuleState, str | None], None] | None = None

    def report_state(self, state: ModuleState, detail: str | None = None) -> None:
        """Tell readiness about a change after start: `RETRYING` while a connection is down, `READY` when back."""
        if self.state_listener is not None:
            self.state_listener(state, detail)

    async def start(self) -> None:
        """Acquire resources; return when ready to serve."""

    async def stop(self) -> None:
        """Release resources; called once, in reverse dependency order."""

    def describe(self) -> dict[str, Any]:
        """Details shown in `/readyz` and the API (for example a bound address)."""
        return {}


Spawn = Callable[[Coroutine[Any, Any, Any], str], Any]


@dataclass
class ModuleContext:
    """What a module may use: its metrics, a logger, other modules by name, and owned background tasks."""

    name: str
    metrics: Metrics
    modules: dict[str, Module]
    spawn_task: Spawn
    config_dir: str = "."
    # The engine's store (opened before any module starts); None for modules built outside an engine.
    store: Store | None = None

    @property
    def log(self) -> Any:
        return structlog.get_logger("workflow_engine.module").bind(module=self.name)

    def require(self, name: str, kind: type[T]) -> T:
        """The module called `name`, which must be a `kind`; a clear error otherwise."""
        module = self.modules.get(name)
        if module is None:
            raise ModuleError(f"module '{self.name}': requires module '{name}', which is not configured")
        if not isinstance(module, kind):
            raise ModuleError(
                f"module '{self.name}': module '{name}' is a {type(module).__name__}, not a {kind.__name__}"
            )
        return module

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> Any:
        """Run `coro` as a task owned by the engine's task group; it is cancelled on shutdown."""
        return self.spawn_task(coro, f"module:{self.name}:{name}")
