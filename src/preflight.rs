//! Preflight: what in the live database and the stores would make a destructive run refuse or
//! go wrong, found before anything is deleted. `lethe check` reports it (exit 2); `lethe plan`
//! and `lethe run retention` run the same code and refuse on the same findings — so `check`
//! never says ok where a run then refuses for a configuration or data reason.
//!
//! - anchors (SQLite): rows whose anchor is not canonical UTC text naming a real instant
//!   (`'2026-02-30 …'`, `'0000-00-00 …'`, Unix seconds, offsets): they cannot be compared with
//!   a cutoff exactly, and the snapshot of the same rows fails. Column *types* (a `text` or
//!   `bigint` anchor on PostgreSQL) are checked with the schema (`Source::schema_problems`);
//! - primary keys that are NULL or repeated (batches walk the key);
//! - legal holds and overrides naming a tenant, table or category that does not exist (a typo
//!   would let data go);
//! - foreign keys that cascade deletes into mapped tables (PostgreSQL);
//! - orphan rows: rows of a tenant id the tenants table does not list (`policy.orphans`);
//! - blobs: a blob store that holds none of a sample of the keys rows reference (a wrong
//!   `blobs.url` would otherwise "delete" thousands of blobs that were never there), and rows
//!   whose blob lies outside their own tenant's `blob_prefix`;
//! - keys: a keyring, master key or signing key missing while the store holds snapshots or
//!   checkpoints made under it (never silently recreated).
//!
//! Findings name tables, columns, tenant ids and counts — never cell values.

use std::collections::BTreeSet;

use object_store::path::Path as ObjPath;
use serde::{Deserialize, Serialize};

use crate::check::Checked;
use crate::datamap::Table;
use crate::policy::{LegalHold, Orphans};
use crate::problem::Problem;
use crate::retention::db::{self, Db, Dialect, lit};
use crate::source::TenantList;
use crate::store::Store;
use crate::util::quote_ident as qi;

/// Blob keys sampled per table to confirm the blob store is the right one.
const BLOB_SAMPLE: usize = 8;

/// Rows whose tenant column names no tenant of the tenants table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OrphanRows {
    pub table: String,
    /// The tenant id the rows carry (`None`: the column is NULL), escaped for display when it
    /// is not a slug.
    pub tenant: Option<String>,
    pub rows: u64,
}

impl std::fmt::Display for OrphanRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.tenant {
            Some(t) if crate::util::is_safe_ident(t) => {
                write!(f, "table {}: {} rows of tenant {t}", self.table, self.rows)
            }
            Some(t) => write!(
                f,
                "table {}: {} rows of tenant {t:?}",
                self.table, self.rows
            ),
            None => write!(
                f,
                "table {}: {} rows with no tenant (NULL)",
                self.table, self.rows
            ),
        }
    }
}

/// Everything that refuses a destructive run, plus the orphan rows (which the policy decides).
#[derive(Debug, Default)]
pub struct Findings {
    pub problems: Vec<Problem>,
    pub orphans: Vec<OrphanRows>,
}

/// Every data check, for `lethe check`: [`checks_without_counts`], then one counting pass
/// per table ([`db::table_stats`] with no selections — the pass a plan makes anyway, so plans
/// and runs take these counts from their own pass) for orphan rows and blobs outside their
/// prefix, then the names holds and overrides use. `known` tenants are the tenants table's
/// (valid ids and not).
pub async fn data(
    c: &Checked,
    db: &mut Db,
    tenants: &TenantList,
    source_holds: &[LegalHold],
    blobs: Option<&Store>,
) -> crate::Result<Findings> {
    let mut f = Findings {
        problems: checks_without_counts(c, db, blobs).await?.all(),
        orphans: Vec::new(),
    };
    let known = known_ids(tenants);
    for t in &c.data_map.tables {
        let (counts, _) = db::table_stats(db, t, &[])?;
        let (orphans, problem) = from_counts(c, t, &counts, &known);
        f.orphans.extend(orphans);
        f.problems.extend(problem);
    }
    f.orphans.sort();
    f.problems
        .extend(names_problems(c, source_holds, &known, &f.orphans));
    Ok(f)
}

