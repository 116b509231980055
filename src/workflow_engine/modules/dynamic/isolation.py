"""How a component version runs: `inline` (the engine's loop, or a thread for sync code) or `process` (a pool
of worker processes with resource limits). Each runner serves exactly one version."""

from __future__ import annotations

import asyncio
import time
import types
from abc import ABC, abstractmethod
from concurrent.futures import Executor
from typing import Any

from workflow_engine.errors import ComponentLoadError, StepError, StepTimeoutError, WorkflowEngineError
from workflow_engine.modules.dynamic.contract import ComponentContext, ComponentLog, Contract
from workflow_engine.modules.dynamic.loader import error_line, load_namespace
from workflow_engine.modules.dynamic.policy import ImportPolicy
from workflow_engine.modules.dynamic.pool import WorkerPool, WorkerSpec, call_error
from workflow_engine.modules.dynamic.spares import Spares, Spawn


class Runner(ABC):
    """Runs the calls of one loaded version."""

    # Whether `close` takes long (stopping processes): then a replaced version is closed by a background task,
    # so the next reload does not wait for it.
    closes_slowly = False

    @abstractmethod
    async def start(self, config: dict[str, Any]) -> None:
        """Load the version and run its `setup(config)`; ComponentLoadError if refused."""

    @abstractmethod
    async def call(self, data: Any, execution_id: str, limit: float, log: ComponentLog) -> dict[str, Any]:
        """One call; StepTimeoutError after `limit` seconds, StepError when the component fails."""

    @abstractmethod
    async def close(self) -> None:
        """Run `teardown` and release everything the version holds."""

    def describe(self) -> dict[str, Any]:
        """Details for the API."""
        return {}


class InlineRunner(Runner):
    """Trusted code in the engine's process: async code on the loop, sync code on the component's own threads.
    A timeout cancels async code; a sync call that overruns keeps its thread until it returns (Python cannot stop
    a thread), a thread of the component's pool, so the engine's other work does not starve."""

    def __init__(self, name: str, code: types.CodeType, filename: str, module_name: str,
                 policy: ImportPolicy, *, threads: Executor) -> None:
        self.name = name
        self.threads = threads
        self._source = (code, filename, module_name, policy)
        self.contract: Contract | None = None

    async def start(self, config: dict[str, Any]) -> None:
        code, filename, module_name, policy = self._source
        contract = Contract.from_namespace(load_namespace(code, module_name, filename, policy), filename)
        try:
            await contract.run_setup(config)
        except Exception as exc:  # a version whose setup fails is refused like a syntax error
            raise ComponentLoadError(filename, error_line(exc, filename),
                                     f"setup failed: {type(exc).__name__}: {exc}") from None
        self.contract = contract

    async def call(self, data: Any, execution_id: str, limit: float, log: ComponentLog) -> dict[str, Any]:
        assert self.contract is not None, "call before start"
        ctx = ComponentContext(log, execution_id, time.time() + limit)
        try:
            async with asyncio.timeout(limit):
                return await self.contract.invoke(ctx, data, self.name, threads=self.threads)
        except TimeoutError:
            raise StepTimeoutError(f"component '{self.name}' timed out after {limit:.3g}s") from None
        except WorkflowEngineError:
            raise
        except Exception as exc:  # the component's own failure becomes the step's error, with its line
            line = error_line(exc, self._source[1])
            raise StepError(f"component '{self.name}': {type(exc).__name__}: {exc}", code="component_error",
                            details={"line": line}) from exc

    async def close(self) -> None:
        contract, self.contract = self.contract, None
        if contract is not None:
            await contract.run_teardown()


class ProcessRunner(Runner):
    """Each call in a worker process: rlimits on memory and CPU, a hard timeout that kills and replaces the
    worker, a crash that fails only its call."""

    closes_slowly = True

    def __init__(self, spec: WorkerSpec, workers: int, spawn: Spawn, spares: Spares | None = None) -> None:
        self.pool = WorkerPool(spec, workers, spawn, spares)

    async def start(self, config: dict[str, Any]) -> None:
        await self.pool.start()

    async def call(self, data: Any, execution_id: str, limit: float, log: ComponentLog) -> dict[str, Any]:
        message = {"op": "call", "input": data, "execution_id": execution_id, "deadline": time.time() + limit}
        reply = await self.pool.call(message, limit)
        for level, event, fields in reply.get("logs") or ():
            getattr(log, level if level in ("debug", "info", "warning", "error") else "info")(event, **fields)
        if not reply.get("ok"):
            raise call_error(reply.get("error") or {}, self.pool.spec.name)
        output: dict[str, Any] = reply["output"]
        return output

    async def close(self) -> None:
        await self.pool.close()

    def describe(self) -> dict[str, Any]:
        return {"worker_pids": self.pool.pids, "workers_replaced": self.pool.replaced}
