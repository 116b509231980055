"""The step contract: a `Step` runs with the execution's context and scope; a `StepNode` adds common behaviour."""

from __future__ import annotations

import contextvars
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from workflow_engine.config.issues import Issue
from workflow_engine.config.models import RetryConfig, StepDef
from workflow_engine.runtime.templates import TemplateCompiler, TemplateSyntaxIssue, Value

if TYPE_CHECKING:
    import structlog

    from workflow_engine.modules.base import Module
    from workflow_engine.modules.eventbus.memory import EventBus
    from workflow_engine.modules.http.client import HttpClient
    from workflow_engine.observability.metrics import Metrics
    from workflow_engine.runtime.execution import Execution
    from workflow_engine.runtime.runtime import Runtime

Scope = dict[str, Any]

# Deadline (loop time) of the step attempt running in this task, so operations can tell a timeout apart.
step_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("step_deadline", default=None)
# Checkpoint key of the step running in this task (`id`, or `loop[2].id` inside foreach/parallel).
step_key: contextvars.ContextVar[str] = contextvars.ContextVar("step_key", default="")
# Attempt number (1-based) of the step running in this task, under its `retry` policy.
step_attempt: contextvars.ContextVar[int] = contextvars.ContextVar("step_attempt", default=1)
# Scope entry holding the checkpoint key prefix of nested steps; not a template identifier, so templates
# cannot read or shadow it.
PATH_KEY = "$path"


@dataclass
class Services:
    """Engine-wide things steps use, resolved at wiring time."""

    metrics: Metrics
    bus: EventBus
    modules: dict[str, Module]
    runtime: Runtime
    http_default: HttpClient | None = None
    env: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class StepContext:
    """What a running step sees: its execution, the engine services, and a bound logger."""

    execution: Execution
    services: Services
    log: structlog.typing.FilteringBoundLogger
    durable: bool = False
    # Nothing observes single steps of this execution (no checkpoints to resume from, no `step.*` subscribers):
    # the interpreter may run `direct` nodes (a durable one: `direct_durable` nodes) without the per-step
    # machinery.
    direct: bool = False


class Step(ABC):
    """Base class of step implementations."""

    # True for steps that never wait (no I/O, no sleeping): see `SyncStep`.
    sync: ClassVar[bool] = False
    # True for steps whose only effect is their output and the execution's own state (its answer): run again
    # after a crash, they are as if run once. A durable execution writes their checkpoints together with its
    # next write (the next other step's checkpoint, a park, its end) instead of waiting for each.
    replayable: ClassVar[bool] = False

    @abstractmethod
    async def run(self, ctx: StepContext, scope: Scope) -> Any:
        """Do the step's work and return its output (`steps.<id>.output`)."""

    def nested(self) -> list[list[StepNode]]:
        """The step lists this step runs (control steps override it)."""
        return []


class SyncStep(Step):
    """A step that never waits: the interpreter calls `run_sync` directly, without a coroutine per step."""

    sync = True

    @abstractmethod
    def run_sync(self, ctx: StepContext, scope: Scope) -> Any:
        """Do the step's work and return its output."""

    async def run(self, ctx: StepContext, scope: Scope) -> Any:
        return self.run_sync(ctx, scope)


@dataclass(slots=True)
class StepNode:
    """A step with the behaviour every step shares: guard, timeout, retry, continue_on_error."""

    id: str
    kind: str
    step: Step
    guard: Value | None
    timeout: float | None
    retry: RetryConfig | None
    continue_on_error: bool
    path: str
    record: bool = True
    # A synchronous step with no timeout or retry: it can run as a plain call (set from the above).
    direct: bool = field(init=False, default=False)
    # A direct step whose checkpoint a durable execution writes with its next write (replayable; not `respond`,
    # whose checkpoint carries the answer): a durable execution runs it as a plain call too.
    direct_durable: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.direct = self.step.sync and self.timeout is None and self.retry is None
        self.direct_durable = self.direct and self.step.replayable and self.kind != "respond"


class StepBuilder:
    """Handed to step factories: compiles templates (collecting located issues) and builds nested steps."""

    def __init__(
        self,
        defn: StepDef,
        compiler: TemplateCompiler,
        issues: list[Issue],
        build_children: Callable[[tuple[StepDef, ...]], list[StepNode]],
        workflows: Mapping[str, Any],
    ) -> None:
        self.defn = defn
        self.compiler = compiler
        self.issues = issues
        self._build_children = build_children
        self.workflows = workflows

    def compile(self, value: Any, field_name: str) -> Value:
        """Compile a config value; a syntax error becomes an issue located at the step."""
        try:
            return self.compiler.compile(value, field_name)
        except TemplateSyntaxIssue as exc:
            self._issue(exc)
            return self.compiler.compile(None)

    def expression(self, source: str, field_name: str) -> Value:
        """Compile a condition or expression (braces optional)."""
        try:
            return self.compiler.expression(source, field_name)
        except TemplateSyntaxIssue as exc:
            self._issue(exc)
            return self.compiler.compile(None)

    def children(self, key: str) -> list[StepNode]:
        """The built steps of the nested list `key` (`then`, `do`, `cases.x`...); empty when absent."""
        return self._build_children(self.defn.children.get(key, ()))

    def children_with_prefix(self, prefix: str) -> dict[str, list[StepNode]]:
        """Nested lists keyed `prefix.<name>`, by name."""
        start = prefix + "."
        return {
            key[len(start):]: self._build_children(defs)
            for key, defs in self.defn.children.items() if key.startswith(start)
        }

    def issue(self, field_name: str, message: str) -> None:
        """Report a problem with this step's config, located at the step."""
        self.issues.append(Issue(self.defn.location, f"{self.defn.path}.{field_name}", message))

    def _issue(self, exc: TemplateSyntaxIssue) -> None:
        self.issues.append(Issue(self.defn.location, f"{self.defn.path}.{exc.path}", exc.message))
