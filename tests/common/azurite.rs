//! A real Azure Blob server for tests: Azurite (`npm install azurite@3.35.0`), its blob service
//! started in memory on a free loopback port, telemetry off, and stopped when dropped.
//!
//! Found through `LETHE_TEST_AZURITE` (path to `azurite-blob`) or `azurite-blob` on PATH.
//! Without it the tests that need it say loudly that they were skipped, unless
//! `LETHE_REQUIRE_SERVICES=1` (set by `.ci/run`), which turns the skip into a failure.

use super::server::{Server, Spec};

/// Azurite's well-known development account and key (public, in Microsoft's docs).
pub const ACCOUNT: &str = "devstoreaccount1";
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub struct Azurite {
    _server: Server,
    pub port: u16,
}

impl Azurite {
    /// Start a server, or `None` (after a loud message) when Azurite is not installed.
    pub fn start(test: &str) -> Option<Azurite> {
        let spec = Spec {
            env: "LETHE_TEST_AZURITE",
            default_bin: "azurite-blob",
            what: "Azure Blob test server",
            install: "npm install azurite@3.35.0 (node_modules/.bin/azurite-blob)",
        };
        // In memory, telemetry off; its working directory (a temp dir) takes anything else.
        let server = Server::start(test, &spec, |port| {
            [
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--inMemoryPersistence",
                "--disableTelemetry",
                "--silent",
            ]
            .iter()
            .map(|a| a.to_string())
            .collect()
        })?;
        Some(Azurite {
            port: server.port,
            _server: server,
        })
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
        let request = format!(
            "PUT {path}?restype=container HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nx-ms-date: {date}\r\nx-ms-version: {version}\r\nAuthorization: SharedKey {ACCOUNT}:{sig}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        super::server::request_until(
            self.port,
            &request,
            "201",
            &format!("create container {container}"),
        );
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
