//! The `analytics` step: every dataset of `jobs/analytics.toml`, from each tenant's newest
//! committed snapshot, published as plain zstd Parquet, Hive-partitioned:
//! `analytics/<dataset>/tenant=<t>/dt=YYYY-MM-DD/part-0.parquet` (scope `tenant`, the owner's
//! report) and `analytics/<dataset>/dt=YYYY-MM-DD/part-0.parquet` (scope `platform`), in the
//! `[analytics]` store (default: the main store).
//!
//! - **Complete periods only**, in the tenant's time zone, and complete *in the snapshot*: a
//!   day is published once the tenant's snapshot began after its local midnight. A platform
//!   period waits for every tenant's.
//! - **Frozen**: a partition that exists is never recomputed (after retention deleted rows, a
//!   second release would let a reader difference the two), except by `--rebuild`, which says
//!   what it risks. Each partition is one put: readers see all of it or nothing.
//! - **k-anonymity**: cells with fewer than `k` distinct subjects are published with null
//!   measures. Releases publish no margins (see [`compute::suppress_small`]).
//! - Tenants are worked on four at a time (download and decryption, then Polars on a blocking
//!   thread); a tenant's partitions are written sixteen at a time. Platform datasets merge
//!   per-tenant partials (per cell and hashed subject), so memory is one tenant's table plus
//!   the partials of the periods not yet published.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use chrono::{NaiveDate, TimeDelta};
use futures::StreamExt;
use object_store::path::Path as ObjPath;
use polars::prelude::*;

use crate::analytics::compute::{self, SubjectHasher};
use crate::analytics::dataset::{self, Dataset, Period, Scope};
use crate::analytics::privacy;
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
    /// Partitions replaced by `--rebuild`.
    pub replaced: usize,
    /// Cells published with null measures (fewer than k subjects).
    pub suppressed: usize,
}

/// How the step runs.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Recompute every complete partition of these datasets and replace the published ones.
    pub rebuild: Vec<String>,
}

/// The datasets of `jobs/analytics.toml` (none without the file).
pub fn datasets(c: &Checked) -> crate::Result<Vec<Dataset>> {
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

/// The store datasets are published to.
pub fn output_store(c: &Checked) -> crate::Result<Store> {
    Ok(match &c.config.analytics.store {
        Some(spec) => Store::create(spec)?,
        None => Store::open(&c.config.store)?,
    })
}

fn prefix(d: &Dataset, tenant: Option<&str>) -> String {
    match tenant {
        Some(t) => format!("analytics/{}/tenant={t}/", d.name),
        None => format!("analytics/{}/", d.name),
    }
}

fn partition_key(d: &Dataset, tenant: Option<&str>, day: NaiveDate) -> ObjPath {
    ObjPath::from(format!("{}dt={day}/part-0.parquet", prefix(d, tenant)))
}

/// Where the step keeps, per tenant dataset, the period through which everything is
/// published: in the output store, beside (not inside) the datasets' trees.
fn state_key(d: &Dataset, tenant: &str) -> ObjPath {
    ObjPath::from(format!("analytics/_state/{}/tenant={tenant}.json", d.name))
}

/// Every period of the tenant's dataset through this one is published (or had no cells, or,
/// with differential privacy, was released empty). `None`: no state yet, or unreadable (then the
/// published partitions are listed instead).
async fn state_through(
    store: &Store,
    d: &Dataset,
    tenant: &str,
) -> crate::Result<Option<NaiveDate>> {
    let Some(bytes) = store.get_opt(&state_key(d, tenant)).await? else {
        return Ok(None);
    };
    let through = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["through"].as_str().map(String::from))
        .and_then(|t| NaiveDate::parse_from_str(&t, "%Y-%m-%d").ok());
    if through.is_none() {
        tracing::warn!(
            dataset = %d.name,
            tenant,
            "the analytics state is unreadable; listing the published partitions instead"
        );
    }
    Ok(through)
}

