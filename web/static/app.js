// The Train view: the form, the jobs list and the monitor of the one selected job. Exactly one job
// stream is current at a time; events from any other (an older selection) are ignored.

import { api, ApiError } from "./api.js";
import { ArtifactActions, FineTuneChoice } from "./artifacts.js";
import { TrainForm } from "./form.js";
import { JobsList } from "./jobs.js";
import { Monitor } from "./monitor.js";
import { JobStream, isTerminalEvent } from "./stream.js";

const $ = (selector) => document.querySelector(selector);

const monitor = new Monitor();
let form = null;
let job = null; // {jobId, stream}: the selected job

// -- selecting a job: reset the monitor, fetch its record, replay its events from the first

async function watch(jobId) {
  if (job && job.jobId === jobId) return;
  if (job && job.stream) job.stream.close();
  window.snnmon.stream = null; // the new selection's stream opens once its record has been read
  const mine = { jobId, stream: null };
  job = mine;
  monitor.reset(jobId);
  artifactActions.show(null);
  jobsList.select(jobId);
  const url = new URL(window.location.href);
  url.searchParams.set("job", jobId); // a reload reattaches to this job
  window.history.replaceState(null, "", url);

  try {
    const record = await api.status(jobId);
    if (job !== mine) return;
    monitor.applyRecord(record);
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
      monitor.applyEvent(type, data);
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

// -- buttons

async function onTrain(event) {
  event.preventDefault();
  const button = $("#train-button");
  button.disabled = true;
  form.clearErrors();
  try {
    const answer = await api.start({ ...form.values(), ...fineTune.option() });
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

// The per-epoch metrics of the selected job as a CSV file. Fetched through the API client (so a token
// is sent as a header) and saved from a Blob, since a plain link could not carry the header.
async function onExport() {
  if (!job) return;
  const jobId = job.jobId;
  try {
    const csv = await api.metricsCsv(jobId);
    const url = URL.createObjectURL(new Blob([csv], { type: "text/csv" }));
    const link = document.createElement("a");
    link.href = url;
    link.download = `snnmon-${jobId}-metrics.csv`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  } catch (err) {
    if (job && job.jobId === jobId) monitor.showError(`could not export: ${err.message}`);
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

const jobsList = new JobsList($("#jobs-table tbody"), {
  onSelect: (id) => watch(id),
  onRecords: (records) => {
    $("#jobs-error").textContent = "";
    const selected = job && records.find((r) => r.job_id === job.jobId);
    if (selected) monitor.applyRecord(selected);
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
  stream: null,
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
  $("#export-button").addEventListener("click", onExport);
  jobsList.start();
  const requested = new URLSearchParams(window.location.search).get("job");
  if (requested) watch(requested);
  document.body.dataset.ready = "true";
}

init();
