// Everything one run's events say, kept as columns so charts can be drawn from it at any x axis:
// step-level training points (one per batch event), epoch-end points (validation, spike activity,
// neuron parameters) and the run's warnings. Events from a server without the step-level fields
// (the seed's) still fill it: the step is then counted from epoch and batch, the loss is the running mean.

export class RunData {
  constructor(jobId) {
    this.jobId = jobId;
    this.name = null;
    this.config = {};
    this.status = null;
    this.nBatches = null;
    // One entry per batch event: x positions (step, epoch as a fraction, seconds) and values.
    this.batches = { step: [], epoch: [], time: [], loss: [], accuracy: [], lr: [] };
    // One entry per epoch event: {epoch, step, time, train_loss, val_loss, train_accuracy,
    // val_accuracy, layer_spike_rates, layer_stats, param_snapshot}.
    this.epochs = [];
    this.warnings = []; // {kind, layer?, message}
    this.elapsedBefore = 0; // seconds of the epochs already ended (sum of epoch_s)
    this.final = null; // data of the completed event
  }

  get label() {
    return this.name || this.jobId.slice(0, 8);
  }

  applyRecord(record) {
    if (record.name) this.name = record.name;
    if (record.config) this.config = record.config;
    this.status = record.status || this.status;
    for (const warning of record.warnings || []) this.addWarning(warning);
  }

  onConfig(data) {
    this.config = data.config || this.config;
  }

  // Seconds since training began: the server's own clock when it sends one, else the ended epochs'
  // durations plus this epoch's samples so far at its current throughput.
  elapsed(data, samplesDone) {
    if (Number.isFinite(data.elapsed_s)) return data.elapsed_s;
    const rate = data.samples_per_s;
    return this.elapsedBefore + (rate > 0 ? samplesDone / rate : 0);
  }

  onBatch(data) {
    this.nBatches = data.n_batches || this.nBatches;
    const done = data.batch + 1; // batches finished in this epoch
    const step = Number.isFinite(data.step) ? data.step : data.epoch * data.n_batches + done;
    const b = this.batches;
    if (b.step.length && step <= b.step[b.step.length - 1]) return; // replayed twice: already drawn
    b.step.push(step);
    b.epoch.push(data.epoch + done / data.n_batches);
    b.time.push(this.elapsed(data, done * (this.config.batch_size || 0)));
    b.loss.push(finite(data.batch_loss ?? data.loss));
    b.accuracy.push(percent(data.batch_accuracy ?? data.accuracy));
    b.lr.push(finite(data.lr ?? this.config.lr));
  }

  onEpoch(data) {
    if (this.epochs.some((e) => e.epoch === data.epoch)) return;
    const step = Number.isFinite(data.step) ? data.step : (data.epoch + 1) * (this.nBatches || 1);
    this.elapsedBefore += Number.isFinite(data.epoch_s) ? data.epoch_s : 0;
    this.epochs.push({
      epoch: data.epoch,
      step,
      time: Number.isFinite(data.elapsed_s) ? data.elapsed_s : this.elapsedBefore,
      train_loss: finite(data.train_loss),
      val_loss: finite(data.val_loss),
      train_accuracy: percent(data.train_accuracy),
      val_accuracy: percent(data.val_accuracy),
      layer_spike_rates: data.layer_spike_rates || {},
      layer_stats: data.layer_stats || null,
      param_snapshot: data.param_snapshot || {},
    });
  }

  onWarning(data) {
    this.addWarning(data);
  }

  // A warning repeats each epoch while its cause lasts: keep the latest per kind and layer.
  addWarning(warning) {
    if (!warning || !warning.message) return;
    const index = this.warnings.findIndex((w) => w.kind === warning.kind && w.layer === warning.layer);
    if (index === -1) this.warnings.push({ ...warning });
    else this.warnings[index] = { ...warning };
  }

  onCompleted(data) {
    this.final = data;
    this.status = "completed";
  }

  // Where an epoch-end point sits on the chosen x axis.
  epochX(entry, axis) {
    if (axis === "epoch") return entry.epoch + 1;
    if (axis === "time") return entry.time;
    return entry.step;
  }

  batchX(axis) {
    return this.batches[axis === "epoch" ? "epoch" : axis === "time" ? "time" : "step"];
  }

  bestValAccuracy() {
    const values = this.epochs.map((e) => e.val_accuracy).filter(Number.isFinite);
    return values.length ? Math.max(...values) : null;
  }

  layerKeys() {
    const keys = new Set();
    for (const e of this.epochs) for (const k of Object.keys(e.layer_spike_rates)) keys.add(k);
    return [...keys];
  }

  paramKeys() {
    const keys = new Set();
    for (const e of this.epochs) for (const k of Object.keys(e.param_snapshot)) keys.add(k);
    return [...keys].sort();
  }
}

function finite(value) {
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

function percent(fraction) {
  const v = finite(fraction);
  return v === null ? null : 100 * v;
}
