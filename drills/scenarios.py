"""The seven runbook drills: induce the cause, see the alert fire in Prometheus, run the runbook's investigation
query and check it names the culprit, remove the cause, see the alert resolve.

Each drill has its own engine process, scraped as its own Prometheus job, so drills run at once without one's
traffic moving another's ratios. The runbook's query is run as written plus `job="<the drill's job>"` on every
selector, as the runbook says to do when one Prometheus scrapes several deployments.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from tests.e2e.process import EngineProcess, sample
from tests.ops.promql import with_matcher
from tests.ops.tools import investigation_query

from drills.prometheus import Prometheus

FIRE_TIMEOUT = 90.0
RESOLVE_TIMEOUT = 120.0
MiB = 1024 * 1024


def job_of(alert: str) -> str:
    """The Prometheus job of an alert's drill engine."""
    return f"drill-{alert.lower()}"


@dataclass
class Drill:
    alert: str
    engine: EngineProcess
    prom: Prometheus
    culprit: tuple[str, str] = ("", "")  # ComponentTimeout: (module, name)
    memory_via_component: bool = False  # HighMemoryUsage: the engine has the cache component
    extras: dict[str, Any] = field(default_factory=dict)  # what a drill's cause needs (a port, a socket)
    log: list[str] = field(default_factory=list)
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.engine.web, timeout=30)
        self.started = time.monotonic()

    @property
    def job(self) -> str:
        return job_of(self.alert)

    def note(self, message: str) -> None:
        self.log.append(f"[{time.monotonic() - self.started:6.1f}s] {message}")

    def hit(self, method: str, path: str, count: int = 1, expect: int | None = None, **params: Any) -> None:
        """`count` requests, one after another, each checked against `expect`."""
        for _ in range(count):
            status = self.client.request(method, path, params=params).status_code
            assert expect is None or status == expect, f"{method} {path} {params}: {status}, expected {expect}"

    def in_parallel(self, count: int, call: Callable[[], None]) -> None:
        """Run `call` `count` times at once (requests that each take seconds)."""
        with ThreadPoolExecutor(count) as pool:
            for future in [pool.submit(call) for _ in range(count)]:
                future.result()

    def scraped(self) -> None:
        """Wait for two more scrapes of this drill's engine, so what was just sent is in Prometheus."""
        query = f'count_over_time(up{{job="{self.job}"}}[10m])'
        before = _value(self.prom.query(query))
        deadline = time.monotonic() + 30
        while _value(self.prom.query(query)) < before + 2:
            assert time.monotonic() < deadline, "Prometheus stopped scraping the drill engine"
            time.sleep(0.25)

    def until_firing(self, load: Callable[[], None], timeout: float = FIRE_TIMEOUT) -> list[dict[str, Any]]:
        """Apply `load` repeatedly until the drill's alert fires for its job; return the firing alerts."""
        deadline = time.monotonic() + timeout
        while True:
            firing = self.prom.firing(self.alert, self.job)
            if firing:
                self.note(f"{self.alert} firing: {[a['labels'] for a in firing]} value={firing[0]['value']}")
                return firing
            assert time.monotonic() < deadline, f"{self.alert} did not fire; alerts: {self.prom.alerts()}"
            load()

    def until_resolved(self, load: Callable[[], None], timeout: float = RESOLVE_TIMEOUT) -> None:
        """Apply `load` repeatedly until the alert is neither firing nor pending for the job."""
        deadline = time.monotonic() + timeout
        while self.prom.active(self.alert, self.job):
            assert time.monotonic() < deadline, f"{self.alert} did not resolve; alerts: {self.prom.alerts()}"
            load()
        self.note(f"{self.alert} resolved")

    def investigate(self) -> list[tuple[dict[str, str], float]]:
        """The runbook's first investigation query for this alert, scoped to the drill's job; (labels, value)
        of each series, NaN dropped, largest first."""
        query = with_matcher(investigation_query(self.alert), "job", self.job)
        result = [(r["metric"], float(r["value"][1])) for r in self.prom.query(query)]
        ranked = sorted(((m, v) for m, v in result if not math.isnan(v)), key=lambda mv: -mv[1])
        self.note(f"runbook query {query}\n    -> {ranked}")
        assert ranked, f"the runbook query returned nothing: {query}"
        return ranked


def _value(result: list[dict[str, Any]]) -> float:
    return float(result[0]["value"][1]) if result else 0.0


def _named(ranked: list[tuple[dict[str, str], float]], label: str) -> set[str]:
    """Values of `label` among the series above zero."""
    return {metric.get(label, "") for metric, value in ranked if value > 0}


# -- the drills --------------------------------------------------------------------------------------------------


def high_error_rate(d: Drill) -> None:
    d.hit("GET", "/browse", 20, expect=200)
    d.hit("POST", "/checkout", 10, expect=202)
    d.scraped()
    d.note("inducing: checkout fails (?fail=1)")

    def failing() -> None:
        d.hit("POST", "/checkout", 3, expect=202, fail="1")
        d.hit("POST", "/checkout", 3, expect=202)
        d.hit("GET", "/browse", 3, expect=200)
        time.sleep(0.3)

    d.until_firing(failing)
    ranked = d.investigate()
    assert ranked[0][0]["workflow_type"] == "checkout"
    assert _named(ranked, "workflow_type") == {"checkout"}
    d.note("removing: checkout succeeds again; healthy executions dilute the 5m error ratio")
    d.until_resolved(lambda: d.hit("POST", "/checkout", 200, expect=202))


