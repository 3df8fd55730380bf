"""ResourceMonitor: cheap psutil snapshots of Vigil's whole process tree.

One primed reading per pid is kept between samples: CPU is a delta since the
previous sample of the same pid, so the first reading of a process only
primes it (the snapshot says ``primed=False`` until the server itself has a
baseline, and such a snapshot drives no decision). Each pid is read through a
held ``psutil.Process`` (RSS through :mod:`core.rss`, CPU from
``cpu_times()``). Tree membership is refreshed every ``refresh_s`` from the
kernel's ``/proc/<pid>/task/<tid>/children`` lists: psutil's ``children()``
scans all of ``/proc`` (a millisecond or more, see bench/bench_governor.py),
and at the default 5 s sampling every second snapshot would pay it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from core.process import is_supervised_by
from core.rss import rss_bytes
from monitoring.limits import (
    CGROUP_ROOT,
    MB,
    PROC_ROOT,
    CpuCapacity,
    MemoryBudget,
    PressureFiles,
    read_pressure,
    read_small,
    resolve_cpu_capacity,
    resolve_memory_budget,
    resolve_pressure_files,
)
from monitoring.snapshot import History, ResourceSnapshot

log = logging.getLogger(__name__)


def vigil_root_pid(own_pid: int, data_dir: Path | None) -> int:
    """Our parent's pid when it is Vigil's supervisor, else ours.

    The parent is the supervisor when it holds the supervisor lock of
    ``data_dir``: true under start.sh and under systemd (``main.py supervise``
    with no PID file) alike, and never for a shell or a test runner.
    """
    parent = os.getppid()
    if data_dir is None or parent == own_pid:
        return own_pid
    return parent if is_supervised_by(parent, data_dir) else own_pid


@dataclass(frozen=True, slots=True)
class TreeSample:
    rss_bytes: int
    cpu_percent: float  # sum over processes, one core = 100
    processes: int
    server_rss_bytes: int
    server_cpu_percent: float
    primed: bool


class _Reader:
    """A held ``psutil.Process`` and its last CPU reading."""

    __slots__ = ("last_cpu_s", "last_t", "process")

    def __init__(self, pid: int, now: float) -> None:
        self.process = psutil.Process(pid)  # raises NoSuchProcess if it is gone
        self.last_cpu_s, self.last_t = self._usage()[1], now

    def _usage(self) -> tuple[int, float]:
        # no oneshot(): RSS and CPU come from two different files, and
        # oneshot()'s caching would cost more than it saves
        times = self.process.cpu_times()
        return rss_bytes(self.process), times.user + times.system

    def read(self, now: float) -> tuple[int, float] | None:
        """(RSS bytes, CPU % of one core since the last read) or None when gone."""
        try:
            rss, cpu_s = self._usage()
        except psutil.Error:
            return None
        elapsed = now - self.last_t
        share = max(0.0, (cpu_s - self.last_cpu_s) / elapsed * 100) if elapsed > 0 else 0.0
        self.last_cpu_s, self.last_t = cpu_s, now
        return rss, share


class ProcessTree:
    """Primed readers for the root pid and its descendants."""

    def __init__(
        self,
        root_pid: int,
        *,
        server_pid: int | None = None,
        proc_root: Path = PROC_ROOT,
        refresh_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root_pid = root_pid
        self.server_pid = server_pid or root_pid
        self.proc_root = proc_root
        self.refresh_s = refresh_s
        self.clock = clock
        self._readers: dict[int, _Reader] = {}
        # The last sample per pid: (RSS bytes, CPU % of one core), for /metrics.
        self.by_pid: dict[int, tuple[int, float]] = {}
        self._refreshed_at: float | None = None
        self._server_primed = False

    def _children(self, pid: int) -> list[int]:
        found: list[int] = []
        task_dir = self.proc_root / str(pid) / "task"
        try:
            tids = os.listdir(task_dir)
        except OSError:
            return found
        for tid in tids:
            data = read_small(task_dir / tid / "children")
            if data:
                found += [int(x) for x in data.split()]
        return found

    def refresh(self) -> None:
        """Re-read tree membership; new pids are primed, gone pids dropped."""
        pids: list[int] = []
        queue = [self.root_pid]
        while queue and len(pids) < 256:  # a runaway fork loop must not stall us
            pid = queue.pop()
            pids.append(pid)
            queue.extend(self._children(pid))
        if self.server_pid not in pids:
            pids.append(self.server_pid)
        now = self.clock()
        fresh: dict[int, _Reader] = {}
        for pid in pids:
            reader = self._readers.get(pid)
            if reader is None:
                try:
                    reader = _Reader(pid, now)  # the priming reading
                except psutil.Error:
                    continue
            fresh[pid] = reader
        self._readers = fresh
        self._refreshed_at = now

    def sample(self) -> TreeSample:
        now = self.clock()
        if self._refreshed_at is None or now - self._refreshed_at >= self.refresh_s:
            self.refresh()
        rss = server_rss = 0
        cpu = server_cpu = 0.0
        gone: list[int] = []
        by_pid: dict[int, tuple[int, float]] = {}
        for pid, reader in self._readers.items():
            found = reader.read(now)
            if found is None:
                gone.append(pid)
                continue
            by_pid[pid] = found
            rss += found[0]
            cpu += found[1]
            if pid == self.server_pid:
                server_rss, server_cpu = found
        self.by_pid = by_pid
        for pid in gone:
            del self._readers[pid]
        if gone:
            self._refreshed_at = None  # someone left: look for replacements next time
        primed = self._server_primed
        self._server_primed = self.server_pid in self._readers
        return TreeSample(rss, cpu, len(self._readers), server_rss, server_cpu, primed)


def read_net_io() -> tuple[int, int]:
    """(bytes sent, bytes received) over every interface; (0, 0) when unknown."""
    try:
        counters = psutil.net_io_counters()
    except (OSError, RuntimeError):
        return (0, 0)
    return (0, 0) if counters is None else (counters.bytes_sent, counters.bytes_recv)


def _started_at(pid: int) -> float:
    """When Vigil's root process (supervisor or server) started, as a unix time."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return time.time()


