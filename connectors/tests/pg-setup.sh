#!/usr/bin/env bash
# Installs (if missing) and starts a local PostgreSQL for the connector tests, creates the role
# and database `sardonyx` (password `sardonyx`, password login over 127.0.0.1), and prints the
# connection URL on stdout as its only output line. Run as root (as CI is). Idempotent.
#
#   export SARDONYX_PG_URL="$(bash connectors/tests/pg-setup.sh)"
#
# With a cluster name (`pg-setup.sh sardonyx_retry`), sets up and starts that cluster instead of
# `main`, created on a free port if missing: a server a test may stop and start without
# disturbing anything else (tests/tests/exactly_once_postgres.rs).
set -euo pipefail

cluster="${1:-main}"

log() { echo "pg-setup: $*" >&2; }

if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    log "installing postgresql"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
fi

version="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)"
if [ -n "$version" ] && [ "$cluster" != main ] && [ ! -d "/etc/postgresql/$version/$cluster" ]; then
    log "creating cluster $version/$cluster"
    pg_createcluster "$version" "$cluster" >&2
fi
if [ -z "$version" ]; then
    # The server is installed but has no cluster (e.g. it was dropped): make one.
    version="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
    log "creating cluster $version/$cluster"
    pg_createcluster "$version" "$cluster" >&2
fi
if ! pg_lsclusters -h | awk -v v="$version" -v c="$cluster" '$1 == v && $2 == c && $4 == "online" { found = 1 } END { exit !found }'; then
    log "starting cluster $version/$cluster"
    pg_ctlcluster "$version" "$cluster" start >&2
fi

port="$(pg_lsclusters -h | awk -v v="$version" -v c="$cluster" '$1 == v && $2 == c { print $3 }')"

# Wait (bounded) until the server accepts connections.
for _ in $(seq 1 50); do
    if su postgres -c "psql -p $port -qAtc 'select 1'" >/dev/null 2>&1; then break; fi
    sleep 0.2
done

su postgres -c "psql -p $port -v ON_ERROR_STOP=1 -qAt" >&2 <<SQL
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sardonyx') THEN
    CREATE ROLE sardonyx LOGIN PASSWORD 'sardonyx';
  END IF;
END
\$\$;
SQL
if ! su postgres -c "psql -p $port -qAtc \"select 1 from pg_database where datname = 'sardonyx'\"" | grep -q 1; then
    su postgres -c "createdb -p $port -O sardonyx sardonyx" >&2
fi

echo "postgres://sardonyx:sardonyx@127.0.0.1:$port/sardonyx"
