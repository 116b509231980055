"""Broker throughput: messages/s through a one-step workflow (`message` trigger) vs a raw consume-and-ack loop.

For each broker (NATS JetStream, Redis Streams on the local servers) and each run: N messages are published to a
fresh topic, then consumed and acked (a) by a hand-written loop on the raw client (nats-py pull consumer: fetch
batches, ack each message; redis-py: XREADGROUP batches, XACK each message), and (b) by an `Engine` in this
process whose workflow has one `set` step, triggered by the broker module (admission with the idempotency key,
the execution recorded in a SQLite store in a temp directory, ack after the outcome). (b) runs twice: with
`durable: false` (a summary row per execution) and durable (the default; a checkpoint per step). Reported:
medians of msgs/s and of the ratio to the raw loop of the same run, and each run's ratio.

    .venv/bin/python bench/broker_throughput.py [--messages 20000] [--runs 3] [--brokers nats,redis]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
import redis.asyncio as aioredis
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from workflow_engine.config.validate import load_config_text
from workflow_engine.engine.engine import Engine
from workflow_engine.observability.metrics import Metrics
from workflow_engine.registry.builtins import default_registry

NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
BATCH = 256


async def publish_nats(ns: str, n: int) -> None:
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=ns.upper(), subjects=[f"{ns}.>"], storage=StorageType.MEMORY))
    for start in range(0, n, 500):
        await asyncio.gather(*(js.publish(f"{ns}.jobs", json.dumps({"i": i}).encode())
                               for i in range(start, min(n, start + 500))))
    await nc.close()


async def raw_nats(ns: str, n: int) -> float:
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    sub = await js.pull_subscribe(f"{ns}.jobs", durable="raw", stream=ns.upper(),
                                  config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=BATCH * 4))
    started, done = time.perf_counter(), 0
    while done < n:
        for msg in await sub.fetch(BATCH, timeout=5):
            json.loads(msg.data)
            await msg.ack()
            done += 1
    elapsed = time.perf_counter() - started
    await nc.close()
    return n / elapsed


async def cleanup_nats(ns: str) -> None:
    nc = await nats.connect(NATS_URL)
    await nc.jetstream().delete_stream(ns.upper())
    await nc.close()


async def publish_redis(ns: str, n: int) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    for start in range(0, n, 1000):
        async with client.pipeline(transaction=False) as pipe:
            for i in range(start, min(n, start + 1000)):
                pipe.xadd(f"{ns}.jobs", {"p": json.dumps({"i": i}), "h": "{}", "i": str(uuid.uuid4())})
            await pipe.execute()
    await client.aclose()


async def raw_redis(ns: str, n: int) -> float:
    client = aioredis.Redis.from_url(REDIS_URL)
    await client.xgroup_create(f"{ns}.jobs", "raw", id="0", mkstream=True)
    started, done = time.perf_counter(), 0
    while done < n:
        reply = await client.xreadgroup("raw", "c1", {f"{ns}.jobs": ">"}, count=BATCH, block=5000)
        for _stream, entries in reply:
            for entry_id, fields in entries:
                json.loads(fields[b"p"])
                await client.xack(f"{ns}.jobs", "raw", entry_id)
                done += 1
    elapsed = time.perf_counter() - started
    await client.aclose()
    return n / elapsed


async def cleanup_redis(ns: str) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    await client.delete(f"{ns}.jobs")
    await client.aclose()


def app_yaml(kind: str, ns: str, store: str, durable: bool) -> str:
    config = ({"url": NATS_URL, "stream": {"name": ns.upper(), "subjects": [f"{ns}.>"], "create": False}}
              if kind == "nats" else {"url": REDIS_URL})
    return f"""\
version: 1
name: bench-broker
engine: {{store: {json.dumps(store)}, log_level: warning, log_format: json,
          management: {{enabled: false}}}}
modules:
  - name: bus
    type: broker.{kind}
    config: {json.dumps(config)}
workflows:
  consume:
    durable: {str(durable).lower()}
    concurrency: 256
    trigger: {{message: {{broker: bus, topic: "{ns}.jobs", group: engine, max_in_flight: 512}}}}
    steps:
      - id: one
        set: {{i: "{{{{ input.body.i }}}}"}}
"""


STORE = {"url": ""}  # --store; empty: SQLite in a temp directory


async def engine_run(kind: str, ns: str, n: int, durable: bool) -> float:
    registry = default_registry()
    with tempfile.TemporaryDirectory() as tmp:
        store = STORE["url"] or f"sqlite:///{tmp}/store.db"
        app = load_config_text(app_yaml(kind, ns, store, durable), "bench.yaml", registry)
        metrics = Metrics(process=False)
        engine = Engine(app, registry, metrics=metrics)
        run = asyncio.create_task(engine.run())
        await engine.started.wait()
        counter = metrics.workflow_executions.labels("consume", "success")
        started = None
        while counter.value < n:
            if started is None and counter.value > 0:
                started = time.perf_counter()  # from the first finished execution: startup is not throughput
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - (started or time.perf_counter())
        engine.request_stop()
        await run
    return (n - 1) / elapsed


BROKERS: dict[str, tuple[Callable[[str, int], Awaitable[None]], Callable[[str, int], Awaitable[float]],
                         Callable[[str], Awaitable[None]]]] = {
    "nats": (publish_nats, raw_nats, cleanup_nats),
    "redis": (publish_redis, raw_redis, cleanup_redis),
}


async def one_run(kind: str, n: int) -> dict[str, float]:
    publish, raw, cleanup = BROKERS[kind]
    out = {}
    for label in ("raw", "engine durable: false", "engine durable"):
        ns = f"bench{uuid.uuid4().hex[:10]}"
        await publish(ns, n)
        try:
            if label == "raw":
                out[label] = await raw(ns, n)
            else:
                out[label] = await engine_run(kind, ns, n, durable=label == "engine durable")
        finally:
            await cleanup(ns)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--brokers", default="nats,redis")
    parser.add_argument("--store", default="", help="store URL (default: SQLite in a temp directory)")
    args = parser.parse_args()
    STORE["url"] = args.store
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    machine = platform.processor() or platform.machine()
    print(f"# broker_throughput: {args.messages} messages, {args.runs} runs, {machine}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, store {args.store.split('@')[-1] or 'sqlite'}")
    print("| broker | raw msgs/s | engine durable: false msgs/s (ratio) | engine durable msgs/s (ratio) |")
    print("|---|---:|---:|---:|")
    for kind in args.brokers.split(","):
        runs = [asyncio.run(one_run(kind, args.messages)) for _ in range(args.runs)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        ratios = {k: statistics.median(r[k] / r["raw"] for r in runs) for k in runs[0]}

        def each(label: str, runs: list[dict[str, float]] = runs) -> str:
            return ", ".join(f"{r[label] / r['raw']:.2f}" for r in runs)

        print(f"| {kind} | {med['raw']:,.0f} | {med['engine durable: false']:,.0f} "
              f"({ratios['engine durable: false']:.2f}; runs {each('engine durable: false')}) | "
              f"{med['engine durable']:,.0f} ({ratios['engine durable']:.2f}; runs {each('engine durable')}) |",
              flush=True)


if __name__ == "__main__":
    main()
