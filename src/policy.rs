//! The retention policy (`jobs/retention.toml`): how long each category of personal data is
//! kept, measured from which column, and what happens after (delete, anonymize, flag); backup
//! retention; tenant termination deadlines; statutory exceptions; legal holds.
//!
//! This module parses and validates; durations and their calendar arithmetic are
//! [`crate::span`]'s ([`Span`], re-exported here). The policy's
//! content hash (sha256 of the file's bytes) is recorded with every snapshot, audit record and
//! certificate, so a reader can tell which rules were in force.
//!
//! Danger: a policy that fails to parse must delete nothing. Loading returns every problem and
//! no policy at all; there is no partially-valid policy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::datamap::DataMap;
use crate::problem::{Problem, Problems};
pub use crate::span::Span;
use crate::util::sha256_hex;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    version: String,
    #[serde(default)]
    categories: BTreeMap<String, CategoryConfig>,
    backups: Option<BackupsConfig>,
    termination: Option<TerminationConfig>,
    #[serde(default)]
    tenants: BTreeMap<String, TenantOverrideConfig>,
    #[serde(default)]
    legal_holds: Vec<LegalHold>,
    legal_holds_source: Option<LegalHoldsSource>,
    /// Rows whose tenant the tenants table does not list: `refuse` (default), `delete`, `keep`.
    #[serde(default)]
    orphans: Option<String>,
    /// Deadlines of erasure requests.
    erasure: Option<ErasureConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ErasureConfig {
    primary_within: Option<String>,
    backups_within: Option<String>,
    phone_country: Option<String>,
}

/// `[erasure]`: by when a request must be done in the primary database and in the backups
/// (defaults 30d and 90d, the DPA's), and the country calling code of phone numbers written in
/// national form.
#[derive(Debug, Clone, PartialEq)]
pub struct ErasurePolicy {
    pub primary_within: Span,
    pub backups_within: Span,
    pub phone_country: Option<String>,
}

impl Default for ErasurePolicy {
    fn default() -> Self {
        ErasurePolicy {
            primary_within: Span::Days(30),
            backups_within: Span::Days(90),
            phone_country: None,
        }
    }
}

/// What retention does with orphan rows — rows whose tenant id the tenants table does not
/// list, which no rule would otherwise ever make due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Orphans {
    /// Nothing is deleted while there are any (exit 1 naming table and tenant id).
    #[default]
    Refuse,
    /// They go as a terminated tenant's rows would (statutory exceptions and holds stay).
    Delete,
    /// They stay; plans list them as held back.
    Keep,
}

/// A category as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryConfig {
    /// A duration, or `"forever"` (kept until erased or the tenant is terminated).
    pub retain: String,
    /// Column the retention is measured from (defaults to the table's `time_column`).
    #[serde(default)]
    pub anchor: Option<String>,
    /// `delete` (default), `anonymize` or `flag`.
    #[serde(default)]
    pub action: Option<String>,
    /// For `anonymize`: the columns to clear.
    #[serde(default)]
    pub columns: Vec<String>,
    /// For `anonymize`: `null` (default) or `hash` (keyed hash).
    #[serde(default)]
    pub method: Option<String>,
    /// For `flag`: the timestamp column set when a row is flagged.
    #[serde(default)]
    pub flag_column: Option<String>,
    /// A statutory exception: the rows are kept for `retain` whatever else asks, and
    /// certificates list them with this legal basis.
    #[serde(default)]
    pub exception: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupsConfig {
    retain: String,
    #[serde(default = "one")]
    min_keep: u32,
    after_termination: String,
    #[serde(default)]
    crypto_shred_on_termination: bool,
}
fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TerminationConfig {
    primary_data_after: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantOverrideConfig {
    #[serde(default)]
    categories: BTreeMap<String, OverrideConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideConfig {
    retain: String,
}

/// A legal hold: data matching it is never deleted while the hold stands.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LegalHold {
    pub tenant: String,
    #[serde(default)]
    pub table: Option<String>,
    #[serde(default)]
    pub category: Option<String>,
    /// The data subject, as stored in the table's subject column.
    #[serde(default)]
    pub subject: Option<String>,
    pub reason: String,
    pub placed_by: String,
    #[serde(default)]
    pub placed_at: Option<String>,
}

/// A source table holding further legal holds (same fields as `[[legal_holds]]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LegalHoldsSource {
    pub table: String,
}

