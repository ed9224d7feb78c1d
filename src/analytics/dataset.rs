//! Dataset definitions: `jobs/analytics.toml` (issue 12 groundwork). Validated against the
//! data map, the policy and the live schema: a personal column is never a group key or an
//! output, unknown columns and measures are errors naming file and key, `k` is at least 2, and
//! a dataset never reads a category retained for less than its partition period.
//!
//! ```toml
//! [datasets.messages_daily]
//! table = "messages"
//! scope = "tenant"                  # one partition per tenant (its owner's); or "platform"
//! period = "day"                    # or "week" (ISO), in the tenant's zone
//! keys = ["channel", "direction"]   # besides the period (and the tenant, for scope = "tenant")
//! subjects = ["customer_phone"]     # counted (distinct) for the threshold, never output
//! k = 10
//! measures = [
//!   { name = "messages", kind = "count" },
//!   { name = "customers", kind = "distinct", column = "customer_phone" },
//!   { name = "median_length", kind = "median", column = "body_length" },
//! ]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::datamap::{DataMap, Table};
use crate::policy::{Policy, Retain};
use crate::problem::{Problem, Problems};

/// The file, beside the job definitions.
pub const FILE: &str = "analytics.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    datasets: BTreeMap<String, DatasetFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatasetFile {
    table: String,
    scope: String,
    #[serde(default = "day")]
    period: String,
    #[serde(default)]
    keys: Vec<String>,
    subjects: Vec<String>,
    #[serde(default = "default_k")]
    k: i64,
    measures: Vec<MeasureFile>,
    #[serde(default)]
    privacy: Option<PrivacyFile>,
}

/// `[datasets.<name>.privacy]`: differential privacy (see [`crate::analytics::privacy`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrivacyFile {
    /// ε spent by each release (one partition).
    epsilon: f64,
    /// Total ε a tenant's releases (platform: the dataset's) may spend, ever.
    budget: f64,
    #[serde(default = "one")]
    max_cells_per_subject: i64,
    #[serde(default = "five")]
    max_rows_per_subject: i64,
}

fn one() -> i64 {
    1
}
fn five() -> i64 {
    5
}

fn day() -> String {
    "day".into()
}
fn default_k() -> i64 {
    10
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MeasureFile {
    name: String,
    kind: String,
    #[serde(default)]
    column: Option<String>,
    /// A duration measure: `column` minus this time column.
    #[serde(default)]
    since: Option<String>,
    /// The unit of a duration: seconds (default), minutes, hours or days.
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    first_response: Option<FirstResponse>,
    /// Only the rows where a column equals a value: `where = { direction = "inbound" }`.
    #[serde(default, rename = "where")]
    filter: Option<BTreeMap<String, toml::Value>>,
}

/// A derived duration: from a conversation's opening inbound row to the subject's next
/// outbound row, on the opener's period and keys.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FirstResponse {
    /// The column telling inbound from outbound rows.
    pub direction: String,
    pub inbound: String,
    pub outbound: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Tenant,
    Platform,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Week,
}

