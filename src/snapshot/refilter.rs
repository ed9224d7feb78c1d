//! Filtering encrypted snapshot files on every core: each file is read and written row group by
//! row group, and the row groups of all the files of one call are spread over a few worker
//! threads, so that one big file and many small ones keep every core busy alike.
//!
//! A worker takes the next row group in (file, row group) order, decrypts and decodes it, drops
//! the rows the filter drops, and — once every earlier row group of its file has been filtered,
//! which fixes its ordinal in the new file (row groups left empty are not written) — encodes and
//! encrypts it with column writers of that ordinal (the ordinal is part of every module's AAD).
//! Encoded row groups are appended to the new file strictly in order by whichever worker
//! completes the sequence; the last one writes the footer.
//!
//! Memory: per worker one decoded row group and its encoded pages, plus encoded row groups
//! waiting for an earlier one (at most one per other worker). Never a whole file.
//!
//! A row group keeps its rows and its place: old row group `r` becomes new row group
//! `map[r]` (or nothing, when all its rows were dropped), which is what the subject index needs.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder};
use parquet::arrow::arrow_writer::{ArrowColumnChunk, ArrowRowGroupWriterFactory, compute_leaves};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;

use crate::erasure::ledger::ScrubCache;
use crate::keys::DataKey;
use crate::snapshot::SnapshotError;
use crate::snapshot::write::HashingFile;

/// One file to filter.
pub struct Source<'a> {
    /// The downloaded encrypted file.
    pub path: &'a Path,
    /// Its object key (for messages).
    pub display: &'a str,
    /// The table it belongs to (what the filter is told).
    pub table: &'a str,
    /// The tenant's data key: the file is decrypted with it and the new file encrypted.
    pub key: &'a DataKey,
    /// Properties of the new file (the snapshot writer's, with this tenant's key).
    pub props: WriterProperties,
}

/// One filtered file.
pub struct Filtered {
    /// The new encrypted file (private spill file).
    pub file: tempfile::NamedTempFile,
    /// Its length and sha256 (hex), taken as it was written.
    pub bytes: u64,
    pub sha256: String,
    pub rows_dropped: u64,
    pub rows_written: u64,
    /// Old row group → new row group (`None`: every row of it was dropped).
    pub row_groups: Vec<Option<u32>>,
}

/// The filter: `(table, batch, cache)` → (kept rows, rows dropped).
pub trait RowFilter: Sync {
    fn filter(
        &self,
        table: &str,
        batch: RecordBatch,
        cache: &mut ScrubCache,
    ) -> Result<(RecordBatch, u64), arrow::error::ArrowError>;
}

impl RowFilter for crate::erasure::ledger::Scrub<'_> {
    fn filter(
        &self,
        table: &str,
        batch: RecordBatch,
        cache: &mut ScrubCache,
    ) -> Result<(RecordBatch, u64), arrow::error::ArrowError> {
        self.filter_cached(table, batch, cache)
    }
}

type Writer = SerializedFileWriter<HashingFile>;

/// Per-file progress, shared by the workers.
#[derive(Default)]
struct State {
    /// Rows each old row group kept (`None`: not filtered yet).
    kept: Vec<Option<usize>>,
    /// The new file, its writer and its column-writer factory (created by the first worker).
    out: Option<(Writer, Arc<ArrowRowGroupWriterFactory>)>,
    /// Encoded row groups waiting for an earlier one, by new ordinal.
    waiting: BTreeMap<usize, Vec<ArrowColumnChunk>>,
    next_append: usize,
    finished: usize,
    dropped: u64,
    written: u64,
    error: Option<SnapshotError>,
    done: Option<(tempfile::NamedTempFile, u64, String)>,
}

struct Job<'a> {
    src: &'a Source<'a>,
    meta: ArrowReaderMetadata,
    state: Mutex<State>,
    turn: Condvar,
}

