// The one way the pages talk to atriumd: documented operations of /openapi.yaml, with the
// bearer token held here, in this module's memory only (never in storage or a cookie: a
// reload or a new tab signs in again; README "Web portal" says why).
let token = null;
let principal = null;  // {user_id, name, roles, expires_at_ms, must_enroll}
let ended = null;      // the 401 that ended the session (expired, revoked), for the sign-in page
const listeners = new Set();

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
    this.reason = this.problem.reason || '';
  }
}

export function signedIn() { return principal; }
export function endedBy() { return ended; }
export function isAdmin() { return !!principal?.roles?.includes('admin'); }
export function onAuthChange(f) { listeners.add(f); return () => listeners.delete(f); }
function changed() { for (const f of listeners) f(principal); }

function url(path, query) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

// A request as data, so that the same object can be sent or shown as curl.
export function request(method, path, { body, query, headers } = {}) {
  return { method, path: url(path, query), body, headers: headers || {} };
}

// The request as a curl command line, the token left as $TOKEN.
export function curl(req) {
  const q = (s) => `'${String(s).replaceAll("'", "'\\''")}'`;
  const parts = ['curl'];
  if (req.method !== 'GET') parts.push('-X', req.method);
  if (!req.public) parts.push('-H', '"Authorization: Bearer $TOKEN"');
  for (const [k, v] of Object.entries(req.headers || {})) parts.push('-H', q(`${k}: ${v}`));
  if (req.body !== undefined) {
    parts.push('-H', q('Content-Type: application/json'), '--data', q(JSON.stringify(req.body)));
  }
  parts.push(q(location.origin + req.path));
  return parts.join(' ');
}

// The last requests sent, newest first, for the console's "copy as curl" of any action.
export const history = [];

export async function send(req, { signal } = {}) {
  const headers = { ...(req.headers || {}) };
  if (token && !req.public) headers.Authorization = `Bearer ${token}`;
  if (req.body !== undefined) headers['Content-Type'] = 'application/json';
  if (req.method !== 'GET' && !req.public) {  // never the login (it carries the password)
    history.unshift(req);
    history.length = Math.min(history.length, 50);
  }
  const res = await fetch(req.path, {
    method: req.method,
    headers,
    body: req.body === undefined ? undefined : JSON.stringify(req.body),
    signal,
    cache: 'no-store',
    credentials: 'omit',
  });
  const type = res.headers.get('content-type') || '';
  let data = null;
  if (res.status !== 204 && res.status !== 304) {
    data = type.includes('json') ? await res.json().catch(() => null) : await res.text();
  }
  const error = res.ok ? null : new ApiError(res.status, data && typeof data === 'object' ? data : { detail: data });
  if (res.status === 401 && token && !req.public) sessionEnded(error);
  // TOTP became required for this user (by an admin, for the user or a role) and it has not
  // enrolled: every route but enrollment and logout answers this, so the app shows enrollment.
  if (res.status === 403 && error.reason === 'totp_enrollment_required' && principal && !principal.must_enroll) {
    principal = { ...principal, must_enroll: true };
    changed();
  }
  if (error) throw error;
  return { status: res.status, data, headers: res.headers };
}

// The token expired or was revoked elsewhere (sign-out in another client, a password change,
// a disabled user): forget it, and keep the answer for the sign-in page.
export function sessionEnded(error) {
  if (!token) return;
  token = null;
  principal = null;
  ended = error;
  changed();
}

export async function call(method, path, opts = {}) {
  return (await send(request(method, path, opts))).data;
}
export const get = (path, query) => call('GET', path, { query });

// Every page of a list (bounded), for small admin lists.
export async function getAll(path, query = {}, max = 5000) {
  const items = [];
  let cursor;
  do {
    const page = await get(path, { ...query, limit: 1000, cursor });
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor && items.length < max);
  return items;
}

// The login, with the second factor when the first answer was 401 totp_required:
// `second` is {totp_code} or {recovery_code}. Then one read of the user's own record
// (GET /v1/users/{id}) tells whether it must enroll TOTP first (403
// totp_enrollment_required), before any page asks for more.
export async function login(name, password, second = {}) {
  const req = { ...request('POST', '/v1/auth/login', { body: { name, password, ...second } }), public: true };
  const { data } = await send(req);
  token = data.token;
  ended = null;
  let must_enroll = false;
  try {
    await send(request('GET', `/v1/users/${encodeURIComponent(data.user_id)}`));
  } catch (e) {
    must_enroll = e.reason === 'totp_enrollment_required';
  }
  if (!token) throw ended || new ApiError(401, { reason: 'token_invalid' });
  principal = { user_id: data.user_id, name, roles: data.roles, expires_at_ms: data.expires_at_ms, must_enroll };
  changed();
  return principal;
}

// TOTP confirmed: the pages that enrollment held back open.
export function enrolled() {
  if (principal?.must_enroll) {
    principal = { ...principal, must_enroll: false };
    changed();
  }
}

// Signing out revokes the token on the broker, then forgets it.
export async function logout() {
  try {
    if (token) await send(request('POST', '/v1/auth/logout'));
  } finally {
    token = null;
    principal = null;
    ended = null;
    changed();
  }
}

// For live.js: the token, to read the event streams with fetch (EventSource cannot send
// an Authorization header).
export function authHeader() { return token ? { Authorization: `Bearer ${token}` } : {}; }
