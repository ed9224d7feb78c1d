//! The primary database as retention sees it: the inventory's counting queries and the batched
//! DELETE / UPDATE statements, for PostgreSQL and SQLite.
//!
//! Every statement is built here from identifiers of the data map (quoted) and values lethe
//! made (tenant ids that passed the slug check, instants it formatted, primary keys it read
//! back), as SQL literals. PostgreSQL statements go through the simple-query protocol, whose
//! results are text — the same text SQLite values are turned into — so one code path serves
//! both. Held subjects (personal data) appear only inside statements, never in logs or errors.
//!
//! Timestamps: PostgreSQL sessions run with `TimeZone = UTC`, so a `timestamptz` anchor compares
//! against the UTC instant. SQLite has no timestamp type; anchors must be stored as UTC text
//! `YYYY-MM-DD HH:MM:SS[.ffffff]` (what `schemas/demo_app.sql` does), which compares correctly as
//! text.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rusqlite::types::ValueRef;
use tokio::runtime::Handle;
use tokio_postgres::error::SqlState;

use crate::config::{RetentionSection, SourceUrl};
use crate::datamap::{DataMap, Table};
use crate::policy::LegalHold;
use crate::retention::plan::{Change, Selection};
use crate::source::SourceError;
use crate::source::postgres::{config as pg_config, connect as pg_connect, pg_error, redact};
use crate::util::quote_ident as qi;

/// The table lethe keeps its pending blob deletions in (created on the first destructive run).
pub const OUTBOX: &str = "lethe_blob_outbox";

/// A row of text values.
pub type Row = Vec<Option<String>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A connection to the primary database.
pub enum Db {
    Sqlite(rusqlite::Connection),
    Postgres {
        handle: Handle,
        client: tokio_postgres::Client,
    },
}

/// A statement failed; `retry` when it is worth trying again (a lock or statement timeout).
#[derive(Debug)]
pub struct DbError {
    pub message: String,
    pub retry: bool,
}

impl DbError {
    pub fn on(self, table: &str) -> SourceError {
        SourceError::Query {
            table: table.into(),
            message: self.message,
        }
    }
}

/// A string as an SQL literal.
pub fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// An instant as an SQL literal the dialect compares correctly (see the module doc): with an
/// explicit `+00` offset on PostgreSQL (exact for `timestamptz` whatever the session's time
/// zone, e.g. behind a pooler that drops `SET TIME ZONE`), canonical UTC text on SQLite.
pub fn ts_lit(d: Dialect, t: DateTime<Utc>) -> String {
    let mut s = if t.timestamp_subsec_micros() == 0 {
        t.format("%Y-%m-%d %H:%M:%S").to_string()
    } else {
        t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
    };
    if d == Dialect::Postgres {
        s.push_str("+00");
    }
    lit(&s)
}

/// The SQL function every lethe SQLite connection has: 1 when its argument is an anchor lethe
/// can compare exactly — canonical UTC text `YYYY-MM-DD HH:MM:SS[.f…]` naming a real instant
/// ([`crate::source::sqlite::canonical_instant`], the rule the snapshot reader applies too) —
/// else 0. `'2026-02-30 …'`, `'0000-00-00 …'`, numbers and offsets are 0.
pub const SQLITE_ANCHOR_OK: &str = "lethe_anchor_ok";

/// SQLite: a stored anchor compares correctly with [`ts_lit`] only when [`SQLITE_ANCHOR_OK`]
/// holds (numbers sort below all text; offsets compare as text; an impossible date is no instant).
pub fn sqlite_canonical(col: &str) -> String {
    format!("{SQLITE_ANCHOR_OK}({col})")
}

/// Register [`SQLITE_ANCHOR_OK`] on a connection.
pub fn register_sqlite_functions(c: &rusqlite::Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    c.create_scalar_function(
        SQLITE_ANCHOR_OK,
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            Ok(match ctx.get_raw(0) {
                ValueRef::Text(t) => crate::source::sqlite::canonical_instant(t).is_some() as i64,
                _ => 0,
            })
        },
    )
}

fn sqlite_text(v: ValueRef<'_>) -> Option<String> {
    match v {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Some(crate::util::hex(b)),
    }
}

