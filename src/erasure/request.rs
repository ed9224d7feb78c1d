//! Erasure requests: `requests/tenant=<t>/<request-id>.json`, written create-only when a request
//! is received. A request names its subject by keyed hash (`hmac:…` under the keyring's subject
//! key) and keeps the normalized identifier sealed under the tenant's data key (AES-GCM, bound
//! to the request's id and tenant) until the primary phase is done; then only the hash remains.
//!
//! States: `received` → `primary_done` → `final`. Due dates come from the policy's `[erasure]`
//! (`primary_within`, `backups_within`); `--immediate` makes both due at receipt.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::path::Path as ObjPath;
use serde::{Deserialize, Serialize};

use crate::keys::DataKey;
use crate::store::Store;
use crate::util::rfc3339;

pub const FORMAT: &str = "lethe-request/1";
pub const PREFIX: &str = "requests";

/// What a request erases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One person, found from one identifier.
    Subject,
    /// A whole tenant (offboarding).
    Tenant,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Subject => "subject",
            Scope::Tenant => "tenant",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Received,
    PrimaryDone,
    Final,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Received => "received",
            State::PrimaryDone => "primary_done",
            State::Final => "final",
        }
    }
}

/// The identifier, sealed under the tenant's data key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// The data key it is sealed under.
    pub key_id: String,
    /// base64(nonce ‖ ciphertext ‖ tag).
    pub sealed: String,
}

/// One erasure request as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub format: String,
    pub id: String,
    pub tenant: String,
    pub scope: Scope,
    /// Identifier kind (data map `identifiers`), for subject requests.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub kind: Option<String>,
    /// `hmac:…` of `<kind>:<normalized identifier>` under the subject key.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub subject: Option<String>,
    /// The normalized identifier, sealed; removed once the primary phase is done.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub identifier: Option<Sealed>,
    /// The controller's own reference (a ticket number), if given.
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none", default)]
    pub reference: Option<String>,
    /// Where the request came from: `cli` or `intake`.
    pub source: String,
    pub immediate: bool,
    pub received_at: String,
    pub due_primary: String,
    pub due_backups: String,
    pub state: State,
    /// The policy the due dates were computed from.
    pub policy_version: String,
    /// Every identifier resolution found (`[[kind, value], …]` as JSON), sealed like the
    /// identifier and written before the first row goes: a run interrupted after deleting the
    /// row that linked two identifiers still erases both. Removed with the identifier.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub resolved: Option<Sealed>,
    /// What the primary phase did (set with `primary_done`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub primary: Option<PrimaryOutcome>,
    /// Tenant offboarding: when the tenant's data key was destroyed (crypto-erase), and which.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub key_destroyed: Option<KeyDestroyed>,
    /// What the backups phase did (set with `final`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub backups: Option<BackupsOutcome>,
    /// Snapshot runs the backups phase has rewritten (or checked and found clean) so far.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub rewritten: Vec<crate::snapshot::rewrite::Rewritten>,
    /// Erasure notices to sub-processors (`[[subprocessors]]`) and their answers.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub notices: Vec<Notice>,
}

/// One erasure notice to a sub-processor: what was sent, what came back. No identifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    pub subprocessor: String,
    /// `pending` (no answer yet), `accepted` (2xx), `refused` (4xx).
    pub status: NoticeStatus,
    /// Answer due by (RFC 3339): unanswered after it, the notice is overdue.
    pub due: String,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_sent_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_attempt_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub answered_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub http_status: Option<u16>,
    /// Why the last attempt got no answer (a timeout, a 5xx, a refused connection).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_error: Option<String>,
    /// Whether the identifier went with the notice (only over https, only where configured).
    #[serde(default)]
    pub identifier_sent: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeStatus {
    Pending,
    Accepted,
    Refused,
}

impl Notice {
    /// Answered (either way): nothing more to send.
    pub fn answered(&self) -> bool {
        self.status != NoticeStatus::Pending
    }

    /// Unanswered past its due date.
    pub fn overdue(&self, now: DateTime<Utc>) -> bool {
        !self.answered()
            && DateTime::parse_from_rfc3339(&self.due).is_ok_and(|t| t.with_timezone(&Utc) < now)
    }

    /// What a certificate says of it: `accepted`, `refused`, `unanswered` (past due), `pending`.
    pub fn outcome(&self, now: DateTime<Utc>) -> &'static str {
        match self.status {
            NoticeStatus::Accepted => "accepted",
            NoticeStatus::Refused => "refused",
            NoticeStatus::Pending if self.overdue(now) => "unanswered",
            NoticeStatus::Pending => "pending",
        }
    }
}

/// The tenant's data key, destroyed: every copy of its snapshots is unreadable from then on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyDestroyed {
    pub at: String,
    pub key_id: Option<String>,
    pub verified: String,
}

