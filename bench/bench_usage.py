"""Usage accounting: what it adds to one turn, measured directly.

Run: ``.venv/bin/python bench/bench_usage.py [--n N]``

- ``record()``: building the row and counting the Prometheus series (tokens,
  requests by outcome, the TTFT histogram), per call: the only accounting work
  on a turn's path besides reading the ``usage`` chunk;
- reading the ``usage`` chunk (``_take_usage`` on one parsed SSE chunk);
- the batched write (``flush``) per row, off the turn's path (the metrics flush
  loop), for scale.

The end-to-end figure is ``bench/bench_foundation.py``'s turn overhead before
and after (docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.counter_buffer import CounterBuffer
from core.database import Database
from core.llm import _take_usage
from core.usage import CallMeter, Prices, UsageRecorder


def per_call_us(fn: object, n: int) -> list[float]:
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            fn()  # type: ignore[operator]
        samples.append((time.perf_counter() - start) / n * 1e6)
    return sorted(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    args = parser.parse_args()
    recorder = UsageRecorder(CounterBuffer(), Prices(1.0, 2.0))
    meter = CallMeter(prompt_tokens=1200, completion_tokens=300, model="llama3.2")
    meter.first_token = meter.started + 0.2

    def record() -> None:
        recorder.record(
            meter,
            chat_id="tg:42",
            user_id="tg:42",
            kind="turn",
            outcome="ok",
            prompt_estimate=1000,
            completion_text="",
        )
        if len(recorder.pending) > 1000:
            recorder.pending.clear()

    chunk = {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 34}}
    take = per_call_us(lambda: _take_usage(chunk, meter), args.n)
    rec = per_call_us(record, args.n)

    async def flush_cost() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            db = Database(Path(tmp) / "u.db")
            await db.open()
            try:
                recorder.pending.clear()
                for _ in range(500):
                    record()
                start = time.perf_counter()
                written = await recorder.flush(db)
                return (time.perf_counter() - start) / written * 1e6
            finally:
                await db.close()

    flush = asyncio.run(flush_cost())
    print(f"per call, median of 5 x {args.n} (µs):")
    print(f"  record() incl. counters     {rec[2]:8.2f}")
    print(f"  _take_usage(usage chunk)    {take[2]:8.2f}")
    print(f"  flush, per row (batch 500)  {flush:8.2f}   (off the turn's path)")


if __name__ == "__main__":
    main()
