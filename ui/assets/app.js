// Sotto in the browser: the conversation list, a conversation, groups
// (list, a group's messages, members and admin actions), adding a
// contact, your invite, safety numbers and the node's status, over the
// control API and its event stream.

import { api, APIError, NEWEST, groupTail } from './api.js';
import { h, replace, formatTime } from './dom.js';
import { EventStream } from './events.js';
import { MessageList, PAGE } from './messages.js';
import { GroupMessageList, before, senderName } from './groups.js';

const state = {
  me: null, // Identity
  convs: [], // Conversation summaries, as listed
  contacts: new Map(), // name -> Contact
  status: null, // Status
  view: null, // { name, list: MessageList } while a conversation is open
  groups: [], // Groups, as listed
  tails: new Map(), // group ID -> { total, last }: its message count and last message
  gview: null, // { id, list: GroupMessageList, ... } while a group is open
  mview: null, // { id, ... } while a group's members are shown
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
  keepFocus(ul, 'contact', () => replace(ul, items));
  $('no-conversations').hidden = state.convs.length > 0;
  renderGroups();
}

// keepFocus runs render, which replaces the links of the list ul, and
// keeps the focus on the link it was on (by its data-KEY), so that a
// refresh does not take the keyboard user's place.
function keepFocus(ul, key, render) {
  const a = document.activeElement;
  const had = a && ul.contains(a) ? a.dataset[key] : undefined;
  render();
  if (had === undefined) return;
  const again = [...ul.querySelectorAll('a.conv')].find((e) => e.dataset[key] === had);
  if (again) again.focus();
}

// ---- group list

async function refreshGroups() {
  const gs = await api.groups();
  const tails = await Promise.all(gs.map((g) => groupTail(g.id, state.tails.get(g.id)?.total || 0)));
  state.groups = gs;
  gs.forEach((g, i) => {
    const old = state.tails.get(g.id);
    const t = tails[i];
    // A live message may have come in during the fetch.
    if (old && old.last && (!t.last || before(t.last, old.last))) t.last = old.last;
    state.tails.set(g.id, t);
  });
  renderGroups();
}

// upsertGroup records a group as the node reported it.
function upsertGroup(g) {
  const i = state.groups.findIndex((x) => x.id === g.id);
  if (i >= 0) state.groups[i] = g;
  else {
    state.groups.push(g);
    state.groups.sort((a, b) => a.name.toLowerCase().localeCompare(b.name.toLowerCase()) || (a.id < b.id ? -1 : 1));
  }
  renderGroups();
}

function renderGroups() {
  const ul = $('groups');
  const current = state.gview ? state.gview.id : state.mview ? state.mview.id : null;
  const items = state.groups.map((g) => {
    const last = state.tails.get(g.id)?.last;
    return h('li', null,
      h('a', {
        class: 'conv group' + (g.left ? ' left' : ''),
        href: '#/g/' + g.id,
        'aria-current': g.id === current ? 'page' : null,
        'data-group': g.id,
      },
      h('span', { class: 'conv-name' }, g.name),
      g.left ? h('span', { class: 'tag' }, 'Left') : null,
      h('span', { class: 'conv-last' }, last ? `${senderName(last)}: ${last.text.slice(0, 200)}` : 'No messages yet'),
      last ? h('time', { class: 'conv-time', datetime: last.sent_at }, formatTime(last.sent_at)) : null));
  });
  keepFocus(ul, 'group', () => replace(ul, items));
  $('no-groups').hidden = state.groups.length > 0;
}

// Arrow keys move between conversations and groups.
function onListKey(e) {
  if (e.key !== 'ArrowDown' && e.key !== 'ArrowUp') return;
  const links = [...document.querySelectorAll('.sidebar a.conv')];
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
    case 'group_message':
      if (ev.group_message) onGroupMessage(ev.group_message);
      break;
    case 'group':
      if (ev.group) onGroup(ev.group);
      break;
    case 'contact_request':
    case 'key_change':
      refreshConversations().then(() => {
        if (state.view && ev.contact && state.view.name === ev.contact.name) renderContactState();
      }).catch(showError);
      break;
  }
}

