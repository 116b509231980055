"""`engine_ready` (what EngineNotReady alerts on) follows /readyz: 0 while a module retries, 1 once it is up."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx

from tests.e2e.process import engine_process, free_port, sample, wait_until

APP = Path(__file__).with_name("live.yaml")


def test_engine_ready_is_zero_while_readyz_answers_503_and_one_after() -> None:
    port = free_port()
    blocker = socket.create_server(("127.0.0.1", port))
    try:
        env = {"CLOSED_PORT": str(free_port())}
        with engine_process(APP, wait_ready=False, web_port=port, env=env) as engine:
            def scraped() -> float | None:
                try:
                    return sample(engine.metrics(), "engine_ready")
                except httpx.HTTPError:
                    return None

            wait_until(lambda: scraped() is not None, timeout=90)  # starting takes long on a busy machine
            assert httpx.get(f"{engine.mgmt}/readyz").status_code == 503
            assert scraped() == 0
            blocker.close()
            wait_until(lambda: httpx.get(f"{engine.mgmt}/readyz").status_code == 200, timeout=30)
            assert scraped() == 1
    finally:
        blocker.close()
