// What a job leaves behind, on the dashboard: download buttons for the selected job's best and last
// weights (safetensors) and its NIR graph, "Resume" for a stopped or failed job with a checkpoint, and
// the form's "Fine-tune from" choice (a start option, init_from). Files come through the API client,
// so a token travels as a header, and are saved from a Blob.

import { api } from "./api.js";

const RESUMABLE = new Set(["stopped", "failed"]);

function save({ blob, filename }) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

export class ArtifactActions {
  // onStarted(jobId): a resumed job was started; onError(message): show it on the monitor.
  constructor({ onStarted, onError }) {
    this.record = null;
    this.onError = onError;
    this.buttons = {
      best: document.querySelector("#download-best"),
      last: document.querySelector("#download-last"),
      nir: document.querySelector("#download-nir"),
      resume: document.querySelector("#resume-button"),
    };
    const download = (which, fetchFile) => async () => {
      const jobId = this.record && this.record.job_id;
      if (!jobId) return;
      try {
        save(await fetchFile(jobId, which));
      } catch (err) {
        this.onError(`could not download: ${err.message}`);
      }
    };
    this.buttons.best.addEventListener("click", download("best", api.checkpoint));
    this.buttons.last.addEventListener("click", download("last", api.checkpoint));
    this.buttons.nir.addEventListener("click", download("best", api.exportNir));
    this.buttons.resume.addEventListener("click", async () => {
      const jobId = this.record && this.record.job_id;
      if (!jobId) return;
      this.buttons.resume.disabled = true;
      try {
        const answer = await api.start({ resume_from: jobId });
        onStarted(answer.job_id);
      } catch (err) {
        this.onError(`could not resume: ${err.message}`);
        this.show(this.record);
      }
    });
  }

  // The selected job's record (null: none selected); buttons follow its artifacts and status.
  show(record) {
    this.record = record;
    const artifacts = (record && record.artifacts) || {};
    const cell = record && record.config && record.config.cell_type;
    this.buttons.best.disabled = !artifacts.best;
    this.buttons.last.disabled = !artifacts.last;
    this.buttons.nir.disabled = !artifacts.best;
    this.buttons.nir.title = artifacts.best ? `the best weights as a NIR graph (${cell})` : "no checkpoint yet";
    this.buttons.resume.disabled = !(record && RESUMABLE.has(record.status) && artifacts.last);
    for (const [which, button] of [["best", this.buttons.best], ["last", this.buttons.last]]) {
      const info = artifacts[which];
      button.title = info ? `epoch ${info.epoch + 1}, ${(info.bytes / 1024).toFixed(0)} KiB` : "no checkpoint yet";
    }
  }
}

// The form's "Fine-tune from": jobs with a checkpoint, newest first; empty means fresh weights.
export class FineTuneChoice {
  constructor() {
    this.job = document.querySelector("#fine-tune-job");
    this.which = document.querySelector("#fine-tune-which");
  }

  update(records) {
    const chosen = this.job.value;
    const options = records.filter((r) => r.artifacts && r.artifacts.best);
    const wanted = ["", ...options.map((r) => r.job_id)];
    const present = [...this.job.options].map((o) => o.value);
    if (wanted.join() === present.join()) return;
    this.job.replaceChildren(new Option("nothing (fresh weights)", ""), ...options.map((r) => {
      const label = `${r.job_id} · ${r.config.network} ${r.config.cell_type} · ${r.status}`;
      return new Option(label, r.job_id);
    }));
    this.job.value = wanted.includes(chosen) ? chosen : "";
  }

  // The start option to add to the form's config ({} when none is chosen).
  option() {
    return this.job.value ? { init_from: { job_id: this.job.value, which: this.which.value } } : {};
  }
}