function onGroupMessage(m) {
  const t = state.tails.get(m.group);
  if (!t) {
    refreshGroups().catch(showError);
  } else if (!t.last || t.last.id === m.id || !before(m, t.last)) {
    t.last = m;
    renderGroups();
  }
  if (state.gview && state.gview.id === m.group) state.gview.list.add(m);
}

function onGroup(g) {
  const known = state.tails.has(g.id);
  upsertGroup(g);
  if (!known) {
    groupTail(g.id).then((t) => {
      if (!state.tails.has(g.id)) state.tails.set(g.id, t);
      renderGroups();
    }).catch(showError);
  }
  if (state.gview && state.gview.id === g.id) renderGroupHead(g);
  if (state.mview && state.mview.id === g.id && !state.mview.busy) renderMembers(g, true);
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
    await refreshGroups();
    if (state.gview) {
      const v = state.gview;
      const g = state.groups.find((x) => x.id === v.id);
      if (g) renderGroupHead(g);
      await v.list.catchUp();
    }
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

// composer is the send box of a conversation or group, labelled label:
// Enter sends, Shift+Enter starts a new line. send(text) resolves once
// the node took the message; when it throws, the text goes back in the
// box and the error shows under it.
function composer(label, describedBy, send) {
  const input = h('textarea', { id: 'compose', rows: '2', placeholder: label, 'aria-describedby': describedBy });
  const sendError = h('p', { id: 'send-error', class: 'error', role: 'alert' });
  const button = h('button', { type: 'submit', id: 'send' }, 'Send');
  const form = h('form', { id: 'composer', class: 'composer', onsubmit: (e) => { e.preventDefault(); submit(); } },
    h('label', { for: 'compose', class: 'visually-hidden' }, label),
    input,
    button,
    h('p', { id: 'compose-help', class: 'hint small' }, 'Enter sends; Shift+Enter starts a new line.'),
    sendError);
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      submit();
    }
  });
  async function submit() {
    const text = input.value;
    if (text.trim() === '' || input.disabled) return;
    sendError.textContent = '';
    button.disabled = true;
    input.value = ''; // at once, so that what is typed next is kept
    try {
      await send(text);
    } catch (err) {
      sendError.textContent = `Not sent: ${err.message}`;
      if (input.value === '') input.value = text;
    } finally {
      button.disabled = input.disabled;
      input.focus();
    }
  }
  return { form, input, sendError };
}

