"""The `schedule` trigger: a cron expression (5 fields, or 6 with seconds last) in a timezone, or `every`."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime
from typing import Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog
from croniter import croniter
from pydantic import Field, field_validator, model_validator

from workflow_engine.config.models import Strict
from workflow_engine.durations import Duration
from workflow_engine.errors import AdmissionError
from workflow_engine.registry.specs import TriggerSpec
from workflow_engine.triggers.base import Trigger, TriggerBuilder, Wiring

log = structlog.get_logger("workflow_engine.schedule")


class ScheduleConfig(Strict):
    cron: str | None = Field(None, description="Cron expression: 5 fields, or 6 with seconds as the last field.")
    timezone: str = Field("UTC", description="IANA timezone the cron expression is read in.")
    every: Duration | None = Field(
        None, gt=0, description="Fixed interval instead of cron, e.g. 30s; ticks fall on multiples of it since the "
        "Unix epoch, so all replicas agree on them.",
    )
    input: dict[str, Any] = Field(default_factory=dict, description="Extra input merged with `scheduled_at`.")
    catch_up: Literal["skip", "run_once"] = Field(
        "skip", description="Ticks missed while no replica ran: skip them, or run once for the latest one."
    )

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"invalid cron expression {value!r}")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _one_of(self) -> Self:
        if (self.cron is None) == (self.every is None):
            raise ValueError("set exactly one of `cron` or `every`")
        return self


class ScheduleTrigger(Trigger):
    kind = "schedule"
    has_loop = True

    def __init__(self, workflow: str, config: ScheduleConfig) -> None:
        super().__init__(workflow)
        self.config = config

    def next_fire(self, now: datetime) -> datetime:
        """The first tick strictly after `now`."""
        if self.config.every is not None:
            # On the interval's grid from the Unix epoch, not `now + every`: every replica then computes the same
            # ticks, and the store's unique (workflow, tick) row lets exactly one of them fire each.
            every = self.config.every
            tick = (math.floor(now.timestamp() / every) + 1) * every
            if tick <= now.timestamp():  # float rounding at a grid point
                tick += every
            return datetime.fromtimestamp(tick, UTC)
        assert self.config.cron is not None
        zone = ZoneInfo(self.config.timezone)
        fire: datetime = croniter(self.config.cron, now.astimezone(zone)).get_next(datetime)
        return fire

    async def run(self, wiring: Wiring) -> None:
        now = datetime.now(UTC)
        try:
            missed = await self._missed_tick(wiring, now)
            if missed is not None:
                log.info("running a tick missed while no replica ran", workflow_type=self.workflow,
                         tick=missed.isoformat())
                await self._fire(wiring, missed)
        except Exception as exc:  # supervision boundary: catching up is best effort; the schedule goes on
            log.error("catching up missed ticks failed", workflow_type=self.workflow, error=exc)
        tick = self.next_fire(now)
        while True:
            await asyncio.sleep(max(0.0, tick.timestamp() - time.time()))
            try:
                await self._fire(wiring, tick)
            except Exception as exc:  # supervision boundary: a store outage must not end the schedule
                log.error("scheduled tick failed", workflow_type=self.workflow, tick=tick.isoformat(), error=exc)
            tick = self.next_fire(max(tick, datetime.now(UTC)))

    async def _missed_tick(self, wiring: Wiring, now: datetime) -> datetime | None:
        """The latest tick due since the last one fired (by any replica), under `catch_up: run_once`."""
        if self.config.catch_up == "skip":
            return None
        last = await wiring.runtime.recorder.store.last_tick(self.workflow)
        if last is None:
            return None
        latest, tick = None, self.next_fire(datetime.fromtimestamp(last, UTC))
        for _ in range(100_000):  # bounded: an `every: 1s` schedule down for a day is 86,400 ticks
            if tick > now:
                break
            latest, tick = tick, self.next_fire(tick)
        return latest

    async def _fire(self, wiring: Wiring, tick: datetime) -> None:
        # One replica fires each tick: the store's unique (workflow, tick) row decides which.
        if not await wiring.runtime.recorder.store.fire_tick(self.workflow, tick.timestamp()):
            return
        payload = {**self.config.input, "scheduled_at": tick.astimezone(UTC).isoformat()}
        try:
            await wiring.runtime.admit(self.workflow, payload, trigger="schedule")
        except AdmissionError as exc:
            # A schedule cannot wait: the next tick comes regardless. Say so loudly; the tick is counted.
            log.warning("scheduled tick not run", workflow_type=self.workflow, tick=payload["scheduled_at"],
                        reason=exc.code, error=exc)


def _factory(config: ScheduleConfig, build: TriggerBuilder) -> ScheduleTrigger:
    return ScheduleTrigger(build.workflow, config)


SPEC = TriggerSpec("schedule", ScheduleConfig, _factory, "Run on a cron schedule (with timezone) or every interval.")
