"""The SQLite job store, the metrics export format and the access settings, on their own (no server).

The store runs for real on a temporary data directory: its writer thread, its reader threads, its file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import sqlite3

import pytest

from service import metrics
from service import settings as service_settings
from service.events import EventChannel
from service.sqlite_store import SQLiteJobStore
from service.store import JobRecord, StoredEvent, StoreError

pytestmark = pytest.mark.timeout(30)


def _rows(path, sql: str, *params) -> list[tuple]:
    """Read the database file with a connection of its own, as another process would."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        return connection.execute(sql, params).fetchall()


def test_records_and_events_survive_closing_and_reopening(tmp_path):
    async def write_then_read():
        store = SQLiteJobStore(tmp_path)
        assert await store.open() == []
        record = JobRecord("a1", {"epochs": 2}, epochs=2, status="running")
        store.put_job(JobRecord("b2", {"epochs": 1}))
        channel = EventChannel("a1", store)
        sent = []
        for name, data in (("config", {"seed": 1}), ("epoch", {"epoch": 0, "val_accuracy": 0.5}),
                           ("completed", {"val_accuracy": 0.5})):
            record.apply(name, data, now=123.0)
            sent.append(channel.append(name, data, record))
        await channel.wait_published()
        await store.close()

        reopened = SQLiteJobStore(tmp_path)
        loaded = await reopened.open()
        replay = await reopened.events_after("a1", 0, 100)
        tail = await reopened.events_after("a1", 2, 100)
        epochs = await reopened.events_named("a1", "epoch")
        await reopened.close()
        return record, sent, loaded, replay, tail, epochs

    record, sent, loaded, replay, tail, epochs = asyncio.run(write_then_read())
    assert [job.record.job_id for job in loaded] == ["a1", "b2"]  # oldest first
    assert loaded[0].record == record and loaded[0].head_seq == 3
    assert loaded[0].record.status == "completed" and loaded[0].record.finished_at == 123.0
    assert loaded[1].head_seq == 0 and loaded[1].record.status == "queued"
    assert replay == sent  # seq, name, the frame's exact bytes and the numbering time
    assert tail == sent[2:] and epochs == [sent[1]]


def test_an_event_is_committed_before_any_subscriber_sees_it(tmp_path):
    async def scenario():
        store = SQLiteJobStore(tmp_path)
        await store.open()
        record = JobRecord("j", {})
        channel = EventChannel("j", store)
        subscriber = channel.subscribe(0, capacity=64)
        assert await subscriber.next_event(timeout=0.05) is None  # caught up: following live
        stored_when_seen = []
        for i in range(20):
            channel.append("batch", {"batch": i}, record)
            assert channel.published_seq < channel.head_seq  # numbered, not yet published
            event = await subscriber.next_event(timeout=5)
            stored_when_seen.append(_rows(store.path, "SELECT seq FROM events WHERE job_id = 'j' AND seq = ?",
                                          event.seq) == [(event.seq,)])
        await store.close()
        return stored_when_seen

    assert all(asyncio.run(scenario()))


def test_a_failed_write_fails_alone_and_health_returns_with_the_next_successful_one(tmp_path):
    async def scenario():
        store = SQLiteJobStore(tmp_path)
        await store.open()
        record = JobRecord("j", {})
        first = StoredEvent.encode(1, "config", {})
        await store.append_event("j", first, record)
        assert store.healthy
        # queued back to back (one batch, as a rule): the duplicate seq must not sink the other write
        duplicate = store.append_event("j", StoredEvent.encode(1, "batch", {}), record)
        good = store.append_event("j", StoredEvent.encode(2, "batch", {}), record)
        results = await asyncio.gather(duplicate, good, return_exceptions=True)
        failing_alone = await asyncio.gather(store.append_event("j", first, record), return_exceptions=True)
        health = [store.healthy]
        await store.append_event("j", StoredEvent.encode(3, "batch", {}), record)
        health.append(store.healthy)
        await store.close()
        return results, failing_alone[0], health

    (duplicate, good), failing_alone, health = asyncio.run(scenario())
    assert isinstance(duplicate, StoreError) and "could not save" in str(duplicate)
    assert "IntegrityError" in str(failing_alone)  # the log and the error name the real cause
    assert good is None and health == [False, True]
    stored = _rows(tmp_path / "jobs.sqlite3", "SELECT seq, event FROM events ORDER BY seq")
    assert stored == [(1, "config"), (2, "batch"), (3, "batch")]


def test_delete_removes_the_record_and_every_event(tmp_path):
    async def scenario():
        store = SQLiteJobStore(tmp_path)
        await store.open()
        for job in ("keep", "drop"):
            record = JobRecord(job, {})
            for seq in (1, 2):
                store.append_event(job, StoredEvent.encode(seq, "batch", {}), record)
        await store.delete_job("drop")
        await store.close()

    asyncio.run(scenario())
    path = tmp_path / "jobs.sqlite3"
    assert _rows(path, "SELECT job_id FROM jobs") == [("keep",)]
    assert _rows(path, "SELECT DISTINCT job_id FROM events") == [("keep",)]


def test_one_data_directory_serves_one_server(tmp_path):
    async def scenario():
        first = SQLiteJobStore(tmp_path)
        await first.open()
        with pytest.raises(StoreError, match="another snnmon serve is using"):
            await SQLiteJobStore(tmp_path).open()
        await first.close()
        after = SQLiteJobStore(tmp_path)  # released on close
        await after.open()
        await after.close()

    asyncio.run(scenario())


