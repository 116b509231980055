"""Hot reload of a dynamic component: latency, and that nothing leaks across 10,000 reloads.

One inline `dynamic.component` module (no engine around it, no store) gets `--reloads` new versions in a loop
through the same build → setup → swap → teardown path as a file save or an API upload (`upload()`); every 100
reloads a call checks that the new version serves. Measured:

- reload latency p50/p99 (µs), against a baseline measured in the same run: the bare work any reload must do,
  `compile()` + `exec()` of the same source into a fresh module by hand (ratio = reload / baseline);
- `dynamic_component_versions{name}` after the loop (must be 1: only the active version is held);
- component namespaces still alive after a full collection (must be 1);
- RSS growth (VmRSS) from after a warm-up to after the loop (target: under 10 MB);
- with `--process N`, N reloads of an `isolation: process` component (1 worker), each started once the spare
  worker is up (as between two saves): the reload loads the version into the spare and stops the old worker.

    .venv/bin/python bench/reload.py [--reloads 10000] [--warmup 300] [--process 10] [--check]

`--check` exits 1 when the gauge is not 1, a namespace leaked, or RSS grew by 10 MB or more.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import platform
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from workflow_engine.modules.base import ModuleContext
from workflow_engine.modules.dynamic.component import DynamicComponent
from workflow_engine.modules.dynamic.config import DynamicComponentConfig
from workflow_engine.observability.logging import configure_logging
from workflow_engine.observability.metrics import Metrics

SOURCE = '''
from pydantic import BaseModel

VERSION = {n}
STATE = {{"calls": 0}}


class Order(BaseModel):
    items: list[int]


input_schema = Order


async def setup(config):
    STATE["ready"] = True


async def teardown():
    STATE.clear()


async def execute(ctx, input):
    STATE["calls"] += 1
    return {{"version": VERSION, "total": sum(input["items"])}}
'''
RSS_LIMIT = 10 * 1024 * 1024


class Tasks:
    """Owns the tasks the module spawns (the engine's task group in a real run)."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def namespaces() -> int:
    return sum(1 for o in gc.get_objects()
               if isinstance(o, types.ModuleType) and o.__name__.startswith("dynamic_component."))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def baseline(count: int) -> list[float]:
    """compile + exec of the same sources into fresh modules: the floor of any reload."""
    out = []
    for n in range(count):
        started = time.perf_counter()
        module = types.ModuleType(f"baseline.v{n}")
        exec(compile(SOURCE.format(n=n), "baseline.py", "exec"), module.__dict__)
        out.append(time.perf_counter() - started)
    return out


async def component(metrics: Metrics, tasks: Tasks, directory: Path, isolation: str) -> DynamicComponent:
    (directory / f"{isolation}.py").write_text(SOURCE.format(n=0))
    config = DynamicComponentConfig.model_validate(
        {"source": f"{isolation}.py", "isolation": isolation, "watch": False, "workers": 1})
    module = DynamicComponent(isolation, config, ModuleContext(isolation, metrics, {}, tasks.spawn, str(directory)))
    await module.start()
    return module


async def spares_ready(module: DynamicComponent) -> None:
    """In process mode, wait until the spare workers are up (saves are seconds apart, not back to back)."""
    deadline = time.monotonic() + 60
    while len(module.describe().get("spare_worker_pids", [None])) < module.config.workers:
        # Polled: the spares have no event to wait on, and this is the benchmark, not the engine.
        if time.monotonic() > deadline:
            raise RuntimeError("the spare workers did not start within 60 s")
        await asyncio.sleep(0.01)


async def reloads(module: DynamicComponent, first: int, count: int) -> list[float]:
    out = []
    for n in range(first, first + count):
        await spares_ready(module)
        started = time.perf_counter()
        await module.upload(SOURCE.format(n=n))
        out.append(time.perf_counter() - started)
        if n % 100 == 0:
            result = await module.call({"items": [1, 2]}, f"e{n}")
            assert result == {"version": n, "total": 3}, result
    return out


async def main(args: argparse.Namespace) -> int:
    configure_logging("warning", "json")  # one info line per reload would measure the terminal
    metrics = Metrics(process=False)
    tasks = Tasks()
    with tempfile.TemporaryDirectory() as tmp:
        inline = await component(metrics, tasks, Path(tmp), "inline")
        await reloads(inline, 1, args.warmup)
        gc.collect()
        rss_before = rss()
        base = baseline(min(args.reloads, 2000))
        measured = await reloads(inline, args.warmup + 1, args.reloads)
        gc.collect()
        rss_after = rss()
        gauge = metrics.registry.get_sample_value("dynamic_component_versions", {"name": "inline"})
        alive = namespaces()
        await inline.stop()
        process_times: list[float] = []
        if args.process:
            proc = await component(metrics, tasks, Path(tmp), "process")
            process_times = await reloads(proc, 1, args.process)
            await proc.stop()
    growth = rss_after - rss_before
    p50, p99 = statistics.median(measured), pct(measured, 0.99)
    b50, b99 = statistics.median(base), pct(base, 0.99)
    print(f"machine: {platform.machine()}, Python {platform.python_version()}, {platform.system()}")
    print(f"command: {' '.join(sys.argv)}")
    print("| subject | reloads | p50 µs | p99 µs | p50 vs baseline |")
    print("|---|---:|---:|---:|---:|")
    print(f"| baseline: compile + exec by hand | {len(base)} | {b50 * 1e6:.0f} | {b99 * 1e6:.0f} | 1.0x |")
    print(f"| inline reload (build, setup, swap, teardown) | {len(measured)} | {p50 * 1e6:.0f} | {p99 * 1e6:.0f} "
          f"| {p50 / b50:.1f}x |")
    if process_times:
        print(f"| process reload (spare worker ready) | {len(process_times)} | "
              f"{statistics.median(process_times) * 1e6:.0f} | {pct(process_times, 0.99) * 1e6:.0f} | "
              f"{statistics.median(process_times) / b50:.0f}x |")
    print(f"dynamic_component_versions after the loop: {gauge:g} (target 1)")
    print(f"component namespaces alive after gc: {alive} (target 1)")
    print(f"RSS: {rss_before / 2**20:.1f} MiB -> {rss_after / 2**20:.1f} MiB, growth {growth / 2**20:.2f} MiB "
          f"(target < {RSS_LIMIT / 2**20:.0f} MiB)")
    ok = gauge == 1 and alive == 1 and growth < RSS_LIMIT
    print("targets: " + ("MET" if ok else "MISSED"))
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reloads", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--process", type=int, default=10, help="reloads of a process-mode component (0: none)")
    parser.add_argument("--check", action="store_true")
    sys.exit(asyncio.run(main(parser.parse_args())))
