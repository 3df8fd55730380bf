"""Backup time and size at N messages (default 1M), against plain baselines.

    .venv/bin/python bench/bench_backup.py [--messages 1000000] [--db PATH]

Rows, measured in the same run on the same file:
  * vigil backup (level 6 and level 1): online copy + integrity_check + gzip +
    sha256 + read-back verification, i.e. everything ``python main.py backup``
    does; phases timed through the progress callback;
  * sqlite3 online backup, uncompressed (``.backup`` in the sqlite3 shell);
  * ``cp`` of the checkpointed file (not consistent under writes; a floor);
  * ``gzip -6`` of the file alone (the compression share of Vigil's time).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.corpus import DEFAULT_DB, ensure
from core.backups.backup import create_backup


def timed(fn) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def vigil_backup(db: Path, out: Path, level: int) -> tuple[float, int, dict[str, float]]:
    marks: dict[str, float] = {}
    started = time.perf_counter()

    def progress(phase: str, done: int, total: int) -> None:
        marks.setdefault(phase + "_start", time.perf_counter() - started)
        marks[phase + "_end"] = time.perf_counter() - started

    snap = create_backup(db, out, name=f"bench-l{level}", level=level, progress=progress)
    took = time.perf_counter() - started
    phases = {
        "copy": marks.get("copy_end", 0.0),
        "check": marks.get("check_end", 0.0) - marks.get("copy_end", 0.0),
        "compress": marks.get("compress_end", 0.0) - marks.get("check_end", 0.0),
        "verify": took - marks.get("compress_end", took),
    }
    return took, snap.size_bytes, phases


def sqlite_backup(db: Path, target: Path) -> tuple[float, int]:
    def run() -> None:
        src = sqlite3.connect(db)
        dst = sqlite3.connect(target)
        src.backup(dst)
        dst.close()
        src.close()

    took, _ = timed(run)
    return took, target.stat().st_size


WRITER = """
import json, sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=10, isolation_level=None)
conn.execute("PRAGMA synchronous=NORMAL")
stop_at = time.monotonic() + float(sys.argv[2])
samples = []
while time.monotonic() < stop_at:
    started = time.perf_counter()
    conn.execute(
        "INSERT INTO messages (chat_id, role, content, created_at)"
        " VALUES ('bench:w', 'user', ?, ?)",
        ("a message written while a backup runs", time.time()),
    )
    samples.append((time.perf_counter() - started) * 1000)
    time.sleep(0.005)  # ~150 commits/s: a busy chat server
print(json.dumps(samples))
"""


def writer_latency(db: Path, seconds: float, during: object = None) -> list[float]:
    """Insert+commit latencies (ms) of a separate writer process, optionally during ``during()``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    if callable(during):
        time.sleep(0.2)
        during()
    out, _ = proc.communicate(timeout=seconds + 60)
    return sorted(json.loads(out))


def pct(samples: list[float], q: float) -> float:
    return samples[min(len(samples) - 1, round(q * (len(samples) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path, default=None)
    args = parser.parse_args()
    db = args.db or (
        DEFAULT_DB
        if args.messages == 1_000_000
        else DEFAULT_DB.with_name(f"messages-{args.messages}.db")
    )
    db, built = ensure(db, args.messages)
    if built is not None:
        print(f"generated {args.messages} messages in {built:.1f} s -> {db}")
    size = db.stat().st_size
    print(f"database: {db} {size / 1e6:.1f} MB, {args.messages} messages\n")

    results: list[tuple[str, float, int, str]] = []
    with tempfile.TemporaryDirectory(dir=db.parent) as tmp:
        work = Path(tmp)
        for level in (6, 3, 1):
            took, out_size, phases = vigil_backup(db, work / f"vigil-{level}", level)
            detail = ", ".join(f"{k} {v:.2f}" for k, v in phases.items())
            results.append((f"vigil backup (gzip -{level}, verified)", took, out_size, detail))
        took, out_size = sqlite_backup(db, work / "plain.db")
        results.append(("sqlite3 online backup, no compression", took, out_size, "baseline"))
        took, _ = timed(lambda: shutil.copyfile(db, work / "cp.db"))
        results.append(("cp of the file", took, size, "floor; not consistent under writes"))
        gz = work / "file.gz"
        took, _ = timed(
            lambda: subprocess.run(f"gzip -6 -c '{db}' > '{gz}'", shell=True, check=True)
        )
        results.append(("gzip -6 of the file alone", took, gz.stat().st_size, "compression only"))

    print(f"{'method':<40} {'time s':>8} {'size MB':>9} {'ratio':>6}  notes")
    for name, took, out_size, note in results:
        ratio = size / out_size if out_size else 0
        print(f"{name:<40} {took:>8.2f} {out_size / 1e6:>9.1f} {ratio:>6.2f}  {note}")
    default_backup_s = results[2][1]  # the gzip -1 row: the default level
    print_writer_impact(db, window=max(3.0, default_backup_s + 1.0))


def print_writer_impact(db: Path, *, window: float) -> None:
    """A concurrent writer's commit latency, idle vs while a backup runs (WAL: no blocking)."""
    with tempfile.TemporaryDirectory(dir=db.parent) as tmp:
        idle = writer_latency(db, window)
        during = writer_latency(
            db, window, lambda: create_backup(db, Path(tmp), name="under-writes", level=1)
        )
    print(f"\nwriter commits (separate process, ~150/s, {window:.0f} s windows), ms")
    print(f"{'':<28} {'commits':>8} {'p50':>7} {'p99':>7} {'max':>7}")
    for name, samples in (("no backup running", idle), ("during a vigil backup", during)):
        row = f"{len(samples):>8} {pct(samples, 0.5):>7.2f} {pct(samples, 0.99):>7.2f}"
        print(f"{name:<28} {row} {samples[-1]:>7.2f}")
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DELETE FROM messages WHERE chat_id = 'bench:w'")  # leave the corpus as it was
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


if __name__ == "__main__":
    main()
