"""Memory limit: cgroup v2/v1 parsing, the lower of cgroup and configured, physical memory as fallback."""

from __future__ import annotations

from pathlib import Path

import pytest

from workflow_engine.observability.memory import (
    cgroup_memory_limit,
    effective_memory_limit,
    physical_memory,
    publish_memory_limit,
)
from workflow_engine.observability.metrics import Metrics

GIB = 1024**3
V1_UNLIMITED = "9223372036854771712"


def _cgroup_v2(root: Path, value: str) -> Path:
    (root / "memory.max").write_text(value + "\n")
    return root


def _cgroup_v1(root: Path, value: str) -> Path:
    (root / "memory").mkdir()
    (root / "memory" / "memory.limit_in_bytes").write_text(value + "\n")
    return root


def _meminfo(tmp_path: Path, kib: int) -> Path:
    path = tmp_path / "meminfo"
    path.write_text(f"MemTotal:       {kib} kB\nMemFree:        12 kB\n")
    return path


@pytest.mark.parametrize(
    ("value", "expected"), [("536870912", 512 * 1024**2), ("max", None), ("garbage", None)]
)
def test_cgroup_v2(tmp_path: Path, value: str, expected: int | None) -> None:
    assert cgroup_memory_limit(_cgroup_v2(tmp_path, value)) == expected


@pytest.mark.parametrize(("value", "expected"), [("1073741824", GIB), (V1_UNLIMITED, None)])
def test_cgroup_v1(tmp_path: Path, value: str, expected: int | None) -> None:
    assert cgroup_memory_limit(_cgroup_v1(tmp_path, value)) == expected


def test_no_cgroup_files_means_no_limit(tmp_path: Path) -> None:
    assert cgroup_memory_limit(tmp_path) is None


@pytest.mark.parametrize(("cgroup", "configured", "expected"), [
    (2 * GIB, GIB, GIB),
    (GIB, 2 * GIB, GIB),
    (GIB, None, GIB),
])
def test_effective_limit_is_the_lower(
    tmp_path: Path, cgroup: int, configured: int | None, expected: int
) -> None:
    root = _cgroup_v2(tmp_path, str(cgroup))
    assert effective_memory_limit(configured, cgroup_root=root, meminfo=_meminfo(tmp_path, 1)) == expected


def test_configured_limit_applies_under_an_unlimited_cgroup(tmp_path: Path) -> None:
    root = _cgroup_v1(tmp_path, V1_UNLIMITED)
    assert effective_memory_limit(GIB, cgroup_root=root, meminfo=_meminfo(tmp_path, 1)) == GIB


def test_falls_back_to_physical_memory(tmp_path: Path) -> None:
    meminfo = _meminfo(tmp_path, 16 * 1024 * 1024)
    assert effective_memory_limit(None, cgroup_root=tmp_path, meminfo=meminfo) == 16 * GIB
    assert effective_memory_limit(None, cgroup_root=tmp_path, meminfo=tmp_path / "absent") is None


def test_this_machine_always_has_a_value() -> None:
    assert physical_memory() is not None
    limit = effective_memory_limit(None)
    assert limit is not None
    assert limit > 0


def test_publish_sets_the_gauge(tmp_path: Path) -> None:
    metrics = Metrics(process=False)
    root = _cgroup_v2(tmp_path, str(2 * GIB))

    assert publish_memory_limit(metrics, GIB, cgroup_root=root) == GIB
    assert metrics.registry.get_sample_value("process_memory_limit_bytes") == GIB
