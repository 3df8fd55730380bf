"""Maintenance mode and announce: real uvicorn, real SQLite, the real CLI as a process,
FakeLLM over HTTP and FakeTelegram at the Telegram client boundary."""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from telethon import errors

from core import maintenance_mode as mm
from core.database import connect_sync, migrate_sync
from core.errors import BadRequest
from tests.conftest import LiveServer
from tests.core.telegram.test_app import ADA, BOB, Tg, tg_settings, wait_until
from tests.fake_llm import FakeLLM
from tests.fake_telegram import FakeTelegram
from tests.operator_cli import run_cli

NOW = dt.datetime(2026, 12, 4, 20, 0, tzinfo=dt.UTC).timestamp()


# --- --until ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30m", 1800),
        ("2h", 7200),
        ("1h30m", 5400),
        ("1d", 86400),
        ("90s", 90),
        ("21:30", 5400),
        ("2026-12-04T22:00", 7200),
        ("2026-12-04 22:00Z", 7200),
        ("2026-12-04T23:00+01:00", 7200),
    ],
)
def test_until_accepts_relative_clock_and_iso_times(text: str, seconds: float) -> None:
    assert mm.parse_until(text, now=NOW) == pytest.approx(NOW + seconds)


@pytest.mark.parametrize("text", ["19:59", "2026-12-04T19:00", "2020-01-01", "0m"])
def test_until_in_the_past_is_one_line(text: str) -> None:
    with pytest.raises(BadRequest, match=r"past|not in the future") as caught:
        mm.parse_until(text, now=NOW)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("text", ["400d", "99999999999d", "9999-12-31T23:59"])
def test_until_more_than_a_year_away_is_one_line(text: str) -> None:
    with pytest.raises(BadRequest, match="more than a year away"):
        mm.parse_until(text, now=NOW)


@pytest.mark.parametrize("text", ["", "soon", "25:00", "2h-5m", "-30m", "tomorrow 9"])
def test_until_that_is_no_time_is_one_line(text: str) -> None:
    with pytest.raises(BadRequest, match="is not a time") as caught:
        mm.parse_until(text, now=NOW)
    assert "\n" not in str(caught.value)


# --- helpers ----------------------------------------------------------------------------
def set_window(settings: Any, reason: str = "db upgrade", until: float | None = None) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    conn = connect_sync(settings.db_path)
    try:
        migrate_sync(conn)
        mm.set_sync(conn, mm.MaintenanceWindow(reason, time.time(), until, "test"))
    finally:
        conn.close()


def window_row(settings: Any) -> mm.MaintenanceWindow | None:
    conn = connect_sync(settings.db_path)
    try:
        return mm.read_sync(conn)
    finally:
        conn.close()


def in_maintenance(server: LiveServer) -> bool:
    return "maintenance" in server.client.get("/health").json()["reasons"]


# --- the API ---------------------------------------------------------------------------
@pytest.mark.slow
def test_the_api_refuses_turns_with_503_while_monitoring_stays_up(
    settings: Any, live_server_factory: Any
) -> None:
    server = live_server_factory(settings)
    assert server.chat("notes", "before").status_code == 200
    cli = run_cli(settings, "maintenance", "on", "database upgrade", "--until", "45m")
    assert cli.returncode == 0, cli.stderr
    assert "the running server refuses new turns now" in cli.stdout  # taken up, no restart
    for stream in (False, True):
        response = server.client.post(
            "/api/chats/notes/messages", json={"text": "during", "stream": stream}
        )
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "maintenance" and error["reason"] == "database upgrade"
        assert "down for maintenance until" in error["message"]
        assert 2600 <= int(response.headers["Retry-After"]) <= 2700
    health = server.client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    assert health.json()["maintenance"]["reason"] == "database upgrade"
    for path in ("/health/live", "/metrics", "/resources/status", "/dashboard"):
        assert server.client.get(path).status_code == 200, path
    assert "\nvigil_maintenance_mode 1.0\n" in server.client.get("/metrics").text
    history = server.client.get("/api/chats/notes/messages").json()["messages"]
    assert [m["content"] for m in history] == ["echo: before", "before"]  # nothing stored

    cli = run_cli(settings, "maintenance", "off")
    assert cli.returncode == 0 and "answers new turns again" in cli.stdout, cli
    assert server.chat("notes", "after").json()["reply"] == "echo: after"
    assert "\nvigil_maintenance_mode 0.0\n" in server.client.get("/metrics").text
    assert server.runtime.pid == server.runtime.pid  # the same process all along


