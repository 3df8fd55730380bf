# Shared helpers for Vigil's shell scripts (sourced, not run).
set -euo pipefail
VIGIL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$VIGIL_ROOT"
# VIGIL_VENV: use an existing virtualenv as it is (no install step), e.g. a
# shared or system-managed one; tests point it at the checkout's .venv.
VENV="${VIGIL_VENV:-$VIGIL_ROOT/.venv}"
PY="$VENV/bin/python"

say() { printf '%s\n' "vigil: $*"; }
die() { printf '%s\n' "vigil: error: $*" >&2; exit 1; }

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

# ensure_venv REQUIREMENTS_FILE: create .venv and install only when the file changed.
ensure_venv() {
    local reqs="$1" stamp="$VENV/.vigil-$(basename "$1").sha256" want have python
    if [ -n "${VIGIL_VENV:-}" ]; then
        [ -x "$PY" ] || die "VIGIL_VENV=$VIGIL_VENV has no bin/python"
        return 0
    fi
    if [ ! -x "$PY" ]; then
        python="$(find_python)" || die "Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)"
        say "creating .venv with $python"
        "$python" -m venv "$VENV" || die "could not create .venv (is the python3-venv package installed?)"
    fi
    want="$(cat "$reqs" requirements.txt | sha256sum | cut -d' ' -f1)"
    have="$(cat "$stamp" 2>/dev/null || true)"
    if [ "$want" != "$have" ]; then
        say "installing $(basename "$reqs") into .venv (first run takes a minute)"
        "$PY" -m pip install --disable-pip-version-check -q --upgrade pip >/dev/null 2>&1 || true
        "$PY" -m pip install --disable-pip-version-check -q -r "$reqs" \
            || die "pip install -r $reqs failed (see the output above)"
        printf '%s\n' "$want" > "$stamp"
    fi
}

# load_env: validated settings as shell variables (fails with one line on a bad setting).
# lock_scripts: fd 9 on data/.scripts.lock (mode 0600), for flock.
lock_scripts() {
    local lock="$VIGIL_DATA_DIR/.scripts.lock"
    (umask 077 && : >> "$lock") 2>/dev/null || true
    chmod 600 "$lock" 2>/dev/null || true
    exec 9>> "$lock"
}

load_env() {
    local out
    out="$("$PY" main.py shell-env)" || exit 2
    eval "$out"
}

# supervisor_running: is a supervisor of this data directory alive? Judged by the lock it
# holds (data/supervisor.json.lock), never by a command line or a PID file. Sets
# SUPERVISOR_PID and SUPERVISOR_DIR (the directory it was started from); returns 1 when
# none runs, and stops the script when that cannot be told.
supervisor_running() {
    local out rc=0
    out="$("$PY" main.py supervisor-pid)" || rc=$?
    SUPERVISOR_PID="" SUPERVISOR_DIR=""
    case "$rc" in
        0) SUPERVISOR_PID="${out%%$'\t'*}" SUPERVISOR_DIR="${out#*$'\t'}" ;;
        1) return 1 ;;
        *) die "cannot tell whether Vigil runs for $VIGIL_DATA_DIR (see above)" ;;
    esac
}

# stop_hint PID: how to stop the supervisor PID (start.sh's PID file names it, or not).
stop_hint() {
    if [ "$(cat "$VIGIL_PID_FILE" 2>/dev/null || true)" = "$1" ]; then
        echo "stop it with scripts/stop.sh first"
    else
        echo "it was not started by scripts/start.sh (systemd? then: systemctl stop vigil; else: kill -TERM $1)"
    fi
}

# is_running PID: exists and is not a zombie (an unreaped exit still answers kill -0).
is_running() {
    local pid="$1" state
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    state="$(ps -o stat= -p "$pid" 2>/dev/null)" || return 1
    [ -n "$state" ] && [ "${state:0:1}" != "Z" ]
}

# group_pids PGID: processes still in that process group (the supervisor's).
group_pids() {
    local pgid="$1"
    [[ "$pgid" =~ ^[0-9]+$ ]] || return 0
    ps -e -o pid=,pgid=,stat= | awk -v g="$pgid" '$2 == g && $3 !~ /^Z/ { print $1 }'
}
