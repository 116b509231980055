"""`workflow run`: load the config, start the engine, and turn SIGTERM/SIGINT into an orderly shutdown."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import structlog

from workflow_engine.config.validate import load_config
from workflow_engine.engine.engine import Engine
from workflow_engine.observability.logging import configure_logging
from workflow_engine.registry.specs import Registry
from workflow_engine.runtime.program import load_program

log = structlog.get_logger("workflow_engine.run")


async def serve(config_path: Path, registry: Registry, *, mgmt_addr: str | None = None,
                store: str | None = None, watch: bool = False) -> None:
    """Run the app in `config_path` until SIGTERM or SIGINT, then drain and return."""
    app, _ = load_program(lambda: load_config(config_path, registry), registry)  # every issue at once
    configure_logging(app.engine.log_level, app.engine.log_format)
    engine = Engine(app, registry, mgmt_address=mgmt_addr, store_url=store, watch=watch)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, engine, sig)
    try:
        await engine.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _on_signal(engine: Engine, sig: signal.Signals) -> None:
    log.info("signal received, shutting down", signal=sig.name)
    engine.request_stop()


def run(config_path: Path, registry: Registry, *, mgmt_addr: str | None = None, store: str | None = None,
        watch: bool = False) -> None:
    """Blocking entry point used by the CLI (uvloop when installed)."""
    main = serve(config_path, registry, mgmt_addr=mgmt_addr, store=store, watch=watch)
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)
