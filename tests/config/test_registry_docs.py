from __future__ import annotations

from workflow_engine.registry.docs import describe_modules, describe_steps, describe_triggers
from workflow_engine.registry.specs import Registry


def test_modules_list_fields_with_type_default_and_description(registry: Registry) -> None:
    text = describe_modules(registry)
    assert "http.client  (kind: http_client)\n    A fake http_client.\n" in text
    assert "    timeout: duration = 5s\n        Request timeout.\n" in text
    assert "    url: string  (required)\n        Database URL.\n" in text
    assert "    events: module name (broker) = null\n" in text


def test_steps_show_forms_common_fields_and_nested_steps(registry: Registry) -> None:
    text = describe_steps(registry)
    assert text.startswith("Step types\n==========\n\nEvery step also takes:\n    id: string | null = null\n")
    assert (
        "if  (key: then)\n    Branch.\n    Written `then: <then>`.\n    Beside `then` in the step: else.\n"
    ) in text
    assert "    Short form: `call: <component>`.\n" in text
    assert "    cases: mapping of steps  (required)\n" in text
    assert '    level: "debug" | "info" | "warning" | "error" = "info"\n' in text


def test_triggers(registry: Registry) -> None:
    text = describe_triggers(registry)
    server = "    server: module name (http_server)  (required)\n        Server that serves the route.\n"
    assert server in text
    assert "manual\n    A fake manual trigger.\n" in text
