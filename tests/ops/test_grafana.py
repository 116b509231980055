"""The Grafana dashboards are well-formed and cover what the issue asks an overview to show."""

from __future__ import annotations

import json
from typing import Any

from tests.ops.promql import usage
from tests.ops.tools import GRAFANA

# The overview's subjects, each as the metric its panels must query.
COVERED = {
    "executions by type and status": "workflow_executions_total",
    "p99 by type": "workflow_duration_seconds_bucket",
    "active": "active_workflows",
    "queued": "workflow_queue_depth",
    "HTTP rate and 5xx by path": "http_requests_total",
    "HTTP latency": "http_request_duration_seconds_bucket",
    "module operations and timeouts": "module_operations_total",
    "dynamic reloads": "dynamic_component_versions",
    "breaker states": "circuit_breaker_state",
    "broker backlog": "broker_backlog",
    "memory": "process_resident_memory_bytes",
    "memory limit": "process_memory_limit_bytes",
    "asyncio tasks": "asyncio_tasks",
    "loop lag": "event_loop_lag_seconds_bucket",
}


def _boards() -> dict[str, dict[str, Any]]:
    boards = {path.name: json.loads(path.read_text()) for path in sorted(GRAFANA.glob("*.json"))}
    assert boards, "no dashboards"
    return boards


def test_dashboards_are_well_formed() -> None:
    uids = set()
    for name, board in _boards().items():
        assert board["title"], name
        assert board["uid"] not in uids, name
        uids.add(board["uid"])
        assert isinstance(board["schemaVersion"], int)
        variables = {v["name"] for v in board["templating"]["list"]}
        assert {"datasource", "job", "instance"} <= variables
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in board["panels"]:
            assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            refs = [target["refId"] for target in panel["targets"]]
            assert refs, panel["title"]
            assert len(refs) == len(set(refs)), panel["title"]
            for target in panel["targets"]:
                assert 'job=~"$job"' in target["expr"], panel["title"]
                assert 'instance=~"$instance"' in target["expr"], panel["title"]


def test_the_overview_covers_every_subject() -> None:
    board = _boards()["workflow-overview.json"]
    queried = {s.metric for panel in board["panels"] for target in panel.get("targets", [])
               for s in usage(target["expr"]).selectors}
    missing = {subject for subject, metric in COVERED.items() if metric not in queried}
    assert not missing
    timeouts = [t["expr"] for p in board["panels"] for t in p.get("targets", []) if 'status="timeout"' in t["expr"]]
    reloads = [t["expr"] for p in board["panels"] for t in p.get("targets", []) if 'operation="reload"' in t["expr"]]
    fivexx = [t["expr"] for p in board["panels"] for t in p.get("targets", []) if 'status_code=~"5.."' in t["expr"]]
    assert timeouts
    assert reloads
    assert fivexx
