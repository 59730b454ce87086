// Sotto in the browser: the conversation list, a conversation, adding a
// contact, your invite, safety numbers and the node's status, over the
// control API and its event stream.

import { api, APIError, NEWEST } from './api.js';
import { h, replace, formatTime } from './dom.js';
import { EventStream } from './events.js';
import { MessageList, PAGE } from './messages.js';

const state = {
  me: null, // Identity
  convs: [], // Conversation summaries, as listed
  contacts: new Map(), // name -> Contact
  status: null, // Status
  view: null, // { name, list: MessageList } while a conversation is open
  lastSeq: 0, // the newest message seen: the cursor to catch up from
  stream: null,
};

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;

// ---- errors

function showError(err) {
  const msg = err instanceof Error ? err.message : String(err);
  $('error-text').textContent = msg;
  $('error').hidden = false;
}

function clearError() {
  $('error').hidden = true;
  $('error-text').textContent = '';
}

// screenError replaces the main view with an error, so that a failure is
// never a blank page.
function screenError(title, err) {
  const main = $('main');
  replace(main,
    h('h2', null, title),
    h('p', { class: 'error', role: 'alert' }, err instanceof Error ? err.message : String(err)),
    h('p', null, h('a', { href: '#/' }, 'Back to the start')));
}

// ---- conversation list

let refreshTimer = 0;

// scheduleRefresh refreshes the conversation list soon, once for a burst
// of events.
function scheduleRefresh() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(() => {
    refreshTimer = 0;
    refreshConversations().catch(showError);
  }, 120);
}

async function refreshConversations() {
  const convs = await api.conversations();
  state.convs = convs;
  state.contacts = new Map(convs.map((c) => [c.contact.name, c.contact]));
  for (const c of convs) {
    if (c.last) state.lastSeq = Math.max(state.lastSeq, c.last.seq);
  }
  renderConversations();
}

function renderConversations() {
  const ul = $('conversations');
  const current = state.view ? state.view.name : null;
  const items = state.convs.map((c) => {
    const name = c.contact.name;
    const unread = c.unread >= 1000 ? '999+' : String(c.unread);
    const last = c.last
      ? (c.last.direction === 'out' ? 'You: ' : '') + c.last.text.slice(0, 200)
      : 'No messages yet';
    return h('li', null,
      h('a', {
        class: 'conv' + (c.contact.request ? ' request' : ''),
        href: '#/c/' + enc(name),
        'aria-current': name === current ? 'page' : null,
        'data-contact': name,
      },
      h('span', { class: 'conv-name' }, name),
      c.contact.request ? h('span', { class: 'tag' }, 'Request') : null,
      c.contact.key_changed ? h('span', { class: 'tag warn' }, 'Key changed') : null,
      c.unread > 0 ? h('span', { class: 'badge', 'aria-label': `${unread} unread` }, unread) : null,
      h('span', { class: 'conv-last' }, last),
      c.last ? h('time', { class: 'conv-time', datetime: c.last.sent_at }, formatTime(c.last.sent_at)) : null));
  });
  // A refresh replaces the links; keep the keyboard focus on the same
  // conversation rather than dropping it to the page.
  const focused = ul.contains(document.activeElement) ? document.activeElement.dataset.contact : null;
  replace(ul, items);
  if (focused != null) {
    const again = [...ul.querySelectorAll('a.conv')].find((a) => a.dataset.contact === focused);
    if (again) again.focus({ preventScroll: true });
  }
  $('no-conversations').hidden = state.convs.length > 0;
}

// Arrow keys move between conversations.
function onListKey(e) {
  if (e.key !== 'ArrowDown' && e.key !== 'ArrowUp') return;
  const links = [...$('conversations').querySelectorAll('a.conv')];
  const i = links.indexOf(document.activeElement);
  if (i < 0) return;
  const j = e.key === 'ArrowDown' ? Math.min(links.length - 1, i + 1) : Math.max(0, i - 1);
  links[j].focus();
  e.preventDefault();
}

// ---- status

async function refreshStatus() {
  try {
    state.status = await api.status();
  } catch (err) {
    state.status = null;
    throw err;
  }
  renderPresence();
}

function online(contact) {
  const st = state.status;
  return !!(st && contact && st.connections.some((c) => c.peer === contact.peer_id));
}

// ---- the event stream

