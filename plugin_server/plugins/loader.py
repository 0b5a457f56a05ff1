"""Finds a plugin's entry source: a local directory, an archive, or the source column
(spec/plugins.md §1.4), and decides which runtime runs it (§7.1)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from plugin_server.plugins.archive import read_archive_file
from plugin_server.plugins.registry import Plugin, plugin_digest

PYTHON_SOURCE_MARKER = "# posthog-plugin: python"


class SourceNotFound(Exception):
    """The plugin's code cannot be had; recorded as a plain-string error, never retried."""


@dataclass(frozen=True, slots=True)
class PluginSource:
    text: str
    main: str
    runtime: str  # "python" or "js"
    plugin_dir: str | None = None  # local plugins only: the directory the plugin may read


def runtime_for(main: str, text: str) -> str:
    if main.endswith(".py"):
        return "python"
    return "python" if text.lstrip("\ufeff").startswith(PYTHON_SOURCE_MARKER) else "js"


def load_plugin_source(plugin: Plugin, base_dir: str) -> PluginSource:
    digest = plugin_digest(plugin)
    if plugin.url and plugin.url.startswith("file:"):
        directory = os.path.realpath(os.path.join(base_dir, plugin.url[len("file:") :]))
        manifest_path = os.path.join(directory, "plugin.json")
        manifest: dict[str, object] = {}
        if os.path.exists(manifest_path):
            try:
                with open(manifest_path, encoding="utf-8") as f:
                    manifest = json.load(f)
            except (ValueError, OSError):
                raise SourceNotFound(
                    f'Could not load posthog config at "{manifest_path}" for {digest}'
                ) from None
        main = manifest.get("main") if isinstance(manifest, dict) else None
        if not isinstance(main, str) or not main:
            if not os.path.exists(os.path.join(directory, "index.js")):
                raise SourceNotFound(f'No "main" config key or "index.js" file found for {digest}')
            main = "index.js"
        with open(os.path.join(directory, main), encoding="utf-8") as f:
            text = f.read()
        return PluginSource(text, main, runtime_for(main, text), directory)
    if plugin.archive is not None:
        manifest_text = read_archive_file(plugin.archive, "plugin.json")
        try:
            manifest = json.loads(manifest_text) if manifest_text else {}
        except ValueError:
            raise SourceNotFound(f"Can not load plugin.json for {digest}") from None
        main = manifest.get("main") if isinstance(manifest, dict) else None
        main = main if isinstance(main, str) and main else "index.js"
        text_or_none = read_archive_file(plugin.archive, main)
        if text_or_none is None:
            raise SourceNotFound(f"Could not load index.js for {digest}!")
        return PluginSource(text_or_none, main, runtime_for(main, text_or_none))
    if plugin.plugin_type == "source" and plugin.source:
        return PluginSource(plugin.source, "index.ts", runtime_for("index.ts", plugin.source))
    raise SourceNotFound(f"Tried using undownloaded remote {digest}, which is not supported!")
