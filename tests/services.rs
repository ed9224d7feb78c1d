//! The same pipeline against a real S3-compatible HTTP server (moto): snapshot → S3 → verify →
//! restore equals the source; nothing personal in any object; large files go up as multipart
//! uploads; a run that cannot upload commits nothing.

mod common;

use common::moto::Moto;
use common::pg::PgSchema;
use common::{demo, lethe_env};
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};

/// Point the demo's lethe.toml at `s3://bucket/prefix` on the test server.
fn use_s3(d: &common::Demo, moto: &Moto, bucket: &str) {
    let text = std::fs::read_to_string(&d.config).unwrap();
    let text = text.replace(
        "[store]\nurl = \"store\"\n",
        &format!("[store]\nurl = \"s3://{bucket}/prod/backups\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = true\npath_style = true\n", moto.endpoint()),
    );
    assert!(text.contains("s3://"), "lethe.toml layout changed");
    std::fs::write(&d.config, text).unwrap();
}

#[test]
fn snapshot_to_s3_verifies_restores_and_leaks_nothing() {
    let Some(moto) = Moto::start("snapshot_to_s3") else {
        return;
    };
    moto.create_bucket("lethe-test");
    let d = demo(3, 60);
    use_s3(&d, &moto, "lethe-test");
    let cfg = d.config.to_str().unwrap();
    let env = moto.env();

    let (code, out, err) = lethe_env(&["--config", cfg, "run", "snapshot"], &env);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = lethe_env(&["--config", cfg, "snapshot", "verify"], &env);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("3 runs, 45 files"), "{out}");

    // Restore from S3 equals the source, table by table (row counts; cell equality is covered
    // by the local-store test on the same code path).
    let out_dir = d.dir.join("restored");
    let (code, out, err) = lethe_env(
        &[
            "--config",
            cfg,
            "snapshot",
            "restore",
            "--tenant",
            "kopi-senja",
            "--out",
            out_dir.to_str().unwrap(),
            "--format",
            "csv",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let conn = rusqlite::Connection::open(d.db()).unwrap();
    for line in out.lines().filter(|l| l.contains(" rows ")) {
        let table = line.split_whitespace().next().unwrap();
        let restored: i64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let tcol = if table == "tenants" {
            "id"
        } else {
            "tenant_id"
        };
        let source: i64 = conn
            .query_row(
                &format!("SELECT count(*) FROM {table} WHERE {tcol} = 'kopi-senja'"),
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(restored, source, "{table}");
    }

    // Every object in the bucket, raw: no personal data.
    let needles = common::personal_needles(&d.db());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s3 = moto.client("lethe-test");
        let objects: Vec<_> = s3.list(None).try_collect().await.unwrap();
        assert!(objects.len() >= 48, "{} objects", objects.len());
        // Snapshot files, and the snapshot lease's generations (one snapshot run at a time).
        assert!(objects.iter().all(|o| {
            let k = o.location.as_ref();
            k.starts_with("prod/backups/snapshots/tenant=")
                || k.starts_with("prod/backups/locks/snapshot/")
        }));
        for o in objects {
            let bytes = s3.get(&o.location).await.unwrap().bytes().await.unwrap();
            assert!(
                common::found_in(&bytes, &needles).is_empty(),
                "{} holds personal data",
                o.location
            );
        }
    });
}

#[test]
fn large_files_go_up_as_multipart_and_verify() {
    let Some(moto) = Moto::start("large_files_multipart") else {
        return;
    };
    moto.create_bucket("lethe-big");
    let d = demo(2, 30);
    // One tenant with ~40 MB of hex message bodies (~20 MB after zstd): three 8 MiB parts.
    let conn = rusqlite::Connection::open(d.db()).unwrap();
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 150000)
         INSERT INTO messages (tenant_id, customer_phone, customer_name, channel, direction, body, status, created_at)
         SELECT 'kopi-senja', '+6281200000000', 'x', 'whatsapp', 'inbound', hex(randomblob(130)), 'read', '2026-11-01 00:00:00' FROM n",
        [],
    ).unwrap();
    drop(conn);
    use_s3(&d, &moto, "lethe-big");
    let cfg = d.config.to_str().unwrap();
    let (code, out, err) = lethe_env(&["--config", cfg, "run", "snapshot"], &moto.env());
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = lethe_env(&["--config", cfg, "snapshot", "verify"], &moto.env());
    assert_eq!(code, 0, "{out}\n{err}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let biggest = rt.block_on(async {
        let objects: Vec<_> = moto
            .client("lethe-big")
            .list(None)
            .try_collect()
            .await
            .unwrap();
        objects.into_iter().map(|o| o.size).max().unwrap()
    });
    assert!(
        biggest > 2 * (8 << 20),
        "largest object {biggest} B: not a multipart-sized file"
    );
}

#[test]
fn a_run_that_cannot_upload_commits_nothing() {
    let Some(moto) = Moto::start("run_that_cannot_upload") else {
        return;
    };
    moto.create_bucket("lethe-real");
    let d = demo(2, 30);
    use_s3(&d, &moto, "no-such-bucket");
    let (code, out, err) = lethe_env(
        &["--config", d.config.to_str().unwrap(), "run", "snapshot"],
        &moto.env(),
    );
    assert_eq!(code, 1, "{out}\n{err}");
    // Either each tenant's upload fails, or the run stops before it starts, when it lists the
    // store for the keys its contents were made under.
    assert!(
        (out.contains("FAILED")
            && out.contains("upload of snapshots/tenant=")
            && out.contains("NoSuchBucket"))
            || err.contains("NoSuchBucket"),
        "{out}\n{err}"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let objects: Vec<_> = moto
            .client("lethe-real")
            .list(None)
            .try_collect()
            .await
            .unwrap();
        assert!(objects.is_empty());
    });
    let (code, out, _) = lethe_env(
        &["--config", d.config.to_str().unwrap(), "snapshot", "ls"],
        &moto.env(),
    );
    assert!(code != 0 || !out.contains("kopi-senja"), "{out}");
}

/// Point the demo's lethe.toml at PostgreSQL.
#[test]
fn postgres_to_s3_round_trip_with_types() {
    let Some(pg) = PgSchema::create("pg_to_s3") else {
        return;
    };
    let Some(moto) = Moto::start("pg_to_s3") else {
        return;
    };
    moto.create_bucket("lethe-pg");
    let d = demo(3, 60);
    let loaded = pg
        .block_on(lethe::demo::load_into_postgres(&d.db(), &pg.url))
        .unwrap();
    assert!(loaded.unwrap() > 1000);
    common::use_pg(&d, &pg.url);
    use_s3(&d, &moto, "lethe-pg");
    let cfg = d.config.to_str().unwrap();
    let env = moto.env();
    let (code, out, err) = lethe_env(&["--config", cfg, "check"], &env);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = lethe_env(&["--config", cfg, "run", "snapshot"], &env);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = lethe_env(&["--config", cfg, "snapshot", "verify"], &env);
    assert_eq!(code, 0, "{out}\n{err}");
    // PostgreSQL was loaded from the demo's SQLite file: restored rows equal it cell by cell,
    // and bigint/double/text/boolean/date/timestamptz map to Int64/Float64/Utf8/Boolean/Date32/Timestamp(µs, UTC).
    restore_equals_source(&d, &env, "klinik-sehat", "restored");
}

