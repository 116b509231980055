"""The built-in steps, each run inside a real engine built from YAML."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from structlog.testing import capture_logs

from tests.factories import app_yaml, config_issues, executions, finished_runs, running_engine, wait_done
from workflow_engine.errors import FailError, StepError, ValidationFailedError
from workflow_engine.observability.logging import merge_log_context
from workflow_engine.runtime.execution import ExecutionStatus
from workflow_engine.runtime.steps.control import bounded_gather

# -- set, transform, validate ----------------------------------------------------------------------------------


async def test_set_outputs_its_mapping_with_native_values() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - id: values
              set:
                count: "{{ input.items | length }}"
                first: "{{ input.items[0] }}"
                label: "n={{ input.items | length }}"
                fixed: [1, 2]
            - id: again
              set: {double: "{{ steps.values.output.count * 2 }}"}
    """)) as engine:
        execution = await engine.start_execution("w", {"items": [{"a": 1}, {"a": 2}]}, wait=True)
    assert execution.steps["values"]["output"] == {"count": 2, "first": {"a": 1}, "label": "n=2", "fixed": [1, 2]}
    assert execution.output == {"double": 4}


async def test_transform_applies_jmespath_to_the_scope_or_to_data() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - id: names
              transform: {expression: "input.people[?age > `30`].name"}
            - id: total
              transform:
                expression: "sum([*].price)"
                data: "{{ input.lines }}"
            - id: shorthand
              transform: "steps.names.output[0]"
    """)) as engine:
        execution = await engine.start_execution("w", {
            "people": [{"name": "ann", "age": 41}, {"name": "bob", "age": 25}, {"name": "cy", "age": 33}],
            "lines": [{"price": 2}, {"price": 3}],
        }, wait=True)
    assert execution.status is ExecutionStatus.SUCCESS
    assert execution.steps["names"]["output"] == ["ann", "cy"]
    assert execution.steps["total"]["output"] == 5
    assert execution.output == "ann"


async def test_transform_error_at_run_time_fails_the_step() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - id: bad
              transform: {expression: "sum(@)", data: "{{ input.words }}"}
    """)) as engine:
        execution = await engine.start_execution("w", {"words": ["a", "b"]}, wait=True)
    assert execution.error is not None
    assert execution.error["code"] == "transform_error"
    assert execution.error["step"] == "bad"


def test_invalid_jmespath_is_a_config_issue_at_the_step() -> None:
    issues = config_issues(app_yaml("""
        w:
          steps:
            - id: bad
              transform: {expression: "input.[["}
    """))
    assert len(issues) == 1
    assert issues[0].startswith("app.yaml:7:")
    assert "workflows.w.steps[0].transform.expression" in issues[0]
    assert "invalid JMESPath expression" in issues[0]


async def test_validate_passes_valid_data_through() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - id: check
              validate:
                schema: {type: object, required: [id]}
                data: "{{ input }}"
    """)) as engine:
        execution = await engine.start_execution("w", {"id": 1}, wait=True)
    assert execution.status is ExecutionStatus.SUCCESS
    assert execution.output == {"id": 1}


async def test_validate_failure_is_a_400_listing_every_error() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - id: check
              validate:
                schema:
                  type: object
                  required: [id, items]
                  properties:
                    qty: {type: integer, minimum: 1}
                data: "{{ input }}"
            - id: never
              set: {a: 1}
    """)) as engine:
        execution = await engine.start_execution("w", {"qty": 0}, wait=True)
    assert execution.status is ExecutionStatus.ERROR
    exc = execution.exception
    assert isinstance(exc, ValidationFailedError)
    assert exc.http_status == 400
    assert execution.error is not None
    assert execution.error["code"] == "validation_failed"
    assert execution.error["step"] == "check"
    details = execution.error["details"]
    assert len(details) == 3
    assert {d["path"] for d in details} == {"/", "/qty"}
    assert sum("is a required property" in d["message"] for d in details) == 2
    assert "never" not in execution.steps


def test_invalid_json_schema_is_a_config_issue() -> None:
    issues = config_issues(app_yaml("""
        w:
          steps:
            - id: check
              validate:
                schema: {type: not_a_type}
    """))
    assert len(issues) == 1
    assert "workflows.w.steps[0].validate.schema" in issues[0]
    assert "invalid JSON Schema" in issues[0]


# -- if, switch -------------------------------------------------------------------------------------------------


