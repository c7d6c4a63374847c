// Spiking activity of one run at one epoch, one row per layer: its spike rate as a bar, the
// fractions of silent and saturated neurons, the per-neuron firing-rate histogram (20 bins over
// [0, 1]) and, when the run warned about the layer, the warning in place (the row turns amber).

import { markDirty } from "./charts.js";

// The bars' scale is the next round number above the largest rate: typical rates are a few percent.
const BAR_SCALES = [1, 2, 5, 10, 20, 50, 100];

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function percentText(fraction) {
  if (!Number.isFinite(fraction)) return "–";
  const p = 100 * fraction;
  return `${p.toFixed(p < 10 ? 2 : 1)}%`;
}

// 20 columns, heights relative to the fullest bin; the bins' neuron counts in the title.
function histogram(bins) {
  const box = element("span", "histogram");
  const top = Math.max(1e-12, ...bins);
  const total = bins.reduce((a, b) => a + b, 0) || 1;
  bins.forEach((count, i) => {
    const bar = element("span", "histogram-bin");
    bar.style.height = `${Math.max(count > 0 ? 6 : 0, (100 * count) / top)}%`;
    bar.title = `rate ${(i / bins.length).toFixed(2)}–${((i + 1) / bins.length).toFixed(2)}: ` +
      `${((100 * count) / total).toFixed(1)}% of neurons`;
    box.append(bar);
  });
  box.setAttribute("role", "img");
  box.setAttribute("aria-label", `firing-rate histogram, ${bins.length} bins from 0 to 1`);
  return box;
}

export class LayerPanel {
  /**
   * @param {HTMLUListElement} list
   * @param {HTMLElement} scaleLabel
   * @param {HTMLSelectElement} epochSelect  "latest" or a 0-based epoch
   */
  constructor(list, scaleLabel, epochSelect) {
    this.list = list;
    this.scaleLabel = scaleLabel;
    this.epochSelect = epochSelect;
    this.run = null;
    this.shownEpochs = 0;
    epochSelect.addEventListener("change", () => markDirty(this));
  }

  show(run) {
    if (run !== this.run) {
      this.run = run;
      this.shownEpochs = -1;
    }
    markDirty(this);
  }

  // The epoch chosen in the select, or the latest; null before the first epoch.
  entry() {
    const epochs = this.run ? this.run.epochs : [];
    if (!epochs.length) return null;
    const chosen = this.epochSelect.value;
    return (chosen !== "latest" && epochs.find((e) => String(e.epoch) === chosen)) || epochs[epochs.length - 1];
  }

  syncEpochOptions() {
    const epochs = this.run ? this.run.epochs : [];
    if (epochs.length === this.shownEpochs) return;
    const chosen = this.epochSelect.value;
    const options = [new Option("latest epoch", "latest")];
    for (const e of epochs) options.push(new Option(`epoch ${e.epoch + 1}`, String(e.epoch)));
    this.epochSelect.replaceChildren(...options);
    this.epochSelect.value = options.some((o) => o.value === chosen) ? chosen : "latest";
    this.shownEpochs = epochs.length;
  }

  render() {
    this.syncEpochOptions();
    const entry = this.entry();
    const rates = entry ? entry.layer_spike_rates : {};
    const stats = (entry && entry.layer_stats) || {};
    const keys = Object.keys(rates);
    const top = Math.max(0, ...keys.map((k) => 100 * rates[k]).filter(Number.isFinite));
    const scale = BAR_SCALES.find((s) => s >= top) || 100;
    const warnings = this.run ? this.run.warnings : [];
    this.list.replaceChildren(...keys.map((key) => this.row(key, rates[key], stats[key], scale, warnings, entry.epoch)));
    this.scaleLabel.textContent = entry ? `bar scale 0–${scale}%` : "waiting for the first epoch";
    this.list.dataset.points = String(keys.length);
    this.list.dataset.epoch = entry ? String(entry.epoch) : "";
  }

  row(key, rate, stat, scale, warnings, epoch) {
    const item = element("li", "layer-row");
    item.dataset.layer = key;
    const track = element("span", "bar-track");
    const fill = element("span", "bar-fill");
    fill.style.width = `${Math.min(100, (100 * 100 * rate) / scale)}%`;
    track.append(fill);
    const value = element("span", "bar-value", percentText(rate));
    const main = element("span", "layer-main");
    main.append(element("span", "bar-key", key), track, value);
    item.append(main);
    item.setAttribute("aria-label", `${key}: ${value.textContent} of neurons spike per step`);
    if (stat) {
      const details = element("span", "layer-details");
      details.append(
        element("span", "layer-silent", `silent ${percentText(stat.silent_fraction)}`),
        element("span", "layer-saturated", `saturated ${percentText(stat.saturated_fraction)}`),
      );
      if (Array.isArray(stat.rate_histogram) && stat.rate_histogram.length) {
        details.append(element("span", "histogram-label", "rates 0"), histogram(stat.rate_histogram), element("span", "histogram-label", "1"));
      }
      item.append(details);
    }
    // A warning is sent when its layer turns silent; shown from that epoch on.
    const mine = warnings.filter((w) => w.layer === key && !(Number.isFinite(w.epoch) && w.epoch > epoch));
    if (mine.length) {
      item.classList.add("warn");
      item.dataset.warning = mine.map((w) => w.kind).join(" ");
      for (const w of mine) item.append(element("span", "layer-warning", `⚠ ${w.message}`));
    }
    return item;
  }

  // What the panel shows (read back by tests).
  get data() {
    const entry = this.entry();
    return { epoch: entry ? entry.epoch : null, rates: entry ? { ...entry.layer_spike_rates } : {} };
  }
}
