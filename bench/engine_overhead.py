"""Engine overhead: executions/s and µs per step of in-process workflows made of trivial `set` steps.

Workflows of 1, 10 and 50 `set` steps with constant values run inside one `Engine` (SQLite store in a temporary
directory, same loop as `workflow run`: uvloop when installed), once with `durable: false` (no checkpoints; a
summary row per execution, written in the background) and once durable (the default: a checkpoint per step).
Two modes per size:

- sequential: start one execution, await it, repeat (latency of one execution, nothing else running);
- concurrent: start a batch of executions at once, await them all, repeat (throughput under load).

µs per step is the least-squares slope of µs per execution against the number of steps, so the fixed cost of
an execution (admission, task, metrics, its records) is the intercept and does not count against the step
budget. The same shape is measured for a hand-written asyncio baseline (one task per execution, one awaited
coroutine per step storing its constant output), so the engine's numbers come with a same-run reference.

    .venv/bin/python bench/engine_overhead.py [--runs 3] [--duration 0.5] [--steps 1,10,50] [--no-durable]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TARGET_US_PER_STEP = 20.0


def workflow_yaml(sizes: Sequence[int], concurrency: int, store: str) -> str:
    """An app with manual workflows of N `set` steps of constants: `steps-N` (durable: false) and `durable-N`."""
    lines = [
        "version: 1",
        "name: bench-overhead",
        "engine:",
        f"  store: {json.dumps(store)}",
        "  log_level: warning",
        "  log_format: json",
        "workflows:",
    ]
    for prefix, durable in (("steps", "false"), ("durable", "true")):
        for n in sizes:
            lines += [f"  {prefix}-{n}:", f"    durable: {durable}", f"    concurrency: {concurrency}",
                      "    queue_size: 10000", "    steps:"]
            lines += [f"      - id: s{i}\n        set: {{a: 1, b: two, c: [3, 4]}}" for i in range(n)]
    return "\n".join(lines) + "\n"


@dataclass
class Cell:
    """One measurement: `executions` finished in `seconds`."""

    executions: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.executions / self.seconds

    @property
    def us_per_execution(self) -> float:
        return self.seconds / self.executions * 1e6


Runner = Callable[[int], Awaitable[None]]  # runs `batch` executions of one size and returns when all are done
Settle = Callable[[], Awaitable[None]]


async def nothing_to_settle() -> None:
    return None


async def measure(run_batch: Runner, batch: int, duration: float, settle: Settle) -> Cell:
    """Repeat `run_batch(batch)` for about `duration` seconds (after a short warm-up).

    `settle` waits for background work the executions left behind (the engine's summary rows of `durable: false`
    executions); it runs before the clock starts and is timed at the end, so each cell pays for its own.
    """
    warm_until = time.perf_counter() + min(0.2, duration / 5)
    while time.perf_counter() < warm_until:
        await run_batch(batch)
    await settle()
    gc.collect()
    done = 0
    started = time.perf_counter()
    deadline = started + duration
    while time.perf_counter() < deadline:
        await run_batch(batch)
        done += batch
    await settle()
    return Cell(done, time.perf_counter() - started)


def slope(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (slope, intercept) of y against x."""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    return b, my - b * mx


# -- the engine -------------------------------------------------------------------------------------------


