#!/usr/bin/env bash
# Start Vigil in the background: venv, data/ and logs/, server, wait for /health.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

ensure_venv requirements.txt
load_env
mkdir -p "$VIGIL_DATA_DIR" "$VIGIL_LOGS_DIR"
chmod 700 "$VIGIL_DATA_DIR" "$VIGIL_LOGS_DIR"

if [ -f "$VIGIL_PID_FILE" ]; then
    old="$(cat "$VIGIL_PID_FILE" 2>/dev/null || true)"
    if pid_alive "$old"; then
        die "Vigil is already running (pid $old, $VIGIL_URL); run scripts/stop.sh first"
    fi
    say "removing stale PID file (pid $old is not running)"
    rm -f "$VIGIL_PID_FILE"
fi

MODE="${VIGIL_START_MODE:-serve}"
say "starting Vigil ($MODE) on $VIGIL_URL"
setsid nohup "$PY" main.py "$MODE" >> "$VIGIL_LOGS_DIR/stdout.log" 2>&1 < /dev/null &
pid=$!
printf '%s\n' "$pid" > "$VIGIL_PID_FILE"
chmod 600 "$VIGIL_PID_FILE"

if ! health="$("$PY" main.py wait-healthy --timeout "${VIGIL_START_TIMEOUT:-30}" --pid "$pid")"; then
    say "start-up failed; last lines of $VIGIL_LOGS_DIR/stdout.log:"
    tail -n 15 "$VIGIL_LOGS_DIR/stdout.log" >&2 || true
    if kill -0 "$pid" 2>/dev/null; then kill -TERM -- "-$pid" 2>/dev/null || true; fi
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
else:
    print(f"vigil: no model reachable at {llm['url']} ({llm['detail'] or h['llm']}); "
          "set VIGIL_LLM_BASE_URL / VIGIL_LLM_MODEL")
PYEOF
say "running, pid $pid"
say "  health:      $VIGIL_URL/health"
say "  chat API:    $VIGIL_URL/api/chats/<chat>/messages (token in $VIGIL_TOKEN_FILE)"
say "  logs:        $VIGIL_LOGS_DIR/system.log"
say "  stop with:   scripts/stop.sh"
