"""The summary writer's child process (see `writer_process.py`): stdlib only, started by `WriterProcess`.

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
CHILD_PRAGMAS = ("PRAGMA busy_timeout=1000", "PRAGMA synchronous=NORMAL")
BUSY = "busy: "  # the prefix of a refusal for want of the write lock (the rows themselves were fine)


# A keyed row whose idempotency key another execution of its workflow has is skipped (the caller is told); any
# other constraint fails the batch.
SKIP_TAKEN_KEYS = "ON CONFLICT (workflow, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"


def insert_sql(columns: Sequence[str]) -> str:
    """The INSERT statement of one summary row, its values in `columns` order."""
    return f"INSERT INTO executions ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) {SKIP_TAKEN_KEYS}"


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
        columns = json.loads(header)
        statement, key_column = insert_sql(columns), columns.index("idempotency_key")
        for line in stdin:
            seq, rows = json.loads(line)
            error, skipped = None, []
            try:
                conn.execute("BEGIN IMMEDIATE")
                before = conn.total_changes
                conn.executemany(statement, rows)
                if conn.total_changes - before < len(rows):
                    skipped = sorted(skipped_keyed_rows(conn, rows, key_column))
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                busy = isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))
                error = f"{BUSY if busy else ''}{type(exc).__name__}: {exc}"
                skipped = []
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            stdout.write(json.dumps([seq, error, skipped]).encode() + b"\n")
            stdout.flush()
        return 0
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1], sys.stdin.buffer, sys.stdout.buffer))
