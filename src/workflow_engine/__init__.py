"""workflow-engine: one YAML file becomes a running, observable workflow service."""

__version__ = "0.1.0"
