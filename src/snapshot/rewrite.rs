//! Rewriting a committed snapshot run without the rows of erased people (the backups phase of
//! an erasure): new part files, a new manifest generation committed by one PUT, then the old
//! files and every old version purged through the snapshot deleter.
//!
//! Crash safety: before the first new file is written, `_rewrite.json` in the run names the
//! files that will replace (`old`) and be written (`new`). At any instant a reader sees one
//! complete run — the manifest lists either every old file or every new one — and `snapshot
//! verify` tolerates the unlisted files the marker names. The next rewrite of the run first
//! finishes (manifest already new: purge the old files) or rolls back (manifest still old:
//! purge the new files) what the marker describes.

use std::collections::BTreeMap;
use std::path::Path;

use object_store::path::Path as ObjPath;
use serde::{Deserialize, Serialize};

use crate::erasure::ledger::Scrub;
use crate::keys::DataKey;
use crate::s3::S3Admin;
use crate::snapshot::manifest::Manifest;
use crate::snapshot::{SNAPSHOTS, SnapshotError, manifest_key, part_key};
use crate::store::Store;

pub const MARKER: &str = "_rewrite.json";
pub const FORMAT: &str = "lethe-rewrite/1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Marker {
    pub format: String,
    pub run_id: String,
    /// Files the new generation replaces.
    pub old: Vec<String>,
    /// Files of the new generation.
    pub new: Vec<String>,
}

pub fn marker_key(tenant: &str, run: &str) -> ObjPath {
    ObjPath::from(format!("{SNAPSHOTS}/tenant={tenant}/run={run}/{MARKER}"))
}

/// The marker of a rewrite in progress in a run, if any.
pub async fn marker(
    store: &Store,
    tenant: &str,
    run: &str,
) -> Result<Option<Marker>, SnapshotError> {
    let Some(b) = store.get_opt(&marker_key(tenant, run)).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&b)
        .map(Some)
        .map_err(|e| SnapshotError::BadManifest {
            key: marker_key(tenant, run).to_string(),
            message: format!("rewrite marker unreadable: {e}"),
        })
}

/// One file the rewrite replaced.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileChange {
    pub table: String,
    pub old_path: String,
    pub old_sha256: String,
    pub new_path: String,
    pub new_sha256: String,
    pub rows_dropped: u64,
}

/// What rewriting one run did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Rewritten {
    pub run_id: String,
    pub files: Vec<FileChange>,
    pub rows_dropped: u64,
    /// Files decrypted to look for the subjects.
    pub files_opened: usize,
    /// Old files and versions purged.
    pub objects_purged: u64,
}

/// Finish or roll back a rewrite a crash interrupted. Returns the manifest as it stands.
async fn recover(
    store: &Store,
    s3: Option<&S3Admin>,
    key: &DataKey,
    manifest: Manifest,
) -> Result<Manifest, crate::Error> {
    let (tenant, run) = (manifest.tenant.clone(), manifest.run_id.clone());
    let Some(m) = marker(store, &tenant, &run).await? else {
        return Ok(manifest);
    };
    let listed: Vec<&str> = manifest
        .files
        .iter()
        .map(|f| f.path.as_str())
        .chain(manifest.subject_index.as_ref().map(|i| i.path.as_str()))
        .collect();
    let committed = m.new.iter().all(|p| listed.contains(&p.as_str()));
    let garbage = if committed { &m.old } else { &m.new };
    tracing::warn!(tenant = %tenant, run = %run, committed, files = garbage.len(), "finishing a snapshot rewrite a crash interrupted");
    crate::snapshot::purge::purge_replaced(store, s3, &tenant, &run, garbage).await?;
    manifest
        .authenticate(key)
        .map_err(|message| SnapshotError::BadManifest {
            key: manifest_key(&tenant, &run).to_string(),
            message,
        })?;
    Ok(manifest)
}

/// Rewrite `manifest`'s run without the rows `scrub` drops. `None` when no file holds any of
/// them (nothing is written). `settings`: the snapshot writer's settings.
pub async fn rewrite_run(
    store: &Store,
    s3: Option<&S3Admin>,
    key: &DataKey,
    settings: &crate::config::SnapshotSection,
    manifest: Manifest,
    scrub: &Scrub<'_>,
) -> Result<Option<Rewritten>, crate::Error> {
    rewrite_runs(store, s3, settings, vec![(manifest, key.clone())], scrub)
        .await
        .pop()
        .expect("one result per run")
}

