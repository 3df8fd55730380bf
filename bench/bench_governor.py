"""Governor cost: snapshot latency and the CPU the running governor takes.

    .venv/bin/python bench/bench_governor.py [--snapshots 5000] [--seconds 60]

Part 1, snapshot cost (p50/p99/max, microseconds), with a process tree like
production's (this process plus two children standing in for the supervisor's
other children), measured side by side in the same run:
  * ``ResourceMonitor.take()`` — what every sample costs (tree membership
    cached; refreshed every 10 s);
  * ``ProcessTree.refresh()`` — the periodic membership refresh alone;
  * ``decide()`` over a full hour of history (720 samples) — the decision;
  * reference: RSS + CPU of the same processes parsed by hand from
    ``/proc/<pid>/stat`` (what the snapshot saves by not using psutil);
  * baseline: a bare ``psutil.Process().memory_info()`` on a held object;
  * baseline: ``psutil.Process(pid).memory_info()`` with a new object each time;
  * reference: ``psutil.Process().children(recursive=True)`` (scans all of /proc).
Target: snapshot p50 < 1 ms (on a shared box the p99 is the neighbours).

Part 2, CPU overhead: the real app lifespan (database, chat pipeline,
monitoring starter) runs for ``--seconds`` with 1 s sampling, then again with
``VIGIL_GOVERNOR_ENABLED=false`` as the baseline; the difference in process
CPU time over wall time is the governor's share of one core.
Target: < 0.5 % of one core.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from core.app import create_app
from core.config import Settings
from monitoring.governor import GovernorMemo, decide
from monitoring.limits import MemoryBudget
from monitoring.resources import ProcessTree, ResourceMonitor
from monitoring.rules import Thresholds
from monitoring.snapshot import ResourceSnapshot


def timings(fn: Callable[[], object], count: int) -> tuple[float, float, float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - started) / 1000)
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered), p99, ordered[-1]


def synthetic_history(count: int) -> list[ResourceSnapshot]:
    return [
        ResourceSnapshot(
            timestamp=5.0 * i,
            memory_mb=200 + (i % 50),
            cpu_percent=10.0 + (i % 7),
            active_sessions=5,
            total_processes=3,
            disk_usage_percent=40.0,
            network_io_bytes=(i, i),
            loop_lag_ms=3.0,
        )
        for i in range(count)
    ]


def part_snapshots(count: int, tmp: Path) -> list[tuple[str, tuple[float, float, float]]]:
    children = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]) for _ in range(2)
    ]
    try:
        monitor = ResourceMonitor(data_dir=tmp, history_len=720)
        monitor.take()
        tree = ProcessTree(os.getpid())
        held = psutil.Process()
        settings = Settings(_env_file=None, data_dir=tmp)  # type: ignore[call-arg]
        th = Thresholds.from_settings(settings, MemoryBudget(4096, "setting"))
        history = synthetic_history(720)
        pids = [os.getpid(), *(c.pid for c in children)]

        def proc_stat_all() -> None:
            for pid in pids:
                with open(f"/proc/{pid}/stat", "rb") as handle:
                    fields = handle.read().rsplit(b")", 1)[1].split()
                int(fields[11]) + int(fields[12]), int(fields[21])  # utime+stime, rss pages

        now = history[-1].timestamp
        rows = [
            ("ResourceMonitor.take() (Vigil snapshot)", timings(monitor.take, count)),
            ("ProcessTree.refresh() (every 10 s)", timings(tree.refresh, max(200, count // 10))),
            (
                "decide() over 720 samples",
                timings(
                    lambda: decide(history, GovernorMemo(), th=th, now=now), max(200, count // 10)
                ),
            ),
            (
                "reference: hand-parsed /proc/<pid>/stat RSS+CPU of the same tree",
                timings(proc_stat_all, count),
            ),
            ("baseline: held Process().memory_info()", timings(held.memory_info, count)),
            (
                "baseline: new psutil.Process(pid).memory_info()",
                timings(lambda: psutil.Process(os.getpid()).memory_info(), count),
            ),
            (
                "reference: Process().children(recursive=True)",
                timings(lambda: held.children(recursive=True), max(100, count // 50)),
            ),
        ]
        processes = monitor.take().total_processes
        print(f"process tree in the snapshot: {processes} processes")
        return rows
    finally:
        for child in children:
            child.kill()
            child.wait()


async def cpu_share(seconds: float, *, enabled: bool, tmp: Path) -> float:
    """Process CPU seconds per wall second (x100 = % of one core) over the run."""
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        data_dir=tmp / ("on" if enabled else "off"),
        logs_dir=tmp / "logs",
        admin_token="bench",
        llm_base_url="http://127.0.0.1:9/v1",
        llm_probe_interval_s=3600.0,
        governor_enabled=enabled,
        governor_sample_interval_s=1.0,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await asyncio.sleep(2.0)  # start-up work is not steady-state cost
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, wall1 = time.process_time(), time.monotonic()
        samples = app.state.vigil.monitoring.samples if enabled else 0
    print(f"  governor {'on ' if enabled else 'off'}: {samples} samples taken")
    return (cpu1 - cpu0) / (wall1 - wall0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshots", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        rows = part_snapshots(args.snapshots, tmp)
        print(f"\n| operation ({args.snapshots} runs) | p50 µs | p99 µs | max µs |")
        print("| --- | ---: | ---: | ---: |")
        for label, (p50, p99, top) in rows:
            print(f"| {label} | {p50:.1f} | {p99:.1f} | {top:.1f} |")
        print(f"\nCPU over {args.seconds:g} s at 1 s sampling:")
        off = asyncio.run(cpu_share(args.seconds, enabled=False, tmp=tmp))
        on = asyncio.run(cpu_share(args.seconds, enabled=True, tmp=tmp))
        print("\n| run | CPU % of one core |")
        print("| --- | ---: |")
        print(f"| baseline: app idle, governor disabled | {off * 100:.3f} |")
        print(f"| app idle, governor on (1 s sampling + loop-lag probe) | {on * 100:.3f} |")
        print(f"| **governor overhead** | **{(on - off) * 100:.3f}** |")


if __name__ == "__main__":
    main()
