//! The `erasure` step: plan every open request, then execute the primary phase of each — rows
//! through the primary-database deleter ([`crate::primary`]), their blobs through the blob
//! deleter — with the same plan / plan-hash / brake mechanics as retention, under the same
//! destructive lease, recorded in the same audit log.
//!
//! Order within one request, so that a crash at any point converges on the re-run:
//! 1. audit `start` (request, subject hash, plan hash, rows per table);
//! 2. every identifier resolution found is sealed into the request, and the ledger entry
//!    (keyed hashes, erasure time) is written — both before the first row goes, because
//!    deleting the row that links two identifiers would hide the second from a re-run;
//! 3. rows per table, each between its own `rows` start/end records, blobs drained after
//!    each table that references blobs (HEAD 404 each, every version on versioned S3);
//! 4. verification: a re-query of every table returns 0 rows of the person, the outbox is empty;
//! 5. the request becomes `primary_done`: the sealed identifier is removed (and on a versioned
//!    bucket every earlier generation of the request object), its keyed hash stays;
//! 6. audit `end`.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::check::Checked;
use crate::clock::Clock;
use crate::datamap::Table;
use crate::erasure::ledger;
use crate::erasure::request::{self, KeptRows, PrimaryOutcome, Request, Scope, State};
use crate::erasure::resolve::{self, Resolution};
use crate::keys::Keyring;
use crate::retention::crash_point;
use crate::retention::db::{self, Db, Params};
use crate::retention::plan::{Change, RowAction, Selection, Stats, SubjectMatch};
use crate::store::Store;
use crate::util::quote_ident as qi;

/// A table with fewer rows of the tenant than this never trips the share brake (a person may
/// well hold most of a small table's rows).
pub const BRAKE_MIN_TABLE_ROWS: u64 = 50;
/// One person with more rows than this in one table trips the brake whatever the share.
pub const BRAKE_MAX_ROWS: u64 = 100_000;

/// One table of one request.
#[derive(Debug, Clone, Serialize)]
pub struct TablePlan {
    pub table: String,
    /// Rows holding one of the person's identifiers.
    pub rows: u64,
    /// Of them, rows referencing a blob (photo, recording).
    pub blobs: u64,
    /// Why these rows stay (a legal hold, a statutory exception); `None`: they go.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept: Option<String>,
}

/// What the step will do for one request.
#[derive(Debug, Clone, Serialize)]
pub struct RequestPlan {
    pub tenant: String,
    pub request: String,
    pub scope: Scope,
    pub phase: &'static str,
    /// Keyed hash of the identifier the request was made with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The person's identifiers resolution found, by kind (counts).
    pub identifiers: BTreeMap<String, usize>,
    /// Their keyed hashes (so a confirmed plan hash pins exactly whom it erases).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    pub tables: Vec<TablePlan>,
    /// Committed snapshot runs of the tenant (the backups phase covers them).
    pub snapshot_runs: usize,
    /// Of them, the runs whose subject index names one of the person's identifiers (runs
    /// without an index count as holding them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runs_holding: Option<usize>,
    /// Why this request is not executed in this run (brake, refused resolution).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// Stopped by the brake: a run confirming this plan's hash executes it anyway.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub brake: bool,
    /// Tenant offboarding: the tenant's data key is destroyed in this run (crypto-erase).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub destroy_key: bool,
    /// Tenant offboarding: the rows go in this run (the primary deadline has come, or
    /// `--immediate`); else they wait for it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub rows_due: bool,
    /// Snapshot runs purged in this run: a tenant offboarding's (the backups deadline has
    /// come), or a person's abandoned runs that never committed (taken before the erasure).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub purge_runs: Vec<String>,
    /// Subject requests' backups phase: runs rewritten in this run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rewrite_runs: Vec<String>,
    /// Subject requests' backups phase: runs that still hold the person but are purged by
    /// backup retention before the deadline (nothing to rewrite).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outlived_runs: Vec<String>,
    /// Nothing to do in this run, and until when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    #[serde(skip)]
    pub(crate) found: Option<Resolution>,
    #[serde(skip)]
    pub(crate) req: Option<Request>,
}

impl RequestPlan {
    pub fn rows(&self) -> u64 {
        self.tables
            .iter()
            .filter(|t| t.kept.is_none())
            .map(|t| t.rows)
            .sum()
    }
    pub fn kept(&self) -> u64 {
        self.tables
            .iter()
            .filter(|t| t.kept.is_some())
            .map(|t| t.rows)
            .sum()
    }
}

/// The erasure plan: every open request, with its hash.
#[derive(Debug, Clone, Serialize)]
pub struct ErasurePlan {
    pub policy_version: String,
    pub policy_hash: String,
    pub requests: Vec<RequestPlan>,
    /// Requests in the store that could not be read (key, why).
    pub unreadable: Vec<(String, String)>,
    /// sha256 over the requests as planned (not the time: a confirmed hash stays valid until
    /// a request or a count changes).
    pub hash: String,
}

/// The plan when there is no store yet (no request can exist).
pub fn empty_plan(c: &Checked) -> crate::Result<ErasurePlan> {
    let mut p = ErasurePlan {
        policy_version: c.policy.version.clone(),
        policy_hash: c.policy.hash.clone(),
        requests: Vec::new(),
        unreadable: Vec::new(),
        hash: String::new(),
    };
    p.hash = plan_hash(&p);
    Ok(p)
}

fn plan_hash(p: &ErasurePlan) -> String {
    let mut bytes = p.policy_hash.as_bytes().to_vec();
    bytes.extend(serde_json::to_vec(&p.requests).expect("serializable"));
    format!("sha256:{}", crate::util::sha256_hex(&bytes))
}

/// Plan every open request. Reads only (the database is opened read-only by `lethe plan`).
pub async fn plan(
    c: &Checked,
    db: &mut Db,
    store: &Store,
    keyring: Option<&Keyring>,
    now: DateTime<Utc>,
) -> crate::Result<ErasurePlan> {
    let mut out = ErasurePlan {
        policy_version: c.policy.version.clone(),
        policy_hash: c.policy.hash.clone(),
        requests: Vec::new(),
        unreadable: Vec::new(),
        hash: String::new(),
    };
    let holds = holds(c, db)?;
    for listed in request::list(store, None).await? {
        let r = match listed {
            Ok(r) => r,
            Err(bad) => {
                out.unreadable.push(bad);
                continue;
            }
        };
        let open = r.state != State::Final;
        if !open {
            continue;
        }
        out.requests
            .push(plan_request(c, db, store, keyring, &holds, r, now).await?);
    }
    out.hash = plan_hash(&out);
    Ok(out)
}

/// Legal holds of the policy and of the source's holds table.
fn holds(c: &Checked, db: &mut Db) -> crate::Result<Vec<crate::policy::LegalHold>> {
    let mut all = c.policy.legal_holds.clone();
    if let Some(s) = &c.policy.legal_holds_source {
        all.extend(db::source_holds(db, &s.table)?);
    }
    Ok(all)
}

