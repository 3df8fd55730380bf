#!/usr/bin/env bash
# The whole test suite: system packages, dev venv, ruff, mypy, pytest. Extra args go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

# System packages the tests drive for real: Chromium (browser tests),
# redis-server (the RedisHuey worker test), sqlite3 (the scripts' checks),
# prometheus (promtool checks deploy/prometheus/; a slow test runs the server).
ensure_system_packages() {
    local need=() sudo=()
    command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
        || [ -n "${VIGIL_CHROMIUM:-}" ] || need+=(chromium)
    command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
    command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)
    command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 \
        || need+=(prometheus)
    [ "${#need[@]}" -eq 0 ] && return 0
    local cmd="apt-get install -y --no-install-recommends ${need[*]}"
    command -v apt-get >/dev/null 2>&1 \
        || die "missing system packages: ${need[*]} (no apt-get here: install them with your package manager)"
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null \
            || die "missing system packages: ${need[*]}; run: sudo apt-get update && sudo $cmd"
        sudo=(sudo -n)
    fi
    say "installing system packages: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq >/dev/null \
        || die "apt-get update failed; run: sudo apt-get update && sudo $cmd"
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
        || die "could not install ${need[*]}; run: sudo $cmd"
}

ensure_system_packages
ensure_venv requirements-dev.txt
say "ruff check"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check . >/dev/null || die "ruff format would change files; run .venv/bin/ruff format ."
say "mypy"
"$VENV/bin/mypy"
say "import contracts"
contracts="$("$VENV/bin/lint-imports" --no-cache 2>&1)" \
    || { printf '%s\n' "$contracts"; die "import contracts broken (pyproject.toml [tool.importlinter])"; }
# Two workers (pytest-xdist): the suite fits CI's two cores in well under ten
# minutes. A later -n (e.g. `scripts/test.sh -n 0`) overrides it.
say "pytest (${PYTEST_WORKERS:-2} workers)"
exec "$VENV/bin/python" -m pytest -n "${PYTEST_WORKERS:-2}" "$@"
