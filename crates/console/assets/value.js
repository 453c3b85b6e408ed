// One key: its value shown as text, pretty-printed JSON or a hex dump with its size, its
// metadata and expiration; and the form that creates or edits a key (typed text or an
// uploaded file, metadata, expiration).

import { call, namespacesPath, segment, send } from './api.js';
import { confirmDialog, download, field, formatBytes, formatExpiration, h, replace, showError, toast } from './dom.js';

/** Bytes shown in a hex dump; the rest is only downloadable. */
const HEX_LIMIT = 4096;
/** Characters of text shown; the rest is only downloadable. */
const TEXT_LIMIT = 256 * 1024;

function keyPath(ctx, kind, name) {
  return namespacesPath(ctx.account, ctx.namespace, kind, segment(name));
}

/** What a value is: `text` (valid UTF-8), `json` (text that parses) or `binary`. */
export function classify(bytes) {
  let text;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return { kind: 'binary' };
  }
  // Control characters other than whitespace mean a binary value that happens to decode.
  if (/[\u0000-\u0008\u000e-\u001f]/.test(text.slice(0, 4096))) return { kind: 'binary' };
  try {
    const parsed = JSON.parse(text);
    if (parsed !== null && typeof parsed === 'object') return { kind: 'json', text, parsed };
  } catch {
    // Not JSON: plain text.
  }
  return { kind: 'text', text };
}

