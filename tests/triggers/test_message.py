"""The `message` trigger on `broker.memory`: one execution per message, ack after the outcome, retry, DLQ."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog.testing

from tests.factories import executions, running_engine, sample, wait_until
from tests.modules.broker.conformance import Consumer
from tests.modules.dynamic.conftest import write_source
from workflow_engine.engine.engine import Engine
from workflow_engine.modules.broker.base import Broker
from workflow_engine.modules.broker.message import ERROR_HEADER
from workflow_engine.store.base import StoreError
from workflow_engine.store.records import ExecutionRecord, Status, StepRecord


def _yaml(steps: str, *, trigger: str = "{broker: bus, topic: orders.created, max_in_flight: 8}",
          workflow: str = "") -> str:
    """A memory broker `bus` and a workflow `consume` triggered by its messages; `steps` and `workflow`
    (extra workflow keys) are YAML text."""
    extra = textwrap.indent(textwrap.dedent(workflow).strip(), "    ")
    body = textwrap.indent(textwrap.dedent(steps).strip(), "      ")
    return (
        "version: 1\nname: app\nengine: {shutdown_grace: 2s, park_after: 1h}\n"
        "modules:\n  - name: bus\n    type: broker.memory\n    config: {backlog_interval: 50ms}\n"
        f"workflows:\n  consume:\n    trigger: {{message: {trigger}}}\n"
        "    on_message_error: {max_deliveries: 3, initial: 10ms, max: 50ms}\n"
        f"{extra}\n    steps:\n{body}\n"
    )


def _bus(engine: Engine) -> Broker:
    broker = engine.modules["bus"]
    assert isinstance(broker, Broker)
    return broker


# Executions of a message run in its handler's task (inline), durable or not.
DURABILITY = pytest.mark.parametrize("durable", ["true", "false"], ids=["durable", "durable: false"])


async def _store_count(engine: Engine, status: str | None = None) -> int:
    page = await engine.store.list_executions(workflow="consume", limit=1000)
    return sum(1 for r in page.items if status is None or r.status == status)


@DURABILITY
async def test_one_execution_per_message_and_ack(durable: str) -> None:
    steps = ("- id: echo\n"
             "  set: {n: '{{ input.body.n }}', topic: '{{ input.topic }}', trace: '{{ input.headers.trace }}'}")
    async with running_engine(_yaml(steps, workflow=f"durable: {durable}")) as engine:
        bus, metrics = _bus(engine), engine.metrics
        ids = [await bus.publish("orders.created", {"n": i}, {"trace": f"t{i}"}) for i in range(5)]
        await wait_until(lambda: executions(metrics, "consume", "success") == 5, "5 executions succeeded")
        await wait_until(lambda: sample(metrics, "broker_messages_total", broker="bus", topic="orders.created",
                                        direction="in", status="acked") == 5, "5 acks")
        # The same message delivered again (a redelivery after a lost ack): acked, no second execution.
        await bus.publish("orders.created", {"n": 0}, {"trace": "t0"}, message_id=ids[0])
        await wait_until(lambda: sample(metrics, "broker_messages_total", broker="bus", topic="orders.created",
                                        direction="in", status="acked") == 6, "the duplicate acked")
        assert executions(metrics, "consume", "success") == 5
        assert await _store_count(engine) == 5
        record = (await engine.store.list_executions(workflow="consume", limit=10)).items[-1]
        assert record.idempotency_key == f"bus:{ids[0]}"
        assert record.output == {"n": 0, "topic": "orders.created", "trace": "t0"}
        assert await bus.backlog("orders.created", "consume") == 0


@DURABILITY
async def test_failure_redelivers_and_retries_the_same_execution(durable: str) -> None:
    steps = """\
        - id: flaky
          if: "{{ execution.attempt < 2 }}"
          fail: "first delivery fails"
        - id: done
          set: {attempt: "{{ execution.attempt }}"}
        """
    async with running_engine(_yaml(steps, workflow=f"durable: {durable}")) as engine:
        bus, metrics = _bus(engine), engine.metrics
        await bus.publish("orders.created", {"n": 1})
        await wait_until(lambda: executions(metrics, "consume", "success") == 1, "the retry succeeded")
        assert executions(metrics, "consume", "error") == 1
        assert sample(metrics, "broker_messages_total", broker="bus", topic="orders.created", direction="in",
                      status="nacked") == 1
        (record,) = (await engine.store.list_executions(workflow="consume", limit=10)).items
        assert record.status == "success"
        assert record.attempt == 2


@DURABILITY
async def test_poison_message_is_dead_lettered_with_its_error(durable: str) -> None:
    async with running_engine(_yaml('- fail: "poison {{ input.body.n }}"', workflow=f"durable: {durable}")) as engine:
        bus, metrics = _bus(engine), engine.metrics
        sent = await bus.publish("orders.created", {"n": 7})
        async with Consumer(bus, "orders.created.dlq", "inspect") as dlq:
            (dead,) = await dlq.wait_count(1)
            await dead.ack()
        error = orjson.loads(dead.headers[ERROR_HEADER])
        assert error["message"] == "poison 7"
        assert error["deliveries"] == 3
        assert dead.body == {"n": 7}
        assert dead.headers["x-original-id"] == sent
        (record,) = (await engine.store.list_executions(workflow="consume", limit=10)).items
        assert error["execution_id"] == record.id
        assert record.status == "error"
        assert record.attempt == 3
        assert sample(metrics, "broker_messages_total", broker="bus", topic="orders.created", direction="in",
                      status="dead_lettered") == 1


async def test_back_pressure_stops_pulling() -> None:
    """Concurrency 1, queue 0, max_in_flight 2: the broker keeps the rest until executions finish."""
    steps = "- sleep: 200ms"
    trigger = "{broker: bus, topic: orders.created, max_in_flight: 2}"
    async with running_engine(_yaml(steps, trigger=trigger, workflow="concurrency: 1\nqueue_size: 0")) as engine:
        bus, metrics = _bus(engine), engine.metrics
        for i in range(6):
            await bus.publish("orders.created", i)
        await wait_until(lambda: sample(metrics, "broker_messages_total", broker="bus", topic="orders.created",
                                        direction="in", status="received") == 2, "two messages taken")
        await asyncio.sleep(0.05)
        assert sample(metrics, "broker_messages_total", broker="bus", topic="orders.created", direction="in",
                      status="received") == 2
        assert await bus.backlog("orders.created", "consume") == 6
        await wait_until(lambda: executions(metrics, "consume", "success") == 6, "all six ran, one at a time")


@DURABILITY
async def test_shutdown_acks_the_messages_whose_executions_finish_while_draining(durable: str) -> None:
    """SIGTERM with executions running: the consumer takes nothing more, the executions finish within the
    grace period and their messages are acked before the broker closes (not left to be delivered again after
    the broker's redelivery wait, on every deploy). Messages never taken stay in the broker."""
    steps = "- sleep: 300ms"
    trigger = "{broker: bus, topic: orders.created, max_in_flight: 4}"
    async with running_engine(_yaml(steps, trigger=trigger, workflow=f"concurrency: 4\ndurable: {durable}")) as engine:
        bus, metrics = _bus(engine), engine.metrics
        for i in range(10):
            await bus.publish("orders.created", i)
        await wait_until(lambda: len(engine.runtime.live) == 4, "four executions running")
    # The context exit stopped the engine: SIGTERM's path (drain within shutdown_grace, then modules stop).
    succeeded = executions(metrics, "consume", "success")
    assert succeeded == 4
    assert sample(metrics, "broker_messages_total", broker="bus", topic="orders.created", direction="in",
                  status="acked") == succeeded
    assert sample(metrics, "broker_messages_total", broker="bus", topic="orders.created", direction="in",
                  status="received") == 4, "nothing taken after the stop"
    assert sample(metrics, "broker_messages_total", broker="bus", topic="orders.created", direction="in",
                  status="error") == 0


async def test_a_durable_false_first_delivery_is_written_once_at_its_end_with_its_key_and_input() -> None:
    """No row while it runs (its message is unacked: a crash delivers it again); one row, with the message id
    and the input a later attempt would run on, before the ack."""
    async with running_engine(_yaml("- sleep: 200ms\n- id: done\n  set: {n: '{{ input.body.n }}'}",
                                    workflow="durable: false")) as engine:
        bus, metrics = _bus(engine), engine.metrics
        sent = await bus.publish("orders.created", {"n": 4})
        await wait_until(lambda: len(engine.runtime.live) == 1, "the execution is running")
        assert await _store_count(engine) == 0
        await wait_until(lambda: sample(metrics, "broker_messages_total", broker="bus", topic="orders.created",
                                        direction="in", status="acked") == 1, "acked")
        (record,) = (await engine.store.list_executions(workflow="consume", limit=10)).items
        assert (record.status, record.idempotency_key, record.output) == ("success", f"bus:{sent}", {"n": 4})
        assert record.input["body"] == {"n": 4}
        assert record.durable is False


async def test_a_first_delivery_whose_message_id_has_an_execution_is_settled_by_that_execution() -> None:
    """The same message id published again (count 1) after this process forgot it: its execution runs, its end
    finds the key taken and is not written, and the message goes the redelivery way: the failed execution
    that has the key is retried and its success acks the message. One row."""
    steps = "- id: done\n  set: {n: '{{ input.body.n }}', attempt: '{{ execution.attempt }}'}"
    async with running_engine(_yaml(steps, workflow="durable: false")) as engine:
        bus, metrics = _bus(engine), engine.metrics
        now = time.time()
        await engine.store.create_execution(ExecutionRecord(
            id="earlier", workflow="consume", trigger="message", input={"body": {"n": 9}}, status=Status.ERROR,
            error={"code": "step_failed", "message": "boom"}, attempt=1, created_at=now, updated_at=now,
            finished_at=now, idempotency_key="bus:m-1", durable=False))
        with structlog.testing.capture_logs() as logs:
            await bus.publish("orders.created", {"n": 1}, message_id="m-1")
            await wait_until(lambda: sample(metrics, "broker_messages_total", broker="bus", topic="orders.created",
                                            direction="in", status="acked") == 1, "acked")
        (record,) = (await engine.store.list_executions(workflow="consume", limit=10)).items
        assert (record.id, record.status, record.attempt, record.output) == ("earlier", "success", 2,
                                                                            {"n": 9, "attempt": 2})
        assert any(e["event"].startswith("execution end not recorded: another execution has its idempotency")
                   for e in logs)


async def test_a_message_whose_end_cannot_be_written_is_not_acked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The store refuses the first delivery's row: nacked and delivered again (never acked unrecorded)."""
    async with running_engine(_yaml("- id: done\n  set: {n: '{{ input.body.n }}'}",
                                    workflow="durable: false")) as engine:
        bus, metrics = _bus(engine), engine.metrics
        real = engine.store.create_summaries
        failures = []

        async def refuse_once(rows: list[object], steps: Sequence[object] = ()) -> set[str]:
            if not failures:
                failures.append(rows)
                raise StoreError("store create_summaries failed: disk I/O error")
            return await real(rows, steps)

        monkeypatch.setattr(engine.store, "create_summaries", refuse_once)
        await bus.publish("orders.created", {"n": 3})
        await wait_until(lambda: sample(metrics, "broker_messages_total", broker="bus", topic="orders.created",
                                        direction="in", status="acked") == 1, "acked after a redelivery")
        assert len(failures) == 1
        assert sample(metrics, "broker_messages_total", broker="bus", topic="orders.created", direction="in",
                      status="nacked") == 1
        (record,) = (await engine.store.list_executions(workflow="consume", limit=10)).items
        assert (record.status, record.output) == ("success", {"n": 3})


@DURABILITY
async def test_messages_wait_for_a_slot_in_their_handlers_instead_of_queueing(
        durable: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each execution waits in its message's handler until a slot frees (no queued execution); the handlers
    hold their messages meanwhile, so max_in_flight still bounds what is taken. A durable one is written
    `running` with its first checkpoint (the sleep's), once it has its slot: never a `queued` row, never the
    update that marks a queued one running."""
    trigger = "{broker: bus, topic: orders.created, max_in_flight: 4}"
    workflow = f"durable: {durable}\nconcurrency: 1\nqueue_size: 10"
    async with running_engine(_yaml("- sleep: 100ms", trigger=trigger, workflow=workflow)) as engine:
        bus, metrics = _bus(engine), engine.metrics
        updates: list[dict[str, object]] = []
        real_update = engine.store.update_execution

        async def counted_update(execution_id: str, **fields: object) -> None:
            updates.append(fields)
            await real_update(execution_id, **fields)

        monkeypatch.setattr(engine.store, "update_execution", counted_update)
        for i in range(6):
            await bus.publish("orders.created", i)
        await wait_until(lambda: sample(metrics, "broker_messages_total", broker="bus", topic="orders.created",
                                        direction="in", status="received") == 4, "four messages taken")
        gate = engine.runtime.gates["consume"]
        await wait_until(lambda: gate.active == 1, "one running")  # a durable one once its row is written
        await asyncio.sleep(0.02)
        assert (gate.active, len(gate.queue), len(engine.runtime.live)) == (1, 0, 1)
        assert sample(metrics, "workflow_queue_depth", workflow_type="consume") == 0
        page = await engine.store.list_executions(workflow="consume", limit=100)
        assert [r.status for r in page.items] == (["running"] if durable == "true" else [])
        await wait_until(lambda: sample(metrics, "broker_messages_total", broker="bus", topic="orders.created",
                                        direction="in", status="acked") == 6, "all six ran, one at a time")
        assert executions(metrics, "consume", "success") == 6
        assert updates == []


class _Writes:
    """The store calls that write an execution's row, recorded as (call, status or None, step keys): "summary"
    is a row (and its checkpoints) through the summary writer."""

    def __init__(self, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str | None, list[str]]] = []
        store = engine.store
        create, finish, update = store.create_execution, store.finish_execution, store.update_execution
        summaries = store.create_summaries

        async def counted_summaries(rows: Sequence[Any], steps: Sequence[Any] = ()) -> set[str]:
            for row in rows:  # step_row tuples: (execution_id, step_key, ...)
                record = store.summary_record(row)
                self.calls.append(("summary", str(record.status), [s[1] for s in steps if s[0] == record.id]))
            return await summaries(rows, steps)

        async def counted_create(record: ExecutionRecord, *, steps: Sequence[StepRecord] = ()) -> Any:
            self.calls.append(("create", str(record.status), [s.step_key for s in steps]))
            return await create(record, steps=steps)

        async def counted_finish(execution_id: str, status: Status, *args: Any,
                                 steps: Sequence[StepRecord] = ()) -> None:
            self.calls.append(("finish", str(status), [s.step_key for s in steps]))
            await finish(execution_id, status, *args, steps=steps)

        async def counted_update(execution_id: str, **fields: Any) -> None:
            self.calls.append(("update", None, []))
            await update(execution_id, **fields)

        monkeypatch.setattr(store, "create_execution", counted_create)
        monkeypatch.setattr(store, "finish_execution", counted_finish)
        monkeypatch.setattr(store, "update_execution", counted_update)
        monkeypatch.setattr(store, "create_summaries", counted_summaries)


@pytest.mark.parametrize(("steps", "writes"), [
    ("- id: done\n  set: {n: '{{ input.body.n }}'}", [("summary", "success", ["done"])]),
    ("- id: nap\n  sleep: 20ms\n- id: done\n  set: {n: '{{ input.body.n }}'}",
     [("create", "running", ["nap"]), ("finish", "success", ["done"])]),
], ids=["replayable steps only: one write, at the end", "its first checkpoint inserts the row"])
async def test_a_durable_first_delivery_is_written_by_its_first_write(
        steps: str, writes: list[tuple[str, str, list[str]]], store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No row before it runs (the broker keeps the message until its end is recorded): the first write inserts
    the row with the checkpoints so far, so a workflow of replayable steps commits once per message, its row
    and checkpoints going through the summary writer (many messages' rows in one multi-row insert). On both
    dialects (their writes take different paths: the writer process, asyncpg)."""
    async with running_engine(_yaml(steps, workflow="durable: true"), store_url=store_url) as engine:
        bus, metrics = _bus(engine), engine.metrics
        recorded = _Writes(engine, monkeypatch)
        sent = await bus.publish("orders.created", {"n": 5})
        await wait_until(lambda: sample(metrics, "broker_messages_total", broker="bus", topic="orders.created",
                                        direction="in", status="acked") == 1, "acked")
        assert recorded.calls == writes
        (record,) = (await engine.store.list_executions(workflow="consume", limit=10)).items
        assert (record.status, record.output, record.idempotency_key) == ("success", {"n": 5}, f"bus:{sent}")
        assert (record.durable, record.owner, record.lease_expires_at, record.input["body"]) == (True, None, None,
                                                                                                 {"n": 5})
        keys = [key for _, _, written in writes for key in written]
        assert [s.step_key for s in await engine.store.load_steps(record.id)] == list(dict.fromkeys(keys))


async def test_a_durable_first_delivery_whose_key_is_taken_stops_at_its_first_write(store_url: str) -> None:
    """The same message id again (count 1) after this process forgot it: its execution runs to its first
    write, finds the key taken, writes nothing and stops, cancelled, without its `on_error` steps; the message
    goes the redelivery way (the failed execution with the key is retried, and acks it). One row."""
    steps = "- id: nap\n  sleep: 10ms\n- id: done\n  set: {attempt: '{{ execution.attempt }}'}"
    workflow = "durable: true\non_error:\n  - id: cleanup\n    set: {cleaned: true}"
    async with running_engine(_yaml(steps, workflow=workflow), store_url=store_url) as engine:
        bus, metrics = _bus(engine), engine.metrics
        now = time.time()
        await engine.store.create_execution(ExecutionRecord(
            id="earlier", workflow="consume", trigger="message", input={"body": {"n": 9}}, status=Status.ERROR,
            error={"code": "step_failed", "message": "boom"}, attempt=1, created_at=now, updated_at=now,
            finished_at=now, idempotency_key="bus:m-1"))
        with structlog.testing.capture_logs() as logs:
            await bus.publish("orders.created", {"n": 1}, message_id="m-1")
            await wait_until(lambda: sample(metrics, "broker_messages_total", broker="bus", topic="orders.created",
                                            direction="in", status="acked") == 1, "acked")
        (record,) = (await engine.store.list_executions(workflow="consume", limit=10)).items
        assert (record.id, record.status, record.attempt, record.output) == ("earlier", "success", 2, {"attempt": 2})
        (duplicate,) = [e for e in engine.runtime.recent.values() if e.id != "earlier"]
        assert (duplicate.status, "cleanup" in duplicate.steps) == ("cancelled", False)
        assert executions(metrics, "consume", "error") == 0
        assert not [e for e in logs if e["event"] == "execution failed"]
        assert any(e["event"] == "execution end not recorded: another execution has its idempotency key"
                   for e in logs)
        assert sample(metrics, "broker_messages_total", broker="bus", topic="orders.created", direction="in",
                      status="nacked") == 0


async def test_a_durable_first_delivery_stopped_before_its_first_write_leaves_its_message(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shutdown interrupts it while its first step runs: nothing was written, nothing to release, no error;
    the message is not acked (the broker delivers it again; the consumer gives up waiting for it to be settled
    after CONSUMER_SETTLE_TIMEOUT)."""
    source = tmp_path / "slow.py"
    write_source(source, "async def execute(ctx, input):\n    await ctx.sleep(30)\n    return {}\n")
    yaml_text = _yaml("- id: slow\n  call: slow", workflow="durable: true").replace(
        "modules:\n", f"modules:\n  - name: slow\n    type: dynamic.component\n    config: {{source: '{source}'}}\n"
    ).replace("shutdown_grace: 2s", "shutdown_grace: 100ms")
    with structlog.testing.capture_logs() as logs:
        async with running_engine(yaml_text) as engine:
            bus, metrics = _bus(engine), engine.metrics
            await engine.supervisors["slow"].ready.wait()
            recorded = _Writes(engine, monkeypatch)
            await bus.publish("orders.created", {"n": 1})
            await wait_until(lambda: len(engine.runtime.live) == 1, "running")
            assert await _store_count(engine) == 0
    assert recorded.calls == []
    assert sample(metrics, "broker_messages_total", broker="bus", topic="orders.created", direction="in",
                  status="acked") == 0
    assert not [e for e in logs if e.get("log_level") == "error"]
