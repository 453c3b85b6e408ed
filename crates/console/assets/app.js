// The console's entry point: reads what the node is (/ui/config.json), keeps the account and
// the token, routes /ui URLs to their pages without reloading, and watches whether central is
// within reach.

import { json, setToken, token } from './api.js';
import { h, openDialog, replace, toast } from './dom.js';
import { namespacesPage } from './namespaces.js';
import { keysPage } from './keys.js';
import { clusterPage, remember } from './cluster.js';
import { testbedPage } from './testbed.js';

const ACCOUNT_KEY = 'driftkv.account';
const RECENT_KEY = 'driftkv.recentAccounts';
/** How often the page checks whether central is within reach, in ms. */
const WATCH_EVERY = 3000;

const state = {
  config: { role: 'edge', node_id: '', default_account: 'dev' },
  /** The running page's clean-up (stops its timers). */
  leave: null,
  /** The account chosen in this tab (null: not yet). */
  account: null,
  /** When a write last failed with 10050, in ms. */
  unavailableAt: 0,
};

/** The account the console works on: the URL's, else the tab's last, else the default. */
export function account() {
  return state.account || sessionStorage.getItem(ACCOUNT_KEY) || state.config.default_account;
}

function setAccount(value) {
  state.account = value;
  sessionStorage.setItem(ACCOUNT_KEY, value);
  const recent = JSON.parse(localStorage.getItem(RECENT_KEY) || '[]').filter((a) => a !== value);
  recent.unshift(value);
  localStorage.setItem(RECENT_KEY, JSON.stringify(recent.slice(0, 10)));
  showAccount();
}

function showAccount() {
  document.getElementById('account-input').value = account();
  const recent = JSON.parse(localStorage.getItem(RECENT_KEY) || '[]');
  replace(document.getElementById('account-list'), recent.map((a) => h('option', { value: a })));
}

/** A console URL with the account kept in it, so that links can be shared. */
export function link(path) {
  return `${path}?account=${encodeURIComponent(account())}`;
}

/** Goes to a console URL without reloading the page. */
export function go(url) {
  history.pushState(null, '', url);
  route();
}

function route() {
  const fromUrl = new URLSearchParams(location.search).get('account');
  if (fromUrl && fromUrl !== state.account) setAccount(fromUrl);
  if (state.leave) state.leave();
  state.leave = null;
  const path = location.pathname.replace(/\/+$/, '') || '/ui';
  const main = document.getElementById('main');
  replace(main);
  let page = 'namespaces';
  let leave = null;
  const central = state.config.role === 'central';
  const namespace = path.match(/^\/ui\/namespaces\/([^/]+)$/);
  if (path === '/ui/cluster' || (central && path === '/ui')) {
    page = 'cluster';
    leave = clusterPage(main, state.config);
  } else if (central) {
    page = 'none';
    replace(main, h('h1', {}, 'Not on central'),
      h('p', {}, 'Central serves only the cluster view; open the console on an edge for namespaces, keys and experiments.'),
      h('p', {}, h('a', { href: '/ui/cluster' }, 'Cluster view')));
  } else if (path === '/ui/testbed') {
    page = 'testbed';
    leave = testbedPage(main);
  } else if (namespace) {
    leave = keysPage(main, account(), decodeURIComponent(namespace[1]));
  } else {
    leave = namespacesPage(main, account());
  }
  state.leave = leave;
  for (const a of document.querySelectorAll('nav.pages a')) {
    if (a.dataset.nav === page) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.title = `${{ namespaces: 'Namespaces', cluster: 'Cluster', testbed: 'Consistency', none: 'driftkv' }[page]} · driftkv console`;
  showAccount();
}

/** Follows same-origin /ui links in place (keeping the account), like any page would. */
function interceptLinks(event) {
  if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const a = event.target.closest('a[href]');
  if (!a || a.hasAttribute('download') || a.target) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith('/ui')) return;
  event.preventDefault();
  if (!url.searchParams.has('account') && state.config.role === 'edge') {
    url.searchParams.set('account', account());
  }
  go(url.pathname + url.search);
  document.getElementById('main').focus({ preventScroll: true });
}

