//! One tenant's table, from its newest committed snapshot, aggregated with Polars: the files
//! are downloaded (ciphertext), decrypted by arrow-rs with the tenant's key — only the columns
//! the datasets read — and handed to Polars through the Arrow C Data Interface: never the live
//! database, never a plaintext file. Memory: one tenant's table (those columns).
//!
//! Subject columns never reach Polars as they are: arrow-rs replaces each value by a keyed
//! SipHash-1-3 of it ([`SubjectHasher`], a random key per run, kept in memory only), which is
//! all that distinct counts need. The same key for every tenant of a run makes one person one
//! subject across tenants in platform-wide datasets.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType as ArrowType, Field, Schema};
use polars::prelude::*;

use crate::analytics::dataset::{Dataset, Kind, Literal, Measure, Period};

/// The distinct-subject count of each cell, as an extra output column (dropped on write).
pub const SUBJECTS: &str = "__subjects";
/// The partition column: the local date starting the cell's day or ISO week.
pub const DT: &str = "dt";

/// An arrow-rs array as a Polars array, through the C Data Interface (no copy of the buffers).
fn to_polars_array(a: &ArrayRef) -> PolarsResult<Box<dyn polars_arrow::array::Array>> {
    let (array, schema) = arrow::ffi::to_ffi(&a.to_data())
        .map_err(|e| polars_err!(ComputeError: "arrow export: {e}"))?;
    // SAFETY: arrow-rs's FFI_ArrowArray / FFI_ArrowSchema and polars-arrow's ArrowArray /
    // ArrowSchema are both the C Data Interface's structs (`#[repr(C)]`, same fields); the array
    // is moved (its release callback frees the buffers once Polars drops it), the schema is only
    // read and dropped by arrow-rs afterwards.
    unsafe {
        let schema_ref = &*(&schema as *const arrow::ffi::FFI_ArrowSchema
            as *const polars_arrow::ffi::ArrowSchema);
        let field = polars_arrow::ffi::import_field_from_c(schema_ref)?;
        let array: polars_arrow::ffi::ArrowArray = std::mem::transmute(array);
        polars_arrow::ffi::import_array_from_c(array, field.dtype)
    }
}

/// Record batches (one schema) as a Polars DataFrame.
pub fn to_polars(batches: &[RecordBatch]) -> PolarsResult<DataFrame> {
    let Some(first) = batches.first() else {
        return Ok(DataFrame::empty());
    };
    let schema = first.schema();
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (i, f) in schema.fields().iter().enumerate() {
        let chunks = batches
            .iter()
            .map(|b| to_polars_array(b.column(i)))
            .collect::<PolarsResult<Vec<_>>>()?;
        columns.push(Series::from_arrow_chunks(f.name().as_str().into(), chunks)?.into_column());
    }
    DataFrame::new_infer_height(columns)
}

/// Keyed hashes of subject identifiers, for counting distinct people without handing the
/// identifiers to Polars. Each value is hashed in the normal form erasure matches it by
/// ([`crate::erasure::identify::stored_form_into`]: an email lower-cased, a phone as `+` and
/// digits with its trunk prefix resolved), so one person written two ways is one subject, never
/// two — which would let a cell pass `k` with fewer people. 64 bits: two people colliding merge
/// into one, which can only make a cell look smaller (more suppression), never larger.
#[derive(Clone)]
pub struct SubjectHasher {
    key: (u64, u64),
    phone_country: Option<String>,
}

/// A subject column and the identifier kind the data map gives it (`""`: none).
pub type SubjectColumn = (String, String);

