"""Every PromQL expression of the ops kit parses (promtool) and selects only what a live engine exports.

Sources: the alert rules, the ```promql blocks of docs/RUNBOOKS.md and docs/OPERATIONS.md, and every query of
the Grafana dashboards. Metric names must be sample names of a live `/metrics`; label names in matchers must be
labels of that metric; grouping labels must be labels of a metric the expression selects (or target labels
Prometheus adds); an `=` matcher's value must have been seen, and an `=~` matcher must match a value seen.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.ops.live import Exported, broker_workload, live_engine
from tests.ops.promql import usage
from tests.ops.tools import ALERTS, GRAFANA, REPO, RUNBOOKS, alert_rules, promql_blocks, promtool

# Labels Prometheus attaches to every scraped series (static configs and the ServiceMonitor's Kubernetes SD).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}
# Series Prometheus writes itself for every target (labels: the target's only): no engine exports them.
SCRAPE_SERIES = {"up"}
LABEL_VALUES = re.compile(r"^label_values\((?:(?P<metric>[a-zA-Z_:][\w:]*)\s*,\s*)?(?P<label>\w+)\)$")


def expressions() -> list[tuple[str, str]]:
    """(where, expression) for every PromQL expression of the ops kit."""
    found = [(f"alerts.yml {rule['alert']}", str(rule["expr"])) for rule in alert_rules()]
    for doc in (RUNBOOKS, REPO / "docs" / "OPERATIONS.md"):
        found += [(doc.name, query) for query in promql_blocks(doc.read_text())]
    for board in sorted(GRAFANA.glob("*.json")):
        for panel in json.loads(board.read_text())["panels"]:
            found += [(f"{board.name} '{panel['title']}'", target["expr"]) for target in panel.get("targets", [])]
    return found


def problems(expr: str, live: Exported) -> Iterator[str]:
    """What in `expr` the live engine does not export."""
    found = usage(expr)
    selected: set[str] = set(TARGET_LABELS)
    for selector in found.selectors:
        if selector.metric in SCRAPE_SERIES:
            continue
        if selector.metric not in live:
            yield f"metric {selector.metric} is not exported"
            continue
        labels = live[selector.metric]
        selected |= set(labels)
        for m in selector.matchers:
            if m.label in TARGET_LABELS:
                continue
            if m.label not in labels:
                yield f"{selector.metric} has no label {m.label}"
            elif "$" in m.value:
                continue  # a dashboard variable
            elif m.op == "=" and m.value not in labels[m.label]:
                seen = sorted(labels[m.label])
                yield f"{selector.metric}{{{m.label}={m.value!r}}}: value never written (seen: {seen})"
            elif m.op == "=~" and not any(re.fullmatch(m.value, v) for v in labels[m.label]):
                yield f"{selector.metric}{{{m.label}=~{m.value!r}}} matches no value written"
    for label in sorted(found.grouping - selected):
        yield f"grouping label {label} is on none of the selected metrics"


@pytest.fixture(scope="module")
def live() -> Iterator[Exported]:
    with live_engine() as (_, exported):
        yield exported


def test_the_kit_has_expressions_from_every_source() -> None:
    sources = {where.split()[0] for where, _ in expressions()}
    assert {"alerts.yml", "RUNBOOKS.md", "OPERATIONS.md"} <= sources
    assert any(source.endswith(".json") for source in sources)


def test_every_expression_parses(tmp_path: Path) -> None:
    rules = [{"record": f"check:expr_{i}", "expr": expr.replace("$__rate_interval", "5m")}
             for i, (_, expr) in enumerate(expressions())]
    rules_file = tmp_path / "expressions.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
    result = promtool("check", "rules", str(rules_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_expression_selects_what_a_live_engine_exports(live: Exported) -> None:
    found = [f"{where}: {problem}\n    {expr}" for where, expr in expressions() for problem in problems(expr, live)
             if not _waiting_for_message_trigger(expr)]
    assert not found, "\n".join(found)


def _waiting_for_message_trigger(expr: str) -> bool:
    """Broker families are written by message consumers; until this engine has the `message` trigger
    (issue [brokers]) the live workload cannot consume, so broker_* selectors are left unchecked."""
    return not broker_workload() and any(s.metric.startswith("broker_") for s in usage(expr).selectors)


def test_dashboard_variables_use_exported_labels(live: Exported) -> None:
    for board in sorted(GRAFANA.glob("*.json")):
        for variable in json.loads(board.read_text())["templating"]["list"]:
            if variable.get("type") != "query":
                continue
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = LABEL_VALUES.match(query)
            assert match, f"{board.name} variable {variable['name']}: {query}"
            metric, label = match["metric"], match["label"]
            assert metric in live, f"{board.name}: {metric} is not exported"
            assert label in TARGET_LABELS | set(live[metric]), f"{board.name}: {metric} has no label {label}"


def test_the_checker_finds_what_is_not_exported(live: Exported) -> None:
    """The check above would fail on a Go metric, a wrong label, an unwritten value or a stray grouping label."""
    assert list(problems("go_goroutines", live)) == ["metric go_goroutines is not exported"]
    assert list(problems('rate(workflow_executions_total{state="error"}[5m])', live)) == [
        "workflow_executions_total has no label state"]
    assert next(problems('workflow_executions_total{status="failed"}', live)).startswith(
        "workflow_executions_total{status='failed'}: value never written")
    assert list(problems('http_requests_total{status_code=~"6.."}', live)) == [
        "http_requests_total{status_code=~'6..'} matches no value written"]
    assert list(problems("sum by (path) (rate(workflow_executions_total[5m]))", live)) == [
        "grouping label path is on none of the selected metrics"]
    assert list(problems(
        'histogram_quantile(0.99, sum by (le, job) (rate(http_request_duration_seconds_bucket{server!="x"}[5m])))',
        live)) == []
    assert ALERTS.exists()
