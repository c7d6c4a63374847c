"""A job's metrics for export, as JSON rows or as CSV: per epoch from its stored ``epoch`` events
(``level=epoch``, the default), or per step from its stored ``batch`` events (``level=step``).

JSON keeps an epoch event's nesting: each row is ``epoch, train_loss, val_loss, train_accuracy,
val_accuracy, epoch_s, layer_spike_rates {layer: rate}, param_snapshot {layer.param: value}``.
CSV flattens it into one header row and one line per epoch: the six scalar columns, then
``spike_rate.<layer>`` for each layer and ``param.<layer>.<name>`` for each learnable parameter, in the
order they first appear (a missing value is an empty cell). Floats are written in their shortest
round-trip form, so the CSV holds exactly the streamed numbers.

``level=step``: one row per batch event, ``STEP_COLUMNS`` = step, epoch, batch_loss, batch_accuracy, lr,
samples_per_s (the CSV header is exactly these); batch events from before issue 12 lack the step
fields, which come out as null (JSON) or empty cells (CSV).
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any

from service.store import JobRecord

SCALARS = ("epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy", "epoch_s")
NESTED = ("layer_spike_rates", "param_snapshot")
STEP_COLUMNS = ("step", "epoch", "batch_loss", "batch_accuracy", "lr", "samples_per_s")
LEVELS = ("epoch", "step")
CSV_PREFIX = {"layer_spike_rates": "spike_rate.", "param_snapshot": "param."}


def epoch_row(data: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {name: data.get(name) for name in SCALARS}
    for name in NESTED:
        row[name] = dict(data.get(name) or {})
    return row


def as_json(record: JobRecord, epochs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"job_id": record.job_id, "status": record.status, "epochs": [epoch_row(e) for e in epochs]}


def csv_columns(rows: list[dict[str, Any]]) -> list[str]:
    columns = list(SCALARS)
    for name in NESTED:
        keys = dict.fromkeys(key for row in rows for key in row[name])
        columns += [CSV_PREFIX[name] + key for key in keys]
    return columns


def as_csv(epochs: list[dict[str, Any]]) -> str:
    rows = [epoch_row(e) for e in epochs]
    columns = csv_columns(rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180 line ends
    writer.writerow(columns)
    for row in rows:
        flat = {name: row[name] for name in SCALARS}
        for name in NESTED:
            flat.update({CSV_PREFIX[name] + key: value for key, value in row[name].items()})
        writer.writerow([_cell(flat.get(column)) for column in columns])
    return out.getvalue()


def step_row(data: dict[str, Any]) -> dict[str, Any]:
    return {name: data.get(name) for name in STEP_COLUMNS}


def steps_as_json(record: JobRecord, batches: list[dict[str, Any]]) -> dict[str, Any]:
    return {"job_id": record.job_id, "status": record.status, "steps": [step_row(b) for b in batches]}


def steps_as_csv(batches: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(STEP_COLUMNS)
    for data in batches:
        writer.writerow([_cell(data.get(column)) for column in STEP_COLUMNS])
    return out.getvalue()


def csv_filename(job_id: str, level: str = "epoch") -> str:
    suffix = "metrics" if level == "epoch" else f"{level}-metrics"
    return f"snnmon-{re.sub(r'[^A-Za-z0-9_-]', '_', job_id)}-{suffix}.csv"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)
