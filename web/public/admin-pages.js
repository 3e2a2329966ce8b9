// The admin console's views. Each reads with ?as_of= when the time slider is set (then
// writes are off), reloads on live events, and offers "copy as curl" for every action. Live
// tables render their rows with repeat() keyed by id: a row (and the button in it) stays the
// same element while the list changes around it.
import { html, nothing } from './lit.js';
import { repeat } from './repeat.js';
import * as api from './api.js';
import { t, fmtTime, fmtNumber, tOr } from './i18n.js';
import { LightElement, problem, barChart, stackedBar, stateBadge } from './ui.js';

const enc = encodeURIComponent;

export class Page extends LightElement {
  static properties = {
    asOf: { attribute: false }, tick: { attribute: false },
    error: { state: true }, done: { state: true }, loadError: { state: true }, d: { state: true },
  };

  constructor() { super(); this.d = null; }

  updated(ch) {
    // A view as of a past position does not change with new events.
    if (ch.has('asOf') || (ch.has('tick') && !this.asOf)) this.reload();
  }

  // Loads the view; an answer overtaken by a later reload (a filter, the slider) is dropped.
  async reload() {
    const n = (this.seq = (this.seq || 0) + 1);
    try {
      const d = await this.load();
      if (n !== this.seq) return;
      this.d = d;
      this.loadError = null;
    } catch (e) {
      if (n === this.seq) this.loadError = e;
    }
  }

  q(extra = {}) { return this.asOf ? { ...extra, as_of: this.asOf } : extra; }
  get ro() { return !!this.asOf; }

  // Sends an action; its refusal (with reason) or a short confirmation shows in the view.
  async act(req, message) {
    try {
      const r = await api.send(req);
      this.error = null;
      this.done = message || t('common.done');
      await this.reload();
      return r;
    } catch (e) {
      this.error = e;
      this.done = null;
      return null;
    }
  }

  form(id) {
    const f = this.querySelector(`#${id}`);
    const out = {};
    if (!f) return out;
    for (const el of f.elements) {
      if (!el.name || el.disabled) continue;
      if (el.type === 'checkbox') {
        if (el.dataset.list) { (out[el.name] ||= []); if (el.checked) out[el.name].push(el.value); }
        else out[el.name] = el.checked;
      } else if (el.type === 'radio') {
        if (el.checked) out[el.name] = el.value;
      } else if (el.value !== '') {
        out[el.name] = el.type === 'number' ? Number(el.value) : el.value;
      }
    }
    return out;
  }

  submit(e, req, message) {
    e.preventDefault();
    return this.act(req(), message).then((r) => { if (r) e.target.reset?.(); return r; });
  }

  status() {
    return html`${problem(this.error)}${problem(this.loadError)}
      ${this.done ? html`<p class="done" role="status">${this.done}</p>` : nothing}`;
  }

  // A submit button and its copy-as-curl, both off in an as-of view.
  buttons(label, req) {
    return html`<div class="form-actions"><button type="submit" ?disabled=${this.ro}>${label}</button>
      <at-curl .req=${req}></at-curl></div>`;
  }

  // A button that sends `req()` at once, with a curl button beside it when `withCurl`.
  // A dangerous one (delete, remove, power off, forget) asks first.
  action(label, req, { secondary = false, withCurl = false, danger = false, message } = {}) {
    const go = () => {
      const r = req();
      if (danger && !confirm(t('common.confirm', { action: label, what: `${r.method} ${r.path}` }))) return;
      this.act(r, message);
    };
    return html`<button type="button" class=${`small ${secondary ? 'secondary' : ''} ${danger ? 'danger' : ''}`}
        ?disabled=${this.ro} @click=${go}>${label}</button>${withCurl ? html`<at-curl .req=${req}></at-curl>` : nothing}`;
  }

  heading(key) {
    return html`<h1>${t(`admin.page.${key}`)}${this.asOf ? html` <small class="asof-tag">${t('asof.position', { n: this.asOf })}</small>` : nothing}</h1>`;
  }
}

const names = (list) => Object.fromEntries((list || []).map((x) => [x.id, x.name]));

// ---- dashboard ---------------------------------------------------------------------------
const FAILURE = /Failed|Drift|Throttled|Alert/;

class Dashboard extends Page {
  async load() {
    const q = this.q();
    const [hosts, vms, pools, sessions] = await Promise.all([
      api.getAll('/v1/hosts', q), api.getAll('/v1/vms', q), api.getAll('/v1/pools', q), api.getAll('/v1/sessions', q),
    ]);
    const last = this.asOf || (await api.send({ ...api.request('GET', '/readyz'), public: true })).data.position;
    const recent = await api.get('/v1/events', { after: Math.max(0, last - 500), limit: 500 });
    const failures = recent.items.filter((e) => e.position <= last && FAILURE.test(e.type)).reverse().slice(0, 10);
    return { hosts, vms, pools, sessions, failures };
  }

  render() {
    const d = this.d;
    if (!d) return html`${this.heading('dashboard')}${this.status()}<p>…</p>`;
    const count = (list, key) => list.reduce((m, x) => ((m[x[key]] = (m[x[key]] || 0) + 1), m), {});
    const rows = (m, tone) => Object.entries(m).sort().map(([k, v]) => ({ label: tOr(`state.${k}`, k), value: v, tone: tone(k) }));
    const hostTone = (s) => ({ up: 'ok', maintenance: 'warn', alert: 'bad', disconnected: 'bad' }[s] || 'neutral');
    const vmTone = (s) => ({ running: 'ok', shut_off: 'neutral', crashed: 'bad', missing: 'bad' }[s] || 'warn');
    const drift = d.vms.filter((v) => v.drift);
    const live = d.sessions.filter((s) => s.state !== 'ended');
    const hostNames = names(d.hosts);
    return html`${this.heading('dashboard')}${this.status()}
      <div class="cards">
        <section class="card">${barChart(t('dash.hosts_by_state'), rows(count(d.hosts, 'state'), hostTone))}</section>
        <section class="card">${barChart(t('dash.vms_observed'), rows(count(d.vms, 'observed_state'), vmTone))}</section>
        <section class="card">${barChart(t('dash.vms_desired'), rows(count(d.vms, 'desired_state'), vmTone))}</section>
        <section class="card">${barChart(t('dash.live_sessions', { n: live.length }), rows(count(live, 'state'), () => 'ok'))}</section>
        <section class="card wide" aria-labelledby="drift-h">
          <h2 id="drift-h">${t('dash.drift', { n: drift.length })}</h2>
          ${drift.length ? html`<ul>${drift.map((v) => html`<li>${v.name} (${hostNames[v.host_id] || v.host_id}): ${t('dash.drift_item', { desired: v.desired_state, observed: v.observed_state })} ${v.drift_reason || ''}</li>`)}</ul>`
            : html`<p class="empty">${t('dash.no_drift')}</p>`}
        </section>
        <section class="card wide" aria-labelledby="cap-h">
          <h2 id="cap-h">${t('dash.pool_capacity')}</h2>
          ${d.pools.length ? html`<table><thead><tr><th scope="col">${t('common.name')}</th><th scope="col">${t('pool.capacity')}</th>
            <th scope="col">${t('pool.ready')}</th><th scope="col">${t('pool.standby')}</th><th scope="col">${t('pool.in_use')}</th>
            <th scope="col">${t('pool.outdated')}</th><th scope="col">${t('pool.total')}</th></tr></thead><tbody>
            ${d.pools.map((p) => { const s = p.size || {}; return html`<tr><td>${p.name}</td><td>${stackedBar(p.name, [
              { label: t('pool.ready'), value: s.ready || 0, tone: 'ok' }, { label: t('pool.standby'), value: s.standby || 0, tone: 'neutral' },
              { label: t('pool.in_use'), value: s.in_use || 0, tone: 'info' }], p.max_size || s.total)}</td>
              <td>${s.ready || 0}</td><td>${s.standby || 0}</td><td>${s.in_use || 0}</td><td>${s.outdated || 0}</td><td>${s.total || 0}</td></tr>`; })}
            </tbody></table>` : html`<p class="empty">${t('pools.none')}</p>`}
        </section>
        <section class="card wide" aria-labelledby="fail-h">
          <h2 id="fail-h">${t('dash.recent_failures')}</h2>
          ${d.failures.length ? html`<ul class="failures">${d.failures.map((e) => html`<li>
            <span class="when">${fmtTime(e.recorded_at_ms)}</span> <code>${e.type}</code> ${e.stream}
            ${e.data?.error || e.data?.message || e.data?.reason ? html`— ${e.data.error || e.data.message || e.data.reason}` : nothing}</li>`)}</ul>`
            : html`<p class="empty">${t('dash.no_failures')}</p>`}
        </section>
      </div>`;
  }
}
customElements.define('at-dashboard', Dashboard);

