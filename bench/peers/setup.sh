#!/usr/bin/env bash
# Create bench/peers/.venv with the peer job queues pinned in requirements.txt.
# Kept apart from the project's .venv so that the peers' dependencies never leak into batchjob's.
# Idempotent: does nothing when the stamp records the same requirements.txt.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
stamp="$venv/.requirements.sha256"
python="${PYTHON:-python3.11}"

want="$(cat "$here/requirements.txt" "$here/../../pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/python" ]]; then
    echo "bench/peers/.venv is up to date"
    exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
rm -f "$stamp"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -r "$here/requirements.txt"
# batchjob itself, measured beside the peers in the same run (editable: this checkout's code).
"$venv/bin/python" -m pip install --quiet -e "$here/../..[mysql,mysqlclient,postgresql]"
"$venv/bin/python" -m pip check
echo "$want" >"$stamp"
"$venv/bin/python" -m pip freeze --quiet | grep -iE \
    '^(dramatiq|huey|celery|rq|procrastinate|pgqueuer|asyncpg|psycopg|psycopg-binary|redis|kombu|psutil|typer)=='
