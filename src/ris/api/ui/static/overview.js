// Overview: one card per lane, refreshed from /api/console/state about once a second.
import { api, el, fmt, poll } from "./common.js";
import { COLORS, TimeChart } from "./charts.js";

const SPAN_S = 300;
const charts = {}; // lane -> {latency, throughput}
const lastState = {}; // lane -> last state shown (for the events list)
const lastSteps = {}; // image task id -> steps done at the previous tick
let lastTick = null;
const cpuChart = new TimeChart(document.getElementById("cpu-chart"), { span: SPAN_S, max: 100 });

for (const card of document.querySelectorAll(".card[data-lane]")) {
  const lane = card.dataset.lane;
  charts[lane] = {
    latency: new TimeChart(card.querySelector('[data-chart="latency"]'), { span: SPAN_S }),
    throughput: new TimeChart(card.querySelector('[data-chart="throughput"]'), { span: SPAN_S }),
  };
}

function throughput(lane, s, state, dt) {
  if (lane === "image") {
    // Steps per second: how far the running image tasks advanced since the last tick.
    let steps = 0;
    const seen = {};
    for (const t of state.tasks.running) {
      if (t.lane !== lane) continue;
      seen[t.task_id] = t.progress_done;
      steps += Math.max(0, t.progress_done - (lastSteps[t.task_id] ?? t.progress_done));
    }
    for (const k of Object.keys(lastSteps)) delete lastSteps[k];
    Object.assign(lastSteps, seen);
    return { value: dt ? steps / dt : 0, unit: "steps/s" };
  }
  return { value: s.outputs_per_s, unit: lane === "llm" ? "tokens/s" : lane === "tts" ? "audio chunks/s" : "outputs/s" };
}

function facts(s, tp) {
  const w = s.worker;
  const mem = w.memory_limit_bytes ? `${fmt.bytes(w.rss_bytes)} of ${fmt.bytes(w.memory_limit_bytes)}` : fmt.bytes(w.rss_bytes);
  const rows = [
    ["Worker", w.pid ? `pid ${w.pid}` : "no process", "pid"],
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
    ["CPU", w.cpu_percent === null ? "–" : `${fmt.num(w.cpu_percent)} %`, "cpu"],
    ["Memory", mem, "memory"],
  ];
  if (s.yield_policy) rows.push(["Yields", s.yield_policy === "none" ? "never (policy none)" : `to real-time lanes (${s.yield_policy})`, "yields"]);
  if (w.error) rows.push(["Error", w.error, "error"]);
  return rows.flatMap(([k, v, f]) => [el("dt", {}, k), el("dd", { dataset: { field: f } }, String(v))]);
}

function logEvent(text) {
  const list = document.getElementById("events");
  list.prepend(el("li", {}, `${new Date().toLocaleTimeString()} ${text}`));
  while (list.children.length > 50) list.lastChild.remove();
}

async function refresh() {
  const state = await api("/api/console/state");
  const now = state.time;
  const dt = lastTick === null ? 0 : now - lastTick;
  lastTick = now;
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
    const tp = throughput(lane, s, state, dt);
    card.querySelector(".facts").replaceChildren(...facts(s, tp));
    card.querySelector('[data-field="throughput-label"]').textContent = tp.unit + (lane === "llm" ? " (shaded: image lane yielding)" : "");
    const c = charts[lane];
    c.latency.push(now, [s.latency_s.p50, s.latency_s.p99]);
    c.throughput.push(now, [tp.value]);
    if (lane === "llm") c.throughput.bands = state.yields.map((y) => [y.start, y.end]);
    c.latency.draw(now);
    c.throughput.draw(now);
  }
  cpuChart.push(now, state.cpu_cores);
  cpuChart.draw(now);
  const legend = document.getElementById("cpu-legend");
  legend.replaceChildren(...state.cpu_cores.map((v, i) =>
    el("span", { class: "key", dataset: { color: String(i % COLORS.length) } }, `core ${i}: ${fmt.num(v, 0)} %`)));
}

poll(refresh, 1000);