async fn write_state(
    store: &Store,
    d: &Dataset,
    tenant: &str,
    through: NaiveDate,
) -> crate::Result<()> {
    let body = serde_json::json!({
        "format": "lethe-analytics-state/1",
        "dataset": d.name,
        "tenant": tenant,
        "through": through.to_string(),
    });
    store
        .put(&state_key(d, tenant), bytes::Bytes::from(body.to_string()))
        .await?;
    Ok(())
}

/// The periods already published under `prefix` (from the `dt=` of each partition).
async fn published(store: &Store, prefix: &str) -> crate::Result<BTreeSet<NaiveDate>> {
    Ok(store
        .list(&ObjPath::from(prefix))
        .await?
        .iter()
        .filter_map(|m| {
            let p = m.location.as_ref();
            let rest = p.strip_prefix(prefix)?;
            let day = rest.strip_prefix("dt=")?.split('/').next()?;
            NaiveDate::parse_from_str(day, "%Y-%m-%d").ok()
        })
        .collect())
}

/// The first platform period whose partition is missing, given the published ones: the first
/// gap, or the period after the newest (complete platform periods without rows are published
/// empty, so a gap is a partition a failed run did not write).
fn platform_from(done: &BTreeSet<NaiveDate>, period: Period) -> Option<NaiveDate> {
    let (first, last) = (*done.first()?, *done.last()?);
    let mut day = first;
    while day <= last {
        if !done.contains(&day) {
            return Some(day);
        }
        day += period.duration();
    }
    Some(last + period.duration())
}

/// One tenant's inputs, owned, for the blocking thread.
struct TenantWork {
    tenant: String,
    zone: chrono_tz::Tz,
    /// Periods that end on or before this local date are complete in the snapshot.
    complete_before: NaiveDate,
    tables: BTreeMap<String, Vec<arrow::array::RecordBatch>>,
    /// Per dataset (index into the datasets), tenant scope: the published periods (listed
    /// when the dataset has no state yet), and the first period to compute (after the state's
    /// `through`).
    published: Vec<BTreeSet<NaiveDate>>,
    from: Vec<Option<NaiveDate>>,
    /// Per dataset, platform scope: the first period to compute.
    platform_from: Vec<Option<NaiveDate>>,
}

/// A partition to publish.
struct Part {
    key: ObjPath,
    bytes: bytes::Bytes,
    /// It replaces a published one (`--rebuild`).
    replace: bool,
    /// A differentially private release: (dataset index, period), to be recorded in the
    /// ledger first.
    dp: Option<(usize, NaiveDate)>,
}

#[derive(Default)]
struct TenantOut {
    parts: Vec<Part>,
    frozen: usize,
    suppressed: usize,
    partials: Vec<(usize, DataFrame)>,
}

fn time_column<'a>(c: &'a Checked, d: &Dataset) -> &'a str {
    c.data_map
        .table(&d.table)
        .and_then(|t| t.config.time_column.as_deref())
        .expect("datasets are validated against the data map")
}