#[allow(clippy::too_many_arguments)]
async fn plan_request(
    c: &Checked,
    db: &mut Db,
    store: &Store,
    keyring: Option<&Keyring>,
    holds: &[crate::policy::LegalHold],
    r: Request,
    now: DateTime<Utc>,
) -> crate::Result<RequestPlan> {
    let mut p = RequestPlan {
        tenant: r.tenant.clone(),
        request: r.id.clone(),
        scope: r.scope,
        phase: "primary",
        subject: r.subject.clone(),
        identifiers: BTreeMap::new(),
        subjects: Vec::new(),
        tables: Vec::new(),
        snapshot_runs: crate::snapshot::read::committed(store, &r.tenant)
            .await?
            .len(),
        runs_holding: None,
        stopped: None,
        brake: false,
        destroy_key: false,
        rows_due: false,
        purge_runs: Vec::new(),
        rewrite_runs: Vec::new(),
        outlived_runs: Vec::new(),
        waiting: None,
        found: None,
        req: None,
    };
    if r.scope == Scope::Tenant {
        plan_tenant(c, db, store, keyring, holds, &mut p, &r, now).await?;
        p.req = Some(r);
        return Ok(p);
    }
    if r.state == State::PrimaryDone {
        plan_backups(c, store, &mut p, &r, now).await?;
        p.req = Some(r);
        return Ok(p);
    }
    let pc = c.policy.erasure.phone_country.as_deref();
    let opened = match keyring {
        None => Err("the keyring does not exist".to_string()),
        Some(k) => open_identifiers(k, &r),
    };
    let (kind, value, earlier) = match opened {
        Ok(x) => x,
        Err(why) => {
            p.stopped = Some(why);
            p.req = Some(r);
            return Ok(p);
        }
    };
    let mut found = match resolve::resolve(db, &c.data_map, &r.tenant, &kind, &value, pc) {
        Ok(f) => f,
        Err(resolve::ResolveError::Db(e)) => return Err(e.into()),
        Err(e @ resolve::ResolveError::TooMany { .. }) => {
            p.stopped = Some(e.to_string());
            p.req = Some(r);
            return Ok(p);
        }
    };
    found.extend(earlier);
    p.identifiers = found
        .kinds()
        .into_iter()
        .map(|(k, n)| (k.to_string(), n))
        .collect();
    if let Some(k) = keyring {
        p.subjects = found
            .pairs()
            .map(|(kind, v)| k.subject_hash(&format!("{kind}:{v}")))
            .collect();
        p.subjects.sort();
    }
    let m = found.to_match(pc);
    let held_subject = holds.iter().find(|h| {
        h.tenant == r.tenant
            && h.subject
                .as_deref()
                .is_some_and(|s| holds_person(s, &found, pc))
    });
    let mut brake = Vec::new();
    for t in c.data_map.tables.iter().filter(|t| {
        t.config
            .identifiers
            .values()
            .any(|k| m.by_kind.contains_key(k))
    }) {
        let (rows, blobs) = count(db, t, &r.tenant, &m)?;
        let kept = kept_reason(c, holds, held_subject, &r.tenant, t);
        if kept.is_none() && rows > 0 {
            let of = tenant_rows(db, t, &r.tenant)?;
            if rows > BRAKE_MAX_ROWS
                || (of >= BRAKE_MIN_TABLE_ROWS
                    && rows as f64 > c.config.retention.max_share * of as f64)
            {
                brake.push(format!("{}: {rows} of the tenant's {of} rows", t.name));
            }
        }
        p.tables.push(TablePlan {
            table: t.name.clone(),
            rows,
            blobs,
            kept,
        });
    }
    if !brake.is_empty() {
        p.brake = true;
        p.stopped = Some(format!(
            "safety brake: the person's identifiers match an implausible share of {} (over retention.max_share = {} or {BRAKE_MAX_ROWS} rows); an identifier shared by many people?",
            brake.join(", "),
            c.config.retention.max_share
        ));
    }
    if let Some(k) = keyring {
        p.runs_holding = Some(runs_holding(store, k, &r.tenant, &found).await?);
    }
    p.found = Some(found);
    p.req = Some(r);
    Ok(p)
}

/// A person's backups phase: each committed run taken before the erasure that the request has
/// not rewritten yet is rewritten now — if it is pinned, the request is `--immediate`, backup
/// retention would keep it past the backups deadline, or that deadline is a day away — or left
/// to backup retention, which purges it before the deadline. No such run left: `final`.
async fn plan_backups(
    c: &Checked,
    store: &Store,
    p: &mut RequestPlan,
    r: &Request,
    now: DateTime<Utc>,
) -> crate::Result<()> {
    p.phase = "backups";
    let erased_at = r
        .primary
        .as_ref()
        .and_then(|o| DateTime::parse_from_rfc3339(&o.done_at).ok())
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| {
            crate::Error::Failed(format!(
                "request {} of tenant {} is primary_done without its primary outcome (edited?)",
                r.id, r.tenant
            ))
        })?;
    let due = DateTime::parse_from_rfc3339(&r.due_backups)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(now);
    for m in crate::snapshot::read::committed(store, &r.tenant).await? {
        if r.rewritten.iter().any(|w| w.run_id == m.run_id) {
            continue;
        }
        let Some(taken) = crate::retention::run_time(&m.run_id, Some(&m.created_at)) else {
            continue;
        };
        if taken > erased_at {
            continue;
        }
        let pinned = crate::snapshot::purge::pin_of(store, &r.tenant, &m.run_id)
            .await?
            .is_some();
        let kept_past_due = c
            .policy
            .backups
            .retain
            .after(taken)
            .is_none_or(|purge| purge >= due);
        let close = now + chrono::TimeDelta::days(1) >= due;
        if r.immediate || pinned || kept_past_due || close {
            p.rewrite_runs.push(m.run_id);
        } else {
            p.outlived_runs.push(m.run_id);
        }
    }
    // Runs a snapshot started before the erasure and never committed: no reader trusts them,
    // but their files hold the person. Abandoned ones are purged; a younger one may still be
    // writing, and the request waits for it (it commits, then is rewritten, or is abandoned).
    let mut unfinished = 0;
    for l in crate::snapshot::read::runs(store, &r.tenant).await? {
        if matches!(l.manifest, Some(Ok(_))) {
            continue;
        }
        let Some(taken) = crate::retention::run_time(&l.run_id, None) else {
            continue;
        };
        if taken > erased_at {
            continue;
        }
        let abandoned =
            taken + chrono::TimeDelta::hours(crate::retention::plan::ABANDONED_AFTER_HOURS) <= now;
        if abandoned && l.manifest.is_none() {
            p.purge_runs.push(l.run_id);
        } else {
            unfinished += 1;
        }
    }
    let nothing_now = p.rewrite_runs.is_empty() && p.purge_runs.is_empty();
    if nothing_now && unfinished > 0 {
        p.waiting = Some(format!(
            "{unfinished} snapshot run(s) taken before the erasure are neither committed nor abandoned ({}h) or have an unreadable manifest; the request stays open until they are (run `lethe snapshot verify`)",
            crate::retention::plan::ABANDONED_AFTER_HOURS
        ));
    } else if nothing_now && !p.outlived_runs.is_empty() {
        p.waiting = Some(format!(
            "{} snapshot run(s) holding the person are purged by backup retention before the backups deadline {}",
            p.outlived_runs.len(),
            r.due_backups
        ));
    }
    Ok(())
}

