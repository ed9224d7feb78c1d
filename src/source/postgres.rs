//! PostgreSQL source: binary `COPY … TO STDOUT (FORMAT binary)` decoded straight into Arrow
//! builders — no text round trip, no whole-table buffering.
//!
//! Consistency: every table is read inside ONE `REPEATABLE READ READ ONLY` transaction, so
//! each tenant's snapshot (indeed every tenant's) is consistent across tables. Each table is
//! copied once and fanned out to its tenants ([`super::fanout`]); with a tenant selection the
//! COPY carries `WHERE tenant_column IN (…)`. (One `COPY … WHERE tenant = …` per tenant would
//! scan an interleaved table once per tenant.)
//!
//! Types: int2/4/8, float4/8, numeric(p,s) (Decimal128; unconstrained numeric as
//! Decimal128(38, 9), refusing values that would lose digits), text/varchar/char,
//! json/jsonb (Utf8), bool, date, timestamp (naive µs), timestamptz (UTC µs), uuid
//! (FixedSizeBinary(16)), bytea. Anything else is an error naming table and column.
//!
//! The password (in the URL or `PGPASSWORD`) never appears in logs or errors: URLs are shown
//! redacted.
//!
//! Every connection lethe makes to PostgreSQL (snapshot scans, `check`, retention) goes through
//! [`config`] and [`connect`], so all of them honour the URL's `sslmode` / `sslrootcert`
//! (libpq's meanings, default `prefer`; see [`tls`]).

use std::sync::mpsc::SyncSender;

use bytes::{Buf, Bytes};
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::runtime::Handle;
use tokio_postgres::{Client, NoTls};

pub mod tls;
use tls::{SslMode, TlsSettings};

use super::fanout::{Builder, FanOut};
use super::{ColType, Column, ScanEvent, ScanPlan, SourceError, TenantRow};
use crate::datamap::TenantsTable;
use crate::util::quote_ident;

/// Microseconds and days between 1970-01-01 and PostgreSQL's epoch 2000-01-01.
const PG_EPOCH_US: i64 = 946_684_800_000_000;
const PG_EPOCH_DAYS: i32 = 10_957;

