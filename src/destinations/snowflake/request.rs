//! The SQL API's requests
//! (<https://docs.snowflake.com/en/developer-guide/sql-api/reference>):
//! `POST /api/v2/statements?requestId=<uuid>[&retry=true]` with the
//! statement, its context and bindings, and `GET
//! /api/v2/statements/{statementHandle}` for one still running.

use serde_json::{json, Value};
use url::Url;

/// Where and as whom a statement runs (the body's context fields; each
/// case-sensitive, so given as Snowflake stores unquoted names).
#[derive(Debug, Clone)]
pub struct Context {
    pub database: String,
    pub schema: String,
    pub warehouse: String,
    pub role: Option<String>,
    /// Seconds before Snowflake cancels the statement (answering 408).
    pub timeout_secs: u64,
}

impl Context {
    pub fn of(c: &super::config::SnowflakeConfig) -> Self {
        Context {
            database: c.database.to_ascii_uppercase(),
            schema: c.schema.to_ascii_uppercase(),
            warehouse: c.warehouse.to_ascii_uppercase(),
            role: c.role.as_ref().map(|r| r.to_ascii_uppercase()),
            timeout_secs: c.statement_timeout.as_secs().max(1),
        }
    }
}

/// The body of `POST /api/v2/statements`.
pub fn body(sql: &str, bindings: Option<Value>, ctx: &Context) -> Value {
    let mut b = json!({
        "statement": sql,
        "timeout": ctx.timeout_secs,
        "database": ctx.database,
        "schema": ctx.schema,
        "warehouse": ctx.warehouse,
    });
    if let Some(role) = &ctx.role {
        b["role"] = json!(role);
    }
    if let Some(bindings) = bindings {
        b["bindings"] = bindings;
    }
    b
}

/// `{base}/api/v2/statements?requestId=…`, with `retry=true` when the
/// same request id was submitted before.
pub fn submit_url(base: &str, request_id: &uuid::Uuid, retry: bool) -> anyhow::Result<Url> {
    let mut u = Url::parse(&format!("{base}/api/v2/statements"))
        .map_err(|_| anyhow::anyhow!("base_url: not a URL"))?;
    u.query_pairs_mut()
        .append_pair("requestId", &request_id.to_string());
    if retry {
        u.query_pairs_mut().append_pair("retry", "true");
    }
    Ok(u)
}

/// `{base}/api/v2/statements/{handle}`, for a handle Snowflake gave (only
/// hex digits and `-`, as its handles are UUIDs).
pub fn status_url(base: &str, handle: &str) -> Option<Url> {
    if handle.is_empty() || !handle.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return None;
    }
    Url::parse(&format!("{base}/api/v2/statements/{handle}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_body() {
        let id = uuid::Uuid::nil();
        assert_eq!(
            submit_url("https://a.snowflakecomputing.com", &id, false)
                .unwrap()
                .as_str(),
            "https://a.snowflakecomputing.com/api/v2/statements?requestId=00000000-0000-0000-0000-000000000000"
        );
        assert!(submit_url("https://a", &id, true)
            .unwrap()
            .as_str()
            .ends_with("&retry=true"));
        assert!(status_url("https://a", "01b2-c3").is_some());
        assert!(status_url("https://a", "../x").is_none());
        let ctx = Context {
            database: "DB".into(),
            schema: "S".into(),
            warehouse: "W".into(),
            role: None,
            timeout_secs: 300,
        };
        let b = body("SELECT 1", None, &ctx);
        assert_eq!(
            b,
            json!({"statement": "SELECT 1", "timeout": 300, "database": "DB", "schema": "S", "warehouse": "W"})
        );
    }
}
