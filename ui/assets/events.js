// The node's event stream (/v1/events, server-sent events), kept open:
// when it drops, it reconnects with a growing delay, and once open again
// it calls onOpen so that the page fetches what it missed by the message
// cursor (after=SEQ), which it also does after the first open, for what
// happened between loading the page and the stream's start. The stream's own ids restart with every
// connection, so they are not used as a cursor.

const MIN_DELAY = 250;
const MAX_DELAY = 10000;

export class EventStream {
  // onEvent(event): each event object. onState(state): 'connecting',
  // 'open' or 'reconnecting'. onOpen(): after every open.
  constructor({ onEvent, onState, onOpen }) {
    this.onEvent = onEvent;
    this.onState = onState;
    this.onOpen = onOpen;
    this.delay = MIN_DELAY;
    this.es = null;
    this.timer = 0;
  }

  start() {
    this.onState('connecting');
    this.connect();
  }

  connect() {
    this.timer = 0;
    const es = new EventSource('/v1/events');
    this.es = es;
    es.addEventListener('open', () => {
      if (this.es !== es) return;
      this.delay = MIN_DELAY;
      this.onState('open');
      this.onOpen();
    });
    es.addEventListener('message', (e) => {
      if (this.es !== es) return;
      let ev;
      try {
        ev = JSON.parse(e.data);
      } catch {
        return; // not an event this page understands
      }
      this.onEvent(ev);
    });
    es.addEventListener('error', () => {
      if (this.es !== es) return;
      // The browser's own retry cannot tell us when to catch up, and
      // gives up on some failures: close, and reconnect here.
      es.close();
      this.es = null;
      this.onState('reconnecting');
      this.timer = setTimeout(() => this.connect(), this.delay);
      this.delay = Math.min(this.delay * 2, MAX_DELAY);
    });
  }
}