/// A tenant's cells and partitions (blocking: Polars and the Parquet encoder).
fn compute_tenant(
    w: TenantWork,
    sets: &[Dataset],
    times: &[String],
    rebuild: &[bool],
) -> crate::Result<TenantOut> {
    let mut out = TenantOut::default();
    let mut rng = privacy::Rng::new();
    let mut frames: BTreeMap<&str, DataFrame> = BTreeMap::new();
    for (i, d) in sets.iter().enumerate() {
        let fail = |e: PolarsError| {
            crate::Error::Failed(format!("dataset {} of tenant {}: {e}", d.name, w.tenant))
        };
        let df = match frames.get(d.table.as_str()) {
            Some(df) => df.clone(),
            None => {
                let Some(batches) = w.tables.get(&d.table).filter(|b| !b.is_empty()) else {
                    continue;
                };
                let df = compute::to_polars(batches).map_err(fail)?;
                frames.insert(d.table.as_str(), df.clone());
                df
            }
        };
        // The newest period start that is complete.
        let last_start = w.complete_before - d.period.duration();
        match d.scope {
            Scope::Platform => {
                let p = compute::partial(df, d, &times[i], w.zone, w.platform_from[i])
                    .and_then(|p| {
                        p.lazy()
                            .filter(col(compute::DT).lt_eq(lit(last_start)))
                            .collect()
                    })
                    .map_err(fail)?;
                out.partials.push((i, p));
            }
            Scope::Tenant => {
                let upto = |f: DataFrame| {
                    f.lazy()
                        .filter(col(compute::DT).lt_eq(lit(last_start)))
                        .collect()
                };
                let (batch, first) = match &d.privacy {
                    None => {
                        let agg = compute::aggregate(df, d, &times[i], w.zone, w.from[i])
                            .and_then(upto)
                            .map_err(fail)?;
                        let parts = publishable(agg, d).map_err(fail)?;
                        out.suppressed += parts.suppressed;
                        (parts.batch, None)
                    }
                    Some(p) => {
                        let pairs = compute::partial(df, d, &times[i], w.zone, w.from[i])
                            .and_then(upto)
                            .map_err(fail)?;
                        let pairs = compute::to_batch(&pairs)?;
                        // From the first period after the state's, or with rows.
                        let first = w.from[i].or_else(|| first_period(&pairs));
                        (privacy::noisy_cells(&pairs, d, p, &mut rng)?, first)
                    }
                };
                let mut by_day = by_period(&batch)?;
                if let Some(first) = first {
                    // Every complete period from the first with rows gets a release, empty or
                    // not: whether a partition exists must not tell more than the noise.
                    fill_periods(&mut by_day, &batch, first, last_start, d.period);
                }
                for (day, batch) in by_day {
                    if !rebuild[i] && w.published[i].contains(&day) {
                        out.frozen += 1;
                        continue;
                    }
                    out.parts.push(Part {
                        key: partition_key(d, Some(&w.tenant), day),
                        bytes: bytes::Bytes::from(compute::to_parquet(&batch)?),
                        replace: rebuild[i],
                        dp: d.privacy.as_ref().map(|_| (i, day)),
                    });
                }
            }
        }
    }
    Ok(out)
}

struct Publishable {
    batch: arrow::array::RecordBatch,
    suppressed: usize,
}

/// Cells as published: small ones with null measures, as one arrow batch sorted by `dt`.
fn publishable(agg: DataFrame, d: &Dataset) -> PolarsResult<Publishable> {
    let suppressed = agg
        .column(compute::SUBJECTS)?
        .as_materialized_series()
        .lt(d.k as i64)?
        .sum()
        .unwrap_or(0) as usize;
    let published = compute::suppress_small(agg, d)?;
    let batch = compute::to_batch(&published).map_err(|e| polars_err!(ComputeError: "{e}"))?;
    Ok(Publishable { batch, suppressed })
}

/// The earliest `dt` in `batch`, if any.
fn first_period(batch: &arrow::array::RecordBatch) -> Option<NaiveDate> {
    use arrow::array::AsArray;
    let i = batch.schema().index_of(compute::DT).ok()?;
    let days = batch
        .column(i)
        .as_primitive::<arrow::datatypes::Date32Type>();
    let min = arrow::compute::min(days)?;
    NaiveDate::from_num_days_from_ce_opt(min + 719_163)
}

/// `batch` (sorted by `dt`) as one batch per period, without `dt`.
fn by_period(
    batch: &arrow::array::RecordBatch,
) -> crate::Result<BTreeMap<NaiveDate, arrow::array::RecordBatch>> {
    Ok(compute::split_by_dt(batch)?.into_iter().collect())
}

