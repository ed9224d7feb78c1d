//! lethe keeps a multi-tenant SaaS's personal data inside the promises its privacy policy makes.
//!
//! The crate is a library with a thin binary (`src/main.rs`). Modules are domain nouns:
//!
//! - [`config`]: `lethe.toml`, where things are (source, store, keys, data map, policy, jobs);
//! - [`datamap`]: `schemas/*.toml`, what each table holds and which columns are personal data;
//! - [`policy`]: `jobs/retention.toml`, how long each category is kept;
//! - [`span`]: durations with calendar months and years, and the cutoff arithmetic;
//! - [`problem`]: what validation finds wrong, with file, key and fix;
//! - [`jobs`]: `jobs/*.toml`, job definitions (name, schedule, steps);
//! - [`keys`]: the keyring (master key, per-tenant data keys) and Parquet key material;
//! - [`source`]: the primary database (SQLite or PostgreSQL), streamed into Arrow record batches;
//! - [`store`]: object stores by URL (`file://`, `s3://`, `gs://`, `az://`);
//! - [`s3`]: what object_store cannot do on S3 (object versions, Object Lock), via aws-sdk-s3;
//! - [`snapshot`]: encrypted Parquet snapshots, their manifests, `ls`, `verify` and `restore`;
//! - [`check`]: validation of every configuration file at once;
//! - [`preflight`]: what in the live data and the stores would make a destructive run go wrong;
//! - [`lease`]: leases under `locks/`, so that two destructive runs never overlap;
//! - [`demo`]: the embedded demo (synthetic tenants in SQLite, a local store);
//! - [`pipeline`]: the one module that orders the stages;
//! - [`primary`]: the one deleter of the primary database (batched DELETE/UPDATE, blob outbox);
//! - [`blobs`]: the one deleter of the blob store;
//! - [`attest`]: signed retention attestations (`lethe attest`), from audit records and a measurement.
//!
//! Invariant held everywhere: personal data (cell values) never reaches a log line, an error
//! message or an object in plaintext. Errors name tables, columns, files and keys, never values.

pub mod analytics;
pub mod attest;
pub mod audit;
pub mod blobs;
pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
pub mod datamap;
pub mod demo;
pub mod erasure;
pub mod error;
pub mod jobs;
pub mod keys;
pub mod lease;
pub mod pipeline;
pub mod policy;
pub mod preflight;
pub mod primary;
pub mod problem;
pub mod retention;
pub mod s3;
pub mod sign;
pub mod snapshot;
pub mod source;
pub mod span;
pub mod store;
pub mod util;

pub use error::{Error, Result};
