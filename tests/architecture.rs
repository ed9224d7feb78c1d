//! One deleter per system: the code that can delete from each system is named here, and a
//! call from anywhere else fails this test. Rust's visibility cannot say "only these sibling
//! modules", so the boundary is checked on the source (tests excluded: a `#[cfg(test)]`
//! module may call a primitive to set a scene).

use std::path::{Path, PathBuf};

/// (what is called, the files allowed to call it, the system it deletes from)
const DELETERS: &[(&str, &[&str], &str)] = &[
    // Object stores: the primitives on `Store` (its inner object store is private).
    (
        ".delete_object(",
        &[
            "src/blobs.rs",          // blob store: BlobDeleter
            "src/snapshot/purge.rs", // snapshot store: runs and pins
            "src/audit/mod.rs",      // the audit log's own expiry
            "src/lease.rs",          // lock generations it wrote itself
        ],
        "object store",
    ),
    (
        ".delete_objects(",
        &["src/snapshot/purge.rs", "src/s3.rs"],
        "object store",
    ),
    // Every version of a key or prefix (S3 versioned buckets).
    (
        ".purge_key(",
        &["src/blobs.rs", "src/snapshot/purge.rs"],
        "blob store versions; files a snapshot rewrite replaced",
    ),
    (
        ".purge_noncurrent(",
        &["src/erasure/request.rs", "src/snapshot/purge.rs"],
        "earlier generations of erasure requests and rewritten manifests",
    ),
    (
        "purge_replaced(",
        &["src/snapshot/rewrite.rs"],
        "snapshot files a rewrite replaced",
    ),
    (
        ".purge_prefix(",
        &["src/snapshot/purge.rs"],
        "snapshot store versions",
    ),
    // Primary database: batched DELETE/UPDATE and the outbox.
    ("change_batch(", &["src/primary.rs"], "primary database"),
    (
        "outbox_done(",
        &["src/primary.rs"],
        "primary database outbox",
    ),
    // Keys: crypto-shredding.
    (
        ".shred(",
        &["src/retention/execute.rs", "src/erasure/run.rs"],
        "keys",
    ),
    // Snapshot runs, with their audit records.
    (
        "purge_run_recorded(",
        &["src/retention/execute.rs", "src/erasure/run.rs"],
        "snapshot store",
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The file's code without its `#[cfg(test)]` module (lethe keeps it last in a file) and
/// without comment lines.
fn production_code(text: &str) -> String {
    let end = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    text[..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn only_the_deleters_delete() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    assert!(files.len() > 20, "found only {} files", files.len());
    let mut wrong = Vec::new();
    let mut seen = vec![0usize; DELETERS.len()];
    for f in &files {
        let rel = f
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let code = production_code(&std::fs::read_to_string(f).unwrap());
        for (i, (call, allowed, system)) in DELETERS.iter().enumerate() {
            let n = code
                .match_indices(call)
                .filter(|(at, _)| !code[..*at].ends_with("fn "))
                .count();
            if n == 0 || rel == "src/store.rs" {
                continue;
            }
            if allowed.contains(&rel.as_str()) {
                seen[i] += n;
            } else {
                wrong.push(format!("{rel} calls `{call}` ({system})"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "deleting outside the deleters:\n  {}\nCall the deleter of that system instead (see DELETERS).",
        wrong.join("\n  ")
    );
    // The list is not stale: each entry is still used where it says.
    for (i, (call, allowed, _)) in DELETERS.iter().enumerate() {
        assert!(seen[i] > 0, "`{call}` is no longer called in {allowed:?}");
    }
}

#[test]
fn the_check_sees_a_call_from_elsewhere() {
    // The scanner itself: a call in production code counts, one in a comment or a test
    // module does not.
    let code = production_code(
        "fn a() { store.delete_object(&k); }\n// store.delete_object(&k)\n#[cfg(test)]\nmod tests { fn b() { s.delete_object(&k); } }",
    );
    assert_eq!(code.matches(".delete_object(").count(), 1);
}
