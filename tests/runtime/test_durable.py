"""Durable executions in process: a checkpoint per step, resume without re-running completed steps, `durable:
false` summaries, parked sleeps (also across a restart), retry from the failed step, cancelling a parked
execution, and a resume that cannot happen because the config lost a step.

Engines here share one SQLite file (`sqlite:///:memory:` is private to one engine), so a second engine can take
over what the first left behind; `probe` reads the same file beside them.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.factories import WAIT_LIMIT, app_yaml, load_app, sample, serve_app, wait_done, wait_until
from workflow_engine.engine.engine import Engine
from workflow_engine.errors import WorkflowEngineError
from workflow_engine.observability.metrics import Metrics
from workflow_engine.registry.builtins import default_registry
from workflow_engine.runtime.execution import Execution
from workflow_engine.runtime.recorder import Recorder
from workflow_engine.store.base import Store
from workflow_engine.store.factory import open_store_from_url
from workflow_engine.store.records import ExecutionRecord, Status

# Short lease and poll interval: a takeover or a due timer is noticed within a few tens of milliseconds.
ENGINE = "{shutdown_grace: 100ms, lease: 1s, poll_interval: 50ms, park_after: 100ms}"


@asynccontextmanager
async def engine_on(store_url: str, yaml_text: str) -> AsyncIterator[Engine]:
    """`tests.factories.running_engine`, but on the store at `store_url` (engines may follow each other on it)."""
    registry = default_registry()
    engine = Engine(load_app(yaml_text, registry), registry, metrics=Metrics(process=False),
                    mgmt_address="127.0.0.1:0", store_url=store_url, environ={})
    run = asyncio.create_task(engine.run(), name="test-engine")
    started = asyncio.create_task(engine.started.wait())
    await asyncio.wait([run, started], return_when=asyncio.FIRST_COMPLETED)
    if not started.done():
        started.cancel()
        run.result()
        raise AssertionError("engine.run() returned before the engine started")
    try:
        yield engine
    finally:
        engine.request_stop()
        await run


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/s.db"


@pytest.fixture
async def probe(store_url: str) -> AsyncIterator[Store]:
    """The test's own connection to the engines' store."""
    store = open_store_from_url(store_url)
    await store.open()
    yield store
    await store.close()


async def reaches(store: Store, execution_id: str, *statuses: Status) -> ExecutionRecord:
    """Poll the store until the execution is in one of `statuses` (bounded); returns its record."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_LIMIT
    while True:
        record = await store.get_execution(execution_id)
        if record is not None and record.status in statuses:
            return record
        if loop.time() > deadline:
            seen = record.status if record else "missing"
            raise AssertionError(f"execution {execution_id} is {seen}, expected one of {[str(s) for s in statuses]}")
        await asyncio.sleep(0.01)


async def step_keys(store: Store, execution_id: str) -> dict[str, str]:
    """Checkpointed step key -> status, in the order first saved."""
    return {step.step_key: step.status for step in await store.load_steps(execution_id)}


def execution_tasks(execution_id: str) -> list[asyncio.Task[Any]]:
    """Live asyncio tasks running `execution_id` (the runtime names them `execution:<workflow>:<id>`)."""
    return [t for t in asyncio.all_tasks() if not t.done() and t.get_name().endswith(f":{execution_id}")]


