#!/usr/bin/env bash
# Rewrite benchmark (erasure's backups phase): the peers' 5,000,000-row `messages` table,
# snapshotted by lethe into encrypted Parquet (one run per tenant, with its subject index), then
# every run rewritten without the rows of 1,000 customer phones — decrypt, filter, re-encrypt,
# upload, purge the old files — next to Polars and DuckDB doing the same filter on the
# plaintext Parquet file (../shared/peers/04_retention.sh, mode "phones", same phone list).
#
# usage: benches/rewrite_postgres.sh        (from the repository root)
#   First: ../shared/peers/setup.sh venvs db, and ../shared/peers/03_pg_to_parquet.sh connectorx
#   (writes $OUTDIR/messages.parquet, the peers' input).
#   RUNS=3  PEERS=../shared/peers  PEERS_DIR=../peers-run/.peers
#   LETHE_BIN=…, REWRITE_BIN=… (prebuilt lethe and benches/rewrite.rs binaries; default: release build)
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS=$(cd "${PEERS:-../shared/peers}" && pwd)
export PEERS_DIR=${PEERS_DIR:-$(cd .. && pwd)/peers-run/.peers}
RUNS=${RUNS:-3}
# shellcheck source=/dev/null
. "$PEERS/env.sh"
WORK=$(mkdir -p ../bench-data/lethe-rewrite && cd ../bench-data/lethe-rewrite && pwd)
need_messages_parquet
[ -s "$OUTDIR/phones_1000.txt" ] || "$PYTHON" "$PEERS/make_phone_list.py" "$OUTDIR/phones_1000.txt"

psql -qc "CREATE TABLE IF NOT EXISTS tenants AS SELECT DISTINCT tenant_id::text AS id, 'active'::text AS status, NULL::timestamptz AS cancelled_at FROM messages"
[ -n "${REWRITE_BIN:-}" ] || cargo build --release --quiet --bench rewrite
[ -n "${LETHE_BIN:-}" ] || cargo build --release --quiet
lethe=${LETHE_BIN:-${CARGO_TARGET_DIR:-target}/release/lethe}
bench_bin=${REWRITE_BIN:-$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/rewrite-* | grep -v '\.d$' | head -1)}

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
retain = "90d"
[backups]
retain = "30d"
after_termination = "90d"
[termination]
primary_data_after = "30d"
TOML
url="postgres://$PGUSER@$PGHOST:$PGPORT/$PGDATABASE"
printf '[source]\nurl = "%s"\n[store]\nurl = "store"\n' "$url" > "$WORK/lethe.toml"
if [ ! -d "$WORK/store.orig" ]; then
  rm -rf "$WORK/store" "$WORK/keys"
  "$lethe" -q --config "$WORK/lethe.toml" run snapshot
  mv "$WORK/store" "$WORK/store.orig"
fi
echo "store: $(du -sh "$WORK/store.orig" | cut -f1) encrypted; machine busy: $(bash "$PEERS/busy.sh" 3 | tail -1)"

echo; echo "== lethe: rewrite every tenant's run without 1,000 phones (encrypted in, encrypted out)"
for i in $(seq 0 "$RUNS"); do
  rm -rf "$WORK/store" && cp -r "$WORK/store.orig" "$WORK/store"
  [ "$i" = 0 ] && label="warm-up" || label="run $i"
  /usr/bin/time -f "peak RSS %M KiB" "$bench_bin" "$WORK/lethe.toml" "$OUTDIR/phones_1000.txt" 2>&1 | sed "s/^/$label: /"
done
"$lethe" -q --config "$WORK/lethe.toml" snapshot verify | tail -1

echo; echo "== peers: the same filter on the plaintext file (04_retention.sh, mode phones)"
for tool in polars duckdb; do
  echo "--- $tool"
  bench --timeout 1800 -- "$PY" "$PEERS/retention_$tool.py" "$OUTDIR/messages.parquet" "$OUTDIR/ret_${tool}_phones.parquet" phones \
    --phones "$OUTDIR/phones_1000.txt"
done
