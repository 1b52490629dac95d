// Talking to the server: keys, JSON calls, streamed chat completions, and the error banner.
// The API key lives in this tab's sessionStorage only; the admin key only in memory.

const KEY = 'openlora.apiKey';
let adminKey = '';

export function apiKey() { return sessionStorage.getItem(KEY) || ''; }
export function setApiKey(k) { k ? sessionStorage.setItem(KEY, k) : sessionStorage.removeItem(KEY); }
export function setAdminKey(k) { adminKey = k; }
export function hasAdminKey() { return adminKey !== ''; }

/** An API error: the HTTP status and the OpenAI-shaped body's fields. */
export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.type = e.type || '';
    this.code = e.code || '';
  }
}

/** An admin call carries the admin key only (none entered: no key, so the server says 401). */
function headers(admin, json) {
  const h = {};
  const key = admin ? adminKey : apiKey();
  if (key) h.Authorization = `Bearer ${key}`;
  if (json) h['Content-Type'] = 'application/json';
  return h;
}

async function failure(res) {
  let body = null;
  try { body = await res.json(); } catch (_) { /* not JSON */ }
  return new ApiError(res.status, body);
}

/** GET or POST `path`; resolves to the parsed JSON, rejects with `ApiError`. `admin`: use the admin key. */
export async function call(path, { method = 'GET', body, admin = false, signal } = {}) {
  const res = await fetch(path, {
    method, signal, headers: headers(admin, body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!res.ok) throw await failure(res);
  return res.json();
}

/** POSTs a multipart form (`FormData`) to `path`; resolves to the parsed JSON. */
export async function upload(path, form, { admin = false } = {}) {
  const res = await fetch(path, { method: 'POST', headers: headers(admin, false), body: form });
  if (!res.ok) throw await failure(res);
  return res.json();
}

/** Plain-text GET (`/metrics`). */
export async function text(path, signal) {
  const res = await fetch(path, { signal });
  if (!res.ok) throw await failure(res);
  return res.text();
}

/**
 * Streams a chat completion (SSE over fetch). Calls `onChunk(json)` for every data event and
 * resolves when `[DONE]` arrives; an error event or status rejects with `ApiError`.
 */
export async function stream(body, onChunk, signal) {
  const res = await fetch('/v1/chat/completions', {
    method: 'POST', signal, headers: headers(false, true),
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
  });
  if (!res.ok) throw await failure(res);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new ApiError(502, { error: { message: 'the stream ended before [DONE]' } });
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf('\n\n')) >= 0) {
      const event = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const data = event.split('\n').filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5).trimStart()).join('\n');
      if (!data) continue;
      if (data === '[DONE]') return;
      const json = JSON.parse(data);
      if (json.error) throw new ApiError(STATUS_OF_TYPE[json.error.type] || 500, json);
      onChunk(json);
    }
  }
}

/** The status an error event in a stream stands for (the HTTP status was 200 by then). */
const STATUS_OF_TYPE = {
  invalid_request_error: 400, authentication_error: 401, insufficient_quota: 402,
  permission_error: 403, rate_limit_error: 429, server_error: 500, service_unavailable: 503,
};

const EXPLAIN = {
  401: 'Unauthorized: the API key, or for admin actions the admin key, is missing or wrong.',
  402: 'Payment required: the payer\u2019s deposit does not cover this call.',
  403: 'Forbidden: this key may not do that, or the adapter is refused.',
  404: 'Not found.',
  429: 'Too many requests: the server\u2019s queue is full; retry in a moment.',
  503: 'Service unavailable: the server cannot serve this right now (e.g. it cannot read the chain); retry later.',
};

/** Shows `err` in the page's alert banner (status, what it means, the server's message). */
export function showError(err) {
  const banner = document.getElementById('banner');
  const status = err instanceof ApiError ? err.status : 0;
  let what = EXPLAIN[status] || (status >= 500 ? 'Server error: the call failed on the server.' : 'Request failed.');
  if (status === 403 && err.code === 'adapter_refused') what = 'Forbidden: the adapter is refused (its on-chain registration does not allow serving it).';
  banner.querySelector('.banner-status').textContent = status ? String(status) : 'error';
  banner.querySelector('.banner-text').textContent = `${what} ${err.message || ''}`.trim();
  banner.dataset.status = String(status);
  banner.hidden = false;
}

export function clearError() {
  const banner = document.getElementById('banner');
  banner.hidden = true;
  banner.dataset.status = '';
}

/** `el` with `text` as its only content. */
export function setText(el, text) { el.textContent = text; return el; }

/** A new element with attributes and children (strings become text nodes). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v === null || v === undefined) continue;
    if (k === 'class') el.className = v; else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) el.append(c instanceof Node ? c : String(c));
  return el;
}
