// The agent console: sign in with a live agent's token (kept for this tab only), watch the waiting lists of one's
// queues live (the desk event stream), claim, and work several conversations at once, one tab each.

import { errorDetail, openStream } from "/static/sse.js";
import { clock, el, elapsed, insertBySeq, parseJSON, randomId, stickToBottom } from "/static/ui.js";

const TOKEN_KEY = "baton.console.token";
const OPEN_KEY = "baton.console.open";

const $ = (id) => document.getElementById(id);
const signedOutView = $("signed-out");
const deskView = $("desk");
const signInForm = $("sign-in");
const tokenInput = $("token");
const signInError = $("sign-in-error");
const deskError = $("desk-error");
const connection = $("connection");
const whoami = $("whoami");
const signOutButton = $("sign-out");
const queueSections = $("queue-sections");
const tabs = $("tabs");
const panels = $("panels");
const noConversation = $("no-conversation");
const statusSelect = $("status");
const loadLine = $("load");
const offersSection = $("offers-section");
const offersList = $("offers");
const teamList = $("team");
const teamEmpty = $("team-empty");
// How often the "Team" list is read again (GET /v1/desk/team): colleagues' status and load.
const TEAM_SECONDS = 5;

let token = null;
let me = null; // {agent_id, name, queues}
let stream = null;
let nextId = 0;
const queues = new Map(); // queue -> {section, list, empty, count, items: Map(conversation_id -> item)}
const open = new Map(); // conversation_id -> Conversation
let active = null;
let heartbeat = null;
let teamTimer = null;
const offers = new Map(); // offer_id -> {li, left, offer}

const uid = (prefix) => `${prefix}-${++nextId}`;

function show(node, text) {
  node.textContent = text || "";
  node.hidden = !text;
}

function path(conversationId, action) {
  return `/v1/desk/conversations/${encodeURIComponent(conversationId)}/${action}`;
}

class SignedOut extends Error {}

async function api(method, url, body) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.status === 401) {
    signOut("Your token is no longer accepted. Sign in again.");
    throw new SignedOut();
  }
  return response;
}

// ---- signing in and out ---------------------------------------------------------------------------------------

async function signIn(candidate) {
  let response;
  try {
    response = await fetch("/v1/desk/me", { headers: { Authorization: `Bearer ${candidate}` } });
  } catch {
    show(signInError, "The server cannot be reached. Try again in a moment.");
    return false;
  }
  if (!response.ok) {
    const why = response.status === 401 ? "That token was not accepted." : await errorDetail(response);
    show(signInError, `Sign-in failed: ${why}`);
    return false;
  }
  me = await response.json();
  token = candidate;
  sessionStorage.setItem(TOKEN_KEY, token);
  show(signInError, "");
  tokenInput.value = "";
  signedOutView.hidden = true;
  deskView.hidden = false;
  signOutButton.hidden = false;
  whoami.hidden = false;
  whoami.textContent = `${me.name} (${me.agent_id})`;
  for (const queue of me.queues) queueFor(queue);
  // Signing in is going online (push queues offer conversations to agents who are); the heartbeat keeps it so.
  setPresence("online");
  heartbeat = setInterval(() => {
    if (token && statusSelect.value !== "offline") setPresence(statusSelect.value, true);
  }, (me.heartbeat_seconds || 15) * 1000);
  loadTeam();
  teamTimer = setInterval(loadTeam, TEAM_SECONDS * 1000);
  connectDesk();
  for (const conversationId of storedOpen()) openConversation(conversationId, {}, false);
  return true;
}

function signOut(why) {
  if (token && !why) api("PUT", "/v1/desk/presence", { status: "offline" }).catch(() => {});
  if (heartbeat) clearInterval(heartbeat);
  heartbeat = null;
  if (teamTimer) clearInterval(teamTimer);
  teamTimer = null;
  teamList.replaceChildren();
  teamEmpty.hidden = false;
  for (const o of offers.values()) o.li.remove();
  offers.clear();
  offersSection.hidden = true;
  if (stream) stream.stop();
  stream = null;
  token = null;
  me = null;
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(OPEN_KEY);
  queues.clear();
  open.clear();
  active = null;
  queueSections.replaceChildren();
  tabs.replaceChildren();
  panels.replaceChildren();
  noConversation.hidden = false;
  show(deskError, "");
  connection.textContent = "";
  whoami.hidden = true;
  signOutButton.hidden = true;
  deskView.hidden = true;
  signedOutView.hidden = false;
  show(signInError, why || "");
  tokenInput.focus();
}

signInForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const candidate = tokenInput.value.trim();
  if (!candidate) {
    show(signInError, "Enter your agent token.");
    return;
  }
  const button = signInForm.querySelector("button");
  button.disabled = true;
  try {
    await signIn(candidate);
  } finally {
    button.disabled = false;
  }
});

signOutButton.addEventListener("click", () => signOut(""));

// ---- the desk stream ------------------------------------------------------------------------------------------

function connectDesk() {
  connection.textContent = "Connecting…";
  stream = openStream({
    url: "/v1/desk/events",
    headers: () => ({ Authorization: `Bearer ${token}` }),
    onOpen(reconnected) {
      connection.textContent = "Live";
      // The desk stream has no ids: after a drop, read what the open conversations said meanwhile.
      if (reconnected) for (const conversation of open.values()) conversation.load(conversation.lastSeq);
    },
    onDrop() {
      connection.textContent = "Reconnecting…";
    },
    onFatal() {
      signOut("Your token is no longer accepted. Sign in again.");
    },
    onEvent(type, data) {
      const value = parseJSON(data);
      if (!value) return;
      if (type === "waiting") renderWaiting(value.queue, value.waiting || []);
      else if (type === "offer") renderOffers(value.offers || []);
      else if (type === "presence") renderPresence(value);
      else if (type === "entry") onEntry(value);
      else if (type === "state") open.get(value.conversation_id)?.applyState(value);
    },
  });
}

function onEntry(entry) {
  const conversation = open.get(entry.conversation_id);
  if (conversation) conversation.addEntry(entry);
  if (entry.role !== "user") return;
  for (const queue of queues.values()) {
    const item = queue.items.get(entry.conversation_id);
    if (item) show(item.last, `Latest: ${entry.text}`);
  }
}

// ---- presence and offers --------------------------------------------------------------------------------------

async function setPresence(status, heartbeat = false) {
  let response;
  try {
    response = await api("PUT", "/v1/desk/presence", heartbeat ? { status, heartbeat } : { status });
  } catch (err) {
    if (!(err instanceof SignedOut)) show(deskError, "Your status could not be set: the server cannot be reached.");
    return;
  }
  if (!response.ok) {
    show(deskError, `Your status could not be set: ${await errorDetail(response)}`);
    return;
  }
  renderPresence(await response.json());
}

function renderPresence(presence) {
  if (!presence || !presence.status) return;
  statusSelect.value = presence.status;
  loadLine.textContent = `${presence.status[0].toUpperCase()}${presence.status.slice(1)}: ` +
    `${presence.load} of ${presence.capacity} conversations`;
}

statusSelect.addEventListener("change", () => setPresence(statusSelect.value));

// ---- the team: who else works these queues, their status and load -------------------------------------------

function capitalised(text) {
  return `${text[0].toUpperCase()}${text.slice(1)}`;
}

async function loadTeam() {
  let response;
  try {
    response = await api("GET", "/v1/desk/team");
  } catch {
    return; // signed out, or the server is away for a moment: the next round asks again
  }
  if (!response.ok || !token) return;
  const { agents } = await response.json();
  teamList.replaceChildren(
    ...agents.map((a) =>
      el(
        "li",
        { class: `teammate status-${a.status}`, dataset: { agent: a.agent_id } },
        el("span", { class: "name", text: a.name || a.agent_id }),
        el("span", { class: "teammate-load", text: `${capitalised(a.status)}, ${a.load} of ${a.capacity}` }),
      ),
    ),
  );
  teamEmpty.hidden = agents.length > 0;
}

function secondsLeft(expiresAt) {
  return Math.max(0, Math.round((Date.parse(expiresAt) - Date.now()) / 1000));
}

