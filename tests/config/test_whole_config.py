"""Issues across workflows and phases: triggers that would collide (one route per server, method and path shape,
one workflow per consumer group of a topic), route paths the server cannot serve, and compile issues (templates,
JMESPath, JSON Schema) reported with the structural ones."""

from __future__ import annotations

import pytest

from tests.config.helpers import issues, load
from workflow_engine.errors import ConfigError
from workflow_engine.registry.builtins import default_registry
from workflow_engine.registry.specs import Registry
from workflow_engine.runtime.program import load_program

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


def test_template_expression_and_schema_issues_come_with_the_structural_ones(registry: Registry) -> None:
    """They are found when steps compile, which used to run only once the config had no other issue: a user
    fixed one round of issues to be shown the next."""
    text = """\
        version: 1
        name: app
        modules:
          - {name: web, type: http.server}
        workflows:
          a:
            trigger: {http: {server: wbe, path: /a}}
            steps: [{log: "{{ 1 + }}"}]
          b:
            steps:
              - lgo: x
              - transform: {expression: "foo["}
              - validate: {schema: {type: objekt}}
              - if: "{{ input.x == }}"
                set: {y: 1}
        """
    with pytest.raises(ConfigError) as caught:
        load_program(lambda: load(text, registry), registry)
    found = [str(issue) for issue in caught.value.issues]
    assert [line.split(": ", 2)[1] for line in found] == [
        "workflows.a.trigger.http.server", "workflows.a.steps[0].log.message", "workflows.b.steps[0].lgo",
        "workflows.b.steps[1].transform.expression", "workflows.b.steps[2].validate.schema",
        "workflows.b.steps[3].if"]
    assert all("\n" not in line for line in found)  # one issue, one line
    assert "invalid JMESPath expression 'foo[': incomplete expression at column 5" in found[3]


def test_a_mistake_in_a_block_does_not_hide_the_reference_checks_of_its_other_fields(registry: Registry) -> None:
    found = issues("""\
        version: 1
        name: app
        modules:
          - {name: rq, type: broker.rabbitmq}
        workflows:
          b:
            trigger: {message: {broker: rq, topic: "orders.>", max_in_flight: 0}}
            steps:
              - publish: {broker: rqq, topic: "x", message: 1, headers: 5}
        """, registry)
    assert [line.split(": ", 2)[1] for line in found] == [
        "workflows.b.trigger.message.topic", "workflows.b.trigger.message.max_in_flight",
        "workflows.b.steps[0].publish.broker", "workflows.b.steps[0].publish.headers"]
    assert "invalid topic 'orders.>'" in found[0]
    assert "unknown module 'rqq'" in found[2]
