//! Subject resolution: from one identifier to every identifier of that person within the tenant,
//! and the rows that hold any of them. Read-only.
//!
//! The data map drives it: a table's `identifiers` say which columns hold which kind. Two
//! identifiers are linked when one row holds both (a customer row links its phone and email; an
//! account row its id and email; a check-in its employee number and account id). Starting from
//! the given identifier, every row that holds a known identifier contributes its other
//! identifiers, until nothing new is found — a fixed point, within one tenant only. Values are
//! compared in their normal form, computed by the database for stored values
//! ([`identify::sql_normal_form`]), so rows written `0812 …` and `+62 812 …` both match.
//!
//! PostgreSQL receives identifiers as bind parameters (never in statement text, which the
//! server may log); SQLite, which logs nothing, as literals.

use std::collections::{BTreeMap, BTreeSet};

use crate::datamap::{DataMap, Table};
use crate::erasure::identify;
use crate::retention::db::{Db, Dialect, Params, lit};
use crate::util::quote_ident as qi;

/// A person's identifiers beyond which resolution stops (an identifier shared by many people —
/// a shop's own phone, a placeholder email — would otherwise pull in a crowd).
pub const MAX_IDENTIFIERS: usize = 200;

/// What resolution found. The identifiers themselves stay inside (they are personal data):
/// callers see counts.
#[derive(Debug, Clone, Default)]
pub struct Resolution {
    known: BTreeSet<(String, String)>,
    /// Rows per table holding any of the person's identifiers.
    pub rows: BTreeMap<String, u64>,
    /// Rounds until nothing new was found.
    pub rounds: usize,
}

impl Resolution {
    /// How many identifiers of each kind the person has.
    pub fn kinds(&self) -> BTreeMap<&str, usize> {
        let mut out = BTreeMap::new();
        for (k, _) in &self.known {
            *out.entry(k.as_str()).or_default() += 1;
        }
        out
    }

    /// The person's identifiers as the deleters match them.
    pub fn to_match(&self, phone_country: Option<&str>) -> crate::retention::plan::SubjectMatch {
        let mut by_kind: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in &self.known {
            by_kind.entry(k.clone()).or_default().push(v.clone());
        }
        crate::retention::plan::SubjectMatch {
            by_kind,
            phone_country: phone_country.map(String::from),
        }
    }

    /// Every (kind, normalized identifier) found (to seal and to hash; never to print).
    pub fn pairs(&self) -> impl Iterator<Item = &(String, String)> {
        self.known.iter()
    }

    /// Add identifiers known from an earlier, interrupted run of the same request.
    pub fn extend(&mut self, pairs: impl IntoIterator<Item = (String, String)>) {
        self.known.extend(pairs);
    }

    /// The normalized identifiers of `kind` (for the deleters and the ledger; never to print).
    pub fn values(&self, kind: &str) -> Vec<&str> {
        self.known
            .iter()
            .filter(|(k, _)| k == kind)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{0}")]
    Db(#[from] crate::source::SourceError),
    #[error(
        "the identifier links to more than {MAX_IDENTIFIERS} identifiers in tenant {tenant}: it is shared by many people (a shop's own number, a placeholder address); nothing is erased from it\n  fix: check the identifier; erase the people it belongs to one by one"
    )]
    TooMany { tenant: String },
}

/// The normal form of `col` as the database computes it.
fn normal_expr(d: Dialect, kind: &str, col: &str, phone_country: Option<&str>) -> String {
    let raw = format!("CAST({} AS TEXT)", qi(col));
    identify::sql_normal_form(kind, &raw, phone_country, d == Dialect::Postgres)
        .unwrap_or_else(|| format!("trim({raw})"))
}