/// Filter every file in `sources` with `filter` on `workers` threads, reading batches of
/// `batch_rows`. One result per source, in order.
pub fn filter_files(
    sources: &[Source<'_>],
    filter: &dyn RowFilter,
    workers: usize,
    batch_rows: usize,
) -> Vec<Result<Filtered, SnapshotError>> {
    let mut jobs: Vec<Result<Job<'_>, SnapshotError>> = Vec::new();
    for src in sources {
        jobs.push(open(src).map(|meta| {
            let n = meta.metadata().num_row_groups();
            Job {
                src,
                meta,
                state: Mutex::new(State {
                    kept: vec![None; n],
                    ..State::default()
                }),
                turn: Condvar::new(),
            }
        }));
    }
    // Every (file, row group), in order; a file without row groups gets one task that only
    // writes the (empty) new file.
    let tasks: Vec<(usize, Option<usize>)> = jobs
        .iter()
        .enumerate()
        .flat_map(|(j, job)| {
            let n = job
                .as_ref()
                .map_or(0, |job| job.meta.metadata().num_row_groups());
            let rgs: Vec<Option<usize>> = if n == 0 {
                vec![None]
            } else {
                (0..n).map(Some).collect()
            };
            rgs.into_iter().map(move |r| (j, r))
        })
        .filter(|(j, _)| jobs[*j].is_ok())
        .collect();
    let next = AtomicUsize::new(0);
    let workers = workers.clamp(1, 16).min(tasks.len().max(1));
    std::thread::scope(|sc| {
        for _ in 0..workers {
            sc.spawn(|| {
                let mut cache = ScrubCache::default();
                let mut cache_for = usize::MAX;
                loop {
                    let k = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&(j, r)) = tasks.get(k) else { break };
                    let job = jobs[j].as_ref().expect("tasks only for opened files");
                    if cache_for != j {
                        cache = ScrubCache::default();
                        cache_for = j;
                    }
                    run_task(job, r, filter, &mut cache, batch_rows);
                }
            });
        }
    });
    jobs.into_iter()
        .map(|job| {
            let job = job?;
            let n = job.meta.metadata().num_row_groups();
            let st = job.state.into_inner().expect("a filter worker panicked");
            if let Some(e) = st.error {
                return Err(e);
            }
            let mut map = Vec::with_capacity(n);
            let mut ordinal = 0u32;
            for kept in &st.kept {
                if kept.unwrap_or(0) > 0 {
                    map.push(Some(ordinal));
                    ordinal += 1;
                } else {
                    map.push(None);
                }
            }
            let (file, bytes, sha256) = st.done.expect("every task of the file finished");
            Ok(Filtered {
                file,
                bytes,
                sha256,
                rows_dropped: st.dropped,
                rows_written: st.written,
                row_groups: map,
            })
        })
        .collect()
}

fn open(src: &Source<'_>) -> Result<ArrowReaderMetadata, SnapshotError> {
    let file = File::open(src.path).map_err(|e| SnapshotError::LocalIo {
        path: src.path.into(),
        source: e,
    })?;
    crate::snapshot::read::open_metadata(&file, Some(src.key), src.display)
}

fn dec(display: &str, e: &dyn std::fmt::Display) -> SnapshotError {
    SnapshotError::Decode {
        key: display.into(),
        message: e.to_string(),
    }
}

fn spill(e: std::io::Error) -> SnapshotError {
    SnapshotError::LocalIo {
        path: std::env::temp_dir(),
        source: e,
    }
}

/// Filter row group `r` of `job` (`None`: the file has none) and hand it to the new file.
fn run_task(
    job: &Job<'_>,
    r: Option<usize>,
    filter: &dyn RowFilter,
    cache: &mut ScrubCache,
    batch_rows: usize,
) {
    let display = job.src.display;
    // Create the new file on the first task (under the lock: exactly once).
    let factory = {
        let mut st = job.state.lock().expect("a filter worker panicked");
        if st.error.is_none() && st.out.is_none() {
            match create(job) {
                Ok(out) => st.out = Some(out),
                Err(e) => st.error = Some(e),
            }
        }
        st.out.as_ref().map(|o| Arc::clone(&o.1))
    };
    let filtered = match (r, factory) {
        (Some(r), Some(_)) => read_filtered(job, r, filter, cache, batch_rows),
        _ => Ok((Vec::new(), 0)),
    };
    // Record what the row group kept, then wait for the earlier ones: that fixes the ordinal.
    let mut st = job.state.lock().expect("a filter worker panicked");
    let (batches, dropped) = match filtered {
        Ok(v) => v,
        Err(e) => {
            st.error.get_or_insert(e);
            (Vec::new(), 0)
        }
    };
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    st.dropped += dropped;
    st.written += rows as u64;
    if let Some(r) = r {
        st.kept[r] = Some(rows);
        job.turn.notify_all();
        while st.error.is_none() && st.kept[..r].iter().any(Option::is_none) {
            st = job.turn.wait(st).expect("a filter worker panicked");
        }
    }
    let ordinal = r.map_or(0, |r| {
        st.kept[..r].iter().filter(|k| k.unwrap_or(0) > 0).count()
    });
    if st.error.is_none() && rows > 0 {
        let factory = Arc::clone(&st.out.as_ref().expect("created above").1);
        drop(st);
        let encoded = encode(&factory, ordinal, &job.meta, &batches).map_err(|e| dec(display, &e));
        drop(batches);
        st = job.state.lock().expect("a filter worker panicked");
        match encoded {
            Ok(chunks) => {
                st.waiting.insert(ordinal, chunks);
            }
            Err(e) => {
                st.error.get_or_insert(e);
            }
        }
        append_ready(&mut st, display);
    }
    st.finished += 1;
    let total = st.kept.len().max(1);
    if st.finished == total && st.error.is_none() {
        append_ready(&mut st, display);
        if let Some((w, _)) = st.out.take() {
            // `into_inner` writes the footer.
            let closed = w
                .into_inner()
                .map_err(|e| dec(display, &e))
                .and_then(|sink| sink.finish().map_err(spill));
            match closed {
                Ok(done) => st.done = Some(done),
                Err(e) => st.error = Some(e),
            }
        }
    }
    job.turn.notify_all();
}

