#!/usr/bin/env bash
# Snapshot benchmark on the embedded default: one 5,000,000-row `messages` table in SQLite
# (≈1 GB as text; the shape of ../shared/peers/01_create_messages.sql, 200 skewed tenants)
# → encrypted Parquet in a local store. In the same run it times the bare SQLite scan the
# snapshot is compared with. Every measurement: 1 warm-up + RUNS counted runs under GNU time
# (../shared/peers/timeit.py); quote the medians.
#
# usage: benches/snapshot_sqlite.sh            (from the repository root)
#   NROWS=5000000   rows to generate (the database is kept in $BENCH_DIR and reused)
#   RUNS=3          counted runs per measurement
#   BENCH_DIR=../bench-data   where the database and the snapshot store go
#   PEERS=../shared/peers     the peer scripts (for timeit.py)
set -euo pipefail
cd "$(dirname "$0")/.."
NROWS=${NROWS:-5000000}
RUNS=${RUNS:-3}
BENCH_DIR=$(mkdir -p "${BENCH_DIR:-../bench-data}" && cd "${BENCH_DIR:-../bench-data}" && pwd)
PEERS=${PEERS:-../shared/peers}
DB=$BENCH_DIR/messages-$NROWS.sqlite
WORK=$BENCH_DIR/lethe-bench

if [ ! -s "$DB" ]; then
  echo "generating $NROWS rows into $DB (once; a few minutes)"
  python3 benches/gen_messages_sqlite.py "$DB.tmp" "$NROWS" && mv "$DB.tmp" "$DB"
fi
# The same rows owned by one tenant: the snapshot without the fan-out to 200 tenants.
DB1=$BENCH_DIR/messages-$NROWS-one-tenant.sqlite
if [ ! -s "$DB1" ]; then
  cp "$DB" "$DB1.tmp"
  python3 -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"UPDATE messages SET tenant_id='t001'\"); c.execute(\"DELETE FROM tenants WHERE id<>'t001'\"); c.commit(); c.execute('VACUUM')" "$DB1.tmp"
  mv "$DB1.tmp" "$DB1"
fi

cargo build --release --quiet
scan_bin=$(cargo bench --no-run --bench sqlite_scan 2>&1 | sed -n 's/.*Executable .*(\(.*sqlite_scan-[0-9a-f]*\)).*/\1/p' | tail -1)
lethe_bin=${CARGO_TARGET_DIR:-target}/release/lethe

# A one-table lethe configuration over the benchmark database.
rm -rf "$WORK" && mkdir -p "$WORK/schemas" "$WORK/jobs"
cat > "$WORK/lethe.toml" <<TOML
[source]
url = "sqlite://$DB"
[store]
url = "store"
TOML
sed "s#$DB#$DB1#" "$WORK/lethe.toml" > "$WORK/one-tenant.toml"
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

bytes=$(python3 -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print(c.execute('select sum(length(customer_phone)+length(customer_name)+length(channel)+length(direction)+length(body)+length(status)+length(created_at)+length(tenant_id)+8) from messages').fetchone()[0])" "$DB")
echo "table: $NROWS rows, $((bytes / 1000000)) MB of values as text; machine busy: $(bash "$PEERS/busy.sh" 3 2>/dev/null | tail -1)"

T() { python3 "$PEERS/timeit.py" -n "$RUNS" --warmup 1 "$@"; }
echo; echo "== bare SQLite scan, full table (SELECT *, every column touched)"
T -- "$scan_bin" "$DB" full
echo; echo "== bare SQLite scan, one indexed query per tenant (what lethe avoids by fanning out one pass)"
T -- "$scan_bin" "$DB" per-tenant
echo; echo "== lethe run snapshot, the same rows owned by one tenant (encrypted zstd Parquet, local store)"
rm -rf "$WORK/store"   # each counted run adds one run per tenant to the store
T -- "$lethe_bin" -q --config "$WORK/one-tenant.toml" run snapshot
du -sb "$WORK/store" | awk -v r=$((RUNS + 1)) '{printf "store: %.0f MB per run\n", $1/1e6/r}'
"$lethe_bin" -q --config "$WORK/one-tenant.toml" snapshot verify | tail -1
echo; echo "== lethe run snapshot, 200 tenants (one pass fanned out to 200 encrypted runs)"
rm -rf "$WORK/store"
T -- "$lethe_bin" -q --config "$WORK/lethe.toml" run snapshot
du -sb "$WORK/store" | awk -v r=$((RUNS + 1)) '{printf "store: %.0f MB per run\n", $1/1e6/r}'
"$lethe_bin" -q --config "$WORK/lethe.toml" snapshot verify | tail -1
echo; echo "rows/s and MB/s = $NROWS rows and $((bytes / 1000000)) MB over the medians above."
