// What each chart draws, built from the runs' data and the view settings (x axis, log scale,
// smoothing). One run: colours by role (train, val) or by layer/parameter. Several runs: one colour
// and one dash pattern per run, so overlapping runs are told apart without colour; labels start with
// the run's name.

import { colour, dash, faint, smooth } from "./series.js";

export const X_AXES = {
  step: "step",
  epoch: "epoch",
  time: "time (s)",
};

const VAL_DASH = [6, 4];

// A metric with a step-level training curve and epoch-end validation points: "loss" or "accuracy".
export function metricLines(runs, view, metric) {
  const compare = runs.length > 1;
  const lines = [];
  runs.forEach((run, i) => {
    const prefix = compare ? `${run.label} ` : "";
    const trainColour = compare ? colour(i) : colour(metric === "loss" ? 0 : 2);
    const valColour = compare ? colour(i) : colour(metric === "loss" ? 3 : 4);
    const x = run.batchX(view.axis);
    const raw = run.batches[metric];
    if (view.smoothing > 0) {
      lines.push({ label: `${prefix}train raw`, run: run.jobId, role: "train-raw", stroke: faint(trainColour), width: 1, x, y: raw });
    }
    lines.push({
      label: `${prefix}train`, run: run.jobId, role: "train", stroke: trainColour, dash: compare ? dash(i) : null,
      width: 2, x, y: smooth(raw, view.smoothing),
    });
    lines.push({
      label: `${prefix}val`, run: run.jobId, role: "val", stroke: valColour, dash: compare ? dash(i) || VAL_DASH : VAL_DASH,
      width: 1.5, points: true,
      x: run.epochs.map((e) => run.epochX(e, view.axis)),
      y: run.epochs.map((e) => e[`val_${metric}`]),
    });
  });
  return { xLabel: X_AXES[view.axis], log: metric === "loss" && view.log, lines, markers: markers(runs, view) };
}

// Spike rate per layer (in % of neurons per timestep) at each epoch end.
export function spikeLines(runs, view) {
  return perKeyLines(runs, view, (run) => run.layerKeys(), (e, key) => {
    const rate = e.layer_spike_rates[key];
    return Number.isFinite(rate) ? 100 * rate : null;
  });
}

// Learnable beta and threshold per layer at each epoch end.
export function parameterLines(runs, view) {
  return perKeyLines(runs, view, (run) => run.paramKeys(), (e, key) => {
    const value = e.param_snapshot[key];
    return Number.isFinite(value) ? value : null;
  });
}

function perKeyLines(runs, view, keysOf, valueOf) {
  const compare = runs.length > 1;
  const lines = [];
  runs.forEach((run, i) => {
    const x = run.epochs.map((e) => run.epochX(e, view.axis));
    keysOf(run).forEach((key, k) => {
      lines.push({
        label: compare ? `${run.label} ${key}` : key,
        run: run.jobId,
        role: key,
        stroke: colour(compare ? i : k),
        dash: dash(k),
        width: 2,
        points: true,
        x,
        y: run.epochs.map((e) => valueOf(e, key)),
      });
    });
  });
  return { xLabel: X_AXES[view.axis], log: false, lines, markers: [] };
}

// Epoch ends of the first run, where the x axis is not already counted in epochs.
function markers(runs, view) {
  if (view.axis === "epoch" || !runs.length) return [];
  const run = runs[0];
  return run.epochs.map((e) => run.epochX(e, view.axis));
}
