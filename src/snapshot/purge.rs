//! Destroying backups: purging one snapshot run, pinning runs so they are never purged, and
//! crypto-shredding a tenant (destroying its data key).
//!
//! Layout:
//! ```text
//! snapshots/tenant=<t>/run=<run-id>/...          the run: purged as a whole
//! pins/tenant=<t>/run=<run-id>.json              a pin, outside the run so a run's directory
//!                                                holds only files its manifest lists
//! ```
//!
//! Invariants and dangers:
//! - A purge names exactly one run. Tenant and run ids must be plain identifiers
//!   ([`crate::util::is_safe_ident`]); anything else is refused before any I/O, so a purge can
//!   never widen to a tenant (`run=` empty) or the store (`..`, `/`, `*`).
//! - A pinned run is refused ([`SnapshotError::Pinned`]). Planners should leave pinned runs
//!   out; this check is the last line. Pin and purge of the same run are not atomic against
//!   each other: the job lease (`locks/`) serializes them.
//! - The manifest goes first: once it is gone the run is uncommitted and no reader trusts its
//!   files, so a crash at any later point leaves nothing a restore would use. A re-run finishes
//!   the job; a run that is already gone yields a [`RunPurge`] with zero deletions, verified.
//! - On a versioned (or suspended) S3 bucket a plain DELETE only hides data behind a delete
//!   marker, so the caller must pass an [`S3Admin`] ([`s3_admin_for`]) and every version and
//!   marker under the run is deleted. Versions under Object Lock stay; they are reported in
//!   [`RunPurge::locked`] and hidden again behind a delete marker so that a locked manifest
//!   cannot re-commit a run whose other files are gone.
//! - Every purge is verified by fresh reads (listing, HEAD of the manifest, version listing);
//!   `verified: false` means something is still there, and the caller must not report the run
//!   as destroyed.
//! - Crypto-shredding removes the tenant's wrapped key from `keyring.json`; copies of the
//!   keyring elsewhere (its backups) still hold it and must be handled by their owner.
//!
//! This module deletes from the snapshot store; its callers write the audit "start" record
//! before calling it and the "end" record (with the returned [`RunPurge`]) after.

use std::collections::HashSet;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::path::Path as ObjPath;
use serde::{Deserialize, Serialize};

use super::{SnapshotError, manifest::Manifest, manifest_key, run_prefix};
use crate::config::StoreSpec;
use crate::s3::{Locked, S3Admin, Versioning};
use crate::store::{Store, StoreError};
use crate::util::{is_safe_ident, rfc3339};

pub const PINS: &str = "pins";
const PIN_FORMAT: &str = "lethe-pin/1";
/// Limits on what ops write into a pin.
const MAX_REASON: usize = 500;
const MAX_BY: usize = 200;

/// [`RunPurge::method`] when objects were deleted one by one (local store, unversioned bucket).
pub const METHOD_DELETE: &str = "delete";
/// [`RunPurge::method`] when every version and delete marker under the run was deleted.
pub const METHOD_PURGE_ALL_VERSIONS: &str = "purge-all-versions";

/// `pins/tenant=<t>/run=<run-id>.json`.
pub fn pin_key(tenant: &str, run: &str) -> ObjPath {
    ObjPath::from(format!("{PINS}/tenant={tenant}/run={run}.json"))
}

/// A pin: keeps one committed run from being purged until it is unpinned.
#[derive(Debug, Clone, PartialEq)]
pub struct Pin {
    pub tenant: String,
    pub run_id: String,
    /// Free text written by ops (a ticket, "legal hold 2026-14"). It is stored in the clear
    /// and shown in listings and logs, so it must never contain personal data.
    pub reason: String,
    /// Who placed the pin (an operator or service account name).
    pub placed_by: String,
    pub placed_at: DateTime<Utc>,
}

/// The pin as stored.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinFile {
    format: String,
    tenant: String,
    run_id: String,
    reason: String,
    placed_by: String,
    /// RFC 3339, UTC.
    placed_at: String,
}

