#!/usr/bin/env python3
"""Generate the benchmark table in SQLite: the shape of ../shared/peers/01_create_messages.sql.

    messages(id, tenant_id, customer_phone, customer_name, channel, direction, body, status, created_at)

200 skewed tenants (tenant t001 is the biggest), a pool of 200,000 customers, 4 channels,
40-200-character bodies of Indonesian/English chat words, created_at growing with id over the
400 days before ANCHOR. Deterministic (fixed seed). Tenant ids are slugs ("t001"): lethe puts
tenant ids in object keys. An index on tenant_id serves lethe's per-tenant reads.

usage: gen_messages_sqlite.py DB [NROWS] [ANCHOR_EPOCH]
"""
import random
import sqlite3
import sys
import time

WORDS = ("halo terima kasih pesanan anda sudah dikirim mohon tunggu order status payment confirmed "
         "please check your delivery tomorrow besok hari ini promo diskon produk harga stok tersedia "
         "kak bisa tolong info alamat nomor resi paket sampai kapan jam buka tutup thanks hello the okay "
         "baik siap yaa tidak belum invoice refund cancel batal ganti ukuran warna merah biru hitam putih "
         "jadwal janji temu dokter klinik antrian booking meja kamar hotel tiket pesawat kereta bus "
         "transfer bank qris ovo gopay dana lunas tagihan cicilan garansi servis rusak tukar kirim ulang "
         "selamat pagi siang sore malam").split()
FIRST = ("Budi Siti Agus Dewi Andi Rina Joko Sri Eko Wati Rudi Ani Hendra Lina Yusuf Maya Dian Fajar "
         "Putri Bayu Indra Nur Rizky Sari Ahmad Fitri Bambang Yuni Dedi Ratna Arif Lestari Hadi Mega "
         "Irfan Intan Reza Ayu Taufik Wulan").split()
LAST = ("Santoso Wijaya Saputra Pratama Hidayat Nugroho Kusuma Setiawan Gunawan Siregar Hasibuan "
        "Nasution Lubis Simanjuntak Halim Tanjung Putra Sihombing Susanto Wibowo Purnomo Rahman Hakim "
        "Syahputra Firmansyah Kurniawan Suryadi Harahap Panjaitan Sitompul Utomo Budiman Permana Ramadhan "
        "Maulana Hartono Salim Tan Lim Wong Situmorang Manurung Pohan Daulay Ginting Tarigan Sembiring "
        "Barus Sinaga Pardede").split()
STATUS = ["sent", "delivered", "read", "read", "failed"]


def main():
    db = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 5_000_000
    anchor = int(sys.argv[3]) if len(sys.argv) > 3 else 1795305600  # 2026-11-22 00:00 UTC
    rng = random.Random(42)
    conn = sqlite3.connect(db)
    conn.executescript("""
        PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
        DROP TABLE IF EXISTS messages; DROP TABLE IF EXISTS tenants;
        CREATE TABLE tenants (id TEXT PRIMARY KEY, status TEXT NOT NULL, cancelled_at TIMESTAMP);
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY, tenant_id TEXT NOT NULL, customer_phone TEXT NOT NULL,
            customer_name TEXT NOT NULL, channel TEXT NOT NULL, direction TEXT NOT NULL,
            body TEXT NOT NULL, status TEXT NOT NULL, created_at TIMESTAMP NOT NULL);
    """)
    conn.executemany("INSERT INTO tenants VALUES (?, 'active', NULL)", [(f"t{i:03d}",) for i in range(1, 201)])
    span = 400 * 86400
    start = anchor - span
    t0 = time.time()

    def rows():
        for i in range(1, n + 1):
            r = rng.random()
            tenant = f"t{1 + int(r * r * 200):03d}"
            cust = rng.randrange(200_000)
            phone = "+62812" + f"{(cust * 7919) % 10_000_000:07d}"
            name = FIRST[cust % 40] + " " + LAST[(cust // 40) % 50]
            rc = rng.random()
            channel = "whatsapp" if rc < 0.7 else "telegram" if rc < 0.8 else "instagram" if rc < 0.95 else "email"
            direction = "inbound" if rng.random() < 0.5 else "outbound"
            blen = 40 + rng.randrange(161)
            words = []
            length = 0
            while length < blen:
                w = WORDS[rng.randrange(len(WORDS))]
                words.append(w)
                length += len(w) + 1
            body = " ".join(words)[:blen]
            ts = start + (span * i) // n + rng.randrange(60)
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))
            yield (i, tenant, phone, name, channel, direction, body, STATUS[rng.randrange(5)], created)

    conn.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows())
    conn.commit()
    conn.execute("CREATE INDEX messages_tenant ON messages (tenant_id)")
    conn.execute("ANALYZE")
    conn.commit()
    print(f"{n} rows in {time.time() - t0:.1f} s -> {db}", file=sys.stderr)


if __name__ == "__main__":
    main()
