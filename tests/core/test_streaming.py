"""StreamingOptimizer and EditScheduler on a virtual clock (no real sleeping)."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from core.errors import ChannelError, RateLimited
from core.streaming import EditScheduler, StreamingOptimizer, split_text, utf16_len
from tests.virtual_time import run_virtual


class RecordingChannel:
    """A Channel that records every call with the loop's (virtual) time.

    Like Telegram it refuses an edit that changes nothing, and it can be
    scripted to rate-limit chosen calls.
    """

    name = "recording"

    def __init__(self, *, max_chars: int = 4096, interval: float = 1.5) -> None:
        self.max_message_chars = max_chars
        self.interval = interval
        self.messages: dict[str, list[str]] = {}
        self.calls: list[tuple[float, str, str]] = []  # (time, chat, kind)
        self.flood_on_call: dict[int, float] = {}  # call number -> retry_after
        self.identical_edits = 0

    def edit_interval(self, chat_id: str) -> float:
        return self.interval

    def _record(self, chat_id: str, kind: str) -> None:
        number = len(self.calls)
        self.calls.append((asyncio.get_running_loop().time(), chat_id, kind))
        if number in self.flood_on_call:
            raise RateLimited("flood", retry_after=self.flood_on_call[number])

    async def send(self, chat_id: str, text: str) -> str:
        self._record(chat_id, "send")
        box = self.messages.setdefault(chat_id, [])
        box.append(text)
        return str(len(box) - 1)

    async def edit(self, chat_id: str, message_id: str, text: str) -> None:
        self._record(chat_id, "edit")
        box = self.messages[chat_id]
        if box[int(message_id)] == text:
            self.identical_edits += 1
            raise AssertionError("an edit that changes nothing")
        box[int(message_id)] = text

    async def typing(self, chat_id: str) -> None:
        self._record(chat_id, "typing")

    def text(self, chat_id: str) -> str:
        return "".join(self.messages.get(chat_id, []))


def words(count: int, seed: int = 1) -> list[str]:
    rnd = random.Random(seed)
    vocab = ["alpha", "beta", "gamma", "delta", "is", "the", "of", "a", "vigil", "stream"]
    out = []
    for i in range(count):
        word = rnd.choice(vocab)
        end = rnd.random()
        sep = ".\n\n" if end < 0.02 else (". " if end < 0.1 else " ")
        out.append(word + sep if i else word.capitalize() + " ")
    return out


async def stream(
    opt: StreamingOptimizer, tokens: list[str], *, every: float, final: str | None = None
) -> list[str]:
    await opt.start()
    for token in tokens:
        await asyncio.sleep(every)
        await opt.push(token)
    return await opt.finish(final)


# --- split_text ---------------------------------------------------------------
def test_split_keeps_every_character_and_respects_the_limit() -> None:
    for seed in range(20):
        text = "".join(words(3000, seed))
        parts = split_text(text, 4096)
        assert "".join(parts) == text
        assert all(len(p) <= 4096 for p in parts)
        assert len(parts) >= 3


def test_split_prefers_paragraph_then_sentence_boundaries() -> None:
    text = "A" * 50 + ".\n\n" + "B" * 30 + ". " + "C" * 30
    assert split_text(text, 70) == ["A" * 50 + ".\n\n", "B" * 30 + ". " + "C" * 30]
    text = "x" * 40 + ". " + "y" * 40
    assert split_text(text, 60) == ["x" * 40 + ". ", "y" * 40]


def test_split_cuts_a_word_only_when_there_is_no_boundary() -> None:
    assert split_text("z" * 25, 10) == ["z" * 10, "z" * 10, "z" * 5]


def test_split_by_utf16_units_for_astral_characters() -> None:
    text = "😀" * 3000  # 6000 UTF-16 units
    parts = split_text(text, 4096, utf16_len)
    assert "".join(parts) == text
    assert [utf16_len(p) for p in parts] == [4096, 1904]


# --- one stream ----------------------------------------------------------------
def test_typing_first_then_first_text_at_the_first_token() -> None:
    channel = RecordingChannel()

    async def main() -> StreamingOptimizer:
        opt = StreamingOptimizer(channel, "c")
        await stream(opt, ["Hello", " world"], every=0.4)
        return opt

    opt = run_virtual(main())
    assert [kind for _, _, kind in channel.calls][:2] == ["typing", "send"]
    assert opt.first_visible_at is not None
    assert opt.first_visible_at - opt.started_at == pytest.approx(0.4)
    assert channel.text("c") == "Hello world"


def test_sixty_second_stream_stays_within_the_edit_bound() -> None:
    channel = RecordingChannel(interval=1.5)
    tokens = words(1200)  # one token every 50 ms for 60 s

    async def main() -> StreamingOptimizer:
        opt = StreamingOptimizer(channel, "c")
        await stream(opt, tokens, every=0.05)
        return opt

    opt = run_virtual(main())
    assert channel.text("c") == "".join(tokens)
    assert channel.identical_edits == 0
    # at most one edit per 1.5 s interval, plus the final one
    assert opt.edits <= 60 / 1.5 + 1
    assert opt.edits >= 20  # it did stream, not just send at the end
    edit_times = [t for t, _, kind in channel.calls if kind == "edit"]
    gaps = [b - a for a, b in itertools.pairwise(edit_times)]
    assert min(gaps[:-1]) >= 1.5 - 1e-9


def test_long_answer_continues_in_new_messages_with_nothing_lost() -> None:
    channel = RecordingChannel()
    tokens = words(4000, seed=7)

    async def main() -> StreamingOptimizer:
        opt = StreamingOptimizer(channel, "c")
        await stream(opt, tokens, every=0.02)
        return opt

    opt = run_virtual(main())
    answer = "".join(tokens)
    assert len(answer) > 3 * 4096
    assert channel.text("c") == answer
    assert all(len(m) <= 4096 for m in channel.messages["c"])
    assert opt.message_ids == [str(i) for i in range(len(channel.messages["c"]))]
    assert channel.identical_edits == 0


def test_final_text_replaces_the_streamed_text() -> None:
    channel = RecordingChannel()

    async def main() -> None:
        opt = StreamingOptimizer(channel, "c")
        await stream(opt, words(100), every=0.1, final="⚠️ The model failed.")

    run_virtual(main())
    assert channel.messages["c"] == ["⚠️ The model failed."]


def test_flood_wait_mid_stream_waits_widens_and_lands_the_final_text() -> None:
    channel = RecordingChannel(interval=1.5)
    channel.flood_on_call = {6: 20.0, 7: 5.0}
    tokens = words(600)  # 30 s of tokens

    async def main() -> tuple[StreamingOptimizer, EditScheduler]:
        scheduler = EditScheduler(edits_per_s=20)
        opt = StreamingOptimizer(channel, "c", scheduler=scheduler)
        await stream(opt, tokens, every=0.05)
        return opt, scheduler

    _opt, scheduler = run_virtual(main())
    assert channel.text("c") == "".join(tokens)
    assert scheduler.flood_waits == 2
    assert scheduler.flood_wait_s == 25.0
    flood_at = channel.calls[6][0]
    after = [t for t, _, _ in channel.calls[7:]]
    assert after[0] >= flood_at + 20.0  # nothing was tried while Telegram said wait
    second_flood = channel.calls[7][0]
    assert all(t >= second_flood + 5.0 for t in after[1:])
    assert scheduler.penalty("c", second_flood) == 4.0  # interval widened twice


def test_flood_wait_during_the_final_edit_is_waited_out() -> None:
    channel = RecordingChannel()

    async def main() -> float:
        opt = StreamingOptimizer(channel, "c")
        await stream(opt, ["one ", "two"], every=0.1)
        loop = asyncio.get_running_loop()
        opt2 = StreamingOptimizer(channel, "d")
        await opt2.start()
        await opt2.push("first words")
        channel.flood_on_call = {len(channel.calls): 42.0}
        started = loop.time()
        await opt2.finish("first words and the complete rest")
        return loop.time() - started

    waited = run_virtual(main())
    assert waited >= 42.0
    assert channel.messages["d"] == ["first words and the complete rest"]


def test_cancel_mid_stream_stops_updates_and_lands_what_finish_gets() -> None:
    channel = RecordingChannel()

    async def main() -> StreamingOptimizer:
        opt = StreamingOptimizer(channel, "c")
        await opt.start()
        for token in words(200):
            await asyncio.sleep(0.05)
            await opt.push(token)
            if opt.sends and len(opt.text) > 300:
                opt.cancel()
        await opt.finish(opt.text + " [cancelled]")
        return opt

    opt = run_virtual(main())
    assert opt.cancelled
    assert channel.text("c").endswith(" [cancelled]")
    assert len(channel.text("c")) < len("".join(words(200)))


# --- many streams ----------------------------------------------------------------
def test_fifty_concurrent_chats_stay_within_the_global_budget() -> None:
    channel = RecordingChannel(interval=1.5)
    rate, burst = 20.0, 20.0

    async def main() -> EditScheduler:
        scheduler = EditScheduler(edits_per_s=rate, burst=burst)
        chats = [f"c{i}" for i in range(50)]

        async def one(chat: str, seed: int) -> None:
            opt = StreamingOptimizer(channel, chat, scheduler=scheduler)
            await stream(opt, words(400, seed), every=0.05)

        await asyncio.gather(*(one(c, i) for i, c in enumerate(chats)))
        return scheduler

    scheduler = run_virtual(main())
    calls = [t for t, _, kind in channel.calls if kind != "typing"]
    for i, start in enumerate(calls):
        in_window = sum(1 for t in calls[i:] if t < start + 1.0)
        assert in_window <= burst + rate * 1.0
    for i in range(50):
        assert channel.text(f"c{i}") == "".join(words(400, i))
    assert channel.identical_edits == 0
    assert scheduler.active_streams == 0


def test_adaptive_interval_grows_with_the_number_of_streams() -> None:
    scheduler = EditScheduler(edits_per_s=20)
    assert scheduler.interval("a", 1.5, 0.0) == 1.5
    for i in range(60):
        scheduler.begin(f"c{i}")
    assert scheduler.interval("a", 1.5, 0.0) == pytest.approx(3.0)
    scheduler.on_flood("a", 10, now=0.0)
    assert scheduler.interval("a", 1.5, 0.0) == pytest.approx(3.0)  # share still wins
    assert scheduler.wait_time("a", 1.0) == pytest.approx(9.0)
    assert scheduler.penalty("a", 59.0) == 2.0
    assert scheduler.penalty("a", 61.0) == 1.0  # the penalty decays when quiet


def test_typing_is_repeated_while_a_slow_model_thinks() -> None:
    channel = RecordingChannel()

    async def main() -> None:
        opt = StreamingOptimizer(channel, "c")
        await opt.start()
        await asyncio.sleep(12.0)  # no token for 12 s
        await opt.push("at last")
        await asyncio.sleep(20.0)
        await opt.finish()

    run_virtual(main())
    kinds = [(round(t, 1), kind) for t, _, kind in channel.calls]
    assert kinds == [(0.0, "typing"), (4.5, "typing"), (9.0, "typing"), (12.0, "send")]


def test_a_final_edit_that_fails_lands_as_a_new_message() -> None:
    channel = RecordingChannel()

    async def main() -> list[str]:
        opt = StreamingOptimizer(channel, "c")
        await opt.start()
        await opt.push("The beginning")
        real_edit = channel.edit

        async def gone(chat_id: str, message_id: str, text: str) -> None:
            raise ChannelError("Telegram error MessageIdInvalidError")

        channel.edit = gone  # type: ignore[method-assign]
        try:
            return await opt.finish("The beginning and the whole end.")
        finally:
            channel.edit = real_edit  # type: ignore[method-assign]

    ids = run_virtual(main())
    assert ids == ["1"]
    assert channel.messages["c"][-1] == "The beginning and the whole end."


def test_flooded_chats_are_forgotten_once_their_penalty_has_decayed() -> None:
    scheduler = EditScheduler(edits_per_s=20, penalty_decay_s=60.0)
    for i in range(10_000):
        scheduler.begin(f"c{i}")
        scheduler.on_flood(f"c{i}", 5.0, now=0.0)
        scheduler.end(f"c{i}", now=1.0)
    assert scheduler.tracked_chats == 10_000  # still penalised: remembered
    scheduler.begin("x")
    scheduler.end("x", now=30.0)
    assert scheduler.tracked_chats == 10_000  # not yet decayed
    assert scheduler.penalty("c7", 30.0) == 2.0
    scheduler.begin("x")
    scheduler.end("x", now=86_400.0)  # a day later, one other reply streams
    assert scheduler.tracked_chats == 0
    assert scheduler.penalty("c7", 86_400.0) == 1.0


def test_a_flooded_chat_is_forgotten_when_its_next_stream_ends_after_the_decay() -> None:
    scheduler = EditScheduler(edits_per_s=20, penalty_decay_s=60.0)
    scheduler.begin("c")
    scheduler.on_flood("c", 5.0, now=0.0)
    scheduler.end("c", now=1.0)
    scheduler.begin("c")
    scheduler.end("c", now=61.0)  # penalty decayed to 1, the block long over
    assert scheduler.tracked_chats == 0


def test_an_error_after_a_two_message_partial_reply_empties_the_extra_message() -> None:
    channel = RecordingChannel(max_chars=100)

    async def main() -> list[str]:
        opt = StreamingOptimizer(channel, "c")
        await opt.start()
        for token in words(60):
            await asyncio.sleep(2.0)  # slow enough for every update to be shown
            await opt.push(token)
        assert len(channel.messages["c"]) >= 2  # the partial reply filled two messages
        return await opt.finish("⚠️ The model failed.")

    ids = run_virtual(main())
    first, *extra = channel.messages["c"]
    assert first == "⚠️ The model failed."
    assert extra and all(text == "…" for text in extra)
    assert ids == ["0"]
    assert channel.identical_edits == 0


# --- release -------------------------------------------------------------------------
def test_release_before_any_token_uncounts_the_stream_and_stops_typing() -> None:
    channel = RecordingChannel()

    async def main() -> EditScheduler:
        scheduler = EditScheduler(edits_per_s=20)
        other = StreamingOptimizer(channel, "c", scheduler=scheduler)
        await other.start()  # another reply in the same chat stays counted throughout
        never = StreamingOptimizer(channel, "c", scheduler=scheduler)
        never.release()  # before start(): nothing to undo
        assert scheduler.active_streams == 1
        opt = StreamingOptimizer(channel, "c", scheduler=scheduler)
        await opt.start()
        assert scheduler.active_streams == 2
        await asyncio.sleep(1.0)
        opt.release()  # the turn failed before the model was called
        opt.release()
        assert scheduler.active_streams == 1
        await other.finish("done")
        other.release()  # after finish(): still harmless
        await asyncio.sleep(20.0)
        assert asyncio.all_tasks() == {asyncio.current_task()}  # no typing loop left
        return scheduler

    scheduler = run_virtual(main())
    assert scheduler.active_streams == 0
    assert [(round(t, 1), kind) for t, _, kind in channel.calls if kind == "typing"] == [
        (0.0, "typing"),
        (0.0, "typing"),
    ]


def test_release_while_start_waits_on_the_typing_action_leaves_nothing_running() -> None:
    channel = RecordingChannel()
    gate = asyncio.Event()

    async def slow_typing(chat_id: str) -> None:
        channel.calls.append((asyncio.get_running_loop().time(), chat_id, "typing"))
        await gate.wait()

    channel.typing = slow_typing  # type: ignore[method-assign]

    async def main() -> EditScheduler:
        scheduler = EditScheduler(edits_per_s=20)
        opt = StreamingOptimizer(channel, "c", scheduler=scheduler)
        starting = asyncio.ensure_future(opt.start())
        await asyncio.sleep(0.5)
        opt.release()  # e.g. the turn was cancelled from elsewhere
        gate.set()
        await starting
        await opt.start()  # a released reply is never counted again
        assert scheduler.active_streams == 0
        assert asyncio.all_tasks() == {asyncio.current_task()}
        await asyncio.sleep(20.0)
        return scheduler

    run_virtual(main())
    assert [kind for _, _, kind in channel.calls] == ["typing"]


def test_a_start_cancelled_while_typing_releases_the_stream() -> None:
    channel = RecordingChannel()

    async def never_typing(chat_id: str) -> None:
        await asyncio.Event().wait()

    channel.typing = never_typing  # type: ignore[method-assign]

    async def main() -> EditScheduler:
        scheduler = EditScheduler(edits_per_s=20)
        opt = StreamingOptimizer(channel, "c", scheduler=scheduler)
        starting = asyncio.ensure_future(opt.start())
        await asyncio.sleep(1.0)
        assert scheduler.active_streams == 1
        starting.cancel()  # e.g. the server stops while Telegram is slow
        with pytest.raises(asyncio.CancelledError):
            await starting
        return scheduler

    assert run_virtual(main()).active_streams == 0
