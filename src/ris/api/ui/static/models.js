// Models: what each lane is configured with, loaded or not, and its voices.
import { api, el, fmt, keepPlace, poll, readiness } from "./common.js";

// A long voice list (espeak-ng has over a hundred) folds away behind its count; names that
// differ only in case ("en-US", "en-us") are listed once. The <details> keeps its data-key, so
// the next refresh leaves it open.
function voices(m) {
  if (!m.voices) return m.loaded ? "–" : "(known once loaded)";
  const seen = new Set();
  const names = m.voices.filter((v) => !seen.has(v.toLowerCase()) && seen.add(v.toLowerCase()));
  if (names.length <= 6) return names.join(", ");
  return el("details", { dataset: { key: "voices-" + m.name } },
    el("summary", { dataset: { key: "voices-summary-" + m.name } }, `${names.length} voices`), names.join(", "));
}

// Where a model lives and what it needs: "cpu, 169.0 MiB (weights 92.1 MiB, KV 45.0 MiB)".
function memory(m) {
  const where = m.placement === "not_loaded" ? "not loaded" : m.placement;
  if (!m.footprint) return where;
  const f = m.footprint;
  const parts = `${fmt.bytes(f.total_bytes)} (weights ${fmt.bytes(f.weights_bytes)}, KV ${fmt.bytes(f.kv_bytes)})`;
  // A GPU lane's loaded model: what its worker counts on the card and in RAM beside it.
  if (m.on_gpu_bytes != null && m.in_ram_bytes != null) {
    return `${where}, ${parts}: ${fmt.bytes(m.on_gpu_bytes)} on the GPU, ${fmt.bytes(m.in_ram_bytes)} in RAM`;
  }
  return `${where}, ${parts}`;
}

// /ready lists the enabled lanes only: one it leaves out is off in the configuration (it read
// as "worker not ready", for good).
function laneState(lane, lanes) {
  const [state, words] = !(lane in lanes) ? ["disabled", "lane disabled"]
    : lanes[lane] ? ["idle", "worker ready"] : ["starting", "worker not ready"];
  return el("span", { class: "state", dataset: { state } }, words);
}

async function refresh() {
  const [models, ready] = await Promise.all([api("/api/models"), readiness()]);
  const box = document.getElementById("models");
  keepPlace(box, () => box.replaceChildren(...Object.entries(models.lanes).map(([lane, list]) => el("section", { class: "card", "aria-labelledby": `m-${lane}` },
    el("h2", { id: `m-${lane}` }, lane, " ", laneState(lane, ready.lanes || {})),
    el("div", { class: "scroll" }, el("table", { class: "tasks" },
      el("thead", {}, el("tr", {}, ...["Model", "Backend", "Loaded", "Memory", "Last load", "Serves at once", "Voices", "About"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...list.map((m) => el("tr", { dataset: { model: m.name } },
        el("td", {}, el("code", {}, m.name), m.default ? " (default)" : ""), el("td", {}, m.backend),
        el("td", {}, m.loaded ? "yes" : "no"), el("td", { class: "memory" }, memory(m)),
        el("td", {}, fmt.secs(m.last_load_s)), el("td", {}, m.parallel),
        el("td", { class: "voices" }, voices(m)), el("td", {}, m.description || ""))))))),
  )));
}

// Models load on first use and unload when evicted or idle past keep_alive: every five
// seconds is enough to follow it.
poll(refresh, 5000);