def slow_workflows(d: Drill) -> None:
    d.hit("POST", "/report", 20, expect=202)
    d.hit("GET", "/browse", 20, expect=200)
    d.scraped()
    d.note("inducing: report takes 6 s (?slow=1)")
    d.hit("POST", "/report", 5, expect=202, slow="1")

    def traffic() -> None:
        d.hit("GET", "/browse", 2, expect=200)
        time.sleep(0.5)

    firing = d.until_firing(traffic)
    assert {a["labels"]["workflow_type"] for a in firing} == {"report"}
    ranked = d.investigate()
    assert ranked[0][0]["workflow_type"] == "report"
    assert ranked[0][1] > 5
    assert all(value < 5 for metric, value in ranked if metric["workflow_type"] != "report")
    d.note("removing: report is fast again; fast executions bring p99 down")
    d.until_resolved(lambda: d.hit("POST", "/report", 200, expect=202))


def queue_backlog(d: Drill) -> None:
    d.hit("GET", "/browse", 20, expect=200)
    d.scraped()
    d.note("inducing: 110 imports wait for drill.release (60 run, 50 queue) beside 5 slow reports")
    d.hit("POST", "/report", 5, expect=202, slow="1")
    d.hit("POST", "/import", 110, expect=202)
    d.until_firing(lambda: time.sleep(0.5))
    ranked = d.investigate()
    assert ranked[0][0]["workflow_type"] == "import"
    assert ranked[0][1] >= 110
    d.note("removing: publishing drill.release until every import has finished")

    def imports_left() -> float:
        text = d.engine.metrics()
        return (sample(text, "active_workflows", workflow_type="import") or 0) + (
            sample(text, "workflow_queue_depth", workflow_type="import") or 0)

    deadline = time.monotonic() + RESOLVE_TIMEOUT
    while imports_left() > 0:
        assert time.monotonic() < deadline, f"{imports_left()} imports still running or queued"
        d.hit("POST", "/release", expect=200)
        time.sleep(0.3)
    d.until_resolved(lambda: time.sleep(0.5))


def component_timeout(d: Drill) -> None:
    module, name = d.culprit
    d.hit("GET", "/quote", 20, expect=200)
    d.hit("GET", "/proxy", 20, expect=200)
    d.scraped()
    d.note(f"inducing: {module} module {name} takes 1 s against its 300 ms timeout (?sleep=1)")

    def timing_out() -> None:
        d.hit("GET", "/quote", 2, expect=500, sleep="1")
        d.hit("GET", "/quote", 2, expect=200)
        d.hit("GET", "/proxy", 2, expect=200)

    firing = d.until_firing(timing_out)
    assert {(a["labels"]["module"], a["labels"]["name"]) for a in firing} == {(module, name)}
    ranked = d.investigate()
    assert (ranked[0][0]["module"], ranked[0][0]["name"]) == (module, name)
    assert {(m["module"], m["name"]) for m, v in ranked if v > 0} == {(module, name)}
    d.note("removing: the module answers in time again")
    d.until_resolved(lambda: d.hit("GET", "/quote", 200, expect=200))


def high_memory_usage(d: Drill) -> None:
    assert d.memory_via_component, "the memory drill needs dynamic components (the cache component holds memory)"
    d.hit("GET", "/browse", 20, expect=200)
    d.scraped()
    text = d.engine.metrics()
    limit = sample(text, "process_memory_limit_bytes")
    rss = sample(text, "process_resident_memory_bytes")
    assert limit is not None
    assert rss is not None
    assert rss < 0.85 * limit, f"the engine starts at {rss / limit:.0%} of its lowered limit"
    megabytes = math.ceil((0.97 * limit - rss) / MiB)
    d.note(f"inducing: the cache component holds {megabytes} MiB (rss {rss / MiB:.0f} MiB, engine.memory_limit "
           f"{limit / MiB:.0f} MiB)")
    d.hit("POST", "/cache", expect=200, mb=str(megabytes))
    d.until_firing(lambda: time.sleep(0.5))
    ranked = d.investigate()
    instance = d.engine.mgmt.removeprefix("http://")
    assert ranked[0][0]["instance"] == instance
    assert ranked[0][1] > 0.85
    d.note("removing: the cache component drops what it holds")

    def drop() -> None:
        d.hit("POST", "/cache", expect=200, drop="1")
        time.sleep(0.5)

    d.until_resolved(drop)


