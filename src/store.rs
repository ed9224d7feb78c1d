//! Object stores by URL. Everything lethe keeps — snapshots, manifests, later analytics,
//! certificates and audit records — goes through [`Store`], so the local directory of the demo
//! and S3/R2, GCS or Azure Blob in production take the same code path (`file://`,
//! `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`).
//!
//! Credentials are never in lethe.toml: they come from each cloud's standard environment
//! (`AWS_*`, `GOOGLE_*`, `AZURE_*`). A GCS or Azure store with no credential in the
//! environment is refused at open, naming the variables to set, instead of letting the client
//! fall back to a cloud metadata server that is not there (and retry it for minutes).
//!
//! Danger: on GCS and Azure lethe deletes the current object only. A bucket with object
//! versioning or soft delete keeps what a purge removed; on those clouds keep them off for the
//! snapshot store (or expire noncurrent versions by a lifecycle rule within the promise).

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::ClientConfigKey;
use object_store::StaticCredentialProvider;
use object_store::aws::AmazonS3Builder;
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::buffered::BufWriter;
use object_store::gcp::{
    GcpCredential, GcpSigningCredential, GoogleCloudStorageBuilder, GoogleConfigKey,
};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
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

const GCS_FIX: &str = "set GOOGLE_APPLICATION_CREDENTIALS (or GOOGLE_SERVICE_ACCOUNT) to a service-account JSON file, or GOOGLE_SERVICE_ACCOUNT_KEY to its contents; for an emulator set STORAGE_EMULATOR_HOST=http://host:port";
const AZURE_FIX: &str = "set AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or AZURE_STORAGE_SAS_KEY, or AZURE_CLIENT_ID + AZURE_CLIENT_SECRET + AZURE_TENANT_ID; AZURE_CREDENTIAL_TYPE=managed_identity on an Azure VM); for Azurite set AZURE_STORAGE_USE_EMULATOR=true";
/// How much of a local file one read of [`Store::get_stream`] takes.
const LOCAL_CHUNK: u64 = 4 << 20;

/// The environment a store is opened from (a snapshot, so tests can pass their own).
pub(crate) struct Env(Vec<(String, String)>);