pub struct PgSource {
    handle: Handle,
    client: Client,
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`; a `password=` parameter
/// is masked too. Works on URLs `url` cannot parse (several hosts: `h1:5432,h2:5432`).
pub fn redact(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let mut out = match head.split_once("://") {
        // The userinfo ends at the last '@' (a password may hold a raw '/' or '@'; masking
        // too much beats showing a piece of it).
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((userinfo, hosts_and_path)) => {
                let user = match userinfo.split_once(':') {
                    Some((user, _)) => format!("{user}:***"),
                    None => userinfo.to_string(),
                };
                format!("{scheme}://{user}@{hosts_and_path}")
            }
            None => head.to_string(),
        },
        None => head.to_string(),
    };
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => p.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

/// A PostgreSQL error with the server's message (tokio-postgres prints only "db error").
pub fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// Run a future to completion from synchronous code inside the multi-threaded runtime.
fn block<F: std::future::Future>(h: &Handle, f: F) -> F::Output {
    tokio::task::block_in_place(|| h.block_on(f))
}

/// A parsed connection: tokio-postgres' settings and the TLS settings it cannot express
/// (`verify-ca`, `verify-full`, `sslrootcert`).
#[derive(Clone)]
pub struct PgConfig {
    pub pg: tokio_postgres::Config,
    pub tls: TlsSettings,
}

/// Take libpq's TLS parameters out of a URL's query (tokio-postgres refuses `verify-*` and
/// does not know `sslrootcert`): (the rest of the URL, sslmode, sslrootcert).
fn split_tls_params(url: &str) -> (String, Option<String>, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), None, None);
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let (mut mode, mut root, mut kept) = (None, None, Vec::new());
    for p in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        match decode(k).as_str() {
            "sslmode" => mode = Some(decode(v)),
            "sslrootcert" => root = Some(decode(v)),
            _ => kept.push(p),
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, mode, root)
}

/// Parse a `postgres://` URL into a connection config; the password comes from the URL or
/// `PGPASSWORD`, `sslmode` / `sslrootcert` from the URL or `PGSSLMODE` / `PGSSLROOTCERT`.
/// Errors show the URL redacted.
pub fn config(url: &str) -> Result<PgConfig, SourceError> {
    config_with_env(url, |k| std::env::var(k).ok())
}

fn config_with_env(
    url: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<PgConfig, SourceError> {
    let open_err = |message: String, fix: &str| SourceError::Open {
        url: redact(url),
        message,
        fix: fix.into(),
    };
    let (rest, mode, root) = split_tls_params(url);
    let mut config: tokio_postgres::Config = rest.parse().map_err(|e: tokio_postgres::Error| {
        open_err(
            e.to_string(),
            "write postgres://user@host:5432/database (password in PGPASSWORD)",
        )
    })?;
    if config.get_password().is_none()
        && let Some(p) = env("PGPASSWORD")
    {
        config.password(p);
    }
    let tls = TlsSettings::resolve(
        mode.or_else(|| env("PGSSLMODE")).as_deref(),
        root.or_else(|| env("PGSSLROOTCERT")).as_deref(),
    )
    .map_err(|m| {
        open_err(
            m,
            "write sslmode=disable, prefer, require, verify-ca or verify-full (libpq's meanings) and, for verify-*, sslrootcert=/path/to/root.crt if the server's authority is not a public one",
        )
    })?;
    config.ssl_mode(match tls.mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    });
    config.application_name("lethe");
    Ok(PgConfig { pg: config, tls })
}

/// Drive a new connection by a task on the current runtime.
fn spawn_connection<S, T>(
    r: Result<(Client, tokio_postgres::Connection<S, T>), tokio_postgres::Error>,
) -> Result<Client, tokio_postgres::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = r?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

/// Connect with `config` (TLS as its `sslmode` says); the connection is driven by a task on
/// the current runtime. `url` is for messages (shown redacted).
pub async fn connect(config: &PgConfig, url: &str) -> Result<Client, SourceError> {
    let open_err = |message: String, fix: String| SourceError::Open {
        url: redact(url),
        message,
        fix,
    };
    let connector = config.tls.connector().map_err(|e| match e {
        tls::TlsSetupError::RootCert { path, message } => open_err(
            format!("cannot use sslrootcert {}: {message}", path.display()),
            "point sslrootcert at a readable PEM file of the CA certificates to trust".into(),
        ),
        tls::TlsSetupError::Rustls(m) => open_err(
            format!("cannot set up TLS: {m}"),
            "use sslmode=disable to connect without TLS".into(),
        ),
    })?;
    let result = match connector {
        None => spawn_connection(config.pg.connect(NoTls).await),
        Some(connector) => match spawn_connection(config.pg.connect(connector).await) {
            // libpq's `prefer`: when TLS fails, try again without it.
            Err(e) if config.tls.mode == SslMode::Prefer && is_tls_failure(&e) => {
                tracing::warn!(url = %redact(url), error = %e, "TLS failed; sslmode=prefer connects unencrypted");
                let mut plain = config.pg.clone();
                plain.ssl_mode(tokio_postgres::config::SslMode::Disable);
                spawn_connection(plain.connect(NoTls).await)
            }
            r => r,
        },
    };
    result.map_err(|e| {
        if let Some(r) = tls::rustls_error(&e) {
            let (message, fix) = tls::explain(r, &config.tls, &first_host(&config.pg));
            open_err(message, fix)
        } else if e.to_string().contains("server does not support TLS") {
            open_err(
                format!(
                    "sslmode={}: the server does not offer TLS",
                    config.tls.mode.as_str()
                ),
                "turn TLS on in the server (ssl = on, ssl_cert_file, ssl_key_file in postgresql.conf) or, on a trusted network only, use sslmode=prefer".into(),
            )
        } else {
            open_err(
                pg_error(&e),
                "check the host, port, database, user and password (PGPASSWORD)".into(),
            )
        }
    })
}

fn is_tls_failure(e: &tokio_postgres::Error) -> bool {
    tls::rustls_error(e).is_some() || e.to_string().contains("TLS")
}

/// The host name TLS checks the certificate against (the first host of the URL).
fn first_host(c: &tokio_postgres::Config) -> String {
    match c.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    }
}

