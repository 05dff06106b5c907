// Overview: one card per lane, refreshed from /api/console/state about once a second.
import { api, el, fmt, poll } from "./common.js";
import { COLORS, TimeChart } from "./charts.js";

const SPAN_S = 900; // the 15 minutes the server keeps
const charts = {}; // lane -> {latency, throughput}
const lastState = {}; // lane -> last state shown (for the events list)
const cpuChart = new TimeChart(document.getElementById("cpu-chart"), { span: SPAN_S, max: 100 });

for (const card of document.querySelectorAll(".card[data-lane]")) {
  const lane = card.dataset.lane;
  charts[lane] = {
    latency: new TimeChart(card.querySelector('[data-chart="latency"]'), { span: SPAN_S }),
    throughput: new TimeChart(card.querySelector('[data-chart="throughput"]'), { span: SPAN_S }),
  };
}

// The lane's figures are the server's, over everyone's tasks (a user's own task lists would
// read a lane busy with others' images as idle): image steps/s, the TTS real-time factor.
function throughput(lane, s) {
  if (lane === "image") return { value: s.steps_per_s, unit: "steps/s" };
  if (lane === "llm") return { value: s.outputs_per_s, unit: "tokens/s" };
  return { value: s.outputs_per_s, unit: lane === "tts" ? "audio chunks/s" : "outputs/s" };
}

// Every worker of the lane: a Ray actor's pid is on its node, named by address; a lane with
// replicas lists each with its state.
function workersText(s) {
  const all = s.workers.length ? s.workers : [s.worker];
  const one = (w) => (w.pid ? `pid ${w.pid}` : "no process") + (w.node_ip ? ` on ${w.node_ip}` : "") +
    (all.length > 1 ? ` (${w.state})` : "");
  return all.map(one).join(", ");
}

function facts(s, tp, rtf) {
  const w = s.worker;
  const mem = w.memory_limit_bytes ? `${fmt.bytes(w.rss_bytes)} of ${fmt.bytes(w.memory_limit_bytes)}` : fmt.bytes(w.rss_bytes);
  const rows = [
    ["Worker", workersText(s), "pid"],
    ["Uptime", fmt.secs(s.uptime_s), "uptime"],
    ["Restarts", w.restarts, "restarts"],
    ["Device", s.device, "device"],
    ["Cores", s.cores ? s.cores.join(", ") : "any", "cores"],
    ["Threads", w.threads ?? s.threads_configured ?? "auto", "threads"],
    ["Nice", s.nice, "nice"],
    ["GPU", s.gpu === null ? "none" : `#${s.gpu}` + (w.gpu_memory_bytes ? `, ${fmt.bytes(w.gpu_memory_bytes)}` : ""), "gpu"],
    ["Queued", `${s.queue_depth} of ${s.max_queue}`, "queued"],
    ["Running", `${s.running} of ${s.slots} slots`, "running"],
    ["Done", `${s.succeeded} ok, ${s.failed} failed, ${s.cancelled} cancelled`, "done"],
    ["429s", s.rejected, "rejected"],
    ["Latency", `p50 ${fmt.secs(s.latency_s.p50)}, p99 ${fmt.secs(s.latency_s.p99)}`, "latency"],
    ["Throughput", `${fmt.num(tp.value)} ${tp.unit}`, "throughput"],
    ...(rtf !== null ? [["Real-time factor", `${fmt.num(rtf, 2)} (synthesis s per speech s)`, "rtf"]] : []),
    ["CPU", w.cpu_percent === null ? "–" : `${fmt.num(w.cpu_percent)} %`, "cpu"],
    ["Memory", mem, "memory"],
  ];
  // Work-conserving isolation: idle cores lent to a lane that has work, and taken back.
  const lent = Object.entries(s.lent_cores || {});
  if (lent.length) rows.push(["Lent cores", lent.map(([c, to]) => `${c} to ${to}`).join(", "), "lent"]);
  if (w.borrowed_cores !== null && w.borrowed_cores !== undefined) {
    rows.push(["Borrowed cores", w.borrowed_cores.length ? `${w.borrowed_cores.join(", ")} (${w.threads_now} threads now)` : "none now", "borrowed"]);
  }
  const share = s.min_cpu_share;
  if (share) rows.push(["CPU share", `at least ${fmt.num(share.share * 100)} % of a busy core (${share.mechanism === "nice" ? `nice ${share.nice}` : `cgroup cpu.shares ${share.weight}${share.policy === "idle" ? ", SCHED_IDLE inside" : ""}`})`, "cpu-share"]);
  if (s.yield_policy) rows.push(["Yields", s.yield_policy === "none" ? "never (policy none)" : `to real-time lanes (${s.yield_policy})`, "yields"]);
  if (w.error) rows.push(["Error", w.error, "error"]);
  return rows.flatMap(([k, v, f]) => [el("dt", {}, k), el("dd", { dataset: { field: f } }, String(v))]);
}

