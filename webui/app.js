// The console's shell: the key form, the error banner, and hash navigation between pages.
import { apiKey, setApiKey, setAdminKey, clearError } from './api.js';
import { initPlayground } from './playground.js';
import { initAdapters, showAdapters, hideAdapters } from './adapters.js';
import { initServer, showServer, hideServer } from './server.js';
import { initFinetune, showFinetune, hideFinetune } from './finetune.js';

const PAGES = ['playground', 'adapters', 'server', 'finetune'];
const ON_SHOW = { adapters: showAdapters, server: showServer, finetune: showFinetune };
const ON_HIDE = { adapters: hideAdapters, server: hideServer, finetune: hideFinetune };
let current = null;

function route() {
  const want = location.hash.slice(1);
  const page = PAGES.includes(want) ? want : 'playground';
  if (page === current) return;
  if (current && ON_HIDE[current]) ON_HIDE[current]();
  for (const p of PAGES) document.getElementById(`page-${p}`).hidden = p !== page;
  for (const a of document.querySelectorAll('nav a')) {
    if (a.dataset.page === page) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  current = page;
  if (ON_SHOW[page]) ON_SHOW[page]();
}

function initKeys() {
  const api = document.getElementById('api-key');
  const admin = document.getElementById('admin-key');
  api.value = apiKey();
  document.getElementById('keys').addEventListener('submit', (e) => {
    e.preventDefault();
    setApiKey(api.value.trim());
    setAdminKey(admin.value.trim());
    clearError();
    document.dispatchEvent(new CustomEvent('openlora:keys'));
  });
}

document.getElementById('banner-close').addEventListener('click', clearError);
initKeys();
initPlayground();
initAdapters();
initServer();
initFinetune();
window.addEventListener('hashchange', route);
route();
