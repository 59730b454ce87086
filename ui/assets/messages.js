// The message list of one conversation. A conversation can hold tens of
// thousands of messages, so the list keeps at most WINDOW of them in the
// page: it starts with the newest, adds older ones (from memory, else
// fetched a page at a time with before=SEQ) as the reader scrolls up,
// newer ones as they scroll down, and drops elements at the far end,
// keeping what the reader sees in place.

import { api, NEWEST } from './api.js';
import { h, formatTime } from './dom.js';

export const PAGE = 100; // messages per request
const WINDOW = 240; // most message elements in the page
const STEP = 60; // elements added per scroll step
const EDGE = 400; // pixels from an edge that start a step
const STICK = 80; // pixels from the bottom that count as "at the bottom"

// failText says why a message failed, by the API's fail_reason.
const failText = {
  expired: (name) => `not delivered before it expired: neither ${name}'s device nor a mailbox took it in time`,
  key_changed: (name) => `${name}'s key changed; it was sent again to the new key`,
};

// stateText says where an outgoing message is, for its contact `name`.
export function stateText(m, name) {
  switch (m.state) {
    case 'queued':
      return `Queued: goes out when ${name} or a mailbox can take it`;
    case 'sent':
      return `Sent to ${name}'s device`;
    case 'stored':
      return `Stored at ${m.stored_at} ${m.stored_at === 1 ? 'mailbox' : 'mailboxes'}`;
    case 'delivered':
      return 'Delivered';
    case 'failed':
      return 'Failed: ' + (failText[m.fail_reason] || ((n) => 'not delivered'))(name);
    default:
      return m.state || '';
  }
}

// stateRank orders outgoing states: a message never moves back, so that
// a reply or page that left the node before a state event arrived does not
// undo it.
const stateRank = { queued: 0, sent: 1, stored: 1, delivered: 2, failed: 2 };

function newer(old, m) {
  if (old.direction !== 'out' || !m.state) return true;
  return (stateRank[m.state] ?? 0) >= (stateRank[old.state] ?? 0);
}

export class MessageList {
  // scroller is the scrolling element; list the <ol> inside it; top an
  // element above the list that says whether older messages remain.
  constructor(name, { scroller, list, top, onError }) {
    this.name = name;
    this.scroller = scroller;
    this.list = list;
    this.top = top;
    this.onError = onError;
    this.msgs = []; // ascending by seq: every message loaded
    this.byId = new Map(); // id -> message
    this.els = new Map(); // id -> element, for the messages in the window
    this.start = 0; // the window is msgs[start:end]
    this.end = 0;
    this.hasOlder = true;
    this.busy = false;
    this.ticking = false;
    scroller.addEventListener('scroll', () => {
      if (this.ticking) return;
      this.ticking = true;
      requestAnimationFrame(() => {
        this.ticking = false;
        this.onScroll();
      });
    });
  }

  // load shows the newest messages, scrolled to the bottom.
  async load() {
    const ms = await api.messages({ contact: this.name, before: NEWEST, limit: PAGE });
    this.hasOlder = ms.length === PAGE;
    for (const m of ms) {
      if (this.byId.has(m.id)) continue;
      this.byId.set(m.id, m);
      this.msgs.push(m);
    }
    this.msgs.sort((a, b) => a.seq - b.seq);
    this.start = Math.max(0, this.msgs.length - WINDOW);
    this.end = this.msgs.length;
    this.list.replaceChildren(this.range(this.start, this.end));
    this.updateTop();
    this.scrollToBottom();
  }

  // lastIncoming is the Seq of the newest incoming message loaded.
  lastIncoming() {
    for (let i = this.msgs.length - 1; i >= 0; i--) {
      if (this.msgs[i].direction === 'in') return this.msgs[i].seq;
    }
    return 0;
  }

  atBottom() {
    const s = this.scroller;
    return this.end === this.msgs.length && s.scrollHeight - s.scrollTop - s.clientHeight < STICK;
  }