/// The new spill file with a writer of the source's schema and properties.
fn create(job: &Job<'_>) -> Result<(Writer, Arc<ArrowRowGroupWriterFactory>), SnapshotError> {
    let tmp = tempfile::NamedTempFile::new().map_err(spill)?;
    let w = ArrowWriter::try_new(
        HashingFile::new(tmp, 1 << 20),
        Arc::clone(job.meta.schema()),
        Some(job.src.props.clone()),
    )
    .map_err(|e| dec(job.src.display, &e))?;
    let (w, factory) = w
        .into_serialized_writer()
        .map_err(|e| dec(job.src.display, &e))?;
    Ok((w, Arc::new(factory)))
}

/// Row group `r`, decrypted, decoded and filtered: the batches kept and the rows dropped.
fn read_filtered(
    job: &Job<'_>,
    r: usize,
    filter: &dyn RowFilter,
    cache: &mut ScrubCache,
    batch_rows: usize,
) -> Result<(Vec<RecordBatch>, u64), SnapshotError> {
    let display = job.src.display;
    let file = File::open(job.src.path).map_err(|e| SnapshotError::LocalIo {
        path: job.src.path.into(),
        source: e,
    })?;
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, job.meta.clone())
        .with_row_groups(vec![r])
        .with_batch_size(batch_rows.max(1))
        .build()
        .map_err(|e| dec(display, &e))?;
    let (mut kept, mut dropped) = (Vec::new(), 0);
    for b in reader {
        let b = b.map_err(|e| dec(display, &e))?;
        let (b, d) = filter
            .filter(job.src.table, b, cache)
            .map_err(|e| dec(display, &e))?;
        dropped += d;
        if b.num_rows() > 0 {
            kept.push(b);
        }
    }
    Ok((kept, dropped))
}

/// Encode and encrypt `batches` as row group `ordinal` of the new file.
fn encode(
    factory: &ArrowRowGroupWriterFactory,
    ordinal: usize,
    meta: &ArrowReaderMetadata,
    batches: &[RecordBatch],
) -> parquet::errors::Result<Vec<ArrowColumnChunk>> {
    let mut writers = factory.create_column_writers(ordinal)?;
    for b in batches {
        let mut w = writers.iter_mut();
        for (field, col) in meta.schema().fields().iter().zip(b.columns()) {
            for leaf in compute_leaves(field, col)? {
                w.next().expect("one column writer per leaf").write(&leaf)?;
            }
        }
    }
    writers.into_iter().map(|w| w.close()).collect()
}