/// What the backups phase did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupsOutcome {
    pub done_at: String,
    pub plan_hash: String,
    /// Snapshot runs purged (every file and version).
    pub runs_purged: Vec<String>,
    /// Snapshot runs rewritten without the person's rows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs_rewritten: Vec<String>,
    pub verified: String,
}

/// What the primary phase of a request did, as the certificate will say it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrimaryOutcome {
    pub done_at: String,
    pub plan_hash: String,
    /// Identifiers of the person found by resolution, by kind (counts only).
    pub identifiers: std::collections::BTreeMap<String, usize>,
    /// Rows deleted per table.
    pub rows: std::collections::BTreeMap<String, u64>,
    pub blobs_deleted: u64,
    pub blobs_already_absent: u64,
    /// Rows kept, per table, and why (a legal hold, a statutory exception).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<KeptRows>,
    /// How it was verified.
    pub verified: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptRows {
    pub table: String,
    pub rows: u64,
    pub reason: String,
}

impl Request {
    pub fn key(&self) -> ObjPath {
        key(&self.tenant, &self.id)
    }

    /// Overdue at `now`: the phase it is in should have been done by now.
    pub fn overdue(&self, now: DateTime<Utc>) -> Option<&'static str> {
        let past =
            |t: &str| DateTime::parse_from_rfc3339(t).is_ok_and(|t| t.with_timezone(&Utc) < now);
        match self.state {
            State::Received if past(&self.due_primary) => Some("primary"),
            State::Received | State::PrimaryDone if past(&self.due_backups) => Some("backups"),
            _ => None,
        }
    }

    /// Sub-processors whose notice is unanswered past its due date.
    pub fn overdue_notices(&self, now: DateTime<Utc>) -> Vec<&str> {
        self.notices
            .iter()
            .filter(|n| n.overdue(now))
            .map(|n| n.subprocessor.as_str())
            .collect()
    }
}

pub fn key(tenant: &str, id: &str) -> ObjPath {
    ObjPath::from(format!("{PREFIX}/tenant={tenant}/{id}.json"))
}

/// A request id: the receipt time and 48 random bits.
pub fn new_id(now: DateTime<Utc>) -> String {
    let mut r = [0u8; 6];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r).expect("system RNG");
    format!("{}-{}", now.format("%Y%m%dT%H%M%SZ"), crate::util::hex(&r))
}

fn aad(tenant: &str, id: &str) -> Vec<u8> {
    format!("lethe/request/v1\0{tenant}\0{id}").into_bytes()
}

/// Seal `identifier` for request `id` of `key`'s tenant.
pub fn seal(key: &DataKey, id: &str, identifier: &str) -> Sealed {
    Sealed {
        key_id: key.key_id.clone(),
        sealed: B64.encode(crate::keys::seal_bytes(
            key,
            &aad(&key.tenant, id),
            identifier.as_bytes(),
        )),
    }
}

/// Open what [`seal`] sealed; `None` if it does not open under `key` for request `id`.
pub fn open(key: &DataKey, id: &str, s: &Sealed) -> Option<String> {
    if s.key_id != key.key_id {
        return None;
    }
    let raw = B64.decode(&s.sealed).ok()?;
    String::from_utf8(crate::keys::open_bytes(key, &aad(&key.tenant, id), &raw)?).ok()
}

/// Store a new request (create-only). `false` if one with its id exists already.
pub async fn create(store: &Store, r: &Request) -> Result<bool, crate::store::StoreError> {
    let bytes = Bytes::from(serde_json::to_vec_pretty(r).expect("serializable"));
    store.put_create(&r.key(), bytes).await
}

/// Store a request's next state over its previous one (under the destructive lease: one writer).
/// On a versioned S3 bucket the earlier generations are purged, so a sealed identifier does not
/// survive in an old version.
pub async fn update(
    store: &Store,
    s3: Option<&crate::s3::S3Admin>,
    r: &Request,
) -> Result<(), crate::store::StoreError> {
    let bytes = Bytes::from(serde_json::to_vec_pretty(r).expect("serializable"));
    store.put(&r.key(), bytes).await?;
    if let Some(s3) = s3 {
        s3.purge_noncurrent(r.key().as_ref()).await?;
    }
    Ok(())
}

/// Read request `id` of `tenant`; `None` if there is none.
pub async fn read(store: &Store, tenant: &str, id: &str) -> Result<Option<Request>, crate::Error> {
    let Some(bytes) = store.get_opt(&key(tenant, id)).await? else {
        return Ok(None);
    };
    let r: Request = serde_json::from_slice(&bytes).map_err(|e| {
        crate::Error::Failed(format!(
            "request {id} of tenant {tenant} is not readable: {e}"
        ))
    })?;
    if r.id != id || r.tenant != tenant {
        return Err(crate::Error::Failed(format!(
            "request {id} of tenant {tenant} names another request inside; it was moved or edited"
        )));
    }
    Ok(Some(r))
}

