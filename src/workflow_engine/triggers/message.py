"""The `message` trigger: one execution per broker message, acked once the execution's outcome is recorded.

Per message (see the contract in modules/broker/base.py and docs/BROKERS.md):
1. admit with idempotency key `<broker module>:<message id>`, waiting for room (back-pressure: while the
   workflow's slots and queue are full no more admissions happen, so no more than `max_in_flight` messages are
   unsettled and the broker stops delivering). The execution runs in the handler's own task
   (`admit(inline=True)`). A first delivery's execution is written with its first write (a durable one's
   first checkpoint, or its end; a `durable: false` one's end); a redelivery's before it runs.
2. A redelivered message finds the execution its first delivery started: finished with success -> ack only;
   failed -> run it again from its failed step (`Runtime.retry`); still running (here or on a replica that
   died; its lease lets one resume it) -> wait for it.
3. Wait for the outcome, telling the broker the message is still being worked on (`touch`), then: success ->
   ack; failure -> nack with the workflow's `on_message_error` backoff, or dead-letter with the error once the
   message has had `max_deliveries` deliveries.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import structlog
from pydantic import Field

from workflow_engine.config.models import MessageErrorPolicy, Strict
from workflow_engine.errors import AdmissionError, WorkflowEngineError
from workflow_engine.modules.broker.base import Broker, reraise_if_cancelled
from workflow_engine.modules.broker.message import Message
from workflow_engine.registry.specs import ModuleRef, TopicRef, TriggerSpec
from workflow_engine.runtime.execution import Execution, ExecutionStatus
from workflow_engine.runtime.recorder import KeyTakenError
from workflow_engine.triggers.base import Trigger, TriggerBuilder, Wiring

log = structlog.get_logger("workflow_engine.message")

DEFAULT_POLICY = MessageErrorPolicy()


class MessageTriggerConfig(Strict):
    broker: Annotated[str, ModuleRef(("broker",))] = Field(description="The broker module to consume from.")
    topic: Annotated[str, TopicRef(pattern=True)] = Field(
        description="Topic to consume, in the broker's syntax (wildcards: NATS and memory `*` and `>`, RabbitMQ "
        "`*` and `#`, MQTT `+` and `#`; Redis none).")
    group: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="Consumer group: replicas in the "
                              "same group share the messages (default: the workflow's name).")
    max_in_flight: int = Field(64, ge=1, le=100_000, description="Messages taken and not yet settled at most; "
                               "the broker delivers no more until one is.")


class MessageTrigger(Trigger):
    kind = "message"
    has_loop = True
    graceful = True

    def __init__(self, workflow: str, config: MessageTriggerConfig) -> None:
        super().__init__(workflow)
        self.config = config
        self.group = config.group or workflow
        self._stop: asyncio.Event | None = None

    def stop(self) -> None:
        """Fetch no more messages; `run` ends once the ones taken are settled (shutdown, config apply)."""
        if self._stop is not None:
            self._stop.set()

    def attach(self, wiring: Wiring) -> None:
        """Check the topic against the broker module (its wildcard syntax) before anything starts."""
        broker = wiring.modules.get(self.config.broker)
        if isinstance(broker, Broker):
            problem = broker.check_topic(self.config.topic, pattern=True, config=broker.config)
            if problem:
                raise WorkflowEngineError(f"workflow '{self.workflow}': message trigger: {problem}",
                                          code="invalid_config")

    async def run(self, wiring: Wiring) -> None:
        broker = wiring.modules[self.config.broker]
        assert isinstance(broker, Broker)
        handler = _Handler(self.workflow, broker, wiring)
        log.info("consuming", workflow_type=self.workflow, broker=broker.name, topic=self.config.topic,
                 group=self.group)
        self._stop = asyncio.Event()
        name = f"message:{self.workflow}"  # not per message: formatting a name for every task is not free
        async with asyncio.TaskGroup() as handlers:
            async for message in broker.consume(self.config.topic, self.group, self.config.max_in_flight,
                                                stop=self._stop):
                handlers.create_task(handler.handle(message), name=name)


class _Handler:
    """Runs one message to its settlement."""

    def __init__(self, workflow: str, broker: Broker, wiring: Wiring) -> None:
        self.workflow = workflow
        self.broker = broker
        self.runtime = wiring.runtime

    @property
    def policy(self) -> MessageErrorPolicy:
        workflow = self.runtime.workflows.get(self.workflow)
        policy = workflow.defn.on_message_error if workflow is not None else None
        return policy or DEFAULT_POLICY

    async def handle(self, message: Message) -> None:
        """Supervision boundary: whatever happens, the message is settled or left for redelivery, and logged."""
        try:
            # A first delivery presumes no execution has its message id yet (its row is then written with its
            # first write: at the end, or a durable one's first checkpoint); that write finds out if one had, and
            # the message goes the redelivery way.
            execution = await self._execution(message, presumed_new=message.delivery_count <= 1)
            done = await self._outcome(message, execution)
            failed = await self.runtime.end_recorded(done)
            if isinstance(failed, KeyTakenError):
                done = await self._outcome(message, await self._execution(message, presumed_new=False))
                failed = await self.runtime.end_recorded(done)
            if failed is not None:
                raise failed  # not recorded: not acked, delivered again
            await self._settle(message, done)
        except asyncio.CancelledError:
            raise
        except AdmissionError as exc:  # draining, or the workflow was removed: another consumer takes it
            log.warning("message not run; it will be delivered again", workflow_type=self.workflow,
                        message_id=message.id, reason=exc.code)
            await self._quietly(message.nack(self.policy.initial))
        except Exception as exc:  # the store or the broker failed: unsettled, it is delivered again
            reraise_if_cancelled(exc)  # shutting down, and the client turned the cancellation into an error
            log.error("message handling failed; it will be delivered again", workflow_type=self.workflow,
                      message_id=message.id, topic=message.topic, error=exc)
            if message.settled is None:
                await self._quietly(message.nack(self.policy.initial))

    async def _execution(self, message: Message, *, presumed_new: bool) -> Execution:
        key = f"{self.broker.name}:{message.id}"
        # The handler waits for the outcome anyway: the execution runs in this task once it has a slot.
        execution = await self.runtime.admit(self.workflow, message.to_input(), trigger="message",
                                             idempotency_key=key, wait=True, inline=True,
                                             key_presumed_new=presumed_new)
        if execution.task is asyncio.current_task():
            return execution  # this delivery's own execution, run here just now: its outcome settles it
        if execution.status in (ExecutionStatus.ERROR, ExecutionStatus.CANCELLED):
            # A redelivery of a message whose execution failed: the next attempt, from the failed step.
            try:
                return await self.runtime.retry(execution.id)
            except WorkflowEngineError as exc:
                if exc.code != "conflict":
                    raise
                # Another consumer is retrying it right now: wait for that attempt instead.
        return execution

    async def _outcome(self, message: Message, execution: Execution) -> Execution:
        if execution.finished:  # run in this task just now, or finished long ago
            return execution
        interval = self.broker.touch_interval
        while True:
            try:
                async with asyncio.timeout(interval):
                    return await self.runtime.wait_finished(execution)
            except TimeoutError:
                await self.broker.touch(message)

    async def _settle(self, message: Message, done: Execution) -> None:
        if done.status is ExecutionStatus.SUCCESS:
            await message.ack()
            return
        policy = self.policy
        error: dict[str, Any] = {**(done.error or {"message": f"execution {done.status}"}),
                                 "execution_id": done.id, "workflow": self.workflow,
                                 "deliveries": message.delivery_count}
        if message.delivery_count >= policy.max_deliveries:
            log.error("message dead-lettered", workflow_type=self.workflow, message_id=message.id,
                      topic=message.topic, execution_id=done.id, deliveries=message.delivery_count,
                      error=error.get("message"))
            await message.dead_letter(error)
        else:
            await message.nack(policy.delay(message.delivery_count))

    async def _quietly(self, settle: Any) -> None:
        try:
            await settle
        except Exception as exc:  # already logged by the broker; the broker redelivers it
            log.debug("settling failed", workflow_type=self.workflow, error=exc)


def _factory(config: MessageTriggerConfig, build: TriggerBuilder) -> MessageTrigger:
    return MessageTrigger(build.workflow, config)


def _claims(config: MessageTriggerConfig, workflow: str) -> list[tuple[tuple[Any, ...], str, str]]:
    """One workflow per consumer group of a topic: two would share its messages, each running about half."""
    group = config.group or workflow
    return [(("message", config.broker, config.topic, group), "group",
             f"consumer group '{group}' of topic '{config.topic}' on broker '{config.broker}'")]


SPEC = TriggerSpec("message", MessageTriggerConfig, _factory,
                   "Run for each message of a broker topic (consumer group, bounded in flight); ack after the "
                   "execution's outcome is recorded, retry then dead-letter per `on_message_error`.",
                   claims=_claims)
