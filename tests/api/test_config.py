"""Status, workflows, config get/validate, schema, modules and the OpenAPI document."""

from __future__ import annotations

import json
import textwrap

from tests.api.conftest import api_engine
from tests.factories import app_yaml

WORKFLOWS = """
hello:
  description: Greets.
  timeout: 5s
  concurrency: 3
  queue_size: 7
  steps:
    - id: greet
      set: {greeting: hi}
    - id: check
      if: "{{ input }}"
      then:
        - id: inner
          log: "got input"
ticker:
  trigger:
    schedule: {every: 1h}
  steps:
    - set: {a: 1}
"""


async def test_status_names_the_app_versions_and_readiness() -> None:
    async with api_engine(WORKFLOWS) as api:
        body = (await api.get("/api/status")).json()
    assert body["app"] == "app"
    assert body["engine_version"]
    assert isinstance(body["config_version"], int)
    assert body["uptime_seconds"] >= 0
    assert body["ready"] is True
    assert body["readiness"]["status"] == "ready"
    assert body["live_executions"] == 0


async def test_workflows_list_and_detail() -> None:
    async with api_engine(WORKFLOWS) as api:
        listed = (await api.get("/api/workflows")).json()["items"]
        hello = (await api.get("/api/workflows/hello")).json()
        missing = await api.get("/api/workflows/nope")
    assert [w["name"] for w in listed] == ["hello", "ticker"]
    assert hello["description"] == "Greets."
    assert hello["trigger"] == {"kind": "manual", "config": {}}
    assert (hello["concurrency"], hello["queue_size"], hello["timeout"]) == (3, 7, 5.0)
    assert hello["steps"][0] == {"id": "greet", "kind": "set", "children": {}}
    assert hello["steps"][1]["kind"] == "if"
    assert [s["id"] for s in hello["steps"][1]["children"]["then"]] == ["inner"]
    assert (hello["running"], hello["queued"]) == (0, 0)
    ticker = next(w for w in listed if w["name"] == "ticker")
    assert ticker["trigger"]["kind"] == "schedule"
    assert ticker["trigger"]["config"]["every"] == "3600s"
    assert missing.status_code == 404


async def test_get_config_returns_the_running_text_and_version() -> None:
    async with api_engine(WORKFLOWS) as api:
        body = (await api.get("/api/config")).json()
        text = api.engine.app.source_text
    assert body["text"] == text
    assert body["file"] == "app.yaml"
    assert isinstance(body["version"], int)


async def test_validate_accepts_a_valid_config_as_yaml_or_json() -> None:
    valid = app_yaml("other:\n  steps:\n    - set: {b: 2}\n")
    async with api_engine(WORKFLOWS) as api:
        as_yaml = await api.post("/api/config/validate", "admin", content=valid,
                                 headers={"Content-Type": "text/yaml"})
        as_json = await api.post("/api/config/validate", "admin", json={"text": valid})
        workflows = (await api.get("/api/workflows")).json()["items"]
    assert as_yaml.status_code == 200
    assert as_yaml.json() == {"valid": True, "issues": []}
    assert as_json.json() == {"valid": True, "issues": []}
    assert [w["name"] for w in workflows] == ["hello", "ticker"]  # validating changes nothing


async def test_validate_reports_every_issue_located_including_templates() -> None:
    invalid = textwrap.dedent("""\
        version: 1
        name: app
        workflows:
          bad:
            concurrency: 0
            steps:
              - id: one
                set: {a: "{{ input. }}"}
              - id: two
                nosuchstep: {}
        """)
    template_only = app_yaml("bad:\n  steps:\n    - set: {a: '{{ input. }}'}\n")
    async with api_engine(WORKFLOWS) as api:
        response = await api.post("/api/config/validate?file=new.yaml", "admin", content=invalid)
        template = await api.post("/api/config/validate", "admin", content=template_only)
    assert response.status_code == 422
    body = response.json()
    assert body["valid"] is False
    paths = {issue["path"]: issue for issue in body["issues"]}
    assert paths["workflows.bad.concurrency"]["line"] == 5
    assert paths["workflows.bad.concurrency"]["file"] == "new.yaml"
    assert any(issue["line"] == 10 for issue in body["issues"])
    assert all(set(issue) == {"file", "line", "col", "path", "message"} for issue in body["issues"])
    assert template.status_code == 422
    issue = template.json()["issues"][0]
    assert issue["path"].startswith("workflows.bad.steps[0]")
    assert issue["file"] == "app.yaml"