/// Has `due` (RFC 3339) come at `now`? (`immediate` requests are due at receipt.)
fn has_come(due: &str, now: DateTime<Utc>) -> bool {
    DateTime::parse_from_rfc3339(due).is_ok_and(|t| t.with_timezone(&Utc) <= now)
}

/// A tenant offboarding: the key goes at once; the rows at the primary deadline (every table
/// but the tenants table, except statutory exceptions and holds); the snapshot objects at the
/// backups deadline.
#[allow(clippy::too_many_arguments)]
async fn plan_tenant(
    c: &Checked,
    db: &mut Db,
    store: &Store,
    keyring: Option<&Keyring>,
    holds: &[crate::policy::LegalHold],
    p: &mut RequestPlan,
    r: &Request,
    now: DateTime<Utc>,
) -> crate::Result<()> {
    p.destroy_key = keyring.is_some_and(|k| k.has(&r.tenant));
    if r.state == State::Received {
        p.rows_due = has_come(&r.due_primary, now);
        for t in c
            .data_map
            .tables
            .iter()
            .filter(|t| t.name != c.data_map.tenants.table)
        {
            let (rows, blobs) = tenant_counts(db, t, &r.tenant)?;
            p.tables.push(TablePlan {
                table: t.name.clone(),
                rows,
                blobs,
                kept: kept_reason(c, holds, None, &r.tenant, t),
            });
        }
        if !p.rows_due {
            p.waiting = Some(format!(
                "rows are deleted at the primary deadline {}",
                r.due_primary
            ));
        } else if has_come(&r.due_backups, now) {
            // Both deadlines have come (`--immediate`): the backups go in the same run.
            p.purge_runs = tenant_runs(store, &r.tenant).await?;
        }
    } else {
        p.phase = "backups";
        if has_come(&r.due_backups, now) {
            p.purge_runs = tenant_runs(store, &r.tenant).await?;
        } else {
            p.waiting = Some(format!(
                "snapshot objects (unreadable since the key was destroyed) are purged at the backups deadline {}",
                r.due_backups
            ));
        }
    }
    if p.destroy_key {
        // The key goes now whatever waits.
        p.waiting = None;
    }
    Ok(())
}

async fn tenant_runs(store: &Store, tenant: &str) -> crate::Result<Vec<String>> {
    Ok(crate::snapshot::read::runs(store, tenant)
        .await?
        .into_iter()
        .map(|l| l.run_id)
        .collect())
}

