"""The service's parts on their own, no server: a subscriber's bounded buffer and replay hand-off (on a
real SQLite store), settings from flags and variables, device placement, exit descriptions, frames,
worker messages."""

from __future__ import annotations

import argparse
import asyncio
import signal

import orjson
import pytest

from snnmon_client import event_channel

from service import settings as service_settings
from service.backend import ExitStatus
from service.devices import DevicePool, count_visible
from service.errors import InvalidConfig
from service.events import heartbeat_frame
from service.store import StoredEvent
from trainer.worker import MESSAGE_LIMIT, one_line_message

pytestmark = pytest.mark.timeout(30)


async def _drain(subscriber, limit: int = 10_000) -> list[StoredEvent]:
    out = []
    while len(out) < limit:
        event = await subscriber.next_event(timeout=0.05)
        if event is None:
            break
        out.append(event)
    return out


def test_a_slow_subscriber_skips_batches_but_never_epochs_or_the_end(tmp_path):
    async def scenario():
        async with event_channel(tmp_path) as (channel, record):
            channel.append("config", {"n": 0}, record)
            subscriber = channel.subscribe(0, capacity=8)
            assert [e.event for e in await _drain(subscriber)] == ["config"]  # caught up: now live
            for epoch in range(5):
                for batch in range(20):
                    channel.append("batch", {"epoch": epoch, "batch": batch}, record)
                channel.append("epoch", {"epoch": epoch}, record)
            channel.append("completed", {}, record)
            await channel.wait_published()  # every offer made before the subscriber reads one
            return subscriber, await _drain(subscriber)

    subscriber, received = asyncio.run(scenario())
    names = [e.event for e in received]
    assert names.count("epoch") == 5 and names[-1] == "completed"
    assert names.count("batch") < 100 and subscriber.dropped == 100 - names.count("batch")
    assert len(received) <= 8 + 6  # the buffer's bound: capacity plus the undroppable events
    seqs = [e.seq for e in received]
    assert seqs == sorted(seqs) and received[-1].seq == 2 + 5 * 21  # in order, up to the end
    assert subscriber.ended


def test_a_subscriber_that_keeps_up_misses_nothing_across_the_replay_hand_off(tmp_path):
    async def scenario():
        async with event_channel(tmp_path) as (channel, record):
            for i in range(600):  # more than two replay pages
                channel.append("batch", {"i": i}, record)
            await channel.wait_published()  # committed: the replay reads them from the store
            subscriber = channel.subscribe(0, capacity=4)
            received = []
            for i in range(600, 700):  # live events arrive while the replay is under way
                received.append(await subscriber.next_event(timeout=5))
                channel.append("batch", {"i": i}, record)
                # one commit at a time, as a job's events come: a flood of more than the capacity
                # committed at once would be offered at once, and batch events would be skipped
                await channel.wait_published()
            channel.append("completed", {}, record)
            received += await _drain(subscriber)
            return channel, received

    channel, received = asyncio.run(scenario())
    assert [e.seq for e in received] == list(range(1, 702))
    assert channel.subscriber_count == 0  # the ended subscriber left the channel


def test_a_subscriber_after_the_end_replays_and_stops(tmp_path):
    async def scenario():
        async with event_channel(tmp_path) as (channel, record):
            for name in ("config", "batch", "epoch", "completed"):
                channel.append(name, {}, record)
            await channel.wait_published()
            full = await _drain(channel.subscribe(0, 8))
            resumed = await _drain(channel.subscribe(2, 8))
            past_end = channel.subscribe(4, 8)
            return full, resumed, await past_end.next_event(timeout=5), past_end.ended

    full, resumed, nothing, ended = asyncio.run(scenario())
    assert [e.seq for e in full] == [1, 2, 3, 4] and [e.seq for e in resumed] == [3, 4]
    assert nothing is None and ended


def test_nothing_follows_the_terminal_event(tmp_path):
    async def scenario():
        async with event_channel(tmp_path) as (channel, record):
            channel.append("stopped", {"epoch": 0, "forced": False}, record)
            with pytest.raises(RuntimeError):
                channel.append("batch", {}, record)

    asyncio.run(scenario())


def test_a_job_deleted_as_it_ends_still_ends_its_live_streams_then_replays_nothing(tmp_path):
    async def scenario():
        async with event_channel(tmp_path) as (channel, record):
            channel.append("config", {}, record)
            live = channel.subscribe(0, capacity=8)
            assert [e.event for e in await _drain(live)] == ["config"]  # following live
            channel.append("completed", {}, record)
            channel.delete()  # pruned at once: the terminal event is still being committed
            channel.store.delete_job("job1")
            got = await _drain(live)
            await channel.wait_published()
            await channel.store.flush()
            late = channel.subscribe(0, capacity=8)
            return got, live.ended, await late.next_event(timeout=5), late.ended

    got, live_ended, late_event, late_ended = asyncio.run(scenario())
    assert [e.event for e in got] == ["completed"] and live_ended
    assert late_event is None and late_ended  # a replay of a deleted job ends at once


