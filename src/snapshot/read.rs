//! Reading snapshots back: `ls` (committed runs), `verify` (every file's sha256, every footer
//! decrypted, row counts against the manifest, uncommitted runs reported) and `restore`
//! (a tenant's run written back as plaintext Parquet or CSV for ops).
//!
//! Files are downloaded to a private temporary file while being hashed, so memory stays
//! bounded by the row group whatever the file size; nothing is decrypted before its sha256
//! has been checked against the manifest.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use object_store::path::Path as ObjPath;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::basic::{Compression, ZstdLevel};
use parquet::encryption::decrypt::FileDecryptionProperties;
use parquet::file::properties::WriterProperties;
use ring::digest;

use super::manifest::Manifest;
use super::{
    MANIFEST, SNAPSHOTS, SnapshotError, manifest_key, run_prefix, segment_value, tenant_prefix,
};
use crate::keys::{DataKey, Keyring};
use crate::store::{Store, StoreError};
use crate::util::hex;

/// A run directory found in the store.
#[derive(Debug, Clone)]
pub struct RunListing {
    pub tenant: String,
    pub run_id: String,
    /// `None` for an uncommitted run (no manifest).
    pub manifest: Option<Result<Manifest, String>>,
}

/// Tenants that have a snapshot directory.
pub async fn tenants(store: &Store) -> Result<Vec<String>, StoreError> {
    let dirs = store.list_dirs(&ObjPath::from(SNAPSHOTS)).await?;
    let mut t: Vec<String> = dirs
        .iter()
        .filter_map(|d| segment_value(d, "tenant").map(String::from))
        .collect();
    t.sort();
    Ok(t)
}

/// The run ids of `tenant`'s run directories, sorted.
async fn run_ids(store: &Store, tenant: &str) -> Result<Vec<String>, StoreError> {
    let dirs = store.list_dirs(&tenant_prefix(tenant)).await?;
    let mut ids: Vec<String> = dirs
        .iter()
        .filter_map(|d| segment_value(d, "run").map(String::from))
        .collect();
    ids.sort();
    Ok(ids)
}

/// Every run directory of `tenant`, committed or not, oldest first.
pub async fn runs(store: &Store, tenant: &str) -> Result<Vec<RunListing>, StoreError> {
    let ids = run_ids(store, tenant).await?;
    // Manifests read concurrently, kept in order.
    let read: Vec<Result<RunListing, StoreError>> = futures::stream::iter(ids)
        .map(|run_id| async move {
            let manifest = store
                .get_opt(&manifest_key(tenant, &run_id))
                .await?
                .map(|b| parse_manifest(&b, tenant, &run_id));
            Ok(RunListing {
                tenant: tenant.into(),
                run_id,
                manifest,
            })
        })
        .buffered(16)
        .collect()
        .await;
    read.into_iter().collect()
}

fn parse_manifest(bytes: &[u8], tenant: &str, run: &str) -> Result<Manifest, String> {
    let m = Manifest::from_bytes(bytes)?;
    if m.tenant != tenant || m.run_id != run {
        return Err(format!(
            "manifest names tenant {} run {}, but sits under tenant {tenant} run {run}",
            m.tenant, m.run_id
        ));
    }
    Ok(m)
}

/// Committed runs of `tenant`, oldest first.
pub async fn committed(store: &Store, tenant: &str) -> Result<Vec<Manifest>, StoreError> {
    Ok(runs(store, tenant)
        .await?
        .into_iter()
        .filter_map(|r| r.manifest.and_then(Result::ok))
        .collect())
}

fn committed_time(m: &Manifest) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(&m.committed_at).ok()
}

/// The newest of committed runs: by the second in the run id, then by commit time (run ids of
/// one second do not sort by time).
fn newest_of(runs: &[Manifest]) -> Option<&Manifest> {
    runs.iter().max_by_key(|m| {
        (
            m.run_id.split('-').next().unwrap_or_default(),
            committed_time(m),
        )
    })
}

