// The playground: one prompt run on one or two targets (base, adapter, or weighted mix), streamed,
// with time to first token, tokens/s and, when metering is on, each call's receipt.
import { apiKey, call, stream, showError, clearError, h, setText, ApiError } from './api.js';
import { renderReceipt } from './receipt.js';

const MIX = '\u0000mix';
let base = '';
let adapters = [];
let running = null;

/** One pane's target control: a select (base, adapters, mix) and the mix rows. */
function buildTarget(box, letter) {
  box.replaceChildren(
    h('label', {}, `Model ${letter} `, h('select', { id: `model-${letter.toLowerCase()}`, class: 'target-select' })),
    h('div', { class: 'mix', hidden: true },
      h('p', { class: 'note' }, 'Weighted mix: the adapters\u2019 deltas are summed with these weights.'),
      h('div', { class: 'mix-rows' }),
      h('button', { type: 'button', class: 'mix-add' }, 'Add adapter')));
  const select = box.querySelector('select');
  const mix = box.querySelector('.mix');
  select.addEventListener('change', () => {
    mix.hidden = select.value !== MIX;
    if (!mix.hidden && !mix.querySelector('.mix-row')) { addMixRow(box, 0.5); addMixRow(box, 0.5); }
  });
  box.querySelector('.mix-add').addEventListener('click', () => addMixRow(box, 0.5));
}

function adapterOptions() { return adapters.map((a) => h('option', { value: a }, a)); }

function addMixRow(box, weight) {
  const rows = box.querySelector('.mix-rows');
  const n = rows.children.length + 1;
  const row = h('div', { class: 'mix-row row' },
    h('label', {}, `Adapter ${n} `, h('select', { class: 'mix-adapter' }, adapterOptions())),
    h('label', {}, 'Weight ', h('input', { class: 'mix-weight', type: 'number', step: '0.05', value: String(weight) })),
    h('button', { type: 'button', class: 'mix-remove', 'aria-label': `Remove adapter ${n}` }, 'Remove'));
  const sel = row.querySelector('select');
  if (adapters.length > 1) sel.selectedIndex = (n - 1) % adapters.length;
  row.querySelector('.mix-remove').addEventListener('click', () => row.remove());
  rows.append(row);
}

function fillTargets() {
  for (const sel of document.querySelectorAll('.target-select')) {
    const keep = sel.value;
    sel.replaceChildren(
      h('option', { value: base }, `${base} (base)`),
      h('optgroup', { label: 'Adapters' }, adapterOptions()),
      h('option', { value: MIX }, 'Weighted mix\u2026'));
    if ([base, MIX, ...adapters].includes(keep)) sel.value = keep;
  }
  for (const sel of document.querySelectorAll('.mix-adapter')) {
    const keep = sel.value;
    sel.replaceChildren(...adapterOptions());
    if (adapters.includes(keep)) sel.value = keep;
  }
}

async function loadModels() {
  try {
    const models = await call('/v1/models');
    const root = models.data.find((m) => !m.parent) || models.data[0];
    base = root.id;
    adapters = models.data.filter((m) => m.parent).map((m) => m.id);
    fillTargets();
  } catch (e) { showError(e); }
}

/** The target of one pane as request fields, and a label for it. */
function targetOf(box) {
  const sel = box.querySelector('.target-select');
  if (sel.value !== MIX) return { fields: { model: sel.value }, label: sel.value };
  const parts = [...box.querySelectorAll('.mix-row')].map((r) => ({
    id: r.querySelector('.mix-adapter').value,
    weight: Number(r.querySelector('.mix-weight').value),
  }));
  const label = parts.map((p) => `${p.id}\u00d7${p.weight}`).join(' + ');
  return { fields: { model: base, adapters: parts }, label };
}

function requestBody() {
  const messages = [];
  const system = document.getElementById('system').value.trim();
  if (system) messages.push({ role: 'system', content: system });
  messages.push({ role: 'user', content: document.getElementById('prompt').value });
  const body = {
    messages,
    temperature: Number(document.getElementById('temperature').value),
    max_tokens: Number(document.getElementById('max-tokens').value),
    logprobs: true,
  };
  if (document.getElementById('json-mode').checked) {
    let schema;
    try { schema = JSON.parse(document.getElementById('json-schema').value); } catch (e) {
      throw new ApiError(400, { error: { message: `The JSON schema is not valid JSON: ${e.message}` } });
    }
    body.response_format = { type: 'json_schema', json_schema: { name: 'console', schema, strict: true } };
  }
  return body;
}

function buildPane(letter, label) {
  return h('article', { class: 'pane', id: `pane-${letter}`, 'data-state': 'streaming', 'aria-label': `Output ${letter.toUpperCase()}` },
    h('h2', {}, `${letter.toUpperCase()}: `, h('span', { class: 'pane-model' }, label)),
    h('div', { class: 'output', 'aria-live': 'polite' }),
    h('dl', { class: 'stats' },
      h('dt', {}, 'Time to first token'), h('dd', { class: 'ttft' }, '\u2013'),
      h('dt', {}, 'Tokens/s'), h('dd', { class: 'tps' }, '\u2013'),
      h('dt', {}, 'Tokens'), h('dd', { class: 'ntok' }, '\u2013')),
    h('div', { class: 'receipt' }));
}