impl Db {
    /// Connect. `write` opens SQLite read-write (planning opens it read-only, so `lethe plan`
    /// cannot change anything); PostgreSQL sessions get UTC and the configured timeouts.
    pub fn open(url: &SourceUrl, write: bool, cfg: &RetentionSection) -> Result<Db, SourceError> {
        match url {
            SourceUrl::Sqlite(path) => {
                use rusqlite::OpenFlags;
                let open_err = |message: String| SourceError::Open {
                    url: format!("sqlite://{}", path.display()),
                    message,
                    fix: "check source.url in lethe.toml".into(),
                };
                if !path.exists() {
                    return Err(open_err("file not found".into()));
                }
                let flags = if write {
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
                } else {
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
                };
                let c = rusqlite::Connection::open_with_flags(path, flags)
                    .map_err(|e| open_err(e.to_string()))?;
                c.busy_timeout(std::time::Duration::from_millis(cfg.lock_timeout_ms))
                    .map_err(|e| open_err(e.to_string()))?;
                register_sqlite_functions(&c).map_err(|e| open_err(e.to_string()))?;
                Ok(Db::Sqlite(c))
            }
            SourceUrl::Postgres(u) => {
                let handle = Handle::try_current().map_err(|_| SourceError::Open {
                    url: redact(u),
                    message: "no async runtime".into(),
                    fix: "call from within lethe's runtime".into(),
                })?;
                let config = pg_config(u)?;
                let client =
                    tokio::task::block_in_place(|| handle.block_on(pg_connect(&config, u)))?;
                let mut db = Db::Postgres { handle, client };
                // standard_conforming_strings: literals mean what `lit` assumes, whatever the
                // server's default. Planning sessions are read-only.
                let setup = format!(
                    "SET TIME ZONE 'UTC'; SET standard_conforming_strings = on; SET lock_timeout = '{}ms'; SET statement_timeout = '{}ms'; SET idle_in_transaction_session_timeout = '60s'{}",
                    cfg.lock_timeout_ms,
                    cfg.statement_timeout_ms,
                    if write {
                        ""
                    } else {
                        "; SET default_transaction_read_only = on"
                    }
                );
                db.query(&setup).map_err(|e| SourceError::Open {
                    url: redact(u),
                    message: e.message,
                    fix: "check that the user may SET session parameters".into(),
                })?;
                Ok(db)
            }
        }
    }

    pub fn dialect(&self) -> Dialect {
        match self {
            Db::Sqlite(_) => Dialect::Sqlite,
            Db::Postgres { .. } => Dialect::Postgres,
        }
    }

    /// Run `sql` (PostgreSQL: one or more statements, implicitly one transaction) and return
    /// the rows of the last statement that returned any.
    pub fn query(&mut self, sql: &str) -> Result<Vec<Row>, DbError> {
        match self {
            Db::Sqlite(c) => sqlite_rows(c, sql),
            Db::Postgres { handle, client } => {
                let msgs =
                    tokio::task::block_in_place(|| handle.block_on(client.simple_query(sql)))
                        .map_err(|e| pg_db_error(&e))?;
                let mut out: Vec<Row> = Vec::new();
                let mut current: Vec<Row> = Vec::new();
                for m in msgs {
                    match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => {
                            current.push((0..r.len()).map(|i| r.get(i).map(String::from)).collect())
                        }
                        tokio_postgres::SimpleQueryMessage::CommandComplete(_) => {
                            if !current.is_empty() {
                                out = std::mem::take(&mut current);
                            }
                        }
                        _ => {}
                    }
                }
                if !current.is_empty() {
                    out = current;
                }
                Ok(out)
            }
        }
    }

    /// Run one statement with bind parameters (PostgreSQL; every selected column must be text).
    /// SQLite inlines values and ignores `params`.
    pub fn query_p(&mut self, sql: &str, params: &Params) -> Result<Vec<Row>, DbError> {
        if params.subjects.is_empty() && params.pads.is_none() {
            return self.query(sql);
        }
        let Db::Postgres { handle, client } = self else {
            return self.query(sql);
        };
        use tokio_postgres::types::{ToSql, Type};
        let mut types = vec![Type::TEXT_ARRAY; params.subjects.len()];
        let mut values: Vec<&(dyn ToSql + Sync)> = params
            .subjects
            .iter()
            .map(|s| s as &(dyn ToSql + Sync))
            .collect();
        if let Some((inner, outer)) = &params.pads {
            types.extend([Type::BYTEA, Type::BYTEA]);
            values.push(inner);
            values.push(outer);
        }
        let rows = tokio::task::block_in_place(|| {
            handle.block_on(async {
                let st = client.prepare_typed(sql, &types).await?;
                client.query(&st, &values).await
            })
        })
        .map_err(|e| pg_db_error(&e))?;
        Ok(rows
            .iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.get::<_, Option<String>>(i))
                    .collect()
            })
            .collect())
    }

    /// SQLite: run `stmts` in one `BEGIN IMMEDIATE` transaction and return the rows of the
    /// last. (PostgreSQL changes are single statements with CTEs, atomic on their own.)
    fn sqlite_txn(&mut self, stmts: &[String]) -> Result<Vec<Row>, DbError> {
        let Db::Sqlite(c) = self else {
            unreachable!("sqlite_txn on PostgreSQL")
        };
        let tx = c
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sqlite_err)?;
        let mut out = Vec::new();
        for sql in stmts {
            out = sqlite_rows(&tx, sql)?;
        }
        tx.commit().map_err(sqlite_err)?;
        Ok(out)
    }

    /// Does `table` exist?
    pub fn has_table(&mut self, table: &str) -> Result<bool, DbError> {
        let sql = match self.dialect() {
            Dialect::Sqlite => format!(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = {}",
                lit(table)
            ),
            Dialect::Postgres => format!(
                "SELECT count(*) FROM pg_catalog.pg_tables WHERE tablename = {} AND schemaname = ANY (current_schemas(false))",
                lit(table)
            ),
        };
        Ok(self.query(&sql)?[0][0].as_deref() != Some("0"))
    }

    /// Create the blob outbox if it does not exist yet.
    pub fn ensure_outbox(&mut self) -> Result<(), DbError> {
        let sql = match self.dialect() {
            Dialect::Sqlite => format!(
                "CREATE TABLE IF NOT EXISTS {OUTBOX} (id INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, blob_key TEXT NOT NULL, enqueued_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
            ),
            Dialect::Postgres => format!(
                "CREATE TABLE IF NOT EXISTS {OUTBOX} (id bigserial PRIMARY KEY, tenant text NOT NULL, blob_key text NOT NULL, enqueued_at timestamptz NOT NULL DEFAULT now())"
            ),
        };
        self.query(&sql).map(|_| ())
    }
}