  scrollToBottom() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  // add shows a new message, or updates one already loaded.
  add(m) {
    const old = this.byId.get(m.id);
    if (old) {
      this.update(old, m);
      return;
    }
    const stick = this.atBottom();
    const atEnd = this.end === this.msgs.length;
    let i = this.msgs.length;
    while (i > 0 && this.msgs[i - 1].seq > m.seq) i--;
    this.msgs.splice(i, 0, m);
    this.byId.set(m.id, m);
    if (i < this.start) {
      this.start++;
      this.end++;
      return;
    }
    if (i > this.end || (i === this.end && !atEnd)) return; // shown when scrolled to
    const el = this.render(m);
    if (i < this.end) this.list.insertBefore(el, this.els.get(this.msgs[i + 1].id));
    else this.list.appendChild(el);
    this.end++;
    if (stick) {
      this.trimTop();
      this.scrollToBottom();
    }
  }

  update(old, m) {
    if (!newer(old, m)) return;
    Object.assign(old, m);
    const el = this.els.get(m.id);
    if (!el) return;
    const fresh = this.render(old);
    el.replaceWith(fresh);
  }

  onScroll() {
    const s = this.scroller;
    if (s.scrollTop < EDGE) this.showOlder().catch(this.onError);
    else if (s.scrollHeight - s.scrollTop - s.clientHeight < EDGE) this.showNewer();
  }

  async showOlder() {
    if (this.busy) return;
    if (this.start === 0) {
      if (!this.hasOlder) return;
      this.busy = true;
      this.top.textContent = 'Loading older messages…';
      try {
        const first = this.msgs.length ? this.msgs[0].seq : NEWEST;
        const ms = await api.messages({ contact: this.name, before: first, limit: PAGE });
        this.hasOlder = ms.length === PAGE;
        const fresh = ms.filter((m) => !this.byId.has(m.id));
        for (const m of fresh) this.byId.set(m.id, m);
        this.msgs = fresh.concat(this.msgs);
        this.start += fresh.length;
        this.end += fresh.length;
      } finally {
        this.busy = false;
        this.updateTop();
      }
      if (this.start === 0) return;
    }
    const from = Math.max(0, this.start - STEP);
    const before = this.scroller.scrollHeight;
    const top = this.scroller.scrollTop;
    this.list.prepend(this.range(from, this.start));
    this.start = from;
    this.scroller.scrollTop = top + (this.scroller.scrollHeight - before);
    this.trimBottom();
  }

  showNewer() {
    if (this.end === this.msgs.length) return;
    const to = Math.min(this.msgs.length, this.end + STEP);
    this.list.append(this.range(this.end, to));
    this.end = to;
    this.trimTop();
  }

  // trimTop drops elements from the top beyond WINDOW, keeping the view
  // where it is.
  trimTop() {
    if (this.end - this.start <= WINDOW) return;
    const before = this.scroller.scrollHeight;
    const top = this.scroller.scrollTop;
    while (this.end - this.start > WINDOW) this.drop(this.msgs[this.start++]);
    this.scroller.scrollTop = top - (before - this.scroller.scrollHeight);
    this.updateTop();
  }

  trimBottom() {
    while (this.end - this.start > WINDOW) this.drop(this.msgs[--this.end]);
  }

  drop(m) {
    const el = this.els.get(m.id);
    if (el) el.remove();
    this.els.delete(m.id);
  }

  updateTop() {
    if (this.start > 0 || this.hasOlder) this.top.textContent = 'Scroll up for older messages';
    else this.top.textContent = this.msgs.length ? 'The beginning of the conversation' : 'No messages yet';
  }

  range(from, to) {
    const frag = document.createDocumentFragment();
    for (let i = from; i < to; i++) frag.appendChild(this.render(this.msgs[i]));
    return frag;
  }

  render(m) {
    const out = m.direction === 'out';
    const meta = [h('time', { datetime: m.sent_at }, formatTime(m.sent_at))];
    if (out) {
      meta.push(' · ', h('span', { class: 'state', 'data-state': m.state }, stateText(m, this.name)));
    } else if (m.via === 'mailbox') {
      meta.push(' · via a mailbox');
    }
    const el = h('li', { class: `msg ${out ? 'out' : 'in'}`, 'data-id': m.id, 'data-seq': m.seq },
      // One element per message, the notice of a session reset inside it.
      m.session_reset ? h('p', { class: 'reset', role: 'note' },
        `${this.name}'s device started a new session (a restored backup or a reinstall). ` +
        'The account key is the same: this is not a key change.') : null,
      h('span', { class: 'visually-hidden' }, out ? 'You: ' : `${this.name}: `),
      h('p', { class: 'text' }, m.text),
      h('p', { class: 'meta' }, meta));
    this.els.set(m.id, el);
    return el;
  }
}
