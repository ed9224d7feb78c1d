//! The one module that orders the stages: [`run_steps`] runs a job's steps in the order its
//! file lists them (`lethe run nightly`, the demo and every file in deploy/ go through it; `lethe
//! run snapshot|retention` is the same function with one step). Each stage reads and writes
//! typed, persisted artifacts (the snapshot manifest, the retention plan, run records; outcomes
//! and certificates as they arrive), never another stage's internals.
//!
//! A job run writes `runs/<job>/<run-id>.json` in the store: when it started and finished, and
//! per step its outcome, counts and seconds. A failed step stops the steps after it; a tenant
//! whose snapshot failed alone is reported and the job exits 1 at the end.

use std::path::Path;
use std::sync::Arc;

use crate::check::{Checked, check};
use crate::clock::Clock;
use crate::keys::Keyring;
use crate::snapshot::Manifest;
use crate::snapshot::new_run_id;
use crate::snapshot::write::{RunSpec, TenantJob, snapshot_run};
use crate::source::Source;
use crate::store::Store;

/// What one tenant's snapshot produced.
#[derive(Debug, Clone)]
pub struct TenantSnapshot {
    pub tenant: String,
    pub manifest: Manifest,
    /// Seconds from the start of the run until this tenant's run committed (tenants are read
    /// in one pass, so they finish close together).
    pub seconds: f64,
}

/// Outcome of a snapshot run over all tenants: successes and per-tenant failures.
#[derive(Debug)]
pub struct SnapshotRun {
    pub done: Vec<TenantSnapshot>,
    pub failed: Vec<(String, String)>,
}

/// `lethe run snapshot`: validate everything, then snapshot every tenant.
pub async fn run_snapshot(config: &Path, only: &[String]) -> crate::Result<SnapshotRun> {
    let checked = check(config)?;
    snapshot_all(&checked, only, &crate::clock::system()).await
}

pub async fn snapshot_all(
    c: &Checked,
    only: &[String],
    clock: &Arc<dyn Clock>,
) -> crate::Result<SnapshotRun> {
    let cfg = &c.config;
    let source = Source::open(&cfg.source)?;
    let list = source.tenants(&c.data_map)?;
    drop(source);
    let mut tenants = list.valid;
    let bad = if only.is_empty() { list.bad } else { vec![] };
    for b in &bad {
        tracing::error!(tenant = %b.shown, "{b}");
    }
    if !only.is_empty() {
        for t in only {
            if !tenants.iter().any(|x| &x.id == t) {
                return Err(crate::Error::Usage(format!(
                    "tenant {t:?} is not in the tenants table"
                )));
            }
        }
        tenants.retain(|t| only.contains(&t.id));
    }
    let store = Store::create(&cfg.store)?;
    refuse_new_keys(cfg, &store).await?;
    // One snapshot run at a time: what another left half-uploaded is then abandoned for sure.
    let lease = crate::lease::Lease::acquire(
        &store,
        crate::snapshot::uploads::SNAPSHOT_LEASE,
        "lethe run snapshot",
    )
    .await
    .map_err(crate::audit::AuditError::from)?;
    let result = snapshot_locked(c, only, clock, &store, tenants, bad).await;
    // A run refused before it uploaded anything (a wrong key, an offboarded tenant named)
    // leaves no trace, not even its lease.
    let released = match &result {
        Ok(_) => lease.release().await,
        Err(_) => lease.release_untouched().await,
    };
    if let Err(e) = released {
        tracing::warn!(error = %e, "could not release the snapshot lease; it expires by itself");
    }
    result
}