/// Downloaded bytes above which [`rewrite_runs`] filters what it has before downloading more.
const BATCH_BYTES: u64 = 1 << 30;
/// Runs downloaded at the same time.
const CONCURRENT_DOWNLOADS: usize = 4;
/// Runs committed (uploaded) at the same time: each holds an 8 MiB multipart buffer.
const CONCURRENT_COMMITS: usize = 2;

/// Rewrite several runs (of one tenant or several, each with its data key) without the rows
/// `scrub` drops: the candidate files of a batch of runs are filtered together, row group by
/// row group on every core, then each run is committed on its own. One result per run, in
/// order; a run that fails does not stop the others.
pub async fn rewrite_runs(
    store: &Store,
    s3: Option<&S3Admin>,
    settings: &crate::config::SnapshotSection,
    runs: Vec<(Manifest, DataKey)>,
    scrub: &Scrub<'_>,
) -> Vec<Result<Option<Rewritten>, crate::Error>> {
    use futures::StreamExt;
    let mut out = Vec::with_capacity(runs.len());
    let mut prepared = futures::stream::iter(runs)
        .map(|(manifest, key)| prepare(store, s3, key, manifest, scrub))
        .buffered(CONCURRENT_DOWNLOADS);
    loop {
        let mut batch: Vec<Result<Prepared, crate::Error>> = Vec::new();
        let mut bytes = 0u64;
        while bytes < BATCH_BYTES {
            let Some(p) = prepared.next().await else {
                break;
            };
            if let Ok(p) = &p {
                bytes += p.downloaded.iter().map(|d| d.2).sum::<u64>();
            }
            batch.push(p);
        }
        if batch.is_empty() {
            break;
        }
        let filtered = filter_batch(&batch, settings, scrub);
        let committed: Vec<_> = futures::stream::iter(batch.into_iter().zip(filtered))
            .map(|(p, f)| async move {
                match (p, f) {
                    (Ok(p), Ok(f)) => commit(store, s3, p, f).await,
                    (Err(e), _) | (_, Err(e)) => Err(e),
                }
            })
            .buffered(CONCURRENT_COMMITS)
            .collect()
            .await;
        out.extend(committed);
    }
    out
}

/// A run ready to be filtered: its candidate files downloaded.
struct Prepared {
    manifest: Manifest,
    key: DataKey,
    index: Option<crate::snapshot::index::SubjectIndex>,
    /// Index tags of the subjects that leave the index.
    gone: Vec<[u8; 16]>,
    /// (position in the manifest, downloaded file, bytes).
    downloaded: Vec<(usize, tempfile::NamedTempFile, u64)>,
}

/// Finish what a crash interrupted in the run, open its index, and download the files that may
/// hold the subjects: the ones the run's index names (every file of a table with identifier
/// columns when the run has no index).
async fn prepare(
    store: &Store,
    s3: Option<&S3Admin>,
    key: DataKey,
    manifest: Manifest,
    scrub: &Scrub<'_>,
) -> Result<Prepared, crate::Error> {
    let manifest = recover(store, s3, &key, manifest).await?;
    let index = read_index(store, &key, &manifest).await?;
    // Subjects whose rows in some tables are kept stay in the index (their kept rows are still
    // there); the others leave it. Without tags (an older ledger entry), every file is searched.
    let tags: Vec<[u8; 16]> = scrub.index_tags.iter().flatten().map(|(t, _)| *t).collect();
    let gone: Vec<[u8; 16]> = scrub
        .index_tags
        .iter()
        .flatten()
        .filter(|(_, kept)| !kept)
        .map(|(t, _)| *t)
        .collect();
    let index = index.filter(|_| scrub.index_tags.is_some());
    let named: Option<std::collections::BTreeSet<String>> = index.as_ref().map(|ix| {
        ix.files_holding(&tags)
            .into_iter()
            .map(String::from)
            .collect()
    });
    let mut downloaded = Vec::new();
    for (i, f) in manifest.files.iter().enumerate() {
        let candidate = match &named {
            Some(set) => set.contains(&f.path),
            None => scrub
                .data_map
                .tables
                .iter()
                .any(|t| t.name == f.table && !t.config.identifiers.is_empty()),
        };
        if candidate {
            downloaded.push((i, fetch(store, f).await?, f.bytes));
        }
    }
    Ok(Prepared {
        manifest,
        key,
        index,
        gone,
        downloaded,
    })
}

