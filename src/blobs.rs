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
    /// Could not be deleted (Object Lock, store errors, bad keys): left in the outbox and
    /// retried on every run; the run is not verified while any is left.
    pub failed: u64,
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
    failed_left_pending: u64,
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
            failed_left_pending: pass.failed,
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
