// Small time-series line charts on <canvas>: the last minutes, drawn client-side (the page
// starts them with the server's history, /api/console/history, then adds each tick).
// (A few dozen lines instead of a charting library: nothing to vendor, nothing to load.)

export const COLORS = ["#1f6feb", "#c2410c", "#15803d", "#7c3aed", "#b91c1c", "#0e7490", "#a16207", "#be185d"];

export class TimeChart {
  // `span` seconds of history are kept and shown; `min`/`max` fix the y range (else from data).
  constructor(canvas, { span = 300, min = 0, max = null } = {}) {
    this.canvas = canvas;
    this.span = span;
    this.min = min;
    this.max = max;
    this.points = []; // [t, [v0, v1, ...]]
    this.bands = []; // [t0, t1]: shaded intervals (the image lane's yields on the LLM)
  }

  push(t, values) {
    if (this.points.length && t <= this.points[this.points.length - 1][0]) return; // time only moves on
    this.points.push([t, values]);
    while (this.points.length && this.points[0][0] < t - this.span) this.points.shift();
  }

  draw(now) {
    const c = this.canvas;
    // Draw at the size the page lays the canvas out at (its CSS box), not a stretched bitmap.
    if (c.clientWidth && (c.width !== c.clientWidth || c.height !== c.clientHeight)) {
      c.width = c.clientWidth;
      c.height = c.clientHeight;
    }
    // What is drawn, for tests and the curious: how many points, from when.
    c.dataset.points = String(this.points.length);
    if (this.points.length) c.dataset.since = String(this.points[0][0]);
    const ctx = c.getContext("2d");
    const w = c.width, h = c.height, pad = 4, top = 12;
    ctx.clearRect(0, 0, w, h);
    const t0 = now - this.span;
    const x = (t) => pad + ((t - t0) / this.span) * (w - 2 * pad);
    ctx.fillStyle = "rgba(234, 88, 12, 0.28)";
    for (const [a, b] of this.bands) {
      if (b < t0) continue;
      const xa = x(Math.max(a, t0));
      ctx.fillRect(xa, top, Math.max(2, x(b) - xa), h - top - pad);
    }
    let hi = this.max;
    if (hi === null) {
      hi = 0;
      for (const [, vs] of this.points) for (const v of vs) if (v !== null && v > hi) hi = v;
      hi = hi > 0 ? hi * 1.15 : 1;
    }
    const y = (v) => h - pad - ((v - this.min) / (hi - this.min)) * (h - top - pad);
    ctx.strokeStyle = "#d0d7de";
    ctx.lineWidth = 1;
    ctx.strokeRect(0.5, 0.5, w - 1, h - 1);
    ctx.fillStyle = "#444";
    ctx.font = "10px system-ui, sans-serif";
    ctx.fillText(hi >= 10 ? hi.toFixed(0) : hi.toPrecision(2), pad + 2, 10);
    const series = this.points.length ? this.points[this.points.length - 1][1].length : 0;
    for (let s = 0; s < series; s++) {
      ctx.strokeStyle = COLORS[s % COLORS.length];
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      let pen = false;
      for (const [t, vs] of this.points) {
        const v = vs[s];
        if (v === null || v === undefined) { pen = false; continue; }
        if (pen) ctx.lineTo(x(t), y(v));
        else { ctx.moveTo(x(t), y(v)); pen = true; }
      }
      ctx.stroke();
    }
  }
}
