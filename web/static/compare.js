// The comparison table: compared runs side by side (one column each), their config fields with the
// rows that differ highlighted, then status, final and best metrics.

import { markDirty } from "./charts.js";
import { colour, formatNumber } from "./series.js";

function cell(tag, text, attrs = {}) {
  const node = document.createElement(tag);
  node.textContent = text;
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

function shown(value) {
  if (value === undefined || value === null) return "–";
  if (Array.isArray(value)) return value.join(", ");
  if (typeof value === "number") return formatNumber(value);
  return String(value);
}

function percent(value) {
  return Number.isFinite(value) ? `${value.toFixed(2)}%` : "–";
}

// Rows after the config: what each run reached. Values are in the runs' units (accuracy in %).
const RESULT_ROWS = [
  ["status", (run) => run.status || "–"],
  ["epochs done", (run) => String(run.epochs.length)],
  ["final train loss", (run) => shown(last(run, "train_loss"))],
  ["final val loss", (run) => shown(last(run, "val_loss"))],
  ["final val acc", (run) => percent(last(run, "val_accuracy"))],
  ["best val loss", (run) => shown(best(run, "val_loss", Math.min))],
  ["best val acc", (run) => percent(best(run, "val_accuracy", Math.max))],
];

function last(run, key) {
  for (let i = run.epochs.length - 1; i >= 0; i -= 1) if (run.epochs[i][key] != null) return run.epochs[i][key];
  return null;
}

function best(run, key, pick) {
  const values = run.epochs.map((e) => e[key]).filter(Number.isFinite);
  return values.length ? pick(...values) : null;
}

export class CompareTable {
  constructor(table) {
    this.table = table;
    this.runs = [];
  }

  show(runs) {
    this.runs = runs;
    markDirty(this);
  }

  // Config fields whose values are not all the same (compared as JSON, so [128] equals [128]).
  differing() {
    const fields = this.fields();
    return fields.filter((f) => new Set(this.runs.map((r) => JSON.stringify(r.config[f] ?? null))).size > 1);
  }

  fields() {
    const names = [];
    for (const run of this.runs) for (const name of Object.keys(run.config)) if (!names.includes(name)) names.push(name);
    return names;
  }

  render() {
    const head = document.createElement("tr");
    head.append(cell("th", "", { scope: "col" }));
    this.runs.forEach((run, i) => {
      const th = cell("th", run.label, { scope: "col", title: run.jobId });
      th.style.borderTop = `3px solid ${colour(i)}`;
      th.dataset.jobId = run.jobId;
      head.append(th);
    });
    const differing = new Set(this.differing());
    const rows = this.fields().map((name) => {
      const row = document.createElement("tr");
      row.dataset.field = name;
      if (differing.has(name)) row.classList.add("differs");
      row.append(cell("th", name, { scope: "row" }));
      for (const run of this.runs) row.append(cell("td", shown(run.config[name])));
      return row;
    });
    const results = RESULT_ROWS.map(([name, value]) => {
      const row = document.createElement("tr");
      row.className = "result";
      row.dataset.result = name;
      row.append(cell("th", name, { scope: "row" }));
      for (const run of this.runs) row.append(cell("td", value(run)));
      return row;
    });
    const thead = document.createElement("thead");
    thead.append(head);
    const tbody = document.createElement("tbody");
    tbody.append(...rows, ...results);
    this.table.replaceChildren(thead, tbody);
  }
}
