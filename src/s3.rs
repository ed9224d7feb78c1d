//! What object_store cannot do on S3, through aws-sdk-s3: see whether a bucket keeps object
//! versions, delete *every* version and delete marker under a prefix (on a versioned bucket
//! a plain DELETE only hides data behind a marker), write objects under Object Lock, and
//! report objects that a lock keeps from being deleted — with their retain-until date —
//! instead of failing silently or pretending they are gone.
//!
//! This is the primitive backup purge and erasure build on; it is the only code that deletes
//! object versions.

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::{ByteStream, DateTime as AwsDateTime};
use aws_sdk_s3::types::{BucketVersioningStatus, Delete, ObjectIdentifier, ObjectLockMode};
use bytes::Bytes;

use crate::config::StoreSpec;
use crate::store::StoreError;

/// Whether a bucket keeps old versions of overwritten and deleted objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versioning {
    /// Never enabled: a DELETE removes the object.
    Off,
    Enabled,
    /// Was enabled once: old versions may still exist.
    Suspended,
}

/// An object version a lock keeps from deletion.
#[derive(Debug, Clone, PartialEq)]
pub struct Locked {
    pub key: String,
    pub version_id: Option<String>,
    pub mode: Option<String>,
    /// RFC 3339.
    pub retain_until: Option<String>,
    pub legal_hold: bool,
}

/// What a purge did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PurgeOutcome {
    pub versions_deleted: u64,
    pub delete_markers_deleted: u64,
    /// Versions that stay because of Object Lock: exceptions, with their retain-until dates.
    pub locked: Vec<Locked>,
    /// Versions and markers left under the prefix after the purge, by a fresh listing
    /// (equals `locked.len()` when the purge is complete).
    pub remaining: u64,
}

/// Object Lock settings for writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Lock {
    /// `COMPLIANCE` or `GOVERNANCE`.
    pub mode: String,
    pub retain_until: chrono::DateTime<chrono::Utc>,
}

/// An S3 bucket (and the store's prefix) for the operations above.
pub struct S3Admin {
    client: Client,
    pub bucket: String,
    /// The store's key prefix (`s3://bucket/<prefix>`), without trailing slash.
    pub prefix: String,
}

fn err(op: &'static str, key: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::S3 {
        op,
        key: key.to_string(),
        message: e.to_string(),
    }
}

fn sdk_err<E: std::error::Error + 'static>(e: aws_sdk_s3::error::SdkError<E>) -> String {
    // The service's own message (the SDK's Display alone says "service error").
    let mut s = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

