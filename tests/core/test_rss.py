"""The one RSS reader, against this real process."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from core.rss import MB, rss_bytes, rss_mb


def test_rss_follows_memory_this_process_touches() -> None:
    before = rss_mb()
    blob = b"x" * (64 * MB)  # written, so resident
    after = rss_mb()
    assert before is not None and after is not None
    assert after - before >= 60
    assert after == round(after, 1)
    assert rss_bytes(psutil.Process()) >= len(blob)


def test_a_pid_that_cannot_exist_has_no_rss() -> None:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert rss_mb(pid_max + 1) is None
    assert rss_mb(-1) is None
    with pytest.raises(psutil.NoSuchProcess):
        rss_bytes(psutil.Process(pid_max + 1))
