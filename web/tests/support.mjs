// Helpers for the browser tests: a real atriumd on loopback (its own data dir, libvirt's
// test:///default added through the console), Debian's chromium driven by playwright-core,
// axe-core, screenshots kept in the build dir.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const webRoot = join(dirname(fileURLToPath(import.meta.url)), '..');
export const ATRIUMD = process.env.ATRIUMD || join(webRoot, '..', 'build', 'atriumd');
export const ARTIFACTS = process.env.ATRIUM_WEB_ARTIFACTS || join(dirname(ATRIUMD), 'web-artifacts');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
// CI sets this: there, a missing browser or missing npm packages fail instead of skipping.
export const REQUIRED = process.env.ATRIUM_REQUIRE_BROWSER === '1';

// Why the browser tests cannot run here, or null when they can.
export function missing() {
  if (!existsSync(CHROMIUM)) return `no chromium at ${CHROMIUM} (apt-get install chromium)`;
  if (!existsSync(join(webRoot, 'node_modules', 'playwright-core'))) return 'no web/node_modules (run npm ci in web/)';
  if (!existsSync(ATRIUMD)) return `no atriumd at ${ATRIUMD} (build it, or set ATRIUMD)`;
  return null;
}

export async function startBroker(extra = []) {
  const dir = mkdtempSync(join(tmpdir(), 'atrium-web-'));
  const args = ['serve', '--listen=127.0.0.1:0', `--data-dir=${dir}`, '--default-host=none', '--access-log=off',
    // 64 workers: each long-poll (a page's live view) blocks the Pistache worker it landed on
    // for up to 15 s, and with it the other keep-alive connections of that worker (README,
    // "Web portal"); more workers make a page load that shares one rare in these tests.
    // test:///default is added through the console like a real host: allowed here (10.4).
    '--allow-test-hosts=on', '--host-resync-s=2', '--threads=64', ...extra];
  const child = spawn(ATRIUMD, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`atriumd did not start:\n${log}`)), 20000);
    child.stderr.on('data', (d) => {
      log += d;
      const m = log.match(/listening on 127\.0\.0\.1:(\d+)/);
      if (m) { clearTimeout(timer); resolve(Number(m[1])); }
    });
    child.on('exit', (code) => { clearTimeout(timer); reject(new Error(`atriumd exited ${code}:\n${log}`)); });
  });
  const base = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 100; i++) {
    const r = await fetch(`${base}/readyz`).catch(() => null);
    if (r?.ok) break;
    await new Promise((res) => setTimeout(res, 100));
  }
  const cred = readFileSync(join(dir, 'admin-credentials'), 'utf8');
  const broker = {
    base, port, dir, child,
    adminPassword: cred.match(/^password=(\S+)/m)[1],
    adminToken: cred.match(/^token=(\S+)/m)[1],
    log: () => log,
    async call(method, path, body, token = broker.adminToken, headers = {}) {
      const res = await fetch(base + path, {
        method, body: body === undefined ? undefined : JSON.stringify(body),
        headers: { Authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'Content-Type': 'application/json' }), ...headers },
      });
      const text = await res.text();
      let json = null;
      try { json = JSON.parse(text); } catch { /* not JSON */ }
      return { status: res.status, json, text, headers: res.headers };
    },
    async stop() {
      child.kill('SIGTERM');
      await new Promise((res) => { child.once('exit', res); setTimeout(res, 10000); });
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return broker;
}

export async function launchBrowser() {
  const { chromium } = await import(join(webRoot, 'node_modules', 'playwright-core', 'index.mjs'));
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
}

// Every method and path any page of these tests sent to the broker ("GET /v1/users").
export const calls = new Set();

// The operations openapi.yaml documents, as [method, RegExp of the path] (a {param} is one
// path segment). The pages must call these and nothing else.
export function documentedOperations() {
  const text = readFileSync(join(webRoot, '..', 'openapi.yaml'), 'utf8');
  const ops = [];
  let path = null;
  for (const line of text.split('\n')) {
    const p = line.match(/^  (\/\S*):\s*$/);
    if (p) { path = p[1]; continue; }
    if (/^\S/.test(line)) path = null;
    const m = path && line.match(/^    (get|put|post|delete|patch|head):/);
    if (m) {
      const re = path.replace(/[.*+?^$()|[\]\\]/g, '\\$&').replace(/\{[^}]+\}/g, '[^/]+');
      ops.push([m[1].toUpperCase(), new RegExp(`^${re}$`), `${m[1].toUpperCase()} ${path}`]);
    }
  }
  return ops;
}

// A page that records CSP violations and page errors, so that a test can assert none.
export async function newPage(browser, options = {}) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 }, acceptDownloads: true, ...options });
  const page = await ctx.newPage();
  page.problems = [];
  page.on('console', (m) => {
    const text = m.text();
    if (/Content Security Policy|Refused to/i.test(text)) page.problems.push(`CSP: ${text}`);
  });
  page.on('pageerror', (e) => page.problems.push(`page error: ${e.message}`));
  // Dangerous actions ask with confirm(): the tests say yes, and record what was asked.
  page.confirms = [];
  page.on('dialog', (d) => { page.confirms.push(d.message()); d.accept(); });
  page.on('request', (r) => {
    const u = new URL(r.url());
    if (u.protocol.startsWith('http') && (u.hostname === '127.0.0.1' || u.hostname === 'localhost')) {
      calls.add(`${r.method()} ${u.pathname}`);
    }
  });
  page.ctx = ctx;
  return page;
}

export async function signIn(page, base, path, name, password) {
  await page.goto(base + path);
  await page.getByLabel(/User name|用户名|Имя пользователя/).fill(name);
  await page.locator('input[name=password]').fill(password);
  await page.locator('input[name=password]').press('Enter');
  await page.locator(path.startsWith('/admin') ? 'at-admin h1' : 'at-portal h1').waitFor();
}

const axeSource = () => readFileSync(join(webRoot, 'node_modules', 'axe-core', 'axe.min.js'), 'utf8');

// axe-core's serious and critical violations on the page, as text (empty: none). axe is
// evaluated through the DevTools protocol, which the page's CSP does not govern.
export async function axe(page) {
  const result = await page.evaluate(`${axeSource()}
    ;axe.run(document, { resultTypes: ['violations'] }).then((r) => r.violations
      .filter((v) => v.impact === 'serious' || v.impact === 'critical')
      .map((v) => v.id + ' (' + v.impact + '): ' + v.help + ' -> ' + v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(' | ')))`);
  return result;
}

export function artifact(name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  return join(ARTIFACTS, name);
}

export const TEMPLATE = "<domain type='test'><name>tmpl</name><uuid>11111111-1111-4111-8111-111111111111</uuid>" +
  "<memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os>" +
  "<devices><interface type='network'><source network='default'/></interface></devices></domain>";

export async function eventually(f, { timeout = 15000, interval = 200, what = 'condition' } = {}) {
  const end = Date.now() + timeout;
  let last;
  while (Date.now() < end) {
    try { const v = await f(); if (v) return v; } catch (e) { last = e; }
    await new Promise((r) => setTimeout(r, interval));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
}

// The text of every element matching a CSS selector. (Playwright 1.64's allTextContents()
// answered [] for these Lit-rendered cells in Chromium 156 while count() found them.)
export function texts(page, selector) {
  return page.evaluate((sel) => [...document.querySelectorAll(sel)].map((e) => e.textContent.trim()), selector);
}
