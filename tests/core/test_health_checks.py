"""/health tells the truth about writes, from background checks, and recovers by itself."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from core.app import Runtime
from tests.conftest import LiveServer, make_settings
from tests.fake_llm import FakeLLM
from tests.processes import wait_for


def start(
    tmp_path: Path, fake_llm: FakeLLM, factory: Callable[..., LiveServer], **overrides: Any
) -> LiveServer:
    values: dict[str, Any] = {"health_check_interval_s": 0.05, **overrides}
    return factory(make_settings(tmp_path, llm_base_url=fake_llm.url, **values))


def health(server: LiveServer) -> dict[str, Any]:
    response = httpx.get(server.url + "/health")
    body: dict[str, Any] = response.json()
    body["http"] = response.status_code
    return body


def test_disk_full_is_degraded_and_recovers(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Callable[..., LiveServer]
) -> None:
    server = start(tmp_path, fake_llm, live_server_factory, health_write_error_hold_s=3)
    wait_for(lambda: health(server)["status"] == "healthy", 10, "a healthy start")

    async def fill(rt: Runtime) -> None:
        rt.db.pragma(f"max_page_count = {rt.db.pragma('page_count')}")

    server.call(fill)
    codes = set()
    for i in range(40):  # the free pages run out within a few messages
        reply = server.chat("full", f"message {i} " + "x" * 3000)
        if reply.status_code != 200:
            codes.add(reply.json()["error"]["code"])
            break
    assert codes == {"disk_full"}
    wait_for(lambda: "disk_full" in health(server)["reasons"], 10, "disk_full in /health")
    report = health(server)
    assert report["status"] == "degraded" and report["http"] == 200
    assert report["checks"]["database"]["code"] == "disk_full"
    assert report["checks"]["database"]["age_s"] < 60

    async def free(rt: Runtime) -> None:
        rt.db.pragma("max_page_count = 1073741823")

    server.call(free)
    assert server.chat("full", "space again").status_code == 200
    wait_for(lambda: health(server)["status"] == "healthy", 10, "healthy again")


def test_a_database_that_cannot_be_written_at_all_is_unhealthy(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Callable[..., LiveServer]
) -> None:
    server = start(
        tmp_path,
        fake_llm,
        live_server_factory,
        health_write_probe_after_s=0.2,
        health_write_error_hold_s=1,
    )
    wait_for(lambda: health(server)["status"] == "healthy", 10, "a healthy start")

    async def readonly(rt: Runtime) -> None:
        rt.db.pragma("query_only = ON")

    server.call(readonly)
    reply = server.chat("ro", "hello")
    assert reply.status_code == 503 and reply.json()["error"]["code"] == "readonly"
    wait_for(lambda: health(server)["http"] == 503, 10, "/health unhealthy")
    report = health(server)
    assert report["status"] == "unhealthy" and "readonly" in report["reasons"]

    async def writable(rt: Runtime) -> None:
        rt.db.pragma("query_only = OFF")

    server.call(writable)  # nobody writes: the probe finds out by itself
    wait_for(lambda: health(server)["status"] == "healthy", 10, "healthy again")


def test_health_does_no_io_per_request(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Callable[..., LiveServer]
) -> None:
    server = start(tmp_path, fake_llm, live_server_factory, health_check_interval_s=3600)
    first = health(server)
    runs = server.runtime.health.runs
    for _ in range(20):
        health(server)
    assert server.runtime.health.runs == runs  # no check ran for those requests
    assert first["checks"]["database"]["status"] == "ok"
    assert set(first["checks"]) >= {"database", "children", "llm"}
    head = httpx.head(server.url + "/health")
    assert head.status_code == 200 and head.content == b""
    assert httpx.head(server.url + "/health/live").status_code == 200
    metrics = httpx.head(server.url + "/metrics")
    assert metrics.status_code == 200 and metrics.content == b""
