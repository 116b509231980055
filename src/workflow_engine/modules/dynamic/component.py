"""The `dynamic.component` module: a Python component, checked, loaded and hot-reloaded into live workflows.

Versions: each load builds a complete new version (namespace, runner, `setup`) beside the active one and swaps
only when it is ready. A `call` takes the version active when it starts; calls in flight finish on their version,
whose `teardown` runs once they drain. A rejected source never replaces a working one.

Sources: the file named by `source` (watched), or a source uploaded through the API and kept in the store. An
upload wins over the file until it is deleted; then the file is loaded again (see docs/DYNAMIC.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import types
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from workflow_engine.errors import ComponentLoadError, ComponentUnavailableError, ModuleError, StepTimeoutError
from workflow_engine.modules.base import Module, ModuleContext
from workflow_engine.modules.dynamic.config import DynamicComponentConfig
from workflow_engine.modules.dynamic.isolation import InlineRunner, ProcessRunner, Runner
from workflow_engine.modules.dynamic.loader import check_source
from workflow_engine.modules.dynamic.policy import ImportPolicy
from workflow_engine.modules.dynamic.pool import WorkerSpec
from workflow_engine.modules.dynamic.spares import Spares
from workflow_engine.modules.dynamic.watcher import watch_source
from workflow_engine.registry.specs import ModuleSpec
from workflow_engine.store.base import StoreError

KIND = "dynamic"


@dataclass(eq=False)
class ComponentVersion:
    """One loaded version: its runner and the calls running on it."""

    number: int
    digest: str
    origin: Literal["file", "upload"]
    source: str
    runner: Runner
    build_seconds: float = 0.0
    loaded_at: float = field(default_factory=time.time)
    in_flight: int = 0
    retired: bool = False
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self.retired:
            self.drained.set()


class DynamicComponent(Module):
    """Serves `call` steps with the active version of a component; counts `module_operations_total{module=
    "dynamic"}` for load, reload, execute and unload, and `dynamic_component_versions{name}`."""

    kind = KIND

    def __init__(self, name: str, config: DynamicComponentConfig, ctx: ModuleContext) -> None:
        super().__init__(name, ctx)
        self.config = config
        self.policy = ImportPolicy.with_extra(config.allow_imports)
        self.path = Path(ctx.config_dir, config.source).resolve() if config.source else None
        self.current: ComponentVersion | None = None
        self.last_error: dict[str, Any] | None = None
        self._held: set[ComponentVersion] = set()
        self._count = 0
        self._lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(config.max_concurrency)
        # Sync `execute` of inline versions runs here (threads start on demand, max_concurrency at most).
        self._threads = ThreadPoolExecutor(config.max_concurrency, thread_name_prefix=f"component-{name}")
        # isolation: process: worker processes started ahead for the next version or replacement.
        self._spares: Spares | None = None
        self._watcher: asyncio.Task[Any] | None = None
        self._poller: asyncio.Task[Any] | None = None
        self._refused_digest: str | None = None
        self._gauge = ctx.metrics.dynamic_component_versions.labels(name)
        self._gauge.set(0)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the uploaded source if the store has one, else the file; then watch the file."""
        upload = await self.ctx.store.get_component(self.name) if self.ctx.store is not None else None
        async with self._lock:
            if upload is not None:
                await self._activate(await self._build(upload.source, "upload"), "load")
            elif self.path is not None:
                try:
                    await self._activate(await self._build_file("load"), "load")
                except ComponentLoadError as exc:
                    raise ModuleError(f"module '{self.name}' (dynamic.component): {exc.message}") from exc
        if self.path is not None and self.config.watch and self._watcher is None:
            self._watcher = self.ctx.spawn(watch_source(self.path, self._file_changed,
                                                        debounce=self.config.debounce), "watch")
        if self.ctx.store is not None and self.config.store_poll is not None and self._poller is None:
            self._poller = self.ctx.spawn(self._poll_store(self.config.store_poll), "store-poll")

    async def stop(self) -> None:
        """Stop watching; retire every version (teardown after their calls drain)."""
        for task in (self._watcher, self._poller):
            if task is not None:
                task.cancel()
        self._watcher = self._poller = None
        async with self._lock:
            current, self.current = self.current, None
            if current is not None:
                self._retire(current)
        await asyncio.gather(*(self._unload_when_drained(v) for v in list(self._held)))
        self._threads.shutdown(wait=False, cancel_futures=True)
        if self._spares is not None:
            await self._spares.close()

    # -- sources -----------------------------------------------------------------------------------------------

    def _read_file(self) -> str:
        assert self.path is not None
        try:
            return self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ComponentLoadError(str(self.path), 1, f"cannot read the source: {exc}") from None

    async def _file_changed(self) -> None:
        if self.current is not None and self.current.origin == "upload":
            self.ctx.log.info("component file changed; an uploaded source is in effect, so it is not loaded",
                              file=str(self.path))
            return
        try:
            await self.reload_file()
        except ComponentLoadError as exc:
            self.ctx.log.error("component change not applied; the running version keeps serving",
                               file=exc.file, line=exc.line, reason=exc.reason)

    async def reload_file(self) -> ComponentVersion | None:
        """Load the file again (a no-op when it did not change); ComponentLoadError keeps the active version."""
        async with self._lock:
            version = await self._build_file("reload", unchanged=self.current)
            if version is not self.current:
                await self._activate(version, "reload")
            return version

    async def _build_file(self, operation: str, unchanged: ComponentVersion | None = None) -> ComponentVersion:
        """A version of the file (`unchanged` itself when the file has its digest); read errors are counted."""
        started = time.perf_counter()
        try:
            source = await asyncio.to_thread(self._read_file)
        except ComponentLoadError as exc:
            self._failed(operation, exc, started)
            raise
        if unchanged is not None and unchanged.digest == _digest(source):
            return unchanged
        return await self._build(source, "file", operation)

    async def _poll_store(self, interval: float) -> None:
        """Follow uploads and deletions made through other replicas (they share the store, not the API call)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sync_from_store()
            except (ComponentLoadError, StoreError) as exc:
                self.ctx.log.warning("component source in the store not applied", error=exc)

    async def sync_from_store(self) -> None:
        """Make the active version match the store: its upload if there is one, else the file."""
        assert self.ctx.store is not None
        async with self._lock:
            stored = await self.ctx.store.get_component(self.name)
            current = self.current
            if stored is not None:
                if current is not None and current.origin == "upload" and current.digest == stored.digest:
                    return
                if stored.digest == self._refused_digest:
                    return
                try:
                    version = await self._build(stored.source, "upload", "reload")
                except ComponentLoadError:
                    self._refused_digest = stored.digest
                    raise
                await self._activate(version, "reload")
            elif current is not None and current.origin == "upload":
                if self.path is not None:
                    await self._activate(await self._build_file("reload"), "reload")
                else:
                    self.current = None
                    await self._dispose(current)

    async def upload(self, source: str) -> ComponentVersion:
        """Make an uploaded source the active version: built and checked, kept in the store, then swapped."""
        async with self._lock:
            operation = "reload" if self.current is not None else "load"
            version = await self._build(source, "upload", operation)
            if self.ctx.store is not None:
                try:
                    await self.ctx.store.save_component(self.name, source, version.digest)
                except BaseException:
                    await version.runner.close()
                    raise
            await self._activate(version, operation)
            return version

    async def remove_upload(self) -> bool:
        """Drop the uploaded source; the file (if configured) serves again, else the component has no code.
        The file is loaded first: if it is refused, the upload stays."""
        async with self._lock:
            stored = await self.ctx.store.get_component(self.name) if self.ctx.store is not None else None
            if stored is None and (self.current is None or self.current.origin != "upload"):
                return False
            version = await self._build_file("reload") if self.path is not None else None
            if self.ctx.store is not None:
                try:
                    await self.ctx.store.delete_component(self.name)
                except BaseException:
                    if version is not None:
                        await version.runner.close()
                    raise
            if version is not None:
                await self._activate(version, "reload")
            elif self.current is not None:
                current, self.current = self.current, None
                await self._dispose(current)
            return True

    # -- versions ----------------------------------------------------------------------------------------------

    async def _build(self, source: str, origin: Literal["file", "upload"], operation: str = "load"
                     ) -> ComponentVersion:
        """A started version of `source` that is not active yet; ComponentLoadError (counted) if refused."""
        started = time.perf_counter()
        filename = str(self.path) if origin == "file" and self.path is not None else f"<uploaded {self.name}>"
        number = self._count + 1
        try:
            code = check_source(source, filename, self.policy)
            runner = self._runner(source, code, filename, number)
            await runner.start(self.config.config)
        except ComponentLoadError as exc:
            self._failed(operation, exc, started)
            raise
        self._count = number
        return ComponentVersion(number, _digest(source), origin, source, runner, time.perf_counter() - started)

    def _runner(self, source: str, code: types.CodeType, filename: str, number: int) -> Runner:
        if self.config.isolation == "inline":
            return InlineRunner(self.name, code, filename, f"dynamic_component.{self.name}.v{number}", self.policy,
                                threads=self._threads)
        spec = WorkerSpec(self.name, filename, source, tuple(sorted(self.policy.allowed)),
                          tuple(sorted(self.policy.trusted)), self.config.config, self.config.memory_limit,
                          self.config.cpu_limit)
        if self._spares is None:
            self._spares = Spares(self.config.workers, self.config.memory_limit, self.ctx.spawn)
        return ProcessRunner(spec, self.config.workers, self.ctx.spawn, self._spares)

    def _failed(self, operation: str, exc: ComponentLoadError, started: float) -> None:
        self.ctx.metrics.module_operation(KIND, self.name, operation, "error", time.perf_counter() - started)
        self.last_error = {"operation": operation, "file": exc.file, "line": exc.line, "reason": exc.reason,
                           "message": exc.message, "at": time.time()}
        self.ctx.log.error("component version refused", operation=operation, file=exc.file, line=exc.line,
                           reason=exc.reason)

    async def _activate(self, version: ComponentVersion, operation: str) -> None:
        """Swap `version` in (atomic for callers: one assignment); retire the one it replaces."""
        self.ctx.metrics.module_operation(KIND, self.name, operation, "success", version.build_seconds)
        self._held.add(version)
        self._gauge.set(len(self._held))
        previous, self.current = self.current, version
        self.last_error = None
        self.ctx.log.info("component version active", version=version.number, origin=version.origin,
                          operation=operation)
        if previous is not None:
            await self._dispose(previous)

    async def _dispose(self, version: ComponentVersion) -> None:
        """Retire a replaced version: unloaded now when idle, else by a task once its calls drain."""
        self._retire(version)
        if version.in_flight == 0 and not version.runner.closes_slowly:
            await self._unload_when_drained(version)
        else:
            self.ctx.spawn(self._unload_when_drained(version), f"unload-v{version.number}")

    def _retire(self, version: ComponentVersion) -> None:
        version.retired = True
        if version.in_flight == 0:
            version.drained.set()

    async def _unload_when_drained(self, version: ComponentVersion) -> None:
        await version.drained.wait()
        if version not in self._held:
            return
        self._held.discard(version)
        started = time.perf_counter()
        try:
            await version.runner.close()
        except Exception as exc:  # a failing teardown must not keep the version, nor stop the others
            self.ctx.metrics.module_operation(KIND, self.name, "unload", "error", time.perf_counter() - started)
            self.ctx.log.error("component teardown failed", version=version.number, error=exc)
        else:
            self.ctx.metrics.module_operation(KIND, self.name, "unload", "success", time.perf_counter() - started)
        finally:
            self._gauge.set(len(self._held))

    # -- calls -------------------------------------------------------------------------------------------------

    async def call(self, data: Any, execution_id: str, deadline: float | None = None) -> dict[str, Any]:
        """Run the active version's `execute`; `deadline` (seconds from now) can only shorten the timeout."""
        timeout = self.config.timeout if deadline is None else min(self.config.timeout, deadline)
        started = time.perf_counter()
        async with self._slots:
            version = self.current
            if version is None:
                raise ComponentUnavailableError(
                    f"component '{self.name}' has no loaded version (no source, or it is not started)")
            version.in_flight += 1
            try:
                log = self.ctx.log.bind(execution_id=execution_id, component_version=version.number)
                output = await version.runner.call(data, execution_id, max(0.001, timeout - (
                    time.perf_counter() - started)), log)
            except StepTimeoutError:
                self._executed("timeout", started)
                raise
            except asyncio.CancelledError:
                raise
            except Exception:
                self._executed("error", started)
                raise
            finally:
                version.leave()
        self._executed("success", started)
        return output

    def _executed(self, status: str, started: float) -> None:
        self.ctx.metrics.module_operation(KIND, self.name, "execute", status, time.perf_counter() - started)

    # -- views -------------------------------------------------------------------------------------------------

    @property
    def versions_held(self) -> int:
        return len(self._held)

    def describe(self) -> dict[str, Any]:
        """Version, origin, status, last error and (process mode) the worker pids."""
        current = self.current
        out: dict[str, Any] = {
            "name": self.name, "isolation": self.config.isolation, "file": str(self.path) if self.path else None,
            "status": "ready" if current is not None else "empty", "versions_held": len(self._held),
            "last_error": self.last_error,
        }
        if self._spares is not None:
            out["spare_worker_pids"] = self._spares.pids
        if current is not None:
            out.update(version=current.number, origin=current.origin, digest=current.digest,
                       loaded_at=current.loaded_at, in_flight=current.in_flight, **current.runner.describe())
        return out


def _digest(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


SPEC = ModuleSpec(
    type="dynamic.component",
    kind=KIND,
    config_model=DynamicComponentConfig,
    factory=DynamicComponent,
    summary="A Python component (execute/setup/teardown) hot-reloaded into live workflows; called by `call` steps.",
)
