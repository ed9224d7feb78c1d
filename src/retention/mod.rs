//! The retention engine: policy → inventory → plan (with its hash) → batched execution, blob
//! cleanup through an outbox, backup purge, all recorded in the audit log.
//!
//! - [`plan`]: the pure planner and the plan's types;
//! - [`db`]: inventory queries and batched DELETE/UPDATE for PostgreSQL and SQLite;
//! - [`execute`]: runs a plan: audit "start" before each destructive step, "end" after it with
//!   what went and how it was verified.
//!
//! Crash safety, the invariant: at every instant, each blob in the blob store is either
//! referenced by a row or listed in the outbox (`lethe_blob_outbox`, in the primary database).
//! A batch deletes its rows and enqueues their blobs in one transaction; blobs are deleted from
//! the store afterwards, verified gone (HEAD → not found), and only then leave the outbox. A
//! crash at any point leaves work that the next run finishes first: no orphaned blob, no row
//! pointing at a deleted blob.

pub mod db;
pub mod execute;
pub mod plan;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::check::Checked;
use crate::retention::db::Db;
use crate::retention::plan::{Inventory, RunInfo, Selection, TenantInfo, UnitKey, selections};
use crate::snapshot::read;
use crate::source::Source;
use crate::store::Store;

/// Why a retention run refused to delete anything. Safety refusals are named, never strings.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the plan differs from the one confirmed ({confirmed}): now {current}. Nothing was deleted. Review it with `lethe plan --now {now}` and confirm the new hash"
    )]
    PlanChanged {
        confirmed: String,
        current: String,
        now: String,
    },
    #[error(
        "safety brake: this run would change more than the configured limits allow without confirmation — {what}. Nothing was deleted. Review with `lethe plan --now {now}`, then confirm exactly that plan: {confirm}"
    )]
    Brake {
        what: String,
        now: String,
        confirm: String,
    },
    #[error(transparent)]
    Stale(#[from] plan::PlanError),
}

/// Test hook: with `LETHE_CRASH_AT=n` (debug builds only), the process aborts at the n-th
/// crash point — the places between two destructive steps — as a `kill -9` would. The
/// kill-and-rerun test walks n = 1, 2, … until a run completes.
pub fn crash_point(_what: &str) {
    #[cfg(debug_assertions)]
    {
        use std::sync::atomic::{AtomicU64, Ordering};
        static SEEN: AtomicU64 = AtomicU64::new(0);
        if let Some(n) = std::env::var("LETHE_CRASH_AT")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            let k = SEEN.fetch_add(1, Ordering::SeqCst) + 1;
            if k == n {
                eprintln!("LETHE_CRASH_AT={n}: aborting at {_what}");
                std::process::abort();
            }
        }
    }
}

/// The run time of a snapshot run: the manifest's `created_at`, else the run id's timestamp.
fn run_time(run_id: &str, created: Option<&str>) -> Option<DateTime<Utc>> {
    created
        .and_then(|c| {
            DateTime::parse_from_rfc3339(c)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        })
        .or_else(|| {
            let stamp = run_id.split('-').next()?;
            chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ")
                .ok()
                .map(|t| t.and_utc())
        })
}

