/*
 * api.js — the dashboard's only way to the daemon: JSON over fetch on
 * /api/v1 (same origin), errors as ApiError carrying the server's
 * {"error": {"code", "message", "field"}}, and a bearer token kept for
 * the session when the daemon asks for one (it does beyond loopback).
 */

const TOKEN_KEY = 'fisherd.token';

export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = error?.code || null;
    this.field = error?.field || null;
  }
}

export function token() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || '';
  } catch {
    return '';
  }
}

export function setToken(t) {
  try {
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    /* private mode: the token lives as long as the page */
  }
}

/* Listeners told when the daemon answers 401, so the page can ask for a token. */
const authListeners = new Set();
export function onAuthNeeded(fn) {
  authListeners.add(fn);
  return () => authListeners.delete(fn);
}

/* api('/jobs', {method, body, query, signal}) -> parsed JSON.
 * path is relative to /api/v1 unless it starts with "/api" or "/healthz".
 * A query value that is an array repeats its parameter (prefix=a&prefix=b). */
export async function api(path, opts = {}) {
  const url = new URL(/^\/(api|healthz)/.test(path) ? path : `/api/v1${path}`, location.origin);
  for (const [k, v] of Object.entries(opts.query || {})) {
    for (const x of Array.isArray(v) ? v : [v])
      if (x !== undefined && x !== null && x !== '') url.searchParams.append(k, String(x));
  }
  const headers = { Accept: 'application/json' };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  const init = { method: opts.method || 'GET', headers, signal: opts.signal };
  if (opts.body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body);
  }
  const res = await fetch(url, init);
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!res.ok) {
    if (res.status === 401) for (const fn of authListeners) fn();
    throw new ApiError(res.status, data?.error || { message: text || res.statusText });
  }
  return data;
}

/* URLs the browser fetches by itself (downloads, event streams). Neither
 * a link nor an EventSource can send an Authorization header, so with a
 * token they carry it as ?access_token= (the daemon takes it on GETs);
 * only these URLs do, as a URL can end up in history and logs. */
function withToken(path, query = {}) {
  const q = new URLSearchParams(query);
  const t = token();
  if (t) q.set('access_token', t);
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

export const urls = {
  events: (id) => withToken(`/api/v1/jobs/${encodeURIComponent(id)}/events`),
  allEvents: (kinds) => withToken('/api/v1/events', kinds ? { kinds: kinds.join(',') } : {}),
  model: (id) => withToken(`/api/v1/jobs/${encodeURIComponent(id)}/model`),
  driftCsv: (id) => withToken(`/api/v1/jobs/${encodeURIComponent(id)}/drift`, { format: 'csv' }),
  metricsCsv: (id) => withToken(`/api/v1/jobs/${encodeURIComponent(id)}/metrics`, { format: 'csv' }),
};