impl Period {
    /// How long one period is.
    pub fn duration(self) -> chrono::TimeDelta {
        match self {
            Period::Day => chrono::TimeDelta::days(1),
            Period::Week => chrono::TimeDelta::days(7),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    #[default]
    Count,
    Distinct,
    Sum,
    Mean,
    Median,
    P90,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "count" => Kind::Count,
            "distinct" => Kind::Distinct,
            "sum" => Kind::Sum,
            "mean" => Kind::Mean,
            "median" => Kind::Median,
            "p90" => Kind::P90,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Measure {
    pub name: String,
    pub kind: Kind,
    pub column: Option<String>,
    /// A duration measure: `column − since`, in `unit_micros` microseconds.
    pub since: Option<String>,
    pub first_response: Option<FirstResponse>,
    /// Only the rows where this column equals this value.
    pub filter: Option<(String, Literal)>,
    /// Microseconds per unit of a duration (seconds: 1e6).
    pub unit_micros: f64,
}

/// A value a measure's `where` compares a column with.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Text(String),
    Int(i64),
    Bool(bool),
}

/// A validated dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub name: String,
    pub table: String,
    pub scope: Scope,
    pub period: Period,
    pub keys: Vec<String>,
    pub subjects: Vec<String>,
    pub k: u64,
    pub measures: Vec<Measure>,
    /// Differential privacy, if the dataset asks for it.
    pub privacy: Option<crate::analytics::privacy::Privacy>,
}

/// Every column of `t` that holds personal data: declared personal, subject, identifier and
/// blob columns.
fn personal(t: &Table) -> Vec<&str> {
    let c = &t.config;
    c.personal_columns
        .iter()
        .chain(&c.subject_columns)
        .chain(c.identifiers.values())
        .chain(&c.blob_column)
        .map(String::as_str)
        .collect()
}

/// Parse and validate `text` (the contents of `path`). `columns` names the live columns of a
/// table (`None`: the table does not exist in the database).
pub fn parse(
    path: &Path,
    text: &str,
    dm: &DataMap,
    policy: &Policy,
    columns: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Result<Vec<Dataset>, Problems> {
    let file: File = toml::from_str(text).map_err(|e| {
        Problems(vec![Problem::new(
            path,
            "",
            e.to_string(),
            "see the README's Analytics section for the format",
        )])
    })?;
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (name, d) in file.datasets {
        let key = |k: &str| format!("datasets.{name}.{k}");
        let mut bad =
            |k: String, m: String, fix: &str| problems.push(Problem::new(path, k, m, fix));
        if !crate::util::is_safe_ident(&name) || name.starts_with('_') {
            bad(
                format!("datasets.{name}"),
                "a dataset name must be letters, digits, - and _, not starting with _ (analytics/_state is lethe's)".into(),
                "rename the dataset",
            );
            continue;
        }
        let Some(table) = dm.table(&d.table) else {
            bad(
                key("table"),
                format!("table {} is not in the data map", d.table),
                "name a table of schemas/*.toml",
            );
            continue;
        };
        let live = columns(&d.table).unwrap_or_default();
        let pii = personal(table);
        let scope = match d.scope.as_str() {
            "tenant" => Scope::Tenant,
            "platform" => Scope::Platform,
            other => {
                bad(
                    key("scope"),
                    format!("unknown scope {other:?}"),
                    "write \"tenant\" or \"platform\"",
                );
                continue;
            }
        };
        let period = match d.period.as_str() {
            "day" => Period::Day,
            "week" => Period::Week,
            other => {
                bad(
                    key("period"),
                    format!("unknown period {other:?}"),
                    "write \"day\" or \"week\"",
                );
                continue;
            }
        };
        if table.config.time_column.is_none() {
            bad(
                key("table"),
                format!(
                    "table {} has no time_column to put rows in a {:?}",
                    d.table, period
                ),
                "declare time_column for the table in the data map",
            );
        }
        if d.k < 2 {
            bad(
                key("k"),
                format!("k = {} publishes cells of a single person", d.k),
                "use k = 10 (the default) or more; never less than 2",
            );
        }
        for (i, c) in d.keys.iter().enumerate() {
            if pii.contains(&c.as_str()) {
                bad(
                    format!("{}[{i}]", key("keys")),
                    format!(
                        "{c} is a personal column of {}: it can never be a group key",
                        d.table
                    ),
                    "group by a non-personal column (channel, status, direction)",
                );
            } else if !live.iter().any(|x| x == c) {
                bad(
                    format!("{}[{i}]", key("keys")),
                    format!("table {} has no column {c}", d.table),
                    "name a column of the table",
                );
            }
        }
        if d.subjects.len() != 1 {
            bad(
                key("subjects"),
                format!(
                    "{} subject columns: the threshold k counts distinct subjects of one column (several are not supported yet)",
                    d.subjects.len()
                ),
                "name the one column that identifies the person (e.g. customer_phone)",
            );
        }
        for (i, c) in d.subjects.iter().enumerate() {
            if !live.iter().any(|x| x == c) {
                bad(
                    format!("{}[{i}]", key("subjects")),
                    format!("table {} has no column {c}", d.table),
                    "name a column of the table",
                );
            }
        }
        let mut measures = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        for (i, m) in d.measures.iter().enumerate() {
            let mk = format!("{}[{i}]", key("measures"));
            if !crate::util::is_safe_ident(&m.name)
                || m.name.starts_with("__")
                || m.name == "dt"
                || m.name == "tenant"
                || d.keys.contains(&m.name)
                || !names.insert(m.name.clone())
            {
                bad(
                    format!("{mk}.name"),
                    format!(
                        "{:?} is not a usable output name (letters, digits, _; not dt, tenant, a key or another measure's name)",
                        m.name
                    ),
                    "give each measure its own name, e.g. messages",
                );
            }
            let Some(kind) = Kind::parse(&m.kind) else {
                bad(
                    format!("{mk}.kind"),
                    format!("unknown measure {:?}", m.kind),
                    "use count, distinct, sum, mean, median or p90",
                );
                continue;
            };
            let has = |c: &str| live.iter().any(|x| x == c);
            let unit_micros = match m.unit.as_deref() {
                None | Some("seconds") => 1e6,
                Some("minutes") => 60e6,
                Some("hours") => 3600e6,
                Some("days") => 86_400e6,
                Some(other) => {
                    bad(
                        format!("{mk}.unit"),
                        format!("unknown unit {other:?}"),
                        "use seconds, minutes, hours or days",
                    );
                    1e6
                }
            };
            let filter = match &m.filter {
                None => None,
                Some(w) => {
                    let wk = format!("{mk}.where");
                    let mut it = w.iter();
                    match (it.next(), it.next()) {
                        (Some((c, v)), None) => {
                            let lit = match v {
                                toml::Value::String(s) => Some(Literal::Text(s.clone())),
                                toml::Value::Integer(i) => Some(Literal::Int(*i)),
                                toml::Value::Boolean(b) => Some(Literal::Bool(*b)),
                                _ => None,
                            };
                            if pii.contains(&c.as_str()) || !has(c) {
                                bad(
                                    format!("{wk}.{c}"),
                                    format!("table {} has no non-personal column {c}", d.table),
                                    "filter on a non-personal column (direction, status, channel)",
                                );
                                None
                            } else if lit.is_none() {
                                bad(
                                    format!("{wk}.{c}"),
                                    "compare with a string, an integer or a boolean".into(),
                                    "write e.g. where = { direction = \"inbound\" }",
                                );
                                None
                            } else {
                                lit.map(|l| (c.clone(), l))
                            }
                        }
                        _ => {
                            bad(
                                wk,
                                "where takes exactly one column = value".into(),
                                "write e.g. where = { direction = \"inbound\" }",
                            );
                            None
                        }
                    }
                }
            };
            let derived = m.since.is_some() || m.first_response.is_some();
            if m.unit.is_some() && !derived {
                bad(
                    format!("{mk}.unit"),
                    "a unit applies to durations only (since or first_response)".into(),
                    "remove unit, or add since = \"<start time column>\"",
                );
            }
            if derived && !matches!(kind, Kind::Sum | Kind::Mean | Kind::Median | Kind::P90) {
                bad(
                    format!("{mk}.kind"),
                    format!("{} of a duration", m.kind),
                    "use sum, mean, median or p90 for durations",
                );
            }
            if let Some(f) = &m.first_response {
                if m.column.is_some() || m.since.is_some() {
                    bad(
                        format!("{mk}.first_response"),
                        "first_response takes no column or since: it runs from the opener's time to the answer's".into(),
                        "remove column and since",
                    );
                }
                if pii.contains(&f.direction.as_str()) || !has(&f.direction) {
                    bad(
                        format!("{mk}.first_response.direction"),
                        format!(
                            "table {} has no non-personal column {}",
                            d.table, f.direction
                        ),
                        "name the column telling inbound from outbound (e.g. direction)",
                    );
                }
            } else {
                match (&m.column, kind) {
                    (None, Kind::Count) => {}
                    (None, _) => bad(
                        format!("{mk}.column"),
                        format!("{} needs a column", m.kind),
                        "name the column it is computed over",
                    ),
                    (Some(c), _) if !has(c) => bad(
                        format!("{mk}.column"),
                        format!("table {} has no column {c}", d.table),
                        "name a column of the table",
                    ),
                    // Counting distinct people is what a subject column is for; summing,
                    // averaging or ranking a personal column publishes something of theirs.
                    (Some(c), Kind::Distinct)
                        if pii.contains(&c.as_str()) && !d.subjects.contains(c) =>
                    {
                        bad(
                            format!("{mk}.column"),
                            format!(
                                "{c} is a personal column of {}; only a subject column may be counted",
                                d.table
                            ),
                            "count distinct over a column listed in subjects",
                        )
                    }
                    (Some(c), k)
                        if k != Kind::Distinct
                            && pii.contains(&c.as_str())
                            && !(k == Kind::Count && d.subjects.contains(c)) =>
                    {
                        bad(
                            format!("{mk}.column"),
                            format!(
                                "{c} is a personal column of {}: it can never be an output",
                                d.table
                            ),
                            "aggregate a non-personal column",
                        )
                    }
                    _ => {}
                }
                if let Some(since) = &m.since
                    && (pii.contains(&since.as_str()) || !has(since))
                {
                    bad(
                        format!("{mk}.since"),
                        format!("table {} has no non-personal column {since}", d.table),
                        "name the time column the duration starts at (e.g. created_at)",
                    );
                }
            }
            // Platform cells merge tenants' partials: medians and percentiles do not merge,
            // and distinct values merge only for the (hashed) subject.
            if scope == Scope::Platform {
                let ok = match kind {
                    Kind::Count | Kind::Sum | Kind::Mean => true,
                    Kind::Distinct => m.column.as_ref().is_some_and(|c| d.subjects.contains(c)),
                    Kind::Median | Kind::P90 => false,
                };
                if !ok {
                    bad(
                        format!("{mk}.kind"),
                        format!(
                            "{} is not computed platform-wide (cells merge every tenant's partial counts and sums)",
                            m.kind
                        ),
                        "use count, sum, mean, or distinct over the subject column; or scope = \"tenant\"",
                    );
                }
            }
            measures.push(Measure {
                name: m.name.clone(),
                kind,
                column: m.column.clone(),
                since: m.since.clone(),
                first_response: m.first_response.clone(),
                filter,
                unit_micros,
            });
        }
        let privacy = match &d.privacy {
            None => None,
            Some(p) => {
                let pk = |k: &str| format!("datasets.{name}.privacy.{k}");
                let micros = |v: f64| (v * 1e6).round();
                let mut ok = true;
                if !(p.epsilon.is_finite() && p.epsilon > 0.0 && p.epsilon <= 10.0)
                    || micros(p.epsilon) < 1.0
                {
                    ok = false;
                    bad(
                        pk("epsilon"),
                        format!("epsilon = {} is not in (0, 10]", p.epsilon),
                        "spend a small epsilon per release, e.g. 0.5",
                    );
                }
                if !(p.budget.is_finite() && p.budget >= p.epsilon && p.budget <= 1e6) {
                    ok = false;
                    bad(
                        pk("budget"),
                        format!(
                            "budget = {} must be at least epsilon ({}) and finite",
                            p.budget, p.epsilon
                        ),
                        "give the total epsilon all releases may spend, e.g. 30 for 60 releases of 0.5",
                    );
                }
                for (k, v) in [
                    ("max_cells_per_subject", p.max_cells_per_subject),
                    ("max_rows_per_subject", p.max_rows_per_subject),
                ] {
                    if !(1..=1000).contains(&v) {
                        ok = false;
                        bad(
                            pk(k),
                            format!("{k} = {v} is not in 1..=1000"),
                            "bound what one person contributes to a release, e.g. 1 cell and 5 rows",
                        );
                    }
                }
                for (i, m) in d.measures.iter().enumerate() {
                    let plain_count = m.kind == "count" && m.column.is_none();
                    let subjects = m.kind == "distinct"
                        && m.column.as_ref().is_some_and(|c| d.subjects.contains(c));
                    if !(plain_count || subjects)
                        || m.since.is_some()
                        || m.first_response.is_some()
                        || m.filter.is_some()
                    {
                        ok = false;
                        bad(
                            format!("{}[{i}].kind", key("measures")),
                            format!("{} is not published with differential privacy", m.kind),
                            "with [privacy], use count (of rows) and distinct (of the subject column) only",
                        );
                    }
                }
                ok.then(|| crate::analytics::privacy::Privacy {
                    epsilon_micros: micros(p.epsilon) as u64,
                    budget_micros: micros(p.budget) as u64,
                    max_cells_per_subject: p.max_cells_per_subject as u64,
                    max_rows_per_subject: p.max_rows_per_subject as u64,
                })
            }
        };
        // A day's partition is computed once the day is complete; a category kept for less
        // than the partition period would be gone (or going) before it is read.
        let need = period.duration();
        for cname in &table.config.categories {
            if let Some(cat) = policy.categories.get(cname)
                && let Retain::For(span) = cat.retain
                && span
                    .after(chrono::DateTime::UNIX_EPOCH)
                    .is_some_and(|end| end - chrono::DateTime::UNIX_EPOCH < need)
            {
                bad(
                    key("table"),
                    format!(
                        "table {} holds category {cname}, retained {span}: less than one {:?} partition",
                        d.table, period
                    ),
                    "aggregate a table whose categories are kept for longer than the partition period",
                );
            }
        }
        out.push(Dataset {
            name,
            table: d.table,
            scope,
            period,
            keys: d.keys,
            subjects: d.subjects,
            k: d.k.max(0) as u64,
            measures,
            privacy,
        });
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(Problems(problems))
    }
}

/// `jobs/analytics.toml`, if the jobs directory has one.
pub fn path_in(jobs: &Path) -> PathBuf {
    jobs.join(FILE)
}
