#!/usr/bin/env bash
# Make sure the servers the tests use are up and answering (`make services`; `make test` runs it):
#   PostgreSQL on 127.0.0.1:5432, user postgres without a password (trust auth)
#   Redis on 127.0.0.1:6379
# A server that already answers is left alone (running this again changes nothing). One that does
# not is started the way this project's machines run them, without systemd: PostgreSQL's clusters
# with pg_ctlcluster (postgresql-common), Redis with its init script or, failing that, redis-server
# itself as a daemon. Starting needs root (or passwordless sudo). Exits non-zero, saying what is
# wrong, when a server cannot be brought up.
set -euo pipefail

PG_HOST=${KNOBFLOW_TEST_PG_HOST:-127.0.0.1}
PG_PORT=${KNOBFLOW_TEST_PG_PORT:-5432}
PG_USER=${KNOBFLOW_TEST_PG_USER:-postgres}
REDIS_HOST=${KNOBFLOW_TEST_REDIS_HOST:-127.0.0.1}
REDIS_PORT=${KNOBFLOW_TEST_REDIS_PORT:-6379}
WAIT=${KNOBFLOW_SERVICES_WAIT:-30}   # seconds to wait for a server that was just started

fail() {
    echo "services: $*" >&2
    exit 1
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        fail "cannot run '$*': not root and no passwordless sudo; start the server as root"
    fi
}

# until CMD... succeeds or $WAIT seconds pass
wait_until() {
    local i
    for ((i = 0; i < WAIT * 2; i++)); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.5
    done
    return 1
}

# -- PostgreSQL ----------------------------------------------------------------------------------

pg_answers() {
    PGCONNECT_TIMEOUT=3 psql -w -X -q -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -tAc 'select 1' 2>&1
}

postgresql() {
    command -v psql >/dev/null || fail "psql not found: install postgresql-client-15 (make system)"
    local out
    if out=$(pg_answers); then
        echo "services: PostgreSQL answers on $PG_HOST:$PG_PORT"
        return 0
    fi
    if pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; then
        # Up, but it refuses us: starting it again would not help.
        fail "PostgreSQL on $PG_HOST:$PG_PORT is up but does not let $PG_USER in: $out
  the tests connect as $PG_USER without a password ('host all all 127.0.0.1/32 trust' in pg_hba.conf)"
    fi
    command -v pg_lsclusters >/dev/null || fail "PostgreSQL is not running and pg_lsclusters is missing: install postgresql-15 (make system)"
    local clusters
    clusters=$(pg_lsclusters --no-header 2>/dev/null | awk -v port="$PG_PORT" '$3 == port {print $1 " " $2 " " $4}')
    [ -n "$clusters" ] || fail "no PostgreSQL cluster on port $PG_PORT (pg_lsclusters: $(pg_lsclusters --no-header 2>&1 | tr '\n' ';'))"
    local ver name status
    while read -r ver name status; do
        if [ "$status" != "online" ]; then
            echo "services: starting PostgreSQL cluster $ver/$name (was $status)"
            as_root pg_ctlcluster "$ver" "$name" start ||
                fail "pg_ctlcluster $ver $name start failed; see /var/log/postgresql/postgresql-$ver-$name.log"
        fi
    done <<<"$clusters"
    wait_until pg_answers ||
        fail "PostgreSQL does not answer on $PG_HOST:$PG_PORT after ${WAIT}s: $(pg_answers || true)"
    echo "services: PostgreSQL answers on $PG_HOST:$PG_PORT"
}

# -- Redis ---------------------------------------------------------------------------------------

redis_answers() {
    [ "$(timeout 5 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]
}

redis() {
    command -v redis-cli >/dev/null || fail "redis-cli not found: install redis-server (make system)"
    if redis_answers; then
        echo "services: Redis answers on $REDIS_HOST:$REDIS_PORT"
        return 0
    fi
    command -v redis-server >/dev/null || fail "Redis is not running and redis-server is missing: install it (make system)"
    echo "services: starting Redis"
    local started=no
    if [ -x /etc/init.d/redis-server ] && [ "$REDIS_PORT" = 6379 ]; then
        as_root /etc/init.d/redis-server start && started=yes
    fi
    if [ $started = no ] || ! wait_until redis_answers; then
        # No init script, or it did not work (e.g. no redis user): run the server directly.
        as_root redis-server --daemonize yes --bind "$REDIS_HOST" --port "$REDIS_PORT" \
            --dir /tmp --logfile /tmp/knobflow-redis-"$REDIS_PORT".log ||
            fail "redis-server did not start"
        wait_until redis_answers ||
            fail "Redis does not answer on $REDIS_HOST:$REDIS_PORT after ${WAIT}s; see /tmp/knobflow-redis-$REDIS_PORT.log"
    fi
    echo "services: Redis answers on $REDIS_HOST:$REDIS_PORT"
}

# Both by default; or only those named: scripts/services.sh [postgresql] [redis]
for service in "${@:-postgresql redis}"; do
    for s in $service; do
        case "$s" in
            postgresql | redis) "$s" ;;
            *) fail "unknown service $s (postgresql, redis)" ;;
        esac
    done
done
