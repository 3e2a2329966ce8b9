// The admin console: navigation, the "as of" time slider that shows every list as it was
// after a past event (?as_of=), and the live event stream that refreshes the open view.
import { html } from './lit.js';
import * as api from './api.js';
import * as live from './live.js';
import { t } from './i18n.js';
import { LightElement } from './ui.js';
import './admin-pages.js';
import './admin-audit.js';

export const PAGES = ['dashboard', 'hosts', 'vms', 'pools', 'apps', 'users', 'sessions', 'agents', 'audit'];

class Admin extends LightElement {
  static properties = {
    page: { state: true }, asOf: { state: true }, last: { state: true },
    tick: { state: true }, liveState: { state: true },
  };

  constructor() {
    super();
    this.page = this.fromHash();
    this.asOf = null;
    this.last = 0;
    this.tick = 0;
    this.liveState = 'connecting';
    this.onHash = () => { this.page = this.fromHash(); };
  }

  fromHash() {
    const h = location.hash.replace(/^#/, '');
    return PAGES.includes(h) ? h : 'dashboard';
  }

  async connectedCallback() {
    super.connectedCallback();
    addEventListener('hashchange', this.onHash);
    try {
      this.last = (await api.send({ ...api.request('GET', '/readyz'), public: true })).data.position;
    } catch { this.last = 0; }
    live.follow('/v1/events/stream', this.last, (ev) => this.onEvent(ev), (s) => { this.liveState = s; });
  }

  disconnectedCallback() {
    super.disconnectedCallback();
    removeEventListener('hashchange', this.onHash);
    if (live.following() === '/v1/events/stream') live.stop();
  }

  onEvent(ev) {
    const pos = Number(ev.id);
    if (pos > this.last) this.last = pos;
    this.dispatchEvent(new CustomEvent('atrium-event', { detail: ev.data }));
    // Coalesce bursts: one refresh of the open view per 300 ms.
    if (!this.pending) {
      this.pending = setTimeout(() => { this.pending = null; this.tick++; }, 300);
    }
  }

  // The slider re-reads every list of the view as of its position: wait until it rests.
  slide(n) {
    clearTimeout(this.sliding);
    this.sliding = setTimeout(() => { this.asOf = n >= this.last ? null : n; }, 250);
  }

  asOfBar() {
    const v = this.asOf ?? this.last;
    return html`<div class="asof" role="group" aria-labelledby="asof-l">
      <span id="asof-l">${t('asof.label')}</span>
      <input type="range" min="1" max=${Math.max(1, this.last)} .value=${String(v)} aria-labelledby="asof-l"
             aria-valuetext=${this.asOf ? t('asof.position', { n: this.asOf }) : t('asof.now')}
             @input=${(e) => this.slide(Number(e.target.value))}>
      <label class="inline">${t('asof.position_label')}
        <input type="number" min="1" max=${this.last} .value=${String(v)} class="narrow"
               @change=${(e) => { const n = Number(e.target.value); this.asOf = n >= 1 && n < this.last ? n : null; }}></label>
      ${this.asOf ? html`<strong class="asof-on" role="status">${t('asof.showing', { n: this.asOf, last: this.last })}</strong>
        <button type="button" class="small" @click=${() => { this.asOf = null; }}>${t('asof.back_to_now')}</button>`
      : html`<span class="live-dot" role="status">${t(`live.${this.liveState}`)} · ${t('asof.position', { n: this.last })}</span>`}
    </div>`;
  }

  render() {
    const page = this.page;
    const props = { asOf: this.asOf, tick: this.tick };
    const view = {
      dashboard: html`<at-dashboard .asOf=${props.asOf} .tick=${props.tick}></at-dashboard>`,
      hosts: html`<at-hosts .asOf=${props.asOf} .tick=${props.tick}></at-hosts>`,
      vms: html`<at-vms .asOf=${props.asOf} .tick=${props.tick}></at-vms>`,
      pools: html`<at-pools .asOf=${props.asOf} .tick=${props.tick}></at-pools>`,
      apps: html`<at-apps .asOf=${props.asOf} .tick=${props.tick}></at-apps>`,
      users: html`<at-users .asOf=${props.asOf} .tick=${props.tick}></at-users>`,
      sessions: html`<at-sessions .asOf=${props.asOf} .tick=${props.tick}></at-sessions>`,
      agents: html`<at-agents .asOf=${props.asOf} .tick=${props.tick}></at-agents>`,
      audit: html`<at-audit .asOf=${props.asOf} .tick=${props.tick} .last=${this.last} .source=${this}></at-audit>`,
    }[page];
    return html`<div class="console">
      <nav class="side" aria-label=${t('admin.nav')}>
        <ul>${PAGES.map((p) => html`<li><a href=${`#${p}`} aria-current=${p === page ? 'page' : 'false'}>${t(`admin.page.${p}`)}</a></li>`)}</ul>
      </nav>
      <div class="content">
        ${this.asOfBar()}
        ${view}
        <at-history .tick=${this.tick}></at-history>
      </div>
    </div>`;
  }
}
customElements.define('at-admin', Admin);
