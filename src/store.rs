//! Object stores by URL. Everything lethe keeps — snapshots, manifests, later analytics,
//! certificates and audit records — goes through [`Store`], so the local directory of the demo
//! and S3/R2 in production take the same code path (`file://`, `s3://bucket/prefix`).

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use thiserror::Error;

use crate::config::StoreSpec;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot open object store {url}: {message}\n  fix: {fix}")]
    Open {
        url: String,
        message: String,
        fix: String,
    },
    #[error("object store {url}: {op} {key}: {source}")]
    Op {
        url: String,
        op: &'static str,
        key: String,
        source: object_store::Error,
    },
    /// An aws-sdk-s3 operation failed (the service's message included).
    #[error("S3 {op} {key}: {message}")]
    S3 {
        op: &'static str,
        key: String,
        message: String,
    },
    /// A purge asked for something that could delete more than meant.
    #[error("refusing to purge {prefix:?}: {why}")]
    UnsafePurge { prefix: String, why: &'static str },
}

impl StoreError {
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            StoreError::Open { .. } | StoreError::UnsafePurge { .. }
        )
    }
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            StoreError::Op {
                source: object_store::Error::NotFound { .. },
                ..
            }
        )
    }
}

/// An object store and the URL it was opened from.
#[derive(Clone)]
pub struct Store {
    pub url: String,
    pub inner: Arc<dyn ObjectStore>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.url)
    }
}

impl Store {
    /// Open a store; a local directory is created if missing. S3 credentials come from the
    /// standard `AWS_*` environment; transient failures (5xx, timeouts, throttling) are retried
    /// with exponential backoff by the client (up to 10 times within 3 minutes).
    pub fn open(spec: &StoreSpec) -> Result<Store, StoreError> {
        let url = spec.url.as_str();
        let open_err = |message: String, fix: &str| StoreError::Open {
            url: url.into(),
            message,
            fix: fix.into(),
        };
        if let Some(path) = url.strip_prefix("file://") {
            std::fs::create_dir_all(path).map_err(|e| {
                open_err(
                    e.to_string(),
                    "check that the directory can be created and written",
                )
            })?;
            let fs = LocalFileSystem::new_with_prefix(path)
                .map_err(|e| open_err(e.to_string(), "use file:///absolute/path"))?
                .with_automatic_cleanup(true);
            return Ok(Store {
                url: url.into(),
                inner: Arc::new(fs),
            });
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            // One TLS provider for the process (ring; parquet's encryption already uses it).
            let _ = rustls::crypto::ring::default_provider().install_default();
            let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
            if let Some(e) = &spec.endpoint {
                b = b.with_endpoint(e);
            }
            if let Some(r) = &spec.region {
                b = b.with_region(r);
            }
            if let Some(h) = spec.allow_http {
                b = b.with_allow_http(h);
            }
            if let Some(p) = spec.path_style {
                b = b.with_virtual_hosted_style_request(!p);
            }
            let s3 = b.build().map_err(|e| {
                open_err(e.to_string(), "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and store.endpoint, store.region for R2 or other S3-compatible stores)")
            })?;
            let inner: Arc<dyn ObjectStore> = if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(PrefixStore::new(s3, prefix))
            };
            return Ok(Store {
                url: url.into(),
                inner,
            });
        }
        Err(open_err(
            "unsupported scheme".into(),
            "use s3://bucket/prefix or file:///absolute/dir",
        ))
    }

    fn op_err(
        &self,
        op: &'static str,
        key: &ObjPath,
    ) -> impl FnOnce(object_store::Error) -> StoreError {
        let (url, key) = (self.url.clone(), key.to_string());
        move |source| StoreError::Op {
            url,
            op,
            key,
            source,
        }
    }

    pub async fn put(&self, key: &ObjPath, bytes: Bytes) -> Result<(), StoreError> {
        self.inner
            .put(key, PutPayload::from_bytes(bytes))
            .await
            .map_err(self.op_err("put", key))?;
        Ok(())
    }

    pub async fn get(&self, key: &ObjPath) -> Result<Bytes, StoreError> {
        let r = self.inner.get(key).await.map_err(self.op_err("get", key))?;
        r.bytes().await.map_err(self.op_err("get", key))
    }

    /// Like [`Store::get`], but a missing object is `None`.
    pub async fn get_opt(&self, key: &ObjPath) -> Result<Option<Bytes>, StoreError> {
        match self.get(key).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every object under `prefix`, recursively.
    pub async fn list(&self, prefix: &ObjPath) -> Result<Vec<ObjectMeta>, StoreError> {
        self.inner
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(self.op_err("list", prefix))
    }

    /// The immediate "directories" under `prefix`.
    pub async fn list_dirs(&self, prefix: &ObjPath) -> Result<Vec<ObjPath>, StoreError> {
        let r = self
            .inner
            .list_with_delimiter(Some(prefix))
            .await
            .map_err(self.op_err("list", prefix))?;
        Ok(r.common_prefixes)
    }
}
