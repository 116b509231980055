"""`workflow components ls|push|rm`: dynamic components of a running engine, through its management API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from workflow_engine.cli_client import DEFAULT_SERVER, JsonOption, ServerOption, TokenOption, api_client
from workflow_engine.cli_output import format_time, print_result, read_text_or_fail

components_app = typer.Typer(name="components", help="List dynamic components, upload or remove their source.",
                             no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add `workflow components` to the command line."""
    app.add_typer(components_app)


@components_app.command("ls")
def components_ls(
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """List dynamic components: version, status, origin, load time and the last refused version."""
    with api_client(server, token) as api:
        body = api.call("GET", "/api/dynamic/components").json()
    print_result(body, as_json, _table)


@components_app.command("push")
def components_push(
    name: Annotated[str, typer.Argument(help="The dynamic.component module.", show_default=False)],
    file: Annotated[Path, typer.Argument(help="The Python source to upload.", show_default=False)],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Upload a component's source: checked, then swapped in without restart (it wins over the file until rm)."""
    source = read_text_or_fail(file)
    with api_client(server, token, timeout=120) as api:
        body = api.call("PUT", f"/api/dynamic/components/{name}", content=source.encode(),
                        headers={"Content-Type": "text/x-python"}).json()
    print_result(body, as_json, lambda b: [f"{name}: version {b.get('version')} active (from {file})"])


@components_app.command("rm")
def components_rm(
    name: Annotated[str, typer.Argument(help="The dynamic.component module.", show_default=False)],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove a component's uploaded source: its configured file serves again."""
    with api_client(server, token) as api:
        body = api.call("DELETE", f"/api/dynamic/components/{name}").json()
    print_result(body, as_json, lambda b: [f"{name}: upload removed; status {b['status']}"
                                     + (f", version {b['version']} from the file" if b.get("version") else "")])


def _table(body: dict[str, Any]) -> list[Any]:
    table = Table(box=None)
    for column in ("NAME", "STATUS", "VERSION", "ORIGIN", "ISOLATION", "LOADED (UTC)", "HELD", "LAST ERROR"):
        table.add_column(column, no_wrap=column != "LAST ERROR", overflow="fold")
    for item in body["items"]:
        error = item.get("last_error") or {}
        table.add_row(item["name"], item["status"], str(item.get("version") or "-"), item.get("origin") or "-",
                      item["isolation"], format_time(item.get("loaded_at")), str(item["versions_held"]),
                      error.get("message", ""))
    return [table]
