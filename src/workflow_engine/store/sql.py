"""`SqlStore`: the `Store` on SQLAlchemy Core, for SQLite (embedded default) and PostgreSQL (many replicas).

Every operation on the hot path (create, update, finish, save_step, park) is one statement, a statement object
built once (`statements.py`) so SQLAlchemy compiles it once, committed with the concurrent writes of other
executions in one transaction (group commit, `batch.py`; on a SQLite file by the writer process,
`writer_process.py`, as are `durable: false` summary rows); other operations are single autocommitted
statements. How a statement reaches each database is `runner.py`; the few statements that differ by dialect are
in `statements.py`.
"""

from __future__ import annotations

import functools
import itertools
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, cast

import orjson
import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Row
from sqlalchemy.sql.base import Executable

from workflow_engine.store.base import Store, StoreError
from workflow_engine.store.batch import GroupCommit
from workflow_engine.store.connect import StoreUrl
from workflow_engine.store.migrations import LATEST, apply_migrations, check_version, read_version
from workflow_engine.store.paging import decode_cursor, encode_cursor, list_statement, page_size
from workflow_engine.store.records import ComponentSource, ExecutionRecord, Page, Status, StepRecord
from workflow_engine.store.runner import Outcome, Runner, runner_for
from workflow_engine.store.schema import EXECUTION_FIELDS, JsonText, executions
from workflow_engine.store.schema import steps as steps_table
from workflow_engine.store.statements import statements_for, update_statement
from workflow_engine.store.writer_child import (
    SKIP_SAVED_STEPS,
    SKIP_TAKEN_KEYS,
    insert_steps,
    insert_steps_sql,
    skipped_keyed_rows,
)
from workflow_engine.store.writer_process import StoreRowsRefusedError, WriterGone, WriterProcess

_UPDATABLE = EXECUTION_FIELDS - {"id"}


def _execution(row: Row[Any]) -> ExecutionRecord:
    return ExecutionRecord(**row._mapping)


_log = structlog.get_logger("workflow_engine.store")


def _not_found(operation: str, execution_id: str) -> StoreError:
    return StoreError(
        f"store {operation}: execution '{execution_id}' does not exist", code="execution_not_found", http_status=404
    )