/// The tenant ids of the tenants table, valid and not.
pub fn known_ids(tenants: &TenantList) -> BTreeSet<String> {
    tenants
        .valid
        .iter()
        .map(|t| t.id.clone())
        .chain(tenants.bad.iter().map(|b| b.id.clone()))
        .collect()
}

/// What [`checks_without_counts`] found, by what a run does about it.
#[derive(Debug, Default)]
pub struct Uncounted {
    /// Foreign keys that cascade deletes into mapped tables.
    pub cascades: Vec<Problem>,
    /// SQLite anchors that are not canonical UTC text, primary keys not enforced.
    pub unsafe_data: Vec<Problem>,
    /// The blob store holds none of the newest blobs: `blobs.url` is wrong (configuration).
    pub blob_store: Vec<Problem>,
}

impl Uncounted {
    pub fn all(self) -> Vec<Problem> {
        let mut v = self.cascades;
        v.extend(self.unsafe_data);
        v.extend(self.blob_store);
        v
    }
}

/// The checks that need no count of the whole table: cascading foreign keys, SQLite anchors,
/// primary keys the database does not enforce, and a sample of blobs.
pub async fn checks_without_counts(
    c: &Checked,
    db: &mut Db,
    blobs: Option<&Store>,
) -> crate::Result<Uncounted> {
    let mut out = Uncounted {
        cascades: cascade_problems(c, db)?,
        ..Default::default()
    };
    for t in &c.data_map.tables {
        out.unsafe_data.extend(anchor_problems(c, db, t)?);
        out.unsafe_data.extend(key_problems(db, t)?);
    }
    out.blob_store = blob_store_problems(c, db, blobs).await?;
    Ok(out)
}

/// What a table's counting pass shows: its orphan rows, and a problem when rows point at blobs
/// outside their tenant's prefix.
pub fn from_counts(
    c: &Checked,
    t: &Table,
    counts: &db::TableCounts,
    known: &BTreeSet<String>,
) -> (Vec<OrphanRows>, Option<Problem>) {
    let orphans = if t.name == c.data_map.tenants.table {
        vec![]
    } else {
        counts
            .rows
            .iter()
            .filter(|(id, _)| id.as_ref().is_none_or(|id| !known.contains(id)))
            .map(|(id, n)| OrphanRows {
                table: t.name.clone(),
                tenant: id.clone(),
                rows: *n,
            })
            .collect()
    };
    (orphans, blob_prefix_problem(t, counts.blobs_outside_prefix))
}

/// Orphan rows as problems, when the policy refuses them (`lethe check`; a run refuses with
/// exit 1 naming the same).
pub fn orphan_problems(policy: &crate::policy::Policy, orphans: &[OrphanRows]) -> Vec<Problem> {
    if policy.orphans != Orphans::Refuse {
        return vec![];
    }
    orphans
        .iter()
        .map(|o| {
            Problem::new(
                &policy.path,
                "orphans",
                format!("{o}: the tenants table does not list that tenant, so no rule ever makes these rows due"),
                "add the tenant to the tenants table, delete the rows, or choose orphans = \"delete\" (they go as a terminated tenant's would) or orphans = \"keep\" in the policy",
            )
        })
        .collect()
}

