//! A scratch schema in a real PostgreSQL for the warehouse destination's
//! tests. `KOALA_TEST_POSTGRES_URL` names the server (default CI's:
//! `postgres://postgres@127.0.0.1:5432/test`). Where it is unreachable a
//! test is skipped with a notice, unless `KOALA_REQUIRE_POSTGRES=1` (which
//! `.ci/run` sets): then it fails, so CI never passes by skipping.

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row;

pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn url() -> String {
    std::env::var("KOALA_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.into())
}

pub struct ScratchSchema {
    pub url: String,
    pub schema: String,
    pub pool: PgPool,
}

/// A fresh schema named after the test, or `None` (after printing why)
/// when PostgreSQL is unreachable and not required.
pub async fn scratch(test: &str) -> Option<ScratchSchema> {
    let url = url();
    let pool = match PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(&url)
        .await
    {
        Ok(p) => p,
        Err(e) => {
            if std::env::var("KOALA_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
                panic!("PostgreSQL is required (KOALA_REQUIRE_POSTGRES=1) but {url} is unreachable: {e}");
            }
            eprintln!(
                "SKIPPED {test}: PostgreSQL unreachable at {url} ({e}); set KOALA_TEST_POSTGRES_URL, or KOALA_REQUIRE_POSTGRES=1 to fail instead"
            );
            return None;
        }
    };
    let schema = format!(
        "koala_t_{}",
        test.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    )
    .to_ascii_lowercase();
    let schema = schema[..schema.len().min(63)].to_owned();
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&pool)
        .await
        .expect("drop the scratch schema");
    Some(ScratchSchema { url, schema, pool })
}

impl ScratchSchema {
    /// The rows of `table`, each as JSON, ordered by `order`.
    pub async fn rows(&self, table: &str, order: &str) -> Vec<serde_json::Value> {
        let sql = format!(
            "SELECT to_jsonb(t)::text FROM \"{}\".\"{table}\" t ORDER BY {order}",
            self.schema
        );
        match sqlx::query(&sql).fetch_all(&self.pool).await {
            Ok(rows) => rows
                .iter()
                .map(|r| serde_json::from_str(&r.get::<String, _>(0)).unwrap())
                .collect(),
            // Not created yet.
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => Vec::new(),
            Err(e) => panic!("reading {table}: {e}"),
        }
    }

    pub async fn execute(&self, sql: &str) {
        sqlx::query(sql).execute(&self.pool).await.expect(sql);
    }

    pub async fn drop(self) {
        let _ = sqlx::query(&format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.schema
        ))
        .execute(&self.pool)
        .await;
    }

    /// A `[[destinations]]` table writing into this schema.
    pub fn destination_toml(&self, name: &str, extra: &str) -> String {
        format!(
            "\n[[destinations]]\nname = \"{name}\"\ntype = \"postgres\"\nurl = \"{}\"\nschema = \"{}\"\n{extra}\n",
            self.url, self.schema
        )
    }
}
