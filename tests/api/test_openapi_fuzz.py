"""Schemathesis against `/openapi.json` of a real `workflow run` process: no request may get a 5xx."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.e2e.process import engine_process
from workflow_engine.api.auth import ENV_TOKEN

ST = Path(sys.executable).parent / "st"
TOKEN = "fuzz-admin-token-0123456789"
APP = """\
version: 1
name: fuzz
engine: {shutdown_grace: 2s, store: "${WORKFLOW_STORE}"}
workflows:
  hello:
    steps:
      - id: greet
        set: {greeting: "hi {{ input }}"}
  boom:
    steps:
      - fail: {message: boom}
"""


def test_schemathesis_finds_no_server_errors(tmp_path: Path) -> None:
    config = tmp_path / "app.yaml"
    config.write_text(APP)
    with engine_process(config, env={ENV_TOKEN: TOKEN}) as engine:
        # The event stream never ends by itself, so it is left out; positive_data_acceptance is left out because
        # a schema-valid request may still be refused on its meaning (an unknown cursor is a 400, a config
        # with issues a 422), which is the point of those endpoints.
        result = subprocess.run(
            [str(ST), "run", f"{engine.mgmt}/openapi.json", "--header", f"Authorization: Bearer {TOKEN}",
             "--exclude-path", "/api/events", "--checks", "all", "--exclude-checks", "positive_data_acceptance",
             "--max-examples", "25", "--seed", "1", "--workers", "1", "--request-timeout", "30"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False,
            env={**os.environ, "NO_COLOR": "1"},
        )
        logs = engine.logs()
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "management API request failed" not in logs