function renderOffers(rows) {
  const keep = new Set(rows.map((r) => r.offer_id));
  for (const [offerId, o] of offers) {
    if (!keep.has(offerId)) {
      o.li.remove();
      offers.delete(offerId);
    }
  }
  for (const row of rows) {
    if (offers.has(row.offer_id)) continue;
    const idId = uid("offer");
    const left = el("span", { class: "left" });
    const accept = el("button", { type: "button", class: "primary small", "aria-describedby": idId, text: "Accept" });
    const decline = el("button", { type: "button", class: "small", "aria-describedby": idId, text: "Decline" });
    const li = el(
      "li",
      { class: "waiting-item offer", dataset: { offer: row.offer_id } },
      el("div", { class: "line" }, el("span", { class: "cid", id: idId, text: row.conversation_id }),
        el("span", { class: "position", text: `from ${row.queue}` }), left),
      el("div", { class: "offer-actions" }, accept, decline),
      row.reason ? el("p", { class: "reason", text: `Reason: ${row.reason}` }) : "",
      row.summary ? el("p", { class: "summary", text: `Summary: ${row.summary}` }) : "",
    );
    const o = { li, left, offer: row };
    accept.addEventListener("click", () => answerOffer(o, "accept", accept));
    decline.addEventListener("click", () => answerOffer(o, "decline", decline));
    offers.set(row.offer_id, o);
    offersList.append(li);
  }
  tickOffers();
  offersSection.hidden = offers.size === 0;
}

function tickOffers() {
  for (const o of offers.values()) o.left.textContent = `${secondsLeft(o.offer.expires_at)} s left`;
}

setInterval(tickOffers, 1000);

async function answerOffer(o, action, button) {
  button.disabled = true;
  let response;
  try {
    response = await api("POST", `/v1/desk/offers/${encodeURIComponent(o.offer.offer_id)}/${action}`);
  } catch (err) {
    if (!(err instanceof SignedOut)) show(deskError, "The server cannot be reached.");
    button.disabled = false;
    return;
  }
  o.li.remove();
  offers.delete(o.offer.offer_id);
  offersSection.hidden = offers.size === 0;
  if (!response.ok) {
    show(deskError, `Could not ${action} the offer of ${o.offer.conversation_id}: ${await errorDetail(response)}`);
    return;
  }
  show(deskError, "");
  if (action === "accept") {
    openConversation(o.offer.conversation_id, { reason: o.offer.reason, summary: o.offer.summary }, true);
  }
}

// ---- waiting lists --------------------------------------------------------------------------------------------

function queueTitle(queue) {
  return me && queue === `agent:${me.agent_id}` ? "Transferred to you" : `Queue ${queue}`;
}

function queueFor(queue) {
  let found = queues.get(queue);
  if (found) return found;
  const headingId = uid("queue");
  const list = el("ul", { class: "waiting", role: "list", "aria-label": "Waiting" });
  const empty = el("p", { class: "empty", text: "Nobody is waiting." });
  const count = el("span", { class: "count", text: "0 waiting" });
  const section = el(
    "section",
    { class: "queue", "aria-labelledby": headingId },
    el("div", { class: "queue-head" }, el("h3", { id: headingId, text: queueTitle(queue) }), count),
    list,
    empty,
  );
  queueSections.append(section);
  found = { section, list, empty, count, items: new Map() };
  queues.set(queue, found);
  return found;
}

function waitingItem(row) {
  const idId = uid("waiting");
  const item = {
    position: el("span", { class: "position" }),
    waited: el("time", { class: "waited" }),
    reason: el("p", { class: "reason" }),
    summary: el("p", { class: "summary" }),
    last: el("p", { class: "latest", hidden: true }),
    row,
  };
  const claimButton = el("button", { type: "button", class: "primary small", "aria-describedby": idId, text: "Claim" });
  claimButton.addEventListener("click", () => claim(item.row, claimButton));
  item.li = el(
    "li",
    { class: "waiting-item", dataset: { conversation: row.conversation_id } },
    el(
      "div",
      { class: "line" },
      el("span", { class: "cid", id: idId, text: row.conversation_id }),
      item.position,
      el("span", { class: "since" }, "waiting ", item.waited),
    ),
    // Right under the first line, above what changes as the user writes (reason, summary, latest message): a new
    // "Latest" line must not move the button away from under the agent's pointer as they click.
    claimButton,
    item.reason,
    item.summary,
    item.last,
  );
  return item;
}