/// One stored request, or why it could not be read.
pub type Listed = Result<Request, (String, String)>;

/// Every request (of `tenant`, or of all), sorted by tenant and id. Unreadable files are listed
/// with their key and the reason.
pub async fn list(
    store: &Store,
    tenant: Option<&str>,
) -> Result<Vec<Listed>, crate::store::StoreError> {
    let prefix = match tenant {
        Some(t) => ObjPath::from(format!("{PREFIX}/tenant={t}")),
        None => ObjPath::from(PREFIX),
    };
    use futures::StreamExt;
    let mut metas = store.list(&prefix).await?;
    metas.sort_by(|a, b| a.location.cmp(&b.location));
    metas.retain(|m| m.location.as_ref().ends_with(".json"));
    // Read concurrently, keep the order.
    let read: Vec<_> = futures::stream::iter(metas)
        .map(|m| async move { store.get(&m.location).await.map(|b| (m, b)) })
        .buffered(32)
        .collect()
        .await;
    let mut out = Vec::new();
    for r in read {
        let (m, bytes) = r?;
        let key = m.location.to_string();
        out.push(match serde_json::from_slice::<Request>(&bytes) {
            Ok(r) if r.format == FORMAT && r.key() == m.location => Ok(r),
            Ok(r) if r.format != FORMAT => Err((key, format!("unknown format {:?}", r.format))),
            Ok(_) => Err((key, "its tenant or id does not match its key".into())),
            Err(e) => Err((key, format!("not a request: {e}"))),
        });
    }
    Ok(out)
}

/// The receipt and due times of a request received at `now`.
pub fn due(
    now: DateTime<Utc>,
    immediate: bool,
    e: &crate::policy::ErasurePolicy,
) -> Result<(String, String, String), crate::Error> {
    let after = |span: crate::span::Span| {
        if immediate {
            Ok(now)
        } else {
            span.after(now).ok_or_else(|| {
                crate::Error::Usage(format!("{span} after {} is out of range", rfc3339(now)))
            })
        }
    };
    Ok((
        rfc3339(now),
        rfc3339(after(e.primary_within)?),
        rfc3339(after(e.backups_within)?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(len: usize) -> DataKey {
        DataKey {
            tenant: "acme".into(),
            key_id: "k1".into(),
            key: vec![7u8; len],
            footer_key_metadata: vec![],
        }
    }

    #[test]
    fn a_sealed_identifier_opens_only_for_its_request_and_key() {
        for len in [16, 32] {
            let k = key(len);
            let s = seal(&k, "r1", "+6281234567890");
            assert!(!s.sealed.contains("6281234567890"));
            assert_eq!(open(&k, "r1", &s).as_deref(), Some("+6281234567890"));
            // Moved to another request, or under another key: does not open.
            assert_eq!(open(&k, "r2", &s), None);
            let mut other = key(len);
            other.key[0] ^= 1;
            assert_eq!(open(&other, "r1", &s), None);
            let mut moved = key(len);
            moved.tenant = "globex".into();
            assert_eq!(open(&moved, "r1", &s), None);
            // Tampered: does not open.
            let mut raw = B64.decode(&s.sealed).unwrap();
            raw[13] ^= 1;
            let t = Sealed {
                key_id: s.key_id.clone(),
                sealed: B64.encode(raw),
            };
            assert_eq!(open(&k, "r1", &t), None);
        }
    }

    #[test]
    fn overdue_follows_the_phase() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let mut r = Request {
            format: FORMAT.into(),
            id: "x".into(),
            tenant: "acme".into(),
            scope: Scope::Subject,
            kind: Some("phone".into()),
            subject: Some("hmac:00".into()),
            identifier: None,
            reference: None,
            source: "cli".into(),
            immediate: false,
            received_at: "2026-01-01T00:00:00Z".into(),
            due_primary: "2026-01-31T00:00:00Z".into(),
            due_backups: "2026-04-01T00:00:00Z".into(),
            state: State::Received,
            policy_version: "v".into(),
            resolved: None,
            primary: None,
            key_destroyed: None,
            backups: None,
            rewritten: Vec::new(),
            notices: Vec::new(),
        };
        assert_eq!(r.overdue(t("2026-01-30T00:00:00Z")), None);
        assert_eq!(r.overdue(t("2026-02-01T00:00:00Z")), Some("primary"));
        r.state = State::PrimaryDone;
        assert_eq!(r.overdue(t("2026-02-01T00:00:00Z")), None);
        assert_eq!(r.overdue(t("2026-04-02T00:00:00Z")), Some("backups"));
        r.state = State::Final;
        assert_eq!(r.overdue(t("2027-01-01T00:00:00Z")), None);
    }
}
