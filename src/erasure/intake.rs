//! The intake table `lethe_erasure_requests`: how the product's app (a chat bot's `/forget`, a
//! `/dsr` form) hands erasure requests to lethe without calling it. The app inserts a row; each
//! erasure run receives every new row as a request (`source = "intake"`, with an id derived from
//! the row, so a run interrupted between receiving and marking the row never receives it twice),
//! and marks the row with the request id and state. Once the primary phase is done the row's
//! plaintext identifier is set to NULL: afterwards only the request's keyed hash exists anywhere.
//! A row lethe cannot accept (unknown tenant or kind, malformed identifier) is marked `refused`
//! with the reason (which never quotes the identifier) and its identifier is cleared too.

use std::sync::Arc;

use crate::check::Checked;
use crate::clock::Clock;
use crate::retention::db::{Db, DbError, Dialect, lit};

pub const TABLE: &str = "lethe_erasure_requests";

/// The table, as `lethe init-db` and the first erasure run create it (README has the DDL).
pub fn ddl(d: Dialect) -> String {
    match d {
        Dialect::Sqlite => format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (id INTEGER PRIMARY KEY AUTOINCREMENT, tenant_id TEXT NOT NULL, scope TEXT NOT NULL DEFAULT 'subject', kind TEXT, identifier TEXT, immediate INTEGER NOT NULL DEFAULT 0, reference TEXT, received_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP, request_id TEXT, state TEXT, problem TEXT)"
        ),
        Dialect::Postgres => format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, tenant_id text NOT NULL, scope text NOT NULL DEFAULT 'subject', kind text, identifier text, immediate boolean NOT NULL DEFAULT false, reference text, received_at timestamptz NOT NULL DEFAULT now(), request_id text, state text, problem text)"
        ),
    }
}

pub fn ensure(db: &mut Db) -> Result<(), DbError> {
    let sql = ddl(db.dialect());
    db.query(&sql).map(|_| ())
}

/// One new row of the intake table.
struct Row {
    id: i64,
    tenant: String,
    scope: String,
    kind: Option<String>,
    identifier: Option<String>,
    immediate: bool,
    reference: Option<String>,
}

/// What draining received.
#[derive(Debug, Default, Clone)]
pub struct Drained {
    pub received: usize,
    pub refused: usize,
}