async function showConversation(name) {
  const seq = routeSeq;
  refreshStatus().catch(() => {}); // for the presence line
  if (!state.contacts.has(name)) await refreshConversations();
  if (stale(seq)) return;
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
  const { form, input, sendError } = composer(`Message to ${name}`, 'compose-help presence', async (text) => {
    const m = await api.send(name, text);
    if (state.view === view) {
      view.list.add(m);
      view.list.scrollToBottom();
    }
  });
  const view = { name, list: null, input, sendError };
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

// ---- groups

// findGroup returns the group with id, fetching the list if needed.
async function findGroup(id) {
  let g = state.groups.find((x) => x.id === id);
  if (!g) {
    await refreshGroups();
    g = state.groups.find((x) => x.id === id);
  }
  return g;
}

function noGroup(id) {
  screenError('No such group', new APIError(`There is no group with ID ${id}.`));
}

async function showGroup(id) {
  const seq = routeSeq;
  state.view = null;
  const g = await findGroup(id);
  if (stale(seq)) return;
  if (!g) {
    noGroup(id);
    return;
  }
  const scroller = h('div', { id: 'messages', class: 'messages', tabindex: '0', role: 'log', 'aria-labelledby': 'group-title' });
  const top = h('p', { class: 'older', id: 'older' });
  const older = h('button', { type: 'button', id: 'show-older', class: 'secondary', hidden: true });
  const list = h('ol', { class: 'msg-list', id: 'msg-list' });
  const newer = h('button', { type: 'button', id: 'show-newest', class: 'secondary', hidden: true }, 'Show the newest messages');
  scroller.append(top, older, list, newer);
  const { form, input, sendError } = composer(`Message to the group ${g.name}`, 'compose-help group-note', async (text) => {
    const m = await api.sendGroup(id, text);
    if (state.gview === view) {
      view.list.add(m);
      view.list.scrollToBottom();
    }
  });
  const view = { id, list: null, input, sendError };
  setMain(
    h('div', { class: 'conv-head' },
      h('h2', { id: 'group-title' }, g.name),
      h('span', { id: 'group-role', class: 'tag' }),
      h('a', { href: '#/members/' + id, id: 'members-link' })),
    scroller,
    h('p', { id: 'group-note', class: 'presence', role: 'status' }),
    form);
  view.list = new GroupMessageList(id, { scroller, list, older, newer, onError: showError });
  state.gview = view;
  renderConversations();
  renderGroupHead(g);
  await view.list.load();
  if (state.gview !== view) return;
  requestAnimationFrame(() => setTimeout(() => {
    document.body.dataset.painted = 'group:' + id;
  }, 0));
  if (!input.disabled) input.focus();
  else scroller.focus();
}

// renderGroupHead shows the open group's name, your role, its member
// count and, once you left or were removed, that it is read only.
function renderGroupHead(g) {
  const v = state.gview;
  if (!v || v.id !== g.id) return;
  $('group-title').textContent = g.name;
  const role = $('group-role');
  role.textContent = g.left ? 'Left' : g.admin ? 'Admin' : 'Member';
  role.className = 'tag' + (g.left ? ' warn' : g.admin ? ' ok' : '');
  const n = g.members.length;
  $('members-link').textContent = `Members (${n})`;
  $('members-link').setAttribute('aria-label', `${n} ${n === 1 ? 'member' : 'members'}: show them and change the group`);
  $('group-note').textContent = g.left
    ? 'You are no longer a member of this group: you left or were removed. Its messages stay readable; you cannot send.'
    : `Goes to the ${n - 1} other ${n - 1 === 1 ? 'member' : 'members'}; “delivered N/M” counts their receipts.`;
  $('group-note').dataset.left = String(g.left);
  v.input.disabled = g.left;
  $('send').disabled = g.left;
}

// showMembers is a group's members, with the admin actions (add,
// remove, promote, rename) and leaving. The node decides who may change
// the group: a refused action shows its reason.
async function showMembers(id) {
  const seq = routeSeq;
  state.view = null;
  const known = await findGroup(id);
  if (stale(seq)) return;
  if (!known) {
    noGroup(id);
    return;
  }
  const g = await api.group(id);
  if (stale(seq)) return;
  const result = h('p', { id: 'members-result', class: 'ok', role: 'status' });
  const error = h('p', { id: 'members-error', class: 'error', role: 'alert' });
  const body = h('div', { id: 'members-body', class: 'members-body' });
  state.mview = { id, result, error, body, busy: false };
  setMain(
    h('h2', { id: 'members-title', tabindex: '-1' }),
    h('p', { id: 'members-role' }),
    error,
    result,
    body,
    h('p', null, h('a', { href: '#/g/' + id, id: 'back-to-group' }, 'Back to the group’s messages')));
  upsertGroup(g);
  renderMembers(g);
}

// groupAction runs fn, a change of the group on the members screen, and
// shows the group as the node returned it, or the node's refusal.
async function groupAction(fn, done) {
  const mv = state.mview;
  if (!mv || mv.busy) return;
  mv.busy = true;
  mv.error.textContent = '';
  mv.result.textContent = '';
  for (const b of mv.body.querySelectorAll('button')) b.disabled = true;
  try {
    const g = await fn();
    if (state.mview !== mv) return;
    upsertGroup(g);
    renderMembers(g);
    mv.result.textContent = done;
    $('members-title').focus();
  } catch (err) {
    if (state.mview !== mv) return;
    mv.error.textContent = err.message;
    for (const b of mv.body.querySelectorAll('button')) b.disabled = false;
  } finally {
    mv.busy = false;
  }
}

// renderMembers shows the group g on the members screen. For a live
// change (from the event stream) while the user is in the middle of
// something there (a field, a tick, the leave question), only the list
// of members and the role change, so that what they were doing stays.
function renderMembers(g, live = false) {
  const mv = state.mview;
  if (!mv || mv.id !== g.id) return;
  const id = g.id;
  $('members-title').textContent = `Members of ${g.name}`;
  $('members-role').textContent = g.left
    ? 'You are no longer a member of this group: you left or were removed. Its messages stay readable.'
    : g.admin
      ? 'You are an admin: you can add, remove and promote members and rename the group.'
      : 'You are a member. Only admins can add, remove or promote members or rename the group; the group refuses these changes from others.';
  const open = !g.left;
  const members = h('ul', { id: 'members', class: 'members', 'aria-labelledby': 'members-title' },
    g.members.map((m) => {
      const who = senderName(m);
      return h('li', { class: 'member', 'data-member': m.name || (m.me ? 'me' : m.account) },
        h('span', { class: 'member-name' }, m.me ? 'You' : who),
        m.admin ? h('span', { class: 'tag ok' }, 'Admin') : null,
        open && !m.me && m.name ? h('span', { class: 'member-actions' },
          m.admin ? null : h('button', {
            type: 'button', class: 'secondary promote', 'aria-label': `Make ${m.name} an admin`,
            onclick: () => groupAction(() => api.promoteInGroup(id, m.name), `${m.name} is now an admin.`),
          }, 'Make admin'),
          h('button', {
            type: 'button', class: 'secondary remove', 'aria-label': `Remove ${m.name} from the group`,
            onclick: () => groupAction(() => api.removeFromGroup(id, m.name), `${m.name} was removed; the group was re-keyed, so they read nothing sent from now on.`),
          }, 'Remove')) : null);
    }));
  const confirmOpen = $('leave-confirm') && !$('leave-confirm').hidden;
  if (live && !g.left && $('members') && (mv.body.contains(document.activeElement) || confirmOpen)) {
    const focused = document.activeElement;
    if (!$('members').contains(focused)) {
      $('members').replaceWith(members);
      return;
    }
  }
  const parts = [h('h3', null, 'Members'), members];
  if (open) {
    const inGroup = new Set(g.members.map((m) => m.name).filter(Boolean));
    const candidates = [...state.contacts.values()].filter((c) => !c.request && !inGroup.has(c.name));
    if (candidates.length) {
      const boxes = candidates.map((c, i) => h('label', { class: 'check' },
        h('input', { type: 'checkbox', id: `add-member-${i}`, value: c.name }), ' ', c.name));
      parts.push(h('form', {
        id: 'add-members-form', class: 'stack',
        onsubmit: (e) => {
          e.preventDefault();
          const names = boxes.map((l) => l.querySelector('input')).filter((b) => b.checked).map((b) => b.value);
          if (!names.length) {
            mv.error.textContent = 'Choose the contacts to add first.';
            return;
          }
          groupAction(() => api.addToGroup(id, names), `Added ${names.join(', ')}.`);
        },
      },
      h('fieldset', null, h('legend', null, 'Add contacts to the group'), boxes),
      h('button', { type: 'submit', id: 'add-members' }, 'Add to the group')));
    } else {
      parts.push(h('p', { class: 'hint' }, 'All your contacts are in this group.'));
    }
    const name = h('input', { id: 'rename-name', required: true, autocomplete: 'off', '.value': g.name });
    parts.push(h('form', {
      id: 'rename-form', class: 'stack',
      onsubmit: (e) => {
        e.preventDefault();
        const n = name.value.trim();
        if (n === '') {
          mv.error.textContent = 'Choose a name first.';
          return;
        }
        groupAction(() => api.renameGroup(id, n), `The group is now called ${n}.`);
      },
    },
    h('label', { for: 'rename-name' }, 'The group’s name'), name,
    h('button', { type: 'submit', id: 'rename-submit' }, 'Rename')));
    parts.push(leaveSection(g));
  }
  replace(mv.body, parts);
}

// leaveSection is the "Leave" button and the confirmation it asks for.
function leaveSection(g) {
  const confirmBox = h('div', { id: 'leave-confirm', class: 'banner warn', role: 'group', 'aria-labelledby': 'leave-question', hidden: true });
  const leave = h('button', {
    type: 'button', id: 'leave', class: 'danger',
    onclick: () => {
      confirmBox.hidden = false;
      leave.hidden = true;
      $('leave-cancel').focus();
    },
  }, 'Leave the group');
  const cancel = () => {
    confirmBox.hidden = true;
    leave.hidden = false;
    leave.focus();
  };
  confirmBox.append(
    h('p', { id: 'leave-question' },
      `Leave ${g.name}? You stop receiving its messages and cannot send to it; only an admin can add you back. The messages so far stay readable.`),
    h('button', {
      type: 'button', id: 'leave-yes', class: 'danger',
      onclick: () => groupAction(() => api.leaveGroup(g.id), `You left ${g.name}.`),
    }, 'Yes, leave the group'), ' ',
    h('button', { type: 'button', id: 'leave-cancel', class: 'secondary', onclick: cancel }, 'Stay'));
  confirmBox.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') cancel();
  });
  return h('section', { class: 'leave', 'aria-labelledby': 'leave-title' },
    h('h3', { id: 'leave-title' }, 'Leave'), leave, confirmBox);
}

