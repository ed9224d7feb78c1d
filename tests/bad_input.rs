//! Bad input gets a clear error (exit 2) that names the file and the fix, and changes nothing:
//! no file in the store appears, disappears or changes, and the keyring is left as it was.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{demo, files, lethe};

/// State that must not change: every store object and the keyring.
fn state(d: &common::Demo) -> (BTreeMap<PathBuf, Vec<u8>>, Vec<u8>) {
    (
        files(&d.store()),
        std::fs::read(d.dir.join("keys/keyring.json")).unwrap_or_default(),
    )
}

/// Run `run snapshot` and `check` on a broken setup: both exit 2 with every `needle` in stderr,
/// and nothing changes.
fn refused(d: &common::Demo, config: &Path, needles: &[&str]) {
    let before = state(d);
    for args in [&["run", "snapshot"][..], &["check"][..]] {
        let mut all = vec!["--config", config.to_str().unwrap()];
        all.extend_from_slice(args);
        let (code, _, err) = lethe(&all);
        assert_eq!(code, 2, "{args:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{args:?}: expected {n:?} in:\n{err}");
        }
        assert!(err.contains("fix"), "{args:?}: no fix hint in:\n{err}");
    }
    assert!(before == state(d), "the store or keyring changed");
}

fn snapshotted() -> common::Demo {
    let d = demo(2, 30);
    let (code, _, err) = lethe(&["--config", d.config.to_str().unwrap(), "run", "snapshot"]);
    assert_eq!(code, 0, "{err}");
    d
}

fn edit(path: &Path, f: impl FnOnce(String) -> String) {
    let t = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, f(t)).unwrap();
}

#[test]
fn missing_config() {
    let d = snapshotted();
    let missing = d.dir.join("nope.toml");
    refused(&d, &missing, &["nope.toml", "cannot read"]);
}

#[test]
fn garbled_config() {
    let d = snapshotted();
    edit(&d.config, |t| t.replace("[store]", "[store"));
    refused(&d, &d.config, &["lethe.toml", "line"]);
}

#[test]
fn unknown_key_in_config() {
    let d = snapshotted();
    edit(&d.config, |t| {
        t.replace("[store]\n", "[store]\nbucket = \"x\"\n")
    });
    refused(&d, &d.config, &["lethe.toml", "bucket"]);
}

#[test]
fn data_map_naming_a_missing_table() {
    let d = snapshotted();
    edit(&d.dir.join("schemas/app.toml"), |t| {
        t + "\n[tables.selfies]\ntenant_column = \"tenant_id\"\nprimary_key = \"id\"\ncategories = [\"selfie_photos\"]\n"
    });
    refused(
        &d,
        &d.config,
        &["schemas/app.toml", "tables.selfies", "does not exist"],
    );
}

#[test]
fn data_map_naming_a_missing_column() {
    let d = snapshotted();
    edit(&d.dir.join("schemas/app.toml"), |t| {
        t.replacen(
            "subject_columns = [\"customer_phone\"]",
            "subject_columns = [\"customer_msisdn\"]",
            1,
        )
    });
    refused(
        &d,
        &d.config,
        &[
            "schemas/app.toml",
            "tables.messages.subject_columns",
            "customer_msisdn",
            "customer_phone",
        ],
    );
}

#[test]
fn unknown_key_in_data_map() {
    let d = snapshotted();
    edit(&d.dir.join("schemas/app.toml"), |t| {
        t.replacen(
            "categories = [\"messages\"]",
            "categories = [\"messages\"]\nretention = \"90d\"",
            1,
        )
    });
    refused(&d, &d.config, &["schemas/app.toml", "retention", "line"]);
}

#[test]
fn policy_anchor_naming_a_missing_column() {
    let d = snapshotted();
    edit(&d.dir.join("jobs/retention.toml"), |t| {
        t.replace("anchor = \"checked_in_at\"", "anchor = \"captured_at\"")
    });
    refused(
        &d,
        &d.config,
        &[
            "retention.toml",
            "categories.selfie_photos.anchor",
            "captured_at",
        ],
    );
}