// ---- hosts -------------------------------------------------------------------------------
class Hosts extends Page {
  static properties = { open: { state: true } };
  async load() { return { hosts: await api.getAll('/v1/hosts', this.q()) }; }

  addReq() {
    const f = this.form('add-host');
    const body = { name: f.name, uri: f.uri };
    if (f.address) body.address = f.address;
    if (f.first || f.last) body.display_ports = { first: f.first, last: f.last };
    return api.request('POST', '/v1/hosts', { body });
  }

  render() {
    const hosts = this.d?.hosts || [];
    return html`${this.heading('hosts')}${this.status()}
      <details class="card"><summary>${t('hosts.add')}</summary>
        <form id="add-host" @submit=${(e) => this.submit(e, () => this.addReq(), t('hosts.added'))}>
          <label>${t('common.name')}<input name="name" required maxlength="128"></label>
          <label>${t('hosts.uri')}<input name="uri" required placeholder="qemu+ssh://root@kvm-01/system"></label>
          <label>${t('hosts.address')}<input name="address" placeholder=${t('common.optional')}></label>
          <fieldset><legend>${t('hosts.ports')}</legend>
            <label class="inline">${t('hosts.first')}<input name="first" type="number" min="1" max="65535" class="narrow" placeholder="5500"></label>
            <label class="inline">${t('hosts.last')}<input name="last" type="number" min="1" max="65535" class="narrow" placeholder="5699"></label>
          </fieldset>
          ${this.buttons(t('hosts.add'), () => this.addReq())}
        </form></details>
      <table><caption class="visually-hidden">${t('admin.page.hosts')}</caption><thead><tr>
        <th scope="col">${t('common.name')}</th><th scope="col">${t('hosts.uri')}</th><th scope="col">${t('common.state')}</th>
        <th scope="col">${t('hosts.vms')}</th><th scope="col">${t('hosts.ports_free')}</th><th scope="col">${t('common.actions')}</th></tr></thead>
      <tbody>${repeat(hosts, (h) => h.id, (h) => html`<tr>
        <td>${h.name}</td><td><code>${h.uri}</code></td>
        <td>${stateBadge(h.state)} <span class="muted">${h.reason || ''}</span>${h.last_error ? html`<div class="muted">${h.last_error}</div>` : nothing}</td>
        <td>${h.vm_count ?? ''}</td><td>${h.display_ports_free ?? ''}</td>
        <td class="actions">
          ${h.state === 'up' ? this.action(t('hosts.maintenance'), () => api.request('POST', `/v1/hosts/${enc(h.id)}/maintenance`), { withCurl: true }) : nothing}
          ${['maintenance', 'alert', 'disconnected'].includes(h.state) ? this.action(t('hosts.activate'), () => api.request('POST', `/v1/hosts/${enc(h.id)}/activate`), { withCurl: true }) : nothing}
          <button type="button" class="small secondary" aria-expanded=${this.open === h.id ? 'true' : 'false'}
                  @click=${() => { this.open = this.open === h.id ? null : h.id; }}>${t('hosts.capabilities')}</button>
          ${h.state !== 'removed' ? this.action(t('common.remove'), () => api.request('DELETE', `/v1/hosts/${enc(h.id)}`), { secondary: true, danger: true }) : nothing}
        </td></tr>
        ${this.open === h.id ? html`<tr class="detail"><td colspan="6">${this.capabilities(h)}</td></tr>` : nothing}`)}
      </tbody></table>
      ${hosts.length ? nothing : html`<p class="empty">${t('hosts.none')}</p>`}`;
  }

  capabilities(h) {
    const c = h.capabilities || {};
    const show = (v) => (Array.isArray(v) ? v.map((x) => (typeof x === 'object' ? x.name || JSON.stringify(x) : x)).join(', ') : String(v));
    return Object.keys(c).length ? html`<dl class="grid">${Object.entries(c).map(([k, v]) => html`<dt>${tOr(`cap.${k}`, k)}</dt><dd>${show(v)}</dd>`)}</dl>`
      : html`<p class="empty">${t('hosts.no_capabilities')}</p>`;
  }
}
customElements.define('at-hosts', Hosts);

// ---- VMs and operations ------------------------------------------------------------------
class Vms extends Page {
  static properties = { filter: { state: true }, op: { state: true } };
  constructor() { super(); this.filter = {}; }

  async load() {
    const q = this.q();
    const [vms, hosts, pools] = await Promise.all([
      api.getAll('/v1/vms', { ...q, ...this.filter }), api.getAll('/v1/hosts', q), api.getAll('/v1/pools', q)]);
    return { vms, hosts, pools };
  }

  async showOperation(id) {
    try {
      const op = await api.get(`/v1/operations/${enc(id)}`, this.q());
      const events = [];
      for (const pos of (op.events || []).slice(0, 50)) {
        const page = await api.get('/v1/events', { after: pos - 1, limit: 1 });
        if (page.items[0]) events.push(page.items[0]);
      }
      this.op = { ...op, eventList: events };
    } catch (e) { this.error = e; }
  }

  setFilter(k, v) { this.filter = { ...this.filter, [k]: v || undefined }; this.reload(); }

