//! `lethe demo`: the embedded default. Creates a directory with a `lethe.toml`, the data map,
//! the policy and the nightly job; fills an SQLite database with deterministic synthetic data
//! for N tenants over the last D days (photo and recording blobs in a local blob store); then
//! runs the pipeline into a local object store in the same directory.
//!
//! Running it again is safe: existing config, database, blobs and keyring are kept (the keyring
//! above all: a new one could not read the earlier snapshots) and a new snapshot run is added.
//! The database is built in a temporary file and renamed into place, so a crash never leaves a
//! half-filled source behind.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, TimeZone, Utc};
use rusqlite::{Connection, params};

pub const DATA_MAP: &str = include_str!("../schemas/app.toml");
pub const SCHEMA_SQL: &str = include_str!("../schemas/demo_app.sql");
pub const POLICY: &str = include_str!("../jobs/retention.toml");
pub const NIGHTLY: &str = include_str!("../jobs/nightly.toml");
pub const ANALYTICS: &str = include_str!("../jobs/analytics.toml");

pub const CONFIG: &str = r#"# lethe.toml written by `lethe demo`. Paths are relative to this file.
[source]
url = "sqlite://source.db"

[store]
url = "store"

[blobs]
url = "blobs"

[keys]
provider = "local"
keyring = "keys/keyring.json"
master_key = "file:keys/master.key"

[paths]
data_map = "schemas"
policy = "jobs/retention.toml"
jobs = "jobs"
"#;

/// Options of `lethe demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub dir: PathBuf,
    /// A `postgres://` URL to load the demo into (instead of using the SQLite file as source).
    pub source: Option<String>,
    pub tenants: usize,
    pub days: u32,
    pub seed: u64,
}

/// Write the config files that are missing. Returns the paths written.
pub fn write_files(dir: &Path, source: Option<&str>) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let config = match source {
        Some(url) => CONFIG.replace("url = \"sqlite://source.db\"", &format!("url = \"{url}\"")),
        None => CONFIG.to_string(),
    };
    for (rel, text) in [
        ("lethe.toml", config.as_str()),
        ("schemas/app.toml", DATA_MAP),
        ("jobs/retention.toml", POLICY),
        ("jobs/nightly.toml", NIGHTLY),
        ("jobs/analytics.toml", ANALYTICS),
    ] {
        let p = dir.join(rel);
        if !p.exists() {
            std::fs::create_dir_all(p.parent().expect("has a parent"))?;
            std::fs::write(&p, text)?;
            written.push(p);
        }
    }
    Ok(written)
}

/// Row counts per table of a generated database.
#[derive(Debug, Default, Clone)]
pub struct Generated {
    pub rows: Vec<(String, u64)>,
    pub blobs: u64,
}

/// Two people the demo erases on its first run: a customer of kopi-senja (by phone, written in
/// national form as a caller would say it) and an employee with selfie check-ins (by email, in
/// capitals). (what, tenant, kind, identifier) — the identifier goes only into the request.
pub fn erasure_subjects(db: &Path) -> rusqlite::Result<Vec<(String, String, String, String)>> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut out = Vec::new();
    let customer: Option<(String, String)> = c
        .query_row(
            "SELECT c.tenant_id, c.phone FROM customers c WHERE c.tenant_id = 'kopi-senja' AND c.email IS NOT NULL AND EXISTS (SELECT 1 FROM messages m WHERE m.tenant_id = c.tenant_id AND m.customer_phone = c.phone) ORDER BY c.id LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok();
    if let Some((t, phone)) = customer
        && let Some(rest) = phone.strip_prefix("+62")
    {
        out.push((
            "a customer (by phone, written 0…)".to_string(),
            t,
            "phone".to_string(),
            format!("0{rest}"),
        ));
    }
    let employee: Option<(String, String)> = c
        .query_row(
            "SELECT a.tenant_id, a.email FROM accounts a WHERE (SELECT count(*) FROM attendance_checkins k WHERE k.account_id = a.id AND k.selfie_key IS NOT NULL) >= 2 ORDER BY a.id LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok();
    if let Some((t, email)) = employee.clone() {
        out.push((
            "an employee with selfies (by email, in capitals)".to_string(),
            t,
            "email".to_string(),
            email.to_uppercase(),
        ));
    }
    Ok(out)
}

/// The tenant the demo offboards on its first run: the last one, unless it is one the demo
/// erases a person of.
pub fn offboarded_tenant(db: &Path) -> rusqlite::Result<Option<String>> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let taken: Vec<String> = erasure_subjects(db)?.into_iter().map(|s| s.1).collect();
    let mut st = c.prepare("SELECT id FROM tenants ORDER BY id DESC")?;
    let ids: Vec<String> = st
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(ids.into_iter().find(|t| !taken.contains(t)))
}

