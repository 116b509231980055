"""The Helm chart renders, validates against the Kubernetes schemas, and matches what the runbook relies on."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from tests.ops.chart import by_kind, render
from tests.ops.tools import ALERTS, CHART, REPO, promtool
from workflow_engine.durations import parse_duration

FULL = {
    "replicaCount": 3,
    "store": {"existingSecret": "workflow-db"},
    "broker": {"url": "nats://nats:4222"},
    "envFrom": [{"secretRef": {"name": "workflow-secrets"}}],
    "autoscaling": {"enabled": True},
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True, "runbookBaseUrl": "https://git.example.com/org/workflow/blob/main/"},
}
KUBERNETES_VERSION = "1.30.0"
CRDS = {"ServiceMonitor", "PrometheusRule"}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.mark.parametrize("values", [{}, FULL], ids=["defaults", "full"])
def test_every_rendered_object_validates_against_the_kubernetes_schemas(values: dict[str, Any]) -> None:
    objects = render(values)
    kinds = {obj["kind"] for obj in objects}
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount", "PodDisruptionBudget"} <= kinds
    for obj in objects:
        if obj["kind"] in CRDS:
            continue  # no upstream schema; checked below
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("values", [{}, FULL], ids=["defaults", "full"])
def test_helm_lint_strict_finds_no_warning(values: dict[str, Any]) -> None:
    report = helm_python.lint(str(CHART), values, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_the_validator_rejects_a_broken_deployment() -> None:
    deployment = by_kind(render())["Deployment"]
    _container(deployment)["livenessProbe"]["httpGet"]["pathh"] = "/healthz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    del _container(deployment)["livenessProbe"]["httpGet"]["pathh"]
    _container(deployment)["ports"][0]["containerPort"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_names_and_labels_are_the_ones_the_runbook_commands_use() -> None:
    kinds = by_kind(render(FULL, release="orders-prod"))
    deployment = kinds["Deployment"]
    # `kubectl rollout history deployment/workflow`, `kubectl scale deployment/workflow`, `kubectl logs -l app=workflow`
    assert deployment["metadata"]["name"] == "workflow"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["app"] == "workflow"
    assert pod_labels["app.kubernetes.io/name"] == "workflow"
    assert pod_labels["app.kubernetes.io/instance"] == "orders-prod"
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    for kind in ("Service", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ServiceMonitor"):
        assert kinds[kind]["metadata"]["name"] == "workflow", kind
    assert kinds["Service"]["spec"]["selector"].items() <= pod_labels.items()
    assert kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == "workflow"
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    other = by_kind(render({"fullnameOverride": "billing"}))
    assert other["Deployment"]["metadata"]["name"] == "billing"
    assert other["Deployment"]["spec"]["template"]["metadata"]["labels"]["app"] == "billing"


def _mgmt_port(container: dict[str, Any]) -> int:
    args = container["args"]
    assert args[:2] == ["run", "/etc/workflow/workflow.yaml"]
    address = args[args.index("--mgmt-addr") + 1]
    assert address.startswith("0.0.0.0:"), "the management server must listen beyond the pod's loopback"
    return int(address.rsplit(":", 1)[1])


def test_probes_hit_the_management_server() -> None:
    container = _container(by_kind(render())["Deployment"])
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["management"] == _mgmt_port(container)
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "management"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "management"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "management"}
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 60


def test_a_terminating_pod_serves_a_moment_and_has_time_to_drain() -> None:
    """Endpoints update seconds after a pod starts terminating: without the pause, requests still routed to it
    got 503 `draining`, then connection refused. The grace period must cover the engine's whole shutdown."""
    kinds = by_kind(render())
    pod, container = kinds["Deployment"]["spec"]["template"]["spec"], _container(kinds["Deployment"])
    sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    config = yaml.safe_load(kinds["ConfigMap"]["data"]["workflow.yaml"])
    grace = parse_duration(config["engine"].get("shutdown_grace", "30s"))
    assert pod["terminationGracePeriodSeconds"] >= sleep + grace + 20
    assert "lifecycle" not in _container(by_kind(render({"preStopSleepSeconds": 0}))["Deployment"])


