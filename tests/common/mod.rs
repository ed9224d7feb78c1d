//! Shared test helpers: a small demo environment in a temporary directory.
#![allow(dead_code)]

pub mod azurite;
pub mod gcs;
pub mod moto;
pub mod pg;
pub mod proxy;
pub mod server;

use std::collections::HashSet;

use arrow::array::AsArray;
use arrow::datatypes::{DataType, TimeUnit};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct Demo {
    pub _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub config: PathBuf,
}

/// The data map of the config at `config`, leaked (tests only) so a restore can borrow it.
pub fn ledger_context(config: &std::path::Path) -> lethe::snapshot::read::LedgerContext<'static> {
    let c = lethe::config::Config::load(config).unwrap();
    let dm = Box::leak(Box::new(
        lethe::datamap::DataMap::load_dir(&c.data_map).unwrap(),
    ));
    let policy = lethe::policy::Policy::load(&c.policy).unwrap();
    lethe::snapshot::read::LedgerContext {
        data_map: dm,
        phone_country: policy.erasure.phone_country.clone(),
    }
}

impl Demo {
    pub fn store(&self) -> PathBuf {
        self.dir.join("store")
    }
    pub fn db(&self) -> PathBuf {
        self.dir.join("source.db")
    }
}

/// A demo directory with `tenants` tenants over `days` days (not yet snapshotted).
pub fn demo(tenants: usize, days: u32) -> Demo {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let opts = lethe::demo::DemoOptions {
        dir: dir.clone(),
        source: None,
        tenants,
        days,
        seed: 7,
    };
    let (config, generated) = lethe::demo::prepare(&opts).unwrap();
    assert!(generated.is_some());
    Demo {
        _tmp: tmp,
        dir,
        config,
    }
}

