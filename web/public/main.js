// The application shell: sign-in, language, and the portal (/) or the console (/admin),
// switched without a reload so that the token in memory stays with the tab.
import { html, nothing } from './lit.js';
import * as api from './api.js';
import { t, languages, language, setLanguage, initLanguage } from './i18n.js';
import { LightElement, problem } from './ui.js';

const isAdminPath = () => location.pathname.startsWith('/admin');
// The portal's two-factor page is /#security (the broker serves the app at / and /admin only).
const isSecurity = () => !isAdminPath() && location.hash === '#security';

class App extends LightElement {
  static properties = {
    ready: { state: true }, user: { state: true }, admin: { state: true },
    error: { state: true }, busy: { state: true }, second: { state: true }, security: { state: true },
  };

  constructor() {
    super();
    this.admin = isAdminPath();
    this.security = isSecurity();
    // The password waiting for its second factor, kept only while the code is asked for.
    this.second = null;
    api.onAuthChange((p) => { this.user = p; });
    addEventListener('popstate', () => { this.admin = isAdminPath(); this.security = isSecurity(); });
    addEventListener('hashchange', () => { this.security = isSecurity(); });
  }

  async connectedCallback() {
    super.connectedCallback();
    await initLanguage();
    this.ready = true;
  }

  go(e, path) {
    e.preventDefault();
    history.pushState(null, '', path);
    this.admin = isAdminPath();
    this.security = isSecurity();
    this.updateComplete.then(() => this.querySelector('#main')?.focus());
  }

  // Sign-in in one or two steps: name and password; then, when the broker answers 401
  // totp_required, the authenticator's code (or a recovery code) with the same password.
  async signIn(e) {
    e.preventDefault();
    const f = new FormData(e.target);
    const step = this.second;
    const name = step ? step.name : String(f.get('name'));
    const password = step ? step.password : String(f.get('password'));
    const extra = {};
    if (step) {
      const recovery = String(f.get('recovery_code') || '').trim();
      const code = String(f.get('totp_code') || '').replace(/\s+/g, '');
      if (step.recovery) extra.recovery_code = recovery; else extra.totp_code = code;
    }
    this.busy = true;
    this.error = null;
    try {
      await api.login(name, password, extra);
      this.second = null;
      this.updateComplete.then(() => this.querySelector('#main')?.focus());
    } catch (err) {
      if (!step && err.reason === 'totp_required') {
        this.second = { name, password, recovery: false };
        this.updateComplete.then(() => this.querySelector('input[name=totp_code]')?.focus());
      } else {
        this.error = err;
        if (step) {
          e.target.reset();
          this.updateComplete.then(() => this.querySelector(step.recovery ? 'input[name=recovery_code]' : 'input[name=totp_code]')?.focus());
        }
      }
    } finally {
      this.busy = false;
    }
  }

  restartSignIn() {
    this.second = null;
    this.error = null;
    this.updateComplete.then(() => this.querySelector('input[name=name]')?.focus());
  }

  useRecovery(on) {
    this.second = { ...this.second, recovery: on };
    this.error = null;
    this.updateComplete.then(() => this.querySelector(on ? 'input[name=recovery_code]' : 'input[name=totp_code]')?.focus());
  }

  updated() {
    document.title = this.admin ? t('app.title_admin') : t('app.title_portal');
  }

  languagePicker() {
    return html`<label class="lang"><span class="visually-hidden">${t('app.language')}</span>
      <select aria-label=${t('app.language')} @change=${(e) => setLanguage(e.target.value)}>
        ${languages.map((l) => html`<option value=${l.code} ?selected=${l.code === language()} lang=${l.code}>${l.name}</option>`)}
      </select></label>`;
  }