/** Asks for the API token; `reason` says why. Resolves once the dialog closes. */
async function askToken(reason) {
  const dialog = document.getElementById('token-dialog');
  if (dialog.open) return;
  const input = document.getElementById('token-input');
  replace(document.getElementById('token-reason'), reason);
  input.value = token();
  const clear = document.getElementById('token-clear');
  const forget = () => {
    setToken('');
    input.value = '';
    toast('Token forgotten');
  };
  clear.addEventListener('click', forget);
  const chosen = openDialog(dialog, document.getElementById('token-form'),
    document.getElementById('token-cancel'), () => input.value.trim());
  input.focus();
  const value = await chosen;
  clear.removeEventListener('click', forget);
  if (value !== null) {
    setToken(value);
    showTokenState();
    route();
  }
}

function showTokenState() {
  const button = document.getElementById('token-button');
  replace(button, token() ? 'API token ✓' : 'API token');
  button.title = token() ? 'A token is set for this tab' : 'No token set';
}

/** Shows or hides the "central is out of reach" banner from what this node knows. */
async function watchCentral() {
  const banner = document.getElementById('central-banner');
  const detail = document.getElementById('central-banner-detail');
  const reasons = [];
  try {
    if (state.config.role === 'edge') {
      const ready = await fetch('/readyz', { cache: 'no-store', credentials: 'omit' }).then((r) => r.json());
      if (ready.central_connected === false) reasons.push('its replication stream from central is down');
    }
  } catch {
    // This node itself did not answer; the page's own calls will say so.
  }
  try {
    const view = await json('GET', '/cluster', undefined, { quiet: true });
    remember(view.members || [], Date.now());
    const central = (view.members || []).filter((m) => m.role === 'central');
    if (central.length === 0) reasons.push('gossip knows no central');
    else if (!central.some((m) => m.status === 'live')) reasons.push(`gossip sees central ${central[0].status}`);
  } catch {
    // Without a token /cluster is refused; the banner then rests on /readyz and writes.
  }
  if (Date.now() - state.unavailableAt < 30000) reasons.push('a write just failed with 503 (code 10050)');
  if (state.config.role === 'central') reasons.length = 0;
  banner.hidden = reasons.length === 0;
  if (reasons.length) {
    replace(detail, `This edge (node ${state.config.node_id}) sees that ${reasons.join('; ')}. It keeps serving reads and listings from its replica (possibly stale); writes fail with 503, code 10050, until the write region answers again.`);
  }
}

async function start() {
  try {
    const response = await fetch('/ui/config.json', { cache: 'no-store', credentials: 'omit' });
    state.config = await response.json();
  } catch {
    toast('Could not read /ui/config.json; assuming an edge', 'error');
  }
  document.body.dataset.role = state.config.role;
  for (const element of document.querySelectorAll('[data-edge-only]')) {
    element.hidden = state.config.role !== 'edge';
  }
  document.addEventListener('click', interceptLinks);
  window.addEventListener('popstate', route);
  document.getElementById('account-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const value = document.getElementById('account-input').value.trim();
    if (!value) return;
    setAccount(value);
    go(link('/ui'));
    document.getElementById('main').focus({ preventScroll: true });
  });
  document.getElementById('token-button').addEventListener('click', () => askToken('Set the bearer token this tab sends to the API (leave it empty on a tokenless loopback server).'));
  window.addEventListener('driftkv:auth', (event) => {
    const wrong = token() ? 'The API refused this tab\'s token' : 'This node\'s API requires a bearer token';
    askToken(`${wrong}: ${event.detail.describe()}.`);
  });
  window.addEventListener('driftkv:unavailable', () => {
    state.unavailableAt = Date.now();
    watchCentral();
  });
  showTokenState();
  route();
  watchCentral();
  setInterval(() => {
    if (!document.hidden) watchCentral();
  }, WATCH_EVERY);
}

start();