/// The TLS version of this session as the server sees it (`pg_stat_ssl`), or `None` when the
/// session is not encrypted.
pub async fn session_tls(client: &Client) -> Result<Option<String>, SourceError> {
    let row = client
        .query_one(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| SourceError::Query {
            table: "pg_stat_ssl".into(),
            message: pg_error(&e),
        })?;
    let ssl: bool = row.get(0);
    Ok(ssl.then(|| row.get::<_, Option<String>>(1).unwrap_or_default()))
}

impl PgSource {
    pub fn open(url: &str) -> Result<Self, SourceError> {
        let handle = Handle::try_current().map_err(|_| SourceError::Open {
            url: redact(url),
            message: "no async runtime".into(),
            fix: "call from within lethe's runtime".into(),
        })?;
        let config = config(url)?;
        let client = block(&handle, connect(&config, url))?;
        Ok(PgSource { handle, client })
    }

    fn q(table: &str) -> impl Fn(tokio_postgres::Error) -> SourceError + '_ {
        move |e| SourceError::Query {
            table: table.into(),
            message: e.to_string(),
        }
    }

    pub fn columns(&self, table: &str) -> Result<Option<Vec<Column>>, SourceError> {
        block(&self.handle, columns(&self.client, table))
    }

    pub fn tenant_rows(&self, t: &TenantsTable) -> Result<Vec<TenantRow>, SourceError> {
        let sql = format!(
            "SELECT {}::text, {}::text, (extract(epoch from {}) * 1000000)::int8, {}::text FROM {} ORDER BY 1",
            quote_ident(&t.id_column),
            quote_ident(&t.status_column),
            quote_ident(&t.cancelled_at_column),
            t.time_zone_column
                .as_deref()
                .map_or("NULL".into(), quote_ident),
            quote_ident(&t.table)
        );
        let rows = block(&self.handle, self.client.query(&sql, &[])).map_err(Self::q(&t.table))?;
        Ok(rows
            .iter()
            .map(|r| {
                let (id, status): (Option<String>, Option<String>) = (r.get(0), r.get(1));
                (
                    id.unwrap_or_default(),
                    status.unwrap_or_default(),
                    r.get(2),
                    r.get(3),
                )
            })
            .collect())
    }
}

/// Read the plan on a connection of its own (blocking: call from a blocking thread). The
/// COPY streams arrive one row per message; the connection is driven by a runtime on this
/// same thread, so each message is decoded where it lands instead of being handed between
/// threads.
pub fn scan(url: &str, plan: &ScanPlan, tx: &SyncSender<ScanEvent>) -> Result<(), SourceError> {
    let config = config(url)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SourceError::Query {
            table: String::new(),
            message: e.to_string(),
        })?;
    rt.block_on(async {
        let client = connect(&config, url).await?;
        let q = PgSource::q("");
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(q)?;
        let mut failed = vec![false; plan.tenants.len()];
        for table in &plan.tables {
            copy_table(
                &client,
                &table.name,
                &table.tenant_column,
                plan,
                &mut failed,
                tx,
            )
            .await?;
        }
        client
            .batch_execute("COMMIT")
            .await
            .map_err(PgSource::q(""))
    })
}

