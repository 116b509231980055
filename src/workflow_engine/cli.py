"""The `workflow` command line."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from workflow_engine.cli_client import register as register_client_commands
from workflow_engine.cli_components import register as register_component_commands

if TYPE_CHECKING:
    from workflow_engine.registry.specs import Registry

app = typer.Typer(
    name="workflow",
    help="A configuration-driven workflow engine: one YAML file becomes a running, observable service.",
    no_args_is_help=True,
    add_completion=False,
)


def _load_registry() -> Registry:
    """The built-in types; imported on use so the CLI loads even where a built-in's extra is missing."""
    from workflow_engine.registry.builtins import default_registry

    return default_registry()


@app.command()
def validate(
    configs: Annotated[list[Path], typer.Argument(help="Config files to check.", show_default=False)],
) -> None:
    """Check config files; print every issue as FILE:LINE:COL: PATH: MESSAGE, exit 1 if any."""
    from workflow_engine.config.validate import load_config
    from workflow_engine.errors import ConfigError
    from workflow_engine.runtime.program import load_program

    registry = _load_registry()
    failed = False
    for config in configs:
        try:
            load_program(functools.partial(load_config, config, registry), registry)
        except ConfigError as err:
            failed = True
            for issue in err.issues:
                typer.echo(str(issue))
        else:
            typer.echo(f"{config}: ok")
    if failed:
        raise typer.Exit(1)


@app.command()
def schema(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the schema to this file instead of stdout.")
    ] = None,
) -> None:
    """Print the JSON Schema of the config file (for editors such as yaml-language-server)."""
    from workflow_engine.config.schema import app_json_schema

    text = json.dumps(app_json_schema(_load_registry()), indent=2) + "\n"
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")


@app.command()
def modules() -> None:
    """List the module types with their config fields."""
    from workflow_engine.registry.docs import describe_modules

    typer.echo(describe_modules(_load_registry()), nl=False)


@app.command()
def steps() -> None:
    """List the step and trigger types with their config fields."""
    from workflow_engine.registry.docs import describe_steps, describe_triggers

    registry = _load_registry()
    typer.echo(describe_steps(registry))
    typer.echo(describe_triggers(registry), nl=False)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="The application's config file.", show_default=False)],
    mgmt_addr: Annotated[
        str | None, typer.Option("--mgmt-addr", help="HOST:PORT of the management server (overrides the config).")
    ] = None,
    store: Annotated[
        str | None, typer.Option("--store", help="Store URL, sqlite:///... or postgresql://... (overrides the config).")
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="Apply the config file again (without restart) each time it is saved.")
    ] = False,
) -> None:
    """Run the application until SIGTERM/SIGINT, then drain running executions and exit 0."""
    from workflow_engine.engine.runner import run as run_engine
    from workflow_engine.errors import ConfigError, WorkflowEngineError

    try:
        run_engine(config, _load_registry(), mgmt_addr=mgmt_addr, store=store, watch=watch)
    except ConfigError as err:
        for issue in err.issues:
            typer.echo(str(issue), err=True)
        typer.echo(f"{config}: {len(err.issues)} issue(s); not started", err=True)
        raise typer.Exit(1) from None
    except WorkflowEngineError as err:
        typer.echo(f"workflow run: {err.message}", err=True)
        raise typer.Exit(1) from None


register_client_commands(app)
register_component_commands(app)


db = typer.Typer(help="Store maintenance.", no_args_is_help=True)
app.add_typer(db, name="db")


@db.command("upgrade")
def db_upgrade(
    store: Annotated[str, typer.Option("--store", envvar="WORKFLOW_STORE", help="Store URL to migrate.")] = (
        "sqlite:///./workflow.db"),
) -> None:
    """Apply pending store migrations (the engine also does it at start unless engine.auto_migrate is false)."""
    import asyncio

    from workflow_engine.errors import WorkflowEngineError
    from workflow_engine.store.factory import open_store_from_url

    async def upgrade() -> int:
        target = open_store_from_url(store)
        try:
            await target.open(migrate=True)
            return await target.schema_version()
        finally:
            await target.close()

    try:
        version = asyncio.run(upgrade())
    except WorkflowEngineError as err:
        typer.echo(f"workflow db upgrade: {err.message}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"store schema at version {version}")


def main() -> None:
    """Entry point of the `workflow` console script."""
    app()


if __name__ == "__main__":  # `python -m workflow_engine.cli` (as `python -m workflow_engine`)
    main()
