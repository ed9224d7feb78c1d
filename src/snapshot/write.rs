//! Writing snapshot runs. Three stages overlap, each bounded:
//!
//! ```text
//! [reader thread]   one pass per table, rows → per-tenant Arrow batches ─(bounded channel)─▶
//! [encoder thread]  one ArrowWriter per tenant (zstd + AES-GCM) → private spill file, sha256 on the fly ─▶
//! [upload tasks]    each spill file → object store, following the file as it grows: every
//!                   8 MiB written is uploaded as a multipart part while encoding goes on
//! ```
//! Each tenant's batches wait in memory until they make a row group (`row_group_rows`), which
//! is then encoded in one go, so only one row group is being encoded at any time however many
//! tenants a table interleaves. When the waiting batches of all tenants pass
//! [`PENDING_BUDGET`], the tenant with the most waiting becomes a (smaller) row group early.
//! Memory: the reader's builders (≈32 MiB over all tenants), the channel (8 batches), the
//! waiting batches (≤ [`PENDING_BUDGET`]), one row group being encoded, and the parts being
//! uploaded (a few × 8 MiB); never the table. What is encoded
//! but not yet uploaded waits on local disk (the spill directory, `$TMPDIR`), not in memory.
//!
//! Commit: a tenant's `_manifest.json` is written only after every one of its files has been
//! uploaded. A crash or an error at any earlier point leaves an uncommitted run that readers
//! ignore and `verify` reports. A tenant whose rows cannot be read fails alone; the others commit.

use std::io::{BufWriter as IoBufWriter, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as ObjPath;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::encryption::encrypt::FileEncryptionProperties;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use ring::digest;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, mpsc, watch};

use super::manifest::{FORMAT, FileEntry, Manifest, TableEntry, schema_fingerprint};
use super::{SnapshotError, manifest_key, part_key};
use crate::config::{SnapshotSection, SourceUrl};
use crate::datamap::DataMap;
use crate::keys::DataKey;
use crate::source::{ScanEvent, ScanPlan, ScanTable, Source};
use crate::store::Store;
use crate::util::{hex, rfc3339};

/// Multipart part size (S3 needs at least 5 MiB) and parts in flight per upload.
const PART: usize = 8 << 20;
const UPLOAD_CONCURRENCY: usize = 2;
/// Files being read and handed to the store at once (each holds up to one or two parts).
const PARTS_IN_FLIGHT: usize = 8;
/// Cap on the Arrow batches waiting, over all tenants, to be encoded as row groups.
pub const PENDING_BUDGET: usize = 96 << 20;

/// One tenant's part of a run.
pub struct TenantJob {
    pub tenant: String,
    pub run_id: String,
    pub key: DataKey,
}

/// What every tenant of a run shares.
pub struct RunSpec {
    pub source: SourceUrl,
    pub data_map: Arc<DataMap>,
    pub master_key_id: String,
    pub policy_version: String,
    pub policy_hash: String,
    pub settings: SnapshotSection,
    /// Only some tenants are being snapshotted (`--tenant`).
    pub selective: bool,
    /// The newest audit checkpoint now, recorded in every manifest (an anchor of the log).
    pub audit_head: Option<crate::snapshot::manifest::AuditHead>,
    /// What stamps `created_at` and `committed_at`.
    pub clock: Arc<dyn crate::clock::Clock>,
    /// Builds each run's encrypted subject index (`None`: no index).
    pub tagger: Option<crate::snapshot::index::Tagger>,
}

/// Writer properties of a snapshot file: zstd, bounded row groups, AES-GCM with the footer and
/// every column encrypted under the tenant's data key.
///
/// Statistics are kept (inside the encrypted footer) only for the columns readers filter on:
/// the primary key and the event time. Dictionary pages are capped at 128 KiB: low-cardinality
/// columns (channel, status) fit, free text falls back to plain encoding early, which is both
/// faster and, after zstd, smaller than a 1 MiB dictionary that overflows.
pub fn writer_properties(
    key: &DataKey,
    s: &SnapshotSection,
    stats_columns: &[&str],
) -> parquet::errors::Result<WriterProperties> {
    let enc = FileEncryptionProperties::builder(key.key.clone())
        .with_footer_key_metadata(key.footer_key_metadata.clone())
        .build()?;
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(s.zstd_level)?))
        .set_max_row_group_row_count(Some(s.row_group_rows))
        .set_dictionary_page_size_limit(128 << 10)
        .set_statistics_enabled(EnabledStatistics::None)
        .set_created_by(format!("lethe {}", env!("CARGO_PKG_VERSION")))
        .with_file_encryption_properties(enc);
    for c in stats_columns {
        b = b.set_column_statistics_enabled(ColumnPath::from(*c), EnabledStatistics::Chunk);
    }
    Ok(b.build())
}

