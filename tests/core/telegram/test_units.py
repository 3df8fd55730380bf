"""Pure parts of the Telegram adapter: formatting, gating, allow-list, paste joining."""

from __future__ import annotations

import pytest

from core.telegram.bot import (
    REFUSALS_REMEMBERED,
    PasteBuffer,
    RecentKeys,
    TgMessage,
    is_addressed,
    is_allowed,
    normalize_allowed,
    strip_mention,
)
from core.telegram.format import Entity, render


# --- Markdown -> entities ------------------------------------------------------------
def spans(markdown: str) -> tuple[str, list[tuple[str, str]]]:
    text, entities = render(markdown)
    units = text.encode("utf-16-le")
    return text, [
        (e.kind, units[2 * e.offset : 2 * (e.offset + e.length)].decode("utf-16-le"))
        for e in entities
    ]


@pytest.mark.parametrize(
    ("markdown", "text", "expected"),
    [
        ("**bold** and *it*", "bold and it", [("bold", "bold"), ("italic", "it")]),
        ("__b__ _i_ ~~s~~", "b i s", [("bold", "b"), ("italic", "i"), ("strike", "s")]),
        ("use `x = 1` here", "use x = 1 here", [("code", "x = 1")]),
        ("# Title\nbody", "Title\nbody", [("bold", "Title")]),
        ("- one\n* two", "• one\n• two", []),
        ("**bold _inner_**", "bold inner", [("bold", "bold inner"), ("italic", "inner")]),
        ("😀 **x** 😀 `y`", "😀 x 😀 y", [("bold", "x"), ("code", "y")]),
        ("snake_case_name, 2*3*4", "snake_case_name, 2*3*4", []),
        ("**not closed yet", "**not closed yet", []),
    ],
)
def test_markdown_renders_to_text_and_entities(
    markdown: str, text: str, expected: list[tuple[str, str]]
) -> None:
    assert spans(markdown) == (text, expected)


def test_links_carry_their_url() -> None:
    text, entities = render("see [the docs](https://example.org/a_b) now")
    assert text == "see the docs now"
    assert entities == [Entity("text_url", 4, 8, "https://example.org/a_b")]


def test_code_fences_become_pre_with_language_even_unclosed() -> None:
    text, entities = render("Try:\n```python\nprint(1)\n```\nDone.")
    assert text == "Try:\nprint(1)\nDone."
    assert entities == [Entity("pre", 5, 8, "python")]
    partial, entities = render("Try:\n```sh\nls -l")  # mid-stream
    assert partial == "Try:\nls -l"
    assert entities == [Entity("pre", 5, 5, "sh")]
    raw, entities = render("```\n**not bold** in code\n```")
    assert raw == "**not bold** in code" and entities == [Entity("pre", 0, 20, "")]


def test_surrounding_whitespace_is_stripped_like_telegram_does() -> None:
    assert render("\n\n  **x**  \n") == ("x", [Entity("bold", 0, 1)])


# --- who is answered -----------------------------------------------------------------
def msg(text: str = "hi", **fields: object) -> TgMessage:
    values: dict[str, object] = {"chat_id": 1, "message_id": 1, "text": text, "sender_id": 5}
    values.update(fields)
    return TgMessage(**values)  # type: ignore[arg-type]


def test_allow_list_by_id_or_username_and_the_admin() -> None:
    allowed = normalize_allowed(["@Ada", "12345", " ", "bob"])
    assert allowed == frozenset({"ada", "12345", "bob"})
    assert is_allowed(msg(sender_id=12345), allowed, None)
    assert is_allowed(msg(sender_id=9, username="ADA"), allowed, None)
    assert not is_allowed(msg(sender_id=9, username="eve"), allowed, None)
    assert not is_allowed(msg(sender_id=9, username=None), allowed, None)
    assert is_allowed(msg(sender_id=7), frozenset(), 7)  # empty list: only the admin
    assert not is_allowed(msg(sender_id=8), frozenset(), 7)
    assert not is_allowed(msg(sender_id=8), frozenset(), None)


def test_groups_answer_mentions_replies_and_our_commands_only() -> None:
    group = {"is_group": True, "is_private": False}
    assert is_addressed(msg("anything"), "VigilBot")  # private chats always
    assert not is_addressed(msg("chatting", **group), "VigilBot")
    assert is_addressed(msg("hey", mentions_me=True, **group), "VigilBot")
    assert is_addressed(msg("and?", replies_to_me=True, **group), "VigilBot")
    assert is_addressed(msg("/help", **group), "VigilBot")
    assert is_addressed(msg("/help@vigilbot", **group), "VigilBot")
    assert not is_addressed(msg("/help@OtherBot", **group), "VigilBot")
    assert not is_addressed(msg("/", **group), "VigilBot")
    assert strip_mention("@VigilBot what now?", "VigilBot") == "what now?"
    assert strip_mention("ask @vigilbot, please", "VigilBot") == "ask, please"


