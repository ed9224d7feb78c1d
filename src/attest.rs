//! Retention attestations (`lethe attest --tenant T --period YYYY-MM`): a signed statement, in
//! the certificates' format (JWS, EdDSA, `kid` the RFC 7638 thumbprint), of what retention
//! enforced for one tenant in one month — per category the rule, the rows deleted, anonymized
//! or flagged (from the audit records of the period), and the oldest surviving anchor measured
//! at the end of the period (evidence that nothing outlived its promise); the snapshot runs
//! purged, keys destroyed, erasures finished, and what legal holds kept.
//!
//! - **Records**: the audit records whose time falls in the period, found by binary search on
//!   the chain (records are appended in time order), read, and checked: each links to the one
//!   before it, and the chain from the period's last record up to a signed checkpoint links
//!   too. Only checkpointed records count; the attestation is anchored to that checkpoint.
//! - **Measurement**: a period that has ended uses the last measurement a retention run recorded
//!   in it (audit step `measure`, taken right after the run deleted). A period that has not
//!   ended is attested up to now and measured now, from the live database and store, with the
//!   grace of `[certificates] attestation_grace` for rows waiting for the next run.
//! - **Outcome**: `kept` when nothing outlived its rule; `violations` (listed) otherwise;
//!   `unmeasured` when no measurement covers the period (retention did not run). Anything but
//!   `kept` exits 1.
//!
//! Stored create-only at `attestations/tenant=<t>/<YYYY-MM>/<issued-at>.jws`. No identifiers:
//! counts, names, rules, times and hashes only.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use object_store::path::Path as ObjPath;
use serde_json::{Value, json};

use crate::audit::{Checkpoint, Record};
use crate::check::Checked;
use crate::retention::measure::{Measurement, TenantMeasure};
use crate::sign::SigningKey;
use crate::store::Store;
use crate::util::rfc3339;

pub const PREFIX: &str = "attestations";
/// The JWS `typ` of a retention attestation.
pub const TYP: &str = "lethe-retention-attestation+jwt";
pub const FORMAT: &str = "lethe-attestation/1";

/// A calendar month, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Period {
    /// `YYYY-MM`.
    pub fn parse(s: &str) -> Result<Period, String> {
        let bad =
            || format!("--period {s:?} is not a month\n  fix: write it as YYYY-MM, e.g. 2026-11");
        let (y, m) = s.trim().split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let (y, m): (i32, u32) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        let start = NaiveDate::from_ymd_opt(y, m, 1).ok_or_else(bad)?;
        let next = if m == 12 {
            NaiveDate::from_ymd_opt(y + 1, 1, 1)
        } else {
            NaiveDate::from_ymd_opt(y, m + 1, 1)
        }
        .ok_or_else(bad)?;
        Ok(Period {
            start: start.and_hms_opt(0, 0, 0).expect("midnight").and_utc(),
            end: next.and_hms_opt(0, 0, 0).expect("midnight").and_utc(),
        })
    }

    pub fn label(&self) -> String {
        format!("{:04}-{:02}", self.start.year(), self.start.month())
    }
}

/// One attestation, signed.
#[derive(Debug)]
pub struct Attestation {
    pub payload: Value,
    pub jws: String,
    /// Where it was stored.
    pub key: String,
    pub violations: Vec<String>,
    pub outcome: &'static str,
}

/// Why an attestation cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("the period {period} has not begun (now {now})\n  fix: attest a month that has begun")]
    Future { period: String, now: String },
    #[error(
        "the audit chain has no signed checkpoint yet: nothing can be attested\n  fix: run retention (`lethe run retention`) once"
    )]
    NoCheckpoint,
    #[error(
        "audit record {seq} does not link to the record before it: the chain was changed\n  fix: run `lethe audit verify` and investigate before attesting"
    )]
    Broken { seq: u64 },
    #[error(
        "audit record {seq} is missing or unreadable\n  fix: run `lethe audit verify` and investigate before attesting"
    )]
    Missing { seq: u64 },
    #[error("audit checkpoint {seq}: {why}\n  fix: run `lethe audit verify`")]
    Checkpoint { seq: u64, why: String },
}