/// What [`purge_run`] did and found.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPurge {
    pub tenant: String,
    pub run_id: String,
    /// Objects of the run (manifest included) visible when the purge started and deleted by
    /// it (not counting objects that stay under Object Lock, hidden behind a delete marker).
    pub objects_deleted: u64,
    /// Object versions deleted (versioned buckets only; 0 for [`METHOD_DELETE`]).
    pub versions_deleted: u64,
    /// Delete markers deleted (versioned buckets only).
    pub delete_markers_deleted: u64,
    /// Versions Object Lock keeps, with their retain-until dates: exceptions to report.
    pub locked: Vec<Locked>,
    /// A fresh listing of the run is empty, HEAD of the manifest is not found and, on a
    /// versioned bucket, nothing but `locked` versions is left under the run.
    pub verified: bool,
    /// [`METHOD_DELETE`] or [`METHOD_PURGE_ALL_VERSIONS`].
    pub method: &'static str,
}

fn check_ids(op: &'static str, tenant: &str, run: &str) -> Result<(), SnapshotError> {
    for (what, value) in [("tenant", tenant), ("run", run)] {
        if !is_safe_ident(value) {
            return Err(SnapshotError::UnsafeId {
                op,
                what,
                value: value.into(),
            });
        }
    }
    Ok(())
}

/// Whether `key` exists (HEAD).
async fn exists(store: &Store, key: &ObjPath) -> Result<bool, StoreError> {
    Ok(store.head(key).await?.is_some())
}

/// Step one of a purge: delete the run's manifest, so the run is uncommitted and no reader
/// trusts its files. `true` if there was a manifest. (HEAD first: on a versioned bucket a
/// DELETE of a missing key would still leave a delete marker behind.)
pub(crate) async fn uncommit(store: &Store, tenant: &str, run: &str) -> Result<bool, StoreError> {
    let key = manifest_key(tenant, run);
    if !exists(store, &key).await? {
        return Ok(false);
    }
    store.delete_object(&key).await?;
    Ok(true)
}

/// The admin must address the store's own bucket and prefix: its keys are relative to it.
fn check_admin(store: &Store, admin: &S3Admin) -> Result<(), StoreError> {
    let matches = store.url.strip_prefix("s3://").is_some_and(|rest| {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        bucket == admin.bucket && prefix.trim_end_matches('/') == admin.prefix
    });
    if matches {
        Ok(())
    } else {
        Err(StoreError::UnsafePurge {
            prefix: format!("s3://{}/{}", admin.bucket, admin.prefix),
            why: "the S3 admin addresses another bucket or prefix than the store being purged",
        })
    }
}

/// The S3 admin [`purge_run`] needs for `spec`: `Some` for an `s3://` store whose bucket keeps
/// (or once kept) object versions, `None` for local stores and unversioned buckets, where a
/// DELETE removes the data.
pub async fn s3_admin_for(spec: &StoreSpec) -> Result<Option<S3Admin>, StoreError> {
    if !spec.url.starts_with("s3://") {
        return Ok(None);
    }
    let admin = S3Admin::connect(spec).await?;
    Ok(match admin.versioning().await? {
        Versioning::Off => None,
        Versioning::Enabled | Versioning::Suspended => Some(admin),
    })
}

