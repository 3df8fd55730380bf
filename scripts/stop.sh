#!/usr/bin/env bash
# Stop Vigil: SIGTERM to its process group, bounded wait, SIGKILL after the timeout.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

[ -x "$PY" ] || { say "not installed (.venv missing); nothing to stop"; exit 0; }
load_env
if [ ! -f "$VIGIL_PID_FILE" ]; then
    say "not running (no PID file)"
    exit 0
fi
pid="$(cat "$VIGIL_PID_FILE" 2>/dev/null || true)"
if ! pid_alive "$pid"; then
    say "not running (stale PID file for pid ${pid:-?} removed)"
    rm -f "$VIGIL_PID_FILE"
    exit 0
fi

timeout="${VIGIL_STOP_TIMEOUT:-20}"
say "stopping Vigil (pid $pid), waiting up to ${timeout}s"
kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
deadline=$((SECONDS + timeout))
while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
if kill -0 "$pid" 2>/dev/null; then
    say "still running after ${timeout}s; sending SIGKILL"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
fi
# Orphans of this installation only: whatever is left in the process group.
sleep 0.2
kill -KILL -- "-$pid" 2>/dev/null || true
rm -f "$VIGIL_PID_FILE"
say "stopped"
