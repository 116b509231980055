"""Module, step and trigger types as spec values; see `specs` and `builtins`."""
