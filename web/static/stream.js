// One job's event stream. The browser's EventSource reconnects by itself after a dropped
// connection and sends Last-Event-ID (the server numbers every frame with `id:`); when it gives up
// (an HTTP error answer), this class reconnects by hand with ?last_event_id=. Either way events are
// deduplicated by seq, so a replayed frame never adds a second point.

import { api, ApiError, streamUrl } from "./api.js";

const TERMINAL_EVENTS = new Set(["completed", "stopped", "error"]);
const RECONNECT_DELAYS_MS = [500, 1000, 2000, 4000, 8000];

export class JobStream {
  /**
   * @param {string} jobId
   * @param {{onEvent: (type: string, data: object, seq: number|null) => void,
   *          onConnection: (state: string, detail?: string) => void}} handlers
   */
  constructor(jobId, handlers) {
    this.jobId = jobId;
    this.handlers = handlers;
    this.lastSeq = null; // highest seq applied
    this.received = 0; // frames applied
    this.duplicates = 0; // frames dropped because their seq was already applied
    this.reconnects = 0;
    this.closed = false;
    this.source = null;
    this.retryTimer = null;
    this.failures = 0;
  }

  open() {
    this.connect(false);
    return this;
  }

  close() {
    this.closed = true;
    clearTimeout(this.retryTimer);
    if (this.source) this.source.close();
    this.source = null;
  }

  connect(manual) {
    if (this.closed) return;
    const source = new EventSource(streamUrl(this.jobId, manual ? this.lastSeq : null));
    this.source = source;
    source.onopen = () => {
      if (this.source !== source) return;
      this.failures = 0;
      this.handlers.onConnection("open");
    };
    source.onmessage = (message) => {
      if (this.source === source && !this.closed) this.receive(message);
    };
    source.onerror = () => {
      if (this.source !== source || this.closed) return;
      if (source.readyState === EventSource.CONNECTING) {
        // The browser retries on its own, with Last-Event-ID.
        this.reconnects += 1;
        this.handlers.onConnection("reconnecting");
        return;
      }
      source.close();
      this.scheduleManualReconnect();
    };
  }

  receive(message) {
    let frame;
    try {
      frame = JSON.parse(message.data);
    } catch {
      return; // not one of ours; the server only sends JSON frames
    }
    const type = frame && frame.event;
    if (type === "heartbeat") {
      this.handlers.onConnection("open");
      return;
    }
    const seq = message.lastEventId === "" ? null : Number(message.lastEventId);
    if (seq !== null && Number.isFinite(seq)) {
      if (this.lastSeq !== null && seq <= this.lastSeq) {
        this.duplicates += 1;
        return;
      }
      this.lastSeq = seq;
    }
    this.received += 1;
    this.handlers.onEvent(type, frame.data || {}, seq);
    // The server ends the stream after a terminal event; without close() EventSource would reconnect.
    if (TERMINAL_EVENTS.has(type)) this.close();
  }

  // The browser gave up (the server answered with an error, e.g. 401 or 502 from a proxy). Ask the
  // status endpoint first: it goes through the API client, which prompts for a token on 401.
  scheduleManualReconnect() {
    const delay = RECONNECT_DELAYS_MS[Math.min(this.failures, RECONNECT_DELAYS_MS.length - 1)];
    this.failures += 1;
    this.handlers.onConnection("reconnecting");
    this.retryTimer = setTimeout(async () => {
      if (this.closed) return;
      try {
        await api.status(this.jobId, { interactive: false });
      } catch (err) {
        if (err instanceof ApiError && err.status === 404) {
          this.handlers.onConnection("gone", "this job no longer exists on the server");
          this.close();
          return;
        }
        this.scheduleManualReconnect();
        return;
      }
      this.reconnects += 1;
      this.connect(true);
    }, delay);
  }
}

export function isTerminalEvent(type) {
  return TERMINAL_EVENTS.has(type);
}
