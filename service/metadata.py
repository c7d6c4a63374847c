"""Run metadata: a job's ``name``, ``tags`` and ``notes``, and the filters over them.

They travel in the start body beside the TrainConfig fields (``split_start_body`` takes them out before
the config is validated) and can be changed later with ``PATCH /api/training/jobs/{id}``. Rules:

- ``name``: one line of 1 to ``NAME_MAX`` characters, surrounding spaces dropped. Left out (or null) at
  start, a job gets a readable default, network-cell-surrogate-N, e.g. ``SpikingNet-LIFCell-atan-3``,
  N one more than the highest such number among the server's jobs.
- ``tags``: up to ``TAGS_MAX`` distinct strings of 1 to ``TAG_MAX`` characters, no commas or control
  characters (a tag is matched whole, case-insensitively, by ``?tag=``).
- ``notes``: free text (several lines allowed) of at most ``NOTES_MAX`` characters.

Every bad field gets its own reason, as a TrainConfig's do.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from service.store import STATUSES, JobRecord
from trainer import catalog

FIELDS = ("name", "tags", "notes")
NAME_MAX = 100  # fits a table column and a chart legend
TAG_MAX = 32
TAGS_MAX = 20
NOTES_MAX = 10_000  # a paragraph or a short lab-book entry, not a file
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_EXCEPT_NEWLINES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class InvalidMetadata(Exception):
    def __init__(self, fields: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in fields.items()))
        self.fields = fields


def split_start_body(body: Any) -> tuple[Any, dict[str, Any]]:
    """(the TrainConfig part of a start body, its metadata fields); a non-object body is left as it is."""
    if not isinstance(body, dict):
        return body, {}
    return ({k: v for k, v in body.items() if k not in FIELDS},
            {k: v for k, v in body.items() if k in FIELDS})


def validate(values: dict[str, Any], *, partial: bool) -> dict[str, Any]:
    """Clean metadata values, or InvalidMetadata naming each bad field. ``partial`` (PATCH): a null name
    is an error rather than "use the default"."""
    cleaned: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for key, value in values.items():
        check = _CHECKS.get(key)
        if check is None:
            errors[str(key)] = f"unknown field; allowed: {', '.join(FIELDS)}"
            continue
        if value is None and key == "name" and not partial:
            continue
        result, reason = check(value)
        if reason:
            errors[key] = reason
        else:
            cleaned[key] = result
    if errors:
        raise InvalidMetadata(errors)
    return cleaned


def _name(value: Any) -> tuple[Any, str | None]:
    if not isinstance(value, str):
        return None, f"must be a string of 1 to {NAME_MAX} characters"
    value = value.strip()
    if not 1 <= len(value) <= NAME_MAX:
        return None, f"must be 1 to {NAME_MAX} characters (got {len(value)})"
    if _CONTROL.search(value):
        return None, "must be one line without control characters"
    return value, None


def _tags(value: Any) -> tuple[Any, str | None]:
    if not isinstance(value, list):
        return None, f"must be a list of up to {TAGS_MAX} strings"
    tags: list[str] = []
    for item in value:
        if not isinstance(item, str):
            return None, "every tag must be a string"
        tag = item.strip()
        if not 1 <= len(tag) <= TAG_MAX or "," in tag or _CONTROL.search(tag):
            return None, f"each tag must be 1 to {TAG_MAX} characters without commas or control characters, " \
                         f"got {item[:40]!r}"
        if tag.lower() not in (t.lower() for t in tags):
            tags.append(tag)
    if len(tags) > TAGS_MAX:
        return None, f"at most {TAGS_MAX} tags (got {len(tags)})"
    return tags, None


def _notes(value: Any) -> tuple[Any, str | None]:
    if not isinstance(value, str):
        return None, f"must be a string of at most {NOTES_MAX} characters"
    if len(value) > NOTES_MAX:
        return None, f"must be at most {NOTES_MAX} characters (got {len(value)})"
    if _CONTROL_EXCEPT_NEWLINES.search(value):
        return None, "must not contain control characters other than newlines and tabs"
    return value, None


_CHECKS = {"name": _name, "tags": _tags, "notes": _notes}


def default_name(config: dict[str, Any], records: Iterable[JobRecord]) -> str:
    """network-cell-surrogate-N, N one more than the highest in use (e.g. SpikingNet-LIFCell-atan-3)."""
    surrogate = _short_surrogate(str(config.get("surrogate")))
    prefix = f"{config.get('network')}-{config.get('cell_type')}-{surrogate}-"
    numbers = [int(r.name[len(prefix):]) for r in records
               if r.name.startswith(prefix) and r.name[len(prefix):].isdigit()]
    return f"{prefix}{max(numbers, default=0) + 1}"


def _short_surrogate(name: str) -> str:
    """A surrogate's first alias ("atan" for atan_surrogate), else its name."""
    for spec in catalog.SURROGATES:
        if spec.name == name:
            return (spec.aliases or (spec.name,))[0]
    return name


# -- filters for GET /api/training/jobs

def parse_filters(query: Any) -> dict[str, Any]:
    """``status`` (comma-separated statuses), ``tag`` (repeatable: all must match) and ``q`` (text in the
    name, tags, notes or job id), from a request's query; InvalidMetadata names a bad one."""
    errors: dict[str, str] = {}
    statuses = [s for value in query.getall("status", []) for s in value.split(",") if s]
    unknown = [s for s in statuses if s not in STATUSES]
    if unknown:
        errors["status"] = f"unknown status {unknown[0][:20]!r}; allowed: {', '.join(STATUSES)}"
    tags = [t.strip().lower() for t in query.getall("tag", []) if t.strip()]
    text = query.get("q", "").strip().lower()
    if errors:
        raise InvalidMetadata(errors)
    return {"statuses": set(statuses), "tags": tags, "text": text}


def matches(record: JobRecord, statuses: set[str], tags: list[str], text: str) -> bool:
    if statuses and record.status not in statuses:
        return False
    own_tags = {t.lower() for t in record.tags}
    if any(tag not in own_tags for tag in tags):
        return False
    if text:
        haystack = "\n".join((record.name, record.job_id, record.notes, *record.tags)).lower()
        return text in haystack
    return True
