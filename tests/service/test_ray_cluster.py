"""The Ray backend on a cluster of three nodes on this machine (``ray.cluster_utils.Cluster``): a head
that runs nothing and two nodes with one CPU and one (fake) GPU each, so one job fits a node.

Two jobs land on different nodes and their records say which; a third waits ``queued`` until a node
has room; removing one node while its job runs ends that job ``failed`` naming the lost node, while the
job on the other node completes and the queued one then runs there. A node without the MNIST files
fails its job with the trainer's missing-files message. Also: ``--backend ray`` without Ray
installed exits 2 with the install command, and each job's actor asks Ray for the job's resources.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import aiohttp
import pytest

from backends import OBJECT_STORE_BYTES, ray_cluster
from snnmon_client import small_job, start_job, wait_for_status

pytestmark = pytest.mark.timeout(240)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LONG = {"epochs": 100, "batch_size": 16}  # minutes of training: ends only when its node goes
SHORT = {"epochs": 3}  # seconds: still running when the other node is removed


@pytest.fixture(scope="module")
def cluster():
    cluster = ray_cluster(head_cpus=0)
    nodes = [cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=OBJECT_STORE_BYTES) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        yield cluster, nodes
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def backend_flags(cluster):
    return ("--backend", "ray", "--ray-address", cluster[0].address)


@pytest.fixture(scope="module")
def server(server_factory):
    return server_factory("--cpu-threads", "1", "--max-concurrent", "3", "--stop-grace", "1",
                          "--no-allow-download")


def test_a_job_on_a_node_without_the_mnist_files_fails_with_the_missing_files_message(server):
    async def scenario():
        async with aiohttp.ClientSession() as session:
            job_id = await start_job(session, server.base_url, **small_job(dataset="mnist", device="cpu"))
            return await wait_for_status(session, server.base_url, job_id, lambda s: s in ("failed", "completed"),
                                         timeout=90)

    record = asyncio.run(scenario())
    assert record["status"] == "failed" and record["node"] is not None
    assert "MNIST files not found" in record["error"] and str(server.data_dir) in record["error"]


def test_jobs_spread_over_nodes_queue_for_room_and_survive_a_lost_node(server, cluster):
    ray_cluster_, nodes = cluster
    url = server.base_url

    async def scenario():
        async with aiohttp.ClientSession() as session:
            # device cpu: the nodes' GPUs are a resource count only (this machine has none)
            doomed = await start_job(session, url, **small_job(seed=701, device="cpu", **LONG))
            doomed_running = await wait_for_status(session, url, doomed, lambda s: s == "running", timeout=60)
            survivor = await start_job(session, url, **small_job(seed=702, device="cpu", **SHORT))
            survivor_running = await wait_for_status(session, url, survivor, lambda s: s == "running", timeout=60)
            waiting = await start_job(session, url, **small_job(seed=703, device="cpu", epochs=1))
            waiting_before = await wait_for_status(session, url, waiting, lambda s: s == "queued", timeout=10)
            lost = next(node for node in nodes if node.node_id == doomed_running["node"])
            removed_at = time.time()
            await asyncio.to_thread(ray_cluster_.remove_node, lost, False)
            doomed_final = await wait_for_status(session, url, doomed, lambda s: s in ("failed", "completed"),
                                                 timeout=60)
            survivor_final = await wait_for_status(session, url, survivor, lambda s: s in ("failed", "completed"),
                                                   timeout=90)
            waiting_final = await wait_for_status(session, url, waiting, lambda s: s in ("failed", "completed"),
                                                  timeout=90)
            return (doomed_running, survivor_running, waiting_before, removed_at, doomed_final, survivor_final,
                    waiting_final, lost.node_id)

    (doomed_running, survivor_running, waiting_before, removed_at, doomed_final, survivor_final, waiting_final,
     lost_id) = asyncio.run(scenario())
    worker_nodes = {node.node_id for node in nodes}
    assert doomed_running["backend"] == survivor_running["backend"] == "ray"
    assert {doomed_running["node"], survivor_running["node"]} == worker_nodes  # one job on each node
    assert waiting_before["status"] == "queued" and waiting_before["node"] is None
    print(f"\n[ray cluster] lost-node job failed {doomed_final['finished_at'] - removed_at:.1f} s after the "
          f"node was removed: {doomed_final['error']}")
    assert doomed_final["status"] == "failed"
    assert "node" in doomed_final["error"] and "lost" in doomed_final["error"]
    assert lost_id in doomed_final["error"]
    assert survivor_final["status"] == "completed"
    assert waiting_final["status"] == "completed", waiting_final["error"]
    assert waiting_final["node"] == survivor_running["node"]  # the only node left
    assert waiting_final["started_at"] >= waiting_before["created_at"]
    log = server.log_text()  # (the MNIST job's traceback is there, as it should be: the server's log only)
    assert "internal error" not in log and "never retrieved" not in log


def test_actors_ask_for_the_jobs_resources_and_cpu_jobs_see_no_gpu():
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'snn-training-monitor[ray]'")
    from service.backend import JobSpec
    from service.ray_backend import actor_options, actor_spec

    def spec(device: str) -> JobSpec:
        return JobSpec("job", {"seed": 1}, device, cpu_threads=3, data_dir=None, allow_download=False)

    cpu, gpu = actor_options(spec("cpu")), actor_options(spec("cuda:1"))
    assert (cpu["num_cpus"], cpu["num_gpus"]) == (3, 0)
    assert cpu["runtime_env"]["env_vars"]["CUDA_VISIBLE_DEVICES"] == ""
    assert (gpu["num_cpus"], gpu["num_gpus"]) == (3, 1)
    assert "CUDA_VISIBLE_DEVICES" not in gpu["runtime_env"]["env_vars"]  # Ray sets it to the GPU it gives
    assert actor_spec(spec("cuda:1"))["device"] == "cuda:0" and actor_spec(spec("cpu"))["device"] == "cpu"
    assert cpu["max_restarts"] == 0  # a lost actor fails its job; it is never run twice


def test_backend_ray_without_ray_exits_2_with_the_install_command(tmp_path):
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['ray'] = None  # Ray looks uninstalled\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), REPO])}
    result = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--port", "0", "--backend", "ray",
                             "--data-dir", str(tmp_path / "data")], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "pip install 'snn-training-monitor[ray]'" in result.stderr


def test_a_bad_backend_name_exits_2_naming_the_choices(tmp_path):
    result = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--port", "0"],
                            cwd=REPO, env={**os.environ, "SNNMON_BACKEND": "slurm"}, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "SNNMON_BACKEND" in result.stderr and "process or ray" in result.stderr
