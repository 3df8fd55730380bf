"""Prometheus metrics for ``GET /metrics``: process metrics plus Vigil's own.

One registry per app (no global state, so several servers can live in one
test process). Every ``*_total`` and histogram comes from the server's
:class:`core.counter_buffer.CounterBuffer`: the ``counters`` table (also
written by the supervisor, the worker and the CLI) plus what this process
counted since its last flush, so counters never go down, across restarts,
pruning and restores. Gauges are read from the runtime at scrape time; what
needs the database or a file (:meth:`VigilCollector.prepare`) is read by the
route just before the scrape is rendered.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from core.backups.state import backup_period_s
from core.counter_buffer import Key, Labels
from core.errors import VigilError
from core.metering import ERROR_KINDS
from core.restarts import read_supervisor_state
from core.telegram.liveness import STATES
from monitoring.limits import MB
from monitoring.rules import RULES

if TYPE_CHECKING:
    from core.runtime import Runtime

# Every alert type the server raises: the governor's rules and those raised by a
# condition (backups, the database, the model) or by the governor itself.
ALERT_TYPES = tuple(
    sorted(
        {r.alert_type for r in RULES}
        | {
            "alert_flapping",
            "restart_not_helping",
            "backup_failed",
            "backup_stale",
            "database_replaced",
            "database_write_failing",
            "llm_unreachable",
        }
    )
)

# Counters: (stored name, help, label names, label sets always exported as 0).
COUNTERS: tuple[tuple[str, str, tuple[str, ...], tuple[Labels, ...]], ...] = (
    ("vigil_turns", "Chat turns answered", (), ((),)),
    ("vigil_turn_failures", "Turns that ended with a model error", (), ((),)),
    ("vigil_commands", "Chat commands handled", (), ((),)),
    ("vigil_turns_rejected", "Turns refused (throttled, draining or queue full)", (), ((),)),
    ("vigil_budget_refusals", "Turns refused because a token budget was used up", (), ((),)),
    (
        "vigil_llm_requests",
        "Model calls by outcome (ok, cancelled, or the error code) and model",
        ("model", "outcome"),
        (),
    ),
    ("vigil_llm_tokens", "Tokens by kind (prompt, completion) and model", ("kind", "model"), ()),
    ("vigil_llm_failures", "Model requests that failed", (), ((),)),
    ("vigil_llm_retries", "Model requests retried", (), ((),)),
    ("vigil_governor_samples", "Snapshots taken by the governor", (), ((),)),
    ("vigil_governor_errors", "Governor job failures", (), ((),)),
    ("vigil_emergency_cleanups", "Emergency cleanups run", (), ((),)),
    (
        "vigil_alerts_raised",
        "Alerts raised",
        ("alert_type",),
        tuple((("alert_type", t),) for t in ALERT_TYPES),
    ),
    (
        "vigil_restart_requests",
        "Restart requests by the governor",
        ("reason",),
        ((("reason", "governor_memory"),), (("reason", "governor_cpu"),)),
    ),
    ("vigil_restarts", "Restarts of a Vigil process, by reason (stops apart)", ("reason",), ()),
    ("vigil_stops", "Planned stops (scripts/stop.sh, systemctl stop)", (), ((),)),
    ("vigil_backup_failures", "Backups that failed", (), ((),)),
    (
        "vigil_http_requests",
        "HTTP requests by route template, method and status",
        ("method", "route", "status"),
        (),
    ),
    (
        "vigil_errors",
        "Errors by kind",
        ("kind",),
        tuple((("kind", k),) for k in ERROR_KINDS),
    ),
    ("vigil_auth_failures", "Refused admin-token attempts (missing or wrong)", (), ((),)),
)
HISTOGRAMS = (
    (
        "vigil_http_request_duration_seconds",
        "HTTP request duration by route template and method",
        ("method", "route"),
    ),
    ("vigil_turn_duration_seconds", "Duration of answered chat turns", ()),
    (
        "vigil_llm_time_to_first_token_seconds",
        "Time from sending a model call to its first token, by model",
        ("model",),
    ),
)
# Stored before the model calls had labels: exported under these, so the sum never drops.
UNLABELED = {"vigil_llm_requests": (("model", ""), ("outcome", "unlabeled"))}


@dataclass
class ScrapeFacts:
    """What a scrape needs from the database and the files, read by ``prepare``."""

    backup_last_success: float | None = None
    backup_period_s: float | None = None
    db_bytes: int = 0
    wal_bytes: int = 0
    media_files: int = 0
    media_bytes: int = 0
    names: dict[int, str] = field(default_factory=dict)


def _gauge(name: str, doc: str, value: float, **labels: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _counters(values: dict[Key, float]) -> Iterator[Metric]:
    for name, doc, label_names, defaults in COUNTERS:
        family = CounterMetricFamily(name, doc, labels=list(label_names))
        rows = {labels: 0.0 for labels in defaults}
        rows.update({labels: v for (n, labels), v in values.items() if n == name})
        if name in UNLABELED and () in rows:
            rows[UNLABELED[name]] = rows.pop(())
        for labels, value in sorted(rows.items()):
            found = dict(labels)
            if set(found) == set(label_names):  # a row of another shape is not ours
                family.add_metric([found[k] for k in label_names], value)
        yield family


def _histograms(values: dict[Key, float]) -> Iterator[Metric]:
    for name, doc, label_names in HISTOGRAMS:
        family = HistogramMetricFamily(name, doc, labels=list(label_names))
        series: dict[tuple[str, ...], dict[float, float]] = {}
        for (n, labels), value in values.items():
            if n != name + "_bucket":
                continue
            found = dict(labels)
            le = found.pop("le", None)
            if le is None or set(found) != set(label_names):
                continue
            key = tuple(found[k] for k in label_names)
            series.setdefault(key, {})[float(le)] = value
        for key, buckets in sorted(series.items()):
            labels = tuple(zip(label_names, key, strict=True))
            running, cumulative = 0.0, []
            for bound in sorted(buckets):
                running += buckets[bound]
                cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
            if cumulative[-1][0] != "+Inf":
                cumulative.append(("+Inf", running))
            total = values.get((name + "_sum", labels), 0.0)
            family.add_metric(list(key), cumulative, total)
        yield family


class VigilCollector(Collector):
    """Vigil's own series: stored counters and live gauges from the runtime."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.facts = ScrapeFacts()

    async def prepare(self) -> None:
        """Read what the scrape needs from the database and the files."""
        rt = self.runtime
        facts = ScrapeFacts()
        try:
            await rt.counters.load(rt.db)  # rows other processes added meanwhile
            found = await rt.db.scalar("SELECT max(finished_at) FROM backup_runs WHERE ok = 1")
            facts.backup_last_success = None if found is None else float(found)
        except (VigilError, sqlite3.Error):
            facts.backup_last_success = self.facts.backup_last_success
        try:  # the images as their rows record them: no walk of data/media per scrape
            row = await rt.db.fetchone(
                "SELECT count(*), coalesce(sum(bytes), 0) FROM message_images"
            )
            facts.media_files, facts.media_bytes = (int(row[0]), int(row[1])) if row else (0, 0)
        except (VigilError, sqlite3.Error):
            facts.media_files, facts.media_bytes = self.facts.media_files, self.facts.media_bytes
        facts.backup_period_s = backup_period_s(rt.settings)
        path = rt.settings.db_path
        facts.db_bytes = _size(path)
        facts.wal_bytes = _size(path.with_name(path.name + "-wal"))
        facts.names = _process_names(rt, read_supervisor_state(rt.settings.data_dir))
        self.facts = facts

    def collect(self) -> Iterator[Metric]:
        values = self.runtime.counters.values()
        yield from _counters(values)
        yield from _histograms(values)
        yield from self._chat()
        yield from self._storage()
        system = self.runtime.monitoring
        if system is not None:
            yield from self._governor(system)
            yield from self._processes(system)

    def _storage(self) -> Iterator[Metric]:
        facts = self.facts
        if facts.backup_last_success is not None:
            yield _gauge(
                "vigil_backup_last_success_timestamp_seconds",
                "When the newest successful backup finished (unix time)",
                facts.backup_last_success,
            )
        if facts.backup_period_s is not None:
            yield _gauge(
                "vigil_backup_period_seconds",
                "The longest gap between two scheduled backups (absent when backups are off)",
                facts.backup_period_s,
            )
        yield _gauge("vigil_db_size_bytes", "Size of system.db", facts.db_bytes)
        yield _gauge("vigil_wal_size_bytes", "Size of system.db-wal", facts.wal_bytes)
        yield _gauge(
            "vigil_media_files", "Stored images (files under data/media)", facts.media_files
        )
        yield _gauge("vigil_media_bytes", "Bytes of the stored images", facts.media_bytes)

    def _chat(self) -> Iterator[Metric]:
        rt = self.runtime
        stats, llm = rt.chat.stats, rt.llm
        yield _gauge(
            "vigil_llm_up", "1 when the last model probe succeeded", llm.status.state == "ok"
        )
        latency = GaugeMetricFamily(
            "vigil_turn_latency_seconds", "Recent turn latency quantiles", labels=["quantile"]
        )
        for q in (0.5, 0.95):
            latency.add_metric([str(q)], _quantile(stats.latencies, q))
        yield latency
        yield _gauge("vigil_in_flight_turns", "Turns being answered now", rt.admission.in_flight)
        yield _gauge("vigil_llm_concurrency_limit", "Current LLM concurrency", rt.limiter.limit)
        yield _gauge("vigil_llm_active", "LLM calls running", rt.limiter.active)
        yield _gauge("vigil_llm_queue", "Turns waiting for an LLM slot", rt.limiter.waiting)
        yield _gauge("vigil_throttled", "1 while new turns are throttled", rt.admission.throttled)
        yield _gauge(
            "vigil_maintenance_mode",
            "1 while maintenance mode refuses new turns",
            rt.admission.maintenance is not None,
        )
        yield _gauge("vigil_draining", "1 while the server drains", rt.admission.draining)
        current = rt.telegram_state()
        yield _gauge(
            "vigil_telegram_connected", "1 when Telegram is connected", current == "connected"
        )
        states = GaugeMetricFamily(
            "vigil_telegram_state",
            "1 for the Telegram connection's current state",
            labels=["state"],
        )
        for state in STATES:
            states.add_metric([state], state == current)
        yield states

    def _processes(self, system: Any) -> Iterator[Metric]:
        memory = GaugeMetricFamily(
            "vigil_process_memory_bytes", "Resident memory per process", labels=["process"]
        )
        cpu = GaugeMetricFamily(
            "vigil_process_cpu_percent", "CPU per process, % of one core", labels=["process"]
        )
        totals: dict[str, list[float]] = {}
        for pid, (rss, share) in dict(system.monitor.tree.by_pid).items():
            row = totals.setdefault(self.facts.names.get(pid, "other"), [0.0, 0.0])
            row[0] += rss
            row[1] += share
        for name, (rss, share) in sorted(totals.items()):
            memory.add_metric([name], rss)
            cpu.add_metric([name], share)
        yield memory
        yield cpu

    def _governor(self, system: Any) -> Iterator[Metric]:
        s = system.latest()
        yield _gauge("vigil_health_score", "Health score 0-100", system.health_score(s))
        memory = GaugeMetricFamily("vigil_memory_bytes", "Resident memory", labels=["scope"])
        memory.add_metric(["tree"], s.memory_mb * MB)
        memory.add_metric(["server"], s.server_memory_mb * MB)
        yield memory
        yield _gauge(
            "vigil_memory_budget_bytes",
            "Memory budget",
            system.thresholds.budget_mb * MB,
            source=system.thresholds.budget_source,
        )
        yield _gauge("vigil_cpu_percent", "Tree CPU, % of available CPUs", s.cpu_percent)
        yield _gauge("vigil_active_sessions", "Sessions active in 30 min", s.active_sessions)
        yield _gauge("vigil_cached_sessions", "Chat windows in memory", s.cached_sessions)
        yield _gauge("vigil_processes", "Processes in Vigil's tree", s.total_processes)
        yield _gauge("vigil_loop_lag_seconds", "Event loop lag", s.loop_lag_ms / 1000)
        yield _gauge("vigil_disk_usage_percent", "Data disk usage", s.disk_usage_percent)
        yield _gauge("vigil_emergency_mode", "1 in emergency mode", system.emergency_mode)
        cost = GaugeMetricFamily(
            "vigil_governor_step_seconds", "Duration of the last governor step", labels=["step"]
        )
        cost.add_metric(["snapshot"], system.last_snapshot_s)
        cost.add_metric(["decide"], system.last_decide_s)
        yield cost
        active = GaugeMetricFamily("vigil_alerts_active", "Active alerts", labels=["severity"])
        for severity in ("low", "medium", "high", "critical"):
            count = sum(1 for a in system.active.values() if a.severity == severity)
            active.add_metric([severity], count)
        yield active
        tasks = GaugeMetricFamily("vigil_server_tasks", "Background tasks", labels=["status"])
        for status, count in sorted(system.tasks_by_status.items()):
            tasks.add_metric([status], count)
        yield tasks
        queue = GaugeMetricFamily("vigil_task_queue", "Huey queue depth", labels=["state"])
        for state in ("pending", "scheduled"):
            value = system.task_queue.get(state)
            if isinstance(value, int):
                queue.add_metric([state], value)
        yield queue


