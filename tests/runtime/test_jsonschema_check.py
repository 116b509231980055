"""SchemaCheck: the fast path and jsonschema agree; schemas using 2020-12 keywords are never fast-pathed."""

from __future__ import annotations

from typing import Any

import pytest

from workflow_engine.errors import ValidationFailedError
from workflow_engine.runtime.jsonschema_check import SchemaCheck

ORDER: dict[str, Any] = {
    "type": "object", "required": ["customer", "items"],
    "properties": {
        "customer": {"type": "string", "minLength": 1},
        "email": {"type": "string", "format": "email"},
        "items": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["sku", "quantity"],
            "properties": {"sku": {"type": "string", "pattern": "^[a-z0-9-]+$"}, "quantity": {"type": "integer"}}}},
    },
}

CASES = [
    ({"customer": "ann", "items": [{"sku": "a-1", "quantity": 2}]}, []),
    ({"customer": "", "items": []}, ["/customer", "/items"]),
    ({"customer": "ann", "email": "not-an-email", "items": [{"sku": "A!", "quantity": 1.5}]},
     ["/email", "/items/0/quantity", "/items/0/sku"]),
    ("not an object", ["/"]),
]


@pytest.mark.parametrize(("data", "paths"), CASES)
def test_fast_path_and_full_report_agree(data: Any, paths: list[str]) -> None:
    check = SchemaCheck(ORDER)
    assert check.fast is not None
    assert sorted(e["path"] for e in check.errors(data)) == paths


def test_a_2020_12_keyword_is_checked_by_jsonschema_only() -> None:
    schema = {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}]}
    check = SchemaCheck(schema)
    assert check.fast is None  # draft 7 would ignore prefixItems and accept [1, 2]
    assert check.errors([1, "a"]) == []
    assert [e["path"] for e in check.errors([1, 2])] == ["/1"]


def test_check_raises_a_400_listing_every_violation() -> None:
    with pytest.raises(ValidationFailedError) as caught:
        SchemaCheck(ORDER).check({"customer": "", "items": []}, "input")
    assert caught.value.http_status == 400
    assert "(and 1 more)" in caught.value.message
    assert len(caught.value.details) == 2
