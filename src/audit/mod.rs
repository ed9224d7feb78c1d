//! The tamper-evident audit log: hash-chained records and signed checkpoints in the object store.
//!
//! ```text
//! audit/records/<seq, 12 digits>.json       {"seq":n,"prev":"sha256:<hex>","at":"<RFC 3339>","event":{…}}
//! audit/checkpoints/<seq, 12 digits>.json   {"seq":n,"record_hash":"sha256:<hex>","at":…,"key_id":…,"signature":<base64>}
//! audit/expiry.json                         signed marker of an expiry in progress (see below)
//! ```
//!
//! - A record's hash is sha256 of its stored bytes; `prev` is the hash of record `seq - 1`
//!   (`sha256:` + 64 zeros for seq 0). Records are serde_json of a fixed struct; the caller's
//!   event object has sorted keys (serde_json's map), so equal events give equal bytes.
//! - A checkpoint signs (Ed25519, [`crate::sign`]) the compact JSON of
//!   `{seq, record_hash, at, key_id}`: it vouches for record `seq` and, through the `prev`
//!   links, for every record before it. Certificates (JWS) are signed by the same key; a JWS
//!   signing input starts with `eyJ`, a checkpoint body with `{`, so one can never pass for the
//!   other.
//! - Every record and checkpoint is one atomic, create-only put (`PutMode::Create`): two writers
//!   can never both write seq n, and a crash between any two calls leaves a chain that verifies.
//!   With Object Lock ([`ObjectLockWriter`]) objects are written by `PutObject` with a retention
//!   date instead, which cannot be create-only: lethe checks that the key is free first, so two
//!   concurrent writers could still race; the lease that keeps one occurrence of a job running
//!   must prevent that there.
//! - [`AuditLog::expire`] deletes records older than the keep period, oldest first, but only up
//!   to a checkpoint whose record is itself that old, so what remains starts right after a signed
//!   checkpoint. It writes a signed marker first: a crash half-way leaves records whose head is not
//!   anchored yet, which [`verify`] then reports as an interrupted expiry (a note, not a
//!   violation) instead of as removed records; running expire again finishes it.
//!
//! Invariant: no personal data ever goes into a record. Callers pass counts, table names,
//! categories, tenant ids, plan and policy hashes, keyed hashes of subject ids — never cell
//! values, names, e-mail addresses or phone numbers. Records outlive erasures by design (they
//! prove them), so anything personal in them could never be erased.
//!
//! What [`verify`] can and cannot see:
//! - it finds gaps, edited, swapped, moved or inserted records, edited or foreign checkpoints, and
//!   records removed from the head (unless an expiry that a valid signed marker announced was
//!   interrupted);
//! - records after the newest checkpoint are vouched for by nothing but their hashes: they are
//!   counted as *not yet checkpointed* (normal after a crash, and between a run's last record and
//!   its checkpoint). Removing such records from the tail, or appending well-linked ones, cannot be
//!   detected by hashes alone; removing the tail up to a checkpointed record is reported, because
//!   the checkpoint names a record that is gone. Checkpoint often (every run) to keep that window
//!   small, and use Object Lock where the bucket has it.
//!
//! On a versioned bucket (Object Lock requires versioning), expiry hides old records behind
//! delete markers; their versions stay until their lock ends and a lifecycle rule for noncurrent
//! versions removes them.

pub mod event;

use std::collections::{BTreeMap, HashSet};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::s3::{Lock, S3Admin};
use crate::sign::{SigningKey, key_id_of};
use crate::span::Span;
use crate::store::{Store, StoreError};
use crate::util::{rfc3339, sha256_hex};

/// Where records go.
pub const RECORDS: &str = "audit/records";
/// Where checkpoints go.
pub const CHECKPOINTS: &str = "audit/checkpoints";
/// The signed marker of an expiry in progress.
pub const EXPIRY_MARKER: &str = "audit/expiry.json";
/// `prev` of record 0.
pub const GENESIS_PREV: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";
/// Seqs are 12 digits in keys, so that key order is seq order.
pub const MAX_SEQ: u64 = 999_999_999_999;

/// Concurrent GETs while verifying.
const READ_AHEAD: usize = 16;

#[derive(Debug, Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "audit event must be a JSON object, got {got}\n  fix: pass an object such as {{\"step\": \"retention\", \"phase\": \"start\", …}} (counts, tables, ids and hashes only)"
    )]
    EventNotObject { got: &'static str },
    #[error(
        "audit record {key} already exists: another writer appended it first (the log's head is now seq {head})\n  fix: retry; if this repeats, two lethe runs are writing at once — check the job leases under locks/"
    )]
    Conflict { key: String, head: u64 },
    #[error(
        "audit checkpoint {key} already exists and does not vouch for the head this writer appended\n  fix: run `lethe audit verify`"
    )]
    CheckpointConflict { key: String },
    #[error(
        "audit log {key}: {problem}\n  fix: run `lethe audit verify`, and restore the audit objects from a backup or an older object version"
    )]
    Corrupt { key: String, problem: String },
    #[error(
        "refusing to expire the audit log: {key}: {problem}\n  fix: run `lethe audit verify`; expiry never deletes evidence of tampering, so resolve it first"
    )]
    Tampered { key: String, problem: String },
    /// The run no longer holds its lease: nothing more may be recorded (or deleted).
    #[error(transparent)]
    Lease(#[from] crate::lease::LeaseError),
    #[error("the audit log is full: seq {seq} would not fit 12 digits")]
    Exhausted { seq: u64 },
    /// The signing-key history beside the signing key is unreadable.
    #[error(transparent)]
    Sign(#[from] crate::sign::SignError),
    #[error("audit time {at} plus {span} is out of range")]
    TimeRange { at: String, span: Span },
}

impl AuditError {
    /// Only store configuration problems are the operator's (exit code 2); everything else is a
    /// failed job or a found violation (exit code 1).
    pub fn is_configuration(&self) -> bool {
        matches!(self, AuditError::Store(e) if e.is_configuration())
            || matches!(self, AuditError::Sign(e) if e.is_configuration())
    }
}

/// `audit/records/<seq:012>.json`.
pub fn record_key(seq: u64) -> String {
    format!("{RECORDS}/{seq:012}.json")
}

/// `audit/checkpoints/<seq:012>.json`.
pub fn checkpoint_key(seq: u64) -> String {
    format!("{CHECKPOINTS}/{seq:012}.json")
}

/// `sha256:<hex>` of `bytes`.
pub fn hash_of(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

fn seq_of(key: &str, dir: &str) -> Option<u64> {
    let name = key
        .strip_prefix(dir)?
        .strip_prefix('/')?
        .strip_suffix(".json")?;
    (name.len() == 12 && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

/// One audit record, exactly as stored (field order is the serialization order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub seq: u64,
    /// `sha256:<hex>` of the previous record's stored bytes.
    pub prev: String,
    /// RFC 3339, UTC.
    pub at: String,
    /// The caller's event: an object of counts, names, ids and hashes.
    pub event: serde_json::Value,
}

/// A signed checkpoint, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub seq: u64,
    /// `sha256:<hex>` of record `seq`'s stored bytes.
    pub record_hash: String,
    /// RFC 3339, UTC.
    pub at: String,
    /// `ed25519:<16 hex>` of the signing key.
    pub key_id: String,
    /// base64 (standard, padded) Ed25519 signature of [`Checkpoint::signed_bytes`].
    pub signature: String,
}

#[derive(Serialize)]
struct CheckpointBody<'a> {
    seq: u64,
    record_hash: &'a str,
    at: &'a str,
    key_id: &'a str,
}

impl Checkpoint {
    /// The bytes the signature covers: compact JSON of `{seq, record_hash, at, key_id}`.
    pub fn signed_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&CheckpointBody {
            seq: self.seq,
            record_hash: &self.record_hash,
            at: &self.at,
            key_id: &self.key_id,
        })
        .expect("serializable")
    }

    fn signed(seq: u64, record_hash: &str, at: DateTime<Utc>, signer: &SigningKey) -> Checkpoint {
        let mut cp = Checkpoint {
            seq,
            record_hash: record_hash.into(),
            at: rfc3339(at),
            key_id: signer.key_id(),
            signature: String::new(),
        };
        cp.signature = B64.encode(signer.sign(&cp.signed_bytes()));
        cp
    }

    /// `Err(why)` unless signed by one of `keys` (the audit key, or a retired one whose
    /// checkpoints keep verifying after `lethe keys rotate`).
    pub fn check_signature_by(&self, keys: &crate::sign::PublicKeys) -> Result<(), String> {
        match keys.by_key_id(&self.key_id) {
            Some(pk) => self.check_signature(&pk),
            None => Err(format!(
                "signed by key {}, which is neither the audit key nor one it replaced",
                self.key_id
            )),
        }
    }

    /// `Err(why)` unless signed by `public_key`.
    pub fn check_signature(&self, public_key: &[u8]) -> Result<(), String> {
        let expected = key_id_of(public_key);
        if self.key_id != expected {
            return Err(format!(
                "signed by key {}, not by the audit key {expected}",
                self.key_id
            ));
        }
        let sig = B64
            .decode(&self.signature)
            .map_err(|_| "signature is not base64".to_string())?;
        if crate::sign::verify(public_key, &self.signed_bytes(), &sig) {
            Ok(())
        } else {
            Err("bad signature: the checkpoint was edited, or signed by another key".into())
        }
    }
}

