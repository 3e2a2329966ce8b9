// The user portal: tiles for the desktops (pools) and applications the user may launch,
// launches with their progress and connection files, the user's sessions, and the admin's
// messages and commands (GET /v1/me/notifications, long-poll).
import { html, svg, nothing } from './lit.js';
import * as api from './api.js';
import * as live from './live.js';
import { t, fmtTime } from './i18n.js';
import { LightElement, problem, download, stateBadge, fileName } from './ui.js';

const STEPS = ['requested', 'assigned', 'powering_on', 'running', 'ticket'];

// Tile icons drawn with SVG (no icon font, no emoji font needed).
const ICON = {
  desktop: svg`<svg class="tile-icon" viewBox="0 0 24 24" width="28" height="28" aria-hidden="true"><rect x="2" y="3" width="20" height="13" rx="2"></rect><path d="M8 21h8M12 16v5"></path></svg>`,
  app: svg`<svg class="tile-icon" viewBox="0 0 24 24" width="28" height="28" aria-hidden="true"><rect x="3" y="3" width="7" height="7" rx="1"></rect><rect x="14" y="3" width="7" height="7" rx="1"></rect><rect x="3" y="14" width="7" height="7" rx="1"></rect><rect x="14" y="14" width="7" height="7" rx="1"></rect></svg>`,
};

class Portal extends LightElement {
  static properties = {
    pools: { state: true }, apps: { state: true }, sessions: { state: true },
    query: { state: true }, launch: { state: true }, error: { state: true },
    notices: { state: true }, now: { state: true }, loaded: { state: true },
  };

  constructor() {
    super();
    this.pools = [];
    this.apps = [];
    this.sessions = [];
    this.notices = [];
    this.query = '';
    this.launch = null;
    this.now = Date.now();
  }

  connectedCallback() {
    super.connectedCallback();
    this.load();
    this.startNotifications();
    this.clock = setInterval(() => { this.now = Date.now(); }, 1000);
  }

  disconnectedCallback() {
    super.disconnectedCallback();
    clearInterval(this.clock);
    if (live.following() === '/v1/me/notifications') live.stop();
  }

  async load() {
    // My sessions are mine alone: an admin's GET /v1/sessions lists everyone's.
    try {
      const [pools, apps, sessions] = await Promise.all([
        api.getAll('/v1/pools'), api.getAll('/v1/me/entitlements'), api.getAll('/v1/sessions', { user_id: api.signedIn()?.user_id }),
      ]);
      // An admin's GET /v1/pools lists every pool, with its entitled users: the tiles are
      // the pools this user may launch (a user's list holds only those already).
      const me = api.signedIn()?.user_id;
      this.pools = pools.filter((p) => !Array.isArray(p.entitled_users) || p.entitled_users.includes(me));
      this.apps = apps;
      this.sessions = sessions.filter((s) => s.state !== 'ended');
      this.loaded = true;
    } catch (e) {
      this.error = e;
    }
  }

  async startNotifications() {
    // From now on: an old command (say, logoff) must not act again at sign-in.
    let after = 0;
    try { after = (await api.send({ ...api.request('GET', '/readyz'), public: true })).data.position; } catch { /* from 0 */ }
    live.follow('/v1/me/notifications', after, (ev) => this.notice(ev));
  }

  notice(ev) {
    const d = ev.data || {};
    const n = { id: ev.id, kind: ev.type, text: d.text || '', command: d.command || '', at: d.at_ms };
    this.notices = [n, ...this.notices].slice(0, 20);
    if (n.command) this.load();
  }

  poolName(id) { return this.pools.find((p) => p.id === id)?.name || id; }
  appName(id) { return this.apps.find((a) => a.application_id === id)?.name || id; }

