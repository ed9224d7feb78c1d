//! `lethe check`: validate lethe.toml, the data map (against the live source schema), the policy
//! and the job definitions, and report every problem at once — each with its file, the key or
//! line, and a fix — instead of stopping at the first.

use std::path::Path;

pub use crate::problem::{Problem, Problems};

use crate::config::Config;
use crate::datamap::DataMap;
use crate::jobs::Job;
use crate::policy::Policy;
use crate::source::Source;

/// Everything loaded and validated: what a run needs before it may touch anything.
pub struct Checked {
    pub config: Config,
    pub data_map: DataMap,
    pub policy: Policy,
    pub jobs: Vec<Job>,
}

/// Load every file, validate the data map against the source's live schema, and return all
/// problems found. Opening the source is read-only.
pub fn check(config_path: &Path) -> Result<Checked, crate::Error> {
    let config = Config::load(config_path)?;
    let mut problems = Vec::new();
    let data_map = DataMap::load_dir(&config.data_map)
        .map_err(|p| problems.extend(p.0))
        .ok();
    let policy = Policy::load(&config.policy)
        .map_err(|p| problems.extend(p.0))
        .ok();
    let jobs = crate::jobs::load_dir(&config.jobs, &config.policy)
        .map_err(|p| problems.extend(p.0))
        .ok();

    if let (Some(dm), Some(policy)) = (&data_map, &policy) {
        problems.extend(policy.check_against(dm));
        problems.extend(retention_problems(&config, dm, policy));
        problems.extend(analytics_problems(&config, dm, policy));
    }
    if let Some(dm) = &data_map {
        match Source::open(&config.source) {
            Ok(src) => match src.schema_problems(dm, policy.as_ref()) {
                Ok(p) => problems.extend(p),
                Err(e) => problems.push(Problem::new(
                    &config.path,
                    "source.url",
                    e.to_string(),
                    "check that the database is reachable and is the application's database",
                )),
            },
            Err(e) => problems.push(Problem::new(
                &config.path,
                "source.url",
                e.to_string(),
                "point source.url at the application's database",
            )),
        }
    }
    if !problems.is_empty() {
        return Err(crate::Error::Check(Problems(problems)));
    }
    Ok(Checked {
        config,
        data_map: data_map.unwrap(),
        policy: policy.unwrap(),
        jobs: jobs.unwrap(),
    })
}

/// `jobs/analytics.toml`, if there is one, against the data map, the policy and the live
/// schema.
fn analytics_problems(config: &Config, dm: &DataMap, policy: &Policy) -> Vec<Problem> {
    let path = crate::analytics::dataset::path_in(&config.jobs);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Vec::new();
    };
    let source = Source::open(&config.source).ok();
    let columns = |t: &str| -> Option<Vec<String>> {
        source
            .as_ref()?
            .columns(t)
            .ok()
            .flatten()
            .map(|c| c.into_iter().map(|c| c.name).collect())
    };
    match crate::analytics::dataset::parse(&path, &text, dm, policy, &columns) {
        Ok(_) => Vec::new(),
        Err(p) => p.0,
    }
}

/// `lethe check`: [`check`], then the preflight of the live data, the keys and the stores —
/// everything a plan or a run would refuse, reported at once.
pub async fn check_all(config_path: &Path) -> Result<Checked, crate::Error> {
    let c = check(config_path)?;
    let problems = crate::preflight::for_check(&c).await?;
    if !problems.is_empty() {
        return Err(crate::Error::Check(Problems(problems)));
    }
    Ok(c)
}

/// What the retention engine needs beyond a valid policy: somewhere to delete blobs from, and
/// SQL it can run on this source.
fn retention_problems(config: &Config, dm: &DataMap, policy: &Policy) -> Vec<Problem> {
    let mut out = Vec::new();
    if config.blobs.is_none()
        && let Some(t) = dm.tables.iter().find(|t| t.config.blob_column.is_some())
    {
        out.push(Problem::new(
            &config.path,
            "blobs",
            format!(
                "table {} references blobs ({}) but there is no [blobs] store: retention could delete rows and orphan their photos or recordings",
                t.name,
                t.config.blob_column.as_deref().unwrap_or_default()
            ),
            "add [blobs] url = \"s3://bucket/prefix\" (or a local directory) where the blob keys point",
        ));
    }
    if matches!(config.source, crate::config::SourceUrl::Sqlite(_)) {
        for (name, c) in &policy.categories {
            if let crate::policy::Action::Anonymize { hash: true, .. } = c.action {
                out.push(Problem::new(
                    &policy.path,
                    format!("categories.{name}.method"),
                    "method = \"hash\" needs PostgreSQL (SQLite has no SHA-256 function)",
                    "use method = \"null\" on SQLite",
                ));
            }
        }
    }
    out
}
