"""A helper process that writes to a SQLite file off the engine's GIL: `durable: false` summary rows, and the
hot-path writes of durable executions (group commit batches, `batch.py`).

Why a process: on the store's thread, the Python half of every batch (SQLAlchemy's statement path, binding
parameters, the driver's calls) holds the GIL the event loop needs, and each of the loop's socket syscalls hands
the GIL to that thread and waits to get it back. Measured over the wire (bench/RESULTS.md, 2026-12-02), a
`durable: false` HTTP route serves 16 % more requests with the rows written here than on the thread; the rows'
own SQLite work is a small part of that. A process has its own GIL: the loop only serialises the batch (orjson)
and writes it to a pipe.

Protocol, one JSON document per line: the parent's first line is the column list of `executions`, then every
line is a batch, committed in one transaction:
- `[seq, "rows", rows]`: summary rows (arrays in column order, JSON columns already as text). The answer's
  result is the ids of keyed rows not inserted because another execution has their idempotency key.
- `[seq, "writes", statements, writes]`: `statements` maps numbers to SQL text not sent to this child before;
  `writes` is a list of writes, each a list of `[statement number, parameters]` that commit together or not
  at all. The answer's result has, per write, `[rows, rowcount]` per statement, or the message of the
  constraint that refused that write (only that write is undone).
The child answers each batch with `[seq, null, result]` once it is committed, or `[seq, "message", []]` when
the transaction failed (rolled back; "busy: ..." when the write lock could not be had).
End of input: the child exits. The child opens its own connection to the same file (WAL: the engine's
connection keeps reading and writing; the busy timeout orders the writers).

The child is started on the first batch, so engines and tests that never write start none. When it cannot be
started, dies, does not answer within 30 s, or finds the database locked for a second, `WriterProcess` raises
`WriterGone`; the store then writes that batch itself and starts a new child for the next batch. A batch sent to
a child that then failed may have been committed (`WriterGone.maybe_committed`): summary rows are inserted with
`ON CONFLICT (id) DO NOTHING` then, and the store's writes are safe to repeat (see `SqlStore.create_execution`).
A child that cannot be started, or a tenth one, turns the process off for the store's life (`disabled` says
why).

The child's side is `writer_child.py` (stdlib only, so it starts in a few tens of milliseconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from workflow_engine.store.writer_child import BUSY

STOP_TIMEOUT = 5.0
# A child that has not answered a batch in this long (a stalled disk, a stopped process) is killed and the batch
# written by the store's thread; its busy timeout alone keeps a healthy child far below this.
ANSWER_TIMEOUT = 30.0
# Children started per store before the store gives up on them (a child that keeps dying, a broken install):
# from then on, and when a child cannot be started at all, the store's thread writes every batch.
MAX_CHILDREN = 10


class WriterGone(Exception):
    """The helper process could not be started, or stopped answering; the caller writes the batch itself.
    `maybe_committed`: the child had the batch and may have committed it before it failed."""

    def __init__(self, message: str, *, maybe_committed: bool = False) -> None:
        super().__init__(message)
        self.maybe_committed = maybe_committed


class WriterProcess:
    """The parent's side: one child per SQLite file, one batch in flight at a time."""

    def __init__(self, database: str, columns: Sequence[str], step_columns: Sequence[str]) -> None:
        self.database = database
        self.columns = tuple(columns)
        self.step_columns = tuple(step_columns)
        self._proc: asyncio.subprocess.Process | None = None
        self._seq = 0
        self._lock = asyncio.Lock()
        self.started = 0  # children started so far (a restart after a crash counts)
        self.answer_timeout = ANSWER_TIMEOUT
        self.max_children = MAX_CHILDREN
        self.python = sys.executable
        self.disabled: str | None = None  # why no child is started any more
        self._known: set[int] = set()  # statement numbers the running child has the SQL of

    async def insert(self, rows: Sequence[Sequence[Any]], steps: Sequence[Sequence[Any]] = ()) -> set[str]:
        """Commit summary `rows`, and the checkpoint rows `steps` of those inserted, through the child; returns
        the ids of keyed rows skipped because their idempotency key is taken. WriterGone when the child is not
        there to do it, StoreRowsRefusedError with SQLite's message when it refused them."""
        return set(await self._batch(lambda _: ["rows", rows, steps]))

    async def execute(self, writes: Sequence[Sequence[tuple[int, str, Sequence[Any]]]]) -> list[list[Any] | str]:
        """Commit `writes` (each a list of (statement number, SQL, parameters) that commit together) in one
        transaction; returns per write `[rows, rowcount]` per statement, or the message of the constraint
        that refused it. WriterGone / StoreRowsRefusedError as for `insert`."""
        def message(known: set[int]) -> list[Any]:
            new: dict[str, str] = {}  # JSON object keys are text
            batch = []
            for write in writes:
                for number, sql, _ in write:
                    if number not in known:
                        known.add(number)
                        new[str(number)] = sql
                batch.append([[number, params] for number, _, params in write])
            return ["writes", new, batch]

        return list(await self._batch(message))

    async def _batch(self, build: Callable[[set[int]], list[Any]]) -> Any:
        """Send the batch `build(statements the child knows)` makes and return the child's result.

        A caller cancelled while it waits (shutdown) leaves its batch with the child, which commits it as the
        store's thread would have; the next call skips that batch's answer."""
        async with self._lock:
            proc = await self._ensure()
            assert proc.stdin is not None
            assert proc.stdout is not None
            self._seq += 1
            known = set(self._known)
            line = orjson.dumps([self._seq, *build(known)]) + b"\n"  # TypeError: not JSON data (caller's)
            self._known = known
            try:
                proc.stdin.write(line)
                await proc.stdin.drain()
                line = await asyncio.wait_for(self._answer(proc.stdout), self.answer_timeout)
            except (OSError, ValueError) as exc:  # broken pipe, or an answer longer than the stream's limit
                await self._discard()
                raise WriterGone(f"store writer process failed: {exc}", maybe_committed=True) from exc
            except TimeoutError:
                await self._discard()
                raise WriterGone(f"store writer process did not answer within {self.answer_timeout:g}s; "
                                 "killed", maybe_committed=True) from None
            if not line:
                code = await self._discard()
                raise WriterGone(f"store writer process exited (code {code})", maybe_committed=True)
            seq, error, result = orjson.loads(line)
            if seq != self._seq:
                await self._discard()
                raise WriterGone(f"store writer process answered batch {seq} for batch {self._seq}",
                                 maybe_committed=True)
            if error is not None:
                if error.startswith(BUSY):
                    raise WriterGone(f"store writer process found the database locked: {error}")
                raise StoreRowsRefusedError(str(error))
            return result

    async def _answer(self, stdout: asyncio.StreamReader) -> bytes:
        """The child's answer to the current batch (b"" at end of output); answers to batches whose callers
        were cancelled before reading them come first and are skipped."""
        while True:
            line = await stdout.readline()
            if not line or orjson.loads(line)[0] >= self._seq:
                return line

    async def close(self) -> None:
        """End the child after its last batch (it exits at end of input); kill it if it does not."""
        async with self._lock:
            proc, self._proc = self._proc, None
            if proc is None:
                return
            if proc.stdin is not None:
                proc.stdin.close()
                with contextlib.suppress(OSError):
                    await proc.stdin.wait_closed()
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    @property
    def pid(self) -> int | None:
        """The running child's pid (None when none runs)."""
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    async def _ensure(self) -> asyncio.subprocess.Process:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            return proc
        if proc is not None:
            await self._discard()
        if self.disabled is None and self.started >= self.max_children:
            self.disabled = f"store writer process started {self.started} times"
        if self.disabled is not None:
            raise WriterGone(self.disabled)
        try:
            proc = await asyncio.create_subprocess_exec(
                self.python, "-m", "workflow_engine.store.writer_child", self.database,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            self.disabled = f"store writer process could not start: {exc}"
            raise WriterGone(self.disabled) from exc
        self._proc = proc
        self._known = set()
        self.started += 1
        assert proc.stdin is not None
        proc.stdin.write(orjson.dumps({"executions": self.columns, "steps": self.step_columns}) + b"\n")
        return proc

    async def _discard(self) -> int | None:
        """Forget a child that failed (killed if it still runs); returns its exit code."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        return await proc.wait()


class StoreRowsRefusedError(RuntimeError):
    """SQLite refused a batch in the child (constraint, disk full, ...); the transaction was rolled back."""
