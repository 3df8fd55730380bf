"""Extra latency of a turn answered by the fallback while the primary is known down.

In process: the real ChatService (SQLite WAL in a temp dir) and two real fake
model servers (tests/fake_llm.py, real HTTP/SSE, instant answers). Three
setups, timed turn by turn in alternating rounds so machine load hits all:

- ``single``: today's one-profile setup (no VIGIL_LLM_MODELS);
- ``healthy``: profiles main + backup, main answers;
- ``down``: main is stopped (connection refused) and known down: each turn
  skips it at once and the backup answers (a background re-probe of main at
  most every ``REPROBE_GAP_S``);
- ``hung``: main accepts connections and never answers (tests/fake_llm.py's
  HungServer) and is known down (its probe timed out): same as ``down``, with
  each re-probe hanging in the background until its timeout.

    .venv/bin/python bench/bench_fallback.py --turns 200 --rounds 5

The figures are p50(down) - p50(healthy) and p50(hung) - p50(healthy); target < 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]

from core.api import LocalReply  # noqa: E402
from core.app import build_runtime  # noqa: E402
from core.channel import IncomingMessage  # noqa: E402
from core.config import Settings  # noqa: E402
from core.database import Database  # noqa: E402
from core.models import Models  # noqa: E402
from tests.fake_llm import FakeLLM, HungServer  # noqa: E402

SETUPS = ("single", "healthy", "down", "hung")


def settings_for(tmp: Path, name: str, main_url: str, backup: FakeLLM) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp / name,
        "logs_dir": tmp / "logs",
        "admin_token": "bench",
        "llm_model": "fake",
        "llm_base_url": main_url,
        "llm_max_retries": 0,
        "llm_timeout_s": 1.0,  # a probe of the hung server gives up after this
        "rate_limit_user_per_min": 0,
    }
    if name != "single":
        values["llm_models"] = json.dumps(
            {
                "main": {"base_url": main_url, "model": "fake"},
                "backup": {"base_url": backup.url, "model": "fake"},
            }
        )
        values["llm_fallback"] = "backup"
    return Settings(**values)


async def run_setup(settings: Settings, turns: int, *, down: bool) -> tuple[list[float], float]:
    """Per-turn wall times, and the process CPU time per turn (the model servers'
    threads included: the same in every setup; less disturbed by other load)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.db_path)
    await db.open()
    models = Models.from_settings(settings)
    runtime = build_runtime(settings, db, models.primary, models=models)
    if down:
        await models.clients["main"].probe()  # stopped or hung: known down from here on
        assert models.clients["main"].status.state == "unreachable"
        assert models.is_down(models.clients["main"])
    channel = LocalReply()
    times: list[float] = []
    cpu = 0.0
    try:
        for i in range(turns + 20):
            started, cpu_started = time.perf_counter(), time.process_time()
            result = await runtime.chat.handle(IncomingMessage("bench", f"turn {i}"), channel)
            elapsed = time.perf_counter() - started
            assert result.error_code is None, result.error_code
            if down:
                assert result.model == "backup"
            if i >= 20:  # warm-up
                times.append(elapsed)
                cpu += time.process_time() - cpu_started
        await models.wait_probes()
    finally:
        await runtime.chat.drain_background()
        await runtime.chat.usage.flush(db)
        await models.aclose()
        await db.close()
    return times, cpu / turns


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    p50s: dict[str, list[float]] = {name: [] for name in SETUPS}
    cpus: dict[str, list[float]] = {name: [] for name in SETUPS}
    with (
        tempfile.TemporaryDirectory() as t,
        FakeLLM() as healthy_main,
        FakeLLM() as backup,
        HungServer() as hung,
    ):
        dead_main = FakeLLM().start()
        dead_main.stop()  # a port where nothing answers any more
        urls = {"down": dead_main.url, "hung": hung.url}
        tmp = Path(t)
        for r in range(args.rounds):
            for name in p50s:
                url = urls.get(name, healthy_main.url)
                settings = settings_for(tmp / f"r{r}", name, url, backup)
                times, cpu = await run_setup(settings, args.turns, down=name in urls)
                p50s[name].append(statistics.median(times) * 1000)
                cpus[name].append(cpu * 1000)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} ms" for k, v in p50s.items()))
    med = {k: statistics.median(v) for k, v in p50s.items()}
    print(
        f"median p50 per turn: single {med['single']:.2f} ms, healthy {med['healthy']:.2f} ms, "
        f"down->fallback {med['down']:.2f} ms, hung->fallback {med['hung']:.2f} ms; "
        f"extra latency of the fallback: refused {med['down'] - med['healthy']:+.2f} ms, "
        f"hung {med['hung'] - med['healthy']:+.2f} ms (target < 5 ms)"
    )
    cpu = {k: statistics.median(v) for k, v in cpus.items()}
    print(
        "median CPU per turn: "
        + ", ".join(f"{k} {v:.2f} ms" for k, v in cpu.items())
        + f"; extra CPU of the fallback: refused {cpu['down'] - cpu['healthy']:+.2f} ms, "
        f"hung {cpu['hung'] - cpu['healthy']:+.2f} ms"
    )
    print(f"hung server: {hung.posts()} completions, {hung.gets()} probes received")


if __name__ == "__main__":
    asyncio.run(main())
