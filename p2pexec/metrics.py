"""
Prometheus metrics of one node, for C{GET /metrics} (see C{docs/api.rst}).

Each node has a registry of its own.  Most figures are read from the node's
views (L{p2pexec.interfaces.INodeViews}) when Prometheus scrapes (a custom
collector); the task-duration histogram and the completed/failed counters
are fed as results arrive (L{INodeViews.on_result}).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from p2pexec import status
from p2pexec.file_parts import CACHE_GAUGES, TRANSFER_FIGURES
from p2pexec.interfaces import INodeViews
from p2pexec.model import TaskResult

DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 1800.0, 3600.0)
"""Task-duration histogram buckets, in seconds: from instant instructions to hour-long jobs."""


COUNTERS = (
    ("p2pexec_assignments_sent", "Task attempts handed out to workers.", "assignments_sent"),
    (
        "p2pexec_stale_results",
        "Results dropped as stale (superseded attempts, tasks already done).",
        "stale_results",
    ),
    ("p2pexec_retries", "Failed attempts given a retry.", "retries"),
    ("p2pexec_quarantined", "Tasks quarantined after losing their worker too often.", "quarantined"),
    ("p2pexec_reconnects", "Connections to a peer opened again after an earlier one closed.", "reconnects"),
    ("p2pexec_datagrams_received", "Discovery datagrams accepted from other nodes.", "datagrams_received"),
    ("p2pexec_worker_tasks_completed", "Attempts this node finished as a worker.", "worker_tasks_completed"),
    (
        "p2pexec_results_answered_from_cache",
        "Results sent again from the worker's cache instead of rerun.",
        "results_answered_from_cache",
    ),
)
"""The counters: metric name, help text, and the name of the figure in L{INodeViews.counters}."""

GAUGES = (
    ("p2pexec_worker_running", "Tasks running on this node now.", "worker_running"),
    ("p2pexec_worker_queued", "Tasks queued on this node, waiting for a slot.", "worker_queued"),
    ("p2pexec_worker_slots", "How many tasks this node runs at once.", "worker_slots"),
)
"""The gauges read from L{INodeViews.counters}, as L{COUNTERS}."""


class NodeCollector(Collector):
    """Reads a node's views at each scrape."""

    def __init__(self, views: INodeViews) -> None:
        self._views = views

    def collect(self) -> Iterator[Metric]:
        """The node's gauges and counters, as they are now."""
        views = self._views
        peers = GaugeMetricFamily("p2pexec_peers", "Peers in this node's table, by state.", labels=["state"])
        counts = dict.fromkeys(status.PEER_STATES[1:], 0)
        for entry in views.peers_status()[1:]:
            counts[entry["state"]] = counts.get(entry["state"], 0) + 1
        for state, count in counts.items():
            peers.add_metric([state], count)
        yield peers

        tasks = GaugeMetricFamily(
            "p2pexec_tasks", "Tasks of the jobs this node is master of, by state.", labels=["state"]
        )
        jobs = GaugeMetricFamily("p2pexec_jobs", "Jobs this node is master of, by state.", labels=["state"])
        task_counts = dict.fromkeys(status.TASK_STATES, 0)
        job_counts = {"running": 0, "finished": 0, "cancelled": 0}
        for summary in views.jobs_status():
            job_counts[summary["state"]] += 1
            for state, count in summary["counts"].items():
                task_counts[state] += count
        for state, count in task_counts.items():
            tasks.add_metric([state], count)
        for state, count in job_counts.items():
            jobs.add_metric([state], count)
        yield tasks
        yield jobs

        figures = views.counters()
        for name, documentation, figure in COUNTERS:
            yield CounterMetricFamily(name, documentation, value=figures[figure])
        rejected = CounterMetricFamily(
            "p2pexec_datagrams_rejected", "Discovery datagrams dropped, by reason.", labels=["reason"]
        )
        for reason, count in sorted(views.datagrams_rejected().items()):
            rejected.add_metric([reason], count)
        yield rejected
        for name, documentation, figure in GAUGES:
            yield GaugeMetricFamily(name, documentation, value=figures[figure])
        # A node that moves files (issue 16): what it moved, and its file cache.
        for kind, table in ((CounterMetricFamily, TRANSFER_FIGURES), (GaugeMetricFamily, CACHE_GAUGES)):
            for figure, documentation in table:
                value = figures.get(f"transfer_{figure}")
                if value is not None:
                    yield kind(f"p2pexec_transfer_{figure}", documentation, value=value)


class NodeMetrics:
    """
    A node's registry: the collector, plus the histogram and counters fed by
    the master as results are applied.
    """

    def __init__(self, views: INodeViews) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(NodeCollector(views))
        self.completed = Counter(
            "p2pexec_tasks_completed", "Tasks of this master's jobs that finished with success.", registry=self.registry
        )
        self.failed = Counter(
            "p2pexec_tasks_failed", "Tasks of this master's jobs that finished without success.", registry=self.registry
        )
        self.duration = Histogram(
            "p2pexec_task_duration_seconds",
            "How long each finished task of this master's jobs ran.",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        views.on_result(self.result_applied)

    def result_applied(self, result: TaskResult) -> None:
        """Count one final result and its duration."""
        (self.completed if result.succeeded else self.failed).inc()
        self.duration.observe(result.duration)
