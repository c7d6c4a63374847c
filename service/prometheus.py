"""``GET /metrics``: the server's state and counters in the Prometheus text format, by ``prometheus-client``.

One ``ServiceMetrics`` per app (its own ``CollectorRegistry``, no module globals), under the app key
``METRICS``. Counters and histograms are moved where things happen:

- ``snnmon_http_requests_total{route,method,status}`` and ``snnmon_http_request_duration_seconds``
  (the ``middleware``; ``route`` is the route's pattern, e.g. ``/api/training/status/{job_id}``, or
  ``unmatched``; a stream's duration is its whole life, so streams are counted, not timed);
- ``snnmon_events_published_total{event}`` and ``snnmon_batch_events_skipped_total`` (event channels);
- ``snnmon_worker_exits_total{reason}`` (the job manager): ``completed``, ``stopped``, ``forced``
  (SIGTERM/SIGKILL after a stop), ``error`` (the worker reported an error and exited), ``crashed``
  (it exited with a code before reporting a result), ``signal`` (killed by a signal nobody here sent);
- ``snnmon_store_commit_seconds`` (the store's writer thread, one observation per group commit).

The rest is read from the live objects at each scrape (``_StateCollector``): jobs by status, running
and queued jobs, open SSE subscribers, and per running job its ``samples_per_s`` and epoch.

Access: like ``/api/``, ``/metrics`` needs the bearer token when the server has one, unless
``--metrics-open`` (a scraper on a private network without the token).
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable, Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from service import stream
from service.store import STATUSES

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Requests are milliseconds (the API) up to a replay or an export of a long job (seconds).
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A group commit is one fsync: about 4 ms on an SSD, tens of ms on a slow or busy disk.
COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0)
RUNNING_STATUSES = ("starting", "running", "stopping")
EXIT_REASONS = ("completed", "stopped", "forced", "error", "crashed", "signal")


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter("snnmon_http_requests", "HTTP requests answered",
                                     ("route", "method", "status"), registry=self.registry)
        self.http_duration = Histogram("snnmon_http_request_duration_seconds",
                                       "time to answer an HTTP request (streams excluded)",
                                       ("route", "method"), buckets=REQUEST_BUCKETS, registry=self.registry)
        self.events_published = Counter("snnmon_events_published", "job events committed and sent to "
                                        "the streams", ("event",), registry=self.registry)
        self.batch_skipped = Counter("snnmon_batch_events_skipped", "batch events skipped for stream "
                                     "clients that fell behind", registry=self.registry)
        self.worker_exits = Counter("snnmon_worker_exits", "worker processes that ended, by how",
                                    ("reason",), registry=self.registry)
        self.commit_seconds = Histogram("snnmon_store_commit_seconds", "time of one group commit to the "
                                        "job store (fsync included)", buckets=COMMIT_BUCKETS,
                                        registry=self.registry)
        for reason in EXIT_REASONS:  # every reason from 0, so a rate() has a series to start from
            self.worker_exits.labels(reason)

    # -- hooks, called where things happen (event-loop thread, except observe_commit)

    def event_published(self, event: str) -> None:
        self.events_published.labels(event).inc()

    def batch_event_skipped(self) -> None:
        self.batch_skipped.inc()

    def worker_exited(self, reason: str) -> None:
        self.worker_exits.labels(reason).inc()

    def observe_commit(self, seconds: float) -> None:
        """Called by the store's writer thread (prometheus-client's metrics are thread-safe)."""
        self.commit_seconds.observe(seconds)

    def watch(self, app: web.Application, job_manager_key: web.AppKey, streams_key: web.AppKey) -> None:
        """Read the app's job manager and open streams at each scrape."""
        self.registry.register(_StateCollector(app, job_manager_key, streams_key))

    # -- HTTP

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            route = _route_name(request)
            self.http_requests.labels(route, request.method, str(status)).inc()
            if not _is_stream(request):
                self.http_duration.labels(route, request.method).observe(time.perf_counter() - started)

    async def handler(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _is_stream(request: web.Request) -> bool:
    return request.match_info.handler is stream.stream


class _StateCollector(Collector):
    """Gauges computed from the live job manager and streams when Prometheus scrapes."""

    def __init__(self, app: web.Application, job_manager_key: web.AppKey, streams_key: web.AppKey):
        self._app = app
        self._job_manager_key = job_manager_key
        self._streams_key = streams_key

    def collect(self) -> Iterator[GaugeMetricFamily]:
        manager = self._app.get(self._job_manager_key)
        records = manager.records() if manager is not None else []
        by_status = GaugeMetricFamily("snnmon_jobs", "jobs in the history, by status", labels=("status",))
        counts = {status: 0 for status in STATUSES}
        for record in records:
            counts[record.status] = counts.get(record.status, 0) + 1
        for status, count in counts.items():
            by_status.add_metric((status,), count)
        yield by_status
        running = [record for record in records if record.status in RUNNING_STATUSES]
        yield GaugeMetricFamily("snnmon_jobs_running", "jobs holding a training slot (starting, running, "
                                "stopping)", value=len(running))
        yield GaugeMetricFamily("snnmon_jobs_queued", "jobs waiting for a slot", value=counts["queued"])
        streams = self._app.get(self._streams_key, ())
        yield GaugeMetricFamily("snnmon_sse_subscribers", "open event streams",
                                value=sum(1 for subscriber in streams if not subscriber.ended))
        speed = GaugeMetricFamily("snnmon_job_samples_per_second", "training speed of a running job "
                                  "(its latest batch event)", labels=("job_id",))
        epoch = GaugeMetricFamily("snnmon_job_epoch", "epoch in progress of a running job (0-based)",
                                  labels=("job_id",))
        for record in running:
            last = record.last_metrics or {}
            if isinstance(last.get("samples_per_s"), (int, float)):
                speed.add_metric((record.job_id,), float(last["samples_per_s"]))
            if record.epoch is not None:
                epoch.add_metric((record.job_id,), record.epoch)
        yield speed
        yield epoch
