// Server-Sent Events read with fetch(): EventSource cannot send an Authorization header.
// Parses id:/event:/data: lines, remembers the last id and, after a drop, reconnects with Last-Event-ID
// (backoff 0.5 s doubling to 5 s), so the server resumes where the page left off: nothing missed, nothing twice.

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 5000;
// The server sends a heartbeat every 15 s: three missed means the connection is dead even if no error says so.
const SILENCE_MS = 45000;

export class StreamError extends Error {
  constructor(status, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
  }
}

export async function errorDetail(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    return JSON.stringify(body.detail ?? body);
  } catch {
    return `HTTP ${response.status}`;
  }
}

/**
 * Open a stream and keep it open until stop().
 * options: url, headers() -> object, lastId (resume point or null), onEvent(type, data, id),
 * onOpen(reconnected), onDrop(error), onFatal(StreamError) for 401/403 (no retry).
 */
export function openStream({ url, headers, lastId = null, onEvent, onOpen, onDrop, onFatal }) {
  let stopped = false;
  let controller = null;
  let last = lastId;
  let delay = FIRST_DELAY_MS;
  let connections = 0;

  async function connectOnce() {
    controller = new AbortController();
    const ownController = controller;
    let watchdog = null;
    const bark = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => ownController.abort(), SILENCE_MS);
    };
    try {
      const sent = { Accept: "text/event-stream", ...(headers ? headers() : {}) };
      if (last !== null && last !== undefined) sent["Last-Event-ID"] = String(last);
      bark();
      const response = await fetch(url, { headers: sent, signal: ownController.signal, cache: "no-store" });
      if (response.status === 401 || response.status === 403) {
        throw Object.assign(new StreamError(response.status, await errorDetail(response)), { fatal: true });
      }
      if (!response.ok || !response.body) throw new StreamError(response.status, await errorDetail(response));
      connections += 1;
      if (onOpen) onOpen(connections > 1);
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      const parser = new EventParser((type, data, id) => {
        if (id !== null) last = id;
        if (onEvent) onEvent(type, data, id);
      });
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        bark();
        delay = FIRST_DELAY_MS; // bytes arrived: this connection works
        parser.push(decoder.decode(value, { stream: true }));
      }
      throw new StreamError(0, "the stream ended");
    } finally {
      clearTimeout(watchdog);
    }
  }

  (async () => {
    while (!stopped) {
      try {
        await connectOnce();
      } catch (err) {
        if (stopped) return;
        if (err && err.fatal) {
          stopped = true;
          if (onFatal) onFatal(err);
          return;
        }
        if (onDrop) onDrop(err);
      }
      if (stopped) return;
      const wait = delay + Math.random() * 200;
      delay = Math.min(delay * 2, MAX_DELAY_MS);
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  })();

  return {
    stop() {
      stopped = true;
      if (controller) controller.abort();
    },
    get lastId() {
      return last;
    },
  };
}

// The text/event-stream format: lines of "field: value", an empty line dispatches the event, ":" starts a comment.
export class EventParser {
  constructor(dispatch) {
    this.dispatch = dispatch;
    this.buffer = "";
    this.reset();
  }

  reset() {
    this.type = "";
    this.data = [];
    this.id = null;
  }

  push(text) {
    this.buffer += text;
    let newline;
    while ((newline = this.buffer.indexOf("\n")) >= 0) {
      let line = this.buffer.slice(0, newline);
      this.buffer = this.buffer.slice(newline + 1);
      if (line.endsWith("\r")) line = line.slice(0, -1);
      this.line(line);
    }
  }

  line(line) {
    if (line === "") {
      if (this.data.length) this.dispatch(this.type || "message", this.data.join("\n"), this.id);
      this.reset();
      return;
    }
    if (line.startsWith(":")) return; // a comment: the heartbeat
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.type = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.id = value;
    // "retry" and unknown fields: our own backoff decides
  }
}
