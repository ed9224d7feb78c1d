//! A real S3-compatible HTTP server for tests: moto's server mode (`moto[server]==5.1.22`),
//! started on a free loopback port and stopped when dropped.
//!
//! Found through `LETHE_TEST_MOTO` (path to `moto_server`) or `moto_server` on PATH. Without
//! it the tests that need it say loudly that they were skipped, unless
//! `LETHE_REQUIRE_SERVICES=1` (set by `.ci/run`), which turns the skip into a failure.

use super::server::{Server, Spec};

pub struct Moto {
    _server: Server,
    pub port: u16,
}

impl Moto {
    /// Start a server, or `None` (after a loud message) when moto is not installed.
    pub fn start(test: &str) -> Option<Moto> {
        let spec = Spec {
            env: "LETHE_TEST_MOTO",
            default_bin: "moto_server",
            what: "S3 test server",
            install: "pip install 'moto[server]==5.1.22'",
        };
        let server = Server::start(test, &spec, |port| {
            vec![
                "-H".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
            ]
        })?;
        let moto = Moto {
            port: server.port,
            _server: server,
        };
        // moto 5.2.x answers GetBucketVersioning with XML the AWS SDK cannot parse: a moto
        // found on PATH may be that one. Probe it; an unusable server is a loud skip too.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let usable = rt.block_on(async {
            let c = moto.sdk();
            c.create_bucket().bucket("lethe-probe").send().await.is_ok()
                && c.get_bucket_versioning()
                    .bucket("lethe-probe")
                    .send()
                    .await
                    .is_ok()
        });
        if !usable {
            let why = "the moto server found is not 5.1.22 (its GetBucketVersioning answer does not parse)";
            if std::env::var("LETHE_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
                panic!("{test}: LETHE_REQUIRE_SERVICES=1 but {why}");
            }
            super::skipped(
                test,
                &format!("{why}; pip install 'moto[server]==5.1.22' and set LETHE_TEST_MOTO"),
            );
            return None;
        }
        Some(moto)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Create a bucket (moto accepts unsigned requests). Retried: the server may accept
    /// connections a moment before it answers them.
    pub fn create_bucket(&self, bucket: &str) {
        self.create_bucket_headers(bucket, "");
    }

    fn create_bucket_headers(&self, bucket: &str, headers: &str) {
        let request = format!(
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        super::server::request_until(
            self.port,
            &request,
            "200",
            &format!("create bucket {bucket}"),
        );
    }

    /// Create a bucket with S3 versioning enabled, or with Object Lock (which implies versioning).
    pub fn create_bucket_with(&self, bucket: &str, versioning: bool, object_lock: bool) {
        let port = self.port;
        self.create_bucket_headers(
            bucket,
            if object_lock {
                "x-amz-bucket-object-lock-enabled: true\r\n"
            } else {
                ""
            },
        );
        if versioning && !object_lock {
            let body =
                "<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>";
            let request = format!(
                "PUT /{bucket}?versioning HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            super::server::request_until(port, &request, "200", &format!("versioning {bucket}"));
        }
    }

    /// An aws-sdk-s3 client for this server.
    pub fn sdk(&self) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(self.endpoint())
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .http_client(lethe::s3::S3Admin::http_client())
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// An object_store client of the bucket, for tests that inspect raw objects.
    pub fn client(&self, bucket: &str) -> object_store::aws::AmazonS3 {
        let _ = rustls::crypto::ring::default_provider().install_default();
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(self.endpoint())
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .build()
            .unwrap()
    }

    /// Environment for a `lethe` process talking to this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }
}
