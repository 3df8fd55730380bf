"""Property-based fuzzing of every endpoint from the OpenAPI spec: never a 5xx.

Schemathesis generates valid and invalid requests for each operation of the
running server (real uvicorn, real SQLite, fake model) with the admin token,
and fails on any server error. ``POST /restart/force`` is left out: it drains
the server on purpose. This is how the 64-bit overflow 500s were found. The
"coverage" phase is skipped: on CPython 3.11 it trips a SystemError inside
Hypothesis' lambda-source parser (a tooling fault, not a server error); when
that fault shows up in another phase the run is repeated once with another
seed. Any server error fails at once.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import LiveServer, make_settings
from tests.fake_llm import FakeLLM

pytestmark = pytest.mark.slow  # schemathesis against a live server: ~25 s

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.mark.timeout(300)
def test_no_endpoint_answers_with_a_server_error(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Callable[..., LiveServer]
) -> None:
    # The API map is off by default (VIGIL_PUBLIC_DOCS): on for the fuzzer.
    settings = make_settings(tmp_path, llm_base_url=fake_llm.url, public_docs=True)
    live_server = live_server_factory(settings)
    live_server.chat("fuzz", "some history to page through")
    for seed in (20261121, 4242):
        result = fuzz(live_server, tmp_path, seed)
        assert "Server error" not in result.stdout, result.stdout[-4000:]
        if result.returncode == 0 or TOOL_FAULT not in result.stdout:
            break
        # Hypothesis' own SystemError (not the server's): one more try, another seed.
    assert result.returncode == 0, result.stdout[-4000:]


TOOL_FAULT = "SystemError: AST constructor recursion depth mismatch"


def fuzz(live_server: LiveServer, tmp_path: Path, seed: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"{live_server.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {live_server.token}",
            "--checks",
            "not_a_server_error",
            "--exclude-path",
            "/restart/force",
            "--max-examples",
            "25",
            "--workers",
            "2",
            "--seed",
            str(seed),
            "--phases",
            "examples,fuzzing,stateful",
        ],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=tmp_path,  # its caches stay out of the checkout
    )
