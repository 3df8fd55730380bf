"""The supervisor with real processes: crash, flap limit, hung loop, forced restart."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fake_llm import FakeLLM
from tests.processes import (
    AUTH,
    MAIN,
    StreamedTurn,
    VigilProcess,
    query,
    vigil,
    vigil_env,
    wait_for,
)

pytestmark = pytest.mark.slow


def _new_server_pid(sup: VigilProcess, old: int) -> Any:
    def check() -> int | None:
        body = sup._live()
        return body["pid"] if body and body["pid"] != old else None

    return wait_for(check, 20, "a new server process")


def test_kill_9_restarts_the_server_records_it_and_keeps_history(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    with vigil(tmp_path, vigil_env(tmp_path, fake_llm.url), "supervise", "--no-worker") as sup:
        first = sup.wait_live()["pid"]
        reply = sup.client.post(
            "/api/chats/k9/messages", json={"text": "remember me"}, headers=AUTH
        )
        assert reply.status_code == 200, reply.text

        os.kill(first, signal.SIGKILL)
        second = _new_server_pid(sup, first)

        assert second != first
        crash = [r for r in sup.restarts() if r["reason"] == "crash"]
        assert len(crash) == 1, sup.restarts()
        assert crash[0]["child"] == "server"
        assert crash[0]["signal"] == signal.SIGKILL
        assert crash[0]["attempt"] == 1
        assert crash[0]["backoff_s"] == pytest.approx(0.1)
        assert crash[0]["uptime_s"] > 0
        history = sup.client.get("/api/chats/k9/messages", headers=AUTH).json()
        contents = [m["content"] for m in history["messages"]]
        assert "remember me" in contents and "echo: remember me" in contents
        status = sup.client.get("/restart/status").json()
        assert status["auto_restart"]["supervised"] is True
        assert status["history"][0]["reason"] == "crash"
        assert status["counts_24h"] == {"crash": 1}
        assert status["children"]["server"]["state"] == "running"
        assert status["children"]["server"]["pid"] == second


def test_a_child_crashing_at_start_backs_off_then_hits_the_flap_limit(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    crasher = f"crasher={sys.executable} -c 'raise SystemExit(3)'"
    # The fake model's server records every POST body: it stands in for the webhook.
    env = vigil_env(tmp_path, fake_llm.url, alert_webhook_url=fake_llm.url + "/hook")
    with vigil(tmp_path, env, "supervise", "--no-worker", "--child", crasher) as sup:
        sup.wait_live()

        def failed() -> dict[str, Any] | None:
            status = sup.client.get("/restart/status").json()
            crasher_state = status["children"].get("crasher", {})
            return status if crasher_state.get("state") == "failed" else None

        status = wait_for(failed, 20, "the crasher to be marked failed")

        rows = [r for r in sup.restarts() if r["child"] == "crasher"]
        assert [r["reason"] for r in rows] == ["crash", "crash", "crash", "flap_limit"]
        assert [r["exit_code"] for r in rows] == [3, 3, 3, 3]
        assert [r["attempt"] for r in rows[:3]] == [1, 2, 3]
        # exponential backoff 0.1 -> 0.2 -> 0.4 (the configured maximum)
        assert [r["backoff_s"] for r in rows[:3]] == pytest.approx([0.1, 0.2, 0.4])
        child = status["children"]["crasher"]
        assert child["is_failed"] is True and child["pid"] is None
        assert child["restarts_in_window"] == 3
        reasons = {entry["reason"] for entry in status["history"]}
        assert "flap_limit" in reasons
        alerts = query(sup.db, "SELECT * FROM alerts WHERE alert_type = 'restart_flap_limit'")
        assert len(alerts) == 1 and alerts[0]["severity"] == "critical"
        hooks = wait_for(lambda: [b for b in fake_llm.requests if "alert" in b], 5, "the webhook")
        assert hooks[0]["alert"]["alert_type"] == "restart_flap_limit"
        assert (
            hooks[0]["alert"]["severity"] == "critical"
            and "crasher" in hooks[0]["alert"]["message"]
        )
        # the rest keeps running
        assert status["children"]["server"]["state"] == "running"
        assert sup.client.get("/health/live").status_code == 200


def test_a_hung_event_loop_is_killed_by_the_watchdog_and_restarted(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    env = vigil_env(tmp_path, fake_llm.url, supervisor_watchdog_timeout_s=1.0)
    with vigil(tmp_path, env, "supervise", "--no-worker") as sup:
        first = sup.wait_live()["pid"]
        wait_for(
            lambda: sup.supervisor_state()["children"]["server"]["is_live"],
            10,
            "the supervisor to see the server live",
        )

        def block() -> None:
            try:
                sup.client.post("/debug/block", params={"seconds": 60}, headers=AUTH, timeout=30)
            except httpx.HTTPError:
                pass  # the connection dies with the killed server

        threading.Thread(target=block, daemon=True).start()
        second = _new_server_pid(sup, first)

        assert second != first
        rows = [r for r in sup.restarts() if r["reason"] == "watchdog"]
        assert len(rows) == 1, sup.restarts()
        assert rows[0]["signal"] == signal.SIGKILL
        assert "/health/live" in rows[0]["detail"]


def test_force_restart_during_a_streamed_reply_finishes_it_then_restarts(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    fake_llm.reply = "one two three four five six seven eight"
    fake_llm.token_delay_s = 0.15
    with vigil(tmp_path, vigil_env(tmp_path, fake_llm.url), "supervise", "--no-worker") as sup:
        first = sup.wait_live()["pid"]
        stream = StreamedTurn(sup.url, "slow", "tell me").start()
        stream.first_delta.wait(10)

        forced = sup.client.post("/restart/force", headers=AUTH)
        refused = sup.client.post("/api/chats/other/messages", json={"text": "hi"}, headers=AUTH)
        ready = sup.client.get("/health")

        assert forced.status_code == 202, forced.text
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "restarting"
        assert int(refused.headers["Retry-After"]) > 0
        assert ready.status_code == 503 and ready.json()["status"] == "unhealthy"
        second = _new_server_pid(sup, first)
        stream.join()
        assert stream.done is not None, stream.events
        assert stream.done["reply"] == fake_llm.reply
        forced_rows = [r for r in sup.restarts() if r["reason"] == "forced"]
        assert len(forced_rows) == 1 and forced_rows[0]["exit_code"] == 75
        state = sup.supervisor_state()["children"]["server"]
        assert state["pid"] == second and state["attempt"] == 0  # no backoff penalty
        saved = sup.client.get("/api/chats/slow/messages", headers=AUTH).json()["messages"]
        assert saved[0]["content"] == fake_llm.reply


def test_children_do_not_outlive_a_killed_supervisor(tmp_path: Path, fake_llm: FakeLLM) -> None:
    with vigil(tmp_path, vigil_env(tmp_path, fake_llm.url), "supervise", "--no-worker") as sup:
        server = sup.wait_live()["pid"]

        sup.proc.kill()
        sup.proc.wait()

        # The server got SIGTERM (parent-death signal): it drains and exits by itself.
        wait_for(lambda: not _is_running(server), 20, "the orphaned server to exit")
        # A supervisor killed (kill -9, the OOM killer) is no planned stop.
        rows = [(r["reason"], r["exit_code"]) for r in sup.restarts()]
        assert rows == [("signal", 0)]
        counted = query(
            sup.db,
            "SELECT name, labels, value FROM counters"
            " WHERE name IN ('vigil_restarts', 'vigil_stops') ORDER BY name",
        )
        assert [(r["name"], r["labels"], r["value"]) for r in counted] == [
            ("vigil_restarts", "reason=signal", 1.0),
        ]


def _is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_a_second_supervisor_for_the_same_data_dir_refuses(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    env = vigil_env(tmp_path, fake_llm.url)
    with vigil(tmp_path, env, "supervise", "--no-worker") as first:
        server = first.wait_live()["pid"]
        second = VigilProcess(tmp_path, env, "supervise", "--no-worker")
        code = second.proc.wait(20)
        second.client.close()

        assert code == 1
        assert "another supervisor" in first.log()
        assert first.wait_live()["pid"] == server  # the first one is untouched


def test_the_supervisor_runs_without_the_cli_imports(tmp_path: Path, fake_llm: FakeLLM) -> None:
    """After its checks the supervisor re-executes itself small: no pydantic, TLS or asyncio."""
    with vigil(tmp_path, vigil_env(tmp_path, fake_llm.url), "supervise", "--no-worker") as sup:
        server = sup.wait_live()["pid"]
        assert sup.supervisor_state()["pid"] == sup.proc.pid  # the PID the caller started
        argv = Path(f"/proc/{sup.proc.pid}/cmdline").read_bytes().split(b"\0")
        assert argv[1:3] == [str(MAIN).encode(), b"supervise"]  # start.sh's pid_alive
        mapped = Path(f"/proc/{sup.proc.pid}/maps").read_text()
        for extension in ("_pydantic_core", "_ssl", "_asyncio"):
            assert extension not in mapped
        assert extension in Path(f"/proc/{server}/maps").read_text()  # the server has them


def test_a_stop_is_not_a_restart_but_a_signalled_server_alone_is(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    with vigil(tmp_path, vigil_env(tmp_path, fake_llm.url), "supervise", "--no-worker") as sup:
        first = sup.wait_live()["pid"]
        # SIGTERM to the server alone: it exits 0 and the supervisor starts it again.
        os.kill(first, signal.SIGTERM)
        _new_server_pid(sup, first)
        assert sup.stop() == 0  # the supervisor is stopped: a planned stop

    rows = [(r["reason"], r["child"]) for r in sup.restarts()]
    assert sorted(rows) == [("signal", "server"), ("stop", "server")]
    counted = query(
        sup.db,
        "SELECT name, labels, value FROM counters"
        " WHERE name IN ('vigil_restarts', 'vigil_stops') ORDER BY name",
    )
    assert [(r["name"], r["labels"], r["value"]) for r in counted] == [
        ("vigil_restarts", "reason=signal", 1.0),
        ("vigil_stops", "", 1.0),
    ]
