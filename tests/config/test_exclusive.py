"""Triggers that would collide are refused at validation: one route per server, method and path shape, one
workflow per consumer group of a topic, and route paths the server cannot serve."""

from __future__ import annotations

import pytest

from tests.config.helpers import issues, load
from workflow_engine.registry.builtins import default_registry
from workflow_engine.registry.specs import Registry

APP = """\
    version: 1
    name: app
    modules:
      - {name: web, type: http.server}
      - {name: other, type: http.server, config: {address: "127.0.0.1:8081"}}
      - {name: bus, type: broker.memory}
    workflows:
      a:
        trigger: {http: {server: web, path: "/orders/{id}"}}
        steps: [{log: a}]
      b:
        trigger: {http: {server: SERVER, method: METHOD, path: "PATH"}}
        steps: [{log: b}]
      c:
        trigger: {message: {broker: bus, topic: jobs, group: shared}}
        steps: [{log: c}]
      d:
        trigger: {message: {broker: bus, topic: TOPIC, group: GROUP}}
        steps: [{log: d}]
    """


def app(server: str = "web", method: str = "GET", path: str = "/orders/{id}", topic: str = "jobs",
        group: str = "shared") -> str:
    return (APP.replace("SERVER", server).replace("METHOD", method).replace("PATH", path)
            .replace("TOPIC", topic).replace("GROUP", group))


@pytest.fixture
def registry() -> Registry:
    return default_registry()


def test_a_second_workflow_on_a_route_or_a_consumer_group_is_an_issue_naming_the_first(registry: Registry) -> None:
    assert issues(app(path="/orders/{order}"), registry) == [
        "app.yaml:12:54: workflows.b.trigger.http.path: route GET /orders/{order} on server 'web' is already "
        "taken by workflow 'a'",
        "app.yaml:18:58: workflows.d.trigger.message.group: consumer group 'shared' of topic 'jobs' on broker "
        "'bus' is already taken by workflow 'c'",
    ]


@pytest.mark.parametrize("changes", [
    {"method": "POST", "group": "own"}, {"server": "other", "group": "own"},
    {"path": "/orders/{id}/lines", "group": "own"},
    {"path": "/elsewhere", "topic": "other-jobs"},  # same group name, another topic
])
def test_other_methods_servers_paths_and_topics_do_not_collide(registry: Registry, changes: dict[str, str]) -> None:
    assert set(load(app(**changes), registry).workflows) == {"a", "b", "c", "d"}


def test_a_route_path_the_server_cannot_serve_is_an_issue_at_the_path(registry: Registry) -> None:
    found = issues(app(path="/x/{id}/{id}", group="own"), registry)
    assert len(found) == 1
    assert found[0].startswith("app.yaml:12:54: workflows.b.trigger.http.path: ")
    assert "Duplicated param name id" in found[0]
