"""SQLite connections: every connection ends up in WAL mode, also when many open a new file at once."""

from __future__ import annotations

import threading
from pathlib import Path

import sqlalchemy as sa

from workflow_engine.store.connect import create_sync_engine_for, parse_store_url


def _open_together(engines: list[sa.Engine]) -> tuple[list[object], list[BaseException]]:
    """Connect every engine at the same moment; their journal modes and the errors raised."""
    start = threading.Barrier(len(engines))
    modes: list[object] = []
    errors: list[BaseException] = []

    def connect(engine: sa.Engine) -> None:
        start.wait()
        try:
            with engine.connect() as conn:
                modes.append(conn.exec_driver_sql("PRAGMA journal_mode").scalar())
        except BaseException as exc:  # collected: the assertion names it
            errors.append(exc)

    threads = [threading.Thread(target=connect, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return modes, errors


def test_connections_opening_a_new_file_together_all_switch_it_to_wal(tmp_path: Path) -> None:
    # Switching a new file to WAL needs an exclusive lock, and SQLite answers "database is locked" at once
    # (no busy handler) to the connections that lose the race: replicas starting together failed to open.
    for round_ in range(5):
        target = parse_store_url(f"sqlite:///{tmp_path / f'store{round_}.db'}")
        engines = [create_sync_engine_for(target) for _ in range(12)]
        try:
            modes, errors = _open_together(engines)
        finally:
            for engine in engines:
                engine.dispose()
        assert errors == []
        assert modes == ["wal"] * len(engines)