class EngineSubject:
    """One in-process `Engine`; `durable` picks the workflows with or without per-step checkpoints."""

    def __init__(self, sizes: Sequence[int], concurrency: int, durable: bool) -> None:
        self.sizes = sizes
        self.concurrency = concurrency
        self.durable = durable
        self.prefix = "durable" if durable else "steps"
        self.name = "engine durable (sqlite)" if durable else "engine durable: false"

    async def __aenter__(self) -> EngineSubject:
        from workflow_engine.config.validate import load_config_text
        from workflow_engine.engine.engine import Engine
        from workflow_engine.observability.logging import configure_logging
        from workflow_engine.observability.metrics import Metrics
        from workflow_engine.registry.builtins import default_registry

        self.tmp = tempfile.TemporaryDirectory(prefix="bench-overhead-")
        store = f"sqlite:///{Path(self.tmp.name) / 'bench.db'}"
        registry = default_registry()
        app = load_config_text(workflow_yaml(self.sizes, self.concurrency, store), "bench-overhead.yaml", registry)
        configure_logging(app.engine.log_level, app.engine.log_format)  # as `workflow run` does
        self.engine = Engine(app, registry, metrics=Metrics(), mgmt_address="127.0.0.1:0")
        self.task = asyncio.create_task(self.engine.run())
        started = asyncio.ensure_future(self.engine.started.wait())
        await asyncio.wait({started, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if not self.engine.started.is_set():
            started.cancel()
            await self.task  # raises what stopped it
            raise RuntimeError("the engine stopped before it started")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.engine.request_stop()
        await self.task
        self.tmp.cleanup()

    async def settle(self) -> None:
        """Wait until the recorder's background queue (summary rows of `durable: false`) is empty."""
        recorder = self.engine.recorder
        deadline = time.perf_counter() + 60
        # Polling: the recorder offers no event for "empty".
        while recorder.summaries_queued() and time.perf_counter() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.001)

    def runner(self, size: int) -> Runner:
        start = self.engine.start_execution
        workflow = f"{self.prefix}-{size}"
        payload = {"x": 1}

        def check(execution: Any) -> None:
            if execution.status != "success":
                raise RuntimeError(f"{workflow} ended {execution.status}: {execution.error}")

        async def run_batch(batch: int) -> None:
            if batch == 1:
                check(await start(workflow, payload, wait=True))
                return
            for execution in await asyncio.gather(*(start(workflow, payload, wait=True) for _ in range(batch))):
                check(execution)

        return run_batch


# -- the hand-written baseline ----------------------------------------------------------------------------


class BaselineSubject:
    """What a workflow of N constant steps costs with nothing but asyncio: a task, N awaited coroutines."""

    name = "asyncio baseline"

    async def __aenter__(self) -> BaselineSubject:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    settle = staticmethod(nothing_to_settle)

    def runner(self, size: int) -> Runner:
        value = {"a": 1, "b": "two", "c": [3, 4]}
        ids = [f"s{i}" for i in range(size)]

        async def step() -> dict[str, Any]:
            return value

        async def execution() -> Any:
            results: dict[str, Any] = {}
            output = None
            for step_id in ids:
                output = await step()
                results[step_id] = {"output": output, "status": "success"}
            return output

        async def run_batch(batch: int) -> None:
            if batch == 1:
                await asyncio.create_task(execution())
                return
            await asyncio.gather(*(asyncio.create_task(execution()) for _ in range(batch)))

        return run_batch


# -- driver -----------------------------------------------------------------------------------------------


MODES = {"sequential": 1, "concurrent": None}  # None: --batch


async def run_all(args: argparse.Namespace) -> dict[tuple[str, str, int], list[Cell]]:
    results: dict[tuple[str, str, int], list[Cell]] = {}
    subjects: list[Any] = [BaselineSubject(), EngineSubject(args.steps, args.batch, durable=False)]
    if args.durable:
        subjects.append(EngineSubject(args.steps, args.batch, durable=True))
    for run in range(args.runs):
        # Rotate the order of subjects and sizes every run so slow drift does not favour one of them.
        shift = run % len(subjects)
        order = subjects[shift:] + subjects[:shift]
        sizes = args.steps[run % len(args.steps):] + args.steps[:run % len(args.steps)]
        for subject in order:
            async with subject as live:
                for size in sizes:
                    run_batch = live.runner(size)
                    for mode, batch in MODES.items():
                        cell = await measure(run_batch, batch or args.batch, args.duration, live.settle)
                        results.setdefault((live.name, mode, size), []).append(cell)
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    return results


def git_revision() -> str:
    """The commit measured, with `+dirty` when src/ has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "src"], capture_output=True,
                               text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def report(args: argparse.Namespace, results: dict[tuple[str, str, int], list[Cell]], loop_name: str) -> int:
    subjects = list(dict.fromkeys(key[0] for key in results))
    baseline = BaselineSubject.name
    print(f"# engine_overhead: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, revision {git_revision()}")
    print(f"# python {platform.python_version()} {platform.machine()} nproc={os.cpu_count()} loop={loop_name} "
          f"runs={args.runs} duration={args.duration:g}s batch={args.batch}")
    print()
    print("## per run (executions/s; µs per execution)")
    print("| subject | mode | steps | " + " | ".join(f"run {i + 1}" for i in range(args.runs)) + " | median exec/s "
          "| median µs/exec |")
    print("|---|---|---:|" + "---:|" * args.runs + "---:|---:|")
    for subject in subjects:
        for mode in MODES:
            for size in args.steps:
                cells = results[(subject, mode, size)]
                runs = " | ".join(f"{c.per_second:,.0f}; {c.us_per_execution:.1f}" for c in cells)
                med_rate = statistics.median(c.per_second for c in cells)
                med_us = statistics.median(c.us_per_execution for c in cells)
                print(f"| {subject} | {mode} | {size} | {runs} | {med_rate:,.0f} | {med_us:.1f} |")
    print()
    print("## µs per step (slope of median µs/execution against steps) and fixed µs per execution (intercept)")
    print("| subject | mode | µs/step | µs fixed | per-run slopes | µs/step vs baseline |")
    print("|---|---|---:|---:|---|---:|")
    slopes: dict[tuple[str, str], float] = {}
    for subject in subjects:
        for mode in MODES:
            medians = [(size, statistics.median(c.us_per_execution for c in results[(subject, mode, size)]))
                       for size in args.steps]
            b, a = slope(medians)
            slopes[(subject, mode)] = b
            per_run = [slope([(size, results[(subject, mode, size)][r].us_per_execution) for size in args.steps])[0]
                       for r in range(args.runs)]
            ratio = f"{b / slopes[(baseline, mode)]:.1f}x" if subject != baseline else ""
            print(f"| {subject} | {mode} | {b:.2f} | {a:.1f} | {', '.join(f'{s:.2f}' for s in per_run)} | {ratio} |")
    print()
    missed = False
    for subject in subjects:
        if subject == baseline:
            continue
        worst = max(slopes[(subject, mode)] for mode in MODES)
        verdict = "MET" if worst <= TARGET_US_PER_STEP else "MISSED"
        missed = missed or worst > TARGET_US_PER_STEP
        print(f"target: {subject} ≤ {TARGET_US_PER_STEP:g} µs per step (worst mode): {worst:.2f} µs → {verdict}")
    return 1 if args.check and missed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="repetitions of every cell (median reported)")
    parser.add_argument("--duration", type=float, default=0.5, help="seconds measured per cell")
    parser.add_argument("--steps", default="1,10,50", help="workflow sizes, comma-separated (at least two)")
    parser.add_argument("--batch", type=int, default=64, help="executions admitted at once in concurrent mode")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="event loop (uvloop, as `workflow run` uses, falls back to asyncio if missing)")
    parser.add_argument("--no-durable", dest="durable", action="store_false",
                        help="skip the durable (SQLite checkpoint per step) workflows")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    args.steps = sorted({int(s) for s in args.steps.split(",")})
    if len(args.steps) < 2 or args.runs < 1 or args.duration <= 0 or args.batch < 2:
        parser.error("need at least two sizes, --runs >= 1, --duration > 0 and --batch >= 2")
    loop_name = args.loop
    if args.loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            loop_name = "asyncio (uvloop not installed)"
            results = asyncio.run(run_all(args))
        else:
            results = uvloop.run(run_all(args))
    else:
        results = asyncio.run(run_all(args))
    return report(args, results, loop_name)


if __name__ == "__main__":
    sys.exit(main())
