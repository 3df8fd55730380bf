#!/usr/bin/env bash
# Start Vigil in the background (docs/operations.md, "Start-up"):
#  1. refuse if already running (a supervisor holds data/supervisor.json.lock: then nothing
#     is touched); otherwise a PID file left behind is stale and removed
#  2-5. scripts/prepare.sh (also systemd's ExecStartPre): the Telegram auth state, the
#     port, database locks recovered (stale -wal/-shm folded back), a quick integrity
#     check (a corrupt or empty (0-byte) database is refused, never replaced), then the
#     schema created or migrated, after a verified pre-migration snapshot
#  6. start the supervisor (server + Huey worker) detached from the terminal
#  7. wait for /health, print the outcome, URLs and log locations
# Environment: VIGIL_* settings (docs/configuration.md), VIGIL_START_TIMEOUT (s, default 30),
# VIGIL_VENV (use an existing virtualenv as is), VIGIL_MIGRATE_WITHOUT_SNAPSHOT (1: migrate
# without the pre-migration snapshot, for one run).
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

ensure_venv requirements.txt
load_env
# The data and logs directories (0700), or one line on why they cannot be written.
"$PY" main.py prepare-dirs || exit $?

# One start/stop at a time for this data directory (fd 9 is not passed on).
lock_scripts
flock -n 9 || die "another start.sh or stop.sh is running for $VIGIL_DATA_DIR"

# 1. already running? Judged by the supervisor's lock (data/supervisor.json.lock,
# held for the supervisor's whole life), never by a PID file or a command line:
# another checkout or a systemd unit on this data directory counts too, and
# then nothing here is touched (no PID file removed, no WAL recovered, no migration).
if supervisor_running; then
    die "Vigil is already running (pid $SUPERVISOR_PID, started from $SUPERVISOR_DIR); $(stop_hint "$SUPERVISOR_PID")"
fi
if [ -f "$VIGIL_PID_FILE" ]; then
    old="$(cat "$VIGIL_PID_FILE" 2>/dev/null || true)"
    # The supervisor died hard (kill -9) but its children kept its process group.
    # (Only while the group leader is gone: a PID in use is never a recycled group.)
    if ! is_running "$old"; then
        leftovers="$(group_pids "$old")"
        if [ -n "$leftovers" ]; then
            die "processes of a previous Vigil still run (pid $(echo $leftovers), supervisor $old gone); run scripts/stop.sh first"
        fi
    fi
    say "removing stale PID file (pid ${old:-?}: no supervisor holds the lock of $VIGIL_DATA_DIR)"
    rm -f "$VIGIL_PID_FILE"
fi

# 2-5. the preparation systemd runs too (scripts/prepare.sh): venv, pre-flight
# (telegram state, port, stale locks, integrity), a verified snapshot before a
# schema migration, the migration
bash "$VIGIL_ROOT/scripts/prepare.sh" || exit $?

# 6. the supervisor, in its own session (no terminal, its own process group)
say "starting Vigil (supervisor: server + worker), listening on $VIGIL_LISTEN"
(umask 077 && : >> "$VIGIL_LOGS_DIR/stdout.log")  # private like the other logs
chmod 600 "$VIGIL_LOGS_DIR/stdout.log"
setsid nohup "$PY" main.py supervise >> "$VIGIL_LOGS_DIR/stdout.log" 2>&1 < /dev/null 9>&- &
pid=$!
printf '%s\n' "$pid" > "$VIGIL_PID_FILE"
chmod 600 "$VIGIL_PID_FILE"

# 7. wait for /health
if ! health="$("$PY" main.py wait-healthy --timeout "${VIGIL_START_TIMEOUT:-30}" --pid "$pid")"; then
    say "start-up failed; last lines of $VIGIL_LOGS_DIR/system.log:"
    tail -n 15 "$VIGIL_LOGS_DIR/system.log" >&2 2>/dev/null || true
    tail -n 5 "$VIGIL_LOGS_DIR/stdout.log" >&2 2>/dev/null || true
    if is_running "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        sleep 2
        for p in $(group_pids "$pid"); do kill -KILL "$p" 2>/dev/null || true; done
    fi
    rm -f "$VIGIL_PID_FILE"
    exit 1
fi

"$PY" - "$health" <<'PYEOF'
import json, sys
h = json.loads(sys.argv[1])
llm = h["checks"]["llm"]
print(f"vigil: status {h['status']} (database {h['database']}, telegram {h['telegram']})")
if h["llm"] == "ok":
    print(f"vigil: model {llm['model']} answered at {llm['url']}")
elif h["llm"] == "unknown":
    print(f"vigil: model at {llm['url']} not checked yet (slow to answer); see /health shortly")
else:
    print(f"vigil: no model reachable at {llm['url']} ({llm['detail'] or h['llm']}); "
          "set VIGIL_LLM_BASE_URL / VIGIL_LLM_MODEL")
PYEOF
say "running, supervisor pid $pid (PID file $VIGIL_PID_FILE)"
say "  health:      $VIGIL_URL/health   restarts: $VIGIL_URL/restart/status"
if [ "${VIGIL_TOKEN_SET:-0}" = 1 ]; then
    token_hint="token: the VIGIL_ADMIN_TOKEN you set"
else
    token_hint="token in $VIGIL_TOKEN_FILE"
fi
say "  chat API:    $VIGIL_URL/api/chats/<chat>/messages ($token_hint)"
say "  logs:        $VIGIL_LOGS_DIR/system.log (also tasks.log, telegram.log, stdout.log)"
say "  stop with:   scripts/stop.sh"
