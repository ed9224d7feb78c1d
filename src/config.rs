//! `lethe.toml`: where things are.
//!
//! Two stages, as in ripgrep and vector: [`ConfigFile`] is what the file says (every field
//! documented, unknown keys rejected), [`Config`] is the validated form with paths resolved
//! relative to the file's directory and `LETHE_*` environment overrides applied.
//!
//! Secrets are never written inline: the master key is a reference, `env:VAR` or `file:PATH`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::util::resolve;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error(
        "cannot read {path}: {source}\n  fix: create it (`lethe demo` writes an example) or pass --config FILE"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: {message}\n  fix: correct the TOML; the keys lethe.toml accepts are listed in the README"
    )]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var} (it overrides `{key}` of {path}): {message}\n  fix: {fix}")]
    InvalidEnv {
        var: String,
        path: PathBuf,
        key: String,
        message: String,
        fix: String,
    },
    #[error("{path}: `{key}`: {message}\n  fix: {fix}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
        fix: String,
    },
}

/// `lethe.toml` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The primary database.
    pub source: SourceSection,
    /// Where snapshots, analytics, certificates and audit records go.
    pub store: StoreSection,
    /// Where photo and recording blobs live (object keys in the data map point here).
    #[serde(default)]
    pub blobs: Option<StoreSection>,
    /// The keyring.
    #[serde(default)]
    pub keys: KeysSection,
    /// Paths to the data map, the policy and the job definitions.
    #[serde(default)]
    pub paths: PathsSection,
    /// Snapshot tuning.
    #[serde(default)]
    pub snapshot: SnapshotSection,
    /// Audit log: Object Lock for its records on S3 buckets that have it.
    #[serde(default)]
    pub audit: AuditSection,
    /// Retention execution: batch size, timeouts, the safety brake.
    #[serde(default)]
    pub retention: RetentionSection,
    /// Deletion certificates: who signs them.
    #[serde(default)]
    pub certificates: CertificatesSection,
    /// Sub-processors told of each subject erasure (GDPR Art. 19; `[[subprocessors]]`).
    #[serde(default)]
    pub subprocessors: Vec<SubprocessorSection>,
    /// Aggregate analytics: where they are published, and the default time zone.
    #[serde(default)]
    pub analytics: AnalyticsSection,
}

/// `[analytics]`.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsSection {
    /// A store of its own for the published datasets (same forms as `store.url`), so that
    /// analysts never need access to the snapshot bucket. Default: the main store.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub allow_http: Option<bool>,
    #[serde(default)]
    pub path_style: Option<bool>,
    /// The IANA zone whose days and weeks analytics uses for tenants without one of their own
    /// (`[tenants] time_zone_column` in the data map). Default `UTC`.
    #[serde(default)]
    pub time_zone: Option<String>,
}

/// `[analytics]`, validated.
#[derive(Debug, Clone)]
pub struct AnalyticsSettings {
    /// Where datasets are published (`None`: the main store).
    pub store: Option<StoreSpec>,
    pub time_zone: chrono_tz::Tz,
}

/// One `[[subprocessors]]` entry.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct SubprocessorSection {
    pub name: String,
    /// Where the signed erasure notice is POSTed.
    pub erase_url: String,
    /// The environment variable holding the auth header's value (e.g. `Bearer …`).
    #[serde(default)]
    pub auth_env: Option<String>,
    #[serde(default = "default_auth_header")]
    pub auth_header: String,
    /// Send the identifier the sub-processor needs to find the person (only over https).
    #[serde(default)]
    pub send_identifier: bool,
    /// An unanswered notice is overdue this long after the request was received (default: the
    /// request's primary due date).
    #[serde(default)]
    pub deadline: Option<String>,
    /// Per attempt.
    #[serde(default = "default_notice_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts per run (with exponential backoff between them); later runs try again.
    #[serde(default = "default_notice_attempts")]
    pub attempts: u32,
    /// Only these tenants' requests (default: every tenant's).
    #[serde(default)]
    pub tenants: Option<Vec<String>>,
}