// showNewGroup creates a group: a name and the contacts to add; you are
// its admin.
function showNewGroup() {
  state.view = null;
  renderConversations();
  const err = h('p', { id: 'new-group-error', class: 'error', role: 'alert' });
  const name = h('input', { id: 'new-group-name', name: 'name', required: true, autocomplete: 'off' });
  const contacts = [...state.contacts.values()].filter((c) => !c.request);
  const boxes = contacts.map((c, i) => h('label', { class: 'check' },
    h('input', { type: 'checkbox', id: `new-group-member-${i}`, value: c.name }), ' ', c.name));
  const button = h('button', { type: 'submit', id: 'new-group-submit' }, 'Create the group');
  const form = h('form', {
    id: 'new-group-form', class: 'stack',
    onsubmit: async (e) => {
      e.preventDefault();
      err.textContent = '';
      if (name.value.trim() === '') {
        err.textContent = 'Choose a name for the group first.';
        return;
      }
      const members = boxes.map((l) => l.querySelector('input')).filter((b) => b.checked).map((b) => b.value);
      button.disabled = true;
      try {
        const g = await api.createGroup(name.value.trim(), members);
        upsertGroup(g);
        await refreshGroups();
        location.hash = '#/g/' + g.id;
      } catch (e2) {
        err.textContent = e2.message;
      } finally {
        button.disabled = false;
      }
    },
  },
  h('label', { for: 'new-group-name' }, 'Name: what the members see'), name,
  h('fieldset', null,
    h('legend', null, 'Members: the contacts to add (you can add more later)'),
    boxes.length ? boxes : h('p', { class: 'hint' }, 'No contacts yet: add one first, or create the group alone.')),
  button, err);
  setMain(h('h2', null, 'New group'),
    h('p', null, 'A private group: its messages are end-to-end encrypted to its members. You are its admin.'),
    form);
  name.focus();
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
  const seq = routeSeq;
  state.view = null;
  renderConversations();
  const { invite } = await api.invite();
  if (stale(seq)) return;
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
  const seq = routeSeq;
  state.view = null;
  renderConversations();
  const v = await api.verify(name, false);
  if (stale(seq)) return;
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
  const seq = routeSeq;
  state.view = null;
  renderConversations();
  await refreshStatus();
  if (stale(seq)) return;
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
    h('p', null, h('button', { type: 'button', id: 'status-refresh', onclick: () => route(true) }, 'Refresh')));
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