async def test_if_runs_then_or_else() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - id: branch
              if: "{{ input.total > 100 }}"
              then:
                - id: big
                  set: {size: big}
              else:
                - id: small
                  set: {size: small}
    """)) as engine:
        large = await engine.start_execution("w", {"total": 500}, wait=True)
        small = await engine.start_execution("w", {"total": 5}, wait=True)
    assert large.output == {"size": "big"}
    assert "small" not in large.steps
    assert small.output == {"size": "small"}
    assert "big" not in small.steps
    assert small.steps["branch"]["output"] == {"size": "small"}


async def test_if_without_else_outputs_none_when_false() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - id: branch
              if: "{{ input.go }}"
              then:
                - id: inner
                  set: {ran: true}
    """)) as engine:
        execution = await engine.start_execution("w", {"go": False}, wait=True)
    assert execution.status is ExecutionStatus.SUCCESS
    assert execution.steps["branch"] == {"output": None, "status": "success"}
    assert "inner" not in execution.steps


async def test_switch_runs_the_matching_case_else_the_default() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - id: route
              switch:
                value: "{{ input.kind }}"
                cases:
                  book:
                    - set: {shelf: paper}
                  "1":
                    - set: {shelf: number}
                  "true":
                    - set: {shelf: flag}
                default:
                  - set: {shelf: misc}
    """)) as engine:
        outputs = [(await engine.start_execution("w", {"kind": kind}, wait=True)).output
                   for kind in ("book", 1, True, "lamp", None)]
    assert outputs == [{"shelf": "paper"}, {"shelf": "number"}, {"shelf": "flag"}, {"shelf": "misc"},
                       {"shelf": "misc"}]


# -- foreach, parallel ------------------------------------------------------------------------------------------


async def test_foreach_keeps_the_order_of_items_with_concurrency() -> None:
    # The first item sleeps, so it finishes last; its result must still come first.
    async with running_engine(app_yaml("""
        w:
          steps:
            - id: each
              foreach:
                items: "{{ input.items }}"
                concurrency: 3
                do:
                  - if: "{{ index == 0 }}"
                    then:
                      - sleep: 30ms
                  - set: {value: "{{ item * 10 }}", position: "{{ index }}"}
    """)) as engine:
        execution = await engine.start_execution("w", {"items": [3, 1, 2]}, wait=True)
    assert execution.status is ExecutionStatus.SUCCESS
    assert execution.output == [{"value": 30, "position": 0}, {"value": 10, "position": 1},
                                {"value": 20, "position": 2}]


async def test_foreach_output_template_and_item_name() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - id: each
              foreach:
                items: "{{ input.orders }}"
                as: order
                do:
                  - id: priced
                    set: {total: "{{ order.qty * order.price }}"}
                output: "{{ order.id }}:{{ steps.priced.output.total }}"
            - id: after
              set: {inner_visible: "{{ steps.priced.output }}"}
    """)) as engine:
        execution = await engine.start_execution("w", {"orders": [
            {"id": "a", "qty": 2, "price": 3}, {"id": "b", "qty": 1, "price": 5}]}, wait=True)
    assert execution.steps["each"]["output"] == ["a:6", "b:5"]
    # Iterations write into their own copy of `steps`: nothing leaks into the workflow's scope.
    assert execution.output == {"inner_visible": None}


async def test_foreach_refuses_more_than_max_items() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - id: each
              foreach:
                items: "{{ input.items }}"
                max_items: 2
                do:
                  - set: {v: "{{ item }}"}
    """)) as engine:
        too_many = await engine.start_execution("w", {"items": [1, 2, 3]}, wait=True)
        enough = await engine.start_execution("w", {"items": [1, 2]}, wait=True)
        not_a_list = await engine.start_execution("w", {"items": 5}, wait=True)
    assert too_many.error is not None
    assert too_many.error["code"] == "too_many_items"
    assert enough.status is ExecutionStatus.SUCCESS
    assert not_a_list.error is not None
    assert not_a_list.error["code"] == "invalid_items"


async def test_foreach_stops_at_the_first_failing_iteration() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - id: each
              foreach:
                items: "{{ input.items }}"
                concurrency: 2
                do:
                  - if: "{{ item == 'bad' }}"
                    then:
                      - fail: {message: "bad item", code: bad_item}
    """)) as engine:
        execution = await engine.start_execution("w", {"items": ["ok", "bad", "ok"]}, wait=True)
    assert execution.error is not None
    assert execution.error["code"] == "bad_item"