  async launchDesktop(pool) {
    const started = Date.now();
    this.launch = { kind: 'desktop', name: pool.name, pool_id: pool.id, step: 'requested', error: null };
    const known = new Set(this.sessions.map((s) => s.id));
    // While the broker assigns and powers on the desktop, the user's own session list says
    // how far it got.
    const watch = setInterval(async () => {
      try {
        const mine = await api.get('/v1/sessions', { kind: 'desktop', user_id: api.signedIn()?.user_id, limit: 1000 });
        const s = mine.items.find((x) => x.pool_id === pool.id && x.state !== 'ended' &&
                                        (!known.has(x.id) || x.updated_at_ms >= started));
        if (s && this.launch?.step === 'requested') this.launch = { ...this.launch, step: 'assigned', vm_id: s.vm_id };
        else if (s && this.launch?.step === 'assigned') this.launch = { ...this.launch, step: 'powering_on' };
      } catch { /* the launch answer tells */ }
    }, 600);
    try {
      const answer = await api.call('POST', '/v1/launches', { body: { pool_id: pool.id } });
      this.launch = { ...this.launch, step: 'ticket', answer };
    } catch (e) {
      this.launch = { ...this.launch, error: e };
    } finally {
      clearInterval(watch);
      this.load();
    }
  }

  async launchApp(app) {
    this.launch = { kind: 'application', name: app.name, step: 'requested', error: null };
    try {
      const answer = await api.call('POST', '/v1/launches', { body: { application_id: app.application_id } });
      this.launch = { ...this.launch, step: 'ticket', answer };
    } catch (e) {
      this.launch = { ...this.launch, error: e };
    } finally {
      this.load();
    }
  }

  saveFile() {
    const { answer, kind, name } = this.launch;
    if (kind === 'desktop') download(fileName(name, 'vv'), 'application/x-virt-viewer', answer.connection_file);
    else download(fileName(name, 'rdp'), 'application/x-rdp', answer.connection_file);
  }

  async logoff(s) {
    try {
      await api.call('DELETE', `/v1/sessions/${encodeURIComponent(s.id)}`);
      this.error = null;
    } catch (e) { this.error = e; }
    this.load();
  }

  reconnect(s) {
    const pool = this.pools.find((p) => p.id === s.pool_id) || { id: s.pool_id, name: this.poolName(s.pool_id) };
    this.launchDesktop(pool);
  }

  tiles() {
    const q = this.query.trim().toLowerCase();
    const match = (name) => !q || name.toLowerCase().includes(q);
    const desks = this.pools.filter((p) => match(p.name));
    const apps = this.apps.filter((a) => match(a.name));
    const busy = this.launch && !this.launch.answer && !this.launch.error;
    return html`
      <section aria-labelledby="desk-h">
        <h2 id="desk-h">${t('portal.desktops')}</h2>
        ${desks.length ? html`<ul class="tiles">${desks.map((p) => html`<li class="tile">
          ${ICON.desktop}
          <span class="tile-name">${p.name}</span>
          <span class="tile-kind">${t(`pool.kind.${p.kind}`)}</span>
          <button type="button" ?disabled=${busy} @click=${() => this.launchDesktop(p)}
                  aria-label=${t('portal.launch_named', { name: p.name })}>${t('portal.launch')}</button>
        </li>`)}</ul>` : html`<p class="empty">${this.loaded ? t('portal.no_desktops') : '…'}</p>`}
      </section>
      <section aria-labelledby="app-h">
        <h2 id="app-h">${t('portal.applications')}</h2>
        ${apps.length ? html`<ul class="tiles">${apps.map((a) => html`<li class="tile">
          ${ICON.app}
          <span class="tile-name">${a.name}</span>
          <span class="tile-kind">${a.description || (a.where || []).map((w) => w.name).join(', ')}</span>
          <button type="button" ?disabled=${busy} @click=${() => this.launchApp(a)}
                  aria-label=${t('portal.open_named', { name: a.name })}>${t('portal.open')}</button>
        </li>`)}</ul>` : html`<p class="empty">${this.loaded ? t('portal.no_apps') : '…'}</p>`}
      </section>`;
  }