/// The signed marker an expiry writes before it deletes anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpiryMarker {
    purpose: String,
    /// First record seq the expiry deletes.
    from_seq: u64,
    /// Last record seq it deletes: the anchor checkpoint's seq.
    through_seq: u64,
    at: String,
    key_id: String,
    signature: String,
}

const EXPIRY_PURPOSE: &str = "lethe audit expiry";

impl ExpiryMarker {
    fn signed_bytes(&self) -> Vec<u8> {
        let mut m = self.clone();
        m.signature.clear();
        serde_json::to_vec(&m).expect("serializable")
    }
    fn is_valid(&self, public_key: &[u8]) -> bool {
        self.purpose == EXPIRY_PURPOSE
            && self.key_id == key_id_of(public_key)
            && B64
                .decode(&self.signature)
                .is_ok_and(|sig| crate::sign::verify(public_key, &self.signed_bytes(), &sig))
    }
}

/// Where a record landed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordRef {
    pub seq: u64,
    /// `sha256:<hex>` of the record's stored bytes.
    pub hash: String,
}

impl RecordRef {
    pub fn key(&self) -> String {
        record_key(self.seq)
    }
}

/// Where a checkpoint landed and what it vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointRef {
    pub seq: u64,
    pub record_hash: String,
    pub key_id: String,
}

impl CheckpointRef {
    pub fn key(&self) -> String {
        checkpoint_key(self.seq)
    }
}

/// What an expiry did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExpireOutcome {
    /// The checkpoint the remaining chain starts after.
    pub anchor: Option<u64>,
    pub records_deleted: u64,
    pub checkpoints_deleted: u64,
}

/// Writes audit records and checkpoints under Object Lock (S3 buckets that have it).
pub struct ObjectLockWriter {
    pub admin: S3Admin,
    /// `GOVERNANCE` or `COMPLIANCE`.
    pub mode: String,
    /// Each object is locked until its `at` plus this.
    pub retain: Span,
}

impl std::fmt::Debug for ObjectLockWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectLockWriter")
            .field("bucket", &self.admin.bucket)
            .field("prefix", &self.admin.prefix)
            .field("mode", &self.mode)
            .field("retain", &self.retain)
            .finish()
    }
}

impl ObjectLockWriter {
    pub fn new(admin: S3Admin, mode: impl Into<String>, retain: Span) -> ObjectLockWriter {
        ObjectLockWriter {
            admin,
            mode: mode.into(),
            retain,
        }
    }
}

/// An [`ObjectLockWriter`] when the store is `s3://` and its bucket has Object Lock enabled
/// (mode and period from `[audit]` in lethe.toml); `None` otherwise.
pub async fn object_lock_writer(
    cfg: &crate::config::Config,
) -> Result<Option<ObjectLockWriter>, AuditError> {
    if !cfg.store.url.starts_with("s3://") {
        return Ok(None);
    }
    let admin = S3Admin::connect(&cfg.store).await?;
    if !admin.object_lock_enabled().await? {
        return Ok(None);
    }
    Ok(Some(ObjectLockWriter::new(
        admin,
        cfg.audit.lock_mode.clone(),
        cfg.audit.lock_retain,
    )))
}

/// Objects under `dir` by seq, and the keys that are not `<12 digits>.json`.
pub(crate) async fn list_seqs(
    store: &Store,
    dir: &str,
) -> Result<(BTreeMap<u64, String>, Vec<String>), StoreError> {
    let mut seqs = BTreeMap::new();
    let mut strays = Vec::new();
    for meta in store.list(&ObjPath::from(dir)).await? {
        let key = meta.location.to_string();
        match seq_of(&key, dir) {
            Some(seq) => {
                seqs.insert(seq, key);
            }
            None => strays.push(key),
        }
    }
    Ok((seqs, strays))
}

/// What pairs a `start` record with its `end`: the step and the fields naming what it acted on.
fn pairing_key(event: &serde_json::Value) -> String {
    let f = |k: &str| event.get(k).map(|v| v.to_string()).unwrap_or_default();
    format!(
        "{}|{}|{}|{}|{}|{}",
        f("step"),
        f("plan_hash"),
        f("table"),
        f("category"),
        f("tenant"),
        f("run_id")
    )
}

/// Seqs of `start` records without their `end` (nor a `recovery` record closing them), in order.
fn unclosed_starts<'a>(events: impl Iterator<Item = (u64, &'a serde_json::Value)>) -> Vec<u64> {
    let mut open: Vec<(u64, String)> = Vec::new();
    for (seq, e) in events {
        match e.get("phase").and_then(|p| p.as_str()) {
            Some("start") => open.push((seq, pairing_key(e))),
            Some("end") => {
                let k = pairing_key(e);
                if let Some(i) = open.iter().rposition(|(_, o)| *o == k) {
                    open.remove(i);
                }
            }
            _ if e.get("step").and_then(|s| s.as_str()) == Some("recovery") => {
                let closes: Vec<u64> = e
                    .get("closes")
                    .and_then(|c| c.as_array())
                    .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
                    .unwrap_or_default();
                open.retain(|(s, _)| !closes.contains(s));
            }
            _ => {}
        }
    }
    open.into_iter().map(|(s, _)| s).collect()
}

/// A record of the log as something outside the log remembers it: the keyring directory's
/// anchor file (written after every checkpoint), a snapshot manifest (the newest checkpoint when
/// the snapshot ran). A log that ends before it, or holds another record there, was truncated
/// or rewritten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    pub seq: u64,
    pub record_hash: String,
    /// Where this anchor was found (a file or an object key); not stored.
    #[serde(skip)]
    pub source: String,
}

/// The anchor file beside the keyring: kept where an attacker with write access to `audit/`
/// in the store cannot rewrite it.
pub fn anchor_path(keyring: &std::path::Path) -> std::path::PathBuf {
    keyring
        .parent()
        .unwrap_or_else(|| std::path::Path::new("."))
        .join("audit-anchor.json")
}

/// Record `cp` in the anchor file (never moving it backwards).
pub fn write_anchor(keyring: &std::path::Path, cp: &CheckpointRef) -> std::io::Result<()> {
    let path = anchor_path(keyring);
    if let Some(old) = read_anchor(&path)
        && old.seq >= cp.seq
    {
        return Ok(());
    }
    let a = Anchor {
        seq: cp.seq,
        record_hash: cp.record_hash.clone(),
        source: String::new(),
    };
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&a).expect("serializable"))?;
    std::fs::rename(&tmp, &path)
}

/// The anchor file's anchor, if there is one.
pub fn read_anchor(path: &std::path::Path) -> Option<Anchor> {
    let b = std::fs::read(path).ok()?;
    let mut a: Anchor = serde_json::from_slice(&b).ok()?;
    a.source = path.display().to_string();
    Some(a)
}

/// The newest checkpoint in the store as stored (signature not checked), with its key.
pub async fn newest_checkpoint(store: &Store) -> Result<Option<(String, Checkpoint)>, StoreError> {
    let (cps, _) = list_seqs(store, CHECKPOINTS).await?;
    for (_, key) in cps.iter().rev() {
        if let Some(b) = store.get_opt(&ObjPath::from(key.as_str())).await?
            && let Ok(cp) = serde_json::from_slice::<Checkpoint>(&b)
        {
            return Ok(Some((key.clone(), cp)));
        }
    }
    Ok(None)
}