impl Env {
    fn process() -> Env {
        Env(std::env::vars().collect())
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    fn truthy(&self, key: &str) -> bool {
        self.get(key)
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
    }
}

/// GCS from `GOOGLE_*` (as object_store reads them), `STORAGE_EMULATOR_HOST` (the variable
/// Google's own clients use for an emulator: plain HTTP, no signature) and `[store]
/// endpoint` / `allow_http`. Err((message, fix)) when nothing could authenticate.
fn gcs_builder(
    spec: &StoreSpec,
    env: &Env,
    bucket: &str,
) -> Result<GoogleCloudStorageBuilder, (String, &'static str)> {
    if bucket.is_empty() {
        return Err(("no bucket after gs://".into(), "write gs://bucket/prefix"));
    }
    let mut b = GoogleCloudStorageBuilder::new().with_bucket_name(bucket);
    for (k, v) in &env.0 {
        if k.starts_with("GOOGLE_")
            && !v.is_empty()
            && let Ok(key) = k.to_ascii_lowercase().parse()
        {
            b = b.with_config(key, v);
        }
    }
    if let Some(p) = env.get("SERVICE_ACCOUNT") {
        b = b.with_service_account_path(p);
    }
    let emulator = env.get("STORAGE_EMULATOR_HOST");
    if let Some(host) = emulator {
        let host = if host.contains("://") {
            host.to_string()
        } else {
            format!("http://{host}")
        };
        // No signature, and an empty token: object_store's uploads fetch a token even when
        // told to skip signing, which without this would ask a metadata server.
        b = b
            .with_base_url(host.trim_end_matches('/'))
            .with_skip_signature(true)
            .with_credentials(Arc::new(StaticCredentialProvider::new(GcpCredential {
                bearer: String::new(),
            })))
            .with_signing_credentials(Arc::new(StaticCredentialProvider::new(
                GcpSigningCredential {
                    email: String::new(),
                    private_key: None,
                },
            )))
            .with_config(GoogleConfigKey::Client(ClientConfigKey::AllowHttp), "true");
    }
    if let Some(e) = &spec.endpoint {
        b = b.with_base_url(e.trim_end_matches('/'));
    }
    if let Some(h) = spec.allow_http {
        b = b.with_config(
            GoogleConfigKey::Client(ClientConfigKey::AllowHttp),
            h.to_string(),
        );
    }
    let credential_vars = [
        "GOOGLE_SERVICE_ACCOUNT",
        "GOOGLE_SERVICE_ACCOUNT_PATH",
        "GOOGLE_SERVICE_ACCOUNT_KEY",
        "SERVICE_ACCOUNT",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "GOOGLE_BEARER_TOKEN",
    ];
    let has_credentials = emulator.is_some()
        || env.truthy("GOOGLE_SKIP_SIGNATURE")
        || credential_vars.iter().any(|k| env.get(k).is_some())
        // gcloud's application-default login, which object_store reads too.
        || env
            .get("HOME")
            .is_some_and(|h| {
                std::path::Path::new(h)
                    .join(".config/gcloud/application_default_credentials.json")
                    .exists()
            })
        // On Google Cloud the metadata server gives the instance's service account.
        || env.get("GCE_METADATA_HOST").is_some()
        || on_cloud("Google");
    if !has_credentials {
        return Err((
            "no Google Cloud credentials in the environment".into(),
            GCS_FIX,
        ));
    }
    Ok(b)
}

/// Azure Blob from `AZURE_*` (as object_store reads them) and `[store] endpoint` /
/// `allow_http`. Err((message, fix)) when nothing could authenticate.
fn azure_builder(
    spec: &StoreSpec,
    env: &Env,
    container: &str,
) -> Result<MicrosoftAzureBuilder, (String, &'static str)> {
    if container.is_empty() {
        return Err((
            "no container after az://".into(),
            "write az://container/prefix",
        ));
    }
    let mut b = MicrosoftAzureBuilder::new().with_container_name(container);
    let mut credential = false;
    for (k, v) in &env.0 {
        if !k.starts_with("AZURE_") || v.is_empty() {
            continue;
        }
        let Ok(key) = k.to_ascii_lowercase().parse::<AzureConfigKey>() else {
            continue;
        };
        credential |= match key {
            AzureConfigKey::AccessKey
            | AzureConfigKey::SasKey
            | AzureConfigKey::Token
            | AzureConfigKey::ClientSecret
            | AzureConfigKey::FederatedTokenFile
            | AzureConfigKey::MsiEndpoint
            | AzureConfigKey::ObjectId
            | AzureConfigKey::MsiResourceId
            | AzureConfigKey::CredentialType
            | AzureConfigKey::FabricTokenServiceUrl => true,
            AzureConfigKey::UseEmulator
            | AzureConfigKey::UseAzureCli
            | AzureConfigKey::SkipSignature => env.truthy(k),
            _ => false,
        };
        b = b.with_config(key, v);
    }
    if let Some(e) = &spec.endpoint {
        b = b.with_endpoint(e.trim_end_matches('/').to_string());
    }
    if let Some(h) = spec.allow_http {
        b = b.with_allow_http(h);
    }
    if !credential {
        return Err(("no Azure credentials in the environment".into(), AZURE_FIX));
    }
    Ok(b)
}

/// Whether this machine says it runs on `vendor`'s cloud (the DMI product name, as Google's
/// own libraries check), so a metadata server is there to ask.
fn on_cloud(vendor: &str) -> bool {
    std::fs::read_to_string("/sys/class/dmi/id/product_name")
        .is_ok_and(|n| n.trim_start().starts_with(vendor))
}

/// An object store and the URL it was opened from.
#[derive(Clone)]
pub struct Store {
    pub url: String,
    /// Private: reading and writing go through the methods below; deleting goes through the
    /// deleters (`blobs::BlobDeleter`, `snapshot::purge`, audit expiry, lease release), the
    /// only callers of [`Store::delete_object`] (`tests/architecture.rs` keeps it so).
    inner: Arc<dyn ObjectStore>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.url)
    }
}

impl Store {
    /// Open an existing store. A local directory that does not exist is an error, never
    /// created: reading, listing and checking leave no trace (a typo in a path, or a literal
    /// `~`, must not become a new empty store that "holds nothing"). Credentials come from the
    /// standard environment of each cloud (see the README); transient failures (5xx,
    /// timeouts, throttling) are retried with exponential backoff by the client (up to 10
    /// times within 3 minutes).
    pub fn open(spec: &StoreSpec) -> Result<Store, StoreError> {
        Self::open_with_env(spec, &Env::process(), false)
    }