  render() {
    const d = this.d || { vms: [], hosts: [], pools: [] };
    const hn = names(d.hosts);
    const pn = names(d.pools);
    return html`${this.heading('vms')}${this.status()}
      <div class="filters" role="group" aria-label=${t('common.filters')}>
        <label class="inline">${t('vms.host')}<select @change=${(e) => this.setFilter('host_id', e.target.value)}>
          <option value="">${t('common.all')}</option>${d.hosts.map((h) => html`<option value=${h.id}>${h.name}</option>`)}</select></label>
        <label class="inline">${t('vms.pool')}<select @change=${(e) => this.setFilter('pool_id', e.target.value)}>
          <option value="">${t('common.all')}</option>${d.pools.map((p) => html`<option value=${p.id}>${p.name}</option>`)}</select></label>
      </div>
      <table><caption class="visually-hidden">${t('admin.page.vms')}</caption><thead><tr>
        <th scope="col">${t('common.name')}</th><th scope="col">${t('vms.host')}</th><th scope="col">${t('vms.pool')}</th>
        <th scope="col">${t('vms.desired')}</th><th scope="col">${t('vms.observed')}</th><th scope="col">${t('vms.port')}</th>
        <th scope="col">${t('vms.operation')}</th><th scope="col">${t('vms.power')}</th></tr></thead>
      <tbody>${repeat(d.vms, (v) => v.id, (v) => html`<tr class=${v.drift ? 'drift' : ''}>
        <td>${v.name}${v.drift ? html` <span class="badge tone-warn">${t('vms.drift')}</span>` : nothing}</td>
        <td>${hn[v.host_id] || v.host_id}</td><td>${v.pool_id ? pn[v.pool_id] || v.pool_id : html`<span class="muted">${t('vms.unmanaged')}</span>`}</td>
        <td>${stateBadge(v.desired_state)}</td><td>${stateBadge(v.observed_state)}</td><td>${v.display_port ?? ''}</td>
        <td>${v.operation_id ? html`<button type="button" class="small secondary" @click=${() => this.showOperation(v.operation_id)}>${t('vms.show_operation')}</button>` : ''}</td>
        <td class="actions">${['start', 'shutdown', 'reboot', 'destroy'].map((a) => this.action(t(`vms.${a}`),
          () => api.request('POST', `/v1/vms/${enc(v.id)}/power`, { body: { action: a } }), { secondary: a !== 'start', danger: a === 'destroy' }))}
          ${!v.pool_id || v.observed_state === 'missing' ? this.action(t('vms.forget'),
            () => api.request('DELETE', `/v1/vms/${enc(v.id)}`), { secondary: true, danger: true, message: t('vms.forgotten') }) : nothing}
</td>
      </tr>`)}</tbody></table>
      ${d.vms.length ? nothing : html`<p class="empty">${t('vms.none')}</p>`}
      ${this.op ? html`<section class="card" aria-labelledby="op-h"><h2 id="op-h">${t('vms.operation')} <code>${this.op.id}</code></h2>
        <p>${this.op.kind} ${this.op.action || ''} → ${stateBadge(this.op.state)} ${this.op.error ? html`<span class="problem-inline">${this.op.error}</span>` : nothing}</p>
        ${this.op.state === 'pending' || this.op.state === 'running' ? this.action(t('vms.cancel'), () => api.request('POST', `/v1/operations/${enc(this.op.id)}/cancel`, { body: {} }), { withCurl: true }) : nothing}
        <ol class="events">${this.op.eventList.map((e) => html`<li><code>#${e.position}</code> ${e.type} <span class="muted">${fmtTime(e.recorded_at_ms)}</span></li>`)}</ol>
        <button type="button" class="small secondary" @click=${() => { this.op = null; }}>${t('common.close')}</button></section>` : nothing}`;
  }
}
customElements.define('at-vms', Vms);

// ---- pools -------------------------------------------------------------------------------
class Pools extends Page {
  static properties = { sel: { state: true }, tmplMode: { state: true } };
  constructor() { super(); this.tmplMode = 'xml'; }

  async load() {
    const q = this.q();
    const [pools, hosts, users] = await Promise.all([api.getAll('/v1/pools', q), api.getAll('/v1/hosts', q), api.getAll('/v1/users', q)]);
    let detail = null;
    const p = pools.find((x) => x.id === this.sel);
    if (p) {
      const [ents, vms] = await Promise.all([
        api.get(`/v1/pools/${enc(p.id)}/entitlements`, q), api.get(`/v1/pools/${enc(p.id)}/vms`, q)]);
      detail = { pool: p, entitlements: ents.items, vms: vms.items };
    }
    return { pools, hosts, users, detail };
  }

  createReq() {
    const f = this.form('add-pool');
    const template = this.tmplMode === 'xml' ? { domain_xml: f.domain_xml || '' }
      : { domain_name: f.domain_name || '', ...(f.template_host ? { host_id: f.template_host } : {}) };
    const body = { name: f.name, kind: f.kind, template, host_ids: f.host_ids || [], max_size: f.max_size ?? 1 };
    for (const k of ['min_ready', 'min_standby']) if (f[k] !== undefined) body[k] = f[k];
    if (f.power_policy) body.power_policy = f.power_policy;
    return api.request('POST', '/v1/pools', { body });
  }

  sizesReq(p) {
    const f = this.form('pool-sizes');
    const body = {};
    for (const k of ['min_ready', 'min_standby', 'max_size']) if (f[k] !== undefined) body[k] = f[k];
    return api.request('PATCH', `/v1/pools/${enc(p.id)}`, { body, headers: { 'If-Match': `"${p.version}"` } });
  }

  templateReq(p) {
    const f = this.form('pool-template');
    return api.request('PATCH', `/v1/pools/${enc(p.id)}`, { body: { template: { domain_xml: f.domain_xml || '' } },
      headers: { 'If-Match': `"${p.version}"` } });
  }

  entitleReq(p) {
    return api.request('POST', `/v1/pools/${enc(p.id)}/entitlements`, { body: { user_id: this.form('entitle').user_id || '' } });
  }

  select(id) { this.sel = this.sel === id ? null : id; this.reload(); }

  render() {
    const d = this.d || { pools: [], hosts: [], users: [] };
    return html`${this.heading('pools')}${this.status()}
      <details class="card"><summary>${t('pools.create')}</summary>
        <form id="add-pool" @submit=${(e) => this.submit(e, () => this.createReq(), t('pools.created'))}>
          <label>${t('common.name')}<input name="name" required maxlength="128"></label>
          <label>${t('pools.kind')}<select name="kind"><option value="floating">${t('pool.kind.floating')}</option><option value="dedicated">${t('pool.kind.dedicated')}</option></select></label>
          <fieldset><legend>${t('pools.hosts')}</legend>
            ${d.hosts.filter((h) => h.state !== 'removed').map((h) => html`<label class="inline"><input type="checkbox" name="host_ids" data-list="1" value=${h.id}> ${h.name}</label>`)}
            ${d.hosts.length ? nothing : html`<p class="empty">${t('hosts.none')}</p>`}
          </fieldset>
          <fieldset><legend>${t('pools.template')}</legend>
            <label class="inline"><input type="radio" name="tmpl_mode" value="xml" ?checked=${this.tmplMode === 'xml'} @change=${() => { this.tmplMode = 'xml'; }}> ${t('pools.from_xml')}</label>
            <label class="inline"><input type="radio" name="tmpl_mode" value="name" ?checked=${this.tmplMode === 'name'} @change=${() => { this.tmplMode = 'name'; }}> ${t('pools.from_domain')}</label>
            ${this.tmplMode === 'xml' ? html`<label>${t('pools.domain_xml')}<textarea name="domain_xml" rows="6" required spellcheck="false"></textarea></label>`
              : html`<label>${t('pools.domain_name')}<input name="domain_name" required></label>
                <label>${t('pools.template_host')}<select name="template_host"><option value="">${t('pools.only_host')}</option>${d.hosts.map((h) => html`<option value=${h.id}>${h.name}</option>`)}</select></label>`}
          </fieldset>
          <div class="row">
            <label>${t('pool.min_ready')}<input name="min_ready" type="number" min="0" class="narrow" value="0"></label>
            <label>${t('pool.min_standby')}<input name="min_standby" type="number" min="0" class="narrow" value="0"></label>
            <label>${t('pool.max_size')}<input name="max_size" type="number" min="1" class="narrow" value="2" required></label>
            <label>${t('pool.power_policy')}<select name="power_policy">${['keep_on', 'shutdown_on_logoff', 'shutdown_when_idle', 'refresh_on_logoff'].map((x) => html`<option value=${x}>${t(`policy.${x}`)}</option>`)}</select></label>
          </div>
          ${this.buttons(t('pools.create'), () => this.createReq())}
        </form></details>
      <table><caption class="visually-hidden">${t('admin.page.pools')}</caption><thead><tr>
        <th scope="col">${t('common.name')}</th><th scope="col">${t('pools.kind')}</th><th scope="col">${t('common.state')}</th>
        <th scope="col">${t('pool.capacity')}</th><th scope="col">${t('pools.template_version')}</th><th scope="col">${t('common.actions')}</th></tr></thead>
      <tbody>${repeat(d.pools, (p) => p.id, (p) => { const s = p.size || {}; return html`<tr>
        <td>${p.name}</td><td>${t(`pool.kind.${p.kind}`)}</td><td>${stateBadge(p.state)}</td>
        <td>${stackedBar(p.name, [{ label: t('pool.ready'), value: s.ready || 0, tone: 'ok' }, { label: t('pool.standby'), value: s.standby || 0, tone: 'neutral' },
          { label: t('pool.in_use'), value: s.in_use || 0, tone: 'info' }], p.max_size || s.total)}
          <span class="muted">${t('pools.size_text', { ready: s.ready || 0, standby: s.standby || 0, in_use: s.in_use || 0, total: s.total || 0, max: p.max_size ?? '' })}</span></td>
        <td>${p.template_version ?? ''}${s.outdated ? html` <span class="badge tone-warn">${t('pools.outdated_n', { n: s.outdated })}</span>` : nothing}</td>
        <td class="actions"><button type="button" class="small" aria-expanded=${this.sel === p.id ? 'true' : 'false'} @click=${() => this.select(p.id)}>${t('common.details')}</button>
          ${this.action(t('common.delete'), () => api.request('DELETE', `/v1/pools/${enc(p.id)}`), { secondary: true, danger: true })}</td>
      </tr>`; })}</tbody></table>
      ${d.pools.length ? nothing : html`<p class="empty">${t('pools.none')}</p>`}
      ${d.detail ? this.detail(d.detail, d.users) : nothing}`;
  }

