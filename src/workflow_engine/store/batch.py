"""Group commit: the hot-path writes of many concurrent executions share one transaction.

An execution's writes (its row before it runs, a checkpoint per step, its end) each have to be in the store
before the execution goes on, so each caller waits for its own statement. Run one by one, every statement pays
a commit and, on SQLite, a hop to the store thread; with hundreds of executions in flight those costs are most
of the work. Here a write joins a queue (`Coalescer`); a flush takes everything queued and runs it in one
transaction, in queue order, and wakes each caller with its own statement's outcome. While a flush runs, new
writes queue up for the next one, so batches grow with load and an idle store still writes at once.

Isolation between callers: a batch whose transaction fails is rolled back and each of its statements is run
again on its own, so one bad statement fails only its caller. Nothing a caller sees changes: the statement is
committed when its await returns, exactly as with one autocommitted statement. A caller may also submit several
statements as one write (`execute_all`): they run in order and commit together or not at all, in the batch's
transaction or, after a failed batch, in one of their own.

On SQLite the batch runs on the driver's cursor with SQL compiled once per statement and parameter set
(`_Compiled`): SQLAlchemy's per-execution work (building an execution context, processing binds, wrapping the
result) cost more than the statement itself. Binds still go through the column types' processors (JSON, status).

On a SQLite file with the store's writer process (`writer_process.py`), a batch goes to that process instead:
the loop only binds the values and serialises them, and the driver's and SQLite's work runs under the child's
own GIL, not the one the event loop needs. Statements SQLAlchemy must run itself, values that are not JSON
data, a child that is gone and a batch the child refused as a whole go the store thread's way (which finds the
statement at fault, as above). A batch the child may have committed before it failed is run again on the
thread: every hot-path write is safe to repeat, and errors of such a repeat say so (`StoreError.retried`).

On PostgreSQL the batch runs on the pooled connection's asyncpg connection, with the same SQL compiled once:
SQLAlchemy's async execution path cost ~150 us of the loop's CPU per statement. A batch that fails there is
rolled back and its writes run one by one through SQLAlchemy, as above.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.base import Executable

from workflow_engine.coalesce import Coalescer
from workflow_engine.store.base import StoreError
from workflow_engine.store.runner import Outcome, Runner, outcome
from workflow_engine.store.writer_process import StoreRowsRefusedError, WriterGone, WriterProcess

log = structlog.get_logger("workflow_engine.store")

_Statement = tuple[str, Executable, dict[str, Any]]


class _Group:
    """Statements of one caller that commit together; their outcomes come back as a list."""

    __slots__ = ("statements",)

    def __init__(self, statements: list[_Statement]) -> None:
        self.statements = statements


_Write = _Statement | _Group
_Result = Outcome | list[Outcome]


class _NeedsSqlAlchemy(Exception):
    """A statement of the batch cannot run on the driver: the batch goes SQLAlchemy's way."""


_numbers = itertools.count(1)


class _Compiled:
    """A statement's SQL for the driver, its positional parameter names and their bind processors; `number`
    names it to the writer process (which is sent its SQL once); `returns_rows`: it has RETURNING."""

    __slots__ = ("_converted", "_get", "names", "number", "processors", "returns_rows", "sql")

    def __init__(self, statement: Executable, keys: tuple[str, ...], dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(keys))  # type: ignore[attr-defined]
        # Prefetch: defaults computed in Python before the statement runs (SQLAlchemy's execution context does
        # that). Postfetch columns (set by SQL, e.g. `owner = NULL`) need nothing: the outcome is rows and rowcount.
        if compiled.insert_prefetch or compiled.update_prefetch or not compiled.positiontup:
            raise ValueError("statement needs SQLAlchemy's execution context")
        self.sql: str = compiled.string
        self.names: tuple[str, ...] = tuple(compiled.positiontup)
        processors: dict[str, Callable[[Any], Any]] = dict(compiled._bind_processors)
        for name in processors:  # a type's own one-step conversion (schema.py) instead of SQLAlchemy's wrapper
            fast = getattr(compiled.binds[name].type, "driver_value", None)
            if fast is not None:
                processors[name] = fast
        self.processors = processors
        self.number = next(_numbers)
        self.returns_rows = bool(compiled.effective_returning)
        # `values` reads the parameters in one C call and converts only the positions that have a processor
        # (a row's binds are mostly plain: 6 of an execution's 21).
        names = self.names
        self._get: Callable[[dict[str, Any]], Any] = (
            operator.itemgetter(*names) if len(names) > 1 else lambda params: (params[names[0]],))
        self._converted = tuple((i, processors[name]) for i, name in enumerate(names) if name in processors)

    def values(self, params: dict[str, Any]) -> list[Any]:
        """The driver's positional parameters."""
        values = list(self._get(params))
        for i, convert in self._converted:
            values[i] = convert(values[i])
        return values

    def run(self, cursor: Any, params: dict[str, Any]) -> Outcome:
        cursor.execute(self.sql, self.values(params))
        rows = cursor.fetchall() if cursor.description else []
        return Outcome(rows, cursor.rowcount)

    async def run_asyncpg(self, connection: Any, params: dict[str, Any]) -> Outcome:
        """On an asyncpg connection: rows of a RETURNING statement, else the count of its status tag."""
        if self.returns_rows:
            rows = await connection.fetch(self.sql, *self.values(params))
            return Outcome(rows, len(rows))
        tag = await connection.execute(self.sql, *self.values(params))  # "UPDATE 1", "INSERT 0 1"
        return Outcome([], int(tag.rsplit(" ", 1)[1]))


