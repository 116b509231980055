"""Durable workflows on PostgreSQL: the engine against DBOS Transact, same database, same load, same run.

A three-step durable workflow (each step computes a small value from the previous one) runs on the local
PostgreSQL in two systems:

- **engine**: an in-process `Engine` (the default `durable` workflow: the execution is recorded before it runs,
  each step is checkpointed before the next, then its end), store `postgresql://.../test?schema=bench_engine`;
- **dbos**: DBOS Transact 3.x (`bench/dbos_app.py`), a `@DBOS.workflow()` awaiting three `@DBOS.step()`
  coroutines, system database in schema `dbos_bench` of the same database. DBOS lives in its own virtualenv,
  `bench/.venv-dbos`, created on first use (`python3 -m venv` + `pip install 'dbos>=3,<4' uvloop`); nothing is
  added to the project's dependencies.

Load: N clients in a closed loop (start a workflow, wait for its result, repeat) for each `--concurrency`, a
warm-up, then `--duration` seconds measured: workflows/s, p50/p99 latency from start to result, and the CPU time
of the process (all its threads) per workflow. Each system runs in a fresh process of its own with the same event
loop (uvloop by default, as `workflow run` uses); both schemas are dropped before every process, so each one
starts from empty tables. The order of the two systems alternates from run to run; medians of `--runs` runs and
the ratio engine / DBOS per concurrency are printed.

    .venv/bin/python bench/durable.py [--runs 3] [--duration 5] [--warmup 1] [--concurrency 1,16,64]
                                      [--pg postgresql://postgres@127.0.0.1:5432/test] [--loop uvloop|asyncio]
                                      [--check]

The shared load driver (`closed_loop`) is stdlib only: `dbos_app.py`, run by the DBOS virtualenv's interpreter,
imports it from here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
DBOS_VENV = BENCH / ".venv-dbos"
DBOS_REQUIREMENT = "dbos>=3,<4"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
ENGINE_SCHEMA = "bench_engine"
DBOS_SCHEMA = "dbos_bench"
SYSTEMS = ("engine", "dbos")
WORKER_TIMEOUT = 600.0


def expected_output(n: int) -> dict[str, int]:
    """What the three steps compute from input `n`: a = n + 1, b = a * 2, c = b + 3."""
    return {"n": (n + 1) * 2 + 3}


# -- the closed-loop driver (shared with dbos_app.py) -----------------------------------------------------


async def closed_loop(call: Callable[[int], Awaitable[None]], clients: int, warmup: float,
                      duration: float) -> dict[str, Any]:
    """`clients` coroutines each run `await call(n)` back to back for `warmup + duration` seconds.

    Measured: the calls that finish inside the `duration` window (throughput) and their start-to-end latency;
    the process CPU time (every thread) over the window. Calls still in flight when the window closes finish
    unmeasured before this returns, so the next cell starts from an idle system.
    """
    loop_time = time.perf_counter
    latencies: list[float] = []
    counter = iter(range(1, 1 << 62))
    begin = loop_time()
    window_start = begin + warmup
    window_end = window_start + duration
    cpu: dict[str, float] = {}

    async def client() -> None:
        while True:
            started = loop_time()
            if started >= window_end:
                return
            await call(next(counter))
            ended = loop_time()
            if window_start <= ended < window_end:
                latencies.append(ended - started)

    async def cpu_clock() -> None:
        await asyncio.sleep(max(0.0, window_start - loop_time()))
        cpu["start"] = time.process_time()
        await asyncio.sleep(max(0.0, window_end - loop_time()))
        cpu["end"] = time.process_time()

    clock = asyncio.create_task(cpu_clock())
    await asyncio.gather(*(client() for _ in range(clients)))
    await clock
    done = len(latencies)
    ordered = sorted(latencies)
    return {
        "concurrency": clients,
        "workflows": done,
        "seconds": duration,
        "per_second": done / duration,
        "p50_ms": percentile(ordered, 50) * 1e3,
        "p99_ms": percentile(ordered, 99) * 1e3,
        "cpu_us_per_workflow": (cpu["end"] - cpu["start"]) / done * 1e6 if done else math.nan,
    }


def percentile(ordered: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of sorted values (nan when empty)."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def run_loop(main: Awaitable[Any], loop: str) -> tuple[Any, str]:
    """Run `main` on uvloop (falling back to asyncio when it is not installed) or asyncio."""
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            return asyncio.run(main), "asyncio (uvloop missing)"  # type: ignore[arg-type]
        return uvloop.run(main), "uvloop"  # type: ignore[arg-type]
    return asyncio.run(main), "asyncio"  # type: ignore[arg-type]


def worker_args() -> argparse.ArgumentParser:
    """Arguments of a worker process (this script with `--worker engine`, or dbos_app.py)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--pg", default=DEFAULT_PG)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    return parser


def emit(result: dict[str, Any]) -> None:
    """A worker's result: one JSON line on stdout (everything else goes to stderr)."""
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


# -- the engine side --------------------------------------------------------------------------------------


