"""The Node built-ins bundled for plugin isolates, and which of them a plugin's code needs.

`make install` (scripts/vendor-js.sh) bundles plugin_server/plugins/js/node/*.js with pinned npm
packages into vendor/node-*.js. Each bundle only registers a factory, so an isolate pays for a
library's heap when the plugin first uses it; parsing is paid for every bundle evaluated, hence
only the bundles the transpiled code refers to are evaluated (Buffer always: meta uses it).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

VENDOR = Path(__file__).parent / "vendor"

# A bundle is needed when the code names one of its globals or imports its module. Matching the
# transpiled text may load a bundle needlessly (a word in a comment), never miss a real use
# short of a computed global name.
_NEEDED_BY: dict[str, re.Pattern[str]] = {
    "url": re.compile(
        r"\b(?:URL|URLSearchParams|TextEncoder|TextDecoder)\b|__pluginHostImports\[[\"']url[\"']\]"
    ),
    "zlib": re.compile(r"__pluginHostImports\[[\"']zlib[\"']\]"),
    # the BigQuery facade makes insert ids with crypto.randomBytes
    "crypto": re.compile(r"__pluginHostImports\[[\"'](?:crypto|@google-cloud/bigquery)[\"']\]"),
}


def libraries_for(code: str) -> tuple[str, ...]:
    """The bundles to evaluate before the prelude for this transpiled plugin code."""
    return ("buffer", *(name for name, pattern in _NEEDED_BY.items() if pattern.search(code)))


@functools.cache
def library_source(name: str) -> str:
    path = VENDOR / f"node-{name}.js"
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run `make install` to vendor the JS plugin runtime")
    return path.read_text()
