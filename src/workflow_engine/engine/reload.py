"""Config apply without restart: build and validate the new generation beside the running one, then swap.

What a running engine can swap today: workflows, their triggers (routes, schedules, subscriptions) and steps.
Module and engine settings hold connections, sockets and pools; changing them needs a restart, and an
apply that tries is refused with an issue naming what changed (the running app is left untouched).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from workflow_engine.config.issues import Issue, Location
from workflow_engine.config.models import AppConfig
from workflow_engine.modules.http.server import HttpServer
from workflow_engine.runtime.program import CompiledWorkflow
from workflow_engine.runtime.waiters import Waiters

if TYPE_CHECKING:
    from workflow_engine.engine.engine import Engine


def restart_needed(old: AppConfig, new: AppConfig) -> list[Issue]:
    """What the new config changes that only a restart can apply (empty: it can be applied live)."""
    issues: list[Issue] = []
    before = {m.name: m for m in old.modules}
    after = {m.name: m for m in new.modules}
    for name, module in after.items():
        previous = before.get(name)
        if previous is None:
            issues.append(Issue(module.location, module.path, f"module '{name}' is new: adding modules needs a "
                                "restart"))
        elif (previous.type, previous.config, previous.depends_on) != (module.type, module.config,
                                                                       module.depends_on):
            issues.append(Issue(module.location, module.path, f"module '{name}' changed: changing modules needs a "
                                "restart"))
    for name in before.keys() - after.keys():
        issues.append(Issue(Location(new.source_file, 1, 1), "modules",
                            f"module '{name}' is removed: removing modules needs a restart"))
    if old.engine != new.engine:
        issues.append(Issue(Location(new.source_file, 1, 1), "engine",
                            "engine settings changed: changing them needs a restart"))
    return issues


def swap_generation(engine: Engine, app: AppConfig, program: dict[str, CompiledWorkflow]) -> None:
    """Make `program` the running one. Routes are staged and swapped atomically; on a failure before the
    swap, the running generation is untouched."""
    servers = [m for m in engine.modules.values() if isinstance(m, HttpServer)]
    for server in servers:
        server.stage_routes()
    attached = []
    try:
        for workflow in program.values():
            if workflow.trigger is not None:
                workflow.trigger.attach(engine.wiring)
                attached.append(workflow.trigger)
    except BaseException:
        for server in servers:
            server.discard_routes()
        for trigger in attached:
            trigger.detach(engine.wiring)
        raise
    # From here nothing fails: admissions first (new routes admit into new workflows), then the routes.
    engine.runtime.swap(program)
    for server in servers:
        server.commit_routes()
    for workflow in engine.program.values():
        if workflow.trigger is not None:
            workflow.trigger.detach(engine.wiring)
    engine.waiters.detach(engine.bus)
    engine.waiters = Waiters(engine.runtime, program)
    engine.waiters.attach(engine.bus)
    engine.app, engine.program = app, program
    engine.route_events()
    engine.restart_trigger_loops()