fn default_auth_header() -> String {
    "Authorization".into()
}
fn default_notice_timeout_ms() -> u64 {
    10_000
}
fn default_notice_attempts() -> u32 {
    4
}

/// A validated sub-processor.
#[derive(Debug, Clone, PartialEq)]
pub struct Subprocessor {
    pub name: String,
    pub erase_url: url::Url,
    pub auth_env: Option<String>,
    pub auth_header: String,
    pub send_identifier: bool,
    pub deadline: Option<crate::span::Span>,
    pub timeout: std::time::Duration,
    pub attempts: u32,
    pub tenants: Option<Vec<String>>,
}

impl Subprocessor {
    /// Does it get notices of `tenant`'s requests?
    pub fn serves(&self, tenant: &str) -> bool {
        self.tenants
            .as_ref()
            .is_none_or(|t| t.iter().any(|x| x == tenant))
    }
}

/// `[certificates]`.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificatesSection {
    /// The processor named as the certificates' issuer (`iss`), e.g. your company's name.
    #[serde(default = "default_issuer")]
    pub issuer: String,
    /// How long a due row may wait for the next retention run before a retention attestation
    /// counts it as a broken promise (`lethe attest`): the schedule's period, e.g. `"1d"`.
    #[serde(default = "default_attestation_grace")]
    pub attestation_grace: String,
}

impl Default for CertificatesSection {
    fn default() -> Self {
        CertificatesSection {
            issuer: default_issuer(),
            attestation_grace: default_attestation_grace(),
        }
    }
}

impl CertificatesSection {
    /// `attestation_grace`, validated when the configuration was loaded.
    pub fn grace(&self) -> crate::span::Span {
        crate::span::Span::parse(&self.attestation_grace).unwrap_or(crate::span::Span::Days(1))
    }
}

fn default_attestation_grace() -> String {
    "1d".into()
}