class GroupCommit:
    """Single-statement writes committed in shared transactions, `flushes` transactions at a time."""

    def __init__(self, runner: Runner, flushes: int, errors: Callable[[str, BaseException], BaseException], *,
                 driver_sql: bool = False,
                 process: Callable[[], WriterProcess | None] | None = None,
                 gone: Callable[[WriterProcess, WriterGone, int], None] | None = None,
                 asyncpg_sql: bool = False) -> None:
        self._runner = runner
        self._asyncpg_sql = asyncpg_sql  # PostgreSQL: run batches on the pooled connection's asyncpg connection
        self._errors = errors  # (operation, driver error) -> the error the caller sees
        self._driver_sql = driver_sql  # SQLite: run batches on the driver's cursor
        self._process = process  # the store's writer process, when it has one now
        self._gone = gone or (lambda _process, _exc, _writes: None)  # told when the process failed a batch
        self._compiled: dict[tuple[Executable, tuple[str, ...]], _Compiled | None] = {}
        self._writes: Coalescer[_Write, _Result] = Coalescer(self._commit, name="store-group-commit",
                                                             concurrency=flushes)

    @property
    def batches(self) -> int:
        """Transactions committed so far (tests and benchmarks read it)."""
        return self._writes.batches

    async def execute(self, operation: str, statement: Executable, params: dict[str, Any]) -> Outcome:
        """Run `statement` in the next shared transaction; returns once it is committed."""
        result = await self._writes.submit((operation, statement, params))
        assert isinstance(result, Outcome)
        return result

    async def execute_all(self, statements: list[_Statement]) -> list[Outcome]:
        """Run `statements` (operation, statement, params) in order in the next shared transaction, all or
        none; returns their outcomes once they are committed."""
        if len(statements) == 1:
            return [await self.execute(*statements[0])]
        result = await self._writes.submit(_Group(statements))
        assert isinstance(result, list)
        return result

    async def _commit(self, batch: list[_Write]) -> list[_Result | BaseException]:
        process = self._process() if self._process is not None else None
        retried = False
        if process is not None:
            try:
                done = await self._by_process(process, batch)
            except WriterGone as exc:
                self._gone(process, exc, len(batch))
                retried = exc.maybe_committed
            else:
                if done is not None:
                    return done
        results = await self._on_thread(batch)
        if retried:
            for result in results:
                if isinstance(result, StoreError):
                    result.retried = True
        return results

    async def _on_thread(self, batch: list[_Write]) -> list[_Result | BaseException]:
        if self._asyncpg_sql:
            try:
                return await self._on_asyncpg(batch)
            except Exception as exc:  # rolled back: find the statement that failed by running each on its own
                log.debug("group commit failed; writing its statements one by one", statements=len(batch),
                          error=exc)
                return [await self._alone(write) for write in batch]
        if len(batch) > 1:
            def run(conn: Connection) -> list[_Result]:
                if self._driver_sql:
                    return self._on_driver(conn, batch)
                return [_each(write, lambda _, statement, params: outcome(conn.execute(statement, params)))
                        for write in batch]

            try:
                return list(await self._runner.transaction(run))
            except Exception as exc:  # rolled back: find the statement that failed by running each on its own
                log.debug("group commit failed; writing its statements one by one", statements=len(batch),
                          error=exc)
        return [await self._alone(write) for write in batch]

    async def _by_process(self, process: WriterProcess, batch: list[_Write]) -> list[_Result | BaseException] | None:
        """`batch` committed by the writer process; None when the store's thread must run it (a statement
        SQLAlchemy must run, values that are not JSON data, a transaction the child refused as a whole)."""
        compiled = self._compile(batch)
        if compiled is None:
            return None
        try:
            writes = [[(c.number, c.sql, c.values(params)) for c, params in write] for write in compiled]
        except Exception:  # a value its column cannot take: the thread's statement says which
            return None
        try:
            answers = await process.execute(writes)
        except (TypeError, StoreRowsRefusedError) as exc:
            log.debug("writer process did not take the batch; the store's thread writes it", error=exc)
            return None
        results: list[_Result | BaseException] = []
        for write, answer in zip(batch, answers, strict=True):
            if isinstance(answer, str):  # a constraint refused this write alone
                operation = write.statements[0][0] if isinstance(write, _Group) else write[0]
                results.append(self._errors(operation, StoreRowsRefusedError(answer)))
            else:
                results.append(_shaped(write, [Outcome(rows, rowcount) for rows, rowcount in answer]))
        return results

    async def _on_asyncpg(self, batch: list[_Write]) -> list[_Result | BaseException]:
        """`batch` in one transaction on asyncpg itself, with SQL compiled once (SQLAlchemy's async execution
        path cost ~150 us of the loop's CPU per statement). A batch with a statement SQLAlchemy must run goes
        SQLAlchemy's way, write by write (`_NeedsSqlAlchemy`)."""
        compiled = self._compile(batch)
        if compiled is None:
            raise _NeedsSqlAlchemy
        async with self._runner.driver_transaction() as connection:
            results: list[_Result | BaseException] = []
            for write, statements in zip(batch, compiled, strict=True):
                results.append(_shaped(write, [await c.run_asyncpg(connection, params) for c, params in statements]))
            return results

    def _compile(self, batch: list[_Write]) -> list[list[tuple[_Compiled, dict[str, Any]]]] | None:
        """Each write's statements compiled for the driver, with their parameters; None when one of them must
        go through SQLAlchemy."""
        dialect = self._runner.dialect
        assert dialect is not None
        out = []
        for write in batch:
            statements = []
            for _, statement, params in (write.statements if isinstance(write, _Group) else (write,)):
                compiled = self._compiled_for(statement, params, dialect)
                if compiled is None:
                    return None
                statements.append((compiled, params))
            out.append(statements)
        return out

    def _on_driver(self, conn: Connection, batch: list[_Write]) -> list[_Result]:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]

        def run(_: str, statement: Executable, params: dict[str, Any]) -> Outcome:
            compiled = self._compiled_for(statement, params, conn.dialect)
            return outcome(conn.execute(statement, params)) if compiled is None else compiled.run(cursor, params)

        try:
            return [_each(write, run) for write in batch]
        finally:
            cursor.close()

    def _compiled_for(self, statement: Executable, params: dict[str, Any], dialect: Dialect) -> _Compiled | None:
        key = (statement, tuple(params))
        try:  # one lookup: the store's thread may clear the cache between a membership test and a read
            return self._compiled[key]
        except KeyError:
            pass
        compiled: _Compiled | None
        try:
            compiled = _Compiled(statement, key[1], dialect)
        except ValueError:
            compiled = None  # SQLAlchemy runs it (defaults to compute, expanding parameters)
        if len(self._compiled) > 1024:  # statements are few; parameter sets too, unless a caller varies them
            self._compiled.clear()
        self._compiled[key] = compiled
        return compiled

    async def _alone(self, write: _Write) -> _Result | BaseException:
        if isinstance(write, _Group):
            group = write.statements
            try:
                return await self._runner.transaction(
                    lambda conn: [outcome(conn.execute(statement, params)) for _, statement, params in group])
            except Exception as exc:
                return self._errors(group[0][0], exc)
        operation, statement, params = write
        try:
            return await self._runner.execute(statement, params)
        except Exception as exc:
            return self._errors(operation, exc)

    async def close(self) -> None:
        """Wait for the transactions under way (the store closes after its last writes are committed)."""
        await self._writes.close()


def _shaped(write: _Write, outcomes: list[Outcome]) -> _Result:
    """The outcomes of a write's statements as its caller takes them: a list for a group, else the one."""
    return outcomes if isinstance(write, _Group) else outcomes[0]


def _each(write: _Write, run: Callable[[str, Executable, dict[str, Any]], Outcome]) -> _Result:
    """`run` applied to the statement of `write`, or to each statement of a group (a list of outcomes)."""
    if isinstance(write, _Group):
        return [run(*statement) for statement in write.statements]
    return run(*write)
