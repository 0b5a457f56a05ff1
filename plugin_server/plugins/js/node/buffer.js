// Node's `Buffer` inside plugin isolates: the `buffer` npm package, plus the `base64url` encoding
// Node has had since 15.7 (the package predates it; its base64 decoder already reads - and _).
// Bundled into vendor/node-buffer.js by scripts/vendor-js.sh; evaluated in every plugin isolate
// before prelude.js. Library factories run on first use, so an unused library costs no heap.
(globalThis.__nodeLibraries ||= {}).buffer = () => {
  const buffer = require("buffer");
  const { Buffer } = buffer;
  const isBase64url = (encoding) => typeof encoding === "string" && encoding.toLowerCase() === "base64url";
  const { from, byteLength, isEncoding } = Buffer;
  const { toString } = Buffer.prototype;
  Buffer.from = function (value, encodingOrOffset, length) {
    return from.call(this, value, isBase64url(encodingOrOffset) ? "base64" : encodingOrOffset, length);
  };
  Buffer.byteLength = (value, encoding) => byteLength(value, isBase64url(encoding) ? "base64" : encoding);
  Buffer.isEncoding = (encoding) => isBase64url(encoding) || isEncoding(encoding);
  Buffer.prototype.toString = function (encoding, start, end) {
    if (!isBase64url(encoding)) return toString.call(this, encoding, start, end);
    return toString.call(this, "base64", start, end).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  };
  return buffer;
};