/// Every row of one SQLite statement, as text.
fn sqlite_rows(c: &rusqlite::Connection, sql: &str) -> Result<Vec<Row>, DbError> {
    let mut st = c.prepare(sql).map_err(sqlite_err)?;
    let n = st.column_count();
    let mut rows = st.query([]).map_err(sqlite_err)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(sqlite_err)? {
        out.push((0..n).map(|i| sqlite_text(r.get_ref_unwrap(i))).collect());
    }
    Ok(out)
}

fn pg_db_error(e: &tokio_postgres::Error) -> DbError {
    DbError {
        retry: matches!(
            e.code(),
            Some(c) if *c == SqlState::LOCK_NOT_AVAILABLE
                || *c == SqlState::QUERY_CANCELED
                || *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::T_R_SERIALIZATION_FAILURE
        ),
        message: pg_error(e),
    }
}

fn sqlite_err(e: rusqlite::Error) -> DbError {
    let retry = matches!(
        &e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::DatabaseBusy || f.code == rusqlite::ErrorCode::DatabaseLocked
    );
    let message = match &e {
        // rusqlite's text quotes the whole statement, and SQLite statements carry held
        // subjects and erasure identifiers as literals: say where, not what.
        rusqlite::Error::SqlInputError { msg, offset, .. } => {
            format!("{msg} (at byte {offset} of lethe's statement)")
        }
        _ => e.to_string(),
    };
    DbError { message, retry }
}

/// "Any subject column holds a held subject". PostgreSQL takes the subjects as bind parameter
/// `$1` (so they never appear in statement text, which the server may log); SQLite, which logs
/// nothing, as literals.
fn subject_match(d: Dialect, table: &Table, subjects: &[String], param: usize) -> String {
    let list = subjects
        .iter()
        .map(|s| lit(s))
        .collect::<Vec<_>>()
        .join(", ");
    table
        .config
        .subject_columns
        .iter()
        .map(|c| match d {
            Dialect::Postgres => format!(
                "COALESCE(CAST({} AS TEXT) = ANY(${param}::text[]), FALSE)",
                qi(c)
            ),
            Dialect::Sqlite => format!("COALESCE(CAST({} AS TEXT) IN ({list}), FALSE)", qi(c)),
        })
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// Bind parameters of a PostgreSQL statement: `$1…$n` lists of held subjects (one per
/// selection in the statement), then the keyed hash's inner and outer HMAC pads when there are.
/// Neither ever appears in statement text, which the server may log.
#[derive(Debug, Clone, Default)]
pub struct Params {
    pub subjects: Vec<Vec<String>>,
    pub pads: Option<(Vec<u8>, Vec<u8>)>,
}

impl Params {
    /// The `$n` a new subject list gets.
    fn add_subjects(&mut self, s: &[String]) -> usize {
        self.subjects.push(s.to_vec());
        self.subjects.len()
    }
}

/// The WHERE clause of a selection over `tenants`; `with_exclusion` leaves held subjects out.
pub fn predicate(
    d: Dialect,
    table: &Table,
    sel: &Selection,
    tenants: &[String],
    with_exclusion: bool,
    params: &mut Params,
) -> String {
    let list = tenants
        .iter()
        .map(|t| lit(t))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{} IN ({list}) AND {}",
        qi(&table.config.tenant_column),
        due(d, table, sel, with_exclusion, params)
    )
}