async fn delete_if_present(store: &Store, key: &str) -> Result<bool, StoreError> {
    store.delete_object(&ObjPath::from(key)).await
}

fn parse_time(at: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(at)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

enum Put {
    Written,
    Exists,
}

/// The append-only audit log of one store.
pub struct AuditLog {
    store: Store,
    signer: SigningKey,
    lock: Option<ObjectLockWriter>,
    /// The lease of the run writing: checked before every record (and so before every
    /// destructive step, which records its start first).
    lease: Option<std::sync::Arc<crate::lease::Lease>>,
    /// The last record written (or, once every record has expired, the newest checkpoint's).
    head: Option<RecordRef>,
    /// What stamps records and checkpoints (the wall clock, also under `--now`: a record says
    /// when it was written; the plan's "as of" is in the event).
    clock: std::sync::Arc<dyn crate::clock::Clock>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("store", &self.store)
            .field("key_id", &self.signer.key_id())
            .field("lock", &self.lock)
            .field("head", &self.head)
            .finish()
    }
}

impl AuditLog {
    /// Open the log and find its head: the highest record (listed from the newest checkpoint
    /// on, so a long log is not listed whole), or the newest checkpoint when every record has
    /// expired.
    pub async fn open(
        store: Store,
        signer: SigningKey,
        lock: Option<ObjectLockWriter>,
        clock: std::sync::Arc<dyn crate::clock::Clock>,
    ) -> Result<AuditLog, AuditError> {
        let head = find_head(&store, &signer).await?;
        Ok(AuditLog {
            store,
            signer,
            lock,
            lease: None,
            head,
            clock,
        })
    }

    /// Check `lease` before every record from now on.
    pub fn guard(&mut self, lease: std::sync::Arc<crate::lease::Lease>) {
        self.lease = Some(lease);
    }

    /// Close the `start` records an interrupted run left without their `end`: one `recovery`
    /// record lists them (their outcome is unknown; the run that follows re-counts and finishes
    /// the work). Only records after the newest checkpoint are looked at: a run checkpoints last,
    /// so an interrupted run's records are all there. Returns the seqs closed.
    pub async fn close_interrupted(&mut self) -> Result<Vec<u64>, AuditError> {
        let Some(head) = self.head.clone() else {
            return Ok(vec![]);
        };
        let (cps, _) = list_seqs(&self.store, CHECKPOINTS).await?;
        let from = cps.keys().next_back().map_or(0, |c| c + 1);
        let mut events = Vec::new();
        for seq in from..=head.seq {
            let Some(b) = self.store.get_opt(&ObjPath::from(record_key(seq))).await? else {
                continue;
            };
            if let Ok(r) = serde_json::from_slice::<Record>(&b) {
                events.push((seq, r.event));
            }
        }
        let open = unclosed_starts(events.iter().map(|(s, e)| (*s, e)));
        if open.is_empty() {
            return Ok(open);
        }
        tracing::warn!(
            records = ?open,
            "an earlier run was interrupted between a start record and its end; recording that their outcome is unknown (this run re-counts and finishes the work)"
        );
        self.record(&event::Recovery {
            step: "recovery",
            phase: "note",
            closes: &open,
            reason: "the run that wrote these start records was interrupted before their end; the following run re-counted and finished the work",
        })
        .await?;
        Ok(open)
    }

    /// The last record (`None` for an empty log).
    pub fn head(&self) -> Option<&RecordRef> {
        self.head.as_ref()
    }

    pub fn signer(&self) -> &SigningKey {
        &self.signer
    }

    /// Append `event` (a JSON object without personal data) as the next record.
    pub async fn append(&mut self, event: serde_json::Value) -> Result<RecordRef, AuditError> {
        let at = self.clock.now();
        if !event.is_object() {
            let got = match event {
                serde_json::Value::Null => "null",
                serde_json::Value::Bool(_) => "a boolean",
                serde_json::Value::Number(_) => "a number",
                serde_json::Value::String(_) => "a string",
                serde_json::Value::Array(_) => "an array",
                serde_json::Value::Object(_) => unreachable!(),
            };
            return Err(AuditError::EventNotObject { got });
        }
        if let Some(l) = &self.lease {
            l.ensure()?;
        }
        let (seq, prev) = match &self.head {
            Some(h) => (h.seq + 1, h.hash.clone()),
            None => (0, GENESIS_PREV.to_string()),
        };
        if seq > MAX_SEQ {
            return Err(AuditError::Exhausted { seq });
        }
        let record = Record {
            seq,
            prev,
            at: rfc3339(at),
            event,
        };
        let bytes = serde_json::to_vec(&record).expect("serializable");
        let hash = hash_of(&bytes);
        let key = record_key(seq);
        match self.put_new(&key, Bytes::from(bytes), at).await? {
            Put::Written => {
                let r = RecordRef { seq, hash };
                self.head = Some(r.clone());
                Ok(r)
            }
            Put::Exists => {
                self.head = find_head(&self.store, &self.signer).await?;
                Err(AuditError::Conflict {
                    key,
                    head: self.head.as_ref().map_or(0, |h| h.seq),
                })
            }
        }
    }

    /// Append a typed event (a struct that serializes to an object of counts, names, ids and
    /// hashes — what the deleters write), as [`AuditLog::append`] does.
    pub async fn record<E: Serialize>(&mut self, event: &E) -> Result<RecordRef, AuditError> {
        self.append(serde_json::to_value(event).expect("audit events serialize"))
            .await
    }

    /// Sign a checkpoint for the head record; `None` for an empty log. Idempotent: a valid
    /// checkpoint of the same record already there is returned as is.
    pub async fn checkpoint(&mut self) -> Result<Option<CheckpointRef>, AuditError> {
        let at = self.clock.now();
        let Some(head) = self.head.clone() else {
            return Ok(None);
        };
        let cp = Checkpoint::signed(head.seq, &head.hash, at, &self.signer);
        let key = checkpoint_key(head.seq);
        let bytes = serde_json::to_vec(&cp).expect("serializable");
        let written = CheckpointRef {
            seq: cp.seq,
            record_hash: cp.record_hash.clone(),
            key_id: cp.key_id.clone(),
        };
        match self.put_new(&key, Bytes::from(bytes), at).await? {
            Put::Written => Ok(Some(written)),
            Put::Exists => {
                let existing = self.store.get(&ObjPath::from(key.as_str())).await?;
                match serde_json::from_slice::<Checkpoint>(&existing) {
                    Ok(old)
                        if old.seq == head.seq
                            && old.record_hash == head.hash
                            && old.check_signature(&self.signer.public_key()).is_ok() =>
                    {
                        Ok(Some(CheckpointRef {
                            seq: old.seq,
                            record_hash: old.record_hash,
                            key_id: old.key_id,
                        }))
                    }
                    _ => Err(AuditError::CheckpointConflict { key }),
                }
            }
        }
    }