class Upstream:
    """An HTTP endpoint that counts calls per name: `/hit/{name}` answers with a fresh token; `/hang/{name}`
    waits on its first call until `release()`; `/fail-once/{name}` answers 500 on its first call."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.bodies: dict[str, list[Any]] = {}
        self.hanging = asyncio.Event()
        self.released = asyncio.Event()
        self._tokens = itertools.count(1)

    async def _count(self, request: Request) -> str:
        name = str(request.path_params["name"])
        self.calls[name] += 1
        body = await request.body()
        self.bodies.setdefault(name, []).append(await request.json() if body else None)
        return name

    async def hit(self, request: Request) -> JSONResponse:
        name = await self._count(request)
        return JSONResponse({"name": name, "token": f"{name}-{next(self._tokens)}"})

    async def hang(self, request: Request) -> JSONResponse:
        name = await self._count(request)
        if self.calls[name] == 1:
            self.hanging.set()
            await self.released.wait()
        return JSONResponse({"name": name, "call": self.calls[name]})

    async def fail_once(self, request: Request) -> JSONResponse:
        name = await self._count(request)
        return JSONResponse({"call": self.calls[name]}, status_code=500 if self.calls[name] == 1 else 200)

    def release(self) -> None:
        self.released.set()

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hit/{name}", self.hit, methods=["POST"]),
                                 Route("/hang/{name}", self.hang, methods=["POST"]),
                                 Route("/fail-once/{name}", self.fail_once, methods=["POST"])])


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, str]]:
    """A counting upstream and its base URL; its hanging calls are let go at the end."""
    counter = Upstream()
    async with serve_app(counter.app()) as url:
        try:
            yield counter, url
        finally:
            counter.release()


def http(url: str, path: str, json: str | None = None) -> str:
    """A flow-style `http` step config calling `url + path` (optionally posting the `json` template)."""
    body = f', json: "{json}"' if json else ""
    return f'{{method: POST, url: "{url}{path}"{body}}}'


FIRST_BODY = "{{ steps.first.output.body }}"
BEFORE_BODY = "{{ steps.before.output.body }}"
ONE_BODY = "{{ steps.one.output.body }}"


# -- checkpoints ---------------------------------------------------------------------------------------------

async def test_a_durable_workflow_checkpoints_every_step(store_url: str, probe: Store) -> None:
    async with engine_on(store_url, app_yaml("""
        three:
          steps:
            - id: a
              set: {n: 1}
            - id: b
              set: {n: "{{ steps.a.output.n + 1 }}"}
            - id: c
              set: {total: "{{ steps.a.output.n + steps.b.output.n }}"}
    """, engine=ENGINE)) as engine:
        execution = await wait_done(await engine.runtime.admit("three", {}, trigger="manual"))
    assert execution.status is Status.SUCCESS
    steps = await probe.load_steps(execution.id)
    assert [(s.step_key, s.status, s.output, s.attempt) for s in steps] == [
        ("a", "success", {"n": 1}, 1), ("b", "success", {"n": 2}, 1), ("c", "success", {"total": 3}, 1)]
    record = await probe.get_execution(execution.id)
    assert record is not None
    assert (record.status, record.output, record.owner) == (Status.SUCCESS, {"total": 3}, None)


async def test_data_steps_run_as_plain_calls_keep_every_checkpoint(store_url: str, probe: Store) -> None:
    """Data steps of a durable execution run without the per-step machinery (nothing observes them one by
    one), and their checkpoints are still all there: skipped, nested under a loop's path, failed and
    continued past (the error with its step), each with its own key and times."""
    async with engine_on(store_url, app_yaml("""
        data:
          steps:
            - id: skip
              if: "{{ input.n > 5 }}"
              set: {never: true}
            - id: lines
              foreach:
                items: "{{ input['items'] }}"
                do:
                  - id: double
                    set: {v: "{{ item * 2 }}"}
            - id: bad
              transform: "length(n)"
              continue_on_error: true
            - id: last
              set: {n: "{{ input.n }}"}
    """, engine=ENGINE)) as engine:
        execution = await wait_done(await engine.runtime.admit("data", {"n": 1, "items": [1, 2]}, trigger="manual"))
    assert (execution.status, execution.output) == (Status.SUCCESS, {"n": 1})
    steps = {s.step_key: s for s in await probe.load_steps(execution.id)}
    assert {key: (s.status, s.output) for key, s in steps.items() if key != "bad"} == {
        "skip": ("skipped", None), "lines[0].double": ("success", {"v": 2}), "lines[1].double": ("success", {"v": 4}),
        "lines": ("success", [{"v": 2}, {"v": 4}]), "last": ("success", {"n": 1})}
    assert steps["bad"].status == "error"
    assert steps["bad"].error is not None
    assert steps["bad"].error["step"] == "bad"
    assert all(0 < s.started_at <= s.finished_at for s in steps.values())


async def test_summary_rows_of_executions_finished_just_before_stop_are_written(store_url: str,
                                                                                  probe: Store) -> None:
    # The writer lets rows gather (SUMMARY_LINGER) before it writes them; a stop in that moment must not lose
    # the row it already took from its queue, nor the ones behind it.
    async with engine_on(store_url, app_yaml("""
        quick:
          durable: false
          steps:
            - id: a
              set: {n: "{{ input.n }}"}
    """, engine=ENGINE)) as engine:
        finished = [await wait_done(await engine.runtime.admit("quick", {"n": n}, trigger="manual"))
                    for n in range(3)]
        # The engine stops at once, while the writer still lingers over the first row.
    for execution in finished:
        record = await probe.get_execution(execution.id)
        assert record is not None
        assert record.status == Status.SUCCESS


async def test_durable_false_keeps_only_one_summary_row(store_url: str, probe: Store) -> None:
    async with engine_on(store_url, app_yaml("""
        quick:
          durable: false
          steps:
            - id: a
              set: {n: 1}
            - id: b
              set: {n: 2}
    """, engine=ENGINE)) as engine:
        execution = await wait_done(await engine.runtime.admit("quick", {"x": 1}, trigger="manual"))
        record = await reaches(probe, execution.id, Status.SUCCESS)  # written by the background writer
    # A summary keeps the outcome, not the input (request headers and bodies would dominate its cost).
    assert (record.output, record.input, record.durable) == ({"n": 2}, None, False)
    assert await probe.load_steps(execution.id) == []
    assert [r.id for r in (await probe.list_executions(workflow="quick")).items] == [execution.id]


# -- resume --------------------------------------------------------------------------------------------------

def resumable(url: str) -> str:
    return app_yaml(f"""
        chain:
          steps:
            - id: first
              http: {http(url, "/hit/first")}
            - id: stuck
              http: {http(url, "/hang/stuck")}
            - id: last
              http: {http(url, "/hit/last", json=FIRST_BODY)}
    """, engine=ENGINE)


async def interrupted(store_url: str, probe: Store, yaml_text: str, counter: Upstream, workflow: str) -> str:
    """Start `workflow` and stop its engine while a step hangs; returns the execution id. The execution is
    interrupted, not cancelled: it stays `running` in the store, owned by nobody."""
    async with engine_on(store_url, yaml_text) as engine:
        execution = await engine.runtime.admit(workflow, {}, trigger="manual")
        async with asyncio.timeout(WAIT_LIMIT):
            await counter.hanging.wait()
    record = await probe.get_execution(execution.id)
    assert record is not None
    assert (record.status, record.owner, record.error) == (Status.RUNNING, None, None)
    return execution.id


async def test_a_resumed_execution_reads_completed_steps_back_instead_of_running_them(
    store_url: str, probe: Store, upstream: tuple[Upstream, str]
) -> None:
    counter, url = upstream
    execution_id = await interrupted(store_url, probe, resumable(url), counter, "chain")
    assert await step_keys(probe, execution_id) == {"first": "success"}

    async with engine_on(store_url, resumable(url)) as engine:
        record = await reaches(probe, execution_id, Status.SUCCESS, Status.ERROR)
        assert sample(engine.metrics, "workflow_executions_total", workflow_type="chain", status="success") == 1
    assert record.status is Status.SUCCESS
    assert counter.calls == {"first": 1, "stuck": 2, "last": 1}
    # `last` got the output `first` produced before the restart, read back from its checkpoint.
    first = (await probe.load_steps(execution_id))[0]
    assert first.output["body"]["token"] == "first-1"
    assert counter.bodies["last"] == [first.output["body"]]
    assert await step_keys(probe, execution_id) == {"first": "success", "stuck": "success", "last": "success"}


async def test_replayable_steps_are_checkpointed_with_the_next_write_and_run_again_on_resume(
    store_url: str, probe: Store, upstream: tuple[Upstream, str]
) -> None:
    counter, url = upstream
    yaml_text = app_yaml(f"""
        chain:
          steps:
            - id: pure
              set: {{n: 1}}
            - id: first
              http: {http(url, "/hit/first", json="{{ steps.pure.output }}")}
            - id: later
              set: {{token: "{{{{ steps.first.output.body.token }}}}-later"}}
            - id: stuck
              http: {http(url, "/hang/stuck")}
    """, engine=ENGINE)
    execution_id = await interrupted(store_url, probe, yaml_text, counter, "chain")
    # `pure` went into the store with `first`'s checkpoint; `later` waited for a next write that never came.
    assert await step_keys(probe, execution_id) == {"pure": "success", "first": "success"}

    async with engine_on(store_url, yaml_text):
        record = await reaches(probe, execution_id, Status.SUCCESS, Status.ERROR)
    assert record.status is Status.SUCCESS
    assert counter.calls == {"first": 1, "stuck": 2}  # the effect ran once; only `later` ran again
    assert counter.bodies["first"] == [{"n": 1}]
    steps = {s.step_key: s for s in await probe.load_steps(execution_id)}
    assert list(steps) == ["pure", "first", "later", "stuck"]
    assert steps["later"].output == {"token": "first-1-later"}


async def test_an_execution_whose_step_was_removed_fails_on_resume(
    store_url: str, probe: Store, upstream: tuple[Upstream, str]
) -> None:
    counter, url = upstream
    execution_id = await interrupted(store_url, probe, resumable(url), counter, "chain")
    # The new config has no step `first`, which the execution already ran.
    renamed = app_yaml(f"""
        chain:
          steps:
            - id: renamed
              http: {http(url, "/hit/renamed")}
            - id: stuck
              http: {http(url, "/hang/stuck")}
    """, engine=ENGINE)
    async with engine_on(store_url, renamed) as engine:
        record = await reaches(probe, execution_id, Status.SUCCESS, Status.ERROR, Status.CANCELLED)
        assert not engine.runtime.live
    assert record.status is Status.ERROR
    assert record.error is not None
    assert record.error["code"] == "cannot_resume"
    assert "first" in record.error["message"]
    assert record.owner is None
    assert counter.calls == {"first": 1, "stuck": 1}  # nothing ran under the new config


# -- parking -------------------------------------------------------------------------------------------------

def napping(url: str) -> str:
    return app_yaml(f"""
        nap:
          steps:
            - id: before
              http: {http(url, "/hit/before")}
            - id: zz
              sleep: 1s
            - id: after
              http: {http(url, "/hit/after", json=BEFORE_BODY)}
    """, engine=ENGINE)


async def holds_nothing(engine: Engine, probe: Store, execution_id: str, workflow: str) -> ExecutionRecord:
    """Wait until the execution parked and let go of its task, then check what it holds: no task, not in the
    runtime's live set, not counted as active, parked in the store. Returns its record."""
    await reaches(probe, execution_id, Status.PARKED)
    await wait_until(lambda: execution_id not in engine.runtime.live and not execution_tasks(execution_id),
                     "the parked execution let go of its task")
    assert sample(engine.metrics, "active_workflows", workflow_type=workflow) == 0
    return await reaches(probe, execution_id, Status.PARKED)