async fn columns(client: &Client, table: &str) -> Result<Option<Vec<Column>>, SourceError> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull
               FROM pg_attribute a
              WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum",
            &[&quote_ident(table)],
        )
        .await
        .map_err(|e| SourceError::Query {
            table: table.into(),
            message: e.to_string(),
        })?;
    let cols: Vec<Column> = rows
        .iter()
        .map(|r| Column {
            name: r.get(0),
            declared: r.get(1),
            nullable: r.get(2),
        })
        .collect();
    Ok(if cols.is_empty() { None } else { Some(cols) })
}

/// The Arrow type of a PostgreSQL column, from `format_type`.
pub fn col_type(table: &str, c: &Column) -> Result<ColType, SourceError> {
    let d = c.declared.as_str();
    let unsupported = || SourceError::UnsupportedType {
        table: table.into(),
        column: c.name.clone(),
        declared: c.declared.clone(),
    };
    Ok(match d {
        "smallint" => ColType::Int16,
        "integer" => ColType::Int32,
        "bigint" => ColType::Int64,
        "real" => ColType::Float32,
        "double precision" => ColType::Float64,
        "text" | "json" => ColType::Utf8,
        "jsonb" => ColType::Jsonb,
        "boolean" => ColType::Bool,
        "date" => ColType::Date,
        "timestamp without time zone" => ColType::TimestampNaive,
        "timestamp with time zone" => ColType::Timestamp,
        "uuid" => ColType::Uuid,
        "bytea" => ColType::Binary,
        "numeric" => ColType::Decimal(38, 9),
        _ if d.starts_with("character varying")
            || d.starts_with("character(")
            || d == "character" =>
        {
            ColType::Utf8
        }
        _ if d.starts_with("timestamp(") && d.ends_with("without time zone") => {
            ColType::TimestampNaive
        }
        _ if d.starts_with("timestamp(") && d.ends_with("with time zone") => ColType::Timestamp,
        _ if d.starts_with("numeric(") => {
            let inner = d.trim_start_matches("numeric(").trim_end_matches(')');
            let (p, s) = inner.split_once(',').unwrap_or((inner, "0"));
            let (p, s): (u8, i8) = (
                p.trim().parse().map_err(|_| unsupported())?,
                s.trim().parse().map_err(|_| unsupported())?,
            );
            if p > 38 {
                return Err(unsupported());
            }
            ColType::Decimal(p, s)
        }
        _ => return Err(unsupported()),
    })
}

/// The SQL literal of a tenant id (ids are checked slugs; quoting is belt and braces).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

