"""A real Prometheus (Debian's binary) on a free port, scraping drill engines every second with the real rules.

The rules file is generated from deploy/prometheus/alerts.yml by rewriting `for:` and nothing else.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from tests.e2e.process import free_port, wait_until
from tests.ops.tools import ALERTS, tool

DRILL_FOR = "2s"


def drill_rules(source: Path = ALERTS) -> dict[str, Any]:
    """alerts.yml with every `for:` shortened to DRILL_FOR; expressions, labels and annotations untouched."""
    doc: dict[str, Any] = yaml.safe_load(source.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = DRILL_FOR
    return doc


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector result."""
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing) from /api/v1/alerts."""
        answer = httpx.get(f"{self.url}/api/v1/alerts", timeout=10).json()
        assert answer["status"] == "success", answer
        alerts: list[dict[str, Any]] = answer["data"]["alerts"]
        return alerts

    def firing(self, alert: str, job: str) -> list[dict[str, Any]]:
        """The firing instances of `alert` for scrape job `job`."""
        return [a for a in self.alerts() if a["labels"]["alertname"] == alert and a["labels"].get("job") == job
                and a["state"] == "firing"]

    def active(self, alert: str, job: str) -> bool:
        """Whether `alert` is pending or firing for `job`."""
        return any(a["labels"]["alertname"] == alert and a["labels"].get("job") == job for a in self.alerts())

    def targets_up(self) -> dict[str, bool]:
        """Scrape job -> whether its target was up at the last scrape."""
        answer = httpx.get(f"{self.url}/api/v1/targets", timeout=10).json()
        return {t["labels"]["job"]: t["health"] == "up" for t in answer["data"]["activeTargets"]}


@contextmanager
def prometheus(targets: dict[str, str]) -> Iterator[Prometheus]:
    """Prometheus scraping each `job -> host:port` every second and evaluating the drill rules every second."""
    with tempfile.TemporaryDirectory(prefix="drill-prometheus-") as tmp:
        workdir = Path(tmp)
        (workdir / "rules.yml").write_text(yaml.safe_dump(drill_rules(), sort_keys=False))
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(workdir / "rules.yml")],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                               for job, target in targets.items()],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        log = workdir / "prometheus.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [tool("prometheus"), f"--config.file={workdir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                 "--storage.tsdb.retention.time=1h"],
                stdout=out, stderr=subprocess.STDOUT,
            )
        server = Prometheus(f"http://127.0.0.1:{port}", proc, log)
        try:
            wait_until(lambda: _ready(server), timeout=30, interval=0.2)
            yield server
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _ready(server: Prometheus) -> bool:
    if server.proc.poll() is not None:
        raise AssertionError(f"prometheus exited:\n{server.log.read_text()}")
    try:
        return httpx.get(f"{server.url}/-/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        time.sleep(0.1)
        return False