async def test_a_parked_sleep_holds_no_task_and_completes_after_waking(
    store_url: str, probe: Store, upstream: tuple[Upstream, str]
) -> None:
    counter, url = upstream
    async with engine_on(store_url, napping(url)) as engine:
        execution = await engine.runtime.admit("nap", {}, trigger="manual")
        parked = await holds_nothing(engine, probe, execution.id, "nap")
        assert parked.wake_at is not None
        assert await step_keys(probe, execution.id) == {"before": "success", "zz": "sleeping"}
        assert counter.calls == {"before": 1}

        record = await reaches(probe, execution.id, Status.SUCCESS, Status.ERROR)
    assert record.status is Status.SUCCESS
    assert counter.calls == {"before": 1, "after": 1}
    assert counter.bodies["after"] == [{"name": "before", "token": "before-1"}]
    assert await step_keys(probe, execution.id) == {"before": "success", "zz": "success", "after": "success"}


@pytest.mark.parametrize("waits", ["sleep: 30s", "wait_for: {topic: never.comes, timeout: 30s}"])
async def test_the_workflow_timeout_counts_the_time_parked(store_url: str, probe: Store, waits: str) -> None:
    """A sleep or wait_for long enough to park escaped the workflow's timeout: it ran to its own end."""
    async with engine_on(store_url, app_yaml(f"""
        slow:
          timeout: 600ms
          steps:
            - id: zz
              {waits}
          on_error:
            - id: noted
              set: {{code: "{{{{ error.code }}}}"}}
    """, engine=ENGINE)) as engine:
        loop = asyncio.get_running_loop()
        started = loop.time()
        execution = await engine.runtime.admit("slow", {}, trigger="manual")
        parked = await reaches(probe, execution.id, Status.PARKED)
        assert parked.wake_at is not None
        assert parked.wake_at - parked.created_at < 1.0  # it wakes at the workflow's deadline, not in 30 s
        record = await reaches(probe, execution.id, Status.ERROR, Status.SUCCESS)
        elapsed = loop.time() - started
    assert record.status is Status.ERROR
    assert record.error is not None
    assert record.error["code"] == "timeout"
    assert "timed out after 0.6s" in record.error["message"]
    assert elapsed < 10  # bounded by the timeout and the poll interval, not by the 30 s wait
    assert (await step_keys(probe, execution.id))["noted"] == "success"


