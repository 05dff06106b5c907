// Models: what each lane is configured with, loaded or not, and its voices.
import { api, el, poll } from "./common.js";

// A long voice list (espeak-ng has over a hundred) folds away behind its count.
function voices(m) {
  if (!m.voices) return m.loaded ? "–" : "(known once loaded)";
  if (m.voices.length <= 6) return m.voices.join(", ");
  return el("details", {}, el("summary", {}, `${m.voices.length} voices`), m.voices.join(", "));
}

async function refresh() {
  const [models, ready] = await Promise.all([api("/api/models"), fetch("/ready").then((r) => r.json())]);
  const box = document.getElementById("models");
  box.replaceChildren(...Object.entries(models.lanes).map(([lane, list]) => el("section", { class: "card", "aria-labelledby": `m-${lane}` },
    el("h2", { id: `m-${lane}` }, lane, " ", el("span", { class: "state", dataset: { state: ready.lanes[lane] ? "idle" : "starting" } }, ready.lanes[lane] ? "worker ready" : "worker not ready")),
    el("table", { class: "tasks" },
      el("thead", {}, el("tr", {}, ...["Model", "Backend", "Loaded", "Serves at once", "Voices", "About"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...list.map((m) => el("tr", { dataset: { model: m.name } },
        el("td", {}, el("code", {}, m.name), m.default ? " (default)" : ""), el("td", {}, m.backend),
        el("td", {}, m.loaded ? "yes" : "no"), el("td", {}, m.parallel),
        el("td", { class: "voices" }, voices(m)), el("td", {}, m.description || "")))))),
  ));
}

// Loaded models change only when a worker restarts: every five seconds is enough.
poll(refresh, 5000);
