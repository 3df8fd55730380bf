"""A/B of the per-turn overhead of two checkouts: is a change's cost per turn real?

Each round starts, for tree A then tree B, that tree's own Vigil on an instant
model and the bare FastAPI endpoint (``bench_foundation``'s ``Served``), warms
up 50 turns, times ``--turns`` sequential turns of one chat on each, and
prints the p50s. Rounds alternate A and B so that a change of the machine's
load hits both; the table ends with the medians. Run it on a quiet machine:

    .venv/bin/python bench/bench_turn_ab.py --a ../vigil-before --b . --rounds 6
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

ROUND = """
import asyncio, sys, tempfile
from pathlib import Path
sys.path[:0] = [".", "bench"]
import bench_foundation as bf
turns = int(sys.argv[1])
with tempfile.TemporaryDirectory() as t:
    tmp = Path(t)
    vport, bport = bf.free_port(), bf.free_port()
    with bf.Served("vigil", vport, tmp / "turns"), bf.Served("bare", bport, tmp / "bare"):
        vurl = f"http://127.0.0.1:{vport}/api/chats/{{chat}}/messages"
        burl = f"http://127.0.0.1:{bport}/api/chats/{{chat}}/messages"
        asyncio.run(bf.drive(vurl, 1, 50, "bench", 0.0))
        asyncio.run(bf.drive(burl, 1, 50, None, 0.0))
        v, _ = asyncio.run(bf.drive(vurl, 1, turns, "bench", 0.0))
        b, _ = asyncio.run(bf.drive(burl, 1, turns, None, 0.0))
        print(bf.pct(v, 0.5) * 1000, bf.pct(b, 0.5) * 1000)
"""


def one_round(tree: Path, turns: int) -> tuple[float, float]:
    python = tree / ".venv" / "bin" / "python"
    out = subprocess.run(
        [str(python if python.exists() else sys.executable), "-c", ROUND, str(turns)],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", type=Path, required=True, help="checkout A (before)")
    parser.add_argument("--b", type=Path, required=True, help="checkout B (after)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--turns", type=int, default=400)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"A": [], "B": []}
    columns = ["round", "A Vigil p50 (ms)", "A bare p50", "A overhead"]
    columns += ["B Vigil p50", "B bare p50", "B overhead"]
    print("| " + " | ".join(columns) + " |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in range(1, args.rounds + 1):
        a = one_round(args.a.resolve(), args.turns)
        b = one_round(args.b.resolve(), args.turns)
        results["A"].append(a)
        results["B"].append(b)
        print(
            f"| {n} | {a[0]:.3f} | {a[1]:.3f} | {a[0] - a[1]:.3f} "
            f"| {b[0]:.3f} | {b[1]:.3f} | {b[0] - b[1]:.3f} |"
        )
    med = {k: statistics.median(v - bare for v, bare in rows) for k, rows in results.items()}
    vigil = {k: statistics.median(v for v, _ in rows) for k, rows in results.items()}
    print(
        f"| **median** | {vigil['A']:.3f} | | **{med['A']:.3f}** "
        f"| {vigil['B']:.3f} | | **{med['B']:.3f}** |"
    )
    print(f"\nB - A overhead at p50: {med['B'] - med['A']:+.3f} ms")


if __name__ == "__main__":
    main()
