"""PIDs and the PID file, against real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from core.process import pid_alive, read_pid_file, server_pid


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process whose command line names main.py, as Vigil's do."""
    code = "import time; print('up', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code, "main.py"], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"  # exec'd, not forked
    yield proc
    proc.kill()
    proc.wait()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize(("text", "expected"), [("123\n", 123), ("77 extra", 77), ("0", None)])
def test_read_pid_file(tmp_path: Path, text: str, expected: int | None) -> None:
    pid_file = tmp_path / "vigil.pid"
    pid_file.write_text(text)
    assert read_pid_file(pid_file) == expected


@pytest.mark.parametrize("text", ["", "garbage", "-5"])
def test_a_missing_or_garbled_pid_file_names_no_process(tmp_path: Path, text: str) -> None:
    assert read_pid_file(tmp_path / "missing.pid") is None
    (tmp_path / "vigil.pid").write_text(text)
    assert read_pid_file(tmp_path / "vigil.pid") is None


def test_pid_alive() -> None:
    assert pid_alive(os.getpid()) is True
    assert pid_alive(1) is True  # exists even where we may not signal it
    assert pid_alive(_dead_pid()) is False


def test_server_pid_is_a_live_vigil_process_other_than_us(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    pid_file = tmp_path / "vigil.pid"
    pid_file.write_text(f"{sleeper.pid}\n")
    assert server_pid(pid_file) == sleeper.pid
    pid_file.write_text(f"{_dead_pid()}\n")
    assert server_pid(pid_file) is None
    pid_file.write_text(f"{os.getpid()}\n")
    assert server_pid(pid_file) is None


def test_a_recycled_pid_of_another_program_is_not_a_server(tmp_path: Path) -> None:
    other = subprocess.Popen(["sh", "-c", "echo up; exec sleep 60"], stdout=subprocess.PIPE)
    assert other.stdout is not None and other.stdout.readline() == b"up\n"
    try:
        (tmp_path / "vigil.pid").write_text(f"{other.pid}\n")
        assert server_pid(tmp_path / "vigil.pid") is None
    finally:
        other.kill()
        other.wait()


def test_the_supervisor_lock_name_is_the_one_the_supervisor_takes() -> None:
    from core.process import SUPERVISOR_LOCK_NAME
    from core.restarts import SUPERVISOR_LOCK

    assert SUPERVISOR_LOCK_NAME == SUPERVISOR_LOCK


_HOLD = (
    "import fcntl, os, sys, time; "
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600); "
    "sys.argv[2] == 'lock' and fcntl.flock(fd, fcntl.LOCK_EX); "
    "print('up', flush=True); time.sleep(60)"
)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(mode: str) -> subprocess.Popen[bytes]:
        lock = tmp_path / "data" / "supervisor.json.lock"
        lock.parent.mkdir(exist_ok=True)
        proc = subprocess.Popen(
            [sys.executable, "-c", _HOLD, str(lock), mode], stdout=subprocess.PIPE
        )
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_the_running_supervisor_is_the_lock_holder_not_a_pid_file(
    tmp_path: Path, holder: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    from core.process import holds_flock, is_supervised_by, running_supervisor, started_from

    data = tmp_path / "data"
    assert running_supervisor(data) is None  # no directory, no lock file
    opener = holder("open")  # has the file open, holds no lock
    assert running_supervisor(data) is None
    assert not holds_flock(opener.pid, data / "supervisor.json.lock")
    locker = holder("lock")
    assert running_supervisor(data) == locker.pid
    assert is_supervised_by(locker.pid, data) and not is_supervised_by(opener.pid, data)
    assert started_from(locker.pid) == os.getcwd()
    locker.kill()
    locker.wait()
    assert running_supervisor(data) is None  # the kernel dropped it with the process
    assert started_from(locker.pid) == "?"
