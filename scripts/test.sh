#!/usr/bin/env bash
# The whole test suite: sets up what the tests need, then runs every test of the
# workspace. This is the README's test command and exactly what CI runs (.ci/run).
#
# Needs: cargo. Installs and starts what is missing: PostgreSQL (tests use
# 127.0.0.1:5432, database sekisho_test; override with SEKISHO_TEST_PG_URL).
# Installs OpenLDAP (slapd, ldap-utils): the LDAP tests start their own slapd per test.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

ensure_postgres() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    log "installing PostgreSQL (apt-get)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >/dev/null
  fi
  if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    log "starting PostgreSQL"
    local version
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$version" ]; then
      echo "PostgreSQL is installed but has no cluster under /etc/postgresql" >&2
      exit 1
    fi
    if ! pg_lsclusters -h 2>/dev/null | grep -q .; then
      as_root pg_createcluster "$version" main --start
    fi
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 30); do
      pg_isready -h 127.0.0.1 -p 5432 -q && break
      sleep 1
    done
    pg_isready -h 127.0.0.1 -p 5432 -q || { echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2; exit 1; }
  fi
  if ! psql -h 127.0.0.1 -U postgres -qtA -c 'select 1' >/dev/null 2>&1; then
    # TCP logins need a password on this server: set one through the local socket.
    as_root su postgres -c "psql -qtA -c \"alter user postgres password 'postgres'\"" >/dev/null
    export PGPASSWORD=postgres
  fi
  local exists
  exists=$(psql -h 127.0.0.1 -U postgres -qtA -c "select 1 from pg_database where datname = 'sekisho_test'")
  if [ "$exists" != 1 ]; then
    psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -qtA -c 'create database sekisho_test' >/dev/null
  fi
  export SEKISHO_TEST_PG_URL="${SEKISHO_TEST_PG_URL:-postgres://postgres${PGPASSWORD:+:$PGPASSWORD}@127.0.0.1:5432/sekisho_test}"
}

ensure_slapd() {
  # sekisho-testkit starts a throwaway slapd per test; only the programs are needed.
  if { command -v slapd >/dev/null 2>&1 || [ -x /usr/sbin/slapd ]; } &&
     command -v ldapmodify >/dev/null 2>&1; then
    return
  fi
  log "installing OpenLDAP slapd and ldap-utils (apt-get)"
  # No system directory is wanted: skip the package's initial database (and its questions).
  if command -v debconf-set-selections >/dev/null 2>&1; then
    echo "slapd slapd/no_configuration boolean true" | as_root debconf-set-selections
  fi
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slapd ldap-utils >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slapd ldap-utils >/dev/null
  fi
  # Should the package have started a system slapd anyway, stop it: tests start their own.
  if command -v service >/dev/null 2>&1; then
    as_root service slapd stop >/dev/null 2>&1 || true
  fi
}

ensure_postgres
ensure_slapd

log "running the workspace tests"
# Doc tests first (nextest does not run them), so the runner's summary closes the log.
cargo test --workspace --doc --quiet
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
