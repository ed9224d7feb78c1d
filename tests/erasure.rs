//! Erasure requests on the embedded default: received, validated, stored without the
//! identifier in plaintext, listed with their due dates.

mod common;

use common::{demo, files, lethe};

fn cfg(d: &common::Demo) -> &str {
    d.config.to_str().unwrap()
}

/// `lethe --config <the demo's> args…`.
fn run(d: &common::Demo, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--config", cfg(d)];
    all.extend_from_slice(args);
    lethe(&all)
}

/// One tenant id of the demo.
fn a_tenant(d: &common::Demo) -> String {
    let c = rusqlite::Connection::open(d.db()).unwrap();
    c.query_row(
        "SELECT id FROM tenants WHERE status = 'active' ORDER BY id LIMIT 1",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

/// `lethe erase subject` on the demo.
fn erase(d: &common::Demo, tenant: &str, kind: &str, id: &str) -> (i32, String, String) {
    run(
        d,
        &[
            "erase", "subject", "--tenant", tenant, "--kind", kind, "--id", id,
        ],
    )
}

fn request_files(d: &common::Demo) -> Vec<std::path::PathBuf> {
    files(&d.store())
        .into_keys()
        .filter(|p| p.starts_with(d.store().join("requests")))
        .collect()
}

#[test]
fn a_subject_request_is_stored_sealed_and_three_spellings_are_one_subject() {
    let d = demo(2, 40);
    let t = a_tenant(&d);
    let mut subjects = Vec::new();
    for spelling in ["+62 812-3456-7890", "0812 3456 7890", "+6281234567890"] {
        let (code, out, err) = run(
            &d,
            &[
                "erase",
                "subject",
                "--tenant",
                &t,
                "--kind",
                "phone",
                "--id",
                spelling,
                "--ref",
                "DPO-2026-114",
            ],
        );
        assert_eq!(code, 0, "{out}\n{err}");
        let subject = out
            .split_whitespace()
            .find(|w| w.starts_with("hmac:"))
            .unwrap_or_else(|| panic!("no subject hash in {out}"))
            .to_string();
        subjects.push(subject);
        // Nothing printed or logged repeats the number, in any spelling.
        for needle in ["81234567890", "3456", "812-"] {
            assert!(
                !out.contains(needle) && !err.contains(needle),
                "{needle}: {out}\n{err}"
            );
        }
    }
    assert!(
        subjects.windows(2).all(|w| w[0] == w[1]),
        "one person, one subject: {subjects:?}"
    );
    let stored = request_files(&d);
    assert_eq!(stored.len(), 3, "{stored:?}");
    for (path, bytes) in files(&d.store()) {
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("81234567890"),
            "plaintext identifier in {}",
            path.display()
        );
    }
    // The stored request: its state, due dates 30 and 90 days on, the identifier sealed.
    let one: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&stored[0]).unwrap()).unwrap();
    assert_eq!(one["format"], "lethe-request/1");
    assert_eq!(one["state"], "received");
    assert_eq!(one["scope"], "subject");
    assert_eq!(one["kind"], "phone");
    assert_eq!(one["ref"], "DPO-2026-114");
    assert!(one["identifier"]["sealed"].as_str().unwrap().len() > 20);
    let at = |k: &str| {
        chrono::DateTime::parse_from_rfc3339(one[k].as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    assert_eq!((at("due_primary") - at("received_at")).num_days(), 30);
    assert_eq!((at("due_backups") - at("received_at")).num_days(), 90);

    // Listed, none overdue: exit 0.
    let (code, out, err) = run(&d, &["requests", "ls", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);
    assert!(v.as_array().unwrap().iter().all(|r| r["overdue"].is_null()));
}

#[test]
fn bad_requests_exit_2_and_record_nothing() {
    let d = demo(2, 40);
    let t = a_tenant(&d);
    let before = files(&d.store());
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--tenant",
                "no-such-tenant",
                "--kind",
                "phone",
                "--id",
                "+6281234567890",
            ],
            "not in the tenants table",
        ),
        (
            &["--tenant", &t, "--kind", "shoe_size", "--id", "44"],
            "unknown identifier kind",
        ),
        (
            &["--tenant", &t, "--kind", "phone", "--id", "  "],
            "is empty",
        ),
        (
            &["--tenant", &t, "--kind", "phone", "--id", "+62 81x 1234"],
            "not a phone number",
        ),
        (
            &[
                "--tenant",
                &t,
                "--kind",
                "email",
                "--id",
                "siti.example.com",
            ],
            "not an email",
        ),
        (
            &[
                "--tenant",
                &t,
                "--kind",
                "phone",
                "--id",
                "+6281234567890",
                "--ref",
                "",
            ],
            "--ref",
        ),
    ];
    for (args, want) in cases {
        let mut all = vec!["erase", "subject"];
        all.extend_from_slice(args);
        let (code, out, err) = run(&d, &all);
        assert_eq!(code, 2, "{args:?}\n{out}\n{err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(
            err.contains("fix:") || err.contains("nothing was recorded"),
            "{err}"
        );
        assert!(
            !err.contains("81234567890") && !err.contains("siti."),
            "{err}"
        );
    }
    let (code, _, err) = run(&d, &["erase", "tenant", "--tenant", "nope"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(files(&d.store()), before, "nothing recorded");
}

#[test]
fn an_immediate_request_nothing_has_executed_is_overdue() {
    let d = demo(2, 40);
    let t = a_tenant(&d);
    let (code, out, err) = run(&d, &["erase", "tenant", "--tenant", &t, "--immediate"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("offboarding of tenant"), "{out}");
    let (code, out, err) = run(&d, &["requests", "ls"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("1 overdue"), "{out}");
    // Another tenant's listing does not show it, and is not overdue.
    let (code, out, _) = run(&d, &["requests", "ls", "--tenant", "someone-else"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 request(s)"), "{out}");
}

/// The demo's identifier columns (an independent statement of schemas/app.toml's `identifiers`).
const IDENTIFIERS: &[(&str, &str, &str)] = &[
    ("accounts", "id", "account_id"),
    ("accounts", "email", "email"),
    ("customers", "phone", "phone"),
    ("customers", "email", "email"),
    ("messages", "customer_phone", "phone"),
    ("calls", "customer_phone", "phone"),
    ("attendance_checkins", "employee_no", "employee_no"),
    ("attendance_checkins", "account_id", "account_id"),
    ("audit_log", "account_id", "account_id"),
    ("app_log", "account_id", "account_id"),
    ("security_log", "account_id", "account_id"),
    ("magic_link_tokens", "account_id", "account_id"),
    ("refresh_tokens", "account_id", "account_id"),
    ("ip_hashes", "account_id", "account_id"),
    ("support_tickets", "requester_email", "email"),
    ("billing_records", "billing_email", "email"),
];

/// The oracle: the same fixed point computed in Rust over every row of the tenant, with the
/// Rust normalization (the resolver computes normal forms in SQL).
fn expected_rows(
    db: &std::path::Path,
    tenant: &str,
    kind: &str,
    value: &str,
) -> std::collections::BTreeMap<String, u64> {
    use std::collections::{BTreeMap, BTreeSet};
    let c = rusqlite::Connection::open(db).unwrap();
    let norm = |k: &str, v: &str| lethe::erasure::identify::normalize(k, v, Some("62")).ok();
    // Per table: its rows as (kind, normalized value) sets.
    let mut tables: BTreeMap<&str, Vec<Vec<(String, String)>>> = BTreeMap::new();
    let names: BTreeSet<&str> = IDENTIFIERS.iter().map(|(t, _, _)| *t).collect();
    for t in names {
        let cols: Vec<(&str, &str)> = IDENTIFIERS
            .iter()
            .filter(|(tt, _, _)| *tt == t)
            .map(|(_, c, k)| (*c, *k))
            .collect();
        let sel: Vec<String> = cols
            .iter()
            .map(|(c, _)| format!("CAST({c} AS TEXT)"))
            .collect();
        let sql = format!("SELECT {} FROM {t} WHERE tenant_id = ?1", sel.join(", "));
        let mut st = c.prepare(&sql).unwrap();
        let rows: Vec<Vec<(String, String)>> = st
            .query_map([tenant], |r| {
                let mut v = Vec::new();
                for (i, (_, k)) in cols.iter().enumerate() {
                    let s: Option<String> = r.get(i)?;
                    if let Some(n) = s.as_deref().and_then(|s| norm(k, s)) {
                        v.push((k.to_string(), n));
                    }
                }
                Ok(v)
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        tables.insert(t, rows);
    }
    let mut known: BTreeSet<(String, String)> = [(kind.to_string(), value.to_string())].into();
    loop {
        let before = known.len();
        for rows in tables.values() {
            for r in rows {
                if r.iter().any(|x| known.contains(x)) {
                    known.extend(r.iter().cloned());
                }
            }
        }
        if known.len() == before {
            break;
        }
    }
    tables
        .iter()
        .map(|(t, rows)| {
            let n = rows
                .iter()
                .filter(|r| r.iter().any(|x| known.contains(x)))
                .count() as u64;
            (t.to_string(), n)
        })
        .collect()
}

fn show(d: &common::Demo, tenant: &str, id: &str) -> std::collections::BTreeMap<String, u64> {
    let (code, out, err) = run(d, &["requests", "show", "--tenant", tenant, id]);
    assert_eq!(code, 0, "{out}\n{err}");
    out.lines()
        .skip_while(|l| !l.starts_with("table"))
        .skip(1)
        .filter(|l| !l.starts_with("total"))
        .map(|l| {
            let mut w = l.split_whitespace();
            (
                w.next().unwrap().to_string(),
                w.next().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

fn received_id(out: &str) -> String {
    out.split_whitespace().nth(1).unwrap().to_string()
}

#[test]
fn resolution_follows_links_and_matches_every_spelling_within_the_tenant_only() {
    let d = demo(3, 60);
    let c = rusqlite::Connection::open(d.db()).unwrap();
    // A customer with an email: phone → customer row → email → tickets and billing.
    let (t, phone): (String, String) = c
        .query_row(
            "SELECT tenant_id, phone FROM customers WHERE email IS NOT NULL ORDER BY id LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    // Written in national form, with spaces.
    let national = format!("0{} {}", &phone[3..6], &phone[6..]);
    // Rows written by hand in other spellings match; the same number in another tenant does
    // not.
    let other: String = c
        .query_row(
            "SELECT id FROM tenants WHERE id <> ?1 ORDER BY id LIMIT 1",
            [&t],
            |r| r.get(0),
        )
        .unwrap();
    let dashed = format!("+62 {}-{}-{}", &phone[3..6], &phone[6..10], &phone[10..]);
    for (id, tenant, spelled) in [
        (990001, &t, national.as_str()),
        (990002, &t, dashed.as_str()),
        (990003, &other, phone.as_str()),
    ] {
        c.execute(
            "INSERT INTO messages (id, tenant_id, customer_phone, channel, direction, body, status, created_at) VALUES (?1, ?2, ?3, 'whatsapp', 'in', 'x', 'read', '2026-11-01 00:00:00')",
            rusqlite::params![id, tenant, spelled],
        )
        .unwrap();
    }
    let by_hand: i64 = c
        .query_row(
            "SELECT count(*) FROM messages WHERE id IN (990001, 990002)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(by_hand, 2);
    let (code, out, err) = erase(&d, &t, "phone", &national);
    assert_eq!(code, 0, "{out}\n{err}");
    let got = show(&d, &t, &received_id(&out));
    let want = expected_rows(&d.db(), &t, "phone", &phone);
    assert_eq!(got, want);
    let plain: i64 = c
        .query_row(
            "SELECT count(*) FROM messages WHERE tenant_id = ?1 AND customer_phone = ?2",
            [&t, &phone],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        got["messages"],
        plain as u64 + 2,
        "both hand-written spellings, not the other tenant's"
    );
    assert!(got["customers"] >= 1 && got["messages"] >= 1, "{got:?}");

    // An employee: email → account id → check-ins, logs, tokens.
    let (t, email): (String, String) = c
        .query_row(
            "SELECT a.tenant_id, a.email FROM accounts a WHERE EXISTS (SELECT 1 FROM attendance_checkins k WHERE k.account_id = a.id) ORDER BY a.id LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let (code, out, err) = erase(&d, &t, "email", &email.to_uppercase());
    assert_eq!(code, 0, "{out}\n{err}");
    let got = show(&d, &t, &received_id(&out));
    let want = expected_rows(&d.db(), &t, "email", &email.to_lowercase());
    assert_eq!(got, want);
    assert!(
        got["accounts"] == 1 && got["attendance_checkins"] >= 1,
        "{got:?}"
    );

    // Someone unknown: completes with 0 rows everywhere.
    let (code, out, err) = erase(&d, &t, "phone", "+1 202 555 0100");
    assert_eq!(code, 0, "{out}\n{err}");
    let got = show(&d, &t, &received_id(&out));
    assert!(got.values().all(|n| *n == 0), "{got:?}");
}

#[test]
fn an_identifier_shared_by_a_crowd_is_refused_and_an_edited_request_is_named() {
    let d = demo(2, 40);
    let t = a_tenant(&d);
    let c = rusqlite::Connection::open(d.db()).unwrap();
    // A placeholder address on 250 customers, each with their own phone.
    for i in 0..250 {
        c.execute(
            "INSERT INTO customers (id, tenant_id, phone, name, email, created_at) VALUES (?1, ?2, ?3, 'x', 'noemail@shop.example', '2026-11-01 00:00:00')",
            rusqlite::params![980000 + i, &t, format!("+62899{:07}", i)],
        )
        .unwrap();
    }
    let (code, out, err) = erase(&d, &t, "email", "NoEmail@Shop.example");
    assert_eq!(code, 0, "{out}\n{err}");
    let id = received_id(&out);
    let (code, out, err) = run(&d, &["requests", "show", "--tenant", &t, &id]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("shared by many people"), "{err}");
    assert!(!err.contains("noemail") && !err.contains("+62899"), "{err}");

    // A request file moved to another tenant's folder (or edited) is named, exit 1.
    let path = request_files(&d).pop().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace(&t, "someone-else")).unwrap();
    let (code, out, _) = run(&d, &["requests", "ls"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("UNREADABLE") && out.contains("does not match its key"),
        "{out}"
    );
    let (code, _, err) = run(&d, &["requests", "show", "--tenant", &t, &id]);
    assert_eq!(code, 1, "{err}");
    // An unknown request id is bad usage.
    let (code, _, err) = run(&d, &["requests", "show", "--tenant", &t, "nope"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no request nope"), "{err}");
    // Names that are not ids are refused before a key is built from them.
    for (tenant, id) in [("../..", "x"), (t.as_str(), "../../keys/x")] {
        let (code, _, err) = run(&d, &["requests", "show", "--tenant", tenant, id]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("is not a"), "{err}");
    }
    let (code, _, err) = run(&d, &["requests", "ls", "--tenant", "a/b"]);
    assert_eq!(code, 2, "{err}");
}
