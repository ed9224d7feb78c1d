//! `lethe attest` over a year of audit records on a local store.
//!
//! Setup (not timed): the demo's configuration (data map, policy) and a store whose audit chain
//! holds 365 nightly retention runs of T tenants (default 50): per night a `retention` start,
//! a `rows` start/end pair per category (units for every tenant), a `backup-purge` pair for one
//! tenant, the `retention` end, the run's `measure` record (every tenant × category) and a
//! signed checkpoint — the records a real nightly run writes, through the real audit writer.
//!
//! Timed: the attestation of one tenant for one complete month (find the month's records by
//! binary search, read and link-check them and the chain to the next checkpoint, sum, sign,
//! store), for every month of the year.
//!
//! usage: cargo bench --bench attest [-- TENANTS]

use std::sync::Arc;
use std::time::Instant;

use chrono::{TimeDelta, TimeZone, Utc};
use lethe::retention::measure::{BackupMeasure, CategoryMeasure, Measurement, TenantMeasure};
use serde_json::json;

fn main() {
    let tenants: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .map_or(50, |a| a.parse().expect("TENANTS"));
    let dir = tempfile::tempdir().unwrap();
    let opts = lethe::demo::DemoOptions {
        dir: dir.path().join("demo"),
        source: None,
        tenants: 3,
        days: 10,
        seed: 7,
    };
    let (config, _) = lethe::demo::prepare(&opts).unwrap();
    let c = lethe::check::check(&config).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let spec =
        lethe::config::StoreSpec::local(format!("file://{}", dir.path().join("store").display()));
    let store = lethe::store::Store::create(&spec).unwrap();
    let signer =
        lethe::sign::SigningKey::load_or_create(&dir.path().join("signing.pk8"), true).unwrap();
    let categories: Vec<(String, String)> = c
        .data_map
        .tables
        .iter()
        .flat_map(|t| {
            t.config
                .categories
                .iter()
                .map(|x| (t.name.clone(), x.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let names: Vec<String> = (0..tenants).map(|i| format!("tenant-{i:03}")).collect();
    let start = Utc.with_ymd_and_hms(2025, 1, 1, 2, 0, 0).unwrap();
    rt.block_on(async {
        let clock = lethe::clock::FixedClock::at(start);
        let mut audit = lethe::audit::AuditLog::open(
            store.clone(),
            lethe::sign::SigningKey::load_or_create(&dir.path().join("signing.pk8"), false)
                .unwrap(),
            None,
            clock.clone() as Arc<dyn lethe::clock::Clock>,
        )
        .await
        .unwrap();
        let setup = Instant::now();
        let mut records = 0u64;
        for day in 0..365 {
            let night = start + TimeDelta::days(day);
            clock.set(night);
            let plan = format!("sha256:{day:064x}");
            let mut rec = |e: serde_json::Value| {
                records += 1;
                e
            };
            audit
                .append(rec(json!({"step": "retention", "phase": "start", "plan_hash": plan})))
                .await
                .unwrap();
            for (table, category) in &categories {
                let units: Vec<_> = names
                    .iter()
                    .map(|t| json!({"tenant": t, "rows": 7}))
                    .collect();
                for phase in ["start", "end"] {
                    audit
                        .append(rec(json!({"step": "rows", "phase": phase, "plan_hash": plan, "table": table, "category": category, "action": "delete", "units": units, "remaining": 0})))
                        .await
                        .unwrap();
                }
            }
            let t = &names[day as usize % names.len()];
            for phase in ["start", "end"] {
                audit
                    .append(rec(json!({"step": "backup-purge", "phase": phase, "plan_hash": plan, "tenant": t, "run_id": format!("run-{day}"), "verified": true})))
                    .await
                    .unwrap();
            }
            audit
                .append(rec(json!({"step": "retention", "phase": "end", "plan_hash": plan, "verified": true})))
                .await
                .unwrap();
            let m = Measurement {
                at: lethe::util::rfc3339(night),
                grace: "none".into(),
                tenants: names
                    .iter()
                    .map(|t| {
                        (
                            t.clone(),
                            TenantMeasure {
                                categories: categories
                                    .iter()
                                    .map(|(table, category)| CategoryMeasure {
                                        table: table.clone(),
                                        category: category.clone(),
                                        rule: format!("{category} retained 90d"),
                                        bound: Some("2024-10-01T02:00:00Z".into()),
                                        rows: 1000,
                                        oldest: Some("2024-10-02 00:00:00".into()),
                                        past_rule: 0,
                                        oldest_past_rule: None,
                                        awaiting_next_run: 0,
                                        held: 0,
                                        hold: None,
                                    })
                                    .collect(),
                                backups: BackupMeasure::default(),
                            },
                        )
                    })
                    .collect(),
            };
            audit
                .append(rec(json!({"step": "measure", "phase": "retention", "plan_hash": plan, "measurement": m})))
                .await
                .unwrap();
            audit.checkpoint().await.unwrap();
        }
        eprintln!(
            "setup: {records} records over 365 nights, {tenants} tenants × {} categories, in {:.1} s",
            categories.len(),
            setup.elapsed().as_secs_f64()
        );
        let now = start + TimeDelta::days(366);
        let mut times = Vec::new();
        for month in 1..=12 {
            let period =
                lethe::attest::Period::parse(&format!("2025-{month:02}")).unwrap();
            let t = Instant::now();
            let a = lethe::attest::attest(&c, &store, &signer, &names[0], period, now)
                .await
                .unwrap();
            let s = t.elapsed().as_secs_f64();
            assert_eq!(a.outcome, "kept");
            times.push(s);
            println!(
                "attest 2025-{month:02}: {:.3} s, outcome {}, {} retention runs",
                s, a.outcome, a.payload["retention_runs"]
            );
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "attest one tenant × one month over a year of records: median {:.3} s, max {:.3} s",
            times[times.len() / 2],
            times[times.len() - 1]
        );
    });
}
