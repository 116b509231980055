"""Wakes executions parked in `wait_for` when a matching event is published on the bus."""

from __future__ import annotations

import time
from typing import Any

import structlog

from workflow_engine.modules.eventbus.broker import BrokerEventBus
from workflow_engine.modules.eventbus.memory import Event, EventBus, Subscription
from workflow_engine.runtime.program import CompiledWorkflow
from workflow_engine.runtime.runtime import Runtime
from workflow_engine.runtime.step import StepNode
from workflow_engine.runtime.steps.wait import WaitForStep, event_dict
from workflow_engine.store.records import ExecutionRecord, Status, StepRecord

log = structlog.get_logger("workflow_engine.waiters")

# The consumer group of the waiters on a broker-backed bus (not a valid workflow name: no clash with those).
GROUP = "_wait_for"


def wait_steps(nodes: tuple[StepNode, ...] | list[StepNode]) -> dict[str, WaitForStep]:
    """The `wait_for` steps of a workflow by id, nested ones included."""
    found: dict[str, WaitForStep] = {}
    for node in nodes:
        if isinstance(node.step, WaitForStep):
            found[node.id] = node.step
        for nested in node.step.nested():
            found.update(wait_steps(nested))
    return found


class Waiters:
    """Subscribes to the topics `wait_for` steps wait on; resumes the executions whose condition matches."""

    def __init__(self, runtime: Runtime, program: dict[str, CompiledWorkflow]) -> None:
        self.runtime = runtime
        self.steps = {name: wait_steps(wf.steps) for name, wf in program.items()}
        self.topics = {step.topic for steps in self.steps.values() for step in steps.values()}
        self.subscriptions: list[Subscription] = []

    def attach(self, bus: EventBus) -> None:
        """Subscribe on the local bus (a broker-backed bus is consumed by `run` instead)."""
        if bus.backed:
            return
        self.subscriptions = [bus.subscribe(topic, self.deliver, name=f"waiters:{topic}")
                              for topic in sorted(self.topics)]

    async def run(self, bus: BrokerEventBus) -> None:
        """Broker-backed bus: consume the events `wait_for` steps wait on, with one group shared by every
        replica (the store is shared: any replica can wake a parked execution)."""
        await bus.consume(GROUP, self.topics.__contains__, self.deliver)

    def detach(self, bus: EventBus) -> None:
        for subscription in self.subscriptions:
            bus.unsubscribe(subscription)
        self.subscriptions = []

    async def deliver(self, event: Event) -> None:
        """Hand `event` to every execution parked waiting for it whose condition matches."""
        for record in await self.runtime.recorder.store.waiting_on(event.topic):
            try:
                await self._offer(record, event)
            except Exception as exc:  # one execution's bad condition must not keep the event from the others
                log.error("wait_for delivery failed", execution_id=record.id, workflow_type=record.workflow,
                          error=exc)

    async def _offer(self, record: ExecutionRecord, event: Event) -> None:
        key = (record.wait_state or {}).get("step_key", "")
        step = self.steps.get(record.workflow, {}).get(key.rsplit(".", 1)[-1].split("[", 1)[0])
        if step is None:
            return
        store = self.runtime.recorder.store
        data = event_dict(event)
        if not step.matches(await self._scope(record), data):
            return
        recorder = self.runtime.recorder
        if not await store.claim_one(record.id, recorder.owner, time.time() + recorder.lease, expect=Status.PARKED):
            return  # another replica (or a timeout) took it first
        now = time.time()
        await store.save_step(StepRecord(record.id, key, "success", record.attempt, data, None, now, now))
        claimed = await store.get_execution(record.id)
        if claimed is not None:
            await self.runtime.resume(claimed)

    async def _scope(self, record: ExecutionRecord) -> dict[str, Any]:
        steps = await self.runtime.recorder.store.load_steps(record.id)
        outputs = {s.step_key: {"output": s.output, "status": s.status} for s in steps if "." not in s.step_key}
        return {"input": record.input, "steps": outputs,
                "execution": {"id": record.id, "workflow": record.workflow, "attempt": record.attempt}}
