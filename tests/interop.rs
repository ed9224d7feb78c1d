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

/// A controller verifies a deletion certificate with third-party JOSE libraries — jwcrypto
/// (Python) and jose (Node.js) — given only the issuer's JWK Set: `tests/verify_certificate.py`
/// is the README's snippet, `tests/verify_certificate.js` the other.
#[test]
fn jwcrypto_verifies_a_certificate_and_refuses_a_changed_one() {
    let Ok(python) = std::env::var("LETHE_TEST_PYTHON") else {
        assert!(
            std::env::var("LETHE_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "LETHE_REQUIRE_SERVICES=1 but LETHE_TEST_PYTHON is not set"
        );
        common::skipped(
            "jwcrypto certificate interop",
            "set LETHE_TEST_PYTHON to a python with jwcrypto (scripts/test does)",
        );
        return;
    };
    let d = common::demo(2, 30);
    let cfg = d.config.to_str().unwrap();
    let c = rusqlite::Connection::open(d.db()).unwrap();
    let phone: String = c
        .query_row(
            "SELECT phone FROM customers WHERE tenant_id = 'kopi-senja' ORDER BY id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    for args in [
        vec!["run", "snapshot"],
        vec![
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
        vec!["run", "erasure"],
    ] {
        let mut all = vec!["--config", cfg];
        all.extend(args);
        let (code, out, err) = common::lethe(&all);
        assert_eq!(code, 0, "{out}\n{err}");
    }
    let (code, jwks, err) = common::lethe(&["--config", cfg, "keys", "public", "--format", "jwks"]);
    assert_eq!(code, 0, "{err}");
    let jwks_file = d.dir.join("issuer.jwks");
    std::fs::write(&jwks_file, jwks).unwrap();
    let mut certs = common::files(&d.store().join("certificates"));
    assert_eq!(certs.len(), 2);
    // A retention attestation is the same kind of document: the same libraries verify it.
    let attestation = d.dir.join("attestation.jws");
    let month = chrono::Utc::now().format("%Y-%m").to_string();
    let (code, out, err) = common::lethe(&[
        "--config",
        cfg,
        "attest",
        "--tenant",
        "kopi-senja",
        "--period",
        &month,
        "--out",
        attestation.to_str().unwrap(),
    ]);
    assert!(code == 0 || code == 1, "{out}\n{err}");
    certs.insert(attestation.clone(), std::fs::read(&attestation).unwrap());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/verify_certificate.py");
    let verify = |path: &std::path::Path| {
        std::process::Command::new(&python)
            .args([script, path.to_str().unwrap(), jwks_file.to_str().unwrap()])
            .output()
            .unwrap()
    };
    // The second JOSE library: panva's jose on Node.js.
    let jose = std::env::var("LETHE_TEST_JOSE").ok();
    assert!(
        jose.is_some() || std::env::var("LETHE_REQUIRE_SERVICES").as_deref() != Ok("1"),
        "LETHE_REQUIRE_SERVICES=1 but LETHE_TEST_JOSE is not set"
    );
    if jose.is_none() {
        common::skipped(
            "jose (Node.js) certificate interop",
            "set LETHE_TEST_JOSE to the directory of the jose npm package (scripts/test does)",
        );
    }
    let node_script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/verify_certificate.js");
    let verify_node = |path: &std::path::Path| {
        std::process::Command::new("node")
            .args([
                node_script,
                path.to_str().unwrap(),
                jwks_file.to_str().unwrap(),
            ])
            .env("LETHE_TEST_JOSE", jose.as_deref().unwrap_or("jose"))
            .output()
            .unwrap()
    };
    for (path, bytes) in &certs {
        if jose.is_some() {
            let out = verify_node(path);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "jose: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let payload: serde_json::Value = serde_json::from_str(&stdout).unwrap();
            assert_eq!(payload["aud"], "kopi-senja");
        }
        let out = verify(path);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let payload: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(payload["aud"], "kopi-senja");
        if *path == attestation {
            assert_eq!(payload["format"], "lethe-attestation/1");
        } else {
            assert!(
                payload["subject"]["hash"]
                    .as_str()
                    .unwrap()
                    .starts_with("hmac:")
            );
        }
        // One changed character of the payload: jwcrypto refuses it too.
        let s = String::from_utf8(bytes.clone()).unwrap();
        let dot = s.find('.').unwrap();
        let mut b = bytes.clone();
        let i = dot + 5;
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        let bad = d.dir.join("changed.jws");
        std::fs::write(&bad, b).unwrap();
        let out = verify(&bad);
        assert!(!out.status.success(), "a changed certificate verified");
        assert!(String::from_utf8_lossy(&out.stdout).contains("NOT VERIFIED"));
        if jose.is_some() {
            let out = verify_node(&bad);
            assert!(!out.status.success(), "jose verified a changed certificate");
            assert!(String::from_utf8_lossy(&out.stdout).contains("NOT VERIFIED"));
        }
    }
}