/// The selection's condition on a row, whatever its tenant (the inventory groups by tenant and
/// reads each group's tenants only; every changing statement adds the tenant list).
fn due(
    d: Dialect,
    table: &Table,
    sel: &Selection,
    with_exclusion: bool,
    params: &mut Params,
) -> String {
    let mut p = vec!["TRUE".to_string()];
    if let (Some(a), Some(c)) = (&sel.anchor, sel.cutoff) {
        p.push(format!("{} <= {}", qi(a), ts_lit(d, c)));
        if d == Dialect::Sqlite {
            p.push(sqlite_canonical(&qi(a)));
        }
    }
    match &sel.change {
        Change::Delete => {}
        // Keyed hashes are 64 hex digits: a hashed value is not hashed again.
        Change::Anonymize { columns, hash } => p.push(format!(
            "({})",
            columns
                .iter()
                .map(|c| if *hash {
                    format!(
                        "({0} IS NOT NULL AND CAST({0} AS TEXT) !~ '^[0-9a-f]{{64}}$')",
                        qi(c)
                    )
                } else {
                    format!("{} IS NOT NULL", qi(c))
                })
                .collect::<Vec<_>>()
                .join(" OR ")
        )),
        Change::Flag { column } => p.push(format!("{} IS NULL", qi(column))),
    }
    if let Some(m) = &sel.erase {
        let known: BTreeMap<&str, Vec<&str>> = m
            .by_kind
            .iter()
            .map(|(k, v)| (k.as_str(), v.iter().map(String::as_str).collect()))
            .collect();
        let held =
            crate::erasure::resolve::matches(d, table, &known, m.phone_country.as_deref(), params);
        p.push(format!("({})", held.unwrap_or_else(|| "FALSE".into())));
    }
    if with_exclusion && !sel.excluded_subjects.is_empty() {
        let n = params.add_subjects(&sel.excluded_subjects);
        p.push(format!(
            "NOT ({})",
            subject_match(d, table, &sel.excluded_subjects, n)
        ));
    }
    p.join(" AND ")
}

/// Rows whose blob lies outside their own tenant's `blob_prefix` (SQL condition; `None` when
/// the table declares no prefix).
pub fn blob_outside_prefix(table: &Table) -> Option<String> {
    let (b, prefix) = (
        table.config.blob_column.as_ref()?,
        table.config.blob_prefix.as_ref()?,
    );
    let (before, after) = prefix.split_once("{tenant}").unwrap_or((prefix, ""));
    let want = format!(
        "({} || CAST({} AS TEXT) || {})",
        lit(before),
        qi(&table.config.tenant_column),
        lit(after)
    );
    Some(format!(
        "{b} IS NOT NULL AND substr(CAST({b} AS TEXT), 1, length({want})) <> {want}",
        b = qi(b)
    ))
}

/// What one pass over a table counts besides the selections: rows per tenant id (`None`: the
/// tenant column is NULL) and rows whose blob lies outside their tenant's prefix.
#[derive(Debug, Clone, Default)]
pub struct TableCounts {
    pub rows: BTreeMap<Option<String>, u64>,
    pub blobs_outside_prefix: u64,
}

impl TableCounts {
    /// Rows per tenant id, NULL tenants left out.
    pub fn per_tenant(&self) -> BTreeMap<String, u64> {
        self.rows
            .iter()
            .filter_map(|(t, n)| t.clone().map(|t| (t, *n)))
            .collect()
    }
}

/// Rows per tenant of `table` (and rows outside their blob prefix), and per-tenant answers for
/// each selection of `groups` (a selection and the tenants sharing it) — in one pass over the
/// table, whatever the number of selections (aggregates with `FILTER`). With no groups it is
/// the preflight's count of the table.
#[allow(clippy::type_complexity)]
pub fn table_stats(
    db: &mut Db,
    table: &Table,
    groups: &[(&Selection, Vec<String>)],
) -> Result<
    (
        TableCounts,
        Vec<BTreeMap<String, crate::retention::plan::Stats>>,
    ),
    SourceError,
