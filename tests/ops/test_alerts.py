"""The alert rules: promtool accepts them, their unit tests pass, and each alert is tested and has a runbook."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.ops.tools import (
    ALERT_TESTS,
    ALERTS,
    RUNBOOK_ALERTS,
    alert_rules,
    promtool,
    runbook_sections,
)

OPERATOR_ALERTS = (
    "EngineNotReady", "EngineDown", "CircuitBreakerOpen", "BrokerBacklogGrowing", "DeadLetters", "ExecutionsStuck",
)


def test_promtool_check_rules_accepts_alerts_yml() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    files = sorted(str(path) for path in ALERT_TESTS.glob("*.yml"))
    assert files
    result = promtool("test", "rules", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert "FAILED" not in result.stdout


def test_the_runbook_alerts_and_the_operator_alerts_are_defined_once() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names))
    assert set(RUNBOOK_ALERTS) | set(OPERATOR_ALERTS) <= set(names)


def test_runbook_thresholds() -> None:
    exprs = {rule["alert"]: " ".join(rule["expr"].split()) for rule in alert_rules()}
    assert exprs["HighErrorRate"].endswith("> 0.05")
    assert exprs["SlowWorkflows"].startswith("histogram_quantile(0.99,")
    assert exprs["SlowWorkflows"].endswith("> 5")
    assert exprs["QueueBacklog"].endswith("> 100")
    assert exprs["HighMemoryUsage"] == "process_resident_memory_bytes / process_memory_limit_bytes > 0.85"
    assert exprs["HighHTTPErrorRate"].endswith("> 0.05")
    assert 'status_code=~"5.."' in exprs["HighHTTPErrorRate"]
    assert exprs["HighHTTPLatency"].startswith("histogram_quantile(0.99,")
    assert exprs["HighHTTPLatency"].endswith("> 2")
    assert 'module_operations_total{status="timeout"}' in exprs["ComponentTimeout"]


def test_every_alert_links_its_runbook_section() -> None:
    sections = runbook_sections()
    for rule in alert_rules():
        anchor = rule["alert"].lower()
        assert rule["annotations"]["runbook_url"] == f"docs/RUNBOOKS.md#{anchor}", rule["alert"]
        assert anchor in sections, f"docs/RUNBOOKS.md has no '## {rule['alert']}' heading"
        assert "### Investigation" in sections[anchor], rule["alert"]
        assert "### Resolution" in sections[anchor], rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]


def _cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for path in ALERT_TESTS.glob("*.yml"):
        for test in yaml.safe_load(path.read_text())["tests"]:
            cases += test.get("alert_rule_test", [])
    return cases


def test_every_alert_has_a_firing_and_a_not_firing_unit_test() -> None:
    firing = {case["alertname"] for case in _cases() if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in _cases() if not case.get("exp_alerts")}
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts without a firing case"
    assert names - quiet == set(), "alerts without a not-firing case"


def test_the_drill_rules_differ_from_alerts_yml_only_in_for(tmp_path: Path) -> None:
    from drills.prometheus import DRILL_FOR, drill_rules

    drill = drill_rules()
    rules = drill["groups"][0]["rules"]
    assert {rule.get("for", DRILL_FOR) for rule in rules} == {DRILL_FOR}
    original = yaml.safe_load(ALERTS.read_text())
    for rule in original["groups"][0]["rules"]:
        if "for" in rule:
            rule["for"] = DRILL_FOR
    assert drill == original
    path = tmp_path / "drill-rules.yml"
    path.write_text(yaml.safe_dump(drill))
    assert promtool("check", "rules", str(path)).returncode == 0
