// The Train view: the form, the runs table and the monitor of the selected job, or of the runs
// ticked for comparison. The selection owns its streams; events from any other (an older
// selection) are ignored.

import { api, ApiError } from "./api.js";
import { ArtifactActions, FineTuneChoice } from "./artifacts.js";
import { TrainForm } from "./form.js";
import { JobsList } from "./jobs.js";
import { Monitor } from "./monitor.js";
import { JobStream, isTerminalEvent } from "./stream.js";

const $ = (selector) => document.querySelector(selector);

const monitor = new Monitor();
let form = null;
let job = null; // {jobId, stream}: the selected job, when one job is watched
let comparison = null; // {jobIds, streams}: the compared runs, when several are

function setUrl(key, value) {
  const url = new URL(window.location.href);
  url.searchParams.delete("job");
  url.searchParams.delete("compare");
  if (value) url.searchParams.set(key, value); // a reload (or a shared link) restores the view
  window.history.replaceState(null, "", url);
}

function closeSelection() {
  if (job && job.stream) job.stream.close();
  if (comparison) for (const stream of comparison.streams) stream.close();
  job = null;
  comparison = null;
  window.snnmon.stream = null;
}

// -- selecting a job: reset the monitor, fetch its record, replay its events from the first

async function watch(jobId) {
  if (job && job.jobId === jobId) return;
  closeSelection(); // the new selection's stream opens once its record has been read
  const mine = { jobId, stream: null };
  job = mine;
  monitor.reset(jobId);
  artifactActions.show(null);
  jobsList.select(jobId);
  jobsList.pick([]);
  setUrl("job", jobId);

  try {
    const record = await api.status(jobId);
    if (job !== mine) return;
    monitor.applyRecord(record);
    fillMeta(record, { reset: true });
    artifactActions.show(record);
  } catch (err) {
    if (job !== mine) return;
    const unknown = err instanceof ApiError && err.status === 404;
    monitor.showError(unknown ? `no job ${jobId} on this server` : err.message);
    if (unknown) return;
  }
  const stream = new JobStream(jobId, {
    onEvent: (type, data) => {
      if (job !== mine) return; // an old selection's stream
      monitor.applyEvent(jobId, type, data);
      if (isTerminalEvent(type)) jobsList.refresh(); // the final status without waiting for a poll
    },
    onConnection: (state, detail) => {
      if (job !== mine) return;
      if (state === "gone") {
        monitor.setConnection("ended");
        monitor.showError(detail);
      } else if (!monitor.finished) {
        monitor.setConnection(state);
      }
    },
  });
  mine.stream = stream;
  window.snnmon.stream = stream;
  stream.open();
}

// -- comparing runs: one stream per run, each replayed from its first event

function compare(jobIds) {
  closeSelection();
  const mine = { jobIds: [...jobIds], streams: [] };
  comparison = mine;
  monitor.compare(mine.jobIds);
  jobsList.select(null);
  jobsList.pick(mine.jobIds);
  setUrl("compare", mine.jobIds.join(","));
  $("#compare-clear").hidden = false;
  for (const record of jobsList.records) monitor.applyRecord(record);
  for (const jobId of mine.jobIds) {
    const stream = new JobStream(jobId, {
      onEvent: (type, data) => {
        if (comparison === mine) monitor.applyEvent(jobId, type, data);
      },
      onConnection: () => {},
    });
    mine.streams.push(stream);
    stream.open();
  }
}

function onPick(jobIds) {
  if (jobIds.length >= 2) {
    compare(jobIds);
    return;
  }
  if (!comparison) return;
  const back = jobIds[0];
  closeSelection();
  $("#compare-clear").hidden = true;
  if (back) watch(back);
  else {
    setUrl("compare", null);
    $("#monitor").hidden = true;
    $("#empty-monitor").hidden = false;
  }
}

// -- buttons

async function onTrain(event) {
  event.preventDefault();
  const button = $("#train-button");
  button.disabled = true;
  form.clearErrors();
  try {
    // Run metadata travels in the start body next to the config (not TrainConfig fields).
    const body = form.values();
    const name = $("#run-name").value.trim();
    const tags = $("#run-tags").value.split(",").map((t) => t.trim()).filter(Boolean);
    if (name) body.name = name;
    if (tags.length) body.tags = tags;
    const answer = await api.start({ ...body, ...fineTune.option() });
    await watch(answer.job_id);
    jobsList.refresh();
  } catch (err) {
    if (err instanceof ApiError && err.body.fields) form.showErrors(err.body.fields, err.message);
    else form.showErrors({}, `could not start: ${err.message}`);
  } finally {
    button.disabled = false;
  }
}

// Stop acts on the selected job only.
async function onStop() {
  if (!job) return;
  const target = job;
  $("#stop-button").disabled = true;
  try {
    const answer = await api.stop(target.jobId);
    if (job === target) monitor.setStatus(answer.status);
  } catch (err) {
    if (job === target) {
      monitor.showError(`could not stop: ${err.message}`);
      monitor.setStatus(monitor.status, { force: true }); // re-enables Stop if the job still runs
    }
  }
}

