//! Anonymized aggregate analytics: [`dataset`], the definitions in `jobs/analytics.toml` and
//! their validation (`lethe check`); [`compute`], a tenant's table from its encrypted snapshot
//! into Polars (C Data Interface), aggregated per period (in the tenant's zone) and key, and
//! merged across tenants for platform datasets; [`privacy`], optional differential privacy
//! (bounding, discrete Laplace noise, noisy threshold, the budget ledger); [`suppress`], the
//! pure small-cell and complementary suppression for releases with margins; [`run`], the
//! `analytics` step (complete periods, frozen partitions, small cells null).

pub mod compute;
pub mod dataset;
pub mod privacy;
pub mod run;
pub mod suppress;
