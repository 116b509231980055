"""`engine.event_bus`: its broker is a module reference, checked like the others (line, column, hint)."""

from __future__ import annotations

import pytest

from tests.config.helpers import issues, load
from workflow_engine.config.models import EventBusConfig
from workflow_engine.registry.builtins import default_registry
from workflow_engine.registry.specs import Registry

APP = """\
    version: 1
    name: app
    engine:
      shutdown_grace: 1s
      event_bus: {broker: BROKER}
    modules:
      - name: bus
        type: broker.memory
      - name: web
        type: http.server
        config: {address: "127.0.0.1:0"}
    workflows:
      a:
        steps: [{log: hi}]
    """


@pytest.fixture
def registry() -> Registry:
    return default_registry()


def test_the_event_bus_names_a_broker_module(registry: Registry) -> None:
    app = load(APP.replace("BROKER", "bus"), registry)
    assert app.engine.event_bus == EventBusConfig(broker="bus")
    assert app.engine.event_bus.topic == "workflow-events"
    assert app.engine.event_bus.max_in_flight == 64


def test_without_event_bus_the_bus_stays_in_process(registry: Registry) -> None:
    app = load(APP.replace("      event_bus: {broker: BROKER}\n", ""), registry)
    assert app.engine.event_bus is None


def test_an_unknown_broker_is_an_issue_at_its_value_with_a_hint(registry: Registry) -> None:
    assert issues(APP.replace("BROKER", "buss"), registry) == [
        "app.yaml:5:23: engine.event_bus.broker: unknown module 'buss' (did you mean 'bus'?)",
    ]


def test_a_module_that_is_not_a_broker_is_an_issue(registry: Registry) -> None:
    assert issues(APP.replace("BROKER", "web"), registry) == [
        "app.yaml:5:23: engine.event_bus.broker: module 'web' is a http.server (kind http_server); expected one "
        "of: broker",
    ]


def test_the_broker_topic_has_no_wildcards(registry: Registry) -> None:
    found = issues(APP.replace("BROKER", 'bus, topic: "events.>"'), registry)
    assert len(found) == 1
    assert found[0].startswith("app.yaml:5:35: engine.event_bus.topic: String should match pattern")