impl SubjectHasher {
    /// A fresh random key (never stored, never logged).
    pub fn random(phone_country: Option<String>) -> crate::Result<SubjectHasher> {
        let mut k = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k)
            .map_err(|_| crate::Error::Failed("the system random generator failed".into()))?;
        Ok(SubjectHasher {
            key: (
                u64::from_le_bytes(k[..8].try_into().expect("8 bytes")),
                u64::from_le_bytes(k[8..].try_into().expect("8 bytes")),
            ),
            phone_country,
        })
    }

    fn one(&self, bytes: &[u8]) -> u64 {
        use std::hash::Hasher;
        let mut h = siphasher::sip::SipHasher13::new_with_keys(self.key.0, self.key.1);
        h.write(bytes);
        h.finish()
    }

    /// `a`'s values hashed (nulls stay null), text in the normal form of identifier `kind`;
    /// numbers by their decimal form, so `42` and `'42'` are one subject.
    pub fn column(&self, a: &ArrayRef, kind: &str) -> Result<ArrayRef, arrow::error::ArrowError> {
        if let ArrowType::Dictionary(_, _) = a.data_type() {
            // Each distinct value once, then looked up per row.
            let dict = a.as_any_dictionary();
            let values = self.column(dict.values(), kind)?;
            let values = values.as_primitive::<arrow::datatypes::UInt64Type>();
            let keys = dict.normalized_keys();
            let out: UInt64Array = (0..a.len())
                .map(|i| {
                    let k = keys[i];
                    (!a.is_null(i) && values.is_valid(k)).then(|| values.value(k))
                })
                .collect();
            return Ok(Arc::new(out));
        }
        let text = match a.data_type() {
            ArrowType::Utf8 | ArrowType::Utf8View => a.clone(),
            ArrowType::Binary | ArrowType::LargeBinary | ArrowType::FixedSizeBinary(_) => {
                let out: UInt64Array = (0..a.len())
                    .map(|i| {
                        (!a.is_null(i)).then(|| match a.data_type() {
                            ArrowType::Binary => self.one(a.as_binary::<i32>().value(i)),
                            ArrowType::LargeBinary => self.one(a.as_binary::<i64>().value(i)),
                            _ => self.one(a.as_fixed_size_binary().value(i)),
                        })
                    })
                    .collect();
                return Ok(Arc::new(out));
            }
            _ => arrow::compute::cast(a, &ArrowType::Utf8)?,
        };
        let mut form = String::new();
        let mut hash = |s: &str| {
            crate::erasure::identify::stored_form_into(
                kind,
                s,
                self.phone_country.as_deref(),
                &mut form,
            );
            self.one(form.as_bytes())
        };
        let out: UInt64Array = match text.data_type() {
            ArrowType::Utf8View => text
                .as_string_view()
                .iter()
                .map(|v| v.map(&mut hash))
                .collect(),
            _ => text
                .as_string::<i32>()
                .iter()
                .map(|v| v.map(&mut hash))
                .collect(),
        };
        Ok(Arc::new(out))
    }

    /// `batches` with each of `columns` replaced by its hashes (a UInt64 column).
    pub fn batches(
        &self,
        batches: Vec<RecordBatch>,
        columns: &[SubjectColumn],
    ) -> Result<Vec<RecordBatch>, arrow::error::ArrowError> {
        batches
            .into_iter()
            .map(|b| {
                let schema = b.schema();
                let mut fields = Vec::with_capacity(schema.fields().len());
                let mut arrays = Vec::with_capacity(schema.fields().len());
                for (f, a) in schema.fields().iter().zip(b.columns()) {
                    match columns.iter().find(|(c, _)| c == f.name()) {
                        Some((_, kind)) => {
                            fields.push(Field::new(f.name(), ArrowType::UInt64, true));
                            arrays.push(self.column(a, kind)?);
                        }
                        None => {
                            fields.push(f.as_ref().clone());
                            arrays.push(a.clone());
                        }
                    }
                }
                RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
            })
            .collect()
    }
}

/// The columns of its table that `d` reads.
pub fn columns_of(d: &Dataset, time_column: &str) -> Vec<String> {
    let mut out = vec![time_column.to_string()];
    out.extend(d.keys.iter().cloned());
    out.extend(d.subjects.iter().cloned());
    for m in &d.measures {
        out.extend(m.column.iter().cloned());
        out.extend(m.since.iter().cloned());
        out.extend(m.first_response.iter().map(|f| f.direction.clone()));
        out.extend(m.filter.iter().map(|(c, _)| c.clone()));
    }
    out.sort();
    out.dedup();
    out
}

