"""Retention: the engine prunes finished executions older than `max_age` in batches of `batch`; running, queued and
parked ones stay, whatever their age."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.factories import WAIT_LIMIT, app_yaml, wait_done
from tests.runtime.test_durable import engine_on, holds_nothing, reaches
from workflow_engine.store.base import Store
from workflow_engine.store.factory import open_store_from_url
from workflow_engine.store.records import Status

ENGINE = ("{shutdown_grace: 100ms, lease: 1s, poll_interval: 50ms, park_after: 1h, "
          "retention: {max_age: 1s, interval: 100ms, batch: 2}}")

WORKFLOWS = app_yaml("""
    done:
      steps:
        - id: a
          set: {n: 1}
    quick:
      durable: false
      steps:
        - set: {n: 1}
    busy:
      concurrency: 1
      steps:
        - id: nap
          sleep: 1h       # shorter than park_after: it runs in memory, `running` in the store
    waiting:
      steps:
        - id: event
          wait_for: {topic: never.published, timeout: 1h}
""", engine=ENGINE)


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/s.db"


@pytest.fixture
async def probe(store_url: str) -> AsyncIterator[Store]:
    store = open_store_from_url(store_url)
    await store.open()
    yield store
    await store.close()


async def finished_ids(store: Store) -> set[str]:
    page = await store.list_executions(limit=500)
    return {r.id for r in page.items if r.status in (Status.SUCCESS, Status.ERROR, Status.CANCELLED)}


async def all_pruned(store: Store) -> None:
    """Wait (bounded) until no finished execution is left."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_LIMIT
    while left := await finished_ids(store):
        if loop.time() > deadline:
            raise AssertionError(f"{len(left)} finished executions were not pruned")
        await asyncio.sleep(0.05)


async def test_finished_executions_are_pruned_in_batches_and_unfinished_ones_kept(
    store_url: str, probe: Store
) -> None:
    with capture_logs() as logs:
        async with engine_on(store_url, WORKFLOWS) as engine:
            runtime = engine.runtime
            finished = [await wait_done(await runtime.admit("done", {}, trigger="manual")) for _ in range(5)]
            quick = await wait_done(await runtime.admit("quick", {}, trigger="manual"))
            await reaches(probe, quick.id, Status.SUCCESS)  # its summary row is written in the background
            running = await runtime.admit("busy", {}, trigger="manual")
            queued = await runtime.admit("busy", {}, trigger="manual")
            parked = await runtime.admit("waiting", {}, trigger="manual")
            await holds_nothing(engine, probe, parked.id, "waiting")
            assert len(await finished_ids(probe)) == 6

            await all_pruned(probe)
            unfinished = {running.id: Status.RUNNING, queued.id: Status.QUEUED, parked.id: Status.PARKED}
            for execution_id, status in unfinished.items():
                record = await probe.get_execution(execution_id)
                assert record is not None
                assert record.status is status
    for execution in finished:
        assert await probe.get_execution(execution.id) is None
        assert await probe.load_steps(execution.id) == []  # checkpoints go with their execution
    assert [s.step_key for s in await probe.load_steps(parked.id)] == ["event"]
    # Deleted a small batch at a time: no statement took more than `batch` executions.
    pruned = [entry["count"] for entry in logs if entry["event"] == "pruned finished executions"]
    assert sum(pruned) == 6
    assert max(pruned) <= 2