/// A small deterministic PRNG (SplitMix64): the same seed gives the same database.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

const TENANTS: &[(&str, &str, &str)] = &[
    ("kopi-senja", "Kopi Senja", "pro"),
    ("klinik-sehat", "Klinik Sehat Sentosa", "enterprise"),
    ("batik-lestari", "Batik Lestari", "starter"),
    ("toko-makmur", "Toko Makmur Jaya", "pro"),
    ("bengkel-prima", "Bengkel Motor Prima", "starter"),
    ("laundry-kilat", "Laundry Kilat", "starter"),
    ("apotek-sejahtera", "Apotek Sejahtera", "pro"),
    ("salon-cantik", "Salon Cantik Ayu", "starter"),
    ("travel-nusantara", "Nusantara Tour & Travel", "enterprise"),
    ("properti-griya", "Griya Properti", "pro"),
    ("sekolah-cendekia", "Bimbel Cendekia", "pro"),
    ("katering-nikmat", "Katering Nikmat Rasa", "starter"),
    ("gym-bugar", "Bugar Fitness Center", "pro"),
    ("percetakan-jaya", "Percetakan Jaya Abadi", "starter"),
    ("optik-terang", "Optik Terang", "starter"),
    ("hotel-melati", "Hotel Melati Indah", "enterprise"),
    ("ekspedisi-cepat", "Ekspedisi Cepat Sampai", "pro"),
    ("dental-senyum", "Klinik Gigi Senyum", "pro"),
    ("furnitur-jati", "Jati Furnitur", "starter"),
    ("distro-urban", "Urban Distro", "starter"),
];

const FIRST: &[&str] = &[
    "Budi", "Siti", "Agus", "Dewi", "Rizky", "Putri", "Andi", "Rina", "Fajar", "Ayu", "Dimas",
    "Nurul", "Hendra", "Wulan", "Yusuf", "Intan", "Bayu", "Fitri", "Arif", "Lestari", "Eko",
    "Mega", "Galih", "Sari", "Taufik", "Indah", "Reza", "Maya",
];
const LAST: &[&str] = &[
    "Santoso",
    "Wijaya",
    "Pratama",
    "Hidayat",
    "Saputra",
    "Kusuma",
    "Nugroho",
    "Lestari",
    "Siregar",
    "Simanjuntak",
    "Hasibuan",
    "Gunawan",
    "Setiawan",
    "Rahmawati",
    "Purnomo",
    "Halim",
    "Tanjung",
    "Wibowo",
    "Susanto",
    "Harahap",
];
const CHANNELS: &[&str] = &[
    "whatsapp",
    "whatsapp",
    "whatsapp",
    "telegram",
    "instagram",
    "email",
];
const INBOUND: &[&str] = &[
    "Halo kak, pesanan saya nomor {n} belum sampai, bisa dicek?",
    "Selamat siang, apakah besok buka jam 8 pagi? Saya mau datang bersama keluarga.",
    "Kak, saya mau reschedule janji temu ke hari Sabtu jam 10 kalau masih ada slot.",
    "Hi, can I change the delivery address for order {n}? I moved last week.",
    "Permisi, harga paket yang kemarin dikirim masih berlaku? Saya tertarik ambil dua.",
    "Barang sudah diterima tapi warnanya beda dengan foto, bagaimana prosedur tukarnya?",
    "Mohon info nomor rekening untuk transfer DP pesanan {n}, terima kasih.",
    "Apakah bisa bayar pakai QRIS atau harus transfer bank?",
];
const OUTBOUND: &[&str] = &[
    "Terima kasih, kak {name}! Pesanan {n} sudah kami kirim hari ini, resi menyusul ya.",
    "Baik kak {name}, jadwal sudah kami ubah ke Sabtu jam 10. Sampai jumpa!",
    "Mohon maaf atas ketidaknyamanannya, tim kami sedang mengecek pesanan {n}.",
    "Hi {name}, your address has been updated. Anything else we can help with?",
    "Bisa kak, pembayaran via QRIS tersedia. Link pembayaran kami kirim sebentar lagi.",
];
const TRANSCRIPTS: &[&str] = &[
    "Agent: Selamat pagi, dengan {name}? Customer: Iya betul. Agent: Kami konfirmasi jadwal kunjungan besok pukul sembilan.",
    "Customer: Saya mau tanya status pesanan {n}. Agent: Baik, pesanan sedang dalam pengiriman dan tiba lusa.",
    "Agent: Hello {name}, this is a reminder of your appointment on Friday. Customer: Thanks, I will be there.",
];
const TICKETS: &[(&str, &str)] = &[
    (
        "Tidak bisa login",
        "Saya tidak menerima magic link di email saya sejak kemarin.",
    ),
    (
        "Export laporan gagal",
        "Tombol export ke Excel tidak merespon di halaman laporan bulanan.",
    ),
    (
        "Tagihan ganda",
        "Bulan ini saya ditagih dua kali untuk paket yang sama, mohon dicek.",
    ),
    (
        "Tambah pengguna",
        "Bagaimana cara menambah akun staf baru dengan akses terbatas?",
    ),
];

fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

struct Person {
    name: String,
    phone: String,
    email: String,
}

fn person(rng: &mut Rng, n: u64) -> Person {
    let (f, l) = (*rng.pick(FIRST), *rng.pick(LAST));
    let phone = format!("+628{}{:08}", 1 + rng.below(9), rng.below(100_000_000));
    let domain = *rng.pick(&["gmail.com", "yahoo.co.id", "outlook.com", "mail.id"]);
    Person {
        name: format!("{f} {l}"),
        phone,
        email: format!("{}.{}{}@{domain}", f.to_lowercase(), l.to_lowercase(), n),
    }
}

fn fill(template: &str, name: &str, n: u64) -> String {
    template
        .replace("{name}", name)
        .replace("{n}", &format!("INV-{n:06}"))
}

/// Generate the demo database at `db` (which must not exist) and the blobs under `blobs`.
pub fn generate(
    db: &Path,
    blobs: &Path,
    opts: &DemoOptions,
    anchor: DateTime<Utc>,
) -> rusqlite::Result<Generated> {
    let mut conn = Connection::open(db)?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
    conn.execute_batch(SCHEMA_SQL)?;
    let tx = conn.transaction()?;
    let mut rng = Rng::new(opts.seed);
    let span_s = opts.days as i64 * 86_400;
    let mut counts: std::collections::BTreeMap<&str, u64> = Default::default();
    let mut blob_count = 0u64;
    let mut ids = std::collections::HashMap::<&str, i64>::new();
    let mut next_id = |t: &'static str| {
        let e = ids.entry(t).or_insert(0);
        *e += 1;
        *e
    };
    let blob_err = |e: std::io::Error| rusqlite::Error::ToSqlConversionFailure(Box::new(e));
    for i in 0..opts.tenants {
        let (slug, name, plan) = if i < TENANTS.len() {
            let (s, n, p) = TENANTS[i];
            (s.to_string(), n.to_string(), p)
        } else {
            (format!("tenant-{i:03}"), format!("Tenant {i}"), "starter")
        };
        let tid = slug.as_str();
        // A few cancelled tenants: one recently (primary data still within 30 days), one long ago.
        let cancelled = (i % 7 == 5).then(|| anchor - Duration::days(10 + 15 * (i as i64 % 5)));
        let tenant_created = anchor - Duration::seconds(span_s + 86_400 * (30 + i as i64));
        tx.execute(
            "INSERT INTO tenants VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                tid,
                name,
                plan,
                if cancelled.is_some() {
                    "cancelled"
                } else {
                    "active"
                },
                ts(tenant_created),
                cancelled.map(ts),
                // Indonesia's three zones (WIB, WITA, WIT): analytics cuts days in each.
                ["Asia/Jakarta", "Asia/Makassar", "Asia/Jayapura"][i % 3]
            ],
        )?;
        *counts.entry("tenants").or_default() += 1;
        let end = cancelled.unwrap_or(anchor);
        let size = 1 + (i as u64 * 7 % 5); // skew: some tenants are 5x bigger
        let when = |rng: &mut Rng| {
            end - Duration::seconds(
                rng.below((span_s - (anchor - end).num_seconds()).max(86_400) as u64) as i64,
            )
        };

        // Staff accounts.
        let mut accounts = Vec::new();
        {
            let mut st =
                tx.prepare("INSERT INTO accounts VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL)")?;
            for a in 0..(4 + 3 * size) {
                let id = next_id("accounts");
                let p = person(&mut rng, id as u64);
                let created = tenant_created + Duration::days(rng.below(60) as i64);
                // Most log in recently; some have not for over a year; a few were deleted.
                let last_login = if a % 9 == 4 {
                    anchor - Duration::days(370 + rng.below(30) as i64)
                } else {
                    anchor - Duration::minutes(rng.below(60 * 24 * 20) as i64)
                };
                let deleted = (a % 11 == 7).then(|| anchor - Duration::days(rng.below(60) as i64));
                let role = if a == 0 {
                    "owner"
                } else {
                    *rng.pick(&["agent", "agent", "manager", "employee", "employee"])
                };
                st.execute(params![
                    id,
                    tid,
                    p.email,
                    p.name,
                    role,
                    ts(created),
                    ts(last_login.min(end)),
                    deleted.map(ts)
                ])?;
                accounts.push((id, format!("EMP-{:04}", 1000 + a)));
            }
            *counts.entry("accounts").or_default() += accounts.len() as u64;
        }
        // Customers and their conversations.
        let mut customers = Vec::new();
        {
            let mut st = tx.prepare("INSERT INTO customers VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?;
            for _ in 0..(40 * size) {
                let id = next_id("customers");
                let p = person(&mut rng, id as u64);
                st.execute(params![
                    id,
                    tid,
                    p.phone,
                    p.name,
                    rng.chance(0.6).then_some(&p.email),
                    ts(when(&mut rng))
                ])?;
                customers.push(p);
            }
            *counts.entry("customers").or_default() += customers.len() as u64;
        }
        {
            let mut st =
                tx.prepare("INSERT INTO messages VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)")?;
            let n = 600 * size;
            for _ in 0..n {
                let c = rng.pick(&customers);
                let inbound = rng.chance(0.55);
                let body = fill(
                    if inbound {
                        *rng.pick(INBOUND)
                    } else {
                        *rng.pick(OUTBOUND)
                    },
                    c.name.split(' ').next().unwrap_or(""),
                    rng.below(999_999),
                );
                let status = *rng.pick(&["delivered", "read", "read", "sent", "failed"]);
                st.execute(params![
                    next_id("messages"),
                    tid,
                    c.phone,
                    c.name,
                    rng.pick(CHANNELS),
                    if inbound { "inbound" } else { "outbound" },
                    body,
                    status,
                    ts(when(&mut rng))
                ])?;
            }
            *counts.entry("messages").or_default() += n;
        }
        {
            let mut st = tx.prepare("INSERT INTO calls VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?;
            let n = 25 * size;
            for _ in 0..n {
                let id = next_id("calls");
                let c = rng.pick(&customers);
                let key = format!("recordings/{tid}/{id}.ogg");
                write_blob(blobs, &key, b"OggS\0\x02", &mut rng).map_err(blob_err)?;
                blob_count += 1;
                let tr = fill(
                    *rng.pick(TRANSCRIPTS),
                    c.name.split(' ').next().unwrap_or(""),
                    rng.below(999_999),
                );
                st.execute(params![
                    id,
                    tid,
                    c.phone,
                    ts(when(&mut rng)),
                    20 + rng.below(900) as i64,
                    tr,
                    key
                ])?;
            }
            *counts.entry("calls").or_default() += n;
        }
        {
            let mut st = tx.prepare(
                "INSERT INTO attendance_checkins VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            let n = 60 * size;
            for _ in 0..n {
                let id = next_id("attendance_checkins");
                let (acc, emp) = rng.pick(&accounts).clone();
                let key = format!("photos/{tid}/{id}.jpg");
                write_blob(blobs, &key, b"\xff\xd8\xff\xe0\0\x10JFIF\0", &mut rng)
                    .map_err(blob_err)?;
                blob_count += 1;
                let lat = -6.2 + (rng.below(2000) as f64 - 1000.0) / 10_000.0;
                let lon = 106.8 + (rng.below(2000) as f64 - 1000.0) / 10_000.0;
                st.execute(params![
                    id,
                    tid,
                    acc,
                    emp,
                    ts(when(&mut rng)),
                    lat,
                    lon,
                    key
                ])?;
            }
            *counts.entry("attendance_checkins").or_default() += n;
        }
        let acc_id = |rng: &mut Rng| rng.pick(&accounts).0;
        let token = |rng: &mut Rng| format!("{:016x}{:016x}", rng.next(), rng.next());
        {
            let mut st = tx.prepare("INSERT INTO audit_log VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?;
            let n = 150 * size;
            for _ in 0..n {
                let action = *rng.pick(&[
                    "conversation.assign",
                    "contact.update",
                    "contact.export",
                    "user.invite",
                    "settings.update",
                ]);
                st.execute(params![
                    next_id("audit_log"),
                    tid,
                    acc_id(&mut rng),
                    action,
                    format!("contact:{}", rng.below(10_000)),
                    ts(when(&mut rng))
                ])?;
            }
            *counts.entry("audit_log").or_default() += n;
        }
        {
            let mut st = tx.prepare("INSERT INTO app_log VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?;
            let n = 150 * size;
            for _ in 0..n {
                let level = *rng.pick(&["info", "info", "info", "warn", "error"]);
                let msg = *rng.pick(&[
                    "webhook delivered",
                    "sync finished",
                    "template rejected by provider",
                    "rate limited by provider",
                ]);
                st.execute(params![
                    next_id("app_log"),
                    tid,
                    level,
                    msg,
                    acc_id(&mut rng),
                    ts(when(&mut rng))
                ])?;
            }
            *counts.entry("app_log").or_default() += n;
        }
        {
            let mut st = tx.prepare("INSERT INTO security_log VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?;
            let n = 60 * size;
            for _ in 0..n {
                let ev = *rng.pick(&[
                    "login.success",
                    "login.success",
                    "login.failure",
                    "role.change",
                    "password.reset",
                ]);
                st.execute(params![
                    next_id("security_log"),
                    tid,
                    ev,
                    acc_id(&mut rng),
                    token(&mut rng),
                    ts(when(&mut rng))
                ])?;
            }
            *counts.entry("security_log").or_default() += n;
        }
        {
            let mut st =
                tx.prepare("INSERT INTO magic_link_tokens VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?;
            let n = 20 * size;
            for k in 0..n {
                // Recent ones, some within the 30-minute window.
                let issued = end
                    - Duration::minutes(if k % 4 == 0 {
                        rng.below(25) as i64
                    } else {
                        rng.below(60 * 24 * 7) as i64
                    });
                let used = rng
                    .chance(0.7)
                    .then(|| issued + Duration::minutes(1 + rng.below(10) as i64));
                st.execute(params![
                    next_id("magic_link_tokens"),
                    tid,
                    acc_id(&mut rng),
                    token(&mut rng),
                    ts(issued),
                    used.map(ts)
                ])?;
            }
            *counts.entry("magic_link_tokens").or_default() += n;
        }
        {
            let mut st =
                tx.prepare("INSERT INTO refresh_tokens VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?;
            let n = 30 * size;
            for _ in 0..n {
                let issued = end - Duration::hours(rng.below(24 * 60) as i64);
                st.execute(params![
                    next_id("refresh_tokens"),
                    tid,
                    acc_id(&mut rng),
                    token(&mut rng),
                    ts(issued),
                    ts(issued + Duration::days(30))
                ])?;
            }
            *counts.entry("refresh_tokens").or_default() += n;
        }
        {
            let mut st = tx.prepare("INSERT INTO revoked_tokens VALUES (?1, ?2, ?3, ?4)")?;
            let n = 10 * size;
            for _ in 0..n {
                st.execute(params![
                    next_id("revoked_tokens"),
                    tid,
                    token(&mut rng),
                    ts(end - Duration::hours(rng.below(24 * 60) as i64))
                ])?;
            }
            *counts.entry("revoked_tokens").or_default() += n;
        }
        {
            let mut st = tx.prepare("INSERT INTO ip_hashes VALUES (?1, ?2, ?3, ?4, ?5)")?;
            let n = 50 * size;
            for _ in 0..n {
                st.execute(params![
                    next_id("ip_hashes"),
                    tid,
                    acc_id(&mut rng),
                    token(&mut rng),
                    ts(when(&mut rng))
                ])?;
            }
            *counts.entry("ip_hashes").or_default() += n;
        }
        {
            let mut st =
                tx.prepare("INSERT INTO support_tickets VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?;
            let n = 12 * size;
            for _ in 0..n {
                let (subject, body) = *rng.pick(TICKETS);
                let created = when(&mut rng);
                let resolved = created + Duration::days(1 + rng.below(40) as i64);
                let resolved = (resolved < end).then_some(resolved);
                st.execute(params![
                    next_id("support_tickets"),
                    tid,
                    rng.pick(&customers).email,
                    subject,
                    body,
                    ts(created),
                    resolved.map(ts)
                ])?;
            }
            *counts.entry("support_tickets").or_default() += n;
        }
        {
            let mut st = tx.prepare(
                "INSERT INTO billing_records VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            let n = 24 * size;
            for k in 0..n {
                let c = rng.pick(&customers);
                let invoiced = when(&mut rng);
                let due = (invoiced + Duration::days(14))
                    .format("%Y-%m-%d")
                    .to_string();
                st.execute(params![
                    next_id("billing_records"),
                    tid,
                    format!("INV/{}/{:05}", tid.to_uppercase(), k + 1),
                    c.name,
                    c.email,
                    (50 + rng.below(5000)) as i64 * 1000,
                    rng.chance(0.85),
                    ts(invoiced),
                    due
                ])?;
            }
            *counts.entry("billing_records").or_default() += n;
        }
    }
    tx.commit()?;
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); ANALYZE;")?;
    Ok(Generated {
        rows: counts
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        blobs: blob_count,
    })
}

fn write_blob(root: &Path, key: &str, magic: &[u8], rng: &mut Rng) -> std::io::Result<()> {
    let p = root.join(key);
    if p.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(p.parent().expect("has a parent"))?;
    let mut bytes = magic.to_vec();
    let n = 512 + rng.below(1536) as usize;
    bytes.extend((0..n / 8).flat_map(|_| rng.next().to_le_bytes()));
    std::fs::write(p, bytes)
}

/// Today 00:00 UTC: the end of the generated time range, so one seed gives one database per day.
pub fn anchor_today() -> DateTime<Utc> {
    let now = Utc::now();
    Utc.from_utc_datetime(&now.date_naive().and_hms_opt(0, 0, 0).expect("midnight"))
}

/// Create the demo's files and database if missing. Returns (config path, Some(generated) if the database was created now).
pub fn prepare(opts: &DemoOptions) -> crate::Result<(PathBuf, Option<Generated>)> {
    let dir = &opts.dir;
    let io =
        |e: std::io::Error| crate::Error::Usage(format!("cannot prepare {}: {e}", dir.display()));
    if opts.tenants < 2 {
        return Err(crate::Error::Usage(format!(
            "--tenants {} is too few: the demo policy's override and legal hold name its first two tenants; use 2 or more",
            opts.tenants
        )));
    }
    if let Some(url) = &opts.source
        && url::Url::parse(url).is_ok_and(|u| u.password().is_some())
    {
        return Err(crate::Error::Usage(
            "--source must not carry a password (it would be written to lethe.toml): put it in PGPASSWORD".into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    write_files(dir, opts.source.as_deref()).map_err(io)?;
    let db = dir.join("source.db");
    if db.exists() {
        return Ok((dir.join("lethe.toml"), None));
    }
    let tmp = dir.join("source.db.tmp");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", tmp.display()));
    }
    let generated = generate(&tmp, &dir.join("blobs"), opts, anchor_today())
        .map_err(|e| crate::Error::Usage(format!("cannot generate the demo database: {e}")))?;
    std::fs::rename(&tmp, &db).map_err(io)?;
    Ok((dir.join("lethe.toml"), Some(generated)))
}

/// The demo schema with PostgreSQL types.
pub fn postgres_schema() -> String {
    SCHEMA_SQL
        .replace(" INTEGER", " bigint")
        .replace(" REAL", " double precision")
        .replace(" TIMESTAMP", " timestamptz")
        .replace(" BOOLEAN", " boolean")
}

/// One SQLite value in COPY text format.
fn copy_text(out: &mut String, v: rusqlite::types::ValueRef<'_>, declared: &str) {
    use rusqlite::types::ValueRef::*;
    match v {
        Null => out.push_str("\\N"),
        Integer(i) if declared == "BOOLEAN" => out.push(if i != 0 { 't' } else { 'f' }),
        Integer(i) => out.push_str(&i.to_string()),
        Real(f) => out.push_str(&format!("{f:?}")),
        Text(t) => {
            for c in String::from_utf8_lossy(t).chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\t' => out.push_str("\\t"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    c => out.push(c),
                }
            }
            if declared == "TIMESTAMP" {
                out.push_str("+00");
            }
        }
        Blob(b) => {
            out.push_str("\\\\x");
            out.push_str(&crate::util::hex(b));
        }
    }
}

/// Load the demo database into PostgreSQL (tables of `schemas/demo_app.sql` with PostgreSQL
/// types, rows by `COPY … FROM STDIN`). Existing demo tables are kept: returns `None` then.
/// An error with its sources (tokio-postgres alone prints only "db error").
fn pg_err(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

pub async fn load_into_postgres(sqlite: &Path, url: &str) -> Result<Option<u64>, String> {
    use crate::source::postgres;
    use futures::SinkExt;
    let config = postgres::config(url).map_err(|e| e.to_string())?;
    let client = postgres::connect(&config, url)
        .await
        .map_err(|e| e.to_string())?;
    let row = client
        .query_one(
            "SELECT to_regclass('tenants') IS NOT NULL, to_regclass('lethe_demo') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| pg_err(&e))?;
    let (exists, ours): (bool, bool) = (row.get(0), row.get(1));
    if exists && ours {
        return Ok(None);
    }
    if exists {
        // The demo deletes data (it runs retention): never on tables it did not create.
        return Err(
            "the database already has a `tenants` table the demo did not create; point --source at an empty database or schema"
                .into(),
        );
    }
    client
        .batch_execute(&format!(
            "BEGIN; {} CREATE TABLE lethe_demo (created_at timestamptz NOT NULL DEFAULT now()); INSERT INTO lethe_demo DEFAULT VALUES;",
            postgres_schema()
        ))
        .await
        .map_err(|e| pg_err(&e))?;
    let db = Connection::open(sqlite).map_err(|e| pg_err(&e))?;
    let tables: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| pg_err(&e))?;
    let mut total = 0u64;
    for table in tables {
        let decl: Vec<String> = db
            .prepare(&format!("PRAGMA table_info({table})"))
            .and_then(|mut s| s.query_map([], |r| r.get(2))?.collect())
            .map_err(|e| pg_err(&e))?;
        let sink = client
            .copy_in(&format!("COPY {table} FROM STDIN"))
            .await
            .map_err(|e| pg_err(&e))?;
        futures::pin_mut!(sink);
        let mut stmt = db
            .prepare(&format!("SELECT * FROM {table}"))
            .map_err(|e| pg_err(&e))?;
        let mut rows = stmt.query([]).map_err(|e| pg_err(&e))?;
        let mut buf = String::new();
        while let Some(r) = rows.next().map_err(|e| pg_err(&e))? {
            for (i, d) in decl.iter().enumerate() {
                if i > 0 {
                    buf.push('\t');
                }
                copy_text(&mut buf, r.get_ref(i).map_err(|e| pg_err(&e))?, d);
            }
            buf.push('\n');
            total += 1;
            if buf.len() > 1 << 20 {
                sink.send(bytes::Bytes::from(std::mem::take(&mut buf)))
                    .await
                    .map_err(|e| pg_err(&e))?;
            }
        }
        sink.send(bytes::Bytes::from(buf))
            .await
            .map_err(|e| pg_err(&e))?;
        sink.as_mut()
            .finish()
            .await
            .map_err(|e| format!("COPY {table}: {}", pg_err(&e)))?;
    }
    client
        .batch_execute("COMMIT")
        .await
        .map_err(|e| pg_err(&e))?;
    Ok(Some(total))
}
