//! Rows → per-tenant Arrow batches, shared by every source.
//!
//! A source reads a table in one pass and, for each row, asks [`FanOut::route`] which tenant
//! it belongs to, appends the row's values to that tenant's [`Builder`]s and calls
//! [`FanOut::row_done`]. Each tenant's batch starts small (many tenants interleave in one pass)
//! and doubles, up to `batch_rows`, each time it fills, as long as all tenants' batches
//! together stay within the builder budget: big tenants get big batches, small ones hold
//! little memory. A tenant with a value that does not fit its column fails alone.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::mpsc::SyncSender;

use arrow::array::{
    ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    FixedSizeBinaryBuilder, Float32Builder, Float64Builder, Int16Builder, Int32Builder,
    Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use super::{ColType, Column, ScanEvent, ScanPlan, SourceError};

/// FNV-1a: tenant ids are short and trusted (they come from the tenants table), so the
/// per-row lookup needs speed, not SipHash's flooding resistance.
#[derive(Default)]
pub struct FnvHasher(u64);

impl Hasher for FnvHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h = (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// An Arrow builder for one column.
pub enum Builder {
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Utf8(StringBuilder),
    Binary(BinaryBuilder),
    Bool(BooleanBuilder),
    Timestamp(TimestampMicrosecondBuilder),
    Date(Date32Builder),
    Decimal(Decimal128Builder),
    Uuid(FixedSizeBinaryBuilder),
}

impl Builder {
    /// A builder for `rows` values of about `bytes` bytes in all (variable-width columns).
    pub fn new(t: ColType, rows: usize, bytes: usize) -> Self {
        match t {
            ColType::Int16 => Builder::Int16(Int16Builder::with_capacity(rows)),
            ColType::Int32 => Builder::Int32(Int32Builder::with_capacity(rows)),
            ColType::Int64 => Builder::Int64(Int64Builder::with_capacity(rows)),
            ColType::Float32 => Builder::Float32(Float32Builder::with_capacity(rows)),
            ColType::Float64 => Builder::Float64(Float64Builder::with_capacity(rows)),
            ColType::Utf8 | ColType::Jsonb => {
                Builder::Utf8(StringBuilder::with_capacity(rows, bytes))
            }
            ColType::Binary => Builder::Binary(BinaryBuilder::with_capacity(rows, bytes)),
            ColType::Bool => Builder::Bool(BooleanBuilder::with_capacity(rows)),
            ColType::Timestamp => Builder::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            ),
            ColType::TimestampNaive => {
                Builder::Timestamp(TimestampMicrosecondBuilder::with_capacity(rows))
            }
            ColType::Date => Builder::Date(Date32Builder::with_capacity(rows)),
            ColType::Decimal(p, s) => Builder::Decimal(
                Decimal128Builder::with_capacity(rows)
                    .with_precision_and_scale(p, s)
                    .expect("valid precision"),
            ),
            ColType::Uuid => Builder::Uuid(FixedSizeBinaryBuilder::with_capacity(rows, 16)),
        }
    }

    pub fn append_null(&mut self) {
        match self {
            Builder::Int16(b) => b.append_null(),
            Builder::Int32(b) => b.append_null(),
            Builder::Int64(b) => b.append_null(),
            Builder::Float32(b) => b.append_null(),
            Builder::Float64(b) => b.append_null(),
            Builder::Utf8(b) => b.append_null(),
            Builder::Binary(b) => b.append_null(),
            Builder::Bool(b) => b.append_null(),
            Builder::Timestamp(b) => b.append_null(),
            Builder::Date(b) => b.append_null(),
            Builder::Decimal(b) => b.append_null(),
            Builder::Uuid(b) => b.append_null(),
        }
    }

    /// What the column expects, for error messages.
    pub fn expected(&self) -> &'static str {
        match self {
            Builder::Int16(_) | Builder::Int32(_) | Builder::Int64(_) => "an integer",
            Builder::Float32(_) | Builder::Float64(_) => "a number",
            Builder::Utf8(_) => "text",
            Builder::Binary(_) => "bytes",
            Builder::Bool(_) => "a boolean",
            Builder::Timestamp(_) => "a timestamp",
            Builder::Date(_) => "a date",
            Builder::Decimal(_) => "a decimal",
            Builder::Uuid(_) => "a uuid",
        }
    }

    pub fn finish(mut self) -> ArrayRef {
        match &mut self {
            Builder::Int16(b) => Arc::new(b.finish()),
            Builder::Int32(b) => Arc::new(b.finish()),
            Builder::Int64(b) => Arc::new(b.finish()),
            Builder::Float32(b) => Arc::new(b.finish()),
            Builder::Float64(b) => Arc::new(b.finish()),
            Builder::Utf8(b) => Arc::new(b.finish()),
            Builder::Binary(b) => Arc::new(b.finish()),
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Timestamp(b) => Arc::new(b.finish()),
            Builder::Date(b) => Arc::new(b.finish()),
            Builder::Decimal(b) => Arc::new(b.finish()),
            Builder::Uuid(b) => Arc::new(b.finish()),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Builder::Int16(b) => b.len(),
            Builder::Int32(b) => b.len(),
            Builder::Int64(b) => b.len(),
            Builder::Float32(b) => b.len(),
            Builder::Float64(b) => b.len(),
            Builder::Utf8(b) => b.len(),
            Builder::Binary(b) => b.len(),
            Builder::Bool(b) => b.len(),
            Builder::Timestamp(b) => b.len(),
            Builder::Date(b) => b.len(),
            Builder::Decimal(b) => b.len(),
            Builder::Uuid(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One table's pass: routes rows to tenants and ships their batches.
pub struct FanOut<'a> {
    table: String,
    cols: &'a [Column],
    schema: SchemaRef,
    types: Vec<ColType>,
    plan: &'a ScanPlan,
    failed: &'a mut [bool],
    tx: &'a SyncSender<ScanEvent>,
    index: HashMap<&'a [u8], usize, BuildHasherDefault<FnvHasher>>,
    last: Option<(&'a [u8], usize)>,
    builders: Vec<Option<Vec<Builder>>>,
    caps: Vec<usize>,
    caps_total: usize,
    budget_rows: usize,
    seen_rows: usize,
    seen_bytes: Vec<usize>,
    counts: Vec<u64>,
    orphans: u64,
}

impl<'a> FanOut<'a> {
    /// Start a table: sends `Begin`.
    pub fn begin(
        table: &str,
        cols: &'a [Column],
        schema: SchemaRef,
        types: Vec<ColType>,
        plan: &'a ScanPlan,
        failed: &'a mut [bool],
        tx: &'a SyncSender<ScanEvent>,
    ) -> Result<Self, SourceError> {
        tx.send(ScanEvent::Begin {
            table: table.into(),
            schema: schema.clone(),
        })
        .map_err(|_| SourceError::Disconnected)?;
        let n = plan.tenants.len();
        let per = plan.rows_per_batch();
        Ok(FanOut {
            table: table.into(),
            cols,
            schema,
            plan,
            failed,
            tx,
            index: plan
                .tenants
                .iter()
                .enumerate()
                .map(|(i, t)| (t.as_bytes(), i))
                .collect(),
            last: None,
            builders: (0..n).map(|_| None).collect(),
            caps: vec![per; n],
            caps_total: per * n,
            budget_rows: (per * n.max(1)).max(plan.batch_rows),
            seen_rows: 0,
            seen_bytes: vec![0; types.len()],
            types,
            counts: vec![0; n],
            orphans: 0,
        })
    }

    /// The tenant a row with this tenant-column value goes to, or `None` (not selected, not a
    /// known tenant, or already failed): then skip the row.
    #[inline]
    pub fn route(&mut self, tenant: &[u8]) -> Option<usize> {
        let t = match self.last {
            Some((id, t)) if id == tenant => Some(t),
            _ => {
                let t = self.index.get(tenant).copied();
                self.last = t.map(|t| (self.plan.tenants[t].as_bytes(), t));
                t
            }
        };
        let Some(t) = t else {
            self.orphans += 1;
            return None;
        };
        if self.failed[t] {
            return None;
        }
        self.counts[t] += 1;
        Some(t)
    }

    /// The builders of tenant `t` (created on first use, sized from what was seen so far).
    #[inline]
    pub fn builders(&mut self, t: usize) -> &mut [Builder] {
        let (types, seen_bytes, seen_rows, cap) =
            (&self.types, &self.seen_bytes, self.seen_rows, self.caps[t]);
        self.builders[t].get_or_insert_with(|| {
            types
                .iter()
                .zip(seen_bytes)
                .map(|(ty, sb)| Builder::new(*ty, cap, (sb / seen_rows.max(1) + 1) * cap))
                .collect()
        })
    }

    /// Column `col` of the current row of tenant `t` did not fit: the tenant fails alone.
    pub fn fail(
        &mut self,
        t: usize,
        col: usize,
        expected: &'static str,
        found: &'static str,
    ) -> Result<(), SourceError> {
        let error = SourceError::BadValue {
            table: self.table.clone(),
            column: self.cols[col].name.clone(),
            tenant: self.plan.tenants[t].clone(),
            row: self.counts[t],
            expected,
            found,
        };
        self.failed[t] = true;
        self.builders[t] = None;
        self.tx
            .send(ScanEvent::Failed { tenant: t, error })
            .map_err(|_| SourceError::Disconnected)
    }

    fn ship(&mut self, t: usize) -> Result<(), SourceError> {
        let Some(b) = self.builders[t].take() else {
            return Ok(());
        };
        if b[0].is_empty() {
            return Ok(());
        }
        let arrays: Vec<ArrayRef> = b.into_iter().map(Builder::finish).collect();
        self.seen_rows += arrays[0].len();
        for (a, sb) in arrays.iter().zip(self.seen_bytes.iter_mut()) {
            *sb += a.get_buffer_memory_size();
        }
        let batch =
            RecordBatch::try_new(self.schema.clone(), arrays).map_err(|e| SourceError::Query {
                table: self.table.clone(),
                message: e.to_string(),
            })?;
        self.tx
            .send(ScanEvent::Batch { tenant: t, batch })
            .map_err(|_| SourceError::Disconnected)
    }

    /// The row of tenant `t` is complete: ship its batch if full (and grow its next one).
    #[inline]
    pub fn row_done(&mut self, t: usize) -> Result<(), SourceError> {
        if self.builders[t]
            .as_ref()
            .is_some_and(|b| b[0].len() >= self.caps[t])
        {
            self.ship(t)?;
            let grown = (self.caps[t] * 2).min(self.plan.batch_rows);
            if self.caps_total - self.caps[t] + grown <= self.budget_rows {
                self.caps_total = self.caps_total - self.caps[t] + grown;
                self.caps[t] = grown;
            }
        }
        Ok(())
    }

    /// End of the table: ship what is left and send `End` with every tenant's row count.
    pub fn end(mut self) -> Result<(), SourceError> {
        for t in 0..self.builders.len() {
            self.ship(t)?;
        }
        if self.orphans > 0 {
            tracing::warn!(table = %self.table, rows = self.orphans,
                "rows whose tenant is not being snapshotted (not in the tenants table, or not selected with --tenant)");
        }
        self.tx
            .send(ScanEvent::End {
                table: self.table.clone(),
                rows: self.counts,
            })
            .map_err(|_| SourceError::Disconnected)
    }
}
