// Every call the console makes goes through this module, to this node's own API, so that its
// limits, errors and token checks apply unchanged. The API token lives only in this tab's
// sessionStorage and travels as a bearer header; the console sets no cookie.

const TOKEN_KEY = 'driftkv.token';
const ADMIN_TOKEN_KEY = 'driftkv.adminToken';

/** A failed call, with the Cloudflare error code and message when the API sent an envelope. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }

  /** "message (code 10009, HTTP 404)", as the CLI prints errors. */
  describe() {
    const code = this.code ? `code ${this.code}, ` : '';
    return `${this.message} (${code}HTTP ${this.status})`;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export function adminToken() {
  return sessionStorage.getItem(ADMIN_TOKEN_KEY) || '';
}

export function setAdminToken(value) {
  if (value) sessionStorage.setItem(ADMIN_TOKEN_KEY, value);
  else sessionStorage.removeItem(ADMIN_TOKEN_KEY);
}

/** Tells the page about what a response showed: `driftkv:auth` (a token is needed or wrong),
 * `driftkv:unavailable` (central did not answer a write: code 10050). */
function signal(error, admin) {
  if (error.code === 10000 && !admin) {
    window.dispatchEvent(new CustomEvent('driftkv:auth', { detail: error }));
  }
  if (error.code === 10050) {
    window.dispatchEvent(new CustomEvent('driftkv:unavailable', { detail: error }));
  }
}

/** The error a failed response stands for: its envelope's first error, else its status. */
async function failure(response) {
  let code = 0;
  let message = response.statusText || 'request failed';
  try {
    const body = await response.json();
    const first = body && Array.isArray(body.errors) ? body.errors[0] : null;
    if (first) {
      code = first.code;
      message = first.message;
    }
  } catch {
    // Not an envelope: the status says it all.
  }
  return new ApiError(response.status, code, message);
}

/**
 * Sends a request and returns the response. `options.admin` sends the testbed admin token
 * instead of the API token; `options.quiet` keeps a failure from raising the page's token
 * prompt or central banner (for background polls). Throws an ApiError for a non-2xx answer
 * (or no answer).
 */
export async function send(method, path, options = {}) {
  const headers = new Headers(options.headers || {});
  const bearer = options.admin ? adminToken() : token();
  if (bearer) headers.set('Authorization', `Bearer ${bearer}`);
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: options.body,
      credentials: 'omit',
      cache: 'no-store',
      signal: options.signal,
    });
  } catch (cause) {
    if (cause.name === 'AbortError') throw cause;
    throw new ApiError(0, 0, `no answer from this node (${cause.message})`);
  }
  if (!response.ok) {
    const error = await failure(response);
    if (!options.quiet) signal(error, options.admin);
    throw error;
  }
  return response;
}

/** A JSON call answered with Cloudflare's envelope: returns `{result, result_info}`. */
export async function call(method, path, body, options = {}) {
  const init = { ...options };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = { 'Content-Type': 'application/json', ...(options.headers || {}) };
  }
  const response = await send(method, path, init);
  const envelope = await response.json();
  if (envelope && envelope.success === false) {
    const first = (envelope.errors || [])[0] || {};
    throw new ApiError(response.status, first.code || 0, first.message || 'request failed');
  }
  return envelope;
}

/** A plain JSON endpoint (`/cluster`, `/readyz`, the testbed's). */
export async function json(method, path, body, options = {}) {
  const init = { ...options };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = { 'Content-Type': 'application/json' };
  }
  const response = await send(method, path, init);
  return response.json();
}

/** Percent-encodes one path segment (a key: `/` inside it is part of the key). */
export function segment(value) {
  return encodeURIComponent(value);
}

/** `/client/v4/accounts/{account}/storage/kv/namespaces` and what lies under it. */
export function namespacesPath(account, ...rest) {
  const base = `/client/v4/accounts/${segment(account)}/storage/kv/namespaces`;
  return rest.length ? `${base}/${rest.join('/')}` : base;
}
