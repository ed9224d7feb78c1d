//! The crate error: one enum wrapping each module's own error type.
//!
//! Every variant knows whether it is the user's configuration that is wrong (exit code 2) or the
//! job that failed / found a violation (exit code 1); the binary maps errors to exit codes with
//! [`Error::exit_code`].

use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Check(crate::problem::Problems),
    #[error(transparent)]
    Keys(#[from] crate::keys::KeyError),
    /// A key is missing while the store holds data made under it (exit 2): never recreated.
    #[error(transparent)]
    KeyMissing(#[from] crate::keys::KeyMissing),
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error(transparent)]
    Sign(#[from] crate::sign::SignError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error("{0}")]
    Usage(String),
    /// Retention refused before deleting anything (exit 1): the plan changed, the brake.
    #[error(transparent)]
    Refused(#[from] crate::retention::Refusal),
    /// The job failed (exit 1): a failed verification.
    #[error("{0}")]
    Failed(String),
}

impl Error {
    /// 2 for bad usage or bad configuration, 1 for a failed job or a found violation.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::Check(_) | Error::Usage(_) | Error::KeyMissing(_) => 2,
            Error::Keys(e) if e.is_configuration() => 2,
            Error::Source(e) if e.is_configuration() => 2,
            Error::Store(e) if e.is_configuration() => 2,
            Error::Sign(e) if e.is_configuration() => 2,
            Error::Audit(e) if e.is_configuration() => 2,
            _ => 1,
        }
    }
}
