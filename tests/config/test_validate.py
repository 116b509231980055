from __future__ import annotations

from pathlib import Path

import pytest

from tests.config.conftest import CallConfig, DatabaseConfig, ScheduleConfig
from tests.config.helpers import issues, load
from workflow_engine.config.validate import load_config
from workflow_engine.errors import ConfigError
from workflow_engine.registry.specs import Registry


def test_every_mistake_is_reported_at_once(registry: Registry) -> None:
    text = """\
        version: 1
        name: shop
        modules:
          - name: web
            type: http.server
            config:
              port: high
          - name: db
            type: database.sqlite
            depends_on: [cache]
            config:
              url: "${DB_URL}"
              events: buss
          - name: bus
            type: broker.memory
            depends_on: [db]
            config: {capacty: 10}
          - name: cache
            type: broker.memory
            depends_on: [bus]
        workflows:
          ping:
            steps:
              - log: pong
        """
    assert issues(text, registry) == [
        "app.yaml:7:13: modules[0].config.port: Input should be a valid integer, unable to parse "
        "string as an integer",
        "app.yaml:10:18: modules[1].depends_on[0]: dependency cycle: db -> cache -> bus -> db",
        "app.yaml:12:12: modules[1].config.url: environment variable 'DB_URL' is not set and has no default",
        "app.yaml:13:15: modules[1].config.events: unknown module 'buss' (did you mean 'bus'?)",
        "app.yaml:17:14: modules[2].config.capacty: unknown field 'capacty' (did you mean 'capacity'?)",
    ]


def test_env_expansion_with_defaults_and_literal(registry: Registry) -> None:
    text = """\
        version: 1
        name: "${APP:-shop}"
        modules:
          - name: db
            type: database.sqlite
            config: {url: "pg://${DB_HOST:-localhost}:${DB_PORT}/$${NOT_EXPANDED}"}
        workflows: {}
        """
    app = load(text, registry, env={"DB_PORT": "5432"})
    assert app.name == "shop"
    config = app.modules[0].config
    assert isinstance(config, DatabaseConfig)
    assert config.url == "pg://localhost:5432/${NOT_EXPANDED}"


def test_unexpanded_value_reports_only_the_missing_variable(registry: Registry) -> None:
    text = """\
        version: 1
        name: shop
        modules:
          - {name: web, type: http.server, config: {port: "${PORT}"}}
        """
    assert issues(text, registry) == [
        "app.yaml:4:51: modules[0].config.port: environment variable 'PORT' is not set and has no default"
    ]


def test_duplicate_keys(registry: Registry) -> None:
    text = """\
        version: 1
        name: a
        name: b
        """
    assert issues(text, registry) == ["app.yaml:3:1: name: duplicate key 'name' (first defined at line 2)"]


def test_duplicate_module_names(registry: Registry) -> None:
    text = """\
        version: 1
        name: shop
        modules:
          - name: web
            type: http.server
          - name: web
            type: broker.memory
        """
    assert issues(text, registry) == [
        "app.yaml:6:11: modules[1].name: duplicate module name 'web' (first declared at modules[0])"
    ]


def test_envelope_issues_with_hints(registry: Registry) -> None:
    text = """\
        version: 2
        nmae: shop
        modules:
          - name: Web
            type: http.servr
        workflows:
          Bad_Name:
            steps: []
        """
    assert issues(text, registry) == [
        "app.yaml:1:1: name: Field required",
        "app.yaml:1:10: version: Input should be 1",
        "app.yaml:2:1: nmae: unknown field 'nmae' (did you mean 'name'?)",
        "app.yaml:4:11: modules[0].name: String should match pattern '^[a-z][a-z0-9_-]*$'",
        "app.yaml:5:11: modules[0].type: unknown module type 'http.servr' (did you mean 'http.server'?)",
        "app.yaml:7:3: workflows.Bad_Name: String should match pattern '^[a-z][a-z0-9_-]*$'",
        "app.yaml:8:12: workflows.Bad_Name.steps: List should have at least 1 item after validation, not 0",
    ]