/// `e` over the rows of the measure's `where` only.
fn only(m: &Measure, e: Expr) -> Expr {
    match &m.filter {
        None => e,
        Some((c, v)) => {
            let v = match v {
                Literal::Text(s) => lit(s.as_str()),
                Literal::Int(i) => lit(*i),
                Literal::Bool(b) => lit(*b),
            };
            e.filter(col(c.as_str()).eq(v))
        }
    }
}

/// Microseconds since the epoch of a Date or Datetime expression.
fn micros(e: Expr) -> Expr {
    e.dt().timestamp(TimeUnit::Microseconds)
}

fn first_response_column(m: &Measure) -> String {
    format!("__first_response_{}", m.name)
}

/// The value a (non-count, non-distinct) measure aggregates.
fn value_of(m: &Measure, time_column: &str) -> Expr {
    if m.first_response.is_some() {
        return col(first_response_column(m).as_str());
    }
    let c = col(m.column.as_deref().unwrap_or_default());
    match &m.since {
        Some(since) => {
            (micros(c) - micros(col(since.as_str()))).cast(DataType::Float64) / lit(m.unit_micros)
        }
        None if m.column.as_deref() == Some(time_column) => c.cast(DataType::Float64),
        None => c,
    }
}

/// `df` (one tenant's rows of the dataset's table, subject columns hashed) with rows without
/// a time left out, the first-response columns its measures need, and [`DT`]: a Date, the
/// local day (in `zone`) or the Monday of the local ISO week.
fn prepared(
    df: DataFrame,
    d: &Dataset,
    time_column: &str,
    zone: chrono_tz::Tz,
) -> PolarsResult<LazyFrame> {
    let t = col(time_column);
    let local = match df.column(time_column)?.dtype() {
        DataType::Datetime(_, Some(_)) => t.dt().convert_time_zone(TimeZone::from_chrono(&zone)),
        DataType::Datetime(_, None) => t
            .dt()
            .replace_time_zone(Some(TimeZone::UTC), lit("raise"), NonExistent::Raise)
            .dt()
            .convert_time_zone(TimeZone::from_chrono(&zone)),
        _ => t,
    };
    let day = local.dt().date();
    let dt = match d.period {
        Period::Day => day,
        Period::Week => day.dt().truncate(lit("1w")),
    }
    .alias(DT);
    let mut lf = df.lazy().filter(col(time_column).is_not_null());
    for m in d.measures.iter().filter(|m| m.first_response.is_some()) {
        lf = with_first_response(lf, d, m, time_column)?;
    }
    Ok(lf.with_column(dt))
}

fn group_keys(d: &Dataset) -> Vec<Expr> {
    let mut keys = vec![col(DT)];
    keys.extend(d.keys.iter().map(|k| col(k.as_str())));
    keys
}

/// Distinct subjects (one subject column: `dataset` refuses more for now); a row without a
/// subject is nobody.
fn subjects(d: &Dataset) -> Expr {
    col(d.subjects[0].as_str())
        .drop_nulls()
        .n_unique()
        .alias(SUBJECTS)
}

/// Aggregate `df` (see [`prepared`]) per period and key: the measures, and the distinct
/// subjects of each cell in [`SUBJECTS`]; sorted by [`DT`]. Only periods starting on or after
/// `from` (all when `None`).
pub fn aggregate(
    df: DataFrame,
    d: &Dataset,
    time_column: &str,
    zone: chrono_tz::Tz,
    from: Option<chrono::NaiveDate>,
) -> PolarsResult<DataFrame> {
    let mut aggs: Vec<Expr> = d
        .measures
        .iter()
        .map(|m| {
            let v = || only(m, value_of(m, time_column));
            match m.kind {
                Kind::Count => match (&m.column, &m.filter) {
                    (None, None) => len(),
                    (None, Some(_)) => only(m, col(time_column)).count(),
                    (Some(c), _) => only(m, col(c.as_str())).count(),
                },
                Kind::Distinct => only(m, col(m.column.as_deref().unwrap_or_default()))
                    .drop_nulls()
                    .n_unique(),
                Kind::Sum => v().sum(),
                Kind::Mean => v().mean(),
                Kind::Median => v().median(),
                Kind::P90 => v().quantile(lit(0.9), QuantileMethod::Linear),
            }
            .alias(m.name.as_str())
        })
        .collect();
    aggs.push(subjects(d));
    let mut lf = prepared(df, d, time_column, zone)?;
    if let Some(from) = from {
        lf = lf.filter(col(DT).gt_eq(lit(from)));
    }
    lf.group_by(group_keys(d))
        .agg(aggs)
        .sort([DT], Default::default())
        .collect()
}

