"""The config envelope (validated first) and the resolved, frozen definitions the engine runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from workflow_engine.api.config import ApiConfig
from workflow_engine.config.issues import Location
from workflow_engine.durations import ByteSize, Duration
from workflow_engine.registry.specs import ModuleRef, TopicRef

NAME_PATTERN = r"^[a-z][a-z0-9_-]*$"
STEP_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ManagementConfig(Strict):
    address: str = Field("127.0.0.1:8081", description="HOST:PORT of the management server (health, metrics, API).")
    enabled: bool = Field(True, description="Serve the management server.")
    body_timeout: Duration = Field(30.0, gt=0, description="How long an API client may take to send a request "
                                   "body (then 408 `body_timeout`).")


class RetentionConfig(Strict):
    max_age: Duration = Field(7 * 86400.0, gt=0, description="Finished executions older than this are deleted.")
    interval: Duration = Field(60.0, gt=0, description="How often pruning runs.")
    batch: int = Field(500, ge=1, le=100_000, description="Executions deleted per statement (small batches).")


class EventBusConfig(Strict):
    """The event bus backed by a broker module, so events and `event` triggers cross replicas."""

    broker: Annotated[str, ModuleRef(("broker",))] = Field(
        description="The broker module (a `broker.*` module of this file) that carries the events between replicas."
    )
    topic: Annotated[str, TopicRef()] = Field("workflow-events", pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
                       description="Broker topic that holds every event crossing replicas (no wildcards).")
    max_in_flight: int = Field(64, ge=1, le=100_000, description="Events each consumer (an `event`-triggered "
                               "workflow, the `wait_for` waiters) takes from the broker and has not settled yet.")


class EngineConfig(Strict):
    store: str = Field("sqlite:///./workflow.db", description="Execution store URL (sqlite:///... or postgresql://...).")
    management: ManagementConfig = Field(default_factory=ManagementConfig,
                                         description="Management server.")
    shutdown_grace: Duration = Field(30.0, description="How long SIGTERM waits for running executions to finish.")
    memory_limit: ByteSize | None = Field(
        None, description="Memory limit reported as process_memory_limit_bytes when below the cgroup's limit."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Lowest level logged.")
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="json lines, human console output, or auto (console on a terminal, json otherwise)."
    )
    template_env: list[str] = Field(
        default_factory=list, description="Environment variables visible to templates as `env.NAME`."
    )
    loop_lag_interval: Duration = Field(0.25, description="How often the event loop lag is sampled.")
    auto_migrate: bool = Field(
        True, description="Apply store migrations at start; false: refuse an out-of-date schema (`workflow db "
        "upgrade` applies them).",
    )
    lease: Duration = Field(
        15.0, gt=0, description="How long an execution stays owned by a replica that stopped heartbeating."
    )
    poll_interval: Duration = Field(
        0.5, gt=0, description="How often to look for executions to recover or wake (parked timers)."
    )
    park_after: Duration = Field(
        30.0, ge=0, description="In durable workflows, sleeps at least this long park the execution in the store "
        "(no task, no memory); shorter ones wait in memory, their wake-up time still checkpointed.",
    )
    replica_id: str | None = Field(
        None, description="Stable id of this replica (e.g. a StatefulSet pod name): on start it takes back "
        "the executions it owned at once instead of waiting for their leases to expire. Must be unique.",
    )
    retention: RetentionConfig = Field(default_factory=RetentionConfig, description="Pruning of finished executions.")
    api: ApiConfig = Field(default_factory=ApiConfig, description="Management API access (bearer tokens).")
    event_bus: EventBusConfig | None = Field(
        None, description="Back the event bus with a broker module: events some `event` trigger or `wait_for` "
        "wants cross replicas (none: in-process only).",
    )


class ModuleDecl(Strict):
    name: str = Field(pattern=NAME_PATTERN, description="Unique module name.")
    type: str = Field(description="A registered module type, e.g. http.server.")
    depends_on: list[str] = Field(default_factory=list, description="Modules that must be ready first.")
    config: dict[str, Any] = Field(default_factory=dict, description="Type-specific configuration.")


class MessageErrorPolicy(Strict):
    """What a `message` trigger does when the execution for a message fails."""

    max_deliveries: int = Field(5, ge=1, le=1000, description="Deliveries of a message at most (the first "
                                "included); after the last one fails it is dead-lettered with its error.")
    backoff: Literal["fixed", "exponential"] = Field("exponential", description="Delay growth between deliveries.")
    initial: Duration = Field(1.0, ge=0, description="Delay before the second delivery.")
    max: Duration = Field(60.0, ge=0, description="Largest delay between deliveries.")

    def delay(self, deliveries: int) -> float:
        """Seconds before the next delivery after `deliveries` failed ones."""
        if self.backoff == "fixed":
            return min(self.initial, self.max)
        return float(min(self.initial * 2 ** max(0, deliveries - 1), self.max))


class WorkflowDecl(Strict):
    description: str = Field("", description="What the workflow does.")
    trigger: dict[str, Any] | None = Field(
        None, description="One trigger kind (http, schedule, event, ...); every workflow can also be started manually."
    )
    steps: list[dict[str, Any]] = Field(min_length=1, description="Steps run in order.")
    on_error: list[dict[str, Any]] = Field(
        default_factory=list, description="Steps run when the workflow fails; `error` is in scope."
    )
    timeout: Duration | None = Field(None, description="Deadline for the whole execution.")
    concurrency: int = Field(100, ge=1, description="Max executions of this workflow running at once per replica.")
    queue_size: int = Field(
        1000, ge=0, description="Executions waiting for a slot before new ones are refused (HTTP 503)."
    )
    durable: bool = Field(
        True, description="Checkpoint every step (resume after a crash); false keeps only a summary row (status, "
        "times, output, error).",
    )
    on_message_error: MessageErrorPolicy | None = Field(
        None, description="With a `message` trigger: redeliver a message whose execution failed, with backoff, "
        "up to `max_deliveries`, then dead-letter it with the error (default: 5 deliveries, 1s doubling to 60s).",
    )


class AppDecl(Strict):
    version: Literal[1] = Field(description="Config format version.")
    name: str = Field(pattern=NAME_PATTERN, description="Application name.")
    engine: EngineConfig = Field(default_factory=EngineConfig,
                                 description="Engine settings.")
    modules: list[ModuleDecl] = Field(default_factory=list, description="Long-lived modules.")
    workflows: dict[Annotated[str, Field(pattern=NAME_PATTERN)], WorkflowDecl] = Field(
        default_factory=dict, description="Workflows by type name."
    )


class RetryConfig(Strict):
    attempts: int = Field(3, ge=1, le=100, description="Total attempts, the first included.")
    backoff: Literal["fixed", "exponential"] = Field("exponential", description="Delay growth between attempts.")
    initial: Duration = Field(0.1, description="Delay before the second attempt.")
    max: Duration = Field(10.0, description="Largest delay between attempts.")
    jitter: float = Field(0.2, ge=0, le=1, description="Random fraction added to or removed from each delay.")


class StepCommon(Strict):
    """Fields every step takes."""

    id: str | None = Field(None, pattern=STEP_ID_PATTERN, description="Step id; its output is `steps.<id>.output`.")
    if_: str | bool | None = Field(None, alias="if", description="Run the step only when this template is true.")
    timeout: Duration | None = Field(None, description="Deadline for one attempt of the step.")
    retry: RetryConfig | None = Field(None, description="Retry the step on failure.")
    continue_on_error: bool = Field(
        False, description="On failure, record the error as `steps.<id>.error` (status `error`) and go on."
    )
    description: str = Field("", description="What the step does.")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


@dataclass(frozen=True)
class StepDef:
    """A validated step: its type, typed config, common fields and nested step lists."""

    id: str
    kind: str
    config: BaseModel
    common: StepCommon
    children: dict[str, tuple[StepDef, ...]]
    path: str
    location: Location


@dataclass(frozen=True)
class TriggerDef:
    kind: str
    config: BaseModel
    path: str
    location: Location


@dataclass(frozen=True)
class ModuleDef:
    name: str
    type: str
    kind: str
    config: BaseModel
    depends_on: tuple[str, ...]
    path: str
    location: Location


@dataclass(frozen=True)
class WorkflowDef:
    name: str
    description: str
    trigger: TriggerDef | None
    steps: tuple[StepDef, ...]
    on_error: tuple[StepDef, ...]
    timeout: float | None
    concurrency: int
    queue_size: int
    durable: bool
    path: str
    location: Location
    on_message_error: MessageErrorPolicy | None = None


@dataclass(frozen=True)
class AppConfig:
    """A fully validated application: modules in start order, workflows by name."""

    name: str
    engine: EngineConfig
    modules: tuple[ModuleDef, ...]
    workflows: dict[str, WorkflowDef]
    source_file: str
    source_text: str = field(repr=False, default="")