> {
    let tc = qi(&table.config.tenant_column);
    let pk = qi(&table.config.primary_key);
    let d = db.dialect();
    let mut params = Params::default();
    let mut cols = vec![
        format!("CAST({tc} AS TEXT)"),
        "CAST(count(*) AS TEXT)".to_string(),
        match blob_outside_prefix(table) {
            Some(w) => format!("CAST(count(*) FILTER (WHERE {w}) AS TEXT)"),
            None => "CAST(0 AS TEXT)".into(),
        },
    ];
    for (sel, _) in groups {
        let f = format!("FILTER (WHERE {})", due(d, table, sel, true, &mut params));
        let anchor = |agg: &str| match &sel.anchor {
            Some(a) => format!("CAST({agg}({}) {f} AS TEXT)", qi(a)),
            None => "CAST(NULL AS TEXT)".into(),
        };
        cols.push(format!("CAST(count(*) {f} AS TEXT)"));
        cols.push(anchor("min"));
        cols.push(anchor("max"));
        cols.push(format!("CAST(min({pk}) {f} AS TEXT)"));
        cols.push(format!("CAST(max({pk}) {f} AS TEXT)"));
        cols.push(match &table.config.blob_column {
            Some(b) => format!("CAST(count({}) {f} AS TEXT)", qi(b)),
            None => "CAST(0 AS TEXT)".into(),
        });
    }
    let sql = format!(
        "SELECT {} FROM {} GROUP BY {tc}",
        cols.join(", "),
        qi(&table.name)
    );
    let n = |v: &Option<String>| v.as_deref().and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut totals = TableCounts::default();
    let mut out: Vec<BTreeMap<String, crate::retention::plan::Stats>> = groups
        .iter()
        .map(|(_, tenants)| {
            tenants
                .iter()
                .map(|t| (t.clone(), Default::default()))
                .collect()
        })
        .collect();
    for r in db.query_p(&sql, &params).map_err(|e| e.on(&table.name))? {
        totals.rows.insert(r[0].clone(), n(&r[1]));
        totals.blobs_outside_prefix += n(&r[2]);
        let Some(t) = r[0].clone() else { continue };
        for (g, stats) in out.iter_mut().enumerate() {
            let c = 3 + g * 6;
            if let Some(s) = stats.get_mut(&t) {
                s.rows = n(&r[c]);
                if s.rows > 0 {
                    s.oldest = r[c + 1].clone();
                    s.newest = r[c + 2].clone();
                    s.min_pk = r[c + 3].clone();
                    s.max_pk = r[c + 4].clone();
                }
                s.blobs = n(&r[c + 5]);
            }
        }
    }
    for ((sel, tenants), stats) in groups.iter().zip(out.iter_mut()) {
        if sel.excluded_subjects.is_empty() {
            continue;
        }
        let mut params = Params::default();
        let pred = predicate(d, table, sel, tenants, false, &mut params);
        let n = params.add_subjects(&sel.excluded_subjects);
        let sql = format!(
            "SELECT CAST({tc} AS TEXT), CAST(count(*) AS TEXT) FROM {} WHERE {pred} AND ({}) GROUP BY {tc}",
            qi(&table.name),
            subject_match(d, table, &sel.excluded_subjects, n)
        );
        for r in db.query_p(&sql, &params).map_err(|e| e.on(&table.name))? {
            if let (Some(t), Some(c)) = (&r[0], &r[1])
                && let Some(s) = stats.get_mut(t)
            {
                s.held_by_subject = c.parse().unwrap_or(0);
            }
        }
    }
    Ok((totals, out))
}

/// Legal holds from the source table named by `legal_holds_source` (columns `tenant`,
/// `table_name`, `category`, `subject`, `reason`, `placed_by`, `placed_at`).
pub fn source_holds(db: &mut Db, table: &str) -> Result<Vec<LegalHold>, SourceError> {
    let sql = format!(
        "SELECT CAST(tenant AS TEXT), CAST(table_name AS TEXT), CAST(category AS TEXT), CAST(subject AS TEXT), CAST(reason AS TEXT), CAST(placed_by AS TEXT), CAST(placed_at AS TEXT) FROM {}",
        qi(table)
    );
    let rows = db.query(&sql).map_err(|e| SourceError::Query {
        table: table.into(),
        message: format!(
            "{} (legal_holds_source.table needs columns tenant, table_name, category, subject, reason, placed_by, placed_at)",
            e.message
        ),
    })?;
    let mut holds = Vec::new();
    for (i, r) in rows.into_iter().enumerate() {
        let (Some(tenant), Some(reason), Some(placed_by)) =
            (r[0].clone(), r[4].clone(), r[5].clone())
        else {
            return Err(SourceError::Query {
                table: table.into(),
                message: format!(
                    "legal hold in row {} has no tenant, reason or placed_by; fix the row (until then nothing is deleted)",
                    i + 1
                ),
            });
        };
        // An empty cell means "any", as a missing key does in the policy file.
        let any = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
        holds.push(LegalHold {
            tenant,
            table: any(&r[1]),
            category: any(&r[2]),
            subject: any(&r[3]),
            reason,
            placed_by,
            placed_at: r[6].clone(),
        });
    }
    Ok(holds)
}

