#!/usr/bin/env bash
# Make sure PostgreSQL answers on 127.0.0.1 with trust authentication and a database "test".
#
# When something already answers, only the database is created if missing. Otherwise Debian's
# postgresql is installed when missing (root only; its own service start suppressed), a cluster is
# created if there is none and started with pg_ctlcluster. KARABO_PG_PORT and KARABO_PG_CLUSTER
# choose another port and cluster name (default 5432 and "main").
set -euo pipefail

HOST=127.0.0.1
PORT=${KARABO_PG_PORT:-5432}
CLUSTER=${KARABO_PG_CLUSTER:-main}
DATABASES=(test)

say() { echo "ensure-postgres: $*"; }

answers() {
    if command -v pg_isready >/dev/null; then
        pg_isready -q -h "$HOST" -p "$PORT"
    else
        (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null
    fi
}

sql() { psql -h "$HOST" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -tAq "$@"; }

create_databases() {
    if ! command -v psql >/dev/null; then
        say "psql is missing; cannot check for databases ${DATABASES[*]}"
        return 0
    fi
    if ! sql -c 'SELECT 1' >/dev/null 2>&1; then
        say "PostgreSQL on $HOST:$PORT does not let user postgres in without a password; leaving it alone"
        return 0
    fi
    if [[ -z "$(sql -c "SELECT 1 FROM pg_roles WHERE rolname = 'root'")" ]]; then
        sql -c 'CREATE ROLE root SUPERUSER LOGIN'
    fi
    local db
    for db in "${DATABASES[@]}" root; do
        if [[ -z "$(sql -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]]; then
            sql -c "CREATE DATABASE \"$db\""
            say "created database $db"
        fi
    done
}

install_postgresql() {
    if [[ $(id -u) != 0 ]]; then
        say "PostgreSQL is not installed and this is not root: install Debian's postgresql first" >&2
        exit 1
    fi
    say "installing Debian's postgresql"
    local policy=/usr/sbin/policy-rc.d placed=
    if [[ ! -e $policy ]]; then
        # Exit status 101: invoke-rc.d must not start the package's service; we start our cluster.
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        placed=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql
    if [[ -n $placed ]]; then rm -f "$policy"; fi
}

trust_localhost() {
    local hba=$1 marker="# karabo-async: trust on localhost"
    if ! grep -qF "$marker" "$hba"; then
        # pg_hba.conf is read top-down and the first match wins, so these lines go first.
        {
            echo "$marker"
            echo "local all all trust"
            echo "host all all 127.0.0.1/32 trust"
            echo "host all all ::1/128 trust"
            cat "$hba"
        } >"$hba.new"
        chown --reference="$hba" "$hba.new"
        chmod --reference="$hba" "$hba.new"
        mv "$hba.new" "$hba"
    fi
}

if answers; then
    create_databases
    say "PostgreSQL answers on $HOST:$PORT"
    exit 0
fi

command -v pg_ctlcluster >/dev/null || install_postgresql
VERSION=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
if ! pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1 == v && $2 == c {found = 1} END {exit !found}'; then
    say "creating cluster $VERSION/$CLUSTER on port $PORT"
    pg_createcluster "$VERSION" "$CLUSTER" --port "$PORT" >/dev/null
fi
trust_localhost "/etc/postgresql/$VERSION/$CLUSTER/pg_hba.conf"
say "starting cluster $VERSION/$CLUSTER"
pg_ctlcluster --skip-systemctl-redirect "$VERSION" "$CLUSTER" start || say "pg_ctlcluster start failed; waiting in case it runs anyway"

for _ in $(seq 1 60); do
    if answers; then
        create_databases
        say "PostgreSQL answers on $HOST:$PORT"
        exit 0
    fi
    sleep 0.5
done
say "PostgreSQL did not answer on $HOST:$PORT within 30 s" >&2
pg_lsclusters >&2 || true
exit 1