function onEvent(ev) {
  const m = ev.message;
  if (m) state.lastSeq = Math.max(state.lastSeq, m.seq);
  switch (ev.type) {
    case 'message':
    case 'state':
      if (m && state.view && state.view.name === m.contact) {
        state.view.list.add(m);
        if (m.direction === 'in') markRead();
      }
      scheduleRefresh();
      break;
    case 'contact_request':
    case 'key_change':
      refreshConversations().then(() => {
        if (state.view && ev.contact && state.view.name === ev.contact.name) renderContactState();
      }).catch(showError);
      break;
  }
}

function onStreamState(s) {
  const el = $('stream');
  el.dataset.state = s;
  el.textContent = { connecting: 'Connecting…', open: 'Live', reconnecting: 'Connection lost: reconnecting…' }[s] || s;
}

// catchUp fetches what happened while the stream was down: new messages
// by the cursor, the states of the messages on screen, the list.
async function catchUp() {
  try {
    let after = state.lastSeq;
    for (;;) {
      const ms = await api.messages({ after, limit: 1000 });
      for (const m of ms) onEvent({ type: 'message', message: m });
      if (ms.length < 1000) break;
      after = ms[ms.length - 1].seq;
    }
    if (state.view) {
      const v = state.view;
      const ms = await api.messages({ contact: v.name, before: NEWEST, limit: PAGE });
      if (state.view === v) for (const m of ms) v.list.add(m);
    }
    await refreshConversations();
    if (state.view) renderContactState();
    $('stream').dataset.caughtUp = String(Date.now());
  } catch (err) {
    showError(err);
  }
}

// ---- screens

function setMain(...children) {
  const main = $('main');
  replace(main, children);
}

function home() {
  state.view = null;
  renderConversations();
  setMain(
    h('h2', null, 'Welcome'),
    h('p', null, state.convs.length
      ? 'Choose a conversation on the left.'
      : 'You have no contacts yet. Add a contact with their invite, or share yours.'),
    h('p', null, h('a', { href: '#/add', class: 'button' }, 'Add a contact'), ' ',
      h('a', { href: '#/invite', class: 'button' }, 'Show my invite')));
}

async function showConversation(name) {
  refreshStatus().catch(() => {}); // for the presence line
  if (!state.contacts.has(name)) await refreshConversations();
  const contact = state.contacts.get(name);
  if (!contact) {
    state.view = null;
    screenError('No such conversation', new APIError(`There is no contact called “${name}”.`));
    return;
  }
  const scroller = h('div', { id: 'messages', class: 'messages', tabindex: '0', role: 'log', 'aria-label': `Messages with ${name}` });
  const top = h('p', { class: 'older', id: 'older' });
  const list = h('ol', { class: 'msg-list', id: 'msg-list' });
  scroller.append(top, list);
  const input = h('textarea', {
    id: 'compose', rows: '2', placeholder: `Message to ${name}`,
    'aria-describedby': 'compose-help presence',
  });
  const sendError = h('p', { id: 'send-error', class: 'error', role: 'alert' });
  const form = h('form', { id: 'composer', class: 'composer', onsubmit: (e) => { e.preventDefault(); send(); } },
    h('label', { for: 'compose', class: 'visually-hidden' }, `Message to ${name}`),
    input,
    h('button', { type: 'submit', id: 'send' }, 'Send'),
    h('p', { id: 'compose-help', class: 'hint small' }, 'Enter sends; Shift+Enter starts a new line.'),
    sendError);
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  const view = { name, list: null, input, sendError };
  async function send() {
    const text = input.value;
    if (text.trim() === '' || input.disabled) return;
    sendError.textContent = '';
    $('send').disabled = true;
    input.value = ''; // at once, so that what is typed next is kept
    try {
      const m = await api.send(name, text);
      if (state.view === view) {
        view.list.add(m);
        view.list.scrollToBottom();
      }
    } catch (err) {
      sendError.textContent = `Not sent: ${err.message}`;
      if (input.value === '') input.value = text;
    } finally {
      $('send').disabled = false;
      input.focus();
    }
  }
  setMain(
    h('div', { class: 'conv-head' },
      h('h2', { id: 'conv-title' }, name),
      h('span', { id: 'verified', class: 'tag' }),
      h('a', { href: '#/safety/' + enc(name), id: 'safety-link' }, 'Safety number')),
    h('div', { id: 'contact-note' }),
    scroller,
    h('p', { id: 'presence', class: 'presence', role: 'status' }),
    form);
  view.list = new MessageList(name, { scroller, list, top, onError: showError });
  state.view = view;
  renderConversations();
  renderContactState();
  await view.list.load();
  if (state.view !== view) return;
  // Painted: the frame after the one that lays the messages out.
  requestAnimationFrame(() => setTimeout(() => {
    performance.mark('sotto:conversation-painted');
    document.body.dataset.painted = name;
  }, 0));
  markRead();
  input.focus();
}

