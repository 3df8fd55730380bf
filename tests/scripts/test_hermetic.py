"""The suite is hermetic: an operator's VIGIL_* environment never changes a test's outcome."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.processes import ROOT


@pytest.mark.slow
def test_the_config_tests_pass_with_the_operators_environment_set() -> None:
    env = dict(os.environ)
    env.update(
        {
            "VIGIL_PORT": "1",
            "VIGIL_HOST": "0.0.0.0",
            "VIGIL_DATA_DIR": "/nonexistent/vigil",
            "VIGIL_LLM_MODEL": "operator-model",
            "VIGIL_ADMIN_TOKEN": "operator-token",
            "VIGIL_CONFIG_FILE": "/nonexistent/vigil.toml",
        }
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/core/test_config.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout
