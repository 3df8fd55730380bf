"""Telegram recovery figures, measured against the FakeTelegram boundary.

Run: ``.venv/bin/python bench/bench_telegram.py [--trials N] [--probe-interval S]``

No real MTProto server is available here, so Telegram is
``tests/fake_telegram.FakeServer``; everything else is real: the app on a real
uvicorn, real SQLite files, a fake model over real HTTP/SSE. Settings are the
defaults (call deadline 30 s, probe deadline 4 s, backoff capped at 8 s) except
``--probe-interval`` (default 60 s, the default setting).

- ``server back -> first reply``: the server goes down for a random 5-25 s
  (connections drop, connects are refused), a chatter writes meanwhile; from the
  moment it is back to the answer landing in the chat.
- ``dead -> /health degraded``: from the failure to ``/health`` saying
  ``degraded`` with a ``telegram_*`` reason, for three ways a connection dies:
  dropped (Telethon gave up), deaf (its update task died), and hanging (the
  socket claims to be connected, every call waits for ever: the field failure).
- ``sent while down -> answered``: Vigil is stopped, 40 messages in 8 chats are
  sent, and Vigil starts again; once with a turn cut short mid-answer by the
  stop and the update state lost (so Telegram replays every update). Counts of
  messages answered never, once and more than once.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import LiveServer, make_settings
from tests.fake_llm import FakeLLM
from tests.fake_telegram import FakeTelegram, FakeUser

ADA = FakeUser(id=42, username="ada", first_name="Ada")


def wait_for(predicate: Callable[[], bool], limit: float = 600.0, step: float = 0.02) -> float:
    """Seconds until ``predicate`` holds (monotonic clock)."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > limit:
            raise TimeoutError("condition not reached")
        time.sleep(step)
    return time.monotonic() - started


def settings_for(root: Path, llm: FakeLLM, probe_interval: float, **extra: Any) -> Any:
    return make_settings(
        root,
        llm_base_url=llm.url,
        telegram_admin_id=42,
        telegram_allowed_users=[str(100 + i) for i in range(10)],
        telegram_probe_interval_s=probe_interval,
        **extra,
    )


def start(settings: Any, fake: FakeTelegram) -> LiveServer:
    server = LiveServer(settings, telegram=fake.factory).start()
    wait_for(lambda: server.runtime.telegram.state == "connected", limit=30)
    return server


def deliver(server: LiveServer, fake: FakeTelegram, text: str, **kwargs: Any) -> None:
    kwargs.setdefault("sender", ADA)
    asyncio.run_coroutine_threadsafe(fake.deliver(text, **kwargs), server.loop).result(10)  # type: ignore[arg-type]


def degraded(server: LiveServer) -> bool:
    report = server.client.get("/health").json()
    return any(r.startswith("telegram_") for r in report["reasons"])


def server_back_to_reply(llm: FakeLLM, trials: int, probe_interval: float) -> list[float]:
    figures = []
    for trial in range(trials):
        with tempfile.TemporaryDirectory() as tmp:
            fake = FakeTelegram()
            server = start(settings_for(Path(tmp), llm, probe_interval), fake)
            try:
                fake.server.go_down()
                wait_for(lambda: server.runtime.telegram.state == "disconnected")  # noqa: B023
                deliver(server, fake, f"are you back? {trial}")
                time.sleep(random.uniform(5, 25))
                fake.server.come_back()
                figures.append(wait_for(lambda: bool(fake.texts(42)), step=0.01))  # noqa: B023
            finally:
                server.stop()
    return figures


def dead_to_degraded(llm: FakeLLM, mode: str, probe_interval: float) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        fake = FakeTelegram()
        server = start(settings_for(Path(tmp), llm, probe_interval), fake)
        try:
            time.sleep(random.uniform(0, min(probe_interval, 10)))  # a random phase
            # Every mode holds the rebuild (connect hangs), so the verdict stays visible.
            if mode == "dropped":
                fake.server.hang("connect")
                fake.current.drop()
            elif mode == "deaf":
                fake.server.hang("connect")
                fake.current.kill_updates()
            else:  # hanging: every call waits for ever, the socket claims to be up
                fake.server.hang("get_me", "send_message", "connect")
            return wait_for(lambda: degraded(server), limit=probe_interval + 60, step=0.05)
        finally:
            fake.server.unhang()
            server.stop()


def sent_while_down(llm: FakeLLM, *, cut_mid_turn: bool) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_for(Path(tmp), llm, 60.0)
        fake = FakeTelegram()
        server = start(settings, fake)
        texts = []
        if cut_mid_turn:
            llm.stall_after_chunks, llm.stall_s = 0, 3.0
            deliver(server, fake, "cut short", chat_id=100, sender=FakeUser(id=100))
            texts.append((100, "cut short"))
            wait_for(lambda: len(llm.requests) >= 1)
            asyncio.run_coroutine_threadsafe(_crash(server.runtime), server.loop).result(10)  # type: ignore[arg-type]
            llm.stall_after_chunks = None
        server.stop()
        for i in range(40):  # nobody is listening: the updates wait at Telegram
            chat = 100 + i % 8
            text = f"message {i}"
            asyncio.run(fake.deliver(text, chat_id=chat, sender=FakeUser(id=chat)))
            texts.append((chat, text))
        if cut_mid_turn:
            fake.session.pts = 0  # the saved update state was lost: everything is replayed
        server = start(settings, fake)
        try:
            expected = {(chat, f"echo: {text}") for chat, text in texts}

            def answered() -> int:
                return sum(1 for chat, reply in expected if reply in fake.texts(chat))

            try:
                wait_for(lambda: answered() == len(expected), limit=120)
            except TimeoutError:
                missing = [(c, r) for c, r in expected if r not in fake.texts(c)]
                print("missing", missing, {c: fake.texts(c) for c, _ in missing})
                raise
            time.sleep(2.0)  # let any duplicate land
            counts = [fake.texts(chat).count(reply) for chat, reply in expected]
            return {
                "sent": len(counts),
                "never": counts.count(0),
                "once": counts.count(1),
                "twice+": sum(1 for c in counts if c > 1),
            }
        finally:
            server.stop()


async def _crash(runtime: Any) -> None:
    bot = runtime.telegram_bot
    for task in list(bot._tasks):
        task.cancel()
    await asyncio.gather(*bot._tasks, return_exceptions=True)


def describe(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} s, max {max(values):.2f} s (n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--probe-interval", type=float, default=60.0)
    parser.add_argument("--skip-back", action="store_true", help="skip the first figure")
    args = parser.parse_args()
    random.seed(11)
    with FakeLLM() as llm:
        if not args.skip_back:
            back = server_back_to_reply(llm, args.trials, args.probe_interval)
            print(f"server back -> first reply: {describe(back)}", flush=True)
        for mode in ("dropped", "deaf", "hanging"):
            runs = [dead_to_degraded(llm, mode, args.probe_interval) for _ in range(args.trials)]
            print(f"dead ({mode}) -> /health degraded: {describe(runs)}", flush=True)
        for cut in (False, True):
            label = "with a turn cut short + all updates replayed" if cut else "plain restart"
            counts = sent_while_down(llm, cut_mid_turn=cut)
            print(f"sent while down -> answered ({label}): {counts}", flush=True)


if __name__ == "__main__":
    main()
