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
pub mod measure;
pub mod plan;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::check::Checked;
use crate::problem::Problems;
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
    #[error(
        "rows of tenants the tenants table does not list — {what}. No rule ever makes them due, so nothing is deleted while they exist (policy {policy}: orphans = \"refuse\")\n  fix: add the tenants to the tenants table, delete the rows, or set orphans = \"delete\" (they go as a terminated tenant's would) or \"keep\" in the policy"
    )]
    Orphans { what: String, policy: String },
    /// The store's audit log ends before the checkpoint the keyring directory anchors: the
    /// store URL points elsewhere, or the log was cut back. Appending would start a second chain.
    #[error(
        "the audit log in store {store} ends {head}, but {anchor_file} anchors checkpoint {anchored}: this is not the store these keys have been recording to (or its log was cut back). Nothing was deleted\n  fix: check store.url (and LETHE_STORE_URL); run `lethe audit verify` on the right store"
    )]
    LogBehindAnchor {
        store: String,
        head: String,
        anchor_file: String,
        anchored: u64,
    },
    /// Foreign keys that cascade deletes into mapped tables: a DELETE there would remove rows
    /// past legal holds and the blob outbox.
    #[error("nothing was deleted: foreign keys would cascade deletes past lethe\n{0}")]
    CascadingDeletes(Problems),
    /// Rows the plan cannot be trusted on: anchors that do not compare as instants, primary
    /// keys the database does not enforce, blobs outside their tenant's prefix.
    #[error("nothing was deleted: the data is not in a state lethe can delete from safely\n{0}")]
    UnsafeData(Problems),
    /// Legal holds or overrides that name tenants, tables or categories that do not exist: a
    /// hold that protects nothing must not let its rows go.
    #[error("nothing was deleted until these name real things\n{0}")]
    UnknownNames(Problems),
    #[error(transparent)]
    Stale(#[from] plan::PlanError),
}

