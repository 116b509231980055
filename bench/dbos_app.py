"""The DBOS side of bench/durable.py: a three-step durable workflow on DBOS Transact 3.x.

Run by bench/durable.py with the interpreter of `bench/.venv-dbos` (DBOS is not a project dependency); it
prints one `RESULT {json}` line. The workflow is the engine's: three steps, each computing a small value from
the previous one (a = n + 1, b = a * 2, c = b + 3), every step's output checkpointed by DBOS before the next
runs. Async API throughout: `DBOS.start_workflow_async`, then `await handle.get_result()`. The system database is
schema `dbos_bench` of the same PostgreSQL database the engine uses; DBOS keeps its shipped defaults otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The shared driver lives beside this file (explicit, whatever the working directory or launcher).
from durable import (
    DBOS_SCHEMA,
    closed_loop,
    emit,
    expected_output,
    run_loop,
    worker_args,
)


async def dbos_worker(args: argparse.Namespace, levels: list[int]) -> dict[str, Any]:
    from dbos import DBOS, DBOSConfig

    config: DBOSConfig = {
        "name": "bench-durable",
        "system_database_url": args.pg,
        "dbos_system_schema": DBOS_SCHEMA,
        "log_level": "WARNING",
    }
    DBOS(config=config)

    @DBOS.step()
    async def step_a(n: int) -> dict[str, int]:
        return {"n": n + 1}

    @DBOS.step()
    async def step_b(a: dict[str, int]) -> dict[str, int]:
        return {"n": a["n"] * 2}

    @DBOS.step()
    async def step_c(b: dict[str, int]) -> dict[str, int]:
        return {"n": b["n"] + 3}

    @DBOS.workflow()
    async def wf(payload: dict[str, int]) -> dict[str, int]:
        a = await step_a(payload["n"])
        b = await step_b(a)
        return await step_c(b)

    # launch() is blocking (migrations, background threads): off the loop, as an async app would do.
    await asyncio.to_thread(DBOS.launch)

    async def call(n: int) -> None:
        handle = await DBOS.start_workflow_async(wf, {"n": n})
        output = await handle.get_result()
        if output != expected_output(n):
            raise RuntimeError(f"workflow {handle.workflow_id} returned {output!r}")

    try:
        await call(0)
        cells = [await closed_loop(call, c, args.warmup, args.duration) for c in levels]
    finally:
        await asyncio.to_thread(DBOS.destroy)
    return {"system": "dbos", "version": version("dbos"), "cells": cells}


def main() -> int:
    args = worker_args().parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    levels = [int(c) for c in args.concurrency.split(",")]
    result, loop = run_loop(dbos_worker(args, levels), args.loop)
    result["loop"] = loop
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