async def test_a_parked_sleep_survives_an_engine_restart(
    store_url: str, probe: Store, upstream: tuple[Upstream, str]
) -> None:
    counter, url = upstream
    async with engine_on(store_url, napping(url)) as engine:
        execution = await engine.runtime.admit("nap", {}, trigger="manual")
        await holds_nothing(engine, probe, execution.id, "nap")
    parked = await probe.get_execution(execution.id)
    assert parked is not None
    assert parked.status is Status.PARKED  # a clean stop leaves it where it was
    assert counter.calls == {"before": 1}

    async with engine_on(store_url, napping(url)):
        record = await reaches(probe, execution.id, Status.SUCCESS, Status.ERROR)
    assert record.status is Status.SUCCESS
    assert counter.calls == {"before": 1, "after": 1}
    assert counter.bodies["after"] == [{"name": "before", "token": "before-1"}]


async def test_cancelling_a_parked_execution_records_it_cancelled(store_url: str, probe: Store) -> None:
    async with engine_on(store_url, app_yaml("""
        nap:
          steps:
            - sleep: 1h
            - set: {woke: true}
    """, engine=ENGINE)) as engine:
        execution = await engine.runtime.admit("nap", {}, trigger="manual")
        await reaches(probe, execution.id, Status.PARKED)
        cancelled = await engine.runtime.cancel(execution.id)
        assert cancelled.status is Status.CANCELLED
        record = await probe.get_execution(execution.id)
        assert record is not None
        assert (record.status, record.wake_at, record.owner) == (Status.CANCELLED, None, None)
        assert record.error is not None
        assert record.error["code"] == "cancelled"
        # Cancelled is final: its timer no longer wakes it, and cancelling again changes nothing.
        assert (await engine.runtime.cancel(execution.id)).status is Status.CANCELLED


