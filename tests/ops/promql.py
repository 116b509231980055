"""A small PromQL tokenizer: which metrics, label matchers and grouping labels an expression uses.

promtool checks the syntax (tests/ops/test_promql.py); this module only needs to tell apart what the grammar
tells apart: metric selectors (with their `{label op "value"}` matchers), function and aggregation names,
grouping label lists (`by`, `without`, `on`, `ignoring`, `group_left`, `group_right`), keywords, numbers,
durations and strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
AGGREGATORS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile",
}
# Grafana's interval variables, replaced by a value of the same type before parsing.
GRAFANA_INTERVALS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<number>0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?(?:\d+(?:ms|[smhdwy]))*
               |(?:Inf|NaN)(?![A-Za-z0-9_:]))
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|==|!=|>=|<=|[-+*/%^=<>,(){}@])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str


@dataclass
class Selector:
    metric: str
    matchers: list[Matcher] = field(default_factory=list)
    token: int = 0  # index of the metric name among the expression's tokens


@dataclass
class Usage:
    """What one expression refers to."""

    selectors: list[Selector] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)


def expand(expr: str) -> str:
    """`expr` with Grafana's interval variables replaced by durations."""
    for variable, value in GRAFANA_INTERVALS.items():
        expr = expr.replace(variable, value)
    return expr


def tokenize(expr: str) -> list[Token]:
    """The tokens of expand(expr) (whitespace and comments dropped); ValueError on a character it cannot read."""
    expr = expand(expr)
    tokens: list[Token] = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise ValueError(f"cannot read PromQL at {pos}: {expr[pos:pos + 20]!r}")
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append(Token(kind, match.group(), match.start(), match.end()))
        pos = match.end()
    return tokens


def _unquote(text: str) -> str:
    if text[0] == "`":
        return text[1:-1]
    return bytes(text[1:-1], "utf-8").decode("unicode_escape")


def _label_list(tokens: list[Token], i: int) -> tuple[list[str], int]:
    """Labels of a `( a, b )` list starting at tokens[i]; returns them and the index after `)`."""
    if i >= len(tokens) or tokens[i].text != "(":
        return [], i  # group_left without a list
    labels: list[str] = []
    i += 1
    while tokens[i].text != ")":
        if tokens[i].kind == "ident":
            labels.append(tokens[i].text)
        i += 1
    return labels, i + 1


def _matchers(tokens: list[Token], i: int) -> tuple[list[Matcher], int]:
    """The matchers of a `{...}` block starting at tokens[i]; returns them and the index after `}`."""
    matchers: list[Matcher] = []
    i += 1
    while tokens[i].text != "}":
        if tokens[i].text == ",":
            i += 1
            continue
        label, op, value = tokens[i], tokens[i + 1], tokens[i + 2]
        if label.kind != "ident" or op.text not in {"=", "!=", "=~", "!~"} or value.kind != "string":
            raise ValueError(f"bad label matcher near {label.text!r}")
        matchers.append(Matcher(label.text, op.text, _unquote(value.text)))
        i += 3
    return matchers, i + 1


def usage(expr: str) -> Usage:
    """The metrics (with matchers), grouping labels and functions `expr` uses."""
    tokens = tokenize(expr)
    found = Usage()
    i = 0
    while i < len(tokens):
        token = tokens[i]
        nxt = tokens[i + 1].text if i + 1 < len(tokens) else ""
        if token.kind == "ident" and token.text in GROUPING:
            labels, i = _label_list(tokens, i + 1)
            found.grouping.update(labels)
            continue
        if token.kind == "ident" and token.text in KEYWORDS:
            i += 1
            continue
        if token.kind == "ident" and (nxt == "(" or (token.text in AGGREGATORS and nxt in {"by", "without"})):
            found.functions.add(token.text)
            i += 1
            continue
        if token.kind == "ident":
            selector = Selector(token.text, token=i)
            i += 1
            if i < len(tokens) and tokens[i].text == "{":
                selector.matchers, i = _matchers(tokens, i)
            found.selectors.append(selector)
            continue
        if token.text == "{":
            raise ValueError("selectors without a metric name are not used here")
        i += 1
    return found


def with_matcher(expr: str, label: str, value: str) -> str:
    """expand(expr) with `label="value"` added to every selector (how a runbook query is scoped to one job)."""
    tokens = tokenize(expr)
    text = expand(expr)
    matcher = f'{label}="{value}"'
    inserts: list[tuple[int, str]] = []
    for selector in usage(expr).selectors:
        name = tokens[selector.token]
        following = tokens[selector.token + 1] if selector.token + 1 < len(tokens) else None
        if following is not None and following.text == "{":
            closing = tokens[selector.token + 2].text == "}"
            inserts.append((following.end, matcher if closing else matcher + ", "))
        else:
            inserts.append((name.end, "{" + matcher + "}"))
    for pos, insert in sorted(inserts, reverse=True):
        text = text[:pos] + insert + text[pos:]
    return text