/// A `Write` into a private spill file that hashes and counts what passes.
pub(crate) struct HashingFile {
    pub(crate) inner: IoBufWriter<tempfile::NamedTempFile>,
    pub(crate) sha: digest::Context,
    pub(crate) bytes: u64,
}

impl HashingFile {
    pub(crate) fn new(file: tempfile::NamedTempFile, buffer: usize) -> HashingFile {
        HashingFile {
            inner: IoBufWriter::with_capacity(buffer, file),
            sha: digest::Context::new(&digest::SHA256),
            bytes: 0,
        }
    }

    /// Flush, and hand back the file, its length and its sha256 (hex).
    pub(crate) fn finish(self) -> std::io::Result<(tempfile::NamedTempFile, u64, String)> {
        let file = self.inner.into_inner().map_err(|e| e.into_error())?;
        Ok((file, self.bytes, hex(self.sha.finish().as_ref())))
    }
}

impl Write for HashingFile {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(data)?;
        self.sha.update(&data[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// How far a spill file has been written, published by the encoder to its upload task.
#[derive(Debug, Clone, Default)]
struct Progress {
    /// Bytes flushed to the file (final: Parquet is written append-only).
    flushed: u64,
    /// Set when the file is complete.
    done: Option<FileEntry>,
}

/// A spill file announced to the uploader when it is opened. If the encoder drops the
/// progress sender without `done`, the file was abandoned and its upload is aborted.
struct Spill {
    tenant: usize,
    key: ObjPath,
    file: std::fs::File,
    progress: watch::Receiver<Progress>,
}

/// The file a tenant's rows of the current table are going into.
struct Part {
    no: usize,
    key: ObjPath,
    writer: ArrowWriter<HashingFile>,
    rows: u64,
    progress: watch::Sender<Progress>,
}

impl Part {
    /// Publish progress once another part's worth of bytes is in the file.
    fn publish(&mut self) -> std::io::Result<()> {
        let reported = self.progress.borrow().flushed;
        let sink = self.writer.inner_mut();
        if sink.bytes >= reported + PART as u64 {
            sink.inner.flush()?;
            let flushed = sink.bytes;
            self.progress.send_modify(|p| p.flushed = flushed);
        }
        Ok(())
    }
}

/// The outcome per tenant: its manifest and the seconds from the start of the run to its
/// commit, or why it failed.
pub type TenantResult = (String, Result<(Manifest, f64), SnapshotError>);

/// Snapshot `jobs` (one per tenant) in one pass over the source, then commit each tenant that
/// succeeded with its manifest.
pub async fn snapshot_run(store: &Store, spec: RunSpec, jobs: Vec<TenantJob>) -> Vec<TenantResult> {
    let created_at = rfc3339(spec.clock.now());
    let started = std::time::Instant::now();
    let n = jobs.len();
    let plan = ScanPlan {
        tables: spec
            .data_map
            .tables
            .iter()
            .map(|t| ScanTable {
                name: t.name.clone(),
                tenant_column: t.config.tenant_column.clone(),
            })
            .collect(),
        tenants: jobs.iter().map(|j| j.tenant.clone()).collect(),
        batch_rows: spec.settings.batch_rows,
        selective: spec.selective,
    };
    let mut errors: Vec<Option<String>> = vec![None; n];
    // Per table, the columns that keep statistics: primary key and event time.
    let stats: Vec<Vec<&str>> = spec
        .data_map
        .tables
        .iter()
        .map(|t| {
            let c = &t.config;
            std::iter::once(c.primary_key.as_str())
                .chain(c.time_column.as_deref())
                .collect()
        })
        .collect();
    let props: Vec<Vec<Result<WriterProperties, String>>> = jobs
        .iter()
        .map(|j| {
            stats
                .iter()
                .map(|cols| {
                    writer_properties(&j.key, &spec.settings, cols).map_err(|e| e.to_string())
                })
                .collect()
        })
        .collect();

    // Deep enough to hold a row group's worth of full batches: while the encoder turns one row
    // group into Parquet, the reader keeps reading instead of waiting. (Counted in batches of
    // up to `batch_rows`, so the depth also bounds the channel's memory.)
    let depth = (spec.settings.row_group_rows / spec.settings.batch_rows).clamp(8, 64) + 8;
    let (scan_tx, scan_rx) = sync_channel::<ScanEvent>(depth);
    let (up_tx, up_rx) = mpsc::unbounded_channel::<Spill>();

    let reader = {
        let (src, plan) = (spec.source.clone(), plan.clone());
        tokio::task::spawn_blocking(move || {
            let t0 = std::time::Instant::now();
            let r = Source::scan(&src, &plan, &scan_tx);
            tracing::debug!(seconds = t0.elapsed().as_secs_f64(), "reader finished");
            r
        })
    };
    let encoder = {
        let ids: Vec<(String, String)> = jobs
            .iter()
            .map(|j| (j.tenant.clone(), j.run_id.clone()))
            .collect();
        let sizes = (
            spec.settings.row_group_rows as u64,
            spec.settings.file_rows as u64,
        );
        let tagger = spec.tagger.clone();
        tokio::task::spawn_blocking(move || encode(scan_rx, up_tx, props, ids, sizes, tagger))
    };
    let uploader = {
        let store = store.clone();
        let permits = Arc::new(Semaphore::new(PARTS_IN_FLIGHT));
        async move {
            unbounded_stream(up_rx)
                .map(|spill| {
                    let (store, permits) = (store.clone(), permits.clone());
                    tokio::spawn(async move {
                        let tenant = spill.tenant;
                        (tenant, upload_spill(&store, spill, &permits).await)
                    })
                })
                .buffer_unordered(usize::MAX)
                .collect::<Vec<_>>()
                .await
        }
    };
    let (uploads, encoded, read) = tokio::join!(uploader, encoder, reader);

    // Root causes first: a failed read explains everything downstream of it.
    let fatal = match read {
        Err(join) => Some(format!("the reader stopped: {join}")),
        Ok(Err(crate::source::SourceError::Disconnected)) | Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
    };
    let (tables, tenant_errors, mut indexes) = match encoded {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => (Vec::new(), vec![Some(e); n], Vec::new()),
        Err(join) => (
            Vec::new(),
            vec![Some(format!("the encoder stopped: {join}")); n],
            Vec::new(),
        ),
    };
    for (t, e) in tenant_errors.into_iter().enumerate() {
        if let Some(e) = fatal.clone().or(e) {
            errors[t].get_or_insert(e);
        }
    }
    let mut files: Vec<Vec<FileEntry>> = vec![Vec::new(); n];
    for r in uploads {
        match r {
            Ok((t, Ok(entry))) => files[t].push(entry),
            Ok((t, Err(e))) => {
                errors[t].get_or_insert(e);
            }
            Err(join) => {
                // An upload task panicked: no tenant can be sure its files are all there.
                for e in errors.iter_mut() {
                    e.get_or_insert(format!("an upload task stopped: {join}"));
                }
            }
        }
    }

    let mut out = Vec::with_capacity(n);
    let mut commits = Vec::new();
    for (t, job) in jobs.into_iter().enumerate() {
        if let Some(message) = errors[t].take() {
            out.push((
                job.tenant.clone(),
                Err(SnapshotError::Failed {
                    tenant: job.tenant,
                    message,
                }),
            ));
            continue;
        }
        let mut files = std::mem::take(&mut files[t]);
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let tables: Vec<TableEntry> = tables
            .iter()
            .map(|(table, rows, fp)| TableEntry {
                table: table.clone(),
                rows: rows[t],
                schema_fingerprint: fp.clone(),
            })
            .collect();
        let mut manifest = Manifest {
            format: FORMAT.into(),
            run_id: job.run_id.clone(),
            tenant: job.tenant.clone(),
            created_at: created_at.clone(),
            // Microseconds: runs of one second are ordered by when they committed.
            committed_at: spec
                .clock
                .now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            tool_version: format!("lethe {}", env!("CARGO_PKG_VERSION")),
            policy_version: spec.policy_version.clone(),
            policy_hash: spec.policy_hash.clone(),
            key_id: job.key.key_id.clone(),
            master_key_id: spec.master_key_id.clone(),
            tables,
            files,
            audit_head: spec.audit_head.clone(),
            subject_index: None,
            checksum: String::new(),
            mac: String::new(),
        };
        // The subject index, sealed; stored before the manifest that lists it.
        let mut index = None;
        if let Some(ix) = indexes
            .get_mut(t)
            .filter(|ix| spec.tagger.is_some() && !ix.incomplete)
        {
            let sealed = ix.seal(&job.key, &job.run_id);
            let path = crate::snapshot::index::index_path(&job.tenant, &job.run_id, 0);
            manifest.subject_index = Some(crate::snapshot::index::IndexRef {
                path: path.clone(),
                bytes: sealed.len() as u64,
                sha256: hex(digest::digest(&digest::SHA256, &sealed).as_ref()),
                entries: ix.entries.len() as u64,
            });
            index = Some((path, sealed));
        }
        let body = manifest.to_bytes(&job.key);
        commits.push((job.tenant, job.run_id, manifest, index, body));
    }
    // Tenants commit concurrently (index, then manifest): a slow or retried request delays
    // only its own tenant's commit.
    let committed: Vec<TenantResult> = futures::stream::iter(commits)
        .map(|(tenant, run_id, manifest, index, body)| async move {
            if let Some((path, sealed)) = index
                && let Err(e) = store.put(&ObjPath::from(path), Bytes::from(sealed)).await
            {
                return (tenant, Err(SnapshotError::from(e)));
            }
            let r = store
                .put(&manifest_key(&tenant, &run_id), Bytes::from(body))
                .await;
            (
                tenant,
                r.map(|()| (manifest, started.elapsed().as_secs_f64()))
                    .map_err(SnapshotError::from),
            )
        })
        .buffered(COMMIT_CONCURRENCY)
        .collect()
        .await;
    out.extend(committed);
    out
}

/// Tenants whose run commits at once.
const COMMIT_CONCURRENCY: usize = 16;

fn unbounded_stream<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Follow a spill file as the encoder writes it and stream it into the store: each 8 MiB
/// that is final goes up as a part while encoding continues; the rest when the file is done.
/// Errors name the object key; an abandoned file's upload is aborted.
async fn upload_spill(
    store: &Store,
    spill: Spill,
    permits: &Semaphore,
) -> Result<FileEntry, String> {
    let key = spill.key.to_string();
    let err = |e: &dyn std::fmt::Display| format!("upload of {key} failed: {e}");
    let mut rx = spill.progress;
    let mut w = store
        .multipart_writer(&spill.key, PART)
        .with_max_concurrency(UPLOAD_CONCURRENCY);
    let mut sent = 0u64;
    // After `shutdown` (successful or not) the writer must not be aborted: it has completed or
    // cleaned up its multipart upload itself.
    let mut shut_down = false;
    let result: Result<FileEntry, String> = async {
        loop {
            let p = match rx
                .wait_for(|p| p.done.is_some() || p.flushed >= sent + PART as u64)
                .await
            {
                Ok(p) => p.clone(),
                Err(_) => return Err(format!("{key}: abandoned by the encoder")),
            };
            let target = p
                .done
                .as_ref()
                .map_or(p.flushed - p.flushed % PART as u64, |e| e.bytes);
            // The permit covers reading, handing over and, for the last round, completing the
            // upload: a small file's bytes are only sent by `shutdown`, and until then they sit
            // in memory, so the number of files between read and done stays bounded.
            let _permit = permits.acquire().await.expect("semaphore open");
            while sent < target {
                let len = (target - sent).min(PART as u64) as usize;
                let mut buf = vec![0u8; len];
                spill
                    .file
                    .read_exact_at(&mut buf, sent)
                    .map_err(|e| err(&e))?;
                w.put(Bytes::from(buf)).await.map_err(|e| err(&e))?;
                sent += len as u64;
            }
            if let Some(entry) = p.done {
                shut_down = true;
                w.shutdown().await.map_err(|e| err(&e))?;
                return Ok(entry);
            }
        }
    }
    .await;
    if result.is_err() && !shut_down {
        let _ = w.abort().await;
    }
    result
}

/// Per table: name, rows per tenant, schema fingerprint.
type TableRows = (String, Vec<u64>, String);
/// Tables read, and per tenant the error that stopped it.
type Encoded = (
    Vec<TableRows>,
    Vec<Option<String>>,
    Vec<crate::snapshot::index::SubjectIndex>,
);

/// A tenant's state for the current table.
#[derive(Default)]
struct TenantTable {
    part: Option<Part>,
    pending: Vec<RecordBatch>,
    pending_rows: u64,
    pending_bytes: usize,
    /// Rows written, checked against the reader's count at the end of the table.
    written: u64,
}

fn encode(
    rx: Receiver<ScanEvent>,
    tx: mpsc::UnboundedSender<Spill>,
    props: Vec<Vec<Result<WriterProperties, String>>>,
    ids: Vec<(String, String)>,
    settings: (u64, u64),
    tagger: Option<crate::snapshot::index::Tagger>,
) -> Result<Encoded, String> {
    let (row_group_rows, file_rows) = settings;
    let n = ids.len();
    // The subject index is built on its own thread from the row groups the encoder writes
    // (batches are shared, not copied; two row groups in flight at most).
    type Tagging = (usize, usize, String, u32, Vec<RecordBatch>);
    let (tag_tx, tagging, with_ids) = match tagger {
        Some(tg) => {
            let with_ids = tg.tables_with_identifiers();
            let (tx, rx) = sync_channel::<Tagging>(2);
            let handle = std::thread::spawn(move || {
                let mut indexes: Vec<crate::snapshot::index::SubjectIndex> =
                    (0..n).map(|_| Default::default()).collect();
                for (t, table_no, path, rg, batches) in rx {
                    match tg.tags(table_no, &batches) {
                        Some(tags) => indexes[t].add(&path, rg, tags),
                        None => indexes[t].incomplete = true,
                    }
                }
                indexes
            });
            (Some(tx), Some(handle), with_ids)
        }
        None => (None, None, Vec::new()),
    };
    let mut errors: Vec<Option<String>> = props
        .iter()
        .map(|p| p.iter().find_map(|r| r.as_ref().err().cloned()))
        .collect();
    let mut tables = Vec::new();
    let mut state: Vec<TenantTable> = (0..n).map(|_| TenantTable::default()).collect();
    let mut table = String::new();
    let mut table_no = 0usize;
    let mut schema: Option<SchemaRef> = None;
    let mut pending_total = 0usize;

    let start = |t: usize,
                 no: usize,
                 table_no: usize,
                 table: &str,
                 schema: &SchemaRef|
     -> Result<Part, String> {
        let key = part_key(&ids[t].0, &ids[t].1, table, no);
        let props = props[t][table_no].as_ref().map_err(Clone::clone)?.clone();
        let spill_err = |e: std::io::Error| {
            format!(
                "cannot create a spill file in {}: {e}",
                std::env::temp_dir().display()
            )
        };
        let file = tempfile::NamedTempFile::new().map_err(spill_err)?;
        let read_handle = file.reopen().map_err(spill_err)?;
        let sink = HashingFile::new(file, 64 << 10);
        let writer = ArrowWriter::try_new(sink, schema.clone(), Some(props))
            .map_err(|e| format!("table {table}: {e}"))?;
        let (progress, rx) = watch::channel(Progress::default());
        tx.send(Spill {
            tenant: t,
            key: key.clone(),
            file: read_handle,
            progress: rx,
        })
        .map_err(|_| "the uploader stopped".to_string())?;
        Ok(Part {
            no,
            key,
            writer,
            rows: 0,
            progress,
        })
    };
    // Finish the file and tell its upload task; the spill file is unlinked here, the upload
    // task reads on through its own handle.
    let close = |p: Part, table: &str, schema: &SchemaRef| -> Result<(), String> {
        let Part {
            key,
            writer,
            rows,
            progress,
            ..
        } = p;
        let HashingFile { inner, sha, bytes } = writer
            .into_inner()
            .map_err(|e| format!("table {table}: {e}"))?;
        inner.into_inner().map_err(|e| format!("spill file: {e}"))?;
        let entry = FileEntry {
            table: table.into(),
            path: key.to_string(),
            rows,
            bytes,
            sha256: hex(sha.finish().as_ref()),
            schema_fingerprint: schema_fingerprint(schema),
        };
        progress.send_modify(|p| {
            p.flushed = bytes;
            p.done = Some(entry);
        });
        Ok(())
    };
    // Encode a tenant's waiting batches as one row group (starting the next file if this one is full).
    let flush = |t: usize,
                 st: &mut TenantTable,
                 table_no: usize,
                 table: &str,
                 schema: &SchemaRef|
     -> Result<(), String> {
        if st.pending.is_empty() {
            return Ok(());
        }
        if st
            .part
            .as_ref()
            .is_some_and(|p| p.rows > 0 && p.rows + st.pending_rows > file_rows)
        {
            let p = st.part.take().expect("checked");
            let no = p.no + 1;
            close(p, table, schema)?;
            st.part = Some(start(t, no, table_no, table, schema)?);
        }
        if st.part.is_none() {
            st.part = Some(start(t, 0, table_no, table, schema)?);
        }
        let p = st.part.as_mut().expect("opened above");
        if let Some(tx) = tag_tx
            .as_ref()
            .filter(|_| with_ids.get(table_no).copied().unwrap_or(false))
        {
            // This flush becomes the next row group (or, past `row_group_rows`, the next two).
            let rg = p.writer.flushed_row_groups().len() as u32;
            tx.send((t, table_no, p.key.to_string(), rg, st.pending.clone()))
                .map_err(|_| "the subject-index thread stopped".to_string())?;
        }
        for b in st.pending.drain(..) {
            p.writer
                .write(&b)
                .map_err(|e| format!("table {table}: {e}"))?;
        }
        p.writer
            .flush()
            .map_err(|e| format!("table {table}: {e}"))?;
        p.rows += st.pending_rows;
        st.written += st.pending_rows;
        st.pending_rows = 0;
        st.pending_bytes = 0;
        p.publish().map_err(|e| format!("spill file: {e}"))
    };

    let t0 = std::time::Instant::now();
    let mut idle = std::time::Duration::ZERO;
    loop {
        let wait = std::time::Instant::now();
        let Ok(ev) = rx.recv() else { break };
        idle += wait.elapsed();
        match ev {
            ScanEvent::Begin {
                table: t,
                schema: s,
            } => {
                table = t;
                schema = Some(s);
            }
            ScanEvent::Failed { tenant, error } => {
                let st = std::mem::take(&mut state[tenant]);
                pending_total -= st.pending_bytes;
                errors[tenant].get_or_insert(error.to_string());
            }
            ScanEvent::Batch { tenant: t, batch } => {
                if errors[t].is_some() {
                    continue;
                }
                let s = schema.as_ref().expect("Begin precedes Batch");
                let st = &mut state[t];
                let bytes = batch.get_array_memory_size();
                st.pending_rows += batch.num_rows() as u64;
                st.pending_bytes += bytes;
                st.pending.push(batch);
                pending_total += bytes;
                let mut full = (st.pending_rows >= row_group_rows).then_some(t);
                loop {
                    // Over budget: the tenant with the most waiting goes first.
                    let t = match full.take() {
                        Some(t) => t,
                        None if pending_total > PENDING_BUDGET => state
                            .iter()
                            .enumerate()
                            .max_by_key(|(_, st)| st.pending_bytes)
                            .map(|(i, _)| i)
                            .expect("n > 0"),
                        None => break,
                    };
                    let st = &mut state[t];
                    pending_total -= st.pending_bytes;
                    if let Err(e) = flush(t, st, table_no, &table, s) {
                        *st = TenantTable::default();
                        errors[t].get_or_insert(e);
                    }
                }
            }
            ScanEvent::End { table: t, rows } => {
                let s = schema.take().expect("Begin precedes End");
                for tenant in 0..n {
                    let mut st = std::mem::take(&mut state[tenant]);
                    pending_total -= st.pending_bytes;
                    if errors[tenant].is_some() {
                        continue;
                    }
                    let done = (|| -> Result<(), String> {
                        flush(tenant, &mut st, table_no, &t, &s)?;
                        if st.written != rows[tenant] {
                            return Err(format!(
                                "table {t}: read {} rows but wrote {}",
                                rows[tenant], st.written
                            ));
                        }
                        // A tenant with no rows still gets a file: restore then recreates the table.
                        let p = match st.part.take() {
                            Some(p) => p,
                            None => start(tenant, 0, table_no, &t, &s)?,
                        };
                        close(p, &t, &s)
                    })();
                    if let Err(e) = done {
                        errors[tenant].get_or_insert(e);
                    }
                }
                let total: u64 = rows.iter().sum();
                tracing::info!(table = %t, rows = total, tenants = n, seconds = t0.elapsed().as_secs_f64(), "table read and encoded");
                tables.push((t, rows, schema_fingerprint(&s)));
                table_no += 1;
            }
        }
    }
    tracing::debug!(
        seconds = t0.elapsed().as_secs_f64(),
        idle_seconds = idle.as_secs_f64(),
        "encoder finished"
    );
    if schema.is_some() {
        return Err(format!("the source stopped in the middle of table {table}"));
    }
    drop(tag_tx);
    let indexes = match tagging {
        Some(h) => h
            .join()
            .map_err(|_| "the subject-index thread panicked".to_string())?,
        None => Vec::new(),
    };
    Ok((tables, errors, indexes))
}
