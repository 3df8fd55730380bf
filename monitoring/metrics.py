"""Prometheus metrics for ``GET /metrics``: process metrics plus Vigil's own.

One registry per app (no global state, so several servers can live in one
test process). Vigil's metrics are read from the runtime at scrape time by a
custom collector; counters that live in the database (restarts, queued tasks)
are refreshed by the route just before the scrape is rendered.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from monitoring.limits import MB
from monitoring.rules import RULES

if TYPE_CHECKING:
    from core.runtime import Runtime


def _gauge(name: str, doc: str, value: float, **labels: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class VigilCollector(Collector):
    """Reads turns, LLM, admission and governor state from the runtime."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        yield from self._chat()
        system = self.runtime.monitoring
        if system is not None:
            yield from self._governor(system)

    def _chat(self) -> Iterator[Metric]:
        rt = self.runtime
        stats, llm = rt.chat.stats, rt.llm
        yield _counter("vigil_turns", "Chat turns answered", stats.turns)
        yield _counter("vigil_turn_failures", "Turns that ended with a model error", stats.failed)
        yield _counter("vigil_commands", "Chat commands handled", stats.commands)
        yield _counter(
            "vigil_turns_rejected",
            "Turns refused (throttled, draining or chat queue full)",
            rt.admission.rejected + stats.rejected,
        )
        yield _counter("vigil_llm_requests", "Requests sent to the model", llm.requests)
        yield _counter("vigil_llm_failures", "Model requests that failed", llm.failures)
        yield _counter("vigil_llm_retries", "Model requests retried", llm.retries)
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
        yield _gauge("vigil_draining", "1 while the server drains", rt.admission.draining)
        yield _gauge(
            "vigil_telegram_connected",
            "1 when Telegram is connected",
            rt.telegram_state() == "connected",
        )

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
        yield _counter("vigil_governor_samples", "Snapshots taken", system.samples)
        yield _counter("vigil_governor_errors", "Governor job failures", system.errors)
        yield _counter(
            "vigil_emergency_cleanups", "Emergency cleanups run", system.emergency_cleanups
        )
        active = GaugeMetricFamily("vigil_alerts_active", "Active alerts", labels=["severity"])
        for severity in ("low", "medium", "high", "critical"):
            count = sum(1 for a in system.active.values() if a.severity == severity)
            active.add_metric([severity], count)
        yield active
        raised = CounterMetricFamily(
            "vigil_alerts_raised", "Alerts raised since start", labels=["alert_type"]
        )
        for alert_type in sorted({r.alert_type for r in RULES} | {"alert_flapping"}):
            raised.add_metric([alert_type], system.raised_total.get(alert_type, 0))
        yield raised
        requests = CounterMetricFamily(
            "vigil_restart_requests", "Restart requests by the governor", labels=["reason"]
        )
        for reason in ("governor_memory", "governor_cpu"):
            count = sum(1 for r in system.restart_requests if r["reason"] == reason)
            requests.add_metric([reason], count)
        yield requests
        restarts = CounterMetricFamily(
            "vigil_restarts", "Restarts recorded in the restarts table", labels=["reason"]
        )
        for reason, count in sorted(system.restarts_by_reason.items()):
            restarts.add_metric([reason], count)
        yield restarts
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


def build_registry(runtime: Runtime) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(VigilCollector(runtime))
    return registry
