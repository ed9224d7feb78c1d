//! Memory is bounded by the row group, not by the table: the peak heap of a snapshot hardly
//! moves when the table grows eightfold. Measured with a counting global allocator in this
//! test binary (SQLite's own page cache uses the C allocator and is bounded by its cache size).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

struct Counting;
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(l.size(), Relaxed) + l.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        CURRENT.fetch_sub(l.size(), Relaxed);
    }
}

#[global_allocator]
static A: Counting = Counting;

const DATA_MAP: &str = r#"
[tenants]
table = "tenants"
id_column = "id"
status_column = "status"
cancelled_at_column = "cancelled_at"

[tables.messages]
tenant_column = "tenant_id"
primary_key = "id"
categories = ["messages"]
time_column = "created_at"
personal_columns = ["body"]
"#;

const POLICY: &str = r#"
version = "t"
[categories.messages]
retain = "90d"
[backups]
retain = "30d"
after_termination = "90d"
[termination]
primary_data_after = "30d"
"#;

/// Snapshot a one-table database of `rows` rows (≈ 300 bytes each); returns (peak heap, text bytes).
fn peak_for(rows: usize) -> (usize, usize) {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir_all(d.join("schemas")).unwrap();
    std::fs::create_dir_all(d.join("jobs")).unwrap();
    std::fs::write(d.join("schemas/m.toml"), DATA_MAP).unwrap();
    std::fs::write(d.join("jobs/retention.toml"), POLICY).unwrap();
    std::fs::write(d.join("lethe.toml"), "[source]\nurl = \"sqlite://db.sqlite\"\n[store]\nurl = \"store\"\n[snapshot]\nrow_group_rows = 8192\nbatch_rows = 2048\n").unwrap();
    let conn = rusqlite::Connection::open(d.join("db.sqlite")).unwrap();
    conn.execute_batch(
        "CREATE TABLE tenants (id TEXT PRIMARY KEY, status TEXT, cancelled_at TIMESTAMP);
         INSERT INTO tenants VALUES ('big', 'active', NULL);
         CREATE TABLE messages (id INTEGER PRIMARY KEY, tenant_id TEXT NOT NULL, body TEXT NOT NULL, created_at TIMESTAMP NOT NULL);
         CREATE INDEX m_t ON messages (tenant_id);",
    ).unwrap();
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO messages SELECT i, 'big', hex(randomblob(140)), datetime(1700000000 + i, 'unixepoch') FROM n",
        [rows as i64],
    ).unwrap();
    let text: usize = conn
        .query_row("SELECT sum(length(body) + 30) FROM messages", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap() as usize;
    drop(conn);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let base = CURRENT.load(Relaxed);
    PEAK.store(base, Relaxed);
    let run = rt
        .block_on(lethe::pipeline::run_snapshot(&d.join("lethe.toml"), &[]))
        .unwrap();
    assert!(run.failed.is_empty(), "{:?}", run.failed);
    assert_eq!(run.done[0].manifest.rows(), rows as u64);
    (PEAK.load(Relaxed) - base, text)
}

#[test]
fn snapshot_memory_is_bounded_by_row_group_not_table_size() {
    let (small, small_text) = peak_for(25_000);
    let (large, large_text) = peak_for(400_000);
    eprintln!(
        "peak heap: {small} B for {small_text} B of text, {large} B for {large_text} B of text"
    );
    assert!(
        large_text > 50 << 20,
        "the large table must be big enough to matter"
    );
    // Sixteen times the data; the peak may grow by the upload pipeline filling up (two 8 MiB
    // parts in flight), a bounded amount, but not with the table.
    assert!(
        large < small + (32 << 20),
        "peak grew from {small} to {large}"
    );
    assert!(
        large < large_text / 3,
        "peak {large} is not small next to the table's {large_text} bytes"
    );
}
