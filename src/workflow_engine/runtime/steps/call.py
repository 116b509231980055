"""The `call` step: run a dynamic component (`call: pricing`, input in `with`)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from pydantic import Field

from workflow_engine.config.models import Strict
from workflow_engine.modules.dynamic.component import DynamicComponent
from workflow_engine.registry.specs import ModuleRef, StepSpec
from workflow_engine.runtime.step import Scope, Step, StepBuilder, StepContext, step_deadline

# The component's own timeout fires this much before the step's, so the timeout is counted on the component
# (module_operations_total{module="dynamic", status="timeout"}) rather than seen as a bare cancellation.
_DEADLINE_MARGIN = 0.005


class CallConfig(Strict):
    component: Annotated[str, ModuleRef(("dynamic",))] = Field(
        description="The dynamic.component module to run (its active version at the time of the call)."
    )
    with_: Any = Field(default_factory=dict, alias="with",
                       description="The component's input (templates allowed); default: an empty mapping.")


class CallStep(Step):
    def __init__(self, config: CallConfig, build: StepBuilder) -> None:
        self.component = config.component
        self.input = build.compile(config.with_, "with")

    async def run(self, ctx: StepContext, scope: Scope) -> Any:
        module = ctx.services.modules[self.component]
        assert isinstance(module, DynamicComponent), "the config check allows dynamic components only"
        deadline = step_deadline.get()
        remaining = None
        if deadline is not None:
            remaining = max(0.001, deadline - asyncio.get_running_loop().time() - _DEADLINE_MARGIN)
        return await module.call(self.input.render(scope), ctx.execution.id, remaining)


CALL = StepSpec("call", CallConfig, CallStep,
                "Run a dynamic component's `execute(ctx, input)` with `with` as input; the output is its result.",
                shorthand="component", siblings=("with",))