/// The newest committed run of `tenant` (reading manifests newest first, so only as many as
/// it takes).
pub async fn newest_committed(store: &Store, tenant: &str) -> Result<Option<Manifest>, StoreError> {
    let mut ids = run_ids(store, tenant).await?;
    // Run ids sort by their second; runs of the same second are told apart by commit time.
    let second = |id: &str| id.split('-').next().unwrap_or_default().to_string();
    while let Some(last) = ids.last().map(|id| second(id)) {
        let split = ids.partition_point(|id| second(id) < last);
        let mut group = Vec::new();
        for run_id in ids.drain(split..) {
            if let Some(b) = store.get_opt(&manifest_key(tenant, &run_id)).await?
                && let Ok(m) = parse_manifest(&b, tenant, &run_id)
            {
                group.push(m);
            }
        }
        if let Some(m) = newest_of(&group) {
            return Ok(Some(m.clone()));
        }
    }
    Ok(None)
}

/// Download `key` into a private temp file, hashing as it streams. Returns (file, bytes, sha256).
pub(crate) async fn download(
    store: &Store,
    key: &ObjPath,
) -> Result<(tempfile::NamedTempFile, u64, String), SnapshotError> {
    let io = |e: std::io::Error| SnapshotError::LocalIo {
        path: std::env::temp_dir(),
        source: e,
    };
    let mut tmp = tempfile::NamedTempFile::new().map_err(io)?;
    let mut stream = store.get_stream(key).await?;
    let mut sha = digest::Context::new(&digest::SHA256);
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        sha.update(&chunk);
        n += chunk.len() as u64;
        tmp.write_all(&chunk).map_err(io)?;
    }
    tmp.flush().map_err(io)?;
    Ok((tmp, n, hex(sha.finish().as_ref())))
}

fn decryption(key: &DataKey) -> Arc<FileDecryptionProperties> {
    FileDecryptionProperties::builder(key.key.clone())
        .build()
        .expect("valid key length")
}

/// Download a file a manifest lists, refuse it unless its size and sha256 are the manifest's,
/// and open it for reading with the tenant's key (the ciphertext stays in a private temp file).
pub async fn open_checked(
    store: &Store,
    f: &crate::snapshot::manifest::FileEntry,
    key: &DataKey,
) -> Result<ParquetRecordBatchReaderBuilder<File>, SnapshotError> {
    open_reader(checked_file(store, f).await?, Some(key), &f.path)
}

/// [`open_checked`], reading the columns as `hint` maps the file's schema: other Arrow types
/// for the same Parquet data (`Utf8View`, which Polars takes without a copy; a dictionary, whose
/// values are worked on once each).
pub async fn open_checked_as(
    store: &Store,
    f: &crate::snapshot::manifest::FileEntry,
    key: &DataKey,
    hint: &(dyn Fn(&arrow::datatypes::Schema) -> arrow::datatypes::Schema + Sync),
) -> Result<ParquetRecordBatchReaderBuilder<File>, SnapshotError> {
    let file = checked_file(store, f).await?;
    let meta = open_metadata(&file, Some(key), &f.path)?;
    let schema = std::sync::Arc::new(hint(meta.schema()));
    let meta = ArrowReaderMetadata::try_new(
        meta.metadata().clone(),
        ArrowReaderOptions::new().with_schema(schema),
    )
    .map_err(|e| SnapshotError::Decode {
        key: f.path.clone(),
        message: format!("cannot read it with the requested column types: {e}"),
    })?;
    Ok(ParquetRecordBatchReaderBuilder::new_with_metadata(
        file, meta,
    ))
}

