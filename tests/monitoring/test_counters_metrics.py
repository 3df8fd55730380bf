"""/metrics counters with Prometheus semantics, scraped from a real server.

Counters never go down: not after the daily cleanup prunes the restarts
table, not across a restart of the server, not after a restore of an older
snapshot. Planned stops are counted apart from restarts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.backups.backup import create_backup
from core.backups.restore import restore_live
from core.config import Settings
from core.maintenance import cleanup_old_events
from core.restarts import RestartEvent, RestartLog
from core.sqlite import connect_sync
from tests.conftest import LiveServer, make_settings
from tests.fake_llm import FakeLLM
from tests.processes import wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(server: LiveServer) -> Samples:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def counters_of(samples: Samples) -> Samples:
    """Every ``*_total``, ``*_count``, ``*_sum`` and ``*_bucket`` sample."""
    return {
        key: value
        for key, value in samples.items()
        if key[0].endswith(("_total", "_count", "_sum", "_bucket")) and key[0].startswith("vigil_")
    }


def assert_not_lower(before: Samples, after: Samples) -> None:
    lower = {k: (v, after.get(k)) for k, v in before.items() if after.get(k, -1.0) < v}
    assert not lower, f"counters went down: {lower}"


def crash(log: RestartLog, at: float, reason: str = "crash") -> None:
    log.record(RestartEvent(child="server", reason=reason, at=at, exit_code=1))


@pytest.mark.slow  # three servers one after the other
def test_counters_survive_cleanup_restart_and_restore(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Callable[..., LiveServer]
) -> None:
    settings = make_settings(
        tmp_path, llm_base_url=fake_llm.url, governor_enabled=False, metrics_flush_interval_s=0.2
    )
    server = live_server_factory(settings)
    assert server.chat("alice", "hello").status_code == 200
    records = RestartLog(settings.db_path)
    old = time.time() - 200 * 86400  # beyond the 90 days the cleanup keeps
    for _ in range(3):
        crash(records, old)
    crash(records, time.time(), reason="stop")
    first = scrape(server)
    assert first[("vigil_restarts_total", (("reason", "crash"),))] == 3
    assert first[("vigil_stops_total", ())] == 1
    assert ("vigil_restarts_total", (("reason", "stop"),)) not in first
    assert first[("vigil_turns_total", ())] == 1
    snapshot = create_backup(settings.db_path, settings.backups_dir)

    # The daily cleanup prunes the restart rows: the counter stays.
    conn = connect_sync(settings.db_path)
    try:
        assert cleanup_old_events(conn)["restarts"] == 3
    finally:
        conn.close()
    crash(records, time.time())
    assert server.chat("alice", "again").status_code == 200
    pruned = scrape(server)
    assert_not_lower(counters_of(first), counters_of(pruned))
    assert pruned[("vigil_restarts_total", (("reason", "crash"),))] == 4

    # A new server process on the same database starts where this one stopped.
    server.stop()
    second = live_server_factory(settings)
    restarted = scrape(second)
    assert_not_lower(counters_of(pruned), counters_of(restarted))
    assert restarted[("vigil_turns_total", ())] == 2
    http = (
        "vigil_http_requests_total",
        (("method", "GET"), ("route", "/metrics"), ("status", "200")),
    )
    assert restarted[http] == pruned[http] + 1  # the scrape before the stop was counted

    # A restore of the older snapshot: the counters are carried forward.
    second.stop()
    restore_live(snapshot, settings.db_path, confirm=True)
    third = live_server_factory(settings)
    restored = scrape(third)
    assert_not_lower(counters_of(restarted), counters_of(restored))
    assert restored[("vigil_restarts_total", (("reason", "crash"),))] == 4


def test_route_templates_bound_the_http_series(live_server: LiveServer) -> None:
    client = live_server.client
    for chat in ("a", "b", "c"):
        assert live_server.chat(chat, "hi").status_code == 200
    for n in range(40):
        assert client.get(f"/no/such/path/{n}").status_code == 404
    anonymous = httpx.post(f"{live_server.url}/api/chats/x/messages", json={"text": "hi"})
    assert anonymous.status_code == 401
    samples = scrape(live_server)
    route = "/api/chats/{chat_id}/messages"
    ok = ("vigil_http_requests_total", (("method", "POST"), ("route", route), ("status", "200")))
    refused = (
        "vigil_http_requests_total",
        (("method", "POST"), ("route", route), ("status", "401")),
    )
    other = (
        "vigil_http_requests_total",
        (("method", "GET"), ("route", "other"), ("status", "404")),
    )
    assert samples[ok] == 3
    assert samples[refused] == 1  # refused before routing, still named by its template
    assert samples[other] == 40
    count = ("vigil_http_request_duration_seconds_count", (("method", "POST"), ("route", route)))
    assert samples[count] == 4
    inf = (
        "vigil_http_request_duration_seconds_bucket",
        (("le", "+Inf"), ("method", "POST"), ("route", route)),
    )
    assert samples[inf] == 4
    assert samples[("vigil_turn_duration_seconds_count", ())] == 3
    assert samples[("vigil_auth_failures_total", ())] == 1
    assert not any("/no/such" in str(labels) for _, labels in samples)
    series = sum(1 for name, _ in samples if name == "vigil_http_requests_total")
    for n in range(200):  # a flood of new paths adds no series
        client.get(f"/flood/{n}")
    again = scrape(live_server)
    assert sum(1 for name, _ in again if name == "vigil_http_requests_total") <= series + 1


def test_new_gauges_are_exported(tmp_path: Path, live_server: LiveServer) -> None:
    samples = scrape(live_server)
    assert samples[("vigil_db_size_bytes", ())] > 0
    assert ("vigil_wal_size_bytes", ()) in samples
    # No successful backup yet: the series is absent (a rule alerts on absent()).
    assert ("vigil_backup_last_success_timestamp_seconds", ()) not in samples
    assert samples[("vigil_backup_failures_total", ())] == 0
    assert samples[("vigil_backup_period_seconds", ())] == 3600  # the hourly default
    assert samples[("vigil_maintenance_mode", ())] == 0
    states = {
        labels[0][1]: v for (name, labels), v in samples.items() if name == "vigil_telegram_state"
    }
    assert states["not_configured"] == 1 and sum(states.values()) == 1
    kinds = {labels[0][1] for (name, labels) in samples if name == "vigil_errors_total"}
    assert kinds == {"http_5xx", "llm", "telegram", "task", "governor", "database"}
    conn = connect_sync(live_server.settings.db_path)
    try:
        conn.execute(
            "INSERT INTO backup_runs (started_at, finished_at, ok) VALUES (1, 1700000000, 1),"
            " (2, 1800000000, 0)"
        )
    finally:
        conn.close()
    assert scrape(live_server)[("vigil_backup_last_success_timestamp_seconds", ())] == 1700000000


def test_no_backup_period_while_backups_are_off(
    settings: Settings, live_server_factory: Callable[..., LiveServer]
) -> None:
    server = live_server_factory(settings.model_copy(update={"task_schedule": {"backup": "off"}}))
    assert ("vigil_backup_period_seconds", ()) not in scrape(server)


def test_process_memory_and_cpu_by_process(
    settings: Settings, live_server_factory: Callable[..., LiveServer]
) -> None:
    server = live_server_factory(settings.model_copy(update={"governor_sample_interval_s": 0.1}))

    def sampled() -> Samples | None:
        samples = scrape(server)
        return (
            samples if ("vigil_process_memory_bytes", (("process", "server"),)) in samples else None
        )

    samples = wait_for(sampled, 10, "a governor sample")
    assert samples[("vigil_process_memory_bytes", (("process", "server"),))] > 10e6
    assert ("vigil_process_cpu_percent", (("process", "server"),)) in samples


def test_every_exported_series_is_in_the_metrics_reference(
    settings: Settings, live_server_factory: Callable[..., LiveServer]
) -> None:
    server = live_server_factory(settings.model_copy(update={"governor_sample_interval_s": 0.1}))
    server.chat("docs", "hi")
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    families = {f.name for f in text_string_to_metric_families(text) if f.name.startswith("vigil_")}
    reference = (Path(__file__).parents[2] / "docs" / "monitoring.md").read_text()
    reference = reference[reference.index("### Metrics reference") :]
    missing = sorted(
        name
        for name in families
        if f"`{name}`" not in reference and f"`{name}_total`" not in reference
    )
    assert not missing, f"not in docs/monitoring.md: {missing}"