async def test_parallel_outputs_by_branch_and_later_steps_see_branch_steps() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - id: both
              parallel:
                branches:
                  stock:
                    - id: stock_check
                      set: {available: "{{ input.qty <= 5 }}"}
                  price:
                    - id: price_check
                      set: {total: "{{ input.qty * 4 }}"}
            - id: summary
              set:
                available: "{{ steps.stock_check.output.available }}"
                total: "{{ steps.price_check.output.total }}"
    """)) as engine:
        execution = await engine.start_execution("w", {"qty": 3}, wait=True)
    assert execution.steps["both"]["output"] == {"stock": {"available": True}, "price": {"total": 12}}
    assert execution.output == {"available": True, "total": 12}


async def test_a_failing_branch_cancels_the_other_branches() -> None:
    # `slow` is declared first, so it has started its child execution before `broken` fails.
    async with running_engine(app_yaml("""
        forever:
          steps:
            - sleep: 60s
        w:
          steps:
            - id: both
              parallel:
                branches:
                  slow:
                    - workflow: forever
                    - id: after_child
                      set: {ran: true}
                  broken:
                    - fail: {message: "branch broke", code: branch_broke}
    """)) as engine:
        execution = await engine.start_execution("w", wait=True)
        assert execution.error is not None
        assert execution.error["code"] == "branch_broke"
        children = [e for e in [*engine.runtime.live.values(), *engine.runtime.recent.values()]
                    if e.parent_id == execution.id]
        assert len(children) == 1
        child = await wait_done(children[0])
        assert child.status is ExecutionStatus.CANCELLED
        assert executions(engine.metrics, "forever", "cancelled") == 1
    assert "after_child" not in execution.steps


# -- workflow (sub-workflow) ------------------------------------------------------------------------------------


async def test_subworkflow_with_wait_returns_the_child_output() -> None:
    async with running_engine(app_yaml("""
        double:
          steps:
            - set: {value: "{{ input.n * 2 }}"}
        w:
          steps:
            - id: child
              workflow:
                name: double
                input: {n: "{{ input.n }}"}
            - set: {result: "{{ steps.child.output.value }}"}
    """)) as engine:
        execution = await engine.start_execution("w", {"n": 21}, wait=True)
        child = finished_runs(engine, "double")
    assert execution.output == {"result": 42}
    assert len(child) == 1
    assert child[0].parent_id == execution.id
    assert child[0].trigger == "workflow"


async def test_subworkflow_failure_propagates_as_subworkflow_failed() -> None:
    async with running_engine(app_yaml("""
        broken:
          steps:
            - fail: {message: "child says no", code: child_no}
        w:
          steps:
            - id: child
              workflow: broken
    """)) as engine:
        execution = await engine.start_execution("w", wait=True)
    assert execution.status is ExecutionStatus.ERROR
    assert isinstance(execution.exception, StepError)
    assert execution.error is not None
    assert execution.error["code"] == "subworkflow_failed"
    assert execution.error["step"] == "child"
    assert execution.error["details"]["code"] == "child_no"
    assert "child says no" in execution.error["message"]


async def test_workflows_calling_each_other_in_a_cycle_fail_too_deep_instead_of_hanging() -> None:
    """Each level held a concurrency slot of its workflow and waited for the next: at 100 levels every slot
    of both was taken and the chain waited for ever."""
    async with running_engine(app_yaml("""
        ping:
          steps: [{id: pong, workflow: pong}]
        pong:
          steps: [{id: ping, workflow: ping}]
    """)) as engine:
        execution = await asyncio.wait_for(engine.start_execution("ping", wait=True), 30)
        assert not engine.runtime.live  # every level ended
    assert execution.status is ExecutionStatus.ERROR
    assert execution.error is not None
    assert execution.error["code"] == "subworkflow_failed"
    innermost = execution.error
    while innermost.get("code") == "subworkflow_failed":
        innermost = innermost["details"]
    assert innermost["code"] == "too_deep"
    assert "nested 33 deep (at most 32)" in innermost["message"]


async def test_subworkflow_without_wait_returns_its_execution_id() -> None:
    async with running_engine(app_yaml("""
        child:
          steps:
            - sleep: 20ms
            - set: {done: true}
        w:
          steps:
            - id: started
              workflow: {name: child, wait: false}
    """)) as engine:
        execution = await engine.start_execution("w", wait=True)
        assert execution.status is ExecutionStatus.SUCCESS
        child_id = execution.output["execution_id"]
        child = engine.runtime.get(child_id)
        assert child is not None
        assert child.parent_id == execution.id
        await wait_done(child)
    assert child.status is ExecutionStatus.SUCCESS
    assert child.output == {"done": True}


# -- respond, log, fail, sleep, publish -------------------------------------------------------------------------


async def test_respond_sets_the_response_and_the_workflow_goes_on() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - respond:
                status: "{{ input.status }}"
                body: {id: "{{ input.id }}"}
                headers: {X-Order: "{{ input.id }}"}
            - id: later
              set: {after_response: true}
            - respond: {status: 500, body: ignored}
    """)) as engine:
        execution = await engine.start_execution("w", {"id": 9, "status": 201}, wait=True)
    assert execution.status is ExecutionStatus.SUCCESS
    assert execution.response is not None
    assert execution.response.status == 201
    assert execution.response.body == {"id": 9}
    assert execution.response.headers == {"X-Order": "9"}
    assert execution.steps["later"]["output"] == {"after_response": True}


