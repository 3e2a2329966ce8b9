// The web portal and admin console in Debian's chromium against a real atriumd: the issue's
// scenarios end to end, axe-core on every page in both themes, screenshots as artifacts.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { createRequire } from 'node:module';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  missing, REQUIRED, texts, calls, documentedOperations, startBroker, launchBrowser, newPage, signIn, axe, artifact, TEMPLATE, eventually, webRoot,
} from './support.mjs';

const why = missing();
if (why && REQUIRED) throw new Error(`browser tests required (ATRIUM_REQUIRE_BROWSER=1) but ${why}`);
const skip = why ? `skipped: ${why}` : false;
if (why) console.log(`# web browser tests ${skip}`);

// RFC 6238 (SHA-1, 6 digits, 30 s), here in the test with node's HMAC, independent of the
// broker's liboath: the code an authenticator app would show for a base32 secret.
function totp(base32, t = Date.now() / 1000) {
  let bits = '';
  for (const c of base32.replace(/=+$/, '')) bits += 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567'.indexOf(c).toString(2).padStart(5, '0');
  const key = Buffer.from(bits.match(/.{8}/g).map((b) => parseInt(b, 2)));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(t / 30)));
  const h = createHmac('sha1', key).update(counter).digest();
  const o = h[h.length - 1] & 15;
  return String((h.readUInt32BE(o) & 0x7fffffff) % 1000000).padStart(6, '0');
}
// A code the broker cannot accept now (it allows one step either way).
function wrongCode(base32) {
  const now = Date.now() / 1000;
  const near = new Set([-60, -30, 0, 30, 60].map((d) => totp(base32, now + d)));
  let c = 123456;
  while (near.has(String(c))) c += 1;
  return String(c);
}
// The pixels of an <img> as the browser drew it (sent over as base64 RGBA: an array of
// numbers would take seconds), and jsQR's reading of them.
function pixels(img) {
  return img.evaluate(async (el) => {
    await el.decode();
    const c = document.createElement('canvas');
    c.width = el.naturalWidth;
    c.height = el.naturalHeight;
    const g = c.getContext('2d');
    g.drawImage(el, 0, 0);
    const d = g.getImageData(0, 0, c.width, c.height).data;
    let bin = '';
    for (let i = 0; i < d.length; i += 0x8000) bin += String.fromCharCode(...d.subarray(i, i + 0x8000));
    return { width: c.width, height: c.height, rgba: btoa(bin) };
  });
}
function decodeQr({ width, height, rgba }) {
  const jsqr = createRequire(import.meta.url)(join(webRoot, 'node_modules', 'jsqr'));
  const r = (jsqr.default || jsqr)(new Uint8ClampedArray(Buffer.from(rgba, 'base64')), width, height);
  assert.ok(r, 'jsQR finds a QR code in the image');
  return r.data;
}

const ADMIN_PAGES = ['dashboard', 'hosts', 'vms', 'pools', 'apps', 'users', 'sessions', 'agents', 'audit'];

describe('vendored Lit', { skip: why && !existsSync(join(webRoot, 'node_modules', 'lit')) ? 'skipped: no web/node_modules' : false }, () => {
  it('web/public holds exactly what tools/vendor.mjs makes of the lockfile\'s Lit', () => {
    execFileSync(process.execPath, [join(webRoot, 'tools', 'vendor.mjs'), '--check'], { stdio: 'pipe' });
  });
});