async fn copy_table(
    client: &Client,
    table: &str,
    tenant_col: &str,
    plan: &ScanPlan,
    failed: &mut [bool],
    tx: &SyncSender<ScanEvent>,
) -> Result<(), SourceError> {
    let q = |e: tokio_postgres::Error| SourceError::Query {
        table: table.into(),
        message: pg_error(&e),
    };
    let cols = columns(client, table)
        .await?
        .ok_or_else(|| SourceError::NoTable {
            table: table.into(),
        })?;
    let types = cols
        .iter()
        .map(|c| col_type(table, c))
        .collect::<Result<Vec<_>, _>>()?;
    let schema = super::arrow_schema_of(&cols, &types);
    let tcol = cols
        .iter()
        .position(|c| c.name == tenant_col)
        .ok_or_else(|| SourceError::Query {
            table: table.into(),
            message: format!("tenant column {tenant_col} does not exist"),
        })?;
    let tenant_is_int = matches!(
        types[tcol],
        ColType::Int16 | ColType::Int32 | ColType::Int64
    );
    let select: Vec<String> = cols.iter().map(|c| quote_ident(&c.name)).collect();
    let mut sql = format!(
        "COPY (SELECT {} FROM {}",
        select.join(", "),
        quote_ident(table)
    );
    if plan.selective {
        let ids: Vec<String> = plan.tenants.iter().map(|t| literal(t)).collect();
        sql.push_str(&format!(
            " WHERE {}::text IN ({})",
            quote_ident(tenant_col),
            ids.join(", ")
        ));
    }
    sql.push_str(") TO STDOUT (FORMAT binary)");

    let mut fan = FanOut::begin(table, &cols, schema, types.clone(), plan, failed, tx)?;
    let stream = client.copy_out(sql.as_str()).await.map_err(q)?;
    futures::pin_mut!(stream);
    let mut d = Decoder {
        table,
        types: &types,
        tcol,
        tenant_is_int,
        key: String::new(),
        fields: vec![None; cols.len()],
    };
    // Bytes of an incomplete tuple (or the header) carried over to the next message.
    let mut buf: Vec<u8> = Vec::new();
    let mut header_done = false;
    loop {
        let chunk: Option<Bytes> = stream.next().await.transpose().map_err(q)?;
        let Some(c) = chunk else {
            return Err(d.bad_format("ended without a trailer"));
        };
        // Fast path: PostgreSQL sends one tuple per message; decode it where it lies.
        if header_done && buf.is_empty() {
            let (used, end) = d.tuples(&c, &mut fan)?;
            if end {
                return fan.end();
            }
            buf.extend_from_slice(&c[used..]);
            continue;
        }
        buf.extend_from_slice(&c);
        let mut pos = 0;
        if !header_done {
            // "PGCOPY\n\xff\r\n\0", flags (4), header extension length (4) + extension.
            if buf.len() < 19 {
                continue;
            }
            if &buf[..11] != b"PGCOPY\n\xff\r\n\0" {
                return Err(d.bad_format("bad signature"));
            }
            let ext = u32::from_be_bytes(buf[15..19].try_into().unwrap()) as usize;
            if buf.len() < 19 + ext {
                continue;
            }
            pos = 19 + ext;
            header_done = true;
        }
        let (used, end) = d.tuples(&buf[pos..], &mut fan)?;
        if end {
            return fan.end();
        }
        buf.drain(..pos + used);
    }
}

/// Decodes binary COPY tuples into a table's fan-out.
struct Decoder<'a> {
    table: &'a str,
    types: &'a [ColType],
    tcol: usize,
    tenant_is_int: bool,
    key: String,
    /// (offset, length) of each field of the current tuple; `None` for NULL.
    fields: Vec<Option<(usize, usize)>>,
}

impl Decoder<'_> {
    fn bad_format(&self, m: &str) -> SourceError {
        SourceError::Query {
            table: self.table.into(),
            message: format!("binary COPY stream: {m}"),
        }
    }

    /// Decode the whole tuples at the start of `data`: (bytes used, trailer reached).
    fn tuples(&mut self, data: &[u8], fan: &mut FanOut<'_>) -> Result<(usize, bool), SourceError> {
        let mut pos = 0;
        loop {
            let mut p = pos;
            let Some(n) = data.get(p..p + 2).map(|b| i16::from_be_bytes([b[0], b[1]])) else {
                return Ok((pos, false));
            };
            p += 2;
            if n == -1 {
                return Ok((p, true));
            }
            if n as usize != self.fields.len() {
                return Err(self.bad_format("unexpected field count"));
            }
            // Field count, then per field a length (-1 for NULL) and the bytes.
            for f in self.fields.iter_mut() {
                let Some(l) = data
                    .get(p..p + 4)
                    .map(|b| i32::from_be_bytes(b.try_into().unwrap()))
                else {
                    return Ok((pos, false));
                };
                p += 4;
                if l < 0 {
                    *f = None;
                } else {
                    let l = l as usize;
                    if data.len() < p + l {
                        return Ok((pos, false));
                    }
                    *f = Some((p, l));
                    p += l;
                }
            }
            pos = p;
            let fields = &self.fields;
            let field = |i: usize| fields[i].map(|(s, l)| &data[s..s + l]);
            let tenant = match field(self.tcol) {
                Some(b) if self.tenant_is_int => {
                    self.key.clear();
                    self.key.push_str(&be_int(b).to_string());
                    fan.route(self.key.as_bytes())
                }
                Some(b) => fan.route(b),
                None => fan.route(b""),
            };
            let Some(t) = tenant else { continue };
            let mut bad = None;
            for (i, b) in fan.builders(t).iter_mut().enumerate() {
                if let Err(found) = append(b, self.types[i], field(i)) {
                    bad = Some((i, b.expected(), found));
                    break;
                }
            }
            match bad {
                Some((col, expected, found)) => fan.fail(t, col, expected, found)?,
                None => fan.row_done(t)?,
            }
        }
    }
}

