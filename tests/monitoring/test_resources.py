"""ResourceMonitor against the real process tree (a real child process)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from monitoring.resources import ProcessTree, ResourceMonitor, vigil_root_pid
from monitoring.snapshot import History, downsample
from tests.monitoring.helpers import snap


def test_snapshots_cover_children_and_the_first_one_is_not_primed(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        clock = iter(range(1000, 2000, 5))
        monitor = ResourceMonitor(
            memory_limit_mb=2048,
            data_dir=tmp_path,
            history_len=3,
            clock=lambda: float(next(clock)),
            sessions=lambda: 7,
            in_flight=lambda: 2,
            loop_lag_ms=lambda: 12.5,
        )
        first = monitor.snapshot()
        second = monitor.snapshot()
        assert not first.primed and second.primed
        assert second.total_processes >= 2  # this process and the sleeping child
        own_rss_mb = second.server_memory_mb
        assert second.memory_mb > own_rss_mb > 1
        assert (second.active_sessions, second.in_flight_turns, second.loop_lag_ms) == (7, 2, 12.5)
        assert 0 <= second.disk_usage_percent <= 100
        assert monitor.budget.source == "setting" and monitor.budget.mb == 2048
        for _ in range(3):
            monitor.snapshot()
        assert len(monitor.history) == 3  # bounded ring
        assert monitor.history.latest is not None
        assert monitor.history.latest.timestamp == 1020.0
    finally:
        child.kill()
        child.wait()


def test_a_child_that_exits_leaves_the_tree() -> None:
    tree = ProcessTree(os.getpid(), refresh_s=0.0)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert tree.sample().processes >= 2
    finally:
        child.kill()
        child.wait()
    assert tree.sample().processes == 1


_CHILD_ROOT = (
    "import os, sys; from pathlib import Path; "
    "from monitoring.resources import vigil_root_pid; "
    "print(vigil_root_pid(os.getpid(), Path(sys.argv[1])), os.getppid(), flush=True)"
)
_PARENT = (
    "import fcntl, os, subprocess, sys; from pathlib import Path; "
    "lock = Path(sys.argv[1]) / 'supervisor.json.lock'; "
    "fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600); "
    "sys.argv[2] == 'lock' and fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); "
    "subprocess.run([sys.executable, '-c', sys.argv[3], sys.argv[1]], check=True)"
)


def _root_seen_by_child(data_dir: Path, mode: str) -> tuple[int, int]:
    """(vigil_root_pid, parent pid) as a child of a parent that holds the lock or not."""
    out = subprocess.run(
        [sys.executable, "-c", _PARENT, str(data_dir), mode, _CHILD_ROOT],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout.split()
    return int(out[0]), int(out[1])


def test_root_pid_is_the_parent_only_when_it_holds_the_supervisor_lock(tmp_path: Path) -> None:
    root, parent = _root_seen_by_child(tmp_path, "lock")
    assert root == parent  # the supervisor: no PID file needed
    root, parent = _root_seen_by_child(tmp_path, "nolock")
    assert root != parent  # a shell, a test runner: only the process itself
    # A PID file naming the parent proves nothing.
    (tmp_path / "vigil.pid").write_text(f"{os.getppid()}\n")
    assert vigil_root_pid(os.getpid(), tmp_path) == os.getpid()
    assert vigil_root_pid(os.getpid(), None) == os.getpid()


def test_history_since_and_downsample() -> None:
    history = History(100)
    for t in range(50):
        history.append(snap(float(t)))
    assert [s.timestamp for s in history.since(45.0)] == [45.0, 46.0, 47.0, 48.0, 49.0]
    picked = downsample(history.items(), 10)
    assert len(picked) == 10 and picked[-1].timestamp == 49.0 and picked[0].timestamp == 0.0


def burn_cpu(seconds: float) -> None:
    started = time.process_time()
    while time.process_time() - started < seconds:
        pass


def test_membership_comes_from_the_children_lists_and_cpu_is_a_primed_delta(
    tmp_path: Path,
) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        own = os.getpid()
        proc = tmp_path / "proc"  # only membership is read from here; usage from psutil
        (proc / str(own) / "task" / str(own)).mkdir(parents=True)
        (proc / str(own) / "task" / str(own) / "children").write_text(f"{child.pid} ")
        now = [0.0]
        tree = ProcessTree(own, proc_root=proc, clock=lambda: now[0], refresh_s=60)
        first = tree.sample()
        assert not first.primed and first.processes == 2
        assert first.cpu_percent == 0.0  # the first reading only primes
        assert first.rss_bytes > first.server_rss_bytes > 1024 * 1024
        cpu_before = time.process_time()
        burn_cpu(0.2)
        now[0] = 1.0  # the injected clock says one second went by
        second = tree.sample()
        spent = time.process_time() - cpu_before
        assert second.primed
        # this process burnt >= 0.2 s of CPU in the "second": 20 % of a core less a
        # clock tick (1 %) of rounding, and no more than it measured itself
        assert 18.5 <= second.server_cpu_percent <= spent * 100 + 2
    finally:
        child.kill()
        child.wait()
    assert tree.sample().processes == 1  # the child is gone


def test_net_io_counts_traffic_through_loopback() -> None:
    from monitoring.resources import read_net_io

    payload = b"x" * (4 * 1024 * 1024)
    sent0, received0 = read_net_io()
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()) as client,
    ):
        peer, _ = server.accept()
        with peer:
            reader = threading.Thread(target=lambda: drain(peer, len(payload)))
            reader.start()
            client.sendall(payload)
            reader.join()
    sent1, received1 = read_net_io()
    assert sent1 - sent0 >= len(payload)
    assert received1 - received0 >= len(payload)


def drain(sock: socket.socket, size: int) -> None:
    while size > 0:
        size -= len(sock.recv(65536))


def test_history_survives_a_restart_through_its_file(tmp_path: Path) -> None:
    path = tmp_path / "resource_history.json"
    old = History(10)
    for t in range(5):
        old.append(snap(float(t), 100.0 + t, network_io_bytes=(t, 2 * t)))
    assert old.save(path) == 5
    assert path.stat().st_mode & 0o777 == 0o600
    new = History(3)
    new.append(snap(10.0, 50.0))
    assert new.load(path, newer_than=2.0) == 3
    assert [s.timestamp for s in new] == [3.0, 4.0, 10.0]  # bounded, oldest dropped
    assert new.items()[1].network_io_bytes == (4, 8)
    path.write_text("{not json")
    assert History(4).load(path, newer_than=0) == 0
    assert History(4).load(tmp_path / "missing.json", newer_than=0) == 0


def test_bad_rows_in_the_history_file_are_dropped_one_by_one(tmp_path: Path) -> None:
    path = tmp_path / "resource_history.json"
    good = snap(5.0, 120.0).to_dict()
    rows = [
        {"timestamp": "soon"},
        {**snap(6.0).to_dict(), "memory_mb": "lots"},
        {**snap(7.0).to_dict(), "network_io_bytes": ["a", 1]},
        {**snap(8.0).to_dict(), "cpu_percent": None},
        {**snap(8.5).to_dict(), "memory_mb": float("nan")},
        "not a row",
        42,
        {**good, "memory_mb": "130.5", "active_sessions": "2"},  # numbers as text: coerced
        good,
    ]
    path.write_text(json.dumps(rows))
    history = History(10)
    assert history.load(path, newer_than=0) == 2
    assert [(s.timestamp, s.memory_mb) for s in history] == [(5.0, 130.5), (5.0, 120.0)]
    assert history.items()[0].active_sessions == 2
    path.write_text(json.dumps({"timestamp": 1}))
    assert History(4).load(path, newer_than=0) == 0