class SqlStore(Store):
    """The store on SQLAlchemy Core; SQLite or PostgreSQL by the URL it was made from."""

    def __init__(self, target: StoreUrl, *, clock: Callable[[], float] = time.time,
                 helper_process: bool = True) -> None:
        self.url = target.display
        self._target = target
        self._sqlite = target.dialect == "sqlite"
        self._q = statements_for(target.dialect)
        self._clock = clock
        self._runner: Runner | None = None
        self._group: GroupCommit | None = None
        # SQLite files take summary rows and hot-path writes through a helper process (writer_process.py);
        # `:memory:` databases exist only on the store's own connection.
        database = target.sa_url.database if target.dialect == "sqlite" else None
        self.writer_process = (WriterProcess(os.path.abspath(database), _EXECUTION_COLUMNS, _STEP_COLUMNS)
                               if helper_process and database and database != ":memory:" else None)

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def open(self, *, migrate: bool = True) -> None:
        """Connect; apply pending migrations unless `migrate` is False; refuse a newer schema (and, when not
        migrating, an older one: the engine's statements need the current tables)."""
        if self._runner is not None:
            raise StoreError(f"store '{self.url}' is already open")
        runner = runner_for(self._target)
        self._runner = runner
        # SQLite has one connection; PostgreSQL commits a few batches at once on pooled connections.
        flushes = 1 if self._target.dialect == "sqlite" else max(1, min(4, self._target.pool_size))
        self._group = GroupCommit(runner, flushes, self._error, driver_sql=self._sqlite,
                                  process=lambda: self.writer_process,
                                  gone=self._writer_gone, asyncpg_sql=not self._sqlite)
        try:
            async with self._errors("open"):
                await runner.open()
            if migrate:
                await self.migrate()
            else:
                await self._check_current()
        except BaseException:
            await self.close()
            raise

    async def _check_current(self) -> None:
        version = await self.schema_version()
        check_version(version, self.url)
        if version < LATEST:
            raise StoreError(
                f"store '{self.url}': schema version {version} is older than {LATEST}; run `workflow db upgrade`",
                code="schema_too_old",
            )

    async def close(self) -> None:
        """Release connections (safe to call twice)."""
        group, self._group = self._group, None
        if group is not None:
            await group.close()
        if self.writer_process is not None:
            await self.writer_process.close()
        runner, self._runner = self._runner, None
        if runner is not None:
            async with self._errors("close"):
                await runner.close()

    async def schema_version(self) -> int:
        """The applied migration number (0 for an empty database)."""
        read = functools.partial(read_version, dialect=self._target.dialect)
        async with self._errors("schema_version"):
            return await self._open_runner("schema_version").call(read)

    async def migrate(self) -> int:
        """Apply pending migrations in one transaction, safe against replicas doing the same; returns the
        new version."""
        apply = functools.partial(
            apply_migrations, dialect=self._target.dialect, url=self.url, pg_schema=self._target.pg_schema
        )
        async with self._errors("migrate"):
            return await self._open_runner("migrate").transaction(apply)

    def _open_runner(self, operation: str) -> Runner:
        if self._runner is None:
            raise StoreError(f"store {operation}: store '{self.url}' is not open")
        return self._runner

    def _error(self, operation: str, exc: BaseException) -> BaseException:
        """A driver error (or the writer process's report of one) as the StoreError naming the operation; other
        errors as they are."""
        if isinstance(exc, StoreRowsRefusedError):
            return StoreError(f"store {operation} failed ({self.url}): {exc}")
        if not isinstance(exc, sa.exc.SQLAlchemyError | OSError):
            return exc
        cause = getattr(exc, "orig", None) or exc
        error = StoreError(f"store {operation} failed ({self.url}): {type(cause).__name__}: {cause}")
        error.__cause__ = exc
        return error

    @asynccontextmanager
    async def _errors(self, operation: str) -> AsyncIterator[None]:
        """Driver errors become a StoreError naming the operation (httpx's map_exceptions, for the store)."""
        try:
            yield
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            raise self._error(operation, exc) from exc

    async def _execute(self, operation: str, statement: Executable, params: dict[str, Any]) -> Outcome:
        runner = self._open_runner(operation)
        async with self._errors(operation):
            return await runner.execute(statement, params)

    async def _write(self, operation: str, statement: Executable, params: dict[str, Any]) -> Outcome:
        """A hot-path write: committed in the next group commit (`batch.py`), with other executions' writes."""
        self._open_runner(operation)
        assert self._group is not None
        return await self._group.execute(operation, statement, params)

    async def _write_all(self, writes: list[tuple[str, Executable, dict[str, Any]]]) -> list[Outcome]:
        """Hot-path writes that commit together, in order, in the next group commit."""
        self._open_runner(writes[0][0])
        assert self._group is not None
        return await self._group.execute_all(writes)

    def _step_writes(self, steps: Sequence[StepRecord]) -> list[tuple[str, Executable, dict[str, Any]]]:
        return [("save_step", self._q.save_step, dict(vars(step))) for step in steps]

    # -- executions -----------------------------------------------------------------------------------------

    async def create_execution(self, record: ExecutionRecord, *,
                               steps: Sequence[StepRecord] = ()) -> tuple[ExecutionRecord, bool]:
        """Insert `record` (zero `created_at`/`updated_at` are set from the clock); with an idempotency key
        already used for its workflow, return the existing execution and False. `steps`: its checkpoints,
        in the same transaction (an execution first written after some of its steps ran); with a taken key
        none of them is written."""
        if not record.created_at or not record.updated_at:
            created = record.created_at or self._clock()
            record = replace(record, created_at=created, updated_at=record.updated_at or created)
        params = dict(vars(record))
        if record.idempotency_key is None:
            try:
                if steps:
                    await self._write_all([("create_execution", self._q.insert_execution, params),
                                           *self._step_writes(steps)])
                else:
                    await self._write("create_execution", self._q.insert_execution, params)
            except StoreError as exc:
                # Run again after the writer process failed: the row it finds may be its own, committed then.
                if not exc.retried or not await self._is_own_row(record):
                    raise
            return record, True
        if steps:
            try:
                await self._write_all([("create_execution", self._q.insert_execution_idempotent, params),
                                       *self._step_writes(steps)])
            except StoreError:
                # With the key taken the insert did nothing and the checkpoints, naming an execution that is
                # not there, were refused with it: find the execution that has the key, as below.
                found = await self._by_key(record)
                if found is None or found.id == record.id:
                    raise
                return found, False
            return record, True
        if (await self._write("create_execution", self._q.insert_execution_idempotent, params)).rows:
            return record, True
        # The conflicting row is committed (ON CONFLICT waits for a concurrent inserter to finish): read it.
        found = await self._by_key(record)
        if found is None:
            raise StoreError(
                f"store create_execution: idempotency key '{record.idempotency_key}' of workflow "
                f"'{record.workflow}' conflicted but its execution is gone"
            )
        if found.id == record.id:  # this very insert, committed by a writer process that failed after it
            return record, True
        return found, False

    async def _by_key(self, record: ExecutionRecord) -> ExecutionRecord | None:
        """The execution of `record`'s workflow that has `record`'s idempotency key, if one has."""
        key = {"workflow": record.workflow, "idempotency_key": record.idempotency_key}
        existing = (await self._execute("create_execution", self._q.get_by_idempotency_key, key)).rows
        return _execution(existing[0]) if existing else None

    async def _is_own_row(self, record: ExecutionRecord) -> bool:
        """Whether the row with `record`'s id is `record`'s own insert (same workflow and creation time)."""
        found = await self.get_execution(record.id)
        return found is not None and (found.workflow, found.created_at) == (record.workflow, record.created_at)

    async def create_executions(self, records: Sequence[ExecutionRecord]) -> None:
        """Insert rows without idempotency keys in one transaction (one commit for many summary rows)."""
        if not records:
            return
        now = self._clock()
        # The recorder sets both times; copying every record to fill them cost ~40 us a row.
        records = [r if r.created_at and r.updated_at else
                   replace(r, created_at=r.created_at or now, updated_at=r.updated_at or now) for r in records]
        runner = self._open_runner("create_executions")
        async with self._errors("create_executions"):
            if self._target.dialect == "sqlite":
                # The rows are built here, on the event loop: built on the store's thread, that Python work
                # made the loop wait for the GIL (more than it costs here).
                await self._insert_sqlite_rows(runner, [_row(r) for r in records], "create_executions")
            else:
                params = [dict(vars(r)) for r in records]
                statement = self._q.insert_execution
                await runner.transaction(lambda conn: conn.execute(statement, params))

    def summary_row(
        self, execution_id: str, *, workflow: str, trigger: str, status: Status, config_version: int | None,
        output: Any, error: dict[str, Any] | None, attempt: int, created_at: float, started_at: float | None,
        finished_at: float, updated_at: float, lease_expires_at: float | None, parent_id: str | None,
        input: Any = None, idempotency_key: str | None = None, durable: bool = False,
    ) -> Any:
        """The driver's row itself (`_row`'s tuple, the values as both dialects' columns take them), built in
        one expression: an ExecutionRecord and `_row` cost ~3 us a row more, on the event loop."""
        # In _EXECUTION_COLUMNS order (checked at import).
        return (execution_id, workflow, trigger, None if input is None else orjson.dumps(input).decode(),
                str(status), config_version,
                None if output is None else orjson.dumps(output).decode(),
                None if error is None else orjson.dumps(error).decode(),
                attempt, created_at, started_at, finished_at, updated_at, None, lease_expires_at, idempotency_key,
                parent_id, None, None, None, durable)

    def step_row(self, step: StepRecord) -> Any:
        """A checkpoint as the driver's row `create_summaries` takes with its execution's row (the steps
        table's columns, in order)."""
        return (step.execution_id, step.step_key, step.attempt, step.status,
                None if step.output is None else orjson.dumps(step.output).decode(),
                None if step.error is None else orjson.dumps(step.error).decode(),
                step.started_at, step.finished_at, orjson.dumps(step.extra).decode())

    async def create_summaries(self, rows: Sequence[Any], steps: Sequence[Any] = ()) -> set[str]:
        """Insert `summary_row` rows, and the `step_row` checkpoints `steps` of the rows inserted, in one
        transaction (through the helper process on a SQLite file); returns the ids of keyed rows not inserted
        because their idempotency key belongs to another execution (none of their checkpoints is written)."""
        if not rows:
            return set()
        runner = self._open_runner("create_summaries")
        async with self._errors("create_summaries"):
            if self._sqlite:
                return await self._insert_sqlite_rows(runner, list(rows), "create_summaries", list(steps))
            return await self._insert_postgres_rows(runner, rows, steps)

    async def _insert_postgres_rows(self, runner: Runner, rows: Sequence[tuple[Any, ...]],
                                    steps: Sequence[tuple[Any, ...]]) -> set[str]:
        """PostgreSQL: every row in one statement on asyncpg, its columns bound as arrays and unnested, keyed
        rows whose key is taken skipped; returns their ids (the keyed ids not in RETURNING). The checkpoints of
        the rows inserted follow in a second such statement, in order."""
        import asyncpg  # type: ignore[import-untyped]  # the `postgres` extra: there when this store is

        columns = list(zip(*rows, strict=True))
        try:
            async with runner.driver_transaction() as connection:
                inserted = {record[0] for record in await connection.fetch(_POSTGRES_SUMMARY_INSERT, *columns)}
                kept = [step for step in steps if step[0] in inserted]
                if kept:
                    await connection.execute(_POSTGRES_STEPS_INSERT, *zip(*kept, strict=True))
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:  # refused or cut off: rolled back
            raise StoreError(f"store create_summaries failed ({self.url}): {type(exc).__name__}: {exc}") from exc
        keyed = {row[0] for row in rows if row[_KEY_COLUMN] is not None}
        return keyed - inserted if keyed else set()

    def summary_record(self, row: Any) -> ExecutionRecord:
        """The ExecutionRecord of a `summary_row` row."""
        values = dict(zip(_EXECUTION_COLUMNS, row, strict=True))
        for name in _JSON_COLUMNS:
            if values[name] is not None:
                values[name] = orjson.loads(values[name])
        values["status"] = Status(values["status"])
        return ExecutionRecord(**values)

    async def _insert_sqlite_rows(self, runner: Runner, rows: list[tuple[Any, ...]], operation: str,
                                  steps: list[tuple[Any, ...]] | None = None) -> set[str]:
        by_process = await self._insert_by_process(rows, operation, steps or [])
        if isinstance(by_process, set):
            return by_process
        # After a child failed (by_process False) it may have committed the batch first: rows already
        # there (same id) are skipped (their checkpoints too); any other constraint still fails the batch.
        retry = by_process is False
        return await runner.transaction(lambda conn: _insert_sqlite(conn, rows, skip_existing=retry, steps=steps))

    async def _insert_by_process(self, rows: list[tuple[Any, ...]], operation: str,
                                 steps: list[tuple[Any, ...]]) -> set[str] | bool | None:
        """Commit summary rows through the writer process: once done, the ids of rows skipped because their
        idempotency key is taken; False when the process failed and the store must write them itself; None when
        there is no process."""
        writer = self.writer_process
        if writer is None:
            return None
        try:
            return await writer.insert(rows, steps)
        except WriterGone as exc:
            self._writer_gone(writer, exc, len(rows))
            return False
        except StoreRowsRefusedError as exc:
            raise StoreError(f"store {operation} failed ({self.url}): {exc}") from exc

    def _writer_gone(self, writer: WriterProcess, exc: WriterGone, size: int) -> None:
        """The writer process failed a batch of `size` rows or writes, which the store's thread writes now."""
        if writer.disabled is not None:
            if self.writer_process is writer:  # said once: from now on the thread writes everything
                self.writer_process = None
                _log.error("store writer process turned off; the store's thread writes every batch",
                           store=self.url, reason=writer.disabled)
            return
        _log.warning("store writer process unavailable; the store's thread writes the batch",
                     store=self.url, batch=size, error=str(exc))

    async def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        """One execution, or None."""
        rows = (await self._execute("get_execution", self._q.get_execution, {"id": execution_id})).rows
        return _execution(rows[0]) if rows else None

    async def update_execution(self, execution_id: str, **fields: Any) -> None:
        """Set fields of an execution (any ExecutionRecord attribute but `id`); `updated_at` is set from the
        clock unless given. An unknown execution is an error (`execution_not_found`)."""
        unknown = fields.keys() - _UPDATABLE
        if unknown:
            raise StoreError(f"store update_execution: unknown execution field(s) {sorted(unknown)}")
        values = {"updated_at": self._clock(), **fields}
        params = {f"p_{name}": value for name, value in values.items()}
        params["p_id"] = execution_id
        result = await self._write("update_execution", update_statement(tuple(sorted(values))), params)
        if result.rowcount == 0:
            raise _not_found("update_execution", execution_id)

    async def finish_execution(
        self, execution_id: str, status: Status, output: Any, error: dict[str, Any] | None, finished_at: float,
        *, steps: Sequence[StepRecord] = (),
    ) -> None:
        """Record the end of an execution and release its lease (and any wait); `steps` are checkpointed in
        the same transaction, before it."""
        params = {
            "p_id": execution_id,
            "p_status": status,
            "p_output": output,
            "p_error": error,
            "p_finished_at": finished_at,
        }
        result = (await self._write_all([*self._step_writes(steps),
                                         ("finish_execution", self._q.finish_execution, params)]))[-1]
        if result.rowcount == 0:
            raise _not_found("finish_execution", execution_id)

    async def list_executions(
        self, *, workflow: str | None = None, status: Status | None = None, limit: int = 50, cursor: str | None = None
    ) -> Page:
        """Newest first by (created_at, id); `limit` is kept within 1..500; `cursor` comes from a previous page."""
        size = page_size(limit)
        params: dict[str, Any] = {"workflow": workflow, "status": status, "page_limit": size + 1}
        if cursor is not None:
            params["after_created_at"], params["after_id"] = decode_cursor(cursor)
        statement = list_statement(workflow is not None, status is not None, cursor is not None)
        rows = (await self._execute("list_executions", statement, params)).rows
        items = [_execution(row) for row in rows[:size]]
        next_cursor = encode_cursor(items[-1].created_at, items[-1].id) if len(rows) > size else None
        return Page(items, next_cursor)

    # -- steps ----------------------------------------------------------------------------------------------

    async def save_step(self, step: StepRecord) -> None:
        """Checkpoint a step result (insert, or replace in place by execution and step key)."""
        await self._write("save_step", self._q.save_step, dict(vars(step)))

    async def save_steps(self, steps: Sequence[StepRecord]) -> None:
        """Checkpoint step results in order, in one transaction."""
        if steps:
            await self._write_all(self._step_writes(steps))

    async def load_steps(self, execution_id: str) -> list[StepRecord]:
        """Every checkpoint of an execution, in the order they were first saved."""
        result = await self._execute("load_steps", self._q.load_steps, {"execution_id": execution_id})
        return [StepRecord(**row._mapping) for row in result.rows]

    # -- leases, parking, recovery --------------------------------------------------------------------------

    async def claim(self, owner: str, lease_until: float, now: float, limit: int) -> list[ExecutionRecord]:
        """Take up to `limit` executions nobody holds: queued/running with no lease or an expired one, or parked
        with `wake_at <= now`. They become `running`, owned by `owner` until `lease_until`. One statement; on
        PostgreSQL rows are locked with SKIP LOCKED, so concurrent replicas never take the same one."""
        if limit <= 0:
            return []
        params = {
            "p_owner": owner,
            "p_lease_expires_at": lease_until,
            "p_updated_at": now,
            "p_now": now,
            "p_limit": limit,
        }
        result = await self._execute("claim", self._q.claim, params)
        return [_execution(row) for row in result.rows]

    async def claim_one(self, execution_id: str, owner: str, lease_until: float, expect: Status) -> bool:
        """Take one execution if it is still in status `expect` (a parked one woken by its event)."""
        params = {
            "p_id": execution_id,
            "p_expect": expect,
            "p_owner": owner,
            "p_lease_expires_at": lease_until,
            "p_updated_at": self._clock(),
        }
        result = await self._execute("claim_one", self._q.claim_one, params)
        return result.rowcount == 1

    async def heartbeat(self, owner: str, execution_ids: Sequence[str], lease_until: float) -> int:
        """Extend the leases `owner` holds; returns how many it still holds."""
        if not execution_ids:
            return 0
        ids: Any = list(execution_ids)
        if self._target.dialect == "sqlite":
            ids = orjson.dumps(ids).decode()
        params = {"p_owner": owner, "p_ids": ids, "p_lease_expires_at": lease_until}
        result = await self._execute("heartbeat", self._q.heartbeat, params)
        return result.rowcount

    async def release_owner(self, owner: str) -> int:
        """Drop every lease `owner` holds on queued/running executions (claimable at once); returns how many."""
        params = {"p_owner": owner, "p_updated_at": self._clock()}
        return (await self._execute("release_owner", self._q.release_owner, params)).rowcount

    async def park(
        self, execution_id: str, wake_at: float | None, wait_topic: str | None, wait_state: dict[str, Any] | None,
        *, steps: Sequence[StepRecord] = (),
    ) -> None:
        """Mark an execution parked (no owner, no lease) until `wake_at` or an event on `wait_topic`; `steps`
        are checkpointed in the same transaction, before it."""
        params = {
            "p_id": execution_id,
            "p_wake_at": wake_at,
            "p_wait_topic": wait_topic,
            "p_wait_state": wait_state,
            "p_updated_at": self._clock(),
        }
        result = (await self._write_all([*self._step_writes(steps), ("park", self._q.park, params)]))[-1]
        if result.rowcount == 0:
            raise _not_found("park", execution_id)

    async def waiting_on(self, topic: str) -> list[ExecutionRecord]:
        """Parked executions waiting for an event on `topic`, oldest first."""
        result = await self._execute("waiting_on", self._q.waiting_on, {"topic": topic})
        return [_execution(row) for row in result.rows]

    # -- schedules, config, retention -----------------------------------------------------------------------

    async def fire_tick(self, workflow: str, tick: float) -> bool:
        """Claim schedule tick `tick` of `workflow`; True for exactly one caller across all replicas."""
        result = await self._execute("fire_tick", self._q.fire_tick, {"workflow": workflow, "tick": tick})
        return bool(result.rows)

    async def last_tick(self, workflow: str) -> float | None:
        """The latest tick fired for `workflow`."""
        result = await self._execute("last_tick", self._q.last_tick, {"workflow": workflow})
        tick = result.rows[0][0]
        return None if tick is None else float(tick)

    async def save_config(self, text: str, digest: str) -> int:
        """Record an applied config; returns its version (the same version for the same digest)."""
        params = {"digest": digest, "text": text, "created_at": self._clock()}
        inserted = (await self._execute("save_config", self._q.insert_config, params)).rows
        if inserted:
            return int(inserted[0][0])
        existing = (await self._execute("save_config", self._q.config_version, {"digest": digest})).rows
        return int(existing[0][0])

    async def get_config(self, version: int) -> str | None:
        """The config text of `version`."""
        rows = (await self._execute("get_config", self._q.get_config, {"version": version})).rows
        return str(rows[0][0]) if rows else None

    async def save_component(self, name: str, source: str, digest: str) -> None:
        """Keep the uploaded source of component `name` (replacing an earlier upload)."""
        params = {"name": name, "source": source, "digest": digest, "updated_at": self._clock()}
        await self._execute("save_component", self._q.save_component, params)

    async def get_component(self, name: str) -> ComponentSource | None:
        """The uploaded source of component `name`, or None."""
        rows = (await self._execute("get_component", self._q.get_component, {"name": name})).rows
        return ComponentSource(**rows[0]._mapping) if rows else None

    async def list_components(self) -> list[ComponentSource]:
        """Every uploaded component source, by name."""
        rows = (await self._execute("list_components", self._q.list_components, {})).rows
        return [ComponentSource(**row._mapping) for row in rows]

    async def delete_component(self, name: str) -> bool:
        """Drop the uploaded source of `name`; whether there was one."""
        return (await self._execute("delete_component", self._q.delete_component, {"name": name})).rowcount > 0

    async def prune(self, finished_before: float, batch: int) -> int:
        """Delete up to `batch` finished executions older than `finished_before` (their steps go with them), and
        up to `batch` schedule ticks before it that are not their workflow's latest. Returns the rows deleted;
        call again while it returns anything to drain a backlog in small batches."""
        if batch <= 0:
            return 0
        params = {"p_before": finished_before, "p_batch": batch}
        executions = await self._execute("prune", self._q.prune_executions, params)
        ticks = await self._execute("prune", self._q.prune_ticks, params)
        return executions.rowcount + ticks.rowcount