/// "This row holds one of `known`" over `table`'s identifier columns, or `None` when the table
/// holds none of the kinds known.
pub(crate) fn matches(
    d: Dialect,
    table: &Table,
    known: &BTreeMap<&str, Vec<&str>>,
    phone_country: Option<&str>,
    params: &mut Params,
) -> Option<String> {
    let mut ors = Vec::new();
    for (col, kind) in &table.config.identifiers {
        let Some(values) = known.get(kind.as_str()) else {
            continue;
        };
        let e = normal_expr(d, kind, col, phone_country);
        ors.push(match d {
            Dialect::Postgres => {
                params
                    .subjects
                    .push(values.iter().map(|v| v.to_string()).collect());
                format!(
                    "COALESCE({e} = ANY(${}::text[]), FALSE)",
                    params.subjects.len()
                )
            }
            Dialect::Sqlite => {
                let list: Vec<String> = values.iter().map(|v| lit(v)).collect();
                format!("COALESCE({e} IN ({}), FALSE)", list.join(", "))
            }
        });
    }
    (!ors.is_empty()).then(|| ors.join(" OR "))
}

fn tenant_is(table: &Table, tenant: &str) -> String {
    format!(
        "CAST({} AS TEXT) = {}",
        qi(&table.config.tenant_column),
        lit(tenant)
    )
}

/// Every identifier of the person `kind`/`value` (already normalized) in `tenant`, and the
/// rows per table that hold any of them.
pub fn resolve(
    db: &mut Db,
    dm: &DataMap,
    tenant: &str,
    kind: &str,
    value: &str,
    phone_country: Option<&str>,
) -> Result<Resolution, ResolveError> {
    let d = db.dialect();
    let mut out = Resolution::default();
    out.known.insert((kind.to_string(), value.to_string()));
    let tables: Vec<&Table> = dm
        .tables
        .iter()
        .filter(|t| !t.config.identifiers.is_empty())
        .collect();
    loop {
        out.rounds += 1;
        let mut found = Vec::new();
        let by_kind = group(&out.known);
        for t in &tables {
            let mut params = Params::default();
            let Some(m) = matches(d, t, &by_kind, phone_country, &mut params) else {
                continue;
            };
            let cols: Vec<(&String, String)> = t
                .config
                .identifiers
                .iter()
                .map(|(c, k)| (k, normal_expr(d, k, c, phone_country)))
                .collect();
            let select: Vec<&str> = cols.iter().map(|(_, e)| e.as_str()).collect();
            let sql = format!(
                "SELECT DISTINCT {} FROM {} WHERE {} AND ({m})",
                select.join(", "),
                qi(&t.name),
                tenant_is(t, tenant)
            );
            let rows = db.query_p(&sql, &params).map_err(|e| e.on(&t.name))?;
            for r in rows {
                for ((k, _), v) in cols.iter().zip(r) {
                    // Only a value that is a valid identifier in its normal form links: a
                    // placeholder ("0", "N/A", "-") shared by many rows must not pull in
                    // everyone who holds it.
                    if let Some(v) = v
                        .filter(|v| identify::normalize(k, v, phone_country).is_ok_and(|n| &n == v))
                    {
                        found.push(((*k).clone(), v));
                    }
                }
            }
        }
        let before = out.known.len();
        out.known.extend(found);
        if out.known.len() > MAX_IDENTIFIERS {
            return Err(ResolveError::TooMany {
                tenant: tenant.to_string(),
            });
        }
        if out.known.len() == before {
            break;
        }
    }
    let by_kind = group(&out.known);
    for t in &tables {
        let mut params = Params::default();
        let Some(m) = matches(d, t, &by_kind, phone_country, &mut params) else {
            // None of the person's kinds is held here.
            out.rows.insert(t.name.clone(), 0);
            continue;
        };
        let sql = format!(
            "SELECT CAST(count(*) AS TEXT) FROM {} WHERE {} AND ({m})",
            qi(&t.name),
            tenant_is(t, tenant)
        );
        let rows = db.query_p(&sql, &params).map_err(|e| e.on(&t.name))?;
        let n = rows
            .first()
            .and_then(|r| r[0].as_deref())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        out.rows.insert(t.name.clone(), n);
    }
    Ok(out)
}

fn group(known: &BTreeSet<(String, String)>) -> BTreeMap<&str, Vec<&str>> {
    let mut m: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (k, v) in known {
        m.entry(k.as_str()).or_default().push(v.as_str());
    }
    m
}