/// Purge one snapshot run: its manifest first, then every other object (with `s3`, every
/// version and delete marker) under `snapshots/tenant=<t>/run=<r>/`, then verify by fresh
/// reads. Idempotent; after a crash, run it again. Refuses unsafe ids and pinned runs.
///
/// Pass `s3` (from [`s3_admin_for`]) whenever the store is a versioned or suspended bucket:
/// without it, old versions of every file stay in the bucket.
/// THE deleter for the snapshot store, as destructive runs call it: [`purge_run`] between a
/// typed audit `start` record (plan hash, tenant, run, the rule that made it due) and an `end`
/// record (what went, how it was verified, what Object Lock keeps). `None` when the run was
/// pinned since planning: it is kept, and the `end` record says so.
pub async fn purge_run_recorded(
    store: &Store,
    s3: Option<&S3Admin>,
    audit: &mut crate::audit::AuditLog,
    plan_hash: &str,
    tenant: &str,
    run_id: &str,
    rule: &str,
) -> crate::Result<Option<RunPurge>> {
    use crate::retention::crash_point;
    #[derive(Serialize)]
    struct Start<'a> {
        step: &'static str,
        phase: &'static str,
        plan_hash: &'a str,
        tenant: &'a str,
        run_id: &'a str,
        rule: &'a str,
    }
    #[derive(Serialize)]
    struct Skipped<'a> {
        step: &'static str,
        phase: &'static str,
        plan_hash: &'a str,
        tenant: &'a str,
        run_id: &'a str,
        skipped: &'static str,
    }
    #[derive(Serialize)]
    struct End<'a> {
        step: &'static str,
        phase: &'static str,
        plan_hash: &'a str,
        tenant: &'a str,
        run_id: &'a str,
        method: &'a str,
        objects_deleted: u64,
        versions_deleted: u64,
        delete_markers_deleted: u64,
        locked_until: Vec<String>,
        verified: bool,
    }
    const STEP: &str = "backup-purge";
    audit
        .record(&Start {
            step: STEP,
            phase: "start",
            plan_hash,
            tenant,
            run_id,
            rule,
        })
        .await?;
    crash_point("before a run purge");
    let p = match purge_run(store, s3, tenant, run_id).await {
        Ok(p) => p,
        Err(SnapshotError::Pinned { .. }) => {
            audit
                .record(&Skipped {
                    step: STEP,
                    phase: "end",
                    plan_hash,
                    tenant,
                    run_id,
                    skipped: "pinned since planning",
                })
                .await?;
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let locked_until = p
        .locked
        .iter()
        .map(|l| {
            l.retain_until
                .clone()
                .unwrap_or_else(|| "legal hold".into())
        })
        .collect();
    audit
        .record(&End {
            step: STEP,
            phase: "end",
            plan_hash,
            tenant,
            run_id,
            method: p.method,
            objects_deleted: p.objects_deleted,
            versions_deleted: p.versions_deleted,
            delete_markers_deleted: p.delete_markers_deleted,
            locked_until,
            verified: p.verified,
        })
        .await?;
    crash_point("after a run purge");
    Ok(Some(p))
}

/// Purge one run (no audit records: [`purge_run_recorded`] is what destructive runs call).
pub async fn purge_run(
    store: &Store,
    s3: Option<&S3Admin>,
    tenant: &str,
    run: &str,
) -> Result<RunPurge, SnapshotError> {
    check_ids("purge", tenant, run)?;
    if let Some(admin) = s3 {
        check_admin(store, admin)?;
    }
    if let Some(p) = pin_of(store, tenant, run).await? {
        return Err(SnapshotError::Pinned {
            tenant: tenant.into(),
            run: run.into(),
            placed_at: rfc3339(p.placed_at),
        });
    }
    let method = if s3.is_some() {
        METHOD_PURGE_ALL_VERSIONS
    } else {
        METHOD_DELETE
    };
    let prefix = run_prefix(tenant, run);
    let before: Vec<ObjPath> = store
        .list(&prefix)
        .await?
        .into_iter()
        .map(|m| m.location)
        .collect();
    tracing::info!(
        tenant,
        run,
        objects = before.len(),
        method,
        "snapshot run purge: start"
    );

    uncommit(store, tenant, run).await?;
    let mut out = RunPurge {
        tenant: tenant.into(),
        run_id: run.into(),
        objects_deleted: 0,
        versions_deleted: 0,
        delete_markers_deleted: 0,
        locked: Vec::new(),
        verified: false,
        method,
    };
    let mut versions_clean = true;
    match s3 {
        None => {
            let rest = store.list(&prefix).await?;
            store
                .delete_objects(&prefix, rest.into_iter().map(|m| m.location).collect())
                .await?;
        }
        Some(admin) => {
            let o = admin.purge_prefix(&format!("{prefix}/")).await?;
            out.versions_deleted = o.versions_deleted;
            out.delete_markers_deleted = o.delete_markers_deleted;
            versions_clean = o.remaining == o.locked.len() as u64;
            out.locked = o.locked;
            if !out.locked.is_empty() {
                // A locked version is current again now that its marker is gone: hide it,
                // or a locked manifest would re-commit a run whose other files are gone.
                let visible = store.list(&prefix).await?;
                store
                    .delete_objects(&prefix, visible.into_iter().map(|m| m.location).collect())
                    .await?;
            }
        }
    }

    let after: HashSet<ObjPath> = store
        .list(&prefix)
        .await?
        .into_iter()
        .map(|m| m.location)
        .collect();
    // A locked object is hidden, not deleted.
    let locked: HashSet<&str> = out
        .locked
        .iter()
        .map(|l| match s3 {
            Some(a) if !a.prefix.is_empty() => l
                .key
                .strip_prefix(&a.prefix)
                .and_then(|k| k.strip_prefix('/'))
                .unwrap_or(&l.key),
            _ => &l.key,
        })
        .collect();
    out.objects_deleted = before
        .iter()
        .filter(|k| !after.contains(*k) && !locked.contains(k.as_ref()))
        .count() as u64;
    out.verified =
        after.is_empty() && versions_clean && !exists(store, &manifest_key(tenant, run)).await?;
    if out.verified {
        tracing::info!(
            tenant,
            run,
            objects = out.objects_deleted,
            versions = out.versions_deleted,
            delete_markers = out.delete_markers_deleted,
            locked = out.locked.len(),
            method,
            "snapshot run purge: end"
        );
    } else {
        tracing::warn!(
            tenant,
            run,
            objects = out.objects_deleted,
            left = after.len(),
            locked = out.locked.len(),
            method,
            "snapshot run purge: end, NOT verified: objects remain"
        );
    }
    Ok(out)
}

fn parse_pin(key: &ObjPath, bytes: &[u8]) -> Result<Pin, SnapshotError> {
    let bad = |message: String| SnapshotError::Decode {
        key: key.to_string(),
        message: format!("unreadable pin: {message}"),
    };
    let f: PinFile = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    if f.format != PIN_FORMAT {
        return Err(bad(format!(
            "format {:?}, expected {PIN_FORMAT:?}",
            f.format
        )));
    }
    if pin_key(&f.tenant, &f.run_id) != *key {
        return Err(bad(format!(
            "names tenant {:?} run {:?}, but sits at another key",
            f.tenant, f.run_id
        )));
    }
    let placed_at = DateTime::parse_from_rfc3339(&f.placed_at)
        .map_err(|e| bad(format!("placed_at: {e}")))?
        .with_timezone(&Utc);
    Ok(Pin {
        tenant: f.tenant,
        run_id: f.run_id,
        reason: f.reason,
        placed_by: f.placed_by,
        placed_at,
    })
}

/// The pin on a run, if any.
pub async fn pin_of(store: &Store, tenant: &str, run: &str) -> Result<Option<Pin>, SnapshotError> {
    check_ids("read the pin", tenant, run)?;
    let key = pin_key(tenant, run);
    match store.get_opt(&key).await? {
        Some(b) => parse_pin(&key, &b).map(Some),
        None => Ok(None),
    }
}

fn check_text(
    tenant: &str,
    run: &str,
    text: &str,
    max: usize,
    field: &'static str,
) -> Result<(), SnapshotError> {
    let why = if text.trim().is_empty() {
        field
    } else if text.chars().count() > max {
        "the reason or the name is too long (at most 500 and 200 characters)"
    } else if text.chars().any(char::is_control) {
        "the reason and the name must be one line without control characters"
    } else {
        return Ok(());
    };
    Err(SnapshotError::BadPin {
        tenant: tenant.into(),
        run: run.into(),
        why,
    })
}

/// Pin a committed run so [`purge_run`] refuses it. Pinning a pinned run returns the existing
/// pin unchanged. `reason` is free text stored in the clear: it must not contain personal data.
pub async fn pin(
    store: &Store,
    tenant: &str,
    run: &str,
    reason: &str,
    by: &str,
    at: DateTime<Utc>,
) -> Result<Pin, SnapshotError> {
    check_ids("pin", tenant, run)?;
    check_text(tenant, run, reason, MAX_REASON, "a pin needs a reason")?;
    check_text(
        tenant,
        run,
        by,
        MAX_BY,
        "a pin needs the name of who placed it",
    )?;
    if let Some(existing) = pin_of(store, tenant, run).await? {
        return Ok(existing);
    }
    let mkey = manifest_key(tenant, run);
    let Some(bytes) = store.get_opt(&mkey).await? else {
        return Err(SnapshotError::NoRun {
            tenant: tenant.into(),
            run: Some(run.into()),
        });
    };
    let m = Manifest::from_bytes(&bytes).map_err(|message| SnapshotError::BadManifest {
        key: mkey.to_string(),
        message,
    })?;
    if m.tenant != tenant || m.run_id != run {
        return Err(SnapshotError::BadManifest {
            key: mkey.to_string(),
            message: format!("names tenant {} run {}", m.tenant, m.run_id),
        });
    }
    let file = PinFile {
        format: PIN_FORMAT.into(),
        tenant: tenant.into(),
        run_id: run.into(),
        reason: reason.into(),
        placed_by: by.into(),
        placed_at: rfc3339(at),
    };
    let body = serde_json::to_vec_pretty(&file).expect("serializable");
    let key = pin_key(tenant, run);
    store.put(&key, Bytes::from(body)).await?;
    tracing::info!(tenant, run, "snapshot run pinned");
    // Read back what is stored (second precision), so this and `pins` agree.
    parse_pin(&key, &store.get(&key).await?)
}

/// Remove the pin on a run; `true` if it was pinned.
pub async fn unpin(store: &Store, tenant: &str, run: &str) -> Result<bool, SnapshotError> {
    check_ids("unpin", tenant, run)?;
    let key = pin_key(tenant, run);
    if !exists(store, &key).await? {
        return Ok(false);
    }
    store.delete_object(&key).await?;
    tracing::info!(tenant, run, "snapshot run unpinned");
    Ok(true)
}

/// Every pin, of one tenant or of all, sorted by tenant and run. An unreadable pin is an
/// error, never skipped: a skipped pin would let its run be purged.
pub async fn pins(store: &Store, tenant: Option<&str>) -> Result<Vec<Pin>, SnapshotError> {
    let prefix = match tenant {
        Some(t) if !is_safe_ident(t) => {
            return Err(SnapshotError::UnsafeId {
                op: "list pins",
                what: "tenant",
                value: t.into(),
            });
        }
        Some(t) => ObjPath::from(format!("{PINS}/tenant={t}")),
        None => ObjPath::from(PINS),
    };
    let mut out = Vec::new();
    for meta in store.list(&prefix).await? {
        let bytes = store.get(&meta.location).await?;
        out.push(parse_pin(&meta.location, &bytes)?);
    }
    out.sort_by(|a, b| (&a.tenant, &a.run_id).cmp(&(&b.tenant, &b.run_id)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use futures::future::BoxFuture;
    use futures::stream::BoxStream;
    use object_store::{
        CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
        PutMultipartOptions, PutOptions, PutPayload, PutResult,
    };

    use super::*;
    use crate::snapshot::MANIFEST;
    use crate::snapshot::read::runs;
    use futures::StreamExt;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-22T20:50:11Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn local(dir: &tempfile::TempDir) -> Store {
        Store::open(&StoreSpec::local(format!(
            "file://{}",
            dir.path().display()
        )))
        .unwrap()
    }

    async fn fake_run(store: &Store, tenant: &str, run: &str, parts: usize) {
        crate::snapshot::testing::fake_run(store, tenant, run, parts, "test", &rfc3339(t0())).await;
    }

    async fn keys(store: &Store, prefix: &str) -> Vec<String> {
        let mut k: Vec<String> = store
            .list(&ObjPath::from(prefix))
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.location.to_string())
            .collect();
        k.sort();
        k
    }

    #[tokio::test]
    async fn purge_removes_the_run_and_only_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let store = local(&dir);
        fake_run(&store, "acme", "r1", 3).await;
        fake_run(&store, "acme", "r10", 1).await; // r1 is a string prefix of r10
        fake_run(&store, "acme2", "r1", 1).await;

        let out = purge_run(&store, None, "acme", "r1").await.unwrap();
        assert_eq!(out.objects_deleted, 4, "{out:?}");
        assert!(out.verified, "{out:?}");
        assert_eq!(out.method, METHOD_DELETE);
        assert_eq!((out.versions_deleted, out.delete_markers_deleted), (0, 0));
        assert!(
            keys(&store, "snapshots/tenant=acme/run=r1")
                .await
                .is_empty()
        );
        assert_eq!(keys(&store, "snapshots/tenant=acme/run=r10").await.len(), 2);
        assert_eq!(keys(&store, "snapshots/tenant=acme2").await.len(), 2);
        let left: Vec<String> = runs(&store, "acme")
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.run_id)
            .collect();
        assert_eq!(left, ["r10"]);

        // Already gone: nothing to do, still verified.
        let again = purge_run(&store, None, "acme", "r1").await.unwrap();
        assert_eq!(again.objects_deleted, 0);
        assert!(again.verified, "{again:?}");
        let never = purge_run(&store, None, "nobody", "r1").await.unwrap();
        assert!(never.verified && never.objects_deleted == 0, "{never:?}");
    }

    #[tokio::test]
    async fn a_crash_after_the_manifest_is_gone_is_finished_by_a_rerun() {
        let dir = tempfile::tempdir().unwrap();
        let store = local(&dir);
        fake_run(&store, "acme", "r1", 2).await;
        assert!(uncommit(&store, "acme", "r1").await.unwrap());
        // "Crash" here: the run is uncommitted, its files still there and ignored by readers.
        let r = &runs(&store, "acme").await.unwrap()[0];
        assert!(r.manifest.is_none());
        assert_eq!(keys(&store, "snapshots/tenant=acme/run=r1").await.len(), 2);

        let out = purge_run(&store, None, "acme", "r1").await.unwrap();
        assert_eq!(out.objects_deleted, 2, "{out:?}");
        assert!(out.verified);
        assert!(runs(&store, "acme").await.unwrap().is_empty());
        // The step itself is idempotent: no manifest, nothing to delete (on a versioned bucket a
        // blind DELETE would leave a delete marker).
        assert!(!uncommit(&store, "acme", "r1").await.unwrap());
    }

    /// A store that records deletes and, when `crash`, fails every delete but the manifest's.
    #[derive(Debug)]
    struct Crashing {
        inner: Arc<dyn ObjectStore>,
        deleted: Arc<Mutex<Vec<String>>>,
        crash: bool,
    }

    impl std::fmt::Display for Crashing {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Crashing({})", self.inner)
        }
    }

    // `ObjectStore` is an `async_trait`; these are its desugared signatures.
    impl ObjectStore for Crashing {
        fn put_opts<'a, 'b, 'c>(
            &'a self,
            location: &'b ObjPath,
            payload: PutPayload,
            opts: PutOptions,
        ) -> BoxFuture<'c, object_store::Result<PutResult>>
        where
            'a: 'c,
            'b: 'c,
            Self: 'c,
        {
            self.inner.put_opts(location, payload, opts)
        }
        fn put_multipart_opts<'a, 'b, 'c>(
            &'a self,
            location: &'b ObjPath,
            opts: PutMultipartOptions,
        ) -> BoxFuture<'c, object_store::Result<Box<dyn MultipartUpload>>>
        where
            'a: 'c,
            'b: 'c,
            Self: 'c,
        {
            self.inner.put_multipart_opts(location, opts)
        }
        fn get_opts<'a, 'b, 'c>(
            &'a self,
            location: &'b ObjPath,
            options: GetOptions,
        ) -> BoxFuture<'c, object_store::Result<GetResult>>
        where
            'a: 'c,
            'b: 'c,
            Self: 'c,
        {
            self.inner.get_opts(location, options)
        }
        fn delete_stream(
            &self,
            locations: BoxStream<'static, object_store::Result<ObjPath>>,
        ) -> BoxStream<'static, object_store::Result<ObjPath>> {
            let (log, crash) = (self.deleted.clone(), self.crash);
            let checked = locations.map(move |l| {
                let l = l?;
                log.lock().unwrap().push(l.to_string());
                if crash && !l.as_ref().ends_with(MANIFEST) {
                    return Err(object_store::Error::Generic {
                        store: "crashing",
                        source: "simulated crash".into(),
                    });
                }
                Ok(l)
            });
            self.inner.delete_stream(checked.boxed())
        }
        fn list(
            &self,
            prefix: Option<&ObjPath>,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.inner.list(prefix)
        }
        fn list_with_delimiter<'a, 'b, 'c>(
            &'a self,
            prefix: Option<&'b ObjPath>,
        ) -> BoxFuture<'c, object_store::Result<ListResult>>
        where
            'a: 'c,
            'b: 'c,
            Self: 'c,
        {
            self.inner.list_with_delimiter(prefix)
        }
        fn copy_opts<'a, 'b, 'c, 'd>(
            &'a self,
            from: &'b ObjPath,
            to: &'c ObjPath,
            options: CopyOptions,
        ) -> BoxFuture<'d, object_store::Result<()>>
        where
            'a: 'd,
            'b: 'd,
            'c: 'd,
            Self: 'd,
        {
            self.inner.copy_opts(from, to, options)
        }
    }

    #[tokio::test]
    async fn the_manifest_goes_first_and_a_crash_after_it_is_finished_by_a_rerun() {
        let dir = tempfile::tempdir().unwrap();
        let store = local(&dir);
        fake_run(&store, "acme", "r1", 3).await;
        let deleted = Arc::new(Mutex::new(Vec::new()));
        let crashing = Store::from_object_store(
            store.url.clone(),
            Arc::new(Crashing {
                inner: Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap(),
                ),
                deleted: deleted.clone(),
                crash: true,
            }),
        );
        let e = purge_run(&crashing, None, "acme", "r1").await.unwrap_err();
        assert!(e.to_string().contains("simulated crash"), "{e}");
        let log = deleted.lock().unwrap().clone();
        assert_eq!(
            log.first().map(String::as_str),
            Some("snapshots/tenant=acme/run=r1/_manifest.json"),
            "{log:?}"
        );
        // Uncommitted, with its part files still there.
        assert!(runs(&store, "acme").await.unwrap()[0].manifest.is_none());
        assert_eq!(keys(&store, "snapshots/tenant=acme/run=r1").await.len(), 3);

        let out = purge_run(&store, None, "acme", "r1").await.unwrap();
        assert_eq!(out.objects_deleted, 3);
        assert!(out.verified);
        assert!(keys(&store, "snapshots").await.is_empty());
    }

    #[tokio::test]
    async fn pin_unpin_and_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = local(&dir);
        fake_run(&store, "acme", "r1", 1).await;
        fake_run(&store, "acme", "r2", 1).await;
        fake_run(&store, "globex", "r1", 1).await;

        let p = pin(&store, "acme", "r1", "ticket OPS-12", "ops-bot", t0())
            .await
            .unwrap();
        assert_eq!(
            p,
            Pin {
                tenant: "acme".into(),
                run_id: "r1".into(),
                reason: "ticket OPS-12".into(),
                placed_by: "ops-bot".into(),
                placed_at: t0(),
            }
        );
        // Outside the run directory.
        assert_eq!(keys(&store, "pins").await, ["pins/tenant=acme/run=r1.json"]);
        assert_eq!(keys(&store, "snapshots/tenant=acme/run=r1").await.len(), 2);
        // Idempotent: the first pin stays as placed.
        let later = t0() + chrono::Duration::hours(1);
        let again = pin(&store, "acme", "r1", "other", "someone", later)
            .await
            .unwrap();
        assert_eq!(again, p);
        pin(&store, "globex", "r1", "legal hold", "ops", t0())
            .await
            .unwrap();

        assert_eq!(pins(&store, None).await.unwrap().len(), 2);
        assert_eq!(
            pins(&store, Some("acme")).await.unwrap(),
            std::slice::from_ref(&p)
        );
        assert!(pins(&store, Some("acm")).await.unwrap().is_empty());

        // A pinned run is not purged, and nothing of it is deleted.
        let e = purge_run(&store, None, "acme", "r1").await.unwrap_err();
        assert!(matches!(e, SnapshotError::Pinned { .. }), "{e}");
        assert_eq!(keys(&store, "snapshots/tenant=acme/run=r1").await.len(), 2);

        assert!(unpin(&store, "acme", "r1").await.unwrap());
        assert!(!unpin(&store, "acme", "r1").await.unwrap());
        assert_eq!(pins(&store, None).await.unwrap().len(), 1);
        assert!(
            purge_run(&store, None, "acme", "r1")
                .await
                .unwrap()
                .verified
        );
    }

    #[tokio::test]
    async fn pin_of_an_uncommitted_or_missing_run_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = local(&dir);
        fake_run(&store, "acme", "r1", 2).await;
        uncommit(&store, "acme", "r1").await.unwrap();
        for run in ["r1", "r404"] {
            let e = pin(&store, "acme", run, "keep", "ops", t0())
                .await
                .unwrap_err();
            assert!(matches!(e, SnapshotError::NoRun { .. }), "{e}");
        }
        assert!(keys(&store, "pins").await.is_empty());

        fake_run(&store, "acme", "r2", 1).await;
        for (reason, by) in [("", "ops"), ("  ", "ops"), ("keep", ""), ("a\nb", "ops")] {
            let e = pin(&store, "acme", "r2", reason, by, t0())
                .await
                .unwrap_err();
            assert!(
                matches!(e, SnapshotError::BadPin { .. }),
                "{reason:?} {by:?}: {e}"
            );
        }
        assert!(keys(&store, "pins").await.is_empty());
    }

    #[tokio::test]
    async fn unsafe_ids_are_refused_before_anything_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let store = local(&dir);
        fake_run(&store, "acme", "r1", 1).await;
        let before = keys(&store, "").await;
        for (tenant, run) in [
            ("acme", ""),
            ("", "r1"),
            ("acme", "r1/.."),
            ("acme", ".."),
            ("acme", "r1/"),
            ("acme", "*"),
            ("acme/run=r1", "x"),
            ("acme", "r 1"),
            ("acme", "run=r1"),
        ] {
            let e = purge_run(&store, None, tenant, run).await.unwrap_err();
            assert!(
                matches!(e, SnapshotError::UnsafeId { op: "purge", .. }),
                "{tenant:?} {run:?}: {e}"
            );
            let e = pin(&store, tenant, run, "r", "ops", t0())
                .await
                .unwrap_err();
            assert!(matches!(e, SnapshotError::UnsafeId { .. }), "{e}");
            let e = unpin(&store, tenant, run).await.unwrap_err();
            assert!(matches!(e, SnapshotError::UnsafeId { .. }), "{e}");
        }
        assert!(matches!(
            pins(&store, Some("../x")).await.unwrap_err(),
            SnapshotError::UnsafeId { .. }
        ));
        assert_eq!(keys(&store, "").await, before);
    }

    #[tokio::test]
    async fn an_s3_admin_for_another_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = local(&dir);
        fake_run(&store, "acme", "r1", 1).await;
        assert!(
            s3_admin_for(&StoreSpec::local(store.url.clone()))
                .await
                .unwrap()
                .is_none()
        );
        // Never connects: the check comes before any request.
        let client = || {
            aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::config::Builder::new()
                    .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                    .region(aws_sdk_s3::config::Region::new("us-east-1"))
                    .http_client(S3Admin::http_client())
                    .build(),
            )
        };
        let admin = S3Admin::from_client(client(), "bucket", "prod");
        let e = purge_run(&store, Some(&admin), "acme", "r1")
            .await
            .unwrap_err();
        assert!(
            matches!(e, SnapshotError::Store(StoreError::UnsafePurge { .. })),
            "{e}"
        );
        assert_eq!(keys(&store, "snapshots").await.len(), 2);

        let s3_store = Store::from_object_store(
            "s3://bucket/prod/backups",
            Arc::new(object_store::memory::InMemory::new()),
        );
        assert!(check_admin(&s3_store, &admin).is_err());
        let ok = S3Admin::from_client(client(), "bucket", "prod/backups/");
        assert!(check_admin(&s3_store, &ok).is_ok());
    }
}

