//! Executing a plan: rows in short batches, then their blobs, then backups, then keys — each
//! destructive step between an audit "start" (what will go, under which plan hash) and an
//! audit "end" (what went, and how that was verified).
//!
//! Batches walk the primary key: integer keys in windows whose width adapts to the density of
//! due rows (so each batch holds about `retention.batch_rows` rows and its locks briefly), other
//! keys in key order. A batch that hits a lock or statement timeout is retried with backoff;
//! the application's writers never wait on lethe for longer than one batch.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::audit::AuditLog;
use crate::blobs::{BlobDeleter, BlobPass, Gone};
use crate::datamap::DataMap;
use crate::keys::Keyring;
use crate::retention::crash_point;
use crate::retention::db::{self, Db, Range};
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
    /// Blobs left pending in the outbox (Object Lock, store errors); retried next run.
    pub blobs_failed: u64,
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
            && self.blobs_failed == 0
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
}

const RETRIES: u32 = 8;

fn batch_with_retry(
    env: &mut Env<'_>,
    sel: &Selection,
    tenants: &[String],
    range: &Range,
) -> crate::Result<db::BatchResult> {
    let table = db::table(env.dm, &sel.table);
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=RETRIES {
        match db::change_batch(
            env.db,
            table,
            sel,
            tenants,
            range,
            env.now,
            &env.subject_key,
        ) {
            Ok(r) => return Ok(r),
            Err(e) if e.retry && attempt < RETRIES => {
                tracing::warn!(table = %sel.table, attempt, "batch waited too long for a lock; retrying");
                std::thread::sleep(delay);
                delay *= 2;
            }
            Err(e) => return Err(e.on(&sel.table).into()),
        }
    }
    unreachable!("the last attempt returns")
}

/// Apply one group's change in batches; returns rows per tenant and the due rows a fresh count
/// still finds (0 when done), with the seconds spent changing and verifying.
fn run_batches(
    env: &mut Env<'_>,
    sel: &Selection,
    tenants: &[String],
    units: &[&RowAction],
) -> crate::Result<(BTreeMap<String, u64>, u64, f64, f64)> {
    let started = Instant::now();
    let mut verifying = 0.0;
    let table = db::table(env.dm, &sel.table);
    let mut done: BTreeMap<String, u64> = BTreeMap::new();
    let mut add = |r: &db::BatchResult| {
        for (t, n) in &r.per_tenant {
            *done.entry(t.clone()).or_default() += n;
        }
    };
    let target = env.batch_rows.max(1);
    // Windows only over an integer key, with arithmetic that cannot overflow (i128).
    let int_key = db::pk_is_integer(env.db, table)?;
    let int_range = units.iter().try_fold((i64::MAX, i64::MIN), |(lo, hi), u| {
        let a: i64 = u.stats.min_pk.as_deref()?.parse().ok()?;
        let b: i64 = u.stats.max_pk.as_deref()?.parse().ok()?;
        Some((lo.min(a), hi.max(b)))
    });
    let mut windows = false;
    if let Some((lo, hi)) = int_range.filter(|(lo, hi)| int_key && lo <= hi) {
        windows = true;
        let expected = units.iter().map(|u| u.rows).sum::<u64>().max(1) as i128;
        let span = hi as i128 - lo as i128 + 1;
        let target = target as i128;
        let mut width = (span * target / expected).clamp(1, span);
        let mut at = lo as i128;
        let hi = hi as i128;
        while at <= hi {
            let end = (at + width - 1).min(hi);
            let r = batch_with_retry(env, sel, tenants, &Range::Window(at as i64, end as i64))?;
            add(&r);
            crash_point("after a row batch");
            let n = r.rows() as i128;
            width = if n == 0 {
                width * 2
            } else {
                (width * target / n).clamp((width / 4).max(1), width * 4)
            }
            .clamp(1, span);
            if end == hi {
                break;
            }
            at = end + 1;
        }
    }
    // Key order for everything else, and for due rows the windows did not cover (rows written
    // after the inventory). The count is the verification; after windows it usually finds 0
    // and spares a walk over the whole key index.
    if windows {
        let t = Instant::now();
        let left = db::remaining(env.db, table, sel, tenants)?;
        verifying += t.elapsed().as_secs_f64();
        if left == 0 {
            let changing = started.elapsed().as_secs_f64() - verifying;
            return Ok((done, 0, changing, verifying));
        }
    }
    let mut after: Option<String> = None;
    loop {
        let r = batch_with_retry(
            env,
            sel,
            tenants,
            &Range::Next {
                after: after.clone(),
                n: target,
            },
        )?;
        add(&r);
        crash_point("after a row batch");
        if r.rows() == 0 {
            break;
        }
        after = r.max_pk.clone();
    }
    let t = Instant::now();
    let left = db::remaining(env.db, table, sel, tenants)?;
    verifying += t.elapsed().as_secs_f64();
    let changing = started.elapsed().as_secs_f64() - verifying;
    Ok((done, left, changing, verifying))
}