impl Refusal {
    /// `Err` of `variant` unless `problems` is empty.
    fn unless_empty(
        problems: Vec<crate::problem::Problem>,
        variant: fn(Problems) -> Refusal,
    ) -> crate::Result<()> {
        if problems.is_empty() {
            Ok(())
        } else {
            Err(variant(Problems(problems)).into())
        }
    }
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
pub(crate) fn run_time(run_id: &str, created: Option<&str>) -> Option<DateTime<Utc>> {
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

/// `tenant`'s snapshot runs, committed or not, with their time; `true` when one has no
/// readable time (such runs are kept, and so is the tenant's key).
pub(crate) async fn run_infos(
    store: &Store,
    tenant: &str,
) -> Result<(Vec<RunInfo>, bool), crate::store::StoreError> {
    let mut runs = Vec::new();
    let mut undated = false;
    for r in read::runs(store, tenant).await? {
        let committed = matches!(r.manifest, Some(Ok(_)));
        let created = r
            .manifest
            .as_ref()
            .and_then(|m| m.as_ref().ok())
            .map(|m| m.created_at.clone());
        let Some(created_at) = run_time(&r.run_id, created.as_deref()) else {
            tracing::warn!(tenant = %tenant, run = %r.run_id, "run id without a time; the run (and the tenant's key) is kept");
            undated = true;
            continue;
        };
        runs.push(RunInfo {
            tenant: tenant.to_string(),
            run_id: r.run_id,
            created_at,
            committed,
        });
    }
    Ok((runs, undated))
}

/// Read everything the planner needs: tenants, holds, counts for every due selection, pending
/// blobs, snapshot runs and pins. Reads only. Runs the preflight first: any finding that would
/// make the run go wrong refuses the plan (a named [`Refusal`], exit 1) before it deletes.
pub async fn inventory(
    c: &Checked,
    db: &mut Db,
    store: &Store,
    blobs: Option<&Store>,
    keyed_tenants: Vec<String>,
    now: DateTime<Utc>,
) -> crate::Result<Inventory> {
    let dm = &c.data_map;
    let policy = &c.policy;
    let list = Source::open(&c.config.source)?.tenants(dm)?;
    let source_holds = match &policy.legal_holds_source {
        Some(s) => db::source_holds(db, &s.table)?,
        None => vec![],
    };
    // The preflight: what needs no count first, then what the counting pass shows.
    // A blob store that holds none of the newest blobs is a wrong `blobs.url` (exit 2).
    let found = crate::preflight::checks_without_counts(c, db, blobs).await?;
    if !found.blob_store.is_empty() {
        return Err(crate::Error::Check(Problems(found.blob_store)));
    }
    Refusal::unless_empty(found.cascades, Refusal::CascadingDeletes)?;
    Refusal::unless_empty(found.unsafe_data, Refusal::UnsafeData)?;
    let known = crate::preflight::known_ids(&list);
    let mut tenants: Vec<TenantInfo> = list
        .valid
        .into_iter()
        .map(|t| TenantInfo {
            id: t.id,
            status: t.status,
            cancelled_at: t.cancelled_at,
        })
        .collect();
    let bad_tenants: Vec<String> = list.bad.iter().map(|b| b.shown.clone()).collect();
    let holds = plan::holds_of(policy, &source_holds);

    // One pass per table, answering every selection on it for all tenants sharing it, and
    // counting rows per tenant id (orphans) and blobs outside their prefix.
    let mut units = Vec::new();
    let mut table_rows = BTreeMap::new();
    let mut orphans = Vec::new();
    let mut problems = Vec::new();
    let wanted = selections(dm, policy, &tenants, &holds, now);
    for table in &dm.tables {
        let counts = count_units(db, table, &wanted, &mut units)?;
        let (o, p) = crate::preflight::from_counts(c, table, &counts, &known);
        orphans.extend(o);
        problems.extend(p);
        table_rows.insert(table.name.clone(), counts.per_tenant());
    }
    orphans.sort();
    Refusal::unless_empty(problems, Refusal::UnsafeData)?;
    Refusal::unless_empty(
        crate::preflight::names_problems(c, &source_holds, &known, &orphans),
        Refusal::UnknownNames,
    )?;
    // `orphans = "delete"`: their rows go as a terminated tenant's; a second pass counts them
    // (only then, and only for them).
    if policy.orphans == crate::policy::Orphans::Delete {
        let ids: std::collections::BTreeSet<&str> =
            orphans.iter().filter_map(|o| o.tenant.as_deref()).collect();
        let stand_ins: Vec<TenantInfo> = ids.into_iter().map(TenantInfo::orphan).collect();
        if !stand_ins.is_empty() {
            let wanted = selections(dm, policy, &stand_ins, &holds, now);
            for table in &dm.tables {
                if wanted.iter().any(|(_, s)| s.table == table.name) {
                    count_units(db, table, &wanted, &mut units)?;
                }
            }
            tenants.extend(stand_ins);
        }
    }
    units.sort_by(|a, b| a.0.cmp(&b.0));
    let pending_blobs = db::pending_blobs(db)?;

    let mut runs = Vec::new();
    let mut undated_runs = Vec::new();
    for tenant in read::tenants(store).await? {
        let (dated, undated) = run_infos(store, &tenant).await?;
        runs.extend(dated);
        if undated {
            undated_runs.push(tenant);
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
        orphans,
        bad_tenants,
    })
}

/// Answer every selection of `wanted` on `table` in one pass (units pushed to `units`); the
/// pass's row counts come back.
fn count_units(
    db: &mut Db,
    table: &crate::datamap::Table,
    wanted: &[(UnitKey, Selection)],
    units: &mut Vec<(UnitKey, Selection, plan::Stats)>,
) -> crate::Result<db::TableCounts> {
    let mut sels: BTreeMap<&Selection, Vec<&UnitKey>> = BTreeMap::new();
    for (k, s) in wanted.iter().filter(|(_, s)| s.table == table.name) {
        sels.entry(s).or_default().push(k);
    }
    let groups: Vec<(&Selection, Vec<String>)> = sels
        .iter()
        .map(|(s, keys)| (*s, keys.iter().map(|k| k.tenant.clone()).collect()))
        .collect();
    let (counts, mut answers) = db::table_stats(db, table, &groups)?;
    for ((sel, keys), stats) in sels.iter().zip(answers.iter_mut()) {
        for k in keys {
            units.push((
                (*k).clone(),
                (*sel).clone(),
                stats.remove(&k.tenant).unwrap_or_default(),
            ));
        }
    }
    Ok(counts)
}