  detail({ pool: p, entitlements, vms }, users) {
    const un = Object.fromEntries(users.map((u) => [u.id, u.name]));
    const s = p.size || {};
    const total = s.total || 0;
    const current = total - (s.outdated || 0);
    const entitled = new Set(entitlements.map((e) => e.user_id));
    return html`<section class="card" aria-labelledby="pool-h">
      <h2 id="pool-h">${t('pools.detail', { name: p.name })}</h2>
      <div class="cols">
        <form id="pool-sizes" @submit=${(e) => { e.preventDefault(); this.act(this.sizesReq(p)); }}>
          <h3>${t('pools.sizes')}</h3>
          <label>${t('pool.min_ready')}<input name="min_ready" type="number" min="0" class="narrow" .value=${String(p.min_ready ?? 0)}></label>
          <label>${t('pool.min_standby')}<input name="min_standby" type="number" min="0" class="narrow" .value=${String(p.min_standby ?? 0)}></label>
          <label>${t('pool.max_size')}<input name="max_size" type="number" min="1" class="narrow" .value=${String(p.max_size ?? 1)}></label>
          ${this.buttons(t('common.save'), () => this.sizesReq(p))}
        </form>
        <form id="pool-template" @submit=${(e) => { e.preventDefault(); this.act(this.templateReq(p), t('pools.template_updated')); }}>
          <h3>${t('pools.template_update')}</h3>
          <p>${t('pools.rollout', { v: p.template_version ?? 1, done: current, total })}</p>
          <progress max=${Math.max(1, total)} .value=${current} aria-label=${t('pools.rollout_label')}></progress>
          <label>${t('pools.domain_xml')}<textarea name="domain_xml" rows="4" required spellcheck="false"></textarea></label>
          ${this.buttons(t('pools.update_template'), () => this.templateReq(p))}
        </form>
      </div>
      <h3>${t('pools.entitlements')}</h3>
      <ul class="chips">${entitlements.map((e) => html`<li>${un[e.user_id] || e.user_id}
        ${this.action(t('common.remove'), () => api.request('DELETE', `/v1/pools/${enc(p.id)}/entitlements/${enc(e.user_id)}`), { secondary: true })}</li>`)}</ul>
      <form id="entitle" class="row" @submit=${(e) => this.submit(e, () => this.entitleReq(p), t('pools.entitled'))}>
        <label>${t('pools.entitle_user')}<select name="user_id" required><option value="">—</option>
          ${users.filter((u) => !entitled.has(u.id)).map((u) => html`<option value=${u.id}>${u.name}</option>`)}</select></label>
        ${this.buttons(t('pools.entitle'), () => this.entitleReq(p))}
      </form>
      <h3>${t('pools.vms')}</h3>
      <table><thead><tr><th scope="col">${t('common.name')}</th><th scope="col">${t('common.state')}</th><th scope="col">${t('vms.observed')}</th>
        <th scope="col">${t('pools.template_version')}</th><th scope="col">${t('pools.assigned')}</th><th scope="col">${t('common.actions')}</th></tr></thead>
      <tbody>${repeat(vms, (v) => v.vm_id, (v) => html`<tr><td>${v.name}</td><td>${stateBadge(v.state)}${v.free ? html` <span class="muted">${t('pools.free')}</span>` : nothing}</td>
        <td>${stateBadge(v.observed_state || 'unknown')}</td><td>${v.template_version ?? ''}</td><td>${un[v.assigned_user_id] || v.assigned_user_id || ''}</td>
        <td>${this.action(t('pools.refresh_vm'), () => api.request('POST', `/v1/pools/${enc(p.id)}/vms/${enc(v.vm_id)}/refresh`), { secondary: true })}</td></tr>`)}</tbody></table>
    </section>`;
  }
}
customElements.define('at-pools', Pools);

// ---- application cloud -------------------------------------------------------------------
class Apps extends Page {
  static properties = { pubTargets: { state: true }, authTargets: { state: true }, server: { state: true } };

  async load() {
    const q = this.q();
    const [clusters, servers, apps, pubs, auths, users] = await Promise.all([
      api.getAll('/v1/clusters', q), api.getAll('/v1/servers', q), api.getAll('/v1/applications', q),
      api.getAll('/v1/publications', q), api.getAll('/v1/authorizations', q), api.getAll('/v1/users', q)]);
    return { clusters, servers, apps, pubs, auths, users };
  }

  clusterReq() {
    const f = this.form('add-cluster');
    const body = { name: f.name };
    if (f.description) body.description = f.description;
    if (f.policy) body.placement = { policy: f.policy };
    return api.request('POST', '/v1/clusters', { body });
  }

  serverReq() {
    const f = this.form('add-server');
    const body = { name: f.name, address: f.address, os_type: f.os_type };
    for (const k of ['os_version', 'cpus', 'memory_mb']) if (f[k] !== undefined) body[k] = f[k];
    return api.request('POST', '/v1/servers', { body });
  }

  joinReq(s) {
    return api.request('POST', `/v1/servers/${enc(s.id)}/join`, { body: { cluster_id: this.form(`join-${s.id}`).cluster_id || '' } });
  }

  appReq() {
    const f = this.form('add-app');
    const body = { name: f.name, executable_path: f.executable_path };
    if (f.description) body.description = f.description;
    return api.request('POST', `/v1/servers/${enc(f.server_id || '')}/applications`, { body });
  }

  // Publish: pick an application and a scope, then one of the targets the broker lists.
  async findPubTargets() {
    const f = this.form('publish');
    if (!f.application_id) return;
    try {
      const r = await api.get(`/v1/applications/${enc(f.application_id)}/publish-targets`, this.q({ scope: f.scope }));
      this.pubTargets = { app: f.application_id, scope: f.scope, items: r.items };
      this.error = null;
    } catch (e) { this.error = e; }
  }

  publishReq() {
    const f = this.form('publish');
    return api.request('POST', '/v1/publications', { body: { application_id: f.application_id || '', scope: f.scope, target_id: f.target_id || '' } });
  }

  async findAuthTargets() {
    const f = this.form('authorize');
    if (!f.publication_id || !f.user_id) return;
    try {
      const r = await api.get(`/v1/publications/${enc(f.publication_id)}/authorize-targets`, this.q({ user_id: f.user_id, scope: f.scope }));
      this.authTargets = { ...f, items: r.items };
      this.error = null;
    } catch (e) { this.error = e; }
  }

  authorizeReq() {
    const f = this.form('authorize');
    const pub = this.d.pubs.find((p) => p.id === f.publication_id);
    return api.request('POST', '/v1/authorizations', { body: { user_id: f.user_id || '', application_id: pub?.application_id || '',
      scope: f.scope, target_id: f.target_id || '' } });
  }