    /// Delete records older than `keep` (at `now`), oldest first, up to and including the
    /// newest valid checkpoint whose record — and every record before it — is that old; then
    /// the checkpoints older than that anchor. The newest checkpoint is never deleted. Refuses
    /// (deleting nothing) when the part to delete does not verify. Writes a "start" record
    /// before it deletes and an "end" record after.
    pub async fn expire(
        &mut self,
        now: DateTime<Utc>,
        keep: Span,
    ) -> Result<ExpireOutcome, AuditError> {
        let public = crate::sign::PublicKeys::of(&self.signer)?;
        let (records, _) = list_seqs(&self.store, RECORDS).await?;
        let (checkpoints, _) = list_seqs(&self.store, CHECKPOINTS).await?;

        // The old prefix of the chain: consecutive, linked records older than `keep`.
        let mut old: BTreeMap<u64, String> = BTreeMap::new();
        let mut last: Option<(u64, String)> = None;
        for (&seq, key) in &records {
            if let Some((p, _)) = &last
                && seq != p + 1
            {
                return Err(AuditError::Tampered {
                    key: record_key(p + 1),
                    problem: "missing (seq gap)".into(),
                });
            }
            let bytes = self.store.get(&ObjPath::from(key.as_str())).await?;
            let tampered = |problem: String| AuditError::Tampered {
                key: key.clone(),
                problem,
            };
            let rec: Record =
                serde_json::from_slice(&bytes).map_err(|e| tampered(format!("unparsable: {e}")))?;
            if rec.seq != seq {
                return Err(tampered(format!("holds seq {}", rec.seq)));
            }
            if let Some((_, prev)) = &last
                && &rec.prev != prev
            {
                return Err(tampered(
                    "prev does not match the previous record's hash".into(),
                ));
            }
            let at =
                parse_time(&rec.at).ok_or_else(|| tampered(format!("bad time {:?}", rec.at)))?;
            if keep.after(at).is_none_or(|t| t > now) {
                break;
            }
            let hash = hash_of(&bytes);
            old.insert(seq, hash.clone());
            last = Some((seq, hash));
        }

        // The new anchor: the newest checkpoint inside the old prefix.
        let mut anchor = None;
        for (&seq, key) in checkpoints.iter().rev() {
            let Some(hash) = old.get(&seq) else { continue };
            let bytes = self.store.get(&ObjPath::from(key.as_str())).await?;
            let tampered = |problem: String| AuditError::Tampered {
                key: key.clone(),
                problem,
            };
            let cp: Checkpoint =
                serde_json::from_slice(&bytes).map_err(|e| tampered(format!("unparsable: {e}")))?;
            if cp.seq != seq {
                return Err(tampered(format!("holds seq {}", cp.seq)));
            }
            cp.check_signature_by(&public).map_err(tampered)?;
            if &cp.record_hash != hash {
                return Err(AuditError::Tampered {
                    key: record_key(seq),
                    problem: format!("does not match checkpoint {key}"),
                });
            }
            anchor = Some(seq);
            break;
        }
        // Without a new anchor the chain's current one stays; checkpoints older than it (left
        // by an interrupted expiry) may still go.
        let anchor = anchor.or_else(|| match records.keys().next() {
            Some(&first) if first > 0 => {
                checkpoints.contains_key(&(first - 1)).then_some(first - 1)
            }
            Some(_) => None,
            None => checkpoints.keys().next_back().copied(),
        });
        let Some(anchor) = anchor else {
            return Ok(ExpireOutcome::default());
        };
        let doomed_records: Vec<u64> = records.range(..=anchor).map(|(s, _)| *s).collect();
        let doomed_checkpoints: Vec<u64> = checkpoints.range(..anchor).map(|(s, _)| *s).collect();
        let marker_key = ObjPath::from(EXPIRY_MARKER);
        if doomed_records.is_empty() && doomed_checkpoints.is_empty() {
            delete_if_present(&self.store, EXPIRY_MARKER).await?;
            return Ok(ExpireOutcome {
                anchor: Some(anchor),
                ..ExpireOutcome::default()
            });
        }

        tracing::info!(
            anchor,
            records = doomed_records.len(),
            checkpoints = doomed_checkpoints.len(),
            "audit expiry: start"
        );
        self.record(&event::ExpireStart {
            step: "audit-expire",
            phase: "start",
            keep: keep.to_string(),
            anchor_checkpoint: anchor,
            records: doomed_records.len(),
            checkpoints: doomed_checkpoints.len(),
        })
        .await?;
        if let Some(&from_seq) = doomed_records.first() {
            let mut marker = ExpiryMarker {
                purpose: EXPIRY_PURPOSE.into(),
                from_seq,
                through_seq: anchor,
                at: rfc3339(now),
                key_id: self.signer.key_id(),
                signature: String::new(),
            };
            marker.signature = B64.encode(self.signer.sign(&marker.signed_bytes()));
            self.store
                .put(
                    &marker_key,
                    Bytes::from(serde_json::to_vec(&marker).expect("serializable")),
                )
                .await?;
        }
        let mut outcome = ExpireOutcome {
            anchor: Some(anchor),
            ..ExpireOutcome::default()
        };
        for seq in &doomed_records {
            if delete_if_present(&self.store, &record_key(*seq)).await? {
                outcome.records_deleted += 1;
            }
        }
        for seq in &doomed_checkpoints {
            if delete_if_present(&self.store, &checkpoint_key(*seq)).await? {
                outcome.checkpoints_deleted += 1;
            }
        }
        delete_if_present(&self.store, EXPIRY_MARKER).await?;
        self.record(&event::ExpireEnd {
            step: "audit-expire",
            phase: "end",
            anchor_checkpoint: anchor,
            records_deleted: outcome.records_deleted,
            checkpoints_deleted: outcome.checkpoints_deleted,
        })
        .await?;
        tracing::info!(
            anchor,
            records_deleted = outcome.records_deleted,
            checkpoints_deleted = outcome.checkpoints_deleted,
            "audit expiry: end"
        );
        Ok(outcome)
    }

    /// Write a new object: create-only, or under Object Lock (checked free first).
    async fn put_new(&self, key: &str, bytes: Bytes, at: DateTime<Utc>) -> Result<Put, AuditError> {
        let path = ObjPath::from(key);
        match &self.lock {
            Some(l) => {
                if self.store.head(&path).await?.is_some() {
                    return Ok(Put::Exists);
                }
                let retain_until = l.retain.after(at).ok_or_else(|| AuditError::TimeRange {
                    at: rfc3339(at),
                    span: l.retain,
                })?;
                l.admin
                    .put_locked(
                        key,
                        bytes,
                        &Lock {
                            mode: l.mode.clone(),
                            retain_until,
                        },
                    )
                    .await?;
                Ok(Put::Written)
            }
            None => {
                if self.store.put_create(&path, bytes).await? {
                    Ok(Put::Written)
                } else {
                    Ok(Put::Exists)
                }
            }
        }
    }
}

async fn find_head(store: &Store, signer: &SigningKey) -> Result<Option<RecordRef>, AuditError> {
    let (checkpoints, _) = list_seqs(store, CHECKPOINTS).await?;
    let newest_cp = checkpoints.keys().next_back().copied();
    // Records sort like their seqs, so listing after the newest checkpoint's seq finds the head.
    let records_dir = ObjPath::from(RECORDS);
    let listed: Vec<_> = match newest_cp {
        Some(c) => {
            let offset = ObjPath::from(format!("{RECORDS}/{c:012}"));
            store.list_after(&records_dir, &offset).await?
        }
        None => store.list(&records_dir).await?,
    };
    let top = listed
        .iter()
        .filter_map(|m| seq_of(m.location.as_ref(), RECORDS))
        .max();
    match (top, newest_cp) {
        (Some(seq), _) => {
            let bytes = store.get(&ObjPath::from(record_key(seq))).await?;
            Ok(Some(RecordRef {
                seq,
                hash: hash_of(&bytes),
            }))
        }
        (None, None) => Ok(None),
        (None, Some(c)) => {
            // Nothing at or after the newest checkpoint: every record expired (then the chain
            // goes on from the checkpoint), or the tail was removed (then refuse to write).
            if store.any_under(&records_dir).await? {
                return Err(AuditError::Corrupt {
                    key: record_key(c),
                    problem: format!(
                        "missing, though checkpoint {} vouches for it: records were removed from the end of the log",
                        checkpoint_key(c)
                    ),
                });
            }
            let key = checkpoint_key(c);
            let bytes = store.get(&ObjPath::from(key.as_str())).await?;
            let cp: Checkpoint =
                serde_json::from_slice(&bytes).map_err(|e| AuditError::Corrupt {
                    key: key.clone(),
                    problem: format!("unparsable: {e}"),
                })?;
            let keys = crate::sign::PublicKeys::of(signer)?;
            cp.check_signature_by(&keys)
                .map_err(|problem| AuditError::Corrupt {
                    key: key.clone(),
                    problem,
                })?;
            if cp.seq != c {
                return Err(AuditError::Corrupt {
                    key,
                    problem: format!("holds seq {}", cp.seq),
                });
            }
            Ok(Some(RecordRef {
                seq: c,
                hash: cp.record_hash,
            }))
        }
    }
}

