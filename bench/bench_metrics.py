"""What the metrics cost: the per-request meter, and one ``/metrics`` scrape.

Run: ``.venv/bin/python bench/bench_metrics.py [--requests 20000] [--rounds 5] [--scrapes 200]``

1. Per request: a bare FastAPI app (one route with a path parameter) called
   straight through ASGI (no socket, no client: only the app's own cost),
   side by side with the same app wrapped in :class:`core.metering.RequestMeter`
   (counter + histogram by route template), and with the access log on
   (a real rotating file). Rounds alternate (each starts with another
   variant); each figure is the median of
   the rounds, in microseconds per request.
2. Per scrape: the real Vigil app under uvicorn (``tests.conftest.LiveServer``)
   after traffic on every route kind and a stored ``counters`` table; the
   time of ``GET /metrics`` over loopback (p50, p95) and the size of the body.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from fastapi import FastAPI

from core.counter_buffer import CounterBuffer
from core.logs import attach_access_log, detach_access_log
from core.metering import RequestMeter


def make_app(*, metered: bool, access_log: bool) -> FastAPI:
    app = FastAPI()

    @app.get("/api/chats/{chat_id}/messages")
    async def messages(chat_id: str) -> dict[str, Any]:
        return {"chat": chat_id, "messages": []}

    if metered:
        app.add_middleware(RequestMeter)
        app.state.vigil = SimpleNamespace(
            counters=CounterBuffer(), settings=SimpleNamespace(access_log=access_log)
        )
    return app


async def _call(app: FastAPI, path: str) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 9000),
        "app": app,
    }
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def per_request_us(app: FastAPI, path: str, n: int) -> float:
    for _ in range(200):  # warm up (the route table, the first allocations)
        await _call(app, path)
    started = time.perf_counter()
    for i in range(n):
        await _call(app, path if "{" not in path else path.format(i))
    return (time.perf_counter() - started) / n * 1e6


def request_overhead(n: int, rounds: int, logs: Path) -> list[tuple[str, str, float, float]]:
    handler = attach_access_log(logs)
    variants = {
        "bare FastAPI": make_app(metered=False, access_log=False),
        "+ RequestMeter": make_app(metered=True, access_log=False),
        "+ RequestMeter, access log on": make_app(metered=True, access_log=True),
    }
    paths = {"route hit": "/api/chats/c{}/messages", "404 (random path)": "/random/{}"}
    results: dict[tuple[str, str], list[float]] = {}
    try:
        names = list(variants)
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]  # no variant always last
            for label, path in paths.items():
                for name in order:
                    us = asyncio.run(per_request_us(variants[name], path, n))
                    results.setdefault((name, label), []).append(us)
    finally:
        detach_access_log(handler)
    return [
        (name, label, statistics.median(results[(name, label)]), min(results[(name, label)]))
        for label in paths
        for name in names
    ]


def record_alone_us(n: int) -> float:
    """The meter's own work per request (labels, counter, histogram), without the app."""
    meter = RequestMeter(None)
    app = make_app(metered=True, access_log=False)
    runtime = app.state.vigil
    route = SimpleNamespace(path="/api/chats/{chat_id}/messages")
    scope = {"method": "GET", "path": "/api/chats/c1/messages", "app": app, "route": route}
    started = time.perf_counter()
    for _ in range(n):
        meter.record(runtime, scope, 200, 0.0004)
    return (time.perf_counter() - started) / n * 1e6


def scrape_cost(scrapes: int, root: Path) -> dict[str, float]:
    from tests.conftest import LiveServer, make_settings
    from tests.fake_llm import FakeLLM

    with FakeLLM() as fake:
        settings = make_settings(root, llm_base_url=fake.url)
        server = LiveServer(settings).start()
        try:
            client = server.client
            for i in range(50):
                client.post(f"/api/chats/c{i % 5}/messages", json={"text": "hi"})
                client.get(f"/api/chats/c{i}/messages")
                client.get(f"/random/{i}")
                httpx.get(f"{server.url}/api/chats", headers={"Authorization": "Bearer wrong"})
            client.get("/health")
            client.get("/resources/status")
            times = []
            size = 0
            for _ in range(scrapes):
                started = time.perf_counter()
                body = client.get("/metrics").content
                times.append((time.perf_counter() - started) * 1000)
                size = len(body)
            times.sort()
            lines = sum(1 for line in body.decode().splitlines() if not line.startswith("#"))
            return {
                "p50_ms": statistics.median(times),
                "p95_ms": times[int(0.95 * len(times)) - 1],
                "bytes": size,
                "samples": lines,
            }
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scrapes", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        rows = request_overhead(args.requests, args.rounds, Path(tmp) / "logs")
        base = {label: (med, low) for name, label, med, low in rows if name == "bare FastAPI"}
        print(f"per request ({args.requests} calls x {args.rounds} rounds; µs per request)")
        print(f"{'app':32} {'path':18} {'median':>8} {'+':>7} {'min':>8} {'+':>7}")
        for name, label, med, low in rows:
            b_med, b_low = base[label]
            extra_med, extra_low = med - b_med, low - b_low
            print(f"{name:32} {label:18} {med:8.1f} {extra_med:+7.1f} {low:8.1f} {extra_low:+7.1f}")
        print(f"RequestMeter.record alone: {record_alone_us(100_000):.1f} µs per request")
        cost = scrape_cost(args.scrapes, Path(tmp) / "scrape")
        print(
            f"GET /metrics over loopback ({args.scrapes} scrapes): p50 {cost['p50_ms']:.2f} ms, "
            f"p95 {cost['p95_ms']:.2f} ms, {cost['bytes']:.0f} bytes, {cost['samples']:.0f} samples"
        )


if __name__ == "__main__":
    main()
