//! The data map (`schemas/*.toml`): for each table of the application, whose rows belong to
//! which tenant, what the rows are (their retention categories), when they happened, who they
//! are about, which blobs they point at, and which columns hold personal data.
//!
//! Every file in the directory is read; tables may be split across files but not repeated.
//! Unknown keys are errors: a typo here would otherwise silently exempt data from retention.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::problem::{Problem, Problems};
use crate::util::is_safe_ident;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataMapFile {
    /// The table listing the tenants themselves (at most one file may say it).
    #[serde(default)]
    tenants: Option<TenantsTable>,
    /// Tenant tables by name.
    #[serde(default)]
    tables: BTreeMap<String, TableConfig>,
}

/// Where the list of tenants lives.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TenantsTable {
    pub table: String,
    /// Tenant id column (a short slug: letters, digits, `-`, `_`).
    pub id_column: String,
    /// `active` / `cancelled`.
    pub status_column: String,
    /// When the tenant cancelled (NULL while active).
    pub cancelled_at_column: String,
    /// The tenant's IANA time zone (e.g. `Asia/Jakarta`): analytics cuts its days and weeks
    /// there. Optional; without it (or where a row holds NULL) `[analytics] time_zone` applies.
    #[serde(default)]
    pub time_zone_column: Option<String>,
}

/// One table as the data map describes it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// What the table holds, for humans.
    #[serde(default)]
    pub description: String,
    /// Column holding the tenant id.
    pub tenant_column: String,
    /// Primary-key column (an integer or text key; batched deletes walk it in ranges).
    pub primary_key: String,
    /// Retention categories the rows belong to (names of `[categories.*]` in the policy).
    pub categories: Vec<String>,
    /// The row's event time (sent, captured, issued…); anchors of other categories are set in the policy.
    #[serde(default)]
    pub time_column: Option<String>,
    /// Columns identifying the data subject (phone, email, employee id…).
    #[serde(default)]
    pub subject_columns: Vec<String>,
    /// Column holding the object key of a blob (selfie photo, call recording) in the blob store.
    #[serde(default)]
    pub blob_column: Option<String>,
    /// Columns holding personal data.
    #[serde(default)]
    pub personal_columns: Vec<String>,
    /// Where each tenant's blobs live when the layout is per tenant, with `{tenant}` for the
    /// tenant id, e.g. `"photos/{tenant}/"`. Set, a row's blob must lie under its own tenant's
    /// prefix: retention refuses to delete any other (a row of one tenant can never make lethe
    /// delete another tenant's photo), and `check` counts rows that break it.
    #[serde(default)]
    pub blob_prefix: Option<String>,
    /// Which columns hold which kind of identifier of a person, for erasure: `{ customer_phone
    /// = "phone" }`. Kinds are names of your choosing; `phone` (E.164) and `email` (lower case)
    /// are normalized before matching, others are matched as written.
    #[serde(default)]
    pub identifiers: std::collections::BTreeMap<String, String>,
}

impl TableConfig {
    /// The blob prefix of `tenant` (see [`TableConfig::blob_prefix`]).
    pub fn blob_prefix_of(&self, tenant: &str) -> Option<String> {
        self.blob_prefix
            .as_ref()
            .map(|p| p.replace("{tenant}", tenant))
    }
}

impl TableConfig {
    /// Every column this entry names, with the key that names it.
    pub fn named_columns(&self) -> Vec<(&'static str, &str)> {
        let mut v = vec![
            ("tenant_column", self.tenant_column.as_str()),
            ("primary_key", self.primary_key.as_str()),
        ];
        v.extend(self.time_column.as_deref().map(|c| ("time_column", c)));
        v.extend(self.blob_column.as_deref().map(|c| ("blob_column", c)));
        v.extend(
            self.subject_columns
                .iter()
                .map(|c| ("subject_columns", c.as_str())),
        );
        v.extend(
            self.personal_columns
                .iter()
                .map(|c| ("personal_columns", c.as_str())),
        );
        v.extend(self.identifiers.keys().map(|c| ("identifiers", c.as_str())));
        v
    }
}

