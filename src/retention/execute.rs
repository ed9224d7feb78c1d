//! Executing a plan: rows, then their blobs, then backups, then keys — in that order, each by
//! the one deleter of its system ([`crate::primary`], [`crate::blobs`],
//! [`crate::snapshot::purge::purge_run_recorded`], [`crate::keys::Keyring::shred`]), which
//! records its own audit "start" (what will go, under which plan hash) and "end" (what went,
//! and how that was verified). This module only orders them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::audit::AuditLog;
use crate::datamap::DataMap;
use crate::keys::Keyring;
use crate::primary::drain_outbox;
use crate::retention::db::{self, Db};
use crate::retention::plan::{RetentionPlan, RowAction, Selection};
use crate::s3::S3Admin;
use crate::snapshot::purge::{RunPurge, purge_run_recorded};
use crate::store::Store;

/// What one group of units (one table, one selection, several tenants) did.
#[derive(Debug, Clone)]
pub struct UnitOutcome {
    pub table: String,
    pub category: String,
    pub action: &'static str,
    /// Rows changed, per tenant.
    pub rows: BTreeMap<String, u64>,
    /// Due rows left after the batches, by a fresh count (0 when verified).
    pub remaining: u64,
    pub seconds: f64,
}

/// What a retention run did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub plan_hash: String,
    pub units: Vec<UnitOutcome>,
    /// Blobs that existed and are gone now (verified by HEAD).
    pub blobs_deleted: u64,
    /// Blobs the outbox listed that were not in the blob store to begin with: not deletions.
    pub blobs_absent: u64,
    /// Blob deletions that failed in this run (each blob counted once).
    pub blobs_failed: u64,
    /// Blobs left pending in the outbox at the end of the run, counted (Object Lock, store
    /// errors); retried next run.
    pub blobs_pending: u64,
    /// Why blob deletions stopped early in this run (the breaker, the deadline).
    pub blobs_stopped: Option<String>,
    pub runs: Vec<RunPurge>,
    /// Runs kept because they were pinned between planning and execution.
    pub runs_skipped: Vec<String>,
    pub shredded: Vec<String>,
}

impl Outcome {
    pub fn rows(&self) -> u64 {
        self.units.iter().flat_map(|u| u.rows.values()).sum()
    }
    pub fn verified(&self) -> bool {
        self.units.iter().all(|u| u.remaining == 0)
            && self.runs.iter().all(|r| r.verified)
            && self.blobs_pending == 0
    }
}

/// Everything execution touches.
pub struct Env<'a> {
    pub dm: &'a DataMap,
    pub db: &'a mut Db,
    pub store: &'a Store,
    /// The application's blob store (photos, recordings).
    pub blobs: Option<&'a Store>,
    /// For versioned S3 snapshot stores: purge every version.
    pub s3: Option<&'a S3Admin>,
    /// For a versioned S3 blob store: delete every version of each blob.
    pub blobs_s3: Option<&'a S3Admin>,
    pub audit: &'a mut AuditLog,
    pub keyring: &'a mut Keyring,
    pub subject_key: [u8; 32],
    pub batch_rows: u64,
    pub now: DateTime<Utc>,
    /// How far this run goes with a failing blob store.
    pub blob_budget: crate::blobs::BlobBudget,
}

/// Execute `plan`. Rows first (per table and selection, across tenants), then their blobs,
/// then backups, then crypto-shredding.
pub async fn execute(env: &mut Env<'_>, plan: &RetentionPlan) -> crate::Result<Outcome> {
    let mut out = Outcome {
        plan_hash: plan.hash.clone(),
        ..Default::default()
    };
    env.db.ensure_outbox().map_err(|e| e.on(db::OUTBOX))?;
    // Work an interrupted run left behind comes first.
    let b = drain_outbox(env, &plan.hash).await?;
    out.blobs_deleted += b.deleted;
    out.blobs_absent += b.absent;
    out.blobs_failed += b.failed;

    let mut groups: BTreeMap<(&str, &Selection), Vec<&RowAction>> = BTreeMap::new();
    for a in &plan.actions {
        groups
            .entry((a.category.as_str(), &a.selection))
            .or_default()
            .push(a);
    }
    for ((category, sel), units) in groups {
        let unit = crate::primary::change_rows(env, &plan.hash, category, sel, &units).await?;
        out.units.push(unit);
        if db::table(env.dm, &sel.table).config.blob_column.is_some() {
            let b = drain_outbox(env, &plan.hash).await?;
            out.blobs_deleted += b.deleted;
            out.blobs_absent += b.absent;
            out.blobs_failed += b.failed;
        }
    }

    // The outcome is what is left, measured at the end (a blob that failed in one pass and
    // went in a later one is not pending).
    out.blobs_pending = db::pending_blobs(env.db)?;
    out.blobs_stopped = env.blob_budget.stopped.clone();

    for r in &plan.backups {
        match purge_run_recorded(
            env.store, env.s3, env.audit, &plan.hash, &r.tenant, &r.run_id, &r.rule,
        )
        .await?
        {
            Some(p) => out.runs.push(p),
            None => out.runs_skipped.push(format!("{}/{}", r.tenant, r.run_id)),
        }
    }

    for t in &plan.shred_keys {
        env.keyring.shred(t, env.audit, &plan.hash).await?;
        out.shredded.push(t.clone());
    }
    Ok(out)
}