async fn snapshot_locked(
    c: &Checked,
    only: &[String],
    clock: &Arc<dyn Clock>,
    store: &Store,
    mut tenants: Vec<crate::source::Tenant>,
    bad: Vec<crate::source::BadTenant>,
) -> crate::Result<SnapshotRun> {
    let cfg = &c.config;
    let store = store.clone();
    match crate::snapshot::uploads::abort(
        &cfg.store,
        &store,
        crate::snapshot::uploads::Whose::AllAbandoned,
    )
    .await
    {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            aborted = n,
            "a crashed snapshot left incomplete uploads; they are aborted"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "could not list or abort incomplete uploads; the next run tries again")
        }
    }
    // An offboarded tenant is never snapshotted again (its key is destroyed; a new backup
    // would need a new key and keep what the controller asked to erase).
    let offboarded: Vec<(String, String)> = crate::erasure::request::list(&store, None)
        .await?
        .into_iter()
        .flatten()
        .filter(|r| r.scope == crate::erasure::request::Scope::Tenant)
        .map(|r| (r.tenant, r.id))
        .collect();
    for (t, id) in &offboarded {
        if only.contains(t) {
            return Err(crate::Error::Usage(format!(
                "tenant {t} is being offboarded (request {id}); it is not snapshotted any more"
            )));
        }
        if tenants.iter().any(|x| &x.id == t) {
            tracing::info!(tenant = %t, request = %id, "tenant offboarded: not snapshotted");
        }
    }
    tenants.retain(|t| !offboarded.iter().any(|(o, _)| o == &t.id));
    // Keys for every tenant first: the keyring is written by one task only.
    let mut keyring = Keyring::open(&cfg.keyring, &cfg.master_key, true)?;
    let mut jobs = Vec::new();
    let mut lost_keys = Vec::new();
    for t in &tenants {
        let key = match tenant_key(cfg, &mut keyring, &store, &t.id).await? {
            Ok(k) => k,
            Err(lost) => {
                // This tenant fails; the others go on.
                lost_keys.push((t.id.clone(), lost));
                continue;
            }
        };
        jobs.push(TenantJob {
            tenant: t.id.clone(),
            run_id: new_run_id(clock.now()),
            key,
        });
    }
    let spec = RunSpec {
        source: cfg.source.clone(),
        data_map: Arc::new(c.data_map.clone()),
        master_key_id: keyring.master_key_id().to_string(),
        policy_version: c.policy.version.clone(),
        policy_hash: c.policy.hash.clone(),
        settings: cfg.snapshot.clone(),
        selective: !only.is_empty(),
        audit_head: crate::audit::newest_checkpoint(&store)
            .await?
            .map(|(_, cp)| crate::snapshot::manifest::AuditHead {
                seq: cp.seq,
                record_hash: cp.record_hash,
            }),
        clock: clock.clone(),
        tagger: Some(crate::snapshot::index::Tagger::new(
            &keyring.subject_key(),
            &c.data_map,
            c.policy.erasure.phone_country.clone(),
        )),
    };
    tracing::info!(tenants = jobs.len(), store = %cfg.store.url, "snapshot started");
    let results = snapshot_run(&store, spec, jobs).await;
    let mut run = SnapshotRun {
        done: Vec::new(),
        failed: Vec::new(),
    };
    for (tenant, r) in results {
        match r {
            Ok((manifest, seconds)) => {
                tracing::info!(tenant = %tenant, run = %manifest.run_id, rows = manifest.rows(), bytes = manifest.bytes(), seconds, "tenant snapshot committed");
                run.done.push(TenantSnapshot {
                    tenant,
                    manifest,
                    seconds,
                });
            }
            Err(e) => {
                tracing::error!(tenant = %tenant, error = %e, "tenant snapshot failed; its run stays uncommitted");
                run.failed.push((tenant, e.to_string()));
            }
        }
    }
    for b in bad {
        run.failed.push((b.shown.clone(), b.to_string()));
    }
    for (t, why) in lost_keys {
        tracing::error!(tenant = %t, "{why}");
        run.failed.push((t, why));
    }
    run.done.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    run.failed.sort();
    Ok(run)
}

