"""Shared helpers: validate YAML text and get the issues as `FILE:LINE:COL: PATH: MESSAGE` lines."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping

import pytest

from workflow_engine.config.models import AppConfig
from workflow_engine.config.validate import load_config_text
from workflow_engine.errors import ConfigError
from workflow_engine.registry.specs import Registry

FILE = "app.yaml"


def load(text: str, registry: Registry, env: Mapping[str, str] | None = None) -> AppConfig:
    return load_config_text(textwrap.dedent(text), FILE, registry, env if env is not None else {})


def issues(text: str, registry: Registry, env: Mapping[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(text, registry, env)
    return [str(issue) for issue in caught.value.issues]
