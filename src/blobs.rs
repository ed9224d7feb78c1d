//! THE deleter for the blob store (selfie photos, call recordings): the only code that deletes
//! a blob. A blob is **deleted** only when it existed before the delete (HEAD, or object
//! versions purged on a versioned S3 bucket) and HEAD finds nothing after; one that was not there
//! is **already absent** — never counted as a deletion. A blob outside its tenant's
//! `blob_prefix` is never deleted. Each pass is recorded in the audit log between a typed
//! `start` and `end` record. Blob keys never reach logs, errors or records (they may embed
//! identifiers).

use object_store::path::Path as ObjPath;
use serde::Serialize;

use crate::audit::AuditLog;
use crate::datamap::DataMap;
use crate::s3::S3Admin;
use crate::store::Store;

/// What a pass over the blob outbox did.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct BlobPass {
    /// Existed, deleted, and verified gone (HEAD: not found).
    pub deleted: u64,
    /// Not in the store when lethe came to delete it (never there, or deleted by someone else):
    /// counted apart — a delete of nothing is not a deletion.
    pub absent: u64,
    /// Still referenced by a row (shared blobs): left in place, entry dropped.
    pub kept_referenced: u64,
    /// Could not be deleted in this pass (Object Lock, store errors, bad keys): left in the
    /// outbox and retried by the next run.
    pub failed: u64,
    /// Entries left in the outbox after the pass, counted: the run is not verified while any
    /// is left.
    pub left_pending: u64,
}

/// How far one run goes with a failing blob store. An outage must cost a run minutes, not
/// hours: each blob already gets the store client's retries, so a blob that failed is not tried
/// again in the same run (it stays in the outbox for the next one); `breaker` failures in a row
/// stop blob deletions for the run (the store is down); so does the phase's `deadline`. Rows,
/// outbox and audit stay consistent whatever stops it: a blob leaves the outbox only once it
/// is verified gone.
#[derive(Debug)]
pub struct BlobBudget {
    /// Outbox entries that failed in this run.
    failed: std::collections::HashSet<i64>,
    consecutive: u32,
    started: Option<std::time::Instant>,
    deadline: std::time::Duration,
    breaker: u32,
    /// Why blob deletions stopped for this run (`None`: they did not).
    pub stopped: Option<String>,
}

impl BlobBudget {
    pub fn new(cfg: &crate::config::RetentionSection) -> BlobBudget {
        BlobBudget {
            failed: Default::default(),
            consecutive: 0,
            started: None,
            deadline: std::time::Duration::from_secs(cfg.blob_deadline_seconds),
            breaker: cfg.blob_breaker,
            stopped: None,
        }
    }

    /// May another blob be tried? Starts the phase's clock on first use.
    pub fn go(&mut self) -> bool {
        let started = *self.started.get_or_insert_with(std::time::Instant::now);
        if self.stopped.is_none() && started.elapsed() > self.deadline {
            self.stopped = Some(format!(
                "blob deletions reached this run's deadline (retention.blob_deadline_seconds = {})",
                self.deadline.as_secs()
            ));
            tracing::error!(
                reason = self.stopped.as_deref().unwrap_or(""),
                "blob deletions stopped for this run"
            );
        }
        self.stopped.is_none()
    }

    /// Was outbox entry `id` tried and failed already in this run?
    pub fn failed_before(&self, id: i64) -> bool {
        self.failed.contains(&id)
    }

    pub fn succeeded(&mut self) {
        self.consecutive = 0;
    }

    pub fn failed(&mut self, id: i64, why: &str) {
        self.failed.insert(id);
        self.consecutive += 1;
        if self.consecutive >= self.breaker && self.stopped.is_none() {
            self.stopped = Some(format!(
                "{} blob deletions failed in a row (the last: {why}): the blob store looks unavailable (retention.blob_breaker = {})",
                self.consecutive, self.breaker
            ));
            tracing::error!(
                reason = self.stopped.as_deref().unwrap_or(""),
                "blob deletions stopped for this run"
            );
        }
    }
}

/// The blob store and, on a versioned S3 bucket, what purges every version of a key.
pub struct BlobDeleter<'a> {
    store: &'a Store,
    s3: Option<&'a S3Admin>,
}

#[derive(Serialize)]
struct PassStart<'a> {
    step: &'static str,
    phase: &'static str,
    plan_hash: &'a str,
    pending: u64,
}

