//! The `analytics` step (issue 12, in progress): every tenant-scoped dataset of
//! `jobs/analytics.toml`, from each tenant's newest committed snapshot, written as plain zstd
//! Parquet to `analytics/<dataset>/tenant=<t>/dt=YYYY-MM-DD/part-0.parquet`.
//!
//! - Only complete periods are published (a day before today, a week before this week, UTC),
//!   and each partition exactly once: a partition that exists is **frozen** — never recomputed
//!   (after retention deleted rows, a second release would let a reader difference the two).
//!   Each partition is one create-only put: readers see all of it or nothing.
//! - Cells with fewer than `k` distinct subjects are published with null measures.
//! - Platform-wide datasets are not computed yet (a warning says so).

use std::sync::Arc;

use object_store::path::Path as ObjPath;
use polars::prelude::*;

use crate::analytics::compute;
use crate::analytics::dataset::{self, Period, Scope};
use crate::check::Checked;
use crate::clock::Clock;
use crate::store::Store;

/// What a run of the step did.
#[derive(Debug, Default)]
pub struct AnalyticsRun {
    /// Partitions written.
    pub written: Vec<String>,
    /// Partitions that existed already (frozen).
    pub frozen: usize,
    /// Cells published with null measures (fewer than k subjects).
    pub suppressed: usize,
}

/// The datasets of `jobs/analytics.toml` (none without the file).
pub fn datasets(c: &Checked) -> crate::Result<Vec<dataset::Dataset>> {
    let path = dataset::path_in(&c.config.jobs);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(Vec::new());
    };
    let source = crate::source::Source::open(&c.config.source)?;
    let columns = |t: &str| -> Option<Vec<String>> {
        source
            .columns(t)
            .ok()
            .flatten()
            .map(|c| c.into_iter().map(|c| c.name).collect())
    };
    dataset::parse(&path, &text, &c.data_map, &c.policy, &columns).map_err(crate::Error::Check)
}

pub async fn run(c: &Checked, clock: &Arc<dyn Clock>) -> crate::Result<AnalyticsRun> {
    let mut out = AnalyticsRun::default();
    let sets = datasets(c)?;
    if sets.is_empty() {
        return Ok(out);
    }
    for d in sets.iter().filter(|d| d.scope == Scope::Platform) {
        tracing::warn!(dataset = %d.name, "platform-wide datasets are not computed in this build");
    }
    let store = Store::open(&c.config.store)?;
    let keyring = crate::keys::Keyring::open(&c.config.keyring, &c.config.master_key, false)?;
    let today = clock.now().date_naive();
    for tenant in crate::snapshot::read::tenants(&store).await? {
        let Some(m) = crate::snapshot::read::newest_committed(&store, &tenant).await? else {
            continue;
        };
        // A tenant whose key was destroyed (offboarded) has nothing to aggregate.
        let Ok(key) = keyring.data_key(&tenant) else {
            continue;
        };
        for d in sets.iter().filter(|d| d.scope == Scope::Tenant) {
            let table = c
                .data_map
                .table(&d.table)
                .expect("datasets are validated against the data map");
            let time = table
                .config
                .time_column
                .as_deref()
                .expect("datasets need a time column");
            let batches = compute::read_table(&store, &key, &m, &d.table).await?;
            if batches.is_empty() {
                continue;
            }
            let fail = |e: PolarsError| {
                crate::Error::Failed(format!("dataset {} of tenant {tenant}: {e}", d.name))
            };
            let df = compute::to_polars(&batches).map_err(fail)?;
            let agg = compute::aggregate(df, d, time).map_err(fail)?;
            out.suppressed += agg
                .column(compute::SUBJECTS)
                .map_err(fail)?
                .as_materialized_series()
                .lt(d.k as i64)
                .map_err(fail)?
                .sum()
                .unwrap_or(0) as usize;
            let published = compute::suppress_small(agg, d).map_err(fail)?;
            let days = published
                .column("dt")
                .map_err(fail)?
                .cast(&DataType::Date)
                .map_err(fail)?;
            let mut seen = std::collections::BTreeSet::new();
            for i in 0..days.len() {
                let Ok(AnyValue::Date(n)) = days.get(i) else {
                    continue;
                };
                let Some(day) = chrono::NaiveDate::from_num_days_from_ce_opt(n + 719_163) else {
                    continue;
                };
                let end = day
                    + match d.period {
                        Period::Day => chrono::TimeDelta::days(1),
                        Period::Week => chrono::TimeDelta::days(7),
                    };
                if end > today || !seen.insert(day) {
                    continue; // not complete yet, or done
                }
                let key = ObjPath::from(format!(
                    "analytics/{}/tenant={tenant}/dt={day}/part-0.parquet",
                    d.name
                ));
                if store.head(&key).await?.is_some() {
                    out.frozen += 1;
                    continue;
                }
                let part = published
                    .clone()
                    .lazy()
                    .filter(col("dt").cast(DataType::Date).eq(lit(day)))
                    // The partition's path carries `dt` (and `tenant`): Hive readers add them.
                    .drop(by_name(["dt"], true, false))
                    .collect()
                    .map_err(fail)?;
                let bytes = compute::to_parquet(&part)?;
                if store.put_create(&key, bytes::Bytes::from(bytes)).await? {
                    out.written.push(key.to_string());
                } else {
                    out.frozen += 1;
                }
            }
        }
    }
    tracing::info!(
        written = out.written.len(),
        frozen = out.frozen,
        suppressed = out.suppressed,
        "analytics done"
    );
    Ok(out)
}