fn be_int(b: &[u8]) -> i64 {
    match b.len() {
        2 => i16::from_be_bytes([b[0], b[1]]) as i64,
        4 => i32::from_be_bytes(b.try_into().unwrap()) as i64,
        8 => i64::from_be_bytes(b.try_into().unwrap()),
        _ => 0,
    }
}

/// Append one binary-COPY field; `Err` describes what did not fit (never the value).
#[inline]
fn append(b: &mut Builder, ty: ColType, v: Option<&[u8]>) -> Result<(), &'static str> {
    let Some(mut v) = v else {
        b.append_null();
        return Ok(());
    };
    let len = |n: usize, v: &[u8]| {
        if v.len() == n {
            Ok(())
        } else {
            Err("a value of the wrong width")
        }
    };
    match b {
        Builder::Int16(b) => {
            len(2, v)?;
            b.append_value(v.get_i16())
        }
        Builder::Int32(b) => {
            len(4, v)?;
            b.append_value(v.get_i32())
        }
        Builder::Int64(b) => {
            len(8, v)?;
            b.append_value(v.get_i64())
        }
        Builder::Float32(b) => {
            len(4, v)?;
            b.append_value(v.get_f32())
        }
        Builder::Float64(b) => {
            len(8, v)?;
            b.append_value(v.get_f64())
        }
        Builder::Bool(b) => {
            len(1, v)?;
            b.append_value(v[0] != 0)
        }
        Builder::Utf8(b) => {
            // jsonb's binary form is a version byte (1) and the JSON text.
            let text = if ty == ColType::Jsonb {
                v.strip_prefix(&[1u8])
                    .ok_or("jsonb of an unknown binary version")?
            } else {
                v
            };
            b.append_value(simdutf8::basic::from_utf8(text).map_err(|_| "invalid UTF-8 text")?)
        }
        Builder::Binary(b) => b.append_value(v),
        Builder::Date(b) => {
            len(4, v)?;
            b.append_value(
                v.get_i32()
                    .checked_add(PG_EPOCH_DAYS)
                    .ok_or("an infinite date")?,
            )
        }
        Builder::Timestamp(b) => {
            len(8, v)?;
            let us = v.get_i64();
            if us == i64::MAX || us == i64::MIN {
                return Err("an infinite timestamp");
            }
            b.append_value(us + PG_EPOCH_US)
        }
        Builder::Uuid(b) => b
            .append_value(v)
            .map_err(|_| "a value of the wrong width")?,
        Builder::Decimal(b) => {
            let ColType::Decimal(_, scale) = ty else {
                return Err("a decimal");
            };
            b.append_value(numeric_to_i128(v, scale)?)
        }
    }
    Ok(())
}

