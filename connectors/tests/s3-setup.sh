#!/usr/bin/env bash
# Installs (if missing) and starts a local S3-compatible server for the S3 connector tests:
# moto's server (PyPI `moto[server]`), a real S3 HTTP endpoint in a process of its own, on
# loopback. Prints the endpoint URL on stdout as its only output line. Idempotent: a server
# already answering on the port is reused.
#
#   export SARDONYX_S3_URL="$(bash connectors/tests/s3-setup.sh)"
#   export SARDONYX_S3_AUTH_URL="$(bash connectors/tests/s3-setup.sh auth)"
#
# With `auth`, starts a second server that checks credentials (moto's
# INITIAL_NO_AUTH_ACTION_COUNT=0: every request is authenticated, and no key is known), for
# the test that bad credentials give a clear error. The first server accepts any credentials.
set -euo pipefail

mode="${1:-open}"
case "$mode" in
    open) port="${SARDONYX_S3_PORT:-47311}" ;;
    auth) port="${SARDONYX_S3_AUTH_PORT:-47312}" ;;
    *) echo "s3-setup: unknown mode $mode (open or auth)" >&2; exit 2 ;;
esac
url="http://127.0.0.1:$port"
log() { echo "s3-setup: $*" >&2; }
# Something answers on the port (bash's own TCP connect: no curl needed).
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

if answers; then
    echo "$url"
    exit 0
fi

# moto_server: on PATH, else in a virtualenv of our own (Debian's Python refuses system-wide
# pip installs), created once and kept in the cache folder.
server="$(command -v moto_server || true)"
if [ -z "$server" ]; then
    venv="${XDG_CACHE_HOME:-$HOME/.cache}/sardonyx/moto-venv"
    if [ ! -x "$venv/bin/moto_server" ]; then
        if ! python3 -m venv --help >/dev/null 2>&1; then
            log "installing python3-venv"
            export DEBIAN_FRONTEND=noninteractive
            sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
            $sudo apt-get update -qq >&2
            $sudo apt-get install -y -qq python3-venv >&2
        fi
        log "installing moto[server] into $venv"
        rm -rf "$venv"
        python3 -m venv "$venv" >&2
        "$venv/bin/pip" install -q 'moto[server]>=5,<6' >&2
    fi
    server="$venv/bin/moto_server"
fi

logfile="${TMPDIR:-/tmp}/sardonyx-s3-$mode.log"
log "starting $server on $url ($mode)"
if [ "$mode" = auth ]; then
    INITIAL_NO_AUTH_ACTION_COUNT=0 setsid nohup "$server" -H 127.0.0.1 -p "$port" >"$logfile" 2>&1 < /dev/null &
else
    setsid nohup "$server" -H 127.0.0.1 -p "$port" >"$logfile" 2>&1 < /dev/null &
fi

# Wait (bounded) until it answers.
for _ in $(seq 1 100); do
    if answers; then
        echo "$url"
        exit 0
    fi
    sleep 0.1
done
log "the server did not answer on $url; its log ($logfile):"
tail -n 20 "$logfile" >&2
exit 1
