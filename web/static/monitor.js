// The monitor: one job (status, progress, run facts, warnings, notes and the live panels) or a
// comparison of several (the same charts overlaid, and their configs side by side). Fed by each
// run's events (replayed from the first, then live) and records (status endpoint, jobs poll).

import { LineChart, ParameterTable, markDirty } from "./charts.js";
import { CompareTable } from "./compare.js";
import { TERMINAL_STATUSES, bestValAccuracy, formatPercent } from "./jobs.js";
import { LayerPanel } from "./layers.js";
import { metricLines, parameterLines, spikeLines } from "./plots.js";
import { RunData } from "./run.js";
import { formatDuration, formatNumber } from "./series.js";

const $ = (selector) => document.querySelector(selector);
// Statuses only move forward; a late poll answer never takes a job back from "stopping" to "running".
const STATUS_RANK = { queued: 0, starting: 1, running: 2, stopping: 3, completed: 4, stopped: 4, failed: 4 };
const EVENT_METHODS = {
  config: "onConfig",
  batch: "onBatch",
  epoch: "onEpoch",
  warning: "onWarning",
  completed: "onCompleted",
  stopped: "onStopped",
  error: "onError",
};
const CONNECTION_TEXT = { open: "live", reconnecting: "reconnecting…", ended: "stream ended", idle: "" };
const VIEW_KEY = "snnmon.view";

function savedView() {
  try {
    return { axis: "step", log: false, smoothing: 0.6, ...JSON.parse(localStorage.getItem(VIEW_KEY) || "{}") };
  } catch {
    return { axis: "step", log: false, smoothing: 0.6 };
  }
}

export class Monitor {
  constructor() {
    this.view = savedView();
    this.runs = []; // RunData: one, or several when comparing
    const runs = () => this.runs;
    const view = () => this.view;
    this.charts = {
      loss: new LineChart($("#chart-loss"), { title: "Loss", yLabel: "cross-entropy", build: () => metricLines(runs(), view(), "loss") }),
      accuracy: new LineChart($("#chart-accuracy"), {
        title: "Accuracy", yLabel: "%", clamp: [0, 100], format: (v) => `${formatNumber(v)}%`,
        build: () => metricLines(runs(), view(), "accuracy"),
      }),
      spikes: new LineChart($("#chart-spikes"), {
        title: "Spike rate per layer", yLabel: "% per step", format: (v) => `${formatNumber(v)}%`,
        build: () => spikeLines(runs(), view()),
      }),
      params: new LineChart($("#chart-params"), {
        title: "Neuron parameters", yLabel: "value", clamp: [-Infinity, Infinity], build: () => parameterLines(runs(), view()),
      }),
    };
    this.layers = new LayerPanel($("#spike-bars"), $("#spike-scale"), $("#layer-epoch"));
    this.paramTable = new ParameterTable($("#param-table tbody"));
    this.compareTable = new CompareTable($("#compare-table"));
    this.status = null;
    this.bindViewControls();
  }

  bindViewControls() {
    const axis = $("#x-axis");
    const log = $("#log-loss");
    const smoothing = $("#smoothing");
    axis.value = this.view.axis;
    log.checked = this.view.log;
    smoothing.value = String(this.view.smoothing);
    const apply = () => {
      this.view = { axis: axis.value, log: log.checked, smoothing: Number(smoothing.value) };
      $("#smoothing-value").textContent = this.view.smoothing.toFixed(2);
      localStorage.setItem(VIEW_KEY, JSON.stringify(this.view));
      this.redraw();
    };
    for (const control of [axis, log, smoothing]) control.addEventListener("input", apply);
    $("#smoothing-value").textContent = this.view.smoothing.toFixed(2);
  }

  get run() {
    return this.runs[0] || null;
  }

  get comparing() {
    return this.runs.length > 1;
  }

  runOf(jobId) {
    return this.runs.find((r) => r.jobId === jobId) || null;
  }

  // -- one job

