"""Edits per answer and time to first visible text, streaming a 2,000-token answer.

Runs on a virtual clock (tests/virtual_time.py): every chat's model sends its
first token after 0.3 s and then one token every 25 ms (40 tokens/s, so one
answer streams for 50 s), and the channel records every call. Compared side
by side in the same run:

- ``every token``: an edit per token (what naive bots do) — the baseline
- ``fixed 1.5 s``: one edit per chat every 1.5 s, no global budget
- ``vigil``: StreamingOptimizer with the shared EditScheduler (1.5 s private
  interval, adaptive share of a 20 calls/s global budget)

Columns: sends and edits per answer, time to first visible text (p50/p95),
the answer's completion time, the most calls in any 1 s window across all
chats (Telegram allows about 30 messages/s per bot) and the per-chat calls
closer than 1 s to the chat's previous call.

    .venv/bin/python bench/bench_streaming.py [--tokens 2000] [--chats 1,50] [--stagger 0]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.streaming import EditScheduler, StreamingOptimizer
from tests.virtual_time import run_virtual


@dataclass
class Recorder:
    """A Channel that records (time, chat, kind) of every call."""

    interval: float
    name: str = "bench"
    max_message_chars: int = 4096
    calls: list[tuple[float, str, str]] = field(default_factory=list)
    boxes: dict[str, list[str]] = field(default_factory=dict)

    def edit_interval(self, chat_id: str) -> float:
        return self.interval

    async def send(self, chat_id: str, text: str) -> str:
        self.calls.append((asyncio.get_running_loop().time(), chat_id, "send"))
        box = self.boxes.setdefault(chat_id, [])
        box.append(text)
        return str(len(box) - 1)

    async def edit(self, chat_id: str, message_id: str, text: str) -> None:
        self.calls.append((asyncio.get_running_loop().time(), chat_id, "edit"))
        self.boxes[chat_id][int(message_id)] = text

    async def typing(self, chat_id: str) -> None:
        return None


def tokens_for(seed: int, count: int) -> list[str]:
    rnd = random.Random(seed)
    words = ["the", "stream", "of", "tokens", "arrives", "steadily", "and", "Vigil", "shows", "it"]
    out = []
    for i in range(count):
        end = ". " if rnd.random() < 0.08 else (".\n\n" if rnd.random() < 0.01 else " ")
        out.append(rnd.choice(words) + end if i % 13 else rnd.choice(words) + " ")
    return out


STRATEGIES = {
    "every token": {"interval": 0.0, "growth": 0, "rate": math.inf},
    "fixed 1.5 s": {"interval": 1.5, "growth": 24, "rate": math.inf},
    "vigil": {"interval": 1.5, "growth": 24, "rate": 20.0},
}


async def scenario(
    strategy: str, chats: int, n_tokens: int, stagger: float = 0.0
) -> dict[str, float]:
    spec = STRATEGIES[strategy]
    channel = Recorder(interval=float(spec["interval"]))
    scheduler = EditScheduler(edits_per_s=float(spec["rate"]))
    results: list[StreamingOptimizer] = []
    finished: list[float] = []

    async def one(index: int) -> None:
        chat = f"c{index}"
        tokens = tokens_for(index, n_tokens)
        await asyncio.sleep(random.Random(-index).uniform(0, stagger))  # chatters arrive
        opt = StreamingOptimizer(
            channel, chat, min_growth_chars=int(spec["growth"]), scheduler=scheduler
        )
        await opt.start()
        await asyncio.sleep(0.3)  # the model's time to first token
        for token in tokens:
            await opt.push(token)
            await asyncio.sleep(0.025)
        await opt.finish()
        assert "".join(channel.boxes[chat]) == "".join(tokens), "text lost"
        results.append(opt)
        finished.append(asyncio.get_running_loop().time() - opt.started_at)

    await asyncio.gather(*(one(i) for i in range(chats)))
    ttft = sorted(o.first_visible_at - o.started_at for o in results if o.first_visible_at)
    times = [t for t, _, _ in channel.calls]
    return {
        "sends": statistics.mean(o.sends for o in results),
        "edits": statistics.mean(o.edits for o in results),
        "ttft_p50": statistics.median(ttft),
        "ttft_p95": ttft[min(len(ttft) - 1, int(0.95 * len(ttft)))],
        "done_p50": statistics.median(finished),
        "peak_1s": peak_window(times, 1.0),
        "fast_chat_calls": fast_calls(channel.calls, 1.0),
    }


def peak_window(times: list[float], width: float) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= width:
            start += 1
        best = max(best, end - start + 1)
    return best


def fast_calls(calls: list[tuple[float, str, str]], gap: float) -> int:
    last: dict[str, float] = {}
    count = 0
    for t, chat, _ in sorted(calls):
        if chat in last and t - last[chat] < gap:
            count += 1
        last[chat] = t
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--chats", default="1,50")
    parser.add_argument("--stagger", type=float, default=0.0, help="spread starts over S s")
    args = parser.parse_args()
    header = (
        f"{'chats':>5} {'strategy':<12} {'sends/ans':>9} {'edits/ans':>9} {'ttft p50':>8} "
        f"{'ttft p95':>8} {'done p50':>8} {'peak/1s':>7} {'<1s/chat':>8}"
    )
    print(
        f"{args.tokens}-token answers, 40 tokens/s, virtual clock, "
        f"starts spread over {args.stagger:g} s"
    )
    print(header)
    print("-" * len(header))
    for chats in (int(c) for c in args.chats.split(",")):
        for strategy in STRATEGIES:
            started = time.perf_counter()
            r = run_virtual(scenario(strategy, chats, args.tokens, args.stagger))
            wall = time.perf_counter() - started
            print(
                f"{chats:>5} {strategy:<12} {r['sends']:>9.1f} {r['edits']:>9.1f} "
                f"{r['ttft_p50']:>7.2f}s {r['ttft_p95']:>7.2f}s {r['done_p50']:>7.1f}s "
                f"{r['peak_1s']:>7d} {r['fast_chat_calls']:>8d}   ({wall:.1f} s wall)"
            )


if __name__ == "__main__":
    main()
