"""The Ray backend: each job runs in its own Ray actor, on whichever node of a cluster has room for it.

Same seam as ``service.backend.ProcessBackend`` (``submit(spec) -> handle``), so the job manager, the
streams and the store do not change. Ray is an optional extra: this module imports it only inside
functions, and ``service.settings`` refuses ``--backend ray`` when it is missing.

Server side (event-loop thread): ``RayBackend`` connects once (``ray.init``: an existing cluster at
``--ray-address``, else a local instance), in a thread, at server start. ``submit`` creates one actor
per job with the job's resources (``num_cpus`` = its CPU threads; ``num_gpus=1`` for a GPU job; a CPU job
gets ``CUDA_VISIBLE_DEVICES=""`` because Ray no longer hides GPUs from actors that asked for none) and
starts its ``run`` method as a streaming generator. ``RayJobHandle`` awaits the generator's items in the
event loop (Ray's object refs are awaitable, no thread polls); ``placed`` resolves once Ray has placed
the actor, so the manager shows the job ``queued`` until then. Whatever way the job ends, its actor is
killed (``ray.kill``), so its resources (GPU memory) go back to the cluster and no worker is reused.

Node side (the actor): ``JobActor.run`` trains in a thread with ``trainer.worker.execute_job`` and yields
the events as they come, a list of those waiting at each yield (one object per batch of events, not per
event, when the trainer is fast), with what the actor writes to stderr (for the server's log).
``request_stop`` sets the flag ``should_stop`` reads; it runs concurrently with ``run``
(``max_concurrency=2``). The test-only fault hook (``SNNMON_TEST_FAULT``)
reaches the actor through its runtime environment, like a spawned worker's inherited environment.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from service.backend import JobSpec

log = logging.getLogger("snnmon.ray")

INSTALL_HINT = "pip install 'snn-training-monitor[ray]'"
# Events handed over per generator item at most: a fast trainer's burst travels in a few objects.
EVENTS_PER_ITEM = 256
# Where this checkout's packages live: put first on an actor's PYTHONPATH, so a node on this machine runs
# this code (a node elsewhere, where the path does not exist, uses its own installed package).
ROOM_CHECK_S = 0.5  # how often a job not yet placed looks at the cluster's free resources
SOURCE_ROOT = str(Path(__file__).resolve().parent.parent)
PASSED_ENV = ("SNNMON_TEST_FAULT", "SNNMON_DATA_DIR")  # the server's variables an actor also gets


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached; the message says which and what to do."""


def ray_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


@dataclass(frozen=True)
class ActorExit:
    """How a job's actor ended: ``code`` 0 when its ``run`` returned, None when it died (``reason`` why)."""

    code: int | None
    reason: str = ""

    def describe(self) -> str:
        """One line for a job that ended without reporting a result."""
        return self.reason or "the Ray actor ended before reporting a result"


class JobActor:
    """One job on a node. Plain class; ``ray.remote`` wraps it on the server (Ray is imported there only)."""

    def __init__(self) -> None:
        self._stop = threading.Event()

    def where(self) -> dict[str, Any]:
        """Where Ray placed this actor: answered once it exists, so the server knows the job left the queue."""
        import ray

        context = ray.get_runtime_context()
        return {"node_id": context.get_node_id(), "ip": ray.util.get_node_ip_address(), "pid": os.getpid(),
                "gpu_ids": [str(gpu) for gpu in ray.get_gpu_ids()]}

    def request_stop(self) -> None:
        self._stop.set()

    def run(self, spec: dict[str, Any]):
        """Train the job in a thread; yield its events, as lists of ``{"event", "data"}`` dicts, until it ends."""
        from trainer import worker

        events: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        fault = worker._test_fault(spec["config"].get("seed"))
        emit = worker._Emitter(events.put, fault)

        def train() -> None:
            try:
                worker.execute_job(spec, emit, self._stop.is_set, fault)
            finally:
                events.put(None)

        # This process runs this one job: what it writes to stderr (a traceback) travels with its events
        # and lands in the server's log at once, as a spawned worker's inherited stderr does.
        sys.stderr = _ForwardedText(sys.stderr, events.put)
        threading.Thread(target=train, name=f"snnmon-job-{spec['job_id']}", daemon=True).start()
        while True:
            batch = [events.get()]
            while len(batch) < EVENTS_PER_ITEM:
                try:
                    batch.append(events.get_nowait())
                except queue.Empty:
                    break
            ended = batch[-1] is None
            if ended:
                batch.pop()
            if batch:
                yield batch
            if ended:
                return