  launchPanel() {
    const l = this.launch;
    if (!l) return nothing;
    const at = STEPS.indexOf(l.step);
    const a = l.answer;
    const left = a?.expires_at_ms ? Math.max(0, Math.round((a.expires_at_ms - this.now) / 1000)) : null;
    return html`<section class="card launch" aria-labelledby="launch-h">
      <h2 id="launch-h">${t('portal.launching', { name: l.name })}</h2>
      ${l.kind === 'desktop' ? html`<ol class="steps" aria-live="polite">
        ${STEPS.map((s, i) => html`<li class=${i < at || a ? 'done' : i === at && !l.error ? 'current' : ''}
            aria-current=${i === at && !a ? 'step' : 'false'}>${t(`launch.${s}`)}</li>`)}
      </ol>` : nothing}
      ${l.error ? problem(l.error) : nothing}
      ${a ? html`<div class="ready" role="status">
        <p>${l.kind === 'desktop'
          ? t('portal.desktop_ready', { host: a.host, port: a.port })
          : t('portal.app_ready', { server: a.server?.name || '' })}</p>
        ${a.reconnected ? html`<p>${t('portal.reconnected')}</p>` : nothing}
        ${left !== null ? html`<p class=${left < 30 ? 'warn' : ''}>${left > 0
          ? t('portal.ticket_expires', { s: left, at: fmtTime(a.expires_at_ms) })
          : t('portal.ticket_expired')}</p>` : nothing}
        ${a.ticket_applied === false ? html`<p class="note">${a.ticket_note || ''}</p>` : nothing}
        <button type="button" @click=${() => this.saveFile()}>${l.kind === 'desktop' ? t('portal.download_vv') : t('portal.download_rdp')}</button>
        <button type="button" class="secondary" @click=${() => { this.launch = null; }}>${t('common.close')}</button>
      </div>` : nothing}
    </section>`;
  }

  sessionList() {
    return html`<section aria-labelledby="sess-h">
      <h2 id="sess-h">${t('portal.my_sessions')}</h2>
      ${this.sessions.length ? html`<table><thead><tr>
          <th scope="col">${t('common.name')}</th><th scope="col">${t('common.state')}</th>
          <th scope="col">${t('common.since')}</th><th scope="col"><span class="visually-hidden">${t('common.actions')}</span></th>
        </tr></thead><tbody>
        ${this.sessions.map((s) => html`<tr>
          <td>${s.kind === 'desktop' ? this.poolName(s.pool_id) : this.appName(s.application_id)}</td>
          <td>${stateBadge(s.state)}</td>
          <td>${fmtTime(s.created_at_ms || s.decided_at_ms)}</td>
          <td class="actions">
            ${s.kind === 'desktop' ? html`<button type="button" class="small" @click=${() => this.reconnect(s)}>${t('portal.reconnect')}</button>` : nothing}
            <button type="button" class="small secondary" @click=${() => this.logoff(s)}>${t('portal.logoff')}</button>
          </td></tr>`)}
        </tbody></table>` : html`<p class="empty">${t('portal.no_sessions')}</p>`}
    </section>`;
  }

  noticeList() {
    return html`<section aria-labelledby="note-h" class="notices">
      <h2 id="note-h">${t('portal.notifications')}</h2>
      <ul aria-live="polite">${this.notices.map((n) => html`<li class=${`notice ${n.kind}`}>
        <span class="when">${fmtTime(n.at)}</span>
        ${n.kind === 'message' ? n.text : t(`portal.command.${n.command}`)}
        ${n.command === 'reconnect' ? html`<span>${t('portal.command.reconnect_hint')}</span>` : nothing}
      </li>`)}</ul>
      ${this.notices.length ? nothing : html`<p class="empty">${t('portal.no_notifications')}</p>`}
    </section>`;
  }

  render() {
    return html`<h1>${t('portal.title')}</h1>
      <div class="searchbar"><label>${t('portal.search')}
        <input type="search" .value=${this.query} @input=${(e) => { this.query = e.target.value; }}></label></div>
      ${problem(this.error)}
      ${this.launchPanel()}
      <div class="portal-grid"><div>${this.tiles()}${this.sessionList()}</div>${this.noticeList()}</div>`;
  }
}
customElements.define('at-portal', Portal);