_EXECUTION_COLUMNS = tuple(column.name for column in executions.columns)
_JSON_COLUMNS = frozenset(column.name for column in executions.columns if isinstance(column.type, JsonText))
# The order `SqlStore.summary_row` writes its tuple in: a changed table must change it too.
_SUMMARY_ROW_ORDER = ("id", "workflow", "trigger", "input", "status", "config_version", "output", "error", "attempt",
                      "created_at", "started_at", "finished_at", "updated_at", "owner", "lease_expires_at",
                      "idempotency_key", "parent_id", "wake_at", "wait_topic", "wait_state", "durable")
if _EXECUTION_COLUMNS != _SUMMARY_ROW_ORDER:
    raise RuntimeError(f"SqlStore.summary_row writes {_SUMMARY_ROW_ORDER}, the table has {_EXECUTION_COLUMNS}")
_KEY_COLUMN = _EXECUTION_COLUMNS.index("idempotency_key")
_STEP_COLUMNS = tuple(column.name for column in steps_table.columns)
# The order `SqlStore.step_row` writes its tuple in.
if _STEP_COLUMNS != ("execution_id", "step_key", "attempt", "status", "output", "error", "started_at", "finished_at",
                     "extra"):
    raise RuntimeError(f"SqlStore.step_row does not write the steps table's columns {_STEP_COLUMNS}")
