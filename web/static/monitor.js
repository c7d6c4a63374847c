// The monitor of one job: status badge, progress bar, run facts and the four live panels, fed by
// the job's events (replayed from the first, then live) and by its record (status endpoint, jobs poll).

import { LineChart, ParameterTable, SpikeBars, COLORS, parameterSeries } from "./charts.js";
import { TERMINAL_STATUSES, bestValAccuracy, formatPercent } from "./jobs.js";

const $ = (selector) => document.querySelector(selector);
// Statuses only move forward; a late poll answer never takes a job back from "stopping" to "running".
const STATUS_RANK = { queued: 0, starting: 1, running: 2, stopping: 3, completed: 4, stopped: 4, failed: 4 };
const EVENT_METHODS = {
  config: "onConfig",
  batch: "onBatch",
  epoch: "onEpoch",
  completed: "onCompleted",
  stopped: "onStopped",
  error: "onError",
};
const CONNECTION_TEXT = { open: "live", reconnecting: "reconnecting…", ended: "stream ended", idle: "" };

function formatDuration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "–";
  const s = Math.round(seconds);
  const m = Math.floor(s / 60);
  return m >= 60 ? `${Math.floor(m / 60)}h ${m % 60}m` : `${m}:${String(s % 60).padStart(2, "0")}`;
}

function fixed(value, digits) {
  return Number.isFinite(value) ? value.toFixed(digits) : "–";
}

export class Monitor {
  constructor() {
    this.charts = {
      loss: new LineChart($("#chart-loss"), {
        title: "Loss",
        yLabel: "cross-entropy",
        series: [
          { key: "train_loss", label: "train", stroke: COLORS.trainLoss },
          { key: "val_loss", label: "val", stroke: COLORS.valLoss },
        ],
      }),
      accuracy: new LineChart($("#chart-accuracy"), {
        title: "Accuracy",
        yLabel: "%",
        yRange: [0, 100],
        format: (v) => `${v.toFixed(1)}%`,
        series: [
          { key: "train_accuracy", label: "train", stroke: COLORS.trainAcc },
          { key: "val_accuracy", label: "val", stroke: COLORS.valAcc },
        ],
      }),
      params: new LineChart($("#chart-params"), { title: "Neuron parameters", yLabel: "value", format: (v) => v.toFixed(4), series: [] }),
      spikes: new SpikeBars($("#spike-bars"), $("#spike-scale")),
    };
    this.paramTable = new ParameterTable($("#param-table tbody"));
    this.status = null;
  }

  // A new job: everything shown so far belongs to the previous one.
  reset(jobId) {
    this.status = null;
    this.totalEpochs = 1;
    this.batchSize = null;
    this.paramKeys = [];
    this.snapshots = []; // [epoch, {"lifs.0.beta": 0.9, ...}] for rebuilding the parameter chart
    this.best = null;
    this.charts.loss.clear(1);
    this.charts.accuracy.clear(1);
    this.charts.params.setSeries([]);
    this.charts.spikes.clear();
    this.paramTable.clear();
    $("#job-id").textContent = jobId;
    $("#monitor").hidden = false;
    $("#empty-monitor").hidden = true;
    for (const el of document.querySelectorAll("#run-info dd")) el.textContent = "–";
    this.setProgress(0, "waiting for the first batch");
    this.showError("");
    this.setConnection("idle");
    // Unknown until the status endpoint answers (the job may be long finished).
    const badge = $("#job-status");
    badge.textContent = "…";
    badge.dataset.status = "";
    badge.className = "status";
    $("#stop-button").disabled = true;
    $("#export-button").disabled = false;
  }

  setStatus(status, { force = false } = {}) {
    if (!status) return;
    const known = this.status === null ? -1 : STATUS_RANK[this.status] ?? -1;
    if (!force && (STATUS_RANK[status] ?? -1) < known) return;
    this.status = status;
    const badge = $("#job-status");
    badge.textContent = status;
    badge.dataset.status = status;
    badge.className = `status status-${status}`;
    $("#stop-button").disabled = TERMINAL_STATUSES.has(status) || status === "stopping";
    if (TERMINAL_STATUSES.has(status)) this.setConnection("ended");
  }

  get finished() {
    return TERMINAL_STATUSES.has(this.status);
  }

  setConnection(state) {
    const el = $("#connection");
    el.dataset.state = state;
    el.textContent = CONNECTION_TEXT[state] ?? state;
  }

  showError(message) {
    $("#job-error").textContent = message || "";
  }