/// Receive every new row of the intake table as a request. A row that cannot become one is
/// marked `refused`; a store or database failure stops the run (the row stays new).
pub async fn drain(
    c: &Checked,
    db: &mut Db,
    store: &crate::store::Store,
    clock: &Arc<dyn Clock>,
) -> crate::Result<Drained> {
    ensure(db).map_err(|e| e.on(TABLE))?;
    // Rows whose request finished its primary phase while a crash kept the row from being
    // settled: their plaintext identifier goes now.
    let open = db
        .query(&format!(
            "SELECT CAST(tenant_id AS TEXT), request_id FROM {TABLE} WHERE request_id IS NOT NULL AND identifier IS NOT NULL"
        ))
        .map_err(|e| e.on(TABLE))?;
    for r in open {
        let (Some(t), Some(id)) = (&r[0], &r[1]) else {
            continue;
        };
        if !crate::util::is_safe_ident(t) || !crate::util::is_safe_ident(id) {
            continue;
        }
        if let Some(req) = crate::erasure::request::read(store, t, id).await?
            && req.state != crate::erasure::request::State::Received
        {
            settle(db, id, req.state.name())?;
        }
    }
    let rows = db
        .query(&format!(
            "SELECT CAST(id AS TEXT), CAST(tenant_id AS TEXT), scope, kind, identifier, CAST(immediate AS TEXT), reference, CAST(received_at AS TEXT) FROM {TABLE} WHERE request_id IS NULL AND state IS NULL ORDER BY id"
        ))
        .map_err(|e| e.on(TABLE))?;
    let mut out = Drained::default();
    for r in rows {
        let row = Row {
            id: r[0].as_deref().and_then(|s| s.parse().ok()).unwrap_or(0),
            tenant: r[1].clone().unwrap_or_default(),
            scope: r[2].clone().unwrap_or_else(|| "subject".into()),
            kind: r[3].clone(),
            identifier: r[4].clone(),
            immediate: matches!(r[5].as_deref(), Some("1" | "t" | "true")),
            reference: r[6].clone(),
        };
        let received_at = r[7].clone().unwrap_or_default();
        // Received already by a run interrupted before it marked the row?
        let suffix = intake_suffix(&row.tenant, row.id, &received_at);
        if crate::util::is_safe_ident(&row.tenant)
            && let Some(req) = crate::erasure::request::list(store, Some(&row.tenant))
                .await?
                .into_iter()
                .flatten()
                .find(|r| r.source == "intake" && r.id.ends_with(&suffix))
        {
            mark(db, row.id, Some(&req.id), "received", None)?;
            out.received += 1;
            continue;
        }
        let origin = crate::erasure::Origin {
            id: Some(format!("{}-{suffix}", clock.now().format("%Y%m%dT%H%M%SZ"))),
            source: "intake",
        };
        let received = match (row.scope.as_str(), &row.kind, &row.identifier) {
            ("subject", Some(kind), Some(id)) => {
                let ask = crate::erasure::SubjectRequest {
                    tenant: row.tenant.clone(),
                    kind: kind.clone(),
                    id: id.clone(),
                    immediate: row.immediate,
                    reference: row.reference.clone(),
                };
                crate::erasure::erase_subject_as(c, &ask, clock, &origin).await
            }
            ("subject", _, _) => Err(crate::Error::Usage(
                "a subject request needs kind and identifier".into(),
            )),
            ("tenant", _, _) => {
                crate::erasure::erase_tenant_as(
                    c,
                    &row.tenant,
                    row.immediate,
                    row.reference.clone(),
                    clock,
                    &origin,
                )
                .await
            }
            _ => Err(crate::Error::Usage(
                "scope must be 'subject' or 'tenant'".into(),
            )),
        };
        match received {
            Ok(req) => {
                mark(db, row.id, Some(&req.id), "received", None)?;
                out.received += 1;
            }
            Err(e) if e.exit_code() == 2 => {
                let why = e.to_string();
                tracing::warn!(intake_row = row.id, tenant = %row.tenant, problem = %why.lines().next().unwrap_or(""), "intake row refused");
                mark(db, row.id, None, "refused", Some(&why))?;
                out.refused += 1;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The end of the request id of intake row `id` (after its receipt time): a hash of the tenant,
/// the row id and the row's own receipt time, so that receiving the same row again finds the
/// request it became, and a row of a recreated table (ids restarting) does not.
fn intake_suffix(tenant: &str, id: i64, received_at: &str) -> String {
    let h =
        crate::util::sha256_hex(format!("lethe/intake\0{tenant}\0{id}\0{received_at}").as_bytes());
    h[..12].to_string()
}

fn mark(
    db: &mut Db,
    row: i64,
    request: Option<&str>,
    state: &str,
    problem: Option<&str>,
) -> crate::Result<()> {
    let clear = if state == "refused" {
        ", identifier = NULL"
    } else {
        ""
    };
    let sql = format!(
        "UPDATE {TABLE} SET request_id = {}, state = {}, problem = {}{clear} WHERE id = {row}",
        request.map(lit).unwrap_or_else(|| "NULL".into()),
        lit(state),
        problem.map(lit).unwrap_or_else(|| "NULL".into()),
    );
    db.query(&sql).map_err(|e| e.on(TABLE))?;
    Ok(())
}

/// After a request's phase: the intake row (if it came from one) follows its state, and its
/// plaintext identifier is removed once the primary phase is done.
pub fn settle(db: &mut Db, request: &str, state: &str) -> crate::Result<()> {
    if !db.has_table(TABLE).map_err(|e| e.on(TABLE))? {
        return Ok(());
    }
    let sql = format!(
        "UPDATE {TABLE} SET identifier = NULL, state = {} WHERE request_id = {}",
        lit(state),
        lit(request)
    );
    db.query(&sql).map_err(|e| e.on(TABLE))?;
    Ok(())
}
