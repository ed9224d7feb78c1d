//! Incomplete multipart uploads of snapshot files. A snapshot killed mid-upload (`kill -9`, a
//! lost machine) leaves its multipart upload open: encrypted parts of personal data that no
//! retention rule reaches, and storage that is billed. On S3 they are found
//! (`ListMultipartUploads` under `snapshots/`) and aborted:
//!
//! - by every snapshot run, right after it takes the `snapshot` lease (one snapshot run at a
//!   time): no other snapshot run is live, so every incomplete upload is abandoned;
//! - by retention runs: those begun before the live snapshot run took its lease (with a minute
//!   of margin for clock skew), or all when no snapshot run is live;
//! - on SIGTERM or Ctrl-C, by the run itself: those it began (the keys it opened multipart
//!   writers for; upload times are not trusted for this, some S3 servers report fixed ones);
//! - `lethe snapshot verify` reports them.
//!
//! The bucket lifecycle rule `AbortIncompleteMultipartUpload` is the second line (README).
//! GCS and Azure stores are not covered (Azure drops uncommitted blocks after 7 days itself).

use chrono::{DateTime, Utc};

use crate::s3::S3Admin;
use crate::store::Store;

/// The lease a snapshot run holds.
pub const SNAPSHOT_LEASE: &str = "snapshot";

/// One incomplete upload.
#[derive(Debug, Clone, PartialEq)]
pub struct Incomplete {
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<DateTime<Utc>>,
}

/// Every incomplete upload under `snapshots/` (S3 only; `None` for other stores).
pub async fn incomplete(
    spec: &crate::config::StoreSpec,
) -> crate::Result<Option<(S3Admin, Vec<Incomplete>)>> {
    if !spec.url.starts_with("s3://") {
        return Ok(None);
    }
    let admin = S3Admin::connect(spec).await?;
    let list = admin
        .multipart_uploads(&format!("{}/", crate::snapshot::SNAPSHOTS))
        .await?
        .into_iter()
        .map(|(key, upload_id, initiated)| Incomplete {
            key,
            upload_id,
            initiated,
        })
        .collect();
    Ok(Some((admin, list)))
}

/// Which uploads to abort.
#[derive(Debug, Clone, Copy)]
pub enum Whose {
    /// The caller holds the snapshot lease: no other snapshot run is live.
    AllAbandoned,
    /// Those no live snapshot run may own (retention, erasure).
    NotLive,
    /// Those this process began (on SIGTERM): the keys it opened multipart writers for.
    Mine,
}

/// Keys this process opened a multipart writer for ([`crate::store::Store::multipart_writer`]).
static MINE: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Remember that this process uploads `key` (relative to its store).
pub fn began(key: &str) {
    MINE.lock()
        .expect("uploads registry")
        .insert(key.to_string());
}

/// Abort incomplete uploads under `snapshots/` (see [`Whose`]); returns how many. Failures to
/// abort one are logged and counted out: the next run tries again.
pub async fn abort(
    spec: &crate::config::StoreSpec,
    store: &Store,
    whose: Whose,
) -> crate::Result<u64> {
    let Some((admin, list)) = incomplete(spec).await? else {
        return Ok(0);
    };
    if list.is_empty() {
        return Ok(0);
    }
    let margin = chrono::TimeDelta::seconds(60);
    let before: Option<DateTime<Utc>> = match whose {
        Whose::AllAbandoned | Whose::Mine => None,
        Whose::NotLive => crate::lease::live_holder(store, SNAPSHOT_LEASE, Utc::now())
            .await?
            .map(|h| h.acquired().unwrap_or_else(Utc::now) - margin),
    };
    let mut aborted = 0;
    for u in list {
        let go = match whose {
            Whose::AllAbandoned => true,
            Whose::Mine => MINE.lock().expect("uploads registry").contains(&u.key),
            Whose::NotLive => match (before, u.initiated) {
                (None, _) => true,
                (Some(b), Some(i)) => i < b,
                (Some(_), None) => false,
            },
        };
        if !go {
            continue;
        }
        match admin.abort_multipart(&u.key, &u.upload_id).await {
            Ok(()) => aborted += 1,
            Err(e) => {
                tracing::warn!(error = %e, "could not abort an incomplete upload; the next run tries again")
            }
        }
    }
    if aborted > 0 {
        tracing::info!(
            aborted,
            "incomplete multipart uploads of snapshot files aborted"
        );
    }
    Ok(aborted)
}