/// `tenant`'s data key, created on first use, or (inner `Err`) why it may not be: the tenant's
/// snapshots were made under a key this keyring does not hold and never destroyed, and a new
/// key would leave them unreadable.
pub(crate) async fn tenant_key(
    cfg: &crate::config::Config,
    keyring: &mut Keyring,
    store: &Store,
    tenant: &str,
) -> crate::Result<Result<crate::keys::DataKey, String>> {
    if !keyring.has(tenant)
        && let Some(m) = crate::snapshot::read::newest_committed(store, tenant).await?
        && !keyring.was_shredded(&m.key_id)
    {
        return Ok(Err(format!(
            "the keyring {} has no data key for tenant {tenant}, but its snapshots (e.g. run {}) were made under data key {}: restore the keyring from your backup; lethe does not create a new key over existing snapshots",
            cfg.keyring.display(),
            m.run_id,
            m.key_id
        )));
    }
    Ok(Ok(keyring.data_key_or_create(tenant)?))
}

/// Keys are never created over a store that holds what other keys made: a missing keyring,
/// master key or signing key is restored from backup, not replaced (first use still creates).
pub(crate) async fn refuse_new_keys(
    cfg: &crate::config::Config,
    store: &Store,
) -> crate::Result<()> {
    let expected = crate::keys::StoreKeys::read(store).await?;
    crate::keys::refuse_recreate(
        &cfg.keyring,
        &cfg.master_key,
        &crate::sign::signing_key_path(&cfg.keyring),
        &expected,
    )?;
    Ok(())
}

/// How a run was asked for.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Retention: execute only the plan with this hash (also confirms a plan the brake stopped).
    pub plan_hash: Option<String>,
    /// Erasure: execute only the plan with this hash (also confirms requests the brake stopped).
    pub erasure_plan_hash: Option<String>,
    /// Retention: plan as of this instant (never later than the clock).
    pub now: Option<chrono::DateTime<chrono::Utc>>,
    /// Snapshot: only these tenants.
    pub tenants: Vec<String>,
    /// Where every step reads the time.
    pub clock: Arc<dyn Clock>,
    /// Analytics: datasets to rebuild.
    pub analytics: crate::analytics::run::Options,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            plan_hash: None,
            erasure_plan_hash: None,
            now: None,
            tenants: Vec::new(),
            clock: crate::clock::system(),
            analytics: Default::default(),
        }
    }
}

/// What one step of a run did, as the run record keeps it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepRecord {
    pub step: &'static str,
    /// `ok`, `failed` (the step stopped; later steps were skipped), `tenants_failed` (some
    /// tenants failed alone, the others committed), `requests_stopped` (erasure requests the
    /// brake or resolution stopped; the others ran) or `skipped`.
    pub outcome: &'static str,
    pub seconds: f64,
    /// Counts, never personal data: rows, blobs, runs, tenants.
    pub counts: std::collections::BTreeMap<&'static str, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `runs/<job>/<run-id>.json`: one run of a job.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunRecord {
    pub format: &'static str,
    pub job: String,
    pub run_id: String,
    pub started_at: String,
    pub finished_at: String,
    /// `ok` or `failed`.
    pub outcome: &'static str,
    pub steps: Vec<StepRecord>,
}

/// What a run of steps did: the record, each step's result, and the error that stopped it.
#[derive(Debug)]
pub struct JobRun {
    pub record: RunRecord,
    pub retention: Option<RetentionRun>,
    pub erasure: Option<crate::erasure::run::ErasureRun>,
    pub snapshot: Option<SnapshotRun>,
    pub analytics: Option<crate::analytics::run::AnalyticsRun>,
    /// The error of the step that failed (its exit code is the run's).
    pub error: Option<crate::Error>,
}

impl JobRun {
    /// 0 when every step and tenant succeeded, else the failed step's code, or 1.
    pub fn exit_code(&self) -> u8 {
        match &self.error {
            Some(e) => e.exit_code(),
            None if self.record.outcome == "ok" => 0,
            None => 1,
        }
    }
}