def test_service_monitor_scrapes_the_port_that_serves_metrics() -> None:
    kinds = by_kind(render(FULL))
    container = _container(kinds["Deployment"])
    endpoint = kinds["ServiceMonitor"]["spec"]["endpoints"]
    assert len(endpoint) == 1
    assert endpoint[0]["path"] == "/metrics"
    # ServiceMonitor port (a Service port name) -> its targetPort (a container port name) -> the number the
    # engine's management server (which serves /metrics) listens on.
    service_port = next(p for p in kinds["Service"]["spec"]["ports"] if p["name"] == endpoint[0]["port"])
    container_port = next(p for p in container["ports"] if p["name"] == service_port["targetPort"])
    assert container_port["containerPort"] == _mgmt_port(container)
    assert kinds["ServiceMonitor"]["spec"]["selector"]["matchLabels"].items() <= kinds["Service"]["metadata"][
        "labels"].items()
    assert kinds["ServiceMonitor"]["spec"]["namespaceSelector"] == {"matchNames": ["ops"]}
    # The engine port is served too, by a separate Service port.
    assert {p["name"] for p in kinds["Service"]["spec"]["ports"]} == {"http", "management"}


def test_prometheus_rule_carries_alerts_yml(tmp_path: Path) -> None:
    rule = by_kind(render(FULL))["PrometheusRule"]
    spec_file = tmp_path / "rule.yml"
    spec_file.write_text(yaml.safe_dump(rule["spec"]))
    result = promtool("check", "rules", str(spec_file))
    assert result.returncode == 0, result.stdout + result.stderr
    expected = yaml.safe_load(ALERTS.read_text())
    for group in expected["groups"]:
        for alert in group["rules"]:
            anchor = alert["annotations"]["runbook_url"].split("#")[1]
            alert["annotations"]["runbook_url"] = f"https://git.example.com/org/workflow/blob/main/docs/RUNBOOKS.md#{anchor}"
    assert rule["spec"] == expected


def test_config_map_holds_a_valid_config_and_its_checksum_rolls_the_pods(tmp_path: Path) -> None:
    kinds = by_kind(render())
    config = tmp_path / "workflow.yaml"
    config.write_text(kinds["ConfigMap"]["data"]["workflow.yaml"])
    validate = subprocess.run([str(Path(sys.executable).parent / "workflow"), "validate", str(config)],
                              capture_output=True, text=True, timeout=60, check=False)
    assert validate.returncode == 0, validate.stdout + validate.stderr
    pod = kinds["Deployment"]["spec"]["template"]
    mounts = {m["name"]: m["mountPath"] for m in _container(kinds["Deployment"])["volumeMounts"]}
    assert mounts["config"] == "/etc/workflow"
    assert {"name": "config", "configMap": {"name": "workflow"}} in pod["spec"]["volumes"]
    checksum = pod["metadata"]["annotations"]["checksum/config"]
    changed = by_kind(render({"config": config.read_text().replace("hello", "greet")}))
    assert changed["Deployment"]["spec"]["template"]["metadata"]["annotations"]["checksum/config"] != checksum
    assert by_kind(render())["Deployment"]["spec"]["template"]["metadata"]["annotations"]["checksum/config"] == checksum


def test_secrets_come_from_env_from_and_the_store_is_shared() -> None:
    container = _container(by_kind(render(FULL))["Deployment"])
    assert container["envFrom"] == [{"secretRef": {"name": "workflow-secrets"}}]
    env = {e["name"]: e for e in container["env"]}
    assert env["WORKFLOW_STORE"]["valueFrom"]["secretKeyRef"] == {"name": "workflow-db", "key": "WORKFLOW_STORE"}
    # Passed to `run` itself: a config whose engine.store does not read ${WORKFLOW_STORE} still uses it.
    args = container["args"]
    assert args[args.index("--store") + 1] == "$(WORKFLOW_STORE)"
    assert "--store" not in _container(by_kind(render())["Deployment"])["args"]  # no store set: the config's
    assert env["BROKER_URL"]["value"] == "nats://nats:4222"
    with pytest.raises(helm_python.HelmError, match="needs a shared store"):
        render({"replicaCount": 2})


def test_pods_run_non_root_read_only_with_limits() -> None:
    deployment = by_kind(render())["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["limits"]["memory"]
    assert container["resources"]["limits"]["cpu"]
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert {"/tmp", "/var/lib/workflow"} <= writable


def test_dockerfile_is_slim_non_root_with_a_healthcheck_on_the_chart_port() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:\$\{PYTHON_VERSION\}-slim$", text, re.M)
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user
    assert not user[-1].startswith(("0", "root"))
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD .*127\.0\.0\.1:8081/healthz", text, re.M)
    cmd = re.search(r'^CMD \["run", "/etc/workflow/workflow.yaml", "--mgmt-addr", "0\.0\.0\.0:(\d+)"\]$', text, re.M)
    assert cmd is not None
    container = _container(by_kind(render())["Deployment"])
    assert int(cmd.group(1)) == _mgmt_port(container)
    ignore = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert ignore[0] == "*"
    assert "!src/" in ignore
