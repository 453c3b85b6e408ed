// A small line chart drawn as SVG elements (no markup strings, no inline style: colours come
// from the stylesheet through classes).

import { h } from './dom.js';

/**
 * A line chart of `points` ([t, value] pairs, t in ms) over the `span` ms before `now`, from
 * 0 to at least `floor`, labelled with its highest value. `label` describes it for assistive
 * technology.
 */
export function lineChart(points, { now, span, floor = 1, width = 160, height = 36, label }) {
  const shown = points.filter(([t]) => t >= now - span);
  const highest = Math.max(0, ...shown.map(([, v]) => v));
  const top = Math.max(floor, highest);
  const x = (t) => ((t - (now - span)) / span) * width;
  const y = (v) => height - 3 - (v / top) * (height - 6);
  const svg = h('svg:svg', {
    viewBox: `0 0 ${width} ${height}`, width, height, class: 'spark', role: 'img', 'aria-label': label,
  });
  svg.append(h('svg:title', {}, label));
  svg.append(h('svg:rect', { x: 0.5, y: 0.5, width: width - 1, height: height - 1, rx: 3, class: 'frame' }));
  svg.append(h('svg:text', { x: width - 4, y: 11, 'text-anchor': 'end', class: 'scale' }, `max ${highest.toLocaleString()}`));
  if (shown.length === 1) {
    svg.append(h('svg:circle', { cx: x(shown[0][0]), cy: y(shown[0][1]), r: 2, class: 'dot' }));
  } else if (shown.length > 1) {
    const d = shown.map(([t, v], i) => `${i ? 'L' : 'M'}${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
    svg.append(h('svg:path', { d, class: 'line' }));
  }
  return svg;
}