fn default_issuer() -> String {
    "lethe".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSection {
    /// `sqlite://path` (relative to lethe.toml), `sqlite:///absolute/path`,
    /// `postgres://user@host:5432/db` (password from `PGPASSWORD`), or `env:VAR` (e.g. `env:DATABASE_URL`).
    pub url: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix` (or `azure://`),
    /// `file:///absolute/dir`, or a directory relative to lethe.toml. Credentials come from the
    /// cloud's standard environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`), never from this file.
    pub url: String,
    /// Endpoint instead of the cloud's own. S3: an S3-compatible service (R2, MinIO, a test
    /// server), e.g. `https://<account>.r2.cloudflarestorage.com` (default `AWS_ENDPOINT_URL`,
    /// else AWS). GCS: the JSON/XML API base URL (default `https://storage.googleapis.com`).
    /// Azure: the account URL, e.g. `https://<account>.blob.core.windows.net` (default
    /// `AZURE_STORAGE_ENDPOINT`, else that).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// S3 only: region (`auto` for R2). Default: `AWS_REGION`, else `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// Allow plain-HTTP endpoints (test servers only). Default: `AWS_ALLOW_HTTP` /
    /// `GOOGLE_ALLOW_HTTP` / `AZURE_ALLOW_HTTP`, else false.
    #[serde(default)]
    pub allow_http: Option<bool>,
    /// S3 only: path-style requests (`endpoint/bucket/key`) instead of virtual-hosted style. Default false.
    #[serde(default)]
    pub path_style: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysSection {
    /// Key provider; only `local` (a keyring file) exists today.
    #[serde(default = "default_provider")]
    pub provider: String,
    /// The keyring file holding the wrapped per-tenant data keys.
    #[serde(default = "default_keyring")]
    pub keyring: String,
    /// Reference to the master key: `file:PATH` (relative to lethe.toml) or `env:VAR` (hex).
    #[serde(default = "default_master_key")]
    pub master_key: String,
}

impl Default for KeysSection {
    fn default() -> Self {
        Self {
            provider: default_provider(),
            keyring: default_keyring(),
            master_key: default_master_key(),
        }
    }
}
fn default_provider() -> String {
    "local".into()
}
fn default_keyring() -> String {
    "keys/keyring.json".into()
}
fn default_master_key() -> String {
    "file:keys/master.key".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathsSection {
    /// Directory of data-map files (`*.toml`).
    #[serde(default = "default_data_map")]
    pub data_map: String,
    /// The retention policy.
    #[serde(default = "default_policy")]
    pub policy: String,
    /// Directory of job definitions (every `*.toml` but the policy).
    #[serde(default = "default_jobs")]
    pub jobs: String,
}

impl Default for PathsSection {
    fn default() -> Self {
        Self {
            data_map: default_data_map(),
            policy: default_policy(),
            jobs: default_jobs(),
        }
    }
}
fn default_data_map() -> String {
    "schemas".into()
}
fn default_policy() -> String {
    "jobs/retention.toml".into()
}
fn default_jobs() -> String {
    "jobs".into()
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct SnapshotSection {
    /// Rows per Parquet row group; bounds the writer's memory (default 131072).
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,
    /// Rows per Arrow record batch read from the source (default 8192).
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// Rows per Parquet file before a new `part-<n>` starts (default 4194304).
    #[serde(default = "default_file_rows")]
    pub file_rows: usize,
    /// zstd level, 1..=22 (default 1: the writer is CPU-bound; higher levels trade speed for size).
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
}

impl Default for SnapshotSection {
    fn default() -> Self {
        Self {
            row_group_rows: default_row_group_rows(),
            batch_rows: default_batch_rows(),
            file_rows: default_file_rows(),
            zstd_level: default_zstd_level(),
        }
    }
}
/// `[retention]`: how deletes are executed, and the brake on accidental mass deletion.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    /// Rows per DELETE/UPDATE batch; each batch is one short transaction (default 10000).
    #[serde(default = "default_retention_batch")]
    pub batch_rows: u64,
    /// PostgreSQL `lock_timeout` per batch, in milliseconds (default 2000); a batch that waits
    /// longer is retried, so a long-held lock delays lethe, never the application.
    #[serde(default = "default_lock_timeout")]
    pub lock_timeout_ms: u64,
    /// PostgreSQL `statement_timeout` per statement, in milliseconds (default 60000).
    #[serde(default = "default_statement_timeout")]
    pub statement_timeout_ms: u64,
    /// Brake: the largest share of a table (all tenants) one run may delete or change without an
    /// explicit `--plan-hash` confirmation (default 0.5).
    #[serde(default = "default_max_share")]
    pub max_share: f64,
    /// ...counted only for tables where the run would touch at least this many rows
    /// (default 1000; small tables churn by nature).
    #[serde(default = "default_min_rows")]
    pub brake_min_rows: u64,
    /// Brake: the most rows one run may delete or change across all tables without
    /// confirmation (default 10000000).
    #[serde(default = "default_max_rows")]
    pub max_rows: u64,
    /// Blob deletions: the most time one run spends on them (default 600 s); what is left
    /// stays in the outbox for the next run.
    #[serde(default = "default_blob_deadline")]
    pub blob_deadline_seconds: u64,
    /// Blob deletions: this many failures in a row stop them for the run (default 5): the blob
    /// store is down, and every further attempt would only wait out its retries.
    #[serde(default = "default_blob_breaker")]
    pub blob_breaker: u32,
}

impl Default for RetentionSection {
    fn default() -> Self {
        Self {
            batch_rows: default_retention_batch(),
            lock_timeout_ms: default_lock_timeout(),
            statement_timeout_ms: default_statement_timeout(),
            max_share: default_max_share(),
            brake_min_rows: default_min_rows(),
            max_rows: default_max_rows(),
            blob_deadline_seconds: default_blob_deadline(),
            blob_breaker: default_blob_breaker(),
        }
    }
}
fn default_blob_deadline() -> u64 {
    600
}
fn default_blob_breaker() -> u32 {
    5
}
fn default_retention_batch() -> u64 {
    10_000
}
fn default_lock_timeout() -> u64 {
    2_000
}
fn default_statement_timeout() -> u64 {
    60_000
}
fn default_max_share() -> f64 {
    0.5
}
fn default_min_rows() -> u64 {
    1_000
}
fn default_max_rows() -> u64 {
    10_000_000
}

fn default_row_group_rows() -> usize {
    131_072
}
fn default_batch_rows() -> usize {
    8_192
}
fn default_file_rows() -> usize {
    4_194_304
}
fn default_zstd_level() -> i32 {
    1
}

/// `[audit]`: how audit records and checkpoints are written.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// Object Lock mode for audit records and checkpoints when the store is an S3 bucket with
    /// Object Lock enabled: `GOVERNANCE` (default; a principal with
    /// `s3:BypassGovernanceRetention` can still remove them) or `COMPLIANCE` (nobody can,
    /// not even the account root, until the date passes).
    #[serde(default = "default_lock_mode")]
    pub lock_mode: String,
    /// How long each record and checkpoint stays locked after its time: `30d`, `12mo`, `1y`
    /// (default `12mo`, the audit log's keep period; longer would make expiry fail).
    #[serde(default = "default_lock_retain")]
    pub lock_retain: String,
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            lock_mode: default_lock_mode(),
            lock_retain: default_lock_retain(),
        }
    }
}
fn default_lock_mode() -> String {
    "GOVERNANCE".into()
}
fn default_lock_retain() -> String {
    "12mo".into()
}

