//! The primary database, read-only: the tenants, the live schema of each mapped table, and each
//! tenant's rows streamed as Arrow record batches.
//!
//! All tables are read inside one read transaction, so each tenant's snapshot is consistent
//! across tables. Batches go out through a bounded channel as they are built: memory is bounded
//! by the batch size times the channel depth, never by the table.
//!
//! Errors name tables, columns and row ordinals, never cell values (they are personal data).

pub mod fanout;
pub mod postgres;
pub mod sqlite;

use std::sync::mpsc::SyncSender;

use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};
use thiserror::Error;

use crate::config::SourceUrl;
use crate::datamap::DataMap;
use crate::policy::Policy;
use crate::problem::Problem;

#[derive(Debug, Error)]
pub enum SourceError {
    #[error("cannot open source {url}: {message}\n  fix: {fix}")]
    Open {
        url: String,
        message: String,
        fix: String,
    },
    #[error("source query failed on table {table}: {message}")]
    Query { table: String, message: String },
    #[error(
        "table {table}, column {column}: declared type {declared:?} is not supported\n  fix: declare it INTEGER, REAL, TEXT, BLOB, BOOLEAN, DATE or TIMESTAMP"
    )]
    UnsupportedType {
        table: String,
        column: String,
        declared: String,
    },
    #[error(
        "table {table}, column {column}, row {row} of tenant {tenant}: expected {expected}, found {found}\n  fix: correct the value or the column's declared type"
    )]
    BadValue {
        table: String,
        column: String,
        tenant: String,
        row: u64,
        expected: &'static str,
        found: &'static str,
    },
    #[error(
        "table {table} does not exist in the source\n  fix: correct the data map or migrate the database"
    )]
    NoTable { table: String },
    #[error("the snapshot consumer went away")]
    Disconnected,
}

impl SourceError {
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            SourceError::Open { .. }
                | SourceError::UnsupportedType { .. }
                | SourceError::NoTable { .. }
        )
    }
}

/// The Arrow type lethe gives a source column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColType {
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    Utf8,
    /// PostgreSQL jsonb: Utf8 in Arrow (the JSON text).
    Jsonb,
    Binary,
    Bool,
    /// Microseconds since the epoch, UTC (`timestamptz`, SQLite timestamps).
    Timestamp,
    /// Microseconds, no time zone (PostgreSQL `timestamp`).
    TimestampNaive,
    Date,
    /// Decimal128(precision, scale).
    Decimal(u8, i8),
    /// 16 bytes.
    Uuid,
}

impl ColType {
    pub fn arrow(self) -> DataType {
        match self {
            ColType::Int16 => DataType::Int16,
            ColType::Int32 => DataType::Int32,
            ColType::Int64 => DataType::Int64,
            ColType::Float32 => DataType::Float32,
            ColType::Float64 => DataType::Float64,
            ColType::Utf8 | ColType::Jsonb => DataType::Utf8,
            ColType::Binary => DataType::Binary,
            ColType::Bool => DataType::Boolean,
            ColType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            ColType::TimestampNaive => DataType::Timestamp(TimeUnit::Microsecond, None),
            ColType::Date => DataType::Date32,
            ColType::Decimal(p, s) => DataType::Decimal128(p, s),
            ColType::Uuid => DataType::FixedSizeBinary(16),
        }
    }
}

/// A column of a source table.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub declared: String,
    pub nullable: bool,
}

/// A tenant as the tenants table lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub id: String,
    pub status: String,
    pub cancelled_at: Option<DateTime<Utc>>,
    /// The tenant's time zone as its row holds it (unchecked), if the data map names a column.
    pub time_zone: Option<String>,
}

/// The tenants table, split: ids usable in object keys and SQL, and the others.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantList {
    pub valid: Vec<Tenant>,
    pub bad: Vec<BadTenant>,
}

/// A tenant whose id is not a slug (letters, digits, `-`, `_`, at most 64).
#[derive(Debug, Clone, PartialEq)]
pub struct BadTenant {
    pub table: String,
    /// Its position in the tenants table ordered by id (1-based).
    pub ordinal: usize,
    /// The id, escaped (control characters and quotes visible) and cut at 80 characters —
    /// enough to find it with a query; tenant ids are business names, not personal data.
    pub shown: String,
    /// The raw id, for SQL literals only.
    pub id: String,
}