class _ForwardedText:
    """A text stream that writes to ``stream`` and also hands each write to ``send`` as ``{"stderr": text}``."""

    def __init__(self, stream: Any, send: Any):
        self._stream = stream
        self._send = send

    def write(self, text: str) -> int:
        if text:
            self._send({"stderr": text})
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def actor_options(spec: JobSpec) -> dict[str, Any]:
    """The Ray resources and environment of one job's actor."""
    env = {"PYTHONPATH": os.pathsep.join(filter(None, (SOURCE_ROOT, os.environ.get("PYTHONPATH"))))}
    env.update({name: os.environ[name] for name in PASSED_ENV if name in os.environ})
    on_gpu = spec.device.startswith("cuda")
    if not on_gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""  # Ray leaves every GPU visible to an actor with num_gpus=0
    return {"num_cpus": spec.cpu_threads, "num_gpus": 1 if on_gpu else 0, "max_concurrency": 2,
            "max_restarts": 0, "runtime_env": {"env_vars": env}}


def actor_spec(spec: JobSpec) -> dict[str, Any]:
    """The spec as the actor runs it: a GPU job uses ``cuda:0``, the one GPU Ray made visible to it."""
    values = asdict(spec)
    if spec.device.startswith("cuda"):
        values["device"] = "cuda:0"
    return values


class RayJobHandle:
    """One job's actor, seen from the server's event loop (``service.backend.JobHandle``)."""

    pid = None  # the actor's process may be on another machine: the server does not watch its memory

    def __init__(self, ray: Any, new_actor: Callable[[], Any], spec: JobSpec, options: dict[str, Any]):
        self._ray = ray
        self._new_actor = new_actor
        self._actor = new_actor()
        self._spec = spec
        self._job_id = spec.job_id
        loop = asyncio.get_running_loop()
        self._received: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._exited: asyncio.Future[ActorExit] = loop.create_future()
        self.placed: asyncio.Future[str | None] = loop.create_future()  # the node id, None: never placed
        self.node: str | None = None  # the Ray node id of the node running the job
        self.node_ip: str | None = None
        self.device: str = spec.device  # on a node: cuda:0 is the GPU Ray gave it (the record names it)
        self._killed = False  # ended by the server: ray.kill after a stop
        self.waits_for_resources = False  # not placed yet, and the cluster has no room for it now
        self._pump_task = loop.create_task(self._pump(), name=f"ray-{spec.job_id}")
        self._room_task = loop.create_task(self._look_for_room(options), name=f"ray-room-{spec.job_id}")

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        while (item := await self._received.get()) is not None:
            yield item

    def request_stop(self) -> None:
        if self._killed or not self.alive:
            return
        if not self.placed.done():  # still waiting for resources: nothing to stop gracefully
            self._received.put_nowait({"event": "stopped", "data": {"epoch": None, "forced": False}})
            self.kill()
            return
        self._actor.request_stop.remote()

    def terminate(self) -> None:
        self.kill()  # an actor has no SIGTERM: ray.kill ends it even inside C code

    def kill(self) -> None:
        if not self._killed and self.alive:
            self._killed = True
            self._ray.kill(self._actor, no_restart=True)
            log.info("job %s: killed its Ray actor", self._job_id)

    @property
    def alive(self) -> bool:
        return not self._exited.done()

    async def wait(self) -> ActorExit:
        return await asyncio.shield(self._exited)

    async def _look_for_room(self, options: dict[str, Any]) -> None:
        """Until the actor is placed: whether the cluster has its resources free (Ray's view lags a little)."""
        loop = asyncio.get_running_loop()
        while not self.placed.done():
            fits = await loop.run_in_executor(None, _fits_now, self._ray, options)
            self.waits_for_resources = not fits and not self.placed.done()
            await asyncio.wait([self.placed], timeout=ROOM_CHECK_S)
        self.waits_for_resources = False

    async def _placement(self) -> dict[str, Any]:
        """Where the actor runs, once Ray has placed it. An actor lost before it ran anything (Ray had
        queued it on a node that went away) is asked for again: the job has not started."""
        while True:
            try:
                return await self._actor.where.remote()
            except Exception as exc:
                if self._killed or self.placed.done():
                    raise
                log.warning("job %s: its Ray actor was lost before it was placed (%s); asking Ray again",
                            self._job_id, _one_line(exc))
                self._actor = self._new_actor()

    async def _pump(self) -> None:
        status = ActorExit(0)
        try:
            placement = await self._placement()
            self.node, self.node_ip = placement["node_id"], placement["ip"]
            if self.device.startswith("cuda") and placement["gpu_ids"]:
                self.device = f"cuda:{placement['gpu_ids'][0]}"
            log.info("job %s: Ray actor placed on node %s (%s), pid %s", self._job_id, self.node, self.node_ip,
                     placement["pid"])
            self.placed.set_result(self.node)
            # an event's emitted_at is the actor's time.monotonic(): comparable only on this machine
            same_host = placement["ip"] == self._ray.util.get_node_ip_address()
            stream = self._actor.run.options(num_returns="streaming").remote(actor_spec(self._spec))
            async for ref in stream:
                for item in await ref:
                    if "stderr" in item:
                        sys.stderr.write(item["stderr"])
                    else:
                        if not same_host:
                            item.pop("emitted_at", None)
                        self._received.put_nowait(item)
        except Exception as exc:  # the actor died: killed by us, its worker crashed, or its node was lost
            status = ActorExit(None, await self._death_reason(exc))
        finally:
            if not self.placed.done():
                self.placed.set_result(None)
            if not self._killed:
                self._killed = True
                self._ray.kill(self._actor, no_restart=True)  # its resources go back at once
            self._received.put_nowait(None)
            self._exited.set_result(status)

    async def _death_reason(self, exc: Exception) -> str:
        if self._killed:
            return "the Ray actor was killed by the server"
        where = f"node {self.node} ({self.node_ip})" if self.node else "a node not yet known"
        node_alive = await asyncio.get_running_loop().run_in_executor(None, _node_alive, self._ray, self.node)
        if self.node and node_alive is False or "node has died" in str(exc) or "node is dead" in str(exc):
            return f"the Ray node running this job was lost: {where}"
        cause = _one_line(exc)
        log.warning("job %s: its Ray actor died on %s: %s", self._job_id, where, exc)
        return f"the Ray actor running this job died on {where}: {cause}"


