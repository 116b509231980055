"""End to end: the real `workflow run` process, driven over HTTP."""

from __future__ import annotations

import re
import subprocess
import threading
from pathlib import Path

import httpx

from tests.e2e.process import WORKFLOW, engine_process, sample, wait_until

APP = Path(__file__).parent / "app.yaml"
UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_routes_answer_with_execution_ids_and_json_errors() -> None:
    with engine_process(APP) as engine:
        ok = httpx.post(f"{engine.web}/echo/ann", json={"items": [1, 2, 3]})
        assert ok.status_code == 201
        assert UUID7.match(ok.headers["x-execution-id"])
        assert ok.json() == {"name": "ann", "summary": {"count": 3, "total": 6},
                             "run": ok.headers["x-execution-id"]}

        bad_body = httpx.post(f"{engine.web}/echo/ann", json={"items": ["x"]})
        assert bad_body.status_code == 400
        assert bad_body.json()["error"]["code"] == "validation_failed"
        assert bad_body.json()["error"]["details"][0]["path"] == "/items/0"

        not_json = httpx.post(f"{engine.web}/echo/ann", content=b"{nope", headers={"content-type": "application/json"})
        assert not_json.status_code == 400
        assert not_json.json()["error"]["code"] == "invalid_json"

        failed_validate = httpx.post(f"{engine.web}/echo/ann", json={"items": [1, 2, 3, 4, 5, 6]})
        assert failed_validate.status_code == 400
        assert failed_validate.json()["error"]["code"] == "validation_failed"
        assert UUID7.match(failed_validate.headers["x-execution-id"])

        boom = httpx.get(f"{engine.web}/items/boom")
        assert boom.status_code == 500
        assert boom.json()["error"]["message"] == "item boom exploded"
        assert boom.json()["execution_id"] == boom.headers["x-execution-id"]

        missing = httpx.get(f"{engine.web}/items/missing")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"

        unmatched = httpx.get(f"{engine.web}/nowhere")
        assert unmatched.status_code == 404
        assert unmatched.json()["error"]["code"] == "not_found"


def test_full_queue_answers_503_with_retry_after() -> None:
    with engine_process(APP) as engine, httpx.Client(timeout=10) as client:
        results: list[httpx.Response] = []

        def call() -> None:
            results.append(client.post(f"{engine.web}/slow"))

        threads = [threading.Thread(target=call) for _ in range(2)]
        for thread in threads:
            thread.start()
        # One runs, one waits in the queue (concurrency 1, queue_size 1): the next is refused.
        wait_until(lambda: sample(engine.metrics(), "workflow_queue_depth", workflow_type="slow") == 1)
        refused = client.post(f"{engine.web}/slow")
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "queue_full"
        for thread in threads:
            thread.join()
        assert sorted(r.status_code for r in results) == [200, 200]


def test_schedule_event_and_async_triggers_run_workflows() -> None:
    with engine_process(APP) as engine:
        accepted = httpx.post(f"{engine.web}/orders", json={"customer": "zoe"})
        assert accepted.status_code == 202
        assert accepted.json()["execution_id"] == accepted.headers["x-execution-id"]

        def ran(workflow: str) -> bool:
            value = sample(engine.metrics(), "workflow_executions_total", workflow_type=workflow, status="success")
            return (value or 0) >= 1

        wait_until(lambda: ran("on-order") and ran("tick") and ran("order"))
        text = engine.metrics()
        assert sample(text, "trigger_events_total", workflow_type="tick", trigger="schedule")
        assert sample(text, "trigger_events_total", workflow_type="on-order", trigger="event") == 1
        assert "order event orders.created for zoe" in engine.logs()


def test_sigterm_drains_running_executions_interrupts_stragglers_and_exits_zero() -> None:
    with engine_process(APP, env={"GRACE": "1500ms"}) as engine, httpx.Client(timeout=30) as client:
        results: dict[str, httpx.Response] = {}
        threads = [
            threading.Thread(target=lambda: results.__setitem__("nap", client.get(f"{engine.web}/nap"))),
            threading.Thread(target=lambda: results.__setitem__("long", client.get(f"{engine.web}/long"))),
        ]
        for thread in threads:
            thread.start()
        wait_until(lambda: sample(engine.metrics(), "active_workflows", workflow_type="nap") == 1
                   and sample(engine.metrics(), "active_workflows", workflow_type="long") == 1)
        assert engine.stop() == 0
        for thread in threads:
            thread.join()
        # The short one finished within the grace period; the long one (not durable) was cancelled after it,
        # by name.
        assert results["nap"].status_code == 200
        assert results["nap"].json() == {"slept": True}
        assert results["long"].status_code == 409
        assert results["long"].json()["error"]["code"] == "cancelled"
        logs = engine.logs()
        assert "interrupting execution still running after shutdown grace" in logs
        assert "execution:long:" in logs


def test_readyz_while_draining_is_503() -> None:
    with engine_process(APP, env={"GRACE": "3s"}) as engine, httpx.Client(timeout=30) as client:
        thread = threading.Thread(target=lambda: client.get(f"{engine.web}/nap"))
        thread.start()
        wait_until(lambda: sample(engine.metrics(), "active_workflows", workflow_type="nap") == 1)
        engine.proc.send_signal(15)
        wait_until(lambda: httpx.get(f"{engine.mgmt}/readyz").status_code == 503, timeout=5)
        assert httpx.get(f"{engine.mgmt}/readyz").json()["draining"] is True
        assert httpx.get(f"{engine.mgmt}/healthz").status_code == 200
        thread.join()
        assert engine.proc.wait(30) == 0


def test_invalid_config_reports_every_issue_and_does_not_start(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "version: 1\n"
        "name: broken\n"
        "modules:\n"
        "  - name: web\n"
        "    type: http.server\n"
        "    config: {address: \"${NOT_SET_ANYWHERE}\", max_body_size: lots}\n"
        "  - name: a\n"
        "    type: http.client\n"
        "    depends_on: [b]\n"
        "  - name: b\n"
        "    type: http.client\n"
        "    depends_on: [a]\n"
        "    config: {timeout: 2s, colour: red}\n"
        "workflows:\n"
        "  hello:\n"
        "    trigger: {http: {server: wbe, path: /hello}}\n"
        "    concurrency: many\n"
        "    steps:\n"
        "      - set: {a: 1}\n"
    )
    result = subprocess.run([WORKFLOW, "run", str(config)], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin"}, check=False)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    expected = [
        f"{config}:6:23: modules[0].config.address: environment variable 'NOT_SET_ANYWHERE' is not set",
        f"{config}:6:61: modules[0].config.max_body_size: invalid size 'lots'",
        f"{config}:9:18: modules[1].depends_on[0]: dependency cycle: a -> b -> a",
        f"{config}:13:27: modules[2].config.colour: unknown field 'colour'",
        f"{config}:16:30: workflows.hello.trigger.http.server: unknown module 'wbe' (did you mean 'web'?)",
        f"{config}:17:18: workflows.hello.concurrency: Input should be a valid integer",
    ]
    for prefix in expected:
        assert any(line.startswith(prefix) for line in lines), (prefix, lines)
    located = [line for line in lines if re.match(re.escape(str(config)) + r":\d+:\d+: ", line)]
    assert len(located) == len(expected)
    assert "6 issue(s); not started" in result.stderr
