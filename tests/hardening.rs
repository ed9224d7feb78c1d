//! Regression tests for issue 8: wrong deletions, false evidence and silent key loss found by
//! adversarial use. Each test is named after the defect it guards; each failed on the code
//! before the fix. The embedded default (SQLite + local store) unless the defect is
//! PostgreSQL's.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{Demo, demo, files, lethe, lethe_env};

fn sql(db: &Path, stmt: &str) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch(stmt).unwrap();
}

fn count(db: &Path, query: &str) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row(query, [], |r| r.get(0)).unwrap()
}

fn strings(db: &Path, query: &str) -> Vec<String> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut st = c.prepare(query).unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

fn cfg(d: &Demo) -> &str {
    d.config.to_str().unwrap()
}

/// Turn the brake off for tests that are not about it.
fn no_brake(d: &Demo) {
    append(
        &d.config,
        "\n[retention]\nmax_share = 1.0\nmax_rows = 100000000\n",
    );
}

fn append(path: &Path, text: &str) {
    let mut t = std::fs::read_to_string(path).unwrap();
    t.push_str(text);
    std::fs::write(path, t).unwrap();
}

fn edit(path: &Path, f: impl FnOnce(String) -> String) {
    let t = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, f(t)).unwrap();
}

/// `lethe snapshot restore --tenant T --out OUT [extra…]`.
fn restore(d: &Demo, tenant: &str, out: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "--config",
        cfg(d),
        "snapshot",
        "restore",
        "--tenant",
        tenant,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    lethe(&args)
}

fn snapshot(d: &Demo) {
    let (code, out, err) = lethe(&["--config", cfg(d), "run", "snapshot"]);
    assert_eq!(code, 0, "{out}\n{err}");
}

/// A demo with one snapshot and one retention run behind it (so the store holds runs, audit
/// records and a checkpoint).
fn ran(tenants: usize, days: u32) -> Demo {
    let d = demo(tenants, days);
    no_brake(&d);
    snapshot(&d);
    let (code, out, err) = lethe(&["--config", cfg(&d), "run", "retention"]);
    assert_eq!(code, 0, "{out}\n{err}");
    d
}

/// Every row of every demo table, to show that nothing was deleted.
fn rows(d: &Demo) -> i64 {
    [
        "messages",
        "calls",
        "attendance_checkins",
        "audit_log",
        "customers",
        "accounts",
    ]
    .iter()
    .map(|t| count(&d.db(), &format!("SELECT count(*) FROM {t}")))
    .sum()
}

fn audit_events(d: &Demo) -> Vec<serde_json::Value> {
    let dir = d.store().join("audit/records");
    let mut keys: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    keys.sort();
    keys.iter()
        .map(|k| {
            let r: serde_json::Value = serde_json::from_slice(&std::fs::read(k).unwrap()).unwrap();
            r["event"].clone()
        })
        .collect()
}

// ---- 1. false "deleted" evidence for blobs ------------------------------------------------