/// The job named `name` of `jobs/*.toml`, or an error naming the jobs and steps there are.
pub fn job<'a>(c: &'a Checked, name: &str) -> crate::Result<&'a crate::jobs::Job> {
    c.jobs.iter().find(|j| j.name == name).ok_or_else(|| {
        crate::Error::Usage(format!(
            "no job or step named {name:?}; jobs in {}: {}; steps: {}",
            c.config.jobs.display(),
            if c.jobs.is_empty() {
                "none".to_string()
            } else {
                c.jobs
                    .iter()
                    .map(|j| j.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            crate::jobs::Step::available_names()
        ))
    })
}

/// Run `steps` in order: the one way every job runs. `record_as`: the job name to write a run
/// record for (`None` for a single step run by hand, which leaves no record — a refused step
/// then leaves no trace at all).
pub async fn run_steps(
    c: &Checked,
    steps: &[crate::jobs::Step],
    opts: &RunOptions,
    record_as: Option<&str>,
) -> crate::Result<JobRun> {
    use crate::jobs::Step;
    let started = opts.clock.now();
    let mut run = JobRun {
        record: RunRecord {
            format: "lethe-run/1",
            job: record_as.unwrap_or_default().to_string(),
            run_id: new_run_id(started),
            started_at: crate::util::rfc3339(started),
            finished_at: String::new(),
            outcome: "ok",
            steps: Vec::new(),
        },
        retention: None,
        erasure: None,
        snapshot: None,
        analytics: None,
        error: None,
    };
    for &step in steps {
        let mut rec = StepRecord {
            step: step.name(),
            outcome: "ok",
            seconds: 0.0,
            counts: Default::default(),
            error: None,
        };
        if run.error.is_some() {
            rec.outcome = "skipped";
            run.record.steps.push(rec);
            continue;
        }
        let t0 = std::time::Instant::now();
        tracing::info!(
            step = step.name(),
            job = record_as.unwrap_or(""),
            "step started"
        );
        let result: crate::Result<()> = match step {
            Step::Retention => match crate::clock::as_of(&*opts.clock, opts.now) {
                Err(e) => Err(e),
                Ok(now) => run_retention(c, &opts.clock, now, opts.plan_hash.as_deref())
                    .await
                    .and_then(|r| {
                        let o = &r.outcome;
                        rec.counts.insert("rows", o.rows());
                        rec.counts.insert("blobs_deleted", o.blobs_deleted);
                        rec.counts.insert("blobs_already_absent", o.blobs_absent);
                        rec.counts.insert("blobs_left_pending", o.blobs_pending);
                        rec.counts.insert("backup_runs_purged", o.runs.len() as u64);
                        rec.counts.insert("keys_shredded", o.shredded.len() as u64);
                        // What was done is reported (kept in `run.retention`) even when the
                        // run did not verify.
                        let verdict = if o.verified() {
                            Ok(())
                        } else {
                            Err(unverified(&r))
                        };
                        run.retention = Some(r);
                        verdict
                    }),
            },
            Step::Erasure => {
                crate::erasure::run::run(c, &opts.clock, opts.erasure_plan_hash.as_deref())
                    .await
                    .map(|r| {
                        rec.counts.insert("requests_done", r.done.len() as u64);
                        rec.counts.insert("rows", r.rows());
                        rec.counts.insert("blobs_deleted", r.blobs());
                        rec.counts
                            .insert("requests_stopped", r.stopped.len() as u64);
                        if !r.stopped.is_empty() {
                            rec.outcome = "requests_stopped";
                            run.record.outcome = "failed";
                        }
                        run.erasure = Some(r);
                    })
            }
            Step::Analytics => crate::analytics::run::run(c, &opts.clock, &opts.analytics)
                .await
                .map(|a| {
                    rec.counts
                        .insert("partitions_written", a.written.len() as u64);
                    rec.counts.insert("partitions_frozen", a.frozen as u64);
                    rec.counts.insert("partitions_replaced", a.replaced as u64);
                    rec.counts.insert("cells_suppressed", a.suppressed as u64);
                    run.analytics = Some(a);
                }),
            Step::Snapshot => snapshot_all(c, &opts.tenants, &opts.clock).await.map(|s| {
                rec.counts.insert("tenants_committed", s.done.len() as u64);
                rec.counts.insert("tenants_failed", s.failed.len() as u64);
                rec.counts
                    .insert("rows", s.done.iter().map(|t| t.manifest.rows()).sum());
                rec.counts
                    .insert("bytes", s.done.iter().map(|t| t.manifest.bytes()).sum());
                if !s.failed.is_empty() {
                    rec.outcome = "tenants_failed";
                    run.record.outcome = "failed";
                }
                run.snapshot = Some(s);
            }),
            other => Err(crate::Error::Usage(format!(
                "step {other} is not in this build; its steps are: {}",
                Step::available_names()
            ))),
        };
        rec.seconds = t0.elapsed().as_secs_f64();
        if let Err(e) = result {
            tracing::error!(step = step.name(), error = %e, "step failed");
            rec.outcome = "failed";
            rec.error = Some(e.to_string());
            run.record.outcome = "failed";
            run.error = Some(e);
        }
        run.record.steps.push(rec);
    }
    run.record.finished_at = crate::util::rfc3339(opts.clock.now());
    if let Some(job) = record_as {
        let store = Store::create(&c.config.store)?;
        let key = object_store::path::Path::from(format!("runs/{job}/{}.json", run.record.run_id));
        store
            .put(
                &key,
                bytes::Bytes::from(serde_json::to_vec_pretty(&run.record).expect("serializable")),
            )
            .await?;
        tracing::info!(job, run = %run.record.run_id, outcome = run.record.outcome, "run recorded");
    }
    Ok(run)
}

/// The keyring if it exists: planning never creates one (before the first snapshot there is
/// none, and a refused run must leave no trace).
fn existing_keyring(cfg: &crate::config::Config) -> crate::Result<Option<Keyring>> {
    Ok(if cfg.keyring.exists() {
        Some(Keyring::open(&cfg.keyring, &cfg.master_key, false)?)
    } else {
        None
    })
}

/// The one planning path of `lethe plan` and `lethe run retention`: inventory at `now` (with
/// the preflight), then the pure planner, with subjects hashed under the keyring's subject key.
async fn plan_with(
    c: &Checked,
    db: &mut crate::retention::db::Db,
    store: &Store,
    blobs: Option<&Store>,
    keyring: Option<&Keyring>,
    now: chrono::DateTime<chrono::Utc>,
) -> crate::Result<crate::retention::plan::RetentionPlan> {
    let keyed = keyring
        .map(|k| k.tenants().map(String::from).collect())
        .unwrap_or_default();
    let started = std::time::Instant::now();
    let inv = crate::retention::inventory(c, db, store, blobs, keyed, now).await?;
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        units = inv.units.len(),
        runs = inv.runs.len(),
        "inventory taken"
    );
    let hash = |s: &str| match keyring {
        Some(k) => k.subject_hash(s),
        None => "hmac:(no keyring yet)".to_string(),
    };
    Ok(crate::retention::plan::plan(
        &inv,
        &c.data_map,
        &c.policy,
        &c.config.retention,
        now,
        &hash,
    )
    .map_err(crate::retention::Refusal::Stale)?)
}

