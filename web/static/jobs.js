// The jobs list: every job the server knows (newest first), polled, one row per job keyed by id so
// a poll updates cells in place instead of rebuilding the table (focus and selection survive).

import { api } from "./api.js";

export const TERMINAL_STATUSES = new Set(["completed", "stopped", "failed"]);
const POLL_MS = 2000;

// Job records come from the service; read the few fields shown here defensively.
export function recordConfig(record) {
  return record.config || {};
}

export function bestValAccuracy(record) {
  const candidates = [
    record.best_val_accuracy,
    record.final_metrics && record.final_metrics.val_accuracy,
    record.last_metrics && record.last_metrics.val_accuracy,
  ];
  return candidates.find((v) => typeof v === "number" && Number.isFinite(v)) ?? null;
}

export function startTime(record) {
  const t = record.started_at ?? record.created_at ?? null;
  if (t === null) return null;
  const date = typeof t === "number" ? new Date(t * 1000) : new Date(t);
  return Number.isNaN(date.getTime()) ? null : date;
}

export function formatPercent(fraction) {
  return typeof fraction === "number" && Number.isFinite(fraction) ? `${(100 * fraction).toFixed(1)}%` : "–";
}

function formatTime(date) {
  if (!date) return "–";
  const sameDay = date.toDateString() === new Date().toDateString();
  return sameDay ? date.toLocaleTimeString() : date.toLocaleString();
}

function markCurrent(row, isCurrent) {
  if (isCurrent) row.setAttribute("aria-current", "true");
  else row.removeAttribute("aria-current");
}

export class JobsList {
  /**
   * @param {HTMLTableSectionElement} body
   * @param {{onSelect: (jobId: string) => void, onRecords: (records: object[]) => void,
   *          onError: (message: string) => void}} handlers
   */
  constructor(body, handlers) {
    this.body = body;
    this.handlers = handlers;
    this.rows = new Map(); // job_id -> <tr>
    this.selected = null;
    this.timer = null;
    this.inFlight = false;
  }

  start() {
    this.refresh();
    this.timer = setInterval(() => this.refresh(), POLL_MS);
  }

  async refresh() {
    if (this.inFlight) return;
    this.inFlight = true;
    try {
      const records = await api.jobs();
      this.render(records);
      this.handlers.onRecords(records);
    } catch (err) {
      this.handlers.onError(`could not load the jobs list: ${err.message}`);
    } finally {
      this.inFlight = false;
    }
  }

  select(jobId) {
    this.selected = jobId;
    for (const [id, row] of this.rows) markCurrent(row, id === jobId);
  }

  render(records) {
    const seen = new Set();
    records.forEach((record, index) => {
      const id = record.job_id;
      seen.add(id);
      let row = this.rows.get(id);
      if (!row) {
        row = this.createRow(id);
        this.rows.set(id, row);
      }
      this.fillRow(row, record);
      if (this.body.children[index] !== row) this.body.insertBefore(row, this.body.children[index] || null);
    });
    for (const [id, row] of this.rows) {
      if (!seen.has(id)) {
        row.remove();
        this.rows.delete(id);
      }
    }
    this.body.closest("table").dataset.count = String(records.length);
  }

  createRow(id) {
    const row = document.createElement("tr");
    row.dataset.jobId = id;
    markCurrent(row, id === this.selected);
    const open = document.createElement("button");
    open.type = "button";
    open.className = "job-open";
    open.textContent = id.slice(0, 8);
    open.title = `Watch job ${id}`;
    open.setAttribute("aria-label", `Watch job ${id}`);
    open.addEventListener("click", () => this.handlers.onSelect(id));
    const first = document.createElement("td");
    first.append(open);
    row.append(first);
    for (const role of ["status", "dataset", "network", "started", "best"]) {
      const cell = document.createElement("td");
      cell.dataset.col = role;
      row.append(cell);
    }
    row.addEventListener("click", (event) => {
      if (event.target !== open) this.handlers.onSelect(id);
    });
    return row;
  }

  fillRow(row, record) {
    const config = recordConfig(record);
    const set = (col, text) => {
      const cell = row.querySelector(`[data-col=${col}]`);
      if (cell.textContent !== text) cell.textContent = text;
    };
    const statusCell = row.querySelector("[data-col=status]");
    statusCell.className = `status-cell status-${record.status}`;
    set("status", record.status || "–");
    statusCell.title = record.error || "";
    set("dataset", config.dataset || "–");
    set("network", config.network ? `${config.network} · ${config.cell_type || ""}` : "–");
    set("started", formatTime(startTime(record)));
    set("best", formatPercent(bestValAccuracy(record)));
    row.dataset.status = record.status || "";
  }
}
