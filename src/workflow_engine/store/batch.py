"""Group commit: the hot-path writes of many concurrent executions share one transaction.

An execution's writes (its row before it runs, a checkpoint per step, its end) each have to be in the store
before the execution goes on, so each caller waits for its own statement. Run one by one, every statement pays
a commit and, on SQLite, a hop to the store thread; with hundreds of executions in flight those costs are most
of the work. Here a write joins a queue (`Coalescer`); a flush takes everything queued and runs it in one
transaction, in queue order, and wakes each caller with its own statement's outcome. While a flush runs, new
writes queue up for the next one, so batches grow with load and an idle store still writes at once.

Isolation between callers: a batch whose transaction fails is rolled back and each of its statements is run
again on its own, so one bad statement fails only its caller. Nothing a caller sees changes: the statement is
committed when its await returns, exactly as with one autocommitted statement.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy.engine import Connection
from sqlalchemy.sql.base import Executable

from workflow_engine.coalesce import Coalescer
from workflow_engine.store.runner import Outcome, Runner, outcome

log = structlog.get_logger("workflow_engine.store")

_Write = tuple[str, Executable, dict[str, Any]]


class GroupCommit:
    """Single-statement writes committed in shared transactions, `flushes` transactions at a time."""

    def __init__(self, runner: Runner, flushes: int, errors: Callable[[str, BaseException], BaseException]) -> None:
        self._runner = runner
        self._errors = errors  # (operation, driver error) -> the error the caller sees
        self._writes: Coalescer[_Write, Outcome] = Coalescer(self._commit, name="store-group-commit",
                                                             concurrency=flushes)

    @property
    def batches(self) -> int:
        """Transactions committed so far (tests and benchmarks read it)."""
        return self._writes.batches

    async def execute(self, operation: str, statement: Executable, params: dict[str, Any]) -> Outcome:
        """Run `statement` in the next shared transaction; returns once it is committed."""
        return await self._writes.submit((operation, statement, params))

    async def _commit(self, batch: list[_Write]) -> list[Outcome | BaseException]:
        if len(batch) > 1:
            def run(conn: Connection) -> list[Outcome]:
                return [outcome(conn.execute(statement, params)) for _, statement, params in batch]

            try:
                return list(await self._runner.transaction(run))
            except Exception as exc:  # rolled back: find the statement that failed by running each on its own
                log.debug("group commit failed; writing its statements one by one", statements=len(batch),
                          error=exc)
        return [await self._alone(write) for write in batch]

    async def _alone(self, write: _Write) -> Outcome | BaseException:
        operation, statement, params = write
        try:
            return await self._runner.execute(statement, params)
        except Exception as exc:
            return self._errors(operation, exc)

    async def close(self) -> None:
        """Wait for the transactions under way (the store closes after its last writes are committed)."""
        await self._writes.close()