function renderWaiting(queue, rows) {
  const q = queueFor(queue);
  const keep = new Set(rows.map((r) => r.conversation_id));
  for (const [conversationId, item] of q.items) {
    if (!keep.has(conversationId)) {
      item.li.remove();
      q.items.delete(conversationId);
    }
  }
  rows.forEach((row, index) => {
    let item = q.items.get(row.conversation_id);
    if (!item) {
      item = waitingItem(row);
      q.items.set(row.conversation_id, item);
    }
    item.row = row;
    item.position.textContent = `No. ${row.position}`;
    item.waited.dataset.since = row.waiting_since || "";
    item.waited.textContent = row.waiting_since ? elapsed(row.waiting_since) : "";
    if (row.waiting_since) item.waited.setAttribute("datetime", row.waiting_since);
    show(item.reason, row.reason ? `Reason: ${row.reason}` : "");
    show(item.summary, row.summary ? `Summary: ${row.summary}` : "");
    const at = q.list.children[index];
    if (at !== item.li) q.list.insertBefore(item.li, at || null);
  });
  q.empty.hidden = rows.length > 0;
  q.count.textContent = `${rows.length} waiting`;
}

setInterval(() => {
  for (const time of document.querySelectorAll("time.waited[data-since]")) {
    if (time.dataset.since) time.textContent = elapsed(time.dataset.since);
  }
}, 1000);

async function claim(row, button) {
  button.disabled = true;
  let response;
  try {
    response = await api("POST", path(row.conversation_id, "claim"));
  } catch (err) {
    if (!(err instanceof SignedOut)) show(deskError, `Could not claim ${row.conversation_id}: the server cannot be reached.`);
    button.disabled = false;
    return;
  }
  if (response.ok) {
    show(deskError, "");
    openConversation(row.conversation_id, { reason: row.reason, summary: row.summary }, true);
    return;
  }
  show(deskError, `Could not claim ${row.conversation_id}: ${await errorDetail(response)}`);
  button.disabled = false;
}

// ---- open conversations ---------------------------------------------------------------------------------------

function storedOpen() {
  return parseJSON(sessionStorage.getItem(OPEN_KEY) || "[]") || [];
}

function storeOpen() {
  sessionStorage.setItem(OPEN_KEY, JSON.stringify([...open.keys()]));
}

function openConversation(conversationId, about, focus) {
  let conversation = open.get(conversationId);
  if (!conversation) {
    conversation = new Conversation(conversationId, about);
    open.set(conversationId, conversation);
    storeOpen();
    conversation.load(0);
  }
  if (focus || !active) select(conversationId);
}

function select(conversationId) {
  active = conversationId;
  for (const [id, conversation] of open) {
    const on = id === conversationId;
    conversation.tab.setAttribute("aria-selected", String(on));
    conversation.tab.tabIndex = on ? 0 : -1;
    conversation.panel.hidden = !on;
    if (on) conversation.markRead();
  }
  noConversation.hidden = open.size > 0;
}

function dismiss(conversationId) {
  const conversation = open.get(conversationId);
  if (!conversation) return;
  conversation.tab.remove();
  conversation.panel.remove();
  open.delete(conversationId);
  storeOpen();
  if (active === conversationId) {
    active = null;
    const next = open.keys().next();
    if (!next.done) select(next.value);
  }
  noConversation.hidden = open.size > 0;
}

tabs.addEventListener("keydown", (event) => {
  if (event.key !== "ArrowRight" && event.key !== "ArrowLeft") return;
  const ids = [...open.keys()];
  const at = ids.indexOf(active);
  if (at < 0) return;
  const next = ids[(at + (event.key === "ArrowRight" ? 1 : ids.length - 1)) % ids.length];
  select(next);
  open.get(next).tab.focus();
});

function speaker(entry) {
  switch (entry.role) {
    case "user":
      return "Customer";
    case "ai":
      return "Assistant";
    case "external_agent":
      return `${entry.author} (external assistant)`;
    case "live_agent":
      return me && entry.author === me.agent_id ? `You (${entry.author})` : entry.author;
    default:
      return "Notice";
  }
}

