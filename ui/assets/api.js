// The control API, as the page calls it: same origin, the session cookie
// sent by the browser, JSON in and out. Errors become APIError values
// whose message is the API's own text, meant for the user.

export class APIError extends Error {
  constructor(message, code, status) {
    super(message);
    this.name = 'APIError';
    this.code = code;
    this.status = status;
  }
}

// The largest Seq a page asks for "the newest messages" with.
export const NEWEST = Number.MAX_SAFE_INTEGER;

export async function call(method, path, body) {
  const init = { method, headers: { Accept: 'application/json' }, credentials: 'same-origin' };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (err) {
    throw new APIError('Cannot reach the node: is `sotto run` still running?', 'unreachable', 0);
  }
  let data = null;
  const text = await resp.text();
  if (text !== '') {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!resp.ok) {
    const msg = data && typeof data.error === 'string' ? data.error : `The node answered HTTP ${resp.status}.`;
    const code = data && data.code ? data.code : 'http_' + resp.status;
    if (resp.status === 401) {
      throw new APIError('Signed out: open a new login link from `sotto run --ui`. (' + msg + ')', code, 401);
    }
    throw new APIError(msg, code, resp.status);
  }
  return data;
}

const enc = encodeURIComponent;

export const api = {
  identity: () => call('GET', '/v1/identity'),
  // setup creates the identity of a node that has none yet (first run).
  setup: (name) => call('POST', '/v1/setup', { name }),
  status: () => call('GET', '/v1/status'),
  invite: () => call('GET', '/v1/invite'),
  contacts: () => call('GET', '/v1/contacts'),
  addContact: (name, invite) => call('POST', '/v1/contacts', { name, invite }),
  verify: (name, confirm) => call('POST', `/v1/contacts/${enc(name)}/verify`, { confirm }),
  rejectKey: (name) => call('POST', `/v1/contacts/${enc(name)}/reject-key`),
  conversations: () => call('GET', '/v1/conversations'),
  markRead: (name, seq) => call('POST', `/v1/conversations/${enc(name)}/read`, { seq }),
  send: (contact, text) => call('POST', '/v1/messages', { contact, text }),
  // messages returns messages in ascending order: with before, the
  // newest before it; else the oldest after `after`.
  messages: ({ contact = '', after = 0, before = 0, limit = 100 } = {}) => {
    const q = new URLSearchParams();
    if (contact !== '') q.set('contact', contact);
    if (after > 0) q.set('after', String(after));
    if (before > 0) q.set('before', String(before));
    q.set('limit', String(limit));
    return call('GET', '/v1/messages?' + q.toString());
  },
  // Groups are named by their ID (64 hex digits), members by contact name.
  groups: () => call('GET', '/v1/groups'),
  group: (id) => call('GET', `/v1/groups/${enc(id)}`),
  createGroup: (name, members) => call('POST', '/v1/groups', { name, members }),
  addToGroup: (id, members) => call('POST', `/v1/groups/${enc(id)}/add`, { members }),
  removeFromGroup: (id, member) => call('POST', `/v1/groups/${enc(id)}/remove`, { member }),
  promoteInGroup: (id, member) => call('POST', `/v1/groups/${enc(id)}/promote`, { member }),
  renameGroup: (id, name) => call('POST', `/v1/groups/${enc(id)}/rename`, { name }),
  leaveGroup: (id) => call('POST', `/v1/groups/${enc(id)}/leave`),
  sendGroup: (id, text) => call('POST', `/v1/groups/${enc(id)}/messages`, { text }),
  // groupMessages returns the group's messages in display order, after
  // the first skip.
  groupMessages: (id, { skip = 0, limit = 100 } = {}) =>
    call('GET', `/v1/groups/${enc(id)}/messages?skip=${skip}&limit=${limit}`),
};

// GROUP_PAGE is the most group messages one request returns (the API's
// MaxGroupMessageLimit).
export const GROUP_PAGE = 1000;

// groupTail pages through group id's messages from known-1 (a count of
// them seen before; messages are never removed, so the end is at or
// after it) to the end, and returns their count and the last one (null
// for none).
export async function groupTail(id, known = 0) {
  let skip = Math.max(0, known - 1);
  let last = null;
  for (;;) {
    const ms = await api.groupMessages(id, { skip, limit: GROUP_PAGE });
    if (ms.length) last = ms[ms.length - 1];
    skip += ms.length;
    if (ms.length < GROUP_PAGE) return { total: skip, last };
  }
}
