// Node's `zlib` module (gzip, gunzip, deflate, inflate, their raw forms and unzip; Sync and
// callback forms) on pako. Results are Buffers; failures are Errors with zlib's message and code.
(globalThis.__nodeLibraries ||= {}).zlib = ({ Buffer }) => {
  const pako = require("pako");
  const CODES = { 2: "Z_NEED_DICT", 1: "Z_STREAM_END", "-2": "Z_STREAM_ERROR", "-3": "Z_DATA_ERROR", "-5": "Z_BUF_ERROR" };

  function bytes(input) {
    if (typeof input === "string") return Buffer.from(input, "utf8");
    if (input instanceof ArrayBuffer) return new Uint8Array(input);
    if (ArrayBuffer.isView(input)) return new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
    throw new TypeError('The "buffer" argument must be of type string or an instance of Buffer, TypedArray, DataView, or ArrayBuffer.');
  }
  function options(opts) {
    const out = {};
    if (opts) for (const key of ["level", "windowBits", "memLevel", "strategy"]) if (opts[key] !== undefined) out[key] = opts[key];
    return out;
  }
  function run(operation, input, opts) {
    const data = bytes(input);
    let result;
    try {
      result = operation(data, options(opts));
    } catch (failure) {
      throw zlibError(failure);
    }
    // pako answers undefined for an input that ends early; zlib says so.
    if (result === undefined) throw zlibError("unexpected end of file", -5);
    return Buffer.from(result.buffer, result.byteOffset, result.byteLength);
  }
  function zlibError(failure, errno = -3) {
    const message = typeof failure === "string" ? failure : failure && failure.message ? failure.message : String(failure);
    const error = new Error(message);
    error.errno = errno;
    error.code = CODES[errno] || "Z_DATA_ERROR";
    return error;
  }
  function inflateAny(data, opts) {
    // unzip: gzip or zlib, told apart by the gzip magic bytes.
    return data[0] === 0x1f && data[1] === 0x8b ? pako.ungzip(data, opts) : pako.inflate(data, opts);
  }
  const operations = {
    gzip: pako.gzip,
    gunzip: pako.ungzip,
    deflate: pako.deflate,
    inflate: pako.inflate,
    deflateRaw: pako.deflateRaw,
    inflateRaw: pako.inflateRaw,
    unzip: inflateAny,
  };
  const zlib = { constants: { Z_NO_COMPRESSION: 0, Z_BEST_SPEED: 1, Z_BEST_COMPRESSION: 9, Z_DEFAULT_COMPRESSION: -1 } };
  for (const [name, operation] of Object.entries(operations)) {
    zlib[name + "Sync"] = (input, opts) => run(operation, input, opts);
    zlib[name] = (input, opts, callback) => {
      if (typeof opts === "function") {
        callback = opts;
        opts = undefined;
      }
      if (typeof callback !== "function") throw new TypeError('The "callback" argument must be of type function');
      // Node answers on a later turn, never synchronously.
      Promise.resolve().then(() => {
        let result;
        try {
          result = run(operation, input, opts);
        } catch (error) {
          callback(error);
          return;
        }
        callback(null, result);
      });
    };
  }
  return zlib;
};
