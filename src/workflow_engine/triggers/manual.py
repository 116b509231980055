"""The `manual` trigger: the workflow starts only when asked (API, CLI, or `Engine.start_execution`)."""

from __future__ import annotations

from workflow_engine.config.models import Strict
from workflow_engine.registry.specs import TriggerSpec
from workflow_engine.triggers.base import Trigger, TriggerBuilder


class ManualConfig(Strict):
    """No settings: every workflow can be started manually; this kind says it has no other trigger."""


class ManualTrigger(Trigger):
    kind = "manual"


def _factory(config: ManualConfig, build: TriggerBuilder) -> ManualTrigger:
    return ManualTrigger(build.workflow)


SPEC = TriggerSpec("manual", ManualConfig, _factory, "Started only on request (API, CLI); every workflow can be.")