def test_an_unusable_data_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot use data directory .*--data-dir"):
        asyncio.run(SQLiteJobStore(blocker / "data").open())


def test_csv_flattens_each_epoch_into_one_line():
    epochs = [
        {"epoch": 0, "train_loss": 1.25, "val_loss": 0.1 + 0.2, "train_accuracy": 0.5, "val_accuracy": 0.625,
         "epoch_s": 2.0, "layer_spike_rates": {"lif1": 0.125}, "param_snapshot": {}},
        {"epoch": 1, "train_loss": 0.75, "val_loss": None, "train_accuracy": 0.75, "val_accuracy": 0.875,
         "epoch_s": 1.5, "layer_spike_rates": {"lif1": 0.25, "lif2": 0.0625},
         "param_snapshot": {"lif1.beta": 0.875}, "extra": "ignored"},
    ]
    text = metrics.as_csv(epochs)
    assert text.split("\r\n")[0] == ("epoch,train_loss,val_loss,train_accuracy,val_accuracy,epoch_s,"
                                     "spike_rate.lif1,spike_rate.lif2,param.lif1.beta")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert float(rows[0]["val_loss"]) == 0.1 + 0.2  # shortest round-trip form, not rounded
    assert rows[0]["spike_rate.lif2"] == "" and rows[0]["param.lif1.beta"] == ""
    assert rows[1]["val_loss"] == "" and rows[1]["param.lif1.beta"] == "0.875"
    assert metrics.as_csv([]) == "epoch,train_loss,val_loss,train_accuracy,val_accuracy,epoch_s\r\n"
    assert "extra" not in metrics.epoch_row(epochs[1])
    assert metrics.csv_filename('a"b/c') == "snnmon-a_b_c-metrics.csv"


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    service_settings.add_serve_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_access_settings_from_flags_and_variables():
    environ = {"SNNMON_TOKEN": "from-env", "SNNMON_CORS_ORIGIN": "https://a.example, http://b.example:8000/",
               "SNNMON_KEEP_JOBS": "5"}
    settings = service_settings.settings_from(_parse(), environ)
    assert settings.token == "from-env" and settings.keep_jobs == 5
    assert settings.cors_origins == ("https://a.example", "http://b.example:8000")
    flags = _parse("--token", "flag", "--cors-origin", "https://c.example", "--cors-origin", "*", "--insecure")
    settings = service_settings.settings_from(flags, environ)
    assert settings.token == "flag" and settings.cors_origins == ("https://c.example", "*") and settings.insecure
    defaults = service_settings.settings_from(_parse(), {})
    assert defaults.token is None and defaults.cors_origins == () and defaults.keep_jobs == 1000
    assert not defaults.insecure


def test_bad_access_settings_are_refused_without_echoing_a_token():
    with pytest.raises(ValueError, match="SNNMON_CORS_ORIGIN='studio.example'"):
        service_settings.settings_from(_parse(), {"SNNMON_CORS_ORIGIN": "studio.example"})
    with pytest.raises(ValueError) as bad_token:
        service_settings.settings_from(_parse(), {"SNNMON_TOKEN": "has a space"})
    assert "has a space" not in str(bad_token.value) and "SNNMON_TOKEN" in str(bad_token.value)
    with pytest.raises(SystemExit):
        _parse("--cors-origin", "https://x.example/path")


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("", False), ("192.168.1.5", False), ("myhost.example", False),
])
def test_only_loopback_may_go_without_a_token(host, loopback):
    assert service_settings.is_loopback(host) is loopback
    open_server = service_settings.Settings(host=host)
    problem = service_settings.access_problem(open_server)
    assert (problem is None) is loopback
    assert service_settings.access_problem(service_settings.Settings(host=host, token="t")) is None
    assert service_settings.access_problem(service_settings.Settings(host=host, insecure=True)) is None


def test_store_sync_is_full_unless_the_operator_picks_normal(tmp_path):
    """``--store-sync`` / ``SNNMON_STORE_SYNC`` reach the SQLite connections the server's store opens:
    FULL (2) fsyncs each commit, NORMAL (1) leaves a power cut's last commits to chance."""
    from service import api
    from service.app import create_app

    assert service_settings.settings_from(_parse(), {}).store_sync == "full"
    assert service_settings.settings_from(_parse(), {"SNNMON_STORE_SYNC": "NORMAL"}).store_sync == "normal"
    assert service_settings.settings_from(_parse("--store-sync", "normal"), {"SNNMON_STORE_SYNC": "full"}
                                          ).store_sync == "normal"
    with pytest.raises(ValueError, match="SNNMON_STORE_SYNC='off'.*must be full or normal"):
        service_settings.settings_from(_parse(), {"SNNMON_STORE_SYNC": "off"})

    async def synchronous_level(mode: str) -> int:
        app = create_app(service_settings.Settings(data_dir=str(tmp_path / mode), store_sync=mode))
        store = app[api.STORE]
        (tmp_path / mode).mkdir()
        await store.open()
        try:
            return await store._read(lambda connection: connection.execute("PRAGMA synchronous").fetchone()[0])
        finally:
            await store.close()

    assert asyncio.run(synchronous_level("full")) == 2
    assert asyncio.run(synchronous_level("normal")) == 1