// Each route has a number. A screen notes the number it was drawn for and,
// after anything it awaits, draws nothing when a newer route has started
// meanwhile (another link followed while it waited): the newest route's
// screen is the one that stays.
let routeSeq = 0;
let routedHash = null;
const stale = (seq) => seq !== routeSeq;

// route draws the screen of the hash. The hash changed twice in one task
// (or before the first change was handled) fires two events that both
// read the last hash: the screen is drawn once. again draws the same
// screen anew (its Refresh button).
async function route(again) {
  const hash = location.hash || '#/';
  if (hash === routedHash && again !== true) return;
  routedHash = hash;
  routeSeq++;
  const [, screen, arg] = hash.match(/^#\/([a-z]*)\/?(.*)$/) || [];
  const name = arg ? decodeURIComponent(arg) : '';
  state.gview = null;
  state.mview = null;
  try {
    switch (screen) {
      case 'g':
        await showGroup(name);
        break;
      case 'members':
        await showMembers(name);
        break;
      case 'newgroup':
        showNewGroup();
        break;
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
    state.gview = null;
    state.mview = null;
    screenError('Something went wrong', err);
  }
  if (!state.view && !state.gview) $('main').focus({ preventScroll: true });
}

async function start() {
  $('error-close').addEventListener('click', clearError);
  document.querySelector('.sidebar').addEventListener('keydown', onListKey);
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
    await refreshGroups().catch(showError);
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
