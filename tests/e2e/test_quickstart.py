"""The README's quickstart: the same requests give the documented answers from the real process."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.e2e.process import engine_process, free_port, sample, wait_until

ROOT = Path(__file__).parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
JSON = {"content-type": "application/json"}


def test_quickstart_answers_as_the_readme_says() -> None:
    port = free_port()
    env = {"QUICKSTART_ADDR": f"127.0.0.1:{port}"}
    with engine_process(QUICKSTART, env=env, web_port=port) as engine, httpx.Client(timeout=10) as client:
        web = engine.web
        assert client.get(f"{web}/catalog/apple").json() == {"sku": "apple", "price": 0.5}

        kiwi = client.get(f"{web}/catalog/kiwi")
        assert kiwi.status_code == 404
        assert kiwi.json()["error"] == {"code": "unknown_sku", "message": "unknown sku 'kiwi'", "step": "_fail_1"}
        assert kiwi.json()["execution_id"] == kiwi.headers["x-execution-id"]

        order = client.post(f"{web}/orders", headers=JSON, content=(
            b'{"customer":"ann","items":[{"sku":"apple","quantity":3},{"sku":"melon","quantity":1}]}'))
        assert order.status_code == 201
        body = order.json()
        assert body["order_id"] == order.headers["x-execution-id"]
        assert body["customer"] == "ann"
        assert body["lines"] == [{"sku": "apple", "quantity": 3, "line_total": 1.5},
                                 {"sku": "melon", "quantity": 1, "line_total": 3.2}]
        assert body["total"] == 4.7

        empty = client.post(f"{web}/orders", headers=JSON, content=b'{"customer":"ann","items":[]}')
        assert empty.status_code == 400
        assert empty.json() == {"error": {
            "code": "validation_failed", "message": "request body is invalid: /items: [] should be non-empty",
            "details": [{"path": "/items", "message": "[] should be non-empty"}]}}

        unpriced = client.post(f"{web}/orders", headers=JSON,
                               content=b'{"customer":"ann","items":[{"sku":"kiwi","quantity":1}]}')
        assert unpriced.status_code == 422
        assert unpriced.json()["error"]["code"] == "unpriced_item"
        assert unpriced.json()["error"]["message"] == "cannot price 'kiwi': GET /catalog/kiwi answered 404"

        ready = client.get(f"{engine.mgmt}/readyz").json()
        assert ready == {"status": "ready", "draining": False, "components": {
            "catalog-api": {"kind": "http_client", "state": "ready"},
            "store": {"kind": "store", "state": "ready"},
            "web": {"kind": "http_server", "state": "ready"}}}
        # The published event reached the consuming workflow.
        wait_until(lambda: sample(engine.metrics(), "workflow_executions_total", workflow_type="notify-order",
                                  status="success") == 1)
        assert f"order {body['order_id']} for ann: total 4.7" in engine.logs()
