//! `lethe run <job>`: a job's steps in its file's order through one pipeline function, a run
//! record per job run, bad job files refused, and the nightly order never copying a row that was
//! already due into a new backup.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, TimeUnit};
use chrono::{DateTime, TimeDelta, Utc};
use common::{Demo, demo, files, lethe};

fn cfg(d: &Demo) -> &str {
    d.config.to_str().unwrap()
}

/// Every row of every table of the SQLite source, as text, per table.
fn database(db: &Path) -> BTreeMap<String, Vec<Vec<String>>> {
    let c = rusqlite::Connection::open(db).unwrap();
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name <> 'lethe_blob_outbox' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    tables
        .into_iter()
        .map(|t| {
            let mut st = c.prepare(&format!("SELECT * FROM {t} ORDER BY 1")).unwrap();
            let n = st.column_count();
            let rows = st
                .query_map([], |r| {
                    Ok((0..n)
                        .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                        .collect::<Vec<_>>())
                })
                .unwrap()
                .map(Result::unwrap)
                .collect();
            (t, rows)
        })
        .collect()
}

#[test]
fn run_nightly_equals_its_steps_one_by_one_and_records_the_run() {
    // Two identical demos (same seed, same day).
    let a = demo(3, 200);
    let b = demo(3, 200);
    assert_eq!(database(&a.db()), database(&b.db()));
    let now = (Utc::now() - TimeDelta::seconds(2)).to_rfc3339();
    let (code, out, _) = lethe(&["--config", cfg(&a), "plan", "--now", &now, "--json"]);
    assert_eq!(code, 0);
    let hash = serde_json::from_str::<serde_json::Value>(&out).unwrap()["hash"]
        .as_str()
        .unwrap()
        .to_string();

    let (code, out, err) = lethe(&[
        "--config",
        cfg(&a),
        "run",
        "nightly",
        "--now",
        &now,
        "--plan-hash",
        &hash,
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("== retention (ok)") && out.contains("== snapshot (ok)"),
        "{out}"
    );
    let (code, out, err) = lethe(&[
        "--config",
        cfg(&b),
        "run",
        "retention",
        "--now",
        &now,
        "--plan-hash",
        &hash,
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = lethe(&["--config", cfg(&b), "run", "erasure"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = lethe(&["--config", cfg(&b), "run", "snapshot"]);
    assert_eq!(code, 0, "{out}\n{err}");

    assert_eq!(database(&a.db()), database(&b.db()), "same database");
    let blobs = |d: &Demo| -> Vec<_> {
        files(&d.dir.join("blobs"))
            .into_keys()
            .map(|p| p.strip_prefix(d.dir.join("blobs")).unwrap().to_path_buf())
            .collect()
    };
    assert_eq!(blobs(&a), blobs(&b), "same blob set");
    for d in [&a, &b] {
        let (code, out, err) = lethe(&["--config", cfg(d), "audit", "verify"]);
        assert_eq!(code, 0, "{out}\n{err}");
    }

    // The run record: steps in the file's order with their outcomes and counts.
    let runs = files(&a.store().join("runs/nightly"));
    assert_eq!(runs.len(), 1, "{runs:?}");
    let rec: serde_json::Value = serde_json::from_slice(runs.values().next().unwrap()).unwrap();
    assert_eq!(rec["job"], "nightly");
    assert_eq!(rec["outcome"], "ok");
    let steps = rec["steps"].as_array().unwrap();
    assert_eq!(steps[0]["step"], "retention");
    assert_eq!(steps[1]["step"], "erasure");
    assert_eq!(steps[2]["step"], "snapshot");
    assert!(steps[0]["counts"]["rows"].as_u64().unwrap() > 0);
    assert_eq!(steps[1]["counts"]["requests_done"], 0);
    assert_eq!(steps[2]["counts"]["tenants_committed"], 3);
    // Single steps run by hand leave no record.
    assert!(!b.store().join("runs").exists());
}

#[test]
fn a_failed_step_stops_the_steps_after_it_and_is_recorded() {
    let d = demo(2, 200);
    // A legal hold naming a tenant that does not exist: retention refuses
    // (Refusal::UnknownNames, exit 1), so the snapshot does not run.
    let policy = d.dir.join("jobs/retention.toml");
    let mut text = std::fs::read_to_string(&policy).unwrap();
    text.push_str("\n[[legal_holds]]\ntenant = \"no-such-tenant\"\nreason = \"case 7\"\nplaced_by = \"legal\"\n");
    std::fs::write(&policy, text).unwrap();
    let (code, out, err) = lethe(&["--config", cfg(&d), "run", "nightly"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("no-such-tenant"), "{err}");
    assert!(out.contains("== retention (failed)"), "{out}");
    assert!(out.contains("== snapshot (skipped)"), "{out}");
    assert!(
        !d.store().join("snapshots").exists(),
        "no snapshot was taken"
    );
    let runs = files(&d.store().join("runs/nightly"));
    let rec: serde_json::Value = serde_json::from_slice(runs.values().next().unwrap()).unwrap();
    assert_eq!(rec["outcome"], "failed");
    assert_eq!(rec["steps"][0]["outcome"], "failed");
    assert_eq!(rec["steps"][1]["outcome"], "skipped");
}

#[test]
fn unknown_jobs_unknown_steps_bad_order_and_broken_job_files_are_refused() {
    let d = demo(2, 30);
    let (code, _, err) = lethe(&["--config", cfg(&d), "run", "nightlly"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("nightlly")
            && err.contains("nightly")
            && err.contains("retention, erasure, snapshot"),
        "{err}"
    );
    let job = d.dir.join("jobs/nightly.toml");
    let good = std::fs::read_to_string(&job).unwrap();
    for (text, needles) in [
        (
            good.replace(
                "steps = [\"retention\", \"erasure\", \"snapshot\", \"analytics\"]",
                "steps = [\"retention\", \"erasure\", \"analytics\", \"snapshot\"]",
            ),
            &["nightly.toml", "steps", "list analytics after snapshot"][..],
        ),
        (
            good.replace(
                "steps = [\"retention\", \"erasure\", \"snapshot\", \"analytics\"]",
                "steps = [\"snapshot\", \"erasure\", \"retention\", \"analytics\"]",
            ),
            &["nightly.toml", "list retention first"][..],
        ),
        (
            good.replace("name = \"nightly\"", "name = \"nightly"),
            &["nightly.toml", "fix"][..],
        ),
    ] {
        std::fs::write(&job, &text).unwrap();
        let before = files(&d.dir);
        for args in [
            &["check"][..],
            &["run", "nightly"][..],
            &["run", "snapshot"][..],
        ] {
            let mut all = vec!["--config", cfg(&d)];
            all.extend_from_slice(args);
            let (code, _, err) = lethe(&all);
            assert_eq!(code, 2, "{args:?}: {err}");
            for n in needles {
                assert!(err.contains(n), "{args:?}: {n:?} not in {err}");
            }
        }
        assert!(files(&d.dir) == before, "nothing ran");
    }
    std::fs::write(&job, good).unwrap();
}

/// Item 2: after the demo's nightly job, the newest snapshot of every tenant holds no row that
/// was due when it was taken. Every row is decrypted and its anchors compared with the cutoffs
/// the policy gives at the snapshot's time (legal holds, exceptions, overrides and terminations
/// applied through the planner's own selections).
#[test]
fn the_nightly_snapshot_never_holds_a_row_that_was_already_due() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let (code, out, err) = lethe(&[
        "demo",
        "--dir",
        dir.to_str().unwrap(),
        "--tenants",
        "6",
        "--days",
        "400",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let config = dir.join("lethe.toml");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = lethe::check::check(&config).unwrap();
    let store = lethe::store::Store::open(&c.config.store).unwrap();
    let kr = lethe::keys::Keyring::open(&c.config.keyring, &c.config.master_key, false).unwrap();
    let ledger = lethe::snapshot::read::LedgerContext {
        data_map: &c.data_map,
        phone_country: c.policy.erasure.phone_country.clone(),
    };
    let tenants: Vec<lethe::retention::plan::TenantInfo> =
        lethe::source::Source::open(&c.config.source)
            .unwrap()
            .tenants(&c.data_map)
            .unwrap()
            .valid
            .into_iter()
            .map(|t| lethe::retention::plan::TenantInfo {
                id: t.id,
                status: t.status,
                cancelled_at: t.cancelled_at,
            })
            .collect();
    let holds: Vec<&lethe::policy::LegalHold> = c.policy.legal_holds.iter().collect();
    let retention_now: DateTime<Utc> = {
        let dir = dir.join("store/audit/records");
        let mut keys: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        keys.sort();
        let now = keys
            .iter()
            .rev()
            .map(|k| {
                serde_json::from_slice::<serde_json::Value>(&std::fs::read(k).unwrap()).unwrap()
            })
            .find(|r| r["event"]["step"] == "retention" && r["event"]["phase"] == "start")
            .unwrap()["event"]["now"]
            .as_str()
            .unwrap()
            .to_string();
        DateTime::parse_from_rfc3339(&now).unwrap().into()
    };
    let mut checked_rows = 0u64;
    // The demo offboards one tenant: it has no snapshot, every other tenant has.
    let offboarded = out
        .lines()
        .find(|l| l.starts_with("offboarding request "))
        .and_then(|l| l.split_whitespace().nth(4))
        .expect("the demo offboards a tenant")
        .to_string();
    for t in &tenants {
        let newest = rt
            .block_on(lethe::snapshot::read::newest_committed(&store, &t.id))
            .unwrap();
        if t.id == offboarded {
            assert!(newest.is_none(), "the offboarded tenant was snapshotted");
            continue;
        }
        let m = newest.expect("every tenant has a snapshot");
        // Rows are judged at the retention step's `now`, just before the snapshot: rows that
        // become due in the seconds between the two are the documented gap.
        let taken = retention_now;
        // (created_at has whole seconds)
        assert!(
            DateTime::parse_from_rfc3339(&m.created_at).unwrap() + TimeDelta::seconds(1)
                > retention_now,
            "the snapshot was taken after retention"
        );
        let out = tmp.path().join(format!("r-{}", t.id));
        rt.block_on(lethe::snapshot::read::restore(
            &store,
            &kr,
            &t.id,
            Some(&m.run_id),
            &out,
            lethe::snapshot::read::RestoreFormat::Parquet,
            &[],
            &ledger,
        ))
        .unwrap();
        let due = lethe::retention::plan::selections(
            &c.data_map,
            &c.policy,
            std::slice::from_ref(t),
            &holds,
            taken,
        );
        for (key, sel) in &due {
            let table = c.data_map.table(&key.table).unwrap();
            if holds
                .iter()
                .any(|h| lethe::retention::plan::hold_covers(h, &t.id, table, &key.category))
            {
                continue;
            }
            let dir = out.join(&key.table);
            for f in std::fs::read_dir(&dir).unwrap() {
                let file = std::fs::File::open(f.unwrap().path()).unwrap();
                let reader =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                        .unwrap()
                        .build()
                        .unwrap();
                for b in reader {
                    let b = b.unwrap();
                    checked_rows += b.num_rows() as u64;
                    let (Some(anchor), Some(cutoff)) = (&sel.anchor, sel.cutoff) else {
                        // A whole-table selection (terminated tenant): no row may be there.
                        assert_eq!(b.num_rows(), 0, "{} of terminated {}", key.table, t.id);
                        continue;
                    };
                    let col = b.column_by_name(anchor).unwrap();
                    assert_eq!(
                        col.data_type(),
                        &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
                    );
                    let col = col.as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
                    let limit = cutoff.timestamp_micros();
                    let held_subject = |i: usize| {
                        table.config.subject_columns.iter().any(|sc| {
                            let c = b.column_by_name(sc).unwrap();
                            !c.is_null(i)
                                && c.as_string_opt::<i32>().is_some_and(|s| {
                                    sel.excluded_subjects.iter().any(|x| x == s.value(i))
                                })
                        })
                    };
                    for i in 0..col.len() {
                        if col.is_null(i) || held_subject(i) {
                            continue;
                        }
                        let changed = match &sel.change {
                            lethe::retention::plan::Change::Delete => false,
                            lethe::retention::plan::Change::Flag { column } => {
                                !b.column_by_name(column).unwrap().is_null(i)
                            }
                            lethe::retention::plan::Change::Anonymize { columns, .. } => columns
                                .iter()
                                .all(|c| b.column_by_name(c).unwrap().is_null(i)),
                        };
                        assert!(
                            col.value(i) > limit || changed,
                            "tenant {} table {} category {}: a row due at {} (anchor {anchor} <= {}) is in the snapshot taken then",
                            t.id,
                            key.table,
                            key.category,
                            taken,
                            cutoff
                        );
                    }
                }
            }
        }
    }
    assert!(checked_rows > 1000, "the check read {checked_rows} rows");
}

/// The kill test for the whole job: `run nightly` aborted at every crash point in turn, and
/// killed with SIGKILL at random moments, then run again, ends where one uninterrupted run
/// ends: the same database, the same blobs, an audit chain that verifies.
#[test]
fn run_nightly_killed_anywhere_then_rerun_converges() {
    let base = demo(3, 150);
    let mut text = std::fs::read_to_string(&base.config).unwrap();
    text.push_str("\n[retention]\nmax_share = 1.0\nmax_rows = 100000000\nbatch_rows = 50\n");
    std::fs::write(&base.config, text).unwrap();
    let now = (Utc::now() - TimeDelta::seconds(5)).to_rfc3339();
    let copy = |name: &str| -> (tempfile::TempDir, std::path::PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(name);
        for (p, b) in files(&base.dir) {
            let to = dir.join(p.strip_prefix(&base.dir).unwrap());
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::write(to, b).unwrap();
        }
        (tmp, dir)
    };
    let args = |dir: &Path| -> Vec<String> {
        let config = dir.join("lethe.toml");
        [
            "--config",
            config.to_str().unwrap(),
            "run",
            "nightly",
            "--now",
            &now,
        ]
        .map(String::from)
        .to_vec()
    };
    let nightly = |dir: &Path, env: &[(&str, String)]| {
        let a = args(dir);
        common::lethe_env(&a.iter().map(String::as_str).collect::<Vec<_>>(), env)
    };
    let blobs = |dir: &Path| -> Vec<std::path::PathBuf> {
        files(&dir.join("blobs"))
            .into_keys()
            .map(|p| p.strip_prefix(dir.join("blobs")).unwrap().to_path_buf())
            .collect()
    };
    let verify = |dir: &Path| {
        let config = dir.join("lethe.toml");
        let (code, out, err) = lethe(&["--config", config.to_str().unwrap(), "audit", "verify"]);
        assert_eq!(code, 0, "{out}\n{err}");
    };

    let (_r, reference) = copy("reference");
    let (code, out, err) = nightly(&reference, &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    let want = (database(&reference.join("source.db")), blobs(&reference));

    // Crash points (debug builds): abort at the 1st, 2nd, … until a run completes.
    let (_w, work) = copy("work");
    let mut crashes = 0;
    for n in 1..=400 {
        let (code, out, err) = nightly(&work, &[("LETHE_CRASH_AT", n.to_string())]);
        if code == 0 {
            break;
        }
        assert!(err.contains("LETHE_CRASH_AT"), "run {n}: {out}\n{err}");
        crashes += 1;
    }
    if cfg!(debug_assertions) {
        assert!(crashes >= 5, "only {crashes} crash points were hit");
    }
    let (code, out, err) = nightly(&work, &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        (database(&work.join("source.db")), blobs(&work)),
        want,
        "after {crashes} crashes"
    );
    verify(&work);

    // Real SIGKILLs at random moments of the job.
    let (_k, killed) = copy("killed");
    let a = args(&killed);
    common::kill_randomly(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        6,
        0x9e37_79b9_7f4a_7c15,
        600,
    );
    let (code, out, err) = nightly(&killed, &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        (database(&killed.join("source.db")), blobs(&killed)),
        want,
        "after SIGKILLs"
    );
    verify(&killed);
}