/// Read everything the planner needs: tenants, holds, counts for every due selection, pending
/// blobs, snapshot runs and pins. Reads only.
pub async fn inventory(
    c: &Checked,
    db: &mut Db,
    store: &Store,
    keyed_tenants: Vec<String>,
    now: DateTime<Utc>,
) -> crate::Result<Inventory> {
    let dm = &c.data_map;
    let policy = &c.policy;
    let tenants: Vec<TenantInfo> = {
        let src = Source::open(&c.config.source)?;
        src.tenants(dm)?
            .into_iter()
            .map(|t| TenantInfo {
                id: t.id,
                status: t.status,
                cancelled_at: t.cancelled_at,
            })
            .collect()
    };
    let mut source_holds = match &policy.legal_holds_source {
        Some(s) => db::source_holds(db, &s.table)?,
        None => vec![],
    };
    for h in &mut source_holds {
        // An empty cell means "any", as a missing key does in the policy file.
        for f in [&mut h.table, &mut h.category, &mut h.subject] {
            if f.as_deref().is_some_and(|v| v.trim().is_empty()) {
                *f = None;
            }
        }
    }
    refuse_what_matches_nothing(c, &tenants, &source_holds)?;
    refuse_cascades(db, dm)?;
    for t in &dm.tables {
        for cname in &t.config.categories {
            let Some(cat) = policy.categories.get(cname) else {
                continue;
            };
            if let Some(a) = cat.anchor.as_deref().or(t.config.time_column.as_deref()) {
                let bad = db::non_canonical_anchors(db, t, a)?;
                if bad > 0 {
                    return Err(crate::Error::Usage(format!(
                        "table {} has {bad} rows whose {a} is not UTC text 'YYYY-MM-DD HH:MM:SS[.ffffff]' (numbers, offsets or other formats would compare wrongly with the cutoff); nothing is deleted until they are rewritten in that form",
                        t.name
                    )));
                }
            }
        }
    }
    let holds: Vec<_> = policy
        .legal_holds
        .iter()
        .chain(source_holds.iter())
        .collect();
    let wanted = selections(dm, policy, &tenants, &holds, now);

    // One pass per table, answering every selection on it for all tenants sharing it.
    let mut by_table: BTreeMap<&str, BTreeMap<&Selection, Vec<&UnitKey>>> = BTreeMap::new();
    for (k, s) in &wanted {
        by_table
            .entry(s.table.as_str())
            .or_default()
            .entry(s)
            .or_default()
            .push(k);
    }
    let mut units = Vec::new();
    let mut table_rows = BTreeMap::new();
    for table in &dm.tables {
        let sels = by_table.remove(table.name.as_str()).unwrap_or_default();
        let groups: Vec<(&Selection, Vec<String>)> = sels
            .iter()
            .map(|(s, keys)| (*s, keys.iter().map(|k| k.tenant.clone()).collect()))
            .collect();
        let (totals, mut answers) = db::table_stats(db, table, &groups)?;
        for ((sel, keys), stats) in sels.iter().zip(answers.iter_mut()) {
            for k in keys {
                units.push((
                    (*k).clone(),
                    (*sel).clone(),
                    stats.remove(&k.tenant).unwrap_or_default(),
                ));
            }
        }
        table_rows.insert(table.name.clone(), totals);
    }
    units.sort_by(|a, b| a.0.cmp(&b.0));
    let pending_blobs = db::pending_blobs(db)?;

    let mut runs = Vec::new();
    let mut undated_runs = Vec::new();
    for tenant in read::tenants(store).await? {
        for r in read::runs(store, &tenant).await? {
            let committed = matches!(r.manifest, Some(Ok(_)));
            let created = r
                .manifest
                .as_ref()
                .and_then(|m| m.as_ref().ok())
                .map(|m| m.created_at.clone());
            let Some(created_at) = run_time(&r.run_id, created.as_deref()) else {
                tracing::warn!(tenant = %tenant, run = %r.run_id, "run id without a time; the run (and the tenant's key) is kept");
                undated_runs.push(tenant.clone());
                continue;
            };
            runs.push(RunInfo {
                tenant: tenant.clone(),
                run_id: r.run_id,
                created_at,
                committed,
            });
        }
    }
    let pins = crate::snapshot::purge::pins(store, None)
        .await?
        .into_iter()
        .map(|p| plan::PinInfo {
            tenant: p.tenant,
            run_id: p.run_id,
            reason: p.reason,
        })
        .collect();
    Ok(Inventory {
        tenants,
        source_holds,
        table_rows,
        units,
        pending_blobs,
        runs,
        pins,
        keyed_tenants,
        undated_runs,
    })
}

