//! SQLite source (the embedded default). Column types come from the declared type, by SQLite's
//! affinity rules plus the names applications use for booleans, dates and timestamps.
//! Timestamps may be stored as text (`YYYY-MM-DD HH:MM:SS[.ffffff][Z|±HH:MM]`, `T` or space)
//! or as integer Unix seconds; they become UTC microseconds.

use std::path::Path;
use std::sync::mpsc::SyncSender;

use arrow::datatypes::SchemaRef;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use super::fanout::{Builder, FanOut};
use super::{ColType, Column, ScanEvent, ScanPlan, SourceError, TenantRow};
use crate::datamap::TenantsTable;
use crate::util::{days_from_civil, quote_ident};

pub struct SqliteSource {
    conn: Connection,
}

fn open_ro(path: &Path) -> Result<Connection, SourceError> {
    if !path.exists() {
        return Err(SourceError::Open {
            url: format!("sqlite://{}", path.display()),
            message: "file not found".into(),
            fix: "check source.url in lethe.toml (relative paths are relative to lethe.toml)"
                .into(),
        });
    }
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| SourceError::Open {
        url: format!("sqlite://{}", path.display()),
        message: e.to_string(),
        fix: "check that the file is an SQLite database".into(),
    })?;
    c.busy_timeout(std::time::Duration::from_secs(30)).ok();
    Ok(c)
}

/// The Arrow type of a declared SQLite column type.
pub fn col_type(table: &str, c: &Column) -> Result<ColType, SourceError> {
    let d = c.declared.to_ascii_uppercase();
    let t = if d.contains("BOOL") {
        ColType::Bool
    } else if d.contains("TIMESTAMP") || d.contains("DATETIME") {
        ColType::Timestamp
    } else if d == "DATE" {
        ColType::Date
    } else if d.contains("INT") {
        ColType::Int64
    } else if d.contains("CHAR") || d.contains("CLOB") || d.contains("TEXT") {
        ColType::Utf8
    } else if d.contains("BLOB") || d.is_empty() {
        ColType::Binary
    } else if d.contains("REAL") || d.contains("FLOA") || d.contains("DOUB") {
        ColType::Float64
    } else {
        return Err(SourceError::UnsupportedType {
            table: table.into(),
            column: c.name.clone(),
            declared: c.declared.clone(),
        });
    };
    Ok(t)
}

impl SqliteSource {
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        Ok(SqliteSource {
            conn: open_ro(path)?,
        })
    }

    pub fn columns(&self, table: &str) -> Result<Option<Vec<Column>>, SourceError> {
        columns(&self.conn, table)
    }

    pub fn tenant_rows(&self, t: &TenantsTable) -> Result<Vec<TenantRow>, SourceError> {
        let q = |e: rusqlite::Error| SourceError::Query {
            table: t.table.clone(),
            message: e.to_string(),
        };
        let sql = format!(
            "SELECT {}, {}, {}, {} FROM {} ORDER BY 1",
            quote_ident(&t.id_column),
            quote_ident(&t.status_column),
            quote_ident(&t.cancelled_at_column),
            t.time_zone_column
                .as_deref()
                .map_or("NULL".into(), quote_ident),
            quote_ident(&t.table)
        );
        let mut stmt = self.conn.prepare(&sql).map_err(q)?;
        let mut rows = stmt.query([]).map_err(q)?;
        let mut out = Vec::new();
        let text = |v: ValueRef<'_>| match v {
            ValueRef::Text(b) => String::from_utf8_lossy(b).into_owned(),
            ValueRef::Integer(i) => i.to_string(),
            _ => String::new(),
        };
        while let Some(r) = rows.next().map_err(q)? {
            let cancelled = ts_micros(r.get_ref(2).map_err(q)?).flatten();
            let zone = match r.get_ref(3).map_err(q)? {
                ValueRef::Null => None,
                v => Some(text(v)),
            };
            out.push((
                text(r.get_ref(0).map_err(q)?),
                text(r.get_ref(1).map_err(q)?),
                cancelled,
                zone,
            ));
        }
        Ok(out)
    }
}

