#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs the real peers the tests talk to
# (PostgreSQL client, JDK + pgjdbc, psycopg, openssl), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash tests/setup.sh
# A shared target directory keeps repeated runs warm; a cold one still works.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
# Unit tests, the binary's tests and the integration suite (tests/it), with every
# optional feature (`distributed`: Ballista). Benchmarks are not run here: see
# benches/ and the README.
cargo test --features distributed --lib --bins --tests
