"""Counting a served workload's instructions with callgrind: the harness `http_instructions.py` and
`broker_instructions.py` share.

The workload runs as `command` (a Python script's `--serve` mode) under `valgrind --tool=callgrind` with
instrumentation off. It warms up, touches `<work>/ready` and waits for `<work>/go`; counting is turned on,
`before_go()` runs here (a publisher, say), `go` is touched, the workload does the counted work and touches
`<work>/done`; counting is turned off and the dumps' totals are summed.
"""

from __future__ import annotations

import glob
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def have_valgrind() -> bool:
    return shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None


def wait_for(path: Path) -> None:
    """Wait until `path` exists, then remove it (the signal files of the protocol above)."""
    while not path.exists():
        time.sleep(0.02)
    path.unlink()


def count(which: str, command: Sequence[str], work: Path, *, before_go: Callable[[], None] = lambda: None,
          timeout: float = 600, keep: Path | None = None) -> int:
    """Instructions the workload `command` ran between `go` and `done` (see the module's docstring). `keep`: a
    directory the dumps are copied to, as `<which>.<pid>` (read them with `callgrind_annotate`)."""
    out = work / "callgrind.out"
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}.%p", *command],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not (work / "ready").exists():
            if proc.poll() is not None:
                err = proc.stderr.read() if proc.stderr else ""
                raise SystemExit(f"{which} ended before it was ready:\n{err[-2000:]}")
            time.sleep(0.2)
        (work / "ready").unlink()
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
        before_go()
        (work / "go").touch()
        wait_for(work / "done")
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True, capture_output=True)
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode != 0:
        raise SystemExit(f"{which} failed under valgrind:\n{err[-2000:]}")
    total = 0
    for name in glob.glob(f"{out}.*"):
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(name, keep / f"{which}.{name.rsplit('.', 1)[1]}")
        with open(name) as dump:
            total += sum(int(line.split()[1]) for line in dump if line.startswith("totals:"))
    return total
