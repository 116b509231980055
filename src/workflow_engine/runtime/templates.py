"""Templates: `{{ ... }}` compiled once at load in a sandboxed Jinja2 environment, rendered per execution.

A value that is exactly one `{{ expr }}` keeps its native type; any other string with `{{` renders to a string;
mappings and lists are compiled item by item and values without templates cost nothing to render. A missing
key is undefined (None, or nothing in text) even where a mapping has a method of that name (`input.body.items`
on a body without `items`), and a function is not data either (`{{ now }}`: None); calling them works
(`input.headers.get('x', 'none')`, `now()`).
"""

from __future__ import annotations

import math
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, ItemsView, Iterator, KeysView, Mapping, ValuesView
from datetime import UTC, datetime
from typing import Any, NoReturn

import orjson
from jinja2 import ChainableUndefined, TemplateError, Undefined, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from workflow_engine.errors import StepError
from workflow_engine.ids import uuid7

# Types of a rendered value that are JSON data as they are (the common case: no further check).
_PLAIN = frozenset({str, dict, list, bool, float, type(None)})
_SINGLE = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\}\}).)*)\}\}\s*$", re.DOTALL)


class TemplateSyntaxIssue(Exception):
    """A template does not compile; `path` is the dotted location inside the compiled value."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def _tojson(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


class Missing(ChainableUndefined):
    """What a missing key or attribute gives: null to every test, comparison and filter that null has an
    answer for (`is none`, `== none`, `| int` → 0, `| length` → 0, `or`), while `is defined` stays false."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return other is None or isinstance(other, Undefined)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = ChainableUndefined.__hash__

    def __int__(self, *_: Any, **__: Any) -> NoReturn:
        raise TypeError("null is not a number")  # as int(None): the `int` filter gives its default

    def __float__(self, *_: Any, **__: Any) -> NoReturn:
        raise TypeError("null is not a number")


class _MissingKey(Missing):
    """`mapping.name` where the mapping has no key `name` but a method of that name: undefined as a value
    (None, empty in text, `is defined` false, `or` takes the default), the method when called
    (`headers.get('x', 'none')`, `body.items()`)."""

    __slots__ = ("_method",)

    def __init__(self, method: Callable[..., Any], obj: Any, name: str) -> None:
        super().__init__(obj=obj, name=name)
        self._method = method

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._method(*args, **kwargs)


