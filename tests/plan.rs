//! The pure planner: table-driven cases with named golden files (`tests/golden/plan-*.json`;
//! regenerate with `UPDATE_GOLDEN=1 cargo test --test plan` and review the diff), and property
//! tests over generated inventories.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use lethe::config::RetentionSection;
use lethe::datamap::DataMap;
use lethe::policy::{LegalHold, Policy};
use lethe::retention::plan::{
    Inventory, PinInfo, PlanError, RetentionPlan, RunInfo, Stats, TenantInfo, plan, selections,
};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn fixtures() -> (DataMap, Policy) {
    let dm = DataMap::load_dir(&repo("schemas")).unwrap();
    let policy = Policy::load(&repo("jobs/retention.toml")).unwrap();
    (dm, policy)
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 20, 2, 30, 0).unwrap()
}

fn hash(s: &str) -> String {
    format!("hmac:test-{}", s.len())
}

/// Answer every selection: `rows(table, category)` due rows, 1000 rows per tenant and table.
fn answer(
    dm: &DataMap,
    policy: &Policy,
    tenants: Vec<TenantInfo>,
    source_holds: Vec<LegalHold>,
    rows: impl Fn(&str, &str, &str) -> u64,
) -> Inventory {
    let holds: Vec<&LegalHold> = policy
        .legal_holds
        .iter()
        .chain(source_holds.iter())
        .collect();
    let units = selections(dm, policy, &tenants, &holds, now())
        .into_iter()
        .map(|(k, s)| {
            let n = rows(&k.tenant, &k.table, &k.category);
            let st = Stats {
                rows: n,
                oldest: (n > 0).then(|| "2025-01-01 00:00:00".to_string()),
                newest: (n > 0).then(|| "2026-08-01 00:00:00".to_string()),
                min_pk: (n > 0).then(|| "1".to_string()),
                max_pk: (n > 0).then(|| n.to_string()),
                blobs: if dm.table(&k.table).unwrap().config.blob_column.is_some() {
                    n
                } else {
                    0
                },
                held_by_subject: if s.excluded_subjects.is_empty() { 0 } else { 3 },
            };
            (k, s, st)
        })
        .collect();
    let mut table_rows = BTreeMap::new();
    for t in &dm.tables {
        table_rows.insert(
            t.name.clone(),
            tenants.iter().map(|x| (x.id.clone(), 1000)).collect(),
        );
    }
    Inventory {
        keyed_tenants: tenants.iter().map(|t| t.id.clone()).collect(),
        tenants,
        source_holds,
        table_rows,
        units,
        pending_blobs: 0,
        runs: vec![],
        pins: vec![],
        undated_runs: vec![],
        orphans: vec![],
        bad_tenants: vec![],
    }
}

fn run(tenant: &str, days_ago: i64, committed: bool) -> RunInfo {
    let at = now() - TimeDelta::days(days_ago);
    RunInfo {
        tenant: tenant.into(),
        run_id: format!("{}-{:04}", at.format("%Y%m%dT%H%M%SZ"), days_ago),
        created_at: at,
        committed,
    }
}

fn tenant(id: &str, cancelled_days_ago: Option<i64>) -> TenantInfo {
    TenantInfo {
        id: id.into(),
        status: if cancelled_days_ago.is_some() {
            "cancelled"
        } else {
            "active"
        }
        .into(),
        cancelled_at: cancelled_days_ago.map(|d| now() - TimeDelta::days(d)),
    }
}

fn golden(name: &str, plan: &RetentionPlan) {
    let path = repo(&format!("tests/golden/plan-{name}.json"));
    let got = serde_json::to_string_pretty(plan).unwrap() + "\n";
    if std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1") || !path.exists() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &got).unwrap();
        if std::env::var("UPDATE_GOLDEN").as_deref() != Ok("1") {
            panic!(
                "wrote missing golden file {}; review it and run again",
                path.display()
            );
        }
    }
    let want = std::fs::read_to_string(&path).unwrap();
    assert!(
        got == want,
        "plan differs from {} (UPDATE_GOLDEN=1 to accept after review):\n{got}",
        path.display()
    );
}

