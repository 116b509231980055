"""Loading one component version: syntax, the import and name guard, a fresh namespace, the contract.

Every version gets its own `types.ModuleType` that is never put in `sys.modules`: two versions never share
state, and dropping the last reference to a version frees its code. Errors name the file, the line and why.
"""

from __future__ import annotations

import ast
import builtins
import types
from collections.abc import Callable
from typing import Any

from workflow_engine.errors import ComponentLoadError
from workflow_engine.modules.dynamic.contract import Contract
from workflow_engine.modules.dynamic.policy import DENIED_NAMES, ImportPolicy, attribute_problem


def check_source(source: str, filename: str, policy: ImportPolicy) -> types.CodeType:
    """Compile `source` and check its imports, names and attributes; ComponentLoadError at the first problem."""
    try:
        tree = ast.parse(source, filename)
        code = compile(tree, filename, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise ComponentLoadError(filename, exc.lineno or 1, f"syntax error: {exc.msg}") from None
    except ValueError as exc:  # null bytes
        raise ComponentLoadError(filename, 1, f"invalid source: {exc}") from None
    bound = _bound_names(tree)
    trusted = _trusted_aliases(tree, policy)
    for node in ast.walk(tree):
        problem = _node_problem(node, policy, bound, trusted)
        if problem is not None:
            raise ComponentLoadError(filename, getattr(node, "lineno", 1), problem)
    return code


def _bound_names(tree: ast.AST) -> set[str]:
    """Names the source binds itself (parameters, assignments, definitions): `input` as a parameter is fine."""
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
    return bound


def _trusted_aliases(tree: ast.AST, policy: ImportPolicy) -> set[str]:
    """Names bound to a module the config added to the allowlist (`import os` with `allow_imports: [os]`)."""
    return {alias.asname or alias.name.partition(".")[0]
            for node in ast.walk(tree) if isinstance(node, ast.Import)
            for alias in node.names if policy.trusts(alias.name)}


def _node_problem(node: ast.AST, policy: ImportPolicy, bound: set[str], trusted: set[str]) -> str | None:
    if isinstance(node, ast.Import):
        for alias in node.names:
            if not policy.permits(alias.name):
                return f"import of '{alias.name}' is not allowed (not on the import allowlist)"
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            return "relative imports are not allowed"
        module = node.module or ""
        if not policy.permits(module):
            return f"import of '{module}' is not allowed (not on the import allowlist)"
        for alias in node.names:
            if alias.name.startswith("_") and alias.name != "annotations" and not policy.trusts(module):
                return f"import of private name '{alias.name}' from '{module}' is not allowed"
    elif isinstance(node, ast.Name) and node.id in DENIED_NAMES and node.id not in bound:
        return f"name '{node.id}' is not allowed: {DENIED_NAMES[node.id]}"
    elif isinstance(node, ast.Attribute):
        own = isinstance(node.value, ast.Name) and (node.value.id in ("self", "cls") or node.value.id in trusted)
        return attribute_problem(node.attr, own=own)
    return None


def restricted_builtins(policy: ImportPolicy) -> dict[str, Any]:
    """The builtins a component runs with: denied names removed, `__import__` and attribute access guarded."""
    real_import = builtins.__import__

    def guarded_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (),
                       level: int = 0) -> Any:
        if level:
            raise ImportError("relative imports are not allowed")
        if not policy.permits(name):
            raise ImportError(f"import of '{name}' is not allowed (not on the import allowlist)")
        for item in fromlist or ():
            if isinstance(item, str) and item.startswith("_") and item != "annotations" and not policy.trusts(name):
                raise ImportError(f"import of private name '{item}' from '{name}' is not allowed")
        return real_import(name, globals, locals, fromlist, level)

    table = {k: v for k, v in vars(builtins).items() if k not in DENIED_NAMES}
    table["__import__"] = guarded_import
    table["getattr"] = _guard_attribute(getattr, policy)
    table["setattr"] = _guard_attribute(setattr, policy)
    table["delattr"] = _guard_attribute(delattr, policy)
    return table


def _guard_attribute(fn: Callable[..., Any], policy: ImportPolicy) -> Callable[..., Any]:
    def guarded(obj: Any, name: str, *rest: Any) -> Any:
        own = isinstance(obj, types.ModuleType) and policy.trusts(obj.__name__)
        problem = attribute_problem(name, own=own) if isinstance(name, str) else None
        if problem is not None:
            raise AttributeError(problem)
        return fn(obj, name, *rest)

    guarded.__name__ = fn.__name__
    return guarded


def load_namespace(code: types.CodeType, module_name: str, filename: str, policy: ImportPolicy) -> types.ModuleType:
    """Run checked `code` in a fresh module namespace (never registered in `sys.modules`)."""
    module = types.ModuleType(module_name)
    module.__dict__["__builtins__"] = restricted_builtins(policy)
    module.__dict__["__file__"] = filename
    try:
        exec(code, module.__dict__)  # the component's own code, checked by check_source
    except Exception as exc:  # the component's top-level code failed: a load error at its line
        raise ComponentLoadError(filename, error_line(exc, filename), f"{type(exc).__name__}: {exc}") from None
    return module


def error_line(exc: BaseException, filename: str) -> int:
    """The last line of `filename` in the traceback of `exc` (1 when it was not raised there)."""
    line = 1
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def load_component(source: str, filename: str, module_name: str, policy: ImportPolicy) -> Contract:
    """Check and load `source`; the contract it implements, or ComponentLoadError."""
    code = check_source(source, filename, policy)
    namespace = load_namespace(code, module_name, filename, policy)
    return Contract.from_namespace(namespace, filename)
