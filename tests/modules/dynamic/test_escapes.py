"""The escape list (`escapes/*.py`): each attempt is refused at load or fails at run time, in both modes, and
the engine keeps serving other calls."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.modules.dynamic.conftest import ComponentFactory
from workflow_engine.errors import ComponentLoadError, ModuleError, StepError

ESCAPES = sorted((Path(__file__).parent / "escapes").glob("*.py"))
REQUIRED = {"import_os", "dunder_import", "open_passwd", "subclasses", "import_socket"}
GOOD = "def execute(ctx, input):\n    return {'ok': True}\n"


def test_the_list_holds_the_required_attempts() -> None:
    assert {path.stem for path in ESCAPES} >= REQUIRED


def _expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must say '# expect: load|run'"
    return first.removeprefix("# expect: ").strip()


@pytest.mark.parametrize("isolation", ["inline", "process"])
async def test_every_escape_is_stopped(make_component: ComponentFactory, isolation: str) -> None:
    good = await make_component(GOOD, name="good", isolation=isolation, workers=1)
    for path in ESCAPES:
        expected = _expected(path)
        name = path.stem.replace("_", "-")
        if expected == "load":
            with pytest.raises(ModuleError) as info:
                await make_component(path.read_text(), name=name, isolation=isolation, workers=1)
            cause = info.value.__cause__
            assert isinstance(cause, ComponentLoadError)
            assert cause.line > 1, f"{path.name}: the error must point at the offending line"
            assert "not allowed" in cause.reason, f"{path.name}: {cause.reason}"
            continue
        assert expected == "run", f"{path.name}: unknown expectation {expected!r}"
        component = await make_component(path.read_text(), name=name, isolation=isolation, workers=1)
        with pytest.raises(StepError) as info:
            await component.call({}, "e1")
        assert "not allowed" in info.value.message, f"{path.name}: {info.value.message}"
        # The engine (this process) is unharmed, and so is the component's next call.
        with pytest.raises(StepError):
            await component.call({}, "e2")
        assert await good.call({}, "e3") == {"ok": True}
    assert os.getcwd()  # still our own process, not replaced
    assert await good.call({}, "e4") == {"ok": True}
