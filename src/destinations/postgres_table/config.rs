//! `[[destinations]] type = "postgres"`: audience membership as tables in
//! the team's own PostgreSQL (or a Postgres-compatible warehouse), where
//! analysts join it with orders and campaigns.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::destinations::{DeliverySettings, FieldSpec, Mapping};
use crate::secret::Secret;

/// The most rows koala writes in one statement. Values travel as one
/// array per column (`UNNEST`), so PostgreSQL's 65,535 parameters never
/// bind the size; memory and the statement timeout do.
pub const MAX_ROWS_LIMIT: usize = 50_000;

/// Any mapped attribute becomes a column (`takes_any_field`).
pub const FIELDS: &[FieldSpec] = &[];

/// Engine defaults: 5,000 rows a statement, 2 in flight (of `pool_size`
/// connections), 50 statements/s.
pub const DELIVERY: DeliverySettings = DeliverySettings {
    max_batch: 5000,
    concurrency: 2,
    requests_per_second: 50.0,
    min_linger: Duration::ZERO,
    request_timeout: Duration::from_secs(30),
    base_backoff: Duration::from_secs(1),
    max_backoff: Duration::from_secs(120),
};

/// What an exit does to the member's row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExit {
    /// The row is deleted: the table holds current members only.
    #[default]
    Delete,
    /// The row stays with `exited_at` set; a re-entry clears it.
    Mark,
}

/// An identifier written beside `person_id` (the Customer.io id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentifierColumn {
    CioId,
    Email,
    Phone,
}

