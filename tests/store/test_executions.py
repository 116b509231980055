"""Executions: create/get/update/finish round trips, idempotency keys, errors."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.store.conftest import StoreFactory
from workflow_engine.store.base import Store, StoreError
from workflow_engine.store.records import ExecutionRecord, Status, StepRecord
from workflow_engine.store.sql import SqlStore

NESTED = {
    "text": "grüße, 世界, emoji 🚀, quote \" and \\ backslash",
    "null": None,
    "list": [1, 2.5, -3, True, False, None, {"deep": [{"deeper": "ok"}]}],
    "empty": {},
    "big": 2**53,
}


def full_record(execution_id: str = "e1") -> ExecutionRecord:
    """A record with every field set away from its default."""
    return ExecutionRecord(
        id=execution_id,
        workflow="orders",
        trigger="http",
        input=NESTED,
        status=Status.RUNNING,
        config_version=7,
        output=["out", {"n": None}],
        error={"code": "boom", "message": "ünïcode"},
        attempt=3,
        created_at=1700000000.125,
        started_at=1700000001.5,
        finished_at=None,
        updated_at=1700000002.25,
        owner="replica-a",
        lease_expires_at=1700000030.0,
        idempotency_key="key-1",
        parent_id="parent",
        wake_at=1700000100.0,
        wait_topic="orders.paid",
        wait_state={"match": "data.id == 1"},
        durable=False,
    )


async def test_create_get_roundtrip_keeps_every_field(store: Store) -> None:
    record = full_record()
    created, inserted = await store.create_execution(record)
    assert inserted
    assert created == record
    assert await store.get_execution("e1") == record


@pytest.mark.parametrize("value", [None, "plain", 0, 1.5, [], NESTED])
async def test_json_values_roundtrip(store: Store, value: object) -> None:
    await store.create_execution(ExecutionRecord(id="e1", workflow="w", trigger="manual", input=value))
    await store.update_execution("e1", output=value, wait_state={"v": value})
    got = await store.get_execution("e1")
    assert got is not None
    assert (got.input, got.output, got.wait_state) == (value, value, {"v": value})


async def test_create_sets_missing_times(store: Store) -> None:
    before = time.time()
    created, _ = await store.create_execution(ExecutionRecord(id="e1", workflow="w", trigger="manual", input=None))
    assert before <= created.created_at == created.updated_at <= time.time()
    assert await store.get_execution("e1") == created


async def test_get_unknown_is_none(store: Store) -> None:
    assert await store.get_execution("nope") is None


async def test_update_sets_fields_and_updated_at(store: Store) -> None:
    await store.create_execution(ExecutionRecord(id="e1", workflow="w", trigger="manual", input={}, updated_at=1.0))
    await store.update_execution("e1", status=Status.RUNNING, started_at=10.0, attempt=2, config_version=3)
    got = await store.get_execution("e1")
    assert got is not None
    assert (got.status, got.started_at, got.attempt, got.config_version) == (Status.RUNNING, 10.0, 2, 3)
    assert got.updated_at > 1.0
    await store.update_execution("e1", updated_at=5.0, error=None)
    got = await store.get_execution("e1")
    assert got is not None
    assert got.updated_at == 5.0


async def test_update_rejects_unknown_fields_and_executions(store: Store) -> None:
    await store.create_execution(ExecutionRecord(id="e1", workflow="w", trigger="manual", input={}))
    with pytest.raises(StoreError, match="unknown execution field"):
        await store.update_execution("e1", colour="red")
    with pytest.raises(StoreError, match="unknown execution field"):
        await store.update_execution("e1", id="e2")
    with pytest.raises(StoreError) as info:
        await store.update_execution("missing", status=Status.RUNNING)
    assert info.value.code == "execution_not_found"


async def test_finish_records_result_and_releases_lease(store: Store) -> None:
    await store.create_execution(
        ExecutionRecord(
            id="e1", workflow="w", trigger="manual", input={}, status=Status.RUNNING, owner="a",
            lease_expires_at=99.0, wake_at=50.0, wait_topic="t",
        )
    )
    await store.finish_execution("e1", Status.ERROR, {"partial": [1]}, {"code": "step_failed", "step": "x"}, 42.5)
    got = await store.get_execution("e1")
    assert got is not None
    assert got.status is Status.ERROR
    assert (got.output, got.error) == ({"partial": [1]}, {"code": "step_failed", "step": "x"})
    assert got.finished_at == got.updated_at == 42.5
    assert (got.owner, got.lease_expires_at, got.wake_at, got.wait_topic) == (None, None, None, None)
    with pytest.raises(StoreError) as info:
        await store.finish_execution("missing", Status.SUCCESS, None, None, 1.0)
    assert info.value.code == "execution_not_found"


async def test_idempotency_key_returns_the_first_execution(store: Store) -> None:
    first, inserted = await store.create_execution(
        ExecutionRecord(id="e1", workflow="w", trigger="http", input={"n": 1}, idempotency_key="k")
    )
    assert inserted
    again, inserted = await store.create_execution(
        ExecutionRecord(id="e2", workflow="w", trigger="http", input={"n": 2}, idempotency_key="k")
    )
    assert not inserted
    assert again == first
    assert await store.get_execution("e2") is None
    other, inserted = await store.create_execution(
        ExecutionRecord(id="e3", workflow="other", trigger="http", input={}, idempotency_key="k")
    )
    assert inserted
    assert other.id == "e3"


async def test_an_execution_created_with_its_checkpoints_has_them_and_a_taken_key_writes_none(
        store: Store) -> None:
    """An execution first written after steps ran (a message's first delivery): the row and its checkpoints in
    one write, in order. With its idempotency key taken, the other execution comes back and nothing of this
    one is written (a checkpoint of it would name an execution that is not there)."""
    steps = [StepRecord("e1", "a", "success", output={"n": 1}, started_at=1.0, finished_at=2.0),
             StepRecord("e1", "b", "success", output=[2], started_at=2.0, finished_at=3.0)]
    record = ExecutionRecord(id="e1", workflow="w", trigger="message", input={"n": 1}, status=Status.SUCCESS,
                             output={"done": True}, created_at=1.0, updated_at=3.0, finished_at=3.0,
                             idempotency_key="bus:m1")
    created, inserted = await store.create_execution(record, steps=steps)
    assert (created, inserted) == (record, True)
    assert await store.get_execution("e1") == record
    assert [(s.step_key, s.output) for s in await store.load_steps("e1")] == [("a", {"n": 1}), ("b", [2])]

    duplicate = ExecutionRecord(id="e2", workflow="w", trigger="message", input={"n": 1}, status=Status.RUNNING,
                                created_at=4.0, updated_at=4.0, idempotency_key="bus:m1")
    found, inserted = await store.create_execution(
        duplicate, steps=[StepRecord("e2", "a", "success", output=0, started_at=4.0, finished_at=4.0)])
    assert (found.id, inserted) == ("e1", False)
    assert await store.get_execution("e2") is None
    assert await store.load_steps("e2") == []


async def test_idempotency_key_under_concurrency(make_store: StoreFactory) -> None:
    replicas = [await make_store(), await make_store()]

    async def create(i: int) -> tuple[ExecutionRecord, bool]:
        record = ExecutionRecord(id=f"e{i}", workflow="w", trigger="http", input=i, idempotency_key="same")
        return await replicas[i % 2].create_execution(record)

    results = await asyncio.gather(*(create(i) for i in range(20)))
    assert sum(inserted for _, inserted in results) == 1
    assert len({record.id for record, _ in results}) == 1


async def test_executions_without_key_are_independent(store: Store) -> None:
    for i in range(3):
        _, inserted = await store.create_execution(ExecutionRecord(id=f"e{i}", workflow="w", trigger="m", input=i))
        assert inserted


async def test_duplicate_id_is_a_store_error(store: Store) -> None:
    await store.create_execution(ExecutionRecord(id="e1", workflow="w", trigger="manual", input={}))
    with pytest.raises(StoreError, match="create_execution"):
        await store.create_execution(ExecutionRecord(id="e1", workflow="w", trigger="manual", input={}))


async def test_value_that_is_not_json_is_a_store_error(store: Store) -> None:
    with pytest.raises(StoreError, match="create_execution"):
        await store.create_execution(ExecutionRecord(id="e1", workflow="w", trigger="manual", input={1j}))
    assert await store.get_execution("e1") is None


async def test_closed_store_refuses_operations(make_store: StoreFactory) -> None:
    store = await make_store()
    await store.close()
    await store.close()
    with pytest.raises(StoreError, match="not open"):
        await store.get_execution("e1")


@pytest.mark.parametrize("count", [1, 50, 337])  # 337 = 256 + 64 + 16 + 1: every multi-row chunk size on SQLite
async def test_create_executions_inserts_a_batch_in_one_call(store: Store, count: int) -> None:
    records = [ExecutionRecord(id=f"s{n}", workflow="fast", trigger="http", input={"n": n}, status=Status.SUCCESS,
                               output={"done": n}, finished_at=1700000000.0 + n, durable=False)
               for n in range(count)]
    await store.create_executions(records)
    await store.create_executions([])
    page = await store.list_executions(workflow="fast", limit=500)
    assert sorted(r.id for r in page.items) == sorted(r.id for r in records)
    fetched = await store.get_execution(f"s{count - 1}")
    assert fetched is not None
    assert (fetched.status, fetched.output, fetched.durable, fetched.created_at > 0) == (
        Status.SUCCESS, {"done": count - 1}, False, True)


def _keyed_summary(store: Store, execution_id: str, key: str | None) -> object:
    return store.summary_row(
        execution_id, workflow="consume", trigger="message", status=Status.SUCCESS, config_version=None,
        output={"n": 1}, error=None, attempt=1, created_at=1700000000.0, started_at=1700000000.0,
        finished_at=1700000001.0, updated_at=1700000001.0, lease_expires_at=1700000031.0, parent_id=None,
        input={"body": {"n": 1}}, idempotency_key=key)


@pytest.mark.parametrize("helper_process", [True, False], ids=["child process", "store thread"])
async def test_summary_rows_with_a_taken_idempotency_key_are_skipped_and_named(
        make_store: StoreFactory, helper_process: bool) -> None:
    store = await make_store()
    if isinstance(store, SqlStore) and not helper_process:
        store.writer_process = None  # what `helper_process=False` (and a child given up on) leaves
    first = _keyed_summary(store, "first", "bus:m1")
    assert await store.create_summaries([first]) == set()
    rows = [_keyed_summary(store, "again", "bus:m1"), _keyed_summary(store, "other", "bus:m2"),
            _keyed_summary(store, "plain", None)]
    assert await store.create_summaries(rows) == {"again"}
    assert await store.get_execution("again") is None
    kept = await store.get_execution("first")
    assert kept is not None
    assert (kept.idempotency_key, kept.input, kept.output, kept.durable) == ("bus:m1", {"body": {"n": 1}},
                                                                             {"n": 1}, False)
    assert {r.id for r in (await store.list_executions(workflow="consume")).items} == {"first", "other", "plain"}



@pytest.mark.parametrize("helper_process", [True, False], ids=["child process", "store thread"])
async def test_durable_rows_written_whole_at_their_end_carry_their_checkpoints(
        make_store: StoreFactory, helper_process: bool) -> None:
    """A durable execution first written at its end (a message's first delivery) goes as a summary row with
    its checkpoints: each inserted row's checkpoints in order, none of a row whose key is taken, none twice."""
    store = await make_store()
    if isinstance(store, SqlStore) and not helper_process:
        store.writer_process = None

    def durable_row(execution_id: str, key: str) -> object:
        return store.summary_row(
            execution_id, workflow="consume", trigger="message", status=Status.SUCCESS, config_version=None,
            output={"n": 2}, error=None, attempt=1, created_at=1700000000.0, started_at=1700000000.0,
            finished_at=1700000001.0, updated_at=1700000001.0, lease_expires_at=None, parent_id=None,
            input={"body": {"n": 2}}, idempotency_key=key, durable=True)

    def checkpoints(execution_id: str) -> list[object]:
        return [store.step_row(StepRecord(execution_id, key, "success", output={"k": key}, started_at=1.0,
                                          finished_at=2.0, extra={"x": 1} if key == "b" else {}))
                for key in ("b", "a", "lines[0].c")]

    assert await store.create_summaries([_keyed_summary(store, "first", "bus:m1")]) == set()
    rows = [durable_row("taken", "bus:m1"), durable_row("d1", "bus:m2"), durable_row("d2", "bus:m3")]
    assert await store.create_summaries(rows, [*checkpoints("taken"), *checkpoints("d1"), *checkpoints("d2")]) == {
        "taken"}
    for execution_id in ("d1", "d2"):
        record = await store.get_execution(execution_id)
        assert record is not None
        assert (record.status, record.durable, record.owner, record.lease_expires_at, record.output) == (
            Status.SUCCESS, True, None, None, {"n": 2})
        steps = await store.load_steps(execution_id)
        assert [(s.step_key, s.output, s.extra) for s in steps] == [
            ("b", {"k": "b"}, {"x": 1}), ("a", {"k": "a"}, {}), ("lines[0].c", {"k": "lines[0].c"}, {})]
    assert await store.load_steps("taken") == []
    assert await store.get_execution("taken") is None


async def test_summary_rows_sharing_a_key_in_one_batch_insert_one(make_store: StoreFactory) -> None:
    """Two deliveries of one message id ending in the same batch: one row, the other named as taken."""
    store = await make_store()
    rows = [_keyed_summary(store, "one", "bus:m7"), _keyed_summary(store, "two", "bus:m7")]
    taken = await store.create_summaries(rows)
    assert len(taken) == 1
    assert taken < {"one", "two"}
    kept = {r.id for r in (await store.list_executions(workflow="consume")).items}
    assert kept == {"one", "two"} - taken


async def test_a_batch_of_summary_rows_the_database_refuses_is_a_store_error_and_writes_nothing(
        make_store: StoreFactory) -> None:
    """An id already taken refuses the whole batch (the recorder then writes its rows one by one): a
    StoreError naming the operation and the constraint, and none of the batch's other rows."""
    store = await make_store()
    await store.create_summaries([_keyed_summary(store, "first", None)])
    with pytest.raises(StoreError, match=r"create_summaries failed.*(UNIQUE|unique|duplicate key)"):
        await store.create_summaries([_keyed_summary(store, "second", "bus:m9"),
                                      _keyed_summary(store, "first", None)])
    assert {r.id for r in (await store.list_executions(workflow="consume")).items} == {"first"}
    record = await store.get_execution("first")
    assert record is not None
    assert (record.status, record.input, record.output, record.durable) == (Status.SUCCESS, {"body": {"n": 1}},
                                                                            {"n": 1}, False)