def test_removing_a_mention_leaves_no_double_space() -> None:
    assert strip_mention("what is @VigilBot two plus two", "VigilBot") == "what is two plus two"
    assert strip_mention("thanks @VigilBot", "VigilBot") == "thanks"
    assert strip_mention("first line\n@VigilBot  second", "VigilBot") == "first line\nsecond"
    assert strip_mention("keep  this  spacing @VigilBot", "VigilBot") == "keep  this  spacing"
    assert strip_mention("mail @VigilBotter", "VigilBot") == "mail @VigilBotter"


def test_refused_strangers_are_remembered_up_to_a_bound_oldest_first_out() -> None:
    seen = RecentKeys(3)
    assert [seen.add(k) for k in ["a", "b", "c", "a"]] == [True, True, True, False]
    assert seen.add("d")  # "b" was the least recently seen
    assert "b" not in seen and "a" in seen and len(seen) == 3
    assert seen.add("b")  # forgotten: told once more
    many = RecentKeys(REFUSALS_REMEMBERED)
    for i in range(3 * REFUSALS_REMEMBERED):
        many.add((i, i))
    assert len(many) == REFUSALS_REMEMBERED == 10_000


# --- split pastes --------------------------------------------------------------------
def test_a_paste_split_by_telegram_is_joined_and_released_once() -> None:
    paste = PasteBuffer(debounce_s=0.8, long_chars=100)
    assert paste.add(msg("a" * 150, message_id=1), now=0.0) == []
    assert paste.add(msg("b" * 150, message_id=2), now=0.5) == []
    ready = paste.add(msg("tail", message_id=3), now=0.9)
    assert [m.text for m in ready] == ["a" * 150 + "\n" + "b" * 150 + "\ntail"]
    assert paste.joined == 2
    assert paste.due(now=100.0) == []


def test_short_messages_pass_at_once_and_long_ones_after_the_debounce() -> None:
    paste = PasteBuffer(debounce_s=0.8, long_chars=100)
    assert [m.text for m in paste.add(msg("short"), now=0.0)] == ["short"]
    assert paste.add(msg("x" * 120, sender_id=6), now=0.0) == []
    assert paste.due(now=0.5) == []
    assert [len(m.text) for m in paste.due(now=0.8)] == [120]


def test_a_paste_over_the_limit_stops_growing_and_keeps_its_length() -> None:
    paste = PasteBuffer(debounce_s=0.8, long_chars=3000, max_chars=16000)
    for i in range(10):
        assert paste.add(msg("p" * 4000, message_id=i), now=i * 0.1) == []
        held = paste._pending[(1, 5)].msg
        assert len(held.text) <= 16000  # memory stays bounded however long the paste
    [ready] = paste.add(msg("tail", message_id=10), now=1.0)
    assert ready.length == 10 * 4000 + 9 + len("\ntail")
    assert len(ready.text) <= 16000
    assert paste.joined == 10
    under = PasteBuffer(debounce_s=0.8, long_chars=3000, max_chars=16000)
    under.add(msg("q" * 4000), now=0.0)
    [whole] = under.add(msg("end"), now=0.1)
    assert whole.text == "q" * 4000 + "\nend" and whole.length == 4004


def test_an_edit_of_a_held_message_replaces_its_text() -> None:
    paste = PasteBuffer(debounce_s=0.8, long_chars=10)
    paste.add(msg("first long draft", message_id=9), now=0.0)
    assert paste.replace_edited(msg("corrected long text", message_id=9, is_edit=True))
    assert not paste.replace_edited(msg("other", message_id=8, is_edit=True))
    assert [m.text for m in paste.due(now=1.0)] == ["corrected long text"]


async def test_only_the_answers_chat_gets_the_reply_to() -> None:
    from core.streaming import EditScheduler
    from core.telegram.channel import REPLY_TO, TelegramChannel

    sent: list[tuple[int, int | None]] = []

    class Api:
        async def send_text(
            self, peer: int, text: str, entities: list[Entity], *, reply_to: int | None = None
        ) -> int:
            sent.append((peer, reply_to))
            return len(sent)

    channel = TelegramChannel(Api(), scheduler=EditScheduler(edits_per_s=1000))  # type: ignore[arg-type]
    REPLY_TO.set((-100123, 7))  # a group turn's task...
    await channel.send("tg:-100123", "the answer")
    await channel.send("tg:42", "an alert to the admin, sent from the same task")
    assert sent == [(-100123, 7), (42, None)]