#[test]
fn empty_policy() {
    let d = snapshotted();
    std::fs::write(d.dir.join("jobs/retention.toml"), "").unwrap();
    refused(&d, &d.config, &["retention.toml", "empty"]);
}

#[test]
fn bad_cron_and_time_zone() {
    let d = snapshotted();
    edit(&d.dir.join("jobs/nightly.toml"), |t| {
        t.replace("30 2 * * *", "30 25 * * *")
            .replace("Asia/Jakarta", "Asia/Djakarta")
    });
    refused(
        &d,
        &d.config,
        &["nightly.toml", "schedule", "timezone", "Asia/Djakarta"],
    );
}

#[test]
fn unreadable_keyring() {
    let d = snapshotted();
    std::fs::write(
        d.dir.join("keys/keyring.json"),
        b"{\"format\": \"lethe-keyring/1\", \"tenants\": [",
    )
    .unwrap();
    let (code, _, err) = lethe(&["--config", d.config.to_str().unwrap(), "run", "snapshot"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("keyring.json") && err.contains("unreadable") && err.contains("fix"),
        "{err}"
    );
    let before = state(&d);
    let (code, _, _) = lethe(&["--config", d.config.to_str().unwrap(), "snapshot", "verify"]);
    assert_eq!(code, 2);
    assert!(before == state(&d));
}

#[test]
fn wrong_master_key() {
    let d = snapshotted();
    std::fs::write(d.dir.join("keys/master.key"), "11".repeat(32)).unwrap();
    let before = state(&d);
    for args in [
        &["run", "snapshot"][..],
        &["snapshot", "verify"][..],
        &[
            "snapshot",
            "restore",
            "--tenant",
            "kopi-senja",
            "--out",
            "/tmp/lethe-never",
        ][..],
    ] {
        let mut all = vec!["--config", d.config.to_str().unwrap()];
        all.extend_from_slice(args);
        let (code, _, err) = lethe(&all);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("wrong master key") && err.contains("fix"),
            "{err}"
        );
    }
    assert!(before == state(&d));
    assert!(!Path::new("/tmp/lethe-never").exists());
}