def test_frames_are_encoded_once_as_id_and_data_lines():
    event = StoredEvent.encode(7, "epoch", {"epoch": 1, "val_loss": float("nan")})
    assert event.frame == b'id: 7\ndata: {"event":"epoch","data":{"epoch":1,"val_loss":null}}\n\n'
    assert orjson.loads(event.payload) == {"event": "epoch", "data": {"epoch": 1, "val_loss": None}}
    assert event.data == {"epoch": 1, "val_loss": None}
    beat = heartbeat_frame()
    assert beat.startswith(b"data: ") and b"id:" not in beat and beat.endswith(b"\n\n")


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    service_settings.add_serve_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_settings_flags_beat_variables_which_beat_defaults():
    environ = {"SNNMON_PORT": "9000", "SNNMON_MAX_CONCURRENT": "3", "SNNMON_ALLOW_DOWNLOAD": "false"}
    settings = service_settings.settings_from(_parse("--port", "9100", "--stop-grace", "2.5"), environ)
    assert settings.port == 9100 and settings.max_concurrent == 3 and settings.stop_grace_s == 2.5
    assert settings.allow_download is False and settings.heartbeat_s == 15.0
    assert service_settings.settings_from(_parse("--allow-download"), environ).allow_download is True
    assert _parse().handler is service_settings.run_serve


def test_a_bad_variable_names_itself():
    with pytest.raises(ValueError, match="SNNMON_MAX_CONCURRENT='0'"):
        service_settings.settings_from(_parse(), {"SNNMON_MAX_CONCURRENT": "0"})
    with pytest.raises(SystemExit):
        _parse("--heartbeat", "-1")


def test_threads_per_cpu_job_split_the_cores():
    settings = service_settings.Settings(max_concurrent=2, cpu_threads=0)
    assert settings.threads_per_cpu_job() >= 1
    assert service_settings.Settings(cpu_threads=3).threads_per_cpu_job() == 3


def test_auto_takes_the_least_loaded_gpu_or_the_cpu():
    pool = DevicePool(gpu_count=2)
    assert [pool.acquire("auto") for _ in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]
    pool.release("cuda:1")
    assert pool.acquire("cuda") == "cuda:1"
    assert pool.acquire("cuda:1") == "cuda:1" and pool.acquire("cpu") == "cpu"
    assert pool.load() == {"cuda:0": 2, "cuda:1": 2, "cpu": 1}
    assert DevicePool(gpu_count=0).acquire("auto") == "cpu"


def test_devices_the_server_cannot_provide_are_config_errors():
    with pytest.raises(InvalidConfig) as no_gpu:
        DevicePool(gpu_count=0).check("cuda")
    assert "no CUDA GPU" in no_gpu.value.extra["fields"]["device"]
    with pytest.raises(InvalidConfig, match="cuda:0 to cuda:1"):
        DevicePool(gpu_count=2).check("cuda:2")


@pytest.mark.parametrize("visible, expected", [
    (None, 4), ("", 0), ("-1", 0), ("1,3", 2), ("0,7,1", 1), ("GPU-8f6e2c1a-1111-2222-3333-444455556666", 1),
    ("2, 0", 2), ("0,,1", 1),
])
def test_cuda_visible_devices_is_read_as_cuda_does(visible, expected):
    assert count_visible(4, visible) == expected


def test_no_driver_means_no_gpu():
    assert count_visible(0, "0,1") == 0


def test_exit_descriptions_name_the_signal_or_code():
    assert "SIGKILL" in ExitStatus(-signal.SIGKILL).describe()
    assert "out of memory" in ExitStatus(-signal.SIGKILL).describe()
    assert "SIGSEGV" in ExitStatus(-signal.SIGSEGV).describe()
    assert "code 3" in ExitStatus(3).describe()


def test_worker_errors_become_one_line():
    assert one_line_message(RuntimeError("bad thing\n  at line 2"), "cpu") == "RuntimeError: bad thing"
    assert one_line_message(KeyError(), "cpu") == "KeyError"
    assert len(one_line_message(ValueError("x" * 5000), "cpu")) <= MESSAGE_LIMIT
    from trainer.mnist import MnistUnavailable

    assert one_line_message(MnistUnavailable("MNIST files missing in /d; run snnmon data"), "cpu") == \
        "MNIST files missing in /d; run snnmon data"