/// THE deleter for what a snapshot rewrite replaced: `paths` (files of run `run` of `tenant`
/// that its manifest no longer lists, or never listed) with every version on a versioned bucket,
/// the earlier generations of the run's manifest, and last the rewrite marker. Returns the
/// objects and versions deleted. The caller records the audit records around it.
pub async fn purge_replaced(
    store: &Store,
    s3: Option<&S3Admin>,
    tenant: &str,
    run: &str,
    paths: &[String],
) -> Result<u64, crate::Error> {
    check_ids("purge", tenant, run)?;
    let prefix = format!("{}/", run_prefix(tenant, run));
    let manifest = crate::snapshot::manifest_key(tenant, run);
    let mut n = 0u64;
    for p in paths {
        if !p.starts_with(&prefix) || p.as_str() == manifest.as_ref() || p.contains("..") {
            return Err(crate::Error::Failed(format!(
                "refusing to purge {p}: not a part file of run {run} of tenant {tenant}"
            )));
        }
        let key = ObjPath::from(p.as_str());
        match s3 {
            Some(admin) => {
                let o = admin.purge_key(p).await?;
                n += o.versions_deleted + o.delete_markers_deleted;
            }
            None => {
                if store.delete_object(&key).await? {
                    n += 1;
                }
            }
        }
    }
    if let Some(admin) = s3 {
        let o = admin.purge_noncurrent(manifest.as_ref()).await?;
        n += o.versions_deleted + o.delete_markers_deleted;
    }
    let marker = crate::snapshot::rewrite::marker_key(tenant, run);
    match s3 {
        Some(admin) => {
            admin.purge_key(marker.as_ref()).await?;
        }
        None => {
            store.delete_object(&marker).await?;
        }
    }
    Ok(n)
}
