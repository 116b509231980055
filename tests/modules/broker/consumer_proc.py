"""A consumer in its own process for the conformance kill test: it prints each message id and never acks.

`python -m tests.modules.broker.consumer_proc TYPE CONFIG_JSON TOPIC GROUP`; the test SIGKILLs it.
"""

from __future__ import annotations

import asyncio
import json
import sys

from tests.factories import TaskOwner
from tests.modules.broker.conformance import FAST
from workflow_engine.modules.base import ModuleContext
from workflow_engine.modules.broker.base import Broker
from workflow_engine.observability.metrics import Metrics
from workflow_engine.registry.builtins import default_registry


async def main(kind: str, config: str, topic: str, group: str) -> None:
    spec = default_registry().modules[kind]
    owner = TaskOwner()
    ctx = ModuleContext("killed", Metrics(process=False), {}, owner.spawn)
    broker = spec.factory("killed", spec.config_model.model_validate({**FAST, **json.loads(config)}), ctx)
    assert isinstance(broker, Broker)
    await broker.start()
    async for message in broker.consume(topic, group, 1):
        print(message.id, flush=True)  # received, never settled: the test kills this process now


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
