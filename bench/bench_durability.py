"""Acknowledged = committed, under kill -9: the long version of the durability test.

Run: ``.venv/bin/python bench/bench_durability.py [--kills 20] [--chats 8] [--min-acked 50000]``

A supervised server (``python main.py supervise --no-worker``) on a fake model
on loopback takes N concurrent chatters posting numbered messages (every
third chatter resets its context every 25 messages) while ``main.py backup``
runs in a loop. Every few seconds the server child is killed with SIGKILL;
every fifth kill takes the whole tree (supervisor and server) and starts the
supervisor again. At the end the whole tree is killed once more, and every
message that got HTTP 200 is looked up in ``system.db``.

Printed: acknowledged, acknowledged-missing, duplicates, kills, recovery time
(SIGKILL to the next ``/health/live`` answer) p50/max, and ``validate``. The
supervisor's backoff is pinned at its default first step (1 s) for the whole
run, so twenty crashes in a few minutes do not escalate it or reach the flap
limit, which is what those settings are for; the recovery figure therefore
includes one 1 s backoff.

The baseline row is the same load against raw sqlite3 in this process (each
insert committed, the connection killed by closing it without a checkpoint),
for the cost of the HTTP + turn path around the commit.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.fake_llm import FakeLLM  # noqa: E402
from tests.processes import MAIN, Chatter, VigilProcess, query, vigil_env  # noqa: E402


def live_pid(url: str) -> int | None:
    try:
        response = httpx.get(url + "/health/live", timeout=0.5)
    except httpx.HTTPError:
        return None
    return int(response.json()["pid"]) if response.status_code == 200 else None


def wait_new_pid(url: str, old: int | None, timeout: float = 30.0) -> tuple[int, float]:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        pid = live_pid(url)
        if pid is not None and pid != old:
            return pid, time.monotonic() - started
        time.sleep(0.02)
    raise SystemExit(f"no server answered within {timeout:g} s")


def backups(env: dict[str, str], cwd: Path, stop: threading.Event, done: list[int]) -> None:
    while not stop.is_set():
        subprocess.run(
            [sys.executable, str(MAIN), "backup"],
            env=env,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
        )
        done.append(1)
        stop.wait(2.0)


def run(kills: int, chats: int, min_acked: int, interval: float) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="vigil-durability-"))
    with FakeLLM() as llm:
        env = vigil_env(
            tmp,
            llm.url,
            supervisor_backoff_initial_s=1.0,
            supervisor_backoff_max_s=1.0,
            supervisor_flap_max=10_000,
            supervisor_watchdog_timeout_s=10.0,
            context_max_messages=6,
        )
        sup = VigilProcess(tmp, env, "supervise", "--no-worker")
        url = sup.url
        pid, _ = wait_new_pid(url, None)
        stop = threading.Event()
        chatters = [Chatter(url, f"d{i}", stop, resets=(i % 3 == 0)) for i in range(chats)]
        done_backups: list[int] = []
        backup_thread = threading.Thread(
            target=backups, args=(env, tmp, stop, done_backups), daemon=True
        )
        for thread in [*chatters, backup_thread]:
            thread.start()
        recoveries: list[float] = []
        tree_recoveries: list[float] = []
        tree_kills = 0
        started = time.monotonic()
        killed = 0
        while killed < kills or sum(len(c.acked) for c in chatters) < min_acked:
            time.sleep(interval)
            whole_tree = killed % 5 == 4
            if whole_tree:
                sup.kill_tree()
                tree_kills += 1
                sup = VigilProcess(tmp, env, "supervise", "--no-worker")
            else:
                os.kill(pid, signal.SIGKILL)
            killed += 1
            pid, took = wait_new_pid(url, pid)
            (tree_recoveries if whole_tree else recoveries).append(took)
            acked_now = sum(len(c.acked) for c in chatters)
            print(
                f"  kill {killed}: back in {took:.2f} s, {acked_now} acknowledged so far",
                flush=True,
            )
            if time.monotonic() - started > 1800:
                break
        stop.set()
        for thread in [*chatters, backup_thread]:
            thread.join(30)
        sup.kill_tree()  # the last one: the whole tree, mid-load
        killed += 1
        tree_kills += 1
    acked = [text for c in chatters for text in c.acked]
    stored = [r["content"] for r in query(sup.db, "SELECT content FROM messages WHERE role='user'")]
    counts: dict[str, int] = {}
    for text in stored:
        counts[text] = counts.get(text, 0) + 1
    missing = sum(1 for text in acked if text not in counts)
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    validate = subprocess.run(
        [sys.executable, str(MAIN), "validate"], env=env, cwd=tmp, capture_output=True, text=True
    )
    return {
        "acknowledged": len(acked),
        "missing": missing,
        "duplicates": duplicates,
        "kills": killed,
        "tree_kills": tree_kills,
        "backups": len(done_backups),
        "recovery_p50": statistics.median(recoveries),
        "recovery_max": max(recoveries),
        "tree_p50": statistics.median(tree_recoveries) if tree_recoveries else None,
        "tree_max": max(tree_recoveries) if tree_recoveries else None,
        "validate": "ok" if validate.returncode == 0 else validate.stdout[-200:],
        "seconds": time.monotonic() - started,
        "refused": sum(sum(c.errors.values()) for c in chatters),
        "data": tmp,
    }


def raw_baseline(count: int) -> float:
    """Raw sqlite3 autocommit inserts/s with WAL + NORMAL: the floor of the write path."""
    tmp = Path(tempfile.mkdtemp(prefix="vigil-durability-raw-"))
    conn = sqlite3.connect(tmp / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, content TEXT)")
    started = time.perf_counter()
    for n in range(count):
        conn.execute("INSERT INTO m (content) VALUES (?)", (f"raw #{n}",))
    took = time.perf_counter() - started
    conn.close()
    return count / took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--chats", type=int, default=8)
    parser.add_argument("--min-acked", type=int, default=50_000)
    parser.add_argument("--interval", type=float, default=4.0, help="seconds between kills")
    args = parser.parse_args()
    result = run(args.kills, args.chats, args.min_acked, args.interval)
    raw = raw_baseline(20_000)
    rate = result["acknowledged"] / result["seconds"]  # type: ignore[operator]
    print()
    print("| figure | Vigil (HTTP turns, kill -9 cycles) | target |")
    print("| --- | --- | --- |")
    print(f"| acknowledged messages | {result['acknowledged']:,} | ≥ 50,000 |")
    print(f"| acknowledged but missing | {result['missing']} | 0 |")
    print(f"| duplicates | {result['duplicates']} | 0 |")
    print(f"| kills (of which whole tree) | {result['kills']} ({result['tree_kills']}) | ≥ 20 |")
    print(
        f"| recovery, server SIGKILL -> /health/live (supervisor restarts it) |"
        f" p50 {result['recovery_p50']:.2f} s, max {result['recovery_max']:.2f} s | ≤ 3 s |"
    )
    if result["tree_p50"] is not None:
        print(
            f"| recovery, whole tree SIGKILL -> supervise started again -> /health/live |"
            f" p50 {result['tree_p50']:.2f} s, max {result['tree_max']:.2f} s | — |"
        )
    print(f"| backups completed during the run | {result['backups']} | — |")
    print(f"| refused while restarting (not acknowledged) | {result['refused']} | — |")
    print(f"| validate after the last kill | {result['validate']} | ok |")
    print(f"| acknowledged turns/s over the run | {rate:,.0f} | — |")
    print(f"| baseline: raw sqlite3 autocommit inserts/s | {raw:,.0f} | — |")
    print(f"\ndata left in {result['data']}")


if __name__ == "__main__":
    main()
