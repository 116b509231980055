"""CLI commands that talk to a running engine's management API, and `workflow hash-token`."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table

from workflow_engine.cli_output import fail, format_duration, format_time, print_result, read_text_or_fail

DEFAULT_SERVER = "http://127.0.0.1:8081"
FINISHED = ("success", "error", "cancelled")

ServerOption = Annotated[str, typer.Option(
    "--server", envvar="WORKFLOW_SERVER", help="Base URL of the engine's management server.")]
TokenOption = Annotated[str | None, typer.Option(
    "--token", envvar="WORKFLOW_TOKEN", show_default=False, help="API bearer token (default: $WORKFLOW_TOKEN).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's JSON instead of a table.")]

executions_app = typer.Typer(name="executions", help="List, show, cancel and retry executions.",
                             no_args_is_help=True)
config_app = typer.Typer(name="config", help="Manage the running engine's config.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the client commands to the `workflow` command line."""
    app.command("trigger")(trigger)
    app.command("hash-token")(hash_token)
    app.add_typer(executions_app)
    app.add_typer(config_app)


# -- talking to the API -----------------------------------------------------------------------------------------


class ApiClient:
    """A management API client that turns every failure into one readable message and exit code 1."""

    def __init__(self, http: httpx.Client, server: str) -> None:
        self.http = http
        self.server = server

    def call(self, method: str, path: str, *, ok: tuple[int, ...] = (), **kwargs: Any) -> httpx.Response:
        """Send a request; a 4xx/5xx not listed in `ok` prints the API's error message and exits 1."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.ConnectError as err:
            fail(f"cannot reach the management API at {self.server} ({_reason(err)}); is the engine running? "
                 "(set --server or WORKFLOW_SERVER)")
        except httpx.TimeoutException:
            fail(f"the management API at {self.server} did not answer in time")
        except httpx.HTTPError as err:
            fail(f"request to {self.server} failed: {err}")
        if response.status_code >= 400 and response.status_code not in ok:
            fail(_error_message(response))
        return response


@contextmanager
def api_client(server: str, token: str | None, timeout: float = 30.0) -> Iterator[ApiClient]:
    """A client of the API at `server`, authenticated with `token` when given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    base = server.rstrip("/")
    with httpx.Client(base_url=base, headers=headers, timeout=timeout) as http:
        yield ApiClient(http, base)


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", {})
        message = f"{error['message']} ({error['code']}, HTTP {response.status_code})"
    except (ValueError, KeyError, TypeError, AttributeError):
        message = f"HTTP {response.status_code}: {response.text[:200]}"
    if response.status_code == 401 and "Authorization" not in response.request.headers:
        message += "; pass --token or set WORKFLOW_TOKEN"
    return message


def _reason(err: httpx.HTTPError) -> str:
    cause: BaseException = err
    while cause.__cause__ is not None:
        cause = cause.__cause__
    return getattr(cause, "strerror", None) or str(cause) or "connection failed"



# -- commands ---------------------------------------------------------------------------------------------------


