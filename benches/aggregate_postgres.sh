#!/usr/bin/env bash
# Aggregation benchmark (issue 12): the peers' 5,000,000-row `messages` table, snapshotted by
# lethe into encrypted Parquet (one run per tenant), then `lethe run analytics` computing
# messages per tenant × UTC day × channel (count, distinct customers; k = 2) from the encrypted
# snapshots and writing its Hive partitions — the first run (every day of every tenant: one
# partition each) and a nightly run (the newest day of every tenant) — next to DuckDB and Polars
# aggregating the plaintext Parquet file into one file (../shared/peers/05_aggregate.sh), in the
# same sitting.
#
# usage: benches/aggregate_postgres.sh        (from the repository root)
#   First: ../shared/peers/setup.sh venvs db, and ../shared/peers/03_pg_to_parquet.sh connectorx
#   RUNS=3  PEERS=../shared/peers  PEERS_DIR=../peers-run/.peers  LETHE_BIN=… (default: release build)
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS=$(cd "${PEERS:-../shared/peers}" && pwd)
export PEERS_DIR=${PEERS_DIR:-$(cd .. && pwd)/peers-run/.peers}
RUNS=${RUNS:-3}
# shellcheck source=/dev/null
. "$PEERS/env.sh"
WORK=$(mkdir -p ../bench-data/lethe-aggregate && cd ../bench-data/lethe-aggregate && pwd)
need_messages_parquet

psql -qc "CREATE TABLE IF NOT EXISTS tenants AS SELECT DISTINCT tenant_id::text AS id, 'active'::text AS status, NULL::timestamptz AS cancelled_at FROM messages"
[ -n "${LETHE_BIN:-}" ] || cargo build --release --quiet
lethe=${LETHE_BIN:-${CARGO_TARGET_DIR:-target}/release/lethe}

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
identifiers = { customer_phone = "phone" }
TOML
cat > "$WORK/jobs/retention.toml" <<'TOML'
version = "bench"
[categories.messages]
retain = "3y"
[backups]
retain = "30d"
after_termination = "90d"
[termination]
primary_data_after = "30d"
TOML
cat > "$WORK/jobs/analytics.toml" <<'TOML'
[datasets.messages_daily]
table = "messages"
scope = "tenant"
period = "day"
keys = ["channel"]
subjects = ["customer_phone"]
k = 2
measures = [
  { name = "n_messages", kind = "count" },
  { name = "n_customers", kind = "distinct", column = "customer_phone" },
]
TOML
url="postgres://$PGUSER@$PGHOST:$PGPORT/$PGDATABASE"
printf '[source]\nurl = "%s"\n[store]\nurl = "store"\n' "$url" > "$WORK/lethe.toml"
if [ ! -d "$WORK/store.orig" ]; then
  rm -rf "$WORK/store" "$WORK/keys"
  "$lethe" -q --config "$WORK/lethe.toml" run snapshot
  mv "$WORK/store" "$WORK/store.orig"
fi
echo "store: $(du -sh "$WORK/store.orig" | cut -f1) encrypted; machine busy: $(bash "$PEERS/busy.sh" 3 | tail -1)"

echo; echo "== lethe run analytics, first run (backfill): every complete day of every tenant, one Hive partition each"
for i in $(seq 0 "$RUNS"); do
  rm -rf "$WORK/store" && cp -r "$WORK/store.orig" "$WORK/store" && sync
  [ "$i" = 0 ] && label="warm-up" || label="run $i"
  /usr/bin/time -f "$label: %e s wall, peak RSS %M KiB" "$lethe" -q --config "$WORK/lethe.toml" run analytics 2>&1 | tail -2
done
echo "partitions: $(find "$WORK/store/analytics" -name '*.parquet' | wc -l)"

# The nightly case: everything published but the newest day, which every tenant publishes now
# (its partitions removed, and each tenant's state set back a day, as the night before left it).
# The aggregation still reads every row of every encrypted snapshot; it writes one partition
# per tenant.
newest=$(ls "$WORK/store/analytics/messages_daily/"*/ | grep '^dt=' | sort | tail -1)
day=${newest#dt=}
before=$(date -u -d "$day - 1 day" +%F)
echo; echo "== lethe run analytics, nightly: the newest day ($day) of every tenant"
for i in $(seq 0 "$RUNS"); do
  find "$WORK/store/analytics/messages_daily" -type d -name "$newest" -prune -exec rm -rf {} +
  sed -i "s/\"through\":\"$day\"/\"through\":\"$before\"/" "$WORK/store/analytics/_state/messages_daily/"*.json
  sync
  [ "$i" = 0 ] && label="warm-up" || label="run $i"
  /usr/bin/time -f "$label: %e s wall, peak RSS %M KiB" "$lethe" -q --config "$WORK/lethe.toml" run analytics 2>&1 | tail -2
done

echo; echo "== peers on the plaintext file (05_aggregate.sh)"
RUNS=$RUNS bash "$PEERS/05_aggregate.sh"
