"""``deploy/snnmon.service``: systemd accepts it, and its hardening and stop timing are what the README says."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "snnmon.service"
INSTALLED_SNNMON = "/opt/snnmon/.venv/bin/snnmon"
SHUTDOWN_MARGIN_S = 5  # snnmon exits within --stop-grace + 5 s (README, Persistence and shutdown)


def directives() -> dict[str, list[str]]:
    """Each [Service] key's values, in order (a key may repeat, like Environment=)."""
    values: dict[str, list[str]] = {}
    section = None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_systemd_analyze_verify_passes(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here (Debian: apt-get install systemd); "
                    "the unit's options are still checked by the other tests in this file")
    # verify checks that ExecStart's program exists: point it at this venv's snnmon (the only change)
    text = UNIT.read_text()
    assert text.count(INSTALLED_SNNMON) == 1
    snnmon = Path(sys.executable).parent / "snnmon"
    if not snnmon.exists():
        snnmon = Path(sys.executable)
    unit = tmp_path / "snnmon.service"
    unit.write_text(text.replace(INSTALLED_SNNMON, str(snnmon)))
    done = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if "snnmon.service" in line]
    assert done.returncode == 0 and complaints == [], done.stdout + done.stderr


def test_hardening_options_are_set_and_the_data_directory_stays_writable():
    service = directives()
    for key, wanted in (("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"), ("ProtectSystem", "strict"),
                        ("ProtectHome", "yes")):
        assert service.get(key) == [wanted], key
    assert int(service["LimitNOFILE"][0]) >= 4096
    environment = dict(item.split("=", 1) for item in service["Environment"])
    data_dir = environment["SNNMON_DATA_DIR"]
    writable = service.get("ReadWritePaths", []) + [f"/var/lib/{name}" for name in service.get("StateDirectory", [])]
    assert data_dir in writable


def test_systemd_waits_long_enough_for_a_graceful_stop():
    service = directives()
    environment = dict(item.split("=", 1) for item in service["Environment"])
    stop_grace = float(environment["SNNMON_STOP_GRACE"])
    assert service["KillMode"] == ["mixed"]  # SIGTERM to snnmon alone: it stops its workers itself
    assert service["KillSignal"] == ["SIGTERM"]
    assert float(service["TimeoutStopSec"][0]) > stop_grace + SHUTDOWN_MARGIN_S
