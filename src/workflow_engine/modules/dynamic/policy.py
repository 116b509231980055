"""What component code may import and name: the allowlist and the denied names and attributes.

This is a guard against mistakes (a component that opens files or sockets by accident), not a sandbox: Python
offers too many ways around any such list. `isolation: process` adds resource limits, not a security boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Standard-library modules without process, file-system or network access (and pydantic, for schemas).
DEFAULT_ALLOWED: frozenset[str] = frozenset({
    "__future__", "abc", "array", "base64", "binascii", "bisect", "calendar", "cmath", "collections",
    "contextlib", "copy", "dataclasses", "datetime", "decimal", "difflib", "enum", "fractions", "functools",
    "hashlib", "heapq", "hmac", "html", "itertools", "json", "math", "numbers", "pprint", "pydantic", "random",
    "re", "secrets", "statistics", "string", "struct", "textwrap", "time", "typing", "unicodedata", "zlib",
})

# Builtins that reach outside the component (files, code execution, the interpreter) or that have a better
# replacement in the contract (`print` -> `ctx.log`).
DENIED_NAMES: dict[str, str] = {
    "open": "file access is not allowed",
    "exec": "executing code is not allowed",
    "eval": "evaluating code is not allowed",
    "compile": "compiling code is not allowed",
    "__import__": "imports go through `import` statements, checked against the allowlist",
    "breakpoint": "the debugger is not available",
    "input": "components have no standard input",
    "print": "use ctx.log",
    "globals": "namespace access is not allowed",
    "locals": "namespace access is not allowed",
    "vars": "namespace access is not allowed",
    "help": "not available", "exit": "not available", "quit": "not available",
    "__builtins__": "namespace access is not allowed",
    "__loader__": "namespace access is not allowed",
    "__spec__": "namespace access is not allowed",
}

# Dunder attributes a component may use; every other dunder (`__class__`, `__subclasses__`, `__globals__`...)
# is the usual first step out of any restriction.
ALLOWED_DUNDERS = frozenset({"__init__", "__name__", "__doc__", "__post_init__", "__qualname__"})
# Frame and generator internals lead to other modules' globals.
DENIED_ATTRIBUTES = frozenset({
    "gi_frame", "gi_code", "cr_frame", "cr_code", "ag_frame", "ag_code", "f_globals", "f_builtins", "f_locals",
    "f_back", "f_code", "tb_frame", "tb_next", "co_code", "func_globals", "mro",
})


def attribute_problem(name: str, *, own: bool = False) -> str | None:
    """Why attribute `name` may not be used (`own`: read on `self`/`cls`, where private names are fine)."""
    if name.startswith("__") and name.endswith("__"):
        return None if name in ALLOWED_DUNDERS else f"attribute '{name}' is not allowed"
    if name in DENIED_ATTRIBUTES:
        return f"attribute '{name}' is not allowed"
    if name.startswith("_") and not own:
        return f"private attribute '{name}' of another object is not allowed"
    return None


@dataclass(frozen=True)
class ImportPolicy:
    """The modules a component may import: a module is allowed when it or its top-level package is listed."""

    allowed: frozenset[str] = field(default=DEFAULT_ALLOWED)
    # Modules the config added (`allow_imports`): trusted as a whole, private names included (`os._exit`).
    trusted: frozenset[str] = frozenset()

    @classmethod
    def with_extra(cls, extra: list[str] | tuple[str, ...]) -> ImportPolicy:
        """The default allowlist plus `extra` modules, which are trusted."""
        return cls(DEFAULT_ALLOWED | frozenset(extra), frozenset(extra))

    def trusts(self, module: str) -> bool:
        """Whether `module` was added by the config, so its private names may be used."""
        return module in self.trusted or module.partition(".")[0] in self.trusted

    def permits(self, module: str) -> bool:
        """Whether `module` (dotted) may be imported."""
        return module in self.allowed or module.partition(".")[0] in self.allowed