/// The blob store, opened without creating anything (a missing local directory is an error).
fn blob_store(cfg: &crate::config::Config) -> crate::Result<Option<Store>> {
    Ok(cfg.blobs.as_ref().map(Store::open).transpose()?)
}

/// Plan retention at `now` without changing anything anywhere: the database is opened read-only,
/// nothing is written to the store or the keyring.
pub async fn retention_plan(
    c: &Checked,
    now: chrono::DateTime<chrono::Utc>,
) -> crate::Result<crate::retention::plan::RetentionPlan> {
    let cfg = &c.config;
    let keyring = existing_keyring(cfg)?;
    let mut db = crate::retention::db::Db::open(&cfg.source, false, &cfg.retention)?;
    let blobs = blob_store(cfg)?;
    // A local store that does not exist yet has no runs: plan against an empty directory
    // rather than create the store.
    let empty;
    let store = if Store::exists(&cfg.store) {
        Store::open(&cfg.store)?
    } else {
        empty = tempfile::tempdir().map_err(|e| crate::Error::Usage(format!("temp dir: {e}")))?;
        Store::open(&crate::config::StoreSpec::local(format!(
            "file://{}",
            empty.path().display()
        )))?
    };
    plan_with(c, &mut db, &store, blobs.as_ref(), keyring.as_ref(), now).await
}