def _zero() -> int:
    return 0


class ResourceMonitor:
    """Takes ResourceSnapshots and keeps them in a bounded History.

    ``sessions``/``cached``/``in_flight``/``loop_lag_ms`` are callables the
    composition root wires to ChatMemory, Admission and the loop-lag probe.
    """

    def __init__(
        self,
        *,
        memory_limit_mb: float | None = None,
        data_dir: Path = Path("."),
        history_len: int = 720,
        root_pid: int | None = None,
        proc_root: Path = PROC_ROOT,
        cgroup_root: Path = CGROUP_ROOT,
        clock: Callable[[], float] = time.time,
        sessions: Callable[[], int] = _zero,
        cached: Callable[[], int] = _zero,
        in_flight: Callable[[], int] = _zero,
        loop_lag_ms: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.clock = clock
        self.data_dir = data_dir
        self.budget: MemoryBudget = resolve_memory_budget(
            memory_limit_mb, proc_root=proc_root, cgroup_root=cgroup_root
        )
        self.cpu: CpuCapacity = resolve_cpu_capacity(proc_root=proc_root, cgroup_root=cgroup_root)
        self.pressure: PressureFiles = resolve_pressure_files(
            proc_root=proc_root, cgroup_root=cgroup_root
        )
        own = os.getpid()
        self.tree = ProcessTree(root_pid or own, server_pid=own, proc_root=proc_root)
        self.root_started_at = _started_at(root_pid or own)
        self.history = History(history_len)
        self.sessions, self.cached, self.in_flight = sessions, cached, in_flight
        self.loop_lag_ms = loop_lag_ms

    def _disk_percent(self) -> float:
        try:
            return float(psutil.disk_usage(str(self.data_dir)).percent)
        except OSError:
            return 0.0

    def take(self) -> ResourceSnapshot:
        """One snapshot, without storing it (the benchmark measures this)."""
        tree = self.tree.sample()
        return ResourceSnapshot(
            timestamp=self.clock(),
            memory_mb=tree.rss_bytes / MB,
            cpu_percent=min(100.0, tree.cpu_percent / max(self.cpu.cores, 0.01)),
            active_sessions=self.sessions(),
            total_processes=tree.processes,
            disk_usage_percent=self._disk_percent(),
            network_io_bytes=read_net_io(),
            server_memory_mb=tree.server_rss_bytes / MB,
            server_cpu_percent=tree.server_cpu_percent,
            loop_lag_ms=self.loop_lag_ms(),
            in_flight_turns=self.in_flight(),
            cached_sessions=self.cached(),
            cpu_pressure=read_pressure(self.pressure.cpu),
            memory_pressure=read_pressure(self.pressure.memory),
            pressure_scope=self.pressure.scope,
            primed=tree.primed,
        )

    def snapshot(self) -> ResourceSnapshot:
        """Take a snapshot and append it to the history ring."""
        snap = self.take()
        self.history.append(snap)
        return snap


class LoopLagProbe:
    """Measures how late the event loop wakes up; ``take()`` = max since last take."""

    def __init__(self, interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self._max_lag_s = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(self.interval_s)
            lag = loop.time() - started - self.interval_s
            self._max_lag_s = max(self._max_lag_s, lag)

    def take_ms(self) -> float:
        lag, self._max_lag_s = self._max_lag_s, 0.0
        return max(0.0, lag * 1000)
