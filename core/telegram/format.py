"""Markdown as models write it -> Telegram text plus formatting entities.

Pure and Telethon-free: :func:`render` returns the visible text and our own
:class:`Entity` values (offsets and lengths in UTF-16 code units, as Telegram
counts them); the gateway maps them to Telethon's entity types. Handles what
chat models actually emit: fenced code blocks (also unclosed ones, as seen
mid-stream), inline code, bold, italic, strikethrough, links, headings and
bullets. Anything it does not recognise stays as plain text, and when
Telegram rejects the entities the gateway falls back to the raw text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.streaming import utf16_len


@dataclass(frozen=True, slots=True)
class Entity:
    """One formatting span: kind is bold|italic|code|pre|strike|text_url."""

    kind: str
    offset: int
    length: int
    extra: str = ""  # the URL of a text_url, the language of a pre


_FENCE = re.compile(r"^ {0,3}(```+|~~~+)\s*([\w+#.-]*)\s*$")
_HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_BULLET = re.compile(r"^(\s*)[*+-]\s+(?=\S)")
_INLINE = re.compile(
    r"(?P<code>`+)(?P<code_body>.+?)(?P=code)"
    r"|\[(?P<link_text>[^\]\n]+)\]\((?P<url>(?:https?://|tg://|mailto:)[^\s()]+)\)"
    r"|\*\*(?P<bold>(?=\S).+?(?<=\S))\*\*"
    r"|(?<!\w)__(?P<bold2>(?=\S).+?(?<=\S))__(?!\w)"
    r"|~~(?P<strike>(?=\S).+?(?<=\S))~~"
    r"|(?<![\w*])\*(?P<italic>(?=[^\s*]).*?(?<=[^\s*]))\*(?![\w*])"
    r"|(?<!\w)_(?P<italic2>(?=[^\s_]).*?(?<=[^\s_]))_(?!\w)"
)
_SPAN_KINDS = (
    ("bold", "bold"),
    ("bold2", "bold"),
    ("strike", "strike"),
    ("italic", "italic"),
    ("italic2", "italic"),
)


class _Builder:
    def __init__(self) -> None:
        self.chunks: list[str] = []
        self.size = 0  # UTF-16 units so far
        self.entities: list[Entity] = []

    def add(self, text: str) -> None:
        self.chunks.append(text)
        self.size += utf16_len(text)

    def span(self, kind: str, start: int, extra: str = "") -> None:
        if self.size > start:
            self.entities.append(Entity(kind, start, self.size - start, extra))

    def inline(self, line: str) -> None:
        pos = 0
        for match in _INLINE.finditer(line):
            self.add(line[pos : match.start()])
            pos = match.end()
            start = self.size
            if match.group("code_body") is not None:
                self.add(match.group("code_body").strip(" ") or match.group("code_body"))
                self.span("code", start)
                continue
            if match.group("link_text") is not None:
                self.inline(match.group("link_text"))
                self.span("text_url", start, match.group("url"))
                continue
            for group, kind in _SPAN_KINDS:
                if match.group(group) is not None:
                    self.inline(match.group(group))
                    self.span(kind, start)
                    break
        self.add(line[pos:])

    def text(self) -> str:
        return "".join(self.chunks)


def render(markdown: str) -> tuple[str, list[Entity]]:
    """Visible text and entities for ``markdown`` (stripped, as Telegram stores it)."""
    out = _Builder()
    lines = markdown.split("\n")
    fence: str | None = None
    code_start, language = 0, ""
    for number, line in enumerate(lines):
        newline = "\n" if number < len(lines) - 1 else ""
        match = _FENCE.match(line)
        if fence is None and match:
            fence, language, code_start = match.group(1)[:3], match.group(2), out.size
            continue
        if fence is not None:
            if match and match.group(1).startswith(fence) and not match.group(2):
                _close_pre(out, code_start, language)
                fence = None
                out.add(newline)
            else:
                out.add(line + newline)
            continue
        heading = _HEADING.match(line)
        if heading:
            start = out.size
            out.inline(heading.group(1))
            out.span("bold", start)
        else:
            out.inline(_BULLET.sub(r"\1• ", line))
        out.add(newline)
    if fence is not None:
        _close_pre(out, code_start, language)
    return _strip(out.text(), out.entities)


def _close_pre(out: _Builder, start: int, language: str) -> None:
    # The newline before the closing fence is not part of the code.
    if out.chunks and out.chunks[-1].endswith("\n"):
        out.chunks[-1] = out.chunks[-1][:-1]
        out.size -= 1
    out.span("pre", start, language)


def _strip(text: str, entities: list[Entity]) -> tuple[str, list[Entity]]:
    """Telegram strips surrounding whitespace; clip the entities to match."""
    head = utf16_len(text[: len(text) - len(text.lstrip())])
    stripped = text.strip()
    end = utf16_len(stripped)
    clipped = []
    for entity in entities:
        start = max(0, entity.offset - head)
        stop = min(end, entity.offset + entity.length - head)
        if stop > start:
            clipped.append(Entity(entity.kind, start, stop - start, entity.extra))
    clipped.sort(key=lambda e: (e.offset, -e.length))
    return stripped, clipped