impl BadTenant {
    fn new(table: &str, ordinal: usize, id: &str) -> BadTenant {
        let mut shown = format!("{id:?}");
        if shown.chars().count() > 80 {
            shown = shown.chars().take(77).collect::<String>() + "…";
        }
        BadTenant {
            table: table.into(),
            ordinal,
            shown,
            id: id.into(),
        }
    }
}

impl std::fmt::Display for BadTenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tenant id {} (row {} of {} by id) is not a plain slug (letters, digits, - and _, at most 64): tenant ids end up in object keys; lethe leaves this tenant's rows alone — give the tenant a slug id",
            self.shown, self.ordinal, self.table
        )
    }
}

/// A table to read and the column naming each row's tenant.
#[derive(Debug, Clone)]
pub struct ScanTable {
    pub name: String,
    pub tenant_column: String,
}

/// What to read: tables (in order) and the tenants wanted, by index.
#[derive(Debug, Clone)]
pub struct ScanPlan {
    pub tables: Vec<ScanTable>,
    /// Tenant ids; events refer to tenants by their index here.
    pub tenants: Vec<String>,
    /// Upper bound of rows per batch.
    pub batch_rows: usize,
    /// Only some tenants were asked for: sources may filter rows at the source.
    pub selective: bool,
}

impl ScanPlan {
    /// Rows per batch for each tenant: with many tenants interleaved in one pass, a tenant's
    /// batch is smaller so that all open builders together stay within about 32 MiB.
    pub fn rows_per_batch(&self) -> usize {
        let budget_rows = (32 << 20) / 256 / self.tenants.len().max(1);
        self.batch_rows.min(budget_rows).max(256)
    }
}

/// What the reader sends: for each table a `Begin`, batches tagged with their tenant's index,
/// an `End` with every tenant's row count. A tenant whose rows cannot be read gets `Failed`
/// and no further events; the others go on.
#[derive(Debug)]
pub enum ScanEvent {
    Begin { table: String, schema: SchemaRef },
    Batch { tenant: usize, batch: RecordBatch },
    End { table: String, rows: Vec<u64> },
    Failed { tenant: usize, error: SourceError },
}

/// The primary database. A closed enum: PostgreSQL joins SQLite as a second variant.
pub enum Source {
    Sqlite(sqlite::SqliteSource),
    Postgres(postgres::PgSource),
}

impl Source {
    pub fn open(url: &SourceUrl) -> Result<Source, SourceError> {
        match url {
            SourceUrl::Sqlite(p) => Ok(Source::Sqlite(sqlite::SqliteSource::open(p)?)),
            SourceUrl::Postgres(u) => Ok(Source::Postgres(postgres::PgSource::open(u)?)),
        }
    }

    /// The tenants, ids checked: they end up in object keys and SQL literals. A tenant whose id
    /// is not a slug is returned apart, shown so it can be found, and left alone by every step
    /// (its rows are neither snapshotted nor deleted); the others go on.
    pub fn tenants(&self, dm: &DataMap) -> Result<TenantList, SourceError> {
        let rows = match self {
            Source::Sqlite(s) => s.tenant_rows(&dm.tenants)?,
            Source::Postgres(s) => s.tenant_rows(&dm.tenants)?,
        };
        let mut list = TenantList::default();
        for (i, (id, status, cancelled_us, time_zone)) in rows.into_iter().enumerate() {
            if !crate::util::is_safe_ident(&id) {
                list.bad.push(BadTenant::new(&dm.tenants.table, i + 1, &id));
                continue;
            }
            list.valid.push(Tenant {
                id,
                status,
                cancelled_at: cancelled_us.and_then(DateTime::<Utc>::from_timestamp_micros),
                time_zone: time_zone.filter(|z| !z.is_empty()),
            });
        }
        Ok(list)
    }

    /// The columns of `table`, or `None` if it does not exist.
    pub fn columns(&self, table: &str) -> Result<Option<Vec<Column>>, SourceError> {
        match self {
            Source::Sqlite(s) => s.columns(table),
            Source::Postgres(s) => s.columns(table),
        }
    }