#[test]
fn postgres_types_and_unsupported_columns() {
    let Some(pg) = PgSchema::create("pg_types") else {
        return;
    };
    pg.execute(
        "CREATE TABLE tenants (id text PRIMARY KEY, status text, cancelled_at timestamptz);
         INSERT INTO tenants VALUES ('acme', 'active', NULL), ('globex', 'cancelled', '2026-10-01 12:00:00+00');
         CREATE TABLE things (
           id bigint PRIMARY KEY, tenant_id text NOT NULL, small smallint, med integer, f4 real, f8 double precision,
           price numeric(12,2), anynum numeric, note varchar(20), flag boolean, day date, at timestamp, att timestamptz,
           uid uuid, doc jsonb, raw bytea, js json);
         INSERT INTO things VALUES
           (1, 'acme', -3, 70000, 1.5, 2.25, 1234.56, 0.000000001, 'hé', true, '2024-02-29', '2026-01-02 03:04:05.678901',
            '2026-01-02 03:04:05+07', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"k\": [1, 2]}', '\\x00ff', '[1]'),
           (2, 'acme', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
           (3, 'globex', 1, 1, 1, 1, -0.01, 42, 'x', false, '1970-01-01', '1999-12-31 23:59:59', '2000-01-01 00:00:00+00',
            '00000000-0000-0000-0000-000000000000', 'null', '\\x', '{}');",
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("schemas")).unwrap();
    std::fs::create_dir_all(dir.join("jobs")).unwrap();
    std::fs::write(dir.join("schemas/t.toml"),
        "[tenants]\ntable = \"tenants\"\nid_column = \"id\"\nstatus_column = \"status\"\ncancelled_at_column = \"cancelled_at\"\n\
         [tables.things]\ntenant_column = \"tenant_id\"\nprimary_key = \"id\"\ncategories = [\"things\"]\ntime_column = \"att\"\n").unwrap();
    std::fs::write(dir.join("jobs/retention.toml"),
        "version = \"t\"\n[categories.things]\nretain = \"90d\"\n[backups]\nretain = \"30d\"\nafter_termination = \"90d\"\n[termination]\nprimary_data_after = \"30d\"\n").unwrap();
    std::fs::write(
        dir.join("lethe.toml"),
        format!("[source]\nurl = \"{}\"\n[store]\nurl = \"store\"\n", pg.url),
    )
    .unwrap();
    let cfg = dir.join("lethe.toml");
    let cfg = cfg.to_str().unwrap();
    let (code, out, err) = common::lethe(&["--config", cfg, "run", "snapshot"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let out_dir = dir.join("r");
    let (code, out, err) = common::lethe(&[
        "--config",
        cfg,
        "snapshot",
        "restore",
        "--tenant",
        "acme",
        "--out",
        out_dir.to_str().unwrap(),
        "--format",
        "csv",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let csv = std::fs::read_to_string(out_dir.join("things/part-0.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "id,tenant_id,small,med,f4,f8,price,anynum,note,flag,day,at,att,uid,doc,raw,js"
    );
    let row1 = lines.next().unwrap();
    for want in [
        "1,acme,-3,70000,1.5,2.25,1234.56,0.000000001,hé,true,2024-02-29,2026-01-02T03:04:05.678901,2026-01-01T20:04:05Z",
        "a0eebc999c0b4ef8bb6d6bb9bd380a11",
        "{\"\"k\"\": [1, 2]}",
        "00ff",
        "[1]",
    ] {
        assert!(row1.contains(want), "{want:?} not in {row1}");
    }
    assert_eq!(lines.next().unwrap(), "2,acme,,,,,,,,,,,,,,,");
    assert!(lines.next().is_none());

    // A column of a type lethe does not map is named, with a fix, and nothing is written.
    pg.execute("ALTER TABLE things ADD COLUMN span interval");
    let (code, _, err) = common::lethe(&["--config", cfg, "check"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("things") && err.contains("span") && err.contains("interval"),
        "{err}"
    );
}

#[test]
fn versioned_bucket_purge_leaves_no_version_and_no_delete_marker() {
    let Some(moto) = Moto::start("versioned_purge") else {
        return;
    };
    moto.create_bucket_with("lethe-versions", true, false);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s3 = moto.client("lethe-versions");
        let put = |k: &'static str, v: &'static str| {
            let s3 = &s3;
            async move {
                s3.put(
                    &object_store::path::Path::from(k),
                    bytes::Bytes::from(v).into(),
                )
                .await
                .unwrap()
            }
        };
        // Three versions of one file, a deleted file (version + delete marker), a neighbour outside the prefix.
        for v in ["v1", "v2", "v3"] {
            put("prod/snapshots/tenant=a/run=1/messages/part-0.parquet", v).await;
        }
        put("prod/snapshots/tenant=a/run=1/_manifest.json", "m").await;
        s3.delete(&object_store::path::Path::from(
            "prod/snapshots/tenant=a/run=1/_manifest.json",
        ))
        .await
        .unwrap();
        put("prod/snapshots/tenant=b/run=1/_manifest.json", "keep").await;

        let admin = lethe::s3::S3Admin::from_client(moto.sdk(), "lethe-versions", "prod");
        // A prefix that would also match a sibling (tenant=ab…) or the whole store is refused,
        // and nothing is deleted.
        put("prod/snapshots/tenant=ab/run=1/_manifest.json", "sibling").await;
        for bad in ["snapshots/tenant=a", "", "/"] {
            let e = admin.purge_prefix(bad).await.unwrap_err();
            assert!(
                matches!(e, lethe::store::StoreError::UnsafePurge { .. }),
                "{bad:?}: {e}"
            );
        }
        assert_eq!(
            admin.versioning().await.unwrap(),
            lethe::s3::Versioning::Enabled
        );
        let out = admin.purge_prefix("snapshots/tenant=a/").await.unwrap();
        assert_eq!(out.versions_deleted, 4, "{out:?}");
        assert_eq!(out.delete_markers_deleted, 1, "{out:?}");
        assert!(out.locked.is_empty());
        assert_eq!(out.remaining, 0, "{out:?}");

        // Independently: nothing of tenant a under any version; tenant b untouched.
        let sdk = moto.sdk();
        let v = sdk
            .list_object_versions()
            .bucket("lethe-versions")
            .prefix("prod/snapshots/tenant=a/")
            .send()
            .await
            .unwrap();
        assert!(v.versions().is_empty() && v.delete_markers().is_empty());
        for neighbour in ["prod/snapshots/tenant=b/", "prod/snapshots/tenant=ab/"] {
            let v = sdk
                .list_object_versions()
                .bucket("lethe-versions")
                .prefix(neighbour)
                .send()
                .await
                .unwrap();
            assert_eq!(v.versions().len(), 1, "{neighbour}");
        }
    });
}

#[test]
fn an_object_under_object_lock_is_reported_with_its_retain_until_date_not_lost() {
    let Some(moto) = Moto::start("object_lock") else {
        return;
    };
    moto.create_bucket_with("lethe-locked", true, true);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let admin = lethe::s3::S3Admin::from_client(moto.sdk(), "lethe-locked", "audit");
        assert!(admin.object_lock_enabled().await.unwrap());
        let until = chrono::Utc::now() + chrono::Duration::days(30);
        let lock = lethe::s3::Lock {
            mode: "COMPLIANCE".into(),
            retain_until: until,
        };
        admin
            .put_locked(
                "certificates/tenant=a/r1/final.jws",
                bytes::Bytes::from_static(b"jws"),
                &lock,
            )
            .await
            .unwrap();
        let out = admin.purge_prefix("certificates/").await.unwrap();
        assert_eq!(out.versions_deleted, 0, "{out:?}");
        assert_eq!(out.locked.len(), 1, "{out:?}");
        let l = &out.locked[0];
        assert_eq!(l.key, "audit/certificates/tenant=a/r1/final.jws");
        assert_eq!(l.mode.as_deref(), Some("COMPLIANCE"));
        assert!(
            l.retain_until
                .as_deref()
                .is_some_and(|d| d.starts_with(&until.format("%Y-%m-%d").to_string())),
            "{l:?}"
        );
        assert_eq!(out.remaining, 1);
        // Still there.
        moto.sdk()
            .head_object()
            .bucket("lethe-locked")
            .key("audit/certificates/tenant=a/r1/final.jws")
            .send()
            .await
            .unwrap();
    });
}

async fn put_fake_run(
    store: &lethe::store::Store,
    tenant: &str,
    run: &str,
    parts: usize,
    tag: &str,
) {
    lethe::snapshot::testing::fake_run(store, tenant, run, parts, tag, "2026-11-22T20:50:11Z")
        .await;
}

/// (versions, delete markers) under `prefix` (full key), by the SDK, independently of lethe.
async fn count_versions(sdk: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> (usize, usize) {
    let v = sdk
        .list_object_versions()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .unwrap();
    assert_ne!(v.is_truncated(), Some(true));
    (v.versions().len(), v.delete_markers().len())
}

/// A `Store` over the test server's bucket under `prefix` (credentials given, not from the env).
fn s3_store(moto: &Moto, bucket: &str, prefix: &str) -> lethe::store::Store {
    lethe::store::Store::from_object_store(
        format!("s3://{bucket}/{prefix}"),
        std::sync::Arc::new(object_store::prefix::PrefixStore::new(
            moto.client(bucket),
            prefix,
        )),
    )
}

#[test]
fn purge_run_on_a_versioned_bucket_leaves_no_version_and_no_delete_marker_of_the_run() {
    let Some(moto) = Moto::start("purge_run_versioned") else {
        return;
    };
    let bucket = "lethe-purge-run";
    moto.create_bucket_with(bucket, true, false);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = s3_store(&moto, bucket, "prod");
        let sdk = moto.sdk();
        // The run, written twice: every object has two versions.
        put_fake_run(&store, "acme", "r1", 3, "first").await;
        put_fake_run(&store, "acme", "r1", 3, "second").await;
        // A deleted object of the run: one version and a delete marker.
        let gone = lethe::snapshot::part_key("acme", "r1", "calls", 0);
        store.put(&gone, bytes::Bytes::from("x")).await.unwrap();
        sdk.delete_object()
            .bucket(bucket)
            .key(format!("prod/{gone}"))
            .send()
            .await
            .unwrap();
        // Neighbours: r10 shares the string prefix `run=r1`; another tenant's r1.
        put_fake_run(&store, "acme", "r10", 2, "first").await;
        put_fake_run(&store, "acme2", "r1", 1, "first").await;
        let run = "prod/snapshots/tenant=acme/run=r1/";
        assert_eq!(count_versions(&sdk, bucket, run).await, (9, 1));

        let admin = lethe::s3::S3Admin::from_client(moto.sdk(), bucket, "prod");
        let out = lethe::snapshot::purge::purge_run(&store, Some(&admin), "acme", "r1")
            .await
            .unwrap();
        assert_eq!(
            out.method,
            lethe::snapshot::purge::METHOD_PURGE_ALL_VERSIONS
        );
        assert!(out.verified, "{out:?}");
        assert!(out.locked.is_empty(), "{out:?}");
        assert_eq!(out.objects_deleted, 4, "{out:?}"); // 3 parts and the manifest
        assert_eq!(out.versions_deleted, 9, "{out:?}");
        // The deleted object's marker and the one the manifest delete left first.
        assert_eq!(out.delete_markers_deleted, 2, "{out:?}");

        // Independently: nothing of the run under any version; the neighbours untouched.
        assert_eq!(count_versions(&sdk, bucket, run).await, (0, 0));
        assert_eq!(
            count_versions(&sdk, bucket, "prod/snapshots/tenant=acme/run=r10/").await,
            (3, 0)
        );
        assert_eq!(
            count_versions(&sdk, bucket, "prod/snapshots/tenant=acme2/").await,
            (2, 0)
        );
        let committed: Vec<String> = lethe::snapshot::read::committed(&store, "acme")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.run_id)
            .collect();
        assert_eq!(committed, ["r10"]);

        // Again: already gone, nothing deleted (not even a stray delete marker made), verified.
        let again = lethe::snapshot::purge::purge_run(&store, Some(&admin), "acme", "r1")
            .await
            .unwrap();
        assert!(again.verified, "{again:?}");
        assert_eq!(
            (
                again.objects_deleted,
                again.versions_deleted,
                again.delete_markers_deleted
            ),
            (0, 0, 0),
            "{again:?}"
        );
        assert_eq!(count_versions(&sdk, bucket, run).await, (0, 0));
    });
}

#[test]
fn purge_run_reports_an_object_locked_manifest_and_keeps_the_run_uncommitted() {
    let Some(moto) = Moto::start("purge_run_locked") else {
        return;
    };
    let bucket = "lethe-purge-locked";
    moto.create_bucket_with(bucket, true, true);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = s3_store(&moto, bucket, "prod");
        let admin = lethe::s3::S3Admin::from_client(moto.sdk(), bucket, "prod");
        put_fake_run(&store, "acme", "r1", 2, "first").await;
        // The manifest rewritten under a compliance lock: the run stays committed.
        let manifest = lethe::snapshot::manifest_key("acme", "r1");
        let body = store.get(&manifest).await.unwrap();
        let until = chrono::Utc::now() + chrono::Duration::days(30);
        let lock = lethe::s3::Lock {
            mode: "COMPLIANCE".into(),
            retain_until: until,
        };
        admin
            .put_locked(manifest.as_ref(), body, &lock)
            .await
            .unwrap();

        let out = lethe::snapshot::purge::purge_run(&store, Some(&admin), "acme", "r1")
            .await
            .unwrap();
        // The locked version stays and is reported; the unlocked first version went.
        assert_eq!(out.locked.len(), 1, "{out:?}");
        assert_eq!(
            out.locked[0].key,
            "prod/snapshots/tenant=acme/run=r1/_manifest.json"
        );
        assert_eq!(out.versions_deleted, 3, "{out:?}");
        assert_eq!(out.objects_deleted, 2, "{out:?}"); // the parts; the manifest stays
        // Nothing else is left, and the locked manifest is hidden again: the run is not
        // committed, so no reader trusts a manifest whose files are gone.
        assert!(out.verified, "{out:?}");
        assert!(store.get_opt(&manifest).await.unwrap().is_none());
        assert!(
            lethe::snapshot::read::committed(&store, "acme")
                .await
                .unwrap()
                .is_empty()
        );
        let (versions, _markers) =
            count_versions(&moto.sdk(), bucket, "prod/snapshots/tenant=acme/run=r1/").await;
        assert_eq!(versions, 1);
    });
}

