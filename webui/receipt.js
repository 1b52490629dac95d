// A call's receipt (`GET /v1/receipts/{id}`): tokens, prices, the payer's charge, the split to the
// operator, the adapter owners and the data contributors, and the attributed spans of the answer.
import { h } from './api.js';

/** `wei` (a decimal string) with thousands separators. */
export function fmtWei(wei) { return String(wei).replace(/\B(?=(\d{3})+(?!\d))/g, ',\u2009'); }

export function short(addr) { return addr && addr.length > 12 ? `${addr.slice(0, 6)}\u2026${addr.slice(-4)}` : addr || '\u2013'; }

function same(a, b) { return String(a).toLowerCase() === String(b).toLowerCase(); }

/** Who `to` is in this call: operator, adapter owner, data contributor (several may hold). */
function roles(r, to) {
  const out = [];
  if (same(to, r.receipt.operator)) out.push('operator');
  if ((r.adapters || []).some((a) => a.owner && same(a.owner, to))) out.push('owner');
  if ((r.attribution || []).some((d) => (d.contributors || []).some(([c]) => same(c, to)))) out.push('contributor');
  return out.length ? out.join(' + ') : 'recipient';
}

function share(amount, total) {
  const t = BigInt(total);
  if (t === 0n) return '\u2013';
  return `${(Number((BigInt(amount) * 10000n) / t) / 100).toFixed(2)}%`;
}

/** Marks the output tokens covered by attributed spans (choice 0's token ranges) when the receipt
 * has them and the streamed tokens spell the output exactly; returns how many spans it marked. */
function highlight(out, r, tokens) {
  const spans = (r.attribution || []).flatMap((d) => (d.spans || [])
    .filter((s) => s.choice === 0).map((s) => [s.start, s.end, d.datanet]));
  // The token list may end with the stop token, which the text does not show.
  tokens = tokens.slice();
  while (tokens.length && tokens.join('').length > out.textContent.length) tokens.pop();
  if (!spans.length || !tokens.length || tokens.join('') !== out.textContent) return 0;
  const of = new Array(tokens.length).fill(null);
  for (const [s, e, dn] of spans) for (let i = s; i < e && i < tokens.length; i += 1) of[i] = dn;
  const parts = [];
  for (let i = 0; i < tokens.length;) {
    let j = i;
    while (j < tokens.length && of[j] === of[i]) j += 1;
    const text = tokens.slice(i, j).join('');
    parts.push(of[i] ? h('mark', { class: 'span', title: `attributed to datanet ${of[i]}` }, text) : text);
    i = j;
  }
  out.replaceChildren(...parts);
  return spans.length;
}

export function renderReceipt(box, r, out, tokens) {
  const rc = r.receipt;
  const prices = (r.adapters || []).map((a) => h('li', {},
    `${a.name}${a.weight !== 1 ? ` (weight ${a.weight})` : ''}: ${fmtWei(a.price_per_million_input_tokens)} in / ${fmtWei(a.price_per_million_output_tokens)} out wei per 1M tokens, cost ${fmtWei(a.cost)} wei`));
  const rows = (r.splits || []).map((s) => h('tr', { class: 'split', 'data-to': s.to, 'data-amount': s.amount },
    h('td', { title: s.to }, h('code', {}, short(s.to))), h('td', { class: 'role' }, roles(r, s.to)),
    h('td', { class: 'num' }, fmtWei(s.amount)), h('td', { class: 'num' }, share(s.amount, rc.cost))));
  const attribution = (r.attribution || []).map((d) => h('li', {},
    `${d.adapter} \u2192 datanet ${d.datanet} (${d.weight_bps / 100}% of the contributors\u2019 share): ${d.source}`,
    d.matched_tokens ? `, ${d.matched_tokens} output tokens matched` : '',
    `, ${(d.contributors || []).length} contributor(s)`));
  const marked = highlight(out, r, tokens);
  box.replaceChildren(h('section', { class: 'receipt-box', 'aria-label': 'Receipt', 'data-request-id': r.request_id },
    h('h3', {}, 'Receipt ', h('span', { class: `badge status-${r.status}` }, r.status)),
    h('dl', { class: 'kv' },
      h('dt', {}, 'Tokens'), h('dd', { class: 'receipt-tokens' }, `${rc.input_tokens} in / ${rc.output_tokens} out`),
      h('dt', {}, 'Payer charge'), h('dd', {}, h('span', { class: 'receipt-cost', 'data-wei': rc.cost }, fmtWei(rc.cost)), ' wei'),
      h('dt', {}, 'Payer'), h('dd', { title: rc.payer }, h('code', {}, short(rc.payer))),
      h('dt', {}, 'Receipt id'), h('dd', { title: rc.receipt_id }, h('code', {}, short(rc.receipt_id)))),
    h('ul', { class: 'prices' }, prices),
    h('table', { class: 'splits' }, h('caption', {}, 'Split of the charge'),
      h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Recipient'), h('th', { scope: 'col' }, 'Role'),
        h('th', { scope: 'col' }, 'Amount (wei)'), h('th', { scope: 'col' }, 'Share'))),
      h('tbody', {}, rows)),
    attribution.length ? h('ul', { class: 'attribution' }, attribution) : h('p', { class: 'note' }, 'No datanets: no contributors for this call.'),
    marked ? h('p', { class: 'note' }, 'Highlighted: output spans found in the adapter\u2019s datanets.') : ''));
}
