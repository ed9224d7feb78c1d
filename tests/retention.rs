//! Retention end to end on the embedded default (SQLite + local store): boundaries to the
//! second, legal holds, the brake and the plan hash, crash-and-rerun convergence, the audit
//! chain, and that no personal data reaches audit records or logs.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use common::{Demo, demo, lethe, lethe_env};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn sql(db: &Path, stmt: &str) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch(stmt).unwrap();
}

fn ids(db: &Path, query: &str) -> BTreeSet<i64> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut st = c.prepare(query).unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// Turn the brake off for tests that are not about it.
fn no_brake(d: &Demo) {
    let mut text = std::fs::read_to_string(&d.config).unwrap();
    text.push_str("\n[retention]\nmax_share = 1.0\nmax_rows = 100000000\nbatch_rows = 50\n");
    std::fs::write(&d.config, text).unwrap();
}

/// Plan at `now`, then execute exactly that plan (as `--plan-hash` does).
fn retention_at(d: &Demo, now: DateTime<Utc>) -> lethe::pipeline::RetentionRun {
    rt().block_on(async {
        let c = lethe::check::check(&d.config).unwrap();
        let plan = lethe::pipeline::retention_plan(&c, now).await.unwrap();
        lethe::pipeline::run_retention(&c, &lethe::clock::system(), now, Some(&plan.hash))
            .await
            .unwrap()
    })
}

fn plan_at(d: &Demo, now: DateTime<Utc>) -> lethe::retention::plan::RetentionPlan {
    rt().block_on(async {
        let c = lethe::check::check(&d.config).unwrap();
        lethe::pipeline::retention_plan(&c, now).await.unwrap()
    })
}