/// Make, sign and store the attestation of `tenant` for `period` at `now`.
pub async fn attest(
    c: &Checked,
    store: &Store,
    signer: &SigningKey,
    tenant: &str,
    period: Period,
    now: DateTime<Utc>,
) -> crate::Result<Attestation> {
    if period.start > now {
        return Err(crate::Error::Usage(
            AttestError::Future {
                period: period.label(),
                now: rfc3339(now),
            }
            .to_string(),
        ));
    }
    let complete = period.end <= now;
    let to = if complete { period.end } else { now };

    let chain = Chain::read(store, signer).await?;
    let (records, anchor_seq) = chain.period(period.start, to).await?;

    // What the records say.
    let mut sums = Sums::default();
    let mut measured: Option<(u64, Measurement)> = None;
    for (seq, r) in &records {
        sums.add(tenant, &r.event);
        if r.event["step"] == "measure"
            && let Ok(m) = serde_json::from_value::<Measurement>(r.event["measurement"].clone())
        {
            measured = Some((*seq, m));
        }
    }

    // The measurement: recorded at the period's end, or taken now.
    let (measure, source): (Option<TenantMeasure>, Value) = if complete {
        match measured {
            Some((seq, m)) => (
                Some(m.tenants.get(tenant).cloned().unwrap_or_default()),
                json!({"kind": "audit_record", "seq": seq, "at": m.at, "grace": m.grace}),
            ),
            None => (None, json!({"kind": "none"})),
        }
    } else {
        let mut db = crate::retention::db::Db::open(&c.config.source, false, &c.config.retention)?;
        let grace = c.config.certificates.grace();
        let m =
            crate::retention::measure::measure(c, &mut db, store, Some(tenant), now, Some(grace))
                .await?;
        (
            m.tenants.get(tenant).cloned(),
            json!({"kind": "live", "at": m.at, "grace": m.grace}),
        )
    };
    let violations = measure
        .as_ref()
        .map(TenantMeasure::violations)
        .unwrap_or_default();
    let outcome = match &measure {
        None => "unmeasured",
        Some(_) if violations.is_empty() => "kept",
        Some(_) => "violations",
    };

    let cp = chain.checkpoint(anchor_seq).await?;
    let anchor_hash = chain.hash_of(anchor_seq).await?;
    let payload = payload(
        c,
        tenant,
        period,
        to,
        complete,
        now,
        &sums,
        measure.as_ref(),
        source,
        &violations,
        outcome,
        anchor_seq,
        &anchor_hash,
        &cp,
    );
    let jws = signer.jws(TYP, &serde_json::to_vec(&payload).expect("json"));
    let key = ObjPath::from(format!(
        "{PREFIX}/tenant={tenant}/{}/{}.jws",
        period.label(),
        now.format("%Y%m%dT%H%M%SZ")
    ));
    store
        .put_create(&key, bytes::Bytes::from(jws.clone()))
        .await?;
    Ok(Attestation {
        payload,
        jws,
        key: key.to_string(),
        violations,
        outcome,
    })
}