# -- retry ---------------------------------------------------------------------------------------------------

async def test_retry_runs_again_from_the_failed_step(
    store_url: str, probe: Store, upstream: tuple[Upstream, str]
) -> None:
    counter, url = upstream
    async with engine_on(store_url, app_yaml(f"""
        flaky:
          steps:
            - id: one
              http: {http(url, "/hit/one")}
            - id: two
              http: {http(url, "/fail-once/two")}
            - id: three
              http: {http(url, "/hit/three", json=ONE_BODY)}
    """, engine=ENGINE)) as engine:
        failed = await wait_done(await engine.runtime.admit("flaky", {}, trigger="manual"))
        assert failed.status is Status.ERROR
        assert await step_keys(probe, failed.id) == {"one": "success", "two": "error"}

        retried = await wait_done(await engine.runtime.retry(failed.id))
        assert retried.status is Status.SUCCESS
        record = await probe.get_execution(failed.id)
    assert record is not None
    assert (record.status, record.attempt, record.error) == (Status.SUCCESS, 2, None)
    assert counter.calls == {"one": 1, "two": 2, "three": 1}
    assert counter.bodies["three"] == [{"name": "one", "token": "one-1"}]
    attempts = {s.step_key: (s.status, s.attempt) for s in await probe.load_steps(failed.id)}
    assert attempts == {"one": ("success", 1), "two": ("success", 2), "three": ("success", 2)}


