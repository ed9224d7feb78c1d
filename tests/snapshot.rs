//! Snapshot guarantees, end to end on the embedded default (SQLite + local store):
//! confidentiality in the store, tenant isolation, commit semantics, tamper detection,
//! faithful restore.

mod common;

use std::fs::File;

use common::{demo, files};
use lethe::config::Config;
use lethe::keys::Keyring;
use lethe::snapshot::read::{self, RestoreFormat};
use lethe::store::Store;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

async fn snapshot(d: &common::Demo) -> lethe::pipeline::SnapshotRun {
    let run = lethe::pipeline::run_snapshot(&d.config, &[]).await.unwrap();
    assert!(run.failed.is_empty(), "{:?}", run.failed);
    run
}

fn open(d: &common::Demo) -> (Config, Store, Keyring) {
    let c = Config::load(&d.config).unwrap();
    let store = Store::open(&c.store).unwrap();
    let kr = Keyring::open(&c.keyring, &c.master_key, false).unwrap();
    (c, store, kr)
}

#[tokio::test(flavor = "multi_thread")]
async fn no_personal_data_in_plaintext_anywhere_in_the_store() {
    let d = demo(3, 120);
    snapshot(&d).await;
    let needles = common::personal_needles(&d.db());
    assert!(needles.len() > 500, "too few needles: {}", needles.len());

    // Positive control: the same scan finds them in a plaintext restore.
    let (_, store, kr) = open(&d);
    let out = d.dir.join("plain");
    read::restore(
        &store,
        &kr,
        "kopi-senja",
        None,
        &out,
        RestoreFormat::Csv,
        &["customers".into()],
        &common::ledger_context(&d.config),
    )
    .await
    .unwrap();
    let plain: Vec<u8> = files(&out).into_values().flatten().collect();
    assert!(
        !common::found_in(&plain, &needles).is_empty(),
        "the scan cannot see plaintext; the test would prove nothing"
    );

    let objects = files(&d.store());
    assert!(objects.len() > 40, "{} objects", objects.len());
    for (path, bytes) in objects {
        let hits = common::found_in(&bytes, &needles);
        assert!(
            hits.is_empty(),
            "{} holds personal data in plaintext ({} hits)",
            path.display(),
            hits.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenants_file_cannot_be_read_with_another_tenants_key_or_without_keys() {
    let d = demo(2, 60);
    let run = snapshot(&d).await;
    let (_, _, kr) = open(&d);
    let (a, b) = (&run.done[0].manifest, &run.done[1].manifest);
    let file_of_a = d
        .store()
        .join(&a.files.iter().find(|f| f.table == "messages").unwrap().path);
    let key_a = kr.data_key(&a.tenant).unwrap();
    let key_b = kr.data_key(&b.tenant).unwrap();

    let ok = read::open_reader(File::open(&file_of_a).unwrap(), Some(&key_a), "a").unwrap();
    assert!(ok.metadata().file_metadata().num_rows() > 0);

    let e = read::open_reader(File::open(&file_of_a).unwrap(), Some(&key_b), "a")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("does not decrypt with this tenant's data key"),
        "{e}"
    );
    let e = read::open_reader(File::open(&file_of_a).unwrap(), None, "a")
        .unwrap_err()
        .to_string();
    assert!(e.contains("encrypted and no key was given"), "{e}");

    // And with the plain parquet API, no options at all: refused too.
    assert!(ParquetRecordBatchReaderBuilder::try_new(File::open(&file_of_a).unwrap()).is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_that_crashed_before_commit_is_invisible_to_ls_and_restore_and_reported_by_verify() {
    let d = demo(2, 60);
    snapshot(&d).await;
    // Break one tenant's data so its next run fails in the middle: earlier tables are already
    // uploaded when the reader stops, and no manifest is written.
    let conn = rusqlite::Connection::open(d.db()).unwrap();
    conn.execute("UPDATE messages SET created_at = 'not a time' WHERE id = (SELECT min(id) FROM messages WHERE tenant_id = 'kopi-senja')", []).unwrap();
    drop(conn);
    let run = lethe::pipeline::run_snapshot(&d.config, &[]).await.unwrap();
    assert_eq!(run.failed.len(), 1, "{:?}", run.failed);
    let (tenant, err) = &run.failed[0];
    assert_eq!(tenant, "kopi-senja");
    assert!(
        err.contains("messages") && err.contains("created_at") && !err.contains("not a time"),
        "{err}"
    );

    let (_, store, kr) = open(&d);
    let runs = read::runs(&store, "kopi-senja").await.unwrap();
    assert_eq!(runs.len(), 2);
    let crashed = runs
        .iter()
        .find(|r| r.manifest.is_none())
        .expect("an uncommitted run");
    assert!(
        !files(&d.store().join(format!(
            "snapshots/tenant=kopi-senja/run={}",
            crashed.run_id
        )))
        .is_empty(),
        "the crashed run left files"
    );

    let committed = read::committed(&store, "kopi-senja").await.unwrap();
    assert_eq!(committed.len(), 1);
    assert_ne!(committed[0].run_id, crashed.run_id);
    let (code, out, _) = common::lethe(&[
        "--config",
        d.config.to_str().unwrap(),
        "snapshot",
        "ls",
        "--tenant",
        "kopi-senja",
    ]);
    assert_eq!(code, 0);
    assert!(
        !out.contains(&crashed.run_id) && out.contains(&committed[0].run_id),
        "{out}"
    );

    let e = read::restore(
        &store,
        &kr,
        "kopi-senja",
        Some(&crashed.run_id),
        &d.dir.join("r"),
        RestoreFormat::Parquet,
        &[],
        &common::ledger_context(&d.config),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("no committed snapshot run"), "{e}");
    let o = read::restore(
        &store,
        &kr,
        "kopi-senja",
        None,
        &d.dir.join("r2"),
        RestoreFormat::Parquet,
        &[],
        &common::ledger_context(&d.config),
    )
    .await
    .unwrap();
    assert_eq!(o.run_id, committed[0].run_id);

    let report = read::verify(&store, &kr, &[]).await.unwrap();
    assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
    assert!(
        report.findings[0].message.contains("uncommitted")
            && report.findings[0].key.contains(&crashed.run_id)
    );
    let (code, out, _) =
        common::lethe(&["--config", d.config.to_str().unwrap(), "snapshot", "verify"]);
    assert_eq!(code, 1);
    assert!(out.contains(&crashed.run_id), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_flipped_byte_in_any_snapshot_file_fails_verify_naming_the_file() {
    let d = demo(2, 60);
    let run = snapshot(&d).await;
    let (_, store, kr) = open(&d);
    assert!(
        read::verify(&store, &kr, &[])
            .await
            .unwrap()
            .findings
            .is_empty()
    );
    let m = &run.done[0].manifest;
    let mut keys: Vec<String> = m.files.iter().map(|f| f.path.clone()).collect();
    keys.push(format!(
        "snapshots/tenant={}/run={}/_manifest.json",
        m.tenant, m.run_id
    ));
    for (i, key) in keys.iter().enumerate() {
        let path = d.store().join(key);
        let original = std::fs::read(&path).unwrap();
        let mut bytes = original.clone();
        let at = (i * 7919 + 13) % bytes.len();
        bytes[at] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        let report = read::verify(&store, &kr, &[]).await.unwrap();
        assert!(
            !report.findings.is_empty() && report.findings.iter().all(|f| f.key == *key),
            "flip at {at} of {key}: {:?}",
            report.findings
        );
        if i == 0 {
            let (code, out, _) =
                common::lethe(&["--config", d.config.to_str().unwrap(), "snapshot", "verify"]);
            assert_eq!(code, 1);
            assert!(out.contains(key.as_str()), "{out}");
        }
        std::fs::write(&path, &original).unwrap();
    }
    // A missing file is named too.
    let key = &keys[0];
    std::fs::remove_file(d.store().join(key)).unwrap();
    let report = read::verify(&store, &kr, &[]).await.unwrap();
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.key == *key && f.message.contains("missing")),
        "{:?}",
        report.findings
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_round_trips_rows_and_types() {
    let d = demo(2, 90);
    snapshot(&d).await;
    let (_, store, kr) = open(&d);
    let out = d.dir.join("restored");
    let o = read::restore(
        &store,
        &kr,
        "klinik-sehat",
        None,
        &out,
        RestoreFormat::Parquet,
        &[],
        &common::ledger_context(&d.config),
    )
    .await
    .unwrap();
    assert_eq!(o.files.len(), 15);
    common::assert_restore_equals_sqlite(&o.files, &d.db(), "klinik-sehat");

    // CSV restore: one header line plus one line per row (bodies have no newlines).
    let csv = d.dir.join("csv");
    let o = read::restore(
        &store,
        &kr,
        "klinik-sehat",
        None,
        &csv,
        RestoreFormat::Csv,
        &["messages".into()],
        &common::ledger_context(&d.config),
    )
    .await
    .unwrap();
    let (_, path, rows) = &o.files[0];
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.starts_with("id,tenant_id,customer_phone,"));
    assert_eq!(text.lines().count() as u64, rows + 1);
    // Restoring into the same place again overwrites nothing.
    let e = read::restore(
        &store,
        &kr,
        "klinik-sehat",
        None,
        &csv,
        RestoreFormat::Csv,
        &["messages".into()],
        &common::ledger_context(&d.config),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn running_the_demo_twice_keeps_data_and_keys_and_adds_a_run() {
    let d = demo(2, 30);
    snapshot(&d).await;
    let keyring = std::fs::read(d.dir.join("keys/keyring.json")).unwrap();
    let db = std::fs::read(d.db()).unwrap();
    let opts = lethe::demo::DemoOptions {
        dir: d.dir.clone(),
        source: None,
        tenants: 2,
        days: 30,
        seed: 7,
    };
    let (_, generated) = lethe::demo::prepare(&opts).unwrap();
    assert!(generated.is_none());
    snapshot(&d).await;
    assert_eq!(
        std::fs::read(d.dir.join("keys/keyring.json")).unwrap(),
        keyring
    );
    assert_eq!(std::fs::read(d.db()).unwrap(), db);
    let (_, store, kr) = open(&d);
    assert_eq!(
        read::committed(&store, "kopi-senja").await.unwrap().len(),
        2
    );
    assert!(
        read::verify(&store, &kr, &[])
            .await
            .unwrap()
            .findings
            .is_empty()
    );
}
