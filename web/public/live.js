// Live updates: the broker's Server-Sent Events endpoints in their long-poll form. One loop
// per tab at a time (the broker limits long-polls per user and per role): each request
// waits up to 15 s for events after Last-Event-ID, answers, and the loop asks again.
import { ApiError, authHeader, onAuthChange, sessionEnded } from './api.js';

let current = null;  // {path, abort, handlers}

function parse(text) {
  const events = [];
  let ev = { id: null, type: 'message', data: '' };
  let has = false;
  for (const line of text.split('\n')) {
    if (line === '') {
      if (has) events.push(ev);
      ev = { id: null, type: 'message', data: '' };
      has = false;
      continue;
    }
    if (line.startsWith(':')) continue;
    const i = line.indexOf(':');
    const field = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
    if (field === 'id') { ev.id = value; has = true; }
    else if (field === 'event') { ev.type = value; has = true; }
    else if (field === 'data') { ev.data += (ev.data ? '\n' : '') + value; has = true; }
  }
  if (has) events.push(ev);
  return events;
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
});

// Follows `path` (/v1/events/stream or /v1/me/notifications) from position `after`, calling
// onEvent({id, type, data}) for each event; stops the previous loop of this tab first.
export function follow(path, after, onEvent, onState = () => {}) {
  stop();
  const abort = new AbortController();
  current = { path, abort };
  let last = after == null ? null : String(after);
  (async () => {
    let backoff = 500;
    while (!abort.signal.aborted) {
      try {
        const headers = { ...authHeader(), Accept: 'text/event-stream' };
        if (last !== null) headers['Last-Event-ID'] = last;
        onState('live');
        const res = await fetch(path, { headers, signal: abort.signal, cache: 'no-store',
                                        credentials: 'omit' });
        if (res.status === 429 || res.status === 503) {
          // Another tab of this user (or role) holds the streams: wait as told.
          const wait = Number(res.headers.get('retry-after') || 2) * 1000;
          onState('waiting');
          await sleep(Math.max(wait, 1000), abort.signal);
          continue;
        }
        if (res.status === 401) {
          sessionEnded(new ApiError(401, await res.json().catch(() => ({ reason: 'token_invalid' }))));
          return;
        }
        if (!res.ok) { onState('stopped'); return; }
        for (const ev of parse(await res.text())) {
          if (ev.id !== null) last = ev.id;
          let data = ev.data;
          try { data = JSON.parse(ev.data); } catch { /* plain text */ }
          onEvent({ id: ev.id, type: ev.type, data });
        }
        backoff = 500;
      } catch (e) {
        if (abort.signal.aborted) return;
        onState('retrying');
        await sleep(backoff, abort.signal);
        backoff = Math.min(backoff * 2, 10000);
      }
    }
  })();
}

export function stop() {
  if (current) current.abort.abort();
  current = null;
}

export function following() { return current?.path || null; }

onAuthChange((p) => { if (!p) stop(); });
export { parse as parseEventStream };
