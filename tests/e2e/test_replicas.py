"""Two real `workflow run` replicas on one PostgreSQL: one is SIGKILLed while it runs executions and the other
finishes them once the lease expired; a schedule configured on both fires once per tick.

PostgreSQL comes from `WORKFLOW_TEST_PG` (default: the local server); each test gets its own schema, dropped
afterwards. When the server is unreachable the tests are skipped, or fail under `CI`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from tests.e2e.counter import counter_server
from tests.e2e.process import engine_process, sample, wait_until

APP = Path(__file__).parent / "replicas.yaml"
PG_URL = os.environ.get("WORKFLOW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
EXECUTIONS = 4
# Seconds both replicas run the schedules side by side; REPLICA_SCHEDULE_SECONDS=180 runs the longer check.
SCHEDULE_WINDOW = float(os.environ.get("REPLICA_SCHEDULE_SECONDS", "13"))


def _pg(query: str, *args: Any, schema: str | None = None) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        settings = {"search_path": f'"{schema}"'} if schema else {}
        conn = await asyncpg.connect(PG_URL, timeout=5, server_settings=settings)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


@pytest.fixture
def store() -> Iterator[tuple[str, str]]:
    """A store URL on a fresh PostgreSQL schema (dropped afterwards), and the schema's name."""
    try:
        _pg("select 1")
    except (OSError, asyncpg.PostgresError) as exc:
        problem = f"PostgreSQL at {PG_URL} is unreachable ({type(exc).__name__}: {exc}); set WORKFLOW_TEST_PG"
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    schema = f"test_replicas_{uuid.uuid4().hex[:12]}"
    parts = urlsplit(PG_URL)
    url = urlunsplit(parts._replace(query=urlencode([*parse_qsl(parts.query), ("schema", schema)])))
    try:
        yield url, schema
    finally:
        _pg(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def statuses(schema: str, workflow: str) -> dict[str, str]:
    """Execution id -> status of every execution of `workflow`."""
    rows = _pg("select id, status from executions where workflow = $1", workflow, schema=schema)
    return {row["id"]: row["status"] for row in rows}


def test_a_replica_finishes_the_executions_of_a_killed_one(store: tuple[str, str]) -> None:
    url, schema = store
    with counter_server() as (counter, counter_url):
        env = {"COUNTER_URL": counter_url, "WORKFLOW_STORE": url}
        with engine_process(APP, env=env) as a, engine_process(APP, env=env) as b:
            ids = []
            for n in range(EXECUTIONS):
                accepted = httpx.post(f"{a.web}/pipeline", json={"n": n}, timeout=10)
                assert accepted.status_code == 202
                ids.append(accepted.json()["execution_id"])
            # s1 done and s2 in flight (hanging) in every execution, all on A.
            wait_until(lambda: all(counter.calls[f"s2-{n}"] == 1 for n in range(EXECUTIONS)))
            rows = _pg("select status, owner from executions where workflow = 'pipeline'", schema=schema)
            assert [row["status"] for row in rows] == ["running"] * EXECUTIONS
            owners = {row["owner"] for row in rows}
            assert len(owners) == 1
            assert None not in owners

            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait(10)
            # A's leases expire; B claims the executions and resumes them from their checkpoints.
            wait_until(lambda: set(statuses(schema, "pipeline").values()) == {"success"}, timeout=30)
            finished_by_b = sample(b.metrics(), "workflow_executions_total", workflow_type="pipeline",
                                   status="success")

    assert finished_by_b == EXECUTIONS
    assert sorted(statuses(schema, "pipeline")) == sorted(ids)
    for n in range(EXECUTIONS):
        assert counter.calls[f"s1-{n}"] == 1  # done before the kill: read back, not run again
        assert counter.calls[f"s2-{n}"] == 2  # in flight at the kill: its first call never answered
        assert counter.calls[f"s3-{n}"] == 1
    steps = _pg("select execution_id, step_key, status from steps", schema=schema)
    assert Counter((row["step_key"], row["status"]) for row in steps) == {
        ("s1", "success"): EXECUTIONS, ("s2", "success"): EXECUTIONS, ("s3", "success"): EXECUTIONS}
    left = _pg("select count(*) from executions where status in ('queued', 'running', 'parked')", schema=schema)
    assert left[0][0] == 0


def _scheduled_at(value: Any) -> datetime:
    data = json.loads(value) if isinstance(value, str) else value
    return datetime.fromisoformat(data["scheduled_at"])


def test_schedules_on_two_replicas_fire_once_per_tick(store: tuple[str, str]) -> None:
    url, schema = store
    with counter_server() as (counter, counter_url):
        env = {"COUNTER_URL": counter_url, "WORKFLOW_STORE": url, "TICK_EVERY": "1s", "TICK_CRON": "* * * * * *"}
        with engine_process(APP, env=env) as a, engine_process(APP, env=env) as b:
            time.sleep(SCHEDULE_WINDOW)
            # SIGTERM: both drain their running executions before they exit.
            assert b.stop() == 0
            assert a.stop() == 0

    for workflow in ("tick-every", "tick-cron"):
        rows = _pg("select input, status, error, owner from executions where workflow = $1", workflow,
                   schema=schema)
        per_tick = Counter(_scheduled_at(row["input"]) for row in rows)
        assert set(per_tick.values()) == {1}, f"{workflow}: ticks run more than once: {per_tick}"
        ticks = sorted(per_tick)
        assert len(ticks) >= SCHEDULE_WINDOW * 0.75, f"{workflow}: {len(ticks)} ticks"
        # Both replicas compute the same ticks, so no two are closer than the 1 s period.
        gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(ticks)]
        assert min(gaps) >= 0.999, f"{workflow}: ticks closer than the period: {gaps}"
        # A tick still running when the 1 s shutdown grace ended (a loaded machine) is released, not lost: left
        # `running` with no owner, for the next replica to resume. Anything else must have succeeded.
        done = [row for row in rows if row["status"] == "success"]
        released = [row for row in rows if row["status"] == "running" and row["owner"] is None]
        assert len(done) + len(released) == len(rows), [(row["status"], row["error"]) for row in rows]
        assert len(released) <= 2  # at most the tick in flight on each replica at the stop
        assert len(done) <= counter.calls[workflow] <= len(rows)  # the step ran once per tick
        fired = _pg("select count(*) from schedule_ticks where workflow = $1", workflow, schema=schema)
        assert fired[0][0] == len(ticks)
