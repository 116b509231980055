"""Start the real `workflow run` process on free ports and talk to it over HTTP."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

WORKFLOW = str(Path(sys.executable).parent / "workflow")


_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port nothing listens on now, for a server a test starts next. Taken below the kernel's ephemeral range
    (an outgoing connection's source port cannot take it before the server binds it) and never the same twice
    in this process: ten drill engines started at once, each on ports asked for in a row, made a collision
    likely enough to fail a CI run now and then (an engine whose port is taken stays up and never ready)."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(20000, max(20001, low))
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket() as sock:  # the range is crowded: any port the kernel gives
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    _HANDED_OUT.add(port)
    return port


@dataclass
class EngineProcess:
    proc: subprocess.Popen[str]
    web: str
    mgmt: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def logs(self) -> str:
        return self.log_path.read_text()

    def metrics(self) -> str:
        return httpx.get(f"{self.mgmt}/metrics", timeout=5).text

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def wait_until(predicate: object, timeout: float = 15, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def _ready(mgmt: str) -> bool:
    try:
        return httpx.get(f"{mgmt}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def engine_process(config: Path, *, env: Mapping[str, str] | None = None, wait_ready: bool = True,
                   web_port: int | None = None, args: tuple[str, ...] = ()) -> Iterator[EngineProcess]:
    """Run `workflow run config` with WEB_ADDR/MGMT_ADDR on free ports; stop it (SIGTERM) afterwards."""
    web_port = web_port or free_port()
    mgmt_port = free_port()
    store_dir = tempfile.mkdtemp(prefix="workflow-e2e-")
    full_env = {**os.environ, "WEB_ADDR": f"127.0.0.1:{web_port}",
                "WORKFLOW_STORE": f"sqlite:///{store_dir}/workflow.db", **(env or {})}
    with tempfile.NamedTemporaryFile("w", suffix=".log", delete=False) as log_file:
        log_path = Path(log_file.name)
    with log_path.open("w") as out:
        proc = subprocess.Popen(
            [WORKFLOW, "run", str(config), "--mgmt-addr", f"127.0.0.1:{mgmt_port}", *args],
            stdout=out, stderr=subprocess.STDOUT, env=full_env, text=True,
        )
    engine = EngineProcess(proc, f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{mgmt_port}", log_path, full_env)
    try:
        if wait_ready:
            wait_until(lambda: proc.poll() is not None or _ready(engine.mgmt), timeout=20)
            assert proc.poll() is None, f"engine exited early:\n{engine.logs()}"
        yield engine
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log_path.unlink(missing_ok=True)
        shutil.rmtree(store_dir, ignore_errors=True)


def sample(metrics_text: str, metric: str, /, **labels: str) -> float | None:
    """The value of the sample `metric{labels...}` (labels matched as a subset), summed over matches."""
    from prometheus_client.parser import text_string_to_metric_families

    total, found = 0.0, False
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
                found = True
    return total if found else None