/// Every row of `t` in `tenant`, and those referencing a blob.
fn tenant_counts(db: &mut Db, t: &Table, tenant: &str) -> crate::Result<(u64, u64)> {
    let blob = t
        .config
        .blob_column
        .as_ref()
        .map(|b| format!("count({})", qi(b)))
        .unwrap_or_else(|| "0".into());
    let sql = format!(
        "SELECT CAST(count(*) AS TEXT), CAST({blob} AS TEXT) FROM {} WHERE CAST({} AS TEXT) = {}",
        qi(&t.name),
        qi(&t.config.tenant_column),
        db::lit(tenant)
    );
    let rows = db.query(&sql).map_err(|e| e.on(&t.name))?;
    let n = |i: usize| {
        rows.first()
            .and_then(|r| r[i].as_deref())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    Ok((n(0), n(1)))
}

/// How many committed runs of `tenant` hold one of the person's identifiers, by their subject
/// indexes (a run without an index, or whose index cannot be read, counts as holding them).
async fn runs_holding(
    store: &Store,
    keyring: &Keyring,
    tenant: &str,
    found: &Resolution,
) -> crate::Result<usize> {
    let Ok(key) = keyring.data_key(tenant) else {
        return Ok(0);
    };
    let tag_key = crate::snapshot::index::tag_key(&keyring.subject_key());
    let tags: Vec<[u8; 16]> = found
        .pairs()
        .map(|(k, v)| crate::snapshot::index::tag(tag_key, k, v))
        .collect();
    let mut n = 0;
    for m in crate::snapshot::read::committed(store, tenant).await? {
        let holds = match crate::snapshot::rewrite::read_index(store, &key, &m).await {
            Ok(Some(ix)) => !ix.files_holding(&tags).is_empty(),
            Ok(None) | Err(_) => true,
        };
        n += usize::from(holds);
    }
    Ok(n)
}

/// The identifier a request was made with, and the identifiers an interrupted run sealed.
#[allow(clippy::type_complexity)]
fn open_identifiers(
    k: &Keyring,
    r: &Request,
) -> Result<(String, String, Vec<(String, String)>), String> {
    let (Some(kind), Some(sealed)) = (&r.kind, &r.identifier) else {
        return Err(format!(
            "request {} of tenant {} has no sealed identifier in state received (edited?)",
            r.id, r.tenant
        ));
    };
    let key = k.data_key(&r.tenant).map_err(|e| e.to_string())?;
    let value = request::open(&key, &r.id, sealed).ok_or_else(|| {
        format!(
            "the identifier of request {} does not open with tenant {}'s data key (edited, or sealed under another key)",
            r.id, r.tenant
        )
    })?;
    let earlier = match &r.resolved {
        None => Vec::new(),
        Some(s) => request::open(&key, &resolved_aad(&r.id), s)
            .and_then(|j| serde_json::from_str::<Vec<(String, String)>>(&j).ok())
            .ok_or_else(|| {
                format!(
                    "the resolved identifiers of request {} do not open with tenant {}'s data key",
                    r.id, r.tenant
                )
            })?,
    };
    Ok((kind.clone(), value, earlier))
}

fn resolved_aad(id: &str) -> String {
    format!("{id}/resolved")
}

/// Does a hold's subject (as stored in a subject column) name this person?
fn holds_person(held: &str, found: &Resolution, pc: Option<&str>) -> bool {
    found.pairs().any(|(kind, value)| {
        crate::erasure::identify::normalize(kind, held, pc).is_ok_and(|n| &n == value)
    })
}

/// Why `t`'s rows of the person stay, if they do.
fn kept_reason(
    c: &Checked,
    holds: &[crate::policy::LegalHold],
    held_subject: Option<&crate::policy::LegalHold>,
    tenant: &str,
    t: &Table,
) -> Option<String> {
    for cat in &t.config.categories {
        if let Some(ex) = c
            .policy
            .categories
            .get(cat)
            .and_then(|c| c.exception.as_ref())
        {
            return Some(format!("statutory exception (category {cat}): {ex}"));
        }
    }
    let covers = |h: &crate::policy::LegalHold| {
        h.tenant == tenant
            && h.table.as_deref().is_none_or(|x| x == t.name)
            && h.category
                .as_deref()
                .is_none_or(|cat| t.config.categories.iter().any(|x| x == cat))
    };
    if let Some(h) = held_subject.filter(|h| covers(h)) {
        return Some(format!(
            "legal hold on this person: {} (placed by {})",
            h.reason, h.placed_by
        ));
    }
    holds
        .iter()
        .find(|h| h.subject.is_none() && covers(h))
        .map(|h| format!("legal hold: {} (placed by {})", h.reason, h.placed_by))
}

/// The person's rows of `t` (`m`), or every row of the tenant (`None`, offboarding).
fn erase_selection(t: &Table, m: Option<&SubjectMatch>) -> Selection {
    Selection {
        table: t.name.clone(),
        anchor: None,
        cutoff: None,
        change: Change::Delete,
        excluded_subjects: Vec::new(),
        erase: m.cloned(),
    }
}

/// Rows of `t` in `tenant` holding one of the person's identifiers, and those with a blob.
fn count(db: &mut Db, t: &Table, tenant: &str, m: &SubjectMatch) -> crate::Result<(u64, u64)> {
    let mut params = Params::default();
    let pred = db::predicate(
        db.dialect(),
        t,
        &erase_selection(t, Some(m)),
        &[tenant.to_string()],
        false,
        &mut params,
    );
    let blob = t
        .config
        .blob_column
        .as_ref()
        .map(|b| format!("count({})", qi(b)))
        .unwrap_or_else(|| "0".into());
    let sql = format!(
        "SELECT CAST(count(*) AS TEXT), CAST({blob} AS TEXT) FROM {} WHERE {pred}",
        qi(&t.name)
    );
    let rows = db.query_p(&sql, &params).map_err(|e| e.on(&t.name))?;
    let n = |i: usize| {
        rows.first()
            .and_then(|r| r[i].as_deref())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    Ok((n(0), n(1)))
}

fn tenant_rows(db: &mut Db, t: &Table, tenant: &str) -> crate::Result<u64> {
    Ok(tenant_counts(db, t, tenant)?.0)
}

/// What one request's phase did in this run.
#[derive(Debug, Clone)]
pub struct RequestOutcome {
    pub tenant: String,
    pub request: String,
    pub scope: Scope,
    /// Rows and blobs (a default, empty outcome when only the key or backups went).
    pub outcome: PrimaryOutcome,
    pub key_destroyed: Option<request::KeyDestroyed>,
    pub backups: Option<request::BackupsOutcome>,
    /// Runs kept because they are pinned (offboarding's backups phase).
    pub runs_pinned: Vec<String>,
    pub state: State,
    /// Snapshot runs rewritten without the person (subject's backups phase).
    pub rewritten: Vec<crate::snapshot::rewrite::Rewritten>,
}

/// What `lethe run erasure` did.
#[derive(Debug)]
pub struct ErasureRun {
    pub plan: ErasurePlan,
    pub done: Vec<RequestOutcome>,
    /// Requests not executed, and why (brake, refused resolution, unreadable): the step
    /// reports them and exits 1, the other requests and the later steps go on.
    pub stopped: Vec<(String, String)>,
    /// Deletion certificates issued at the end of the step (phases done, checkpointed).
    pub certificates: Vec<crate::erasure::certificate::Issued>,
}

impl ErasureRun {
    pub fn rows(&self) -> u64 {
        self.done.iter().flat_map(|d| d.outcome.rows.values()).sum()
    }
    pub fn blobs(&self) -> u64 {
        self.done.iter().map(|d| d.outcome.blobs_deleted).sum()
    }
}

#[derive(Serialize)]
struct RequestStart<'a> {
    step: &'static str,
    phase: &'static str,
    plan_hash: &'a str,
    tenant: &'a str,
    request: &'a str,
    erasure_phase: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    identifiers: &'a BTreeMap<String, usize>,
    tables: &'a [TablePlan],
}

#[derive(Serialize)]
struct RequestEnd<'a> {
    step: &'static str,
    phase: &'static str,
    plan_hash: &'a str,
    tenant: &'a str,
    request: &'a str,
    erasure_phase: &'static str,
    rows: &'a BTreeMap<String, u64>,
    blobs_deleted: u64,
    blobs_already_absent: u64,
    kept: &'a [KeptRows],
    verified: &'a str,
    state: &'static str,
}

/// No rows: what a backups phase's end records of the database.
static NO_ROWS: BTreeMap<String, u64> = BTreeMap::new();

impl<'a> RequestEnd<'a> {
    /// The end of a person's backups phase (the database was done by the primary phase).
    fn backups(plan_hash: &'a str, p: &'a RequestPlan, verified: &'a str, state: State) -> Self {
        RequestEnd {
            step: "erasure",
            phase: "end",
            plan_hash,
            tenant: &p.tenant,
            request: &p.request,
            erasure_phase: "backups",
            rows: &NO_ROWS,
            blobs_deleted: 0,
            blobs_already_absent: 0,
            kept: &[],
            verified,
            state: state.name(),
        }
    }
}

/// `lethe run erasure`: take the lease, plan, check the plan against `expect_hash` (which also
/// confirms requests the brake stopped), execute each request's primary phase, audit,
/// checkpoint, release.
pub async fn run(
    c: &Checked,
    clock: &Arc<dyn Clock>,
    expect_hash: Option<&str>,
) -> crate::Result<ErasureRun> {
    let cfg = &c.config;
    let store = Store::create(&cfg.store)?;
    crate::pipeline::refuse_new_keys(cfg, &store).await?;
    let lease = Arc::new(
        crate::lease::Lease::acquire(
            &store,
            crate::pipeline::DESTRUCTIVE_LEASE,
            "lethe run erasure",
        )
        .await
        .map_err(crate::audit::AuditError::from)?,
    );
    let mut touched = false;
    let result = run_locked(c, &store, clock, expect_hash, lease.clone(), &mut touched).await;
    crate::pipeline::release(lease, touched).await;
    result
}

