//! Signed deletion certificates (DESIGN.md, "Certificates"): one per request and phase —
//! `primary` when the database and the blobs are done, `final` when the backups are — as a JWS
//! in compact serialization, `alg: EdDSA` (Ed25519, RFC 8037), `kid` the RFC 7638 thumbprint of
//! the signing key, so any JOSE library verifies it given the JWK (`lethe keys public`).
//!
//! Stored create-only at `certificates/tenant=<t>/<request-id>/<phase>.jws`. Idempotent: the
//! payload is built only from what the request and the audit chain hold (times are the
//! phase's completion time, not the time of signing) and Ed25519 signatures are deterministic,
//! so a re-run after a crash signs the same bytes; the create-only write accepts identical
//! content and never replaces a stored certificate.
//!
//! Anchor: the audit `end` record of the phase (sequence number and hash) and the first signed
//! checkpoint at or after it. Certificates are issued at the end of each erasure step, after its
//! checkpoint; a phase whose checkpoint does not exist yet waits for the next run.
//!
//! Nothing in a certificate identifies the person: the subject is its keyed hash.

use std::collections::BTreeMap;

use object_store::path::Path as ObjPath;
use serde_json::{Value, json};

use crate::audit::{Checkpoint, Record};
use crate::erasure::request::{self, Request, Scope, State};
use crate::sign::SigningKey;
use crate::store::Store;

pub const PREFIX: &str = "certificates";
/// The JWS `typ` of a deletion certificate.
pub const TYP: &str = "lethe-deletion-certificate+jwt";
pub const FORMAT: &str = "lethe-certificate/1";

/// The two phases a request is certified for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Primary,
    Final,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Primary => "primary",
            Phase::Final => "final",
        }
    }
}

pub fn key(tenant: &str, request: &str, phase: Phase) -> ObjPath {
    ObjPath::from(format!(
        "{PREFIX}/tenant={tenant}/{request}/{}.jws",
        phase.name()
    ))
}

/// Where a certificate is anchored in the audit chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Anchor {
    pub record_seq: u64,
    pub record_hash: String,
    /// `end` (the phase's end record) or `chain` (a crash lost it: the newest record then).
    pub record_kind: &'static str,
    pub checkpoint: Checkpoint,
}

/// One certificate issued (or found already stored).
#[derive(Debug, Clone, PartialEq)]
pub struct Issued {
    pub tenant: String,
    pub request: String,
    pub phase: Phase,
    pub key: String,
    /// Written in this run (`false`: the same certificate was already stored).
    pub written: bool,
}

