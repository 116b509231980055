"""The event trigger: a `publish` step starts the workflows whose topic pattern matches."""

from __future__ import annotations

import pytest

from tests.factories import app_yaml, executions, finished_runs, load_app, running_engine, sample, wait_until
from workflow_engine.errors import ConfigError
from workflow_engine.runtime.execution import ExecutionStatus


async def test_a_published_event_starts_the_matching_workflow_with_topic_and_data() -> None:
    async with running_engine(app_yaml("""
        place-order:
          steps:
            - id: emit
              publish:
                topic: "orders.{{ input.region }}.created"
                message: {id: "{{ input.id }}", total: "{{ input.total }}"}
                headers: {source: shop}
        on-order:
          trigger: {event: {topic: "orders.>"}}
          steps:
            - set:
                topic: "{{ input.topic }}"
                data: "{{ input.data }}"
                source: "{{ input.headers.source }}"
                publisher: "{{ input.headers.execution_id }}"
                event_id: "{{ input.id }}"
        on-payment:
          trigger: {event: {topic: "payments.*"}}
          steps:
            - set: {a: 1}
    """)) as engine:
        order = await engine.start_execution("place-order", {"region": "eu", "id": 7, "total": 12.5}, wait=True)
        await wait_until(lambda: executions(engine.metrics, "on-order", "success") == 1, "the event was handled")
        received = finished_runs(engine, "on-order")[0]
        assert sample(engine.metrics, "trigger_events_total", workflow_type="on-order", trigger="event") == 1
        assert sample(engine.metrics, "trigger_events_total", workflow_type="on-payment", trigger="event") == 0
    assert order.output == {"topic": "orders.eu.created", "delivered": 1}
    assert received.status is ExecutionStatus.SUCCESS
    assert received.trigger == "event"
    # The event id is fixed per execution and step: a step re-run after a crash publishes the same event,
    # which a broker-backed bus and the event trigger's idempotency key recognise as a duplicate.
    assert received.output == {"topic": "orders.eu.created", "data": {"id": 7, "total": 12.5}, "source": "shop",
                               "publisher": order.id, "event_id": f"{order.id}:emit"}
    assert finished_runs(engine, "on-payment") == []


async def test_every_matching_workflow_gets_each_event() -> None:
    async with running_engine(app_yaml("""
        emit:
          steps:
            - publish: {topic: "audit.login", message: "{{ input.user }}"}
        first:
          trigger: {event: {topic: "audit.*"}}
          steps:
            - set: {user: "{{ input.data }}"}
        second:
          trigger: {event: {topic: ">"}}
          steps:
            - set: {user: "{{ input.data }}"}
    """)) as engine:
        for user in ("ann", "bob"):
            await engine.start_execution("emit", {"user": user}, wait=True)
        def users() -> dict[str, list[str]]:
            # The login events' data is the user's name; lifecycle events' data is a mapping. (Not the input:
            # older finished executions keep only their summary.)
            return {name: sorted(run.output["user"] for run in finished_runs(engine, name)
                                 if isinstance(run.output["user"], str)) for name in ("first", "second")}

        # `second` also hears lifecycle events (topic ">"), so count only the audit ones it handled.
        await wait_until(lambda: executions(engine.metrics, "first", "success") == 2
                         and len(users()["second"]) == 2, "both workflows handled both logins")
        assert executions(engine.metrics, "first", "success") == 2
        seen = users()
    assert seen == {"first": ["ann", "bob"], "second": ["ann", "bob"]}


async def test_a_workflow_does_not_trigger_itself_through_its_own_lifecycle_events() -> None:
    async with running_engine(app_yaml("""
        job:
          steps:
            - set: {a: 1}
        on-failure:
          trigger: {event: {topic: "workflow.*"}}
          steps:
            - id: maybe
              if: "{{ input.data.status == 'error' }}"
              fail: {message: "alerting failed too"}
    """)) as engine:
        await engine.start_execution("job", wait=True)
        await wait_until(lambda: executions(engine.metrics, "on-failure", "success") == 2, "job's events handled")
        await engine.bus.drain(5)
        await wait_until(lambda: not engine.runtime.live, "no execution runs")
        handled = sorted(run.input["topic"] for run in finished_runs(engine, "on-failure"))
    # job started and completed: two runs; the watcher's own started/completed events do not start it again.
    assert handled == ["workflow.completed", "workflow.started"]


@pytest.mark.parametrize("topic", ["orders..created", "orders.>.x", ""])
def test_invalid_topic_pattern_is_a_config_issue(topic: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_app(app_yaml(f"""
            w:
              trigger: {{event: {{topic: "{topic}"}}}}
              steps:
                - set: {{a: 1}}
        """))
    issues = [str(issue) for issue in caught.value.issues]
    assert len(issues) == 1
    assert "workflows.w.trigger.event.topic" in issues[0]
    assert "invalid topic pattern" in issues[0]
