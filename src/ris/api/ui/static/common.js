// What every console page shares: calling the API, polling, formatting, building elements.
// The key, when the server needs one, travels in the HttpOnly cookie the login set: this
// script never sees it.

export class APIError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// A JSON request to the public API; errors become APIError with the server's code.
export async function api(path, { method = "GET", body, headers = {}, signal } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers }, signal, credentials: "same-origin" };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  return (await request(path, init)).json();
}

// The server did not answer at all: fetch's own error (a TypeError, "Failed to fetch" in one
// browser, other words in others), told apart from a fault of the page's own script.
export class Unreachable extends Error {
  constructor() {
    super("the server did not answer (stopped, restarting, or the network is down)");
  }
}

// fetch, then `checked`: a response that is not a success throws, as does no answer.
export async function request(path, init) {
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw e.name === "TypeError" ? new Unreachable() : e; // an abort stays an AbortError
  }
  return checked(resp);
}

// A response that is not a success becomes an APIError; a 401 (the key cookie is gone, or was
// never set) sends the page to the login form, which brings the person back here.
export async function checked(resp) {
  if (resp.status === 401) {
    location.assign("/ui/login?next=" + encodeURIComponent(location.pathname));
  }
  if (!resp.ok) throw await errorOf(resp);
  return resp;
}

// The server's message is for the person; its code is for machines (a data-code attribute).
export async function errorOf(resp) {
  try {
    const e = (await resp.json()).error;
    return new APIError(resp.status, e.code, e.message);
  } catch {
    return new APIError(resp.status, "http_" + resp.status, `the server answered HTTP ${resp.status}`);
  }
}

// /ready's body, whether every lane is ready (200) or not yet (503): {ready, lanes}.
export async function readiness() {
  let resp;
  try {
    resp = await fetch("/ready", { headers: { Accept: "application/json" }, credentials: "same-origin" });
  } catch {
    throw new Unreachable();
  }
  if (resp.status !== 503) await checked(resp); // a 401 goes to the login form
  return resp.json();
}

// An error shown in `node`: its words, its state for the style, its code for machines.
export function showError(node, e) {
  node.textContent = e.message;
  node.dataset.state = "error";
  if (e.code) node.dataset.code = e.code;
}

// Server-sent events from a fetch response (EventSource cannot POST): {event, data} objects.
export async function* sse(resp) {
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let event = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      yield { event, data: data ? JSON.parse(data) : null };
    }
  }
}

// Calls fn about every `ms` while the page is visible (a hidden tab costs the server nothing),
// never two at once; the connection badge says whether the last call worked (fn may return
// the badge's words). While calls fail, the page's figures are marked stale (dimmed, with the
// time of the last answer), unless `figures` is false (a page with no live figures).
export function poll(fn, ms, { figures = true } = {}) {
  let timer = null;
  let running = false;
  let lastAnswer = null;
  const conn = document.getElementById("conn");
  async function tick() {
    timer = null;
    if (document.hidden || running) return;
    running = true;
    try {
      const said = await fn();
      lastAnswer = new Date();
      delete document.body.dataset.stale;
      if (conn) { conn.textContent = said ?? "live"; conn.dataset.ok = "1"; }
    } catch (e) {
      const since = lastAnswer ? `; figures from ${lastAnswer.toLocaleTimeString()}` : "";
      if (figures) document.body.dataset.stale = "1";
      if (conn) { conn.textContent = `no answer: ${e.message}${figures ? since : ""}`; conn.dataset.ok = "0"; }
    } finally {
      running = false;
      if (!document.hidden) timer = setTimeout(tick, ms);
    }
  }
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && timer === null && !running) tick();
  });
  tick();
}

// The person's place across a re-render: the focused element and the open <details> are found
// again by their data-key in the new elements (a poll that rebuilt a table every second took a
// keyboard user's focus with it, and closed a list they had opened).
export function keepPlace(container, render) {
  const active = document.activeElement;
  const focused = active && container.contains(active) ? active.dataset.key : undefined;
  const open = [...container.querySelectorAll("details[open][data-key]")].map((d) => d.dataset.key);
  render();
  for (const key of open) container.querySelector(`details[data-key="${CSS.escape(key)}"]`)?.setAttribute("open", "");
  if (focused) container.querySelector(`[data-key="${CSS.escape(focused)}"]`)?.focus();
}

// An element with attributes and children (strings become text: nothing is parsed as HTML).
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

// How a task ended, said once: the state, then the server's message unless the message already
// says it ("cancelled by the client", not "cancelled: cancelled: cancelled by the client"). The
// machine-readable code stays on the element that shows it (data-code), not in the sentence.
export function outcomeText(state, error) {
  const message = error && (error.message || error.code);
  if (!message) return state;
  return message.toLowerCase().startsWith(state) ? message : `${state}: ${message}`;
}

export const fmt = {
  num(x, digits = 1) { return x === null || x === undefined ? "–" : Number(x).toFixed(digits); },
  secs(x) {
    if (x === null || x === undefined) return "–";
    if (x < 1) return (x * 1000).toFixed(0) + " ms";
    if (x < 120) return x.toFixed(1) + " s";
    if (x < 7200) return (x / 60).toFixed(1) + " min";
    return (x / 3600).toFixed(1) + " h";
  },
  bytes(x) {
    if (x === null || x === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (x >= 1024 && i < units.length - 1) { x /= 1024; i++; }
    return x.toFixed(i ? 1 : 0) + " " + units[i];
  },
  list(xs) { return xs && xs.length ? xs.join(", ") : "–"; },
};
