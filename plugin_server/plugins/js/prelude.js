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

  // node-fetch's error for a request that got no answer.
  class FetchError extends Error {
    constructor(message, type) {
      super(message);
      this.name = "FetchError";
      this.type = type || "system";
    }
  }
  function hostError(data) {
    const Kind = { RetryError, IllegalOperationError, TimeoutError, TypeError, RangeError, FetchError }[data.name] || Error;
    const error = new Kind(data.message);
    if (Kind === Error && data.name) error.name = data.name;
    if (data.props) Object.assign(error, data.props);
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

  // ---- Node's built-ins: library bundles (vendor/node-*.js, built from node/*.js) evaluated
  // before this prelude register factories in __nodeLibraries; each runs on first use. The host
  // loads only the bundles a plugin's code refers to (plus Buffer, which meta itself uses).
  const libraries = G.__nodeLibraries || {};
  const Buffer = libraries.buffer().Buffer;
  const modules = {};
  function nodeModule(name) {
    if (!(name in modules)) {
      if (typeof libraries[name] !== "function") throw new Error("Node module '" + name + "' is not loaded in this isolate");
      modules[name] = libraries[name]({ Buffer, seed: () => Buffer.from(spec.seed, "base64") });
    }
    return modules[name];
  }
  function lazyGlobal(name, load) {
    Object.defineProperty(G, name, {
      configurable: true,
      enumerable: false,
      get() {
        const value = load();
        Object.defineProperty(G, name, { value, writable: true, configurable: true, enumerable: false });
        return value;
      },
      set(value) {
        Object.defineProperty(G, name, { value, writable: true, configurable: true, enumerable: false });
      },
    });
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
  function isSearchParams(body) {
    return "url" in libraries && body instanceof nodeModule("url").URLSearchParams;
  }
  function requestBody(body) {
    if (body === undefined || body === null) return null;
    if (body instanceof ArrayBuffer || ArrayBuffer.isView(body)) return Buffer.from(body.buffer || body, body.byteOffset, body.byteLength).toString("base64");
    return Buffer.from(String(body), "utf8").toString("base64");
  }
  function fetch(input, init) {
    const options = init || {};
    let url = String(input);
    if (input && typeof input === "object") url = typeof input.href === "string" ? input.href : input.url ? String(input.url) : url;
    const headers = [];
    new Headers(options.headers).forEach((v, k) => headers.push([k, v]));
    if (isSearchParams(options.body) && !headers.some(([k]) => k === "content-type")) {
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
  fetch.FetchError = FetchError;
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

  // ---- pg (node-postgres): Client and Pool whose connections and queries the host makes with
  // asyncpg (plugin_server/services/plugin_postgres.py). Promise and callback forms.
  function withCallback(promise, callback) {
    if (typeof callback !== "function") return promise;
    promise.then(
      (value) => callback(null, value),
      (error) => callback(error),
    );
    return undefined;
  }
  function pgOptions(config) {
    const options = typeof config === "string" ? { connectionString: config } : Object.assign({}, config || {});
    const out = {};
    for (const key of ["connectionString", "host", "port", "user", "password", "database", "connectionTimeoutMillis", "query_timeout", "statement_timeout", "max"]) {
      if (options[key] !== undefined && options[key] !== null) out[key] = options[key];
    }
    if (options.ssl) out.ssl = typeof options.ssl === "object" ? { rejectUnauthorized: options.ssl.rejectUnauthorized !== false } : true;
    return out;
  }
  function pgParameter(value) {
    if (value === undefined || value === null) return null;
    if (value instanceof Date) return value.toISOString();
    if (value instanceof Uint8Array) return { $bytes: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString("base64") };
    if (Array.isArray(value)) return value.map(pgParameter);
    if (typeof value === "object") return typeof value.toPostgres === "function" ? value.toPostgres() : JSON.stringify(value);
    return value;
  }
  const PG_DATES = new Set([1082, 1114, 1184]);
  function pgValue(value, typeId) {
    if (value === null) return null;
    if (value && typeof value === "object" && typeof value.$bytes === "string") return Buffer.from(value.$bytes, "base64");
    if (PG_DATES.has(typeId) && typeof value === "string") return new Date(typeId === 1114 && !/[Zz+]/.test(value.slice(10)) ? value + "Z" : value);
    return value;
  }
  function pgQueryArgs(textOrConfig, values, callback) {
    if (typeof values === "function") {
      callback = values;
      values = undefined;
    }
    const config = typeof textOrConfig === "object" && textOrConfig !== null ? textOrConfig : { text: textOrConfig };
    return { text: String(config.text), values: (values || config.values || []).map(pgParameter), rowMode: config.rowMode, callback };
  }
  function pgResult(data, rowMode) {
    const fields = data.fields;
    const rows = data.rows.map((row) => {
      const values = row.map((v, i) => pgValue(v, fields[i].dataTypeID));
      if (rowMode === "array") return values;
      const out = {};
      fields.forEach((f, i) => (out[f.name] = values[i]));
      return out;
    });
    return { command: data.command, rowCount: data.rowCount, rows, fields, oid: null };
  }
  function pgQuery(handlePromise, args) {
    const promise = handlePromise.then((handle) =>
      hostCall("pg.query", [handle, args.text, args.values]).then((data) => pgResult(data, args.rowMode)),
    );
    return withCallback(promise, args.callback);
  }
  class PgClient {
    constructor(config) {
      this._options = pgOptions(config);
      this._handle = null;
      this._ended = false;
    }
    connect(callback) {
      if (this._handle !== null) return withCallback(NativePromise.reject(new Error("Client has already been connected. You cannot reuse a client.")), callback);
      this._handle = hostCall("pg.connect", [this._options, "client"]);
      return withCallback(this._handle.then(() => undefined), callback);
    }
    query(textOrConfig, values, callback) {
      const args = pgQueryArgs(textOrConfig, values, callback);
      if (this._ended || this._handle === null) {
        const error = new Error(this._ended ? "Client was closed and is not queryable" : "Client has not been connected");
        return withCallback(NativePromise.reject(error), args.callback);
      }
      return pgQuery(this._handle, args);
    }
    end(callback) {
      const handle = this._handle;
      this._ended = true;
      const promise = handle === null ? NativePromise.resolve() : handle.then((h) => hostCall("pg.end", [h]), () => undefined).then(() => undefined);
      return withCallback(promise, callback);
    }
    on() {
      return this;
    }
  }
  class PgPool {
    constructor(config) {
      this._options = pgOptions(config);
      this._handle = null;
      this._ended = false;
    }
    _pool() {
      if (this._handle === null) this._handle = hostCall("pg.connect", [this._options, "pool"]);
      // A failed connect is not kept: the next query tries again, as node-postgres' pool does.
      return this._handle.catch((error) => {
        this._handle = null;
        throw error;
      });
    }
    query(textOrConfig, values, callback) {
      const args = pgQueryArgs(textOrConfig, values, callback);
      if (this._ended) return withCallback(NativePromise.reject(new Error("Cannot use a pool after calling end on the pool")), args.callback);
      return pgQuery(this._pool(), args);
    }
    connect(callback) {
      // A client checked out of the pool; its queries go through the pool's connections.
      const pool = this;
      const client = { query: (t, v, cb) => pool.query(t, v, cb), release: () => undefined, on: () => client };
      return withCallback(this._pool().then(() => client), callback);
    }
    end(callback) {
      const handle = this._handle;
      this._ended = true;
      this._handle = null;
      const promise = handle === null ? NativePromise.resolve() : handle.then((h) => hostCall("pg.end", [h]), () => undefined).then(() => undefined);
      return withCallback(promise, callback);
    }
    on() {
      return this;
    }
  }
  const pg = { Client: PgClient, Pool: PgPool, types: { setTypeParser: () => undefined, getTypeParser: () => (v) => v } };
  pg.default = pg;

  // ---- aws-sdk (v2): S3.putObject and S3.upload, done by the host with aiobotocore
  // (plugin_server/services/plugin_s3.py). An AWS.Request runs once, on .promise(), .send() or
  // when given a callback.
  const awsGlobalConfig = {};
  class AwsRequest {
    constructor(run) {
      this._run = run;
      this._promise = null;
    }
    promise() {
      if (this._promise === null) this._promise = this._run();
      return this._promise;
    }
    send(callback) {
      withCallback(this.promise(), callback || (() => undefined));
    }
    on() {
      return this;
    }
  }
  function awsBody(body) {
    if (body === undefined || body === null) return null;
    if (typeof body === "string") return body;
    if (body instanceof ArrayBuffer || ArrayBuffer.isView(body)) {
      return { $bytes: Buffer.from(body.buffer || body, body.byteOffset || 0, body.byteLength).toString("base64") };
    }
    throw new TypeError("S3 Body must be a string, a Buffer or a typed array in this plugin server");
  }
  function awsOptions(options) {
    const merged = Object.assign({}, awsGlobalConfig, options || {});
    const out = {};
    for (const key of ["accessKeyId", "secretAccessKey", "sessionToken", "region", "s3ForcePathStyle", "sslEnabled"]) {
      if (merged[key] !== undefined) out[key] = merged[key];
    }
    if (merged.credentials) {
      const c = merged.credentials;
      out.credentials = { accessKeyId: c.accessKeyId, secretAccessKey: c.secretAccessKey, sessionToken: c.sessionToken };
    }
    if (merged.endpoint) out.endpoint = typeof merged.endpoint === "string" ? merged.endpoint : merged.endpoint.href;
    return out;
  }
  class S3 {
    constructor(options) {
      this.config = awsOptions(options);
    }
    _request(op, params, callback) {
      const body = awsBody(params && params.Body);
      const request = new AwsRequest(() => hostCall("s3." + op, [this.config, Object.assign({}, params, { Body: body })]));
      if (typeof callback === "function") request.send(callback);
      return request;
    }
    putObject(params, callback) {
      return this._request("putObject", params, callback);
    }
    upload(params, options, callback) {
      if (typeof options === "function") callback = options;
      return this._request("upload", params, callback);
    }
  }
  class AwsEndpoint {
    constructor(endpoint) {
      this.href = String(endpoint);
    }
  }
  class AwsCredentials {
    constructor(accessKeyId, secretAccessKey, sessionToken) {
      const o = typeof accessKeyId === "object" && accessKeyId !== null ? accessKeyId : { accessKeyId, secretAccessKey, sessionToken };
      this.accessKeyId = o.accessKeyId;
      this.secretAccessKey = o.secretAccessKey;
      this.sessionToken = o.sessionToken;
    }
  }
  const AWS = {
    S3,
    Endpoint: AwsEndpoint,
    Credentials: AwsCredentials,
    config: {
      update(options) {
        Object.assign(awsGlobalConfig, options || {});
      },
    },
  };
  AWS.default = AWS;

  // ---- @google-cloud/bigquery: BigQuery -> dataset -> table (getMetadata, setMetadata, create,
  // insert), done by the host with BigQuery's REST API (plugin_server/services/plugin_bigquery.py).
  // Answers are arrays, as the Node library's are: [metadata, apiResponse].
  // Google's callbacks get the answer's parts as arguments: (err, metadata, apiResponse).
  function withSpreadCallback(promise, callback) {
    if (typeof callback !== "function") return promise;
    promise.then(
      (values) => callback(null, ...values),
      (error) => callback(error),
    );
    return undefined;
  }
  class BigQueryTimestamp {
    constructor(value) {
      this.value = value instanceof Date ? value.toISOString() : String(value);
    }
    toJSON() {
      return this.value;
    }
  }
  class PartialFailureError extends Error {
    constructor(errors, response) {
      super("A failure occurred during this request.");
      this.name = "PartialFailureError";
      this.errors = errors;
      this.response = response;
    }
  }
  function insertRows(rows, options) {
    const list = Array.isArray(rows) ? rows : [rows];
    if (options.raw) return list;
    return list.map((row) => (options.createInsertId === false ? { json: row } : { insertId: randomInsertId(), json: row }));
  }
  function randomInsertId() {
    const bytes = nodeModule("crypto").randomBytes(16).toString("hex");
    return bytes.slice(0, 8) + "-" + bytes.slice(8, 12) + "-" + bytes.slice(12, 16) + "-" + bytes.slice(16, 20) + "-" + bytes.slice(20);
  }
  class BigQueryTable {
    constructor(dataset, id) {
      this.dataset = dataset;
      this.bigQuery = dataset.bigQuery;
      this.id = id;
    }
    _args() {
      return [this.dataset.id, this.id];
    }
    getMetadata(callback) {
      const promise = hostCall("bigquery.getTable", [this.bigQuery._options].concat(this._args())).then((m) => [m, m]);
      return withSpreadCallback(promise, callback);
    }
    setMetadata(metadata, callback) {
      const promise = hostCall("bigquery.patchTable", [this.bigQuery._options].concat(this._args(), [metadata])).then((m) => [m, m]);
      return withSpreadCallback(promise, callback);
    }
    get(callback) {
      return withSpreadCallback(this.getMetadata().then(([m]) => [this, m]), callback);
    }
    exists(callback) {
      const promise = this.getMetadata().then(
        () => [true],
        (error) => {
          if (error.code === 404) return [false];
          throw error;
        },
      );
      return withSpreadCallback(promise, callback);
    }
    create(options, callback) {
      if (typeof options === "function") {
        callback = options;
        options = {};
      }
      return this.dataset.createTable(this.id, options || {}, callback);
    }
    insert(rows, options, callback) {
      if (typeof options === "function") {
        callback = options;
        options = {};
      }
      options = options || {};
      const body = { rows: insertRows(rows, options) };
      if (options.skipInvalidRows !== undefined) body.skipInvalidRows = options.skipInvalidRows;
      if (options.ignoreUnknownValues !== undefined) body.ignoreUnknownValues = options.ignoreUnknownValues;
      if (options.templateSuffix !== undefined) body.templateSuffix = options.templateSuffix;
      const promise = hostCall("bigquery.insertAll", [this.bigQuery._options].concat(this._args(), [JSON.parse(JSON.stringify(body))])).then((response) => {
        const failures = (response && response.insertErrors) || [];
        if (failures.length > 0) {
          throw new PartialFailureError(
            failures.map((f) => ({ row: body.rows[f.index] && body.rows[f.index].json, errors: f.errors })),
            response,
          );
        }
        return [response];
      });
      return withSpreadCallback(promise, callback);
    }
  }
  class BigQueryDataset {
    constructor(bigQuery, id) {
      this.bigQuery = bigQuery;
      this.id = id;
    }
    table(id) {
      return new BigQueryTable(this, id);
    }
    createTable(id, options, callback) {
      if (typeof options === "function") {
        callback = options;
        options = {};
      }
      const metadata = Object.assign({}, options || {});
      if (metadata.schema && Array.isArray(metadata.schema)) metadata.schema = { fields: metadata.schema };
      const table = this.table(id);
      const promise = hostCall("bigquery.createTable", [this.bigQuery._options, this.id, id, metadata]).then((m) => [table, m]);
      return withSpreadCallback(promise, callback);
    }
  }
  class BigQuery {
    constructor(options) {
      const o = options || {};
      this._options = { projectId: o.projectId, credentials: o.credentials, apiEndpoint: o.apiEndpoint };
      this.projectId = o.projectId || (o.credentials && o.credentials.project_id);
    }
    dataset(id) {
      return new BigQueryDataset(this, id);
    }
    timestamp(value) {
      return new BigQueryTimestamp(value);
    }
    static timestamp(value) {
      return new BigQueryTimestamp(value);
    }
  }
  const bigquery = { BigQuery, Dataset: BigQueryDataset, Table: BigQueryTable, BigQueryTimestamp, PartialFailureError };

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
    pg,
    "aws-sdk": AWS,
    "@google-cloud/bigquery": bigquery,
    jsonwebtoken: { decode: jwtDecode, sign: jwtUnsupported("sign"), verify: jwtUnsupported("verify") },
  };
  for (const name of ["url", "crypto", "zlib"]) {
    if (name in libraries) Object.defineProperty(hostImports, name, { enumerable: true, get: () => nodeModule(name) });
  }

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
  G.Buffer = Buffer;
  if ("url" in libraries) {
    for (const name of ["URL", "URLSearchParams", "TextEncoder", "TextDecoder"]) lazyGlobal(name, () => nodeModule("url")[name]);
  }
  G.google = { cloud: {} };
  G.global = G;
  G.GLOBAL = G;
  G.root = G;
  G.module = { exports: {} };
  G.exports = {};
  for (const name of ["setTimeout", "clearTimeout", "__timer_manager"]) G[name] = undefined;
})();
