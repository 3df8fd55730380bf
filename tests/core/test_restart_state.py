"""supervisor.json of the wrong shape: never a 500, never a crash after a restart began."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from core.restarts import STATE_FILE, read_supervisor_state
from tests.conftest import LiveServer

WRONG_SHAPES = [
    [],
    "text",
    {"pid": 1, "children": []},
    {"pid": 1, "children": {"server": "running"}},
    {"pid": 1, "children": None},
]
WRONG = {"supervised": False, "children": {}, "error": "unreadable supervisor.json: wrong shape"}


@pytest.mark.parametrize("content", WRONG_SHAPES)
def test_a_wrong_shape_reads_as_unsupervised_with_an_error(tmp_path: Path, content: Any) -> None:
    (tmp_path / STATE_FILE).write_text(json.dumps(content))
    assert read_supervisor_state(tmp_path, parent_pid=1) == WRONG


def test_the_right_shape_is_still_read(tmp_path: Path) -> None:
    state = {"pid": 1, "children": {"server": {"state": "running"}}}
    (tmp_path / STATE_FILE).write_text(json.dumps(state))
    read = read_supervisor_state(tmp_path, parent_pid=1)
    assert read["supervised"] is True and read["children"] == state["children"]
    assert "error" not in read


@pytest.mark.parametrize("content", [[], {"pid": 1, "children": []}])
def test_restart_status_with_a_wrong_shape_answers(live_server: LiveServer, content: Any) -> None:
    (live_server.settings.data_dir / STATE_FILE).write_text(json.dumps(content))
    response = live_server.client.get("/restart/status")
    assert response.status_code == 200, response.text
    assert response.json()["children"] == {}
    assert response.json()["auto_restart"]["supervised"] is False


def test_force_with_a_wrong_shape_answers_202(live_server: LiveServer) -> None:
    (live_server.settings.data_dir / STATE_FILE).write_text("[]")
    response = live_server.client.post("/restart/force")
    assert response.status_code == 202, response.text
    assert response.json()["supervised"] is False and "warning" in response.json()
