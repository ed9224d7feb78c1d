//! Differential privacy for a dataset (optional, `[datasets.<name>.privacy]`): contribution
//! bounding, discrete Laplace noise, a noisy threshold, and a privacy-budget ledger.
//!
//! - **Bounding.** In one release (one partition: a tenant's day or week, or the platform's),
//!   a subject counts in at most `max_cells_per_subject` cells (chosen at random when it is in
//!   more) and with at most `max_rows_per_subject` rows per cell. Adding or removing one person
//!   then changes a cell's distinct count by at most 1 in at most L0 cells (L1 sensitivity
//!   L0), and its row count by at most L∞ in at most L0 cells (L1 sensitivity L0·L∞).
//! - **Noise.** Every measure gets ε / M of the release's ε (M = the count measures, plus one
//!   for the distinct-subject count that the distinct measures publish and the threshold
//!   uses); the noise is discrete Laplace with scale sensitivity·M/ε, drawn exactly with integer
//!   arithmetic (Canonne, Kamath & Steinke 2020, algorithms 1–2) from the operating system's
//!   cryptographic generator (`ring::rand::SystemRandom`) — no floating-point Laplace.
//! - **Threshold.** A cell is published only if its *noisy* distinct count is at least k, and
//!   then with noisy values (never below 0); other cells are left out entirely (which cells
//!   exist is itself noisy). A cell holding one person survives with probability at most
//!   `½·exp(−(k−1)·ε/(M·L0))` per cell, the δ of the (ε, δ) guarantee.
//! - **Ledger.** Each release writes a create-only record under
//!   `analytics-ledger/<dataset>/<tenant or _platform>/` in the main store *before* the
//!   partition is published; a release whose ε would take the sum past `budget` is refused.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, UInt32Array};
use arrow::datatypes::{Field, Schema};
use arrow::row::{RowConverter, SortField};
use object_store::path::Path as ObjPath;
use ring::rand::SecureRandom;

use crate::analytics::compute;
use crate::analytics::dataset::{Dataset, Kind};

/// `[datasets.<name>.privacy]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Privacy {
    /// Per release, as a fraction `numerator / 1_000_000` (kept exact for the sampler).
    pub epsilon_micros: u64,
    /// Total per tenant (tenant scope) or per dataset (platform scope).
    pub budget_micros: u64,
    pub max_cells_per_subject: u64,
    pub max_rows_per_subject: u64,
}

impl Privacy {
    pub fn epsilon(&self) -> f64 {
        self.epsilon_micros as f64 / 1e6
    }
    pub fn budget(&self) -> f64 {
        self.budget_micros as f64 / 1e6
    }
}

/// Random bits from the operating system's cryptographic generator, read in blocks.
pub struct Rng {
    sys: ring::rand::SystemRandom,
    buf: [u8; 4096],
    at: usize,
}

impl Rng {
    pub fn new() -> Rng {
        Rng {
            sys: ring::rand::SystemRandom::new(),
            buf: [0; 4096],
            at: 4096,
        }
    }

    fn u64(&mut self) -> u64 {
        if self.at + 8 > self.buf.len() {
            self.sys
                .fill(&mut self.buf)
                .expect("the operating system's random generator works");
            self.at = 0;
        }
        let v = u64::from_le_bytes(self.buf[self.at..self.at + 8].try_into().expect("8 bytes"));
        self.at += 8;
        v
    }

    /// Uniform in `0..n` (n ≥ 1), by rejection: no modulo bias.
    fn below(&mut self, n: u128) -> u128 {
        assert!(n > 0, "an empty range");
        if n <= u64::MAX as u128 {
            let n = n as u64;
            let limit = (u64::MAX / n) * n;
            loop {
                let v = self.u64();
                if v < limit {
                    return (v % n) as u128;
                }
            }
        }
        let limit = (u128::MAX / n) * n;
        loop {
            let v = ((self.u64() as u128) << 64) | self.u64() as u128;
            if v < limit {
                return v % n;
            }
        }
    }

    /// Bernoulli(num / den), 0 ≤ num ≤ den.
    fn bernoulli(&mut self, num: u128, den: u128) -> bool {
        self.below(den) < num
    }

    /// Bernoulli(exp(−num/den)) for num/den in [0, 1] (CKS algorithm 1).
    fn bernoulli_exp_le1(&mut self, num: u128, den: u128) -> bool {
        let mut k: u128 = 1;
        while self.bernoulli(num, den * k) {
            k += 1;
        }
        k % 2 == 1
    }

    /// Bernoulli(exp(−num/den)) for any num/den ≥ 0.
    fn bernoulli_exp(&mut self, num: u128, den: u128) -> bool {
        let mut n = num;
        while n > den {
            if !self.bernoulli_exp_le1(1, 1) {
                return false;
            }
            n -= den;
        }
        self.bernoulli_exp_le1(n, den)
    }

    /// Discrete Laplace with scale `t / s`: P(x) ∝ exp(−|x|·s/t) over the integers (CKS
    /// algorithm 2). `s`, `t` ≥ 1.
    pub fn discrete_laplace(&mut self, s: u128, t: u128) -> i64 {
        loop {
            let u = self.below(t);
            if !self.bernoulli_exp(u, t) {
                continue;
            }
            let mut v: u128 = 0;
            while self.bernoulli_exp(1, 1) {
                v += 1;
            }
            let x = u + t * v;
            let y = (x / s) as i64;
            let negative = self.bernoulli(1, 2);
            if negative && y == 0 {
                continue;
            }
            return if negative { -y } else { y };
        }
    }
}

impl Default for Rng {
    fn default() -> Self {
        Rng::new()
    }
}