/// Delete the blobs the outbox lists — unless a row still references them — verify each is
/// gone, then forget exactly those entries. One blob that cannot go stays pending; the others
/// proceed. Blob keys never reach logs or errors (they may embed identifiers).
pub async fn drain_outbox(env: &mut Env<'_>, plan_hash: &str) -> crate::Result<BlobPass> {
    let pending = db::pending_blobs(env.db)?;
    let mut pass = BlobPass::default();
    if pending == 0 {
        return Ok(pass);
    }
    let Some(blobs) = env.blobs else {
        return Err(crate::Error::Usage(format!(
            "{pending} blob deletions are pending in {} but lethe.toml has no [blobs] store; add it (url of the photo/recording store)",
            db::OUTBOX
        )));
    };
    let blobs = BlobDeleter::new(blobs, env.blobs_s3);
    blobs.begin(env.audit, plan_hash, pending).await?;
    let mut after = 0i64;
    loop {
        let batch = db::outbox_next(env.db, after, 500)?;
        let Some(last) = batch.last().map(|b| b.0) else {
            break;
        };
        after = last;
        let keys: Vec<String> = batch.iter().map(|b| b.2.clone()).collect();
        let referenced = db::referenced_blobs(env.db, env.dm, &keys)?;
        let mut done = Vec::new();
        for (id, tenant, key) in &batch {
            if referenced.contains(key) {
                pass.kept_referenced += 1;
                done.push(*id);
                continue;
            }
            match blobs.delete(env.dm, tenant, key).await {
                Ok(Gone::Deleted) => {
                    pass.deleted += 1;
                    done.push(*id);
                }
                Ok(Gone::Absent) => {
                    pass.absent += 1;
                    done.push(*id);
                }
                Err(why) => {
                    pass.failed += 1;
                    tracing::warn!(outbox_id = id, tenant = %tenant, problem = %why, "blob not deleted; it stays pending and is retried next run");
                }
            }
            crash_point("after a blob delete");
        }
        db::outbox_done(env.db, &done)?;
        crash_point("after an outbox batch");
    }
    blobs.end(env.audit, plan_hash, &pass).await?;
    Ok(pass)
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
        let started = Instant::now();
        let tenants: Vec<String> = units.iter().map(|u| u.tenant.clone()).collect();
        let expected: Vec<_> = units
            .iter()
            .map(|u| json!({"tenant": u.tenant, "rows": u.rows, "blobs": u.blobs}))
            .collect();
        env.audit
            .append(
                json!({"step": "rows", "phase": "start", "plan_hash": plan.hash,
                       "table": sel.table, "category": category, "action": sel.change.verb(),
                       "anchor": sel.anchor, "bound": units[0].bound, "units": expected}),
                Utc::now(),
            )
            .await?;
        crash_point("after a start record");
        let (rows, remaining, changing, verifying) =
            tokio::task::block_in_place(|| run_batches(env, sel, &tenants, &units))?;
        let table = db::table(env.dm, &sel.table);
        let done: Vec<_> = rows
            .iter()
            .map(|(t, n)| json!({"tenant": t, "rows": n}))
            .collect();
        env.audit
            .append(
                json!({"step": "rows", "phase": "end", "plan_hash": plan.hash,
                       "table": sel.table, "category": category, "action": sel.change.verb(),
                       "units": done, "remaining": remaining,
                       "verified": format!("re-query of the due rows returned {remaining} rows")}),
                Utc::now(),
            )
            .await?;
        crash_point("after an end record");
        tracing::debug!(table = %sel.table, category, action = sel.change.verb(), rows = rows.values().sum::<u64>(), remaining, seconds_changing = changing, seconds_verifying = verifying, "rows done");
        out.units.push(UnitOutcome {
            table: sel.table.clone(),
            category: category.to_string(),
            action: sel.change.verb(),
            rows,
            remaining,
            seconds: started.elapsed().as_secs_f64(),
        });
        if table.config.blob_column.is_some() {
            let b = drain_outbox(env, &plan.hash).await?;
            out.blobs_deleted += b.deleted;
            out.blobs_absent += b.absent;
            out.blobs_failed += b.failed;
        }
    }

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
