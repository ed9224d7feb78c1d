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
        measures: vec![
            Measure {
                name: "messages".into(),
                kind: Kind::Count,
                column: None,
            },
            Measure {
                name: "customers".into(),
                kind: Kind::Distinct,
                column: Some("customer_phone".into()),
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
        let batches = lethe::analytics::compute::read_table(&store, &key, &m, "messages")
            .await
            .unwrap();
        let df = lethe::analytics::compute::to_polars(&batches).unwrap();
        lethe::analytics::compute::aggregate(df, &dataset, "created_at").unwrap()
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
    let today = chrono::Utc::now().date_naive().to_string();
    assert!(
        files
            .keys()
            .all(|p| !p.to_string_lossy().contains(&format!("dt={today}"))),
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
                        "SELECT count(*), count(DISTINCT customer_phone) FROM messages WHERE tenant_id = 'kopi-senja' AND substr(created_at, 1, 10) = ?1 AND coalesce(channel, '') = ?2",
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
