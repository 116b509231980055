"""The engine's side of `isolation: process`: worker processes, the pipe protocol, kill-and-replace."""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from workflow_engine.errors import ComponentLoadError, StepError, StepTimeoutError, ValidationFailedError
from workflow_engine.modules.dynamic.spares import Spares, Spawn, start_process

log = structlog.get_logger("workflow_engine.dynamic")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0



class WorkerCrashedError(StepError):
    """A worker process died during a call (memory, CPU limit, `os._exit`, a signal)."""

    code = "component_crashed"


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker of one component version loads, and its limits."""

    name: str
    filename: str
    source: str
    allowed: tuple[str, ...]
    trusted: tuple[str, ...]
    config: dict[str, Any]
    memory_limit: int
    cpu_limit: float


class Worker:
    """One worker process; one request at a time."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    async def start(cls, spec: WorkerSpec, spares: Spares | None = None) -> Worker:
        """Start a worker (a spare one when there is one) and load the version (setup included);
        ComponentLoadError if it refuses."""
        proc = await spares.take() if spares is not None else await start_process(spec.memory_limit)
        worker = cls(proc)
        try:
            async with asyncio.timeout(START_TIMEOUT):
                reply = await worker.request({
                    "op": "load", "name": spec.name, "filename": spec.filename, "source": spec.source,
                    "allowed": list(spec.allowed), "trusted": list(spec.trusted), "config": spec.config})
        except BaseException:
            await worker.kill()
            raise
        if not reply.get("ok"):
            await worker.kill()
            raise _load_error(reply.get("error") or {}, spec.filename)
        return worker

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one message and read its reply; WorkerCrashedError when the process dies first."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        try:
            self.proc.stdin.write(orjson.dumps(message) + b"\n")
            await self.proc.stdin.drain()
            line = await self.proc.stdout.readline()
        except (ConnectionError, ValueError) as exc:  # broken pipe, or an over-long line
            await self.kill()
            raise WorkerCrashedError(f"worker {self.pid}: {type(exc).__name__}: {exc}") from None
        if not line:
            code = await self.proc.wait()
            raise WorkerCrashedError(f"worker {self.pid} died ({_exit_reason(code)})")
        reply: dict[str, Any] = orjson.loads(line)
        return reply

    async def kill(self) -> None:
        """Kill the process now and reap it."""
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()

    async def stop(self) -> None:
        """Run teardown in the worker and let it exit; kill it if it does not within STOP_TIMEOUT."""
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                if self.proc.returncode is None:
                    await self.request({"op": "stop"})
                    await self.proc.wait()
        except (TimeoutError, WorkerCrashedError):
            pass
        finally:
            await self.kill()


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _load_error(error: dict[str, Any], filename: str) -> ComponentLoadError:
    return ComponentLoadError(str(error.get("file", filename)), int(error.get("line", 1)),
                              str(error.get("reason") or error.get("message") or "the worker refused the source"))


def call_error(error: dict[str, Any], name: str) -> StepError:
    """The StepError for a failed call's error dict from a worker."""
    message = f"component '{name}': {error.get('message', 'call failed')}"
    code = str(error.get("code") or "component_error")
    if code == ValidationFailedError.code:
        return ValidationFailedError(message)
    failure = StepError(message, code=code, http_status=int(error.get("http_status") or 500))
    failure.retryable = bool(error.get("retryable", True))
    return failure


class WorkerPool:
    """`size` workers of one version; a call takes an idle one. A worker that times out or dies is killed and
    replaced in the background (a task of the owning module), so only that call fails."""

    def __init__(self, spec: WorkerSpec, size: int, spawn: Spawn, spares: Spares | None = None) -> None:
        self.spec = spec
        self.size = size
        self._spawn = spawn
        self._spares = spares
        self._idle: asyncio.Queue[Worker] = asyncio.Queue()
        self.workers: list[Worker] = []
        self.replaced = 0
        self._closed = False

    @property
    def pids(self) -> list[int]:
        return [worker.pid for worker in self.workers]

    async def start(self) -> None:
        """Start every worker; on any failure none is left running."""
        results = await asyncio.gather(*(Worker.start(self.spec, self._spares) for _ in range(self.size)),
                                       return_exceptions=True)
        started = [r for r in results if isinstance(r, Worker)]
        failures = [r for r in results if not isinstance(r, Worker)]
        if failures:
            await asyncio.gather(*(w.kill() for w in started))
            raise failures[0]
        for worker in started:
            self.workers.append(worker)
            self._idle.put_nowait(worker)

    async def call(self, message: dict[str, Any], limit: float) -> dict[str, Any]:
        """Run one call on an idle worker within `limit` seconds (waiting for a worker counts)."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(limit):
                worker = await self._idle.get()
        except TimeoutError:
            raise StepTimeoutError(f"component '{self.spec.name}': no idle worker within {limit:.3g}s") from None
        remaining = max(0.001, limit - (time.monotonic() - started))
        try:
            async with asyncio.timeout(remaining):
                reply = await worker.request({**message, "cpu": self.spec.cpu_limit})
        except TimeoutError:
            self._replace(worker)
            raise StepTimeoutError(
                f"component '{self.spec.name}' timed out after {limit:.3g}s; worker {worker.pid} was killed"
            ) from None
        except WorkerCrashedError:
            self._replace(worker)
            raise
        except BaseException:  # cancelled mid-call: the worker's state is unknown
            self._replace(worker)
            raise
        self._idle.put_nowait(worker)
        return reply

    def _replace(self, worker: Worker) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
        self._spawn(self._replacement(worker), f"replace-worker-{worker.pid}")

    async def _replacement(self, dead: Worker) -> None:
        await dead.kill()
        backoff = 0.1
        while not self._closed:
            try:
                new = await Worker.start(self.spec, self._spares)
            except (OSError, StepError, ComponentLoadError) as exc:  # e.g. out of processes: try again later
                log.warning("cannot start a replacement worker, retrying", component=self.spec.name,
                            retry_in=backoff, error=exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            if self._closed:
                await new.kill()
                return
            self.replaced += 1
            self.workers.append(new)
            self._idle.put_nowait(new)
            return

    async def close(self) -> None:
        """Stop every worker (teardown runs in each)."""
        self._closed = True
        workers, self.workers = self.workers, []
        await asyncio.gather(*(worker.stop() for worker in workers))
