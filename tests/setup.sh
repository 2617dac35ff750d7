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
# OpenLDAP for the [auth.ldap] tests: slapd in /usr/sbin (not on every PATH), and
# the ldapsearch/ldapadd clients for poking at it by hand.
[ -x /usr/sbin/slapd ] || need_apt+=(slapd)
command -v ldapsearch >/dev/null 2>&1 || need_apt+=(ldap-utils)
# Headless Chromium loads the admin dashboard (tests/it/operations.rs).
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)

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
# Client libraries of tests/it/clients.rs and redshift_drivers.rs, pinned: the tests
# assert exact reflection and type answers, which move between releases.
if ! "$PY" -c 'import asyncpg; assert asyncpg.__version__ == "0.32.0"' >/dev/null 2>&1; then
  echo "setup: installing asyncpg"
  "$PY" -m pip install -q 'asyncpg==0.32.0'
fi
if ! "$PY" -c 'import sqlalchemy, greenlet; assert sqlalchemy.__version__ == "2.1.9"' >/dev/null 2>&1; then
  echo "setup: installing SQLAlchemy"
  "$PY" -m pip install -q 'sqlalchemy[asyncio]==2.1.9'
fi
if ! "$PY" -c 'import redshift_connector; assert redshift_connector.__version__ == "2.2.0"' >/dev/null 2>&1; then
  echo "setup: installing redshift_connector"
  "$PY" -m pip install -q 'redshift_connector==2.2.0'
fi

# DuckDB, the lake's yardstick (tests/it/lake_answers.rs, benches/lake), with its S3
# reader from PyPI so nothing is downloaded at run time; the two versions must match.
if ! "$PY" -c 'import duckdb, duckdb_extension_httpfs; assert duckdb.__version__ == "1.5.5"' >/dev/null 2>&1; then
  echo "setup: installing DuckDB"
  "$PY" -m pip install -q 'duckdb==1.5.5' 'duckdb-extension-httpfs==1.5.5'
fi

# The open table formats' own writers (tests/it/open_formats.rs, benches/lake section
# `formats`): delta-rs and pyiceberg (its Glue catalog, s3fs for moto, and its Rust
# core for partition transforms), and DuckDB's delta, iceberg and avro readers.
if ! "$PY" -c 'import deltalake, pyiceberg, s3fs, pyiceberg_core; assert deltalake.__version__ == "1.6.6" and pyiceberg.__version__ == "0.12.0"' >/dev/null 2>&1; then
  echo "setup: installing deltalake and pyiceberg"
  "$PY" -m pip install -q 'deltalake==1.6.6' 'pyiceberg[glue,pyarrow,s3fs,pyiceberg-core]==0.12.0'
fi
if ! "$PY" -c 'import duckdb_extension_delta, duckdb_extension_iceberg, duckdb_extension_avro' >/dev/null 2>&1; then
  echo "setup: installing DuckDB's delta and iceberg readers"
  "$PY" -m pip install -q 'duckdb-extension-delta==1.5.5' 'duckdb-extension-iceberg==1.5.5' 'duckdb-extension-avro==1.5.5'
fi

# node-postgres for tests/it/clients.rs, at the version package-lock.json pins.
CLIENTS="$(cd "$(dirname "$0")" && pwd)/clients"
if [ ! -f "$CLIENTS/node_modules/pg/package.json" ]; then
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "setup: installing Debian packages: nodejs npm"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  fi
  echo "setup: installing node-postgres"
  npm ci --prefix "$CLIENTS" --no-audit --no-fund --loglevel=error
fi
