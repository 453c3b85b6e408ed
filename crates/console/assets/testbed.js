// Consistency experiments: runs a short, bounded visibility experiment on this edge (through
// the testbed's admin endpoint, with the testbed admin token) and shows its t-visibility curve,
// then the last saved runs with their SVG plots.

import { adminToken, json, send, setAdminToken } from './api.js';
import { download, field, h, replace, showError, toast } from './dom.js';

const BASE = '/admin/testbed/experiments';
const POLL = 500;

function ms(value) {
  if (value === null || value === undefined) return '> range';
  return value < 10 ? value.toFixed(1) : Math.round(value).toString();
}

/** An SVG plot fetched with the admin token, shown through a blob: URL (the CSP allows it). */
async function plot(run) {
  const figure = h('figure', { class: 'plot' }, h('p', { class: 'muted' }, 'Loading the plot…'));
  try {
    const response = await send('GET', `${BASE}/${run.id}/visibility.svg`, { admin: true });
    const url = URL.createObjectURL(await response.blob());
    const img = h('img', { src: url, alt: `t-visibility curve of run ${run.id}: the probability that a read returns the write, against the time since its acknowledgement`, class: 'plot-image' });
    img.addEventListener('load', () => URL.revokeObjectURL(url), { once: true });
    replace(figure, img);
  } catch (error) {
    showError(error, figure);
  }
  return figure;
}

