// Playground: chat (streamed tokens), speech (text, or the LLM's answer spoken as it is
// written) and images (live progress, then the picture), all through the public API.
import { APIError, Unreachable, api, el, outcomeText, poll, readiness, request, showError, sse } from "./common.js";

const $ = (id) => document.getElementById(id);

// ----- models and voices --------------------------------------------------------------------

async function loadModels() {
  const [{ lanes }, ready] = await Promise.all([api("/api/models"), readiness()]);
  // /ready lists the enabled lanes: a disabled one's form says so and sends nothing (its
  // models were offered, and every request refused).
  const on = (lane) => lane in (ready.lanes || {});
  // Only ever turned off here: a button busy with a request (Generate following a picture)
  // is not turned back on under it.
  for (const [lane, form, button] of [["llm", "chat-form", "chat-send"], ["tts", "speak-form", "speak-send"], ["image", "image-form", "image-send"]]) {
    if (on(lane)) continue;
    $(form).dataset.disabledLane = lane;
    $(button).disabled = true;
    $(button).title = `the ${lane} lane is disabled in the server's configuration`;
  }
  const fillSelect = (select, list, label) => select.replaceChildren(...list.map((m) =>
    el("option", { value: m.name, selected: m.default }, label(m))));
  fillSelect($("chat-model"), on("llm") ? lanes.llm || [] : [], (m) => m.name + (m.default ? " (default)" : ""));
  const tts = on("tts") ? lanes.tts || [] : [];
  // No model named, as the API's default: the server picks one with a voice of the text's
  // language (Chinese went to the English voice when the picker always named the default).
  fillSelect($("speak-model"), tts, (m) => m.name);
  if (tts.length) $("speak-model").prepend(el("option", { value: "", selected: true }, "by the text's language"));
  const voices = () => {
    const m = tts.find((x) => x.name === $("speak-model").value);
    $("speak-voice").replaceChildren(el("option", { value: "" }, m ? "the model's default" : "by the text's language"),
      ...distinct((m && m.voices) || []).map((v) => el("option", { value: v }, v)));
  };
  $("speak-model").addEventListener("change", voices);
  voices();
  modelsLoaded = true;
}
let modelsLoaded = false;

// A voice's names without repeats that differ only in case ("en-US", "en-us").
function distinct(names) {
  const seen = new Set();
  return names.filter((n) => !seen.has(n.toLowerCase()) && seen.add(n.toLowerCase()));
}

// A button about to be disabled hands the keyboard's focus to `next` (Stop, Cancel): a
// disabled button loses it to the page, and Tab would start from the top.
function handOver(button, next) {
  if (document.activeElement === button) next.focus();
}

// ----- chat -----------------------------------------------------------------------------------

let chatAbort = null;

$("chat-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const out = $("chat-output");
  const stats = $("chat-stats");
  out.textContent = "";
  out.dataset.state = "streaming";
  stats.textContent = "";
  delete stats.dataset.state;
  delete stats.dataset.code;
  chatAbort = new AbortController();
  $("chat-stop").disabled = false;
  handOver($("chat-send"), $("chat-stop"));
  $("chat-send").disabled = true;
  const started = performance.now();
  let tokens = 0;
  let first = null;
  try {
    const resp = await request("/api/llm/generate", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify({ prompt: $("chat-prompt").value, model: $("chat-model").value || undefined,
        max_tokens: Number($("chat-max").value), stream: true }),
      signal: chatAbort.signal,
    });
    for await (const { event, data } of sse(resp)) {
      if (event === "token") {
        tokens++;
        if (first === null) first = performance.now() - started;
        out.append(data.text);
        out.dataset.tokens = String(tokens);
      } else if (event === "done") {
        const total = performance.now() - started;
        stats.textContent = `${data.usage.completion_tokens} tokens, first after ${first?.toFixed(0)} ms, ` +
          `${(total / 1000).toFixed(2)} s in all (${data.finish_reason})`;
        out.dataset.state = "done";
      } else if (event === "error") {
        showError(stats, new APIError(0, data.code, data.message));
        out.dataset.state = "error";
      }
    }
  } catch (e) {
    if (e.name === "AbortError") {
      out.dataset.state = "stopped";
      stats.textContent = "stopped";
    } else {
      out.dataset.state = "error";
      showError(stats, e);
    }
  } finally {
    $("chat-send").disabled = Boolean($("chat-form").dataset.disabledLane); // a disabled lane stays off
    handOver($("chat-stop"), $("chat-send"));
    $("chat-stop").disabled = true;
  }
});
$("chat-stop").addEventListener("click", () => chatAbort && chatAbort.abort());
// Enter sends, as chat boxes do; Shift+Enter (or an input method composing) writes on.
$("chat-prompt").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing && !$("chat-send").disabled) {
    ev.preventDefault();
    $("chat-form").requestSubmit();
  }
});

