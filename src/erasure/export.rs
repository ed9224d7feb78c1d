//! Right of access and portability (DPA: "JSON or CSV within 30 days"; the bot's `/profile`):
//! everything the primary database holds about one person — found by the same resolution as
//! erasure — or about a whole tenant, written as JSON or CSV into a new directory, with the
//! blobs (photos, recordings) those rows reference. Reads only.
//!
//! Files are created with mode 0600 in directories created with mode 0700, nothing is ever
//! overwritten, and a failed export removes what it wrote: the output is personal data.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::check::Checked;
use crate::datamap::Table;
use crate::erasure::resolve::{self, Resolution};
use crate::retention::db::{self, Db, Dialect, Params, lit};
use crate::store::Store;
use crate::util::quote_ident as qi;

pub const FORMAT: &str = "lethe-export/1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Json,
    Csv,
}

/// What an export wrote.
#[derive(Debug, Clone, Default)]
pub struct Exported {
    /// Rows per table.
    pub rows: BTreeMap<String, u64>,
    pub blobs: u64,
    pub files: Vec<PathBuf>,
}

/// Whom an export is about.
pub enum Whom<'a> {
    Subject { kind: &'a str, id: &'a str },
    Tenant,
}

#[derive(Serialize)]
struct Manifest<'a> {
    format: &'static str,
    tenant: &'a str,
    scope: &'static str,
    /// Keyed hash of the identifier asked for (subject exports).
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    generated_at: String,
    identifiers: BTreeMap<String, usize>,
    rows: &'a BTreeMap<String, u64>,
    blobs: u64,
}

/// Export `whom` of `tenant` into `out` (which must not exist yet).
pub async fn export(
    c: &Checked,
    tenant: &str,
    whom: Whom<'_>,
    format: ExportFormat,
    out: &Path,
) -> crate::Result<Exported> {
    crate::erasure::check_names(tenant, None)?;
    let pc = c.policy.erasure.phone_country.clone();
    let (found, subject) = match &whom {
        Whom::Subject { kind, id } => {
            let normal = crate::erasure::validate_subject(c, tenant, kind, id)?;
            crate::erasure::known_tenant(c, tenant)?;
            let mut db = Db::open(&c.config.source, false, &c.config.retention)?;
            let found =
                resolve::resolve(&mut db, &c.data_map, tenant, kind, &normal, pc.as_deref())
                    .map_err(|e| match e {
                        resolve::ResolveError::Db(e) => crate::Error::from(e),
                        other => crate::Error::Failed(other.to_string()),
                    })?;
            let keyring =
                crate::keys::Keyring::open(&c.config.keyring, &c.config.master_key, false).ok();
            let subject = keyring.map(|k| k.subject_hash(&format!("{kind}:{normal}")));
            (Some(found), subject)
        }
        Whom::Tenant => {
            crate::erasure::known_tenant(c, tenant)?;
            (None, None)
        }
    };
    if out.exists() {
        return Err(crate::Error::Usage(format!(
            "{} exists already; export into a new directory (nothing was overwritten)",
            out.display()
        )));
    }
    let mut written = Exported::default();
    let result = write_all(
        c,
        tenant,
        found.as_ref(),
        subject,
        format,
        out,
        &mut written,
    )
    .await;
    match result {
        Ok(()) => Ok(written),
        Err(e) => {
            // Plaintext personal data is never left behind by an export that did not finish.
            let _ = std::fs::remove_dir_all(out);
            Err(e)
        }
    }
}