/// Filter the downloaded files of every prepared run together; per run, per downloaded file,
/// the filtered file.
fn filter_batch(
    batch: &[Result<Prepared, crate::Error>],
    settings: &crate::config::SnapshotSection,
    scrub: &Scrub<'_>,
) -> Vec<Result<Vec<crate::snapshot::refilter::Filtered>, crate::Error>> {
    use crate::snapshot::refilter::Source;
    let mut sources: Vec<Source<'_>> = Vec::new();
    let mut owner: Vec<usize> = Vec::new();
    let mut failed: Vec<Option<crate::Error>> = batch.iter().map(|_| None).collect();
    for (k, p) in batch.iter().enumerate() {
        let Ok(p) = p else { continue };
        for (i, tmp, _) in &p.downloaded {
            let f = &p.manifest.files[*i];
            match source(p, f, tmp.path(), settings, scrub) {
                Ok(src) => {
                    sources.push(src);
                    owner.push(k);
                }
                Err(e) => {
                    failed[k].get_or_insert(e);
                }
            }
        }
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let results = tokio::task::block_in_place(|| {
        crate::snapshot::refilter::filter_files(&sources, scrub, workers, settings.batch_rows)
    });
    let mut per_run: Vec<Vec<crate::snapshot::refilter::Filtered>> =
        batch.iter().map(|_| Vec::new()).collect();
    for (k, r) in owner.into_iter().zip(results) {
        match r {
            Ok(f) => per_run[k].push(f),
            Err(e) => {
                failed[k].get_or_insert(e.into());
            }
        }
    }
    per_run
        .into_iter()
        .zip(failed)
        .map(|(files, e)| match e {
            Some(e) => Err(e),
            None => Ok(files),
        })
        .collect()
}

/// What filtering one file of `p` needs: its table, its key, the new file's properties.
fn source<'a>(
    p: &'a Prepared,
    f: &'a crate::snapshot::manifest::FileEntry,
    path: &'a Path,
    settings: &crate::config::SnapshotSection,
    scrub: &Scrub<'_>,
) -> Result<crate::snapshot::refilter::Source<'a>, crate::Error> {
    let table = scrub
        .data_map
        .tables
        .iter()
        .find(|t| t.name == f.table)
        .ok_or_else(|| SnapshotError::Decode {
            key: f.path.clone(),
            message: format!("table {} is not in the data map", f.table),
        })?;
    let mut stats: Vec<&str> = vec![table.config.primary_key.as_str()];
    if let Some(tc) = &table.config.time_column {
        stats.push(tc);
    }
    let props =
        crate::snapshot::write::writer_properties(&p.key, settings, &stats).map_err(|e| {
            SnapshotError::Decode {
                key: f.path.clone(),
                message: e.to_string(),
            }
        })?;
    Ok(crate::snapshot::refilter::Source {
        path,
        display: &f.path,
        table: &f.table,
        key: &p.key,
        props,
    })
}

