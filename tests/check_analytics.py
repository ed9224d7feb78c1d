#!/usr/bin/env python3
"""DuckDB reads lethe's whole analytics tree and must find what a plain reference computation
over the source rows gives — cell by cell, for every dataset of jobs/analytics.toml.

usage: check_analytics.py DEMO_DIR

The reference is written from the contract, not from lethe's code: rows of the SQLite source,
days and ISO weeks in each tenant's zone (tenants.time_zone, else UTC), distinct subjects as
their identifier normal form, a cell published only with at least k distinct subjects (else its measures are
null), only periods that ended, in the tenant's zone, before its snapshot began (platform: before
every snapshot of a tenant not cancelled began).
Prints one line per dataset; exits 1 naming the first difference.
"""
import datetime as dt
import glob
import json
import math
import os
import sqlite3
import statistics
import sys
import tomllib
from collections import defaultdict
from zoneinfo import ZoneInfo

import duckdb

demo = sys.argv[1]
sets = tomllib.load(open(f"{demo}/jobs/analytics.toml", "rb"))["datasets"]
dmap = tomllib.load(open(f"{demo}/schemas/app.toml", "rb"))
policy = tomllib.load(open(f"{demo}/jobs/retention.toml", "rb"))
country = policy.get("erasure", {}).get("phone_country", "")
db = sqlite3.connect(f"{demo}/source.db")
# The tenants lethe aggregates: those with a committed snapshot (an offboarded tenant has none
# left); when the newest began; and which tenants a platform period waits for (not cancelled).
def snapshot_start(t):
    runs = sorted(glob.glob(f"{demo}/store/snapshots/tenant={t}/run=*/_manifest.json"))
    if not runs:
        return None
    return dt.datetime.fromisoformat(json.load(open(runs[-1]))["created_at"].replace("Z", "+00:00"))


zones, taken, holders = {}, {}, set()
for t, z, status, cancelled in db.execute("SELECT id, time_zone, status, cancelled_at FROM tenants"):
    start = snapshot_start(t)
    if start is None:
        continue
    zones[t], taken[t] = ZoneInfo(z or "UTC"), start
    if not (status.strip().lower() in ("cancelled", "canceled") and cancelled is not None):
        holders.add(t)
now = dt.datetime.now(dt.timezone.utc)
UNITS = {None: 1, "seconds": 1, "minutes": 60, "hours": 3600, "days": 86400}