/// Active, overridden, held, recently cancelled and long-cancelled tenants; backups with
/// pins, abandoned runs and a termination deadline; a subject-level hold from the source.
#[test]
fn golden_mixed_tenants_holds_exceptions_and_backups() {
    let (dm, policy) = fixtures();
    let tenants = vec![
        tenant("toko-makmur", None),
        tenant("klinik-sehat", None),
        tenant("kopi-senja", None),
        tenant("salon-cantik", Some(40)), // terminated 10 days ago; backups not yet
        tenant("gym-bugar", Some(100)),   // backups' deadline passed too
        tenant("hotel-melati", Some(10)), // cancelled, still within 30 days
    ];
    let subject_hold = LegalHold {
        tenant: "hotel-melati".into(),
        table: Some("calls".into()),
        category: None,
        subject: Some("+6281234567890".into()),
        reason: "Complaint to the regulator, ref OJK-2026-88".into(),
        placed_by: "dpo@lethe.example".into(),
        placed_at: None,
    };
    let mut inv = answer(
        &dm,
        &policy,
        tenants,
        vec![subject_hold],
        |_, table, _| match table {
            "messages" => 120,
            "billing_records" => 0,
            _ => 7,
        },
    );
    inv.runs = vec![
        run("toko-makmur", 40, true),
        run("toko-makmur", 35, true),
        run("toko-makmur", 3, false), // abandoned (older than a day, a newer run committed)
        run("toko-makmur", 1, true),
        run("toko-makmur", 0, false), // still being written
        run("klinik-sehat", 45, true),
        run("klinik-sehat", 1, true),
        run("salon-cantik", 70, true),
        run("salon-cantik", 41, true),
        run("gym-bugar", 120, true),
        run("gym-bugar", 101, true),
        run("ghost-tenant", 200, true), // not in the tenants table any more
    ];
    inv.pins = vec![PinInfo {
        tenant: "toko-makmur".into(),
        run_id: run("toko-makmur", 35, true).run_id,
        reason: "Restore test, ticket OPS-311".into(),
    }];
    let p = plan(
        &inv,
        &dm,
        &policy,
        &RetentionSection::default(),
        now(),
        &hash,
    )
    .unwrap();
    golden("mixed", &p);
    // Spot checks that do not depend on reading the golden file.
    assert!(
        !p.actions
            .iter()
            .any(|a| a.tenant == "klinik-sehat" && a.table == "messages")
    );
    assert!(
        !p.actions
            .iter()
            .any(|a| a.tenant == "kopi-senja" && a.table == "messages")
    );
    assert!(
        p.actions
            .iter()
            .any(|a| a.tenant == "salon-cantik" && a.category == "termination")
    );
    assert!(
        !p.actions
            .iter()
            .any(|a| a.tenant == "hotel-melati" && a.category == "termination")
    );
    assert!(!p.actions.iter().any(|a| a.table == "billing_records"));
    assert_eq!(p.shred_keys, vec!["gym-bugar".to_string()]);
    let purged: Vec<&str> = p.backups.iter().map(|r| r.run_id.as_str()).collect();
    assert!(purged.contains(&run("toko-makmur", 40, true).run_id.as_str()));
    assert!(
        !purged.contains(&run("toko-makmur", 35, true).run_id.as_str()),
        "pinned"
    );
    assert!(
        purged.contains(&run("toko-makmur", 3, false).run_id.as_str()),
        "abandoned"
    );
    assert!(
        !purged.contains(&run("toko-makmur", 0, false).run_id.as_str()),
        "in progress"
    );
    assert!(
        !purged.iter().any(|r| r.ends_with("-0045")),
        "klinik-sehat is held"
    );
    assert!(!p.backups.iter().any(|r| r.tenant == "ghost-tenant"));
    assert_eq!(
        p.backups.iter().filter(|r| r.tenant == "gym-bugar").count(),
        2
    );
    assert!(
        p.held_back
            .iter()
            .any(|h| h.tenant == "hotel-melati" && h.subject.is_some())
    );
    let json = serde_json::to_string(&p).unwrap();
    assert!(
        !json.contains("+6281234567890"),
        "a held subject appears only as a keyed hash"
    );
}

#[test]
fn golden_brake_trips_on_a_mass_deletion() {
    let (dm, policy) = fixtures();
    let mut inv = answer(
        &dm,
        &policy,
        vec![tenant("toko-makmur", None)],
        vec![],
        |_, t, _| {
            if t == "messages" { 1200 } else { 0 }
        },
    );
    inv.table_rows
        .get_mut("messages")
        .unwrap()
        .insert("toko-makmur".into(), 1500);
    let p = plan(
        &inv,
        &dm,
        &policy,
        &RetentionSection::default(),
        now(),
        &hash,
    )
    .unwrap();
    assert_eq!(p.brake.len(), 1, "{:?}", p.brake);
    assert_eq!(p.brake[0].table, "messages");
    golden("brake", &p);
}

