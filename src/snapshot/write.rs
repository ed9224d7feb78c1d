//! Writing one tenant's snapshot run: three stages overlap so that reading, encoding and
//! uploading proceed at once, each bounded:
//!
//! ```text
//! [reader thread]  source rows → Arrow batches ─(bounded channel, 4 batches)─▶
//! [encoder thread] ArrowWriter (zstd + AES-GCM) → 8 MiB chunks, sha256 on the fly ─(bounded, 4 chunks)─▶
//! [upload task]    object_store multipart upload, one object per part file
//! ```
//! Memory is bounded by one row group in the encoder plus the channel depths, never by the
//! table. The manifest is written only after every part file has been uploaded: a crash or an
//! error at any earlier point leaves an uncommitted run that readers ignore and `verify` reports.

use std::io::Write;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};

use arrow::datatypes::SchemaRef;
use bytes::Bytes;
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
use crate::source::{ReadEvent, Source};
use crate::store::Store;
use crate::util::{hex, rfc3339};

const CHUNK: usize = 8 << 20;

/// What one tenant's run needs.
pub struct TenantJob {
    pub tenant: String,
    pub run_id: String,
    pub source: SourceUrl,
    pub data_map: Arc<DataMap>,
    pub key: DataKey,
    pub master_key_id: String,
    pub policy_version: String,
    pub policy_hash: String,
    pub settings: SnapshotSection,
}

/// Messages from the encoder to the uploader.
enum Upload {
    Start(ObjPath),
    Chunk(Bytes),
    Finish,
}

/// A `Write` that hands full chunks to the uploader and hashes everything it passes on.
struct ChunkSink {
    buf: Vec<u8>,
    tx: mpsc::Sender<Upload>,
    sha: digest::Context,
    bytes: u64,
}

impl ChunkSink {
    fn new(tx: mpsc::Sender<Upload>) -> Self {
        ChunkSink {
            buf: Vec::with_capacity(CHUNK),
            tx,
            sha: digest::Context::new(&digest::SHA256),
            bytes: 0,
        }
    }

    fn send_buf(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.sha.update(&chunk);
        self.bytes += chunk.len() as u64;
        self.tx
            .blocking_send(Upload::Chunk(Bytes::from(chunk)))
            .map_err(|_| std::io::Error::other("upload stopped"))
    }

    /// Send what is left; return (bytes, sha256 hex).
    fn finish(mut self) -> std::io::Result<(u64, String)> {
        self.send_buf()?;
        self.tx
            .blocking_send(Upload::Finish)
            .map_err(|_| std::io::Error::other("upload stopped"))?;
        Ok((self.bytes, hex(self.sha.finish().as_ref())))
    }
}

impl Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send_buf()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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

/// Snapshot one tenant: stream every table of the data map into encrypted Parquet, upload,
/// then commit with the manifest. Returns the manifest.
pub async fn snapshot_tenant(store: &Store, job: TenantJob) -> Result<Manifest, SnapshotError> {
    let created_at = rfc3339(chrono::Utc::now());
    let failed = |tenant: &str, message: String| SnapshotError::Failed {
        tenant: tenant.into(),
        message,
    };
    let tables: Vec<String> = job.data_map.tables.iter().map(|t| t.name.clone()).collect();

    let (read_tx, read_rx) = sync_channel::<ReadEvent>(4);
    let (up_tx, up_rx) = mpsc::channel::<Upload>(4);

    let reader = {
        let (src, dm, tenant, tables, batch) = (
            job.source.clone(),
            job.data_map.clone(),
            job.tenant.clone(),
            tables.clone(),
            job.settings.batch_rows,
        );
        tokio::task::spawn_blocking(move || {
            let source = Source::open(&src)?;
            source.read_tenant(&tenant, &dm, &tables, batch, &read_tx)
        })
    };
    let encoder = {
        let props =
            writer_properties(&job.key, &job.settings).map_err(|e| SnapshotError::Encode {
                tenant: job.tenant.clone(),
                table: String::new(),
                message: e.to_string(),
            })?;
        let (tenant, run, file_rows) = (
            job.tenant.clone(),
            job.run_id.clone(),
            job.settings.file_rows,
        );
        tokio::task::spawn_blocking(move || encode(read_rx, up_tx, props, &tenant, &run, file_rows))
    };
    let upload = upload(store.clone(), up_rx);

    let (up_res, enc_res, read_res) = tokio::join!(upload, encoder, reader);
    // Report the root cause: a reader error explains an encoder "disconnected", and so on.
    let read_res = read_res.map_err(|e| failed(&job.tenant, e.to_string()))?;
    if let Err(e) = read_res
        && !matches!(e, crate::source::SourceError::Disconnected)
    {
        return Err(failed(&job.tenant, e.to_string()));
    }
    up_res?;
    let (tables, files) = enc_res.map_err(|e| failed(&job.tenant, e.to_string()))??;

    let manifest = Manifest {
        format: FORMAT.into(),
        run_id: job.run_id.clone(),
        tenant: job.tenant.clone(),
        created_at,
        committed_at: rfc3339(chrono::Utc::now()),
        tool_version: format!("lethe {}", env!("CARGO_PKG_VERSION")),
        policy_version: job.policy_version,
        policy_hash: job.policy_hash,
        key_id: job.key.key_id.clone(),
        master_key_id: job.master_key_id,
        tables,
        files,
    };
    let body = serde_json::to_vec_pretty(&manifest).expect("serializable");
    store
        .put(&manifest_key(&job.tenant, &job.run_id), Bytes::from(body))
        .await?;
    Ok(manifest)
}