/** `offset  hex bytes  |ascii|` lines, as `xxd` prints them. */
export function hexDump(bytes, limit = HEX_LIMIT) {
  const lines = [];
  const shown = Math.min(bytes.length, limit);
  for (let offset = 0; offset < shown; offset += 16) {
    const row = bytes.subarray(offset, Math.min(offset + 16, shown));
    const hex = Array.from(row, (b) => b.toString(16).padStart(2, '0'));
    const groups = [];
    for (let i = 0; i < 16; i += 2) groups.push((hex[i] || '  ') + (hex[i + 1] || '  '));
    const ascii = Array.from(row, (b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('');
    lines.push(`${offset.toString(16).padStart(8, '0')}  ${groups.join(' ')}  ${ascii}`);
  }
  if (bytes.length > shown) lines.push(`… ${formatBytes(bytes.length - shown)} more: download to see all of it`);
  return lines.join('\n');
}

/**
 * Shows key `name` in `panel`. `ctx` is {account, namespace, changed(name?), closed()}:
 * `changed` is called after a write or delete so that the list reloads, `closed` when the
 * panel empties.
 */
export async function showKey(panel, ctx, name) {
  replace(panel, h('p', { class: 'muted' }, 'Loading ', h('code', {}, name), '…'));
  let bytes;
  let expiration = null;
  let metadata = null;
  try {
    const response = await send('GET', keyPath(ctx, 'values', name));
    bytes = new Uint8Array(await response.arrayBuffer());
    expiration = Number(response.headers.get('expiration')) || null;
    ({ result: metadata } = await call('GET', keyPath(ctx, 'metadata', name)));
  } catch (error) {
    replace(panel, h('h2', { class: 'key-name' }, name));
    showError(error, panel.appendChild(h('div')));
    return;
  }
  const value = classify(bytes);
  const views = value.kind === 'binary' ? ['hex'] : value.kind === 'json' ? ['json', 'text', 'hex'] : ['text', 'hex'];
  const body = h('pre', { class: 'value', id: 'value-view', tabindex: '0', 'aria-label': 'Value' });
  const viewButtons = views.map((view) => h('button', {
    type: 'button', class: 'tab', 'data-view': view, 'aria-pressed': 'false',
    onclick: () => show(view),
  }, { json: 'JSON', text: 'Text', hex: 'Hex' }[view]));

  function show(view) {
    for (const button of viewButtons) button.setAttribute('aria-pressed', String(button.dataset.view === view));
    body.dataset.view = view;
    if (view === 'json') body.textContent = JSON.stringify(value.parsed, null, 2);
    else if (view === 'text') {
      body.textContent = value.text.length > TEXT_LIMIT
        ? `${value.text.slice(0, TEXT_LIMIT)}\n… download to see all of it`
        : value.text;
    } else body.textContent = hexDump(bytes);
  }

  const kindLabel = { json: 'JSON', text: 'text', binary: 'binary' }[value.kind];
  replace(panel,
    h('div', { class: 'detail-head' },
      h('h2', { class: 'key-name', id: 'key-title' }, name),
      h('button', { type: 'button', class: 'close', 'aria-label': 'Close', onclick: () => { replace(panel); ctx.closed(); } }, '×')),
    h('dl', { class: 'facts' },
      h('dt', {}, 'Size'), h('dd', { id: 'value-size' }, `${formatBytes(bytes.length)} (${bytes.length} bytes), ${kindLabel}`),
      h('dt', {}, 'Expires'), h('dd', { id: 'value-expiration' }, formatExpiration(expiration)),
      h('dt', {}, 'Metadata'), h('dd', {}, metadata === null
        ? h('span', { class: 'muted', id: 'value-metadata' }, 'none')
        : h('pre', { class: 'metadata', id: 'value-metadata' }, JSON.stringify(metadata, null, 2)))),
    h('div', { class: 'toolbar' },
      h('div', { class: 'tabs', role: 'group', 'aria-label': 'Show the value as' }, viewButtons),
      h('div', { class: 'spacer' }),
      h('button', { type: 'button', id: 'value-download', onclick: () => download(bytes, name.replace(/[/\\]/g, '_')) }, 'Download'),
      h('button', { type: 'button', id: 'value-edit', class: 'secondary', onclick: () => editKey(panel, ctx, { name, bytes, value, metadata, expiration }) }, 'Edit'),
      h('button', {
        type: 'button', id: 'value-delete', class: 'danger',
        onclick: async () => {
          if (!await confirmDialog('Delete key', `Delete the key “${name}”?`)) return;
          try {
            await call('DELETE', keyPath(ctx, 'values', name));
            toast(`Deleted “${name}”`);
            replace(panel);
            ctx.closed();
            ctx.changed();
          } catch (error) {
            showError(error);
          }
        },
      }, 'Delete')),
    body);
  show(views[0]);
}

/**
 * The form that writes a key: a new one when `existing` is null, else `existing` (its name
 * stays). A binary value is kept as it is unless a file replaces it.
 */
export function editKey(panel, ctx, existing) {
  const editable = existing && existing.value.kind !== 'binary';
  const name = h('input', { id: 'edit-name', required: true, autocomplete: 'off', spellcheck: 'false', maxlength: 512 });
  if (existing) {
    name.value = existing.name;
    name.readOnly = true;
  }
  const text = h('textarea', { id: 'edit-value', rows: 10, spellcheck: 'false' });
  if (editable) text.value = existing.value.text;
  const file = h('input', { id: 'edit-file', type: 'file' });
  const source = existing && !editable ? 'keep' : 'text';
  const sources = [
    existing && !editable ? ['keep', `Keep the binary value (${formatBytes(existing.bytes.length)})`] : null,
    ['text', 'Type the value'],
    ['file', 'Upload a file'],
  ].filter(Boolean);
  const radios = h('fieldset', { class: 'choices' }, h('legend', {}, 'Value'),
    sources.map(([id, label]) => h('label', { class: 'choice' },
      h('input', { type: 'radio', name: 'source', value: id, checked: id === source, id: `source-${id}` }), ` ${label}`)));
  const textField = field('Text', text);
  const fileField = field('File', file, 'Any bytes, up to 25 MiB.');
  const metadata = h('textarea', { id: 'edit-metadata', rows: 3, spellcheck: 'false', placeholder: '{"owner": "ana"}' });
  if (existing && existing.metadata !== null) metadata.value = JSON.stringify(existing.metadata);
  const expiryKind = h('select', { id: 'edit-expiry-kind' },
    h('option', { value: 'none' }, 'Never expires'),
    h('option', { value: 'ttl' }, 'Expires after (seconds)'),
    h('option', { value: 'at' }, 'Expires at (unix seconds)'));
  const expiry = h('input', { id: 'edit-expiry', type: 'number', min: 60, step: 1, inputmode: 'numeric' });
  if (existing && existing.expiration) {
    expiryKind.value = 'at';
    expiry.value = existing.expiration;
  }
  const status = h('div', { id: 'edit-status', 'aria-live': 'polite' });
  const form = h('form', { class: 'editor', id: 'key-form' },
    h('div', { class: 'detail-head' },
      h('h2', {}, existing ? `Edit “${existing.name}”` : 'New key'),
      h('button', { type: 'button', class: 'close', 'aria-label': 'Close', onclick: () => cancel() }, '×')),
    field('Key', name, existing ? null : 'Up to 512 bytes of UTF-8; “/” is part of the key.'),
    radios, textField, fileField,
    field('Metadata (JSON, optional)', metadata, 'At most 1024 bytes once serialized.'),
    h('div', { class: 'field' }, h('label', { for: 'edit-expiry-kind' }, 'Expiration'),
      h('div', { class: 'row' }, expiryKind, expiry)),
    status,
    h('div', { class: 'actions' },
      h('button', { type: 'button', class: 'secondary', onclick: () => cancel() }, 'Cancel'),
      h('button', { type: 'submit', class: 'primary', id: 'edit-save' }, 'Save')));

  function cancel() {
    if (existing) showKey(panel, ctx, existing.name);
    else {
      replace(panel);
      ctx.closed();
    }
  }

  function sync() {
    const chosen = form.querySelector('input[name=source]:checked').value;
    textField.hidden = chosen !== 'text';
    fileField.hidden = chosen !== 'file';
    expiry.hidden = expiryKind.value === 'none';
    expiry.required = expiryKind.value !== 'none';
  }
  form.addEventListener('change', sync);
  form.addEventListener('keydown', (event) => {
    if (event.key === 'Escape') cancel();
  });
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const chosen = form.querySelector('input[name=source]:checked').value;
    let body;
    if (chosen === 'keep') body = existing.bytes;
    else if (chosen === 'file') {
      if (!file.files.length) {
        showError(new Error('choose a file to upload'), status);
        return;
      }
      body = file.files[0];
    } else body = new TextEncoder().encode(text.value);
    const meta = metadata.value.trim();
    if (meta) {
      try {
        JSON.parse(meta);
      } catch (error) {
        showError(new Error(`the metadata is not JSON: ${error.message}`), status);
        return;
      }
    }
    const query = new URLSearchParams();
    if (expiryKind.value === 'ttl') query.set('expiration_ttl', expiry.value);
    if (expiryKind.value === 'at') query.set('expiration', expiry.value);
    const key = name.value;
    const path = `${keyPath(ctx, 'values', key)}${query.size ? `?${query}` : ''}`;
    let request;
    if (meta) {
      // Metadata travels as multipart, beside the value, as Cloudflare's SDK sends it.
      const parts = new FormData();
      parts.append('value', new Blob([body], { type: 'application/octet-stream' }), 'upload');
      parts.append('metadata', new Blob([meta], { type: 'application/json' }));
      request = { body: parts };
    } else {
      request = { body, headers: { 'Content-Type': 'application/octet-stream' } };
    }
    const save = document.getElementById('edit-save');
    save.disabled = true;
    replace(status, h('p', { class: 'muted' }, 'Saving…'));
    try {
      await send('PUT', path, request);
      toast(`Saved “${key}”`);
      ctx.changed(key);
      showKey(panel, ctx, key);
    } catch (error) {
      showError(error, status);
      save.disabled = false;
    }
  });
  replace(panel, form);
  sync();
  (existing ? (editable ? text : file) : name).focus();
}