impl IdentifierColumn {
    pub fn column(self) -> &'static str {
        match self {
            IdentifierColumn::CioId => "cio_id",
            IdentifierColumn::Email => "email",
            IdentifierColumn::Phone => "phone",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/database`; `${ENV}` to read it
    /// from the environment.
    pub url: Secret,
    #[serde(default = "default_schema")]
    pub schema: String,
    /// Current membership: one row per (audience, person_id).
    #[serde(default = "default_members_table")]
    pub members_table: String,
    /// Append-only history of the changes written.
    #[serde(default = "default_history_table")]
    pub history_table: String,
    #[serde(default)]
    pub on_exit: OnExit,
    /// Identifier columns beside `person_id`.
    #[serde(default = "default_identifiers")]
    pub identifiers: Vec<IdentifierColumn>,
    /// Creates the schema, the tables and missing mapped columns; never
    /// drops or retypes a column. Off: a missing table or column pauses the
    /// destination with a reason.
    #[serde(default = "yes")]
    pub create_tables: bool,
    /// Connections koala keeps to the warehouse.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
}

fn default_schema() -> String {
    "koala".into()
}
fn default_members_table() -> String {
    "audience_members".into()
}
fn default_history_table() -> String {
    "audience_changes".into()
}
fn default_identifiers() -> Vec<IdentifierColumn> {
    vec![
        IdentifierColumn::CioId,
        IdentifierColumn::Email,
        IdentifierColumn::Phone,
    ]
}
fn yes() -> bool {
    true
}
fn default_pool_size() -> u32 {
    4
}

/// Columns koala writes itself; a mapped field cannot take their names.
pub const RESERVED_COLUMNS: &[&str] = &[
    "audience",
    "person_id",
    "cio_id",
    "email",
    "phone",
    "entered_at",
    "updated_at",
    "exited_at",
    "change",
    "occurred_at",
    "synced_at",
    "change_key",
];

/// A name koala creates and quotes: lower case, digits and `_`, starting
/// with a letter or `_`, at most 63 bytes (PostgreSQL's NAMEDATALEN).
/// Lower case only, so the quoted name is the one an analyst types bare.
pub fn is_plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}

impl PostgresConfig {
    pub fn new(url: impl Into<String>, schema: impl Into<String>) -> Self {
        PostgresConfig {
            url: Secret::new(url.into()),
            schema: schema.into(),
            members_table: default_members_table(),
            history_table: default_history_table(),
            on_exit: OnExit::Delete,
            identifiers: default_identifiers(),
            create_tables: true,
            pool_size: default_pool_size(),
        }
    }

    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        match url::Url::parse(self.url.expose()) {
            Ok(u) if matches!(u.scheme(), "postgres" | "postgresql") && u.has_host() => {}
            // The URL may hold a password: never echo it.
            _ => p.push("url: not a postgres://host/database URL".into()),
        }
        for (key, name) in [
            ("schema", &self.schema),
            ("members_table", &self.members_table),
            ("history_table", &self.history_table),
        ] {
            if !is_plain_identifier(name) {
                p.push(format!(
                    "{key}: {name:?} is not a plain identifier (a-z, 0-9 and _, starting with a letter or _, at most 63)"
                ));
            }
        }
        if self.members_table == self.history_table {
            p.push("history_table: must differ from members_table".into());
        }
        let mut seen = self.identifiers.clone();
        seen.sort();
        seen.dedup();
        if seen.len() != self.identifiers.len() {
            p.push("identifiers: lists an identifier twice".into());
        }
        if self.pool_size == 0 || self.pool_size > 100 {
            p.push("pool_size: must be between 1 and 100".into());
        }
        p
    }

    /// Problems of a mapping against the table: every field becomes a
    /// column, so its name must be one koala can create and not one it
    /// writes itself.
    pub fn mapping_problems(mapping: &Mapping) -> Vec<String> {
        let mut p = Vec::new();
        for (field, _) in mapping.typed_fields() {
            if !is_plain_identifier(field) {
                p.push(format!(
                    "map.{field}: not a plain column name (a-z, 0-9 and _, starting with a letter or _, at most 63)"
                ));
            } else if RESERVED_COLUMNS.contains(&field) {
                p.push(format!(
                    "map.{field}: koala writes a column of that name itself"
                ));
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DestinationConfig;

    fn postgres(text: &str) -> (PostgresConfig, Vec<String>) {
        let entry = crate::config::parse_destination(text).unwrap();
        match entry.platform {
            DestinationConfig::Postgres(s) => (s, Vec::new()),
            other => panic!("not a postgres destination: {}", other.type_name()),
        }
    }

    /// The problems `koala check` names for a destination table.
    fn problems(text: &str) -> Vec<String> {
        crate::config::parse_destination(text)
            .unwrap_err()
            .into_iter()
            .map(|p| p.trim_start_matches("destinations[0].").to_owned())
            .collect()
    }

    #[test]
    fn a_minimal_table_takes_the_defaults() {
        let (c, p) = postgres(
            "[[destinations]]\nname = \"wh\"\ntype = \"postgres\"\nurl = \"postgres://koala:hunter2@db.example.com/analytics\"",
        );
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(c.schema, "koala");
        assert_eq!(
            (c.members_table.as_str(), c.history_table.as_str()),
            ("audience_members", "audience_changes")
        );
        assert_eq!(c.on_exit, OnExit::Delete);
        assert!(c.create_tables);
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn bad_keys_are_named_and_the_url_never_echoed() {
        let p = problems(
            "[[destinations]]\nname = \"wh\"\ntype = \"postgres\"\nurl = \"mysql://u:hunter2@h/db\"\nschema = \"Analytics\"\nhistory_table = \"audience_members\"\nidentifiers = [\"email\", \"email\"]\npool_size = 0",
        );
        let joined = p.join("\n");
        assert!(!joined.contains("hunter2"), "{joined}");
        for key in [
            "url:",
            "schema:",
            "history_table:",
            "identifiers:",
            "pool_size:",
        ] {
            assert!(p.iter().any(|x| x.starts_with(key)), "{key} in {p:?}");
        }
    }

    #[test]
    fn mapped_fields_must_be_plain_columns_koala_does_not_write() {
        let p = problems(
            "[[destinations]]\nname = \"wh\"\ntype = \"postgres\"\nurl = \"postgres://h/db\"\nmap = { \"Lifetime Value\" = \"ltv\", email = \"work_email\", plan = \"plan\" }",
        );
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p
            .iter()
            .any(|x| x.starts_with("map.Lifetime Value: not a plain column name")));
        assert!(p.iter().any(|x| x.starts_with("map.email: koala writes")));
    }

    #[test]
    fn plain_identifiers() {
        assert!(is_plain_identifier("audience_members"));
        assert!(is_plain_identifier("_x1"));
        assert!(!is_plain_identifier("1x"));
        assert!(!is_plain_identifier("Members"));
        assert!(!is_plain_identifier("a-b"));
        assert!(!is_plain_identifier(""));
        assert!(!is_plain_identifier(&"a".repeat(64)));
    }
}