/// Pending blob deletions (0 when the outbox does not exist yet).
pub fn pending_blobs(db: &mut Db) -> Result<u64, SourceError> {
    if !db.has_table(OUTBOX).map_err(|e| e.on(OUTBOX))? {
        return Ok(0);
    }
    let r = db
        .query(&format!("SELECT count(*) FROM {OUTBOX}"))
        .map_err(|e| e.on(OUTBOX))?;
    Ok(r[0][0].as_deref().and_then(|s| s.parse().ok()).unwrap_or(0))
}

/// Which rows one batch takes.
#[derive(Debug, Clone)]
pub enum Range {
    /// Integer primary keys `lo..=hi`.
    Window(i64, i64),
    /// The next `n` rows in key order after `after`.
    Next { after: Option<String>, n: u64 },
}

/// What one batch changed.
#[derive(Debug, Default)]
pub struct BatchResult {
    pub per_tenant: BTreeMap<String, u64>,
    /// Largest key changed (for [`Range::Next`]).
    pub max_pk: Option<String>,
}

impl BatchResult {
    pub fn rows(&self) -> u64 {
        self.per_tenant.values().sum()
    }
}

/// Apply `sel`'s change to the rows of `range`, as one short transaction. Rows that reference
/// a blob put the blob into the outbox in the same transaction.
pub fn change_batch(
    db: &mut Db,
    table: &Table,
    sel: &Selection,
    tenants: &[String],
    range: &Range,
    now: DateTime<Utc>,
    subject_key: &[u8; 32],
) -> Result<BatchResult, DbError> {
    let t = qi(&table.name);
    let pk = qi(&table.config.primary_key);
    let tc = qi(&table.config.tenant_column);
    let dialect = db.dialect();
    let mut params = Params::default();
    let pred = predicate(dialect, table, sel, tenants, true, &mut params);
    let range_sql = match range {
        Range::Window(lo, hi) => format!("{pk} BETWEEN {lo} AND {hi}"),
        Range::Next { after, n } => format!(
            "{pk} IN (SELECT {pk} FROM {t} WHERE {pred}{} ORDER BY {pk} LIMIT {n})",
            after
                .as_ref()
                .map(|a| format!(" AND {pk} > {}", lit(a)))
                .unwrap_or_default()
        ),
    };
    let set = match &sel.change {
        Change::Delete => None,
        Change::Flag { column } => Some(format!("{} = {}", qi(column), ts_lit(dialect, now))),
        Change::Anonymize { columns, hash } => Some(
            columns
                .iter()
                .map(|c| {
                    let v = if *hash {
                        keyed_hash_sql(dialect, c, subject_key, &mut params)?
                    } else {
                        "NULL".into()
                    };
                    Ok(format!("{} = {v}", qi(c)))
                })
                .collect::<Result<Vec<_>, DbError>>()?
                .join(", "),
        ),
    };
    let blob = match (&sel.change, &table.config.blob_column) {
        (Change::Delete, Some(b)) => Some(qi(b)),
        _ => None,
    };
    let change = match &set {
        None => format!("DELETE FROM {t} WHERE {range_sql} AND {pred}"),
        Some(s) => format!("UPDATE {t} SET {s} WHERE {range_sql} AND {pred}"),
    };
    let rows = match dialect {
        Dialect::Postgres => {
            // Windows need no largest key back: return only what the counts need.
            let keyset = matches!(range, Range::Next { .. });
            let returning = format!(
                "RETURNING {tc} AS t_{}{}",
                if keyset {
                    format!(", {pk} AS k_")
                } else {
                    String::new()
                },
                blob.as_ref()
                    .map(|b| format!(", CAST({b} AS TEXT) AS b_"))
                    .unwrap_or_default()
            );
            let max_key = if keyset {
                "CAST((SELECT max(k_) FROM d) AS TEXT)"
            } else {
                "CAST(NULL AS TEXT)"
            };
            let outbox = if blob.is_some() {
                format!(
                    ", o AS (INSERT INTO {OUTBOX} (tenant, blob_key) SELECT CAST(t_ AS TEXT), b_ FROM d WHERE b_ IS NOT NULL)"
                )
            } else {
                String::new()
            };
            let sql = format!(
                "WITH d AS ({change} {returning}){outbox} SELECT CAST(t_ AS TEXT), CAST(count(*) AS TEXT), {max_key} FROM d GROUP BY t_"
            );
            db.query_p(&sql, &params)?
        }
        Dialect::Sqlite => {
            let mut stmts = Vec::new();
            if let Some(b) = &blob {
                stmts.push(format!(
                    "INSERT INTO {OUTBOX} (tenant, blob_key) SELECT CAST({tc} AS TEXT), CAST({b} AS TEXT) FROM {t} WHERE {range_sql} AND {pred} AND {b} IS NOT NULL"
                ));
            }
            stmts.push(format!("{change} RETURNING CAST({tc} AS TEXT), {pk}"));
            let returned = db.sqlite_txn(&stmts)?;
            let mut per: BTreeMap<String, u64> = BTreeMap::new();
            let mut max: Option<String> = None;
            for r in &returned {
                if let Some(t) = &r[0] {
                    *per.entry(t.clone()).or_default() += 1;
                }
                if let Some(k) = &r[1] {
                    let bigger = match (&max, k.parse::<i64>()) {
                        (None, _) => true,
                        (Some(m), Ok(k)) if m.parse::<i64>().is_ok() => {
                            k > m.parse::<i64>().unwrap()
                        }
                        (Some(m), _) => k > m,
                    };
                    if bigger {
                        max = Some(k.clone());
                    }
                }
            }
            per.into_iter()
                .map(|(t, n)| vec![Some(t), Some(n.to_string()), max.clone()])
                .collect()
        }
    };
    let mut out = BatchResult::default();
    for r in rows {
        if let (Some(t), Some(n)) = (&r[0], &r[1]) {
            out.per_tenant.insert(t.clone(), n.parse().unwrap_or(0));
        }
        out.max_pk = r[2].clone();
    }
    Ok(out)
}

