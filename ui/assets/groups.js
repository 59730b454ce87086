// The message list of one group. Group messages come in display order
// (the senders' Lamport order, replies after what they answer) and are
// fetched by position (skip, limit), so the list holds a window of at
// most WINDOW consecutive messages, [base, base + msgs.length) of the
// group's total: it starts with the newest; "Show earlier messages" moves
// it back a page, "Show the newest" returns to the end. Live messages
// join the window when it reaches the end, and the oldest elements go.

import { api, groupTail } from './api.js';
import { h, formatTime } from './dom.js';

const PAGE = 100; // messages per step back
const WINDOW = 240; // most message elements in the page
const STICK = 80; // pixels from the bottom that count as "at the bottom"

// senderName is how the page names a message's or member's account:
// "You", the contact's name, or a stranger's fingerprint.
export function senderName(m) {
  if (m.direction === 'out' || m.me) return 'You';
  const name = m.sender_name ?? m.name;
  if (name) return name;
  const fp = m.sender ?? m.account ?? '';
  return `not a contact (${fp.slice(0, 12)}…)`;
}

// deliveredText says how many of an outgoing message's recipients have
// receipted it.
export function deliveredText(m) {
  return `delivered ${m.delivered || 0}/${m.recipients || 0}`;
}

// before reports whether a comes before b in display order, as far as
// the page can tell: by Lamport time, then by the node's sequence.
export function before(a, b) {
  return a.lamport !== b.lamport ? a.lamport < b.lamport : a.seq < b.seq;
}

export class GroupMessageList {
  // scroller is the scrolling element; list the <ol> inside it; older
  // and newer are buttons that move the window.
  constructor(id, { scroller, list, older, newer, onError }) {
    this.id = id;
    this.scroller = scroller;
    this.list = list;
    this.older = older;
    this.newer = newer;
    this.onError = onError;
    this.msgs = []; // the window, in display order
    this.byId = new Map(); // id -> message in the window
    this.els = new Map(); // id -> element
    this.base = 0; // the position of msgs[0] in the group
    this.total = 0; // the group's messages, as far as the page knows
    this.busy = false; // moving the window back
    this.ops = Promise.resolve(); // the last of load, showOlder and catchUp
    older.addEventListener('click', () => this.showOlder().catch(onError));
    newer.addEventListener('click', () => this.showNewest().catch(onError));
  }

  // serial runs fn once the list's earlier loads, moves and catch-ups are
  // done: each reads the window the one before left. (A catch-up after the
  // event stream opened, run while the first load was still fetching,
  // counted the messages before the window as new ones and moved the
  // window's position past the end.)
  serial(fn) {
    const p = this.ops.then(fn);
    this.ops = p.catch(() => {});
    return p;
  }

  // load shows the newest messages, scrolled to the bottom.
  load() {
    return this.serial(() => this.loadNow());
  }

  async loadNow() {
    const { total } = await groupTail(this.id, this.total);
    const skip = Math.max(0, total - PAGE);
    const ms = total > skip ? await api.groupMessages(this.id, { skip, limit: total - skip }) : [];
    this.show(skip, ms);
    this.total = Math.max(this.total, skip + ms.length);
    this.scrollToBottom();
  }

  // show replaces the window with ms, the messages from position base.
  show(base, ms) {
    this.base = base;
    this.msgs = ms.slice(0, WINDOW);
    this.byId = new Map(this.msgs.map((m) => [m.id, m]));
    this.els = new Map();
    const frag = document.createDocumentFragment();
    for (const m of this.msgs) frag.appendChild(this.render(m));
    this.list.replaceChildren(frag);
    this.updateButtons();
  }

  atEnd() {
    return this.base + this.msgs.length >= this.total;
  }

  atBottom() {
    const s = this.scroller;
    return this.atEnd() && s.scrollHeight - s.scrollTop - s.clientHeight < STICK;
  }

