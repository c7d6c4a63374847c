// The runs table: every job the server knows, polled, one row per job keyed by id so a poll updates
// cells in place instead of rebuilding the table (focus, ticks and an edit in progress survive).
// Sortable by any column, filtered by a text box (name, tag, status), ticks pick runs to compare,
// name and tags are edited in place (double-click), finished runs can be deleted.

import { api } from "./api.js";
import { formatDuration, formatNumber } from "./series.js";

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

export function runName(record) {
  return record.name || record.job_id.slice(0, 8);
}

function durationSeconds(record) {
  if (!Number.isFinite(record.started_at)) return null;
  const end = Number.isFinite(record.finished_at) ? record.finished_at : Date.now() / 1000;
  return Math.max(0, end - record.started_at);
}

// [column, text of a record, value to sort by]
const COLUMNS = [
  ["name", runName, runName],
  ["status", (r) => r.status || "–", (r) => r.status || ""],
  ["tags", (r) => (r.tags || []).join(", "), (r) => (r.tags || []).join(",")],
  ["dataset", (r) => recordConfig(r).dataset || "–", (r) => recordConfig(r).dataset || ""],
  ["network", (r) => recordConfig(r).network || "–", (r) => recordConfig(r).network || ""],
  ["cell", (r) => recordConfig(r).cell_type || "–", (r) => recordConfig(r).cell_type || ""],
  ["surrogate", (r) => recordConfig(r).surrogate || "–", (r) => recordConfig(r).surrogate || ""],
  ["hidden", (r) => (recordConfig(r).hidden || []).join("·") || "–", (r) => (recordConfig(r).hidden || []).reduce((a, b) => a + b, 0)],
  ["lr", (r) => formatNumber(recordConfig(r).lr), (r) => recordConfig(r).lr ?? null],
  ["batch", (r) => String(recordConfig(r).batch_size ?? "–"), (r) => recordConfig(r).batch_size ?? null],
  ["timesteps", (r) => String(recordConfig(r).timesteps ?? "–"), (r) => recordConfig(r).timesteps ?? null],
  ["best", (r) => formatPercent(bestValAccuracy(r)), bestValAccuracy],
  ["duration", (r) => formatDuration(durationSeconds(r)), durationSeconds],
];
const EDITABLE = new Set(["name", "tags"]);

function compareValues(a, b) {
  if (a === b) return 0;
  if (a === null || a === undefined || a === "") return 1; // blanks last either way
  if (b === null || b === undefined || b === "") return -1;
  return typeof a === "number" && typeof b === "number" ? a - b : String(a).localeCompare(String(b));
}

function markCurrent(row, isCurrent) {
  if (isCurrent) row.setAttribute("aria-current", "true");
  else row.removeAttribute("aria-current");
}

export class JobsList {
  /**
   * @param {HTMLTableElement} table
   * @param {HTMLInputElement} filterBox
   * @param {{onSelect: (jobId: string) => void, onPick: (jobIds: string[]) => void,
   *          onRecords: (records: object[]) => void, onError: (message: string) => void}} handlers
   */
  constructor(table, filterBox, handlers) {
    this.table = table;
    this.body = table.querySelector("tbody");
    this.filterBox = filterBox;
    this.handlers = handlers;
    this.rows = new Map(); // job_id -> <tr>
    this.records = [];
    this.selected = null;
    this.picked = []; // job ids ticked for comparison, in the order ticked
    this.sort = { column: null, descending: false }; // null: the server's order, newest first
    this.timer = null;
    this.inFlight = false;
    this.buildHeader();
    filterBox.addEventListener("input", () => this.render(this.records));
  }

  buildHeader() {
    for (const th of this.table.querySelectorAll("thead th[data-sort]")) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "sort";
      button.textContent = th.textContent;
      th.replaceChildren(button);
      button.addEventListener("click", () => {
        const column = th.dataset.sort;
        const descending = this.sort.column === column ? !this.sort.descending : false;
        this.sort = { column, descending };
        for (const other of this.table.querySelectorAll("thead th[data-sort]")) other.removeAttribute("aria-sort");
        th.setAttribute("aria-sort", descending ? "descending" : "ascending");
        this.render(this.records);
      });
    }
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

  pick(jobIds) {
    this.picked = [...jobIds];
    for (const [id, row] of this.rows) row.querySelector(".compare-pick").checked = this.picked.includes(id);
  }

  // Every whitespace-separated word of the filter must appear in the name, a tag, the status or the id.
  matches(record) {
    const words = this.filterBox.value.toLowerCase().split(/\s+/).filter(Boolean);
    const haystack = [runName(record), ...(record.tags || []), record.status, record.job_id].join(" ").toLowerCase();
    return words.every((w) => haystack.includes(w));
  }

  ordered(records) {
    const shown = records.filter((r) => this.matches(r));
    if (!this.sort.column) return shown;
    const [, , key] = COLUMNS.find(([name]) => name === this.sort.column);
    const sign = this.sort.descending ? -1 : 1;
    return shown
      .map((r, i) => [r, key(r), i])
      .sort(([, a, i], [, b, j]) => {
        const blank = (v) => v === null || v === undefined || v === "";
        if (blank(a) || blank(b)) return compareValues(a, b) || i - j;
        return sign * compareValues(a, b) || i - j;
      })
      .map(([r]) => r);
  }

