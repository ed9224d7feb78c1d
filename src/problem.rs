//! `Problem` and `Problems`: what validation finds wrong — one thing in one file, with where in
//! it and how to fix it. Every loader (config, data map, policy, jobs) and every check (the live
//! schema, the preflight) speaks in these, so `lethe check` can report everything at once; this
//! module depends on nothing else in the crate, so none of them depends on another for it.

use std::fmt;
use std::path::{Path, PathBuf};

/// One thing wrong with one file.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub file: PathBuf,
    /// The key path (`tables.messages.time_column`) or `line N`.
    pub location: String,
    pub message: String,
    pub fix: String,
}

impl Problem {
    pub fn new(
        file: &Path,
        location: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Problem {
            file: file.to_path_buf(),
            location: location.into(),
            message: message.into(),
            fix: fix.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.location.is_empty() {
            write!(
                f,
                "{}: {}\n  fix: {}",
                self.file.display(),
                self.message,
                self.fix
            )
        } else {
            write!(
                f,
                "{}: {}: {}\n  fix: {}",
                self.file.display(),
                self.location,
                self.message,
                self.fix
            )
        }
    }
}

/// A non-empty list of problems; the error of every configuration loader.
#[derive(Debug, Clone, PartialEq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} configuration problem{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.0 {
            writeln!(f, "- {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}