async def test_validate_refuses_bodies_it_cannot_read() -> None:
    async with api_engine(WORKFLOWS) as api:
        no_text = await api.post("/api/config/validate", "admin", json={"yaml": "x"})
        not_json = await api.post("/api/config/validate", "admin", content=b"{",
                                  headers={"Content-Type": "application/json"})
        binary = await api.post("/api/config/validate", "admin", content=b"\xff\xfe",
                                headers={"Content-Type": "text/yaml"})
        form = await api.post("/api/config/validate", "admin", content=b"a=1",
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert no_text.status_code == 400
    assert not_json.status_code == 400
    assert binary.status_code == 400
    assert form.status_code == 415
    assert form.json()["error"]["code"] == "unsupported_media_type"


async def test_schema_is_the_config_json_schema() -> None:
    async with api_engine(WORKFLOWS) as api:
        schema = (await api.get("/api/schema")).json()
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert {"version", "name", "engine", "modules", "workflows"} <= set(schema["properties"])
    assert "ApiConfig" in schema["$defs"]


async def test_modules_lists_every_registered_type_with_its_config_schema() -> None:
    async with api_engine(WORKFLOWS) as api:
        body = (await api.get("/api/modules")).json()
        registry = api.engine.registry
    assert {m["name"] for m in body["modules"]} == set(registry.modules)
    assert {s["name"] for s in body["steps"]} == set(registry.steps)
    assert {t["name"] for t in body["triggers"]} == set(registry.triggers)
    server = next(m for m in body["modules"] if m["name"] == "http.server")
    assert server["kind"] == "http_server"
    assert server["summary"]
    assert "address" in server["config_schema"]["properties"]
    if_step = next(s for s in body["steps"] if s["name"] == "if")
    assert if_step["key"] == "then"


async def test_openapi_document_is_served_at_the_root_with_api_paths() -> None:
    async with api_engine(WORKFLOWS) as api:
        response = await api.http.get("/openapi.json")
        fastapi_own = await api.http.get("/api/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) >= {
        "/api/status", "/api/workflows", "/api/workflows/{name}", "/api/workflows/{name}/executions",
        "/api/executions", "/api/executions/{execution_id}", "/api/executions/{execution_id}/cancel",
        "/api/executions/{execution_id}/retry", "/api/config", "/api/config/validate", "/api/schema",
        "/api/modules", "/api/events",
    }
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    status = document["paths"]["/api/status"]["get"]
    assert status["security"] == [{"HTTPBearer": []}]
    json.dumps(document)
    assert fastapi_own.status_code == 404  # no unauthenticated copy under /api


async def test_put_config_applies_a_valid_config_and_refuses_a_bad_one_untouched() -> None:
    async with api_engine(WORKFLOWS) as api:
        running = (await api.get("/api/config")).json()
        changed = running["text"].replace("greeting: hi", "greeting: hello")
        assert changed != running["text"]
        viewer = await api.put("/api/config", "operator", content=changed)
        applied = await api.put("/api/config", "admin", content=changed)
        after = (await api.get("/api/config")).json()
        started = await api.post("/api/workflows/hello/executions?wait=true", "operator", json=None)
        detail = (await api.get(f"/api/executions/{started.json()['id']}")).json()
        broken = await api.put("/api/config?file=new.yaml", "admin",
                               content=changed.replace("concurrency: 3", "concurrency: 0"))
        unchanged = (await api.get("/api/config")).json()
    assert viewer.status_code == 403
    assert applied.status_code == 200
    assert applied.json()["applied"] is True
    assert after["version"] == applied.json()["version"] != running["version"]
    assert after["text"] == changed
    greet = next(step for step in detail["steps"] if step["step"] == "greet")
    assert greet["output"] == {"greeting": "hello"}  # the new generation ran
    assert broken.status_code == 422
    assert [(i["file"], i["path"]) for i in broken.json()["issues"]] == [("new.yaml", "workflows.hello.concurrency")]
    assert unchanged == after
