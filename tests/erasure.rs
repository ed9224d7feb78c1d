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
    // And an ERROR log line naming the request and the phase.
    let line = err
        .lines()
        .find(|l| l.contains("erasure request overdue"))
        .unwrap_or_else(|| panic!("no overdue log line: {err}"));
    assert!(
        line.contains("ERROR") && line.contains("primary") && line.contains(&t),
        "{line}"
    );
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

/// Rows per table of tenant `t`.
fn counts(db: &std::path::Path, t: &str) -> std::collections::BTreeMap<String, u64> {
    let c = rusqlite::Connection::open(db).unwrap();
    IDENTIFIERS
        .iter()
        .map(|(table, _, _)| *table)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|table| {
            let n: i64 = c
                .query_row(
                    &format!("SELECT count(*) FROM {table} WHERE tenant_id = ?1"),
                    [t],
                    |r| r.get(0),
                )
                .unwrap();
            (table.to_string(), n as u64)
        })
        .collect()
}

/// Every blob key the database references.
fn referenced_blobs(db: &std::path::Path) -> std::collections::BTreeSet<String> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut out = std::collections::BTreeSet::new();
    for sql in [
        "SELECT selfie_key FROM attendance_checkins WHERE selfie_key IS NOT NULL",
        "SELECT recording_key FROM calls WHERE recording_key IS NOT NULL",
    ] {
        let mut st = c.prepare(sql).unwrap();
        out.extend(
            st.query_map([], |r| r.get::<_, String>(0))
                .unwrap()
                .map(Result::unwrap),
        );
    }
    out
}

/// Blob files in the demo's blob store, as keys.
fn blob_files(d: &common::Demo) -> std::collections::BTreeSet<String> {
    let root = d.dir.join("blobs");
    files(&root)
        .into_keys()
        .map(|p| p.strip_prefix(&root).unwrap().to_string_lossy().to_string())
        .collect()
}