/// The validated `[audit]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditSettings {
    /// `GOVERNANCE` or `COMPLIANCE`.
    pub lock_mode: String,
    pub lock_retain: crate::span::Span,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            lock_mode: default_lock_mode(),
            lock_retain: crate::span::Span::Months(12),
        }
    }
}

impl AuditSection {
    /// `Err((key, message, fix))` for a bad value.
    fn validate(&self) -> Result<AuditSettings, (&'static str, String, &'static str)> {
        let mode = self.lock_mode.trim().to_ascii_uppercase();
        if mode != "GOVERNANCE" && mode != "COMPLIANCE" {
            return Err((
                "audit.lock_mode",
                format!("unknown Object Lock mode {:?}", self.lock_mode),
                "write lock_mode = \"GOVERNANCE\" (removable with special permission) or \"COMPLIANCE\" (removable by nobody until the date)",
            ));
        }
        let lock_retain = crate::span::Span::parse(&self.lock_retain).map_err(|m| {
            (
                "audit.lock_retain",
                m,
                "write a duration such as \"12mo\", \"1y\" or \"400d\"",
            )
        })?;
        Ok(AuditSettings {
            lock_mode: mode,
            lock_retain,
        })
    }
}

/// Where the primary database is.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceUrl {
    Sqlite(PathBuf),
    /// A `postgres://` URL (may hold a password: show it only through `postgres::redact`).
    Postgres(String),
}

/// A validated object-store location and its settings. Credentials are never here: they come
/// from the standard `AWS_*` / `GOOGLE_*` / `AZURE_*` environment (or the instance's role).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StoreSpec {
    /// `file:///abs/dir`, `s3://bucket[/prefix]`, `gs://bucket[/prefix]` or
    /// `az://container[/prefix]` (also `azure://`).
    pub url: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub allow_http: Option<bool>,
    pub path_style: Option<bool>,
}

impl StoreSpec {
    pub fn local(url: impl Into<String>) -> StoreSpec {
        StoreSpec {
            url: url.into(),
            ..StoreSpec::default()
        }
    }
}

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub source: SourceUrl,
    /// Where snapshots and everything else lethe keeps go.
    pub store: StoreSpec,
    /// Where the application's blobs are.
    pub blobs: Option<StoreSpec>,
    pub keyring: PathBuf,
    pub master_key: SecretRef,
    pub data_map: PathBuf,
    pub policy: PathBuf,
    pub jobs: PathBuf,
    pub snapshot: SnapshotSection,
    pub audit: AuditSettings,
    pub retention: RetentionSection,
    pub certificates: CertificatesSection,
    pub subprocessors: Vec<Subprocessor>,
    pub analytics: AnalyticsSettings,
}