function flatten(value, prefix, out) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    for (const [key, inner] of Object.entries(value)) flatten(inner, prefix ? `${prefix}.${key}` : key, out);
  } else if (prefix) {
    out.push([prefix, typeof value === "string" ? value : JSON.stringify(value)]);
  }
  return out;
}

function describe(state, owner, queue) {
  switch (state) {
    case "live_agent":
      return me && owner === me.agent_id ? "With you" : `With ${owner}`;
    case "handoff_pending":
      return queue ? `Waiting in ${queue}` : "Waiting to be routed";
    case "ai":
      return "With the assistant";
    case "external_agent":
      return `With ${owner} (external assistant)`;
    case "closed":
      return "Closed";
    default:
      return state || "";
  }
}

class Conversation {
  constructor(conversationId, about) {
    this.id = conversationId;
    this.about = about || {};
    this.seen = new Set();
    this.lastSeq = 0;
    this.mine = true;
    const tabId = uid("tab");
    const panelId = uid("panel");
    const contextHeading = uid("context");

    this.unread = el("span", { class: "unread", hidden: true, text: "new" });
    this.tab = el(
      "button",
      { type: "button", role: "tab", id: tabId, "aria-controls": panelId, "aria-selected": "false", class: "tab" },
      el("span", { text: conversationId }),
      this.unread,
    );
    this.tab.addEventListener("click", () => select(conversationId));
    tabs.append(this.tab);

    this.stateLine = el("p", { class: "state", text: "Loading…" });
    this.notice = el("p", { class: "notice", role: "status" });
    this.error = el("p", { class: "error", role: "alert", hidden: true });
    this.dismissButton = el("button", { type: "button", class: "quiet", hidden: true, text: "Dismiss" });
    this.dismissButton.addEventListener("click", () => dismiss(conversationId));

    this.contextList = el("dl", { class: "context-values" });
    this.withheldList = el("ul", { class: "withheld" });
    this.aboutList = el("div", { class: "about" });
    const context = el(
      "section",
      { class: "context", "aria-labelledby": contextHeading },
      el("h3", { id: contextHeading, text: "Context" }),
      this.aboutList,
      el("h4", { text: "Shared with you" }),
      this.contextList,
      el("h4", { text: "Withheld" }),
      this.withheldList,
    );

    this.log = el("ol", { class: "log", role: "log", "aria-label": "Conversation", tabindex: "0" });

    const replyId = uid("reply");
    this.replyBox = el("textarea", {
      id: replyId, rows: "3", maxlength: "8000", autocomplete: "off",
      placeholder: "Reply to the customer (Enter sends, Shift+Enter for a new line)",
    });
    this.sendButton = el("button", { type: "submit", class: "primary", text: "Send" });
    this.replyForm = el(
      "form",
      { class: "compose", novalidate: true },
      el("label", { for: replyId, class: "visually-hidden", text: "Reply" }),
      this.replyBox,
      this.sendButton,
    );
    this.replyForm.addEventListener("submit", (event) => {
      event.preventDefault();
      this.reply();
    });
    this.replyBox.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.replyForm.requestSubmit();
      }
    });

    const kindId = uid("kind");
    const targetId = uid("target");
    const queueOptions = uid("queues");
    this.kind = el(
      "select",
      { id: kindId },
      el("option", { value: "queue", text: "queue" }),
      el("option", { value: "agent", text: "agent" }),
    );
    this.target = el("input", { id: targetId, type: "text", list: queueOptions, autocomplete: "off", spellcheck: "false" });
    this.transferButton = el("button", { type: "submit", text: "Transfer" });
    const queueList = el("datalist", { id: queueOptions });
    for (const queue of me.queues.filter((q) => !q.startsWith("agent:"))) queueList.append(el("option", { value: queue }));
    this.transferForm = el(
      "form",
      { class: "transfer", novalidate: true },
      el("label", { for: kindId, text: "Transfer to a" }),
      this.kind,
      el("label", { for: targetId, class: "visually-hidden", text: "Transfer target" }),
      this.target,
      queueList,
      this.transferButton,
    );
    this.kind.addEventListener("change", () => {
      this.target.setAttribute("list", this.kind.value === "queue" ? queueOptions : "");
      this.target.placeholder = this.kind.value === "queue" ? "queue name" : "agent id";
    });
    this.target.placeholder = "queue name";
    this.transferForm.addEventListener("submit", (event) => {
      event.preventDefault();
      this.transfer();
    });

    // The wrap-up code release and close send (when the config lists codes).
    const wrapId = uid("wrap");
    this.wrapUp = el("select", { id: wrapId });
    this.wrapUp.append(el("option", { value: "", text: "(none)" }));
    for (const code of me.wrap_up_codes || []) this.wrapUp.append(el("option", { value: code, text: code }));
    const wrapUpField = (me.wrap_up_codes || []).length
      ? el("span", { class: "wrap-up" }, el("label", { for: wrapId, text: "Wrap-up code" }), this.wrapUp)
      : "";
    const ending = () => (this.wrapUp.value ? { wrap_up: this.wrapUp.value } : undefined);
    this.releaseButton = el("button", { type: "button", text: "Release" });
    this.releaseButton.addEventListener("click", () => this.command("release", "Released to the assistant.", ending()));
    this.closeButton = el("button", { type: "button", class: "danger", text: "Close" });
    this.closeButton.addEventListener("click", () => this.command("close", "You closed the conversation.", ending()));

    this.panel = el(
      "section",
      { class: "panel", role: "tabpanel", id: panelId, "aria-labelledby": tabId, hidden: true },
      el(
        "div",
        { class: "panel-head" },
        el("h2", { text: conversationId }),
        this.stateLine,
        this.dismissButton,
      ),
      this.notice,
      this.error,
      el(
        "div",
        { class: "panel-body" },
        context,
        el(
          "div",
          { class: "talk" },
          this.log,
          this.replyForm,
          el("div", { class: "actions" }, this.transferForm, wrapUpField, this.releaseButton, this.closeButton),
        ),
      ),
    );
    panels.append(this.panel);
    this.renderAbout();
  }

  renderAbout() {
    const lines = [];
    if (this.about.reason) lines.push(el("p", { text: `Reason: ${this.about.reason}` }));
    if (this.about.summary) lines.push(el("p", { class: "summary", text: `Summary: ${this.about.summary}` }));
    this.aboutList.replaceChildren(...lines);
  }

  async load(after) {
    let response;
    try {
      response = await api("GET", `${path(this.id, "transcript")}?after=${after}`);
    } catch (err) {
      if (!(err instanceof SignedOut)) show(this.error, "The server cannot be reached; retrying when the stream is back.");
      return;
    }
    if (response.status === 403 || response.status === 404 || response.status === 409) {
      this.setMine(false, `You no longer have this conversation (${await errorDetail(response)}).`);
      return;
    }
    if (!response.ok) {
      show(this.error, `Could not load the conversation: ${await errorDetail(response)}`);
      return;
    }
    show(this.error, "");
    const body = await response.json();
    if ((body.reason && !this.about.reason) || (body.summary && body.summary !== this.about.summary)) {
      this.about.reason = this.about.reason || body.reason;
      this.about.summary = body.summary || this.about.summary;
      this.renderAbout();
    }
    this.renderContext(body.context, body.withheld || []);
    for (const entry of body.entries) this.addEntry(entry);
    this.applyState(body);
  }

  renderContext(context, withheld) {
    const pairs = flatten(context || {}, "", []);
    if (pairs.length) {
      this.contextList.replaceChildren(
        ...pairs.flatMap(([key, value]) => [el("dt", { text: key }), el("dd", { text: value })]),
      );
    } else {
      this.contextList.replaceChildren(el("p", { class: "empty", text: "Nothing shared." }));
    }
    if (withheld.length) {
      this.withheldList.replaceChildren(
        ...withheld.map((w) =>
          el("li", {}, el("code", { text: w.path }), ` ${w.action}: ${w.reason}`),
        ),
      );
    } else {
      this.withheldList.replaceChildren(el("li", { class: "empty", text: "Nothing withheld." }));
    }
  }

  addEntry(entry) {
    if (this.seen.has(entry.seq)) return;
    this.seen.add(entry.seq);
    this.lastSeq = Math.max(this.lastSeq, entry.seq);
    const item = el(
      "li",
      {
        class: `entry role-${entry.role}`,
        dataset: { seq: String(entry.seq), role: entry.role, messageId: entry.message_id },
      },
      el(
        "div",
        { class: "meta" },
        el("span", { class: "who", text: speaker(entry) }),
        el("span", { class: "when", text: clock(entry.at) }),
      ),
      el("p", { class: "text", text: entry.text }),
    );
    stickToBottom(this.log, () => {
      for (const echo of this.log.querySelectorAll("li.pending")) {
        if (echo.dataset.messageId === entry.message_id) echo.remove();
      }
      insertBySeq(this.log, item, entry.seq);
    });
    if (entry.role === "user" && active !== this.id) this.unread.hidden = false;
  }

  markRead() {
    this.unread.hidden = true;
  }

  applyState({ state, owner, queue }) {
    if (!state) return;
    this.stateLine.textContent = describe(state, owner, queue);
    const mine = state === "live_agent" && me && owner === me.agent_id;
    if (mine) {
      this.setMine(true, "");
      return;
    }
    const why = {
      closed: "This conversation is closed.",
      ai: "The assistant has this conversation now.",
      handoff_pending: `Transferred: it waits${queue ? ` in ${queue}` : ""}.`,
      live_agent: `${owner} has this conversation now.`,
      external_agent: `${owner} (an external assistant) has this conversation now.`,
    }[state];
    this.setMine(false, why || "You no longer have this conversation.");
  }

  setMine(mine, why) {
    this.mine = mine;
    for (const control of [this.replyBox, this.sendButton, this.kind, this.target, this.transferButton,
      this.releaseButton, this.closeButton]) {
      control.disabled = !mine;
    }
    this.dismissButton.hidden = mine;
    this.panel.classList.toggle("lost", !mine);
    this.notice.textContent = why || "";
  }

  async reply() {
    const text = this.replyBox.value.trim();
    if (!text || !this.mine) return;
    const messageId = randomId("desk-");
    const echo = el(
      "li",
      { class: "entry role-live_agent pending", dataset: { role: "live_agent", messageId } },
      el("div", { class: "meta" }, el("span", { class: "who", text: `You (${me.agent_id})` }),
        el("span", { class: "when", text: "sending…" })),
      el("p", { class: "text", text }),
    );
    this.replyBox.value = "";
    stickToBottom(this.log, () => this.log.append(echo));
    let response;
    try {
      response = await api("POST", path(this.id, "messages"), { message_id: messageId, text });
    } catch (err) {
      response = null;
      if (err instanceof SignedOut) return;
    }
    if (response && response.status === 202) {
      show(this.error, "");
      return;
    }
    echo.remove();
    if (!this.replyBox.value) this.replyBox.value = text;
    show(this.error, `Not sent: ${response ? await errorDetail(response) : "the server cannot be reached"}`);
  }

  async command(action, done, body) {
    let response;
    try {
      response = await api("POST", path(this.id, action), body);
    } catch (err) {
      if (!(err instanceof SignedOut)) show(this.error, "The server cannot be reached.");
      return false;
    }
    if (!response.ok) {
      show(this.error, `${action[0].toUpperCase()}${action.slice(1)} failed: ${await errorDetail(response)}`);
      return false;
    }
    show(this.error, "");
    const result = await response.json();
    // What was done, then where the conversation is now: the same words whether the desk stream's state event
    // arrived before this answer or comes after it.
    this.applyState({ state: result.state, owner: result.owner, queue: null });
    this.notice.textContent = `${done} ${this.notice.textContent}`.trim();
    return true;
  }

  async transfer() {
    const target = this.target.value.trim();
    if (!target) {
      show(this.error, "Name a queue or an agent to transfer to.");
      return;
    }
    const body = this.kind.value === "queue" ? { queue: target } : { agent_id: target };
    if (await this.command("transfer", `Transferred to ${this.kind.value} ${target}.`, body)) this.target.value = "";
  }
}

// ---- start ----------------------------------------------------------------------------------------------------

const stored = sessionStorage.getItem(TOKEN_KEY);
if (stored) {
  signIn(stored).then((ok) => {
    if (!ok) sessionStorage.removeItem(TOKEN_KEY);
  });
} else {
  tokenInput.focus();
}
