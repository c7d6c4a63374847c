"""Run metadata rules, default names, filters, and the record's warnings, on their own (no server)."""

from __future__ import annotations

import pytest
from multidict import MultiDict

from service import metadata, metrics
from service.store import WARNINGS_KEPT, JobRecord

CONFIG = {"network": "SpikingNet", "cell_type": "LIFCell", "surrogate": "atan_surrogate"}


def test_start_body_is_split_into_config_and_metadata():
    config, info = metadata.split_start_body({"lr": 0.01, "name": "a", "tags": [], "notes": ""})
    assert config == {"lr": 0.01} and info == {"name": "a", "tags": [], "notes": ""}
    assert metadata.split_start_body([1]) == ([1], {})


@pytest.mark.parametrize("values, field", [
    ({"name": ""}, "name"), ({"name": "  "}, "name"), ({"name": "a\nb"}, "name"), ({"name": 3}, "name"),
    ({"name": "x" * (metadata.NAME_MAX + 1)}, "name"),
    ({"tags": "a"}, "tags"), ({"tags": [1]}, "tags"), ({"tags": ["a,b"]}, "tags"), ({"tags": [""]}, "tags"),
    ({"tags": ["x" * (metadata.TAG_MAX + 1)]}, "tags"),
    ({"tags": [f"t{i}" for i in range(metadata.TAGS_MAX + 1)]}, "tags"),
    ({"notes": None}, "notes"), ({"notes": "x" * (metadata.NOTES_MAX + 1)}, "notes"), ({"notes": "\x00"}, "notes"),
    ({"colour": "red"}, "colour"),
])
def test_bad_values_name_their_field(values, field):
    with pytest.raises(metadata.InvalidMetadata) as caught:
        metadata.validate(values, partial=True)
    assert list(caught.value.fields) == [field]


def test_good_values_are_cleaned():
    cleaned = metadata.validate({"name": " run 1 ", "tags": [" a", "B", "b", "a "], "notes": "x\n\ty"},
                                partial=True)
    assert cleaned == {"name": "run 1", "tags": ["a", "B"], "notes": "x\n\ty"}
    assert metadata.validate({"name": None}, partial=False) == {}  # at start: the default name
    with pytest.raises(metadata.InvalidMetadata):
        metadata.validate({"name": None}, partial=True)


def test_default_names_count_on_per_network_cell_and_surrogate():
    records = [JobRecord("a", CONFIG, name="SpikingNet-LIFCell-atan-2"),
               JobRecord("b", CONFIG, name="SpikingNet-LIFCell-atan-x"),
               JobRecord("c", {**CONFIG, "cell_type": "IFCell"}, name="SpikingNet-IFCell-atan-7")]
    assert metadata.default_name(CONFIG, records) == "SpikingNet-LIFCell-atan-3"
    assert metadata.default_name(CONFIG, []) == "SpikingNet-LIFCell-atan-1"
    assert metadata.default_name({**CONFIG, "surrogate": "fast_sigmoid"}, records) == \
        "SpikingNet-LIFCell-fast_sigmoid-1"


def test_filters():
    record = JobRecord("abc123", CONFIG, status="completed", name="LIF baseline", tags=["Keep", "lif"],
                       notes="lr sweep")
    def match(**query):
        return metadata.matches(record, **metadata.parse_filters(MultiDict(query)))
    assert match() and match(status="running,completed") and not match(status="running")
    assert match(tag="keep") and not match(tag="other") and match(q="SWEEP") and match(q="abc1")
    assert not match(q="nothing")
    both = MultiDict([("tag", "keep"), ("tag", "lif")])
    assert metadata.matches(record, **metadata.parse_filters(both))
    with pytest.raises(metadata.InvalidMetadata) as caught:
        metadata.parse_filters(MultiDict(status="done"))
    assert "status" in caught.value.fields


def test_records_keep_warnings_up_to_a_bound_and_old_records_load():
    record = JobRecord("a", CONFIG)
    for epoch in range(WARNINGS_KEPT + 5):
        record.apply("warning", {"kind": "silent_layer", "layer": "lifs.0", "message": "m", "epoch": epoch}, 1.0)
    assert len(record.warnings) == WARNINGS_KEPT and record.warnings[0]["epoch"] == 0
    old = JobRecord.from_dict({"job_id": "old", "config": CONFIG, "status": "completed"})  # before issue 12
    assert (old.name, old.tags, old.notes, old.warnings) == ("", [], "", [])


def test_step_rows_csv_has_the_documented_header():
    batches = [{"epoch": 0, "batch": 3, "step": 4, "batch_loss": 0.5, "batch_accuracy": 0.75, "lr": 0.001,
                "samples_per_s": 1000.5, "loss": 0.6, "accuracy": 0.7, "n_batches": 10},
               {"epoch": 0, "batch": 9, "loss": 0.6}]  # a batch event from before issue 12
    lines = metrics.steps_as_csv(batches).split("\r\n")
    assert lines[0] == "step,epoch,batch_loss,batch_accuracy,lr,samples_per_s"
    assert lines[1] == "4,0,0.5,0.75,0.001,1000.5" and lines[2] == ",0,,,," and lines[3] == ""