#[test]
fn an_inventory_for_another_time_or_policy_is_refused() {
    let (dm, policy) = fixtures();
    let inv = answer(
        &dm,
        &policy,
        vec![tenant("toko-makmur", None)],
        vec![],
        |_, _, _| 5,
    );
    let later = now() + TimeDelta::seconds(1);
    let e = plan(
        &inv,
        &dm,
        &policy,
        &RetentionSection::default(),
        later,
        &hash,
    )
    .unwrap_err();
    assert!(matches!(e, PlanError::Stale(_)), "{e}");
    let mut short = inv.clone();
    short.units.pop();
    assert!(
        plan(
            &short,
            &dm,
            &policy,
            &RetentionSection::default(),
            now(),
            &hash
        )
        .is_err()
    );
}

/// Properties over 300 generated worlds: holds always win; pinned runs, held tenants' runs and
/// the newest committed run of a tenant before its backup deadline are never purged; a purged
/// committed run always has a newer committed run that stays; statutory tables are never
/// terminated; the hash is a function of the plan's content.
#[test]
fn holds_pins_and_newest_runs_always_win() {
    let (dm, policy) = fixtures();
    let names = ["a-1", "b-2", "c-3", "d-4", "e-5"];
    let cats: Vec<String> = policy.categories.keys().cloned().collect();
    let mut g = lethe::demo::Rng::new(11);
    for case in 0..300 {
        let tenants: Vec<TenantInfo> = names
            .iter()
            .map(|n| {
                let c = match g.below(4) {
                    0 => Some(g.below(200) as i64),
                    _ => None,
                };
                tenant(n, c)
            })
            .collect();
        let mut holds = vec![];
        for _ in 0..g.below(3) {
            let t = names[g.below(5) as usize];
            let table = (g.below(2) == 0).then(|| {
                dm.tables[g.below(dm.tables.len() as u64) as usize]
                    .name
                    .clone()
            });
            let category =
                (g.below(3) == 0).then(|| cats[g.below(cats.len() as u64) as usize].clone());
            let subject = (g.below(3) == 0).then(|| format!("subject-{}", g.below(10)));
            holds.push(LegalHold {
                tenant: t.into(),
                table,
                category,
                subject,
                reason: "r".into(),
                placed_by: "p".into(),
                placed_at: None,
            });
        }
        let seed = g.next();
        let mut inv = answer(
            &dm,
            &policy,
            tenants.clone(),
            holds.clone(),
            |t, table, c| {
                (seed ^ (t.len() as u64 * 31 + table.len() as u64 * 7 + c.len() as u64)) % 50
            },
        );
        for n in names {
            for _ in 0..g.below(6) {
                inv.runs.push(run(n, g.below(150) as i64, g.below(5) != 0));
            }
            if g.below(3) == 0 && !inv.runs.is_empty() {
                let r = inv.runs[g.below(inv.runs.len() as u64) as usize].clone();
                inv.pins.push(PinInfo {
                    tenant: r.tenant,
                    run_id: r.run_id,
                    reason: "pin".into(),
                });
            }
        }
        inv.runs.sort_by(|a, b| a.run_id.cmp(&b.run_id));
        inv.runs
            .dedup_by(|a, b| a.run_id == b.run_id && a.tenant == b.tenant);
        let cfg = RetentionSection::default();
        let p = plan(&inv, &dm, &policy, &cfg, now(), &hash).unwrap();

        for a in &p.actions {
            for h in &holds {
                let table = dm.table(&a.table).unwrap();
                let covers = h.tenant == a.tenant
                    && h.subject.is_none()
                    && h.table.as_deref().is_none_or(|t| t == a.table)
                    && h.category.as_deref().is_none_or(|c| {
                        c == a.category
                            || (a.category == "termination"
                                && table.config.categories.iter().any(|x| x == c))
                    });
                assert!(!covers, "case {case}: held unit acted on: {a:?} {h:?}");
            }
            if a.category == "termination" {
                assert_ne!(
                    a.table, "billing_records",
                    "case {case}: statutory table terminated"
                );
            }
        }
        for r in &p.backups {
            assert!(
                !holds.iter().any(|h| h.tenant == r.tenant),
                "case {case}: held tenant's run purged"
            );
            assert!(
                !inv.pins
                    .iter()
                    .any(|x| x.tenant == r.tenant && x.run_id == r.run_id),
                "case {case}: pinned run purged"
            );
            let t = tenants.iter().find(|t| t.id == r.tenant).unwrap();
            let past_deadline = t
                .cancelled_at
                .and_then(|c| policy.backups.after_termination.after(c))
                .is_some_and(|d| d <= now());
            if !past_deadline {
                let newer_kept = inv.runs.iter().any(|x| {
                    x.tenant == r.tenant
                        && x.committed
                        && x.created_at
                            > inv
                                .runs
                                .iter()
                                .find(|y| y.run_id == r.run_id && y.tenant == r.tenant)
                                .unwrap()
                                .created_at
                        && !p
                            .backups
                            .iter()
                            .any(|b| b.run_id == x.run_id && b.tenant == x.tenant)
                });
                assert!(
                    newer_kept,
                    "case {case}: run {} purged without a newer committed run kept",
                    r.run_id
                );
            }
        }
        // Determinism and sensitivity of the hash.
        let again = plan(&inv, &dm, &policy, &cfg, now(), &hash).unwrap();
        assert_eq!(again.hash, p.hash);
        if let Some(i) = inv.units.iter().position(|u| u.2.rows > 0) {
            inv.units[i].2.rows += 1;
            let u = inv.units[i].0.clone();
            let changed = plan(&inv, &dm, &policy, &cfg, now(), &hash).unwrap();
            let acted = p
                .actions
                .iter()
                .any(|a| a.tenant == u.tenant && a.table == u.table && a.category == u.category);
            if acted {
                assert_ne!(
                    changed.hash, p.hash,
                    "case {case}: hash ignores a row count"
                );
            }
        }
    }
}

