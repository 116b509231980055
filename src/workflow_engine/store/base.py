"""The abstract store every dialect implements; the runtime and the API only see this."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from workflow_engine.errors import WorkflowEngineError
from workflow_engine.store.records import ComponentSource, ExecutionRecord, Page, Status, StepRecord


class StoreError(WorkflowEngineError):
    """The store failed or refused an operation; never ignored. For API callers the store being unreachable
    is a dependency failure (503), not a fault of the engine (500)."""

    code = "store_error"
    http_status = 503
    # The write was run again on the store's own connection after a helper process that had it failed, and may
    # have committed it first (store/batch.py): an insert that finds its own row did its work.
    retried = False


class SchemaTooNewError(StoreError):
    """The database schema is newer than this engine knows: refuse to run rather than corrupt it."""

    code = "schema_too_new"


class Store(ABC):
    """Durable state: executions, step checkpoints, schedule ticks, config versions."""

    url: str

    @abstractmethod
    async def open(self, *, migrate: bool = True) -> None:
        """Connect; apply pending migrations unless `migrate` is False; refuse a newer schema."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections."""

    @abstractmethod
    async def schema_version(self) -> int:
        """The applied migration number (0 for an empty database)."""

    @abstractmethod
    async def migrate(self) -> int:
        """Apply pending migrations; returns the new version."""

    # -- executions -----------------------------------------------------------------------------------------

    @abstractmethod
    async def create_execution(self, record: ExecutionRecord, *,
                               steps: Sequence[StepRecord] = ()) -> tuple[ExecutionRecord, bool]:
        """Insert `record`, and its checkpoints `steps` in the same transaction; with an idempotency key already
        used for its workflow, return that one and False (and write none of `steps`)."""

    @abstractmethod
    async def create_executions(self, records: Sequence[ExecutionRecord]) -> None:
        """Insert rows without idempotency keys in one transaction (summary rows of `durable: false`)."""

    def summary_row(
        self, execution_id: str, *, workflow: str, trigger: str, status: Status, config_version: int | None,
        output: Any, error: dict[str, Any] | None, attempt: int, created_at: float, started_at: float | None,
        finished_at: float, updated_at: float, lease_expires_at: float | None, parent_id: str | None,
        input: Any = None, idempotency_key: str | None = None, durable: bool = False,
    ) -> Any:
        """The summary row of a finished `durable: false` execution, in the form `create_summaries` takes (a
        store may build its driver's row here, on the caller's side, and refuse an output that is not JSON
        data at once with TypeError). This default is the ExecutionRecord `create_executions` takes. `input`
        and `idempotency_key`: a keyed execution recorded only at its end (a message's first delivery);
        `durable`: a durable one (its checkpoints go with it, `step_row`)."""
        return ExecutionRecord(
            id=execution_id, workflow=workflow, trigger=trigger, input=input, status=status,
            config_version=config_version, output=output, error=error, attempt=attempt, created_at=created_at,
            started_at=started_at, finished_at=finished_at, updated_at=updated_at,
            lease_expires_at=lease_expires_at, idempotency_key=idempotency_key, parent_id=parent_id,
            durable=durable,
        )

    def step_row(self, step: StepRecord) -> Any:
        """A checkpoint in the form `create_summaries` takes with its execution's row (this default: itself)."""
        return step

    async def create_summaries(self, rows: Sequence[Any], steps: Sequence[Any] = ()) -> set[str]:
        """Insert `summary_row` rows, and the `step_row` checkpoints `steps` of the rows inserted. Returns the
        ids of keyed rows not inserted because another execution of their workflow has their idempotency key
        (this default inserts those one by one, each with its checkpoints)."""
        plain = [row for row in rows if row.idempotency_key is None]
        await self.create_executions(plain)
        plain_ids = {row.id for row in plain}
        await self.save_steps([step for step in steps if step.execution_id in plain_ids])
        taken: set[str] = set()
        for row in rows:
            if row.idempotency_key is not None and not (await self.create_execution(
                    row, steps=[step for step in steps if step.execution_id == row.id]))[1]:
                taken.add(row.id)
        return taken

    def summary_record(self, row: Any) -> ExecutionRecord:
        """The ExecutionRecord of a `summary_row` row (one not written yet, asked for by the API)."""
        assert isinstance(row, ExecutionRecord)
        return row

    @abstractmethod
    async def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        """One execution, or None."""

    @abstractmethod
    async def update_execution(self, execution_id: str, **fields: Any) -> None:
        """Set fields of an execution (any ExecutionRecord attribute but `id`); `updated_at` is set too.
        An unknown execution raises StoreError `execution_not_found`."""

    @abstractmethod
    async def finish_execution(
        self, execution_id: str, status: Status, output: Any, error: dict[str, Any] | None, finished_at: float,
        *, steps: Sequence[StepRecord] = (),
    ) -> None:
        """Record the end of an execution and release its lease (`execution_not_found` if unknown); `steps`
        are checkpointed with it, all or nothing."""

    @abstractmethod
    async def list_executions(
        self, *, workflow: str | None = None, status: Status | None = None, limit: int = 50, cursor: str | None = None
    ) -> Page:
        """Newest first; `cursor` comes from a previous page."""

    # -- steps ----------------------------------------------------------------------------------------------

    @abstractmethod
    async def save_step(self, step: StepRecord) -> None:
        """Checkpoint a step result (insert or replace by execution and step key)."""

    @abstractmethod
    async def save_steps(self, steps: Sequence[StepRecord]) -> None:
        """Checkpoint step results in order, all or nothing."""

    @abstractmethod
    async def load_steps(self, execution_id: str) -> list[StepRecord]:
        """Every checkpoint of an execution, in the order they were saved."""

    # -- leases, parking, recovery --------------------------------------------------------------------------

    @abstractmethod
    async def claim(self, owner: str, lease_until: float, now: float, limit: int) -> list[ExecutionRecord]:
        """Take up to `limit` executions nobody holds: queued/running with no lease or an expired one, or parked
        with `wake_at <= now`. They become `running`, owned by `owner` until `lease_until`. Safe across replicas.
        So an execution the caller means to run itself must be created with its owner and lease set."""

    @abstractmethod
    async def claim_one(self, execution_id: str, owner: str, lease_until: float, expect: Status) -> bool:
        """Take one execution if it is still in status `expect` (a parked one woken by its event)."""

    @abstractmethod
    async def heartbeat(self, owner: str, execution_ids: Sequence[str], lease_until: float) -> int:
        """Extend the leases `owner` holds; returns how many it still holds."""

    @abstractmethod
    async def release_owner(self, owner: str) -> int:
        """Drop every lease `owner` holds on queued/running executions, so any replica can claim them at once
        (a replica restarted with a stable id frees its previous run's work); returns how many."""

    @abstractmethod
    async def park(self, execution_id: str, wake_at: float | None, wait_topic: str | None,
                   wait_state: dict[str, Any] | None, *, steps: Sequence[StepRecord] = ()) -> None:
        """Mark an execution parked (no owner) until `wake_at` or an event on `wait_topic`; `steps` are
        checkpointed with it, all or nothing."""

    @abstractmethod
    async def waiting_on(self, topic: str) -> list[ExecutionRecord]:
        """Parked executions waiting for an event on `topic`."""

    # -- schedules, config, retention -----------------------------------------------------------------------

    @abstractmethod
    async def fire_tick(self, workflow: str, tick: float) -> bool:
        """Claim schedule tick `tick` of `workflow`; True for exactly one caller across all replicas."""

    @abstractmethod
    async def last_tick(self, workflow: str) -> float | None:
        """The latest tick fired for `workflow`."""

    @abstractmethod
    async def save_config(self, text: str, digest: str) -> int:
        """Record an applied config; returns its version (the same version for the same digest)."""

    @abstractmethod
    async def get_config(self, version: int) -> str | None:
        """The config text of `version`."""

    # -- dynamic component sources --------------------------------------------------------------------------

    @abstractmethod
    async def save_component(self, name: str, source: str, digest: str) -> None:
        """Keep the uploaded source of component `name` (replacing an earlier upload)."""

    @abstractmethod
    async def get_component(self, name: str) -> ComponentSource | None:
        """The uploaded source of component `name`, or None."""

    @abstractmethod
    async def list_components(self) -> list[ComponentSource]:
        """Every uploaded component source, by name."""

    @abstractmethod
    async def delete_component(self, name: str) -> bool:
        """Drop the uploaded source of `name`; whether there was one."""

    @abstractmethod
    async def prune(self, finished_before: float, batch: int) -> int:
        """Delete up to `batch` finished executions (and their steps) older than `finished_before`, and up to
        `batch` schedule ticks before it that are not their workflow's latest; returns the rows deleted."""
