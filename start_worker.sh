#!/usr/bin/env bash
# Start geoworker the way the platform's start_worker.sh did: check everything, then run.
#
#   ./start_worker.sh [geoworker run options, e.g. --concurrency 4]
#
# 1. configuration check  (geoworker config --check: config.toml, .env, environment)
# 2. migrations           (geoworker migrate: idempotent, serialised across hosts)
# 3. health check         (geoworker health: database, API, file system, dependencies)
# 4. exec geoworker run   (the supervisor becomes this process: signals reach it directly)
#
# Migrations come before the health check because the health check requires a current
# schema: the other way round, a new database could never pass it.
#
# Environment:
#   GEOWORKER_HOME     directory to run in (config.toml and .env there); default: this script's
#   GEOWORKER_BIN      the geoworker command; default: $GEOWORKER_HOME/.venv/bin/geoworker, else PATH
#   SKIP_MIGRATE=1     another step of the release migrates
#   SKIP_HEALTH_CHECK=1  start even if the health check fails (e.g. the API is down but jobs
#                      can still be processed from the database)
set -euo pipefail

say() { echo "start_worker: $*" >&2; }

cd "${GEOWORKER_HOME:-$(dirname "$0")}"

if [ -f .env ] && [ "$(stat -c %a .env 2>/dev/null || echo 600)" != "600" ]; then
    say "warning: .env holds secrets and is readable by others: chmod 600 .env"
fi

gw="${GEOWORKER_BIN:-}"
if [ -z "$gw" ]; then
    if [ -x .venv/bin/geoworker ]; then
        gw=.venv/bin/geoworker
    elif command -v geoworker >/dev/null 2>&1; then
        gw=geoworker
    else
        say "geoworker is not installed here (no .venv/bin/geoworker, none on PATH)"
        exit 1
    fi
fi

say "checking the configuration"
"$gw" config --check

if [ "${SKIP_MIGRATE:-0}" != "1" ]; then
    say "applying migrations"
    "$gw" migrate
fi

say "checking health"
if ! "$gw" health; then
    if [ "${SKIP_HEALTH_CHECK:-0}" = "1" ]; then
        say "unhealthy, starting anyway (SKIP_HEALTH_CHECK=1)"
    else
        say "unhealthy: not starting (fix the ❌ lines above, or set SKIP_HEALTH_CHECK=1)"
        exit 1
    fi
fi

say "starting: $gw run $*"
exec "$gw" run "$@"