fn partial_sum(m: &Measure) -> String {
    format!("__sum_{}", m.name)
}
fn partial_n(m: &Measure) -> String {
    format!("__n_{}", m.name)
}
const ROWS: &str = "__rows";

/// One tenant's share of a platform-wide dataset, mergeable across tenants by [`merge`]: per
/// cell and (hashed) subject, the rows and the sums and counts of summed or averaged values.
/// Only periods starting on or after `from` (all when `None`).
pub fn partial(
    df: DataFrame,
    d: &Dataset,
    time_column: &str,
    zone: chrono_tz::Tz,
    from: Option<chrono::NaiveDate>,
) -> PolarsResult<DataFrame> {
    let mut keys = group_keys(d);
    keys.push(col(d.subjects[0].as_str()));
    let mut aggs = vec![len().cast(DataType::UInt64).alias(ROWS)];
    for m in d.measures.iter() {
        // Rows of the measure: for a count with a column or a `where`, and for a distinct with
        // a `where` (the subject counts in the cell if it has one).
        let rows_of = match (m.kind, &m.column, &m.filter) {
            (Kind::Count, None, Some(_)) | (Kind::Distinct, _, Some(_)) => {
                Some(only(m, col(time_column)))
            }
            (Kind::Count, Some(c), _) => Some(only(m, col(c.as_str()))),
            _ => None,
        };
        if let Some(e) = rows_of {
            aggs.push(
                e.count()
                    .cast(DataType::UInt64)
                    .alias(partial_n(m).as_str()),
            );
        }
    }
    for m in d
        .measures
        .iter()
        .filter(|m| matches!(m.kind, Kind::Sum | Kind::Mean))
    {
        let v = only(m, value_of(m, time_column)).cast(DataType::Float64);
        aggs.push(v.clone().sum().alias(partial_sum(m).as_str()));
        aggs.push(
            v.count()
                .cast(DataType::UInt64)
                .alias(partial_n(m).as_str()),
        );
    }
    let mut lf = prepared(df, d, time_column, zone)?;
    if let Some(from) = from {
        lf = lf.filter(col(DT).gt_eq(lit(from)));
    }
    lf.group_by(keys).agg(aggs).collect()
}

/// Every tenant's [`partial`] in one frame (for differential privacy, which bounds each
/// subject's contribution over all of them).
pub fn concat_partials(partials: Vec<DataFrame>) -> PolarsResult<DataFrame> {
    let lfs: Vec<LazyFrame> = partials.into_iter().map(|p| p.lazy()).collect();
    if lfs.is_empty() {
        return Ok(DataFrame::empty());
    }
    concat(lfs, UnionArgs::default())?.collect()
}

