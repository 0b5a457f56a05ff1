#!/usr/bin/env bash
# Vendors the npm packages JS/TS plugins rely on into DEST (run by `make install`): the
# @babel/standalone transpiler and bundles of Node's built-ins (Buffer, url, zlib, crypto) made
# with esbuild from plugin_server/plugins/js/node/. Versions are pinned in
# scripts/js-vendor/package.json and every package's integrity hash in package-lock.json, which
# `npm ci` checks. Nothing is fetched at run time.
# Usage: vendor-js.sh DEST
set -euo pipefail
mkdir -p "$(dirname "$1")"; dest="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
here="$(cd "$(dirname "$0")" && pwd)"
source_dir="$(cd "$here/../plugin_server/plugins/js/node" && pwd)"
command -v npm >/dev/null || { echo "npm is needed once to vendor the JS plugin runtime's packages" >&2; exit 1; }
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
cp "$here/js-vendor/package.json" "$here/js-vendor/package-lock.json" "$here/js-vendor/build.mjs" "$work/"
# Install scripts stay off: esbuild finds its platform binary package without them.
(cd "$work" && npm ci --silent --ignore-scripts --no-audit --no-fund --engine-strict=false)
mkdir -p "$dest.tmp"
cp "$work/node_modules/@babel/standalone/babel.min.js" "$dest.tmp/babel.min.js"
(cd "$work" && node build.mjs "$source_dir" "$dest.tmp" "$work/node_modules")
for package in @babel/standalone buffer pako whatwg-url tr46 webidl-conversions punycode @exodus/bytes @noble/hashes base64-js ieee754; do
  cp "$work/node_modules/$package/LICENSE"* "$dest.tmp/LICENSE.${package//\//-}" 2>/dev/null || true
done
rm -rf "$dest"; mv "$dest.tmp" "$dest"
touch "$dest/.vendored"
echo "vendored $(cd "$dest" && ls *.js | tr '\n' ' ')-> $dest"
