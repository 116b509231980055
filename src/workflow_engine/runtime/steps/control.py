"""Control steps: `if` (then/else), `switch`, `foreach` and `parallel` (bounded concurrency)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import Field

from workflow_engine.config.models import Strict
from workflow_engine.errors import StepError
from workflow_engine.registry.specs import NestedSteps, StepSpec
from workflow_engine.runtime.interpreter import run_nodes
from workflow_engine.runtime.step import PATH_KEY, Scope, Step, StepBuilder, StepContext, StepNode
from workflow_engine.runtime.templates import truthy

StepList = Annotated[list[dict[str, Any]], NestedSteps()]
StepBranches = Annotated[dict[str, list[dict[str, Any]]], NestedSteps()]


class IfConfig(Strict):
    then: StepList = Field(description="Steps run when the step's `if` condition is true.")
    else_: StepList = Field(default_factory=list, alias="else", description="Steps run when it is false.")


class IfStep(Step):
    def __init__(self, config: IfConfig, build: StepBuilder) -> None:
        condition = build.defn.common.if_
        if condition is None:
            build.issue("then", "a step with `then` needs an `if` condition")
            condition = False
        self.condition = (build.expression(condition, "if") if isinstance(condition, str)
                          else build.compile(condition, "if"))
        self.then = build.children("then")
        self.otherwise = build.children("else_")

    def nested(self) -> list[list[StepNode]]:
        return [self.then, self.otherwise]

    async def run(self, ctx: StepContext, scope: Scope) -> Any:
        branch = self.then if truthy(self.condition.render(scope)) else self.otherwise
        return await run_nodes(branch, ctx, scope)


class SwitchConfig(Strict):
    value: Any = Field(description="Template whose value selects the case.")
    cases: StepBranches = Field(description="Steps per case value (compared as strings).")
    default: StepList = Field(default_factory=list, description="Steps run when no case matches.")


class SwitchStep(Step):
    def __init__(self, config: SwitchConfig, build: StepBuilder) -> None:
        self.value = build.compile(config.value, "switch.value")
        self.cases = build.children_with_prefix("cases")
        self.default = build.children("default")

    def nested(self) -> list[list[StepNode]]:
        return [*self.cases.values(), self.default]

    async def run(self, ctx: StepContext, scope: Scope) -> Any:
        value = self.value.render(scope)
        key = str(value).lower() if isinstance(value, bool) else str(value)
        return await run_nodes(self.cases.get(key, self.default), ctx, scope)


class ForeachConfig(Strict):
    items: Any = Field(description="Template giving the list to iterate over.")
    as_: str = Field("item", alias="as", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                     description="Name of the current item in scope (`index` holds its position).")
    concurrency: int = Field(1, ge=1, le=1000, description="Iterations run at once.")
    do: StepList = Field(description="Steps run for each item.")
    output: Any = Field(None, description="Template for each iteration's result; default: its last step's output.")
    max_items: int = Field(10_000, ge=1, description="Refuse lists longer than this (memory bound).")


class ForeachStep(Step):
    def __init__(self, config: ForeachConfig, build: StepBuilder) -> None:
        self.items = build.compile(config.items, "foreach.items")
        self.name = config.as_
        self.concurrency = config.concurrency
        self.max_items = config.max_items
        self.body = build.children("do")
        self.output = build.compile(config.output, "foreach.output") if config.output is not None else None
        self.step_id = build.defn.id

    def nested(self) -> list[list[StepNode]]:
        return [self.body]

    async def run(self, ctx: StepContext, scope: Scope) -> Any:
        items = self.items.render(scope)
        if isinstance(items, dict):
            items = list(items.items())
        if not isinstance(items, list | tuple):
            raise StepError(f"foreach items must be a list, got {type(items).__name__}", code="invalid_items")
        if len(items) > self.max_items:
            raise StepError(f"foreach got {len(items)} items, more than max_items={self.max_items}",
                            code="too_many_items")
        if self.concurrency == 1:
            return [await self._iteration(ctx, scope, i, item) for i, item in enumerate(items)]
        return await bounded_gather(
            [lambda i=i, item=item: self._iteration(ctx, scope, i, item) for i, item in enumerate(items)],
            self.concurrency)

    async def _iteration(self, ctx: StepContext, scope: Scope, index: int, item: Any) -> Any:
        prefix = f"{scope.get(PATH_KEY, '')}{self.step_id}[{index}]."
        inner = {**scope, self.name: item, "index": index, "steps": dict(scope["steps"]), PATH_KEY: prefix}
        result = await run_nodes(self.body, ctx, inner)
        return self.output.render(inner) if self.output is not None else result


class ParallelConfig(Strict):
    branches: StepBranches = Field(description="Named step lists run at the same time.")
    concurrency: int = Field(0, ge=0, description="Branches run at once (0 = all).")


class ParallelStep(Step):
    def __init__(self, config: ParallelConfig, build: StepBuilder) -> None:
        self.branches = build.children_with_prefix("branches")
        self.concurrency = config.concurrency or max(len(self.branches), 1)
        self.step_id = build.defn.id

    def nested(self) -> list[list[StepNode]]:
        return list(self.branches.values())

    async def run(self, ctx: StepContext, scope: Scope) -> Any:
        names = list(self.branches)
        base = f"{scope.get(PATH_KEY, '')}{self.step_id}["
        scopes = [{**scope, "steps": dict(scope["steps"]), PATH_KEY: f"{base}{name}]."} for name in names]
        results = await bounded_gather(
            [lambda n=n, s=s: run_nodes(self.branches[n], ctx, s) for n, s in zip(names, scopes, strict=True)],
            self.concurrency)
        for inner in scopes:  # ids are unique per workflow: later steps can read any branch's step outputs
            scope["steps"].update(inner["steps"])
        return dict(zip(names, results, strict=True))


async def bounded_gather(jobs: Sequence[Any], limit: int) -> list[Any]:
    """Run coroutine factories with at most `limit` at once; the first failure cancels the rest and is raised."""
    semaphore = asyncio.Semaphore(limit)
    results: list[Any] = [None] * len(jobs)
    failed = False

    async def one(index: int) -> None:
        nonlocal failed
        async with semaphore:
            # A job waiting for a slot is woken by the failed job's release before the group cancels it:
            # it must not start (its step could already send a request).
            if failed:
                return
            try:
                results[index] = await jobs[index]()
            except BaseException:
                failed = True
                raise

    try:
        async with asyncio.TaskGroup() as group:
            for index in range(len(jobs)):
                group.create_task(one(index))
    except BaseExceptionGroup as group_error:
        raise _first_error(group_error) from None
    return results


def _first_error(group_error: BaseExceptionGroup[Any]) -> BaseException:
    first = group_error.exceptions[0]
    return _first_error(first) if isinstance(first, BaseExceptionGroup) else first



IF = StepSpec("if", IfConfig, IfStep, "Run `then` or `else` steps by the step's `if` condition.",
              key="then", shorthand="then", siblings=("else",))
SWITCH = StepSpec("switch", SwitchConfig, SwitchStep, "Run the steps of the case matching a value.")
FOREACH = StepSpec("foreach", ForeachConfig, ForeachStep,
                   "Run steps for each item of a list, with bounded concurrency; the output is the list of results.")
PARALLEL = StepSpec("parallel", ParallelConfig, ParallelStep,
                    "Run named branches at the same time; the output maps branch names to results.")
