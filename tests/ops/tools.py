"""Paths of the ops artefacts and of Debian's promtool/prometheus (unpacked by `make ops-tools`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = REPO / "deploy" / "prometheus" / "tests"
RUNBOOKS = REPO / "docs" / "RUNBOOKS.md"
GRAFANA = REPO / "deploy" / "grafana"
CHART = REPO / "deploy" / "helm" / "workflow"
OPS_DIR = Path(sys.prefix) / "ops" / "usr" / "bin"

RUNBOOK_ALERTS = (
    "HighErrorRate", "SlowWorkflows", "QueueBacklog", "ComponentTimeout", "HighMemoryUsage", "HighHTTPErrorRate",
    "HighHTTPLatency",
)


def tool(name: str) -> str:
    """The path of `promtool` or `prometheus`: $PROMTOOL/$PROMETHEUS, .venv/ops (make ops-tools), or PATH."""
    configured = os.environ.get(name.upper())
    candidates = [configured] if configured else []
    candidates += [str(OPS_DIR / name), shutil.which(name) or ""]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise AssertionError(f"{name} not found: run `make ops-tools` (unpacks Debian's prometheus package into "
                         f"{OPS_DIR.parent.parent}) or set ${name.upper()}")


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run promtool; the result carries stdout and stderr for assertion messages."""
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          check=False)


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of alerts.yml."""
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def runbook_sections() -> dict[str, str]:
    """`## ` sections of RUNBOOKS.md by anchor, each with its text up to the next `## ` heading."""
    sections: dict[str, str] = {}
    current: str | None = None
    for line in RUNBOOKS.read_text().splitlines():
        if line.startswith("## "):
            current = github_anchor(line[3:])
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
    return sections


def promql_blocks(markdown: str) -> list[str]:
    """Every query in the ```promql blocks of `markdown`: one query per non-empty line."""
    queries: list[str] = []
    inside = False
    for line in markdown.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            inside = stripped == "```promql" if not inside else False
            continue
        if inside and stripped and not stripped.startswith("#"):
            queries.append(stripped)
    return queries


def investigation_query(alert: str) -> str:
    """The first query of an alert's runbook section: the one its drill runs to name the culprit."""
    section = runbook_sections()[alert.lower()]
    return promql_blocks(section)[0]
