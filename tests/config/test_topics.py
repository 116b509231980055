"""Broker topics are checked at validation in the syntax of the broker they name, at the topic's line:col."""

from __future__ import annotations

import pytest

from tests.config.helpers import issues, load
from workflow_engine.errors import ConfigError
from workflow_engine.modules.broker.nats import subject_covers
from workflow_engine.registry.builtins import default_registry
from workflow_engine.registry.specs import Registry
from workflow_engine.runtime.program import compile_program

APP = """\
    version: 1
    name: app
    modules:
      - {name: mq, type: broker.mqtt}
      - {name: rabbit, type: broker.rabbitmq}
      - {name: streams, type: broker.redis}
      - {name: js, type: broker.nats, config: {stream: {name: JOBS, subjects: [">"]}}}
      - {name: mem, type: broker.memory}
    workflows:
      pub:
        steps:
          - publish: {broker: BROKER, topic: "PUBLISHED", message: 1}
      sub:
        trigger:
          message: {broker: BROKER, topic: "CONSUMED"}
        steps: [{log: hi}]
    """


def app(broker: str, published: str, consumed: str) -> str:
    return APP.replace("BROKER", broker).replace("PUBLISHED", published).replace("CONSUMED", consumed)


@pytest.fixture
def registry() -> Registry:
    return default_registry()


@pytest.mark.parametrize(("broker", "published", "consumed"), [
    ("mq", "sensors/room1/temp", "sensors/+/temp"),  # MQTT levels: refused before, as event-bus syntax
    ("mq", "sensors/room1", "sensors/#"),
    ("rabbit", "orders.created", "orders.#"),
    ("rabbit", "orders.created", "*.created"),
    ("streams", "jobs", "jobs"),
    ("js", "jobs.eu", "jobs.>"),
    ("mem", "jobs.eu", "jobs.*"),
])
def test_topics_in_the_syntax_of_their_broker_are_valid(registry: Registry, broker: str, published: str,
                                                        consumed: str) -> None:
    config = load(app(broker, published, consumed), registry)
    program = compile_program(config, registry)  # what `workflow validate` runs: steps check their fields too
    assert set(program) >= {"pub", "sub"}


def test_a_trigger_pattern_in_another_brokers_syntax_is_an_issue_at_the_topic(registry: Registry) -> None:
    assert issues(app("mq", "a/b", "sensors.#"), registry) == [
        "app.yaml:15:36: workflows.sub.trigger.message.topic: invalid topic 'sensors.#': use '/'-separated levels "
        "of letters, digits, '_', '-' and '.', '+' for one level and '#' last for the rest (broker.mqtt module 'mq')",
    ]
    assert issues(app("rabbit", "a.b", "orders.>"), registry) == [
        "app.yaml:15:40: workflows.sub.trigger.message.topic: invalid topic 'orders.>': use dot-separated words of "
        "letters, digits, '_' and '-', '*' for one word and '#' for any number of words (broker.rabbitmq module "
        "'rabbit')",
    ]
    assert issues(app("streams", "a", "jobs.*"), registry) == [
        "app.yaml:15:41: workflows.sub.trigger.message.topic: invalid topic 'jobs.*': Redis Streams topics are "
        "stream keys, without wildcards (broker.redis module 'streams')",
    ]


def test_publishing_to_a_wildcard_is_an_issue_at_the_topic(registry: Registry) -> None:
    assert issues(app("js", "jobs.*", "jobs.>"), registry) == [
        "app.yaml:12:38: workflows.pub.steps[0].publish.topic: cannot publish to a wildcard topic 'jobs.*' "
        "(broker.nats module 'js')",
    ]
    assert issues(app("mq", "a/#", "a/#"), registry) == [
        "app.yaml:12:38: workflows.pub.steps[0].publish.topic: cannot publish to a wildcard topic 'a/#' "
        "(broker.mqtt module 'mq')",
    ]


def test_every_mistake_is_reported_at_once(registry: Registry) -> None:
    found = issues(app("streams", "a b", "x.>"), registry)
    assert [line.split(": ")[1] for line in found] == [
        "workflows.pub.steps[0].publish.topic", "workflows.sub.trigger.message.topic"]


def test_a_templated_topic_is_checked_when_it_renders_not_at_validation(registry: Registry) -> None:
    compile_program(load(app("mq", "{{ input.room }}/temp", "a/+"), registry), registry)


def test_the_event_bus_keeps_its_dotted_syntax_without_a_broker(registry: Registry) -> None:
    text = app("mq", "a/b", "a/+").replace("publish: {broker: mq, ", "publish: {")
    with pytest.raises(ConfigError) as caught:
        compile_program(load(text, registry), registry)
    assert [str(issue) for issue in caught.value.issues] == [
        "app.yaml:12:9: workflows.pub.steps[0].publish.topic: invalid topic pattern 'a/b': use dot-separated "
        "tokens, '*' for one token, '>' last for the rest",
    ]


NATS_APP = """\
    version: 1
    name: app
    modules:
      - {name: js, type: broker.nats, config: {stream: {name: JOBS, subjects: ["jobs.>", "audit.*"], CREATE}}}
    workflows:
      pub:
        steps:
          - publish: {broker: js, topic: "PUBLISHED", message: 1}
      sub:
        trigger:
          message: {broker: js, topic: "CONSUMED"}
        steps: [{log: hi}]
    """


def nats_app(published: str, consumed: str, create: bool = True) -> str:
    return (NATS_APP.replace("PUBLISHED", published).replace("CONSUMED", consumed)
            .replace("CREATE", f"create: {str(create).lower()}"))


def test_a_nats_topic_outside_the_streams_subjects_is_an_issue_at_the_topic(registry: Registry) -> None:
    """Its consumer would be refused forever ("not a valid subset") while /readyz said ready."""
    load(nats_app("jobs.eu.created", "audit.logins"), registry)
    assert issues(nats_app("billing.created", "audit.logins.eu"), registry) == [
        "app.yaml:8:38: workflows.pub.steps[0].publish.topic: topic 'billing.created' is not among the subjects "
        "of stream 'JOBS' (jobs.>, audit.*) (broker.nats module 'js')",
        "app.yaml:11:36: workflows.sub.trigger.message.topic: topic 'audit.logins.eu' is not among the subjects "
        "of stream 'JOBS' (jobs.>, audit.*) (broker.nats module 'js')",
    ]
    # A stream made elsewhere (`create: false`) has its own subjects: nothing to check them against here.
    load(nats_app("billing.created", "audit.logins.eu", create=False), registry)


@pytest.mark.parametrize(("subject", "topic", "covered"), [
    (">", "a", True), (">", "a.b.>", True), ("a.>", "a", False), ("a.>", "a.b", True), ("a.>", "a.*", True),
    ("a.>", "a.>", True), ("a.*", "a.b", True), ("a.*", "a.*", True), ("a.*", "a.>", False), ("a.*", "a.b.c", False),
    ("a.b", "a.b", True), ("a.b", "a.*", False), ("a.b", "a.c", False), ("a.*.c", "a.b.c", True),
])
def test_subject_covers(subject: str, topic: str, covered: bool) -> None:
    assert subject_covers(subject, topic) is covered