// ----- speech ---------------------------------------------------------------------------------

function speakBody() {
  const body = { model: $("speak-model").value || undefined };
  if ($("speak-voice").value) body.voice = $("speak-voice").value;
  return body;
}

// What Stop ends: the request under way, and a spoken answer's sound (played on its own
// audio context, out of reach of any player's controls).
let speakAbort = null;
let speakSound = null;

async function speakText(status) {
  const b = speakBody();
  const resp = await request("/api/tts/synthesize", {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "audio/wav" },
    body: JSON.stringify({ text: $("speak-text").value, model: b.model, voice: b.voice }),
    signal: speakAbort.signal,
  });
  const audio = addClip(await resp.blob(), "text", $("speak-text").value);
  status.textContent = `${resp.headers.get("X-Duration-S")} s of speech` + warned(JSON.parse(resp.headers.get("X-Warnings") || "[]"));
  await audio.play().catch(() => {}); // a browser may refuse to play without a gesture
}

// What the server said of a request it served otherwise than asked (a voice of another
// language, a speed beyond the engine's), after the status line's own words.
function warned(warnings) {
  return warnings.length ? `; ${warnings.join("; ")}` : "";
}

// Every clip spoken on this page gets its own player and a link that saves it as a WAV, the
// newest first: a new one never replaces one still wanted.
let clipCount = 0;
function addClip(blob, kind, words) {
  const n = ++clipCount;
  const url = URL.createObjectURL(blob);
  const audio = el("audio", { controls: true, src: url, "aria-label": `clip ${n}` });
  const label = words.length > 60 ? words.slice(0, 57) + "…" : words;
  $("speak-clips").prepend(el("li", { dataset: { clip: String(n), kind } },
    el("span", { class: "clip-title" }, `${n}. ${kind === "answer" ? "answer to" : "text"}: ${label}`),
    audio,
    el("a", { href: url, download: `ris-speech-${n}.wav` }, `Download clip ${n} (WAV)`)));
  return audio;
}

// 16-bit mono PCM chunks as one WAV file (the 44-byte RIFF header, then the samples).
function wavBlob(chunks, rate) {
  const bytes = chunks.reduce((a, c) => a + c.byteLength, 0);
  const head = new DataView(new ArrayBuffer(44));
  const text = (at, s) => [...s].forEach((ch, i) => head.setUint8(at + i, ch.charCodeAt(0)));
  text(0, "RIFF"); head.setUint32(4, 36 + bytes, true); text(8, "WAVE");
  text(12, "fmt "); head.setUint32(16, 16, true); head.setUint16(20, 1, true); head.setUint16(22, 1, true);
  head.setUint32(24, rate, true); head.setUint32(28, rate * 2, true); head.setUint16(32, 2, true);
  head.setUint16(34, 16, true); text(36, "data"); head.setUint32(40, bytes, true);
  return new Blob([head, ...chunks], { type: "audio/wav" });
}

// The speaking pipeline: sentences go to TTS as the LLM writes them; each PCM chunk is
// scheduled on a Web Audio clock as it arrives, so sound starts before the answer ends.
async function speakAnswer(status) {
  const b = speakBody();
  const resp = await request("/api/chat/speak", {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
    body: JSON.stringify({ prompt: $("speak-text").value, max_tokens: 96, tts_model: b.model, voice: b.voice, stream_format: "events" }),
    signal: speakAbort.signal,
  });
  const out = $("speak-output");
  const ctx = new AudioContext();
  speakSound = ctx;
  const sound = { end: 0 }; // when the last sound scheduled ends, on the context's clock
  try {
    await playAnswer(resp, ctx, out, status, sound);
  } finally {
    // Each answer's audio context is closed once the sound it has played, even if the answer
    // then failed: a page keeps few.
    setTimeout(() => ctx.close().catch(() => {}), 1000 * Math.max(0, sound.end - ctx.currentTime) + 500);
  }
}