fn pg_strings(pg: &PgSchema, sql: &str) -> std::collections::BTreeSet<String> {
    let url = pg.url.clone();
    let sql = sql.to_string();
    pg.block_on(async move {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .query(&sql, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect()
    })
}

/// Retention end to end on the real services: PostgreSQL as the primary database, the
/// snapshots, audit records and checkpoints in a versioned S3 bucket.
#[test]
fn retention_on_postgres_with_a_versioned_s3_store() {
    let Some(pg) = PgSchema::create("ret_pg") else {
        return;
    };
    let Some(moto) = Moto::start("ret_pg") else {
        return;
    };
    let bucket = "lethe-ret";
    moto.create_bucket_with(bucket, true, false);
    let d = demo(4, 150);
    pg.block_on(lethe::demo::load_into_postgres(&d.db(), &pg.url))
        .unwrap();
    common::use_pg(&d, &pg.url);
    use_s3(&d, &moto, bucket);
    let mut text = std::fs::read_to_string(&d.config).unwrap();
    text.push_str("\n[retention]\nmax_share = 1.0\nbatch_rows = 200\n");
    std::fs::write(&d.config, text).unwrap();
    let cfg = d.config.to_str().unwrap();
    let env = moto.env();
    let (code, out, err) = lethe_env(&["--config", cfg, "run", "snapshot"], &env);
    assert_eq!(code, 0, "{out}\n{err}");

    // An old run of a tenant without holds, written twice: two versions of every object.
    let tenant = "toko-makmur";
    let active = pg.count(&format!(
        "SELECT count(*) FROM tenants WHERE id = '{tenant}' AND cancelled_at IS NULL"
    ));
    assert_eq!(active, 1, "the demo's tenant list changed");
    let now = chrono::Utc::now() - chrono::TimeDelta::seconds(5);
    let old = now - chrono::TimeDelta::days(45);
    let run_id = format!("{}-0a0a", old.format("%Y%m%dT%H%M%SZ"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = s3_store(&moto, bucket, "prod/backups");
    rt.block_on(async {
        for tag in ["first", "second"] {
            put_fake_run(&store, tenant, &run_id, 2, tag).await;
        }
        // Dated like its run id.
        let key = lethe::snapshot::manifest_key(tenant, &run_id);
        let mut m = lethe::snapshot::Manifest::from_bytes(&store.get(&key).await.unwrap()).unwrap();
        m.created_at = old.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        store
            .put(&key, bytes::Bytes::from(m.to_bytes_unauthenticated()))
            .await
            .unwrap();
    });
    let prefix = format!("prod/backups/snapshots/tenant={tenant}/run={run_id}/");
    let sdk = moto.sdk();
    assert_eq!(rt.block_on(count_versions(&sdk, bucket, &prefix)).0, 7);

    let cutoff = (now - chrono::TimeDelta::days(90))
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    let due = format!(
        "SELECT count(*) FROM messages WHERE created_at <= '{cutoff}' AND tenant_id NOT IN ('klinik-sehat', 'kopi-senja')"
    );
    assert!(pg.count(&due) > 100, "the demo has old messages");
    let held_before = pg.count(
        &format!(
            "SELECT count(*) FROM messages WHERE tenant_id = 'klinik-sehat' AND created_at <= '{cutoff}'"
        ),
    );
    assert!(held_before > 0);
    // What must stay: every message not yet due, and kopi-senja's old ones (kept forever).
    let keep = format!(
        "SELECT count(*) FROM messages WHERE created_at > '{cutoff}' OR tenant_id = 'kopi-senja'"
    );
    let keep_before = pg.count(&keep);

    let now_s = now.to_rfc3339();
    let (code, out, err) = lethe_env(
        &["--config", cfg, "run", "retention", "--now", &now_s],
        &env,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("backup runs purged: 1"), "{out}");
    assert_eq!(pg.count(&due), 0, "due messages left in PostgreSQL");
    assert_eq!(pg.count(&keep), keep_before, "not one message too many");
    let flag_cutoff = (now - chrono::TimeDelta::days(366))
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    assert_eq!(
        pg.count(&format!(
                "SELECT count(*) FROM accounts WHERE flagged_inactive_at IS NOT NULL AND (last_login_at IS NULL OR last_login_at > '{flag_cutoff}')"
            )
        ),
        0,
        "only accounts inactive for 12 months are flagged"
    );
    assert_eq!(
        pg.count(&format!(
                "SELECT count(*) FROM messages WHERE tenant_id = 'klinik-sehat' AND created_at <= '{cutoff}'"
            )
        ),
        held_before,
        "the legal hold keeps klinik-sehat's messages"
    );
    assert_eq!(
        rt.block_on(count_versions(&sdk, bucket, &prefix)),
        (0, 0),
        "every version and delete marker of the purged run is gone"
    );
    // No blob orphaned, no row pointing at a deleted blob.
    let refs = pg_strings(
        &pg,
        "SELECT selfie_key FROM attendance_checkins WHERE selfie_key IS NOT NULL UNION ALL SELECT recording_key FROM calls WHERE recording_key IS NOT NULL",
    );
    let root = d.dir.join("blobs");
    let files: std::collections::BTreeSet<String> = common::files(&root)
        .keys()
        .map(|p| {
            p.strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(files, refs, "blobs and references differ");
    assert_eq!(pg.count("SELECT count(*) FROM lethe_blob_outbox"), 0);

    let (code, out, err) = lethe_env(&["--config", cfg, "audit", "verify"], &env);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("1 checkpoints"), "{out}");
    let (code, out, err) = lethe_env(&["--config", cfg, "plan", "--now", &now_s], &env);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("(nothing is due)"),
        "a second plan at the same instant finds nothing: {out}"
    );
}

/// A blob on a versioned bucket is gone with every version and delete marker, and only it:
/// a sibling whose key starts with the same characters stays.
#[test]
fn purge_key_removes_every_version_of_one_blob_only() {
    let Some(moto) = Moto::start("purge_key") else {
        return;
    };
    let bucket = "lethe-blobs";
    moto.create_bucket_with(bucket, true, false);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = s3_store(&moto, bucket, "app");
        let key = object_store::path::Path::from("selfies/t1/9.jpg");
        let sibling = object_store::path::Path::from("selfies/t1/9.jpg.thumb");
        for body in ["v1", "v2"] {
            store.put(&key, bytes::Bytes::from(body)).await.unwrap();
        }
        let sdk = moto.sdk();
        // A delete marker hides both versions.
        sdk.delete_object()
            .bucket(bucket)
            .key(format!("app/{key}"))
            .send()
            .await
            .unwrap();
        store.put(&sibling, bytes::Bytes::from("t")).await.unwrap();
        assert_eq!(
            count_versions(&sdk, bucket, "app/selfies/t1/9.jpg").await,
            (3, 1)
        );
        let admin = lethe::s3::S3Admin::from_client(moto.sdk(), bucket, "app");
        let out = admin.purge_key("selfies/t1/9.jpg").await.unwrap();
        assert_eq!(
            (
                out.versions_deleted,
                out.delete_markers_deleted,
                out.remaining
            ),
            (2, 1, 0)
        );
        assert_eq!(
            count_versions(&sdk, bucket, "app/selfies/t1/9.jpg.thumb").await,
            (1, 0)
        );
        assert_eq!(
            count_versions(&sdk, bucket, "app/selfies/t1/9.jpg").await,
            (1, 0),
            "only the sibling is left"
        );
        assert!(
            admin.purge_key("selfies/").await.is_err(),
            "a prefix is not a key"
        );
    });
}

/// On a bucket with Object Lock, audit records and checkpoints are written under retention
/// (`[audit] lock_mode`, `lock_retain`), and the chain still verifies.
#[test]
fn audit_records_on_an_object_lock_bucket_are_locked() {
    let Some(moto) = Moto::start("audit_lock") else {
        return;
    };
    let bucket = "lethe-audit-lock";
    moto.create_bucket_with(bucket, true, true);
    let d = demo(3, 40);
    use_s3(&d, &moto, bucket);
    let mut text = std::fs::read_to_string(&d.config).unwrap();
    text.push_str("\n[retention]\nmax_share = 1.0\n\n[audit]\nlock_mode = \"COMPLIANCE\"\nlock_retain = \"13mo\"\n");
    std::fs::write(&d.config, text).unwrap();
    let cfg = d.config.to_str().unwrap();
    let env = moto.env();
    let (code, out, err) = lethe_env(&["--config", cfg, "run", "snapshot"], &env);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = lethe_env(&["--config", cfg, "run", "retention"], &env);
    assert_eq!(code, 0, "{out}\n{err}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sdk = moto.sdk();
    for key in [
        "prod/backups/audit/records/000000000000.json",
        "prod/backups/audit/checkpoints/",
    ] {
        let key = if key.ends_with('/') {
            let l = rt
                .block_on(sdk.list_objects_v2().bucket(bucket).prefix(key).send())
                .unwrap();
            l.contents()[0].key().unwrap().to_string()
        } else {
            key.to_string()
        };
        let h = rt
            .block_on(sdk.head_object().bucket(bucket).key(&key).send())
            .unwrap();
        assert_eq!(
            h.object_lock_mode().map(|m| m.as_str()),
            Some("COMPLIANCE"),
            "{key} is not locked"
        );
        let until = h.object_lock_retain_until_date().unwrap().secs();
        let days = (until - chrono::Utc::now().timestamp()) / 86_400;
        assert!(
            (380..=400).contains(&days),
            "{key}: retained {days} days, want 13 months"
        );
    }
    let (code, out, err) = lethe_env(&["--config", cfg, "audit", "verify"], &env);
    assert_eq!(code, 0, "{out}\n{err}");
}

/// Point the demo's lethe.toml at another `[store]` section.
fn use_store(d: &common::Demo, section: &str) {
    let text = std::fs::read_to_string(&d.config).unwrap();
    let replaced = text.replace("[store]\nurl = \"store\"\n", section);
    assert_ne!(replaced, text, "lethe.toml layout changed");
    std::fs::write(&d.config, replaced).unwrap();
}

/// `run snapshot` into the configured store, `snapshot verify` passes, and `snapshot restore`
/// of one tenant equals the SQLite source cell by cell.
fn snapshot_verify_restore(d: &common::Demo, env: &[(&str, String)], restore_to: &str) {
    let cfg = d.config.to_str().unwrap();
    let (code, out, err) = lethe_env(&["--config", cfg, "run", "snapshot"], env);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = lethe_env(&["--config", cfg, "snapshot", "verify"], env);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("3 runs, 45 files"), "{out}");
    restore_equals_source(&d, env, "kopi-senja", restore_to);
}

/// `snapshot restore` of `tenant` into `out` under the demo directory: every one of the 15 tables
/// comes back and equals the SQLite source cell by cell, types included.
fn restore_equals_source(d: &common::Demo, env: &[(&str, String)], tenant: &str, out: &str) {
    let cfg = d.config.to_str().unwrap();
    let out_dir = d.dir.join(out);
    let (code, out, err) = lethe_env(
        &[
            "--config",
            cfg,
            "snapshot",
            "restore",
            "--tenant",
            tenant,
            "--out",
            out_dir.to_str().unwrap(),
        ],
        env,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let files: Vec<(String, std::path::PathBuf, u64)> = out
        .lines()
        .filter(|l| l.contains(" rows "))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (
                w[0].to_string(),
                std::path::PathBuf::from(w[3]),
                w[1].parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(files.len(), 15, "{out}");
    common::assert_restore_equals_sqlite(&files, &d.db(), tenant);
}

/// Every object `list` finds is under `prefix` and holds no personal data; returns the count.
async fn raw_objects_are_clean(
    store: &dyn ObjectStore,
    prefix: &str,
    needles: &[Vec<u8>],
) -> usize {
    let objects: Vec<_> = store.list(None).try_collect().await.unwrap();
    for o in &objects {
        assert!(
            o.location.as_ref().starts_with(prefix),
            "{} outside {prefix}",
            o.location
        );
        let bytes = store.get(&o.location).await.unwrap().bytes().await.unwrap();
        assert!(
            common::found_in(&bytes, needles).is_empty(),
            "{} holds personal data",
            o.location
        );
    }
    objects.len()
}

/// `az://` through Azurite: configured from the standard environment
/// (`AZURE_STORAGE_USE_EMULATOR`), and `azure://` with `[store] endpoint` and an account key.
#[test]
fn snapshot_to_azure_blob_verifies_and_restores() {
    let Some(az) = common::azurite::Azurite::start("snapshot_to_azure") else {
        return;
    };
    az.create_container("lethe");
    let d = demo(3, 60);
    use_store(&d, "[store]\nurl = \"az://lethe/prod/backups\"\n");
    snapshot_verify_restore(&d, &az.env(), "restored-az");

    // The same container through `azure://`, the account URL as the endpoint and the
    // account's name and key (how a real account is configured).
    let d2 = demo(3, 60);
    use_store(
        &d2,
        &format!(
            "[store]\nurl = \"azure://lethe/other\"\nendpoint = \"{}\"\nallow_http = true\n",
            az.account_url()
        ),
    );
    let env = vec![
        (
            "AZURE_STORAGE_ACCOUNT_NAME",
            common::azurite::ACCOUNT.to_string(),
        ),
        (
            "AZURE_STORAGE_ACCOUNT_KEY",
            common::azurite::KEY.to_string(),
        ),
    ];
    snapshot_verify_restore(&d2, &env, "restored-azure");

    let needles = common::personal_needles(&d.db());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let n = rt.block_on(raw_objects_are_clean(&az.client("lethe"), "", &needles));
    let under = |p: &str| {
        rt.block_on(async {
            let objects: Vec<_> = az
                .client("lethe")
                .list(Some(&object_store::path::Path::from(p)))
                .try_collect()
                .await
                .unwrap();
            objects.len()
        })
    };
    assert!(under("prod/backups/snapshots") >= 48, "{n} objects");
    assert!(under("other/snapshots") >= 48, "{n} objects");
    assert_eq!(
        n,
        under("prod/backups/snapshots")
            + under("other/snapshots")
            + under("prod/backups/locks/snapshot")
            + under("other/locks/snapshot")
    );
}

/// `gs://` through fake-gcs-server: reading. A snapshot written to a local store is copied
/// object by object into the bucket by the emulator's JSON upload API (not by lethe), then
/// `snapshot verify` and `snapshot restore` run against `gs://` — configured by
/// `STORAGE_EMULATOR_HOST` (the standard emulator variable), and by `[store] endpoint` with a
/// service-account file (`GOOGLE_SERVICE_ACCOUNT`).
///
/// Writing through `gs://` is not exercised here: object_store writes with the XML API
/// (`PUT /bucket/object`), which fake-gcs-server answers `400 invalid uploadType` (it serves
/// the JSON upload API only); see README.
#[test]
fn snapshot_in_gcs_verifies_and_restores() {
    let Some(gcs) = common::gcs::FakeGcs::start("snapshot_in_gcs") else {
        return;
    };
    gcs.create_bucket("lethe-gcs");
    let d = demo(3, 60);
    let cfg = d.config.to_str().unwrap();
    let (code, out, err) = common::lethe(&["--config", cfg, "run", "snapshot"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let root = d.store();
    let files = common::files(&root);
    assert!(files.len() >= 48, "{} files", files.len());
    for (path, bytes) in &files {
        let rel = path.strip_prefix(&root).unwrap().to_string_lossy();
        for prefix in ["prod/backups", "other"] {
            gcs.upload("lethe-gcs", &format!("{prefix}/{rel}"), bytes);
        }
    }
    std::fs::remove_dir_all(&root).unwrap();

    use_store(&d, "[store]\nurl = \"gs://lethe-gcs/prod/backups\"\n");
    let env = gcs.env();
    let (code, out, err) = lethe_env(&["--config", cfg, "snapshot", "verify"], &env);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("3 runs, 45 files"), "{out}");
    restore_equals_source(&d, &env, "kopi-senja", "restored-gs");
    assert!(!root.exists(), "read from the local store");

    // The endpoint from lethe.toml; credentials from a service-account file that, as the
    // emulator's convention, turns OAuth off (no token server to ask).
    let text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(
        &d.config,
        text.replace(
            "url = \"gs://lethe-gcs/prod/backups\"\n",
            &format!(
                "url = \"gs://lethe-gcs/other\"\nendpoint = \"{}\"\nallow_http = true\n",
                gcs.url()
            ),
        ),
    )
    .unwrap();
    let key = d.dir.join("service-account.json");
    std::fs::write(
        &key,
        r#"{"disable_oauth": true, "client_email": "", "private_key": "", "private_key_id": ""}"#,
    )
    .unwrap();
    let (code, out, err) = lethe_env(
        &["--config", cfg, "snapshot", "verify"],
        &[("GOOGLE_SERVICE_ACCOUNT", key.display().to_string())],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("3 runs, 45 files"), "{out}");
}

/// PostgreSQL over TLS: every connection lethe makes honours `sslmode` (libpq's meanings);
/// the server reports the session encrypted; verification of a self-signed certificate fails
/// with the problem and the fix named, and passes with the certificate as `sslrootcert`.
#[test]
fn postgres_over_tls_honours_sslmode() {
    use lethe::source::postgres::{config, connect, session_tls};
    let Some(pg) = PgSchema::create("pg_tls") else {
        return;
    };
    let (ssl, cert) = {
        let url = pg.url.clone();
        pg.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let r = client
                .query_one(
                    "SELECT current_setting('ssl'), current_setting('ssl_cert_file'), current_setting('data_directory')",
                    &[],
                )
                .await
                .unwrap();
            let (ssl, cert, data): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            (ssl, std::path::Path::new(&data).join(cert))
        })
    };
    if ssl != "on" {
        if std::env::var("LETHE_REQUIRE_SERVICES").as_deref() == Ok("1") {
            panic!(
                "LETHE_REQUIRE_SERVICES=1 but the test PostgreSQL has ssl = off (.ci/run turns it on)"
            );
        }
        common::skipped(
            "pg_tls",
            "the test PostgreSQL has ssl = off (scripts/test turns it on)",
        );
        return;
    }
    // Sessions made by lethe's own config() + connect(), as the server sees them.
    let tls_of = |url: String| -> Result<Option<String>, String> {
        pg.block_on(async move {
            let c = config(&url).map_err(|e| e.to_string())?;
            let client = connect(&c, &url).await.map_err(|e| e.to_string())?;
            session_tls(&client).await.map_err(|e| e.to_string())
        })
    };
    let with = |params: &str| format!("{}&{params}", pg.url);
    let v = tls_of(with("sslmode=require")).unwrap();
    assert!(
        v.as_deref().is_some_and(|v| v.starts_with("TLSv1.")),
        "{v:?}"
    );
    assert!(
        tls_of(pg.url.clone()).unwrap().is_some(),
        "sslmode defaults to prefer: TLS when the server offers it"
    );
    assert_eq!(tls_of(with("sslmode=disable")).unwrap(), None);

    // A self-signed certificate is refused by verify-full, with the cause and the fix.
    let e = tls_of(with("sslmode=verify-full")).unwrap_err();
    assert!(
        e.contains("not signed by a trusted certificate authority")
            && e.contains("sslrootcert=/path/to/root.crt"),
        "{e}"
    );
    // Trusted as a root, it still does not name the IP address connected to...
    let root = format!("sslrootcert={}", cert.display());
    let e = tls_of(with(&format!("sslmode=verify-full&{root}"))).unwrap_err();
    assert!(
        e.contains("not issued for \"127.0.0.1\"") && e.contains("verify-ca"),
        "{e}"
    );
    // ...which verify-ca does not check; and by the name it lists, verify-full passes.
    assert!(
        tls_of(with(&format!("sslmode=verify-ca&{root}")))
            .unwrap()
            .is_some()
    );
    let by_name =
        with(&format!("sslmode=verify-full&{root}")).replace("@127.0.0.1:", "@localhost:");
    assert!(
        by_name.contains("@localhost:"),
        "LETHE_TEST_PG is not on 127.0.0.1"
    );
    assert!(tls_of(by_name.clone()).unwrap().is_some());

    // The binary: check, snapshot and a retention plan over verify-full (which cannot succeed
    // unencrypted); a refused certificate names the fix and never shows the password.
    let d = demo(3, 60);
    pg.block_on(lethe::demo::load_into_postgres(&d.db(), &pg.url))
        .unwrap();
    // Replace the source URL in lethe.toml.
    let set_source = |url: &str| {
        let text = std::fs::read_to_string(&d.config).unwrap();
        let start = text.find("url = \"postgres").unwrap() + 7;
        let end = start + text[start..].find('"').unwrap();
        std::fs::write(
            &d.config,
            format!("{}{url}{}", &text[..start], &text[end..]),
        )
        .unwrap();
    };
    common::use_pg(&d, &pg.url);
    let cfg = d.config.to_str().unwrap();
    set_source(&with("sslmode=require"));
    let (code, out, err) = lethe_env(&["--config", cfg, "check"], &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    set_source(&by_name);
    for cmd in [
        &["check"][..],
        &["run", "snapshot"],
        &["snapshot", "verify"],
        &["plan"],
    ] {
        let args: Vec<&str> = ["--config", cfg].iter().chain(cmd).copied().collect();
        let (code, out, err) = lethe_env(&args, &[]);
        assert_eq!(code, 0, "{cmd:?}: {out}\n{err}");
    }

    // A password is refused in lethe.toml; from the environment it is used, and never shown.
    let secret = with("sslmode=verify-full").replace("postgres@", "postgres:s3cret-pw@");
    assert!(secret.contains("s3cret-pw"));
    let (code, out, err) = lethe_env(
        &["--config", cfg, "check"],
        &[("LETHE_SOURCE_URL", secret.clone())],
    );
    assert_ne!(code, 0, "{out}\n{err}");
    let all = format!("{out}\n{err}");
    assert!(
        all.contains("not signed by a trusted certificate authority")
            && all.contains("sslrootcert")
            && all.contains("sslmode=require"),
        "{all}"
    );
    assert!(!all.contains("s3cret-pw"), "password shown: {all}");
}

/// `lethe demo --source` builds the demo in PostgreSQL and runs the whole pipeline there
/// (snapshot and retention); it refuses a database whose tables it did not create, because the
/// demo deletes data.
#[test]
fn demo_on_postgres_runs_everything_and_refuses_foreign_tables() {
    let Some(pg) = PgSchema::create("demo_pg") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let d = dir.to_str().unwrap();
    let args = [
        "demo",
        "--dir",
        d,
        "--tenants",
        "3",
        "--days",
        "60",
        "--source",
        &pg.url,
    ];
    let (code, out, err) = common::lethe(&args);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("loaded") && out.contains("retention as of"),
        "{out}"
    );
    // Again: the demo's own tables are reused.
    let (code, out, err) = common::lethe(&args);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("reusing the demo tables"), "{out}");

    // Erasure requests on PostgreSQL: a customer's phone written in national form resolves,
    // through bind parameters and SQL normal forms, to exactly their rows.
    let cfg = dir.join("lethe.toml");
    let cfg = cfg.to_str().unwrap();
    let pick = pg_strings(
        &pg,
        "SELECT tenant_id || '|' || phone FROM customers WHERE email IS NOT NULL ORDER BY id LIMIT 1",
    );
    let (t, phone) = pick.iter().next().unwrap().split_once('|').unwrap();
    let national = format!("0{} {}", &phone[3..6], &phone[6..]);
    let (code, out, err) = common::lethe(&[
        "--config", cfg, "erase", "subject", "--tenant", t, "--kind", "phone", "--id", &national,
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    let (code, out, err) =
        common::lethe(&["--config", cfg, "requests", "show", "--tenant", t, &id]);
    assert_eq!(code, 0, "{out}\n{err}");
    let rows = |table: &str| -> i64 {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(table))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("no {table} in {out}"))
            .parse()
            .unwrap()
    };
    let want = |sql: &str| pg.count(&sql.replace("$T", t).replace("$P", phone));
    assert_eq!(
        rows("messages"),
        want("SELECT count(*) FROM messages WHERE tenant_id = '$T' AND customer_phone = '$P'")
    );
    assert_eq!(
        rows("customers"),
        want("SELECT count(*) FROM customers WHERE tenant_id = '$T' AND phone = '$P'")
    );
    assert!(rows("customers") >= 1, "{out}");
    assert!(!out.contains(&phone[3..]), "the number is printed: {out}");

    // A foreign key that would cascade a retention DELETE into rows lethe did not select:
    // `check` reports it (exit 2); `plan` and `run retention` refuse with
    // Refusal::CascadingDeletes (exit 1), naming the constraint, and delete nothing.
    pg.execute(
        "CREATE TABLE message_notes (id bigint PRIMARY KEY, message_id bigint \
         CONSTRAINT notes_follow_messages REFERENCES messages(id) ON DELETE CASCADE)",
    );
    let count = "SELECT (SELECT count(*) FROM messages) + (SELECT count(*) FROM calls)";
    let before = pg.count(count);
    for (args, want) in [
        (&["check"][..], 2),
        (&["plan"][..], 1),
        (&["run", "retention"][..], 1),
    ] {
        let mut all = vec!["--config", cfg];
        all.extend_from_slice(args);
        let (code, out, err) = common::lethe(&all);
        assert_eq!(code, want, "{args:?}\n{out}\n{err}");
        assert!(
            err.contains("notes_follow_messages") && err.contains("ON DELETE RESTRICT"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(pg.count(count), before, "nothing deleted");
    pg.execute("DROP TABLE message_notes");

    let Some(other) = PgSchema::create("demo_pg_foreign") else {
        return;
    };
    other.execute(
        "CREATE TABLE tenants (id text PRIMARY KEY); INSERT INTO tenants VALUES ('acme');",
    );
    let dir2 = tmp.path().join("demo2");
    let (code, out, err) = common::lethe(&[
        "demo",
        "--dir",
        dir2.to_str().unwrap(),
        "--tenants",
        "3",
        "--days",
        "60",
        "--source",
        &other.url,
    ]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(err.contains("did not create"), "{err}");
    assert_eq!(other.count("SELECT count(*) FROM tenants"), 1, "untouched");
}

/// Erasure end to end on the real services: an employee erased from PostgreSQL (bind
/// parameters, SQL normal forms) with their selfies, the request's earlier generations (which
/// held the sealed identifier) purged from the versioned bucket, and a restore of a backup taken
/// before that does not bring them back.
#[test]
fn erasure_on_postgres_with_a_versioned_s3_store() {
    let Some(pg) = PgSchema::create("era_pg") else {
        return;
    };
    let Some(moto) = Moto::start("era_pg") else {
        return;
    };
    let bucket = "lethe-era";
    moto.create_bucket_with(bucket, true, false);
    let d = demo(3, 60);
    pg.block_on(lethe::demo::load_into_postgres(&d.db(), &pg.url))
        .unwrap();
    common::use_pg(&d, &pg.url);
    use_s3(&d, &moto, bucket);
    let cfg = d.config.to_str().unwrap();
    let env = moto.env();
    let (code, out, err) = lethe_env(&["--config", cfg, "run", "snapshot"], &env);
    assert_eq!(code, 0, "{out}\n{err}");

    let pick = pg_strings(
        &pg,
        "SELECT a.tenant_id || '|' || a.email || '|' || a.id FROM accounts a WHERE (SELECT count(*) FROM attendance_checkins k WHERE k.account_id = a.id AND k.selfie_key IS NOT NULL) >= 2 ORDER BY a.id LIMIT 1",
    );
    let mut parts = pick.iter().next().unwrap().split('|');
    let (t, email, id) = (
        parts.next().unwrap().to_string(),
        parts.next().unwrap().to_string(),
        parts.next().unwrap().to_string(),
    );
    let selfies = pg_strings(
        &pg,
        &format!(
            "SELECT selfie_key FROM attendance_checkins WHERE account_id = {id} AND selfie_key IS NOT NULL"
        ),
    );
    let theirs = |table: &str| -> String {
        match table {
            "accounts" => format!("SELECT count(*) FROM accounts WHERE id = {id}"),
            "support_tickets" => format!(
                "SELECT count(*) FROM support_tickets WHERE tenant_id = '{t}' AND lower(trim(requester_email)) = '{}'",
                email.to_lowercase()
            ),
            other => format!(
                "SELECT count(*) FROM {other} WHERE tenant_id = '{t}' AND account_id = {id}"
            ),
        }
    };
    let tables = [
        "accounts",
        "attendance_checkins",
        "audit_log",
        "app_log",
        "security_log",
        "refresh_tokens",
        "ip_hashes",
        "support_tickets",
    ];
    let total = |table: &str| pg.count(&format!("SELECT count(*) FROM {table}"));
    let before: Vec<(i64, i64)> = tables
        .iter()
        .map(|tb| (total(tb), pg.count(&theirs(tb))))
        .collect();
    assert!(before[0].1 == 1 && before[1].1 >= 2, "{before:?}");

    let (code, out, err) = lethe_env(
        &[
            "--config",
            cfg,
            "erase",
            "subject",
            "--tenant",
            &t,
            "--kind",
            "email",
            "--id",
            &email.to_uppercase(),
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = lethe_env(&["--config", cfg, "-vv", "run", "erasure"], &env);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        !out.to_lowercase().contains(&email.to_lowercase())
            && !err.to_lowercase().contains(&email.to_lowercase()),
        "identifier in output or logs"
    );
    for (tb, (all, mine)) in tables.iter().zip(&before) {
        assert_eq!(pg.count(&theirs(tb)), 0, "{tb}: the person's rows are left");
        assert_eq!(
            total(tb),
            all - mine,
            "{tb}: exactly the person's rows went"
        );
    }
    let blobs: std::collections::BTreeSet<String> = common::files(&d.dir.join("blobs"))
        .keys()
        .map(|p| {
            p.strip_prefix(d.dir.join("blobs"))
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    for s in &selfies {
        assert!(!blobs.contains(s), "selfie left: {s}");
    }
    // The request object: one version left, and no version holds the sealed identifier.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sdk = moto.sdk();
    let (versions, markers) = rt.block_on(count_versions(
        &sdk,
        bucket,
        &format!("prod/backups/requests/tenant={t}/"),
    ));
    assert_eq!(
        (versions, markers),
        (1, 0),
        "earlier generations of the request are left"
    );
    let store = s3_store(&moto, bucket, "prod/backups");
    rt.block_on(async {
        for m in store
            .list(&object_store::path::Path::from(format!(
                "requests/tenant={t}"
            )))
            .await
            .unwrap()
        {
            let text = String::from_utf8(store.get(&m.location).await.unwrap().to_vec()).unwrap();
            assert!(
                text.contains("primary_done") && !text.contains("sealed"),
                "{text}"
            );
        }
    });
    // The backup taken before does not bring the person back.
    let out_dir = d.dir.join("restored");
    let (code, out, err) = lethe_env(
        &[
            "--config",
            cfg,
            "snapshot",
            "restore",
            "--tenant",
            &t,
            "--out",
            out_dir.to_str().unwrap(),
            "--format",
            "csv",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let plain: String = common::files(&out_dir)
        .into_values()
        .map(|b| String::from_utf8_lossy(&b).to_lowercase())
        .collect();
    assert!(plain.contains("@"), "the restore wrote rows");
    assert!(
        !plain.contains(&email.to_lowercase()),
        "the erased person came back from a backup"
    );

    // The backups phase on the versioned bucket: the (pinned) run is rewritten; no version of
    // a replaced file, index or manifest is left, and verify passes.
    let (code, out, err) = lethe_env(
        &["--config", cfg, "snapshot", "ls", "--tenant", &t, "--json"],
        &env,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let run_id = serde_json::from_str::<serde_json::Value>(&out).unwrap()[0]["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, out, err) = lethe_env(
        &[
            "--config", cfg, "snapshot", "pin", "--tenant", &t, "--run", &run_id, "--reason",
            "audit", "--by", "ops",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = lethe_env(&["--config", cfg, "run", "erasure"], &env);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("rewritten without the person"), "{out}");
    let prefix = format!("prod/backups/snapshots/tenant={t}/run={run_id}/");
    let listing = rt
        .block_on(
            sdk.list_object_versions()
                .bucket(bucket)
                .prefix(&prefix)
                .send(),
        )
        .unwrap();
    let mut keys: Vec<&str> = listing.versions().iter().filter_map(|v| v.key()).collect();
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(
        n,
        keys.len(),
        "an object of the rewritten run has an old version left"
    );
    assert!(listing.delete_markers().is_empty(), "delete markers left");
    assert!(
        !keys.iter().any(|k| k.ends_with("_rewrite.json")),
        "{keys:?}"
    );
    let (code, out, err) = lethe_env(&["--config", cfg, "snapshot", "verify"], &env);
    assert_eq!(code, 0, "{out}\n{err}");
    let out_dir = d.dir.join("restored-after");
    let (code, out, err) = lethe_env(
        &[
            "--config",
            cfg,
            "snapshot",
            "restore",
            "--tenant",
            &t,
            "--run",
            &run_id,
            "--out",
            out_dir.to_str().unwrap(),
            "--format",
            "csv",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("erasure ledger: 0 row(s)"),
        "the rewrite left rows for the ledger: {out}"
    );
    let plain: String = common::files(&out_dir)
        .into_values()
        .map(|b| String::from_utf8_lossy(&b).to_lowercase())
        .collect();
    assert!(!plain.contains(&email.to_lowercase()));
    let (code, out, err) = lethe_env(&["--config", cfg, "audit", "verify"], &env);
    assert_eq!(code, 0, "{out}\n{err}");
}