  header() {
    const u = this.user;
    const sec = this.security || !!u?.must_enroll;  // the two-factor page is shown
    return html`<header class="top">
      <a class="skip" href="#main">${t('app.skip')}</a>
      <span class="brand" aria-hidden="true">◭</span>
      <span class="product">${this.admin ? t('app.title_admin') : t('app.title_portal')}</span>
      ${u ? html`<nav aria-label=${t('app.switch')} class="switch">
        <a href="/" aria-current=${this.admin || sec ? 'false' : 'page'} @click=${(e) => this.go(e, '/')}>${t('app.portal')}</a>
        <a href="/#security" aria-current=${sec ? 'page' : 'false'} @click=${(e) => this.go(e, '/#security')}>${t('app.security')}</a>
        ${api.isAdmin() ? html`<a href="/admin" aria-current=${this.admin && !sec ? 'page' : 'false'} @click=${(e) => this.go(e, '/admin')}>${t('app.console')}</a>` : nothing}
      </nav>` : nothing}
      <span class="spacer"></span>
      ${this.languagePicker()}
      ${u ? html`<span class="who">${u.name}</span>
        <button type="button" class="secondary" @click=${() => api.logout()}>${t('app.sign_out')}</button>` : nothing}
    </header>`;
  }

  secondFactorForm() {
    const r = this.second.recovery;
    return html`<main id="main" tabindex="-1" class="signin">
      <h1>${t('signin.second_title')}</h1>
      <form @submit=${(e) => this.signIn(e)} class="card" aria-describedby="second-hint">
        <p id="second-hint">${r ? t('signin.recovery_hint') : t('signin.code_hint', { name: this.second.name })}</p>
        ${r
          ? html`<label>${t('signin.recovery_code')}<input name="recovery_code" autocomplete="off" spellcheck="false" required maxlength="64"></label>`
          : html`<label>${t('signin.code')}<input name="totp_code" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9 ]{6,7}" maxlength="7" required></label>`}
        <button type="submit" ?disabled=${this.busy}>${t('signin.verify')}</button>
        <button type="button" class="secondary" @click=${() => this.useRecovery(!r)}>${r ? t('signin.use_code') : t('signin.use_recovery')}</button>
        <button type="button" class="secondary" @click=${() => this.restartSignIn()}>${t('signin.back')}</button>
        ${problem(this.error)}
      </form>
    </main>`;
  }

  signInForm() {
    if (this.second) return this.secondFactorForm();
    return html`<main id="main" tabindex="-1" class="signin">
      <h1>${this.admin ? t('signin.title_admin') : t('signin.title')}</h1>
      <form @submit=${(e) => this.signIn(e)} class="card">
        <label>${t('signin.name')}<input name="name" autocomplete="username" required autofocus></label>
        <label>${t('signin.password')}<input name="password" type="password" autocomplete="current-password" required></label>
        <button type="submit" ?disabled=${this.busy}>${t('signin.submit')}</button>
        ${problem(this.error)}
      </form>
      ${api.endedBy() && !this.error ? html`<p class="note" role="status">${t('signin.ended')} <code class="reason">${api.endedBy().reason}</code></p>` : nothing}
      <p class="hint">${t('signin.hint')}</p>
    </main>`;
  }

  render() {
    if (!this.ready) return html`<p class="loading">…</p>`;
    if (!this.user) return html`${this.header()}${this.signInForm()}`;
    let body;
    if (this.user.must_enroll) {
      // TOTP is required and not set up: the broker refuses every other page until it is.
      import('./security.js');
      body = html`<at-security id="main" tabindex="-1" enforced></at-security>`;
    } else if (this.security) {
      import('./security.js');
      body = html`<at-security id="main" tabindex="-1"></at-security>`;
    } else if (this.admin && !api.isAdmin()) {
      body = html`<main id="main" tabindex="-1"><h1>${t('app.console')}</h1><p>${t('app.not_admin')}</p></main>`;
    } else if (this.admin) {
      import('./admin.js');
      body = html`<at-admin id="main" tabindex="-1"></at-admin>`;
    } else {
      import('./portal.js');
      body = html`<at-portal id="main" tabindex="-1"></at-portal>`;
    }
    return html`${this.header()}${body}`;
  }
}
customElements.define('at-app', App);
