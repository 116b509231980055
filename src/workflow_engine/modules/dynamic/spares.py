"""Spare worker processes: started ahead (interpreter up, imports done, nothing loaded), so that a new version or
a replacement worker does not wait for a Python interpreter to start."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

WORKER_MODULE = "workflow_engine.modules.dynamic.worker"
MESSAGE_LIMIT = 64 * 1024 * 1024
WORKER_ENV = ("PATH", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")

Spawn = Callable[[Coroutine[Any, Any, Any], str], Any]
Process = asyncio.subprocess.Process


def worker_environment() -> dict[str, str]:
    """The few variables a worker needs to start Python; the engine's secrets (tokens, store URLs) stay out."""
    return {name: os.environ[name] for name in WORKER_ENV if name in os.environ}


async def start_process(memory_limit: int) -> Process:
    """A new worker process, returned once it has started (interpreter up, rlimits set, imports done) and waits
    for a `load` message; OSError when it dies first."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", WORKER_MODULE, str(memory_limit),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=MESSAGE_LIMIT,
        env=worker_environment(),
    )
    assert proc.stdout is not None
    try:
        hello = await proc.stdout.readline()
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    if not hello:
        code = await proc.wait()
        raise OSError(f"worker process {proc.pid} exited at start (code {code})")
    return proc


class Spares:
    """Keeps `count` started, unloaded worker processes of one component (same memory limit for every version);
    each one taken is replaced in the background by a task of the module."""

    def __init__(self, count: int, memory_limit: int, spawn: Spawn) -> None:
        self.count = count
        self.memory_limit = memory_limit
        self._spawn = spawn
        self._ready: list[Process] = []
        self._starting = 0
        self._closed = False

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self._ready]

    async def take(self) -> Process:
        """A spare process if one is ready, else a new one; the spares are topped up either way."""
        while self._ready:
            proc = self._ready.pop(0)
            if proc.returncode is None:
                self.fill()
                return proc
        self.fill()
        return await start_process(self.memory_limit)

    def fill(self) -> None:
        """Start the spares that are missing (in the background)."""
        if self._closed:
            return
        for _ in range(self.count - len(self._ready) - self._starting):
            self._starting += 1
            self._spawn(self._start_one(), "spare-worker")

    async def _start_one(self) -> None:
        try:
            proc = await start_process(self.memory_limit)
        finally:
            self._starting -= 1
        if self._closed:
            proc.kill()
            await proc.wait()
            return
        self._ready.append(proc)

    async def close(self) -> None:
        """Kill the spares; none are started any more."""
        self._closed = True
        ready, self._ready = self._ready, []
        for proc in ready:
            if proc.returncode is None:
                proc.kill()
        await asyncio.gather(*(proc.wait() for proc in ready))