  render() {
    const d = this.d || { clusters: [], servers: [], apps: [], pubs: [], auths: [], users: [] };
    const cn = names(d.clusters);
    const sn = names(d.servers);
    const an = names(d.apps);
    const un = Object.fromEntries(d.users.map((u) => [u.id, u.name]));
    const target = (scope, id) => (scope === 'cluster' ? cn[id] : sn[id]) || id;
    return html`${this.heading('apps')}${this.status()}
      <section aria-labelledby="cl-h"><h2 id="cl-h">${t('apps.clusters')}</h2>
        <table><thead><tr><th scope="col">${t('common.name')}</th><th scope="col">${t('apps.placement')}</th><th scope="col">${t('apps.servers')}</th><th scope="col">${t('common.actions')}</th></tr></thead>
        <tbody>${d.clusters.map((c) => html`<tr><td>${c.name}</td><td>${c.placement?.policy || ''}</td>
          <td>${(c.servers || []).map((id) => sn[id] || id).join(', ')}</td>
          <td>${this.action(t('common.delete'), () => api.request('DELETE', `/v1/clusters/${enc(c.id)}`), { secondary: true, danger: true })}</td></tr>`)}</tbody></table>
        <details class="card"><summary>${t('apps.add_cluster')}</summary>
          <form id="add-cluster" @submit=${(e) => this.submit(e, () => this.clusterReq())}>
            <label>${t('common.name')}<input name="name" required maxlength="128"></label>
            <label>${t('common.description')}<input name="description"></label>
            <label>${t('apps.placement')}<select name="policy">${['weighted', 'least_sessions', 'least_cpu', 'least_memory', 'round_robin'].map((p) => html`<option value=${p}>${t(`placement.${p}`)}</option>`)}</select></label>
            ${this.buttons(t('apps.add_cluster'), () => this.clusterReq())}
          </form></details>
      </section>
      <section aria-labelledby="sv-h"><h2 id="sv-h">${t('apps.servers')}</h2>
        <table><thead><tr><th scope="col">${t('common.name')}</th><th scope="col">${t('apps.address')}</th><th scope="col">${t('apps.cluster')}</th>
          <th scope="col">${t('apps.service')}</th><th scope="col">${t('apps.in_sync')}</th><th scope="col">${t('common.actions')}</th></tr></thead>
        <tbody>${d.servers.map((s) => html`<tr><td>${s.name}</td><td>${s.address}</td>
          <td>${s.cluster_id ? cn[s.cluster_id] || s.cluster_id : html`<span class="muted">${t('apps.standalone')}</span>`}</td>
          <td>${stateBadge(s.remote_app_service)}</td><td>${s.in_sync ? t('common.yes') : t('common.no')}</td>
          <td class="actions">
            ${s.cluster_id ? this.action(t('apps.leave'), () => api.request('POST', `/v1/servers/${enc(s.id)}/leave`, { body: {} }), { withCurl: true })
              : html`<form id=${`join-${s.id}`} class="inline-form" @submit=${(e) => { e.preventDefault(); this.act(this.joinReq(s), t('apps.joined')); }}>
                  <label class="inline"><span class="visually-hidden">${t('apps.cluster_for', { name: s.name })}</span>
                  <select name="cluster_id" aria-label=${t('apps.cluster_for', { name: s.name })}>${d.clusters.map((c) => html`<option value=${c.id}>${c.name}</option>`)}</select></label>
                  <button type="submit" class="small" ?disabled=${this.ro || !d.clusters.length}>${t('apps.join')}</button>
                  <at-curl .req=${() => this.joinReq(s)}></at-curl></form>`}
            ${this.action(s.remote_app_service === 'disabled' ? t('apps.enable') : t('apps.disable'), () => api.request('PATCH', `/v1/servers/${enc(s.id)}`,
              { body: { remote_app_service: s.remote_app_service === 'disabled' ? 'enabled' : 'disabled' }, headers: { 'If-Match': `"${s.version}"` } }), { secondary: true })}
            ${this.action(t('common.delete'), () => api.request('DELETE', `/v1/servers/${enc(s.id)}`), { secondary: true, danger: true })}
          </td></tr>`)}</tbody></table>
        <div class="cols">
        <details class="card"><summary>${t('apps.add_server')}</summary>
          <form id="add-server" @submit=${(e) => this.submit(e, () => this.serverReq())}>
            <label>${t('common.name')}<input name="name" required maxlength="128"></label>
            <label>${t('apps.address')}<input name="address" required></label>
            <label>${t('apps.os')}<select name="os_type"><option value="windows">Windows</option><option value="linux">Linux</option></select></label>
            <label>${t('apps.os_version')}<input name="os_version"></label>
            <div class="row"><label>${t('apps.cpus')}<input name="cpus" type="number" min="0" class="narrow"></label>
            <label>${t('apps.memory_mb')}<input name="memory_mb" type="number" min="0" class="narrow"></label></div>
            ${this.buttons(t('apps.add_server'), () => this.serverReq())}
          </form></details>
        <details class="card"><summary>${t('apps.add_app')}</summary>
          <form id="add-app" @submit=${(e) => this.submit(e, () => this.appReq())}>
            <label>${t('apps.server')}<select name="server_id" required>${d.servers.map((s) => html`<option value=${s.id}>${s.name}</option>`)}</select></label>
            <label>${t('common.name')}<input name="name" required></label>
            <label>${t('apps.exe')}<input name="executable_path" required placeholder="C:\\Program Files\\App\\app.exe"></label>
            <label>${t('common.description')}<input name="description"></label>
            ${this.buttons(t('apps.add_app'), () => this.appReq())}
          </form></details>
        </div>
      </section>
      <section aria-labelledby="ap-h"><h2 id="ap-h">${t('apps.applications')}</h2>
        <table><thead><tr><th scope="col">${t('common.name')}</th><th scope="col">${t('apps.exe')}</th><th scope="col">${t('apps.servers')}</th><th scope="col">${t('apps.clusters')}</th></tr></thead>
        <tbody>${d.apps.map((a) => html`<tr><td>${a.name}</td><td><code>${a.executable_path}</code></td>
          <td>${(a.servers || []).map((id) => sn[id] || id).join(', ')}</td><td>${(a.clusters || []).map((id) => cn[id] || id).join(', ')}</td></tr>`)}</tbody></table>
        <form id="publish" class="card row" @submit=${(e) => this.submit(e, () => this.publishReq(), t('apps.published'))}>
          <h3>${t('apps.publish')}</h3>
          <label>${t('apps.application')}<select name="application_id" required @change=${() => { this.pubTargets = null; }}><option value="">—</option>${d.apps.map((a) => html`<option value=${a.id}>${a.name}</option>`)}</select></label>
          <label>${t('apps.scope')}<select name="scope" @change=${() => { this.pubTargets = null; }}><option value="server">${t('scope.server')}</option><option value="cluster">${t('scope.cluster')}</option></select></label>
          <button type="button" class="secondary" @click=${() => this.findPubTargets()}>${t('apps.find_targets')}</button>
          ${this.pubTargets ? html`<label>${t('apps.target')}<select name="target_id" required>${this.pubTargets.items.map((x) => html`<option value=${x.target_id}>${x.name}</option>`)}</select></label>
            ${this.pubTargets.items.length ? nothing : html`<span class="muted" role="status">${t('apps.no_targets')}</span>`}` : nothing}
          ${this.buttons(t('apps.publish'), () => this.publishReq())}
        </form>
      </section>
      <section aria-labelledby="pb-h"><h2 id="pb-h">${t('apps.publications')}</h2>
        <table><thead><tr><th scope="col">${t('apps.application')}</th><th scope="col">${t('apps.scope')}</th><th scope="col">${t('apps.target')}</th><th scope="col">${t('common.actions')}</th></tr></thead>
        <tbody>${d.pubs.map((p) => html`<tr><td>${an[p.application_id] || p.application_id}</td><td>${t(`scope.${p.scope}`)}</td><td>${target(p.scope, p.target_id)}</td>
          <td>${this.action(t('apps.unpublish'), () => api.request('DELETE', `/v1/publications/${enc(p.id)}`), { secondary: true, danger: true })}</td></tr>`)}</tbody></table>
        <form id="authorize" class="card row" @submit=${(e) => this.submit(e, () => this.authorizeReq(), t('apps.authorized'))}>
          <h3>${t('apps.authorize')}</h3>
          <label>${t('apps.publication')}<select name="publication_id" required @change=${() => { this.authTargets = null; }}><option value="">—</option>
            ${d.pubs.map((p) => html`<option value=${p.id}>${an[p.application_id] || p.application_id} @ ${target(p.scope, p.target_id)}</option>`)}</select></label>
          <label>${t('apps.user')}<select name="user_id" required @change=${() => { this.authTargets = null; }}><option value="">—</option>${d.users.map((u) => html`<option value=${u.id}>${u.name}</option>`)}</select></label>
          <label>${t('apps.scope')}<select name="scope" @change=${() => { this.authTargets = null; }}><option value="server">${t('scope.server')}</option><option value="cluster">${t('scope.cluster')}</option></select></label>
          <button type="button" class="secondary" @click=${() => this.findAuthTargets()}>${t('apps.find_targets')}</button>
          ${this.authTargets ? html`<label>${t('apps.target')}<select name="target_id" required>${this.authTargets.items.map((x) => html`<option value=${x.target_id}>${x.name}</option>`)}</select></label>
            ${this.authTargets.items.length ? nothing : html`<span class="muted" role="status">${t('apps.no_targets')}</span>`}` : nothing}
          ${this.buttons(t('apps.authorize'), () => this.authorizeReq())}
        </form>
      </section>
      <section aria-labelledby="au-h"><h2 id="au-h">${t('apps.authorizations')}</h2>
        <table><thead><tr><th scope="col">${t('apps.user')}</th><th scope="col">${t('apps.application')}</th><th scope="col">${t('apps.scope')}</th><th scope="col">${t('apps.target')}</th><th scope="col">${t('common.actions')}</th></tr></thead>
        <tbody>${d.auths.map((a) => html`<tr><td>${un[a.user_id] || a.user_id}</td><td>${an[a.application_id] || a.application_id}</td><td>${t(`scope.${a.scope}`)}</td>
          <td>${target(a.scope, a.target_id)}</td><td>${this.action(t('apps.revoke'), () => api.request('DELETE', `/v1/authorizations/${enc(a.id)}`), { secondary: true, danger: true })}</td></tr>`)}</tbody></table>
      </section>`;
  }
}
customElements.define('at-apps', Apps);