function logEvent(text, when = new Date()) {
  const list = document.getElementById("events");
  list.prepend(el("li", {}, `${when.toLocaleTimeString()} ${text}`));
  while (list.children.length > 50) list.lastChild.remove();
}

let lastModelEvent = null; // time of the newest model event shown (null: none yet)

function logModelEvents(events) {
  // The server keeps the recent loads and unloads; each is shown once, in order.
  for (const e of events) {
    if (lastModelEvent !== null && e.time <= lastModelEvent) continue;
    const what = e.event === "loaded" ? `loaded in ${fmt.num(e.load_s, 2)} s` : e.event === "evicted" ? "evicted (memory needed)" : "unloaded (keep_alive ended)";
    logEvent(`${e.lane}: model ${e.model} ${what}`, new Date(e.time * 1000));
  }
  if (events.length) lastModelEvent = Math.max(lastModelEvent ?? 0, ...events.map((e) => e.time));
}

async function refresh() {
  const state = await api("/api/console/state");
  const now = state.time;
  for (const [lane, s] of Object.entries(state.lanes)) {
    const card = document.getElementById("lane-" + lane);
    if (!card) continue;
    const badge = card.querySelector('[data-field="state"]');
    const shown = s.enabled ? s.state : "disabled";
    badge.textContent = shown;
    badge.dataset.state = shown;
    card.dataset.state = shown;
    if (lastState[lane] !== undefined && lastState[lane] !== shown) logEvent(`${lane}: ${lastState[lane]} → ${shown}`);
    lastState[lane] = shown;
    const tp = throughput(lane, s);
    card.querySelector(".facts").replaceChildren(...facts(s, tp, s.real_time_factor));
    card.querySelector('[data-field="throughput-label"]').textContent = tp.unit + (lane === "llm" ? " (shaded: image lane yielding)" : "");
    const c = charts[lane];
    c.latency.push(now, [s.latency_s.p50, s.latency_s.p99]);
    c.throughput.push(now, [tp.value]);
    if (lane === "llm") c.throughput.bands = state.yields.map((y) => [y.start, y.end]);
    c.latency.draw(now);
    c.throughput.draw(now);
  }
  logModelEvents(state.model_events);
  cpuChart.push(now, state.cpu_cores);
  cpuChart.draw(now);
  const legend = document.getElementById("cpu-legend");
  legend.replaceChildren(...state.cpu_cores.map((v, i) =>
    el("span", { class: "key", dataset: { color: String(i % COLORS.length) } }, `core ${i}: ${fmt.num(v, 0)} %`)));
}

// The charts' last 15 minutes, kept by the server: drawn before the first tick, so a page
// opened now shows what happened before it (a failure leaves them to start empty).
async function loadHistory() {
  const h = await api("/api/console/history");
  for (const [name, points] of Object.entries(h.series)) {
    const [lane, kind] = name.split(".");
    const chart = name === "cpu" ? cpuChart : charts[lane] && charts[lane][kind];
    if (!chart) continue;
    for (const [t, values] of points) chart.push(t, values);
    chart.draw(h.time);
  }
}

loadHistory().catch(() => {}).finally(() => poll(refresh, 1000));
