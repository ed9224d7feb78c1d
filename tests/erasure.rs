//! Erasure requests on the embedded default: received, validated, stored without the
//! identifier in plaintext, listed with their due dates.

mod common;

use common::{demo, files, lethe};

fn cfg(d: &common::Demo) -> &str {
    d.config.to_str().unwrap()
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
        let (code, out, err) = lethe(&[
            "--config",
            cfg(&d),
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
        ]);
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
    let (code, out, err) = lethe(&["--config", cfg(&d), "requests", "ls", "--json"]);
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
        let mut all = vec!["--config", cfg(&d), "erase", "subject"];
        all.extend_from_slice(args);
        let (code, out, err) = lethe(&all);
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
    let (code, _, err) = lethe(&["--config", cfg(&d), "erase", "tenant", "--tenant", "nope"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(files(&d.store()), before, "nothing recorded");
}

#[test]
fn an_immediate_request_nothing_has_executed_is_overdue() {
    let d = demo(2, 40);
    let t = a_tenant(&d);
    let (code, out, err) = lethe(&[
        "--config",
        cfg(&d),
        "erase",
        "tenant",
        "--tenant",
        &t,
        "--immediate",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("offboarding of tenant"), "{out}");
    let (code, out, err) = lethe(&["--config", cfg(&d), "requests", "ls"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("1 overdue"), "{out}");
    // Another tenant's listing does not show it, and is not overdue.
    let (code, out, _) = lethe(&[
        "--config",
        cfg(&d),
        "requests",
        "ls",
        "--tenant",
        "someone-else",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 request(s)"), "{out}");
}