// renderContactState shows the contact's verification, a key change
// (which blocks sending until the user decides) and message requests.
function renderContactState() {
  const v = state.view;
  if (!v) return;
  const c = state.contacts.get(v.name);
  if (!c) return;
  const badge = $('verified');
  badge.textContent = c.verified ? 'Verified' : 'Not verified';
  badge.className = 'tag' + (c.verified ? ' ok' : '');
  const note = $('contact-note');
  replace(note);
  if (c.key_changed) {
    note.append(h('div', { id: 'key-banner', class: 'banner warn', role: 'alert' },
      h('strong', null, `${v.name}’s safety number has changed.`),
      ' Their identity key is new: they may have reinstalled, or someone may be impersonating them. ',
      'Sending is paused until you compare safety numbers and accept the new key. ',
      h('a', { href: '#/safety/' + enc(v.name), class: 'button' }, 'Compare safety numbers')));
  } else if (c.request) {
    note.append(h('div', { id: 'request-banner', class: 'banner' },
      `${v.name} is not in your contacts: they wrote to you first. `,
      h('a', { href: '#/safety/' + enc(v.name) }, 'Compare safety numbers to accept them'), '.'));
  }
  v.input.disabled = c.key_changed;
  $('send').disabled = c.key_changed;
  renderPresence();
}

function renderPresence() {
  const v = state.view;
  const el = $('presence');
  if (!v || !el) return;
  const c = state.contacts.get(v.name);
  if (c && c.key_changed) {
    el.textContent = 'Sending is paused: the contact’s key changed.';
    el.dataset.online = 'blocked';
  } else if (online(c)) {
    el.textContent = `${v.name} is connected: messages go straight to their device.`;
    el.dataset.online = 'yes';
  } else {
    el.textContent = `${v.name} is not connected right now. You can still send: messages wait in the outbox and go out through mailboxes, or when ${v.name} is back.`;
    el.dataset.online = 'no';
  }
}

let markTimer = 0;

// markRead records, soon, that the open conversation is read, when the
// page is visible.
function markRead() {
  if (markTimer) return;
  markTimer = setTimeout(async () => {
    markTimer = 0;
    const v = state.view;
    if (!v || document.visibilityState !== 'visible') return;
    const seq = v.list.lastIncoming();
    const conv = state.convs.find((c) => c.contact.name === v.name);
    if (seq === 0 || (conv && conv.read_seq >= seq)) return;
    try {
      await api.markRead(v.name, seq);
      await refreshConversations();
    } catch (err) {
      showError(err);
    }
  }, 150);
}

function showAdd() {
  state.view = null;
  renderConversations();
  const err = h('p', { id: 'add-error', class: 'error', role: 'alert' });
  const name = h('input', { id: 'add-name', name: 'name', required: true, autocomplete: 'off' });
  const invite = h('textarea', { id: 'add-invite', name: 'invite', rows: '4', required: true, spellcheck: 'false' });
  const button = h('button', { type: 'submit', id: 'add-submit' }, 'Add contact');
  const form = h('form', {
    id: 'add-form', class: 'stack',
    onsubmit: async (e) => {
      e.preventDefault();
      err.textContent = '';
      button.disabled = true;
      try {
        const c = await api.addContact(name.value.trim(), invite.value.trim());
        await refreshConversations();
        location.hash = '#/c/' + enc(c.name);
      } catch (e2) {
        err.textContent = e2.message;
      } finally {
        button.disabled = false;
      }
    },
  },
  h('label', { for: 'add-name' }, 'Name: what you call this contact'), name,
  h('label', { for: 'add-invite' }, 'Their invite (sotto://…): paste what they sent you'), invite,
  button, err);
  setMain(h('h2', null, 'Add a contact'), form);
  name.focus();
}

async function showInvite() {
  state.view = null;
  renderConversations();
  const { invite } = await api.invite();
  const text = h('textarea', { id: 'invite-text', readonly: true, rows: '4', spellcheck: 'false', '.value': invite });
  const result = h('span', { id: 'copy-result', role: 'status' });
  const copy = h('button', {
    type: 'button', id: 'copy-invite',
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(invite);
        result.textContent = 'Copied.';
      } catch {
        text.select();
        result.textContent = 'Selected: press Ctrl+C (⌘C) to copy.';
      }
    },
  }, 'Copy invite');
  setMain(
    h('h2', null, 'Your invite'),
    h('p', null, 'Give this to someone you want to talk to: they scan the code or paste the text in “Add contact”. ',
      'It holds your public keys and addresses, nothing secret.'),
    h('img', { id: 'invite-qr', class: 'qr', src: '/invite.svg', alt: 'QR code of your invite', width: '280', height: '280' }),
    h('label', { for: 'invite-text' }, 'Invite as text'), text,
    h('p', null, copy, ' ', result));
}

