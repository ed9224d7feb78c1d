//! THE deleter for the primary database: the only code that changes the application's rows —
//! batched `DELETE` / `UPDATE` over primary-key windows (or key order), each batch one short
//! transaction that enqueues the blobs its rows referenced in `lethe_blob_outbox`; then a fresh
//! re-count verifies that no due row is left. Each change is recorded between a typed audit
//! `start` record (what will go, under which plan hash) and an `end` record (what went, how it
//! was verified). The outbox is drained here too, through [`crate::blobs::BlobDeleter`], the one
//! deleter of the blob store.
//!
//! Batches walk the primary key: integer keys in windows whose width adapts to the density of
//! due rows (so each batch holds about `retention.batch_rows` rows and its locks briefly), other
//! keys in key order. A batch that hits a lock or statement timeout is retried with backoff;
//! the application's writers never wait on lethe for longer than one batch.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::blobs::{BlobDeleter, BlobPass, Gone};
use crate::retention::crash_point;
use crate::retention::db::{self, Range};
use crate::retention::execute::{Env, UnitOutcome};
use crate::retention::plan::{RowAction, Selection};

#[derive(Serialize)]
struct UnitPlanned<'a> {
    tenant: &'a str,
    rows: u64,
    blobs: u64,
}

#[derive(Serialize)]
struct RowsStart<'a> {
    step: &'static str,
    phase: &'static str,
    plan_hash: &'a str,
    table: &'a str,
    category: &'a str,
    action: &'static str,
    anchor: Option<&'a str>,
    bound: Option<&'a str>,
    units: Vec<UnitPlanned<'a>>,
}

#[derive(Serialize)]
struct UnitDone<'a> {
    tenant: &'a str,
    rows: u64,
}

#[derive(Serialize)]
struct RowsEnd<'a> {
    step: &'static str,
    phase: &'static str,
    plan_hash: &'a str,
    table: &'a str,
    category: &'a str,
    action: &'static str,
    units: Vec<UnitDone<'a>>,
    remaining: u64,
    verified: String,
}

/// Apply one selection's change (one table, one category, the tenants of `units`) between its
/// audit records, and verify it by a fresh count.
pub async fn change_rows(
    env: &mut Env<'_>,
    plan_hash: &str,
    category: &str,
    sel: &Selection,
    units: &[&RowAction],
) -> crate::Result<UnitOutcome> {
    let started = Instant::now();
    let tenants: Vec<String> = units.iter().map(|u| u.tenant.clone()).collect();
    let start = RowsStart {
        step: "rows",
        phase: "start",
        plan_hash,
        table: &sel.table,
        category,
        action: sel.change.verb(),
        anchor: sel.anchor.as_deref(),
        bound: units[0].bound.as_deref(),
        units: units
            .iter()
            .map(|u| UnitPlanned {
                tenant: &u.tenant,
                rows: u.rows,
                blobs: u.blobs,
            })
            .collect(),
    };
    env.audit.record(&start).await?;
    crash_point("after a start record");
    let (rows, remaining, changing, verifying) =
        tokio::task::block_in_place(|| run_batches(env, sel, &tenants, units))?;
    let end = RowsEnd {
        step: "rows",
        phase: "end",
        plan_hash,
        table: &sel.table,
        category,
        action: sel.change.verb(),
        units: rows
            .iter()
            .map(|(t, n)| UnitDone {
                tenant: t,
                rows: *n,
            })
            .collect(),
        remaining,
        verified: format!("re-query of the due rows returned {remaining} rows"),
    };
    env.audit.record(&end).await?;
    crash_point("after an end record");
    tracing::debug!(table = %sel.table, category, action = sel.change.verb(), rows = rows.values().sum::<u64>(), remaining, seconds_changing = changing, seconds_verifying = verifying, "rows done");
    Ok(UnitOutcome {
        table: sel.table.clone(),
        category: category.to_string(),
        action: sel.change.verb(),
        rows,
        remaining,
        seconds: started.elapsed().as_secs_f64(),
    })
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
    if !env.blob_budget.go() {
        pass.left_pending = pending;
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
            // Failed already in this run: the next run tries it again.
            if env.blob_budget.failed_before(*id) {
                continue;
            }
            if !env.blob_budget.go() {
                break;
            }
            match blobs.delete(env.dm, tenant, key).await {
                Ok(Gone::Deleted) => {
                    pass.deleted += 1;
                    done.push(*id);
                    env.blob_budget.succeeded();
                }
                Ok(Gone::Absent) => {
                    pass.absent += 1;
                    done.push(*id);
                    env.blob_budget.succeeded();
                }
                Err(why) => {
                    pass.failed += 1;
                    env.blob_budget.failed(*id, &why);
                    tracing::warn!(outbox_id = id, tenant = %tenant, problem = %why, "blob not deleted; it stays pending and is retried next run");
                }
            }
            crash_point("after a blob delete");
        }
        db::outbox_done(env.db, &done)?;
        crash_point("after an outbox batch");
        if env.blob_budget.stopped.is_some() {
            break;
        }
    }
    // What is left, measured (not the failures summed over passes).
    pass.left_pending = db::pending_blobs(env.db)?;
    blobs.end(env.audit, plan_hash, &pass).await?;
    Ok(pass)
}
