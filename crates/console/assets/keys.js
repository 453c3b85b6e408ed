// The keys of a namespace: listed by prefix, a page at a time following the API's cursors,
// with a selection to bulk-delete, and the chosen key shown beside the list.

import { call, namespacesPath } from './api.js';
import { link } from './app.js';
import { confirmDialog, formatExpiration, h, replace, showError, toast } from './dom.js';
import { editKey, showKey } from './value.js';

const PAGE_SIZES = [10, 50, 100, 500, 1000];
/** Keys one bulk delete may name (the API's limit). */
const BULK_LIMIT = 10000;

export function keysPage(main, account, namespace) {
  const params = new URLSearchParams(location.search);
  const state = {
    prefix: params.get('prefix') || '',
    limit: PAGE_SIZES.includes(Number(params.get('limit'))) ? Number(params.get('limit')) : 100,
    // cursors[i] is the cursor that fetches page i; page 0 needs none.
    cursors: [''],
    // counts[i]: how many keys page i showed (pages may be short).
    counts: [],
    page: 0,
    next: '',
    keys: [],
    selected: new Set(),
    open: null,
    loading: 0,
  };
  const title = h('h1', { id: 'ns-heading' }, 'Namespace');
  const search = h('input', { id: 'key-prefix', type: 'search', placeholder: 'key prefix, e.g. user:', autocomplete: 'off', spellcheck: 'false', 'aria-label': 'Key prefix' });
  search.value = state.prefix;
  const size = h('select', { id: 'page-size', 'aria-label': 'Keys per page' },
    PAGE_SIZES.map((n) => h('option', { value: n, selected: n === state.limit }, `${n} per page`)));
  const deleteSelected = h('button', { type: 'button', id: 'delete-selected', class: 'danger', disabled: true }, 'Delete selected');
  const list = h('div', { id: 'key-list', class: 'key-list', 'aria-live': 'polite' }, h('p', { class: 'muted' }, 'Loading…'));
  const pager = h('nav', { class: 'pager', 'aria-label': 'Key pages' });
  const panel = h('section', { id: 'key-detail', class: 'detail', 'aria-label': 'Selected key' });
  const layout = h('div', { class: 'split' },
    h('div', { class: 'split-main' }, list, pager),
    panel);
  replace(main,
    h('p', { class: 'crumbs' }, h('a', { href: link('/ui') }, '← Namespaces'), ' · account ', h('code', {}, account)),
    h('div', { class: 'page-head' }, title, h('code', { class: 'muted wide-only' }, namespace)),
    h('form', { class: 'toolbar', id: 'key-search', role: 'search' },
      search,
      h('button', { type: 'submit' }, 'Search'),
      size,
      h('div', { class: 'spacer' }),
      deleteSelected,
      h('button', { type: 'button', id: 'new-key', class: 'primary', onclick: () => { state.open = null; layout.classList.add('open'); editKey(panel, ctx, null); } }, 'New key')),
    layout);

  const ctx = {
    account,
    namespace,
    changed: (name) => {
      if (name) state.open = name;
      load();
    },
    closed: () => {
      state.open = null;
      layout.classList.remove('open');
      markOpen();
    },
  };

  async function loadTitle() {
    try {
      const { result } = await call('GET', namespacesPath(account, namespace));
      replace(title, result.title);
      document.title = `${result.title} · driftkv console`;
    } catch (error) {
      showError(error, list);
    }
  }

  async function load() {
    const query = new URLSearchParams({ limit: state.limit });
    if (state.prefix) query.set('prefix', state.prefix);
    if (state.cursors[state.page]) query.set('cursor', state.cursors[state.page]);
    // Only the newest request's answer is shown: an older one may arrive after it.
    state.loading += 1;
    const mine = state.loading;
    try {
      const { result, result_info: info } = await call('GET', `${namespacesPath(account, namespace, 'keys')}?${query}`);
      if (mine !== state.loading) return;
      state.keys = result;
      state.next = (info && info.cursor) || '';
      render();
    } catch (error) {
      showError(error, list);
    }
  }

  function render() {
    const names = new Set(state.keys.map((k) => k.name));
    for (const name of state.selected) if (!names.has(name)) state.selected.delete(name);
    const all = h('input', {
      type: 'checkbox', id: 'select-all', 'aria-label': 'Select every key on this page',
      checked: state.keys.length > 0 && state.selected.size === state.keys.length,
      onchange: (event) => {
        for (const k of state.keys) {
          if (event.target.checked) state.selected.add(k.name);
          else state.selected.delete(k.name);
        }
        for (const box of list.querySelectorAll('input.key-select')) box.checked = event.target.checked;
        showSelection();
      },
    });
    if (state.keys.length === 0) {
      replace(list, h('p', { class: 'empty', id: 'no-keys' }, state.prefix
        ? `No keys start with “${state.prefix}”${state.page ? ' on this page' : ''}.`
        : `No keys${state.page ? ' on this page' : ' yet: add one with “New key”'}.`));
    } else {
      replace(list, h('table', { class: 'grid keys', id: 'key-table' },
        h('thead', {}, h('tr', {},
          h('th', { scope: 'col', class: 'check' }, all),
          h('th', { scope: 'col' }, 'Key'),
          h('th', { scope: 'col', class: 'wide-only' }, 'Expires'),
          h('th', { scope: 'col', class: 'wide-only' }, 'Metadata'))),
        h('tbody', {}, state.keys.map(row))));
    }
    state.counts[state.page] = state.keys.length;
    const before = state.counts.slice(0, state.page).reduce((a, b) => a + b, 0);
    replace(pager,
      h('button', { type: 'button', id: 'keys-prev', disabled: state.page === 0, onclick: () => turn(-1) }, '← Previous'),
      h('span', { class: 'muted', id: 'keys-page' }, `Page ${state.page + 1} · ${state.keys.length ? `keys ${before + 1}–${before + state.keys.length}` : 'no keys'}${state.next ? '' : ' · last page'}`),
      h('button', { type: 'button', id: 'keys-next', disabled: !state.next, onclick: () => turn(1) }, 'Next →'));
    showSelection();
    markOpen();
  }

  function row(key) {
    const box = h('input', {
      type: 'checkbox', class: 'key-select', 'aria-label': `Select ${key.name}`, checked: state.selected.has(key.name),
      onchange: (event) => {
        if (event.target.checked) state.selected.add(key.name);
        else state.selected.delete(key.name);
        showSelection();
      },
    });
    return h('tr', { 'data-key': key.name },
      h('td', { class: 'check' }, box),
      h('td', {}, h('button', { type: 'button', class: 'link key-open', onclick: () => open(key.name) }, key.name)),
      h('td', { class: 'wide-only muted' }, key.expiration ? formatExpiration(key.expiration) : '—'),
      h('td', { class: 'wide-only muted meta' }, key.metadata === undefined || key.metadata === null ? '—' : JSON.stringify(key.metadata)));
  }

  function open(name) {
    state.open = name;
    layout.classList.add('open');
    markOpen();
    showKey(panel, ctx, name).then(() => {
      const heading = document.getElementById('key-title');
      if (heading && window.matchMedia('(max-width: 900px)').matches) heading.scrollIntoView({ block: 'start' });
    });
  }

  function markOpen() {
    for (const tr of list.querySelectorAll('tr[data-key]')) {
      tr.classList.toggle('current', tr.dataset.key === state.open);
    }
  }

  function showSelection() {
    const n = state.selected.size;
    deleteSelected.disabled = n === 0;
    replace(deleteSelected, n ? `Delete selected (${n})` : 'Delete selected');
    const all = document.getElementById('select-all');
    if (all) {
      all.checked = n > 0 && n === state.keys.length;
      all.indeterminate = n > 0 && n < state.keys.length;
    }
  }

  function turn(step) {
    if (step > 0) {
      state.cursors[state.page + 1] = state.next;
      state.page += 1;
    } else {
      state.page = Math.max(0, state.page - 1);
    }
    state.selected.clear();
    load();
  }

  /** Starts the listing again from its first page, with the prefix in the search field. */
  function restart() {
    state.prefix = search.value;
    state.cursors = [''];
    state.counts = [];
    state.page = 0;
    state.selected.clear();
    const query = new URLSearchParams(location.search);
    if (state.prefix) query.set('prefix', state.prefix);
    else query.delete('prefix');
    query.set('limit', state.limit);
    history.replaceState(null, '', `${location.pathname}?${query}`);
    load();
  }

  main.querySelector('#key-search').addEventListener('submit', (event) => {
    event.preventDefault();
    clearTimeout(typing);
    restart();
  });
  // The list follows the prefix as it is typed, once typing pauses.
  let typing = null;
  search.addEventListener('input', () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      if (search.value !== state.prefix) restart();
    }, 300);
  });
  size.addEventListener('change', () => {
    state.limit = Number(size.value);
    restart();
  });
  deleteSelected.addEventListener('click', async () => {
    const names = [...state.selected];
    if (names.length === 0 || names.length > BULK_LIMIT) return;
    const shown = names.slice(0, 5).map((n) => `“${n}”`).join(', ');
    const more = names.length > 5 ? ` and ${names.length - 5} more` : '';
    if (!await confirmDialog(`Delete ${names.length} keys`, `Delete ${shown}${more}? This cannot be undone.`)) return;
    try {
      const { result } = await call('POST', namespacesPath(account, namespace, 'bulk', 'delete'), names);
      const failed = (result && result.unsuccessful_keys) || [];
      toast(`Deleted ${names.length - failed.length} keys${failed.length ? `; ${failed.length} failed: ${failed.slice(0, 5).join(', ')}` : ''}`, failed.length ? 'error' : 'ok');
      if (state.open && names.includes(state.open)) {
        replace(panel);
        ctx.closed();
      }
      state.selected.clear();
      load();
    } catch (error) {
      showError(error);
    }
  });
  // "/" jumps to the prefix search, as on many sites.
  const slash = (event) => {
    if (event.key === '/' && !event.target.closest('input, textarea, select, [contenteditable]')) {
      event.preventDefault();
      search.focus();
    }
  };
  document.addEventListener('keydown', slash);

  loadTitle();
  load();
  return () => document.removeEventListener('keydown', slash);
}
