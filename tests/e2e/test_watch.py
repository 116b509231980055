"""`workflow run --watch`: saving the config applies it without restart; a bad save changes nothing."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.e2e.process import engine_process, wait_until

CONFIG = """version: 1
name: watched
engine: {{store: "${{WORKFLOW_STORE}}"}}
modules:
  - name: web
    type: http.server
    config: {{address: "${{WEB_ADDR}}"}}
workflows:
  hello:
    trigger: {{http: {{server: web, method: GET, path: /hello}}}}
    steps:
      - respond: {{body: {{greeting: {greeting}}}}}
"""


def test_saving_the_config_applies_it_and_a_bad_save_keeps_the_old_one(tmp_path: Path) -> None:
    config = tmp_path / "app.yaml"
    config.write_text(CONFIG.format(greeting="hello"))
    with engine_process(config, args=("--watch",)) as engine:
        def greeting() -> str:
            return str(httpx.get(f"{engine.web}/hello").json()["greeting"])

        assert greeting() == "hello"
        config.write_text(CONFIG.format(greeting="bonjour"))
        wait_until(lambda: greeting() == "bonjour")
        config.write_text(CONFIG.format(greeting="'{{ oops( }}'"))
        wait_until(lambda: "config change not applied" in engine.logs())
        assert greeting() == "bonjour"
        config.write_text(CONFIG.format(greeting="hallo"))
        wait_until(lambda: greeting() == "hallo")
        assert "template syntax error" in engine.logs()
        assert engine.stop() == 0