/// What is wrong with an audit object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A record is missing between two others.
    Missing,
    /// A record's `prev` does not match the previous record's hash, and which of the two
    /// changed cannot be told.
    BrokenLink,
    /// A record no longer has the hash a checkpoint (directly, or through the links after it)
    /// vouches for.
    Edited,
    /// A record holds another seq than its key: moved, swapped or inserted.
    WrongSeq,
    Unparsable,
    /// The first remaining record is not anchored by a checkpoint just before it.
    RemovedHead,
    /// A checkpoint vouches for a record after the last one left.
    RemovedTail,
    /// A checkpoint that is unparsable, signed by another key or edited.
    BadCheckpoint,
    /// An object under `audit/records/` or `audit/checkpoints/` that is not `<12 digits>.json`.
    Unexpected,
    /// The log is shorter than (or differs from) what was anchored outside it.
    Truncated,
    /// A `start` record without its `end` (and no recovery record) inside the checkpointed range.
    StartWithoutEnd,
    /// Note: records after the newest checkpoint.
    NotYetCheckpointed,
    /// Note: an expiry announced by a valid signed marker did not finish.
    ExpiryInterrupted,
}

/// One problem, naming the object key it is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub key: String,
    pub kind: FindingKind,
    pub problem: String,
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    pub records: u64,
    pub checkpoints: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// The newest checkpoint with a valid signature.
    pub newest_checkpoint: Option<u64>,
    /// Violations (tampering or damage), sorted by key.
    pub findings: Vec<Finding>,
    /// Informational: not violations.
    pub notes: Vec<Finding>,
    /// Records after the newest valid checkpoint (vouched for by their hashes only).
    pub unanchored: u64,
}

impl AuditReport {
    pub fn is_ok(&self) -> bool {
        self.findings.is_empty()
    }
}

impl std::fmt::Display for AuditReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let range = match (self.first_seq, self.last_seq) {
            (Some(a), Some(b)) => format!("seq {a}..={b}"),
            _ => "none".into(),
        };
        writeln!(
            f,
            "audit log: {} records ({range}), {} checkpoints, newest valid checkpoint {}, {} not yet checkpointed",
            self.records,
            self.checkpoints,
            self.newest_checkpoint
                .map_or("none".to_string(), |s| s.to_string()),
            self.unanchored
        )?;
        for n in &self.notes {
            writeln!(f, "  note: {}: {}", n.key, n.problem)?;
        }
        for x in &self.findings {
            writeln!(f, "  VIOLATION: {}: {}", x.key, x.problem)?;
        }
        if self.is_ok() {
            write!(f, "ok")
        } else {
            write!(f, "{} violation(s)", self.findings.len())
        }
    }
}

struct Loaded {
    seq: u64,
    key: String,
    hash: String,
    record: Option<Record>,
}

/// Verify the audit chain and its checkpoints against `public_key` (32 raw Ed25519 bytes).
/// Violations are findings in the report; `Err` only when the store cannot be read.
pub async fn verify(store: &Store, public_key: &[u8]) -> Result<AuditReport, AuditError> {
    let pk: [u8; 32] = public_key.try_into().unwrap_or([0; 32]);
    verify_anchored(store, &crate::sign::PublicKeys::only(&pk), &[]).await
}

