//! Writing snapshot runs. Three stages overlap, each bounded:
//!
//! ```text
//! [reader thread]   one pass per table, rows → per-tenant Arrow batches ─(bounded channel)─▶
//! [encoder thread]  one ArrowWriter per tenant (zstd + AES-GCM) → private spill file, sha256 on the fly ─▶
//! [upload task]     each finished file → object store (multipart above 8 MiB), 2 at a time
//! ```
//! Memory: the reader's builders (≈32 MiB over all tenants), the channel (8 batches), and the
//! encoders' in-progress row groups, capped at [`ENCODER_BUDGET`] by flushing the largest row
//! group early; never the table. Finished files wait on local disk (the spill directory,
//! `$TMPDIR`), not in memory, until they are uploaded.
//!
//! Commit: a tenant's `_manifest.json` is written only after every one of its files has been
//! uploaded. A crash or an error at any earlier point leaves an uncommitted run that readers
//! ignore and `verify` reports. A tenant whose rows cannot be read fails alone; the others commit.

use std::io::{BufWriter as IoBufWriter, Read, Write};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};

use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use futures::StreamExt;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjPath;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::encryption::encrypt::FileEncryptionProperties;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use ring::digest;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::manifest::{FORMAT, FileEntry, Manifest, TableEntry, schema_fingerprint};
use super::{SnapshotError, manifest_key, part_key};
use crate::config::{SnapshotSection, SourceUrl};
use crate::datamap::DataMap;
use crate::keys::DataKey;
use crate::source::{ScanEvent, ScanPlan, Source};
use crate::store::Store;
use crate::util::{hex, rfc3339};

/// Multipart part size (S3 needs at least 5 MiB) and parts in flight per upload.
const PART: usize = 8 << 20;
const UPLOAD_CONCURRENCY: usize = 2;
/// Files uploaded at once.
const FILES_IN_FLIGHT: usize = 2;
/// Cap on the encoded, not yet written row groups of all tenants' writers together.
pub const ENCODER_BUDGET: usize = 64 << 20;

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
}

/// Writer properties of a snapshot file: zstd, bounded row groups, AES-GCM with the footer and
/// every column encrypted under the tenant's data key.
pub fn writer_properties(
    key: &DataKey,
    s: &SnapshotSection,
) -> parquet::errors::Result<WriterProperties> {
    let enc = FileEncryptionProperties::builder(key.key.clone())
        .with_footer_key_metadata(key.footer_key_metadata.clone())
        .build()?;
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(s.zstd_level)?))
        .set_max_row_group_row_count(Some(s.row_group_rows))
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_created_by(format!("lethe {}", env!("CARGO_PKG_VERSION")))
        .with_file_encryption_properties(enc)
        .build())
}