impl Config {
    /// Read, parse and validate `path`, then apply `LETHE_*` overrides from the environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_str(path, &text, |k| std::env::var(k).ok())
    }

    /// Parse `text` as if read from `path`; `env` looks up override variables.
    pub fn from_str(
        path: &Path,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        // Which keys came from the environment: their errors name the variable, not the file.
        let mut from_env: Vec<(&'static str, &'static str)> = Vec::new();
        for (var, key) in OVERRIDES {
            let Some(v) = env(var) else { continue };
            if v.trim().is_empty() {
                return Err(ConfigError::InvalidEnv {
                    var: var.into(),
                    path: path.to_path_buf(),
                    key: key.into(),
                    message: "is set but empty".into(),
                    fix: format!("unset {var} to use lethe.toml's value, or give it a value"),
                });
            }
            from_env.push((key, var));
            match key {
                "source.url" => file.source.url = v,
                "store.url" => file.store.url = v,
                "blobs.url" => match &mut file.blobs {
                    Some(b) => b.url = v,
                    None => {
                        file.blobs = Some(StoreSection {
                            url: v,
                            endpoint: None,
                            region: None,
                            allow_http: None,
                            path_style: None,
                        })
                    }
                },
                "keys.keyring" => file.keys.keyring = v,
                "keys.master_key" => file.keys.master_key = v,
                _ => unreachable!("every override names a key"),
            }
        }
        Self::validate(path, file, &from_env)
    }

    fn validate(
        path: &Path,
        f: ConfigFile,
        from_env: &[(&'static str, &'static str)],
    ) -> Result<Config, ConfigError> {
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        let invalid = |key: &str, message: String, fix: &str| match from_env
            .iter()
            .find(|(k, _)| *k == key)
        {
            Some((_, var)) => ConfigError::InvalidEnv {
                var: (*var).into(),
                path: path.to_path_buf(),
                key: key.into(),
                message,
                fix: fix.into(),
            },
            None => ConfigError::Invalid {
                path: path.to_path_buf(),
                key: key.into(),
                message,
                fix: fix.into(),
            },
        };

        // `env:VAR` reads the URL (which may carry a password) from the environment.
        let url = match f.source.url.strip_prefix("env:") {
            Some(var) => std::env::var(var).map_err(|_| {
                invalid(
                    "source.url",
                    format!("environment variable {var} is not set"),
                    "export it, e.g. DATABASE_URL=postgres://user@host/db",
                )
            })?,
            None => f.source.url.clone(),
        };
        let source = if let Some(rest) = url.strip_prefix("sqlite://") {
            if rest.is_empty() {
                return Err(invalid(
                    "source.url",
                    "no database path after sqlite://".into(),
                    "write sqlite://source.db (relative to lethe.toml) or sqlite:///absolute/path.db",
                ));
            }
            SourceUrl::Sqlite(resolve(&base, rest))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // The README promises passwords never sit in lethe.toml: refuse one written there
            // (from the environment — LETHE_SOURCE_URL or env:VAR — it is fine).
            let in_file = !f.source.url.starts_with("env:")
                && !from_env.iter().any(|(k, _)| *k == "source.url");
            if in_file
                && url::Url::parse(&url)
                    .ok()
                    .is_some_and(|u| u.password().is_some())
            {
                return Err(invalid(
                    "source.url",
                    "the URL carries a password; lethe.toml is no place for secrets".into(),
                    "remove it from the URL and set PGPASSWORD, or write url = \"env:DATABASE_URL\" and keep the whole URL in that variable",
                ));
            }
            SourceUrl::Postgres(url)
        } else {
            return Err(invalid(
                "source.url",
                "unknown scheme (expected sqlite:// or postgres://)".into(),
                "write sqlite://source.db or postgres://user@host:5432/database (password in PGPASSWORD)",
            ));
        };

        let spec = |key: &str, sec: &StoreSection| -> Result<StoreSpec, ConfigError> {
            let url = store_url_of(&base, &sec.url).map_err(|m| {
                invalid(
                    key,
                    m,
                    "write s3://bucket/prefix, gs://bucket/prefix, az://container/prefix, file:///absolute/dir or a directory path",
                )
            })?;
            Ok(StoreSpec {
                url,
                endpoint: sec.endpoint.clone(),
                region: sec.region.clone(),
                allow_http: sec.allow_http,
                path_style: sec.path_style,
            })
        };
        let store = spec("store.url", &f.store)?;
        let blobs = match &f.blobs {
            Some(b) => Some(spec("blobs.url", b)?),
            None => None,
        };
        let a = &f.analytics;
        let analytics = AnalyticsSettings {
            store: match &a.url {
                Some(url) => Some(spec(
                    "analytics.url",
                    &StoreSection {
                        url: url.clone(),
                        endpoint: a.endpoint.clone(),
                        region: a.region.clone(),
                        allow_http: a.allow_http,
                        path_style: a.path_style,
                    },
                )?),
                None => None,
            },
            time_zone: match a.time_zone.as_deref() {
                None => chrono_tz::UTC,
                Some(z) => z.parse().map_err(|_| {
                    invalid(
                        "analytics.time_zone",
                        format!("{z:?} is not an IANA time zone"),
                        "write a zone such as \"UTC\" or \"Asia/Jakarta\"",
                    )
                })?,
            },
        };

        if f.keys.provider != "local" {
            return Err(invalid(
                "keys.provider",
                format!("unknown provider {:?}", f.keys.provider),
                "use provider = \"local\"",
            ));
        }
        let master_key = if let Some(var) = f.keys.master_key.strip_prefix("env:") {
            SecretRef::Env(var.to_string())
        } else if let Some(p) = f.keys.master_key.strip_prefix("file:") {
            SecretRef::File(resolve(&base, p))
        } else {
            return Err(invalid(
                "keys.master_key",
                "must be a reference, not the key itself".into(),
                "write master_key = \"file:keys/master.key\" or \"env:LETHE_MASTER_KEY_HEX\"; never inline a secret",
            ));
        };

        let s = &f.snapshot;
        if s.row_group_rows == 0 || s.batch_rows == 0 || s.file_rows == 0 {
            return Err(invalid(
                "snapshot",
                "row_group_rows, batch_rows and file_rows must be > 0".into(),
                "remove the key to use the default",
            ));
        }
        if !(-7..=22).contains(&s.zstd_level) || s.zstd_level == 0 {
            return Err(invalid(
                "snapshot.zstd_level",
                format!("{} is outside -7..=22 (0 excluded)", s.zstd_level),
                "use a negative level (zstd's fast modes, -1 to -7) for speed, 1 to 9 for size",
            ));
        }

        let r = &f.retention;
        if r.batch_rows == 0
            || r.blob_deadline_seconds == 0
            || r.blob_breaker == 0
            || r.max_rows == 0
            || r.lock_timeout_ms == 0
            || r.statement_timeout_ms == 0
        {
            return Err(invalid(
                "retention",
                "batch_rows, max_rows, lock_timeout_ms, statement_timeout_ms, blob_deadline_seconds and blob_breaker must be > 0".into(),
                "remove the key to use the default",
            ));
        }
        if !(r.max_share > 0.0 && r.max_share <= 1.0) {
            return Err(invalid(
                "retention.max_share",
                format!("{} is outside (0, 1]", r.max_share),
                "write a share like 0.5 (half of a table); 1.0 turns the share brake off",
            ));
        }

        let audit = f
            .audit
            .validate()
            .map_err(|(key, message, fix)| invalid(key, message, fix))?;
        let mut subprocessors: Vec<Subprocessor> = Vec::new();
        for (i, sp) in f.subprocessors.iter().enumerate() {
            let key = |k: &str| format!("subprocessors[{i}].{k}");
            if !crate::util::is_safe_ident(&sp.name)
                || subprocessors.iter().any(|x| x.name == sp.name)
            {
                return Err(invalid(
                    &key("name"),
                    format!(
                        "{:?} is not a unique name of letters, digits, - and _",
                        sp.name
                    ),
                    "give each sub-processor its own short name, e.g. \"voicebot\"",
                ));
            }
            let erase_url = url::Url::parse(&sp.erase_url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .ok_or_else(|| {
                    invalid(
                        &key("erase_url"),
                        format!("{:?} is not an http(s) URL", sp.erase_url),
                        "write the sub-processor's erasure endpoint, e.g. \"https://api.example.com/gdpr/erase\"",
                    )
                })?;
            if sp.send_identifier && erase_url.scheme() != "https" {
                return Err(invalid(
                    &key("send_identifier"),
                    format!(
                        "{} is not https: the identifier is sent only over TLS",
                        sp.erase_url
                    ),
                    "use the https endpoint, or send_identifier = false (the notice then names the person by keyed hash only)",
                ));
            }
            if !erase_url.username().is_empty() || erase_url.password().is_some() {
                return Err(invalid(
                    &key("erase_url"),
                    "holds credentials".into(),
                    "put the credential in an environment variable and name it in auth_env",
                ));
            }
            let deadline = match &sp.deadline {
                None => None,
                Some(d) => Some(crate::span::Span::parse(d).map_err(|m| {
                    invalid(&key("deadline"), m, "write a duration such as \"7d\"")
                })?),
            };
            if sp.timeout_ms == 0 || sp.attempts == 0 || sp.attempts > 20 {
                return Err(invalid(
                    &key("attempts"),
                    format!(
                        "timeout_ms = {} and attempts = {} must be > 0 (attempts at most 20)",
                        sp.timeout_ms, sp.attempts
                    ),
                    "remove the keys to use the defaults (10000 ms, 4 attempts)",
                ));
            }
            subprocessors.push(Subprocessor {
                name: sp.name.clone(),
                erase_url,
                auth_env: sp.auth_env.clone(),
                auth_header: sp.auth_header.clone(),
                send_identifier: sp.send_identifier,
                deadline,
                timeout: std::time::Duration::from_millis(sp.timeout_ms),
                attempts: sp.attempts,
                tenants: sp.tenants.clone(),
            });
        }
        if let Err(m) = crate::span::Span::parse(&f.certificates.attestation_grace) {
            return Err(invalid(
                "certificates.attestation_grace",
                m,
                "write the period of the retention job's schedule, e.g. \"1d\" for a nightly run",
            ));
        }

        Ok(Config {
            path: path.to_path_buf(),
            source,
            store,
            blobs,
            keyring: resolve(&base, &f.keys.keyring),
            master_key,
            data_map: resolve(&base, &f.paths.data_map),
            policy: resolve(&base, &f.paths.policy),
            jobs: resolve(&base, &f.paths.jobs),
            snapshot: f.snapshot,
            audit,
            retention: f.retention,
            certificates: f.certificates,
            subprocessors,
            analytics,
        })
    }
}

