"""ChatService: one chat turn, from incoming message to stored reply.

The pipeline speaks only to a ``Channel``. One turn at a time per chat (a
second message waits its turn, never lost), a global limit on concurrent LLM
calls, commands on every channel. The user message is committed before the
reply starts; a model failure becomes one short clear reply, never a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from core import voice
from core.admission import AdjustableLimiter, Admission
from core.budgets import Budgets, RateLimiter
from core.channel import ADMIN_USER, Channel, IncomingMessage, Turn, TurnResult
from core.context import ContextWindowManager, Prompt
from core.errors import (
    Busy,
    LLMError,
    NoVisionModel,
    VigilError,
)
from core.llm import LLMClient
from core.media import MediaStore, StoredImage, image_tokens
from core.memory import ChatMemory
from core.models import Models, fails_over
from core.streaming import StreamingOptimizer
from core.stt import SpeechToText
from core.usage import CANCELLED, OK, CallMeter, UsageRecorder, metered_summarize

log = logging.getLogger(__name__)

CommandHandler = Callable[[IncomingMessage, Channel, str], Awaitable["str | TurnResult"]]
HELP_TEXT = (
    "I'm Vigil, an AI assistant. Just write to me.\n"
    "/help — this text\n"
    "/reset — forget this chat's context (history is kept)\n"
    "/status — server health in one line\n"
    "/summary — what I remember of earlier parts of this chat\n"
    "/cancel — stop the answer being written\n"
    "/retry — write the last answer again\n"
    "/usage — your tokens today and this month, and the budget left\n"
    "/model — which model answers here; /model NAME switches it"
)
STOPPED = "⏹ Stopped."
NOTHING_TO_CANCEL = "Nothing is being written right now."
NOTHING_TO_RETRY = "Nothing to retry yet."
RETRY_NOT_SHOWN = "⚠️ I could not show the new answer here; please send /retry again."
# What a chatter sees when the model fails: the details (URL, HTTP status, the
# setting to fix) are for the operator, in logs, /health and the admin's chat.
MODEL_DOWN_REPLY = (
    "I can't reach my language model right now; the operator has been told. "
    "Please try again in a minute."
)
IDLE_RESET_NOTE = (
    "ℹ️ It's been a while, so I started a fresh conversation "
    "(/summary still shows what came before)."
)
# Channels whose every user is the operator (the local API needs the admin token).
OPERATOR_CHANNELS = frozenset({"local"})


@dataclass
class _ChatSlot:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


@dataclass
class TurnStats:
    turns: int = 0
    failed: int = 0
    commands: int = 0
    rejected: int = 0
    last_latency_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    # Called with each answered turn's duration (the metrics' histogram).
    observers: list[Callable[[float], None]] = field(default_factory=list)

    def record(self, seconds: float) -> None:
        for observe in self.observers:
            observe(seconds)
        self.last_latency_s = seconds
        self.latencies.append(seconds)
        if len(self.latencies) > 512:
            del self.latencies[:256]


class ChatService:
    """Handles every incoming message of every channel."""

    def __init__(
        self,
        memory: ChatMemory,
        context: ContextWindowManager,
        llm: LLMClient,
        *,
        admission: Admission,
        limiter: AdjustableLimiter,
        queue_limit: int = 20,
        status_line: Callable[[], Awaitable[str]] | None = None,
        operator_ids: frozenset[str] = frozenset(),
        budgets: Budgets | None = None,
        rate_limiter: RateLimiter | None = None,
        idle_reset_s: float = 0.0,
        clock: Callable[[], float] = time.time,
        usage: UsageRecorder | None = None,
        models: Models | None = None,
        media: MediaStore | None = None,
        stt: SpeechToText | None = None,
    ) -> None:
        self.memory = memory
        self.stt = stt  # voice notes are transcribed by it (None: voice refused politely)
        self.media = media  # where a message's images are stored (None: images refused)
        self.context = context
        # Every model profile; ``llm`` is the default one (summaries, /status).
        self.models = models if models is not None else Models.single(llm)
        self.llm = llm
        self.admission = admission
        self.limiter = limiter
        self.queue_limit = queue_limit
        self.status_line = status_line
        self.operator_ids = operator_ids
        self.budgets = budgets
        self.rate_limiter = rate_limiter
        self.idle_reset_s = idle_reset_s
        self.clock = clock  # wall clock of the idle reset
        # Every model call, measured (core/usage.py); written in batches, off the turn.
        self.usage = usage if usage is not None else UsageRecorder()
        if budgets is not None:  # calls recorded but not yet written count as spent
            budgets.pending = self.unwritten_usage
        self.stats = TurnStats()
        self._slots: dict[str, _ChatSlot] = {}
        self._user_locks: dict[str, list[Any]] = {}  # user -> [Lock, holders + waiters]
        self._background: set[asyncio.Task[object]] = set()
        # chat id -> (streamer, task pumping the model) of the reply being written
        self._pumps: dict[str, tuple[StreamingOptimizer, asyncio.Future[None]]] = {}
        self.commands: dict[str, CommandHandler] = {
            "start": self._cmd_help,
            "help": self._cmd_help,
            "reset": self._cmd_reset,
            "status": self._cmd_status,
            "summary": self._cmd_summary,
            "cancel": self._cmd_cancel,
            "retry": self._cmd_retry,
            "usage": self._cmd_usage,
            "model": self._cmd_model,
        }
        self.help_text = HELP_TEXT

    # --- entry point ------------------------------------------------------------
    async def handle(
        self, msg: IncomingMessage, channel: Channel, *, admitted: bool = False
    ) -> TurnResult:
        """Answer ``msg``; ``admitted``: :meth:`admit_user` ran already (the stream path)."""
        command, args = parse_command(msg.text) if msg.audio is None else (None, "")
        if msg.audio is not None:
            self.check_voice(msg)  # a caption is never a command; nothing stored yet
        if command is not None:
            return await self._run_command(command, args, msg, channel)
        if not admitted:
            self._check_rate(msg, channel)
        async with self._exclusive(msg.chat_id):
            return await self._turn(msg, channel)

    def unwritten_usage(self) -> list[tuple[Any, ...]]:
        return self.usage.unwritten()

    def user_of(self, msg: IncomingMessage, channel: Channel) -> str:
        """The user a turn is counted for: ``tg:<id>``, ``api:<user>`` or ``admin``."""
        if msg.user_id:
            return msg.user_id
        if channel.name in OPERATOR_CHANNELS:
            return ADMIN_USER
        return msg.chat_id  # no sender (a channel post): the chat is counted

    def _check_rate(self, msg: IncomingMessage, channel: Channel) -> None:
        if self.rate_limiter is not None:
            self.rate_limiter.hit(self.user_of(msg, channel))

    async def admit_user(self, msg: IncomingMessage, channel: Channel) -> None:
        """The user's rate limit and budgets (UserLimitError), before a stream opens;
        an image for a chat whose model cannot see (NoVisionModel)."""
        if msg.audio is not None:
            self.check_voice(msg)
        elif parse_command(msg.text)[0] is not None:
            return
        if msg.images:
            await self.check_vision(msg.chat_id)
        self._check_rate(msg, channel)
        await self._check_budget(msg, channel)

    @contextlib.asynccontextmanager
    async def _budgeted(self, msg: IncomingMessage, channel: Channel) -> AsyncIterator[None]:
        """The budget check, then the turn; one at a time per user with a budget.

        A budgeted user's turns (in any chat) run one after the other, each
        checked after the previous one's usage was recorded: a user ends a
        period at most one turn over the budget.
        """
        user = self.user_of(msg, channel)
        if self.budgets is None or not await self.budgets.applies(user):
            await self._check_budget(msg, channel)
            yield
            return
        entry = self._user_locks.setdefault(user, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                await self._check_budget(msg, channel)
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                self._user_locks.pop(user, None)

    async def _check_budget(self, msg: IncomingMessage, channel: Channel) -> None:
        """Refuse (BudgetExceeded) before the model is called; send a due heads-up."""
        if self.budgets is None:
            return
        notice = await self.budgets.check(self.user_of(msg, channel))
        if notice:
            with contextlib.suppress(VigilError):  # the turn matters more than the notice
                await channel.send(msg.chat_id, notice)

    @contextlib.asynccontextmanager
    async def _exclusive(self, chat_id: str) -> AsyncIterator[None]:
        """Admission, then this chat's turn lock (one turn at a time per chat).

        A turn counts as in flight from the moment it is admitted, also while it
        waits behind another turn of the same chat: a graceful restart drains
        queued turns too, not only the running one.
        """
        self._check_admission(chat_id)
        with self.admission.turn():
            async with self._chat_lock(chat_id):
                yield

    @contextlib.asynccontextmanager
    async def _chat_lock(self, chat_id: str) -> AsyncIterator[None]:
        slot = self._slots.setdefault(chat_id, _ChatSlot())
        slot.users += 1
        try:
            async with slot.lock:
                yield
        finally:
            slot.users -= 1
            if slot.users == 0:
                self._slots.pop(chat_id, None)

    @contextlib.asynccontextmanager
    async def quiet(self, chat_ids: Iterable[str]) -> AsyncIterator[None]:
        """No turn runs in these chats meanwhile (their turn locks, taken in order).

        For work that must not interleave with a turn (a data deletion): it
        waits for the running turns to finish; new ones wait for it.
        """
        async with contextlib.AsyncExitStack() as stack:
            for chat_id in sorted(set(chat_ids)):
                await stack.enter_async_context(self._chat_lock(chat_id))
            yield

    async def reset(self, chat_id: str) -> int:
        """Forget a chat's context once any turn running in it has finished."""
        async with self._chat_lock(chat_id):
            return await self.memory.reset(chat_id)

    async def retry(self, msg: IncomingMessage, channel: Channel) -> TurnResult | None:
        """Write the last answer again (``/retry``); None when there is nothing to retry.

        The old answer stays until a new one is stored: a retry while the model
        is down loses nothing.
        """
        async with self._exclusive(msg.chat_id), self._budgeted(msg, channel):
            question = await self.memory.last_turn(msg.chat_id, "user")
            window = await self.memory.window(msg.chat_id)
            if question is None or all(t.id != question.id for t in window.turns):
                return None  # nothing asked since the last /reset
            answer = await self.memory.last_turn(msg.chat_id, "assistant")
            old = answer.id if answer is not None and answer.id > question.id else None
            result = await self._answer(
                msg, channel, question.id, exclude=(old,) if old is not None else ()
            )
            if old is not None and result.reply_message_id is not None:
                await self.memory.delete_message(old)
            return result

    def cancel(self, chat_id: str) -> bool:
        """Stop the reply being written in this chat (``/cancel``)."""
        entry = self._pumps.get(chat_id)
        if entry is None or entry[1].done():
            return False
        entry[0].cancel()
        entry[1].cancel()
        return True

    def is_operator(self, msg: IncomingMessage, channel: Channel) -> bool:
        """The operator gets the model's failure in detail; chatters a neutral line."""
        return (
            channel.name in OPERATOR_CHANNELS
            or msg.user_id == ADMIN_USER
            or (msg.user_id is not None and msg.user_id in self.operator_ids)
        )

    def pending(self, chat_id: str) -> int:
        slot = self._slots.get(chat_id)
        return slot.users if slot else 0

    # --- one turn ---------------------------------------------------------------
    async def _turn(self, msg: IncomingMessage, channel: Channel) -> TurnResult:
        author = msg.display_name if msg.is_group else None
        # A turn cut short by a restart is run again for the same channel message:
        # its stored question is answered, not stored twice, and the prompt ends
        # with it even if later messages of the chat were stored meanwhile.
        user_turn: Turn | None = None
        later: tuple[int, ...] = ()
        if msg.external_id is not None:
            stored = await self.memory.find_external(msg.chat_id, msg.external_id)
            if stored is not None:
                if msg.audio is not None:  # transcribed before the restart: not again
                    msg = replace(msg, text=stored.content, audio=None)
                window = await self.memory.window(msg.chat_id)
                if any(t.id == stored.id for t in window.turns):  # else: folded, store again
                    user_turn = stored
                    later = tuple(t.id for t in window.turns if t.id > stored.id)
        if user_turn is not None:
            return await self._answer(msg, channel, user_turn.id, exclude=later)
        async with self._budgeted(msg, channel):
            if msg.images:
                await self.check_vision(msg.chat_id)
            transcript = None
            if msg.audio is not None:  # inside the turn: budgets and one turn per chat apply
                assert self.stt is not None  # check_voice ran in handle()
                msg, transcript = await voice.transcribe_message(self.stt, msg, channel, self.usage)
            await self._idle_reset(msg, channel)
            user_turn = await self._store_question(msg, author)
            result = await self._answer(msg, channel, user_turn.id)
            return result if transcript is None else replace(result, transcript=transcript)

    def check_voice(self, msg: IncomingMessage) -> None:
        """A voice note's checks before its turn: VoiceNotEnabled, BadAudio, AudioTooLong."""
        voice.check_voice(self.stt, msg)

    async def check_vision(self, chat_id: str) -> None:
        """Refuse an image (before anything is stored) when no model here can see
        (or VIGIL_CONTEXT_MAX_IMAGES is 0: no image would ever be sent)."""
        sent = self.media is not None and self.context.max_images > 0
        if sent and self.models.vision_for(await self.chosen_model(chat_id)):
            return
        seeing = sorted(n for n in self.models.clients if self.models.sees(n)) if sent else []
        hint = f" Send /model {seeing[0]} to switch to one that can." if seeing else ""
        raise NoVisionModel(
            "I can't look at images with the model this chat uses; please describe it in "
            "words." + hint
        )

    async def _store_question(self, msg: IncomingMessage, author: str | None) -> Turn:
        """The user's message, committed with its images (their files written first)."""
        text = clean_text(msg.text)
        if not msg.images or self.media is None:
            return await self.memory.append(
                msg.chat_id, "user", text, author=author, external_id=msg.external_id
            )
        media = self.media
        stored: list[StoredImage] = []
        try:
            for image in msg.images:
                path = await asyncio.to_thread(media.save, msg.chat_id, image)
                size = len(image.data)
                stored.append(
                    StoredImage(path, image.width, image.height, text[:200], image.mime, size)
                )
            tokens = self.memory.estimate(text) + sum(
                image_tokens(i.width, i.height) for i in stored
            )
            return await self.memory.append(
                msg.chat_id,
                "user",
                text,
                author=author,
                external_id=msg.external_id,
                tokens=tokens,
                images=stored,
            )
        except BaseException:  # nothing half-stored: no row, so no file either
            await asyncio.to_thread(media.remove, [i.path for i in stored])
            raise

    async def _idle_reset(self, msg: IncomingMessage, channel: Channel) -> None:
        """A message after ``idle_reset_s`` of silence starts a fresh context."""
        if not self.idle_reset_s:
            return
        window = await self.memory.window(msg.chat_id)
        if not window.turns or self.clock() - window.turns[-1].created_at < self.idle_reset_s:
            return
        await self.memory.restart_context(msg.chat_id)
        log.info("chat %s: context restarted after %.0f s idle", msg.chat_id, self.idle_reset_s)
        with contextlib.suppress(VigilError):
            await channel.send(msg.chat_id, IDLE_RESET_NOTE)

    async def _pump(
        self,
        prompt: Prompt,
        streamer: StreamingOptimizer,
        meter: CallMeter,
        user: str = "",
        chosen: str | None = None,
        images: bool = False,
    ) -> None:
        try:
            async with self.limiter.slot(user):  # fair: round-robin across users
                meter.started = time.monotonic()  # the call, not the wait for a slot
                route = self.models.route(chosen, images=images)
                for i, client in enumerate(route):
                    # A fallback with a smaller window gets the newest turns that fit.
                    messages = prompt.fit(self.models.prompt_limit(client.name))
                    try:
                        async for delta in client.stream(messages, meter=meter):
                            await streamer.push(delta)
                        return
                    except LLMError as exc:
                        # Only before the first token: a half-written answer is not
                        # finished by another model.
                        if i + 1 == len(route) or streamer.text or not fails_over(exc):
                            raise
                        log.warning(
                            "chat %s: model %s failed before its first token (%s); "
                            "the fallback %s answers",
                            streamer.chat_id,
                            client.name,
                            exc.code,
                            route[i + 1].name,
                        )
        finally:
            self._pumps.pop(streamer.chat_id, None)
            streamer.release()  # the stream is over, even when cancelled

    async def _answer(
        self,
        msg: IncomingMessage,
        channel: Channel,
        question_id: int,
        *,
        exclude: Sequence[int] = (),
    ) -> TurnResult:
        started = time.monotonic()
        chosen = await self.chosen_model(msg.chat_id)
        # Images go to a model that sees; if none is set for this chat (it switched
        # to a text-only model since), they are shown to the model as text.
        sees = self.media is not None and self.models.vision_for(chosen) is not None
        limit = self.models.chat_limit(chosen, images=sees)  # the profile's own window
        prompt = await self.context.build(
            msg.chat_id, exclude=exclude, images=sees, max_tokens=limit
        )
        streamer = StreamingOptimizer(channel, msg.chat_id)
        await streamer.start()  # counted by the edit scheduler from here: _pump releases it
        meter = CallMeter()
        images = prompt.images > 0
        pump = asyncio.ensure_future(
            self._pump(prompt, streamer, meter, self.user_of(msg, channel), chosen, images)
        )
        self._pumps[msg.chat_id] = (streamer, pump)
        outcome, generated = "error", None
        try:
            await pump
            outcome = OK
        except asyncio.CancelledError:
            outcome, generated = CANCELLED, streamer.text
            task = asyncio.current_task()
            if not streamer.cancelled or (task is not None and task.cancelling()):
                raise
            return await self._stopped(msg, streamer, question_id)
        except LLMError as exc:
            outcome, generated = exc.code, streamer.text  # before the error line is shown
            self.stats.failed += 1
            log.warning("chat %s: model failed: %s: %s", msg.chat_id, exc.code, exc.message)
            shown = exc.message if self.is_operator(msg, channel) else MODEL_DOWN_REPLY
            ids = await self._deliver(msg.chat_id, streamer, f"⚠️ {shown}")
            return TurnResult(
                msg.chat_id, streamer.text, question_id, None, error_code=exc.code, sent_ids=ids
            )
        finally:
            self.usage.record(
                meter,
                chat_id=msg.chat_id,
                user_id=msg.user_id,
                kind="turn",
                outcome=outcome,
                prompt_estimate=prompt.tokens,
                completion_text=streamer.text if generated is None else generated,
            )
        text = clean_text(streamer.text)
        # Stored before the last delivery step: a reply the chatter may already
        # have seen is never lost because Telegram failed on the final edit.
        reply = await self.memory.append(msg.chat_id, "assistant", text)
        wanted = (images and self.models.vision_for(chosen)) or self.models.resolve(chosen)
        answered = meter.model or wanted
        if answered != wanted:  # the footer is shown, not stored (not context)
            text = f"{text}\n\n{fallback_footer(answered, wanted)}"
        ids = await self._deliver(msg.chat_id, streamer, text)
        self.stats.turns += 1
        self.stats.record(time.monotonic() - started)
        if prompt.refine_due:
            self._spawn(self._refine(msg.chat_id, msg.user_id))
        log.info(
            "chat %s: turn done in %.2f s (%d prompt tokens, %d chars)",
            msg.chat_id,
            time.monotonic() - started,
            prompt.tokens,
            len(text),
        )
        return TurnResult(msg.chat_id, text, question_id, reply.id, sent_ids=ids, model=answered)

    async def chosen_model(self, chat_id: str) -> str | None:
        """The chat's ``/model`` choice; no read when there is only one profile."""
        if len(self.models.clients) == 1:
            return None
        return await self.memory.chosen_model(chat_id)

    async def _deliver(
        self, chat_id: str, streamer: StreamingOptimizer, text: str
    ) -> tuple[str, ...]:
        try:
            return tuple(await streamer.finish(text))
        except VigilError as exc:  # the channel gave up (connection lost, flood waits)
            log.warning("chat %s: the reply could not be delivered in full (%s)", chat_id, exc.code)
            return tuple(streamer.message_ids)

    async def _stopped(
        self, msg: IncomingMessage, streamer: StreamingOptimizer, question_id: int
    ) -> TurnResult:
        partial = clean_text(streamer.text).rstrip()
        reply_id = None
        if partial:  # the context keeps what the chatter saw
            reply_id = (await self.memory.append(msg.chat_id, "assistant", partial)).id
        ids = await self._deliver(
            msg.chat_id, streamer, f"{partial}\n\n{STOPPED}" if partial else STOPPED
        )
        log.info("chat %s: reply stopped by /cancel after %d chars", msg.chat_id, len(partial))
        return TurnResult(
            msg.chat_id, streamer.text, question_id, reply_id, cancelled=True, sent_ids=ids
        )

    async def _refine(self, chat_id: str, user_id: str | None = None) -> None:
        if self.llm.status.state != "ok":
            return  # the extractive summary stays until a model answers

        summarize = metered_summarize(self.llm, self.usage, chat_id, user_id)
        try:
            async with self.limiter.slot():
                await self.context.refine(chat_id, summarize)
        except Exception:  # a loop boundary: a failed refinement keeps the fallback
            log.warning("chat %s: summary refinement failed", chat_id, exc_info=True)

    def _check_admission(self, chat_id: str) -> None:
        """Raise Draining or Busy when a new turn in ``chat_id`` must not start now."""
        self.admission.check()
        if self.pending(chat_id) >= self.queue_limit:
            self.stats.rejected += 1
            raise Busy(
                f"too many messages waiting in this chat (limit {self.queue_limit})",
                retry_after=5,
            )

    def handle_in_background(
        self, msg: IncomingMessage, channel: Channel, *, admitted: bool = False
    ) -> asyncio.Task[TurnResult]:
        """Admit ``msg`` now (Draining/Busy raise here), then handle it as a task.

        For a streamed reply: the refusal must come before the stream opens, not
        as an event inside a 200 stream. The task is drained at shutdown.
        """
        self._check_admission(msg.chat_id)
        task = asyncio.ensure_future(self.handle(msg, channel, admitted=admitted))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain_background(self, timeout: float = 5.0) -> None:
        if self._background:
            await asyncio.wait(list(self._background), timeout=timeout)

    # --- commands ----------------------------------------------------------------
    async def _run_command(
        self, command: str, args: str, msg: IncomingMessage, channel: Channel
    ) -> TurnResult:
        handler = self.commands.get(command)
        self.stats.commands += 1
        if handler is None:
            text = f"Unknown command /{command}. Send /help for the list."
        else:
            outcome = await handler(msg, channel, args)
            if isinstance(outcome, TurnResult):  # e.g. /retry: a whole new turn
                return replace(outcome, command=command)
            text = outcome
        ids: tuple[str, ...] = ()
        if text:
            ids = (await channel.send(msg.chat_id, text),)
        return TurnResult(msg.chat_id, text, command=command, sent_ids=ids)

    async def _cmd_help(self, msg: IncomingMessage, channel: Channel, args: str) -> str:
        return self.help_text

    async def _cmd_reset(self, msg: IncomingMessage, channel: Channel, args: str) -> str:
        await self.reset(msg.chat_id)
        return "Context cleared. I've forgotten this conversation (its history is still stored)."

    async def _cmd_status(self, msg: IncomingMessage, channel: Channel, args: str) -> str:
        line = "Vigil is running." if self.status_line is None else await self.status_line()
        name = self.models.resolve(await self.chosen_model(msg.chat_id))
        if name != self.models.default:  # the chat's own /model choice
            state = "down" if self.models.is_down(self.models.clients[name]) else "ok"
            line += f" · this chat: {name} {state}"
        return line

    async def _cmd_summary(self, msg: IncomingMessage, channel: Channel, args: str) -> str:
        window = await self.memory.window(msg.chat_id)
        if window.detached:
            return (
                "This chat started afresh after a long pause; before it, I remembered:\n"
                + window.summary
            )
        if not window.summary:
            return (
                f"Nothing folded into a summary yet; {len(window.turns)} recent messages are "
                "in my context."
            )
        return "What I remember of earlier in this chat:\n" + window.summary

    async def _cmd_cancel(self, msg: IncomingMessage, channel: Channel, args: str) -> str:
        if self.cancel(msg.chat_id):
            return ""  # the stopped reply itself says so
        return NOTHING_TO_CANCEL

    async def _cmd_usage(self, msg: IncomingMessage, channel: Channel, args: str) -> str:
        from core import usage_command

        user = self.user_of(msg, channel)
        if args.strip().lower() == "all":
            if user != ADMIN_USER:
                return usage_command.ONLY_ADMIN
            return await usage_command.all_usage(self)
        return await usage_command.own_usage(self, user)

    async def _cmd_model(self, msg: IncomingMessage, channel: Channel, args: str) -> str:
        models = self.models
        current = models.resolve(await self.memory.chosen_model(msg.chat_id))
        allowed = list(models.clients) if self.is_operator(msg, channel) else models.user_models
        name = args.strip()
        if not name:
            choices = ", ".join(
                f"{n} (down)" if models.is_down(models.clients[n]) else n for n in allowed
            )
            return (
                f"This chat uses {current} ({models.clients[current].model}).\n"
                f"Choices: {choices}.\nSend /model NAME to switch."
            )
        found = next((n for n in allowed if n.casefold() == name.casefold()), None)
        if found is None:
            return (
                f"There is no model called \u201c{name[:64]}\u201d to choose here. "
                f"Choices: {', '.join(allowed)}."
            )
        await self.memory.choose_model(msg.chat_id, found)
        return f"This chat now uses {found} ({models.clients[found].model})."

    async def _cmd_retry(
        self, msg: IncomingMessage, channel: Channel, args: str
    ) -> str | TurnResult:
        result = await self.retry(msg, channel)
        if result is not None and result.error_code:
            log.info("chat %s: /retry failed: %s", msg.chat_id, result.error_code)
        return retry_reply(result)


def retry_reply(result: TurnResult | None) -> str | TurnResult:
    """What ``/retry`` answers, given what :meth:`ChatService.retry` returned.

    The retried turn streamed its own reply (or the model's error) into the chat
    already; returning it gives the local API its reply and error code.
    """
    if result is None:
        return NOTHING_TO_RETRY
    if not result.sent_ids and not result.cancelled:
        return RETRY_NOT_SHOWN  # the channel lost the reply: the chatter saw nothing
    return result


def fallback_footer(answered: str, wanted: str) -> str:
    """The short line under a reply written by the fallback profile."""
    return f"\u21aa answered by {answered}: {wanted} is not available right now"


def clean_text(text: str) -> str:
    """Valid Unicode only: re-pair split surrogate halves, replace lone ones."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def parse_command(text: str) -> tuple[str | None, str]:
    """``"/reset@MyBot now"`` -> ``("reset", "now")``; plain text -> ``(None, text)``."""
    stripped = text.strip()
    if not stripped.startswith("/") or len(stripped) < 2:
        return None, text
    head, _, rest = stripped.partition(" ")
    name = head[1:].split("@", 1)[0].lower()
    if not name.replace("_", "").isalnum():
        return None, text
    return name, rest.strip()
