// Shared pieces of the pages: light-DOM Lit elements (one global stylesheet, no inline
// styles, so the strict CSP holds), copy-as-curl, problem display, small SVG charts,
// downloads.
import { LitElement, html, svg, nothing } from './lit.js';
import { curl, ApiError } from './api.js';
import { t, tOr, onLanguage, problemText } from './i18n.js';

export class LightElement extends LitElement {
  createRenderRoot() { return this; }
  connectedCallback() {
    super.connectedCallback();
    this._offLang = onLanguage(() => this.requestUpdate());
  }
  disconnectedCallback() {
    super.disconnectedCallback();
    this._offLang?.();
  }
}

// "Copy as curl" for an action: `.req` is a function giving the request the action would
// send with the form as it is now.
export class CurlButton extends LightElement {
  static properties = { req: { attribute: false }, text: { state: true } };
  async copy() {
    this.text = curl(this.req());
    try { await navigator.clipboard.writeText(this.text); } catch { /* shown below anyway */ }
  }
  render() {
    return html`<button type="button" class="secondary small" @click=${() => this.copy()}>${t('curl.copy')}</button>
      ${this.text ? html`<pre class="curl" role="status" aria-label=${t('curl.label')}>${this.text}</pre>` : nothing}`;
  }
}
customElements.define('at-curl', CurlButton);

// A refusal or failure, with its stable reason.
export function problem(err) {
  if (!err) return nothing;
  const reason = err instanceof ApiError ? err.reason : '';
  const fields = err instanceof ApiError ? err.problem.errors || [] : [];
  return html`<div class="problem" role="alert">
    <strong>${t('problem.refused')}</strong> ${problemText(err)}
    ${reason ? html`<code class="reason">${reason}</code>` : nothing}
    ${err instanceof ApiError && err.problem.detail && problemText(err) !== err.problem.detail
      ? html`<div class="detail">${err.problem.detail}</div>` : nothing}
    ${fields.length ? html`<ul>${fields.map((f) => html`<li><code>${f.field}</code> ${f.message}</li>`)}</ul>` : nothing}
  </div>`;
}

// Horizontal bars: [{label, value, tone}], with the values as text too.
export function barChart(title, rows) {
  const max = Math.max(1, ...rows.map((r) => r.value));
  const h = 22;
  const summary = rows.map((r) => `${r.label}: ${r.value}`).join(', ');
  if (!rows.length) return html`<figure class="chart"><figcaption>${title}</figcaption><p class="empty">${t('common.none')}</p></figure>`;
  return html`<figure class="chart">
    <figcaption>${title}</figcaption>
    <svg role="img" aria-label=${`${title}: ${summary || t('common.none')}`} viewBox=${`0 0 320 ${Math.max(h, rows.length * h)}`}
         width="320" height=${Math.max(h, rows.length * h)}>
      ${rows.map((r, i) => svg`
        <text x="0" y=${i * h + 15} class="chart-label">${r.label}</text>
        <rect x="120" y=${i * h + 4} height="14" width=${Math.max(r.value ? 2 : 0, (r.value / max) * 160)}
              class=${`bar tone-${r.tone || 'neutral'}`}></rect>
        <text x=${128 + (r.value / max) * 160} y=${i * h + 15} class="chart-value">${r.value}</text>`)}
    </svg>
  </figure>`;
}

// A stacked bar of parts [{label, value, tone}] out of a total, e.g. a pool's capacity.
export function stackedBar(title, parts, total) {
  const sum = Math.max(total || 0, parts.reduce((a, p) => a + p.value, 0), 1);
  let x = 0;
  const summary = parts.map((p) => `${p.label} ${p.value}`).join(', ');
  return html`<svg role="img" class="stacked" aria-label=${`${title}: ${summary}`} viewBox="0 0 200 12" width="200" height="12">
    <rect x="0" y="0" width="200" height="12" class="bar-track"></rect>
    ${parts.map((p) => {
      const w = (p.value / sum) * 200;
      const r = svg`<rect x=${x} y="0" width=${w} height="12" class=${`bar tone-${p.tone}`}></rect>`;
      x += w;
      return r;
    })}
  </svg>`;
}

export function download(name, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  a.hidden = true;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

export function stateBadge(state) {
  return html`<span class=${`badge state-${String(state).replace(/[^a-z_]/g, '')}`}>${tOr(`state.${state}`, state)}</span>`;
}

// A file name from a display name: letters and digits of any script, '-' for the rest.
export function fileName(name, ext) {
  const base = String(name || 'desktop').normalize('NFKC').replace(/[^\p{L}\p{N}._-]+/gu, '-')
    .replace(/^-+|-+$/g, '') || 'desktop';
  return `${base}.${ext}`;
}