/// Plan the open erasure requests without changing anything (database read-only, nothing
/// created in the store or the keyring).
pub async fn erasure_plan(c: &Checked) -> crate::Result<crate::erasure::run::ErasurePlan> {
    let cfg = &c.config;
    let keyring = existing_keyring(cfg)?;
    let mut db = crate::retention::db::Db::open(&cfg.source, false, &cfg.retention)?;
    if !Store::exists(&cfg.store) {
        return crate::erasure::run::empty_plan(c);
    }
    let store = Store::open(&cfg.store)?;
    crate::erasure::run::plan(
        c,
        &mut db,
        &store,
        keyring.as_ref(),
        crate::clock::system().now(),
    )
    .await
}

/// What `lethe run retention` did.
#[derive(Debug)]
pub struct RetentionRun {
    pub plan: crate::retention::plan::RetentionPlan,
    pub outcome: crate::retention::execute::Outcome,
}

/// The lease every destructive run holds (retention now; erasure will share it), so that two
/// never run at once.
pub const DESTRUCTIVE_LEASE: &str = "destructive";

/// A plan hash as people paste it: `sha256:<hex>` or the bare hex, any case.
pub fn normalize_plan_hash(h: &str) -> String {
    let h = h.trim();
    let hex = h
        .strip_prefix("sha256:")
        .or_else(|| h.strip_prefix("SHA256:"))
        .unwrap_or(h);
    format!("sha256:{}", hex.to_ascii_lowercase())
}

/// `lethe run retention`: take the lease, plan at `now`, check the plan against `expect_hash`
/// (or the brake), execute, audit, checkpoint, release.
pub async fn run_retention(
    c: &Checked,
    clock: &Arc<dyn Clock>,
    now: chrono::DateTime<chrono::Utc>,
    expect_hash: Option<&str>,
) -> crate::Result<RetentionRun> {
    let cfg = &c.config;
    let store = Store::create(&cfg.store)?;
    refuse_new_keys(cfg, &store).await?;
    let lease = std::sync::Arc::new(
        crate::lease::Lease::acquire(&store, DESTRUCTIVE_LEASE, "lethe run retention")
            .await
            .map_err(crate::audit::AuditError::from)?,
    );
    let mut touched = false;
    let result = retention_locked(
        c,
        &store,
        clock,
        now,
        expect_hash,
        lease.clone(),
        &mut touched,
    )
    .await;
    release(lease, touched).await;
    result
}