/// Commit one filtered run: marker, new files, new index, new manifest (one PUT), then purge
/// what they replace.
async fn commit(
    store: &Store,
    s3: Option<&S3Admin>,
    p: Prepared,
    filtered: Vec<crate::snapshot::refilter::Filtered>,
) -> Result<Option<Rewritten>, crate::Error> {
    let Prepared {
        manifest,
        key,
        index,
        gone,
        downloaded,
    } = p;
    let key = &key;
    let (tenant, run) = (manifest.tenant.clone(), manifest.run_id.clone());
    let opened = downloaded.len();
    // A file where nothing was dropped is not replaced.
    let hits: Vec<(usize, crate::snapshot::refilter::Filtered)> = downloaded
        .iter()
        .map(|d| d.0)
        .zip(filtered)
        .filter(|(_, f)| f.rows_dropped > 0)
        .collect();
    drop(downloaded);
    if hits.is_empty() {
        return Ok(None);
    }
    // New names after every part the run has.
    let mut next: BTreeMap<String, usize> = BTreeMap::new();
    for f in &manifest.files {
        let n = part_number(&f.path).unwrap_or(0);
        let e = next.entry(f.table.clone()).or_insert(0);
        *e = (*e).max(n + 1);
    }
    let mut plan = Vec::new();
    for (i, done) in hits {
        let f = &manifest.files[i];
        let n = next.get_mut(&f.table).expect("every table has a part");
        let new_path = part_key(&tenant, &run, &f.table, *n).to_string();
        *n += 1;
        plan.push((i, done, new_path));
    }
    let old_index = manifest.subject_index.as_ref().map(|i| i.path.clone());
    let new_index = old_index.as_ref().map(|p| {
        crate::snapshot::index::index_path(
            &tenant,
            &run,
            crate::snapshot::index::generation(p).unwrap_or(0) + 1,
        )
    });
    let marker = Marker {
        format: FORMAT.into(),
        run_id: run.clone(),
        old: plan
            .iter()
            .map(|p| manifest.files[p.0].path.clone())
            .chain(old_index.clone())
            .collect(),
        new: plan
            .iter()
            .map(|p| p.2.clone())
            .chain(new_index.clone())
            .collect(),
    };
    store
        .put(
            &marker_key(&tenant, &run),
            bytes::Bytes::from(serde_json::to_vec_pretty(&marker).expect("serializable")),
        )
        .await?;
    crate::retention::crash_point("after a rewrite marker");
    let mut next_manifest = manifest.clone();
    let mut out = Rewritten {
        run_id: run.clone(),
        files: Vec::new(),
        rows_dropped: 0,
        files_opened: opened,
        objects_purged: 0,
    };
    let mut row_groups = Vec::new();
    for (i, written, new_path) in plan {
        let f = &manifest.files[i];
        let bytes = upload(store, &written.file, &new_path).await?;
        if bytes != written.bytes {
            return Err(SnapshotError::LocalIo {
                path: written.file.path().into(),
                source: std::io::Error::other(format!(
                    "the spill file changed while it was uploaded ({} bytes written, {bytes} read)",
                    written.bytes
                )),
            }
            .into());
        }
        let sha = written.sha256.clone();
        crate::retention::crash_point("after a rewritten file");
        let dropped = written.rows_dropped;
        out.rows_dropped += dropped;
        out.files.push(FileChange {
            table: f.table.clone(),
            old_path: f.path.clone(),
            old_sha256: f.sha256.clone(),
            new_path: new_path.clone(),
            new_sha256: sha.clone(),
            rows_dropped: dropped,
        });
        row_groups.push((f.path.clone(), written.row_groups));
        let e = &mut next_manifest.files[i];
        e.path = new_path;
        e.rows = written.rows_written;
        e.bytes = bytes;
        e.sha256 = sha;
        if let Some(t) = next_manifest.tables.iter_mut().find(|t| t.table == f.table) {
            t.rows -= dropped;
        }
    }
    // The index of the new generation: the subjects gone, the replaced files renamed and their
    // row groups renumbered.
    if let (Some(ix), Some(path)) = (index, &new_index) {
        let renamed: Vec<(String, String, Vec<Option<u32>>)> = out
            .files
            .iter()
            .zip(row_groups)
            .map(|(f, (_, map))| (f.old_path.clone(), f.new_path.clone(), map))
            .collect();
        let mut next = ix.rewritten(&gone, &renamed);
        let sealed = next.seal(key, &run);
        next_manifest.subject_index = Some(crate::snapshot::index::IndexRef {
            path: path.clone(),
            bytes: sealed.len() as u64,
            sha256: crate::util::sha256_hex(&sealed),
            entries: next.entries.len() as u64,
        });
        store
            .put(&ObjPath::from(path.as_str()), bytes::Bytes::from(sealed))
            .await?;
    }
    // The new generation, committed by one PUT.
    store
        .put(
            &manifest_key(&tenant, &run),
            bytes::Bytes::from(next_manifest.to_bytes(key)),
        )
        .await?;
    crate::retention::crash_point("after a rewritten manifest");
    out.objects_purged =
        crate::snapshot::purge::purge_replaced(store, s3, &tenant, &run, &marker.old).await?;
    Ok(Some(out))
}