function summaryTable(run) {
  return h('table', { class: 'grid compact run-summary' },
    h('thead', {}, h('tr', {}, ['', 'samples', 'p50 ms', 'p99 ms', 'p99.9 ms'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, run.rows.map((row) => h('tr', {},
      h('th', { scope: 'row' }, row.label),
      h('td', { class: 'num' }, row.samples),
      h('td', { class: 'num' }, ms(row.p50_ms)),
      h('td', { class: 'num' }, ms(row.p99_ms)),
      h('td', { class: 'num' }, ms(row.p999_ms))))));
}

function describe(run) {
  return `${run.keys} keys written here, read once at ${run.readers.length} other edge${run.readers.length === 1 ? '' : 's'} up to ${run.max_offset_ms} ms later; cacheTtl ${run.cache_ttl_s} s, ${run.pattern}`;
}

async function card(run) {
  const when = new Date(run.started_at_ms).toLocaleString();
  const head = h('div', { class: 'detail-head' }, h('h3', {}, `Run ${run.id}`), h('span', { class: `status ${run.state}` }, run.state));
  const item = h('article', { class: 'run card', 'data-run': run.id, 'data-state': run.state },
    head, h('p', { class: 'muted small' }, `${when} · ${describe(run)}`));
  if (run.state === 'failed') {
    item.append(h('p', { class: 'error' }, run.error || 'failed'));
    return item;
  }
  if (run.state === 'running') {
    item.append(h('progress', { max: run.keys, value: run.keys_done, 'aria-label': 'Keys done' }),
      h('p', { class: 'muted small' }, `${run.keys_done} of ${run.keys} keys`));
    return item;
  }
  item.append(summaryTable(run),
    h('p', { class: 'muted small' }, `${run.violations} violations of the consistency model in the history.`),
    await plot(run),
    h('div', { class: 'actions' },
      ['visibility.csv', 'history.jsonl'].map((file) => h('button', {
        type: 'button', class: 'secondary',
        onclick: async () => {
          try {
            const response = await send('GET', `${BASE}/${run.id}/${file}`, { admin: true });
            download(await response.arrayBuffer(), `${run.id}-${file}`, response.headers.get('content-type') || 'text/plain');
          } catch (error) {
            showError(error);
          }
        },
      }, `Download ${file}`))));
  return item;
}

export function testbedPage(main) {
  const token = h('input', { id: 'admin-token', type: 'password', autocomplete: 'off', spellcheck: 'false' });
  token.value = adminToken();
  const tokenForm = h('form', { class: 'inline-form', id: 'admin-token-form' },
    h('label', { for: 'admin-token' }, 'Testbed admin token'), token,
    h('button', { type: 'submit' }, 'Use'));
  const body = h('div', { id: 'testbed-body' }, h('p', { class: 'muted' }, 'Loading…'));
  replace(main,
    h('div', { class: 'page-head' }, h('h1', {}, 'Consistency'),
      h('p', { class: 'muted' }, 'How long a write made at this edge takes to show at the others: the t-visibility curve of a short experiment. Its keys go into a namespace of their own in account “testbed”, deleted when the run ends.')),
    tokenForm, body);

  let stopped = false;
  let timer = null;

  tokenForm.addEventListener('submit', (event) => {
    event.preventDefault();
    setAdminToken(token.value.trim());
    toast(token.value.trim() ? 'Admin token set for this tab' : 'Admin token forgotten');
    load();
  });

  function form() {
    const keys = h('input', { id: 'exp-keys', type: 'number', min: 1, max: 200, value: 50, required: true });
    const offset = h('input', { id: 'exp-offset', type: 'number', min: 100, max: 10000, step: 100, value: 2000, required: true });
    const pattern = h('select', { id: 'exp-pattern' },
      h('option', { value: 'never-read' }, 'never read before (replication lag)'),
      h('option', { value: 'read-before' }, 'read before (cached absence)'));
    const ttl = h('input', { id: 'exp-ttl', type: 'number', min: 1, placeholder: 'node default' });
    const run = h('button', { type: 'submit', class: 'primary', id: 'exp-run' }, 'Run experiment');
    const experiment = h('form', { class: 'card', id: 'experiment-form' },
      h('h2', {}, 'Run a visibility experiment'),
      h('div', { class: 'grid-form' },
        field('Keys (1–200)', keys),
        field('Latest read, ms after the write (100–10000)', offset),
        field('Read pattern', pattern),
        field('cacheTtl (s)', ttl, 'At least the edges’ cache.min_ttl_secs.')),
      h('div', { class: 'actions' }, run));
    experiment.addEventListener('submit', async (event) => {
      event.preventDefault();
      const request = { keys: Number(keys.value), max_offset_ms: Number(offset.value), pattern: pattern.value };
      if (ttl.value) request.cache_ttl_s = Number(ttl.value);
      run.disabled = true;
      try {
        await json('POST', BASE, request, { admin: true });
        toast('Experiment started');
        load();
      } catch (error) {
        showError(error);
      } finally {
        run.disabled = false;
      }
    });
    return experiment;
  }

  async function load() {
    clearTimeout(timer);
    let runs;
    try {
      runs = await json('GET', BASE, undefined, { admin: true });
    } catch (error) {
      if (error.status === 404) {
        replace(body, h('p', { class: 'empty', id: 'testbed-off' }, 'The testbed is off on this node. Start it with testbed.enabled = true and testbed.admin_token set (DRIFTKV_TESTBED__ENABLED=true DRIFTKV_TESTBED__ADMIN_TOKEN=…) to run experiments from here.'));
      } else if (error.code === 10000) {
        replace(body, h('p', { class: 'empty', id: 'testbed-token-needed' }, `Enter the testbed admin token above: ${error.describe()}.`));
        token.focus();
      } else {
        showError(error, body);
      }
      return;
    }
    const running = runs.find((r) => r.state === 'running');
    const cards = await Promise.all(runs.map(card));
    if (stopped) return;
    replace(body,
      form(),
      h('h2', {}, 'Saved runs'),
      runs.length ? h('div', { class: 'runs', id: 'runs' }, cards) : h('p', { class: 'empty' }, 'No experiment has run on this edge yet.'));
    if (running) {
      document.getElementById('exp-run').disabled = true;
      timer = setTimeout(() => follow(running.id), POLL);
    }
  }

  /** Updates the running experiment's card until it ends, then shows everything again. */
  async function follow(id) {
    if (stopped) return;
    try {
      const run = await json('GET', `${BASE}/${id}`, undefined, { admin: true });
      if (run.state !== 'running') {
        load();
        return;
      }
      const old = body.querySelector(`[data-run="${id}"]`);
      if (old) old.replaceWith(await card(run));
    } catch (error) {
      showError(error);
      return;
    }
    timer = setTimeout(() => follow(id), POLL);
  }

  load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
