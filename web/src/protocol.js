// The federation protocol over HTTP (docs/protocol.md), as fedge.federation.client speaks
// it: enroll, check in (long poll), download the model (ETag), upload the update
// (Idempotency-Key). Network failures and 429/5xx answers are retried with exponential
// backoff and jitter; other refusals are thrown as HttpError with the server's sentence.

const RETRYABLE = new Set([429, 500, 502, 503, 504, 507]);

export class HttpError extends Error {
  constructor(status, message, what) {
    super(`${what}: ${status} ${message}`);
    this.name = "HttpError";
    this.status = status;
    this.reason = message;
  }
}

// 401: the server does not know this device or its token.
export class Unauthorized extends HttpError {
  constructor(message, what) {
    super(401, message, what);
    this.name = "Unauthorized";
  }
}

async function errorText(response) {
  const text = await response.text();
  try {
    return String(JSON.parse(text).error ?? text);
  } catch {
    return text.slice(0, 200) || response.statusText;
  }
}

const sleep = (seconds) => new Promise((resolve) => setTimeout(resolve, seconds * 1000));

export class Server {
  // base: the server's URL ("" for the page's own origin). onRetry({what, reason, delay,
  // attempt}) is told of every retry.
  constructor({
    base = "",
    backoff = 0.5,
    maxBackoff = 30,
    timeout = 60,
    onRetry = () => {},
  } = {}) {
    Object.assign(this, { base: base.replace(/\/$/, ""), backoff, maxBackoff, timeout, onRetry });
  }

  // Send until an answer that is not a network or server failure; throw HttpError for a
  // 4xx other than 304 and 409 (which the caller handles).
  async request(method, path, { headers = {}, body, timeout = this.timeout } = {}) {
    const what = `${method} ${path.split("?")[0]}`;
    for (let attempt = 0; ; attempt++) {
      let reason;
      let retryAfter = null;
      const abort = new AbortController();
      const timer = setTimeout(() => abort.abort(), timeout * 1000);
      try {
        const response = await fetch(this.base + path, {
          method,
          headers,
          body,
          cache: "no-store",
          signal: abort.signal,
        });
        if (!RETRYABLE.has(response.status)) {
          if (response.status === 401) throw new Unauthorized(await errorText(response), what);
          if (response.status >= 400 && response.status !== 409) {
            throw new HttpError(response.status, await errorText(response), what);
          }
          return response;
        }
        reason = `${response.status} ${await errorText(response)}`;
        retryAfter = Number(response.headers.get("retry-after")) || null;
      } catch (err) {
        if (err instanceof HttpError) throw err;
        reason =
          err.name === "AbortError"
            ? `no answer in ${timeout} s`
            : `network error (${err.message})`;
      } finally {
        clearTimeout(timer);
      }
      let delay = Math.min(this.maxBackoff, this.backoff * 2 ** attempt);
      delay = delay / 2 + (Math.random() * delay) / 2;
      if (retryAfter !== null) delay = Math.min(this.maxBackoff, Math.max(delay, retryAfter));
      this.onRetry({ what, reason, delay, attempt: attempt + 1 });
      await sleep(delay);
    }
  }

  static auth(token) {
    return { Authorization: `Bearer ${token}` };
  }

  // → {device_id, token}
  async enroll(secret, kind = "browser") {
    const response = await this.request("POST", "/v1/devices", {
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ secret, kind }),
    });
    return response.json();
  }

  // → a task, {status: "wait", retry_after}, or {status: "finished"}. The server may
  // hold the request up to `wait` seconds until a round opens.
  async checkin(token, wait = 10) {
    const response = await this.request("POST", `/v1/checkin?wait=${wait}`, {
      headers: Server.auth(token),
      timeout: this.timeout + wait,
    });
    return response.json();
  }

  // The model file at `url` as a Uint8Array; `cache` ({etag, bytes} or null) is sent as
  // If-None-Match and returned on 304. → {etag, bytes}
  async download(token, url, cache = null) {
    const headers = Server.auth(token);
    if (cache) headers["If-None-Match"] = `"${cache.etag}"`;
    const response = await this.request("GET", url, { headers });
    if (response.status === 304 && cache) return cache;
    const bytes = new Uint8Array(await response.arrayBuffer());
    return { etag: (response.headers.get("etag") ?? "").replace(/"/g, ""), bytes };
  }

  // Upload an update; → {status, body}: 201 stored, 200 stored before (a retry), 409
  // too late or stale.
  async upload(token, url, key, bytes) {
    const response = await this.request("POST", url, {
      headers: {
        ...Server.auth(token),
        "Idempotency-Key": key,
        "Content-Type": "application/octet-stream",
      },
      body: bytes,
    });
    const text = await response.text();
    let body;
    try {
      body = JSON.parse(text);
    } catch {
      body = { error: text };
    }
    return { status: response.status, body };
  }
}
