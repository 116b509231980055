"""Every metric family of the contract (DESIGN.md §2.4), on one registry object passed in."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Gauge,
    Histogram,
    gc_collector,
    platform_collector,
    process_collector,
)

from workflow_engine.observability.loop_metrics import LoopCounter, LoopGauge, LoopHistogram

WORKFLOW_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0, 30.0)
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}


class Metrics:
    """The engine's metric families. One instance per engine; `registry` is what `/metrics` serves.

    The labelled families are loop metrics (`loop_metrics.py`): written on the event loop's thread only.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        reg = self.registry
        if process:
            process_collector.ProcessCollector(registry=reg)
            platform_collector.PlatformCollector(registry=reg)
            gc_collector.GCCollector(registry=reg)
        self.workflow_executions = LoopCounter(
            "workflow_executions_total", "Finished workflow executions.", ["workflow_type", "status"], registry=reg
        )
        self.workflow_duration = LoopHistogram(
            "workflow_duration_seconds", "Workflow execution time, start to finish.", ["workflow_type"],
            buckets=WORKFLOW_BUCKETS, registry=reg,
        )
        self.active_workflows = LoopGauge(
            "active_workflows", "Executions running now on this replica.", ["workflow_type"], registry=reg
        )
        self.queue_depth = LoopGauge(
            "workflow_queue_depth", "Executions accepted and waiting for a concurrency slot.", ["workflow_type"],
            registry=reg,
        )
        self.trigger_events = LoopCounter(
            "trigger_events_total", "Events received by triggers.", ["workflow_type", "trigger"], registry=reg
        )
        self.module_operations = LoopCounter(
            "module_operations_total", "Operations of modules.", ["module", "name", "operation", "status"],
            registry=reg,
        )
        self.module_operation_duration = LoopHistogram(
            "module_operation_duration_seconds", "Duration of module operations.", ["module", "name", "operation"],
            buckets=WORKFLOW_BUCKETS, registry=reg,
        )
        self.http_requests = LoopCounter(
            "http_requests_total", "HTTP requests served.", ["server", "method", "path", "status_code"], registry=reg
        )
        self.http_request_duration = LoopHistogram(
            "http_request_duration_seconds", "HTTP request duration.", ["server", "method", "path"],
            buckets=HTTP_BUCKETS, registry=reg,
        )
        self.circuit_breaker_state = LoopGauge(
            "circuit_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.", ["module", "name"],
            registry=reg,
        )
        self.broker_messages = LoopCounter(
            "broker_messages_total", "Broker messages published (direction out) and consumed (direction in).",
            ["broker", "topic", "direction", "status"], registry=reg,
        )
        self.broker_backlog = LoopGauge(
            "broker_backlog", "Messages a consumer group has not acknowledged yet, where the broker can tell.",
            ["broker", "topic"], registry=reg,
        )
        self.dynamic_component_versions = LoopGauge(
            "dynamic_component_versions", "Versions of a dynamic component held in memory: the active one plus "
            "replaced ones still finishing calls (stays above 1 if old versions leak).", ["name"], registry=reg,
        )
        self.asyncio_tasks = Gauge("asyncio_tasks", "Live asyncio tasks.", registry=reg)
        self.event_loop_lag = Histogram(
            "event_loop_lag_seconds", "Scheduling delay of the event loop.", buckets=LAG_BUCKETS, registry=reg
        )
        self.memory_limit = Gauge(
            "process_memory_limit_bytes", "Memory limit of this process (cgroup or engine.memory_limit).",
            registry=reg,
        )
        self.engine_ready = Gauge(
            "engine_ready", "1 while /readyz answers 200 (every module ready, not draining), else 0.", registry=reg
        )

    def module_operation(self, module: str, name: str, operation: str, status: str, seconds: float) -> None:
        """Count one module operation and observe its duration."""
        self.module_operations.labels(module, name, operation, status).inc()
        self.module_operation_duration.labels(module, name, operation).observe(seconds)


class WorkflowMeters:
    """The metric children of one workflow type, resolved once (label lookups are not free on a hot path)."""

    def __init__(self, metrics: Metrics, workflow: str) -> None:
        self.active = metrics.active_workflows.labels(workflow)
        self.queued = metrics.queue_depth.labels(workflow)
        self.duration = metrics.workflow_duration.labels(workflow)
        self.finished = {s: metrics.workflow_executions.labels(workflow, s) for s in ("success", "error", "cancelled")}
        self.active.set(0)
        self.queued.set(0)
