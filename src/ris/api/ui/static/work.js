// Work: the queues in order, running tasks with progress, recent outcomes; cancel buttons.
import { api, el, fmt, keepPlace, outcomeText, poll } from "./common.js";

const status = document.getElementById("work-status");
// The task the status line is about, followed on every tick until it ends: a running task
// asked to stop is "cancel requested" until its worker stops it, then "cancelled".
let followed = null;

function say(task, text, state) {
  status.textContent = `${task.lane} task ${task.task_id}: ${text}`;
  status.dataset.taskId = task.task_id;
  status.dataset.state = state;
}

async function cancel(task) {
  try {
    const r = await api(`/api/tasks/${encodeURIComponent(task.task_id)}/cancel`, { method: "POST" });
    followed = r.outcome === "requested" ? task : null;
    say(task, r.outcome === "requested" ? `cancel requested (still ${r.state})` : r.state, r.state);
  } catch (e) {
    followed = null;
    status.textContent = `could not cancel ${task.task_id}: ${e.message}`;
    status.dataset.state = "error";
  }
  await refresh();
}

// The followed task's line, from this tick's lists (or from the task itself once it has
// left them: a busy lane pushes it out of the recent ones).
async function follow(state) {
  const task = followed;
  const { queued, running, recent } = state.tasks;
  let view = [...queued, ...running, ...recent].find((t) => t.task_id === task.task_id);
  if (!view) view = await api(`/api/tasks/${encodeURIComponent(task.task_id)}`);
  if (view.state === "queued" || view.state === "running") return;
  followed = null;
  say(task, outcomeText(view.state, view.error), view.state);
  if (view.error) status.dataset.code = view.error.code;
}

function cancelButton(task) {
  // Its data-key finds it again after the next tick's re-render (a task moving from the queue
  // to the running table keeps its button's focus).
  return el("button", { type: "button", class: "cancel", dataset: { key: "cancel-" + task.task_id },
    "aria-label": `Cancel ${task.lane} task ${task.task_id}`, onclick: () => cancel(task) }, "Cancel");
}

function progressCell(t) {
  if (t.waiting_for === "model_load") return el("span", { class: "waiting" }, `loading ${t.waiting_for_model || t.model}`);
  if (t.waiting_for === "disk_space") return el("span", { class: "waiting" }, "waiting for disk space");
  if (t.waiting_for === "lane_disabled") return el("span", { class: "waiting" }, "waiting for its lane to be on");
  if (!t.progress_total) return el("span", {}, t.progress_done ? `${t.progress_done} outputs` : "started");
  const label = `${t.lane} task ${t.task_id} progress`;
  return el("span", { class: "prog" },
    el("progress", { max: t.progress_total, value: t.progress_done, "aria-label": label }),
    ` step ${t.progress_done}/${t.progress_total}`);
}

// A finished task's picture or speech, opened in a new tab: one made while the page that
// asked for it was away is reached from here.
function fileLink(t) {
  if (!t.file_url) return null;
  const what = t.lane === "image" ? "picture" : "audio";
  return [" ", el("a", { href: t.file_url, target: "_blank", rel: "noopener",
    "aria-label": `${what} of ${t.lane} task ${t.task_id}` }, what)];
}

function fill(id, rows) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...(rows.length ? rows : [el("tr", { class: "empty" }, el("td", { colspan: 6 }, "none"))]));
}

// The queue lists the first tasks of each lane; a row says how many more wait behind them.
function queuedRows(queued, totals, now) {
  const rows = [];
  for (const [i, t] of queued.entries()) {
    rows.push(el("tr", { dataset: { taskId: t.task_id, lane: t.lane } },
      el("td", {}, t.lane), el("td", {}, t.queue_position ?? "–"), el("td", {}, el("code", {}, t.task_id)),
      el("td", {}, t.model), el("td", {}, fmt.secs(now - t.submitted_at)), el("td", {}, cancelButton(t))));
    const last = i === queued.length - 1 || queued[i + 1].lane !== t.lane;
    const shown = queued.filter((q) => q.lane === t.lane).length;
    const more = (totals[t.lane] ?? 0) - shown;
    if (last && more > 0) {
      rows.push(el("tr", { class: "more", dataset: { lane: t.lane, more: String(more) } },
        el("td", { colspan: 6 }, `… and ${more} more queued in the ${t.lane} lane, listed here as those above run`)));
    }
  }
  return rows;
}

async function refresh() {
  const state = await api("/api/console/state");
  const hadFocus = document.getElementById("work").contains(document.activeElement);
  keepPlace(document.getElementById("work"), () => show(state));
  // Its button gone with its task (cancelled, finished): the keyboard's focus goes to the
  // status line that says what happened, not to the page's top.
  if (hadFocus && document.activeElement === document.body) status.focus();
  if (followed) await follow(state);
}

function show(state) {
  const now = state.time;
  const { queued, running, recent } = state.tasks;
  fill("queued", queuedRows(queued, state.tasks.queued_total || {}, now));
  fill("running", running.map((t) => el("tr", { dataset: { taskId: t.task_id, lane: t.lane } },
    el("td", {}, t.lane), el("td", {}, el("code", {}, t.task_id)), el("td", {}, t.model),
    el("td", {}, progressCell(t)), el("td", {}, fmt.secs(t.eta_s)), el("td", {}, cancelButton(t)))));
  fill("recent", recent.map((t) => el("tr", { dataset: { taskId: t.task_id, lane: t.lane, state: t.state } },
    el("td", {}, t.lane), el("td", {}, el("code", {}, t.task_id), fileLink(t)), el("td", { class: "st-" + t.state }, t.state),
    el("td", {}, t.started_at && t.finished_at ? fmt.secs(t.finished_at - t.submitted_at) : "–"),
    // The message alone (the state has its own column), its code for machines and a hover.
    el("td", {}, t.error ? el("span", { title: t.error.code, dataset: { code: t.error.code } }, t.error.message) : ""),
    el("td", {}, t.pauses !== undefined ? `${t.pauses} (${fmt.secs(t.paused_s)})` : ""))));
}

poll(refresh, 1000);