/// A table of the data map, with the file it came from (for error messages).
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub name: String,
    pub file: PathBuf,
    pub config: TableConfig,
}

/// The validated data map.
#[derive(Debug, Clone, PartialEq)]
pub struct DataMap {
    pub tenants: TenantsTable,
    pub tenants_file: PathBuf,
    /// Tables in name order (the order snapshots are taken in).
    pub tables: Vec<Table>,
}

impl DataMap {
    /// The identifier kinds the tables declare (`identifiers`), each with the tables and
    /// columns that hold it.
    pub fn identifier_kinds(&self) -> BTreeMap<&str, Vec<(&str, &str)>> {
        let mut out: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
        for t in &self.tables {
            for (col, kind) in &t.config.identifiers {
                out.entry(kind.as_str())
                    .or_default()
                    .push((t.name.as_str(), col.as_str()));
            }
        }
        out
    }

    /// Read every `*.toml` in `dir` (sorted) and validate what can be validated without a database.
    pub fn load_dir(dir: &Path) -> Result<DataMap, Problems> {
        let files = toml_files(dir).map_err(|e| {
            Problems(vec![Problem::new(
                dir,
                "",
                format!("cannot read the data-map directory: {e}"),
                "set paths.data_map in lethe.toml to the directory holding schemas/*.toml",
            )])
        })?;
        if files.is_empty() {
            return Err(Problems(vec![Problem::new(
                dir,
                "",
                "no *.toml data-map files",
                "describe the application's tables in schemas/*.toml (see the README)",
            )]));
        }
        let mut sources = Vec::new();
        let mut problems = Vec::new();
        for f in files {
            match std::fs::read_to_string(&f) {
                Ok(t) => sources.push((f, t)),
                Err(e) => problems.push(Problem::new(
                    &f,
                    "",
                    format!("cannot read: {e}"),
                    "check the file's permissions",
                )),
            }
        }
        match Self::from_sources(&sources) {
            Ok(dm) if problems.is_empty() => Ok(dm),
            Ok(_) => Err(Problems(problems)),
            Err(p) => {
                problems.extend(p.0);
                Err(Problems(problems))
            }
        }
    }

    /// Parse and validate data-map files given as `(path, text)`.
    pub fn from_sources(sources: &[(PathBuf, String)]) -> Result<DataMap, Problems> {
        let mut problems = Vec::new();
        let mut tenants: Option<(TenantsTable, PathBuf)> = None;
        let mut tables: BTreeMap<String, Table> = BTreeMap::new();
        for (path, text) in sources {
            let file: DataMapFile = match toml::from_str(text) {
                Ok(f) => f,
                Err(e) => {
                    problems.push(Problem::new(
                        path,
                        "",
                        e.to_string().trim_end().to_string(),
                        "fix the TOML; accepted keys are listed in the README's data-map reference",
                    ));
                    continue;
                }
            };
            if let Some(t) = file.tenants {
                if let Some((_, first)) = &tenants {
                    problems.push(Problem::new(
                        path,
                        "tenants",
                        format!(
                            "tenants table declared again (first in {})",
                            first.display()
                        ),
                        "declare [tenants] in exactly one data-map file",
                    ));
                } else {
                    tenants = Some((t, path.clone()));
                }
            }
            for (name, config) in file.tables {
                let key = format!("tables.{name}");
                if !is_safe_ident(&name) {
                    problems.push(Problem::new(
                        path,
                        &key,
                        "table name must be letters, digits, `_` or `-`",
                        "rename the entry to the table's plain SQL name",
                    ));
                }
                if config.categories.is_empty() {
                    problems.push(Problem::new(
                        path,
                        format!("{key}.categories"),
                        "no category",
                        "list at least one retention category, e.g. categories = [\"messages\"]",
                    ));
                }
                if let Some(p) = &config.blob_prefix {
                    let bad = if config.blob_column.is_none() {
                        Some("blob_prefix without blob_column")
                    } else if p.matches("{tenant}").count() != 1 {
                        Some("blob_prefix must contain {tenant} exactly once")
                    } else if !p.ends_with('/') || p.starts_with('/') || p.contains("..") {
                        Some("blob_prefix must be a relative key prefix ending in `/`")
                    } else {
                        None
                    };
                    if let Some(why) = bad {
                        problems.push(Problem::new(
                            path,
                            format!("{key}.blob_prefix"),
                            why,
                            "write the per-tenant prefix of the blob keys, e.g. blob_prefix = \"photos/{tenant}/\"",
                        ));
                    }
                }
                for (col, kind) in &config.identifiers {
                    let slug = !kind.is_empty()
                        && kind.len() <= 32
                        && kind
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                    if !slug {
                        problems.push(Problem::new(
                            path,
                            format!("{key}.identifiers.{col}"),
                            format!("identifier kind {kind:?} is not a name of lower-case letters, digits and _"),
                            "name the kind like phone, email, employee_no (the name `lethe erase subject --kind` takes)",
                        ));
                    }
                }
                if let Some(prev) = tables.get(&name) {
                    problems.push(Problem::new(
                        path,
                        &key,
                        format!("table described again (first in {})", prev.file.display()),
                        "describe each table once",
                    ));
                    continue;
                }
                tables.insert(
                    name.clone(),
                    Table {
                        name,
                        file: path.clone(),
                        config,
                    },
                );
            }
        }
        let Some((tenants, tenants_file)) = tenants else {
            let file = sources.first().map(|s| s.0.clone()).unwrap_or_default();
            problems.push(Problem::new(
                &file,
                "tenants",
                "no [tenants] section in any data-map file",
                "add [tenants] with table, id_column, status_column, cancelled_at_column",
            ));
            return Err(Problems(problems));
        };
        if !problems.is_empty() {
            return Err(Problems(problems));
        }
        Ok(DataMap {
            tenants,
            tenants_file,
            tables: tables.into_values().collect(),
        })
    }

    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }
}