#[allow(clippy::too_many_arguments)]
fn payload(
    c: &Checked,
    tenant: &str,
    period: Period,
    to: DateTime<Utc>,
    complete: bool,
    now: DateTime<Utc>,
    sums: &Sums,
    measure: Option<&TenantMeasure>,
    source: Value,
    violations: &[String],
    outcome: &str,
    anchor_seq: u64,
    anchor_hash: &str,
    cp: &Checkpoint,
) -> Value {
    // Every category the data map gives this tenant, with what was done and what is left.
    let mut categories = Vec::new();
    let measured: BTreeMap<(&str, &str), &crate::retention::measure::CategoryMeasure> = measure
        .map(|m| {
            m.categories
                .iter()
                .map(|x| ((x.table.as_str(), x.category.as_str()), x))
                .collect()
        })
        .unwrap_or_default();
    let mut keys: Vec<(String, String)> = c
        .data_map
        .tables
        .iter()
        .flat_map(|t| {
            t.config
                .categories
                .iter()
                .filter(|x| c.policy.categories.contains_key(*x))
                .map(|x| (t.name.clone(), x.clone()))
        })
        .collect();
    keys.extend(measured.keys().map(|(t, x)| (t.to_string(), x.to_string())));
    keys.extend(
        sums.rows
            .keys()
            .filter(|(_, x, _)| !ERASURE_CATEGORIES.contains(&x.as_str()))
            .map(|(t, x, _)| (t.clone(), x.clone())),
    );
    keys.sort();
    keys.dedup();
    for (table, category) in keys {
        let m = measured.get(&(table.as_str(), category.as_str()));
        let done = |action: &str| {
            sums.rows
                .get(&(table.clone(), category.clone(), action.to_string()))
                .copied()
                .unwrap_or(0)
        };
        let status = match m {
            None => "unmeasured",
            Some(m) if m.past_rule > 0 => "violation",
            Some(m) if m.held > 0 => "held",
            Some(m) if m.bound.is_none() && category != crate::retention::plan::TERMINATION => {
                "no_time_limit"
            }
            Some(_) => "kept",
        };
        categories.push(json!({
            "table": table,
            "category": category,
            "rule": m.map(|m| m.rule.clone()),
            "rows_deleted": done("delete"),
            "rows_anonymized": done("anonymize"),
            "rows_flagged": done("flag"),
            "measured": m.map(|m| json!({
                "bound": m.bound,
                "rows": m.rows,
                "oldest_surviving_anchor": m.oldest,
                "rows_past_rule": m.past_rule,
                "oldest_past_rule": m.oldest_past_rule,
                "rows_awaiting_next_run": m.awaiting_next_run,
                "rows_held": m.held,
                "hold": m.hold,
            })),
            "status": status,
        }));
    }
    let exceptions: Vec<Value> = c
        .policy
        .categories
        .values()
        .filter_map(|x| {
            x.exception
                .as_ref()
                .map(|b| json!({"category": x.name, "legal_basis": b}))
        })
        .collect();
    json!({
        "format": FORMAT,
        "jti": format!("{tenant}/{}/{}", period.label(), now.format("%Y%m%dT%H%M%SZ")),
        "iss": c.config.certificates.issuer,
        "aud": tenant,
        "iat": now.timestamp(),
        "tool": {"name": "lethe", "version": env!("CARGO_PKG_VERSION")},
        "kind": "retention_attestation",
        "tenant": tenant,
        "period": {
            "month": period.label(),
            "from": rfc3339(period.start),
            "to": rfc3339(to),
            "complete": complete,
            "note": if complete { "the whole month" } else { "the month has not ended: attested up to the time of signing" },
        },
        "policy": {"version": c.policy.version, "hash": c.policy.hash},
        "retention_runs": sums.runs,
        "retention_runs_unverified": sums.unverified_runs,
        "categories": categories,
        "backups": {
            "runs_purged": sums.runs_purged,
            "runs_purged_unverified": sums.runs_purged_unverified,
            "measured": measure.map(|m| &m.backups),
            "status": match measure {
                None => "unmeasured",
                Some(m) if m.backups.past_rule > 0 => "violation",
                Some(_) => "kept",
            },
        },
        "erasure_rows_deleted": sums
            .rows
            .iter()
            .filter(|((_, x, _), _)| ERASURE_CATEGORIES.contains(&x.as_str()))
            .fold(BTreeMap::<String, u64>::new(), |mut m, ((t, _, _), n)| {
                *m.entry(t.clone()).or_default() += n;
                m
            }),
        "keys_destroyed": sums.keys_destroyed,
        "erasures_finished": {"primary": sums.erasures_primary, "final": sums.erasures_final},
        "exceptions": exceptions,
        "measurement": source,
        "outcome": outcome,
        "violations": violations,
        "anchor": {
            "audit_record": {"seq": anchor_seq, "hash": anchor_hash, "kind": "period_end"},
            "checkpoint": {
                "seq": cp.seq,
                "record_hash": cp.record_hash,
                "at": cp.at,
                "key_id": cp.key_id,
                "signature": cp.signature,
            },
        },
    })
}