/// A snapshot file downloaded to a temporary file (ciphertext), its size and sha256 checked
/// against the manifest.
async fn checked_file(
    store: &Store,
    f: &crate::snapshot::manifest::FileEntry,
) -> Result<File, SnapshotError> {
    let (tmp, bytes, sha) = download(store, &ObjPath::from(f.path.as_str())).await?;
    if bytes != f.bytes || sha != f.sha256 {
        return Err(SnapshotError::Decode {
            key: f.path.clone(),
            message: "checksum mismatch against the manifest; refusing to read it (run `lethe snapshot verify`)".into(),
        });
    }
    tmp.reopen().map_err(|e| SnapshotError::LocalIo {
        path: tmp.path().into(),
        source: e,
    })
}

/// Open a downloaded snapshot file for reading with the tenant's key; errors say what went wrong
/// in the reader's terms (no key, wrong key, damaged file).
pub fn open_reader(
    file: File,
    key: Option<&DataKey>,
    display: &str,
) -> Result<ParquetRecordBatchReaderBuilder<File>, SnapshotError> {
    let meta = open_metadata(&file, key, display)?;
    Ok(ParquetRecordBatchReaderBuilder::new_with_metadata(
        file, meta,
    ))
}

/// The footer of a downloaded snapshot file, decrypted with the tenant's key, for readers that
/// share it (several row groups read at once); errors as [`open_reader`]'s.
pub fn open_metadata(
    file: &File,
    key: Option<&DataKey>,
    display: &str,
) -> Result<ArrowReaderMetadata, SnapshotError> {
    let mut opts = ArrowReaderOptions::new();
    if let Some(k) = key {
        opts = opts.with_file_decryption_properties(decryption(k));
    }
    ArrowReaderMetadata::load(file, opts).map_err(|e| {
        let m = e.to_string();
        let message = if m.contains("decryption properties were not provided") {
            "the file is encrypted and no key was given (lethe reads it with the tenant's data key from the keyring)".to_string()
        } else if m.contains("unable to decrypt parquet footer") {
            "the footer does not decrypt with this tenant's data key (a file of another tenant, or a damaged file)".to_string()
        } else {
            format!("not a readable Parquet file: {m}")
        };
        SnapshotError::Decode { key: display.into(), message }
    })
}

/// One thing `verify` found wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub tenant: String,
    pub run_id: String,
    /// The object key the finding is about.
    pub key: String,
    pub message: String,
}

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub runs: usize,
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
    pub findings: Vec<Finding>,
    /// Runs whose data key was destroyed on purpose (crypto-erased, awaiting purge): their
    /// checksums are checked, and that they cannot be decrypted is what is expected.
    pub crypto_erased: usize,
}

/// Verify every run of `tenants` (all tenants with snapshots when empty).
pub async fn verify(
    store: &Store,
    keyring: &Keyring,
    only: &[String],
) -> Result<VerifyReport, crate::Error> {
    verify_with(store, keyring, only, VERIFY_CONCURRENCY).await
}

/// [`verify`], checking `concurrency` files of a run at a time and a few tenants at once (1:
/// everything one after another, as before; the benchmark compares both).
#[doc(hidden)]
pub async fn verify_with(
    store: &Store,
    keyring: &Keyring,
    only: &[String],
    concurrency: usize,
) -> Result<VerifyReport, crate::Error> {
    let mut report = VerifyReport::default();
    let all = tenants(store).await?;
    unknown_tenants(only, &all)?;
    let list: Vec<String> = if only.is_empty() { all } else { only.to_vec() };
    // Tenants checked concurrently too (a few at a time), each with its files `concurrency`
    // at a time; their reports merged in tenant order.
    let parts: Vec<Result<VerifyReport, crate::Error>> = futures::stream::iter(list)
        .map(|tenant| verify_tenant(store, keyring, tenant, concurrency))
        .buffered(if concurrency <= 1 { 1 } else { TENANTS_AT_ONCE })
        .collect()
        .await;
    for p in parts {
        let p = p?;
        report.runs += p.runs;
        report.files += p.files;
        report.rows += p.rows;
        report.bytes += p.bytes;
        report.crypto_erased += p.crypto_erased;
        report.findings.extend(p.findings);
    }
    Ok(report)
}

