"""End to end with the real `workflow run`: a component file edited 50 times under continuous HTTP load.

Every response must be 2xx; each save must reach the responses (the switch latency is measured and printed for
bench/RESULTS.md, asserted only against a generous deadline); a syntax error and a forbidden import keep the old
version serving and show up as `status="error"` reloads in /metrics.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path

import httpx

from tests.e2e.process import engine_process, sample, wait_until

COMPONENT = (Path(__file__).parent / "components" / "pricing.py").read_text()
EDITS = 50
SWITCH_DEADLINE = 10.0  # functional bound of the test; the measured latency goes to bench/RESULTS.md
CONFIG = """version: 1
name: dynamic-e2e
engine: {store: "${WORKFLOW_STORE}", shutdown_grace: 5s}
modules:
  - name: web
    type: http.server
    config: {address: "${WEB_ADDR}"}
  - name: pricing
    type: dynamic.component
    config: {source: components/pricing.py, timeout: 2s, isolation: "${ISOLATION:-inline}"}
workflows:
  price:
    trigger: {http: {server: web, method: POST, path: /price}}
    durable: false
    steps:
      - id: price
        call: pricing
        with: {items: "{{ input.body['items'] }}"}
      - respond: {status: 200, body: "{{ steps.price.output }}"}
"""


def save(path: Path, text: str) -> float:
    """Replace the file as editors do (write a temporary file, rename over); returns the save time."""
    tmp = path.with_name(".pricing.py.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return time.monotonic()


class Load:
    """Requests in a loop on two threads; records every status and the last version seen."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statuses: list[int] = []
        self.version = 0
        self.seen_at: dict[int, float] = {}
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(2)]

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                response = client.post(self.url, json={"items": [1, 2]})
                self.statuses.append(response.status_code)
                if response.status_code == 200:
                    version = int(response.json()["version"])
                    self.seen_at.setdefault(version, time.monotonic())
                    self.version = version

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)


def reload_errors(metrics: str) -> float:
    return sample(metrics, "module_operations_total", module="dynamic", name="pricing", operation="reload",
                  status="error") or 0.0


def test_fifty_saves_under_load_every_response_2xx_and_bad_saves_keep_the_old_version(tmp_path: Path) -> None:
    (tmp_path / "components").mkdir()
    component = tmp_path / "components" / "pricing.py"
    component.write_text(COMPONENT)
    config = tmp_path / "app.yaml"
    config.write_text(CONFIG)
    latencies: list[float] = []
    with engine_process(config) as engine, Load(f"{engine.web}/price") as load:
        wait_until(lambda: load.version == 1)
        for version in range(2, EDITS + 2):
            saved = save(component, COMPONENT.replace("VERSION = 1", f"VERSION = {version}"))
            wait_until(lambda v=version: load.version == v, timeout=SWITCH_DEADLINE, interval=0.005)
            latencies.append(load.seen_at[version] - saved)
            if version in (10, 30):  # a syntax error, then a forbidden import: the running version keeps serving
                errors = reload_errors(engine.metrics())
                bad = "def execute(ctx, input):\n    return {\n" if version == 10 else "import os\n" + COMPONENT
                save(component, bad)
                wait_until(lambda e=errors: reload_errors(engine.metrics()) == e + 1, timeout=SWITCH_DEADLINE)
                count = len(load.statuses)
                wait_until(lambda c=count: len(load.statuses) > c + 20)
                assert load.version == version
        metrics = engine.metrics()
        logs = engine.logs()
    assert load.statuses, "the load generator made no requests"
    assert set(load.statuses) == {200}, f"non-2xx answers: {sorted(set(load.statuses))}"
    assert reload_errors(metrics) == 2
    assert sample(metrics, "module_operations_total", module="dynamic", name="pricing", operation="reload",
                  status="success") == EDITS
    assert sample(metrics, "dynamic_component_versions", name="pricing") == 1
    assert "syntax error" in logs
    assert "'os' is not allowed" in logs
    ordered = sorted(latencies)
    print(f"\nswitch latency over {EDITS} saves ({len(load.statuses)} requests): "
          f"p50 {statistics.median(ordered) * 1000:.0f} ms, p90 {ordered[int(len(ordered) * 0.9)] * 1000:.0f} ms, "
          f"max {ordered[-1] * 1000:.0f} ms")