def engine_yaml(concurrency: int) -> str:
    """Three durable `set` steps, each computing from the previous one (as dbos_app.py's steps do)."""
    return f"""\
version: 1
name: bench-durable
engine: {{log_level: warning, shutdown_grace: 5s}}
workflows:
  wf:
    concurrency: {concurrency}
    queue_size: {concurrency * 4}
    steps:
      - id: a
        set: {{n: "{{{{ input.n + 1 }}}}"}}
      - id: b
        set: {{n: "{{{{ steps.a.output.n * 2 }}}}"}}
      - id: c
        set: {{n: "{{{{ steps.b.output.n + 3 }}}}"}}
"""


async def engine_worker(args: argparse.Namespace, levels: list[int]) -> dict[str, Any]:
    from workflow_engine.config.validate import load_config_text
    from workflow_engine.engine.engine import Engine
    from workflow_engine.observability.logging import configure_logging
    from workflow_engine.observability.metrics import Metrics
    from workflow_engine.registry.builtins import default_registry

    registry = default_registry()
    app = load_config_text(engine_yaml(max(256, *levels)), "bench-durable.yaml", registry, env={})
    configure_logging(app.engine.log_level, "json", stream=sys.stderr)
    separator = "&" if "?" in args.pg else "?"
    engine = Engine(app, registry, metrics=Metrics(), mgmt_address="127.0.0.1:0",
                    store_url=f"{args.pg}{separator}schema={ENGINE_SCHEMA}")
    task = asyncio.create_task(engine.run())
    started = asyncio.ensure_future(engine.started.wait())
    await asyncio.wait({started, task}, return_when=asyncio.FIRST_COMPLETED)
    if not engine.started.is_set():
        started.cancel()
        await task  # raises what stopped it
        raise RuntimeError("the engine stopped before it started")
    admit = engine.runtime.admit

    async def call(n: int) -> None:
        execution = await admit("wf", {"n": n}, trigger="manual")
        await execution.done
        # The output (the last step's), not `steps`: a finished execution keeps its step outputs only while it
        # is among the newest few (Runtime's RECENT_WHOLE), and at 16+ clients others finish first.
        if execution.status != "success" or execution.output != expected_output(n):
            raise RuntimeError(f"execution {execution.id} ended {execution.status}: "
                               f"{execution.error or execution.output}")

    try:
        await call(0)
        cells = [await closed_loop(call, c, args.warmup, args.duration) for c in levels]
    finally:
        engine.request_stop()
        await task
    from importlib.metadata import version

    return {"system": "engine", "version": version("workflow-engine"), "cells": cells}


def engine_main(argv: Sequence[str]) -> int:
    parser = worker_args()
    parser.add_argument("--worker", choices=("engine",), required=True)
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    result, loop = run_loop(engine_worker(args, levels), args.loop)
    result["loop"] = loop
    emit(result)
    return 0


# -- the orchestrator -------------------------------------------------------------------------------------


def pg_reachable(url: str) -> str | None:
    """The server's version string, or None after saying why PostgreSQL cannot be used."""
    async def probe() -> str:
        import asyncpg  # type: ignore[import-untyped]

        conn = await asyncpg.connect(url, timeout=5)
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    try:
        return asyncio.run(probe())
    except Exception as exc:  # any failure means the same thing here: no benchmark possible
        print(f"error: PostgreSQL is not reachable at {url}: {type(exc).__name__}: {exc}\n"
              "  bench/durable.py needs a local PostgreSQL (trust auth; pass another URL with --pg)",
              file=sys.stderr)
        return None


def drop_schemas(url: str) -> None:
    """Start each worker from empty tables: drop both systems' schemas (they are the benchmark's own)."""
    async def drop() -> None:
        import asyncpg

        conn = await asyncpg.connect(url, timeout=10)
        try:
            for schema in (ENGINE_SCHEMA, DBOS_SCHEMA):
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


def dbos_python() -> Path:
    """The DBOS virtualenv's interpreter, creating the virtualenv on first use."""
    python = DBOS_VENV / "bin" / "python"
    stamp = DBOS_VENV / ".bench-installed"
    if python.exists() and stamp.exists():
        return python
    print(f"creating {DBOS_VENV.relative_to(ROOT)} with {DBOS_REQUIREMENT!r} (first use only)...", file=sys.stderr)
    subprocess.run(["python3", "-m", "venv", str(DBOS_VENV)], check=True)
    # The virtualenv ignores itself, so it never shows up in `git status`.
    (DBOS_VENV / ".gitignore").write_text("*\n", encoding="utf-8")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    DBOS_REQUIREMENT, "uvloop"], check=True)
    stamp.write_text(DBOS_REQUIREMENT + "\n", encoding="utf-8")
    return python


def run_worker(system: str, args: argparse.Namespace, dbos: Path) -> dict[str, Any]:
    drop_schemas(args.pg)
    common = ["--pg", args.pg, "--concurrency", ",".join(map(str, args.concurrency)), "--warmup",
              str(args.warmup), "--duration", str(args.duration), "--loop", args.loop]
    if system == "engine":
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", "engine", *common]
    else:
        command = [str(dbos), str(BENCH / "dbos_app.py"), *common]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=WORKER_TIMEOUT, env=env, cwd=ROOT,
                          check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise RuntimeError(f"{system} worker failed (exit {proc.returncode}): {' '.join(command)}")
    return json.loads(lines[-1][len("RESULT "):])  # type: ignore[no-any-return]