def trigger(
    name: Annotated[str, typer.Argument(help="The workflow to start.", show_default=False)],
    *,
    input: Annotated[str | None, typer.Option("--input", "-i", help="The input as JSON.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the result (exit 1 if it failed).")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait with --wait.")] = 30.0,
    idempotency_key: Annotated[str | None, typer.Option(
        "--idempotency-key", help="A repeated key returns the execution it started first.")] = None,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Start a workflow on a running engine."""
    body = b""
    if input is not None:
        try:
            body = json.dumps(json.loads(input)).encode()
        except json.JSONDecodeError as err:
            fail(f"--input is not valid JSON: {err}")
    headers = {"Content-Type": "application/json"}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    params: dict[str, Any] = {"wait": "true", "timeout": timeout} if wait else {}
    with api_client(server, token, timeout=timeout + 10) as api:
        summary = api.call("POST", f"/api/workflows/{name}/executions", content=body, headers=headers,
                           params=params).json()
    print_result(summary, as_json, _execution_table)
    if wait and summary["status"] in ("error", "cancelled"):
        raise typer.Exit(1)


@executions_app.command("ls")
def executions_ls(
    *,
    workflow: Annotated[str | None, typer.Option("--workflow", "-w", help="Only this workflow.")] = None,
    status: Annotated[str | None, typer.Option(
        "--status", "-s", help="Only this status: queued, running, parked, success, error, cancelled.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Executions per page (1-500).")] = 50,
    cursor: Annotated[str | None, typer.Option("--cursor", help="Continue after a previous page.")] = None,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """List executions, newest first."""
    params = {k: v for k, v in {"workflow": workflow, "status": status, "limit": limit, "cursor": cursor}.items()
              if v is not None}
    with api_client(server, token) as api:
        page = api.call("GET", "/api/executions", params=params).json()
    print_result(page, as_json, _page_table)


@executions_app.command("show")
def executions_show(
    execution_id: Annotated[str, typer.Argument(help="The execution id.", show_default=False)],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show an execution with its steps."""
    with api_client(server, token) as api:
        detail = api.call("GET", f"/api/executions/{execution_id}").json()
    print_result(detail, as_json, _detail_tables)


@executions_app.command("cancel")
def executions_cancel(
    execution_id: Annotated[str, typer.Argument(help="The execution id.", show_default=False)],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Cancel a queued, running or parked execution."""
    with api_client(server, token) as api:
        summary = api.call("POST", f"/api/executions/{execution_id}/cancel").json()
    print_result(summary, as_json, _execution_table)


@executions_app.command("retry")
def executions_retry(
    execution_id: Annotated[str, typer.Argument(help="The execution id.", show_default=False)],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run a failed or cancelled execution again from its failed step."""
    with api_client(server, token) as api:
        summary = api.call("POST", f"/api/executions/{execution_id}/retry").json()
    print_result(summary, as_json, _execution_table)


@config_app.command("apply")
def config_apply(
    file: Annotated[Path, typer.Argument(help="The new config file.", show_default=False)],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Apply a config to the running engine without a restart; a bad one is refused with its issues."""
    text = read_text_or_fail(file)
    with api_client(server, token, timeout=120) as api:
        response = api.call("PUT", "/api/config", content=text.encode(), headers={"Content-Type": "text/yaml"},
                            params={"file": file.name}, ok=(422,))
    body = response.json()
    if response.status_code == 422:
        issues = body.get("issues") or body.get("error", {}).get("issues") or []
        for issue in issues:  # lines and columns of the file sent, named as the user named it
            typer.echo(f"{file}:{issue['line']}:{issue['col']}: {issue['path'] or '<root>'}: "
                       f"{issue['message']}", err=True)
        fail(f"{file}: {len(issues)} issue(s); the running config is unchanged")
    if as_json:
        typer.echo(json.dumps(body, indent=2))
    else:
        version = body.get("version")
        typer.echo(f"{file}: applied" + (f" (config version {version})" if version is not None else ""))


def hash_token() -> None:
    """Print an argon2 hash of a token read from stdin, for `engine.api.tokens[].token_hash`."""
    from workflow_engine.api.auth import hash_token as argon2_hash

    token = typer.prompt("Token", hide_input=True) if sys.stdin.isatty() else sys.stdin.read()
    token = token.strip()
    if not token:
        fail("no token on stdin")
    typer.echo(argon2_hash(token))



def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def _execution_table(summary: dict[str, Any]) -> list[Any]:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows = [("id", summary["id"]), ("workflow", summary["workflow"]), ("status", summary["status"]),
            ("trigger", summary["trigger"]), ("attempt", str(summary["attempt"])),
            ("created", format_time(summary["created_at"]) + " UTC"),
            ("duration", format_duration(summary.get("started_at"), summary.get("finished_at")))]
    if summary.get("idempotency_key"):
        rows.append(("idempotency key", summary["idempotency_key"]))
    if summary["status"] in FINISHED:
        rows.append(("output", _json(summary.get("output"))))
    if summary.get("error"):
        rows.append(("error", f"{summary['error'].get('code')}: {summary['error'].get('message')}"))
    for key, value in rows:
        table.add_row(key, value)
    return [table]


def _page_table(page: dict[str, Any]) -> list[Any]:
    table = Table(box=None)
    for name in ("ID", "WORKFLOW", "STATUS", "TRIGGER", "ATTEMPT", "CREATED (UTC)", "DURATION"):
        table.add_column(name, no_wrap=True, overflow="ellipsis")
    for item in page["items"]:
        table.add_row(item["id"], item["workflow"], item["status"], item["trigger"], str(item["attempt"]),
                      format_time(item["created_at"]), format_duration(item.get("started_at"), item.get("finished_at")))
    out: list[Any] = [table]
    if page.get("next_cursor"):
        out.append(f"more: --cursor {page['next_cursor']}")
    return out


def _detail_tables(detail: dict[str, Any]) -> list[Any]:
    steps = Table(box=None, title="steps", title_justify="left")
    for name in ("STEP", "STATUS", "ATTEMPT", "DURATION"):
        steps.add_column(name, no_wrap=True)
    steps.add_column("ERROR", overflow="fold")
    for step in detail.get("steps", []):
        error = step.get("error") or {}
        steps.add_row(step["step"], step["status"], str(step.get("attempt", 1)),
                      format_duration(step.get("started_at"), step.get("finished_at")),
                      error.get("message", "") if isinstance(error, dict) else str(error))
    holder = Table(show_header=False, box=None)
    holder.add_column(style="bold")
    holder.add_column(overflow="fold")
    holder.add_row("input", _json(detail.get("input")))
    if detail.get("owner"):
        lease = detail.get("lease_expires_at")
        holder.add_row("owner", detail["owner"])
        holder.add_row("lease until", format_time(lease) + " UTC" if lease is not None else "-")
    return [*_execution_table(detail), holder, "", steps]