/// Add an empty partition (the schema of `like`, without `dt`) for every period from `from`
/// through `through` that has none.
fn fill_periods(
    by_day: &mut BTreeMap<NaiveDate, arrow::array::RecordBatch>,
    like: &arrow::array::RecordBatch,
    from: NaiveDate,
    through: NaiveDate,
    period: Period,
) {
    let mut empty = like.slice(0, 0);
    if let Ok(i) = empty.schema().index_of(compute::DT) {
        empty.remove_column(i);
    }
    let mut day = from;
    while day <= through {
        by_day.entry(day).or_insert_with(|| empty.clone());
        day += period.duration();
    }
}

/// Record each differentially private part in its ledger, oldest period first, while the
/// budget lasts; the parts past it are left out and counted in `refused`.
async fn gate(
    store: &Store,
    sets: &[Dataset],
    tenant: Option<&str>,
    parts: Vec<Part>,
    now: chrono::DateTime<chrono::Utc>,
    refused: &Mutex<Vec<Refusal>>,
) -> crate::Result<(Vec<Part>, BTreeMap<usize, NaiveDate>)> {
    let mut held: BTreeMap<usize, NaiveDate> = BTreeMap::new();
    let (mut dp, mut out): (Vec<Part>, Vec<Part>) = parts.into_iter().partition(|p| p.dp.is_some());
    dp.sort_by_key(|p| p.dp);
    let mut spent: BTreeMap<usize, u64> = BTreeMap::new();
    for part in dp {
        let (i, day) = part.dp.expect("partitioned on it");
        let d = &sets[i];
        let p = d.privacy.as_ref().expect("a dp part's dataset has privacy");
        let so_far = match spent.get(&i) {
            Some(v) => *v,
            None => privacy::spent(store, d, tenant).await?,
        };
        if so_far + p.epsilon_micros > p.budget_micros {
            spent.insert(i, so_far);
            held.entry(i).or_insert(day);
            let mut r = refused.lock().expect("not poisoned");
            match r
                .iter_mut()
                .find(|r| r.dataset == d.name && r.tenant.as_deref() == tenant)
            {
                Some(r) => r.partitions += 1,
                None => r.push(Refusal {
                    dataset: d.name.clone(),
                    tenant: tenant.map(String::from),
                    partitions: 1,
                    spent: so_far as f64 / 1e6,
                    budget: p.budget(),
                    epsilon: p.epsilon(),
                }),
            }
            continue;
        }
        privacy::record(store, d, tenant, day, p, so_far, now).await?;
        spent.insert(i, so_far + p.epsilon_micros);
        out.push(part);
    }
    Ok((out, held))
}

/// Releases a privacy budget refused.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub dataset: String,
    pub tenant: Option<String>,
    pub partitions: usize,
    pub spent: f64,
    pub budget: f64,
    pub epsilon: f64,
}

/// Write `parts` (create-only, or replacing where flagged), sixteen at a time.
async fn write_parts(
    store: &Store,
    parts: Vec<Part>,
    out: &Mutex<AnalyticsRun>,
) -> crate::Result<()> {
    let mut puts = futures::stream::iter(parts.into_iter().map(|p| async move {
        let (key, bytes, replace) = (p.key, p.bytes, p.replace);
        if replace {
            let existed = store.head(&key).await?.is_some();
            store.put(&key, bytes).await?;
            Ok::<_, crate::Error>((key, true, existed))
        } else {
            let created = store.put_create(&key, bytes).await?;
            Ok((key, created, false))
        }
    }))
    .buffer_unordered(16);
    while let Some(r) = puts.next().await {
        let (key, written, replaced) = r?;
        let mut o = out.lock().expect("not poisoned");
        if replaced {
            o.replaced += 1;
        }
        if written {
            o.written.push(key.to_string());
        } else {
            o.frozen += 1;
        }
    }
    Ok(())
}