  setProgress(fraction, text) {
    const bar = $("#progress");
    bar.value = Math.max(0, Math.min(1, fraction));
    bar.dataset.value = bar.value.toFixed(4);
    $("#progress-text").textContent = text;
  }

  setInfo(key, text) {
    const el = document.querySelector(`#run-info [data-info=${key}]`);
    if (el) el.textContent = text;
  }

  // A job record (status endpoint or jobs poll): its status and, for a failed job whose stream has
  // not said why, its error.
  applyRecord(record) {
    this.setStatus(record.status);
    if (record.status === "failed" && record.error && !$("#job-error").textContent) this.showError(record.error);
    const best = bestValAccuracy(record);
    if (best !== null && this.best === null) this.setInfo("best", formatPercent(best));
  }

  applyEvent(type, data) {
    const method = EVENT_METHODS[type];
    if (method) this[method](data);
  }

  // -- one method per event type of the design's SSE table

  onConfig(data) {
    const config = data.config || {};
    this.totalEpochs = config.epochs || 1;
    this.batchSize = config.batch_size || null;
    for (const chart of [this.charts.loss, this.charts.accuracy, this.charts.params]) chart.setTotalEpochs(this.totalEpochs);
    const info = data.model_info || {};
    this.setInfo("architecture", data.architecture || "–");
    this.setInfo("cell", [config.cell_type, config.surrogate].filter(Boolean).join(" · ") || "–");
    this.setInfo("params", Number.isFinite(info.total_params)
      ? `${info.total_params.toLocaleString()} (${(info.trainable_params ?? 0).toLocaleString()} trainable)`
      : "–");
    this.setInfo("data", `${data.dataset || config.dataset} · ${data.n_train ?? "?"} train / ${data.n_val ?? "?"} val`);
    this.setInfo("device", data.device || "–");
    this.setInfo("seed", String(data.seed ?? config.seed ?? "–"));
    if (data.warning) this.showError(data.warning);
    this.setStatus("running");
  }

  onBatch(data) {
    // batch is 0-based within the epoch; ETA from the current throughput, validation not counted
    const batch = Math.min(data.batch + 1, data.n_batches);
    const total = this.totalEpochs * data.n_batches;
    const done = data.epoch * data.n_batches + batch;
    const eta = this.batchSize && data.samples_per_s > 0 ? ((total - done) * this.batchSize) / data.samples_per_s : NaN;
    this.setProgress(
      done / total,
      `epoch ${data.epoch + 1}/${this.totalEpochs} · batch ${batch}/${data.n_batches} · loss ${fixed(data.loss, 4)}` +
        ` · acc ${formatPercent(data.accuracy)} · ${Math.round(data.samples_per_s || 0).toLocaleString()} samples/s` +
        ` · ETA ${formatDuration(eta)}`,
    );
    this.setStatus("running");
  }

  onEpoch(data) {
    this.charts.loss.put(data.epoch, data);
    this.charts.accuracy.put(data.epoch, { train_accuracy: 100 * data.train_accuracy, val_accuracy: 100 * data.val_accuracy });
    this.charts.spikes.set(data.epoch, data.layer_spike_rates || {});
    const snapshot = data.param_snapshot || {};
    this.snapshots.push([data.epoch, snapshot]);
    const keys = Object.keys(snapshot).sort();
    if (keys.join() !== this.paramKeys.join()) {
      // New parameter keys: one series per key, then replay the snapshots seen so far.
      this.paramKeys = keys;
      this.charts.params.setSeries(parameterSeries(keys));
      this.charts.params.setTotalEpochs(this.totalEpochs);
      for (const [epoch, snap] of this.snapshots) this.charts.params.put(epoch, snap);
    } else {
      this.charts.params.put(data.epoch, snapshot);
    }
    this.paramTable.set(snapshot);
    if (Number.isFinite(data.val_accuracy) && (this.best === null || data.val_accuracy > this.best)) this.best = data.val_accuracy;
    this.setInfo("best", formatPercent(this.best));
    this.setStatus("running");
  }

  onCompleted(data) {
    this.setProgress(1, `completed in ${formatDuration(data.duration_s)} · val acc ${formatPercent(data.val_accuracy)}`);
    this.setStatus("completed", { force: true });
  }

  onStopped(data) {
    const forced = data.forced ? " (the worker had to be killed)" : "";
    this.setProgress($("#progress").value, `stopped during epoch ${(data.epoch ?? 0) + 1}${forced}`);
    this.setStatus("stopped", { force: true });
  }

  onError(data) {
    this.showError(data.message || "the job failed");
    this.setProgress($("#progress").value, "failed");
    this.setStatus("failed", { force: true });
  }
}
