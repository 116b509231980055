"""The worker process of `isolation: process`: loads one component version and runs calls sent over a pipe.

Started as `python -m workflow_engine.modules.dynamic.worker MEMORY_BYTES`. Resource limits are set here, before
any component code runs: RLIMIT_AS caps the address space; RLIMIT_CPU is moved before each call to "CPU used so
far + the call's CPU budget", so a runaway call is killed by SIGXCPU. Messages are JSON lines (never pickle: the
engine must not trust what a worker sends). The protocol uses a private copy of stdout; fd 1 points at stderr so
that stray output of the component cannot corrupt it.
"""

from __future__ import annotations

import asyncio
import math
import os
import resource
import sys
from typing import IO, Any

import orjson

from workflow_engine.errors import ComponentLoadError, StepError, WorkflowEngineError
from workflow_engine.modules.dynamic.contract import CollectingLog, ComponentContext, Contract
from workflow_engine.modules.dynamic.loader import error_line, load_component
from workflow_engine.modules.dynamic.policy import ImportPolicy


def _limit_memory(limit: int) -> None:
    if limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _limit_cpu(seconds: float) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = usage.ru_utime + usage.ru_stime
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (math.ceil(used + seconds), hard))


def _error(exc: BaseException, filename: str) -> dict[str, Any]:
    if isinstance(exc, ComponentLoadError):
        return {"type": "ComponentLoadError", "file": exc.file, "line": exc.line, "reason": exc.reason}
    out: dict[str, Any] = {"type": type(exc).__name__, "message": f"{type(exc).__name__}: {exc}",
                           "line": error_line(exc, filename)}
    if isinstance(exc, WorkflowEngineError):
        out.update(message=exc.message, code=exc.code, http_status=exc.http_status)
        if isinstance(exc, StepError):
            out["retryable"] = exc.retryable
    return out


class WorkerMain:
    """The worker's state: the loaded contract and its event loop."""

    def __init__(self) -> None:
        self.contract: Contract | None = None
        self.name = ""
        self.filename = ""
        self.loop = asyncio.new_event_loop()

    def handle(self, message: dict[str, Any]) -> dict[str, Any]:
        op = message.get("op")
        if op == "load":
            return self.load(message)
        if op == "call":
            return self.call(message)
        if op == "stop":
            if self.contract is not None:
                self.loop.run_until_complete(self.contract.run_teardown())
            return {"ok": True, "stop": True}
        return {"ok": False, "error": {"type": "ProtocolError", "message": f"unknown op {op!r}"}}

    def load(self, message: dict[str, Any]) -> dict[str, Any]:
        self.name, self.filename = message["name"], message["filename"]
        policy = ImportPolicy(frozenset(message["allowed"]), frozenset(message.get("trusted") or ()))
        try:
            contract = load_component(message["source"], self.filename, f"dynamic_component.{self.name}", policy)
            self.loop.run_until_complete(contract.run_setup(message.get("config") or {}))
        except Exception as exc:  # reported to the engine, which keeps the running version
            if not isinstance(exc, ComponentLoadError):
                exc = ComponentLoadError(self.filename, error_line(exc, self.filename),
                                         f"setup failed: {type(exc).__name__}: {exc}")
            return {"ok": False, "error": _error(exc, self.filename)}
        self.contract = contract
        return {"ok": True, "pid": os.getpid()}

    def call(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.contract is not None, "call before load"
        log = CollectingLog()
        ctx = ComponentContext(log, message["execution_id"], message["deadline"])
        _limit_cpu(message["cpu"])
        try:
            output = self.loop.run_until_complete(
                self.contract.invoke(ctx, message["input"], self.name))
        except Exception as exc:  # the call failed; the worker lives on for the next one
            return {"ok": False, "error": _error(exc, self.filename), "logs": log.records}
        finally:
            _limit_cpu(3600.0 * 24)
        return {"ok": True, "output": output, "logs": log.records}


def serve(incoming: IO[bytes], outgoing: IO[bytes]) -> None:
    """Answer messages until `stop` or the end of input."""
    worker = WorkerMain()
    for line in incoming:
        try:
            reply = worker.handle(orjson.loads(line))
        except MemoryError:
            reply = {"ok": False, "error": {"type": "MemoryError", "message": "the worker ran out of memory"}}
        try:
            data = orjson.dumps(reply)
        except TypeError as exc:
            data = orjson.dumps({"ok": False, "error": {
                "type": "TypeError", "message": f"the output is not JSON-serialisable: {exc}"}})
        outgoing.write(data + b"\n")
        outgoing.flush()
        if reply.get("stop"):
            return


def _prewarm() -> None:
    """Load pydantic now, model machinery included (most components use it for their schemas): a spare worker
    waiting for its version has then already paid for it, and the reload does not."""
    from pydantic import BaseModel

    class Warm(BaseModel):
        value: int

    Warm.model_validate({"value": 1}).model_dump(mode="json")


def main() -> None:
    """Entry point of a worker process."""
    memory = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    outgoing = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    _limit_memory(memory)
    _prewarm()
    outgoing.write(orjson.dumps({"ok": True, "started": os.getpid()}) + b"\n")  # the engine waits for this line
    outgoing.flush()
    serve(sys.stdin.buffer, outgoing)


if __name__ == "__main__":
    main()
