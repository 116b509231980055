"""`make drill`: the runbook's seven alerts, and EngineNotReady, CircuitBreakerOpen and ExecutionsStuck, each
induced on a real engine and seen firing and resolving in a real Prometheus that evaluates
deploy/prometheus/alerts.yml (only `for:` shortened) every second. BrokerBacklogGrowing, DeadLetters and
EngineDown have promtool unit tests only (DeadLetters looks back 10 minutes, longer than a drill may take).

The drills run at once (module fixture), each against its own `workflow run`; each test reports one drill.
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e.process import EngineProcess, engine_process, free_port, wait_until
from tests.ops.tools import RUNBOOK_ALERTS

from drills.engines import drill_config, dynamic_available
from drills.prometheus import prometheus
from drills.scenarios import DRILLS, ENGINE_ENV, Drill, Outcome, job_of, run


def _start_engines(stack: ExitStack, config: Path) -> tuple[dict[str, EngineProcess], dict[str, dict[str, Any]]]:
    """One `workflow run` per drill, all started before waiting for any (each takes seconds to start), and
    what each drill's cause needs: EngineNotReady's engine starts with its HTTP port taken, CircuitBreakerOpen's
    calls a payments service on a port nothing listens on yet."""
    extras: dict[str, dict[str, Any]] = {alert: {} for alert in DRILLS}
    blocked = free_port()
    extras["EngineNotReady"]["blocker"] = stack.enter_context(socket.create_server(("127.0.0.1", blocked)))
    extras["CircuitBreakerOpen"]["payments_port"] = free_port()
    env = {alert: dict(ENGINE_ENV.get(alert, {})) for alert in DRILLS}
    env["CircuitBreakerOpen"]["PAYMENTS_PORT"] = str(extras["CircuitBreakerOpen"]["payments_port"])
    engines = {alert: stack.enter_context(engine_process(
        config, env=env[alert], wait_ready=False, web_port=blocked if alert == "EngineNotReady" else None))
        for alert in DRILLS}

    def started(alert: str, engine: EngineProcess) -> bool:
        assert engine.proc.poll() is None, f"a drill engine exited:\n{engine.logs()}"
        path = "/healthz" if alert == "EngineNotReady" else "/readyz"  # that one is not ready on purpose
        try:
            return httpx.get(f"{engine.mgmt}{path}", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(lambda: all(started(alert, engine) for alert, engine in engines.items()), timeout=120,
               interval=0.2)
    return engines, extras


@pytest.fixture(scope="module")
def outcomes() -> Iterator[dict[str, Outcome]]:
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="drill-") as tmp:
        config, culprit = drill_config(Path(tmp))
        engines, extras = _start_engines(stack, config)
        prom = stack.enter_context(prometheus({job_of(alert): engine.mgmt.removeprefix("http://")
                                               for alert, engine in engines.items()}))
        wait_until(lambda: all(prom.targets_up().get(job_of(alert)) for alert in DRILLS), timeout=30)
        started = time.monotonic()
        lock = threading.Lock()
        drills = [Drill(alert, engine, prom, culprit, dynamic_available(), extras[alert])
                  for alert, engine in engines.items()]
        with ThreadPoolExecutor(len(drills)) as pool:
            futures = {d.alert: pool.submit(run, d, lock) for d in drills}
            results = {alert: future.result() for alert, future in futures.items()}
        print(f"all drills done in {time.monotonic() - started:.0f}s "
              f"(ComponentTimeout via {'a dynamic component' if dynamic_available() else 'an http step'})")
        yield results


@pytest.mark.timeout(600)
@pytest.mark.parametrize("alert", [*RUNBOOK_ALERTS, "EngineNotReady", "CircuitBreakerOpen", "ExecutionsStuck"])
def test_runbook_drill(alert: str, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[alert]
    assert outcome.error is None, f"{alert} drill failed: {outcome.error!r}\n" + "\n".join(outcome.log)
