//! Erasure notices to sub-processors (GDPR Art. 19; `[[subprocessors]]` in lethe.toml): each
//! subject erasure POSTs a signed notice to every sub-processor that serves the tenant, retries
//! with exponential backoff, and records the answer in the request — from where the deletion
//! certificate lists it and `lethe requests ls` reports an unanswered one past its due date.
//!
//! - **The notice** is a JWS (compact, `application/jose`, `typ: lethe-erasure-notice+jwt`),
//!   signed by the key that signs certificates, so the sub-processor can check it came from us
//!   (`lethe keys public --format jwks`). It names the person by keyed hash; the identifier
//!   itself goes along only where `send_identifier = true`, only to an https URL, and only while
//!   the request still holds it sealed (before its primary phase is done — notices are sent
//!   first thing in the erasure step). `Idempotency-Key` is the notice's `jti`: a retry is the
//!   same notice.
//! - **Answers**: 2xx → `accepted`; 4xx other than 408 and 429 → `refused` (recorded with its
//!   status, not retried); 408, 429, 5xx, timeouts and connection errors → retried up to
//!   `attempts` times in the run (backoff 0.25 s doubling), then again in the next run. Response
//!   bodies are neither stored nor logged.
//! - **Due**: `deadline` after the request was received, else the request's primary due date.
//!   The primary certificate waits until every notice is answered or past its due date (then
//!   listed as `unanswered`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::config::Subprocessor;
use crate::erasure::request::{self, Notice, NoticeStatus, Request, Scope};
use crate::sign::SigningKey;
use crate::store::Store;
use crate::util::rfc3339;

/// The JWS `typ` of an erasure notice.
pub const TYP: &str = "lethe-erasure-notice+jwt";
pub const FORMAT: &str = "lethe-erasure-notice/1";

/// The notices `r` is still owed: one per serving sub-processor, created pending.
fn owed(r: &mut Request, subs: &[Subprocessor]) {
    if r.scope != Scope::Subject {
        return;
    }
    for sp in subs.iter().filter(|s| s.serves(&r.tenant)) {
        if r.notices.iter().any(|n| n.subprocessor == sp.name) {
            continue;
        }
        let received = DateTime::parse_from_rfc3339(&r.received_at)
            .map(|t| t.with_timezone(&Utc))
            .ok();
        let due = match (sp.deadline, received) {
            (Some(d), Some(t)) => d.after(t).map(rfc3339),
            _ => None,
        }
        .unwrap_or_else(|| r.due_primary.clone());
        r.notices.push(Notice {
            subprocessor: sp.name.clone(),
            status: NoticeStatus::Pending,
            due,
            attempts: 0,
            first_sent_at: None,
            last_attempt_at: None,
            answered_at: None,
            http_status: None,
            last_error: None,
            identifier_sent: false,
        });
    }
}

/// The signed notice of `r` to `sp` (with `identifier` when it may go).
fn notice_jws(
    r: &Request,
    sp: &Subprocessor,
    identifier: Option<&str>,
    issuer: &str,
    signer: &SigningKey,
) -> String {
    let received = DateTime::parse_from_rfc3339(&r.received_at).map_or(0, |t| t.timestamp());
    let mut payload = json!({
        "format": FORMAT,
        "jti": format!("{}/{}/{}", r.tenant, r.id, sp.name),
        "iss": issuer,
        "aud": sp.name,
        "iat": received,
        "action": "erase",
        "basis": "GDPR Art. 17 and Art. 19: the controller's data subject asked for erasure; erase the subject's personal data you process for it",
        "tenant": r.tenant,
        "request": {"id": r.id, "ref": r.reference, "received_at": r.received_at, "due": r.due_primary},
        "subject": {"kind": r.kind, "hash": r.subject},
    });
    if let Some(id) = identifier {
        payload["identifier"] = json!({"kind": r.kind, "value": id});
    }
    signer.jws(TYP, &serde_json::to_vec(&payload).expect("json"))
}