/// Start `lethe args…` `times` times and kill each with SIGKILL after 20 ms plus a
/// pseudo-random share of `spread_ms` (xorshift from `seed`, so a failure replays).
pub fn kill_randomly(args: &[&str], times: usize, mut seed: u64, spread_ms: u64) {
    for _ in 0..times {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lethe"))
            .args(args)
            .env("LETHE_LOG", "lethe=warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20 + seed % spread_ms));
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Say loudly that `test` was skipped for a missing service, and count it where
/// `LETHE_SKIPPED_LOG` points (scripts/test prints the count: a skipped test is not a passed one).
pub fn skipped(test: &str, message: &str) {
    eprintln!("\n*** SKIPPED {test}: {message} ***\n");
    if let Ok(path) = std::env::var("LETHE_SKIPPED_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
        {
            let _ = writeln!(f, "{test}");
        }
    }
}

/// Point a demo's lethe.toml at a PostgreSQL URL instead of its SQLite file.
pub fn use_pg(d: &Demo, url: &str) {
    let text = std::fs::read_to_string(&d.config).unwrap();
    let text = text.replace("url = \"sqlite://source.db\"", &format!("url = \"{url}\""));
    assert!(text.contains("postgres://"), "lethe.toml layout changed");
    std::fs::write(&d.config, text).unwrap();
}

/// Every file under `root` with its bytes.
pub fn files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Run the `lethe` binary; returns (exit code, stdout, stderr).
pub fn lethe(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lethe"))
        .args(args)
        .env("LETHE_LOG", "lethe=warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Needles of personal data taken from the source: phones, names, emails, message bodies
/// (their first 24 bytes), transcripts, coordinates are numbers and are left out.
pub fn personal_needles(db: &std::path::Path) -> Vec<Vec<u8>> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut needles = HashSet::new();
    for sql in [
        "SELECT phone FROM customers",
        "SELECT name FROM customers",
        "SELECT email FROM customers WHERE email IS NOT NULL",
        "SELECT display_name FROM accounts",
        "SELECT email FROM accounts",
        "SELECT substr(body, 1, 24) FROM messages",
        "SELECT substr(transcript, 1, 24) FROM calls",
        "SELECT billing_email FROM billing_records",
        "SELECT employee_no FROM attendance_checkins",
    ] {
        let mut st = conn.prepare(sql).unwrap();
        let rows = st.query_map([], |r| r.get::<_, String>(0)).unwrap();
        for r in rows {
            needles.insert(r.unwrap().into_bytes());
        }
    }
    needles.into_iter().collect()
}

/// Which needles occur in `hay`: one pass per distinct needle length.
pub fn found_in(hay: &[u8], needles: &[Vec<u8>]) -> Vec<String> {
    let mut by_len: std::collections::BTreeMap<usize, HashSet<&[u8]>> = Default::default();
    for n in needles {
        by_len.entry(n.len()).or_default().insert(n);
    }
    let mut hits = Vec::new();
    for (len, set) in by_len {
        if hay.len() < len {
            continue;
        }
        for w in hay.windows(len) {
            if set.contains(w) {
                hits.push(String::from_utf8_lossy(w).into_owned());
            }
        }
    }
    hits
}

/// Run the `lethe` binary with extra environment; returns (exit code, stdout, stderr).
pub fn lethe_env(args: &[&str], env: &[(&str, String)]) -> (i32, String, String) {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_lethe"));
    c.args(args).env("LETHE_LOG", "lethe=warn");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Render a restored Arrow cell and an SQLite value the same way, independently.
pub fn arrow_cell(col: &dyn arrow::array::Array, i: usize) -> String {
    if col.is_null(i) {
        return "NULL".into();
    }
    match col.data_type() {
        DataType::Int64 => col
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(i)
            .to_string(),
        DataType::Float64 => format!(
            "{:.9}",
            col.as_primitive::<arrow::datatypes::Float64Type>().value(i)
        ),
        DataType::Utf8 => col.as_string::<i32>().value(i).to_string(),
        DataType::Boolean => col.as_boolean().value(i).to_string(),
        DataType::Date32 => {
            let days = col.as_primitive::<arrow::datatypes::Date32Type>().value(i);
            (chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap() + chrono::Days::new(days as u64))
                .to_string()
        }
        DataType::Timestamp(TimeUnit::Microsecond, Some(tz)) if tz.as_ref() == "UTC" => {
            let us = col
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .value(i);
            chrono::DateTime::from_timestamp_micros(us)
                .unwrap()
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        }
        other => panic!("unexpected restored type {other}"),
    }
}

pub fn sqlite_cell(v: rusqlite::types::ValueRef<'_>, declared: &str) -> String {
    use rusqlite::types::ValueRef::*;
    match v {
        Null => "NULL".into(),
        Integer(x) if declared == "BOOLEAN" => (x == 1).to_string(),
        Integer(x) => x.to_string(),
        Real(x) => format!("{x:.9}"),
        Text(t) => String::from_utf8(t.to_vec()).unwrap(),
        Blob(_) => panic!("no blobs in the demo tables"),
    }
}

/// Restored Parquet files (from `restore`) equal the tenant's rows in the SQLite source, cell
/// by cell, with each column's declared type mapped to the expected Arrow type.
pub fn assert_restore_equals_sqlite(
    files: &[(String, std::path::PathBuf, u64)],
    db: &Path,
    tenant: &str,
) {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use std::fs::File;
    let conn = rusqlite::Connection::open(db).unwrap();
    for (table, path, rows) in files {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
        let schema = reader.schema().clone();
        // Types: declared SQL type → Arrow type, column by column.
        let decl: Vec<(String, String)> = conn
            .prepare(&format!("PRAGMA table_info({table})"))
            .unwrap()
            .query_map([], |r| Ok((r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(schema.fields().len(), decl.len(), "{table}");
        for (f, (name, ty)) in schema.fields().iter().zip(&decl) {
            assert_eq!(f.name(), name);
            let want = match ty.as_str() {
                "INTEGER" => DataType::Int64,
                "REAL" => DataType::Float64,
                "TEXT" => DataType::Utf8,
                "BOOLEAN" => DataType::Boolean,
                "DATE" => DataType::Date32,
                "TIMESTAMP" => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                other => panic!("{other}"),
            };
            assert_eq!(f.data_type(), &want, "{table}.{name}");
        }
        let mut restored = Vec::new();
        for b in reader.build().unwrap() {
            let b = b.unwrap();
            for i in 0..b.num_rows() {
                restored.push(
                    b.columns()
                        .iter()
                        .map(|c| arrow_cell(c, i))
                        .collect::<Vec<_>>(),
                );
            }
        }
        let tcol = if table == "tenants" {
            "id"
        } else {
            "tenant_id"
        };
        let mut st = conn
            .prepare(&format!(
                "SELECT * FROM {table} WHERE {tcol} = '{tenant}' ORDER BY 1"
            ))
            .unwrap();
        let mut q = st.query([]).unwrap();
        let mut source = Vec::new();
        while let Some(r) = q.next().unwrap() {
            source.push(
                (0..decl.len())
                    .map(|i| sqlite_cell(r.get_ref(i).unwrap(), &decl[i].1))
                    .collect::<Vec<_>>(),
            );
        }
        assert!(
            !source.is_empty(),
            "{table} has no rows for the tenant; the comparison would be empty"
        );
        assert_eq!(restored.len() as u64, *rows);
        restored.sort();
        source.sort();
        assert_eq!(restored, source, "table {table}");
    }
}
