// The server page: live figures from the server's own `/metrics` (Prometheus text), scraped
// every 2 s while the page is shown; rates are differences between two scrapes.
import { text, showError, h, setText } from './api.js';
import { chart, draw } from './chart.js';

const EVERY_MS = 2000;
let timer = null;
let prev = null; // { at, m }
const history = {};

/** Prometheus text -> { name: [{ labels, value }] }. */
export function parseMetrics(body) {
  const out = {};
  for (const line of body.split('\n')) {
    if (!line || line[0] === '#') continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const [, k, v] of (m[3] || '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[k] = v;
    (out[m[1]] ||= []).push({ labels, value: Number(m[4]) });
  }
  return out;
}

function sum(m, name, where = {}) {
  const s = m[name];
  if (!s) return null;
  return s.filter((x) => Object.entries(where).every(([k, v]) => x.labels[k] === v)).reduce((a, x) => a + x.value, 0);
}

function rate(m, name, secs, where) {
  if (!prev || secs <= 0) return 0;
  const now = sum(m, name, where);
  const then = sum(prev.m, name, where);
  return now === null || then === null ? 0 : Math.max(0, now - then) / secs;
}

/** The figures of one scrape: [key, label, value, shown text, chart max]. */
function figures(m, secs) {
  const hits = rate(m, 'openlora_adapter_hits_total', secs);
  const misses = rate(m, 'openlora_adapter_misses_total', secs);
  const allHits = sum(m, 'openlora_adapter_hits_total') || 0;
  const allLookups = allHits + (sum(m, 'openlora_adapter_misses_total') || 0);
  const hitRate = hits + misses > 0 ? hits / (hits + misses) : (allLookups ? allHits / allLookups : 0);
  const kv = sum(m, 'openlora_kv_cache_usage_ratio') || 0;
  const tier = (t) => sum(m, 'openlora_adapters_resident', { tier: t }) || 0;
  const unsettled = sum(m, 'openlora_ledger_unsettled_records');
  const tps = rate(m, 'openlora_generation_tokens_total', secs);
  const rps = rate(m, 'openlora_requests_total', secs);
  const pageIns = rate(m, 'openlora_adapter_loads_total', secs, { tier: 'device' });
  return [
    ['throughput', 'Generated tokens/s', tps, tps.toFixed(1)],
    ['requests', 'Requests/s', rps, rps.toFixed(2)],
    ['queue', 'Queue depth (waiting)', sum(m, 'openlora_queue_length') || 0, `${sum(m, 'openlora_queue_length') || 0} waiting, ${sum(m, 'openlora_running_sequences') || 0} running`],
    ['kv', 'KV cache use', kv, `${(kv * 100).toFixed(1)}%`, 1],
    ['pageins', 'Adapter page-ins/s (to device)', pageIns, `${pageIns.toFixed(2)}/s; resident: ${tier('device')} device, ${tier('host')} host`],
    ['hitrate', 'Adapter hit rate', hitRate, `${(hitRate * 100).toFixed(1)}%`, 1],
    ['backlog', 'Settlement backlog (unsettled records)', unsettled || 0, unsettled === null ? 'metering off' : String(unsettled)],
  ];
}

function card(key, label) {
  let c = document.getElementById(`card-${key}`);
  if (c) return c;
  c = h('section', { class: 'card', id: `card-${key}`, 'aria-label': label },
    h('h2', {}, label), h('p', { class: 'value', 'aria-live': 'off' }, '\u2013'));
  c.append(chart(`${label}, last two minutes`));
  document.getElementById('cards').append(c);
  return c;
}

async function scrape() {
  let body;
  try { body = await text('/metrics'); } catch (e) { showError(e); return; }
  const at = performance.now();
  const m = parseMetrics(body);
  const secs = prev ? (at - prev.at) / 1000 : 0;
  for (const [key, label, value, shown, max] of figures(m, secs)) {
    const c = card(key, label);
    setText(c.querySelector('.value'), shown);
    c.dataset.value = String(value);
    (history[key] ||= []).push(value);
    if (history[key].length > 60) history[key].shift();
    draw(c.querySelector('svg'), history[key], { max });
  }
  prev = { at, m };
}

export function showServer() {
  hideServer();
  scrape();
  timer = setInterval(() => { if (!document.hidden) scrape(); }, EVERY_MS);
}

export function hideServer() { if (timer) clearInterval(timer); timer = null; }

export function initServer() {}
