"""Plugins: loading, the sandbox pool, and running plugin methods."""