def test_top_level_must_be_a_mapping(registry: Registry) -> None:
    assert issues("- a\n- b\n", registry) == [
        "app.yaml:1:1: <root>: the file must be a mapping with version, name, modules and workflows"
    ]


def test_unreadable_file(registry: Registry, tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing, registry)
    assert str(caught.value.issues[0]).startswith(f"{missing}:1:1: <root>: cannot read the file")


def test_yaml_syntax_error_located(registry: Registry) -> None:
    text = """\
        version: 1
        name: shop
        workflows:
          a:
            steps:
              - log: "unterminated
        """
    [issue] = issues(text, registry)
    assert issue.startswith("app.yaml:7:1: <root>: YAML syntax error: found unexpected end of stream")


def test_unknown_step_kind(registry: Registry) -> None:
    text = """\
        version: 1
        name: shop
        workflows:
          a:
            steps:
              - id: first
                lgo: hello
              - description: nothing else
        """
    assert issues(text, registry) == [
        "app.yaml:7:9: workflows.a.steps[0].lgo: unknown step kind 'lgo' (did you mean 'log'?)",
        "app.yaml:8:9: workflows.a.steps[1]: the step has no kind; expected one of: "
        "call, foreach, http, log, set, switch, then, workflow",
    ]


def test_two_kind_keys(registry: Registry) -> None:
    text = """\
        version: 1
        name: shop
        workflows:
          a:
            steps:
              - log: hello
                set: {a: 1}
        """
    assert issues(text, registry) == [
        "app.yaml:7:9: workflows.a.steps[0].set: a step has one kind, but 'log' and 'set' are both step kinds"
    ]


def test_step_fields_map_back_to_their_yaml_place(registry: Registry) -> None:
    text = """\
        version: 1
        name: shop
        modules:
          - {name: bus, type: broker.memory}
        workflows:
          a:
            steps:
              - call: 42
                with: [1]
              - log: {message: hi, level: loud}
                retry: {attempts: 0}
                iff: x
              - set: [1]
              - workflow: nope
              - http: {url: /x, client: bus}
        """
    assert issues(text, registry) == [
        "app.yaml:8:15: workflows.a.steps[0].call: Input should be a valid string",
        "app.yaml:9:15: workflows.a.steps[0].with: Input should be a valid dictionary",
        "app.yaml:10:35: workflows.a.steps[1].log.level: Input should be 'debug', 'info', 'warning' "
        "or 'error'",
        "app.yaml:11:27: workflows.a.steps[1].retry.attempts: Input should be greater than or equal to 1",
        "app.yaml:12:9: workflows.a.steps[1].iff: unknown field 'iff' in a 'log' step (did you mean 'if'?)",
        "app.yaml:13:14: workflows.a.steps[2].set: Input should be a valid dictionary",
        "app.yaml:14:19: workflows.a.steps[3].workflow: unknown workflow 'nope'",
        "app.yaml:15:33: workflows.a.steps[4].http.client: "
        "module 'bus' is a broker.memory (kind broker); expected one of: http_client",
    ]


def test_nested_steps_are_located(registry: Registry) -> None:
    text = """\
        version: 1
        name: shop
        workflows:
          a:
            steps:
              - foreach:
                  items: "{{ input }}"
                  steps:
                    - log: {message: 1}
                    - 7
              - switch:
                  value: x
                  cases:
                    big: [{lgo: x}]
                    small: oops
              - if: true
                then: [{log: ok}]
                else:
                  - log: {mesage: x}
        """
    assert issues(text, registry) == [
        "app.yaml:9:30: workflows.a.steps[0].foreach.steps[0].log.message: Input should be a valid string",
        "app.yaml:10:15: workflows.a.steps[0].foreach.steps[1]: a step must be a mapping with one "
        "step kind, not a number",
        "app.yaml:14:20: workflows.a.steps[1].switch.cases.big[0].lgo: unknown step kind 'lgo' (did "
        "you mean 'log'?)",
        "app.yaml:15:20: workflows.a.steps[1].switch.cases.small: expected a list of steps, not a string",
        "app.yaml:19:18: workflows.a.steps[2].else[0].log.message: Field required",
        "app.yaml:19:19: workflows.a.steps[2].else[0].log.mesage: unknown field 'mesage' (did you "
        "mean 'message'?)",
    ]


