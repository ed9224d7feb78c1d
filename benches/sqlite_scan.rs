//! The bare SQLite scan lethe's snapshot is compared with: step through every row and touch
//! every column (`get_ref`, no conversion, no copy), with the same bundled SQLite lethe uses.
//!
//! usage: cargo bench --bench sqlite_scan -- DB [full|per-tenant]
//!   full        SELECT * FROM messages (one sequential pass in rowid order)
//!   per-tenant  the queries lethe runs: per tenant, WHERE tenant_id = ? ORDER BY id
//! Prints rows, bytes of values touched and seconds.

use std::time::Instant;

use rusqlite::types::ValueRef;

fn scan(
    stmt: &mut rusqlite::Statement<'_>,
    params: &[&dyn rusqlite::ToSql],
    rows: &mut u64,
    bytes: &mut u64,
) {
    let n = stmt.column_count();
    let mut q = stmt.query(params).unwrap();
    while let Some(r) = q.next().unwrap() {
        *rows += 1;
        for i in 0..n {
            *bytes += match r.get_ref(i).unwrap() {
                ValueRef::Text(t) | ValueRef::Blob(t) => t.len() as u64,
                ValueRef::Integer(_) | ValueRef::Real(_) => 8,
                ValueRef::Null => 0,
            };
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let db = args
        .first()
        .expect("usage: sqlite_scan DB [full|per-tenant]");
    let mode = args.get(1).map(String::as_str).unwrap_or("full");
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let start = Instant::now();
    let (mut rows, mut bytes) = (0u64, 0u64);
    match mode {
        "full" => {
            let mut st = conn.prepare("SELECT * FROM messages").unwrap();
            scan(&mut st, &[], &mut rows, &mut bytes);
        }
        "per-tenant" => {
            let tenants: Vec<String> = conn
                .prepare("SELECT id FROM tenants ORDER BY 1")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let mut st = conn
                .prepare("SELECT * FROM messages WHERE tenant_id = ?1 ORDER BY id")
                .unwrap();
            for t in &tenants {
                scan(&mut st, &[t], &mut rows, &mut bytes);
            }
        }
        m => panic!("unknown mode {m}"),
    }
    let s = start.elapsed().as_secs_f64();
    println!(
        "sqlite scan ({mode}): {rows} rows, {:.0} MB of values, {s:.2} s, {:.0} rows/s",
        bytes as f64 / 1e6,
        rows as f64 / s
    );
}