/// One sequential pass per table, fanning rows out to their tenants. On a table where
/// tenants' rows interleave (the usual case), this is several times faster than one
/// index-driven query per tenant, which reads most pages once per tenant.
pub fn scan(path: &Path, plan: &ScanPlan, tx: &SyncSender<ScanEvent>) -> Result<(), SourceError> {
    let conn = open_ro(path)?;
    let q = |e: rusqlite::Error| SourceError::Query {
        table: String::new(),
        message: e.to_string(),
    };
    conn.execute_batch("BEGIN").map_err(q)?;
    // The read snapshot starts at the first read; take it now, for every table at once.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
        .map_err(q)?;
    let mut failed = vec![false; plan.tenants.len()];
    for table in &plan.tables {
        scan_table(
            &conn,
            &table.name,
            &table.tenant_column,
            plan,
            &mut failed,
            tx,
        )?;
    }
    conn.execute_batch("COMMIT").ok();
    Ok(())
}

fn columns(conn: &Connection, table: &str) -> Result<Option<Vec<Column>>, SourceError> {
    let q = |e: rusqlite::Error| SourceError::Query {
        table: table.into(),
        message: e.to_string(),
    };
    let mut stmt = conn
        .prepare(&format!("PRAGMA table_info({})", quote_ident(table)))
        .map_err(q)?;
    let cols = stmt
        .query_map([], |r| {
            let notnull: i64 = r.get(3)?;
            let pk: i64 = r.get(5)?;
            Ok(Column {
                name: r.get(1)?,
                declared: r.get(2)?,
                nullable: notnull == 0 && pk == 0,
            })
        })
        .map_err(q)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(q)?;
    Ok(if cols.is_empty() { None } else { Some(cols) })
}

/// Append one SQLite value; `Err(found)` names the storage class that did not fit.
#[inline]
fn append(b: &mut Builder, v: ValueRef<'_>) -> Result<(), &'static str> {
    let found = |v: ValueRef<'_>| match v {
        ValueRef::Null => "NULL",
        ValueRef::Integer(_) => "an integer",
        ValueRef::Real(_) => "a real",
        ValueRef::Text(_) => "text",
        ValueRef::Blob(_) => "a blob",
    };
    match (b, v) {
        (Builder::Timestamp(b), v) => match ts_micros(v) {
            Some(x) => b.append_option(x),
            None => return Err(found(v)),
        },
        (b, ValueRef::Null) => b.append_null(),
        (Builder::Int64(b), ValueRef::Integer(i)) => b.append_value(i),
        (Builder::Float64(b), ValueRef::Real(f)) => b.append_value(f),
        (Builder::Float64(b), ValueRef::Integer(i)) => b.append_value(i as f64),
        (Builder::Utf8(b), ValueRef::Text(t)) => {
            b.append_value(simdutf8::basic::from_utf8(t).map_err(|_| "invalid UTF-8 text")?)
        }
        (Builder::Binary(b), ValueRef::Blob(x) | ValueRef::Text(x)) => b.append_value(x),
        (Builder::Bool(b), ValueRef::Integer(i @ (0 | 1))) => b.append_value(i == 1),
        (Builder::Date(b), ValueRef::Text(t)) => {
            b.append_value(parse_date(t).ok_or("text that is not YYYY-MM-DD")? as i32)
        }
        (_, v) => return Err(found(v)),
    }
    Ok(())
}

/// The Arrow schema of a source table.
pub fn arrow_schema(
    table: &str,
    cols: &[Column],
) -> Result<(SchemaRef, Vec<ColType>), SourceError> {
    let types = cols
        .iter()
        .map(|c| col_type(table, c))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((super::arrow_schema_of(cols, &types), types))
}

fn scan_table(
    conn: &Connection,
    table: &str,
    tenant_col: &str,
    plan: &ScanPlan,
    failed: &mut [bool],
    tx: &SyncSender<ScanEvent>,
) -> Result<(), SourceError> {
    let q = |e: rusqlite::Error| SourceError::Query {
        table: table.into(),
        message: e.to_string(),
    };
    let cols = columns(conn, table)?.ok_or_else(|| SourceError::NoTable {
        table: table.into(),
    })?;
    let (schema, types) = arrow_schema(table, &cols)?;
    let tcol = cols
        .iter()
        .position(|c| c.name == tenant_col)
        .ok_or_else(|| SourceError::Query {
            table: table.into(),
            message: format!("tenant column {tenant_col} does not exist"),
        })?;
    let mut fan = FanOut::begin(table, &cols, schema, types, plan, failed, tx)?;
    let select: Vec<String> = cols.iter().map(|c| quote_ident(&c.name)).collect();
    let sql = format!("SELECT {} FROM {}", select.join(", "), quote_ident(table));
    let mut stmt = conn.prepare(&sql).map_err(q)?;
    let mut rows = stmt.query([]).map_err(q)?;
    let mut int_key = String::new();
    while let Some(r) = rows.next().map_err(q)? {
        let t = match r.get_ref(tcol).map_err(q)? {
            ValueRef::Text(b) => fan.route(b),
            ValueRef::Integer(i) => {
                int_key.clear();
                int_key.push_str(&i.to_string());
                fan.route(int_key.as_bytes())
            }
            _ => None,
        };
        let Some(t) = t else { continue };
        let mut bad = None;
        for (i, b) in fan.builders(t).iter_mut().enumerate() {
            if let Err(found) = append(b, r.get_ref(i).map_err(q)?) {
                bad = Some((i, b.expected(), found));
                break;
            }
        }
        match bad {
            Some((col, expected, found)) => fan.fail(t, col, expected, found)?,
            None => fan.row_done(t)?,
        }
    }
    fan.end()
}

