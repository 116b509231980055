"""Structured logs (DESIGN.md §2.5): JSON lines, console output on a terminal, stdlib routed through."""

from __future__ import annotations

import contextvars
import logging
import sys
import traceback
from typing import Any, Literal, TextIO

import orjson
import structlog
from structlog.types import EventDict, Processor, WrappedLogger

from workflow_engine.errors import WorkflowEngineError

LogFormat = Literal["auto", "json", "console"]

# Keys every line starts with, so `grep` and eyes find them in the same place.
_LEADING_KEYS = ("ts", "level", "logger", "event")

# Third-party loggers that would otherwise log once per request; their warnings still come through.
_QUIET_LOGGERS = ("uvicorn.access", "httpx", "httpcore")
# Loggers some libraries configure with their own handlers; ours must be the only renderer.
_ROUTED_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "httpx", "httpcore", "asyncio")


# The engine's own log context (request id, execution id, workflow type): one context variable holding a small
# dict, set once per binding. structlog's `bind_contextvars` keeps a variable per key and returns a token per
# key, and a bound logger copies its context: ~4 % of an HTTP route's instructions per request for lines that
# are almost never written. `merge_log_context` adds the values to the lines that are written.
_log_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "workflow_engine_log_context", default=None)

LogContextToken = contextvars.Token[dict[str, Any] | None]


def bind_log_context(**values: Any) -> LogContextToken:
    """Add `values` to every line logged from the current context on (this task and the tasks it starts)."""
    current = _log_context.get()
    return _log_context.set({**current, **values} if current else values)


def reset_log_context(token: LogContextToken) -> None:
    """Undo the `bind_log_context` that returned `token`."""
    _log_context.reset(token)


def log_context() -> dict[str, Any]:
    """The values `bind_log_context` bound in the current context."""
    return dict(_log_context.get() or {})


def merge_log_context(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Processor: the bound log context, under the keys the line does not set itself."""
    context = _log_context.get()
    if context:
        for key, value in context.items():
            event_dict.setdefault(key, value)
    return event_dict


class _EngineHandler(logging.StreamHandler[TextIO]):
    """The root handler `configure_logging` installs; its class marks it for replacement on reconfigure."""


def configure_logging(level: str = "info", fmt: LogFormat = "auto", stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging through one renderer writing to `stream` (stdout by default)."""
    numeric_level = _parse_level(level)
    out = stream if stream is not None else sys.stdout
    console = fmt == "console" or (fmt == "auto" and _is_tty(out))
    shared = _shared_processors(console)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: a logger created at import time, before configuration, must follow the configuration.
        cache_logger_on_first_use=False,
    )
    handler = _EngineHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _renderer(console, out)],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _EngineHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    _route_library_loggers()


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structured logger whose lines carry `logger=name`."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger


def describe_error(exc: BaseException) -> dict[str, Any]:
    """The `error` object of a log line: type, message, traceback, and the engine's error code if any."""
    out: dict[str, Any] = {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }
    if isinstance(exc, WorkflowEngineError):
        out["code"] = exc.code
    return out


def _parse_level(level: str) -> int:
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}; use debug, info, warning or error")
    return numeric


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _shared_processors(console: bool) -> list[Processor]:
    return [
        merge_log_context,
        structlog.contextvars.merge_contextvars,  # what components bind with structlog's own API
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        _console_errors if console else _json_errors,
    ]


def _renderer(console: bool, stream: TextIO) -> Processor:
    if console:
        # Locals stay out of tracebacks: they may hold secrets (tokens, connection strings).
        tracebacks = structlog.dev.RichTracebackFormatter(show_locals=False)
        return structlog.dev.ConsoleRenderer(
            colors=_is_tty(stream), timestamp_key="ts", exception_formatter=tracebacks
        )
    return _render_json


def _exception_of(exc_info: Any) -> BaseException | None:
    """The exception an `exc_info` value refers to (True, an exception, or a sys.exc_info() tuple)."""
    if isinstance(exc_info, BaseException):
        return exc_info
    if exc_info is True:
        return sys.exc_info()[1]
    if isinstance(exc_info, tuple) and len(exc_info) == 3 and isinstance(exc_info[1], BaseException):
        return exc_info[1]
    return None


def _pop_exception(event_dict: EventDict) -> BaseException | None:
    # Resolved here, while the log call is still inside the `except` block that `exc_info=True` refers to.
    from_exc_info = _exception_of(event_dict.pop("exc_info", None))
    error = event_dict.get("error")
    return error if isinstance(error, BaseException) else from_exc_info


def _json_errors(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    exc = _pop_exception(event_dict)
    if exc is not None:
        event_dict["error"] = describe_error(exc)
    return event_dict


def _console_errors(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    exc = _pop_exception(event_dict)
    if exc is not None:
        event_dict["error"] = f"{type(exc).__name__}: {exc}"
        # ConsoleRenderer prints the traceback readably from `exc_info`.
        event_dict["exc_info"] = exc
    return event_dict


def _render_json(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> str:
    ordered: dict[str, Any] = {key: event_dict.pop(key) for key in _LEADING_KEYS if key in event_dict}
    ordered.update(event_dict)
    return orjson.dumps(ordered, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def _route_library_loggers() -> None:
    for name in _ROUTED_LOGGERS:
        library_logger = logging.getLogger(name)
        library_logger.handlers.clear()
        library_logger.propagate = True
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