    /// Open a store lethe is about to write to (a snapshot, an audit record); a local
    /// directory is created if missing.
    pub fn create(spec: &StoreSpec) -> Result<Store, StoreError> {
        Self::open_with_env(spec, &Env::process(), true)
    }

    /// Does the store exist? (A local directory that is there; a cloud store always "is".)
    pub fn exists(spec: &StoreSpec) -> bool {
        spec.url
            .strip_prefix("file://")
            .is_none_or(|p| std::path::Path::new(p).is_dir())
    }

    fn open_with_env(spec: &StoreSpec, env: &Env, create: bool) -> Result<Store, StoreError> {
        let url = spec.url.as_str();
        let open_err = |message: String, fix: &str| StoreError::Open {
            url: url.into(),
            message,
            fix: fix.into(),
        };
        if let Some(path) = url.strip_prefix("file://") {
            if create {
                std::fs::create_dir_all(path).map_err(|e| {
                    open_err(
                        e.to_string(),
                        "check that the directory can be created and written",
                    )
                })?;
            } else if !std::path::Path::new(path).is_dir() {
                return Err(open_err(
                    "the directory does not exist".into(),
                    "check the URL (lethe.toml or its LETHE_* override); a local store is created by the first `lethe run snapshot`",
                ));
            }
            let fs = LocalFileSystem::new_with_prefix(path)
                .map_err(|e| open_err(e.to_string(), "use file:///absolute/path"))?
                .with_automatic_cleanup(true);
            return Ok(Store {
                url: url.into(),
                inner: Arc::new(fs),
            });
        }
        let cloud = |inner: Arc<dyn ObjectStore>, prefix: &str| {
            let inner: Arc<dyn ObjectStore> = if prefix.is_empty() {
                inner
            } else {
                Arc::new(PrefixStore::new(inner, prefix))
            };
            Store {
                url: url.into(),
                inner,
            }
        };
        // One TLS provider for the process (ring; parquet's encryption already uses it).
        let _ = rustls::crypto::ring::default_provider().install_default();
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
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
            return Ok(cloud(Arc::new(s3), prefix));
        }
        if let Some(rest) = url.strip_prefix("gs://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let gcs = gcs_builder(spec, env, bucket)
                .map_err(|(m, fix)| open_err(m, fix))?
                .build()
                .map_err(|e| open_err(e.to_string(), GCS_FIX))?;
            return Ok(cloud(Arc::new(gcs), prefix));
        }
        if let Some(rest) = url
            .strip_prefix("az://")
            .or_else(|| url.strip_prefix("azure://"))
        {
            let (container, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let az = azure_builder(spec, env, container)
                .map_err(|(m, fix)| open_err(m, fix))?
                .build()
                .map_err(|e| {
                    let m = e.to_string();
                    let fix = if m.contains("Account must be specified") {
                        "set AZURE_STORAGE_ACCOUNT_NAME to the storage account's name"
                    } else {
                        AZURE_FIX
                    };
                    open_err(m, fix)
                })?;
            return Ok(cloud(Arc::new(az), prefix));
        }
        Err(open_err(
            "unsupported scheme".into(),
            "use s3://bucket/prefix, gs://bucket/prefix, az://container/prefix or file:///absolute/dir",
        ))
    }

    /// A store over any object_store implementation (a fault-injecting wrapper in tests).
    #[doc(hidden)]
    pub fn from_object_store(url: impl Into<String>, inner: Arc<dyn ObjectStore>) -> Store {
        Store {
            url: url.into(),
            inner,
        }
    }

