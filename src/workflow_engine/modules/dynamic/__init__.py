"""Dynamic components: Python code checked, loaded into fresh namespaces and hot-reloaded into live workflows."""
