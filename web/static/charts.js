// The live panels: uPlot line charts and the parameter table. Data arrives as events, possibly
// hundreds in one burst when a finished job is replayed; panels are only marked dirty, and one
// requestAnimationFrame callback redraws each dirty panel once, from the runs' data as it is then.

/* global uPlot */

import { formatNumber } from "./series.js";

const AXIS = { stroke: "#9aa4b2", grid: { stroke: "#2a3340", width: 1 }, ticks: { stroke: "#2a3340" } };
const HEIGHT = 220;

const dirty = new Set();
let frameRequested = false;

export function markDirty(panel) {
  dirty.add(panel);
  if (!frameRequested) {
    frameRequested = true;
    requestAnimationFrame(() => {
      frameRequested = false;
      const panels = [...dirty];
      dirty.clear();
      for (const p of panels) p.render();
    });
  }
}

/**
 * A line chart of any number of series with their own x values, joined onto one x column.
 * `build()` is asked at each redraw for {xLabel, log, lines, markers}: lines are
 * [{label, run, role, stroke, dash, width, points, x: number[], y: (number|null)[]}], markers the
 * x positions of epoch ends (drawn as faint vertical lines). Drag to zoom into an x range,
 * double-click to see everything again; while zoomed, live points do not move the view.
 */
export class LineChart {
  constructor(container, { title, yLabel, build, clamp = [0, Infinity], format = formatNumber }) {
    this.container = container;
    this.title = title;
    this.yLabel = yLabel;
    this.build = build;
    this.clamp = clamp;
    this.format = format;
    this.plot = null;
    this.shape = "";
    this.lines = [];
    this.markers = [];
    this.zoomed = false;
    new ResizeObserver(() => this.resize()).observe(container);
  }

  update() {
    markDirty(this);
  }

  render() {
    const { xLabel, log = false, lines, markers = [] } = this.build();
    this.lines = lines;
    this.markers = markers;
    const shape = JSON.stringify([xLabel, log, lines.map((l) => [l.label, l.stroke, l.dash, l.width, l.points])]);
    if (shape !== this.shape || !this.plot) {
      this.shape = shape;
      this.create(xLabel, log, lines);
    }
    const data = lines.length ? uPlot.join(lines.map((l) => [l.x, log ? positive(l.y) : l.y])) : [[]];
    if (this.zoomed) {
      const { min, max } = this.plot.scales.x;
      this.plot.setData(data, false);
      this.plot.setScale("x", { min, max });
    } else {
      this.plot.setData(data);
    }
    this.container.dataset.series = String(lines.length);
  }

  create(xLabel, log, lines) {
    if (this.plot) this.plot.destroy();
    this.zoomed = false;
    const format = this.format;
    const [low, high] = this.clamp;
    const opts = {
      title: this.title,
      width: Math.max(this.container.clientWidth, 200),
      height: HEIGHT,
      scales: {
        x: { time: false },
        y: log ? { distr: 3 } : { range: (u, lo, hi) => paddedRange(lo, hi, low, high) },
      },
      axes: [
        { ...AXIS, label: xLabel },
        // uPlot's own tick labels: their decimals follow the tick spacing, so 2.3026 and 2.3031 differ.
        { ...AXIS, label: this.yLabel, size: 64 },
      ],
      series: [
        { label: xLabel, value: (u, v) => (v == null ? "–" : formatNumber(v)) },
        ...lines.map((l) => ({
          label: l.label,
          stroke: l.stroke,
          width: l.width ?? 2,
          dash: l.dash || undefined,
          points: l.points ? { show: true, size: 6, fill: l.stroke, stroke: l.stroke } : { show: false },
          value: latestValue(format),
        })),
      ],
      legend: { live: true },
      cursor: { points: { size: 7 }, drag: { x: true, y: false, setScale: true } },
      hooks: {
        draw: [(u) => this.drawMarkers(u)],
        setScale: [(u, key) => {
          if (key === "x") this.zoomed = isZoomed(u);
        }],
      },
    };
    this.plot = new uPlot(opts, [[], ...lines.map(() => [])], this.container);
    this.container.classList.toggle("log", log);
  }

