//! Golden certificate payloads, one per outcome: what a controller's tooling parses must not
//! change by accident. The payloads are built from fixed requests and a fixed anchor; a change
//! to the format shows up as a diff against `tests/golden/certificate-*.json`.
//!
//! Regenerate after an intended change: `LETHE_REGENERATE_GOLDEN=1 cargo test --test certificate_golden`
//! (then review the diff).

use lethe::audit::Checkpoint;
use lethe::erasure::certificate::{Anchor, Phase, payload};
use lethe::erasure::request::{
    BackupsOutcome, KeptRows, KeyDestroyed, PrimaryOutcome, Request, Scope, State,
};
use lethe::snapshot::rewrite::{FileChange, Rewritten};

fn anchor() -> Anchor {
    Anchor {
        record_seq: 41,
        record_hash: format!("sha256:{}", "ab".repeat(32)),
        record_kind: "end",
        checkpoint: Checkpoint {
            seq: 42,
            record_hash: format!("sha256:{}", "cd".repeat(32)),
            at: "2026-11-02T01:00:05Z".into(),
            key_id: "ed25519:0123456789abcdef".into(),
            signature: "c2lnbmF0dXJl".into(),
        },
    }
}

fn primary(rows: &[(&str, u64)], blobs: u64, kept: Vec<KeptRows>) -> PrimaryOutcome {
    PrimaryOutcome {
        done_at: "2026-11-02T01:00:03Z".into(),
        plan_hash: format!("sha256:{}", "ef".repeat(32)),
        identifiers: [("email".to_string(), 1), ("phone".to_string(), 1)]
            .into_iter()
            .collect(),
        rows: rows.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
        blobs_deleted: blobs,
        blobs_already_absent: 0,
        kept,
        verified: "re-query of every table returned 0 rows of the person outside the exceptions; 0 blob deletions failed (each deleted blob: HEAD returned 404)".into(),
    }
}

fn subject(state: State) -> Request {
    Request {
        format: "lethe-request/1".into(),
        id: "20261101T090000Z-0123456789ab".into(),
        tenant: "kopi-senja".into(),
        scope: Scope::Subject,
        kind: Some("phone".into()),
        subject: Some("hmac:00112233445566778899aabbccddeeff".into()),
        identifier: None,
        reference: Some("DSR-2026-0042".into()),
        source: "cli".into(),
        immediate: false,
        received_at: "2026-11-01T09:00:00Z".into(),
        due_primary: "2026-12-01T09:00:00Z".into(),
        due_backups: "2027-01-30T09:00:00Z".into(),
        state,
        policy_version: "2026-11-01".into(),
        resolved: None,
        primary: None,
        key_destroyed: None,
        backups: None,
        rewritten: Vec::new(),
        notices: Vec::new(),
    }
}

fn cases() -> Vec<(&'static str, Request, Phase)> {
    // Erased everywhere: database, photos, and a backup rewritten.
    let mut erased = subject(State::Final);
    erased.primary = Some(primary(&[("customers", 1), ("messages", 17)], 2, vec![]));
    erased.rewritten = vec![Rewritten {
        run_id: "20261031T010000Z-aaaa".into(),
        files: vec![FileChange {
            table: "messages".into(),
            old_path:
                "snapshots/tenant=kopi-senja/run=20261031T010000Z-aaaa/messages/part-0.parquet"
                    .into(),
            old_sha256: "11".repeat(32),
            new_path:
                "snapshots/tenant=kopi-senja/run=20261031T010000Z-aaaa/messages/part-1.parquet"
                    .into(),
            new_sha256: "22".repeat(32),
            rows_dropped: 17,
        }],
        rows_dropped: 17,
        files_opened: 1,
        objects_purged: 2,
    }];
    erased.backups = Some(BackupsOutcome {
        done_at: "2026-11-03T01:00:04Z".into(),
        plan_hash: format!("sha256:{}", "12".repeat(32)),
        runs_purged: vec![],
        runs_rewritten: vec!["20261031T010000Z-aaaa".into()],
        verified: "every snapshot run taken before the erasure was rewritten (a second scan found none of the person's rows) or purged by backup retention".into(),
    });
    // A legal hold on some of their messages; billing records are statutory.
    let mut held = subject(State::PrimaryDone);
    held.primary = Some(primary(
        &[("customers", 1), ("messages", 5)],
        0,
        vec![
            KeptRows {
                table: "messages".into(),
                rows: 12,
                reason: "legal hold lh-2026-07 (litigation: Siregar v. Kopi Senja)".into(),
            },
            KeptRows {
                table: "billing_records".into(),
                rows: 3,
                reason: "statutory exception (category billing_records): billing records required by tax law, kept 10 years".into(),
            },
        ],
    ));
    // Everything they have is held: nothing erased.
    let mut not_erased = subject(State::PrimaryDone);
    not_erased.primary = Some(primary(
        &[("customers", 0), ("messages", 0)],
        0,
        vec![KeptRows {
            table: "messages".into(),
            rows: 9,
            reason: "legal hold on the subject lh-2026-09".into(),
        }],
    ));
    // A tenant leaves: key destroyed, rows gone (statutory kept), runs purged.
    let mut tenant = subject(State::Final);
    tenant.scope = Scope::Tenant;
    tenant.kind = None;
    tenant.subject = None;
    tenant.reference = Some("offboarding-2026-11".into());
    tenant.primary = Some(primary(
        &[("customers", 80), ("messages", 266)],
        39,
        vec![KeptRows {
            table: "billing_records".into(),
            rows: 48,
            reason: "statutory exception (category billing_records): billing records required by tax law, kept 10 years".into(),
        }],
    ));
    tenant.key_destroyed = Some(KeyDestroyed {
        at: "2026-11-01T09:00:02Z".into(),
        key_id: Some("dk-kopi-senja-1".into()),
        verified:
            "the keyring holds no data key for the tenant: no snapshot copy of it can be decrypted"
                .into(),
    });
    tenant.backups = Some(BackupsOutcome {
        done_at: "2026-12-31T01:00:04Z".into(),
        plan_hash: format!("sha256:{}", "34".repeat(32)),
        runs_purged: vec![
            "20261031T010000Z-aaaa".into(),
            "20261101T010000Z-bbbb".into(),
        ],
        runs_rewritten: vec![],
        verified: "a listing of the tenant's snapshot prefix found no run left".into(),
    });
    vec![
        ("erased", erased, Phase::Final),
        ("erased_with_exceptions", held, Phase::Primary),
        ("not_erased", not_erased, Phase::Primary),
        ("tenant_crypto_erase", tenant, Phase::Final),
    ]
}

#[test]
fn certificate_payloads_match_their_golden_files() {
    let regenerate = std::env::var("LETHE_REGENERATE_GOLDEN").as_deref() == Ok("1");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    for (name, r, phase) in cases() {
        let p = payload(&r, phase, &anchor(), "PT Lethe Processor");
        let text = serde_json::to_string_pretty(&p).unwrap() + "\n";
        let path = dir.join(format!("certificate-{name}.json"));
        if regenerate {
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (LETHE_REGENERATE_GOLDEN=1 writes it)",
                path.display()
            )
        });
        assert_eq!(
            text,
            want,
            "{name}: the payload differs from {}",
            path.display()
        );
        let outcome = name
            .strip_prefix("tenant_crypto_erase")
            .map_or(name, |_| "erased_with_exceptions");
        assert_eq!(p["outcome"], outcome, "{name}");
    }
}