fn toml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<DataMap, Problems> {
        DataMap::from_sources(&[(PathBuf::from("schemas/app.toml"), text.to_string())])
    }

    const TENANTS: &str = "[tenants]\ntable = \"tenants\"\nid_column = \"id\"\nstatus_column = \"status\"\ncancelled_at_column = \"cancelled_at\"\n";

    #[test]
    fn parses_a_table() {
        let dm = load(&format!("{TENANTS}[tables.messages]\ntenant_column = \"tenant_id\"\nprimary_key = \"id\"\ncategories = [\"messages\"]\ntime_column = \"created_at\"\n")).unwrap();
        assert_eq!(dm.tables.len(), 1);
        assert_eq!(
            dm.tables[0].config.time_column.as_deref(),
            Some("created_at")
        );
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = load(&format!("{TENANTS}[tables.messages]\ntenant_column = \"tenant_id\"\nprimary_key = \"id\"\ncategories = [\"m\"]\nretain = \"90d\"\n")).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("retain") && s.contains("line 10") && s.contains("schemas/app.toml"),
            "{s}"
        );
    }

    #[test]
    fn identifier_kinds_are_declared_per_column_and_named_like_kinds() {
        let table = |ids: &str| {
            format!(
                "{TENANTS}[tables.customers]\ntenant_column = \"tenant_id\"\nprimary_key = \"id\"\ncategories = [\"c\"]\nidentifiers = {ids}\n"
            )
        };
        let dm = load(&table("{ phone = \"phone\", email = \"email\" }")).unwrap();
        let kinds = dm.identifier_kinds();
        assert_eq!(
            kinds.keys().copied().collect::<Vec<_>>(),
            ["email", "phone"]
        );
        assert_eq!(kinds["phone"], [("customers", "phone")]);
        let e = load(&table("{ phone = \"Phone Number\" }")).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("tables.customers.identifiers.phone") && s.contains("Phone Number"),
            "{s}"
        );
    }

    #[test]
    fn missing_tenants_section_is_a_problem() {
        let e =
            load("[tables.x]\ntenant_column = \"t\"\nprimary_key = \"id\"\ncategories = [\"m\"]\n")
                .unwrap_err();
        assert!(e.to_string().contains("[tenants]"));
    }
}