  // Epoch ends, so a step-level curve shows where each epoch begins.
  drawMarkers(u) {
    if (!this.markers.length) return;
    const { ctx } = u;
    const { top, height } = u.bbox;
    ctx.save();
    ctx.strokeStyle = "rgba(154, 164, 178, 0.35)";
    ctx.setLineDash([3, 4]);
    ctx.lineWidth = 1;
    for (const x of this.markers) {
      const px = Math.round(u.valToPos(x, "x", true)) + 0.5;
      if (px < u.bbox.left || px > u.bbox.left + u.bbox.width) continue;
      ctx.beginPath();
      ctx.moveTo(px, top);
      ctx.lineTo(px, top + height);
      ctx.stroke();
    }
    ctx.restore();
  }

  resize() {
    const width = Math.max(this.container.clientWidth, 200);
    if (this.plot && width !== this.plot.width) this.plot.setSize({ width, height: HEIGHT });
  }

  // -- read back by tests and the curious

  // What the chart currently draws: [[x...], [series1...], ...] after joining.
  get data() {
    return this.plot ? this.plot.data : [];
  }

  get labels() {
    return this.lines.map((l) => l.label);
  }

  // How many values the series with this role (and run, if given) draws.
  count(role, run = null) {
    const index = this.lines.findIndex((l) => l.role === role && (run === null || l.run === run));
    if (index === -1 || !this.plot) return 0;
    return (this.plot.data[index + 1] || []).filter((v) => v != null).length;
  }

  values(role, run = null) {
    const index = this.lines.findIndex((l) => l.role === role && (run === null || l.run === run));
    if (index === -1 || !this.plot) return [];
    const xs = this.plot.data[0];
    return this.plot.data[index + 1].map((v, i) => [xs[i], v]).filter(([, v]) => v != null);
  }

  get view() {
    if (!this.plot) return null;
    const { min, max, distr } = { ...this.plot.scales.x, distr: this.plot.scales.y.distr };
    return { min, max, log: distr === 3, zoomed: this.zoomed };
  }
}

function isZoomed(u) {
  const xs = u.data[0];
  if (!xs || xs.length < 2) return false;
  const { min, max } = u.scales.x;
  const span = xs[xs.length - 1] - xs[0];
  return min > xs[0] + span * 1e-6 || max < xs[xs.length - 1] - span * 1e-6;
}

// Log scale cannot place zero or negative values: those points are left out, not faked.
function positive(values) {
  return values.map((v) => (v != null && v > 0 ? v : null));
}

// Under the cursor: each series' value at that x, or the latest it had before (validation points
// exist only at epoch ends). Away from the cursor: each series' latest value.
function latestValue(format) {
  return (u, value, seriesIdx, idx) => {
    let v = value;
    const column = u.data[seriesIdx] || [];
    for (let i = (idx ?? column.length) - 1; i >= 0 && v == null; i -= 1) v = column[i];
    return v == null ? "–" : format(v);
  };
}

// The data's own range with a tenth of it as margin, kept within [low, high] (no loss below 0, no
// accuracy above 100): accuracy between 93% and 97% fills the chart instead of a sliver of 0-100.
function paddedRange(lo, hi, low, high) {
  if (lo == null || hi == null) return [0, 1];
  const pad = lo === hi ? Math.abs(lo) * 0.1 || 0.1 : (hi - lo) * 0.1;
  return [Math.max(low, lo - pad), Math.min(high, hi + pad)];
}

// The latest value of each learnable parameter and how far it moved since the first epoch.
export class ParameterTable {
  constructor(body) {
    this.body = body;
    this.first = {};
    this.latest = {};
  }

  clear() {
    this.first = {};
    this.latest = {};
    markDirty(this);
  }

  set(snapshot) {
    for (const [key, value] of Object.entries(snapshot)) {
      if (!(key in this.first)) this.first[key] = value;
      this.latest[key] = value;
    }
    markDirty(this);
  }

  render() {
    this.body.replaceChildren(
      ...Object.keys(this.latest).map((key) => {
        const row = document.createElement("tr");
        const value = this.latest[key];
        const delta = value - this.first[key];
        const shown = Number.isFinite(value) ? value.toFixed(4) : "–";
        const moved = Number.isFinite(delta) ? `${delta >= 0 ? "+" : "−"}${Math.abs(delta).toFixed(4)}` : "–";
        for (const text of [key, shown, moved]) {
          const cell = document.createElement("td");
          cell.textContent = text;
          row.append(cell);
        }
        return row;
      }),
    );
  }
}
