//! Shared test helpers: a small demo environment in a temporary directory.
#![allow(dead_code)]

pub mod moto;

use std::collections::HashSet;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct Demo {
    pub _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub config: PathBuf,
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
