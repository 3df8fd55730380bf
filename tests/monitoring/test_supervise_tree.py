"""The governor's process tree under ``main.py supervise`` run directly (as systemd does)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fake_llm import FakeLLM
from tests.processes import vigil, vigil_env, wait_for

pytestmark = pytest.mark.slow


def test_governor_counts_supervisor_server_and_worker_without_a_pid_file(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    env = vigil_env(
        tmp_path,
        fake_llm.url,
        governor_enabled=True,
        governor_sample_interval_s=0.5,
    )
    with vigil(tmp_path, env, "supervise") as proc:
        proc.wait_live()
        assert not (proc.data_dir / "vigil.pid").exists()  # systemd writes none

        def children() -> dict[str, Any] | None:
            kids = proc.supervisor_state().get("children", {})
            running = {name: c["pid"] for name, c in kids.items() if c.get("state") == "running"}
            return running if set(running) == {"server", "worker"} else None

        pids = wait_for(children, 20, "the server and the worker to run")

        def three() -> dict[str, Any] | None:
            try:
                body = httpx.get(f"{proc.url}/resources/status", timeout=5).json()
            except httpx.HTTPError:
                return None
            snapshot = body.get("snapshot") or {}
            return body if snapshot.get("total_processes") == 3 else None

        # The tree's membership is refreshed every 10 s; the worker may start after.
        status = wait_for(three, 30, "the governor to count three processes", interval=0.5)
        snapshot = status["snapshot"]
        assert snapshot["memory_mb"] > snapshot["server_memory_mb"]  # not the server alone
        assert proc.proc.pid not in pids.values()
        assert proc.proc.poll() is None