/// The cells of a platform-wide dataset from every tenant's [`partial`]: as [`aggregate`]
/// would give over all tenants' rows at once (a subject in several tenants counts once).
pub fn merge(partials: Vec<DataFrame>, d: &Dataset) -> PolarsResult<DataFrame> {
    let lfs: Vec<LazyFrame> = partials.into_iter().map(|p| p.lazy()).collect();
    if lfs.is_empty() {
        return Ok(DataFrame::empty());
    }
    let mut aggs: Vec<Expr> = d
        .measures
        .iter()
        .map(|m| {
            match m.kind {
                Kind::Count => match (&m.column, &m.filter) {
                    (None, None) => col(ROWS).sum(),
                    _ => col(partial_n(m).as_str()).sum(),
                },
                // `dataset` allows distinct over the subject column only, in platform scope.
                Kind::Distinct => match &m.filter {
                    None => col(d.subjects[0].as_str()).drop_nulls().n_unique(),
                    Some(_) => col(d.subjects[0].as_str())
                        .filter(col(partial_n(m).as_str()).gt(lit(0u64)))
                        .drop_nulls()
                        .n_unique(),
                },
                Kind::Sum => col(partial_sum(m).as_str()).sum(),
                Kind::Mean => {
                    col(partial_sum(m).as_str()).sum()
                        / col(partial_n(m).as_str()).sum().cast(DataType::Float64)
                }
                Kind::Median | Kind::P90 => lit(NULL),
            }
            .alias(m.name.as_str())
        })
        .collect();
    aggs.push(subjects(d));
    concat(lfs, UnionArgs::default())?
        .group_by(group_keys(d))
        .agg(aggs)
        .sort([DT], Default::default())
        .collect()
}

/// The first-response time of each conversation opener: an inbound row whose subject's
/// previous row was not inbound, answered by the subject's next outbound row — in the unit of
/// the measure, on the opener's row (null elsewhere, and where no answer came).
fn with_first_response(
    lf: LazyFrame,
    d: &Dataset,
    m: &Measure,
    time_column: &str,
) -> PolarsResult<LazyFrame> {
    let f = m
        .first_response
        .as_ref()
        .expect("called for first-response measures");
    let subject = col(d.subjects[0].as_str());
    let dir = col(f.direction.as_str());
    let at = micros(col(time_column));
    let inbound = dir.clone().eq(lit(f.inbound.as_str()));
    Ok(lf
        .sort(
            [d.subjects[0].as_str(), time_column],
            SortMultipleOptions::default(),
        )
        .with_columns([
            when(dir.clone().eq(lit(f.outbound.as_str())))
                .then(at.clone())
                .otherwise(lit(NULL).cast(DataType::Int64))
                .fill_null_with_strategy(FillNullStrategy::Backward(None))
                .over([subject.clone()])?
                .alias("__next_out"),
            dir.shift(lit(1)).over([subject])?.alias("__prev_dir"),
        ])
        .with_column(
            when(
                inbound.and(
                    col("__prev_dir")
                        .neq(lit(f.inbound.as_str()))
                        .or(col("__prev_dir").is_null()),
                ),
            )
            .then((col("__next_out") - at).cast(DataType::Float64) / lit(m.unit_micros))
            .otherwise(lit(NULL).cast(DataType::Float64))
            .alias(first_response_column(m).as_str()),
        )
        .drop(by_name(["__next_out", "__prev_dir"], true, false)))
}