def high_http_error_rate(d: Drill) -> None:
    d.hit("GET", "/pay", 10, expect=200)
    d.hit("GET", "/browse", 20, expect=200)
    d.hit("GET", "/pay", expect=502, fail="1")
    d.scraped()
    d.note("inducing: /pay answers 502 (?fail=1)")

    def failing() -> None:
        d.hit("GET", "/pay", 3, expect=502, fail="1")
        d.hit("GET", "/pay", 2, expect=200)
        d.hit("GET", "/browse", 2, expect=200)
        time.sleep(0.2)

    d.until_firing(failing)
    ranked = d.investigate()
    assert ranked[0][0]["path"] == "/pay"
    assert _named(ranked, "path") == {"/pay"}
    d.note("removing: /pay answers 200 again")
    d.until_resolved(lambda: d.hit("GET", "/pay", 200, expect=200))


def high_http_latency(d: Drill) -> None:
    d.hit("GET", "/search", 5, expect=200)
    d.hit("GET", "/browse", 20, expect=200)
    d.scraped()
    d.note("inducing: /search takes 3 s (?slow=1), 6 requests at once")
    d.in_parallel(6, lambda: d.hit("GET", "/search", expect=200, slow="1"))

    def traffic() -> None:
        d.hit("GET", "/browse", 2, expect=200)
        time.sleep(0.5)

    d.until_firing(traffic)
    ranked = d.investigate()
    assert ranked[0][0]["path"] == "/search"
    assert ranked[0][1] > 2
    assert all(value < 2 for metric, value in ranked if metric["path"] != "/search")
    d.note("removing: /search is fast again; fast requests bring p99 down")
    d.until_resolved(lambda: d.hit("GET", "/search", 300, expect=200))


class _Payments(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"charged": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def circuit_breaker_open(d: Drill) -> None:
    d.hit("GET", "/browse", 20, expect=200)
    d.scraped()
    d.note("inducing: the payments service is down; /charge calls fail until the breaker opens")
    d.hit("GET", "/charge", 5)
    firing = d.until_firing(lambda: time.sleep(0.5))
    assert {(a["labels"]["module"], a["labels"]["name"]) for a in firing} == {("http_client", "payments")}
    ranked = d.investigate()
    assert [(m["module"], m["name"]) for m, _ in ranked] == [("http_client", "payments")]
    d.note("removing: the payments service is up; the breaker's trial call succeeds and closes it")
    server = ThreadingHTTPServer(("127.0.0.1", d.extras["payments_port"]), _Payments)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        d.until_resolved(lambda: (d.hit("GET", "/charge"), time.sleep(0.5)))
        d.hit("GET", "/charge", expect=200)
    finally:
        server.shutdown()
        server.server_close()


def engine_not_ready(d: Drill) -> None:
    d.note("inducing: the engine's HTTP port is taken, so module web keeps retrying and /readyz answers 503")
    assert httpx.get(f"{d.engine.mgmt}/readyz", timeout=5).json()["components"]["web"]["state"] == "retrying"
    d.until_firing(lambda: time.sleep(0.5))
    ranked = d.investigate()
    assert [m["instance"] for m, _ in ranked] == [d.engine.mgmt.removeprefix("http://")]
    d.note("removing: the port is freed; the module binds it and the replica turns ready")
    d.extras["blocker"].close()
    d.until_resolved(lambda: time.sleep(0.5))
    assert httpx.get(f"{d.engine.mgmt}/readyz", timeout=5).status_code == 200


def executions_stuck(d: Drill) -> None:
    d.hit("GET", "/browse", 20, expect=200)
    d.scraped()
    d.note("inducing: 3 imports wait for an event that does not come; none of that type ever finished")
    d.hit("POST", "/import", 3, expect=202)
    firing = d.until_firing(lambda: d.hit("GET", "/browse", 2, expect=200))
    assert {a["labels"]["workflow_type"] for a in firing} == {"import"}
    ranked = d.investigate()
    assert [(m["workflow_type"], v) for m, v in ranked] == [("import", 3.0)]
    d.note("removing: drill.release lets them finish")
    d.until_resolved(lambda: (d.hit("POST", "/release", expect=200), time.sleep(0.5)))


DRILLS: dict[str, Callable[[Drill], None]] = {
    "HighErrorRate": high_error_rate,
    "SlowWorkflows": slow_workflows,
    "QueueBacklog": queue_backlog,
    "ComponentTimeout": component_timeout,
    "HighMemoryUsage": high_memory_usage,
    "HighHTTPErrorRate": high_http_error_rate,
    "HighHTTPLatency": high_http_latency,
    "EngineNotReady": engine_not_ready,
    "CircuitBreakerOpen": circuit_breaker_open,
    "ExecutionsStuck": executions_stuck,
}
# Drill engines that need a different environment.
ENGINE_ENV = {"HighMemoryUsage": {"MEMORY_LIMIT": "400Mi"}}


@dataclass
class Outcome:
    error: BaseException | None
    log: list[str]


def run(drill: Drill, lock: threading.Lock) -> Outcome:
    """Run one drill; its failure is returned with its log, never raised (the other drills go on)."""
    try:
        DRILLS[drill.alert](drill)
    except Exception as exc:
        drill.note(f"FAILED: {exc!r}")
        return Outcome(exc, drill.log)
    finally:
        drill.client.close()
        with lock:
            print(f"--- {drill.alert}\n" + "\n".join(drill.log), flush=True)
    return Outcome(None, drill.log)