/// PostgreSQL binary numeric → an integer scaled by 10^scale, refusing to drop digits.
fn numeric_to_i128(mut v: &[u8], scale: i8) -> Result<i128, &'static str> {
    if v.len() < 8 {
        return Err("a malformed numeric");
    }
    let ndigits = v.get_i16() as usize;
    let weight = v.get_i16() as i32;
    let sign = v.get_u16();
    let _dscale = v.get_u16();
    if sign == 0xC000 {
        return Err("NaN");
    }
    if sign == 0xD000 || sign == 0xF000 {
        return Err("an infinite numeric");
    }
    if v.len() != ndigits * 2 {
        return Err("a malformed numeric");
    }
    let mut acc: i128 = 0;
    for i in 0..ndigits {
        let d = v.get_i16() as i128;
        // This digit is worth d × 10000^(weight - i); scaled by 10^scale.
        let exp10 = 4 * (weight - i as i32) + scale as i32;
        if exp10 >= 0 {
            let m = 10i128
                .checked_pow(exp10 as u32)
                .ok_or("a numeric too large for its column")?;
            acc = d
                .checked_mul(m)
                .and_then(|x| acc.checked_add(x))
                .ok_or("a numeric too large for its column")?;
        } else {
            let m = 10i128.checked_pow((-exp10) as u32).unwrap_or(i128::MAX);
            if d % m != 0 {
                return Err("a numeric with more decimal places than the column's scale");
            }
            acc += d / m;
        }
    }
    Ok(if sign == 0x4000 { -acc } else { acc })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Binary numeric of 12345.678 (digits 1 2345 6780, weight 1, dscale 3).
    fn numeric(digits: &[i16], weight: i16, negative: bool, dscale: u16) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend((digits.len() as i16).to_be_bytes());
        v.extend(weight.to_be_bytes());
        v.extend((if negative { 0x4000u16 } else { 0 }).to_be_bytes());
        v.extend(dscale.to_be_bytes());
        for d in digits {
            v.extend(d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numerics_scale_exactly_or_refuse() {
        let n = numeric(&[1, 2345, 6780], 1, false, 3);
        assert_eq!(numeric_to_i128(&n, 3), Ok(12_345_678));
        assert_eq!(numeric_to_i128(&n, 5), Ok(1_234_567_800));
        assert!(numeric_to_i128(&n, 2).is_err(), "would drop a digit");
        let neg = numeric(&[5], 0, true, 0);
        assert_eq!(numeric_to_i128(&neg, 2), Ok(-500));
        let small = numeric(&[500], -1, false, 2); // 0.05
        assert_eq!(numeric_to_i128(&small, 2), Ok(5));
        assert!(numeric_to_i128(&numeric(&[], 0, false, 0), 2) == Ok(0));
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:s3cret@db:5432/app"),
            "postgres://u:***@db:5432/app"
        );
        assert_eq!(redact("postgres://u@db/app"), "postgres://u@db/app");
        assert_eq!(
            redact("postgres://u:s3cret@h1:5432,h2:5433/app?sslmode=require"),
            "postgres://u:***@h1:5432,h2:5433/app?sslmode=require"
        );
        assert_eq!(
            redact("postgres://u@db/app?sslmode=require&password=s3cret"),
            "postgres://u@db/app?sslmode=require&password=***"
        );
        assert_eq!(redact("postgres://db/app"), "postgres://db/app");
        assert_eq!(
            redact("postgres://u:pa/ss@word@db/app"),
            "postgres://u:***@db/app"
        );
    }

    #[test]
    fn tls_parameters_are_taken_out_of_the_url() {
        let env = |_: &str| None;
        let c = config_with_env(
            "postgres://u@db:5432/app?options=-csearch_path%3Dx&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
            env,
        )
        .unwrap();
        assert_eq!(c.tls.mode, SslMode::VerifyFull);
        assert_eq!(
            c.tls.root_cert,
            Some(tls::RootCert::File("/etc/ca.pem".into()))
        );
        assert_eq!(
            c.pg.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        assert_eq!(c.pg.get_options(), Some("-csearch_path=x"));
        // libpq's default, and the environment when the URL is silent.
        let c = config_with_env("postgres://u@db/app", env).unwrap();
        assert_eq!(c.tls.mode, SslMode::Prefer);
        let c = config_with_env("postgres://u@db/app", |k| {
            (k == "PGSSLMODE").then(|| "disable".to_string())
        })
        .unwrap();
        assert_eq!(c.tls.mode, SslMode::Disable);
        assert_eq!(
            c.pg.get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
        // A bad mode names the fix, and the password stays hidden.
        let e = config_with_env("postgres://u:s3cret@db/app?sslmode=verify", env)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("verify-full") && !e.contains("s3cret"), "{e}");
    }
}
