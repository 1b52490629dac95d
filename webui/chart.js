// Small hand-drawn SVG charts: a line of the last values, scaled to their maximum (or `max`).
const NS = 'http://www.w3.org/2000/svg';
const W = 120;
const H = 36;

/** An empty chart element labelled `label` (its figures are in the card's text too). */
export function chart(label) {
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', label);
  svg.setAttribute('class', 'chart');
  const area = document.createElementNS(NS, 'path');
  area.setAttribute('class', 'chart-area');
  const line = document.createElementNS(NS, 'polyline');
  line.setAttribute('class', 'chart-line');
  line.setAttribute('fill', 'none');
  svg.append(area, line);
  return svg;
}

/** Draws `values` (oldest first, the last `slots` of them) across the whole width of `svg`. */
export function draw(svg, values, { max, slots = 60 } = {}) {
  const v = values.slice(-slots);
  const top = Math.max(max ?? 0, ...v, 1e-9);
  const step = W / Math.max(v.length - 1, 1);
  const pts = v.map((y, i) => `${(i * step).toFixed(1)},${(H - 1 - (y / top) * (H - 2)).toFixed(1)}`);
  const right = ((v.length - 1) * step).toFixed(1);
  svg.querySelector('.chart-line').setAttribute('points', pts.join(' '));
  svg.querySelector('.chart-area').setAttribute('d', pts.length ? `M0,${H} L${pts.join(' L')} L${right},${H} Z` : '');
}