// ---- users -------------------------------------------------------------------------------
const ROLES = ['admin', 'user', 'agent'];

class Users extends Page {
  async load() {
    const [users, policy] = await Promise.all([api.getAll('/v1/users', this.q()), api.get('/v1/totp-policy', this.q())]);
    return { users, policy };
  }

  policyReq() {
    return api.request('PUT', '/v1/totp-policy', { body: { required_roles: this.form('totp-policy').required_roles || [] } });
  }

  // The user's second factor: on or off, required (for the user, or through a role), and
  // the admin's two actions on it.
  totpCell(u) {
    const x = u.totp || {};
    const byRole = x.required && !x.required_for_user;
    return html`<td class="totp">
      ${stateBadge(x.enabled ? 'totp_on' : 'totp_off')}
      <label class="inline"><input type="checkbox" ?checked=${!!x.required_for_user} ?disabled=${this.ro}
          aria-label=${t('users.totp_required_for', { name: u.name })}
          @change=${(e) => this.act(api.request('PUT', `/v1/users/${enc(u.id)}/totp-required`, { body: { required: e.target.checked } }))}> ${t('users.totp_required')}</label>
      ${byRole ? html`<span class="note">${t('users.totp_by_role')}</span>` : nothing}
      <at-curl .req=${() => api.request('PUT', `/v1/users/${enc(u.id)}/totp-required`, { body: { required: !x.required_for_user } })}></at-curl>
      ${x.enabled ? this.action(t('users.totp_reset'), () => api.request('DELETE', `/v1/users/${enc(u.id)}/totp`),
        { secondary: true, danger: true, withCurl: true, message: t('users.totp_was_reset', { name: u.name }) }) : nothing}
    </td>`;
  }

  createReq() {
    const f = this.form('add-user');
    const body = { name: f.name, roles: f.roles || [] };
    if (f.password) body.password = f.password;
    return api.request('POST', '/v1/users', { body });
  }

  rolesReq(u, role, on) {
    const roles = new Set(u.roles);
    if (on) roles.add(role); else roles.delete(role);
    return api.request('PATCH', `/v1/users/${enc(u.id)}`, { body: { roles: [...roles] }, headers: { 'If-Match': `"${u.version}"` } });
  }

  messageReq(u) {
    return api.request('POST', `/v1/users/${enc(u.id)}/messages`, { body: { text: this.form(`msg-${u.id}`).text || '' } });
  }

  render() {
    const users = this.d?.users || [];
    return html`${this.heading('users')}${this.status()}
      <details class="card"><summary>${t('users.create')}</summary>
        <form id="add-user" @submit=${(e) => this.submit(e, () => this.createReq(), t('users.created'))}>
          <label>${t('common.name')}<input name="name" required maxlength="128" autocomplete="off"></label>
          <label>${t('signin.password')}<input name="password" type="password" minlength="8" autocomplete="new-password"></label>
          <fieldset><legend>${t('users.roles')}</legend>
            ${ROLES.map((r) => html`<label class="inline"><input type="checkbox" name="roles" data-list="1" value=${r} ?checked=${r === 'user'}> ${t(`role.${r}`)}</label>`)}</fieldset>
          ${this.buttons(t('users.create'), () => this.createReq())}
        </form></details>
      <section class="card" aria-labelledby="totp-policy-h"><h2 id="totp-policy-h">${t('users.totp_policy')}</h2>
        <form id="totp-policy" @submit=${(e) => { e.preventDefault(); this.act(this.policyReq(), t('users.totp_policy_saved')); }}>
          <fieldset><legend>${t('users.totp_policy_roles')}</legend>
            ${ROLES.map((r) => html`<label class="inline"><input type="checkbox" name="required_roles" data-list="1" value=${r}
              .checked=${(this.d?.policy?.required_roles || []).includes(r)}> ${t(`role.${r}`)}</label>`)}</fieldset>
          ${this.buttons(t('common.save'), () => this.policyReq())}
        </form></section>
      <table><caption class="visually-hidden">${t('admin.page.users')}</caption><thead><tr><th scope="col">${t('common.name')}</th><th scope="col">${t('users.roles')}</th>
        <th scope="col">${t('common.state')}</th><th scope="col">${t('users.totp')}</th><th scope="col">${t('users.message')}</th><th scope="col">${t('common.actions')}</th></tr></thead>
      <tbody>${repeat(users, (u) => u.id, (u) => html`<tr>
        <td>${u.name}</td>
        <td>${ROLES.map((r) => html`<label class="inline"><input type="checkbox" ?checked=${u.roles.includes(r)} ?disabled=${this.ro}
            aria-label=${t('users.role_for', { role: t(`role.${r}`), name: u.name })}
            @change=${(e) => this.act(this.rolesReq(u, r, e.target.checked))}> ${t(`role.${r}`)}</label>`)}</td>
        <td>${u.disabled ? stateBadge('disabled') : stateBadge('enabled')}</td>
        ${this.totpCell(u)}
        <td><form id=${`msg-${u.id}`} class="inline-form" @submit=${(e) => this.submit(e, () => this.messageReq(u), t('users.sent'))}>
          <input name="text" required maxlength="2000" aria-label=${t('users.message_to', { name: u.name })} placeholder=${t('users.message')}>
          <button type="submit" class="small" ?disabled=${this.ro}>${t('users.send')}</button></form></td>
        <td class="actions">
          ${this.action(u.disabled ? t('users.enable') : t('users.disable'), () => api.request('PATCH', `/v1/users/${enc(u.id)}`,
            { body: { disabled: !u.disabled }, headers: { 'If-Match': `"${u.version}"` } }), { secondary: true, withCurl: true })}
          ${['logoff', 'reconnect'].map((c) => this.action(t(`users.command.${c}`), () => api.request('POST', `/v1/users/${enc(u.id)}/commands`, { body: { command: c } }), { secondary: true, message: t('users.sent') }))}
          ${this.action(t('common.delete'), () => api.request('DELETE', `/v1/users/${enc(u.id)}`, { headers: { 'If-Match': `"${u.version}"` } }), { secondary: true, danger: true })}
        </td></tr>`)}</tbody></table>`;
  }
}
customElements.define('at-users', Users);

