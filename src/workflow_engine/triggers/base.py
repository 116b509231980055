"""The trigger contract: built with the program (templates compiled), attached to live modules at start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workflow_engine.config.issues import Issue
from workflow_engine.config.models import TriggerDef
from workflow_engine.runtime.templates import TemplateCompiler, TemplateSyntaxIssue, Value

if TYPE_CHECKING:
    from workflow_engine.modules.base import Module
    from workflow_engine.modules.eventbus.memory import EventBus
    from workflow_engine.observability.metrics import Metrics
    from workflow_engine.runtime.runtime import Runtime


class TriggerBuilder:
    """Handed to trigger factories: the workflow's name and located template compilation."""

    def __init__(self, workflow: str, defn: TriggerDef, compiler: TemplateCompiler, issues: list[Issue]) -> None:
        self.workflow = workflow
        self.defn = defn
        self.compiler = compiler
        self.issues = issues

    def compile(self, value: Any, field_name: str) -> Value:
        """Compile a template; a syntax error becomes an issue located at the trigger."""
        try:
            return self.compiler.compile(value, field_name)
        except TemplateSyntaxIssue as exc:
            self.issue(exc.path, exc.message)
            return self.compiler.compile(None)

    def issue(self, field_name: str, message: str) -> None:
        self.issues.append(Issue(self.defn.location, f"{self.defn.path}.{field_name}", message))


@dataclass
class Wiring:
    """Live engine parts a trigger attaches to."""

    runtime: Runtime
    modules: dict[str, Module]
    bus: EventBus
    metrics: Metrics


class Trigger:
    """Base class: `attach` registers routes or subscriptions; `run` is the trigger's own loop, if any."""

    kind = "trigger"
    has_loop = False
    graceful = False  # `run` ends by itself once `stop()` is called (finishing what it holds); others are cancelled

    def __init__(self, workflow: str) -> None:
        self.workflow = workflow

    def attach(self, wiring: Wiring) -> None:
        """Connect to the live modules (before they start, or while a config apply stages its routes)."""

    def detach(self, wiring: Wiring) -> None:
        """Disconnect (a config apply replaced this trigger); routes go with the route table swap."""

    async def run(self, wiring: Wiring) -> None:
        """The trigger's loop (schedules); runs until cancelled. Only called when `has_loop`."""

    def stop(self) -> None:
        """Ask `run` to take nothing new and end once what it holds is done (only called when `graceful`)."""