// The answer's events played as they come; `sound.end` follows when its last sound ends.
async function playAnswer(resp, ctx, out, status, sound) {
  const t0 = performance.now();
  let rate = 22050;
  let at = 0;
  let firstSound = null;
  let answerDone = null;
  let chunks = 0;
  let lastSound = null;
  const kept = []; // every chunk, for the answer's own clip once it has all arrived
  let warnings = [];
  for await (const { event, data } of sse(resp)) {
    if (event === "start") [rate, warnings] = [data.sample_rate, data.warnings || []];
    else if (event === "text") out.append(data.text + " ");
    else if (event === "audio") {
      const bytes = Uint8Array.from(atob(data.pcm), (c) => c.charCodeAt(0));
      const pcm = new Int16Array(bytes.buffer, 0, bytes.length >> 1);
      kept.push(pcm);
      const buf = ctx.createBuffer(1, pcm.length, rate);
      const ch = buf.getChannelData(0);
      for (let i = 0; i < pcm.length; i++) ch[i] = pcm[i] / 32768;
      const src = ctx.createBufferSource();
      src.buffer = buf;
      src.connect(ctx.destination);
      at = Math.max(at, ctx.currentTime + 0.05);
      src.start(at);
      at += buf.duration;
      sound.end = at;
      ctx.endAt = at;
      if (firstSound === null) firstSound = (performance.now() - t0) / 1000;
      lastSound = (performance.now() - t0) / 1000;
      out.dataset.chunks = String(++chunks);
      status.textContent = `playing; first sound after ${firstSound.toFixed(2)} s` + warned(warnings);
    } else if (event === "llm_done") {
      answerDone = (performance.now() - t0) / 1000;
    } else if (event === "error") {
      throw new APIError(0, data.code, data.message);
    }
  }
  const total = (performance.now() - t0) / 1000;
  if (kept.length) addClip(wavBlob(kept, rate), "answer", $("speak-text").value);
  // Sound began before the last of it arrived: it was played as it came, not at the end.
  out.dataset.playedEarly = String(chunks >= 2 && firstSound < lastSound);
  status.textContent = `first sound after ${firstSound?.toFixed(2)} s; answer written after ` +
    `${answerDone?.toFixed(2) ?? "?"} s; all spoken audio received after ${total.toFixed(2)} s` + warned(warnings);
}

$("speak-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const status = $("speak-status");
  $("speak-output").textContent = "";
  delete $("speak-output").dataset.chunks;
  delete $("speak-output").dataset.playedEarly;
  status.textContent = "working…";
  delete status.dataset.state;
  delete status.dataset.code;
  const focused = document.activeElement === $("speak-send");
  speakAbort = new AbortController();
  $("speak-stop").disabled = false;
  handOver($("speak-send"), $("speak-stop"));
  $("speak-send").disabled = true;
  try {
    const mode = new FormData($("speak-form")).get("mode");
    await (mode === "answer" ? speakAnswer(status) : speakText(status));
  } catch (e) {
    if (e.name === "AbortError") status.textContent = "stopped";
    else showError(status, e);
  } finally {
    // A spoken answer plays on after its last event: Stop stays until its sound has ended.
    const ctx = speakSound;
    const left = ctx && ctx.state !== "closed" ? Math.max(0, (ctx.endAt ?? 0) - ctx.currentTime) : 0;
    setTimeout(() => { if (speakSound === ctx) stopDone(); }, 1000 * left);
    $("speak-send").disabled = Boolean($("speak-form").dataset.disabledLane); // a disabled lane stays off
    if (focused && document.activeElement === document.body) $("speak-send").focus(); // back to it
  }
});

function stopDone() {
  speakSound = null;
  handOver($("speak-stop"), $("speak-send"));
  $("speak-stop").disabled = true;
}

$("speak-stop").addEventListener("click", () => {
  speakAbort?.abort(); // the server cancels the answer and its sentences as the request ends
  speakSound?.close().catch(() => {});
  $("speak-status").textContent = "stopped";
  stopDone();
});

// ----- images ---------------------------------------------------------------------------------

let imageTask = null;
let abandoned = false; // Cancel pressed while the server did not answer: stop waiting here

const pause = (ms) => new Promise((r) => setTimeout(r, ms));

// An image task's progress, asked until the server answers: a server restarting (or a network
// down a while) does not lose the task, which is durable, so the page waits for it too,
// saying so, rather than leave a picture it will never show.
async function progressOf(url, status) {
  for (let wait = 1000; ; wait = Math.min(wait * 2, 5000)) {
    if (abandoned) {
      throw new Error("stopped waiting here: the server did not answer; the task may still run (the Work page shows it once the server is back)");
    }
    try {
      return await api(url);
    } catch (e) {
      if (!(e instanceof Unreachable) && !(e instanceof APIError && e.status === 503)) throw e;
      status.textContent = `${e.message}; asking again (the task keeps its place)…`;
      status.dataset.state = "waiting";
      await pause(wait);
    }
  }
}

// What a queued picture waits for, said as the API's waiting_for says it.
const WAITING = { disk_space: "waiting for room on the server's disk", lane_pending: "waiting for the cluster",
  worker_start: "waiting for its worker to start", lane_disabled: "waiting for its lane to be turned on" };

