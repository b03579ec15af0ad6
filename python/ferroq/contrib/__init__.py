"""Integrations with other frameworks (each imports its framework: import only what you use)."""
