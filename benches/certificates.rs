//! Certificates end to end on a local store: N erasure requests in state `final`, each with its
//! audit `end` record, one signed checkpoint over them; then `issue_due` (list the requests, look
//! for their certificates, find each anchor in the audit chain, build, sign, store create-only)
//! and `verify_stored` (read each back, check the signature, check the anchor in the store).
//!
//! usage: cargo bench --bench certificates [-- N]      (default N = 10000; N requests → 2N certificates)

use std::time::Instant;

use base64::Engine;
use lethe::audit::{Checkpoint, Record};
use lethe::erasure::request::{BackupsOutcome, PrimaryOutcome, Request, Scope, State};

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .map_or(10_000, |a| a.parse().expect("N"));
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let spec =
        lethe::config::StoreSpec::local(format!("file://{}", dir.path().join("store").display()));
    let store = lethe::store::Store::create(&spec).unwrap();
    let signer =
        lethe::sign::SigningKey::load_or_create(&dir.path().join("signing.pk8"), true).unwrap();
    rt.block_on(async {
        // Setup (not timed): requests, their end records (two per request: primary, final), a checkpoint.
        let mut prev = "sha256:genesis".to_string();
        let mut seq = 0;
        for i in 0..n {
            let id = format!("20261101T090000Z-{i:012x}");
            let r = Request {
                format: "lethe-request/1".into(),
                id: id.clone(),
                tenant: format!("t{}", i % 50),
                scope: Scope::Subject,
                kind: Some("phone".into()),
                subject: Some(format!("hmac:{i:032x}")),
                identifier: None,
                reference: None,
                source: "cli".into(),
                immediate: true,
                received_at: "2026-11-01T09:00:00Z".into(),
                due_primary: "2026-11-01T09:00:00Z".into(),
                due_backups: "2026-11-01T09:00:00Z".into(),
                state: State::Final,
                policy_version: "2026-11-01".into(),
                resolved: None,
                primary: Some(PrimaryOutcome {
                    done_at: "2026-11-01T09:00:01Z".into(),
                    plan_hash: "sha256:00".into(),
                    identifiers: Default::default(),
                    rows: [("messages".to_string(), 12)].into_iter().collect(),
                    blobs_deleted: 1,
                    blobs_already_absent: 0,
                    kept: vec![],
                    verified: "re-query returned 0 rows".into(),
                }),
                key_destroyed: None,
                backups: Some(BackupsOutcome {
                    done_at: "2026-11-01T09:00:02Z".into(),
                    plan_hash: "sha256:00".into(),
                    runs_purged: vec![],
                    runs_rewritten: vec![],
                    verified: "no run left".into(),
                }),
                rewritten: vec![],
                notices: vec![],
            };
            store
                .put(&r.key(), bytes::Bytes::from(serde_json::to_vec(&r).unwrap()))
                .await
                .unwrap();
            for (phase, state) in [("primary", "primary_done"), ("backups", "final")] {
                seq += 1;
                let rec = Record {
                    seq,
                    prev: prev.clone(),
                    at: "2026-11-01T09:00:02Z".into(),
                    event: serde_json::json!({"step": "erasure", "phase": "end", "tenant": r.tenant, "request": id, "erasure_phase": phase, "state": state}),
                };
                let bytes = serde_json::to_vec(&rec).unwrap();
                prev = lethe::audit::hash_of(&bytes);
                store
                    .put(&object_store::path::Path::from(lethe::audit::record_key(seq)), bytes.into())
                    .await
                    .unwrap();
            }
        }
        let mut cp = Checkpoint {
            seq,
            record_hash: prev.clone(),
            at: "2026-11-01T09:00:03Z".into(),
            key_id: signer.key_id(),
            signature: String::new(),
        };
        cp.signature = base64::engine::general_purpose::STANDARD.encode(signer.sign(&cp.signed_bytes()));
        store
            .put(
                &object_store::path::Path::from(lethe::audit::checkpoint_key(seq)),
                serde_json::to_vec(&cp).unwrap().into(),
            )
            .await
            .unwrap();

        // The setup's writes reach the disk before the clock starts.
        std::process::Command::new("sync").status().unwrap();
        let t = Instant::now();
        let issued = lethe::erasure::certificate::issue_due(&store, &signer, "bench", seq, chrono::Utc::now())
            .await
            .unwrap();
        let s = t.elapsed().as_secs_f64();
        assert_eq!(issued.len() as u64, 2 * n);
        println!(
            "issue: {} certificates in {s:.2} s = {:.0}/s (list {n} requests, find {} anchors, sign, store create-only)",
            issued.len(),
            issued.len() as f64 / s,
            issued.len()
        );
        std::process::Command::new("sync").status().unwrap();
        let t = Instant::now();
        let checked = lethe::erasure::certificate::verify_stored(
            &store,
            &[signer.public_jwk()],
            &lethe::sign::PublicKeys::only(&signer.public_key()),
        )
        .await
        .unwrap();
        let s = t.elapsed().as_secs_f64();
        assert!(checked.iter().all(|(_, v)| v.is_ok()));
        println!(
            "verify: {} certificates in {s:.2} s = {:.0}/s (read, signature, anchor record and checkpoint in the store)",
            checked.len(),
            checked.len() as f64 / s
        );
    });
}
