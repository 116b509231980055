"""list_executions: newest first, filters, cursor pagination that covers every row exactly once."""

from __future__ import annotations

import pytest

from workflow_engine.store.base import Store, StoreError
from workflow_engine.store.paging import MAX_PAGE, encode_cursor
from workflow_engine.store.records import ExecutionRecord, Status

STATUSES = [Status.SUCCESS, Status.ERROR, Status.RUNNING]


async def seed(store: Store, count: int = 30) -> list[ExecutionRecord]:
    records = []
    for i in range(count):
        record = ExecutionRecord(
            id=f"e{i:03d}",
            workflow="w1" if i % 2 else "w2",
            trigger="m",
            input={"i": i},
            status=STATUSES[i % 3],
            # Groups of three share a created_at: the id must break the tie.
            created_at=1000.0 + i // 3,
            updated_at=1000.0,
        )
        await store.create_execution(record)
        records.append(record)
    return records


def newest_first(records: list[ExecutionRecord]) -> list[str]:
    return [r.id for r in sorted(records, key=lambda r: (r.created_at, r.id), reverse=True)]


async def read_all(store: Store, limit: int, **filters: object) -> tuple[list[str], int]:
    ids: list[str] = []
    pages = 0
    cursor = None
    while True:
        page = await store.list_executions(limit=limit, cursor=cursor, **filters)  # type: ignore[arg-type]
        pages += 1
        assert len(page.items) <= limit
        ids.extend(r.id for r in page.items)
        if page.next_cursor is None:
            return ids, pages
        cursor = page.next_cursor


async def test_pagination_covers_every_row_once_newest_first(store: Store) -> None:
    records = await seed(store)
    ids, pages = await read_all(store, limit=4)
    assert ids == newest_first(records)
    assert pages == 8
    first = await store.list_executions(limit=4)
    assert first.items[0] == max(records, key=lambda r: (r.created_at, r.id))


@pytest.mark.parametrize(
    "filters",
    [{"workflow": "w1"}, {"status": Status.ERROR}, {"workflow": "w2", "status": Status.SUCCESS}, {"workflow": "x"}],
)
async def test_filters_with_pagination(store: Store, filters: dict[str, object]) -> None:
    records = await seed(store)
    expected = [
        r for r in records
        if r.workflow == filters.get("workflow", r.workflow) and r.status == filters.get("status", r.status)
    ]
    ids, _ = await read_all(store, limit=3, **filters)
    assert ids == newest_first(expected)


async def test_exact_page_boundary_has_no_empty_extra_page(store: Store) -> None:
    await seed(store, count=6)
    page = await store.list_executions(limit=6)
    assert len(page.items) == 6
    assert page.next_cursor is None


async def test_limit_is_capped(store: Store) -> None:
    await seed(store, count=MAX_PAGE + 2)
    page = await store.list_executions(limit=10_000)
    assert len(page.items) == MAX_PAGE
    assert page.next_cursor is not None
    rest = await store.list_executions(limit=10_000, cursor=page.next_cursor)
    assert len(rest.items) == 2
    assert len((await store.list_executions(limit=0)).items) == 1


async def test_cursor_of_a_deleted_row_still_continues(store: Store) -> None:
    records = await seed(store, count=5)
    page = await store.list_executions(cursor=encode_cursor(1001.0, "e004"))
    assert [r.id for r in page.items] == newest_first([r for r in records if (r.created_at, r.id) < (1001.0, "e004")])


@pytest.mark.parametrize("cursor", ["", "not base64!", "bnVsbA", encode_cursor(1.0, "x")[:-3], "WzEsMl0"])
async def test_invalid_cursor_is_a_400(store: Store, cursor: str) -> None:
    with pytest.raises(StoreError) as info:
        await store.list_executions(cursor=cursor)
    assert (info.value.code, info.value.http_status) == ("invalid_cursor", 400)
