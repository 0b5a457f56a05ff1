// Bundles the Node built-ins that plugin isolates get (plugin_server/plugins/js/node/*.js) with
// the packages `npm ci` installed from the pinned lock file. Run by scripts/vendor-js.sh.
// Usage: node build.mjs SOURCE_DIR OUT_DIR NODE_MODULES
import { build } from "esbuild";
import path from "node:path";

const [source, out, nodeModules] = process.argv.slice(2);
const bundles = {
  buffer: {},
  url: { inject: [path.join(source, "text-encoding.js")] },
  zlib: {},
  crypto: {},
};
for (const [name, extra] of Object.entries(bundles)) {
  await build({
    entryPoints: [path.join(source, name + ".js")],
    outfile: path.join(out, "node-" + name + ".js"),
    bundle: true,
    format: "iife",
    platform: "neutral",
    mainFields: ["main", "module"],
    target: "es2022",
    minify: true,
    legalComments: "eof",
    nodePaths: [nodeModules],
    logLevel: "warning",
    ...extra,
  });
}