/// Everything `lethe check` adds to the file checks: keys against the store, tenant ids, and
/// [`data`] — the same checks a plan or run makes before it deletes anything.
pub async fn for_check(c: &Checked) -> crate::Result<Vec<Problem>> {
    let cfg = &c.config;
    let mut problems = key_problems_for(cfg).await?;
    let list = crate::source::Source::open(&cfg.source)?.tenants(&c.data_map)?;
    for b in &list.bad {
        problems.push(Problem::new(
            &c.data_map.tenants_file,
            "tenants.id_column",
            b.to_string(),
            "give the tenant a slug id; until then lethe neither snapshots nor deletes its rows",
        ));
    }
    let mut db = Db::open(&cfg.source, false, &cfg.retention)?;
    let holds = match &c.policy.legal_holds_source {
        Some(s) => db::source_holds(&mut db, &s.table)?,
        None => vec![],
    };
    let blobs = match &cfg.blobs {
        None => None,
        Some(spec) => match Store::open(spec) {
            Ok(s) => Some(s),
            Err(e) => {
                problems.push(Problem::new(
                    &cfg.path,
                    "blobs.url",
                    e.to_string().lines().next().unwrap_or_default().to_string(),
                    "point blobs.url (or LETHE_BLOBS_URL) at the store the application writes its photos and recordings to",
                ));
                None
            }
        },
    };
    let f = data(c, &mut db, &list, &holds, blobs.as_ref()).await?;
    problems.extend(f.problems);
    problems.extend(orphan_problems(&c.policy, &f.orphans));
    Ok(problems)
}

/// Legal holds and overrides must name real things: a typo would protect nothing.
pub fn names_problems(
    c: &Checked,
    source_holds: &[LegalHold],
    tenants: &BTreeSet<String>,
    orphans: &[OrphanRows],
) -> Vec<Problem> {
    // A hold may name a tenant the tenants table no longer lists while its rows exist.
    let known =
        |t: &str| tenants.contains(t) || orphans.iter().any(|o| o.tenant.as_deref() == Some(t));
    let mut out = Vec::new();
    let policy = &c.policy;
    let mut hold = |h: &LegalHold, file: &std::path::Path, at: String| {
        if !known(&h.tenant) {
            out.push(Problem::new(
                file,
                &at,
                format!(
                    "legal hold names tenant {:?}, which the tenants table does not list: it protects nothing",
                    h.tenant
                ),
                "correct the tenant id (nothing is deleted until every hold names a real tenant)",
            ));
        }
        if let Some(t) = &h.table
            && c.data_map.table(t).is_none()
        {
            out.push(Problem::new(
                file,
                &at,
                format!("legal hold names table {t:?}, which the data map does not have"),
                "name a table of the data map",
            ));
        }
        if let Some(cat) = &h.category
            && !policy.categories.contains_key(cat)
        {
            out.push(Problem::new(
                file,
                &at,
                format!("legal hold names category {cat:?}, which the policy does not define"),
                "name a category of the policy",
            ));
        }
    };
    for (i, h) in policy.legal_holds.iter().enumerate() {
        hold(h, &policy.path, format!("legal_holds[{i}]"));
    }
    if let Some(src) = &policy.legal_holds_source {
        for (i, h) in source_holds.iter().enumerate() {
            hold(
                h,
                &policy.path,
                format!("legal_holds_source: table {} row {}", src.table, i + 1),
            );
        }
    }
    for t in policy.overrides.keys() {
        if !known(t) {
            out.push(Problem::new(
                &policy.path,
                format!("tenants.{t}"),
                format!("override for tenant {t:?}, which the tenants table does not list"),
                "fix the tenant id or remove the override",
            ));
        }
    }
    out
}

