// The portal's two-factor page (/#security): TOTP enrollment with a QR code of the broker's
// otpauth:// URI (drawn here by the vendored qrcode-generator into a GIF data: URL for an
// <img>, which the CSP's img-src allows; no inline script or style), the secret as text for
// manual entry, confirmation with a first code, and the recovery codes shown once.
import { html, nothing } from './lit.js';
import { qrcode } from './qrcode.js';
import * as api from './api.js';
import { t } from './i18n.js';
import { LightElement, problem } from './ui.js';

// The QR code of `text` as a data: URL (error correction M, the smallest version that holds
// it; 5 px per module and a quiet zone of 4 modules, as the standard asks).
export function qrDataUrl(text) {
  const qr = qrcode(0, 'M');
  qr.addData(text, 'Byte');
  qr.make();
  return qr.createDataURL(5, 20);
}

// "JBSW Y3DP ..." in groups of four, easier to type from the screen.
const grouped = (s) => s.replace(/(.{4})/g, '$1 ').trim();

class Security extends LightElement {
  static properties = {
    enforced: { type: Boolean }, me: { state: true }, enrolling: { state: true },
    codes: { state: true }, error: { state: true }, busy: { state: true }, copied: { state: true },
  };

  constructor() {
    super();
    this.me = null;
    this.enrolling = null;  // the answer of POST /v1/me/totp
    this.codes = null;      // the recovery codes of POST /v1/me/totp/confirm, shown once
  }

  connectedCallback() {
    super.connectedCallback();
    this.load();
  }

  async load() {
    if (this.enforced) return;  // GET /v1/users/{me} answers 403 totp_enrollment_required
    try {
      this.me = await api.get(`/v1/users/${encodeURIComponent(api.signedIn().user_id)}`);
    } catch (e) {
      if (e.reason !== 'totp_enrollment_required') this.error = e;
    }
  }

  async start() {
    this.busy = true;
    this.error = null;
    try {
      this.enrolling = await api.call('POST', '/v1/me/totp');
      this.updateComplete.then(() => this.querySelector('input[name=code]')?.focus());
    } catch (e) {
      this.error = e;
    } finally {
      this.busy = false;
    }
  }

  async confirm(e) {
    e.preventDefault();
    const code = String(new FormData(e.target).get('code') || '').replace(/\s+/g, '');
    this.busy = true;
    this.error = null;
    try {
      const r = await api.call('POST', '/v1/me/totp/confirm', { body: { code } });
      this.codes = r.recovery_codes;
      this.enrolling = null;
      this.me = this.me ? { ...this.me, totp: { ...(this.me.totp || {}), enabled: true } } : this.me;
      this.updateComplete.then(() => this.querySelector('#recovery-h')?.focus());
    } catch (err) {
      this.error = err;
      e.target.reset();
      this.updateComplete.then(() => this.querySelector('input[name=code]')?.focus());
    } finally {
      this.busy = false;
    }
  }

  async copyCodes() {
    try {
      await navigator.clipboard.writeText(this.codes.join('\n'));
      this.copied = t('security.copied');
    } catch {
      this.copied = t('security.copy_failed');
    }
  }

  done() {
    this.codes = null;
    this.copied = null;
    api.enrolled();  // an enforced enrollment: the pages open now
    this.load();
  }

  enrollment() {
    const en = this.enrolling;
    return html`<section class="card" aria-labelledby="enroll-h">
      <h2 id="enroll-h">${t('security.scan_title')}</h2>
      <ol class="enroll-steps">
        <li>${t('security.step_scan')}
          <img class="qr" src=${qrDataUrl(en.otpauth_uri)} alt=${t('security.qr_alt')}></li>
        <li>${t('security.step_manual')}
          <code class="secret">${grouped(en.secret)}</code>
          <details><summary>${t('security.uri')}</summary><code class="uri">${en.otpauth_uri}</code></details></li>
        <li><form @submit=${(e) => this.confirm(e)} class="inline-form">
          <label>${t('security.code', { digits: en.digits || 6 })}<input name="code" inputmode="numeric"
            autocomplete="one-time-code" pattern="[0-9 ]{6,7}" maxlength="7" required></label>
          <button type="submit" ?disabled=${this.busy}>${t('security.confirm')}</button>
        </form></li>
      </ol>
    </section>`;
  }

  recovery() {
    return html`<section class="card" aria-labelledby="recovery-h">
      <h2 id="recovery-h" tabindex="-1">${t('security.recovery_title')}</h2>
      <p role="status">${t('security.enabled_now')}</p>
      <p>${t('security.recovery_hint')}</p>
      <ul class="recovery-codes">${this.codes.map((c) => html`<li><code>${c}</code></li>`)}</ul>
      <div class="form-actions">
        <button type="button" class="secondary" @click=${() => this.copyCodes()}>${t('security.copy')}</button>
        <button type="button" @click=${() => this.done()}>${this.enforced ? t('security.continue') : t('security.saved')}</button>
      </div>
      ${this.copied ? html`<p class="done" role="status">${this.copied}</p>` : nothing}
    </section>`;
  }

  render() {
    const on = this.me?.totp?.enabled;
    let body;
    if (this.codes) body = this.recovery();
    else if (this.enrolling) body = this.enrollment();
    else if (on) {
      body = html`<p class="totp-state" role="status">${t('security.is_on')}</p><p>${t('security.lost_hint')}</p>`;
    } else if (this.me || this.enforced) {
      body = html`<p class="totp-state">${this.enforced || this.me?.totp?.required ? t('security.is_required') : t('security.is_off')}</p>
        <button type="button" ?disabled=${this.busy} @click=${() => this.start()}>${t('security.start')}</button>`;
    } else body = html`<p class="loading">…</p>`;
    return html`<h1>${t('security.title')}</h1>
      ${this.enforced ? html`<p class="note" role="status">${t('security.enforced')}</p>` : nothing}
      <p>${t('security.intro')}</p>
      ${problem(this.error)}
      ${body}`;
  }
}
customElements.define('at-security', Security);
