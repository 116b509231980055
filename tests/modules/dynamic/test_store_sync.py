"""Two replicas of a component on one store: an upload or a deletion through one reaches the other."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.factories import TaskOwner, wait_until
from tests.modules.dynamic.conftest import ops, write_source
from workflow_engine.errors import ComponentLoadError
from workflow_engine.modules.base import ModuleContext
from workflow_engine.modules.dynamic.component import DynamicComponent
from workflow_engine.modules.dynamic.config import DynamicComponentConfig
from workflow_engine.observability.metrics import Metrics
from workflow_engine.store.base import Store
from workflow_engine.store.factory import open_store_from_url

FILE = "def execute(ctx, input):\n    return {'from': 'file'}\n"
UPLOAD = "def execute(ctx, input):\n    return {'from': 'upload N'}\n"


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[tuple[DynamicComponent, DynamicComponent, Metrics]]:
    write_source(tmp_path / "comp.py", FILE)
    owner = TaskOwner()
    stores: list[Store] = []
    components = []
    metrics = [Metrics(process=False), Metrics(process=False)]
    for index in range(2):
        store = open_store_from_url(f"sqlite:///{tmp_path}/store.db")
        await store.open()
        stores.append(store)
        config = DynamicComponentConfig.model_validate({"source": "comp.py", "watch": False, "store_poll": None})
        ctx = ModuleContext("comp", metrics[index], {}, owner.spawn, str(tmp_path), store)
        component = DynamicComponent("comp", config, ctx)
        await component.start()
        components.append(component)
    yield components[0], components[1], metrics[1]
    for component in components:
        await component.stop()
    await owner.close()
    for store in stores:
        await store.close()


async def test_uploads_and_deletions_reach_the_other_replica(
        replicas: tuple[DynamicComponent, DynamicComponent, Metrics]) -> None:
    first, second, metrics = replicas
    await first.upload(UPLOAD.replace('N', '1'))
    assert await second.call({}, "e1") == {"from": "file"}  # until it looks at the store
    await second.sync_from_store()
    assert await second.call({}, "e2") == {"from": "upload 1"}
    await second.sync_from_store()  # nothing changed: no new version
    assert ops(metrics, "comp", "reload", "success") == 1

    await first.remove_upload()
    await second.sync_from_store()
    assert await second.call({}, "e3") == {"from": "file"}
    assert second.versions_held == 1


async def test_a_stored_source_this_replica_refuses_is_tried_once(
        replicas: tuple[DynamicComponent, DynamicComponent, Metrics]) -> None:
    first, second, metrics = replicas
    assert first.ctx.store is not None
    await first.ctx.store.save_component("comp", "import os\n", "bad-digest")  # e.g. a newer engine's allowlist
    with pytest.raises(ComponentLoadError):
        await second.sync_from_store()
    await second.sync_from_store()
    assert ops(metrics, "comp", "reload", "error") == 1
    assert await second.call({}, "e1") == {"from": "file"}


async def test_the_poller_is_a_task_of_the_module(tmp_path: Path) -> None:
    write_source(tmp_path / "comp.py", FILE)
    store = open_store_from_url(f"sqlite:///{tmp_path}/store.db")
    await store.open()
    owner = TaskOwner()
    config = DynamicComponentConfig.model_validate({"source": "comp.py", "watch": False, "store_poll": "20ms"})
    component = DynamicComponent("comp", config, ModuleContext("comp", Metrics(process=False), {}, owner.spawn,
                                                                str(tmp_path), store))
    await component.start()
    try:
        assert [t.get_name() for t in owner.tasks] == ["module:comp:store-poll"]
        await store.save_component("comp", UPLOAD.replace('N', '7'), "d7")
        await wait_until(lambda: component.describe().get("origin") == "upload", "the poller loaded the upload")
        assert await component.call({}, "e1") == {"from": "upload 7"}
    finally:
        await component.stop()
        await owner.close()
        await store.close()
