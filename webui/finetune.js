// The fine-tuning page, over OpenAI's fine-tuning API (admin key): upload a JSONL
// (`POST /v1/files`, purpose `fine-tune`), start a job (`POST /v1/fine_tuning/jobs`) on a base
// with hyper-parameters, follow it (`GET /v1/fine_tuning/jobs/{id}` and its `events`: the
// `metrics` events' `data.step` / `data.train_loss` draw the loss chart), cancel it, and once it
// succeeded open the playground on its `fine_tuned_model`.
import { call, upload, showError, clearError, h, setText } from './api.js';
import { chart, draw } from './chart.js';
import { tryModel } from './playground.js';

const EVERY_MS = 1500;
const DONE = ['succeeded', 'failed', 'cancelled'];
let job = null;     // the job shown
let events = new Map(); // event id -> event, of the job shown
let timer = null;
let svg = null;

const $ = (id) => document.getElementById(id);
const num = (id) => Number($(id).value);

/** Every event of the job (newest first, paged with `after`) merged into `events`. */
async function fetchEvents(id) {
  let after = '';
  for (let i = 0; i < 50; i++) {
    const qs = new URLSearchParams({ limit: '100' });
    if (after) qs.set('after', after);
    const page = await call(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}/events?${qs}`, { admin: true });
    let fresh = false;
    for (const e of page.data) if (!events.has(e.id)) { events.set(e.id, e); fresh = true; }
    if (!page.has_more || !fresh || !page.data.length) return;
    after = page.data[page.data.length - 1].id;
  }
}

/** Training loss per step, from the `metrics` events, by step. */
function losses() {
  const by = new Map();
  for (const e of events.values()) {
    const d = e.data || {};
    if (e.type === 'metrics' && Number.isFinite(d.step) && Number.isFinite(d.train_loss)) by.set(d.step, d.train_loss);
  }
  return [...by.entries()].sort((a, b) => a[0] - b[0]);
}

function render() {
  $('ft-job').hidden = false;
  setText($('ft-job-id'), job.id);
  const status = $('ft-status');
  setText(status, job.status);
  status.dataset.status = job.status;
  $('ft-job').dataset.status = job.status;
  const pts = losses();
  draw(svg, pts.map(([, l]) => l), { slots: Math.max(pts.length, 2) });
  svg.dataset.points = String(pts.length);
  const last = pts[pts.length - 1];
  setText($('ft-loss'), last ? `step ${last[0]}: ${last[1].toFixed(4)} (${pts.length} steps)` : 'no steps yet');
  const total = [...events.values()].map((e) => e.data && e.data.total_steps).find(Number.isFinite);
  setText($('ft-progress'), last && total ? `step ${last[0]} of ${total}` : '');
  $('ft-cancel').disabled = DONE.includes(job.status);
  const ready = job.status === 'succeeded' && job.fine_tuned_model;
  $('ft-try').hidden = !ready;
  if (ready) $('ft-try').dataset.model = job.fine_tuned_model;
  const list = [...events.values()].sort((a, b) => b.created_at - a.created_at || (a.id < b.id ? 1 : -1)).slice(0, 30);
  $('ft-events').replaceChildren(...list.map((e) => h('li', { class: `ev-${e.level || 'info'}` },
    h('time', {}, new Date(e.created_at * 1000).toLocaleTimeString()), ' ', e.message)));
  if (job.error && job.error.message) setText($('ft-progress'), job.error.message);
}

async function poll() {
  if (!job) return;
  const id = job.id;
  try {
    const now = await call(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}`, { admin: true });
    await fetchEvents(id);
    if (!job || job.id !== id) return;
    job = now;
    render();
    if (DONE.includes(job.status)) { stop(); listJobs(); }
  } catch (e) { stop(); showError(e); }
}

function stop() { if (timer) clearInterval(timer); timer = null; }
function follow(j) {
  stop();
  job = j;
  events = new Map();
  render();
  poll();
  timer = setInterval(() => { if (!document.hidden) poll(); }, EVERY_MS);
}

