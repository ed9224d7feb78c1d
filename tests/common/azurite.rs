//! A real Azure Blob server for tests: Azurite (`npm install azurite@3.35.0`), its blob service
//! started in memory on a free loopback port, telemetry off, and stopped when dropped.
//!
//! Found through `LETHE_TEST_AZURITE` (path to `azurite-blob`) or `azurite-blob` on PATH.
//! Without it the tests that need it say loudly that they were skipped, unless
//! `LETHE_REQUIRE_SERVICES=1` (set by `.ci/run`), which turns the skip into a failure.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Azurite's well-known development account and key (public, in Microsoft's docs).
pub const ACCOUNT: &str = "devstoreaccount1";
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub struct Azurite {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn required() -> bool {
    std::env::var("LETHE_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

impl Azurite {
    /// Start a server, or `None` (after a loud message) when Azurite is not installed.
    pub fn start(test: &str) -> Option<Azurite> {
        let bin = std::env::var("LETHE_TEST_AZURITE").unwrap_or_else(|_| "azurite-blob".into());
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = match Command::new(&bin)
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--inMemoryPersistence",
                "--disableTelemetry",
                "--silent",
            ])
            // Its working directory is where it would write anything else.
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                if required() {
                    panic!(
                        "{test}: LETHE_REQUIRE_SERVICES=1 but azurite-blob ({bin}) cannot start: {e}"
                    );
                }
                eprintln!(
                    "\n*** SKIPPED {test}: no Azure Blob test server ({bin}: {e}); npm install azurite@3.35.0 and set LETHE_TEST_AZURITE to node_modules/.bin/azurite-blob ***\n"
                );
                return None;
            }
        };
        let mut az = Azurite {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = az.child.try_wait() {
                panic!("azurite-blob exited before listening: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "azurite-blob did not listen on port {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(az)
    }

    /// The blob service URL, as `AZURITE_BLOB_STORAGE_URL` wants it (no account).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The account URL, as `[store] endpoint` wants it.
    pub fn account_url(&self) -> String {
        format!("{}/{ACCOUNT}", self.url())
    }

    /// Create a container: `PUT ?restype=container`, signed with the account key (Azurite
    /// refuses anonymous requests, and object_store has no call for it).
    pub fn create_container(&self, container: &str) {
        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let version = "2023-11-03";
        let path = format!("/{ACCOUNT}/{container}");
        // SharedKey: verb, 11 standard headers (empty; Content-Length empty for 0), the x-ms-
        // headers sorted, then /account + path and the query parameters.
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{ACCOUNT}{path}\nrestype:container"
        );
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &b64.decode(KEY).unwrap());
        let sig = b64.encode(ring::hmac::sign(&key, to_sign.as_bytes()).as_ref());
        let mut last = String::new();
        for _ in 0..50 {
            let attempt = || -> std::io::Result<String> {
                let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
                write!(
                    s,
                    "PUT {path}?restype=container HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nx-ms-date: {date}\r\nx-ms-version: {version}\r\nAuthorization: SharedKey {ACCOUNT}:{sig}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    self.port
                )?;
                let mut resp = String::new();
                s.read_to_string(&mut resp)?;
                Ok(resp)
            };
            match attempt() {
                Ok(r) if r.starts_with("HTTP/1.1 201") => return,
                Ok(r) => last = r,
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("create container {container}: {last}");
    }

    /// Environment for a `lethe` process using the emulator the standard way.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
            ("AZURITE_BLOB_STORAGE_URL", self.url()),
        ]
    }

    /// An object_store client of the container, for tests that inspect raw objects.
    pub fn client(&self, container: &str) -> object_store::azure::MicrosoftAzure {
        let _ = rustls::crypto::ring::default_provider().install_default();
        object_store::azure::MicrosoftAzureBuilder::new()
            .with_container_name(container)
            .with_account(ACCOUNT)
            .with_access_key(KEY)
            .with_endpoint(self.account_url())
            .with_allow_http(true)
            .build()
            .unwrap()
    }
}