/// The batches of `table` in a committed run of `tenant`, decrypted: only `columns` (all
/// when `None`); strings as Utf8View; `subjects` replaced by their hashes.
pub async fn read_table(
    store: &crate::store::Store,
    key: &crate::keys::DataKey,
    manifest: &crate::snapshot::manifest::Manifest,
    table: &str,
    columns: Option<&[String]>,
    subjects: Option<(&SubjectHasher, &[SubjectColumn])>,
) -> crate::Result<Vec<RecordBatch>> {
    // Strings as Utf8View: Polars takes them without a copy. (Subject columns read as
    // dictionaries, to hash each value once, were slower: phones are mostly distinct within a
    // batch, and the reader builds the dictionary by hashing anyway.)
    let hint = |schema: &Schema| -> Schema {
        Schema::new(
            schema
                .fields()
                .iter()
                .map(|f| match f.data_type() {
                    ArrowType::Utf8 => f.as_ref().clone().with_data_type(ArrowType::Utf8View),
                    _ => f.as_ref().clone(),
                })
                .collect::<Vec<_>>(),
        )
    };
    // Each file in a task of its own (the download hashes as it streams), decoded on a
    // blocking thread: tenants read at once use every core.
    let hint = Arc::new(hint);
    let mut tasks = Vec::new();
    for f in manifest.files.iter().filter(|f| f.table == table) {
        let (store, key, f, hint) = (store.clone(), key.clone(), f.clone(), hint.clone());
        let columns = columns.map(<[String]>::to_vec);
        let subjects = subjects.map(|(h, c)| (h.clone(), c.to_vec()));
        tasks.push(tokio::spawn(async move {
            let mut builder =
                crate::snapshot::read::open_checked_as(&store, &f, &key, hint.as_ref()).await?;
            if let Some(cols) = columns {
                let roots: Vec<usize> = builder
                    .schema()
                    .fields()
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| cols.iter().any(|c| c == f.name()))
                    .map(|(i, _)| i)
                    .collect();
                let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), roots);
                builder = builder.with_projection(mask);
            }
            let path = f.path.clone();
            let at = path.clone();
            tokio::task::spawn_blocking(move || {
                let fail = |e: &dyn std::fmt::Display| crate::Error::Failed(format!("{at}: {e}"));
                let reader = builder
                    .with_batch_size(65_536)
                    .build()
                    .map_err(|e| fail(&e))?;
                let batches = reader
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| fail(&e))?;
                match subjects {
                    Some((hasher, cols)) => hasher.batches(batches, &cols).map_err(|e| fail(&e)),
                    None => Ok(batches),
                }
            })
            .await
            .map_err(|e| crate::Error::Failed(format!("{path}: {e}")))?
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.extend(
            t.await
                .map_err(|e| crate::Error::Failed(format!("reading {table}: {e}")))??,
        );
    }
    Ok(out)
}

/// A Polars column as an arrow-rs array, through the C Data Interface.
fn to_arrow_array(s: &Series) -> PolarsResult<ArrayRef> {
    let s = s.rechunk();
    let array = s.to_arrow(0, CompatLevel::newest());
    let field = polars_arrow::datatypes::Field::new(s.name().clone(), array.dtype().clone(), true);
    let c_array = polars_arrow::ffi::export_array_to_c(array);
    let c_schema = polars_arrow::ffi::export_field_to_c(&field);
    // SAFETY: the same C Data Interface structs as in `to_polars_array`, the other way round;
    // both are moved into arrow-rs, whose drop calls their release callbacks.
    unsafe {
        let a: arrow::ffi::FFI_ArrowArray = std::mem::transmute(c_array);
        let sc: arrow::ffi::FFI_ArrowSchema = std::mem::transmute(c_schema);
        let data = arrow::ffi::from_ffi(a, &sc)
            .map_err(|e| polars_err!(ComputeError: "arrow import: {e}"))?;
        Ok(arrow::array::make_array(data))
    }
}

/// Cells with fewer than `k` distinct subjects keep their keys and lose every measure (null,
/// never a small number); the subject count itself is not published. A release publishes no
/// margins (no totals over keys or days), so no suppressed cell can be recovered from one;
/// [`crate::analytics::suppress`] holds the complementary suppression a release with totals
/// would need.
pub fn suppress_small(df: DataFrame, d: &Dataset) -> PolarsResult<DataFrame> {
    let small = col(SUBJECTS).lt(lit(d.k as i64));
    let exprs: Vec<Expr> = d
        .measures
        .iter()
        .map(|m| {
            when(small.clone())
                .then(lit(NULL))
                .otherwise(col(m.name.as_str()))
                .alias(m.name.as_str())
        })
        .collect();
    df.lazy()
        .with_columns(exprs)
        .drop(by_name([SUBJECTS], true, false))
        .collect()
}