_SQLITE_STEPS_INSERT = insert_steps_sql(_STEP_COLUMNS)


def _postgres_array_type(column: sa.Column[Any]) -> str:
    kind = column.type
    if isinstance(kind, sa.Boolean):
        return "boolean[]"
    if isinstance(kind, sa.BigInteger):
        return "bigint[]"
    if isinstance(kind, sa.Integer):
        return "integer[]"
    if isinstance(kind, sa.Double | sa.Float):
        return "double precision[]"
    return "text[]"  # Text, JsonText (serialised), StatusText


def _postgres_summary_insert() -> str:
    """Summary rows on PostgreSQL: one array per column, unnested into rows (one statement for a whole batch);
    rows whose idempotency key is taken are skipped; the ids inserted are returned."""
    names = ", ".join(f'"{column.name}"' for column in executions.columns)
    arrays = ", ".join(f"${n}::{_postgres_array_type(column)}" for n, column in enumerate(executions.columns, 1))
    return f"INSERT INTO executions ({names}) SELECT * FROM unnest({arrays}) {SKIP_TAKEN_KEYS} RETURNING id"


_POSTGRES_SUMMARY_INSERT = _postgres_summary_insert()


def _postgres_steps_insert() -> str:
    """Checkpoints written with their executions' rows on PostgreSQL: unnested in order (`seq` orders them)."""
    names = ", ".join(f'"{column.name}"' for column in steps_table.columns)
    arrays = ", ".join(f"${n}::{_postgres_array_type(column)}" for n, column in enumerate(steps_table.columns, 1))
    return (f"INSERT INTO steps ({names}) SELECT {names} FROM unnest({arrays}) WITH ORDINALITY AS s({names}, n) "
            f"ORDER BY n {SKIP_SAVED_STEPS}")


