"""The config pipeline: YAML with positions → env expansion → envelope → per-type validation → `AppConfig`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path as FsPath
from typing import Any

from workflow_engine.config.envexpand import expand_env
from workflow_engine.config.graph import Edge, find_cycles, topological_order
from workflow_engine.config.issues import Issue, Location, Path, did_you_mean, format_path
from workflow_engine.config.locate import Locator
from workflow_engine.config.models import AppConfig, AppDecl, ModuleDef, StepDef, TriggerDef, WorkflowDef
from workflow_engine.config.references import ReferenceChecker
from workflow_engine.config.steps import StepParser
from workflow_engine.config.yaml_loader import load_yaml
from workflow_engine.errors import ConfigError
from workflow_engine.registry.specs import Registry


def load_config(
    path: str | os.PathLike[str], registry: Registry, env: Mapping[str, str] | None = None
) -> AppConfig:
    """Read and validate a config file; raises `ConfigError` with every issue found."""
    file = os.fspath(path)
    try:
        text = FsPath(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ConfigError([Issue(Location(file, 1, 1), "", f"cannot read the file: {reason}")]) from err
    return load_config_text(text, file, registry, env)


def load_config_text(
    text: str, file: str, registry: Registry, env: Mapping[str, str] | None = None
) -> AppConfig:
    """Validate config text (`file` names it in issues); raises `ConfigError` with every issue found."""
    loaded = load_yaml(text, file)
    locator = Locator(file, loaded.positions)
    issues = list(loaded.issues)
    if loaded.data is None and issues:
        raise ConfigError(_sorted(issues))
    if not isinstance(loaded.data, dict):
        message = "the file must be a mapping with version, name, modules and workflows"
        raise ConfigError(_sorted([*issues, locator.issue((), message)]))
    data, problems = expand_env(loaded.data, os.environ if env is None else env)
    env_issues = [locator.issue(path, message) for path, message in problems]
    checker = _Checker(registry, locator, data)
    app = checker.run(file, text)
    # A value left unexpanded fails its type or reference check too; the env issue alone says why.
    unexpanded = {issue.location for issue in env_issues}
    issues += env_issues + [issue for issue in checker.issues if issue.location not in unexpanded]
    if issues or app is None:
        raise ConfigError(_sorted(issues), partial=checker.parsed)
    return app


def _sorted(issues: list[Issue]) -> list[Issue]:
    return sorted(issues, key=lambda issue: (issue.location.line, issue.location.col))


@dataclass
class _Workflow:
    trigger: TriggerDef | None
    steps: tuple[StepDef, ...]
    on_error: tuple[StepDef, ...]


def _in_step_list(path: Path) -> bool:
    """Envelope errors inside steps are left to the step parser, which knows the step kinds."""
    return len(path) >= 4 and path[0] == "workflows" and path[2] in ("steps", "on_error")


class _Checker:
    """Runs every check over the expanded data of one file, collecting issues."""

    def __init__(self, registry: Registry, locator: Locator, data: dict[str, Any]) -> None:
        self.registry = registry
        self.locator = locator
        self.data = data
        self.issues: list[Issue] = []
        self.parsed: dict[str, tuple[TriggerDef | None, tuple[StepDef, ...], tuple[StepDef, ...]]] = {}
        modules, workflows = data.get("modules"), data.get("workflows")
        # Keep indexes so issues say modules[i] as written; the envelope reports malformed entries.
        listed = modules if isinstance(modules, list) else []
        self.raw_modules = [m if isinstance(m, dict) else {} for m in listed]
        self.raw_workflows = workflows if isinstance(workflows, dict) else {}
        self.module_types = self._declared_modules()
        configs = {m["name"]: m.get("config") for m in self.raw_modules if isinstance(m.get("name"), str)}
        self.refs = ReferenceChecker(registry, locator, self.module_types, set(self.raw_workflows), configs)

    def run(self, file: str, text: str) -> AppConfig | None:
        """The validated app, or None when any check failed."""
        decl, issues = self.locator.validate(AppDecl, self.data, skip=_in_step_list)
        self.issues += issues
        modules, edges = self._modules()
        ordered = self._order(modules, edges)
        workflows = {name: self._workflow(name, raw) for name, raw in self.raw_workflows.items()}
        # (trigger, steps, on_error) of each workflow as far as they parsed: compiled even when there are issues.
        self.parsed = {name: (w.trigger, w.steps, w.on_error) for name, w in workflows.items()}
        self._exclusive(workflows)
        if decl is not None:  # module references in engine settings (`event_bus.broker`)
            self.issues += self.refs.check(decl.engine, lambda rel: ("engine", *rel)).issues
        if self.issues or decl is None:
            return None
        return AppConfig(
            name=decl.name,
            engine=decl.engine,
            modules=ordered,
            workflows={name: self._workflow_def(name, decl, parts) for name, parts in workflows.items()},
            source_file=file,
            source_text=text,
        )

    def _declared_modules(self) -> dict[str, str]:
        """Module name → type string (first declaration wins); duplicate names are issues."""
        declared: dict[str, str] = {}
        first: dict[str, int] = {}
        for i, raw in enumerate(self.raw_modules):
            name, module_type = raw.get("name"), raw.get("type")
            if not isinstance(name, str):
                continue
            if name in first:
                message = f"duplicate module name '{name}' (first declared at modules[{first[name]}])"
                self.issues.append(self.locator.issue(("modules", i, "name"), message))
                continue
            first[name] = i
            declared[name] = module_type if isinstance(module_type, str) else ""
        return declared

    def _modules(self) -> tuple[list[ModuleDef], list[Edge]]:
        """Each module's typed config and its dependency edges (explicit, then inferred)."""
        modules: list[ModuleDef] = []
        edges: list[Edge] = []
        seen: set[str] = set()
        for i, raw in enumerate(self.raw_modules):
            name = raw.get("name")
            if not isinstance(name, str) or name in seen:
                continue
            seen.add(name)
            explicit = self._depends_on(i, name, raw.get("depends_on"))
            module, inferred = self._module(i, name, raw)
            edges += explicit + inferred
            if module is not None:
                depends_on = tuple(dict.fromkeys(edge.target for edge in explicit + inferred))
                modules.append(replace(module, depends_on=depends_on))
        return modules, edges

    def _depends_on(self, index: int, name: str, raw: Any) -> list[Edge]:
        if not isinstance(raw, list):
            return []
        edges = []
        for j, target in enumerate(raw):
            path = ("modules", index, "depends_on", j)
            if not isinstance(target, str):
                continue
            if target in self.module_types:
                edges.append(Edge(name, target, path))
            else:
                hint = did_you_mean(target, self.module_types)
                self.issues.append(self.locator.issue(path, f"unknown module '{target}'{hint}"))
        return edges

    def _module(self, index: int, name: str, raw: dict[str, Any]) -> tuple[ModuleDef | None, list[Edge]]:
        """The module with its typed config (depends_on filled in later), and its inferred edges."""
        module_type, config_data = raw.get("type"), raw.get("config", {})
        if not isinstance(module_type, str):
            return None, []
        spec = self.registry.modules.get(module_type)
        if spec is None:
            message = f"unknown module type '{module_type}'{did_you_mean(module_type, self.registry.modules)}"
            self.issues.append(self.locator.issue(("modules", index, "type"), message))
            return None, []
        if not isinstance(config_data, dict):
            return None, []  # the envelope reported it
        path: Path = ("modules", index)

        def to_yaml(rel: Path) -> Path:
            return (*path, "config", *rel)

        config, issues = self.locator.validate(spec.config_model, config_data, to_yaml)
        self.issues += issues
        if config is None:
            if (part := self.locator.valid_part(spec.config_model, config_data)) is not None:
                self.issues += self.refs.check(part, to_yaml).issues
            return None, []
        refs = self.refs.check(config, to_yaml)
        self.issues += refs.issues
        edges = [Edge(name, target, where) for target, where in refs.modules if target != name]
        location = self.locator.at(path)
        return ModuleDef(name, module_type, spec.kind, config, (), format_path(path), location), edges

    def _order(self, modules: list[ModuleDef], edges: list[Edge]) -> tuple[ModuleDef, ...]:
        """Modules in start order; each dependency cycle is an issue at its first edge."""
        names = list(self.module_types)
        for cycle in find_cycles(names, edges):
            self.issues.append(self.locator.issue(cycle.edge.path, f"dependency cycle: {cycle}"))
        by_name = {module.name: module for module in modules}
        return tuple(by_name[name] for name in topological_order(names, edges) if name in by_name)

    def _workflow(self, name: str, raw: Any) -> _Workflow:
        path: Path = ("workflows", name)
        if not isinstance(raw, dict):
            return _Workflow(None, (), ())
        trigger = self._trigger(raw.get("trigger"), (*path, "trigger"))
        kind = trigger.kind if trigger is not None else ("manual" if raw.get("trigger") is None else None)
        if "on_message_error" in raw and kind is not None and kind != "message":
            message = f"on_message_error applies to workflows with a message trigger; this one has a {kind} trigger"
            self.issues.append(self.locator.issue((*path, "on_message_error"), message, key=True))
        parser = StepParser(self.registry, self.locator, self.refs)
        steps = parser.parse_list(raw.get("steps"), (*path, "steps"))
        on_error = parser.parse_list(raw.get("on_error"), (*path, "on_error"))
        steps, on_error = parser.with_ids(steps), parser.with_ids(on_error)
        self.issues += parser.issues
        return _Workflow(trigger, steps, on_error)

    def _exclusive(self, workflows: dict[str, _Workflow]) -> None:
        """Two triggers may not take one route or one consumer group (`TriggerSpec.claims`): the second is an
        issue naming the first (at run time one would fail to start, or each would get part of the messages)."""
        taken: dict[tuple[Any, ...], str] = {}
        for name, parts in workflows.items():
            trigger = parts.trigger
            claims = self.registry.triggers[trigger.kind].claims if trigger is not None else None
            if trigger is None or claims is None:
                continue
            for key, field, what in claims(trigger.config, name):
                first = taken.setdefault(key, name)
                if first != name:
                    self.issues.append(self.locator.issue(
                        ("workflows", name, "trigger", trigger.kind, field),
                        f"{what} is already taken by workflow '{first}'"))

    def _trigger(self, raw: Any, path: Path) -> TriggerDef | None:
        if not isinstance(raw, dict):
            return None  # absent (manual only) or reported by the envelope
        if not raw:
            known = ", ".join(sorted(self.registry.triggers))
            message = f"a trigger needs one kind; expected one of: {known}"
            self.issues.append(self.locator.issue(path, message))
            return None
        kind, *others = raw
        for other in others:
            message = f"a trigger has one kind, but '{kind}' and '{other}' are both given"
            self.issues.append(self.locator.issue((*path, other), message, key=True))
        spec = self.registry.triggers.get(kind)
        if spec is None:
            message = f"unknown trigger kind '{kind}'{did_you_mean(kind, self.registry.triggers)}"
            self.issues.append(self.locator.issue((*path, kind), message, key=True))
            return None
        value = raw[kind]
        config, issues = self.locator.validate(spec.config_model, {} if value is None else value,
                                               lambda p: (*path, kind, *p))
        self.issues += issues
        if config is None:
            config_data = {} if value is None else value
            if (part := self.locator.valid_part(spec.config_model, config_data)) is not None:
                self.issues += self.refs.check(part, lambda p: (*path, kind, *p)).issues
            return None
        if others:
            return None
        self.issues += self.refs.check(config, lambda p: (*path, kind, *p)).issues
        return TriggerDef(kind, config, format_path(path), self.locator.at((*path, kind), key=True))

    def _workflow_def(self, name: str, decl: AppDecl, parts: _Workflow) -> WorkflowDef:
        wf = decl.workflows[name]
        path: Path = ("workflows", name)
        return WorkflowDef(
            name=name,
            description=wf.description,
            trigger=parts.trigger,
            steps=parts.steps,
            on_error=parts.on_error,
            timeout=wf.timeout,
            concurrency=wf.concurrency,
            queue_size=wf.queue_size,
            durable=wf.durable,
            on_message_error=wf.on_message_error,
            path=format_path(path),
            location=self.locator.at(path, key=True),
        )