/// A Polars frame as one arrow-rs batch: `dt` as Date32, strings as plain Utf8 (what every
/// Parquet reader — Spark, older DuckDB — knows).
pub fn to_batch(df: &DataFrame) -> crate::Result<RecordBatch> {
    let fail = |e: &dyn std::fmt::Display| crate::Error::Failed(format!("analytics output: {e}"));
    let mut fields = Vec::new();
    let mut arrays = Vec::new();
    for c in df.columns() {
        let s = c.as_materialized_series();
        let a = to_arrow_array(s).map_err(|e| fail(&e))?;
        let a = match a.data_type() {
            ArrowType::Utf8View | ArrowType::LargeUtf8 => {
                arrow::compute::cast(&a, &ArrowType::Utf8).map_err(|e| fail(&e))?
            }
            _ => a,
        };
        fields.push(Field::new(c.name().as_str(), a.data_type().clone(), true));
        arrays.push(a);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(|e| fail(&e))
}

/// `batch` (sorted by `dt`, a Date32 column) cut into one batch per `dt`, without the column
/// (the partition's path carries it). Slices: no copy.
pub fn split_by_dt(batch: &RecordBatch) -> crate::Result<Vec<(chrono::NaiveDate, RecordBatch)>> {
    let i = batch
        .schema()
        .index_of(DT)
        .map_err(|e| crate::Error::Failed(format!("analytics output: {e}")))?;
    let days = batch
        .column(i)
        .as_primitive::<arrow::datatypes::Date32Type>();
    let rest = {
        let mut b = batch.clone();
        b.remove_column(i);
        b
    };
    let mut out = Vec::new();
    let mut start = 0;
    while start < days.len() {
        let v = days.value(start);
        let mut end = start + 1;
        while end < days.len() && days.value(end) == v && !days.is_null(end) {
            end += 1;
        }
        if !days.is_null(start)
            && let Some(day) = chrono::NaiveDate::from_num_days_from_ce_opt(v + 719_163)
        {
            out.push((day, rest.slice(start, end - start)));
        }
        start = end;
    }
    Ok(out)
}

/// One partition as zstd Parquet bytes.
pub fn to_parquet(batch: &RecordBatch) -> crate::Result<Vec<u8>> {
    let fail = |e: &dyn std::fmt::Display| crate::Error::Failed(format!("analytics output: {e}"));
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
        .build();
    let mut out = Vec::with_capacity(1024);
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), Some(props))
        .map_err(|e| fail(&e))?;
    w.write(batch).map_err(|e| fail(&e))?;
    w.close().map_err(|e| fail(&e))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::UInt64Type;

    /// One person written two ways is one subject (a cell cannot pass k on spelling); two
    /// people stay two; nulls stay nobody; numbers hash like their text.
    #[test]
    fn one_person_written_two_ways_is_one_subject() {
        let h = SubjectHasher::random(Some("62".into())).unwrap();
        let phones: ArrayRef = Arc::new(StringArray::from(vec![
            Some("+62 812-3456-7890"),
            Some("0812 3456 7890"),
            Some("+6281234567891"),
            None,
        ]));
        let p = h.column(&phones, "phone").unwrap();
        let p = p.as_primitive::<UInt64Type>();
        assert_eq!(p.value(0), p.value(1));
        assert_ne!(p.value(0), p.value(2));
        assert!(p.is_null(3));
        let emails: ArrayRef = Arc::new(StringArray::from(vec![
            "Budi@Example.com ",
            "budi@example.com",
            "sari@example.com",
        ]));
        let e = h.column(&emails, "email").unwrap();
        let e = e.as_primitive::<UInt64Type>();
        assert_eq!(e.value(0), e.value(1));
        assert_ne!(e.value(0), e.value(2));
        let n: ArrayRef = Arc::new(Int64Array::from(vec![42]));
        let t: ArrayRef = Arc::new(StringArray::from(vec!["42"]));
        assert_eq!(
            h.column(&n, "")
                .unwrap()
                .as_primitive::<UInt64Type>()
                .value(0),
            h.column(&t, "")
                .unwrap()
                .as_primitive::<UInt64Type>()
                .value(0)
        );
        // Another run, another key: the hashes mean nothing outside the run.
        let other = SubjectHasher::random(Some("62".into())).unwrap();
        let q = other.column(&phones, "phone").unwrap();
        assert_ne!(q.as_primitive::<UInt64Type>().value(0), p.value(0));
    }
}
