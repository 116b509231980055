"""configure_logging: JSON lines with the contract keys, context vars, errors, stdlib routing, idempotence."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import structlog

from workflow_engine.errors import StepError
from workflow_engine.observability.logging import (
    bind_log_context,
    configure_logging,
    get_logger,
    reset_log_context,
)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_line_has_contract_keys_and_context_vars() -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    structlog.contextvars.bind_contextvars(
        workflow_type="create-order", execution_id="ex-1", step="price", module="pricing"
    )

    get_logger("workflow_engine.runtime").info("step started", attempt=2)

    [line] = _lines(out)
    assert list(line)[:4] == ["ts", "level", "logger", "event"]
    assert line["level"] == "info"
    assert line["logger"] == "workflow_engine.runtime"
    assert line["event"] == "step started"
    assert line["attempt"] == 2
    assert {k: line[k] for k in ("workflow_type", "execution_id", "step", "module")} == {
        "workflow_type": "create-order", "execution_id": "ex-1", "step": "price", "module": "pricing",
    }
    assert datetime.fromisoformat(line["ts"]).utcoffset() == timedelta(0)


def test_exc_info_becomes_error_object() -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    log = get_logger("test")

    try:
        raise ValueError("bad price")
    except ValueError:
        log.exception("step failed")

    [line] = _lines(out)
    assert line["level"] == "error"
    assert line["error"]["type"] == "ValueError"
    assert line["error"]["message"] == "bad price"
    assert "Traceback (most recent call last)" in line["error"]["traceback"]
    assert 'raise ValueError("bad price")' in line["error"]["traceback"]
    assert "exc_info" not in line


def test_error_keyword_with_exception_is_rendered_like_exc_info() -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)

    try:
        raise StepError("price: upstream returned 502", step="price")
    except StepError as exc:
        get_logger("test").warning("retrying", error=exc)

    [line] = _lines(out)
    assert line["error"]["type"] == "StepError"
    assert line["error"]["message"] == "price: upstream returned 502"
    assert line["error"]["code"] == "step_failed"
    assert "StepError: price: upstream returned 502" in line["error"]["traceback"]


def test_stdlib_records_share_the_renderer_and_context() -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    structlog.contextvars.bind_contextvars(execution_id="ex-2")

    try:
        raise KeyError("missing")
    except KeyError:
        logging.getLogger("asyncio").error("Task exception was never retrieved %s", "t-1", exc_info=True)

    [line] = _lines(out)
    assert line["logger"] == "asyncio"
    assert line["level"] == "error"
    assert line["event"] == "Task exception was never retrieved t-1"
    assert line["execution_id"] == "ex-2"
    assert line["error"]["type"] == "KeyError"


async def test_engine_log_context_is_on_lines_of_its_context_only_and_yields_to_line_keys() -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    log = get_logger("test")
    outer = bind_log_context(request_id="r-1")
    inner = bind_log_context(execution_id="ex-3", workflow_type="w")

    async def other_task() -> None:  # a task started here inherits the context, and its binds stay its own
        bind_log_context(execution_id="ex-child")
        log.info("child")

    await asyncio.create_task(other_task())
    log.info("bound")
    log.info("overridden", execution_id="explicit")
    reset_log_context(inner)
    log.info("outer only")
    reset_log_context(outer)
    log.info("unbound")

    lines = {line["event"]: line for line in _lines(out)}
    assert (lines["child"]["request_id"], lines["child"]["execution_id"]) == ("r-1", "ex-child")
    assert (lines["bound"]["request_id"], lines["bound"]["execution_id"], lines["bound"]["workflow_type"]) == (
        "r-1", "ex-3", "w")
    assert lines["overridden"]["execution_id"] == "explicit"
    assert lines["outer only"]["request_id"] == "r-1"
    assert "execution_id" not in lines["outer only"]
    assert "request_id" not in lines["unbound"]


def test_level_filters_both_structlog_and_stdlib() -> None:
    out = io.StringIO()
    configure_logging("warning", "json", out)

    get_logger("test").info("hidden")
    logging.getLogger("uvicorn.error").info("hidden too")
    get_logger("test").warning("shown")

    assert [line["event"] for line in _lines(out)] == ["shown"]


def test_per_request_library_logs_are_quiet() -> None:
    out = io.StringIO()
    configure_logging("debug", "json", out)

    logging.getLogger("uvicorn.access").info('127.0.0.1 - "GET /healthz" 200')
    logging.getLogger("httpx").info("HTTP Request: GET http://x 200 OK")
    logging.getLogger("httpx").warning("kept")

    assert [line["event"] for line in _lines(out)] == ["kept"]


def test_configuring_twice_installs_one_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "json", first)
    configure_logging("info", "json", second)

    get_logger("test").info("once")

    assert first.getvalue() == ""
    assert [line["event"] for line in _lines(second)] == ["once"]


def test_logger_created_before_configuration_follows_it() -> None:
    early = get_logger("early")
    out = io.StringIO()
    configure_logging("info", "json", out)

    early.info("after configure")

    assert _lines(out)[0]["logger"] == "early"


def test_auto_is_json_off_a_terminal_and_console_is_not_json() -> None:
    auto, console = io.StringIO(), io.StringIO()
    configure_logging("info", "auto", auto)
    get_logger("test").info("machine readable")
    configure_logging("info", "console", console)
    get_logger("test").info("human readable")

    assert _lines(auto)[0]["event"] == "machine readable"
    text = console.getvalue()
    assert "human readable" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_unknown_level_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        configure_logging("loud", "json", io.StringIO())
