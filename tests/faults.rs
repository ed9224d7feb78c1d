//! Object-store faults, against moto behind a fault-injecting proxy (`common::proxy`): bounded
//! time when the blob store is down, outcomes measured at the end, no multipart leftovers,
//! retried cut answers, and the same end state under random 5xx bursts as without them.

mod common;

use common::moto::Moto;
use common::proxy::{Fault, FaultProxy, Rule};
use common::{Demo, demo, lethe_env};

/// The demo on S3 through `proxy`: snapshots in `bucket`, blobs (uploaded from the demo's
/// directory) in `bucket-blobs`; the brake off.
fn on_s3(d: &Demo, moto: &Moto, proxy: &FaultProxy, bucket: &str) -> String {
    moto.create_bucket(bucket);
    let blobs = format!("{bucket}-blobs");
    moto.create_bucket(&blobs);
    let client = moto.client(&blobs);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let root = d.dir.join("blobs");
    rt.block_on(async {
        use object_store::ObjectStoreExt;
        for (path, bytes) in common::files(&root) {
            let key = path
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            client
                .put(&object_store::path::Path::from(key), bytes.into())
                .await
                .unwrap();
        }
    });
    let s3 = |b: &str, prefix: &str| {
        format!(
            "url = \"s3://{b}{prefix}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = true\npath_style = true\n",
            proxy.endpoint()
        )
    };
    let text = std::fs::read_to_string(&d.config).unwrap();
    let text = text
        .replace(
            "[store]\nurl = \"store\"\n",
            &format!("[store]\n{}", s3(bucket, "/prod")),
        )
        .replace(
            "[blobs]\nurl = \"blobs\"\n",
            &format!("[blobs]\n{}", s3(&blobs, "")),
        );
    assert!(
        text.matches("s3://").count() == 2,
        "lethe.toml layout changed"
    );
    std::fs::write(
        &d.config,
        format!("{text}\n[retention]\nmax_share = 1.0\nmax_rows = 100000000\n"),
    )
    .unwrap();
    blobs
}

fn run(d: &Demo, moto: &Moto, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--config", d.config.to_str().unwrap()];
    all.extend_from_slice(args);
    let mut env = moto.env();
    env.push(("LETHE_LOG", "info".into()));
    lethe_env(&all, &env)
}

fn outbox(d: &Demo) -> u64 {
    let c = rusqlite::Connection::open(d.db()).unwrap();
    c.query_row("SELECT count(*) FROM lethe_blob_outbox", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_or(0, |n| n as u64)
}

/// The newest audit record of `step`/`phase` in the bucket.
fn last_record(moto: &Moto, bucket: &str, step: &str, phase: &str) -> serde_json::Value {
    let client = moto.client(bucket);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use futures::TryStreamExt;
        use object_store::{ObjectStore, ObjectStoreExt};
        let mut keys: Vec<_> = client
            .list(Some(&object_store::path::Path::from("prod/audit/records")))
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.location)
            .collect();
        keys.sort();
        for k in keys.iter().rev() {
            let b = client.get(k).await.unwrap().bytes().await.unwrap();
            let r: serde_json::Value = serde_json::from_slice(&b).unwrap();
            if r["event"]["step"] == step && r["event"]["phase"] == phase {
                return r["event"].clone();
            }
        }
        panic!("no {step} {phase} record");
    })
}