/// Tenants `snapshot verify` checks at once.
const TENANTS_AT_ONCE: usize = 4;

/// Verify every run of one tenant.
async fn verify_tenant(
    store: &Store,
    keyring: &Keyring,
    tenant: String,
    concurrency: usize,
) -> Result<VerifyReport, crate::Error> {
    let mut report = VerifyReport::default();
    let key = keyring.data_key(&tenant);
    for run in runs(store, &tenant).await? {
        report.runs += 1;
        let finding = |key: String, message: String| Finding {
            tenant: tenant.clone(),
            run_id: run.run_id.clone(),
            key,
            message,
        };
        let mkey = manifest_key(&tenant, &run.run_id).to_string();
        let manifest = match run.manifest {
            None => {
                report.findings.push(finding(run_prefix(&tenant, &run.run_id).to_string(),
                    "uncommitted run: no _manifest.json (a snapshot stopped before it committed); readers ignore it".into()));
                continue;
            }
            Some(Err(m)) => {
                report
                    .findings
                    .push(finding(mkey, format!("manifest unreadable: {m}")));
                continue;
            }
            Some(Ok(m)) => m,
        };
        let key = match &key {
            Ok(k) if k.key_id == manifest.key_id => match manifest.authenticate(k) {
                Ok(()) => Some(k),
                Err(why) => {
                    report.findings.push(finding(mkey.clone(), why));
                    None
                }
            },
            Ok(k) => {
                report.findings.push(finding(
                    mkey.clone(),
                    format!(
                        "manifest names data key {}, the keyring holds {}",
                        manifest.key_id, k.key_id
                    ),
                ));
                None
            }
            Err(_) if keyring.was_shredded(&manifest.key_id) => {
                report.crypto_erased += 1;
                None
            }
            Err(e) => {
                report.findings.push(finding(
                    mkey.clone(),
                    format!(
                        "no usable data key: {}",
                        e.to_string().lines().next().unwrap_or_default()
                    ),
                ));
                None
            }
        };
        // Objects present in the run but not listed: readers ignore them, but nobody should have put them there
        // — except the files of a rewrite in progress, which its marker names.
        let listed: std::collections::HashSet<&str> =
            manifest.files.iter().map(|f| f.path.as_str()).collect();
        let rewriting = crate::snapshot::rewrite::marker(store, &tenant, &run.run_id).await?;
        let in_rewrite = |k: &str| {
            k == crate::snapshot::rewrite::marker_key(&tenant, &run.run_id).as_ref()
                || rewriting
                    .as_ref()
                    .is_some_and(|m| m.old.iter().chain(&m.new).any(|p| p == k))
        };
        let index = manifest.subject_index.as_ref().map(|i| i.path.as_str());
        if let Some(ix) = &manifest.subject_index {
            match download(store, &ObjPath::from(ix.path.as_str())).await {
                Ok((_, bytes, sha)) if bytes == ix.bytes && sha == ix.sha256 => {}
                Ok((_, bytes, sha)) => report.findings.push(finding(
                    ix.path.clone(),
                    format!("subject index checksum mismatch: {bytes} bytes with sha256 {sha}, manifest says {} bytes with sha256 {}", ix.bytes, ix.sha256),
                )),
                Err(SnapshotError::Store(e)) if e.is_not_found() => report.findings.push(
                    finding(ix.path.clone(), "missing: the manifest lists this subject index but it is not in the store".into()),
                ),
                Err(e) => return Err(e.into()),
            }
        }
        for obj in store.list(&run_prefix(&tenant, &run.run_id)).await? {
            let k = obj.location.to_string();
            if !k.ends_with(MANIFEST)
                && !listed.contains(k.as_str())
                && Some(k.as_str()) != index
                && !in_rewrite(&k)
            {
                report
                    .findings
                    .push(finding(k, "file not listed in the manifest".into()));
            }
        }
        // Files checked concurrently: each is a download, a checksum and a footer read.
        let checks: Vec<Result<FileCheck, SnapshotError>> =
            futures::stream::iter(manifest.files.iter())
                .map(|f| check_file(store, f, key))
                .buffered(concurrency.max(1))
                .collect()
                .await;
        for (f, c) in manifest.files.iter().zip(checks) {
            let c = c?;
            report.files += 1;
            report.bytes += c.bytes;
            report.rows += c.rows;
            if let Some(m) = c.finding {
                report.findings.push(finding(f.path.clone(), m));
            }
        }
    }
    Ok(report)
}

