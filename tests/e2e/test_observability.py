"""End to end: a mixed workload leaves every contract metric family with the right labels; readiness follows."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx

from tests.e2e.process import engine_process, free_port, sample, wait_until

APP = Path(__file__).parent / "app.yaml"


def test_mixed_workload_writes_every_metric_family_with_contract_labels() -> None:
    with engine_process(APP) as engine, httpx.Client(timeout=10) as client:
        assert client.post(f"{engine.web}/echo/a", json={"items": [1]}).status_code == 201
        assert client.get(f"{engine.web}/items/boom").status_code == 500
        assert client.get(f"{engine.web}/items/7").status_code == 200
        assert client.get(f"{engine.web}/no/such/path").status_code == 404
        assert client.post(f"{engine.web}/price", json={"items": [2, 3]}).json() == {"total": 5, "version": 1}
        timed_out = client.get(f"{engine.web}/calls-slow")
        assert timed_out.status_code == 500
        assert timed_out.json()["error"]["code"] == "timeout"
        wait_until(lambda: sample(engine.metrics(), "workflow_executions_total", workflow_type="tick") is not None)
        text = engine.metrics()

    def value(metric: str, **labels: str) -> float:
        found = sample(text, metric, **labels)
        assert found is not None, f"no sample {metric}{labels}"
        return found

    assert value("workflow_executions_total", workflow_type="echo", status="success") == 1
    assert value("workflow_executions_total", workflow_type="item", status="error") == 1
    assert value("workflow_executions_total", workflow_type="calls-slow", status="error") == 1
    assert value("workflow_duration_seconds_count", workflow_type="echo") == 1
    assert value("workflow_duration_seconds_bucket", workflow_type="echo", le="300.0") == 1
    assert value("active_workflows", workflow_type="echo") == 0
    assert value("workflow_queue_depth", workflow_type="echo") == 0
    assert value("trigger_events_total", workflow_type="item", trigger="http") == 2
    assert value("trigger_events_total", workflow_type="tick", trigger="schedule") >= 1
    # The http step's own timeout is counted where it happened, on the client module.
    ops = {"module": "http_client", "name": "self", "operation": "request"}
    assert sample(text, "module_operations_total", status="timeout", **ops) == 1
    assert (sample(text, "module_operation_duration_seconds_count", **ops) or 0) >= 1
    # Route templates, never raw paths; unmatched requests are one series.
    assert value("http_requests_total", server="web", method="GET", path="/items/{id}", status_code="500") == 1
    assert value("http_requests_total", server="web", method="GET", path="/items/{id}", status_code="200") == 1
    assert value("http_requests_total", server="web", method="GET", path="unmatched", status_code="404") == 1
    assert sample(text, "http_requests_total", path="/items/boom") is None
    assert value("http_request_duration_seconds_count", server="web", method="POST", path="/echo/{name}") == 1
    assert value("http_requests_total", server="management", method="GET", path="/metrics") >= 1
    assert sample(text, "circuit_breaker_state", module="http_client", name="self") == 0
    dynamic = {"module": "dynamic", "name": "pricing"}
    assert value("module_operations_total", operation="load", status="success", **dynamic) == 1
    assert value("module_operations_total", operation="execute", status="success", **dynamic) == 1
    assert value("module_operation_duration_seconds_count", operation="execute", **dynamic) == 1
    assert value("dynamic_component_versions", name="pricing") == 1
    assert value("asyncio_tasks") > 0
    assert value("event_loop_lag_seconds_count") > 0
    assert value("process_memory_limit_bytes") > 0
    assert value("process_resident_memory_bytes") > 0
    assert value("python_gc_objects_collected_total") >= 0
    assert value("python_info") == 1


def test_readyz_names_a_retrying_module_and_recovers_without_restart() -> None:
    port = free_port()
    blocker = socket.create_server(("127.0.0.1", port))
    try:
        with engine_process(APP, wait_ready=False, web_port=port) as engine:
            def retrying() -> bool:
                try:
                    body = httpx.get(f"{engine.mgmt}/readyz").json()
                except httpx.HTTPError:
                    return False
                return body.get("components", {}).get("web", {}).get("state") == "retrying"

            wait_until(retrying)
            not_ready = httpx.get(f"{engine.mgmt}/readyz")
            assert not_ready.status_code == 503
            assert "127.0.0.1" in not_ready.json()["components"]["web"]["detail"]
            assert httpx.get(f"{engine.mgmt}/healthz").status_code == 200
            blocker.close()
            wait_until(lambda: httpx.get(f"{engine.mgmt}/readyz").status_code == 200, timeout=30)
            assert httpx.get(f"{engine.mgmt}/healthz").status_code == 200
            assert httpx.post(f"{engine.web}/echo/b", json={"items": []}).status_code == 201
    finally:
        blocker.close()
