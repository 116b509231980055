"""The config of a `dynamic.component` module."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from workflow_engine.config.models import Strict
from workflow_engine.durations import ByteSize, Duration


class DynamicComponentConfig(Strict):
    """A Python component called by `call` steps."""

    source: str | None = Field(
        None, description="Python file implementing the contract, relative to the config file; watched and "
        "reloaded on save. Omit to serve only a source uploaded through the API.",
    )
    timeout: Duration = Field(5.0, gt=0, description="Deadline of one call (a step's own timeout can shorten it).")
    isolation: Literal["inline", "process"] = Field(
        "inline", description="inline: trusted code in the engine's process; process: worker processes with "
        "memory and CPU limits and a hard timeout (see docs/DYNAMIC.md for what each protects against).",
    )
    config: dict[str, Any] = Field(default_factory=dict, description="Passed to the component's `setup(config)`.")
    max_concurrency: int = Field(64, ge=1, description="Calls running at once; more wait for a slot.")
    allow_imports: list[str] = Field(
        default_factory=list, description="Modules allowed in addition to the default allowlist (standard-library "
        "modules without process, file-system or network access, and pydantic).",
    )
    workers: int = Field(2, ge=1, le=64, description="process: worker processes per version; as many spare "
                         "ones are kept started ahead for the next version or a replacement.")
    memory_limit: ByteSize = Field(
        512 * 1024 * 1024, ge=32 * 1024 * 1024, description="process: address-space limit of each worker.")
    cpu_limit: Duration = Field(30.0, gt=0, description="process: CPU seconds one call may use before the worker "
                                "is killed (SIGXCPU).")
    watch: bool = Field(True, description="Reload when the source file changes.")
    debounce: Duration = Field(0.05, ge=0, description="Changes within this time are applied as one reload.")
    store_poll: Duration | None = Field(
        5.0, gt=0, description="How often to look in the store for a source uploaded (or deleted) through another "
        "replica; null: only at start.",
    )