/// The run's subject index, checked against the manifest and opened; `None` for a run without.
pub async fn read_index(
    store: &Store,
    key: &DataKey,
    manifest: &Manifest,
) -> Result<Option<crate::snapshot::index::SubjectIndex>, crate::Error> {
    let Some(ix) = &manifest.subject_index else {
        return Ok(None);
    };
    let bytes = store.get(&ObjPath::from(ix.path.as_str())).await?;
    if bytes.len() as u64 != ix.bytes || crate::util::sha256_hex(&bytes) != ix.sha256 {
        return Err(SnapshotError::Decode {
            key: ix.path.clone(),
            message:
                "subject index checksum mismatch against the manifest (run `lethe snapshot verify`)"
                    .into(),
        }
        .into());
    }
    crate::snapshot::index::SubjectIndex::open(key, &manifest.run_id, &bytes)
        .map(Some)
        .ok_or_else(|| {
            SnapshotError::Decode {
                key: ix.path.clone(),
                message: "the subject index does not open with the tenant's data key".into(),
            }
            .into()
        })
}

/// Rows `scrub` would drop from the files `paths` of `manifest` (a full scan: the verification
/// of a rewrite).
pub async fn rows_left(
    store: &Store,
    key: &DataKey,
    manifest: &Manifest,
    scrub: &Scrub<'_>,
    paths: &[String],
) -> Result<u64, crate::Error> {
    let mut n = 0;
    for f in manifest.files.iter().filter(|f| paths.contains(&f.path)) {
        n += scan(store, key, f, scrub).await?.1;
    }
    Ok(n)
}

fn part_number(path: &str) -> Option<usize> {
    path.rsplit('/')
        .next()?
        .strip_prefix("part-")?
        .strip_suffix(".parquet")?
        .parse()
        .ok()
}

/// Download `f` into a private temporary file and check it against the manifest.
async fn fetch(
    store: &Store,
    f: &crate::snapshot::manifest::FileEntry,
) -> Result<tempfile::NamedTempFile, crate::Error> {
    let (tmp, bytes, sha) =
        crate::snapshot::read::download(store, &ObjPath::from(f.path.as_str())).await?;
    if bytes != f.bytes || sha != f.sha256 {
        return Err(SnapshotError::Decode {
            key: f.path.clone(),
            message: "checksum mismatch against the manifest; not rewriting it (run `lethe snapshot verify`)".into(),
        }
        .into());
    }
    Ok(tmp)
}

/// Download `f`, check it against the manifest, and count the rows `scrub` drops.
async fn scan(
    store: &Store,
    key: &DataKey,
    f: &crate::snapshot::manifest::FileEntry,
    scrub: &Scrub<'_>,
) -> Result<(tempfile::NamedTempFile, u64), crate::Error> {
    let tmp = fetch(store, f).await?;
    let file = tmp.reopen().map_err(|e| SnapshotError::LocalIo {
        path: tmp.path().into(),
        source: e,
    })?;
    let dec = |e: &dyn std::fmt::Display| SnapshotError::Decode {
        key: f.path.clone(),
        message: e.to_string(),
    };
    // Only the identifier columns: what the filter looks at.
    let builder = crate::snapshot::read::open_reader(file, Some(key), &f.path)?;
    let ids: Vec<&str> = scrub
        .data_map
        .tables
        .iter()
        .find(|t| t.name == f.table)
        .map(|t| t.config.identifiers.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let mask = parquet::arrow::ProjectionMask::columns(builder.parquet_schema(), ids);
    let reader = builder.with_projection(mask).build().map_err(|e| dec(&e))?;
    let (mut dropped, mut cache) = (0, crate::erasure::ledger::ScrubCache::default());
    for b in reader {
        let b = b.map_err(|e| dec(&e))?;
        dropped += scrub
            .filter_cached(&f.table, b, &mut cache)
            .map_err(|e| dec(&e))?
            .1;
    }
    Ok((tmp, dropped))
}

/// Upload a spill file to `path`; its length.
async fn upload(
    store: &Store,
    file: &tempfile::NamedTempFile,
    path: &str,
) -> Result<u64, crate::Error> {
    use tokio::io::AsyncWriteExt;
    let io = |e: std::io::Error| SnapshotError::LocalIo {
        path: file.path().into(),
        source: e,
    };
    let mut src = tokio::fs::File::open(file.path()).await.map_err(io)?;
    let mut w = store.multipart_writer(&ObjPath::from(path), 8 << 20);
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = tokio::io::AsyncReadExt::read(&mut src, &mut buf)
            .await
            .map_err(io)?;
        if k == 0 {
            break;
        }
        n += k as u64;
        w.write_all(&buf[..k]).await.map_err(io)?;
    }
    w.shutdown().await.map_err(io)?;
    Ok(n)
}
