// Node's `crypto` module, the parts plugins use: createHash and createHmac (md5, sha1, sha224,
// sha256, sha384, sha512 from @noble/hashes), randomBytes, randomInt, randomUUID,
// getRandomValues and timingSafeEqual.
// Randomness: HMAC-SHA256 in counter mode, keyed by 32 bytes from the host's os.urandom given to
// each isolate at start (a bare V8 isolate has no entropy source of its own).
(globalThis.__nodeLibraries ||= {}).crypto = ({ Buffer, seed }) => {
  const { sha224, sha256, sha384, sha512 } = require("@noble/hashes/sha2.js");
  const { md5, sha1 } = require("@noble/hashes/legacy.js");
  const { hmac } = require("@noble/hashes/hmac.js");

  const ALGORITHMS = { md5, sha1, sha224, sha256, sha384, sha512 };
  function algorithm(name) {
    const key = String(name).toLowerCase().replace(/^rsa-/, "").replace(/^sha-/, "sha");
    return ALGORITHMS[key];
  }
  function toBytes(data, encoding) {
    if (typeof data === "string") return Buffer.from(data, encoding || "utf8");
    if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    if (data instanceof ArrayBuffer) return new Uint8Array(data);
    throw new TypeError('The "data" argument must be of type string or an instance of Buffer, TypedArray, or DataView.');
  }
  function finalized() {
    const error = new Error("Digest already called");
    error.code = "ERR_CRYPTO_HASH_FINALIZED";
    return error;
  }

  class Digest {
    constructor(state) {
      this._state = state;
      this._done = false;
    }
    update(data, inputEncoding) {
      if (this._done) throw finalized();
      this._state.update(toBytes(data, inputEncoding));
      return this;
    }
    digest(outputEncoding) {
      if (this._done) throw finalized();
      this._done = true;
      const raw = this._state.digest();
      const out = Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
      return outputEncoding === undefined || outputEncoding === "buffer" ? out : out.toString(outputEncoding);
    }
  }
  class Hash extends Digest {
    copy() {
      if (this._done) throw finalized();
      return new Hash(this._state.clone());
    }
  }
  class Hmac extends Digest {}

  function createHash(name) {
    const hash = algorithm(name);
    if (!hash) throw new Error("Digest method not supported");
    return new Hash(hash.create());
  }
  function createHmac(name, key) {
    const hash = algorithm(name);
    if (!hash) throw new Error("Invalid digest: " + name);
    const keyBytes = key && typeof key === "object" && typeof key.export === "function" ? key.export() : toBytes(key);
    return new Hmac(hmac.create(hash, keyBytes));
  }

  let key = null;
  let counter = 0;
  function fill(target) {
    if (key === null) key = seed();
    const block = new Uint8Array(8);
    for (let at = 0; at < target.length; at += 32) {
      new DataView(block.buffer).setUint32(0, Math.floor(counter / 2 ** 32));
      new DataView(block.buffer).setUint32(4, counter >>> 0);
      counter++;
      const chunk = hmac(sha256, key, block);
      target.set(chunk.subarray(0, Math.min(32, target.length - at)), at);
    }
    return target;
  }
  function randomBytes(size, callback) {
    if (!Number.isInteger(size) || size < 0) throw new RangeError('The value of "size" is out of range.');
    const out = fill(Buffer.alloc(size));
    if (typeof callback === "function") {
      Promise.resolve().then(() => callback(null, out));
      return undefined;
    }
    return out;
  }
  function randomInt(min, max) {
    if (max === undefined) {
      max = min;
      min = 0;
    }
    const range = max - min;
    if (!Number.isSafeInteger(min) || !Number.isSafeInteger(max) || range <= 0 || range > 2 ** 48) {
      throw new RangeError('The value of "max" is out of range.');
    }
    // Rejection sampling over 48 bits keeps the result unbiased.
    const limit = 2 ** 48 - (2 ** 48 % range);
    for (;;) {
      const b = fill(new Uint8Array(6));
      const value = b.reduce((n, byte) => n * 256 + byte, 0);
      if (value < limit) return min + (value % range);
    }
  }
  function randomUUID() {
    const b = fill(Buffer.alloc(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = b.toString("hex");
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
  }
  function getRandomValues(array) {
    fill(new Uint8Array(array.buffer, array.byteOffset, array.byteLength));
    return array;
  }
  function timingSafeEqual(a, b) {
    const x = toBytes(a);
    const y = toBytes(b);
    if (x.length !== y.length) throw new RangeError("Input buffers must have the same byte length");
    let diff = 0;
    for (let i = 0; i < x.length; i++) diff |= x[i] ^ y[i];
    return diff === 0;
  }
  return {
    createHash,
    createHmac,
    getHashes: () => Object.keys(ALGORITHMS),
    randomBytes,
    randomInt,
    randomUUID,
    getRandomValues,
    timingSafeEqual,
    Hash,
    Hmac,
  };
};