  render(records) {
    this.records = records;
    const byId = new Map(records.map((r) => [r.job_id, r]));
    for (const [id, row] of this.rows) {
      if (!byId.has(id)) {
        row.remove();
        this.rows.delete(id);
      }
    }
    const shown = this.ordered(records);
    shown.forEach((record, index) => {
      const id = record.job_id;
      let row = this.rows.get(id);
      if (!row) {
        row = this.createRow(id);
        this.rows.set(id, row);
      }
      this.fillRow(row, record);
      row.hidden = false;
      if (this.body.children[index] !== row) this.body.insertBefore(row, this.body.children[index] || null);
    });
    const visible = new Set(shown.map((r) => r.job_id));
    for (const [id, row] of this.rows) if (!visible.has(id)) row.hidden = true;
    this.table.dataset.count = String(records.length);
    this.table.dataset.shown = String(shown.length);
  }

  createRow(id) {
    const row = document.createElement("tr");
    row.dataset.jobId = id;
    markCurrent(row, id === this.selected);
    const pickCell = document.createElement("td");
    const pick = document.createElement("input");
    pick.type = "checkbox";
    pick.className = "compare-pick";
    pick.checked = this.picked.includes(id);
    pick.setAttribute("aria-label", `Compare job ${id}`);
    pick.addEventListener("change", () => {
      this.picked = pick.checked ? [...this.picked.filter((p) => p !== id), id] : this.picked.filter((p) => p !== id);
      this.handlers.onPick(this.picked);
    });
    pickCell.append(pick);
    row.append(pickCell);
    for (const [column] of COLUMNS) {
      const cell = document.createElement("td");
      cell.dataset.col = column;
      if (column === "name") {
        const open = document.createElement("button");
        open.type = "button";
        open.className = "job-open";
        open.title = `Watch job ${id}`;
        open.setAttribute("aria-label", `Watch job ${id}`);
        open.addEventListener("click", () => this.handlers.onSelect(id));
        cell.append(open);
      }
      if (EDITABLE.has(column)) {
        cell.classList.add("editable");
        cell.title = `double-click to edit the ${column}`;
        cell.addEventListener("dblclick", (event) => {
          event.stopPropagation();
          this.edit(id, cell, column);
        });
      }
      row.append(cell);
    }
    const actions = document.createElement("td");
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "job-delete";
    remove.textContent = "Delete";
    remove.setAttribute("aria-label", `Delete job ${id}`);
    remove.addEventListener("click", (event) => {
      event.stopPropagation();
      this.remove(id);
    });
    actions.append(remove);
    row.append(actions);
    row.addEventListener("click", (event) => {
      if (event.target.closest("input, button, .editing")) return;
      this.handlers.onSelect(id);
    });
    return row;
  }

  fillRow(row, record) {
    for (const [column, text] of COLUMNS) {
      const cell = row.querySelector(`[data-col=${column}]`);
      if (cell.dataset.editing) continue;
      const target = column === "name" ? cell.querySelector(".job-open") : cell;
      const value = text(record);
      if (target.textContent !== value) target.textContent = value;
    }
    const statusCell = row.querySelector("[data-col=status]");
    statusCell.className = `status-cell status-${record.status}`;
    statusCell.title = record.error || "";
    row.querySelector(".job-delete").disabled = !TERMINAL_STATUSES.has(record.status);
    row.dataset.status = record.status || "";
  }

  // Name or tags in place: Enter saves (PATCH), Escape cancels.
  edit(id, cell, column) {
    if (cell.dataset.editing) return;
    const record = this.records.find((r) => r.job_id === id);
    if (!record) return;
    cell.dataset.editing = "true";
    const input = document.createElement("input");
    input.type = "text";
    input.className = "editing";
    input.value = column === "tags" ? (record.tags || []).join(", ") : record.name || "";
    input.setAttribute("aria-label", `${column} of job ${id}`);
    const saved = [...cell.childNodes];
    cell.replaceChildren(input);
    input.focus();
    input.select();
    const finish = async (save) => {
      if (!cell.dataset.editing) return;
      delete cell.dataset.editing;
      cell.replaceChildren(...saved);
      if (!save) return;
      const value = column === "tags" ? input.value.split(",").map((t) => t.trim()).filter(Boolean) : input.value.trim();
      try {
        await api.patch(id, { [column]: value });
        this.handlers.onError("");
      } catch (err) {
        this.handlers.onError(`could not save the ${column} of ${runName(record)}: ${err.message}`);
      }
      this.refresh();
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") finish(true);
      if (event.key === "Escape") finish(false);
    });
    input.addEventListener("blur", () => finish(true));
  }

  async remove(id) {
    const record = this.records.find((r) => r.job_id === id);
    const name = record ? runName(record) : id;
    if (!window.confirm(`Delete run ${name} (${id}) and all its events? This cannot be undone.`)) return;
    try {
      await api.remove(id);
      this.picked = this.picked.filter((p) => p !== id);
      this.handlers.onPick(this.picked);
    } catch (err) {
      this.handlers.onError(`could not delete ${name}: ${err.message}`);
    }
    this.refresh();
  }
}