/// Files `snapshot verify` checks at once.
const VERIFY_CONCURRENCY: usize = 8;

/// What checking one file of a manifest found.
struct FileCheck {
    bytes: u64,
    rows: u64,
    finding: Option<String>,
}

/// Download `f`, compare its size and sha256 with the manifest, and (with the data key) open
/// its encrypted footer and compare its row count.
async fn check_file(
    store: &Store,
    f: &crate::snapshot::manifest::FileEntry,
    key: Option<&DataKey>,
) -> Result<FileCheck, SnapshotError> {
    let mut c = FileCheck {
        bytes: 0,
        rows: 0,
        finding: None,
    };
    let (tmp, bytes, sha) = match download(store, &ObjPath::from(f.path.as_str())).await {
        Ok(x) => x,
        Err(SnapshotError::Store(e)) if e.is_not_found() => {
            c.finding = Some("missing: listed in the manifest but not in the store".into());
            return Ok(c);
        }
        Err(e) => return Err(e),
    };
    c.bytes = bytes;
    if bytes != f.bytes || sha != f.sha256 {
        c.finding = Some(format!(
            "checksum mismatch: {bytes} bytes with sha256 {sha}, manifest says {} bytes with sha256 {}",
            f.bytes, f.sha256
        ));
        return Ok(c);
    }
    let Some(key) = key else { return Ok(c) };
    let file = tmp.reopen().map_err(|e| SnapshotError::LocalIo {
        path: tmp.path().into(),
        source: e,
    })?;
    match open_reader(file, Some(key), &f.path) {
        Ok(r) => {
            let rows = r.metadata().file_metadata().num_rows() as u64;
            c.rows = rows;
            if rows != f.rows {
                c.finding = Some(format!("{rows} rows in the file, manifest says {}", f.rows));
            }
        }
        Err(e) => c.finding = Some(e.to_string()),
    }
    Ok(c)
}

/// Names that are not tenants with snapshots are an error (a typo must not pass as "nothing
/// to check").
pub fn unknown_tenants(asked: &[String], known: &[String]) -> Result<(), crate::Error> {
    let unknown: Vec<&String> = asked.iter().filter(|t| !known.contains(t)).collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(crate::Error::Usage(format!(
        "no snapshots of tenant(s) {} in the store; tenants with snapshots: {}",
        unknown
            .iter()
            .map(|t| format!("{t:?}"))
            .collect::<Vec<_>>()
            .join(", "),
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    )))
}

/// Output format of `restore`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RestoreFormat {
    Parquet,
    Csv,
}

#[derive(Debug)]
pub struct RestoreOutcome {
    pub run_id: String,
    pub files: Vec<(String, PathBuf, u64)>,
    /// Rows of erased people the erasure ledger dropped.
    pub dropped: u64,
    /// Subjects the ledger lists as erased after the run was taken.
    pub erased_subjects: usize,
}

/// What a restore needs to apply the erasure ledger.
pub struct LedgerContext<'a> {
    pub data_map: &'a crate::datamap::DataMap,
    pub phone_country: Option<String>,
}