async fn run_locked(
    c: &Checked,
    store: &Store,
    clock: &Arc<dyn Clock>,
    expect_hash: Option<&str>,
    lease: Arc<crate::lease::Lease>,
    touched: &mut bool,
) -> crate::Result<ErasureRun> {
    let cfg = &c.config;
    let keyring = if cfg.keyring.exists() {
        Some(Keyring::open(&cfg.keyring, &cfg.master_key, false)?)
    } else {
        None
    };
    let mut db = Db::open(&cfg.source, true, &cfg.retention)?;
    // What the product's app put into the intake table becomes requests first.
    let drained = crate::erasure::intake::drain(c, &mut db, store, clock).await?;
    if drained.received + drained.refused > 0 {
        *touched = true;
        tracing::info!(
            received = drained.received,
            refused = drained.refused,
            "intake table drained"
        );
    }
    let keyring = if drained.received > 0 && keyring.is_none() && cfg.keyring.exists() {
        Some(Keyring::open(&cfg.keyring, &cfg.master_key, false)?)
    } else {
        keyring
    };
    // Sub-processors first: a notice may carry the identifier, which the primary phase removes.
    if !cfg.subprocessors.is_empty() {
        let signer = crate::sign::SigningKey::load_or_create(
            &crate::sign::signing_key_path(&cfg.keyring),
            true,
        )?;
        let s3 = crate::snapshot::purge::s3_admin_for(&cfg.store).await?;
        let opener = |r: &Request| -> Option<String> {
            let k = keyring.as_ref()?.data_key(&r.tenant).ok()?;
            request::open(&k, &r.id, r.identifier.as_ref()?)
        };
        let sent = crate::erasure::notice::send_due(
            store,
            s3.as_ref(),
            &cfg.subprocessors,
            &cfg.certificates.issuer,
            &signer,
            &opener,
            clock,
        )
        .await?;
        if !sent.updated.is_empty() {
            *touched = true;
            tracing::info!(
                accepted = sent.accepted,
                refused = sent.refused,
                pending = sent.pending,
                "erasure notices to sub-processors"
            );
        }
    }
    let plan = plan(c, &mut db, store, keyring.as_ref(), clock.now()).await?;
    let confirmed = match expect_hash.map(crate::pipeline::normalize_plan_hash) {
        Some(h) if h != plan.hash => {
            return Err(crate::Error::Failed(format!(
                "the erasure plan differs from the one confirmed ({h}): now {}. Nothing was deleted. Review it with `lethe plan` and confirm the new hash",
                plan.hash
            )));
        }
        Some(_) => true,
        None => false,
    };
    let mut run = ErasureRun {
        plan: plan.clone(),
        done: Vec::new(),
        stopped: plan.unreadable.clone(),
        certificates: Vec::new(),
    };
    let todo: Vec<&RequestPlan> = plan
        .requests
        .iter()
        .filter(|p| p.waiting.is_none())
        .filter(|p| {
            let go = p.stopped.is_none() || (p.brake && confirmed);
            if !go {
                tracing::error!(tenant = %p.tenant, request = %p.request, why = p.stopped.as_deref().unwrap_or(""), "erasure request not executed in this run");
                run.stopped.push((
                    format!("{}/{}", p.tenant, p.request),
                    p.stopped.clone().unwrap_or_default(),
                ));
            }
            go
        })
        .collect();
    if !todo.is_empty() {
        *touched = true;
        let mut keyring = match keyring {
            Some(k) => k,
            // (an offboarding of a tenant that never had a key: nothing to destroy)
            None => Keyring::open(&cfg.keyring, &cfg.master_key, true)?,
        };
        let mut audit = crate::pipeline::open_audit(c, store, clock, lease).await?;
        let blobs = cfg.blobs.as_ref().map(Store::open).transpose()?;
        let s3 = crate::snapshot::purge::s3_admin_for(&cfg.store).await?;
        let blobs_s3 = match &cfg.blobs {
            Some(b) => crate::snapshot::purge::s3_admin_for(b).await?,
            None => None,
        };
        let now = clock.now();
        let subject_key = keyring.subject_key();
        // One blob budget for the whole run: a blob store that is down stops blob deletions
        // for every request alike.
        let mut blob_budget = Some(crate::blobs::BlobBudget::new(&cfg.retention));
        for p in todo {
            let hashes: Vec<String> = p
                .found
                .iter()
                .flat_map(|f| f.pairs())
                .map(|(k, v)| keyring.subject_hash(&format!("{k}:{v}")))
                .collect();
            let mut env = crate::retention::execute::Env {
                dm: &c.data_map,
                db: &mut db,
                store,
                blobs: blobs.as_ref(),
                s3: s3.as_ref(),
                blobs_s3: blobs_s3.as_ref(),
                audit: &mut audit,
                keyring: &mut keyring,
                subject_key,
                batch_rows: cfg.retention.batch_rows,
                now,
                blob_budget: blob_budget.take().expect("returned after each request"),
            };
            let done = match p.scope {
                Scope::Subject if p.phase == "backups" => {
                    backups_phase(c, &mut env, &plan.hash, p, s3.as_ref(), now).await?
                }
                Scope::Subject => {
                    let done =
                        primary_phase(c, &mut env, &plan.hash, p, hashes, s3.as_ref(), clock)
                            .await?;
                    // "Immediate and irreversible": the backups go in the same run.
                    match p.req.as_ref().filter(|r| r.immediate) {
                        Some(_) => {
                            let r = request::read(store, &p.tenant, &p.request)
                                .await?
                                .expect("just written");
                            let mut b = p.clone();
                            b.rewrite_runs.clear();
                            b.outlived_runs.clear();
                            plan_backups(c, store, &mut b, &r, now).await?;
                            b.req = Some(r);
                            let mut after =
                                backups_phase(c, &mut env, &plan.hash, &b, s3.as_ref(), now)
                                    .await?;
                            after.outcome = done.outcome;
                            after
                        }
                        None => done,
                    }
                }
                Scope::Tenant => offboard(&mut env, &plan.hash, p, s3.as_ref(), now).await?,
            };
            blob_budget = Some(env.blob_budget);
            run.done.push(done);
        }
        crate::pipeline::close_audit(c, &mut audit, clock).await?;
    }
    // Certificates for every phase done and checkpointed: this run's, and any a crash left
    // unissued (also when nothing else is to do). Create-only and deterministic, so they need
    // no lease.
    let signing = crate::sign::signing_key_path(&cfg.keyring);
    if signing.exists()
        && let Some((_, cp)) = crate::audit::newest_checkpoint(store).await?
    {
        let signer = crate::sign::SigningKey::load_or_create(&signing, false)?;
        run.certificates = crate::erasure::certificate::issue_due(
            store,
            &signer,
            &cfg.certificates.issuer,
            cp.seq,
            clock.now(),
        )
        .await?;
    }
    for d in &run.done {
        tracing::info!(tenant = %d.tenant, request = %d.request, rows = d.outcome.rows.values().sum::<u64>(), blobs = d.outcome.blobs_deleted, kept = d.outcome.kept.iter().map(|k| k.rows).sum::<u64>(), "erasure primary phase done");
    }
    Ok(run)
}

