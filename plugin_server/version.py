"""The version this service reports (the Node plugin server release it replaces)."""

VERSION = "1.10.5"
NAME = "@posthog/plugin-server"
