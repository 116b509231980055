"""Wire conventions shared by the broker modules."""

from __future__ import annotations

import pytest

from workflow_engine.modules.broker.message import delivery_count


@pytest.mark.parametrize(("raw", "count"), [(None, 1), ("", 1), ("3", 3), ("0", 1), ("-2", 1), ("three", 1),
                                            ("2.5", 1)])
def test_a_missing_or_unreadable_delivery_count_is_the_first_delivery(raw: str | None, count: int) -> None:
    assert delivery_count(raw) == count