/// What a restore wrote so far, removed again if it fails: plaintext is never left behind by
/// a restore that did not finish.
#[derive(Default)]
struct Written {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

impl Written {
    /// Create `dir` and its missing parents with mode 0700, remembering the ones created.
    fn mkdir(&mut self, dir: &Path) -> Result<(), SnapshotError> {
        use std::os::unix::fs::DirBuilderExt;
        let mut missing = Vec::new();
        let mut p = Some(dir);
        while let Some(d) = p {
            if d.as_os_str().is_empty() || d.exists() {
                break;
            }
            missing.push(d.to_path_buf());
            p = d.parent();
        }
        for d in missing.into_iter().rev() {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&d)
                .map_err(|e| SnapshotError::LocalIo {
                    path: d.clone(),
                    source: e,
                })?;
            self.dirs.push(d);
        }
        Ok(())
    }

    /// Remove what was written; the list of what could not be removed.
    fn remove(&self) -> Vec<PathBuf> {
        let mut left = Vec::new();
        for f in self.files.iter().rev() {
            if std::fs::remove_file(f).is_err() && f.exists() {
                left.push(f.clone());
            }
        }
        for d in self.dirs.iter().rev() {
            if std::fs::remove_dir(d).is_err() && d.exists() {
                left.push(d.clone());
            }
        }
        left
    }
}