/// The certificate payload of `r`'s `phase`.
pub fn payload(r: &Request, phase: Phase, anchor: &Anchor, issuer: &str) -> Value {
    let primary = r.primary.as_ref();
    let kept: Vec<Value> = primary
        .map(|p| {
            p.kept
                .iter()
                .map(|k| {
                    json!({
                        "table": k.table,
                        "rows": k.rows,
                        "reason": k.reason,
                        "legal_basis": legal_basis_of(&k.reason),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let rows: BTreeMap<String, u64> = primary.map(|p| p.rows.clone()).unwrap_or_default();
    let erased_rows: u64 = rows.values().sum();
    let kept_rows: u64 = primary.map_or(0, |p| p.kept.iter().map(|k| k.rows).sum());
    // Sub-processors: answered, or unanswered past their due date (certificates wait for that).
    let subprocessors: Vec<Value> = r
        .notices
        .iter()
        .map(|n| {
            json!({
                "name": n.subprocessor,
                "status": match n.status {
                    request::NoticeStatus::Accepted => "accepted",
                    request::NoticeStatus::Refused => "refused",
                    request::NoticeStatus::Pending => "unanswered",
                },
                "http_status": n.http_status,
                "attempts": n.attempts,
                "first_sent_at": n.first_sent_at,
                "answered_at": n.answered_at,
                "due": n.due,
                "identifier_sent": n.identifier_sent,
                "notice": "a signed erasure notice (JWS, typ lethe-erasure-notice+jwt) naming the subject by keyed hash",
            })
        })
        .collect();
    let notices_failed = r
        .notices
        .iter()
        .any(|n| n.status != request::NoticeStatus::Accepted);
    let outcome = if kept_rows == 0 && !notices_failed {
        "erased"
    } else if erased_rows == 0 && primary.is_none_or(|p| p.blobs_deleted == 0) {
        "not_erased"
    } else {
        "erased_with_exceptions"
    };
    let mut systems = vec![json!({
        "system": "primary_database",
        "method": "clear",
        "method_note": "NIST SP 800-88 clear: rows deleted by the database (DELETE, in batches)",
        "rows_deleted": rows,
        "rows_kept": kept_rows,
        "status": "done",
        "verification": primary.map(|p| p.verified.clone()),
    })];
    {
        systems.push(json!({
            "system": "blob_store",
            "method": "purge",
            "method_note": "NIST SP 800-88 purge: every version of each object deleted",
            "objects_deleted": primary.map_or(0, |p| p.blobs_deleted),
            "objects_already_absent": primary.map_or(0, |p| p.blobs_already_absent),
            "status": "done",
            "verification": "HEAD of every object returned 404 after the deletion",
        }));
    }
    if let Some(k) = &r.key_destroyed {
        systems.push(json!({
            "system": "snapshots",
            "method": "crypto-erase",
            "method_note": "NIST SP 800-88 crypto erase: the tenant's data key destroyed; every copy of every snapshot is unreadable",
            "key_destroyed_at": k.at,
            "status": "done",
            "verification": k.verified,
        }));
    }
    let backups = match (&r.backups, phase) {
        (Some(b), Phase::Final) => {
            let files: Vec<Value> = r
                .rewritten
                .iter()
                .flat_map(|w| {
                    w.files.iter().map(move |f| {
                        json!({
                            "run": w.run_id,
                            "table": f.table,
                            "old_path": f.old_path,
                            "old_sha256": f.old_sha256,
                            "new_path": f.new_path,
                            "new_sha256": f.new_sha256,
                            "rows_dropped": f.rows_dropped,
                        })
                    })
                })
                .collect();
            json!({
                "system": "backups",
                "method": if r.key_destroyed.is_some() && b.runs_rewritten.is_empty() { "crypto-erase" } else { "purge" },
                "method_note": "NIST SP 800-88 purge: snapshot runs rewritten without the subject's rows and every old object version deleted, or whole runs purged",
                "runs_rewritten": b.runs_rewritten,
                "runs_purged": b.runs_purged,
                "files": files,
                "completed_at": b.done_at,
                "status": "done",
                "verification": b.verified,
            })
        }
        _ => json!({
            "system": "backups",
            "status": "pending",
            "purge_by": r.due_backups,
            "note": "snapshot runs taken before the erasure are rewritten or purged by this date; the final certificate says which",
        }),
    };
    systems.push(backups);
    let completed = match phase {
        Phase::Primary => primary.map(|p| p.done_at.clone()),
        Phase::Final => r.backups.as_ref().map(|b| b.done_at.clone()),
    };
    let iat = completed
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map_or(0, |t| t.timestamp());
    json!({
        "format": FORMAT,
        "jti": format!("{}/{}/{}", r.tenant, r.id, phase.name()),
        "iss": issuer,
        "aud": r.tenant,
        "iat": iat,
        "tool": {"name": "lethe", "version": env!("CARGO_PKG_VERSION")},
        "phase": phase.name(),
        "outcome": outcome,
        "request": {
            "id": r.id,
            "ref": r.reference,
            "kind": match r.scope { Scope::Subject => "subject", Scope::Tenant => "tenant" },
            "basis": match r.scope {
                Scope::Subject => "GDPR Art. 17 (right to erasure)",
                Scope::Tenant => "GDPR Art. 28(3)(g) (deletion at the end of the provision of services)",
            },
            "immediate": r.immediate,
            "received_at": r.received_at,
            "due_primary": r.due_primary,
            "due_backups": r.due_backups,
            "completed_at": completed,
        },
        "subject": r.subject.as_ref().map(|h| json!({"hash": h, "kind": r.kind, "hash_algorithm": "HMAC-SHA256 under the processor's subject key, first 128 bits"})),
        "policy": {
            "version": r.policy_version,
            "plan_hash": primary.map(|p| p.plan_hash.clone()),
        },
        "systems": systems,
        "exceptions": kept,
        "subprocessors": subprocessors,
        "anchor": {
            "audit_record": {"seq": anchor.record_seq, "hash": anchor.record_hash, "kind": anchor.record_kind},
            "checkpoint": {
                "seq": anchor.checkpoint.seq,
                "record_hash": anchor.checkpoint.record_hash,
                "at": anchor.checkpoint.at,
                "key_id": anchor.checkpoint.key_id,
                "signature": anchor.checkpoint.signature,
            },
        },
    })
}

/// The legal basis a kept-rows reason names (a statutory exception or a legal hold).
fn legal_basis_of(reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    if r.contains("hold") {
        "GDPR Art. 17(3)(e): establishment, exercise or defence of legal claims (legal hold)"
    } else {
        "GDPR Art. 17(3)(b): compliance with a legal obligation (statutory retention)"
    }
}

/// The phases of `r` that are done (at `now`: the primary phase also waits for every
/// sub-processor's answer, or its due date).
fn done_phases(r: &Request, now: chrono::DateTime<chrono::Utc>) -> Vec<Phase> {
    let mut out = Vec::new();
    let notices_settled = r.notices.iter().all(|n| n.answered() || n.overdue(now));
    if !notices_settled {
        return out;
    }
    if matches!(r.state, State::PrimaryDone | State::Final) && r.primary.is_some() {
        out.push(Phase::Primary);
    }
    if r.state == State::Final && r.backups.is_some() {
        out.push(Phase::Final);
    }
    out
}

/// Issue every certificate that is due and not stored yet: each request's done phases. Needs
/// the audit chain to be checkpointed past the phase's end record (`head` is its newest record).
pub async fn issue_due(
    store: &Store,
    signer: &SigningKey,
    issuer: &str,
    head: u64,
    now: chrono::DateTime<chrono::Utc>,
) -> crate::Result<Vec<Issued>> {
    use futures::StreamExt;
    let stored: std::collections::HashSet<String> = store
        .list(&ObjPath::from(PREFIX))
        .await?
        .into_iter()
        .map(|m| m.location.to_string())
        .collect();
    let mut due: Vec<(Request, Phase)> = Vec::new();
    for r in request::list(store, None).await?.into_iter().flatten() {
        for phase in done_phases(&r, now) {
            if !stored.contains(key(&r.tenant, &r.id, phase).as_ref()) {
                due.push((r.clone(), phase));
            }
        }
    }
    if due.is_empty() {
        return Ok(Vec::new());
    }
    // Checkpoints by sequence (read only those an anchor needs).
    let (checkpoint_keys, _) = crate::audit::list_seqs(store, crate::audit::CHECKPOINTS).await?;
    let mut checkpoints: BTreeMap<u64, Checkpoint> = BTreeMap::new();
    let anchors = find_ends(store, head, &due).await?;
    // Anchor each certificate (the end record, or the chain's newest record after a crash).
    let head_record = match anchors.iter().any(Option::is_none) {
        true => record_at(store, head).await?,
        false => None,
    };
    let mut signed = Vec::new();
    for ((r, phase), found) in due.into_iter().zip(anchors) {
        let (seq, hash, kind) = match found {
            Some((s, h)) => (s, h, "end"),
            None => {
                let Some((s, h)) = head_record.clone() else {
                    continue;
                };
                tracing::warn!(tenant = %r.tenant, request = %r.id, phase = phase.name(), "the phase's audit end record was not found (a crash between the request's update and its record); the certificate is anchored to the chain's newest record");
                (s, h, "chain")
            }
        };
        let Some((&cp_seq, cp_key)) = checkpoint_keys.range(seq..).next() else {
            tracing::info!(tenant = %r.tenant, request = %r.id, phase = phase.name(), "no checkpoint covers the phase's end record yet; the certificate is issued after the next checkpoint");
            continue;
        };
        if !checkpoints.contains_key(&cp_seq) {
            let bytes = store.get(&ObjPath::from(cp_key.as_str())).await?;
            let cp: Checkpoint = serde_json::from_slice(&bytes).map_err(|e| {
                crate::Error::Failed(format!(
                    "audit checkpoint {cp_key} is unreadable ({e}); run `lethe audit verify`"
                ))
            })?;
            checkpoints.insert(cp_seq, cp);
        }
        let cp = checkpoints[&cp_seq].clone();
        let anchor = Anchor {
            record_seq: seq,
            record_hash: hash,
            record_kind: kind,
            checkpoint: cp,
        };
        let body = payload(&r, phase, &anchor, issuer);
        let jws = signer.jws(TYP, &serde_json::to_vec(&body).expect("json"));
        signed.push((r, phase, jws));
    }
    // Stored concurrently, each create-only.
    let results: Vec<crate::Result<Issued>> = futures::stream::iter(signed)
        .map(|(r, phase, jws)| async move {
            let k = key(&r.tenant, &r.id, phase);
            crate::retention::crash_point("before a certificate is stored");
            let written = store.put_create(&k, bytes::Bytes::from(jws)).await?;
            if !written {
                // Another certificate for this phase is stored: it stays (create-only), and
                // the run says so rather than claim this one.
                tracing::warn!(tenant = %r.tenant, request = %r.id, phase = phase.name(), "a different certificate for this phase is already stored; it is kept");
            }
            Ok(Issued {
                tenant: r.tenant.clone(),
                request: r.id.clone(),
                phase,
                key: k.to_string(),
                written,
            })
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Store operations in flight at once.
const CONCURRENCY: usize = 32;

/// Record `seq` and the hash of its stored bytes.
async fn record_at(store: &Store, seq: u64) -> crate::Result<Option<(u64, String)>> {
    let Some(bytes) = store
        .get_opt(&ObjPath::from(crate::audit::record_key(seq)))
        .await?
    else {
        return Ok(None);
    };
    Ok(Some((seq, crate::audit::hash_of(&bytes))))
}

/// For each (request, phase), its phase's `end` record (sequence, hash), searched from `head`
/// backwards.
async fn find_ends(
    store: &Store,
    head: u64,
    due: &[(Request, Phase)],
) -> crate::Result<Vec<Option<(u64, String)>>> {
    use futures::StreamExt;
    let mut found: Vec<Option<(u64, String)>> = vec![None; due.len()];
    let mut wanted: std::collections::HashMap<(&str, &str), Vec<usize>> = Default::default();
    for (i, (r, _)) in due.iter().enumerate() {
        wanted
            .entry((r.tenant.as_str(), r.id.as_str()))
            .or_default()
            .push(i);
    }
    // Newest first, in chunks read concurrently.
    let mut top = head;
    'chunks: while top > 0 && found.iter().any(Option::is_none) {
        let low = top.saturating_sub(256);
        let seqs: Vec<u64> = ((low + 1)..=top).rev().collect();
        top = low;
        let read: Vec<_> = futures::stream::iter(seqs)
            .map(|seq| async move {
                store
                    .get_opt(&ObjPath::from(crate::audit::record_key(seq)))
                    .await
                    .map(|b| (seq, b))
            })
            .buffered(CONCURRENCY)
            .collect()
            .await;
        for r in read {
            let (seq, Some(bytes)) = r? else {
                break 'chunks; // expired below here
            };
            let Ok(rec) = serde_json::from_slice::<Record>(&bytes) else {
                continue;
            };
            let e = &rec.event;
            if e["step"] != "erasure" || e["phase"] != "end" {
                continue;
            }
            let (Some(t), Some(id)) = (e["tenant"].as_str(), e["request"].as_str()) else {
                continue;
            };
            for &i in wanted.get(&(t, id)).into_iter().flatten() {
                // Primary: the primary phase's end (the request primary_done, or final when
                // one run did both). Final: the end that made it final.
                let matches = match due[i].1 {
                    Phase::Primary => {
                        e["erasure_phase"] == "primary"
                            && (e["state"] == "primary_done" || e["state"] == "final")
                    }
                    Phase::Final => e["state"] == "final",
                };
                if found[i].is_none() && matches {
                    found[i] = Some((seq, crate::audit::hash_of(&bytes)));
                }
            }
        }
    }
    Ok(found)
}

/// What `lethe certificate verify` found.
#[derive(Debug)]
pub struct Verified {
    pub payload: Value,
    pub kid: String,
    /// With store access: the anchor checked against the audit chain (`None`: offline).
    pub anchor: Option<Result<(), String>>,
}

/// Verify a certificate's signature against `keys` (a JWKS's `keys`) and, with `store` and the
/// audit public key, its anchor: the record exists with that hash and the checkpoint is stored
/// and signed.
pub async fn verify(
    compact: &str,
    keys: &[Value],
    store: Option<(&Store, &crate::sign::PublicKeys)>,
) -> Result<Verified, String> {
    let v = crate::sign::verify_jws(compact, keys)?;
    // Deletion certificates and retention attestations share the format, key and anchor.
    let format = match v.header["typ"].as_str() {
        Some(TYP) => FORMAT,
        Some(crate::attest::TYP) => crate::attest::FORMAT,
        _ => {
            return Err(format!(
                "the header's typ is {}, not {TYP} or {}: a signed object, but not a lethe certificate or attestation",
                v.header["typ"],
                crate::attest::TYP
            ));
        }
    };
    let payload: Value =
        serde_json::from_slice(&v.payload).map_err(|e| format!("the payload is not JSON: {e}"))?;
    if payload["format"] != format {
        return Err(format!(
            "the payload's format is {}, not {format}",
            payload["format"]
        ));
    }
    let anchor = match store {
        None => None,
        Some((store, keys)) => Some(check_anchor(store, keys, &payload).await),
    };
    Ok(Verified {
        payload,
        kid: v.kid,
        anchor,
    })
}

async fn check_anchor(
    store: &Store,
    keys: &crate::sign::PublicKeys,
    payload: &Value,
) -> Result<(), String> {
    let a = &payload["anchor"];
    let seq = a["audit_record"]["seq"]
        .as_u64()
        .ok_or("the payload has no anchor record")?;
    let hash = a["audit_record"]["hash"].as_str().unwrap_or("");
    match store
        .get_opt(&ObjPath::from(crate::audit::record_key(seq)))
        .await
        .map_err(|e| e.to_string())?
    {
        Some(bytes) if crate::audit::hash_of(&bytes) == hash => {}
        Some(_) => {
            return Err(format!(
                "audit record {seq} differs from the one the certificate is anchored to (edited, or another chain)"
            ));
        }
        // Expired records are vouched for by the checkpoint below.
        None => {}
    }
    let cp: Checkpoint = serde_json::from_value(a["checkpoint"].clone())
        .map_err(|e| format!("the anchor's checkpoint is malformed: {e}"))?;
    cp.check_signature_by(keys)
        .map_err(|e| format!("the anchor's checkpoint: {e}"))?;
    let stored = store
        .get_opt(&ObjPath::from(crate::audit::checkpoint_key(cp.seq)))
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("audit checkpoint {} is not in the store", cp.seq))?;
    let stored: Checkpoint = serde_json::from_slice(&stored)
        .map_err(|e| format!("audit checkpoint {} is unreadable: {e}", cp.seq))?;
    if stored != cp {
        return Err(format!(
            "audit checkpoint {} differs from the one the certificate is anchored to",
            cp.seq
        ));
    }
    if cp.seq < seq {
        return Err(format!("checkpoint {} does not cover record {seq}", cp.seq));
    }
    Ok(())
}

/// Every stored certificate (key, and its verification against `keys` with its anchor checked
/// in `store`, whose audit chain `public_key` signs).
pub async fn verify_stored(
    store: &Store,
    keys: &[Value],
    audit_keys: &crate::sign::PublicKeys,
) -> crate::Result<Vec<(String, Result<Value, String>)>> {
    use futures::StreamExt;
    let mut metas = store.list(&ObjPath::from(PREFIX)).await?;
    metas.sort_by(|a, b| a.location.cmp(&b.location));
    let checked: Vec<crate::Result<(String, Result<Value, String>)>> = futures::stream::iter(metas)
        .map(|m| async move {
            let bytes = store.get(&m.location).await?;
            let text = String::from_utf8_lossy(&bytes);
            let checked = match verify(&text, keys, Some((store, audit_keys))).await {
                Ok(v) => match v.anchor {
                    Some(Err(e)) => Err(format!("anchor: {e}")),
                    _ => Ok(v.payload),
                },
                Err(e) => Err(e),
            };
            Ok((m.location.to_string(), checked))
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    checked.into_iter().collect()
}
