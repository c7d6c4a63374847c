// The live panels: uPlot line charts (loss, accuracy, neuron parameters) and the spike-rate bars.
// Data arrives as events, possibly hundreds in one burst when a finished job is replayed; panels
// are only marked dirty, and one requestAnimationFrame callback redraws each dirty panel once.

/* global uPlot */

export const COLORS = {
  trainLoss: "#4c9aff",
  valLoss: "#ff5f5f",
  trainAcc: "#3ecf8e",
  valAcc: "#b48cff",
};
// Parameter series: beta in warm tones, threshold in cool dashed ones, one shade per layer.
const BETA_SHADES = ["#f5a623", "#f7c948", "#e8743b", "#ffd8a8"];
const THRESHOLD_SHADES = ["#2ec4b6", "#5ad1f5", "#7b9cff", "#9be7c4"];
const AXIS = { stroke: "#9aa4b2", grid: { stroke: "#2a3340", width: 1 }, ticks: { stroke: "#2a3340" } };

const dirty = new Set();
let frameRequested = false;

function markDirty(panel) {
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

function epochAxis() {
  return {
    ...AXIS,
    label: "epoch",
    incrs: [1, 2, 5, 10, 20, 25, 50, 100],
    values: (u, splits) => splits.map((v) => (Number.isInteger(v) ? String(v) : "")),
  };
}

function seriesStyle(label, stroke) {
  return { label, stroke, width: 2, points: { show: true, size: 7, fill: stroke, stroke } };
}

// A line chart over epochs (x = 1-based epoch). `series` is [{key, label, stroke}].
export class LineChart {
  constructor(container, { title, series, yLabel, yRange = null, format = (v) => v.toFixed(3) }) {
    this.container = container;
    this.title = title;
    this.yLabel = yLabel;
    this.yRange = yRange;
    this.format = format;
    this.totalEpochs = 1;
    this.plot = null;
    this.setSeries(series);
    new ResizeObserver(() => this.resize()).observe(container);
  }

  // (Re)build the chart for a new set of series (the parameter chart learns its keys from the
  // first epoch event).
  setSeries(series) {
    this.series = series;
    this.columns = [[], ...series.map(() => [])];
    if (this.plot) this.plot.destroy();
    const fmt = this.format;
    const opts = {
      title: this.title,
      width: Math.max(this.container.clientWidth, 200),
      height: 220,
      scales: {
        x: { time: false, range: () => [0.6, Math.max(this.totalEpochs, 2) + 0.4] },
        y: this.yRange ? { range: () => this.yRange } : { range: (u, lo, hi) => paddedRange(lo, hi) },
      },
      axes: [epochAxis(), { ...AXIS, label: this.yLabel, size: 56 }],
      // Away from the cursor the legend shows each series' latest value.
      series: [
        { label: "epoch", value: legendValue(String) },
        ...series.map((s) => ({ ...seriesStyle(s.label, s.stroke), dash: s.dash, value: legendValue(fmt) })),
      ],
      legend: { live: true },
      cursor: { points: { size: 8 } },
    };
    this.plot = new uPlot(opts, this.columns, this.container);
    this.container.dataset.points = "0";
  }

  clear(totalEpochs = 1) {
    this.totalEpochs = totalEpochs;
    this.columns = [[], ...this.series.map(() => [])];
    markDirty(this);
  }

  setTotalEpochs(n) {
    this.totalEpochs = Math.max(1, n);
    markDirty(this);
  }

  // One point per epoch; an epoch seen again replaces its point instead of adding one.
  put(epoch, values) {
    const x = epoch + 1;
    let i = this.columns[0].indexOf(x);
    if (i === -1) {
      i = this.columns[0].length;
      this.columns[0].push(x);
      for (let s = 1; s < this.columns.length; s += 1) this.columns[s].push(null);
    }
    this.series.forEach((s, idx) => {
      const v = values[s.key];
      this.columns[idx + 1][i] = typeof v === "number" && Number.isFinite(v) ? v : null;
    });
    markDirty(this);
  }

  render() {
    this.plot.setData(this.columns.map((c) => c.slice()));
    this.container.dataset.points = String(this.columns[0].length);
  }

  resize() {
    const width = Math.max(this.container.clientWidth, 200);
    if (this.plot && width !== this.plot.width) this.plot.setSize({ width, height: 220 });
  }

  // What the chart currently draws (read back by tests): [[x...], [series1...], ...].
  get data() {
    return this.plot ? this.plot.data : [];
  }
}

function legendValue(format) {
  return (u, value, seriesIdx, idx) => {
    let v = value;
    if (idx == null) {
      const column = u.data[seriesIdx] || [];
      for (let i = column.length - 1; i >= 0 && v == null; i -= 1) v = column[i];
    }
    return v == null ? "–" : format(v);
  };
}

function paddedRange(lo, hi) {
  if (lo == null || hi == null) return [0, 1];
  if (lo === hi) {
    const pad = Math.abs(lo) * 0.1 || 0.1;
    return [lo - pad, hi + pad];
  }
  const pad = (hi - lo) * 0.1;
  return [Math.max(0, lo - pad), hi + pad];
}

export function parameterSeries(keys) {
  let beta = 0;
  let threshold = 0;
  return keys.map((key) => {
    const isBeta = key.endsWith(".beta");
    const shades = isBeta ? BETA_SHADES : THRESHOLD_SHADES;
    const stroke = shades[(isBeta ? beta++ : threshold++) % shades.length];
    return { key, label: key, stroke, dash: isBeta ? undefined : [6, 4] };
  });
}

// Horizontal bars, one per layer key, in percent of neurons spiking per timestep. The bars' scale
// is the next round number above the largest rate, because typical rates are a few percent.
const BAR_SCALES = [1, 2, 5, 10, 20, 50, 100];

export class SpikeBars {
  constructor(list, scaleLabel) {
    this.list = list;
    this.scaleLabel = scaleLabel;
    this.rates = {};
    this.epoch = null;
  }

  clear() {
    this.rates = {};
    this.epoch = null;
    markDirty(this);
  }

  set(epoch, rates) {
    this.epoch = epoch;
    this.rates = { ...rates };
    markDirty(this);
  }

  render() {
    const keys = Object.keys(this.rates);
    const percents = keys.map((k) => 100 * this.rates[k]);
    const top = Math.max(0, ...percents.filter(Number.isFinite));
    const scale = BAR_SCALES.find((s) => s >= top) || 100;
    this.list.replaceChildren(
      ...keys.map((key, i) => {
        const item = document.createElement("li");
        const name = document.createElement("span");
        name.className = "bar-key";
        name.textContent = key;
        const track = document.createElement("span");
        track.className = "bar-track";
        const fill = document.createElement("span");
        fill.className = "bar-fill";
        fill.style.width = `${Math.min(100, (100 * percents[i]) / scale)}%`;
        track.append(fill);
        const value = document.createElement("span");
        value.className = "bar-value";
        value.textContent = `${percents[i].toFixed(percents[i] < 10 ? 2 : 1)}%`;
        item.append(name, track, value);
        item.setAttribute("aria-label", `${key}: ${value.textContent} of neurons spike per step`);
        return item;
      }),
    );
    this.scaleLabel.textContent = keys.length
      ? `epoch ${this.epoch + 1}; bar scale 0–${scale}%`
      : "waiting for the first epoch";
    this.list.dataset.points = String(keys.length);
  }

  get data() {
    return { epoch: this.epoch, rates: { ...this.rates } };
  }
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
