"""``snnmon train`` from a subprocess, as a user runs it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SNNMON = [sys.executable, "-m", "service.cli"]
ROOT = Path(__file__).resolve().parents[2]


def snnmon(*args, **kwargs):
    return subprocess.run([*SNNMON, *args], capture_output=True, text=True, cwd=ROOT, timeout=240, **kwargs)


def test_json_lines_end_in_completed():
    done = snnmon("train", "--epochs", "1", "--hidden", "32", "--timesteps", "5", "--seed", "3",
                  "--device", "cpu", "--json")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["event"] for e in events][0] == "config"
    assert events[-1]["event"] == "completed"
    assert {"epoch", "batch"} <= {e["event"] for e in events}
    assert events[0]["data"]["config"]["hidden"] == [32]


def test_progress_output_has_epoch_summary_and_result():
    done = snnmon("train", "--epochs", "1", "--hidden", "32", "--timesteps", "5", "--seed", "3",
                  "--surrogate", "ste")
    assert done.returncode == 0, done.stderr
    assert "epoch 1: train loss" in done.stdout
    assert "completed in" in done.stdout
    assert "straight_through" in done.stdout


def test_bad_flags_exit_2_with_the_api_reasons():
    done = snnmon("train", "--epochs", "0", "--batch-size", "many", "--surrogate", "nope")
    assert done.returncode == 2
    assert "--epochs: must be an integer between 1 and 100 inclusive" in done.stderr
    assert "--batch-size: must be an integer, got string" in done.stderr
    assert "--surrogate: unknown value 'nope'" in done.stderr and "atan_surrogate" in done.stderr


def test_ctrl_c_stops_at_the_next_batch_and_reports_stopped():
    proc = subprocess.Popen([*SNNMON, "train", "--epochs", "50", "--hidden", "64", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until training is under way
            line = proc.stdout.readline()
            lines.append(line)
            if '"event": "batch"' in line:
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    events = [json.loads(line) for line in (lines + out.splitlines()) if line.strip()]
    assert proc.returncode == 3, err  # exit code 3: stopped
    assert events[-1]["event"] == "stopped"
    assert events[-1]["data"]["forced"] is False
    assert "stopping at the next batch" in err


def test_help_lists_every_field_and_the_cells():
    done = snnmon("train", "--help")
    assert done.returncode == 0
    for flag in ("--cell-type", "--learn-beta", "--batch-size", "--hidden", "--encoding", "SynapticCell",
                 "atan_surrogate"):
        assert flag in done.stdout


def test_a_second_ctrl_c_exits_at_once_without_a_traceback():
    # batches of a wide, long network take a while, so the second Ctrl-C lands before the stop
    proc = subprocess.Popen([*SNNMON, "train", "--epochs", "50", "--hidden", "2048", "--timesteps", "100",
                             "--batch-size", "512", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and '"event": "batch"' not in proc.stdout.readline():
            pass
        proc.send_signal(signal.SIGINT)
        # two signals before Python runs its handler would count as one: wait for the first to land
        first = ""
        while time.monotonic() < deadline and "stopping at the next batch" not in first:
            first = proc.stderr.readline()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "aborted" in err and "Traceback" not in err


def test_help_shows_bounds_as_written_and_a_fraction_is_not_an_integer():
    shown = " ".join(snnmon("train", "--help").stdout.split())  # argparse wraps lines
    assert "0 to 4294967295" in shown and "e+09" not in shown
    done = snnmon("train", "--timesteps", "2.5")
    assert done.returncode == 2
    assert "--timesteps: must be an integer, got 2.5" in done.stderr