/// One notice, with its retries in this run. Updates `n`; never logs the identifier.
async fn send(
    client: &reqwest::Client,
    r: &Request,
    sp: &Subprocessor,
    n: &mut Notice,
    body: String,
    identifier_sent: bool,
    now: impl Fn() -> DateTime<Utc>,
) {
    let auth = match &sp.auth_env {
        Some(var) => match std::env::var(var) {
            Ok(v) => Some(v),
            Err(_) => {
                n.last_error = Some(format!(
                    "environment variable {var} (subprocessors {}.auth_env) is not set; nothing was sent",
                    sp.name
                ));
                tracing::error!(tenant = %r.tenant, request = %r.id, subprocessor = %sp.name, var = %var, "erasure notice not sent: its auth variable is not set");
                return;
            }
        },
        None => None,
    };
    let mut delay = Duration::from_millis(250);
    for attempt in 1..=sp.attempts {
        let t = now();
        n.attempts += 1;
        n.first_sent_at.get_or_insert_with(|| rfc3339(t));
        n.last_attempt_at = Some(rfc3339(t));
        let mut req = client
            .post(sp.erase_url.clone())
            .timeout(sp.timeout)
            .header("Content-Type", "application/jose")
            .header(
                "Idempotency-Key",
                format!("{}/{}/{}", r.tenant, r.id, sp.name),
            )
            .body(body.clone());
        if let Some(a) = &auth {
            req = req.header(sp.auth_header.as_str(), a.as_str());
        }
        let retry = match req.send().await {
            Ok(resp) => {
                let code = resp.status().as_u16();
                n.http_status = Some(code);
                if resp.status().is_success() {
                    n.status = NoticeStatus::Accepted;
                    n.answered_at = Some(rfc3339(now()));
                    n.last_error = None;
                    n.identifier_sent = identifier_sent;
                    false
                } else if resp.status().is_client_error() && code != 408 && code != 429 {
                    n.status = NoticeStatus::Refused;
                    n.answered_at = Some(rfc3339(now()));
                    n.last_error = None;
                    n.identifier_sent = identifier_sent;
                    false
                } else {
                    n.last_error = Some(format!("HTTP {code}"));
                    true
                }
            }
            Err(e) => {
                n.last_error = Some(if e.is_timeout() {
                    format!("no answer within {} ms", sp.timeout.as_millis())
                } else if e.is_connect() {
                    "could not connect".to_string()
                } else {
                    "the request failed".to_string()
                });
                true
            }
        };
        tracing::info!(tenant = %r.tenant, request = %r.id, subprocessor = %sp.name, attempt, status = ?n.status, http_status = n.http_status, error = n.last_error.as_deref().unwrap_or(""), "erasure notice");
        if !retry {
            return;
        }
        if attempt < sp.attempts {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
}

/// What a notices pass did.
#[derive(Debug, Default)]
pub struct Sent {
    /// Requests whose notices changed (already stored).
    pub updated: Vec<Request>,
    pub accepted: usize,
    pub refused: usize,
    pub pending: usize,
}

/// Send every notice that is owed and unanswered, for every subject request in the store, and
/// store each request whose notices changed. Runs under the destructive lease (requests have
/// one writer). `identifier_of` opens a request's sealed identifier (when it still has one).
pub async fn send_due(
    store: &Store,
    s3: Option<&crate::s3::S3Admin>,
    subs: &[Subprocessor],
    issuer: &str,
    signer: &SigningKey,
    identifier_of: &(dyn Fn(&Request) -> Option<String> + Sync),
    clock: &std::sync::Arc<dyn crate::clock::Clock>,
) -> crate::Result<Sent> {
    let mut out = Sent::default();
    if subs.is_empty() {
        return Ok(out);
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| {
            crate::Error::Failed(format!(
                "cannot build the HTTP client for erasure notices: {e}"
            ))
        })?;
    for listed in request::list(store, None).await? {
        let Ok(mut r) = listed else { continue };
        let before = r.notices.clone();
        owed(&mut r, subs);
        let pending: Vec<usize> = (0..r.notices.len())
            .filter(|i| !r.notices[*i].answered())
            .collect();
        for i in pending {
            let Some(sp) = subs.iter().find(|s| s.name == r.notices[i].subprocessor) else {
                continue; // a sub-processor no longer configured: left as it was
            };
            let identifier = if sp.send_identifier && sp.erase_url.scheme() == "https" {
                identifier_of(&r)
            } else {
                None
            };
            let body = notice_jws(&r, sp, identifier.as_deref(), issuer, signer);
            let mut n = r.notices[i].clone();
            send(&client, &r, sp, &mut n, body, identifier.is_some(), || {
                clock.now()
            })
            .await;
            match n.status {
                NoticeStatus::Accepted => out.accepted += 1,
                NoticeStatus::Refused => out.refused += 1,
                NoticeStatus::Pending => out.pending += 1,
            }
            r.notices[i] = n;
        }
        if r.notices != before {
            request::update(store, s3, &r).await?;
            out.updated.push(r);
        }
    }
    Ok(out)
}
