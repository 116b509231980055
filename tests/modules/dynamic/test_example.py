"""examples/dynamic.yaml validates (`workflow validate`) and its pricing component serves a quote."""

from __future__ import annotations

import asyncio
from pathlib import Path

from typer.testing import CliRunner

from tests.factories import running_engine
from workflow_engine.cli import app as cli_app

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def test_the_example_validates() -> None:
    result = CliRunner().invoke(cli_app, ["validate", str(EXAMPLES / "dynamic.yaml")])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("dynamic.yaml: ok")


async def test_the_example_component_prices_an_order() -> None:
    text = (EXAMPLES / "dynamic.yaml").read_text().replace(
        "source: components/pricing.py", f"source: {EXAMPLES / 'components' / 'pricing.py'}")
    env = {"DYNAMIC_ADDR": "127.0.0.1:0", "WORKFLOW_MGMT_ADDR": "127.0.0.1:0", "WORKFLOW_STORE": "sqlite:///:memory:"}
    async with running_engine(text, env=env) as engine:
        await asyncio.gather(*(s.ready.wait() for s in engine.supervisors.values()))
        order = {"items": [{"price": 10, "quantity": 3}], "coupon": "WELCOME"}
        execution = await engine.start_execution("quote", {"body": order}, wait=True)
        assert execution.error is None, execution.error
        assert execution.steps["price"]["output"] == {"subtotal": 30, "discount": 0.1, "total": 27.0}
