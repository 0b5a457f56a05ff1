// The runtime inside each plugin's V8 isolate: the globals and `meta` of spec plugins.md §4, the
// export lookup of §3.1, and the message protocol with the host.
//
// Host -> VM: the host calls __pluginDispatch with `this` = a JSON array of messages; the call
// returns a JSON array of the messages the VM produced meanwhile. When the VM produces messages
// later (an awaited host call resolved, a timer fired) it rings the host's bell, and the host
// calls __pluginDispatch("[]") to collect them.
(function () {
  "use strict";
  const G = globalThis;
  const NativePromise = Promise;
  const outbox = [];
  const pending = new Map();
  let nextId = 1;
  let bell = null;
  let rung = false;
  let spec = { config: {}, attachments: {}, timeout: 30, testing: false };
  let api = null; // what __pluginSetup found in the plugin's exports

  function post(message) {
    outbox.push(message);
    if (!rung && bell !== null) {
      rung = true;
      bell();
    }
  }

  function hostCall(op, args) {
    const id = nextId++;
    return new NativePromise((resolve, reject) => {
      pending.set(id, { resolve, reject });
      post({ t: "rpc", id, op, args });
    });
  }

  function hostNotify(op, args) {
    post({ t: "note", op, args });
  }

  // ---- errors
  class RetryError extends Error {
    constructor(message) {
      super(message);
      this.name = "RetryError";
    }
  }
  class IllegalOperationError extends Error {
    constructor(message) {
      super(message);
      this.name = "IllegalOperationError";
    }
  }
  class TimeoutError extends Error {
    constructor(message, caller) {
      super(message);
      this.name = "TimeoutError";
      this.caller = caller;
    }
  }

  function errorData(error) {
    if (error instanceof Error || (error && typeof error === "object" && "message" in error)) {
      const data = { name: String(error.name || "Error"), message: String(error.message), stack: String(error.stack || "") };
      if (error.caller !== undefined) data.caller = String(error.caller);
      return data;
    }
    return { name: "Error", message: String(error), stack: "" };
  }

  function hostError(data) {
    const Kind = { RetryError, IllegalOperationError, TimeoutError, TypeError, RangeError }[data.name] || Error;
    const error = new Kind(data.message);
    if (Kind === Error && data.name) error.name = data.name;
    return error;
  }

  // ---- timers (host-internal: plugins get no setTimeout, spec §4.9.5)
  function startTimer(ms, callback) {
    const handle = { live: true };
    const cell = new Int32Array(new SharedArrayBuffer(4));
    const fire = () => {
      if (handle.live) {
        handle.live = false;
        callback();
      }
    };
    // A zero wait answers synchronously ({async: false}); 1 ms keeps timers macrotasks.
    Atomics.waitAsync(cell, 0, 0, Math.max(1, ms)).value.then(fire);
    return handle;
  }
  function stopTimer(handle) {
    if (handle) handle.live = false;
  }

  function secondsText(seconds) {
    return seconds + (seconds === 1 ? " second" : " seconds");
  }

  function asyncGuard(promise, label) {
    if (!promise || typeof promise.then !== "function") return promise;
    return new NativePromise((resolve, reject) => {
      const timer = startTimer(spec.timeout * 1000, () =>
        reject(new TimeoutError("Script execution timed out after promise waited for " + secondsText(spec.timeout), label)),
      );
      NativePromise.resolve(promise).then(
        (value) => {
          stopTimer(timer);
          resolve(value);
        },
        (error) => {
          stopTimer(timer);
          reject(error);
        },
      );
    });
  }

  // ---- unhandled rejections: V8 here has no rejection tracker, so `Promise` is a subclass that
  // notices rejections nobody handled by the next macrotask, and reports them to the host (§2.11).
  class TrackedPromise extends NativePromise {
    constructor(executor) {
      super(executor);
      NativePromise.prototype.then.call(this, undefined, (reason) => {
        startTimer(0, () => {
          if (!this.__handled) hostNotify("unhandledRejection", [errorData(reason)]);
        });
      });
    }
    static get [Symbol.species]() {
      return NativePromise;
    }
    then(onFulfilled, onRejected) {
      Object.defineProperty(this, "__handled", { value: true, configurable: true });
      return super.then(onFulfilled, onRejected);
    }
  }

  // ---- bytes: UTF-8, base64, hex, and a Node-like Buffer
  function utf8Encode(text) {
    const out = [];
    for (let i = 0; i < text.length; i++) {
      let c = text.charCodeAt(i);
      if (c >= 0xd800 && c < 0xdc00 && i + 1 < text.length) {
        const d = text.charCodeAt(i + 1);
        if (d >= 0xdc00 && d < 0xe000) {
          c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
          i++;
        } else c = 0xfffd;
      } else if (c >= 0xd800 && c < 0xe000) c = 0xfffd;
      if (c < 0x80) out.push(c);
      else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
      else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
      else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    }
    return out;
  }
  function utf8Decode(bytes) {
    let out = "";
    for (let i = 0; i < bytes.length; ) {
      const b = bytes[i];
      let c = 0xfffd;
      let n = 1;
      if (b < 0x80) c = b;
      else if (b >= 0xc2 && b < 0xe0 && i + 1 < bytes.length) {
        c = ((b & 31) << 6) | (bytes[i + 1] & 63);
        n = 2;
      } else if (b >= 0xe0 && b < 0xf0 && i + 2 < bytes.length) {
        c = ((b & 15) << 12) | ((bytes[i + 1] & 63) << 6) | (bytes[i + 2] & 63);
        n = 3;
      } else if (b >= 0xf0 && b < 0xf5 && i + 3 < bytes.length) {
        c = ((b & 7) << 18) | ((bytes[i + 1] & 63) << 12) | ((bytes[i + 2] & 63) << 6) | (bytes[i + 3] & 63);
        n = 4;
      }
      out += String.fromCodePoint(c);
      i += n;
    }
    return out;
  }
  const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  function base64Encode(bytes) {
    let out = "";
    for (let i = 0; i < bytes.length; i += 3) {
      const n = (bytes[i] << 16) | ((bytes[i + 1] || 0) << 8) | (bytes[i + 2] || 0);
      out += B64[(n >> 18) & 63] + B64[(n >> 12) & 63];
      out += i + 1 < bytes.length ? B64[(n >> 6) & 63] : "=";
      out += i + 2 < bytes.length ? B64[n & 63] : "=";
    }
    return out;
  }
  function base64Decode(text) {
    const clean = String(text).replace(/-/g, "+").replace(/_/g, "/").replace(/[^A-Za-z0-9+/]/g, "");
    const out = [];
    let bits = 0;
    let value = 0;
    for (const ch of clean) {
      value = (value << 6) | B64.indexOf(ch);
      bits += 6;
      if (bits >= 8) {
        bits -= 8;
        out.push((value >> bits) & 255);
      }
    }
    return out;
  }

  class Buffer extends Uint8Array {
    static from(value, encodingOrOffset, length) {
      if (typeof value === "string") {
        const encoding = String(encodingOrOffset || "utf8").toLowerCase();
        if (encoding === "base64" || encoding === "base64url") return new Buffer(base64Decode(value));
        if (encoding === "hex") {
          const bytes = [];
          for (let i = 0; i + 1 < value.length; i += 2) {
            const b = parseInt(value.slice(i, i + 2), 16);
            if (Number.isNaN(b)) break;
            bytes.push(b);
          }
          return new Buffer(bytes);
        }
        if (encoding === "latin1" || encoding === "binary" || encoding === "ascii") {
          return new Buffer(Array.from(value, (ch) => ch.charCodeAt(0) & 255));
        }
        return new Buffer(utf8Encode(value));
      }
      if (value instanceof ArrayBuffer) return new Buffer(value, encodingOrOffset || 0, length);
      if (value && value.type === "Buffer" && Array.isArray(value.data)) return new Buffer(value.data);
      return new Buffer(value);
    }
    static alloc(size, fill) {
      const b = new Buffer(size);
      if (fill !== undefined) b.fill(typeof fill === "number" ? fill : Buffer.from(String(fill))[0] || 0);
      return b;
    }
    static isBuffer(value) {
      return value instanceof Buffer;
    }
    static byteLength(value, encoding) {
      return typeof value === "string" ? Buffer.from(value, encoding).length : value.byteLength;
    }
    static concat(list, total) {
      const length = total !== undefined ? total : list.reduce((n, b) => n + b.length, 0);
      const out = new Buffer(length);
      let at = 0;
      for (const b of list) {
        if (at >= length) break;
        out.set(b.subarray(0, length - at), at);
        at += b.length;
      }
      return out;
    }
    toString(encoding, start, end) {
      const bytes = start !== undefined || end !== undefined ? this.subarray(start || 0, end) : this;
      const enc = String(encoding || "utf8").toLowerCase();
      if (enc === "base64") return base64Encode(bytes);
      if (enc === "base64url") return base64Encode(bytes).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
      if (enc === "hex") return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
      if (enc === "latin1" || enc === "binary" || enc === "ascii") return String.fromCharCode(...bytes);
      return utf8Decode(bytes);
    }
    toJSON() {
      return { type: "Buffer", data: Array.from(this) };
    }
    equals(other) {
      return this.length === other.length && this.every((b, i) => b === other[i]);
    }
  }

  // ---- URL and URLSearchParams (the parts plugins use)
  function formEncode(text) {
    return encodeURIComponent(text).replace(/%20/g, "+").replace(/[!'()~]/g, (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase());
  }
  function formDecode(text) {
    try {
      return decodeURIComponent(text.replace(/\+/g, " "));
    } catch (e) {
      return text;
    }
  }
  class URLSearchParams {
    constructor(init) {
      this._pairs = [];
      this._onChange = null;
      if (init == null) return;
      if (typeof init === "string") this._parse(init);
      else if (typeof init[Symbol.iterator] === "function") for (const [k, v] of init) this._pairs.push([String(k), String(v)]);
      else for (const k of Object.keys(init)) this._pairs.push([k, String(init[k])]);
    }
    _parse(text) {
      this._pairs = [];
      for (const part of text.replace(/^\?/, "").split("&")) {
        if (!part) continue;
        const at = part.indexOf("=");
        this._pairs.push(at < 0 ? [formDecode(part), ""] : [formDecode(part.slice(0, at)), formDecode(part.slice(at + 1))]);
      }
    }
    _changed() {
      if (this._onChange) this._onChange(this.toString());
    }
    append(k, v) {
      this._pairs.push([String(k), String(v)]);
      this._changed();
    }
    delete(k) {
      this._pairs = this._pairs.filter(([key]) => key !== String(k));
      this._changed();
    }
    get(k) {
      const pair = this._pairs.find(([key]) => key === String(k));
      return pair ? pair[1] : null;
    }
    getAll(k) {
      return this._pairs.filter(([key]) => key === String(k)).map(([, v]) => v);
    }
    has(k) {
      return this._pairs.some(([key]) => key === String(k));
    }
    set(k, v) {
      const key = String(k);
      const at = this._pairs.findIndex(([x]) => x === key);
      if (at < 0) this._pairs.push([key, String(v)]);
      else {
        this._pairs[at] = [key, String(v)];
        this._pairs = this._pairs.filter(([x], i) => x !== key || i === at);
      }
      this._changed();
    }
    sort() {
      this._pairs.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
      this._changed();
    }
    forEach(fn, self) {
      for (const [k, v] of this._pairs) fn.call(self, v, k, this);
    }
    keys() {
      return this._pairs.map(([k]) => k)[Symbol.iterator]();
    }
    values() {
      return this._pairs.map(([, v]) => v)[Symbol.iterator]();
    }
    entries() {
      return this._pairs.map((p) => p.slice())[Symbol.iterator]();
    }
    [Symbol.iterator]() {
      return this.entries();
    }
    get size() {
      return this._pairs.length;
    }
    toString() {
      return this._pairs.map(([k, v]) => formEncode(k) + "=" + formEncode(v)).join("&");
    }
  }

  const DEFAULT_PORTS = { "http:": "80", "https:": "443", "ws:": "80", "wss:": "443", "ftp:": "21" };
  const URL_RE = /^([a-zA-Z][a-zA-Z0-9+.-]*:)(?:\/\/(?:([^:@/?#]*)(?::([^@/?#]*))?@)?(\[[^\]]*\]|[^:/?#]*)(?::(\d*))?)?([^?#]*)(\?[^#]*)?(#.*)?$/;
  function normalisePath(path) {
    const out = [];
    for (const seg of path.split("/").slice(1)) {
      if (seg === "..") out.pop();
      else if (seg !== ".") out.push(seg);
    }
    const last = path.split("/").pop();
    return "/" + out.join("/") + (last === "." || last === ".." ? "/" : "");
  }
  class URL {
    constructor(input, base) {
      let text = String(input).trim();
      if (!URL_RE.test(text) || (base !== undefined && !/^[a-zA-Z][a-zA-Z0-9+.-]*:/.test(text))) {
        if (base === undefined) throw new TypeError("Invalid URL: " + text);
        const b = base instanceof URL ? base : new URL(base);
        if (text.startsWith("//")) text = b.protocol + text;
        else if (text.startsWith("/")) text = b.origin + text;
        else if (text.startsWith("?")) text = b.origin + b.pathname + text;
        else if (text.startsWith("#")) text = b.origin + b.pathname + b.search + text;
        else text = b.origin + b.pathname.replace(/[^/]*$/, "") + text;
      }
      const m = URL_RE.exec(text);
      if (!m) throw new TypeError("Invalid URL: " + text);
      this.protocol = m[1].toLowerCase();
      this.username = m[2] || "";
      this.password = m[3] || "";
      this.hostname = (m[4] || "").toLowerCase();
      const port = m[5] || "";
      this.port = DEFAULT_PORTS[this.protocol] === port ? "" : port;
      const special = this.protocol in DEFAULT_PORTS || this.protocol === "file:";
      if (special && m[4] === undefined) throw new TypeError("Invalid URL: " + text);
      this.pathname = special ? normalisePath(m[6] || "/") : m[6] || "";
      this._search = m[7] && m[7] !== "?" ? m[7] : "";
      this.hash = m[8] && m[8] !== "#" ? m[8] : "";
      this.searchParams = new URLSearchParams(this._search);
      this.searchParams._onChange = (query) => {
        this._search = query ? "?" + query : "";
      };
    }
    get search() {
      return this._search;
    }
    set search(value) {
      const text = String(value).replace(/^\?/, "");
      this._search = text ? "?" + text : "";
      this.searchParams._parse(text);
    }
    get host() {
      return this.hostname + (this.port ? ":" + this.port : "");
    }
    get origin() {
      return this.protocol + "//" + this.host;
    }
    get href() {
      const auth = this.username ? this.username + (this.password ? ":" + this.password : "") + "@" : "";
      const slashes = this.hostname || this.protocol === "file:" ? "//" : "";
      return this.protocol + slashes + auth + this.host + this.pathname + this.search + this.hash;
    }
    toString() {
      return this.href;
    }
    toJSON() {
      return this.href;
    }
  }

  // ---- console (§4.9.1)
  function logText(args) {
    return args
      .map((arg) => {
        const text = String(arg);
        return text === "[object Object]" || Array.isArray(arg) ? JSON.stringify(arg) : text;
      })
      .join(" ");
  }
  const consoleObject = {};
  for (const level of ["debug", "log", "info", "warn", "error"]) {
    consoleObject[level] = (...args) => hostCall("console", [level.toUpperCase(), logText(args)]);
  }

  // ---- fetch and responses (§4.9.4)
  class Headers {
    constructor(init) {
      this._map = new Map();
      if (init instanceof Headers) init.forEach((v, k) => this.append(k, v));
      else if (Array.isArray(init)) for (const [k, v] of init) this.append(k, v);
      else if (init) for (const k of Object.keys(init)) this.append(k, init[k]);
    }
    append(k, v) {
      const key = String(k).toLowerCase();
      this._map.set(key, this._map.has(key) ? this._map.get(key) + ", " + v : String(v));
    }
    set(k, v) {
      this._map.set(String(k).toLowerCase(), String(v));
    }
    get(k) {
      const v = this._map.get(String(k).toLowerCase());
      return v === undefined ? null : v;
    }
    has(k) {
      return this._map.has(String(k).toLowerCase());
    }
    delete(k) {
      this._map.delete(String(k).toLowerCase());
    }
    forEach(fn) {
      for (const [k, v] of this._map) fn(v, k, this);
    }
    entries() {
      return this._map.entries();
    }
    keys() {
      return this._map.keys();
    }
    values() {
      return this._map.values();
    }
    raw() {
      const out = {};
      for (const [k, v] of this._map) out[k] = [v];
      return out;
    }
    [Symbol.iterator]() {
      return this._map.entries();
    }
  }
  class Response {
    constructor(data) {
      this.status = data.status;
      this.statusText = data.statusText || "";
      this.ok = data.status >= 200 && data.status < 300;
      this.url = data.url || "";
      this.headers = new Headers(data.headers || []);
      this._body = Buffer.from(data.body || "", "base64");
      this.bodyUsed = false;
    }
    async buffer() {
      this.bodyUsed = true;
      return this._body;
    }
    async text() {
      this.bodyUsed = true;
      return this._body.toString("utf8");
    }
    async json() {
      return JSON.parse(await this.text());
    }
    async arrayBuffer() {
      this.bodyUsed = true;
      return this._body.buffer.slice(this._body.byteOffset, this._body.byteOffset + this._body.length);
    }
  }
  function requestBody(body) {
    if (body === undefined || body === null) return null;
    if (body instanceof Uint8Array) return base64Encode(body);
    if (body instanceof URLSearchParams) return base64Encode(utf8Encode(body.toString()));
    return base64Encode(utf8Encode(String(body)));
  }
  function fetch(input, init) {
    const options = init || {};
    const url = input instanceof URL ? input.href : typeof input === "object" && input && input.url ? input.url : String(input);
    const headers = [];
    new Headers(options.headers).forEach((v, k) => headers.push([k, v]));
    if (options.body instanceof URLSearchParams && !headers.some(([k]) => k === "content-type")) {
      headers.push(["content-type", "application/x-www-form-urlencoded;charset=UTF-8"]);
    }
    const request = {
      method: String(options.method || "GET").toUpperCase(),
      headers,
      body: requestBody(options.body),
      redirect: options.redirect || "follow",
      timeout: options.timeout || 0,
    };
    return hostCall("fetch", [url, request]).then((data) => new Response(data));
  }
  fetch.Headers = Headers;
  fetch.Response = Response;
  fetch.default = fetch;

  // ---- posthog (§4.9.2, §4.9.3)
  const posthog = {
    capture: (event, properties) => hostCall("posthog.capture", [event, properties === undefined ? {} : properties]),
    api: {},
  };
  for (const method of ["get", "post", "put", "delete"]) {
    posthog.api[method] = (path, options) =>
      hostCall("posthog.api", [method.toUpperCase(), path, options || {}]).then((data) => new Response(data));
  }

  // ---- createBuffer of @posthog/plugin-contrib (§3.8 item 4)
  function createBuffer(options) {
    const buffer = {
      _buffer: [],
      _timeout: null,
      _lastFlushTriggered: Date.now(),
      points: 0,
      get buffer() {
        return this._buffer;
      },
      add(item, points = 1) {
        if (this.points + points > options.limit && this._buffer.length > 0) this.flush();
        this._buffer.push(item);
        this.points += points;
        if (this.points > options.limit) this.flush();
        else if (this._timeout === null) {
          this._timeout = startTimer((options.timeoutSeconds || 10) * 1000, () => this.flush());
        }
      },
      async flush() {
        stopTimer(this._timeout);
        this._timeout = null;
        this._lastFlushTriggered = Date.now();
        if (this._buffer.length === 0) return;
        const items = this._buffer;
        const points = this.points;
        this._buffer = [];
        this.points = 0;
        await options.onFlush(items, points);
      },
    };
    return buffer;
  }

  // ---- crypto subset (randomness only; hashing needs a host call, see notes)
  function randomBytes(size) {
    const b = new Buffer(size);
    for (let i = 0; i < size; i++) b[i] = Math.floor(Math.random() * 256);
    return b;
  }
  function randomUUID() {
    const b = randomBytes(16);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = b.toString("hex");
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
  }

  function jwtDecode(token, options) {
    const parts = String(token).split(".");
    if (parts.length !== 3) return null;
    try {
      const header = JSON.parse(Buffer.from(parts[0], "base64url").toString());
      const payload = JSON.parse(Buffer.from(parts[1], "base64url").toString());
      return options && options.complete ? { header, payload, signature: parts[2] } : payload;
    } catch (e) {
      return null;
    }
  }
  function jwtUnsupported(name) {
    return () => {
      throw new Error("jsonwebtoken." + name + " is not available in this plugin server");
    };
  }

  const MetricsOperation = { Sum: "sum", Max: "max", Min: "min" };
  const hostImports = {
    "@posthog/plugin-scaffold": { RetryError, MetricsOperation },
    "@posthog/plugin-contrib": { createBuffer },
    "node-fetch": fetch,
    url: { URL, URLSearchParams },
    crypto: { randomBytes, randomUUID },
    jsonwebtoken: { decode: jwtDecode, sign: jwtUnsupported("sign"), verify: jwtUnsupported("verify") },
  };

  // ---- meta (§4)
  function mustBeNumber(value, message) {
    if (typeof value !== "number") throw new Error(message);
  }
  function makeCache() {
    return {
      set: async (key, value, ttlSeconds, options) => {
        const stored = options && options.jsonSerialize === false ? value : JSON.stringify(value);
        await hostCall("cache.set", [String(key), stored, ttlSeconds || 0]);
      },
      get: async (key, defaultValue, options) => {
        const raw = await hostCall("cache.get", [String(key)]);
        // A missing key gives the default (spec §8 item 1: the original returned null).
        if (raw === null || raw === undefined) return defaultValue === undefined ? null : defaultValue;
        if (options && options.jsonSerialize === false) return raw;
        if (raw === "") return null;
        try {
          return JSON.parse(raw);
        } catch (e) {
          return null;
        }
      },
      incr: (key) => hostCall("cache.incr", [String(key)]),
      expire: (key, ttlSeconds) => hostCall("cache.expire", [String(key), ttlSeconds]),
      lpush: async (key, elements) => {
        if (Array.isArray(elements)) {
          if (elements.length > 1000) throw new IllegalOperationError("Too many elements in array for cache.lpush. Maximum: 1000");
          elements = elements.map(String);
        } else if (typeof elements === "string") elements = [elements];
        else throw new Error("cache.lpush expects a string value or an array of strings");
        return hostCall("cache.lpush", [String(key), elements]);
      },
      lrange: async (key, start, end) => {
        if (typeof start !== "number" || typeof end !== "number") throw new Error("cache.lrange expects a number for the start and end indexes");
        return hostCall("cache.lrange", [String(key), start, end]);
      },
      llen: (key) => hostCall("cache.llen", [String(key)]),
      lrem: async (key, count, element) => {
        mustBeNumber(count, 'cache.lrem expects a number for the "count" argument');
        return hostCall("cache.lrem", [String(key), count, String(element)]);
      },
      lpop: async (key, count) => {
        mustBeNumber(count, 'cache.lpop expects a number for the "count" argument');
        return hostCall("cache.lpop", [String(key), count]);
      },
    };
  }
  function makeStorage() {
    return {
      get: async (key, defaultValue) => {
        const row = await hostCall("storage.get", [String(key)]);
        return row === null ? defaultValue : JSON.parse(row);
      },
      set: async (key, value) => {
        if (value === undefined) await hostCall("storage.del", [String(key)]);
        else await hostCall("storage.set", [String(key), JSON.stringify(value)]);
      },
      del: async (key) => {
        await hostCall("storage.del", [String(key)]);
      },
    };
  }
  function makeUtils() {
    return {
      cursor: {
        init: async (key, initialValue = 0) => {
          const value = initialValue || 0;
          mustBeNumber(value, "The cursor's initial value must be a number!");
          await hostCall("cursor.init", [String(key), value]);
        },
        increment: async (key, incrementBy = 1) => {
          const value = incrementBy || 1; // 0 becomes 1, as in the original (spec §8 item 4)
          mustBeNumber(value, "The incrementBy value must be a number!");
          return hostCall("cursor.increment", [String(key), value]);
        },
      },
    };
  }
  const UNIT_MS = {
    milliseconds: 1,
    seconds: 1000,
    minutes: 60000,
    hours: 3600000,
    days: 86400000,
    weeks: 604800000,
    months: 30 * 604800000, // 30 weeks, as in the original (spec §4.7)
    quarters: 13 * 604800000,
    years: 365 * 86400000,
  };
  function makeJobs() {
    return new Proxy(
      {},
      {
        get: (target, name) => {
          if (typeof name !== "string") return undefined;
          return (payload) => {
            const enqueue = (timestamp) => hostCall("jobs.enqueue", [name, payload === undefined ? null : payload, timestamp]).then(() => undefined);
            return {
              runNow: () => enqueue(Date.now()),
              runIn: (duration, unit) => {
                const normalised = String(unit).endsWith("s") ? String(unit) : unit + "s";
                if (!(normalised in UNIT_MS)) return NativePromise.reject(new Error("Unknown time unit: " + normalised));
                return enqueue(Date.now() + duration * UNIT_MS[normalised]);
              },
              runAt: (date) => enqueue(date.valueOf()),
            };
          };
        },
      },
    );
  }
  const METRIC_OPERATION = { sum: "increment", max: "max", min: "min" };
  function makeMetrics(declared) {
    return new Proxy(
      {},
      {
        get: (target, name) => {
          if (typeof name !== "string" || !(name in declared)) {
            if (typeof name !== "string" || name === "then" || name === "toJSON") return undefined;
            throw new IllegalOperationError("Invalid metric name");
          }
          const kind = declared[name];
          return {
            [METRIC_OPERATION[kind]]: (value) => {
              if (typeof value !== "number") throw new IllegalOperationError("Only numbers are allowed for operations on metrics");
              hostNotify("metric", [name, kind, value]);
            },
          };
        },
        ownKeys: () => Object.keys(declared),
        getOwnPropertyDescriptor: (target, name) =>
          name in declared ? { enumerable: true, configurable: true, value: undefined } : undefined,
      },
    );
  }

  // ---- export lookup (§3.1) and calls
  const METHODS = ["setupPlugin", "teardownPlugin", "exportEvents", "onEvent", "onSnapshot", "processEvent"];
  const EVENT_METHODS = new Set(["processEvent", "onEvent", "onSnapshot"]);

  function setup() {
    const moduleExports = G.module && G.module.exports;
    const exportsObject = G.exports;
    const candidates = [];
    if (exportsObject) candidates.push(exportsObject);
    if (exportsObject && exportsObject.default && typeof exportsObject.default === "object") candidates.push(exportsObject.default);
    if (moduleExports) candidates.push(moduleExports);
    if (!candidates.some((c) => Object.keys(c).some((k) => k !== "__esModule"))) candidates.push(G);

    const methods = {};
    for (const name of METHODS.concat(["processEventBatch"])) {
      const holder = candidates.find((c) => c[name]);
      if (holder) methods[name] = holder[name];
    }
    if (!methods.processEvent && methods.processEventBatch) {
      const batch = methods.processEventBatch;
      methods.processEvent = async (event, meta) => {
        const result = await batch([event], meta);
        return result ? result[0] : undefined;
      };
    }
    delete methods.processEventBatch;

    const schedule = {};
    const jobs = {};
    const metricTypes = {};
    for (const c of candidates.slice().reverse()) {
      for (const key of Object.keys(c)) {
        if (key.startsWith("runEvery") && typeof c[key] === "function") schedule[key] = c[key];
      }
      if (c.jobs && typeof c.jobs === "object") Object.assign(jobs, c.jobs);
      if (c.metrics && typeof c.metrics === "object") {
        for (const key of Object.keys(c.metrics)) {
          if (typeof c.metrics[key] === "string") metricTypes[key] = c.metrics[key].toLowerCase();
        }
      }
    }
    const invalid = Object.values(metricTypes).filter((kind) => !(kind in METRIC_OPERATION));
    if (invalid.length > 0) {
      throw new IllegalOperationError(
        "Only 'sum', 'max', and 'min' are supported as metric types. Invalid types received: " + invalid.join(", "),
      );
    }
    const attachments = {};
    for (const key of Object.keys(spec.attachments)) {
      const a = spec.attachments[key];
      attachments[key] = { content_type: a.content_type, file_name: a.file_name, contents: Buffer.from(a.contents, "base64") };
    }
    const meta = {
      cache: makeCache(),
      config: spec.config,
      attachments,
      global: {},
      storage: makeStorage(),
      geoip: { locate: (ip) => hostCall("geoip.locate", [String(ip)]) },
      jobs: makeJobs(),
      metrics: makeMetrics(metricTypes),
      utils: makeUtils(),
    };
    api = { methods, schedule, jobs, meta };
    return {
      methods: METHODS.filter((name) => Boolean(methods[name])),
      schedule: Object.keys(schedule),
      jobs: Object.keys(jobs),
      metrics: metricTypes,
    };
  }

  function finish(id, value, error, input) {
    if (error === undefined) {
      let data;
      try {
        data = value === undefined ? null : JSON.parse(JSON.stringify(value));
      } catch (e) {
        error = e;
      }
      if (error === undefined) {
        post({ t: "result", id, ok: true, value: data === undefined ? null : data });
        return;
      }
    }
    const message = { t: "result", id, ok: false, error: errorData(error) };
    if (input !== undefined) {
      try {
        message.input = JSON.parse(JSON.stringify(input));
      } catch (e) {
        // the mutated input is only a courtesy; an unserialisable one is left out
      }
    }
    post(message);
  }

  function invoke(message) {
    const { id, kind, name } = message;
    let fn;
    let args;
    let input;
    if (kind === "method") {
      fn = api.methods[name];
      args = message.args.concat([api.meta]);
      if (EVENT_METHODS.has(name)) input = args[0];
    } else if (kind === "schedule") {
      fn = api.schedule[name];
      args = [api.meta];
    } else {
      fn = api.jobs[name];
      // A job without payload gets meta as its only argument, as in the original (spec §3.7).
      args = message.payload ? [message.payload, api.meta] : [api.meta];
    }
    if (typeof fn !== "function") {
      finish(id, undefined, new TypeError(kind + " " + JSON.stringify(name) + " is not a function"));
      return;
    }
    let result;
    try {
      result = fn(...args);
    } catch (error) {
      finish(id, undefined, error, input);
      return;
    }
    if (result && typeof result.then === "function") {
      // The method guard (spec §5.3): a JS timer, so a loop guard that fires first wins.
      if (kind === "method") result = asyncGuard(result, name);
      NativePromise.resolve(result).then(
        (value) => finish(id, value),
        (error) => finish(id, undefined, error, input),
      );
    } else finish(id, result);
  }

  function receive(message) {
    if (message.t === "reply") {
      const waiter = pending.get(message.id);
      if (!waiter) return;
      pending.delete(message.id);
      if (message.ok) waiter.resolve(message.value);
      else waiter.reject(hostError(message.error));
    } else if (message.t === "call") {
      invoke(message);
    } else if (message.t === "setup") {
      try {
        post({ t: "result", id: message.id, ok: true, value: setup() });
      } catch (error) {
        post({ t: "result", id: message.id, ok: false, error: errorData(error) });
      }
    }
  }

  function dispatch() {
    const messages = JSON.parse(this);
    for (const message of messages) receive(message);
    rung = false;
    return JSON.stringify(outbox.splice(0));
  }

  // ---- globals
  function constant(name, value) {
    Object.defineProperty(G, name, { value, writable: false, enumerable: false, configurable: false });
  }
  constant("__pluginDispatch", dispatch);
  constant("__pluginConfigure", function (bellFunction, specJson) {
    bell = bellFunction;
    spec = JSON.parse(specJson);
    if (spec.testing) G.__jestSetTimeout = (fn, ms) => startTimer(ms || 0, fn);
  });
  constant("__pluginHostImports", hostImports);
  constant("__asyncGuard", asyncGuard);
  G.Promise = TrackedPromise;
  G.console = consoleObject;
  G.fetch = fetch;
  G.posthog = posthog;
  G.RetryError = RetryError;
  G.URL = URL;
  G.Buffer = Buffer;
  G.google = { cloud: {} };
  G.global = G;
  G.GLOBAL = G;
  G.root = G;
  G.module = { exports: {} };
  G.exports = {};
  for (const name of ["setTimeout", "clearTimeout", "__timer_manager"]) G[name] = undefined;
})();