async def test_a_running_execution_cannot_be_retried(store_url: str, probe: Store) -> None:
    async with engine_on(store_url, app_yaml("""
        nap:
          steps:
            - sleep: 1h
    """, engine=ENGINE)) as engine:
        execution = await engine.runtime.admit("nap", {}, trigger="manual")
        await reaches(probe, execution.id, Status.PARKED)
        with pytest.raises(WorkflowEngineError) as caught:
            await engine.runtime.retry(execution.id)
        assert caught.value.code == "conflict"
        assert execution.id not in engine.runtime.live
        assert (await reaches(probe, execution.id, Status.PARKED)).attempt == 1


async def test_an_execution_another_live_replica_runs_cannot_be_cancelled_over_it(
    store_url: str, probe: Store, upstream: tuple[Upstream, str]
) -> None:
    counter, url = upstream
    yaml_text = resumable(url)
    async with engine_on(store_url, yaml_text) as runner, engine_on(store_url, yaml_text) as other:
        execution = await runner.runtime.admit("chain", {}, trigger="manual")
        async with asyncio.timeout(WAIT_LIMIT):
            await counter.hanging.wait()
        with pytest.raises(WorkflowEngineError) as caught:
            await other.runtime.cancel(execution.id)
        assert caught.value.code == "conflict"
        assert (await reaches(probe, execution.id, Status.RUNNING)).owner == runner.replica
        # Through the replica that runs it, the cancellation takes.
        await runner.runtime.cancel(execution.id)
        assert (await reaches(probe, execution.id, Status.CANCELLED)).status is Status.CANCELLED
        counter.release()


async def test_durable_executions_still_queued_at_shutdown_are_released_not_cancelled(
    store_url: str, probe: Store
) -> None:
    async with engine_on(store_url, app_yaml("""
        one-at-a-time:
          concurrency: 1
          steps:
            - sleep: 60s
    """, engine="{shutdown_grace: 100ms, park_after: 1h, lease: 30s}")) as engine:
        running = await engine.runtime.admit("one-at-a-time", {}, trigger="manual")
        queued = await engine.runtime.admit("one-at-a-time", {}, trigger="manual")
        await reaches(probe, running.id, Status.RUNNING)
    # Both were interrupted by the shutdown: left in the store for the next replica, owned by nobody.
    for execution, status in ((running, Status.RUNNING), (queued, Status.QUEUED)):
        record = await reaches(probe, execution.id, status)
        assert (record.owner, record.error) == (None, None)
        assert execution.response is not None
        assert execution.response.status == 503
        assert execution.response.body["error"]["code"] == "interrupted"


async def test_an_execution_with_no_row_yet_that_parks_is_written_then_parked_and_one_released_writes_nothing(
        probe: Store) -> None:
    """A message's first delivery (`unrecorded`): parking is a first write (the row, with the checkpoints
    deferred so far, then parked); releasing one that has no row (shutdown) leaves the store untouched."""
    recorder = Recorder(probe, "me", 30.0)

    def first_delivery(execution_id: str) -> Execution:
        execution = Execution(execution_id, "w", {"body": 1}, "message")
        execution.idempotency_key, execution.key_presumed_new = f"bus:{execution_id}", True
        return execution

    parking = first_delivery("p1")
    assert await recorder.create(parking, running=True, durable=True) is None
    assert parking.unrecorded
    assert await probe.get_execution("p1") is None
    recorder.defer_step(parking, "pure", "success", {"v": 1}, time.time())
    await recorder.park(parking, time.time() + 60, None, None)
    record = await probe.get_execution("p1")
    assert record is not None
    assert (record.status, record.idempotency_key, record.input, record.durable) == (Status.PARKED, "bus:p1",
                                                                                    {"body": 1}, True)
    assert [(s.step_key, s.output) for s in await probe.load_steps("p1")] == [("pure", {"v": 1})]
    assert not parking.unrecorded

    interrupted = first_delivery("r1")
    assert await recorder.create(interrupted, running=True, durable=True) is None
    await recorder.release(interrupted)
    assert await probe.get_execution("r1") is None
