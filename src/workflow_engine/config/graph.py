"""The module dependency graph: start order (topological, stable) and every cycle named in full."""

from __future__ import annotations

from dataclasses import dataclass

from workflow_engine.config.issues import Path


@dataclass(frozen=True)
class Edge:
    """`source` depends on `target`; `path` is where the file says so (a depends_on entry or a reference)."""

    source: str
    target: str
    path: Path


@dataclass(frozen=True)
class Cycle:
    """A dependency cycle, starting at its earliest declared module; `edge` is its first edge."""

    names: tuple[str, ...]
    edge: Edge

    def __str__(self) -> str:
        return " -> ".join((*self.names, self.names[0]))


def find_cycles(names: list[str], edges: list[Edge]) -> list[Cycle]:
    """Each distinct cycle found by a depth-first walk in declaration order, reported once."""
    order = {name: i for i, name in enumerate(names)}
    graph = _adjacency(names, edges)
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    stack: list[str] = []
    found: dict[tuple[str, ...], Cycle] = {}

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for target, edge in graph[name].items():
            if state.get(target) == 1:
                members = stack[stack.index(target):]
                start = min(range(len(members)), key=lambda i: order[members[i]])
                rotated = tuple(members[start:] + members[:start])
                found.setdefault(rotated, Cycle(rotated, _edge(graph, rotated, edge)))
            elif target not in state:
                visit(target)
        stack.pop()
        state[name] = 2

    for name in names:
        if name not in state:
            visit(name)
    return sorted(found.values(), key=lambda c: order[c.names[0]])


def topological_order(names: list[str], edges: list[Edge]) -> list[str]:
    """Dependencies first; among modules free to go, declaration order. Modules in cycles go last."""
    graph = _adjacency(names, edges)
    placed: list[str] = []
    done: set[str] = set()
    remaining = list(names)
    while remaining:
        ready = next((n for n in remaining if set(graph[n]) <= done), None)
        if ready is None:
            return placed + remaining
        placed.append(ready)
        done.add(ready)
        remaining.remove(ready)
    return placed


def _adjacency(names: list[str], edges: list[Edge]) -> dict[str, dict[str, Edge]]:
    """Targets of each module with the first edge naming each; edges to unknown modules are dropped."""
    graph: dict[str, dict[str, Edge]] = {name: {} for name in names}
    for edge in edges:
        if edge.source in graph and edge.target in graph:
            graph[edge.source].setdefault(edge.target, edge)
    return graph


def _edge(graph: dict[str, dict[str, Edge]], cycle: tuple[str, ...], closing: Edge) -> Edge:
    target = cycle[1] if len(cycle) > 1 else cycle[0]
    return graph[cycle[0]].get(target, closing)