/// An employee (account with selfie check-ins) of a tenant: (tenant, email, their selfie keys).
fn an_employee_with_selfies(d: &common::Demo) -> (String, String, Vec<String>) {
    let c = rusqlite::Connection::open(d.db()).unwrap();
    let (t, email, id): (String, String, i64) = c
        .query_row(
            "SELECT a.tenant_id, a.email, a.id FROM accounts a WHERE (SELECT count(*) FROM attendance_checkins k WHERE k.account_id = a.id AND k.selfie_key IS NOT NULL) >= 2 ORDER BY a.id LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    let mut st = c
        .prepare("SELECT selfie_key FROM attendance_checkins WHERE account_id = ?1 AND selfie_key IS NOT NULL")
        .unwrap();
    let keys = st
        .query_map([id], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    (t, email, keys)
}

/// Every file under the store, except snapshots (encrypted), as text.
fn store_text(d: &common::Demo) -> String {
    files(&d.store())
        .into_iter()
        .filter(|(p, _)| !p.starts_with(d.store().join("snapshots")))
        .map(|(_, b)| String::from_utf8_lossy(&b).to_string())
        .collect()
}

#[test]
fn an_employee_is_erased_from_rows_and_selfies_and_nothing_else_changes() {
    let d = demo(2, 60);
    let (t, email, selfies) = an_employee_with_selfies(&d);
    assert!(selfies.len() >= 2);
    let want = expected_rows(&d.db(), &t, "email", &email.to_lowercase());
    let before = counts(&d.db(), &t);
    let others: Vec<String> = {
        let c = rusqlite::Connection::open(d.db()).unwrap();
        let mut st = c.prepare("SELECT id FROM tenants WHERE id <> ?1").unwrap();
        st.query_map([&t], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let others_before: Vec<_> = others.iter().map(|o| counts(&d.db(), o)).collect();
    let blobs_before = blob_files(&d);
    for s in &selfies {
        assert!(blobs_before.contains(s), "the selfie {s} exists before");
    }
    // A backup taken before the erasure.
    let (code, out, err) = run(&d, &["run", "snapshot"]);
    assert_eq!(
        code, 0,
        "{out}
{err}"
    );

    let (code, out, err) = erase(&d, &t, "email", &format!("  {}  ", email.to_uppercase()));
    assert_eq!(code, 0, "{out}\n{err}");
    let id = received_id(&out);
    // The plan lists it, with the rows per table and a hash.
    let (code, out, err) = run(&d, &["plan"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains(&id) && out.contains("erasure requests (plan sha256:"),
        "{out}"
    );

    let (code, out, err) = run(&d, &["-vv", "run", "erasure"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains(&format!("erased request {id}")), "{out}");
    for needle in [email.as_str(), &email.to_uppercase(), &email.to_lowercase()] {
        assert!(
            !out.contains(needle) && !err.contains(needle),
            "identifier in output: {out}\n{err}"
        );
    }

    // Rows: exactly the person's are gone; billing records (statutory) would stay.
    let after = counts(&d.db(), &t);
    for (table, n) in &before {
        let gone = if table == "billing_records" {
            0
        } else {
            want[table]
        };
        assert_eq!(
            after[table],
            n - gone,
            "{table}: {before:?} → {after:?}, want {want:?}"
        );
    }
    assert!(
        want["accounts"] == 1 && want["attendance_checkins"] >= 2,
        "{want:?}"
    );
    for (o, b) in others.iter().zip(&others_before) {
        assert_eq!(&counts(&d.db(), o), b, "tenant {o} untouched");
    }
    // Blobs: the selfies are gone, every blob still referenced stays.
    let blobs_after = blob_files(&d);
    for s in &selfies {
        assert!(!blobs_after.contains(s), "selfie {s} still there");
    }
    assert_eq!(blobs_before.len() - blobs_after.len(), selfies.len());
    for r in referenced_blobs(&d.db()) {
        assert!(blobs_after.contains(&r), "a referenced blob went: {r}");
    }

    // The request is primary_done, with only keyed hashes left; the ledger holds hashes.
    let (code, out, _) = run(&d, &["requests", "ls", "--json"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"primary_done\""), "{out}");
    let text = store_text(&d);
    assert!(
        !text.contains("\"sealed\""),
        "a sealed identifier is left: {text}"
    );
    let lower = text.to_lowercase();
    assert!(
        !lower.contains(&email.to_lowercase()),
        "plaintext identifier in the store"
    );
    let ledger: Vec<_> = files(&d.store())
        .into_keys()
        .filter(|p| p.starts_with(d.store().join("ledger")))
        .collect();
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    let entry = std::fs::read_to_string(&ledger[0]).unwrap();
    assert!(
        entry.matches("hmac:").count() >= 3,
        "email, account id, employee no: {entry}"
    );

    // The audit chain verifies and holds the request's start and end.
    let (code, out, err) = run(&d, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}\n{err}");
    // Nothing left to do.
    let (code, out, err) = run(&d, &["run", "erasure"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("no open request"), "{out}");

    // A restore of the backup taken before does not bring the person back.
    let restored = d.dir.join("restored");
    let (code, out, err) = run(
        &d,
        &[
            "snapshot",
            "restore",
            "--tenant",
            &t,
            "--out",
            restored.to_str().unwrap(),
            "--format",
            "csv",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let dropped: u64 = out
        .lines()
        .find(|l| l.starts_with("erasure ledger:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no ledger line in {out}"));
    let erased: u64 = want
        .iter()
        .filter(|(t, _)| *t != "billing_records")
        .map(|(_, n)| n)
        .sum();
    assert!(
        dropped >= erased,
        "dropped {dropped}, the person had {erased} rows: {out}"
    );
    let plain: String = files(&restored)
        .into_values()
        .map(|b| String::from_utf8_lossy(&b).to_lowercase())
        .collect();
    assert!(plain.len() > 1000, "the restore wrote rows");
    assert!(
        !plain.contains(&email.to_lowercase()),
        "the erased person came back from a backup"
    );
}

#[test]
fn a_customer_under_a_legal_hold_keeps_the_held_rows_and_billing_is_statutory() {
    // klinik-sehat's messages are under a legal hold in the demo policy.
    let d = demo(2, 60);
    let c = rusqlite::Connection::open(d.db()).unwrap();
    let phone: String = c
        .query_row(
            "SELECT c.phone FROM customers c WHERE c.tenant_id = 'klinik-sehat' AND EXISTS (SELECT 1 FROM messages m WHERE m.tenant_id = c.tenant_id AND m.customer_phone = c.phone) ORDER BY c.id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let want = expected_rows(&d.db(), "klinik-sehat", "phone", &phone);
    let before = counts(&d.db(), "klinik-sehat");
    let (code, out, err) = erase(&d, "klinik-sehat", "phone", &phone);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = run(&d, &["run", "erasure"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("kept: legal hold"), "{out}");
    let after = counts(&d.db(), "klinik-sehat");
    assert_eq!(after["messages"], before["messages"], "held messages stay");
    assert_eq!(after["billing_records"], before["billing_records"]);
    assert_eq!(after["customers"], before["customers"] - want["customers"]);
    assert!(want["customers"] == 1 && want["messages"] >= 1, "{want:?}");
    let (_, out, _) = run(&d, &["requests", "ls", "--json"]);
    assert!(
        out.contains("legal hold") || out.contains("primary_done"),
        "{out}"
    );
}

#[test]
fn the_brake_stops_an_identifier_matching_half_a_table_until_its_plan_is_confirmed() {
    let d = demo(2, 40);
    // (klinik-sehat's messages are under a legal hold: nothing there would go)
    let t = "kopi-senja".to_string();
    let c = rusqlite::Connection::open(d.db()).unwrap();
    let total: i64 = c
        .query_row(
            "SELECT count(*) FROM messages WHERE tenant_id = ?1",
            [&t],
            |r| r.get(0),
        )
        .unwrap();
    // A number on more messages than the rest of the tenant has together.
    for i in 0..(total + 60) {
        c.execute(
            "INSERT INTO messages (id, tenant_id, customer_phone, channel, direction, body, status, created_at) VALUES (?1, ?2, '+62 899 0000 0001', 'whatsapp', 'in', 'x', 'read', '2026-11-01 00:00:00')",
            rusqlite::params![970000 + i, &t],
        )
        .unwrap();
    }
    let before = counts(&d.db(), &t);
    let (code, out, err) = erase(&d, &t, "phone", "0899 0000 0001");
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = run(&d, &["run", "erasure"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        out.contains("NOT EXECUTED") && out.contains("safety brake"),
        "{out}"
    );
    assert_eq!(counts(&d.db(), &t), before, "nothing deleted");
    // A wrong hash: exit 1, nothing deleted.
    let (code, _, err) = run(&d, &["run", "erasure", "--plan-hash", "sha256:00"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("differs from the one confirmed"), "{err}");
    assert_eq!(counts(&d.db(), &t), before, "nothing deleted");
    // The plan's hash confirms it.
    let (_, out, _) = run(&d, &["plan", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let hash = v["erasure"]["hash"].as_str().unwrap().to_string();
    let (code, out, err) = run(&d, &["run", "erasure", "--plan-hash", &hash]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        counts(&d.db(), &t)["messages"],
        before["messages"] - (total as u64 + 60)
    );
}

#[test]
fn a_crash_at_every_point_of_an_erasure_converges_to_the_uninterrupted_end_state() {
    let d = demo(2, 60);
    let (t, email, selfies) = an_employee_with_selfies(&d);
    let want = expected_rows(&d.db(), &t, "email", &email);
    let before = counts(&d.db(), &t);
    let (code, out, err) = erase(&d, &t, "email", &email);
    assert_eq!(code, 0, "{out}\n{err}");
    let mut crashes = 0;
    for n in 1..200 {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lethe"))
            .args(["--config", cfg(&d), "run", "erasure"])
            .env("LETHE_CRASH_AT", n.to_string())
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("LETHE_CRASH_AT"),
            "run {n} failed without crashing: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        crashes += 1;
    }
    assert!(crashes >= 6, "only {crashes} crash points were reached");
    // Whatever run finished it, the end state is the uninterrupted one.
    let (code, out, err) = run(&d, &["run", "erasure"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let after = counts(&d.db(), &t);
    for (table, n) in &before {
        let gone = if table == "billing_records" {
            0
        } else {
            want[table]
        };
        assert_eq!(after[table], n - gone, "{table}");
    }
    let blobs = blob_files(&d);
    for s in &selfies {
        assert!(!blobs.contains(s), "selfie {s} survived a crash");
    }
    // (no backup holds the person: the run after the primary phase makes the request final)
    let (_, out, _) = run(&d, &["requests", "ls", "--json"]);
    assert!(out.contains("\"final\""), "{out}");
    assert_eq!(store_text(&d).matches("\"sealed\"").count(), 0);
    let (code, out, err) = run(&d, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}\n{err}");
}

#[test]
fn an_offboarded_tenant_is_unreadable_at_once_and_gone_by_its_deadlines() {
    let d = demo(3, 40);
    let (code, out, err) = run(&d, &["run", "snapshot"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let t = "kopi-senja";
    let others: Vec<String> = ["klinik-sehat", "batik-lestari"].map(String::from).to_vec();
    let others_before: Vec<_> = others.iter().map(|o| counts(&d.db(), o)).collect();
    let before = counts(&d.db(), t);

    // Received without --immediate: the key goes at once, the rows wait for the deadline.
    let (code, out, err) = run(&d, &["erase", "tenant", "--tenant", t]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = run(&d, &["run", "erasure"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("destroyed (crypto-erase)"), "{out}");
    assert_eq!(
        counts(&d.db(), t),
        before,
        "rows wait for the primary deadline"
    );
    // Every snapshot file of the tenant: unreadable now (restore and verify fail).
    let (code, _, err) = run(
        &d,
        &[
            "snapshot",
            "restore",
            "--tenant",
            t,
            "--out",
            d.dir.join("r").to_str().unwrap(),
        ],
    );
    assert_ne!(code, 0, "{err}");
    assert!(!d.dir.join("r").join("customers").exists());
    // …which `snapshot verify` reports as crypto-erased, not as damage.
    let (code, out, err) = run(&d, &["snapshot", "verify"]);
    assert_eq!(code, 0, "{out}\n{err}");
    // A new snapshot skips the tenant (no new key, no new backup).
    let (code, out, err) = run(&d, &["run", "snapshot"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!out.contains(t), "{out}");
    let (code, _, err) = run(&d, &["run", "snapshot", "--tenant", t]);
    assert_eq!(code, 2, "{err}");

    // The next request, immediate: rows now (billing kept), then every object.
    let (code, out, err) = run(&d, &["erase", "tenant", "--tenant", t, "--immediate"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = run(&d, &["run", "erasure"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let after = counts(&d.db(), t);
    for (table, n) in &after {
        if table == "billing_records" {
            assert_eq!(*n, before[table], "statutory records stay");
        } else {
            assert_eq!(*n, 0, "{table} of the offboarded tenant");
        }
    }
    // The backups phase of the immediate request ran in the same night or runs next.
    let (code, out, err) = run(&d, &["run", "erasure"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let left: Vec<_> = files(&d.store())
        .into_keys()
        .filter(|p| p.starts_with(d.store().join("snapshots").join(format!("tenant={t}"))))
        .collect();
    assert!(
        left.is_empty(),
        "objects of the offboarded tenant left: {left:?}"
    );
    for (o, b) in others.iter().zip(&others_before) {
        assert_eq!(&counts(&d.db(), o), b, "tenant {o} untouched");
    }
    let (code, out, err) = run(&d, &["snapshot", "verify"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = run(&d, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}\n{err}");
}

#[test]
fn requests_from_the_intake_table_are_received_once_and_lose_their_identifier() {
    let d = demo(2, 40);
    let (code, out, err) = run(&d, &["init-db"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let c = rusqlite::Connection::open(d.db()).unwrap();
    let (t, phone): (String, String) = c
        .query_row(
            "SELECT tenant_id, phone FROM customers ORDER BY id LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    // What a chat bot's /forget inserts; and two rows lethe must refuse.
    c.execute(
        "INSERT INTO lethe_erasure_requests (tenant_id, kind, identifier, reference) VALUES (?1, 'phone', ?2, 'bot /forget')",
        [&t, &phone],
    )
    .unwrap();
    c.execute(
        "INSERT INTO lethe_erasure_requests (tenant_id, kind, identifier) VALUES (?1, 'phone', 'call me maybe')",
        [&t],
    )
    .unwrap();
    c.execute(
        "INSERT INTO lethe_erasure_requests (tenant_id, kind, identifier) VALUES ('no-such-tenant', 'email', 'a@b.example')",
        [],
    )
    .unwrap();
    let before: i64 = c
        .query_row(
            "SELECT count(*) FROM customers WHERE phone = ?1",
            [&phone],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(before, 1);
    let (code, out, err) = run(&d, &["run", "erasure"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        !out.contains(&phone) && !err.contains(&phone),
        "{out}\n{err}"
    );
    let after: i64 = c
        .query_row(
            "SELECT count(*) FROM customers WHERE phone = ?1",
            [&phone],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(after, 0, "the customer is erased");
    let rows: Vec<(
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    )> = c
        .prepare(
            "SELECT identifier, request_id, state, problem FROM lethe_erasure_requests ORDER BY id",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        rows[0].0, None,
        "the plaintext identifier is removed after the primary phase"
    );
    assert!(rows[0].1.is_some());
    assert_eq!(rows[0].2.as_deref(), Some("primary_done"));
    for r in &rows[1..] {
        assert_eq!(r.2.as_deref(), Some("refused"), "{r:?}");
        assert_eq!(r.0, None, "a refused row keeps no identifier");
        let why = r.3.as_deref().unwrap();
        assert!(!why.contains("call me") && !why.contains("a@b"), "{why}");
    }
    // Exactly one request, from the intake, and running again receives nothing new.
    let (code, out, err) = run(&d, &["run", "erasure"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let reqs = request_files(&d);
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let text = std::fs::read_to_string(&reqs[0]).unwrap();
    assert!(
        text.contains("\"source\": \"intake\"") && text.contains("bot /forget"),
        "{text}"
    );
}

#[test]
fn a_subject_export_holds_exactly_their_rows_and_selfies_in_json_and_csv() {
    let d = demo(2, 60);
    let (t, email, selfies) = an_employee_with_selfies(&d);
    let want = expected_rows(&d.db(), &t, "email", &email.to_lowercase());
    let out = d.dir.join("export-json");
    let (code, stdout, err) = run(
        &d,
        &[
            "export",
            "subject",
            "--tenant",
            &t,
            "--kind",
            "email",
            "--id",
            &email.to_uppercase(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{err}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("export.json")).unwrap()).unwrap();
    for (table, n) in &want {
        assert_eq!(manifest["rows"][table].as_u64().unwrap_or(0), *n, "{table}");
        if *n > 0 {
            let rows: Vec<serde_json::Value> =
                serde_json::from_slice(&std::fs::read(out.join(format!("{table}.json"))).unwrap())
                    .unwrap();
            assert_eq!(rows.len() as u64, *n, "{table}");
        }
    }
    let accounts = std::fs::read_to_string(out.join("accounts.json")).unwrap();
    assert!(
        accounts.contains(&email),
        "the account row is in the export"
    );
    for s in &selfies {
        assert!(out.join("blobs").join(s).exists(), "selfie {s} exported");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join("accounts.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "export files are private: {mode:o}");
    // The same as CSV; an existing directory is refused and left alone.
    let csv = d.dir.join("export-csv");
    let (code, stdout, err) = run(
        &d,
        &[
            "export",
            "subject",
            "--tenant",
            &t,
            "--kind",
            "email",
            "--id",
            &email,
            "--format",
            "csv",
            "--out",
            csv.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{err}");
    let text = std::fs::read_to_string(csv.join("attendance_checkins.csv")).unwrap();
    assert_eq!(
        text.lines().count() as u64,
        want["attendance_checkins"] + 1,
        "header + rows"
    );
    let (code, _, err) = run(
        &d,
        &[
            "export",
            "subject",
            "--tenant",
            &t,
            "--kind",
            "email",
            "--id",
            &email,
            "--out",
            csv.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        csv.join("accounts.csv").exists(),
        "the earlier export is untouched"
    );
    // Bad input: exit 2, nothing written.
    let none = d.dir.join("none");
    for args in [
        vec![
            "export",
            "subject",
            "--tenant",
            &t,
            "--kind",
            "shoe_size",
            "--id",
            "42",
            "--out",
            none.to_str().unwrap(),
        ],
        vec![
            "export",
            "subject",
            "--tenant",
            "no-such-tenant",
            "--kind",
            "email",
            "--id",
            "a@b.example",
            "--out",
            none.to_str().unwrap(),
        ],
        vec![
            "export",
            "subject",
            "--tenant",
            &t,
            "--kind",
            "phone",
            "--id",
            "call me",
            "--out",
            none.to_str().unwrap(),
        ],
    ] {
        let (code, _, err) = run(&d, &args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(!none.exists());
        assert!(!err.contains("call me"), "{err}");
    }
    // A whole tenant.
    let all = d.dir.join("export-tenant");
    let (code, stdout, err) = run(
        &d,
        &[
            "export",
            "tenant",
            "--tenant",
            &t,
            "--out",
            all.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{err}");
    let before = counts(&d.db(), &t);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(all.join("export.json")).unwrap()).unwrap();
    for (table, n) in &before {
        assert_eq!(m["rows"][table].as_u64().unwrap(), *n, "{table}");
    }
}

/// The tables and rows of a plaintext restore of `run` (CSV), and the ledger line's count.
fn restore_csv(d: &common::Demo, t: &str, run: &str, into: &str) -> (String, u64) {
    let out = d.dir.join(into);
    let (code, stdout, err) = self::run(
        d,
        &[
            "snapshot",
            "restore",
            "--tenant",
            t,
            "--run",
            run,
            "--out",
            out.to_str().unwrap(),
            "--format",
            "csv",
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{err}");
    let dropped = stdout
        .lines()
        .find(|l| l.starts_with("erasure ledger:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse().ok())
        .unwrap();
    let text = files(&out)
        .into_values()
        .map(|b| String::from_utf8_lossy(&b).to_lowercase())
        .collect();
    (text, dropped)
}

fn runs_of(d: &common::Demo, t: &str) -> Vec<String> {
    let (code, out, err) = run(d, &["snapshot", "ls", "--tenant", t, "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_string())
        .collect()
}

/// The phones of the first `n` kopi-senja customers who have messages.
fn chatting_customers(d: &common::Demo, n: usize) -> Vec<String> {
    let c = rusqlite::Connection::open(d.db()).unwrap();
    let phones: Vec<String> = c
        .prepare("SELECT c.phone FROM customers c WHERE c.tenant_id = 'kopi-senja' AND EXISTS (SELECT 1 FROM messages m WHERE m.customer_phone = c.phone) ORDER BY c.id LIMIT ?1")
        .unwrap()
        .query_map([n as i64], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(phones.len(), n, "the demo has {n} customers with messages");
    phones
}

#[test]
fn a_pinned_backup_is_rewritten_without_the_person_through_every_crash_point() {
    let d = demo(2, 60);
    let (t, email, _) = an_employee_with_selfies(&d);
    let want = expected_rows(&d.db(), &t, "email", &email.to_lowercase());
    let (code, out, err) = run(&d, &["run", "snapshot"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let old = runs_of(&d, &t)[0].clone();
    let (code, out, err) = run(
        &d,
        &[
            "snapshot",
            "pin",
            "--tenant",
            &t,
            "--run",
            &old,
            "--reason",
            "audit 2026",
            "--by",
            "ops",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let (before, _) = restore_csv(&d, &t, &old, "before");
    assert!(before.contains(&email.to_lowercase()));
    let (code, out, err) = erase(&d, &t, "email", &email);
    assert_eq!(code, 0, "{out}\n{err}");
    // The primary phase; then the backups phase, killed at every crash point, with `snapshot
    // verify` passing after each.
    let (code, out, err) = run(&d, &["run", "erasure"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let mut crashes = 0;
    for n in 1..100 {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_lethe"))
            .args(["--config", cfg(&d), "run", "erasure"])
            .env("LETHE_CRASH_AT", n.to_string())
            .output()
            .unwrap();
        let (code, out, err) = run(&d, &["snapshot", "verify"]);
        assert_eq!(code, 0, "after crash {n}: {out}\n{err}");
        if o.status.success() {
            break;
        }
        crashes += 1;
    }
    assert!(crashes >= 3, "only {crashes} crash points");
    let (_, out, _) = run(&d, &["requests", "ls", "--json"]);
    assert!(out.contains("\"final\""), "{out}");
    // The pinned run, decrypted in full: the person is gone, nobody else is.
    let (after, dropped) = restore_csv(&d, &t, &old, "after");
    assert_eq!(
        dropped, 0,
        "the rewrite left nothing for the ledger to drop"
    );
    assert!(
        !after.contains(&email.to_lowercase()),
        "the person is still in the backup"
    );
    let lines = |s: &str| s.lines().count() as u64;
    let erased: u64 = want
        .iter()
        .filter(|(t, _)| *t != "billing_records")
        .map(|(_, n)| n)
        .sum();
    // Exactly the person's rows went; their billing rows (statutory, kept in the database)
    // are kept in the backup too.
    let gone = lines(&before) - lines(&after);
    assert_eq!(
        gone, erased,
        "rows dropped from the backup vs the person's erased rows"
    );
    let (code, out, err) = run(&d, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = run(&d, &["snapshot", "verify"]);
    assert_eq!(code, 0, "{out}\n{err}");
}

#[test]
fn an_immediate_request_rewrites_every_backup_in_the_same_run() {
    let d = demo(2, 60);
    let (t, phone) = (
        "kopi-senja".to_string(),
        chatting_customers(&d, 1).remove(0),
    );
    for _ in 0..2 {
        let (code, out, err) = run(&d, &["run", "snapshot"]);
        assert_eq!(code, 0, "{out}\n{err}");
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
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
            &phone,
            "--immediate",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = run(&d, &["run", "erasure"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        out.matches("rewritten without the person").count(),
        2,
        "{out}"
    );
    let (_, out, _) = run(&d, &["requests", "ls", "--json"]);
    assert!(out.contains("\"final\""), "{out}");
    let (code, out, _) = run(&d, &["requests", "ls"]);
    assert_eq!(code, 0, "nothing overdue: {out}");
    for (i, r) in runs_of(&d, &t).iter().enumerate() {
        let (text, dropped) = restore_csv(&d, &t, r, &format!("r{i}"));
        assert_eq!(dropped, 0);
        assert!(!text.contains(&phone), "run {r} still holds the customer");
    }
}

#[test]
fn the_subject_index_is_sealed_and_points_the_rewrite_at_the_files_that_hold_the_person() {
    let d = demo(2, 60);
    let (t, email, _) = an_employee_with_selfies(&d);
    let (code, out, err) = run(&d, &["run", "snapshot"]);
    assert_eq!(code, 0, "{out}\n{err}");
    // Every run carries a sealed index listed in its manifest; its bytes hold no identifier.
    let idx: Vec<_> = files(&d.store())
        .into_iter()
        .filter(|(p, _)| p.to_string_lossy().ends_with(".idx"))
        .collect();
    assert_eq!(idx.len(), 2, "one index per tenant run");
    for (p, b) in &idx {
        assert!(
            !String::from_utf8_lossy(b).contains("part-"),
            "{p:?} is not sealed"
        );
        assert!(
            !String::from_utf8_lossy(b)
                .to_lowercase()
                .contains(&email.to_lowercase())
        );
    }
    let (code, out, err) = run(
        &d,
        &[
            "erase",
            "subject",
            "--tenant",
            &t,
            "--kind",
            "email",
            "--id",
            &email,
            "--immediate",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    // The plan asks the indexes which runs hold the person: the one run; for someone unknown,
    // none.
    let (code, out, err) = run(&d, &["plan"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("(1 hold the person"), "{out}");
    let (code, out, err) = erase(&d, &t, "phone", "+1 202 555 0100");
    assert_eq!(code, 0, "{out}\n{err}");
    let (_, out, _) = run(&d, &["plan"]);
    assert!(out.contains("(0 hold the person"), "{out}");
    let (code, out, err) = run(&d, &["run", "erasure"]);
    assert_eq!(code, 0, "{out}\n{err}");
    // Files searched = files that held the person (the index named exactly those).
    let line = out
        .lines()
        .find(|l| l.contains("rewritten without the person"))
        .unwrap_or_else(|| panic!("{out}"));
    let num = |after: &str| -> u64 {
        let i = line.find(after).unwrap();
        line[..i]
            .split_whitespace()
            .last()
            .unwrap()
            .trim_start_matches('(')
            .parse()
            .unwrap()
    };
    assert_eq!(num(" file(s) replaced"), num(" file(s) searched"), "{line}");
    assert!(num(" file(s) replaced") >= 3, "{line}");
    let (code, out, err) = run(&d, &["snapshot", "verify"]);
    assert_eq!(code, 0, "{out}\n{err}");
    // A damaged index is reported by verify.
    let (p, _) = files(&d.store())
        .into_iter()
        .find(|(p, _)| {
            p.to_string_lossy().contains(&format!("tenant={t}"))
                && p.to_string_lossy().ends_with(".idx")
        })
        .unwrap();
    let mut b = std::fs::read(&p).unwrap();
    b[20] ^= 1;
    std::fs::write(&p, b).unwrap();
    let (code, out, _) = run(&d, &["snapshot", "verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("subject index checksum mismatch"), "{out}");
}

#[test]
fn random_sigkills_during_an_immediate_erasure_converge_and_every_reader_sees_a_whole_run() {
    let d = demo(2, 60);
    let (t, email, selfies) = an_employee_with_selfies(&d);
    let want = expected_rows(&d.db(), &t, "email", &email.to_lowercase());
    let before = counts(&d.db(), &t);
    for _ in 0..2 {
        let (code, out, err) = run(&d, &["run", "snapshot"]);
        assert_eq!(code, 0, "{out}\n{err}");
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let (code, out, err) = run(
        &d,
        &[
            "erase",
            "subject",
            "--tenant",
            &t,
            "--kind",
            "email",
            "--id",
            &email,
            "--immediate",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    for seed in [11u64, 23, 37, 41, 59] {
        common::kill_randomly(&["--config", cfg(&d), "run", "erasure"], 3, seed, 400);
        // After every kill, every reader sees complete runs.
        let (code, out, err) = run(&d, &["snapshot", "verify"]);
        assert_eq!(code, 0, "seed {seed}: {out}\n{err}");
    }
    // The lease a killed run held expires; then one clean run converges.
    let mut done = false;
    for _ in 0..40 {
        let (code, out, err) = run(&d, &["run", "erasure"]);
        if code == 0 {
            done = true;
            break;
        }
        assert!(
            err.contains("lease") || err.contains("held"),
            "{out}\n{err}"
        );
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    assert!(done, "the erasure never completed after the kills");
    let (_, out, _) = run(&d, &["requests", "ls", "--json"]);
    assert!(out.contains("\"final\""), "{out}");
    let after = counts(&d.db(), &t);
    for (table, n) in &before {
        let gone = if table == "billing_records" {
            0
        } else {
            want[table]
        };
        assert_eq!(after[table], n - gone, "{table}");
    }
    let blobs = blob_files(&d);
    for s in &selfies {
        assert!(!blobs.contains(s));
    }
    for (i, r) in runs_of(&d, &t).iter().enumerate() {
        let (text, dropped) = restore_csv(&d, &t, r, &format!("k{i}"));
        assert_eq!(dropped, 0, "run {r} was not rewritten");
        assert!(
            !text.contains(&email.to_lowercase()),
            "run {r} holds the person"
        );
    }
    let (code, out, err) = run(&d, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}\n{err}");
}

/// Copy `run`'s directory of tenant `t` to a run taken at `at`, without its manifest: what a
/// snapshot that crashed before it committed leaves.
fn crashed_copy(
    d: &common::Demo,
    t: &str,
    run: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> std::path::PathBuf {
    let base = d.store().join("snapshots").join(format!("tenant={t}"));
    let to = base.join(format!("run={}-dead", at.format("%Y%m%dT%H%M%SZ")));
    for (p, bytes) in files(&base.join(format!("run={run}"))) {
        if p.file_name().is_some_and(|n| n == "_manifest.json") {
            continue;
        }
        let rel = p.strip_prefix(base.join(format!("run={run}"))).unwrap();
        std::fs::create_dir_all(to.join(rel).parent().unwrap()).unwrap();
        std::fs::write(to.join(rel), bytes).unwrap();
    }
    to
}

#[test]
fn runs_that_never_committed_hold_the_person_until_they_are_purged() {
    let d = demo(2, 60);
    let (t, phone) = (
        "kopi-senja".to_string(),
        chatting_customers(&d, 1).remove(0),
    );
    let (code, out, err) = run(&d, &["run", "snapshot"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let committed = runs_of(&d, &t)[0].clone();
    // One crashed two days ago (abandoned), one a minute ago (it may still be writing).
    let now = chrono::Utc::now();
    let abandoned = crashed_copy(&d, &t, &committed, now - chrono::TimeDelta::days(2));
    let young = crashed_copy(&d, &t, &committed, now - chrono::TimeDelta::minutes(1));
    let holds = |dir: &std::path::Path| {
        files(dir)
            .keys()
            .any(|p| p.extension().is_some_and(|e| e == "parquet"))
    };
    assert!(holds(&abandoned) && holds(&young));
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
            &phone,
            "--immediate",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = run(&d, &["run", "erasure"]);
    assert_eq!(code, 0, "{out}\n{err}");
    // The committed run is rewritten and the abandoned one purged; the young one keeps the
    // request open.
    assert!(!abandoned.exists(), "the abandoned run is purged");
    assert!(holds(&young));
    let (_, out, _) = run(&d, &["requests", "ls", "--json"]);
    assert!(
        !out.contains("\"final\""),
        "final while a run holds the person: {out}"
    );
    let (_, plan, _) = run(&d, &["plan"]);
    assert!(plan.contains("neither committed nor abandoned"), "{plan}");
    // Once it is gone (retention purges it when abandoned), the request is final.
    std::fs::remove_dir_all(&young).unwrap();
    let (code, out, err) = run(&d, &["run", "erasure"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (_, out, _) = run(&d, &["requests", "ls", "--json"]);
    assert!(out.contains("\"final\""), "{out}");
    let (code, out, err) = run(&d, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}\n{err}");
}

fn cert_files(d: &common::Demo) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let dir = d.store().join("certificates");
    if !dir.exists() {
        return Default::default();
    }
    files(&dir)
}

fn payload_of(jws: &[u8]) -> serde_json::Value {
    use base64::Engine;
    let s = std::str::from_utf8(jws).unwrap();
    let p = s.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn certificates_are_signed_once_per_phase_verify_and_fail_on_any_change() {
    let d = demo(2, 60);
    let phones = chatting_customers(&d, 2);
    let (t, phone) = ("kopi-senja".to_string(), phones[0].clone());
    let (code, out, err) = run(&d, &["run", "snapshot"]);
    assert_eq!(code, 0, "{out}\n{err}");
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
            &phone,
            "--immediate",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = run(&d, &["run", "erasure"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("primary certificate of request")
            && out.contains("final certificate of request"),
        "{out}"
    );
    let certs = cert_files(&d);
    assert_eq!(certs.len(), 2, "{certs:?}");
    let names: Vec<String> = certs
        .keys()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["final.jws", "primary.jws"]);
    // No identifier of the person in either, in any spelling we know.
    let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
    for (p, bytes) in &certs {
        let payload = payload_of(bytes).to_string();
        assert!(
            !payload.contains(&digits[digits.len() - 8..]),
            "{}: {payload}",
            p.display()
        );
        assert!(payload.contains("\"hash\":\"hmac:"), "{payload}");
    }
    let fin = payload_of(&certs[&certs.keys().next().unwrap().clone()]);
    assert_eq!(fin["phase"], "final");
    assert_eq!(fin["outcome"], "erased");
    assert_eq!(fin["anchor"]["audit_record"]["kind"], "end");
    let backups = fin["systems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["system"] == "backups")
        .unwrap();
    assert_eq!(backups["status"], "done");
    assert!(
        !backups["files"].as_array().unwrap().is_empty(),
        "the rewritten files with their sha256: {backups}"
    );
    // Verified with the store (signature and anchor), and offline with the published JWKS.
    let jwks = d.dir.join("issuer.jwks");
    let (code, out, err) = run(&d, &["keys", "public", "--format", "jwks"]);
    assert_eq!(code, 0, "{err}");
    std::fs::write(&jwks, &out).unwrap();
    for p in certs.keys() {
        let f = p.to_str().unwrap();
        let (code, out, err) = run(&d, &["certificate", "verify", f]);
        assert_eq!(code, 0, "{out}\n{err}");
        assert!(
            out.contains("signature verified") && out.contains("anchor verified"),
            "{out}"
        );
        let (code, out, err) = lethe(&[
            "certificate",
            "verify",
            f,
            "--jwks",
            jwks.to_str().unwrap(),
            "--offline",
        ]);
        assert_eq!(code, 0, "{out}\n{err}");
    }
    // Rendered for people, in Markdown and as one self-contained HTML page; no identifier.
    for (i, p) in certs.keys().enumerate() {
        let f = p.to_str().unwrap();
        let (code, md, err) = run(&d, &["certificate", "render", f]);
        assert_eq!(code, 0, "{md}\n{err}");
        assert!(md.starts_with("# Deletion certificate"), "{md}");
        assert!(
            md.contains("## Kept, and why") && md.contains("## How to verify"),
            "{md}"
        );
        let html_file = d.dir.join(format!("c{i}.html"));
        let (code, out, err) = run(
            &d,
            &[
                "certificate",
                "render",
                f,
                "--format",
                "html",
                "--out",
                html_file.to_str().unwrap(),
            ],
        );
        assert_eq!(code, 0, "{out}\n{err}");
        let html = std::fs::read_to_string(&html_file).unwrap();
        assert!(html.starts_with("<!DOCTYPE html>") && html.contains("<style>"));
        assert!(
            !html.contains("http://") && !html.contains("https://") && !html.contains("<script")
        );
        for text in [&md, &html] {
            assert!(!text.contains(&digits[digits.len() - 8..]), "{text}");
        }
        // It never overwrites.
        let (code, _, err) = run(
            &d,
            &[
                "certificate",
                "render",
                f,
                "--format",
                "html",
                "--out",
                html_file.to_str().unwrap(),
            ],
        );
        assert_eq!(code, 2, "{err}");
    }
    // Any change fails: a flipped byte anywhere, a truncation, something else, another key.
    let (p, good) = certs.iter().next().unwrap();
    let bad = d.dir.join("bad.jws");
    let step = (good.len() / 40).max(1);
    for i in (0..good.len()).step_by(step) {
        let mut b = good.clone();
        if b[i] == b'.' {
            continue;
        }
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        std::fs::write(&bad, &b).unwrap();
        let (code, out, _) = run(&d, &["certificate", "verify", bad.to_str().unwrap()]);
        assert_eq!(code, 1, "byte {i} flipped: {out}");
        assert!(out.contains("NOT VERIFIED"), "{out}");
    }
    let (code, out, _) = run(&d, &["certificate", "render", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "a changed certificate is not rendered: {out}");
    assert!(out.contains("not rendered"), "{out}");
    std::fs::write(&bad, &good[..good.len() - 10]).unwrap();
    let (code, _, _) = run(&d, &["certificate", "verify", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    std::fs::write(&bad, "not a certificate").unwrap();
    let (code, out, _) = run(&d, &["certificate", "verify", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.contains("not a JWS"), "{out}");
    let (code, _, err) = run(&d, &["certificate", "verify", "/nonexistent/x.jws"]);
    assert_eq!(code, 2, "{err}");
    let other = lethe::sign::SigningKey::load_or_create(&d.dir.join("other.pk8"), true).unwrap();
    let other_jwks = serde_json::json!({"keys": [other.public_jwk()]}).to_string();
    let other_file = d.dir.join("other.jwks");
    std::fs::write(&other_file, other_jwks).unwrap();
    let (code, out, _) = lethe(&[
        "certificate",
        "verify",
        p.to_str().unwrap(),
        "--jwks",
        other_file.to_str().unwrap(),
        "--offline",
    ]);
    assert_eq!(code, 1);
    assert!(out.contains("unknown kid"), "{out}");
    // `requests ls` names them.
    let (_, out, _) = run(&d, &["requests", "ls", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        listed[0]["certificates"].as_array().unwrap().len(),
        2,
        "{out}"
    );
    // A second run issues nothing new and changes nothing.
    let (code, out, err) = run(&d, &["run", "erasure"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(cert_files(&d), certs);
    // Killed at every crash point of another immediate erasure (including between signing a
    // certificate and storing it): the re-runs leave exactly one certificate per phase.
    let (t2, phone2) = (t.clone(), phones[1].clone());
    let (code, out, err) = run(
        &d,
        &[
            "erase",
            "subject",
            "--tenant",
            &t2,
            "--kind",
            "phone",
            "--id",
            &phone2,
            "--immediate",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    for n in 1..200 {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_lethe"))
            .args(["--config", cfg(&d), "run", "erasure"])
            .env("LETHE_CRASH_AT", n.to_string())
            .output()
            .unwrap();
        if o.status.success() {
            break;
        }
    }
    let (code, out, err) = run(&d, &["run", "erasure"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let after = cert_files(&d);
    assert_eq!(after.len(), 4, "{:?}", after.keys());
    for p in after.keys() {
        let (code, out, err) = run(&d, &["certificate", "verify", p.to_str().unwrap()]);
        assert_eq!(code, 0, "{}: {out}\n{err}", p.display());
    }
    let (code, out, err) = run(&d, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}\n{err}");
}

#[test]
fn a_rotated_signing_key_keeps_old_certificates_and_checkpoints_verifying() {
    let d = demo(2, 60);
    let phones = chatting_customers(&d, 2);
    let erase_now = |phone: &str| {
        let (code, out, err) = run(
            &d,
            &[
                "erase",
                "subject",
                "--tenant",
                "kopi-senja",
                "--kind",
                "phone",
                "--id",
                phone,
                "--immediate",
            ],
        );
        assert_eq!(code, 0, "{out}\n{err}");
        let (code, out, err) = run(&d, &["run", "erasure"]);
        assert_eq!(code, 0, "{out}\n{err}");
    };
    let (code, out, err) = run(&d, &["run", "snapshot"]);
    assert_eq!(code, 0, "{out}\n{err}");
    erase_now(&phones[0]);
    let old_certs = cert_files(&d);
    assert_eq!(old_certs.len(), 2);
    let kid_of = |jws: &[u8]| {
        use base64::Engine;
        let h = std::str::from_utf8(jws).unwrap().split('.').next().unwrap();
        let h: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .unwrap(),
        )
        .unwrap();
        h["kid"].as_str().unwrap().to_string()
    };
    let old_kid = kid_of(old_certs.values().next().unwrap());

    let (code, out, err) = run(&d, &["keys", "rotate"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("rotated") && out.contains(&old_kid), "{out}");
    let retired: Vec<_> = std::fs::read_dir(d.dir.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("retired"))
        .collect();
    assert_eq!(retired.len(), 1, "{retired:?}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&retired[0]).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The chain, and the certificates the old key signed, still verify.
    let (code, out, err) = run(&d, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}\n{err}");
    for p in old_certs.keys() {
        let (code, out, err) = run(&d, &["certificate", "verify", p.to_str().unwrap()]);
        assert_eq!(code, 0, "{out}\n{err}");
        assert!(out.contains("anchor verified"), "{out}");
    }
    // Only the new key: the old certificates name a key it does not know.
    let (_, jwk, _) = run(&d, &["keys", "public", "--format", "jwk"]);
    let only_new = d.dir.join("new.jwk");
    std::fs::write(&only_new, &jwk).unwrap();
    let p = old_certs.keys().next().unwrap();
    let (code, out, _) = lethe(&[
        "certificate",
        "verify",
        p.to_str().unwrap(),
        "--jwks",
        only_new.to_str().unwrap(),
        "--offline",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("unknown kid"), "{out}");
    // New work is signed by the new key, and every key is published with its validity.
    erase_now(&phones[1]);
    let all = cert_files(&d);
    assert_eq!(all.len(), 4);
    let new_kids: std::collections::BTreeSet<String> = all
        .iter()
        .filter(|(p, _)| !old_certs.contains_key(*p))
        .map(|(_, b)| kid_of(b))
        .collect();
    let new_jwk: serde_json::Value = serde_json::from_str(&jwk).unwrap();
    assert_eq!(
        new_kids.into_iter().collect::<Vec<_>>(),
        [new_jwk["kid"].as_str().unwrap()]
    );
    let (_, jwks, _) = run(&d, &["keys", "public", "--format", "jwks"]);
    let jwks: serde_json::Value = serde_json::from_str(&jwks).unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, [new_jwk["kid"].as_str().unwrap(), old_kid.as_str()]);
    assert!(
        jwks["lethe_validity"][1]["valid_until"].is_string(),
        "{jwks}"
    );
    for p in all.keys() {
        let (code, out, err) = run(&d, &["certificate", "verify", p.to_str().unwrap()]);
        assert_eq!(code, 0, "{}: {out}\n{err}", p.display());
    }
    // A second rotation: three keys, and the chain still verifies.
    let (code, out, err) = run(&d, &["keys", "rotate"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = run(&d, &["run", "snapshot"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = run(&d, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (_, jwks, _) = run(&d, &["keys", "public", "--format", "jwks"]);
    let jwks: serde_json::Value = serde_json::from_str(&jwks).unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 3);
}

/// A sub-processor's erasure endpoint on loopback: `/ok` answers 200, `/refuse` 403, `/flaky`
/// 503 the first time and 200 after, `/slow` only after 2 s. Every request is logged as
/// (path, Idempotency-Key, body).
fn subprocessor_server() -> (
    u16,
    std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>,
) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let shared = log.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let log = shared.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                let (head, body_start) = loop {
                    let n = s.read(&mut tmp).unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break (String::from_utf8_lossy(&buf[..i]).into_owned(), i + 4);
                    }
                };
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                        })
                        .unwrap_or_default()
                };
                let len: usize = header("content-length").parse().unwrap_or(0);
                while buf.len() < body_start + len {
                    let n = s.read(&mut tmp).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                }
                let body = String::from_utf8_lossy(&buf[body_start..]).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let seen = {
                    let mut l = log.lock().unwrap();
                    let seen = l
                        .iter()
                        .filter(|e: &&(String, String, String)| e.0 == path)
                        .count();
                    l.push((path.clone(), header("idempotency-key"), body));
                    seen
                };
                let status = match path.as_str() {
                    "/ok" => 200,
                    "/refuse" => 403,
                    "/flaky" if seen == 0 => 503,
                    "/flaky" => 200,
                    _ => {
                        std::thread::sleep(std::time::Duration::from_secs(2));
                        200
                    }
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} Answer\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            });
        }
    });
    (port, log)
}

#[test]
fn sub_processors_get_a_signed_notice_and_the_certificate_lists_each_answer() {
    let d = demo(2, 60);
    let (port, server_log) = subprocessor_server();
    let mut text = std::fs::read_to_string(&d.config).unwrap();
    for name in ["ok", "flaky", "slow", "refuse"] {
        text.push_str(&format!(
            "\n[[subprocessors]]\nname = \"{name}\"\nerase_url = \"http://127.0.0.1:{port}/{name}\"\ntimeout_ms = 500\nattempts = 2\n"
        ));
    }
    std::fs::write(&d.config, &text).unwrap();
    let phone = chatting_customers(&d, 1)[0].clone();
    let (code, out, err) = run(
        &d,
        &[
            "erase",
            "subject",
            "--tenant",
            "kopi-senja",
            "--kind",
            "phone",
            "--id",
            &phone,
            "--immediate",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = common::lethe_env(
        &["--config", cfg(&d), "run", "erasure"],
        &[("LETHE_LOG", "info".to_string())],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
    assert!(
        err.contains("erasure notice") && !err.contains(&digits[digits.len() - 8..]),
        "the notices are logged, without the identifier: {err}"
    );

    // What the sub-processors received: signed notices, the same one on a retry, no identifier
    // (the endpoints are plain http).
    let log = server_log.lock().unwrap().clone();
    let count = |p: &str| log.iter().filter(|e| e.0 == p).count();
    assert_eq!(
        (
            count("/ok"),
            count("/flaky"),
            count("/slow"),
            count("/refuse")
        ),
        (1, 2, 2, 1),
        "{log:?}"
    );
    let flaky: Vec<&(String, String, String)> = log.iter().filter(|e| e.0 == "/flaky").collect();
    assert_eq!(
        flaky[0].1, flaky[1].1,
        "a retry carries the same Idempotency-Key"
    );
    assert_eq!(flaky[0].2, flaky[1].2, "a retry is the same notice");
    let jwks = d.dir.join("issuer.jwks");
    let (code, out, _) = run(&d, &["keys", "public", "--format", "jwks"]);
    assert_eq!(code, 0);
    std::fs::write(&jwks, &out).unwrap();
    for (path, _, body) in &log {
        let p = payload_of(body.as_bytes());
        assert_eq!(p["format"], "lethe-erasure-notice/1", "{path}");
        assert!(p["subject"]["hash"].as_str().unwrap().starts_with("hmac:"));
        assert!(
            p.get("identifier").is_none(),
            "no identifier over http: {p}"
        );
        assert!(!body.contains(&digits[digits.len() - 8..]));
        assert!(!p.to_string().contains(&digits[digits.len() - 8..]), "{p}");
    }

    // Each answer in the certificate; a refusal and a silence make it "with exceptions".
    let certs = cert_files(&d);
    let primary = certs
        .iter()
        .find(|(p, _)| p.ends_with("primary.jws"))
        .expect("the primary certificate waits only for answers or due dates");
    let p = payload_of(primary.1);
    let subs: std::collections::BTreeMap<String, serde_json::Value> = p["subprocessors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s.clone()))
        .collect();
    assert_eq!(subs["ok"]["status"], "accepted");
    assert_eq!(subs["ok"]["attempts"], 1);
    assert_eq!(subs["flaky"]["status"], "accepted");
    assert_eq!(subs["flaky"]["attempts"], 2);
    assert_eq!(subs["slow"]["status"], "unanswered");
    assert_eq!(subs["refuse"]["status"], "refused");
    assert_eq!(subs["refuse"]["http_status"], 403);
    assert_eq!(p["outcome"], "erased_with_exceptions");
    let (code, out, err) = run(&d, &["certificate", "verify", primary.0.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");

    // The silent one is overdue (an immediate request is due at once): exit 1, named.
    let (code, out, err) = run(&d, &["requests", "ls"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("notice:slow"), "{out}");
    assert!(
        err.contains("unanswered past its due date") && err.contains("slow"),
        "{err}"
    );
    assert!(!err.contains(&digits[digits.len() - 8..]));

    // Answered notices are not sent again; the unanswered one is, in the next run.
    let (code, out, err) = run(&d, &["run", "erasure"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let again = server_log.lock().unwrap().clone();
    let count = |p: &str| again.iter().filter(|e| e.0 == p).count();
    assert_eq!(
        (
            count("/ok"),
            count("/flaky"),
            count("/slow"),
            count("/refuse")
        ),
        (1, 2, 4, 1),
        "{again:?}"
    );

    // Bad input: an identifier over plain http is refused by the configuration.
    let mut bad = text.clone();
    bad.push_str(&format!(
        "\n[[subprocessors]]\nname = \"leaky\"\nerase_url = \"http://127.0.0.1:{port}/ok\"\nsend_identifier = true\n"
    ));
    std::fs::write(&d.config, &bad).unwrap();
    let (code, out, err) = run(&d, &["check"]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(
        err.contains("subprocessors[4].send_identifier") && err.contains("https"),
        "{err}"
    );
}