def machine() -> str:
    return (f"nproc={os.cpu_count()} python={platform.python_version()} {platform.machine()} "
            f"kernel={platform.release()}")


def git_revision() -> str:
    """The commit measured, with `+dirty` when src/ has uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def med(cells: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(cell[key] for cell in cells))


def report(args: argparse.Namespace, runs: list[dict[str, dict[str, Any]]], server: str) -> int:
    first = runs[0]
    print(f"# durable: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, revision {git_revision()}")
    print(f"# {machine()} postgresql={server} loop={first['engine'].get('loop')}")
    print(f"# engine {first['engine']['version']} vs dbos {first['dbos']['version']}; runs={args.runs} "
          f"warmup={args.warmup:g}s duration={args.duration:g}s per concurrency")
    print()
    print("## per run (workflows/s; p50 ms; p99 ms; CPU µs per workflow)")
    print("| system | clients | " + " | ".join(f"run {i + 1} ({r['order']})" for i, r in enumerate(runs)) + " |")
    print("|---|---:|" + "---|" * len(runs))
    cells: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for system in SYSTEMS:
        for index, clients in enumerate(args.concurrency):
            row = [run[system]["cells"][index] for run in runs]
            cells[(system, clients)] = row
            text = " | ".join(f"{c['per_second']:,.0f}; {c['p50_ms']:.2f}; {c['p99_ms']:.2f}; "
                              f"{c['cpu_us_per_workflow']:,.0f}" for c in row)
            print(f"| {system} | {clients} | {text} |")
    print()
    print("## medians and ratio engine / DBOS")
    print("| clients | engine wf/s | DBOS wf/s | throughput ratio | engine p50 / p99 ms | DBOS p50 / p99 ms "
          "| engine CPU µs/wf | DBOS CPU µs/wf |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    missed = []
    for clients in args.concurrency:
        ours, theirs = cells[("engine", clients)], cells[("dbos", clients)]
        ratio = med(ours, "per_second") / med(theirs, "per_second")
        if ratio < 1.0:
            missed.append(clients)
        print(f"| {clients} | {med(ours, 'per_second'):,.0f} | {med(theirs, 'per_second'):,.0f} | {ratio:.2f}x "
              f"| {med(ours, 'p50_ms'):.2f} / {med(ours, 'p99_ms'):.2f} "
              f"| {med(theirs, 'p50_ms'):.2f} / {med(theirs, 'p99_ms'):.2f} "
              f"| {med(ours, 'cpu_us_per_workflow'):,.0f} | {med(theirs, 'cpu_us_per_workflow'):,.0f} |")
    print()
    verdict = "MET" if not missed else f"MISSED at {', '.join(map(str, missed))} clients"
    print(f"target: engine throughput >= DBOS throughput at every concurrency → {verdict}")
    return 1 if args.check and missed else 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--worker" in argv:
        return engine_main(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="repetitions (median reported; order alternates)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per concurrency")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each measurement")
    parser.add_argument("--concurrency", default="1,16,64", help="closed-loop clients, comma-separated")
    parser.add_argument("--pg", default=DEFAULT_PG, help="PostgreSQL database both systems use")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="event loop of both systems' processes")
    parser.add_argument("--check", action="store_true", help="exit 1 when the engine is slower than DBOS")
    args = parser.parse_args(argv)
    try:
        args.concurrency = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        parser.error("--concurrency takes integers, comma-separated")
    if args.runs < 1 or args.duration <= 0 or args.warmup < 0 or min(args.concurrency) < 1:
        parser.error("need --runs >= 1, --duration > 0, --warmup >= 0 and concurrency >= 1")
    server = pg_reachable(args.pg)
    if server is None:
        return 2
    try:
        dbos = dbos_python()
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"error: could not create {DBOS_VENV.relative_to(ROOT)} with {DBOS_REQUIREMENT!r}: {exc}\n"
              f"  remove the folder and retry; DBOS comes from PyPI (pip install {DBOS_REQUIREMENT!r})",
              file=sys.stderr)
        return 2
    runs: list[dict[str, Any]] = []
    for number in range(args.runs):
        order = SYSTEMS if number % 2 == 0 else SYSTEMS[::-1]
        run: dict[str, Any] = {"order": " → ".join(order)}
        for system in order:
            began = time.perf_counter()
            run[system] = run_worker(system, args, dbos)
            summary = ", ".join(f"{c['concurrency']}: {c['per_second']:,.0f}/s" for c in run[system]["cells"])
            print(f"run {number + 1}/{args.runs} {system}: {summary} ({time.perf_counter() - began:.0f}s)",
                  file=sys.stderr)
        runs.append(run)
    drop_schemas(args.pg)
    return report(args, runs, server)


if __name__ == "__main__":
    sys.exit(main())
