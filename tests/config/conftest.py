"""A small registry of fake module, trigger and step types, independent of the built-ins."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from workflow_engine.durations import Duration
from workflow_engine.registry.specs import (
    ModuleRef,
    ModuleSpec,
    NestedSteps,
    Registry,
    StepSpec,
    TriggerSpec,
    WorkflowRef,
)

StepList = Annotated[list[dict[str, Any]], NestedSteps()]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ServerConfig(Model):
    address: str = Field("0.0.0.0", description="Interface to bind.")
    port: int = Field(8080, ge=1, le=65535, description="TCP port.")


class BrokerConfig(Model):
    capacity: int = Field(100, ge=1, description="Messages held per topic.")


class DatabaseConfig(Model):
    url: str = Field(description="Database URL.")
    events: Annotated[str | None, ModuleRef(("broker",))] = Field(
        None, description="Broker for change events."
    )


class ClientConfig(Model):
    base_url: str = Field(description="Prefix of every request URL.")
    timeout: Duration = Field(5.0, description="Request timeout.")


class HttpTriggerConfig(Model):
    server: Annotated[str, ModuleRef(("http_server",))] = Field(description="Server that serves the route.")
    method: Literal["GET", "POST", "PUT", "DELETE"] = Field("GET", description="HTTP method.")
    path: str = Field(description="Route path.")


class ScheduleConfig(Model):
    every: Duration = Field(description="Interval between runs.")


class ManualConfig(Model):
    pass


class LogConfig(Model):
    message: str = Field(description="Text to log.")
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")


class SetConfig(Model):
    values: dict[str, Any] = Field(description="Values to set.")


class CallConfig(Model):
    component: Annotated[str, ModuleRef()] = Field(description="Module to call.")
    with_: dict[str, Any] = Field(default_factory=dict, alias="with", description="Input of the call.")


class ForeachConfig(Model):
    items: str = Field(description="Template giving the list to iterate.")
    concurrency: int = Field(1, ge=1, description="Items processed at once.")
    steps: StepList = Field(description="Steps run for each item.")


class SwitchConfig(Model):
    value: str = Field(description="Template whose value selects the case.")
    cases: Annotated[dict[str, list[dict[str, Any]]], NestedSteps()] = Field(description="Steps by case.")
    default: StepList | None = Field(None, description="Steps when no case matches.")


class IfConfig(Model):
    then: StepList = Field(description="Steps run when the condition is true.")
    else_: StepList | None = Field(None, alias="else", description="Steps run otherwise.")


class WorkflowStepConfig(Model):
    name: Annotated[str, WorkflowRef()] = Field(description="Workflow to run.")
    wait: bool = Field(True, description="Wait for its result.")


class HttpStepConfig(Model):
    url: str = Field(description="Request URL.")
    client: Annotated[str | None, ModuleRef(("http_client",))] = Field(None, description="Client module.")


def _factory(*args: Any) -> None:
    return None


def make_registry() -> Registry:
    registry = Registry()
    for type_, kind, model in [
        ("http.server", "http_server", ServerConfig),
        ("broker.memory", "broker", BrokerConfig),
        ("database.sqlite", "database", DatabaseConfig),
        ("http.client", "http_client", ClientConfig),
    ]:
        registry.add_module(ModuleSpec(type_, kind, model, _factory, f"A fake {kind}."))
    for name, model in [("http", HttpTriggerConfig), ("schedule", ScheduleConfig), ("manual", ManualConfig)]:
        registry.add_trigger(TriggerSpec(name, model, _factory, f"A fake {name} trigger."))
    for spec in [
        StepSpec("log", LogConfig, _factory, "Log a line.", shorthand="message"),
        StepSpec("set", SetConfig, _factory, "Set values.", value_field="values"),
        StepSpec("call", CallConfig, _factory, "Call a module.", shorthand="component", siblings=("with",)),
        StepSpec("foreach", ForeachConfig, _factory, "Run steps per item."),
        StepSpec("switch", SwitchConfig, _factory, "Run the steps of one case."),
        StepSpec("if", IfConfig, _factory, "Branch.", key="then", value_field="then", siblings=("else",)),
        StepSpec("workflow", WorkflowStepConfig, _factory, "Run a workflow.", shorthand="name"),
        StepSpec("http", HttpStepConfig, _factory, "Send a request."),
    ]:
        registry.add_step(spec)
    return registry


@pytest.fixture
def registry() -> Registry:
    return make_registry()
