"""Step checkpoints: insert, replace in place, load order, isolation between executions."""

from __future__ import annotations

import pytest

from workflow_engine.store.base import Store, StoreError
from workflow_engine.store.records import ExecutionRecord, StepRecord


async def test_save_replace_and_load_in_saved_order(store: Store) -> None:
    for execution_id in ("e1", "e2"):
        await store.create_execution(ExecutionRecord(id=execution_id, workflow="w", trigger="m", input=None))
    # Keys chosen so that neither alphabetical order nor equal timestamps could produce the saved order.
    keys = ["zeta", "alpha", "lines[2].price", "mid"]
    for i, key in enumerate(keys):
        await store.save_step(StepRecord("e1", key, "error" if key == "alpha" else "success", output={"i": i}))
    await store.save_step(StepRecord("e2", "alpha", "success", output="other execution"))
    retried = StepRecord(
        "e1", "alpha", "success", attempt=2, output={"ünï": [None, 1.5]}, error=None,
        started_at=10.0, finished_at=11.5, extra={"http_status": 200},
    )
    await store.save_step(retried)

    loaded = await store.load_steps("e1")
    assert [s.step_key for s in loaded] == keys
    assert loaded[1] == retried
    assert loaded[0] == StepRecord("e1", "zeta", "success", output={"i": 0})
    assert [s.output for s in await store.load_steps("e2")] == ["other execution"]
    assert await store.load_steps("none") == []


async def test_error_values_roundtrip(store: Store) -> None:
    await store.create_execution(ExecutionRecord(id="e1", workflow="w", trigger="m", input=None))
    error = {"type": "StepTimeoutError", "message": "took > 2s", "details": {"attempts": [1, 2]}}
    await store.save_step(StepRecord("e1", "s", "error", output=None, error=error))
    assert (await store.load_steps("e1"))[0].error == error


async def test_step_of_unknown_execution_is_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="save_step"):
        await store.save_step(StepRecord("missing", "s", "success"))
