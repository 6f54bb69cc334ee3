// The demo chat page: one conversation per browser tab, through a demo session (never the chat-backend key).
// What the log shows comes from the conversation's event stream; the user's own message is shown as "sending"
// until the stream brings it back (matched by message_id), so nothing appears twice.

import { errorDetail, openStream } from "/static/sse.js";
import { clock, el, insertBySeq, parseJSON, randomId, stickToBottom } from "/static/ui.js";

const SESSION_KEY = "baton.demo.session";
// A reply to the rating question (workflows/views.py's rating_in): "4", "5/5", "3 stars".
const RATING = /^\s*([1-5])\s*(?:\/\s*5|of 5|stars?)?\s*[.!]?\s*$/i;

const log = document.getElementById("log");
const statusLine = document.getElementById("status");
const errorLine = document.getElementById("error");
const form = document.getElementById("compose");
const input = document.getElementById("message");

let session = null; // {session, conversation_id, started}
let stream = null;
let closed = false; // the conversation ended: the next message starts a new one (in a fresh session)
const seen = new Set(); // seqs shown

function save() {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
}

function showError(text) {
  errorLine.textContent = text;
  errorLine.hidden = !text;
}

async function newSession() {
  const response = await fetch("/demo/sessions", { method: "POST" });
  if (response.status !== 201) throw new Error(await errorDetail(response));
  const body = await response.json();
  session = { session: body.session, conversation_id: body.conversation_id, started: false };
  save();
}

function speaker(entry) {
  switch (entry.role) {
    case "user":
      return "You";
    case "ai":
      return "Assistant";
    case "external_agent":
      return `${entry.author} (assistant)`;
    case "live_agent":
      return `${entry.author} (support agent)`;
    default:
      return "Notice";
  }
}

function entryItem(entry, pending = false) {
  return el(
    "li",
    {
      class: `entry role-${entry.role}${pending ? " pending" : ""}`,
      dataset: { role: entry.role, messageId: entry.message_id, ...(pending ? {} : { seq: String(entry.seq) }) },
    },
    el(
      "div",
      { class: "meta" },
      el("span", { class: "who", text: speaker(entry) }),
      el("span", { class: "when", text: pending ? "sending…" : clock(entry.at) }),
    ),
    el("p", { class: "text", text: entry.text }),
  );
}

function addEntry(entry) {
  if (seen.has(entry.seq)) return;
  seen.add(entry.seq);
  stickToBottom(log, () => {
    for (const echo of log.querySelectorAll("li.pending")) {
      if (echo.dataset.messageId === entry.message_id) echo.remove();
    }
    insertBySeq(log, entryItem(entry), entry.seq);
  });
}

function describe(state) {
  switch (state.state) {
    case "ai":
      return "You're chatting with the assistant.";
    case "handoff_pending":
      if (state.position) return `Waiting for a person: you are number ${state.position} in the queue.`;
      return "Connecting you…";
    case "external_agent":
      return `You're chatting with ${state.owner || "a specialist assistant"}.`;
    case "live_agent":
      return `${state.owner || "A person"} is with you.`;
    case "closed":
      return "This conversation has ended. Write again to start a new one.";
    default:
      return "";
  }
}

function connect() {
  if (stream) return;
  stream = openStream({
    url: "/demo/events",
    headers: () => ({ Authorization: `Bearer ${session.session}` }),
    lastId: seen.size ? Math.max(...seen) : null,
    onOpen: () => showError(""),
    onEvent(type, data) {
      const value = parseJSON(data);
      if (!value) return;
      if (type === "entry") addEntry(value);
      else if (type === "state") {
        closed = value.state === "closed";
        statusLine.textContent = describe(value);
      }
    },
    onDrop(err) {
      if (err.status && err.status !== 404) statusLine.textContent = "Reconnecting…";
    },
    onFatal() {
      // The session is not valid here (e.g. the server's secret changed): start afresh.
      stream = null;
      restart().catch((err) => showError(`The chat is not available: ${err.message}`));
    },
  });
}

async function restart() {
  if (stream) stream.stop();
  stream = null;
  seen.clear();
  closed = false;
  log.replaceChildren();
  showError("");
  await newSession();
  statusLine.textContent = "Say hello to start a conversation.";
}

// Sends a message in the tab's conversation; `rating`: only as the answer to the rating question a close asked,
// and false is returned (nothing sent, nothing shown) when that question is not open.
async function send(text, rating = false) {
  const messageId = randomId("web-");
  const echo = entryItem({ role: "user", message_id: messageId, text }, true);
  stickToBottom(log, () => log.append(echo));
  let response;
  try {
    response = await fetch("/demo/messages", {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${session.session}` },
      body: JSON.stringify({ message_id: messageId, text, ...(rating ? { rating: true } : {}) }),
    });
  } catch {
    response = null;
  }
  if (rating && response && response.status === 409) {
    echo.remove();
    return false;
  }
  if (!response || response.status !== 202) {
    echo.remove();
    const why = response ? await errorDetail(response) : "the server cannot be reached";
    showError(`Your message was not sent: ${why}`);
    if (!input.value) input.value = text;
    return true;
  }
  showError("");
  if (!session.started) {
    session.started = true;
    save();
  }
  connect();
  return true;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = input.value.trim();
  if (!text) return;
  input.value = "";
  input.focus();
  await ready; // the tab's session, created on load
  // Closed by a person with a rating question still open: a rating is its answer (else a new conversation).
  if (closed && session && RATING.test(text) && (await send(text, true))) return;
  if (closed) session = null;
  if (!session) {
    try {
      await restart();
    } catch (err) {
      showError(`The chat is not available: ${err.message}`);
      input.value = text;
      return;
    }
  }
  send(text);
});

input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    form.requestSubmit();
  }
});

document.getElementById("new-conversation").addEventListener("click", async () => {
  try {
    await restart();
  } catch (err) {
    session = null;
    showError(`The chat is not available: ${err.message}`);
  }
  input.focus();
});

async function start() {
  session = parseJSON(sessionStorage.getItem(SESSION_KEY) || "null");
  try {
    if (!session || !session.session) await newSession();
  } catch (err) {
    showError(`The chat is not available: ${err.message}`);
    return;
  }
  if (session.started) {
    statusLine.textContent = "Loading the conversation…";
    connect();
  } else {
    statusLine.textContent = "Say hello to start a conversation.";
  }
}

const ready = start();