def _fits_now(ray: Any, options: dict[str, Any]) -> bool:
    """Whether the cluster has the actor's CPUs and GPUs free now (summed over nodes, as Ray reports them):
    if not, the job waits for Ray to place it, and shows ``queued`` meanwhile."""
    try:
        free = ray.available_resources()
    except Exception:  # the cluster cannot say now: do not call the job queued
        return True
    return free.get("CPU", 0) >= options["num_cpus"] and free.get("GPU", 0) >= options["num_gpus"]


def _node_alive(ray: Any, node_id: str | None) -> bool | None:
    """Whether the cluster still counts the node as alive (None: unknown)."""
    if node_id is None:
        return None
    try:
        for node in ray.nodes():
            if node.get("NodeID") == node_id:
                return bool(node.get("Alive"))
    except Exception:  # the cluster itself is unreachable: say nothing about the node
        return None
    return False


def _one_line(exc: Exception) -> str:
    """The cause in Ray's message (which runs over many lines), in a few words."""
    text = str(exc)
    if "low on memory" in text or "OutOfMemoryError" in type(exc).__name__:
        return "Ray's memory monitor killed it: the node ran low on memory"
    if "worker process has died" in text or "unexpectedly" in text:
        # Ray sees only that the process went away: a signal (SIGKILL, e.g. from the OOM killer) or a crash
        return "its worker process ended unexpectedly: killed (SIGKILL, e.g. by the OOM killer) or crashed"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__


class RayBackend:
    """Runs each job in a Ray actor on a cluster (``address``: ``auto``, ``ray://host:port``, ``host:port``;
    None starts a local Ray instance)."""

    def __init__(self, address: str | None = None):
        self.address = address
        self._connected: asyncio.Future[Any] | None = None
        self._started_local = False
        self._actor_class: Any = None

    def warm_up(self) -> None:
        """Connect (or start a local instance) in a thread now: seconds, so not at the first job."""
        if self._connected is None:
            self._connected = asyncio.get_running_loop().run_in_executor(None, self._connect)

    async def gpu_count(self) -> int:
        """GPUs in the whole cluster (what ``cuda`` jobs may ask for); connects first. RayUnavailable if it cannot."""
        ray = await self._ray()
        return int(ray.cluster_resources().get("GPU", 0))

    async def submit(self, spec: JobSpec) -> RayJobHandle:
        ray = await self._ray()
        options = actor_options(spec)
        return RayJobHandle(ray, lambda: self._actor_class.options(**options).remote(), spec, options)

    async def close(self) -> None:
        if self._connected is None:
            return
        try:
            ray = await self._connected
        except RayUnavailable:
            return
        await asyncio.get_running_loop().run_in_executor(None, ray.shutdown)
        log.info("disconnected from Ray%s", " and stopped the local instance" if self._started_local else "")

    async def _ray(self) -> Any:
        self.warm_up()
        return await asyncio.shield(self._connected)

    def _connect(self) -> Any:
        try:
            import ray
        except ImportError:
            raise RayUnavailable(f"--backend ray needs Ray: {INSTALL_HINT}") from None
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        self._started_local = self.address is None
        try:
            # an actor's stderr travels with its events (JobActor.run), not through Ray's log forwarding
            local = {"include_dashboard": False} if self._started_local else {}
            ray.init(address=self.address, log_to_driver=False, configure_logging=False, **local)
        except Exception as exc:  # startup boundary: the server says why and does not start
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
            raise RayUnavailable(f"cannot connect to {where}: {_one_line(exc)}") from None
        self._actor_class = ray.remote(JobActor)
        resources = ray.cluster_resources()
        log.info("Ray %s: %s node(s), %g CPU(s), %g GPU(s)",
                 "local instance started" if self._started_local else f"connected to {self.address}",
                 len([node for node in ray.nodes() if node.get("Alive")]), resources.get("CPU", 0),
                 resources.get("GPU", 0))
        return ray
