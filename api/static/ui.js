// Small helpers shared by the chat page and the console. Every text goes in as text (textContent), never as HTML.

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function randomId(prefix) {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function clock(at) {
  const date = new Date(at);
  if (Number.isNaN(date.getTime())) return "";
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// "0:42", "12:05", "1:02:03": how long since `since`.
export function elapsed(since, now = Date.now()) {
  const seconds = Math.max(0, Math.floor((now - new Date(since).getTime()) / 1000));
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = String(seconds % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

export function parseJSON(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

// Keeps a log scrolled to its newest entry, unless the reader scrolled up to read something older.
export function stickToBottom(container, change) {
  const atBottom = container.scrollHeight - container.scrollTop - container.clientHeight < 40;
  change();
  if (atBottom) container.scrollTop = container.scrollHeight;
}

// Insert `item` among `list`'s children ordered by data-seq (items without a seq, pending echoes, stay last).
export function insertBySeq(list, item, seq) {
  for (const child of list.children) {
    const other = child.dataset.seq === undefined ? Infinity : Number(child.dataset.seq);
    if (other > seq) {
      list.insertBefore(item, child);
      return;
    }
  }
  list.append(item);
}