/// Delete the request's rows table by table through the primary-database deleter (the
/// person's rows with `m`, every row of the tenant without), draining the blobs of each table
/// that references them; kept tables are recorded, not touched. Returns the rows a fresh count
/// still finds and the blob deletions that failed.
async fn delete_tables(
    env: &mut crate::retention::execute::Env<'_>,
    plan_hash: &str,
    p: &RequestPlan,
    (category, rule): (&str, String),
    m: Option<&SubjectMatch>,
    out: &mut PrimaryOutcome,
) -> crate::Result<(u64, u64)> {
    env.db.ensure_outbox().map_err(|e| e.on(db::OUTBOX))?;
    let (mut remaining, mut blobs_failed) = (0, 0);
    for tp in &p.tables {
        if let Some(why) = &tp.kept {
            out.kept.push(KeptRows {
                table: tp.table.clone(),
                rows: tp.rows,
                reason: why.clone(),
            });
            continue;
        }
        let t = db::table(env.dm, &tp.table);
        let sel = erase_selection(t, m);
        let unit = RowAction {
            tenant: p.tenant.clone(),
            table: tp.table.clone(),
            category: category.into(),
            action: "delete",
            rule: rule.clone(),
            anchor: None,
            bound: None,
            rows: tp.rows,
            oldest: None,
            newest: None,
            blobs: tp.blobs,
            rows_held_by_subject: 0,
            selection: sel.clone(),
            stats: Stats {
                rows: tp.rows,
                blobs: tp.blobs,
                ..Default::default()
            },
        };
        let u = crate::primary::change_rows(env, plan_hash, category, &sel, &[&unit]).await?;
        out.rows
            .insert(tp.table.clone(), u.rows.values().sum::<u64>());
        remaining += u.remaining;
        if t.config.blob_column.is_some() {
            let b = crate::primary::drain_outbox(env, plan_hash).await?;
            out.blobs_deleted += b.deleted;
            out.blobs_already_absent += b.absent;
            blobs_failed += b.failed;
        }
    }
    Ok((remaining, blobs_failed))
}

async fn primary_phase(
    c: &Checked,
    env: &mut crate::retention::execute::Env<'_>,
    plan_hash: &str,
    p: &RequestPlan,
    hashes: Vec<String>,
    s3: Option<&crate::s3::S3Admin>,
    clock: &Arc<dyn Clock>,
) -> crate::Result<RequestOutcome> {
    let now = clock.now();
    let found = p.found.as_ref().expect("resolved");
    let mut r = p.req.clone().expect("planned from a request");
    env.audit
        .record(&RequestStart {
            step: "erasure",
            phase: "start",
            plan_hash,
            tenant: &p.tenant,
            request: &p.request,
            erasure_phase: "primary",
            subject: p.subject.as_deref(),
            identifiers: &p.identifiers,
            tables: &p.tables,
        })
        .await?;
    crash_point("after an erasure start record");
    // Everything resolution found, sealed into the request before the first row goes.
    let key = env.keyring.data_key(&p.tenant)?;
    let pairs: Vec<(String, String)> = found.pairs().cloned().collect();
    r.resolved = Some(request::seal(
        &key,
        &resolved_aad(&r.id),
        &serde_json::to_string(&pairs).expect("serializable"),
    ));
    request::update(env.store, s3, &r).await?;
    let tag_key = crate::snapshot::index::tag_key(&env.subject_key);
    let tags: Vec<String> = found
        .pairs()
        .map(|(k, v)| crate::snapshot::index::tag_hex(&crate::snapshot::index::tag(tag_key, k, v)))
        .collect();
    ledger::record(
        env.store,
        &p.tenant,
        &p.request,
        now,
        hashes.clone(),
        tags.clone(),
    )
    .await?;
    crash_point("after the ledger entry");

    let pc = c.policy.erasure.phone_country.as_deref();
    let m = found.to_match(pc);
    let mut out = PrimaryOutcome {
        identifiers: p.identifiers.clone(),
        ..empty_outcome(plan_hash)
    };
    let (remaining, blobs_failed) = delete_tables(
        env,
        plan_hash,
        p,
        ("erasure", format!("erasure request {}", p.request)),
        Some(&m),
        &mut out,
    )
    .await?;
    out.verified = format!(
        "re-query of every mapped table returned {remaining} rows of the person; {blobs_failed} blob deletions failed (each deleted blob: HEAD returned 404)"
    );
    if remaining > 0 || blobs_failed > 0 {
        return Err(crate::Error::Failed(format!(
            "erasure request {} of tenant {}: {}. The request stays open and the next run finishes it",
            p.request, p.tenant, out.verified
        )));
    }
    // Done when verified, not when started: a snapshot taken while the rows were going may
    // hold the person, and must count as taken before the erasure.
    let done = clock.now();
    out.done_at = crate::util::rfc3339(done);
    ledger::complete(
        env.store, &p.tenant, &p.request, done, hashes, tags, &out.kept,
    )
    .await?;
    r.state = State::PrimaryDone;
    r.identifier = None;
    r.resolved = None;
    r.primary = Some(out.clone());
    crash_point("before the request becomes primary_done");
    request::update(env.store, s3, &r).await?;
    crate::erasure::intake::settle(env.db, &r.id, r.state.name())?;
    env.audit
        .record(&RequestEnd {
            step: "erasure",
            phase: "end",
            plan_hash,
            tenant: &p.tenant,
            request: &p.request,
            erasure_phase: "primary",
            rows: &out.rows,
            blobs_deleted: out.blobs_deleted,
            blobs_already_absent: out.blobs_already_absent,
            kept: &out.kept,
            verified: &out.verified,
            state: r.state.name(),
        })
        .await?;
    crash_point("after an erasure end record");
    Ok(RequestOutcome {
        tenant: p.tenant.clone(),
        request: p.request.clone(),
        scope: p.scope,
        outcome: out,
        key_destroyed: None,
        backups: None,
        runs_pinned: Vec::new(),
        state: r.state,
        rewritten: Vec::new(),
    })
}

#[derive(Serialize)]
struct RewriteStart<'a> {
    step: &'static str,
    phase: &'static str,
    plan_hash: &'a str,
    tenant: &'a str,
    run_id: &'a str,
    request: &'a str,
}

#[derive(Serialize)]
struct RewriteEnd<'a> {
    step: &'static str,
    phase: &'static str,
    plan_hash: &'a str,
    tenant: &'a str,
    run_id: &'a str,
    request: &'a str,
    files: &'a [crate::snapshot::rewrite::FileChange],
    rows_dropped: u64,
    objects_purged: u64,
    verified: String,
}

fn empty_outcome(plan_hash: &str) -> PrimaryOutcome {
    PrimaryOutcome {
        done_at: String::new(),
        plan_hash: plan_hash.to_string(),
        identifiers: BTreeMap::new(),
        rows: BTreeMap::new(),
        blobs_deleted: 0,
        blobs_already_absent: 0,
        kept: Vec::new(),
        verified: String::new(),
    }
}