pub async fn run(
    c: &Checked,
    clock: &Arc<dyn Clock>,
    opts: &Options,
) -> crate::Result<AnalyticsRun> {
    let sets = Arc::new(datasets(c)?);
    for name in &opts.rebuild {
        if !sets.iter().any(|d| &d.name == name) {
            return Err(crate::Error::Usage(format!(
                "--rebuild {name}: {} declares no dataset {name}",
                dataset::path_in(&c.config.jobs).display()
            )));
        }
    }
    if sets.is_empty() {
        return Ok(AnalyticsRun::default());
    }
    let rebuild: Arc<Vec<bool>> = Arc::new(
        sets.iter()
            .map(|d| opts.rebuild.contains(&d.name))
            .collect(),
    );
    for d in sets.iter().filter(|d| opts.rebuild.contains(&d.name)) {
        tracing::warn!(
            dataset = %d.name,
            "rebuilding: every complete partition is recomputed from today's snapshots and replaces the published one; \
             a reader who kept the old release can difference the two and learn about rows deleted or people erased since"
        );
    }
    let times: Arc<Vec<String>> =
        Arc::new(sets.iter().map(|d| time_column(c, d).to_string()).collect());
    let store = Store::open(&c.config.store)?;
    let out_store = output_store(c)?;
    let keyring = crate::keys::Keyring::open(&c.config.keyring, &c.config.master_key, false)?;
    let hasher = SubjectHasher::random(c.policy.erasure.phone_country.clone())?;
    let now = clock.now();
    // Tenants' zones, from the live tenants table (no personal data); the default elsewhere.
    let source = crate::source::Source::open(&c.config.source)?;
    let default_zone = c.config.analytics.time_zone;
    let live = source.tenants(&c.data_map)?.valid;
    // Platform periods wait for these tenants' snapshots: the live ones not cancelled (a
    // cancelled tenant's last snapshot stays for months and would hold the platform back).
    let holders: BTreeSet<String> = live
        .iter()
        .filter(|t| {
            crate::retention::plan::TenantInfo {
                id: t.id.clone(),
                status: t.status.clone(),
                cancelled_at: t.cancelled_at,
            }
            .cancelled()
            .is_none()
        })
        .map(|t| t.id.clone())
        .collect();
    let zones: BTreeMap<String, chrono_tz::Tz> = live
        .into_iter()
        .map(|t| {
            let zone = match t.time_zone.as_deref().map(str::parse::<chrono_tz::Tz>) {
                None => default_zone,
                Some(Ok(z)) => z,
                Some(Err(_)) => {
                    tracing::warn!(
                        tenant = %t.id,
                        value = ?t.time_zone,
                        default = %default_zone,
                        "the tenant's time zone is not an IANA zone; its analytics use the default"
                    );
                    default_zone
                }
            };
            (t.id, zone)
        })
        .collect();
    drop(source);
    // Columns read per table: what its datasets need; subject columns are hashed in the normal
    // form of their identifier kind.
    let mut columns: BTreeMap<&str, (Vec<String>, Vec<compute::SubjectColumn>)> = BTreeMap::new();
    for (i, d) in sets.iter().enumerate() {
        let e = columns.entry(d.table.as_str()).or_default();
        e.0.extend(compute::columns_of(d, &times[i]));
        let kinds = c.data_map.table(&d.table).map(|t| &t.config.identifiers);
        e.1.extend(d.subjects.iter().map(|s| {
            let kind = kinds.and_then(|k| k.get(s)).cloned().unwrap_or_default();
            (s.clone(), kind)
        }));
    }
    for (cols, subj) in columns.values_mut() {
        cols.sort();
        cols.dedup();
        subj.sort();
        subj.dedup();
    }
    let mut platform_start: Vec<Option<NaiveDate>> = vec![None; sets.len()];
    let mut platform_done: Vec<BTreeSet<NaiveDate>> = vec![BTreeSet::new(); sets.len()];
    for (i, d) in sets.iter().enumerate() {
        if d.scope == Scope::Platform && !rebuild[i] {
            platform_done[i] = published(&out_store, &prefix(d, None)).await?;
            platform_start[i] = platform_from(&platform_done[i], d.period);
        }
    }
    let out = Mutex::new(AnalyticsRun::default());
    let refused: Mutex<Vec<Refusal>> = Mutex::new(Vec::new());
    let partials: Mutex<Vec<Vec<DataFrame>>> = Mutex::new(vec![Vec::new(); sets.len()]);
    // The local date before which each tenant's periods are complete.
    let horizon: Mutex<Vec<(String, NaiveDate)>> = Mutex::new(Vec::new());
    let tenants = crate::snapshot::read::tenants(&store).await?;
    let mut work = futures::stream::iter(tenants.into_iter().map(|tenant| {
        let (store, out_store, keyring, columns) = (&store, &out_store, &keyring, &columns);
        let (sets, rebuild, out, partials, horizon) = (&sets, &rebuild, &out, &partials, &horizon);
        let (sets_arc, times_arc, rebuild_arc) = (sets.clone(), times.clone(), rebuild.clone());
        let (zones, platform_start, refused, holders, hasher) =
            (&zones, &platform_start, &refused, &holders, &hasher);
        async move {
            let Some(m) = crate::snapshot::read::newest_committed(store, &tenant).await? else {
                return Ok::<_, crate::Error>(());
            };
            // A tenant whose key was destroyed (offboarded) has nothing to aggregate.
            let Ok(key) = keyring.data_key(&tenant) else {
                return Ok(());
            };
            let zone = zones.get(&tenant).copied().unwrap_or(default_zone);
            let taken = chrono::DateTime::parse_from_rfc3339(&m.created_at)
                .map_err(|e| {
                    crate::Error::Failed(format!(
                        "snapshot run {} of {tenant}: created_at: {e}",
                        m.run_id
                    ))
                })?
                .with_timezone(&zone);
            let complete_before = taken.min(now.with_timezone(&zone)).date_naive();
            if holders.contains(&tenant) {
                horizon
                    .lock()
                    .expect("not poisoned")
                    .push((tenant.clone(), complete_before));
            }
            let mut published_sets = vec![BTreeSet::new(); sets.len()];
            let mut from = vec![None; sets.len()];
            for (i, d) in sets.iter().enumerate() {
                if d.scope == Scope::Tenant && !rebuild[i] {
                    match state_through(out_store, d, &tenant).await? {
                        Some(through) => from[i] = Some(through + d.period.duration()),
                        None => {
                            published_sets[i] =
                                published(out_store, &prefix(d, Some(&tenant))).await?
                        }
                    }
                }
            }
            // A table none of whose datasets has a period to publish is not read at all.
            let due = |i: usize, d: &Dataset| {
                let last = complete_before - d.period.duration();
                match d.scope {
                    Scope::Tenant => rebuild[i] || from[i].is_none_or(|f| f <= last),
                    Scope::Platform => rebuild[i] || platform_start[i].is_none_or(|f| f <= last),
                }
            };
            let mut tables = BTreeMap::new();
            for (table, (cols, subjects)) in columns {
                if !sets
                    .iter()
                    .enumerate()
                    .any(|(i, d)| d.table == *table && due(i, d))
                {
                    continue;
                }
                let batches = compute::read_table(
                    store,
                    &key,
                    &m,
                    table,
                    Some(cols.as_slice()),
                    Some((hasher, subjects.as_slice())),
                )
                .await?;
                tables.insert(table.to_string(), batches);
            }
            let w = TenantWork {
                tenant: tenant.clone(),
                zone,
                complete_before,
                tables,
                published: published_sets,
                from: from.clone(),
                platform_from: platform_start.clone(),
            };
            let done = tokio::task::spawn_blocking(move || {
                compute_tenant(w, &sets_arc, &times_arc, &rebuild_arc)
            })
            .await
            .map_err(|e| crate::Error::Failed(format!("analytics of tenant {tenant}: {e}")))??;
            {
                let mut o = out.lock().expect("not poisoned");
                o.frozen += done.frozen;
                o.suppressed += done.suppressed;
            }
            {
                let mut p = partials.lock().expect("not poisoned");
                for (i, df) in done.partials {
                    p[i].push(df);
                }
            }
            let (parts, held) = gate(store, sets, Some(&tenant), done.parts, now, refused).await?;
            write_parts(out_store, parts, out).await?;
            // Everything through the newest complete period is published (or, with a spent
            // privacy budget, through the period before the first one held back).
            for (i, d) in sets.iter().enumerate() {
                if d.scope != Scope::Tenant {
                    continue;
                }
                let last = complete_before - d.period.duration();
                let through = match held.get(&i) {
                    Some(first_held) => *first_held - d.period.duration(),
                    None => last,
                };
                if from[i] != Some(through + d.period.duration()) {
                    write_state(out_store, d, &tenant, through).await?;
                }
            }
            Ok(())
        }
    }))
    .buffer_unordered(4);
    while let Some(r) = work.next().await {
        r?;
    }
    drop(work);
    // Platform datasets: merged over tenants, published up to the period every tenant has
    // complete.
    let horizon = horizon.into_inner().expect("not poisoned");
    let partials = partials.into_inner().expect("not poisoned");
    for (i, (d, parts)) in sets.iter().zip(partials).enumerate() {
        if d.scope != Scope::Platform {
            continue;
        }
        let Some((behind, before)) = horizon.iter().min_by_key(|(_, day)| *day).cloned() else {
            continue;
        };
        let last_start = before - d.period.duration();
        let fail = |e: PolarsError| crate::Error::Failed(format!("dataset {}: {e}", d.name));
        let upto = |m: DataFrame| {
            if m.width() == 0 {
                return Ok(m);
            }
            m.lazy()
                .filter(col(compute::DT).lt_eq(lit(last_start)))
                .collect()
        };
        let batch = match &d.privacy {
            None => {
                let merged = compute::merge(parts, d).and_then(upto).map_err(fail)?;
                if merged.width() == 0 {
                    continue;
                }
                let p = publishable(merged, d).map_err(fail)?;
                out.lock().expect("not poisoned").suppressed += p.suppressed;
                p.batch
            }
            Some(p) => {
                let pairs = compute::concat_partials(parts)
                    .and_then(upto)
                    .map_err(fail)?;
                if pairs.width() == 0 {
                    continue;
                }
                let pairs = compute::to_batch(&pairs)?;
                privacy::noisy_cells(&pairs, d, p, &mut privacy::Rng::new())?
            }
        };
        let mut by_day = by_period(&batch)?;
        // Complete periods without rows are published empty, so that gaps mean failures.
        if let Some(from) = by_day
            .keys()
            .next()
            .copied()
            .into_iter()
            .chain(platform_start[i])
            .min()
        {
            fill_periods(&mut by_day, &batch, from, last_start, d.period);
        }
        if last_start < now.date_naive() - d.period.duration() - TimeDelta::days(1) {
            tracing::warn!(
                dataset = %d.name,
                tenant = %behind,
                through = %last_start,
                "platform periods wait for this tenant's snapshot to cover them"
            );
        }
        let mut parts = Vec::new();
        for (day, batch) in by_day {
            if !rebuild[i] && platform_done[i].contains(&day) {
                out.lock().expect("not poisoned").frozen += 1;
                continue;
            }
            parts.push(Part {
                key: partition_key(d, None, day),
                bytes: bytes::Bytes::from(compute::to_parquet(&batch)?),
                replace: rebuild[i],
                dp: d.privacy.as_ref().map(|_| (i, day)),
            });
        }
        let (parts, _) = gate(&store, &sets, None, parts, now, &refused).await?;
        write_parts(&out_store, parts, &out).await?;
    }
    let mut out = out.into_inner().expect("not poisoned");
    out.written.sort();
    tracing::info!(
        written = out.written.len(),
        frozen = out.frozen,
        replaced = out.replaced,
        suppressed = out.suppressed,
        "analytics done"
    );
    let refused = refused.into_inner().expect("not poisoned");
    if !refused.is_empty() {
        let lines: Vec<String> = refused
            .iter()
            .map(|r| {
                format!(
                    "dataset {}{}: privacy budget spent ({} of {} used, {} per release): {} partition(s) not published",
                    r.dataset,
                    r.tenant
                        .as_deref()
                        .map(|t| format!(" for tenant {t}"))
                        .unwrap_or_default(),
                    r.spent,
                    r.budget,
                    r.epsilon,
                    r.partitions
                )
            })
            .collect();
        return Err(crate::Error::Failed(format!(
            "{} (and {} partition(s) published, {} frozen); raise the dataset's privacy.budget knowingly (every release adds to what can be learned about a person), or remove the dataset",
            lines.join("; "),
            out.written.len(),
            out.frozen
        )));
    }
    Ok(out)
}

