//! Shared test helpers: a small demo environment in a temporary directory.
#![allow(dead_code)]

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
