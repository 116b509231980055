"""`wait_for`: a durable wait parks in the store and is woken by a matching event (published by another workflow),
also after a restart; a non-matching event leaves it parked; the timeout fails the step; `durable: false` waits in
memory; a wildcard topic is a config issue."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.factories import WAIT_LIMIT, app_yaml, config_issues, wait_done, wait_until
from tests.runtime.test_durable import engine_on, execution_tasks, holds_nothing, reaches
from workflow_engine.engine.engine import Engine
from workflow_engine.runtime.execution import Execution
from workflow_engine.store.base import Store
from workflow_engine.store.factory import open_store_from_url
from workflow_engine.store.records import Status

ENGINE = "{shutdown_grace: 100ms, lease: 1s, poll_interval: 50ms, park_after: 100ms}"


def workflows(*, timeout: str = "1h", durable: bool = True) -> str:
    """`waiter` waits for the `orders.paid` event of its order; `payer` publishes one."""
    return app_yaml(f"""
        waiter:
          durable: {str(durable).lower()}
          steps:
            - id: paid
              wait_for:
                topic: orders.paid
                match: "{{{{ event.data.order == input.order }}}}"
                timeout: {timeout}
            - id: done
              set:
                order: "{{{{ steps.paid.output.data.order }}}}"
                amount: "{{{{ steps.paid.output.data.amount }}}}"
        payer:
          steps:
            - id: publish
              publish: {{topic: orders.paid, message: "{{{{ input }}}}"}}
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


async def pay(engine: Engine, order: int, amount: int) -> Execution:
    """Run `payer` for `order` and wait until the waiters looked at its event."""
    payer = await wait_done(await engine.runtime.admit("payer", {"order": order, "amount": amount}, trigger="manual"))
    assert payer.status is Status.SUCCESS
    assert payer.output["delivered"] >= 1
    await engine.bus.drain(WAIT_LIMIT)
    return payer


async def test_a_durable_wait_parks_and_resumes_on_its_matching_event(store_url: str, probe: Store) -> None:
    async with engine_on(store_url, workflows()) as engine:
        waiter = await engine.runtime.admit("waiter", {"order": 7}, trigger="manual")
        parked = await holds_nothing(engine, probe, waiter.id, "waiter")
        assert parked.wait_topic == "orders.paid"
        assert [(s.step_key, s.status) for s in await probe.load_steps(waiter.id)] == [("paid", "waiting")]

        await pay(engine, order=8, amount=1)  # not its order: it stays parked, holding nothing
        await holds_nothing(engine, probe, waiter.id, "waiter")

        payer = await pay(engine, order=7, amount=2)
        record = await reaches(probe, waiter.id, Status.SUCCESS, Status.ERROR)
    assert record.status is Status.SUCCESS
    assert record.output == {"order": 7, "amount": 2}
    paid = (await probe.load_steps(waiter.id))[0]
    assert (paid.step_key, paid.status) == ("paid", "success")
    # The step's output is the event itself.
    assert paid.output["topic"] == "orders.paid"
    assert paid.output["data"] == {"order": 7, "amount": 2}
    assert paid.output["headers"]["execution_id"] == payer.id


async def test_a_parked_wait_survives_a_restart(store_url: str, probe: Store) -> None:
    async with engine_on(store_url, workflows()) as engine:
        waiter = await engine.runtime.admit("waiter", {"order": 7}, trigger="manual")
        await holds_nothing(engine, probe, waiter.id, "waiter")
    async with engine_on(store_url, workflows()) as engine:
        await pay(engine, order=7, amount=3)
        record = await reaches(probe, waiter.id, Status.SUCCESS, Status.ERROR)
    assert (record.status, record.output) == (Status.SUCCESS, {"order": 7, "amount": 3})


async def test_a_durable_wait_times_out_with_code_timeout(store_url: str, probe: Store) -> None:
    async with engine_on(store_url, workflows(timeout="300ms")) as engine:
        waiter = await engine.runtime.admit("waiter", {"order": 7}, trigger="manual")
        parked = await reaches(probe, waiter.id, Status.PARKED, Status.ERROR)
        record = await reaches(probe, waiter.id, Status.ERROR, Status.SUCCESS)
        assert not engine.runtime.live
    assert parked.status is Status.PARKED  # it waited parked, then its deadline woke it
    assert record.status is Status.ERROR
    assert record.error is not None
    assert (record.error["code"], record.error["step"]) == ("timeout", "paid")
    assert [(s.step_key, s.status) for s in await probe.load_steps(waiter.id)] == [("paid", "error")]


async def test_a_non_durable_wait_waits_in_memory(store_url: str, probe: Store) -> None:
    async with engine_on(store_url, workflows(durable=False)) as engine:
        waiter = await engine.runtime.admit("waiter", {"order": 7}, trigger="manual")
        name = f"wait_for:{waiter.id}"
        await wait_until(lambda: any(s.name == name for s in engine.bus.subscriptions), "the wait subscribed")
        # It holds its task while it waits, and nothing of it is in the store yet.
        assert engine.runtime.live[waiter.id].status is Status.RUNNING
        assert execution_tasks(waiter.id)
        assert await probe.get_execution(waiter.id) is None

        await pay(engine, order=8, amount=1)
        assert not waiter.finished
        await pay(engine, order=7, amount=2)
        await wait_done(waiter)
        assert not any(s.name == name for s in engine.bus.subscriptions)
    assert waiter.status is Status.SUCCESS
    assert waiter.output == {"order": 7, "amount": 2}
    assert waiter.steps["paid"]["output"]["data"] == {"order": 7, "amount": 2}


async def test_a_non_durable_wait_times_out_with_code_timeout(store_url: str) -> None:
    async with engine_on(store_url, workflows(timeout="50ms", durable=False)) as engine:
        waiter = await wait_done(await engine.runtime.admit("waiter", {"order": 7}, trigger="manual"))
    assert waiter.status is Status.ERROR
    assert waiter.error is not None
    assert (waiter.error["code"], waiter.error["step"]) == ("timeout", "paid")
    assert "done" not in waiter.steps


@pytest.mark.parametrize("topic", ["orders.*", "orders.>", "'{{ input.topic }}'"])
def test_a_wait_for_topic_must_be_exact(topic: str) -> None:
    issues = config_issues(app_yaml(f"""
        waiter:
          steps:
            - wait_for: {{topic: {topic}, timeout: 1s}}
    """))
    assert len(issues) == 1
    assert issues[0].startswith("app.yaml:7:27: ")  # the topic value
    assert "workflows.waiter.steps[0].wait_for.topic" in issues[0]
    assert "wait_for topic must be an exact topic" in issues[0]
