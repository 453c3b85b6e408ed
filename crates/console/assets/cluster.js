// Every member gossip knows, refreshed every two seconds: role, region, status, applied
// sequence and lag, with each edge's lag over the last five minutes as a small chart.

import { json } from './api.js';
import { lineChart } from './chart.js';
import { h, replace, showError } from './dom.js';

const EVERY = 2000;
const SPAN = 5 * 60 * 1000;

/** Lag samples per edge, kept while the tab lives: the console's background check of
 * central feeds it too, so a chart has history from when the console was opened. */
const history = new Map();

/** Records each edge's lag from a `/cluster` view taken at `now`. */
export function remember(members, now) {
  for (const m of members) {
    if (m.role !== 'edge' || typeof m.lag_entries !== 'number') continue;
    const samples = history.get(m.node_id) || [];
    samples.push([now, m.lag_entries, m.lag_ms]);
    while (samples.length && samples[0][0] < now - SPAN) samples.shift();
    history.set(m.node_id, samples);
  }
}

/** The chart's time range: the samples so far (at least 20 s), up to five minutes. */
function span(samples, now) {
  const oldest = samples.length ? samples[0][0] : now;
  return Math.min(SPAN, Math.max(20000, now - oldest));
}

function number(value) {
  return typeof value === 'number' ? value.toLocaleString() : '—';
}

export function clusterPage(main, config) {
  const summary = h('p', { class: 'muted', id: 'cluster-summary' }, 'Loading…');
  const table = h('div', { id: 'cluster-members' });
  const updated = h('p', { class: 'muted small', id: 'cluster-updated' });
  replace(main,
    h('div', { class: 'page-head' }, h('h1', {}, 'Cluster'),
      h('p', { class: 'muted' }, `As node ${config.node_id} (${config.role}) sees it through gossip; refreshed every ${EVERY / 1000} s.`)),
    summary, table, updated);

  let stopped = false;
  let timer = null;

  async function refresh() {
    try {
      const view = await json('GET', '/cluster');
      const now = Date.now();
      remember(view.members || [], now);
      render(view, now);
      replace(updated, `Updated ${new Date(now).toLocaleTimeString()}`);
    } catch (error) {
      showError(error, table);
    }
    if (!stopped) timer = setTimeout(tick, EVERY);
  }

  function tick() {
    if (document.hidden) timer = setTimeout(tick, EVERY);
    else refresh();
  }

  function render(view, now) {
    const members = [...(view.members || [])].sort((a, b) => {
      const order = (m) => (m.role === 'central' ? 0 : 1);
      return order(a) - order(b) || Number(a.node_id) - Number(b.node_id) || String(a.node_id).localeCompare(String(b.node_id));
    });
    const edges = members.filter((m) => m.role === 'edge');
    const live = edges.filter((m) => m.status === 'live').length;
    const central = members.find((m) => m.role === 'central');
    replace(summary,
      `${edges.length} edge${edges.length === 1 ? '' : 's'} (${live} live) · central `,
      central ? h('span', { class: `status ${central.status}` }, central.status) : h('span', { class: 'status dead' }, 'unknown'),
      ` · central durable sequence ${number(view.central_durable_sequence)}`);
    replace(table, h('table', { class: 'grid cluster', id: 'cluster-table' },
      h('thead', {}, h('tr', {},
        ['Node', 'Role', 'Region', 'Status', 'Sequence', 'Lag (entries)', 'Lag (ms)', 'Lag over time', 'Address']
          .map((label, i) => h('th', { scope: 'col', class: i >= 8 ? 'wide-only' : null }, label)))),
      h('tbody', {}, members.map((m) => {
        const samples = history.get(m.node_id) || [];
        const chart = m.role === 'edge'
          ? lineChart(samples.map(([t, entries]) => [t, entries]), {
            now, span: span(samples, now), label: `Lag of edge ${m.node_id} in entries over the last ${Math.round(span(samples, now) / 1000)} s; now ${number(m.lag_entries)}, highest ${number(Math.max(0, ...samples.map(([, e]) => e)))}`,
          })
          : null;
        const edge = m.role === 'edge';
        // data-label names each value where a phone shows the row as a card.
        return h('tr', { 'data-node': m.node_id, 'data-role': m.role || '' },
          h('td', { 'data-label': 'Node' }, m.node_id),
          h('td', { 'data-label': 'Role' }, m.role || '?'),
          h('td', { 'data-label': 'Region' }, m.region || '—'),
          h('td', { 'data-label': 'Status' }, h('span', { class: `status ${m.status}` }, m.status)),
          h('td', { class: 'num', 'data-label': edge ? 'Applied seq' : 'Durable seq' }, edge ? number(m.applied_sequence) : number(m.durable_sequence)),
          h('td', { class: 'num', 'data-label': 'Lag (entries)' }, edge ? number(m.lag_entries) : ''),
          h('td', { class: 'num', 'data-label': 'Lag (ms)' }, edge ? number(m.lag_ms) : ''),
          h('td', { class: 'chart', 'data-label': edge ? 'Lag over time' : '' }, chart),
          h('td', { class: 'wide-only' }, h('code', {}, m.http || m.grpc || m.gossip || '')));
      }))));
  }

  refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