function groups(number) {
  const digits = number.replace(/\s+/g, '');
  if (!/^\d+$/.test(digits)) return number;
  return digits.match(/.{1,5}/g).join(' ');
}

async function showSafety(name) {
  state.view = null;
  renderConversations();
  const v = await api.verify(name, false);
  const result = h('p', { id: 'safety-result', role: 'status' });
  const act = async (fn, done) => {
    try {
      await fn();
      await refreshConversations();
      await showSafety(name);
      $('safety-result').textContent = done;
    } catch (err) {
      result.textContent = err.message;
    }
  };
  const actions = [];
  if (v.key_changed) {
    actions.push(
      h('p', { class: 'banner warn', role: 'alert' },
        `${name} presented a new identity key. This is the safety number with the new key. `,
        'Compare it with theirs in person or over a call you trust; accept it only if it matches.'),
      h('button', { type: 'button', id: 'accept-key', onclick: () => act(() => api.verify(name, true), 'New key accepted and marked verified.') },
        'The numbers match: accept the new key'), ' ',
      h('button', { type: 'button', id: 'reject-key', onclick: () => act(() => api.rejectKey(name), 'The old key is kept.') },
        'Keep the old key'));
  } else if (v.verified) {
    actions.push(h('p', { id: 'verified-note', class: 'ok' }, `You have verified ${name}.`));
  } else {
    actions.push(h('button', { type: 'button', id: 'mark-verified', onclick: () => act(() => api.verify(name, true), `${name} is verified.`) },
      'The numbers match: mark verified'));
  }
  setMain(
    h('h2', null, `Safety number with ${name}`),
    h('p', null, `Compare this number with the one ${name} sees. If they are the same, nobody stands between you.`),
    h('p', { id: 'safety-number', class: 'safety-number' }, groups(v.safety_number)),
    actions,
    result,
    h('p', null, h('a', { href: '#/c/' + enc(name) }, `Back to the conversation with ${name}`)));
}

async function showStatus() {
  state.view = null;
  renderConversations();
  await refreshStatus();
  const st = state.status;
  const row = (k, v) => [h('dt', null, k), h('dd', null, v)];
  let reach = st.reachability || 'unknown';
  if (st.reachability === 'private') reach += st.relays && st.relays.length ? ' (through relays)' : ' (no relay yet: contacts reach you through mailboxes)';
  setMain(
    h('h2', null, 'Status'),
    h('dl', { id: 'status-list', class: 'status' },
      row('Peer ID', st.peer_id),
      row('Reachability', `${reach}; DHT ${st.dht_mode || 'unknown'}`),
      row('Connected peers', String(st.connected_peers)),
      row('Outbox', `${st.outbox_pending} waiting to go out`),
      row('Message requests', `${st.requests} waiting` + (st.requests_dropped ? `, ${st.requests_dropped} dropped over the limit` : '')),
      row('Mailbox', st.mailbox ? `serving: ${st.mailbox.envelopes} envelopes, ${st.mailbox.bytes} bytes held for others` : 'not serving as a mailbox'),
      row('Since start', `${st.messages_sent} sent, ${st.messages_received} received, ${st.syncs_run} mailbox syncs`),
      row('Addresses', st.addrs.length ? st.addrs.join('\n') : 'none')),
    h('h3', null, 'Connections'),
    st.connections.length
      ? h('table', { class: 'conns' },
        h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Peer'), h('th', { scope: 'col' }, 'Address'), h('th', { scope: 'col' }, 'Direction'), h('th', { scope: 'col' }, 'Path'))),
        h('tbody', null, st.connections.map((c) => h('tr', null,
          h('td', null, c.peer), h('td', null, c.addr), h('td', null, c.direction), h('td', null, c.relayed ? 'relayed' : 'direct')))))
      : h('p', null, 'No connections.'),
    h('p', null, h('button', { type: 'button', id: 'status-refresh', onclick: () => route() }, 'Refresh')));
}

// ---- first run

