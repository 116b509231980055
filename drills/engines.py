"""The drill engines: drills/drill.yaml plus the component that times out, one `workflow run` per drill."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from workflow_engine.registry.builtins import default_registry

DRILL_YAML = Path(__file__).with_name("drill.yaml")
COMPONENT = '''
async def execute(ctx, input):
    await ctx.sleep(float(input.get("sleep", 0)))
    return {"price": 42}
'''
# HighMemoryUsage: a component that keeps what it is given (a cache that grows), until asked to drop it.
CACHE = '''
HELD = []

async def execute(ctx, input):
    if input.get("drop"):
        HELD.clear()
    else:
        HELD.append(bytearray(int(input["mb"]) * 1048576))
    return {"held": len(HELD)}
'''
# The ComponentTimeout drill's culprit: (module label, name label) of the module whose operations time out.
DYNAMIC_CULPRIT = ("dynamic", "pricing")
HTTP_CULPRIT = ("http_client", "rates")


def dynamic_available() -> bool:
    """Whether this engine has the dynamic.component module and the call step (issue [dynamic])."""
    registry = default_registry()
    return "dynamic.component" in registry.modules and "call" in registry.steps


def drill_config(workdir: Path) -> tuple[Path, tuple[str, str]]:
    """Write the drill config into `workdir`; return its path and the ComponentTimeout culprit.

    `GET /quote?sleep=S` calls a module with a 300 ms timeout that takes S seconds: a dynamic component when
    the engine has them, else an http.client calling a route that sleeps.
    """
    config: dict[str, Any] = yaml.safe_load(DRILL_YAML.read_text())
    quote_step: dict[str, Any]
    if dynamic_available():
        (workdir / "pricing.py").write_text(COMPONENT)
        (workdir / "cache.py").write_text(CACHE)
        config["modules"].append({"name": "cache", "type": "dynamic.component",
                                  "config": {"source": str(workdir / "cache.py")}})
        config["workflows"]["cache"] = {
            "trigger": {"http": {"server": "web", "method": "POST", "path": "/cache"}},
            "durable": False,
            "steps": [{"call": {"component": "cache", "with": {"mb": "{{ input.query.mb | default(0) }}",
                                                             "drop": "{{ input.query.drop == '1' }}"}}}],
        }
        config["modules"].append({"name": "pricing", "type": "dynamic.component",
                                  "config": {"source": str(workdir / "pricing.py"), "timeout": "300ms"}})
        quote_step = {"call": {"component": "pricing", "with": {"sleep": "{{ input.query.sleep | default(0) }}"}}}
        culprit = DYNAMIC_CULPRIT
    else:
        config["modules"].append({"name": "rates", "type": "http.client",
                                  "config": {"base_url": "http://${WEB_ADDR}", "timeout": "300ms"}})
        config["workflows"]["rates-backend"] = {
            "trigger": {"http": {"server": "web", "method": "GET", "path": "/rates-backend"}},
            "durable": False,
            "steps": [{"if": "{{ input.query.sleep == '1' }}", "then": [{"sleep": "1s"}]},
                      {"set": {"rate": 1.1}}],
        }
        quote_step = {"http": {"client": "rates", "url": "/rates-backend",
                               "query": {"sleep": "{{ input.query.sleep | default('0') }}"}}}
        culprit = HTTP_CULPRIT
    config["workflows"]["quote"] = {
        "trigger": {"http": {"server": "web", "method": "GET", "path": "/quote"}},
        "durable": False,
        "steps": [quote_step],
    }
    path = workdir / "drill.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, culprit