#[test]
fn malformed_master_key() {
    let d = snapshotted();
    std::fs::write(d.dir.join("keys/master.key"), "not hex at all").unwrap();
    let (code, _, err) = lethe(&["--config", d.config.to_str().unwrap(), "run", "snapshot"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("master.key") && err.contains("64 hex"),
        "{err}"
    );
}

#[test]
fn an_identifier_column_whose_text_lethe_cannot_reproduce_is_refused() {
    // latitude is REAL: its text differs between the database and a snapshot's reader, so
    // erasure could not find the value in backups.
    let d = snapshotted();
    edit(&d.dir.join("schemas/app.toml"), |t| {
        t.replacen(
            "identifiers = { employee_no = \"employee_no\", account_id = \"account_id\" }",
            "identifiers = { employee_no = \"employee_no\", account_id = \"account_id\", latitude = \"place\" }",
            1,
        )
    });
    refused(
        &d,
        &d.config,
        &[
            "schemas/app.toml",
            "tables.attendance_checkins.identifiers",
            "latitude",
            "text or integer",
        ],
    );
}

/// `jobs/analytics.toml`: a valid file passes `check`; personal columns as keys or outputs,
/// unknown columns and measures, k < 2 and a table kept for less than a partition are each
/// named with file and key (exit 2), and the file is not mistaken for a job.
#[test]
fn analytics_datasets_are_validated_by_check() {
    let d = demo(2, 10);
    let cfg = d.config.to_str().unwrap();
    let file = d.dir.join("jobs/analytics.toml");
    std::fs::write(
        &file,
        r#"
[datasets.messages_daily]
table = "messages"
scope = "tenant"
period = "day"
keys = ["channel", "direction"]
subjects = ["customer_phone"]
measures = [
  { name = "messages", kind = "count" },
  { name = "customers", kind = "distinct", column = "customer_phone" },
]
"#,
    )
    .unwrap();
    let (code, out, err) = lethe(&["--config", cfg, "check"]);
    assert_eq!(code, 0, "{out}\n{err}");

    std::fs::write(
        &file,
        r#"
[datasets.bad]
table = "messages"
scope = "platform"
keys = ["customer_phone", "no_such_column"]
subjects = ["customer_phone"]
k = 1
measures = [
  { name = "a", kind = "mode", column = "status" },
  { name = "b", kind = "sum", column = "body" },
  { name = "c", kind = "distinct", column = "customer_name" },
]

[datasets.tokens]
table = "magic_link_tokens"
scope = "tenant"
subjects = ["account_id"]
measures = [{ name = "n", kind = "count" }]
"#,
    )
    .unwrap();
    let (code, out, err) = lethe(&["--config", cfg, "check"]);
    assert_eq!(code, 2, "{out}\n{err}");
    for needle in [
        "analytics.toml",
        "datasets.bad.keys[0]",
        "customer_phone is a personal column",
        "datasets.bad.keys[1]",
        "no column no_such_column",
        "datasets.bad.k",
        "datasets.bad.measures[0].kind",
        "unknown measure \"mode\"",
        "datasets.bad.measures[1].column",
        "body is a personal column",
        "datasets.bad.measures[2].column",
        "datasets.tokens.table",
        "less than one Day partition",
    ] {
        assert!(err.contains(needle), "{needle:?} not in:\n{err}");
    }
    // Not a job: `run` still lists the jobs it had.
    std::fs::write(&file, "garbage = [").unwrap();
    let (code, _, err) = lethe(&["--config", cfg, "check"]);
    assert_eq!(code, 2);
    assert!(err.contains("analytics.toml"), "{err}");
}

/// Derived measures, platform scope, `[analytics]` and `--rebuild`: each mistake exits 2 naming
/// the file and key (or the flag), and nothing is published.
#[test]
fn analytics_measures_scopes_zones_and_rebuild_are_validated() {
    let d = demo(2, 10);
    let cfg = d.config.to_str().unwrap();
    let file = d.dir.join("jobs/analytics.toml");
    std::fs::write(
        &file,
        r#"
[datasets.p]
table = "messages"
scope = "platform"
subjects = ["customer_phone"]
measures = [
  { name = "median_len", kind = "median", column = "id" },
  { name = "statuses", kind = "distinct", column = "status" },
  { name = "x", kind = "count", unit = "hours" },
  { name = "x", kind = "count" },
  { name = "dt", kind = "count" },
]

[datasets.t]
table = "support_tickets"
scope = "tenant"
subjects = ["requester_email"]
measures = [
  { name = "h", kind = "median", column = "resolved_at", since = "requester_email", unit = "fortnights" },
  { name = "fr", kind = "count", first_response = { direction = "body", inbound = "in", outbound = "out" } },
]
"#,
    )
    .unwrap();
    let (code, out, err) = lethe(&["--config", cfg, "check"]);
    assert_eq!(code, 2, "{out}\n{err}");
    for needle in [
        "datasets.p.measures[0].kind",
        "median is not computed platform-wide",
        "datasets.p.measures[1].kind",
        "datasets.p.measures[2].unit",
        "datasets.p.measures[3].name",
        "datasets.p.measures[4].name",
        "datasets.t.measures[0].since",
        "datasets.t.measures[0].unit",
        "unknown unit \"fortnights\"",
        "datasets.t.measures[1].kind",
        "datasets.t.measures[1].first_response.direction",
    ] {
        assert!(err.contains(needle), "{needle:?} not in:\n{err}");
    }
    std::fs::remove_file(&file).unwrap();
    let (code, out, err) = lethe(&["--config", cfg, "run", "analytics", "--rebuild", "nosuch"]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(err.contains("--rebuild nosuch"), "{err}");
    let (code, out, err) = lethe(&["--config", cfg, "run", "snapshot", "--rebuild", "x"]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(err.contains("--rebuild applies to"), "{err}");
    let mut config = std::fs::read_to_string(&d.config).unwrap();
    config.push_str("\n[analytics]\ntime_zone = \"Mars/Olympus\"\n");
    std::fs::write(&d.config, config).unwrap();
    let (code, out, err) = lethe(&["--config", cfg, "check"]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(err.contains("analytics.time_zone"), "{err}");
    assert!(!d.store().join("analytics").exists());
}