/// The `rows` records' categories of erasure requests and offboardings (not retention rules):
/// summed per table under `erasure_rows_deleted`.
const ERASURE_CATEGORIES: [&str; 2] = ["erasure", "offboarding"];

/// What the period's records say about one tenant.
#[derive(Debug, Default)]
struct Sums {
    runs: u64,
    unverified_runs: u64,
    /// (table, category, action) → rows.
    rows: BTreeMap<(String, String, String), u64>,
    runs_purged: u64,
    runs_purged_unverified: u64,
    keys_destroyed: u64,
    erasures_primary: u64,
    erasures_final: u64,
}

impl Sums {
    fn add(&mut self, tenant: &str, e: &Value) {
        let step = e["step"].as_str().unwrap_or("");
        let end = e["phase"] == "end";
        let mine = e["tenant"] == tenant;
        match step {
            "retention" if e["phase"] == "start" => self.runs += 1,
            "retention" if end && e["verified"] == false => self.unverified_runs += 1,
            "rows" if end => {
                for u in e["units"].as_array().into_iter().flatten() {
                    if u["tenant"] == tenant {
                        let k = (
                            e["table"].as_str().unwrap_or("?").to_string(),
                            e["category"].as_str().unwrap_or("?").to_string(),
                            e["action"].as_str().unwrap_or("?").to_string(),
                        );
                        *self.rows.entry(k).or_default() += u["rows"].as_u64().unwrap_or(0);
                    }
                }
            }
            "backup-purge" if end && mine => {
                self.runs_purged += 1;
                if e["verified"] != true {
                    self.runs_purged_unverified += 1;
                }
            }
            "crypto-shred" if end && mine && e["destroyed"] == true => self.keys_destroyed += 1,
            "erasure" if end && mine => {
                if e["erasure_phase"] == "primary"
                    && (e["state"] == "primary_done" || e["state"] == "final")
                {
                    self.erasures_primary += 1;
                }
                if e["state"] == "final" {
                    self.erasures_final += 1;
                }
            }
            _ => {}
        }
    }
}

/// The audit chain as far as signed checkpoints vouch for it.
struct Chain<'a> {
    store: &'a Store,
    records: Vec<u64>,
    checkpoints: BTreeMap<u64, String>,
    keys: crate::sign::PublicKeys,
}

/// Concurrent reads.
const CONCURRENCY: usize = 32;

