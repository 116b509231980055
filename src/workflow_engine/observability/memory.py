"""The memory limit this process runs under: cgroup (v2 or v1), `engine.memory_limit`, or physical memory."""

from __future__ import annotations

from pathlib import Path

from workflow_engine.observability.metrics import Metrics

CGROUP_ROOT = Path("/sys/fs/cgroup")
MEMINFO = Path("/proc/meminfo")

# cgroup v1 reports "unlimited" as a page-rounded 2**63-1; no real limit comes near 1 EiB.
_UNLIMITED_THRESHOLD = 1 << 60


def cgroup_memory_limit(root: Path = CGROUP_ROOT) -> int | None:
    """The cgroup memory limit in bytes (v2 `memory.max`, else v1 `limit_in_bytes`); None when unlimited."""
    for path in (root / "memory.max", root / "memory" / "memory.limit_in_bytes"):
        text = _read(path)
        if text is None:
            continue
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            return None
        return value if 0 < value < _UNLIMITED_THRESHOLD else None
    return None


def physical_memory(meminfo: Path = MEMINFO) -> int | None:
    """Total physical memory in bytes from /proc/meminfo (`MemTotal`), or None when unreadable."""
    text = _read(meminfo)
    if text is None:
        return None
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name == "MemTotal":
            fields = rest.split()
            # The kernel always reports MemTotal in kB (KiB).
            return int(fields[0]) * 1024 if fields and fields[0].isdigit() else None
    return None


def effective_memory_limit(
    configured: int | None, *, cgroup_root: Path = CGROUP_ROOT, meminfo: Path = MEMINFO
) -> int | None:
    """The lower of the cgroup limit and `configured`; physical memory when neither is set."""
    limits = [limit for limit in (cgroup_memory_limit(cgroup_root), configured) if limit is not None]
    return min(limits) if limits else physical_memory(meminfo)


def publish_memory_limit(
    metrics: Metrics, configured: int | None, *, cgroup_root: Path = CGROUP_ROOT, meminfo: Path = MEMINFO
) -> int | None:
    """Set `process_memory_limit_bytes` to the effective limit and return it."""
    limit = effective_memory_limit(configured, cgroup_root=cgroup_root, meminfo=meminfo)
    if limit is not None:
        metrics.memory_limit.set(limit)
    return limit


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
