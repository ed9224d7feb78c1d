//! Interop: pyarrow's standard CryptoFactory decrypts a lethe snapshot with a small KMS client
//! (tests/read_with_pyarrow.py, the README's snippet as a script), and reads the same rows.
//!
//! Needs a Python with pyarrow and cryptography, named by `LETHE_TEST_PYTHON`. `.ci/run`
//! installs one and sets it, so in CI this test always runs; elsewhere without it, the test
//! says loudly that it did not run.

mod common;

#[tokio::test(flavor = "multi_thread")]
async fn pyarrow_decrypts_a_lethe_snapshot_with_the_readme_kms_client() {
    let Ok(python) = std::env::var("LETHE_TEST_PYTHON") else {
        assert!(
            std::env::var("LETHE_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "LETHE_REQUIRE_SERVICES=1 but LETHE_TEST_PYTHON is not set"
        );
        common::skipped(
            "pyarrow interop",
            "set LETHE_TEST_PYTHON to a python with pyarrow + cryptography (scripts/test does)",
        );
        return;
    };
    let d = common::demo(2, 30);
    let run = lethe::pipeline::run_snapshot(&d.config, &[]).await.unwrap();
    let m = &run
        .done
        .iter()
        .find(|t| t.tenant == "kopi-senja")
        .unwrap()
        .manifest;
    let rows = m.files.iter().find(|f| f.table == "messages").unwrap().rows;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/read_with_pyarrow.py");
    let out = std::process::Command::new(python)
        .args([script, d.dir.to_str().unwrap(), "kopi-senja", "messages"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!(" {rows} rows")), "{stdout}");
    assert!(
        stdout.contains("created_at: timestamp[us, tz=UTC] not null"),
        "{stdout}"
    );
    // The first message as pyarrow sees it is the first message of the source.
    let conn = rusqlite::Connection::open(d.db()).unwrap();
    let body: String = conn
        .query_row(
            "SELECT body FROM messages WHERE tenant_id = 'kopi-senja' ORDER BY id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(stdout.contains(&body), "{stdout}");
}