async fn retention_locked(
    c: &Checked,
    store: &Store,
    clock: &Arc<dyn Clock>,
    now: chrono::DateTime<chrono::Utc>,
    expect_hash: Option<&str>,
    lease: std::sync::Arc<crate::lease::Lease>,
    touched: &mut bool,
) -> crate::Result<RetentionRun> {
    use crate::retention::{db::Db, execute};
    let cfg = &c.config;
    // Nothing is created before the plan passes its checks: a refused run leaves no trace.
    let existing = existing_keyring(cfg)?;
    let mut db = Db::open(&cfg.source, true, &cfg.retention)?;
    let blobs = blob_store(cfg)?;
    let s3 = crate::snapshot::purge::s3_admin_for(&cfg.store).await?;
    let blobs_s3 = match &cfg.blobs {
        Some(b) => crate::snapshot::purge::s3_admin_for(b).await?,
        None => None,
    };
    let started = std::time::Instant::now();
    let plan = plan_with(c, &mut db, store, blobs.as_ref(), existing.as_ref(), now).await?;
    let now_text = crate::retention::plan::bound_text(now);
    let confirm = format!(
        "lethe run retention --now {} --plan-hash {}",
        crate::retention::plan::bound_text(now),
        plan.hash
    );
    if c.policy.orphans == crate::policy::Orphans::Refuse && !plan.orphans.is_empty() {
        return Err(crate::retention::Refusal::Orphans {
            what: plan
                .orphans
                .iter()
                .map(|o| o.to_string())
                .collect::<Vec<_>>()
                .join("; "),
            policy: c.policy.path.display().to_string(),
        }
        .into());
    }
    match expect_hash.map(normalize_plan_hash) {
        Some(h) if h != plan.hash => {
            return Err(crate::retention::Refusal::PlanChanged {
                confirmed: h,
                current: plan.hash.clone(),
                now: now_text,
            }
            .into());
        }
        Some(_) => {}
        None if !plan.brake.is_empty() => {
            let what: Vec<String> = plan
                .brake
                .iter()
                .map(|b| {
                    format!(
                        "{}: {} of {} rows (over {})",
                        b.table, b.rows, b.of_rows, b.limit
                    )
                })
                .collect();
            return Err(crate::retention::Refusal::Brake {
                what: what.join("; "),
                now: now_text,
                confirm,
            }
            .into());
        }
        None => {}
    }
    // From here on, keys, audit records and deletions: the run leaves a trace.
    *touched = true;
    let mut keyring = match existing {
        Some(k) => k,
        None => Keyring::open(&cfg.keyring, &cfg.master_key, true)?,
    };
    let mut audit = open_audit(c, store, clock, lease).await?;
    audit
        .record(&crate::audit::event::RetentionStart {
            step: "retention",
            phase: "start",
            plan_hash: &plan.hash,
            now: &plan.now,
            policy_version: &plan.policy_version,
            policy_hash: &plan.policy_hash,
            planned: &plan.totals,
            confirmed: expect_hash.is_some(),
        })
        .await?;
    let subject_key = keyring.subject_key();
    let mut env = execute::Env {
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
        blob_budget: crate::blobs::BlobBudget::new(&cfg.retention),
    };
    let outcome = execute::execute(&mut env, &plan).await?;
    audit
        .record(&crate::audit::event::RetentionEnd {
            step: "retention",
            phase: "end",
            plan_hash: &plan.hash,
            rows: outcome.rows(),
            blobs_deleted: outcome.blobs_deleted,
            blobs_already_absent: outcome.blobs_absent,
            runs_purged: outcome.runs.len(),
            keys_shredded: outcome.shredded.len(),
            blobs_left_pending: outcome.blobs_pending,
            blobs_stopped: outcome.blobs_stopped.as_deref(),
            verified: outcome.verified(),
        })
        .await?;
    // Half-uploaded snapshot files a crashed run left (no live snapshot run owns them).
    match crate::snapshot::uploads::abort(
        &cfg.store,
        store,
        crate::snapshot::uploads::Whose::NotLive,
    )
    .await
    {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            aborted = n,
            "a crashed snapshot left incomplete uploads; they are aborted"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "could not list or abort incomplete uploads; the next run tries again")
        }
    }
    // What the run left, measured right after it: the evidence `lethe attest` rests on.
    let measuring = std::time::Instant::now();
    match crate::retention::measure::measure(c, &mut db, store, None, now, None).await {
        Ok(m) => {
            tracing::info!(
                tenants = m.tenants.len(),
                seconds = measuring.elapsed().as_secs_f64(),
                "what retention left is measured"
            );
            audit
                .record(&crate::audit::event::Measure {
                    step: "measure",
                    phase: "retention",
                    plan_hash: &plan.hash,
                    measurement: &m,
                })
                .await?;
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not measure what retention left; attestations of this period rest on earlier measurements")
        }
    }
    close_audit(c, &mut audit, clock).await?;
    tracing::info!(
        plan = %plan.hash,
        rows = outcome.rows(),
        blobs = outcome.blobs_deleted,
        blobs_already_absent = outcome.blobs_absent,
        blobs_failed = outcome.blobs_failed,
        blobs_left_pending = outcome.blobs_pending,
        runs_purged = outcome.runs.len(),
        keys_shredded = outcome.shredded.len(),
        seconds = started.elapsed().as_secs_f64(),
        verified = outcome.verified(),
        "retention done"
    );
    Ok(RetentionRun { plan, outcome })
}

