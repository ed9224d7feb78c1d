//! Anonymized aggregate analytics (issue 12, in progress). Built so far: [`dataset`], the
//! definitions in `jobs/analytics.toml` and their validation (`lethe check`), and
//! [`suppress`], the pure small-cell and complementary suppression every release goes
//! through. The Polars aggregation, the writer, the `analytics` step and the privacy-budget
//! ledger come next.

pub mod dataset;
pub mod suppress;