_POSTGRES_STEPS_INSERT = _postgres_steps_insert()
# Rows per multi-row INSERT on SQLite, largest first (a batch is cut into these, so few statements are ever
# prepared); SQLite before 3.32 binds at most 999 values per statement.
_SQLITE_CHUNKS = (256, 64, 16, 4, 1) if sqlite3.sqlite_version_info >= (3, 32, 0) else (32, 8, 2, 1)


@functools.cache
def _insert_sqlite_sql(rows: int, skip_existing: bool) -> str:
    values = f"({', '.join('?' * len(_EXECUTION_COLUMNS))})"
    upsert = " ON CONFLICT (id) DO NOTHING" if skip_existing else ""
    return (f"INSERT INTO executions ({', '.join(_EXECUTION_COLUMNS)}) VALUES {', '.join([values] * rows)} "
            f"{SKIP_TAKEN_KEYS}{upsert}")


def _insert_sqlite(conn: sa.Connection, rows: list[tuple[Any, ...]], *, skip_existing: bool = False,
                   steps: list[tuple[Any, ...]] | None = None) -> set[str]:
    """Insert summary rows (`_row` tuples) on SQLite, on the store's thread: many rows per statement.

    The driver's `executemany` binds each row holding the GIL and steps it without: one GIL hand-off per row,
    each a wait for the event loop's thread to let go, which made a `durable: false` request's summary row
    cost the loop more than its own work. A multi-row INSERT binds a chunk at once and runs it in one step.
    (Plain tuples, not SQLAlchemy parameters: its per-row bind processing cost ~40 us a row.)
    """
    start, inserted = 0, 0
    for size in _SQLITE_CHUNKS:
        while len(rows) - start >= size:
            chunk = rows[start:start + size]
            result = conn.exec_driver_sql(_insert_sqlite_sql(size, skip_existing),
                                          tuple(itertools.chain.from_iterable(chunk)))
            inserted += result.rowcount
            start += size
    driver = cast(sqlite3.Connection, conn.connection.driver_connection)  # a SQLite store's pysqlite connection
    # Some rows were skipped: keys taken, or (`skip_existing`) ids already there (a batch the child committed
    # before it failed), which are there.
    skipped = set() if inserted == len(rows) else skipped_keyed_rows(driver, rows, _KEY_COLUMN)
    if steps:
        insert_steps(driver, _SQLITE_STEPS_INSERT, steps, skipped)
    return skipped


def _row(record: ExecutionRecord) -> tuple[Any, ...]:
    """`record` as the driver's parameter tuple, converted as the table's column types convert it."""
    values = vars(record)
    out: list[Any] = []
    for name in _EXECUTION_COLUMNS:
        value = values[name]
        if name in _JSON_COLUMNS:
            value = None if value is None else orjson.dumps(value).decode()
        elif name == "status":
            value = str(value)
        out.append(value)
    return tuple(out)