// Where a queued task stands, in words: position 0 runs next.

function queuedText(position, waiting) {
  if (WAITING[waiting]) return `queued: ${WAITING[waiting]}`;
  if (position === null || position === undefined) return "queued";
  return position === 0 ? "queued: runs next" : `queued: ${position} ahead of it`;
}

// The page's last picture, kept for this tab: leaving the page (the Work page, a reload) while
// it was queued lost it, with no way back to it from the console; the task is durable, so
// the page follows it again on return, and shows it once made.
const LAST_IMAGE = "ris-playground-image";

$("image-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const prompt = $("image-prompt").value; // the picture's alt text, whatever the box says later
  const focused = document.activeElement === $("image-send");
  await followImage(prompt, focused, () => api("/api/image/generate", { method: "POST", body: {
    prompt, width: Number($("image-width").value),
    height: Number($("image-height").value), steps: Number($("image-steps").value) } }));
});

// A picture's task made by `made()` (a new one, or the last one again), followed until it ends.
async function followImage(prompt, focused, made) {
  const bar = $("image-progress");
  const status = $("image-status");
  const img = $("image-result");
  img.hidden = true;
  delete status.dataset.state;
  delete status.dataset.code;
  bar.value = 0;
  bar.dataset.seen = "0";
  $("image-send").disabled = true;
  try {
    const task = await made();
    sessionStorage.setItem(LAST_IMAGE, JSON.stringify({ ...task, prompt }));
    imageTask = task.task_id;
    abandoned = false;
    $("image-cancel").disabled = false;
    if (focused && document.activeElement === document.body) $("image-cancel").focus(); // from Generate
    for (;;) {
      const p = await progressOf(task.progress_url, status);
      delete status.dataset.state;
      bar.value = p.progress;
      if (String(p.progress) !== bar.dataset.seen.split(",").at(-1)) bar.dataset.seen += "," + p.progress;
      status.textContent = p.status === "queued" ? queuedText(p.queue_position, p.waiting_for)
        : `${p.status}: step ${p.step}/${p.total_steps ?? "?"}` + (p.eta_s ? `, about ${p.eta_s.toFixed(1)} s left` : "");
      if (p.status === "succeeded") {
        status.dataset.state = p.status;
        img.src = task.result_url;
        img.alt = `generated image: ${prompt}`;
        await img.decode().catch(() => {});
        img.hidden = false;
        break;
      }
      if (p.status === "failed" || p.status === "cancelled") {
        status.textContent = outcomeText(p.status, p.error);
        status.dataset.state = p.status;
        if (p.error) status.dataset.code = p.error.code;
        break;
      }
      await pause(250);
    }
  } catch (e) {
    if (e instanceof APIError && e.status === 404) {
      sessionStorage.removeItem(LAST_IMAGE); // gone (swept, another data folder): nothing to show
      status.textContent = "";
    } else {
      showError(status, e);
    }
  } finally {
    imageTask = null;
    $("image-send").disabled = Boolean($("image-form").dataset.disabledLane); // a disabled lane stays off
    handOver($("image-cancel"), $("image-send"));
    $("image-cancel").disabled = true;
  }
}

function resumeImage() {
  let last = null;
  try {
    last = JSON.parse(sessionStorage.getItem(LAST_IMAGE) || "null");
  } catch {
    sessionStorage.removeItem(LAST_IMAGE);
  }
  if (last && last.task_id && last.progress_url) followImage(last.prompt || "", false, async () => last);
}

$("image-cancel").addEventListener("click", async () => {
  if (!imageTask) return;
  try {
    await api(`/api/image/cancel/${encodeURIComponent(imageTask)}`, { method: "POST" });
  } catch (e) {
    if (e instanceof Unreachable) abandoned = true; // the wait ends with its next turn
    showError($("image-status"), e); // else the loop's next answer says how the task ended
  }
});

// The badge says whether the server answers and its lanes are ready, every few seconds (it
// said "ready" once, and went on saying it while the server was down).
async function lanesReady() {
  const { lanes } = await readiness();
  if (!modelsLoaded) await loadModels(); // the server was away at first
  const waiting = Object.entries(lanes || {}).filter(([, ok]) => !ok).map(([lane]) => lane);
  return waiting.length ? `not ready: ${waiting.join(", ")}` : "ready";
}

// The lanes known first (a disabled image lane keeps Generate off), then the last picture.
loadModels().catch((e) => showError($("chat-stats"), e)).finally(resumeImage);
poll(lanesReady, 5000, { figures: false });
