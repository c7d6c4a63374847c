"""The service contract on both job backends, without copying tests, and small Ray clusters for tests.

A contract test module imports ``backend_flags`` from here; it replaces the conftest fixture of that
name, so every server the module's ``server_factory`` starts runs its jobs in worker processes (the
``process`` variant) or as Ray actors on one small local cluster the module shares (the ``ray`` variant,
``--backend ray --ray-address``). Ray takes seconds to start, so each module starts it once.

``ray_cluster(...)`` starts a ``ray.cluster_utils.Cluster`` kept small for the 2-core CI machine: the
object store capped, usage stats off, no dashboard, and node failures noticed within about a second.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

OBJECT_STORE_BYTES = 100 << 20  # Ray's minimum is about 75 MiB; events are small
# Node failure noticed after about 3 missed 0.5 s health checks (the default waits about 15 s).
FAST_FAILURE_DETECTION = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                          "health_check_initial_delay_ms": 0}


def ray_cluster(head_cpus: int, head_resources: dict[str, float] | None = None) -> Any:
    """A local Ray cluster with only its head node; skips (saying why) where Ray is not installed."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'snn-training-monitor[ray]' "
                                      "(make test installs it)")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    from ray.cluster_utils import Cluster

    return Cluster(initialize_head=True, head_node_args={
        "num_cpus": head_cpus, "resources": head_resources or {}, "object_store_memory": OBJECT_STORE_BYTES,
        "include_dashboard": False, "_system_config": FAST_FAILURE_DETECTION})


@pytest.fixture(scope="module", params=["process", "ray"])
def backend_flags(request: pytest.FixtureRequest):
    """``snnmon serve`` flags for one backend; the ray variant shares one cluster per module."""
    if request.param == "process":
        yield ()
        return
    cluster = ray_cluster(head_cpus=4)  # room for the contract tests' two concurrent jobs
    try:
        yield ("--backend", "ray", "--ray-address", cluster.address)
    finally:
        cluster.shutdown()