async fn write_all(
    c: &Checked,
    tenant: &str,
    found: Option<&Resolution>,
    subject: Option<String>,
    format: ExportFormat,
    out: &Path,
    written: &mut Exported,
) -> crate::Result<()> {
    let io = |p: &Path, e: std::io::Error| {
        crate::Error::Usage(format!("cannot write {}: {e}", p.display()))
    };
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(out)
        .map_err(|e| io(out, e))?;
    let pc = c.policy.erasure.phone_country.clone();
    let m = found.map(|f| f.to_match(pc.as_deref()));
    let mut db = Db::open(&c.config.source, false, &c.config.retention)?;
    let mut blob_keys = Vec::new();
    for t in &c.data_map.tables {
        let pred = match &m {
            Some(m) => {
                if !t
                    .config
                    .identifiers
                    .values()
                    .any(|k| m.by_kind.contains_key(k))
                {
                    continue;
                }
                let sel = crate::retention::plan::Selection {
                    table: t.name.clone(),
                    anchor: None,
                    cutoff: None,
                    change: crate::retention::plan::Change::Delete,
                    excluded_subjects: Vec::new(),
                    erase: Some(m.clone()),
                };
                let mut params = Params::default();
                let p = db::predicate(
                    db.dialect(),
                    t,
                    &sel,
                    &[tenant.to_string()],
                    false,
                    &mut params,
                );
                (p, params)
            }
            None => (
                format!(
                    "CAST({} AS TEXT) = {}",
                    qi(&t.config.tenant_column),
                    lit(tenant)
                ),
                Params::default(),
            ),
        };
        let cols = columns(&mut db, t)?;
        let select: Vec<String> = cols
            .iter()
            .map(|c| format!("CAST({} AS TEXT)", qi(c)))
            .collect();
        let sql = format!(
            "SELECT {} FROM {} WHERE {} ORDER BY {}",
            select.join(", "),
            qi(&t.name),
            pred.0,
            qi(&t.config.primary_key)
        );
        let rows = db.query_p(&sql, &pred.1).map_err(|e| e.on(&t.name))?;
        written.rows.insert(t.name.clone(), rows.len() as u64);
        if rows.is_empty() {
            continue;
        }
        if let Some(b) = &t.config.blob_column
            && let Some(i) = cols.iter().position(|c| c == b)
        {
            blob_keys.extend(rows.iter().filter_map(|r| r[i].clone()));
        }
        let path = out.join(format!(
            "{}.{}",
            t.name,
            match format {
                ExportFormat::Json => "json",
                ExportFormat::Csv => "csv",
            }
        ));
        let mut f = create(&path).map_err(|e| io(&path, e))?;
        written.files.push(path.clone());
        match format {
            ExportFormat::Json => {
                let objs: Vec<serde_json::Map<String, serde_json::Value>> = rows
                    .iter()
                    .map(|r| {
                        cols.iter()
                            .zip(r)
                            .map(|(c, v)| {
                                (
                                    c.clone(),
                                    v.clone()
                                        .map(serde_json::Value::String)
                                        .unwrap_or(serde_json::Value::Null),
                                )
                            })
                            .collect()
                    })
                    .collect();
                serde_json::to_writer_pretty(&mut f, &objs)
                    .map_err(|e| io(&path, std::io::Error::other(e)))?;
            }
            ExportFormat::Csv => {
                let mut line = cols.iter().map(|c| csv_field(c)).collect::<Vec<_>>();
                writeln!(f, "{}", line.join(",")).map_err(|e| io(&path, e))?;
                for r in &rows {
                    line = r
                        .iter()
                        .map(|v| v.as_deref().map(csv_field).unwrap_or_default())
                        .collect();
                    writeln!(f, "{}", line.join(",")).map_err(|e| io(&path, e))?;
                }
            }
        }
        f.sync_all().map_err(|e| io(&path, e))?;
    }
    // The photos and recordings those rows reference (each once).
    blob_keys.sort();
    blob_keys.dedup();
    if !blob_keys.is_empty() {
        let Some(spec) = &c.config.blobs else {
            return Err(crate::Error::Usage(format!(
                "{} rows reference blobs but lethe.toml has no [blobs] store; add it (url of the photo/recording store)",
                blob_keys.len()
            )));
        };
        let store = Store::open(spec)?;
        let dir = out.join("blobs");
        for key in blob_keys {
            if !crate::blobs::within_tenant_prefix(&c.data_map, tenant, &key)
                || key
                    .split('/')
                    .any(|p| p.is_empty() || p == "." || p == "..")
            {
                // A key outside the tenant's prefix, or one that would escape the directory.
                continue;
            }
            let Some(bytes) = store
                .get_opt(&object_store::path::Path::from(key.as_str()))
                .await?
            else {
                continue;
            };
            // (errors name the blob directory, never the key: keys may embed identifiers)
            let path = dir.join(&key);
            if let Some(parent) = path.parent() {
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .recursive(true)
                    .create(parent)
                    .map_err(|e| io(&dir, e))?;
            }
            let mut f = create(&path).map_err(|e| io(&dir, e))?;
            f.write_all(&bytes).map_err(|e| io(&dir, e))?;
            written.blobs += 1;
            written.files.push(path);
        }
    }
    let manifest = Manifest {
        format: FORMAT,
        tenant,
        scope: if found.is_some() { "subject" } else { "tenant" },
        subject,
        generated_at: crate::util::rfc3339(crate::clock::system().now()),
        identifiers: found
            .map(|f| {
                f.kinds()
                    .into_iter()
                    .map(|(k, n)| (k.to_string(), n))
                    .collect()
            })
            .unwrap_or_default(),
        rows: &written.rows,
        blobs: written.blobs,
    };
    let path = out.join("export.json");
    let mut f = create(&path).map_err(|e| io(&path, e))?;
    serde_json::to_writer_pretty(&mut f, &manifest)
        .map_err(|e| io(&path, std::io::Error::other(e)))?;
    written.files.push(path);
    Ok(())
}

fn create(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// RFC 4180: quoted when it holds a comma, quote or line break.
fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}

/// The columns of `t` in the database, in their order.
fn columns(db: &mut Db, t: &Table) -> crate::Result<Vec<String>> {
    let sql = match db.dialect() {
        Dialect::Sqlite => format!("SELECT name FROM pragma_table_info({})", lit(&t.name)),
        Dialect::Postgres => format!(
            "SELECT column_name::text FROM information_schema.columns WHERE table_name = {} AND table_schema = ANY (current_schemas(false)) ORDER BY ordinal_position",
            lit(&t.name)
        ),
    };
    let rows = db.query(&sql).map_err(|e| e.on(&t.name))?;
    Ok(rows.into_iter().filter_map(|r| r[0].clone()).collect())
}
