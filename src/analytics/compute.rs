//! One tenant's table, from its newest committed snapshot, aggregated with Polars (issue 12, in
//! progress): the files are downloaded (ciphertext), decrypted by arrow-rs with the tenant's
//! key, and handed to Polars through the Arrow C Data Interface — never the live database,
//! never a plaintext file. Memory: one tenant's table.

use arrow::array::{Array, ArrayRef, RecordBatch};

use polars::prelude::*;

use crate::analytics::dataset::{Dataset, Kind, Period};

/// The distinct-subject count of each cell, as an extra output column (dropped on write).
pub const SUBJECTS: &str = "__subjects";

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

/// Aggregate `df` (one tenant's rows of the dataset's table) per period and key: the measures,
/// and the distinct subjects of each cell in [`SUBJECTS`]. Rows without a time are left out.
pub fn aggregate(df: DataFrame, d: &Dataset, time_column: &str) -> PolarsResult<DataFrame> {
    let every = match d.period {
        Period::Day => "1d",
        Period::Week => "1w",
    };
    let mut keys = vec![col(time_column).dt().truncate(lit(every)).alias("dt")];
    keys.extend(d.keys.iter().map(|k| col(k.as_str())));
    let mut aggs: Vec<Expr> = d
        .measures
        .iter()
        .map(|m| {
            let c = || col(m.column.as_deref().unwrap_or_default());
            match m.kind {
                Kind::Count => len(),
                Kind::Distinct => c().drop_nulls().n_unique(),
                Kind::Sum => c().sum(),
                Kind::Mean => c().mean(),
                Kind::Median => c().median(),
                Kind::P90 => c().quantile(lit(0.9), QuantileMethod::Linear),
            }
            .alias(m.name.as_str())
        })
        .collect();
    // Distinct subjects (one subject column: `dataset` refuses more for now); a row without a
    // subject is nobody.
    aggs.push(
        col(d.subjects[0].as_str())
            .drop_nulls()
            .n_unique()
            .alias(SUBJECTS),
    );
    df.lazy()
        .filter(col(time_column).is_not_null())
        .group_by(keys)
        .agg(aggs)
        .sort(["dt"], Default::default())
        .collect()
}

/// The batches of `table` in a committed run of `tenant`, decrypted.
pub async fn read_table(
    store: &crate::store::Store,
    key: &crate::keys::DataKey,
    manifest: &crate::snapshot::manifest::Manifest,
    table: &str,
) -> crate::Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for f in manifest.files.iter().filter(|f| f.table == table) {
        let reader = crate::snapshot::read::open_checked(store, f, key)
            .await?
            .build()
            .map_err(|e| crate::Error::Failed(format!("{}: {e}", f.path)))?;
        for b in reader {
            out.push(b.map_err(|e| crate::Error::Failed(format!("{}: {e}", f.path)))?);
        }
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
/// never a small number); the subject count itself is not published. No margins are published
/// in a release, so no complementary suppression is needed (see [`crate::analytics::suppress`]
/// for releases that publish totals).
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

/// One partition (the rows of one `dt`, without it: the path carries it) as zstd Parquet bytes.
pub fn to_parquet(df: &DataFrame) -> crate::Result<Vec<u8>> {
    let fail = |e: &dyn std::fmt::Display| crate::Error::Failed(format!("analytics output: {e}"));
    let mut fields = Vec::new();
    let mut arrays = Vec::new();
    for c in df.columns() {
        let s = c.as_materialized_series();
        let s = if c.name().as_str() == "dt" {
            s.cast(&DataType::Date).map_err(|e| fail(&e))?
        } else {
            s.clone()
        };
        let a = to_arrow_array(&s).map_err(|e| fail(&e))?;
        // Plain strings: what every Parquet reader (Spark, older DuckDB) knows.
        let a = match a.data_type() {
            arrow::datatypes::DataType::Utf8View => {
                arrow::compute::cast(&a, &arrow::datatypes::DataType::Utf8).map_err(|e| fail(&e))?
            }
            _ => a,
        };
        fields.push(arrow::datatypes::Field::new(
            c.name().as_str(),
            a.data_type().clone(),
            true,
        ));
        arrays.push(a);
    }
    let batch = RecordBatch::try_new(
        std::sync::Arc::new(arrow::datatypes::Schema::new(fields)),
        arrays,
    )
    .map_err(|e| fail(&e))?;
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
        .build();
    let mut out = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), Some(props))
        .map_err(|e| fail(&e))?;
    w.write(&batch).map_err(|e| fail(&e))?;
    w.close().map_err(|e| fail(&e))?;
    Ok(out)
}
