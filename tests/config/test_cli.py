from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.config.conftest import make_registry
from workflow_engine import cli

GOOD = "version: 1\nname: shop\nmodules:\n  - {name: web, type: http.server}\n"
BAD = "version: 1\nname: shop\nmodules:\n  - {name: web, type: http.server, config: {port: 0}}\n"


@pytest.fixture(autouse=True)
def fake_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_load_registry", make_registry)


def test_validate_prints_issues_and_fails(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(GOOD)
    bad.write_text(BAD)
    result = CliRunner().invoke(cli.app, ["validate", str(good), str(bad)])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"{good}: ok",
        f"{bad}:4:51: modules[0].config.port: Input should be greater than or equal to 1",
    ]


def test_validate_ok(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    result = CliRunner().invoke(cli.app, ["validate", str(good)])
    assert (result.exit_code, result.output) == (0, f"{good}: ok\n")


def test_schema_to_file(tmp_path: Path) -> None:
    out = tmp_path / "schema.json"
    result = CliRunner().invoke(cli.app, ["schema", "--output", str(out)])
    assert result.exit_code == 0
    assert json.loads(out.read_text())["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_modules_and_steps() -> None:
    runner = CliRunner()
    assert "http.server  (kind: http_server)" in runner.invoke(cli.app, ["modules"]).output
    steps = runner.invoke(cli.app, ["steps"]).output
    assert "Step types" in steps
    assert "Trigger types" in steps
