// Playground: chat (streamed tokens), speech (text, or the LLM's answer spoken as it is
// written) and images (live progress, then the picture), all through the public API.
import { api, el, errorOf, outcomeText, sse } from "./common.js";

const $ = (id) => document.getElementById(id);

// ----- models and voices --------------------------------------------------------------------

async function loadModels() {
  const { lanes } = await api("/api/models");
  const fillSelect = (select, list, label) => select.replaceChildren(...list.map((m) =>
    el("option", { value: m.name, selected: m.default }, label(m))));
  fillSelect($("chat-model"), lanes.llm || [], (m) => m.name + (m.default ? " (default)" : ""));
  const tts = lanes.tts || [];
  fillSelect($("speak-model"), tts, (m) => m.name + (m.default ? " (default)" : ""));
  const voices = () => {
    const m = tts.find((x) => x.name === $("speak-model").value);
    $("speak-voice").replaceChildren(el("option", { value: "" }, "the model's default"),
      ...((m && m.voices) || []).map((v) => el("option", { value: v }, v)));
  };
  $("speak-model").addEventListener("change", voices);
  voices();
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
  chatAbort = new AbortController();
  $("chat-send").disabled = true;
  $("chat-stop").disabled = false;
  const started = performance.now();
  let tokens = 0;
  let first = null;
  try {
    const resp = await fetch("/api/llm/generate", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify({ prompt: $("chat-prompt").value, model: $("chat-model").value || undefined,
        max_tokens: Number($("chat-max").value), stream: true }),
      signal: chatAbort.signal,
    });
    if (!resp.ok) throw await errorOf(resp);
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
        stats.textContent = `${data.code}: ${data.message}`;
        out.dataset.state = "error";
      }
    }
  } catch (e) {
    out.dataset.state = "error";
    stats.textContent = e.name === "AbortError" ? "stopped" : e.message;
  } finally {
    $("chat-send").disabled = false;
    $("chat-stop").disabled = true;
  }
});
$("chat-stop").addEventListener("click", () => chatAbort && chatAbort.abort());

// ----- speech ---------------------------------------------------------------------------------

function speakBody() {
  const body = { model: $("speak-model").value || undefined };
  if ($("speak-voice").value) body.voice = $("speak-voice").value;
  return body;
}

async function speakText(status) {
  const b = speakBody();
  const resp = await fetch("/api/tts/synthesize", {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "audio/wav" },
    body: JSON.stringify({ text: $("speak-text").value, model: b.model, voice: b.voice }),
  });
  if (!resp.ok) throw await errorOf(resp);
  const audio = addClip(await resp.blob(), "text", $("speak-text").value);
  status.textContent = `${resp.headers.get("X-Duration-S")} s of speech`;
  await audio.play().catch(() => {}); // a browser may refuse to play without a gesture
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
  const resp = await fetch("/api/chat/speak", {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
    body: JSON.stringify({ prompt: $("speak-text").value, max_tokens: 96, tts_model: b.model, voice: b.voice, stream_format: "events" }),
  });
  if (!resp.ok) throw await errorOf(resp);
  const out = $("speak-output");
  const ctx = new AudioContext();
  const t0 = performance.now();
  let rate = 22050;
  let at = 0;
  let firstSound = null;
  let answerDone = null;
  let chunks = 0;
  let lastSound = null;
  const kept = []; // every chunk, for the answer's own clip once it has all arrived
  for await (const { event, data } of sse(resp)) {
    if (event === "start") rate = data.sample_rate;
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
      if (firstSound === null) firstSound = (performance.now() - t0) / 1000;
      lastSound = (performance.now() - t0) / 1000;
      out.dataset.chunks = String(++chunks);
      status.textContent = `playing; first sound after ${firstSound.toFixed(2)} s`;
    } else if (event === "llm_done") {
      answerDone = (performance.now() - t0) / 1000;
    } else if (event === "error") {
      throw new Error(`${data.code}: ${data.message}`);
    }
  }
  const total = (performance.now() - t0) / 1000;
  if (kept.length) addClip(wavBlob(kept, rate), "answer", $("speak-text").value);
  // Sound began before the last of it arrived: it was played as it came, not at the end.
  out.dataset.playedEarly = String(chunks >= 2 && firstSound < lastSound);
  status.textContent = `first sound after ${firstSound?.toFixed(2)} s; answer written after ` +
    `${answerDone?.toFixed(2) ?? "?"} s; all spoken audio received after ${total.toFixed(2)} s`;
}

$("speak-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const status = $("speak-status");
  $("speak-output").textContent = "";
  delete $("speak-output").dataset.chunks;
  delete $("speak-output").dataset.playedEarly;
  status.textContent = "working…";
  $("speak-send").disabled = true;
  try {
    const mode = new FormData($("speak-form")).get("mode");
    await (mode === "answer" ? speakAnswer(status) : speakText(status));
  } catch (e) {
    status.textContent = e.message;
  } finally {
    $("speak-send").disabled = false;
  }
});

// ----- images ---------------------------------------------------------------------------------

let imageTask = null;

$("image-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const bar = $("image-progress");
  const status = $("image-status");
  const img = $("image-result");
  img.hidden = true;
  delete status.dataset.state;
  bar.value = 0;
  bar.dataset.seen = "0";
  $("image-send").disabled = true;
  try {
    const task = await api("/api/image/generate", { method: "POST", body: {
      prompt: $("image-prompt").value, width: Number($("image-width").value),
      height: Number($("image-height").value), steps: Number($("image-steps").value) } });
    imageTask = task.task_id;
    $("image-cancel").disabled = false;
    for (;;) {
      const p = await api(task.progress_url);
      bar.value = p.progress;
      if (String(p.progress) !== bar.dataset.seen.split(",").at(-1)) bar.dataset.seen += "," + p.progress;
      status.textContent = p.status === "queued" ? `queued, position ${p.queue_position}`
        : `${p.status}: step ${p.step}/${p.total_steps ?? "?"}` + (p.eta_s ? `, about ${p.eta_s.toFixed(1)} s left` : "");
      if (p.status === "succeeded") {
        status.dataset.state = p.status;
        img.src = task.result_url;
        img.alt = `generated image: ${$("image-prompt").value}`;
        await img.decode().catch(() => {});
        img.hidden = false;
        break;
      }
      if (p.status === "failed" || p.status === "cancelled") {
        status.textContent = outcomeText(p.status, p.error);
        status.dataset.state = p.status;
        break;
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  } catch (e) {
    status.textContent = e.message;
  } finally {
    imageTask = null;
    $("image-send").disabled = false;
    $("image-cancel").disabled = true;
  }
});

$("image-cancel").addEventListener("click", async () => {
  if (imageTask) await api(`/api/image/cancel/${encodeURIComponent(imageTask)}`, { method: "POST" }).catch(() => {});
});

const conn = $("conn");
loadModels().then(
  () => { conn.textContent = "ready"; conn.dataset.ok = "1"; },
  (e) => { conn.textContent = "no answer: " + e.message; conn.dataset.ok = "0"; },
);
