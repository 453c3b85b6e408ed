// The namespaces of an account: a paged list, create, rename, delete (after confirmation).

import { call, namespacesPath } from './api.js';
import { link } from './app.js';
import { confirmDialog, h, promptDialog, replace, showError, toast } from './dom.js';

const PER_PAGE = 20;

export function namespacesPage(main, account) {
  let page = 1;
  const title = h('input', { id: 'ns-title', name: 'title', required: true, maxlength: 512, placeholder: 'my-app', autocomplete: 'off' });
  const create = h('form', { class: 'inline-form', id: 'ns-create', 'aria-label': 'Create a namespace' },
    h('label', { for: 'ns-title' }, 'New namespace'), title,
    h('button', { type: 'submit', class: 'primary' }, 'Create'));
  const list = h('div', { id: 'ns-list', 'aria-live': 'polite' }, h('p', { class: 'muted' }, 'Loading…'));
  const pager = h('nav', { class: 'pager', 'aria-label': 'Namespace pages' });
  replace(main,
    h('div', { class: 'page-head' },
      h('h1', {}, 'Namespaces'),
      h('p', { class: 'muted' }, 'Account ', h('code', {}, account))),
    create, list, pager);

  async function load() {
    try {
      const query = new URLSearchParams({ page, per_page: PER_PAGE, order: 'title', direction: 'asc' });
      const { result, result_info: info } = await call('GET', `${namespacesPath(account)}?${query}`);
      render(result, info || {});
    } catch (error) {
      showError(error, list);
      replace(pager);
    }
  }

  function render(namespaces, info) {
    if (namespaces.length === 0 && page > 1) {
      page -= 1;
      load();
      return;
    }
    if (namespaces.length === 0) {
      replace(list, h('p', { class: 'empty' }, 'No namespaces in this account yet: create one above.'));
    } else {
      replace(list, h('table', { class: 'grid', id: 'ns-table' },
        h('thead', {}, h('tr', {},
          h('th', { scope: 'col' }, 'Title'),
          h('th', { scope: 'col', class: 'wide-only' }, 'Id'),
          h('th', { scope: 'col' }, h('span', { class: 'sr-only' }, 'Actions')))),
        h('tbody', {}, namespaces.map(row))));
    }
    const total = info.total_pages || 1;
    replace(pager,
      h('button', { type: 'button', id: 'ns-prev', disabled: page <= 1, onclick: () => { page -= 1; load(); } }, '← Previous'),
      h('span', { class: 'muted', id: 'ns-page' }, `Page ${page} of ${total} · ${info.total_count ?? namespaces.length} namespaces`),
      h('button', { type: 'button', id: 'ns-next', disabled: page >= total, onclick: () => { page += 1; load(); } }, 'Next →'));
  }

  function row(ns) {
    return h('tr', { 'data-id': ns.id, 'data-title': ns.title },
      h('td', {}, h('a', { href: link(`/ui/namespaces/${ns.id}`), class: 'ns-open' }, ns.title)),
      h('td', { class: 'wide-only' }, h('code', {}, ns.id)),
      h('td', { class: 'row-actions' },
        h('button', { type: 'button', class: 'secondary ns-rename', onclick: () => rename(ns) }, 'Rename'),
        h('button', { type: 'button', class: 'danger ns-delete', onclick: () => remove(ns) }, 'Delete')));
  }

  async function rename(ns) {
    const value = await promptDialog(`Rename “${ns.title}”`, 'New title', ns.title, 'Rename');
    if (value === null || value === ns.title) return;
    try {
      await call('PUT', namespacesPath(account, ns.id), { title: value });
      toast(`Renamed to “${value}”`);
      load();
    } catch (error) {
      showError(error);
    }
  }

  async function remove(ns) {
    const sure = await confirmDialog('Delete namespace',
      `Delete “${ns.title}” (${ns.id}) and every key in it? This cannot be undone.`);
    if (!sure) return;
    try {
      await call('DELETE', namespacesPath(account, ns.id));
      toast(`Deleted “${ns.title}”`);
      load();
    } catch (error) {
      showError(error);
    }
  }

  create.addEventListener('submit', async (event) => {
    event.preventDefault();
    const value = title.value.trim();
    if (!value) return;
    try {
      const { result } = await call('POST', namespacesPath(account), { title: value });
      title.value = '';
      toast(`Created “${result.title}”`);
      load();
    } catch (error) {
      showError(error);
    }
  });

  load();
  return null;
}
