// The adapters page: every registered adapter with its terms, on-chain check, tier, pins and what
// it served, paged and searched on the server (`GET /v1/adapters?q=&offset=&limit=`), so 10,000
// adapters cost one page. Load, unload, pin and unpin go out with the admin key. Without the admin key the
// listing falls back to the names of `/v1/models`, searched and paged here.
import { call, showError, clearError, hasAdminKey, h, setText } from './api.js';
import { fmtWei, short } from './receipt.js';

const PAGE = 50;
let offset = 0;
let total = 0;
let query = '';
let timer = null;
let seq = 0;
let names = null; // the /v1/models fallback, fetched once per key change

function badge(cls, text, title) { return h('span', { class: `badge ${cls}`, title: title || false }, text); }

function row(a) {
  const t = a.terms;
  const owner = t && t.owner ? h('code', { title: t.owner }, short(t.owner)) : (t && t.error ? t.error : '\u2013');
  const price = t && t.price_per_million_input_tokens !== undefined
    ? `${fmtWei(t.price_per_million_input_tokens)} / ${fmtWei(t.price_per_million_output_tokens)}` : '\u2013';
  const unload = h('button', { type: 'button', class: 'unload', 'data-adapter': a.id, 'aria-label': `Unload ${a.id}` }, 'Unload');
  const pinned = a.pinned === true;
  const pin = h('button', { type: 'button', class: 'pin', 'data-adapter': a.id, 'data-pinned': String(pinned),
    'aria-label': `${pinned ? 'Unpin' : 'Pin'} ${a.id}` }, pinned ? 'Unpin' : 'Pin');
  return h('tr', { 'data-adapter': a.id, 'data-tier': a.tier || '', 'data-pinned': a.pinned === undefined ? '' : String(pinned) },
    h('th', { scope: 'row' }, a.id),
    h('td', {}, owner),
    h('td', { class: 'num' }, price),
    h('td', {}, a.integrity ? badge(`int-${a.integrity}`, a.integrity, a.integrity_reason) : '\u2013'),
    h('td', { class: 'tier' }, a.tier ? badge(`tier-${a.tier}`, a.tier) : '\u2013'),
    h('td', { class: 'pinned' }, a.pinned === undefined ? '\u2013' : `${pinned ? 'pinned' : 'no'}${a.pins ? ` (${a.pins} running)` : ''}`),
    h('td', { class: 'num' }, a.requests_served ?? '\u2013'),
    h('td', { class: 'num' }, a.generation_tokens === undefined ? '\u2013' : `${a.prompt_tokens} in / ${a.generation_tokens} out`),
    h('td', { class: 'actions' }, pin, ' ', unload));
}

function show(list) {
  document.querySelector('#adapter-table tbody').replaceChildren(...list.map(row));
  const last = Math.min(offset + list.length, total);
  setText(document.getElementById('adapter-page-info'), total ? `${offset + 1}\u2013${last} of ${total}` : 'no adapters');
  document.getElementById('adapter-prev').disabled = offset === 0;
  document.getElementById('adapter-next').disabled = offset + PAGE >= total;
}

async function fallback() {
  if (!names) names = (await call('/v1/models')).data.filter((m) => m.parent).map((m) => m.id);
  const q = query.toLowerCase();
  const hits = q ? names.filter((n) => n.toLowerCase().includes(q)) : names;
  total = hits.length;
  return hits.slice(offset, offset + PAGE).map((id) => ({ id }));
}

/** Fetches and shows the current page; a stale answer (the query moved on) is dropped. */
export async function refresh() {
  const mine = ++seq;
  const note = document.getElementById('adapter-note');
  let list;
  try {
    const qs = new URLSearchParams({ offset: String(offset), limit: String(PAGE) });
    if (query) qs.set('q', query);
    const r = await call(`/v1/adapters?${qs}`, { admin: true });
    if (mine !== seq) return;
    total = r.total ?? r.data.length;
    list = r.data;
    setText(note, '');
  } catch (e) {
    if (mine !== seq) return;
    if (e.status !== 401 && e.status !== 403) { showError(e); return; }
    setText(note, 'Residency, terms and counters need the admin key; showing names only.');
    try { list = await fallback(); } catch (e2) { showError(e2); return; }
    if (mine !== seq) return;
  }
  show(list);
}

async function admin(path, body, what) {
  clearError();
  try {
    await call(path, { method: 'POST', body, admin: true });
    names = null;
    setText(document.getElementById('adapter-note'), what);
    await refresh();
  } catch (e) { showError(e); }
}

function startPolling() { stopPolling(); timer = setInterval(() => { if (!document.hidden) refresh(); }, 5000); }
function stopPolling() { if (timer) clearInterval(timer); timer = null; }

export function showAdapters() { refresh(); startPolling(); }
export function hideAdapters() { stopPolling(); }

export function initAdapters() {
  let debounce = null;
  document.getElementById('adapter-search').addEventListener('input', (e) => {
    clearTimeout(debounce);
    debounce = setTimeout(() => { query = e.target.value.trim(); offset = 0; refresh(); }, 150);
  });
  document.getElementById('adapter-refresh').addEventListener('click', refresh);
  document.getElementById('adapter-prev').addEventListener('click', () => { offset = Math.max(0, offset - PAGE); refresh(); });
  document.getElementById('adapter-next').addEventListener('click', () => { if (offset + PAGE < total) { offset += PAGE; refresh(); } });
  document.querySelector('#adapter-table tbody').addEventListener('click', (e) => {
    const b = e.target.closest('button.unload, button.pin');
    if (!b) return;
    if (!hasAdminKey()) setText(document.getElementById('adapter-note'), 'No admin key entered: the server will refuse this.');
    const name = b.dataset.adapter;
    if (b.classList.contains('unload')) admin('/v1/unload_lora_adapter', { lora_name: name }, `Unloaded ${name}.`);
    else if (b.dataset.pinned === 'true') admin('/v1/unpin_lora_adapter', { lora_name: name }, `Unpinned ${name}.`);
    else admin('/v1/pin_lora_adapter', { lora_name: name }, `Pinned ${name}: it stays on device until unpinned.`);
  });
  document.getElementById('load-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const name = document.getElementById('load-name').value.trim();
    admin('/v1/load_lora_adapter', { lora_name: name, lora_path: document.getElementById('load-path').value.trim() }, `Loaded ${name}.`);
  });
  document.addEventListener('openlora:keys', () => { names = null; if (!document.getElementById('page-adapters').hidden) refresh(); });
}
