"""Connections to Postgres and Redis, and the schema migrations."""