/// How long a category is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retain {
    For(Span),
    Forever,
}

/// What happens to a row past its retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Delete,
    Anonymize { columns: Vec<String>, hash: bool },
    Flag { column: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Category {
    pub name: String,
    pub retain: Retain,
    pub anchor: Option<String>,
    pub action: Action,
    pub exception: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Backups {
    pub retain: Span,
    pub min_keep: u32,
    pub after_termination: Span,
    pub crypto_shred_on_termination: bool,
}

/// The validated policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub path: PathBuf,
    pub version: String,
    /// `sha256:<hex>` of the file's bytes.
    pub hash: String,
    pub categories: BTreeMap<String, Category>,
    pub backups: Backups,
    pub termination_after: Span,
    /// Per-tenant retention overrides: tenant → category → retention.
    pub overrides: BTreeMap<String, BTreeMap<String, Retain>>,
    pub legal_holds: Vec<LegalHold>,
    pub legal_holds_source: Option<LegalHoldsSource>,
    pub orphans: Orphans,
    pub erasure: ErasurePolicy,
}

fn parse_retain(s: &str) -> Result<Retain, String> {
    if s == "forever" {
        Ok(Retain::Forever)
    } else {
        Span::parse(s).map(Retain::For)
    }
}

impl Policy {
    pub fn load(path: &Path) -> Result<Policy, Problems> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Problems(vec![Problem::new(path, "", format!("cannot read the policy: {e}"),
                "set paths.policy in lethe.toml to the retention policy (jobs/retention.toml); without a policy nothing is deleted")])
        })?;
        Self::from_str(path, &text)
    }

    pub fn from_str(path: &Path, text: &str) -> Result<Policy, Problems> {
        let p = |loc: &str, msg: String, fix: &str| Problem::new(path, loc, msg, fix);
        if text.trim().is_empty() {
            return Err(Problems(vec![p(
                "",
                "the policy is empty".into(),
                "write the policy (see jobs/retention.toml in the repository); an empty policy deletes nothing",
            )]));
        }
        let file: PolicyFile = toml::from_str(text).map_err(|e| {
            Problems(vec![p(
                "",
                e.to_string().trim_end().to_string(),
                "fix the TOML; nothing is deleted until the policy parses",
            )])
        })?;
        let mut problems = Vec::new();
        if file.version.trim().is_empty() {
            problems.push(p(
                "version",
                "empty".into(),
                "give the policy a version, e.g. version = \"2026-11-01\"",
            ));
        }
        if file.categories.is_empty() {
            problems.push(p(
                "categories",
                "no categories".into(),
                "define [categories.<name>] for every category the data map uses",
            ));
        }
        let mut categories = BTreeMap::new();
        for (name, c) in &file.categories {
            let key = format!("categories.{name}");
            let retain = match parse_retain(&c.retain) {
                Ok(r) => r,
                Err(m) => {
                    problems.push(p(
                        &format!("{key}.retain"),
                        m,
                        "write a duration like 30m, 1h, 90d, 12mo, 1y, or \"forever\"",
                    ));
                    continue;
                }
            };
            let action = match c.action.as_deref().unwrap_or("delete") {
                "delete" => Action::Delete,
                "anonymize" => {
                    if c.columns.is_empty() {
                        problems.push(p(
                            &format!("{key}.columns"),
                            "anonymize needs the columns to clear".into(),
                            "list them: columns = [\"customer_name\"]",
                        ));
                    }
                    let hash = match c.method.as_deref().unwrap_or("null") {
                        "null" => false,
                        "hash" => true,
                        m => {
                            problems.push(p(
                                &format!("{key}.method"),
                                format!("unknown method {m:?}"),
                                "use \"null\" or \"hash\"",
                            ));
                            false
                        }
                    };
                    Action::Anonymize {
                        columns: c.columns.clone(),
                        hash,
                    }
                }
                "flag" => match &c.flag_column {
                    Some(col) => Action::Flag {
                        column: col.clone(),
                    },
                    None => {
                        problems.push(p(&format!("{key}.flag_column"), "flag needs the column to set".into(),
                            "name a nullable timestamp column: flag_column = \"flagged_inactive_at\""));
                        continue;
                    }
                },
                a => {
                    problems.push(p(
                        &format!("{key}.action"),
                        format!("unknown action {a:?}"),
                        "use delete, anonymize or flag",
                    ));
                    continue;
                }
            };
            categories.insert(
                name.clone(),
                Category {
                    name: name.clone(),
                    retain,
                    anchor: c.anchor.clone(),
                    action,
                    exception: c.exception.clone(),
                },
            );
        }
        let backups = match &file.backups {
            None => {
                problems.push(p("backups", "missing".into(),
                    "add [backups] with retain = \"30d\", min_keep = 1, after_termination = \"90d\""));
                None
            }
            Some(b) => {
                let retain = Span::parse(&b.retain)
                    .map_err(|m| problems.push(p("backups.retain", m, "write a duration like 30d")))
                    .ok();
                let after = Span::parse(&b.after_termination)
                    .map_err(|m| {
                        problems.push(p(
                            "backups.after_termination",
                            m,
                            "write a duration like 90d",
                        ))
                    })
                    .ok();
                if b.min_keep == 0 {
                    problems.push(p(
                        "backups.min_keep",
                        "0 would allow deleting every backup of an active tenant".into(),
                        "use 1 or more",
                    ));
                }
                match (retain, after) {
                    (Some(retain), Some(after_termination)) => Some(Backups {
                        retain,
                        min_keep: b.min_keep,
                        after_termination,
                        crypto_shred_on_termination: b.crypto_shred_on_termination,
                    }),
                    _ => None,
                }
            }
        };
        let termination_after = match &file.termination {
            None => {
                problems.push(p(
                    "termination",
                    "missing".into(),
                    "add [termination] with primary_data_after = \"30d\"",
                ));
                None
            }
            Some(t) => Span::parse(&t.primary_data_after)
                .map_err(|m| {
                    problems.push(p(
                        "termination.primary_data_after",
                        m,
                        "write a duration like 30d",
                    ))
                })
                .ok(),
        };
        let mut overrides = BTreeMap::new();
        for (tenant, o) in &file.tenants {
            let mut m = BTreeMap::new();
            for (cat, oc) in &o.categories {
                let key = format!("tenants.{tenant}.categories.{cat}");
                if !file.categories.contains_key(cat) {
                    problems.push(p(
                        &key,
                        format!("category {cat:?} is not defined"),
                        "override only categories defined under [categories]",
                    ));
                }
                match parse_retain(&oc.retain) {
                    Ok(r)
                        if r != Retain::Forever
                            && file
                                .categories
                                .get(cat)
                                .is_some_and(|c| c.exception.is_some()) =>
                    {
                        problems.push(p(
                            &format!("{key}.retain"),
                            format!("category {cat:?} is a statutory exception; a tenant override may not shorten it"),
                            "remove the override (or write \"forever\" to keep longer)",
                        ));
                    }
                    Ok(r) => {
                        m.insert(cat.clone(), r);
                    }
                    Err(msg) => problems.push(p(
                        &format!("{key}.retain"),
                        msg,
                        "write a duration like 365d or \"forever\"",
                    )),
                }
            }
            overrides.insert(tenant.clone(), m);
        }
        for (i, h) in file.legal_holds.iter().enumerate() {
            if h.reason.trim().is_empty() || h.placed_by.trim().is_empty() {
                problems.push(p(
                    &format!("legal_holds[{i}]"),
                    "a legal hold needs a reason and who placed it".into(),
                    "fill in reason = \"…\" and placed_by = \"…\"",
                ));
            }
        }
        let orphans = match file.orphans.as_deref().map(str::trim) {
            None | Some("refuse") => Orphans::Refuse,
            Some("delete") => Orphans::Delete,
            Some("keep") => Orphans::Keep,
            Some(other) => {
                problems.push(p(
                    "orphans",
                    format!("unknown choice {other:?}"),
                    "write orphans = \"refuse\" (default: nothing is deleted while rows name an unknown tenant), \"delete\" or \"keep\"",
                ));
                Orphans::Refuse
            }
        };
        let mut erasure = ErasurePolicy::default();
        if let Some(e) = &file.erasure {
            for (key, text, slot) in [
                (
                    "erasure.primary_within",
                    &e.primary_within,
                    &mut erasure.primary_within,
                ),
                (
                    "erasure.backups_within",
                    &e.backups_within,
                    &mut erasure.backups_within,
                ),
            ] {
                if let Some(t) = text {
                    match Span::parse(t) {
                        Ok(s) => *slot = s,
                        Err(m) => problems.push(p(key, m, "write a duration like 30d")),
                    }
                }
            }
            if erasure.backups_within.after(chrono::DateTime::UNIX_EPOCH)
                < erasure.primary_within.after(chrono::DateTime::UNIX_EPOCH)
            {
                problems.push(p(
                    "erasure.backups_within",
                    "is shorter than primary_within: backups cannot be done before the primary data".into(),
                    "make backups_within at least primary_within (defaults 30d and 90d)",
                ));
            }
            if let Some(cc) = &e.phone_country {
                if cc.is_empty()
                    || cc.len() > 3
                    || !cc.bytes().all(|b| b.is_ascii_digit())
                    || cc.starts_with('0')
                {
                    problems.push(p(
                        "erasure.phone_country",
                        format!("{cc:?} is not a country calling code"),
                        "write the digits without +, e.g. phone_country = \"62\" for Indonesia",
                    ));
                } else {
                    erasure.phone_country = Some(cc.clone());
                }
            }
        }
        if !problems.is_empty() {
            return Err(Problems(problems));
        }
        Ok(Policy {
            erasure,
            path: path.to_path_buf(),
            orphans,
            version: file.version,
            hash: format!("sha256:{}", sha256_hex(text.as_bytes())),
            categories,
            backups: backups.expect("checked above"),
            termination_after: termination_after.expect("checked above"),
            overrides,
            legal_holds: file.legal_holds,
            legal_holds_source: file.legal_holds_source,
        })
    }

    /// Cross-check with the data map: every category a table names is defined, and every
    /// category defined is used (an unused one is usually a typo that exempts data).
    pub fn check_against(&self, dm: &DataMap) -> Vec<Problem> {
        let mut problems = Vec::new();
        for t in &dm.tables {
            for c in &t.config.categories {
                if !self.categories.contains_key(c) {
                    problems.push(Problem::new(
                        &t.file,
                        format!("tables.{}.categories", t.name),
                        format!(
                            "category {c:?} is not defined in the policy {}",
                            self.path.display()
                        ),
                        format!("add [categories.{c}] to the policy or fix the name"),
                    ));
                }
            }
        }
        for (name, c) in &self.categories {
            let tables: Vec<_> = dm
                .tables
                .iter()
                .filter(|t| t.config.categories.contains(name))
                .collect();
            if tables.is_empty() {
                problems.push(Problem::new(
                    &self.path,
                    format!("categories.{name}"),
                    "no table of the data map has this category",
                    "add it to a table's categories in schemas/ or remove it",
                ));
            }
            for t in tables {
                if c.anchor.is_none()
                    && t.config.time_column.is_none()
                    && c.retain != Retain::Forever
                {
                    problems.push(Problem::new(
                        &self.path,
                        format!("categories.{name}.anchor"),
                        format!(
                            "table {} has no time_column and the category names no anchor",
                            t.name
                        ),
                        "set anchor = \"<timestamp column>\" here or time_column in the data map",
                    ));
                }
            }
        }
        for t in &dm.tables {
            let cats: Vec<&Category> = t
                .config
                .categories
                .iter()
                .filter_map(|c| self.categories.get(c))
                .collect();
            if let Some(ex) = cats.iter().find(|c| c.exception.is_some())
                && let Some(del) = cats
                    .iter()
                    .find(|c| c.exception.is_none() && c.action == Action::Delete)
            {
                problems.push(Problem::new(
                    &t.file,
                    format!("tables.{}.categories", t.name),
                    format!(
                        "category {:?} deletes rows of a table that the statutory exception {:?} must keep",
                        del.name, ex.name
                    ),
                    "give the table only the exception category, or split the data into two tables",
                ));
            }
        }
        for (i, h) in self.legal_holds.iter().enumerate() {
            if let Some(t) = &h.table
                && dm.table(t).is_none()
            {
                problems.push(Problem::new(
                    &self.path,
                    format!("legal_holds[{i}].table"),
                    format!("no table {t:?} in the data map"),
                    "name a table of the data map",
                ));
            }
            if let Some(c) = &h.category
                && !self.categories.contains_key(c)
            {
                problems.push(Problem::new(
                    &self.path,
                    format!("legal_holds[{i}].category"),
                    format!("no category {c:?}"),
                    "name a category of the policy",
                ));
            }
        }
        problems
    }

    /// Columns of `table` this policy names (anchors, anonymized and flag columns), with their keys.
    pub fn columns_for(&self, dm: &DataMap, table: &str) -> Vec<(String, String)> {
        let Some(t) = dm.table(table) else {
            return vec![];
        };
        let mut v = Vec::new();
        for c in t
            .config
            .categories
            .iter()
            .filter_map(|c| self.categories.get(c))
        {
            let key = format!("categories.{}", c.name);
            if let Some(a) = &c.anchor {
                v.push((format!("{key}.anchor"), a.clone()));
            }
            match &c.action {
                Action::Anonymize { columns, .. } => v.extend(
                    columns
                        .iter()
                        .map(|col| (format!("{key}.columns"), col.clone())),
                ),
                Action::Flag { column } => v.push((format!("{key}.flag_column"), column.clone())),
                Action::Delete => {}
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_garbled_policies_are_refused() {
        assert!(Policy::from_str(Path::new("p.toml"), "  \n").is_err());
        let e =
            Policy::from_str(Path::new("p.toml"), "version = \"1\"\n[categories.x\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    const BASE: &str = "version = \"1\"\n[categories.x]\nretain = \"90d\"\n[backups]\nretain = \"30d\"\nafter_termination = \"90d\"\n[termination]\nprimary_data_after = \"30d\"\n";

    #[test]
    fn erasure_deadlines_default_to_the_dpa_and_bad_ones_are_named() {
        let p = Policy::from_str(Path::new("p.toml"), BASE).unwrap();
        assert_eq!(p.erasure, ErasurePolicy::default());
        assert_eq!(p.erasure.primary_within, Span::Days(30));
        let ok = format!(
            "{BASE}[erasure]\nprimary_within = \"7d\"\nbackups_within = \"30d\"\nphone_country = \"62\"\n"
        );
        let p = Policy::from_str(Path::new("p.toml"), &ok).unwrap();
        assert_eq!(p.erasure.primary_within, Span::Days(7));
        assert_eq!(p.erasure.phone_country.as_deref(), Some("62"));
        for (extra, want) in [
            ("primary_within = \"soon\"", "erasure.primary_within"),
            (
                "primary_within = \"90d\"\nbackups_within = \"30d\"",
                "shorter than primary_within",
            ),
            ("phone_country = \"+62\"", "erasure.phone_country"),
            ("phone_country = \"0\"", "erasure.phone_country"),
            ("phone_within = \"1d\"", "unknown field"),
        ] {
            let text = format!("{BASE}[erasure]\n{extra}\n");
            let e = Policy::from_str(Path::new("p.toml"), &text).unwrap_err();
            assert!(e.to_string().contains(want), "{extra}: {e}");
        }
    }
}
