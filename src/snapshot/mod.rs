//! Snapshots: each tenant's tables as encrypted Parquet in the object store.
//!
//! Layout (DESIGN.md):
//! ```text
//! snapshots/tenant=<t>/run=<run-id>/<table>/part-<n>.parquet   encrypted Parquet
//! snapshots/tenant=<t>/run=<run-id>/_manifest.json             written last: its presence commits the run
//! ```
//! Invariants:
//! - A run is committed iff its `_manifest.json` exists; readers (`ls`, `restore`) trust only
//!   committed runs and only the files their manifest lists.
//! - Every Parquet file is encrypted with Parquet Modular Encryption (AES-GCM, encrypted footer,
//!   every column under the tenant's data key); statistics exist only inside the encrypted
//!   footer. No byte of personal data reaches the store in plaintext.
//! - Run ids sort by creation time (`YYYYMMDDTHHMMSSZ-<4 hex>`).

pub mod index;
pub mod manifest;
pub mod purge;
pub mod read;
pub mod refilter;
pub mod rewrite;
pub mod uploads;
pub mod write;

#[doc(hidden)]
pub mod testing;

use std::path::PathBuf;

use object_store::path::Path as ObjPath;
use thiserror::Error;

pub use manifest::{FileEntry, Manifest};

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("tenant {tenant}, table {table}: cannot write Parquet: {message}")]
    Encode {
        tenant: String,
        table: String,
        message: String,
    },
    #[error("{key}: {message}")]
    Decode { key: String, message: String },
    #[error("manifest {key} is unreadable: {message}")]
    BadManifest { key: String, message: String },
    #[error("tenant {tenant} has no committed snapshot run{}\n  fix: run `lethe snapshot ls` to see the committed runs", run.as_ref().map(|r| format!(" {r}")).unwrap_or_default())]
    NoRun { tenant: String, run: Option<String> },
    #[error("tenant {tenant}: snapshot failed: {message}")]
    Failed { tenant: String, message: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{path}: {source}")]
    LocalIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot verification failed: {0} problem(s), listed above")]
    VerifyFailed(usize),
    /// A tenant or run id that is not a plain identifier: in a key prefix it could widen a
    /// purge to a whole tenant or the store. Nothing was touched.
    #[error(
        "refusing to {op}: {what} id {value:?} is not a safe identifier (1 to 64 of A-Z a-z 0-9 _ -)"
    )]
    UnsafeId {
        op: &'static str,
        what: &'static str,
        value: String,
    },
    /// A purge of a pinned run. Nothing was deleted.
    #[error(
        "refusing to purge tenant {tenant} run {run}: it is pinned (since {placed_at})\n  fix: unpin it first (`lethe snapshot unpin`) if the pin is no longer needed"
    )]
    Pinned {
        tenant: String,
        run: String,
        placed_at: String,
    },
    #[error("cannot pin tenant {tenant} run {run}: {why}")]
    BadPin {
        tenant: String,
        run: String,
        why: &'static str,
    },
}

pub const SNAPSHOTS: &str = "snapshots";
pub const MANIFEST: &str = "_manifest.json";

pub fn tenant_prefix(tenant: &str) -> ObjPath {
    ObjPath::from(format!("{SNAPSHOTS}/tenant={tenant}"))
}

pub fn run_prefix(tenant: &str, run: &str) -> ObjPath {
    ObjPath::from(format!("{SNAPSHOTS}/tenant={tenant}/run={run}"))
}

pub fn manifest_key(tenant: &str, run: &str) -> ObjPath {
    ObjPath::from(format!("{SNAPSHOTS}/tenant={tenant}/run={run}/{MANIFEST}"))
}

pub fn part_key(tenant: &str, run: &str, table: &str, part: usize) -> ObjPath {
    ObjPath::from(format!(
        "{SNAPSHOTS}/tenant={tenant}/run={run}/{table}/part-{part}.parquet"
    ))
}

/// A new, time-sortable run id.
pub fn new_run_id(now: chrono::DateTime<chrono::Utc>) -> String {
    let mut suffix = [0u8; 2];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut suffix)
        .expect("system RNG");
    format!(
        "{}-{}",
        now.format("%Y%m%dT%H%M%SZ"),
        crate::util::hex(&suffix)
    )
}

/// The value of a `key=value` path segment, e.g. `tenant=acme` → `acme`.
pub fn segment_value<'a>(p: &'a ObjPath, key: &str) -> Option<&'a str> {
    p.as_ref()
        .rsplit('/')
        .next()?
        .strip_prefix(key)?
        .strip_prefix('=')
}