/// SQL for HMAC-SHA256(key, value) as hex (PostgreSQL only: `sha256()` is built in since 11);
/// the pads travel as bind parameters.
fn keyed_hash_sql(
    d: Dialect,
    col: &str,
    key: &[u8; 32],
    params: &mut Params,
) -> Result<String, DbError> {
    match d {
        Dialect::Postgres => {
            let pad = |b: u8| -> Vec<u8> {
                key.iter()
                    .map(|k| k ^ b)
                    .chain(std::iter::repeat_n(b, 32))
                    .collect()
            };
            params.pads = Some((pad(0x36), pad(0x5c)));
            let inner = params.subjects.len() + 1;
            let outer = inner + 1;
            Ok(format!(
                "encode(sha256(${outer}::bytea || sha256(${inner}::bytea || convert_to(CAST({} AS TEXT), 'UTF8'))), 'hex')",
                qi(col)
            ))
        }
        Dialect::Sqlite => Err(DbError {
            message:
                "anonymize with method = \"hash\" needs PostgreSQL; on SQLite use method = \"null\""
                    .into(),
            retry: false,
        }),
    }
}

/// Rows of `sel` over `tenants` still present (the verification re-query). Counted per tenant
/// over the due condition alone and summed for `tenants`: the same answer as a `tenant IN (…)`
/// filter, without testing the tenant list on every row.
pub fn remaining(
    db: &mut Db,
    table: &Table,
    sel: &Selection,
    tenants: &[String],
) -> Result<u64, SourceError> {
    let mut params = Params::default();
    let tc = qi(&table.config.tenant_column);
    let sql = format!(
        "SELECT CAST({tc} AS TEXT), CAST(count(*) AS TEXT) FROM {} WHERE {} GROUP BY {tc}",
        qi(&table.name),
        due(db.dialect(), table, sel, true, &mut params)
    );
    let rows = db.query_p(&sql, &params).map_err(|e| e.on(&table.name))?;
    Ok(rows
        .iter()
        .filter(|r| r[0].as_ref().is_some_and(|t| tenants.contains(t)))
        .filter_map(|r| r[1].as_deref().and_then(|n| n.parse::<u64>().ok()))
        .sum())
}

/// Up to `n` pending blob deletions after outbox id `after`: (outbox id, tenant, blob key).
pub fn outbox_next(
    db: &mut Db,
    after: i64,
    n: u64,
) -> Result<Vec<(i64, String, String)>, SourceError> {
    let sql = format!(
        "SELECT CAST(id AS TEXT), tenant, blob_key FROM {OUTBOX} WHERE id > {after} ORDER BY id LIMIT {n}"
    );
    Ok(db
        .query(&sql)
        .map_err(|e| e.on(OUTBOX))?
        .into_iter()
        .filter_map(|r| Some((r[0].as_deref()?.parse().ok()?, r[1].clone()?, r[2].clone()?)))
        .collect())
}

/// Forget exactly these outbox entries (their blobs are verified gone, or still referenced).
pub fn outbox_done(db: &mut Db, ids: &[i64]) -> Result<(), SourceError> {
    if ids.is_empty() {
        return Ok(());
    }
    let list = ids
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    db.query(&format!("DELETE FROM {OUTBOX} WHERE id IN ({list})"))
        .map_err(|e| e.on(OUTBOX))
        .map(|_| ())
}

