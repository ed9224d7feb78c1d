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