def _size(path: Any) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _process_names(runtime: Runtime, supervisor: dict[str, Any]) -> dict[int, str]:
    """pid -> ``server``, ``supervisor``, or the supervisor's name for a child."""
    names: dict[int, str] = {}
    if supervisor.get("supervised") and isinstance(supervisor.get("pid"), int):
        names[supervisor["pid"]] = "supervisor"
    for name, child in supervisor.get("children", {}).items():
        if isinstance(child.get("pid"), int) and name in ("server", "worker"):
            names[child["pid"]] = name
    names[runtime.pid] = "server"
    return names


class VigilRegistry(CollectorRegistry):
    """The app's registry; ``vigil`` is the collector the route prepares."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(auto_describe=False)
        self.vigil = VigilCollector(runtime)


def build_registry(runtime: Runtime) -> VigilRegistry:
    registry = VigilRegistry(runtime)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(registry.vigil)
    return registry


def track_governor(runtime: Runtime, system: Any) -> None:
    """The governor's plain counts, polled into the server's counters."""
    counters = runtime.counters
    counters.track("vigil_governor_samples", lambda: system.samples)
    counters.track("vigil_governor_errors", lambda: system.errors)
    counters.track("vigil_errors", lambda: system.errors, (("kind", "governor"),))
    counters.track("vigil_emergency_cleanups", lambda: system.emergency_cleanups)
    for alert_type in ALERT_TYPES:
        counters.track(
            "vigil_alerts_raised",
            lambda t=alert_type: system.raised_total.get(t, 0),  # type: ignore[misc]
            (("alert_type", alert_type),),
        )
    for reason in ("governor_memory", "governor_cpu"):
        counters.track(
            "vigil_restart_requests",
            lambda r=reason: system.restart_requests_total.get(r, 0),  # type: ignore[misc]
            (("reason", reason),),
        )