/// The noisy cells of one release (or several: `dt` tells them apart) from per cell and
/// subject `pairs` ([`compute::partial`]: `dt`, keys, the hashed subject, `__rows`): bounded,
/// noised, thresholded. Returns `dt`, keys and the measures (Int64), sorted by `dt`.
pub fn noisy_cells(
    pairs: &RecordBatch,
    d: &Dataset,
    p: &Privacy,
    rng: &mut Rng,
) -> crate::Result<RecordBatch> {
    let fail = |e: &dyn std::fmt::Display| {
        crate::Error::Failed(format!("dataset {}: differential privacy: {e}", d.name))
    };
    let schema = pairs.schema();
    let idx = |n: &str| schema.index_of(n).map_err(|e| fail(&e));
    let dt_i = idx(compute::DT)?;
    let key_is: Vec<usize> = std::iter::once(Ok(dt_i))
        .chain(d.keys.iter().map(|k| idx(k)))
        .collect::<crate::Result<_>>()?;
    let subjects = pairs
        .column(idx(&d.subjects[0])?)
        .as_primitive::<arrow::datatypes::UInt64Type>();
    let rows = pairs
        .column(idx("__rows")?)
        .as_primitive::<arrow::datatypes::UInt64Type>();
    let days = pairs
        .column(dt_i)
        .as_primitive::<arrow::datatypes::Date32Type>();
    let key_cols: Vec<ArrayRef> = key_is.iter().map(|&i| pairs.column(i).clone()).collect();
    let conv = RowConverter::new(
        key_cols
            .iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )
    .map_err(|e| fail(&e))?;
    let keyrows = conv.convert_columns(&key_cols).map_err(|e| fail(&e))?;
    // Cells, by their key row; the first pair of each gives the cell's keys for the output.
    let mut cell_of: HashMap<&[u8], u32> = HashMap::new();
    let mut first: Vec<u32> = Vec::new();
    let mut cell = Vec::with_capacity(pairs.num_rows());
    for i in 0..pairs.num_rows() {
        let n = cell_of.len() as u32;
        let c = *cell_of.entry(keyrows.row(i).data()).or_insert_with(|| {
            first.push(i as u32);
            n
        });
        cell.push(c);
    }
    drop(cell_of);
    // Per release and subject: its cells, at most L0 of them, chosen at random.
    let mut by_subject: HashMap<(i32, u64), Vec<usize>> = HashMap::new();
    for i in 0..pairs.num_rows() {
        if subjects.is_null(i) {
            continue; // nobody: not counted (their rows are not bounded, so not counted either)
        }
        by_subject
            .entry((days.value(i), subjects.value(i)))
            .or_default()
            .push(i);
    }
    let mut count = vec![0u64; first.len()];
    let mut people = vec![0u64; first.len()];
    for (_, mut list) in by_subject {
        let l0 = p.max_cells_per_subject as usize;
        if list.len() > l0 {
            // A uniform random subset of L0 (partial Fisher–Yates).
            for j in 0..l0 {
                let r = j + rng.below((list.len() - j) as u128) as usize;
                list.swap(j, r);
            }
            list.truncate(l0);
        }
        for i in list {
            count[cell[i] as usize] += rows.value(i).min(p.max_rows_per_subject);
            people[cell[i] as usize] += 1;
        }
    }
    let counts = d.measures.iter().filter(|m| m.kind == Kind::Count).count() as u128;
    let m = counts + 1;
    // Scale sensitivity·M/ε = sensitivity·M·10⁶ / epsilon_micros: t / s in integers.
    let s = p.epsilon_micros as u128;
    let t_people = p.max_cells_per_subject as u128 * m * 1_000_000;
    let t_count = t_people * p.max_rows_per_subject as u128;
    let mut keep = Vec::new();
    let mut noisy_people = Vec::new();
    let mut noisy_count = Vec::new();
    for c in 0..first.len() {
        let np = people[c] as i64 + rng.discrete_laplace(s, t_people);
        let nc = count[c] as i64 + rng.discrete_laplace(s, t_count);
        if np >= d.k as i64 {
            keep.push(first[c]);
            noisy_people.push(np);
            noisy_count.push(nc.max(0));
        }
    }
    // Sorted by day for splitting into partitions.
    let mut order: Vec<usize> = (0..keep.len()).collect();
    order.sort_by_key(|&j| days.value(keep[j] as usize));
    let take = UInt32Array::from(order.iter().map(|&j| keep[j]).collect::<Vec<_>>());
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for (&i, col) in key_is.iter().zip(&key_cols) {
        fields.push(Field::new(
            schema.field(i).name(),
            col.data_type().clone(),
            true,
        ));
        arrays.push(arrow::compute::take(col.as_ref(), &take, None).map_err(|e| fail(&e))?);
    }
    for meas in &d.measures {
        let values: &Vec<i64> = match meas.kind {
            Kind::Count => &noisy_count,
            _ => &noisy_people,
        };
        fields.push(Field::new(
            &meas.name,
            arrow::datatypes::DataType::Int64,
            true,
        ));
        arrays.push(Arc::new(Int64Array::from(
            order.iter().map(|&j| values[j]).collect::<Vec<_>>(),
        )));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(|e| fail(&e))
}

/// Where a dataset's (and tenant's) releases are recorded (with the trailing `/`).
pub fn ledger_prefix(d: &Dataset, tenant: Option<&str>) -> String {
    format!(
        "analytics-ledger/{}/{}/",
        d.name,
        tenant.unwrap_or("_platform")
    )
}

/// ε spent so far (in millionths): the sum over the ledger's records, whose names carry it
/// (`dt=<day>-<nanos>-eps=<micros>.json`), so one listing answers.
pub async fn spent(
    store: &crate::store::Store,
    d: &Dataset,
    tenant: Option<&str>,
) -> crate::Result<u64> {
    let mut total = 0u64;
    for m in store.list(&ObjPath::from(ledger_prefix(d, tenant))).await? {
        let name = m.location.filename().unwrap_or_default();
        let micros = name
            .rsplit_once("-eps=")
            .and_then(|(_, rest)| rest.strip_suffix(".json"))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| {
                crate::Error::Failed(format!(
                    "privacy ledger: {} is not a lethe record; refusing to publish {} until the ledger holds only its records",
                    m.location, d.name
                ))
            })?;
        total = total.saturating_add(micros);
    }
    Ok(total)
}