/// The error of a retention run that did not verify (its report is printed first).
pub fn unverified(run: &RetentionRun) -> crate::Error {
    let (plan, outcome) = (&run.plan, &run.outcome);
    let rows_left: u64 = outcome.units.iter().map(|u| u.remaining).sum();
    let runs_left = outcome.runs.iter().filter(|r| !r.verified).count();
    if rows_left == 0 && runs_left == 0 {
        return crate::Error::Failed(format!(
            "retention deleted every due row, but {} blob deletions are pending in the outbox ({}); the next run retries them (plan {})",
            outcome.blobs_pending,
            outcome
                .blobs_stopped
                .as_deref()
                .unwrap_or("the blob store refused or failed them; see the WARN lines"),
            plan.hash
        ));
    }
    crate::Error::Failed(format!(
        "retention ran but verification found {rows_left} due rows, {runs_left} snapshot runs and {} blobs left (see the audit log's end records, plan {})",
        outcome.blobs_pending, plan.hash
    ))
}

/// Release the destructive lease. A run refused before it changed anything leaves no trace, not
/// even its lease.
pub(crate) async fn release(lease: Arc<crate::lease::Lease>, touched: bool) {
    match Arc::try_unwrap(lease) {
        Ok(l) => {
            let released = if touched {
                l.release().await
            } else {
                l.release_untouched().await
            };
            if let Err(e) = released {
                tracing::warn!(error = %e, "could not release the lease; it expires by itself");
            }
        }
        Err(_) => tracing::warn!("the lease is still shared; it expires by itself"),
    }
}

/// The audit log a destructive run appends to, guarded by its lease, with what an interrupted
/// run left open closed. Refuses a log shorter than what the keyring directory anchors (the
/// wrong store, or a cut log): appending there would start a second chain and record deletions
/// where nobody looks.
pub(crate) async fn open_audit(
    c: &Checked,
    store: &Store,
    clock: &Arc<dyn Clock>,
    lease: Arc<crate::lease::Lease>,
) -> crate::Result<crate::audit::AuditLog> {
    let cfg = &c.config;
    let signer = crate::sign::SigningKey::load_or_create(
        &crate::sign::signing_key_path(&cfg.keyring),
        true,
    )?;
    let lock = crate::audit::object_lock_writer(cfg).await?;
    let mut audit =
        crate::audit::AuditLog::open(store.clone(), signer, lock, clock.clone()).await?;
    let anchor_file = crate::audit::anchor_path(&cfg.keyring);
    if let Some(a) = crate::audit::read_anchor(&anchor_file)
        && audit.head().is_none_or(|h| h.seq < a.seq)
    {
        return Err(crate::retention::Refusal::LogBehindAnchor {
            store: store.url.clone(),
            head: audit
                .head()
                .map_or("empty".to_string(), |h| format!("at record {}", h.seq)),
            anchor_file: anchor_file.display().to_string(),
            anchored: a.seq,
        }
        .into());
    }
    audit.guard(lease);
    audit.close_interrupted().await?;
    Ok(audit)
}

/// After a destructive run: expire audit records past 12 months, sign a checkpoint and anchor
/// it beside the keyring.
pub(crate) async fn close_audit(
    c: &Checked,
    audit: &mut crate::audit::AuditLog,
    clock: &Arc<dyn Clock>,
) -> crate::Result<()> {
    audit
        .expire(clock.now(), crate::span::Span::Months(12))
        .await?;
    if let Some(cp) = audit.checkpoint().await?
        && let Err(e) = crate::audit::write_anchor(&c.config.keyring, &cp)
    {
        tracing::warn!(error = %e, file = %crate::audit::anchor_path(&c.config.keyring).display(), "could not record the audit anchor beside the keyring");
    }
    Ok(())
}
