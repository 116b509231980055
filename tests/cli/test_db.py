"""`workflow db upgrade` migrates a store and reports its version; a bad URL is a clear error."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from typer.testing import CliRunner

from workflow_engine.cli import app
from workflow_engine.store.migrations import MIGRATIONS


def test_db_upgrade_migrates_an_empty_store(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    result = CliRunner().invoke(app, ["db", "upgrade", "--store", f"sqlite:///{path}"])
    assert result.exit_code == 0, result.output
    assert f"version {len(MIGRATIONS)}" in result.output
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("select name from sqlite_master where type = 'table'")}
    assert {"executions", "steps", "schedule_ticks", "configs"} <= tables


def test_db_upgrade_names_an_unsupported_url() -> None:
    result = CliRunner().invoke(app, ["db", "upgrade", "--store", "bogus://x"])
    assert result.exit_code == 1
    assert "store URL scheme 'bogus' is not supported" in result.output