/// Record a release of partition `day` (create-only), before it is published.
pub async fn record(
    store: &crate::store::Store,
    d: &Dataset,
    tenant: Option<&str>,
    day: chrono::NaiveDate,
    p: &Privacy,
    spent_before: u64,
    now: chrono::DateTime<chrono::Utc>,
) -> crate::Result<()> {
    let key = ObjPath::from(format!(
        "{}dt={day}-{}-eps={}.json",
        ledger_prefix(d, tenant),
        now.timestamp_nanos_opt().unwrap_or_default(),
        p.epsilon_micros
    ));
    let body = serde_json::json!({
        "format": "lethe-privacy-ledger/1",
        "dataset": d.name,
        "tenant": tenant,
        "dt": day.to_string(),
        "epsilon": p.epsilon(),
        "spent_before": spent_before as f64 / 1e6,
        "budget": p.budget(),
        "mechanism": "discrete-laplace",
        "max_cells_per_subject": p.max_cells_per_subject,
        "max_rows_per_subject": p.max_rows_per_subject,
        "k": d.k,
        "released_at": now.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
    });
    if !store
        .put_create(&key, bytes::Bytes::from(body.to_string()))
        .await?
    {
        return Err(crate::Error::Failed(format!(
            "privacy ledger record {key} exists already; not publishing over it"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sampler's frequencies match the discrete Laplace pmf, P(x) = (1−q)/(1+q)·q^|x| with
    /// q = exp(−s/t), within 5 standard errors for |x| ≤ 8; mean near 0, variance near
    /// 2q/(1−q)².
    #[test]
    fn discrete_laplace_matches_its_distribution() {
        let mut rng = Rng::new();
        for (s, t) in [(1u128, 2u128), (3, 2), (1_000_000, 3_000_000)] {
            let n = 200_000usize;
            let mut hist: HashMap<i64, usize> = HashMap::new();
            let (mut sum, mut sq) = (0f64, 0f64);
            for _ in 0..n {
                let x = rng.discrete_laplace(s, t);
                *hist.entry(x).or_default() += 1;
                sum += x as f64;
                sq += (x * x) as f64;
            }
            let q = (-(s as f64) / t as f64).exp();
            for x in -8i64..=8 {
                let p = (1.0 - q) / (1.0 + q) * q.powi(x.unsigned_abs() as i32);
                let want = p * n as f64;
                let got = *hist.get(&x).unwrap_or(&0) as f64;
                let se = (n as f64 * p * (1.0 - p)).sqrt().max(1.0);
                assert!(
                    (got - want).abs() <= 5.0 * se,
                    "s/t = {s}/{t}, x = {x}: {got} drawn, {want:.0} expected"
                );
            }
            let var = 2.0 * q / (1.0 - q).powi(2);
            let mean = sum / n as f64;
            assert!(mean.abs() < 5.0 * (var / n as f64).sqrt(), "mean {mean}");
            let v = sq / n as f64 - mean * mean;
            assert!((v - var).abs() < 0.05 * var, "variance {v}, expected {var}");
        }
    }

    #[test]
    fn bernoulli_exp_matches_exp() {
        let mut rng = Rng::new();
        for (num, den) in [(1u128, 3u128), (5, 2), (0, 1)] {
            let n = 100_000;
            let hits = (0..n).filter(|_| rng.bernoulli_exp(num, den)).count() as f64;
            let p = (-(num as f64) / den as f64).exp();
            let se = (n as f64 * p * (1.0 - p)).sqrt().max(1.0);
            assert!(
                (hits - p * n as f64).abs() <= 5.0 * se,
                "{num}/{den}: {hits}"
            );
        }
    }

    #[test]
    fn below_is_uniform_and_in_range() {
        let mut rng = Rng::new();
        let mut hist = [0usize; 7];
        for _ in 0..70_000 {
            let v = rng.below(7) as usize;
            hist[v] += 1;
        }
        for h in hist {
            assert!((h as f64 - 10_000.0).abs() < 500.0, "{hist:?}");
        }
        assert_eq!(rng.below(1), 0);
        assert!(rng.below(u64::MAX as u128 + 10) <= u64::MAX as u128 + 9);
    }
}
