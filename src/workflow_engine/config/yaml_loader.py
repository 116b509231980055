"""YAML text → plain Python data plus the line and column of every key and value, by path."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from workflow_engine.config.issues import Issue, Location, Path, format_path

# libyaml is several times faster than the pure-Python parser; fall back when PyYAML was built without it.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STANDARD_TAG = "tag:yaml.org,2002:"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
MAX_NODES = 500_000
"""Values a document may expand to; bounds what an alias bomb (`&a [*b, *b, ...]`) can cost."""

Position = tuple[int, int]


@dataclass
class Positions:
    """Where each value and each mapping key starts (1-based line and column), by path."""

    values: dict[Path, Position] = field(default_factory=dict)
    keys: dict[Path, Position] = field(default_factory=dict)


@dataclass
class LoadedYaml:
    """A parsed document: `data` is None when the text could not be parsed at all."""

    data: Any
    positions: Positions
    issues: list[Issue]


class _TooLargeError(Exception):
    pass


def load_yaml(text: str, file: str) -> LoadedYaml:
    """Parse one YAML document; syntax errors, duplicate keys and bad tags become issues, never exceptions."""
    try:
        node = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as err:
        return LoadedYaml(None, Positions(), [_syntax_issue(err, file)])
    except yaml.YAMLError as err:
        return LoadedYaml(None, Positions(), [Issue(Location(file, 1, 1), "", f"invalid YAML: {err}")])
    builder = _Builder(file)
    if node is None:
        return LoadedYaml(None, builder.positions, [])
    try:
        data = builder.build(node, ())
    except _TooLargeError:
        issue = Issue(Location(file, 1, 1), "", f"the document expands to more than {MAX_NODES} values")
        return LoadedYaml(None, Positions(), [issue])
    except RecursionError:
        issue = Issue(Location(file, 1, 1), "", "the document nests too deeply")
        return LoadedYaml(None, Positions(), [issue])
    return LoadedYaml(data, builder.positions, builder.issues)


def _syntax_issue(err: yaml.MarkedYAMLError, file: str) -> Issue:
    mark = err.problem_mark or err.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    message = f"YAML syntax error: {err.problem or err.context or 'cannot parse'}"
    if err.problem and err.context:
        message += f" ({err.context})"
    return Issue(Location(file, line, col), "", message)


def _position(node: Node) -> Position:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Builder:
    """Turns composed nodes into dicts, lists and scalars while recording positions."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.positions = Positions()
        self.issues: list[Issue] = []
        self._constructor = SafeConstructor()
        self._active: set[int] = set()
        self._count = 0

    def _issue(self, node: Node, path: Path, message: str) -> None:
        line, col = _position(node)
        self.issues.append(Issue(Location(self.file, line, col), format_path(path), message))

    def build(self, node: Node, path: Path) -> Any:
        self._count += 1
        if self._count > MAX_NODES:
            raise _TooLargeError
        self.positions.values[path] = _position(node)
        if not node.tag.startswith(_STANDARD_TAG):
            self._issue(node, path, f"unsupported YAML tag '{node.tag}'")
            return None
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        if id(node) in self._active:
            self._issue(node, path, "an alias refers to a value that contains it")
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
            if isinstance(node, SequenceNode):
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            return None
        finally:
            self._active.discard(id(node))

    def _scalar(self, node: ScalarNode, path: Path) -> Any:
        if node.tag == _TIMESTAMP_TAG:
            # Config data is JSON-shaped (templates, HTTP bodies); a datetime would not survive that.
            return node.value
        try:
            return self._constructor.construct_object(node)
        except (yaml.YAMLError, ValueError) as err:
            problem = err.problem if isinstance(err, yaml.MarkedYAMLError) else str(err)
            self._issue(node, path, f"invalid value: {problem}")
            return None

    def _mapping(self, node: MappingNode, path: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        merges = [value for key, value in node.value if key.tag == _MERGE_TAG]
        for source in reversed(merges):
            self._merge(out, source, path)
        self.positions.values[path] = _position(node)
        first_seen: dict[str, Position] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self._key(key_node, path)
            if key is None:
                continue
            if key in first_seen:
                line = first_seen[key][0]
                self._issue(key_node, (*path, key), f"duplicate key '{key}' (first defined at line {line})")
                continue
            first_seen[key] = _position(key_node)
            self.positions.keys[(*path, key)] = _position(key_node)
            out[key] = self.build(value_node, (*path, key))
        return out

    def _key(self, node: Node, path: Path) -> str | None:
        # Keys are always strings: `200:` or `on:` mean the text the user wrote, as in JSON.
        if isinstance(node, ScalarNode):
            return str(node.value)
        self._issue(node, path, "a mapping key must be a plain value, not a mapping or a list")
        return None

    def _merge(self, out: dict[str, Any], source: Node, path: Path) -> None:
        """Apply a `<<: *anchor` merge; explicit keys applied later override merged ones."""
        sources = source.value if isinstance(source, SequenceNode) else [source]
        for item in reversed(sources):
            if not isinstance(item, MappingNode):
                self._issue(item, path, "'<<' merges only mappings")
                continue
            merged = self.build(item, path)
            if isinstance(merged, dict):
                out.update(merged)