// ---- sessions ----------------------------------------------------------------------------
class Sessions extends Page {
  static properties = { why: { state: true }, state: { state: true } };

  async load() {
    const q = this.q(this.state ? { state: this.state } : {});
    const [sessions, users, pools, apps, servers, clusters] = await Promise.all([api.getAll('/v1/sessions', q), api.getAll('/v1/users', this.q()),
      api.getAll('/v1/pools', this.q()), api.getAll('/v1/applications', this.q()), api.getAll('/v1/servers', this.q()),
      api.getAll('/v1/clusters', this.q())]);
    return { sessions, users, pools, apps, servers, clusters };
  }

  async showWhy(s) {
    try { this.why = await api.get(`/v1/sessions/${enc(s.id)}`, this.q()); } catch (e) { this.error = e; }
  }

  render() {
    const d = this.d || { sessions: [], users: [], pools: [], apps: [], servers: [] };
    const un = Object.fromEntries(d.users.map((u) => [u.id, u.name]));
    const pn = names(d.pools);
    const an = names(d.apps);
    const sn = names(d.servers);
    return html`${this.heading('sessions')}${this.status()}
      <div class="filters"><label class="inline">${t('common.state')}<select @change=${(e) => { this.state = e.target.value || null; this.reload(); }}>
        <option value="">${t('common.all')}</option>${['created', 'connected', 'disconnected', 'active', 'ended'].map((s) => html`<option value=${s}>${tOr(`state.${s}`, s)}</option>`)}</select></label></div>
      <table><caption class="visually-hidden">${t('admin.page.sessions')}</caption><thead><tr><th scope="col">${t('sessions.kind')}</th><th scope="col">${t('apps.user')}</th>
        <th scope="col">${t('sessions.what')}</th><th scope="col">${t('common.state')}</th><th scope="col">${t('common.since')}</th><th scope="col">${t('common.actions')}</th></tr></thead>
      <tbody>${repeat(d.sessions, (s) => s.id, (s) => html`<tr>
        <td>${t(`sessions.kind.${s.kind}`)}</td><td>${un[s.user_id] || s.user_id}</td>
        <td>${s.kind === 'desktop' ? pn[s.pool_id] || s.pool_id : html`${an[s.application_id] || s.application_id} @ ${sn[s.server_id] || s.server_id}`}</td>
        <td>${stateBadge(s.state)}${s.end_reason ? html` <span class="muted">${s.end_reason}</span>` : nothing}</td>
        <td>${fmtTime(s.created_at_ms || s.decided_at_ms)}</td>
        <td class="actions">
          ${s.kind === 'application' ? html`<button type="button" class="small secondary" @click=${() => this.showWhy(s)}>${t('sessions.why')}</button>` : nothing}
          ${s.state !== 'ended' ? this.action(t('portal.logoff'), () => api.request('DELETE', `/v1/sessions/${enc(s.id)}`), { secondary: true, withCurl: true }) : nothing}
          ${s.state !== 'ended' ? this.action(t('users.command.logoff'), () => api.request('POST', `/v1/users/${enc(s.user_id)}/commands`, { body: { command: 'logoff' } }), { secondary: true, message: t('users.sent') }) : nothing}
        </td></tr>`)}</tbody></table>
      ${d.sessions.length ? nothing : html`<p class="empty">${t('sessions.none')}</p>`}
      ${this.why ? this.whyPanel(this.why, sn, names(d.clusters)) : nothing}`;
  }

  whyPanel(s, sn, cn) {
    const w = s.why || {};
    const choice = w.choice || {};
    const num = (x) => (typeof x === 'number' ? fmtNumber(Math.round(x * 1000) / 1000) : x ?? '');
    const target = (scope, id) => (scope === 'cluster' ? cn[id] : sn[id]) || id || '';
    return html`<section class="card" aria-labelledby="why-h"><h2 id="why-h">${t('sessions.why_title', { server: sn[choice.server_id] || choice.server_id || '' })}</h2>
      <dl class="grid">
        <dt>${t('sessions.policy')}</dt><dd>${Object.entries(w.policy || {}).map(([k, v]) => html`<code>${k}=${typeof v === 'object' ? JSON.stringify(v) : v}</code> `)}</dd>
        <dt>${t('sessions.choice')}</dt><dd>${t(`scope.${choice.scope || 'server'}`)} ${target(choice.scope, choice.target_id)} → ${sn[choice.server_id] || choice.server_id || ''}</dd>
      </dl>
      <h3>${t('sessions.candidates')}</h3>
      <table><thead><tr><th scope="col">${t('apps.server')}</th><th scope="col">CPU</th><th scope="col">${t('sessions.memory')}</th><th scope="col">${t('sessions.count')}</th><th scope="col">${t('sessions.score')}</th></tr></thead>
      <tbody>${(w.candidates || []).map((c) => html`<tr><td>${sn[c.server_id] || c.server_id}</td><td>${num(c.cpu ?? c.cpu_load)}</td><td>${num(c.memory ?? c.memory_load)}</td><td>${num(c.sessions)}</td><td>${num(c.score)}</td></tr>`)}</tbody></table>
      <h3>${t('sessions.targets')}</h3>
      <ul>${(w.targets || []).map((x) => html`<li>${t(`scope.${x.scope || 'server'}`)} ${x.name || target(x.scope, x.target_id)}: ${t('sessions.score')} ${num(x.score ?? x.load)}</li>`)}</ul>
      <h3>${t('sessions.excluded')}</h3>
      ${(w.excluded || []).length ? html`<ul>${w.excluded.map((x) => html`<li>${sn[x.server_id] || x.server_id}: <code class="reason">${x.reason}</code> ${x.detail || ''}</li>`)}</ul>`
        : html`<p class="empty">${t('common.none')}</p>`}
      <button type="button" class="small secondary" @click=${() => { this.why = null; }}>${t('common.close')}</button>
    </section>`;
  }
}
customElements.define('at-sessions', Sessions);

// ---- agents ------------------------------------------------------------------------------
// The agent registry (GET /v1/agents): registration state, what each agent is bound to, its
// last heartbeat and latest load; bind, revoke; enrollment tokens (the secret shown once).
// Registration changes are events (the live stream reloads the view); heartbeats are not, so
// the page also re-reads itself every 10 s while it is open on "now".
const REFRESH_MS = 10000;
class Agents extends Page {
  static properties = { token: { state: true } };

  connectedCallback() {
    super.connectedCallback();
    this.timer = setInterval(() => { if (!this.asOf && !document.hidden) this.reload(); }, REFRESH_MS);
  }

  disconnectedCallback() {
    super.disconnectedCallback();
    clearInterval(this.timer);
  }

  async load() {
    const q = this.q();
    const [agents, tokens, servers, vms, pools] = await Promise.all([api.getAll('/v1/agents', q),
      api.getAll('/v1/agents/enrollment-tokens', q), api.getAll('/v1/servers', q), api.getAll('/v1/vms', q), api.getAll('/v1/pools', q)]);
    return { agents, tokens, servers, vms, pools };
  }