/// The `LETHE_*` environment variables and the key each overrides.
pub const OVERRIDES: [(&str, &str); 5] = [
    ("LETHE_SOURCE_URL", "source.url"),
    ("LETHE_STORE_URL", "store.url"),
    ("LETHE_BLOBS_URL", "blobs.url"),
    ("LETHE_KEYS_KEYRING", "keys.keyring"),
    ("LETHE_KEYS_MASTER_KEY", "keys.master_key"),
];

/// `file:///abs`, `s3://`, `gs://`, `az://` and `azure://` URLs stay (less a trailing `/`); a
/// bare path becomes `file://` + the absolute path; other schemes are refused.
fn store_url_of(base: &Path, url: &str) -> Result<String, String> {
    if url.starts_with("file://") {
        return Ok(url.to_string());
    }
    for (scheme, what) in [
        ("s3://", "bucket"),
        ("gs://", "bucket"),
        ("az://", "container"),
        ("azure://", "container"),
    ] {
        if let Some(rest) = url.strip_prefix(scheme) {
            if rest.split('/').next().unwrap_or_default().is_empty() {
                return Err(format!("no {what} after {scheme}"));
            }
            return Ok(url.trim_end_matches('/').to_string());
        }
    }
    if url == "~" || url.starts_with("~/") {
        return Err(format!(
            "{url:?} starts with ~, which lethe does not expand (it would be a directory named ~)"
        ));
    }
    if let Some((scheme, _)) = url.split_once("://") {
        return Err(format!(
            "scheme {scheme}:// is not supported (use s3://, gs://, az://, file:// or a path)"
        ));
    }
    let p = resolve(base, url);
    let abs =
        std::path::absolute(&p).map_err(|e| format!("cannot resolve {}: {e}", p.display()))?;
    Ok(format!("file://{}", abs.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_str(Path::new("/etc/lethe/lethe.toml"), text, |_| None)
    }

    #[test]
    fn minimal_config_resolves_relative_paths() {
        let c =
            parse("[source]\nurl = \"sqlite://db.sqlite\"\n[store]\nurl = \"store\"\n").unwrap();
        assert_eq!(c.source, SourceUrl::Sqlite("/etc/lethe/db.sqlite".into()));
        assert_eq!(c.store.url, "file:///etc/lethe/store");
        assert_eq!(
            c.master_key,
            SecretRef::File("/etc/lethe/keys/master.key".into())
        );
        assert_eq!(c.policy, PathBuf::from("/etc/lethe/jobs/retention.toml"));
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = parse("[source]\nurl = \"sqlite://x\"\n[store]\nurl = \"s\"\nbucket = 1\n")
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("bucket") && msg.contains("line 5"), "{msg}");
    }

    #[test]
    fn inline_secret_is_refused() {
        let e = parse(
            "[source]\nurl = \"sqlite://x\"\n[store]\nurl = \"s\"\n[keys]\nmaster_key = \"00ff\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("keys.master_key"), "{e}");
    }

    #[test]
    fn env_overrides_the_file() {
        let c = Config::from_str(
            Path::new("/x/lethe.toml"),
            "[source]\nurl = \"sqlite://x\"\n[store]\nurl = \"s\"\n",
            |k| (k == "LETHE_STORE_URL").then(|| "file:///elsewhere".to_string()),
        )
        .unwrap();
        assert_eq!(c.store.url, "file:///elsewhere");
    }

    #[test]
    fn audit_section_defaults_and_validation() {
        let base = "[source]\nurl = \"sqlite://x\"\n[store]\nurl = \"s\"\n";
        let c = parse(base).unwrap();
        assert_eq!(c.audit, AuditSettings::default());
        assert_eq!(c.audit.lock_mode, "GOVERNANCE");
        assert_eq!(c.audit.lock_retain, crate::span::Span::Months(12));
        let c = parse(&format!(
            "{base}[audit]\nlock_mode = \"compliance\"\nlock_retain = \"400d\"\n"
        ))
        .unwrap();
        assert_eq!(c.audit.lock_mode, "COMPLIANCE");
        assert_eq!(c.audit.lock_retain, crate::span::Span::Days(400));
        let e = parse(&format!("{base}[audit]\nlock_mode = \"STRICT\"\n")).unwrap_err();
        assert!(e.to_string().contains("audit.lock_mode"), "{e}");
        let e = parse(&format!("{base}[audit]\nlock_retain = \"12 months\"\n")).unwrap_err();
        assert!(e.to_string().contains("audit.lock_retain"), "{e}");
        let e = parse(&format!("{base}[audit]\nkeep = \"1y\"\n")).unwrap_err();
        assert!(e.to_string().contains("keep"), "{e}");
    }

    #[test]
    fn cloud_store_urls_are_accepted_and_empty_buckets_refused() {
        let with = |store: &str| {
            parse(&format!(
                "[source]\nurl = \"sqlite://db.sqlite\"\n[store]\nurl = \"{store}\"\n"
            ))
        };
        for u in ["s3://b/p", "gs://b/p", "az://c/p", "azure://c/p", "gs://b"] {
            assert_eq!(with(&format!("{u}/")).unwrap().store.url, u);
        }
        for (u, what) in [("gs://", "bucket"), ("az:///p", "container")] {
            let e = with(u).unwrap_err().to_string();
            assert!(
                e.contains(&format!("no {what}")) && e.contains("gs://bucket"),
                "{e}"
            );
        }
        let e = with("ftp://x/y").unwrap_err().to_string();
        assert!(
            e.contains("ftp:// is not supported") && e.contains("az://"),
            "{e}"
        );
    }
}
