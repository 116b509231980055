"""The management API: FastAPI routes under `/api` on the management server, bearer-token auth, SSE events.

`workflow_engine.api.app.mount_api` wires it into a management server; the routes call `engine.control.Control`.
"""