@pytest.mark.slow
def test_maintenance_survives_a_restart_and_an_expired_window_ends_by_itself(
    settings: Any, live_server_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    set_window(settings, "disk swap", until=time.time() + 3.0)
    server = live_server_factory(settings)  # started while the mode is on
    response = server.chat("notes", "hello")
    assert response.status_code == 503 and response.json()["error"]["code"] == "maintenance"
    with caplog.at_level(logging.WARNING, logger="core.maintenance_mode"):
        wait_until(lambda: not in_maintenance(server), timeout=10)
        wait_until(lambda: window_row(settings) is None, timeout=5)
    assert server.chat("notes", "hello").status_code == 200
    assert any("ended by itself" in r.getMessage() for r in caplog.records)


def test_an_expired_window_is_off_at_once_even_before_the_watch_runs(
    settings: Any, live_server_factory: Any
) -> None:
    server = live_server_factory(settings)
    server.runtime.admission.maintenance = mm.MaintenanceWindow("x", time.time() - 60, time.time())
    assert server.chat("notes", "hi").status_code == 200


# --- Telegram --------------------------------------------------------------------------
@pytest.mark.slow
def test_telegram_messages_in_maintenance_get_one_polite_reply_each(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Any
) -> None:
    settings = tg_settings(tmp_path, fake_llm)
    set_window(settings, "new model", until=time.time() + 3600)
    fake = FakeTelegram()
    tg = Tg(live_server_factory(settings, telegram=fake.factory), fake)
    tg.say("are you there?")
    tg.say("hello?")
    tg.say("/status")  # commands still work
    texts = fake.texts(42)
    assert len(texts) == 3
    assert all(t.startswith("🛠 I'm down for maintenance until ") for t in texts[:2])
    assert "maintenance" in texts[2] and "Vigil degraded" in texts[2]
    assert fake_llm.requests == []  # nothing reached the model
    rows = tg.server.runtime.db.read_now("SELECT status FROM telegram_inbound")
    assert [r["status"] for r in rows] == ["answered"] * 3  # settled: never answered again
    tg.server.stop()

    # A restart (maintenance over) neither answers them again nor loses them silently:
    # they were answered, politely, once.
    conn = connect_sync(settings.db_path)
    mm.clear_sync(conn)
    conn.close()
    again = Tg(live_server_factory(settings, telegram=fake.factory), fake)
    again.say("now?", sender=BOB, chat_id=43)
    assert fake.texts(42) == texts
    assert fake.texts(43) == ["echo: now?"]


# --- announce ---------------------------------------------------------------------------
@pytest.mark.slow
def test_announce_reaches_active_telegram_and_local_chats_once(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Any
) -> None:
    settings = tg_settings(tmp_path, fake_llm)
    fake = FakeTelegram()
    tg = Tg(live_server_factory(settings, telegram=fake.factory), fake)
    tg.say("hi", sender=ADA)
    tg.say("hey", sender=BOB, chat_id=43)
    assert tg.server.chat("notes", "local hello").status_code == 200
    # an old chat: its last word was 60 days ago, so it is not active
    conn = connect_sync(settings.db_path)
    conn.execute(
        "INSERT INTO messages (chat_id, role, content, created_at) VALUES (?, 'user', 'x', ?)",
        ("tg:99", time.time() - 60 * 86400),
    )
    conn.close()

    dry = run_cli(settings, "announce", "Back at 22:00", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "3 chat(s)" in dry.stdout and "tg:99" not in dry.stdout

    # Telegram asks to slow down once: the note waits it out and still lands
    fake.fail("send_message", errors.FloodWaitError(request=None, capture=1))
    result = run_cli(settings, "announce", "Back at 22:00 after the upgrade")
    assert result.returncode == 0, result.stderr
    assert "announced to 3 active chat(s)" in result.stdout
    assert "2 sent in Telegram, 1 stored in local chats, 0 skipped, 0 failed" in result.stdout
    assert fake.texts(42)[-1] == "📢 Back at 22:00 after the upgrade"
    assert fake.texts(43)[-1] == "📢 Back at 22:00 after the upgrade"
    assert 99 not in fake.sent
    notes = tg.server.client.get("/api/chats/notes/messages").json()["messages"]
    assert notes[0]["role"] == "assistant"
    assert notes[0]["content"] == "📢 Back at 22:00 after the upgrade"
    # every send went through the Telegram channel's budget, flood wait included
    scheduler = tg.server.runtime.telegram_channel.scheduler
    assert scheduler.calls >= 2 and scheduler.flood_waits == 1

    for args, words in (
        (("announce", "  "), "must not be empty"),
        (("announce", "x", "--days", "0"), "--days must be between"),
    ):
        bad = run_cli(settings, *args)
        assert bad.returncode == 2 and words in bad.stderr and bad.stderr.count("\n") == 1


def test_announce_with_no_server_is_one_line(settings: Any) -> None:
    result = run_cli(settings, "announce", "hello")
    assert result.returncode == 1
    assert result.stderr.startswith("vigil: no server answers at ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_maintenance_cli_bad_input_is_one_line(settings: Any) -> None:
    set_window(settings)  # a database exists
    mm_off = run_cli(settings, "maintenance", "off")
    assert mm_off.returncode == 0 and "maintenance mode off" in mm_off.stdout
    for args, words in (
        (("maintenance", "on", "x", "--until", "2020-01-01"), "is in the past"),
        (("maintenance", "on", "x", "--until", "later"), "is not a time"),
        (("maintenance", "on", " "), "must not be empty"),
    ):
        result = run_cli(settings, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert words in result.stderr and result.stderr.count("\n") == 1
    assert window_row(settings) is None  # nothing was switched on by a refused command
    shown = run_cli(settings, "maintenance")
    assert shown.returncode == 0 and shown.stdout.strip() == "maintenance mode: off"


def test_a_reason_with_newlines_or_escapes_is_stored_as_one_printable_line(settings: Any) -> None:
    # The reason goes into system.log, status tables and replies: a newline forged a
    # log line, an ESC sequence reached the terminal of whoever tails the log.
    reason = "db move\n2026-12-04 00:00:00,000 - core.fake - CRITICAL - forged\x1b[31m red\x07"
    set_window(settings)  # a database exists
    result = run_cli(settings, "maintenance", "on", reason)
    assert result.returncode == 0, result.stderr
    window = window_row(settings)
    assert window is not None
    one_line = "db move 2026-12-04 00:00:00,000 - core.fake - CRITICAL - forged [31m red"
    assert window.reason == one_line
    assert not [line for line in result.stdout.splitlines() if line.startswith("2026-12-04 00")]
    assert "\x1b" not in result.stdout


# --- SIGHUP in the server: the allow-list and the governor's thresholds ------------------
@pytest.mark.slow
def test_a_reload_applies_the_allow_list_and_thresholds_to_the_running_server(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from core.reload import reload_server
    from tests.core.telegram.test_app import EVE

    settings = tg_settings(tmp_path, fake_llm)
    fake = FakeTelegram()
    tg = Tg(live_server_factory(settings, telegram=fake.factory), fake)
    tg.say("let me in", sender=EVE, chat_id=66)
    assert "allow-list" in fake.texts(66)[-1]  # refused: not on the list

    def load() -> Any:
        return tg_settings(
            tmp_path,
            fake_llm,
            port=settings.port,
            telegram_allowed_users=["bob", "eve"],
            governor_high_mb=700.0,
            llm_temperature=0.1,
        )

    async def hup(runtime: Any) -> Any:
        return reload_server(runtime, load=load)

    with caplog.at_level(logging.INFO, logger="core.reload"):
        result = tg.server.call(hup)
    assert sorted(result.applied) == ["governor_high_mb", "telegram_allowed_users"]
    assert result.needs_restart == ["llm_temperature"]
    lines = [r.getMessage() for r in caplog.records]
    assert any("reload: telegram_allowed_users bob -> bob,eve (server" in line for line in lines)
    assert any("needs a restart: VIGIL_LLM_TEMPERATURE" in line for line in lines)
    thresholds = tg.server.runtime.monitoring.thresholds
    assert thresholds.high_mb == pytest.approx(700.0 * thresholds.scale)
    assert tg.server.runtime.settings.llm_temperature == 0.7  # kept until a restart
    tg.say("now?", sender=EVE, chat_id=66)
    assert fake.texts(66)[-1] == "echo: now?"