/// PostgreSQL: a foreign key with ON DELETE CASCADE / SET NULL / SET DEFAULT into a table of
/// the data map would change rows lethe did not select — past holds and the blob outbox.
fn cascade_problems(c: &Checked, db: &mut Db) -> crate::Result<Vec<Problem>> {
    if db.dialect() != Dialect::Postgres {
        // SQLite enforces foreign keys only on connections that enable them; lethe's do not.
        return Ok(vec![]);
    }
    let names: Vec<String> = c.data_map.tables.iter().map(|t| lit(&t.name)).collect();
    let sql = format!(
        "SELECT CAST(c.conrelid::regclass AS TEXT), CAST(c.confrelid::regclass AS TEXT), c.conname \
         FROM pg_constraint c JOIN pg_class r ON r.oid = c.confrelid \
         WHERE c.contype = 'f' AND c.confdeltype IN ('c', 'n', 'd') AND r.relname IN ({}) \
         AND r.relnamespace = ANY (SELECT oid FROM pg_namespace WHERE nspname = ANY (current_schemas(false)))",
        names.join(", ")
    );
    let rows = db.query(&sql).map_err(|e| e.on("pg_constraint"))?;
    Ok(rows
        .iter()
        .map(|r| {
            let child = r[0].as_deref().unwrap_or("?");
            let parent = r[1].as_deref().unwrap_or("?");
            let file = c
                .data_map
                .table(parent)
                .map(|t| t.file.clone())
                .unwrap_or_else(|| c.data_map.tenants_file.clone());
            Problem::new(
                &file,
                format!("tables.{parent}"),
                format!(
                    "foreign key {} of table {child} cascades deletes from {parent}: deleting a row of {parent} would change rows lethe did not select, past legal holds and the blob outbox",
                    r[2].as_deref().unwrap_or("?")
                ),
                "make it ON DELETE RESTRICT / NO ACTION, and map the child table with its own retention",
            )
        })
        .collect())
}

/// SQLite anchors that are not canonical UTC text naming a real instant.
fn anchor_problems(c: &Checked, db: &mut Db, t: &Table) -> crate::Result<Vec<Problem>> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for cname in &t.config.categories {
        let Some(cat) = c.policy.categories.get(cname) else {
            continue;
        };
        let Some(a) = cat.anchor.as_deref().or(t.config.time_column.as_deref()) else {
            continue;
        };
        if !seen.insert(a.to_string()) {
            continue;
        }
        let bad = db::non_canonical_anchors(db, t, a)?;
        if bad > 0 {
            out.push(Problem::new(
                &t.file,
                format!("tables.{}", t.name),
                format!(
                    "table {}, column {a}: {bad} rows hold a value that is not UTC text 'YYYY-MM-DD HH:MM:SS[.ffffff]' naming a real instant (numbers, offsets, other formats or impossible dates such as 2026-02-30 cannot be compared with the cutoff, and the snapshot fails on them)",
                    t.name
                ),
                format!(
                    "rewrite them in that form (e.g. UPDATE {} SET {a} = strftime('%Y-%m-%d %H:%M:%S', {a}, 'unixepoch') WHERE typeof({a}) = 'integer'), or set impossible dates to NULL; until then nothing is deleted",
                    t.name
                ),
            ));
        }
    }
    Ok(out)
}