  // A new job: everything shown so far belongs to the previous one.
  reset(jobId) {
    this.runs = [new RunData(jobId)];
    this.status = null;
    this.totalEpochs = 1;
    this.batchSize = null;
    this.paramTable.clear();
    this.setMode("single");
    $("#job-id").textContent = jobId;
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
    $("#export-steps-button").disabled = false;
    this.redraw();
  }

  // -- several jobs

  compare(jobIds) {
    this.runs = jobIds.map((id) => new RunData(id));
    this.status = null;
    this.setMode("compare");
    $("#compare-count").textContent = String(jobIds.length);
    this.redraw();
  }

  setMode(mode) {
    $("#monitor").hidden = false;
    $("#monitor").dataset.mode = mode;
    $("#empty-monitor").hidden = true;
    for (const el of document.querySelectorAll("[data-only=single]")) el.hidden = mode !== "single";
    for (const el of document.querySelectorAll("[data-only=compare]")) el.hidden = mode !== "compare";
  }

  redraw() {
    for (const chart of Object.values(this.charts)) chart.update();
    if (this.comparing) {
      this.compareTable.show(this.runs);
    } else {
      this.layers.show(this.run);
      this.renderWarnings();
    }
  }

  setStatus(status, { force = false } = {}) {
    if (!status || this.comparing) return;
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

  renderWarnings() {
    const list = $("#job-warnings");
    const warnings = this.run ? this.run.warnings : [];
    list.replaceChildren(...warnings.map((w) => {
      const item = document.createElement("li");
      item.dataset.kind = w.kind || "";
      item.textContent = w.message;
      return item;
    }));
    list.hidden = !warnings.length;
  }

  // A job record (status endpoint or jobs poll): its status, name, warnings and, for a failed job
  // whose stream has not said why, its error.
  applyRecord(record) {
    const run = this.runOf(record.job_id);
    if (!run) return;
    const before = JSON.stringify(run.warnings);
    const named = run.name;
    run.applyRecord(record);
    if (this.comparing) {
      if (named !== run.name) this.redraw();
      else this.compareTable.show(this.runs);
      return;
    }
    this.setStatus(record.status);
    if (record.status === "failed" && record.error && !$("#job-error").textContent) this.showError(record.error);
    const best = bestValAccuracy(record);
    if (best !== null && run.bestValAccuracy() === null) this.setInfo("best", formatPercent(best));
    $("#job-name").textContent = run.name || "";
    if (JSON.stringify(run.warnings) !== before) this.redraw();
  }

  applyEvent(jobId, type, data) {
    const run = this.runOf(jobId);
    const method = EVENT_METHODS[type];
    if (!run || !method) return;
    if (typeof run[method] === "function") run[method](data);
    if (!this.comparing) this[method](data);
    if (type !== "config") this.redraw();
    else if (this.comparing) this.compareTable.show(this.runs);
  }

  // -- the single job's head, one method per event type of the design's SSE table

  onConfig(data) {
    const config = data.config || {};
    this.totalEpochs = config.epochs || 1;
    this.batchSize = config.batch_size || null;
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
    const lr = Number.isFinite(data.lr) ? ` · lr ${formatNumber(data.lr)}` : "";
    this.setProgress(
      done / total,
      `epoch ${data.epoch + 1}/${this.totalEpochs} · batch ${batch}/${data.n_batches} · loss ${formatNumber(data.loss)}` +
        ` · acc ${formatPercent(data.accuracy)}${lr} · ${Math.round(data.samples_per_s || 0).toLocaleString()} samples/s` +
        ` · ETA ${formatDuration(eta)}`,
    );
    this.setStatus("running");
  }

  onEpoch(data) {
    this.paramTable.set(data.param_snapshot || {});
    const best = this.run.bestValAccuracy(); // in %
    if (best !== null) this.setInfo("best", formatPercent(best / 100));
    this.setStatus("running");
  }

  onWarning() {
    markDirty(this.layers);
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
