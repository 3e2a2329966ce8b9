// Audit: the event log with filters (type and stream by the broker; actor and time on the
// loaded page), a live tail from the console's event stream, and each event's position in
// the hash chain with its hash.
import { html, nothing } from './lit.js';
import * as api from './api.js';
import { t, fmtTime } from './i18n.js';
import { Page } from './admin-pages.js';

class Audit extends Page {
  static properties = {
    last: { attribute: false }, source: { attribute: false },
    f: { state: true }, tail: { state: true }, open: { state: true },
  };

  constructor() {
    super();
    this.f = {};
    this.tail = true;
    this.onLive = (e) => this.append(e.detail);
  }

  connectedCallback() {
    super.connectedCallback();
    this.source?.addEventListener('atrium-event', this.onLive);
  }

  disconnectedCallback() {
    super.disconnectedCallback();
    this.source?.removeEventListener('atrium-event', this.onLive);
  }

  updated(ch) {
    if (ch.has('source') && this.source) this.source.addEventListener('atrium-event', this.onLive);
    if (ch.has('asOf') || (!this.d && ch.has('last') && this.last)) this.reload();
  }

  matches(e) {
    const f = this.f;
    if (f.type && e.type !== f.type) return false;
    if (f.stream && e.stream !== f.stream) return false;
    if (f.actor && !(e.actor === f.actor || this.userName(e.actor) === f.actor)) return false;
    if (f.from && e.recorded_at_ms < Date.parse(f.from)) return false;
    if (f.to && e.recorded_at_ms > Date.parse(f.to)) return false;
    if (this.asOf && e.position > this.asOf) return false;
    return true;
  }

  userName(id) { return this.d?.users?.[id] || ''; }

  query(cursor) {
    const f = this.f;
    const upto = this.asOf || this.last || 0;
    const after = f.after !== undefined && f.after !== '' ? Number(f.after)
      : f.type || f.stream ? 0 : Math.max(0, upto - 100);
    return { after, limit: 200, type: f.type, stream: f.stream, cursor };
  }

  async load() {
    const users = Object.fromEntries((await api.getAll('/v1/users')).map((u) => [u.id, u.name]));
    const page = await api.get('/v1/events', this.query());
    return { users, items: page.items, next: page.next_cursor };
  }

  async more() {
    try {
      const page = await api.get('/v1/events', this.query(this.d.next));
      this.d = { ...this.d, items: [...this.d.items, ...page.items], next: page.next_cursor };
    } catch (e) { this.error = e; }
  }

  append(ev) {
    if (!this.tail || this.asOf || !this.d || !ev || typeof ev !== 'object') return;
    if (this.d.items.some((x) => x.position === ev.position)) return;
    this.d = { ...this.d, items: [...this.d.items, ev].slice(-2000) };
  }

  filter(e) {
    e.preventDefault();
    this.f = this.form('audit-filter');
    this.reload();
  }

  render() {
    const shown = (this.d?.items || []).filter((e) => this.matches(e));
    return html`${this.heading('audit')}${this.status()}
      <form id="audit-filter" class="card filters" @submit=${(e) => this.filter(e)} aria-label=${t('common.filters')}>
        <label>${t('audit.type')}<input name="type" placeholder="UserCreated" .value=${this.f.type || ''}></label>
        <label>${t('audit.stream')}<input name="stream" placeholder="user-…" .value=${this.f.stream || ''}></label>
        <label>${t('audit.actor')}<input name="actor" .value=${this.f.actor || ''}></label>
        <label>${t('audit.from')}<input name="from" type="datetime-local" step="1" .value=${this.f.from || ''}></label>
        <label>${t('audit.to')}<input name="to" type="datetime-local" step="1" .value=${this.f.to || ''}></label>
        <label>${t('audit.after')}<input name="after" type="number" min="0" class="narrow" .value=${this.f.after ?? ''}></label>
        <div class="form-actions"><button type="submit">${t('audit.apply')}</button>
          <at-curl .req=${() => api.request('GET', '/v1/events', { query: this.query() })}></at-curl></div>
        <label class="inline"><input type="checkbox" ?checked=${this.tail} ?disabled=${!!this.asOf} @change=${(e) => { this.tail = e.target.checked; }}> ${t('audit.live_tail')}</label>
      </form>
      <p class="muted" role="status">${t('audit.count', { n: shown.length })}</p>
      <table class="events-table"><caption class="visually-hidden">${t('admin.page.audit')}</caption><thead><tr>
        <th scope="col">${t('audit.position')}</th><th scope="col">${t('audit.time')}</th><th scope="col">${t('audit.type')}</th>
        <th scope="col">${t('audit.stream')}</th><th scope="col">${t('audit.actor')}</th><th scope="col">${t('audit.hash')}</th><th scope="col"><span class="visually-hidden">${t('common.details')}</span></th></tr></thead>
      <tbody>${shown.map((e) => html`<tr>
        <td class="pos"><code>#${e.position}</code></td><td>${fmtTime(e.recorded_at_ms)}</td><td class="type"><code>${e.type}</code></td>
        <td><button type="button" class="link" @click=${() => { this.f = { ...this.f, stream: e.stream, after: '0' }; this.reload(); }}
             aria-label=${t('audit.filter_stream', { s: e.stream })}>${e.stream}</button> <span class="muted">v${e.stream_version}</span></td>
        <td>${this.userName(e.actor) || e.actor}</td>
        <td class="hash"><code title=${e.hash}>${e.hash.slice(0, 12)}…</code></td>
        <td><button type="button" class="small secondary" aria-expanded=${this.open === e.position ? 'true' : 'false'}
             @click=${() => { this.open = this.open === e.position ? null : e.position; }}>${t('common.details')}</button></td></tr>
        ${this.open === e.position ? html`<tr class="detail"><td colspan="7">
          <dl class="grid"><dt>${t('audit.hash')}</dt><dd><code>${e.hash}</code></dd>
            <dt>${t('audit.correlation')}</dt><dd><code>${e.correlation_id}</code></dd>
            <dt>${t('audit.schema')}</dt><dd>${e.schema_version}</dd></dl>
          <pre class="json">${JSON.stringify(e.data, null, 2)}</pre></td></tr>` : nothing}`)}
      </tbody></table>
      ${this.d?.next ? html`<button type="button" class="secondary" @click=${() => this.more()}>${t('audit.more')}</button>` : nothing}`;
  }
}
customElements.define('at-audit', Audit);
