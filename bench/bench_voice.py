"""First text of a turn after a voice note, excluding transcription time.

The real ChatService in this process (SQLite WAL in a temp dir); a real fake
model server and a real fake speech-to-text server (tests/fake_llm.py, real
HTTP, instant answers unless ``--stt-delay``), each in its own child process,
so their threads do not compete with the turn, or with each other, for one
interpreter's GIL. Two kinds of
turn, timed in alternating rounds so machine load hits both:

- ``text``: a typed message;
- ``voice``: a 3 s Ogg Opus voice note (checked with mutagen, transcribed over
  HTTP, its transcript shown as "🎤 ...", then answered);
- ``control``: a typed message sent right after the same transcription call
  (untimed): what the machine's state just after a transcription (the STT
  server process still closing its connection, on a busy box) costs a turn
  that does no voice work at all.

Each turn is timed from the call into ChatService to the first reply text the
channel receives (a send/edit whose text starts with the answer, the model
streaming every token: edit interval 0). For a voice note, the transcription's
own time (the STT client's measured latency, all HTTP attempts) is subtracted.

    .venv/bin/python bench/bench_voice.py --turns 200 --rounds 5

The figure is p50(voice, excluding transcription) - p50(text); target: unchanged.
The voice turns are also split at the "🎤" echo: the voice-only work before it
(the audio check, the usage row, the echo itself; transcription excluded) and
the rest, which is the same path as a typed message's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]

from core.app import build_runtime  # noqa: E402
from core.channel import IncomingMessage  # noqa: E402
from core.config import Settings  # noqa: E402
from core.database import Database  # noqa: E402
from core.media import AudioClip  # noqa: E402
from core.models import Models  # noqa: E402
from core.stt import SpeechToText  # noqa: E402
from tests.core.media.audio_files import ogg_opus  # noqa: E402

SERVER = """
import sys
from tests.fake_llm import FakeLLM
fake = FakeLLM().start()
fake.stt_delay_s = float(sys.argv[1])
fake.transcript = "turn from a voice note"
print(fake.url, flush=True)
sys.stdin.read()  # until the bench closes it
"""


def start_server(root: Path, stt_delay: float) -> tuple[subprocess.Popen[str], str]:
    """A fake server in its own process; returns it and its URL."""
    child = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(stt_delay)],
        cwd=root,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    return child, child.stdout.readline().strip()


ANSWER = "echo:"


class TimingChannel:
    """A channel that notes when the first text of the answer arrives."""

    name = "bench"
    max_message_chars = 4096

    def __init__(self) -> None:
        self.first_text: float | None = None
        self.echo: float | None = None  # when the "🎤 ..." transcript was shown
        self.sent = 0

    def edit_interval(self, chat_id: str) -> float:
        return 0.0

    def _saw(self, text: str) -> None:
        if self.first_text is None and text.startswith(ANSWER):
            self.first_text = time.perf_counter()

    async def send(self, chat_id: str, text: str) -> str:
        if self.echo is None and text.startswith("\U0001f3a4"):
            self.echo = time.perf_counter()
        self._saw(text)
        self.sent += 1
        return str(self.sent)

    async def edit(self, chat_id: str, message_id: str, text: str) -> None:
        self._saw(text)

    async def typing(self, chat_id: str) -> None:
        return None


def settings_for(tmp: Path, llm_url: str, stt_url: str) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp,
        "logs_dir": tmp / "logs",
        "admin_token": "bench",
        "llm_model": "fake",
        "llm_base_url": llm_url,
        "llm_max_retries": 0,
        "rate_limit_user_per_min": 0,
        "stt_base_url": stt_url,
    }
    return Settings(**values)


async def run_kind(
    settings: Settings, turns: int, *, spoken: bool, after_stt: bool = False
) -> tuple[list[float], dict[str, float]]:
    """First-text times (ms, transcription excluded) and the voice turns' parts (median ms):
    the transcription, the voice-only work around it (up to the echo), echo to first text."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.db_path)
    await db.open()
    models = Models.from_settings(settings)
    stt = SpeechToText.from_settings(settings)
    runtime = build_runtime(settings, db, models.primary, models=models, stt=stt)
    clip = AudioClip(ogg_opus(3.0), duration_s=3)
    times: list[float] = []
    parts: dict[str, list[float]] = {"transcription": [], "voice work": [], "after echo": []}
    try:
        for i in range(turns + 20):
            channel = TimingChannel()
            msg = IncomingMessage("local:bench", f"turn {i}", user_id="api:bench")
            if spoken:
                msg = IncomingMessage("local:bench", "", user_id="api:bench", audio=clip)
            if after_stt:  # the control: the same transcription, untimed, just before
                assert stt is not None
                await stt.transcribe(clip)
            started = time.perf_counter()
            result = await runtime.chat.handle(msg, channel)
            assert result.error_code is None and channel.first_text is not None
            elapsed = channel.first_text - started
            if spoken:
                assert stt is not None and stt.status.latency_ms is not None
                transcribed = stt.status.latency_ms / 1000
                elapsed -= transcribed
            if i >= 20:  # warm-up
                times.append(elapsed * 1000)
                if spoken:
                    assert channel.echo is not None
                    parts["transcription"].append(transcribed * 1000)
                    parts["voice work"].append((channel.echo - started - transcribed) * 1000)
                    parts["after echo"].append((channel.first_text - channel.echo) * 1000)
    finally:
        await runtime.chat.drain_background()
        await runtime.chat.usage.flush(db)
        if stt is not None:
            await stt.aclose()
        await models.aclose()
        await db.close()
    return times, {k: statistics.median(v) for k, v in parts.items() if v}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stt-delay", type=float, default=0.0, help="seconds per transcription")
    args = parser.parse_args()
    p50s: dict[str, list[float]] = {"text": [], "voice": [], "control": []}
    voice_parts: dict[str, list[float]] = {}
    root = Path(__file__).resolve().parent.parent
    llm_server, llm_url = start_server(root, 0.0)
    stt_server, stt_url = start_server(root, args.stt_delay)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        for r in range(args.rounds):
            for name in p50s:
                settings = settings_for(tmp / f"r{r}-{name}", llm_url, stt_url)
                times, parts = await run_kind(
                    settings, args.turns, spoken=name == "voice", after_stt=name == "control"
                )
                p50s[name].append(statistics.median(times))
                for part, value in parts.items():
                    voice_parts.setdefault(part, []).append(value)
            print(
                f"round {r + 1}: text {p50s['text'][-1]:.2f} ms, voice {p50s['voice'][-1]:.2f} ms "
                f"(transcription {voice_parts['transcription'][-1]:.2f} ms excluded), "
                f"text after a transcription {p50s['control'][-1]:.2f} ms"
            )
    for child in (llm_server, stt_server):
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
    med = {k: statistics.median(v) for k, v in p50s.items()}
    medians = {k: statistics.median(v) for k, v in voice_parts.items()}
    print()
    print("| turn | first reply text, p50 (ms) |")
    print("| --- | --- |")
    print(f"| typed message | {med['text']:.2f} |")
    print(f"| voice note, excluding transcription | {med['voice']:.2f} |")
    print(f"| difference | {med['voice'] - med['text']:+.2f} |")
    print(f"| typed message right after an (untimed) transcription | {med['control']:.2f} |")
    print(f"| voice note: the transcription (excluded) | {medians['transcription']:.2f} |")
    own = medians["voice work"]
    print(f"| voice note: its own work besides (check, usage row, 🎤 echo) | {own:.2f} |")
    print(f"| voice note: from the 🎤 echo to the first reply text | {medians['after echo']:.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
