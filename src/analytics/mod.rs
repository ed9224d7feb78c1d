//! Anonymized aggregate analytics (issue 12, in progress). Built so far: [`dataset`], the
//! definitions in `jobs/analytics.toml` and their validation (`lethe check`); [`compute`], a
//! tenant's table from its encrypted snapshot into Polars (C Data Interface) and aggregated per
//! period and key; and [`suppress`], the pure small-cell and complementary suppression every
//! release goes through; [`run`], the `analytics` step (tenant datasets, complete periods,
//! frozen partitions, small cells null). Platform datasets, tenant time zones, releases with
//! totals and the privacy-budget ledger come next.

pub mod compute;
pub mod dataset;
pub mod run;
pub mod suppress;
