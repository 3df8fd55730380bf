"""ContextWindowManager: what the model sees of a chat.

prompt = system prompt + running summary + newest turns, within both the
message limit and the token budget. Turns that fall out are folded into the
chat's stored running summary at once with an extractive fallback (no model
call on the reply path); when a model answers, ``refine`` later rewrites that
summary with the model. The newest user turn is always included.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from core.channel import Turn
from core.media import MediaStore, data_url, image_placeholder, image_text, image_tokens
from core.memory import ChatMemory, ChatWindow

log = logging.getLogger(__name__)

MESSAGE_OVERHEAD_TOKENS = 4
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")

Summarizer = Callable[[str], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Prompt:
    messages: list[dict[str, Any]]
    turns: tuple[Turn, ...]
    summary: str
    tokens: int
    folded: int
    refine_due: bool = False
    images: int = 0  # images sent as content parts (the turn needs a vision model)
    costs: tuple[int, ...] = ()  # estimated tokens of each message (the system prompt first)

    def fit(self, limit: int | None) -> list[dict[str, Any]]:
        """The messages cut to ``limit`` prompt tokens, for a model whose window is
        smaller than the one this prompt was built for (a fallback profile).

        Keeps the system prompt and the newest messages that fit; the newest
        message always (as :func:`plan_window`). Nothing is folded: the chat's
        own model sees the left-out turns again on the next turn.
        """
        if limit is None or self.tokens <= limit or len(self.costs) != len(self.messages):
            return self.messages
        used = self.costs[0]
        start = len(self.messages)
        while start > 1:
            cost = self.costs[start - 1]
            if start < len(self.messages) and used + cost > limit:
                break
            used += cost
            start -= 1
        while start < len(self.messages) - 1 and self.messages[start]["role"] == "assistant":
            start += 1
        return [self.messages[0], *self.messages[start:]]


def plan_window(
    turns: Sequence[Turn], *, max_messages: int, max_tokens: int
) -> tuple[list[Turn], list[Turn]]:
    """Split turns (oldest first) into (fold, keep) — a pure decision.

    Keeps the newest turns while both limits hold; the newest turn is always
    kept. Kept turns never start with an assistant turn whose user turn was
    folded (the model would see an answer without its question).
    """
    keep: list[Turn] = []
    used = 0
    for turn in reversed(turns):
        cost = turn.tokens + MESSAGE_OVERHEAD_TOKENS
        if keep and (len(keep) >= max_messages or used + cost > max_tokens):
            break
        keep.append(turn)
        used += cost
    keep.reverse()
    while len(keep) > 1 and keep[0].role == "assistant":
        keep.pop(0)
    cut = len(turns) - len(keep)
    return list(turns[:cut]), keep


def _first_sentence(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    head = _SENTENCE_END.split(flat, maxsplit=1)[0]
    return head if len(head) <= limit else head[: limit - 1].rstrip() + "…"


def extractive_summary(
    previous: str, folded: Sequence[Turn], *, max_tokens: int, estimate: Callable[[str], int]
) -> str:
    """Append one line per folded turn; keep the newest lines within budget."""
    lines = [line for line in previous.splitlines() if line.strip()]
    for turn in folded:
        who = turn.author or turn.role
        # An image is named after the first sentence (which may end the text).
        text = _first_sentence(turn.content) if turn.content.strip() else ""
        if turn.images:
            shown = image_placeholder(turn.images[0]) if not text else "[image]"
            many = f" x{len(turn.images)}" if len(turn.images) > 1 else ""
            text = f"{text} {shown}{many}".strip()
        lines.append(f"- {who}: {text}")
    while len(lines) > 1 and estimate("\n".join(lines)) > max_tokens:
        lines.pop(0)
    return "\n".join(lines)


class ContextWindowManager:
    """Builds prompts for ChatService and keeps windows within their limits."""

    def __init__(
        self,
        memory: ChatMemory,
        *,
        system_prompt: str,
        max_messages: int = 100,
        max_tokens: int = 6000,
        summary_max_tokens: int = 800,
        refine_after: int = 20,
        media: MediaStore | None = None,
        max_images: int = 2,
    ) -> None:
        self.memory = memory
        self.media = media
        # The newest turns whose images the model sees; older ones become text.
        self.max_images = max_images
        self.system_prompt = system_prompt
        self.max_messages = max_messages
        self.max_tokens = max_tokens
        self.summary_max_tokens = summary_max_tokens
        # Folded turns between two model refinements of a summary: refining on
        # every overflowing turn would double the model's load.
        self.refine_after = refine_after
        self.folds = 0
        self.refines = 0

    def _summary(self, window: ChatWindow, limit: int | None = None) -> str:
        """The summary as the prompt shows it: for a model with a small window
        (``limit``), its newest lines within half that window."""
        summary = window.live_summary
        if limit is None or limit >= self.max_tokens:
            return summary
        room = max(MESSAGE_OVERHEAD_TOKENS, limit // 2)
        lines = summary.splitlines()
        while len(lines) > 1 and self.memory.estimate("\n".join(lines)) > room:
            lines.pop(0)
        return "\n".join(lines)

    def _budget(self, window: ChatWindow, limit: int | None = None) -> int:
        summary = self._summary(window, limit)
        fixed = self.memory.estimate(self.system_prompt) + self.memory.estimate(summary)
        total = self.max_tokens if limit is None else min(self.max_tokens, limit)
        return max(MESSAGE_OVERHEAD_TOKENS * 2, total - fixed - 2 * MESSAGE_OVERHEAD_TOKENS)

    async def build(
        self,
        chat_id: str,
        *,
        exclude: Sequence[int] = (),
        images: bool = True,
        max_tokens: int | None = None,
    ) -> Prompt:
        """The prompt for the chat's next reply; folds what no longer fits.

        ``exclude``: ids of turns to leave out (``/retry`` leaves out the
        answer it is replacing). ``images``: False when no model of the chat
        can see; every image is then text ("[image: caption]").
        ``max_tokens``: the answering model's own prompt room, when smaller
        than ``VIGIL_CONTEXT_MAX_TOKENS`` (a profile's ``context_tokens``
        minus its ``max_tokens``).
        """
        window = await self.memory.window(chat_id)
        turns = [t for t in window.turns if t.id not in exclude] if exclude else window.turns
        turns = self._priced(turns, images=images)
        budget = self._budget(window, max_tokens)
        fold, keep = plan_window(turns, max_messages=self.max_messages, max_tokens=budget)
        if fold:
            await self._fold(window, fold)
            # The summary grew: re-plan once against the smaller budget.
            more, keep = plan_window(
                keep, max_messages=self.max_messages, max_tokens=self._budget(window, max_tokens)
            )
            if more:
                await self._fold(window, more)
        return self._render(window, keep, folded=len(fold), images=images, limit=max_tokens)

    def _shown(self, turns: Sequence[Turn], *, images: bool) -> set[int]:
        """The turns whose images are sent as pictures: the newest ``max_images``
        turns (a chatter's message and its answer), so a follow-up question still
        sees the picture; older images are text, and the chat's own model answers."""
        newest = self.max_images if images and self.media is not None else 0
        users = [t.id for t in turns if t.role == "user"]
        return set(users[-newest:]) if newest else set()

    def _priced(self, turns: Sequence[Turn], *, images: bool) -> list[Turn]:
        """The turns, each costing what the model will get of it: a stored image
        turn counts its pictures, but only the newest ``max_images`` are sent as
        pictures; older ones are a few words of text ("[image: caption]")."""
        shown = self._shown(turns, images=images)
        priced = list(turns)
        for i, turn in enumerate(priced):
            if turn.images and turn.id not in shown:
                text = image_text(turn.content, turn.images)
                priced[i] = replace(turn, tokens=self.memory.estimate(text.strip()))
        return priced

    async def _fold(self, window: ChatWindow, turns: Sequence[Turn]) -> None:
        self.memory.sync_summary(window)  # the worker may have refined it meanwhile
        summary = extractive_summary(
            window.live_summary,  # after an idle restart: a new summary, not the old one
            turns,
            max_tokens=self.summary_max_tokens,
            estimate=self.memory.estimate,
        )
        await self.memory.fold(window.chat_id, upto_id=turns[-1].id, summary=summary)
        window.unrefined += len(turns)
        self.folds += 1
        log.info("chat %s: folded %d turns into the summary", window.chat_id, len(turns))

    def _render(
        self,
        window: ChatWindow,
        keep: Sequence[Turn],
        *,
        folded: int,
        images: bool = True,
        limit: int | None = None,
    ) -> Prompt:
        system = self.system_prompt
        summary = self._summary(window, limit)
        if summary:
            system += "\n\nSummary of the earlier conversation:\n" + summary
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
        tokens = self.memory.estimate(system) + MESSAGE_OVERHEAD_TOKENS
        costs = [tokens]
        with_images = self._shown(keep, images=images)
        sent = 0
        for turn in keep:
            before = tokens
            parts: list[dict[str, Any]] = []
            as_text = []  # an older turn's images (or their files are gone)
            for image in turn.images:
                data = (
                    self.media.read(image.path)
                    if self.media is not None and turn.id in with_images
                    else None
                )
                if data is None:
                    as_text.append(image)
                    continue
                parts.append({"type": "image_url", "image_url": {"url": data_url(data)}})
                tokens += image_tokens(image.width, image.height)
            content = image_text(turn.content, as_text)
            if turn.author and turn.role == "user":
                content = f"{turn.author}: {content}"
            tokens += self.memory.estimate(content) + MESSAGE_OVERHEAD_TOKENS
            if parts:
                sent += len(parts)
                text = [{"type": "text", "text": content}] if content else []
                messages.append({"role": turn.role, "content": text + parts})
            else:
                messages.append({"role": turn.role, "content": content})
            costs.append(tokens - before)
        due = window.unrefined >= self.refine_after
        return Prompt(
            messages, tuple(keep), window.live_summary, tokens, folded, due, sent, tuple(costs)
        )

    async def prune(self, chat_id: str) -> int:
        """Fold whatever exceeds the limits now (the governor's optimisation)."""
        window = await self.memory.window(chat_id)
        fold, _ = plan_window(
            self._priced(window.turns, images=True),
            max_messages=self.max_messages,
            max_tokens=self._budget(window),
        )
        if fold:
            await self._fold(window, fold)
        return len(fold)

    async def refine(self, chat_id: str, summarize: Summarizer) -> bool:
        """Rewrite the chat's extractive summary with the model, if still current."""
        window = await self.memory.window(chat_id)
        if not window.live_summary:
            return False
        window.unrefined = 0  # one refinement at a time per batch of folds
        upto = window.summary_upto_id
        request = (
            "Condense these notes of an earlier conversation into a short summary that keeps "
            "names, facts, decisions and open questions. Reply with the summary only.\n\n"
            + window.summary
        )
        better = (await summarize(request)).strip()
        if not better:
            return False
        if self.memory.estimate(better) > self.summary_max_tokens:
            return False
        changed = await self.memory.replace_summary(chat_id, upto_id=upto, summary=better)
        self.refines += int(changed)
        return changed