    /// Turns an object_store error of `op` on `key` into one that names the store.
    pub(crate) fn op_err(
        &self,
        op: &'static str,
        key: impl AsRef<str>,
    ) -> impl FnOnce(object_store::Error) -> StoreError {
        let (url, key) = (self.url.clone(), key.as_ref().to_string());
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

    /// The object's metadata (HEAD), or `None` if there is no such object.
    pub async fn head(&self, key: &ObjPath) -> Result<Option<ObjectMeta>, StoreError> {
        match self.inner.head(key).await {
            Ok(m) => Ok(Some(m)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.op_err("head", key)(e)),
        }
    }

    /// Write `key` only if it does not exist: `true` if written, `false` if another object was
    /// already there (nothing is overwritten).
    ///
    /// Idempotent: when the store answers "already exists" and the object holds exactly
    /// `bytes`, the write counts as done (`true`). That is what a retry sees after a lost
    /// response to a write the store did make; treating it as a conflict would stop a run whose
    /// record is safely stored.
    pub async fn put_create(&self, key: &ObjPath, bytes: Bytes) -> Result<bool, StoreError> {
        let r = self
            .inner
            .put_opts(
                key,
                PutPayload::from_bytes(bytes.clone()),
                PutOptions::from(PutMode::Create),
            )
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(self.get_opt(key).await?.is_some_and(|there| there == bytes)),
            Err(e) => Err(self.op_err("put (create-only)", key)(e)),
        }
    }

    /// The object's bytes as a stream of chunks (for files too large to hold in memory).
    pub async fn get_stream(
        &self,
        key: &ObjPath,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let r = self.inner.get(key).await.map_err(self.op_err("get", key))?;
        let url = self.url.clone();
        let k = key.to_string();
        // A local file is read in large chunks on a blocking thread (object_store's own stream
        // reads 8 KiB at a time, each a trip to the blocking pool).
        if let object_store::GetResultPayload::File(file, path) = r.payload {
            let range = r.range.clone();
            let state = (file, range.start, range.end);
            return Ok(
                futures::stream::try_unfold(state, move |(mut file, at, end)| {
                    let (url, k, path) = (url.clone(), k.clone(), path.clone());
                    async move {
                        if at >= end {
                            return Ok(None);
                        }
                        let want = (end - at).min(LOCAL_CHUNK) as usize;
                        let read = tokio::task::spawn_blocking(move || {
                            use std::io::{Read, Seek, SeekFrom};
                            let mut buf = vec![0u8; want];
                            file.seek(SeekFrom::Start(at))?;
                            file.read_exact(&mut buf)?;
                            Ok::<_, std::io::Error>((file, buf))
                        })
                        .await
                        .map_err(std::io::Error::other)
                        .and_then(|r| r);
                        match read {
                            Ok((file, buf)) => {
                                Ok(Some((Bytes::from(buf), (file, at + want as u64, end))))
                            }
                            Err(e) => Err(StoreError::Op {
                                url,
                                op: "get",
                                key: k,
                                source: object_store::Error::Generic {
                                    store: "LocalFileSystem",
                                    source: format!("{}: {e}", path.display()).into(),
                                },
                            }),
                        }
                    }
                })
                .boxed(),
            );
        }
        Ok(r.into_stream()
            .map_err(move |source| StoreError::Op {
                url: url.clone(),
                op: "get",
                key: k.clone(),
                source,
            })
            .boxed())
    }

    /// Every object under `prefix` whose key sorts after `offset`.
    pub async fn list_after(
        &self,
        prefix: &ObjPath,
        offset: &ObjPath,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        self.inner
            .list_with_offset(Some(prefix), offset)
            .try_collect()
            .await
            .map_err(self.op_err("list", prefix))
    }

    /// Whether anything is under `prefix` (lists one object at most).
    pub async fn any_under(&self, prefix: &ObjPath) -> Result<bool, StoreError> {
        let first = self
            .inner
            .list(Some(prefix))
            .next()
            .await
            .transpose()
            .map_err(self.op_err("list", prefix))?;
        Ok(first.is_some())
    }

    /// A writer that uploads `key` in parts of `part` bytes (multipart on cloud stores).
    pub fn multipart_writer(&self, key: &ObjPath, part: usize) -> BufWriter {
        crate::snapshot::uploads::began(key.as_ref());
        BufWriter::with_capacity(self.inner.clone(), key.clone(), part)
    }