// The selected job's metrics (per epoch or per step) as a CSV file. Fetched through the API client
// (so a token is sent as a header) and saved from a Blob, since a plain link could not carry the header.
async function onExport(level) {
  if (!job) return;
  const jobId = job.jobId;
  try {
    const csv = await api.metricsCsv(jobId, level);
    const url = URL.createObjectURL(new Blob([csv], { type: "text/csv" }));
    const link = document.createElement("a");
    link.href = url;
    link.download = `snnmon-${jobId}-${level === "epoch" ? "" : `${level}-`}metrics.csv`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  } catch (err) {
    if (job && job.jobId === jobId) monitor.showError(`could not export: ${err.message}`);
  }
}

// Name, tags and notes of the selected job, saved with PATCH. A field the user has changed is
// "dirty": polls leave it alone, the others follow the record (an edit in the runs table, a script).
const META_FIELDS = {
  name: { selector: "#meta-name", show: (r) => r.name || "", read: (v) => v.trim() },
  tags: { selector: "#meta-tags", show: (r) => (r.tags || []).join(", "), read: (v) => v.split(",").map((t) => t.trim()).filter(Boolean) },
  notes: { selector: "#meta-notes", show: (r) => r.notes || "", read: (v) => v },
};

function fillMeta(record, { reset = false } = {}) {
  for (const { selector, show } of Object.values(META_FIELDS)) {
    const input = $(selector);
    if (reset) delete input.dataset.dirty;
    if (!input.dataset.dirty && input.value !== show(record)) input.value = show(record);
  }
  if (reset) {
    $("#meta-error").textContent = "";
    $("#meta-saved").textContent = "";
  }
}

async function onSaveMeta(event) {
  event.preventDefault();
  if (!job) return;
  const target = job;
  const fields = {};
  for (const [name, { selector, read }] of Object.entries(META_FIELDS)) {
    if ($(selector).dataset.dirty) fields[name] = read($(selector).value);
  }
  $("#meta-error").textContent = "";
  if (!Object.keys(fields).length) return;
  try {
    const record = await api.patch(target.jobId, fields);
    if (job !== target) return;
    if (record && record.job_id) fillMeta(record, { reset: true });
    $("#meta-saved").textContent = "saved";
    jobsList.refresh();
  } catch (err) {
    if (job !== target) return;
    const reasons = err instanceof ApiError && err.body.fields
      ? Object.entries(err.body.fields).map(([k, v]) => `${k}: ${v}`).join("; ")
      : "";
    $("#meta-error").textContent = `could not save: ${reasons || err.message}`;
  }
}

// -- start-up

const artifactActions = new ArtifactActions({
  onStarted: (jobId) => {
    watch(jobId);
    jobsList.refresh();
  },
  onError: (message) => monitor.showError(message),
});
const fineTune = new FineTuneChoice();

const jobsList = new JobsList($("#jobs-table"), $("#jobs-filter"), {
  onSelect: (id) => watch(id),
  onPick,
  onRecords: (records) => {
    $("#jobs-error").textContent = "";
    for (const record of records) monitor.applyRecord(record); // the monitor keeps only its runs'
    const selected = job && records.find((r) => r.job_id === job.jobId);
    if (selected) fillMeta(selected);
    if (selected) artifactActions.show(selected);
    fineTune.update(records);
  },
  onError: (message) => {
    $("#jobs-error").textContent = message;
  },
});

// For tests and the curious: what the page draws and which stream it follows.
window.snnmon = {
  charts: monitor.charts,
  layers: monitor.layers,
  compareTable: monitor.compareTable,
  stream: null,
  get runs() {
    return monitor.runs;
  },
  get comparison() {
    return comparison ? [...comparison.jobIds] : null;
  },
  get job() {
    return job ? { jobId: job.jobId, status: monitor.status } : null;
  },
  get form() {
    return form;
  },
};

async function init() {
  try {
    const [schema, surrogates, cells] = await Promise.all([api.configSchema(), api.surrogates(), api.cellTypes()]);
    form = new TrainForm($("#train-form"), { schema, surrogates, cells });
    $("#train-button").disabled = false;
  } catch (err) {
    $("#train-form [data-role=form-error]").textContent = `could not load the config schema: ${err.message}`;
  }
  $("#train-form").addEventListener("submit", onTrain);
  $("#reset-button").addEventListener("click", () => form && form.reset());
  $("#stop-button").addEventListener("click", onStop);
  $("#export-button").addEventListener("click", () => onExport("epoch"));
  $("#export-steps-button").addEventListener("click", () => onExport("step"));
  $("#compare-clear").addEventListener("click", () => {
    jobsList.pick([]);
    onPick([]);
  });
  $("#meta-form").addEventListener("submit", onSaveMeta);
  $("#meta-form").addEventListener("input", (event) => {
    event.target.dataset.dirty = "true";
    $("#meta-saved").textContent = "";
  });
  jobsList.start();
  const query = new URLSearchParams(window.location.search);
  const compared = (query.get("compare") || "").split(",").filter(Boolean);
  const requested = query.get("job");
  if (compared.length >= 2) compare(compared);
  else if (requested || compared.length === 1) {
    watch(requested || compared[0]);
    // On a narrow screen the form comes first: a link to a job opens at the job.
    if (window.matchMedia("(max-width: 900px)").matches) $("#monitor").scrollIntoView({ block: "start" });
  }
  document.body.dataset.ready = "true";
}

init();
