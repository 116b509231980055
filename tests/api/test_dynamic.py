"""`/api/dynamic/components` and `workflow components ls|push|rm` against a real engine: uploads are checked,
kept in the store, win over the file until deleted, and reach the workflows' next call."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from typer.testing import CliRunner

from tests.api.conftest import TOKENS, bearer, engine_yaml
from tests.factories import running_engine
from workflow_engine.cli import app as cli_app
from workflow_engine.engine.engine import Engine

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")
FILE_SOURCE = "def execute(ctx, input):\n    return {'from': 'file', 'n': input.get('n')}\n"
UPLOAD = "def execute(ctx, input):\n    return {'from': 'upload', 'n': input.get('n')}\n"


def app_yaml(source: Path) -> str:
    return f"""
version: 1
name: dyn
engine: {engine_yaml()}
modules:
  - name: pricing
    type: dynamic.component
    config: {{source: "{source}"}}
  - name: api-only
    type: dynamic.component
workflows:
  price:
    steps:
      - id: price
        call: pricing
        with: {{n: "{{{{ input.n }}}}"}}
  other:
    steps:
      - call: api-only
"""


@asynccontextmanager
async def api(tmp_path: Path, store: str | None = None) -> AsyncIterator[tuple[Engine, httpx.AsyncClient]]:
    source = tmp_path / "pricing.py"
    if not source.exists():
        source.write_text(FILE_SOURCE)
    async with running_engine(app_yaml(source), store_url=store or "sqlite:///:memory:") as engine:
        assert engine.management is not None
        await asyncio.gather(*(s.ready.wait() for s in engine.supervisors.values()))
        async with httpx.AsyncClient(base_url=engine.management.url, headers=bearer("admin"), timeout=30) as http:
            yield engine, http


async def price(engine: Engine, n: int) -> object:
    execution = await engine.start_execution("price", {"n": n}, wait=True)
    assert execution.error is None, execution.error
    return execution.output


async def test_upload_replaces_the_file_until_deleted_and_survives_a_restart(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/store.db"
    async with api(tmp_path, store) as (engine, http):
        listed = (await http.get("/api/dynamic/components")).json()["items"]
        assert [(c["name"], c["status"], c.get("origin")) for c in listed] == [
            ("api-only", "empty", None), ("pricing", "ready", "file")]
        assert await price(engine, 1) == {"from": "file", "n": 1}

        put = await http.put("/api/dynamic/components/pricing", content=UPLOAD,
                             headers={"Content-Type": "text/x-python"})
        assert put.status_code == 200, put.text
        assert (put.json()["origin"], put.json()["version"]) == ("upload", 2)
        assert await price(engine, 2) == {"from": "upload", "n": 2}
        detail = (await http.get("/api/dynamic/components/pricing")).json()
        assert detail["source"] == UPLOAD

    async with api(tmp_path, store) as (engine, http):  # a restart loads the upload from the store
        assert await price(engine, 3) == {"from": "upload", "n": 3}
        deleted = await http.delete("/api/dynamic/components/pricing")
        assert deleted.status_code == 200
        assert deleted.json()["origin"] == "file"
        assert await price(engine, 4) == {"from": "file", "n": 4}
        again = await http.delete("/api/dynamic/components/pricing")
        assert (again.status_code, again.json()["error"]["code"]) == (404, "not_found")


async def test_a_refused_source_answers_422_with_file_line_reason_and_changes_nothing(tmp_path: Path) -> None:
    async with api(tmp_path) as (engine, http):
        bad = await http.put("/api/dynamic/components/pricing", json={"source": "import os\n\ndef execute(c, i):\n"
                                                                     "    return {}\n"})
        assert bad.status_code == 422
        error = bad.json()["error"]
        assert (error["code"], error["line"], error["file"]) == ("component_invalid", 1, "<uploaded pricing>")
        assert "'os' is not allowed" in error["reason"]
        assert await price(engine, 1) == {"from": "file", "n": 1}
        listed = {c["name"]: c for c in (await http.get("/api/dynamic/components")).json()["items"]}
        assert listed["pricing"]["last_error"]["reason"] == error["reason"]
        metrics = engine.metrics.registry.get_sample_value("module_operations_total", {
            "module": "dynamic", "name": "pricing", "operation": "reload", "status": "error"})
        assert metrics == 1


async def test_post_creates_for_configured_components_only(tmp_path: Path) -> None:
    async with api(tmp_path) as (engine, http):
        unknown = await http.post("/api/dynamic/components", json={"name": "nope", "source": UPLOAD})
        assert unknown.status_code == 404
        assert "configured dynamic.component" in unknown.json()["error"]["message"]
        failed = await engine.start_execution("other", {}, wait=True)
        assert failed.error is not None
        assert failed.error["code"] == "component_unavailable"

        created = await http.post("/api/dynamic/components", json={"name": "api-only", "source": UPLOAD})
        assert created.status_code == 201
        assert created.json()["status"] == "ready"
        ok = await engine.start_execution("other", {}, wait=True)
        assert ok.output == {"from": "upload", "n": None}
        conflict = await http.post("/api/dynamic/components", json={"name": "api-only", "source": UPLOAD})
        assert conflict.status_code == 409
        gone = await http.delete("/api/dynamic/components/api-only")
        assert gone.json()["status"] == "empty"


async def test_admin_role_is_required_and_bodies_are_checked(tmp_path: Path) -> None:
    async with api(tmp_path) as (_engine, http):
        for role in ("viewer", "operator"):
            listed = await http.get("/api/dynamic/components", headers=bearer(role))
            assert listed.status_code == 403
        assert (await http.get("/api/dynamic/components", headers={"Authorization": ""})).status_code == 401
        wrong_type = await http.put("/api/dynamic/components/pricing", content=b"x",
                                    headers={"Content-Type": "image/png"})
        assert wrong_type.status_code == 415
        bad_json = await http.put("/api/dynamic/components/pricing", json={"code": "x"})
        assert bad_json.status_code == 400
        assert (await http.get("/api/dynamic/components/nope")).status_code == 404


async def test_cli_components_ls_push_rm(tmp_path: Path) -> None:
    async with api(tmp_path) as (engine, _http):
        assert engine.management is not None
        env = {"WORKFLOW_SERVER": engine.management.url, "WORKFLOW_TOKEN": TOKENS["admin"]}
        upload = tmp_path / "new.py"
        upload.write_text(UPLOAD)

        def cli(*args: str) -> tuple[int, str]:
            result = CliRunner().invoke(cli_app, list(args), env=env)
            # The engine runs in this process: its log lines land in the captured output too.
            lines = [line for line in result.output.splitlines() if not LOG_LINE.match(line)]
            return result.exit_code, "\n".join(lines)

        code, out = await asyncio.to_thread(cli, "components", "push", "pricing", str(upload))
        assert (code, out.strip()) == (0, f"pricing: version 2 active (from {upload})")
        assert await price(engine, 5) == {"from": "upload", "n": 5}
        code, out = await asyncio.to_thread(cli, "components", "ls", "--json")
        assert code == 0
        assert {c["name"]: c.get("origin") for c in json.loads(out)["items"]} == {"api-only": None,
                                                                                 "pricing": "upload"}
        code, out = await asyncio.to_thread(cli, "components", "ls")
        assert code == 0
        assert "pricing" in out
        assert "upload" in out
        code, out = await asyncio.to_thread(cli, "components", "rm", "pricing")
        assert (code, out.strip()) == (0, "pricing: upload removed; status ready, version 3 from the file")
        code, out = await asyncio.to_thread(cli, "components", "rm", "pricing")
        assert code == 1
        assert "has no uploaded source (not_found, HTTP 404)" in out
        bad = tmp_path / "bad.py"
        bad.write_text("def execute(ctx, input):\n    return {\n")
        code, out = await asyncio.to_thread(cli, "components", "push", "pricing", str(bad))
        assert code == 1
        assert "<uploaded pricing>:2: syntax error" in out