/// Write `tenant`'s run (the newest committed one unless `run` is given) to `out` as plaintext:
/// files mode 0600, directories created 0700. The manifest is authenticated with the tenant's
/// key and each file's sha256 checked before it is decrypted. If anything fails, every file and
/// directory this restore created is removed again (the error says so, or names what is left).
pub async fn restore(
    store: &Store,
    keyring: &Keyring,
    tenant: &str,
    run: Option<&str>,
    out: &Path,
    format: RestoreFormat,
    tables: &[String],
    ledger: &LedgerContext<'_>,
) -> Result<RestoreOutcome, crate::Error> {
    unknown_tenants(&[tenant.to_string()], &self::tenants(store).await?)?;
    let runs = committed(store, tenant).await?;
    let manifest = match run {
        Some(r) => runs.iter().find(|m| m.run_id == r).cloned(),
        None => newest_of(&runs).cloned(),
    }
    .ok_or_else(|| match run {
        Some(r) => crate::Error::Usage(format!(
            "tenant {tenant} has no committed snapshot run {r:?} (an uncommitted or unknown run id); its committed runs: {}",
            if runs.is_empty() {
                "none".to_string()
            } else {
                runs.iter()
                    .map(|m| m.run_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )),
        None => SnapshotError::NoRun {
            tenant: tenant.into(),
            run: None,
        }
        .into(),
    })?;
    let in_run: Vec<&str> = manifest.tables.iter().map(|t| t.table.as_str()).collect();
    let unknown: Vec<&String> = tables
        .iter()
        .filter(|t| !in_run.contains(&t.as_str()))
        .collect();
    if !unknown.is_empty() {
        return Err(crate::Error::Usage(format!(
            "run {} of tenant {tenant} has no table {}; its tables: {}",
            manifest.run_id,
            unknown
                .iter()
                .map(|t| format!("{t:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            in_run.join(", ")
        )));
    }
    let key = keyring.data_key(tenant)?;
    manifest
        .authenticate(&key)
        .map_err(|message| SnapshotError::BadManifest {
            key: manifest_key(tenant, &manifest.run_id).to_string(),
            message: format!("{message}; refusing to restore from it"),
        })?;
    // The erasure ledger: people erased after this run was taken do not come back.
    let taken = crate::retention::run_time(&manifest.run_id, Some(&manifest.created_at))
        .ok_or_else(|| SnapshotError::BadManifest {
            key: manifest_key(tenant, &manifest.run_id).to_string(),
            message: "no valid created_at: cannot apply the erasure ledger; refusing to restore"
                .into(),
        })?;
    let erased = crate::erasure::ledger::read(store, tenant).await?;
    let scrub = crate::erasure::ledger::Scrub {
        subjects: erased.after(taken),
        index_tags: None,
        keyring,
        data_map: ledger.data_map,
        phone_country: ledger.phone_country.clone(),
    };
    let mut written = Written::default();
    match restore_files(
        store,
        &key,
        &manifest,
        out,
        format,
        tables,
        &scrub,
        &mut written,
    )
    .await
    {
        Ok((files, dropped)) => Ok(RestoreOutcome {
            run_id: manifest.run_id,
            files,
            dropped,
            erased_subjects: scrub.subjects.len(),
        }),
        Err(e) => {
            let left = written.remove();
            let what = if left.is_empty() {
                format!(
                    "removed the {} file(s) this restore had written",
                    written.files.len()
                )
            } else {
                format!(
                    "could NOT remove {} (plaintext personal data: delete by hand)",
                    left.iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            Err(match e {
                crate::Error::Usage(m) => crate::Error::Usage(format!("{m}\n  {what}")),
                e => crate::Error::Failed(format!("restore failed: {e}\n  {what}")),
            })
        }
    }
}

async fn restore_files(
    store: &Store,
    key: &DataKey,
    manifest: &Manifest,
    out: &Path,
    format: RestoreFormat,
    tables: &[String],
    scrub: &crate::erasure::ledger::Scrub<'_>,
    written: &mut Written,
) -> Result<(Vec<(String, PathBuf, u64)>, u64), crate::Error> {
    let mut dropped = 0u64;
    use std::os::unix::fs::OpenOptionsExt;
    written.mkdir(out)?;
    let mut files = Vec::new();
    for f in manifest
        .files
        .iter()
        .filter(|f| tables.is_empty() || tables.contains(&f.table))
    {
        let reader = open_checked(store, f, key).await?;
        let schema = reader.schema().clone();
        let reader = reader.build().map_err(|e| SnapshotError::Decode {
            key: f.path.clone(),
            message: e.to_string(),
        })?;
        // Names were checked with the manifest: `part-<digits>.parquet` under a plain table name.
        let part = f
            .path
            .rsplit('/')
            .next()
            .unwrap_or("part-0.parquet")
            .trim_end_matches(".parquet");
        let dir = out.join(&f.table);
        written.mkdir(&dir)?;
        let ext = match format {
            RestoreFormat::Parquet => "parquet",
            RestoreFormat::Csv => "csv",
        };
        let dest = dir.join(format!("{part}.{ext}"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&dest)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    crate::Error::Usage(format!("{} already exists; restore into an empty directory (nothing was overwritten)", dest.display()))
                } else {
                    SnapshotError::LocalIo { path: dest.clone(), source: e }.into()
                }
            })?;
        written.files.push(dest.clone());
        let dec = |e: &dyn std::fmt::Display| SnapshotError::Decode {
            key: f.path.clone(),
            message: e.to_string(),
        };
        let mut rows = 0u64;
        // One cache per file: each distinct identifier is hashed once.
        let mut cache = crate::erasure::ledger::ScrubCache::default();
        match format {
            RestoreFormat::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::default()))
                    .build();
                let mut w = ArrowWriter::try_new(file, schema, Some(props)).map_err(|e| dec(&e))?;
                for b in reader {
                    let (b, d) = scrub
                        .filter_cached(&f.table, b.map_err(|e| dec(&e))?, &mut cache)
                        .map_err(|e| dec(&e))?;
                    dropped += d;
                    rows += b.num_rows() as u64;
                    w.write(&b).map_err(|e| dec(&e))?;
                }
                w.close().map_err(|e| dec(&e))?;
            }
            RestoreFormat::Csv => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(std::io::BufWriter::new(file));
                for b in reader {
                    let (b, d) = scrub
                        .filter_cached(&f.table, b.map_err(|e| dec(&e))?, &mut cache)
                        .map_err(|e| dec(&e))?;
                    dropped += d;
                    rows += b.num_rows() as u64;
                    w.write(&b).map_err(|e| dec(&e))?;
                }
                w.into_inner().into_inner().map_err(|e| dec(&e.error()))?;
            }
        }
        files.push((f.table.clone(), dest, rows));
    }
    Ok((files, dropped))
}