    /// Delete one object: `true` if the store deleted it, `false` if there was none. Only the
    /// deleters call this (see the struct's doc); on a versioned bucket it leaves a delete
    /// marker, so callers HEAD first where that matters.
    pub(crate) async fn delete_object(&self, key: &ObjPath) -> Result<bool, StoreError> {
        match self.inner.delete(key).await {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.op_err("delete", key)(e)),
        }
    }

    /// Delete `keys` (batched where the store can); an object already gone is not an error.
    /// Errors name `prefix`. Only the deleters call this.
    pub(crate) async fn delete_objects(
        &self,
        prefix: &ObjPath,
        keys: Vec<ObjPath>,
    ) -> Result<(), StoreError> {
        let input = futures::stream::iter(keys.into_iter().map(Ok)).boxed();
        let mut results = self.inner.delete_stream(input);
        while let Some(r) = results.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.op_err("delete", prefix)(e)),
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn open(url: &str, env: &[(&str, &str)]) -> Result<Store, StoreError> {
        // HOME without gcloud's application-default login.
        let home = tempfile::tempdir().unwrap();
        let mut vars = vec![("HOME".to_string(), home.path().display().to_string())];
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Store::open_with_env(&StoreSpec::local(url), &Env(vars), false)
    }

    fn open_err(url: &str, env: &[(&str, &str)]) -> String {
        match open(url, env) {
            Err(e) => {
                assert!(e.is_configuration(), "{e}");
                e.to_string()
            }
            Ok(s) => panic!("{s:?} opened"),
        }
    }

    #[test]
    fn gcs_without_credentials_names_the_variables() {
        if on_cloud("Google") {
            return; // the metadata server is a credential there
        }
        let e = open_err("gs://bucket/prefix", &[]);
        assert!(
            e.contains("no Google Cloud credentials")
                && e.contains("GOOGLE_APPLICATION_CREDENTIALS")
                && e.contains("STORAGE_EMULATOR_HOST"),
            "{e}"
        );
        let s = open(
            "gs://bucket/prefix",
            &[("STORAGE_EMULATOR_HOST", "127.0.0.1:4443")],
        )
        .unwrap();
        assert_eq!(s.url, "gs://bucket/prefix");
        // A key file that does not exist is named.
        let e = open_err(
            "gs://bucket",
            &[("GOOGLE_SERVICE_ACCOUNT", "/no/such/key.json")],
        );
        assert!(
            e.contains("/no/such/key.json") || e.contains("No such file"),
            "{e}"
        );
    }

    #[test]
    fn azure_without_credentials_or_account_names_the_variables() {
        let e = open_err("az://container/prefix", &[]);
        assert!(
            e.contains("no Azure credentials")
                && e.contains("AZURE_STORAGE_ACCOUNT_KEY")
                && e.contains("AZURE_STORAGE_USE_EMULATOR"),
            "{e}"
        );
        // A key without the account's name.
        let e = open_err(
            "azure://container",
            &[("AZURE_STORAGE_ACCOUNT_KEY", "a2V5")],
        );
        assert!(e.contains("set AZURE_STORAGE_ACCOUNT_NAME"), "{e}");
        // `false` is no credential.
        let e = open_err("az://container", &[("AZURE_STORAGE_USE_EMULATOR", "false")]);
        assert!(e.contains("no Azure credentials"), "{e}");
        for url in ["az://container/p", "azure://container/p"] {
            let s = open(url, &[("AZURE_STORAGE_USE_EMULATOR", "true")]).unwrap();
            assert_eq!(s.url, url);
        }
        let e = open_err("az:///p", &[("AZURE_STORAGE_USE_EMULATOR", "true")]);
        assert!(e.contains("no container"), "{e}");
    }

    #[tokio::test]
    async fn a_create_only_write_whose_response_was_lost_is_done_not_a_conflict() {
        let s = Store::from_object_store("mem://", Arc::new(object_store::memory::InMemory::new()));
        let key = ObjPath::from("audit/records/000000000001.json");
        assert!(s.put_create(&key, Bytes::from("record 1")).await.unwrap());
        // What a retry sees after a lost response: "already exists", holding its own bytes.
        assert!(s.put_create(&key, Bytes::from("record 1")).await.unwrap());
        // A second writer with other bytes: a real conflict, nothing overwritten.
        assert!(!s.put_create(&key, Bytes::from("record 1'")).await.unwrap());
        assert_eq!(s.get(&key).await.unwrap(), Bytes::from("record 1"));
    }

    #[test]
    fn unknown_schemes_list_the_supported_ones() {
        let e = open_err("ftp://x/y", &[]);
        for s in ["s3://", "gs://", "az://", "file://"] {
            assert!(e.contains(s), "{e}");
        }
    }
}
