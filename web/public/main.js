// The application shell: sign-in, language, and the portal (/) or the console (/admin),
// switched without a reload so that the token in memory stays with the tab.
import { html, nothing } from './lit.js';
import * as api from './api.js';
import { t, languages, language, setLanguage, initLanguage } from './i18n.js';
import { LightElement, problem } from './ui.js';

const isAdminPath = () => location.pathname.startsWith('/admin');

class App extends LightElement {
  static properties = {
    ready: { state: true }, user: { state: true }, admin: { state: true },
    error: { state: true }, busy: { state: true },
  };

  constructor() {
    super();
    this.admin = isAdminPath();
    api.onAuthChange((p) => { this.user = p; });
    addEventListener('popstate', () => { this.admin = isAdminPath(); });
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
    this.updateComplete.then(() => this.querySelector('#main')?.focus());
  }

  async signIn(e) {
    e.preventDefault();
    const f = new FormData(e.target);
    this.busy = true;
    this.error = null;
    try {
      await api.login(String(f.get('name')), String(f.get('password')));
      this.updateComplete.then(() => this.querySelector('#main')?.focus());
    } catch (err) {
      this.error = err;
    } finally {
      this.busy = false;
    }
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
    return html`<header class="top">
      <a class="skip" href="#main">${t('app.skip')}</a>
      <span class="brand" aria-hidden="true">◭</span>
      <span class="product">${this.admin ? t('app.title_admin') : t('app.title_portal')}</span>
      ${u ? html`<nav aria-label=${t('app.switch')} class="switch">
        <a href="/" aria-current=${this.admin ? 'false' : 'page'} @click=${(e) => this.go(e, '/')}>${t('app.portal')}</a>
        ${api.isAdmin() ? html`<a href="/admin" aria-current=${this.admin ? 'page' : 'false'} @click=${(e) => this.go(e, '/admin')}>${t('app.console')}</a>` : nothing}
      </nav>` : nothing}
      <span class="spacer"></span>
      ${this.languagePicker()}
      ${u ? html`<span class="who">${u.name}</span>
        <button type="button" class="secondary" @click=${() => api.logout()}>${t('app.sign_out')}</button>` : nothing}
    </header>`;
  }

  signInForm() {
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
    if (this.admin && !api.isAdmin()) {
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
