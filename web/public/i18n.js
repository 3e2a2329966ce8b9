// Message catalogs (i18n-<lang>.json): English, Simplified Chinese, Russian. The language is
// the browser's first supported one, or the one chosen in the page (kept in localStorage:
// a preference, not a secret). Values may be strings with {name} placeholders, or objects of
// Intl.PluralRules categories for counts ({"one": "...", "few": "...", "other": "..."}).
export const languages = [
  { code: 'en', name: 'English' },
  { code: 'zh-CN', name: '简体中文' },
  { code: 'ru', name: 'Русский' },
];

let lang = 'en';
let catalog = {};
let fallback = {};
const listeners = new Set();

export function pick(preferred) {
  for (const p of preferred) {
    const l = p.toLowerCase();
    if (l.startsWith('zh')) return 'zh-CN';
    if (l.startsWith('ru')) return 'ru';
    if (l.startsWith('en')) return 'en';
  }
  return 'en';
}

async function load(code) {
  const res = await fetch(`/web/i18n-${code}.json`, { credentials: 'omit' });
  return res.json();
}

export async function setLanguage(code, remember = true) {
  if (!languages.some((l) => l.code === code)) code = 'en';
  if (!Object.keys(fallback).length) fallback = await load('en');
  catalog = code === 'en' ? fallback : await load(code);
  lang = code;
  document.documentElement.lang = code;
  if (remember) {
    try { localStorage.setItem('atrium.lang', code); } catch { /* private mode */ }
  }
  for (const f of listeners) f(code);
}

export async function initLanguage() {
  let saved = null;
  try { saved = localStorage.getItem('atrium.lang'); } catch { /* private mode */ }
  await setLanguage(saved || pick(navigator.languages || [navigator.language || 'en']), false);
}

export function language() { return lang; }
export function onLanguage(f) { listeners.add(f); return () => listeners.delete(f); }

export function has(key) { return catalog[key] !== undefined || fallback[key] !== undefined; }

// The catalog's text for key, or `otherwise` (e.g. a state name the catalog does not know).
export function tOr(key, otherwise) { return has(key) ? t(key) : otherwise; }

export function t(key, params = {}) {
  let v = catalog[key] ?? fallback[key];
  if (v === undefined) return key;
  if (typeof v === 'object') {
    const rule = new Intl.PluralRules(lang).select(Number(params.n ?? 0));
    v = v[rule] ?? v.other;
  }
  return v.replace(/\{(\w+)\}/g, (m, k) => (params[k] === undefined ? m : String(params[k])));
}

// A message for a refusal: the catalog's text for its stable reason when there is one,
// else the broker's own detail; the reason itself is always shown beside it.
export function problemText(err) {
  const reason = err?.reason || err?.problem?.reason;
  const known = reason && (catalog[`reason.${reason}`] ?? fallback[`reason.${reason}`]);
  return known ? t(`reason.${reason}`) : (err?.problem?.detail || err?.message || String(err));
}

export function fmtTime(ms) {
  if (!ms) return '—';
  return new Intl.DateTimeFormat(lang, { dateStyle: 'short', timeStyle: 'medium' }).format(new Date(ms));
}
export function fmtNumber(n) { return new Intl.NumberFormat(lang).format(n); }