/// Primary keys must be unique and never NULL: batches walk them.
fn key_problems(db: &mut Db, t: &Table) -> crate::Result<Vec<Problem>> {
    if db::pk_is_enforced(db, t)? {
        return Ok(vec![]);
    }
    let pk = qi(&t.config.primary_key);
    let sql = format!(
        "SELECT CAST(count(*) - count({pk}) AS TEXT), CAST(count({pk}) - count(DISTINCT {pk}) AS TEXT) FROM {}",
        qi(&t.name)
    );
    let r = db.query(&sql).map_err(|e| e.on(&t.name))?;
    let n = |i: usize| -> u64 {
        r.first()
            .and_then(|r| r[i].as_deref())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (nulls, dups) = (n(0), n(1));
    if nulls == 0 && dups == 0 {
        return Ok(vec![]);
    }
    Ok(vec![Problem::new(
        &t.file,
        format!("tables.{}.primary_key", t.name),
        format!(
            "table {}, primary key {}: {nulls} rows have NULL and {dups} rows repeat another row's key; retention walks and deletes by this key",
            t.name, t.config.primary_key
        ),
        "name a column that is unique and NOT NULL (declare it PRIMARY KEY), or fix the rows",
    )])
}

/// `bad` rows of `t` reference a blob outside their own tenant's `blob_prefix`.
fn blob_prefix_problem(t: &Table, bad: u64) -> Option<Problem> {
    let prefix = t.config.blob_prefix.as_ref()?;
    (bad > 0).then(|| {
        Problem::new(
            &t.file,
            format!("tables.{}.blob_prefix", t.name),
            format!(
                "table {}: {bad} rows reference a blob outside their own tenant's prefix {prefix:?}; deleting such a row would delete another tenant's (or a shared) blob",
                t.name
            ),
            "fix those rows' blob keys, or correct blob_prefix; nothing is deleted until then",
        )
    })
}

/// The blob store must hold what rows reference: sample the newest keys of each blob table.
async fn blob_store_problems(
    c: &Checked,
    db: &mut Db,
    blobs: Option<&Store>,
) -> crate::Result<Vec<Problem>> {
    let mut out = Vec::new();
    for t in &c.data_map.tables {
        let Some(b) = &t.config.blob_column else {
            continue;
        };
        let Some(blobs) = blobs else {
            continue; // check names the missing [blobs] store
        };
        let sql = format!(
            "SELECT CAST({b} AS TEXT) FROM {} WHERE {b} IS NOT NULL ORDER BY {} DESC LIMIT {BLOB_SAMPLE}",
            qi(&t.name),
            qi(&t.config.primary_key),
            b = qi(b)
        );
        let keys: Vec<String> = db
            .query(&sql)
            .map_err(|e| e.on(&t.name))?
            .into_iter()
            .filter_map(|r| r[0].clone())
            .collect();
        if keys.is_empty() {
            continue;
        }
        let mut found = 0;
        for k in &keys {
            let Ok(p) = ObjPath::parse(k) else { continue };
            match blobs.head(&p).await {
                Ok(Some(_)) => found += 1,
                Ok(None) => {}
                Err(e) => {
                    // The store does not answer (after the client's retries): whether it is the
                    // right one cannot be told now. Nothing wrong is recorded for it either —
                    // a blob delete that fails stays pending, never counts as absent — so the
                    // run goes on, with the blob phase bounded (`retention.blob_breaker`).
                    tracing::warn!(store = %blobs.url, error = %e, "the blob store does not answer; its check is skipped and blob deletions wait in the outbox until it does");
                    return Ok(out);
                }
            }
        }
        if found == 0 {
            out.push(Problem::new(
                &c.config.path,
                "blobs.url",
                format!(
                    "blob store {} holds none of the {} newest blobs table {} references: it is not where the {} keys point, and retention would record deletions that never happened",
                    blobs.url,
                    keys.len(),
                    t.name,
                    b
                ),
                "point blobs.url (or LETHE_BLOBS_URL) at the store the application writes its photos and recordings to",
            ));
        }
    }
    Ok(out)
}

/// The keys must be the ones the store's contents were made under: a keyring, master key or
/// signing key that is missing while the store holds snapshots or checkpoints is a problem
/// (a run would refuse rather than create a new one).
pub async fn key_problems_for(c: &crate::config::Config) -> crate::Result<Vec<Problem>> {
    let mut out = Vec::new();
    if let crate::config::SecretRef::File(p) = &c.master_key
        && !p.exists()
        && c.keyring.exists()
    {
        out.push(Problem::new(
            &c.path,
            "keys.master_key",
            format!(
                "master key file {} does not exist, but keyring {} does: nothing can be read or snapshotted",
                p.display(),
                c.keyring.display()
            ),
            "restore the master key the keyring was created with from your backup",
        ));
    }
    if !Store::exists(&c.store) {
        return Ok(out);
    }
    let store = Store::open(&c.store)?;
    let expected = crate::keys::StoreKeys::read(&store).await?;
    if let Err(e) = crate::keys::refuse_recreate(
        &c.keyring,
        &c.master_key,
        &crate::sign::signing_key_path(&c.keyring),
        &expected,
    ) {
        out.push(Problem::new(
            &c.path,
            "keys",
            e.to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
            "restore it from your backup of the key files; lethe never recreates a key over existing data",
        ));
    }
    Ok(out)
}
