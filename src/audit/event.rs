//! Typed audit events of the run itself (each deleter keeps the `start`/`end` events of its
//! system beside its code: `primary`, `blobs`, `snapshot::purge`, `keys`). Every field is a
//! count, a name, an id, a time or a hash — never personal data.

use serde::Serialize;

/// Closes the `start` records an interrupted run left without their `end`.
#[derive(Serialize)]
pub struct Recovery<'a> {
    pub step: &'static str,
    pub phase: &'static str,
    pub closes: &'a [u64],
    pub reason: &'static str,
}

/// Before the audit log deletes its own expired records.
#[derive(Serialize)]
pub struct ExpireStart {
    pub step: &'static str,
    pub phase: &'static str,
    pub keep: String,
    pub anchor_checkpoint: u64,
    pub records: usize,
    pub checkpoints: usize,
}

/// After the audit log deleted its own expired records.
#[derive(Serialize)]
pub struct ExpireEnd {
    pub step: &'static str,
    pub phase: &'static str,
    pub anchor_checkpoint: u64,
    pub records_deleted: u64,
    pub checkpoints_deleted: u64,
}

/// Before a retention run calls its deleters: the plan it executes.
#[derive(Serialize)]
pub struct RetentionStart<'a, T: Serialize> {
    pub step: &'static str,
    pub phase: &'static str,
    pub plan_hash: &'a str,
    pub now: &'a str,
    pub policy_version: &'a str,
    pub policy_hash: &'a str,
    pub planned: &'a T,
    pub confirmed: bool,
}

/// After a retention run: what its deleters did, and whether it verified.
#[derive(Serialize)]
pub struct RetentionEnd<'a> {
    pub step: &'static str,
    pub phase: &'static str,
    pub plan_hash: &'a str,
    pub rows: u64,
    pub blobs_deleted: u64,
    pub blobs_already_absent: u64,
    pub runs_purged: usize,
    pub keys_shredded: usize,
    /// Blob deletions left in the outbox at the end, counted.
    pub blobs_left_pending: u64,
    /// Why blob deletions stopped early (the breaker, the deadline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blobs_stopped: Option<&'a str>,
    pub verified: bool,
}

/// After a retention run: what it left, per tenant and category (oldest surviving anchor, rows
/// past their rule) — the measurement `lethe attest` signs.
#[derive(Serialize)]
pub struct Measure<'a> {
    pub step: &'static str,
    pub phase: &'static str,
    pub plan_hash: &'a str,
    pub measurement: &'a crate::retention::measure::Measurement,
}
