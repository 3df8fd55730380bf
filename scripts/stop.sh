#!/usr/bin/env bash
# Stop Vigil gracefully (docs/operations.md, "Shutdown"):
#  1. SIGTERM to the supervisor: it drains the server (replies in flight finish, up to
#     VIGIL_RESTART_GRACE_S), stops the worker, records the stop
#  2. bounded wait (grace + VIGIL_SUPERVISOR_STOP_TIMEOUT_S + 5 s, or VIGIL_STOP_TIMEOUT)
#  3. SIGKILL after the timeout
#  4. clean up orphans of this installation only: its PID file's process group
#     (never by process name); running or not is judged by the supervisor's lock
#  5. release database locks (checkpoint a WAL left behind), remove the PID file
# Idempotent: safe when nothing runs.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

[ -x "$PY" ] || { say "not installed (.venv missing); nothing to stop"; exit 0; }
load_env
[ -d "$VIGIL_DATA_DIR" ] || { say "not running (no data directory)"; exit 0; }
lock_scripts
flock -w 5 9 || die "another start.sh or stop.sh is running for $VIGIL_DATA_DIR"

pid="$(cat "$VIGIL_PID_FILE" 2>/dev/null || true)"
# Running or not is judged by the supervisor's lock (data/supervisor.json.lock),
# never by a command line: a Vigil started from another checkout on this data
# directory is stopped too, and one this PID file does not name is left alone.
supervisor_running || true
if [ -n "$SUPERVISOR_PID" ] && [ "$SUPERVISOR_PID" != "$pid" ]; then
    die "Vigil runs (pid $SUPERVISOR_PID, started from $SUPERVISOR_DIR) but ${pid:+the PID file names pid $pid, }$(stop_hint "$SUPERVISOR_PID")"
elif [ -z "$pid" ]; then
    say "not running (no PID file)"
elif [ -z "$SUPERVISOR_PID" ]; then
    say "not running (stale PID file for pid $pid)"
    # The supervisor died hard; its children kept its process group (only while
    # the group leader is gone: a PID in use is never a recycled group).
    leftovers=""
    is_running "$pid" || leftovers="$(group_pids "$pid")"
    if [ -n "$leftovers" ]; then
        say "killing orphaned processes of this installation: $(echo $leftovers)"
        for p in $leftovers; do kill -KILL "$p" 2>/dev/null || true; done
    fi
else
    timeout="${VIGIL_STOP_TIMEOUT:-$("$PY" main.py stop-wait)}"
    say "stopping Vigil (supervisor pid $pid); replies in flight may finish, waiting up to ${timeout}s"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$(( SECONDS + ${timeout%.*} + 1 ))
    while is_running "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    if is_running "$pid"; then
        say "still running after ${timeout}s; sending SIGKILL"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    # Orphans: whatever is left in the supervisor's process group.
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        leftovers="$(group_pids "$pid")"
        [ -z "$leftovers" ] && break
        kill -KILL -- "-$pid" 2>/dev/null || true
        sleep 0.1
    done
    [ -z "$(group_pids "$pid")" ] || die "processes of group $pid survived SIGKILL: $(group_pids "$pid")"
    say "stopped"
fi
rm -f "$VIGIL_PID_FILE"
if [ -f "$VIGIL_DB" ]; then "$PY" main.py release-locks || true; fi