async fn upload(store: Store, mut rx: mpsc::Receiver<Upload>) -> Result<(), SnapshotError> {
    let mut current: Option<(ObjPath, BufWriter)> = None;
    let err = |key: &ObjPath, e: std::io::Error| SnapshotError::Failed {
        tenant: String::new(),
        message: format!("upload of {key} failed: {e}"),
    };
    while let Some(msg) = rx.recv().await {
        match msg {
            Upload::Start(key) => {
                current = Some((
                    key.clone(),
                    BufWriter::with_capacity(store.inner.clone(), key, CHUNK),
                ));
            }
            Upload::Chunk(b) => {
                let (key, w) = current.as_mut().expect("Start precedes Chunk");
                w.write_all(&b).await.map_err(|e| err(key, e))?;
            }
            Upload::Finish => {
                let (key, mut w) = current.take().expect("Start precedes Finish");
                w.shutdown().await.map_err(|e| err(&key, e))?;
            }
        }
    }
    if let Some((_, mut w)) = current {
        // The encoder stopped mid-file: abandon the multipart upload.
        let _ = w.abort().await;
    }
    Ok(())
}

type Encoded = (Vec<TableEntry>, Vec<FileEntry>);

/// One part file being written.
struct Part {
    key: ObjPath,
    writer: ArrowWriter<ChunkSink>,
    rows: u64,
}

fn encode(
    rx: Receiver<ReadEvent>,
    tx: mpsc::Sender<Upload>,
    props: WriterProperties,
    tenant: &str,
    run: &str,
    file_rows: usize,
) -> Result<Encoded, SnapshotError> {
    let mut tables = Vec::new();
    let mut files = Vec::new();
    let mut table = String::new();
    let mut schema: Option<SchemaRef> = None;
    let mut part: Option<Part> = None;
    let mut part_no = 0usize;
    let enc_err = |table: &str, e: &dyn std::fmt::Display| SnapshotError::Encode {
        tenant: tenant.into(),
        table: table.into(),
        message: e.to_string(),
    };

    let start = |table: &str, n: usize, schema: &SchemaRef| -> Result<Part, SnapshotError> {
        let key = part_key(tenant, run, table, n);
        tx.blocking_send(Upload::Start(key.clone()))
            .map_err(|_| enc_err(table, &"upload stopped"))?;
        let writer = ArrowWriter::try_new(
            ChunkSink::new(tx.clone()),
            schema.clone(),
            Some(props.clone()),
        )
        .map_err(|e| enc_err(table, &e))?;
        Ok(Part {
            key,
            writer,
            rows: 0,
        })
    };
    let close = |table: &str, p: Part, schema: &SchemaRef| -> Result<FileEntry, SnapshotError> {
        let sink = p.writer.into_inner().map_err(|e| enc_err(table, &e))?;
        let (bytes, sha256) = sink.finish().map_err(|e| enc_err(table, &e))?;
        Ok(FileEntry {
            table: table.into(),
            path: p.key.to_string(),
            rows: p.rows,
            bytes,
            sha256,
            schema_fingerprint: schema_fingerprint(schema),
        })
    };

    for ev in rx {
        match ev {
            ReadEvent::Begin {
                table: t,
                schema: s,
            } => {
                table = t;
                part_no = 0;
                part = Some(start(&table, part_no, &s)?);
                schema = Some(s);
            }
            ReadEvent::Batch(b) => {
                let s = schema.as_ref().expect("Begin precedes Batch");
                if part
                    .as_ref()
                    .is_some_and(|p| p.rows > 0 && p.rows + b.num_rows() as u64 > file_rows as u64)
                {
                    files.push(close(&table, part.take().unwrap(), s)?);
                    part_no += 1;
                    part = Some(start(&table, part_no, s)?);
                }
                let p = part.as_mut().expect("a part is open");
                p.writer.write(&b).map_err(|e| enc_err(&table, &e))?;
                p.rows += b.num_rows() as u64;
            }
            ReadEvent::End { table: t, rows } => {
                let s = schema.take().expect("Begin precedes End");
                files.push(close(&t, part.take().expect("a part is open"), &s)?);
                let written: u64 = files.iter().filter(|f| f.table == t).map(|f| f.rows).sum();
                if written != rows {
                    return Err(enc_err(
                        &t,
                        &format!("read {rows} rows but wrote {written}"),
                    ));
                }
                tables.push(TableEntry {
                    table: t,
                    rows,
                    schema_fingerprint: schema_fingerprint(&s),
                });
            }
        }
    }
    if part.is_some() {
        return Err(enc_err(
            &table,
            &"the source stopped in the middle of the table",
        ));
    }
    Ok((tables, files))
}
