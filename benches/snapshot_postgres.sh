#!/usr/bin/env bash
# Snapshot benchmark out of PostgreSQL: the peers' 5,000,000-row `messages` table (shape:
# id, tenant_id, customer_phone, customer_name, channel, direction, body 40–200 chars,
# status, created_at; 200 skewed tenants) → encrypted zstd Parquet, to a local store and to
# an S3 test server (moto), timed in the same run as the bare binary COPY and the peers
# (DuckDB + postgres_scanner, ConnectorX + pyarrow with modular encryption).
#
# usage: benches/snapshot_postgres.sh [peer ...]     (from the repository root)
#   peers default: duckdb cx_gcm (see ../shared/peers/03_pg_to_parquet.sh); "none" skips them
#   First run ../shared/peers/setup.sh venvs db from a work directory (PEERS_DIR, see env.sh)
#   to load the table into the `bench` database.
#   LETHE_BIN=path/to/lethe (default: cargo build --release)
#   RUNS=3  PEERS=../shared/peers  PEERS_DIR=../peers-run/.peers  MOTO=moto_server (5.1.22)
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS=$(cd "${PEERS:-../shared/peers}" && pwd)
export PEERS_DIR=${PEERS_DIR:-$(cd .. && pwd)/peers-run/.peers}
RUNS=${RUNS:-3}
# shellcheck source=/dev/null
. "$PEERS/env.sh"
WORK=$(mkdir -p ../bench-data/lethe-pg && cd ../bench-data/lethe-pg && pwd)
MOTO=${MOTO:-$HOME/.cache/lethe/venv/bin/moto_server}
peers=("$@"); [ ${#peers[@]} -eq 0 ] && peers=(duckdb cx_gcm)

rows=$(psql -Atc "SELECT count(*) FROM messages")
# lethe needs the list of tenants; the peers' table has only tenant ids.
psql -qc "CREATE TABLE IF NOT EXISTS tenants AS SELECT DISTINCT tenant_id::text AS id, 'active'::text AS status, NULL::timestamptz AS cancelled_at FROM messages"

if [ -n "${LETHE_BIN:-}" ]; then
  lethe=$LETHE_BIN   # a prebuilt binary (before/after comparisons in one sitting)
else
  cargo build --release --quiet
  lethe=${CARGO_TARGET_DIR:-target}/release/lethe
fi

mkdir -p "$WORK/schemas" "$WORK/jobs"
cat > "$WORK/schemas/messages.toml" <<'TOML'
[tenants]
table = "tenants"
id_column = "id"
status_column = "status"
cancelled_at_column = "cancelled_at"
[tables.messages]
tenant_column = "tenant_id"
primary_key = "id"
categories = ["messages"]
time_column = "created_at"
subject_columns = ["customer_phone"]
personal_columns = ["customer_phone", "customer_name", "body"]
TOML
cat > "$WORK/jobs/retention.toml" <<'TOML'
version = "bench"
[categories.messages]
retain = "90d"
[backups]
retain = "30d"
after_termination = "90d"
[termination]
primary_data_after = "30d"
TOML
url="postgres://$PGUSER@$PGHOST:$PGPORT/$PGDATABASE"   # password from PGPASSWORD
printf '[source]\nurl = "%s"\n[store]\nurl = "store"\n' "$url" > "$WORK/local.toml"

[ -x "$MOTO" ] || { echo "no moto_server at $MOTO: run scripts/test once (it installs moto 5.1.22 there) or set MOTO" >&2; exit 2; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$MOTO" -H 127.0.0.1 -p "$port" > "$WORK/moto.log" 2>&1 &
moto_pid=$!
trap 'kill $moto_pid 2>/dev/null' EXIT
for _ in $(seq 100); do curl -sf -X PUT "http://127.0.0.1:$port/bench" > /dev/null && break; sleep 0.2; done
printf '[source]\nurl = "%s"\n[store]\nurl = "s3://bench/lethe"\nendpoint = "http://127.0.0.1:%s"\nregion = "us-east-1"\nallow_http = true\npath_style = true\n' "$url" "$port" > "$WORK/s3.toml"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test

echo "table: $rows rows; machine busy: $(bash "$PEERS/busy.sh" 3 | tail -1)"
T() { python3 "$PEERS/timeit.py" -n "$RUNS" --warmup 1 "$@"; }
echo; echo "== binary COPY to /dev/null (the floor)"
T -- sh -c 'psql -c "COPY messages TO STDOUT (FORMAT binary)" > /dev/null'
echo; echo "== lethe run snapshot → local store (200 tenants, encrypted zstd Parquet)"
rm -rf "$WORK/store"
T -- "$lethe" -q --config "$WORK/local.toml" run snapshot
"$lethe" -q --config "$WORK/local.toml" snapshot verify | tail -1
echo; echo "== lethe run snapshot → S3 test server (moto, loopback)"
T -- "$lethe" -q --config "$WORK/s3.toml" run snapshot
"$lethe" -q --config "$WORK/s3.toml" snapshot verify | tail -1
if [ "${peers[0]}" != none ]; then
  echo; echo "== peers, same run: ${peers[*]}"
  (cd "$(dirname "$PEERS_DIR")" && "$PEERS/03_pg_to_parquet.sh" "${peers[@]}")
fi
