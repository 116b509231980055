"""HTTP pipeline: an engine route running validate → transform → respond, against a hand-written Starlette app.

Both apps do the same work per request: parse the JSON body with orjson, validate it with the same libraries
(fastjsonschema-generated code for valid bodies, `jsonschema` 2020-12 for the list of violations of an invalid
one, both compiled once: what the engine's `validate` step does), reshape it with one compiled JMESPath
expression, and answer the result as JSON serialised with orjson. Both run as separate processes on uvicorn
with the same settings (httptools, uvloop, no access log, one worker, lifespan off, no Server header), in the
same run, on free loopback ports. The engine runs as `workflow run CONFIG` (or, while the CLI has no `run`
command, a launcher calling `workflow_engine.engine.runner.run`), with its defaults otherwise: route metrics,
request-id and security-header middleware, X-Execution-Id, loop monitor and management server.

Load comes from `wrk` (C, one thread; `apt-get install wrk`, or `make bench-tools` without root) or, when wrk
is absent, from a raw asyncio HTTP/1.1 client in a separate process (keep-alive connections, closed loop; it
needs more CPU than wrk, which the servers then lack on a small machine: prefer wrk). A and B alternate order
every run; medians of the runs and the engine/hand-written ratios are reported. Server CPU µs per request (from
/proc) is shown too: it does not depend on how much CPU the load generator takes.

    .venv/bin/python bench/http_pipeline.py [--runs 3] [--duration 7] [--connections 32] [--client auto]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

TARGET_RATIO = 0.7
PATH = "/pipeline"
ENGINE = "engine durable: false"
ENGINE_DURABLE = "engine durable (sqlite)"
BASELINE = "hand-written"

# -- the work both apps do --------------------------------------------------------------------------------

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["customer", "items"],
    "properties": {
        "customer": {"type": "string", "minLength": 1},
        "email": {"type": "string", "format": "email"},
        "items": {
            "type": "array",
            "minItems": 1,
            "maxItems": 50,
            "items": {
                "type": "object",
                "required": ["sku", "quantity", "price"],
                "properties": {
                    "sku": {"type": "string", "pattern": "^[a-z0-9-]+$"},
                    "quantity": {"type": "integer", "minimum": 1},
                    "price": {"type": "number", "minimum": 0},
                },
            },
        },
    },
}
EXPRESSION = "{customer: customer, lines: length(items), quantity: sum(items[].quantity), skus: items[].sku}"
PAYLOAD: dict[str, Any] = {
    "customer": "alice",
    "email": "alice@example.com",
    "items": [
        {"sku": "apple", "quantity": 3, "price": 0.5},
        {"sku": "pear", "quantity": 1, "price": 0.75},
        {"sku": "melon-xl", "quantity": 2, "price": 3.2},
    ],
}
EXPECTED = {"customer": "alice", "lines": 3, "quantity": 6, "skus": ["apple", "pear", "melon-xl"]}
UVICORN_SETTINGS: dict[str, Any] = {
    "http": "httptools", "loop": "uvloop", "access_log": False, "workers": 1, "lifespan": "off",
    "server_header": False, "ws": "none", "log_level": "warning", "interface": "asgi3",
}


def engine_config(port: int, store: str, durable: bool) -> str:
    """The engine app: one http.server and the three-step workflow (JSON is YAML)."""
    schema = json.dumps(SCHEMA)
    return textwrap.dedent(f"""\
        version: 1
        name: bench-http
        engine:
          store: {json.dumps(store)}
          log_level: warning
          log_format: json
          management: {{address: "127.0.0.1:0"}}
        modules:
          - name: web
            type: http.server
            config: {{address: "127.0.0.1:{port}"}}
        workflows:
          pipeline:
            trigger:
              http: {{server: web, method: POST, path: {PATH}}}
            concurrency: 1000
            durable: {"true" if durable else "false"}
            steps:
              - id: check
                validate:
                  schema: {schema}
                  data: "{{{{ input.body }}}}"
              - id: shape
                transform:
                  expression: {json.dumps(EXPRESSION)}
                  data: "{{{{ steps.check.output }}}}"
              - respond:
                  status: 200
                  body: "{{{{ steps.shape.output }}}}"
        """)


def serve_baseline(port: int) -> None:
    """The hand-written Starlette app doing the same work (run in its own process)."""
    import uvicorn

    uvicorn.run(baseline_app(), host="127.0.0.1", port=port, **UVICORN_SETTINGS)


def baseline_app() -> Any:
    """The hand-written Starlette app (an ASGI app; `http_inprocess.py` drives it without a server)."""
    import fastjsonschema
    import jmespath
    import orjson
    from jsonschema import Draft202012Validator
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    validator = Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)
    fast = fastjsonschema.compile(SCHEMA)
    expression = jmespath.compile(EXPRESSION)

    def json_response(body: Any, status: int = 200) -> Response:
        return Response(orjson.dumps(body), status, media_type="application/json")

    async def pipeline(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return json_response({"error": {"code": "invalid_json", "message": str(exc)}}, 400)
        try:
            fast(body)
        except fastjsonschema.JsonSchemaValueException:
            errors = [{"path": "/" + "/".join(map(str, e.absolute_path)), "message": e.message}
                      for e in validator.iter_errors(body)]
            return json_response({"error": {"code": "validation_failed", "details": errors}}, 400)
        return json_response(expression.search(body))


    return Starlette(routes=[Route(PATH, pipeline, methods=["POST"])])


def serve_engine(config: str) -> None:
    """Launcher used while the CLI has no `run` command: what `workflow run CONFIG --mgmt-addr 127.0.0.1:0` does."""
    from workflow_engine.engine.runner import run
    from workflow_engine.registry.builtins import default_registry

    run(Path(config), default_registry(), mgmt_addr="127.0.0.1:0")


# -- processes --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli_has_run() -> Path | None:
    """The `workflow` console script when it has a `run` command, else None."""
    script = Path(sys.executable).parent / "workflow"
    if not script.exists():
        return None
    probe = subprocess.run([str(script), "run", "--help"], capture_output=True, timeout=60, check=False)
    return script if probe.returncode == 0 else None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """A server subprocess we started; stopped with SIGTERM (then SIGKILL) on exit."""

    def __init__(self, name: str, argv: list[str], port: int, log: Path, cwd: Path) -> None:
        self.name = name
        self.cwd = cwd
        self.argv = argv
        self.port = port
        self.url = f"http://127.0.0.1:{port}{PATH}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.cwd,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} while starting:\n"
                                   f"{self.log.read_text(errors='replace')[-3000:]}")
            try:
                self.check()
                return
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not answer within {timeout:g}s") from None
                time.sleep(0.1)

    def check(self) -> None:
        """One real request: the answer must be 200 with the expected JSON; a bad body must get 400."""
        status, body = post(self.url, json.dumps(PAYLOAD).encode())
        if status != 200 or json.loads(body) != EXPECTED:
            raise RuntimeError(f"{self.name}: unexpected answer {status} {body[:300]!r}")
        status, body = post(self.url, json.dumps({"customer": "", "items": []}).encode())
        if status != 400:
            raise RuntimeError(f"{self.name}: invalid body answered {status} {body[:300]!r}, expected 400")

    @property
    def cpu(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def post(url: str, data: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# -- load generators --------------------------------------------------------------------------------------


@dataclass
class Load:
    """What one load run measured."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu_us: float = 0.0  # server CPU time per request

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH_JSON {{\\"requests\\": %d, \\"duration_us\\": %d, \\"p50_us\\": %d, "
    .. "\\"p99_us\\": %d, \\"errors\\": %d}}\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def wrk_path() -> str | None:
    """wrk from PATH, else the copy `make bench-tools` unpacks under .venv/bench (no root needed)."""
    local = Path(__file__).resolve().parents[1] / ".venv" / "bench" / "bin" / "wrk"
    return shutil.which("wrk") or (str(local) if os.access(local, os.X_OK) else None)


def run_wrk(url: str, duration: float, connections: int, script: Path) -> Load:
    argv = [wrk_path() or "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "5s",
            "-s", str(script), url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    return Load(data["requests"], data["duration_us"] / 1e6, data["p50_us"] / 1e3, data["p99_us"] / 1e3,
                data["errors"])


def run_python_client(url: str, duration: float, connections: int) -> Load:
    argv = [sys.executable, __file__, "--load-client", url, "--duration", str(duration),
            "--connections", str(connections)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    data = json.loads(out.strip().splitlines()[-1])
    return Load(data["requests"], data["seconds"], data["p50_ms"], data["p99_ms"], data["errors"])


class _Connection(asyncio.Protocol):
    """One keep-alive connection sending the request again as soon as the previous answer is complete."""

    def __init__(self, request: bytes, stop_at: float, latencies: list[float], closed: asyncio.Future[int]) -> None:
        self.request = request
        self.stop_at = stop_at
        self.latencies = latencies
        self.closed = closed
        self.buffer = bytearray()
        self.errors = 0
        self.sent = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's transports do not subclass asyncio's
        self.send()

    def send(self) -> None:
        assert self.transport is not None
        self.sent = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        length = 0
        for line in head.split(b"\r\n"):
            if line.startswith(b"content-length:"):
                length = int(line[15:])
        if len(self.buffer) < end + 4 + length:
            return
        now = time.perf_counter()
        if not head.startswith(b"http/1.1 200"):
            self.errors += 1
        self.latencies.append(now - self.sent)
        del self.buffer[:end + 4 + length]
        if now < self.stop_at:
            self.send()
        else:
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(self.errors + (1 if exc else 0))


async def _load(url: str, duration: float, connections: int) -> dict[str, Any]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    body = json.dumps(PAYLOAD).encode()
    request = (f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    started = time.perf_counter()
    stop_at = started + duration
    closed = [loop.create_future() for _ in range(connections)]
    for fut in closed:
        await loop.create_connection(lambda fut=fut: _Connection(request, stop_at, latencies, fut),
                                     parts.hostname, parts.port)
    errors = sum(await asyncio.gather(*closed))
    seconds = time.perf_counter() - started
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3  # noqa: E731
    return {"requests": len(latencies), "seconds": seconds, "p50_ms": pick(0.5), "p99_ms": pick(0.99),
            "errors": errors}


def load_client_main(url: str, duration: float, connections: int) -> None:
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(_load(url, duration, connections))
    else:
        result = uvloop.run(_load(url, duration, connections))
    print(json.dumps(result))


# -- driver -----------------------------------------------------------------------------------------------


def measure(server: Server, args: argparse.Namespace, script: Path | None) -> Load:
    def once(duration: float) -> Load:
        if script is not None:
            return run_wrk(server.url, duration, args.connections, script)
        return run_python_client(server.url, duration, args.connections)

    if args.warmup > 0:
        once(args.warmup)
    cpu_before = server.cpu
    load = once(args.duration)
    load.server_cpu_us = (server.cpu - cpu_before) / max(load.requests, 1) * 1e6
    return load


def pick_client(choice: str) -> str:
    have_wrk = wrk_path() is not None
    if choice == "wrk" and not have_wrk:
        sys.exit("wrk is not installed: `apt-get install -y wrk` (Debian/Ubuntu) or `--client python`")
    if choice == "auto" and not have_wrk:
        print("NOTE: wrk is not installed (`apt-get install -y wrk`); using the Python load generator, which takes "
              "more CPU from the servers on a small machine.", file=sys.stderr)
        return "python"
    return "wrk" if choice == "auto" else choice


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="measured runs per app (median reported)")
    parser.add_argument("--duration", type=float, default=7.0, help="seconds of load per measured run")
    parser.add_argument("--warmup", type=float, default=1.5, help="seconds of load before each measured run")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator (auto: wrk when installed)")
    parser.add_argument("--no-durable", dest="durable", action="store_false",
                        help="skip the engine with durable (checkpointed) executions")
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    parser.add_argument("--serve", choices=("baseline", "engine"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--load-client", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.serve == "baseline":
        serve_baseline(args.port)
        return 0
    if args.serve == "engine":
        serve_engine(args.config)
        return 0
    if args.load_client:
        load_client_main(args.load_client, args.duration, args.connections)
        return 0
    if args.runs < 1 or args.duration < 1 or args.connections < 1:
        parser.error("need --runs >= 1, --duration >= 1 and --connections >= 1")
    return run_bench(args, pick_client(args.client))


def run_bench(args: argparse.Namespace, client: str) -> int:
    """Start the servers, load each in turn for every run, stop them, print the report."""
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        work = Path(tmp)
        cli = cli_has_run()
        servers: dict[str, Server] = {}
        variants = [(ENGINE, False), (ENGINE_DURABLE, True)] if args.durable else [(ENGINE, False)]
        for name, durable in variants:
            port = free_port()
            tag = "durable" if durable else "volatile"
            config = work / f"engine-{tag}.yaml"
            config.write_text(engine_config(port, f"sqlite:///{work / f'engine-{tag}.db'}", durable))
            argv = ([str(cli), "run", str(config), "--mgmt-addr", "127.0.0.1:0"] if cli else
                    [sys.executable, __file__, "--serve", "engine", "--config", str(config)])
            servers[name] = Server(name, argv, port, work / f"engine-{tag}.log", work)
        port = free_port()
        servers[BASELINE] = Server(BASELINE, [sys.executable, __file__, "--serve", "baseline", "--port", str(port)],
                                   port, work / "baseline.log", work)
        script = None
        if client == "wrk":
            script = work / "post.lua"
            script.write_text(WRK_SCRIPT.format(body=json.dumps(PAYLOAD)))
        results: dict[str, list[Load]] = {name: [] for name in servers}
        try:
            for server in servers.values():
                server.start()
            names = list(servers)
            for run in range(args.runs):
                # Rotate the order every run so drift (other load on the machine, warming) hits every app alike.
                shift = run % len(names)
                for name in names[shift:] + names[:shift]:
                    load = measure(servers[name], args, script)
                    results[name].append(load)
                    print(f"run {run + 1}/{args.runs} {name}: {load.rps:,.0f} req/s, p50 {load.p50_ms:.2f} ms, "
                          f"p99 {load.p99_ms:.2f} ms, errors {load.errors}, server CPU {load.server_cpu_us:.0f} "
                          "µs/req", file=sys.stderr)
            for server in servers.values():
                server.check()  # still answering correctly after the load
        finally:
            for server in servers.values():
                server.stop()
        launcher = "workflow run (CLI)" if cli else "runner.run launcher (the CLI has no `run`)"
        return report(args, client, launcher, results)


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


def report(args: argparse.Namespace, client: str, launcher: str, results: dict[str, list[Load]]) -> int:
    print(f"# http_pipeline: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, revision {git_revision()}")
    print(f"# python {platform.python_version()} {platform.machine()} nproc={os.cpu_count()} client={client} "
          f"connections={args.connections} runs={args.runs} duration={args.duration:g}s warmup={args.warmup:g}s "
          f"engine={launcher}")
    print()
    print("| app | run | req/s | p50 ms | p99 ms | errors | server CPU µs/req |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, loads in results.items():
        for i, load in enumerate(loads):
            print(f"| {name} | {i + 1} | {load.rps:,.0f} | {load.p50_ms:.2f} | {load.p99_ms:.2f} | {load.errors} | "
                  f"{load.server_cpu_us:.0f} |")
    print()
    med = {
        name: {
            "rps": statistics.median(x.rps for x in loads),
            "p50": statistics.median(x.p50_ms for x in loads),
            "p99": statistics.median(x.p99_ms for x in loads),
            "cpu": statistics.median(x.server_cpu_us for x in loads),
        }
        for name, loads in results.items()
    }
    base = med[BASELINE]
    print("| median | req/s | p50 ms | p99 ms | server CPU µs/req | req/s ÷ hand-written (per run) "
          "| CPU µs/req ÷ hand-written |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for name, m in med.items():
        if name == BASELINE:
            print(f"| {name} | {m['rps']:,.0f} | {m['p50']:.2f} | {m['p99']:.2f} | {m['cpu']:.0f} | | |")
            continue
        per_run = [e.rps / b.rps for e, b in zip(results[name], results[BASELINE], strict=True)]
        cpu = m["cpu"] / base["cpu"] if base["cpu"] else float("nan")
        print(f"| {name} | {m['rps']:,.0f} | {m['p50']:.2f} | {m['p99']:.2f} | {m['cpu']:.0f} | "
              f"**{m['rps'] / base['rps']:.2f}** ({', '.join(f'{r:.2f}' for r in per_run)}) | {cpu:.2f} |")
    print()
    errors = sum(x.errors for loads in results.values() for x in loads)
    ratio = med[ENGINE]["rps"] / base["rps"]
    verdict = "MET" if ratio >= TARGET_RATIO else "MISSED"
    print(f"target: {ENGINE} ≥ {TARGET_RATIO:g} x hand-written throughput (same work, nothing persisted): "
          f"{ratio:.2f} → {verdict}")
    if ENGINE_DURABLE in med:
        print(f"info: {ENGINE_DURABLE} (the default: every step checkpointed) ÷ hand-written: "
              f"{med[ENGINE_DURABLE]['rps'] / base['rps']:.2f} (the hand-written app persists nothing)")
    if errors:
        print(f"WARNING: {errors} failed requests")
    return 1 if args.check and (ratio < TARGET_RATIO or errors) else 0


if __name__ == "__main__":
    sys.exit(main())