describe('web portal and admin console', { skip, concurrency: false }, () => {
  let broker;
  let browser;
  let admin;        // the admin's console tab, open through most scenarios
  let adminToken;   // the token that tab got at sign-in (read from the login answer)
  const alice = { name: 'alice', password: 'alice-password-1' };
  const figures = {};

  before(async () => {
    broker = await startBroker();
    browser = await launchBrowser();
  });

  after(async () => {
    writeFileSync(artifact('figures.json'), `${JSON.stringify(figures, null, 2)}\n`);
    await browser?.close();
    await broker?.stop();
  });

  it('serves the pages with a strict CSP, content types and cache validators', async () => {
    for (const path of ['/', '/admin']) {
      const r = await fetch(broker.base + path);
      assert.equal(r.status, 200);
      assert.match(r.headers.get('content-type'), /^text\/html/);
      const csp = r.headers.get('content-security-policy');
      assert.match(csp, /default-src 'none'/);
      assert.match(csp, /script-src 'self'(;|$)/);
      assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
      assert.equal(r.headers.get('x-content-type-options'), 'nosniff');
      const html = await r.text();
      assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/, 'no inline script in the page');
      assert.doesNotMatch(html, /\sstyle=/, 'no inline style in the page');
      const again = await fetch(broker.base + path, { headers: { 'If-None-Match': r.headers.get('etag') } });
      assert.equal(again.status, 304);
    }
    const lit = await fetch(`${broker.base}/web/lit.js`);
    assert.match(lit.headers.get('content-type'), /^text\/javascript/);
    assert.equal(lit.headers.get('cache-control'), 'no-cache');
    const vendor = (await lit.text()).match(/vendor-lit-[^']+\.js/)[0];
    const v = await fetch(`${broker.base}/web/${vendor}`);
    assert.equal(v.status, 200);
    assert.match(v.headers.get('cache-control'), /max-age=31536000, immutable/);
    assert.equal((await fetch(`${broker.base}/web/..%2Fopenapi.yaml`)).status, 404);
    assert.equal((await fetch(`${broker.base}/web/nope.js`)).status, 404);
  });

  it('the admin signs in, adds a host, creates a user and a pool, and entitles the user', async () => {
    admin = await newPage(browser);
    admin.on('response', async (r) => {
      if (r.url().endsWith('/v1/auth/login') && r.status() === 200) adminToken = (await r.json()).token;
    });
    const t0 = Date.now();
    await signIn(admin, broker.base, '/admin', 'admin', broker.adminPassword);
    figures.admin_sign_in_to_dashboard_ms = Date.now() - t0;
    // (The response listener reads the body asynchronously: it may finish after the sign-in.)
    await eventually(() => adminToken, { what: 'the login answer to carry a token' });

    await admin.click('nav.side a[href="#hosts"]');
    await admin.getByText('Add host', { exact: true }).first().click();
    await admin.locator('#add-host input[name=name]').fill('lab');
    await admin.locator('#add-host input[name=uri]').fill('test:///default');
    await admin.locator('#add-host button[type=submit]').click();
    await admin.getByRole('status').filter({ hasText: 'Host added' }).waitFor();
    // The host connects in the background: the row turns up without a reload (live events).
    await admin.locator('at-hosts tbody tr', { hasText: 'lab' }).locator('.badge.state-up').waitFor({ timeout: 20000 });

    await admin.click('nav.side a[href="#users"]');
    await admin.locator('at-users summary').click();
    await admin.locator('#add-user input[name=name]').fill(alice.name);
    await admin.locator('#add-user input[name=password]').fill(alice.password);
    await admin.locator('#add-user button[type=submit]').click();
    await admin.locator('at-users tbody tr', { hasText: alice.name }).waitFor();

    await admin.click('nav.side a[href="#pools"]');
    await admin.locator('at-pools summary').click();
    await admin.locator('#add-pool input[name=name]').fill('Office');
    await admin.locator('#add-pool label', { hasText: 'lab' }).locator('input[type=checkbox]').check();
    await admin.locator('#add-pool textarea[name=domain_xml]').fill(TEMPLATE);
    await admin.locator('#add-pool input[name=max_size]').fill('2');
    await admin.locator('#add-pool button[type=submit]').click();
    const row = admin.locator('at-pools tbody tr', { hasText: 'Office' });
    await row.waitFor();
    await row.getByRole('button', { name: 'Details' }).click();
    await admin.locator('#entitle select[name=user_id]').selectOption({ label: alice.name });
    await admin.locator('#entitle button[type=submit]').click();
    await admin.locator('ul.chips li', { hasText: alice.name }).waitFor();
    const pools = await broker.call('GET', '/v1/pools');
    assert.equal(pools.json.items.length, 1);
    assert.equal(pools.json.items[0].entitled_users.length, 1);
    await admin.screenshot({ path: artifact('flow-admin-pool.png'), fullPage: true });
  });

  it('the user signs in, finds the tile, launches and gets a valid .vv download', async () => {
    const user = await newPage(browser, { colorScheme: 'dark' });
    const t0 = Date.now();
    await signIn(user, broker.base, '/', alice.name, alice.password);
    figures.portal_sign_in_ms = Date.now() - t0;
    const tile = user.locator('li.tile', { hasText: 'Office' });
    await tile.waitFor();
    await user.getByLabel('Search').fill('zzz');
    assert.equal(await tile.count(), 0, 'search hides tiles that do not match');
    await user.getByLabel('Search').fill('off');
    await tile.waitFor();
    await user.evaluate(() => {
      const orig = URL.createObjectURL;
      window.__blobTypes = [];
      URL.createObjectURL = (b) => { window.__blobTypes.push(b.type); return orig.call(URL, b); };
    });
    const l0 = Date.now();
    await tile.getByRole('button', { name: 'Launch Office' }).click();
    const save = user.getByRole('button', { name: /Download connection file \(\.vv\)/ });
    await save.waitFor({ timeout: 70000 });
    figures.desktop_launch_ms = Date.now() - l0;
    await user.locator('.launch').getByText(/The ticket expires in \d+ s/).waitFor();
    const steps = await user.locator('.launch ol.steps li.done').count();
    assert.equal(steps, 5, 'every launch step is done');
    await user.screenshot({ path: artifact('flow-portal-launched-dark.png'), fullPage: true });
    const [download] = await Promise.all([user.waitForEvent('download'), save.click()]);
    assert.equal(download.suggestedFilename(), 'Office.vv');
    const vv = readFileSync(await download.path(), 'utf8');
    assert.match(vv, /^\[virt-viewer\]\ntype=spice\nhost=\S+\nport=\d+\npassword=\S+\n/);
    assert.match(vv, /delete-this-file=1/);
    assert.deepEqual(await user.evaluate(() => window.__blobTypes), ['application/x-virt-viewer']);
    // An admin's message reaches the live session's portal (GET /v1/me/notifications).
    const aliceId = (await broker.call('GET', '/v1/users')).json.items.find((u) => u.name === alice.name).id;
    const msg = await broker.call('POST', `/v1/users/${aliceId}/messages`, { text: 'Maintenance at noon' });
    assert.equal(msg.status, 202, msg.text);
    await user.locator('.notices li', { hasText: 'Maintenance at noon' }).waitFor({ timeout: 20000 });
    await user.screenshot({ path: artifact('flow-portal-message-dark.png'), fullPage: true });
    // My sessions: the session is there; Reconnect is a new launch that finds it, with a
    // fresh ticket.
    const sess = user.locator('at-portal table tbody tr', { hasText: 'Office' });
    await sess.waitFor();
    await user.locator('.launch').getByRole('button', { name: 'Close' }).click();
    await sess.getByRole('button', { name: 'Reconnect' }).click();
    await user.getByText('This is your running session, with a fresh ticket.').waitFor({ timeout: 30000 });
    await user.getByRole('button', { name: /Download connection file \(\.vv\)/ }).waitFor();
    assert.equal(await sess.count(), 1, 'still one session');
    // The console's Users page sends a message and a command to the live session's portal.
    await admin.click('nav.side a[href="#users"]');
    const urow = admin.locator('at-users tbody tr', { hasText: alice.name });
    await urow.locator('input[name=text]').fill('Back in five');
    await urow.getByRole('button', { name: 'Send' }).click();
    await admin.getByRole('status').filter({ hasText: "Sent to the user's portal." }).waitFor();
    await user.locator('.notices li', { hasText: 'Back in five' }).waitFor({ timeout: 20000 });
    await urow.getByRole('button', { name: 'Ask to log off' }).click();
    await user.locator('.notices li', { hasText: 'Your administrator asks you to log off.' }).waitFor({ timeout: 20000 });
    // Log off ends the session.
    await sess.getByRole('button', { name: 'Log off' }).click();
    await eventually(async () => (await sess.count()) === 0, { what: 'the session to go after log off' });
    const s = await broker.call('GET', '/v1/sessions?kind=desktop');
    assert.equal(s.json.items[0].state, 'ended');
    assert.deepEqual(user.problems, []);
    await user.ctx.close();
  });

  it('a VM power action shows its operation and events; a template update shows its rollout', async () => {
    await admin.click('nav.side a[href="#vms"]');
    // test:///default's own domain is unmanaged: the console can forget it (DELETE /v1/vms/{id}).
    const unmanaged = admin.locator('at-vms tbody tr', { hasText: 'unmanaged' }).first();
    await unmanaged.getByRole('button', { name: 'Forget' }).click();
    await admin.getByRole('status').filter({ hasText: 'Forgotten' }).waitFor();
    assert.match(admin.confirms.at(-1), /^Forget: are you sure\? \(DELETE \/v1\/vms\/\S+\)$/);
    const forgotten = await broker.call('GET', '/v1/events?type=VmForgotten');
    assert.equal(forgotten.json.items.length, 1, forgotten.text);
    await admin.locator('at-vms select').nth(1).selectOption({ label: 'Office' });
    // The pool's VM by name: the list before the filter applies may show another VM first.
    await eventually(async () => (await admin.locator('at-vms tbody tr').count()) === 1, { what: 'the pool filter' });
    const row = admin.locator('at-vms tbody tr', { hasText: 'Office-' });
    await row.waitFor();
    // The power action that changes something. After the log off the pool's power policy may
    // still be turning the VM off: an action it overtakes finishes at once ("Done.", no
    // operation to show), so wait until what the VM should be and what it is agree, and ask
    // again for the other state if that happened.
    const cell = async (i) => (await row.locator('td').nth(i).textContent()).trim();
    let off = false;
    for (let attempt = 0; ; ++attempt) {
      await eventually(async () => (await cell(3)) === (await cell(4)), { what: 'the VM settled' });
      off = (await cell(4)).includes('shut off');
      await row.getByRole('button', { name: off ? 'Start' : 'Shut down' }).click();
      const shown = await row.getByRole('button', { name: 'Show' }).waitFor({ timeout: attempt < 2 ? 6000 : 20000 })
        .then(() => true, () => false);
      if (shown) break;
      if (attempt >= 2) {
        await admin.screenshot({ path: artifact('failed-vm-operation.png'), fullPage: true });
        throw new Error('no operation to show after three power actions');
      }
    }
    await row.getByRole('button', { name: 'Show' }).click();
    const panel = admin.locator('at-vms section.card');
    await panel.getByRole('heading', { name: /Operation/ }).waitFor();
    await panel.locator('ol.events li').first().waitFor();
    assert.match(await panel.textContent(), off ? /vm_power start/ : /vm_power shutdown/);
    await admin.screenshot({ path: artifact('flow-admin-operation.png'), fullPage: true });

    await admin.click('nav.side a[href="#pools"]');
    const pool = admin.locator('at-pools tbody tr', { hasText: 'Office' }).first();
    await pool.waitFor();
    if ((await pool.getByRole('button', { name: 'Details' }).getAttribute('aria-expanded')) !== 'true') {
      await pool.getByRole('button', { name: 'Details' }).click();
    }
    await admin.locator('#pool-template textarea[name=domain_xml]').fill(TEMPLATE.replace("<memory unit='MiB'>64</memory>", "<memory unit='MiB'>96</memory>"));
    await admin.locator('#pool-template button[type=submit]').click();
    await admin.getByRole('status').filter({ hasText: 'Template updated' }).waitFor();
    await admin.locator('#pool-template', { hasText: 'Template version 2' }).waitFor();
    const p = (await broker.call('GET', '/v1/pools')).json.items[0];
    assert.equal(p.template_version, 2);
  });

  it('a host goes to maintenance and back and shows its capabilities; a pool from a running domain is refused with its reason; a member is refreshed', async () => {
    await admin.click('nav.side a[href="#hosts"]');
    const h = admin.locator('at-hosts tbody tr', { hasText: 'lab' }).first();
    await h.getByRole('button', { name: 'Maintenance' }).click();
    await h.locator('.badge.state-maintenance').waitFor({ timeout: 20000 });
    await h.getByRole('button', { name: 'Activate' }).click();
    await h.locator('.badge.state-up').waitFor({ timeout: 20000 });
    await h.getByRole('button', { name: 'Capabilities' }).click();
    const caps = admin.locator('at-hosts tr.detail dl.grid');
    await caps.waitFor();
    assert.ok((await caps.locator('dt').count()) > 0, 'the host reports capabilities');

    await admin.click('nav.side a[href="#pools"]');
    await admin.locator('at-pools summary', { hasText: 'Create pool' }).click();
    await admin.locator('#add-pool input[name=name]').fill('FromTest');
    await admin.locator('#add-pool label', { hasText: 'lab' }).locator('input[type=checkbox]').check();
    await admin.locator('#add-pool input[name=tmpl_mode][value=name]').check();
    await admin.locator('#add-pool input[name=domain_name]').fill('test');
    await admin.locator('#add-pool button[type=submit]').click();
    // test:///default's "test" runs, and its own disk would be the base.
    await admin.locator('at-pools .problem', { hasText: 'template_running' }).waitFor();
    assert.equal((await broker.call('GET', '/v1/pools')).json.items.length, 1);

    const pool = admin.locator('at-pools tbody tr', { hasText: 'Office' }).first();
    if ((await pool.getByRole('button', { name: 'Details' }).getAttribute('aria-expanded')) !== 'true') {
      await pool.getByRole('button', { name: 'Details' }).click();
    }
    const member = admin.locator('at-pools section.card table tbody tr').first();
    const refreshes = async () => (await broker.call('GET', '/v1/events?type=PoolVmRefreshStarted')).json.items.length;
    const before = await refreshes();
    // The template update's rollout may still be refreshing this member on a loaded machine
    // (409 vm_busy, shown): try again once it is done, as an admin would.
    let clicked = false;
    await eventually(async () => {
      if ((await refreshes()) > before) return true;
      if (!clicked || (await admin.locator('at-pools .problem', { hasText: 'vm_busy' }).count())) {
        clicked = true;
        await member.getByRole('button', { name: 'Refresh' }).click();
      }
      return false;
    }, { what: 'a PoolVmRefreshStarted', interval: 1000, timeout: 30000 }).catch(async (e) => {
      await admin.screenshot({ path: artifact('failed-pool-refresh.png'), fullPage: true });
      throw e;
    });
  });

  it('the console saves a pool\'s sizes (with If-Match) and removes an entitlement', async () => {
    const carol = await broker.call('POST', '/v1/users', { name: 'carol', password: 'carol-password-1', roles: ['user'] });
    assert.equal(carol.status, 201, carol.text);
    const office = (await broker.call('GET', '/v1/pools')).json.items.find((x) => x.name === 'Office');
    const ent = await broker.call('POST', `/v1/pools/${office.id}/entitlements`, { user_id: carol.json.id });
    assert.ok(ent.status === 201 || ent.status === 200, ent.text);
    await admin.click('nav.side a[href="#pools"]');
    const pool = admin.locator('at-pools tbody tr', { hasText: 'Office' }).first();
    if ((await pool.getByRole('button', { name: 'Details' }).getAttribute('aria-expanded')) !== 'true') {
      await pool.getByRole('button', { name: 'Details' }).click();
    }
    const chip = admin.locator('ul.chips li', { hasText: 'carol' });
    await chip.waitFor();
    // The pool's version may move on between the view's read and the save (the member
    // refreshed by the scenario before comes back): a save
    // against an older version is refused (412 version_mismatch, "try again", the view
    // reloaded) and the next one goes through, as an admin would do it.
    const before = office.max_size;
    const saved = async () => (await broker.call('GET', `/v1/pools/${office.id}`)).json.max_size === before + 1;
    let mismatches = 0;
    for (let i = 0; i < 5 && !(await saved()); i++) {
      await admin.locator('#pool-sizes input[name=max_size]').fill(String(before + 1));
      await admin.locator('#pool-sizes button[type=submit]').click();
      await eventually(async () => (await saved()) || (await admin.locator('at-pools .problem', { hasText: 'version_mismatch' }).count()) > 0,
        { what: 'the save or its refusal' });
      if (!(await saved())) { mismatches++; await admin.waitForTimeout(500); }
    }
    assert.ok(await saved(), `max_size saved (${mismatches} version mismatches first)`);
    await admin.locator('at-pools tbody tr', { hasText: `of at most ${before + 1}` }).waitFor();
    // The chip of carol's entitlement, removed: alice's stays.
    await chip.getByRole('button', { name: 'Remove' }).click();
    await eventually(async () => (await chip.count()) === 0, { what: 'carol\'s chip to go' });
    await admin.locator('ul.chips li', { hasText: alice.name }).waitFor();
    const ents = (await broker.call('GET', `/v1/pools/${office.id}/entitlements`)).json.items.map((x) => x.user_id);
    assert.ok(!ents.includes(carol.json.id), JSON.stringify(ents));
    assert.equal(ents.length, 1);
  });

  it('a change made by another client appears in the open console without a reload', async () => {
    await admin.click('nav.side a[href="#users"]');
    await admin.locator('at-users tbody tr', { hasText: alice.name }).waitFor();
    await admin.evaluate(() => { window.__notReloaded = true; });
    const r = await broker.call('POST', '/v1/users', { name: 'bob', roles: ['user'] });
    assert.equal(r.status, 201);
    const t0 = Date.now();
    await admin.locator('at-users tbody tr', { hasText: 'bob' }).waitFor({ timeout: 20000 });
    figures.live_update_ms = Date.now() - t0;
    assert.equal(await admin.evaluate(() => window.__notReloaded), true);
  });

  it('audit filters and the as-of slider show the earlier state', async () => {
    await admin.click('nav.side a[href="#audit"]');
    await admin.locator('#audit-filter input[name=type]').fill('UserCreated');
    await admin.locator('#audit-filter button[type=submit]').click();
    let types = [];
    await eventually(async () => {
      types = await texts(admin, 'at-audit tbody td.type');
      return types.length >= 3 && types.every((x) => x === 'UserCreated');
    }, { what: 'only UserCreated rows' }).catch(async (e) => {
      await admin.screenshot({ path: artifact('failed-audit.png'), fullPage: true });
      throw new Error(`${e.message}; rows: ${types.join(', ')}`);
    });
    // The hash chain position of each event: its position and hash.
    const firstHash = await admin.locator('at-audit tbody td.hash code').first().getAttribute('title');
    assert.match(firstHash, /^[0-9a-f]{64}$/);
    await admin.locator('#audit-filter input[name=actor]').fill('nobody-acted');
    await admin.locator('#audit-filter button[type=submit]').click();
    await eventually(async () => (await admin.locator('at-audit tbody tr').count()) === 0, { what: 'the actor filter' });

    const created = await broker.call('GET', '/v1/events?type=UserCreated&limit=100');
    const bobEv = created.json.items.find((e) => e.data.name === 'bob');
    const aliceEv = created.json.items.find((e) => e.data.name === alice.name);
    const bobAt = bobEv.position;
    // The time filter (datetime-local, to the second, in the browser's zone): from bob's
    // second on shows his creation and not alice's, earlier; up to the second before, the reverse.
    const bobSecond = Math.floor(bobEv.recorded_at_ms / 1000) * 1000;
    assert.ok(aliceEv.recorded_at_ms < bobSecond - 1000, 'alice was created seconds before bob');
    const local = (ms) => admin.evaluate((x) => {
      const d = new Date(x);
      const p = (n) => String(n).padStart(2, '0');
      // A datetime-local value drops a zero second ("15:34", not "15:34:00"): Playwright's
      // fill refuses a value the input would not keep as given.
      const sec = d.getSeconds() === 0 ? '' : `:${p(d.getSeconds())}`;
      return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}${sec}`;
    }, ms);
    const positions = async () => (await texts(admin, 'at-audit tbody td.pos')).map((x) => Number(x.slice(1)));
    await admin.locator('#audit-filter input[name=actor]').fill('');
    await admin.locator('#audit-filter input[name=from]').fill(await local(bobSecond));
    await admin.locator('#audit-filter button[type=submit]').click();
    await eventually(async () => { const p = await positions(); return p.includes(bobAt) && !p.includes(aliceEv.position); }, { what: 'the from filter' });
    await admin.locator('#audit-filter input[name=from]').fill('');
    await admin.locator('#audit-filter input[name=to]').fill(await local(bobSecond - 1000));
    await admin.locator('#audit-filter button[type=submit]').click();
    await eventually(async () => { const p = await positions(); return !p.includes(bobAt) && p.includes(aliceEv.position); }, { what: 'the to filter' });
    await admin.screenshot({ path: artifact('flow-admin-audit-time.png'), fullPage: true });
    await admin.locator('#audit-filter input[name=to]').fill('');
    await admin.locator('#audit-filter button[type=submit]').click();
    await admin.click('nav.side a[href="#users"]');
    await admin.locator('at-users tbody tr', { hasText: 'bob' }).waitFor();
    const box = admin.locator('.asof input[type=number]');
    await box.fill(String(bobAt - 1));
    await box.press('Enter');
    await box.dispatchEvent('change');
    await admin.locator('.asof-on').waitFor();
    await eventually(async () => (await admin.locator('at-users tbody tr', { hasText: 'bob' }).count()) === 0,
      { what: 'bob to be absent as of the event before his creation' });
    await admin.locator('at-users tbody tr', { hasText: alice.name }).waitFor();
    assert.equal(await admin.locator('#add-user button[type=submit]').isDisabled(), true, 'writes are off as of a past event');
    await admin.screenshot({ path: artifact('flow-admin-as-of.png'), fullPage: true });
    // The slider itself moves the view too: to the end is now again.
    await admin.getByRole('button', { name: 'Back to now' }).click();
    await admin.locator('at-users tbody tr', { hasText: 'bob' }).waitFor();
    // The slider, from the keyboard: Home is the first event, where only the first admin exists.
    await admin.locator('.asof input[type=range]').focus();
    await admin.keyboard.press('Home');
    await admin.locator('.asof-on', { hasText: '#1 ' }).waitFor();
    await eventually(async () => (await admin.locator('at-users tbody tr', { hasText: alice.name }).count()) === 0,
      { what: 'alice to be absent as of event 1' });
    await admin.locator('at-users tbody tr', { hasText: 'admin' }).waitFor();
    await admin.getByRole('button', { name: 'Back to now' }).click();
    await admin.locator('at-users tbody tr', { hasText: alice.name }).waitFor();
  });

  it('the console changes a user\'s roles, disables the user and deletes the user (after asking)', async () => {
    const bobId = (await broker.call('GET', '/v1/users')).json.items.find((u) => u.name === 'bob').id;
    const bob = admin.locator('at-users tbody tr', { hasText: 'bob' });
    await bob.locator('label', { hasText: 'agent' }).locator('input[type=checkbox]').check();
    await eventually(async () => (await broker.call('GET', `/v1/users/${bobId}`)).json.roles.includes('agent'), { what: 'bob to get the agent role' });
    await bob.getByRole('button', { name: 'Disable' }).click();
    await bob.locator('.badge.state-disabled').waitFor();
    assert.equal((await broker.call('GET', `/v1/users/${bobId}`)).json.disabled, true);
    await bob.getByRole('button', { name: 'Delete' }).click();
    await eventually(async () => (await bob.count()) === 0, { what: 'bob to go' });
    assert.equal((await broker.call('GET', `/v1/users/${bobId}`)).status, 404);
    assert.match(admin.confirms.at(-1), /^Delete: are you sure\?/);
  });

  it('a refused join shows its reason', async () => {
    const c = await broker.call('POST', '/v1/clusters', { name: 'farm' });
    const s = await broker.call('POST', '/v1/servers', { name: 'ts-01', address: '10.0.0.1', os_type: 'windows' });
    const a = await broker.call('POST', `/v1/servers/${s.json.id}/applications`, { name: 'Notepad', executable_path: 'C:\\Windows\\notepad.exe' });
    assert.equal(c.status, 201);
    assert.equal(a.status, 201);
    const p = await broker.call('POST', '/v1/publications', { application_id: a.json.id, scope: 'server', target_id: s.json.id });
    assert.equal(p.status, 201, p.text);
    await admin.click('nav.side a[href="#apps"]');
    const row = admin.locator('at-apps section[aria-labelledby=sv-h] tbody tr', { hasText: 'ts-01' });
    await row.waitFor();
    await row.getByRole('button', { name: 'Join' }).click();
    const alert = admin.getByRole('alert').filter({ hasText: 'join_publications_not_subset' });
    await alert.waitFor();
    assert.match(await alert.textContent(), /not all published in the cluster/);
    await admin.screenshot({ path: artifact('flow-admin-refusal.png'), fullPage: true });
  });

  it('the admin authorizes through the target picker; the user opens the app (.rdp), gets a message; the console says why that server', async () => {
    await admin.locator('#authorize select[name=publication_id]').selectOption({ label: 'Notepad @ ts-01' });
    await admin.locator('#authorize select[name=user_id]').selectOption({ label: alice.name });
    await admin.locator('#authorize').getByRole('button', { name: 'List targets' }).click();
    await admin.locator('#authorize select[name=target_id] option', { hasText: 'ts-01' }).waitFor({ state: 'attached' });
    await admin.locator('#authorize button[type=submit]').click();
    await admin.getByRole('status').filter({ hasText: 'Authorized.' }).waitFor();
    const servers = await broker.call('GET', '/v1/servers');
    const ts = servers.json.items.find((x) => x.name === 'ts-01');
    const rep = await broker.call('POST', `/v1/servers/${ts.id}/report`, { cpu_load: 0.2, memory_load: 0.3, sessions: 1 });
    assert.equal(rep.status, 200, rep.text);

    const user = await newPage(browser);
    await signIn(user, broker.base, '/', alice.name, alice.password);
    const tile = user.locator('li.tile', { hasText: 'Notepad' });
    await tile.waitFor();
    await user.evaluate(() => {
      const orig = URL.createObjectURL;
      window.__blobTypes = [];
      URL.createObjectURL = (b) => { window.__blobTypes.push(b.type); return orig.call(URL, b); };
    });
    await tile.getByRole('button', { name: 'Open Notepad' }).click();
    const save = user.getByRole('button', { name: /\.rdp/ });
    await save.waitFor();
    const [download] = await Promise.all([user.waitForEvent('download'), save.click()]);
    assert.equal(download.suggestedFilename(), 'Notepad.rdp');
    const rdp = readFileSync(await download.path(), 'utf8');
    assert.match(rdp, /remoteapplicationmode:i:1/);
    assert.match(rdp, /remoteapplicationprogram:s:.*notepad\.exe/i);
    assert.deepEqual(await user.evaluate(() => window.__blobTypes), ['application/x-rdp']);
    await user.screenshot({ path: artifact('flow-portal-app.png'), fullPage: true });
    assert.deepEqual(user.problems, []);
    await user.ctx.close();

    await admin.click('nav.side a[href="#sessions"]');
    const row = admin.locator('at-sessions tbody tr', { hasText: 'Notepad' });
    await row.waitFor();
    await row.getByRole('button', { name: 'Why this server' }).click();
    await admin.getByRole('heading', { name: 'Why ts-01' }).waitFor();
    await admin.locator('at-sessions section.card table tbody tr', { hasText: 'ts-01' }).waitFor();
    await admin.screenshot({ path: artifact('flow-admin-why.png'), fullPage: true });
    await admin.click('nav.side a[href="#apps"]');
  });

  it('the admin publishes through the publish target picker', async () => {
    const ts = (await broker.call('GET', '/v1/servers')).json.items.find((x) => x.name === 'ts-01');
    const calc = await broker.call('POST', `/v1/servers/${ts.id}/applications`, { name: 'Calc', executable_path: 'C:\\Windows\\calc.exe' });
    assert.equal(calc.status, 201, calc.text);
    await admin.locator('#publish select[name=application_id] option', { hasText: 'Calc' }).waitFor({ state: 'attached', timeout: 20000 });
    await admin.locator('#publish select[name=application_id]').selectOption({ label: 'Calc' });
    await admin.locator('#publish').getByRole('button', { name: 'List targets' }).click();
    await admin.locator('#publish select[name=target_id] option', { hasText: 'ts-01' }).waitFor({ state: 'attached' });
    await admin.locator('#publish button[type=submit]').click();
    await admin.getByRole('status').filter({ hasText: 'Published.' }).waitFor();
    const pubs = (await broker.call('GET', '/v1/publications')).json.items;
    assert.ok(pubs.some((p) => p.application_id === calc.json.id && p.scope === 'server' && p.target_id === ts.id), JSON.stringify(pubs));
  });

  it('copy as curl gives the same documented request, which works from a shell', async () => {
    await admin.locator('at-apps details summary', { hasText: 'Add cluster' }).click();
    await admin.locator('#add-cluster input[name=name]').fill('from-curl');
    await admin.locator('#add-cluster at-curl button').click();
    const cmd = await admin.locator('#add-cluster pre.curl').textContent();
    assert.match(cmd, /^curl -X POST -H "Authorization: Bearer \$TOKEN"/);
    assert.match(cmd, /\/v1\/clusters'$/);
    const out = execFileSync('bash', ['-c', `${cmd} -s`], { env: { ...process.env, TOKEN: broker.adminToken } }).toString();
    assert.equal(JSON.parse(out).name, 'from-curl');
    await admin.locator('at-apps section[aria-labelledby=cl-h] tbody tr', { hasText: 'from-curl' }).waitFor({ timeout: 20000 });
  });

  it('the admin publishes at cluster scope through the target picker', async () => {
    const cluster = (await broker.call('GET', '/v1/clusters')).json.items.find((c) => c.name === 'from-curl');
    const s2 = await broker.call('POST', '/v1/servers', { name: 'ts-02', address: '10.0.0.2', os_type: 'windows' });
    assert.equal(s2.status, 201, s2.text);
    const join = await broker.call('POST', `/v1/servers/${s2.json.id}/join`, { cluster_id: cluster.id });
    assert.equal(join.status, 200, join.text);
    const paint = await broker.call('POST', `/v1/servers/${s2.json.id}/applications`, { name: 'Paint', executable_path: 'C:\\Windows\\mspaint.exe' });
    assert.equal(paint.status, 201, paint.text);
    await admin.locator('#publish select[name=application_id] option', { hasText: 'Paint' }).waitFor({ state: 'attached', timeout: 20000 });
    await admin.locator('#publish select[name=application_id]').selectOption({ label: 'Paint' });
    await admin.locator('#publish select[name=scope]').selectOption('cluster');
    await admin.locator('#publish').getByRole('button', { name: 'List targets' }).click();
    await admin.locator('#publish select[name=target_id] option', { hasText: 'from-curl' }).waitFor({ state: 'attached' });
    assert.equal(await admin.locator('#publish select[name=target_id] option').count(), 1, 'only the cluster whose server has Paint');
    await admin.locator('#publish button[type=submit]').click();
    // (The status still says "Published." from the scenario before: ask the broker.)
    await eventually(async () => (await broker.call('GET', '/v1/publications')).json.items
      .some((p) => p.application_id === paint.json.id && p.scope === 'cluster' && p.target_id === cluster.id), { what: 'the cluster publication' });
    await admin.locator('section[aria-labelledby=pb-h] tbody tr', { hasText: 'Paint' }).filter({ hasText: 'cluster' }).filter({ hasText: 'from-curl' }).waitFor();
  });

  it('the agents page: a token made in the console enrolls an agent, whose registration follows live (soft, then hard when bound); revoked from the console', async () => {
    const srv = await broker.call('POST', '/v1/servers', { name: 'agent-srv', address: '10.0.0.9', os_type: 'linux' });
    assert.equal(srv.status, 201, srv.text);
    await admin.click('nav.side a[href="#agents"]');
    await admin.getByRole('heading', { name: 'Agents' }).waitFor();
    // An enrollment token for a server agent bound later, made in the console: shown once.
    await admin.locator('#add-token select[name=for]').selectOption({ label: 'a server agent, bound later' });
    await admin.locator('#add-token button[type=submit]').click();
    await admin.getByRole('status').filter({ hasText: 'Enrollment token created.' }).waitFor();
    const token = await admin.locator('input.secret').inputValue();
    assert.ok(token.length >= 16, `a token: ${token}`);
    const listed = await broker.call('GET', '/v1/agents/enrollment-tokens');
    assert.equal(listed.json.items.length, 1);
    assert.doesNotMatch(listed.text, new RegExp(token), 'the list never holds the secret');
    await admin.locator('section[aria-labelledby=tok-h] tbody tr', { hasText: '0 of 1 used' }).waitFor();

    // The agent, as atrium-agent does on its first start (tests/support/agents.h): enroll
    // with the token (public), then register and heartbeat with its credential.
    const agentCall = async (path, body, credential) => {
      const res = await fetch(broker.base + path, { method: 'POST', body: JSON.stringify(body),
        headers: { 'Content-Type': 'application/json', ...(credential ? { Authorization: `Bearer ${credential}` } : {}) } });
      return { status: res.status, json: await res.json().catch(() => null) };
    };
    const e = await agentCall('/v1/agents/enroll', { token, hostname: 'agent-host-01', os: 'linux', agent_version: 'web-test', machine_id: 'web-test-machine-1' });
    assert.equal(e.status, 201, JSON.stringify(e.json));
    const { id, credential } = e.json;
    assert.equal(e.json.registration, 'enrolled');
    const row = admin.locator(`at-agents tbody tr[data-agent="${id}"]`);
    // Enrollment and registration are events: the open page follows them without a reload.
    await admin.evaluate(() => { window.__notReloaded = true; });
    await row.locator('.badge.state-enrolled').waitFor({ timeout: 20000 });
    await admin.locator('section[aria-labelledby=tok-h] tbody tr', { hasText: '1 of 1 used' }).waitFor();
    const reg = await agentCall(`/v1/agents/${id}/register`, {}, credential);
    assert.equal(reg.status, 200, JSON.stringify(reg.json));
    assert.equal(reg.json.registration, 'soft');
    const hb = await agentCall(`/v1/agents/${id}/heartbeat`, { cpu_load: 0.25, memory_load: 0.5, disk_free_bytes: 1000 }, credential);
    assert.equal(hb.status, 200, JSON.stringify(hb.json));
    await row.locator('.badge.state-soft').waitFor({ timeout: 20000 });
    assert.match(await row.textContent(), /not bound/);
    await admin.screenshot({ path: artifact('flow-admin-agent-soft.png'), fullPage: true });

    // Bound to the server from the console: hard at once, with no request from the agent.
    await row.locator('select[name=target]').selectOption({ label: 'agent-srv' });
    await row.getByRole('button', { name: 'Bind' }).click();
    await admin.getByRole('status').filter({ hasText: 'Agent bound.' }).waitFor();
    await row.locator('.badge.state-hard').waitFor();
    assert.match(await row.textContent(), /server agent-srv/);
    // The heartbeat's figures (from the broker's memory) and its time.
    assert.match(await row.textContent(), /CPU 25%, memory 50%, 0 sessions/);
    assert.doesNotMatch(await row.locator('td').nth(4).textContent(), /—/);
    const bound = await broker.call('GET', `/v1/agents/${id}`);
    assert.equal(bound.json.registration, 'hard');
    assert.equal(bound.json.server_id, srv.json.id);
    assert.equal(await admin.evaluate(() => window.__notReloaded), true);
    await admin.screenshot({ path: artifact('flow-admin-agent-hard.png'), fullPage: true });

    // Revoked from the console (after asking): the credential stops at once.
    await row.getByRole('button', { name: 'Revoke' }).click();
    await admin.getByRole('status').filter({ hasText: 'Revoked.' }).waitFor();
    assert.match(admin.confirms.at(-1), new RegExp(`^Revoke: are you sure\\? \\(DELETE /v1/agents/${id}\\)$`));
    await row.locator('.badge.state-revoked').waitFor();
    assert.equal(await row.getByRole('button', { name: 'Revoke' }).count(), 0);
    const after = await agentCall(`/v1/agents/${id}/heartbeat`, { cpu_load: 0.1, memory_load: 0.1 }, credential);
    assert.equal(after.status, 403);
    assert.equal(after.json.reason, 'agent_revoked');

    // A token for any VM of a pool (golden images): its agent, on a machine no VM of the pool
    // has (its UUID is no domain's), is soft and bound to the pool; it stays in the registry
    // for the pages' screenshots below.
    await admin.locator('#add-token select[name=for]').selectOption({ label: 'any VM of pool Office' });
    await admin.locator('#add-token button[type=submit]').click();
    await admin.locator('section[aria-labelledby=tok-h] tbody tr', { hasText: 'any VM of pool Office' }).waitFor();
    const poolToken = await admin.locator('input.secret').inputValue();
    assert.notEqual(poolToken, token, 'a new token shown');
    const v = await agentCall('/v1/agents/enroll', { token: poolToken, hostname: 'desktop-golden', os: 'linux', agent_version: 'web-test', machine_id: '0badc0de-0000-4000-8000-000000000001' });
    assert.equal(v.status, 201, JSON.stringify(v.json));
    assert.equal((await agentCall(`/v1/agents/${v.json.id}/register`, {}, v.json.credential)).json.registration, 'soft');
    const vrow = admin.locator(`at-agents tbody tr[data-agent="${v.json.id}"]`);
    await vrow.locator('.badge.state-soft').waitFor({ timeout: 20000 });
    assert.match(await vrow.textContent(), /desktop VM/);
    assert.match(await vrow.textContent(), /any VM of pool Office/);
  });

  it('a refused sign-in shows its reason (wrong password, then throttled); a token ended elsewhere returns to the sign-in', async () => {
    const page = await newPage(browser);
    await page.goto(`${broker.base}/admin`);
    const attempt = async () => {
      await page.locator('input[name=name]').fill('mallory');
      await page.locator('input[name=password]').fill('not-the-password');
      await page.locator('input[name=password]').press('Enter');
    };
    await attempt();
    await page.locator('.problem', { hasText: 'bad_credentials' }).waitFor();
    // The broker throttles a name after --login-failures-per-user (10) failures in a minute.
    let throttled = false;
    for (let i = 0; i < 12 && !throttled; i++) {
      await attempt();
      await page.locator('.problem').waitFor();
      await page.locator('button[type=submit]:not([disabled])').waitFor();
      throttled = (await page.locator('.problem', { hasText: 'login_throttled' }).count()) === 1;
    }
    assert.ok(throttled, 'the sign-in page shows login_throttled');
    assert.match(await page.locator('.problem').textContent(), /Too many failed sign-ins/);

    // A console whose token is revoked by another client (as an expiry would) goes back to
    // the sign-in at its next request, saying why.
    let token;
    page.on('response', async (r) => {
      if (r.url().endsWith('/v1/auth/login') && r.status() === 200) token = (await r.json()).token;
    });
    await signIn(page, broker.base, '/admin', 'admin', broker.adminPassword);
    assert.equal((await broker.call('POST', '/v1/auth/logout', undefined, token)).status, 204);
    // The revocation is an event: the live view's reload or the next long-poll meets the 401
    // by itself; a click may come first.
    await page.click('nav.side a[href="#users"]', { timeout: 2000 }).catch(() => {});
    await page.getByRole('heading', { name: 'Sign in to the admin console' }).waitFor();
    await page.getByRole('status').filter({ hasText: 'Your session has ended' }).locator('code.reason', { hasText: 'token_invalid' }).waitFor();
    await page.screenshot({ path: artifact('flow-signin-ended.png') });
    assert.deepEqual(page.problems, []);
    await page.ctx.close();
  });

  it('sign-out revokes the token', async () => {
    const before = await broker.call('GET', '/v1/users', undefined, adminToken);
    assert.equal(before.status, 200);
    await admin.getByRole('button', { name: 'Sign out' }).click();
    await admin.getByRole('heading', { name: 'Sign in to the admin console' }).waitFor();
    const afterOut = await broker.call('GET', '/v1/users', undefined, adminToken);
    assert.equal(afterOut.status, 401);
    assert.equal(afterOut.json.reason, 'token_invalid');
    assert.deepEqual(admin.problems, []);
    await admin.ctx.close();
  });

  it('works with the keyboard alone', async () => {
    const page = await newPage(browser);
    await page.goto(`${broker.base}/admin`);
    await page.locator('input[name=name]').waitFor();
    const focused = () => page.evaluate(() => document.activeElement?.getAttribute('name') || document.activeElement?.textContent?.trim());
    // The name field has focus on load; type, tab, type, Enter.
    assert.equal(await focused(), 'name');
    await page.keyboard.type('admin');
    await page.keyboard.press('Tab');
    await page.keyboard.type(broker.adminPassword);
    await page.keyboard.press('Enter');
    await page.locator('at-admin h1').waitFor();
    // Tab through the page to the Users link and follow it.
    let found = false;
    for (let i = 0; i < 40 && !found; i++) {
      await page.keyboard.press('Tab');
      found = (await focused()) === 'Users';
    }
    assert.ok(found, 'the Users link is reachable with Tab');
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: 'Users' }).waitFor();
    // A create form opens from the keyboard too.
    for (let i = 0; i < 40; i++) {
      await page.keyboard.press('Tab');
      if ((await focused()) === 'Create user') break;
    }
    await page.keyboard.press('Enter');
    await page.locator('#add-user input[name=name]').waitFor({ state: 'visible' });
    await page.ctx.close();
  });

  it('speaks English, Simplified Chinese and Russian, chosen from the browser and switchable', async () => {
    const keys = (code) => Object.keys(JSON.parse(readFileSync(join(webRoot, 'public', `i18n-${code}.json`), 'utf8'))).sort();
    assert.deepEqual(keys('zh-CN'), keys('en'));
    assert.deepEqual(keys('ru'), keys('en'));
    for (const [locale, heading] of [['zh-CN', '登录 Atrium'], ['ru-RU', 'Вход в Atrium'], ['en-US', 'Sign in to Atrium']]) {
      const page = await newPage(browser, { locale });
      await page.goto(broker.base);
      await page.getByRole('heading', { name: heading }).waitFor();
      await page.ctx.close();
    }
    const page = await newPage(browser, { locale: 'ru-RU' });
    await page.goto(broker.base);
    await page.getByRole('combobox', { name: 'Язык' }).selectOption('zh-CN');
    await page.getByRole('heading', { name: '登录 Atrium' }).waitFor();
    assert.equal(await page.evaluate(() => document.documentElement.lang), 'zh-CN');
    await page.ctx.close();
  });

  for (const theme of ['light', 'dark']) {
    it(`every page passes axe-core with no serious or critical issue (${theme}), with screenshots`, async () => {
      const found = [];
      const page = await newPage(browser, { colorScheme: theme });
      await page.goto(`${broker.base}/admin`);
      await page.locator('input[name=name]').waitFor();
      found.push(...(await axe(page)).map((v) => `sign-in: ${v}`));
      await page.screenshot({ path: artifact(`${theme}-signin.png`) });
      await signIn(page, broker.base, '/admin', 'admin', broker.adminPassword);
      for (const p of ADMIN_PAGES) {
        await page.click(`nav.side a[href="#${p}"]`);
        await page.locator(`at-admin .content h1`).waitFor();
        await page.waitForTimeout(600);  // the view's reads (a long-poll keeps the network busy)
        // Open the forms and details, so they are checked too.
        for (const s of await page.locator('.content details > summary').all()) await s.click();
        found.push(...(await axe(page)).map((v) => `${p}: ${v}`));
        await page.screenshot({ path: artifact(`${theme}-admin-${p}.png`), fullPage: true });
      }
      await page.click('header a[href="/"]');
      await page.locator('at-portal h1').waitFor();
      await page.waitForTimeout(500);
      // alice's application session is live, but "My sessions" is the admin's own (none).
      await page.locator('at-portal section[aria-labelledby=sess-h] p.empty').waitFor();
      assert.equal(await page.locator('at-portal section[aria-labelledby=sess-h] tbody tr').count(), 0);
      // Nor does the admin get a tile for a pool only alice is entitled to (launching it is 403).
      await page.locator('at-portal section[aria-labelledby=desk-h] p.empty').waitFor();
      found.push(...(await axe(page)).map((v) => `portal: ${v}`));
      await page.screenshot({ path: artifact(`${theme}-portal.png`), fullPage: true });
      assert.deepEqual(page.problems, []);
      await page.getByRole('button', { name: 'Sign out' }).click();
      await page.ctx.close();
      const user = await newPage(browser, { colorScheme: theme, locale: theme === 'light' ? 'zh-CN' : 'ru-RU' });
      await signIn(user, broker.base, '/', alice.name, alice.password);
      await user.locator('li.tile').first().waitFor();
      found.push(...(await axe(user)).map((v) => `portal (${theme === 'light' ? 'zh-CN' : 'ru'}): ${v}`));
      await user.screenshot({ path: artifact(`${theme}-portal-${theme === 'light' ? 'zh-CN' : 'ru'}.png`), fullPage: true });
      await user.ctx.close();
      assert.deepEqual(found, []);
    });
  }

  it('the sessions page logs off a live application session', async () => {
    const page = await newPage(browser);
    await signIn(page, broker.base, '/admin', 'admin', broker.adminPassword);
    await page.click('nav.side a[href="#sessions"]');
    const row = page.locator('at-sessions tbody tr', { hasText: 'Notepad' });
    await row.locator('.badge.state-active').waitFor();
    await row.getByRole('button', { name: 'Log off', exact: true }).click();
    await row.locator('.badge.state-ended').waitFor({ timeout: 20000 });
    const apps = await broker.call('GET', '/v1/sessions?kind=application');
    assert.ok(apps.json.items.every((x) => x.state === 'ended'), apps.text);
    assert.deepEqual(page.problems, []);
    await page.ctx.close();
  });

  // ---- two-factor sign-in (TOTP) -------------------------------------------------------
  it('two-factor: a user enrolls from the QR code and signs in with a code (a wrong one refused); the admin resets it and requires it by role, which forces enrollment', async () => {
    const tina = { name: 'tina', password: 'tina-password-1' };
    const made = await broker.call('POST', '/v1/users', { ...tina, roles: ['user'] });
    assert.equal(made.status, 201, made.text);
    const tinaId = made.json.id;
    const found = [];
    // Enrollment as the page shows it: the QR code decoded from its pixels must be the URI
    // the broker answered, the secret shown must be the URI's; then the first code confirms
    // and the recovery codes are shown once and copied.
    const enroll = async (page, label) => {
      const answer = page.waitForResponse((r) => r.url().endsWith('/v1/me/totp') && r.request().method() === 'POST');
      await page.getByRole('button', { name: 'Set up an authenticator' }).click();
      const en = await (await answer).json();
      assert.match(en.otpauth_uri, /^otpauth:\/\/totp\/Atrium:tina\?secret=[A-Z2-7]+&/);
      const img = page.getByRole('img', { name: /QR code of your authenticator key/ });
      await img.waitFor();
      assert.equal(decodeQr(await pixels(img)), en.otpauth_uri, 'the QR code in the page carries the otpauth URI');
      const shown = (await page.locator('code.secret').textContent()).replace(/\s+/g, '');
      assert.equal(shown, en.secret);
      assert.equal(new URL(en.otpauth_uri).searchParams.get('secret'), shown);
      found.push(...(await axe(page)).map((v) => `security (${label}, QR): ${v}`));
      await page.screenshot({ path: artifact(`${label}-security-enroll.png`), fullPage: true });
      // A wrong first code is refused in the page; the right one enables TOTP.
      await page.getByLabel('The 6-digit code the app shows').fill(wrongCode(en.secret));
      await page.getByRole('button', { name: 'Confirm' }).click();
      await page.locator('.problem', { hasText: 'totp_invalid' }).waitFor();
      await page.getByLabel('The 6-digit code the app shows').fill(totp(en.secret));
      await page.getByRole('button', { name: 'Confirm' }).click();
      await page.getByRole('heading', { name: 'Your recovery codes' }).waitFor();
      const codes = await texts(page, '.recovery-codes code');
      assert.equal(codes.length, 10);
      assert.ok(codes.every((c) => /^[0-9a-f]{5}-[0-9a-f]{5}$/.test(c)), codes.join(' '));
      await page.getByRole('button', { name: 'Copy the codes' }).click();
      await page.getByText('Copied to the clipboard.').waitFor();
      assert.equal(await page.evaluate(() => navigator.clipboard.readText()), codes.join('\n'));
      found.push(...(await axe(page)).map((v) => `security (${label}, recovery codes): ${v}`));
      return { secret: en.secret, codes };
    };
    const context = { permissions: ['clipboard-read', 'clipboard-write'] };

    // 1. Tina enrolls from the portal's two-factor page.
    let page = await newPage(browser, context);
    await signIn(page, broker.base, '/', tina.name, tina.password);
    await page.getByRole('link', { name: 'Two-factor sign-in' }).click();
    await page.getByText('Two-factor sign-in is off for your account.').waitFor();
    const { secret, codes } = await enroll(page, 'light');
    await page.getByRole('button', { name: 'I saved them' }).click();
    await page.getByText('Two-factor sign-in is on for your account.').waitFor();
    assert.equal((await broker.call('GET', `/v1/users/${tinaId}`)).json.totp.enabled, true);
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByRole('link', { name: 'Skip to content' }).waitFor({ state: 'attached' });
    await page.goto(broker.base);  // the portal's front page, not #security

    // 2. The password alone now asks for the code; a wrong one is refused visibly, the
    // right one (typed, focus already in the field) signs in.
    const second = async () => {
      await page.locator('input[name=name]').fill(tina.name);
      await page.locator('input[name=password]').fill(tina.password);
      await page.locator('input[name=password]').press('Enter');
      await page.getByRole('heading', { name: 'Enter your authenticator code' }).waitFor();
    };
    await second();
    assert.equal(await page.evaluate(() => document.activeElement?.getAttribute('name')), 'totp_code');
    found.push(...(await axe(page)).map((v) => `sign-in code step: ${v}`));
    await page.keyboard.type(wrongCode(secret));
    await page.keyboard.press('Enter');
    await page.locator('.problem', { hasText: 'totp_invalid' }).waitFor();
    assert.match(await page.locator('.problem').textContent(), /Wrong or already used code/);
    await eventually(() => page.evaluate(() => document.activeElement?.getAttribute('name') === 'totp_code'),
      { what: 'the code field to have focus again' });
    await page.screenshot({ path: artifact('flow-signin-totp-invalid.png') });
    await page.keyboard.type(totp(secret));
    await page.keyboard.press('Enter');
    await page.locator('at-portal h1').waitFor();
    await page.getByRole('button', { name: 'Sign out' }).click();
    // A recovery code instead of the code, once.
    await second();
    await page.getByRole('button', { name: 'Use a recovery code instead' }).click();
    await page.getByLabel('Recovery code').fill(codes[4]);
    await page.getByLabel('Recovery code').press('Enter');
    await page.locator('at-portal h1').waitFor();
    await page.getByRole('button', { name: 'Sign out' }).click();
    assert.deepEqual(page.problems, []);
    await page.ctx.close();

    // 3. The console shows tina's second factor, requires it for her and resets it.
    const console_ = await newPage(browser);
    await signIn(console_, broker.base, '/admin', 'admin', broker.adminPassword);
    await console_.click('nav.side a[href="#users"]');
    const row = console_.locator('at-users tbody tr', { hasText: 'tina' });
    await row.locator('.badge.state-totp_on').waitFor();
    await row.getByLabel('Two-factor required for tina').check();
    await eventually(async () => (await broker.call('GET', `/v1/users/${tinaId}`)).json.totp.required_for_user === true,
      { what: 'tina to be required TOTP' });
    await row.getByLabel('Two-factor required for tina').uncheck();
    await eventually(async () => (await broker.call('GET', `/v1/users/${tinaId}`)).json.totp.required === false,
      { what: 'tina to be required TOTP no more' });
    await row.getByRole('button', { name: 'Reset two-factor' }).click();
    await row.locator('.badge.state-totp_off').waitFor();
    assert.ok(console_.confirms.some((m) => m.includes(`DELETE /v1/users/${tinaId}/totp`)), console_.confirms.join('\n'));
    assert.equal((await broker.call('GET', `/v1/users/${tinaId}`)).json.totp.enabled, false);
    page = await newPage(browser, context);
    await signIn(page, broker.base, '/', tina.name, tina.password);  // no code asked
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.ctx.close();

    // 4. The per-role policy (saved in the console, with its curl) forces enrollment: tina's
    // sign-in leads into it (dark theme), and the portal opens once it is confirmed.
    const policy = console_.locator('#totp-policy');
    await policy.getByLabel('user', { exact: true }).check();
    await policy.getByRole('button', { name: 'Copy as curl' }).click();
    assert.match(await policy.locator('pre.curl').textContent(), /-X PUT .*"required_roles":\["user"\].*\/v1\/totp-policy'$/);
    await policy.getByRole('button', { name: 'Save' }).click();
    await console_.getByText('Two-factor policy saved.').waitFor();
    assert.deepEqual((await broker.call('GET', '/v1/totp-policy')).json.required_roles, ['user']);
    await row.getByText('(by role)').waitFor();
    page = await newPage(browser, { ...context, colorScheme: 'dark' });
    await page.goto(broker.base);
    await page.locator('input[name=name]').fill(tina.name);
    await page.locator('input[name=password]').fill(tina.password);
    await page.locator('input[name=password]').press('Enter');
    await page.getByText('Your administrator requires two-factor sign-in for your account').waitFor();
    assert.equal(await page.locator('at-portal').count(), 0);
    await enroll(page, 'dark');
    await page.getByRole('button', { name: 'I saved them: continue' }).click();
    await page.locator('at-portal h1').waitFor();
    assert.equal((await broker.call('GET', `/v1/users/${tinaId}`)).json.totp.enabled, true);
    assert.deepEqual(page.problems, []);
    await page.ctx.close();
    // Back as it was for the scenarios after this one.
    assert.equal((await broker.call('PUT', '/v1/totp-policy', { required_roles: [] })).status, 200);
    assert.deepEqual(console_.problems, []);
    await console_.ctx.close();
    assert.deepEqual(found, []);
  });

  it('measures the page weight and the load time of the portal', async () => {
    const page = await newPage(browser);
    let bytes = 0;
    const files = [];
    page.on('response', async (r) => {
      if (!r.url().startsWith(broker.base)) return;
      const body = await r.body().catch(() => Buffer.alloc(0));
      bytes += body.length;
      files.push(`${new URL(r.url()).pathname} ${body.length}`);
    });
    const t0 = Date.now();
    await page.goto(broker.base);
    await page.locator('input[name=name]').waitFor();
    figures.portal_first_load_ms = Date.now() - t0;
    await page.waitForTimeout(500);
    figures.portal_sign_in_page_bytes = bytes;
    figures.portal_sign_in_page_files = files.length;
    const nav = await page.evaluate(() => performance.getEntriesByType('navigation')[0].toJSON());
    figures.dom_content_loaded_ms = Math.round(nav.domContentLoadedEventEnd);
    await signIn(page, broker.base, '/admin', 'admin', broker.adminPassword);
    await page.waitForTimeout(1000);
    figures.console_total_bytes_after_sign_in = bytes;
    figures.console_files = files.length;
    console.log(`# figures ${JSON.stringify(figures)}`);
    await page.ctx.close();
  });

  // Last: what every page above sent. No route exists only for the UI, and the pages use
  // no route openapi.yaml does not document.
  it('the pages called only operations that openapi.yaml documents', () => {
    const ops = documentedOperations();
    const undocumented = [...calls].filter((c) => {
      const [method, path] = c.split(' ');
      return !ops.some(([m, re]) => m === method && re.test(path));
    });
    assert.deepEqual(undocumented, []);
    assert.ok(calls.size > 30, `only ${calls.size} distinct calls recorded`);
    figures.distinct_calls = calls.size;
  });
});
