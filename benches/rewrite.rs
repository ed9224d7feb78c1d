//! Rewrite throughput: every tenant's newest snapshot run rewritten without 1,000 people
//! (decrypt, filter, re-encrypt, upload, purge the old files) — what erasure's backups phase
//! does — timed in process so that only the rewrite is measured. Run by
//! `benches/rewrite_postgres.sh`, which prepares the store and runs the peers on the same rows.
//!
//! usage: cargo bench --bench rewrite -- CONFIG PHONES_FILE

use std::time::Instant;

use lethe::erasure::ledger::Scrub;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let [config, phones] = &args[..] else {
        eprintln!("usage: rewrite CONFIG PHONES_FILE");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let c = lethe::config::Config::load(std::path::Path::new(config)).unwrap();
    let dm = lethe::datamap::DataMap::load_dir(&c.data_map).unwrap();
    let keyring = lethe::keys::Keyring::open(&c.keyring, &c.master_key, false).unwrap();
    let store = lethe::store::Store::open(&c.store).unwrap();
    let phones: Vec<String> = std::fs::read_to_string(phones)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|p| p.trim().to_string())
        .collect();
    // What the ledger holds for each erased phone: its keyed hash and its index tag.
    let tag_key = lethe::snapshot::index::tag_key(&keyring.subject_key());
    let scrub = Scrub {
        subjects: phones
            .iter()
            .map(|p| {
                (
                    keyring.subject_hash(&format!("phone:{p}")),
                    Default::default(),
                )
            })
            .collect(),
        index_tags: Some(
            phones
                .iter()
                .map(|p| (lethe::snapshot::index::tag(tag_key, "phone", p), false))
                .collect(),
        ),
        keyring: &keyring,
        data_map: &dm,
        phone_country: None,
    };
    let started = Instant::now();
    let (mut opened, mut rewritten, mut dropped, mut runs, mut rows) = (0, 0, 0u64, 0, 0u64);
    rt.block_on(async {
        // Every tenant's newest run, rewritten together as erasure's backups phase does.
        let mut todo = Vec::new();
        for t in lethe::snapshot::read::tenants(&store).await.unwrap() {
            let Some(m) = lethe::snapshot::read::newest_committed(&store, &t)
                .await
                .unwrap()
            else {
                continue;
            };
            rows += m.rows();
            runs += 1;
            todo.push((m, keyring.data_key(&t).unwrap()));
        }
        let results =
            lethe::snapshot::rewrite::rewrite_runs(&store, None, &c.snapshot, todo, &scrub).await;
        for w in results.into_iter().filter_map(Result::unwrap) {
            opened += w.files_opened;
            rewritten += w.files.len();
            dropped += w.rows_dropped;
        }
    });
    println!(
        "rewrite: {runs} runs, {rows} rows; {opened} files opened, {rewritten} files rewritten, {dropped} rows dropped; {:.2} s",
        started.elapsed().as_secs_f64()
    );
}