/// Which of `keys` a row of the data map still references (a blob shared by several rows, or
/// referenced again since it was enqueued, must stay).
pub fn referenced_blobs(
    db: &mut Db,
    dm: &DataMap,
    keys: &[String],
) -> Result<std::collections::BTreeSet<String>, SourceError> {
    let mut out = std::collections::BTreeSet::new();
    if keys.is_empty() {
        return Ok(out);
    }
    let list = keys.iter().map(|k| lit(k)).collect::<Vec<_>>().join(", ");
    for t in &dm.tables {
        let Some(b) = &t.config.blob_column else {
            continue;
        };
        let sql = format!(
            "SELECT DISTINCT CAST({0} AS TEXT) FROM {1} WHERE CAST({0} AS TEXT) IN ({list})",
            qi(b),
            qi(&t.name)
        );
        for r in db.query(&sql).map_err(|e| e.on(&t.name))? {
            if let Some(k) = &r[0] {
                out.insert(k.clone());
            }
        }
    }
    Ok(out)
}

/// Is the primary key of `table` an integer column (so batches may walk it in windows)?
pub fn pk_is_integer(db: &mut Db, table: &Table) -> Result<bool, SourceError> {
    let sql = match db.dialect() {
        Dialect::Postgres => format!(
            "SELECT data_type FROM information_schema.columns WHERE table_name = {} AND column_name = {} AND table_schema = ANY (current_schemas(false)) LIMIT 1",
            lit(&table.name),
            lit(&table.config.primary_key)
        ),
        Dialect::Sqlite => format!(
            "SELECT type FROM pragma_table_info({}) WHERE name = {}",
            lit(&table.name),
            lit(&table.config.primary_key)
        ),
    };
    let r = db.query(&sql).map_err(|e| e.on(&table.name))?;
    let ty = r
        .first()
        .and_then(|r| r[0].clone())
        .unwrap_or_default()
        .to_ascii_lowercase();
    Ok(matches!(ty.as_str(), "smallint" | "integer" | "bigint") || ty.contains("int"))
}

/// Does the database itself keep `table`'s primary key unique and non-NULL (a PostgreSQL
/// unique index on exactly that NOT NULL column; SQLite's `INTEGER PRIMARY KEY`, the rowid)?
/// Otherwise preflight counts NULL and repeated keys.
pub fn pk_is_enforced(db: &mut Db, table: &Table) -> Result<bool, SourceError> {
    let sql = match db.dialect() {
        Dialect::Postgres => format!(
            "SELECT count(*) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
             WHERE i.indrelid = to_regclass({}) AND i.indisunique AND i.indnatts = 1 AND a.attname = {} AND a.attnotnull",
            lit(&qi(&table.name)),
            lit(&table.config.primary_key)
        ),
        Dialect::Sqlite => format!(
            "SELECT count(*) FROM pragma_table_info({0}) WHERE pk > 0 AND name = {1} AND upper(type) = 'INTEGER' \
             AND (SELECT count(*) FROM pragma_table_info({0}) WHERE pk > 0) = 1",
            lit(&table.name),
            lit(&table.config.primary_key)
        ),
    };
    let r = db.query(&sql).map_err(|e| e.on(&table.name))?;
    Ok(r.first().and_then(|r| r[0].as_deref()) == Some("1"))
}

/// SQLite: rows of `table` whose `anchor` is not canonical UTC text (they would compare wrongly
/// with the cutoff: numbers sort below all text, offsets compare as text).
pub fn non_canonical_anchors(db: &mut Db, table: &Table, anchor: &str) -> Result<u64, SourceError> {
    if db.dialect() != Dialect::Sqlite {
        return Ok(0);
    }
    let sql = format!(
        "SELECT count(*) FROM {} WHERE {} IS NOT NULL AND NOT {}",
        qi(&table.name),
        qi(anchor),
        sqlite_canonical(&qi(anchor))
    );
    let r = db.query(&sql).map_err(|e| e.on(&table.name))?;
    Ok(r[0][0].as_deref().and_then(|s| s.parse().ok()).unwrap_or(0))
}

/// The data-map table a plan names (plans are built from the data map, so it exists).
pub fn table<'a>(dm: &'a DataMap, name: &str) -> &'a Table {
    dm.table(name).expect("plans name data-map tables")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_statement_is_not_quoted_in_the_error() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE m (phone TEXT)").unwrap();
        let e = sqlite_rows(
            &c,
            "SELECT count(*) FROM m WHERE phon IN ('+6281234567890')",
        )
        .unwrap_err();
        assert!(e.message.contains("phon"), "{}", e.message);
        assert!(!e.message.contains("6281234567890"), "{}", e.message);
    }
}