def test_steps_ids_and_children(registry: Registry) -> None:
    text = """\
        version: 1
        name: shop
        modules:
          - {name: pricing, type: http.server}
        workflows:
          a:
            steps:
              - log: one
              - id: _log_2
                log: two
              - call: pricing
                with: {x: 1}
              - then: [{log: fine}]
                else: [{log: other}]
              - switch:
                  value: x
                  cases: {big: [{set: {a: 1}}]}
                  default: [{log: other}]
            on_error:
              - log: failed
        """
    workflow = load(text, registry).workflows["a"]
    assert [step.id for step in workflow.steps] == ["_log_1", "_log_2", "_call_1", "_if_1", "_switch_1"]
    assert [step.kind for step in workflow.steps] == ["log", "log", "call", "if", "switch"]
    branch = workflow.steps[3]
    assert {name: [s.id for s in steps] for name, steps in branch.children.items()} == {
        "then": ["_log_3"],
        "else_": ["_log_4"],
    }
    switch = workflow.steps[4]
    assert set(switch.children) == {"cases.big", "default"}
    assert switch.children["cases.big"][0].path == "workflows.a.steps[4].switch.cases.big[0]"
    assert switch.children["cases.big"][0].location.line == 17
    assert workflow.on_error[0].id == "_log_6"
    call = workflow.steps[2].config
    assert isinstance(call, CallConfig)
    assert call.with_ == {"x": 1}
    assert workflow.steps[1].common.id == "_log_2"
    assert (workflow.steps[1].location.line, workflow.steps[1].location.col) == (9, 9)


def test_duplicate_step_ids_across_nesting_and_on_error(registry: Registry) -> None:
    text = """\
        version: 1
        name: shop
        workflows:
          a:
            steps:
              - id: x
                foreach: {items: "[]", steps: [{id: x, log: a}]}
            on_error:
              - {id: x, log: b}
        """
    assert issues(text, registry) == [
        "app.yaml:7:45: workflows.a.steps[0].foreach.steps[0].id: "
        "duplicate step id 'x' (first used at workflows.a.steps[0])",
        "app.yaml:9:14: workflows.a.on_error[0].id: duplicate step id 'x' (first used at "
        "workflows.a.steps[0])",
    ]


def test_triggers(registry: Registry) -> None:
    text = """\
        version: 1
        name: shop
        modules:
          - {name: bus, type: broker.memory}
        workflows:
          a:
            trigger: {htp: {}}
            steps: [{log: a}]
          b:
            trigger: {http: {server: bus, path: /x}, schedule: {every: 1s}}
            steps: [{log: b}]
          c:
            trigger:
              http: {server: bus, path: /x, verb: GET}
            steps: [{log: c}]
          d:
            trigger: {manual: }
            steps: [{log: d}]
        """
    assert issues(text, registry) == [
        "app.yaml:7:15: workflows.a.trigger.htp: unknown trigger kind 'htp' (did you mean 'http'?)",
        "app.yaml:10:46: workflows.b.trigger.schedule: a trigger has one kind, but 'http' and "
        "'schedule' are both given",
        # The block has a mistake, and its other fields are still checked in the same round.
        "app.yaml:14:22: workflows.c.trigger.http.server: module 'bus' is a broker.memory (kind broker); "
        "expected one of: http_server",
        "app.yaml:14:37: workflows.c.trigger.http.verb: unknown field 'verb' (did you mean 'server'?)",
    ]


def test_trigger_module_reference_kind(registry: Registry) -> None:
    text = """\
        version: 1
        name: shop
        modules:
          - {name: bus, type: broker.memory}
        workflows:
          a:
            trigger: {http: {server: bus, path: /x}}
            steps: [{log: a}]
        """
    assert issues(text, registry) == [
        "app.yaml:7:30: workflows.a.trigger.http.server: "
        "module 'bus' is a broker.memory (kind broker); expected one of: http_server"
    ]


