"""Idle memory of the process tree: supervisor, server and worker RSS.

Run: ``.venv/bin/python bench/bench_idle_tree.py [--settle 10] [--runs 3]``

Starts ``python main.py supervise`` (server and Huey worker as its children)
on fresh data/logs dirs with a fake model on loopback, waits until the server
answers ``/health`` and both children run, lets the tree settle for
``--settle`` seconds, then reads each process's RSS (and USS, the memory only
that process holds) with psutil. Prints one line per run and the median.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402

from tests.fake_llm import FakeLLM  # noqa: E402
from tests.processes import MAIN, vigil_env  # noqa: E402

NAMES = ("supervisor", "server", "worker")


def children_up(supervisor: psutil.Process, url: str) -> dict[str, psutil.Process] | None:
    try:
        if httpx.get(url + "/health/live", timeout=1.0).status_code != 200:
            return None
    except httpx.HTTPError:
        return None
    found: dict[str, psutil.Process] = {}
    for child in supervisor.children():
        argv = child.cmdline()
        for name in ("serve", "worker"):
            if argv[-1:] == [name]:
                found["server" if name == "serve" else name] = child
    return found if len(found) == 2 else None


def one_run(settle_s: float, llm: FakeLLM) -> dict[str, tuple[float, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        env = vigil_env(Path(tmp), llm.url, debug_hooks=None)
        url = f"http://127.0.0.1:{env['VIGIL_PORT']}"
        proc = subprocess.Popen(
            [sys.executable, str(MAIN), "supervise"],
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            supervisor = psutil.Process(proc.pid)
            deadline = time.monotonic() + 60
            tree = None
            while tree is None and time.monotonic() < deadline:
                time.sleep(0.2)
                tree = children_up(supervisor, url)
            if tree is None:
                raise SystemExit("the tree did not come up within 60 s")
            time.sleep(settle_s)
            tree["supervisor"] = supervisor
            figures = {}
            for name in NAMES:
                info = tree[name].memory_full_info()
                figures[name] = (info.rss / 1048576, info.uss / 1048576)
            return figures
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settle", type=float, default=10.0, help="seconds idle before reading")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = []
    with FakeLLM() as llm:
        for _ in range(args.runs):
            figures = one_run(args.settle, llm)
            runs.append(figures)
            print(
                "  ".join(f"{n} {figures[n][0]:.1f} MB (uss {figures[n][1]:.1f})" for n in NAMES)
                + f"  tree {sum(f[0] for f in figures.values()):.1f} MB"
            )
    print(f"median of {args.runs} runs, RSS (USS) in MB:")
    for name in NAMES:
        rss = statistics.median(r[name][0] for r in runs)
        uss = statistics.median(r[name][1] for r in runs)
        print(f"  {name:<10} {rss:6.1f} ({uss:.1f})")
    total = statistics.median(sum(f[0] for f in r.values()) for r in runs)
    print(f"  {'tree':<10} {total:6.1f}")


if __name__ == "__main__":
    main()