async def test_a_header_whose_template_gives_null_is_left_out_not_sent_as_none() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - respond:
                body: ok
                headers: {X-Trace: "{{ input.trace }}", X-Count: "{{ input.n }}", X-Fixed: "f"}
    """)) as engine:
        without = await engine.start_execution("w", {"n": 3}, wait=True)
        with_trace = await engine.start_execution("w", {"n": 0, "trace": "t-1"}, wait=True)
    assert without.response is not None
    assert without.response.headers == {"X-Count": "3", "X-Fixed": "f"}
    assert with_trace.response is not None
    assert with_trace.response.headers == {"X-Trace": "t-1", "X-Count": "0", "X-Fixed": "f"}


async def test_respond_refuses_a_status_that_is_not_http() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - respond: {status: "{{ input.status }}"}
    """)) as engine:
        execution = await engine.start_execution("w", {"status": "teapot"}, wait=True)
    assert execution.error is not None
    assert execution.error["code"] == "invalid_status"


def test_log_fields_may_not_overwrite_the_fields_the_engine_sets() -> None:
    issues = config_issues(app_yaml("""
        w:
          steps:
            - log: {message: hi, fields: {execution_id: spoof, step: x, carrier: ups}}
    """))
    assert len(issues) == 2
    assert "workflows.w.steps[0].log.fields.execution_id: 'execution_id' is a field the engine sets" in issues[0]
    assert "log.fields.step" in issues[1]


async def test_log_writes_the_rendered_message_with_the_execution_context() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - id: note
              log:
                message: "order {{ input.id }} shipped"
                level: warning
                fields: {carrier: "{{ input.carrier }}"}
    """)) as engine:
        with capture_logs(processors=[merge_log_context]) as logs:
            execution = await engine.start_execution("w", {"id": 7, "carrier": "ups"}, wait=True)
    assert execution.output == "order 7 shipped"
    entries = [e for e in logs if e["event"] == "order 7 shipped"]
    assert len(entries) == 1
    assert entries[0]["log_level"] == "warning"
    assert entries[0]["carrier"] == "ups"
    assert entries[0]["execution_id"] == execution.id


async def test_fail_keeps_its_code_status_and_details() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - id: refuse
              fail:
                message: "item {{ input.sku }} is out of stock"
                code: out_of_stock
                status: 409
                details: {sku: "{{ input.sku }}"}
    """)) as engine:
        execution = await engine.start_execution("w", {"sku": "X1"}, wait=True)
    exc = execution.exception
    assert isinstance(exc, FailError)
    assert exc.http_status == 409
    assert execution.error == {"code": "out_of_stock", "message": "item X1 is out of stock", "step": "refuse",
                               "details": {"sku": "X1"}}


async def test_fail_without_status_is_a_server_error() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - fail: "plain failure"
    """)) as engine:
        execution = await engine.start_execution("w", wait=True)
    assert isinstance(execution.exception, FailError)
    assert execution.exception.http_status == 500
    assert execution.error is not None
    assert execution.error["code"] == "failed"


async def test_sleep_waits_and_reports_its_duration() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - id: nap
              sleep: 10ms
    """)) as engine:
        execution = await engine.start_execution("w", wait=True)
    assert execution.output == {"slept": 0.01}


async def test_publish_without_subscribers_delivers_to_nobody() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - id: emit
              publish: {topic: "orders.{{ input.region }}.created", message: "{{ input }}"}
    """)) as engine:
        execution = await engine.start_execution("w", {"region": "eu"}, wait=True)
    assert execution.output == {"topic": "orders.eu.created", "delivered": 0}


def test_publish_to_an_invalid_topic_is_a_config_issue() -> None:
    issues = config_issues(app_yaml("""
        w:
          steps:
            - publish: {topic: "orders..created"}
    """))
    assert len(issues) == 1
    assert "publish.topic" in issues[0]


async def test_bounded_gather_starts_no_job_after_one_failed() -> None:
    started: list[int] = []

    def job(index: int) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            started.append(index)
            await asyncio.sleep(0)
            if index == 0:
                raise StepError("first fails", step="x")
            return index

        return run

    with pytest.raises(StepError, match="first fails"):
        await bounded_gather([job(i) for i in range(5)], 1)
    assert started == [0]
