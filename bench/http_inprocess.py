"""HTTP pipeline in process: CPU per request of the engine's route and of the hand-written app, without sockets.

The two apps of `http_pipeline.py` (same work: parse, validate, transform, answer JSON) driven through their
ASGI interface by concurrent callers inside this process: no uvicorn, no sockets, no load generator sharing the
CPU. On a small, noisy machine this is the steadier instrument for the apps' own cost per request; over the wire
uvicorn's HTTP handling comes on top of both (about 70 µs per request on the machine of bench/RESULTS.md), so
the throughput ratio of `http_pipeline.py` is better than the CPU ratio printed here, never worse.

The engine runs in-process as `workflow run` would run it (`durable: false`, SQLite store in a temporary
directory, its default middleware, metrics and summary rows); the figure is the process's CPU time
(`time.process_time`: every thread, the store's too) per request, median and best of `--rounds` rounds after a
warm-up, each answer checked (status 200 and the expected body). The engine writes its summary rows in the
background, up to 50 ms after a request: each round pays for about one batch of the round before it, which
evens out over rounds of the default size.

    .venv/bin/python bench/http_inprocess.py [--requests 20000] [--rounds 5] [--callers 32]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_overhead import git_revision
from http_pipeline import EXPECTED, PATH, PAYLOAD, baseline_app, engine_config

ASGI = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
BODY = orjson.dumps(PAYLOAD)


def request_scope() -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": PATH, "raw_path": PATH.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(BODY)).encode())],
        "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8080),
    }


async def call(app: ASGI) -> tuple[int, bytes]:
    """One request through `app`: its status and body."""
    sent = False
    status = 0
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(request_scope(), receive, send)
    return status, b"".join(chunks)


async def check(app: ASGI, name: str) -> None:
    status, body = await call(app)
    if status != 200 or orjson.loads(body) != EXPECTED:
        raise SystemExit(f"{name}: unexpected answer {status} {body[:200]!r}")


async def rounds(app: ASGI, requests: int, callers: int, count: int) -> list[float]:
    """CPU µs per request of `count` rounds of `requests` requests from `callers` concurrent callers."""
    per_caller = max(1, requests // callers)

    async def caller(n: int) -> None:
        for _ in range(n):
            status, _ = await call(app)
            if status != 200:
                raise SystemExit(f"unexpected status {status}")

    await asyncio.gather(*(caller(max(1, per_caller // 4)) for _ in range(callers)))  # warm-up
    out = []
    for _ in range(count):
        started = time.process_time()
        await asyncio.gather(*(caller(per_caller) for _ in range(callers)))
        out.append((time.process_time() - started) / (per_caller * callers) * 1e6)
    return out


async def run(args: argparse.Namespace) -> dict[str, list[float]]:
    from workflow_engine.config.validate import load_config_text
    from workflow_engine.engine.engine import Engine
    from workflow_engine.modules.http.server import HttpServer
    from workflow_engine.observability.logging import configure_logging
    from workflow_engine.observability.metrics import Metrics
    from workflow_engine.registry.builtins import default_registry

    results: dict[str, list[float]] = {}
    hand = baseline_app()
    await check(hand, "hand-written")
    results["hand-written"] = await rounds(hand, args.requests, args.callers, args.rounds)

    with tempfile.TemporaryDirectory(prefix="bench-inprocess-") as tmp:
        registry = default_registry()
        store = f"sqlite:///{Path(tmp) / 'bench.db'}"
        app = load_config_text(engine_config(0, store, durable=False), "bench-http.yaml", registry)
        configure_logging(app.engine.log_level, app.engine.log_format)
        engine = Engine(app, registry, metrics=Metrics(), mgmt_address="127.0.0.1:0")
        task = asyncio.create_task(engine.run())
        started = asyncio.ensure_future(engine.started.wait())
        await asyncio.wait({started, task}, return_when=asyncio.FIRST_COMPLETED)
        if not engine.started.is_set():
            started.cancel()
            await task
            raise SystemExit("the engine stopped before it started")
        try:
            server = engine.modules["web"]
            if not isinstance(server, HttpServer) or server.asgi_app is None:
                raise SystemExit("the engine's http.server module is not serving")
            await check(server.asgi_app, "engine")
            results["engine durable: false"] = await rounds(server.asgi_app, args.requests, args.callers,
                                                            args.rounds)
        finally:
            engine.request_stop()
            await task
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20_000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per app")
    parser.add_argument("--callers", type=int, default=32, help="concurrent callers")
    args = parser.parse_args(argv)
    try:
        import uvloop

        results = uvloop.run(run(args))
    except ImportError:
        results = asyncio.run(run(args))
    print(f"# http_inprocess: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, revision {git_revision()}")
    print(f"# python {platform.python_version()} {platform.machine()} callers={args.callers} "
          f"requests={args.requests} rounds={args.rounds}")
    print()
    print("| app | CPU µs/req median | best | per round |")
    print("|---|---:|---:|---|")
    for name, values in results.items():
        print(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f} | "
              f"{', '.join(f'{v:.0f}' for v in values)} |")
    engine = statistics.median(results["engine durable: false"])
    hand = statistics.median(results["hand-written"])
    print()
    print(f"hand-written ÷ engine CPU per request (medians): {hand / engine:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