/** Runs `body` into `pane`; resolves when the stream and its receipt are shown. */
async function runPane(pane, body, signal) {
  const out = pane.querySelector('.output');
  const start = performance.now();
  let first = 0;
  let id = '';
  let usage = null;
  let chunks = 0;
  const tokens = [];
  try {
    await stream(body, (c) => {
      id = c.id || id;
      if (c.usage) usage = c.usage;
      for (const ch of c.choices || []) {
        const text = (ch.delta && ch.delta.content) || '';
        if (ch.logprobs && ch.logprobs.content) tokens.push(...ch.logprobs.content.map((t) => t.token));
        if (!text) continue;
        if (!first) { first = performance.now(); setText(pane.querySelector('.ttft'), `${Math.round(first - start)} ms`); }
        chunks += 1;
        out.append(text);
      }
    }, signal);
  } catch (e) {
    pane.dataset.state = 'error';
    if (e.name !== 'AbortError') showError(e);
    return;
  }
  const end = performance.now();
  const n = usage ? usage.completion_tokens : chunks;
  setText(pane.querySelector('.ntok'), usage ? `${usage.prompt_tokens} in / ${n} out` : `${n} out`);
  const secs = (end - (first || start)) / 1000;
  setText(pane.querySelector('.tps'), n > 1 && secs > 0 ? ((n - 1) / secs).toFixed(1) : '\u2013');
  pane.dataset.requestId = id;
  if (body.response_format) markJson(out);
  await showReceipt(pane, id, tokens);
  pane.dataset.state = 'done';
}

function markJson(out) {
  try { JSON.parse(out.textContent); out.classList.add('json-ok'); } catch (_) { out.classList.add('json-bad'); }
}

async function showReceipt(pane, id, tokens) {
  const box = pane.querySelector('.receipt');
  if (!id) return;
  try {
    const r = await call(`/v1/receipts/${encodeURIComponent(id)}`);
    renderReceipt(box, r, pane.querySelector('.output'), tokens);
  } catch (e) {
    if (e.status === 404 && /metering is not enabled/.test(e.message)) {
      box.replaceChildren(h('p', { class: 'note receipt-off' }, 'Metering is off on this server: no receipt.'));
    } else showError(e);
  }
}

async function run(e) {
  e.preventDefault();
  if (running) return;
  clearError();
  let body;
  try { body = requestBody(); } catch (err) { showError(err); return; }
  const boxes = [document.getElementById('target-a')];
  if (document.getElementById('compare').checked) boxes.push(document.getElementById('target-b'));
  const panes = document.getElementById('panes');
  panes.replaceChildren();
  panes.classList.toggle('two', boxes.length === 2);
  running = new AbortController();
  document.getElementById('stop').disabled = false;
  document.getElementById('run').disabled = true;
  const jobs = boxes.map((box, i) => {
    const t = targetOf(box);
    const pane = buildPane('ab'[i], t.label);
    panes.append(pane);
    return runPane(pane, { ...body, ...t.fields }, running.signal);
  });
  await Promise.all(jobs);
  running = null;
  document.getElementById('stop').disabled = true;
  document.getElementById('run').disabled = false;
}

/**
 * Opens the playground on `model` (e.g. a fine-tuned adapter just deployed: `base:adapter`, shown
 * as its adapter), in one pane.
 */
export async function tryModel(model) {
  await loadModels();
  const sel = document.getElementById('model-a');
  const name = model.startsWith(`${base}:`) ? model.slice(base.length + 1) : model;
  if (![...sel.options].some((o) => o.value === name)) {
    showError(new ApiError(404, { error: { message: `model \`${model}\` is not served (yet)` } }));
    return;
  }
  sel.value = name;
  sel.dispatchEvent(new Event('change'));
  const compare = document.getElementById('compare');
  compare.checked = false;
  document.getElementById('target-b').hidden = true;
  location.hash = '#playground';
}

export function initPlayground() {
  buildTarget(document.getElementById('target-a'), 'A');
  buildTarget(document.getElementById('target-b'), 'B');
  document.getElementById('compare').addEventListener('change', (e) => {
    document.getElementById('target-b').hidden = !e.target.checked;
  });
  document.getElementById('json-mode').addEventListener('change', (e) => {
    document.getElementById('schema-label').hidden = !e.target.checked;
  });
  document.getElementById('play-form').addEventListener('submit', run);
  document.getElementById('stop').addEventListener('click', () => running && running.abort());
  document.addEventListener('openlora:keys', () => {
    document.getElementById('key-hint').hidden = true;
    loadModels();
  });
  // A tab that has not given its key yet asks for it first (a server without keys takes an empty one).
  if (apiKey()) loadModels(); else document.getElementById('key-hint').hidden = false;
}