/// Append the encoded row groups whose turn it is.
fn append_ready(st: &mut State, display: &str) {
    while st.error.is_none() {
        let n = st.next_append;
        let Some(chunks) = st.waiting.remove(&n) else {
            break;
        };
        let Some((w, _)) = st.out.as_mut() else {
            break;
        };
        let appended = (|| {
            let mut rg = w.next_row_group()?;
            for c in chunks {
                c.append_to_row_group(&mut rg)?;
            }
            rg.close().map(|_| ())
        })();
        match appended {
            Ok(()) => st.next_append += 1,
            Err(e) => st.error = Some(dec(display, &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    /// Drops rows whose `v` is a multiple of 3, and every row of 100..200 (a whole row group).
    struct Thirds;
    impl RowFilter for Thirds {
        fn filter(
            &self,
            _table: &str,
            batch: RecordBatch,
            _cache: &mut ScrubCache,
        ) -> Result<(RecordBatch, u64), arrow::error::ArrowError> {
            let v = batch
                .column(0)
                .as_primitive::<arrow::datatypes::Int64Type>();
            let keep: arrow::array::BooleanArray = v
                .iter()
                .map(|x| x.map(|x| x % 3 != 0 && !(100..200).contains(&x)))
                .collect();
            let n = keep.iter().filter(|k| *k == Some(false)).count() as u64;
            Ok((arrow::compute::filter_record_batch(&batch, &keep)?, n))
        }
    }

    fn key() -> DataKey {
        DataKey {
            tenant: "acme".into(),
            key_id: "k".into(),
            key: vec![7u8; 32],
            footer_key_metadata: b"k".to_vec(),
        }
    }

    /// An encrypted file of `rows` rows (`v` = 0.., `s` = "row v") in row groups of 100.
    fn file(key: &DataKey, rows: i64) -> tempfile::NamedTempFile {
        let schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        let settings = crate::config::SnapshotSection {
            row_group_rows: 100,
            ..Default::default()
        };
        let props = crate::snapshot::write::writer_properties(key, &settings, &["v"]).unwrap();
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let mut w =
            ArrowWriter::try_new(tmp.reopen().unwrap(), schema.clone(), Some(props)).unwrap();
        let v: Vec<i64> = (0..rows).collect();
        let s: Vec<String> = v.iter().map(|v| format!("row {v}")).collect();
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(v)),
                Arc::new(StringArray::from(s)),
            ],
        )
        .unwrap();
        w.write(&b).unwrap();
        w.close().unwrap();
        tmp
    }

    fn read(key: &DataKey, path: &Path) -> (Vec<i64>, Vec<String>, usize) {
        let f = File::open(path).unwrap();
        let b = crate::snapshot::read::open_reader(f, Some(key), "new").unwrap();
        let groups = b.metadata().num_row_groups();
        let (mut v, mut s) = (Vec::new(), Vec::new());
        for batch in b.build().unwrap() {
            let batch = batch.unwrap();
            let c = batch
                .column(0)
                .as_primitive::<arrow::datatypes::Int64Type>();
            v.extend(c.values().iter().copied());
            let t = batch.column(1).as_string::<i32>();
            s.extend((0..t.len()).map(|i| t.value(i).to_string()));
        }
        (v, s, groups)
    }

    #[test]
    fn row_groups_of_several_files_are_filtered_on_several_threads_in_order() {
        let key = key();
        let sizes = [450i64, 0, 100, 1, 250];
        let inputs: Vec<_> = sizes.iter().map(|n| file(&key, *n)).collect();
        let settings = crate::config::SnapshotSection::default();
        for workers in [1, 2, 3, 8] {
            let sources: Vec<Source<'_>> = inputs
                .iter()
                .map(|t| Source {
                    path: t.path(),
                    display: "old",
                    table: "t",
                    key: &key,
                    props: crate::snapshot::write::writer_properties(&key, &settings, &[]).unwrap(),
                })
                .collect();
            let out = filter_files(&sources, &Thirds, workers, 7);
            for (n, r) in sizes.iter().zip(out) {
                let r = r.unwrap();
                let want: Vec<i64> = (0..*n)
                    .filter(|x| x % 3 != 0 && !(100..200).contains(x))
                    .collect();
                let (v, s, groups) = read(&key, r.file.path());
                assert_eq!(v, want, "{workers} workers, {n} rows");
                assert_eq!(
                    s,
                    want.iter().map(|v| format!("row {v}")).collect::<Vec<_>>()
                );
                assert_eq!(r.rows_written, want.len() as u64);
                assert_eq!(r.rows_dropped, *n as u64 - want.len() as u64);
                // Row group 1 (rows 100..200) is dropped whole; the others keep their order.
                let expect_map: Vec<Option<u32>> = match n {
                    450 => vec![Some(0), None, Some(1), Some(2), Some(3)],
                    250 => vec![Some(0), None, Some(1)],
                    100 => vec![Some(0)],
                    1 => vec![None],
                    _ => vec![],
                };
                assert_eq!(r.row_groups, expect_map, "{n} rows");
                assert_eq!(groups, expect_map.iter().flatten().count());
            }
        }
    }

    #[test]
    fn a_file_of_another_key_is_an_error_for_that_file_only() {
        let key = key();
        let other = DataKey {
            key: vec![9u8; 32],
            ..key.clone()
        };
        let good = file(&key, 300);
        let bad = file(&other, 300);
        let settings = crate::config::SnapshotSection::default();
        let props = || crate::snapshot::write::writer_properties(&key, &settings, &[]).unwrap();
        let sources = vec![
            Source {
                path: bad.path(),
                display: "bad",
                table: "t",
                key: &key,
                props: props(),
            },
            Source {
                path: good.path(),
                display: "good",
                table: "t",
                key: &key,
                props: props(),
            },
        ];
        let out = filter_files(&sources, &Thirds, 2, 64);
        let e = out[0]
            .as_ref()
            .err()
            .expect("the other key's file fails")
            .to_string();
        assert!(e.contains("bad") && e.contains("does not decrypt"), "{e}");
        let kept = (0..300)
            .filter(|x| x % 3 != 0 && !(100..200).contains(x))
            .count();
        assert_eq!(out[1].as_ref().unwrap().rows_written, kept as u64);
    }
}
