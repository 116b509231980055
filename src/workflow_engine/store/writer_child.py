"""The store's writer child process (see `writer_process.py`): stdlib only, started by `WriterProcess`.

    python -m workflow_engine.store.writer_child DATABASE_PATH
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Sequence
from typing import Any

# The child's connection: WAL is already set on the file by the engine's own connection, and synchronous=NORMAL
# matches it (no fsync per commit in WAL). It waits a second for another writer (the engine's group commits, a
# replica on the same file); a batch still locked out then is written by the store's own thread, which takes
# its turn among the engine's writes instead of racing them for the lock (and summary rows never wait long).
# foreign_keys as on the engine's connection: a step checkpoint names an execution that exists.
CHILD_PRAGMAS = ("PRAGMA busy_timeout=1000", "PRAGMA synchronous=NORMAL", "PRAGMA foreign_keys=ON")
BUSY = "busy: "  # the prefix of a refusal for want of the write lock (the rows themselves were fine)


# A keyed row whose idempotency key another execution of its workflow has is skipped (the caller is told); any
# other constraint fails the batch.
SKIP_TAKEN_KEYS = "ON CONFLICT (workflow, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"


# A checkpoint inserted with its execution's row is skipped if it is there already (the batch of a child that
# failed after committing it, written again by the store's thread).
SKIP_SAVED_STEPS = "ON CONFLICT (execution_id, step_key) DO NOTHING"


def _insert(table: str, columns: Sequence[str], conflict: str) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) {conflict}"


def insert_sql(columns: Sequence[str]) -> str:
    """The INSERT statement of one summary row, its values in `columns` order."""
    return _insert("executions", columns, SKIP_TAKEN_KEYS)


def insert_steps_sql(columns: Sequence[str]) -> str:
    """The INSERT statement of one checkpoint written with its execution's row, its values in `columns` order."""
    return _insert("steps", columns, SKIP_SAVED_STEPS)


def insert_steps(conn: sqlite3.Connection, statement: str, steps: Sequence[Sequence[Any]], skipped: set[str]) -> None:
    """Insert the checkpoints of the rows just inserted, in order; those of `skipped` rows (a taken key) are
    not written (they would name an execution that is not there)."""
    if skipped:
        steps = [step for step in steps if step[0] not in skipped]
    if steps:
        conn.executemany(statement, steps)


def skipped_keyed_rows(conn: sqlite3.Connection, rows: Sequence[Sequence[Any]], key_column: int) -> set[str]:
    """Ids of the keyed rows of a batch just inserted that are not in the table: their idempotency key was taken.
    `key_column`: the position of `idempotency_key` in a row."""
    ids = [row[0] for row in rows if row[key_column] is not None]
    found: set[str] = set()
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        found.update(r[0] for r in conn.execute(
            f"SELECT id FROM executions WHERE id IN ({', '.join('?' * len(chunk))})", chunk))
    return set(ids) - found


def serve(database: str, stdin: Any, stdout: Any) -> int:
    """The child's loop: commit each batch read from `stdin`, answer on `stdout`, until end of input."""
    conn = sqlite3.connect(database, isolation_level=None)
    try:
        for pragma in CHILD_PRAGMAS:
            conn.execute(pragma)
        header = stdin.readline()
        if not header:
            return 0
        columns = json.loads(header)  # {"executions": [...], "steps": [...]}: each table's columns, in row order
        summaries = _Summaries(insert_sql(columns["executions"]), columns["executions"].index("idempotency_key"),
                               insert_steps_sql(columns["steps"]))
        statements: dict[int, str] = {}
        for line in stdin:
            seq, kind, *payload = json.loads(line)
            error: str | None = None
            result: list[Any] = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                if kind == "rows":
                    result = summaries.insert(conn, payload[0], payload[1])
                else:
                    statements.update((int(number), sql) for number, sql in payload[0].items())
                    result = run_writes(conn, statements, payload[1])
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                busy = isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))
                error = f"{BUSY if busy else ''}{type(exc).__name__}: {exc}"
                result = []
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            stdout.write(json.dumps([seq, error, result]).encode() + b"\n")
            stdout.flush()
        return 0
    finally:
        conn.close()


class _Summaries:
    """Summary rows (and the checkpoints of the rows that have them): one multi-row insert per batch; the ids
    of keyed rows skipped for a taken key."""

    def __init__(self, statement: str, key_column: int, steps_statement: str) -> None:
        self.statement = statement
        self.key_column = key_column
        self.steps_statement = steps_statement

    def insert(self, conn: sqlite3.Connection, rows: list[list[Any]], steps: list[list[Any]]) -> list[str]:
        before = conn.total_changes
        conn.executemany(self.statement, rows)
        skipped = (skipped_keyed_rows(conn, rows, self.key_column) if conn.total_changes - before < len(rows)
                   else set())
        insert_steps(conn, self.steps_statement, steps, skipped)
        return sorted(skipped)


Write = list[list[Any]]  # one caller's statements, [statement number, parameters] each, all or none
WriteResult = list[list[Any]] | str  # [rows, rowcount] per statement, or why the write was refused


def run_writes(conn: sqlite3.Connection, statements: dict[int, str], writes: list[Write]) -> list[WriteResult]:
    """Run each write's statements in the open transaction; one write's refusal (a constraint) undoes only that
    write. Tried first without savepoints (the common case: every write is fine); when one fails, the whole
    batch is undone and run again with a savepoint around each write."""
    try:
        conn.execute("SAVEPOINT batch")
        results: list[WriteResult] = [_run(conn, statements, write) for write in writes]
        conn.execute("RELEASE batch")
        return results
    except sqlite3.IntegrityError:
        conn.execute("ROLLBACK TO batch")
        conn.execute("RELEASE batch")
    results = []
    for write in writes:
        conn.execute("SAVEPOINT one")
        try:
            results.append(_run(conn, statements, write))
        except sqlite3.IntegrityError as exc:
            conn.execute("ROLLBACK TO one")
            results.append(f"{type(exc).__name__}: {exc}")
        conn.execute("RELEASE one")
    return results


def _run(conn: sqlite3.Connection, statements: dict[int, str], write: Write) -> list[list[Any]]:
    out = []
    for number, params in write:
        cursor = conn.execute(statements[number], params)
        rows = cursor.fetchall() if cursor.description else []
        out.append([rows, cursor.rowcount])
    return out


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1], sys.stdin.buffer, sys.stdout.buffer))
