//! Analytics (issue 12, in progress): one tenant's table, from its encrypted snapshot through the
//! Arrow C Data Interface into Polars, aggregated per day and key, equals the same aggregation
//! done by SQLite over the source rows.

mod common;

use lethe::analytics::dataset::{Dataset, Kind, Measure, Period, Scope};

#[test]
fn messages_per_day_and_channel_equal_sqlite_over_the_same_rows() {
    let d = common::demo(3, 60);
    let cfg = d.config.to_str().unwrap();
    let (code, out, err) = common::lethe(&["--config", cfg, "run", "snapshot"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let c = lethe::config::Config::load(&d.config).unwrap();
    let store = lethe::store::Store::open(&c.store).unwrap();
    let keyring = lethe::keys::Keyring::open(&c.keyring, &c.master_key, false).unwrap();
    let dataset = Dataset {
        name: "messages_daily".into(),
        table: "messages".into(),
        scope: Scope::Tenant,
        period: Period::Day,
        keys: vec!["channel".into()],
        subjects: vec!["customer_phone".into()],
        k: 10,
        privacy: None,
        measures: vec![
            Measure {
                name: "messages".into(),
                kind: Kind::Count,
                ..Default::default()
            },
            Measure {
                name: "customers".into(),
                kind: Kind::Distinct,
                column: Some("customer_phone".into()),
                ..Default::default()
            },
        ],
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tenant = "kopi-senja";
    let df = rt.block_on(async {
        let m = lethe::snapshot::read::newest_committed(&store, tenant)
            .await
            .unwrap()
            .unwrap();
        let key = keyring.data_key(tenant).unwrap();
        let hasher = lethe::analytics::compute::SubjectHasher::random(Some("62".into())).unwrap();
        let subjects = [("customer_phone".to_string(), "phone".to_string())];
        let batches = lethe::analytics::compute::read_table(
            &store,
            &key,
            &m,
            "messages",
            None,
            Some((&hasher, &subjects[..])),
        )
        .await
        .unwrap();
        let df = lethe::analytics::compute::to_polars(&batches).unwrap();
        lethe::analytics::compute::aggregate(df, &dataset, "created_at", chrono_tz::UTC, None)
            .unwrap()
    });
    // Polars' answer, as (day, channel) → (messages, customers, subjects).
    let mut got = std::collections::BTreeMap::new();
    let day = df
        .column("dt")
        .unwrap()
        .cast(&polars::prelude::DataType::String)
        .unwrap();
    let day = day.str().unwrap().clone();
    let channel = df.column("channel").unwrap().str().unwrap().clone();
    let n = |name: &str| {
        df.column(name)
            .unwrap()
            .cast(&polars::prelude::DataType::Int64)
            .unwrap()
            .i64()
            .unwrap()
            .clone()
    };
    let (messages, customers, subjects) = (n("messages"), n("customers"), n("__subjects"));
    for i in 0..df.height() {
        got.insert(
            (
                day.get(i).unwrap()[..10].to_string(),
                channel.get(i).unwrap_or("").to_string(),
            ),
            (
                messages.get(i).unwrap(),
                customers.get(i).unwrap(),
                subjects.get(i).unwrap(),
            ),
        );
    }
    // The reference: SQLite over the same rows.
    let db = rusqlite::Connection::open(d.db()).unwrap();
    let mut st = db
        .prepare(
            "SELECT substr(created_at, 1, 10), coalesce(channel, ''), count(*), count(DISTINCT customer_phone), count(DISTINCT customer_phone)
             FROM messages WHERE tenant_id = ?1 AND created_at IS NOT NULL GROUP BY 1, 2",
        )
        .unwrap();
    let want: std::collections::BTreeMap<(String, String), (i64, i64, i64)> = st
        .query_map([tenant], |r| {
            Ok(((r.get(0)?, r.get(1)?), (r.get(2)?, r.get(3)?, r.get(4)?)))
        })
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert!(!want.is_empty());
    assert_eq!(got, want);
}

/// `lethe run analytics`: complete days only, each published once (frozen), cells below k with
/// null measures, the others equal to SQLite over the same rows, no identifier in any byte.
#[test]
fn the_analytics_step_publishes_complete_days_once_with_small_cells_null() {
    use arrow::array::{Array, AsArray};
    let d = common::demo(3, 40);
    let cfg = d.config.to_str().unwrap();
    let k = 3;
    std::fs::write(
        d.dir.join("jobs/analytics.toml"),
        format!(
            r#"
[datasets.messages_daily]
table = "messages"
scope = "tenant"
keys = ["channel"]
subjects = ["customer_phone"]
k = {k}
measures = [
  {{ name = "messages", kind = "count" }},
  {{ name = "customers", kind = "distinct", column = "customer_phone" }},
]
"#
        ),
    )
    .unwrap();
    for step in ["snapshot", "analytics"] {
        let (code, out, err) = common::lethe(&["--config", cfg, "run", step]);
        assert_eq!(code, 0, "{step}: {out}\n{err}");
    }
    let root = d.store().join("analytics/messages_daily");
    let files = common::files(&root);
    assert!(!files.is_empty());
    // kopi-senja's days are Jakarta's (UTC+7, the demo's tenants table): today there is not
    // complete.
    let today = (chrono::Utc::now() + chrono::TimeDelta::hours(7))
        .date_naive()
        .to_string();
    assert!(
        files.keys().all(|p| {
            let p = p.to_string_lossy();
            !(p.contains("tenant=kopi-senja/") && p.contains(&format!("dt={today}")))
        }),
        "today is not complete"
    );
    let needles = common::personal_needles(&d.db());
    for (p, bytes) in &files {
        assert!(
            common::found_in(bytes, &needles).is_empty(),
            "{}",
            p.display()
        );
    }
    // kopi-senja's partitions, cell by cell, against SQLite.
    let db = rusqlite::Connection::open(d.db()).unwrap();
    let mut checked = (0, 0);
    for (p, bytes) in files
        .iter()
        .filter(|(p, _)| p.to_string_lossy().contains("tenant=kopi-senja/"))
    {
        let day = p.to_string_lossy().split("dt=").nth(1).unwrap()[..10].to_string();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            bytes::Bytes::from(bytes.clone()),
        )
        .unwrap()
        .build()
        .unwrap();
        for b in reader {
            let b = b.unwrap();
            let cast = |name: &str, t: &arrow::datatypes::DataType| {
                arrow::compute::cast(b.column_by_name(name).unwrap(), t).unwrap()
            };
            let channel = cast("channel", &arrow::datatypes::DataType::Utf8);
            let channel = channel.as_string::<i32>();
            let messages = cast("messages", &arrow::datatypes::DataType::Int64);
            let messages = messages.as_primitive::<arrow::datatypes::Int64Type>();
            let customers = cast("customers", &arrow::datatypes::DataType::Int64);
            let customers = customers.as_primitive::<arrow::datatypes::Int64Type>();
            assert!(
                b.column_by_name("__subjects").is_none(),
                "the subject count is not published"
            );
            for i in 0..b.num_rows() {
                let ch = if channel.is_null(i) {
                    ""
                } else {
                    channel.value(i)
                };
                let (n, c): (i64, i64) = db
                    .query_row(
                        "SELECT count(*), count(DISTINCT customer_phone) FROM messages WHERE tenant_id = 'kopi-senja' AND substr(datetime(created_at, '+7 hours'), 1, 10) = ?1 AND coalesce(channel, '') = ?2",
                        rusqlite::params![day, ch],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .unwrap();
                if c < k {
                    assert!(
                        messages.is_null(i) && customers.is_null(i),
                        "{day} {ch}: {c} subjects published"
                    );
                    checked.1 += 1;
                } else {
                    assert_eq!(
                        (messages.value(i), customers.value(i)),
                        (n, c),
                        "{day} {ch}"
                    );
                    checked.0 += 1;
                }
            }
        }
    }
    assert!(
        checked.0 > 0 && checked.1 > 0,
        "published and suppressed cells: {checked:?}"
    );
    // Frozen: a second run writes nothing and changes no byte.
    let (code, out, err) = common::lethe(&["--config", cfg, "run", "analytics"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("0 partition(s) written"), "{out}");
    assert_eq!(common::files(&root), files);
}

/// The demo's datasets (jobs/analytics.toml: tenant and platform scope, days and ISO weeks in
/// each tenant's zone, counts, distinct people, sums, medians, durations, first-response
/// times), read back by DuckDB over the whole tree with `hive_partitioning`, equal a reference
/// computed in Python from the source rows (tests/check_analytics.py). Then: no identifier in
/// any byte; a second run changes nothing; after rows are deleted and a new snapshot taken,
/// published days stay as they were (frozen); `--rebuild` replaces them and says what it risks.
#[test]
fn duckdb_reads_the_published_tree_and_finds_the_reference_numbers() {
    let Ok(python) = std::env::var("LETHE_TEST_PYTHON") else {
        assert!(
            std::env::var("LETHE_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "LETHE_REQUIRE_SERVICES=1 but LETHE_TEST_PYTHON is not set"
        );
        common::skipped(
            "DuckDB reading analytics",
            "set LETHE_TEST_PYTHON to a python with duckdb (scripts/test does)",
        );
        return;
    };
    let d = common::demo(5, 50);
    let cfg = d.config.to_str().unwrap();
    // k = 3 so that both published and suppressed cells are plenty in a small demo.
    let file = d.dir.join("jobs/analytics.toml");
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("k = 10", "k = 3");
    std::fs::write(&file, text).unwrap();
    for step in ["snapshot", "analytics"] {
        let (code, out, err) = common::lethe(&["--config", cfg, "run", step]);
        assert_eq!(code, 0, "{step}: {out}\n{err}");
    }
    let check = || {
        let out = std::process::Command::new(&python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/check_analytics.py"
            ))
            .arg(&d.dir)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let report = check();
    for name in [
        "messages_daily",
        "messages_by_direction_daily",
        "calls_daily",
        "attendance_daily",
        "tickets_weekly",
        "platform_messages_daily",
    ] {
        assert!(report.contains(&format!("{name}: ")), "{report}");
    }
    let root = d.store().join("analytics");
    let files = common::files(&root);
    assert!(
        files
            .keys()
            .any(|p| p.to_string_lossy().contains("platform_messages_daily/dt="))
    );
    let needles = common::personal_needles(&d.db());
    for (p, bytes) in &files {
        let found = common::found_in(bytes, &needles);
        assert!(found.is_empty(), "{}: {found:?}", p.display());
    }
    // Frozen: nothing written, not a byte changed.
    let (code, out, err) = common::lethe(&["--config", cfg, "run", "analytics"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("0 partition(s) written"), "{out}");
    assert_eq!(common::files(&root), files);
    // Rows deleted at the source (as retention would) and a new snapshot: the published days
    // do not change — a second release would let a reader difference the two.
    let db = rusqlite::Connection::open(d.db()).unwrap();
    let gone = db
        .execute("DELETE FROM messages WHERE id % 3 = 0", [])
        .unwrap();
    assert!(gone > 100);
    drop(db);
    for step in ["snapshot", "analytics"] {
        let (code, out, err) = common::lethe(&["--config", cfg, "run", step]);
        assert_eq!(code, 0, "{step}: {out}\n{err}");
    }
    let after = common::files(&root);
    for (p, bytes) in &files {
        assert_eq!(after.get(p), Some(bytes), "{} changed", p.display());
    }
    // --rebuild replaces them from the new snapshot, and warns.
    let (code, out, err) = common::lethe(&[
        "--config",
        cfg,
        "run",
        "analytics",
        "--rebuild",
        "messages_daily",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("replaced (--rebuild)"), "{out}");
    assert!(err.contains("difference the two"), "{err}");
    let rebuilt = common::files(&root.join("messages_daily"));
    assert!(
        rebuilt
            .iter()
            .any(|(p, b)| files.get(p).is_some_and(|old| old != b)),
        "no partition changed"
    );
}

/// `[analytics] url`: datasets go to a store of their own; the snapshot store holds none.
#[test]
fn analytics_can_publish_to_a_store_of_their_own() {
    let d = common::demo(2, 20);
    let cfg = d.config.to_str().unwrap();
    let mut config = std::fs::read_to_string(&d.config).unwrap();
    config.push_str("\n[analytics]\nurl = \"published\"\n");
    std::fs::write(&d.config, config).unwrap();
    for step in ["snapshot", "analytics"] {
        let (code, out, err) = common::lethe(&["--config", cfg, "run", step]);
        assert_eq!(code, 0, "{step}: {out}\n{err}");
    }
    assert!(!d.store().join("analytics").exists());
    let published = common::files(&d.dir.join("published/analytics"));
    assert!(
        published
            .keys()
            .any(|p| p.to_string_lossy().contains("messages_daily/tenant=")),
        "{:?}",
        published.keys().take(3).collect::<Vec<_>>()
    );
}

/// Differential privacy: a budget for three releases publishes each tenant's three oldest
/// complete days (noisy, thresholded on the noisy count) and records them in the ledger; the
/// rest is refused with a clear message and exit 1, and a second run publishes nothing more.
/// A malformed budget is exit 2 naming file and key.
#[test]
fn a_spent_privacy_budget_refuses_the_release_and_publishes_nothing() {
    let d = common::demo(2, 20);
    let cfg = d.config.to_str().unwrap();
    let file = d.dir.join("jobs/analytics.toml");
    let dataset = |budget: &str| {
        format!(
            r#"
[datasets.dp_messages]
table = "messages"
scope = "tenant"
keys = ["channel"]
subjects = ["customer_phone"]
k = 2
measures = [
  {{ name = "messages", kind = "count" }},
  {{ name = "customers", kind = "distinct", column = "customer_phone" }},
]
[datasets.dp_messages.privacy]
epsilon = 1.0
budget = {budget}
max_cells_per_subject = 1
max_rows_per_subject = 3

[datasets.dp_platform]
table = "messages"
scope = "platform"
keys = ["channel"]
subjects = ["customer_phone"]
k = 2
measures = [{{ name = "customers", kind = "distinct", column = "customer_phone" }}]
[datasets.dp_platform.privacy]
epsilon = 0.5
budget = 1.0
max_cells_per_subject = 2
"#
        )
    };
    for (budget, key) in [
        ("\"lots\"", "budget"),
        ("0.5", "datasets.dp_messages.privacy.budget"),
        ("nan", "datasets.dp_messages.privacy.budget"),
    ] {
        std::fs::write(&file, dataset(budget)).unwrap();
        let (code, out, err) = common::lethe(&["--config", cfg, "check"]);
        assert_eq!(code, 2, "{budget}: {out}\n{err}");
        assert!(
            err.contains("analytics.toml") && err.contains(key),
            "{budget}: {err}"
        );
    }
    std::fs::write(&file, dataset("3.5")).unwrap();
    let (code, out, err) = common::lethe(&["--config", cfg, "run", "snapshot"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let published = |tenant: &str| -> Vec<String> {
        let root = d
            .store()
            .join(format!("analytics/dp_messages/tenant={tenant}"));
        let mut days: Vec<String> = common::files(&root)
            .keys()
            .map(|p| p.to_string_lossy().split("dt=").nth(1).unwrap()[..10].to_string())
            .collect();
        days.sort();
        days
    };
    let ledger = |tenant: &str| {
        common::files(
            &d.store()
                .join(format!("analytics-ledger/dp_messages/{tenant}")),
        )
    };
    for run in 0..2 {
        let (code, out, err) = common::lethe(&["--config", cfg, "run", "analytics"]);
        assert_eq!(code, 1, "run {run}: {out}\n{err}");
        assert!(
            err.contains("dataset dp_messages for tenant kopi-senja: privacy budget spent (3 of 3.5 used, 1 per release)"),
            "{err}"
        );
        for tenant in ["kopi-senja", "klinik-sehat"] {
            let days = published(tenant);
            assert_eq!(days.len(), 3, "{tenant}: {days:?}");
            let l = ledger(tenant);
            assert_eq!(l.len(), 3, "{tenant}");
            for (p, body) in &l {
                assert!(p.to_string_lossy().ends_with("-eps=1000000.json"));
                let v: serde_json::Value = serde_json::from_slice(body).unwrap();
                assert!(days.contains(&v["dt"].as_str().unwrap().to_string()));
            }
        }
    }
    // Platform-wide: two releases of 0.5 in a budget of 1, recorded under _platform.
    assert!(
        err_of_last_run(&d)
            .contains("dataset dp_platform: privacy budget spent (1 of 1 used, 0.5 per release)"),
        "platform refusal"
    );
    let platform = common::files(&d.store().join("analytics/dp_platform"));
    assert_eq!(
        platform.len(),
        2,
        "{:?}",
        platform.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        common::files(&d.store().join("analytics-ledger/dp_platform/_platform")).len(),
        2
    );
    // The oldest complete days went first: the first day with messages is among them.
    let db = rusqlite::Connection::open(d.db()).unwrap();
    let first: String = db
        .query_row(
            "SELECT substr(datetime(min(created_at), '+7 hours'), 1, 10) FROM messages WHERE tenant_id = 'kopi-senja'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(published("kopi-senja")[0], first);
    // What was published is noisy counts of cells whose noisy count reached k.
    for (p, bytes) in common::files(&d.store().join("analytics/dp_messages")) {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            bytes::Bytes::from(bytes),
        )
        .unwrap()
        .build()
        .unwrap();
        for b in reader {
            let b = b.unwrap();
            let c = b.column_by_name("customers").unwrap();
            let c = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(c);
            assert!(c.iter().all(|v| v.unwrap() >= 2), "{}", p.display());
        }
    }
}

/// The stderr of `lethe run analytics` on demo `d` (a run that changes nothing more once a
/// budget is spent).
fn err_of_last_run(d: &common::Demo) -> String {
    let (_, _, err) = common::lethe(&["--config", d.config.to_str().unwrap(), "run", "analytics"]);
    err
}
