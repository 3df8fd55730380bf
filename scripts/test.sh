#!/usr/bin/env bash
# The whole test suite: dev venv, ruff, mypy, pytest. Extra args go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

ensure_venv requirements-dev.txt
say "ruff check"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check . >/dev/null || die "ruff format would change files; run .venv/bin/ruff format ."
say "mypy"
"$VENV/bin/mypy"
say "pytest"
exec "$VENV/bin/python" -m pytest "$@"