impl<'a> Chain<'a> {
    async fn read(store: &'a Store, signer: &SigningKey) -> crate::Result<Chain<'a>> {
        let (records, _) = crate::audit::list_seqs(store, crate::audit::RECORDS).await?;
        let (checkpoints, _) = crate::audit::list_seqs(store, crate::audit::CHECKPOINTS).await?;
        let newest = *checkpoints
            .keys()
            .next_back()
            .ok_or_else(|| crate::Error::Failed(AttestError::NoCheckpoint.to_string()))?;
        Ok(Chain {
            store,
            // Records after the newest checkpoint are vouched for by nothing yet.
            records: records.into_keys().filter(|s| *s <= newest).collect(),
            checkpoints,
            keys: crate::sign::PublicKeys::of(signer)?,
        })
    }

    async fn get(&self, seq: u64) -> crate::Result<(Record, String)> {
        let bytes = self
            .store
            .get_opt(&ObjPath::from(crate::audit::record_key(seq)))
            .await?
            .ok_or_else(|| crate::Error::Failed(AttestError::Missing { seq }.to_string()))?;
        let r: Record = serde_json::from_slice(&bytes)
            .map_err(|_| crate::Error::Failed(AttestError::Missing { seq }.to_string()))?;
        Ok((r, crate::audit::hash_of(&bytes)))
    }

    async fn hash_of(&self, seq: u64) -> crate::Result<String> {
        Ok(self.get(seq).await?.1)
    }

    /// The index of the first record at or after `t` (records are in time order).
    async fn first_at(&self, t: DateTime<Utc>) -> crate::Result<usize> {
        let (mut lo, mut hi) = (0, self.records.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            let (r, _) = self.get(self.records[mid]).await?;
            let at = DateTime::parse_from_rfc3339(&r.at)
                .map(|x| x.with_timezone(&Utc))
                .map_err(|_| {
                    crate::Error::Failed(AttestError::Missing { seq: r.seq }.to_string())
                })?;
            if at < t {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// The records of `[from, to)`, each checked to link to the one before it, and the record the
    /// attestation is anchored to (the period's last, else the one before the period).
    async fn period(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> crate::Result<(Vec<(u64, Record)>, u64)> {
        use futures::StreamExt;
        let lo = self.first_at(from).await?;
        let hi = self.first_at(to).await?;
        let seqs: Vec<u64> = self.records[lo..hi].to_vec();
        let read: Vec<crate::Result<(Record, String)>> = futures::stream::iter(seqs.clone())
            .map(|s| self.get(s))
            .buffered(CONCURRENCY)
            .collect()
            .await;
        let mut out = Vec::with_capacity(read.len());
        let mut prev: Option<(u64, String)> = None;
        for r in read {
            let (r, hash) = r?;
            if let Some((ps, ph)) = &prev
                && (r.seq != ps + 1 || r.prev != *ph)
            {
                return Err(crate::Error::Failed(
                    AttestError::Broken { seq: r.seq }.to_string(),
                ));
            }
            prev = Some((r.seq, hash));
            out.push((r.seq, r));
        }
        let anchor = match seqs.last() {
            Some(s) => *s,
            None if hi > 0 => self.records[hi - 1],
            None => *self
                .records
                .first()
                .ok_or_else(|| crate::Error::Failed(AttestError::NoCheckpoint.to_string()))?,
        };
        Ok((out, anchor))
    }

    /// The first signed checkpoint at or after `seq`, checked: its signature, and the chain
    /// from `seq` to it links.
    async fn checkpoint(&self, seq: u64) -> crate::Result<Checkpoint> {
        use futures::StreamExt;
        let (&cp_seq, key) = self
            .checkpoints
            .range(seq..)
            .next()
            .ok_or_else(|| crate::Error::Failed(AttestError::NoCheckpoint.to_string()))?;
        let bad = |why: String| {
            crate::Error::Failed(AttestError::Checkpoint { seq: cp_seq, why }.to_string())
        };
        let bytes = self.store.get(&ObjPath::from(key.as_str())).await?;
        let cp: Checkpoint =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("unreadable ({e})")))?;
        cp.check_signature_by(&self.keys).map_err(bad)?;
        let read: Vec<crate::Result<(Record, String)>> = futures::stream::iter(seq..=cp_seq)
            .map(|s| self.get(s))
            .buffered(CONCURRENCY)
            .collect()
            .await;
        let mut prev: Option<String> = None;
        for r in read {
            let (r, hash) = r?;
            if let Some(p) = &prev
                && r.prev != *p
            {
                return Err(crate::Error::Failed(
                    AttestError::Broken { seq: r.seq }.to_string(),
                ));
            }
            prev = Some(hash);
        }
        if prev.as_deref() != Some(cp.record_hash.as_str()) {
            return Err(bad(format!("does not vouch for record {cp_seq} as stored")));
        }
        Ok(cp)
    }
}
