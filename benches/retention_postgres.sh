#!/usr/bin/env bash
# Retention benchmark in PostgreSQL: the peers' 5,000,000-row `messages` table (created_at grows
# with id over 400 days, 200 skewed tenants), copied to `ret_messages` (primary key on id, index
# on tenant_id, no index on created_at); `--now` is chosen so that ~1,000,000 rows are past the
# 90-day retention. While `lethe run retention` deletes them, a concurrent writer (pgbench, one
# client, 200 single-row INSERT transactions per second into the same table) logs the latency of
# every transaction: its maximum is the writer's worst stall.
#
# In the same run, for scale: one `DELETE … WHERE created_at <= cutoff`, and the peers' loop of
# 10,000-id batches (06_delete.sh's method), each on a fresh copy.
#
# usage: benches/retention_postgres.sh          (from the repository root)
#   First run ../shared/peers/setup.sh db from a work directory to load `messages` into `bench`.
#   PROFILE=release (or dev: lethe's own CPU time is small here, PostgreSQL does the work)
#   TARGET_ROWS=1000000  WRITER_RATE=200  LETHE_BIN=path/to/lethe (skips the build)
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS=$(cd "${PEERS:-../shared/peers}" && pwd)
export PEERS_DIR=${PEERS_DIR:-$(cd .. && pwd)/peers-run/.peers}
# shellcheck source=/dev/null
. "$PEERS/env.sh"
PROFILE=${PROFILE:-release}
TARGET_ROWS=${TARGET_ROWS:-1000000}
WRITER_RATE=${WRITER_RATE:-200}
WORK=$(mkdir -p ../bench-data/lethe-ret && cd ../bench-data/lethe-ret && pwd)
PGBENCH=$(ls /usr/lib/postgresql/*/bin/pgbench | tail -1)

if [ -n "${LETHE_BIN:-}" ]; then
  lethe=$LETHE_BIN   # a prebuilt binary (before/after comparisons in one sitting)
elif [ "$PROFILE" = dev ]; then
  cargo build --quiet; lethe=${CARGO_TARGET_DIR:-target}/debug/lethe
else
  cargo build --release --quiet; lethe=${CARGO_TARGET_DIR:-target}/release/lethe
fi

reset_copy() {
  psql -X -q -v ON_ERROR_STOP=1 \
    -c "DROP TABLE IF EXISTS ret_messages" \
    -c "DROP SEQUENCE IF EXISTS ret_messages_ids" \
    -c "CREATE TABLE ret_messages AS SELECT * FROM messages" \
    -c "ALTER TABLE ret_messages ADD PRIMARY KEY (id)" \
    -c "CREATE INDEX ret_messages_tenant ON ret_messages (tenant_id)" \
    -c "CREATE SEQUENCE ret_messages_ids START 100000000" \
    -c "VACUUM (ANALYZE) ret_messages" \
    -c "CHECKPOINT"
}

rows=$(psql -XAtc "SELECT count(*) FROM messages")
cutoff=$(psql -XAtc "SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM messages ORDER BY created_at OFFSET $TARGET_ROWS LIMIT 1")
now=$(python3 -c "import datetime as d; t=d.datetime.fromisoformat('${cutoff%Z}'); print((t+d.timedelta(days=90)).strftime('%Y-%m-%dT%H:%M:%SZ'))")
psql -XqAc "DROP TABLE IF EXISTS ret_tenants" \
  -c "CREATE TABLE ret_tenants AS SELECT DISTINCT tenant_id AS id, 'active'::text AS status, NULL::timestamptz AS cancelled_at, now() AS created_at FROM messages"

mkdir -p "$WORK/schemas" "$WORK/jobs"
cat > "$WORK/schemas/messages.toml" <<'TOML'
[tenants]
table = "ret_tenants"
id_column = "id"
status_column = "status"
cancelled_at_column = "cancelled_at"
[tables.ret_tenants]
tenant_column = "id"
primary_key = "id"
categories = ["tenant_records"]
time_column = "created_at"
[tables.ret_messages]
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
anchor = "created_at"
[categories.tenant_records]
retain = "forever"
[backups]
retain = "30d"
after_termination = "90d"
[termination]
primary_data_after = "30d"
TOML
cp jobs/nightly.toml "$WORK/jobs/"
url="postgres://$PGUSER@$PGHOST:$PGPORT/$PGDATABASE"   # password from PGPASSWORD
printf '[source]\nurl = "%s"\n[store]\nurl = "store"\n' "$url" > "$WORK/lethe.toml"
cat > "$WORK/writer.sql" <<'SQL'
\set t random(1, 200)
INSERT INTO ret_messages VALUES (nextval('ret_messages_ids'), :t, '+6281200000000', 'Writer', 'whatsapp', 'in', 'a message written while retention runs', 'sent', now());
SQL

echo "table: $rows rows; due at --now $now: created_at <= $cutoff (~$TARGET_ROWS rows); machine busy: $(bash "$PEERS/busy.sh" 3 | tail -1)"

echo; echo "== for scale: one DELETE statement (fresh copy)"
reset_copy
t0=$(date +%s.%N)
n=$(psql -XAtc "WITH d AS (DELETE FROM ret_messages WHERE created_at <= '$cutoff' RETURNING 1) SELECT count(*) FROM d")
t1=$(date +%s.%N)
echo "single DELETE: $n rows in $(echo "$t1 - $t0" | bc -l | cut -c1-5) s"

echo; echo "== for scale: 10,000-id batches, COMMIT each (the peers' DO loop; fresh copy)"
reset_copy
sed -e "s/now() - interval '365 days'/'$cutoff'::timestamptz + interval '1 microsecond'/" -e 's/messages_del/ret_messages/g' \
  "$PEERS/delete_batched.sql" > "$WORK/delete_batched.sql"
t0=$(date +%s.%N)
psql -X -v ON_ERROR_STOP=1 -f "$WORK/delete_batched.sql" 2>&1 | grep -o 'batched delete.*' || true
t1=$(date +%s.%N)
echo "10k-id batches: $(echo "$t1 - $t0" | bc -l | cut -c1-5) s"

RUNS=${RUNS:-3}
echo; echo "== lethe run retention with a concurrent writer ($WRITER_RATE inserts/s), $RUNS runs, each on a fresh copy"
run_lethe() {
reset_copy
rm -rf "$WORK/store" "$WORK/keys"
hash=$("$lethe" -q --config "$WORK/lethe.toml" plan --now "$now" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["hash"])')
rm -f "$WORK"/pgbench_log.*
(cd "$WORK" && "$PGBENCH" -n -c 1 -R "$WRITER_RATE" -T 45 -f writer.sql -l --log-prefix=pgbench_log > pgbench.out 2>&1) &
bench_pid=$!
sleep 3
t0=$(date +%s.%N)
/usr/bin/time -f '%e %M' -o "$WORK/time.txt" "$lethe" -v --config "$WORK/lethe.toml" run retention --now "$now" --plan-hash "$hash" \
  > "$WORK/lethe.out" 2> "$WORK/lethe.log"
t1=$(date +%s.%N)
wait $bench_pid || true
deleted=$(python3 - "$WORK/lethe.log" <<'PY'
import json, sys
n = 0
for line in open(sys.argv[1]):
    try: r = json.loads(line)
    except ValueError: continue
    if r.get("message") == "retention done":
        n = r.get("rows", 0)
print(n)
PY
)
read -r wall rss_kb < "$WORK/time.txt"
python3 - "$WORK" "$t0" "$t1" "$deleted" "$wall" "$rss_kb" <<'PY' | tee -a "$WORK/runs.txt"
import glob, json, sys
work, t0, t1, deleted, wall, rss = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
lat = []
for f in glob.glob(work + "/pgbench_log.*"):
    for line in open(f):
        p = line.split()
        end = int(p[4]) + int(p[5]) / 1e6
        if t0 <= end <= t1 + 0.5:
            lat.append(int(p[2]) / 1e6)
phase = {}
for line in open(work + "/lethe.log"):
    try: r = json.loads(line)
    except ValueError: continue
    if r.get("message") == "inventory taken": phase["inventory"] = r["seconds"]
    if r.get("message") == "rows done":
        phase["delete"] = phase.get("delete", 0) + r["seconds_changing"]
        phase["verify"] = phase.get("verify", 0) + r["seconds_verifying"]
print(f"run: {deleted} rows in {wall:.2f} s = {deleted / wall:,.0f} rows/s whole process "
      f"(inventory {phase.get('inventory', 0):.2f} s, deletes {phase.get('delete', 0):.2f} s = {deleted / max(phase.get('delete', 1e-9), 1e-9):,.0f} rows/s, "
      f"verification {phase.get('verify', 0):.2f} s); peak RSS {rss / 1024:.0f} MiB; writer worst {max(lat):.3f} s over {len(lat)} inserts")
PY
}
rm -f "$WORK/runs.txt"
for i in $(seq "$RUNS"); do run_lethe; done
cat "$WORK/lethe.out"
python3 - "$WORK/runs.txt" <<'PY'
import re, statistics, sys
rows = [l for l in open(sys.argv[1]) if l.startswith("run:")]
walls = sorted(float(re.search(r"in ([0-9.]+) s", l).group(1)) for l in rows)
worst = max(float(re.search(r"writer worst ([0-9.]+)", l).group(1)) for l in rows)
n = int(re.search(r"run: (\d+) rows", rows[0]).group(1))
med = statistics.median(walls)
print(f"lethe median: {med:.2f} s = {n / med:,.0f} rows/s whole process (min/max {walls[0]:.2f}/{walls[-1]:.2f} s); writer's worst stall over all runs {worst:.3f} s")
PY
left=$(psql -XAtc "SELECT count(*) FROM ret_messages WHERE created_at <= '$cutoff'")
echo "due rows left: $left"
grep -h '"rows done"' "$WORK/lethe.log" | tail -1