/// A `Write` into a private spill file that hashes and counts what passes.
struct HashingFile {
    inner: IoBufWriter<tempfile::NamedTempFile>,
    sha: digest::Context,
    bytes: u64,
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

/// A finished part file waiting for upload.
struct Finished {
    tenant: usize,
    file: tempfile::NamedTempFile,
    entry: FileEntry,
}

/// The file a tenant's rows of the current table are going into.
struct Part {
    no: usize,
    key: ObjPath,
    writer: ArrowWriter<HashingFile>,
    rows: u64,
    /// Last measured memory of the writer (for the budget).
    mem: usize,
}

/// The outcome per tenant: its manifest and the seconds from the start of the run to its
/// commit, or why it failed.
pub type TenantResult = (String, Result<(Manifest, f64), SnapshotError>);

/// Snapshot `jobs` (one per tenant) in one pass over the source, then commit each tenant that
/// succeeded with its manifest.
pub async fn snapshot_run(store: &Store, spec: RunSpec, jobs: Vec<TenantJob>) -> Vec<TenantResult> {
    let created_at = rfc3339(chrono::Utc::now());
    let started = std::time::Instant::now();
    let n = jobs.len();
    let plan = ScanPlan {
        tables: spec
            .data_map
            .tables
            .iter()
            .map(|t| t.name.clone())
            .collect(),
        tenants: jobs.iter().map(|j| j.tenant.clone()).collect(),
        batch_rows: spec.settings.batch_rows,
    };
    let mut errors: Vec<Option<String>> = vec![None; n];
    let props: Vec<Result<WriterProperties, String>> = jobs
        .iter()
        .map(|j| writer_properties(&j.key, &spec.settings).map_err(|e| e.to_string()))
        .collect();

    let (scan_tx, scan_rx) = sync_channel::<ScanEvent>(8);
    let (up_tx, up_rx) = mpsc::channel::<Finished>(FILES_IN_FLIGHT * 2);

    let reader = {
        let (src, dm, plan) = (spec.source.clone(), spec.data_map.clone(), plan.clone());
        tokio::task::spawn_blocking(move || Source::open(&src)?.scan(&dm, &plan, &scan_tx))
    };
    let encoder = {
        let ids: Vec<(String, String)> = jobs
            .iter()
            .map(|j| (j.tenant.clone(), j.run_id.clone()))
            .collect();
        let file_rows = spec.settings.file_rows as u64;
        tokio::task::spawn_blocking(move || encode(scan_rx, up_tx, props, ids, file_rows))
    };
    let uploader = {
        let store = store.clone();
        async move {
            tokio_stream_of(up_rx)
                .map(|f| {
                    let store = store.clone();
                    async move {
                        let r = upload_file(&store, &f.file, &f.entry.path).await;
                        (f.tenant, f.entry, r)
                    }
                })
                .buffer_unordered(FILES_IN_FLIGHT)
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
    let (tables, tenant_errors) = match encoded {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => (Vec::new(), vec![Some(e); n]),
        Err(join) => (
            Vec::new(),
            vec![Some(format!("the encoder stopped: {join}")); n],
        ),
    };
    for (t, e) in tenant_errors.into_iter().enumerate() {
        if let Some(e) = fatal.clone().or(e) {
            errors[t].get_or_insert(e);
        }
    }
    let mut files: Vec<Vec<FileEntry>> = vec![Vec::new(); n];
    for (t, entry, r) in uploads {
        match r {
            Ok(()) => files[t].push(entry),
            Err(e) => {
                errors[t].get_or_insert(e);
            }
        }
    }

    let mut out = Vec::with_capacity(n);
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
            committed_at: rfc3339(chrono::Utc::now()),
            tool_version: format!("lethe {}", env!("CARGO_PKG_VERSION")),
            policy_version: spec.policy_version.clone(),
            policy_hash: spec.policy_hash.clone(),
            key_id: job.key.key_id.clone(),
            master_key_id: spec.master_key_id.clone(),
            tables,
            files,
            checksum: String::new(),
        };
        let body = manifest.to_bytes();
        let r = store
            .put(&manifest_key(&job.tenant, &job.run_id), Bytes::from(body))
            .await;
        out.push((
            job.tenant,
            r.map(|()| (manifest, started.elapsed().as_secs_f64()))
                .map_err(SnapshotError::from),
        ));
    }
    out
}

fn tokio_stream_of<T: Send + 'static>(mut rx: mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Stream a spill file into the store; errors name the object key.
async fn upload_file(
    store: &Store,
    file: &tempfile::NamedTempFile,
    key: &str,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("upload of {key} failed: {e}");
    let mut f = file.reopen().map_err(|e| err(&e))?;
    let mut w = BufWriter::with_capacity(store.inner.clone(), ObjPath::from(key), PART)
        .with_max_concurrency(UPLOAD_CONCURRENCY);
    loop {
        let mut buf = vec![0u8; PART];
        let mut filled = 0;
        while filled < buf.len() {
            match f.read(&mut buf[filled..]).map_err(|e| err(&e))? {
                0 => break,
                k => filled += k,
            }
        }
        if filled == 0 {
            break;
        }
        buf.truncate(filled);
        if let Err(e) = w.put(Bytes::from(buf)).await {
            let _ = w.abort().await;
            return Err(err(&e));
        }
    }
    if let Err(e) = w.shutdown().await {
        let _ = w.abort().await;
        return Err(err(&e));
    }
    Ok(())
}

/// Per table: name, rows per tenant, schema fingerprint.
type TableRows = (String, Vec<u64>, String);
/// Tables read, and per tenant the error that stopped it.
type Encoded = (Vec<TableRows>, Vec<Option<String>>);

fn encode(
    rx: Receiver<ScanEvent>,
    tx: mpsc::Sender<Finished>,
    props: Vec<Result<WriterProperties, String>>,
    ids: Vec<(String, String)>,
    file_rows: u64,
) -> Result<Encoded, String> {
    let n = ids.len();
    let mut errors: Vec<Option<String>> = props.iter().map(|p| p.as_ref().err().cloned()).collect();
    let mut tables = Vec::new();
    let mut parts: Vec<Option<Part>> = (0..n).map(|_| None).collect();
    let mut table = String::new();
    let mut schema: Option<SchemaRef> = None;
    let mut mem_total = 0usize;
    // Rows written per tenant for the current table, checked against the reader's count.
    let mut written = vec![0u64; n];

    let start = |t: usize, no: usize, table: &str, schema: &SchemaRef| -> Result<Part, String> {
        let key = part_key(&ids[t].0, &ids[t].1, table, no);
        let props = props[t].as_ref().map_err(Clone::clone)?.clone();
        let file = tempfile::NamedTempFile::new().map_err(|e| {
            format!(
                "cannot create a spill file in {}: {e}",
                std::env::temp_dir().display()
            )
        })?;
        let sink = HashingFile {
            inner: IoBufWriter::with_capacity(1 << 20, file),
            sha: digest::Context::new(&digest::SHA256),
            bytes: 0,
        };
        let writer = ArrowWriter::try_new(sink, schema.clone(), Some(props))
            .map_err(|e| format!("table {table}: {e}"))?;
        Ok(Part {
            no,
            key,
            writer,
            rows: 0,
            mem: 0,
        })
    };
    let close = |t: usize, p: Part, table: &str, schema: &SchemaRef| -> Result<Finished, String> {
        let sink = p
            .writer
            .into_inner()
            .map_err(|e| format!("table {table}: {e}"))?;
        let HashingFile { inner, sha, bytes } = sink;
        let file = inner.into_inner().map_err(|e| format!("spill file: {e}"))?;
        let entry = FileEntry {
            table: table.into(),
            path: p.key.to_string(),
            rows: p.rows,
            bytes,
            sha256: hex(sha.finish().as_ref()),
            schema_fingerprint: schema_fingerprint(schema),
        };
        Ok(Finished {
            tenant: t,
            file,
            entry,
        })
    };
    let ship = |f: Finished| {
        tx.blocking_send(f)
            .map_err(|_| "the uploader stopped".to_string())
    };

    for ev in rx {
        match ev {
            ScanEvent::Begin {
                table: t,
                schema: s,
            } => {
                table = t;
                schema = Some(s);
                written.iter_mut().for_each(|w| *w = 0);
            }
            ScanEvent::Failed { tenant, error } => {
                if let Some(p) = parts[tenant].take() {
                    mem_total -= p.mem;
                }
                errors[tenant].get_or_insert(error.to_string());
            }
            ScanEvent::Batch { tenant: t, batch } => {
                if errors[t].is_some() {
                    continue;
                }
                let s = schema.as_ref().expect("Begin precedes Batch");
                let result = (|| -> Result<(), String> {
                    if parts[t]
                        .as_ref()
                        .is_some_and(|p| p.rows > 0 && p.rows + batch.num_rows() as u64 > file_rows)
                    {
                        let p = parts[t].take().expect("checked");
                        mem_total -= p.mem;
                        let no = p.no + 1;
                        ship(close(t, p, &table, s)?)?;
                        parts[t] = Some(start(t, no, &table, s)?);
                    }
                    if parts[t].is_none() {
                        parts[t] = Some(start(t, 0, &table, s)?);
                    }
                    let p = parts[t].as_mut().expect("opened above");
                    p.writer
                        .write(&batch)
                        .map_err(|e| format!("table {table}: {e}"))?;
                    p.rows += batch.num_rows() as u64;
                    written[t] += batch.num_rows() as u64;
                    let mem = p.writer.memory_size();
                    mem_total = mem_total + mem - p.mem;
                    p.mem = mem;
                    Ok(())
                })();
                if let Err(e) = result {
                    if let Some(p) = parts[t].take() {
                        mem_total -= p.mem;
                    }
                    errors[t].get_or_insert(e);
                }
                // Over budget: close the biggest in-progress row groups early.
                while mem_total > ENCODER_BUDGET {
                    let Some((big, _)) = parts
                        .iter()
                        .enumerate()
                        .filter_map(|(i, p)| p.as_ref().map(|p| (i, p.mem)))
                        .max_by_key(|x| x.1)
                    else {
                        break;
                    };
                    let p = parts[big].as_mut().expect("found above");
                    let flushed = p.writer.flush().map_err(|e| format!("table {table}: {e}"));
                    let mem = p.writer.memory_size();
                    mem_total = mem_total + mem - p.mem;
                    p.mem = mem;
                    if let Err(e) = flushed {
                        errors[big].get_or_insert(e);
                    }
                    if mem >= ENCODER_BUDGET / 2 {
                        break;
                    }
                }
            }
            ScanEvent::End { table: t, rows } => {
                let s = schema.take().expect("Begin precedes End");
                for tenant in 0..n {
                    if errors[tenant].is_none() && written[tenant] != rows[tenant] {
                        errors[tenant] = Some(format!(
                            "table {t}: read {} rows but wrote {}",
                            rows[tenant], written[tenant]
                        ));
                    }
                    if errors[tenant].is_some() {
                        if let Some(p) = parts[tenant].take() {
                            mem_total -= p.mem;
                        }
                        continue;
                    }
                    // A tenant with no rows still gets a file: restore then recreates the table.
                    let p = match parts[tenant].take() {
                        Some(p) => p,
                        None => match start(tenant, 0, &t, &s) {
                            Ok(p) => p,
                            Err(e) => {
                                errors[tenant].get_or_insert(e);
                                continue;
                            }
                        },
                    };
                    mem_total -= p.mem;
                    match close(tenant, p, &t, &s) {
                        Ok(f) => ship(f)?,
                        Err(e) => {
                            errors[tenant].get_or_insert(e);
                        }
                    }
                }
                tables.push((t, rows, schema_fingerprint(&s)));
            }
        }
    }
    if schema.is_some() {
        return Err(format!("the source stopped in the middle of table {table}"));
    }
    Ok((tables, errors))
}