/// Defect 1: with every blob request failing, the blob phase stops after
/// `retention.blob_breaker` (5) blobs instead of trying every one; rows, outbox and audit stay
/// consistent, the run exits 1 naming what is pending and why, and a run after the outage
/// converges.
#[test]
fn a_blob_store_outage_costs_a_bounded_number_of_attempts_and_converges_after() {
    let Some(moto) = Moto::start("blob_outage") else {
        return;
    };
    let proxy = FaultProxy::start(moto.port, 1);
    let d = demo(3, 200);
    let blobs = on_s3(&d, &moto, &proxy, "outage");
    proxy.set(vec![Rule::always(
        None,
        &format!("/{blobs}/photos/"),
        Fault::Status(503),
    )]);
    let (code, out, err) = run(&d, &moto, &["run", "retention"]);
    assert_eq!(code, 1, "{out}\n{err}");
    let pending = outbox(&d);
    assert!(
        pending > 5,
        "the outage leaves the blobs pending: {pending}"
    );
    assert!(
        err.contains(&format!("{pending} blob deletions are pending"))
            && err.contains("failed in a row"),
        "{err}"
    );
    // The per-table report is printed although the run failed.
    assert!(
        out.contains("attendance_checkins") && out.contains("blobs left pending"),
        "{out}"
    );
    // One preflight lookup and five blobs tried, each with the client's retries (at most 11
    // requests): not all of the pending blobs.
    let tried = proxy.count(None, &format!("/{blobs}/photos/"));
    assert!(tried <= 6 * 11, "{tried} requests to a store that is down");
    let end = last_record(&moto, "outage", "retention", "end");
    assert_eq!(end["verified"], false);
    assert_eq!(end["blobs_left_pending"], pending);
    assert!(end["blobs_stopped"].as_str().unwrap().contains("in a row"));
    // The rows went; no row points at a deleted blob and no blob lost its outbox entry.
    let (code, out, err) = run(&d, &moto, &["plan"]);
    assert_eq!(code, 0, "{out}\n{err}");

    // The outage ends: the next run deletes what is pending, and verifies.
    proxy.set(vec![]);
    let (code, out, err) = run(&d, &moto, &["run", "retention"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(outbox(&d), 0);
    let end = last_record(&moto, "outage", "retention", "end");
    assert_eq!(end["verified"], true);
    assert_eq!(end["blobs_left_pending"], 0);
}

/// Defect 2: the outcome is what is left at the end. One blob that cannot be deleted is one
/// pending blob, whatever the number of blob passes (one per blob table); failures the client's
/// retries absorb leave the run verified.
#[test]
fn pending_blobs_are_counted_once_at_the_end_and_absorbed_failures_verify() {
    let Some(moto) = Moto::start("blob_count") else {
        return;
    };
    let proxy = FaultProxy::start(moto.port, 2);
    let d = demo(3, 200);
    let blobs = on_s3(&d, &moto, &proxy, "counting");
    let stuck: String = rusqlite::Connection::open(d.db())
        .unwrap()
        .query_row(
            "SELECT selfie_key FROM attendance_checkins WHERE selfie_key IS NOT NULL AND checked_in_at < datetime('now', '-120 days') ORDER BY id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    proxy.set(vec![
        // One blob is refused for good (Object Lock, a permission) ...
        Rule::always(None, &format!("/{blobs}/{stuck}"), Fault::Status(403)),
        // ... and the first deletes of the others fail once, as a 5xx burst does.
        Rule {
            times: Some(3),
            ..Rule::always(
                Some("POST"),
                &format!("/{blobs}?delete"),
                Fault::Status(503),
            )
        },
    ]);
    let (code, out, err) = run(&d, &moto, &["run", "retention"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert_eq!(outbox(&d), 1, "only the refused blob is pending");
    assert!(err.contains("1 blob deletions are pending"), "{err}");
    let end = last_record(&moto, "counting", "retention", "end");
    assert_eq!(end["blobs_left_pending"], 1, "{end}");
    let log = proxy.log.lock().unwrap().clone();
    assert!(
        proxy.faults() >= 4,
        "{:?}",
        log.iter()
            .filter(|s| s.path.contains("blobs") && s.method != "HEAD")
            .map(|s| format!("{} {}", s.method, s.path))
            .take(12)
            .collect::<Vec<_>>()
    );

    // Without the refusal: exit 0, verified.
    proxy.set(vec![Rule {
        times: Some(2),
        ..Rule::always(
            Some("POST"),
            &format!("/{blobs}?delete"),
            Fault::Status(503),
        )
    }]);
    let (code, out, err) = run(&d, &moto, &["run", "retention"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let end = last_record(&moto, "counting", "retention", "end");
    assert_eq!(end["verified"], true, "{end}");
    assert_eq!(outbox(&d), 0);
}

/// Defect 5: a connection cut while a 404 is on its way (an uncommitted run's manifest) is
/// retried like any other transient failure (object_store 0.14's client does it); `verify`
/// reports the uncommitted run and `restore` goes on.
#[test]
fn a_cut_404_is_retried_by_verify_and_restore() {
    let Some(moto) = Moto::start("cut_404") else {
        return;
    };
    let proxy = FaultProxy::start(moto.port, 3);
    let d = demo(2, 20);
    on_s3(&d, &moto, &proxy, "cut404");
    let (code, out, err) = run(&d, &moto, &["run", "snapshot"]);
    assert_eq!(code, 0, "{out}\n{err}");
    // A run that never committed: a file, no manifest.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use object_store::ObjectStoreExt;
        moto.client("cut404")
            .put(
                &object_store::path::Path::from(
                    "prod/snapshots/tenant=kopi-senja/run=20200101T000000Z-dead/messages/part-0.parquet",
                ),
                bytes::Bytes::from_static(b"PAR1").into(),
            )
            .await
            .unwrap();
    });
    let manifest = "20200101T000000Z-dead/_manifest.json";
    proxy.set(vec![Rule {
        times: Some(1),
        ..Rule::always(Some("GET"), manifest, Fault::Cut404)
    }]);
    let (code, out, err) = run(&d, &moto, &["snapshot", "verify"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("uncommitted run"), "{out}\n{err}");
    assert!(
        proxy.count(Some("GET"), manifest) >= 2,
        "retried: {out}\n{err}\n{:?}",
        proxy
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path.contains("dead"))
            .collect::<Vec<_>>()
    );
    proxy.set(vec![Rule {
        times: Some(1),
        ..Rule::always(Some("GET"), manifest, Fault::Cut404)
    }]);
    let out_dir = d.dir.join("restored");
    let (code, out, err) = run(
        &d,
        &moto,
        &[
            "snapshot",
            "restore",
            "--tenant",
            "kopi-senja",
            "--out",
            out_dir.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
}

/// Incomplete multipart uploads under the store's snapshots/.
fn uploads(moto: &Moto, bucket: &str) -> usize {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        moto.sdk()
            .list_multipart_uploads()
            .bucket(bucket)
            .prefix("prod/snapshots/")
            .send()
            .await
            .unwrap()
            .uploads()
            .len()
    })
}

/// Defect 3: `kill -9` mid-multipart leaves an upload open; the next snapshot aborts it.
/// SIGTERM aborts the run's own uploads before it exits.
#[test]
fn multipart_uploads_left_by_a_crash_or_a_sigterm_are_aborted() {
    let Some(moto) = Moto::start("multipart_leftovers") else {
        return;
    };
    let proxy = FaultProxy::start(moto.port, 4);
    let d = demo(2, 30);
    // ~20 MB of message bodies after zstd: a file in several 8 MiB parts.
    let conn = rusqlite::Connection::open(d.db()).unwrap();
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 150000)
         INSERT INTO messages (tenant_id, customer_phone, customer_name, channel, direction, body, status, created_at)
         SELECT 'kopi-senja', '+6281200000000', 'x', 'whatsapp', 'inbound', hex(randomblob(130)), 'read', '2026-11-01 00:00:00' FROM n",
        [],
    )
    .unwrap();
    drop(conn);
    on_s3(&d, &moto, &proxy, "multi");
    // Parts are slow, so the run is caught mid-upload.
    proxy.set(vec![Rule::always(
        Some("PUT"),
        "partNumber=",
        Fault::Delay(4000),
    )]);
    for signal in [libc::SIGKILL, libc::SIGTERM] {
        let mut env = moto.env();
        env.push(("LETHE_LOG", "info".into()));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_lethe"))
            .args(["--config", d.config.to_str().unwrap(), "run", "snapshot"])
            .envs(env)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait (at most 2,400 polls) for the first part upload to reach the proxy.
        for _ in 0..2400 {
            if proxy.count(Some("PUT"), "partNumber=") > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(
            proxy.count(Some("PUT"), "partNumber=") > 0,
            "no part upload started"
        );
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&status.stderr).into_owned();
        if signal == libc::SIGKILL {
            assert!(
                uploads(&moto, "multi") >= 1,
                "the crash left an upload open"
            );
        } else {
            assert_eq!(status.status.code(), Some(128 + libc::SIGTERM), "{stderr}");
            assert!(
                stderr.contains("incomplete upload(s) of this run aborted"),
                "{stderr}"
            );
            assert_eq!(
                uploads(&moto, "multi"),
                0,
                "SIGTERM aborted its uploads: {stderr}"
            );
        }
        if signal == libc::SIGKILL {
            // `snapshot verify` reports it; the next snapshot aborts it.
            proxy.set(vec![]);
            let (code, out, err) = run(&d, &moto, &["snapshot", "verify"]);
            assert_eq!(code, 1, "{out}\n{err}");
            assert!(out.contains("incomplete multipart upload"), "{out}");
            let (code, out, err) = run(&d, &moto, &["run", "snapshot"]);
            assert_eq!(code, 0, "{out}\n{err}");
            assert_eq!(uploads(&moto, "multi"), 0, "{err}");
            proxy.set(vec![Rule::always(
                Some("PUT"),
                "partNumber=",
                Fault::Delay(4000),
            )]);
            proxy.log.lock().unwrap().clear();
        }
    }
}

/// The end state of the demo after snapshot, retention and verify: rows per table, the outbox,
/// the number of committed runs per tenant.
fn end_state(d: &Demo, moto: &Moto, bucket: &str) -> (Vec<(String, i64)>, u64, usize) {
    let c = rusqlite::Connection::open(d.db()).unwrap();
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'lethe_%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let rows = tables
        .into_iter()
        .map(|t| {
            let n: i64 = c
                .query_row(&format!("SELECT count(*) FROM \"{t}\""), [], |r| r.get(0))
                .unwrap();
            (t, n)
        })
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let manifests = rt.block_on(async {
        use futures::TryStreamExt;
        use object_store::ObjectStore;
        moto.client(bucket)
            .list(Some(&object_store::path::Path::from("prod/snapshots")))
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .iter()
            .filter(|m| m.location.as_ref().ends_with("_manifest.json"))
            .count()
    });
    (rows, outbox(d), manifests)
}

/// Random 5xx on 10 % and 30 % of every request: snapshot, retention and verify complete, with
/// the same end state as without faults.
#[test]
fn under_random_5xx_the_night_completes_with_the_same_end_state() {
    let Some(moto) = Moto::start("random_5xx") else {
        return;
    };
    let mut states = Vec::new();
    for (i, share) in [0.0, 0.1, 0.3].into_iter().enumerate() {
        let proxy = FaultProxy::start(moto.port, 10 + i as u64);
        let d = demo(3, 200);
        let bucket = format!("random{i}");
        on_s3(&d, &moto, &proxy, &bucket);
        proxy.set(vec![Rule {
            probability: share,
            ..Rule::always(None, "/", Fault::Status(503))
        }]);
        for args in [
            vec!["run", "snapshot"],
            vec!["run", "retention"],
            vec!["snapshot", "verify"],
        ] {
            let (code, out, err) = run(&d, &moto, &args);
            assert_eq!(code, 0, "{share}: {args:?}: {out}\n{err}");
        }
        if share > 0.0 {
            assert!(
                proxy.faults() > 10,
                "{share}: faults injected: {}",
                proxy.faults()
            );
        }
        states.push(end_state(&d, &moto, &bucket));
    }
    assert_eq!(states[0], states[1]);
    assert_eq!(states[0], states[2]);
}
