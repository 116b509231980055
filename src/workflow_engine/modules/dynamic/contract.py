"""The component contract: `execute(ctx, input) -> dict`, optional `setup(config)`/`teardown()` and schemas.

`ctx` is a `ComponentContext`: a logger, the execution id and the deadline; no engine internals.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import types
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from workflow_engine.errors import ComponentLoadError, StepError, ValidationFailedError


class ComponentLog(Protocol):
    """The logger a component gets as `ctx.log`."""

    def debug(self, event: str, **fields: Any) -> Any: ...
    def info(self, event: str, **fields: Any) -> Any: ...
    def warning(self, event: str, **fields: Any) -> Any: ...
    def error(self, event: str, **fields: Any) -> Any: ...


class ComponentContext:
    """What `execute(ctx, input)` gets: `log`, `execution_id`, `deadline` (Unix time) and `remaining()`."""

    __slots__ = ("deadline", "execution_id", "log")

    def __init__(self, log: ComponentLog, execution_id: str, deadline: float) -> None:
        self.log = log
        self.execution_id = execution_id
        self.deadline = deadline

    def remaining(self) -> float:
        """Seconds left before the call times out."""
        return max(0.0, self.deadline - time.time())

    async def sleep(self, seconds: float) -> None:
        """Wait without blocking the engine (async components cannot import asyncio: it has network access)."""
        await asyncio.sleep(seconds)


class CollectingLog:
    """A `ctx.log` that keeps records, for a worker process to send back with the result."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def _add(self, level: str, event: str, fields: dict[str, Any]) -> None:
        self.records.append((level, str(event), {k: _plain(v) for k, v in fields.items()}))

    def debug(self, event: str, **fields: Any) -> None:
        self._add("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._add("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._add("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._add("error", event, fields)


def _plain(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | type(None)) else repr(value)


class Schema:
    """An input or output schema: a pydantic model class or a JSON Schema mapping."""

    def __init__(self, spec: Any, what: str, filename: str) -> None:
        self.model = spec if isinstance(spec, type) and hasattr(spec, "model_validate") else None
        self.check_json: Callable[[Any, str], None] | None = None
        if self.model is None:
            if not isinstance(spec, dict):
                raise ComponentLoadError(filename, 1, f"{what} must be a pydantic model class or a JSON Schema "
                                         f"mapping, not {type(spec).__name__}")
            from workflow_engine.runtime.jsonschema_check import SchemaCheck

            problem = SchemaCheck.problem(spec)
            if problem:
                raise ComponentLoadError(filename, 1, f"{what}: {problem}")
            self.check_json = SchemaCheck(spec).check

    def validate(self, data: Any, what: str) -> Any:
        """`data` checked (a pydantic model's JSON dump); ValidationFailedError naming every problem."""
        if self.model is not None:
            try:
                return self.model.model_validate(data).model_dump(mode="json")
            except ValueError as exc:  # pydantic's ValidationError is a ValueError
                raise ValidationFailedError(f"{what} is invalid: {exc}") from None
        assert self.check_json is not None
        self.check_json(data, what)
        return data


@dataclass(frozen=True, eq=False)
class Contract:
    """What a loaded component version implements."""

    execute: Callable[..., Any]
    setup: Callable[..., Any] | None
    teardown: Callable[..., Any] | None
    input_schema: Schema | None
    output_schema: Schema | None
    namespace: types.ModuleType

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.execute)

    @classmethod
    def from_namespace(cls, namespace: types.ModuleType, filename: str) -> Contract:
        """The contract of a loaded namespace; ComponentLoadError when `execute` is missing or malformed."""
        found = vars(namespace)
        execute = found.get("execute")
        if not inspect.isfunction(execute):
            raise ComponentLoadError(filename, 1, "the component defines no function `execute(ctx, input)`")
        if len(inspect.signature(execute).parameters) != 2:
            raise ComponentLoadError(filename, execute.__code__.co_firstlineno,
                                     "`execute` must take two parameters: (ctx, input)")
        hooks = {}
        for hook in ("setup", "teardown"):
            fn = found.get(hook)
            if fn is not None and not inspect.isfunction(fn):
                raise ComponentLoadError(filename, 1, f"`{hook}` must be a function")
            hooks[hook] = fn
        schemas = {key: Schema(found[key], key, filename) if found.get(key) is not None else None
                   for key in ("input_schema", "output_schema")}
        return cls(execute, hooks["setup"], hooks["teardown"], schemas["input_schema"], schemas["output_schema"],
                   namespace)

    async def run_setup(self, config: dict[str, Any]) -> None:
        """`setup(config)` if defined (async, or sync off the loop)."""
        if self.setup is not None:
            await _call(self.setup, config)

    async def run_teardown(self) -> None:
        """`teardown()` if defined."""
        if self.teardown is not None:
            await _call(self.teardown)

    async def invoke(self, ctx: ComponentContext, data: Any, name: str, *,
                     threads: Executor | None = None) -> dict[str, Any]:
        """Check the input, run `execute` (sync code on `threads` when given, else right here), check the output
        (a dict, or a pydantic model dumped to one)."""
        if self.input_schema is not None:
            data = self.input_schema.validate(data, f"component '{name}': input")
        if self.is_async:
            result = await self.execute(ctx, data)
        elif threads is not None:
            result = await asyncio.get_running_loop().run_in_executor(threads, self.execute, ctx, data)
        else:
            result = self.execute(ctx, data)
        if hasattr(result, "model_dump") and not isinstance(result, dict):
            result = result.model_dump(mode="json")
        if not isinstance(result, dict):
            raise _bad_output(f"component '{name}': execute returned {type(result).__name__}, not a dict")
        if self.output_schema is not None:
            try:
                result = self.output_schema.validate(result, f"component '{name}': output")
            except ValidationFailedError as exc:
                raise _bad_output(exc.message) from None
        try:  # as the process mode checks it: an output that is not JSON data fails here, on the step
            orjson.dumps(result)
        except TypeError as exc:
            raise _bad_output(f"component '{name}': the output is not JSON-serialisable: {exc}") from None
        return dict(result)


def _bad_output(message: str) -> StepError:
    error = StepError(message, code="invalid_output")
    error.retryable = False
    return error


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    return await asyncio.to_thread(fn, *args)
