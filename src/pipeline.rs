//! The one module that orders the stages. Today: snapshot. Each stage reads and writes typed,
//! persisted artifacts (the snapshot manifest now; the retention plan, outcomes and
//! certificates as they arrive), never another stage's internals.

use std::path::Path;
use std::sync::Arc;

use crate::check::{Checked, check};
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
    snapshot_all(&checked, only).await
}

pub async fn snapshot_all(c: &Checked, only: &[String]) -> crate::Result<SnapshotRun> {
    let cfg = &c.config;
    let source = Source::open(&cfg.source)?;
    let mut tenants = source.tenants(&c.data_map)?;
    drop(source);
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
    let store = Store::open(&cfg.store)?;
    // Keys for every tenant first: the keyring is written by one task only.
    let mut keyring = Keyring::open(&cfg.keyring, &cfg.master_key, true)?;
    let mut jobs = Vec::new();
    for t in &tenants {
        let key = keyring.data_key_or_create(&t.id)?;
        jobs.push(TenantJob {
            tenant: t.id.clone(),
            run_id: new_run_id(chrono::Utc::now()),
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
    run.done.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    run.failed.sort();
    Ok(run)
}