/// Regressions from review: a category hold keeps every category's rows of its table; a
/// reactivated tenant (status active, an old cancelled_at) is not terminated; a subject hold on a
/// table without subject columns keeps the whole table; undated runs keep the tenant's key.
#[test]
fn holds_cover_whole_tables_and_reactivated_tenants_keep_their_data() {
    let (dm, policy) = fixtures();
    let hold = LegalHold {
        tenant: "toko-makmur".into(),
        table: None,
        category: Some("inactive_accounts".into()),
        subject: None,
        reason: "Labour dispute, ref PHI-9".into(),
        placed_by: "legal@lethe.example".into(),
        placed_at: None,
    };
    let subject_hold = LegalHold {
        tenant: "toko-makmur".into(),
        table: Some("revoked_tokens".into()),
        category: None,
        subject: Some("someone@example.com".into()),
        reason: "Fraud inquiry, ref F-2".into(),
        placed_by: "dpo@lethe.example".into(),
        placed_at: None,
    };
    let mut reactivated = tenant("salon-cantik", Some(300));
    reactivated.status = "active".into();
    let mut inv = answer(
        &dm,
        &policy,
        vec![
            tenant("toko-makmur", None),
            reactivated,
            tenant("gym-bugar", Some(300)),
        ],
        vec![hold, subject_hold],
        |_, _, _| 4,
    );
    inv.undated_runs = vec!["gym-bugar".into()];
    let p = plan(
        &inv,
        &dm,
        &policy,
        &RetentionSection::default(),
        now(),
        &hash,
    )
    .unwrap();
    assert!(
        !p.actions
            .iter()
            .any(|a| a.tenant == "toko-makmur" && a.table == "accounts"),
        "a hold on inactive_accounts also keeps the deleted_accounts rows of accounts"
    );
    assert!(
        !p.actions
            .iter()
            .any(|a| a.tenant == "toko-makmur" && a.table == "revoked_tokens"),
        "a subject hold on a table without subject columns keeps the table"
    );
    assert!(
        !p.actions
            .iter()
            .any(|a| a.tenant == "salon-cantik" && a.category == "termination"),
        "a reactivated tenant is not terminated"
    );
    assert!(
        p.actions
            .iter()
            .any(|a| a.tenant == "gym-bugar" && a.category == "termination")
    );
    assert!(
        p.shred_keys.is_empty(),
        "an undated run keeps the key: {:?}",
        p.shred_keys
    );
}

#[test]
fn an_override_may_not_shorten_a_statutory_exception() {
    let text = std::fs::read_to_string(repo("jobs/retention.toml")).unwrap()
        + "\n[tenants.toko-makmur.categories.billing_records]\nretain = \"1y\"\n";
    let e = Policy::from_str(Path::new("retention.toml"), &text).unwrap_err();
    assert!(e.to_string().contains("statutory exception"), "{e}");
    let text = std::fs::read_to_string(repo("jobs/retention.toml")).unwrap()
        + "\n[tenants.toko-makmur.categories.billing_records]\nretain = \"forever\"\n";
    assert!(Policy::from_str(Path::new("retention.toml"), &text).is_ok());
}