/// A person's backups phase: rewrite the runs that would outlive the deadline, verify each by a
/// second scan, and make the request `final` when no run taken before the erasure holds them.
async fn backups_phase(
    c: &Checked,
    env: &mut crate::retention::execute::Env<'_>,
    plan_hash: &str,
    p: &RequestPlan,
    s3: Option<&crate::s3::S3Admin>,
    now: DateTime<Utc>,
) -> crate::Result<RequestOutcome> {
    let mut r = p.req.clone().expect("planned from a request");
    env.audit
        .record(&RequestStart {
            step: "erasure",
            phase: "start",
            plan_hash,
            tenant: &p.tenant,
            request: &p.request,
            erasure_phase: "backups",
            subject: p.subject.as_deref(),
            identifiers: &p.identifiers,
            tables: &p.tables,
        })
        .await?;
    let entry = ledger::entry(env.store, &p.tenant, &p.request)
        .await?
        .ok_or_else(|| {
            crate::Error::Failed(format!(
                "request {} of tenant {} has no ledger entry; its backups cannot be searched for the person",
                p.request, p.tenant
            ))
        })?;
    let key = match env.keyring.data_key(&p.tenant) {
        Ok(k) => k,
        // The tenant's key was destroyed (offboarding): every backup of it is crypto-erased.
        Err(_) if !env.keyring.has(&p.tenant) => {
            r.state = State::Final;
            let b = request::BackupsOutcome {
                done_at: crate::util::rfc3339(now),
                plan_hash: plan_hash.to_string(),
                runs_purged: Vec::new(),
                runs_rewritten: Vec::new(),
                verified: "the tenant's data key is destroyed: no backup of the tenant can be decrypted (crypto-erase)".into(),
            };
            r.backups = Some(b.clone());
            request::update(env.store, s3, &r).await?;
            crate::erasure::intake::settle(env.db, &r.id, r.state.name())?;
            env.audit
                .record(&RequestEnd::backups(plan_hash, p, &b.verified, r.state))
                .await?;
            return Ok(RequestOutcome {
                tenant: p.tenant.clone(),
                request: p.request.clone(),
                scope: Scope::Subject,
                outcome: empty_outcome(plan_hash),
                key_destroyed: None,
                backups: Some(b),
                runs_pinned: Vec::new(),
                state: r.state,
                rewritten: Vec::new(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let kept_any = !entry.kept_tables.is_empty();
    let index_tags: Option<Vec<([u8; 16], bool)>> = (!entry.index_tags.is_empty()).then(|| {
        entry
            .index_tags
            .iter()
            .filter_map(|t| crate::snapshot::index::tag_of(t))
            .map(|t| (t, kept_any))
            .collect()
    });
    let scrub = ledger::Scrub {
        subjects: entry
            .subjects
            .iter()
            .map(|s| (s.clone(), entry.kept_tables.iter().cloned().collect()))
            .collect(),
        index_tags,
        keyring: env.keyring,
        data_map: env.dm,
        phone_country: c.policy.erasure.phone_country.clone(),
    };
    let runs = crate::snapshot::read::committed(env.store, &p.tenant).await?;
    let mut rewritten = Vec::new();
    // Every run to rewrite is audited as started, then they are rewritten together (their files
    // filtered on every core), then each is verified and audited as ended on its own.
    let mut todo = Vec::new();
    for run_id in &p.rewrite_runs {
        let Some(m) = runs.iter().find(|m| &m.run_id == run_id).cloned() else {
            continue; // purged since planning
        };
        m.authenticate(&key)
            .map_err(|message| crate::snapshot::SnapshotError::BadManifest {
                key: crate::snapshot::manifest_key(&p.tenant, run_id).to_string(),
                message: format!("{message}; not rewriting it"),
            })?;
        env.audit
            .record(&RewriteStart {
                step: "snapshot-rewrite",
                phase: "start",
                plan_hash,
                tenant: &p.tenant,
                run_id,
                request: &p.request,
            })
            .await?;
        todo.push((m, key.clone()));
    }
    let ids: Vec<String> = todo.iter().map(|(m, _)| m.run_id.clone()).collect();
    let results =
        crate::snapshot::rewrite::rewrite_runs(env.store, env.s3, &c.config.snapshot, todo, &scrub)
            .await;
    let mut first_error = None;
    for (run_id, done) in ids.iter().zip(results) {
        let done = match done {
            Ok(d) => d,
            Err(e) => {
                first_error.get_or_insert(e);
                continue;
            }
        };
        let w = done.unwrap_or(crate::snapshot::rewrite::Rewritten {
            run_id: run_id.clone(),
            files: Vec::new(),
            rows_dropped: 0,
            files_opened: 0,
            objects_purged: 0,
        });
        // Verified by a scan of the identifier columns of the files the new generation wrote.
        let new_paths: Vec<String> = w.files.iter().map(|f| f.new_path.clone()).collect();
        let left = match crate::snapshot::read::committed(env.store, &p.tenant)
            .await?
            .into_iter()
            .find(|m| &m.run_id == run_id)
        {
            Some(m) => {
                crate::snapshot::rewrite::rows_left(env.store, &key, &m, &scrub, &new_paths).await?
            }
            None => 0,
        };
        env.audit
            .record(&RewriteEnd {
                step: "snapshot-rewrite",
                phase: "end",
                plan_hash,
                tenant: &p.tenant,
                run_id,
                request: &p.request,
                files: &w.files,
                rows_dropped: w.rows_dropped,
                objects_purged: w.objects_purged,
                verified: format!(
                    "a scan of the identifier columns of the {} rewritten file(s) found {left} rows of the person",
                    w.files.len()
                ),
            })
            .await?;
        if left > 0 {
            first_error.get_or_insert(crate::Error::Failed(format!(
                "snapshot run {run_id} of tenant {} still holds {left} rows of the person after its rewrite",
                p.tenant
            )));
            continue;
        }
        rewritten.push(w.clone());
        r.rewritten.push(w);
        request::update(env.store, s3, &r).await?;
        crash_point("after a run was rewritten");
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    // Abandoned uncommitted runs taken before the erasure: purged whole.
    for run in &p.purge_runs {
        crate::snapshot::purge::purge_run_recorded(
            env.store,
            env.s3,
            env.audit,
            plan_hash,
            &p.tenant,
            run,
            &format!(
                "erasure request {}: a snapshot run taken before the erasure, never committed and abandoned",
                p.request
            ),
        )
        .await?;
    }
    // Final when no run taken before the erasure is left unrewritten.
    let erased_at = r
        .primary
        .as_ref()
        .and_then(|o| DateTime::parse_from_rfc3339(&o.done_at).ok())
        .map(|t| t.with_timezone(&Utc));
    // Every run directory counts, committed or not.
    let left = crate::snapshot::read::runs(env.store, &p.tenant)
        .await?
        .into_iter()
        .filter(|l| !r.rewritten.iter().any(|w| w.run_id == l.run_id))
        .filter(|l| {
            let created = l
                .manifest
                .as_ref()
                .and_then(|m| m.as_ref().ok())
                .map(|m| m.created_at.as_str());
            crate::retention::run_time(&l.run_id, created)
                .zip(erased_at)
                .is_none_or(|(t, e)| t <= e)
        })
        .count();
    let mut backups = None;
    if left == 0 {
        let b = request::BackupsOutcome {
            done_at: crate::util::rfc3339(now),
            plan_hash: plan_hash.to_string(),
            runs_purged: Vec::new(),
            runs_rewritten: r.rewritten.iter().map(|w| w.run_id.clone()).collect(),
            verified: "every snapshot run taken before the erasure was rewritten (a second scan found none of the person's rows) or purged by backup retention".into(),
        };
        r.state = State::Final;
        r.backups = Some(b.clone());
        backups = Some(b);
        request::update(env.store, s3, &r).await?;
        crate::erasure::intake::settle(env.db, &r.id, r.state.name())?;
    }
    let verified = format!(
        "{} run(s) rewritten; {left} run(s) taken before the erasure left to rewrite or purge",
        rewritten.len()
    );
    env.audit
        .record(&RequestEnd::backups(plan_hash, p, &verified, r.state))
        .await?;
    Ok(RequestOutcome {
        tenant: p.tenant.clone(),
        request: p.request.clone(),
        scope: Scope::Subject,
        outcome: empty_outcome(plan_hash),
        key_destroyed: None,
        backups,
        runs_pinned: Vec::new(),
        state: r.state,
        rewritten,
    })
}

/// One run of a tenant offboarding: destroy the key (at once), delete the rows (at the primary
/// deadline), purge the snapshot objects (at the backups deadline).
async fn offboard(
    env: &mut crate::retention::execute::Env<'_>,
    plan_hash: &str,
    p: &RequestPlan,
    s3: Option<&crate::s3::S3Admin>,
    now: DateTime<Utc>,
) -> crate::Result<RequestOutcome> {
    let mut r = p.req.clone().expect("planned from a request");
    let mut done = RequestOutcome {
        tenant: p.tenant.clone(),
        request: p.request.clone(),
        scope: Scope::Tenant,
        outcome: empty_outcome(plan_hash),
        key_destroyed: None,
        backups: None,
        runs_pinned: Vec::new(),
        state: r.state,
        rewritten: Vec::new(),
    };
    env.audit
        .record(&RequestStart {
            step: "erasure",
            phase: "start",
            plan_hash,
            tenant: &p.tenant,
            request: &p.request,
            erasure_phase: p.phase,
            subject: None,
            identifiers: &p.identifiers,
            tables: &p.tables,
        })
        .await?;
    crash_point("after an erasure start record");
    if p.destroy_key {
        let key_id = env.keyring.data_key(&p.tenant).ok().map(|k| k.key_id);
        env.keyring.shred(&p.tenant, env.audit, plan_hash).await?;
        // The proof is a decrypt that cannot happen: no key for the tenant is left.
        let verified = match env.keyring.data_key(&p.tenant) {
            Err(_) => "the keyring holds no data key for the tenant: no snapshot copy of it can be decrypted".to_string(),
            Ok(_) => {
                return Err(crate::Error::Failed(format!(
                    "tenant {}'s data key is still in the keyring after crypto-erase",
                    p.tenant
                )));
            }
        };
        let k = request::KeyDestroyed {
            at: crate::util::rfc3339(now),
            key_id,
            verified,
        };
        r.key_destroyed = Some(k.clone());
        done.key_destroyed = Some(k);
        request::update(env.store, s3, &r).await?;
        crash_point("after the tenant key was destroyed");
    }
    if p.rows_due {
        let out = &mut done.outcome;
        let (remaining, blobs_failed) = delete_tables(
            env,
            plan_hash,
            p,
            (
                "offboarding",
                format!("tenant offboarding request {}", p.request),
            ),
            None,
            out,
        )
        .await?;
        out.verified = format!(
            "re-query of every table returned {remaining} rows of the tenant outside the exceptions; {blobs_failed} blob deletions failed (each deleted blob: HEAD returned 404)"
        );
        if remaining > 0 || blobs_failed > 0 {
            return Err(crate::Error::Failed(format!(
                "offboarding request {} of tenant {}: {}. The request stays open and the next run finishes it",
                p.request, p.tenant, out.verified
            )));
        }
        out.done_at = crate::util::rfc3339(now);
        r.state = State::PrimaryDone;
        r.primary = Some(out.clone());
        request::update(env.store, s3, &r).await?;
        crate::erasure::intake::settle(env.db, &r.id, r.state.name())?;
        crash_point("after the offboarding primary phase");
    }
    let backups_due = !p.purge_runs.is_empty()
        || (p.phase == "backups" && p.waiting.is_none())
        || (p.rows_due
            && p.req
                .as_ref()
                .is_some_and(|r| has_come(&r.due_backups, now)));
    if backups_due && r.state == State::PrimaryDone {
        let rule = format!("tenant offboarding request {}", p.request);
        let mut purged = Vec::new();
        for run in &p.purge_runs {
            match crate::snapshot::purge::purge_run_recorded(
                env.store, env.s3, env.audit, plan_hash, &p.tenant, run, &rule,
            )
            .await?
            {
                Some(_) => purged.push(run.clone()),
                None => done.runs_pinned.push(run.clone()),
            }
        }
        let left = crate::snapshot::read::runs(env.store, &p.tenant)
            .await?
            .len();
        if done.runs_pinned.is_empty() && left == 0 {
            let b = request::BackupsOutcome {
                done_at: crate::util::rfc3339(now),
                plan_hash: plan_hash.to_string(),
                runs_purged: purged,
                runs_rewritten: Vec::new(),
                verified: "a listing of the tenant's snapshot prefix found no run left".into(),
            };
            r.state = State::Final;
            r.backups = Some(b.clone());
            done.backups = Some(b);
            request::update(env.store, s3, &r).await?;
            crate::erasure::intake::settle(env.db, &r.id, r.state.name())?;
        } else {
            tracing::warn!(tenant = %p.tenant, request = %p.request, pinned = done.runs_pinned.len(), left, "offboarding: pinned snapshot runs stay (unreadable: the key is destroyed); unpin them to finish");
        }
    }
    done.state = r.state;
    env.audit
        .record(&RequestEnd {
            step: "erasure",
            phase: "end",
            plan_hash,
            tenant: &p.tenant,
            request: &p.request,
            erasure_phase: p.phase,
            rows: &done.outcome.rows,
            blobs_deleted: done.outcome.blobs_deleted,
            blobs_already_absent: done.outcome.blobs_already_absent,
            kept: &done.outcome.kept,
            verified: &done.outcome.verified,
            state: r.state.name(),
        })
        .await?;
    crash_point("after an erasure end record");
    Ok(done)
}