impl S3Admin {
    /// Connect with the store's settings; credentials from the standard `AWS_*` environment.
    pub async fn connect(spec: &StoreSpec) -> Result<S3Admin, StoreError> {
        let rest = spec
            .url
            .strip_prefix("s3://")
            .ok_or_else(|| StoreError::Open {
                url: spec.url.clone(),
                message: "not an s3:// store: object versions and Object Lock exist only on S3"
                    .into(),
                fix: "use s3://bucket/prefix".into(),
            })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(Self::http_client());
        if let Some(r) = &spec.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        let shared = loader.load().await;
        // As many attempts as object_store makes (its default: 10 retries): a burst of 5xx
        // must not fail a purge that the object reads around it survive.
        let mut b = aws_sdk_s3::config::Builder::from(&shared)
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(10));
        if let Some(e) = &spec.endpoint {
            b = b.endpoint_url(e);
        }
        if spec.path_style == Some(true) {
            b = b.force_path_style(true);
        }
        Ok(S3Admin {
            client: Client::from_conf(b.build()),
            bucket: bucket.into(),
            prefix: prefix.trim_end_matches('/').into(),
        })
    }

    /// Use a client configured elsewhere (credentials, endpoint, retries are the caller's).
    pub fn from_client(client: Client, bucket: &str, prefix: &str) -> S3Admin {
        S3Admin {
            client,
            bucket: bucket.into(),
            prefix: prefix.trim_end_matches('/').into(),
        }
    }

    /// An HTTPS client for the SDK: rustls with ring, like the rest of lethe.
    pub fn http_client() -> aws_sdk_s3::config::SharedHttpClient {
        aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https()
    }

    fn full(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{}", self.prefix, key)
        }
    }

    /// Incomplete multipart uploads under `prefix` (relative to the store prefix): key
    /// (relative), upload id, initiation time.
    pub async fn multipart_uploads(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, String, Option<chrono::DateTime<chrono::Utc>>)>, StoreError> {
        let full = self.full(prefix);
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let r = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(&full)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|e| err("ListMultipartUploads", &full, sdk_err(e)))?;
            for u in r.uploads() {
                let (Some(k), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                let rel = if self.prefix.is_empty() {
                    k.to_string()
                } else {
                    k.strip_prefix(&format!("{}/", self.prefix))
                        .unwrap_or(k)
                        .to_string()
                };
                let at = u
                    .initiated()
                    .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos()));
                out.push((rel, id.to_string(), at));
            }
            if r.is_truncated() == Some(true) {
                key_marker = r.next_key_marker().map(String::from);
                id_marker = r.next_upload_id_marker().map(String::from);
                if key_marker.is_none() {
                    break;
                }
            } else {
                break;
            }
        }
        Ok(out)
    }

    /// Abort one multipart upload (its parts are deleted by the store).
    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        let full = self.full(key);
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| err("AbortMultipartUpload", &full, sdk_err(e)))?;
        Ok(())
    }

    pub async fn versioning(&self) -> Result<Versioning, StoreError> {
        let r = self
            .client
            .get_bucket_versioning()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| err("GetBucketVersioning", &self.bucket, sdk_err(e)))?;
        Ok(match r.status() {
            Some(BucketVersioningStatus::Enabled) => Versioning::Enabled,
            Some(BucketVersioningStatus::Suspended) => Versioning::Suspended,
            _ => Versioning::Off,
        })
    }

    /// Whether the bucket has Object Lock enabled.
    pub async fn object_lock_enabled(&self) -> Result<bool, StoreError> {
        match self
            .client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(r) => Ok(r
                .object_lock_configuration()
                .and_then(|c| c.object_lock_enabled())
                .is_some()),
            Err(e) => {
                let code = e
                    .as_service_error()
                    .and_then(|s| aws_sdk_s3::error::ProvideErrorMetadata::code(s))
                    .unwrap_or_default()
                    .to_string();
                if code == "ObjectLockConfigurationNotFoundError" {
                    Ok(false)
                } else {
                    Err(err("GetObjectLockConfiguration", &self.bucket, sdk_err(e)))
                }
            }
        }
    }

    /// Write `body` at `key` (under the store prefix), locked until `lock.retain_until`.
    pub async fn put_locked(&self, key: &str, body: Bytes, lock: &Lock) -> Result<(), StoreError> {
        let full = self.full(key);
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .body(ByteStream::from(body))
            .object_lock_mode(ObjectLockMode::from(lock.mode.as_str()))
            .object_lock_retain_until_date(AwsDateTime::from_secs(lock.retain_until.timestamp()))
            .send()
            .await
            .map_err(|e| err("PutObject", &full, sdk_err(e)))?;
        Ok(())
    }

    /// Every version and delete marker under `prefix` (relative to the store prefix).
    async fn list_versions(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, Option<String>, bool)>, StoreError> {
        let full = self.full(prefix);
        let mut out = Vec::new();
        let (mut key_marker, mut version_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let r = self
                .client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(&full)
                .set_key_marker(key_marker.clone())
                .set_version_id_marker(version_marker.clone())
                .send()
                .await
                .map_err(|e| err("ListObjectVersions", &full, sdk_err(e)))?;
            for v in r.versions() {
                out.push((
                    v.key().unwrap_or_default().to_string(),
                    v.version_id().map(String::from),
                    false,
                ));
            }
            for m in r.delete_markers() {
                out.push((
                    m.key().unwrap_or_default().to_string(),
                    m.version_id().map(String::from),
                    true,
                ));
            }
            if r.is_truncated() == Some(true) {
                key_marker = r.next_key_marker().map(String::from);
                version_marker = r.next_version_id_marker().map(String::from);
            } else {
                return Ok(out);
            }
        }
    }

    /// Delete every version and every delete marker under `prefix` (relative to the store
    /// prefix). Versions under Object Lock stay and are reported with their retain-until date.
    ///
    /// `prefix` must be a non-empty "directory" ending in `/`: `snapshots/tenant=a` would also
    /// match `snapshots/tenant=ab…`, and an empty prefix is the whole store.
    pub async fn purge_prefix(&self, prefix: &str) -> Result<PurgeOutcome, StoreError> {
        if prefix.is_empty() || prefix == "/" {
            return Err(StoreError::UnsafePurge {
                prefix: prefix.into(),
                why: "an empty prefix is the whole store",
            });
        }
        if !prefix.ends_with('/') {
            return Err(StoreError::UnsafePurge {
                prefix: prefix.into(),
                why: "a prefix must end with `/`, or it also matches its longer siblings (tenant=a… would take tenant=ab…)",
            });
        }
        self.purge_matching(prefix, |_| true).await
    }

    /// Delete every version and every delete marker of exactly `key` (relative to the store
    /// prefix): on a versioned bucket a plain DELETE only hides an object. Locked versions stay
    /// and are reported, as in [`S3Admin::purge_prefix`].
    pub async fn purge_key(&self, key: &str) -> Result<PurgeOutcome, StoreError> {
        if key.is_empty() || key.ends_with('/') {
            return Err(StoreError::UnsafePurge {
                prefix: key.into(),
                why: "purge_key takes one object key",
            });
        }
        let full = self.full(key);
        self.purge_matching(key, move |k| k == full).await
    }

    /// Delete every version of exactly `key` but the current one, and its delete markers: what
    /// an overwrite left behind on a versioned bucket (an earlier generation of a request still
    /// holding a sealed identifier). The current version stays.
    pub async fn purge_noncurrent(&self, key: &str) -> Result<PurgeOutcome, StoreError> {
        if key.is_empty() || key.ends_with('/') {
            return Err(StoreError::UnsafePurge {
                prefix: key.into(),
                why: "purge_noncurrent takes one object key",
            });
        }
        let full = self.full(key);
        let current = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| err("HeadObject", &full, sdk_err(e)))?
            .version_id()
            .map(String::from);
        let Some(current) = current else {
            // Not versioned: an overwrite leaves nothing behind.
            return Ok(PurgeOutcome::default());
        };
        self.purge_versions_where(key, move |k, v| k == full && v != Some(current.as_str()))
            .await
    }

    async fn purge_matching(
        &self,
        prefix: &str,
        keep: impl Fn(&str) -> bool,
    ) -> Result<PurgeOutcome, StoreError> {
        self.purge_versions_where(prefix, move |k, _| keep(k)).await
    }

    /// Delete the versions and delete markers under `prefix` that `keep(key, version)` selects.
    async fn purge_versions_where(
        &self,
        prefix: &str,
        keep: impl Fn(&str, Option<&str>) -> bool,
    ) -> Result<PurgeOutcome, StoreError> {
        let mut outcome = PurgeOutcome::default();
        let listed: Vec<_> = self
            .list_versions(prefix)
            .await?
            .into_iter()
            .filter(|(k, v, _)| keep(k, v.as_deref()))
            .collect();
        for chunk in listed.chunks(1000) {
            let ids: Vec<ObjectIdentifier> = chunk
                .iter()
                .map(|(k, v, _)| {
                    ObjectIdentifier::builder()
                        .key(k)
                        .set_version_id(v.clone())
                        .build()
                        .expect("key is set")
                })
                .collect();
            let r = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(
                    Delete::builder()
                        .set_objects(Some(ids))
                        .quiet(false)
                        .build()
                        .expect("objects are set"),
                )
                .send()
                .await
                .map_err(|e| err("DeleteObjects", &self.full(prefix), sdk_err(e)))?;
            for d in r.deleted() {
                let marker = chunk.iter().any(|(k, v, m)| {
                    *m && Some(k.as_str()) == d.key() && v.as_deref() == d.version_id()
                });
                if marker {
                    outcome.delete_markers_deleted += 1
                } else {
                    outcome.versions_deleted += 1
                }
            }
            for e in r.errors() {
                let key = e.key().unwrap_or_default().to_string();
                let version_id = e.version_id().map(String::from);
                // Object Lock refuses with AccessDenied: read the lock state (HeadObject;
                // GetObjectRetention is not served by every S3-compatible server).
                let head = self
                    .client
                    .head_object()
                    .bucket(&self.bucket)
                    .key(&key)
                    .set_version_id(version_id.clone())
                    .send()
                    .await;
                match head {
                    Ok(h)
                        if h.object_lock_mode().is_some()
                            || h.object_lock_legal_hold_status().is_some() =>
                    {
                        outcome.locked.push(Locked {
                            key,
                            version_id,
                            mode: h.object_lock_mode().map(|m| m.as_str().to_string()),
                            retain_until: h.object_lock_retain_until_date().and_then(|d| {
                                d.fmt(aws_sdk_s3::primitives::DateTimeFormat::DateTime).ok()
                            }),
                            legal_hold: h
                                .object_lock_legal_hold_status()
                                .is_some_and(|s| s.as_str() == "ON"),
                        })
                    }
                    _ => {
                        return Err(err(
                            "DeleteObjects",
                            &key,
                            format!(
                                "{}: {}",
                                e.code().unwrap_or("error"),
                                e.message().unwrap_or("")
                            ),
                        ));
                    }
                }
            }
        }
        outcome.remaining = self
            .list_versions(prefix)
            .await?
            .iter()
            .filter(|(k, v, _)| keep(k, v.as_deref()))
            .count() as u64;
        Ok(outcome)
    }
}
