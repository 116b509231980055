"""Compile a validated `AppConfig` into runnable workflows: step nodes with templates compiled once."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from workflow_engine.config.issues import Issue
from workflow_engine.config.models import AppConfig, StepDef, TriggerDef, WorkflowDef
from workflow_engine.errors import ConfigError
from workflow_engine.registry.specs import Registry
from workflow_engine.runtime.step import StepBuilder, StepNode
from workflow_engine.runtime.templates import TemplateCompiler
from workflow_engine.triggers.base import Trigger, TriggerBuilder


@dataclass(frozen=True)
class CompiledWorkflow:
    name: str
    defn: WorkflowDef
    steps: tuple[StepNode, ...]
    on_error: tuple[StepNode, ...]
    trigger: Trigger | None
    # `durable: false` and nothing runs after a `respond` step could have answered: a caller waiting for the
    # answer may run it in its own task (`Runtime.admit(inline=True)`).
    inline_ok: bool = False

    @property
    def timeout(self) -> float | None:
        return self.defn.timeout


def load_program(load: Callable[[], AppConfig], registry: Registry) -> tuple[AppConfig, dict[str, CompiledWorkflow]]:
    """`load()` the config and compile it, with the issues of both in one ConfigError: when the config has
    issues, the workflows as far as they parsed are compiled too, so template, JMESPath and JSON Schema issues
    are reported with the others instead of in a second round."""
    try:
        app = load()
    except ConfigError as err:
        if not err.partial:
            raise
        known = {(i.location, i.path) for i in err.issues}
        extra = [i for i in _partial_issues(err.partial, registry) if (i.location, i.path) not in known]
        if not extra:
            raise
        raise ConfigError(sorted([*err.issues, *extra], key=lambda i: (i.location.line, i.location.col)),
                          partial=err.partial) from err
    return app, compile_program(app, registry)


def _partial_issues(parsed: Mapping[str, tuple[TriggerDef | None, tuple[StepDef, ...], tuple[StepDef, ...]]],
                    registry: Registry) -> list[Issue]:
    """The compile issues of steps and triggers that parsed in a config with other issues. A factory that
    fails on such a config (it may rely on references that do not resolve) is skipped: its own issue is
    already reported."""
    compiler = TemplateCompiler()
    issues: list[Issue] = []

    def build(defs: tuple[StepDef, ...]) -> list[StepNode]:
        nodes = []
        for defn in defs:
            builder = StepBuilder(defn, compiler, issues, build, {})
            try:
                step = registry.steps[defn.kind].factory(defn.config, builder)
                if isinstance(defn.common.if_, str):
                    builder.expression(defn.common.if_, "if")
            except Exception:  # a step that cannot be built before the other issues are fixed
                continue
            nodes.append(StepNode(id=defn.id, kind=defn.kind, step=step, guard=None, timeout=None, retry=None,
                                  continue_on_error=False, path=defn.path))
        return nodes

    for name, (trigger, steps, on_error) in parsed.items():
        if trigger is not None:
            with contextlib.suppress(Exception):
                registry.triggers[trigger.kind].factory(trigger.config, TriggerBuilder(name, trigger, compiler, issues))
        build(steps)
        build(on_error)
    return issues


def compile_program(
    app: AppConfig, registry: Registry, compiler: TemplateCompiler | None = None
) -> dict[str, CompiledWorkflow]:
    """Every workflow of `app` compiled; template errors raise one ConfigError with all of them."""
    compiler = compiler or TemplateCompiler()
    issues: list[Issue] = []
    program: dict[str, CompiledWorkflow] = {}

    def build(defs: tuple[StepDef, ...]) -> list[StepNode]:
        return [build_node(defn) for defn in defs]

    def build_node(defn: StepDef) -> StepNode:
        spec = registry.steps[defn.kind]
        builder = StepBuilder(defn, compiler, issues, build, app.workflows)
        step = spec.factory(defn.config, builder)
        common = defn.common
        guard = None
        if common.if_ is not None:
            guard = (builder.expression(common.if_, "if") if isinstance(common.if_, str)
                     else compiler.compile(common.if_))
        return StepNode(
            id=defn.id, kind=defn.kind, step=step, guard=guard, timeout=common.timeout, retry=common.retry,
            continue_on_error=common.continue_on_error, path=defn.path,
        )

    for name, wf in app.workflows.items():
        trigger = None
        if wf.trigger is not None:
            tspec = registry.triggers[wf.trigger.kind]
            trigger = tspec.factory(wf.trigger.config, TriggerBuilder(name, wf.trigger, compiler, issues))
        steps, on_error = tuple(build(wf.steps)), tuple(build(wf.on_error))
        inline_ok = not wf.durable and answers_at_end(steps) and answers_at_end(on_error)
        program[name] = CompiledWorkflow(name, wf, steps, on_error, trigger, inline_ok)
    if issues:
        raise ConfigError(sorted(issues, key=lambda i: (i.location.line, i.location.col)))
    return program


def answers_at_end(nodes: tuple[StepNode, ...] | list[StepNode]) -> bool:
    """True when no step of `nodes` runs after a `respond` step: the answer is known when they end."""
    for index, node in enumerate(nodes):
        if not _responds(node):
            continue
        if index != len(nodes) - 1:
            return False
        if node.kind == "respond":
            continue
        # Only branching steps pass the question down; a loop's first answer has more iterations after it.
        if node.kind not in ("if", "switch") or not all(answers_at_end(branch) for branch in node.step.nested()):
            return False
    return True


def _responds(node: StepNode) -> bool:
    return node.kind == "respond" or any(_responds(child) for nested in node.step.nested() for child in nested)


def step_ids(nodes: tuple[StepNode, ...] | list[StepNode]) -> set[str]:
    """Every step id of a workflow, nested steps included."""
    ids: set[str] = set()
    for node in nodes:
        ids.add(node.id)
        for nested in node.step.nested():
            ids |= step_ids(nested)
    return ids


def unknown_checkpoints(workflow: CompiledWorkflow, checkpoints: dict[str, Any]) -> str | None:
    """Why an execution's checkpoints cannot resume under this workflow (a step was removed), else None."""
    known = step_ids(workflow.steps) | step_ids(workflow.on_error)
    missing = sorted({_last_id(key) for key in checkpoints} - known)
    if missing:
        return (f"workflow '{workflow.name}' no longer has step(s) {', '.join(missing)} that this execution "
                "already ran; it cannot resume under the running config")
    return None


def _last_id(key: str) -> str:
    return key.rsplit(".", 1)[-1].split("[", 1)[0]