def instant(v):
    if v is None:
        return None
    t = dt.datetime.fromisoformat(str(v).replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def period_start(t, zone, period):
    day = t.astimezone(zone).date()
    return day - dt.timedelta(days=day.weekday()) if period == "week" else day


def person(v, kind):
    """A subject's identity: the normal form erasure matches identifiers by (the data map's
    kind: email lower-cased, phone as + and digits with the trunk prefix resolved)."""
    t = str(v).strip(" ")
    if kind == "email":
        return t.lower()
    if kind == "phone":
        digits = "".join(c for c in t if c not in " \u00a0-.()/+")
        if digits.startswith("00"):
            digits = digits[2:]
        elif digits.startswith("0") and not t.startswith("+"):
            digits = country + digits[1:]
        return "+" + digits
    return t


def quantile(xs, q):
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def first_responses(rows, time, subject, f):
    """(row index → seconds) for conversation openers answered later."""
    out = {}
    by_subject = defaultdict(list)
    for i, r in enumerate(rows):
        by_subject[r[subject]].append(i)
    for idx in by_subject.values():
        idx.sort(key=lambda i: instant(rows[i][time]))
        prev = None
        for n, i in enumerate(idx):
            d = rows[i][f["direction"]]
            if d == f["inbound"] and prev != f["inbound"]:
                for j in idx[n + 1:]:
                    if rows[j][f["direction"]] == f["outbound"]:
                        out[i] = (instant(rows[j][time]) - instant(rows[i][time])).total_seconds()
                        break
            prev = d
    return out


def reference(name, d):
    table = d["table"]
    time = dmap["tables"][table]["time_column"]
    subject = d["subjects"][0]
    period = d.get("period", "day")
    span = dt.timedelta(days=7 if period == "week" else 1)
    k = d.get("k", 10)
    platform = d["scope"] == "platform"
    db.row_factory = sqlite3.Row
    cells = defaultdict(lambda: {"rows": [], "fr": []})
    for tenant, zone in zones.items():
        rows = [dict(r) for r in db.execute(
            f'SELECT * FROM "{table}" WHERE tenant_id = ? AND "{time}" IS NOT NULL', (tenant,))]
        frs = {}
        for m in d["measures"]:
            if "first_response" in m:
                frs[m["name"]] = first_responses(rows, time, subject, m["first_response"])
        for i, r in enumerate(rows):
            p = period_start(instant(r[time]), zone, period)
            key = (None if platform else tenant, p) + tuple(r[c] for c in d.get("keys", []))
            cells[key]["rows"].append((r, {n: fr.get(i) for n, fr in frs.items()}))
    # Complete periods only: ended (in the tenant's zone) before its snapshot began; a platform
    # period, before every snapshot of a tenant not cancelled began.
    def complete(tenant, p):
        ts = holders if tenant is None else [tenant]
        return all(p + span <= min(taken[t], now).astimezone(zones[t]).date() for t in ts)
    out = {}
    for key, c in cells.items():
        if not complete(key[0], key[1]):
            continue
        rows = c["rows"]
        idkind = dmap["tables"][table].get("identifiers", {}).get(subject, "")
        people = {person(r[subject], idkind) for r, _ in rows if r[subject] is not None}
        values = []
        for m in d["measures"]:
            if len(people) < k:
                values.append(None)
                continue
            kind, col = m["kind"], m.get("column")
            rows = c["rows"]
            for wc, wv in m.get("where", {}).items():
                rows = [(r, fr) for r, fr in rows if r[wc] == wv]
            if "first_response" in m:
                xs = [fr[m["name"]] for _, fr in rows if fr[m["name"]] is not None]
            elif "since" in m:
                unit = UNITS[m.get("unit")]
                xs = [(instant(r[col]) - instant(r[m["since"]])).total_seconds() / unit
                      for r, _ in rows if r[col] is not None and r[m["since"]] is not None]
            elif col is not None:
                xs = [r[col] for r, _ in rows if r[col] is not None]
            if kind == "count":
                v = len(rows) if col is None else len(xs)
            elif kind == "distinct":
                v = len({person(x, idkind) if col == subject else x for x in xs})
            elif kind == "sum":
                v = sum(xs)  # Polars: the sum of nothing is 0
            elif kind == "mean":
                v = statistics.fmean(xs) if xs else None
            elif kind == "median":
                v = statistics.median(xs) if xs else None
            elif kind == "p90":
                v = quantile(xs, 0.9) if xs else None
            values.append(v)
        out[key] = tuple(values)
    return out


def published(name, d):
    platform = d["scope"] == "platform"
    cols = [m["name"] for m in d["measures"]]
    keys = d.get("keys", [])
    sel = ", ".join(["NULL" if platform else "tenant", "dt"] + [f'"{c}"' for c in keys + cols])
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT {sel} FROM read_parquet('{demo}/store/analytics/{name}/**/*.parquet', hive_partitioning = true)"
    ).fetchall()
    out = {}
    for r in rows:
        key = (r[0], r[1]) + tuple(r[2:2 + len(keys)])
        assert key not in out, f"{name}: cell {key} published twice"
        out[key] = tuple(r[2 + len(keys):])
    return out


def same(a, b):
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)


failed = False
for name, d in sets.items():
    want, got = reference(name, d), published(name, d)
    missing = sorted(set(want) - set(got), key=str)
    extra = sorted(set(got) - set(want), key=str)
    diff = [k for k in want.keys() & got.keys() if not all(map(same, want[k], got[k]))]
    nulls = sum(1 for v in got.values() if all(x is None for x in v))
    print(f"{name}: {len(got)} cells ({nulls} suppressed), reference {len(want)}, "
          f"missing {len(missing)}, extra {len(extra)}, different {len(diff)}")
    for what, ks in (("missing", missing), ("extra", extra), ("different", diff)):
        for k in ks[:3]:
            failed = True
            print(f"  {what}: {k}: published {got.get(k)}, reference {want.get(k)}")
    if not got:
        failed = True
        print(f"  nothing published for {name}")
sys.exit(1 if failed else 0)
