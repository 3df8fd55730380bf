#!/usr/bin/env bash
# Prepare Vigil to start; shared by scripts/start.sh and systemd's ExecStartPre
# (deploy/vigil.service), so both starts run the same steps:
#  1. .venv: created when missing, requirements.txt installed again only when it
#     changed (nothing is installed with VIGIL_VENV)
#  2. the data and logs directories (0700), or one line on why they cannot be written
#  3. pre-flight (main.py preflight): refuses, touching nothing, while a supervisor
#     holds data/supervisor.json.lock; the Telegram state, the port, stale
#     database locks, the integrity quick check, then the schema: before an
#     existing database is migrated, a verified snapshot (pre-migration-vN-TIME)
#     is taken and the rollback printed; a failed snapshot blocks the migration
#     (VIGIL_MIGRATE_WITHOUT_SNAPSHOT=1 overrides it for one run)
# Exit status non-zero, with the reason on stderr, when Vigil must not start.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

ensure_venv requirements.txt
"$PY" main.py prepare-dirs || exit $?
if ! "$PY" main.py preflight; then
    die "pre-flight checks failed (see above); Vigil was not started"
fi