  tokenReq() {
    const f = this.form('add-token');
    const [what, id] = (f.for || 'kind:server').split(':');
    const body = what === 'kind' ? { kind: id } : { [`${what}_id`]: id };
    if (f.uses !== undefined) body.uses = f.uses;
    if (f.expires_in_s !== undefined) body.expires_in_s = f.expires_in_s;
    return api.request('POST', '/v1/agents/enrollment-tokens', { body });
  }

  async createToken(e) {
    e.preventDefault();
    const r = await this.act(this.tokenReq(), t('agents.token_created'));
    this.token = r ? r.data : null;
  }

  bindReq(a) {
    const target = this.form(`bind-${a.id}`).target || '';
    return api.request('POST', `/v1/agents/${enc(a.id)}/bind`, { body: a.kind === 'vm' ? { vm_id: target } : { server_id: target } });
  }

  // Bind an unbound agent to a server (server agents) or a VM (VM agents) without an agent.
  bindForm(a, targets) {
    return html`<form id=${`bind-${a.id}`} class="inline-form" @submit=${(e) => { e.preventDefault(); this.act(this.bindReq(a), t('agents.bound')); }}>
      <select name="target" aria-label=${t('agents.bind_to', { name: a.hostname || a.id })}>
        ${targets.map((x) => html`<option value=${x.id}>${x.name}</option>`)}</select>
      <button type="submit" class="small" ?disabled=${this.ro || !targets.length}>${t('agents.bind')}</button>
      <at-curl .req=${() => this.bindReq(a)}></at-curl></form>`;
  }

  boundTo(a, n) {
    if (a.server_id) return t('agents.for_server', { name: n.servers[a.server_id] || a.server_id });
    if (a.vm_id) return n.vms[a.vm_id] || a.vm_id;
    if (a.pool_id) return t('agents.pool_any', { name: n.pools[a.pool_id] || a.pool_id });
    return html`<span class="muted">${t('agents.unbound')}</span>`;
  }

  loadText(l) {
    if (!l) return '—';
    const pct = (x) => fmtNumber(Math.round((x || 0) * 100));
    return t('agents.load_text', { cpu: pct(l.cpu_load), mem: pct(l.memory_load), sessions: l.sessions ?? 0 });
  }

  tokenState(k) {
    if (k.revoked) return 'revoked';
    if (k.used >= k.uses) return 'used_up';
    if (k.expires_at_ms <= Date.now()) return 'expired';
    return 'enabled';
  }

  render() {
    const d = this.d || { agents: [], tokens: [], servers: [], vms: [], pools: [] };
    const n = { servers: names(d.servers), vms: names(d.vms), pools: names(d.pools) };
    const taken = new Set(d.agents.filter((a) => a.registration !== 'revoked').flatMap((a) => [a.server_id, a.vm_id]).filter(Boolean));
    const bindable = (a) => a.registration !== 'revoked' && !(a.kind === 'vm' ? a.vm_id : a.server_id);
    return html`${this.heading('agents')}${this.status()}
      <p class="muted">${t('agents.refresh_note')}</p>
      <table><caption class="visually-hidden">${t('admin.page.agents')}</caption><thead><tr><th scope="col">${t('common.name')}</th><th scope="col">${t('agents.kind')}</th>
        <th scope="col">${t('agents.registration')}</th><th scope="col">${t('agents.bound_to')}</th><th scope="col">${t('agents.last_seen')}</th>
        <th scope="col">${t('agents.load')}</th><th scope="col">${t('common.actions')}</th></tr></thead>
      <tbody>${repeat(d.agents, (a) => a.id, (a) => html`<tr data-agent=${a.id}>
        <td>${a.hostname || a.id}<br><code class="muted">${a.id}</code></td>
        <td>${t(`agents.kind.${a.kind}`)}</td>
        <td>${stateBadge(a.registration)}${a.reason ? html` <span class="muted">${a.reason}</span>` : nothing}</td>
        <td>${this.boundTo(a, n)}</td>
        <td>${fmtTime(a.last_heartbeat_at_ms)}</td>
        <td>${this.loadText(a.load)}</td>
        <td class="actions">
          ${bindable(a) ? this.bindForm(a, (a.kind === 'vm' ? d.vms : d.servers).filter((x) => !taken.has(x.id))) : nothing}
          ${a.registration !== 'revoked' ? this.action(t('agents.revoke'), () => api.request('DELETE', `/v1/agents/${enc(a.id)}`),
            { secondary: true, danger: true, withCurl: true, message: t('agents.revoked') }) : nothing}
        </td></tr>`)}</tbody></table>
      ${d.agents.length ? nothing : html`<p class="empty">${t('agents.none')}</p>`}
      <section aria-labelledby="tok-h"><h2 id="tok-h">${t('agents.tokens')}</h2>
        <form id="add-token" class="card row" @submit=${(e) => this.createToken(e)}>
          <h3>${t('agents.create_token')}</h3>
          <label>${t('agents.token_for')}<select name="for">
            <option value="kind:server">${t('agents.for_kind_server')}</option><option value="kind:vm">${t('agents.for_kind_vm')}</option>
            ${d.servers.map((s) => html`<option value=${`server:${s.id}`}>${t('agents.for_server', { name: s.name })}</option>`)}
            ${d.pools.map((p) => html`<option value=${`pool:${p.id}`}>${t('agents.for_pool', { name: p.name })}</option>`)}</select></label>
          <label>${t('agents.uses')}<input name="uses" type="number" min="1" max="100000" value="1" class="narrow"></label>
          <label>${t('agents.expires_in_s')}<input name="expires_in_s" type="number" min="1" max="31536000" value="86400" class="narrow"></label>
          ${this.buttons(t('agents.create_token'), () => this.tokenReq())}
        </form>
        ${this.token ? html`<div class="card" role="status"><p>${t('agents.token_once')}</p>
          <label>${t('agents.token_value')}<input class="secret" readonly .value=${this.token.token} @focus=${(e) => e.target.select()}></label>
          <button type="button" class="small secondary" @click=${() => { this.token = null; }}>${t('common.close')}</button></div>` : nothing}
        <table><thead><tr><th scope="col">${t('agents.token_id')}</th><th scope="col">${t('agents.token_for')}</th><th scope="col">${t('agents.uses')}</th>
          <th scope="col">${t('agents.expires')}</th><th scope="col">${t('common.state')}</th><th scope="col">${t('common.actions')}</th></tr></thead>
        <tbody>${d.tokens.map((k) => html`<tr><td><code>${k.id}</code></td>
          <td>${k.server_id ? t('agents.for_server', { name: n.servers[k.server_id] || k.server_id }) : k.pool_id ? t('agents.for_pool', { name: n.pools[k.pool_id] || k.pool_id })
            : k.vm_id ? n.vms[k.vm_id] || k.vm_id : t(k.kind === 'vm' ? 'agents.for_kind_vm' : 'agents.for_kind_server')}</td>
          <td>${t('agents.used', { used: k.used, uses: k.uses })}</td><td>${fmtTime(k.expires_at_ms)}</td><td>${stateBadge(this.tokenState(k))}</td>
          <td>${this.tokenState(k) !== 'enabled' ? nothing : this.action(t('agents.revoke'), () => api.request('DELETE', `/v1/agents/enrollment-tokens/${enc(k.id)}`), { secondary: true, danger: true })}</td></tr>`)}</tbody></table>
        ${d.tokens.length ? nothing : html`<p class="empty">${t('agents.no_tokens')}</p>`}
      </section>`;
  }
}
customElements.define('at-agents', Agents);

// ---- recent actions (copy any of them as curl) -------------------------------------------
class History extends LightElement {
  static properties = { tick: { attribute: false } };
  render() {
    if (!api.history.length) return nothing;
    return html`<details class="card history"><summary>${t('history.title', { n: api.history.length })}</summary>
      <ol>${api.history.slice(0, 20).map((r) => html`<li><code>${r.method} ${r.path}</code> <at-curl .req=${() => r}></at-curl></li>`)}</ol></details>`;
  }
}
customElements.define('at-history', History);