    /// Stream the plan's tables for the plan's tenants to `tx`, all inside one read
    /// transaction (so every tenant's snapshot is consistent across its tables), on a
    /// connection of its own. Blocking: call from a blocking thread.
    pub fn scan(
        url: &SourceUrl,
        plan: &ScanPlan,
        tx: &SyncSender<ScanEvent>,
    ) -> Result<(), SourceError> {
        match url {
            SourceUrl::Sqlite(p) => sqlite::scan(p, plan, tx),
            SourceUrl::Postgres(u) => postgres::scan(u, plan, tx),
        }
    }

    /// The Arrow type this source gives a column.
    pub fn col_type(&self, table: &str, c: &Column) -> Result<ColType, SourceError> {
        match self {
            Source::Sqlite(_) => sqlite::col_type(table, c),
            Source::Postgres(_) => postgres::col_type(table, c),
        }
    }

    /// Compare the data map (and the policy's column references) with the live schema.
    pub fn schema_problems(
        &self,
        dm: &DataMap,
        policy: Option<&Policy>,
    ) -> Result<Vec<Problem>, SourceError> {
        let mut problems = Vec::new();
        let missing_col =
            |file: &std::path::Path, key: String, table: &str, col: &str, cols: &[Column]| {
                let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
                Problem::new(
                    file,
                    key,
                    format!(
                        "column {col:?} does not exist in table {table} (it has: {})",
                        names.join(", ")
                    ),
                    "name an existing column or migrate the database",
                )
            };
        let t = &dm.tenants;
        match self.columns(&t.table)? {
            None => problems.push(Problem::new(
                &dm.tenants_file,
                "tenants.table",
                format!("table {:?} does not exist in the source", t.table),
                "name the table that lists the tenants",
            )),
            Some(cols) => {
                for (key, col) in [
                    ("id_column", &t.id_column),
                    ("status_column", &t.status_column),
                    ("cancelled_at_column", &t.cancelled_at_column),
                ]
                .into_iter()
                .chain(t.time_zone_column.as_ref().map(|c| ("time_zone_column", c)))
                {
                    if !cols.iter().any(|c| &c.name == col) {
                        problems.push(missing_col(
                            &dm.tenants_file,
                            format!("tenants.{key}"),
                            &t.table,
                            col,
                            &cols,
                        ));
                    }
                }
            }
        }
        for table in &dm.tables {
            let Some(cols) = self.columns(&table.name)? else {
                problems.push(Problem::new(
                    &table.file,
                    format!("tables.{}", table.name),
                    format!("table {:?} does not exist in the source", table.name),
                    "remove the entry or correct the table name",
                ));
                continue;
            };
            for (key, col) in table.config.named_columns() {
                if !cols.iter().any(|c| c.name == col) {
                    problems.push(missing_col(
                        &table.file,
                        format!("tables.{}.{key}", table.name),
                        &table.name,
                        col,
                        &cols,
                    ));
                }
            }
            for c in &cols {
                if let Err(e) = self.col_type(&table.name, c) {
                    problems.push(Problem::new(
                        &table.file,
                        format!("tables.{}", table.name),
                        e.to_string(),
                        "change the column's declared type",
                    ));
                }
            }
            // Erasure matches identifiers by their text: snapshots (restore, rewrite, index)
            // must read a value as the same text the database's CAST(… AS TEXT) gives, which
            // holds for text and integer columns (not for numeric's scale or uuid's bytes).
            for (col, kind) in &table.config.identifiers {
                if let Some(c) = cols.iter().find(|c| &c.name == col)
                    && let Ok(t) = self.col_type(&table.name, c)
                    && !matches!(
                        t,
                        ColType::Utf8 | ColType::Int16 | ColType::Int32 | ColType::Int64
                    )
                {
                    problems.push(Problem::new(
                        &table.file,
                        format!("tables.{}.identifiers", table.name),
                        format!(
                            "column {col} ({kind} identifiers) has type {:?}: erasure matches identifiers by their text, and lethe reads only text and integer columns as the same text the database gives",
                            c.declared
                        ),
                        "hold identifiers in a text or integer column (or remove the column from identifiers)",
                    ));
                }
            }
            if let Some(policy) = policy {
                for (key, col) in policy.columns_for(dm, &table.name) {
                    if !cols.iter().any(|c| c.name == col) {
                        problems.push(missing_col(&policy.path, key, &table.name, &col, &cols));
                    }
                }
                problems.extend(self.retention_column_problems(policy, table, &cols));
            }
        }
        Ok(problems)
    }
}

