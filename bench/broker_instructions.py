"""Broker message path in process, counted in instructions: callgrind's count per message of the engine's
`message` trigger (one `set` step) and of a raw consume-and-ack loop on the same client, against NATS JetStream.

The instrument for changes to the engine's per-message work, as `http_instructions.py` is for the HTTP route:
msgs/s on this small shared machine move by ±15 % between runs (`broker_throughput.py` reports them), an
instruction count within about 1 %. It does not see cache misses, nor the NATS server's own CPU.

Each consumer runs in its own process under `valgrind --tool=callgrind` with instrumentation off while it starts
and takes `WARMUP` messages; this script then turns counting on, publishes `--messages` more (this process is
not counted), waits until the consumer has settled them all, turns counting off and divides. Everything in the
consumer's process is counted: the event loop, nats-py, and the engine's store thread (SQLite in a temp
directory). The raw loop is `broker_throughput.py`'s (fetch batches of 256, ack each). The engine runs
`broker_throughput.py`'s app (`durable: false` unless `--durable`). Needs valgrind.

    .venv/bin/python bench/broker_instructions.py [--messages 2000] [--durable] [--only engine] [--keep DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nats
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

import callgrind
from broker_throughput import BATCH, NATS_URL, app_yaml, cleanup_nats
from engine_overhead import git_revision

WARMUP = 500


async def _publish(ns: str, start: int, n: int) -> None:
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    if start == 0:
        await js.add_stream(StreamConfig(name=ns.upper(), subjects=[f"{ns}.>"], storage=StorageType.MEMORY))
    for first in range(start, start + n, 500):
        await asyncio.gather(*(js.publish(f"{ns}.jobs", json.dumps({"i": i}).encode())
                               for i in range(first, min(start + n, first + 500))))
    await nc.close()


async def _until(done: Callable[[], bool]) -> None:
    while True:
        if done():
            return
        await asyncio.sleep(0.005)


async def _raw(ns: str, total: int, work: Path) -> None:
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    sub = await js.pull_subscribe(f"{ns}.jobs", durable="raw", stream=ns.upper(),
                                  config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=BATCH * 4))
    done = 0
    while done < total:
        if done == WARMUP:
            (work / "ready").touch()
            await asyncio.to_thread(callgrind.wait_for, work / "go")
        try:
            msgs = await sub.fetch(min(BATCH, (WARMUP if done < WARMUP else total) - done), timeout=5)
        except nats.errors.TimeoutError:
            continue
        for msg in msgs:
            json.loads(msg.data)
            await msg.ack()
            done += 1
    await nc.flush()
    (work / "done").touch()
    await nc.close()


async def _engine(ns: str, total: int, work: Path, durable: bool) -> None:
    from workflow_engine.config.validate import load_config_text
    from workflow_engine.engine.engine import Engine
    from workflow_engine.observability.metrics import Metrics
    from workflow_engine.registry.builtins import default_registry

    registry = default_registry()
    app = load_config_text(app_yaml("nats", ns, f"sqlite:///{work / 'store.db'}", durable), "bench.yaml", registry)
    metrics = Metrics(process=False)
    engine = Engine(app, registry, metrics=metrics)
    run = asyncio.create_task(engine.run())
    await engine.started.wait()
    acked = metrics.broker_messages.labels("bus", f"{ns}.jobs", "in", "acked")
    try:
        await _until(lambda: acked.value >= WARMUP)
        await asyncio.sleep(0.2)  # the warm-up's store writes are done before counting starts
        (work / "ready").touch()
        await asyncio.to_thread(callgrind.wait_for, work / "go")
        await _until(lambda: acked.value >= total)
        await asyncio.sleep(0.1)  # and this run's, inside the window
        (work / "done").touch()
    finally:
        engine.request_stop()
        await run


def _count(which: str, messages: int, durable: bool, keep: Path | None) -> float:
    """Instructions per message of `which`, run under callgrind."""
    ns = f"binstr{uuid.uuid4().hex[:10]}"
    asyncio.run(_publish(ns, 0, WARMUP))
    try:
        with tempfile.TemporaryDirectory(prefix="bench-instr-") as tmp:
            work = Path(tmp)
            command = [sys.executable, __file__, "--serve", which, "--ns", ns, "--messages", str(messages),
                       "--work", str(work)] + (["--durable"] if durable else [])
            total = callgrind.count(which, command, work, timeout=900, keep=keep,
                                    before_go=lambda: asyncio.run(_publish(ns, WARMUP, messages)))
            return total / messages
    finally:
        asyncio.run(cleanup_nats(ns))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=2000, help="counted messages per consumer")
    parser.add_argument("--durable", action="store_true", help="the engine's workflow is durable")
    parser.add_argument("--only", choices=("raw", "engine"), help="count one consumer only")
    parser.add_argument("--keep", type=Path, help="copy the callgrind dumps here (for callgrind_annotate)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--ns", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        import uvloop

        total = WARMUP + args.messages
        work = Path(args.work)
        uvloop.run(_raw(args.ns, total, work) if args.serve == "raw"
                   else _engine(args.ns, total, work, args.durable))
        return 0
    if not callgrind.have_valgrind():
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    os.environ.setdefault("PYTHONHASHSEED", "0")  # the same dict layouts every run
    label = f"engine {'durable' if args.durable else 'durable: false'}"
    which = [w for w in ("raw", "engine") if args.only in (None, w)]
    counts = {w: _count(w, args.messages, args.durable, args.keep) for w in which}
    print(f"# broker_instructions (NATS): {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, "
          f"revision {git_revision()}")
    print(f"# python {platform.python_version()} {platform.machine()} messages={args.messages}")
    print()
    print("| consumer | instructions per message |")
    print("|---|---:|")
    for w, count in counts.items():
        print(f"| {'raw loop' if w == 'raw' else label} | {count:,.0f} |")
    if len(counts) == 2:
        print()
        print(f"raw loop ÷ engine instructions per message: {counts['raw'] / counts['engine']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
