#!/usr/bin/env bash
# Vendors the pinned @babel/standalone bundle that transpiles JS/TS plugins (run by `make install`).
# Usage: vendor-babel.sh VERSION INTEGRITY DEST — fails unless the package matches INTEGRITY.
set -euo pipefail
version="$1"; integrity="$2"; dest="$3"
command -v npm >/dev/null || { echo "npm is needed once to vendor @babel/standalone@$version" >&2; exit 1; }
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "@babel/standalone@$version" >/dev/null)
tarball="$(ls "$work"/*.tgz)"
actual="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
if [[ "$actual" != "$integrity" ]]; then
  echo "integrity mismatch for @babel/standalone@$version: got $actual" >&2; exit 1
fi
mkdir -p "$(dirname "$dest")"
tar -xzf "$tarball" -C "$work" package/babel.min.js package/LICENSE
mv "$work/package/LICENSE" "$(dirname "$dest")/LICENSE.babel"
mv "$work/package/babel.min.js" "$dest"
touch "$dest"  # the tarball dates files 1985; make compares mtimes
echo "vendored @babel/standalone@$version -> $dest"
