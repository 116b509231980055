"""The `publish` step with `broker:`: to a broker module, with headers, key and the execution id for tracing."""

from __future__ import annotations

from tests.factories import executions, running_engine, wait_until

APP = """\
version: 1
name: app
engine: {shutdown_grace: 2s}
modules:
  - name: bus
    type: broker.memory
workflows:
  produce:
    steps:
      - id: send
        publish:
          broker: bus
          topic: "orders.{{ input.region }}"
          key: "{{ input.customer }}"
          headers: {source: api}
          message: {total: "{{ input.total }}"}
  consume:
    trigger: {message: {broker: bus, topic: "orders.*"}}
    steps:
      - id: seen
        set:
          body: "{{ input.body }}"
          key: "{{ input.key }}"
          headers: "{{ input.headers }}"
          id: "{{ input.id }}"
"""


async def test_publish_step_reaches_a_message_trigger() -> None:
    async with running_engine(APP) as engine:
        produced = await engine.start_execution("produce", {"region": "eu", "customer": "c7", "total": 12},
                                                wait=True)
        assert produced.status == "success", produced.error
        sent = produced.output
        assert sent["topic"] == "orders.eu"
        assert sent["broker"] == "bus"
        assert sent["message_id"].startswith(produced.id)
        await wait_until(lambda: executions(engine.metrics, "consume", "success") == 1, "the consumer ran")
        (record,) = (await engine.store.list_executions(workflow="consume", limit=5)).items
        assert record.output == {"body": {"total": 12}, "key": "c7", "id": sent["message_id"],
                                 "headers": {"source": "api", "execution_id": produced.id}}


async def test_publish_to_an_invalid_topic_fails_the_step() -> None:
    app = APP.replace('topic: "orders.{{ input.region }}"', 'topic: "{{ input.region }}.*"')
    async with running_engine(app) as engine:
        produced = await engine.start_execution("produce", {"region": "eu", "customer": "c", "total": 1}, wait=True)
        assert produced.status == "error"
        assert produced.error is not None
        assert produced.error["code"] == "invalid_topic"
        assert "wildcard" in produced.error["message"]
