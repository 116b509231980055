"""The API client commands and `workflow hash-token`, run against a real engine process."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from typer.testing import CliRunner, Result

from tests.e2e.process import EngineProcess, engine_process, free_port
from workflow_engine.api.auth import ENV_TOKEN
from workflow_engine.cli import app

TOKEN = "cli-admin-token-0123456789"
APP = """\
version: 1
name: cli
engine: {shutdown_grace: 2s, park_after: 1h, store: "${WORKFLOW_STORE}"}
workflows:
  hello:
    steps:
      - id: greet
        set: {greeting: "hi {{ input.name }}"}
  boom:
    steps:
      - fail: {message: "boom", code: boom}
  slow:
    steps:
      - id: nap
        sleep: {duration: 60s}
  flaky:
    steps:
      - id: first
        set: {n: 1}
      - id: gate
        if: "{{ execution.attempt == 1 }}"
        fail: {message: "first attempt fails"}
"""


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    config = tmp_path_factory.mktemp("cli") / "app.yaml"
    config.write_text(APP)
    with engine_process(config, env={ENV_TOKEN: TOKEN}) as process:
        yield process


def cli(engine: EngineProcess, *args: str, token: str | None = TOKEN, stdin: str | None = None) -> Result:
    """Run `workflow ARGS` against `engine` (server and token from the environment, as users set them)."""
    env = {"WORKFLOW_SERVER": engine.mgmt, "WORKFLOW_TOKEN": token or ""}
    return CliRunner().invoke(app, list(args), env=env, input=stdin)


def cli_json(engine: EngineProcess, *args: str, exit_code: int = 0) -> Any:
    """The JSON a command prints with `--json`."""
    result = cli(engine, *args, "--json")
    assert result.exit_code == exit_code, result.output
    return json.loads(result.stdout)


def test_trigger_and_wait_prints_the_result(engine: EngineProcess) -> None:
    result = cli(engine, "trigger", "hello", "--input", '{"name": "ada"}', "--wait")
    assert result.exit_code == 0, result.output
    assert "success" in result.stdout
    assert '{"greeting":"hi ada"}' in result.stdout
    body = cli_json(engine, "trigger", "hello", "--input", '{"name": "bo"}', "--wait")
    assert body["status"] == "success"
    assert body["output"] == {"greeting": "hi bo"}


def test_trigger_wait_on_a_failing_workflow_exits_1(engine: EngineProcess) -> None:
    result = cli(engine, "trigger", "boom", "--wait")
    assert result.exit_code == 1
    assert "boom: boom" in result.stdout


def test_trigger_without_wait_returns_at_once_and_keys_are_idempotent(engine: EngineProcess) -> None:
    first = cli_json(engine, "trigger", "hello", "--input", '{"name": "x"}', "--idempotency-key", "k-1")
    again = cli_json(engine, "trigger", "hello", "--input", '{"name": "y"}', "--idempotency-key", "k-1")
    assert first["id"] == again["id"]
    assert first["idempotency_key"] == "k-1"


def test_trigger_refusals_print_the_api_message(engine: EngineProcess) -> None:
    unknown = cli(engine, "trigger", "nope")
    bad_input = cli(engine, "trigger", "hello", "--input", "{not json")
    assert unknown.exit_code == 1
    assert "no workflow named 'nope' (unknown_workflow, HTTP 404)" in unknown.stderr
    assert bad_input.exit_code == 1
    assert "--input is not valid JSON" in bad_input.stderr


def test_executions_ls_filters_and_pages(engine: EngineProcess) -> None:
    ids = {cli_json(engine, "trigger", "hello", "--input", "{}", "--wait")["id"] for _ in range(3)}
    failed = cli_json(engine, "trigger", "boom", "--wait", exit_code=1)["id"]
    page = cli_json(engine, "executions", "ls", "--workflow", "hello", "--limit", "2")
    assert len(page["items"]) == 2
    assert page["next_cursor"]
    rest = cli_json(engine, "executions", "ls", "--workflow", "hello", "--limit", "500", "--cursor",
                    page["next_cursor"])
    listed = [item["id"] for item in page["items"] + rest["items"]]
    assert ids <= set(listed)
    assert len(listed) == len(set(listed))
    errors = cli_json(engine, "executions", "ls", "--status", "error")
    assert failed in {item["id"] for item in errors["items"]}
    assert {item["status"] for item in errors["items"]} == {"error"}
    table = cli(engine, "executions", "ls", "--workflow", "hello", "--limit", "2")
    assert table.exit_code == 0, table.output
    assert "WORKFLOW" in table.stdout
    assert page["items"][0]["id"] in table.stdout
    assert f"more: --cursor {page['next_cursor']}" in table.stdout
    bad = cli(engine, "executions", "ls", "--status", "exploded")
    assert bad.exit_code == 1
    assert "query.status" in bad.stderr


def test_executions_show_lists_the_steps(engine: EngineProcess) -> None:
    execution_id = cli_json(engine, "trigger", "hello", "--input", '{"name": "s"}', "--wait")["id"]
    result = cli(engine, "executions", "show", execution_id)
    assert result.exit_code == 0, result.output
    assert execution_id in result.stdout
    assert "greet" in result.stdout
    assert '{"name":"s"}' in result.stdout.replace(" ", "")  # the input, which the runbook's checks read
    detail = cli_json(engine, "executions", "show", execution_id)
    assert [step["step"] for step in detail["steps"]] == ["greet"]
    missing = cli(engine, "executions", "show", "01900000-0000-7000-8000-000000000000")
    assert missing.exit_code == 1
    assert "not_found" in missing.stderr


def test_executions_cancel_a_running_one(engine: EngineProcess) -> None:
    execution_id = cli_json(engine, "trigger", "slow")["id"]
    deadline = time.monotonic() + 10
    while cli_json(engine, "executions", "show", execution_id)["status"] != "running":
        assert time.monotonic() < deadline, "the execution never started"
        time.sleep(0.02)
    result = cli(engine, "executions", "cancel", execution_id)
    assert result.exit_code == 0, result.output
    assert "cancelled" in result.stdout
    assert cli_json(engine, "executions", "show", execution_id)["status"] == "cancelled"


def test_executions_retry_a_failed_one(engine: EngineProcess) -> None:
    failed = cli_json(engine, "trigger", "flaky", "--wait", exit_code=1)
    assert failed["status"] == "error"
    retried = cli(engine, "executions", "retry", failed["id"])
    assert retried.exit_code == 0, retried.output
    deadline = time.monotonic() + 10
    while (detail := cli_json(engine, "executions", "show", failed["id"]))["status"] != "success":
        assert time.monotonic() < deadline, f"retry did not finish: {detail}"
        time.sleep(0.02)
    assert detail["attempt"] == 2
    conflict = cli(engine, "executions", "retry", failed["id"])
    assert conflict.exit_code == 1
    assert "HTTP 409" in conflict.stderr


def test_config_apply_prints_every_issue_of_a_bad_config(engine: EngineProcess, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: cli\nworkflows:\n  w:\n    concurrency: 0\n    steps: []\n")
    result = cli(engine, "config", "apply", str(bad))
    assert result.exit_code == 1
    assert "workflows.w.concurrency" in result.stderr
    assert f"{bad}:5:" in result.stderr  # named as sent, not as the running config's file
    assert "the running config is unchanged" in result.stderr
    assert cli_json(engine, "trigger", "hello", "--input", "{}", "--wait")["status"] == "success"


def test_missing_token_and_unreachable_server_are_clear_errors(engine: EngineProcess) -> None:
    anonymous = cli(engine, "executions", "ls", token=None)
    assert anonymous.exit_code == 1
    assert "pass --token or set WORKFLOW_TOKEN" in anonymous.stderr
    nowhere = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(app, ["executions", "ls", "--server", nowhere, "--token", TOKEN])
    assert result.exit_code == 1
    assert f"cannot reach the management API at {nowhere}" in result.stderr


def test_hash_token_prints_an_argon2_hash_of_stdin() -> None:
    result = CliRunner().invoke(app, ["hash-token"], input="s3cret-token\n")
    assert result.exit_code == 0, result.output
    hashed = result.stdout.strip()
    assert hashed.startswith("$argon2id$")
    assert PasswordHasher().verify(hashed, "s3cret-token")
    empty = CliRunner().invoke(app, ["hash-token"], input="\n")
    assert empty.exit_code == 1


@pytest.mark.parametrize("command", [["config", "apply"], ["components", "push", "pricing"]])
def test_a_file_that_cannot_be_read_is_named_before_any_request(command: list[str], tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    nowhere = f"http://127.0.0.1:{free_port()}"  # never reached: the file is read first
    result = CliRunner().invoke(app, [*command, str(missing), "--server", nowhere, "--token", TOKEN])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: cannot read {missing}: ")
    assert "No such file" in result.stderr
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    result = CliRunner().invoke(app, [*command, str(binary), "--server", nowhere, "--token", TOKEN])
    assert result.exit_code == 1
    assert f"cannot read {binary}: 'utf-8' codec can't decode" in result.stderr