async function listJobs() {
  try {
    const r = await call('/v1/fine_tuning/jobs?limit=10', { admin: true });
    $('ft-jobs').querySelector('tbody').replaceChildren(...r.data.map((j) => h('tr', { 'data-job': j.id },
      h('th', { scope: 'row' }, h('code', {}, j.id)), h('td', {}, j.model), h('td', {}, j.status),
      h('td', {}, j.fine_tuned_model || '\u2013'),
      h('td', {}, h('button', { type: 'button', class: 'ft-show', 'data-job': j.id, 'aria-label': `Show ${j.id}` }, 'Show')))));
  } catch (e) {
    // Passive loads explain instead of raising a banner; actions still show theirs.
    if (e.status === 404) setText($('finetune-note'), `Not available here: ${e.message}`);
    else if (e.status === 401 || e.status === 403) setText($('finetune-note'), 'The fine-tuning API needs the admin key: enter it above and press Use keys.');
    else showError(e);
  }
}

async function models() {
  try {
    const r = await call('/v1/models');
    const roots = r.data.filter((m) => !m.parent);
    const sel = $('ft-model');
    const keep = sel.value;
    sel.replaceChildren(...roots.map((m) => h('option', { value: m.id }, m.id)));
    if (roots.some((m) => m.id === keep)) sel.value = keep;
  } catch (e) { showError(e); }
}

async function onUpload(e) {
  e.preventDefault();
  clearError();
  const file = $('ft-file').files[0];
  if (!file) return;
  const form = new FormData();
  form.append('purpose', 'fine-tune');
  form.append('file', file, file.name);
  try {
    const f = await upload('/v1/files', form, { admin: true });
    $('ft-training-file').value = f.id;
    setText($('ft-file-note'), `Uploaded ${f.filename} (${f.bytes} bytes) as ${f.id}.`);
  } catch (err) { showError(err); }
}

async function onStart(e) {
  e.preventDefault();
  clearError();
  const body = {
    model: $('ft-model').value,
    training_file: $('ft-training-file').value.trim(),
    method: { type: 'supervised', supervised: { hyperparameters: {
      n_epochs: num('ft-epochs'), batch_size: num('ft-batch'), learning_rate_multiplier: num('ft-lrm') } } },
    lora: { rank: num('ft-rank') },
  };
  const suffix = $('ft-suffix').value.trim();
  if (suffix) body.suffix = suffix;
  if ($('ft-seed').value !== '') body.seed = num('ft-seed');
  try {
    follow(await call('/v1/fine_tuning/jobs', { method: 'POST', body, admin: true }));
    listJobs();
  } catch (err) { showError(err); }
}

async function onCancel() {
  if (!job) return;
  clearError();
  try {
    job = await call(`/v1/fine_tuning/jobs/${encodeURIComponent(job.id)}/cancel`, { method: 'POST', admin: true });
    render();
    poll();
  } catch (err) { showError(err); }
}

export function showFinetune() { models(); listJobs(); if (job && !DONE.includes(job.status) && !timer) follow(job); }
export function hideFinetune() { stop(); }

export function initFinetune() {
  svg = chart('Training loss by step');
  $('ft-chart-box').append(svg);
  $('ft-upload-form').addEventListener('submit', onUpload);
  $('ft-job-form').addEventListener('submit', onStart);
  $('ft-cancel').addEventListener('click', onCancel);
  $('ft-try').addEventListener('click', () => tryModel($('ft-try').dataset.model));
  $('ft-jobs').addEventListener('click', async (e) => {
    const b = e.target.closest('button.ft-show');
    if (!b) return;
    clearError();
    try { follow(await call(`/v1/fine_tuning/jobs/${encodeURIComponent(b.dataset.job)}`, { admin: true })); } catch (err) { showError(err); }
  });
  document.addEventListener('openlora:keys', () => { if (!$('page-finetune').hidden) showFinetune(); });
}
