"""HTTP pipeline in process, counted in instructions: callgrind's count per request of the engine's route and
of the hand-written app.

CPU time on this small shared machine moves by ±5 % between minutes; an instruction count does not (the same
tree gives the same count within ~0.5 %, whatever else runs). It is the instrument for changes of a few
percent to the engine's per-request work. It does not see cache misses, which make the engine's instructions
slower than the hand-written app's: read the CPU ratios of `http_inprocess.py` and `http_pipeline.py` for
what a user gets.

Each app runs in its own process under `valgrind --tool=callgrind` with instrumentation off while it starts
and warms up (640 requests through the ASGI app, as `http_inprocess.py` drives it: 32 concurrent callers);
this script then turns counting on with `callgrind_control`, lets the app answer `--requests` requests (each
checked: status 200), turns counting off, and divides. The engine runs as in `http_inprocess.py`
(`durable: false`, SQLite store, default middleware and metrics; its summary rows are written inside the
counted window, but by a helper process that is not counted). Needs valgrind (`apt-get install valgrind`).

    .venv/bin/python bench/http_instructions.py [--requests 640]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import callgrind
from engine_overhead import git_revision
from http_inprocess import call, check
from http_pipeline import baseline_app, engine_config

WARMUP = 640
CALLERS = 32


async def _drive(app: Any, requests: int) -> None:
    async def caller(n: int) -> None:
        for _ in range(n):
            status, _ = await call(app)
            if status != 200:
                raise SystemExit(f"unexpected status {status}")

    await asyncio.gather(*(caller(requests // CALLERS) for _ in range(CALLERS)))


async def _serve(which: str, requests: int, work: Path) -> None:
    """Inside valgrind: warm up, say so, wait for the go, answer `requests` requests, say done."""
    ready, go, done = work / "ready", work / "go", work / "done"
    if which == "hand-written":
        app = baseline_app()
        await check(app, which)
        await _drive(app, WARMUP)
        ready.touch()
        callgrind.wait_for(go)
        await _drive(app, requests)
        done.touch()
        return
    from workflow_engine.config.validate import load_config_text
    from workflow_engine.engine.engine import Engine
    from workflow_engine.modules.http.server import HttpServer
    from workflow_engine.observability.logging import configure_logging
    from workflow_engine.observability.metrics import Metrics
    from workflow_engine.registry.builtins import default_registry

    registry = default_registry()
    config = load_config_text(engine_config(0, f"sqlite:///{work / 'bench.db'}", durable=False), "bench.yaml",
                              registry)
    configure_logging(config.engine.log_level, config.engine.log_format)
    engine = Engine(config, registry, metrics=Metrics(), mgmt_address="127.0.0.1:0")
    task = asyncio.create_task(engine.run())
    await engine.started.wait()
    try:
        server = engine.modules["web"]
        assert isinstance(server, HttpServer)
        assert server.asgi_app is not None
        await check(server.asgi_app, which)
        await _drive(server.asgi_app, WARMUP)
        await asyncio.sleep(0.2)  # the warm-up's summary rows are written before counting starts
        ready.touch()
        await asyncio.to_thread(callgrind.wait_for, go)
        await _drive(server.asgi_app, requests)
        await asyncio.sleep(0.1)  # and this run's, inside the window
        done.touch()
    finally:
        engine.request_stop()
        await task


def _count(which: str, requests: int) -> float:
    """Instructions per request of `which`, run under callgrind."""
    with tempfile.TemporaryDirectory(prefix="bench-instr-") as tmp:
        work = Path(tmp)
        command = [sys.executable, __file__, "--serve", which, "--requests", str(requests), "--work", str(work)]
        return callgrind.count(which, command, work) / requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=640, help="counted requests per app (a multiple of 32)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        import uvloop

        uvloop.run(_serve(args.serve, args.requests, Path(args.work)))
        return 0
    if not callgrind.have_valgrind():
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    os.environ.setdefault("PYTHONHASHSEED", "0")  # the same dict layouts every run
    counts = {which: _count(which, args.requests) for which in ("hand-written", "engine durable: false")}
    print(f"# http_instructions: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, "
          f"revision {git_revision()}")
    print(f"# python {platform.python_version()} {platform.machine()} callers={CALLERS} requests={args.requests}")
    print()
    print("| app | instructions per request |")
    print("|---|---:|")
    for which, count in counts.items():
        print(f"| {which} | {count:,.0f} |")
    print()
    ratio = counts["engine durable: false"] / counts["hand-written"]
    print(f"engine ÷ hand-written instructions per request: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
