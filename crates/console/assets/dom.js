// Small DOM helpers. Text always goes in as text (textContent), never as markup, so keys,
// values and titles cannot inject anything into the page.

/**
 * Creates an element: `h('a', {href: '/ui', class: 'x'}, 'text', child)`. Attributes whose
 * value is false, null or undefined are left out; `on*` entries become event listeners.
 */
export function h(tag, attributes = {}, ...children) {
  const element = tag.startsWith('svg:')
    ? document.createElementNS('http://www.w3.org/2000/svg', tag.slice(4))
    : document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      element.addEventListener(name.slice(2), value);
    } else {
      element.setAttribute(name, value === true ? '' : String(value));
    }
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(element, child);
    else element.append(child instanceof Node ? child : String(child));
  }
}

/** Replaces an element's content. */
export function replace(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

/** A short message in the corner: `kind` is 'ok' or 'error'. Errors stay longer; only the
 * newest few are kept, so that they do not pile up over the page. */
export function toast(message, kind = 'ok') {
  const box = document.getElementById('toasts');
  const item = h('div', { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : 'status' },
    h('span', {}, message),
    h('button', { type: 'button', class: 'close', 'aria-label': 'Dismiss', onclick: () => item.remove() }, '×'));
  box.append(item);
  while (box.children.length > 3) box.firstElementChild.remove();
  setTimeout(() => item.remove(), kind === 'error' ? 12000 : 4000);
  return item;
}

/** Shows an error (an ApiError says its code) in a toast and, if given, in `where`. */
export function showError(error, where) {
  const text = typeof error.describe === 'function' ? error.describe() : String(error.message || error);
  if (where) replace(where, h('p', { class: 'error', role: 'alert' }, text));
  toast(text, 'error');
  return text;
}

/** Wires a dialog's cancel button and Escape to resolve `onClose(false)`. */
function openDialog(dialog, form, cancel, onSubmit) {
  return new Promise((resolve) => {
    const done = (value) => {
      form.removeEventListener('submit', submitted);
      cancel.removeEventListener('click', cancelled);
      dialog.removeEventListener('cancel', cancelled);
      if (dialog.open) dialog.close();
      resolve(value);
    };
    const submitted = (event) => {
      event.preventDefault();
      done(onSubmit());
    };
    const cancelled = (event) => {
      event.preventDefault();
      done(null);
    };
    form.addEventListener('submit', submitted);
    cancel.addEventListener('click', cancelled);
    dialog.addEventListener('cancel', cancelled);
    dialog.showModal();
  });
}

/** Asks to confirm something destructive; resolves true only if confirmed. */
export async function confirmDialog(title, message, action = 'Delete') {
  const dialog = document.getElementById('confirm-dialog');
  replace(document.getElementById('confirm-title'), title);
  replace(document.getElementById('confirm-message'), message);
  const ok = document.getElementById('confirm-ok');
  replace(ok, action);
  const answer = openDialog(dialog, document.getElementById('confirm-form'),
    document.getElementById('confirm-cancel'), () => true);
  // Focus the safe choice first.
  document.getElementById('confirm-cancel').focus();
  return (await answer) === true;
}

/** Asks for one line of text; resolves it, or null when cancelled. */
export function promptDialog(title, label, value, action = 'Save') {
  const dialog = document.getElementById('prompt-dialog');
  const input = document.getElementById('prompt-input');
  replace(document.getElementById('prompt-title'), title);
  replace(document.getElementById('prompt-label'), label);
  replace(document.getElementById('prompt-ok'), action);
  input.value = value;
  const answer = openDialog(dialog, document.getElementById('prompt-form'),
    document.getElementById('prompt-cancel'), () => input.value);
  input.select();
  return answer;
}

export { openDialog };

/** 1536 -> "1.5 KiB". */
export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB'];
  let value = n;
  let unit = -1;
  do {
    value /= 1024;
    unit += 1;
  } while (value >= 1024 && unit < units.length - 1);
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

/** A unix time in seconds, as local date and time plus how far away it is. */
export function formatExpiration(seconds) {
  if (!seconds) return 'never';
  const when = new Date(seconds * 1000);
  const delta = seconds - Date.now() / 1000;
  return `${when.toLocaleString()} (${delta >= 0 ? 'in ' : ''}${formatDuration(Math.abs(delta))}${delta < 0 ? ' ago' : ''})`;
}

/** Seconds as "45 s", "12 min", "3 h", "2 d". */
export function formatDuration(seconds) {
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} d`;
}

/** Saves bytes as a file the browser downloads. */
export function download(bytes, name, type = 'application/octet-stream') {
  const url = URL.createObjectURL(new Blob([bytes], { type }));
  const link = h('a', { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 30000);
}

/** A labelled form field. */
export function field(label, input, hint) {
  const id = input.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  input.id = id;
  return h('div', { class: 'field' },
    h('label', { for: id }, label),
    input,
    hint ? h('p', { class: 'hint' }, hint) : null);
}