/// An active tenant without overrides or holds in the demo policy.
fn plain_tenant(d: &Demo) -> String {
    let c = rusqlite::Connection::open(d.db()).unwrap();
    c.query_row(
        "SELECT id FROM tenants WHERE cancelled_at IS NULL AND id NOT IN ('klinik-sehat', 'kopi-senja') ORDER BY id LIMIT 1",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

fn snapshot(d: &Demo) {
    let (code, out, err) = lethe(&["--config", d.config.to_str().unwrap(), "run", "snapshot"]);
    assert_eq!(code, 0, "{out}\n{err}");
}

/// Copy the newest committed run of `tenant` as a run taken `days` days before `now`
/// (manifest re-checksummed), so backup retention has something to purge.
fn fake_old_run(d: &Demo, tenant: &str, now: DateTime<Utc>, days: i64) -> String {
    let tdir = d.store().join("snapshots").join(format!("tenant={tenant}"));
    let mut runs: Vec<PathBuf> = std::fs::read_dir(&tdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("_manifest.json").exists())
        .collect();
    runs.sort();
    let src = runs.last().unwrap();
    let mut m =
        lethe::snapshot::Manifest::from_bytes(&std::fs::read(src.join("_manifest.json")).unwrap())
            .unwrap();
    let at = now - TimeDelta::days(days);
    let id = format!("{}-{:04x}", at.format("%Y%m%dT%H%M%SZ"), days);
    let dst = tdir.join(format!("run={id}"));
    for f in &mut m.files {
        let old = d.store().join(&f.path);
        f.path = f
            .path
            .replace(&format!("run={}", m.run_id), &format!("run={id}"));
        let new = d.store().join(&f.path);
        std::fs::create_dir_all(new.parent().unwrap()).unwrap();
        std::fs::copy(old, new).unwrap();
    }
    m.run_id = id.clone();
    m.created_at = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    m.committed_at = m.created_at.clone();
    // (a run's subject index is sealed to its own run id: the copy goes without one)
    m.subject_index = None;
    std::fs::write(dst.join("_manifest.json"), m.to_bytes_unauthenticated()).unwrap();
    id
}

fn run_dirs(d: &Demo, tenant: &str) -> BTreeSet<String> {
    let tdir = d.store().join("snapshots").join(format!("tenant={tenant}"));
    std::fs::read_dir(tdir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn boundaries_to_the_second_calendar_months_and_other_anchors() {
    let d = demo(3, 20);
    no_brake(&d);
    let t = plain_tenant(&d);
    let db = d.db();
    let blobs = d.dir.join("blobs");

    // Selfies: 90 days after capture, to the second (rows and their photo blobs).
    let now = Utc.with_ymd_and_hms(2026, 6, 15, 12, 0, 0).unwrap();
    let ninety = now - TimeDelta::days(90);
    for (id, at) in [
        (900001, ninety - TimeDelta::seconds(1)),
        (900002, ninety),
        (900003, ninety + TimeDelta::seconds(1)),
    ] {
        let key = format!("photos/{t}/test-{id}.jpg");
        std::fs::create_dir_all(blobs.join(format!("photos/{t}"))).unwrap();
        std::fs::write(blobs.join(&key), b"\xff\xd8\xff test photo").unwrap();
        sql(
            &db,
            &format!(
                "INSERT INTO attendance_checkins VALUES ({id}, '{t}', 1, 'EMP-{id}', '{}', 0.0, 0.0, '{key}')",
                ts(at)
            ),
        );
    }
    // Support tickets: one year after *resolution*.
    let two_years = now - TimeDelta::days(730);
    for (id, resolved) in [
        (900011, Some(now - TimeDelta::days(335))), // resolved 11 months ago: kept
        (900012, Some(now - TimeDelta::days(396))), // resolved 13 months ago: deleted
        (900013, None),                             // never resolved: kept
    ] {
        let r = resolved
            .map(|r| format!("'{}'", ts(r)))
            .unwrap_or("NULL".into());
        sql(
            &db,
            &format!(
                "INSERT INTO support_tickets VALUES ({id}, '{t}', 'x{id}@example.com', 's', 'b', '{}', {r})",
                ts(two_years)
            ),
        );
    }
    // Audit logs: 12 calendar months from 31 March.
    sql(
        &db,
        &format!(
            "INSERT INTO audit_log VALUES (900021, '{t}', 1, 'login', NULL, '2025-03-31 10:00:00');
         INSERT INTO audit_log VALUES (900022, '{t}', 1, 'login', NULL, '2025-03-31 10:00:01');"
        ),
    );
    // Security logs: one year from 29 February 2024 ends with 28 February 2025.
    sql(
        &db,
        &format!(
            "INSERT INTO security_log VALUES (900031, '{t}', 'login', 1, NULL, '2024-02-29 12:00:00');"
        ),
    );

    // The demo's own rows are all newer than every `now` below: none of them may go.
    let crafted = |row: &str| {
        row.split('|')
            .next()
            .and_then(|id| {
                id.strip_prefix("Integer(")?
                    .strip_suffix(')')?
                    .parse::<i64>()
                    .ok()
            })
            .is_some_and(|id| id >= 900_000)
    };
    let demo_rows = || {
        state(&d)
            .0
            .iter()
            .map(|(t, rows)| (t.clone(), rows.iter().filter(|r| !crafted(r)).count()))
            .collect::<BTreeMap<_, _>>()
    };
    let demo_before = demo_rows();
    let at = |y, m, dd, h, mi, s| Utc.with_ymd_and_hms(y, m, dd, h, mi, s).unwrap();
    retention_at(&d, at(2025, 2, 28, 23, 59, 59));
    assert!(
        ids(&db, "SELECT id FROM security_log WHERE id = 900031").contains(&900031),
        "29 Feb + 1y is not over on 28 Feb 23:59:59"
    );
    retention_at(&d, at(2025, 3, 1, 0, 0, 0));
    assert!(
        ids(&db, "SELECT id FROM security_log WHERE id = 900031").is_empty(),
        "29 Feb + 1y is over at 1 Mar 00:00"
    );

    retention_at(&d, at(2026, 3, 31, 10, 0, 0));
    assert_eq!(
        ids(&db, "SELECT id FROM audit_log WHERE id >= 900021"),
        BTreeSet::from([900022]),
        "31 March + 12mo ends 31 March at the same second"
    );

    let run = retention_at(&d, now);
    assert_eq!(
        ids(&db, "SELECT id FROM attendance_checkins WHERE id >= 900001"),
        BTreeSet::from([900003]),
        "90 days minus one second is kept; exactly 90 days and 90 days plus one second are deleted"
    );
    assert!(!blobs.join(format!("photos/{t}/test-900001.jpg")).exists());
    assert!(!blobs.join(format!("photos/{t}/test-900002.jpg")).exists());
    assert!(
        blobs.join(format!("photos/{t}/test-900003.jpg")).exists(),
        "a kept row keeps its photo"
    );
    assert_eq!(
        ids(&db, "SELECT id FROM support_tickets WHERE id >= 900011"),
        BTreeSet::from([900011, 900013]),
        "tickets are measured from resolution; an unresolved ticket never expires"
    );
    assert!(run.outcome.verified());
    assert!(run.outcome.blobs_deleted >= 2);
    let mut demo_after = demo_rows();
    demo_after.remove("lethe_blob_outbox");
    assert_eq!(demo_after, demo_before, "a row that was not due went");
}

#[test]
fn legal_holds_win_for_rows_blobs_and_backups_and_name_their_reason() {
    let d = demo(6, 120);
    no_brake(&d);
    snapshot(&d);
    let now = Utc::now() - TimeDelta::seconds(5);
    let db = d.db();
    let t = plain_tenant(&d);
    // A subject-level hold from the source table, and a whole-tenant hold.
    let c = rusqlite::Connection::open(&db).unwrap();
    let phone: String = c
        .query_row(
            &format!("SELECT customer_phone FROM messages WHERE tenant_id = '{t}' AND created_at < '{}' LIMIT 1", ts(now - TimeDelta::days(100))),
            [],
            |r| r.get(0),
        )
        .unwrap();
    let held_tenant: String = c
        .query_row(
            &format!("SELECT id FROM tenants WHERE cancelled_at IS NULL AND id NOT IN ('klinik-sehat', 'kopi-senja', '{t}') ORDER BY id LIMIT 1"),
            [],
            |r| r.get(0),
        )
        .unwrap();
    let free: String = c
        .query_row(
            &format!("SELECT id FROM tenants WHERE cancelled_at IS NULL AND id NOT IN ('klinik-sehat', 'kopi-senja', '{t}', '{held_tenant}') ORDER BY id LIMIT 1"),
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(c);
    sql(&db, &format!(
        "CREATE TABLE legal_holds (tenant TEXT, table_name TEXT, category TEXT, subject TEXT, reason TEXT, placed_by TEXT, placed_at TEXT);
         INSERT INTO legal_holds VALUES ('{t}', 'messages', NULL, '{phone}', 'Subject access dispute, ticket LGL-7', 'dpo@lethe.example', '2026-10-01');
         INSERT INTO legal_holds VALUES ('{held_tenant}', NULL, NULL, NULL, 'Regulator inquiry 2026-33', 'legal@lethe.example', '2026-10-02');"
    ));
    let policy = d.dir.join("jobs/retention.toml");
    let mut p = std::fs::read_to_string(&policy).unwrap();
    p = p.replacen(
        "[backups]",
        "[legal_holds_source]\ntable = \"legal_holds\"\n\n[backups]",
        1,
    );
    std::fs::write(&policy, p).unwrap();

    let old_held = fake_old_run(&d, &held_tenant, now, 45);
    // Any hold on a tenant keeps its backups (they hold the held data too).
    let old_subject_held = fake_old_run(&d, &t, now, 45);
    let old_free = fake_old_run(&d, &free, now, 45);
    let held_selfies_before = ids(
        &db,
        &format!(
            "SELECT id FROM attendance_checkins WHERE tenant_id = '{held_tenant}' AND checked_in_at < '{}'",
            ts(now - TimeDelta::days(91))
        ),
    );
    let held_subject_before = ids(
        &db,
        &format!("SELECT id FROM messages WHERE customer_phone = '{phone}' AND tenant_id = '{t}'"),
    );
    assert!(!held_subject_before.is_empty());

    let plan = plan_at(&d, now);
    let json = serde_json::to_string(&plan).unwrap();
    assert!(
        !json.contains(&phone),
        "the plan must not name the held subject"
    );
    assert!(
        json.contains("Subject access dispute, ticket LGL-7"),
        "{json}"
    );
    assert!(json.contains("Regulator inquiry 2026-33"));
    assert!(
        plan.held_back.iter().any(|h| h.kind == "legal_hold"
            && h.subject.as_deref().is_some_and(|s| s.starts_with("hmac:")))
    );
    assert!(
        plan.held_back
            .iter()
            .any(|h| h.kind == "legal_hold" && h.run_id.as_deref() == Some(&old_held))
    );
    assert!(
        plan.backups.iter().any(|r| r.run_id == old_free),
        "{:?}",
        plan.backups
    );
    assert!(
        !plan.actions.iter().any(|a| a.tenant == held_tenant),
        "a held tenant has no action"
    );

    let run = retention_at(&d, now);
    assert!(run.outcome.verified());
    // Rows: the held subject's messages all stay; the tenant's other old messages go.
    assert_eq!(
        ids(
            &db,
            &format!(
                "SELECT id FROM messages WHERE customer_phone = '{phone}' AND tenant_id = '{t}'"
            )
        ),
        held_subject_before
    );
    assert!(ids(&db, &format!(
        "SELECT id FROM messages WHERE tenant_id = '{t}' AND customer_phone <> '{phone}' AND created_at <= '{}'",
        ts(now - TimeDelta::days(90))
    )).is_empty());
    // The held tenant: old selfies (rows and blobs) stay, and so does its old backup.
    assert!(run_dirs(&d, &t).contains(&format!("run={old_subject_held}")));
    let held_selfies_after = ids(
        &db,
        &format!(
            "SELECT id FROM attendance_checkins WHERE tenant_id = '{held_tenant}' AND checked_in_at < '{}'",
            ts(now - TimeDelta::days(91))
        ),
    );
    assert_eq!(held_selfies_after, held_selfies_before);
    assert!(run_dirs(&d, &held_tenant).contains(&format!("run={old_held}")));
    assert!(
        !run_dirs(&d, &free).contains(&format!("run={old_free}")),
        "the unheld old run is purged"
    );
    assert!(
        !run_dirs(&d, &free).is_empty(),
        "the newest run of an active tenant stays"
    );
}

#[test]
fn brake_stops_a_mass_deletion_until_the_plan_hash_confirms_it() {
    let d = demo(3, 200);
    let mut text = std::fs::read_to_string(&d.config).unwrap();
    text.push_str("\n[retention]\nmax_share = 0.2\n");
    std::fs::write(&d.config, text).unwrap();
    let cfg = d.config.to_str().unwrap();
    let before = std::fs::read(d.db()).unwrap();
    let now = (Utc::now() - TimeDelta::seconds(2)).to_rfc3339();
    let (code, out, err) = lethe(&["--config", cfg, "run", "retention", "--now", &now]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("safety brake") && err.contains("--plan-hash"),
        "{err}"
    );
    assert!(err.contains("messages"), "the brake names the table: {err}");
    assert_eq!(std::fs::read(d.db()).unwrap(), before, "nothing deleted");

    let (code, out, err) = lethe(&[
        "--config",
        cfg,
        "run",
        "retention",
        "--now",
        &now,
        "--plan-hash",
        "sha256:0000",
    ]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("differs"), "{err}");
    assert_eq!(std::fs::read(d.db()).unwrap(), before, "nothing deleted");

    let (code, out, err) = lethe(&["--config", cfg, "plan", "--now", &now, "--json"]);
    assert_eq!(code, 0, "{err}");
    let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
    let hash = plan["hash"].as_str().unwrap();
    assert!(!plan["brake"].as_array().unwrap().is_empty());
    let (code, out, err) = lethe(&[
        "--config",
        cfg,
        "run",
        "retention",
        "--now",
        &now,
        "--plan-hash",
        hash,
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("messages"), "{out}");

    // A clock override in the future is refused.
    let later = (Utc::now() + TimeDelta::days(1)).to_rfc3339();
    let (code, _, err) = lethe(&["--config", cfg, "run", "retention", "--now", &later]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("later than the clock"), "{err}");
}

#[test]
fn plan_changes_nothing_and_a_bad_policy_deletes_nothing() {
    let d = demo(3, 200);
    snapshot(&d);
    let cfg = d.config.to_str().unwrap();
    let before = common::files(&d.dir);
    let (code, out, err) = lethe(&["--config", cfg, "plan"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("plan hash: sha256:"), "{out}");
    assert!(
        out.contains("legal_hold"),
        "the plan shows what is held back: {out}"
    );
    assert_same_files(&common::files(&d.dir), &before, "plan changed a file");

    let policy = d.dir.join("jobs/retention.toml");
    let good = std::fs::read_to_string(&policy).unwrap();
    for (what, text) in [
        ("empty", String::new()),
        ("garbled", good.replace("retain = \"90d\"", "retain = 90d")),
        ("zero", good.replace("retain = \"90d\"", "retain = \"0d\"")),
    ] {
        std::fs::write(&policy, &text).unwrap();
        let before = common::files(&d.dir);
        for args in [vec!["plan"], vec!["run", "retention"]] {
            let mut a = vec!["--config", cfg];
            a.extend(args.iter());
            let (code, out, err) = lethe(&a);
            assert_eq!(code, 2, "{what} policy, {args:?}: {out}\n{err}");
            assert!(
                err.contains("retention.toml"),
                "{what}: names the file: {err}"
            );
        }
        assert_same_files(
            &common::files(&d.dir),
            &before,
            format!("{what} policy: something changed"),
        );
    }
    std::fs::remove_file(&policy).unwrap();
    let (code, _, err) = lethe(&["--config", cfg, "run", "retention"]);
    assert_eq!(code, 2, "{err}");
}

/// The state retention acts on: every row of every table, the blob files, the snapshot runs.
fn state(
    d: &Demo,
) -> (
    BTreeMap<String, Vec<String>>,
    BTreeSet<String>,
    BTreeSet<String>,
) {
    let c = rusqlite::Connection::open(d.db()).unwrap();
    let mut tables = BTreeMap::new();
    let names: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    for n in names {
        let mut st = c.prepare(&format!("SELECT * FROM \"{n}\"")).unwrap();
        let cols = st.column_count();
        let mut rows: Vec<String> = st
            .query_map([], |r| {
                Ok((0..cols)
                    .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                    .collect::<Vec<_>>()
                    .join("|"))
            })
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        rows.sort();
        tables.insert(n, rows);
    }
    let blobs = common::files(&d.dir.join("blobs"))
        .keys()
        .map(|p| {
            p.strip_prefix(d.dir.join("blobs"))
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let runs = common::files(&d.store().join("snapshots"))
        .keys()
        .map(|p| {
            p.strip_prefix(d.store())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    (tables, blobs, runs)
}

/// Every blob file is referenced by a row, and every reference points at a file.
fn assert_no_orphans_no_dangling(d: &Demo, blobs: &BTreeSet<String>) {
    let refs: BTreeSet<String> = {
        let c = rusqlite::Connection::open(d.db()).unwrap();
        let mut out = BTreeSet::new();
        for q in [
            "SELECT selfie_key FROM attendance_checkins WHERE selfie_key IS NOT NULL",
            "SELECT recording_key FROM calls WHERE recording_key IS NOT NULL",
        ] {
            let mut st = c.prepare(q).unwrap();
            out.extend(
                st.query_map([], |r| r.get::<_, String>(0))
                    .unwrap()
                    .map(|r| r.unwrap()),
            );
        }
        out
    };
    let orphans: Vec<_> = blobs.difference(&refs).collect();
    let dangling: Vec<_> = refs.difference(blobs).collect();
    assert!(orphans.is_empty(), "orphaned blobs: {orphans:?}");
    assert!(
        dangling.is_empty(),
        "rows pointing at deleted blobs: {dangling:?}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    for (p, bytes) in common::files(from) {
        let rel = p.strip_prefix(from).unwrap();
        let dst = to.join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::write(&dst, bytes).unwrap();
    }
    // Keep private files private (the keyring refuses loose permissions? keep modes anyway).
    for (p, _) in common::files(to) {
        let src = from.join(p.strip_prefix(to).unwrap());
        let mode = std::fs::metadata(&src).unwrap().permissions();
        std::fs::set_permissions(&p, mode).unwrap();
    }
}

/// A demo copy at `dir` with the same layout (lethe.toml uses relative paths).
fn copy_demo(d: &Demo, name: &str) -> Demo {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    copy_dir(&d.dir, &dir);
    Demo {
        config: dir.join("lethe.toml"),
        dir,
        _tmp: tmp,
    }
}

#[test]
fn killed_at_every_step_then_rerun_converges_to_the_uninterrupted_end_state() {
    let base = demo(4, 150);
    no_brake(&base);
    snapshot(&base);
    let now = Utc::now() - TimeDelta::seconds(5);
    for t in ["kopi-senja", &plain_tenant(&base)] {
        fake_old_run(&base, t, now, 40);
        fake_old_run(&base, t, now, 35);
    }
    let now_s = now.to_rfc3339();

    // The reference: one uninterrupted run.
    let reference = copy_demo(&base, "reference");
    let (code, out, err) = lethe(&[
        "--config",
        reference.config.to_str().unwrap(),
        "run",
        "retention",
        "--now",
        &now_s,
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let want = state(&reference);
    assert_no_orphans_no_dangling(&reference, &want.1);
    assert_ne!(want, state(&base), "the run must have something to do");

    // Crash at crash point 1, 2, 3, … of successive runs until one completes. The crash points
    // exist in debug builds only (what `cargo test` builds).
    let work = copy_demo(&base, "work");
    if !cfg!(debug_assertions) {
        eprintln!(
            "\n*** crash points are compiled into debug builds only: run this test without --release ***\n"
        );
    }
    let cfg = work.config.to_str().unwrap().to_string();
    let mut crashes = 0;
    for n in 1..=400 {
        let (code, out, err) = lethe_env(
            &["--config", &cfg, "run", "retention", "--now", &now_s],
            &[("LETHE_CRASH_AT", n.to_string())],
        );
        if code == 0 {
            break;
        }
        assert!(
            err.contains("LETHE_CRASH_AT"),
            "run {n} failed for another reason: {out}\n{err}"
        );
        crashes += 1;
        let (tables, blobs, _) = state(&work);
        let _ = tables;
        // Between runs the invariant holds: blobs are referenced or pending in the outbox.
        let pending: BTreeSet<String> = {
            let c = rusqlite::Connection::open(work.db()).unwrap();
            let mut st = c.prepare("SELECT blob_key FROM lethe_blob_outbox").unwrap();
            st.query_map([], |r| r.get::<_, String>(0))
                .unwrap()
                .map(|r| r.unwrap())
                .collect()
        };
        let live: BTreeSet<String> = blobs.difference(&pending).cloned().collect();
        assert_no_orphans_no_dangling(&work, &live);
    }
    if cfg!(debug_assertions) {
        assert!(crashes >= 10, "only {crashes} crash points were hit");
    }
    let (code, out, err) = lethe(&["--config", &cfg, "run", "retention", "--now", &now_s]);
    assert_eq!(code, 0, "{out}\n{err}");
    let got = state(&work);
    assert_eq!(
        got.0.keys().collect::<Vec<_>>(),
        want.0.keys().collect::<Vec<_>>()
    );
    for (t, rows) in &want.0 {
        if t == "lethe_blob_outbox" {
            assert!(got.0[t].is_empty(), "outbox drained");
            continue;
        }
        assert_eq!(
            &got.0[t], rows,
            "table {t} differs from the uninterrupted run"
        );
    }
    assert_eq!(got.1, want.1, "blobs differ");
    assert_eq!(got.2, want.2, "snapshot runs differ");
    assert_no_orphans_no_dangling(&work, &got.1);
    let (code, out, err) = lethe(&["--config", &cfg, "audit", "verify"]);
    assert_eq!(
        code, 0,
        "the audit chain verifies after {crashes} crashes: {out}\n{err}"
    );

    // Real SIGKILLs at random moments, then a final run: same end state.
    let killed = copy_demo(&base, "killed");
    let kcfg = killed.config.to_str().unwrap().to_string();
    common::kill_randomly(
        &["--config", &kcfg, "run", "retention", "--now", &now_s],
        6,
        0x2545_f491_4f6c_dd1d,
        400,
    );
    let (code, out, err) = lethe(&["--config", &kcfg, "run", "retention", "--now", &now_s]);
    assert_eq!(code, 0, "{out}\n{err}");
    let got = state(&killed);
    for (t, rows) in &want.0 {
        if t != "lethe_blob_outbox" {
            assert_eq!(&got.0[t], rows, "table {t} differs after SIGKILLs");
        }
    }
    assert_eq!(got.1, want.1);
    assert_eq!(got.2, want.2);
    let (code, out, err) = lethe(&["--config", &kcfg, "audit", "verify"]);
    assert_eq!(code, 0, "{out}\n{err}");
}

#[test]
fn audit_records_and_logs_carry_no_personal_data_and_tampering_is_named() {
    let d = demo(4, 150);
    no_brake(&d);
    snapshot(&d);
    let needles = common::personal_needles(&d.db());
    let cfg = d.config.to_str().unwrap();
    let (code, out, err) = lethe(&["--config", cfg, "-vv", "run", "retention"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let hits = common::found_in(format!("{out}\n{err}").as_bytes(), &needles);
    assert!(hits.is_empty(), "personal data in output or logs: {hits:?}");
    let audit = common::files(&d.store().join("audit"));
    assert!(audit.len() > 5, "audit records were written");
    for (p, bytes) in &audit {
        let hits = common::found_in(bytes, &needles);
        assert!(
            hits.is_empty(),
            "personal data in {}: {hits:?}",
            p.display()
        );
    }
    let (code, out, _) = lethe(&["--config", cfg, "audit", "verify"]);
    assert_eq!(code, 0, "{out}");

    // Edit one record (still valid JSON): verify names it.
    let rec = d.store().join("audit/records/000000000002.json");
    let original = std::fs::read(&rec).unwrap();
    let text = String::from_utf8(original.clone()).unwrap();
    let edited = text.replacen("\"step\":\"", "\"step\":\"x", 1);
    assert_ne!(edited, text);
    std::fs::write(&rec, edited).unwrap();
    let (code, out, _) = lethe(&["--config", cfg, "audit", "verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("000000000002.json"), "{out}");
    std::fs::write(&rec, &original).unwrap();

    // Remove a record: named.
    let gone = d.store().join("audit/records/000000000004.json");
    let kept = std::fs::read(&gone).unwrap();
    std::fs::remove_file(&gone).unwrap();
    let (code, out, _) = lethe(&["--config", cfg, "audit", "verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("000000000004"), "{out}");
    std::fs::write(&gone, kept).unwrap();
    let (code, out, _) = lethe(&["--config", cfg, "audit", "verify"]);
    assert_eq!(code, 0, "restored chain verifies: {out}");
}

#[test]
fn a_pinned_run_is_kept_until_unpinned() {
    let d = demo(3, 20);
    no_brake(&d);
    snapshot(&d);
    let t = plain_tenant(&d);
    let now = Utc::now() - TimeDelta::seconds(5);
    let old = fake_old_run(&d, &t, now, 60);
    let cfg = d.config.to_str().unwrap();
    let (code, out, err) = lethe(&[
        "--config",
        cfg,
        "snapshot",
        "pin",
        "--tenant",
        &t,
        "--run",
        &old,
        "--reason",
        "restore drill OPS-12",
        "--by",
        "ops",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = lethe(&["--config", cfg, "plan", "--json"]);
    assert_eq!(code, 0, "{err}");
    let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        plan["held_back"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["kind"] == "pinned"
                && h["run_id"] == old.as_str()
                && h["reason"] == "restore drill OPS-12"),
        "{out}"
    );
    let (code, out, err) = lethe(&["--config", cfg, "run", "retention"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(run_dirs(&d, &t).contains(&format!("run={old}")));
    let (code, out, err) = lethe(&[
        "--config", cfg, "snapshot", "unpin", "--tenant", &t, "--run", &old,
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = lethe(&["--config", cfg, "run", "retention"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        !run_dirs(&d, &t).contains(&format!("run={old}")),
        "unpinned: purged"
    );
    assert!(!run_dirs(&d, &t).is_empty(), "the newest run stays");
}

/// Review regressions on the embedded default: a non-canonical SQLite anchor stops the run
/// before anything goes; a legal hold naming an unknown tenant stops it too; a blob shared with
/// a kept row stays.
#[test]
fn fail_closed_on_odd_anchors_unknown_hold_targets_and_shared_blobs() {
    let d = demo(3, 20);
    no_brake(&d);
    let cfg = d.config.to_str().unwrap();
    let t = plain_tenant(&d);
    let db = d.db();
    // An epoch number in a timestamp column: it would sort below every text cutoff.
    sql(
        &db,
        &format!(
            "INSERT INTO attendance_checkins VALUES (910001, '{t}', 1, 'E', 1893456000, 0, 0, NULL)"
        ),
    );
    let before = common::files(&d.dir);
    let (code, out, err) = lethe(&["--config", cfg, "run", "retention"]);
    assert_eq!(code, 1, "{out}\n{err}"); // Refusal::UnsafeData
    assert!(
        err.contains("attendance_checkins") && err.contains("checked_in_at"),
        "{err}"
    );
    assert_same_files(&common::files(&d.dir), &before, "nothing changed");
    sql(&db, "DELETE FROM attendance_checkins WHERE id = 910001");

    // A hold naming a tenant that does not exist (a typo) protects nothing: refuse.
    let policy = d.dir.join("jobs/retention.toml");
    let good = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(
        &policy,
        good.replacen("tenant = \"klinik-sehat\"", "tenant = \"klinik-sehatt\"", 1),
    )
    .unwrap();
    let (code, out, err) = lethe(&["--config", cfg, "run", "retention"]);
    assert_eq!(code, 1, "{out}\n{err}"); // Refusal::UnknownNames
    assert!(err.contains("klinik-sehatt"), "{err}");
    std::fs::write(&policy, good).unwrap();

    // A blob referenced by an expired row and by a fresh one stays.
    let now = Utc::now() - TimeDelta::seconds(5);
    let key = format!("photos/{t}/shared.jpg");
    std::fs::create_dir_all(d.dir.join(format!("blobs/photos/{t}"))).unwrap();
    std::fs::write(d.dir.join("blobs").join(&key), b"jpg").unwrap();
    sql(
        &db,
        &format!(
            "INSERT INTO attendance_checkins VALUES (910002, '{t}', 1, 'E', '{}', 0, 0, '{key}');
         INSERT INTO attendance_checkins VALUES (910003, '{t}', 1, 'E', '{}', 0, 0, '{key}');",
            ts(now - TimeDelta::days(200)),
            ts(now - TimeDelta::days(1))
        ),
    );
    let run = retention_at(&d, now);
    assert!(run.outcome.verified());
    assert_eq!(
        ids(&db, "SELECT id FROM attendance_checkins WHERE id >= 910002"),
        BTreeSet::from([910003])
    );
    assert!(
        d.dir.join("blobs").join(&key).exists(),
        "the kept row's blob stays"
    );
}

/// Two directory snapshots are equal; on failure, names the differing paths only.
fn assert_same_files(
    got: &BTreeMap<PathBuf, Vec<u8>>,
    want: &BTreeMap<PathBuf, Vec<u8>>,
    what: impl std::fmt::Display,
) {
    let diff: Vec<&PathBuf> = got
        .keys()
        .chain(want.keys())
        .filter(|p| got.get(*p) != want.get(*p))
        .collect();
    assert!(diff.is_empty(), "{what}: files differ: {diff:?}");
}

/// The payload of a compact JWS (not verified: the test verifies with `lethe` separately).
fn jws_payload(jws: &str) -> serde_json::Value {
    use base64::Engine;
    let p = jws.trim().split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn an_attestation_measures_what_survived_and_a_row_past_its_rule_is_a_violation() {
    let d = demo(2, 60);
    no_brake(&d);
    let cfg = d.config.to_str().unwrap();
    let db = d.db();
    let (code, out, err) = lethe(&["--config", cfg, "run", "retention"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let tenant: String = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT tenant_id FROM attendance_checkins GROUP BY tenant_id ORDER BY tenant_id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let month = Utc::now().format("%Y-%m").to_string();
    let attest = |out: &Path| {
        lethe(&[
            "--config",
            cfg,
            "attest",
            "--tenant",
            &tenant,
            "--period",
            &month,
            "--out",
            out.to_str().unwrap(),
        ])
    };

    // Right after retention: every promise kept, measured live (the month is not over).
    let first = d.dir.join("attest-1.jws");
    let (code, out, err) = attest(&first);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("outcome kept"), "{err}");
    let jws = std::fs::read_to_string(&first).unwrap();
    let p = jws_payload(&jws);
    assert_eq!(p["format"], "lethe-attestation/1");
    assert_eq!(p["period"]["complete"], false);
    assert_eq!(p["measurement"]["kind"], "live");
    assert!(p["retention_runs"].as_u64().unwrap() >= 1, "{p}");
    let cats = p["categories"].as_array().unwrap();
    let selfies = cats
        .iter()
        .find(|c| c["category"] == "selfie_photos")
        .unwrap();
    assert_eq!(selfies["status"], "kept", "{selfies}");
    assert_eq!(selfies["measured"]["rows_past_rule"], 0);
    let oldest = selfies["measured"]["oldest_surviving_anchor"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        oldest > ts(Utc::now() - TimeDelta::days(91)),
        "nothing older than the rule survives: {oldest}"
    );
    // The deletions of the month come from the audit records.
    let deleted: u64 = cats
        .iter()
        .map(|c| c["rows_deleted"].as_u64().unwrap())
        .sum();
    assert!(deleted > 0, "{p}");
    // Verifies like a certificate (signature and anchor), and names no person.
    let (code, out, err) = lethe(&[
        "--config",
        cfg,
        "certificate",
        "verify",
        first.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("retention attestation") && out.contains("anchor verified"),
        "{out}"
    );
    let found = common::found_in(p.to_string().as_bytes(), &common::personal_needles(&db));
    assert!(
        found.is_empty(),
        "identifiers in the attestation: {found:?}"
    );
    // Rendered for people, like a certificate.
    let html = d.dir.join("attest-1.html");
    let (code, out, err) = lethe(&[
        "--config",
        cfg,
        "certificate",
        "render",
        first.to_str().unwrap(),
        "--format",
        "html",
        "--out",
        html.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("Retention attestation") && page.contains("attendance_checkins"),
        "{page}"
    );
    assert!(common::found_in(page.as_bytes(), &common::personal_needles(&db)).is_empty());
    // A copy is kept in the store.
    let kept: Vec<PathBuf> = common::files(&d.store())
        .into_keys()
        .filter(|k| {
            k.to_string_lossy()
                .contains(&format!("attestations/tenant={tenant}/{month}/"))
        })
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");

    // Retention stops; a selfie 200 days old appears (a restore, an import, a bug).
    let c = rusqlite::Connection::open(&db).unwrap();
    let cols: Vec<String> = c
        .prepare("SELECT name FROM pragma_table_info('attendance_checkins')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let old = ts(Utc::now() - TimeDelta::days(200));
    let select: Vec<String> = cols
        .iter()
        .map(|c| match c.as_str() {
            "id" => "(SELECT max(id) + 1 FROM attendance_checkins)".to_string(),
            "checked_in_at" => format!("'{old}'"),
            "selfie_key" => "NULL".to_string(),
            other => format!("\"{other}\""),
        })
        .collect();
    c.execute(
        &format!(
            "INSERT INTO attendance_checkins ({}) SELECT {} FROM attendance_checkins WHERE tenant_id = '{tenant}' LIMIT 1",
            cols.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", "),
            select.join(", ")
        ),
        [],
    )
    .unwrap();
    drop(c);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = d.dir.join("attest-2.jws");
    let (code, out, err) = attest(&second);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("VIOLATION")
            && err.contains("attendance_checkins")
            && err.contains("selfie_photos"),
        "{err}"
    );
    let p = jws_payload(&std::fs::read_to_string(&second).unwrap());
    assert_eq!(p["outcome"], "violations");
    let selfies = p["categories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["category"] == "selfie_photos")
        .unwrap()
        .clone();
    assert_eq!(selfies["status"], "violation", "{selfies}");
    assert_eq!(selfies["measured"]["rows_past_rule"], 1);
    assert_eq!(selfies["measured"]["oldest_surviving_anchor"], old.as_str());
    // The violation is signed too: it verifies.
    let (code, out, err) = lethe(&[
        "--config",
        cfg,
        "certificate",
        "verify",
        second.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}\n{err}");

    // A month that ended without a retention run in it has nothing to show: exit 1.
    let last = (Utc::now() - TimeDelta::days(40))
        .format("%Y-%m")
        .to_string();
    let (code, out, err) = lethe(&[
        "--config", cfg, "attest", "--tenant", &tenant, "--period", &last,
    ]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("unmeasured"), "{err}");

    // Bad input: exit 2, nothing stored.
    let next = (Utc::now() + TimeDelta::days(40))
        .format("%Y-%m")
        .to_string();
    for (args, says) in [
        (
            vec!["--tenant", tenant.as_str(), "--period", "2026-13"],
            "YYYY-MM",
        ),
        (
            vec!["--tenant", tenant.as_str(), "--period", "November"],
            "YYYY-MM",
        ),
        (
            vec!["--tenant", tenant.as_str(), "--period", next.as_str()],
            "has not begun",
        ),
        (
            vec!["--tenant", "../etc", "--period", month.as_str()],
            "not a tenant id",
        ),
    ] {
        let mut all = vec!["--config", cfg, "attest"];
        all.extend(args);
        let (code, out, err) = lethe(&all);
        assert_eq!(code, 2, "{all:?}: {out}\n{err}");
        assert!(err.contains(says), "{all:?}: {err}");
    }
}
