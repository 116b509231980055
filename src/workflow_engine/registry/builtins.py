"""The built-in module, step and trigger types, listed in one place."""

from __future__ import annotations

from workflow_engine.modules.broker import memory as broker_memory
from workflow_engine.modules.broker import mqtt as broker_mqtt
from workflow_engine.modules.broker import nats as broker_nats
from workflow_engine.modules.broker import rabbitmq as broker_rabbitmq
from workflow_engine.modules.broker import redis as broker_redis
from workflow_engine.modules.dynamic import component as dynamic_component
from workflow_engine.modules.http import client as http_client
from workflow_engine.modules.http import server as http_server
from workflow_engine.registry.specs import Registry
from workflow_engine.runtime.steps import call, control, data, flow, http, wait
from workflow_engine.triggers import event, manual, message, schedule
from workflow_engine.triggers import http as http_trigger

MODULES = (http_server.SPEC, http_client.SPEC, broker_memory.SPEC, broker_nats.SPEC, broker_redis.SPEC,
           broker_rabbitmq.SPEC, broker_mqtt.SPEC, dynamic_component.SPEC)
STEPS = (
    data.SET, data.TRANSFORM, data.VALIDATE, http.HTTP, flow.PUBLISH, control.IF, control.SWITCH,
    control.FOREACH, control.PARALLEL, flow.WORKFLOW, flow.RESPOND, flow.LOG, flow.FAIL, flow.SLEEP,
    wait.WAIT_FOR, call.CALL,
)
TRIGGERS = (http_trigger.SPEC, schedule.SPEC, event.SPEC, manual.SPEC, message.SPEC)


def default_registry() -> Registry:
    """A new registry holding every built-in type."""
    registry = Registry()
    for module in MODULES:
        registry.add_module(module)
    for step in STEPS:
        registry.add_step(step)
    for trigger in TRIGGERS:
        registry.add_trigger(trigger)
    return registry