  scrollToBottom() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  // add shows a new message (from the event stream or a send), or
  // updates one shown (its delivered count).
  add(m) {
    const old = this.byId.get(m.id);
    if (old) {
      if ((m.delivered || 0) < (old.delivered || 0)) return; // an older state
      Object.assign(old, m);
      const el = this.els.get(m.id);
      if (el) el.replaceWith(this.render(old));
      return;
    }
    if (!this.atEnd()) {
      // The window is further back; the message is seen on returning to
      // the newest (unless it belongs before the window).
      if (this.msgs.length && before(m, this.msgs[0])) this.base++;
      this.total++;
      this.updateButtons();
      return;
    }
    const stick = this.atBottom() || m.direction === 'out';
    this.total++;
    if (this.msgs.length && before(m, this.msgs[0]) && this.base > 0) {
      this.base++;
      this.updateButtons();
      return;
    }
    let i = this.msgs.length;
    while (i > 0 && before(m, this.msgs[i - 1])) i--;
    this.msgs.splice(i, 0, m);
    this.byId.set(m.id, m);
    const el = this.render(m);
    if (i < this.msgs.length - 1) this.list.insertBefore(el, this.els.get(this.msgs[i + 1].id));
    else this.list.appendChild(el);
    this.trimTop();
    this.updateButtons();
    if (stick) this.scrollToBottom();
  }

  // trimTop drops the oldest elements beyond WINDOW.
  trimTop() {
    while (this.msgs.length > WINDOW) {
      const m = this.msgs.shift();
      this.byId.delete(m.id);
      const el = this.els.get(m.id);
      if (el) el.remove();
      this.els.delete(m.id);
      this.base++;
    }
  }

  // showOlder moves the window a page back.
  showOlder() {
    return this.serial(() => this.showOlderNow());
  }

  async showOlderNow() {
    if (this.base === 0 || this.busy) return;
    this.busy = true;
    try {
      const skip = Math.max(0, this.base - PAGE);
      const ms = await api.groupMessages(this.id, { skip, limit: this.base - skip + this.msgs.length });
      this.show(skip, ms);
    } finally {
      this.busy = false;
    }
    this.scroller.scrollTop = 0;
    if (this.older.hidden) this.scroller.focus();
  }

  // showNewest returns the window to the end.
  async showNewest() {
    await this.load();
    this.scroller.focus();
  }

  // catchUp fetches what the window missed while the event stream was
  // down: new messages and delivered counts.
  catchUp() {
    return this.serial(() => this.catchUpNow());
  }

  async catchUpNow() {
    if (!this.atEnd()) {
      this.total = (await groupTail(this.id, this.total)).total;
      this.updateButtons();
      return;
    }
    let skip = this.base;
    for (;;) {
      const ms = await api.groupMessages(this.id, { skip, limit: PAGE });
      for (const m of ms) this.add(m);
      skip += ms.length;
      if (ms.length < PAGE) break;
    }
  }

  updateButtons() {
    this.older.hidden = this.base === 0;
    this.older.textContent = `Show earlier messages (${this.base} before these)`;
    this.newer.hidden = this.atEnd();
    const top = this.scroller.querySelector('.older');
    if (top) top.textContent = this.base > 0 ? '' : this.msgs.length ? 'The beginning of the group' : 'No messages yet';
  }

  render(m) {
    const out = m.direction === 'out';
    const meta = [h('time', { datetime: m.sent_at }, formatTime(m.sent_at))];
    if (out) {
      const all = m.recipients > 0 && m.delivered >= m.recipients;
      meta.push(' · ', h('span', {
        class: 'delivered', 'data-state': all ? 'delivered' : 'partial',
        'data-delivered': m.delivered || 0, 'data-recipients': m.recipients || 0,
      }, deliveredText(m)));
    }
    const el = h('li', { class: `msg ${out ? 'out' : 'in'}`, 'data-id': m.id, 'data-seq': m.seq },
      h('p', { class: 'sender' }, senderName(m), h('span', { class: 'visually-hidden' }, ':')),
      h('p', { class: 'text' }, m.text),
      h('p', { class: 'meta' }, meta));
    this.els.set(m.id, el);
    return el;
  }
}