def test_valid_config_builds_app(registry: Registry) -> None:
    text = """\
        version: 1
        name: shop
        engine: {shutdown_grace: 5s}
        modules:
          - {name: web, type: http.server, config: {port: 9000}}
        workflows:
          create-order:
            description: Make an order.
            trigger: {http: {server: web, method: POST, path: /orders}}
            timeout: 2s
            concurrency: 3
            steps: [{log: hi}]
          tick:
            trigger: {schedule: {every: 1m}}
            steps: [{workflow: create-order}]
        """
    app = load(text, registry)
    assert app.name == "shop"
    assert app.engine.shutdown_grace == 5.0
    assert app.source_file == "app.yaml"
    assert "create-order" in app.source_text
    web = app.modules[0]
    assert (web.name, web.type, web.kind, web.path) == ("web", "http.server", "http_server", "modules[0]")
    order = app.workflows["create-order"]
    assert (order.timeout, order.concurrency, order.queue_size) == (2.0, 3, 1000)
    assert order.trigger is not None
    assert (order.trigger.kind, order.trigger.path) == ("http", "workflows.create-order.trigger")
    assert (order.location.line, order.location.col) == (7, 3)
    tick = app.workflows["tick"]
    assert tick.trigger is not None
    assert isinstance(tick.trigger.config, ScheduleConfig)
    assert tick.trigger.config.every == 60.0


def test_modules_in_topological_order_with_inferred_dependencies(registry: Registry) -> None:
    text = """\
        version: 1
        name: shop
        modules:
          - name: orders
            type: database.sqlite
            depends_on: [web, events]
            config: {url: "x", events: events}
          - {name: web, type: http.server}
          - {name: events, type: broker.memory}
          - name: audit
            type: database.sqlite
            config: {url: "y", events: events}
          - {name: static, type: http.server}
        """
    app = load(text, registry)
    assert [m.name for m in app.modules] == ["web", "events", "orders", "audit", "static"]
    by_name = {m.name: m for m in app.modules}
    assert by_name["orders"].depends_on == ("web", "events")
    assert by_name["audit"].depends_on == ("events",)


def test_every_cycle_named_once(registry: Registry) -> None:
    text = """\
        version: 1
        name: shop
        modules:
          - {name: a, type: broker.memory, depends_on: [b]}
          - {name: b, type: broker.memory, depends_on: [a]}
          - {name: c, type: broker.memory, depends_on: [c, dd]}
          - name: d
            type: database.sqlite
            config: {url: "u", events: e}
          - {name: e, type: broker.memory, depends_on: [d]}
        """
    assert issues(text, registry) == [
        "app.yaml:4:49: modules[0].depends_on[0]: dependency cycle: a -> b -> a",
        "app.yaml:6:49: modules[2].depends_on[0]: dependency cycle: c -> c",
        "app.yaml:6:52: modules[2].depends_on[1]: unknown module 'dd' (did you mean 'd'?)",
        "app.yaml:9:32: modules[3].config.events: dependency cycle: d -> e -> d",
    ]


def test_on_message_error_without_a_message_trigger_is_reported() -> None:
    from workflow_engine.registry.builtins import default_registry

    text = """\
        version: 1
        name: shop
        workflows:
          manual-only:
            on_message_error: {max_deliveries: 3}
            steps:
              - log: pong
          scheduled:
            trigger: {schedule: {every: 1m}}
            on_message_error: {max_deliveries: 3}
            steps:
              - log: pong
        """
    assert issues(text, default_registry()) == [
        "app.yaml:5:5: workflows.manual-only.on_message_error: on_message_error applies to workflows with a "
        "message trigger; this one has a manual trigger",
        "app.yaml:10:5: workflows.scheduled.on_message_error: on_message_error applies to workflows with a "
        "message trigger; this one has a schedule trigger",
    ]
