#!/usr/bin/env bash
# Installs the real peers the integration tests talk to. Idempotent: each step
# checks first, so a warm machine pays only for the checks.
set -euo pipefail

need_apt=()
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
{ command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || need_apt+=(postgresql)
[ -f /usr/share/java/postgresql.jar ] || need_apt+=(libpostgresql-jdbc-java)
command -v javac >/dev/null 2>&1 || need_apt+=(default-jdk-headless)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if ! "$PY" -c 'import psycopg' >/dev/null 2>&1; then
  echo "setup: installing Python drivers"
  "$PY" -m pip install -q 'psycopg[binary]>=3.1'
fi
if ! command -v moto_server >/dev/null 2>&1; then
  echo "setup: installing moto (AWS API stand-in)"
  "$PY" -m pip install -q 'moto[server]>=5.0'
fi