class SandboxEnvironment(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, but `a.b` on a mapping reads the key first (so `body.items` is data), and a
    missing key is undefined even where the mapping has a method of that name (`_MissingKey`)."""

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, dict):  # `body['items']` on a body without `items` is missing, not the method
            try:
                return obj[argument]
            except (KeyError, TypeError):
                return self.undefined(obj=obj, name=argument)
        return super().getitem(obj, argument)

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, dict):
            try:
                return obj[attribute]
            except KeyError:
                pass
            value = super().getattr(obj, attribute)  # the sandbox refuses unsafe (mutating) methods here
            if callable(value) and not isinstance(value, Undefined):
                return _MissingKey(value, obj, attribute)
            return value
        return super().getattr(obj, attribute)


def _data(value: Any) -> Any:
    """What `{{ }}` in text prints: nothing for a function (a global not called), as for undefined."""
    return "" if callable(value) else value


def make_environment() -> SandboxEnvironment:
    """The sandboxed environment: no access to private attributes, no mutation of data in scope."""
    env = SandboxEnvironment(undefined=Missing, autoescape=False, enable_async=False, finalize=_data)
    env.tests["none"] = lambda value: value is None or isinstance(value, Undefined)
    env.policies["json.dumps_function"] = lambda value, **_: _tojson(value)
    env.filters["json"] = _tojson
    env.globals["now"] = lambda: datetime.now(UTC).isoformat()
    env.globals["timestamp"] = time.time
    env.globals["uuid"] = uuid7
    return env


class Value(ABC):
    """A compiled config value; `render(scope)` gives its value for one execution."""

    __slots__ = ()
    is_constant = False

    @abstractmethod
    def render(self, scope: Mapping[str, Any]) -> Any:
        """The value for one execution's scope."""

    def __bool__(self) -> bool:
        return True


class Const(Value):
    __slots__ = ("value",)
    is_constant = True

    def __init__(self, value: Any) -> None:
        self.value = value

    def render(self, scope: Mapping[str, Any]) -> Any:
        return self.value


class Expression(Value):
    """Exactly one `{{ expr }}`: the native value of the expression (undefined → None)."""

    __slots__ = ("fn", "source")

    def __init__(self, fn: Callable[..., Any], source: str) -> None:
        self.fn = fn
        self.source = source

    def render(self, scope: Mapping[str, Any]) -> Any:
        try:
            value = self.fn(scope)
        except TemplateError as exc:
            raise StepError(f"template {self.source!r}: {exc}", code="template_error") from exc
        except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:
            raise StepError(f"template {self.source!r}: {exc}", code="template_error") from exc
        except NameError as exc:  # Jinja folds `'inf' | float` into a name its generated code does not have
            raise _not_finite(self.source) if exc.name in _FOLDED_FLOATS else StepError(
                f"template {self.source!r}: {exc}", code="template_error") from exc
        kind = type(value)
        if kind in _PLAIN and kind is not float:
            return value
        return self._data(value)

    def _data(self, value: Any) -> Any:
        """A value that is not plain JSON data made into data, where it has an obvious form: sequences (`range`,
        a filter's generator, a set) become lists; an integer JSON cannot carry is an error of this template
        (it would fail later, where the execution is stored, as a store error)."""
        if type(value) is float:
            if math.isfinite(value):
                return value
            raise _not_finite(self.source)
        if callable(value):  # a function (a global not called) is not data
            return None
        if isinstance(value, int):
            if -(2**63) <= value < 2**64:
                return value
            raise StepError(f"template {self.source!r} gives an integer beyond 64 bits, which JSON data cannot "
                            "hold exactly; turn it into a string (`| string`)", code="template_error")
        if isinstance(value, range | tuple | set | frozenset | Iterator | KeysView | ValuesView | ItemsView):
            return list(value)
        return value


_FOLDED_FLOATS = frozenset({"inf", "nan"})


def _not_finite(source: str) -> StepError:
    return StepError(f"template {source!r} gives infinity or NaN, which JSON data cannot hold",
                     code="template_error")


class Text(Value):
    """A string mixing text and templates: renders to a string."""

    __slots__ = ("render_fn", "source")

    def __init__(self, render_fn: Callable[..., str], source: str) -> None:
        self.render_fn = render_fn
        self.source = source

    def render(self, scope: Mapping[str, Any]) -> Any:
        try:
            return self.render_fn(scope)
        except (TemplateError, TypeError, ValueError, ArithmeticError, LookupError, AttributeError,
                NameError) as exc:
            raise StepError(f"template {self.source!r}: {exc}", code="template_error") from exc


class Lookup(Value):
    """A plain path such as `input.body['items'][0]`: direct dict/list lookups, no template machinery.

    Any miss (absent key, non-container) falls back to the full sandboxed expression, so semantics match it.
    """

    __slots__ = ("fallback", "keys", "root")

    def __init__(self, root: str, keys: tuple[str | int, ...], fallback: Expression) -> None:
        self.root = root
        self.keys = keys
        self.fallback = fallback

    def render(self, scope: Mapping[str, Any]) -> Any:
        try:
            value = scope[self.root]
            for key in self.keys:
                if type(value) is dict or (type(value) is list and type(key) is int):
                    value = value[key]  # type: ignore[index]
                else:
                    return self.fallback.render(scope)
        except (KeyError, IndexError):
            return self.fallback.render(scope)
        return value


class MappingValue(Value):
    __slots__ = ("items",)

    def __init__(self, items: list[tuple[str, Value]]) -> None:
        self.items = items

    def render(self, scope: Mapping[str, Any]) -> Any:
        return {key: value.render(scope) for key, value in self.items}


class ListValue(Value):
    __slots__ = ("items",)

    def __init__(self, items: list[Value]) -> None:
        self.items = items

    def render(self, scope: Mapping[str, Any]) -> Any:
        return [value.render(scope) for value in self.items]


class TemplateCompiler:
    """Compiles config values into `Value` trees; syntax errors raise `TemplateSyntaxIssue` with a path."""

    def __init__(self, env: SandboxEnvironment | None = None) -> None:
        self.env = env or make_environment()

    def compile(self, value: Any, path: str = "") -> Value:
        """Compile any JSON-like value; constants stay constants."""
        if isinstance(value, str):
            return self._compile_string(value, path)
        if isinstance(value, Mapping):
            items = [(str(k), self.compile(v, f"{path}.{k}" if path else str(k))) for k, v in value.items()]
            if all(v.is_constant for _, v in items):
                return Const({k: v.render({}) for k, v in items})
            return MappingValue(items)
        if isinstance(value, list | tuple):
            compiled = [self.compile(v, f"{path}[{i}]") for i, v in enumerate(value)]
            if all(v.is_constant for v in compiled):
                return Const([v.render({}) for v in compiled])
            return ListValue(compiled)
        return Const(value)

    def expression(self, source: str, path: str = "") -> Value:
        """Compile a bare expression (no braces needed, braces allowed) such as an `if` condition."""
        match = _SINGLE.match(source)
        return self._expression(match.group("expr") if match else source, path)

    def _compile_string(self, text: str, path: str) -> Value:
        if "{{" not in text and "{%" not in text:
            return Const(text)
        match = _SINGLE.match(text)
        if match and "{{" not in match.group("expr"):
            return self._expression(match.group("expr"), path)
        try:
            template = self.env.from_string(text)
        except TemplateError as exc:
            raise TemplateSyntaxIssue(path, f"template syntax error: {exc}") from exc
        return Text(template.render, text)

    def _expression(self, source: str, path: str) -> Value:
        try:
            compiled = self.env.compile_expression(source.strip(), undefined_to_none=True)
        except TemplateError as exc:
            raise TemplateSyntaxIssue(path, f"template syntax error in {source.strip()!r}: {exc}") from exc
        expression = Expression(compiled, source.strip())
        return _as_lookup(self.env, source, expression) or expression


def _as_lookup(env: SandboxEnvironment, source: str, expression: Expression) -> Lookup | None:
    """A `Lookup` when the expression is only a name followed by constant attribute/item accesses."""
    tree = env.parse("{{ " + source + " }}")
    body = tree.body[0] if len(tree.body) == 1 else None
    if not isinstance(body, nodes.Output) or len(body.nodes) != 1:
        return None
    node: nodes.Node = body.nodes[0]
    keys: list[str | int] = []
    while not isinstance(node, nodes.Name):
        if isinstance(node, nodes.Getattr) and not node.attr.startswith("_"):
            keys.append(node.attr)
            node = node.node
        elif (isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const)
              and isinstance(node.arg.value, str | int) and not str(node.arg.value).startswith("_")):
            keys.append(node.arg.value)
            node = node.node
        else:
            return None
    return Lookup(node.name, tuple(reversed(keys)), expression)


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def header_values(headers: Mapping[Any, Any]) -> dict[str, str]:
    """Rendered headers as strings; a header whose template gave null (an absent optional value) is left out
    instead of being sent as the text 'None'. A name that is not an HTTP token, or a value with a line break
    or another control character (an injected header, say), fails the step (`invalid_header`)."""
    out = {}
    for key, value in headers.items():
        if value is None:
            continue
        name, text = str(key), str(value)
        if not _HEADER_NAME.fullmatch(name):
            raise _invalid_header(f"header name {name[:100]!r} is not a valid HTTP header name")
        if _HEADER_VALUE_BAD.search(text):
            raise _invalid_header(f"header {name!r}: the value holds a line break or another control character: "
                                  f"{text[:100]!r}")
        out[name] = text
    return out


def _invalid_header(message: str) -> StepError:
    error = StepError(message, code="invalid_header")
    error.retryable = False  # the same templates give the same header again
    return error


def truthy(value: Any) -> bool:
    """Template truth: like Python's, but the strings 'false', 'no', 'off', '0' and '' are false."""
    if isinstance(value, str):
        return value.strip().lower() not in {"", "false", "no", "off", "0", "none", "null"}
    return bool(value)
