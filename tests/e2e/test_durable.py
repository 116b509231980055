"""Durability end to end: SIGKILL in the middle, restart, finish; parked sleeps across restarts; idempotency."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import httpx

from tests.e2e.counter import counter_server
from tests.e2e.process import engine_process, wait_until

APP = Path(__file__).parent / "durable.yaml"


def store_rows(store_url: str, query: str, *args: object) -> list[tuple[object, ...]]:
    path = store_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        return db.execute(query, args).fetchall()


def test_a_killed_engine_resumes_from_the_last_checkpoint(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/store.db"
    with counter_server() as (counter, url):
        env = {"COUNTER_URL": url, "WORKFLOW_STORE": store}
        with engine_process(APP, env=env) as first:
            accepted = httpx.post(f"{first.web}/pipeline", json={})
            assert accepted.status_code == 202
            execution_id = accepted.json()["execution_id"]
            wait_until(lambda: counter.calls["s3"] == 1)  # s1 and s2 are done; s3 is in flight
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(10)
            assert store_rows(store, "select status from executions where id = ?", execution_id) == [("running",)]

        with engine_process(APP, env=env):
            # The lease of the dead replica expires; this one takes the execution over from its checkpoint.
            wait_until(lambda: store_rows(store, "select status from executions where id = ?",
                                          execution_id) == [("success",)], timeout=30)
    assert counter.calls["s1"] == 1
    assert counter.calls["s2"] == 1
    assert counter.calls["s3"] in (1, 2)
    assert counter.calls["s4"] == 1
    assert store_rows(store, "select count(*) from executions where status in ('running', 'queued')") == [(0,)]
    steps = [row[0] for row in store_rows(store, "select step_key from steps where execution_id = ?", execution_id)]
    assert sorted(steps) == ["s1", "s2", "s3", "s4"]


def test_a_parked_sleep_holds_nothing_and_survives_a_restart(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/store.db"
    with counter_server() as (counter, url):
        env = {"COUNTER_URL": url, "WORKFLOW_STORE": store}
        with engine_process(APP, env=env) as first:
            execution_id = httpx.post(f"{first.web}/nap", json={}).json()["execution_id"]
            wait_until(lambda: store_rows(store, "select status from executions where id = ?",
                                          execution_id) == [("parked",)])
            metrics = first.metrics()
            assert 'active_workflows{workflow_type="napper"} 0.0' in metrics
            assert first.stop() == 0  # a clean stop leaves the parked execution where it is
        assert counter.calls["before"] == 1
        assert counter.calls["after"] == 0
        with engine_process(APP, env=env):
            wait_until(lambda: counter.calls["after"] == 1, timeout=30)
            wait_until(lambda: store_rows(store, "select status from executions where id = ?",
                                          execution_id) == [("success",)])
    assert counter.calls["before"] == 1


def test_a_repeated_idempotency_key_returns_the_first_execution(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/store.db"
    with counter_server() as (counter, url):
        env = {"COUNTER_URL": url, "WORKFLOW_STORE": store}
        with engine_process(APP, env=env) as engine:
            first = httpx.post(f"{engine.web}/once", json={}, headers={"Idempotency-Key": "order-7"})
            again = httpx.post(f"{engine.web}/once", json={}, headers={"Idempotency-Key": "order-7"})
            other = httpx.post(f"{engine.web}/once", json={}, headers={"Idempotency-Key": "order-8"})
        with engine_process(APP, env=env) as restarted:
            after_restart = httpx.post(f"{restarted.web}/once", json={}, headers={"Idempotency-Key": "order-7"})
    assert first.status_code == again.status_code == after_restart.status_code == 201
    assert first.json() == again.json() == after_restart.json()
    assert first.headers["x-execution-id"] == again.headers["x-execution-id"] == after_restart.headers["x-execution-id"]
    assert other.headers["x-execution-id"] != first.headers["x-execution-id"]
    assert counter.calls["once"] == 2