#[derive(Serialize)]
struct PassEnd<'a> {
    step: &'static str,
    phase: &'static str,
    plan_hash: &'a str,
    deleted: u64,
    already_absent: u64,
    kept_still_referenced: u64,
    failed: u64,
    left_pending: u64,
    verified: &'static str,
}

impl<'a> BlobDeleter<'a> {
    pub fn new(store: &'a Store, s3: Option<&'a S3Admin>) -> BlobDeleter<'a> {
        BlobDeleter { store, s3 }
    }

    /// The `start` record of a pass over `pending` blobs.
    pub async fn begin(
        &self,
        audit: &mut AuditLog,
        plan_hash: &str,
        pending: u64,
    ) -> crate::Result<()> {
        let start = PassStart {
            step: "blobs",
            phase: "start",
            plan_hash,
            pending,
        };
        audit.record(&start).await?;
        Ok(())
    }

    /// The `end` record of a pass: what went, what was already absent, what is left.
    pub async fn end(
        &self,
        audit: &mut AuditLog,
        plan_hash: &str,
        pass: &BlobPass,
    ) -> crate::Result<()> {
        let end = PassEnd {
            step: "blobs",
            phase: "end",
            plan_hash,
            deleted: pass.deleted,
            already_absent: pass.absent,
            kept_still_referenced: pass.kept_referenced,
            failed: pass.failed,
            left_pending: pass.left_pending,
            verified: "each deleted blob existed before its delete and HEAD returned not-found after it; already_absent were not in the store before lethe came",
        };
        audit.record(&end).await?;
        Ok(())
    }

    /// Delete `tenant`'s blob `key` (every version on a versioned bucket) and check it is gone.
    /// Refused for a key outside the tenant's `blob_prefix`. The error describes the failure
    /// without the key.
    pub async fn delete(&self, dm: &DataMap, tenant: &str, key: &str) -> Result<Gone, String> {
        if !within_tenant_prefix(dm, tenant, key) {
            return Err("it lies outside its tenant's blob_prefix (a row of one tenant never deletes another's blob); it stays pending until the data map or the outbox entry is fixed".into());
        }
        delete_blob(self.store, self.s3, key).await
    }
}

/// Is `key` under one of `tenant`'s blob prefixes? Only decided when every blob table of the
/// data map declares `blob_prefix` (a per-tenant layout); otherwise any key passes.
pub fn within_tenant_prefix(dm: &DataMap, tenant: &str, key: &str) -> bool {
    let prefixes: Vec<Option<String>> = dm
        .tables
        .iter()
        .filter(|t| t.config.blob_column.is_some())
        .map(|t| t.config.blob_prefix_of(tenant))
        .collect();
    if prefixes.iter().any(Option::is_none) {
        return true;
    }
    prefixes
        .iter()
        .flatten()
        .any(|p| key.starts_with(p.as_str()))
}

/// What deleting a blob found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// It existed, and is gone now.
    Deleted,
    /// It was not there to begin with.
    Absent,
}

/// Delete one blob (every version on a versioned bucket) and check it is gone: `Deleted` only
/// when it existed before (HEAD, or a version purged) and HEAD finds nothing after. The error
/// describes the failure without the key.
async fn delete_blob(blobs: &Store, s3: Option<&S3Admin>, key: &str) -> Result<Gone, String> {
    let path = ObjPath::parse(key).map_err(|_| "the key is not a valid object path".to_string())?;
    if key.is_empty() {
        return Err("the key is empty".into());
    }
    let existed = match blobs.head(&path).await {
        Ok(m) => m.is_some(),
        Err(_) => return Err("the store could not say whether the blob exists".into()),
    };
    let mut versions_purged = false;
    if let Some(admin) = s3 {
        let p = admin
            .purge_key(path.as_ref())
            .await
            .map_err(|_| "the version purge failed".to_string())?;
        if let Some(l) = p.locked.first() {
            return Err(format!(
                "under Object Lock until {}",
                l.retain_until
                    .as_deref()
                    .unwrap_or("its legal hold is released")
            ));
        }
        versions_purged = p.versions_deleted > 0;
    }
    // With every version purged there is nothing left to delete (a plain DELETE on a
    // versioned bucket would only add a delete marker).
    if existed && !versions_purged && blobs.delete_object(&path).await.is_err() {
        return Err("the store refused the delete".into());
    }
    match blobs.head(&path).await {
        Ok(None) if existed || versions_purged => Ok(Gone::Deleted),
        Ok(None) => Ok(Gone::Absent),
        Ok(Some(_)) => Err("still present after its delete".into()),
        Err(_) => Err("the store could not confirm the delete".into()),
    }
}
