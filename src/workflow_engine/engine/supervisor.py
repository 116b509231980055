"""Module supervision: wait for dependencies, start with capped backoff and jitter, report state to health."""

from __future__ import annotations

import asyncio
import random

import structlog

from workflow_engine.modules.base import Module, ModuleState
from workflow_engine.observability.health import Health

log = structlog.get_logger("workflow_engine.engine")

INITIAL_BACKOFF = 0.2
MAX_BACKOFF = 30.0


class ModuleSupervisor:
    """Starts one module once its dependencies are ready; retries until it is, then signals `ready`."""

    def __init__(self, module: Module, kind: str, depends_on: tuple[str, ...], health: Health,
                 max_backoff: float = MAX_BACKOFF) -> None:
        self.module = module
        self.kind = kind
        self.depends_on = depends_on
        self.health = health
        self.max_backoff = max_backoff
        self.ready = asyncio.Event()
        self.state = ModuleState.CREATED
        self.attempts = 0
        self.started = False
        self._set(ModuleState.CREATED, None)
        module.state_listener = self._reported

    def _set(self, state: ModuleState, detail: str | None) -> None:
        self.state = state
        self.health.set_component(self.module.name, self.kind, state, detail)

    async def run(self, supervisors: dict[str, ModuleSupervisor]) -> None:
        """Wait for dependencies, then start with retries; returns once the module is ready."""
        waiting = [name for name in self.depends_on if not supervisors[name].ready.is_set()]
        if waiting:
            self._set(ModuleState.STARTING, f"waiting for {', '.join(waiting)}")
            await asyncio.gather(*(supervisors[name].ready.wait() for name in self.depends_on))
        backoff = INITIAL_BACKOFF
        while True:
            self.attempts += 1
            if self.attempts == 1:
                self._set(ModuleState.STARTING, None)
            # A retry stays `retrying` with the last failure's reason while it runs: an attempt can take as long
            # as the module's connect timeout, and /readyz should say why the module is not ready meanwhile.
            try:
                await self.module.start()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # supervision boundary: a module that cannot start yet is retried
                delay = backoff * random.uniform(0.8, 1.2)
                self._set(ModuleState.RETRYING, f"{type(exc).__name__}: {exc}")
                log.warning("module not ready, retrying", module=self.module.name, attempt=self.attempts,
                            retry_in=round(delay, 2), error=exc)
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            self.started = True
            self._set(ModuleState.READY, None)
            log.info("module ready", module=self.module.name, kind=self.kind, **self.module.describe())
            self.ready.set()
            return

    async def stop(self, limit: float) -> None:
        """Stop the module if it started, even if it failed since (bounded by `limit` seconds)."""
        if not self.started:
            self._set(ModuleState.STOPPED, None)
            return
        self._set(ModuleState.STOPPING, None)
        try:
            async with asyncio.timeout(limit):
                await self.module.stop()
        except TimeoutError:
            log.error("module did not stop in time", module=self.module.name, limit=limit)
        except Exception as exc:  # supervision boundary: keep stopping the others
            log.error("module failed to stop", module=self.module.name, error=exc)
        self.started = False
        self._set(ModuleState.STOPPED, None)

    def _reported(self, state: ModuleState, detail: str | None) -> None:
        """A started module reports a change itself (a broker lost its connection, or has it back)."""
        if self.started and self.state is not ModuleState.STOPPING:
            self._set(state, detail)

    def failed(self, exc: BaseException) -> None:
        """A task the module owns crashed: the module is no longer ready."""
        self.ready.clear()
        self._set(ModuleState.FAILED, f"{type(exc).__name__}: {exc}")
