"""The schedule trigger: `every` fires repeatedly until shutdown; cron ticks in a timezone; bad configs are issues."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from tests.factories import app_yaml, executions, finished_runs, load_app, running_engine, sample, wait_until
from workflow_engine.engine.engine import Engine
from workflow_engine.errors import ConfigError
from workflow_engine.triggers.schedule import ScheduleConfig, ScheduleTrigger


def ticks(engine: Engine) -> float:
    return sample(engine.metrics, "trigger_events_total", workflow_type="tick", trigger="schedule")


def trigger(**config: object) -> ScheduleTrigger:
    return ScheduleTrigger("report", ScheduleConfig.model_validate(config))


async def test_every_fires_repeatedly_and_stops_on_shutdown() -> None:
    async with running_engine(app_yaml("""
        tick:
          durable: false   # cancelled at shutdown (durable ones are left in the store for the next run)
          trigger:
            schedule: {every: 20ms, input: {source: timer}}
          steps:
            - id: seen
              set:
                at: "{{ input.scheduled_at }}"
                source: "{{ input.source }}"
            - sleep: 60s
    """, engine="{shutdown_grace: 100ms, park_after: 1h}")) as engine:
        await wait_until(lambda: len(engine.runtime.live) >= 3, "three ticks started executions")
        engine.request_stop()
        await wait_until(lambda: not engine.runtime.accepting, "shutdown began")
        fired = ticks(engine)
    # No tick fired while the executions drained, and every tick that fired became an execution.
    assert ticks(engine) == fired
    assert fired >= 3
    assert executions(engine.metrics, "tick", "cancelled") == fired
    runs = finished_runs(engine, "tick")
    assert all(run.trigger == "schedule" and run.steps["seen"]["output"]["source"] == "timer" for run in runs)
    scheduled = sorted(datetime.fromisoformat(run.steps["seen"]["output"]["at"]) for run in runs)
    assert len(set(scheduled)) == len(scheduled)
    assert all(at.utcoffset() == timedelta(0) for at in scheduled)


async def test_a_tick_that_finds_the_queue_full_is_counted_but_not_run() -> None:
    async with running_engine(app_yaml("""
        tick:
          concurrency: 1
          queue_size: 0
          trigger:
            schedule: {every: 10ms}
          steps:
            - sleep: 60s
    """, engine="{shutdown_grace: 10ms, park_after: 1h}")) as engine:
        await wait_until(lambda: ticks(engine) >= 3, "three ticks fired")
        assert len(engine.runtime.live) == 1  # the first tick runs; the others were refused, not queued


def test_cron_reads_the_expression_in_its_timezone() -> None:
    paris = trigger(cron="0 9 * * *", timezone="Europe/Paris")
    # 09:00 in Paris is 08:00 UTC in winter (CET) and 07:00 UTC in summer (CEST).
    assert paris.next_fire(datetime(2024, 1, 15, 12, 0, tzinfo=UTC)) == datetime(2024, 1, 16, 8, 0, tzinfo=UTC)
    assert paris.next_fire(datetime(2024, 1, 15, 7, 0, tzinfo=UTC)) == datetime(2024, 1, 15, 8, 0, tzinfo=UTC)
    assert paris.next_fire(datetime(2024, 7, 1, 0, 0, tzinfo=UTC)) == datetime(2024, 7, 1, 7, 0, tzinfo=UTC)


def test_cron_next_fire_is_strictly_after_now() -> None:
    daily = trigger(cron="0 9 * * *")
    assert daily.next_fire(datetime(2024, 1, 15, 9, 0, tzinfo=UTC)) == datetime(2024, 1, 16, 9, 0, tzinfo=UTC)


def test_cron_with_six_fields_has_seconds_last() -> None:
    every_minute_at_15s = trigger(cron="* * * * * 15")
    now = datetime(2024, 1, 15, 12, 0, 0, tzinfo=UTC)
    first = every_minute_at_15s.next_fire(now)
    assert first == datetime(2024, 1, 15, 12, 0, 15, tzinfo=UTC)
    assert every_minute_at_15s.next_fire(first) == datetime(2024, 1, 15, 12, 1, 15, tzinfo=UTC)


def test_every_adds_its_interval() -> None:
    now = datetime(2024, 1, 15, 12, 0, tzinfo=UTC)
    assert trigger(every="90s").next_fire(now) == datetime(2024, 1, 15, 12, 1, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ('{cron: "61 * * * *"}', "invalid cron expression '61 * * * *'"),
        ('{cron: "every day"}', "invalid cron expression"),
        ('{cron: "0 9 * * *", timezone: Mars/Olympus}', "unknown timezone 'Mars/Olympus'"),
        ('{cron: "0 9 * * *", every: 1m}', "set exactly one of `cron` or `every`"),
        ("{timezone: UTC}", "set exactly one of `cron` or `every`"),
        ("{every: 0s}", "greater than 0"),
    ],
)
def test_bad_schedules_are_config_issues_at_the_trigger(schedule: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_app(app_yaml(f"""
            report:
              trigger:
                schedule: {schedule}
              steps:
                - set: {{a: 1}}
        """))
    issues = [str(issue) for issue in caught.value.issues]
    assert len(issues) == 1
    assert issues[0].startswith("app.yaml:7:")
    assert "workflows.report.trigger.schedule" in issues[0]
    assert message in issues[0]


def test_the_config_model_refuses_both_cron_and_every() -> None:
    with pytest.raises(ValidationError):
        ScheduleConfig.model_validate({"cron": "0 9 * * *", "every": 60})