/// A legal hold or an override that matches nothing protects nothing: a typo would let data go.
/// Refuse to plan until it names a tenant of the tenants table, and a table and category of the
/// data map and policy.
fn refuse_what_matches_nothing(
    c: &Checked,
    tenants: &[TenantInfo],
    source_holds: &[crate::policy::LegalHold],
) -> crate::Result<()> {
    let known = |t: &str| tenants.iter().any(|x| x.id == t);
    let mut problems = Vec::new();
    for (i, h) in c.policy.legal_holds.iter().enumerate() {
        let at = format!("{} legal_holds[{i}]", c.policy.path.display());
        check_hold(c, h, &at, &known, &mut problems);
    }
    if let Some(src) = &c.policy.legal_holds_source {
        for (i, h) in source_holds.iter().enumerate() {
            let at = format!("table {} row {}", src.table, i + 1);
            check_hold(c, h, &at, &known, &mut problems);
        }
    }
    for t in c.policy.overrides.keys() {
        if !known(t) {
            problems.push(format!(
                "{} [tenants.{t}]: no tenant {t:?} in the tenants table (fix the id or remove the override)",
                c.policy.path.display()
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(crate::Error::Usage(format!(
            "nothing is deleted until these name real things:\n  {}",
            problems.join("\n  ")
        )))
    }
}

fn check_hold(
    c: &Checked,
    h: &crate::policy::LegalHold,
    at: &str,
    known: &dyn Fn(&str) -> bool,
    problems: &mut Vec<String>,
) {
    if !known(&h.tenant) {
        problems.push(format!(
            "{at}: legal hold names tenant {:?}, which the tenants table does not list",
            h.tenant
        ));
    }
    if let Some(t) = &h.table
        && c.data_map.table(t).is_none()
    {
        problems.push(format!(
            "{at}: legal hold names table {t:?}, which the data map does not have"
        ));
    }
    if let Some(cat) = &h.category
        && !c.policy.categories.contains_key(cat)
    {
        problems.push(format!(
            "{at}: legal hold names category {cat:?}, which the policy does not define"
        ));
    }
}

/// PostgreSQL: a foreign key with ON DELETE CASCADE / SET NULL / SET DEFAULT into a table of
/// the data map would change rows lethe did not select — past holds and the blob outbox.
fn refuse_cascades(db: &mut Db, dm: &crate::datamap::DataMap) -> crate::Result<()> {
    if db.dialect() != db::Dialect::Postgres {
        // SQLite enforces foreign keys only on connections that enable them; lethe's do not.
        return Ok(());
    }
    let names: Vec<String> = dm.tables.iter().map(|t| db::lit(&t.name)).collect();
    let sql = format!(
        "SELECT CAST(c.conrelid::regclass AS TEXT), CAST(c.confrelid::regclass AS TEXT), c.conname \
         FROM pg_constraint c JOIN pg_class r ON r.oid = c.confrelid \
         WHERE c.contype = 'f' AND c.confdeltype IN ('c', 'n', 'd') AND r.relname IN ({}) \
         AND r.relnamespace = ANY (SELECT oid FROM pg_namespace WHERE nspname = ANY (current_schemas(false)))",
        names.join(", ")
    );
    let rows = db.query(&sql).map_err(|e| e.on("pg_constraint"))?;
    if rows.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{} → {} ({})",
                r[0].as_deref().unwrap_or("?"),
                r[1].as_deref().unwrap_or("?"),
                r[2].as_deref().unwrap_or("?")
            )
        })
        .collect();
    Err(crate::Error::Usage(format!(
        "foreign keys that cascade deletes into mapped tables would delete rows past legal holds and the blob outbox: {}; make them ON DELETE RESTRICT/NO ACTION (and map the child tables with their own retention)",
        list.join(", ")
    )))
}