/// A timestamp value as UTC microseconds: `Some(None)` for NULL, `None` if it is not a timestamp.
pub fn ts_micros(v: ValueRef<'_>) -> Option<Option<i64>> {
    match v {
        ValueRef::Null => Some(None),
        ValueRef::Integer(s) => Some(Some(s.checked_mul(1_000_000)?)),
        ValueRef::Text(t) => parse_timestamp(t).map(Some),
        _ => None,
    }
}

fn digits(b: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as u32;
    }
    Some(v)
}

fn parse_date(b: &[u8]) -> Option<i64> {
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y as i64, m, d))
}

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The anchor rule of retention on SQLite: canonical UTC text `YYYY-MM-DD HH:MM:SS[.f…]`
/// (space separator, no offset, digits only after the dot) that [`parse_timestamp`] — the
/// snapshot reader's rule — accepts as a real instant. Such text compares with a cutoff in
/// the same form exactly as the instants compare. `None` for anything else.
pub fn canonical_instant(b: &[u8]) -> Option<i64> {
    if b.len() < 19 || b[10] != b' ' {
        return None;
    }
    match &b[19..] {
        [] => {}
        [b'.', frac @ ..] if !frac.is_empty() && frac.iter().all(u8::is_ascii_digit) => {}
        _ => return None,
    }
    parse_timestamp(b)
}

/// `YYYY-MM-DD[ T]HH:MM:SS[.f…][Z|±HH:MM]` → UTC microseconds.
pub fn parse_timestamp(b: &[u8]) -> Option<i64> {
    if b.len() < 19 || !(b[10] == b' ' || b[10] == b'T') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let days = parse_date(&b[..10])?;
    let (h, mi, s) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    if h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut rest = &b[19..];
    let mut micros = 0i64;
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        let mut f = 0i64;
        for (i, &c) in frac[..n].iter().enumerate().take(6) {
            f += (c - b'0') as i64 * 10i64.pow(5 - i as u32);
        }
        micros = f;
        rest = &frac[n..];
    }
    let offset_s: i64 = match rest {
        b"" | b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), hh1, hh2, b':', mm1, mm2] => {
            let off = (digits(&[*hh1, *hh2])? * 3600 + digits(&[*mm1, *mm2])? * 60) as i64;
            if *sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    let secs = days * 86_400 + (h * 3600 + mi * 60 + s) as i64 - offset_s;
    Some(secs * 1_000_000 + micros)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    #[test]
    fn timestamps_parse_like_chrono() {
        let cases = [
            ("2026-11-22 20:50:11", "2026-11-22T20:50:11Z"),
            ("2026-11-22T20:50:11Z", "2026-11-22T20:50:11Z"),
            ("2026-11-22 20:50:11.25", "2026-11-22T20:50:11.250Z"),
            ("2026-11-23 03:50:11+07:00", "2026-11-22T20:50:11Z"),
            ("2024-02-29 00:00:00", "2024-02-29T00:00:00Z"),
        ];
        for (input, want) in cases {
            let want = DateTime::parse_from_rfc3339(want)
                .unwrap()
                .timestamp_micros();
            assert_eq!(parse_timestamp(input.as_bytes()), Some(want), "{input}");
        }
        for bad in [
            "2026-11-22",
            "2026-13-01 00:00:00",
            "2025-02-29 00:00:00",
            "2026-11-22 20:50:11 UTC",
            "x026-11-22 20:50:11",
        ] {
            assert_eq!(parse_timestamp(bad.as_bytes()), None, "{bad}");
        }
    }
}