/// [`verify`], and also against `anchors` kept outside the log: a log that is shorter than an
/// anchor, or empty while one exists, was truncated.
pub async fn verify_anchored(
    store: &Store,
    keys: &crate::sign::PublicKeys,
    anchors: &[Anchor],
) -> Result<AuditReport, AuditError> {
    let mut findings = Vec::new();
    let mut notes = Vec::new();
    let finding = |key: String, kind: FindingKind, problem: String| Finding { key, kind, problem };

    let (record_keys, stray_records) = list_seqs(store, RECORDS).await?;
    let (checkpoint_keys, stray_checkpoints) = list_seqs(store, CHECKPOINTS).await?;
    for key in stray_records.into_iter().chain(stray_checkpoints) {
        findings.push(finding(
            key,
            FindingKind::Unexpected,
            "not a lethe audit object (names are <12 digits>.json): inserted?".into(),
        ));
    }

    let records: Vec<Loaded> = futures::stream::iter(record_keys)
        .map(|(seq, key)| async move {
            let bytes = store.get(&ObjPath::from(key.as_str())).await?;
            Ok::<_, StoreError>(Loaded {
                seq,
                hash: hash_of(&bytes),
                record: serde_json::from_slice(&bytes).ok(),
                key,
            })
        })
        .buffered(READ_AHEAD)
        .try_collect()
        .await?;
    let by_seq: BTreeMap<u64, &Loaded> = records.iter().map(|r| (r.seq, r)).collect();

    let mut valid: BTreeMap<u64, Checkpoint> = BTreeMap::new();
    for (&seq, key) in &checkpoint_keys {
        let bytes = store.get(&ObjPath::from(key.as_str())).await?;
        let cp: Checkpoint = match serde_json::from_slice(&bytes) {
            Ok(cp) => cp,
            Err(e) => {
                findings.push(finding(
                    key.clone(),
                    FindingKind::BadCheckpoint,
                    format!("unparsable: {e}"),
                ));
                continue;
            }
        };
        if cp.seq != seq {
            findings.push(finding(
                key.clone(),
                FindingKind::BadCheckpoint,
                format!("holds seq {}: moved or edited", cp.seq),
            ));
            continue;
        }
        if let Err(why) = cp.check_signature_by(keys) {
            findings.push(finding(key.clone(), FindingKind::BadCheckpoint, why));
            continue;
        }
        valid.insert(seq, cp);
    }
    let newest_checkpoint = valid.keys().next_back().copied();

    // Records vouched for by a checkpoint, directly or through the links after them.
    let mut vouched: HashSet<u64> = HashSet::new();
    for r in records.iter().rev() {
        let ok = match valid.get(&r.seq) {
            Some(cp) => cp.record_hash == r.hash,
            None => by_seq.get(&(r.seq + 1)).is_some_and(|next| {
                vouched.contains(&next.seq)
                    && next.record.as_ref().is_some_and(|n| n.prev == r.hash)
            }),
        };
        if ok {
            vouched.insert(r.seq);
        }
    }
    let voucher = |seq: u64| {
        valid
            .range(seq..)
            .next()
            .map_or_else(String::new, |(s, _)| checkpoint_key(*s))
    };

    let mut previous: Option<&Loaded> = None;
    for r in &records {
        match &r.record {
            None => findings.push(finding(
                r.key.clone(),
                FindingKind::Unparsable,
                "not an audit record (unparsable JSON or unknown fields): edited or inserted"
                    .into(),
            )),
            Some(rec) if rec.seq != r.seq => findings.push(finding(
                r.key.clone(),
                FindingKind::WrongSeq,
                format!("holds seq {}: moved, swapped or inserted", rec.seq),
            )),
            Some(_) => {}
        }
        if let Some(cp) = valid.get(&r.seq)
            && cp.record_hash != r.hash
        {
            findings.push(finding(
                r.key.clone(),
                FindingKind::Edited,
                format!(
                    "its hash does not match checkpoint {}: edited or replaced",
                    checkpoint_key(r.seq)
                ),
            ));
        }
        if let Some(p) = previous {
            if r.seq != p.seq + 1 {
                let (a, b) = (p.seq + 1, r.seq - 1);
                findings.push(finding(
                    record_key(a),
                    FindingKind::Missing,
                    if a == b {
                        format!("missing between {} and {}: removed", p.key, r.key)
                    } else {
                        format!(
                            "records {a}..={b} are missing between {} and {}: removed",
                            p.key, r.key
                        )
                    },
                ));
            } else if let Some(rec) = &r.record
                && rec.prev != p.hash
            {
                let reported = valid.get(&p.seq).is_some_and(|cp| cp.record_hash != p.hash);
                if reported {
                    // Already named as not matching its own checkpoint.
                } else if vouched.contains(&r.seq) {
                    findings.push(finding(
                        p.key.clone(),
                        FindingKind::Edited,
                        format!(
                            "its hash does not match the prev of {}, which checkpoint {} vouches for: edited or replaced",
                            r.key,
                            voucher(r.seq)
                        ),
                    ));
                } else {
                    findings.push(finding(
                        r.key.clone(),
                        FindingKind::BrokenLink,
                        format!(
                            "prev does not match the hash of {}: {} was edited, or {} was edited, inserted or moved",
                            p.key, p.key, r.key
                        ),
                    ));
                }
            }
        }
        previous = Some(r);
    }

    // The head: record 0, or right after a checkpoint (expired records before it).
    if let Some(first) = records.first()
        && first.seq > 0
    {
        let anchored = valid.get(&(first.seq - 1)).is_some_and(|cp| {
            first
                .record
                .as_ref()
                .is_some_and(|rec| rec.prev == cp.record_hash)
        });
        if !anchored {
            let marker = store
                .get_opt(&ObjPath::from(EXPIRY_MARKER))
                .await?
                .and_then(|b| serde_json::from_slice::<ExpiryMarker>(&b).ok());
            let interrupted = marker.filter(|m| {
                keys.by_key_id(&m.key_id).is_some_and(|pk| m.is_valid(&pk))
                    && m.from_seq <= first.seq
                    && first.seq <= m.through_seq
                    && valid.contains_key(&m.through_seq)
                    && vouched.contains(&first.seq)
            });
            match interrupted {
                Some(m) => notes.push(finding(
                    first.key.clone(),
                    FindingKind::ExpiryInterrupted,
                    format!(
                        "an expiry through seq {} ({EXPIRY_MARKER}, {}) did not finish: records before this one are gone by design; run the audit expiry again to finish it",
                        m.through_seq, m.at
                    ),
                )),
                None => findings.push(finding(
                    first.key.clone(),
                    FindingKind::RemovedHead,
                    format!(
                        "first record, but no valid checkpoint {} vouches for its prev: records were removed from the head of the log",
                        checkpoint_key(first.seq - 1)
                    ),
                )),
            }
        }
    }

    // The tail: a checkpoint can vouch for records that are gone.
    let last_seq = records.last().map(|r| r.seq);
    if let Some(c) = newest_checkpoint
        && last_seq.is_some_and(|l| c > l)
    {
        findings.push(finding(
            record_key(c),
            FindingKind::RemovedTail,
            format!(
                "missing, though checkpoint {} vouches for it: records were removed from the end of the log",
                checkpoint_key(c)
            ),
        ));
    }

    // Outside anchors: the log must reach them, with the same record there.
    for a in anchors {
        let reaches = newest_checkpoint.is_some_and(|c| c >= a.seq);
        if !reaches {
            findings.push(finding(
                record_key(a.seq),
                FindingKind::Truncated,
                format!(
                    "{} anchors record {} ({}), but the log {}: records were removed or the log was rewritten",
                    a.source,
                    a.seq,
                    a.record_hash,
                    match (newest_checkpoint, last_seq) {
                        (None, None) => "is empty".to_string(),
                        (None, Some(l)) => format!("has no valid checkpoint (last record {l})"),
                        (Some(c), _) => format!("is checkpointed only up to {c}"),
                    }
                ),
            ));
            continue;
        }
        if let Some(r) = by_seq.get(&a.seq)
            && r.hash != a.record_hash
        {
            findings.push(finding(
                r.key.clone(),
                FindingKind::Truncated,
                format!(
                    "its hash differs from the one {} anchors: the log was rewritten",
                    a.source
                ),
            ));
        } else if let Some(cp) = valid.get(&a.seq)
            && cp.record_hash != a.record_hash
        {
            findings.push(finding(
                checkpoint_key(a.seq),
                FindingKind::Truncated,
                format!(
                    "vouches for another record than the one {} anchors: the log was rewritten",
                    a.source
                ),
            ));
        }
    }

    // Every start needs its end: a start without one inside the checkpointed range means a
    // destructive step whose outcome was never recorded (two runs at once, or an edit).
    let parsed = records
        .iter()
        .filter_map(|r| r.record.as_ref().map(|rec| (r.seq, &rec.event)));
    for seq in unclosed_starts(parsed) {
        let f = finding(
            record_key(seq),
            FindingKind::StartWithoutEnd,
            "a start record without its end: the outcome of this destructive step was never recorded (two runs at once, or records removed)".into(),
        );
        if newest_checkpoint.is_some_and(|c| seq <= c) {
            findings.push(f);
        } else {
            notes.push(Finding {
                problem: "a start record without its end yet (a run in progress, or interrupted: the next run records it)".into(),
                ..f
            });
        }
    }

    let unanchored: Vec<&Loaded> = records
        .iter()
        .filter(|r| newest_checkpoint.is_none_or(|c| r.seq > c))
        .collect();
    if let Some(first) = unanchored.first() {
        notes.push(finding(
            first.key.clone(),
            FindingKind::NotYetCheckpointed,
            format!(
                "{} record(s) from here on are not yet checkpointed (normal between a run's last record and its checkpoint, or after a crash)",
                unanchored.len()
            ),
        ));
    }

    findings.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(AuditReport {
        records: records.len() as u64,
        checkpoints: checkpoint_keys.len() as u64,
        first_seq: records.first().map(|r| r.seq),
        last_seq,
        newest_checkpoint,
        findings,
        notes,
        unanchored: unanchored.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writing at a given time: the log's clock is set to `at` first.
    impl AuditLog {
        async fn append_at(
            &mut self,
            event: serde_json::Value,
            at: DateTime<Utc>,
        ) -> Result<RecordRef, AuditError> {
            self.clock = crate::clock::FixedClock::at(at);
            self.append(event).await
        }
        async fn checkpoint_at(
            &mut self,
            at: DateTime<Utc>,
        ) -> Result<Option<CheckpointRef>, AuditError> {
            self.clock = crate::clock::FixedClock::at(at);
            self.checkpoint().await
        }
    }
    use crate::config::StoreSpec;
    use chrono::TimeZone;

    struct Fixture {
        _dir: tempfile::TempDir,
        root: std::path::PathBuf,
        store: Store,
        keydir: std::path::PathBuf,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("store");
            let store =
                Store::create(&StoreSpec::local(format!("file://{}", root.display()))).unwrap();
            let keydir = dir.path().join("keys");
            Fixture {
                _dir: dir,
                root,
                store,
                keydir,
            }
        }
        fn key(&self, name: &str) -> SigningKey {
            SigningKey::load_or_create(&self.keydir.join(name), true).unwrap()
        }
        fn public(&self) -> [u8; 32] {
            self.key("audit.pk8").public_key()
        }
        async fn log(&self) -> AuditLog {
            AuditLog::open(
                self.store.clone(),
                self.key("audit.pk8"),
                None,
                crate::clock::system(),
            )
            .await
            .unwrap()
        }
        fn file(&self, key: &str) -> std::path::PathBuf {
            self.root.join(key)
        }
        fn read(&self, key: &str) -> String {
            std::fs::read_to_string(self.file(key)).unwrap()
        }
        fn write(&self, key: &str, text: &str) {
            std::fs::write(self.file(key), text).unwrap()
        }
        async fn verify(&self) -> AuditReport {
            verify(&self.store, &self.public()).await.unwrap()
        }
    }

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 10, 3, 0, 0).unwrap()
    }

    fn event(i: u64) -> serde_json::Value {
        serde_json::json!({"kind": "retention.delete", "tenant": "acme", "table": "calls", "rows": 100 + i})
    }

    /// Records 0..n, one a day, and a checkpoint after the last.
    async fn seeded(n: u64) -> Fixture {
        let fx = Fixture::new();
        let mut log = fx.log().await;
        for i in 0..n {
            let r = log
                .append_at(event(i), t0() + chrono::Duration::days(i as i64))
                .await
                .unwrap();
            assert_eq!(r.seq, i);
        }
        let cp = log
            .checkpoint_at(t0() + chrono::Duration::days(n as i64))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cp.seq, n - 1);
        fx
    }

    fn keys_of(r: &AuditReport) -> Vec<&str> {
        r.findings.iter().map(|f| f.key.as_str()).collect()
    }

    #[tokio::test]
    async fn appended_and_checkpointed_chain_verifies() {
        let fx = seeded(6).await;
        let r = fx.verify().await;
        assert!(r.is_ok(), "{r}");
        assert_eq!(
            (r.records, r.checkpoints, r.first_seq, r.last_seq),
            (6, 1, Some(0), Some(5))
        );
        assert_eq!(r.unanchored, 0);
        assert!(r.notes.is_empty(), "{r}");

        // Record 0 chains to the genesis hash; record 1 to record 0's bytes.
        let r0: Record = serde_json::from_str(&fx.read(&record_key(0))).unwrap();
        assert_eq!(r0.prev, GENESIS_PREV);
        assert_eq!(r0.at, "2026-01-10T03:00:00Z");
        let r1: Record = serde_json::from_str(&fx.read(&record_key(1))).unwrap();
        assert_eq!(r1.prev, hash_of(fx.read(&record_key(0)).as_bytes()));

        // A reopened log continues the chain; new records are "not yet checkpointed".
        let mut log = fx.log().await;
        assert_eq!(log.head().unwrap().seq, 5);
        let r6 = log.append_at(event(6), t0()).await.unwrap();
        assert_eq!(r6.seq, 6);
        let r = fx.verify().await;
        assert!(r.is_ok(), "{r}");
        assert_eq!(r.unanchored, 1);
        assert_eq!(r.notes[0].kind, FindingKind::NotYetCheckpointed);
        assert_eq!(r.notes[0].key, record_key(6));
    }

    #[tokio::test]
    async fn non_object_events_are_refused() {
        let fx = Fixture::new();
        let mut log = fx.log().await;
        let e = log
            .append_at(serde_json::json!("alice@example.com"), t0())
            .await
            .unwrap_err();
        assert!(matches!(e, AuditError::EventNotObject { .. }), "{e}");
        assert!(log.head().is_none());
    }

    #[tokio::test]
    async fn two_writers_never_both_write_a_seq() {
        let fx = seeded(2).await;
        let mut a = fx.log().await;
        let mut b = fx.log().await;
        a.append_at(event(10), t0()).await.unwrap();
        let e = b.append_at(event(11), t0()).await.unwrap_err();
        match &e {
            AuditError::Conflict { key, head } => {
                assert_eq!(key, &record_key(2));
                assert_eq!(*head, 2);
            }
            other => panic!("{other}"),
        }
        // The loser re-read the head and can go on.
        assert_eq!(b.append_at(event(11), t0()).await.unwrap().seq, 3);
        assert!(fx.verify().await.is_ok());
    }

    #[tokio::test]
    async fn checkpoint_is_idempotent() {
        let fx = seeded(3).await;
        let mut log = fx.log().await;
        let again = log.checkpoint_at(t0()).await.unwrap().unwrap();
        assert_eq!(again.seq, 2);
        assert_eq!(fx.verify().await.checkpoints, 1);
        assert!(
            Fixture::new()
                .log()
                .await
                .checkpoint_at(t0())
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn an_edited_record_is_named() {
        let fx = seeded(6).await;
        let key = record_key(2);
        let text = fx.read(&key);
        assert!(text.contains("\"rows\":102"));
        fx.write(&key, &text.replace("\"rows\":102", "\"rows\":103"));
        let r = fx.verify().await;
        assert_eq!(keys_of(&r), vec![key.as_str()], "{r}");
        assert_eq!(r.findings[0].kind, FindingKind::Edited);
    }

    #[tokio::test]
    async fn an_edited_checkpointed_record_is_named() {
        let fx = seeded(6).await;
        let key = record_key(5);
        fx.write(&key, &fx.read(&key).replace("\"rows\":105", "\"rows\":1"));
        let r = fx.verify().await;
        assert_eq!(keys_of(&r), vec![key.as_str()], "{r}");
    }

    #[tokio::test]
    async fn an_edit_after_the_checkpoint_names_the_record_and_its_successor() {
        let fx = seeded(3).await;
        let mut log = fx.log().await;
        for i in 3..6 {
            log.append_at(event(i), t0()).await.unwrap();
        }
        let key = record_key(4);
        fx.write(&key, &fx.read(&key).replace("\"rows\":104", "\"rows\":1"));
        let r = fx.verify().await;
        assert_eq!(keys_of(&r), vec![record_key(5).as_str()], "{r}");
        assert_eq!(r.findings[0].kind, FindingKind::BrokenLink);
        assert!(r.findings[0].problem.contains(&key), "{r}");
    }

    #[tokio::test]
    async fn a_deleted_middle_record_is_named() {
        let fx = seeded(6).await;
        std::fs::remove_file(fx.file(&record_key(3))).unwrap();
        let r = fx.verify().await;
        assert_eq!(keys_of(&r), vec![record_key(3).as_str()], "{r}");
        assert_eq!(r.findings[0].kind, FindingKind::Missing);
    }

    #[tokio::test]
    async fn swapped_records_are_named() {
        let fx = seeded(6).await;
        let (a, b) = (fx.read(&record_key(2)), fx.read(&record_key(3)));
        fx.write(&record_key(2), &b);
        fx.write(&record_key(3), &a);
        let r = fx.verify().await;
        let keys = keys_of(&r);
        assert!(keys.contains(&record_key(2).as_str()), "{r}");
        assert!(keys.contains(&record_key(3).as_str()), "{r}");
        assert!(
            keys.iter()
                .all(|k| *k == record_key(2) || *k == record_key(3)),
            "{r}"
        );
    }

    #[tokio::test]
    async fn an_inserted_record_is_named() {
        let fx = seeded(6).await;
        // Shift 3..=5 up by one and insert a well-linked record at 3.
        for seq in (3..=5).rev() {
            std::fs::rename(fx.file(&record_key(seq)), fx.file(&record_key(seq + 1))).unwrap();
        }
        let forged = Record {
            seq: 3,
            prev: hash_of(fx.read(&record_key(2)).as_bytes()),
            at: rfc3339(t0()),
            event: serde_json::json!({"kind": "forged"}),
        };
        fx.write(&record_key(3), &serde_json::to_string(&forged).unwrap());
        let r = fx.verify().await;
        assert!(!r.is_ok());
        assert!(keys_of(&r).contains(&record_key(4).as_str()), "{r}");
        let link = r
            .findings
            .iter()
            .find(|f| f.kind == FindingKind::BrokenLink)
            .unwrap();
        assert!(link.problem.contains(&record_key(3)), "{r}");

        // Appended at the end with a wrong link: named too.
        let fx = seeded(3).await;
        let stray = Record {
            seq: 3,
            prev: GENESIS_PREV.into(),
            at: rfc3339(t0()),
            event: serde_json::json!({"kind": "forged"}),
        };
        fx.write(&record_key(3), &serde_json::to_string(&stray).unwrap());
        let r = fx.verify().await;
        assert_eq!(keys_of(&r), vec![record_key(3).as_str()], "{r}");
    }

    #[tokio::test]
    async fn an_unparsable_record_and_a_stray_object_are_named() {
        let fx = seeded(4).await;
        fx.write(&record_key(1), "{\"seq\":1,");
        fx.write("audit/records/notes.txt", "hello");
        let r = fx.verify().await;
        let keys = keys_of(&r);
        assert!(keys.contains(&record_key(1).as_str()), "{r}");
        assert!(keys.contains(&"audit/records/notes.txt"), "{r}");
    }

    #[tokio::test]
    async fn an_edited_checkpoint_is_named() {
        let fx = seeded(6).await;
        let key = checkpoint_key(5);
        let text = fx.read(&key);
        fx.write(
            &key,
            &text.replace("2026-01-16T03:00:00Z", "2026-01-17T03:00:00Z"),
        );
        assert_ne!(fx.read(&key), text);
        let r = fx.verify().await;
        assert_eq!(keys_of(&r), vec![key.as_str()], "{r}");
        assert_eq!(r.findings[0].kind, FindingKind::BadCheckpoint);
        // Its records are now not vouched for.
        assert_eq!(r.unanchored, 6);
    }

    #[tokio::test]
    async fn a_checkpoint_signed_by_another_key_is_named() {
        let fx = seeded(3).await;
        let mut log = AuditLog::open(
            fx.store.clone(),
            fx.key("intruder.pk8"),
            None,
            crate::clock::system(),
        )
        .await
        .unwrap();
        log.append_at(event(3), t0()).await.unwrap();
        log.checkpoint_at(t0()).await.unwrap();
        let r = fx.verify().await;
        assert_eq!(keys_of(&r), vec![checkpoint_key(3).as_str()], "{r}");
        assert!(r.findings[0].problem.contains("signed by key"), "{r}");

        // Same key id claimed, but signed by the intruder: a bad signature.
        let fx = seeded(3).await;
        let intruder = fx.key("intruder.pk8");
        let mut cp: Checkpoint = serde_json::from_str(&fx.read(&checkpoint_key(2))).unwrap();
        cp.signature = B64.encode(intruder.sign(&cp.signed_bytes()));
        fx.write(&checkpoint_key(2), &serde_json::to_string(&cp).unwrap());
        let r = fx.verify().await;
        assert_eq!(keys_of(&r), vec![checkpoint_key(2).as_str()], "{r}");
    }

    #[tokio::test]
    async fn removed_head_and_removed_tail_are_named() {
        let fx = seeded(6).await;
        std::fs::remove_file(fx.file(&record_key(0))).unwrap();
        std::fs::remove_file(fx.file(&record_key(1))).unwrap();
        let r = fx.verify().await;
        assert_eq!(keys_of(&r), vec![record_key(2).as_str()], "{r}");
        assert_eq!(r.findings[0].kind, FindingKind::RemovedHead);

        let fx = seeded(6).await;
        std::fs::remove_file(fx.file(&record_key(5))).unwrap();
        std::fs::remove_file(fx.file(&record_key(4))).unwrap();
        let r = fx.verify().await;
        assert_eq!(keys_of(&r), vec![record_key(5).as_str()], "{r}");
        assert_eq!(r.findings[0].kind, FindingKind::RemovedTail);
        // And the writer refuses to build on a cut tail.
        let e = AuditLog::open(
            fx.store.clone(),
            fx.key("audit.pk8"),
            None,
            crate::clock::system(),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, AuditError::Corrupt { .. }), "{e}");
    }

    /// Records 0..=9, four weeks apart from 2026-01-10 (record 7: 2026-07-25, record 8:
    /// 2026-08-22), with checkpoints after records 3, 6 and 9.
    async fn expiry_fixture() -> Fixture {
        let fx = Fixture::new();
        let mut log = fx.log().await;
        for i in 0..10u64 {
            let at = t0() + chrono::Duration::weeks(i as i64 * 4);
            log.append_at(event(i), at).await.unwrap();
            if i % 3 == 0 && i > 0 {
                log.checkpoint_at(at).await.unwrap();
            }
        }
        fx
    }

    #[tokio::test]
    async fn expiry_keeps_a_chain_that_starts_after_a_checkpoint() {
        let fx = expiry_fixture().await;
        // 13 months after record 0, only records 0 and 1 are older than 12 months, and no
        // checkpoint is among them: nothing may go, or the rest would start unanchored.
        let mut log = fx.log().await;
        let now = Utc.with_ymd_and_hms(2027, 2, 10, 0, 0, 0).unwrap();
        let out = log.expire(now, Span::Months(12)).await.unwrap();
        assert_eq!(
            (out.records_deleted, out.checkpoints_deleted),
            (0, 0),
            "{out:?}"
        );
        assert!(fx.verify().await.is_ok());

        // Later, records 0..=7 are old (record 7: 2026-07-25 + 12mo <= 2027-08-01): the anchor
        // is checkpoint 6; records 0..=6 and no checkpoint (none is older than 6) go.
        let now = Utc.with_ymd_and_hms(2027, 8, 1, 0, 0, 0).unwrap();
        let out = log.expire(now, Span::Months(12)).await.unwrap();
        assert_eq!(out.anchor, Some(6));
        assert_eq!(out.records_deleted, 7);
        assert_eq!(
            out.checkpoints_deleted, 1,
            "checkpoint 3 is older than the anchor"
        );
        let r = fx.verify().await;
        assert!(r.is_ok(), "{r}");
        assert_eq!(r.first_seq, Some(7));
        assert!(fx.file(&checkpoint_key(6)).exists());
        assert!(!fx.file(&checkpoint_key(3)).exists());
        assert!(!fx.file(EXPIRY_MARKER).exists());
        // The expiry itself is recorded (start and end).
        let last: Record =
            serde_json::from_str(&fx.read(&record_key(r.last_seq.unwrap()))).unwrap();
        assert_eq!(last.event["step"], "audit-expire");
        assert_eq!(last.event["records_deleted"], 7);
        // Idempotent, and the log goes on.
        let out = log.expire(now, Span::Months(12)).await.unwrap();
        assert_eq!((out.records_deleted, out.checkpoints_deleted), (0, 0));
        log.append_at(event(99), now).await.unwrap();
        log.checkpoint_at(now).await.unwrap();
        let mut reopened = fx.log().await;
        reopened.append_at(event(100), now).await.unwrap();
        assert!(fx.verify().await.is_ok());
    }

    #[tokio::test]
    async fn expiry_never_deletes_the_newest_checkpoint_or_everything() {
        let fx = seeded(4).await;
        let mut log = fx.log().await;
        let now = t0() + chrono::Duration::days(3 * 365);
        let out = log.expire(now, Span::Months(12)).await.unwrap();
        assert_eq!(out.anchor, Some(3));
        assert_eq!(out.records_deleted, 4);
        assert!(fx.file(&checkpoint_key(3)).exists());
        let r = fx.verify().await;
        assert!(r.is_ok(), "{r}");
        assert_eq!(r.first_seq, Some(4), "the expiry's own start record stays");
    }

    #[tokio::test]
    async fn an_interrupted_expiry_is_a_note_and_a_rerun_finishes_it() {
        // The state an expiry through checkpoint 6 leaves when it stops after deleting record 2.
        let fx = expiry_fixture().await;
        let now = Utc.with_ymd_and_hms(2027, 8, 1, 0, 0, 0).unwrap();
        let mut log = fx.log().await;
        let key = log.signer().key_id();
        let mut marker = ExpiryMarker {
            purpose: EXPIRY_PURPOSE.into(),
            from_seq: 0,
            through_seq: 6,
            at: rfc3339(now),
            key_id: key,
            signature: String::new(),
        };
        marker.signature = B64.encode(log.signer().sign(&marker.signed_bytes()));
        // Without the marker, the cut head is a violation.
        for seq in 0..=2 {
            std::fs::remove_file(fx.file(&record_key(seq))).unwrap();
        }
        let r = fx.verify().await;
        assert_eq!(keys_of(&r), vec![record_key(3).as_str()], "{r}");
        fx.write(EXPIRY_MARKER, &serde_json::to_string(&marker).unwrap());
        let r = fx.verify().await;
        assert!(r.is_ok(), "{r}");
        assert_eq!(r.notes[0].kind, FindingKind::ExpiryInterrupted);
        // A marker that does not cover the head does not excuse it.
        marker.through_seq = 2;
        marker.signature = B64.encode(log.signer().sign(&marker.signed_bytes()));
        fx.write(EXPIRY_MARKER, &serde_json::to_string(&marker).unwrap());
        assert!(!fx.verify().await.is_ok());

        let out = log.expire(now, Span::Months(12)).await.unwrap();
        assert_eq!(out.anchor, Some(6));
        let r = fx.verify().await;
        assert!(
            r.is_ok()
                && r.notes
                    .iter()
                    .all(|n| n.kind != FindingKind::ExpiryInterrupted),
            "{r}"
        );
        assert_eq!(r.first_seq, Some(7));
    }

    #[tokio::test]
    async fn expiry_refuses_to_delete_a_tampered_chain() {
        let fx = expiry_fixture().await;
        let key = record_key(1);
        fx.write(&key, &fx.read(&key).replace("\"rows\":101", "\"rows\":1"));
        let mut log = fx.log().await;
        let now = Utc.with_ymd_and_hms(2027, 8, 1, 0, 0, 0).unwrap();
        let e = log.expire(now, Span::Months(12)).await.unwrap_err();
        assert!(matches!(e, AuditError::Tampered { .. }), "{e}");
        assert!(fx.file(&record_key(0)).exists());
        assert!(!fx.verify().await.is_ok());
    }

    #[test]
    fn keys_sort_like_seqs() {
        assert_eq!(record_key(42), "audit/records/000000000042.json");
        assert_eq!(checkpoint_key(7), "audit/checkpoints/000000000007.json");
        assert_eq!(seq_of(&record_key(42), RECORDS), Some(42));
        assert_eq!(seq_of("audit/records/42.json", RECORDS), None);
        assert_eq!(seq_of("audit/records/00000000004x.json", RECORDS), None);
        assert!(record_key(99) < record_key(100));
    }
}
