"""What polling ``/health`` costs: requests/s against a bare FastAPI endpoint.

Run: ``.venv/bin/python bench/bench_health.py [--seconds 3] [--connections 32]``

Vigil runs as ``main.py serve`` runs it (``bench/_turn_server.py served``:
the real app, database and uvicorn configuration, an instant model); the
baseline is a bare FastAPI app answering ``{"status": "ok"}`` under plain
uvicorn. Both are separate processes; the load comes from a third (raw
keep-alive HTTP/1.1 on N connections), so the client costs the same for all
rows. Rounds alternate between the endpoints and each figure is the median.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_foundation import Served
from tests.fake_llm import free_port


async def _one_connection(port: int, path: str, until: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    done = 0
    try:
        while time.perf_counter() < until:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.1 503")):
                raise RuntimeError(head[:40])
            done += 1
    finally:
        writer.close()
    counts.append(done)


async def _load(port: int, path: str, seconds: float, connections: int) -> float:
    counts: list[int] = []
    started = time.perf_counter()
    until = started + seconds
    await asyncio.gather(*(_one_connection(port, path, until, counts) for _ in range(connections)))
    return sum(counts) / (time.perf_counter() - started)


def rps(port: int, path: str, seconds: float, connections: int) -> float:
    """Requests/s from a separate process (its own GIL and core)."""
    code = (
        "import asyncio,sys;sys.path.insert(0,sys.argv[1]);"
        "from bench.bench_health import _load;"
        "print(asyncio.run(_load(int(sys.argv[2]),sys.argv[3],float(sys.argv[4]),int(sys.argv[5]))))"
    )
    root = str(Path(__file__).resolve().parent.parent)
    out = subprocess.run(
        [sys.executable, "-c", code, root, str(port), path, str(seconds), str(connections)],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        vport, bport = free_port(), free_port()
        with Served("served", vport, Path(tmp) / "vigil"), Served("bare", bport, Path(tmp) / "b"):
            targets = {
                "bare FastAPI GET /bare": (bport, "/bare"),
                "Vigil GET /health": (vport, "/health"),
                "Vigil GET /health/live": (vport, "/health/live"),
            }
            for port, path in targets.values():  # warm-up
                rps(port, path, 0.5, args.connections)
            results: dict[str, list[float]] = {name: [] for name in targets}
            for _ in range(args.rounds):
                for name, (port, path) in targets.items():
                    results[name].append(rps(port, path, args.seconds, args.connections))
    bare = statistics.median(results["bare FastAPI GET /bare"])
    print(f"| endpoint | requests/s (median of {args.rounds}) | vs bare | target |")
    print("| --- | --- | --- | --- |")
    for name, values in results.items():
        value = statistics.median(values)
        target = "≥ 0.8×" if "/health" in name else ""
        print(f"| {name} | {value:.0f} | {value / bare:.2f}× | {target} |")
    print(f"\n{args.connections} keep-alive connections, {args.seconds:g} s per round")


if __name__ == "__main__":
    main()
