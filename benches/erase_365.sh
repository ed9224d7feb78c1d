#!/usr/bin/env bash
# Erasure over a year of backups: one tenant with 365 committed snapshot runs (the demo's
# kopi-senja: 60 days of history, ~1,100 rows over 15 tables per run, ≈ 70 KiB encrypted per
# run, ≈ 25 MiB in all), then one customer erased with --immediate, so the backups phase rewrites
# every run in the same `lethe run erasure`. Reports the wall time, and the files opened (the
# subject index names them) next to the files that held the person (the files rewritten).
#
# usage: benches/erase_365.sh         (from the repository root; RUNS_PER_YEAR=365, LETHE_BIN=…)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${RUNS_PER_YEAR:-365}
if [ -z "${LETHE_BIN:-}" ]; then cargo build --release --quiet; fi
lethe=${LETHE_BIN:-${CARGO_TARGET_DIR:-target}/release/lethe}
W=$(mkdir -p ../bench-data && cd ../bench-data && pwd)/erase365
if [ ! -d "$W.orig" ]; then
  rm -rf "$W"
  "$lethe" -q demo --dir "$W" --tenants 2 --days 60 --no-retention > /dev/null 2>&1
  for _ in $(seq 2 "$N"); do "$lethe" -q --config "$W/lethe.toml" run snapshot --tenant kopi-senja > /dev/null 2>&1; done
  cp -r "$W" "$W.orig"
fi
rm -rf "$W" && cp -r "$W.orig" "$W"
runs=$("$lethe" --config "$W/lethe.toml" snapshot ls --tenant kopi-senja --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
echo "tenant kopi-senja: $runs committed runs, store $(du -sh "$W/store" | cut -f1)"
phone=$(python3 -c "import sqlite3; print(sqlite3.connect('$W/source.db').execute(\"SELECT phone FROM customers WHERE tenant_id='kopi-senja' ORDER BY id LIMIT 1 OFFSET 3\").fetchone()[0])")
"$lethe" -q --config "$W/lethe.toml" erase subject --tenant kopi-senja --kind phone --id "$phone" --immediate > /dev/null
start=$(date +%s.%N)
/usr/bin/time -f "peak RSS %M KiB" "$lethe" -q --config "$W/lethe.toml" run erasure > "$W/erasure.out" 2> "$W/erasure.time"
end=$(date +%s.%N)
python3 - "$W/erasure.out" "$start" "$end" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
runs = re.findall(r"rewritten without the person: (\d+) file\(s\) replaced, (\d+) rows dropped, \d+ old object\(s\) purged \((\d+) file\(s\) searched\)", text)
replaced = sum(int(r[0]) for r in runs); dropped = sum(int(r[1]) for r in runs); opened = sum(int(r[2]) for r in runs)
print(f"runs rewritten: {len(runs)}; files that held the person (rewritten): {replaced}; files opened: {opened}; rows dropped: {dropped}")
print(f"wall time of `lethe run erasure` (primary phase + {len(runs)} runs rewritten): {float(sys.argv[3]) - float(sys.argv[2]):.2f} s")
PY
tail -1 "$W/erasure.time"
"$lethe" -q --config "$W/lethe.toml" snapshot verify | tail -1
