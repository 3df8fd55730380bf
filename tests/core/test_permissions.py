"""A data directory Vigil cannot write: one line about permissions, no crash loop.

Permission bits do not stop root, so the commands run as ``nobody`` (the
tests need root to switch user, as in CI containers) on a data directory
owned by root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.database import connect_sync, migrate_sync
from tests.fake_llm import FakeLLM
from tests.processes import MAIN, ROOT, vigil, vigil_env, wait_for

pytestmark = pytest.mark.slow
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
needs_root = pytest.mark.skipif(
    os.getuid() != 0 or shutil.which("setpriv") is None,
    reason="switching to nobody needs root and setpriv",
)


@pytest.fixture
def readonly_home() -> Iterator[Path]:
    """A directory nobody can enter but not write, holding a valid database."""
    home = Path(tempfile.mkdtemp(prefix="vigil-ro-"))
    home.chmod(0o755)
    data = home / "data"
    data.mkdir(mode=0o755)
    (home / "logs").mkdir(mode=0o777)
    conn = connect_sync(data / "system.db")
    migrate_sync(conn)
    conn.close()
    (data / "system.db").chmod(0o644)
    yield home
    shutil.rmtree(home, ignore_errors=True)


def run_as_nobody(home: Path, args: list[str], **env: Any) -> subprocess.CompletedProcess[str]:
    values = vigil_env(home, "http://127.0.0.1:9/v1", **env)
    return subprocess.run(
        [*AS_NOBODY, *args], cwd=home, env=values, capture_output=True, text=True, timeout=60
    )


@needs_root
@pytest.mark.parametrize("command", ["serve", "preflight", "supervise"])
def test_read_only_data_dir_is_named_as_a_permission_problem(
    readonly_home: Path, command: str
) -> None:
    done = run_as_nobody(readonly_home, [sys.executable, str(MAIN), command])
    assert done.returncode == 78, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(readonly_home / "data") in lines[0]
    assert "permission problem" in lines[0] and "chown" in lines[0]
    assert "corrupt" not in lines[0] and "restore" not in lines[0]


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs sysfs")
def test_start_sh_says_one_line_not_a_raw_chmod_error(tmp_path: Path) -> None:
    # sysfs refuses new directories even to root: an unwritable data directory.
    values = vigil_env(tmp_path, "http://127.0.0.1:9/v1", data_dir="/sys/vigil-test-data")
    values["VIGIL_VENV"] = str(ROOT / ".venv")
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "start.sh")],
        cwd=tmp_path,
        env=values,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 78, done.stdout + done.stderr
    assert "chmod:" not in done.stderr and "mkdir:" not in done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "/sys/vigil-test-data" in lines[0]
    assert "permission problem" in lines[0]


def test_a_configuration_exit_is_retried_slowly_by_the_supervisor(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    config_fail = f"cfg={sys.executable} -c 'raise SystemExit(78)'"
    env = vigil_env(tmp_path, fake_llm.url, supervisor_retry_failed_s=120)
    with vigil(tmp_path, env, "supervise", "--no-worker", "--child", config_fail) as sup:
        sup.wait_live()

        def waiting() -> dict[str, Any] | None:
            child = sup.supervisor_state().get("children", {}).get("cfg", {})
            return child if child.get("last_exit") else None

        child = wait_for(waiting, 20, "the child's first exit")
        assert child["state"] == "backoff" and child["backoff_s"] == 120
        assert child["last_exit"]["reason"] == "config_error"
        sup.wait_live()  # a few more supervisor ticks: still one exit, no loop
        rows = [r for r in sup.restarts() if r["child"] == "cfg"]
        assert [r["reason"] for r in rows] == ["config_error"]
        assert sup.supervisor_state()["children"]["cfg"]["alert"] == "restart_config_error"