/// The newest partition of `d` with a published (non-null) value — else the newest with rows —
/// and up to `rows` of its rows, formatted for a terminal: what `lethe demo` shows.
pub async fn preview(store: &Store, d: &Dataset, rows: usize) -> crate::Result<Option<String>> {
    use arrow::array::Array;
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let mut parts: Vec<String> = store
        .list(&ObjPath::from(prefix(d, None)))
        .await?
        .into_iter()
        .map(|m| m.location.to_string())
        .collect();
    // Newest day first; among tenants, the first.
    let dt = |p: &str| p.split("dt=").nth(1).unwrap_or_default().to_string();
    parts.sort_by(|a, b| dt(b).cmp(&dt(a)).then(a.cmp(b)));
    // The newest partition with a published value; else the newest with rows.
    let mut shown = None;
    for p in parts.iter().take(500) {
        let bytes = store.get(&ObjPath::from(p.as_str())).await?;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.with_batch_size(rows.max(1)).build())
            .map_err(|e| crate::Error::Failed(format!("{p}: {e}")))?;
        let Some(batch) = reader.into_iter().next() else {
            continue;
        };
        let batch = batch.map_err(|e| crate::Error::Failed(format!("{p}: {e}")))?;
        if batch.num_rows() == 0 {
            continue;
        }
        let published = d
            .measures
            .first()
            .and_then(|m| batch.column_by_name(&m.name))
            .is_some_and(|c| c.null_count() < c.len());
        if published {
            shown = Some((p.clone(), batch));
            break;
        }
        if shown.is_none() {
            shown = Some((p.clone(), batch));
        }
    }
    let nonempty = shown;
    let Some((path, batch)) = nonempty else {
        return Ok(None);
    };
    let opts = FormatOptions::default().with_null("null");
    let mut table: Vec<Vec<String>> = vec![
        batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect(),
    ];
    let formatters = batch
        .columns()
        .iter()
        .map(|a| ArrayFormatter::try_new(a.as_ref(), &opts))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| crate::Error::Failed(format!("{path}: {e}")))?;
    for r in 0..batch.num_rows().min(rows) {
        table.push(
            formatters
                .iter()
                .map(|f| match f.value(r).to_string() {
                    v if v.len() > 12 && v.parse::<f64>().is_ok() => {
                        format!("{:.1}", v.parse::<f64>().unwrap_or_default())
                    }
                    v => v,
                })
                .collect(),
        );
    }
    let widths: Vec<usize> = (0..table[0].len())
        .map(|c| table.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = format!("{path}\n");
    for r in &table {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:>w$}"))
            .collect();
        out.push_str("  ");
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    Ok(Some(out))
}