impl Source {
    /// Columns retention compares or writes must have a type it handles exactly: anchors and
    /// flag columns are timestamps or dates (a `text` anchor would compare as text — Unix
    /// seconds or `''` sort below every date and would be deleted at once; a `bigint` anchor
    /// cannot be compared with an instant at all), and `anonymize` with `method = "null"`
    /// cannot clear a NOT NULL column (the run would fail half-way, after other tables changed).
    fn retention_column_problems(
        &self,
        policy: &Policy,
        table: &crate::datamap::Table,
        cols: &[Column],
    ) -> Vec<Problem> {
        let mut out = Vec::new();
        let col = |name: &str| cols.iter().find(|c| c.name == name);
        let is_time = |c: &Column| {
            matches!(
                self.col_type(&table.name, c),
                Ok(ColType::Timestamp | ColType::TimestampNaive | ColType::Date)
            )
        };
        for cat in table
            .config
            .categories
            .iter()
            .filter_map(|c| policy.categories.get(c))
        {
            let (anchor, file, key) = match &cat.anchor {
                Some(a) => (
                    Some(a.as_str()),
                    policy.path.as_path(),
                    format!("categories.{}.anchor", cat.name),
                ),
                None => (
                    table.config.time_column.as_deref(),
                    table.file.as_path(),
                    format!("tables.{}.time_column", table.name),
                ),
            };
            if let Some(c) = anchor.and_then(col)
                && !is_time(c)
            {
                out.push(Problem::new(
                    file,
                    key,
                    format!(
                        "table {}, column {}: the anchor of category {} has type {:?}, not a timestamp or date; retention would compare it wrongly (text compares as text: Unix seconds or '' sort before every date and would be deleted at once)",
                        table.name, c.name, cat.name, c.declared
                    ),
                    match self {
                        Source::Postgres(_) => "migrate the column to timestamptz (e.g. ALTER TABLE … ALTER COLUMN … TYPE timestamptz USING to_timestamp(col::bigint)), or anchor the category on a timestamp column",
                        Source::Sqlite(_) => "declare the column TIMESTAMP (values as UTC text 'YYYY-MM-DD HH:MM:SS'), or anchor the category on such a column",
                    },
                ));
            }
            match &cat.action {
                crate::policy::Action::Flag { column } => {
                    if let Some(c) = col(column)
                        && !is_time(c)
                    {
                        out.push(Problem::new(
                            &policy.path,
                            format!("categories.{}.flag_column", cat.name),
                            format!(
                                "table {}, column {}: the flag column has type {:?}; lethe writes the flagging time into it",
                                table.name, c.name, c.declared
                            ),
                            "name a nullable timestamp column",
                        ));
                    }
                }
                crate::policy::Action::Anonymize {
                    columns,
                    hash: false,
                } => {
                    for name in columns {
                        if let Some(c) = col(name)
                            && !c.nullable
                        {
                            out.push(Problem::new(
                                &policy.path,
                                format!("categories.{}.columns", cat.name),
                                format!(
                                    "table {}, column {} is NOT NULL: anonymize with method = \"null\" cannot clear it",
                                    table.name, c.name
                                ),
                                "drop the NOT NULL constraint, use method = \"hash\" (PostgreSQL), or action = \"delete\"",
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        out
    }
}

/// The Arrow schema of columns with their types.
pub fn arrow_schema_of(cols: &[Column], types: &[ColType]) -> SchemaRef {
    let fields: Vec<arrow::datatypes::Field> = cols
        .iter()
        .zip(types)
        .map(|(c, t)| arrow::datatypes::Field::new(&c.name, t.arrow(), c.nullable))
        .collect();
    std::sync::Arc::new(arrow::datatypes::Schema::new(fields))
}

/// A tenant row as a source reads it: id, status, cancelled-at in UTC microseconds.
pub type TenantRow = (String, String, Option<i64>, Option<String>);
