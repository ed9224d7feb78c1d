//! A real PostgreSQL for tests: the server on 127.0.0.1:5432 (trust auth, database `test`),
//! a fresh schema per test (dropped at the end), reached through `search_path`.
//!
//! `LETHE_TEST_PG` overrides the server URL. If no server answers, the test says loudly that
//! it was skipped, unless `LETHE_REQUIRE_SERVICES=1` (set by `.ci/run`).

pub struct PgSchema {
    admin: String,
    pub schema: String,
    /// URL whose connections see only this schema.
    pub url: String,
    rt: tokio::runtime::Runtime,
}

impl PgSchema {
    pub fn create(test: &str) -> Option<PgSchema> {
        let admin = std::env::var("LETHE_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let schema = format!(
            "lethe_{}_{}",
            test.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            std::process::id()
        );
        let created = rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            client
                .batch_execute(&format!(
                    "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
                ))
                .await
        });
        if let Err(e) = created {
            if std::env::var("LETHE_REQUIRE_SERVICES").as_deref() == Ok("1") {
                panic!(
                    "{test}: LETHE_REQUIRE_SERVICES=1 but PostgreSQL at {admin} is unusable: {e}"
                );
            }
            super::skipped(
                test,
                &format!("no PostgreSQL at {admin} ({e}); start it or set LETHE_TEST_PG"),
            );
            return None;
        }
        let sep = if admin.contains('?') { '&' } else { '?' };
        let url = format!("{admin}{sep}options=-csearch_path%3D{schema}");
        Some(PgSchema {
            admin,
            schema,
            url,
            rt,
        })
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The single bigint a query returns (e.g. `SELECT count(*) …`).
    pub fn count(&self, sql: &str) -> i64 {
        let url = self.url.clone();
        let sql = sql.to_string();
        self.rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0)
        })
    }

    /// Run SQL in the schema.
    pub fn execute(&self, sql: &str) {
        let url = self.url.clone();
        self.rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client.batch_execute(sql).await.unwrap();
        });
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (admin, schema) = (self.admin.clone(), self.schema.clone());
        let _ = self.rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .await
        });
    }
}
