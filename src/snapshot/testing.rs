//! Test fixtures shared by the crate's unit tests and the integration tests (not part of the
//! API): a committed run made of placeholder part files, for purge and listing tests that need
//! no real Parquet.

use bytes::Bytes;

use super::manifest::{FORMAT, FileEntry, Manifest, TableEntry};
use super::{manifest_key, part_key};
use crate::store::Store;

/// A committed run of `tenant`: `parts` placeholder files of table `messages` (their bytes name
/// `tag`, so two writes of one run differ) and an unauthenticated manifest listing them, created
/// and committed at `created_at` (RFC 3339).
pub async fn fake_run(
    store: &Store,
    tenant: &str,
    run: &str,
    parts: usize,
    tag: &str,
    created_at: &str,
) {
    let mut files = Vec::new();
    for i in 0..parts {
        let key = part_key(tenant, run, "messages", i);
        let body = Bytes::from(format!("{tag}: part {i} of {tenant}/{run}"));
        files.push(FileEntry {
            table: "messages".into(),
            path: key.to_string(),
            rows: 1,
            bytes: body.len() as u64,
            sha256: crate::util::sha256_hex(&body),
            schema_fingerprint: "sha256:x".into(),
        });
        store.put(&key, body).await.expect("put a fixture part");
    }
    let mut m = Manifest {
        subject_index: None,
        format: FORMAT.into(),
        run_id: run.into(),
        tenant: tenant.into(),
        created_at: created_at.into(),
        committed_at: created_at.into(),
        tool_version: tag.into(),
        policy_version: "1".into(),
        policy_hash: "sha256:x".into(),
        key_id: "dek-x".into(),
        master_key_id: "lethe-master-x".into(),
        tables: vec![TableEntry {
            table: "messages".into(),
            rows: parts as u64,
            schema_fingerprint: "sha256:x".into(),
        }],
        files,
        audit_head: None,
        checksum: String::new(),
        mac: String::new(),
    };
    store
        .put(
            &manifest_key(tenant, run),
            Bytes::from(m.to_bytes_unauthenticated()),
        )
        .await
        .expect("put a fixture manifest");
}
