"""Start-up and recovery figures: start-to-healthy and crash-to-healthy seconds.

Run: ``.venv/bin/python bench/bench_startup.py [--runs N]``

Each figure is the median (and max) of N runs with the default supervisor
settings (backoff starts at 1 s), a fake model on loopback, fresh data dirs:

- ``supervise -> /health``: from spawning ``python main.py supervise`` to the
  first ``/health`` answer, next to the baseline ``serve -> /health`` (the bare
  server, no supervisor) and ``python -c pass`` (the interpreter's floor);
- ``start.sh -> running``: the whole script (pre-flight checks included);
- ``kill -9 -> /health``: SIGKILL of the server child to the restarted server
  answering (includes the 1 s first backoff), next to ``/restart/force ->
  /health`` (exit 75: drain, no backoff).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.fake_llm import FakeLLM  # noqa: E402
from tests.processes import AUTH, vigil_env  # noqa: E402

DEFAULTS = {
    "supervisor_backoff_initial_s": None,
    "supervisor_backoff_max_s": None,
    "supervisor_flap_max": None,
    "supervisor_flap_window_s": None,
    "supervisor_watchdog_timeout_s": None,
    "supervisor_stop_timeout_s": None,
    "debug_hooks": None,
}


def env_for(tmp: Path, llm: FakeLLM) -> dict[str, str]:
    return vigil_env(tmp, llm.url, **DEFAULTS)  # type: ignore[arg-type]


def health_pid(url: str, old: int | None = None) -> int | None:
    """The pid of a server answering /health (and different from ``old``)."""
    try:
        health = httpx.get(url + "/health", timeout=1.0)
        live = httpx.get(url + "/health/live", timeout=1.0)
    except httpx.HTTPError:
        return None
    if health.status_code not in (200, 503):
        return None
    pid = int(live.json()["pid"])
    return pid if pid != old else None


def wait(fn: Callable[[], int | None], timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.01)
    raise TimeoutError("no answer")


def spawn(env: dict[str, str], tmp: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), *args],
        cwd=tmp,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def to_healthy(llm: FakeLLM, *args: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = env_for(Path(tmp), llm)
        url = f"http://127.0.0.1:{env['VIGIL_PORT']}"
        started = time.perf_counter()
        proc = spawn(env, Path(tmp), *args)
        wait(lambda: health_pid(url))
        elapsed = time.perf_counter() - started
        stop(proc)
    return elapsed


def interpreter_floor() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - started


def start_script(llm: FakeLLM) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = env_for(Path(tmp), llm)
        env["VIGIL_VENV"] = str(ROOT / ".venv")
        started = time.perf_counter()
        subprocess.run(
            ["bash", "scripts/start.sh"], cwd=ROOT, env=env, check=True, capture_output=True
        )
        elapsed = time.perf_counter() - started
        subprocess.run(
            ["bash", "scripts/stop.sh"], cwd=ROOT, env=env, check=True, capture_output=True
        )
    return elapsed


def recovery(llm: FakeLLM, how: str) -> float:
    """One fresh supervisor; kill -9 (or force) its server; seconds to a new healthy one."""
    with tempfile.TemporaryDirectory() as tmp:
        env = env_for(Path(tmp), llm)
        url = f"http://127.0.0.1:{env['VIGIL_PORT']}"
        proc = spawn(env, Path(tmp), "supervise", "--no-worker")
        first = wait(lambda: health_pid(url))
        started = time.perf_counter()
        if how == "kill":
            os.kill(first, signal.SIGKILL)
        else:
            httpx.post(url + "/restart/force", headers=AUTH, timeout=5).raise_for_status()
        wait(lambda: health_pid(url, old=first))
        elapsed = time.perf_counter() - started
        stop(proc)
    return elapsed


def row(name: str, values: list[float], note: str) -> str:
    return f"| {name:<28} | {statistics.median(values):6.2f} | {max(values):6.2f} | {note} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    measures: list[tuple[str, Callable[[FakeLLM], float], str]] = [
        ("python -c pass (floor)", lambda llm: interpreter_floor(), "baseline"),
        ("serve -> /health", lambda llm: to_healthy(llm, "serve"), "baseline"),
        ("supervise -> /health", lambda llm: to_healthy(llm, "supervise", "--no-worker"), "< 3 s"),
        ("supervise+worker -> /health", lambda llm: to_healthy(llm, "supervise"), "start.sh's"),
        ("start.sh -> running", start_script, "whole script"),
        ("kill -9 -> /health", lambda llm: recovery(llm, "kill"), "target < 3 s"),
        ("/restart/force -> /health", lambda llm: recovery(llm, "force"), "exit 75"),
    ]
    values: dict[str, list[float]] = {name: [] for name, _, _ in measures}
    with FakeLLM() as llm:
        # Round-robin, so a burst of load elsewhere hits every figure alike.
        for _ in range(runs):
            for name, measure, _ in measures:
                values[name].append(measure(llm))
    figures = [(name, values[name], note) for name, _, note in measures]
    print(f"Start-up and recovery, seconds (median and max of {runs} runs, {os.cpu_count()} CPUs)")
    print("| figure                       | median |    max | note |")
    print("| ---------------------------- | -----: | -----: | ---- |")
    for name, values, note in figures:
        print(row(name, values, note))


if __name__ == "__main__":
    main()