#[test]
fn defect_1_wrong_blob_store_is_a_configuration_error_not_thousands_of_deletions() {
    let d = demo(2, 200);
    no_brake(&d);
    snapshot(&d);
    let before = rows(&d);
    let empty = d.dir.join("elsewhere");
    std::fs::create_dir(&empty).unwrap();
    let env = [("LETHE_BLOBS_URL", empty.display().to_string())];
    for args in [&["check"][..], &["plan"][..], &["run", "retention"][..]] {
        let mut all = vec!["--config", cfg(&d)];
        all.extend_from_slice(args);
        let (code, out, err) = lethe_env(&all, &env);
        assert_eq!(code, 2, "{args:?}\n{out}\n{err}");
        assert!(
            err.contains("blobs.url") && err.contains("holds none of"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(rows(&d), before, "no row was deleted");
    assert!(
        !d.store().join("audit").exists(),
        "no audit record claims anything"
    );
    // A blob store that does not exist is refused, and not created by reading it.
    let missing = d.dir.join("no-such-blobs");
    let env = [("LETHE_BLOBS_URL", missing.display().to_string())];
    for args in [&["check"][..], &["run", "retention"][..]] {
        let mut all = vec!["--config", cfg(&d)];
        all.extend_from_slice(args);
        let (code, _, err) = lethe_env(&all, &env);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("does not exist"), "{err}");
    }
    assert!(
        !missing.exists(),
        "reading or checking created the blob store"
    );
    assert_eq!(rows(&d), before);
}

#[test]
fn defect_1_a_blob_that_was_never_there_is_counted_as_absent_not_deleted() {
    let d = demo(2, 200);
    no_brake(&d);
    snapshot(&d);
    // Three due photos are gone from the blob store before retention comes.
    let gone = strings(
        &d.db(),
        "SELECT selfie_key FROM attendance_checkins WHERE checked_in_at < datetime('now', '-120 days') ORDER BY id LIMIT 3",
    );
    assert_eq!(gone.len(), 3, "the demo has old check-ins");
    for k in &gone {
        std::fs::remove_file(d.dir.join("blobs").join(k)).unwrap();
    }
    let (code, out, err) = lethe(&["--config", cfg(&d), "run", "retention"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("already absent before the delete: 3"), "{out}");
    let ends: Vec<serde_json::Value> = audit_events(&d)
        .into_iter()
        .filter(|e| e["step"] == "blobs" && e["phase"] == "end")
        .collect();
    let absent: u64 = ends
        .iter()
        .map(|e| e["already_absent"].as_u64().unwrap())
        .sum();
    let deleted: u64 = ends.iter().map(|e| e["deleted"].as_u64().unwrap()).sum();
    assert_eq!(absent, 3);
    assert!(deleted > 0);
    let end = audit_events(&d)
        .into_iter()
        .find(|e| e["step"] == "retention" && e["phase"] == "end")
        .unwrap();
    assert_eq!(end["blobs_already_absent"], 3);
    assert_eq!(end["blobs_deleted"].as_u64().unwrap(), deleted);
}

// ---- 3. SQLite: impossible dates ----------------------------------------------------------

#[test]
fn defect_3_impossible_sqlite_dates_block_the_run_instead_of_being_deleted_or_kept_forever() {
    for bad in [
        "0000-00-00 00:00:00",
        "2025-13-45 00:00:00",
        "2026-02-30 00:00:00",
        "2026-99-99 99:99:99",
    ] {
        let d = demo(2, 30);
        no_brake(&d);
        let t = strings(&d.db(), "SELECT id FROM tenants ORDER BY id LIMIT 1").remove(0);
        sql(
            &d.db(),
            &format!(
                "INSERT INTO messages (id, tenant_id, customer_phone, channel, direction, body, status, created_at) VALUES (990001, '{t}', '+620000', 'whatsapp', 'in', 'x', 'read', '{bad}')"
            ),
        );
        let before = rows(&d);
        for args in [&["check"][..], &["plan"][..], &["run", "retention"][..]] {
            let mut all = vec!["--config", cfg(&d)];
            all.extend_from_slice(args);
            let (code, out, err) = lethe(&all);
            // `check` reports it (exit 2); plan and run refuse (Refusal::UnsafeData, exit 1).
            let want = if args[0] == "check" { 2 } else { 1 };
            assert_eq!(code, want, "{bad} {args:?}\n{out}\n{err}");
            assert!(
                err.contains("messages")
                    && err.contains("created_at")
                    && err.contains("real instant"),
                "{bad} {args:?}: {err}"
            );
        }
        assert_eq!(rows(&d), before, "{bad}: nothing deleted");
    }
}

#[test]
fn defect_3_the_anchor_rule_is_the_snapshot_readers_rule() {
    use lethe::source::sqlite::{canonical_instant, parse_timestamp};
    for ok in [
        "2026-02-28 12:00:00",
        "2024-02-29 00:00:00",
        "2026-11-28 08:00:00.123456",
    ] {
        assert!(canonical_instant(ok.as_bytes()).is_some(), "{ok}");
        assert_eq!(
            canonical_instant(ok.as_bytes()),
            parse_timestamp(ok.as_bytes())
        );
    }
    for bad in [
        "0000-00-00 00:00:00",
        "2025-13-45 00:00:00",
        "2026-02-30 00:00:00",
        "2026-99-99 99:99:99",
        "2026-02-28T12:00:00",
        "2026-02-28 12:00:00Z",
        "2026-02-28 12:00:00+07:00",
        "2026-02-28 12:00:00.",
        "1764316800",
        "",
    ] {
        assert_eq!(canonical_instant(bad.as_bytes()), None, "{bad}");
    }
}

// ---- 4. concurrent destructive runs -------------------------------------------------------

#[test]
fn defect_4_a_second_run_exits_naming_the_lease_holder_and_changes_nothing() {
    let d = ran(2, 200);
    let audit_before = files(&d.store().join("audit"));
    // A live lease held by a run on another machine.
    let now = chrono::Utc::now();
    let lease = serde_json::json!({
        "holder": "abcd", "host": "worker-7", "pid": 4242, "purpose": "lethe run retention",
        "acquired_at": now.to_rfc3339(), "expires_at": (now + chrono::TimeDelta::minutes(5)).to_rfc3339(),
        "released": false});
    let dir = d.store().join("locks/destructive");
    let mut gens: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    gens.sort();
    let next: u64 = gens
        .last()
        .unwrap()
        .trim_end_matches(".json")
        .parse::<u64>()
        .unwrap()
        + 1;
    std::fs::write(
        dir.join(format!("{next:012}.json")),
        serde_json::to_vec(&lease).unwrap(),
    )
    .unwrap();
    let (code, out, err) = lethe(&["--config", cfg(&d), "run", "retention"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("holds the lease") && err.contains("worker-7") && err.contains("4242"),
        "{err}"
    );
    assert_eq!(
        files(&d.store().join("audit")),
        audit_before,
        "no record written"
    );
}

#[test]
fn defect_4_two_runs_at_once_never_corrupt_the_evidence() {
    let d = demo(3, 200);
    no_brake(&d);
    snapshot(&d);
    let before = rows(&d);
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_lethe"))
            .args(["--config", cfg(&d), "run", "retention"])
            .env("LETHE_LOG", "lethe=warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let codes: Vec<i32> = outs.iter().map(|o| o.status.code().unwrap()).collect();
    assert!(codes.contains(&0), "{codes:?}");
    for o in &outs {
        if o.status.code() != Some(0) {
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains("holds the lease"), "{err}");
        }
    }
    // Whatever the interleaving: the chain verifies, and the rows the records say went are
    // exactly the rows that went.
    let (code, out, err) = lethe(&["--config", cfg(&d), "audit", "verify"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let recorded: u64 = audit_events(&d)
        .iter()
        .filter(|e| e["step"] == "retention" && e["phase"] == "end")
        .map(|e| e["rows"].as_u64().unwrap())
        .sum();
    let after = rows(&d);
    let deleted_or_changed = (before - after) as u64;
    assert!(
        recorded >= deleted_or_changed && deleted_or_changed > 0,
        "recorded {recorded}, rows gone {deleted_or_changed}"
    );
}

#[test]
fn defect_4_audit_verify_flags_a_start_without_its_end() {
    let d = ran(2, 200);
    let c = lethe::config::Config::load(&d.config).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = lethe::store::Store::open(&c.store).unwrap();
        let key = lethe::sign::SigningKey::load_or_create(
            &lethe::sign::signing_key_path(&c.keyring),
            false,
        )
        .unwrap();
        let mut log = lethe::audit::AuditLog::open(store, key, None, lethe::clock::system())
            .await
            .unwrap();
        // A loser's start with no end, then a winner's complete step, then a checkpoint.
        log.append(serde_json::json!({"step": "rows", "phase": "start", "plan_hash": "sha256:aa", "table": "messages", "category": "messages"})).await.unwrap();
        log.append(serde_json::json!({"step": "rows", "phase": "start", "plan_hash": "sha256:bb", "table": "calls", "category": "calls"})).await.unwrap();
        log.append(serde_json::json!({"step": "rows", "phase": "end", "plan_hash": "sha256:bb", "table": "calls", "category": "calls"})).await.unwrap();
        log.checkpoint().await.unwrap();
    });
    let (code, out, err) = lethe(&["--config", cfg(&d), "audit", "verify"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("start record without its end"), "{out}");
}

#[test]
fn defect_4_an_interrupted_run_is_recorded_by_the_next_not_flagged_forever() {
    let d = demo(2, 200);
    no_brake(&d);
    snapshot(&d);
    // Debug builds abort at the 3rd crash point (after the first row batch), as kill -9 would.
    let (code, _, _) = lethe_env(
        &["--config", cfg(&d), "run", "retention"],
        &[("LETHE_CRASH_AT", "3".into())],
    );
    if !cfg!(debug_assertions) {
        // Crash points exist in debug builds only; a release test build cannot test this.
        common::skipped(
            "defect_4_an_interrupted_run_is_recorded_by_the_next_not_flagged_forever",
            "crash points are compiled into debug builds only",
        );
        return;
    }
    assert_ne!(code, 0, "the run was not interrupted at crash point 3");
    let (code, out, err) = lethe(&["--config", cfg(&d), "run", "retention"]);
    assert_eq!(
        code, 0,
        "the rerun takes the dead holder's lease at once\n{out}\n{err}"
    );
    assert!(
        audit_events(&d).iter().any(|e| e["step"] == "recovery"),
        "the rerun records the interrupted steps"
    );
    let (code, out, err) = lethe(&["--config", cfg(&d), "audit", "verify"]);
    assert_eq!(code, 0, "{out}\n{err}");
}

// ---- 5. missing keys ----------------------------------------------------------------------

#[test]
fn defect_5_missing_keys_are_never_recreated_over_existing_backups() {
    let d = ran(2, 60);
    let keys = d.dir.join("keys");
    let saved = files(&keys);
    let master_id = {
        let m = std::fs::read_dir(d.store().join("snapshots"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let run = std::fs::read_dir(&m)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("_manifest.json")).unwrap()).unwrap();
        v["master_key_id"].as_str().unwrap().to_string()
    };
    let restore = || {
        for (p, b) in &saved {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b).unwrap();
        }
    };
    for (what, remove) in [
        ("keyring.json", vec![keys.join("keyring.json")]),
        ("master.key", vec![keys.join("master.key")]),
        ("keys/", vec![keys.clone()]),
    ] {
        for p in &remove {
            if p.is_dir() {
                std::fs::remove_dir_all(p).unwrap();
            } else {
                std::fs::remove_file(p).unwrap();
            }
        }
        for args in [
            &["run", "snapshot"][..],
            &["run", "retention"][..],
            &["check"][..],
        ] {
            let mut all = vec!["--config", cfg(&d)];
            all.extend_from_slice(args);
            let (code, out, err) = lethe(&all);
            assert_eq!(code, 2, "{what} {args:?}\n{out}\n{err}");
            assert!(
                err.contains(what.trim_end_matches('/')) || err.contains("keyring"),
                "{what} {args:?}: {err}"
            );
            if *args != ["check"][..] {
                assert!(err.contains(&master_id), "{what} {args:?}: {err}");
                assert!(err.contains("backup"), "{err}");
            }
        }
        assert!(
            !keys.join("keyring.json").exists() || what == "master.key",
            "{what}: a keyring was created"
        );
        assert!(
            !keys.join("master.key").exists() || what == "keyring.json",
            "{what}: a master key was created"
        );
        restore();
    }
    // The signing key: checkpoints exist, so it is not recreated either.
    std::fs::remove_file(keys.join("signing-ed25519.pk8")).unwrap();
    let (code, out, err) = lethe(&["--config", cfg(&d), "run", "retention"]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(err.contains("signing") && err.contains("ed25519:"), "{err}");
    assert!(!keys.join("signing-ed25519.pk8").exists());
    restore();
    let (code, out, err) = lethe(&["--config", cfg(&d), "snapshot", "verify"]);
    assert_eq!(code, 0, "{out}\n{err}");
}

#[test]
fn defect_5_first_use_still_creates_keys() {
    let d = demo(2, 30);
    assert!(!d.dir.join("keys/keyring.json").exists());
    snapshot(&d);
    assert!(d.dir.join("keys/keyring.json").exists());
}

// ---- 6. restore trusts the manifest -------------------------------------------------------

/// The newest run directory of `tenant`.
fn newest_run(d: &Demo, tenant: &str) -> PathBuf {
    let tdir = d.store().join(format!("snapshots/tenant={tenant}"));
    let mut runs: Vec<PathBuf> = std::fs::read_dir(tdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    runs.sort();
    runs.pop().unwrap()
}

/// Rewrite a manifest as an attacker without the keys could: edit it, recompute the plain
/// checksum, keep the MAC it had.
fn forge(manifest: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
    f(&mut v);
    let mac = v["mac"].clone();
    let mut m: lethe::snapshot::Manifest = serde_json::from_value(v).unwrap();
    let mut bytes: serde_json::Value =
        serde_json::from_slice(&m.to_bytes_unauthenticated()).unwrap();
    if !mac.is_null() {
        bytes["mac"] = mac;
    }
    std::fs::write(manifest, serde_json::to_vec_pretty(&bytes).unwrap()).unwrap();
}

#[test]
fn defect_6_manifest_paths_cannot_make_restore_write_outside_out() {
    let d = demo(2, 30);
    snapshot(&d);
    let t = "kopi-senja";
    let run = newest_run(&d, t);
    let outside = d.dir.join("outside");
    for table in [
        format!("{}", outside.join("x").display()),
        "../../x".to_string(),
    ] {
        let m = run.join("_manifest.json");
        let original = std::fs::read(&m).unwrap();
        forge(&m, |v| {
            v["files"][0]["table"] = table.clone().into();
            v["tables"][0]["table"] = table.clone().into();
        });
        let out = d.dir.join("restored");
        let (code, stdout, err) = restore(&d, t, &out, &[]);
        assert_ne!(code, 0, "{table}\n{stdout}\n{err}");
        assert!(!outside.exists() && !d.dir.parent().unwrap().join("x").exists());
        assert!(files(&out).is_empty(), "{table}: plaintext written");
        let (code, stdout, _) = lethe(&["--config", cfg(&d), "snapshot", "verify"]);
        assert_eq!(code, 1);
        assert!(stdout.contains("not a plain identifier"), "{stdout}");
        std::fs::write(&m, original).unwrap();
    }
}

#[test]
fn defect_6_an_older_file_swapped_in_with_its_manifest_edited_fails_verify() {
    let d = demo(2, 30);
    snapshot(&d);
    let t = "kopi-senja";
    let old = newest_run(&d, t);
    sql(
        &d.db(),
        &format!("DELETE FROM messages WHERE tenant_id = '{t}' AND id % 2 = 0"),
    );
    snapshot(&d);
    // Two runs in one second need not sort by time: take the one that is new.
    let new = std::fs::read_dir(old.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| *p != old)
        .unwrap();
    let part = "messages/part-0.parquet";
    std::fs::copy(old.join(part), new.join(part)).unwrap();
    let bytes = std::fs::read(new.join(part)).unwrap();
    let sha = lethe::util::sha256_hex(&bytes);
    let rows_old = {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(old.join("_manifest.json")).unwrap()).unwrap();
        v["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["table"] == "messages")
            .unwrap()["rows"]
            .clone()
    };
    forge(&new.join("_manifest.json"), |v| {
        for f in v["files"].as_array_mut().unwrap() {
            if f["table"] == "messages" {
                f["sha256"] = sha.clone().into();
                f["bytes"] = bytes.len().into();
                f["rows"] = rows_old.clone();
            }
        }
    });
    let (code, out, err) = lethe(&["--config", cfg(&d), "snapshot", "verify"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("MAC mismatch"), "{out}");
    let out_dir = d.dir.join("r");
    let (code, _, err) = restore(&d, t, &out_dir, &[]);
    assert_ne!(code, 0);
    assert!(err.contains("MAC mismatch"), "{err}");
    assert!(files(&out_dir).is_empty());
}

// ---- 7. truncating the audit log ----------------------------------------------------------

#[test]
fn defect_7_a_truncated_or_removed_audit_log_is_detected() {
    let d = ran(2, 200);
    let audit = d.store().join("audit");
    let saved = files(&audit);
    // Remove the checkpoints (as if the chain had been rewritten without them).
    std::fs::remove_dir_all(audit.join("checkpoints")).unwrap();
    let (code, out, err) = lethe(&["--config", cfg(&d), "audit", "verify"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("anchors record"), "{out}");
    // Remove the whole log.
    std::fs::remove_dir_all(&audit).unwrap();
    std::fs::create_dir_all(&audit).unwrap();
    let (code, out, err) = lethe(&["--config", cfg(&d), "audit", "verify"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("is empty"), "{out}");
    // Back as it was: verifies.
    for (p, b) in &saved {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b).unwrap();
    }
    let (code, out, err) = lethe(&["--config", cfg(&d), "audit", "verify"]);
    assert_eq!(code, 0, "{out}\n{err}");
    // Without the anchor file, the manifests of a later snapshot still anchor the log.
    snapshot(&d);
    std::fs::remove_file(d.dir.join("keys/audit-anchor.json")).unwrap();
    std::fs::remove_dir_all(audit.join("checkpoints")).unwrap();
    let (code, out, _) = lethe(&["--config", cfg(&d), "audit", "verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("_manifest.json anchors record"), "{out}");
}

// ---- 8. orphan rows -----------------------------------------------------------------------

#[test]
fn defect_8_rows_of_an_unlisted_tenant_are_visible_and_follow_the_policy() {
    let d = demo(2, 30);
    no_brake(&d);
    snapshot(&d);
    sql(
        &d.db(),
        "INSERT INTO messages (id, tenant_id, customer_phone, channel, direction, body, status, created_at) VALUES (990002, 'ghost', '+620000', 'whatsapp', 'in', 'x', 'read', '2020-01-01 00:00:00')",
    );
    let has = || count(&d.db(), "SELECT count(*) FROM messages WHERE id = 990002") == 1;
    // Default: refuse. `check` names it, `plan` shows it, `run` exits 1 naming table and tenant.
    let (code, _, err) = lethe(&["--config", cfg(&d), "check"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("messages") && err.contains("ghost"), "{err}");
    let (code, out, err) = lethe(&["--config", cfg(&d), "plan"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("table messages: 1 rows of tenant ghost"),
        "{out}"
    );
    let (code, _, err) = lethe(&["--config", cfg(&d), "run", "retention"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("messages") && err.contains("ghost"), "{err}");
    assert!(has());
    let policy = d.dir.join("jobs/retention.toml");
    let good = std::fs::read_to_string(&policy).unwrap();
    // keep: listed as held back, kept.
    std::fs::write(&policy, format!("orphans = \"keep\"\n{good}")).unwrap();
    let (code, out, err) = lethe(&["--config", cfg(&d), "run", "retention"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("orphan"), "{out}");
    assert!(has());
    // delete: they go, and only they (the previous run left nothing else due).
    std::fs::write(&policy, format!("orphans = \"delete\"\n{good}")).unwrap();
    let before = rows(&d);
    let (code, out, err) = lethe(&["--config", cfg(&d), "run", "retention"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!has(), "{out}");
    assert_eq!(rows(&d), before - 1, "exactly the orphan row went");
    // A typo is refused.
    std::fs::write(&policy, format!("orphans = \"purge\"\n{good}")).unwrap();
    let (code, _, err) = lethe(&["--config", cfg(&d), "check"]);
    assert_eq!(code, 2);
    assert!(err.contains("orphans"), "{err}");
}

// ---- 9. restore leaves plaintext carelessly -----------------------------------------------

#[test]
fn defect_9_restored_files_are_private_and_a_failed_restore_leaves_nothing() {
    let d = demo(2, 30);
    snapshot(&d);
    let t = "kopi-senja";
    let out = d.dir.join("restored");
    let (code, _, err) = restore(&d, t, &out, &[]);
    assert_eq!(code, 0, "{err}");
    let written = files(&out);
    assert!(!written.is_empty());
    for p in written.keys() {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
        let dir = std::fs::metadata(p.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir, 0o700, "{}", p.parent().unwrap().display());
    }
    // Damage a table that sorts late: earlier tables would have been written first.
    let run = newest_run(&d, t);
    let victim = run.join("tenants/part-0.parquet");
    let mut b = std::fs::read(&victim).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0xff;
    std::fs::write(&victim, b).unwrap();
    let out2 = d.dir.join("restored-2");
    let (code, _, err) = restore(&d, t, &out2, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("removed the"), "{err}");
    assert!(files(&out2).is_empty(), "plaintext left behind");
    assert!(
        !out2.exists(),
        "the directory this restore created is gone too"
    );
}

// ---- 10. typos pass -----------------------------------------------------------------------

#[test]
fn defect_10_unknown_tables_and_tenants_are_errors() {
    let d = demo(2, 30);
    snapshot(&d);
    let out = d.dir.join("r");
    for (args, needle) in [
        (
            vec![
                "snapshot",
                "restore",
                "--tenant",
                "kopi-senja",
                "--table",
                "nosuch",
                "--out",
                out.to_str().unwrap(),
            ],
            "no table \"nosuch\"",
        ),
        (
            vec![
                "snapshot",
                "restore",
                "--tenant",
                "nosuch",
                "--out",
                out.to_str().unwrap(),
            ],
            "\"nosuch\"",
        ),
        (
            vec!["snapshot", "verify", "--tenant", "nosuch"],
            "\"nosuch\"",
        ),
        (vec!["snapshot", "ls", "--tenant", "nosuch"], "\"nosuch\""),
    ] {
        let mut all = vec!["--config", cfg(&d)];
        all.extend(args.iter().copied());
        let (code, _, err) = lethe(&all);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains(needle) && err.contains("kopi-senja") || err.contains("messages"),
            "{args:?}: {err}"
        );
    }
    assert!(!out.exists());
}

// ---- 11. check says ok where plan/run refuse ----------------------------------------------

/// Every case: `check` exits 2 naming the thing, and `run retention` refuses too, deleting
/// nothing.
#[test]
fn defect_11_check_reports_everything_a_run_would_refuse() {
    type Setup = fn(&Demo);
    let cases: Vec<(&str, Setup, &[&str])> = vec![
        (
            "impossible anchor (item 3)",
            |d| {
                sql(
                    &d.db(),
                    "UPDATE messages SET created_at = '2026-02-30 10:00:00' WHERE id = (SELECT min(id) FROM messages)",
                )
            },
            &["messages", "created_at"],
        ),
        (
            "Unix seconds in an anchor",
            |d| {
                sql(
                    &d.db(),
                    "UPDATE calls SET started_at = 1764316800 WHERE id = (SELECT min(id) FROM calls)",
                )
            },
            &["calls", "started_at"],
        ),
        (
            "missing keyring over existing snapshots (item 5)",
            |d| std::fs::remove_file(d.dir.join("keys/keyring.json")).unwrap(),
            &["keyring.json", "backup"],
        ),
        (
            "missing master key file",
            |d| std::fs::remove_file(d.dir.join("keys/master.key")).unwrap(),
            &["master.key"],
        ),
        (
            "hold naming an unknown tenant",
            |d| {
                append(
                    &d.dir.join("jobs/retention.toml"),
                    "\n[[legal_holds]]\ntenant = \"no-such-tenant\"\nreason = \"case 1\"\nplaced_by = \"legal\"\n",
                )
            },
            &["legal_holds", "no-such-tenant"],
        ),
        (
            "override naming an unknown tenant",
            |d| {
                append(
                    &d.dir.join("jobs/retention.toml"),
                    "\n[tenants.no-such-tenant.categories.messages]\nretain = \"30d\"\n",
                )
            },
            &["no-such-tenant", "override"],
        ),
        (
            "anonymize null on a NOT NULL column",
            |d| {
                edit(&d.dir.join("jobs/retention.toml"), |t| {
                    t.replacen(
                        "[categories.app_logs]            # HR app: 90 days\nretain = \"90d\"\nanchor = \"logged_at\"",
                        "[categories.app_logs]            # HR app: 90 days\nretain = \"90d\"\nanchor = \"logged_at\"\naction = \"anonymize\"\ncolumns = [\"message\"]",
                        1,
                    )
                })
            },
            &["NOT NULL", "message"],
        ),
        (
            "a NULL primary key",
            |d| {
                sql(
                    &d.db(),
                    "CREATE TABLE app_log_new (id TEXT, tenant_id TEXT NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL, account_id INTEGER, logged_at TIMESTAMP NOT NULL); INSERT INTO app_log_new SELECT * FROM app_log; INSERT INTO app_log_new SELECT NULL, tenant_id, level, message, account_id, logged_at FROM app_log LIMIT 1; DROP TABLE app_log; ALTER TABLE app_log_new RENAME TO app_log;",
                )
            },
            &["app_log", "primary key", "NULL"],
        ),
        (
            "a blob outside its tenant's prefix (item 12)",
            |d| {
                sql(
                    &d.db(),
                    "UPDATE attendance_checkins SET selfie_key = 'photos/other-tenant/1.jpg' WHERE id = (SELECT min(id) FROM attendance_checkins)",
                )
            },
            &["attendance_checkins", "outside their own tenant's prefix"],
        ),
    ];
    for (name, setup, needles) in cases {
        let d = demo(2, 200);
        no_brake(&d);
        snapshot(&d);
        let (code, out, err) = lethe(&["--config", cfg(&d), "check"]);
        assert_eq!(code, 0, "{name}: a clean demo checks\n{out}\n{err}");
        setup(&d);
        let before = rows(&d);
        let (code, out, err) = lethe(&["--config", cfg(&d), "check"]);
        assert_eq!(code, 2, "{name}\n{out}\n{err}");
        for n in needles {
            assert!(err.contains(n), "{name}: {n:?} not in\n{err}");
        }
        assert!(err.contains("fix"), "{name}: {err}");
        let (code, out, err) = lethe(&["--config", cfg(&d), "run", "retention"]);
        assert_ne!(code, 0, "{name}: run went ahead\n{out}\n{err}");
        assert_eq!(rows(&d), before, "{name}: rows changed");
    }
}

// ---- 12. smaller ---------------------------------------------------------------------------

#[test]
fn defect_12_a_tenant_id_that_is_not_a_slug_is_named_and_the_others_run() {
    let d = demo(3, 30);
    no_brake(&d);
    sql(
        &d.db(),
        "INSERT INTO tenants (id, name, plan, status, created_at) VALUES ('Bad Tenant/1', 'x', 'basic', 'active', '2026-01-01 00:00:00')",
    );
    let (code, out, err) = lethe(&["--config", cfg(&d), "run", "snapshot"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("\"Bad Tenant/1\""), "{out}");
    let snapshotted: BTreeSet<String> = std::fs::read_dir(d.store().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(snapshotted.len(), 3, "{snapshotted:?}");
    let (code, _, err) = lethe(&["--config", cfg(&d), "check"]);
    assert_eq!(code, 2);
    assert!(err.contains("\"Bad Tenant/1\""), "{err}");
    let (code, out, err) = lethe(&["--config", cfg(&d), "run", "retention"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("invalid_tenant_id"), "{out}");
}

#[test]
fn defect_12_configuration_slips_are_named() {
    let d = demo(2, 30);
    snapshot(&d);
    // A password in lethe.toml's URL.
    let with_pw = d.dir.join("pw.toml");
    std::fs::write(
        &with_pw,
        std::fs::read_to_string(&d.config)
            .unwrap()
            .replace("sqlite://source.db", "postgres://app:s3cret@db.example/app"),
    )
    .unwrap();
    let (code, _, err) = lethe(&["--config", with_pw.to_str().unwrap(), "check"]);
    assert_eq!(code, 2);
    assert!(err.contains("password") && !err.contains("s3cret"), "{err}");
    // An override's error names the variable, not lethe.toml.
    let (code, _, err) = lethe_env(
        &["--config", cfg(&d), "snapshot", "ls"],
        &[("LETHE_STORE_URL", "ftp://x/y".into())],
    );
    assert_eq!(code, 2);
    assert!(err.contains("LETHE_STORE_URL"), "{err}");
    // An empty override is an error, not "the config directory is the store".
    let (code, _, err) = lethe_env(
        &["--config", cfg(&d), "snapshot", "ls"],
        &[("LETHE_STORE_URL", String::new())],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("LETHE_STORE_URL") && err.contains("empty"),
        "{err}"
    );
    // `snapshot ls` on a store that does not exist creates nothing (not even a literal ~).
    for url in [
        d.dir.join("nostore").display().to_string(),
        "~/store".into(),
    ] {
        let (code, _, err) = lethe_env(
            &["--config", cfg(&d), "snapshot", "ls"],
            &[("LETHE_STORE_URL", url.clone())],
        );
        assert_eq!(code, 2, "{url}: {err}");
    }
    assert!(!d.dir.join("nostore").exists() && !d.dir.join("~").exists());
    // A world-readable master key is warned about.
    let mk = d.dir.join("keys/master.key");
    std::fs::set_permissions(&mk, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = lethe_env(
        &["--config", cfg(&d), "snapshot", "verify"],
        &[("LETHE_LOG", "lethe=warn".into())],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("master key is readable by other users"),
        "{err}"
    );
}

#[test]
fn defect_12_a_plan_hash_is_the_same_hash_in_any_case_with_or_without_prefix() {
    let d = demo(2, 200);
    snapshot(&d);
    let (code, out, _) = lethe(&["--config", cfg(&d), "plan", "--json"]);
    assert_eq!(code, 0);
    let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
    let hash = plan["hash"].as_str().unwrap().to_string();
    let now = plan["now"].as_str().unwrap().to_string();
    let bare = hash.trim_start_matches("sha256:").to_ascii_uppercase();
    let (code, out, err) = lethe(&[
        "--config",
        cfg(&d),
        "run",
        "retention",
        "--now",
        &now,
        "--plan-hash",
        &bare,
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
}

// ---- 2. PostgreSQL anchors of the wrong type ----------------------------------------------

#[test]
fn defect_2_postgres_text_and_bigint_anchors_are_refused_by_check_not_compared_as_text() {
    let Some(pg) = common::pg::PgSchema::create("hardening_anchor_types") else {
        return;
    };
    let d = demo(2, 200);
    no_brake(&d);
    pg.block_on(lethe::demo::load_into_postgres(&d.db(), &pg.url))
        .unwrap();
    common::use_pg(&d, &pg.url);
    let (code, out, err) = lethe(&["--config", cfg(&d), "check"]);
    assert_eq!(code, 0, "{out}\n{err}");
    // text holding Unix seconds or '' (the outside check deleted recent rows with this), and
    // bigint (the outside check got a raw PostgreSQL error from `plan`).
    pg.execute(
        "ALTER TABLE messages ALTER COLUMN created_at TYPE text USING CAST(extract(epoch FROM created_at) AS bigint)::text;
         UPDATE messages SET created_at = '' WHERE id = (SELECT min(id) FROM messages);
         ALTER TABLE calls ALTER COLUMN started_at TYPE bigint USING CAST(extract(epoch FROM started_at) AS bigint);",
    );
    let total =
        || pg.count("SELECT count(*) FROM messages") + pg.count("SELECT count(*) FROM calls");
    let before = total();
    for args in [&["check"][..], &["plan"][..], &["run", "retention"][..]] {
        let mut all = vec!["--config", cfg(&d)];
        all.extend_from_slice(args);
        let (code, out, err) = lethe(&all);
        assert_eq!(code, 2, "{args:?}\n{out}\n{err}");
        for n in [
            "messages",
            "created_at",
            "\"text\"",
            "calls",
            "started_at",
            "\"bigint\"",
            "timestamptz",
        ] {
            assert!(err.contains(n), "{args:?}: {n:?} not in\n{err}");
        }
    }
    assert_eq!(total(), before, "nothing deleted");
}

#[test]
fn defect_7_a_store_url_pointing_elsewhere_is_refused_before_anything_is_deleted() {
    let d = ran(2, 200);
    // The same database and keys, but a store that is not the one they have been recording to.
    let elsewhere = d.dir.join("other-store");
    std::fs::create_dir(&elsewhere).unwrap();
    let before = rows(&d);
    sql(
        &d.db(),
        "UPDATE messages SET created_at = '2020-01-01 00:00:00' WHERE id = (SELECT min(id) FROM messages WHERE tenant_id <> 'klinik-sehat')",
    );
    let (code, out, err) = lethe_env(
        &["--config", cfg(&d), "run", "retention"],
        &[("LETHE_STORE_URL", elsewhere.display().to_string())],
    );
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("audit-anchor.json") && err.contains("store.url"),
        "{err}"
    );
    assert_eq!(rows(&d), before, "nothing deleted");
    assert!(!elsewhere.join("audit").exists(), "no second chain started");
}