// STARTING_POLL and STARTING_LIMIT: how often, and how long, the page
// asks whether the node runs after creating its identity.
const STARTING_POLL = 250;
const STARTING_LIMIT = 120000;

// waitForNode resolves once the node answers with its identity: after
// the first-run screen created it, the node starts.
async function waitForNode() {
  const until = Date.now() + STARTING_LIMIT;
  for (;;) {
    try {
      return await api.identity();
    } catch (err) {
      if (err.code !== 'unavailable' || Date.now() > until) throw err;
    }
    await new Promise((resolve) => setTimeout(resolve, STARTING_POLL));
  }
}

// starting says that the node is starting, and reloads the page once it
// runs.
async function starting(status) {
  status.textContent = 'Starting your node…';
  await waitForNode();
  status.textContent = 'Your node is running.';
  location.reload();
}

// firstRun is the screen of a node with no identity yet: choose a name,
// create the identity (POST /v1/setup, as `sotto init` does), wait for
// the node to start, then the app starts.
function firstRun() {
  document.body.dataset.firstRun = 'true';
  const err = h('p', { id: 'setup-error', class: 'error', role: 'alert' });
  const status = h('p', { id: 'setup-status', role: 'status' });
  const name = h('input', { id: 'setup-name', name: 'name', required: true, autocomplete: 'nickname', 'aria-describedby': 'setup-help' });
  const button = h('button', { type: 'submit', id: 'setup-submit' }, 'Create my identity');
  const form = h('form', {
    id: 'setup-form', class: 'stack',
    onsubmit: async (e) => {
      e.preventDefault();
      err.textContent = '';
      if (name.value.trim() === '') {
        err.textContent = 'Choose a name first.';
        return;
      }
      button.disabled = true;
      try {
        await api.setup(name.value.trim());
        name.disabled = true;
      } catch (e2) {
        err.textContent = e2.message;
        button.disabled = false;
        return;
      }
      try {
        await starting(status);
      } catch (e2) {
        status.textContent = '';
        err.textContent = `Your identity was created, but the node did not start: ${e2.message} See the output of \`sotto run\`.`;
      }
    },
  },
  h('label', { for: 'setup-name' }, 'Your name: what your contacts see when you write to them first'), name,
  h('p', { id: 'setup-help', class: 'hint small' },
    'This creates your keys in this node’s data directory, as `sotto init` does; they are encrypted only if ',
    '`sotto run` was given a passphrase file (--passphrase-file).'),
  button, status, err);
  setMain(
    h('h2', null, 'Welcome to Sotto'),
    h('p', null, 'This node has no identity yet. Choose a name to create one; then you can share your invite and add contacts.'),
    form);
  name.focus();
  document.body.dataset.setup = 'shown';
}

// ---- routing

async function route() {
  const hash = location.hash || '#/';
  const [, screen, arg] = hash.match(/^#\/([a-z]*)\/?(.*)$/) || [];
  const name = arg ? decodeURIComponent(arg) : '';
  try {
    switch (screen) {
      case 'c':
        await showConversation(name);
        break;
      case 'add':
        showAdd();
        break;
      case 'invite':
        await showInvite();
        break;
      case 'safety':
        await showSafety(name);
        break;
      case 'status':
        await showStatus();
        break;
      default:
        home();
    }
  } catch (err) {
    screenError('Something went wrong', err);
  }
  if (!state.view) $('main').focus({ preventScroll: true });
}

async function start() {
  $('error-close').addEventListener('click', clearError);
  $('conversations').addEventListener('keydown', onListKey);
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') markRead();
  });
  try {
    state.me = await api.identity();
  } catch (err) {
    if (err.code === 'no_identity') {
      firstRun();
      return;
    }
    if (err.code === 'unavailable') {
      const status = h('p', { id: 'setup-status', role: 'status' });
      setMain(h('h2', null, 'Sotto'), status);
      starting(status).catch((e2) => screenError('The node did not start', e2));
      return;
    }
    screenError('Cannot load your conversations', err);
    return;
  }
  try {
    $('me').textContent = state.me.name ? `Signed in as ${state.me.name}` : '';
    $('me').title = state.me.account;
    await refreshConversations();
  } catch (err) {
    screenError('Cannot load your conversations', err);
    return;
  }
  refreshStatus().catch(() => {});
  setInterval(() => refreshStatus().catch(() => {}), 10000);
  state.stream = new EventStream({ onEvent, onState: onStreamState, onOpen: catchUp });
  state.stream.start();
  window.addEventListener('hashchange', route);
  await route();
  document.body.dataset.ready = 'true';
}

start();
